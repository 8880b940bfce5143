//! Test harness: real processes (nginx-rtmp, ffmpeg publishers and sinks,
//! relay itself) driven from async tests, so each test can read like the
//! behaviour it checks.
//!
//! Every child started here is killed and reaped when its owner is dropped,
//! so a failing test leaves nothing behind. Output of every child is echoed to
//! the test's stderr with a `[label]` prefix (cargo shows it for failing
//! tests) and kept for assertions.
//!
//! Each test binary compiles this module and uses part of it.
#![allow(dead_code)]

mod faulty_http;
mod media;
mod netns;
mod process;
mod publisher;
mod relay_env;
mod relay_status;
mod sink;
mod stall_proxy;
mod stat;

use std::time::Duration;

#[allow(unused_imports)]
pub use faulty_http::*;
pub use media::*;
pub use netns::*;
pub use process::*;
pub use publisher::*;
pub use relay::nginx::private::{NginxOptions, PrivateNginx};
#[allow(unused_imports)]
pub use relay_env::*;
#[allow(unused_imports)]
pub use relay_status::*;
pub use sink::*;
#[allow(unused_imports)]
pub use stall_proxy::*;
pub use stat::*;

/// How often the `wait_*` helpers look at what was recorded.
const POLL: Duration = Duration::from_millis(50);

/// Starts a private nginx with the default options (127.0.0.1, free ports).
pub async fn start_nginx() -> anyhow::Result<PrivateNginx> {
    PrivateNginx::start(NginxOptions::default()).await
}

/// Seconds, for timeouts: `secs(15)`.
pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
