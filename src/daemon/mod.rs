//! The daemon: the I/O shell around the switching policy.
//!
//! What is on air is decided in `policy/`, which is pure; this module runs
//! everything around it. One task runs the event loop below; around it run
//! the pump (the clock, see `pump.rs`), the output supervisor, the offline
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
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, Instant};
use tracing::{info, warn, Instrument};

use crate::api::{self, Call, LastSwitch, Reply, Request, StateName};
use crate::config::Config;
use crate::control::{Input, Switch};
use crate::ffmpeg::RawFormat;
use crate::frames::{self, FramePool};
use crate::ingest::{self, Expect};
use crate::metrics;
use crate::notify;
use crate::output::{self, Progress};
use crate::pipeframes::PipePool;
use crate::policy::{self, Action, Event, Policy, StatSummary, Switched, Timer};
use crate::preflight::OfflineInfo;
use crate::publish_auth::{Approvals, Vouch};
use crate::pump::{self, Event as PumpEvent};
use crate::stats::{StatPage, StatsClient};

mod shell;
mod status;

use shell::Daemon;
pub use status::show_duration;

/// An output that has made no progress for this long is restarted.
const OUTPUT_STALL: Duration = Duration::from_secs(15);
/// A child that ran this long without trouble resets its crash backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// The crash backoff doubles up to CRASH_BACKOFF times this.
const BACKOFF_CAP_FACTOR: u32 = 16;
/// How often the status line and the watchdog are refreshed.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// How the daemon runs, beyond the configuration.
#[derive(Debug, Clone)]
pub struct Options {
    pub ffmpeg: PathBuf,
    pub timing: pump::Timing,
    /// Where to listen for `relay status` / `relay switch`; `None`: nowhere.
    pub control_socket: Option<PathBuf>,
    /// A reloaded configuration that differs only in keys the daemon
    /// applies at once ([`crate::config::classify`]).
    pub reconfigure: Option<watch::Receiver<Arc<Config>>>,
    /// Where to keep the private copy of the offline video the offline
    /// source reads (`offline.rs`); `None`: it reads the file in place.
    pub offline_copy_dir: Option<PathBuf>,
    /// A reload that brings a new offline video (`OFFLINE_VIDEO_PATH` or
    /// its file) and otherwise only what applies at once: the offline
    /// source restarts on the file `reconfigure` now names; the output
    /// keeps running.
    pub new_offline: Option<watch::Receiver<OfflineInfo>>,
    /// The reloads this process handled, for `relay status`.
    pub reloads: Option<watch::Receiver<Reloads>>,
}

/// How many reloads, and the last one: when, its outcome, why if rejected.
pub type Reloads = (u64, Option<(Instant, &'static str, String)>);

impl Default for Options {
    fn default() -> Options {
        Options {
            ffmpeg: PathBuf::from("ffmpeg"),
            timing: pump::Timing::default(),
            control_socket: None,
            reconfigure: None,
            offline_copy_dir: None,
            new_offline: None,
            reloads: None,
        }
    }
}

/// What the output supervisor reports.
#[derive(Debug)]
enum OutputEvent {
    Started {
        pid: u32,
    },
    Progress(Progress),
    Exited {
        reason: String,
        uptime: Duration,
        /// The backoff before the next start.
        retry_in: Duration,
    },
}

/// What an ingest task reports.
#[derive(Debug)]
struct IngestExit {
    session: u64,
    reason: String,
    requested: bool,
}

struct IngestHandle {
    session: u64,
    pid: u32,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// A crash backoff: doubles on each failure, resets after a healthy run.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    current: Duration,
}

impl Backoff {
    pub(crate) fn new(base: Duration) -> Backoff {
        Backoff {
            base,
            current: base,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.current = self.base;
    }

    /// The delay before the next start, given how long the last run lasted.
    pub(crate) fn next(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= HEALTHY_RUN {
            self.current = self.base;
        }
        let delay = self.current;
        self.current = (self.current * 2).min(self.base * BACKOFF_CAP_FACTOR);
        delay
    }
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
        "relay starting"
    );
    let (stop_tx, stop_rx) = watch::channel(false);
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
    let publish_auth = crate::publish_auth::start(&config, updates.clone()).await?;
    // With a key, only publishers the endpoint accepted go on air.
    let approvals = publish_auth
        .as_ref()
        .filter(|_| !config.live.publish_key.is_empty())
        .map(crate::publish_auth::Endpoint::approvals);
    let (selection_tx, selection_rx) = watch::channel(Input::Offline);
    let pump_stats = Arc::new(pump::Stats::default());

    let (pump_tx, pump_rx) = mpsc::channel(8);
    let (pump_ev_tx, pump_ev_rx) = mpsc::channel(32);
    let frames = FramePool::new(format.frame_bytes(), frames::KEEP, frames::CAP);
    let pipes = match PipePool::new(format.frame_bytes()) {
        Ok(pool) => Some(pool),
        Err(err) if err.kind() == std::io::ErrorKind::Unsupported => {
            info!(%err, "live frames go through memory at this size");
            None
        }
        Err(err) => {
            warn!(
                %err,
                "live frames go through memory, which costs more CPU: no pipes of 1 MB \
                 to hold them (the user's pipe memory may be at the kernel's limit, \
                 fs.pipe-user-pages-soft)"
            );
            None
        }
    };
    let pump_task = tokio::spawn(
        pump::run(
            format,
            pump::Timing {
                gap: config.policy.offline_after,
                ..options.timing
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
    let (out_ev_tx, out_ev_rx) = mpsc::channel(32);
    let (restart_tx, restart_rx) = mpsc::channel(1);
    let offline_task = tokio::spawn(
        crate::offline_source::supervise(
            crate::offline_source::Supervision {
                config: config.clone(),
                info: offline.clone(),
                ffmpeg: options.ffmpeg.clone(),
                copy_dir: options.offline_copy_dir.clone(),
                pump: pump_tx.clone(),
                updates: updates.clone(),
                new_offline,
            },
            stop_rx.clone(),
        )
        .instrument(tracing::info_span!("offline")),
    );
    let output_task = tokio::spawn(
        supervise_output(
            config.clone(),
            options.ffmpeg.clone(),
            pump_tx.clone(),
            out_ev_tx,
            selection_rx,
            restart_rx,
            updates.clone(),
            stop_rx.clone(),
        )
        .instrument(tracing::info_span!("output")),
    );

    let poll_now = Arc::new(Notify::new());
    let (stat_tx, stat_rx) = mpsc::channel(4);
    let poller_task = tokio::spawn(poll_stats(
        stats_client,
        config.live.poll_interval,
        poll_now.clone(),
        stat_tx,
        updates.clone(),
        stop_rx.clone(),
    ));

    let (api_tx, api_rx) = mpsc::channel(4);
    let api_task = match &options.control_socket {
        Some(path) => match api::ControlSocket::bind(path).await {
            Ok(socket) => {
                info!(socket = %path.display(), "control socket listening");
                Some(tokio::spawn(socket.serve(api_tx)))
            }
            // Operator commands are a convenience; the stream matters more.
            Err(err) => {
                warn!(socket = %path.display(), %err, "no control socket: relay status/switch will not reach this instance");
                None
            }
        },
        None => None,
    };

    let (metrics_tx, metrics_rx) = watch::channel(metrics::Snapshot {
        instance: config.instance.clone(),
        state: StateName::Offline,
        switches: Vec::new(),
        output_restarts: 0,
        ingest_restarts: 0,
        publisher_connected: false,
        live_bitrate_bps: None,
        output_uptime_s: None,
        output_fps: None,
        output_speed: None,
    });
    let metrics_task = match config.endpoints.metrics_addr {
        Some(addr) => match metrics::serve(addr, metrics_rx, pump_stats.clone()).await {
            Ok(task) => {
                info!("metrics at http://{addr}/metrics");
                Some(task)
            }
            // Like the control socket: the stream matters more.
            Err(err) => {
                warn!(%addr, %err, "cannot serve metrics (METRICS_ADDR)");
                None
            }
        },
        None => None,
    };

    let (ingest_ev_tx, ingest_ev_rx) = mpsc::channel(8);
    let destinations = [DESTINATION];
    let mut policy = Policy::new(settings(&config), std::time::Instant::now(), &destinations);
    let first = policy.start();
    let mut daemon = Daemon {
        config: config.clone(),
        options,
        policy,
        timers: BTreeMap::new(),
        switch: Switch::new(config.endpoints.zmq_port),
        selection: selection_tx,
        restart_output: restart_tx,
        pump: pump_tx,
        pump_stats,
        frames,
        pipes,
        poll_now,
        ingest: None,
        stopping: Vec::new(),
        ingest_events: ingest_ev_tx,
        metrics: metrics_tx,
        approvals,
        stats_ok: true,
        output: OutputState::default(),
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
            updates,
        )
        .await;
    // Dropping the socket task removes the socket file.
    if let Some(task) = api_task {
        task.abort();
        let _ = task.await;
    }
    if let Some(task) = metrics_task {
        task.abort();
        let _ = task.await;
    }

    // Orderly stop: ingest and output get SIGTERM, then SIGKILL after
    // KILL_GRACE; everything is reaped before we return.
    notify::stopping();
    info!("stopping");
    let _ = stop_tx.send(true);
    daemon.stop_current_ingest();
    let (_, _, _) = tokio::join!(daemon.reap_ingests(), output_task, offline_task);
    poller_task.abort();
    drop(daemon);
    pump_task.abort();
    info!("stopped");
    result
}

/// The destination the output FFmpeg sends to (KICK_URL).
const DESTINATION: &str = "kick";

/// The policy's settings, from the configuration.
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
            crate::publish_auth::PATH
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
}

/// Keeps the output FFmpeg running: restart with backoff on exit or stall,
/// each start on the current selection; SIGTERM/SIGKILL on shutdown.
#[allow(clippy::too_many_arguments)]
async fn supervise_output(
    config: Arc<Config>,
    ffmpeg: PathBuf,
    pump: mpsc::Sender<pump::Command>,
    events: mpsc::Sender<OutputEvent>,
    selection: watch::Receiver<Input>,
    mut restart: mpsc::Receiver<()>,
    updates: watch::Receiver<Arc<Config>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(config.supervision.crash_backoff);
    loop {
        // KILL_GRACE and CRASH_BACKOFF may change on reload; nothing else
        // the output uses can without restarting the pipeline.
        let crash_backoff = updates.borrow().supervision.crash_backoff;
        if backoff.base != crash_backoff {
            backoff = Backoff::new(crash_backoff);
        }
        let select = *selection.borrow();
        let started_at = Instant::now();
        let reason = match output::spawn(&config, select, &ffmpeg) {
            Err(err) => format!("could not start ffmpeg: {err}"),
            Ok(started) => {
                let output::Started {
                    mut child,
                    pipes,
                    mut progress,
                } = started;
                let _ = pump.send(pump::Command::Attach(pipes)).await;
                let _ = events.send(OutputEvent::Started { pid: child.pid }).await;
                info!(pid = child.pid, on_air = select.name(), "output started");
                let mut last_advance = Instant::now();
                let mut last_frame = 0;
                enum Why {
                    Exited(String),
                    Stalled,
                    Requested,
                    Shutdown,
                }
                let why = loop {
                    tokio::select! {
                        status = child.wait() => break Why::Exited(
                            status.map_or_else(|e| e.to_string(), |s| s.to_string())),
                        Some(p) = progress.recv() => {
                            if p.frame > last_frame {
                                last_frame = p.frame;
                                last_advance = Instant::now();
                            }
                            let _ = events.send(OutputEvent::Progress(p)).await;
                        }
                        _ = sleep_until(last_advance + OUTPUT_STALL) => break Why::Stalled,
                        Some(()) = restart.recv() => break Why::Requested,
                        _ = stop.changed() => break Why::Shutdown,
                    }
                };
                let kill_grace = updates.borrow().supervision.kill_grace;
                match why {
                    Why::Shutdown => {
                        child.stop(kill_grace).await;
                        return;
                    }
                    Why::Exited(status) => {
                        let last = child.last_lines();
                        format!("ffmpeg exited ({status}) {last}")
                            .trim()
                            .to_string()
                    }
                    Why::Stalled => {
                        child.stop(kill_grace).await;
                        format!("no progress for {} s", OUTPUT_STALL.as_secs())
                    }
                    Why::Requested => {
                        child.stop(kill_grace).await;
                        "restart requested".to_string()
                    }
                }
            }
        };
        let uptime = started_at.elapsed();
        let delay = backoff.next(uptime);
        let _ = events
            .send(OutputEvent::Exited {
                reason,
                uptime,
                retry_in: delay,
            })
            .await;
        tokio::select! {
            _ = sleep(delay) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Fetches the stat page every `interval`, or at once when asked.
async fn poll_stats(
    client: StatsClient,
    interval: Duration,
    now: Arc<Notify>,
    tx: mpsc::Sender<Result<StatPage, String>>,
    mut updates: watch::Receiver<Arc<Config>>,
    mut stop: watch::Receiver<bool>,
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
            _ = stop.changed() => return,
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
fn refusal_hint(reason: &str, uptime: Duration) -> &'static str {
    let closed = ["Broken pipe", "Connection reset by peer", "End of file"]
        .iter()
        .any(|sign| reason.contains(sign));
    if closed && uptime < Duration::from_secs(10) {
        " (the destination closed the connection right after it opened: \
         check KICK_URL and the stream key)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quick_close_hints_at_the_stream_key() {
        let closed =
            "ffmpeg exited (exit status: 1) [error] av_interleaved_write_frame(): Broken pipe";
        assert!(refusal_hint(closed, Duration::from_secs(1)).contains("stream key"));
        // A long broadcast that ends is a forced disconnect, not a refusal.
        assert_eq!(refusal_hint(closed, Duration::from_secs(3600)), "");
        assert_eq!(
            refusal_hint("ffmpeg exited (signal: 9)", Duration::ZERO),
            ""
        );
    }

    #[test]
    fn backoff_doubles_to_a_cap_and_resets_after_a_healthy_run() {
        let mut b = Backoff::new(Duration::from_secs(2));
        let short = Duration::from_secs(1);
        assert_eq!(b.next(short), Duration::from_secs(2));
        assert_eq!(b.next(short), Duration::from_secs(4));
        for _ in 0..10 {
            b.next(short);
        }
        assert_eq!(b.next(short), Duration::from_secs(32));
        assert_eq!(b.next(HEALTHY_RUN), Duration::from_secs(2));
        b.next(short);
        b.next(short);
        b.reset();
        assert_eq!(b.next(short), Duration::from_secs(2));
    }
}
