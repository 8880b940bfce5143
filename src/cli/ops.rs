//! Operator commands that talk to a running instance: `relay status`,
//! `relay switch` (through the control socket, see `api.rs`) and
//! `relay zmq` (straight to the output FFmpeg's zmq filter).
//!
//! Each returns the process exit status; what the operator reads goes to
//! stdout, problems to stderr.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::config::{config_dir, Config};
use crate::daemon::show_duration;
use crate::ffmpeg::zmq::{ControlError, Switch};
use crate::observe::api::{self, ClientError, Mode, Reply, Request, Status};

/// Exit status when the instance is not running, as `systemctl status`
/// (LSB "program is not running").
pub const EX_NOT_RUNNING: i32 = 3;
/// Exit status for a refused or failed command.
pub const EX_FAILED: i32 = 1;

/// `relay status`: prints the daemon's state, as text or JSON.
pub async fn status(name: &str, socket: &Path, json: bool) -> i32 {
    let status = match call(name, socket, &Request::Status).await {
        Ok(Reply::Status(status)) => status,
        Ok(other) => return unexpected(other),
        Err(code) => return code,
    };
    if json {
        match serde_json::to_string_pretty(&status) {
            Ok(text) => println!("{text}"),
            Err(err) => {
                eprintln!("relay: {err}");
                return EX_FAILED;
            }
        }
    } else {
        print!("{}", describe(name, &status));
    }
    0
}

/// One instance in `relay status` without a name; the JSON of
/// `relay status --json` then is a list of these.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Listed {
    /// The instance name (`relay@NAME`).
    pub instance: String,
    /// Whether its control socket answered.
    pub running: bool,
    /// What it reported, as for `relay status NAME --json`; `null` if it
    /// does not run.
    pub status: Option<Status>,
    /// Why a socket that exists did not answer, else `null`.
    pub error: Option<String>,
}

/// `relay status` without a name: every instance on the host, one line
/// each, running or not. Instances are the configuration files in the
/// configuration directory and the control sockets in the runtime
/// directory. Exit status 0 whatever they are doing.
pub async fn status_all(json: bool) -> i32 {
    let config_dir = config_dir(&|k| std::env::var(k).ok());
    let runtime_dir = api::runtime_dir();
    let mut listed = Vec::new();
    for name in instance_names(&config_dir, &runtime_dir) {
        let socket = runtime_dir.join(format!("{name}.sock"));
        let entry = match api::call(&socket, &Request::Status).await {
            Ok(Reply::Status(status)) => Listed {
                instance: name,
                running: true,
                status: Some(status),
                error: None,
            },
            Err(ClientError::NotRunning { .. }) => Listed {
                instance: name,
                running: false,
                status: None,
                error: None,
            },
            Ok(other) => Listed {
                instance: name,
                running: false,
                status: None,
                error: Some(format!("unexpected reply: {other:?}")),
            },
            Err(err) => Listed {
                instance: name,
                running: false,
                status: None,
                error: Some(err.to_string()),
            },
        };
        listed.push(entry);
    }
    if json {
        match serde_json::to_string_pretty(&listed) {
            Ok(text) => println!("{text}"),
            Err(err) => {
                eprintln!("relay: {err}");
                return EX_FAILED;
            }
        }
    } else if listed.is_empty() {
        eprintln!(
            "relay: no instances (no NAME.env or NAME.toml in {}, no control socket in {})",
            config_dir.display(),
            runtime_dir.display()
        );
    } else {
        for entry in &listed {
            println!("{}", describe_line(entry));
        }
    }
    0
}

/// The instances on the host, sorted: `NAME.env` and `NAME.toml` in the
/// configuration directory and `NAME.sock` in the runtime directory. The
/// package's `example.env` is not an instance unless one by that name runs.
fn instance_names(config_dir: &Path, runtime_dir: &Path) -> Vec<String> {
    let stems = |dir: &Path, extensions: &[&str]| -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| {
                let path = entry.path();
                let extension = path.extension()?.to_str()?;
                let stem = path.file_stem()?.to_str()?;
                let usable = extensions.contains(&extension) && !stem.is_empty();
                (usable && !stem.starts_with('.')).then(|| stem.to_owned())
            })
            .collect()
    };
    let mut names: BTreeSet<String> = stems(config_dir, &["env", "toml"])
        .into_iter()
        .filter(|name| name != "example")
        .collect();
    names.extend(stems(runtime_dir, &["sock"]));
    names.into_iter().collect()
}

/// One line of `relay status` without a name.
pub fn describe_line(entry: &Listed) -> String {
    let name = &entry.instance;
    match (&entry.status, &entry.error) {
        (Some(s), _) => {
            let publisher = s.publisher.as_deref().unwrap_or("none");
            let uptime = s.output_uptime_s.map_or_else(
                || "not streaming".to_string(),
                |up| format!("up {}", show_duration(Duration::from_secs(up))),
            );
            format!(
                "relay@{name}: {}, publisher {publisher}, output {uptime}",
                s.state.text()
            )
        }
        (None, Some(why)) => format!("relay@{name}: no answer ({why})"),
        (None, None) => format!("relay@{name}: not running"),
    }
}

/// `relay switch`: asks the daemon to override what is on air.
pub async fn switch(name: &str, socket: &Path, to: Mode) -> i32 {
    match call(name, socket, &Request::Switch { to }).await {
        Ok(Reply::Switched { message, .. }) => {
            println!("{message}");
            0
        }
        Ok(Reply::Refused { message }) => {
            eprintln!("relay@{name}: {message}");
            EX_FAILED
        }
        Ok(other) => unexpected(other),
        Err(code) => code,
    }
}

/// `relay zmq`: one raw command to the output's zmq filter, on the port
/// from the instance's configuration; prints FFmpeg's reply.
pub async fn zmq(config: &Config, command: &str) -> i32 {
    if let Err(why) = parsable_by_ffmpeg(command) {
        eprintln!("relay: not sending {command:?}: {why}");
        return EX_FAILED;
    }
    match Switch::new(config.endpoints.zmq_port)
        .command(command)
        .await
    {
        Ok(reply) => {
            println!("{reply}");
            if reply == "0" || reply.starts_with("0 ") {
                0
            } else {
                EX_FAILED
            }
        }
        Err(ControlError::Timeout { endpoint, .. }) => {
            eprintln!(
                "relay: no reply from {endpoint} (ZMQ_PORT of relay@{}): either relay is not \
                 running, or FFmpeg could not parse {command:?} (it does not answer those)",
                config.instance
            );
            EX_FAILED
        }
        Err(err) => {
            eprintln!("relay: {err}");
            EX_FAILED
        }
    }
}

/// Whether FFmpeg's zmq filter can parse `command` as `TARGET COMMAND [ARG]`.
///
/// It must: FFmpeg 5.1 does not just leave such a command unanswered, it
/// aborts (`free(): invalid pointer`, seen with `relay zmq NAME x`), which
/// takes the output, and the platform connection, down. Quotes and
/// backslashes are token syntax to FFmpeg (`av_get_token`); targets and
/// command names never need them, so they are refused there rather than
/// parsed the way FFmpeg would.
fn parsable_by_ffmpeg(command: &str) -> Result<(), &'static str> {
    const DELIMITERS: [char; 5] = [' ', '\x0c', '\t', '\n', '\r'];
    let mut tokens = command.split(DELIMITERS).filter(|t| !t.is_empty());
    let (Some(target), Some(name)) = (tokens.next(), tokens.next()) else {
        return Err(
            "the zmq filter takes TARGET COMMAND [ARG] (e.g. 'streamselect map 1'), \
                    and FFmpeg crashes on anything it cannot parse",
        );
    };
    if [target, name].iter().any(|t| t.contains(['\'', '"', '\\'])) {
        return Err("quotes or backslashes in the target or command name");
    }
    Ok(())
}

/// Sends `request`; on failure prints why and returns the exit status.
async fn call(name: &str, socket: &Path, request: &Request) -> Result<Reply, i32> {
    match api::call(socket, request).await {
        Ok(Reply::Error { message }) => {
            eprintln!("relay@{name}: {message}");
            Err(EX_FAILED)
        }
        Ok(reply) => Ok(reply),
        Err(ClientError::NotRunning { path }) => {
            eprintln!(
                "relay@{name} is not running (no control socket at {})",
                path.display()
            );
            Err(EX_NOT_RUNNING)
        }
        Err(err) => {
            eprintln!("relay@{name}: {err}");
            Err(EX_FAILED)
        }
    }
}

fn unexpected(reply: Reply) -> i32 {
    eprintln!("relay: unexpected reply from the daemon: {reply:?}");
    EX_FAILED
}

/// The human summary of `relay status`.
pub fn describe(name: &str, s: &Status) -> String {
    let mut out = format!("relay@{name}: {}\n", s.state.text());
    if let Some(source) = &s.source {
        out.push_str(&format!("  source:      {source}\n"));
    }
    let publisher = match (&s.publisher, s.publisher_allowed) {
        (Some(addr), Some(false)) => format!("{addr} (refused by ALLOWED_PUBLISHERS)"),
        (Some(addr), _) => addr.clone(),
        (None, _) => "none".to_string(),
    };
    let bitrate = s
        .live_bitrate_bps
        .map(|bps| format!(", {:.1} Mb/s", bps as f64 / 1e6))
        .unwrap_or_default();
    out.push_str(&format!("  publisher:   {publisher}{bitrate}\n"));
    let uptime = s.output_uptime_s.map_or_else(
        || "not streaming (starting or restarting)".to_string(),
        |up| format!("up {}", show_duration(Duration::from_secs(up))),
    );
    out.push_str(&format!(
        "  output:      {uptime}, {} restarts (the encoder)\n",
        s.output_restarts
    ));
    for d in &s.destinations {
        let state = match d.uptime_s {
            Some(up) if d.up => format!("up {}", show_duration(Duration::from_secs(up))),
            _ => "down".to_string(),
        };
        let rate = d
            .bitrate_bps
            .map(|bps| format!(", {:.1} Mb/s", bps as f64 / 1e6))
            .unwrap_or_default();
        let error = match (&d.last_error, d.up) {
            (Some(e), false) => format!("; last error: {e}"),
            _ => String::new(),
        };
        out.push_str(&format!(
            "  → {}: {state}{rate}, {} reconnects{error}\n",
            d.name, d.reconnects
        ));
    }
    out.push_str(&format!("  ingest:      {} restarts\n", s.ingest_restarts));
    let last = s.last_switch.as_ref().map_or_else(
        || "none yet".to_string(),
        |l| format!("to {} {} s ago ({})", l.to, l.seconds_ago, l.reason),
    );
    out.push_str(&format!("  last switch: {last}\n"));
    out.push_str(&format!(
        "  frames:      {} live, {} filler, {} dropped ticks\n",
        s.live_frames, s.filler_frames, s.dropped_ticks
    ));
    if let Some(why) = &s.held_off_air {
        out.push_str(&format!("  held:        {why}\n"));
    }
    let p = &s.policy;
    let low = match (p.low_bitrate_kbps, p.low_bitrate_s) {
        (Some(kbps), Some(secs)) => format!("offline below {kbps} kb/s for {secs} s"),
        _ => "low bitrate check off".to_string(),
    };
    out.push_str(&format!(
        "  policy:      offline after {} ms without frames, returning publisher stable {} s, {low}\n",
        p.offline_after_ms, p.live_stable_s
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::api::{LastSwitch, StateName};

    #[test]
    fn only_commands_ffmpeg_can_parse_are_sent() {
        assert!(parsable_by_ffmpeg("streamselect map 1").is_ok());
        assert!(parsable_by_ffmpeg("  hue\th 90 ").is_ok());
        assert!(parsable_by_ffmpeg("drawtext reinit text='a b'").is_ok());
        for bad in [
            "",
            "   ",
            "streamselect",
            " hue\n",
            "'' map 0",
            "hue \\h 90",
        ] {
            assert!(parsable_by_ffmpeg(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn status_reads_as_a_summary() {
        let status = Status {
            instance: "kick".to_string(),
            state: StateName::ManualOffline,
            publisher: Some("203.0.113.7".to_string()),
            publisher_allowed: Some(true),
            live_bitrate_bps: Some(2_500_000),
            output_uptime_s: Some(3725),
            output_restarts: 1,
            ingest_restarts: 2,
            last_switch: Some(LastSwitch {
                to: "offline".to_string(),
                seconds_ago: 12,
                reason: "manual: relay switch offline".to_string(),
                kind: "manual".to_string(),
            }),
            live_frames: 10,
            filler_frames: 3,
            dropped_ticks: 0,
            starved_holds: 0,
            held_off_air: None,
            held_kind: None,
            output_pid: Some(42),
            ingest_pid: None,
            source: None,
            reloads: 0,
            last_reload: None,
            last_output_exit: None,
            stat_page_ok: true,
            switch_failures: 0,
            offline_cache: None,
            destinations: vec![
                crate::observe::api::DestinationStatus {
                    name: "kick".to_string(),
                    url: "rtmps://h.example/app/****".to_string(),
                    up: true,
                    uptime_s: Some(60),
                    reconnects: 0,
                    last_error: None,
                    bitrate_bps: Some(3_100_000),
                    pid: Some(43),
                    dropped_gops: 0,
                },
                crate::observe::api::DestinationStatus {
                    name: "youtube".to_string(),
                    url: "rtmp://y.example/live2/****".to_string(),
                    up: false,
                    uptime_s: None,
                    reconnects: 3,
                    last_error: Some("ffmpeg exited (exit status: 1)".to_string()),
                    bitrate_bps: None,
                    pid: None,
                    dropped_gops: 0,
                },
            ],
            policy: crate::observe::api::Policy {
                offline_after_ms: 300,
                live_stable_s: 3.0,
                low_bitrate_kbps: None,
                low_bitrate_s: None,
            },
        };
        let text = describe("kick", &status);
        assert_eq!(
            text,
            "relay@kick: manual offline\n\
             \x20 publisher:   203.0.113.7, 2.5 Mb/s\n\
             \x20 output:      up 1h02m, 1 restarts (the encoder)\n\
             \x20 → kick: up 1m00s, 3.1 Mb/s, 0 reconnects\n\
             \x20 → youtube: down, 3 reconnects; last error: ffmpeg exited (exit status: 1)\n\
             \x20 ingest:      2 restarts\n\
             \x20 last switch: to offline 12 s ago (manual: relay switch offline)\n\
             \x20 frames:      10 live, 3 filler, 0 dropped ticks\n\
             \x20 policy:      offline after 300 ms without frames, returning publisher stable 3 s, low bitrate check off\n"
        );
    }
}
