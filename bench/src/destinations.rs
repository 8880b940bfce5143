//! One encode, many destinations, measured with one publisher live
//! throughout: the whole tree's CPU with one destination, with three in one
//! relay, and with three separate relay instances each pushing one (what
//! streaming to three platforms took before the fan-out); the daemon's CPU
//! and memory with three; then nginx drops one destination's session
//! (`drop/publisher`) and a sink on each destination records how long the
//! dropped one took to show a picture again and the largest gap the other
//! two saw.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::time::sleep;

use super::cpu::{self, Usage};
use super::rig::{self, Relay};
use super::{Options, STEP_TIMEOUT};
use relay::nginx::stat_page::StatsClient;
use relay_rig::nginx::PrivateNginx;
use relay_rig::sink::{Colour, Sink, SinkOpts};

/// The three destinations' names, as a user would list them.
const NAMES: [&str; 3] = ["kick", "youtube", "twitch"];
/// The one nginx drops.
const DROPPED: usize = 1;
/// How long after the drop the sinks are looked at.
const AFTER_DROP: Duration = Duration::from_secs(8);

/// The figures at one output size.
#[derive(Debug, Default, Clone)]
pub struct Fanout {
    pub res: u32,
    /// One relay, one destination.
    pub one: Usage,
    /// One relay, three destinations (the daemon's own figures are in it).
    pub three: Usage,
    /// Three relays, one destination each: their trees summed, % of a core.
    pub separate_percent: f64,
    /// Drop → the first frame at the dropped destination's sink after its
    /// gap.
    pub back: Option<Duration>,
    /// The largest gap between frames at the other two destinations' sinks
    /// from the drop to [`AFTER_DROP`] after it.
    pub others_gap: Option<Duration>,
    /// nginx sessions the other two destinations started during the drop
    /// (their client ids changed).
    pub others_reconnects: usize,
}

fn key(res: u32, name: &str, instance: &str) -> String {
    format!("fo{res}{instance}_{name}")
}

/// Starts a relay from `env` and waits until it is live with `streaming`
/// destinations streaming.
async fn start_live(env: &std::path::Path, streaming: usize) -> anyhow::Result<Relay> {
    let started = Instant::now();
    let relay = Relay::start(env)?;
    relay.wait_for("on air: live", started).await?;
    let deadline = Instant::now() + STEP_TIMEOUT;
    while relay.count("destination streaming") < streaming {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{streaming} destinations never streamed"
        );
        sleep(Duration::from_millis(50)).await;
    }
    // Past the start-up's own work (the pushers' probing, the first GOPs).
    sleep(Duration::from_secs(3)).await;
    Ok(relay)
}

/// The largest gap between frames `sink` saw in `[from, to]`, counting
/// from its last frame before `from`, and when the frame that ended it
/// arrived (`None`: no frame since, the gap runs to `to`).
fn largest_gap(sink: &Sink, from: Instant, to: Instant) -> (Duration, Option<Instant>) {
    let frames = sink.history_frames();
    let before = frames.iter().rev().find(|f| f.at < from).map(|f| f.at);
    let mut times: Vec<Instant> = before.into_iter().collect();
    times.extend(
        frames
            .iter()
            .map(|f| f.at)
            .filter(|at| *at >= from && *at <= to),
    );
    let inner = times
        .windows(2)
        .map(|w| (w[1] - w[0], Some(w[1])))
        .max_by_key(|(gap, _)| *gap);
    let tail = (
        to.saturating_duration_since(*times.last().unwrap_or(&from)),
        None,
    );
    match inner {
        Some(inner) if inner.0 >= tail.0 => inner,
        _ => tail,
    }
}

pub async fn phase(nginx: &PrivateNginx, opts: &Options, res: u32) -> anyhow::Result<Fanout> {
    let fps = opts.fps;
    let stream = format!("fo{res}");
    let offline = nginx.dir().join(format!("offline-fo{res}.mp4"));
    rig::make_offline_video(&offline, res).await?;
    let publisher = rig::start_publisher(&nginx.rtmp_url("live", &stream), res, fps).await?;
    let mut out = Fanout {
        res,
        ..Fanout::default()
    };

    // One destination.
    let k = key(res, "kick", "a");
    let env = rig::write_config_to(
        nginx,
        nginx.dir(),
        &format!("{stream}-one"),
        &stream,
        &[("kick", &k)],
        &offline,
        res,
        fps,
    )?;
    eprintln!(
        "bench: {res}p{fps}: one destination, measuring CPU for {:?}",
        opts.window
    );
    let relay = start_live(&env, 1).await?;
    out.one = cpu::measure(relay.pid(), opts.window).await;
    relay.stop().await;

    // Three destinations in one relay.
    let keys: Vec<String> = NAMES.iter().map(|n| key(res, n, "b")).collect();
    let dests: Vec<(&str, &str)> = NAMES
        .iter()
        .zip(&keys)
        .map(|(n, k)| (*n, k.as_str()))
        .collect();
    let env = rig::write_config_to(
        nginx,
        nginx.dir(),
        &format!("{stream}-three"),
        &stream,
        &dests,
        &offline,
        res,
        fps,
    )?;
    eprintln!(
        "bench: {res}p{fps}: three destinations in one relay, measuring CPU for {:?}",
        opts.window
    );
    let relay = start_live(&env, 3).await?;
    out.three = cpu::measure(relay.pid(), opts.window).await;

    // nginx drops one of the three.
    eprintln!("bench: {res}p{fps}: nginx drops {}", NAMES[DROPPED]);
    let sinks: Vec<Sink> = keys
        .iter()
        .map(|k| {
            Sink::start_with(
                &nginx.rtmp_url("out", k),
                SinkOpts {
                    fps: 10,
                    ..SinkOpts::default()
                },
            )
        })
        .collect();
    for sink in &sinks {
        sink.wait_for(Colour::Blue, STEP_TIMEOUT).await?;
    }
    sleep(Duration::from_secs(2)).await;
    let stat = StatsClient::new(&nginx.stat_url(), Duration::from_secs(2))?;
    let mut sessions = Vec::new();
    for k in &keys {
        sessions.push(rig::output_client(&stat, k).await);
    }
    let dropped = Instant::now();
    let url = format!(
        "{}/drop/publisher?app=out&name={}",
        nginx.control_url(),
        keys[DROPPED]
    );
    let answer = reqwest::get(&url).await?.text().await?;
    anyhow::ensure!(answer.trim() == "1", "nginx dropped {answer:?} sessions");
    sinks[DROPPED]
        .wait_for_since(Colour::Blue, dropped, STEP_TIMEOUT)
        .await
        .context("the dropped destination's picture")?;
    sleep(AFTER_DROP.saturating_sub(dropped.elapsed())).await;
    let end = dropped + AFTER_DROP;
    out.back = largest_gap(&sinks[DROPPED], dropped, end)
        .1
        .map(|at| at - dropped);
    let mut gap = Duration::ZERO;
    for (i, sink) in sinks.iter().enumerate() {
        if i == DROPPED {
            continue;
        }
        gap = gap.max(largest_gap(sink, dropped, end).0);
        if rig::output_client(&stat, &keys[i]).await != sessions[i] || sessions[i].is_none() {
            out.others_reconnects += 1;
        }
    }
    out.others_gap = Some(gap);
    drop(sinks);
    relay.stop().await;

    // Three relays, one destination each, measured over the same window.
    let mut relays = Vec::new();
    for (i, instance) in ["c", "d", "e"].iter().enumerate() {
        let k = key(res, NAMES[i], instance);
        let env = rig::write_config_to(
            nginx,
            nginx.dir(),
            &format!("{stream}-separate-{instance}"),
            &stream,
            &[("kick", &k)],
            &offline,
            res,
            fps,
        )?;
        relays.push(start_live(&env, 1).await?);
    }
    eprintln!(
        "bench: {res}p{fps}: three relay instances, measuring CPU for {:?}",
        opts.window
    );
    let (a, b, c) = tokio::join!(
        cpu::measure(relays[0].pid(), opts.window),
        cpu::measure(relays[1].pid(), opts.window),
        cpu::measure(relays[2].pid(), opts.window),
    );
    out.separate_percent = a.tree_percent + b.tree_percent + c.tree_percent;
    for relay in relays {
        relay.stop().await;
    }
    rig::finish(publisher).await;
    Ok(out)
}
