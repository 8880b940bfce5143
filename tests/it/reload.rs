//! `systemctl reload` (SIGHUP): a changed configuration is applied without
//! the unit stopping; an invalid one is rejected with the reason and the
//! running one stays; an unchanged one changes nothing. A change of the
//! switching settings applies at once and leaves the output alone; a
//! change of what the output sends restarts it exactly once.

use std::time::Duration;

use anyhow::bail;
use nix::sys::signal::Signal;
use relay::api::{self, Reply, Request, Status};

use crate::common::*;
use crate::relay_rig::*;

fn append(rig: &Rig, line: &str) -> anyhow::Result<()> {
    let mut text = std::fs::read_to_string(&rig.env_file)?;
    text.push_str(line);
    text.push('\n');
    std::fs::write(&rig.env_file, text)?;
    Ok(())
}

#[tokio::test]
async fn reload_applies_a_changed_configuration() -> anyhow::Result<()> {
    // Default ALLOWED_PUBLISHERS (external) refuses a loopback publisher…
    let rig = Rig::start("reload-apply", RigOpts::default()).await?;
    let mut relay = rig.start_relay().await?;
    let mut publisher = Publisher::start(&rig.live_url(), PublisherOpts::colour("blue")).await?;
    relay
        .wait_for_log("publisher refused by ALLOWED_PUBLISHERS", secs(30))
        .await?;

    // …until the reloaded configuration allows it.
    append(&rig, "ALLOWED_PUBLISHERS=any")?;
    let mark = relay.log_mark();
    relay.signal(Signal::SIGHUP)?;
    // ALLOWED_PUBLISHERS applies at once, without an output restart.
    relay
        .wait_for_log_since(mark, "reload: new settings applied at once", secs(30))
        .await?;
    relay
        .wait_for_log_since(mark, "on air: live", secs(60))
        .await?;
    assert!(relay.is_running(), "relay must not exit on reload");
    assert_eq!(count_since(&relay, mark, "output started"), 0);

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

    append(&rig, "OUT_FPS=abc")?;
    let mark = relay.log_mark();
    relay.signal(Signal::SIGHUP)?;
    let line = relay
        .wait_for_log_since(mark, "reload rejected", secs(30))
        .await?;
    assert!(
        line.contains("OUT_FPS"),
        "the reason must name the key: {line}"
    );
    assert!(!line.contains(KEY), "the stream key leaked: {line}");

    // Still the same pipeline: no restart of the output happened.
    tokio::time::sleep(secs(2)).await;
    assert!(relay.is_running());
    let restarted = relay.logs()[mark..]
        .iter()
        .any(|l| l.contains("output started") || l.contains("relay starting"));
    assert!(!restarted, "a rejected reload must not touch the output");

    // The file put back as it was: nothing to do.
    std::fs::write(&rig.env_file, good)?;
    let mark = relay.log_mark();
    relay.signal(Signal::SIGHUP)?;
    relay
        .wait_for_log_since(mark, "reload: the configuration is unchanged", secs(30))
        .await?;

    let status = relay.sigterm_and_wait(secs(10)).await?;
    assert!(status.success(), "{status}");
    Ok(())
}

fn count_since(relay: &RelayProc, mark: usize, needle: &str) -> usize {
    relay.logs()[mark..]
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}

async fn status(rig: &Rig) -> anyhow::Result<Status> {
    match api::call(&rig.dir.path().join("relay.sock"), &Request::Status).await? {
        Reply::Status(s) => Ok(s),
        other => bail!("unexpected reply {other:?}"),
    }
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
    let output = wait_for_ffmpeg_child(relay.pid(), &rig.out_path(), secs(30)).await?;
    let publisher = Publisher::start(
        &rig.live_url(),
        PublisherOpts {
            gop_frames: 30,
            ..PublisherOpts::colour("blue")
        },
    )
    .await?;
    relay.wait_for_log("on air: live", secs(60)).await?;

    append(&rig, "OFFLINE_AFTER_MS=8000")?;
    let mark = relay.log_mark();
    relay.signal(Signal::SIGHUP)?;
    relay
        .wait_for_log_since(mark, "reload: new settings applied at once", secs(30))
        .await?;
    let s = status(&rig).await?;
    assert_eq!(s.policy.offline_after_ms, 8000, "{s:?}");

    // In effect: a 3 s freeze no longer fails over.
    tokio::time::sleep(secs(1)).await;
    publisher.stall()?;
    tokio::time::sleep(secs(3)).await;
    publisher.resume()?;
    tokio::time::sleep(secs(2)).await;
    assert_eq!(
        count_since(&relay, mark, "on air: offline"),
        0,
        "{:#?}",
        &relay.logs()[mark..]
    );

    // And the output never restarted: same process, no new start, no
    // restart counted.
    assert_eq!(count_since(&relay, mark, "output started"), 0);
    assert!(
        ffmpeg_children_with(relay.pid(), &rig.out_path()).contains(&output),
        "the output ffmpeg changed: {:?}",
        describe_children(relay.pid())
    );
    let s = status(&rig).await?;
    assert_eq!(s.output_restarts, 0, "{s:?}");
    assert_eq!(s.state, api::StateName::Live, "{s:?}");

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
    let mark = relay.log_mark();
    relay.signal(Signal::SIGHUP)?;
    relay
        .wait_for_log_since(mark, "reload: applying the new configuration", secs(30))
        .await?;
    relay
        .wait_for_log_since(mark, "output streaming", secs(60))
        .await?;
    let new_output = wait_for_ffmpeg_child(relay.pid(), &rig.out_path(), secs(30)).await?;
    assert_ne!(
        new_output, output,
        "the output must restart with the new bitrate"
    );
    assert!(
        cmdline(new_output).is_some_and(|c| c.contains("250k")),
        "{:?}",
        cmdline(new_output)
    );
    // Once: give a second restart time to show, then count.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(count_since(&relay, mark, "output started"), 1);
    assert!(relay.is_running());

    let status = relay.sigterm_and_wait(secs(15)).await?;
    assert!(status.success(), "{status}");
    Ok(())
}

#[tokio::test]
async fn a_new_offline_video_keeps_the_output_and_a_new_destination_restarts_it_once(
) -> anyhow::Result<()> {
    let rig = Rig::start("reload-video", RigOpts::default()).await?;
    let mut relay = rig.start_relay().await?;
    let sink = Sink::start(&rig.out_url());
    sink.wait_for(Colour::Green, secs(30)).await?;
    let output = wait_for_ffmpeg_child(relay.pid(), &rig.out_path(), secs(30)).await?;
    let connections = sink.runs_watched();

    // A new offline video: viewers see it, and the output, with its
    // connection to the platform, is not touched.
    let red = make_offline_video(rig.dir.path(), "red", true, 320, 180).await?;
    append(&rig, &format!("OFFLINE_VIDEO_PATH={}", red.display()))?;
    let mark = relay.log_mark();
    relay.signal(Signal::SIGHUP)?;
    relay
        .wait_for_log_since(mark, "reload: a new offline video", secs(30))
        .await?;
    sink.wait_for(Colour::Red, secs(60)).await?;
    assert_eq!(count_since(&relay, mark, "output started"), 0);
    assert_eq!(
        wait_for_ffmpeg_child(relay.pid(), &rig.out_path(), secs(5)).await?,
        output,
        "the output was restarted"
    );
    assert_eq!(
        sink.runs_watched(),
        connections,
        "the sink had to reconnect"
    );

    // A new destination (stream key): the output publishes there instead.
    append(&rig, "KICK_KEY=otherkey")?;
    let mark = relay.log_mark();
    relay.signal(Signal::SIGHUP)?;
    relay
        .wait_for_log_since(mark, "reload: applying the new configuration", secs(30))
        .await?;
    wait_until_publishing(&rig.nginx.stat_url(), "out", "otherkey", secs(60)).await?;
    tokio::time::sleep(secs(2)).await;
    assert_eq!(count_since(&relay, mark, "output started"), 1);
    assert!(
        !relay.logs().iter().any(|l| l.contains("otherkey")),
        "the new stream key was logged"
    );

    let status = relay.sigterm_and_wait(secs(15)).await?;
    assert!(status.success(), "{status}");
    Ok(())
}
