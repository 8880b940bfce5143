//! Child processes: ownership (killed and reaped on drop), output capture,
//! the program under test ([`RelayProc`]) and process-table look-ups.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::POLL;

/// Lines a child printed (stdout and stderr, in arrival order).
pub type Lines = Arc<Mutex<Vec<String>>>;

/// Reads `reader` line by line into `lines`, echoing each to stderr as
/// `[label] line` unless `on_line`, which sees each line first, says false.
pub(super) fn capture_lines<R>(
    reader: R,
    label: String,
    lines: Lines,
    mut on_line: impl FnMut(&str) -> bool + Send + 'static,
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
                        if on_line(line) {
                            eprintln!("[{label}] {line}");
                        }
                        lines.lock().unwrap().push(line.to_string());
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
    pub(super) fn new(child: Child, label: impl Into<String>) -> ChildGuard {
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

/// Spawns `cmd` with stdout and stderr captured into one [`Lines`].
pub(super) fn spawn_captured(mut cmd: Command, label: &str) -> anyhow::Result<(ChildGuard, Lines)> {
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
        capture_lines(out, label.to_string(), lines.clone(), |_| true);
    }
    if let Some(err) = child.stderr.take() {
        capture_lines(err, label.to_string(), lines.clone(), |_| true);
    }
    Ok((ChildGuard::new(child, label), lines))
}

/// A program under test, normally the relay binary, with its output
/// captured line by line.
pub struct RelayProc {
    child: ChildGuard,
    lines: Lines,
    label: String,
}

impl RelayProc {
    /// Runs `relay run --config CONFIG` with `env` added to the environment.
    /// Its control socket goes beside the config file (unless `env` sets
    /// RELAY_RUNTIME_DIR), so tests running side by side never share one.
    pub fn run(config: &Path, env: &[(&str, &str)]) -> anyhow::Result<RelayProc> {
        let args = [OsString::from("run"), "--config".into(), config.into()];
        let runtime_dir = config
            .parent()
            .and_then(|d| d.to_str())
            .unwrap_or(".")
            .to_string();
        let mut all: Vec<(&str, &str)> = vec![("RELAY_RUNTIME_DIR", &runtime_dir)];
        all.extend_from_slice(env);
        RelayProc::spawn(env!("CARGO_BIN_EXE_relay"), args, &all, "relay")
    }

    /// Runs any program with `args` and `env` added to the environment;
    /// its output is echoed as `[label] ...`.
    pub fn spawn<I, A>(
        program: impl AsRef<OsStr>,
        args: I,
        env: &[(&str, &str)],
        label: &str,
    ) -> anyhow::Result<RelayProc>
    where
        I: IntoIterator<Item = A>,
        A: AsRef<OsStr>,
    {
        let mut cmd = Command::new(program);
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let (child, lines) = spawn_captured(cmd, label)?;
        Ok(RelayProc {
            child,
            lines,
            label: label.to_string(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.pid().unwrap_or(0)
    }

    /// Every line printed so far (stdout and stderr).
    pub fn logs(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// How many lines were printed so far: a mark for
    /// [`wait_for_log_since`](Self::wait_for_log_since).
    pub fn log_mark(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// Waits for a line containing `needle`, printed at any time.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        self.wait_for_log_since(0, needle, timeout)
            .await
            .map(|_| ())
    }

    /// Waits for a line containing `needle` among those after `mark`;
    /// returns the line.
    pub async fn wait_for_log_since(
        &self,
        mark: usize,
        needle: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let lines = self.lines.lock().unwrap();
                if let Some(line) = lines.iter().skip(mark).find(|l| l.contains(needle)) {
                    return Ok(line.clone());
                }
            }
            if Instant::now() >= deadline {
                let lines = self.logs();
                let recent = &lines[lines.len().saturating_sub(20)..];
                bail!(
                    "{} printed no line containing {needle:?} within {timeout:?}; last lines:\n{}",
                    self.label,
                    recent.join("\n")
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Sends a signal.
    pub fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        self.child.signal(sig)
    }

    /// SIGTERM, then waits for the exit; an error (and SIGKILL) if it takes
    /// longer than `timeout`.
    pub async fn sigterm_and_wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        self.wait_exit(timeout).await
    }

    /// Waits for the exit; an error (and SIGKILL) if it takes longer than
    /// `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        match self.child.wait_timeout(timeout).await {
            Ok(status) => Ok(status),
            Err(e) => {
                let _ = self.child.kill().await;
                Err(e)
            }
        }
    }

    /// Whether it still runs.
    pub fn is_running(&self) -> bool {
        self.child.is_running()
    }
}

/// Writes `KEY=VALUE` lines (no quoting) to `dir/relay.env`, mode 0600 as
/// relay requires of a file holding a stream key; returns its path.
/// Unless `pairs` sets it, `PUBLISH_AUTH_PORT=0` is added: tests never take
/// the fixed default port of the on_publish endpoint.
pub fn write_env_file(dir: &Path, pairs: &[(&str, &str)]) -> anyhow::Result<PathBuf> {
    let path = dir.join("relay.env");
    let mut text = String::new();
    for (k, v) in pairs {
        anyhow::ensure!(
            !k.contains(['=', '\n']) && !v.contains('\n'),
            "cannot write {k:?}={v:?} as one line"
        );
        text.push_str(&format!("{k}={v}\n"));
    }
    if !pairs.iter().any(|(k, _)| *k == "PUBLISH_AUTH_PORT") {
        text.push_str("PUBLISH_AUTH_PORT=0\n");
    }
    write_private(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Writes `text` to `path` with mode 0600 (replacing any file there): relay
/// refuses a configuration file holding a key that every user may read.
pub fn write_private(path: &Path, text: impl AsRef<[u8]>) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(text.as_ref())
}
