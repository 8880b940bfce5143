//! `relay demo`: the whole pipeline on one machine, nothing to configure.
//! A private nginx-rtmp on loopback takes the publisher (app `live`) and
//! the relay's output (app `out`, standing in for the platform), and the
//! offline video is generated on the spot. Both come from the `relay-rig`
//! crate, which the tests and the benchmark share; nothing else in relay
//! uses it.

use std::net::IpAddr;

use anyhow::Context;
use relay_rig::media::OfflineVideo;
use relay_rig::nginx::{free_tcp_port, NginxOptions, PrivateNginx};

use crate::config::Config;
use crate::{cli, daemon};

const STREAM: &str = "demo";

pub async fn run(res: u32) -> anyhow::Result<i32> {
    let nginx = start_nginx().await?;
    let offline = nginx.dir().join("offline.mp4");
    // SMPTE bars, the classic "we'll be right back" card, with a 1 kHz tone.
    let size = format!("{}x{res}", crate::config::width_16_9(res));
    OfflineVideo::new(format!("smptehdbars=s={size}:r=30"), 6)
        .make(&offline)
        .await
        .context("generating the offline video")?;
    let port = nginx.rtmp_port().to_string();
    let zmq = free_tcp_port()?.to_string();
    let output = nginx.rtmp_url("out", STREAM);
    let stat = nginx.stat_url();
    let offline_path = offline.display().to_string();
    let res_text = res.to_string();
    let config = Config::from_pairs(
        "demo",
        &[
            ("KICK_URL", &output),
            ("RTMP_PORT", &port),
            ("RTMP_STREAM_NAME", STREAM),
            ("STATS_URL", &stat),
            ("ZMQ_PORT", &zmq),
            ("OFFLINE_VIDEO_PATH", &offline_path),
            ("OUT_RES", &res_text),
            ("VID_BITRATE", "2500k"),
            ("MAX_BITRATE", "2500k"),
            ("BUFFER_SIZE", "5000k"),
            // Everything here is on loopback.
            ("ALLOWED_PUBLISHERS", "any"),
            // Its nginx asks nobody before it accepts a publisher; and the
            // port of a real instance's on_publish endpoint stays free.
            ("PUBLISH_AUTH_PORT", "0"),
        ],
    )?;
    let checked = config.clone();
    let offline_info =
        tokio::task::spawn_blocking(move || crate::ffmpeg::preflight::check_all(&checked))
            .await??;
    let publish = nginx.rtmp_url("live", STREAM);
    println!();
    println!("relay demo is running (Ctrl+C stops it).");
    println!();
    println!("  Publish to:  {publish}");
    println!("               (OBS: server rtmp://127.0.0.1:{port}/live, stream key {STREAM})");
    println!("  Watch:       ffplay {output}");
    println!();
    println!("  A test publisher:");
    println!(
        "    ffmpeg -re -f lavfi -i testsrc2=s=1280x720:r=30 -f lavfi -i sine=frequency=440 \\"
    );
    println!("      -c:v libx264 -preset veryfast -g 60 -c:a aac -f flv {publish}");
    println!();
    let result = daemon::run(
        config,
        offline_info,
        daemon::Options::default(),
        cli::shutdown_signal(),
    )
    .await;
    nginx.stop().await;
    result.map(|()| 0)
}

/// The demo's nginx, on the usual ports if they are free.
async fn start_nginx() -> anyhow::Result<PrivateNginx> {
    let loopback: IpAddr = [127, 0, 0, 1].into();
    let usual = NginxOptions {
        listen: vec![loopback],
        rtmp_port: Some(1936),
        http_port: Some(8080),
        ..NginxOptions::default()
    };
    match PrivateNginx::start(usual).await {
        Ok(n) => Ok(n),
        Err(_) => PrivateNginx::start(NginxOptions::default())
            .await
            .context("starting the demo's private nginx-rtmp (is libnginx-mod-rtmp installed?)"),
    }
}
