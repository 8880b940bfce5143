//! Media files made and inspected with ffmpeg and ffprobe.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use tokio::process::Command;

use super::sink::{mean_rgb, FRAME_BYTES};

/// FFmpeg's output options for H.264 as the tests encode it: ultrafast,
/// a keyframe every 30 frames.
pub const X264_ULTRAFAST: [&str; 6] = ["-c:v", "libx264", "-preset", "ultrafast", "-g", "30"];

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
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i"])
        .arg(format!("color=c={colour}:s={width}x{height}:r=30:d=4"));
    if with_audio {
        cmd.args([
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=44100:duration=4",
        ]);
    }
    cmd.args(X264_ULTRAFAST).args(["-pix_fmt", "yuv420p"]);
    if with_audio {
        cmd.args(["-c:a", "aac", "-b:a", "64k"]);
    }
    cmd.args(["-movflags", "+faststart"]).arg(&path);
    let out = cmd
        .kill_on_drop(true)
        .output()
        .await
        .context("running ffmpeg")?;
    if !out.status.success() {
        bail!(
            "ffmpeg could not make {} ({}): {}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
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
