//! The soak: one relay, a publisher that connects and drops many times over
//! a long run, each time ending a random way: killed, stopped cleanly,
//! frozen and then killed, or frozen and then resumed. What must hold at
//! the end: the output never reconnected, the daemon never restarted (nor
//! its output FFmpeg), its memory and open fds stayed flat, and sound is
//! still level with the picture at the sink.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::time::sleep;

use super::cpu;
use super::rig::{self, Relay};
use super::{Options, STEP_TIMEOUT};
use relay::nginx::stat_page::StatsClient;
use relay_rig::nginx::PrivateNginx;
use relay_rig::sink::{Colour, Sink};

/// How long the A/V sync marks are watched at the start and the end.
const SYNC_WINDOW: Duration = Duration::from_secs(6);

#[derive(Debug, Default)]
pub struct Soak {
    pub sessions: usize,
    pub endings: [usize; 4],
    pub output_reconnects: Option<usize>,
    pub output_restarts: usize,
    pub daemon_alive: bool,
    pub rss_start_kb: u64,
    pub rss_end_kb: u64,
    pub fds_start: usize,
    pub fds_end: usize,
    pub av_start_ms: Option<f64>,
    pub av_end_ms: Option<f64>,
    pub fps: u32,
    pub res: u32,
}

impl Soak {
    pub fn passed(&self) -> bool {
        let frame_ms = 1000.0 / self.fps as f64;
        self.output_reconnects == Some(0)
            && self.output_restarts == 0
            && self.daemon_alive
            && self.fds_end <= self.fds_start
            && self.rss_end_kb <= self.rss_start_kb + 2048
            && self.av_end_ms.is_some_and(|a| a.abs() <= frame_ms)
    }
}

pub const ENDINGS: [&str; 4] = [
    "killed",
    "clean stop",
    "frozen, then killed",
    "frozen, then resumed",
];

/// xorshift64*: enough randomness to vary the endings, reproducible by seed.
struct Rng(u64);

impl Rng {
    /// splitmix64 of the seed, so that small seeds start well mixed.
    fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)).max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        (self.next() >> 32) % n
    }
}

pub async fn run(nginx: &PrivateNginx, opts: &Options, length: Duration) -> anyhow::Result<Soak> {
    let res = opts.res[0];
    let fps = opts.fps;
    let stream = "soak";
    let offline = nginx.dir().join("offline-soak.mp4");
    rig::make_offline_video(&offline, res).await?;
    let env = rig::write_config(nginx, nginx.dir(), stream, &offline, res, fps)?;
    let live_url = nginx.rtmp_url("live", stream);
    let stat = StatsClient::new(&nginx.stat_url(), Duration::from_secs(2))?;
    let mut rng = Rng::new(opts.seed);
    let period = length / opts.cycles as u32;
    eprintln!(
        "soak: {} sessions over {:?} at {res}p{fps} (seed {}), one every {:.1} s",
        opts.cycles,
        length,
        opts.seed,
        period.as_secs_f64()
    );

    let sink = rig::start_sink(&nginx.rtmp_url("out", stream));
    let started = Instant::now();
    let mut relay = Relay::start(&env)?;
    relay.wait_for("output streaming", started).await?;
    sink.wait_for_any_since(started, STEP_TIMEOUT).await?;
    let first_output = rig::output_client(&stat, stream).await;
    let mut out = Soak {
        res,
        fps,
        ..Soak::default()
    };

    // Baseline: one live session with the sync marks watched.
    out.av_start_ms = synced_session(&relay, &sink, &live_url, res, fps).await?;
    sleep(Duration::from_secs(1)).await;
    out.rss_start_kb = cpu::memory_kb(relay.pid()).0;
    out.fds_start = cpu::open_fds(relay.pid());

    let begun = Instant::now();
    for i in 0..opts.cycles {
        let slot_end = begun + period * (i as u32 + 1);
        let mark = Instant::now();
        let mut publisher = rig::start_publisher(&live_url, res, fps).await?;
        relay.wait_for("on air: live", mark).await?;
        // Live for 30–70 % of the slot.
        let live_for = period.mul_f64(0.3 + rng.below(40) as f64 / 100.0);
        sleep(live_for).await;
        let ending = rng.below(4) as usize;
        out.endings[ending] += 1;
        let gone = Instant::now();
        match ending {
            0 => rig::signal(&publisher, Signal::SIGKILL),
            1 => rig::signal(&publisher, Signal::SIGINT),
            _ => rig::signal(&publisher, Signal::SIGSTOP),
        }
        relay.wait_for("on air: offline", gone).await?;
        if ending == 3 {
            // Resumed: it sends again (with a jump in time), then leaves.
            sleep(Duration::from_millis(500)).await;
            rig::signal(&publisher, Signal::SIGCONT);
            sleep(Duration::from_millis(1500)).await;
            let _ = publisher.stop_clean().await;
        }
        rig::finish(publisher).await;
        out.sessions += 1;
        if (i + 1) % 10 == 0 {
            eprintln!(
                "soak: {}/{} sessions, daemon RSS {} kB, {} fds",
                i + 1,
                opts.cycles,
                cpu::memory_kb(relay.pid()).0,
                cpu::open_fds(relay.pid())
            );
        }
        tokio::time::sleep_until(tokio::time::Instant::from_std(
            slot_end.max(Instant::now() + Duration::from_millis(1500)),
        ))
        .await;
    }

    // The end: one more live session with the sync marks watched.
    out.av_end_ms = synced_session(&relay, &sink, &live_url, res, fps).await?;
    sleep(Duration::from_secs(1)).await;
    out.rss_end_kb = cpu::memory_kb(relay.pid()).0;
    out.fds_end = cpu::open_fds(relay.pid());
    out.daemon_alive = relay.alive();
    out.output_restarts = relay.count("output started").saturating_sub(1);
    let last_output = rig::output_client(&stat, stream).await;
    out.output_reconnects = match (first_output, last_output) {
        (Some(a), Some(b)) if a == b => Some(0),
        (Some(_), Some(_)) => Some(1),
        _ => None,
    };
    relay.stop().await;
    drop(sink);
    Ok(out)
}

/// A live session long enough to see several sync marks; their A/V offset
/// at the sink.
async fn synced_session(
    relay: &Relay,
    sink: &Sink,
    live_url: &str,
    res: u32,
    fps: u32,
) -> anyhow::Result<Option<f64>> {
    let mark = Instant::now();
    let publisher = rig::start_publisher(live_url, res, fps).await?;
    relay.wait_for("on air: live", mark).await?;
    let blue = sink
        .wait_for_since(Colour::Blue, mark, STEP_TIMEOUT)
        .await?;
    sleep(SYNC_WINDOW).await;
    let offset = sink.av_offset_ms(blue + Duration::from_millis(500), Instant::now());
    let gone = Instant::now();
    rig::finish(publisher).await;
    relay.wait_for("on air: offline", gone).await?;
    Ok(offset)
}
