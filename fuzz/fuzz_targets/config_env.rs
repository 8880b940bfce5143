//! The configuration loader on arbitrary file contents, once as a `.env`
//! file and once as a `.toml` file, through `Config::load_with_env` with an
//! empty environment. Errors are expected; a panic is a bug.
//!
//! The loader only reads files, so the input is written to a file in the
//! temporary directory first; its name carries the process id, so parallel
//! fuzzing jobs (`-jobs=N`) do not overwrite each other's input.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use relay::config::{Config, Source};

fn paths() -> &'static [PathBuf; 2] {
    static PATHS: OnceLock<[PathBuf; 2]> = OnceLock::new();
    PATHS.get_or_init(|| {
        let dir = std::env::temp_dir();
        let id = std::process::id();
        [
            dir.join(format!("relay-fuzz-{id}.env")),
            dir.join(format!("relay-fuzz-{id}.toml")),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    for path in paths() {
        // Raw bytes, not lossy: a file that is not UTF-8 must be refused
        // cleanly too.
        std::fs::write(path, data).expect("write the fuzz input to a temporary file");
        let _ = Config::load_with_env(&Source::File(path.clone()), &|_| None);
    }
});
