//! The loaded live run (`--loaded`): one publisher live for `--minutes`
//! while a competing FFmpeg encode (x264 1080p30, `medium`, as many threads
//! as cores) loads the machine, as other work does on a small VPS. What a
//! viewer would notice is counted at the sink: offline frames while the
//! publisher never stopped (false failovers), black frames, and relay's own
//! count of switches to the offline video and of starved-ingest holds.
//!
//! Run twice, side by side: relay and nginx at the default CPU weight, as
//! plain processes, then at `CPUWeight=400`, as the packaged units run
//! them, each group in a cgroup of its own (`cgroup.rs`) and the
//! competing encode in one at the default weight. The publisher and the
//! sink stand for other machines (a streamer's phone, a platform) and get
//! a weight of 400 in both runs, so that what is measured is relay's
//! scheduling, not a starved publisher. Without root (no cgroups) only the
//! plain run is made.

use std::time::{Duration, Instant};

use relay_rig::nginx::PrivateNginx;
use relay_rig::publisher::{Publisher, PublisherOpts};
use relay_rig::sink::Colour;
use tokio::process::{Child, Command};

use anyhow::Context as _;

use crate::cgroup::Groups;
use crate::rig::{self, Relay};
use crate::{Options, STEP_TIMEOUT};

#[derive(Debug, Default)]
pub struct Loaded {
    /// The CPU weight of relay's and nginx's cgroups; `None`: no cgroups.
    pub weight: Option<u32>,
    pub length: Duration,
    pub frames: usize,
    pub offline_frames: usize,
    pub black_frames: usize,
    /// relay's "on air: offline" lines while the publisher was live.
    pub false_failovers: usize,
    pub starved_holds: usize,
    pub load_average: String,
}

/// The competing encode: it runs until killed.
fn competing_encode() -> anyhow::Result<Child> {
    Ok(Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin"])
        .args(["-f", "lavfi", "-i", "testsrc2=s=1920x1080:r=30"])
        .args(["-c:v", "libx264", "-preset", "medium", "-f", "null", "-"])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?)
}

/// The weight relay@.service and relay-rtmp.service set (`CPUWeight=`).
const PACKAGED_WEIGHT: u32 = 400;
/// What every process gets by default.
const DEFAULT_WEIGHT: u32 = 100;

/// Both runs (or the plain one alone, without root); the cgroups' kind.
pub async fn run(
    nginx: &PrivateNginx,
    opts: &Options,
    length: Duration,
) -> anyhow::Result<(Vec<Loaded>, Option<&'static str>)> {
    let groups = match Groups::create(&["outside", "load", "relay", "nginx"]) {
        Ok(g) => g,
        Err(err) => {
            eprintln!("bench: loaded: no cgroups ({err:#}); one run, without CPU weights");
            return Ok((vec![one(nginx, opts, length, None).await?], None));
        }
    };
    groups.set_weight("outside", PACKAGED_WEIGHT)?;
    groups.set_weight("load", DEFAULT_WEIGHT)?;
    // This process, and so the publisher and the sink it starts.
    groups.add("outside", std::process::id())?;
    let nginx_pid = nginx.pid().context("the private nginx's pid")?;
    groups.add_tree("nginx", nginx_pid)?;
    let mut runs = Vec::new();
    for weight in [DEFAULT_WEIGHT, PACKAGED_WEIGHT] {
        groups.set_weight("relay", weight)?;
        groups.set_weight("nginx", weight)?;
        runs.push(one(nginx, opts, length, Some((&groups, weight))).await?);
    }
    Ok((runs, Some(groups.kind())))
}

async fn one(
    nginx: &PrivateNginx,
    opts: &Options,
    length: Duration,
    groups: Option<(&Groups, u32)>,
) -> anyhow::Result<Loaded> {
    let res = opts.res[0];
    let fps = opts.fps;
    let stream = "loaded";
    let offline = nginx.dir().join("offline-loaded.mp4");
    rig::make_offline_video(&offline, res).await?;
    let env = rig::write_config(nginx, nginx.dir(), stream, &offline, res, fps)?;
    let sink = rig::start_sink(&nginx.rtmp_url("out", stream));
    let started = Instant::now();
    let relay = Relay::start(&env)?;
    if let Some((g, _)) = groups {
        g.add_tree("relay", relay.pid())?;
    }
    relay.wait_for("output streaming", started).await?;
    if let Some((g, _)) = groups {
        // Children started before relay itself was moved.
        g.add_tree("relay", relay.pid())?;
    }
    let (width, height) = rig::size(res);
    let mark = Instant::now();
    let publisher = Publisher::start(
        &nginx.rtmp_url("live", stream),
        PublisherOpts {
            colour: "blue".into(),
            width,
            height,
            fps,
            gop_frames: fps * 2,
            ..PublisherOpts::default()
        },
    )
    .await?;
    relay.wait_for("on air: live", mark).await?;
    sink.wait_for_since(Colour::Blue, mark, STEP_TIMEOUT)
        .await?;
    let mut encode = competing_encode()?;
    if let (Some((g, _)), Some(pid)) = (groups, encode.id()) {
        g.add("load", pid)?;
    }
    eprintln!(
        "bench: loaded: live at {res}p{fps} for {} s beside a competing 1080p x264 encode{}",
        length.as_secs(),
        groups.map_or(String::new(), |(g, w)| format!(
            "; relay and nginx at CPU weight {w} ({})",
            g.kind()
        ))
    );
    let from = Instant::now();
    let offline_before = relay.count("on air: offline");
    let holds_before = relay.count("holding the last picture");
    tokio::time::sleep(length).await;
    let load_average = crate::report::load_average();
    let to = Instant::now();
    let _ = encode.kill().await;
    let frames: Vec<_> = sink
        .history_frames()
        .into_iter()
        .filter(|f| f.at >= from && f.at < to)
        .collect();
    let out = Loaded {
        weight: groups.map(|(_, w)| w),
        length,
        frames: frames.len(),
        offline_frames: frames.iter().filter(|f| f.colour == Colour::Green).count(),
        black_frames: frames.iter().filter(|f| f.colour == Colour::Black).count(),
        false_failovers: relay.count("on air: offline") - offline_before,
        starved_holds: relay.count("holding the last picture") - holds_before,
        load_average,
    };
    rig::finish(publisher).await;
    relay.stop().await;
    drop(sink);
    Ok(out)
}
