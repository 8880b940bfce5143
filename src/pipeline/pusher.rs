//! One pusher per destination: an FFmpeg that copies the fan-out's FLV
//! (`fanout.rs`) to the platform, `-c copy`, over its own RTMP(S)
//! connection. Each is supervised on its own (the crash backoff, the stall
//! watchdog): a destination that refuses, is unreachable, stalls or drops
//! the connection reconnects by itself, and the encoder and the other
//! destinations never notice. The stream key reaches it as the output's
//! did, through a preset read from a pipe, never on its command line
//! (ARCHITECTURE.md, "The stream key and the publish key").

use std::io::Write as _;
use std::os::fd::{OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::{Config, Named};
use crate::ffmpeg;
use crate::ffmpeg::child::{self, Spec};
use crate::ffmpeg::supervisor::{self, Children, Event, Job};
use crate::pipeline::fanout::FanOut;
use crate::pipeline::output::{self, Progress};

/// The FLV the pusher reads.
const INPUT_FD: RawFd = 3;
/// The preset pipe carrying the stream key.
const PRESET_FD: RawFd = 7;

/// What a pusher's supervisor reports, and about which destination.
pub(crate) type PusherEvent = (String, Event<Progress>);

/// The FFmpeg arguments of destination `named`'s pusher.
pub fn args(named: &Named) -> Vec<String> {
    let target = named.destination.target();
    let mut a: Vec<String> = ffmpeg::COMMON_ARGS.iter().map(|s| s.to_string()).collect();
    let period = output::PROGRESS_PERIOD.as_secs_f64().to_string();
    for s in ["-progress", "pipe:1", "-stats_period", &period] {
        a.push(s.to_string());
    }
    // The fan-out starts every connection with the header, the metadata,
    // the sequence headers and a keyframe: all probing needs is there.
    for s in ["-f", "flv", "-i", &child::fd_url(INPUT_FD)] {
        a.push(s.to_string());
    }
    for s in [
        "-map",
        "0",
        "-c",
        "copy",
        "-f",
        "flv",
        "-flvflags",
        "no_duration_filesize",
    ] {
        a.push(s.to_string());
    }
    if target.stream_name.is_some() {
        a.push("-fpre".to_string());
        a.push(format!("/dev/fd/{PRESET_FD}"));
    }
    a.push(target.url);
    a
}

/// The stream key as a one-line FFmpeg preset, read from a pipe.
fn key_preset(named: &Named) -> std::io::Result<Option<OwnedFd>> {
    let Some(name) = named.destination.target().stream_name else {
        return Ok(None);
    };
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // Far below a pipe's capacity (the key is at most 512 bytes).
    let mut write = std::fs::File::from(write);
    write.write_all(format!("rtmp_playpath={}\n", name.expose()).as_bytes())?;
    Ok(Some(read))
}

/// A running destination: what it sent, and how to stop it.
pub(crate) struct Handle {
    pub stop: CancellationToken,
    /// Bytes written to its pusher, over all its connections.
    pub sent: Arc<AtomicU64>,
    pub named: Named,
}

// Dropping a destination (a reload removed it) stops its pusher.
impl Drop for Handle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts destination `named`'s pusher under its own supervisor.
pub(crate) fn supervise(
    children: &Children,
    config: Arc<Config>,
    named: Named,
    ffmpeg: PathBuf,
    fanout: FanOut,
    events: mpsc::Sender<PusherEvent>,
) -> Handle {
    let sent = Arc::new(AtomicU64::new(0));
    let stop = children.token().child_token();
    let job = PusherJob {
        config,
        named: named.clone(),
        ffmpeg,
        fanout,
        events,
        sent: sent.clone(),
        writer: None,
        session: 0,
    };
    let span = tracing::info_span!("destination", name = %named.name);
    children.restarting_until(job, Some(output::STALL), span, stop.clone());
    Handle { stop, sent, named }
}

struct PusherJob {
    /// For the secrets to mask.
    config: Arc<Config>,
    named: Named,
    ffmpeg: PathBuf,
    fanout: FanOut,
    events: mpsc::Sender<PusherEvent>,
    sent: Arc<AtomicU64>,
    writer: Option<tokio::task::JoinHandle<()>>,
    /// The fan-out's number for the current connection.
    session: u64,
}

impl Job for PusherJob {
    type Progress = Progress;

    fn count(progress: &Progress) -> u64 {
        progress.frame
    }

    async fn start(&mut self) -> std::io::Result<supervisor::Started<Progress>> {
        let input = child::write_pipe(1 << 20)?;
        let mut fds = vec![(input.theirs, INPUT_FD)];
        if let Some(preset) = key_preset(&self.named)? {
            fds.push((preset, PRESET_FD));
        }
        let mut running = child::spawn(Spec {
            role: "pusher",
            program: self.ffmpeg.clone(),
            args: args(&self.named),
            fds,
            stdout: true,
            secrets: self.config.stream_keys(),
        })?;
        let (tx, rx) = mpsc::channel(8);
        if let Some(stdout) = running.stdout.take() {
            tokio::spawn(output::read_progress(stdout, tx));
        }
        let name = self.named.name.clone();
        let (session, wake) = self.fanout.connect(&name);
        self.session = session;
        let fanout = self.fanout.clone();
        let sent = self.sent.clone();
        let mut pipe = input.ours;
        // Writes block while the platform is slow; the fan-out queues and
        // drops meanwhile, never the encoder.
        self.writer = Some(tokio::spawn(async move {
            loop {
                wake.notified().await;
                for chunk in fanout.take(&name) {
                    if pipe.write_all(&chunk).await.is_err() {
                        return;
                    }
                    sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            }
        }));
        info!(pid = running.pid, url = %self.named.destination.masked(), "pusher started");
        Ok(supervisor::Started {
            child: running,
            progress: Some(rx),
        })
    }

    async fn ended(&mut self) {
        if let Some(writer) = self.writer.take() {
            writer.abort();
        }
        self.fanout.disconnect(&self.named.name, self.session);
    }

    async fn report(&mut self, event: Event<Progress>) {
        let _ = self.events.send((self.named.name.clone(), event)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_goes_to_the_preset_never_the_command_line() {
        let config = Config::from_pairs(
            "t",
            &[
                ("DESTINATIONS", "kick,youtube"),
                ("KICK_URL", "rtmps://h.example/app/sk_SECRETVALUE"),
                ("YOUTUBE_URL", "rtmp://y.example/live2"),
                ("YOUTUBE_KEY", "yt_SECRETVALUE"),
                ("OFFLINE_VIDEO_PATH", "/o.mp4"),
            ],
        )
        .unwrap();
        for named in &config.destinations {
            let a = args(named);
            assert!(a.iter().all(|arg| !arg.contains("SECRETVALUE")), "{a:?}");
            let n = a.len();
            assert_eq!(a[n - 3..n - 1], ["-fpre", "/dev/fd/7"]);
        }
        assert_eq!(
            args(&config.destinations[1]).last().unwrap(),
            "rtmp://y.example/live2/"
        );
        assert_eq!(config.stream_keys(), ["sk_SECRETVALUE", "yt_SECRETVALUE"]);
    }
}
