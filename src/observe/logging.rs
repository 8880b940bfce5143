//! Logging: to journald when systemd started us with its journal attached
//! (`JOURNAL_STREAM` is set), else to stderr. Structured fields such as
//! `role` (which FFmpeg child a line is about) become journal fields.
//!
//! The level comes from [`LOG_VAR`] (`RELAY_LOG=debug`, or any
//! `tracing_subscriber` filter such as `RELAY_LOG=warn,relay::pump=debug`),
//! `info` when it is unset or does not parse. relay does not read
//! `RUST_LOG`: an operator's shell may have it set for other programs, and
//! a `relay status` or `relay demo` run from there should not turn verbose.

use tracing_subscriber::{fmt, prelude::*, EnvFilter};

/// The environment variable that sets what relay logs.
pub const LOG_VAR: &str = "RELAY_LOG";

/// The level when [`LOG_VAR`] is unset or unusable.
const DEFAULT_FILTER: &str = "info";

pub fn init() {
    let filter = filter(std::env::var(LOG_VAR).ok().as_deref());
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journald) = tracing_journald::layer() {
            tracing_subscriber::registry()
                .with(filter)
                .with(journald.with_syslog_identifier("relay".into()))
                .init();
            return;
        }
    }
    tracing_subscriber::registry()
        .with(filter)
        .with(
            fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
}

/// The filter for a value of [`LOG_VAR`] (`None`: not set, or not UTF-8).
fn filter(value: Option<&str>) -> EnvFilter {
    value
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(DEFAULT_FILTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::level_filters::LevelFilter;

    #[test]
    fn the_variable_is_relay_log() {
        assert_eq!(LOG_VAR, "RELAY_LOG");
    }

    #[test]
    fn the_level_comes_from_the_variable_else_info() {
        let level = |v: Option<&str>| filter(v).max_level_hint();
        assert_eq!(level(Some("debug")), Some(LevelFilter::DEBUG));
        assert_eq!(level(Some("warn")), Some(LevelFilter::WARN));
        assert_eq!(
            level(Some("warn,relay::pump=trace")),
            Some(LevelFilter::TRACE)
        );
        assert_eq!(level(None), Some(LevelFilter::INFO));
        // A typo does not silence relay: it logs as if the variable were unset.
        assert_eq!(level(Some("debug=verbose=1")), Some(LevelFilter::INFO));
    }
}
