//! Faults on the input side, each against the real relay binary, private
//! nginx-rtmp instances and real FFmpeg (rig: `faults_rig/mod.rs`): the
//! stat page breaks, the host nginx restarts, an ingest hangs, publishers
//! send garbage.

#[allow(unused_imports)]
mod common;
mod faults_rig;
mod relay_rig;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use common::*;
use faults_rig::*;
use relay_rig::check_steady;

// ---------------------------------------------------------------------------
// 6. The stat page breaks
// ---------------------------------------------------------------------------

/// The stat page answers 500, garbage, an endless body, then nothing at all,
/// while a publisher is live: live stays on air without a gap, relay says
/// once that the page is unavailable (not once per poll), and once that it
/// answers again. Failover does not need the stat page: a publisher that
/// dies while the page hangs still gives way to the offline video.
#[tokio::test]
async fn broken_stat_page_keeps_live_on_air() -> anyhow::Result<()> {
    let mut f = Faults::new(
        "stat",
        FaultOpts {
            faulty_stats: true,
            ..FaultOpts::default()
        },
    )
    .await?;
    let (sink, connection, mut blue) = f.start_live(Colour::Blue).await?;

    let stats = f.stats.as_ref().expect("faulty stat page");
    let mark = f.relay().log_mark();
    let broken_at = Instant::now();
    for mode in [
        StatMode::Error500,
        StatMode::Garbage,
        StatMode::Huge,
        StatMode::Hang,
    ] {
        eprintln!("[test] stat page: {mode:?}");
        let before = stats.requests();
        stats.set(mode);
        // A few polls in each mode.
        let deadline = Instant::now() + secs(15);
        while stats.requests() < before + 3 {
            ensure!(
                Instant::now() < deadline,
                "relay stopped polling the stat page ({mode:?})\n{}",
                f.context()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let polls = stats.requests();
    check_steady(&sink, Colour::Blue, broken_at, Instant::now(), secs(2))
        .with_context(|| f.context())?;
    ensure!(
        f.lines_since(mark, "on air:").is_empty(),
        "the selection changed while the stat page was broken: {:?}",
        f.lines_since(mark, "on air:")
    );
    let unavailable = f.lines_since(mark, "stat page unavailable");
    eprintln!("[test] {polls} polls failed; relay logged: {unavailable:#?}");
    ensure!(
        !unavailable.is_empty() && unavailable.len() <= 4,
        "expected the stat page's failure logged once per kind of failure at most: {unavailable:#?}"
    );

    // Back: relay says so.
    stats.set(StatMode::Pass);
    f.wait_for_log_since(mark, "stat page answers again", secs(15))
        .await?;

    // Hanging page, dying publisher: the offline video goes on air anyway.
    stats.set(StatMode::Hang);
    tokio::time::sleep(secs(2)).await;
    let killed = Instant::now();
    blue.kill().await?;
    expect_on_air(&f, &sink, Colour::Green, killed, FAIL_OVER).await?;
    stats.set(StatMode::Pass);

    f.finish_on(connection).await
}

// ---------------------------------------------------------------------------
// 5. The host nginx restarts
// ---------------------------------------------------------------------------

/// The host nginx (where the streamer publishes, whose stat page relay
/// polls) restarts while a publisher is live: relay fails over to the
/// offline video, keeps its output connection, and goes live again when
/// the streamer publishes to the restarted nginx.
#[tokio::test]
async fn host_nginx_restart_fails_over_and_comes_back() -> anyhow::Result<()> {
    let mut f = Faults::new("hostrestart", FaultOpts::default()).await?;
    let (sink, connection, _blue) = f.start_live(Colour::Blue).await?;

    let mark = f.relay().log_mark();
    let restarted = Instant::now();
    f.host.restart().await?;
    expect_on_air(&f, &sink, Colour::Green, restarted, FAIL_OVER).await?;
    f.relay()
        .wait_for_log_since(mark, "on air: offline video", secs(5))
        .await?;

    let t = Instant::now();
    let _red = f.publish("red").await?;
    expect_on_air(&f, &sink, Colour::Red, t, GO_LIVE).await?;
    f.finish_on(connection).await
}

// ---------------------------------------------------------------------------
// 9. The ingest FFmpeg hangs
// ---------------------------------------------------------------------------

/// The ingest FFmpeg of the live feed hangs (SIGSTOP): the offline video
/// goes on air within the gap, the hung ingest is killed and replaced, and
/// the feed, still published, goes live again.
#[tokio::test]
async fn hung_ingest_is_replaced() -> anyhow::Result<()> {
    let mut f = Faults::new("hungingest", FaultOpts::default()).await?;
    let (sink, connection, _blue) = f.start_live(Colour::Blue).await?;

    let live_path = format!(":{}/live/{}", f.host.rtmp_port(), f.stream);
    let ingest = relay_ffmpeg(&f, &live_path, "ingest")?;
    let mark = f.relay().log_mark();
    let hung = Instant::now();
    kill(Pid::from_raw(ingest as i32), Signal::SIGSTOP)?;
    let result = async {
        // Not for long: the replacement ingest goes live again within
        // seconds, as it should.
        sink.wait_for_since(Colour::Green, hung, FAIL_OVER).await?;
        f.relay()
            .wait_for_log_since(mark, "on air: offline video (no live frame", secs(5))
            .await?;
        let deadline = Instant::now() + secs(15);
        while process_is_alive(ingest) {
            ensure!(
                Instant::now() < deadline,
                "the hung ingest {ingest} still runs"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::Ok(())
    }
    .await;
    let _ = kill(Pid::from_raw(ingest as i32), Signal::SIGCONT);
    result.with_context(|| f.context())?;
    expect_on_air(&f, &sink, Colour::Blue, Instant::now(), GO_LIVE).await?;
    eprintln!(
        "[test] ingest hung -> live again after {:?}",
        hung.elapsed()
    );
    f.finish_on(connection).await
}

// ---------------------------------------------------------------------------
// 10. Garbage from publishers
// ---------------------------------------------------------------------------

/// Deterministic noise.
fn noise(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// Connects to `port` and sends `bytes`, after a valid RTMP handshake if
/// `handshake`; then closes.
async fn send_garbage(port: u16, handshake: bool, bytes: &[u8]) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    if handshake {
        // C0 (version 3) + C1 (time, zero, random); S0 + S1 + S2 back; C2
        // echoes S1.
        let mut c0c1 = vec![3u8];
        c0c1.extend_from_slice(&[0u8; 8]);
        c0c1.extend_from_slice(&noise(1528, 7));
        s.write_all(&c0c1).await?;
        let mut s012 = vec![0u8; 1 + 1536 + 1536];
        tokio::time::timeout(secs(5), s.read_exact(&mut s012)).await??;
        s.write_all(&s012[1..1537]).await?;
    }
    // nginx may hang up on us half-way: that is its right.
    let _ = s.write_all(bytes).await;
    let _ = s.shutdown().await;
    Ok(())
}

/// Publishers send garbage: random bytes instead of RTMP, a valid
/// handshake followed by random bytes, and a real stream with absurd
/// metadata (huge size, frame rate 0). The output stays up on the same
/// connection, the offline video on air; relay runs on and still takes a
/// proper publisher live afterwards.
#[tokio::test]
async fn garbage_publishers_leave_the_output_alone() -> anyhow::Result<()> {
    let mut f = Faults::new("garbage", FaultOpts::default()).await?;
    let (sink, connection) = f.start_offline().await?;
    let start = Instant::now();

    let port = f.host.rtmp_port();
    for seed in 0..3 {
        send_garbage(port, false, &noise(256 * 1024, seed)).await?;
        send_garbage(port, true, &noise(256 * 1024, seed + 10)).await?;
    }
    // A stream whose metadata lies.
    let mut liar = f.publish_lavfi(
        "liar",
        &["color=c=red:s=320x180:r=30"],
        &[
            "-metadata",
            "width=1000000",
            "-metadata",
            "height=1000000",
            "-metadata",
            "framerate=0",
            "-metadata",
            "videodatarate=-5",
        ],
    )?;
    tokio::time::sleep(secs(8)).await;
    liar.signal(Signal::SIGKILL)?;
    let _ = liar.wait_exit(secs(5)).await;
    expect_on_air(&f, &sink, Colour::Green, Instant::now(), FAIL_OVER).await?;
    let colours: Vec<Colour> = sink
        .history_frames()
        .into_iter()
        .filter(|fr| fr.at >= start)
        .map(|fr| fr.colour)
        .collect();
    eprintln!("[test] during the garbage: {}", sink.summary_since(start));
    ensure!(
        colours
            .iter()
            .all(|c| matches!(c, Colour::Green | Colour::Red | Colour::Other)),
        "unexpected picture during the garbage: {}",
        sink.summary_since(start)
    );
    ensure!(f.relay().is_running(), "relay died\n{}", f.context());

    // A real publisher still goes live.
    let t = Instant::now();
    let _blue = f.publish("blue").await?;
    expect_on_air(&f, &sink, Colour::Blue, t, GO_LIVE).await?;
    f.finish_on(connection).await
}
