//! One relay instance over its lifetime: start-up checks, the daemon, and
//! `systemctl reload` (SIGHUP).
//!
//! A reload re-reads the configuration and checks it as at start-up. An
//! invalid one is rejected with the reason logged, and the running
//! configuration stays. What a valid one does is [`config::classify`]'s
//! decision, from the key table: nothing when unchanged; settings that
//! apply at once (the switching policy, POLL_INTERVAL, ALLOWED_PUBLISHERS,
//! KILL_GRACE, CRASH_BACKOFF, a replaced PUBLISH_KEY) go to the running
//! daemon without restarting any FFmpeg; a new offline video
//! (OFFLINE_VIDEO_PATH, or its file replaced), with or without such
//! settings, restarts only the offline source; any other change restarts
//! the pipeline in this process with it: the output reconnects once, the
//! unit stays active.

use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::config::{self, Config, ReloadPlan, Source};
use crate::daemon;
use crate::ffmpeg::preflight::OfflineInfo;
use crate::observe::api;
use crate::pipeline::offline_cache::{self, OfflineCache};
use crate::pipeline::offline_copy;

/// Exit status for a failure that is not a configuration error.
pub const EX_SOFTWARE: i32 = 1;

/// What a SIGHUP found.
enum Reload {
    Rejected(String),
    /// A valid configuration, its offline video, and what to do with them.
    Valid(ReloadPlan, Box<Config>, OfflineInfo),
}

/// Runs the instance until SIGTERM or SIGINT; returns the exit status.
pub async fn run(source: Source, mut config: Config, mut offline: OfflineInfo) -> i32 {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    for notice in &config.notices {
        warn!("{notice}");
    }
    if config
        .live
        .sources
        .contains(&crate::config::LiveSource::Srt)
        && config.srt.passphrase.is_empty()
    {
        warn!(
            port = config.srt.port,
            "SRT_PASSPHRASE is not set: the SRT feed is unencrypted and any caller who finds the UDP port can go on air"
        );
    }
    let (reloads_tx, reloads_rx) = tokio::sync::watch::channel::<daemon::Reloads>((0, None));
    let reloaded = |outcome: &'static str, detail: String| {
        reloads_tx.send_modify(|(count, last)| {
            *count += 1;
            *last = Some((tokio::time::Instant::now(), outcome, detail));
        })
    };
    // The offline video normalised once, for the whole process: a pipeline
    // restart that changes neither the video nor the output's format keeps
    // it.
    let ffmpeg = daemon::Options::default().ffmpeg;
    let cache = offline_cache::enabled()
        .then(|| OfflineCache::new(&offline_copy::copy_dir(), &config.instance, &ffmpeg));
    loop {
        let (tune_tx, tune_rx) = tokio::sync::watch::channel(Arc::new(config.clone()));
        let (offline_tx, offline_rx) = tokio::sync::watch::channel(offline.clone());
        // The offline source reads a copy of the offline video made at
        // start (`pipeline/offline_copy.rs`): a reload must notice a new file even when
        // it probes the same.
        let mut stamp = file_stamp(&config.offline_video_path);
        let options = daemon::Options {
            control_socket: Some(api::socket_path(&config.instance)),
            reconfigure: Some(tune_rx),
            offline_copy_dir: Some(offline_copy::copy_dir()),
            new_offline: Some(offline_rx),
            reloads: Some(reloads_rx.clone()),
            offline_cache: cache.clone(),
            ..daemon::Options::default()
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let running = daemon::run(config.clone(), offline.clone(), options, async {
            let _ = stop_rx.await;
        });
        tokio::pin!(running);
        let mut stop_tx = Some(stop_tx);
        let next = loop {
            tokio::select! {
                result = &mut running => return exit_status(result),
                _ = term.recv() => info!("SIGTERM received"),
                _ = int.recv() => info!("SIGINT received"),
                _ = hup.recv() => match reload(&source, &config, &offline, stamp).await {
                    Reload::Rejected(why) => {
                        error!("reload rejected, the running configuration stays: {why}");
                        reloaded("rejected", why);
                        continue;
                    }
                    Reload::Valid(ReloadPlan::Unchanged, _, _) => {
                        info!("reload: the configuration is unchanged");
                        reloaded("unchanged", String::new());
                        continue;
                    }
                    Reload::Valid(ReloadPlan::ApplyAtOnce, new, _) => {
                        info!("reload: only settings that apply at once changed; the output is not restarted");
                        config = *new;
                        tune_tx.send_replace(Arc::new(config.clone()));
                        reloaded("applied", String::new());
                        continue;
                    }
                    Reload::Valid(ReloadPlan::NewOfflineVideo { .. }, new, new_offline) => {
                        info!("reload: a new offline video; only the offline source restarts, the output keeps running");
                        config = *new;
                        offline = new_offline;
                        stamp = file_stamp(&config.offline_video_path);
                        tune_tx.send_replace(Arc::new(config.clone()));
                        offline_tx.send_replace(offline.clone());
                        reloaded("new_offline_video", String::new());
                        continue;
                    }
                    Reload::Valid(ReloadPlan::Restart, new, new_offline) => {
                        info!("reload: applying the new configuration (the output reconnects once)");
                        if let Some(tx) = stop_tx.take() {
                            let _ = tx.send(());
                        }
                        let _ = (&mut running).await;
                        reloaded("restarted", String::new());
                        break (*new, new_offline);
                    }
                },
            }
            // SIGTERM or SIGINT: stop and leave.
            if let Some(tx) = stop_tx.take() {
                let _ = tx.send(());
            }
            return exit_status((&mut running).await);
        };
        (config, offline) = next;
    }
}

fn exit_status(result: anyhow::Result<()>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(err) => {
            error!("{err:#}");
            EX_SOFTWARE
        }
    }
}

/// Re-reads and checks the configuration as at start-up.
async fn reload(
    source: &Source,
    running: &Config,
    offline: &OfflineInfo,
    stamp: Option<FileStamp>,
) -> Reload {
    let source = source.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let config = Config::load(&source).map_err(|e| e.to_string())?;
        let offline = crate::ffmpeg::preflight::check_all(&config).map_err(|e| e.to_string())?;
        Ok::<_, String>((config, offline))
    })
    .await;
    match checked {
        Err(err) => Reload::Rejected(format!("the check did not finish: {err}")),
        Ok(Err(why)) => Reload::Rejected(why),
        Ok(Ok((config, new_offline))) => {
            // The offline source plays a copy of the file made at start, so
            // a file replaced in place (a new probe or a new size and time)
            // counts as a new offline video although no key changed.
            let file_replaced = !same_video(&new_offline, offline)
                || file_stamp(&config.offline_video_path) != stamp;
            let mut plan = config::classify(running, &config);
            if file_replaced {
                plan = plan.with_offline_file_replaced();
                if plan == ReloadPlan::Restart
                    && config.offline_video_path == running.offline_video_path
                {
                    warn!("reload: the offline video file changed");
                }
            }
            Reload::Valid(plan, Box::new(config), new_offline)
        }
    }
}

fn same_video(a: &OfflineInfo, b: &OfflineInfo) -> bool {
    (a.width, a.height, a.has_audio, a.duration) == (b.width, b.height, b.has_audio, b.duration)
}

/// Size and modification time: tells a replaced or rewritten file.
type FileStamp = (u64, std::time::SystemTime);

fn file_stamp(path: &std::path::Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}
