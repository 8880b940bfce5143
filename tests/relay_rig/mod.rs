//! A relay under test with everything around it: a private nginx (apps
//! `live` and `out`), a green offline video, an env file, and helpers to
//! look at the relay's FFmpeg children and at a sink's whole history.
//!
//! Used by `publishers.rs` and `lifecycle.rs` on top of `tests/common`
//! (which is shared with other test files and left as it is).
#![allow(dead_code)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::common::*;

/// The stream key: the sink plays `out/relaytest`.
pub const KEY: &str = "relaytest";
/// `KILL_GRACE` in every rig, in seconds.
pub const KILL_GRACE_S: u64 = 2;

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// How to set a rig up.
#[derive(Debug, Clone, Default)]
pub struct RigOpts {
    /// Addresses nginx listens on besides 127.0.0.1 (which comes first).
    pub extra_listen: Vec<IpAddr>,
    /// `ALLOWED_PUBLISHERS`; `None` leaves it out (the default, `external`).
    pub allowed_publishers: Option<String>,
}

impl RigOpts {
    /// `ALLOWED_PUBLISHERS=any`: loopback publishers go on air too.
    pub fn any_publisher() -> RigOpts {
        RigOpts {
            allowed_publishers: Some("any".to_string()),
            ..RigOpts::default()
        }
    }
}

/// Private nginx + offline video + env file for one relay.
pub struct Rig {
    pub nginx: PrivateNginx,
    pub dir: tempfile::TempDir,
    /// `RTMP_STREAM_NAME`: unique to this test (pid, tag, sequence), so it
    /// also finds this test's FFmpeg processes among others on the machine.
    pub stream: String,
    pub env_file: PathBuf,
}

impl Rig {
    pub async fn start(tag: &str, opts: RigOpts) -> anyhow::Result<Rig> {
        let mut listen: Vec<IpAddr> = vec!["127.0.0.1".parse()?];
        listen.extend(opts.extra_listen.iter().copied());
        let nginx = PrivateNginx::start(NginxOptions {
            listen,
            ..NginxOptions::default()
        })
        .await?;
        let (dir, video) = dir_with_offline(tag).await?;
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let stream = format!("{tag}-{}-{n}", std::process::id());
        let env = RelayEnv::new(&nginx, KEY, &stream, &video)?
            .set("KILL_GRACE", KILL_GRACE_S.to_string());
        let env = match opts.allowed_publishers {
            Some(rule) => env.set("ALLOWED_PUBLISHERS", rule),
            None => env.unset("ALLOWED_PUBLISHERS"),
        };
        let env_file = env.write(dir.path())?;
        Ok(Rig {
            nginx,
            dir,
            stream,
            env_file,
        })
    }

    /// Where a loopback publisher publishes (and what relay pulls).
    pub fn live_url(&self) -> String {
        self.nginx.rtmp_url("live", &self.stream)
    }

    /// The part of relay's ingest URL that names this test's stream.
    pub fn live_path(&self) -> String {
        format!(":{}/live/{}", self.nginx.rtmp_port(), self.stream)
    }

    /// The part of the output URL (and of no other ffmpeg's arguments) that
    /// names this test's platform stand-in. The stream key is not on the
    /// command line: it reaches FFmpeg through a pipe.
    pub fn out_path(&self) -> String {
        format!(":{}/out/", self.nginx.rtmp_port())
    }

    /// Where the sink plays the relay's output.
    pub fn out_url(&self) -> String {
        self.nginx.rtmp_url("out", KEY)
    }

    /// Starts relay and waits until its output streams and its offline
    /// source has settled on the normalised copy.
    pub async fn start_relay(&self) -> anyhow::Result<RelayProc> {
        let relay = RelayProc::run(&self.env_file, &[])?;
        relay
            .wait_for_status("the output streaming", output_streaming, secs(60))
            .await?;
        settle_offline_source(&relay).await?;
        Ok(relay)
    }
}

/// Waits until the offline video's normalised copy is made (or will not
/// be) and, if it is, until the offline source reads it: the source is
/// started again on it once, a hand-over a test checking a steady picture
/// must not straddle.
pub async fn settle_offline_source(relay: &RelayProc) -> anyhow::Result<()> {
    let s = relay
        .wait_for_status(
            "the normalised copy made or given up",
            |s| {
                s.offline_cache
                    .as_ref()
                    .is_none_or(|c| c.state != "building")
            },
            secs(90),
        )
        .await?;
    if s.offline_cache.is_some_and(|c| c.state == "ready") {
        wait_for_ffmpeg_child(relay.pid(), "-normalised-", secs(30)).await?;
    }
    Ok(())
}

/// The command line of a process, arguments joined by spaces.
pub fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    Some(args.join(" "))
}

/// Live ffmpeg descendants of `pid` whose arguments contain `needle`.
pub fn ffmpeg_children_with(pid: u32, needle: &str) -> Vec<u32> {
    child_pids_of(pid)
        .into_iter()
        .filter(|&p| process_name(p).as_deref() == Some("ffmpeg") && process_is_alive(p))
        .filter(|&p| cmdline(p).is_some_and(|c| c.contains(needle)))
        .collect()
}

/// Waits until `pid` has a live ffmpeg descendant with `needle` in its
/// arguments; returns its pid.
pub async fn wait_for_ffmpeg_child(
    pid: u32,
    needle: &str,
    timeout: Duration,
) -> anyhow::Result<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(&p) = ffmpeg_children_with(pid, needle).first() {
            return Ok(p);
        }
        if Instant::now() >= deadline {
            bail!(
                "no ffmpeg child of {pid} with {needle:?} within {timeout:?}; children: {:?}",
                describe_children(pid)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `pid` has no live ffmpeg descendant with `needle` in its
/// arguments.
pub async fn wait_for_no_ffmpeg_child(
    pid: u32,
    needle: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if ffmpeg_children_with(pid, needle).is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "ffmpeg child of {pid} with {needle:?} still runs after {timeout:?}: {:?}",
                describe_children(pid)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `pid: command line` of every descendant, for messages.
pub fn describe_children(pid: u32) -> Vec<String> {
    child_pids_of(pid)
        .into_iter()
        .map(|p| format!("{p}: {}", cmdline(p).unwrap_or_default()))
        .collect()
}

/// Whether any log line contains `needle`.
pub fn logged(relay: &RelayProc, needle: &str) -> bool {
    relay.logs().iter().any(|l| l.contains(needle))
}

/// Checks the sink's frames between `from` and `to`: every one is `colour`,
/// and frames keep coming (no gap over `max_gap`, from `from` and up to
/// `to`). Unlike [`Sink::expect_steady`], for a window in the past.
pub fn check_steady(
    sink: &Sink,
    colour: Colour,
    from: Instant,
    to: Instant,
    max_gap: Duration,
) -> anyhow::Result<()> {
    let frames: Vec<Frame> = sink
        .history_frames()
        .into_iter()
        .filter(|f| f.at >= from && f.at <= to)
        .collect();
    let mut last = from;
    for f in &frames {
        if f.colour != colour {
            bail!(
                "{:?} frame {:?} {:?} into a window that should be all {colour:?}: {}",
                f.colour,
                f.rgb,
                f.at - from,
                sink.summary_since(from)
            );
        }
        if f.at - last > max_gap {
            bail!(
                "no frame for {:?} ({:?} into a window that should be all {colour:?}): {}",
                f.at - last,
                last - from,
                sink.summary_since(from)
            );
        }
        last = f.at;
    }
    if to - last > max_gap {
        bail!(
            "frames stopped {:?} before the end of a window that should be all {colour:?}: {}",
            to - last,
            sink.summary_since(from)
        );
    }
    Ok(())
}

/// Frames of `colour` in the sink's whole history.
pub fn frames_of(sink: &Sink, colour: Colour) -> usize {
    sink.history().iter().filter(|(_, c)| *c == colour).count()
}

/// Sleeps until `at` (at once if it has passed).
pub async fn sleep_until(at: Instant) {
    tokio::time::sleep_until(at.into()).await;
}

/// For a test whose precondition `what` is missing: under CI (`CI` set)
/// that is a failure, since a test that cannot run proves nothing;
/// elsewhere the test is skipped, loudly. `return missing_precondition(..)`.
pub fn missing_precondition(what: &str) -> anyhow::Result<()> {
    if std::env::var_os("CI").is_some() {
        bail!("cannot run under CI: {what}");
    }
    eprintln!("SKIPPED (not a pass): {what}");
    Ok(())
}
