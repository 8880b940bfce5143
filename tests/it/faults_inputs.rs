//! Faults on the input side, each against the real relay binary, private
//! nginx-rtmp instances and real FFmpeg (rig: `faults_rig/mod.rs`): the
//! stat page breaks, the host nginx restarts, an ingest hangs, publishers
//! send garbage or a hand-made FLV stream.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::common::*;
use crate::faults_rig::*;
use crate::relay_rig::check_steady;

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
    let status = f.relay().status().await?;
    ensure!(
        live_on_air(&status) && no_switch_since(&status, broken_at),
        "the selection changed while the stat page was broken: {status:?}"
    );
    ensure!(
        !status.stat_page_ok,
        "relay should say the stat page fails: {status:?}"
    );
    let unavailable = f.lines_since(mark, "stat page unavailable");
    eprintln!("[test] {polls} polls failed; relay logged: {unavailable:#?}");
    ensure!(
        !unavailable.is_empty() && unavailable.len() <= 4,
        "expected the stat page's failure logged once per kind of failure at most: {unavailable:#?}"
    );

    // Back: relay says so.
    stats.set(StatMode::Pass);
    f.relay()
        .wait_for_status("the stat page answers again", |s| s.stat_page_ok, secs(15))
        .await?;

    // Hanging page, dying publisher: the offline video goes on air anyway.
    stats.set(StatMode::Hang);
    tokio::time::sleep(secs(2)).await;
    let killed = Instant::now();
    blue.kill().await?;
    expect_on_air(&f, &sink, Colour::Green, killed, FAIL_OVER).await?;
    stats.set(StatMode::Pass);

    sink.expect_no_black()?;
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

    let restarted = Instant::now();
    f.host.restart().await?;
    expect_on_air(&f, &sink, Colour::Green, restarted, FAIL_OVER).await?;
    f.relay()
        .wait_for_status(
            "the offline video on air",
            |s| offline_on_air(s) && s.last_switch.as_ref().is_some_and(|l| l.to == "offline"),
            secs(5),
        )
        .await?;

    let t = Instant::now();
    let _red = f.publish("red").await?;
    expect_on_air(&f, &sink, Colour::Red, t, GO_LIVE).await?;
    sink.expect_no_black()?;
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
    let hung = Instant::now();
    kill(Pid::from_raw(ingest as i32), Signal::SIGSTOP)?;
    let result = async {
        // Not for long: the replacement ingest goes live again within
        // seconds, as it should.
        sink.wait_for_since(Colour::Green, hung, FAIL_OVER).await?;
        // The feed comes back only after LIVE_STABLE_SECS of steady frames
        // (a return soon after a failover): offline stays on air that long.
        f.relay()
            .wait_for_status(
                "the failover to offline (frames stopped)",
                |s| last_switch_is(s, "offline", "frames_stopped"),
                secs(5),
            )
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
    f.relay()
        .wait_for_status(
            "a new ingest",
            |s| s.ingest_pid.is_some_and(|p| p != ingest),
            secs(15),
        )
        .await?;
    expect_on_air(&f, &sink, Colour::Blue, Instant::now(), GO_LIVE).await?;
    eprintln!(
        "[test] ingest hung -> live again after {:?}",
        hung.elapsed()
    );
    sink.expect_no_black()?;
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

/// A valid RTMP handshake on `s`: C0 (version 3) + C1 (time, zero,
/// random); S0 + S1 + S2 back; C2 echoes S1.
async fn rtmp_handshake(s: &mut tokio::net::TcpStream) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c0c1 = vec![3u8];
    c0c1.extend_from_slice(&[0u8; 8]);
    c0c1.extend_from_slice(&noise(1528, 7));
    s.write_all(&c0c1).await?;
    let mut s012 = vec![0u8; 1 + 1536 + 1536];
    tokio::time::timeout(secs(5), s.read_exact(&mut s012)).await??;
    s.write_all(&s012[1..1537]).await?;
    Ok(())
}

/// Connects to `port` and sends `bytes`, after a valid RTMP handshake if
/// `handshake`; then closes.
async fn send_garbage(port: u16, handshake: bool, bytes: &[u8]) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    if handshake {
        rtmp_handshake(&mut s).await?;
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
    sink.expect_no_black()?;
    f.finish_on(connection).await
}

/// A hand-made RTMP publisher: a real handshake, `connect`, `createStream`
/// and `publish` for `stream`, then `media` as (type, timestamp, payload)
/// messages on the published stream, paced at `gap`. What nginx answers
/// is read and thrown away.
async fn publish_crafted(
    port: u16,
    stream: &str,
    media: &[(u8, u32, Vec<u8>)],
    gap: Duration,
) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    rtmp_handshake(&mut s).await?;
    let (mut rx, mut tx) = s.into_split();
    let drain = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while matches!(rx.read(&mut buf).await, Ok(n) if n > 0) {}
    });

    let tc_url = format!("rtmp://127.0.0.1:{port}/live");
    let mut connect = amf_string("connect");
    connect.extend(amf_number(1.0));
    connect.extend(amf_object(&[
        ("app", "live"),
        ("type", "nonprivate"),
        ("tcUrl", &tc_url),
    ]));
    let mut create = amf_string("createStream");
    create.extend(amf_number(2.0));
    create.push(0x05);
    let mut publish = amf_string("publish");
    publish.extend(amf_number(3.0));
    publish.push(0x05);
    publish.extend(amf_string(stream));
    publish.extend(amf_string("live"));
    tx.write_all(&chunk(3, 20, 0, 0, &connect)).await?;
    tx.write_all(&chunk(3, 20, 0, 0, &create)).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.write_all(&chunk(4, 20, 0, 1, &publish)).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (kind, ts, payload) in media {
        let csid = if *kind == 9 { 6 } else { 4 };
        // nginx may hang up on us: that is its right.
        if tx
            .write_all(&chunk(csid, *kind, *ts, 1, payload))
            .await
            .is_err()
        {
            break;
        }
        tokio::time::sleep(gap).await;
    }
    let _ = tx.shutdown().await;
    drain.abort();
    Ok(())
}

/// One RTMP message in chunks of the default 128 bytes: a type 0 header,
/// then type 3 headers for the rest.
fn chunk(csid: u8, kind: u8, ts: u32, msid: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![csid];
    out.extend_from_slice(&ts.min(0xFF_FFFE).to_be_bytes()[1..]);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.extend_from_slice(&msid.to_le_bytes());
    for (i, piece) in payload.chunks(128).enumerate() {
        if i > 0 {
            out.push(0xC0 | csid);
        }
        out.extend_from_slice(piece);
    }
    out
}

fn amf_number(n: f64) -> Vec<u8> {
    let mut v = vec![0x00];
    v.extend_from_slice(&n.to_be_bytes());
    v
}

fn amf_string(text: &str) -> Vec<u8> {
    let mut v = vec![0x02];
    v.extend_from_slice(&(text.len() as u16).to_be_bytes());
    v.extend_from_slice(text.as_bytes());
    v
}

fn amf_object(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut v = vec![0x03];
    for (key, value) in pairs {
        v.extend_from_slice(&(key.len() as u16).to_be_bytes());
        v.extend_from_slice(key.as_bytes());
        v.extend(amf_string(value));
    }
    v.extend_from_slice(&[0, 0, 9]);
    v
}

/// FLV audio (8) and video (9) messages that lie in every way a broken or
/// hostile encoder could: an H.264 configuration whose lengths point past
/// its end, NAL units longer than their message, unknown codecs, empty
/// messages, an AAC configuration with an impossible sample rate, and
/// timestamps that go back and jump hours ahead.
fn crafted_media() -> Vec<(u8, u32, Vec<u8>)> {
    let mut media = Vec::new();
    // AVC sequence header: version 1, profile 100, one SPS "65535 bytes"
    // long that has 6.
    let avcc = [
        0x17, 0, 0, 0, 0, 1, 100, 0, 31, 0xFF, 0xE1, 0xFF, 0xFF, 0x67, 1, 2, 3, 4, 5,
    ];
    media.push((9, 0, avcc.to_vec()));
    // AAC sequence header: object type 31 (escape) and frequency index 15
    // (explicit) with nothing after it.
    media.push((8, 0, vec![0xAF, 0x00, 0xFF, 0xFF]));
    for i in 0..150u32 {
        let ts = match i {
            50..=59 => 2000 - i * 20,    // backwards
            100.. => 0xF0_0000 + i * 33, // hours ahead
            _ => i * 33,
        };
        let key = if i % 30 == 0 { 0x17 } else { 0x27 };
        // One NAL unit that claims 1 MB, then noise.
        let mut video = vec![key, 1, 0, 0, 0, 0x00, 0x10, 0x00, 0x00, 0x65];
        video.extend(noise(1500 + (i as usize % 7) * 400, i));
        media.push((9, ts, video));
        let mut audio = vec![0xAF, 1];
        audio.extend(noise(200, i + 1000));
        media.push((8, ts, audio));
        match i % 25 {
            5 => media.push((9, ts, Vec::new())),
            6 => media.push((8, ts, Vec::new())),
            // Codec 15 (unknown) and sound format 13 (reserved).
            7 => media.push((9, ts, vec![0x1F, 1, 2, 3])),
            8 => media.push((8, ts, vec![0xD0, 1, 2, 3])),
            _ => {}
        }
    }
    media
}

/// A publisher sends a hand-made FLV stream that lies about everything
/// (see [`crafted_media`]) under the streamer's own stream name, first for
/// longer than relay waits for a picture (so the ingest is replaced while
/// it stays), then again briefly: the output stays up on the same
/// connection with the offline video on air, and the streamer's real feed,
/// which nginx hands to the same players, goes live right afterwards.
#[tokio::test]
async fn crafted_flv_publisher_leaves_the_output_alone() -> anyhow::Result<()> {
    let mut f = Faults::new("crafted", FaultOpts::default()).await?;
    let (sink, connection) = f.start_offline().await?;
    let start = Instant::now();
    let media = crafted_media();
    let port = f.host.rtmp_port();
    // About 26 s: longer than relay's 20 s wait for a picture.
    publish_crafted(port, &f.stream, &media, Duration::from_millis(80)).await?;
    // Replaced, one way or the other: after 20 s without a picture, or
    // because the ingest gave up on the stream itself (an ingest that
    // does not know what to expect maps whatever audio there is, and an
    // undecodable one ends it) and was restarted.
    let mut replaced = f.lines_since(0, "gave no picture in 20 s; restarting the ingest");
    replaced.extend(f.lines_since(0, "ingest exited"));
    ensure!(
        !replaced.is_empty(),
        "the ingest was not replaced while the stream gave no picture\n{}",
        f.context()
    );
    publish_crafted(port, &f.stream, &media, Duration::from_millis(15)).await?;
    expect_on_air(&f, &sink, Colour::Green, Instant::now(), FAIL_OVER).await?;
    eprintln!(
        "[test] during the crafted stream: {}",
        sink.summary_since(start)
    );
    ensure!(
        sink.history_frames()
            .into_iter()
            .filter(|fr| fr.at >= start)
            .all(|fr| matches!(fr.colour, Colour::Green | Colour::Other)),
        "unexpected picture: {}",
        sink.summary_since(start)
    );
    ensure!(f.relay().is_running(), "relay died\n{}", f.context());
    // FFmpeg complains about every broken frame (about 3000 lines here);
    // relay logs a burst per child and 10 s and counts the rest.
    let forwarded = f
        .lines_since(0, "ffmpeg: [")
        .iter()
        .filter(|l| !l.contains(" DEBUG "))
        .count();
    let summaries = f.lines_since(0, "more lines within 10 s not logged");
    ensure!(
        forwarded <= 300 && !summaries.is_empty(),
        "{forwarded} FFmpeg lines logged; summaries: {summaries:#?}"
    );

    let t = Instant::now();
    let _blue = f.publish("blue").await?;
    expect_on_air(&f, &sink, Colour::Blue, t, GO_LIVE).await?;
    sink.expect_no_black()?;
    f.finish_on(connection).await
}
