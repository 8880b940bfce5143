//! Media files made and inspected with ffmpeg and ffprobe.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::process::Command;

use crate::sink::{mean_rgb, FRAME_BYTES};

/// FFmpeg's output options for H.264 as the tests encode it: ultrafast,
/// a keyframe every 30 frames.
pub const X264_ULTRAFAST: [&str; 6] = ["-c:v", "libx264", "-preset", "ultrafast", "-g", "30"];

/// An offline video to make: a lavfi picture, optionally a sine tone,
/// H.264 + AAC in mp4. [`make_offline_video`] is the tests' solid-colour
/// one; the demo makes SMPTE bars and the benchmark a moving picture.
#[derive(Debug, Clone)]
pub struct OfflineVideo {
    /// A lavfi source (graph) of endless video: `color=c=red:s=320x180:r=30`,
    /// `smptehdbars=s=1280x720:r=30`, [`moving_picture`].
    pub picture: String,
    pub seconds: u32,
    /// A sine tone: (frequency Hz, sample rate Hz); `None`: no audio.
    pub tone: Option<(u32, u32)>,
    /// x264 preset.
    pub preset: &'static str,
    /// Keyframe interval in frames.
    pub gop_frames: u32,
    /// Extra output options (before the path), e.g. an audio bitrate.
    pub extra: Vec<String>,
}

impl OfflineVideo {
    /// `picture` for `seconds`, with a 1 kHz tone at 48 kHz, veryfast with
    /// a keyframe every 60 frames.
    pub fn new(picture: impl Into<String>, seconds: u32) -> OfflineVideo {
        OfflineVideo {
            picture: picture.into(),
            seconds,
            tone: Some((1000, 48000)),
            preset: "veryfast",
            gop_frames: 60,
            extra: Vec::new(),
        }
    }

    /// Runs ffmpeg (up to 2 minutes) to write the video to `path`.
    pub async fn make(&self, path: &Path) -> anyhow::Result<()> {
        let seconds = self.seconds;
        let mut cmd = Command::new("ffmpeg");
        cmd.args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"]);
        if let Some((freq, rate)) = self.tone {
            cmd.args(["-f", "lavfi", "-i"]).arg(format!(
                "sine=frequency={freq}:sample_rate={rate}:duration={seconds}"
            ));
        }
        let graph = format!("{},trim=duration={seconds}[v]", self.picture);
        cmd.args(["-filter_complex", &graph, "-map", "[v]"]);
        let gop = self.gop_frames.to_string();
        cmd.args(["-c:v", "libx264", "-preset", self.preset, "-g", &gop])
            .args(["-pix_fmt", "yuv420p"]);
        if self.tone.is_some() {
            cmd.args(["-map", "0:a", "-c:a", "aac", "-shortest"]);
        }
        cmd.args(&self.extra)
            .args(["-movflags", "+faststart"])
            .arg(path);
        let out = tokio::time::timeout(Duration::from_secs(120), cmd.kill_on_drop(true).output())
            .await
            .with_context(|| format!("making {} took over 2 minutes", path.display()))?
            .context("running ffmpeg")?;
        if !out.status.success() {
            bail!(
                "ffmpeg could not make {} ({}): {}",
                path.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

/// A moving picture `width`x`height` at `fps`: `background` (lavfi colour)
/// with a white box crossing it, so that every frame differs from the one
/// before (a repeated frame is then filler or a duplicate).
pub fn moving_picture(background: &str, width: u32, height: u32, fps: u32) -> String {
    let (w, h) = (width, height);
    format!(
        "color=c={background}:s={w}x{h}:r={fps}[bg];color=c=white:s={bw}x{bh}:r={fps}[box];\
         [bg][box]overlay=x='mod(n*W/45,W-w)':y=(H-h)/2:shortest=1",
        bw = (w / 4) & !1,
        bh = (h / 2) & !1,
    )
}

/// Makes a 4-second mp4 of a solid colour (lavfi colour name, e.g. `red`),
/// with a 440 Hz tone if `with_audio`, in `dir`; returns its path. H.264
/// ultrafast with a keyframe every second, AAC; a few tens of kB.
pub async fn make_offline_video(
    dir: &Path,
    colour: &str,
    with_audio: bool,
    width: u32,
    height: u32,
) -> anyhow::Result<PathBuf> {
    let audio = if with_audio { "-a" } else { "" };
    let path = dir.join(format!("offline-{colour}-{width}x{height}{audio}.mp4"));
    OfflineVideo {
        picture: format!("color=c={colour}:s={width}x{height}:r=30"),
        seconds: 4,
        tone: with_audio.then_some((440, 44100)),
        preset: "ultrafast",
        gop_frames: 30,
        extra: if with_audio {
            vec!["-b:a".into(), "64k".into()]
        } else {
            Vec::new()
        },
    }
    .make(&path)
    .await?;
    Ok(path)
}

/// What ffprobe says about a media file.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaInfo {
    pub duration_s: f64,
    pub width: u32,
    pub height: u32,
    pub has_video: bool,
    pub has_audio: bool,
}

/// Runs ffprobe on a file.
pub async fn probe_media(path: &Path) -> anyhow::Result<MediaInfo> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-of", "default=noprint_wrappers=1"])
        .args([
            "-show_entries",
            "format=duration:stream=codec_type,width,height",
        ])
        .arg(path)
        .kill_on_drop(true)
        .output()
        .await
        .context("running ffprobe")?;
    if !out.status.success() {
        bail!(
            "ffprobe {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut info = MediaInfo {
        duration_s: 0.0,
        width: 0,
        height: 0,
        has_video: false,
        has_audio: false,
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        match line.split_once('=') {
            Some(("duration", v)) => info.duration_s = v.parse().unwrap_or(0.0),
            Some(("width", v)) => info.width = v.parse().unwrap_or(0),
            Some(("height", v)) => info.height = v.parse().unwrap_or(0),
            Some(("codec_type", "video")) => info.has_video = true,
            Some(("codec_type", "audio")) => info.has_audio = true,
            _ => {}
        }
    }
    Ok(info)
}

/// Mean colour of the first video frame of a file or URL.
pub async fn first_frame_rgb(input: &str) -> anyhow::Result<[u8; 3]> {
    let out = Command::new("ffmpeg")
        .args([
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-i",
            input,
        ])
        .args(["-frames:v", "1", "-vf", "scale=16:9", "-f", "rawvideo"])
        .args(["-pix_fmt", "rgb24", "pipe:1"])
        .kill_on_drop(true)
        .output()
        .await
        .context("running ffmpeg")?;
    if out.stdout.len() != FRAME_BYTES {
        bail!(
            "ffmpeg gave {} bytes for one 16x9 frame of {input}: {}",
            out.stdout.len(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(mean_rgb(&out.stdout))
}
