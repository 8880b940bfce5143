//! relay: keeps one RTMP(S) connection to a streaming platform alive and
//! switches what it carries between a live feed and a looping offline video.
//!
//! `daemon` decides what is on air; `pump` is the clock feeding the output;
//! `output` and `ingest` build the two kinds of FFmpeg child, which `child`
//! spawns and stops; `control` switches the output over ZMQ; `stats` reads
//! nginx-rtmp's stat page; `config` and `preflight` check everything before
//! it starts; `notify` and `logging` talk to systemd and journald.

pub mod bench;
pub mod child;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod ffmpeg;
pub mod ingest;
pub mod logging;
pub mod nginx;
pub mod notify;
pub mod output;
pub mod preflight;
pub mod pump;
pub mod stats;
