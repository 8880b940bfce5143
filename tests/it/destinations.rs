//! One encode, many destinations: relay against a private nginx standing
//! in for three platforms (three stream names in its `out` application),
//! with a sink on each. A destination that nginx drops, that refuses, or
//! that is unreachable reconnects on its own; the encoder and the other
//! destinations do not notice (no restart, no reconnect, no frame gap).

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};

use crate::common::*;
use crate::faults_rig::*;
use crate::relay_rig::ffmpeg_children_with;

/// The stream keys of the other two destinations (kick's is [`KEY`]).
const YT_KEY: &str = "yt_relaytest_secret";
const TW_KEY: &str = "tw_relaytest_secret";

/// The largest gap between frames the sink saw in `[from, to]`.
fn largest_gap(sink: &Sink, from: Instant, to: Instant) -> Duration {
    let frames = sink.history_frames();
    let times: Vec<Instant> = frames
        .iter()
        .map(|f| f.at)
        .filter(|at| *at >= from && *at <= to)
        .collect();
    let inner = times.windows(2).map(|w| w[1] - w[0]).max();
    let edges = [
        times.first().map(|t| *t - from),
        times.last().map(|t| to - *t),
    ];
    edges
        .into_iter()
        .flatten()
        .chain(inner)
        .max()
        .unwrap_or(to - from)
}

fn sink_opts() -> SinkOpts {
    SinkOpts {
        fps: 10,
        ..SinkOpts::default()
    }
}

/// The connection of the publisher `name` at the destination nginx.
async fn connection(f: &Faults, name: &str) -> anyhow::Result<Option<Connection>> {
    let stat = fetch_stat(&f.dest().stat_url()).await?;
    Ok(stat.publisher("out", name).map(|c| (stat.nginx_pid, c.id)))
}

fn destination<'a>(s: &'a relay::api::Status, name: &str) -> &'a relay::api::DestinationStatus {
    s.destinations
        .iter()
        .find(|d| d.name == name)
        .unwrap_or_else(|| panic!("no destination {name} in {s:?}"))
}

/// Every key stays off the status, the log and every command line.
async fn keys_are_masked(f: &Faults) -> anyhow::Result<()> {
    let status = f.status().await?.to_string();
    let logs = f.relay().logs().join("\n");
    for key in [KEY, YT_KEY, TW_KEY] {
        ensure!(!status.contains(key), "{key} in relay status: {status}");
        ensure!(!logs.contains(key), "{key} in relay's log");
        let on_cmdline = ffmpeg_children_with(f.relay().pid(), key);
        ensure!(
            on_cmdline.is_empty(),
            "{key} on the command line of {on_cmdline:?}"
        );
    }
    Ok(())
}

/// Three destinations on one nginx; all show the offline video, then the
/// live feed. nginx drops one (`drop/publisher`): it reconnects and shows
/// the picture again, while the other two keep their one session with no
/// frame gap over 0.5 s and the encoder keeps its pid.
#[tokio::test]
async fn three_destinations_and_one_dropped_reconnects_alone() -> anyhow::Result<()> {
    let dest_port = free_tcp_port()?;
    let base = format!("rtmp://127.0.0.1:{dest_port}/out");
    let mut f = Faults::new_on(
        "three",
        dest_port,
        FaultOpts {
            env: vec![
                ("DESTINATIONS", "kick,youtube,twitch".into()),
                ("YOUTUBE_URL", base.clone()),
                ("YOUTUBE_KEY", YT_KEY.into()),
                ("TWITCH_URL", format!("{base}/{TW_KEY}")),
            ],
            ..FaultOpts::default()
        },
    )
    .await?;
    f.start_relay().await?;
    let names = [("kick", KEY), ("youtube", YT_KEY), ("twitch", TW_KEY)];
    let sinks: Vec<Sink> = names
        .iter()
        .map(|(_, key)| Sink::start_with(&format!("{base}/{key}"), sink_opts()))
        .collect();
    for sink in &sinks {
        sink.wait_for(Colour::Green, secs(40))
            .await
            .with_context(|| f.context())?;
    }
    let _blue = f.publish("blue").await?;
    for sink in &sinks {
        settle_on(&f, sink, Colour::Blue, GO_LIVE).await?;
    }
    let before = f.relay().status().await?;
    let encoder = before.output_pid.context("the encoder's pid")?;
    let youtube_first = connection(&f, YT_KEY).await?.context("youtube connected")?;
    let kick_first = connection(&f, KEY).await?.context("kick connected")?;
    let twitch_first = connection(&f, TW_KEY).await?.context("twitch connected")?;

    let dropped = Instant::now();
    let url = format!(
        "{}/drop/publisher?app=out&name={YT_KEY}",
        f.dest().control_url()
    );
    let answer = reqwest::get(&url).await?.text().await?;
    eprintln!("[test] {url} -> {answer:?}");
    ensure!(answer.trim() == "1", "nginx dropped {answer:?} sessions");
    let back = f
        .relay()
        .wait_for_status(
            "youtube reconnected",
            |s| {
                let d = destination(s, "youtube");
                d.reconnects > destination(&before, "youtube").reconnects && d.up
            },
            secs(30),
        )
        .await?;
    let picture = sinks[1]
        .wait_for_since(Colour::Blue, dropped, secs(30))
        .await
        .with_context(|| f.context())?;
    eprintln!(
        "[test] youtube dropped -> blue at its sink after {:?}; {:?}",
        picture - dropped,
        destination(&back, "youtube")
    );
    let youtube_second = connection(&f, YT_KEY).await?.context("youtube back")?;
    ensure!(
        youtube_second != youtube_first,
        "youtube's session did not change"
    );
    // A while longer, then the others' record over the whole window.
    tokio::time::sleep(secs(3)).await;
    let end = Instant::now();
    let after = f.relay().status().await?;
    ensure!(
        after.output_pid == Some(encoder) && after.output_restarts == before.output_restarts,
        "the encoder restarted: {after:?}"
    );
    for (i, (name, key)) in names.iter().enumerate() {
        if *name == "youtube" {
            continue;
        }
        let d = destination(&after, name);
        ensure!(
            d.up && d.reconnects == destination(&before, name).reconnects,
            "{name} reconnected: {d:?}"
        );
        let now = connection(&f, key).await?;
        let first = if *name == "kick" {
            kick_first
        } else {
            twitch_first
        };
        ensure!(now == Some(first), "{name}'s session changed");
        let gap = largest_gap(&sinks[i], dropped, end);
        eprintln!("[test] {name}: largest gap {gap:?}");
        ensure!(
            gap <= Duration::from_millis(500),
            "{name} saw a gap of {gap:?}: {}",
            sinks[i].summary_since(dropped)
        );
    }
    keys_are_masked(&f).await?;
    f.finish().await
}

/// A reload adds a destination, then removes it: the one already there
/// keeps its session, and the encoder its pid.
#[tokio::test]
async fn reload_adds_and_removes_a_destination_and_touches_nothing_else() -> anyhow::Result<()> {
    let dest_port = free_tcp_port()?;
    let base = format!("rtmp://127.0.0.1:{dest_port}/out");
    let mut f = Faults::new_on("reload-dest", dest_port, FaultOpts::default()).await?;
    f.start_relay().await?;
    let sink = Sink::start_with(&f.out_url(), sink_opts());
    sink.wait_for(Colour::Green, secs(40))
        .await
        .with_context(|| f.context())?;
    let kick = connection(&f, KEY).await?.context("kick connected")?;
    let before = f.relay().status().await?;
    let original = std::fs::read_to_string(&f.env_file)?;
    let from = Instant::now();

    let added = format!(
        "{original}\nDESTINATIONS=kick,youtube\nYOUTUBE_URL={base}\nYOUTUBE_KEY={YT_KEY}\n"
    );
    std::fs::write(&f.env_file, added)?;
    f.relay().signal(nix::sys::signal::Signal::SIGHUP)?;
    let youtube_sink = Sink::start_with(&format!("{base}/{YT_KEY}"), sink_opts());
    f.relay()
        .wait_for_status(
            "youtube up",
            |s| s.destinations.iter().any(|d| d.name == "youtube" && d.up),
            secs(40),
        )
        .await?;
    youtube_sink
        .wait_for(Colour::Green, secs(40))
        .await
        .with_context(|| f.context())?;

    std::fs::write(&f.env_file, original)?;
    f.relay().signal(nix::sys::signal::Signal::SIGHUP)?;
    f.relay()
        .wait_for_status("youtube gone", |s| s.destinations.len() == 1, secs(40))
        .await?;
    let deadline = Instant::now() + secs(20);
    while connection(&f, YT_KEY).await?.is_some() {
        ensure!(
            Instant::now() < deadline,
            "youtube still publishes after its removal"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let after = f.relay().status().await?;
    ensure!(
        after.reloads == before.reloads + 2,
        "two reloads: {after:?}"
    );
    ensure!(
        after.output_pid == before.output_pid && after.output_restarts == 0,
        "the encoder restarted: {after:?}"
    );
    let d = destination(&after, "kick");
    ensure!(d.up && d.reconnects == 0, "kick was touched: {d:?}");
    ensure!(
        connection(&f, KEY).await? == Some(kick),
        "kick's session changed"
    );
    let gap = largest_gap(&sink, from, Instant::now());
    ensure!(
        gap <= Duration::from_millis(500),
        "kick saw a gap of {gap:?}"
    );
    f.finish().await
}

/// One destination refuses the publish (wrong key), one is unreachable:
/// both retry with the backoff, and the third streams the picture on one
/// session from the encoder's start, which never restarts.
#[tokio::test]
async fn refusing_and_unreachable_destinations_do_not_touch_the_others() -> anyhow::Result<()> {
    let dest_port = free_tcp_port()?;
    let denying_port = free_tcp_port()?;
    let denying = start_denying_dest(denying_port).await?;
    let nowhere = free_tcp_port()?;
    let metrics_port = free_tcp_port()?;
    let mut f = Faults::new_on(
        "refusing",
        dest_port,
        FaultOpts {
            env: vec![
                ("DESTINATIONS", "down,kick,denied".into()),
                (
                    "DOWN_URL",
                    format!("rtmp://127.0.0.1:{nowhere}/out/{YT_KEY}"),
                ),
                ("DENIED_URL", format!("rtmp://127.0.0.1:{denying_port}/out")),
                ("DENIED_KEY", TW_KEY.into()),
                ("CRASH_BACKOFF", "1".into()),
                ("METRICS_ADDR", format!("127.0.0.1:{metrics_port}")),
            ],
            ..FaultOpts::default()
        },
    )
    .await?;
    f.start_relay().await?;
    let sink = Sink::start_with(&f.out_url(), sink_opts());
    sink.wait_for(Colour::Green, secs(40))
        .await
        .with_context(|| f.context())?;
    let first = connection(&f, KEY).await?.context("kick connected")?;
    let start = f.relay().status().await?;
    let from = Instant::now();
    tokio::time::sleep(secs(12)).await;
    let s = f.relay().status().await?;
    eprintln!("[test] {:#?}", s.destinations);
    for name in ["down", "denied"] {
        let d = destination(&s, name);
        ensure!(!d.up && d.uptime_s.is_none(), "{name} is not down: {d:?}");
        ensure!(
            (2..=10).contains(&d.reconnects) && d.last_error.is_some(),
            "{name} is not retried with the backoff: {d:?}"
        );
    }
    let lines = f.lines_since(0, "destination denied stopped");
    ensure!(
        !lines.is_empty(),
        "the log does not name the destination\n{}",
        f.context()
    );
    let kick = destination(&s, "kick");
    ensure!(
        kick.up && kick.reconnects == 0,
        "kick was touched: {kick:?}"
    );
    ensure!(
        s.output_pid == start.output_pid && s.output_restarts == 0,
        "the encoder restarted: {s:?}"
    );
    ensure!(
        connection(&f, KEY).await? == Some(first),
        "kick's session changed"
    );
    let gap = largest_gap(&sink, from, Instant::now());
    ensure!(
        gap <= Duration::from_millis(500),
        "kick saw a gap of {gap:?}"
    );
    let refusals = denying.error_log().matches("publish forbidden").count()
        + denying.error_log().matches("access forbidden").count();
    ensure!(
        refusals >= 2,
        "the denying destination refused {refusals} times"
    );
    keys_are_masked(&f).await?;
    f.finish().await
}

/// The encoder (the output FFmpeg) is killed: it restarts, and every
/// destination's connection stays open: the platform sees no disconnect,
/// its timestamps go on, and the picture comes back.
#[tokio::test]
async fn a_killed_encoder_keeps_every_connection() -> anyhow::Result<()> {
    let dest_port = free_tcp_port()?;
    let base = format!("rtmp://127.0.0.1:{dest_port}/out");
    let mut f = Faults::new_on(
        "encoder",
        dest_port,
        FaultOpts {
            env: vec![
                ("DESTINATIONS", "kick,youtube".into()),
                ("YOUTUBE_URL", base.clone()),
                ("YOUTUBE_KEY", YT_KEY.into()),
            ],
            ..FaultOpts::default()
        },
    )
    .await?;
    f.start_relay().await?;
    let sinks = [
        Sink::start_with(&format!("{base}/{KEY}"), sink_opts()),
        Sink::start_with(&format!("{base}/{YT_KEY}"), sink_opts()),
    ];
    for sink in &sinks {
        sink.wait_for(Colour::Green, secs(40))
            .await
            .with_context(|| f.context())?;
    }
    let before = f.relay().status().await?;
    let connections = [
        connection(&f, KEY).await?.context("kick")?,
        connection(&f, YT_KEY).await?.context("youtube")?,
    ];
    let encoder = output_ffmpeg(&f)?;
    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(encoder as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let s = f
        .relay()
        .wait_for_status(
            "a new encoder streaming",
            |s| s.output_restarts > before.output_restarts && s.output_uptime_s.is_some(),
            secs(30),
        )
        .await?;
    for sink in &sinks {
        let at = sink
            .wait_for_since(Colour::Green, killed + secs(1), secs(30))
            .await
            .with_context(|| f.context())?;
        eprintln!("[test] picture back {:?} after the kill", at - killed);
    }
    tokio::time::sleep(secs(3)).await;
    let after = f.relay().status().await?;
    eprintln!("[test] {:#?}", after.destinations);
    for (i, key) in [KEY, YT_KEY].iter().enumerate() {
        ensure!(
            connection(&f, key).await? == Some(connections[i]),
            "destination {i} reconnected after the encoder's crash\n{}",
            f.context()
        );
    }
    for d in &after.destinations {
        ensure!(d.up && d.reconnects == 0, "{} was touched: {d:?}", d.name);
    }
    ensure!(
        s.output_pid != Some(encoder),
        "the encoder was not replaced"
    );
    f.finish().await
}
