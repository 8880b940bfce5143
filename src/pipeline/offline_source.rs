//! The offline source: an FFmpeg that decodes relay's copy of the offline
//! video in a loop, normalised to exactly the output's raw format, into two
//! pipes. The pump feeds the output's offline inputs from it.
//!
//! Why not let the output decode the file itself: a file input decodes all
//! the time, also while live is on air and nobody sees it (about 6 % of a
//! core at 1080p30, as much as the live decode). The source instead decodes
//! only as fast as its frames are taken: while live is on air the pump
//! takes none, its pipes fill, and it rests blocked in a write, using no
//! CPU. Its frames are moved into the output's pipe with splice(2), never
//! through our memory. And the output no longer depends on the file: if the
//! source dies, the output goes on with black and relay restarts the source
//! with backoff.

use std::io::ErrorKind;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nix::poll::PollFlags;
use tokio::io::AsyncReadExt;

use crate::config::Config;
use crate::ffmpeg;
use crate::ffmpeg::child::{self, Spec};
use crate::ffmpeg::preflight::OfflineInfo;
use crate::pipeline::ingest::AudioQueue;
use crate::pipeline::pipe_io::{self, wait_for};
use crate::pipeline::raw_format::{RawFormat, AUDIO_BYTES_PER_SAMPLE};

const VIDEO_FD: RawFd = 3;
const AUDIO_FD: RawFd = 4;

/// Offline audio read ahead of the pump, in frames' worth. The source
/// writes sound and picture interleaved; this lets it finish a frame's
/// sound while its next picture waits.
const AUDIO_AHEAD_FRAMES: usize = 8;

/// A frame the source began but did not finish within this is completed
/// with zeros, so the output's raw stream stays aligned.
const MID_FRAME_STALL: Duration = Duration::from_secs(1);

/// Frames owed (a fallback went out while the source was late) are made
/// up by skipping; beyond a second's worth the debt is forgiven, for the
/// sound as for the picture, so the two stay level either way.
const MAX_OWED_FRAMES: u64 = 30;

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
#[derive(Clone)]
pub struct OfflineSource {
    pub video: Arc<SourceVideo>,
    pub audio: Arc<SourceAudio>,
}

/// The source's video pipe. Frames are taken whole, one at a time, by
/// whichever output writer asks (a restarted output gets a new writer).
pub struct SourceVideo {
    pipe: OwnedFd,
    frame_bytes: usize,
    state: Mutex<VideoState>,
}

#[derive(Default)]
struct VideoState {
    /// Bytes taken from the pipe: a frame boundary is a multiple of the
    /// frame size.
    taken: u64,
    /// Frames written as fallback instead of the source's; skipped later
    /// so that the picture keeps pace with the sound.
    owed: u64,
    /// The source closed its pipe (it exited).
    ended: bool,
}

impl SourceVideo {
    /// Moves the source's next frame into the pipe `out`. Waits at most
    /// `wait` for it to begin; false if it did not (the frame is then owed).
    /// An error only if `out` is closed.
    pub fn splice_frame(&self, out: BorrowedFd<'_>, wait: Duration) -> std::io::Result<bool> {
        let mut st = self.state.lock().unwrap();
        if st.ended {
            return Ok(false);
        }
        let fb = self.frame_bytes as u64;
        // A writer that went away mid-frame left the rest of it: skip it.
        let rest = (fb - st.taken % fb) % fb;
        if rest > 0 && !self.discard(&mut st, rest as usize, MID_FRAME_STALL) {
            st.owed += 1;
            return Ok(false);
        }
        // A frame owed: skip one per frame taken, so the source catches up
        // at twice the pace rather than in one long wait.
        if st.owed > MAX_OWED_FRAMES {
            st.owed = 0;
        }
        if st.owed > 0 && self.available() > 0 {
            st.owed -= 1;
            if !self.discard(&mut st, self.frame_bytes, MID_FRAME_STALL) {
                st.owed += 1;
                return Ok(false);
            }
        }
        if self.available() == 0 {
            match wait_for(self.pipe.as_fd(), PollFlags::POLLIN, Some(wait)) {
                Ok(true) => {}
                Ok(false) => {
                    st.owed += 1;
                    return Ok(false);
                }
                // Nothing left and the source gone.
                Err(_) => {
                    st.ended = true;
                    return Ok(false);
                }
            }
        }
        let mut left = self.frame_bytes;
        while left > 0 {
            match pipe_io::splice(self.pipe.as_fd(), out, left) {
                Ok(0) => {
                    st.ended = true;
                    break;
                }
                Ok(n) => {
                    left -= n;
                    st.taken += n as u64;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if self.available() > 0 {
                        // Room is what is missing, in the output's pipe.
                        wait_for(out, PollFlags::POLLOUT, None)?;
                    } else if !wait_for(self.pipe.as_fd(), PollFlags::POLLIN, Some(MID_FRAME_STALL))
                        .unwrap_or(false)
                    {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::BrokenPipe => return Err(e),
                Err(_) => {
                    st.ended = true;
                    break;
                }
            }
        }
        if left > 0 {
            // The source stalled or died mid-frame: complete the frame.
            pad_zeros(out, left)?;
        }
        Ok(true)
    }

    /// Bytes waiting in the source's pipe.
    fn available(&self) -> usize {
        pipe_io::unread_bytes(self.pipe.as_fd()).unwrap_or(0)
    }

    /// Drops `n` bytes from the pipe; false if they did not come in time.
    fn discard(&self, st: &mut VideoState, mut n: usize, wait: Duration) -> bool {
        let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") else {
            return false;
        };
        let deadline = Instant::now() + wait;
        while n > 0 {
            match pipe_io::splice(self.pipe.as_fd(), null.as_fd(), n) {
                Ok(0) => {
                    st.ended = true;
                    return false;
                }
                Ok(k) => {
                    n -= k;
                    st.taken += k as u64;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero()
                        || !wait_for(self.pipe.as_fd(), PollFlags::POLLIN, Some(left))
                            .unwrap_or(false)
                    {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
        true
    }
}

/// Writes `n` zero bytes into the non-blocking pipe `out`.
fn pad_zeros(out: BorrowedFd<'_>, mut n: usize) -> std::io::Result<()> {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    while n > 0 {
        let k = n.min(ZEROS.len());
        pipe_io::write_all(out, &ZEROS[..k])?;
        n -= k;
    }
    Ok(())
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
/// the reader of its sound.
pub(crate) fn spawn(
    config: &Config,
    args: Vec<String>,
    ffmpeg_bin: &Path,
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
        video: Arc::new(SourceVideo {
            pipe: video.ours.into_nonblocking_fd()?,
            frame_bytes: format.frame_bytes(),
            state: Mutex::new(VideoState::default()),
        }),
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
    use std::io::{Read, Write};
    use std::os::fd::OwnedFd;

    /// A source whose pipe we write, an output pipe we read; 8-byte frames.
    fn rig() -> (SourceVideo, std::fs::File, OwnedFd, std::fs::File) {
        let flags = nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK;
        let (src_read, src_write) = nix::unistd::pipe2(flags).unwrap();
        let (out_read, out_write) = nix::unistd::pipe2(flags).unwrap();
        let video = SourceVideo {
            pipe: src_read,
            frame_bytes: 8,
            state: Mutex::new(VideoState::default()),
        };
        (video, src_write.into(), out_write, out_read.into())
    }

    fn read_out(out: &mut std::fs::File) -> Vec<u8> {
        let mut buf = vec![0u8; 64];
        let n = out.read(&mut buf).unwrap_or(0);
        buf.truncate(n);
        buf
    }

    const NO_WAIT: Duration = Duration::from_millis(1);

    #[test]
    fn frames_move_whole_and_a_half_taken_one_is_skipped() {
        let (video, mut src, out, mut sink) = rig();
        src.write_all(&[1; 8]).unwrap();
        src.write_all(&[2; 8]).unwrap();
        assert!(video.splice_frame(out.as_fd(), NO_WAIT).unwrap());
        assert_eq!(read_out(&mut sink), vec![1; 8]);
        // A writer went away after 3 bytes of the next frame.
        let mut st = video.state.lock().unwrap();
        assert!(video.discard(&mut st, 3, NO_WAIT));
        drop(st);
        src.write_all(&[3; 8]).unwrap();
        assert!(video.splice_frame(out.as_fd(), NO_WAIT).unwrap());
        assert_eq!(read_out(&mut sink), vec![3; 8]);
    }

    #[test]
    fn a_late_frame_is_owed_and_skipped_later() {
        let (video, mut src, out, mut sink) = rig();
        assert!(!video.splice_frame(out.as_fd(), NO_WAIT).unwrap());
        assert_eq!(video.state.lock().unwrap().owed, 1);
        src.write_all(&[1; 8]).unwrap();
        src.write_all(&[2; 8]).unwrap();
        // The owed frame is skipped: picture and sound stay level.
        assert!(video.splice_frame(out.as_fd(), NO_WAIT).unwrap());
        assert_eq!(read_out(&mut sink), vec![2; 8]);
        assert_eq!(video.state.lock().unwrap().owed, 0);
    }

    #[test]
    fn a_source_that_dies_mid_frame_leaves_a_whole_frame() {
        let (video, mut src, out, mut sink) = rig();
        src.write_all(&[5; 3]).unwrap();
        drop(src);
        assert!(video.splice_frame(out.as_fd(), NO_WAIT).unwrap());
        assert_eq!(read_out(&mut sink), vec![5, 5, 5, 0, 0, 0, 0, 0]);
        // Ended: nothing more, without waiting.
        assert!(!video.splice_frame(out.as_fd(), NO_WAIT).unwrap());
    }

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
