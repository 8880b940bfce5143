//! relay's private copy of the offline video.
//!
//! The offline source FFmpeg (`offline_source.rs`) opens the offline video
//! again at every start. Were that the operator's file, a file replaced or
//! overwritten while relay runs (a half-copied upload, a truncated file)
//! would be what the next restart of the source opens, and a broken one
//! would keep the offline video off the output. So at start (and at each
//! reload) relay copies the file, as it was checked, into its cache
//! directory (systemd's `CacheDirectory=`, on disk rather than in the RAM
//! of `/run`), else its runtime directory, and the source reads that copy;
//! the copy is removed when it is replaced or the daemon stops. A plain
//! copy: start-up stays fast.

use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;
use tracing::{debug, warn};

/// Where relay keeps its copy: `$CACHE_DIRECTORY` under systemd, else the
/// runtime directory.
pub fn copy_dir() -> PathBuf {
    crate::observe::api::systemd_dir("CACHE_DIRECTORY")
        .unwrap_or_else(crate::observe::api::runtime_dir)
}

/// The offline video the offline source reads; removed on drop if it is a
/// copy.
pub struct OfflineCopy {
    file: Option<NamedTempFile>,
    source: PathBuf,
}

impl OfflineCopy {
    /// Copies `source` into `dir` (created if missing). If that fails,
    /// relay reads `source` itself and says so.
    pub async fn make(source: &Path, dir: &Path, instance: &str) -> OfflineCopy {
        let (src, dst, name) = (source.to_owned(), dir.to_owned(), instance.to_owned());
        let copied = tokio::task::spawn_blocking(move || copy(&src, &dst, &name)).await;
        let file = match copied {
            Ok(Ok(file)) => Some(file),
            Ok(Err(err)) => {
                warn!(
                    offline = %source.display(),
                    dir = %dir.display(),
                    "could not copy the offline video ({err}); reading it in place, so replacing it while relay runs affects the offline video on air"
                );
                None
            }
            Err(err) => {
                warn!("could not copy the offline video ({err}); reading it in place");
                None
            }
        };
        OfflineCopy {
            file,
            source: source.to_owned(),
        }
    }

    /// What the offline source opens.
    pub fn path(&self) -> &Path {
        self.file
            .as_ref()
            .map_or(self.source.as_path(), |f| f.path())
    }
}

fn copy(source: &Path, dir: &Path, instance: &str) -> std::io::Result<NamedTempFile> {
    std::fs::create_dir_all(dir)?;
    remove_stale(dir, instance);
    let suffix = source
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let mut file = tempfile::Builder::new()
        .prefix(&format!("{instance}-offline-"))
        .suffix(&suffix)
        .tempfile_in(dir)?;
    let mut input = std::fs::File::open(source)?;
    std::io::copy(&mut input, file.as_file_mut())?;
    file.as_file().sync_data()?;
    Ok(file)
}

/// Removes copies left by an earlier run of this instance that could not
/// clean up (killed by the watchdog or SIGKILL, say): only one relay runs
/// per instance name, so none of them is in use.
fn remove_stale(dir: &Path, instance: &str) {
    let prefix = format!("{instance}-offline-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => debug!(path = %entry.path().display(), "removed a stale offline copy"),
                Err(err) => {
                    debug!(path = %entry.path().display(), %err, "could not remove a stale offline copy")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn copies_and_removes_the_copy() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("offline.mp4");
        std::fs::write(&source, b"video").unwrap();
        let run = dir.path().join("run");
        let copy = OfflineCopy::make(&source, &run, "main").await;
        let path = copy.path().to_owned();
        assert_ne!(path, source);
        assert!(path.starts_with(&run));
        assert_eq!(path.extension().unwrap(), "mp4");
        std::fs::write(&source, b"garbage").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"video");
        drop(copy);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_killed_run_leaves_no_copy_behind_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("offline.mp4");
        std::fs::write(&source, b"video").unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        std::fs::write(run.join("main-offline-old.mp4"), b"stale").unwrap();
        std::fs::write(run.join("other-offline-x.mp4"), b"another instance").unwrap();
        let copy = OfflineCopy::make(&source, &run, "main").await;
        let mut left: Vec<_> = std::fs::read_dir(&run)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [copy.path().to_owned(), run.join("other-offline-x.mp4")]
        );
    }

    #[tokio::test]
    async fn falls_back_to_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("offline.mp4");
        std::fs::write(&source, b"video").unwrap();
        // A file where the directory should be.
        let blocker = dir.path().join("run");
        std::fs::write(&blocker, b"").unwrap();
        let copy = OfflineCopy::make(&source, &blocker, "main").await;
        assert_eq!(copy.path(), source);
    }
}
