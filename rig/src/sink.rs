//! [`Sink`]: a player that records the colour of what it receives, and,
//! for the benchmark, how smoothly it arrives.
//!
//! Video is decoded and shrunk to a thumbnail read here: its mean colour
//! tells which source is on air (a test's publishers and offline videos
//! are solid colours; the benchmark's live feed is blue and its offline
//! video green, each with a white box crossing it, and the publisher's sync
//! mark is a white frame). With [`SinkOpts::every_frame`] every frame is
//! kept with its own pts (`showinfo`), consecutive thumbnails are compared
//! to find repeated frames (filler or duplicates: both benchmark sources
//! move, so a real frame always differs from the last), and the audio
//! passes through `silencedetect`, whose end of a silence is the
//! publisher's sync beep.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::task::JoinHandle;

use crate::process::{capture_lines, ChildGuard, LineUse, Lines};
use crate::POLL;

/// Colour of a decoded frame, by its mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Colour {
    Red,
    Green,
    Blue,
    Black,
    Other,
}

/// Classifies a mean colour: `Black` when every channel is below 48; a
/// primary when its channel is at least 80 and at least 60 above both
/// others; else `Other` (grey, white, mixed, a half-decoded frame).
///
/// x264 + yuv420p shift solid colours a little: lavfi `red` comes back as
/// about (252,0,0), `blue` as (0,0,253), `green` (0,128,0) as (0,127,0),
/// `black` as (0,0,0).
pub fn classify(rgb: [u8; 3]) -> Colour {
    let [r, g, b] = rgb.map(i32::from);
    if r < 48 && g < 48 && b < 48 {
        return Colour::Black;
    }
    let primary = |v: i32, o1: i32, o2: i32| v >= 80 && v - o1 >= 60 && v - o2 >= 60;
    if primary(r, g, b) {
        Colour::Red
    } else if primary(g, r, b) {
        Colour::Green
    } else if primary(b, r, g) {
        Colour::Blue
    } else {
        Colour::Other
    }
}

const FRAME_W: usize = 16;
const FRAME_H: usize = 9;
pub(crate) const FRAME_BYTES: usize = FRAME_W * FRAME_H * 3;
/// The thumbnail of [`SinkOpts::every_frame`]: large enough for the
/// repeat threshold below.
const THUMB_W: usize = 64;
const THUMB_H: usize = 36;
/// Mean absolute difference per thumbnail byte below which a frame counts as
/// a repeat of the previous one. Motion in the benchmark's sources gives
/// > 3; re-encoding noise of an unchanged picture < 0.5.
const REPEAT_THRESHOLD: f64 = 1.0;

/// Whether a mean colour is white: the benchmark publisher's sync flash
/// (classified [`Colour::Other`]).
pub fn is_white(rgb: [u8; 3]) -> bool {
    rgb.iter().all(|&c| c > 200)
}

pub(crate) fn mean_rgb(frame: &[u8]) -> [u8; 3] {
    let mut sum = [0u64; 3];
    for px in frame.chunks_exact(3) {
        for c in 0..3 {
            sum[c] += u64::from(px[c]);
        }
    }
    let n = (frame.len() / 3).max(1) as u64;
    sum.map(|s| ((s + n / 2) / n) as u8)
}

/// One frame seen by a [`Sink`].
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    /// When the frame came out of ffmpeg.
    pub at: Instant,
    pub colour: Colour,
    /// Mean colour.
    pub rgb: [u8; 3],
    /// Which ffmpeg run (connection) of the sink it came from, from 1.
    pub connection: usize,
    /// Its place in that run, from 0.
    pub index: usize,
    /// Same picture as the frame before in that run (only measured with
    /// [`SinkOpts::every_frame`]; else false).
    pub repeat: bool,
}

/// How a [`Sink`] behaves.
#[derive(Debug, Clone)]
pub struct SinkOpts {
    /// Restart ffmpeg when it has delivered no frame for this long (`None`:
    /// never). nginx keeps a player of an idle stream connected forever, so
    /// without this a sink whose stream stopped would wait forever; with it,
    /// a sink recovers from anything a fresh connection recovers from.
    pub stall_restart: Option<Duration>,
    /// Restart ffmpeg when a run has delivered no frame at all for this
    /// long (`None`: never). A run needs up to about 5 s for its first
    /// frame: nginx starts a new player's video at the stream's next
    /// keyframe (every 2 s from relay and the test publishers), and ffmpeg
    /// probes the input for up to 3 s (`-analyzeduration`).
    pub first_frame_restart: Option<Duration>,
    /// Frames per second sampled (ffmpeg `fps` filter).
    pub fps: u32,
    /// Every frame as the stream carries it, with the stream's own
    /// timestamps, repeats and audio beeps recorded (what
    /// [`Sink::smoothness`] and [`Sink::av_offset_ms`] need; the benchmark
    /// uses it, with no restarts). `fps` is then not used. Default: false.
    pub every_frame: bool,
}

impl Default for SinkOpts {
    fn default() -> Self {
        SinkOpts {
            stall_restart: Some(Duration::from_secs(5)),
            first_frame_restart: Some(Duration::from_secs(10)),
            fps: 5,
            every_frame: false,
        }
    }
}

#[derive(Default)]
struct SinkState {
    frames: Vec<Frame>,
    /// ffmpeg runs started.
    connections: usize,
    /// Runs that showed at least one frame.
    watched: usize,
    /// Per connection (index = connection - 1): whether ffmpeg listed an
    /// audio stream in the input.
    audio_tracks: Vec<bool>,
    /// Why each earlier run ended.
    ends: Vec<String>,
    /// Per connection: pts (s) of its frames in order, from `showinfo`
    /// ([`SinkOpts::every_frame`] only).
    pts: Vec<Vec<f64>>,
    /// (arrival, pts) of each audio beep onset ([`SinkOpts::every_frame`]
    /// only).
    beeps: Vec<(Instant, f64)>,
}

impl SinkState {
    fn pts(&self, f: &Frame) -> Option<f64> {
        self.pts.get(f.connection - 1)?.get(f.index).copied()
    }
}

/// A player: ffmpeg pulls a stream, samples it at 5 fps scaled to 16x9 and
/// records the colour of each frame (with [`SinkOpts::every_frame`]: every
/// frame at 64x36, with its timing).
///
/// A sink may start before its stream exists: nginx keeps a player of a
/// stream without publisher waiting (`idle_streams`). ffmpeg is run again
/// whenever it exits (nginx went away or refused), and by default when a run
/// gave no frame for 5 s after its first one or none in its first 10 s.
/// Timestamps
/// are taken from the wall clock (`-use_wallclock_as_timestamps`), so a
/// new publisher on the same stream, whose timestamps start from zero again,
/// keeps flowing through the `fps` filter instead of being dropped as late.
pub struct Sink {
    url: String,
    state: Arc<Mutex<SinkState>>,
    slot: Arc<Mutex<Slot>>,
    lines: Lines,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Slot {
    child: Option<ChildGuard>,
    stopped: bool,
}

impl Sink {
    /// Starts playing `url` with [`SinkOpts::default`] (in the background,
    /// on the current tokio runtime).
    pub fn start(url: &str) -> Sink {
        Sink::start_with(url, SinkOpts::default())
    }

    /// Starts playing `url`.
    pub fn start_with(url: &str, opts: SinkOpts) -> Sink {
        let state: Arc<Mutex<SinkState>> = Arc::default();
        let slot: Arc<Mutex<Slot>> = Arc::default();
        let lines: Lines = Arc::default();
        let task = tokio::spawn(sink_loop(
            url.to_string(),
            opts,
            state.clone(),
            slot.clone(),
            lines.clone(),
        ));
        Sink {
            url: url.to_string(),
            state,
            slot,
            lines,
            task,
        }
    }

    /// Waits for a frame of `colour` that arrives after this call; returns
    /// when it arrived.
    pub async fn wait_for(&self, colour: Colour, timeout: Duration) -> anyhow::Result<Instant> {
        self.wait_for_since(colour, Instant::now(), timeout).await
    }

    /// Waits for the first frame of `colour` that arrived at or after
    /// `since` (which may be in the past); returns when it arrived. The
    /// error lists the colours seen meanwhile.
    pub async fn wait_for_since(
        &self,
        colour: Colour,
        since: Instant,
        timeout: Duration,
    ) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let state = self.state.lock().unwrap();
                if let Some(f) = state
                    .frames
                    .iter()
                    .find(|f| f.at >= since && f.colour == colour)
                {
                    return Ok(f.at);
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "sink {} saw no {colour:?} frame within {timeout:?}; since then: {}; {}",
                    self.url,
                    self.summary_since(since),
                    self.status()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Watches for `duration`: every frame must be `colour` and frames must
    /// keep coming (no gap over 1 s, counting from the start and to the end).
    pub async fn expect_steady(&self, colour: Colour, duration: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        tokio::time::sleep(duration).await;
        let end = Instant::now();
        let frames: Vec<Frame> = self
            .history_frames()
            .into_iter()
            .filter(|f| f.at >= start && f.at <= end)
            .collect();
        let mut last = start;
        for f in &frames {
            if f.colour != colour {
                bail!(
                    "sink {}: {:?} frame {:?} after {:?} while expecting steady {colour:?}: {}",
                    self.url,
                    f.colour,
                    f.rgb,
                    f.at - start,
                    self.summary_since(start)
                );
            }
            if f.at - last > Duration::from_secs(1) {
                bail!(
                    "sink {}: no frame for {:?} while expecting steady {colour:?}: {}",
                    self.url,
                    f.at - last,
                    self.summary_since(start)
                );
            }
            last = f.at;
        }
        if end - last > Duration::from_secs(1) {
            bail!(
                "sink {}: frames stopped {:?} before the end of a steady {colour:?} window: {}",
                self.url,
                end - last,
                self.summary_since(start)
            );
        }
        Ok(())
    }

    /// Waits for the first frame of any colour that arrived at or after
    /// `since`; returns when it arrived.
    pub async fn wait_for_any_since(
        &self,
        since: Instant,
        timeout: Duration,
    ) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(f) = self
                .state
                .lock()
                .unwrap()
                .frames
                .iter()
                .find(|f| f.at >= since)
            {
                return Ok(f.at);
            }
            if Instant::now() >= deadline {
                bail!(
                    "sink {} saw no frame within {timeout:?}; {}",
                    self.url,
                    self.status()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Smoothness of the frames that arrived in `[from, to]`, against a
    /// frame period of `1/fps` (pts intervals need
    /// [`SinkOpts::every_frame`]).
    pub fn smoothness(&self, from: Instant, to: Instant, fps: u32) -> Smoothness {
        let state = self.state.lock().unwrap();
        let period = 1.0 / fps as f64;
        let mut s = Smoothness::default();
        let mut last: Option<(Instant, Option<f64>)> = None;
        let mut arrivals = Vec::new();
        for f in state.frames.iter().filter(|f| f.at >= from && f.at <= to) {
            s.frames += 1;
            if f.repeat {
                s.repeats += 1;
            }
            let pts = state.pts(f);
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

    /// A/V offset (audio beep pts − white flash pts, ms, median) of the
    /// sync marks that arrived in `[from, to]` (needs
    /// [`SinkOpts::every_frame`] and a publisher with
    /// [`PublisherOpts::sync_marks`](crate::publisher::PublisherOpts::sync_marks)).
    pub fn av_offset_ms(&self, from: Instant, to: Instant) -> Option<f64> {
        let state = self.state.lock().unwrap();
        let flashes: Vec<f64> = state
            .frames
            .iter()
            .filter(|f| f.at >= from && f.at <= to && is_white(f.rgb))
            .filter_map(|f| state.pts(f))
            .collect();
        let mut offsets: Vec<f64> = state
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

    /// Black frames seen after the first frame that was not black. relay
    /// sends a live frame, a repeat of the last one or an offline frame,
    /// never black: black shows only before its output had any picture.
    pub fn black_frames_after_start(&self) -> usize {
        let state = self.state.lock().unwrap();
        state
            .frames
            .iter()
            .skip_while(|f| f.colour == Colour::Black)
            .filter(|f| f.colour == Colour::Black)
            .count()
    }

    /// Fails, with the count and where they were, if any frame after the
    /// first that was not black was black ([`Sink::black_frames_after_start`]).
    pub fn expect_no_black(&self) -> anyhow::Result<()> {
        let black = self.black_frames_after_start();
        if black > 0 {
            let frames = self.history_frames();
            let is_black = |f: &&Frame| f.colour == Colour::Black;
            let start = frames.iter().find(|f| !is_black(f)).map(|f| f.at);
            let first = frames
                .iter()
                .skip_while(is_black)
                .find(is_black)
                .map(|f| f.at);
            let since = match (start, first) {
                (Some(start), Some(first)) => start.max(first - Duration::from_secs(1)),
                _ => Instant::now(),
            };
            bail!(
                "sink {}: {black} black frame(s) after the picture started; from 1 s before \
                 the first: {}",
                self.url,
                self.summary_since(since)
            );
        }
        Ok(())
    }

    /// Colour of the latest frame.
    pub fn last_colour(&self) -> Option<Colour> {
        self.state.lock().unwrap().frames.last().map(|f| f.colour)
    }

    /// When the latest frame arrived.
    pub fn last_frame_at(&self) -> Option<Instant> {
        self.state.lock().unwrap().frames.last().map(|f| f.at)
    }

    /// Every frame so far: when and which colour.
    pub fn history(&self) -> Vec<(Instant, Colour)> {
        let state = self.state.lock().unwrap();
        state.frames.iter().map(|f| (f.at, f.colour)).collect()
    }

    /// Every frame so far, with its mean colour and connection.
    pub fn history_frames(&self) -> Vec<Frame> {
        self.state.lock().unwrap().frames.clone()
    }

    /// How many ffmpeg runs showed a picture (1 = the viewer never had to
    /// reconnect). A run that ended before its first frame is not counted:
    /// a player that joins just after the output's first keyframe gets no
    /// video from nginx-rtmp until the next one, and ffmpeg gives up on an
    /// input with no video stream within its analysis time.
    pub fn runs_watched(&self) -> usize {
        self.state.lock().unwrap().watched
    }

    /// Whether the current connection's input has an audio stream (`None`
    /// before ffmpeg described its input).
    pub fn audio_track(&self) -> Option<bool> {
        let state = self.state.lock().unwrap();
        if state.audio_tracks.len() == state.connections {
            state.audio_tracks.last().copied()
        } else {
            None
        }
    }

    /// What ffmpeg printed, all runs.
    pub fn logs(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Run-length summary of the colours since `since`, e.g.
    /// `Blue x12 (0,0,253), Other x1 (80,80,80), Red x3 (252,0,0)`.
    pub fn summary_since(&self, since: Instant) -> String {
        let frames = self.history_frames();
        let mut runs: Vec<(Colour, usize, [u8; 3], usize)> = Vec::new();
        for f in frames.iter().filter(|f| f.at >= since) {
            match runs.last_mut() {
                Some((c, n, _, conn)) if *c == f.colour && *conn == f.connection => *n += 1,
                _ => runs.push((f.colour, 1, f.rgb, f.connection)),
            }
        }
        if runs.is_empty() {
            return "no frames".to_string();
        }
        let keep = runs.len().saturating_sub(12);
        let mut parts: Vec<String> = runs[keep..]
            .iter()
            .map(|(c, n, [r, g, b], conn)| format!("{c:?} x{n} ({r},{g},{b}) #{conn}"))
            .collect();
        if keep > 0 {
            parts.insert(0, format!("... {keep} runs"));
        }
        parts.join(", ")
    }

    fn status(&self) -> String {
        let state = self.state.lock().unwrap();
        let ends: Vec<&String> = state.ends.iter().rev().take(3).collect();
        let lines = self.lines.lock().unwrap();
        let recent: Vec<&String> = lines.iter().rev().take(5).rev().collect();
        format!(
            "{} frames in all over {} ffmpeg run(s); last run ends: {ends:?}; last output: {recent:?}",
            state.frames.len(),
            state.connections
        )
    }
}

/// How smoothly frames arrived at a [`Sink`] over a window.
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

/// The number after `key` in an ffmpeg log line.
fn field(line: &str, key: &str) -> Option<f64> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

impl Drop for Sink {
    fn drop(&mut self) {
        let child = {
            let mut slot = self.slot.lock().unwrap();
            slot.stopped = true;
            slot.child.take()
        };
        self.task.abort();
        drop(child);
    }
}

async fn sink_loop(
    url: String,
    opts: SinkOpts,
    state: Arc<Mutex<SinkState>>,
    slot: Arc<Mutex<Slot>>,
    lines: Lines,
) {
    loop {
        let connection = {
            let mut s = state.lock().unwrap();
            s.connections += 1;
            s.pts.push(Vec::new());
            s.connections
        };
        let label = format!("sink#{connection}");
        let mut cmd = Command::new("ffmpeg");
        cmd.args(["-nostdin", "-hide_banner", "-nostats", "-loglevel", "info"]);
        let frame_bytes = if opts.every_frame {
            // The stream's own timestamps, every frame, and the audio's
            // silences; the picture from the first frame on (no fps probe).
            cmd.args(["-fpsprobesize", "0", "-i", &url, "-map", "0:v:0"])
                .args(["-vf", &format!("showinfo,scale={THUMB_W}:{THUMB_H}")])
                .args(["-fps_mode", "passthrough"])
                .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"])
                .args(["-map", "0:a?", "-af", "silencedetect=n=-40dB:d=0.02"])
                .args(["-f", "null", "-"]);
            THUMB_W * THUMB_H * 3
        } else {
            cmd.args([
                "-rw_timeout",
                "5000000",
                "-use_wallclock_as_timestamps",
                "1",
            ])
            // Longer than a keyframe interval (2 s): nginx sends a player
            // that joins between keyframes only audio until the next one,
            // and a probe that ends before it finds no video stream, so
            // ffmpeg exits ("Stream map '0:v:0' matches no streams"). With
            // 1 s, on a busy machine, 9 joins in 12 missed the keyframe.
            .args(["-analyzeduration", "3000000"])
            .args(["-i", &url, "-map", "0:v:0"])
            .args([
                "-vf",
                &format!("fps={},scale={FRAME_W}:{FRAME_H}", opts.fps),
            ])
            .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]);
            FRAME_BYTES
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                state.lock().unwrap().ends.push(format!("spawn: {e}"));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut stdout = child.stdout.take().expect("piped");
        if let Some(stderr) = child.stderr.take() {
            let st = state.clone();
            let mut in_input = false;
            capture_lines(stderr, label.clone(), lines.clone(), move |line| {
                // ffmpeg describes the input once: "Input #0, flv, from ..."
                // then "Stream #0:N: Audio: ..." lines, then "Output #0".
                if line.starts_with("Input #0") {
                    in_input = true;
                    st.lock().unwrap().audio_tracks.push(false);
                } else if line.starts_with("Output #0") || line.starts_with("Stream mapping") {
                    in_input = false;
                } else if in_input && line.contains("Stream #0:") && line.contains("Audio:") {
                    if let Some(a) = st.lock().unwrap().audio_tracks.last_mut() {
                        *a = true;
                    }
                }
                if line.contains("Parsed_showinfo") {
                    if let Some(pts) = field(line, "pts_time:") {
                        if let Some(run) = st.lock().unwrap().pts.last_mut() {
                            run.push(pts);
                        }
                    }
                    return LineUse::Drop;
                }
                if line.contains("silence_end:") {
                    if let Some(pts) = field(line, "silence_end:") {
                        st.lock().unwrap().beeps.push((Instant::now(), pts));
                    }
                    return LineUse::Keep;
                }
                // Echo all but the metadata details of each run's header.
                if line.starts_with("    ") || line.trim() == "Metadata:" {
                    LineUse::Keep
                } else {
                    LineUse::Show
                }
            });
        }
        {
            let mut s = slot.lock().unwrap();
            if s.stopped {
                drop(ChildGuard::new(child, label));
                return;
            }
            s.child = Some(ChildGuard::new(child, label.clone()));
        }

        let mut buf = vec![0u8; frame_bytes];
        let mut prev = vec![0u8; frame_bytes];
        let mut index = 0;
        let mut got_frame = false;
        let mut exited = false;
        let end = loop {
            let read = stdout.read_exact(&mut buf);
            let limit = if got_frame {
                opts.stall_restart
            } else {
                opts.first_frame_restart
            };
            let result = match limit {
                Some(limit) => match tokio::time::timeout(limit, read).await {
                    Ok(r) => r,
                    Err(_) => break format!("no frame for {limit:?}: restarting"),
                },
                None => read.await,
            };
            match result {
                Ok(_) => {
                    if !std::mem::replace(&mut got_frame, true) {
                        state.lock().unwrap().watched += 1;
                    }
                    let at = Instant::now();
                    let repeat = opts.every_frame && index > 0 && {
                        let diff: u64 = buf
                            .iter()
                            .zip(&prev)
                            .map(|(a, b)| u64::from(a.abs_diff(*b)))
                            .sum();
                        (diff as f64 / frame_bytes as f64) < REPEAT_THRESHOLD
                    };
                    let rgb = mean_rgb(&buf);
                    let frame = Frame {
                        at,
                        colour: classify(rgb),
                        rgb,
                        connection,
                        index,
                        repeat,
                    };
                    state.lock().unwrap().frames.push(frame);
                    index += 1;
                    std::mem::swap(&mut prev, &mut buf);
                }
                Err(_) => {
                    exited = true;
                    break "ffmpeg exited".to_string();
                }
            }
        };
        let child = slot.lock().unwrap().child.take();
        if let Some(mut child) = child {
            // After EOF ffmpeg is exiting: take its status for the record.
            let mut status = String::new();
            if exited {
                if let Ok(s) = child.wait_timeout(Duration::from_millis(500)).await {
                    status = format!(" ({s})");
                }
            }
            drop(child);
            state.lock().unwrap().ends.push(format!("{end}{status}"));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
