//! `systemctl reload` (SIGHUP): a changed configuration is applied without
//! the unit stopping; an invalid one is rejected with the reason and the
//! running one stays; an unchanged one changes nothing. A change of the
//! switching settings applies at once and leaves the output alone; a
//! change of what the output sends restarts it exactly once.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::common::*;
use crate::relay_rig::*;

fn append(rig: &Rig, line: &str) -> anyhow::Result<()> {
    let mut text = std::fs::read_to_string(&rig.env_file)?;
    text.push_str(line);
    text.push('\n');
    std::fs::write(&rig.env_file, text)?;
    Ok(())
}

/// `systemctl reload`: SIGHUP, then waits until relay's status counts one
/// more reload, whose outcome it returns with the status.
async fn reload(relay: &RelayProc) -> anyhow::Result<(String, Status)> {
    let before = relay.status().await?.reloads;
    relay.signal(Signal::SIGHUP)?;
    let s = relay
        .wait_for_status("the reload done", |s| s.reloads > before, secs(30))
        .await?;
    let outcome = last_reload_outcome(&s).unwrap_or_default().to_string();
    Ok((outcome, s))
}

#[tokio::test]
async fn reload_applies_a_changed_configuration() -> anyhow::Result<()> {
    // Default ALLOWED_PUBLISHERS (external) refuses a loopback publisher…
    let rig = Rig::start("reload-apply", RigOpts::default()).await?;
    let mut relay = rig.start_relay().await?;
    let mut publisher = Publisher::start(&rig.live_url(), PublisherOpts::colour("blue")).await?;
    let refused = relay
        .wait_for_status(
            "the loopback publisher refused",
            |s| s.publisher_allowed == Some(false),
            secs(30),
        )
        .await?;

    // …until the reloaded configuration allows it.
    append(&rig, "ALLOWED_PUBLISHERS=any")?;
    // ALLOWED_PUBLISHERS applies at once, without an output restart.
    let (outcome, s) = reload(&relay).await?;
    assert_eq!(outcome, "applied", "{s:?}");
    let s = relay
        .wait_for_status("the live feed on air", live_on_air, secs(60))
        .await?;
    assert!(relay.is_running(), "relay must not exit on reload");
    assert_eq!(s.output_pid, refused.output_pid, "the output restarted");
    assert_eq!(s.output_restarts, refused.output_restarts, "{s:?}");

    publisher.kill().await?;
    let status = relay.sigterm_and_wait(secs(10)).await?;
    assert!(status.success(), "{status}");
    Ok(())
}

#[tokio::test]
async fn invalid_reload_keeps_the_running_configuration() -> anyhow::Result<()> {
    let rig = Rig::start("reload-bad", RigOpts::default()).await?;
    let mut relay = rig.start_relay().await?;
    let good = std::fs::read_to_string(&rig.env_file)?;

    let before = relay.status().await?;
    append(&rig, "OUT_FPS=abc")?;
    let (outcome, s) = reload(&relay).await?;
    assert_eq!(outcome, "rejected", "{s:?}");
    let detail = &s.last_reload.as_ref().expect("a reload").detail;
    assert!(
        detail.contains("OUT_FPS"),
        "the reason must name the key: {detail}"
    );
    assert!(!detail.contains(KEY), "the stream key leaked: {detail}");
    // The status can answer before the log line has been read from relay's
    // stderr: wait for it rather than look once.
    relay.wait_for_log("reload rejected", secs(5)).await?;
    let line = relay
        .logs()
        .into_iter()
        .find(|l| l.contains("reload rejected"))
        .expect("the rejection is logged");
    assert!(!line.contains(KEY), "the stream key leaked: {line}");

    // Still the same pipeline: no restart of the output happened.
    tokio::time::sleep(secs(2)).await;
    assert!(relay.is_running());
    let s = relay.status().await?;
    assert!(
        s.output_pid == before.output_pid && s.output_restarts == before.output_restarts,
        "a rejected reload must not touch the output: before {before:?}, after {s:?}"
    );

    // The file put back as it was: nothing to do.
    std::fs::write(&rig.env_file, good)?;
    let (outcome, s) = reload(&relay).await?;
    assert_eq!(outcome, "unchanged", "{s:?}");

    let status = relay.sigterm_and_wait(secs(10)).await?;
    assert!(status.success(), "{status}");
    Ok(())
}

#[tokio::test]
async fn reload_of_a_threshold_leaves_the_output_alone() -> anyhow::Result<()> {
    let rig = Rig::start(
        "reload-tune",
        RigOpts {
            allowed_publishers: Some("any".to_string()),
            ..RigOpts::default()
        },
    )
    .await?;
    let mut relay = rig.start_relay().await?;
    // The destination's pusher has its URL; the output, the encoder, none.
    let pusher = wait_for_ffmpeg_child(relay.pid(), &rig.out_path(), secs(30)).await?;
    let output = relay.status().await?.output_pid.expect("the encoder's pid");
    let publisher = Publisher::start(
        &rig.live_url(),
        PublisherOpts {
            gop_frames: 30,
            ..PublisherOpts::colour("blue")
        },
    )
    .await?;
    relay
        .wait_for_status("the live feed on air", live_on_air, secs(60))
        .await?;

    append(&rig, "OFFLINE_AFTER_MS=8000")?;
    let reloaded_at = Instant::now();
    let (outcome, s) = reload(&relay).await?;
    assert_eq!(outcome, "applied", "{s:?}");
    // The reload is counted when it is decided; the daemon applies the new
    // settings a moment later.
    relay
        .wait_for_status(
            "OFFLINE_AFTER_MS 8000 in effect",
            |s| s.policy.offline_after_ms == 8000,
            secs(10),
        )
        .await?;

    // In effect: a 3 s freeze no longer fails over.
    tokio::time::sleep(secs(1)).await;
    publisher.stall()?;
    tokio::time::sleep(secs(3)).await;
    publisher.resume()?;
    tokio::time::sleep(secs(2)).await;
    let s = relay.status().await?;
    assert!(
        s.state == StateName::Live && no_switch_since(&s, reloaded_at),
        "the freeze failed over: {s:?}"
    );

    // And neither the output nor its connection restarted: same
    // processes, no restart counted.
    assert!(
        ffmpeg_children_with(relay.pid(), &rig.out_path()).contains(&pusher),
        "the destination's pusher changed: {:?}",
        describe_children(relay.pid())
    );
    assert_eq!(s.output_pid, Some(output), "{s:?}");
    assert_eq!(s.output_restarts, 0, "{s:?}");

    drop(publisher);
    let status = relay.sigterm_and_wait(secs(15)).await?;
    assert!(status.success(), "{status}");
    Ok(())
}

#[tokio::test]
async fn reload_of_an_encoding_setting_restarts_the_output_once() -> anyhow::Result<()> {
    let rig = Rig::start("reload-encode", RigOpts::default()).await?;
    let mut relay = rig.start_relay().await?;
    let output = wait_for_ffmpeg_child(relay.pid(), &rig.out_path(), secs(30)).await?;

    append(&rig, "VID_BITRATE=250k")?;
    let (outcome, s) = reload(&relay).await?;
    assert_eq!(outcome, "restarted", "{s:?}");
    let s = relay
        .wait_for_status(
            "a new output streaming",
            |s| output_streaming(s) && s.output_pid.is_some_and(|p| p != output),
            secs(60),
        )
        .await?;
    let new_output = s.output_pid.unwrap();
    assert!(
        cmdline(new_output).is_some_and(|c| c.contains("250k")),
        "the output must restart with the new bitrate: {:?}",
        cmdline(new_output)
    );
    // Once: give a second restart time to show, then look again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = relay.status().await?;
    assert!(
        later.output_pid == Some(new_output) && later.output_restarts == s.output_restarts,
        "the output restarted again: {s:?} then {later:?}"
    );
    assert!(relay.is_running());

    let status = relay.sigterm_and_wait(secs(15)).await?;
    assert!(status.success(), "{status}");
    Ok(())
}

#[tokio::test]
async fn a_new_offline_video_keeps_the_output_and_a_new_stream_key_reconnects_only_it(
) -> anyhow::Result<()> {
    let rig = Rig::start("reload-video", RigOpts::default()).await?;
    let mut relay = rig.start_relay().await?;
    let sink = Sink::start(&rig.out_url());
    sink.wait_for(Colour::Green, secs(30)).await?;
    // The destination's pusher is the one FFmpeg with its URL; the output
    // (the encoder) has none.
    let pusher = wait_for_ffmpeg_child(relay.pid(), &rig.out_path(), secs(30)).await?;
    let output = relay.status().await?.output_pid.expect("the encoder's pid");
    let connections = sink.runs_watched();

    // A new offline video: viewers see it, and the output, with its
    // connection to the platform, is not touched.
    let red = make_offline_video(rig.dir.path(), "red", true, 320, 180).await?;
    append(&rig, &format!("OFFLINE_VIDEO_PATH={}", red.display()))?;
    let (outcome, s) = reload(&relay).await?;
    assert_eq!(outcome, "new_offline_video", "{s:?}");
    sink.wait_for(Colour::Red, secs(60)).await?;
    let s = relay.status().await?;
    assert!(
        s.output_pid == Some(output) && s.output_restarts == 0,
        "the output was restarted: {s:?}"
    );
    assert_eq!(
        wait_for_ffmpeg_child(relay.pid(), &rig.out_path(), secs(5)).await?,
        pusher,
        "the destination was reconnected"
    );
    assert_eq!(
        sink.runs_watched(),
        connections,
        "the sink had to reconnect"
    );

    // A new stream key: only that destination's connection is made
    // again, to the new key; the encoder runs on.
    append(&rig, "KICK_KEY=otherkey")?;
    let (outcome, s) = reload(&relay).await?;
    assert_eq!(outcome, "applied", "{s:?}");
    wait_until_publishing(&rig.nginx.stat_url(), "out", "otherkey", secs(60)).await?;
    let s = relay
        .wait_for_status(
            "the destination streaming again",
            |s| {
                s.destinations
                    .first()
                    .is_some_and(|d| d.up && d.pid.is_some_and(|p| p != pusher))
            },
            secs(60),
        )
        .await?;
    tokio::time::sleep(secs(2)).await;
    let later = relay.status().await?;
    assert!(
        later.output_pid == Some(output) && later.output_restarts == 0,
        "the encoder restarted: {s:?} then {later:?}"
    );
    assert!(
        !relay.logs().iter().any(|l| l.contains("otherkey")),
        "the new stream key was logged"
    );

    let status = relay.sigterm_and_wait(secs(15)).await?;
    assert!(status.success(), "{status}");
    Ok(())
}
