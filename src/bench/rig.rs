//! The parts a benchmark run is made of: the relay binary under test, the
//! test publisher, the offline video, nginx's stat page.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{sleep, timeout, Instant};

use super::STEP_TIMEOUT;
use crate::nginx::private::{free_tcp_port, PrivateNginx};
use crate::nginx::stat_page;

/// The publisher's keyframe interval.
pub const PUBLISHER_GOP_SECONDS: u32 = 2;

/// `WIDTHxHEIGHT` of a 16:9 picture `res` high.
pub fn size(res: u32) -> (u32, u32) {
    (crate::config::width_16_9(res), res)
}

/// A moving picture: `background` with a white box crossing it, so that
/// every real frame differs from the one before.
fn moving(background: &str, res: u32, fps: u32) -> String {
    let (w, h) = size(res);
    format!(
        "color=c={background}:s={w}x{h}:r={fps}[bg];color=c=white:s={bw}x{bh}:r={fps}[box];\
         [bg][box]overlay=x='mod(n*W/45,W-w)':y=(H-h)/2:shortest=1",
        bw = (w / 4) & !1,
        bh = (h / 2) & !1,
    )
}

/// The offline video: green with the moving box, 6 s, with sound, at the
/// output's size (so relay and the naive design scale nothing).
pub async fn make_offline_video(path: &Path, res: u32) -> anyhow::Result<()> {
    let graph = format!("{},trim=duration=6[v]", moving("green", res, 30));
    let status = timeout(
        Duration::from_secs(120),
        Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
            .args([
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=1000:sample_rate=48000:d=6",
            ])
            .args(["-filter_complex", &graph, "-map", "[v]", "-map", "0:a"])
            .args(["-c:v", "libx264", "-preset", "veryfast", "-g", "60"])
            .args(["-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest"])
            .arg(path)
            .status(),
    )
    .await
    .context("generating the offline video timed out")??;
    anyhow::ensure!(status.success(), "ffmpeg could not make the offline video");
    Ok(())
}

/// A publisher like OBS: blue with the moving box, a keyframe every 2 s,
/// and a sync mark each second: one white frame (frame 15 of the second)
/// and a 50 ms beep starting at the same instant, silence otherwise.
pub fn start_publisher(url: &str, res: u32, fps: u32) -> anyhow::Result<Child> {
    let graph = format!(
        "{},drawbox=x=0:y=0:w=iw:h=ih:c=white:t=fill:enable='eq(mod(n\\,{fps})\\,{half})'[v]",
        moving("blue", res, fps),
        half = fps / 2
    );
    let beep = "aevalsrc='if(between(mod(t\\,1)\\,0.5\\,0.55)\\,0.5*sin(2*PI*1000*t)\\,0)':s=48000:c=stereo";
    Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
        .args(["-f", "lavfi", "-i", beep])
        .args(["-filter_complex", &graph, "-map", "[v]", "-map", "0:a"])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
        ])
        .args(["-g", &(fps * PUBLISHER_GOP_SECONDS).to_string()])
        .args(["-pix_fmt", "yuv420p", "-c:a", "aac", "-f", "flv", url])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting the publisher ffmpeg")
}

pub fn signal(child: &Child, sig: Signal) {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), sig);
    }
}

/// Kills a publisher (also a frozen one) and reaps it.
pub async fn finish(mut child: Child) {
    signal(&child, Signal::SIGKILL);
    signal(&child, Signal::SIGCONT);
    let _ = child.wait().await;
}

/// relay's configuration for one run, written as a `.env` file. Every
/// cycle's publisher returns within a minute of the last failover, which
/// relay would hold off air for LIVE_STABLE_SECS (3 s) to stop a flapping
/// link from flapping the output: the benchmark measures the switch itself,
/// so it turns that hold off.
pub fn write_config(
    nginx: &PrivateNginx,
    dir: &Path,
    stream: &str,
    offline: &Path,
    res: u32,
    fps: u32,
) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{stream}.env"));
    let text = format!(
        "KICK_URL=rtmp://127.0.0.1:{port}/out\nKICK_KEY={stream}\nRTMP_PORT={port}\n\
         RTMP_STREAM_NAME={stream}\nSTATS_URL={stat}\nZMQ_PORT={zmq}\nOFFLINE_VIDEO_PATH={off}\n\
         OUT_RES={res}\nOUT_FPS={fps}\nALLOWED_PUBLISHERS=any\nKILL_GRACE=2\nPUBLISH_AUTH_PORT=0\n\
         LIVE_STABLE_SECS=0\n",
        port = nginx.rtmp_port(),
        stat = nginx.stat_url(),
        zmq = free_tcp_port()?,
        off = offline.display(),
    );
    std::fs::write(&path, text)?;
    // It holds a stream key: relay refuses it if every user may read it.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(path)
}

/// The relay binary under test, its log lines timestamped as they arrive.
pub struct Relay {
    child: Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Relay {
    pub fn start(env: &Path) -> anyhow::Result<Relay> {
        let exe = std::env::current_exe().context("locating the relay binary")?;
        let mut child = Command::new(exe)
            .args(["run", "--config"])
            .arg(env)
            .env("RELAY_LOG", "info")
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting relay")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped");
        let sink = lines.clone();
        tokio::spawn(async move {
            let mut r = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = r.next_line().await {
                sink.lock().unwrap().push((Instant::now(), line));
            }
        });
        Ok(Relay { child, lines })
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Still the same process (never exited).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Log lines containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, l)| l.contains(needle))
            .count()
    }

    /// When a line containing `needle` arrived after `since`.
    pub async fn wait_for(&self, needle: &str, since: Instant) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if let Some((at, _)) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|(at, l)| *at >= since && l.contains(needle))
            {
                return Ok(*at);
            }
            if Instant::now() > deadline {
                let lines = self.lines.lock().unwrap();
                let tail: Vec<&str> = lines
                    .iter()
                    .rev()
                    .take(15)
                    .map(|(_, l)| l.as_str())
                    .collect();
                bail!(
                    "relay did not log {needle:?} within {STEP_TIMEOUT:?}; last lines:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn stop(mut self) {
        let _ = kill(Pid::from_raw(self.pid() as i32), Signal::SIGTERM);
        let _ = timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// When nginx first counted bytes from the publisher of `app/stream`
/// (stat page polled every 20 ms).
pub async fn wait_for_publisher_data(
    stat: &stat_page::StatsClient,
    app: &str,
    stream: &str,
    since: Instant,
) -> anyhow::Result<Instant> {
    let deadline = since + STEP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(page) = stat.fetch().await {
            if let Some(s) = page.stream(app, stream) {
                if s.publisher().is_some() && s.bytes_in > 0 {
                    return Ok(Instant::now());
                }
            }
        }
        sleep(Duration::from_millis(20)).await;
    }
    bail!("the publisher's data never reached nginx")
}

/// nginx's client id of the publisher on `out/stream`: the same id at the
/// start and the end of a run means relay's output never reconnected.
pub async fn output_client(stat: &stat_page::StatsClient, stream: &str) -> Option<u64> {
    let page = stat.fetch().await.ok()?;
    page.stream("out", stream)?.publisher().map(|p| p.id)
}
