//! One supervisor for every FFmpeg child.
//!
//! Two modes. *Restarting* ([`Children::restarting`]) keeps a child running
//! for as long as the daemon runs: the output and the offline source. It
//! starts the child through its [`Job`], restarts it with a crash backoff
//! when it exits, when its progress stops (the optional stall watchdog), or
//! when the owner asks ([`Restart`]), and reports each start and exit to
//! the job. *Once* ([`Children::once`]) watches one child the owner started
//! and never restarts it: the ingest, one per publisher session, where the
//! daemon decides whether another starts.
//!
//! Every child stops the same way, SIGTERM then SIGKILL after KILL_GRACE
//! ([`Running::stop`]). Every task stops through one cancellation token,
//! and shutdown waits on one tracker until every child is reaped.

use std::fmt;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::Config;
use crate::ffmpeg::child::Running;
use crate::policy::Backoff;

/// KILL_GRACE and CRASH_BACKOFF as the configuration says now: a reload
/// changes both at once, so they are read again at every stop and start.
fn timings(config: &Config) -> (Duration, Duration) {
    (
        config.supervision.kill_grace,
        config.supervision.crash_backoff,
    )
}

/// Why a child's run ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Exit {
    /// It exited by itself: its exit status, and its last warning and
    /// error lines.
    Exited { status: String, last_lines: String },
    /// Its progress stopped for this long: the watchdog stopped it.
    Stalled(Duration),
    /// The owner asked for a restart.
    Restart,
    /// The owner asked it to stop, or the daemon is stopping.
    Stopped,
    /// It could not be started.
    Spawn(String),
}

impl Exit {
    /// A stable word for `relay status`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Exit::Exited { .. } => "exited",
            Exit::Stalled(_) => "stalled",
            Exit::Restart => "restart_requested",
            Exit::Stopped => "stopped",
            Exit::Spawn(_) => "spawn_failed",
        }
    }

    /// How a child that exited by itself says why: its status and last
    /// lines, without the "ffmpeg exited" that [`fmt::Display`] puts first.
    pub(crate) fn detail(&self) -> String {
        match self {
            Exit::Exited { status, last_lines } => {
                format!("{status} {last_lines}").trim().to_string()
            }
            other => other.to_string(),
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Exited { status, last_lines } => {
                write!(
                    f,
                    "{}",
                    format!("ffmpeg exited ({status}) {last_lines}").trim()
                )
            }
            Exit::Stalled(after) => write!(f, "no progress for {} s", after.as_secs()),
            Exit::Restart => f.write_str("restart requested"),
            Exit::Stopped => f.write_str("stopped"),
            Exit::Spawn(err) => write!(f, "could not start ffmpeg: {err}"),
        }
    }
}

/// What a restarting supervisor reports about its child.
#[derive(Debug)]
pub(crate) enum Event<P> {
    Started {
        pid: u32,
    },
    /// One of the child's progress reports.
    Progress(P),
    Exited {
        reason: Exit,
        uptime: Duration,
        /// The backoff before the next start.
        retry_in: Duration,
    },
}

/// A started child, and its progress reports if it makes any.
pub(crate) struct Started<P> {
    pub child: Running,
    pub progress: Option<mpsc::Receiver<P>>,
}

/// One kind of child a restarting supervisor keeps running: how to start
/// it, and whom to tell.
pub(crate) trait Job: Send + 'static {
    type Progress: Send + 'static;

    /// How far a progress report says the child got (frames out): the
    /// stall watchdog restarts a child whose count stops growing.
    fn count(_progress: &Self::Progress) -> u64 {
        0
    }

    /// Spawns the child (through `child::spawn`) and hands its pipes to
    /// whoever uses them.
    fn start(&mut self) -> impl Future<Output = io::Result<Started<Self::Progress>>> + Send;

    /// The child's run is over (it exited, or is about to be stopped):
    /// take back what [`Job::start`] handed out.
    fn ended(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Resolves when the child must start afresh at once, with its backoff
    /// reset and no exit reported (a new offline video). Never, by default.
    fn renew(&mut self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }

    /// Tells the owner.
    fn report(&mut self, event: Event<Self::Progress>) -> impl Future<Output = ()> + Send;
}

/// Asks a restarting supervisor to restart its child. A request made while
/// no child runs applies to the next one.
#[derive(Clone, Default)]
pub(crate) struct Restart(Arc<Notify>);

impl Restart {
    pub(crate) fn request(&self) {
        self.0.notify_one();
    }
}

/// A child watched in *once* mode: the owner stops it, and hears when it
/// is gone ([`Ended`]).
pub(crate) struct Once {
    pub pid: u32,
    stop: CancellationToken,
}

impl Once {
    /// Stops the child (SIGTERM, then SIGKILL after KILL_GRACE) in the
    /// background; its [`Ended`] follows.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }
}

/// What a *once* child reports when it is gone.
#[derive(Debug)]
pub(crate) struct Ended {
    pub session: u64,
    pub reason: Exit,
    /// The owner stopped it (or the daemon is stopping).
    pub requested: bool,
}

/// What the daemon's children and tasks share: the reloadable settings,
/// one cancellation token, and the tracker shutdown waits on.
#[derive(Clone)]
pub(crate) struct Children {
    updates: watch::Receiver<Arc<Config>>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Children {
    /// `updates`: the configuration, as reloads change it.
    pub(crate) fn new(updates: watch::Receiver<Arc<Config>>) -> Children {
        Children {
            updates,
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// Cancelled when the daemon stops: for tasks that are not children.
    pub(crate) fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Runs `task` until it ends; shutdown waits for it.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Keeps `job`'s child running until shutdown, restarting it with the
    /// crash backoff; `stall`: also when its progress stops for that long.
    pub(crate) fn restarting<J: Job>(
        &self,
        job: J,
        stall: Option<Duration>,
        span: tracing::Span,
    ) -> Restart {
        self.restarting_until(job, stall, span, self.cancel.child_token())
    }

    /// Like [`Children::restarting`], until `stop` (a child of
    /// [`Children::token`]) is cancelled: its child is then stopped, and
    /// not restarted.
    pub(crate) fn restarting_until<J: Job>(
        &self,
        job: J,
        stall: Option<Duration>,
        span: tracing::Span,
        stop: CancellationToken,
    ) -> Restart {
        let restart = Restart::default();
        let run = keep_running(job, stall, restart.clone(), self.updates.clone(), stop);
        self.tasks.spawn(run.instrument(span));
        restart
    }

    /// Watches `child`, started by the owner for `session`, until it exits
    /// or is stopped, then sends its [`Ended`] to `report`. It is never
    /// restarted.
    pub(crate) fn once(
        &self,
        mut child: Running,
        session: u64,
        report: mpsc::Sender<Ended>,
        span: tracing::Span,
    ) -> Once {
        let stop = self.cancel.child_token();
        let handle = Once {
            pid: child.pid,
            stop: stop.clone(),
        };
        let updates = self.updates.clone();
        let run = async move {
            let exited = tokio::select! {
                status = child.wait() => Some(status),
                _ = stop.cancelled() => None,
            };
            let (reason, requested) = match exited {
                Some(status) => (exited_by_itself(&child, status), false),
                None => {
                    let (grace, _) = timings(&updates.borrow());
                    child.stop(grace).await;
                    (Exit::Stopped, true)
                }
            };
            let _ = report
                .send(Ended {
                    session,
                    reason,
                    requested,
                })
                .await;
        };
        self.tasks.spawn(run.instrument(span));
        handle
    }

    /// Stops every child and task, and waits until all are gone.
    pub(crate) async fn shutdown(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

fn exited_by_itself(child: &Running, status: io::Result<std::process::ExitStatus>) -> Exit {
    Exit::Exited {
        status: status.map_or_else(|e| e.to_string(), |s| s.to_string()),
        last_lines: child.last_lines(),
    }
}

/// How one run of a restarting child ended.
enum End {
    Exit(Exit),
    Renew,
    Cancelled,
}

async fn keep_running<J: Job>(
    mut job: J,
    stall: Option<Duration>,
    restart: Restart,
    updates: watch::Receiver<Arc<Config>>,
    cancel: CancellationToken,
) {
    let (_, base) = timings(&updates.borrow());
    let mut backoff = Backoff::new(base);
    loop {
        let (_, base) = timings(&updates.borrow());
        if backoff.base() != base {
            backoff = Backoff::new(base);
        }
        let started_at = Instant::now();
        let reason = match job.start().await {
            Err(err) => Exit::Spawn(err.to_string()),
            Ok(started) => {
                let end = run(&mut job, started, stall, &restart, &updates, &cancel).await;
                match end {
                    End::Exit(reason) => reason,
                    End::Renew => {
                        backoff.reset();
                        continue;
                    }
                    End::Cancelled => return,
                }
            }
        };
        let uptime = started_at.elapsed();
        let retry_in = backoff.next(uptime);
        job.report(Event::Exited {
            reason,
            uptime,
            retry_in,
        })
        .await;
        tokio::select! {
            _ = sleep(retry_in) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// One run of a restarting child: until it exits, stalls, or is asked to
/// restart, renew or stop. Stops it unless it exited by itself.
async fn run<J: Job>(
    job: &mut J,
    started: Started<J::Progress>,
    stall: Option<Duration>,
    restart: &Restart,
    updates: &watch::Receiver<Arc<Config>>,
    cancel: &CancellationToken,
) -> End {
    let Started {
        mut child,
        mut progress,
    } = started;
    job.report(Event::Started { pid: child.pid }).await;
    let mut last_advance = Instant::now();
    let mut last_count = 0;
    let end = loop {
        let watchdog = stall.map(|after| last_advance + after);
        tokio::select! {
            status = child.wait() => break End::Exit(exited_by_itself(&child, status)),
            Some(p) = next(&mut progress) => {
                let count = J::count(&p);
                if count > last_count {
                    last_count = count;
                    last_advance = Instant::now();
                }
                job.report(Event::Progress(p)).await;
            }
            _ = sleep_until(watchdog.unwrap_or_else(Instant::now)), if watchdog.is_some() => {
                break End::Exit(Exit::Stalled(stall.unwrap_or_default()));
            }
            _ = restart.0.notified() => break End::Exit(Exit::Restart),
            _ = job.renew() => break End::Renew,
            _ = cancel.cancelled() => break End::Cancelled,
        }
    };
    job.ended().await;
    if !matches!(end, End::Exit(Exit::Exited { .. })) {
        let (grace, _) = timings(&updates.borrow());
        child.stop(grace).await;
    }
    end
}

/// The next progress report; never, for a child without them.
async fn next<P>(progress: &mut Option<mpsc::Receiver<P>>) -> Option<P> {
    match progress {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffmpeg::child::{self, Spec};

    /// A configuration whose KILL_GRACE and CRASH_BACKOFF are short.
    fn updates() -> watch::Receiver<Arc<Config>> {
        let mut config = Config::from_pairs(
            "t",
            &[
                ("KICK_URL", "rtmps://h.example/app"),
                ("KICK_KEY", "sk_x"),
                ("OFFLINE_VIDEO_PATH", "/o.mp4"),
            ],
        )
        .unwrap();
        config.supervision.kill_grace = Duration::from_millis(500);
        config.supervision.crash_backoff = Duration::from_millis(50);
        let (tx, rx) = watch::channel(Arc::new(config));
        // The configuration never changes; the channel stays open.
        std::mem::forget(tx);
        rx
    }

    fn sh(script: &str) -> Running {
        child::spawn(Spec {
            role: "test",
            program: "/bin/sh".into(),
            args: vec!["-c".to_string(), script.to_string()],
            fds: Vec::new(),
            stdout: false,
            secrets: Vec::new(),
        })
        .unwrap()
    }

    fn gone(pid: u32) -> bool {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None)
            == Err(nix::errno::Errno::ESRCH)
    }

    /// Runs `script`, with a progress channel whose sender it keeps (its
    /// reports never advance); reports every event.
    struct Script {
        script: &'static str,
        events: mpsc::Sender<Event<u64>>,
        progress: Option<mpsc::Sender<u64>>,
    }

    impl Job for Script {
        type Progress = u64;

        fn count(progress: &u64) -> u64 {
            *progress
        }

        async fn start(&mut self) -> io::Result<Started<u64>> {
            let (tx, rx) = mpsc::channel(1);
            self.progress = Some(tx);
            Ok(Started {
                child: sh(self.script),
                progress: Some(rx),
            })
        }

        async fn report(&mut self, event: Event<u64>) {
            let _ = self.events.send(event).await;
        }
    }

    fn script(s: &'static str) -> (Script, mpsc::Receiver<Event<u64>>) {
        let (events, rx) = mpsc::channel(8);
        let job = Script {
            script: s,
            events,
            progress: None,
        };
        (job, rx)
    }

    async fn next_event(rx: &mut mpsc::Receiver<Event<u64>>) -> Event<u64> {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an event in time")
            .expect("the supervisor runs")
    }

    async fn started(rx: &mut mpsc::Receiver<Event<u64>>) -> u32 {
        match next_event(rx).await {
            Event::Started { pid } => pid,
            other => panic!("not a start: {other:?}"),
        }
    }

    async fn exited(rx: &mut mpsc::Receiver<Event<u64>>) -> (Exit, Duration) {
        match next_event(rx).await {
            Event::Exited {
                reason, retry_in, ..
            } => (reason, retry_in),
            other => panic!("not an exit: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_crashing_child_is_restarted_with_a_growing_backoff() {
        let children = Children::new(updates());
        let (job, mut events) = script("exit 3");
        children.restarting(job, None, tracing::Span::none());
        started(&mut events).await;
        let (reason, retry_in) = exited(&mut events).await;
        assert_eq!(reason.to_string(), "ffmpeg exited (exit status: 3)");
        assert_eq!(retry_in, Duration::from_millis(50));
        started(&mut events).await;
        assert_eq!(exited(&mut events).await.1, Duration::from_millis(100));
        children.shutdown().await;
    }

    #[tokio::test]
    async fn a_stalled_child_is_stopped_and_a_requested_restart_too() {
        let children = Children::new(updates());
        let (job, mut events) = script("exec sleep 30");
        let restart =
            children.restarting(job, Some(Duration::from_millis(200)), tracing::Span::none());
        let first = started(&mut events).await;
        let (reason, _) = exited(&mut events).await;
        assert_eq!(reason, Exit::Stalled(Duration::from_millis(200)));
        assert!(gone(first), "the stalled child was stopped and reaped");
        let second = started(&mut events).await;
        restart.request();
        assert_eq!(exited(&mut events).await.0, Exit::Restart);
        assert!(gone(second));
        let third = started(&mut events).await;
        children.shutdown().await;
        assert!(gone(third), "shutdown stops the child and reaps it");
    }

    #[tokio::test]
    async fn a_once_child_reports_its_end_and_whether_it_was_stopped() {
        let children = Children::new(updates());
        let (tx, mut rx) = mpsc::channel(2);
        let quits = children.once(sh("exit 0"), 1, tx.clone(), tracing::Span::none());
        let ended = rx.recv().await.unwrap();
        assert_eq!((ended.session, ended.requested), (1, false));
        assert!(gone(quits.pid));
        let stays = children.once(sh("exec sleep 30"), 2, tx, tracing::Span::none());
        stays.stop();
        let ended = rx.recv().await.unwrap();
        assert_eq!(
            (ended.session, ended.requested, ended.reason),
            (2, true, Exit::Stopped)
        );
        assert!(gone(stays.pid));
        children.shutdown().await;
    }

    #[test]
    fn exit_reasons_read_as_before() {
        let exited = Exit::Exited {
            status: "exit status: 1".to_string(),
            last_lines: String::new(),
        };
        assert_eq!(exited.to_string(), "ffmpeg exited (exit status: 1)");
        assert_eq!(exited.detail(), "exit status: 1");
        assert_eq!(
            Exit::Stalled(Duration::from_secs(15)).to_string(),
            "no progress for 15 s"
        );
        assert_eq!(Exit::Restart.to_string(), "restart requested");
    }
}
