//! Faults on the output side, each against the real relay binary, private
//! nginx-rtmp instances and real FFmpeg (rig: `faults_rig/mod.rs`): the
//! destination refuses the connection or the publish, drops or stalls its
//! connection, the platform's forced disconnect, the output's zmq filter
//! stops answering, the offline video is corrupted or replaced. The
//! destination's connection is its pusher's (`destinations[0]` in relay
//! status); the output FFmpeg is the encoder that feeds it.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::common::*;
use crate::faults_rig::*;
use crate::relay_rig::check_steady;

/// The one destination, kick, as relay status shows it.
fn kick(s: &relay::api::Status) -> &relay::api::DestinationStatus {
    s.destinations
        .iter()
        .find(|d| d.name == "kick")
        .expect("the destination kick in relay status")
}

// ---------------------------------------------------------------------------
// 1, 2, 4. The destination refuses or drops the output
// ---------------------------------------------------------------------------

/// Waits 15 s while the destination keeps failing the output, and checks
/// relay retried with its backoff, kept running and never logged the key;
/// returns the `output stopped` lines.
async fn expect_backoff(f: &Faults) -> anyhow::Result<Vec<String>> {
    let window = secs(15);
    tokio::time::sleep(window).await;
    let restarts = kick(&f.relay().status().await?).reconnects;
    let stopped = f.lines_since(0, "destination kick stopped");
    eprintln!("[test] {restarts} destination restarts in {window:?}: {stopped:#?}");
    // CRASH_BACKOFF=1: 1, 2, 4, 8 s between attempts -> about 5 in 15 s.
    ensure!(
        (1..=7).contains(&restarts),
        "{restarts} destination restarts in {window:?}: no retry, or a tight loop\n{}",
        f.context()
    );
    ensure!(
        stopped.iter().all(|l| !l.contains(KEY)),
        "the stream key leaked: {stopped:#?}"
    );
    ensure!(f.relay().is_running(), "relay gave up\n{}", f.context());
    Ok(stopped)
}

/// A working destination comes up on the rig's port: the output connects
/// and the blue publisher is what it carries.
async fn destination_accepts_the_live_feed(mut f: Faults) -> anyhow::Result<()> {
    let up = Instant::now();
    f.dest = Some(start_dest(f.dest_port).await?);
    let sink = Sink::start(&f.out_url());
    let connection = f.wait_output_connection(secs(40)).await?;
    expect_on_air(&f, &sink, Colour::Blue, up, secs(60)).await?;
    eprintln!(
        "[test] destination accepts -> blue after {:?}",
        up.elapsed()
    );
    sink.expect_no_black()?;
    f.finish_on(connection).await
}

/// Nothing listens at the destination: relay keeps running and retries
/// with a growing backoff (a handful of attempts, not a tight loop); a
/// publisher that arrives meanwhile is what the destination sees once it
/// comes up.
#[tokio::test]
async fn refused_destination_is_retried_with_backoff() -> anyhow::Result<()> {
    let mut f = Faults::new(
        "refused",
        FaultOpts {
            dest_down: true,
            ..FaultOpts::default()
        },
    )
    .await?;
    f.start_relay().await?;
    let _blue = f.publish("blue").await?;
    let stopped = expect_backoff(&f).await?;
    ensure!(
        stopped.iter().all(|l| l.contains("; retrying in ")),
        "an output that never connected is retried, not reconnected: {stopped:#?}"
    );
    let status = f.status().await?;
    eprintln!("[test] status: {status:#}");
    ensure!(
        status["destinations"][0]["up"] == false
            && status["destinations"][0]["uptime_s"].is_null()
            && status["destinations"][0]["reconnects"].as_u64() >= Some(2)
            && status["output_restarts"].as_u64() == Some(0),
        "relay status does not show the destination down and retried, the encoder untouched: {status:#}"
    );

    // The platform comes back: the output connects, with the live feed.
    destination_accepts_the_live_feed(f).await
}

/// The destination takes the connection but refuses to let the output
/// publish, as a platform refuses a revoked or mistyped stream key: relay
/// retries with a growing backoff (not a tight loop) and keeps running, and
/// once the platform accepts again the output comes up on the live feed.
#[tokio::test]
async fn refused_publish_is_retried_with_backoff() -> anyhow::Result<()> {
    let mut f = Faults::new(
        "denied",
        FaultOpts {
            dest_denies: true,
            ..FaultOpts::default()
        },
    )
    .await?;
    // start_relay waits for the output to stream only while `f.dest` is set.
    let denying = f.dest.take().context("destination")?;
    f.start_relay().await?;
    let _blue = f.publish("blue").await?;
    let stopped = expect_backoff(&f).await?;
    let denials = denying.error_log().matches("publish forbidden").count()
        + denying.error_log().matches("access forbidden").count();
    ensure!(
        denials >= 2,
        "the destination did not refuse the publish ({denials} refusals):\n{}",
        denying.error_log()
    );
    // Each exit on a refusal explains itself. (A switch racing the dying
    // output can also restart it, "restart requested": not a refusal.)
    let exits: Vec<&String> = stopped
        .iter()
        .filter(|l| l.contains("ffmpeg exited"))
        .collect();
    ensure!(
        !exits.is_empty()
            && exits
                .iter()
                .all(|l| l.contains("check KICK_URL and the stream key")),
        "the log does not say what a refusal usually means: {stopped:#?}"
    );

    // The platform accepts the key again.
    denying.stop().await;
    destination_accepts_the_live_feed(f).await
}

/// The destination drops the output while a publisher is live (its nginx
/// restarts): relay reconnects, and the live feed is what comes back.
#[tokio::test]
async fn dropped_output_reconnects_on_the_live_feed() -> anyhow::Result<()> {
    let mut f = Faults::new("dropped", FaultOpts::default()).await?;
    let (sink, first, _blue) = f.start_live(Colour::Blue).await?;

    let before = f.relay().status().await?;
    let dropped = Instant::now();
    f.dest.as_mut().expect("destination").restart().await?;
    let restarted = f
        .relay()
        .wait_for_status(
            "the destination reconnected",
            |s| kick(s).reconnects > kick(&before).reconnects,
            secs(20),
        )
        .await?;
    // Restarted on the source that was on air.
    ensure!(
        restarted.state == StateName::Live,
        "the output restarted on the wrong source: {restarted:?}"
    );
    let second = f.wait_new_output_connection(first, "a restart").await?;
    expect_on_air(&f, &sink, Colour::Blue, Instant::now(), secs(40)).await?;
    let green = sink
        .history_frames()
        .into_iter()
        .filter(|fr| fr.at >= dropped && fr.colour == Colour::Green)
        .count();
    ensure!(
        green == 0,
        "the offline video went on air after the reconnect: {}",
        sink.summary_since(dropped)
    );
    f.ensure_output_connection(second, "the output reconnected again")
        .await?;
    sink.expect_no_black()?;
    f.finish().await
}

/// The platform ends the broadcast (as IVS does after 48 hours): nginx's
/// control module drops the output's connection. Relay reconnects at once
/// on what was on air, and stays up.
#[tokio::test]
async fn forced_disconnect_is_a_reconnect() -> anyhow::Result<()> {
    let mut f = Faults::new("forced", FaultOpts::default()).await?;
    let (sink, first) = f.start_offline().await?;

    let before = f.relay().status().await?;
    let dropped = Instant::now();
    let url = format!(
        "{}/drop/publisher?app=out&name={KEY}",
        f.dest().control_url()
    );
    let answer = reqwest::get(&url).await?.text().await?;
    eprintln!("[test] {url} -> {answer:?}");
    let s = f
        .relay()
        .wait_for_status(
            "the destination stopped",
            |s| kick(s).reconnects > kick(&before).reconnects,
            secs(20),
        )
        .await?;
    let exit = kick(&s)
        .last_error
        .clone()
        .expect("why the destination stopped");
    let stopped = f.lines_since(0, "destination kick stopped");
    eprintln!("[test] relay: {exit:?} {stopped:?}");
    ensure!(
        exit.contains("ffmpeg exited") && stopped.iter().any(|l| l.contains("; reconnecting in ")),
        "a dropped connection is a reconnect: {exit:?} {stopped:?}"
    );
    ensure!(
        s.output_restarts == before.output_restarts && s.output_pid == before.output_pid,
        "the encoder restarted with the destination: {s:?}"
    );
    f.wait_new_output_connection(first, "the drop").await?;
    expect_on_air(&f, &sink, Colour::Green, Instant::now(), secs(40)).await?;
    eprintln!(
        "[test] dropped -> green again after {:?}",
        dropped.elapsed()
    );
    sink.expect_no_black()?;
    f.finish().await
}

// ---------------------------------------------------------------------------
// 7. The zmq filter stops answering
// ---------------------------------------------------------------------------

/// The output FFmpeg stops answering (SIGSTOP) just as the live feed ends:
/// the switch to offline gets no reply, nor does a retry on a fresh socket,
/// so relay restarts the output, which comes back on the offline video.
#[tokio::test]
async fn unanswered_zmq_restarts_the_output_on_the_selection() -> anyhow::Result<()> {
    let mut f = Faults::new("zmq", FaultOpts::default()).await?;
    let (sink, first, mut blue) = f.start_live(Colour::Blue).await?;

    let output = output_ffmpeg(&f)?;
    let before = f.relay().status().await?;
    kill(Pid::from_raw(output as i32), Signal::SIGSTOP)?;
    blue.kill().await?;
    let result = async {
        // The switch and its retry go unanswered; then the output restarts.
        let s = f
            .relay()
            .wait_for_status(
                "the output restarted after two unanswered switches",
                |s| {
                    s.switch_failures >= before.switch_failures + 2
                        && s.output_restarts > before.output_restarts
                        && s.output_pid.is_some_and(|pid| pid != output)
                },
                secs(40),
            )
            .await?;
        let exit = s.last_output_exit.as_ref().expect("why the output stopped");
        ensure!(
            exit.kind == "restart_requested",
            "the output should be restarted for its zmq control: {exit:?}"
        );
        ensure!(
            offline_on_air(&s),
            "the output restarted on the wrong source: {s:?}"
        );
        anyhow::Ok(())
    }
    .await;
    // Never leave a stopped process behind, whatever happened.
    let _ = kill(Pid::from_raw(output as i32), Signal::SIGCONT);
    result.with_context(|| f.context())?;
    ensure!(
        !process_is_alive(output) || output_ffmpeg(&f)? != output,
        "the unresponsive output still runs"
    );
    // The destination's connection outlives the encoder's restart.
    f.ensure_output_connection(first, "the destination reconnected with the encoder")
        .await?;
    expect_on_air(&f, &sink, Colour::Green, Instant::now(), secs(40)).await?;
    sink.expect_no_black()?;
    f.finish().await
}

// ---------------------------------------------------------------------------
// 8. The offline video is replaced or corrupted
// ---------------------------------------------------------------------------

/// The operator's offline video is overwritten with garbage, then replaced
/// by another broken file, while relay runs; the output restarts after
/// each (its FFmpeg is killed) and still streams the offline video as it
/// was at start.
#[tokio::test]
async fn corrupted_offline_video_does_not_break_output_restarts() -> anyhow::Result<()> {
    let mut f = Faults::new("offline", FaultOpts::default()).await?;
    let (sink, connection) = f.start_offline().await?;

    let garbage: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    for how in ["overwritten", "replaced"] {
        match how {
            // In place: same inode, new content.
            "overwritten" => std::fs::write(&f.offline, &garbage[..1000])?,
            // A new file renamed over it.
            _ => {
                let new = f.dir.path().join("new.mp4");
                std::fs::write(&new, &garbage)?;
                std::fs::rename(&new, &f.offline)?;
            }
        }
        // What is running keeps running...
        tokio::time::sleep(secs(2)).await;
        f.ensure_output_connection(
            connection,
            &format!("the output went down when the offline video was {how}"),
        )
        .await?;
        // ...and a restart still streams the video relay started with.
        let output = output_ffmpeg(&f)?;
        kill(Pid::from_raw(output as i32), Signal::SIGKILL)?;
        f.relay()
            .wait_for_status(
                "a new output streaming",
                |s| output_streaming(s) && s.output_pid.is_some_and(|p| p != output),
                secs(30),
            )
            .await
            .with_context(|| format!("offline video {how}"))?;
        // The destination's connection outlives the encoder's restart.
        f.ensure_output_connection(connection, "the destination reconnected with the encoder")
            .await?;
        expect_on_air(&f, &sink, Colour::Green, Instant::now(), secs(40))
            .await
            .with_context(|| format!("offline video {how}"))?;
    }
    // The copy is relay's own and goes with it.
    let copies = || {
        std::fs::read_dir(f.dir.path())
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().contains("-offline-"))
                    .count()
            })
            .unwrap_or(0)
    };
    ensure!(copies() == 1, "no private copy of the offline video");
    let dir = f.dir.path().to_owned();
    sink.expect_no_black()?;
    f.stop_relay().await?;
    let left: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().contains("-offline-"))
        .collect();
    ensure!(left.is_empty(), "the private copy outlived relay: {left:?}");
    Ok(())
}

// ---------------------------------------------------------------------------
// 3. The destination stalls
// ---------------------------------------------------------------------------

/// The destination stops reading while the connection stays open (a proxy
/// in front of it stops reading): the output makes no progress, relay
/// restarts it after OUTPUT_STALL (15 s) — again while the destination
/// still hangs — and once it reads again the output streams on the live
/// feed.
///
/// A busy picture at 2 Mb/s fills the kernel's socket buffers (over a MB
/// on loopback) in seconds, so the output blocks soon after the stall.
#[tokio::test]
async fn stalled_destination_is_detected_and_recovered() -> anyhow::Result<()> {
    let mut f = Faults::new(
        "stalled",
        FaultOpts {
            stall_proxy: true,
            env: vec![
                ("VID_BITRATE", "2000k".into()),
                ("MAX_BITRATE", "2000k".into()),
                ("BUFFER_SIZE", "2000k".into()),
            ],
            ..FaultOpts::default()
        },
    )
    .await?;
    let (sink, _) = f.start_offline().await?;
    // A test pattern (neither green nor a solid colour) that does not
    // compress to nothing.
    let _busy = f.publish_lavfi(
        "busy",
        &[
            "testsrc2=s=320x180:r=30",
            "sine=frequency=440:sample_rate=44100",
        ],
        &["-b:v", "2000k", "-c:a", "aac"],
    )?;
    let live = f
        .relay()
        .wait_for_status("the live feed on air", live_on_air, GO_LIVE)
        .await?;
    let first = f.wait_output_connection(secs(10)).await?;

    let proxy = f.proxy.as_ref().expect("proxy");
    let t0 = Instant::now();
    proxy.stall(true);
    let restarted = f
        .relay()
        .wait_for_status(
            "the destination restarted",
            |s| kick(s).reconnects > kick(&live).reconnects,
            secs(70),
        )
        .await?;
    let exit = kick(&restarted).last_error.clone().expect("why it stopped");
    eprintln!("[test] after {:?}: {exit:?}", t0.elapsed());
    ensure!(
        exit.starts_with("no progress for"),
        "a destination that stops reading stalls its pusher: {exit:?}"
    );
    ensure!(
        restarted.output_pid == live.output_pid,
        "the encoder restarted with the destination: {restarted:?}"
    );
    ensure!(
        restarted.state == StateName::Live,
        "the output restarted on the wrong source: {restarted:?}"
    );
    // That attempt does not get through either, until the destination
    // reads again.
    tokio::time::sleep(secs(2)).await;
    proxy.stall(false);
    let resumed = Instant::now();
    let deadline = Instant::now() + secs(60);
    let second = loop {
        if let Some(c) = f.output_connection().await? {
            if c != first {
                break c;
            }
        }
        ensure!(
            Instant::now() < deadline,
            "no new output connection after the destination resumed\n{}",
            f.context()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    f.relay()
        .wait_for_status("the output streaming", output_streaming, secs(30))
        .await?;
    // The test pattern, not the offline video, is what comes back.
    let back = Instant::now();
    tokio::time::sleep(secs(6)).await;
    let frames: Vec<Frame> = sink
        .history_frames()
        .into_iter()
        .filter(|fr| fr.at >= back)
        .collect();
    ensure!(
        !frames.is_empty() && frames.iter().all(|fr| fr.colour != Colour::Green),
        "expected the live feed after the recovery: {}",
        sink.summary_since(back)
    );
    eprintln!(
        "[test] destination resumed -> new connection after {:?}",
        resumed.elapsed()
    );
    f.ensure_output_connection(second, "the output reconnected again")
        .await?;
    sink.expect_no_black()?;
    f.finish().await
}

/// A new offline video, put in place of the old one (same size, sound and
/// length, so it probes the same), goes on air at `systemctl reload`
/// (SIGHUP), not before.
#[tokio::test]
async fn replaced_offline_video_goes_on_air_at_reload() -> anyhow::Result<()> {
    let mut f = Faults::new("offreload", FaultOpts::default()).await?;
    f.start_relay().await?;
    let sink = Sink::start(&f.out_url());
    sink.wait_for(Colour::Green, secs(20)).await?;

    let sub = f.dir.path().join("new");
    std::fs::create_dir_all(&sub)?;
    let red = make_offline_video(&sub, "red", true, 320, 180).await?;
    std::fs::rename(&red, &f.offline)?;
    let replaced = Instant::now();
    tokio::time::sleep(secs(3)).await;
    check_steady(&sink, Colour::Green, replaced, Instant::now(), secs(2))
        .context("the new video went on air before the reload")?;

    let before = f.relay().status().await?;
    f.relay().signal(Signal::SIGHUP)?;
    let reloaded = f
        .relay()
        .wait_for_status("the reload done", |s| s.reloads > before.reloads, secs(20))
        .await?;
    ensure!(
        last_reload_outcome(&reloaded) == Some("new_offline_video"),
        "{reloaded:?}"
    );
    // The new video is normalised again, and the source handed over to
    // that copy, before the steady picture is checked.
    let generation = before.offline_cache.as_ref().map_or(0, |c| c.generation);
    f.relay()
        .wait_for_status(
            "the new video's normalised copy made",
            |s| {
                s.offline_cache
                    .as_ref()
                    .is_some_and(|c| c.generation > generation && c.state != "building")
            },
            secs(90),
        )
        .await?;
    crate::relay_rig::settle_offline_source(f.relay()).await?;
    expect_on_air(&f, &sink, Colour::Red, Instant::now(), secs(40)).await?;
    let after = f.relay().status().await?;
    ensure!(
        after.output_pid == before.output_pid && after.output_restarts == before.output_restarts,
        "the output was restarted for a new offline video: {after:?}"
    );
    sink.expect_no_black()?;
    f.finish().await
}
