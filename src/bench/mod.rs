//! `relay bench`: measures relay as a user would run it and prints a
//! markdown table; `relay bench --soak` runs the long soak instead.
//!
//! Everything is real and on loopback: a private nginx-rtmp, the relay
//! binary itself as a child process (`relay run --config …`), an FFmpeg
//! publisher that comes and goes, and an FFmpeg sink on the output that
//! records what viewers see (`sink.rs`). One file per concern:
//! - `rig.rs`: relay, the publisher, the offline video, the stat page;
//! - `sink.rs`: the sink and what it measures (colour, repeats, jitter, A/V);
//! - `cpu.rs`: CPU, memory and fds from `/proc`;
//! - `cycles.rs`: go-live/failover cycles and the per-resolution phase;
//! - `naive.rs`: the single-FFmpeg design relay is compared with;
//! - `soak.rs`: the long run;
//! - `report.rs`: the table.

mod cpu;
mod cycles;
mod naive;
mod report;
mod rig;
mod sink;
mod soak;

use std::time::Duration;

use crate::nginx::private::{NginxOptions, PrivateNginx};

/// Any single step taking longer than this fails the benchmark.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

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
    pub seed: u64,
    /// Exit with status 2 if a target was missed.
    pub strict: bool,
}

pub async fn run(opts: Options) -> anyhow::Result<i32> {
    anyhow::ensure!(!opts.res.is_empty(), "no resolution to measure");
    anyhow::ensure!(opts.cycles > 0, "at least one cycle is needed");
    let nginx = PrivateNginx::start(NginxOptions::default()).await?;
    let result = if let Some(length) = opts.soak {
        soak::run(&nginx, &opts, length).await.map(|r| {
            report::print_soak(&opts, length, &r);
            r.passed()
        })
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
    let load_after = report::load_average();
    Ok(report::print_bench(
        opts,
        &phases,
        &load_before,
        &load_after,
    ))
}
