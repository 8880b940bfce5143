//! The parts a benchmark run is made of: the relay under test, the test
//! publisher, the sink and the offline video (the `relay-rig` crate's,
//! set up for measuring), nginx's stat page.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{sleep, timeout};

use relay::nginx::stat_page;
use relay_rig::media::{moving_picture, OfflineVideo};
use relay_rig::nginx::{free_tcp_port, PrivateNginx};
use relay_rig::publisher::{Publisher, PublisherOpts};
use relay_rig::sink::{Sink, SinkOpts};

use super::STEP_TIMEOUT;

/// The publisher's keyframe interval.
pub const PUBLISHER_GOP_SECONDS: u32 = 2;

/// `WIDTHxHEIGHT` of a 16:9 picture `res` high.
pub fn size(res: u32) -> (u32, u32) {
    (relay::config::width_16_9(res), res)
}

/// The offline video: green with the moving box, 6 s, with sound, at the
/// output's size (so relay and the naive design scale nothing).
pub async fn make_offline_video(path: &Path, res: u32) -> anyhow::Result<()> {
    let (w, h) = size(res);
    OfflineVideo::new(moving_picture("green", w, h, 30), 6)
        .make(path)
        .await
}

/// A sink on `url` that records every frame with its timing, never
/// restarted: one uninterrupted view, as a viewer's.
pub fn start_sink(url: &str) -> Sink {
    Sink::start_with(
        url,
        SinkOpts {
            stall_restart: None,
            first_frame_restart: None,
            every_frame: true,
            ..SinkOpts::default()
        },
    )
}

/// A publisher like OBS: blue with the moving box, a keyframe every 2 s,
/// and a sync mark each second (see [`PublisherOpts::sync_marks`]).
pub async fn start_publisher(url: &str, res: u32, fps: u32) -> anyhow::Result<Publisher> {
    let (width, height) = size(res);
    Publisher::start(
        url,
        PublisherOpts {
            colour: "blue".into(),
            width,
            height,
            fps,
            gop_frames: fps * PUBLISHER_GOP_SECONDS,
            sync_marks: true,
            ..PublisherOpts::default()
        },
    )
    .await
    .context("starting the publisher ffmpeg")
}

pub fn signal(publisher: &Publisher, sig: Signal) {
    let _ = publisher.signal(sig);
}

/// Kills a publisher (also a frozen one: SIGKILL ends a stopped process)
/// and reaps it.
pub async fn finish(mut publisher: Publisher) {
    let _ = publisher.kill().await;
}

/// relay's configuration for one run, written as a `.env` file: one
/// destination, `out/STREAM` on the same nginx.
pub fn write_config(
    nginx: &PrivateNginx,
    dir: &Path,
    stream: &str,
    offline: &Path,
    res: u32,
    fps: u32,
) -> anyhow::Result<PathBuf> {
    write_config_to(
        nginx,
        dir,
        stream,
        stream,
        &[("kick", stream)],
        offline,
        res,
        fps,
    )
}

/// relay's configuration in `dir/FILE.env`: the publisher on `live/STREAM`,
/// and a destination for each (name, stream key) on the same nginx's `out`
/// application, the first of them `kick`. Every cycle's publisher returns
/// within a minute of the last failover, which relay would hold off air for
/// LIVE_STABLE_SECS (3 s) to stop a flapping link from flapping the
/// output: the benchmark measures the switch itself, so it turns that hold
/// off.
#[allow(clippy::too_many_arguments)]
pub fn write_config_to(
    nginx: &PrivateNginx,
    dir: &Path,
    file: &str,
    stream: &str,
    destinations: &[(&str, &str)],
    offline: &Path,
    res: u32,
    fps: u32,
) -> anyhow::Result<PathBuf> {
    anyhow::ensure!(
        destinations
            .first()
            .is_some_and(|(name, _)| *name == "kick"),
        "the first destination is kick"
    );
    let path = dir.join(format!("{file}.env"));
    let port = nginx.rtmp_port();
    let names: Vec<&str> = destinations.iter().map(|(name, _)| *name).collect();
    let mut text = format!("DESTINATIONS={}\n", names.join(","));
    for (name, key) in destinations {
        let upper = name.to_uppercase();
        text.push_str(&format!(
            "{upper}_URL=rtmp://127.0.0.1:{port}/out\n{upper}_KEY={key}\n"
        ));
    }
    text.push_str(&format!(
        "RTMP_PORT={port}\n\
         RTMP_STREAM_NAME={stream}\nSTATS_URL={stat}\nZMQ_PORT={zmq}\nOFFLINE_VIDEO_PATH={off}\n\
         OUT_RES={res}\nOUT_FPS={fps}\nALLOWED_PUBLISHERS=any\nKILL_GRACE=2\nPUBLISH_AUTH_PORT=0\n\
         LIVE_STABLE_SECS=0\n",
        stat = nginx.stat_url(),
        zmq = free_tcp_port()?,
        off = offline.display(),
    ));
    std::fs::write(&path, text)?;
    // It holds stream keys: relay refuses it if every user may read it.
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
        Relay::start_with(env, &[])
    }

    /// Like [`Relay::start`], with `vars` added to its environment.
    pub fn start_with(env: &Path, vars: &[(&str, &str)]) -> anyhow::Result<Relay> {
        // This executable is relay when its first argument is `run`
        // (see main.rs).
        let exe = std::env::current_exe().context("locating the relay binary")?;
        let mut child = Command::new(exe)
            .args(["run", "--config"])
            .arg(env)
            .env("RELAY_LOG", "info")
            .envs(vars.iter().copied())
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
        self.wait_for_within(needle, since, STEP_TIMEOUT).await
    }

    /// Like [`Relay::wait_for`], for a step that may take longer than
    /// [`STEP_TIMEOUT`].
    pub async fn wait_for_within(
        &self,
        needle: &str,
        since: Instant,
        timeout: Duration,
    ) -> anyhow::Result<Instant> {
        self.wait_for_all(&[needle], since, timeout).await
    }

    /// When a line containing every one of `needles` arrived after `since`.
    pub async fn wait_for_all(
        &self,
        needles: &[&str],
        since: Instant,
        timeout: Duration,
    ) -> anyhow::Result<Instant> {
        let needle = needles.join(" … ");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((at, _)) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|(at, l)| *at >= since && needles.iter().all(|n| l.contains(n)))
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
                    "relay did not log {needle:?} within {timeout:?}; last lines:\n{}",
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
