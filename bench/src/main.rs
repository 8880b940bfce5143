//! `relay-bench`: measures relay as a user would run it and prints a
//! markdown table; `relay-bench --soak` runs the long soak instead
//! (`bench/run` builds it in release mode and runs it).
//!
//! Everything is real and on loopback: a private nginx-rtmp, relay as a
//! child process (`relay run --config …`), an FFmpeg publisher that comes
//! and goes, and an FFmpeg sink on the output that records what viewers
//! see. The rigs (nginx, publisher, sink, offline video) are the
//! `relay-rig` crate's, shared with the tests. The relay under test is this
//! very executable: invoked as `relay-bench run …` it is relay's own
//! command line (`relay::cli::main`), built with the same profile as the
//! benchmark, so no second binary has to be found. One file per concern:
//! - `rig.rs`: relay under test, its configuration, the stat page;
//! - `cpu.rs`: CPU, memory and fds from `/proc`;
//! - `cycles.rs`: go-live/failover cycles and the per-resolution phase;
//! - `naive.rs`: the single-FFmpeg design relay is compared with;
//! - `feeds.rs`: video-only and 2 fps publishers;
//! - `srt.rs`: SRT callers beside RTMP publishers, and the re-arm;
//! - `destinations.rs`: one encode to three destinations, against three
//!   relays, and one destination dropped;
//! - `soak.rs`: the long run;
//! - `report.rs`: the table.

mod cgroup;
mod cpu;
mod cycles;
mod destinations;
mod feeds;
mod loaded;
mod naive;
mod report;
mod rig;
mod soak;
mod srt;

use std::time::Duration;

use clap::Parser;
use relay_rig::nginx::{NginxOptions, PrivateNginx};

/// Any single step taking longer than this fails the benchmark.
pub(crate) const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Measure relay on loopback and print a markdown table: start-up,
/// go-live and failover at a sink, smoothness, the daemon's CPU and
/// memory, and the whole pipeline's CPU against the naive design.
/// With --soak: the long soak instead.
#[derive(Debug, Parser)]
#[command(name = "relay-bench", version)]
struct Cli {
    /// Publisher sessions (each ends by kill, clean stop or freeze in
    /// turn; with --soak, at random).
    #[arg(long, default_value_t = 20)]
    cycles: usize,
    /// Output and publisher heights (16:9), comma-separated: the cycles
    /// run at the first, CPU and memory are measured at each.
    #[arg(long, value_delimiter = ',', default_value = "720,1080")]
    res: Vec<u32>,
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Seconds each publisher stays live in a cycle.
    #[arg(long, default_value_t = 2)]
    hold: u64,
    /// Seconds over which CPU is sampled while live.
    #[arg(long, default_value_t = 10)]
    window: u64,
    /// Run the soak: --cycles publisher sessions over --minutes.
    #[arg(long)]
    soak: bool,
    /// Measure only the destinations' rows (one destination, three, three
    /// relay instances, one dropped) at each --res.
    #[arg(long)]
    destinations: bool,
    /// Measure only the SRT rows (SRT beside RTMP: go-live, failover,
    /// ingest CPU, re-arm) at each --res.
    #[arg(long, conflicts_with = "destinations")]
    srt: bool,
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    /// Run the loaded live run instead: one publisher live for --minutes
    /// beside a competing x264 encode, twice (relay and nginx at the
    /// default CPU weight, then at the packaged CPUWeight=400; needs root
    /// for the cgroups); counts false failovers and black frames at the
    /// sink.
    #[arg(long, conflicts_with = "soak")]
    loaded: bool,
    /// Seed of the soak's random endings.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Exit with status 2 if any target is missed.
    #[arg(long)]
    strict: bool,
}

fn main() {
    // The relay under test (see rig.rs): this executable as relay itself.
    if std::env::args_os().nth(1).is_some_and(|a| a == "run") {
        std::process::exit(relay::cli::main());
    }
    let cli = Cli::parse();
    let opts = Options {
        cycles: cli.cycles,
        res: cli.res,
        fps: cli.fps,
        hold: Duration::from_secs(cli.hold),
        window: Duration::from_secs(cli.window),
        soak: cli.soak.then(|| Duration::from_secs(cli.minutes * 60)),
        loaded: cli.loaded.then(|| Duration::from_secs(cli.minutes * 60)),
        destinations_only: cli.destinations,
        srt_only: cli.srt,
        seed: cli.seed,
        strict: cli.strict,
    };
    // The table and the progress lines are the output; the children's own
    // output would bury them.
    relay_rig::process::set_echo(false);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let status = runtime.block_on(run(opts)).unwrap_or_else(|err| {
        eprintln!("relay-bench: bench failed: {err:#}");
        1
    });
    std::process::exit(status);
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Publisher sessions (bench: timed cycles; soak: sessions).
    pub cycles: usize,
    /// Output heights: cycles run at the first; CPU and memory are
    /// measured at each.
    pub res: Vec<u32>,
    pub fps: u32,
    /// How long each live period lasts in the timed cycles.
    pub hold: Duration,
    /// How long CPU is sampled while live.
    pub window: Duration,
    /// Run the soak instead, over this long.
    pub soak: Option<Duration>,
    /// Run the loaded live run instead, over this long.
    pub loaded: Option<Duration>,
    /// Measure only the destinations' rows.
    pub destinations_only: bool,
    /// Measure only the SRT rows.
    pub srt_only: bool,
    pub seed: u64,
    /// Exit with status 2 if a target was missed.
    pub strict: bool,
}

pub async fn run(opts: Options) -> anyhow::Result<i32> {
    anyhow::ensure!(!opts.res.is_empty(), "no resolution to measure");
    anyhow::ensure!(opts.cycles > 0, "at least one cycle is needed");
    let nginx = PrivateNginx::start(NginxOptions::default()).await?;
    let result = if let Some(length) = opts.loaded {
        loaded::run(&nginx, &opts, length)
            .await
            .map(|(runs, groups)| {
                report::print_loaded(&opts, &runs, groups);
                // The target is the packaged set-up's: the last run.
                runs.last().is_some_and(|r| {
                    r.offline_frames == 0 && r.black_frames == 0 && r.false_failovers == 0
                })
            })
    } else if let Some(length) = opts.soak {
        soak::run(&nginx, &opts, length).await.map(|r| {
            report::print_soak(&opts, length, &r);
            r.passed()
        })
    } else if opts.destinations_only {
        destinations_only(&nginx, &opts).await
    } else if opts.srt_only {
        srt_only(&nginx, &opts).await
    } else {
        bench(&nginx, &opts).await
    };
    nginx.stop().await;
    result.map(|passed| if passed || !opts.strict { 0 } else { 2 })
}

async fn bench(nginx: &PrivateNginx, opts: &Options) -> anyhow::Result<bool> {
    eprintln!(
        "bench: {} cycles at {}p{}, CPU at {:?}; this takes about {} s",
        opts.cycles,
        opts.res[0],
        opts.fps,
        opts.res,
        opts.cycles as u64 * (opts.hold.as_secs() + 6)
            + opts.res.len() as u64 * (2 * opts.window.as_secs() + 25)
    );
    let load_before = report::load_average();
    let mut phases = Vec::new();
    for (i, &res) in opts.res.iter().enumerate() {
        let cycles = if i == 0 { opts.cycles } else { 0 };
        phases.push(cycles::phase(nginx, opts, res, cycles).await?);
    }
    eprintln!("bench: feeds: video only beside audio+video, a 2 fps feed");
    let feeds = feeds::run(nginx, opts).await?;
    let srt = srt_runs(nginx, opts).await?;
    let fanouts = fanouts(nginx, opts).await?;
    let load_after = report::load_average();
    Ok(report::print_bench(
        opts,
        &phases,
        &feeds,
        &srt,
        &fanouts,
        &load_before,
        &load_after,
    ))
}

async fn fanouts(
    nginx: &PrivateNginx,
    opts: &Options,
) -> anyhow::Result<Vec<destinations::Fanout>> {
    let mut out = Vec::new();
    for &res in &opts.res {
        out.push(destinations::phase(nginx, opts, res).await?);
    }
    Ok(out)
}

async fn srt_runs(nginx: &PrivateNginx, opts: &Options) -> anyhow::Result<Vec<srt::SrtRun>> {
    let mut out = Vec::new();
    for &res in &opts.res {
        eprintln!("bench: SRT beside RTMP at {res}p");
        out.push(srt::phase(nginx, opts, res).await?);
    }
    Ok(out)
}

async fn srt_only(nginx: &PrivateNginx, opts: &Options) -> anyhow::Result<bool> {
    eprintln!(
        "bench: SRT beside RTMP at {:?}; this takes about {} s",
        opts.res,
        opts.res.len() as u64 * (2 * opts.window.as_secs() + 40)
    );
    let load_before = report::load_average();
    let runs = srt_runs(nginx, opts).await?;
    let load_after = report::load_average();
    Ok(report::print_srt(opts, &runs, &load_before, &load_after))
}

async fn destinations_only(nginx: &PrivateNginx, opts: &Options) -> anyhow::Result<bool> {
    eprintln!(
        "bench: destinations at {:?}; this takes about {} s",
        opts.res,
        opts.res.len() as u64 * (3 * opts.window.as_secs() + 60)
    );
    let load_before = report::load_average();
    let fanouts = fanouts(nginx, opts).await?;
    let load_after = report::load_average();
    Ok(report::print_destinations(
        opts,
        &fanouts,
        &load_before,
        &load_after,
    ))
}
