//! The ingest FFmpeg: one per publisher session. It pulls the live stream
//! from nginx-rtmp on loopback and writes it, normalised to exactly the
//! output's raw format, to two pipes the daemon reads.
//!
//! nginx keeps a player connected when its publisher leaves and hands it
//! the next publisher with restarted timestamps: the player sees no end of
//! its stream, only timestamps that jump back, which an FFmpeg already
//! decoding does not recover from. So an ingest is never reused: the daemon stops it when its frames stop and
//! starts a fresh one, which waits connected for the next publisher and
//! gets its first keyframe at once.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use nix::poll::PollFlags;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, Notify};
use tracing::warn;

use crate::config::{Config, LiveSource};
use crate::ffmpeg;
use crate::ffmpeg::child::{self, Running, Spec};
use crate::pipeline::frames::{Frame, FrameBuf, FramePool};
use crate::pipeline::ingest_link::IngestLink;
use crate::pipeline::pipe_frames::{PipePool, PipedFrame};
use crate::pipeline::pipe_io::{self, wait_for};
use crate::pipeline::raw_format::{RawFormat, AUDIO_BYTES_PER_SAMPLE};

const VIDEO_FD: RawFd = 3;
const AUDIO_FD: RawFd = 4;
/// The SRT ingest's input list (see [`srt_list`]).
const LIST_FD: RawFd = 5;
/// The SRT feed as it arrived, remuxed, for relay to count its bytes (see
/// [`args`]).
const BYTES_FD: RawFd = 6;

/// Live frames waiting for the pump: enough to ride out frames that arrive
/// unevenly, few because each one is latency on air. When it is full the
/// pump skips to the newest, and meanwhile the ingest waits.
const VIDEO_QUEUE: usize = 3;

/// A read of a frame's video shorter than this, with more of the frame to
/// come, waits `COALESCE_WAIT` before the next. FFmpeg writes each frame in
/// one write (3 MB at 1080p) into a 1 MB pipe; read as soon as it can be,
/// the frame came out in about 25 small reads while the reader spun on the
/// pipe's lock against the writer. Waiting lets the pipe fill: 3–5 reads a
/// frame, a few ms later. The ingest is meanwhile blocked in that write, so
/// no audio arrives and the frame's audio mark does not move.
const COALESCE_BYTES: usize = 256 * 1024;
const COALESCE_WAIT: Duration = Duration::from_millis(1);

/// Live audio kept ahead of the pump, in frames' worth (the video queue and
/// one more); older audio is dropped so sound stays level with the picture.
const AUDIO_QUEUE_FRAMES: usize = VIDEO_QUEUE + 2;

/// What the publisher sends, as far as we know: it decides how the ingest
/// probes. FFmpeg finds an RTMP stream's audio and video by probing its
/// packets: told to expect both, it waits seconds for the audio of a
/// video-only publisher before the first frame comes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Audio and video (OBS and phones). FFmpeg stops probing as soon as it
    /// has seen both; also the guess for an ingest that waits for a
    /// publisher not yet there.
    AudioVideo,
    /// Video only: probing stops at the first video packet instead of
    /// waiting seconds for audio that never comes.
    VideoOnly,
    /// Not known yet (an ingest that waits for a publisher, or one whose
    /// metadata the stat page has not shown): probing stops after
    /// `EITHER_ANALYZE_US` of stream time, and the audio is optional, so a
    /// video-only publisher goes on air from its first keyframe without a
    /// restart that would cost it a GOP (ARCHITECTURE.md, "Ingest start-up").
    Either,
}

/// How much stream time an `Expect::Either` ingest probes before it
/// starts with the streams it has found. nginx sends a joining player the
/// publisher's audio and video together from its first keyframe (with
/// `wait_video on`, video first), so both are found within a few packets;
/// only a video-only stream needs the whole 0.3 s. Measured with a 5 s GOP:
/// first frame 0.43 s after the publisher started with audio, 0.69 s
/// without (5.4 s with FFmpeg's default analyze duration).
const EITHER_ANALYZE_US: &str = "300000";

/// The SRT ingest's input: FFmpeg's libsrt listener on SRT_HOST:SRT_PORT,
/// named in an `ffconcat` list that FFmpeg reads from a pipe at start.
/// FFmpeg takes protocol options only from the URL or the command line,
/// and every local user can read a command line (`/proc/PID/cmdline`):
/// the list's `option` directive hands the passphrase to the one file it
/// opens, and the list never touches the disk. Only the passphrase goes
/// there; the rest stays in the URL, visible to `ps` like any other
/// setting (ARCHITECTURE.md, "The SRT listener").
///
/// The listener accepts one caller and stops listening: when the caller
/// goes, its read fails and FFmpeg exits, and relay starts a fresh one
/// (the policy re-arms it at once). A caller with a wrong or no
/// passphrase is refused in the handshake and the listener waits on.
pub fn srt_list(config: &Config) -> String {
    let srt = &config.srt;
    let host = if srt.host.contains(':') {
        format!("[{}]", srt.host)
    } else {
        srt.host.clone()
    };
    // latency is in microseconds in FFmpeg's options.
    let url = format!(
        "srt://{host}:{}?mode=listener&transtype=live&latency={}",
        srt.port,
        srt.latency.as_micros()
    );
    let mut list = format!("ffconcat version 1.0\nfile {}\n", ffconcat_token(&url));
    if !srt.passphrase.is_empty() {
        list.push_str(&format!(
            "option passphrase {}\n",
            ffconcat_token(srt.passphrase.expose())
        ));
    }
    list
}

/// A token of an ffconcat line: every character but letters and digits
/// escaped with a backslash (FFmpeg's `av_get_token`).
fn ffconcat_token(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if !c.is_ascii_alphanumeric() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

pub fn args(config: &Config, expect: Expect, source: LiveSource) -> Vec<String> {
    let f = RawFormat::of(config);
    let vars = [
        ("WIDTH", f.width.to_string()),
        ("HEIGHT", f.height.to_string()),
        ("SAMPLERATE", f.sample_rate.to_string()),
    ];
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(ffmpeg::COMMON_ARGS);
    // No `-fflags nobuffer`: measured, it delays the first frame by ~2 s.
    push(&["-fpsprobesize", "0"]);
    match expect {
        Expect::AudioVideo => {}
        Expect::VideoOnly => push(&["-probesize", "32", "-analyzeduration", "0"]),
        Expect::Either => push(&["-analyzeduration", EITHER_ANALYZE_US]),
    }
    // Frame threads would hold decoded frames back (one per thread) while
    // audio goes straight through: slice threads only.
    push(&["-thread_type", "slice"]);
    match source {
        LiveSource::Rtmp => push(&["-i", &config.live_url()]),
        LiveSource::Srt => {
            push(&[
                "-f",
                "concat",
                "-safe",
                "0",
                "-protocol_whitelist",
                "pipe,srt",
            ]);
            push(&["-i", &child::fd_url(LIST_FD)]);
        }
    }
    push(&["-map", "0:v:0", "-vf"]);
    push(&[&ffmpeg::render(ffmpeg::INGEST_VIDEO_FILTER, &vars)]);
    // At most OUT_FPS frames a second, by dropping, never by waiting for
    // the next frame; the pump fills in for a slower publisher.
    push(&["-fps_mode", "vfr", "-r", &f.fps.to_string()]);
    // Unbuffered: each frame goes to the pipe in one write, instead of
    // being copied again into FFmpeg's 32 KB I/O buffer first.
    push(&["-f", "rawvideo", "-pix_fmt", "yuv420p"]);
    push(&["-avioflags", "direct", &child::fd_url(VIDEO_FD)]);
    let audio_filter = ffmpeg::render(ffmpeg::INGEST_AUDIO_FILTER, &vars);
    let rate = f.sample_rate.to_string();
    let audio_url = child::fd_url(AUDIO_FD);
    match expect {
        Expect::AudioVideo => {
            push(&["-map", "0:a:0", "-af", &audio_filter]);
            push(&["-f", "s16le", "-ar", &rate, "-ac", "2", &audio_url]);
        }
        Expect::VideoOnly => {}
        Expect::Either => {
            // FFmpeg refuses an output file without streams, which an
            // optional audio map makes of a video-only publisher's. So the
            // audio goes through a tee that also carries the video,
            // copied, to a null muxer: the tee always has a stream, and
            // its s16le branch fails alone ("onfail=ignore") when there is
            // no audio; relay then fills silence. Without interleaving
            // (`max_interleave_delta` 1 µs) the audio comes as promptly as
            // from a plain output, also from a 2 fps publisher.
            push(&["-map", "0:a:0?", "-map", "0:v:0", "-c:v", "copy"]);
            push(&[
                "-af",
                &audio_filter,
                "-c:a",
                "pcm_s16le",
                "-ar",
                &rate,
                "-ac",
                "2",
            ]);
            push(&["-max_interleave_delta", "1", "-f", "tee"]);
            push(&[&format!(
                "[select=a:f=s16le:onfail=ignore]{audio_url}|[select=v:f=null:onfail=ignore]-"
            )]);
        }
    }
    if source == LiveSource::Srt {
        // No stat page counts an SRT caller's bytes: the feed goes on,
        // copied as it came (MPEG-TS, like the SRT payload), to a pipe
        // whose bytes relay counts and drops, for its bitrate and
        // LOW_BITRATE_KBPS. A remux, no decode.
        push(&["-map", "0:v:0", "-map", "0:a:0?", "-c", "copy"]);
        push(&["-max_interleave_delta", "1", "-f", "mpegts"]);
        push(&[&child::fd_url(BYTES_FD)]);
    }
    a
}

/// Live audio between the ingest and the pump.
#[derive(Debug, Default)]
pub struct AudioQueue {
    inner: Mutex<Audio>,
    cap: usize,
    /// Signalled when audio is taken or skipped (room for a reader that
    /// waits rather than drops).
    space: Notify,
}

#[derive(Debug, Default)]
struct Audio {
    queue: BytesMut,
    /// Bytes ever pushed, and ever removed from the front (taken or
    /// dropped): positions in the live audio stream.
    received: u64,
    removed: u64,
}

impl Audio {
    /// Removes `n` bytes, rounded down to whole samples, from the front.
    fn drop_front(&mut self, n: usize) -> Bytes {
        let n = (n.min(self.queue.len()) / AUDIO_BYTES_PER_SAMPLE) * AUDIO_BYTES_PER_SAMPLE;
        self.removed += n as u64;
        self.queue.split_to(n).freeze()
    }
}

impl AudioQueue {
    pub fn new(format: &RawFormat) -> AudioQueue {
        AudioQueue::with_frames(format, AUDIO_QUEUE_FRAMES)
    }

    /// A queue holding at most `frames` frames' worth of audio.
    pub fn with_frames(format: &RawFormat, frames: usize) -> AudioQueue {
        let per_frame = (format.sample_rate / format.fps) as usize * AUDIO_BYTES_PER_SAMPLE;
        AudioQueue {
            inner: Mutex::new(Audio::default()),
            cap: per_frame * frames,
            space: Notify::new(),
        }
    }

    /// Bytes that can be pushed before the oldest would be dropped.
    pub fn room(&self) -> usize {
        self.cap
            .saturating_sub(self.inner.lock().unwrap().queue.len())
    }

    /// Waits until audio has been taken or skipped since the last call.
    pub async fn space(&self) {
        self.space.notified().await;
    }

    pub(crate) fn push(&self, data: &[u8]) {
        let mut a = self.inner.lock().unwrap();
        a.queue.extend_from_slice(data);
        a.received += data.len() as u64;
        if a.queue.len() > self.cap {
            let excess = (a.queue.len() - self.cap).div_ceil(AUDIO_BYTES_PER_SAMPLE)
                * AUDIO_BYTES_PER_SAMPLE;
            a.drop_front(excess);
        }
    }

    /// Where the live audio stream is now: a video frame read at this
    /// moment goes with the audio before this mark.
    pub fn mark(&self) -> u64 {
        self.inner.lock().unwrap().received
    }

    /// How far the live audio is ahead of the video frame marked `mark`,
    /// in bytes (negative: behind), if this tick takes `len` bytes: zero
    /// when the tick's audio is exactly the audio that arrived before the
    /// frame did. A frame that waited in the pump's queue finds its audio
    /// already gone: the audio is ahead by the wait.
    pub fn lead(&self, mark: u64, len: usize) -> i64 {
        let a = self.inner.lock().unwrap();
        a.removed as i64 + len as i64 - mark as i64
    }

    /// Drops up to `n` bytes (whole samples) from the front; how many went.
    pub fn skip(&self, n: usize) -> usize {
        let n = self.inner.lock().unwrap().drop_front(n).len();
        self.space.notify_one();
        n
    }

    /// Up to `len` bytes of live audio (fewer if not enough has arrived).
    pub fn take(&self, len: usize) -> Bytes {
        let audio = self.inner.lock().unwrap().drop_front(len);
        self.space.notify_one();
        audio
    }
}

/// What the pump reads from one ingest.
pub struct LiveFeed {
    pub session: u64,
    /// The ingest's connection to nginx, to tell a stopped publisher from
    /// a starved ingest.
    pub link: Option<IngestLink>,
    /// Frames, each with the audio mark at the moment it was read.
    pub video: mpsc::Receiver<(Frame, u64)>,
    pub audio: Arc<AudioQueue>,
}

/// A started ingest.
pub struct Started {
    pub child: Running,
    pub feed: LiveFeed,
    /// Bytes of the feed received so far, where no stat page counts them
    /// (SRT).
    pub received: Option<Arc<AtomicU64>>,
}

pub fn spawn(
    config: &Config,
    source: LiveSource,
    expect: Expect,
    session: u64,
    ffmpeg_bin: &Path,
    frames: &FramePool,
    pipes: Option<&PipePool>,
) -> std::io::Result<Started> {
    let format = RawFormat::of(config);
    let video = child::read_pipe()?;
    let mut fds = vec![(video.theirs, VIDEO_FD)];
    if source == LiveSource::Srt {
        // Far below a pipe's capacity, so this never blocks.
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        std::fs::File::from(write).write_all(srt_list(config).as_bytes())?;
        fds.push((read, LIST_FD));
    }
    let received = if source == LiveSource::Srt {
        let p = child::read_pipe()?;
        fds.push((p.theirs, BYTES_FD));
        let count = Arc::new(AtomicU64::new(0));
        tokio::spawn(count_bytes(p.ours, count.clone()));
        Some(count)
    } else {
        None
    };
    let audio = if expect != Expect::VideoOnly {
        let p = child::read_pipe()?;
        fds.push((p.theirs, AUDIO_FD));
        Some(p.ours)
    } else {
        None
    };
    let running = child::spawn(Spec {
        role: "ingest",
        program: ffmpeg_bin.to_path_buf(),
        args: args(config, expect, source),
        fds,
        stdout: false,
        secrets: vec![config.srt.passphrase.expose().to_owned()],
    })?;
    let (tx, rx) = mpsc::channel(VIDEO_QUEUE);
    let queue = Arc::new(AudioQueue::new(&format));
    let (frames, pipes, feed_audio) = (frames.clone(), pipes.cloned(), queue.clone());
    let runtime = tokio::runtime::Handle::current();
    let pipe = video.ours.into_nonblocking_fd()?;
    let link = IngestLink::new(running.pid, pipe.try_clone().ok());
    std::thread::Builder::new()
        .name("ingest-video".into())
        .spawn(move || read_video(pipe, frames, pipes, tx, feed_audio, runtime))?;
    if let Some(audio) = audio {
        tokio::spawn(read_audio(audio, queue.clone()));
    }
    Ok(Started {
        child: running,
        feed: LiveFeed {
            session,
            link: Some(link),
            video: rx,
            audio: queue,
        },
        received,
    })
}

/// Reads the ingest's frames, in a thread of its own. Async, the runtime
/// was woken by every write the ingest made into the pipe while it waited
/// out `COALESCE_WAIT`, about 130 times a second at 1080p30; a thread's
/// sleep is not disturbed, and it waits in poll(2) only for a frame's
/// first bytes.
fn read_video(
    pipe: OwnedFd,
    frames: FramePool,
    pipes: Option<PipePool>,
    tx: mpsc::Sender<(Frame, u64)>,
    audio: Arc<AudioQueue>,
    runtime: tokio::runtime::Handle,
) {
    loop {
        // A place in the queue first, then the frame's first bytes, then a
        // buffer: while the pump's queue is full or FFmpeg is decoding, the
        // next frame waits in the pipe or is not there yet, not in our memory.
        let Ok(permit) = runtime.block_on(tx.reserve()) else {
            return;
        };
        if wait_for(pipe.as_fd(), PollFlags::POLLIN, None).is_err() {
            return;
        }
        let frame = match pipes.as_ref().and_then(PipePool::frame) {
            Some(store) => match splice_frame(pipe.as_fd(), store) {
                Some(frame) => Frame::Piped(Arc::new(frame)),
                None => return,
            },
            None => {
                let Ok(buf) = frames.take() else {
                    return;
                };
                match read_frame(pipe.as_fd(), buf) {
                    Some(buf) => Frame::Mem(frames.share(buf)),
                    None => return,
                }
            }
        };
        permit.send((frame, audio.mark()));
    }
}

/// Moves one whole frame from the ingest's pipe into pipes of ours; `None`
/// if the ingest ended first.
pub(crate) fn splice_frame(pipe: BorrowedFd<'_>, mut frame: PipedFrame) -> Option<PipedFrame> {
    while frame.missing() > 0 {
        match frame.splice_from(pipe) {
            Ok(0) => return None,
            Ok(n) => {
                if n < COALESCE_BYTES && frame.missing() > 0 {
                    std::thread::sleep(COALESCE_WAIT);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                wait_for(pipe, PollFlags::POLLIN, None).ok()?;
            }
            Err(err) => {
                warn!(%err, "cannot move live frames into relay's pipes");
                return None;
            }
        }
    }
    Some(frame)
}

/// Reads one whole frame into memory; `None` if the ingest ended first.
pub(crate) fn read_frame(pipe: BorrowedFd<'_>, mut frame: FrameBuf) -> Option<FrameBuf> {
    while !frame.spare().is_empty() {
        match pipe_io::read(pipe, frame.spare()) {
            Ok(0) => return None,
            Ok(n) => {
                frame.advance(n);
                if n < COALESCE_BYTES && !frame.spare().is_empty() {
                    std::thread::sleep(COALESCE_WAIT);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                wait_for(pipe, PollFlags::POLLIN, None).ok()?;
            }
            Err(_) => return None,
        }
    }
    Some(frame)
}

async fn read_audio(mut pipe: tokio::net::unix::pipe::Receiver, queue: Arc<AudioQueue>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => queue.push(&buf[..n]),
        }
    }
}

/// Counts and drops what the ingest writes to `pipe`, until it ends.
async fn count_bytes(mut pipe: tokio::net::unix::pipe::Receiver, count: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format() -> RawFormat {
        RawFormat {
            width: 4,
            height: 2,
            fps: 30,
            sample_rate: 48000,
        }
    }

    /// A frame written in pieces with pauses, as an ingest that decodes
    /// slowly would, then the start of the next; and our non-blocking end.
    fn slow_writer(frame: usize) -> (OwnedFd, std::thread::JoinHandle<()>) {
        use std::io::Write;
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        nix::fcntl::fcntl(
            &read,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        let writer = std::thread::spawn(move || {
            let mut w = std::fs::File::from(write);
            let data: Vec<u8> = (0..frame).map(|i| (i % 251) as u8).collect();
            for part in data.chunks(frame / 3 + 1) {
                w.write_all(part).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
            w.write_all(&[9u8; 10]).unwrap();
        });
        (read, writer)
    }

    fn expected(frame: usize) -> Vec<u8> {
        (0..frame).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn a_frame_is_read_whole_into_memory() {
        let size = 300_000;
        let (pipe, writer) = slow_writer(size);
        let pool = FramePool::new(size, 1, 1);
        let buf = read_frame(pipe.as_fd(), pool.take().unwrap()).expect("a whole frame");
        writer.join().unwrap();
        assert!(pool.share(buf)[..] == expected(size)[..]);
        // The next frame's start is left in the pipe, and its end is the
        // end of the input: no frame.
        assert!(read_frame(pipe.as_fd(), pool.take().unwrap()).is_none());
    }

    #[test]
    fn a_frame_is_moved_whole_into_pipes() {
        let size = 1_500_000;
        let Some(pool) = pipe_io::big_pipes_or_skip(PipePool::new(size)) else {
            return;
        };
        let (pipe, writer) = slow_writer(size);
        let frame = splice_frame(pipe.as_fd(), pool.frame().unwrap()).expect("a whole frame");
        writer.join().unwrap();
        assert_eq!((frame.len(), frame.missing()), (size, 0));
        assert!(splice_frame(pipe.as_fd(), pool.frame().unwrap()).is_none());
    }

    #[test]
    fn audio_queue_keeps_only_the_newest() {
        let q = AudioQueue::new(&format());
        let per_frame = 1600 * 4;
        q.push(&vec![1u8; per_frame * 5]);
        q.push(&vec![2u8; per_frame]);
        let got = q.take(per_frame * 10);
        assert_eq!(got.len(), per_frame * AUDIO_QUEUE_FRAMES);
        assert_eq!(*got.last().unwrap(), 2);
        assert!(q.take(10).is_empty());
    }

    #[test]
    fn lead_measures_audio_against_a_frame() {
        let q = AudioQueue::new(&format());
        let tick = 1600 * 4;
        q.push(&vec![1u8; tick * 2]);
        let mark = q.mark();
        q.push(&vec![2u8; tick]);
        // Two ticks' worth arrived before the frame: one tick behind.
        assert_eq!(q.lead(mark, tick), -(tick as i64));
        assert_eq!(q.skip(tick), tick);
        assert_eq!(q.lead(mark, tick), 0);
        assert!(q.take(tick).iter().all(|&b| b == 1));
        // Its audio gone: the next tick's audio is one tick ahead.
        assert_eq!(q.lead(mark, tick), tick as i64);
        assert_eq!(q.take(tick)[0], 2);
    }

    #[test]
    fn audio_is_taken_in_whole_samples() {
        let q = AudioQueue::new(&format());
        q.push(&[1, 2, 3, 4, 5, 6]);
        assert_eq!(q.take(100).len(), 4);
        q.push(&[7, 8]);
        assert_eq!(&q.take(100)[..], &[5, 6, 7, 8]);
    }
}
