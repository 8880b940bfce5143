//! Telling systemd how we are: `READY=1` once the output streams,
//! `WATCHDOG=1` while it makes progress, and a one-line `STATUS=`.
//! Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op.

use sd_notify::NotifyState;
use tracing::debug;

pub fn ready() {
    send(&[NotifyState::Ready]);
}

pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

pub fn status(line: &str) {
    send(&[NotifyState::Status(line)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

fn send(state: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(err) = sd_notify::notify(state) {
        debug!(%err, "sd_notify failed");
    }
}
