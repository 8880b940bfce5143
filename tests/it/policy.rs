//! The switching policy: LIVE_STABLE_SECS keeps a flapping publisher off
//! air, LOW_BITRATE_KBPS/SECS takes a starved feed off air, and
//! OFFLINE_AFTER_MS decides how long a stall is tolerated. Each against a
//! real relay on a private nginx with real FFmpeg publishers; the
//! assertions are about what went on air and why (log lines and
//! `relay status`), not about how fast.

use std::time::Duration;

use anyhow::{bail, ensure};
use relay::api::{self, Reply, Request, Status};

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

/// `relay status` through the control socket beside the env file.
pub async fn status(rig: &Rig) -> anyhow::Result<Status> {
    let socket = rig.dir.path().join("relay.sock");
    match api::call(&socket, &Request::Status).await? {
        Reply::Status(s) => Ok(s),
        other => bail!("unexpected reply {other:?}"),
    }
}

/// A publisher that reaches the live feed quickly (keyframe every second).
fn quick(colour: &str) -> PublisherOpts {
    PublisherOpts {
        gop_frames: 30,
        ..PublisherOpts::colour(colour)
    }
}

fn count_since(relay: &RelayProc, mark: usize, needle: &str) -> usize {
    relay.logs()[mark..]
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}

#[tokio::test]
async fn a_flapping_publisher_does_not_flap_the_output() -> anyhow::Result<()> {
    let (rig, mut relay) = start("policy-flap", &["LIVE_STABLE_SECS=8"]).await?;

    // The first go-live of a session is not held.
    let mut publisher = Publisher::start(&rig.live_url(), quick("blue")).await?;
    let line = relay
        .wait_for_log_since(0, "on air: live", secs(60))
        .await?;
    assert!(
        line.contains("publisher allowed and frames flowing"),
        "{line}"
    );
    assert!(!logged(&relay, "held off air"), "{:?}", relay.logs());

    // Its link drops: offline, as always.
    publisher.kill().await?;
    relay
        .wait_for_log("on air: offline video (no live frame", secs(30))
        .await?;

    // It comes back for a moment and drops again, four times: each time
    // its frames reach relay, and each time they are kept off air.
    let mark = relay.log_mark();
    for round in 0..4 {
        let round_mark = relay.log_mark();
        let mut flap = Publisher::start(&rig.live_url(), quick("blue")).await?;
        relay
            .wait_for_log_since(round_mark, "live frames arriving", secs(30))
            .await?;
        // Long enough to go on air several times over without the policy.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let held = status(&rig).await?;
        flap.kill().await?;
        ensure!(
            held.held_off_air
                .as_deref()
                .is_some_and(|w| w.contains("LIVE_STABLE_SECS")),
            "round {round}: flowing frames should be held off air: {held:?}"
        );
        relay
            .wait_for_log_since(round_mark, "ingest waiting for live frames", secs(30))
            .await?;
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    assert_eq!(
        count_since(&relay, mark, "on air: live"),
        0,
        "a flapping publisher went on air: {:#?}",
        &relay.logs()[mark..]
    );
    assert!(count_since(&relay, mark, "live frames held off air") >= 4);

    // Once it stays, it goes back on air, saying why.
    let mark = relay.log_mark();
    let mut steady = Publisher::start(&rig.live_url(), quick("blue")).await?;
    let line = relay
        .wait_for_log_since(mark, "on air: live", secs(60))
        .await?;
    assert!(line.contains("stable for 8 s (LIVE_STABLE_SECS)"), "{line}");
    let s = status(&rig).await?;
    assert_eq!(s.state, api::StateName::Live, "{s:?}");
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
    relay.wait_for_log("on air: live", secs(60)).await?;
    // …and off once the window shows it starved.
    let line = relay
        .wait_for_log_since(0, "on air: offline video (live bitrate", secs(60))
        .await?;
    assert!(
        line.contains("below LOW_BITRATE_KBPS 200 for 3 s"),
        "{line}"
    );
    // It stays off air while it stays starved, and status says why.
    tokio::time::sleep(secs(4)).await;
    let s = status(&rig).await?;
    assert_ne!(s.state, api::StateName::Live, "{s:?}");
    let reason = s.last_switch.as_ref().map(|l| l.reason.clone());
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("LOW_BITRATE_KBPS")),
        "{s:?}"
    );
    assert!(
        s.held_off_air
            .as_deref()
            .is_some_and(|w| w.contains("LOW_BITRATE_KBPS")),
        "{s:?}"
    );
    assert_eq!(s.policy.low_bitrate_kbps, Some(200), "{s:?}");
    assert_eq!(
        relay
            .logs()
            .iter()
            .filter(|l| l.contains("on air: live"))
            .count(),
        1,
        "{:#?}",
        relay.logs()
    );

    // A threshold below the feed (applied by a reload, without touching the
    // output): the bitrate has recovered, and the feed goes back on air.
    let mut text = std::fs::read_to_string(&rig.env_file)?;
    text.push_str("LOW_BITRATE_KBPS=1\n");
    std::fs::write(&rig.env_file, text)?;
    let mark = relay.log_mark();
    relay.signal(nix::sys::signal::Signal::SIGHUP)?;
    let line = relay
        .wait_for_log_since(mark, "on air: live", secs(60))
        .await?;
    assert!(
        line.contains("live bitrate back above LOW_BITRATE_KBPS"),
        "{line}"
    );
    assert_eq!(count_since(&relay, mark, "output started"), 0);

    publisher.kill().await?;
    let status = relay.sigterm_and_wait(secs(15)).await?;
    assert!(status.success(), "{status}");
    Ok(())
}

#[tokio::test]
async fn offline_after_ms_tolerates_a_shorter_stall() -> anyhow::Result<()> {
    let (rig, mut relay) = start("policy-stall", &["OFFLINE_AFTER_MS=8000"]).await?;
    let mut publisher = Publisher::start(&rig.live_url(), quick("blue")).await?;
    relay.wait_for_log("on air: live", secs(60)).await?;
    // Let it settle on air, then freeze it for far longer than the
    // default 300 ms and well short of 8 s.
    tokio::time::sleep(secs(2)).await;
    let mark = relay.log_mark();
    publisher.stall()?;
    tokio::time::sleep(secs(3)).await;
    publisher.resume()?;
    tokio::time::sleep(secs(3)).await;
    assert_eq!(
        count_since(&relay, mark, "on air: offline"),
        0,
        "a 3 s stall failed over with OFFLINE_AFTER_MS=8000: {:#?}",
        &relay.logs()[mark..]
    );
    let s = status(&rig).await?;
    assert_eq!(s.state, api::StateName::Live, "{s:?}");
    assert_eq!(s.policy.offline_after_ms, 8000, "{s:?}");

    // A real end still fails over, after the longer gap, and says so.
    publisher.kill().await?;
    let line = relay
        .wait_for_log_since(mark, "on air: offline video", secs(60))
        .await?;
    assert!(line.contains("(OFFLINE_AFTER_MS 8000)"), "{line}");

    let status = relay.sigterm_and_wait(secs(15)).await?;
    assert!(status.success(), "{status}");
    Ok(())
}
