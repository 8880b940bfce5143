//! ALLOWED_PUBLISHERS end to end: who may put a live feed on air.
//!
//! A refused publisher must never reach the platform (the sink, playing
//! relay's output, stays on the green offline video) and must not cost an
//! ingest FFmpeg; an allowed one goes on air (blue). "External" addresses
//! come from a network namespace with a 198.51.100.x address, which the
//! default rule must count as external (documentation ranges are not
//! private: ARCHITECTURE.md, "What counts as an external publisher").
//! Relay itself always pulls from 127.0.0.1.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::relay_rig::*;

/// The longest gap between sink frames (5 per second) that still counts as
/// a steady picture on a busy shared machine.
const MAX_GAP: Duration = Duration::from_millis(1500);

/// Waits until nginx lists no publisher on `live/stream`.
async fn wait_for_no_publisher(rig: &Rig, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let stat = fetch_stat(&rig.nginx.stat_url()).await?;
        if stat.publisher("live", &rig.stream).is_none() {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "live/{} still has a publisher after {timeout:?}",
            rig.stream
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until relay's status shows the publisher at `address`, allowed
/// on air or not.
async fn wait_for_publisher(
    relay: &RelayProc,
    address: &str,
    allowed: bool,
    timeout: Duration,
) -> anyhow::Result<Status> {
    relay
        .wait_for_status(
            &format!("publisher {address} with publisher_allowed={allowed}"),
            |s| s.publisher.as_deref() == Some(address) && s.publisher_allowed == Some(allowed),
            timeout,
        )
        .await
}

/// Starts relay and a sink on its output; returns once the sink shows the
/// green offline video.
async fn relay_on_air_offline(rig: &Rig) -> anyhow::Result<(RelayProc, Sink)> {
    let relay = rig.start_relay().await?;
    let sink = Sink::start(&rig.out_url());
    sink.wait_for(Colour::Green, secs(30)).await?;
    Ok((relay, sink))
}

/// Publishes `colour` from loopback, which the rule in force does not
/// allow, and watches for `hold` from the publisher's start: relay logs the
/// refusal once, stops the ingest that was waiting and starts none, and
/// the output stays green throughout. Returns the (still running)
/// publisher.
async fn refuse_loopback_publisher(
    rig: &Rig,
    relay: &RelayProc,
    sink: &Sink,
    colour: &str,
    hold: Duration,
) -> anyhow::Result<Publisher> {
    // Relay keeps an ingest waiting for the next publisher even while none
    // is there (ARCHITECTURE.md, "One ingest per publisher"). Seeing it
    // first makes "no ingest for the refused publisher" below a real check
    // rather than a vacuous one.
    wait_for_ffmpeg_child(relay.pid(), &rig.live_path(), secs(15)).await?;

    let before = relay.status().await?;
    let mark = relay.log_mark();
    let t0 = Instant::now();
    let publisher = Publisher::start(&rig.live_url(), PublisherOpts::colour(colour)).await?;
    let client =
        wait_until_publishing(&rig.nginx.stat_url(), "live", &rig.stream, secs(15)).await?;
    assert_eq!(client.address, "127.0.0.1");

    wait_for_publisher(relay, "127.0.0.1", false, secs(15)).await?;

    // The ingest that was waiting is stopped (SIGTERM, SIGKILL after
    // KILL_GRACE) and no new one starts while the refused publisher stays.
    wait_for_no_ffmpeg_child(relay.pid(), &rig.live_path(), secs(KILL_GRACE_S + 3)).await?;
    let end = t0 + hold;
    while Instant::now() < end {
        let ingests = ffmpeg_children_with(relay.pid(), &rig.live_path());
        assert!(
            ingests.is_empty(),
            "an ingest runs for a refused publisher: {:?}",
            describe_children(relay.pid())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    assert!(
        publisher.is_running(),
        "the publisher gave up, so the window proves nothing: {:?}",
        publisher.logs()
    );
    let stat = fetch_stat(&rig.nginx.stat_url()).await?;
    assert_eq!(
        stat.publisher("live", &rig.stream).map(|p| p.id),
        Some(client.id),
        "the same publisher must have stayed on the stream"
    );
    check_steady(sink, Colour::Green, t0, Instant::now(), MAX_GAP)?;
    // Said once, not at every poll of the stat page.
    let refusals = relay.logs()[mark..]
        .iter()
        .filter(|l| l.contains("publisher refused"))
        .count();
    assert_eq!(refusals, 1, "{:?}", &relay.logs()[mark..]);
    let after = relay.status().await?;
    assert!(
        offline_on_air(&after)
            && after.last_switch.as_ref().map(|l| &l.to)
                == before.last_switch.as_ref().map(|l| &l.to),
        "relay went live: {after:?}"
    );
    assert!(
        after.last_switch.as_ref().map(|l| l.seconds_ago)
            >= before.last_switch.as_ref().map(|l| l.seconds_ago),
        "relay switched meanwhile: before {before:?}, after {after:?}"
    );
    Ok(publisher)
}

#[tokio::test]
async fn disallowed_publisher_never_goes_on_air() -> anyhow::Result<()> {
    let rig = Rig::start("refuse", RigOpts::default()).await?;
    let (mut relay, sink) = relay_on_air_offline(&rig).await?;
    relay
        .wait_for_log("allowed_publishers=external", secs(1))
        .await?;

    let publisher =
        refuse_loopback_publisher(&rig, &relay, &sink, "blue", Duration::from_secs(11)).await?;

    // Never blue, at any time.
    assert_eq!(
        frames_of(&sink, Colour::Blue),
        0,
        "a refused publisher reached the output: {}",
        sink.summary_since(sink.history()[0].0)
    );
    assert_eq!(sink.runs_watched(), 1, "the sink had to reconnect");
    sink.expect_no_black()?;

    let status = relay.sigterm_and_wait(secs(KILL_GRACE_S + 5)).await?;
    assert_eq!(status.code(), Some(0));
    drop(publisher);
    Ok(())
}

#[tokio::test]
async fn allowed_external_publisher_goes_on_air() -> anyhow::Result<()> {
    if netns_skipped() {
        return missing_precondition("RELAY_TEST_NO_NETNS is set: no network namespace");
    }
    let ns = Netns::create().await?;
    let host = IpAddr::V4(ns.host_addr());
    let rig = Rig::start(
        "external",
        RigOpts {
            extra_listen: vec![host],
            ..RigOpts::default()
        },
    )
    .await?;
    let (mut relay, sink) = relay_on_air_offline(&rig).await?;

    let t0 = Instant::now();
    let _publisher = Publisher::start(
        &rig.nginx.rtmp_url_on(host, "live", &rig.stream),
        PublisherOpts {
            netns: Some(ns.name().to_string()),
            ..PublisherOpts::colour("blue")
        },
    )
    .await?;
    let client =
        wait_until_publishing(&rig.nginx.stat_url(), "live", &rig.stream, secs(15)).await?;
    let ns_addr = ns.ns_addr().to_string();
    assert_eq!(
        client.address, ns_addr,
        "the publisher must come from the namespace"
    );
    assert!(
        ns_addr.starts_with("198.51.100."),
        "the point is a documentation-range address: {ns_addr}"
    );

    wait_for_publisher(&relay, &ns_addr, true, secs(15)).await?;
    let live = relay
        .wait_for_status("the live feed on air", live_on_air, secs(30))
        .await?;
    assert_eq!(
        live.publisher.as_deref(),
        Some(ns_addr.as_str()),
        "{live:?}"
    );
    let blue = sink.wait_for_since(Colour::Blue, t0, secs(30)).await?;
    eprintln!("publisher start -> blue at the sink: {:?}", blue - t0);
    sink.expect_steady(Colour::Blue, secs(3)).await?;

    // Relay pulls the feed from loopback, not from the namespace side.
    let ingests = ffmpeg_children_with(relay.pid(), &rig.live_path());
    assert_eq!(ingests.len(), 1, "{:?}", describe_children(relay.pid()));
    let ingest = cmdline(ingests[0]).unwrap_or_default();
    assert!(
        ingest.contains(&format!("rtmp://127.0.0.1{}", rig.live_path())),
        "{ingest}"
    );
    let status = relay.status().await?;
    assert!(
        live_on_air(&status) && status.publisher_allowed == Some(true),
        "{status:?}"
    );
    assert_eq!(sink.runs_watched(), 1, "the sink had to reconnect");
    sink.expect_no_black()?;

    let status = relay.sigterm_and_wait(secs(KILL_GRACE_S + 5)).await?;
    assert_eq!(status.code(), Some(0));
    Ok(())
}

#[tokio::test]
async fn cidr_list_selects_publishers() -> anyhow::Result<()> {
    if netns_skipped() {
        return missing_precondition("RELAY_TEST_NO_NETNS is set: no network namespace");
    }
    let ns = Netns::create().await?;
    let host = IpAddr::V4(ns.host_addr());
    let ns_addr = ns.ns_addr();
    // A list: an unrelated range and exactly the namespace's address.
    let rule = format!("203.0.113.0/24, {ns_addr}/32");
    let rig = Rig::start(
        "cidr",
        RigOpts {
            extra_listen: vec![host],
            allowed_publishers: Some(rule),
        },
    )
    .await?;
    let (mut relay, sink) = relay_on_air_offline(&rig).await?;
    relay
        .wait_for_log(
            &format!("allowed_publishers=203.0.113.0/24, {ns_addr}/32"),
            secs(1),
        )
        .await?;

    // Loopback is not on the list: refused, output stays green.
    let mut red = refuse_loopback_publisher(&rig, &relay, &sink, "red", secs(5)).await?;
    red.kill().await?;
    wait_for_no_publisher(&rig, secs(10)).await?;
    relay
        .wait_for_status("no publisher", |s| s.publisher.is_none(), secs(10))
        .await?;

    // The namespace address is: on air.
    let t1 = Instant::now();
    let mut blue = Publisher::start(
        &rig.nginx.rtmp_url_on(host, "live", &rig.stream),
        PublisherOpts {
            netns: Some(ns.name().to_string()),
            ..PublisherOpts::colour("blue")
        },
    )
    .await?;
    wait_for_publisher(&relay, &ns_addr.to_string(), true, secs(15)).await?;
    relay
        .wait_for_status("the live feed on air", live_on_air, secs(30))
        .await?;
    let blue_at = sink.wait_for_since(Colour::Blue, t1, secs(30)).await?;
    eprintln!(
        "allowed publisher start -> blue at the sink: {:?}",
        blue_at - t1
    );
    sink.expect_steady(Colour::Blue, secs(2)).await?;

    // The allowed publisher drops out and a loopback one takes the stream
    // over at once: relay falls back to offline and the newcomer, refused,
    // never shows, even though a fresh ingest is waiting on that stream.
    blue.kill().await?;
    wait_for_no_publisher(&rig, secs(10)).await?;
    let t2 = Instant::now();
    let red2 = Publisher::start(&rig.live_url(), PublisherOpts::colour("red")).await?;
    relay
        .wait_for_status("the offline video on air", offline_on_air, secs(15))
        .await?;
    wait_for_publisher(&relay, "127.0.0.1", false, secs(15)).await?;
    let refused_at = Instant::now();
    let green = sink.wait_for_since(Colour::Green, t2, secs(15)).await?;
    sleep_until(t2 + secs(6)).await;
    check_steady(&sink, Colour::Green, green, Instant::now(), MAX_GAP)?;
    assert!(red2.is_running(), "{:?}", red2.logs());
    // No switch since the refusal: the last one is older than that.
    let status = relay.status().await?;
    let last = status.last_switch.as_ref().expect("switched before");
    assert!(
        offline_on_air(&status) && last.to == "offline",
        "{status:?}"
    );
    assert!(
        Duration::from_secs(last.seconds_ago + 1) >= refused_at.elapsed(),
        "relay switched after refusing the publisher: {status:?}"
    );
    wait_for_no_ffmpeg_child(relay.pid(), &rig.live_path(), secs(KILL_GRACE_S + 3)).await?;

    assert_eq!(
        frames_of(&sink, Colour::Red),
        0,
        "the refused publisher reached the output: {}",
        sink.summary_since(sink.history()[0].0)
    );
    assert_eq!(sink.runs_watched(), 1, "the sink had to reconnect");
    sink.expect_no_black()?;
    let status = relay.sigterm_and_wait(secs(KILL_GRACE_S + 5)).await?;
    assert_eq!(status.code(), Some(0));
    Ok(())
}
