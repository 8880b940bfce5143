//! FFmpeg children: spawning with extra pipe fds, forwarding their log to
//! ours, and stopping them gracefully.
//!
//! Every child is put in its own process group (a Ctrl+C in the terminal
//! reaches relay only, which then stops the children in order) and gets
//! `PR_SET_PDEATHSIG(SIGKILL)`, so no FFmpeg outlives a daemon that was
//! SIGKILLed. Stopping is always SIGTERM first — FFmpeg then closes its RTMP
//! session properly — and SIGKILL only after the grace period.

use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt, FdMapping};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::unix::pipe;
use tracing::{debug, error, info, warn};

/// Pipes we read are enlarged to this so a raw frame moves in a few
/// syscalls instead of dozens of 64 KiB ones (Linux's default ceiling for
/// unprivileged processes is 1 MiB).
const READ_PIPE_SIZE: usize = 1 << 20;

/// When a child still runs after the first SIGTERM, a second one follows.
const SECOND_SIGTERM_AFTER: Duration = Duration::from_millis(300);

/// How many of a child's last warning/error lines are kept to explain its exit.
const LAST_LINES: usize = 4;

/// Which child a log line or event is about; logged as the `role` field.
pub type Role = &'static str;

/// A pipe whose write end we keep and whose read end a child gets as fd N.
pub struct WritePipe {
    pub ours: pipe::Sender,
    pub theirs: OwnedFd,
}

/// A pipe whose read end we keep and whose write end a child gets as fd N.
pub struct ReadPipe {
    pub ours: pipe::Receiver,
    pub theirs: OwnedFd,
}

/// A pipe the daemon writes and a child reads, holding about `size` bytes.
///
/// Whatever waits in a pipe to the output is latency on air, so these are
/// sized to what one write needs, not as large as possible.
pub fn write_pipe(size: usize) -> io::Result<WritePipe> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    resize(&write, size);
    Ok(WritePipe {
        ours: pipe::Sender::from_owned_fd(write)?,
        theirs: read,
    })
}

/// A pipe a child writes and the daemon reads.
pub fn read_pipe() -> io::Result<ReadPipe> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    resize(&read, READ_PIPE_SIZE);
    Ok(ReadPipe {
        ours: pipe::Receiver::from_owned_fd(read)?,
        theirs: write,
    })
}

fn resize(fd: &OwnedFd, size: usize) {
    // The kernel rounds up to a power-of-two number of pages. Best effort:
    // the default size only costs more syscalls, or more latency.
    let size = size.clamp(4096, READ_PIPE_SIZE) as i32;
    let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(size));
}

/// What to run.
pub struct Spec {
    pub role: Role,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// (our end of a pipe for the child, the fd number it gets in the child)
    pub fds: Vec<(OwnedFd, RawFd)>,
    /// Capture stdout (the output's `-progress` stream) instead of discarding it.
    pub stdout: bool,
    /// Strings masked out of forwarded log lines (the stream key).
    pub secrets: Vec<String>,
}

/// A running child. Dropping it kills the child (SIGKILL); call
/// [`Running::stop`] for the graceful path.
pub struct Running {
    pub role: Role,
    pub pid: u32,
    child: tokio::process::Child,
    pub stdout: Option<tokio::process::ChildStdout>,
    last_lines: Arc<Mutex<Vec<String>>>,
    /// Set once we asked it to stop: what it logs while dying (I/O errors
    /// on the connections we cut) is expected and logged at debug level.
    stopping: Arc<AtomicBool>,
}

/// Spawns the child. Its stderr is forwarded to our log line by line.
pub fn spawn(spec: Spec) -> io::Result<Running> {
    let mut cmd = tokio::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .stdin(Stdio::null())
        .stdout(if spec.stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mappings = spec
        .fds
        .into_iter()
        .map(|(parent_fd, child_fd)| FdMapping {
            parent_fd,
            child_fd,
        })
        .collect();
    cmd.fd_mappings(mappings)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let parent = std::process::id();
    // SAFETY: only async-signal-safe calls (setpgid, prctl, getppid) run
    // between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The parent may have died before prctl took effect.
            if nix::unistd::getppid().as_raw() as u32 != parent {
                return Err(io::Error::other("parent exited"));
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    // `cmd` holds the child's pipe ends until dropped; drop it now so that
    // our reads see EOF when the child exits.
    drop(cmd);
    let pid = child.id().unwrap_or(0);
    let last_lines = Arc::new(Mutex::new(Vec::new()));
    let stopping = Arc::new(AtomicBool::new(false));
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(forward_log(
            spec.role,
            pid,
            stderr,
            spec.secrets,
            last_lines.clone(),
            stopping.clone(),
        ));
    }
    debug!(role = spec.role, pid, "started");
    Ok(Running {
        role: spec.role,
        pid,
        stdout: child.stdout.take(),
        child,
        last_lines,
        stopping,
    })
}

impl Running {
    /// Waits for the child to exit by itself.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// The child's last warning or error lines, to explain why it exited.
    pub fn last_lines(&self) -> String {
        self.last_lines.lock().unwrap().join(" | ")
    }

    /// SIGTERM, then SIGKILL if it has not exited after `grace`.
    ///
    /// FFmpeg blocked in a network read (an idle RTMP player, a dead
    /// destination) only notices a SIGTERM at its next packet: once it is
    /// running, its I/O interrupt callback needs a second signal. So a
    /// second SIGTERM follows shortly; SIGKILL stays the last resort.
    pub async fn stop(mut self, grace: Duration) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        self.stopping.store(true, Ordering::Relaxed);
        let pid = Pid::from_raw(self.pid as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let first = grace.min(SECOND_SIGTERM_AFTER);
        if let Ok(status) = tokio::time::timeout(first, self.child.wait()).await {
            return status.ok();
        }
        let _ = kill(pid, Signal::SIGTERM);
        match tokio::time::timeout(grace - first, self.child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                warn!(
                    role = self.role,
                    pid = self.pid,
                    grace_s = grace.as_secs_f64(),
                    "did not exit after SIGTERM; sending SIGKILL"
                );
                let _ = self.child.kill().await;
                self.child.wait().await.ok()
            }
        }
    }
}

/// FFmpeg warnings that relay's design causes on purpose: short input
/// queues (latency) and raw inputs without a channel layout.
const BENIGN: &[&str] = &["Thread message queue blocking", "Guessed Channel Layout"];

/// How serious an FFmpeg log line is, from the `[level]` tag that
/// `-loglevel level+…` puts in front of it.
fn classify(line: &str) -> Option<tracing::Level> {
    if BENIGN.iter().any(|b| line.contains(b)) {
        Some(tracing::Level::DEBUG)
    } else if line.contains("[fatal]") || line.contains("[panic]") || line.contains("[error]") {
        Some(tracing::Level::ERROR)
    } else if line.contains("[warning]") {
        Some(tracing::Level::WARN)
    } else if line.starts_with("frame=") || line.starts_with("size=") {
        // Periodic statistics: health comes from -progress instead.
        None
    } else {
        Some(tracing::Level::INFO)
    }
}

/// How many FFmpeg lines each child may log per [`LOG_WINDOW`] at their own
/// level. A broken or hostile stream makes FFmpeg complain about every
/// frame, which would flood the journal, and journald's rate limit would
/// then drop relay's own lines too. The rest go to debug, counted.
const LOG_BURST: u32 = 20;
const LOG_WINDOW: Duration = Duration::from_secs(10);

/// The per-child budget of forwarded lines.
struct LogBudget {
    window_start: Instant,
    used: u32,
    suppressed: u64,
}

impl LogBudget {
    fn new(now: Instant) -> LogBudget {
        LogBudget {
            window_start: now,
            used: 0,
            suppressed: 0,
        }
    }

    /// Whether a line at `now` may be logged at its level, and how many
    /// lines the window that just ended held back (to be said once).
    fn admit(&mut self, now: Instant) -> (bool, Option<u64>) {
        let mut ended = None;
        if now.duration_since(self.window_start) >= LOG_WINDOW {
            ended = (self.suppressed > 0).then_some(self.suppressed);
            *self = LogBudget::new(now);
        }
        if self.used < LOG_BURST {
            self.used += 1;
            (true, ended)
        } else {
            self.suppressed += 1;
            (false, ended)
        }
    }

    /// What is still held back when the log ends.
    fn finish(&self) -> Option<u64> {
        (self.suppressed > 0).then_some(self.suppressed)
    }
}

fn report_suppressed(role: Role, pid: u32, count: u64) {
    warn!(
        role,
        pid,
        "ffmpeg: {count} more lines within {} s not logged ({}=debug shows them)",
        LOG_WINDOW.as_secs(),
        crate::observe::logging::LOG_VAR
    );
}

/// Replaces every secret in `line` by `****`.
pub fn mask(line: &str, secrets: &[String]) -> String {
    let mut out = line.to_string();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(s.as_str(), "****");
    }
    out
}

async fn forward_log(
    role: Role,
    pid: u32,
    stderr: impl AsyncRead + Unpin,
    secrets: Vec<String>,
    last: Arc<Mutex<Vec<String>>>,
    stopping: Arc<AtomicBool>,
) {
    let mut lines = BufReader::new(stderr).lines();
    let mut budget = LogBudget::new(Instant::now());
    while let Ok(Some(line)) = lines.next_line().await {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some(mut level) = classify(line) else {
            continue;
        };
        if stopping.load(Ordering::Relaxed) {
            level = tracing::Level::DEBUG;
        }
        if level < tracing::Level::DEBUG {
            let (admitted, ended) = budget.admit(Instant::now());
            if let Some(count) = ended {
                report_suppressed(role, pid, count);
            }
            if !admitted {
                level = tracing::Level::DEBUG;
            }
        }
        let text = mask(line, &secrets);
        if level <= tracing::Level::WARN {
            let mut last = last.lock().unwrap();
            if last.len() == LAST_LINES {
                last.remove(0);
            }
            last.push(text.clone());
        }
        match level {
            tracing::Level::ERROR => error!(role, pid, "ffmpeg: {text}"),
            tracing::Level::WARN => warn!(role, pid, "ffmpeg: {text}"),
            tracing::Level::INFO => info!(role, pid, "ffmpeg: {text}"),
            _ => debug!(role, pid, "ffmpeg: {text}"),
        }
    }
    if let Some(count) = budget.finish() {
        report_suppressed(role, pid, count);
    }
}

/// The raw fd number a mapping gives the child, for building `pipe:N` URLs.
pub fn fd_url(fd: RawFd) -> String {
    format!("pipe:{fd}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_lines_is_cut_to_a_burst_per_window_and_counted() {
        let t0 = Instant::now();
        let mut b = LogBudget::new(t0);
        let admitted = (0..100).filter(|_| b.admit(t0).0).count();
        assert_eq!(admitted, LOG_BURST as usize);
        assert_eq!(b.finish(), Some(100 - u64::from(LOG_BURST)));
        // The next window starts afresh and reports the last one's count once.
        let t1 = t0 + LOG_WINDOW;
        assert_eq!(b.admit(t1), (true, Some(100 - u64::from(LOG_BURST))));
        assert_eq!(b.admit(t1), (true, None));
        assert_eq!(b.finish(), None);
    }

    #[test]
    fn stats_lines_are_not_forwarded() {
        assert_eq!(classify("frame=  100 fps= 30 q=28.0"), None);
        assert_eq!(
            classify("[flv @ 0x55] [error] Failed to update header"),
            Some(tracing::Level::ERROR)
        );
        assert_eq!(
            classify("[warning] Past duration too large"),
            Some(tracing::Level::WARN)
        );
    }

    #[test]
    fn secrets_are_masked() {
        let s = vec!["sk_live_123".to_string(), String::new()];
        assert_eq!(
            mask("rtmps://x/app/sk_live_123: I/O error", &s),
            "rtmps://x/app/****: I/O error"
        );
    }
}
