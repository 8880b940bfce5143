//! relay's integration tests, one binary: one module per concern, so a
//! test's name reads `switching::…`, `faults_output::…`. They drive the
//! real relay binary against real nginx-rtmp and FFmpeg (the rigs of the
//! `relay-rig` crate); `tests/package.rs`, which boots the .deb under
//! systemd, is a binary of its own.

#[path = "../common/mod.rs"]
mod common;
#[path = "../faults_rig/mod.rs"]
mod faults_rig;
#[path = "../relay_rig/mod.rs"]
mod relay_rig;

mod config_errors;
mod destinations;
mod faults_inputs;
mod faults_output;
mod feeds;
mod fuzz_regressions;
mod harness_selftest;
mod lifecycle;
mod metrics;
mod notify;
mod offline_cache;
mod operating;
mod policy;
mod publish_auth;
mod publishers;
mod reload;
mod secrets;
mod srt;
mod stats_client;
mod stats_parse;
mod switching;
