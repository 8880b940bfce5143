//! Feeds of real publishers, measured in the same run as the rest:
//! go-live of a video-only publisher beside one with audio (both with a
//! 5 s GOP, so an ingest restarted after the first keyframe would show as
//! 5 s more), and the failover of a 2 fps feed (relay judges such a feed on
//! its own rhythm: it fails over OFFLINE_AFTER_MS after a frame it should
//! have sent).

use std::time::{Duration, Instant};

use relay_rig::nginx::PrivateNginx;
use relay_rig::publisher::{Publisher, PublisherOpts};

use crate::rig::{self, Relay};
use crate::Options;

/// What one publisher kind took, in seconds.
#[derive(Debug, Default)]
pub struct Feeds {
    pub go_live_audio_video: Option<f64>,
    pub go_live_video_only: Option<f64>,
    /// Publisher killed → "on air: offline", for a 2 fps feed and for one
    /// at the output's frame rate.
    pub failover_2fps: Option<f64>,
    pub failover_full: Option<f64>,
}

/// Publisher started → relay's "on air: live"; then killed → "on air:
/// offline". Seconds each.
async fn one(relay: &Relay, url: &str, opts: PublisherOpts) -> anyhow::Result<(f64, f64)> {
    let t = Instant::now();
    let publisher = Publisher::start(url, opts).await?;
    let live = relay.wait_for("on air: live", t).await? - t;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let gone = Instant::now();
    rig::finish(publisher).await;
    let offline = relay.wait_for("on air: offline", gone).await? - gone;
    // Let the fresh ingest for the next publisher start and wait.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok((live.as_secs_f64(), offline.as_secs_f64()))
}

pub async fn run(nginx: &PrivateNginx, opts: &Options) -> anyhow::Result<Feeds> {
    let res = 720;
    let fps = opts.fps;
    let stream = "feeds";
    let offline = nginx.dir().join("offline-feeds.mp4");
    rig::make_offline_video(&offline, res).await?;
    let env = rig::write_config(nginx, nginx.dir(), stream, &offline, res, fps)?;
    let url = nginx.rtmp_url("live", stream);
    let started = Instant::now();
    let relay = Relay::start(&env)?;
    relay.wait_for("output streaming", started).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (width, height) = rig::size(res);
    let base = PublisherOpts {
        colour: "blue".into(),
        width,
        height,
        fps,
        gop_frames: fps * 5,
        ..PublisherOpts::default()
    };
    let mut out = Feeds::default();
    let (live, off) = one(&relay, &url, base.clone()).await?;
    out.go_live_audio_video = Some(live);
    out.failover_full = Some(off);
    let (live, _) = one(
        &relay,
        &url,
        PublisherOpts {
            audio: false,
            ..base.clone()
        },
    )
    .await?;
    out.go_live_video_only = Some(live);
    let (_, off) = one(
        &relay,
        &url,
        PublisherOpts {
            fps: 2,
            gop_frames: 4,
            ..base
        },
    )
    .await?;
    out.failover_2fps = Some(off);
    relay.stop().await;
    Ok(out)
}
