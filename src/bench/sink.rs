//! The sink: an FFmpeg player on relay's output (or the naive design's),
//! recording what viewers see, frame by frame.
//!
//! Video is decoded, passed through `showinfo` (each frame's pts) and
//! shrunk to a 64x36 RGB thumbnail read here: its colour tells which source
//! is on air (live = blue, offline = green, a white frame = the publisher's
//! sync flash), and comparing consecutive thumbnails finds repeated frames
//! (filler or duplicates; both test sources move, so a real frame always
//! differs from the last). Audio passes through `silencedetect`: the end of
//! a silence is the publisher's sync beep, with its pts.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{sleep, Instant};

use super::STEP_TIMEOUT;

const THUMB_W: usize = 64;
const THUMB_H: usize = 36;
const THUMB_BYTES: usize = THUMB_W * THUMB_H * 3;
/// Mean absolute difference per thumbnail byte below which a frame counts as
/// a repeat of the previous one. Motion in the test sources gives > 3;
/// re-encoding noise of an unchanged picture < 0.5.
const REPEAT_THRESHOLD: f64 = 1.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colour {
    Blue,
    Green,
    White,
    Other,
}

#[derive(Debug, Clone, Copy)]
pub struct Frame {
    pub at: Instant,
    pub colour: Colour,
    /// Same picture as the frame before.
    pub repeat: bool,
}

#[derive(Default)]
struct Log {
    frames: Vec<Frame>,
    /// pts (s) of frame n, from showinfo.
    pts: Vec<f64>,
    /// (arrival, pts) of each audio beep onset.
    beeps: Vec<(Instant, f64)>,
}

pub struct Sink {
    log: Arc<Mutex<Log>>,
    child: Child,
}

impl Sink {
    pub fn start(url: &str) -> anyhow::Result<Sink> {
        let mut child = Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "info", "-nostats", "-nostdin"])
            .args(["-fpsprobesize", "0", "-i", url])
            .args(["-map", "0:v", "-vf"])
            .arg(format!("showinfo,scale={THUMB_W}:{THUMB_H}"))
            .args(["-fps_mode", "passthrough", "-f", "rawvideo"])
            .args(["-pix_fmt", "rgb24", "pipe:1"])
            .args(["-map", "0:a?", "-af", "silencedetect=n=-40dB:d=0.02"])
            .args(["-f", "null", "-"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the sink ffmpeg")?;
        let log = Arc::new(Mutex::new(Log::default()));
        let mut out = child.stdout.take().expect("piped");
        let l = log.clone();
        tokio::spawn(async move {
            let mut prev = vec![0u8; THUMB_BYTES];
            let mut buf = vec![0u8; THUMB_BYTES];
            let mut first = true;
            while out.read_exact(&mut buf).await.is_ok() {
                let at = Instant::now();
                let diff: u64 = buf
                    .iter()
                    .zip(&prev)
                    .map(|(a, b)| a.abs_diff(*b) as u64)
                    .sum();
                let repeat = !first && (diff as f64 / THUMB_BYTES as f64) < REPEAT_THRESHOLD;
                first = false;
                l.lock().unwrap().frames.push(Frame {
                    at,
                    colour: classify(&buf),
                    repeat,
                });
                std::mem::swap(&mut prev, &mut buf);
            }
        });
        let err = child.stderr.take().expect("piped");
        let l = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("Parsed_showinfo") {
                    if let Some(pts) = field(&line, "pts_time:") {
                        l.lock().unwrap().pts.push(pts);
                    }
                } else if line.contains("silence_end:") {
                    if let Some(pts) = field(&line, "silence_end:") {
                        l.lock().unwrap().beeps.push((Instant::now(), pts));
                    }
                }
            }
        });
        Ok(Sink { log, child })
    }

    pub async fn wait_for_frame(&self, since: Instant) -> anyhow::Result<Instant> {
        self.wait(since, |_| true, "any frame").await
    }

    pub async fn wait_for_colour(&self, colour: Colour, since: Instant) -> anyhow::Result<Instant> {
        self.wait(since, |c| c == colour, "the expected colour")
            .await
    }

    async fn wait(
        &self,
        since: Instant,
        want: impl Fn(Colour) -> bool,
        what: &str,
    ) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if let Some(f) = self
                .log
                .lock()
                .unwrap()
                .frames
                .iter()
                .find(|f| f.at >= since && want(f.colour))
            {
                return Ok(f.at);
            }
            if Instant::now() > deadline {
                bail!("the sink did not see {what} within {STEP_TIMEOUT:?}");
            }
            sleep(Duration::from_millis(5)).await;
        }
    }

    /// Smoothness of the frames that arrived in `[from, to]`.
    pub fn smoothness(&self, from: Instant, to: Instant, fps: u32) -> Smoothness {
        let log = self.log.lock().unwrap();
        let period = 1.0 / fps as f64;
        let mut s = Smoothness::default();
        let mut last: Option<(Instant, Option<f64>)> = None;
        let mut arrivals = Vec::new();
        for (i, f) in log.frames.iter().enumerate() {
            if f.at < from || f.at > to {
                continue;
            }
            s.frames += 1;
            if f.repeat {
                s.repeats += 1;
            }
            let pts = log.pts.get(i).copied();
            if let Some((at, prev_pts)) = last {
                arrivals.push((f.at - at).as_secs_f64());
                if let (Some(a), Some(b)) = (prev_pts, pts) {
                    let dev = ((b - a) - period).abs();
                    s.max_pts_dev_ms = s.max_pts_dev_ms.max(dev * 1000.0);
                }
            }
            last = Some((f.at, pts));
        }
        if arrivals.len() > 1 {
            let mean = arrivals.iter().sum::<f64>() / arrivals.len() as f64;
            let var =
                arrivals.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / arrivals.len() as f64;
            s.arrival_jitter_ms = var.sqrt() * 1000.0;
        }
        s
    }

    /// A/V offset (audio beep pts − video flash pts, ms, median) of the
    /// sync marks that arrived in `[from, to]`.
    pub fn av_offset_ms(&self, from: Instant, to: Instant) -> Option<f64> {
        let log = self.log.lock().unwrap();
        let flashes: Vec<f64> = log
            .frames
            .iter()
            .enumerate()
            .filter(|(_, f)| f.at >= from && f.at <= to && f.colour == Colour::White)
            .filter_map(|(i, _)| log.pts.get(i).copied())
            .collect();
        let mut offsets: Vec<f64> = log
            .beeps
            .iter()
            .filter(|(at, _)| *at >= from && *at <= to)
            .filter_map(|(_, beep)| {
                flashes
                    .iter()
                    .map(|f| beep - f)
                    .filter(|d| d.abs() < 0.4)
                    .min_by(|a, b| a.abs().total_cmp(&b.abs()))
            })
            .collect();
        if offsets.is_empty() {
            return None;
        }
        offsets.sort_by(f64::total_cmp);
        Some(offsets[offsets.len() / 2] * 1000.0)
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Smoothness {
    pub frames: usize,
    /// Frames identical to the one before: filler or duplicates.
    pub repeats: usize,
    /// Largest deviation of a pts interval from one frame period.
    pub max_pts_dev_ms: f64,
    /// Standard deviation of the frames' arrival intervals at the sink.
    pub arrival_jitter_ms: f64,
}

fn field(line: &str, key: &str) -> Option<f64> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

fn classify(rgb: &[u8]) -> Colour {
    let n = (rgb.len() / 3) as u32;
    let (mut r, mut g, mut b) = (0u32, 0u32, 0u32);
    for px in rgb.chunks(3) {
        r += px[0] as u32;
        g += px[1] as u32;
        b += px[2] as u32;
    }
    let (r, g, b) = (r / n, g / n, b / n);
    if r > 200 && g > 200 && b > 200 {
        Colour::White
    } else if b > 120 && r < 100 && g < 100 {
        Colour::Blue
    } else if g > 80 && r < 100 && b < 100 {
        Colour::Green
    } else {
        Colour::Other
    }
}
