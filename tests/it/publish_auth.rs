//! PUBLISH_KEY end to end: nginx asks relay (`on_publish`) before it accepts
//! a publisher, and only the streamer, who knows the key, goes on air.
//!
//! Each test runs a private nginx whose `live` application has
//! `on_publish http://127.0.0.1:PORT/on_publish`, relay answering on PORT
//! (`PUBLISH_AUTH_PORT`), and a sink playing relay's output: the offline
//! video is green, the streamer's feed blue, a hijacker's red.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::common::*;

/// The publish key of these tests, distinctive enough to grep for.
const PUBLISH_KEY: &str = "pk-Zq7vN3xW9tLr";
/// The platform's stream key (the sink plays `out/OUT_KEY`).
const OUT_KEY: &str = "outkey";

struct Setup {
    nginx: PrivateNginx,
    dir: tempfile::TempDir,
    stream: String,
    auth_port: u16,
    env_file: std::path::PathBuf,
}

impl Setup {
    /// nginx with on_publish pointing at a free port, and relay's env file
    /// with `PUBLISH_KEY` (if `key` is given) answering there.
    async fn new(tag: &str, key: Option<&str>) -> anyhow::Result<Setup> {
        let (nginx, auth_port) = start_nginx_with_publish_auth().await?;
        let (dir, video) = dir_with_offline(tag).await?;
        let stream = format!("{tag}-{}", std::process::id());
        let mut env = RelayEnv::new(&nginx, OUT_KEY, &stream, &video)?
            .set("PUBLISH_AUTH_PORT", auth_port.to_string());
        if let Some(key) = key {
            env = env.set("PUBLISH_KEY", key);
        }
        let env_file = env.write(dir.path())?;
        Ok(Setup {
            nginx,
            dir,
            stream,
            auth_port,
            env_file,
        })
    }

    /// Starts relay and a sink; returns once the sink shows the offline video.
    async fn start(&self) -> anyhow::Result<(RelayProc, Sink)> {
        let relay = RelayProc::run(&self.env_file, &[])?;
        // The status has nothing on the on_publish endpoint: its log line
        // says it listens.
        relay
            .wait_for_log("answering nginx's on_publish", secs(30))
            .await?;
        relay
            .wait_for_status("the output streaming", output_streaming, secs(60))
            .await?;
        let sink = Sink::start(&self.nginx.rtmp_url("out", OUT_KEY));
        sink.wait_for(Colour::Green, secs(30)).await?;
        Ok((relay, sink))
    }

    /// The publish URL with `query` (e.g. `?key=...`) after the stream name.
    fn publish_url(&self, query: &str) -> String {
        format!("{}{query}", self.nginx.rtmp_url("live", &self.stream))
    }
}

/// Waits until relay's status shows the loopback publisher, allowed on air.
async fn wait_for_allowed_publisher(relay: &RelayProc) -> anyhow::Result<Status> {
    relay
        .wait_for_status(
            "the publisher allowed",
            |s| s.publisher.as_deref() == Some("127.0.0.1") && s.publisher_allowed == Some(true),
            secs(20),
        )
        .await
}

/// Waits until the publisher's ffmpeg has given up.
async fn wait_until_exited(publisher: &Publisher, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while publisher.is_running() {
        if Instant::now() > deadline {
            bail!("the publisher still runs after {timeout:?}: nginx did not refuse it");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// A publisher that nginx must refuse: it fails, relay logs the refusal
/// with the address and `reason`, nginx never lists it, the output stays
/// offline.
async fn expect_refused(
    s: &Setup,
    relay: &RelayProc,
    sink: &Sink,
    query: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let mark = relay.log_mark();
    let since = Instant::now();
    let publisher = Publisher::start(&s.publish_url(query), PublisherOpts::colour("red")).await?;
    let line = relay
        .wait_for_log_since(mark, "publish refused", secs(20))
        .await?;
    ensure!(line.contains(reason), "wrong reason: {line}");
    ensure!(line.contains("127.0.0.1"), "no publisher address: {line}");
    ensure!(line.contains(&s.stream), "no stream name: {line}");
    wait_until_exited(&publisher, secs(20)).await?;
    let stat = fetch_stat(&s.nginx.stat_url()).await?;
    ensure!(
        stat.publisher("live", &s.stream).is_none(),
        "nginx lists the refused publisher"
    );
    // Keep watching a little: no red frame may ever reach the output.
    sink.expect_steady(Colour::Green, secs(2)).await?;
    let red = sink
        .history()
        .iter()
        .filter(|(at, c)| *at >= since && *c == Colour::Red)
        .count();
    ensure!(red == 0, "{red} frames of the refused publisher on air");
    Ok(())
}

#[tokio::test]
async fn only_the_right_publish_key_goes_on_air() -> anyhow::Result<()> {
    let s = Setup::new("pubkey", Some(PUBLISH_KEY)).await?;
    let (mut relay, sink) = s.start().await?;
    ensure!(
        !relay.logs().iter().any(|l| l.contains("no PUBLISH_KEY")),
        "warned about a missing key although one is set"
    );

    expect_refused(&s, &relay, &sink, "?key=pk-guess", "wrong publish key").await?;
    expect_refused(&s, &relay, &sink, "", "no publish key").await?;
    // A key that is the real one plus a character is wrong too.
    expect_refused(
        &s,
        &relay,
        &sink,
        &format!("?key={PUBLISH_KEY}x"),
        "wrong publish key",
    )
    .await?;

    let mut streamer = Publisher::start(
        &s.publish_url(&format!("?key={PUBLISH_KEY}")),
        PublisherOpts::colour("blue"),
    )
    .await?;
    wait_for_allowed_publisher(&relay).await?;
    sink.wait_for(Colour::Blue, secs(40)).await?;
    streamer.kill().await?;
    sink.wait_for(Colour::Green, secs(20)).await?;

    for line in relay.logs() {
        ensure!(
            !line.contains(PUBLISH_KEY) && !line.contains("pk-guess"),
            "a publish key was logged: {line}"
        );
    }
    let status = relay.sigterm_and_wait(secs(20)).await?;
    ensure!(status.success(), "relay exited with {status}");
    drop(s.dir);
    Ok(())
}

#[tokio::test]
async fn without_publish_key_anyone_goes_on_air_and_relay_warns() -> anyhow::Result<()> {
    let s = Setup::new("nopubkey", None).await?;
    let (mut relay, sink) = s.start().await?;
    relay
        .wait_for_log("no PUBLISH_KEY: anyone who can reach", secs(1))
        .await?;
    let _publisher = Publisher::start(&s.publish_url(""), PublisherOpts::colour("blue")).await?;
    wait_for_allowed_publisher(&relay).await?;
    sink.wait_for(Colour::Blue, secs(40)).await?;
    relay.sigterm_and_wait(secs(20)).await?;
    Ok(())
}

/// Sends `request` to the endpoint and returns the status line of the
/// answer ("" if the connection closed without one).
async fn ask(port: u16, request: &[u8]) -> anyhow::Result<String> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await?;
    conn.write_all(request).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(secs(15), conn.read_to_end(&mut answer))
        .await
        .context("no answer within 15 s")??;
    let text = String::from_utf8_lossy(&answer);
    Ok(text.lines().next().unwrap_or("").to_string())
}

fn form_request(body: &str) -> Vec<u8> {
    format!(
        "POST /on_publish HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn the_endpoint_survives_garbage_huge_and_slow_requests() -> anyhow::Result<()> {
    let s = Setup::new("pubjunk", Some(PUBLISH_KEY)).await?;
    let (relay, sink) = s.start().await?;
    let port = s.auth_port;
    let good = format!(
        "call=publish&app=live&name={}&addr=198.51.100.7&key={PUBLISH_KEY}",
        s.stream
    );
    ensure!(ask(port, &form_request(&good)).await?.contains(" 200"));

    // Slow clients holding connections open, more than the endpoint serves
    // at once, one of them in the middle of its headers.
    let mut idle = Vec::new();
    for i in 0..40 {
        let mut c = TcpStream::connect(("127.0.0.1", port)).await?;
        if i == 0 {
            c.write_all(b"POST /on_publish HTTP/1.1\r\nContent-Le")
                .await?;
        }
        idle.push(c);
    }
    // Garbage.
    let junk: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    let _ = ask(port, &junk).await;
    // Headers without end, far beyond any sane size.
    let mut endless = b"POST /on_publish HTTP/1.1\r\nX: ".to_vec();
    endless.extend(std::iter::repeat_n(b'a', 1 << 20));
    let _ = ask(port, &endless).await;
    // A body far beyond any sane size, announced and sent.
    let mut huge = format!(
        "POST /on_publish HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        4 << 20
    )
    .into_bytes();
    huge.extend(std::iter::repeat_n(b'k', 4 << 20));
    let answer = ask(port, &huge).await.unwrap_or_default();
    ensure!(!answer.contains(" 200"), "huge body accepted: {answer}");
    // The slow clients are still connected: the endpoint must cut them off
    // and answer again.
    let deadline = Instant::now() + secs(30);
    loop {
        match ask(port, &form_request(&good)).await {
            Ok(line) if line.contains(" 200") => break,
            other if Instant::now() > deadline => bail!("the endpoint is gone: {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    drop(idle);
    // Odd methods, paths and forms.
    let get = b"GET /on_publish HTTP/1.0\r\n\r\n";
    ensure!(ask(port, get).await?.contains(" 405"));
    let other_path = b"POST /x HTTP/1.0\r\nContent-Length: 0\r\n\r\n";
    ensure!(ask(port, other_path).await?.contains(" 404"));
    let mangled = form_request("%%%&&&key&key=%ff%fe&name=\u{1}\n&app");
    ensure!(ask(port, &mangled).await?.contains(" 403"));
    let lying = b"POST /on_publish HTTP/1.0\r\nContent-Length: 100\r\n\r\nshort";
    let _ = ask(port, lying).await;

    // Still deciding right, still streaming.
    let wrong = good.replace(PUBLISH_KEY, "nope");
    ensure!(ask(port, &form_request(&wrong)).await?.contains(" 403"));
    ensure!(relay.is_running(), "relay died");
    sink.expect_steady(Colour::Green, secs(2)).await?;
    Ok(())
}

#[tokio::test]
async fn a_reload_applies_a_new_publish_key() -> anyhow::Result<()> {
    let s = Setup::new("pubreload", Some(PUBLISH_KEY)).await?;
    let relay = RelayProc::run(&s.env_file, &[])?;
    relay
        .wait_for_status("the output streaming", output_streaming, secs(60))
        .await?;
    let form = |key: &str| {
        form_request(&format!(
            "call=publish&app=live&name={}&addr=198.51.100.7&key={key}",
            s.stream
        ))
    };
    ensure!(ask(s.auth_port, &form(PUBLISH_KEY)).await?.contains(" 200"));
    let text = std::fs::read_to_string(&s.env_file)?;
    write_private(&s.env_file, text.replace(PUBLISH_KEY, "pk-new-key"))?;
    let before = relay.status().await?;
    relay.signal(nix::sys::signal::Signal::SIGHUP)?;
    // A replaced key applies at once: the output is not restarted for it.
    let after = relay
        .wait_for_status("the reload done", |s| s.reloads > before.reloads, secs(60))
        .await?;
    ensure!(last_reload_outcome(&after) == Some("applied"), "{after:?}");
    ensure!(
        after.output_pid == before.output_pid,
        "the output restarted: {after:?}"
    );
    ensure!(ask(s.auth_port, &form("pk-new-key"))
        .await?
        .contains(" 200"));
    ensure!(ask(s.auth_port, &form(PUBLISH_KEY)).await?.contains(" 403"));
    ensure!(relay.is_running(), "relay stopped on reload");
    Ok(())
}

/// nginx's application lacks the `on_publish` line, so nginx never asks
/// relay: with PUBLISH_KEY set, relay keeps whoever publishes off air and
/// says what is missing, instead of trusting a key nobody checks.
#[tokio::test]
async fn a_publisher_nginx_never_asked_about_stays_off_air() -> anyhow::Result<()> {
    let nginx = PrivateNginx::start(NginxOptions::default()).await?;
    let (dir, video) = dir_with_offline("unasked").await?;
    let stream = format!("unasked-{}", std::process::id());
    let auth_port = free_tcp_port()?;
    let env_file = RelayEnv::new(&nginx, OUT_KEY, &stream, &video)?
        .set("PUBLISH_AUTH_PORT", auth_port.to_string())
        .set("PUBLISH_KEY", PUBLISH_KEY)
        .write(dir.path())?;
    let mut relay = RelayProc::run(&env_file, &[])?;
    relay
        .wait_for_status("the output streaming", output_streaming, secs(60))
        .await?;
    let sink = Sink::start(&nginx.rtmp_url("out", OUT_KEY));
    sink.wait_for(Colour::Green, secs(30)).await?;

    let since = Instant::now();
    let live = nginx.rtmp_url("live", &stream);
    let _publisher = Publisher::start(
        &format!("{live}?key={PUBLISH_KEY}"),
        PublisherOpts::colour("blue"),
    )
    .await?;
    let line = relay
        .wait_for_log_since(0, "nginx did not ask relay for its PUBLISH_KEY", secs(20))
        .await?;
    ensure!(
        line.contains(&format!(
            "on_publish http://127.0.0.1:{auth_port}/on_publish"
        )),
        "the warning does not say what to add: {line}"
    );
    let status = relay.status().await?;
    ensure!(
        status.publisher_allowed == Some(false) && offline_on_air(&status),
        "{status:?}"
    );
    // The publisher stays connected and flowing; it must never reach the air.
    sink.expect_steady(Colour::Green, secs(6)).await?;
    let blue = sink
        .history()
        .iter()
        .filter(|(at, c)| *at >= since && *c == Colour::Blue)
        .count();
    ensure!(blue == 0, "{blue} frames of the unchecked publisher on air");
    let status = relay.sigterm_and_wait(secs(20)).await?;
    ensure!(status.success(), "relay exited with {status}");
    Ok(())
}

/// relay restarts while the streamer it accepted stays connected: nginx
/// will not ask again, and the streamer goes back on air.
#[tokio::test]
async fn an_accepted_publisher_stays_accepted_across_a_relay_restart() -> anyhow::Result<()> {
    let s = Setup::new("restarted", Some(PUBLISH_KEY)).await?;
    let (mut relay, sink) = s.start().await?;
    let _streamer = Publisher::start(
        &s.publish_url(&format!("?key={PUBLISH_KEY}")),
        PublisherOpts::colour("blue"),
    )
    .await?;
    sink.wait_for(Colour::Blue, secs(40)).await?;
    let status = relay.sigterm_and_wait(secs(20)).await?;
    ensure!(status.success(), "relay exited with {status}");
    drop(sink);

    let relay = RelayProc::run(&s.env_file, &[])?;
    relay
        .wait_for_status("the output streaming", output_streaming, secs(60))
        .await?;
    let sink = Sink::start(&s.nginx.rtmp_url("out", OUT_KEY));
    sink.wait_for(Colour::Blue, secs(40)).await?;
    let status = relay.status().await?;
    ensure!(
        status.publisher_allowed == Some(true) && live_on_air(&status),
        "the accepted publisher was refused after the restart: {status:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_clean_stop_fails_over_at_nginxs_word() -> anyhow::Result<()> {
    // A long failover gap: only nginx's on_publish_done can be this quick.
    let (nginx, auth_port) = start_nginx_with_publish_auth().await?;
    let (dir, video) = dir_with_offline("pubdone").await?;
    let stream = format!("pubdone-{}", std::process::id());
    let env_file = RelayEnv::new(&nginx, OUT_KEY, &stream, &video)?
        .set("PUBLISH_AUTH_PORT", auth_port.to_string())
        .set("OFFLINE_AFTER_MS", "5000")
        .write(dir.path())?;
    let mut relay = RelayProc::run(&env_file, &[])?;
    relay
        .wait_for_status("the output streaming", output_streaming, secs(60))
        .await?;
    let mut publisher = Publisher::start(
        &nginx.rtmp_url("live", &stream),
        PublisherOpts::colour("blue"),
    )
    .await?;
    relay
        .wait_for_status("the publisher on air", live_on_air, secs(40))
        .await?;
    let stopped = Instant::now();
    publisher.stop_clean().await?;
    let status = relay
        .wait_for_status(
            "offline because the publisher ended its stream",
            |s| last_switch_is(s, "offline", "publisher_stopped"),
            secs(4),
        )
        .await?;
    eprintln!(
        "[test] clean stop -> offline after {:?} (OFFLINE_AFTER_MS 5000)",
        stopped.elapsed()
    );
    ensure!(offline_on_air(&status), "{status:?}");
    // The next publisher goes on air as usual (after LIVE_STABLE_SECS: it
    // is back within a minute of a failover).
    let _next = Publisher::start(
        &nginx.rtmp_url("live", &stream),
        PublisherOpts::colour("blue"),
    )
    .await?;
    relay
        .wait_for_status("the next publisher on air", live_on_air, secs(40))
        .await?;
    relay.sigterm_and_wait(secs(20)).await?;
    Ok(())
}
