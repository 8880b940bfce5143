//! The command line: `relay run NAME`, `relay run --config FILE`, `relay demo`.
//!
//! Configuration problems are found before anything starts and end the
//! process with one line naming the key or file, and exit status 78
//! (EX_CONFIG), which the systemd unit treats as "do not restart".

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tracing::error;

use crate::config::{Config, Source, EX_CONFIG};
use crate::{bench, daemon, demo, logging, preflight};

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
    /// Run relay on a self-contained demo: a private nginx-rtmp on loopback,
    /// a generated offline video, output to a local preview stream.
    Demo {
        /// Output height (16:9).
        #[arg(long, default_value_t = 720)]
        res: u32,
    },
    /// Measure start-up, go-live and failover times and the daemon's CPU
    /// and memory on loopback, and print them as a markdown table.
    Bench {
        /// Publisher sessions to time (each ends by kill, clean stop or freeze in turn).
        #[arg(long, default_value_t = 12)]
        cycles: usize,
        /// Output and publisher height (16:9).
        #[arg(long, default_value_t = 720)]
        res: u32,
        #[arg(long, default_value_t = 30)]
        fps: u32,
        /// Seconds each publisher stays live.
        #[arg(long, default_value_t = 3)]
        hold: u64,
    },
}

/// Exit status for a failure that is not a configuration error.
const EX_SOFTWARE: i32 = 1;

/// Runs the command line; returns the process exit status.
pub fn main() -> i32 {
    let cli = Cli::parse();
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
            run(config)
        }
        Command::Bench {
            cycles,
            res,
            fps,
            hold,
        } => {
            let opts = bench::Options {
                cycles,
                res,
                fps,
                hold: std::time::Duration::from_secs(hold),
            };
            runtime().block_on(bench::run(opts)).unwrap_or_else(|err| {
                error!("bench failed: {err:#}");
                EX_SOFTWARE
            })
        }
        Command::Demo { res } => runtime().block_on(demo::run(res)).unwrap_or_else(|err| {
            error!("demo failed: {err:#}");
            EX_SOFTWARE
        }),
    }
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

/// Checks FFmpeg and the offline video, then runs the daemon until SIGTERM
/// or SIGINT.
pub fn run(config: Config) -> i32 {
    keep_frame_memory();
    let offline = match preflight_checks(&config) {
        Ok(o) => o,
        Err(err) => return config_error(err),
    };
    let options = daemon::Options::default();
    match runtime().block_on(daemon::run(config, offline, options, shutdown_signal())) {
        Ok(()) => 0,
        Err(err) => {
            error!("{err:#}");
            EX_SOFTWARE
        }
    }
}

/// The start-up checks that turn into exit status 78.
pub fn preflight_checks(
    config: &Config,
) -> Result<preflight::OfflineInfo, preflight::PreflightError> {
    preflight::check_ffmpeg(std::path::Path::new("ffmpeg"))?;
    preflight::probe_offline(std::path::Path::new("ffprobe"), &config.offline_video_path)
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

/// Resolves on the first SIGTERM or SIGINT. SIGHUP (`systemctl reload`)
/// must not end the process, as its default action would.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    loop {
        tokio::select! {
            _ = term.recv() => return tracing::info!("SIGTERM received"),
            _ = int.recv() => return tracing::info!("SIGINT received"),
            _ = hup.recv() => tracing::warn!(
                "SIGHUP received: reloading the configuration is not supported yet; \
                 restart the instance to apply changes"
            ),
        }
    }
}
