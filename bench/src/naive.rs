//! The naive design, for comparison: ONE FFmpeg reading the live RTMP
//! stream and the looping offline file, both scaled to the output,
//! `streamselect` + `astreamselect` with a `zmq` filter, encoded exactly as
//! relay's output encodes (the encoder arguments are taken from
//! `output::args`) and sent to the destination. It only runs while a
//! publisher is live: FFmpeg cannot reopen an input or survive one that
//! ends or stalls, so it cannot start or keep going without a publisher.
//! That is when it is measured.

use std::path::Path;
use std::process::Stdio;

use anyhow::Context;
use tokio::process::{Child, Command};

use relay::config::Config;

/// The output's encoder arguments for the configuration in `env`, from
/// `-c:v` up to (not including) the destination URL.
pub fn encoder_args(env: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(env)?;
    let pairs: Vec<(&str, &str)> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let config = Config::from_pairs("bench", &pairs).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(relay::encoder_args(&config))
}

pub fn start(
    live_url: &str,
    offline: &Path,
    encoder: &[String],
    out_url: &str,
    res: u32,
    fps: u32,
    zmq_port: u16,
) -> anyhow::Result<Child> {
    let (w, h) = super::rig::size(res);
    let video = format!(
        "scale={w}:{h}:force_original_aspect_ratio=decrease,pad={w}:{h}:(ow-iw)/2:(oh-ih)/2,\
         setsar=1,fps={fps},format=yuv420p"
    );
    let audio = "aresample=48000,aformat=sample_fmts=fltp:channel_layouts=stereo";
    let graph = format!(
        "[0:v]{video}[lv];[1:v]{video}[ov];[0:a]{audio}[la];[1:a]{audio}[oa];\
         [lv][ov]streamselect=inputs=2:map=0,zmq=bind_address=tcp\\\\\\://127.0.0.1\\\\\\:{zmq_port}[v];\
         [la][oa]astreamselect=inputs=2:map=0[a]"
    );
    Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin"])
        .args(["-fpsprobesize", "0", "-i", live_url])
        .args(["-re", "-stream_loop", "-1", "-i"])
        .arg(offline)
        .args(["-filter_complex", &graph, "-map", "[v]", "-map", "[a]"])
        .args(encoder)
        .arg(out_url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting the naive ffmpeg")
}
