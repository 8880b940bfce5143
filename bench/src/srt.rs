//! SRT beside RTMP, in the same run and the same relay (`LIVE_SOURCES=
//! srt,rtmp`, the default `SRT_LATENCY_MS`): go-live and failover of an
//! RTMP publisher and of an SRT caller alike (OBS-like, a keyframe every
//! 2 s), the CPU of each one's ingest while it is on air, and the re-arm:
//! a caller killed and another one started at once, as a phone that
//! reconnects does.
//!
//! SRT plays out what it has buffered, `SRT_LATENCY_MS` of the feed, after
//! the caller dies: its frames stop that much later than the kill. So
//! failover is also measured where viewers see it, from the last new
//! picture at a sink on the output to the offline video.

use std::time::{Duration, Instant};

use relay_rig::nginx::{free_udp_port, PrivateNginx};
use relay_rig::publisher::Publisher;
use tokio::time::sleep;

use relay_rig::sink::{Colour, Sink};

use crate::cpu::{self, Usage};
use crate::rig::{self, Relay};
use crate::{Options, STEP_TIMEOUT};

/// SRT_LATENCY_MS as relay ships it: what a streamer's caller gets.
pub const LATENCY_MS: u64 = 1500;
const PASSPHRASE: &str = "bench-srt-passphrase";

/// The figures at one output size.
#[derive(Debug, Default, Clone)]
pub struct SrtRun {
    pub res: u32,
    pub rtmp: OnAir,
    pub srt: OnAir,
    /// Caller killed → a fresh listener waits (relay's log), seconds.
    pub rearm: f64,
    /// Caller killed, another started at once → it is on air, seconds.
    pub back: f64,
}

/// What one publisher's time on air gave, in seconds, and its ingest's
/// CPU while on air.
#[derive(Debug, Default, Clone)]
pub struct OnAir {
    /// Start → "on air: live".
    pub go_live: f64,
    pub usage: Usage,
    /// Kill → "on air: offline".
    pub failover: f64,
    /// At the sink: the last new live picture → the first offline frame.
    pub freeze: Option<f64>,
}

/// At `sink`, the offline video's first frame after `killed`, less the
/// last live frame before it that was a new picture (the publisher's box
/// moves every frame; relay's repeats of the last picture do not): how
/// long viewers saw the picture stand still before the offline video.
fn freeze(sink: &Sink, killed: Instant) -> Option<f64> {
    let frames = sink.history_frames();
    let offline = frames
        .iter()
        .find(|f| f.at >= killed && f.colour == Colour::Green)?;
    let last = frames
        .iter()
        .rev()
        .filter(|f| f.at < offline.at)
        .find(|f| f.colour == Colour::Blue && !f.repeat)?;
    Some((offline.at - last.at).as_secs_f64())
}

/// Started → "on air: live", CPU over the window while on air, killed →
/// "on air: offline", and the freeze at the sink.
async fn on_air(
    relay: &Relay,
    sink: &Sink,
    opts: &Options,
    start: impl std::future::Future<Output = anyhow::Result<Publisher>>,
) -> anyhow::Result<OnAir> {
    let t = Instant::now();
    let publisher = start.await?;
    let live = relay.wait_for("on air: live", t).await? - t;
    // Past the go-live's own work (probing, the first GOP).
    sleep(Duration::from_secs(2)).await;
    let usage = cpu::measure(relay.pid(), opts.window).await;
    let killed = Instant::now();
    rig::finish(publisher).await;
    let offline = relay.wait_for("on air: offline", killed).await? - killed;
    sink.wait_for_since(Colour::Green, killed, STEP_TIMEOUT)
        .await?;
    Ok(OnAir {
        go_live: live.as_secs_f64(),
        usage,
        failover: offline.as_secs_f64(),
        freeze: freeze(sink, killed),
    })
}

pub async fn phase(nginx: &PrivateNginx, opts: &Options, res: u32) -> anyhow::Result<SrtRun> {
    let fps = opts.fps;
    let stream = format!("srt{res}");
    let offline = nginx.dir().join(format!("offline-srt{res}.mp4"));
    rig::make_offline_video(&offline, res).await?;
    let env = rig::write_config(nginx, nginx.dir(), &stream, &offline, res, fps)?;
    let port = free_udp_port()?;
    let mut text = std::fs::read_to_string(&env)?;
    text.push_str(&format!(
        "LIVE_SOURCES=srt,rtmp\nSRT_HOST=127.0.0.1\nSRT_PORT={port}\n\
         SRT_PASSPHRASE={PASSPHRASE}\nSRT_LATENCY_MS={LATENCY_MS}\n"
    ));
    std::fs::write(&env, text)?;
    let rtmp_url = nginx.rtmp_url("live", &stream);
    let srt_url = format!("srt://127.0.0.1:{port}?mode=caller&passphrase={PASSPHRASE}");

    let sink = rig::start_sink(&nginx.rtmp_url("out", &stream));
    let started = Instant::now();
    let relay = Relay::start(&env)?;
    relay.wait_for("output streaming", started).await?;
    sleep(Duration::from_secs(2)).await;
    let mut out = SrtRun {
        res,
        ..SrtRun::default()
    };
    for (url, figures) in [(&rtmp_url, &mut out.rtmp), (&srt_url, &mut out.srt)] {
        *figures = on_air(&relay, &sink, opts, rig::start_publisher(url, res, fps)).await?;
        sleep(Duration::from_secs(2)).await;
    }

    // The re-arm: killed, and the next caller at once.
    let t = Instant::now();
    let caller = rig::start_publisher(&srt_url, res, fps).await?;
    relay.wait_for("on air: live", t).await?;
    sleep(Duration::from_secs(2)).await;
    let killed_at = Instant::now();
    rig::finish(caller).await;
    let next = rig::start_publisher(&srt_url, res, fps).await?;
    // The fresh listener's start, logged with its source.
    let rearmed = relay
        .wait_for_all(
            &["ingest waiting for live frames", "srt"],
            killed_at,
            STEP_TIMEOUT,
        )
        .await?;
    let back = relay.wait_for("on air: live", killed_at).await?;
    out.rearm = (rearmed - killed_at).as_secs_f64();
    out.back = (back - killed_at).as_secs_f64();
    rig::finish(next).await;
    relay.stop().await;
    drop(sink);
    Ok(out)
}
