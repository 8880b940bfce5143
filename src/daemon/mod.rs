//! The daemon: the I/O shell around the switching policy.
//!
//! What is on air is decided in `policy/`, which is pure; this module runs
//! everything around it. One task runs the event loop below; around it run
//! the pump (the clock, see `pipeline/pump.rs`), the output supervisor, the offline
//! source, the stat poller and one task per ingest. They talk to the event
//! loop through channels; the loop hands each thing that happened to the
//! policy as an [`Event`] and carries out the [`Action`]s that come back:
//! switching the output over ZMQ, starting and stopping ingests, timers,
//! restarting the output. It also answers `relay status`, serves metrics
//! and keeps systemd informed (READY, WATCHDOG, STATUS).

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use crate::config::Config;
use crate::ffmpeg::preflight::OfflineInfo;
use crate::ffmpeg::supervisor::{self, Children};
use crate::ffmpeg::zmq::{Input, Switch};
use crate::nginx::publish_auth::{Approvals, Vouch};
use crate::nginx::stat_page::{StatPage, StatsClient};
use crate::observe::api::{self, Call, LastSwitch, Reply, Request, StateName};
use crate::observe::metrics;
use crate::observe::notify;
use crate::pipeline::fanout::FanOut;
use crate::pipeline::frames::{self, FramePool};
use crate::pipeline::ingest::{self, Expect};
use crate::pipeline::offline_cache::OfflineCache;
use crate::pipeline::output::{self, OutputEvent};
use crate::pipeline::pipe_frames::{PipePool, Stores};
use crate::pipeline::pump::{self, Event as PumpEvent};
use crate::pipeline::pusher::{self, PusherEvent};
use crate::pipeline::raw_format::RawFormat;
use crate::policy::{self, Action, Event, Policy, StatSummary, Switched, Timer};

pub mod instance;
mod shell;
mod status;

use shell::Daemon;
pub use status::show_duration;

/// An output that has made no progress for this long is restarted.
const OUTPUT_STALL: Duration = output::STALL;
/// How often the status line and the watchdog are refreshed.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// How the daemon runs, beyond the configuration.
#[derive(Debug, Clone)]
pub struct Options {
    pub ffmpeg: PathBuf,
    /// Where to listen for `relay status` / `relay switch`; `None`: nowhere.
    pub control_socket: Option<PathBuf>,
    /// A reloaded configuration that differs only in keys the daemon
    /// applies at once ([`crate::config::classify`]).
    pub reconfigure: Option<watch::Receiver<Arc<Config>>>,
    /// Where to keep the private copy of the offline video the offline
    /// source reads (`pipeline/offline_copy.rs`); `None`: it reads the file in place.
    pub offline_copy_dir: Option<PathBuf>,
    /// A reload that brings a new offline video (`OFFLINE_VIDEO_PATH` or
    /// its file) and otherwise only what applies at once: the offline
    /// source restarts on the file `reconfigure` now names; the output
    /// keeps running.
    pub new_offline: Option<watch::Receiver<OfflineInfo>>,
    /// The reloads this process handled, for `relay status`.
    pub reloads: Option<watch::Receiver<Reloads>>,
    /// The offline video normalised once, kept across pipeline restarts
    /// (`pipeline/offline_cache.rs`); `None`: the offline source normalises
    /// it on every loop.
    pub offline_cache: Option<Arc<OfflineCache>>,
}

/// How many reloads, and the last one: when, its outcome, why if rejected.
pub type Reloads = (u64, Option<(Instant, &'static str, String)>);

impl Default for Options {
    fn default() -> Options {
        Options {
            ffmpeg: PathBuf::from("ffmpeg"),
            control_socket: None,
            reconfigure: None,
            offline_copy_dir: None,
            new_offline: None,
            reloads: None,
            offline_cache: None,
        }
    }
}

/// What an ingest's supervisor reports when it ends.
type IngestExit = supervisor::Ended;

struct IngestHandle {
    source: policy::SourceKind,
    session: u64,
    child: supervisor::Once,
    /// Bytes of its feed so far, where relay counts them (SRT).
    received: Option<Arc<AtomicU64>>,
}

/// Runs relay until `shutdown` resolves. Returns once every child is gone.
pub async fn run(
    config: Config,
    offline: OfflineInfo,
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let format = RawFormat::of(&config);
    let stats_client = StatsClient::new(
        &config.live.stats_url,
        config.live.poll_interval.max(Duration::from_secs(1)),
    )?;
    info!(
        instance = %config.instance,
        destination = %config.output_url_masked(),
        live = %config.live_url(),
        offline = %config.offline_video_path.display(),
        format = %format!("{}x{}@{}", format.width, format.height, format.fps),
        allowed_publishers = %config.live.allowed_publishers,
        live_sources = %config.live.sources.iter().map(|s| s.name()).collect::<Vec<_>>().join(","),
        srt = %srt_listen(&config),
        "relay starting"
    );
    // Reloaded settings that apply at once; without a reloader, a channel
    // that never changes (its sender lives until we return).
    let (_no_reload, updates) = match options.reconfigure.clone() {
        Some(rx) => (None, rx),
        None => {
            let (tx, rx) = watch::channel(config.clone());
            (Some(tx), rx)
        }
    };
    // Answers nginx's on_publish while this pipeline runs.
    let mut publish_auth = crate::nginx::publish_auth::start(&config, updates.clone()).await?;
    let publish_done = publish_auth
        .as_mut()
        .and_then(crate::nginx::publish_auth::Endpoint::publish_done);
    // With a key, only publishers the endpoint accepted go on air.
    let approvals = publish_auth
        .as_ref()
        .filter(|_| !config.live.publish_key.is_empty())
        .map(crate::nginx::publish_auth::Endpoint::approvals);
    let (selection_tx, selection_rx) = watch::channel(Input::Offline);
    let pump_stats = Arc::new(pump::Stats::default());

    let (pump_tx, pump_rx) = mpsc::channel(8);
    let (pump_ev_tx, pump_ev_rx) = mpsc::channel(32);
    let frames = FramePool::new(format.frame_bytes(), frames::KEEP, frames::CAP);
    // Live and offline frames each have their stores of pipes; the output's
    // video writers their cursors (none of them when pipes cannot be had).
    let stores = Stores::new(format.frame_bytes());
    let pipes = stores.live.clone();
    // The pump feeds the output until it is gone, so it stops last;
    // operator endpoints stop first. Children stop in between.
    let endpoints = Stage::new();
    let feeding = Stage::new();
    feeding.spawn(
        pump::run(
            format,
            pump::Timing {
                gap: config.policy.offline_after,
                ..pump::Timing::default()
            },
            pump_rx,
            selection_rx.clone(),
            pump_ev_tx,
            pump_stats.clone(),
            frames.clone(),
        )
        .instrument(tracing::info_span!("pump")),
    );

    // Without a reloader, a channel that never changes.
    let (_same_offline, new_offline) = match options.new_offline.clone() {
        Some(rx) => (None, rx),
        None => {
            let (tx, rx) = watch::channel(offline.clone());
            (Some(tx), rx)
        }
    };
    // Every child and task below stops with `children`.
    let children = Children::new(updates.clone());
    let (out_ev_tx, out_ev_rx) = mpsc::channel(32);
    crate::pipeline::offline_supervisor::supervise(
        &children,
        crate::pipeline::offline_supervisor::Supervision {
            config: config.clone(),
            info: offline.clone(),
            ffmpeg: options.ffmpeg.clone(),
            copy_dir: options.offline_copy_dir.clone(),
            cache: options.offline_cache.clone(),
            pump: pump_tx.clone(),
            pipes: stores.offline.clone(),
            frames: FramePool::new(format.frame_bytes(), frames::KEEP, frames::CAP),
            updates: updates.clone(),
            new_offline,
        },
    );
    let fanout = FanOut::new();
    let restart_output = output::supervise(
        &children,
        output::Supervision {
            config: config.clone(),
            ffmpeg: options.ffmpeg.clone(),
            pump: pump_tx.clone(),
            events: out_ev_tx,
            selection: selection_rx,
            cursors: stores.cursors.clone(),
            fanout: fanout.clone(),
        },
    );
    // One pusher per destination, each on its own (ARCHITECTURE.md, "One
    // encode, many destinations").
    let (pusher_ev_tx, pusher_ev_rx) = mpsc::channel(64);
    let destinations: Vec<DestinationState> = config
        .destinations
        .iter()
        .map(|named| {
            info!(destination = %named.name, url = %named.destination.masked(), "destination");
            DestinationState::new(pusher::supervise(
                &children,
                config.clone(),
                named.clone(),
                options.ffmpeg.clone(),
                fanout.clone(),
                pusher_ev_tx.clone(),
            ))
        })
        .collect();

    let poll_now = Arc::new(Notify::new());
    let (stat_tx, stat_rx) = mpsc::channel(4);
    children.spawn(poll_stats(
        stats_client,
        config.live.poll_interval,
        poll_now.clone(),
        stat_tx,
        updates.clone(),
        children.token(),
    ));

    let (api_tx, api_rx) = mpsc::channel(4);
    if let Some(path) = &options.control_socket {
        match api::ControlSocket::bind(path).await {
            Ok(socket) => {
                info!(socket = %path.display(), "control socket listening");
                endpoints.spawn(socket.serve(api_tx));
            }
            // Operator commands are a convenience; the stream matters more.
            Err(err) => {
                warn!(socket = %path.display(), %err, "no control socket: relay status/switch will not reach this instance");
            }
        }
    }

    let (metrics_tx, metrics_rx) = watch::channel(metrics::Snapshot {
        instance: config.instance.clone(),
        state: StateName::Offline,
        switches: Vec::new(),
        output_restarts: 0,
        ingest_restarts: 0,
        publisher_connected: false,
        live_bitrate_bps: None,
        live_source: None,
        live_sources: Vec::new(),
        output_uptime_s: None,
        output_fps: None,
        output_speed: None,
        destinations: Vec::new(),
    });
    if let Some(addr) = config.endpoints.metrics_addr {
        match metrics::serve(addr, metrics_rx, pump_stats.clone()).await {
            Ok(serving) => {
                info!("metrics at http://{addr}/metrics");
                endpoints.spawn(serving);
            }
            // Like the control socket: the stream matters more.
            Err(err) => warn!(%addr, %err, "cannot serve metrics (METRICS_ADDR)"),
        }
    }

    let (ingest_ev_tx, ingest_ev_rx) = mpsc::channel(8);
    // The policy's one destination is the encoder: whether it streams, so
    // that a (re)started one gets the selection asserted.
    let mut policy = Policy::with_sources(
        settings(&config),
        std::time::Instant::now(),
        &[DESTINATION],
        &config.live.sources,
    );
    let first = policy.start();
    let mut daemon = Daemon {
        config: config.clone(),
        options,
        policy,
        timers: BTreeMap::new(),
        switch: Switch::new(config.endpoints.zmq_port),
        selection: selection_tx,
        restart_output,
        pump: pump_tx,
        pump_stats,
        frames,
        pipes,
        poll_now,
        ingests: Vec::new(),
        srt_closing: None,
        srt_waiting: None,
        children: children.clone(),
        ingest_events: ingest_ev_tx,
        metrics: metrics_tx,
        approvals,
        stats_ok: true,
        switch_failures: 0,
        output: OutputState::default(),
        destinations,
        fanout,
        pusher_events: pusher_ev_tx,
        ready_sent: false,
        last_status: String::new(),
    };
    daemon.carry_out(first).await;

    let result = daemon
        .event_loop(
            shutdown,
            pump_ev_rx,
            out_ev_rx,
            stat_rx,
            ingest_ev_rx,
            api_rx,
            publish_done,
            updates,
            pusher_ev_rx,
        )
        .await;
    // Stopping the socket's server removes the socket file.
    endpoints.stop().await;

    // Orderly stop: ingest and output get SIGTERM, then SIGKILL after
    // KILL_GRACE; everything is reaped before we return.
    notify::stopping();
    info!("stopping");
    daemon.stop_all_ingests();
    children.shutdown().await;
    drop(daemon);
    feeding.stop().await;
    info!("stopped");
    result
}

/// Long-running tasks that stop together, by the same mechanism as the
/// children (a `CancellationToken` and a `TaskTracker`): each runs until
/// its work ends or the stage stops, and `stop` returns once all are gone.
struct Stage {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Stage {
    fn new() -> Stage {
        Stage {
            token: CancellationToken::new(),
            tracker: TaskTracker::new(),
        }
    }

    fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        let token = self.token.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = work => {}
                () = token.cancelled() => {}
            }
        });
    }

    async fn stop(&self) {
        self.token.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// The output FFmpeg, as the policy knows it: it feeds every destination.
const DESTINATION: &str = "kick";

/// The policy's settings, from the configuration.
/// Where the SRT listener listens, for the start-up line; "off" without
/// `srt` in LIVE_SOURCES.
fn srt_listen(config: &Config) -> String {
    if !config
        .live
        .sources
        .contains(&crate::config::LiveSource::Srt)
    {
        return "off".to_string();
    }
    let host = match config.srt.host.as_str() {
        "" => "*",
        h => h,
    };
    format!(
        "udp {host}:{} latency {} ms{}",
        config.srt.port,
        config.srt.latency.as_millis(),
        if config.srt.passphrase.is_empty() {
            ", unencrypted"
        } else {
            ", encrypted"
        }
    )
}

fn settings(config: &Config) -> policy::Settings {
    policy::Settings {
        offline_after: config.policy.offline_after,
        live_stable: config.policy.live_stable,
        low_bitrate: config.policy.low_bitrate,
        allowed_publishers: config.live.allowed_publishers.clone(),
        crash_backoff: config.supervision.crash_backoff,
        publish_auth_url: format!(
            "http://127.0.0.1:{}{}",
            config.endpoints.publish_auth_port,
            crate::nginx::publish_auth::PATH
        ),
    }
}

/// What the output FFmpeg is doing, as its supervisor reported it.
#[derive(Debug, Default)]
struct OutputState {
    pid: Option<u32>,
    since: Option<Instant>,
    /// When the frame count last advanced, and to what.
    last_progress: Option<(Instant, u64)>,
    /// fps and speed from the last progress report.
    rates: Option<(f64, f64)>,
    restarts: u64,
    in_backoff: bool,
    /// Why the last output stopped.
    last_exit: Option<LastExit>,
}

/// One destination's pusher, as its supervisor reported it.
struct DestinationState {
    handle: pusher::Handle,
    pid: Option<u32>,
    since: Option<Instant>,
    /// When its frame count last advanced: it is up.
    last_progress: Option<(Instant, u64)>,
    reconnects: u64,
    last_error: Option<String>,
    /// Bytes sent at the last housekeeping, and the rate since.
    sampled: (Instant, u64),
    bitrate_bps: Option<u64>,
}

impl DestinationState {
    fn new(handle: pusher::Handle) -> DestinationState {
        DestinationState {
            handle,
            pid: None,
            since: None,
            last_progress: None,
            reconnects: 0,
            last_error: None,
            sampled: (Instant::now(), 0),
            bitrate_bps: None,
        }
    }

    fn name(&self) -> &str {
        &self.handle.named.name
    }

    /// Connected and sending.
    fn up(&self) -> bool {
        self.last_progress.is_some()
    }
}

/// Why the output last stopped, for `relay status`.
#[derive(Debug)]
struct LastExit {
    at: Instant,
    kind: &'static str,
    was_streaming: bool,
    detail: String,
}

/// Fetches the stat page every `interval`, or at once when asked.
async fn poll_stats(
    client: StatsClient,
    interval: Duration,
    now: Arc<Notify>,
    tx: mpsc::Sender<Result<StatPage, String>>,
    mut updates: watch::Receiver<Arc<Config>>,
    stop: CancellationToken,
) {
    let mut interval = interval;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = now.notified() => {}
            Ok(()) = updates.changed() => {
                let new = updates.borrow_and_update().live.poll_interval;
                if new != interval {
                    interval = new;
                    ticker = tokio::time::interval(interval);
                    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                }
                continue;
            }
            _ = stop.cancelled() => return,
        }
        let page = client.fetch().await.map_err(|e| e.to_string());
        if tx.send(page).await.is_err() {
            return;
        }
    }
}

/// A platform that refuses a stream key closes the connection as soon as
/// the output publishes; FFmpeg then only reports a broken pipe. Says what
/// that usually means when it happens within seconds of the start.
fn refusal_hint(reason: &str, uptime: Duration, name: &str) -> String {
    let closed = ["Broken pipe", "Connection reset by peer", "End of file"]
        .iter()
        .any(|sign| reason.contains(sign));
    if closed && uptime < Duration::from_secs(10) {
        let [url, _] = crate::config::destination_keys(name);
        format!(
            " (the destination closed the connection right after it opened: \
             check {url} and the stream key)"
        )
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quick_close_hints_at_the_stream_key() {
        let closed =
            "ffmpeg exited (exit status: 1) [error] av_interleaved_write_frame(): Broken pipe";
        let hint = refusal_hint(closed, Duration::from_secs(1), "kick");
        assert!(hint.contains("check KICK_URL and the stream key"), "{hint}");
        let hint = refusal_hint(closed, Duration::from_secs(1), "youtube");
        assert!(hint.contains("check YOUTUBE_URL"), "{hint}");
        // A long broadcast that ends is a forced disconnect, not a refusal.
        assert_eq!(refusal_hint(closed, Duration::from_secs(3600), "kick"), "");
        assert_eq!(
            refusal_hint("ffmpeg exited (signal: 9)", Duration::ZERO, "kick"),
            ""
        );
    }
}
