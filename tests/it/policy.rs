//! The switching policy: LIVE_STABLE_SECS keeps a flapping publisher off
//! air, LOW_BITRATE_KBPS/SECS takes a starved feed off air, and
//! OFFLINE_AFTER_MS decides how long a stall is tolerated. Each against a
//! real relay on a private nginx with real FFmpeg publishers; the
//! assertions are about what went on air and why (`relay status`), not
//! about how fast.

use std::time::{Duration, Instant};

use anyhow::ensure;

use crate::common::*;
use crate::relay_rig::*;

/// A rig that lets loopback publishers on air, with `extra` lines added
/// to its env file, and relay started on it.
async fn start(tag: &str, extra: &[&str]) -> anyhow::Result<(Rig, RelayProc)> {
    let rig = Rig::start(tag, RigOpts::any_publisher()).await?;
    let mut text = std::fs::read_to_string(&rig.env_file)?;
    for line in extra {
        text.push_str(line);
        text.push('\n');
    }
    std::fs::write(&rig.env_file, text)?;
    let relay = rig.start_relay().await?;
    Ok((rig, relay))
}

/// A publisher that reaches the live feed quickly (keyframe every second).
fn quick(colour: &str) -> PublisherOpts {
    PublisherOpts {
        gop_frames: 30,
        ..PublisherOpts::colour(colour)
    }
}

/// Waits until the last switch put `to` on air for `kind`, and returns
/// the status.
async fn wait_for_switch(
    relay: &RelayProc,
    to: &str,
    kind: &str,
    timeout: Duration,
) -> anyhow::Result<Status> {
    relay
        .wait_for_status(
            &format!("{to} on air ({kind})"),
            |s| last_switch_is(s, to, kind),
            timeout,
        )
        .await
}

/// Why the last switch happened, as relay says it to people.
fn reason(s: &Status) -> &str {
    s.last_switch.as_ref().map_or("", |l| l.reason.as_str())
}

#[tokio::test]
async fn a_flapping_publisher_does_not_flap_the_output() -> anyhow::Result<()> {
    let (rig, mut relay) = start("policy-flap", &["LIVE_STABLE_SECS=8"]).await?;

    // The first go-live of a session is not held.
    let mut publisher = Publisher::start(&rig.live_url(), quick("blue")).await?;
    let s = wait_for_switch(&relay, "live", "publisher_live", secs(60)).await?;
    assert_eq!(reason(&s), "publisher allowed and frames flowing", "{s:?}");
    assert_eq!(s.held_kind, None, "{s:?}");

    // Its link drops: offline, as always.
    publisher.kill().await?;
    wait_for_switch(&relay, "offline", "frames_stopped", secs(30)).await?;

    // It comes back for a moment and drops again, four times: each time
    // its frames reach relay, and each time they are kept off air.
    let flapping = Instant::now();
    for round in 0..4 {
        let mut flap = Publisher::start(&rig.live_url(), quick("blue")).await?;
        relay
            .wait_for_status(
                "the returning publisher's frames held off air",
                |s| s.held_kind.as_deref() == Some("unstable"),
                secs(30),
            )
            .await?;
        // Long enough to go on air several times over without the policy.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let held = relay.status().await?;
        flap.kill().await?;
        ensure!(
            held.held_kind.as_deref() == Some("unstable")
                && held
                    .held_off_air
                    .as_deref()
                    .is_some_and(|w| w.contains("LIVE_STABLE_SECS"))
                && offline_on_air(&held),
            "round {round}: flowing frames should be held off air: {held:?}"
        );
        // Gone, and a new ingest waits for the next publisher.
        relay
            .wait_for_status(
                "a new ingest waiting, nobody held",
                |s| s.publisher.is_none() && s.held_kind.is_none() && s.ingest_pid.is_some(),
                secs(30),
            )
            .await?;
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let s = relay.status().await?;
    assert!(
        offline_on_air(&s) && no_switch_since(&s, flapping),
        "a flapping publisher went on air: {s:?}"
    );

    // Once it stays, it goes back on air, saying why.
    let mut steady = Publisher::start(&rig.live_url(), quick("blue")).await?;
    let s = wait_for_switch(&relay, "live", "publisher_stable", secs(60)).await?;
    assert!(
        reason(&s).contains("stable for 8 s (LIVE_STABLE_SECS)"),
        "{s:?}"
    );
    assert_eq!(s.state, StateName::Live, "{s:?}");
    assert_eq!(s.held_off_air, None, "{s:?}");
    assert_eq!(s.policy.live_stable_s, 8.0, "{s:?}");

    steady.kill().await?;
    let status = relay.sigterm_and_wait(secs(15)).await?;
    assert!(status.success(), "{status}");
    Ok(())
}

#[tokio::test]
async fn a_starved_feed_goes_offline_and_says_why() -> anyhow::Result<()> {
    // A solid colour without audio needs a few kb/s: far below 200.
    let (rig, mut relay) = start(
        "policy-lowrate",
        &["LOW_BITRATE_KBPS=200", "LOW_BITRATE_SECS=3"],
    )
    .await?;
    let mut publisher = Publisher::start(
        &rig.live_url(),
        PublisherOpts {
            audio: false,
            ..quick("blue")
        },
    )
    .await?;
    // It goes on air first: its bitrate is not known yet…
    wait_for_switch(&relay, "live", "publisher_live", secs(60)).await?;
    // …and off once the window shows it starved.
    let s = wait_for_switch(&relay, "offline", "low_bitrate", secs(60)).await?;
    let off_at = Instant::now();
    assert!(
        reason(&s).contains("below LOW_BITRATE_KBPS 200 for 3 s"),
        "{s:?}"
    );
    // It stays off air while it stays starved, and status says why.
    tokio::time::sleep(secs(4)).await;
    let s = relay.status().await?;
    assert_ne!(s.state, StateName::Live, "{s:?}");
    assert!(no_switch_since(&s, off_at), "{s:?}");
    assert!(reason(&s).contains("LOW_BITRATE_KBPS"), "{s:?}");
    assert_eq!(s.held_kind.as_deref(), Some("low_bitrate"), "{s:?}");
    assert!(
        s.held_off_air
            .as_deref()
            .is_some_and(|w| w.contains("LOW_BITRATE_KBPS")),
        "{s:?}"
    );
    assert_eq!(s.policy.low_bitrate_kbps, Some(200), "{s:?}");

    // A threshold below the feed (applied by a reload, without touching the
    // output): the bitrate has recovered, and the feed goes back on air.
    let mut text = std::fs::read_to_string(&rig.env_file)?;
    text.push_str("LOW_BITRATE_KBPS=1\n");
    std::fs::write(&rig.env_file, text)?;
    relay.signal(nix::sys::signal::Signal::SIGHUP)?;
    let back = wait_for_switch(&relay, "live", "bitrate_recovered", secs(60)).await?;
    assert!(
        reason(&back).contains("live bitrate back above LOW_BITRATE_KBPS"),
        "{back:?}"
    );
    assert_eq!(last_reload_outcome(&back), Some("applied"), "{back:?}");
    assert!(
        back.output_pid == s.output_pid && back.output_restarts == s.output_restarts,
        "the reload restarted the output: {s:?} then {back:?}"
    );

    publisher.kill().await?;
    let status = relay.sigterm_and_wait(secs(15)).await?;
    assert!(status.success(), "{status}");
    Ok(())
}

#[tokio::test]
async fn offline_after_ms_tolerates_a_shorter_stall() -> anyhow::Result<()> {
    let (rig, mut relay) = start("policy-stall", &["OFFLINE_AFTER_MS=8000"]).await?;
    let mut publisher = Publisher::start(&rig.live_url(), quick("blue")).await?;
    relay
        .wait_for_status("the live feed on air", live_on_air, secs(60))
        .await?;
    // Let it settle on air, then freeze it for far longer than the
    // default 300 ms and well short of 8 s.
    tokio::time::sleep(secs(2)).await;
    let stalled_at = Instant::now();
    publisher.stall()?;
    tokio::time::sleep(secs(3)).await;
    publisher.resume()?;
    tokio::time::sleep(secs(3)).await;
    let s = relay.status().await?;
    assert!(
        s.state == StateName::Live && no_switch_since(&s, stalled_at),
        "a 3 s stall failed over with OFFLINE_AFTER_MS=8000: {s:?}"
    );
    assert_eq!(s.policy.offline_after_ms, 8000, "{s:?}");

    // A real end still fails over, after the longer gap, and says so.
    publisher.kill().await?;
    let s = wait_for_switch(&relay, "offline", "frames_stopped", secs(60)).await?;
    assert!(reason(&s).contains("(OFFLINE_AFTER_MS 8000)"), "{s:?}");

    let status = relay.sigterm_and_wait(secs(15)).await?;
    assert!(status.success(), "{status}");
    Ok(())
}
