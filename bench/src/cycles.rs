//! One benchmark phase at one output size: relay's start-up, its cost while
//! live (the daemon alone and with its FFmpeg children), the timed
//! go-live/failover cycles, then the naive design's cost at the same size.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::time::sleep;

use super::cpu::{self, Usage};
use super::rig::{self, Relay};
use super::{naive, Options, STEP_TIMEOUT};
use relay::nginx::stat_page::StatsClient;
use relay_rig::nginx::{free_tcp_port, PrivateNginx};
use relay_rig::sink::{Colour, Sink, Smoothness};

/// The longest wait for the offline video's normalised copy: relay stops
/// its run after 2 minutes plus four times the video's length (6 s here),
/// and says so in its log; this leaves a minute more.
const CACHE_TIMEOUT: Duration = Duration::from_secs(120 + 4 * 6 + 60);

/// Frames either side of a switch looked at for smoothness.
pub const SWITCH_WINDOW: Duration = Duration::from_secs(1);

/// How a publisher goes away in a cycle.
#[derive(Debug, Clone, Copy)]
pub enum Ending {
    Killed,
    CleanStop,
    Stalled,
}

impl Ending {
    pub fn of_cycle(i: usize) -> Ending {
        [Ending::Killed, Ending::CleanStop, Ending::Stalled][i % 3]
    }
    pub fn signal(self) -> Signal {
        match self {
            Ending::Killed => Signal::SIGKILL,
            Ending::CleanStop => Signal::SIGINT,
            Ending::Stalled => Signal::SIGSTOP,
        }
    }
}

/// One switch, as the daemon and the sink saw it.
#[derive(Debug, Clone, Copy)]
pub struct Switch {
    /// The publisher's first data at nginx (go-live) or the moment it was
    /// killed, stopped or frozen (failover).
    pub cause: Instant,
    /// relay logged the switch as done (the zmq filter answered).
    pub confirmed: Instant,
    /// The sink decoded the first frame of the new source.
    pub seen: Instant,
    pub smooth: Smoothness,
}

impl Switch {
    /// What viewers wait for.
    pub fn at_sink(&self) -> Duration {
        self.seen.saturating_duration_since(self.cause)
    }
    /// The output pipeline's own latency: encoder, RTMP, decoder.
    pub fn pipeline(&self) -> Duration {
        self.seen.saturating_duration_since(self.confirmed)
    }
    /// The switch itself: at the sink minus the pipeline's latency.
    pub fn net(&self) -> Duration {
        self.confirmed.saturating_duration_since(self.cause)
    }
}

#[derive(Debug, Default)]
pub struct Phase {
    pub res: u32,
    pub start_to_frame: Option<Duration>,
    /// relay spawned → it logs that its output sent the first frame
    /// (FFmpeg's first progress report).
    pub start_to_streaming: Option<Duration>,
    pub relay: Usage,
    /// relay's whole pipeline while the offline video is on air (its
    /// offline source reading the normalised copy).
    pub relay_offline: Usage,
    /// The same with `RELAY_OFFLINE_CACHE=off`: the offline source
    /// normalising the video on every loop, as before the cache.
    pub offline_per_loop: Option<Usage>,
    pub naive: Option<Usage>,
    pub steady: Smoothness,
    pub naive_steady: Smoothness,
    pub go_live: Vec<Switch>,
    pub failover: Vec<Switch>,
    pub same_output: bool,
}

pub async fn phase(
    nginx: &PrivateNginx,
    opts: &Options,
    res: u32,
    cycles: usize,
) -> anyhow::Result<Phase> {
    let stream = format!("r{res}");
    let fps = opts.fps;
    let offline = nginx.dir().join(format!("offline-{res}.mp4"));
    rig::make_offline_video(&offline, res).await?;
    let env = rig::write_config(nginx, nginx.dir(), &stream, &offline, res, fps)?;
    let live_url = nginx.rtmp_url("live", &stream);
    let stat = StatsClient::new(&nginx.stat_url(), Duration::from_secs(2))?;
    let mut out = Phase {
        res,
        ..Phase::default()
    };

    // Start-up: relay spawned → the sink decodes its first frame.
    let sink = rig::start_sink(&nginx.rtmp_url("out", &stream));
    let started = Instant::now();
    let relay = Relay::start(&env)?;
    out.start_to_streaming = Some(relay.wait_for("output streaming", started).await? - started);
    out.start_to_frame = Some(sink.wait_for_any_since(started, STEP_TIMEOUT).await? - started);
    let first_output = rig::output_client(&stat, &stream).await;

    for i in 0..cycles {
        let (up, down) = cycle(&relay, &sink, &stat, &live_url, &stream, opts, res, i).await?;
        eprintln!(
            "bench: cycle {}/{} ({:?}): go-live {:.2} s (sink {:.2} s), failover {:.2} s (sink {:.2} s)",
            i + 1,
            cycles,
            Ending::of_cycle(i),
            up.net().as_secs_f64(),
            up.at_sink().as_secs_f64(),
            down.net().as_secs_f64(),
            down.at_sink().as_secs_f64(),
        );
        out.go_live.push(up);
        out.failover.push(down);
    }
    // Cost while live, measured last so that the naive design's window
    // follows within seconds, under the same load on the machine.
    eprintln!(
        "bench: {res}p{fps}: relay live, measuring CPU for {:?}",
        opts.window
    );
    let mark = Instant::now();
    let publisher = rig::start_publisher(&live_url, res, fps).await?;
    relay.wait_for("on air: live", mark).await?;
    sink.wait_for_since(Colour::Blue, mark, STEP_TIMEOUT)
        .await?;
    sleep(Duration::from_secs(2)).await;
    let from = Instant::now();
    out.relay = cpu::measure(relay.pid(), opts.window).await;
    out.steady = sink.smoothness(from, Instant::now(), fps);
    let gone = Instant::now();
    rig::finish(publisher).await;
    relay.wait_for("on air: offline", gone).await?;
    // The offline source reads the normalised copy once it is ready. Its
    // run goes at nice 19 and may take up to 2 minutes plus four times the
    // video's length (ARCHITECTURE.md, "The offline video's cached copy"):
    // on a loaded machine far longer than a step.
    relay
        .wait_for_within(
            "the offline source now reads the normalised copy",
            started,
            CACHE_TIMEOUT,
        )
        .await?;
    sleep(Duration::from_millis(1500)).await;
    eprintln!(
        "bench: {res}p{fps}: relay offline, measuring CPU for {:?}",
        opts.window
    );
    out.relay_offline = cpu::measure(relay.pid(), opts.window).await;

    out.same_output =
        first_output.is_some() && first_output == rig::output_client(&stat, &stream).await;
    relay.stop().await;
    drop(sink);

    // The same, without the normalised copy: the offline source
    // normalises on every loop.
    eprintln!(
        "bench: {res}p{fps}: relay offline without the normalised copy, measuring CPU for {:?}",
        opts.window
    );
    let started = Instant::now();
    let relay = Relay::start_with(&env, &[("RELAY_OFFLINE_CACHE", "off")])?;
    relay.wait_for("output streaming", started).await?;
    sleep(Duration::from_secs(2)).await;
    out.offline_per_loop = Some(cpu::measure(relay.pid(), opts.window).await);
    relay.stop().await;

    // The naive design at the same settings, while live.
    eprintln!(
        "bench: {res}p{fps}: naive design live, measuring CPU for {:?}",
        opts.window
    );
    let naive_stream = format!("naive{res}");
    let naive_live = nginx.rtmp_url("live", &naive_stream);
    let publisher = rig::start_publisher(&naive_live, res, fps).await?;
    rig::wait_for_publisher_data(&stat, "live", &naive_stream, Instant::now()).await?;
    let naive_sink = rig::start_sink(&nginx.rtmp_url("out", &naive_stream));
    let encoder = naive::encoder_args(&env)?;
    let mut naive = naive::start(
        &naive_live,
        &offline,
        &encoder,
        &nginx.rtmp_url("out", &naive_stream),
        res,
        fps,
        free_tcp_port()?,
    )?;
    naive_sink
        .wait_for_since(Colour::Blue, Instant::now(), STEP_TIMEOUT)
        .await?;
    sleep(Duration::from_secs(2)).await;
    let from = Instant::now();
    out.naive = Some(cpu::measure(naive.id().unwrap_or(0), opts.window).await);
    out.naive_steady = naive_sink.smoothness(from, Instant::now(), fps);
    let _ = naive.kill().await;
    drop(naive_sink);
    rig::finish(publisher).await;
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
async fn cycle(
    relay: &Relay,
    sink: &Sink,
    stat: &StatsClient,
    live_url: &str,
    stream: &str,
    opts: &Options,
    res: u32,
    i: usize,
) -> anyhow::Result<(Switch, Switch)> {
    let fps = opts.fps;
    let mark = Instant::now();
    let publisher = rig::start_publisher(live_url, res, fps).await?;
    let first_data = rig::wait_for_publisher_data(stat, "live", stream, mark).await?;
    let live = relay.wait_for("on air: live", mark).await?;
    let blue = sink
        .wait_for_since(Colour::Blue, mark, STEP_TIMEOUT)
        .await?;
    sleep(opts.hold.max(SWITCH_WINDOW)).await;
    let gone = Instant::now();
    rig::signal(&publisher, Ending::of_cycle(i).signal());
    let off = relay.wait_for("on air: offline", gone).await?;
    let green = sink
        .wait_for_since(Colour::Green, gone, STEP_TIMEOUT)
        .await?;
    sleep(SWITCH_WINDOW).await;
    rig::finish(publisher).await;
    let up = Switch {
        cause: first_data,
        confirmed: live,
        seen: blue,
        smooth: sink.smoothness(blue - SWITCH_WINDOW, blue + SWITCH_WINDOW, fps),
    };
    let down = Switch {
        cause: gone,
        confirmed: off,
        seen: green,
        smooth: sink.smoothness(green - SWITCH_WINDOW, green + SWITCH_WINDOW, fps),
    };
    // Let relay put a fresh ingest in place, as between real sessions.
    sleep(Duration::from_millis(1500)).await;
    Ok((up, down))
}
