//! Test harness: real processes (nginx-rtmp, ffmpeg publishers and sinks,
//! relay itself) driven from async tests, so each test can read like the
//! behaviour it checks.
//!
//! The generic rigs (private nginx, publishers, sink, media, stat page,
//! network namespaces, faulty servers) live in the `relay-rig` crate, which
//! the benchmark and `relay demo` share; this module re-exports them
//! beside what only relay's tests need: the relay process ([`RelayProc`])
//! and its configuration ([`RelayEnv`]).
//!
//! Every child started here is killed and reaped when its owner is dropped,
//! so a failing test leaves nothing behind. Output of every child is echoed to
//! the test's stderr with a `[label]` prefix (cargo shows it for failing
//! tests) and kept for assertions.
#![allow(dead_code)]

mod process;
mod relay_env;
mod relay_status;

use std::time::Duration;

pub use process::*;
#[allow(unused_imports)]
pub use relay_env::*;
#[allow(unused_imports)]
pub use relay_rig::faulty_http::*;
pub use relay_rig::media::*;
pub use relay_rig::netns::*;
pub use relay_rig::nginx::{free_tcp_port, free_udp_port, NginxOptions, PrivateNginx};
pub use relay_rig::process::*;
pub use relay_rig::publisher::*;
pub use relay_rig::sink::*;
#[allow(unused_imports)]
pub use relay_rig::stall_proxy::*;
pub use relay_rig::stat::*;
#[allow(unused_imports)]
pub use relay_status::*;

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
