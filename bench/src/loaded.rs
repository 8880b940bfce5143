//! The loaded live run (`--loaded`): one publisher live for `--minutes`
//! while a competing FFmpeg encode (x264 1080p30, `medium`, as many threads
//! as cores) loads the machine, as other work does on a small VPS. What a
//! viewer would notice is counted at the sink: offline frames while the
//! publisher never stopped (false failovers), black frames, and relay's own
//! count of switches to the offline video and of starved-ingest holds.

use std::time::{Duration, Instant};

use relay_rig::nginx::PrivateNginx;
use relay_rig::publisher::{Publisher, PublisherOpts};
use relay_rig::sink::Colour;
use tokio::process::{Child, Command};

use crate::rig::{self, Relay};
use crate::{Options, STEP_TIMEOUT};

#[derive(Debug, Default)]
pub struct Loaded {
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

pub async fn run(nginx: &PrivateNginx, opts: &Options, length: Duration) -> anyhow::Result<Loaded> {
    let res = opts.res[0];
    let fps = opts.fps;
    let stream = "loaded";
    let offline = nginx.dir().join("offline-loaded.mp4");
    rig::make_offline_video(&offline, res).await?;
    let env = rig::write_config(nginx, nginx.dir(), stream, &offline, res, fps)?;
    let sink = rig::start_sink(&nginx.rtmp_url("out", stream));
    let started = Instant::now();
    let relay = Relay::start(&env)?;
    relay.wait_for("output streaming", started).await?;
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
    eprintln!(
        "bench: loaded: live at {res}p{fps} for {} s beside a competing 1080p x264 encode",
        length.as_secs()
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
