//! The program under test ([`RelayProc`]) and its configuration file, on
//! top of the rig's process harness (`relay_rig::process`).

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sys::signal::Signal;
use tokio::process::Command;

use relay_rig::process::{spawn_captured, ChildGuard, Lines};

use super::POLL;

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
