//! Feeds that real publishers send and a busy machine makes: video without
//! audio, a few frames a second, a publisher frozen and resumed, relay's own
//! ingest starved while the publisher keeps sending, and a publisher that
//! really stops. Same rig as `switching` (green offline video, blue
//! publishers, one sink on the output); what is on air is read from the
//! sink and from `relay status --json`.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::common::*;
use crate::switching::{Rig, FAIL_OVER, GO_LIVE, STEADY};

/// Frames of `colour` the sink saw at or after `since`.
fn seen_since(rig: &Rig, since: Instant, colour: Colour) -> usize {
    rig.sink
        .history_frames()
        .into_iter()
        .filter(|f| f.at >= since && f.colour == colour)
        .count()
}

#[tokio::test]
async fn a_video_only_publisher_goes_on_air_from_its_first_keyframe() -> anyhow::Result<()> {
    let rig = Rig::start("fd-videoonly").await?;
    rig.sink
        .wait_for_since(Colour::Green, rig.started, secs(20))
        .await?;
    let waiting = rig
        .relay
        .wait_for_status("an ingest waiting", |s| s.ingest_pid.is_some(), secs(20))
        .await?
        .ingest_pid;
    // A keyframe every 5 s: an ingest restarted after the first one would
    // wait for the second.
    let t = Instant::now();
    let _publisher = rig
        .publish(PublisherOpts {
            audio: false,
            gop_frames: 150,
            ..PublisherOpts::colour("blue")
        })
        .await?;
    let live = rig
        .relay
        .wait_for_status("the video-only publisher on air", live_on_air, GO_LIVE)
        .await?;
    let took = t.elapsed();
    eprintln!("[test] video-only publisher (5 s GOP) on air after {took:?}");
    ensure!(
        live.ingest_pid == waiting && live.ingest_restarts == 0,
        "the waiting ingest ({waiting:?}) was replaced by {:?} ({} restarts): the first GOP was lost\n{}",
        live.ingest_pid,
        live.ingest_restarts,
        rig.context()
    );
    ensure!(
        took < Duration::from_secs(5),
        "on air after {took:?}: not from the first keyframe (the next one is 5 s later)\n{}",
        rig.context()
    );
    rig.sink
        .wait_for_since(Colour::Blue, t, GO_LIVE)
        .await
        .with_context(|| rig.context())?;
    rig.assert_one_output_session()?;
    rig.stop().await
}

#[tokio::test]
async fn a_two_fps_publisher_goes_on_air_and_stays() -> anyhow::Result<()> {
    let rig = Rig::start("fd-2fps").await?;
    rig.sink
        .wait_for_since(Colour::Green, rig.started, secs(20))
        .await?;
    let t = Instant::now();
    let _publisher = rig
        .publish(PublisherOpts {
            fps: 2,
            gop_frames: 4,
            ..PublisherOpts::colour("blue")
        })
        .await?;
    rig.relay
        .wait_for_status("the 2 fps publisher on air", live_on_air, GO_LIVE)
        .await?;
    eprintln!("[test] 2 fps publisher on air after {:?}", t.elapsed());
    rig.sink.wait_for_since(Colour::Blue, t, GO_LIVE).await?;
    let on_air = Instant::now();
    tokio::time::sleep(secs(10)).await;
    let status = rig.relay.status().await?;
    ensure!(
        live_on_air(&status) && last_switch_is(&status, "live", "publisher_live"),
        "the 2 fps feed did not stay on air: {status:?}\n{}",
        rig.context()
    );
    ensure!(
        status.ingest_restarts == 0,
        "ingest restarts with a 2 fps feed: {status:?}"
    );
    let green = seen_since(&rig, on_air, Colour::Green);
    ensure!(
        green == 0,
        "{green} offline frames while the 2 fps feed was on air: {}",
        rig.sink.summary_since(on_air)
    );
    rig.assert_one_output_session()?;
    rig.stop().await
}

/// Switches relay like `relay switch MODE`.
async fn switch(rig: &Rig, to: relay::api::Mode) -> anyhow::Result<()> {
    let socket = rig.relay.control_socket()?;
    relay::api::call(&socket, &relay::api::Request::Switch { to })
        .await
        .context("relay switch")?;
    Ok(())
}

#[tokio::test]
async fn frames_that_stopped_off_air_do_not_hold_the_next_publisher() -> anyhow::Result<()> {
    // A long flap hold, so that being held would show.
    let rig = Rig::start_with("fd-attempts", &[("LIVE_STABLE_SECS", "30")]).await?;
    rig.sink
        .wait_for_since(Colour::Green, rig.started, secs(20))
        .await?;
    // Frames that flow and stop while they are not on air (here held off
    // air by the operator; in the field, a feed too slow or too short to
    // be ready): no failover, so no flap hold for who comes next.
    switch(&rig, relay::api::Mode::Offline).await?;
    let first = rig.publish(PublisherOpts::colour("red")).await?;
    rig.relay
        .wait_for_status(
            "the first publisher's frames flowing",
            |s| s.ingest_pid.is_some() && s.live_frames > 30,
            GO_LIVE,
        )
        .await?;
    first.stall()?;
    tokio::time::sleep(secs(1)).await;
    drop(first);
    switch(&rig, relay::api::Mode::Auto).await?;
    let t = Instant::now();
    let _blue = rig.publish(PublisherOpts::colour("blue")).await?;
    let live = rig
        .relay
        .wait_for_status("the next publisher on air", live_on_air, GO_LIVE)
        .await?;
    eprintln!("[test] next publisher on air after {:?}", t.elapsed());
    ensure!(
        last_switch_is(&live, "live", "publisher_live"),
        "held off air as after a failover: {live:?}\n{}",
        rig.context()
    );
    rig.stop().await
}

#[tokio::test]
async fn a_publisher_frozen_for_5s_comes_back_on_its_ingest() -> anyhow::Result<()> {
    let rig = Rig::start_with("fd-frozen", &[("LIVE_STABLE_SECS", "1")]).await?;
    rig.sink
        .wait_for_since(Colour::Green, rig.started, secs(20))
        .await?;
    let t = Instant::now();
    let blue = rig.publish(PublisherOpts::colour("blue")).await?;
    rig.expect_switch(Colour::Green, Colour::Blue, t, GO_LIVE, STEADY)
        .await?;
    let before = rig.relay.status().await?;

    let t = Instant::now();
    blue.stall()?;
    rig.expect_switch(Colour::Blue, Colour::Green, t, FAIL_OVER, Duration::ZERO)
        .await?;
    let until = t + secs(5);
    tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;

    let t = Instant::now();
    blue.resume()?;
    rig.relay
        .wait_for_status("back on air after the freeze", live_on_air, GO_LIVE)
        .await?;
    let back = t.elapsed();
    eprintln!("[test] frozen 5 s, back on air {back:?} after it resumed (LIVE_STABLE_SECS 1)");
    let after = rig.relay.status().await?;
    ensure!(
        after.ingest_pid == before.ingest_pid && after.ingest_restarts == 0,
        "the ingest was replaced during the freeze ({:?} -> {:?}, {} restarts)\n{}",
        before.ingest_pid,
        after.ingest_pid,
        after.ingest_restarts,
        rig.context()
    );
    ensure!(
        back < secs(10),
        "back on air only {back:?} after the publisher resumed\n{}",
        rig.context()
    );
    rig.assert_one_output_session()?;
    rig.stop().await
}

#[tokio::test]
async fn a_starved_ingest_holds_the_picture_instead_of_failing_over() -> anyhow::Result<()> {
    let rig = Rig::start("fd-starved").await?;
    rig.sink
        .wait_for_since(Colour::Green, rig.started, secs(20))
        .await?;
    let t = Instant::now();
    let _blue = rig.publish(PublisherOpts::colour("blue")).await?;
    rig.expect_switch(Colour::Green, Colour::Blue, t, GO_LIVE, STEADY)
        .await?;
    let status = rig.relay.status().await?;
    let ingest = status.ingest_pid.context("no ingest pid in status")?;
    // As a starved CPU would: the ingest gets no time for a second while
    // the publisher goes on sending.
    let paused = Instant::now();
    kill(Pid::from_raw(ingest as i32), Signal::SIGSTOP)?;
    tokio::time::sleep(secs(1)).await;
    kill(Pid::from_raw(ingest as i32), Signal::SIGCONT)?;
    tokio::time::sleep(secs(4)).await;
    let after = rig.relay.status().await?;
    let green = seen_since(&rig, paused, Colour::Green);
    let black = seen_since(&rig, paused, Colour::Black);
    eprintln!(
        "[test] ingest paused 1 s: {} starved holds, {green} offline and {black} black frames at the sink",
        after.starved_holds
    );
    ensure!(
        live_on_air(&after)
            && after
                .last_switch
                .as_ref()
                .map(|l| (&l.to, &l.kind, &l.reason))
                == status
                    .last_switch
                    .as_ref()
                    .map(|l| (&l.to, &l.kind, &l.reason)),
        "the paused ingest caused a switch: {after:?}\n{}",
        rig.context()
    );
    ensure!(
        green == 0 && black == 0,
        "{green} offline and {black} black frames while the ingest was paused: {}",
        rig.sink.summary_since(paused)
    );
    ensure!(
        after.starved_holds >= 1,
        "no starved hold counted: {after:?}"
    );
    rig.assert_one_output_session()?;
    rig.stop().await
}

#[tokio::test]
async fn a_publisher_that_really_stops_fails_over_within_500ms() -> anyhow::Result<()> {
    let rig = Rig::start("fd-stops").await?;
    rig.sink
        .wait_for_since(Colour::Green, rig.started, secs(20))
        .await?;
    let t = Instant::now();
    let blue = rig.publish(PublisherOpts::colour("blue")).await?;
    rig.expect_switch(Colour::Green, Colour::Blue, t, GO_LIVE, STEADY)
        .await?;
    // Frozen: the connection stays, no data comes, nothing waits unread.
    blue.stall()?;
    let status = rig
        .relay
        .wait_for_status(
            "offline after the publisher stopped",
            |s| last_switch_is(s, "offline", "frames_stopped"),
            FAIL_OVER,
        )
        .await?;
    // relay's own measure of the silence it failed over on, in its reason:
    // "no live frame for N ms (OFFLINE_AFTER_MS 300)".
    let reason = &status.last_switch.as_ref().unwrap().reason;
    let ms: u64 = reason
        .strip_prefix("no live frame for ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("unexpected reason {reason:?}"))?;
    eprintln!("[test] failed over after {ms} ms without a frame");
    ensure!(
        ms <= 500,
        "failed over after {ms} ms without a frame: {reason}"
    );
    ensure!(
        status.starved_holds == 0,
        "a stopped publisher held: {status:?}"
    );
    rig.stop().await
}
