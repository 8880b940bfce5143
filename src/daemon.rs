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
        config.poll_interval,
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
    let destinations = [DESTINATION];
    let mut policy = Policy::new(settings(&config), std::time::Instant::now(), &destinations);
    let first = policy.start();
    let mut daemon = Daemon {
        config: config.clone(),
        options,
        policy,
        timers: BTreeMap::new(),
        switch: Switch::new(config.zmq_port),
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
        offline_after: config.offline_after,
        live_stable: config.live_stable,
        low_bitrate: config.low_bitrate,
        allowed_publishers: config.allowed_publishers.clone(),
        crash_backoff: config.crash_backoff,
        publish_auth_url: format!(
            "http://127.0.0.1:{}{}",
            config.publish_auth_port,
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

/// The I/O shell around the policy: it turns what happens into
/// [`policy::Event`]s and carries out the [`Action`]s that come back.
struct Daemon {
    config: Arc<Config>,
    options: Options,
    policy: Policy,
    /// The policy's timers and when each is due.
    timers: BTreeMap<Timer, std::time::Instant>,
    switch: Switch,
    selection: watch::Sender<Input>,
    restart_output: mpsc::Sender<()>,
    pump: mpsc::Sender<pump::Command>,
    pump_stats: Arc<pump::Stats>,
    /// Live frames' buffers, reused by every ingest of this pipeline.
    frames: FramePool,
    /// Pipes that hold live frames instead (`None`: frames go through
    /// `frames`).
    pipes: Option<PipePool>,
    poll_now: Arc<Notify>,
    ingest: Option<IngestHandle>,
    /// Ingests told to stop and not yet gone.
    stopping: Vec<JoinHandle<()>>,
    ingest_events: mpsc::Sender<IngestExit>,
    metrics: watch::Sender<metrics::Snapshot>,
    /// What nginx's on_publish endpoint accepted, with PUBLISH_KEY set.
    approvals: Option<Approvals>,
    stats_ok: bool,
    output: OutputState,
    ready_sent: bool,
    last_status: String,
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
            let next_timer = self.timers.values().min().copied().map(Instant::from_std);
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                Some(ev) = pump_events.recv() => {
                    let event = match ev {
                        PumpEvent::Flowing { session } => Event::Flowing { session },
                        PumpEvent::Ready { session } => Event::Ready { session },
                        PumpEvent::Stopped { session, silent_for } => {
                            Event::Stopped { session, silent_for }
                        }
                    };
                    self.dispatch(event).await;
                }
                Some(ev) = output_events.recv() => self.on_output(ev).await,
                Some(page) = stat_pages.recv() => self.on_stats(page).await,
                Some(ev) = ingest_events.recv() => self.on_ingest_exit(ev).await,
                Some((request, reply)) = api_calls.recv() => {
                    let answer = self.on_request(request).await;
                    let _ = reply.send(answer);
                }
                _ = sleep_until(next_timer.unwrap_or_else(far_future)), if next_timer.is_some() => {
                    self.fire_timers().await;
                }
                _ = housekeeping.tick() => self.housekeeping(),
                Ok(()) = updates.changed() => {
                    let new = updates.borrow_and_update().clone();
                    self.apply_tuning(new).await;
                }
            }
        }
    }

    /// Hands `event` to the policy and carries out what it decides;
    /// returns the policy's answer to an operator, if it gave one.
    async fn dispatch(&mut self, event: Event) -> Option<Reply> {
        let actions = self.policy.handle(std::time::Instant::now(), event);
        self.carry_out(actions).await
    }

    /// Carries out `actions` in order. A switch's result goes back to the
    /// policy at once, and what it decides then is carried out too.
    async fn carry_out(&mut self, actions: Vec<Action>) -> Option<Reply> {
        let mut queue = VecDeque::from(actions);
        let mut reply = None;
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Select(input) => {
                    // A (re)starting output starts on the selection.
                    let _ = self.selection.send(input);
                    let result = self.select(input).await;
                    let more = self
                        .policy
                        .handle(std::time::Instant::now(), Event::Switched { input, result });
                    queue.extend(more);
                }
                Action::StartIngest {
                    source: _,
                    session,
                    expect,
                } => {
                    if let Err(error) = self.start_ingest(session, expect) {
                        let more = self.policy.handle(
                            std::time::Instant::now(),
                            Event::IngestFailed {
                                session,
                                error: error.to_string(),
                            },
                        );
                        queue.extend(more);
                    }
                }
                Action::StopIngest { session } => {
                    if self.ingest.as_ref().is_some_and(|i| i.session == session) {
                        self.stop_current_ingest();
                    }
                }
                Action::SetTimer { timer, at } => match at {
                    Some(at) => {
                        self.timers.insert(timer, at);
                    }
                    None => {
                        self.timers.remove(&timer);
                    }
                },
                Action::RestartOutput => {
                    let _ = self.restart_output.try_send(());
                }
                Action::PollNow => self.poll_now.notify_one(),
                Action::Reply(r) => reply = Some(*r),
            }
        }
        reply
    }

    /// Hands every timer that is due to the policy.
    async fn fire_timers(&mut self) {
        let now = std::time::Instant::now();
        let due: Vec<Timer> = self
            .timers
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(timer, _)| *timer)
            .collect();
        for timer in due {
            self.timers.remove(&timer);
            self.dispatch(Event::Timer(timer)).await;
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
        info!(
            offline_after_ms = new.offline_after.as_millis() as u64,
            live_stable_s = new.live_stable.as_secs_f64(),
            low_bitrate_kbps = new.low_bitrate.map(|l| l.bps / 1000),
            low_bitrate_s = new.low_bitrate.map(|l| l.window.as_secs_f64()),
            poll_interval_s = new.poll_interval.as_secs_f64(),
            allowed_publishers = %new.allowed_publishers,
            "reload: new settings applied at once; the output keeps running"
        );
        self.dispatch(Event::Reconfigured(settings(&new))).await;
    }

    async fn on_output(&mut self, ev: OutputEvent) {
        match ev {
            OutputEvent::Started { pid } => {
                self.output.pid = Some(pid);
                self.output.since = Some(Instant::now());
                self.output.last_progress = None;
                self.output.in_backoff = false;
            }
            OutputEvent::Progress(p) => {
                self.output.rates = Some((p.fps, p.speed));
                let advanced = self
                    .output
                    .last_progress
                    .is_none_or(|(_, frame)| p.frame > frame);
                if advanced && p.frame > 0 {
                    let first = self.output.last_progress.is_none();
                    self.output.last_progress = Some((Instant::now(), p.frame));
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
                let again = if self.output.last_progress.is_some() {
                    "reconnecting"
                } else {
                    "retrying"
                };
                let restarts = self.output.restarts + 1;
                self.output = OutputState {
                    restarts,
                    in_backoff: true,
                    ..OutputState::default()
                };
                warn!(
                    uptime_s = uptime.as_secs(),
                    restarts,
                    "output stopped: {reason}; {again} in {:.1} s{}",
                    retry_in.as_secs_f64(),
                    refusal_hint(&reason, uptime)
                );
                self.dispatch(Event::OutputStopped {
                    destination: DESTINATION,
                })
                .await;
            }
        }
    }

    /// The output's first frame went out: tell systemd, re-assert the selection.
    async fn on_output_streaming(&mut self) {
        let input = *self.selection.borrow();
        info!(
            pid = self.output.pid,
            on_air = input.name(),
            "output streaming"
        );
        if !self.ready_sent {
            self.ready_sent = true;
            notify::ready();
        }
        self.dispatch(Event::OutputStreaming {
            destination: DESTINATION,
        })
        .await;
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
            s.publisher().map(|p| policy::Publisher {
                id: p.id,
                address: p.address,
                unchecked: self
                    .approvals
                    .as_ref()
                    .is_some_and(|a| a.vouch(p.id, p.time) == Vouch::NeverAsked),
                has_audio: s.has_audio(),
            })
        });
        let summary = StatSummary {
            publisher,
            bytes_in: stream.map_or(0, |s| s.bytes_in),
        };
        self.dispatch(Event::StatPage(summary)).await;
    }

    async fn on_ingest_exit(&mut self, ev: IngestExit) {
        if self
            .ingest
            .as_ref()
            .is_some_and(|i| i.session == ev.session)
        {
            self.ingest = None;
        }
        self.dispatch(Event::IngestExited {
            session: ev.session,
            requested: ev.requested,
            reason: ev.reason,
        })
        .await;
    }

    /// Puts `input` on air through the output's zmq filter. An output that
    /// is not streaming (starting, or waiting to retry a destination that
    /// refused it) has no filter to ask: it starts on the selection, which
    /// is re-asserted once it streams, so there is nothing to confirm — and
    /// nothing to restart, which would only cut its connection attempt.
    async fn select(&self, input: Input) -> Switched {
        if self.output.last_progress.is_none() || self.output_gone() {
            return Switched::NotStreaming;
        }
        match self.switch.select(input).await {
            Ok(()) => Switched::Confirmed,
            Err(err) => Switched::Failed(err.to_string()),
        }
    }

    /// The output we last heard of has exited, though its supervisor's word
    /// may still be queued behind the event being handled: it restarts on
    /// the selection, so there is no filter to ask. (A destination that
    /// refuses the stream kills the output right after it starts
    /// streaming; a go-live at that moment asked a dead filter, then
    /// restarted outputs that were already restarting.)
    fn output_gone(&self) -> bool {
        self.output.pid.is_some_and(|pid| {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None)
                == Err(nix::errno::Errno::ESRCH)
        })
    }

    /// Starts the ingest FFmpeg of session `session`, which waits for (or
    /// joins) the publisher.
    fn start_ingest(&mut self, session: u64, expect: policy::Expect) -> std::io::Result<()> {
        let expect = match expect {
            policy::Expect::AudioVideo => Expect::AudioVideo,
            policy::Expect::VideoOnly => Expect::VideoOnly,
        };
        let started = ingest::spawn(
            &self.config,
            expect,
            session,
            &self.options.ffmpeg,
            &self.frames,
            self.pipes.as_ref(),
        )?;
        let pid = started.child.pid;
        info!(session, pid, expect = ?expect, "ingest waiting for live frames");
        let _ = self.pump.try_send(pump::Command::Feed(Some(started.feed)));
        let (stop_tx, stop_rx) = oneshot::channel();
        let grace = self.config.kill_grace;
        let events = self.ingest_events.clone();
        let mut child = started.child;
        let task = tokio::spawn(
            async move {
                let exited = tokio::select! {
                    status = child.wait() => Some(status),
                    _ = stop_rx => None,
                };
                let (reason, requested) = match exited {
                    Some(status) => {
                        let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                        let last = child.last_lines();
                        (format!("{status} {last}").trim().to_string(), false)
                    }
                    None => {
                        child.stop(grace).await;
                        ("stopped".to_string(), true)
                    }
                };
                let _ = events
                    .send(IngestExit {
                        session,
                        reason,
                        requested,
                    })
                    .await;
            }
            .instrument(tracing::info_span!("ingest", session)),
        );
        self.ingest = Some(IngestHandle {
            session,
            pid,
            stop: Some(stop_tx),
            task,
        });
        Ok(())
    }

    /// Tells the current ingest to stop (SIGTERM, then SIGKILL after
    /// KILL_GRACE) without waiting for it.
    fn stop_current_ingest(&mut self) {
        let Some(mut handle) = self.ingest.take() else {
            return;
        };
        let _ = self.pump.try_send(pump::Command::Feed(None));
        if let Some(stop) = handle.stop.take() {
            let _ = stop.send(());
        }
        // The ingest task stops the child in the background; shutdown
        // waits for all of them.
        self.stopping.retain(|t| !t.is_finished());
        self.stopping.push(handle.task);
    }

    /// Waits until every ingest being stopped is gone.
    async fn reap_ingests(&mut self) {
        let deadline = self.config.kill_grace + Duration::from_secs(1);
        for task in self.stopping.drain(..) {
            let _ = tokio::time::timeout(deadline, task).await;
        }
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
            .output
            .last_progress
            .is_some_and(|(at, _)| at.elapsed() < OUTPUT_STALL);
        let starting = self
            .output
            .since
            .is_some_and(|t| t.elapsed() < OUTPUT_STALL);
        if progressing || starting || self.output.in_backoff {
            notify::watchdog();
        }
    }

    /// An operator's request from the control socket.
    async fn on_request(&mut self, request: Request) -> Reply {
        match request {
            Request::Status => Reply::Status(self.status()),
            Request::Switch { to } => {
                self.dispatch(Event::Manual(to))
                    .await
                    .unwrap_or_else(|| Reply::Error {
                        message: "the switch was not answered".to_string(),
                    })
            }
        }
    }

    /// Seconds the output has been streaming, while it is.
    fn streaming_since(&self) -> Option<Instant> {
        self.output
            .since
            .filter(|_| self.output.last_progress.is_some())
    }

    /// What `relay status` shows.
    fn status(&self) -> api::Status {
        let publisher = self.policy.publisher();
        let held = self.policy.held();
        api::Status {
            instance: self.config.instance.clone(),
            state: self.policy.state_name(),
            publisher: publisher.map(|(p, _)| show_addr(p.address)),
            publisher_allowed: publisher.map(|(_, allowed)| allowed),
            live_bitrate_bps: self.policy.live_bitrate(),
            output_uptime_s: self.streaming_since().map(|t| t.elapsed().as_secs()),
            output_restarts: self.output.restarts,
            ingest_restarts: self.policy.ingest_restarts(),
            last_switch: self.policy.last_switch().map(|s| LastSwitch {
                to: s.to.name().to_string(),
                seconds_ago: s.at.elapsed().as_secs(),
                reason: s.reason.clone(),
                kind: s.why.name().to_string(),
            }),
            live_frames: self.pump_stats.live_frames.load(Ordering::Relaxed),
            filler_frames: self.pump_stats.filler_frames.load(Ordering::Relaxed),
            dropped_ticks: self.pump_stats.dropped_ticks.load(Ordering::Relaxed),
            held_off_air: held.map(|(_, why)| why.to_string()),
            held_kind: held.map(|(hold, _)| hold.name().to_string()),
            policy: api::Policy {
                offline_after_ms: self.config.offline_after.as_millis() as u64,
                live_stable_s: self.config.live_stable.as_secs_f64(),
                low_bitrate_kbps: self.config.low_bitrate.map(|l| l.bps / 1000),
                low_bitrate_s: self.config.low_bitrate.map(|l| l.window.as_secs_f64()),
            },
            output_pid: self.output.pid,
            ingest_pid: self.ingest.as_ref().map(|i| i.pid),
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
        metrics::Snapshot {
            instance: self.config.instance.clone(),
            state: self.policy.state_name(),
            switches: self
                .policy
                .switches()
                .map(|(to, why, n)| ((to.name(), why.name()), n))
                .collect(),
            output_restarts: self.output.restarts,
            ingest_restarts: self.policy.ingest_restarts(),
            publisher_connected: self.policy.publisher().is_some(),
            live_bitrate_bps: self.policy.live_bitrate(),
            output_uptime_s: self.streaming_since().map(|t| t.elapsed().as_secs_f64()),
            output_fps: self.output.rates.map(|(fps, _)| fps),
            output_speed: self.output.rates.map(|(_, speed)| speed),
        }
    }

    fn status_line(&self) -> String {
        let mut parts = vec![self.policy.state_name().text().to_string()];
        match (self.policy.on_air_publisher(), self.policy.publisher()) {
            (Some(on_air), _) => parts.push(format!("publisher {}", show_addr(on_air))),
            (None, Some((p, false))) => {
                parts.push(format!("publisher {} refused", show_addr(p.address)))
            }
            (None, Some((p, true))) => parts.push(format!("publisher {}", show_addr(p.address))),
            (None, None) => parts.push("no publisher".to_string()),
        }
        if let Some(bps) = self.policy.live_bitrate() {
            parts.push(format!("{:.1} Mb/s", bps as f64 / 1e6));
        }
        match (self.output.since, self.output.last_progress) {
            (Some(since), Some(_)) => {
                parts.push(format!("output up {}", show_duration(since.elapsed())))
            }
            (Some(_), None) => parts.push("output starting".to_string()),
            _ => parts.push("output restarting".to_string()),
        }
        if self.output.restarts > 0 {
            parts.push(format!("{} output restarts", self.output.restarts));
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
    let mut backoff = Backoff::new(config.crash_backoff);
    loop {
        // KILL_GRACE and CRASH_BACKOFF may change on reload; nothing else
        // the output uses can without restarting the pipeline.
        let crash_backoff = updates.borrow().crash_backoff;
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
                let kill_grace = updates.borrow().kill_grace;
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
                let new = updates.borrow_and_update().poll_interval;
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

    #[test]
    fn durations_read_well() {
        assert_eq!(show_duration(Duration::from_secs(42)), "42s");
        assert_eq!(show_duration(Duration::from_secs(125)), "2m05s");
        assert_eq!(show_duration(Duration::from_secs(3 * 3600 + 720)), "3h12m");
    }
}
