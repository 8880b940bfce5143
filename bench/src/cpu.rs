//! What a process (tree) costs, read from `/proc`: CPU ticks (utime +
//! stime), resident memory, open file descriptors.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::{sleep, Instant};

/// CPU use over a window, as % of one core, and memory at its end.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// The process alone.
    pub own_percent: f64,
    /// The process and all its descendants (e.g. relay and its FFmpegs).
    pub tree_percent: f64,
    pub rss_kb: u64,
    pub hwm_kb: u64,
    /// The descendants' share by role (% of one core): relay's ingest
    /// FFmpeg (it reads RTMP), its output FFmpeg (it reads raw pipes and
    /// encodes), its offline source (it loops the offline video) and its
    /// pushers (one `-c copy` per destination, all of them together). The
    /// ingest is RTMP's; SRT's listener is counted apart.
    pub ingest_percent: f64,
    pub srt_ingest_percent: f64,
    pub output_percent: f64,
    pub offline_percent: f64,
    pub pusher_percent: f64,
}

/// relay's name for one of its FFmpeg children, from its command line.
fn role(pid: u32) -> Option<&'static str> {
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
    let cmd = String::from_utf8_lossy(&cmd);
    // A pusher also reports -progress, and has the destination's rtmp://
    // URL: it is the one that copies. The SRT ingest reads its listener's
    // URL from a list on a pipe, and copies the feed for its byte count.
    if cmd.contains("pipe,srt") {
        Some("srt_ingest")
    } else if args.windows(2).any(|w| w[0] == b"-c" && w[1] == b"copy") {
        Some("pusher")
    } else if cmd.contains("-progress") {
        Some("output")
    } else if cmd.contains("rtmp://") {
        Some("ingest")
    } else if cmd.contains("-stream_loop") {
        Some("offline")
    } else {
        None
    }
}

fn ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64
}

/// (ppid, utime + stime) of one process.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name: state is field 3 of the
    // whole line, ppid 4, utime 14, stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ppid = f.get(1)?.parse().ok()?;
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((ppid, ticks))
}

/// Ticks of `root` and of every live descendant, by pid.
pub fn tree_ticks(root: u32) -> HashMap<u32, u64> {
    let mut all: Vec<(u32, u32, u64)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                if let Some((ppid, t)) = stat(pid) {
                    all.push((pid, ppid, t));
                }
            }
        }
    }
    let mut out = HashMap::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(pid, ppid, t) in &all {
            if pid == p {
                out.insert(pid, t);
            }
            if ppid == p {
                frontier.push(pid);
            }
        }
    }
    out
}

/// `VmRSS` and `VmHWM` in kB.
pub fn memory_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Open file descriptors of a process.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Samples `root` (and its tree) over `window`.
pub async fn measure(root: u32, window: Duration) -> Usage {
    let t0 = tree_ticks(root);
    let start = Instant::now();
    sleep(window).await;
    let t1 = tree_ticks(root);
    let secs = start.elapsed().as_secs_f64();
    let hz = ticks_per_second();
    let delta = |pid: &u32, t: &u64| t.saturating_sub(*t0.get(pid).unwrap_or(&0));
    let own = t1.get(&root).map_or(0, |t| delta(&root, t));
    let tree: u64 = t1.iter().map(|(p, t)| delta(p, t)).sum();
    let of_role = |name: &str| -> u64 {
        t1.iter()
            .filter(|(p, _)| **p != root && role(**p) == Some(name))
            .map(|(p, t)| delta(p, t))
            .sum()
    };
    let percent = |ticks: u64| ticks as f64 / hz / secs * 100.0;
    let (rss_kb, hwm_kb) = memory_kb(root);
    Usage {
        own_percent: percent(own),
        tree_percent: percent(tree),
        rss_kb,
        hwm_kb,
        ingest_percent: percent(of_role("ingest")),
        srt_ingest_percent: percent(of_role("srt_ingest")),
        output_percent: percent(of_role("output")),
        offline_percent: percent(of_role("offline")),
        pusher_percent: percent(of_role("pusher")),
    }
}
