//! The offline source: an FFmpeg that decodes relay's copy of the offline
//! video in a loop, normalised to exactly the output's raw format, into two
//! pipes. The pump feeds the output's offline inputs from it.
//!
//! Why not let the output decode the file itself: a file input decodes all
//! the time, also while live is on air and nobody sees it (about 6 % of a
//! core at 1080p30, as much as the live decode). The source instead decodes
//! only as fast as its frames are taken: while live is on air the pump
//! takes none, the few frames read ahead (`offline_frames`) and its pipes
//! fill, and it rests blocked in a write, using no CPU. Its frames move
//! into relay's pipe stores with splice(2), never through our memory, and
//! the pump repeats the last one whenever the source is late. And the
//! output no longer depends on the file: if the source dies, the output
//! goes on with its last frame and relay restarts the source with backoff.

use std::os::fd::RawFd;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::ffmpeg;
use crate::ffmpeg::child::{self, Spec};
use crate::ffmpeg::preflight::OfflineInfo;
use crate::pipeline::frames::{Frame, FramePool};
use crate::pipeline::ingest::AudioQueue;
use crate::pipeline::offline_frames::{self, MAX_OWED_FRAMES};
use crate::pipeline::pipe_frames::PipePool;
use crate::pipeline::raw_format::{RawFormat, AUDIO_BYTES_PER_SAMPLE};

const VIDEO_FD: RawFd = 3;
const AUDIO_FD: RawFd = 4;

/// Offline audio read ahead of the pump, in frames' worth. The source
/// writes sound and picture interleaved; this lets it finish a frame's
/// sound while its next picture waits.
const AUDIO_AHEAD_FRAMES: usize = 8;

/// The source that normalises on every loop: relay's plain copy of the
/// offline video, whatever its format, scaled, padded, converted and
/// resampled to the raw format.
pub fn args(config: &Config, info: &OfflineInfo, path: &Path) -> Vec<String> {
    let f = RawFormat::of(config);
    let vars = [
        ("WIDTH", f.width.to_string()),
        ("HEIGHT", f.height.to_string()),
        ("FPS", f.fps.to_string()),
        ("SAMPLERATE", f.sample_rate.to_string()),
    ];
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(ffmpeg::COMMON_ARGS);
    push(&["-stream_loop", "-1", "-i"]);
    push(&[&format!("file:{}", path.display())]);
    let audio_input = if info.has_audio {
        "0:a:0"
    } else {
        let src = format!("anullsrc=r={}:cl=stereo", f.sample_rate);
        push(&["-f", "lavfi", "-i", &src]);
        "1:a:0"
    };
    push(&["-map", "0:v:0", "-vf"]);
    push(&[&ffmpeg::render(ffmpeg::OFFLINE_VIDEO_FILTER, &vars)]);
    push(&["-f", "rawvideo", "-pix_fmt", "yuv420p"]);
    push(&["-avioflags", "direct", &child::fd_url(VIDEO_FD)]);
    push(&["-map", audio_input, "-af"]);
    push(&[&ffmpeg::render(ffmpeg::OFFLINE_AUDIO_FILTER, &vars)]);
    push(&["-f", "s16le", "-ar", &f.sample_rate.to_string(), "-ac", "2"]);
    push(&[&child::fd_url(AUDIO_FD)]);
    a
}

/// The source that only decodes: the normalised copy
/// (`offline_cache.rs`) is already in the raw format, so it needs no
/// filter but the one that keeps the sound level with the picture where a
/// loop's sound ends early. One thread: nothing to share out. A raw
/// picture is not even decoded: its packets are the frames, copied as they
/// are (decoding and encoding rawvideo copies each frame twice more: 14 %
/// of a core against 2 % at 1080p30, measured).
pub fn cached_args(config: &Config, path: &Path, raw: bool) -> Vec<String> {
    let f = RawFormat::of(config);
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(ffmpeg::COMMON_ARGS);
    push(&["-threads", "1", "-stream_loop", "-1", "-i"]);
    push(&[&format!("file:{}", path.display())]);
    push(&["-map", "0:v:0"]);
    if raw {
        push(&["-c:v", "copy"]);
    } else {
        push(&["-pix_fmt", "yuv420p"]);
    }
    push(&[
        "-f",
        "rawvideo",
        "-avioflags",
        "direct",
        &child::fd_url(VIDEO_FD),
    ]);
    push(&["-map", "0:a:0", "-af", "aresample=async=1"]);
    push(&["-f", "s16le", "-ar", &f.sample_rate.to_string(), "-ac", "2"]);
    push(&[&child::fd_url(AUDIO_FD)]);
    a
}

/// What the pump reads from one running source.
pub struct OfflineSource {
    /// Its frames, whole, a few read ahead (`offline_frames`).
    pub video: mpsc::Receiver<Frame>,
    pub audio: Arc<SourceAudio>,
}

/// The source's sound, read ahead a little.
pub struct SourceAudio {
    queue: AudioQueue,
    /// Bytes of silence given in place of sound not there yet: skipped
    /// when it arrives, so that the sound keeps pace with the picture.
    owed: Mutex<usize>,
}

impl SourceAudio {
    /// Exactly `len` bytes of sound, completed with silence if short.
    pub fn take(&self, len: usize) -> Bytes {
        let mut owed = self.owed.lock().unwrap();
        if *owed > len * MAX_OWED_FRAMES as usize {
            *owed = 0;
        }
        if *owed > 0 {
            *owed -= self.queue.skip(*owed);
        }
        let got = self.queue.take(len);
        if got.len() == len {
            return got;
        }
        *owed += len - got.len();
        let mut v = Vec::with_capacity(len);
        v.extend_from_slice(&got);
        v.resize(len, 0);
        v.into()
    }
}

/// Spawns the source FFmpeg with `args` ([`args`] or [`cached_args`]) and
/// the readers of its picture (into `pipes`' stores, or `frames`' buffers
/// when none can be had) and its sound.
pub(crate) fn spawn(
    config: &Config,
    args: Vec<String>,
    ffmpeg_bin: &Path,
    pipes: Option<&PipePool>,
    frames: &FramePool,
) -> std::io::Result<(child::Running, OfflineSource)> {
    let format = RawFormat::of(config);
    let video = child::read_pipe()?;
    let audio = child::read_pipe()?;
    let running = child::spawn(Spec {
        role: "offline",
        program: ffmpeg_bin.to_path_buf(),
        args,
        fds: vec![(video.theirs, VIDEO_FD), (audio.theirs, AUDIO_FD)],
        stdout: false,
        secrets: Vec::new(),
    })?;
    let sound = Arc::new(SourceAudio {
        queue: AudioQueue::with_frames(&format, AUDIO_AHEAD_FRAMES),
        owed: Mutex::new(0),
    });
    tokio::spawn(read_audio(audio.ours, sound.clone()));
    let source = OfflineSource {
        video: offline_frames::read(
            video.ours.into_nonblocking_fd()?,
            pipes.cloned(),
            frames.clone(),
        )?,
        audio: sound,
    };
    Ok((running, source))
}

/// Reads the source's sound while there is room for it; otherwise leaves it
/// in the pipe, so the source waits rather than runs ahead.
async fn read_audio(mut pipe: tokio::net::unix::pipe::Receiver, sound: Arc<SourceAudio>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let room = sound.queue.room();
        if room < AUDIO_BYTES_PER_SAMPLE {
            sound.queue.space().await;
            continue;
        }
        let want = room.min(buf.len());
        match pipe.read(&mut buf[..want]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => sound.queue.push(&buf[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sound_given_as_silence_is_skipped_when_it_comes() {
        let format = RawFormat {
            width: 4,
            height: 2,
            fps: 30,
            sample_rate: 48000,
        };
        let sound = SourceAudio {
            queue: AudioQueue::with_frames(&format, 8),
            owed: Mutex::new(0),
        };
        let tick = 1600 * AUDIO_BYTES_PER_SAMPLE;
        assert!(sound.take(tick).iter().all(|&b| b == 0));
        sound.queue.push(&vec![1u8; tick]);
        sound.queue.push(&vec![2u8; tick]);
        assert!(sound.take(tick).iter().all(|&b| b == 2));
    }
}
