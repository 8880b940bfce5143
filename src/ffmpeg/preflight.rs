//! Checks run once at start-up, before any FFmpeg child is started: that the
//! installed FFmpeg has every filter and encoder the relay relies on, and that
//! the offline video is a readable video file that actually decodes.
//!
//! Failing here, with one line saying what to fix, beats discovering the same
//! problem as an FFmpeg child that dies over and over while the platform shows
//! a dead stream.
//!
//! These run synchronously through `std::process::Command`. Every child gets
//! a deadline so that a broken binary or an odd file cannot stall start-up,
//! and non-regular files (FIFOs, devices) are refused before FFmpeg could
//! block on them.

use std::ffi::OsString;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Filters the switching graph is built from.
const REQUIRED_FILTERS: [&str; 3] = ["zmq", "streamselect", "astreamselect"];
/// Encoders for the outgoing stream.
const REQUIRED_ENCODERS: [&str; 2] = ["libx264", "aac"];

/// Listing filters or encoders is instant; this only guards against a hung binary.
const LIST_TIMEOUT: Duration = Duration::from_secs(15);
/// Probing and decoding one frame of a local file takes well under a second;
/// the margin is for slow disks and large 4K frames on a small machine.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
/// How many video packets may be read looking for a first decodable frame.
/// A file meant to loop should start with a keyframe; a few packets of slack
/// tolerates a leading packet the decoder has to skip.
const DECODE_PACKETS: u32 = 5;

/// Enough for FFmpeg's filter and encoder lists; anything beyond is dropped.
const STDOUT_LIMIT: usize = 1 << 20;
/// Only the first lines of stderr are ever shown.
const STDERR_LIMIT: usize = 64 << 10;

/// What the relay needs to know about the offline video.
#[derive(Debug, Clone)]
pub struct OfflineInfo {
    pub width: u32,
    pub height: u32,
    pub has_audio: bool,
    /// `None` when the container does not say (e.g. a still image).
    pub duration: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("{} not found: install Debian's ffmpeg package (apt install ffmpeg)", describe_tool(.tool, .path))]
    ToolNotFound { tool: &'static str, path: PathBuf },

    #[error("cannot run {}: {source}", path.display())]
    ToolSpawn { path: PathBuf, source: io::Error },

    #[error("`{command}` did not finish within {} s", timeout.as_secs())]
    Timeout { command: String, timeout: Duration },

    #[error("`{command}` failed ({status}): {detail}")]
    ToolFailed {
        command: String,
        status: ExitStatus,
        detail: String,
    },

    #[error(
        "{} lacks {}: Debian's ffmpeg package has them (apt install ffmpeg)",
        ffmpeg.display(),
        missing.join(", ")
    )]
    MissingFeatures {
        ffmpeg: PathBuf,
        /// E.g. `filter zmq`, `encoder libx264`.
        missing: Vec<String>,
    },

    #[error("OFFLINE_VIDEO_PATH: {} does not exist", path.display())]
    OfflineNotFound { path: PathBuf },

    #[error("OFFLINE_VIDEO_PATH: {} is {kind}, not a regular file", path.display())]
    OfflineNotAFile { path: PathBuf, kind: &'static str },

    #[error("OFFLINE_VIDEO_PATH: cannot read {}: {source}", path.display())]
    OfflineUnreadable { path: PathBuf, source: io::Error },

    #[error("OFFLINE_VIDEO_PATH: {} has no video stream", path.display())]
    OfflineNoVideo { path: PathBuf },

    #[error("OFFLINE_VIDEO_PATH: {} is not a usable video: {reason}", path.display())]
    OfflineInvalid { path: PathBuf, reason: String },
}

fn describe_tool(tool: &str, path: &Path) -> String {
    if path.as_os_str() == tool {
        tool.to_owned()
    } else {
        format!("{tool} (looked for {})", path.display())
    }
}

/// Verifies that `ffmpeg` runs and has the filters (`zmq`, `streamselect`,
/// `astreamselect`) and encoders (`libx264`, `aac`) the relay uses.
pub fn check_ffmpeg(ffmpeg: &Path) -> Result<(), PreflightError> {
    let filters = list_names(ffmpeg, "-filters")?;
    let encoders = list_names(ffmpeg, "-encoders")?;

    let missing: Vec<String> = REQUIRED_FILTERS
        .iter()
        .filter(|name| !filters.iter().any(|f| f == *name))
        .map(|name| format!("filter {name}"))
        .chain(
            REQUIRED_ENCODERS
                .iter()
                .filter(|name| !encoders.iter().any(|e| e == *name))
                .map(|name| format!("encoder {name}")),
        )
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PreflightError::MissingFeatures {
            ffmpeg: ffmpeg.to_owned(),
            missing,
        })
    }
}

/// Verifies that `ffmpeg` supports the output protocol `protocol` (e.g.
/// `rtmps`, which needs FFmpeg built with TLS).
pub fn check_protocol(ffmpeg: &Path, protocol: &str) -> Result<(), PreflightError> {
    // The list is "Input:" names then "Output:" names, one per line; the
    // relay only ever writes with it, so only the output section counts.
    let text = ffmpeg_list(ffmpeg, "-protocols")?;
    let outputs = text.split_once("Output:").map_or("", |(_, rest)| rest);
    if outputs.lines().any(|l| l.trim() == protocol) {
        Ok(())
    } else {
        Err(PreflightError::MissingFeatures {
            ffmpeg: ffmpeg.to_owned(),
            missing: vec![format!("output protocol {protocol}")],
        })
    }
}

/// The text of `ffmpeg -hide_banner FLAG` (`-filters`, `-encoders`,
/// `-protocols`): what this FFmpeg build offers.
fn ffmpeg_list(ffmpeg: &Path, flag: &str) -> Result<String, PreflightError> {
    let mut command = Command::new(ffmpeg);
    command.args(["-hide_banner", flag]);
    let output = run(&mut command, "ffmpeg", LIST_TIMEOUT)?;
    if !output.status.success() {
        return Err(PreflightError::ToolFailed {
            command: output.command,
            status: output.status,
            detail: first_line(&output.stderr),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `ffmpeg -hide_banner -filters` (or `-encoders`) and returns the names
/// listed. Each entry line is ` FLAGS name  ...`; legend and header lines
/// yield words such as "=" that match nothing we look for.
fn list_names(ffmpeg: &Path, what: &str) -> Result<Vec<String>, PreflightError> {
    Ok(ffmpeg_list(ffmpeg, what)?
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .map(str::to_owned)
        .collect())
}

/// Checks that `path` is a regular, readable file that `ffprobe` recognises,
/// with a video stream whose first frame decodes, and describes it.
pub fn probe_offline(ffprobe: &Path, path: &Path) -> Result<OfflineInfo, PreflightError> {
    check_regular_readable_file(path)?;

    let invalid = |reason: String| PreflightError::OfflineInvalid {
        path: path.to_owned(),
        reason,
    };

    // "file:" keeps a name that starts with '-' or looks like "proto:..."
    // from being taken for an option or another protocol.
    let mut input = OsString::from("file:");
    input.push(path.as_os_str());

    let mut command = Command::new(ffprobe);
    command
        .args(["-v", "error", "-show_entries"])
        .arg("stream=codec_type,width,height:stream_disposition=attached_pic:format=duration")
        .args(["-of", "default"])
        .arg(&input);
    let output = run(&mut command, "ffprobe", PROBE_TIMEOUT)?;
    if !output.status.success() {
        let detail = first_line(&output.stderr);
        return Err(invalid(format!("ffprobe cannot read it: {detail}")));
    }
    let probe = parse_probe(&String::from_utf8_lossy(&output.stdout));

    // Cover art is stored as a one-frame "video" stream; it is not the video.
    let video = probe
        .streams
        .iter()
        .find(|s| s.codec_type == "video" && !s.attached_pic)
        .ok_or_else(|| PreflightError::OfflineNoVideo {
            path: path.to_owned(),
        })?;
    let (width, height) = match (video.width, video.height) {
        (Some(w), Some(h)) if w > 0 && h > 0 => (w, h),
        _ => return Err(invalid("ffprobe cannot tell the video's size".to_owned())),
    };
    let has_audio = probe.streams.iter().any(|s| s.codec_type == "audio");

    // A valid header says nothing about the data behind it, so decode the
    // first frame for real. ffprobe decodes when asked for frames; "V" skips
    // cover art, and the interval bounds how much is read.
    let mut command = Command::new(ffprobe);
    command
        .args(["-v", "error", "-select_streams", "V:0"])
        .args(["-read_intervals", &format!("%+#{DECODE_PACKETS}")])
        .args(["-show_entries", "frame=media_type", "-of", "csv=p=0"])
        .arg(&input);
    let output = run(&mut command, "ffprobe", PROBE_TIMEOUT)?;
    // One "video" line per decoded frame (the first may carry a trailing
    // comma for side data).
    let decoded = String::from_utf8_lossy(&output.stdout)
        .lines()
        .any(|line| line.split(',').next().map(str::trim) == Some("video"));
    if !output.status.success() || !decoded {
        let detail = match first_line(&output.stderr) {
            d if d.is_empty() => String::new(),
            d => format!(" ({d})"),
        };
        return Err(invalid(format!(
            "its first video frame cannot be decoded{detail}"
        )));
    }

    Ok(OfflineInfo {
        width,
        height,
        has_audio,
        duration: probe.duration,
    })
}

/// Refuses what FFmpeg could block on or what cannot be a video at all.
fn check_regular_readable_file(path: &Path) -> Result<(), PreflightError> {
    let metadata = std::fs::metadata(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => PreflightError::OfflineNotFound {
            path: path.to_owned(),
        },
        _ => PreflightError::OfflineUnreadable {
            path: path.to_owned(),
            source,
        },
    })?;
    if !metadata.is_file() {
        return Err(PreflightError::OfflineNotAFile {
            path: path.to_owned(),
            kind: file_kind(&metadata.file_type()),
        });
    }
    if metadata.len() == 0 {
        return Err(PreflightError::OfflineInvalid {
            path: path.to_owned(),
            reason: "the file is empty".to_owned(),
        });
    }
    // Opening a regular file does not block, and it reports a permission
    // problem in plainer words than ffprobe would.
    std::fs::File::open(path)
        .map(drop)
        .map_err(|source| PreflightError::OfflineUnreadable {
            path: path.to_owned(),
            source,
        })
}

fn file_kind(file_type: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_block_device() || file_type.is_char_device() {
        "a device"
    } else {
        "a special file"
    }
}

#[derive(Debug, Default)]
struct ProbedStream {
    codec_type: String,
    width: Option<u32>,
    height: Option<u32>,
    attached_pic: bool,
}

#[derive(Debug, Default)]
struct Probe {
    streams: Vec<ProbedStream>,
    duration: Option<Duration>,
}

/// Parses ffprobe's default writer: `[STREAM]` ... `[/STREAM]` sections of
/// `key=value` lines, then `[FORMAT]`. Values may be "N/A".
fn parse_probe(text: &str) -> Probe {
    let mut probe = Probe::default();
    let mut in_format = false;
    for line in text.lines().map(str::trim) {
        match line {
            "[STREAM]" => probe.streams.push(ProbedStream::default()),
            "[FORMAT]" => in_format = true,
            "[/FORMAT]" => in_format = false,
            _ => {
                let Some((key, value)) = line.split_once('=') else {
                    continue;
                };
                if in_format {
                    if key == "duration" {
                        probe.duration = value
                            .parse::<f64>()
                            .ok()
                            .filter(|secs| secs.is_finite() && *secs > 0.0)
                            .map(Duration::from_secs_f64);
                    }
                } else if let Some(stream) = probe.streams.last_mut() {
                    match key {
                        "codec_type" => stream.codec_type = value.to_owned(),
                        "width" => stream.width = value.parse().ok(),
                        "height" => stream.height = value.parse().ok(),
                        "DISPOSITION:attached_pic" => stream.attached_pic = value == "1",
                        _ => {}
                    }
                }
            }
        }
    }
    probe
}

/// The first non-empty line of a child's stderr, for a one-line message.
/// FFmpeg's `[h264 @ 0x55d0c1e2] message` becomes `h264: message`: the
/// address means nothing to a reader.
fn first_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let tidied = line.strip_prefix('[').and_then(|rest| {
        let (context, message) = rest.split_once("] ")?;
        let (component, _address) = context.split_once(" @ 0x")?;
        Some(format!("{component}: {message}"))
    });
    tidied.unwrap_or_else(|| line.to_owned())
}

struct Output {
    /// The command as it would be typed, for messages.
    command: String,
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Runs `command` with stdin closed and its output captured, killing it if it
/// is still running after `timeout`. `tool` names it in "not found" errors.
fn run(
    command: &mut Command,
    tool: &'static str,
    timeout: Duration,
) -> Result<Output, PreflightError> {
    let shown = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let program = PathBuf::from(command.get_program());

    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => PreflightError::ToolNotFound {
                tool,
                path: program.clone(),
            },
            _ => PreflightError::ToolSpawn {
                path: program.clone(),
                source,
            },
        })?;

    // Pipes are drained on their own threads so a chatty child never blocks
    // on a full pipe while we wait for it to exit.
    let (stdout_tx, stdout_rx) = mpsc::channel();
    let (stderr_tx, stderr_rx) = mpsc::channel();
    if let Some(pipe) = child.stdout.take() {
        thread::spawn(move || stdout_tx.send(read_capped(pipe, STDOUT_LIMIT)));
    }
    if let Some(pipe) = child.stderr.take() {
        thread::spawn(move || stderr_tx.send(read_capped(pipe, STDERR_LIMIT)));
    }

    let deadline = Instant::now() + timeout;
    let timed_out = || PreflightError::Timeout {
        command: shown.clone(),
        timeout,
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                // Ignore errors: the child may have exited in between.
                let _ = child.kill();
                let _ = child.wait();
                return Err(timed_out());
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(source) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(PreflightError::ToolSpawn {
                    path: program,
                    source,
                });
            }
        }
    };

    // A grandchild may still hold the pipes open after the child exits;
    // don't wait for it past the deadline.
    let collect = |rx: mpsc::Receiver<Vec<u8>>| {
        let left = deadline.saturating_duration_since(Instant::now());
        rx.recv_timeout(left.max(Duration::from_millis(100)))
    };
    let stdout = collect(stdout_rx).map_err(|_| timed_out())?;
    let stderr = collect(stderr_rx).unwrap_or_default();

    Ok(Output {
        command: shown,
        status,
        stdout,
        stderr,
    })
}

/// Reads `pipe` to the end, keeping at most `limit` bytes.
fn read_capped(mut pipe: impl Read, limit: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        match pipe.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buffer[..n.min(room)]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    kept
}

/// The start-up checks that turn into exit status 78: FFmpeg has what relay
/// needs, and the offline video decodes.
pub fn check_all(config: &crate::config::Config) -> Result<OfflineInfo, PreflightError> {
    check_ffmpeg(Path::new("ffmpeg"))?;
    probe_offline(Path::new("ffprobe"), &config.offline_video_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FFMPEG: &str = "ffmpeg";
    const FFPROBE: &str = "ffprobe";

    /// Makes a small file with the real ffmpeg from lavfi sources.
    fn make_video(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
        let path = dir.join(name);
        let status = Command::new(FFMPEG)
            .args(["-nostdin", "-v", "error", "-y"])
            .args(args)
            .arg(&path)
            .status()
            .expect("ffmpeg runs");
        assert!(status.success(), "ffmpeg could not make {name}");
        path
    }

    fn with_audio(dir: &Path) -> PathBuf {
        make_video(
            dir,
            "av.mp4",
            &[
                "-f",
                "lavfi",
                "-i",
                "color=c=green:s=64x36:d=1",
                "-f",
                "lavfi",
                "-i",
                "sine=d=1",
                "-shortest",
                "-movflags",
                "+faststart",
            ],
        )
    }

    fn probe(path: &Path) -> Result<OfflineInfo, PreflightError> {
        probe_offline(Path::new(FFPROBE), path)
    }

    /// Writes an executable script through a shell child, so this process
    /// never holds a writable descriptor to it: another test forking at that
    /// moment would otherwise make exec fail with ETXTBSY.
    fn fake_tool(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("fake-ffmpeg");
        let status = Command::new("sh")
            .arg("-c")
            .arg("printf '%s\\n' \"$1\" > \"$2\" && chmod +x \"$2\"")
            .arg("sh")
            .arg(format!("#!/bin/sh\n{body}"))
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success());
        path
    }

    #[test]
    fn video_with_audio() {
        let dir = tempfile::tempdir().unwrap();
        let info = probe(&with_audio(dir.path())).unwrap();
        assert_eq!((info.width, info.height), (64, 36));
        assert!(info.has_audio);
        let secs = info.duration.expect("mp4 has a duration").as_secs_f64();
        assert!((0.9..1.2).contains(&secs), "{secs}");
    }

    #[test]
    fn video_without_audio() {
        let dir = tempfile::tempdir().unwrap();
        let path = make_video(
            dir.path(),
            "v.mkv",
            &["-f", "lavfi", "-i", "color=c=red:s=96x54:d=1"],
        );
        let info = probe(&path).unwrap();
        assert_eq!((info.width, info.height), (96, 54));
        assert!(!info.has_audio);
    }

    #[test]
    fn audio_only_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = make_video(dir.path(), "a.m4a", &["-f", "lavfi", "-i", "sine=d=1"]);
        let e = probe(&path).unwrap_err();
        assert!(matches!(e, PreflightError::OfflineNoVideo { .. }), "{e}");
        assert!(e.to_string().starts_with("OFFLINE_VIDEO_PATH: "), "{e}");
    }

    #[test]
    fn missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.mp4");
        let e = probe(&path).unwrap_err();
        assert!(matches!(e, PreflightError::OfflineNotFound { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            format!("OFFLINE_VIDEO_PATH: {} does not exist", path.display())
        );
    }

    #[test]
    fn text_file_named_mp4() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.mp4");
        std::fs::write(&path, "this is not a video\n".repeat(100)).unwrap();
        let e = probe(&path).unwrap_err();
        assert!(matches!(e, PreflightError::OfflineInvalid { .. }), "{e}");
        let text = e.to_string();
        assert!(text.starts_with("OFFLINE_VIDEO_PATH: "), "{text}");
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(!text.contains('\n'), "{text}");
        assert!(text.contains("ffprobe cannot read it: "), "{text}");
    }

    #[test]
    fn empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.mp4");
        std::fs::write(&path, "").unwrap();
        let e = probe(&path).unwrap_err();
        assert!(e.to_string().ends_with("the file is empty"), "{e}");
    }

    /// Keeps the header (moov first, thanks to +faststart) and replaces the
    /// media data with `fill`, so ffprobe still lists the streams.
    fn corrupt_media_data(path: &Path, fill: impl Fn(usize) -> u8) -> PathBuf {
        let mut bytes = std::fs::read(path).unwrap();
        let mdat = bytes
            .windows(4)
            .position(|w| w == b"mdat")
            .expect("mp4 has an mdat box");
        for (i, b) in bytes.iter_mut().enumerate().skip(mdat + 4) {
            *b = fill(i);
        }
        let out = path.with_file_name("corrupt.mp4");
        std::fs::write(&out, bytes).unwrap();
        out
    }

    #[test]
    fn valid_header_with_garbage_data() {
        let dir = tempfile::tempdir().unwrap();
        let good = with_audio(dir.path());
        // Deterministic noise (a simple LCG) and all zeros.
        let noise = |i: usize| (i.wrapping_mul(1_103_515_245).wrapping_add(12_345) >> 7) as u8;
        for fill in [&noise as &dyn Fn(usize) -> u8, &|_| 0u8] {
            let bad = corrupt_media_data(&good, fill);
            let e = probe(&bad).unwrap_err();
            assert!(
                e.to_string()
                    .contains("first video frame cannot be decoded"),
                "{e}"
            );
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }

    #[test]
    fn truncated_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = with_audio(dir.path());
        let bytes = std::fs::read(&good).unwrap();
        let mdat = bytes.windows(4).position(|w| w == b"mdat").unwrap();
        let cut = dir.path().join("cut.mp4");
        std::fs::write(&cut, &bytes[..mdat + 20]).unwrap();
        let e = probe(&cut).unwrap_err();
        assert!(matches!(e, PreflightError::OfflineInvalid { .. }), "{e}");
    }

    #[test]
    fn non_regular_files_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let e = probe(dir.path()).unwrap_err();
        assert!(
            e.to_string().contains("is a directory, not a regular file"),
            "{e}"
        );

        let fifo = dir.path().join("fifo.mp4");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = probe(&fifo).unwrap_err();
        assert!(
            e.to_string().contains("is a FIFO, not a regular file"),
            "{e}"
        );
    }

    #[test]
    fn missing_ffprobe() {
        let dir = tempfile::tempdir().unwrap();
        let video = with_audio(dir.path());
        let e = probe_offline(&dir.path().join("ffprobe"), &video).unwrap_err();
        assert!(matches!(e, PreflightError::ToolNotFound { .. }), "{e}");
        assert!(e.to_string().starts_with("ffprobe (looked for "), "{e}");
        assert!(
            e.to_string().contains("install Debian's ffmpeg package"),
            "{e}"
        );
    }

    #[test]
    fn real_ffmpeg_has_everything() {
        check_ffmpeg(Path::new(FFMPEG)).unwrap();
    }

    #[test]
    fn ffmpeg_listing_nothing_lacks_everything() {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_tool(dir.path(), "exit 0");
        let e = check_ffmpeg(&fake).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{} lacks filter zmq, filter streamselect, filter astreamselect, \
                 encoder libx264, encoder aac: Debian's ffmpeg package has them (apt install ffmpeg)",
                fake.display()
            )
        );
    }

    #[test]
    fn ffmpeg_lacking_some() {
        let dir = tempfile::tempdir().unwrap();
        // zmq only as part of another name, which must not count.
        let fake = fake_tool(
            dir.path(),
            r#"case "$2" in
  -filters) printf ' ... azmq  A->A  x\n ..C streamselect  N->N  x\n ..C astreamselect  N->N  x\n';;
  -encoders) printf ' A..... aac  AAC\n V....D libx264rgb  x\n';;
esac"#,
        );
        match check_ffmpeg(&fake).unwrap_err() {
            PreflightError::MissingFeatures { missing, .. } => {
                assert_eq!(missing, ["filter zmq", "encoder libx264"]);
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn ffmpeg_failing() {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_tool(dir.path(), "echo 'broken library' >&2\nexit 1");
        let e = check_ffmpeg(&fake).unwrap_err();
        assert!(matches!(e, PreflightError::ToolFailed { .. }), "{e}");
        assert!(e.to_string().ends_with(": broken library"), "{e}");
    }

    #[test]
    fn missing_ffmpeg() {
        let e = check_ffmpeg(Path::new("ffmpeg-that-does-not-exist")).unwrap_err();
        assert!(
            e.to_string()
                .contains("not found: install Debian's ffmpeg package"),
            "{e}"
        );
        let e = check_ffmpeg(Path::new("/nonexistent/ffmpeg")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "ffmpeg (looked for /nonexistent/ffmpeg) not found: install Debian's ffmpeg package (apt install ffmpeg)"
        );
    }

    #[test]
    fn hung_child_is_killed_at_the_deadline() {
        let started = Instant::now();
        let e = run(
            Command::new("sleep").arg("30"),
            "sleep",
            Duration::from_millis(200),
        )
        .err()
        .expect("times out");
        assert!(matches!(e, PreflightError::Timeout { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn stderr_summary() {
        assert_eq!(
            first_line(b"\n[h264 @ 0x55d0c1e2] Invalid NAL unit size.\nmore\n"),
            "h264: Invalid NAL unit size."
        );
        assert_eq!(first_line(b"plain message\n"), "plain message");
        assert_eq!(first_line(b""), "");
    }

    #[test]
    fn probe_output_parsing() {
        let probe = parse_probe(
            "[STREAM]\ncodec_type=video\nwidth=600\nheight=600\nDISPOSITION:attached_pic=1\n[/STREAM]\n\
             [STREAM]\ncodec_type=audio\nDISPOSITION:attached_pic=0\n[/STREAM]\n\
             [FORMAT]\nduration=N/A\n[/FORMAT]\n",
        );
        assert_eq!(probe.streams.len(), 2);
        assert!(probe.streams[0].attached_pic);
        assert_eq!(probe.streams[0].width, Some(600));
        assert_eq!(probe.streams[1].codec_type, "audio");
        assert_eq!(probe.duration, None);
    }
}
