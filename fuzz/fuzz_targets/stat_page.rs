//! The nginx-rtmp stat-page parser on arbitrary input. Any result is fine;
//! a panic (or an abort, a stack overflow, a hang) is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = relay::nginx::stat_page::parse(&text);
});
