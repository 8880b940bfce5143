//! Faults relay must survive, each against the real relay binary, a private
//! nginx-rtmp and real FFmpeg.
//!
//! Two nginx instances stand for the two sides: the *host* nginx (app
//! `live`, the stat page relay polls) where the streamer publishes, and the
//! *destination* nginx (app `out`) standing in for the platform, which a
//! [`Sink`] watches. Either can then fail without touching the other.
//! What is on air is read from the sink's colours (offline video green,
//! publishers blue or red); the destination's stat page tells whether the
//! output connection changed (its nginx client id).

#[allow(unused_imports)]
mod common;
mod relay_rig;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use common::*;
use relay_rig::check_steady;

const KEY: &str = "relaytest";
/// How long a publisher may take from its start to being on air at the sink.
const GO_LIVE: Duration = Duration::from_secs(30);
/// How long a dead or stalled publisher may stay on air at the sink.
const FAIL_OVER: Duration = Duration::from_secs(15);

/// What a test needs around relay.
#[allow(dead_code)]
struct Faults {
    relay: Option<RelayProc>,
    stats: Option<FaultyStatPage>,
    proxy: Option<StallProxy>,
    host: PrivateNginx,
    dest: Option<PrivateNginx>,
    dest_port: u16,
    stream: String,
    env_file: PathBuf,
    offline: PathBuf,
    dir: tempfile::TempDir,
}

#[derive(Default)]
struct FaultOpts {
    /// Put a [`FaultyStatPage`] between relay and the host's stat page.
    faulty_stats: bool,
    /// Leave the destination down: nothing listens on its port.
    dest_down: bool,
    /// Send the output through a [`StallProxy`] to the destination.
    stall_proxy: bool,
    /// More configuration keys.
    env: Vec<(&'static str, String)>,
}

impl Faults {
    async fn new(tag: &str, opts: FaultOpts) -> anyhow::Result<Faults> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("relay-faults-{tag}-"))
            .tempdir()?;
        let host = start_nginx().await?;
        let dest_port = relay::nginx::free_tcp_port()?;
        let dest = if opts.dest_down {
            None
        } else {
            Some(start_dest(dest_port).await?)
        };
        let stats = if opts.faulty_stats {
            Some(FaultyStatPage::start(&host.stat_url()).await?)
        } else {
            None
        };
        let offline = make_offline_video(dir.path(), "green", true, 320, 180).await?;
        let stream = format!("{tag}-{}", std::process::id());
        let proxy = if opts.stall_proxy {
            Some(StallProxy::start(dest_port)?)
        } else {
            None
        };
        let kick_port = proxy.as_ref().map_or(dest_port, StallProxy::port);
        let kick_url = format!("rtmp://127.0.0.1:{kick_port}/out");
        let stats_url = stats
            .as_ref()
            .map_or_else(|| host.stat_url(), FaultyStatPage::url);
        let mut pairs: Vec<(&str, String)> = vec![
            ("KICK_URL", kick_url),
            ("KICK_KEY", KEY.to_string()),
            ("RTMP_PORT", host.rtmp_port().to_string()),
            ("RTMP_STREAM_NAME", stream.clone()),
            ("STATS_URL", stats_url),
            ("ZMQ_PORT", relay::nginx::free_tcp_port()?.to_string()),
            (
                "OFFLINE_VIDEO_PATH",
                offline.to_str().context("temp path")?.to_string(),
            ),
            ("OUT_RES", "180".into()),
            ("OUT_FPS", "30".into()),
            ("VID_BITRATE", "300k".into()),
            ("MAX_BITRATE", "300k".into()),
            ("BUFFER_SIZE", "600k".into()),
            ("POLL_INTERVAL", "0.5".into()),
            ("ALLOWED_PUBLISHERS", "any".into()),
            ("KILL_GRACE", "2".into()),
            ("CRASH_BACKOFF", "1".into()),
        ];
        for (k, v) in opts.env {
            pairs.retain(|(key, _)| *key != k);
            pairs.push((k, v));
        }
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let env_file = write_env_file(dir.path(), &pairs)?;
        Ok(Faults {
            relay: None,
            stats,
            proxy,
            host,
            dest,
            dest_port,
            stream,
            env_file,
            offline,
            dir,
        })
    }

    /// Starts relay; waits for its first output frame if the destination is up.
    async fn start_relay(&mut self) -> anyhow::Result<()> {
        let relay = RelayProc::run(&self.env_file, &[])?;
        relay.wait_for_log("relay starting", secs(30)).await?;
        if self.dest.is_some() {
            relay.wait_for_log("output streaming", secs(60)).await?;
        }
        self.relay = Some(relay);
        Ok(())
    }

    fn relay(&self) -> &RelayProc {
        self.relay.as_ref().expect("relay started")
    }

    fn out_url(&self) -> String {
        format!("rtmp://127.0.0.1:{}/out/{KEY}", self.dest_port)
    }

    fn dest(&self) -> &PrivateNginx {
        self.dest.as_ref().expect("destination up")
    }

    async fn publish(&self, colour: &str) -> anyhow::Result<Publisher> {
        Publisher::start(
            &self.host.rtmp_url("live", &self.stream),
            PublisherOpts::colour(colour),
        )
        .await
    }

    /// The output connection at the destination: (nginx pid, client id).
    async fn output_connection(&self) -> anyhow::Result<Option<(u32, u64)>> {
        let stat = fetch_stat(&self.dest().stat_url()).await?;
        Ok(stat.publisher("out", KEY).map(|c| (stat.nginx_pid, c.id)))
    }

    /// Waits until the destination shows an output connection.
    async fn wait_output_connection(&self, timeout: Duration) -> anyhow::Result<(u32, u64)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(c)) = self.output_connection().await {
                return Ok(c);
            }
            ensure!(
                Instant::now() < deadline,
                "no output connection at the destination after {timeout:?}\n{}",
                self.context()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `relay status --json` of this instance, parsed.
    async fn status(&self) -> anyhow::Result<serde_json::Value> {
        let out = tokio::time::timeout(
            secs(30),
            tokio::process::Command::new(env!("CARGO_BIN_EXE_relay"))
                .args(["status", "relay", "--json"])
                .env("RELAY_RUNTIME_DIR", self.dir.path())
                .env("RELAY_CONFIG_DIR", self.dir.path())
                .env_remove("RUNTIME_DIRECTORY")
                .kill_on_drop(true)
                .output(),
        )
        .await
        .context("relay status did not finish")??;
        ensure!(
            out.status.success(),
            "relay status: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Relay's log lines after `mark` containing `needle`.
    fn lines_since(&self, mark: usize, needle: &str) -> Vec<String> {
        self.relay()
            .logs()
            .into_iter()
            .skip(mark)
            .filter(|l| l.contains(needle))
            .collect()
    }

    /// Relay's recent log, for failure messages.
    fn context(&self) -> String {
        let logs = self.relay.as_ref().map(RelayProc::logs).unwrap_or_default();
        let recent = &logs[logs.len().saturating_sub(30)..];
        format!("relay's last lines:\n{}", recent.join("\n"))
    }

    /// Relay still runs, then stops cleanly on SIGTERM.
    async fn finish(mut self) -> anyhow::Result<()> {
        self.stop_relay().await
    }

    async fn stop_relay(&mut self) -> anyhow::Result<()> {
        let context = self.context();
        let relay = self.relay.as_mut().expect("relay started");
        ensure!(relay.is_running(), "relay exited\n{context}");
        let status = relay.sigterm_and_wait(secs(20)).await?;
        ensure!(status.success(), "relay exited with {status}\n{context}");
        Ok(())
    }
}

/// The platform stand-in: an nginx with app `out` on `port`.
async fn start_dest(port: u16) -> anyhow::Result<PrivateNginx> {
    PrivateNginx::start(NginxOptions {
        rtmp_port: Some(port),
        ..NginxOptions::default()
    })
    .await
}

/// Waits until the sink shows `colour` after `since`, then holds it for 2 s.
async fn expect_on_air(
    f: &Faults,
    sink: &Sink,
    colour: Colour,
    since: Instant,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let at = sink
        .wait_for_since(colour, since, timeout)
        .await
        .with_context(|| f.context())?;
    sink.expect_steady(colour, secs(2))
        .await
        .with_context(|| f.context())?;
    Ok(at)
}

// ---------------------------------------------------------------------------
// 6. The stat page breaks
// ---------------------------------------------------------------------------

/// The stat page answers 500, garbage, an endless body, then nothing at all,
/// while a publisher is live: live stays on air without a gap, relay says
/// once that the page is unavailable (not once per poll), and once that it
/// answers again. Failover does not need the stat page: a publisher that
/// dies while the page hangs still gives way to the offline video.
#[tokio::test]
async fn broken_stat_page_keeps_live_on_air() -> anyhow::Result<()> {
    let mut f = Faults::new(
        "stat",
        FaultOpts {
            faulty_stats: true,
            ..FaultOpts::default()
        },
    )
    .await?;
    f.start_relay().await?;
    let sink = Sink::start(&f.out_url());
    let connection = f.wait_output_connection(secs(10)).await?;
    let mut blue = f.publish("blue").await?;
    expect_on_air(&f, &sink, Colour::Blue, Instant::now(), GO_LIVE).await?;

    let stats = f.stats.as_ref().expect("faulty stat page");
    let mark = f.relay().log_mark();
    let broken_at = Instant::now();
    for mode in [
        StatMode::Error500,
        StatMode::Garbage,
        StatMode::Huge,
        StatMode::Hang,
    ] {
        eprintln!("[test] stat page: {mode:?}");
        let before = stats.requests();
        stats.set(mode);
        // A few polls in each mode.
        let deadline = Instant::now() + secs(15);
        while stats.requests() < before + 3 {
            ensure!(
                Instant::now() < deadline,
                "relay stopped polling the stat page ({mode:?})\n{}",
                f.context()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let polls = stats.requests();
    check_steady(&sink, Colour::Blue, broken_at, Instant::now(), secs(2))
        .with_context(|| f.context())?;
    ensure!(
        f.lines_since(mark, "on air:").is_empty(),
        "the selection changed while the stat page was broken: {:?}",
        f.lines_since(mark, "on air:")
    );
    let unavailable = f.lines_since(mark, "stat page unavailable");
    eprintln!("[test] {polls} polls failed; relay logged: {unavailable:#?}");
    ensure!(
        !unavailable.is_empty() && unavailable.len() <= 4,
        "expected the stat page's failure logged once per kind of failure at most: {unavailable:#?}"
    );

    // Back: relay says so.
    stats.set(StatMode::Pass);
    f.relay()
        .wait_for_log_since(mark, "stat page answers again", secs(15))
        .await
        .with_context(|| f.context())?;

    // Hanging page, dying publisher: the offline video goes on air anyway.
    stats.set(StatMode::Hang);
    tokio::time::sleep(secs(2)).await;
    let killed = Instant::now();
    blue.kill().await?;
    expect_on_air(&f, &sink, Colour::Green, killed, FAIL_OVER).await?;
    stats.set(StatMode::Pass);

    ensure!(
        f.output_connection().await? == Some(connection),
        "the output reconnected\n{}",
        f.context()
    );
    f.finish().await
}

// ---------------------------------------------------------------------------
// 5. The host nginx restarts
// ---------------------------------------------------------------------------

/// The host nginx (where the streamer publishes, whose stat page relay
/// polls) restarts while a publisher is live: relay fails over to the
/// offline video, keeps its output connection, and goes live again when
/// the streamer publishes to the restarted nginx.
#[tokio::test]
async fn host_nginx_restart_fails_over_and_comes_back() -> anyhow::Result<()> {
    let mut f = Faults::new("hostrestart", FaultOpts::default()).await?;
    f.start_relay().await?;
    let sink = Sink::start(&f.out_url());
    let connection = f.wait_output_connection(secs(10)).await?;
    let _blue = f.publish("blue").await?;
    expect_on_air(&f, &sink, Colour::Blue, Instant::now(), GO_LIVE).await?;

    let mark = f.relay().log_mark();
    let restarted = Instant::now();
    f.host.restart().await?;
    expect_on_air(&f, &sink, Colour::Green, restarted, FAIL_OVER).await?;
    f.relay()
        .wait_for_log_since(mark, "on air: offline video", secs(5))
        .await?;

    let t = Instant::now();
    let _red = f.publish("red").await?;
    expect_on_air(&f, &sink, Colour::Red, t, GO_LIVE).await?;
    ensure!(
        f.output_connection().await? == Some(connection),
        "the output reconnected\n{}",
        f.context()
    );
    f.finish().await
}

// ---------------------------------------------------------------------------
// 1, 2, 4. The destination refuses or drops the output
// ---------------------------------------------------------------------------

/// Output attempts (FFmpeg starts) logged after `mark`.
fn output_attempts(f: &Faults, mark: usize) -> usize {
    f.lines_since(mark, "output started").len()
}

/// Nothing listens at the destination: relay keeps running and retries
/// with a growing backoff (a handful of attempts, not a tight loop); a
/// publisher that arrives meanwhile is what the destination sees once it
/// comes up.
#[tokio::test]
async fn refused_destination_is_retried_with_backoff() -> anyhow::Result<()> {
    let mut f = Faults::new(
        "refused",
        FaultOpts {
            dest_down: true,
            ..FaultOpts::default()
        },
    )
    .await?;
    f.start_relay().await?;
    let _blue = f.publish("blue").await?;
    let window = secs(15);
    tokio::time::sleep(window).await;
    let attempts = output_attempts(&f, 0);
    let stopped = f.lines_since(0, "output stopped");
    eprintln!("[test] {attempts} output attempts in {window:?}: {stopped:#?}");
    // CRASH_BACKOFF=1: 1, 2, 4, 8 s between attempts -> about 5 in 15 s.
    ensure!(
        (2..=8).contains(&attempts),
        "{attempts} output attempts in {window:?}: no retry, or a tight loop\n{}",
        f.context()
    );
    ensure!(
        stopped.iter().all(|l| !l.contains(KEY)),
        "the stream key leaked: {stopped:#?}"
    );
    ensure!(f.relay().is_running(), "relay gave up\n{}", f.context());
    ensure!(
        stopped.iter().all(|l| l.contains("; retrying in ")),
        "an output that never connected is retried, not reconnected: {stopped:#?}"
    );
    let status = f.status().await?;
    eprintln!("[test] status: {status:#}");
    ensure!(
        status["output_uptime_s"].is_null() && status["output_restarts"].as_u64() >= Some(2),
        "relay status does not show the output down and retried: {status:#}"
    );

    // The platform comes back: the output connects, with the live feed.
    let up = Instant::now();
    f.dest = Some(start_dest(f.dest_port).await?);
    let sink = Sink::start(&f.out_url());
    let connection = f.wait_output_connection(secs(40)).await?;
    expect_on_air(&f, &sink, Colour::Blue, up, secs(60)).await?;
    eprintln!("[test] destination up -> blue after {:?}", up.elapsed());
    ensure!(
        f.output_connection().await? == Some(connection),
        "the output reconnected\n{}",
        f.context()
    );
    f.finish().await
}

/// The destination drops the output while a publisher is live (its nginx
/// restarts): relay reconnects, and the live feed is what comes back.
#[tokio::test]
async fn dropped_output_reconnects_on_the_live_feed() -> anyhow::Result<()> {
    let mut f = Faults::new("dropped", FaultOpts::default()).await?;
    f.start_relay().await?;
    let sink = Sink::start(&f.out_url());
    let first = f.wait_output_connection(secs(10)).await?;
    let _blue = f.publish("blue").await?;
    expect_on_air(&f, &sink, Colour::Blue, Instant::now(), GO_LIVE).await?;

    let mark = f.relay().log_mark();
    let dropped = Instant::now();
    f.dest.as_mut().expect("destination").restart().await?;
    f.relay()
        .wait_for_log_since(mark, "output stopped", secs(20))
        .await
        .with_context(|| f.context())?;
    let second = f.wait_output_connection(secs(30)).await?;
    ensure!(second != first, "same output connection after a restart");
    expect_on_air(&f, &sink, Colour::Blue, Instant::now(), secs(40)).await?;
    let green = sink
        .history_frames()
        .into_iter()
        .filter(|fr| fr.at >= dropped && fr.colour == Colour::Green)
        .count();
    ensure!(
        green == 0,
        "the offline video went on air after the reconnect: {}",
        sink.summary_since(dropped)
    );
    let restarted = f.lines_since(mark, "output started");
    ensure!(
        restarted.iter().all(|l| l.contains("on_air=\"live\"")),
        "the output restarted on the wrong source: {restarted:#?}"
    );
    ensure!(
        f.output_connection().await? == Some(second),
        "the output reconnected again\n{}",
        f.context()
    );
    f.finish().await
}

/// The platform ends the broadcast (as IVS does after 48 hours): nginx's
/// control module drops the output's connection. Relay reconnects at once
/// on what was on air, and stays up.
#[tokio::test]
async fn forced_disconnect_is_a_reconnect() -> anyhow::Result<()> {
    let mut f = Faults::new("forced", FaultOpts::default()).await?;
    f.start_relay().await?;
    let sink = Sink::start(&f.out_url());
    let first = f.wait_output_connection(secs(10)).await?;
    sink.wait_for(Colour::Green, secs(20)).await?;

    let mark = f.relay().log_mark();
    let dropped = Instant::now();
    let url = format!(
        "{}/drop/publisher?app=out&name={KEY}",
        f.dest().control_url()
    );
    let answer = reqwest::get(&url).await?.text().await?;
    eprintln!("[test] {url} -> {answer:?}");
    let line = f
        .relay()
        .wait_for_log_since(mark, "output stopped", secs(20))
        .await
        .with_context(|| f.context())?;
    eprintln!("[test] relay: {line}");
    ensure!(
        line.contains("; reconnecting in "),
        "a dropped connection is a reconnect: {line}"
    );
    let second = f.wait_output_connection(secs(30)).await?;
    ensure!(second != first, "same output connection after the drop");
    expect_on_air(&f, &sink, Colour::Green, Instant::now(), secs(40)).await?;
    eprintln!(
        "[test] dropped -> green again after {:?}",
        dropped.elapsed()
    );
    f.finish().await
}

/// The output FFmpeg among relay's children: the one with the switch graph.
fn output_ffmpeg(f: &Faults) -> anyhow::Result<u32> {
    let outputs: Vec<u32> = child_pids_of(f.relay().pid())
        .into_iter()
        .filter(|&pid| {
            process_is_alive(pid)
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("streamselect"))
        })
        .collect();
    match outputs[..] {
        [pid] => Ok(pid),
        _ => anyhow::bail!("expected one output ffmpeg, found {outputs:?}"),
    }
}

// ---------------------------------------------------------------------------
// 7. The zmq filter stops answering
// ---------------------------------------------------------------------------

/// The output FFmpeg stops answering (SIGSTOP) just as the live feed ends:
/// the switch to offline gets no reply, nor does a retry on a fresh socket,
/// so relay restarts the output, which comes back on the offline video.
#[tokio::test]
async fn unanswered_zmq_restarts_the_output_on_the_selection() -> anyhow::Result<()> {
    let mut f = Faults::new("zmq", FaultOpts::default()).await?;
    f.start_relay().await?;
    let sink = Sink::start(&f.out_url());
    let first = f.wait_output_connection(secs(10)).await?;
    let mut blue = f.publish("blue").await?;
    expect_on_air(&f, &sink, Colour::Blue, Instant::now(), GO_LIVE).await?;

    let output = output_ffmpeg(&f)?;
    let mark = f.relay().log_mark();
    kill(Pid::from_raw(output as i32), Signal::SIGSTOP)?;
    blue.kill().await?;
    let result = async {
        f.relay()
            .wait_for_log_since(mark, "could not switch to offline", secs(20))
            .await?;
        f.relay()
            .wait_for_log_since(
                mark,
                "zmq control does not answer; restarting the output",
                secs(20),
            )
            .await?;
        let started = f
            .relay()
            .wait_for_log_since(mark, "output started", secs(20))
            .await?;
        ensure!(
            started.contains("on_air=\"offline\""),
            "the output restarted on the wrong source: {started}"
        );
        anyhow::Ok(())
    }
    .await;
    // Never leave a stopped process behind, whatever happened.
    let _ = kill(Pid::from_raw(output as i32), Signal::SIGCONT);
    result.with_context(|| f.context())?;
    ensure!(
        !process_is_alive(output) || output_ffmpeg(&f)? != output,
        "the unresponsive output still runs"
    );
    let second = f.wait_output_connection(secs(30)).await?;
    ensure!(second != first, "same output connection after a restart");
    expect_on_air(&f, &sink, Colour::Green, Instant::now(), secs(40)).await?;
    f.finish().await
}

// ---------------------------------------------------------------------------
// 8. The offline video is replaced or corrupted
// ---------------------------------------------------------------------------

/// The operator's offline video is overwritten with garbage, then replaced
/// by another broken file, while relay runs; the output restarts after
/// each (its FFmpeg is killed) and still streams the offline video as it
/// was at start.
#[tokio::test]
async fn corrupted_offline_video_does_not_break_output_restarts() -> anyhow::Result<()> {
    let mut f = Faults::new("offline", FaultOpts::default()).await?;
    f.start_relay().await?;
    let sink = Sink::start(&f.out_url());
    let mut connection = f.wait_output_connection(secs(10)).await?;
    sink.wait_for(Colour::Green, secs(20)).await?;

    let garbage: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    for how in ["overwritten", "replaced"] {
        match how {
            // In place: same inode, new content.
            "overwritten" => std::fs::write(&f.offline, &garbage[..1000])?,
            // A new file renamed over it.
            _ => {
                let new = f.dir.path().join("new.mp4");
                std::fs::write(&new, &garbage)?;
                std::fs::rename(&new, &f.offline)?;
            }
        }
        // What is running keeps running...
        tokio::time::sleep(secs(2)).await;
        ensure!(
            f.output_connection().await? == Some(connection),
            "the output went down when the offline video was {how}\n{}",
            f.context()
        );
        // ...and a restart still streams the video relay started with.
        let mark = f.relay().log_mark();
        kill(Pid::from_raw(output_ffmpeg(&f)? as i32), Signal::SIGKILL)?;
        f.relay()
            .wait_for_log_since(mark, "output streaming", secs(30))
            .await
            .with_context(|| format!("offline video {how}\n{}", f.context()))?;
        let next = f.wait_output_connection(secs(30)).await?;
        ensure!(next != connection, "same output connection after a restart");
        connection = next;
        expect_on_air(&f, &sink, Colour::Green, Instant::now(), secs(40))
            .await
            .with_context(|| format!("offline video {how}"))?;
    }
    // The copy is relay's own and goes with it.
    let copies = || {
        std::fs::read_dir(f.dir.path())
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().contains("-offline-"))
                    .count()
            })
            .unwrap_or(0)
    };
    ensure!(copies() == 1, "no private copy of the offline video");
    let dir = f.dir.path().to_owned();
    f.stop_relay().await?;
    let left: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().contains("-offline-"))
        .collect();
    ensure!(left.is_empty(), "the private copy outlived relay: {left:?}");
    Ok(())
}

// ---------------------------------------------------------------------------
// 9. The ingest FFmpeg hangs
// ---------------------------------------------------------------------------

/// The ingest FFmpeg of the live feed hangs (SIGSTOP): the offline video
/// goes on air within the gap, the hung ingest is killed and replaced, and
/// the feed, still published, goes live again.
#[tokio::test]
async fn hung_ingest_is_replaced() -> anyhow::Result<()> {
    let mut f = Faults::new("hungingest", FaultOpts::default()).await?;
    f.start_relay().await?;
    let sink = Sink::start(&f.out_url());
    let connection = f.wait_output_connection(secs(10)).await?;
    let _blue = f.publish("blue").await?;
    expect_on_air(&f, &sink, Colour::Blue, Instant::now(), GO_LIVE).await?;

    let live_path = format!(":{}/live/{}", f.host.rtmp_port(), f.stream);
    let ingest: Vec<u32> = child_pids_of(f.relay().pid())
        .into_iter()
        .filter(|&p| {
            process_is_alive(p)
                && std::fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&live_path))
        })
        .collect();
    let [ingest] = ingest[..] else {
        anyhow::bail!("expected one ingest ffmpeg, found {ingest:?}");
    };
    let mark = f.relay().log_mark();
    let hung = Instant::now();
    kill(Pid::from_raw(ingest as i32), Signal::SIGSTOP)?;
    let result = async {
        // Not for long: the replacement ingest goes live again within
        // seconds, as it should.
        sink.wait_for_since(Colour::Green, hung, FAIL_OVER).await?;
        f.relay()
            .wait_for_log_since(mark, "on air: offline video (no live frame", secs(5))
            .await?;
        let deadline = Instant::now() + secs(15);
        while process_is_alive(ingest) {
            ensure!(
                Instant::now() < deadline,
                "the hung ingest {ingest} still runs"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::Ok(())
    }
    .await;
    let _ = kill(Pid::from_raw(ingest as i32), Signal::SIGCONT);
    result.with_context(|| f.context())?;
    expect_on_air(&f, &sink, Colour::Blue, Instant::now(), GO_LIVE).await?;
    eprintln!(
        "[test] ingest hung -> live again after {:?}",
        hung.elapsed()
    );
    ensure!(
        f.output_connection().await? == Some(connection),
        "the output reconnected\n{}",
        f.context()
    );
    f.finish().await
}

// ---------------------------------------------------------------------------
// 10. Garbage from publishers
// ---------------------------------------------------------------------------

/// Deterministic noise.
fn noise(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// Connects to `port` and sends `bytes`, after a valid RTMP handshake if
/// `handshake`; then closes.
async fn send_garbage(port: u16, handshake: bool, bytes: &[u8]) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    if handshake {
        // C0 (version 3) + C1 (time, zero, random); S0 + S1 + S2 back; C2
        // echoes S1.
        let mut c0c1 = vec![3u8];
        c0c1.extend_from_slice(&[0u8; 8]);
        c0c1.extend_from_slice(&noise(1528, 7));
        s.write_all(&c0c1).await?;
        let mut s012 = vec![0u8; 1 + 1536 + 1536];
        tokio::time::timeout(secs(5), s.read_exact(&mut s012)).await??;
        s.write_all(&s012[1..1537]).await?;
    }
    // nginx may hang up on us half-way: that is its right.
    let _ = s.write_all(bytes).await;
    let _ = s.shutdown().await;
    Ok(())
}

/// Publishers send garbage: random bytes instead of RTMP, a valid
/// handshake followed by random bytes, and a real stream with absurd
/// metadata (huge size, frame rate 0). The output stays up on the same
/// connection, the offline video on air; relay runs on and still takes a
/// proper publisher live afterwards.
#[tokio::test]
async fn garbage_publishers_leave_the_output_alone() -> anyhow::Result<()> {
    let mut f = Faults::new("garbage", FaultOpts::default()).await?;
    f.start_relay().await?;
    let sink = Sink::start(&f.out_url());
    let connection = f.wait_output_connection(secs(10)).await?;
    sink.wait_for(Colour::Green, secs(20)).await?;
    let start = Instant::now();

    let port = f.host.rtmp_port();
    for seed in 0..3 {
        send_garbage(port, false, &noise(256 * 1024, seed)).await?;
        send_garbage(port, true, &noise(256 * 1024, seed + 10)).await?;
    }
    // A stream whose metadata lies.
    let url = f.host.rtmp_url("live", &f.stream);
    let mut liar = RelayProc::spawn(
        "ffmpeg",
        [
            "-hide_banner",
            "-loglevel",
            "warning",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "color=c=red:s=320x180:r=30",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "30",
            "-metadata",
            "width=1000000",
            "-metadata",
            "height=1000000",
            "-metadata",
            "framerate=0",
            "-metadata",
            "videodatarate=-5",
            "-f",
            "flv",
            &url,
        ],
        &[],
        "liar",
    )?;
    tokio::time::sleep(secs(8)).await;
    liar.signal(Signal::SIGKILL)?;
    let _ = liar.wait_exit(secs(5)).await;
    expect_on_air(&f, &sink, Colour::Green, Instant::now(), FAIL_OVER).await?;
    let colours: Vec<Colour> = sink
        .history_frames()
        .into_iter()
        .filter(|fr| fr.at >= start)
        .map(|fr| fr.colour)
        .collect();
    eprintln!("[test] during the garbage: {}", sink.summary_since(start));
    ensure!(
        colours
            .iter()
            .all(|c| matches!(c, Colour::Green | Colour::Red | Colour::Other)),
        "unexpected picture during the garbage: {}",
        sink.summary_since(start)
    );
    ensure!(f.relay().is_running(), "relay died\n{}", f.context());

    // A real publisher still goes live.
    let t = Instant::now();
    let _blue = f.publish("blue").await?;
    expect_on_air(&f, &sink, Colour::Blue, t, GO_LIVE).await?;
    ensure!(
        f.output_connection().await? == Some(connection),
        "the output reconnected\n{}",
        f.context()
    );
    f.finish().await
}

// ---------------------------------------------------------------------------
// 3. The destination stalls
// ---------------------------------------------------------------------------

/// The destination stops reading while the connection stays open (a proxy
/// in front of it stops reading): the output makes no progress, relay
/// restarts it after OUTPUT_STALL (15 s) — again while the destination
/// still hangs — and once it reads again the output streams on the live
/// feed.
///
/// A busy picture at 2 Mb/s fills the kernel's socket buffers (over a MB
/// on loopback) in seconds, so the output blocks soon after the stall.
#[tokio::test]
async fn stalled_destination_is_detected_and_recovered() -> anyhow::Result<()> {
    let mut f = Faults::new(
        "stalled",
        FaultOpts {
            stall_proxy: true,
            env: vec![
                ("VID_BITRATE", "2000k".into()),
                ("MAX_BITRATE", "2000k".into()),
                ("BUFFER_SIZE", "2000k".into()),
            ],
            ..FaultOpts::default()
        },
    )
    .await?;
    f.start_relay().await?;
    let sink = Sink::start(&f.out_url());
    f.wait_output_connection(secs(10)).await?;
    sink.wait_for(Colour::Green, secs(20)).await?;
    // A test pattern (neither green nor a solid colour) that does not
    // compress to nothing.
    let url = f.host.rtmp_url("live", &f.stream);
    let _busy = RelayProc::spawn(
        "ffmpeg",
        [
            "-hide_banner",
            "-loglevel",
            "warning",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=s=320x180:r=30",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=44100",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "30",
            "-b:v",
            "2000k",
            "-c:a",
            "aac",
            "-f",
            "flv",
            &url,
        ],
        &[],
        "busy",
    )?;
    f.relay()
        .wait_for_log("on air: live", GO_LIVE)
        .await
        .with_context(|| f.context())?;
    let first = f.wait_output_connection(secs(10)).await?;

    let proxy = f.proxy.as_ref().expect("proxy");
    let mark = f.relay().log_mark();
    let t0 = Instant::now();
    proxy.stall(true);
    let stalled = f
        .relay()
        .wait_for_log_since(mark, "output stopped: no progress", secs(50))
        .await
        .with_context(|| f.context())?;
    eprintln!("[test] after {:?}: {stalled}", t0.elapsed());
    let restarted = f
        .relay()
        .wait_for_log_since(mark, "output started", secs(20))
        .await?;
    ensure!(
        restarted.contains("on_air=\"live\""),
        "the output restarted on the wrong source: {restarted}"
    );
    // That attempt does not get through either, until the destination
    // reads again.
    tokio::time::sleep(secs(2)).await;
    proxy.stall(false);
    let resumed = Instant::now();
    let deadline = Instant::now() + secs(60);
    let second = loop {
        if let Some(c) = f.output_connection().await? {
            if c != first {
                break c;
            }
        }
        ensure!(
            Instant::now() < deadline,
            "no new output connection after the destination resumed\n{}",
            f.context()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    f.relay()
        .wait_for_log_since(mark, "output streaming", secs(30))
        .await?;
    // The test pattern, not the offline video, is what comes back.
    let back = Instant::now();
    tokio::time::sleep(secs(6)).await;
    let frames: Vec<Frame> = sink
        .history_frames()
        .into_iter()
        .filter(|fr| fr.at >= back)
        .collect();
    ensure!(
        !frames.is_empty() && frames.iter().all(|fr| fr.colour != Colour::Green),
        "expected the live feed after the recovery: {}",
        sink.summary_since(back)
    );
    eprintln!(
        "[test] destination resumed -> new connection after {:?}",
        resumed.elapsed()
    );
    ensure!(
        f.output_connection().await? == Some(second),
        "the output reconnected again\n{}",
        f.context()
    );
    f.finish().await
}

/// A new offline video, put in place of the old one (same size, sound and
/// length, so it probes the same), goes on air at `systemctl reload`
/// (SIGHUP), not before.
#[tokio::test]
async fn replaced_offline_video_goes_on_air_at_reload() -> anyhow::Result<()> {
    let mut f = Faults::new("offreload", FaultOpts::default()).await?;
    f.start_relay().await?;
    let sink = Sink::start(&f.out_url());
    sink.wait_for(Colour::Green, secs(20)).await?;

    let sub = f.dir.path().join("new");
    std::fs::create_dir_all(&sub)?;
    let red = make_offline_video(&sub, "red", true, 320, 180).await?;
    std::fs::rename(&red, &f.offline)?;
    let replaced = Instant::now();
    tokio::time::sleep(secs(3)).await;
    check_steady(&sink, Colour::Green, replaced, Instant::now(), secs(2))
        .context("the new video went on air before the reload")?;

    let mark = f.relay().log_mark();
    f.relay().signal(Signal::SIGHUP)?;
    f.relay()
        .wait_for_log_since(mark, "reload: applying the new configuration", secs(20))
        .await
        .with_context(|| f.context())?;
    expect_on_air(&f, &sink, Colour::Red, Instant::now(), secs(40)).await?;
    f.finish().await
}
