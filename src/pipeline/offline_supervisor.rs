//! Keeps the offline source FFmpeg running: restarts it with the crash
//! backoff when it exits, starts it afresh on a new offline video (a
//! reload) or once the video's normalised copy is ready
//! (`offline_cache.rs`), and tells the pump which source to read.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tempfile::NamedTempFile;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::config::Config;
use crate::ffmpeg::preflight::OfflineInfo;
use crate::ffmpeg::supervisor::{Children, Event, Job, Started};
use crate::pipeline::frames::FramePool;
use crate::pipeline::offline_cache::{CacheKey, Codec, OfflineCache};
use crate::pipeline::offline_copy::OfflineCopy;
use crate::pipeline::offline_source::{args, cached_args, spawn};
use crate::pipeline::pipe_frames::PipePool;
use crate::pipeline::pump;

/// What the offline source's supervisor works with.
pub struct Supervision {
    /// The configuration at start (the output's format, the offline video).
    pub config: Arc<Config>,
    pub info: OfflineInfo,
    pub ffmpeg: PathBuf,
    /// Where to keep the private copy of the offline video; `None`: read it
    /// in place.
    pub copy_dir: Option<PathBuf>,
    /// The normalised copy, made from the private copy; `None`: the source
    /// normalises on every loop.
    pub cache: Option<Arc<OfflineCache>>,
    pub pump: mpsc::Sender<pump::Command>,
    /// Where the source's frames are held: stores of pipes of their own
    /// (not the live feed's), and buffers when no store can be had.
    pub pipes: Option<PipePool>,
    pub frames: FramePool,
    /// Reloaded settings: OFFLINE_VIDEO_PATH, when `new_offline` changes.
    pub updates: watch::Receiver<Arc<Config>>,
    /// A new offline video: its probe; the path is in `updates`.
    pub new_offline: watch::Receiver<OfflineInfo>,
}

/// Keeps the offline source running until shutdown: restarts it with the
/// crash backoff when it exits, starts it afresh on a new offline video
/// (a reload), and tells the pump which source to read.
pub(crate) fn supervise(children: &Children, s: Supervision) {
    let source_path = s.config.offline_video_path.clone();
    let job = SourceJob {
        s,
        source_path,
        copy: None,
        key: None,
        on_cache: None,
        started: false,
        renewing: false,
        restarting: false,
    };
    children.restarting(job, None, tracing::info_span!("offline"));
}

/// How the offline source is started, and what its supervisor says.
struct SourceJob {
    s: Supervision,
    /// The offline video, and relay's copy of it that the source reads.
    source_path: PathBuf,
    copy: Option<Arc<OfflineCopy>>,
    /// What the normalised copy for this video is made of and for.
    key: Option<CacheKey>,
    /// The normalised copy the running source reads, if it reads one.
    on_cache: Option<Arc<NamedTempFile>>,
    started: bool,
    /// A new offline video is there: start on it.
    renewing: bool,
    /// The last run failed: the next start is a restart.
    restarting: bool,
}

impl Job for SourceJob {
    type Progress = ();

    async fn start(&mut self) -> std::io::Result<Started<()>> {
        let renewed = self.renewing || self.s.new_offline.has_changed().unwrap_or(false);
        if !self.started {
            self.started = true;
            self.new_copy().await;
        } else if renewed {
            self.renewing = false;
            self.s.info = self.s.new_offline.borrow_and_update().clone();
            self.source_path = self.s.updates.borrow().offline_video_path.clone();
            // The old copy goes once its reader is gone: it is stopped.
            self.new_copy().await;
            info!(
                offline = %self.source_path.display(),
                "reload: the new offline video is on its way; the output keeps running"
            );
        }
        if std::mem::take(&mut self.restarting) {
            info!("restarting the offline video source");
        }
        let cached = match (&self.s.cache, &self.key) {
            (Some(cache), Some(key)) => cache.ready(key),
            _ => None,
        };
        let args = match &cached {
            Some((codec, file)) => {
                if self.on_cache.is_none() {
                    info!("the offline source now reads the normalised copy: it only decodes");
                }
                cached_args(&self.s.config, file.path(), *codec == Codec::Raw)
            }
            None => {
                let path = self
                    .copy
                    .as_ref()
                    .map_or(self.source_path.clone(), |c| c.path().to_owned());
                args(&self.s.config, &self.s.info, &path)
            }
        };
        self.on_cache = cached.map(|(_, file)| file);
        let (child, source) = spawn(
            &self.s.config,
            args,
            &self.s.ffmpeg,
            self.s.pipes.as_ref(),
            &self.s.frames,
        )?;
        let _ = self.s.pump.send(pump::Command::Offline(Some(source))).await;
        Ok(Started {
            child,
            progress: None,
        })
    }

    async fn ended(&mut self) {
        let _ = self.s.pump.send(pump::Command::Offline(None)).await;
    }

    async fn renew(&mut self) {
        let mut cache_changes = self.s.cache.as_ref().map(|c| c.subscribe());
        loop {
            let cache_changed = async {
                let Some(rx) = cache_changes.as_mut() else {
                    return std::future::pending().await;
                };
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                changed = self.s.new_offline.changed() => {
                    // Without a sender there is never a new video.
                    if changed.is_err() {
                        std::future::pending::<()>().await;
                    }
                    self.renewing = true;
                    return;
                }
                // The normalised copy is ready: start again on it.
                () = cache_changed => {
                    if self.on_cache.is_none() && self.cache_ready() {
                        return;
                    }
                }
            }
        }
    }

    async fn report(&mut self, event: Event<()>) {
        if let Event::Exited {
            reason,
            uptime,
            retry_in,
        } = event
        {
            self.restarting = true;
            // A normalised copy the source cannot play is not tried again:
            // the next start normalises on every loop, as without one.
            if self.on_cache.take().is_some() {
                if let (Some(cache), Some(key)) = (&self.s.cache, &self.key) {
                    cache.reject(key, reason.to_string());
                }
            }
            warn!(
                reason = %reason,
                uptime_s = uptime.as_secs_f64(),
                retry_in_s = retry_in.as_secs_f64(),
                "offline video source stopped; the output repeats its last frame meanwhile"
            );
        }
    }
}

impl SourceJob {
    /// A new private copy of the offline video, and its normalised copy
    /// asked for (made only if the video or the format changed).
    async fn new_copy(&mut self) {
        let key = CacheKey::of(&self.s.updates.borrow());
        self.copy = make_copy(&self.s, &self.source_path).await.map(Arc::new);
        self.key = None;
        if let (Some(cache), Some(copy)) = (&self.s.cache, &self.copy) {
            cache.want(key.clone(), copy.clone(), &self.s.info);
            self.key = Some(key);
        }
    }

    fn cache_ready(&self) -> bool {
        match (&self.s.cache, &self.key) {
            (Some(cache), Some(key)) => cache.ready(key).is_some(),
            _ => false,
        }
    }
}

/// relay's private copy of the offline video, if it keeps one.
async fn make_copy(s: &Supervision, source: &Path) -> Option<OfflineCopy> {
    match &s.copy_dir {
        Some(dir) => Some(OfflineCopy::make(source, dir, &s.config.instance).await),
        None => None,
    }
}
