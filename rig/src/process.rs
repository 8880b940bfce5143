//! Child processes: ownership (killed and reaped on drop), output capture
//! (echoed as `[label] line` and kept) and process-table look-ups.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// Lines a child printed (stdout and stderr, in arrival order).
pub type Lines = Arc<Mutex<Vec<String>>>;

static ECHO: AtomicBool = AtomicBool::new(true);

/// Whether children's output is echoed to stderr (default: yes). A test
/// wants it (cargo shows it when the test fails); the benchmark prints its
/// own progress there and turns it off.
pub fn set_echo(on: bool) {
    ECHO.store(on, Ordering::Relaxed);
}

/// What [`capture_lines`] does with a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineUse {
    /// Echo it (see [`set_echo`]) and keep it.
    Show,
    /// Keep it without echoing it.
    Keep,
    /// Neither: a line already consumed by the caller (e.g. one per frame).
    Drop,
}

/// Reads `reader` line by line into `lines`, echoing each to stderr as
/// `[label] line`, unless `on_line`, which sees each line first, says
/// otherwise.
pub fn capture_lines<R>(
    reader: R,
    label: String,
    lines: Lines,
    mut on_line: impl FnMut(&str) -> LineUse + Send + 'static,
) -> JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut reader = BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf);
                    // ffmpeg ends progress lines with '\r'; split those too.
                    for line in text.split(['\n', '\r']).filter(|l| !l.trim().is_empty()) {
                        let usage = on_line(line);
                        if usage == LineUse::Show && ECHO.load(Ordering::Relaxed) {
                            eprintln!("[{label}] {line}");
                        }
                        if usage != LineUse::Drop {
                            lines.lock().unwrap().push(line.to_string());
                        }
                    }
                }
            }
        }
    })
}

/// Owns a child process: killed (SIGKILL) and reaped when dropped.
///
/// tokio's `kill_on_drop` only sends the signal and leaves reaping to a
/// background reaper; this waits (briefly, blocking) for the exit so that no
/// zombie and no still-running process survives the owner.
pub struct ChildGuard {
    child: Option<Child>,
    label: String,
}

impl ChildGuard {
    /// Takes ownership of `child`; `label` names it in errors.
    pub fn new(child: Child, label: impl Into<String>) -> ChildGuard {
        ChildGuard {
            child: Some(child),
            label: label.into(),
        }
    }

    /// The pid while the child has not been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Sends `sig`; an error if the child was already reaped.
    pub fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("{} has already exited", self.label))?;
        kill(Pid::from_raw(pid as i32), sig).with_context(|| format!("{sig} to {}", self.label))
    }

    /// Waits up to `timeout` for the exit.
    pub async fn wait_timeout(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let label = self.label.clone();
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| anyhow!("{label} is gone"))?;
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(status) => status.with_context(|| format!("waiting for {label}")),
            Err(_) => bail!("{label} did not exit within {timeout:?}"),
        }
    }

    /// SIGKILL and wait for the exit.
    pub async fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        let label = self.label.clone();
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| anyhow!("{label} is gone"))?;
        let _ = child.start_kill();
        child
            .wait()
            .await
            .with_context(|| format!("waiting for {label}"))
    }

    /// Whether the child still runs (not yet exited; never reaps).
    pub fn is_running(&self) -> bool {
        self.pid().is_some_and(process_is_alive)
    }

    fn kill_and_reap_blocking(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = child.start_kill();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        eprintln!("[harness] {} did not die after SIGKILL", self.label);
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill_and_reap_blocking();
    }
}

/// Whether a process exists and is not a zombie.
pub fn process_is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(stat_state_and_ppid(&stat), Some(('Z' | 'X', _))),
        Err(_) => false,
    }
}

/// State letter and parent pid from the text of `/proc/PID/stat`. The command
/// name in parentheses may contain spaces and parentheses, so fields are
/// counted after the last ')'.
fn stat_state_and_ppid(stat: &str) -> Option<(char, u32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Every descendant (children, grandchildren, ...) of `pid`, from `/proc`.
pub fn child_pids_of(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
                if let Some((_, ppid)) = stat_state_and_ppid(&stat) {
                    parent_of.push((p, ppid));
                }
            }
        }
    }
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(p, ppid) in &parent_of {
            if ppid == parent && !found.contains(&p) {
                found.push(p);
                frontier.push(p);
            }
        }
    }
    found.sort_unstable();
    found
}

/// Pids of live `ffmpeg` processes with an argument containing `substr`.
///
/// Other programs on this machine may run ffmpeg too: pass something unique
/// to the test, such as a private nginx's port or a temporary path.
pub fn ffmpeg_processes_with_arg(substr: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let mut args = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned());
        let Some(argv0) = args.next() else { continue };
        let is_ffmpeg = Path::new(&argv0).file_name() == Some(OsStr::new("ffmpeg"));
        if is_ffmpeg && args.any(|a| a.contains(substr)) && process_is_alive(pid) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

/// The command name (`/proc/PID/comm`) of a process.
pub fn process_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// Spawns `cmd` as a labelled child: stdout and stderr captured into one
/// [`Lines`] and echoed as `[label] line`; killed and reaped when the
/// [`ChildGuard`] is dropped.
pub fn spawn_captured(mut cmd: Command, label: &str) -> anyhow::Result<(ChildGuard, Lines)> {
    let program = cmd.as_std().get_program().to_owned();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", program.to_string_lossy()))?;
    let lines: Lines = Arc::default();
    if let Some(out) = child.stdout.take() {
        capture_lines(out, label.to_string(), lines.clone(), |_| LineUse::Show);
    }
    if let Some(err) = child.stderr.take() {
        capture_lines(err, label.to_string(), lines.clone(), |_| LineUse::Show);
    }
    Ok((ChildGuard::new(child, label), lines))
}
