//! The offline video normalised once: a cached copy at exactly the
//! output's raw format, so the offline source only decodes it and loops
//! (ARCHITECTURE.md, "The offline video's cached copy").
//!
//! Without it the offline source decodes, scales, pads, converts and
//! resamples the same video again on every loop, for frames that never
//! change. So after relay's plain copy is made (`offline_copy.rs`), one
//! FFmpeg run, at the lowest priority and on one thread, writes the video
//! at the output's size and frame rate (yuv420p) with its sound as s16le
//! stereo at the output's rate, padded or cut to the picture's length, in
//! NUT. The picture is stored raw when the whole copy stays under
//! [`RAW_LIMIT`], else as H.264 of visually lossless quality (measured: bench/offline-formats).
//! Until the copy is ready, or if it cannot be made, the offline source
//! normalises on every loop as before: the offline screen comes up at
//! once, and a broken file behaves as it always did.
//!
//! One cache lives for the whole process, across pipeline restarts: it is
//! rebuilt only when the offline video (its path, size or modification
//! time) or the output's format changes. Copies left by an earlier process
//! are removed at start; the current one when the process ends.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tempfile::NamedTempFile;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::ffmpeg;
use crate::ffmpeg::preflight::OfflineInfo;
use crate::observe::api;
use crate::pipeline::offline_copy::OfflineCopy;
use crate::pipeline::raw_format::RawFormat;

/// Above this size (the picture stored raw, for the whole video) the
/// picture is stored as H.264 instead. The raw copy is read whole on every
/// loop, so it is cheap only while it stays in the page cache: 1 GiB is
/// 11 s at 1080p30, 25 s at 720p30.
pub const RAW_LIMIT: u64 = 1 << 30;

/// Videos shorter than this (or of unknown length: a still image) are not
/// cached: looping a file of a few frames reopens it every few frames.
const MIN_DURATION: Duration = Duration::from_secs(1);

/// The normalising run is stopped after this, plus four times the video's
/// length.
const BUILD_TIME_BASE: Duration = Duration::from_secs(120);

/// What the cached copy is made from and for: the offline video as it was
/// when relay copied it, and the output's raw format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    pub source: PathBuf,
    pub stamp: Option<(u64, SystemTime)>,
    pub format: RawFormat,
}

impl CacheKey {
    pub fn of(config: &Config) -> CacheKey {
        let source = config.offline_video_path.clone();
        let stamp = std::fs::metadata(&source)
            .ok()
            .and_then(|m| Some((m.len(), m.modified().ok()?)));
        CacheKey {
            source,
            stamp,
            format: RawFormat::of(config),
        }
    }
}

/// How the picture is stored in the cached copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Raw,
    H264,
}

impl Codec {
    /// Raw if the whole video fits under [`RAW_LIMIT`].
    pub fn for_video(format: &RawFormat, duration: Duration) -> Codec {
        let frames = duration.as_secs_f64() * format.fps as f64;
        if frames * format.frame_bytes() as f64 <= RAW_LIMIT as f64 {
            Codec::Raw
        } else {
            Codec::H264
        }
    }

    fn name(self) -> &'static str {
        match self {
            Codec::Raw => "rawvideo",
            Codec::H264 => "h264",
        }
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            Codec::Raw => &["-c:v", "rawvideo"],
            // Visually lossless, and the cheapest H.264 to decode (no
            // CABAC, no deblocking).
            Codec::H264 => &[
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-crf",
                "10",
                "-g",
                "60",
            ],
        }
    }
}

#[derive(Debug)]
enum State {
    /// Not wanted yet, or turned off.
    Off(String),
    Building(Codec),
    Ready(Codec, Arc<NamedTempFile>),
    Failed(String),
}

struct Inner {
    key: Option<CacheKey>,
    state: State,
    /// Normalising runs started by this process.
    generation: u64,
    /// The run under way; aborting it kills its FFmpeg.
    build: Option<tokio::task::JoinHandle<()>>,
}

/// The process's cached copy of the offline video.
pub struct OfflineCache {
    dir: PathBuf,
    instance: String,
    ffmpeg: PathBuf,
    inner: Mutex<Inner>,
    /// Bumped whenever the state changes.
    changed: watch::Sender<u64>,
}

impl OfflineCache {
    /// A cache in `dir` for `instance`; removes the copies an earlier
    /// process of this instance left (it was killed, say).
    pub fn new(dir: &Path, instance: &str, ffmpeg: &Path) -> Arc<OfflineCache> {
        remove_stale(dir, instance);
        Arc::new(OfflineCache {
            dir: dir.to_owned(),
            instance: instance.to_owned(),
            ffmpeg: ffmpeg.to_owned(),
            inner: Mutex::new(Inner {
                key: None,
                state: State::Off("not built yet".into()),
                generation: 0,
                build: None,
            }),
            changed: watch::channel(0).0,
        })
    }

    /// Asks for the copy of `key`, normalised from `input` (relay's plain
    /// copy, kept open by the run). Starts a run unless one for the same
    /// key was already made or tried: a failed run is not repeated until
    /// the video or the format changes.
    pub fn want(self: &Arc<Self>, key: CacheKey, input: Arc<OfflineCopy>, info: &OfflineInfo) {
        let mut inner = self.inner.lock().unwrap();
        if inner.key.as_ref() == Some(&key) {
            return;
        }
        if let Some(build) = inner.build.take() {
            build.abort();
        }
        inner.key = Some(key.clone());
        let duration = info.duration.filter(|d| *d >= MIN_DURATION);
        let Some(duration) = duration else {
            inner.state = State::Off(
                "the offline video is shorter than a second or of unknown length".into(),
            );
            drop(inner);
            self.bump();
            return;
        };
        let codec = Codec::for_video(&key.format, duration);
        inner.generation += 1;
        inner.state = State::Building(codec);
        let this = self.clone();
        let has_audio = info.has_audio;
        inner.build = Some(tokio::spawn(async move {
            let limit = BUILD_TIME_BASE + 4 * duration;
            let started = tokio::time::Instant::now();
            let made = this
                .build(&key, input.path(), has_audio, codec, limit)
                .await;
            let mut inner = this.inner.lock().unwrap();
            if inner.key.as_ref() != Some(&key) {
                return;
            }
            inner.build = None;
            inner.state = match made {
                Ok(file) => {
                    info!(
                        codec = codec.name(),
                        seconds = started.elapsed().as_secs_f64(),
                        "offline video normalised once; the offline source reads that copy from now on"
                    );
                    State::Ready(codec, Arc::new(file))
                }
                Err(why) => {
                    warn!("could not normalise the offline video once ({why}); the offline source keeps normalising it on every loop");
                    State::Failed(why)
                }
            };
            drop(inner);
            this.bump();
        }));
        drop(inner);
        self.bump();
    }

    /// The cached copy of `key`, if it is ready.
    pub fn ready(&self, key: &CacheKey) -> Option<(Codec, Arc<NamedTempFile>)> {
        let inner = self.inner.lock().unwrap();
        match &inner.state {
            State::Ready(codec, file) if inner.key.as_ref() == Some(key) => {
                Some((*codec, file.clone()))
            }
            _ => None,
        }
    }

    /// The offline source could not play the copy: forget it (it is
    /// removed once the source lets go) and do not build it again for
    /// this key.
    pub fn reject(&self, key: &CacheKey, why: String) {
        let mut inner = self.inner.lock().unwrap();
        if inner.key.as_ref() == Some(key) && matches!(inner.state, State::Ready(..)) {
            warn!("the offline source could not play the normalised copy ({why}); it normalises on every loop again");
            inner.state = State::Failed(why);
            drop(inner);
            self.bump();
        }
    }

    /// Changes whenever the state does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// What `relay status` shows.
    pub fn status(&self) -> api::OfflineCache {
        let inner = self.inner.lock().unwrap();
        let (state, codec, detail) = match &inner.state {
            State::Off(why) => ("off", None, why.clone()),
            State::Building(c) => ("building", Some(c), String::new()),
            State::Ready(c, _) => ("ready", Some(c), String::new()),
            State::Failed(why) => ("failed", None, why.clone()),
        };
        api::OfflineCache {
            state: state.into(),
            generation: inner.generation,
            codec: codec.map(|c| c.name().to_string()),
            detail,
        }
    }

    /// One normalising run into a new file in the cache directory.
    async fn build(
        &self,
        key: &CacheKey,
        input: &Path,
        has_audio: bool,
        codec: Codec,
        limit: Duration,
    ) -> Result<NamedTempFile, String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| e.to_string())?;
        let file = tempfile::Builder::new()
            .prefix(&prefix(&self.instance))
            .suffix(".nut")
            .tempfile_in(&self.dir)
            .map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let mut cmd = tokio::process::Command::new(&self.ffmpeg);
        cmd.args(build_args(
            &key.format,
            input,
            has_audio,
            codec,
            file.path(),
        ))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
        // SAFETY: only async-signal-safe calls (setpriority, prctl) run
        // between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // The lowest priority: the live stream always comes first.
                libc::setpriority(libc::PRIO_PROCESS, 0, 19);
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
                Ok(())
            });
        }
        debug!(codec = codec.name(), "normalising the offline video once");
        let out = match tokio::time::timeout(limit, cmd.output()).await {
            Err(_) => return Err(format!("it took over {} s", limit.as_secs())),
            Ok(Err(err)) => return Err(format!("cannot run {}: {err}", self.ffmpeg.display())),
            Ok(Ok(out)) => out,
        };
        if !out.status.success() {
            let text = String::from_utf8_lossy(&out.stderr);
            let last: Vec<&str> = text.lines().rev().take(3).collect();
            let last: Vec<&str> = last.into_iter().rev().collect();
            return Err(format!("ffmpeg {}: {}", out.status, last.join(" | ")));
        }
        Ok(file)
    }
}

impl Drop for OfflineCache {
    fn drop(&mut self) {
        if let Some(build) = self.inner.get_mut().unwrap().build.take() {
            build.abort();
        }
    }
}

impl std::fmt::Debug for OfflineCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfflineCache")
            .field("dir", &self.dir)
            .field("state", &self.inner.lock().unwrap().state)
            .finish()
    }
}

/// Whether relay keeps a normalised copy: yes unless the environment has
/// `RELAY_OFFLINE_CACHE=off` (to measure or rule out the cache).
pub fn enabled() -> bool {
    std::env::var("RELAY_OFFLINE_CACHE").map_or(true, |v| v != "off")
}

fn prefix(instance: &str) -> String {
    format!("{instance}-normalised-")
}

/// The normalising run: today's filters once, into NUT, on one thread.
pub fn build_args(
    format: &RawFormat,
    input: &Path,
    has_audio: bool,
    codec: Codec,
    out: &Path,
) -> Vec<String> {
    let vars = [
        ("WIDTH", format.width.to_string()),
        ("HEIGHT", format.height.to_string()),
        ("FPS", format.fps.to_string()),
        ("SAMPLERATE", format.sample_rate.to_string()),
    ];
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(ffmpeg::COMMON_ARGS);
    push(&["-threads", "1", "-filter_threads", "1"]);
    push(&["-i", &format!("file:{}", input.display())]);
    let audio_input = if has_audio {
        "0:a:0"
    } else {
        let src = format!("anullsrc=r={}:cl=stereo", format.sample_rate);
        push(&["-f", "lavfi", "-i", &src]);
        "1:a:0"
    };
    push(&["-map", "0:v:0", "-vf"]);
    push(&[&ffmpeg::render(ffmpeg::OFFLINE_VIDEO_FILTER, &vars)]);
    push(codec.args());
    push(&["-threads", "1"]);
    // The sound as long as the picture, so that loops stay level.
    push(&["-map", audio_input, "-af"]);
    push(&[&format!(
        "{},apad",
        ffmpeg::render(ffmpeg::OFFLINE_AUDIO_FILTER, &vars)
    )]);
    push(&["-c:a", "pcm_s16le", "-ar", &format.sample_rate.to_string()]);
    push(&["-ac", "2", "-shortest", "-f", "nut", "-y"]);
    push(&[&format!("file:{}", out.display())]);
    a
}

/// Removes copies an earlier process of this instance left behind: only
/// one relay runs per instance name, so none of them is in use.
fn remove_stale(dir: &Path, instance: &str) {
    let prefix = prefix(instance);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(entry.path());
            debug!(path = %entry.path().display(), "removed a stale normalised copy");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format(height: u32) -> RawFormat {
        RawFormat {
            width: crate::config::width_16_9(height),
            height,
            fps: 30,
            sample_rate: 48000,
        }
    }

    #[test]
    fn short_videos_are_stored_raw_and_long_ones_as_h264() {
        let secs = Duration::from_secs;
        assert_eq!(Codec::for_video(&format(1080), secs(11)), Codec::Raw);
        assert_eq!(Codec::for_video(&format(1080), secs(12)), Codec::H264);
        assert_eq!(Codec::for_video(&format(720), secs(25)), Codec::Raw);
        assert_eq!(Codec::for_video(&format(720), secs(26)), Codec::H264);
    }

    #[test]
    fn the_run_normalises_once_into_nut_with_sound_as_long_as_the_picture() {
        let a = build_args(
            &format(720),
            Path::new("/c/in.mp4"),
            false,
            Codec::Raw,
            Path::new("/c/out.nut"),
        )
        .join(" ");
        assert!(a.contains("-i file:/c/in.mp4"), "{a}");
        assert!(a.contains("scale=1280:720"), "{a}");
        assert!(a.contains("fps=30"), "{a}");
        assert!(a.contains("anullsrc=r=48000"), "{a}");
        assert!(a.contains(",apad "), "{a}");
        assert!(a.contains("-c:v rawvideo"), "{a}");
        assert!(
            a.contains("-c:a pcm_s16le -ar 48000 -ac 2 -shortest"),
            "{a}"
        );
        assert!(a.ends_with("-f nut -y file:/c/out.nut"), "{a}");
        assert!(!a.contains("-stream_loop"), "{a}");
    }

    #[test]
    fn copies_an_earlier_process_left_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("main-normalised-old.nut"), b"x").unwrap();
        std::fs::write(dir.path().join("other-normalised-x.nut"), b"x").unwrap();
        std::fs::write(dir.path().join("main-offline-x.mp4"), b"x").unwrap();
        let _cache = OfflineCache::new(dir.path(), "main", Path::new("ffmpeg"));
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["main-offline-x.mp4", "other-normalised-x.nut"]);
    }
}
