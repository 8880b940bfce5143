//! Real processes around relay, for its integration tests, its benchmark
//! and `relay demo`: a private nginx-rtmp ([`nginx`]), streamers
//! ([`publisher`]), a player that records what viewers see ([`sink`]),
//! offline videos and ffprobe ([`media`]), nginx's statistics page
//! ([`stat`]), and the process harness they are built on ([`process`]).
//! For fault tests: a network namespace ([`netns`]), a misbehaving stat
//! page ([`faulty_http`]) and a TCP proxy that stops reading
//! ([`stall_proxy`]).
//!
//! Every child started here is killed and reaped when its owner is dropped,
//! so a failing test leaves nothing behind. Output of every child is echoed
//! to stderr with a `[label]` prefix (cargo shows it for failing tests;
//! [`process::set_echo`] turns it off) and kept for assertions.
//!
//! Nothing here knows relay: the crate does not depend on it, so relay
//! itself can use it for its demo.

pub mod faulty_http;
pub mod media;
pub mod netns;
pub mod nginx;
pub mod process;
pub mod publisher;
pub mod sink;
pub mod stall_proxy;
pub mod stat;

use std::time::Duration;

pub use faulty_http::{FaultyStatPage, StatMode};
pub use media::{make_offline_video, OfflineVideo};
pub use netns::Netns;
pub use nginx::{free_tcp_port, free_udp_port, NginxOptions, PrivateNginx};
pub use process::ChildGuard;
pub use publisher::{Publisher, PublisherOpts};
pub use sink::{Colour, Sink, SinkOpts};
pub use stall_proxy::StallProxy;
pub use stat::SessionCounter;

/// How often the `wait_*` helpers look at what was recorded.
const POLL: Duration = Duration::from_millis(50);
