//! The daemon: decides what is on air and keeps the children running.
//!
//! One task runs the state machine below; around it run the pump (the
//! clock, see `pump.rs`), the output supervisor, the stat poller and one
//! task per ingest. They talk to the state machine through channels, and
//! every change of what is on air goes through [`Daemon::go_live`] or
//! [`Daemon::go_offline`], each with a log line saying why.
//!
//! Going live needs two things: the stat page shows a publisher that
//! ALLOWED_PUBLISHERS accepts, and its frames have flowed for the pump's
//! pre-roll. Going offline needs one: live frames stopped — the pump says so
//! within its gap (OFFLINE_AFTER_MS), whatever the stat page says.
//!
//! Two rules keep a bad street feed from flapping the output: frames that
//! come back within [`RETURN_WINDOW`] of a failover are held off air until
//! they have flowed for LIVE_STABLE_SECS, and with LOW_BITRATE_KBPS/SECS a
//! publisher whose average bitrate stays under the threshold is taken off
//! air and held until it recovers. The first go-live is never held.
//!
//! An operator can override this from the control socket (`api.rs`):
//! `relay switch offline` holds the offline video whatever publishes;
//! `relay switch live` holds the live feed, but only while its frames flow —
//! when they stop, relay fails over as always and the override ends, since a
//! frozen frame on air is worse than the offline video. `auto` hands the
//! decision back at once.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};

use crate::api::{self, Call, LastSwitch, Mode, Reply, Request, StateName};
use crate::config::Config;
use crate::control::{Input, Switch};
use crate::ffmpeg::RawFormat;
use crate::frames::{self, FramePool};
use crate::ingest::{self, Expect};
use crate::metrics;
use crate::notify;
use crate::output::{self, OutputEvent};
use crate::pipeframes::PipePool;
use crate::preflight::OfflineInfo;
use crate::publish_auth::{Approvals, Vouch};
use crate::pump::{self, Event as PumpEvent};
use crate::stats::{BitrateMeter, StatPage, StatsClient};
use crate::supervisor::{self, Backoff, Children};

/// An output that has made no progress for this long is restarted.
const OUTPUT_STALL: Duration = output::STALL;
/// A publisher whose stream gave no picture for this long gets a fresh
/// ingest: the running one may be stuck on what an earlier publisher sent
/// (a broken stream's codec configuration, timestamps hours ahead). Longer
/// than any sane keyframe interval.
const NO_PICTURE: Duration = Duration::from_secs(20);
/// How often the status line and the watchdog are refreshed.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// Live frames that come back within this long of a failover are a
/// returning publisher: they must flow for LIVE_STABLE_SECS before going
/// back on air. A flapping link reconnects within seconds (OBS retries
/// after a few); a publisher back after longer is a new start and goes on
/// air as fast as the first time.
pub const RETURN_WINDOW: Duration = Duration::from_secs(60);

/// How the daemon runs, beyond the configuration.
#[derive(Debug, Clone)]
pub struct Options {
    pub ffmpeg: PathBuf,
    pub timing: pump::Timing,
    /// Where to listen for `relay status` / `relay switch`; `None`: nowhere.
    pub control_socket: Option<PathBuf>,
    /// A reloaded configuration that differs only in keys the daemon
    /// applies at once ([`Config::only_tuning_differs`]).
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

/// What is on air, and why.
#[derive(Debug, Clone, PartialEq)]
enum State {
    /// The offline video is on air.
    Offline,
    /// A publisher's frames are on air.
    Live {
        session: u64,
        publisher: Option<IpAddr>,
        since: Instant,
    },
}

/// What an ingest's supervisor reports when it is gone.
type IngestExit = supervisor::Ended;

struct IngestHandle {
    session: u64,
    expect: Expect,
    started: Instant,
    child: supervisor::Once,
}

/// The publisher the stat page shows on our stream.
#[derive(Debug, Clone, PartialEq)]
struct Publisher {
    id: u64,
    address: Option<IpAddr>,
    allowed: bool,
    /// With PUBLISH_KEY set: nginx never asked relay's on_publish endpoint
    /// about it (so it is not allowed either).
    unchecked: bool,
    has_audio: Option<bool>,
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
        &config.stats_url,
        config.poll_interval.max(Duration::from_secs(1)),
    )?;
    info!(
        instance = %config.instance,
        destination = %config.output_url_masked(),
        live = %config.live_url(),
        offline = %config.offline_video_path.display(),
        format = %format!("{}x{}@{}", format.width, format.height, format.fps),
        allowed_publishers = %config.allowed_publishers,
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
    let publish_auth = crate::publish_auth::start(&config, updates.clone()).await?;
    // With a key, only publishers the endpoint accepted go on air.
    let approvals = publish_auth
        .as_ref()
        .filter(|_| !config.publish_key.is_empty())
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
                gap: config.offline_after,
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
    // Every child and task below stops with `children`.
    let children = Children::new(updates.clone());
    let (out_ev_tx, out_ev_rx) = mpsc::channel(32);
    crate::offline_source::supervise(
        &children,
        crate::offline_source::Supervision {
            config: config.clone(),
            info: offline.clone(),
            ffmpeg: options.ffmpeg.clone(),
            copy_dir: options.offline_copy_dir.clone(),
            pump: pump_tx.clone(),
            updates: updates.clone(),
            new_offline,
        },
    );
    let restart_output = output::supervise(
        &children,
        config.clone(),
        options.ffmpeg.clone(),
        pump_tx.clone(),
        out_ev_tx,
        selection_rx,
    );

    let poll_now = Arc::new(Notify::new());
    let (stat_tx, stat_rx) = mpsc::channel(4);
    children.spawn(poll_stats(
        stats_client,
        config.poll_interval,
        poll_now.clone(),
        stat_tx,
        updates.clone(),
        children.token(),
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
    let metrics_task = match config.metrics_addr {
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
    let mut daemon = Daemon {
        config: config.clone(),
        options,
        state: State::Offline,
        manual: None,
        last_switch: None,
        ingest_restarts: 0,
        switch: Switch::new(config.zmq_port),
        selection: selection_tx,
        restart_output,
        pump: pump_tx,
        pump_stats,
        frames,
        pipes,
        poll_now,
        ingest: None,
        children: children.clone(),
        ingest_events: ingest_ev_tx,
        next_session: 1,
        ingest_backoff: Backoff::new(config.crash_backoff),
        last_drop: None,
        flowing_since: None,
        hold_until: None,
        held: None,
        bitrate_window: VecDeque::new(),
        bitrate_publisher: None,
        low_bitrate: None,
        low_cleared_at: None,
        switches: BTreeMap::new(),
        metrics: metrics_tx,
        output_rates: None,
        ingest_retry_at: Some(Instant::now()),
        publisher_since: None,
        no_picture: None,
        approvals,
        publisher: None,
        refused: None,
        flowing: None,
        ready: None,
        bitrate: BitrateMeter::new(),
        live_bps: None,
        stats_ok: true,
        output_pid: None,
        output_since: None,
        output_restarts: 0,
        last_progress: None,
        ready_sent: false,
        last_status: String::new(),
        output_in_backoff: false,
    };

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
    daemon.stop_ingest();
    children.shutdown().await;
    drop(daemon);
    pump_task.abort();
    info!("stopped");
    result
}

struct Daemon {
    config: Arc<Config>,
    options: Options,
    state: State,
    /// The operator's override (`relay switch live|offline`); None: automatic.
    manual: Option<Input>,
    /// The last change of what is on air: when, to what, and why.
    last_switch: Option<(Instant, Input, String, &'static str)>,
    /// Ingests that exited on their own (not stopped by us).
    ingest_restarts: u64,
    switch: Switch,
    selection: watch::Sender<Input>,
    restart_output: supervisor::Restart,
    pump: mpsc::Sender<pump::Command>,
    pump_stats: Arc<pump::Stats>,
    /// Live frames' buffers, reused by every ingest of this pipeline.
    frames: FramePool,
    /// Pipes that hold live frames instead (`None`: frames go through
    /// `frames`).
    pipes: Option<PipePool>,
    poll_now: Arc<Notify>,
    ingest: Option<IngestHandle>,
    /// Every child's supervision; shutdown waits for ingests being stopped.
    children: Children,
    ingest_events: mpsc::Sender<IngestExit>,
    next_session: u64,
    ingest_backoff: Backoff,
    /// When live frames last stopped, or a low bitrate took live off air:
    /// frames back within RETURN_WINDOW of it must be stable first.
    last_drop: Option<Instant>,
    /// When the current run of live frames started.
    flowing_since: Option<Instant>,
    /// When to look again at a publisher held off air until stable.
    hold_until: Option<Instant>,
    /// Why flowing live frames are held off air (session, kind, reason).
    held: Option<(u64, &'static str, String)>,
    /// `bytes_in` samples of `bitrate_publisher` over LOW_BITRATE_SECS.
    bitrate_window: VecDeque<(Instant, u64)>,
    bitrate_publisher: Option<u64>,
    /// The average bitrate while it is below LOW_BITRATE_KBPS.
    low_bitrate: Option<u64>,
    /// When the bitrate last came back above LOW_BITRATE_KBPS.
    low_cleared_at: Option<Instant>,
    /// Changes of what is on air: (to, reason kind) → count.
    switches: BTreeMap<(&'static str, &'static str), u64>,
    metrics: watch::Sender<metrics::Snapshot>,
    /// fps and speed from the output's last progress report.
    output_rates: Option<(f64, f64)>,
    /// When to (re)start a standby ingest; None while one runs or none is wanted.
    ingest_retry_at: Option<Instant>,
    /// What nginx's on_publish endpoint accepted, with PUBLISH_KEY set.
    approvals: Option<Approvals>,
    /// The publisher on the last good stat page, and when it connected.
    publisher: Option<Publisher>,
    publisher_since: Option<Instant>,
    /// The publisher whose stream gave no picture (warned once).
    no_picture: Option<u64>,
    /// A publisher id we refused (logged once, no ingest while it stays).
    refused: Option<u64>,
    /// The ingest session whose frames are flowing, and whether it is ready.
    flowing: Option<u64>,
    ready: Option<u64>,
    bitrate: BitrateMeter,
    live_bps: Option<u64>,
    stats_ok: bool,
    output_pid: Option<u32>,
    output_since: Option<Instant>,
    output_restarts: u64,
    last_progress: Option<(Instant, u64)>,
    ready_sent: bool,
    last_status: String,
    output_in_backoff: bool,
}

impl Daemon {
    #[allow(clippy::too_many_arguments)]
    async fn event_loop(
        &mut self,
        shutdown: impl Future<Output = ()>,
        mut pump_events: mpsc::Receiver<PumpEvent>,
        mut output_events: mpsc::Receiver<OutputEvent>,
        mut stat_pages: mpsc::Receiver<Result<StatPage, String>>,
        mut ingest_events: mpsc::Receiver<IngestExit>,
        mut api_calls: mpsc::Receiver<Call>,
        mut updates: watch::Receiver<Arc<Config>>,
    ) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        loop {
            let retry_at = self.ingest_retry_at;
            let hold_until = self.hold_until;
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                Some(ev) = pump_events.recv() => self.on_pump(ev).await,
                Some(ev) = output_events.recv() => self.on_output(ev).await,
                Some(page) = stat_pages.recv() => self.on_stats(page).await,
                Some(ev) = ingest_events.recv() => self.on_ingest_exit(ev).await,
                Some((request, reply)) = api_calls.recv() => {
                    let answer = self.on_request(request).await;
                    let _ = reply.send(answer);
                }
                _ = sleep_until(retry_at.unwrap_or_else(far_future)), if retry_at.is_some() => {
                    self.ingest_retry_at = None;
                    self.start_ingest();
                }
                _ = sleep_until(hold_until.unwrap_or_else(far_future)), if hold_until.is_some() => {
                    self.hold_until = None;
                    self.maybe_go_live().await;
                }
                _ = housekeeping.tick() => self.housekeeping(),
                Ok(()) = updates.changed() => {
                    let new = updates.borrow_and_update().clone();
                    self.apply_tuning(new).await;
                }
            }
        }
    }

    /// A reload that changed only what applies at once
    /// ([`Config::only_tuning_differs`]): no child is restarted.
    async fn apply_tuning(&mut self, new: Arc<Config>) {
        let old = std::mem::replace(&mut self.config, new.clone());
        if old.offline_after != new.offline_after {
            let _ = self
                .pump
                .send(pump::Command::SetGap(new.offline_after))
                .await;
        }
        if old.crash_backoff != new.crash_backoff {
            self.ingest_backoff = Backoff::new(new.crash_backoff);
        }
        info!(
            offline_after_ms = new.offline_after.as_millis() as u64,
            live_stable_s = new.live_stable.as_secs_f64(),
            low_bitrate_kbps = new.low_bitrate.map(|l| l.bps / 1000),
            low_bitrate_s = new.low_bitrate.map(|l| l.window.as_secs_f64()),
            poll_interval_s = new.poll_interval.as_secs_f64(),
            allowed_publishers = %new.allowed_publishers,
            "reload: new settings applied at once; the output keeps running"
        );
        // Publishers are judged again on a fresh stat page: allowed ones
        // go on air, refused ones off.
        self.poll_now.notify_one();
    }

    async fn on_pump(&mut self, ev: PumpEvent) {
        match ev {
            PumpEvent::Flowing { session } => {
                if self.current_session() != Some(session) {
                    return;
                }
                self.flowing = Some(session);
                self.flowing_since = Some(Instant::now());
                info!(session, "live frames arriving");
                // Confirm the publisher now rather than at the next poll.
                self.poll_now.notify_one();
            }
            PumpEvent::Ready { session } => {
                if self.current_session() != Some(session) {
                    return;
                }
                self.ready = Some(session);
                self.maybe_go_live().await;
            }
            PumpEvent::Stopped {
                session,
                silent_for,
            } => {
                if self.current_session() != Some(session) {
                    return;
                }
                self.flowing = None;
                self.ready = None;
                self.flowing_since = None;
                self.hold_until = None;
                self.held = None;
                self.last_drop = Some(Instant::now());
                let mut reason = format!(
                    "no live frame for {} ms (OFFLINE_AFTER_MS {})",
                    silent_for.as_millis(),
                    self.config.offline_after.as_millis()
                );
                // Viewers must not watch a frozen frame, whatever the
                // operator asked: a manual live ends with its frames.
                if self.manual == Some(Input::Live) {
                    self.manual = None;
                    reason.push_str("; manual live override ended, back to auto");
                }
                if matches!(self.state, State::Live { .. }) {
                    self.go_offline(&reason, "frames_stopped").await;
                }
                // nginx keeps this player attached to the stream and would
                // hand it the next publisher with restarted timestamps:
                // replace it with a fresh one.
                self.stop_ingest();
                self.ingest_retry_at = Some(Instant::now());
            }
        }
    }

    async fn on_output(&mut self, ev: OutputEvent) {
        match ev {
            OutputEvent::Started { pid } => {
                self.output_pid = Some(pid);
                self.output_since = Some(Instant::now());
                self.last_progress = None;
                self.output_in_backoff = false;
            }
            OutputEvent::Progress(p) => {
                self.output_rates = Some((p.fps, p.speed));
                let advanced = self.last_progress.is_none_or(|(_, frame)| p.frame > frame);
                if advanced && p.frame > 0 {
                    let first = self.last_progress.is_none();
                    self.last_progress = Some((Instant::now(), p.frame));
                    if first {
                        self.on_output_streaming().await;
                    }
                }
            }
            OutputEvent::Exited {
                reason,
                uptime,
                retry_in,
            } => {
                // An output that streamed lost its connection (the platform
                // ended the broadcast, the network dropped): a reconnect.
                // One that never streamed is still trying to get through.
                let again = if self.last_progress.is_some() {
                    "reconnecting"
                } else {
                    "retrying"
                };
                self.output_pid = None;
                self.output_since = None;
                self.last_progress = None;
                self.output_rates = None;
                self.output_restarts += 1;
                self.output_in_backoff = true;
                warn!(
                    uptime_s = uptime.as_secs(),
                    restarts = self.output_restarts,
                    "output stopped: {reason}; {again} in {:.1} s{}",
                    retry_in.as_secs_f64(),
                    refusal_hint(&reason.to_string(), uptime)
                );
            }
        }
    }

    /// The output's first frame went out: tell systemd, re-assert the selection.
    async fn on_output_streaming(&mut self) {
        let input = *self.selection.borrow();
        info!(
            pid = self.output_pid,
            on_air = input.name(),
            "output streaming"
        );
        if !self.ready_sent {
            self.ready_sent = true;
            notify::ready();
        }
        // The output started with the selection current at its spawn; the
        // state may have moved since (switches while it was not streaming
        // only changed the selection). Unconfirmed, the wrong source could
        // stay on air: retry, then restart the output.
        if let Err(err) = self.switch.select(input).await {
            warn!(%err, "could not re-assert the selection after the output started");
            self.switch_failed().await;
        }
    }

    async fn on_stats(&mut self, page: Result<StatPage, String>) {
        let page = match page {
            Ok(page) => {
                if !self.stats_ok {
                    info!("stat page answers again");
                    self.stats_ok = true;
                }
                page
            }
            Err(err) => {
                // Keep what is on air: live frames, not the stat page,
                // decide failover.
                if self.stats_ok {
                    warn!(url = %self.config.stats_url, "stat page unavailable: {err}");
                    self.stats_ok = false;
                }
                return;
            }
        };
        let stream = page.stream(&self.config.rtmp_app, &self.config.rtmp_stream_name);
        let publisher = stream.and_then(|s| {
            s.publisher().map(|p| {
                let unchecked = self
                    .approvals
                    .as_ref()
                    .is_some_and(|a| a.vouch(p.id, p.time) == Vouch::NeverAsked);
                Publisher {
                    id: p.id,
                    address: p.address,
                    allowed: !unchecked
                        && p.address
                            .is_some_and(|a| self.config.allowed_publishers.allows(a)),
                    unchecked,
                    has_audio: s.has_audio(),
                }
            })
        });
        let bytes_in = stream.map_or(0, |s| s.bytes_in);
        self.live_bps = self.bitrate.update(
            publisher.as_ref().map(|p| p.id),
            bytes_in,
            std::time::Instant::now(),
        );
        self.check_low_bitrate(publisher.as_ref().map(|p| p.id), bytes_in)
            .await;
        if publisher.as_ref().map(|p| p.id) != self.publisher.as_ref().map(|p| p.id) {
            match &publisher {
                Some(p) => {
                    info!(
                        publisher = %show_addr(p.address),
                        client = p.id,
                        allowed = p.allowed,
                        "publisher connected"
                    );
                    // Ingest failures before this publisher (nginx down, a
                    // broken stream) say nothing about it: don't make it
                    // wait out their backoff.
                    self.ingest_backoff.reset();
                    if self.ingest.is_none() && p.allowed {
                        self.ingest_retry_at = Some(Instant::now());
                    }
                }
                None => {
                    if let Some(old) = &self.publisher {
                        info!(publisher = %show_addr(old.address), "publisher left");
                    }
                    // nginx hands its players on to the next publisher. An
                    // ingest that got no picture out of this one may be
                    // stuck on its stream: start the next one afresh. (One
                    // with frames flowing is replaced when they stop.)
                    if self.ingest.is_some() && self.flowing.is_none() {
                        self.stop_ingest();
                        self.ingest_retry_at = Some(Instant::now());
                    }
                }
            }
            self.publisher_since = Some(Instant::now());
        }
        self.publisher = publisher.clone();

        match publisher {
            Some(p) if !p.allowed => {
                if self.refused != Some(p.id) {
                    self.refused = Some(p.id);
                    if p.unchecked {
                        warn!(
                            publisher = %show_addr(p.address),
                            "publisher refused: nginx did not ask relay for its PUBLISH_KEY; add `on_publish http://127.0.0.1:{}{};` to the RTMP application; it stays off air",
                            self.config.publish_auth_port,
                            crate::publish_auth::PATH
                        );
                    } else {
                        warn!(
                            publisher = %show_addr(p.address),
                            rule = %self.config.allowed_publishers,
                            "publisher refused by ALLOWED_PUBLISHERS; it stays off air"
                        );
                    }
                }
                if matches!(self.state, State::Live { .. }) {
                    self.go_offline("publisher not allowed", "publisher_refused")
                        .await;
                }
                // Don't decode a feed that will never go on air.
                if self.ingest.is_some() {
                    self.stop_ingest();
                }
                self.ingest_retry_at = None;
            }
            Some(p) => {
                self.refused = None;
                let wanted = match p.has_audio {
                    Some(false) => Expect::VideoOnly,
                    _ => Expect::AudioVideo,
                };
                let mismatch = self
                    .ingest
                    .as_ref()
                    .is_some_and(|i| i.expect != wanted && p.has_audio.is_some());
                if mismatch && self.flowing.is_none() {
                    info!(
                        expect = ?wanted,
                        "publisher sends video only; restarting the ingest to match"
                    );
                    self.stop_ingest();
                    self.start_ingest();
                } else if self.no_picture_for(NO_PICTURE) {
                    let message = format!(
                        "the publisher's stream gave no picture in {} s; restarting the ingest",
                        NO_PICTURE.as_secs()
                    );
                    if self.no_picture != Some(p.id) {
                        self.no_picture = Some(p.id);
                        warn!(publisher = %show_addr(p.address), "{message}");
                    } else {
                        info!(publisher = %show_addr(p.address), "{message}");
                    }
                    self.stop_ingest();
                    self.start_ingest();
                } else if self.ingest.is_none() && self.ingest_retry_at.is_none() {
                    self.ingest_retry_at = Some(Instant::now());
                }
                self.maybe_go_live().await;
            }
            None => {
                self.refused = None;
                if self.ingest.is_none() && self.ingest_retry_at.is_none() {
                    self.ingest_retry_at = Some(Instant::now());
                }
            }
        }
    }

    /// Whether the publisher and the ingest have both been there for `limit`
    /// without a live frame.
    fn no_picture_for(&self, limit: Duration) -> bool {
        self.flowing.is_none()
            && self.publisher_since.is_some_and(|t| t.elapsed() >= limit)
            && self
                .ingest
                .as_ref()
                .is_some_and(|i| i.started.elapsed() >= limit)
    }

    async fn on_ingest_exit(&mut self, ev: IngestExit) {
        if self.current_session() != Some(ev.session) {
            return;
        }
        let ran_for = self
            .ingest
            .as_ref()
            .map_or(Duration::ZERO, |i| i.started.elapsed());
        self.ingest = None;
        if ev.requested {
            return;
        }
        self.ingest_restarts += 1;
        let delay = self.ingest_backoff.next(ran_for);
        warn!(
            session = ev.session,
            retry_in_s = delay.as_secs_f64(),
            "ingest exited: {}",
            ev.reason.detail()
        );
        self.ingest_retry_at = Some(Instant::now() + delay);
        // The pump's "no live frame" for this session would be ignored now
        // that it is no longer current: fail over here (the host nginx
        // restarted, say), or live would stay on air with nothing behind it.
        if self.flowing == Some(ev.session) {
            self.flowing = None;
        }
        if self.ready == Some(ev.session) {
            self.ready = None;
        }
        if matches!(self.state, State::Live { session, .. } if session == ev.session) {
            self.go_offline("the ingest of the live feed exited", "frames_stopped")
                .await;
        }
    }

    async fn maybe_go_live(&mut self) {
        if matches!(self.state, State::Live { .. }) || self.manual == Some(Input::Offline) {
            return;
        }
        let Some((session, address)) = self.live_candidate() else {
            return;
        };
        if let Some((kind, why)) = self.hold_reason() {
            if self
                .held
                .as_ref()
                .is_none_or(|(s, k, _)| *s != session || *k != kind)
            {
                info!(session, "live frames held off air: {why}");
            }
            self.held = Some((session, kind, why));
            return;
        }
        // Held and now let go: because its bitrate recovered during this
        // run of frames, or because the run lasted LIVE_STABLE_SECS.
        let recovered = self
            .low_cleared_at
            .zip(self.flowing_since)
            .is_some_and(|(cleared, flowing)| cleared > flowing);
        let (reason, kind) = match self.held.take() {
            Some((s, _, _)) if s == session && recovered => (
                "live bitrate back above LOW_BITRATE_KBPS".to_string(),
                "bitrate_recovered",
            ),
            Some((s, _, _)) if s == session => (
                format!(
                    "publisher back and stable for {} s (LIVE_STABLE_SECS)",
                    self.config.live_stable.as_secs_f64()
                ),
                "publisher_stable",
            ),
            _ => (
                "publisher allowed and frames flowing".to_string(),
                "publisher_live",
            ),
        };
        self.go_live(session, address, &reason, kind).await;
    }

    /// Why an allowed publisher whose frames flow must stay off air for
    /// now, if it must; sets the timer to look again.
    fn hold_reason(&mut self) -> Option<(&'static str, String)> {
        if let Some(bps) = self.low_bitrate {
            return Some((
                "low_bitrate",
                format!(
                    "live bitrate {} kb/s is below LOW_BITRATE_KBPS {}",
                    bps / 1000,
                    self.config.low_bitrate.map_or(0, |l| l.bps / 1000)
                ),
            ));
        }
        let stable = self.config.live_stable;
        let since = self.flowing_since?;
        let returning = self
            .last_drop
            .is_some_and(|drop| since.saturating_duration_since(drop) < RETURN_WINDOW);
        if !returning || stable.is_zero() {
            return None;
        }
        let from = match self.low_cleared_at {
            Some(t) if t > since => t,
            _ => since,
        };
        let until = from + stable;
        if Instant::now() >= until {
            return None;
        }
        self.hold_until = Some(until);
        Some((
            "unstable",
            format!(
                "back within {} s of a failover; on air after {} s of steady frames (LIVE_STABLE_SECS)",
                RETURN_WINDOW.as_secs(),
                stable.as_secs_f64()
            ),
        ))
    }

    /// LOW_BITRATE_KBPS + LOW_BITRATE_SECS: the publisher's average
    /// bitrate into nginx over the window, from the stat page's bytes_in.
    async fn check_low_bitrate(&mut self, publisher: Option<u64>, bytes_in: u64) {
        let Some(rule) = self.config.low_bitrate else {
            self.low_bitrate = None;
            self.bitrate_window.clear();
            return;
        };
        let now = Instant::now();
        if publisher != self.bitrate_publisher {
            self.bitrate_publisher = publisher;
            self.bitrate_window.clear();
            // A publisher back soon after a low-bitrate failover must prove
            // its bitrate first; one long after starts with a clean slate.
            if self.last_drop.is_none_or(|d| d.elapsed() >= RETURN_WINDOW) {
                self.low_bitrate = None;
            }
        }
        if publisher.is_none() {
            return;
        }
        if self
            .bitrate_window
            .back()
            .is_some_and(|&(_, b)| bytes_in < b)
        {
            self.bitrate_window.clear();
        }
        self.bitrate_window.push_back((now, bytes_in));
        while self.bitrate_window.len() >= 2 && self.bitrate_window[1].0 + rule.window <= now {
            self.bitrate_window.pop_front();
        }
        let (t0, b0) = self.bitrate_window[0];
        let span = now - t0;
        if span < rule.window || span.is_zero() {
            return;
        }
        let average = ((bytes_in - b0) as f64 * 8.0 / span.as_secs_f64()) as u64;
        if average < rule.bps {
            let was_low = self.low_bitrate.replace(average).is_some();
            if !was_low && matches!(self.state, State::Live { .. }) && self.manual.is_none() {
                self.last_drop = Some(now);
                let reason = format!(
                    "live bitrate {} kb/s below LOW_BITRATE_KBPS {} for {} s",
                    average / 1000,
                    rule.bps / 1000,
                    rule.window.as_secs_f64()
                );
                self.go_offline(&reason, "low_bitrate").await;
            }
        } else if self.low_bitrate.take().is_some() {
            self.low_cleared_at = Some(now);
            info!(
                "live bitrate {} kb/s is back above LOW_BITRATE_KBPS {}",
                average / 1000,
                rule.bps / 1000
            );
        }
    }

    /// The ingest session and publisher that could go on air now: an
    /// allowed publisher whose frames have flowed for the pump's pre-roll.
    fn live_candidate(&self) -> Option<(u64, Option<IpAddr>)> {
        let session = self.ready.filter(|s| self.current_session() == Some(*s))?;
        let publisher = self.publisher.as_ref().filter(|p| p.allowed)?;
        Some((session, publisher.address))
    }

    async fn go_live(
        &mut self,
        session: u64,
        publisher: Option<IpAddr>,
        reason: &str,
        kind: &'static str,
    ) {
        let _ = self.selection.send(Input::Live);
        match self.select(Input::Live).await {
            Ok(()) => {
                info!(
                    session,
                    publisher = %show_addr(publisher),
                    "on air: live ({reason})"
                );
                self.last_switch = Some((Instant::now(), Input::Live, reason.to_string(), kind));
                self.held = None;
                if !matches!(self.state, State::Live { .. }) {
                    *self.switches.entry(("live", kind)).or_default() += 1;
                }
                self.state = State::Live {
                    session,
                    publisher,
                    since: Instant::now(),
                };
            }
            Err(err) => {
                let _ = self.selection.send(Input::Offline);
                error!(%err, "could not switch to live; staying offline");
                self.switch_failed().await;
            }
        }
    }

    async fn go_offline(&mut self, reason: &str, kind: &'static str) {
        // A manual live holds only while live is on air.
        if self.manual == Some(Input::Live) {
            self.manual = None;
        }
        let _ = self.selection.send(Input::Offline);
        let was = std::mem::replace(&mut self.state, State::Offline);
        let live_for = match was {
            State::Live { since, .. } => {
                *self.switches.entry(("offline", kind)).or_default() += 1;
                since.elapsed()
            }
            State::Offline => Duration::ZERO,
        };
        match self.select(Input::Offline).await {
            Ok(()) => {
                info!(
                    live_for_s = live_for.as_secs(),
                    "on air: offline video ({reason})"
                );
                self.last_switch = Some((Instant::now(), Input::Offline, reason.to_string(), kind));
            }
            Err(err) => {
                error!(%err, "could not switch to offline ({reason})");
                self.switch_failed().await;
            }
        }
    }

    /// Puts `input` on air through the output's zmq filter. An output that
    /// is not streaming (starting, or waiting to retry a destination that
    /// refused it) has no filter to ask: it starts on the selection, which
    /// is re-asserted once it streams, so there is nothing to confirm — and
    /// nothing to restart, which would only cut its connection attempt.
    async fn select(&self, input: Input) -> Result<(), crate::control::ControlError> {
        if self.last_progress.is_none() || self.output_gone() {
            return Ok(());
        }
        self.switch.select(input).await
    }

    /// The output we last heard of has exited, though its supervisor's word
    /// may still be queued behind the event being handled: it restarts on
    /// the selection, so there is no filter to ask. (A destination that
    /// refuses the stream kills the output right after it starts
    /// streaming; a go-live at that moment asked a dead filter, then
    /// restarted outputs that were already restarting.)
    fn output_gone(&self) -> bool {
        self.output_pid.is_some_and(|pid| {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None)
                == Err(nix::errno::Errno::ESRCH)
        })
    }

    /// The zmq filter did not confirm a switch: one more try on a fresh
    /// socket, then restart the output, which starts on the selection.
    async fn switch_failed(&mut self) {
        let input = *self.selection.borrow();
        if self.output_gone() {
            info!(
                on_air = input.name(),
                "the output exited; it restarts on the selection"
            );
            return;
        }
        if self.select(input).await.is_ok() {
            info!(on_air = input.name(), "switch confirmed on retry");
            return;
        }
        error!("the output's zmq control does not answer; restarting the output");
        self.restart_output.request();
    }

    fn current_session(&self) -> Option<u64> {
        self.ingest.as_ref().map(|i| i.session)
    }

    /// Starts a fresh ingest that waits for (or joins) the publisher.
    fn start_ingest(&mut self) {
        if self.ingest.is_some() || self.refused.is_some() {
            return;
        }
        let expect = match self.publisher.as_ref().and_then(|p| p.has_audio) {
            Some(false) => Expect::VideoOnly,
            _ => Expect::AudioVideo,
        };
        let session = self.next_session;
        self.next_session += 1;
        let started = match ingest::spawn(
            &self.config,
            expect,
            session,
            &self.options.ffmpeg,
            &self.frames,
            self.pipes.as_ref(),
        ) {
            Ok(s) => s,
            Err(err) => {
                let delay = self.ingest_backoff.next(Duration::ZERO);
                error!(%err, retry_in_s = delay.as_secs_f64(), "could not start the ingest ffmpeg");
                self.ingest_retry_at = Some(Instant::now() + delay);
                return;
            }
        };
        let pid = started.child.pid;
        info!(session, pid, expect = ?expect, "ingest waiting for live frames");
        let _ = self.pump.try_send(pump::Command::Feed(Some(started.feed)));
        let child = self.children.once(
            started.child,
            session,
            self.ingest_events.clone(),
            tracing::info_span!("ingest", session),
        );
        self.ingest = Some(IngestHandle {
            session,
            expect,
            started: Instant::now(),
            child,
        });
    }

    /// Tells the current ingest to stop (SIGTERM, then SIGKILL after
    /// KILL_GRACE) without waiting for it.
    fn stop_ingest(&mut self) {
        let Some(handle) = self.ingest.take() else {
            return;
        };
        let _ = self.pump.try_send(pump::Command::Feed(None));
        if self.flowing == Some(handle.session) {
            self.flowing = None;
        }
        self.ready = None;
        self.held = None;
        self.hold_until = None;
        // Its supervisor stops the child in the background; shutdown
        // waits for all of them.
        handle.child.stop();
    }

    fn housekeeping(&mut self) {
        self.metrics.send_replace(self.snapshot());
        let status = self.status_line();
        if status != self.last_status {
            notify::status(&status);
            self.last_status = status;
        }
        // WATCHDOG=1 only while the output advances — or while it waits out
        // a crash backoff, which is relay working as designed (a dead
        // destination is not a hung daemon).
        let progressing = self
            .last_progress
            .is_some_and(|(at, _)| at.elapsed() < OUTPUT_STALL);
        let starting = self
            .output_since
            .is_some_and(|t| t.elapsed() < OUTPUT_STALL);
        if progressing || starting || self.output_in_backoff {
            notify::watchdog();
        }
    }

    /// An operator's request from the control socket.
    async fn on_request(&mut self, request: Request) -> Reply {
        match request {
            Request::Status => Reply::Status(self.status()),
            Request::Switch { to } => self.manual_switch(to).await,
        }
    }

    /// `relay switch live|offline|auto`.
    async fn manual_switch(&mut self, to: Mode) -> Reply {
        let reason = format!("manual: relay switch {}", to.name());
        match to {
            Mode::Offline => {
                self.manual = Some(Input::Offline);
                // Also when already offline: it re-asserts the selection
                // and the log shows the operator's decision.
                self.go_offline(&reason, "manual").await;
            }
            Mode::Live => {
                let Some((session, address)) = self.live_candidate() else {
                    let why = if self.flowing.is_some() {
                        "live frames only just started; try again in a moment"
                    } else {
                        "no live frames are flowing (nobody allowed is publishing)"
                    };
                    return Reply::Refused {
                        message: format!("cannot switch to live: {why}"),
                    };
                };
                self.manual = Some(Input::Live);
                if matches!(self.state, State::Live { .. }) {
                    info!("on air: live ({reason})");
                    self.last_switch =
                        Some((Instant::now(), Input::Live, reason.clone(), "manual"));
                } else {
                    self.go_live(session, address, &reason, "manual").await;
                    if !matches!(self.state, State::Live { .. }) {
                        self.manual = None;
                        return Reply::Refused {
                            message: "cannot switch to live: the output did not confirm the switch"
                                .to_string(),
                        };
                    }
                }
            }
            Mode::Auto => {
                let was = self.manual.take().map_or("auto", Input::name);
                // Re-evaluate at once: an allowed publisher already flowing
                // goes on air now, not at its next event.
                let candidate = self.live_candidate();
                match (&self.state, candidate) {
                    (State::Offline, Some((session, address))) => {
                        let why = format!("{reason}; publisher allowed and frames flowing");
                        self.go_live(session, address, &why, "manual").await;
                    }
                    // Nothing changes on air, but the log shows the decision.
                    (State::Live { .. }, _) => info!(was, "on air: live ({reason})"),
                    (State::Offline, None) => {
                        info!(was, "on air: offline video ({reason}; nobody live)")
                    }
                }
            }
        }
        let state = self.state_name();
        Reply::Switched {
            state,
            message: format!("relay switch {}: now {}", to.name(), state.text()),
        }
    }

    fn state_name(&self) -> StateName {
        match (&self.state, self.manual) {
            (State::Live { .. }, Some(Input::Live)) => StateName::ManualLive,
            (State::Live { .. }, _) => StateName::Live,
            (State::Offline, Some(Input::Offline)) => StateName::ManualOffline,
            (State::Offline, _) => {
                let starved = self
                    .held
                    .as_ref()
                    .is_some_and(|(_, kind, _)| *kind == "low_bitrate");
                if self.flowing.is_some()
                    && self.publisher.as_ref().is_some_and(|p| p.allowed)
                    && !starved
                {
                    StateName::GoingLive
                } else {
                    StateName::Offline
                }
            }
        }
    }

    /// What `relay status` shows.
    fn status(&self) -> api::Status {
        let publisher = self.publisher.as_ref();
        api::Status {
            instance: self.config.instance.clone(),
            state: self.state_name(),
            publisher: publisher.map(|p| show_addr(p.address)),
            publisher_allowed: publisher.map(|p| p.allowed),
            live_bitrate_bps: self.live_bps.filter(|_| publisher.is_some()),
            output_uptime_s: match (self.output_since, self.last_progress) {
                (Some(since), Some(_)) => Some(since.elapsed().as_secs()),
                _ => None,
            },
            output_restarts: self.output_restarts,
            ingest_restarts: self.ingest_restarts,
            last_switch: self
                .last_switch
                .as_ref()
                .map(|(at, to, reason, kind)| LastSwitch {
                    to: to.name().to_string(),
                    seconds_ago: at.elapsed().as_secs(),
                    reason: reason.clone(),
                    kind: kind.to_string(),
                }),
            live_frames: self.pump_stats.live_frames.load(Ordering::Relaxed),
            filler_frames: self.pump_stats.filler_frames.load(Ordering::Relaxed),
            dropped_ticks: self.pump_stats.dropped_ticks.load(Ordering::Relaxed),
            held_off_air: self.held.as_ref().map(|(_, _, why)| why.clone()),
            held_kind: self.held.as_ref().map(|(_, kind, _)| kind.to_string()),
            policy: api::Policy {
                offline_after_ms: self.config.offline_after.as_millis() as u64,
                live_stable_s: self.config.live_stable.as_secs_f64(),
                low_bitrate_kbps: self.config.low_bitrate.map(|l| l.bps / 1000),
                low_bitrate_s: self.config.low_bitrate.map(|l| l.window.as_secs_f64()),
            },
            output_pid: self.output_pid,
            ingest_pid: self.ingest.as_ref().map(|i| i.child.pid),
            reloads: self.options.reloads.as_ref().map_or(0, |r| r.borrow().0),
            last_reload: self.options.reloads.as_ref().and_then(|r| {
                r.borrow()
                    .1
                    .as_ref()
                    .map(|(at, outcome, detail)| api::LastReload {
                        outcome: outcome.to_string(),
                        seconds_ago: at.elapsed().as_secs(),
                        detail: detail.clone(),
                    })
            }),
        }
    }

    /// What `/metrics` shows.
    fn snapshot(&self) -> metrics::Snapshot {
        let streaming = self.output_since.filter(|_| self.last_progress.is_some());
        metrics::Snapshot {
            instance: self.config.instance.clone(),
            state: self.state_name(),
            switches: self.switches.iter().map(|(k, v)| (*k, *v)).collect(),
            output_restarts: self.output_restarts,
            ingest_restarts: self.ingest_restarts,
            publisher_connected: self.publisher.is_some(),
            live_bitrate_bps: self.live_bps.filter(|_| self.publisher.is_some()),
            output_uptime_s: streaming.map(|t| t.elapsed().as_secs_f64()),
            output_fps: self.output_rates.map(|(fps, _)| fps),
            output_speed: self.output_rates.map(|(_, speed)| speed),
        }
    }

    fn status_line(&self) -> String {
        let mut parts = vec![self.state_name().text().to_string()];
        match &self.state {
            State::Live { publisher, .. } => {
                parts.push(format!("publisher {}", show_addr(*publisher)));
            }
            State::Offline => match &self.publisher {
                Some(p) if !p.allowed => {
                    parts.push(format!("publisher {} refused", show_addr(p.address)))
                }
                Some(p) => parts.push(format!("publisher {}", show_addr(p.address))),
                None => parts.push("no publisher".to_string()),
            },
        }
        if let Some(bps) = self.live_bps.filter(|_| self.publisher.is_some()) {
            parts.push(format!("{:.1} Mb/s", bps as f64 / 1e6));
        }
        match (self.output_since, self.last_progress) {
            (Some(since), Some(_)) => {
                parts.push(format!("output up {}", show_duration(since.elapsed())))
            }
            (Some(_), None) => parts.push("output starting".to_string()),
            _ => parts.push("output restarting".to_string()),
        }
        if self.output_restarts > 0 {
            parts.push(format!("{} output restarts", self.output_restarts));
        }
        parts.join(" · ")
    }
}

fn show_addr(addr: Option<IpAddr>) -> String {
    addr.map_or_else(|| "unknown".to_string(), |a| a.to_string())
}

/// "42s", "2m05s", "3h12m": for status lines.
pub fn show_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
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
                let new = updates.borrow_and_update().poll_interval;
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
    fn durations_read_well() {
        assert_eq!(show_duration(Duration::from_secs(42)), "42s");
        assert_eq!(show_duration(Duration::from_secs(125)), "2m05s");
        assert_eq!(show_duration(Duration::from_secs(3 * 3600 + 720)), "3h12m");
    }
}
