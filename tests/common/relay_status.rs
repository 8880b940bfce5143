//! What a running relay says about itself: the reply behind
//! `relay status --json`, typed ([`relay::api::Status`]), and waits on it.
//!
//! Tests assert through this rather than through log wording: the status
//! fields are a stable interface for operators and scripts, the log text is
//! not. The request goes over the instance's control socket with the same
//! client the CLI uses (`relay::api::call`), and `relay status --json` prints
//! exactly that struct; asking the socket directly spares a process per poll
//! on a busy machine and keeps the fields typed. `operating.rs` runs the
//! real CLI and checks its JSON.
//!
//! The socket is found as relay finds it: `NAME.sock` in its runtime
//! directory, NAME being the stem of its `--config` file (or the NAME of
//! `relay run NAME`) and the directory the one its environment names
//! (`RELAY_RUNTIME_DIR`, which [`RelayProc::run`] always sets), both read
//! from the running process.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use relay::api::{Reply, Request};
pub use relay::api::{StateName, Status};

use super::process::RelayProc;

/// How often [`StatusExt::wait_for_status`] asks.
const STATUS_POLL: Duration = Duration::from_millis(100);

/// `relay status` for a [`RelayProc`] running the relay binary.
#[allow(async_fn_in_trait)]
pub trait StatusExt {
    /// The control socket of this relay.
    fn control_socket(&self) -> anyhow::Result<PathBuf>;

    /// What `relay status --json` shows now.
    async fn status(&self) -> anyhow::Result<Status>;

    /// Waits until the status satisfies `check` (`what` says what that
    /// means, for the error); returns that status. Fails at once if relay
    /// exited, and on timeout with the last status and relay's last lines.
    async fn wait_for_status(
        &self,
        what: &str,
        check: impl FnMut(&Status) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Status>;
}

impl StatusExt for RelayProc {
    fn control_socket(&self) -> anyhow::Result<PathBuf> {
        let pid = self.pid();
        let environ = std::fs::read(format!("/proc/{pid}/environ"))
            .with_context(|| format!("relay {pid} is not running"))?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))?;
        let var = |name: &str| {
            let prefix = format!("{name}=");
            nul_separated(&environ)
                .filter_map(|kv| kv.strip_prefix(prefix.as_str()).map(str::to_owned))
                .last()
                .filter(|v| !v.is_empty())
        };
        // As relay::api::runtime_dir decides, from relay's own environment.
        let runtime_dir = var("RUNTIME_DIRECTORY")
            .and_then(|dirs| dirs.split(':').next().map(str::to_owned))
            .or_else(|| var("RELAY_RUNTIME_DIR"))
            .unwrap_or_else(|| relay::api::DEFAULT_RUNTIME_DIR.to_string());
        // `relay run --config FILE`: the instance is the file's stem;
        // `relay run NAME`: NAME.
        let args: Vec<&str> = nul_separated(&cmdline).collect();
        let after = |flag: &str| {
            let i = args.iter().position(|a| *a == flag)?;
            args.get(i + 1).copied()
        };
        let name = match after("--config") {
            Some(config) => Path::new(config)
                .file_stem()
                .context("config file without a name")?
                .to_string_lossy()
                .into_owned(),
            None => after("run")
                .with_context(|| format!("not `relay run`: {args:?}"))?
                .to_string(),
        };
        Ok(Path::new(&runtime_dir).join(format!("{name}.sock")))
    }

    async fn status(&self) -> anyhow::Result<Status> {
        let socket = self.control_socket()?;
        match relay::api::call(&socket, &Request::Status).await {
            Ok(Reply::Status(status)) => Ok(status),
            Ok(other) => bail!("relay answered a status request with {other:?}"),
            Err(e) => Err(anyhow::Error::new(e).context("relay status")),
        }
    }

    async fn wait_for_status(
        &self,
        what: &str,
        mut check: impl FnMut(&Status) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Status> {
        let deadline = Instant::now() + timeout;
        let mut last: Option<Status> = None;
        let mut last_err = String::new();
        loop {
            match self.status().await {
                Ok(status) if check(&status) => return Ok(status),
                Ok(status) => last = Some(status),
                Err(e) => last_err = format!("{e:#}"),
            }
            if !self.is_running() || Instant::now() >= deadline {
                let shown = match &last {
                    Some(s) => serde_json::to_string_pretty(s)?,
                    None => format!("no status ({last_err})"),
                };
                let logs = self.logs();
                let recent = &logs[logs.len().saturating_sub(20)..];
                let why = if self.is_running() {
                    format!("not within {timeout:?}")
                } else {
                    "relay exited".to_string()
                };
                bail!(
                    "relay status never showed {what} ({why}); last status:\n{shown}\nrelay's last lines:\n{}",
                    recent.join("\n")
                );
            }
            tokio::time::sleep(STATUS_POLL).await;
        }
    }
}

fn nul_separated(raw: &[u8]) -> impl Iterator<Item = &str> {
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .filter_map(|a| std::str::from_utf8(a).ok())
}

/// The output FFmpeg runs and has reported progress (`output_uptime_s`).
pub fn output_streaming(s: &Status) -> bool {
    s.output_uptime_s.is_some()
}

/// The live feed is on air, by the policy or by `relay switch live`.
pub fn live_on_air(s: &Status) -> bool {
    matches!(s.state, StateName::Live | StateName::ManualLive)
}

/// The offline video is on air: nobody is live, a publisher's frames flow
/// but are not on air yet (`going_live`, held off air), or by
/// `relay switch offline`.
pub fn offline_on_air(s: &Status) -> bool {
    !live_on_air(s)
}

/// The last switch put `to` (`live`, `offline`) on air, for `kind`
/// (`publisher_live`, `frames_stopped`, `manual`, …).
pub fn last_switch_is(s: &Status, to: &str, kind: &str) -> bool {
    s.last_switch
        .as_ref()
        .is_some_and(|l| l.to == to && l.kind == kind)
}

/// The last reload's outcome (`unchanged`, `applied`, `new_offline_video`,
/// `restarted`, `rejected`), if relay reloaded at all.
pub fn last_reload_outcome(s: &Status) -> Option<&str> {
    s.last_reload.as_ref().map(|r| r.outcome.as_str())
}

/// No switch of what is on air since `since`: the last one, if any, is at
/// least that old (`seconds_ago` is in whole seconds, hence the second of
/// slack).
pub fn no_switch_since(s: &Status, since: Instant) -> bool {
    s.last_switch
        .as_ref()
        .is_none_or(|l| Duration::from_secs(l.seconds_ago + 1) >= since.elapsed())
}
