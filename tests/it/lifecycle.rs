//! Stopping relay: SIGTERM and SIGINT stop it cleanly (exit 0 within
//! KILL_GRACE plus a little, every FFmpeg child gone), and a SIGKILLed relay
//! takes its FFmpeg children with it (PR_SET_PDEATHSIG), so no orphaned
//! output keeps streaming to the platform.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::common::*;
use crate::relay_rig::*;

/// How long a graceful stop may take: KILL_GRACE, plus one second the
/// design allows, plus slack for a slow shared machine.
const STOP_WITHIN: Duration = Duration::from_secs(KILL_GRACE_S + 3);

/// Relay's FFmpeg children once both run: (output, ingest).
async fn output_and_ingest(rig: &Rig, relay: &RelayProc) -> anyhow::Result<(u32, u32)> {
    let output = wait_for_ffmpeg_child(relay.pid(), &rig.out_path(), secs(10)).await?;
    let ingest = wait_for_ffmpeg_child(relay.pid(), &rig.live_path(), secs(10)).await?;
    assert_ne!(output, ingest);
    Ok((output, ingest))
}

/// Starts relay with a loopback publisher (allowed: `any`) and waits until
/// it is on air, so that both the output and an ingest that is receiving
/// frames run. Returns relay, the publisher and relay's children then.
async fn relay_live(rig: &Rig) -> anyhow::Result<(RelayProc, Publisher, Vec<u32>)> {
    let relay = rig.start_relay().await?;
    let publisher = Publisher::start(&rig.live_url(), PublisherOpts::colour("blue")).await?;
    relay
        .wait_for_status("the live feed on air", live_on_air, secs(30))
        .await?;
    let (output, ingest) = output_and_ingest(rig, &relay).await?;
    let children = child_pids_of(relay.pid());
    assert!(
        children.contains(&output) && children.contains(&ingest),
        "{children:?}"
    );
    eprintln!(
        "relay {} children: {:?}",
        relay.pid(),
        describe_children(relay.pid())
    );
    Ok((relay, publisher, children))
}

fn live_rig_opts() -> RigOpts {
    RigOpts {
        allowed_publishers: Some("any".to_string()),
        ..RigOpts::default()
    }
}

/// Waits until none of `pids` is alive.
async fn wait_all_dead(pids: &[u32], timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let alive: Vec<String> = pids
            .iter()
            .filter(|&&p| process_is_alive(p))
            .map(|&p| format!("{p}: {}", cmdline(p).unwrap_or_default()))
            .collect();
        if alive.is_empty() {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "still alive after {timeout:?}: {alive:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// No ffmpeg on the machine belongs to this test any more, except `keep`
/// (the publisher, which is ours, not relay's).
fn assert_no_relay_ffmpeg_left(rig: &Rig, keep: &[u32]) {
    for needle in [rig.stream.clone(), rig.out_path()] {
        let left: Vec<u32> = ffmpeg_processes_with_arg(&needle)
            .into_iter()
            .filter(|p| !keep.contains(p))
            .collect();
        assert!(
            left.is_empty(),
            "ffmpeg with {needle:?} left: {:?}",
            left.iter()
                .map(|&p| format!("{p}: {}", cmdline(p).unwrap_or_default()))
                .collect::<Vec<_>>()
        );
    }
}

/// Sends `sig`, expects exit status 0 within [`STOP_WITHIN`] and every
/// recorded child gone by then.
async fn stop_cleanly(
    rig: &Rig,
    relay: &mut RelayProc,
    children: &[u32],
    sig: Signal,
    keep: &[u32],
) -> anyhow::Result<Duration> {
    let mark = relay.log_mark();
    let t0 = Instant::now();
    relay.signal(sig)?;
    let status = relay.wait_exit(STOP_WITHIN).await?;
    let took = t0.elapsed();
    eprintln!("{sig} -> exit {status} after {took:?}");
    assert_eq!(status.code(), Some(0), "{:?}", relay.logs());
    // Children were reaped by relay before it exited, so none may be alive
    // now, not even as a zombie.
    let alive: Vec<u32> = children
        .iter()
        .copied()
        .filter(|&p| process_is_alive(p))
        .collect();
    assert!(alive.is_empty(), "children outlived relay: {alive:?}");
    assert_no_relay_ffmpeg_left(rig, keep);
    let name = if sig == Signal::SIGINT {
        "SIGINT received"
    } else {
        "SIGTERM received"
    };
    relay.wait_for_log_since(mark, name, secs(1)).await?;
    relay.wait_for_log_since(mark, "stopping", secs(1)).await?;
    relay.wait_for_log_since(mark, "stopped", secs(1)).await?;
    let sigkilled: Vec<String> = relay.logs()[mark..]
        .iter()
        .filter(|l| l.contains("sending SIGKILL"))
        .cloned()
        .collect();
    eprintln!("children that needed SIGKILL: {sigkilled:?}");
    Ok(took)
}

#[tokio::test]
async fn sigterm_stops_everything_and_leaves_no_child() -> anyhow::Result<()> {
    let rig = Rig::start("sigterm", live_rig_opts()).await?;
    let (mut relay, publisher, children) = relay_live(&rig).await?;
    stop_cleanly(
        &rig,
        &mut relay,
        &children,
        Signal::SIGTERM,
        &[publisher.pid()],
    )
    .await?;
    // The platform side saw the stream end: nginx no longer lists it.
    let stat = fetch_stat(&rig.nginx.stat_url()).await?;
    assert!(stat.publisher("out", KEY).is_none(), "{stat:?}");
    assert!(
        publisher.is_running(),
        "the publisher is not relay's to stop"
    );
    Ok(())
}

#[tokio::test]
async fn sigkilled_daemon_takes_its_children_with_it() -> anyhow::Result<()> {
    // Orphans of this process's descendants come to us rather than to
    // init: relay's children, once relay is gone, then have a parent in our
    // session, so the kernel does not treat their process group as orphaned
    // (which would SIGHUP and SIGCONT a stopped group, see below).
    nix::sys::prctl::set_child_subreaper(true)?;
    let rig = Rig::start("sigkill", live_rig_opts()).await?;
    let (mut relay, publisher, children) = relay_live(&rig).await?;
    let ffmpegs: Vec<u32> = children
        .iter()
        .copied()
        .filter(|&p| process_name(p).as_deref() == Some("ffmpeg"))
        .collect();
    assert!(ffmpegs.len() >= 2, "{children:?}");
    let _cleanup = KillOnDrop {
        pids: ffmpegs.clone(),
        marker: format!(":{}/", rig.nginx.rtmp_port()),
    };

    // Stopped, the children cannot notice their pipes closing when relay
    // dies (which alone ends them) and, thanks to the subreaper, get no
    // SIGHUP/SIGCONT either: only a SIGKILL ends them, and
    // PR_SET_PDEATHSIG is what sends it.
    for &pid in &ffmpegs {
        signal_pid(pid, Signal::SIGSTOP)?;
    }
    let t0 = Instant::now();
    relay.signal(Signal::SIGKILL)?;
    let status = relay.wait_exit(secs(5)).await?;
    assert_eq!(status.signal_kind(), Some(Signal::SIGKILL), "{status}");
    wait_all_dead(&children, secs(3)).await?;
    eprintln!("SIGKILL -> all children dead after {:?}", t0.elapsed());
    // They are our zombies now: reap them.
    for &pid in &children {
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(pid as i32),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
    }
    assert_no_relay_ffmpeg_left(&rig, &[publisher.pid()]);
    // And the platform connection is gone, not held open by an orphan.
    let deadline = Instant::now() + secs(10);
    loop {
        let stat = fetch_stat(&rig.nginx.stat_url()).await?;
        if stat.publisher("out", KEY).is_none() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "out/{KEY} still published: {stat:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Sends `sig` to a process.
fn signal_pid(pid: u32, sig: Signal) -> anyhow::Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig)?;
    Ok(())
}

/// SIGKILLs, when dropped, those of `pids` that still run with `marker` in
/// their arguments (so a reused pid is never hit): a test that stopped
/// relay's children and then failed must not leave them behind.
struct KillOnDrop {
    pids: Vec<u32>,
    marker: String,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &pid in &self.pids {
            if process_is_alive(pid) && cmdline(pid).is_some_and(|c| c.contains(&self.marker)) {
                eprintln!("killing left-over {pid}: {:?}", cmdline(pid));
                let _ = signal_pid(pid, Signal::SIGKILL);
            }
        }
    }
}

#[tokio::test]
async fn children_deaf_to_sigterm_are_killed_after_kill_grace() -> anyhow::Result<()> {
    // SIGSTOPped children cannot act on SIGTERM: relay must SIGKILL them
    // after KILL_GRACE, both at once, and still exit 0 within KILL_GRACE
    // plus one second.
    let rig = Rig::start("deaf", live_rig_opts()).await?;
    let (mut relay, publisher, _) = relay_live(&rig).await?;
    let (output, ingest) = stop_current_output_and_ingest(&rig, &relay).await?;
    let _cleanup = KillOnDrop {
        pids: vec![output, ingest],
        marker: format!(":{}/", rig.nginx.rtmp_port()),
    };
    let children = child_pids_of(relay.pid());
    let mark = relay.log_mark();
    let t0 = Instant::now();
    relay.signal(Signal::SIGTERM)?;
    let status = relay.wait_exit(STOP_WITHIN).await?;
    let took = t0.elapsed();
    eprintln!("SIGTERM with stopped children -> exit {status} after {took:?}");
    assert_eq!(status.code(), Some(0), "{:?}", relay.logs());
    let grace = Duration::from_secs(KILL_GRACE_S);
    assert!(
        took >= grace - Duration::from_millis(200),
        "SIGKILL before KILL_GRACE: exit after {took:?}"
    );
    // The two children are stopped in parallel: one grace, not two.
    assert!(
        took <= grace + Duration::from_millis(1500),
        "exit after {took:?}, KILL_GRACE is {grace:?}: {:?}",
        relay.logs()
    );
    let killed: Vec<String> = relay.logs()[mark..]
        .iter()
        .filter(|l| l.contains("did not exit after SIGTERM; sending SIGKILL"))
        .cloned()
        .collect();
    for (role, pid) in [("output", output), ("ingest", ingest)] {
        assert!(
            killed
                .iter()
                .any(|l| l.contains(&format!("role=\"{role}\""))
                    || l.contains(&format!("pid={pid}"))),
            "no SIGKILL logged for the {role} ({pid}): {killed:?}"
        );
    }
    wait_all_dead(&children, secs(1)).await?;
    assert_no_relay_ffmpeg_left(&rig, &[publisher.pid()]);
    Ok(())
}

/// SIGSTOPs the output and the ingest relay runs now, as its status names
/// them; returns their pids. On a busy machine a live frame late by more
/// than OFFLINE_AFTER fails over, and the ingest may be replaced after
/// that: a child picked before must still be relay's current one once
/// stopped, or it is let go (SIGCONT) and picked again.
async fn stop_current_output_and_ingest(
    rig: &Rig,
    relay: &RelayProc,
) -> anyhow::Result<(u32, u32)> {
    let deadline = Instant::now() + secs(60);
    loop {
        let s = relay
            .wait_for_status(
                "an output and an ingest",
                |s| s.output_pid.is_some() && s.ingest_pid.is_some(),
                secs(30),
            )
            .await?;
        let (output, ingest) = (s.output_pid.unwrap(), s.ingest_pid.unwrap());
        // The output is the encoder, with the switch graph; its pushers
        // have the destination's URL.
        let ours = ffmpeg_children_with(relay.pid(), "streamselect").contains(&output)
            && ffmpeg_children_with(relay.pid(), &rig.live_path()).contains(&ingest);
        anyhow::ensure!(
            ours,
            "status names output {output} and ingest {ingest}, not among {:?}",
            describe_children(relay.pid())
        );
        for pid in [output, ingest] {
            signal_pid(pid, Signal::SIGSTOP)?;
        }
        let now = relay.status().await?;
        if now.output_pid == Some(output) && now.ingest_pid == Some(ingest) {
            return Ok((output, ingest));
        }
        eprintln!(
            "[test] relay replaced a child while it was being stopped \
             (output {output} -> {:?}, ingest {ingest} -> {:?}); again",
            now.output_pid, now.ingest_pid
        );
        for pid in [output, ingest] {
            let _ = signal_pid(pid, Signal::SIGCONT);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "relay kept replacing its children"
        );
    }
}

#[tokio::test]
async fn sigint_stops_cleanly_too() -> anyhow::Result<()> {
    // Offline only: the output and the ingest waiting for a publisher.
    let rig = Rig::start("sigint", RigOpts::default()).await?;
    let mut relay = rig.start_relay().await?;
    output_and_ingest(&rig, &relay).await?;
    let children = child_pids_of(relay.pid());
    stop_cleanly(&rig, &mut relay, &children, Signal::SIGINT, &[]).await?;
    Ok(())
}

/// `ExitStatus::signal` as a nix `Signal`.
trait SignalKind {
    fn signal_kind(&self) -> Option<Signal>;
}

impl SignalKind for std::process::ExitStatus {
    fn signal_kind(&self) -> Option<Signal> {
        use std::os::unix::process::ExitStatusExt as _;
        self.signal().and_then(|s| Signal::try_from(s).ok())
    }
}
