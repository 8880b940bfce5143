//! Switching: the real relay binary keeps ONE output session to the
//! "platform" (app `out` of a private nginx-rtmp) and puts the right source
//! on air as publishers come, go, stall, and as its output FFmpeg dies.
//!
//! What is on air is read from what a viewer would see: a [`Sink`] on the
//! output tells the colour of each frame (offline video = green, publishers
//! blue or red). A [`SessionCounter`] on the output stream proves the output
//! never reconnected. Relay's status (what `relay status --json` shows) is
//! used to synchronise; its log explains failures.

// Each test binary uses part of the shared harness.

use std::time::{Duration, Instant};

use crate::common::*;
use anyhow::{bail, ensure, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::Command;

/// The "platform": relay pushes to `out/relaytest` on the private nginx.
const OUT_APP: &str = "out";
const OUT_KEY: &str = "relaytest";

/// A private nginx, a running relay and a viewer of its output.
///
/// Fields drop in order: relay (SIGKILL, if a test failed before
/// [`Rig::stop`]), the sink, the counter, nginx, the temp dir.
pub(crate) struct Rig {
    pub(crate) relay: RelayProc,
    pub(crate) sink: Sink,
    out_sessions: SessionCounter,
    /// When relay was started.
    pub(crate) started: Instant,
    /// Where publishers publish (`live/<stream>`).
    live_url: String,
    /// The output stream (`out/relaytest`).
    pub(crate) out_url: String,
    pub(crate) nginx: PrivateNginx,
    _dir: tempfile::TempDir,
}

impl Rig {
    /// Starts nginx and relay on the live stream `stream`; returns once
    /// relay's output streams (its first frame went out), with a sink
    /// playing the output.
    pub(crate) async fn start(stream: &str) -> anyhow::Result<Rig> {
        Rig::start_with(stream, &[]).await
    }

    /// [`Rig::start`] with some configuration keys overridden.
    pub(crate) async fn start_with(
        stream: &str,
        overrides: &[(&str, &str)],
    ) -> anyhow::Result<Rig> {
        let (dir, offline) = dir_with_offline("switching").await?;
        let nginx = start_nginx().await?;
        let mut env = RelayEnv::new(&nginx, OUT_KEY, stream, &offline)?;
        for (key, value) in overrides {
            env = env.set(key, *value);
        }
        let env_file = env.write(dir.path())?;
        let out_url = nginx.rtmp_url(OUT_APP, OUT_KEY);
        let out_sessions = SessionCounter::start(&nginx.stat_url(), OUT_APP, OUT_KEY);
        let started = Instant::now();
        let relay = RelayProc::run(&env_file, &[])?;
        relay
            .wait_for_status("the output streaming", output_streaming, secs(60))
            .await?;
        eprintln!(
            "[test] relay start -> output streaming: {:?}",
            started.elapsed()
        );
        // Started only now: a sink waiting longer than its first-frame
        // limit for a slow start would reconnect, and tests count the
        // sink's connections.
        let sink = Sink::start(&out_url);
        Ok(Rig {
            relay,
            sink,
            out_sessions,
            started,
            live_url: nginx.rtmp_url("live", stream),
            out_url,
            nginx,
            _dir: dir,
        })
    }

    /// Starts a publisher on the live stream.
    pub(crate) async fn publish(&self, opts: PublisherOpts) -> anyhow::Result<Publisher> {
        Publisher::start(&self.live_url, opts).await
    }

    /// Waits until the sink shows `want` after `since`, having shown only
    /// `from` (what was on air before) on the way, give or take two frames
    /// of mixed colour while the encoder moves from one picture to the next.
    /// Then `want` must hold steadily for `steady`. Returns how long after
    /// `since` the first `want` frame arrived.
    ///
    /// Going live from the offline video, no black (filler) frame may show
    /// on the way: see `going_live_shows_no_black_flash`.
    pub(crate) async fn expect_switch(
        &self,
        from: Colour,
        want: Colour,
        since: Instant,
        timeout: Duration,
        steady: Duration,
    ) -> anyhow::Result<Duration> {
        let seen = self
            .sink
            .wait_for_since(want, since, timeout)
            .await
            .with_context(|| self.context())?;
        let on_the_way: Vec<Frame> = self
            .sink
            .history_frames()
            .into_iter()
            .filter(|f| f.at >= since && f.at < seen)
            .collect();
        let unexpected: Vec<&Frame> = on_the_way.iter().filter(|f| f.colour != from).collect();
        let count = |c: Colour| unexpected.iter().filter(|f| f.colour == c).count();
        // A couple of mixed-colour frames while the encoder moves from one
        // picture to the next; never black filler, never a third colour.
        let tolerated = count(Colour::Other) <= 2 && count(Colour::Other) == unexpected.len();
        ensure!(
            tolerated,
            "on the way from {from:?} to {want:?} the sink showed {:?}: {}",
            unexpected
                .iter()
                .map(|f| (f.colour, f.rgb))
                .collect::<Vec<_>>(),
            self.sink.summary_since(since)
        );
        self.sink
            .expect_steady(want, steady)
            .await
            .with_context(|| self.context())?;
        let latency = seen - since;
        eprintln!("[test] {from:?} -> {want:?} on the sink after {latency:?}");
        Ok(latency)
    }

    /// The output publishing sessions seen, with details for a failure.
    pub(crate) fn assert_one_output_session(&self) -> anyhow::Result<()> {
        let seen = self.out_sessions.seen();
        ensure!(
            seen.len() == 1,
            "the output reconnected: {} publishing sessions on {OUT_APP}/{OUT_KEY}: {seen:?}\n{}",
            seen.len(),
            self.context()
        );
        Ok(())
    }

    /// Relay's recent log, for failure messages.
    pub(crate) fn context(&self) -> String {
        let logs = self.relay.logs();
        let recent = &logs[logs.len().saturating_sub(25)..];
        format!("relay's last lines:\n{}", recent.join("\n"))
    }

    /// Relay's log lines after `mark` containing `needle`.
    fn log_lines_since(&self, mark: usize, needle: &str) -> Vec<String> {
        self.relay
            .logs()
            .into_iter()
            .skip(mark)
            .filter(|l| l.contains(needle))
            .collect()
    }

    /// SIGTERM: relay must stop its children and exit 0. Every switching
    /// test ends here, so here the sink must have seen no black frame
    /// after the picture started (ARCHITECTURE.md, "Going live without a black flash, and never a black frame").
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        self.sink
            .expect_no_black()
            .with_context(|| self.context())?;
        let children = child_pids_of(self.relay.pid());
        ensure!(
            !children.is_empty(),
            "relay has no children (output ffmpeg?)"
        );
        let status = self.relay.sigterm_and_wait(secs(20)).await?;
        ensure!(
            status.success(),
            "relay exited with {status} after SIGTERM\n{}",
            self.context()
        );
        // Its last lines may still be on their way through the pipe.
        let deadline = Instant::now() + secs(3);
        while !self
            .relay
            .logs()
            .iter()
            .any(|l| l.trim_end().ends_with(" stopped"))
        {
            ensure!(
                Instant::now() < deadline,
                "no `stopped` line\n{}",
                self.context()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for pid in children {
            ensure!(!process_is_alive(pid), "relay's child {pid} survived relay");
        }
        Ok(())
    }
}

/// How long a publisher may take from its start to being on air at the sink.
pub(crate) const GO_LIVE: Duration = Duration::from_secs(25);
/// How long a dead or stalled publisher may stay on air at the sink.
pub(crate) const FAIL_OVER: Duration = Duration::from_secs(10);
/// How long a colour must then hold.
pub(crate) const STEADY: Duration = Duration::from_secs(2);

#[tokio::test]
async fn offline_video_streams_when_nobody_is_live() -> anyhow::Result<()> {
    let rig = Rig::start("sw-nobody").await?;
    let seen = rig
        .sink
        .wait_for_since(Colour::Green, rig.started, secs(20))
        .await
        .with_context(|| rig.context())?;
    eprintln!(
        "[test] relay start -> first green frame: {:?}",
        seen - rig.started
    );
    rig.sink.expect_steady(Colour::Green, secs(4)).await?;
    rig.assert_one_output_session()?;
    ensure!(
        rig.sink.audio_track() == Some(true),
        "the output has no audio track"
    );
    let status = rig.relay.status().await?;
    ensure!(
        status.state == StateName::Offline && status.last_switch.is_none(),
        "went live with nobody publishing: {status:?}\n{}",
        rig.context()
    );
    rig.stop().await
}

#[tokio::test]
async fn publisher_goes_on_air_and_back_offline_when_killed() -> anyhow::Result<()> {
    let rig = Rig::start("sw-killed").await?;
    rig.sink
        .wait_for_since(Colour::Green, rig.started, secs(20))
        .await?;

    let t = Instant::now();
    let mut blue = rig.publish(PublisherOpts::colour("blue")).await?;
    rig.expect_switch(Colour::Green, Colour::Blue, t, GO_LIVE, STEADY)
        .await?;
    let status = rig.relay.status().await?;
    ensure!(
        status.publisher.is_some() && status.publisher_allowed == Some(true),
        "{status:?}"
    );

    let t = Instant::now();
    blue.kill().await?;
    rig.expect_switch(Colour::Blue, Colour::Green, t, FAIL_OVER, STEADY)
        .await?;
    rig.relay
        .wait_for_status(
            "offline after the live frames stopped",
            |s| offline_on_air(s) && last_switch_is(s, "offline", "frames_stopped"),
            secs(1),
        )
        .await?;
    rig.assert_one_output_session()?;
    ensure!(rig.sink.runs_watched() == 1, "the sink had to reconnect");
    rig.stop().await
}

#[tokio::test]
async fn clean_stop_puts_offline_back() -> anyhow::Result<()> {
    let rig = Rig::start("sw-clean").await?;
    rig.sink
        .wait_for_since(Colour::Green, rig.started, secs(20))
        .await?;
    let t = Instant::now();
    let mut blue = rig.publish(PublisherOpts::colour("blue")).await?;
    rig.expect_switch(Colour::Green, Colour::Blue, t, GO_LIVE, STEADY)
        .await?;

    let t = Instant::now();
    let status = blue.stop_clean().await?;
    eprintln!("[test] publisher after SIGINT: {status}");
    rig.expect_switch(Colour::Blue, Colour::Green, t, FAIL_OVER, STEADY)
        .await?;
    rig.relay
        .wait_for_status(
            "the offline video on air",
            |s| offline_on_air(s) && s.last_switch.as_ref().is_some_and(|l| l.to == "offline"),
            secs(1),
        )
        .await?;
    rig.assert_one_output_session()?;
    rig.stop().await
}

#[tokio::test]
async fn stalled_publisher_puts_offline_back() -> anyhow::Result<()> {
    let rig = Rig::start("sw-stalled").await?;
    rig.sink
        .wait_for_since(Colour::Green, rig.started, secs(20))
        .await?;
    let t = Instant::now();
    let blue = rig.publish(PublisherOpts::colour("blue")).await?;
    rig.expect_switch(Colour::Green, Colour::Blue, t, GO_LIVE, STEADY)
        .await?;

    // SIGSTOP: the connection stays open, nginx still lists the publisher;
    // only the missing frames tell.
    let t = Instant::now();
    blue.stall()?;
    rig.expect_switch(Colour::Blue, Colour::Green, t, FAIL_OVER, STEADY)
        .await?;
    let stat = fetch_stat(&rig.nginx.stat_url()).await?;
    ensure!(
        stat.publisher("live", "sw-stalled").is_some(),
        "the stalled publisher should still be listed: {stat:?}"
    );
    let status = rig.relay.status().await?;
    ensure!(
        status.publisher.is_some() && last_switch_is(&status, "offline", "frames_stopped"),
        "offline because the frames stopped, the publisher still there: {status:?}"
    );

    // Resumed, its frames flow again: back on air.
    let t = Instant::now();
    blue.resume()?;
    rig.expect_switch(Colour::Green, Colour::Blue, t, GO_LIVE, STEADY)
        .await?;
    rig.assert_one_output_session()?;
    rig.stop().await
}

#[tokio::test]
async fn output_stays_one_session_through_many_switches() -> anyhow::Result<()> {
    let test_start = Instant::now();
    let rig = Rig::start("sw-many").await?;
    rig.sink
        .wait_for_since(Colour::Green, rig.started, secs(20))
        .await?;
    rig.sink.expect_steady(Colour::Green, STEADY).await?;
    let mut latencies = Vec::new();

    // 1. blue goes live, then is killed.
    let t = Instant::now();
    let mut blue = rig.publish(PublisherOpts::colour("blue")).await?;
    latencies.push((
        "blue on",
        rig.expect_switch(Colour::Green, Colour::Blue, t, GO_LIVE, STEADY)
            .await?,
    ));
    let t = Instant::now();
    blue.kill().await?;
    latencies.push((
        "blue killed",
        rig.expect_switch(Colour::Blue, Colour::Green, t, FAIL_OVER, STEADY)
            .await?,
    ));

    // 2. a new publisher, red, goes live, then stops cleanly.
    let t = Instant::now();
    let mut red = rig.publish(PublisherOpts::colour("red")).await?;
    latencies.push((
        "red on",
        rig.expect_switch(Colour::Green, Colour::Red, t, GO_LIVE, STEADY)
            .await?,
    ));
    let t = Instant::now();
    red.stop_clean().await?;
    latencies.push((
        "red stopped",
        rig.expect_switch(Colour::Red, Colour::Green, t, FAIL_OVER, STEADY)
            .await?,
    ));

    // 3. blue again, then it stalls.
    let t = Instant::now();
    let mut blue = rig.publish(PublisherOpts::colour("blue")).await?;
    latencies.push((
        "blue on again",
        rig.expect_switch(Colour::Green, Colour::Blue, t, GO_LIVE, STEADY)
            .await?,
    ));
    let t = Instant::now();
    blue.stall()?;
    latencies.push((
        "blue stalled",
        rig.expect_switch(Colour::Blue, Colour::Green, t, FAIL_OVER, STEADY)
            .await?,
    ));
    blue.kill().await?;
    rig.sink.expect_steady(Colour::Green, STEADY).await?;

    // The promise: one output session, never interrupted, all along.
    rig.assert_one_output_session()?;
    ensure!(
        rig.sink.runs_watched() == 1,
        "the viewer had to reconnect: {} sink connections",
        rig.sink.runs_watched()
    );
    // ...and the viewer's picture never froze: frames kept coming at the
    // sink's 5 fps through every switch.
    let frames = rig.sink.history_frames();
    let (gap, at) = frames
        .windows(2)
        .map(|w| (w[1].at - w[0].at, w[1].at))
        .max()
        .context("no frames")?;
    ensure!(
        gap < Duration::from_secs(1),
        "no frame at the sink for {gap:?} until {:?} into the run: {}",
        at - rig.started,
        rig.sink.summary_since(rig.started)
    );
    let status = rig.relay.status().await?;
    ensure!(
        status.output_restarts == 0,
        "the output restarted: {status:?}"
    );
    let lives = rig.log_lines_since(0, "on air: live").len();
    let offlines = rig.log_lines_since(0, "on air: offline video").len();
    ensure!(
        (lives, offlines) == (3, 3),
        "relay logged {lives} go-lives and {offlines} go-offlines, wanted 3 and 3\n{}",
        rig.context()
    );
    eprintln!("[test] switch latencies at the sink: {latencies:?}");
    eprintln!("[test] whole run: {}", rig.sink.summary_since(rig.started));
    rig.stop().await?;
    eprintln!("[test] took {:?}", test_start.elapsed());
    Ok(())
}

#[tokio::test]
async fn portrait_publisher_without_audio_goes_on_air() -> anyhow::Result<()> {
    let rig = Rig::start("sw-portrait").await?;
    rig.sink
        .wait_for_since(Colour::Green, rig.started, secs(20))
        .await?;
    // The offline video has a tone: the output is audible before.
    let before = output_audio(&rig.out_url).await?;
    eprintln!("[test] output audio with the offline video on air: {before:?}");
    ensure!(
        before.max_volume_db > -40.0,
        "the offline video's tone does not reach the output: {before:?}"
    );

    let t = Instant::now();
    let _portrait = rig
        .publish(PublisherOpts {
            width: 180,
            height: 320,
            audio: false,
            ..PublisherOpts::colour("blue")
        })
        .await?;
    // Pillarboxed, the picture is mostly black: look at the regions.
    let regions = wait_for_regions(&rig.out_url, Colour::Blue, Colour::Black, t, GO_LIVE)
        .await
        .with_context(|| rig.context())?;
    eprintln!(
        "[test] portrait on air after {:?}: centre {:?}, sides {:?}",
        t.elapsed(),
        regions.centre,
        regions.sides
    );
    // What the whole-frame classifier of the shared Sink makes of it.
    if let Some(f) = rig.sink.history_frames().last() {
        eprintln!(
            "[test] whole-frame mean of a pillarboxed blue: {:?} -> {:?}",
            f.rgb, f.colour
        );
    }
    rig.relay
        .wait_for_status("the portrait publisher on air", live_on_air, secs(1))
        .await?;
    // The picture holds: no green (offline) after it went live.
    let live_at = Instant::now();
    tokio::time::sleep(STEADY).await;
    let green: Vec<Frame> = rig
        .sink
        .history_frames()
        .into_iter()
        .filter(|f| f.at >= live_at && f.colour == Colour::Green)
        .collect();
    ensure!(
        green.is_empty(),
        "offline frames while the portrait publisher is live: {}",
        rig.sink.summary_since(live_at)
    );

    // The output still carries audio: silence, not the offline tone.
    let during = output_audio(&rig.out_url).await?;
    eprintln!("[test] output audio with the silent publisher on air: {during:?}");
    ensure!(
        during.max_volume_db < -60.0 && during.mean_volume_db < -60.0,
        "the output is not silent while a publisher without audio is on air: {during:?}"
    );
    let probe = probe_output_streams(&rig.out_url).await?;
    ensure!(
        probe.iter().any(|l| l == "codec_type=audio")
            && probe.iter().any(|l| l == "codec_type=video")
            && probe.iter().any(|l| l == "sample_rate=48000"),
        "ffprobe of the output: {probe:?}"
    );
    rig.assert_one_output_session()?;
    rig.stop().await
}

/// The output FFmpeg is killed: relay starts a new one on the source that
/// was on air, and the platform keeps its one connection (the pusher's).
#[tokio::test]
async fn killing_the_output_ffmpeg_restores_the_selection() -> anyhow::Result<()> {
    let rig = Rig::start("sw-outkill").await?;
    rig.sink
        .wait_for_since(Colour::Green, rig.started, secs(20))
        .await?;
    let t = Instant::now();
    let _blue = rig.publish(PublisherOpts::colour("blue")).await?;
    rig.expect_switch(Colour::Green, Colour::Blue, t, GO_LIVE, STEADY)
        .await?;

    let output = output_ffmpeg_of(rig.relay.pid())?;
    let before = rig.relay.status().await?;
    ensure!(before.output_pid == Some(output), "{before:?}");
    let killed_at = Instant::now();
    kill(Pid::from_raw(output as i32), Signal::SIGKILL)?;
    let after = rig
        .relay
        .wait_for_status(
            "a new output streaming",
            |s| {
                s.output_restarts > before.output_restarts
                    && s.output_pid.is_some_and(|p| p != output)
                    && output_streaming(s)
            },
            secs(45),
        )
        .await?;
    // Restarted on the source that was on air: still live.
    ensure!(
        after.state == StateName::Live,
        "the output restarted on the wrong source: {after:?}"
    );
    let new_output = output_ffmpeg_of(rig.relay.pid())?;
    ensure!(after.output_pid == Some(new_output), "{after:?}");
    ensure!(
        new_output != output,
        "the output ffmpeg {output} is still there"
    );

    // The platform connection outlives the encoder (its pusher carries
    // on), and shows blue again, never the offline video.
    let blue_again = rig
        .sink
        .wait_for_since(Colour::Blue, Instant::now(), secs(30))
        .await
        .with_context(|| rig.context())?;
    rig.sink.expect_steady(Colour::Blue, secs(3)).await?;
    let since_kill: Vec<Frame> = rig
        .sink
        .history_frames()
        .into_iter()
        .filter(|f| f.at >= killed_at)
        .collect();
    let not_blue: Vec<(Colour, [u8; 3], usize)> = since_kill
        .iter()
        .filter(|f| f.colour != Colour::Blue)
        .map(|f| (f.colour, f.rgb, f.connection))
        .collect();
    ensure!(
        !not_blue.iter().any(|(c, _, _)| *c == Colour::Green),
        "the offline video went on air after the output restart: {}",
        rig.sink.summary_since(killed_at)
    );
    ensure!(
        not_blue.len() <= 2,
        "frames other than blue after the output restart: {not_blue:?}: {}",
        rig.sink.summary_since(killed_at)
    );
    eprintln!(
        "[test] output SIGKILL -> blue again at the sink: {:?} (sink connections: {}); {}",
        blue_again - killed_at,
        rig.sink.runs_watched(),
        rig.sink.summary_since(killed_at)
    );
    rig.assert_one_output_session()?;
    rig.stop().await
}

/// The offline source dies: the output goes on, on the same connection,
/// with the last offline frame (never black), and relay restarts the
/// source, whose frames come back on air.
#[tokio::test]
async fn killing_the_offline_source_keeps_the_output_up() -> anyhow::Result<()> {
    let rig = Rig::start("sw-offkill").await?;
    rig.sink
        .wait_for_since(Colour::Green, rig.started, secs(20))
        .await?;
    let output = output_ffmpeg_of(rig.relay.pid())?;
    let source = offline_source_of(rig.relay.pid())?;
    let mark = rig.relay.log_mark();
    kill(Pid::from_raw(source as i32), Signal::SIGKILL)?;
    rig.relay
        .wait_for_log_since(mark, "offline video source stopped", secs(10))
        .await?;
    rig.relay
        .wait_for_log_since(mark, "restarting the offline video source", secs(20))
        .await?;
    // The new source's frames are taken: it writes (offline is on air).
    let deadline = Instant::now() + secs(20);
    let new_source = loop {
        match offline_source_of(rig.relay.pid()) {
            Ok(pid) if pid != source => break pid,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            found => bail!("no new offline source: {found:?}\n{}", rig.context()),
        }
    };
    let written = bytes_written_over(new_source, secs(1)).await?;
    ensure!(
        written > 0,
        "the new offline source {new_source} is not read\n{}",
        rig.context()
    );
    rig.sink.expect_steady(Colour::Green, secs(3)).await?;
    ensure!(
        output_ffmpeg_of(rig.relay.pid())? == output,
        "the output ffmpeg was restarted"
    );
    rig.assert_one_output_session()?;
    ensure!(rig.sink.runs_watched() == 1, "the sink had to reconnect");
    // No black while there was no source: the last offline frame held.
    rig.stop().await
}

/// An offline source that is late (here frozen for a second, as on a
/// loaded machine) while offline is on air: the output repeats its last
/// offline frame, never black, and the source's frames come back.
#[tokio::test]
async fn a_late_offline_source_repeats_its_last_frame() -> anyhow::Result<()> {
    let rig = Rig::start("sw-offlate").await?;
    rig.sink
        .wait_for_since(Colour::Green, rig.started, secs(20))
        .await?;
    rig.sink.expect_steady(Colour::Green, secs(2)).await?;
    let source = offline_source_of(rig.relay.pid())?;
    let output = output_ffmpeg_of(rig.relay.pid())?;
    let t = Instant::now();
    kill(Pid::from_raw(source as i32), Signal::SIGSTOP)?;
    tokio::time::sleep(secs(1)).await;
    kill(Pid::from_raw(source as i32), Signal::SIGCONT)?;
    // The sink shows what was sent about a second ago: watch past it.
    rig.sink.expect_steady(Colour::Green, secs(4)).await?;
    let frames: Vec<Frame> = rig
        .sink
        .history_frames()
        .into_iter()
        .filter(|f| f.at >= t)
        .collect();
    let other = frames.iter().filter(|f| f.colour != Colour::Green).count();
    eprintln!("[test] source frozen 1 s: {}", rig.sink.summary_since(t));
    ensure!(
        other == 0,
        "{other} frame(s) not green around a frozen offline source: {}",
        rig.sink.summary_since(t)
    );
    ensure!(
        bytes_written_over(source, secs(1)).await? > 0,
        "the offline source is not read after it resumed"
    );
    ensure!(
        offline_source_of(rig.relay.pid())? == source
            && output_ffmpeg_of(rig.relay.pid())? == output,
        "a child was restarted"
    );
    rig.assert_one_output_session()?;
    rig.stop().await
}

/// While live is on air nobody sees the offline video, so its source is not
/// read and does no work; it resumes at the failover.
#[tokio::test]
async fn the_offline_source_rests_while_live() -> anyhow::Result<()> {
    let rig = Rig::start("sw-offrest").await?;
    rig.sink
        .wait_for_since(Colour::Green, rig.started, secs(20))
        .await?;
    let source = offline_source_of(rig.relay.pid())?;
    let window = secs(2);
    let offline = bytes_written_over(source, window).await?;

    let t = Instant::now();
    let mut blue = rig.publish(PublisherOpts::colour("blue")).await?;
    rig.expect_switch(Colour::Green, Colour::Blue, t, GO_LIVE, STEADY)
        .await?;
    let live = bytes_written_over(source, window).await?;
    eprintln!("[test] offline source wrote {offline} B offline, {live} B live in {window:?}");
    ensure!(
        offline > 0 && live * 5 < offline,
        "the offline source kept working while live: {live} B vs {offline} B offline"
    );

    let t = Instant::now();
    blue.kill().await?;
    rig.expect_switch(Colour::Blue, Colour::Green, t, FAIL_OVER, STEADY)
        .await?;
    ensure!(
        offline_source_of(rig.relay.pid())? == source,
        "the offline source was restarted"
    );
    ensure!(bytes_written_over(source, window).await? > live);
    rig.assert_one_output_session()?;
    rig.stop().await
}

/// A still image (a PNG, no sound) as the offline video: the offline source
/// loops its one frame at the output's rate, with silence.
#[tokio::test]
async fn a_still_image_works_as_the_offline_video() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let png = dir.path().join("brb.png");
    let made = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi"])
        .args(["-i", "color=c=green:s=320x180", "-frames:v", "1"])
        .arg(&png)
        .status()
        .await?;
    ensure!(made.success(), "ffmpeg could not make the PNG");
    let path = png.display().to_string();
    let rig = Rig::start_with("sw-still", &[("OFFLINE_VIDEO_PATH", &path)]).await?;
    rig.sink
        .wait_for_since(Colour::Green, rig.started, secs(20))
        .await?;
    rig.sink.expect_steady(Colour::Green, secs(3)).await?;

    let t = Instant::now();
    let mut blue = rig.publish(PublisherOpts::colour("blue")).await?;
    rig.expect_switch(Colour::Green, Colour::Blue, t, GO_LIVE, STEADY)
        .await?;
    let t = Instant::now();
    blue.kill().await?;
    rig.expect_switch(Colour::Blue, Colour::Green, t, FAIL_OVER, STEADY)
        .await?;
    rig.assert_one_output_session()?;
    rig.stop().await
}

/// Bytes `pid` wrote (`wchar` in /proc/PID/io) over `window`.
async fn bytes_written_over(pid: u32, window: Duration) -> anyhow::Result<u64> {
    let wchar = || -> anyhow::Result<u64> {
        let io = std::fs::read_to_string(format!("/proc/{pid}/io"))?;
        io.lines()
            .find_map(|l| l.strip_prefix("wchar: "))
            .and_then(|v| v.trim().parse().ok())
            .context("no wchar in /proc/PID/io")
    };
    let before = wchar()?;
    tokio::time::sleep(window).await;
    Ok(wchar()? - before)
}

fn offline_source_of(relay_pid: u32) -> anyhow::Result<u32> {
    only_ffmpeg_child(relay_pid, "-stream_loop", "offline source")
}

fn output_ffmpeg_of(relay_pid: u32) -> anyhow::Result<u32> {
    only_ffmpeg_child(relay_pid, "streamselect", "output ffmpeg")
}

/// The one live child of relay whose command line contains `needle`.
fn only_ffmpeg_child(relay_pid: u32, needle: &str, what: &str) -> anyhow::Result<u32> {
    let found: Vec<u32> = child_pids_of(relay_pid)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
                && process_is_alive(*pid)
        })
        .collect();
    match found[..] {
        [pid] => Ok(pid),
        _ => bail!("expected one {what} under relay {relay_pid}, found {found:?}"),
    }
}

/// Colours of parts of a frame: the centre column and the side bands.
#[derive(Debug, Clone, Copy)]
struct Regions {
    centre: ([u8; 3], Colour),
    sides: ([u8; 3], Colour),
}

const REGION_W: usize = 32;
const REGION_H: usize = 18;

/// Splits a 32x18 rgb24 frame into its centre (columns 13..19, well
/// inside a 16:9 pillarbox of a 9:16 picture, which spans about columns
/// 11..21) and its sides (columns 0..8 and 24..32).
fn regions(frame: &[u8]) -> Regions {
    let mean = |cols: &dyn Fn(usize) -> bool| {
        let mut sum = [0u64; 3];
        let mut n = 0u64;
        for y in 0..REGION_H {
            for x in (0..REGION_W).filter(|x| cols(*x)) {
                let px = &frame[(y * REGION_W + x) * 3..][..3];
                for c in 0..3 {
                    sum[c] += u64::from(px[c]);
                }
                n += 1;
            }
        }
        let rgb = sum.map(|s| (s / n.max(1)) as u8);
        (rgb, classify(rgb))
    };
    Regions {
        centre: mean(&|x| (13..19).contains(&x)),
        sides: mean(&|x| !(8..24).contains(&x)),
    }
}

/// Pulls `url` a few seconds at a time, sampling 32x18 frames, until the
/// last frames of a pull all show `centre` in the middle and `sides` at the
/// sides; fails after `timeout` (from `since`) with what was seen.
async fn wait_for_regions(
    url: &str,
    centre: Colour,
    sides: Colour,
    since: Instant,
    timeout: Duration,
) -> anyhow::Result<Regions> {
    let deadline = since + timeout;
    let mut seen: Vec<(Colour, Colour)> = Vec::new();
    while Instant::now() < deadline {
        let frames = sample_frames(url, 10).await.unwrap_or_else(|e| {
            eprintln!("[test] sampling {url}: {e:#}");
            Vec::new()
        });
        let rs: Vec<Regions> = frames.iter().map(|f| regions(f)).collect();
        seen.extend(rs.iter().map(|r| (r.centre.1, r.sides.1)));
        // The last 3 of the pull, so one transition frame does not count.
        if rs.len() >= 3
            && rs[rs.len() - 3..]
                .iter()
                .all(|r| r.centre.1 == centre && r.sides.1 == sides)
        {
            return Ok(*rs.last().unwrap());
        }
    }
    let keep = seen.len().saturating_sub(30);
    bail!(
        "no {centre:?} centre with {sides:?} sides on {url} within {timeout:?}; (centre, sides) seen: {:?}",
        &seen[keep..]
    )
}

/// `n` frames of `url` at 5 fps, each 32x18 rgb24, area-averaged.
async fn sample_frames(url: &str, n: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    let out = tokio::time::timeout(
        secs(15),
        Command::new("ffmpeg")
            .args(["-nostdin", "-hide_banner", "-loglevel", "error"])
            // Longer than a keyframe interval: see the sink's probe.
            .args(["-rw_timeout", "5000000", "-analyzeduration", "3000000"])
            .args(["-i", url, "-map", "0:v:0"])
            .args([
                "-vf",
                &format!("fps=5,scale={REGION_W}:{REGION_H}:flags=area"),
            ])
            .args(["-frames:v", &n.to_string()])
            .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("sampling ffmpeg took over 15 s")?
    .context("running ffmpeg")?;
    let size = REGION_W * REGION_H * 3;
    ensure!(
        !out.stdout.is_empty(),
        "no frames ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout.chunks_exact(size).map(<[u8]>::to_vec).collect())
}

/// Loudness of a few seconds of the output's audio.
#[derive(Debug, Clone, Copy)]
struct Loudness {
    mean_volume_db: f64,
    max_volume_db: f64,
}

/// Measures 3 s of the output's audio with `volumedetect`.
async fn output_audio(url: &str) -> anyhow::Result<Loudness> {
    let out = tokio::time::timeout(
        secs(20),
        Command::new("ffmpeg")
            .args(["-nostdin", "-hide_banner", "-loglevel", "info"])
            .args(["-rw_timeout", "5000000", "-analyzeduration", "1000000"])
            .args(["-i", url, "-map", "0:a:0", "-t", "3"])
            .args(["-af", "volumedetect", "-f", "null", "-"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("volumedetect took over 20 s")?
    .context("running ffmpeg")?;
    let text = String::from_utf8_lossy(&out.stderr);
    let find = |key: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.contains(key))?;
        let v = line.split(key).nth(1)?.trim().trim_end_matches("dB").trim();
        v.parse().ok()
    };
    match (find("mean_volume:"), find("max_volume:")) {
        (Some(mean_volume_db), Some(max_volume_db)) => Ok(Loudness {
            mean_volume_db,
            max_volume_db,
        }),
        _ => bail!("no volumedetect result ({}): {text}", out.status),
    }
}

/// ffprobe's view of the output's streams: `key=value` lines.
async fn probe_output_streams(url: &str) -> anyhow::Result<Vec<String>> {
    let out = tokio::time::timeout(
        secs(20),
        Command::new("ffprobe")
            .args(["-v", "error", "-rw_timeout", "5000000"])
            .args([
                "-show_entries",
                "stream=codec_type,codec_name,sample_rate,channels,width,height",
            ])
            .args(["-of", "default=noprint_wrappers=1", url])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("ffprobe took over 20 s")?
    .context("running ffprobe")?;
    ensure!(
        out.status.success(),
        "ffprobe {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

/// Going live must not flash black (ARCHITECTURE.md, "Going live without a
/// black flash"): the first live frames on air must be the publisher's, not
/// the pump's filler. Watched at 30 fps, over two go-lives in one relay.
///
/// This failed at OUT_RES=180 in most runs (1 to 5 black frames at 30 fps)
/// while the output's video pipe was 1 MiB, 12 frames of 320x180: the
/// standing backlog on the raw path outlasted the pre-roll, so the switch
/// landed on filler. The pipe now holds about one frame and the pre-roll
/// covers the rest of the backlog.
#[tokio::test]
async fn going_live_shows_no_black_flash() -> anyhow::Result<()> {
    let rig = Rig::start("sw-flash").await?;
    let sink = Sink::start_with(
        &rig.out_url,
        SinkOpts {
            fps: 30,
            ..SinkOpts::default()
        },
    );
    sink.wait_for(Colour::Green, secs(20)).await?;
    sink.expect_steady(Colour::Green, secs(1)).await?;
    let mut flashes = Vec::new();
    for (name, colour) in [("blue", Colour::Blue), ("red", Colour::Red)] {
        let t = Instant::now();
        let mut publisher = rig.publish(PublisherOpts::colour(name)).await?;
        let seen = sink
            .wait_for_since(colour, t, GO_LIVE)
            .await
            .with_context(|| rig.context())?;
        sink.expect_steady(colour, secs(1)).await?;
        let black = sink
            .history_frames()
            .iter()
            .filter(|f| f.at >= t && f.at < seen && f.colour == Colour::Black)
            .count();
        eprintln!("[test] {name} on: {}", sink.summary_since(t));
        if black > 0 {
            flashes.push(format!(
                "{name}: {black} black frame(s) at 30 fps: {}",
                sink.summary_since(t)
            ));
        }
        let t = Instant::now();
        publisher.kill().await?;
        sink.wait_for_since(Colour::Green, t, FAIL_OVER).await?;
        sink.expect_steady(Colour::Green, secs(1)).await?;
    }
    ensure!(flashes.is_empty(), "black on going live: {flashes:?}");
    sink.expect_no_black()?;
    rig.stop().await
}
