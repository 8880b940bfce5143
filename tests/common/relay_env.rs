//! Relay's configuration for a test: [`RelayEnv`], and the offline video
//! in a test's own directory.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::process::write_env_file;
use relay_rig::media::make_offline_video;
use relay_rig::nginx::{NginxOptions, PrivateNginx};

/// The settings of relay's env file for a test. [`new`](Self::new) starts
/// from what the tests share; [`set`](Self::set) changes or adds a key.
#[derive(Debug, Clone)]
pub struct RelayEnv {
    pairs: Vec<(String, String)>,
}

impl RelayEnv {
    /// Output to app `out` of `nginx` with stream key `kick_key`, the live
    /// feed `stream` of app `live` there, `offline` as the offline video; a
    /// small, fast output (180p, 30 fps, 300k), polls every 0.5 s, a 2 s
    /// kill grace, a 1 s crash backoff, and any publisher allowed on air.
    pub fn new(
        nginx: &PrivateNginx,
        kick_key: &str,
        stream: &str,
        offline: &Path,
    ) -> anyhow::Result<RelayEnv> {
        let pairs = [
            (
                "KICK_URL",
                format!("rtmp://127.0.0.1:{}/out", nginx.rtmp_port()),
            ),
            ("KICK_KEY", kick_key.to_string()),
            ("RTMP_PORT", nginx.rtmp_port().to_string()),
            ("RTMP_STREAM_NAME", stream.to_string()),
            ("STATS_URL", nginx.stat_url()),
            ("ZMQ_PORT", relay_rig::nginx::free_tcp_port()?.to_string()),
            (
                "OFFLINE_VIDEO_PATH",
                offline
                    .to_str()
                    .context("temp path is not UTF-8")?
                    .to_string(),
            ),
            ("OUT_RES", "180".into()),
            ("OUT_FPS", "30".into()),
            ("VID_BITRATE", "300k".into()),
            ("MAX_BITRATE", "300k".into()),
            ("BUFFER_SIZE", "600k".into()),
            ("POLL_INTERVAL", "0.5".into()),
            ("ALLOWED_PUBLISHERS", "any".into()),
            ("KILL_GRACE", "2".into()),
            ("CRASH_BACKOFF", "1".into()),
        ];
        Ok(RelayEnv {
            pairs: pairs.map(|(k, v)| (k.to_string(), v)).to_vec(),
        })
    }

    /// Sets `key` to `value`, in place of what it was.
    pub fn set(mut self, key: &str, value: impl Into<String>) -> RelayEnv {
        self.pairs.retain(|(k, _)| k != key);
        self.pairs.push((key.to_string(), value.into()));
        self
    }

    /// Leaves `key` out, so that relay takes its default.
    pub fn unset(mut self, key: &str) -> RelayEnv {
        self.pairs.retain(|(k, _)| k != key);
        self
    }

    /// Writes the env file into `dir`; returns its path.
    pub fn write(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let pairs: Vec<(&str, &str)> = self
            .pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        write_env_file(dir, &pairs)
    }
}

/// A temporary directory `relay-{tag}-…` holding a green offline video
/// (320x180, with sound); returns both.
pub async fn dir_with_offline(tag: &str) -> anyhow::Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("relay-{tag}-"))
        .tempdir()?;
    let video = make_offline_video(dir.path(), "green", true, 320, 180).await?;
    Ok((dir, video))
}

/// A private nginx whose `live` application asks relay (`on_publish`) on a
/// free port before it accepts a publisher; returns it and that port
/// (relay's `PUBLISH_AUTH_PORT`).
pub async fn start_nginx_with_publish_auth() -> anyhow::Result<(PrivateNginx, u16)> {
    let auth_port = relay_rig::nginx::free_tcp_port()?;
    let nginx = PrivateNginx::start(NginxOptions {
        on_publish: Some(format!("http://127.0.0.1:{auth_port}/on_publish")),
        ..NginxOptions::default()
    })
    .await?;
    Ok((nginx, auth_port))
}
