//! The rig of the fault tests (`faults_output.rs`, `faults_inputs.rs`):
//! relay between two nginx instances.
//!
//! The *host* nginx (app `live`, the stat page relay polls) is where the
//! streamer publishes; the *destination* nginx (app `out`) stands in for the
//! platform, and a [`Sink`] watches it. Either can then fail without
//! touching the other. What is on air is read from the sink's colours
//! (offline video green, publishers blue or red); the destination's stat
//! page tells whether the output connection changed (its nginx client id).
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};

use crate::common::*;
use crate::relay_rig::ffmpeg_children_with;

pub const KEY: &str = "relaytest";
/// How long a publisher may take from its start to being on air at the sink.
pub const GO_LIVE: Duration = Duration::from_secs(30);
/// How long a dead or stalled publisher may stay on air at the sink.
pub const FAIL_OVER: Duration = Duration::from_secs(15);

/// An output connection at the destination: (nginx pid, client id).
pub type Connection = (u32, u64);

/// What a test needs around relay.
pub struct Faults {
    pub relay: Option<RelayProc>,
    pub stats: Option<FaultyStatPage>,
    pub proxy: Option<StallProxy>,
    pub host: PrivateNginx,
    pub dest: Option<PrivateNginx>,
    pub dest_port: u16,
    pub stream: String,
    pub env_file: PathBuf,
    pub offline: PathBuf,
    pub dir: tempfile::TempDir,
}

#[derive(Default)]
pub struct FaultOpts {
    /// Put a [`FaultyStatPage`] between relay and the host's stat page.
    pub faulty_stats: bool,
    /// Leave the destination down: nothing listens on its port.
    pub dest_down: bool,
    /// The destination accepts connections but refuses to let the output
    /// publish (`deny publish all`).
    pub dest_denies: bool,
    /// Send the output through a [`StallProxy`] to the destination.
    pub stall_proxy: bool,
    /// More configuration keys.
    pub env: Vec<(&'static str, String)>,
}

impl Faults {
    pub async fn new(tag: &str, opts: FaultOpts) -> anyhow::Result<Faults> {
        Faults::new_on(tag, free_tcp_port()?, opts).await
    }

    /// [`Faults::new`] with the destination on `dest_port`, so the test
    /// can point more destinations at it.
    pub async fn new_on(tag: &str, dest_port: u16, opts: FaultOpts) -> anyhow::Result<Faults> {
        let (dir, offline) = dir_with_offline(&format!("faults-{tag}")).await?;
        let host = start_nginx().await?;
        let dest = if opts.dest_down {
            None
        } else if opts.dest_denies {
            Some(start_denying_dest(dest_port).await?)
        } else {
            Some(start_dest(dest_port).await?)
        };
        let stats = if opts.faulty_stats {
            Some(FaultyStatPage::start(&host.stat_url()).await?)
        } else {
            None
        };
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
        let mut env = RelayEnv::new(&host, KEY, &stream, &offline)?
            .set("KICK_URL", kick_url)
            .set("STATS_URL", stats_url);
        for (key, value) in opts.env {
            env = env.set(key, value);
        }
        let env_file = env.write(dir.path())?;
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
    pub async fn start_relay(&mut self) -> anyhow::Result<()> {
        let relay = RelayProc::run(&self.env_file, &[])?;
        if self.dest.is_some() {
            relay
                .wait_for_status("the output streaming", output_streaming, secs(60))
                .await?;
            crate::relay_rig::settle_offline_source(&relay).await?;
        } else {
            relay
                .wait_for_status("anything", |_| true, secs(30))
                .await?;
        }
        self.relay = Some(relay);
        Ok(())
    }

    /// Starts relay and a sink on its output; waits for the output
    /// connection at the destination, which it returns.
    pub async fn start_watched(&mut self) -> anyhow::Result<(Sink, Connection)> {
        self.start_relay().await?;
        let sink = Sink::start(&self.out_url());
        let connection = self.wait_output_connection(secs(10)).await?;
        Ok((sink, connection))
    }

    /// [`start_watched`](Self::start_watched), then waits until the sink
    /// shows the offline video.
    pub async fn start_offline(&mut self) -> anyhow::Result<(Sink, Connection)> {
        let (sink, connection) = self.start_watched().await?;
        sink.wait_for(Colour::Green, secs(20)).await?;
        Ok((sink, connection))
    }

    /// [`start_watched`](Self::start_watched), then publishes `colour`
    /// and waits until it has settled on air.
    pub async fn start_live(
        &mut self,
        colour: Colour,
    ) -> anyhow::Result<(Sink, Connection, Publisher)> {
        let (sink, connection) = self.start_watched().await?;
        let publisher = self.publish(colour_name(colour)).await?;
        settle_on(self, &sink, colour, GO_LIVE).await?;
        Ok((sink, connection, publisher))
    }

    pub fn relay(&self) -> &RelayProc {
        self.relay.as_ref().expect("relay started")
    }

    pub fn out_url(&self) -> String {
        format!("rtmp://127.0.0.1:{}/out/{KEY}", self.dest_port)
    }

    pub fn dest(&self) -> &PrivateNginx {
        self.dest.as_ref().expect("destination up")
    }

    pub async fn publish(&self, colour: &str) -> anyhow::Result<Publisher> {
        Publisher::start(
            &self.host.rtmp_url("live", &self.stream),
            PublisherOpts::colour(colour),
        )
        .await
    }

    /// The output connection at the destination: (nginx pid, client id).
    pub async fn output_connection(&self) -> anyhow::Result<Option<Connection>> {
        let stat = fetch_stat(&self.dest().stat_url()).await?;
        Ok(stat.publisher("out", KEY).map(|c| (stat.nginx_pid, c.id)))
    }

    /// Waits until the destination shows an output connection.
    pub async fn wait_output_connection(&self, timeout: Duration) -> anyhow::Result<Connection> {
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

    /// Waits for the output connection after the old one, `first`, went
    /// away; fails if it is still `first` (`after` says after what).
    pub async fn wait_new_output_connection(
        &self,
        first: Connection,
        after: &str,
    ) -> anyhow::Result<Connection> {
        let second = self.wait_output_connection(secs(30)).await?;
        ensure!(second != first, "same output connection after {after}");
        Ok(second)
    }

    /// Fails (`what`, with relay's recent log) unless the output
    /// connection is still `connection`.
    pub async fn ensure_output_connection(
        &self,
        connection: Connection,
        what: &str,
    ) -> anyhow::Result<()> {
        ensure!(
            self.output_connection().await? == Some(connection),
            "{what}\n{}",
            self.context()
        );
        Ok(())
    }

    /// The output never reconnected (it is still on `connection`); then
    /// [`finish`](Self::finish).
    pub async fn finish_on(self, connection: Connection) -> anyhow::Result<()> {
        self.ensure_output_connection(connection, "the output reconnected")
            .await?;
        self.finish().await
    }

    /// Waits for `needle` in relay's log after `mark`; a failure carries
    /// relay's recent log.
    pub async fn wait_for_log_since(
        &self,
        mark: usize,
        needle: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        self.relay()
            .wait_for_log_since(mark, needle, timeout)
            .await
            .with_context(|| self.context())
    }

    /// Publishes with FFmpeg from a lavfi source (`lavfi`: the `-f lavfi`
    /// inputs; `encode`: further output options) instead of a [`Publisher`].
    pub fn publish_lavfi(
        &self,
        label: &str,
        lavfi: &[&str],
        encode: &[&str],
    ) -> anyhow::Result<RelayProc> {
        let url = self.host.rtmp_url("live", &self.stream);
        let mut args = vec!["-hide_banner", "-loglevel", "warning", "-re"];
        for input in lavfi {
            args.extend(["-f", "lavfi", "-i", input]);
        }
        args.extend(X264_ULTRAFAST);
        args.extend(encode);
        args.extend(["-f", "flv", &url]);
        RelayProc::spawn("ffmpeg", args, &[], label)
    }

    /// `relay status --json` of this instance, parsed.
    pub async fn status(&self) -> anyhow::Result<serde_json::Value> {
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
    pub fn lines_since(&self, mark: usize, needle: &str) -> Vec<String> {
        self.relay()
            .logs()
            .into_iter()
            .skip(mark)
            .filter(|l| l.contains(needle))
            .collect()
    }

    /// Relay's recent log, for failure messages.
    pub fn context(&self) -> String {
        let logs = self.relay.as_ref().map(RelayProc::logs).unwrap_or_default();
        let recent = &logs[logs.len().saturating_sub(30)..];
        format!("relay's last lines:\n{}", recent.join("\n"))
    }

    /// Relay still runs, then stops cleanly on SIGTERM.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        self.stop_relay().await
    }

    pub async fn stop_relay(&mut self) -> anyhow::Result<()> {
        let context = self.context();
        let relay = self.relay.as_mut().expect("relay started");
        ensure!(relay.is_running(), "relay exited\n{context}");
        let status = relay.sigterm_and_wait(secs(20)).await?;
        ensure!(status.success(), "relay exited with {status}\n{context}");
        Ok(())
    }
}

/// The platform stand-in: an nginx with app `out` on `port`.
pub async fn start_dest(port: u16) -> anyhow::Result<PrivateNginx> {
    PrivateNginx::start(NginxOptions {
        rtmp_port: Some(port),
        ..NginxOptions::default()
    })
    .await
}

/// A destination whose `out` application refuses every publisher.
pub async fn start_denying_dest(port: u16) -> anyhow::Result<PrivateNginx> {
    PrivateNginx::start(NginxOptions {
        rtmp_port: Some(port),
        deny_publish_out: true,
        ..NginxOptions::default()
    })
    .await
}

/// Waits until the sink shows `colour` after `since`, then holds it for 2 s.
pub async fn expect_on_air(
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

/// The one FFmpeg among relay's children with `needle` in its arguments
/// (`what` names it in the error).
pub fn relay_ffmpeg(f: &Faults, needle: &str, what: &str) -> anyhow::Result<u32> {
    let found = ffmpeg_children_with(f.relay().pid(), needle);
    match found[..] {
        [pid] => Ok(pid),
        _ => anyhow::bail!("expected one {what} ffmpeg, found {found:?}"),
    }
}

/// The output FFmpeg among relay's children: the one with the switch graph.
pub fn output_ffmpeg(f: &Faults) -> anyhow::Result<u32> {
    relay_ffmpeg(f, "streamselect", "output")
}

/// The lavfi colour name of a publisher's `colour`.
pub fn colour_name(colour: Colour) -> &'static str {
    match colour {
        Colour::Red => "red",
        Colour::Green => "green",
        Colour::Blue => "blue",
        Colour::Black => "black",
        Colour::Other => panic!("no lavfi colour for Colour::Other"),
    }
}

/// Waits until the sink has shown `colour` for 2 s in a row, within
/// `timeout`: for setting a test up. On a busy machine relay may briefly
/// fail over to the offline video before the fault is even injected (a
/// live frame late by more than the gap), which says nothing about the
/// fault under test.
pub async fn settle_on(
    f: &Faults,
    sink: &Sink,
    colour: Colour,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        sink.wait_for_since(colour, Instant::now(), left)
            .await
            .with_context(|| f.context())?;
        match sink.expect_steady(colour, secs(2)).await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() < deadline => eprintln!("[test] not settled yet: {e:#}"),
            Err(e) => return Err(e.context(f.context())),
        }
    }
}
