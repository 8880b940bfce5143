//! Operating relay: `relay status`, `relay switch`, `relay zmq` and
//! `relay check` run as an operator would, against a real relay on a
//! private nginx with real FFmpeg publishers, and a sink that tells by
//! colour what viewers see (offline video green, the publisher blue).
//!
//! Each relay gets its runtime directory (`RELAY_RUNTIME_DIR`) in the
//! test's temp dir, and the commands find the instance by name there and
//! in `RELAY_CONFIG_DIR`: the rig's `relay.env` makes the instance `relay`.

// Each test binary uses part of the shared harness.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::relay_rig::*;
use anyhow::{ensure, Context as _};
use serde_json::Value;

/// The instance name the rig's `relay.env` gives.
const NAME: &str = "relay";
/// How long a publisher may take from its start to being on air at the sink.
const GO_LIVE: Duration = Duration::from_secs(25);
/// How long a switch may take to show at the sink.
const SWITCH: Duration = Duration::from_secs(10);

/// A rig with relay running, its runtime dir private, and a viewer.
struct Running {
    relay: RelayProc,
    sink: Sink,
    run_dir: PathBuf,
    rig: Rig,
}

impl Running {
    async fn start(tag: &str) -> anyhow::Result<Running> {
        let rig = Rig::start(tag, RigOpts::any_publisher()).await?;
        // Not created: relay makes its runtime directory itself.
        let run_dir = rig.dir.path().join("run");
        let relay = RelayProc::run(
            &rig.env_file,
            &[("RELAY_RUNTIME_DIR", run_dir.to_str().context("path")?)],
        )?;
        relay
            .wait_for_status("the output streaming", output_streaming, secs(60))
            .await?;
        let sink = Sink::start(&rig.out_url());
        sink.wait_for(Colour::Green, secs(20)).await?;
        Ok(Running {
            relay,
            sink,
            run_dir,
            rig,
        })
    }

    /// Runs `relay ARGS` as the operator, with this instance's directories.
    async fn relay(&self, args: &[&str]) -> anyhow::Result<Cmd> {
        operator(args, &self.run_dir, self.rig.dir.path()).await
    }

    /// `relay status relay --json`, parsed.
    async fn status_json(&self) -> anyhow::Result<Value> {
        let out = self.relay(&["status", NAME, "--json"]).await?;
        ensure!(out.code == 0, "relay status --json: {out}");
        serde_json::from_str(&out.stdout).with_context(|| format!("not JSON: {out}"))
    }

    /// Waits until `relay status --json` shows `state`.
    async fn wait_for_state(&self, state: &str, timeout: Duration) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status_json().await?;
            if status["state"] == state {
                return Ok(status);
            }
            ensure!(
                Instant::now() < deadline,
                "state is not {state:?} after {timeout:?}: {status:#}\n{}",
                self.context()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn context(&self) -> String {
        let logs = self.relay.logs();
        let recent = &logs[logs.len().saturating_sub(25)..];
        format!("relay's last lines:\n{}", recent.join("\n"))
    }
}

/// What a finished command printed, and its exit status.
struct Cmd {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs the relay binary with `args`, `RELAY_RUNTIME_DIR=run_dir` and
/// `RELAY_CONFIG_DIR=config_dir`.
async fn operator(args: &[&str], run_dir: &Path, config_dir: &Path) -> anyhow::Result<Cmd> {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_relay"));
    cmd.args(args)
        .env("RELAY_RUNTIME_DIR", run_dir)
        .env("RELAY_CONFIG_DIR", config_dir)
        .env_remove("RUNTIME_DIRECTORY")
        .kill_on_drop(true);
    let Output {
        status,
        stdout,
        stderr,
    } = tokio::time::timeout(secs(30), cmd.output())
        .await
        .with_context(|| format!("relay {args:?} did not finish"))??;
    let out = Cmd {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    };
    eprintln!("[test] relay {}: {out}", args.join(" "));
    Ok(out)
}

#[tokio::test]
async fn operator_sees_the_state_and_overrides_what_is_on_air() -> anyhow::Result<()> {
    let mut r = Running::start("op-switch").await?;

    // Offline, nobody publishing.
    let text = r.relay(&["status", NAME]).await?;
    ensure!(text.code == 0, "{text}");
    ensure!(text.stdout.starts_with("relay@relay: offline\n"), "{text}");
    ensure!(text.stdout.contains("publisher:   none"), "{text}");
    ensure!(text.stdout.contains("output:      up "), "{text}");
    let status = r.status_json().await?;
    ensure!(status["state"] == "offline", "{status:#}");
    ensure!(status["instance"] == NAME, "{status:#}");
    ensure!(status["publisher"].is_null(), "{status:#}");
    ensure!(status["output_uptime_s"].is_u64(), "{status:#}");
    ensure!(status["output_restarts"] == 0, "{status:#}");
    ensure!(status["filler_frames"].as_u64() > Some(0), "{status:#}");

    // Nothing to put on air.
    let refused = r.relay(&["switch", NAME, "live"]).await?;
    ensure!(refused.code == 1, "{refused}");
    ensure!(
        refused
            .stderr
            .contains("cannot switch to live: no live frames"),
        "{refused}"
    );
    ensure!(r.status_json().await?["state"] == "offline");

    // Raw zmq commands reach the output's filter on the configured port
    // (map 1 is the offline video, already on air).
    let zmq = r.relay(&["zmq", NAME, "streamselect map 1"]).await?;
    ensure!(zmq.code == 0 && zmq.stdout.trim() == "0 Success", "{zmq}");
    let zmq = r.relay(&["zmq", NAME, "nosuchfilter map 0"]).await?;
    ensure!(zmq.code == 1, "{zmq}");
    let reply = zmq.stdout.trim();
    ensure!(!reply.is_empty() && !reply.starts_with("0 "), "{zmq}");
    // FFmpeg 5.1 aborts on a command it cannot parse: never sent.
    let zmq = r.relay(&["zmq", NAME, "streamselect"]).await?;
    ensure!(zmq.code == 1, "{zmq}");
    ensure!(zmq.stderr.contains("TARGET COMMAND [ARG]"), "{zmq}");
    let zmq = r.relay(&["zmq", NAME, "astreamselect map 1"]).await?;
    ensure!(zmq.code == 0, "the output no longer answers: {zmq}");
    ensure!(r.status_json().await?["output_restarts"] == 0);

    // A publisher goes live automatically.
    let t = Instant::now();
    let mut blue = Publisher::start(&r.rig.live_url(), PublisherOpts::colour("blue")).await?;
    r.sink.wait_for_since(Colour::Blue, t, GO_LIVE).await?;
    let status = r.wait_for_state("live", secs(5)).await?;
    ensure!(status["publisher"] == "127.0.0.1", "{status:#}");
    ensure!(status["publisher_allowed"] == true, "{status:#}");
    ensure!(status["last_switch"]["to"] == "live", "{status:#}");
    ensure!(
        status["last_switch"]["reason"] == "publisher allowed and frames flowing",
        "{status:#}"
    );
    let text = r.relay(&["status", NAME]).await?;
    ensure!(text.stdout.starts_with("relay@relay: live\n"), "{text}");
    ensure!(text.stdout.contains("publisher:   127.0.0.1"), "{text}");
    // The switching policy in effect (the defaults here).
    ensure!(
        text.stdout.contains(
            "policy:      offline after 300 ms without frames, returning publisher stable 3 s, low bitrate check off"
        ),
        "{text}"
    );
    ensure!(status["policy"]["offline_after_ms"] == 300, "{status:#}");
    ensure!(status["policy"]["low_bitrate_kbps"].is_null(), "{status:#}");
    ensure!(status["held_off_air"].is_null(), "{status:#}");

    // Manual offline: green, and it stays green while blue keeps publishing.
    let t = Instant::now();
    let switched = r.relay(&["switch", NAME, "offline"]).await?;
    ensure!(switched.code == 0, "{switched}");
    ensure!(switched.stdout.contains("now manual offline"), "{switched}");
    r.sink.wait_for_since(Colour::Green, t, SWITCH).await?;
    r.sink.expect_steady(Colour::Green, secs(6)).await?;
    ensure!(blue.is_running(), "the publisher stopped");
    let status = r.status_json().await?;
    ensure!(status["state"] == "manual_offline", "{status:#}");
    ensure!(status["last_switch"]["to"] == "offline", "{status:#}");
    ensure!(status["last_switch"]["kind"] == "manual", "{status:#}");
    ensure!(
        status["last_switch"]["reason"] == "manual: relay switch offline",
        "{status:#}"
    );
    let text = r.relay(&["status", NAME]).await?;
    ensure!(
        text.stdout.starts_with("relay@relay: manual offline\n"),
        "{text}"
    );

    // Auto: the publisher still flowing goes back on air at once.
    let t = Instant::now();
    let auto = r.relay(&["switch", NAME, "auto"]).await?;
    ensure!(auto.code == 0 && auto.stdout.contains("now live"), "{auto}");
    let status = r.status_json().await?;
    ensure!(status["state"] == "live", "{status:#}");
    ensure!(status["last_switch"]["to"] == "live", "{status:#}");
    ensure!(status["last_switch"]["kind"] == "manual", "{status:#}");
    ensure!(
        status["last_switch"]["reason"]
            == "manual: relay switch auto; publisher allowed and frames flowing",
        "{status:#}"
    );
    r.sink.wait_for_since(Colour::Blue, t, SWITCH).await?;
    r.sink.expect_steady(Colour::Blue, secs(2)).await?;

    // Manual live while live frames flow is accepted; when they stop,
    // viewers get the offline video anyway and relay is automatic again.
    let live = r.relay(&["switch", NAME, "live"]).await?;
    ensure!(
        live.code == 0 && live.stdout.contains("now manual live"),
        "{live}"
    );
    ensure!(r.status_json().await?["state"] == "manual_live");
    let t = Instant::now();
    blue.kill().await?;
    r.sink.wait_for_since(Colour::Green, t, SWITCH).await?;
    // Back to auto: the state is plain `offline`, not `manual_offline`.
    let status = r.wait_for_state("offline", secs(5)).await?;
    ensure!(status["last_switch"]["to"] == "offline", "{status:#}");
    ensure!(
        status["last_switch"]["kind"] == "frames_stopped",
        "{status:#}"
    );

    // Manual offline holds when a publisher arrives, until auto.
    let off = r.relay(&["switch", NAME, "offline"]).await?;
    ensure!(off.code == 0, "{off}");
    let before = r.relay.status().await?.live_frames;
    let _red = Publisher::start(&r.rig.live_url(), PublisherOpts::colour("red")).await?;
    r.relay
        .wait_for_status(
            "live frames arriving",
            |s| s.live_frames > before + 30,
            GO_LIVE,
        )
        .await?;
    let t = Instant::now();
    r.sink.expect_steady(Colour::Green, secs(4)).await?;
    ensure!(r.status_json().await?["state"] == "manual_offline");
    let auto = r.relay(&["switch", NAME, "auto"]).await?;
    ensure!(auto.code == 0 && auto.stdout.contains("now live"), "{auto}");
    r.sink.wait_for_since(Colour::Red, t, SWITCH).await?;

    // The socket goes with the daemon.
    let socket = r.run_dir.join("relay.sock");
    ensure!(socket.exists(), "no socket at {}", socket.display());
    let status = r.relay.sigterm_and_wait(secs(20)).await?;
    ensure!(status.success(), "relay exited with {status}");
    ensure!(!socket.exists(), "the socket outlived relay");
    Ok(())
}

#[tokio::test]
async fn status_of_an_instance_that_is_not_running_exits_3() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = operator(&["status", "ghost"], dir.path(), dir.path()).await?;
    ensure!(out.code == 3, "{out}");
    let socket = dir.path().join("ghost.sock");
    ensure!(
        out.stderr.trim()
            == format!(
                "relay@ghost is not running (no control socket at {})",
                socket.display()
            ),
        "{out}"
    );
    let out = operator(&["switch", "ghost", "offline"], dir.path(), dir.path()).await?;
    ensure!(out.code == 3, "{out}");
    Ok(())
}

#[tokio::test]
async fn check_reports_every_part_and_fails_on_each_broken_one() -> anyhow::Result<()> {
    let rig = Rig::start("op-check", RigOpts::default()).await?;
    let run_dir = rig.dir.path().join("run");
    let config = rig.env_file.to_str().context("path")?.to_string();

    // A good setup, by instance name and by file.
    let by_name = operator(&["check", NAME], &run_dir, rig.dir.path()).await?;
    ensure!(by_name.code == 0, "{by_name}");
    let good = operator(&["check", "--config", &config], &run_dir, rig.dir.path()).await?;
    ensure!(good.code == 0, "{good}");
    for part in ["config", "ffmpeg", "tls", "offline video", "stat page"] {
        ensure!(
            good.stdout.contains(&format!("ok   {part}: ")),
            "no ok line for {part}: {good}"
        );
    }
    ensure!(
        good.stdout
            .contains(&format!("live/{} is not published now", rig.stream)),
        "{good}"
    );
    ensure!(!good.stdout.contains(KEY), "KICK_KEY printed: {good}");

    // While a publisher is on, check says so.
    let _blue = Publisher::start(&rig.live_url(), PublisherOpts::colour("blue")).await?;
    wait_until_publishing(&rig.nginx.stat_url(), "live", &rig.stream, secs(15)).await?;
    let out = operator(&["check", "--config", &config], &run_dir, rig.dir.path()).await?;
    ensure!(out.code == 0, "{out}");
    ensure!(
        out.stdout.contains(&format!(
            "live/{} is published now by 127.0.0.1",
            rig.stream
        )),
        "{out}"
    );

    // The offline video missing: the configuration loads, so 1, not 78.
    let text = std::fs::read_to_string(&rig.env_file)?;
    let missing_dir = rig.dir.path().join("missing");
    std::fs::create_dir(&missing_dir)?;
    let missing = missing_dir.join("relay.env");
    let edited: String = text
        .lines()
        .map(|l| {
            if l.starts_with("OFFLINE_VIDEO_PATH=") {
                "OFFLINE_VIDEO_PATH=/nonexistent/offline.mp4".to_string()
            } else {
                l.to_string()
            }
        })
        .map(|l| l + "\n")
        .collect();
    write_private(&missing, edited)?;
    let out = operator(
        &["check", "--config", missing.to_str().context("path")?],
        &run_dir,
        rig.dir.path(),
    )
    .await?;
    ensure!(out.code == 1, "{out}");
    ensure!(out.stdout.contains("FAIL offline video: "), "{out}");
    ensure!(out.stdout.contains("ok   stat page: "), "{out}");

    // No SRT line without SRT; with it, where callers connect, and a
    // warning while no passphrase encrypts the feed.
    ensure!(!good.stdout.contains(" srt: "), "{good}");
    let srt_dir = rig.dir.path().join("srt");
    std::fs::create_dir(&srt_dir)?;
    let srt = srt_dir.join("relay.env");
    write_private(
        &srt,
        format!("{text}LIVE_SOURCES=srt,rtmp\nSRT_PORT=9123\n"),
    )?;
    let out = operator(
        &["check", "--config", srt.to_str().context("path")?],
        &run_dir,
        rig.dir.path(),
    )
    .await?;
    ensure!(out.code == 0, "{out}");
    ensure!(
        out.stdout.contains("ok   srt: ") && out.stdout.contains("UDP port 9123"),
        "{out}"
    );
    ensure!(
        out.stdout.contains("warn srt: SRT_PASSPHRASE is not set"),
        "{out}"
    );

    // A configuration that does not load: 78, and nothing else checked.
    let broken_dir = rig.dir.path().join("broken");
    std::fs::create_dir(&broken_dir)?;
    let broken = broken_dir.join("relay.env");
    write_private(&broken, format!("{text}NO_SUCH_KEY=1\n"))?;
    let out = operator(
        &["check", "--config", broken.to_str().context("path")?],
        &run_dir,
        rig.dir.path(),
    )
    .await?;
    ensure!(out.code == 78, "{out}");
    ensure!(out.stdout.starts_with("FAIL config: "), "{out}");
    ensure!(out.stdout.lines().count() == 1, "{out}");

    // The stat page down (nginx stopped).
    let Rig { nginx, dir, .. } = rig;
    nginx.stop().await;
    let out = operator(&["check", "--config", &config], &run_dir, dir.path()).await?;
    ensure!(out.code == 1, "{out}");
    ensure!(out.stdout.contains("FAIL stat page: "), "{out}");
    ensure!(out.stdout.contains("ok   offline video: "), "{out}");
    Ok(())
}

#[tokio::test]
async fn status_without_a_name_lists_every_instance() -> anyhow::Result<()> {
    let r = Running::start("op-list").await?;
    // A configured instance that does not run, and the package's example,
    // which is not an instance.
    let config_dir = r.rig.dir.path();
    std::fs::write(
        config_dir.join("stopped.env"),
        "KICK_URL=rtmp://127.0.0.1/x\n",
    )?;
    std::fs::write(config_dir.join("example.env"), "#KICK_URL=\n")?;

    let out = r.relay(&["status"]).await?;
    ensure!(out.code == 0, "{out}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    ensure!(lines.len() == 2, "one line per instance: {out}");
    ensure!(
        lines[0].starts_with(&format!(
            "relay@{NAME}: offline, publisher none, output up "
        )),
        "{out}"
    );
    ensure!(lines[1] == "relay@stopped: not running", "{out}");

    let out = r.relay(&["status", "--json"]).await?;
    ensure!(out.code == 0, "{out}");
    let list: Value = serde_json::from_str(&out.stdout).with_context(|| format!("{out}"))?;
    let list = list.as_array().context("a JSON list")?;
    ensure!(list.len() == 2, "{out}");
    ensure!(
        list[0]["instance"] == NAME && list[0]["running"] == true,
        "{out}"
    );
    ensure!(list[0]["status"]["state"] == "offline", "{out}");
    ensure!(
        list[1]["instance"] == "stopped" && list[1]["running"] == false,
        "{out}"
    );
    ensure!(list[1]["status"].is_null(), "{out}");

    // Nothing on the host: no lines, and still exit 0.
    let empty = tempfile::tempdir()?;
    let out = operator(&["status"], empty.path(), empty.path()).await?;
    ensure!(out.code == 0 && out.stdout.is_empty(), "{out}");
    let out = operator(&["status", "--json"], empty.path(), empty.path()).await?;
    ensure!(out.code == 0 && out.stdout.trim() == "[]", "{out}");
    Ok(())
}
