//! Start-up failures of the real binary: every configuration problem ends
//! the process with exit status 78 (EX_CONFIG) and one line on stderr that
//! names the key or the file to fix, before any FFmpeg child starts. The
//! stream key never appears in what it prints.
//!
//! These run the binary with a cleared environment (only `PATH`, and
//! `RELAY_CONFIG_DIR` where a case needs it), so nothing from the test
//! runner's environment can stand in for a missing key.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use crate::common::*;

/// A stream key nobody would print by accident: it must not appear in any
/// output of any case below.
const SECRET: &str = "sk_us-west-2_TOPSECRETkey4242";

/// How long a run that should fail at once may take. Generous: the machine
/// is shared, and preflight runs ffmpeg and ffprobe.
const EXIT_WITHIN: Duration = Duration::from_secs(60);

/// What a finished run printed.
struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn describe(&self) -> String {
        format!(
            "status {}; stdout: {:?}; stderr: {:?}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs the relay binary with `args` in a cleared environment plus `env`,
/// and waits for it to exit (killing it and failing after [`EXIT_WITHIN`]).
async fn run_relay(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Outcome> {
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".to_string());
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_relay"));
    cmd.args(args)
        .env_clear()
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn()?;
    let out = match tokio::time::timeout(EXIT_WITHIN, child.wait_with_output()).await {
        Ok(out) => out?,
        Err(_) => anyhow::bail!("relay {args:?} did not exit within {EXIT_WITHIN:?}"),
    };
    let outcome = Outcome {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!("relay {args:?}: {}", outcome.describe());
    Ok(outcome)
}

/// Runs `relay run --config FILE`.
async fn run_config(file: &Path, env: &[(&str, &str)]) -> anyhow::Result<Outcome> {
    run_relay(&["run", "--config", file.to_str().unwrap()], env).await
}

/// Checks a configuration failure: exit status 78, nothing on stdout, the
/// stream key nowhere, and exactly one `relay: ...` line on stderr, which
/// contains every one of `needles`; returns that line.
///
/// Outside journald the daemon's log also goes to stderr, so the same
/// message shows up a second time as an `ERROR configuration error: ...`
/// log line; any other stderr line is a failure.
fn expect_config_error(out: &Outcome, needles: &[&str]) -> String {
    assert_eq!(out.status.code(), Some(78), "{}", out.describe());
    assert!(
        !out.stdout.contains(SECRET) && !out.stderr.contains(SECRET),
        "the stream key was printed: {}",
        out.describe()
    );
    assert_eq!(out.stdout, "", "nothing belongs on stdout");
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    let messages: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("relay: "))
        .collect();
    assert_eq!(
        messages.len(),
        1,
        "want exactly one `relay: ` line: {}",
        out.describe()
    );
    let message = messages[0];
    let text = &message["relay: ".len()..];
    for needle in needles {
        assert!(
            message.contains(needle),
            "{message:?} does not name {needle:?}"
        );
    }
    for line in &lines {
        assert!(
            *line == message || line.ends_with(&format!("configuration error: {text}")),
            "unexpected stderr line {line:?}: {}",
            out.describe()
        );
    }
    message.to_string()
}

/// A directory with a real (tiny) offline video, and the lines of a
/// configuration that is valid apart from what a case changes.
struct Setup {
    dir: tempfile::TempDir,
    video: PathBuf,
}

impl Setup {
    async fn new() -> anyhow::Result<Setup> {
        let dir = tempfile::Builder::new().prefix("relay-cfgerr-").tempdir()?;
        let video = make_offline_video(dir.path(), "green", true, 320, 180).await?;
        Ok(Setup { dir, video })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Valid `.env` settings; rtmp:// to a port nothing listens on, which
    /// preflight never contacts.
    fn env_lines(&self) -> Vec<String> {
        vec![
            "KICK_URL=rtmp://127.0.0.1:9/out".to_string(),
            format!("KICK_KEY={SECRET}"),
            format!("OFFLINE_VIDEO_PATH={}", self.video.display()),
        ]
    }

    /// Writes `lines` to `name` in the directory; returns its path.
    fn write(&self, name: &str, lines: &[String]) -> PathBuf {
        let path = self.path(name);
        write_private(&path, lines.join("\n") + "\n").unwrap();
        path
    }

    /// The valid `.env` settings with `KEY=...` lines for the keys in
    /// `replace` dropped and `extra` lines added.
    fn env_file(&self, name: &str, drop_keys: &[&str], extra: &[&str]) -> PathBuf {
        let mut lines: Vec<String> = self
            .env_lines()
            .into_iter()
            .filter(|l| !drop_keys.iter().any(|k| l.starts_with(&format!("{k}="))))
            .collect();
        lines.extend(extra.iter().map(|s| s.to_string()));
        self.write(name, &lines)
    }
}

#[tokio::test]
async fn unknown_key_in_env_file() -> anyhow::Result<()> {
    let s = Setup::new().await?;
    let file = s.env_file("kick.env", &[], &["OUT_RESOLUTION=720"]);
    let out = run_config(&file, &[]).await?;
    let msg = expect_config_error(
        &out,
        &["OUT_RESOLUTION", &file.display().to_string(), "line 4"],
    );
    assert!(msg.contains("unknown key"), "{msg}");
    Ok(())
}

/// The Docker setup's `.env` files carry two keys relay has no use for:
/// they load, and `relay check` says why each is ignored.
#[tokio::test]
async fn the_docker_setups_extra_keys_are_noted_not_refused() -> anyhow::Result<()> {
    let s = Setup::new().await?;
    let file = s.env_file(
        "relay1.env",
        &[],
        &["LOG_DIR=./logs", "COMPOSE_PROJECT_NAME=relay1"],
    );
    let path = file.display().to_string();
    let out = run_relay(&["check", "--config", &path], &[]).await?;
    assert_ne!(out.status.code(), Some(78), "{}", out.describe());
    let notes: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("note config: "))
        .collect();
    assert_eq!(notes.len(), 2, "{}", out.describe());
    assert!(notes[0].contains("LOG_DIR") && notes[0].contains("journalctl"));
    assert!(notes[1].contains("COMPOSE_PROJECT_NAME"));
    assert!(!out.stdout.contains(SECRET) && !out.stderr.contains(SECRET));
    Ok(())
}

#[tokio::test]
async fn unknown_key_in_toml_file() -> anyhow::Result<()> {
    let s = Setup::new().await?;
    let file = s.write(
        "kick.toml",
        &[
            "kick_url = \"rtmp://127.0.0.1:9/out\"".to_string(),
            format!("kick_key = \"{SECRET}\""),
            format!("offline_video_path = \"{}\"", s.video.display()),
            "out_fps_max = 30".to_string(),
        ],
    );
    let out = run_config(&file, &[]).await?;
    let msg = expect_config_error(&out, &["out_fps_max", &file.display().to_string()]);
    assert!(msg.contains("unknown key"), "{msg}");
    Ok(())
}

#[tokio::test]
async fn bad_out_fps() -> anyhow::Result<()> {
    let s = Setup::new().await?;
    for bad in ["abc", "0", "29.97", "500"] {
        let file = s.env_file("kick.env", &[], &[&format!("OUT_FPS={bad}")]);
        let out = run_config(&file, &[]).await?;
        let msg = expect_config_error(&out, &["OUT_FPS", &file.display().to_string()]);
        assert!(msg.contains(bad), "{msg} does not show the bad value {bad}");
    }
    Ok(())
}

#[tokio::test]
async fn bad_out_fps_from_the_environment_names_the_environment() -> anyhow::Result<()> {
    let s = Setup::new().await?;
    let file = s.env_file("kick.env", &[], &["OUT_FPS=30"]);
    let out = run_config(&file, &[("OUT_FPS", "fast")]).await?;
    let msg = expect_config_error(&out, &["OUT_FPS", "the environment"]);
    assert!(!msg.contains(&file.display().to_string()), "{msg}");
    Ok(())
}

#[tokio::test]
async fn bad_allowed_publishers() -> anyhow::Result<()> {
    let s = Setup::new().await?;
    for bad in [
        "externl",
        "198.51.100.0/33",
        "300.1.2.3",
        "10.0.0.0/8;192.168.0.0/16",
    ] {
        let file = s.env_file("kick.env", &[], &[&format!("ALLOWED_PUBLISHERS={bad}")]);
        let out = run_config(&file, &[]).await?;
        expect_config_error(&out, &["ALLOWED_PUBLISHERS", &file.display().to_string()]);
    }
    Ok(())
}

#[tokio::test]
async fn bad_switching_policy() -> anyhow::Result<()> {
    let s = Setup::new().await?;
    for (bad, key) in [
        ("OFFLINE_AFTER_MS=50", "OFFLINE_AFTER_MS"),
        ("LIVE_STABLE_SECS=soon", "LIVE_STABLE_SECS"),
        ("LOW_BITRATE_KBPS=300", "LOW_BITRATE_KBPS"),
        ("LOW_BITRATE_SECS=5", "LOW_BITRATE_SECS"),
        ("METRICS_ADDR=0.0.0.0:9108", "METRICS_ADDR"),
    ] {
        let file = s.env_file("kick.env", &[], &[bad]);
        let out = run_config(&file, &[]).await?;
        let msg = expect_config_error(&out, &[key, &file.display().to_string()]);
        if key.starts_with("LOW_BITRATE") {
            assert!(msg.contains("or neither"), "{msg}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn bad_srt_settings() -> anyhow::Result<()> {
    let s = Setup::new().await?;
    for (bad, key) in [
        ("LIVE_SOURCES=rtmp,webrtc", "LIVE_SOURCES"),
        ("LIVE_SOURCES=srt,srt", "LIVE_SOURCES"),
        ("SRT_HOST=relay.example.com", "SRT_HOST"),
        ("SRT_PORT=0", "SRT_PORT"),
        ("SRT_LATENCY_MS=5", "SRT_LATENCY_MS"),
    ] {
        let file = s.env_file("kick.env", &[], &[bad]);
        let out = run_config(&file, &[]).await?;
        expect_config_error(&out, &[key, &file.display().to_string()]);
    }
    // A passphrase SRT would refuse is named, never shown.
    let short = "Sh0rtPw";
    let file = s.env_file("kick.env", &[], &[&format!("SRT_PASSPHRASE={short}")]);
    let out = run_config(&file, &[]).await?;
    let msg = expect_config_error(&out, &["SRT_PASSPHRASE", "10 to 79"]);
    assert!(!msg.contains(short) && !out.stderr.contains(short), "{msg}");
    Ok(())
}

#[tokio::test]
async fn missing_kick_url() -> anyhow::Result<()> {
    let s = Setup::new().await?;
    let file = s.env_file("kick.env", &["KICK_URL"], &[]);
    let out = run_config(&file, &[]).await?;
    let msg = expect_config_error(&out, &["KICK_URL"]);
    assert!(msg.contains("required"), "{msg}");
    // An empty value counts as not set.
    let file = s.env_file("kick.env", &["KICK_URL"], &["KICK_URL="]);
    let out = run_config(&file, &[]).await?;
    expect_config_error(&out, &["KICK_URL", "required"]);
    Ok(())
}

#[tokio::test]
async fn missing_offline_video_path() -> anyhow::Result<()> {
    let s = Setup::new().await?;
    let file = s.env_file("kick.env", &["OFFLINE_VIDEO_PATH"], &[]);
    let out = run_config(&file, &[]).await?;
    let msg = expect_config_error(&out, &["OFFLINE_VIDEO_PATH"]);
    assert!(msg.contains("required"), "{msg}");
    Ok(())
}

#[tokio::test]
async fn offline_video_that_does_not_exist() -> anyhow::Result<()> {
    let s = Setup::new().await?;
    let missing = s.path("no-such-video.mp4");
    let file = s.env_file(
        "kick.env",
        &["OFFLINE_VIDEO_PATH"],
        &[&format!("OFFLINE_VIDEO_PATH={}", missing.display())],
    );
    let out = run_config(&file, &[]).await?;
    let msg = expect_config_error(
        &out,
        &["OFFLINE_VIDEO_PATH", &missing.display().to_string()],
    );
    assert!(msg.contains("does not exist"), "{msg}");
    Ok(())
}

#[tokio::test]
async fn offline_video_that_is_a_text_file() -> anyhow::Result<()> {
    let s = Setup::new().await?;
    let text = s.path("offline.mp4");
    std::fs::write(&text, "be right back\n".repeat(200))?;
    let file = s.env_file(
        "kick.env",
        &["OFFLINE_VIDEO_PATH"],
        &[&format!("OFFLINE_VIDEO_PATH={}", text.display())],
    );
    let out = run_config(&file, &[]).await?;
    let msg = expect_config_error(&out, &["OFFLINE_VIDEO_PATH", &text.display().to_string()]);
    assert!(msg.contains("not a usable video"), "{msg}");
    Ok(())
}

#[tokio::test]
async fn offline_video_that_is_a_directory() -> anyhow::Result<()> {
    let s = Setup::new().await?;
    let dir = s.path("videos");
    std::fs::create_dir(&dir)?;
    let file = s.env_file(
        "kick.env",
        &["OFFLINE_VIDEO_PATH"],
        &[&format!("OFFLINE_VIDEO_PATH={}", dir.display())],
    );
    let out = run_config(&file, &[]).await?;
    let msg = expect_config_error(&out, &["OFFLINE_VIDEO_PATH", &dir.display().to_string()]);
    assert!(msg.contains("directory"), "{msg}");
    Ok(())
}

#[tokio::test]
async fn instance_without_configuration_names_both_paths() -> anyhow::Result<()> {
    let s = Setup::new().await?;
    let conf_dir = s.path("etc-relay");
    std::fs::create_dir(&conf_dir)?;
    // A file for another instance does not count.
    write_private(&conf_dir.join("other.env"), s.env_lines().join("\n"))?;
    let out = run_relay(
        &["run", "kick"],
        &[("RELAY_CONFIG_DIR", conf_dir.to_str().unwrap())],
    )
    .await?;
    let toml = conf_dir.join("kick.toml");
    let env = conf_dir.join("kick.env");
    expect_config_error(
        &out,
        &[
            "\"kick\"",
            &toml.display().to_string(),
            &env.display().to_string(),
        ],
    );
    Ok(())
}

#[tokio::test]
async fn instance_env_file_errors_name_that_file() -> anyhow::Result<()> {
    // `relay run NAME` reads DIR/NAME.env: its problems name it, with the line.
    let s = Setup::new().await?;
    let conf_dir = s.path("etc-relay");
    std::fs::create_dir(&conf_dir)?;
    let mut lines = s.env_lines();
    lines.push("ALLOWED_PUBLISHER=any".to_string());
    let env = conf_dir.join("kick.env");
    write_private(&env, lines.join("\n") + "\n")?;
    let out = run_relay(
        &["run", "kick"],
        &[("RELAY_CONFIG_DIR", conf_dir.to_str().unwrap())],
    )
    .await?;
    expect_config_error(
        &out,
        &["ALLOWED_PUBLISHER\"", &env.display().to_string(), "line 4"],
    );
    Ok(())
}

#[tokio::test]
async fn unsupported_file_extension() -> anyhow::Result<()> {
    let s = Setup::new().await?;
    for name in ["kick.yaml", "kick.conf", "kick", "env.kick"] {
        let file = s.write(name, &s.env_lines());
        let out = run_config(&file, &[]).await?;
        let msg = expect_config_error(&out, &[&file.display().to_string()]);
        assert!(msg.contains("NAME.toml, NAME.env or .env.NAME"), "{msg}");
    }
    Ok(())
}

#[tokio::test]
async fn config_file_that_does_not_exist() -> anyhow::Result<()> {
    let s = Setup::new().await?;
    let file = s.path("nope.env");
    let out = run_config(&file, &[]).await?;
    expect_config_error(&out, &[&file.display().to_string()]);
    Ok(())
}

#[tokio::test]
async fn stream_key_with_a_space_is_refused_without_showing_it() -> anyhow::Result<()> {
    let s = Setup::new().await?;
    let file = s.env_file(
        "kick.env",
        &["KICK_KEY"],
        &[&format!("KICK_KEY=\"{SECRET} x\"")],
    );
    let out = run_config(&file, &[]).await?;
    expect_config_error(&out, &["KICK_KEY"]);
    // An unparsable line holding the key: named by line, never quoted.
    let file = s.env_file("kick.env", &["KICK_KEY"], &[&format!("KICK_KEY {SECRET}")]);
    let out = run_config(&file, &[]).await?;
    expect_config_error(&out, &[&file.display().to_string(), "line 3"]);
    Ok(())
}

/// Writes an executable script through a shell child, so that this
/// (multi-threaded) process never holds a writable descriptor to it: a
/// concurrent fork would otherwise make exec fail with ETXTBSY.
fn write_script(path: &Path, body: &str) {
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg("printf '%s\\n' \"$1\" > \"$2\" && chmod +x \"$2\"")
        .arg("sh")
        .arg(body)
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// The real ffmpeg's path, looked up in `PATH`.
fn real_tool(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found in PATH"))
}

#[tokio::test]
async fn ffmpeg_without_the_zmq_filter() -> anyhow::Result<()> {
    let s = Setup::new().await?;
    let bin = s.path("bin");
    std::fs::create_dir(&bin)?;
    let real = real_tool("ffmpeg");
    let marker = s.path("fake-ffmpeg-ran");
    // The real ffmpeg, whose `-filters` list (preflight runs
    // `ffmpeg -hide_banner -filters`) lacks the line of the zmq filter; it
    // keeps azmq, whose name only contains "zmq". Everything else, including
    // `-encoders`, is the real thing. ffprobe is the real one, found later
    // in PATH.
    write_script(
        &bin.join("ffmpeg"),
        &format!(
            "#!/bin/sh\n\
             echo \"$@\" >> '{marker}'\n\
             for a in \"$@\"; do\n\
             \x20 if [ \"$a\" = -filters ]; then\n\
             \x20   '{real}' \"$@\" | grep -Ev '^ [^ ]+ zmq '\n\
             \x20   exit 0\n\
             \x20 fi\n\
             done\n\
             exec '{real}' \"$@\"",
            marker = marker.display(),
            real = real.display()
        ),
    );
    // The fake really is realistic: the same list minus exactly one line.
    let listed = |program: &Path| {
        std::process::Command::new(program)
            .args(["-hide_banner", "-filters"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let (fake_list, real_list) = (listed(&bin.join("ffmpeg"))?, listed(&real)?);
    assert_eq!(fake_list.lines().count() + 1, real_list.lines().count());
    assert!(fake_list.contains(" azmq ") && fake_list.contains(" streamselect "));
    std::fs::remove_file(&marker)?;

    let file = s.env_file("kick.env", &[], &[]);
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = run_config(&file, &[("PATH", &path)]).await?;
    let msg = expect_config_error(&out, &["filter zmq"]);
    assert!(msg.contains("lacks"), "{msg}");
    assert!(!msg.contains("streamselect"), "{msg}");
    assert!(!msg.contains("libx264"), "{msg}");
    let calls = std::fs::read_to_string(&marker)?;
    assert!(
        calls.contains("-filters"),
        "the fake was not used: {calls:?}"
    );
    assert!(
        !calls.contains(SECRET),
        "an ffmpeg child was started with the stream key: {calls:?}"
    );
    Ok(())
}

#[tokio::test]
async fn missing_ffmpeg() -> anyhow::Result<()> {
    let s = Setup::new().await?;
    let empty = s.path("empty-bin");
    std::fs::create_dir(&empty)?;
    let file = s.env_file("kick.env", &[], &[]);
    let out = run_config(&file, &[("PATH", empty.to_str().unwrap())]).await?;
    let msg = expect_config_error(&out, &["ffmpeg"]);
    assert!(msg.contains("not found"), "{msg}");
    Ok(())
}

#[tokio::test]
async fn good_configuration_passes_preflight_and_stops_on_sigterm() -> anyhow::Result<()> {
    let s = Setup::new().await?;
    let nginx = start_nginx().await?;
    let conf_dir = s.path("etc-relay");
    std::fs::create_dir(&conf_dir)?;
    // Through `relay run NAME`: a TOML file, with the .env file on top.
    write_private(
        &conf_dir.join("good.toml"),
        format!(
            "kick_url = \"rtmp://127.0.0.1:{port}/out\"\n\
             kick_key = \"{SECRET}\"\n\
             offline_video_path = \"{video}\"\n\
             out_res = 144\nout_fps = 15\n\
             vid_bitrate = \"200k\"\nmax_bitrate = \"200k\"\nbuffer_size = \"400k\"\n\
             rtmp_port = {port}\n\
             rtmp_stream_name = \"cfgok-{pid}\"\n\
             stats_url = \"{stats}\"\n\
             poll_interval = 0.5\nkill_grace = 2\ncrash_backoff = 1\n",
            port = nginx.rtmp_port(),
            video = s.video.display(),
            pid = std::process::id(),
            stats = nginx.stat_url(),
        ),
    )?;
    write_private(
        &conf_dir.join("good.env"),
        format!("ZMQ_PORT={}\nPUBLISH_AUTH_PORT=0\n", free_tcp_port()?),
    )?;
    let mut relay = RelayProc::spawn(
        env!("CARGO_BIN_EXE_relay"),
        ["run", "good"],
        &[
            ("RELAY_CONFIG_DIR", conf_dir.to_str().unwrap()),
            ("RELAY_RUNTIME_DIR", conf_dir.to_str().unwrap()),
        ],
        "relay",
    )?;
    let status = relay
        .wait_for_status("the output streaming", output_streaming, secs(60))
        .await?;
    assert_eq!(status.instance, "good", "{status:?}");
    // The platform side really receives it.
    wait_until_publishing(&nginx.stat_url(), "out", SECRET, secs(20)).await?;
    let status = relay.sigterm_and_wait(secs(10)).await?;
    assert_eq!(status.code(), Some(0), "{:?}", relay.logs());
    // Its last lines may still be on their way through the pipe.
    relay.wait_for_log("stopped", secs(5)).await?;
    let logs = relay.logs();
    assert!(
        !logs.iter().any(|l| l.contains(SECRET)),
        "the stream key was logged: {logs:?}"
    );
    Ok(())
}

/// DESTINATIONS and each destination's keys: a bad name, a duplicate, a
/// name whose keys are another setting, a missing or non-RTMP URL, a key
/// no name claims: exit 78, naming the key, never printing a stream key.
#[tokio::test]
async fn destination_errors() -> anyhow::Result<()> {
    let s = Setup::new().await?;
    let yt_key = format!("YOUTUBE_KEY={SECRET}");
    for (extra, needles) in [
        (
            vec!["DESTINATIONS=kick,YouTube"],
            vec!["DESTINATIONS", "not a destination name"],
        ),
        (
            vec!["DESTINATIONS=kick,youtube,kick"],
            vec!["DESTINATIONS", "twice"],
        ),
        (
            vec!["DESTINATIONS=kick,stats"],
            vec!["DESTINATIONS", "STATS_URL"],
        ),
        (
            vec!["DESTINATIONS=kick,youtube", &yt_key],
            vec!["YOUTUBE_URL", "required"],
        ),
        (
            vec![
                "DESTINATIONS=kick,youtube",
                "YOUTUBE_URL=https://y.example/live2",
                &yt_key,
            ],
            vec!["YOUTUBE_URL", "rtmp://"],
        ),
        (
            vec!["TWITCH_URL=rtmp://t.example/app"],
            vec!["TWITCH_URL", "unknown key"],
        ),
    ] {
        let file = s.env_file("kick.env", &[], &extra);
        let out = run_config(&file, &[]).await?;
        expect_config_error(&out, &needles);
    }
    // A destination's key in a file every user can read is refused too.
    let file = s.env_file(
        "kick.env",
        &["KICK_KEY"],
        &[
            "DESTINATIONS=kick,youtube",
            "YOUTUBE_URL=rtmp://y.example/live2",
            &yt_key,
        ],
    );
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))?;
    let out = run_config(&file, &[]).await?;
    expect_config_error(&out, &["chmod 0640"]);
    Ok(())
}

/// `relay check … | head -1`: the reader goes away after one line, and
/// relay ends quietly as Unix tools do, not with a panic on stderr.
#[tokio::test]
async fn a_closed_stdout_ends_a_command_quietly() -> anyhow::Result<()> {
    let s = Setup::new().await?;
    let file = s.env_file("kick.env", &[], &[]);
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".to_string());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["check", "--config", &file.display().to_string()])
        .env_clear()
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    drop(child.stdout.take());
    let out = tokio::time::timeout(EXIT_WITHIN, child.wait_with_output()).await??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.is_empty(), "stderr: {stderr}");
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(
        out.status.signal(),
        Some(nix::libc::SIGPIPE),
        "{:?}",
        out.status
    );
    Ok(())
}
