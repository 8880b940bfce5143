//! Inputs the fuzzers found (or that were written by hand to be nasty) go
//! through the same code paths as the fuzz targets in `fuzz/fuzz_targets/`.
//! Each must be refused or accepted without a panic; the result itself does
//! not matter here.
//!
//! `fuzz/regressions/stat_page/`: stat-page bodies for `relay::nginx::stat_page::parse`
//! (read as bytes, converted lossily to UTF-8 as the fuzz target does).
//! `fuzz/regressions/config_env/`: file contents loaded once as a `.env` and
//! once as a `.toml` file through `Config::load_with_env`.
//! `fuzz/regressions/flv/`: a byte saying how long each piece is, then an
//! FLV stream for `relay::flv::Walker`, as the fuzz target feeds it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use relay::config::{Config, Source};

fn regression_files(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no inputs in {}", dir.display());
    files
}

/// Runs `check` on every input of `target`, and fails naming each input
/// that panicked (all of them, not only the first).
fn run_all(target: &str, check: impl Fn(&[u8])) {
    let mut panicked = Vec::new();
    for path in regression_files(target) {
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
            panicked.push(path.display().to_string());
        }
    }
    assert!(panicked.is_empty(), "panicked on: {panicked:?}");
}

#[test]
fn stat_page_regressions_do_not_panic() {
    run_all("stat_page", |data| {
        let text = String::from_utf8_lossy(data);
        let _ = relay::nginx::stat_page::parse(&text);
    });
}

#[test]
fn config_regressions_do_not_panic() {
    let dir = tempfile::tempdir().expect("temporary directory");
    run_all("config_env", |data| {
        for name in ["fuzz.env", "fuzz.toml"] {
            let path = dir.path().join(name);
            std::fs::write(&path, data).expect("write the input");
            let _ = Config::load_with_env(&Source::File(path), &|_| None);
        }
    });
}

#[test]
fn flv_regressions_do_not_panic() {
    run_all("flv", |data| {
        let Some((&piece, rest)) = data.split_first() else {
            return;
        };
        let mut walker = relay::flv::Walker::new();
        for chunk in rest.chunks(usize::from(piece).max(1)) {
            let Ok(items) = walker.push(chunk) else {
                return;
            };
            for item in items {
                if let relay::flv::Item::Tag(tag) = item {
                    let _ = (tag.is_keyframe(), tag.is_sequence_header(), tag.timestamp());
                    let _ = tag.at(tag.timestamp().wrapping_add(1)).data().len();
                }
            }
        }
    });
}
