//! The command line: `relay run NAME`, `relay run --config FILE`, `relay demo`,
//! and the operator commands `relay status|switch|zmq|check` (see `ops.rs`
//! and `check.rs`). `docs.rs` turns this definition and the key table into
//! the manual pages and shell completions the package installs.
//!
//! Configuration problems are found before anything starts and end the
//! process with one line naming the key or file, and exit status 78
//! (EX_CONFIG), which the systemd unit treats as "do not restart".

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tracing::error;

use crate::config::{Config, Source, EX_CONFIG};
use crate::daemon::instance;
use crate::ffmpeg::preflight;
use crate::observe::api::{self, Mode};
use crate::observe::logging;

pub mod check;
pub mod demo;
pub mod docs;
pub mod ops;

#[derive(Debug, Parser)]
#[command(
    name = "relay",
    version,
    about = "Keeps one RTMP(S) output alive and switches it between a live feed and an offline video"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one relay instance in the foreground (what relay@NAME.service runs).
    Run {
        /// Instance name: reads /etc/relay/NAME.toml and/or NAME.env
        /// (the directory can be changed with RELAY_CONFIG_DIR).
        #[arg(required_unless_present = "config", conflicts_with = "config")]
        name: Option<String>,
        /// Read this .toml or .env file instead.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Show what a running instance has on air and how it is doing
    /// (exit status 3 if it is not running); without a name, one line for
    /// every instance on the host, running or not.
    Status {
        /// Instance name: its control socket is NAME.sock in the runtime
        /// directory ($RUNTIME_DIRECTORY, $RELAY_RUNTIME_DIR or /run/relay).
        /// Without it: every NAME.env or NAME.toml in the configuration
        /// directory and every control socket in the runtime directory.
        name: Option<String>,
        /// Print stable JSON (field names documented in `relay::api`).
        #[arg(long)]
        json: bool,
        /// Use this control socket instead.
        #[arg(long, value_name = "PATH", requires = "name")]
        socket: Option<PathBuf>,
    },
    /// Override what is on air until `relay switch NAME auto`.
    Switch {
        /// Instance name (see `relay status`).
        name: String,
        /// `live` (refused unless live frames flow), `offline`, or `auto`.
        #[arg(value_enum)]
        to: Mode,
        /// Use this control socket instead.
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
    /// Send one raw command to the output FFmpeg's zmq filter, on the
    /// instance's ZMQ_PORT, and print the reply (to change what is on air,
    /// use `relay switch`).
    ///
    /// relay is not told, and it goes on feeding the output's inputs for
    /// what it has on air. 'streamselect map 1' selects the offline input
    /// of the picture only ('astreamselect map 1' is the sound), and while
    /// live is on air relay writes the live frame to that input too, so the
    /// live picture stays on air. relay's next switch, or an output restart,
    /// selects what relay has on air again. Only TARGET COMMAND [ARG] is
    /// sent: FFmpeg 5.1 crashes on a command it cannot parse.
    Zmq {
        /// NAME COMMAND, or only COMMAND with --config.
        #[arg(num_args = 1..=2, required = true, value_name = "[NAME] COMMAND")]
        args: Vec<String>,
        /// Read this .toml or .env file instead of NAME's configuration.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Check the configuration, FFmpeg, the offline video and the stat
    /// page without starting anything (exit 0 if all ok, 78 if the
    /// configuration does not load, else 1).
    Check {
        /// Instance name, as for `relay run`.
        #[arg(required_unless_present = "config", conflicts_with = "config")]
        name: Option<String>,
        /// Read this .toml or .env file instead.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Run relay on a self-contained demo: a private nginx-rtmp on loopback,
    /// a generated offline video, output to a local preview stream.
    Demo {
        /// Output height (16:9).
        #[arg(long, default_value_t = 720)]
        res: u32,
    },
    /// Write the manual pages, shell completions and copyright file the
    /// package installs into DIR (see `docs.rs`).
    #[command(hide = true)]
    GenerateDocs {
        /// Where to write them: `packaging` in the source tree.
        dir: PathBuf,
    },
}

/// The command line's definition, for the manual page and the completions.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command()
}

pub use crate::daemon::instance::EX_SOFTWARE;

/// Runs the command line; returns the process exit status.
pub fn main() -> i32 {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. } | Command::Demo { .. }) {
        die_quietly_on_closed_stdout();
    }
    logging::init();
    match cli.command {
        Command::Run { name, config } => {
            let source = match (name, config) {
                (_, Some(path)) => Source::File(path),
                (Some(name), None) => Source::Instance(name),
                (None, None) => unreachable!("clap requires one"),
            };
            let config = match Config::load(&source) {
                Ok(c) => c,
                Err(err) => return config_error(err),
            };
            run(source, config)
        }
        Command::Status {
            name: Some(name),
            json,
            socket,
        } => {
            let (name, socket) = instance_socket(name, socket);
            runtime().block_on(ops::status(&name, &socket, json))
        }
        Command::Status {
            name: None, json, ..
        } => runtime().block_on(ops::status_all(json)),
        Command::Switch { name, to, socket } => {
            let (name, socket) = instance_socket(name, socket);
            runtime().block_on(ops::switch(&name, &socket, to))
        }
        Command::Zmq { args, config } => {
            let (source, command) = match (config, args.as_slice()) {
                (Some(path), [command]) => (Source::File(path), command),
                (None, [name, command]) => (Source::Instance(name.clone()), command),
                (Some(_), _) => return usage("relay zmq --config FILE COMMAND"),
                (None, _) => return usage("relay zmq NAME COMMAND"),
            };
            let config = match Config::load(&source) {
                Ok(c) => c,
                Err(err) => return config_error(err),
            };
            runtime().block_on(ops::zmq(&config, command))
        }
        Command::Check { name, config } => {
            let source = match (name, config) {
                (_, Some(path)) => Source::File(path),
                (Some(name), None) => Source::Instance(name),
                (None, None) => unreachable!("clap requires one"),
            };
            runtime().block_on(check::run(&source))
        }
        Command::Demo { res } => runtime().block_on(demo::run(res)).unwrap_or_else(|err| {
            error!("demo failed: {err:#}");
            EX_SOFTWARE
        }),
        Command::GenerateDocs { dir } => match docs::write_all(&dir) {
            Ok(()) => 0,
            Err(err) => {
                eprintln!("relay: {err:#}");
                EX_SOFTWARE
            }
        },
    }
}

/// A command whose output is piped into `head` or `grep -q` ends quietly
/// when the reader goes away, as Unix tools do, instead of panicking on the
/// write. Not for the daemon: it must outlive a closed pipe to a child.
fn die_quietly_on_closed_stdout() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: at start, before any thread exists; the default disposition
    // needs no handler code.
    unsafe {
        let _ = signal(Signal::SIGPIPE, SigHandler::SigDfl);
    }
}

/// The instance's name and control socket: `--socket` wins, else NAME's
/// socket in the runtime directory.
fn instance_socket(name: String, socket: Option<PathBuf>) -> (String, PathBuf) {
    let path = socket.unwrap_or_else(|| api::socket_path(&name));
    (name, path)
}

fn usage(text: &str) -> i32 {
    eprintln!("usage: {text}");
    2
}

/// One line, once: to the journal under systemd (stderr goes there too, so
/// both would show it twice), else to stderr without log decoration.
fn config_error(err: impl std::fmt::Display) -> i32 {
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        error!("configuration error: {err}");
    } else {
        eprintln!("relay: {err}");
    }
    EX_CONFIG
}

/// Checks FFmpeg and the offline video, then runs the instance until
/// SIGTERM or SIGINT (SIGHUP reloads, see `instance.rs`).
pub fn run(source: Source, config: Config) -> i32 {
    keep_frame_memory();
    let offline = match preflight::check_all(&config) {
        Ok(o) => o,
        Err(err) => return config_error(err),
    };
    runtime().block_on(instance::run(source, config, offline))
}

/// One thread is plenty: relay moves frames between pipes and waits. It
/// also avoids cross-thread wake-ups on every frame (measured: the largest
/// share of the daemon's CPU with a multi-thread runtime), and children
/// forked from it see their parent thread live as long as the process,
/// which PR_SET_PDEATHSIG depends on.
/// Every live frame is a fresh 1–3 MB buffer. By default glibc serves such
/// sizes with mmap and returns them with munmap, so each frame costs
/// hundreds of page faults (seen in perf). Keeping them on the heap lets
/// freed frames be reused as they are.
fn keep_frame_memory() {
    const LIMIT: i32 = 64 << 20;
    // SAFETY: mallopt only tunes the allocator; called before any thread starts.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, LIMIT);
        nix::libc::mallopt(nix::libc::M_TRIM_THRESHOLD, LIMIT);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Resolves on the first SIGTERM or SIGINT (the demo's stop). SIGHUP must
/// not end the process, as its default action would.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    loop {
        tokio::select! {
            _ = term.recv() => return tracing::info!("SIGTERM received"),
            _ = int.recv() => return tracing::info!("SIGINT received"),
            _ = hup.recv() => tracing::warn!("SIGHUP received: the demo has nothing to reload"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
