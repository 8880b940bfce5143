//! [`Publisher`]: a streamer, ffmpeg publishing a solid colour in real time
//! (or, for the benchmark, a moving picture with sync marks).

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::bail;
use nix::sys::signal::Signal;
use tokio::process::Command;

use crate::media::moving_picture;
use crate::process::{process_is_alive, process_name, spawn_captured, ChildGuard, Lines};

/// How a [`Publisher`] encodes its test picture.
#[derive(Debug, Clone)]
pub struct PublisherOpts {
    /// lavfi colour name: `red`, `green` (0,128,0), `blue`, `black`, ...
    pub colour: String,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Add a 440 Hz AAC tone.
    pub audio: bool,
    /// Keyframe interval in frames.
    pub gop_frames: u32,
    /// Run inside this network namespace (`ip netns exec NS ffmpeg ...`).
    pub netns: Option<String>,
    /// Like OBS in the benchmark: a white box crosses the picture (every
    /// frame differs from the one before), and each second carries a sync
    /// mark: one white frame (the middle one of the second) and a 50 ms
    /// 1 kHz beep starting at the same instant, silence otherwise (48 kHz
    /// stereo; `audio` is then not used).
    pub sync_marks: bool,
    /// Encode HEVC (libx265) instead of H.264, as phones often do.
    pub hevc: bool,
}

impl PublisherOpts {
    /// Defaults (320x180, 30 fps, audio, keyframe every 2 s) in `colour`.
    pub fn colour(colour: &str) -> PublisherOpts {
        PublisherOpts {
            colour: colour.to_string(),
            ..PublisherOpts::default()
        }
    }
}

impl Default for PublisherOpts {
    fn default() -> Self {
        PublisherOpts {
            colour: "blue".to_string(),
            width: 320,
            height: 180,
            fps: 30,
            audio: true,
            gop_frames: 60,
            netns: None,
            sync_marks: false,
            hevc: false,
        }
    }
}

/// A streamer: ffmpeg publishing a solid colour (and a tone) in real time.
pub struct Publisher {
    child: ChildGuard,
    lines: Lines,
    url: String,
}

impl Publisher {
    /// Starts publishing to `url`. Returns once ffmpeg runs (not once nginx
    /// lists it: see [`wait_until_publishing`](crate::stat::wait_until_publishing)
    /// or [`SessionCounter`](crate::stat::SessionCounter)).
    ///
    /// With `opts.netns`, `ip netns exec` execs ffmpeg in place, so
    /// [`pid`](Self::pid) is ffmpeg's own pid; `start` checks that.
    pub async fn start(url: &str, opts: PublisherOpts) -> anyhow::Result<Publisher> {
        let mut cmd = match &opts.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "ffmpeg"]);
                c
            }
            None => Command::new("ffmpeg"),
        };
        let PublisherOpts {
            colour,
            width,
            height,
            fps,
            audio,
            gop_frames,
            sync_marks,
            hevc,
            ..
        } = &opts;
        cmd.args([
            "-nostdin",
            "-hide_banner",
            "-nostats",
            "-loglevel",
            "warning",
        ]);
        if *sync_marks {
            let graph = format!(
                "{},drawbox=x=0:y=0:w=iw:h=ih:c=white:t=fill:enable='eq(mod(n\\,{fps})\\,{half})'[v]",
                moving_picture(colour, *width, *height, *fps),
                half = fps / 2
            );
            let beep = "aevalsrc='if(between(mod(t\\,1)\\,0.5\\,0.55)\\,0.5*sin(2*PI*1000*t)\\,0)':s=48000:c=stereo";
            cmd.args(["-re", "-f", "lavfi", "-i", beep]).args([
                "-filter_complex",
                &graph,
                "-map",
                "[v]",
                "-map",
                "0:a",
            ]);
        } else {
            cmd.args(["-re", "-f", "lavfi", "-i"])
                .arg(format!("color=c={colour}:s={width}x{height}:r={fps}"));
        }
        if *audio && !*sync_marks {
            cmd.args([
                "-re",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:sample_rate=44100",
            ]);
        }
        let codec = if *hevc { "libx265" } else { "libx264" };
        cmd.args([
            "-c:v",
            codec,
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
        ])
        .args(["-g", &gop_frames.to_string(), "-pix_fmt", "yuv420p"]);
        if *hevc {
            cmd.args(["-x265-params", "log-level=error"]);
        }
        if *audio || *sync_marks {
            cmd.args(["-c:a", "aac"]);
        }
        // SRT callers (phone apps, IRL encoders) send MPEG-TS.
        let muxer = if url.starts_with("srt://") {
            "mpegts"
        } else {
            "flv"
        };
        cmd.args(["-f", muxer, url]);
        let label = format!("pub {colour}");
        let (child, lines) = spawn_captured(cmd, &label)?;
        let publisher = Publisher {
            child,
            lines,
            url: url.to_string(),
        };
        if opts.netns.is_some() {
            publisher.check_exec_in_place().await?;
        }
        Ok(publisher)
    }

    /// `ip netns exec` must have become ffmpeg (same pid), or signals would
    /// go to the wrong process.
    async fn check_exec_in_place(&self) -> anyhow::Result<()> {
        let pid = self.pid();
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let name = process_name(pid);
            if name.as_deref() == Some("ffmpeg") {
                return Ok(());
            }
            if name.is_none() || !process_is_alive(pid) || Instant::now() > deadline {
                bail!(
                    "`ip netns exec` pid {pid} did not become ffmpeg (comm {name:?}); output: {:?}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// ffmpeg's pid (0 once reaped).
    pub fn pid(&self) -> u32 {
        self.child.pid().unwrap_or(0)
    }

    /// The URL published to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// SIGKILL: the TCP connection is closed by the kernel without an RTMP
    /// goodbye. Waits for the exit.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().await.map(|_| ())
    }

    /// SIGINT: ffmpeg finishes the stream (FLV trailer, RTMP `deleteStream`)
    /// and exits; SIGKILL if it has not exited within 5 s.
    pub async fn stop_clean(&mut self) -> anyhow::Result<ExitStatus> {
        self.child.signal(Signal::SIGINT)?;
        match self.child.wait_timeout(Duration::from_secs(5)).await {
            Ok(status) => Ok(status),
            Err(e) => {
                self.child.kill().await?;
                Err(e.context("ffmpeg ignored SIGINT"))
            }
        }
    }

    /// Sends `sig` to ffmpeg.
    pub fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        self.child.signal(sig)
    }

    /// SIGSTOP: the connection stays open but no data flows.
    pub fn stall(&self) -> anyhow::Result<()> {
        self.child.signal(Signal::SIGSTOP)
    }

    /// SIGCONT after [`stall`](Self::stall).
    pub fn resume(&self) -> anyhow::Result<()> {
        self.child.signal(Signal::SIGCONT)
    }

    /// Whether ffmpeg still runs (a stalled one counts as running).
    pub fn is_running(&self) -> bool {
        self.child.is_running()
    }

    /// What ffmpeg printed (warnings and errors only).
    pub fn logs(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}
