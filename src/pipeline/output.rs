//! The output FFmpeg: the one long-lived process that holds the connection
//! to the platform.
//!
//! Every one of its inputs flows forever, because FFmpeg can neither reopen
//! an input nor survive one that ends or stalls: all four are raw pipes
//! the daemon writes at wall-clock pace: live video and audio,
//! filled with filler when there is no live feed, and offline video and
//! audio from the offline source (`offline_source.rs`). That is what keeps
//! the platform connection up while publishers come and go, and while the
//! offline source restarts. Its health is read from `-progress` on stdout.

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::config::Config;
use crate::ffmpeg;
use crate::ffmpeg::child::{self, Running, Spec};
use crate::ffmpeg::supervisor::{self, Children, Event, Job, Restart};
use crate::ffmpeg::zmq::Input;
use crate::pipeline::fanout::FanOut;
use crate::pipeline::flv::Walker;
use crate::pipeline::output_pipes::{OutputPipes, PipeEnds, WriterCursors};
use crate::pipeline::pipe_frames::Cursors;
use crate::pipeline::pump;
use crate::pipeline::raw_format::RawFormat;

/// fd numbers the output reads its raw inputs from.
const VIDEO_FD: RawFd = 3;
const AUDIO_FD: RawFd = 4;
const OFFLINE_VIDEO_FD: RawFd = 5;
const OFFLINE_AUDIO_FD: RawFd = 6;
/// Where the output writes its FLV, to the fan-out (`fanout.rs`).
const FLV_FD: RawFd = 8;

/// The raw audio pipes: a few frames' worth (6.4 KB a frame at 48 kHz/30 fps).
const AUDIO_PIPE_SIZE: usize = 64 * 1024;

/// How often FFmpeg reports progress.
pub const PROGRESS_PERIOD: Duration = Duration::from_millis(500);

/// An output that has made no progress for this long is restarted.
pub(crate) const STALL: Duration = Duration::from_secs(15);

/// Keyframe interval platforms ask for (IVS/Kick: 2 s).
const KEYFRAME_SECONDS: u32 = 2;

/// The FFmpeg arguments of the output. `select` is the input on air when it
/// starts, so a restart comes back on the same source.
pub fn args(config: &Config, select: Input) -> Vec<String> {
    let f = RawFormat::of(config);
    let graph = ffmpeg::render(
        ffmpeg::OUTPUT_GRAPH,
        &[
            ("MAP", (select as u8).to_string()),
            ("ZMQ_PORT", config.endpoints.zmq_port.to_string()),
        ],
    );
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(ffmpeg::COMMON_ARGS);
    push(&["-progress", "pipe:1", "-stats_period"]);
    push(&[&PROGRESS_PERIOD.as_secs_f64().to_string()]);
    // Inputs 0 and 1: raw live video and audio; 2 and 3: raw offline video
    // and audio. Tiny probe, short queues: frames already queued here are
    // what goes on air right after a switch.
    for (video, audio) in [(VIDEO_FD, AUDIO_FD), (OFFLINE_VIDEO_FD, OFFLINE_AUDIO_FD)] {
        push(&["-thread_queue_size", "4"]);
        push(&["-probesize", "32", "-analyzeduration", "0"]);
        push(&["-f", "rawvideo", "-pix_fmt", "yuv420p"]);
        push(&["-video_size", &f.video_size()]);
        push(&["-framerate", &f.fps.to_string()]);
        push(&["-i", &child::fd_url(video)]);
        push(&["-thread_queue_size", "8"]);
        push(&["-probesize", "32", "-analyzeduration", "0"]);
        push(&["-f", "s16le", "-ar", &f.sample_rate.to_string(), "-ac", "2"]);
        push(&["-i", &child::fd_url(audio)]);
    }
    push(&["-filter_complex", &graph, "-map", "[v]", "-map", "[a]"]);
    a.extend(encoder_args(config));
    // To relay, which hands it to every destination's pusher.
    a.push(child::fd_url(FLV_FD));
    a
}

/// The encoder and muxer arguments of the output, from `-c:v` to the FLV
/// muxer's flags: what the platform receives. The benchmark's naive design
/// uses them too, so that both encode alike.
pub fn encoder_args(config: &Config) -> Vec<String> {
    let f = RawFormat::of(config);
    let gop = (config.encoding.fps * KEYFRAME_SECONDS).to_string();
    let sample_rate = f.sample_rate.to_string();
    [
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-pix_fmt",
        "yuv420p",
        "-b:v",
        &config.encoding.vid_bitrate.text,
        "-maxrate",
        &config.encoding.max_bitrate.text,
        "-bufsize",
        &config.encoding.buffer_size.text,
        "-g",
        &gop,
        "-keyint_min",
        &gop,
        "-sc_threshold",
        "0",
        "-c:a",
        "aac",
        "-b:a",
        &config.encoding.audio_bitrate.text,
        "-ar",
        &sample_rate,
        "-ac",
        "2",
        "-f",
        "flv",
        "-flvflags",
        "no_duration_filesize",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A started output: the child, and the pipes the pump writes.
pub struct Started {
    pub child: Running,
    pub pipes: OutputPipes,
    pub progress: mpsc::Receiver<Progress>,
    /// The FLV it writes.
    pub flv: tokio::net::unix::pipe::Receiver,
}

/// How long a starting output waits for its video writers' cursors while
/// the writers of the output before it still hold theirs.
const CURSOR_WAIT: Duration = Duration::from_secs(2);

/// Spawns the output FFmpeg; its video writers move frames held in pipes
/// with `cursors`.
pub fn spawn(
    config: &Config,
    select: Input,
    ffmpeg_bin: &Path,
    cursors: WriterCursors,
) -> std::io::Result<Started> {
    let format = RawFormat::of(config);
    // About one frame in each video pipe: a deeper backlog would still be
    // filler when a switch to live takes effect (a black flash).
    let video = child::write_pipe(format.frame_bytes())?;
    let audio = child::write_pipe(AUDIO_PIPE_SIZE)?;
    let offline_video = child::write_pipe(format.frame_bytes())?;
    let offline_audio = child::write_pipe(AUDIO_PIPE_SIZE)?;
    let mut fds = vec![
        (video.theirs, VIDEO_FD),
        (audio.theirs, AUDIO_FD),
        (offline_video.theirs, OFFLINE_VIDEO_FD),
        (offline_audio.theirs, OFFLINE_AUDIO_FD),
    ];
    let flv = child::read_pipe()?;
    fds.push((flv.theirs, FLV_FD));
    let mut running = child::spawn(Spec {
        role: "output",
        program: ffmpeg_bin.to_path_buf(),
        args: args(config, select),
        fds,
        stdout: true,
        // It never gets a key; should one ever reach its log, it is masked.
        secrets: config.stream_keys(),
    })?;
    let (tx, rx) = mpsc::channel(8);
    if let Some(stdout) = running.stdout.take() {
        tokio::spawn(read_progress(stdout, tx));
    }
    let ends = PipeEnds {
        video: video.ours,
        audio: audio.ours,
        offline_video: offline_video.ours,
        offline_audio: offline_audio.ours,
    };
    Ok(Started {
        child: running,
        pipes: OutputPipes::spawn(ends, cursors),
        progress: rx,
        flv: flv.ours,
    })
}

/// What the output's supervisor reports to the daemon.
pub(crate) type OutputEvent = Event<Progress>;

/// Keeps the output FFmpeg running until shutdown: restarted with the
/// crash backoff when it exits, when it makes no progress for [`STALL`],
/// or on request (the returned [`Restart`]); each start is on the input
/// `selection` names at that moment, and hands its pipes to the pump.
pub(crate) fn supervise(children: &Children, s: Supervision) -> Restart {
    children.restarting(s, Some(STALL), tracing::info_span!("output"))
}

/// How the output is started, and whom its supervisor tells.
pub(crate) struct Supervision {
    /// Nothing the output uses can change without restarting the
    /// pipeline, but KILL_GRACE and CRASH_BACKOFF, which the supervisor
    /// reads from the reloads itself.
    pub config: Arc<Config>,
    pub ffmpeg: PathBuf,
    pub pump: mpsc::Sender<pump::Command>,
    pub events: mpsc::Sender<OutputEvent>,
    pub selection: watch::Receiver<Input>,
    /// The video writers' cursors, while relay holds frames in pipes.
    pub cursors: Option<Cursors>,
    /// Where the encoder's FLV goes, to every destination's pusher.
    pub fanout: FanOut,
}

/// Two cursors from `cursors`, for the live and the offline video writer.
/// The reserve has them unless the writers of the last output have not
/// ended yet (they end as soon as its pipes close) and no pipe can be made
/// meanwhile: then this waits for them, up to [`CURSOR_WAIT`]. An error
/// after that: the output is started again with the crash backoff rather
/// than with a writer that could not send the frames it is given.
async fn lend_cursors(cursors: Option<&Cursors>) -> std::io::Result<WriterCursors> {
    let Some(cursors) = cursors else {
        return Ok(None);
    };
    let deadline = tokio::time::Instant::now() + CURSOR_WAIT;
    let mut live = None;
    loop {
        if live.is_none() {
            live = cursors.lend();
        }
        if live.is_some() {
            if let Some(offline) = cursors.lend() {
                return Ok(live.map(|l| (l, offline)));
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(std::io::Error::other(
                "no pipe of 1 MB for the output's video writers (the user's pipe memory \
                 may be at the kernel's limit, fs.pipe-user-pages-soft)",
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Job for Supervision {
    type Progress = Progress;

    fn count(progress: &Progress) -> u64 {
        progress.frame
    }

    async fn start(&mut self) -> std::io::Result<supervisor::Started<Progress>> {
        let select = *self.selection.borrow();
        let cursors = lend_cursors(self.cursors.as_ref()).await?;
        let Started {
            child,
            pipes,
            progress,
            flv,
        } = spawn(&self.config, select, &self.ffmpeg, cursors)?;
        let _ = self.pump.send(pump::Command::Attach(pipes)).await;
        // A new encoder's stream: every destination's connection carries on.
        self.fanout.new_stream();
        tokio::spawn(read_flv(flv, self.fanout.clone()));
        info!(pid = child.pid, on_air = select.name(), "output started");
        Ok(supervisor::Started {
            child,
            progress: Some(progress),
        })
    }

    async fn report(&mut self, event: OutputEvent) {
        let _ = self.events.send(event).await;
    }
}

/// Reads the output's FLV until it ends, and hands what the walker finds
/// to the fan-out. Never stops reading before the end: the output must
/// never block on relay. A stream that is not FLV any more is logged and
/// dropped (the output is then restarted by its watchdog or its exit).
async fn read_flv(mut flv: tokio::net::unix::pipe::Receiver, fanout: FanOut) {
    use tokio::io::AsyncReadExt as _;
    let mut walker = Walker::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut broken = false;
    loop {
        let n = match flv.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if broken {
            continue;
        }
        match walker.push(&buf[..n]) {
            Ok(items) => fanout.put(&items),
            Err(err) => {
                warn!(%err, "the output's FLV cannot be read; nothing more goes to the destinations until it restarts");
                broken = true;
            }
        }
    }
}

/// One `-progress` report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    pub frame: u64,
    pub fps: f64,
    pub speed: f64,
    pub out_time: Duration,
    /// FFmpeg said `progress=end`: it is finishing.
    pub end: bool,
}

/// Parses `key=value` progress blocks, each closed by a `progress=` line.
#[derive(Debug, Default)]
pub struct ProgressParser {
    current: Progress,
}

impl ProgressParser {
    pub fn line(&mut self, line: &str) -> Option<Progress> {
        let (key, value) = line.trim().split_once('=')?;
        let value = value.trim();
        match key {
            "frame" => self.current.frame = value.parse().unwrap_or(self.current.frame),
            "fps" => self.current.fps = value.parse().unwrap_or(0.0),
            "speed" => {
                self.current.speed = value.trim_end_matches('x').trim().parse().unwrap_or(0.0)
            }
            "out_time_us" => {
                if let Ok(us) = value.parse::<u64>() {
                    self.current.out_time = Duration::from_micros(us);
                }
            }
            "progress" => {
                self.current.end = value == "end";
                return Some(self.current.clone());
            }
            _ => {}
        }
        None
    }
}

pub(crate) async fn read_progress(stdout: impl AsyncRead + Unpin, tx: mpsc::Sender<Progress>) {
    let mut parser = ProgressParser::default();
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(p) = parser.line(&line) {
            // Only the newest report matters; never block the reader.
            let _ = tx.try_send(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_writes_flv_to_relay_and_the_encoder_part_is_shared() {
        let config = Config::from_pairs(
            "t",
            &[
                ("KICK_URL", "rtmps://h.example/app"),
                ("KICK_KEY", "sk_SECRETVALUE"),
                ("OFFLINE_VIDEO_PATH", "/o.mp4"),
            ],
        )
        .unwrap();
        let a = args(&config, Input::Offline);
        assert!(a.iter().all(|arg| !arg.contains("SECRETVALUE")), "{a:?}");
        let n = a.len();
        // The output writes FLV to relay, never to the network.
        assert_eq!(a[n - 1], "pipe:8");
        assert!(a.iter().all(|arg| !arg.contains("h.example")), "{a:?}");
        let encoder = encoder_args(&config);
        assert_eq!(a[n - 1 - encoder.len()..n - 1], encoder[..]);
        assert_eq!(encoder[0], "-c:v");
    }

    #[test]
    fn progress_blocks_are_parsed() {
        let mut p = ProgressParser::default();
        let block = "frame=42\nfps=29.97\nbitrate=3000.0kbits/s\nout_time_us=1400000\nspeed=1.01x\nprogress=continue\n";
        let mut got = None;
        for l in block.lines() {
            got = p.line(l).or(got);
        }
        let got = got.unwrap();
        assert_eq!(got.frame, 42);
        assert!((got.speed - 1.01).abs() < 1e-9);
        assert_eq!(got.out_time, Duration::from_millis(1400));
        assert!(!got.end);
        assert!(p.line("progress=end").unwrap().end);
    }

    #[test]
    fn speed_na_is_zero() {
        let mut p = ProgressParser::default();
        p.line("speed=N/A");
        assert_eq!(p.line("progress=continue").unwrap().speed, 0.0);
    }
}
