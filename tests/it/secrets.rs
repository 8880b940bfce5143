//! Secrets stay secret: the stream key (KICK_KEY) and the publish key
//! (PUBLISH_KEY) never show up in what relay prints, and a configuration
//! file holding one is refused when every user may read it.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use anyhow::{ensure, Context as _};
use nix::sys::signal::Signal;

use crate::common::*;

/// Distinctive keys, so that any piece of them is easy to find.
const KICK_KEY: &str = "sk_Qm7Rz2Vx9Kp4Wn8T";
const PUBLISH_KEY: &str = "pub-Hc3Jd6Lf1Ys5Ge0B";

/// Every run of 6 characters of each key: finding one means a key leaked,
/// whole or in part.
fn leaks(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for key in [KICK_KEY, PUBLISH_KEY] {
        let chars: Vec<char> = key.chars().collect();
        for w in chars.windows(6) {
            let piece: String = w.iter().collect();
            if text.contains(&piece) {
                found.push(piece);
            }
        }
    }
    found
}

fn assert_no_leak(what: &str, text: &str) -> anyhow::Result<()> {
    let found = leaks(text);
    ensure!(
        found.is_empty(),
        "{what} shows key material {found:?}:\n{text}"
    );
    Ok(())
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs the relay binary with `args` and `RELAY_RUNTIME_DIR=run_dir`.
async fn relay_cmd(args: &[&str], run_dir: &Path) -> anyhow::Result<Out> {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_relay"));
    cmd.args(args)
        .env("RELAY_RUNTIME_DIR", run_dir)
        .env_remove("RUNTIME_DIRECTORY")
        .kill_on_drop(true);
    let out = tokio::time::timeout(secs(60), cmd.output())
        .await
        .with_context(|| format!("relay {args:?} did not finish"))??;
    let out = Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!("[test] relay {}: {out}", args.join(" "));
    Ok(out)
}

fn chmod(path: &Path, mode: u32) -> anyhow::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

#[tokio::test]
async fn a_key_in_a_file_every_user_can_read_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let video = make_offline_video(dir.path(), "green", true, 320, 180).await?;
    let base = format!(
        "KICK_URL=rtmp://127.0.0.1:9/out\nOFFLINE_VIDEO_PATH={}\nSTATS_URL=http://127.0.0.1:9/rtmp_stat\nPUBLISH_AUTH_PORT=0\n",
        video.display()
    );
    for secret in [
        format!("KICK_KEY={KICK_KEY}\n"),
        format!("PUBLISH_KEY={PUBLISH_KEY}\n"),
        format!("KICK_URL=rtmp://127.0.0.1:9/out/{KICK_KEY}\n"),
    ] {
        let path = dir.path().join("kick.env");
        write_private(&path, format!("{base}{secret}"))?;
        let file = path.to_str().context("path")?;
        chmod(&path, 0o644)?;

        let run = relay_cmd(&["run", "--config", file], dir.path()).await?;
        ensure!(run.code == 78, "{run}");
        let lines: Vec<&str> = run.stderr.lines().collect();
        ensure!(lines.len() == 1, "not one line: {run}");
        ensure!(
            lines[0].contains(file)
                && lines[0].contains("chmod 0640")
                && lines[0].contains("chown root:relay"),
            "{run}"
        );
        assert_no_leak("relay run", &format!("{}{}", run.stdout, run.stderr))?;

        let check = relay_cmd(&["check", "--config", file], dir.path()).await?;
        ensure!(check.code == 78, "{check}");
        ensure!(
            check.stdout.contains("FAIL config: ") && check.stdout.contains("chmod 0640"),
            "{check}"
        );
        assert_no_leak("relay check", &format!("{}{}", check.stdout, check.stderr))?;

        // Owner and group may read it: root:relay 0640 is the convention.
        chmod(&path, 0o640)?;
        let check = relay_cmd(&["check", "--config", file], dir.path()).await?;
        ensure!(check.stdout.contains("ok   config: "), "{check}");
        assert_no_leak("relay check", &format!("{}{}", check.stdout, check.stderr))?;
    }
    // No key in it: anyone may read it.
    let path = dir.path().join("plain.env");
    std::fs::write(&path, &base)?;
    chmod(&path, 0o644)?;
    let check = relay_cmd(&["check", "--config", path.to_str().unwrap()], dir.path()).await?;
    ensure!(check.stdout.contains("ok   config: "), "{check}");
    Ok(())
}

#[tokio::test]
async fn keys_never_appear_in_logs_status_metrics_check_or_errors() -> anyhow::Result<()> {
    let (nginx, auth_port) = start_nginx_with_publish_auth().await?;
    let (dir, video) = dir_with_offline("secrets").await?;
    let stream = format!("secrets-{}", std::process::id());
    let metrics_addr = format!("127.0.0.1:{}", free_tcp_port()?);
    let env_file = RelayEnv::new(&nginx, KICK_KEY, &stream, &video)?
        .set("PUBLISH_KEY", PUBLISH_KEY)
        .set("PUBLISH_AUTH_PORT", auth_port.to_string())
        .set("METRICS_ADDR", &metrics_addr)
        .write(dir.path())?;
    let file = env_file.to_str().context("path")?;
    let run_dir = dir.path();

    let mut relay = RelayProc::run(&env_file, &[("RELAY_LOG", "debug")])?;
    relay
        .wait_for_status("the output streaming", output_streaming, secs(60))
        .await?;
    let sink = Sink::start(&nginx.rtmp_url("out", KICK_KEY));
    sink.wait_for(Colour::Green, secs(30)).await?;

    // A hijacker with a wrong key, then the streamer with the right one.
    let live = nginx.rtmp_url("live", &stream);
    let _hijacker = Publisher::start(
        &format!("{live}?key={}", &PUBLISH_KEY[..PUBLISH_KEY.len() - 1]),
        PublisherOpts::colour("red"),
    )
    .await?;
    relay.wait_for_log("publish refused", secs(20)).await?;
    let mut streamer = Publisher::start(
        &format!("{live}?key={PUBLISH_KEY}"),
        PublisherOpts::colour("blue"),
    )
    .await?;
    sink.wait_for(Colour::Blue, secs(40)).await?;

    // Everything an operator can look at while live.
    let mut outputs = Vec::new();
    for args in [
        vec!["status", "relay"],
        vec!["status", "relay", "--json"],
        vec!["check", "--config", file],
    ] {
        let out = relay_cmd(&args, run_dir).await?;
        ensure!(out.code == 0, "relay {args:?}: {out}");
        outputs.push((format!("relay {args:?}"), out.to_string()));
    }

    let page = metrics_page(&metrics_addr).await?;
    ensure!(page.contains("relay_state{"), "no metrics page: {page}");
    outputs.push(("the metrics page".into(), page));
    ensure!(
        outputs[2]
            .1
            .contains("ok   publish key: required for live/"),
        "{}",
        outputs[2].1
    );
    // The stream key reaches the output FFmpeg through a pipe: no command
    // line of relay or its children shows it, so check has nothing to warn
    // about, whatever this host's /proc shows.
    ensure!(!outputs[2].1.contains("warn KICK_URL"), "{}", outputs[2].1);
    let mut pids = vec![relay.pid()];
    pids.extend(child_pids_of(relay.pid()));
    ensure!(pids.len() >= 3, "relay and its FFmpeg children: {pids:?}");
    for pid in pids {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert_no_leak(&format!("the command line of {pid}"), &cmdline)?;
    }

    // Error paths: the output FFmpeg dies and is restarted; a reload with
    // a broken key is rejected; the publisher vanishes.
    let output_pids: Vec<u32> = child_pids_of(relay.pid())
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("/out/"))
        })
        .collect();
    ensure!(output_pids.len() == 1, "output ffmpeg: {output_pids:?}");
    let killed = output_pids[0];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(killed as i32), Signal::SIGKILL)?;
    relay
        .wait_for_status(
            "a new output streaming",
            |s| output_streaming(s) && s.output_pid.is_some_and(|p| p != killed),
            secs(60),
        )
        .await?;
    let good = std::fs::read_to_string(&env_file)?;
    write_private(
        &env_file,
        good.replace(
            &format!("PUBLISH_KEY={PUBLISH_KEY}"),
            &format!("PUBLISH_KEY={PUBLISH_KEY}&x"),
        )
        .replace(
            &format!("KICK_KEY={KICK_KEY}"),
            &format!("KICK_KEY=\"{KICK_KEY} x\""),
        ),
    )?;
    let reloads = relay.status().await?.reloads;
    relay.signal(Signal::SIGHUP)?;
    let rejected = relay
        .wait_for_status("the reload done", |s| s.reloads > reloads, secs(30))
        .await?;
    ensure!(
        last_reload_outcome(&rejected) == Some("rejected"),
        "{rejected:?}"
    );
    // Why it was rejected, as the status tells it, names no secret either.
    let out = relay_cmd(&["status", "relay", "--json"], run_dir).await?;
    outputs.push((
        "relay status --json (rejected reload)".into(),
        out.to_string(),
    ));
    write_private(&env_file, &good)?;
    streamer.kill().await?;
    sink.wait_for(Colour::Green, secs(30)).await?;
    let check = relay_cmd(&["check", "--config", file], run_dir).await?;
    outputs.push(("relay check (offline)".into(), check.to_string()));
    let status = relay_cmd(&["status", "relay"], run_dir).await?;
    outputs.push(("relay status (offline)".into(), status.to_string()));
    outputs.push((
        "the metrics page (offline)".into(),
        metrics_page(&metrics_addr).await?,
    ));

    relay.sigterm_and_wait(secs(30)).await?;

    let logs = relay.logs();
    ensure!(
        logs.len() > 20,
        "too few log lines to mean anything: {logs:?}"
    );
    for line in &logs {
        assert_no_leak("relay's log", line)?;
    }
    for (what, text) in &outputs {
        assert_no_leak(what, text)?;
    }
    // The test can see leaks: the keys are in places it looks at.
    ensure!(!leaks(&format!("{KICK_KEY} {PUBLISH_KEY}")).is_empty());
    drop(nginx);
    Ok(())
}

/// The whole answer to `GET /metrics`.
async fn metrics_page(addr: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut c = tokio::net::TcpStream::connect(addr).await?;
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut page = String::new();
    tokio::time::timeout(secs(10), c.read_to_string(&mut page)).await??;
    Ok(page)
}
