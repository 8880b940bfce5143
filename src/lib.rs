//! relay: keeps one RTMP(S) connection to a streaming platform alive and
//! switches what it carries between a live feed and a looping offline video.
//!
//! `daemon` decides what is on air; `pump` is the clock feeding the output;
//! `output` and `ingest` build the two kinds of FFmpeg child, which `child`
//! spawns and stops; `control` switches the output over ZMQ; `stats` reads
//! nginx-rtmp's stat page; `config` and `preflight` check everything before
//! it starts; `publish_auth` answers nginx's `on_publish` (who may
//! publish); `notify` and `logging` talk to systemd and journald.
//! Operators reach a running daemon through `api` (its control socket)
//! with the commands in `ops`; `check` validates an instance without
//! starting it. `metrics` serves Prometheus text over `http`.

pub mod api;
pub mod check;
pub mod child;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod ffmpeg;
pub mod frames;
pub mod http;
pub mod ingest;
pub mod instance;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod offline;
pub mod offline_source;
pub mod ops;
pub mod outpipes;
pub mod output;
pub mod pipeframes;
pub mod preflight;
pub mod publish_auth;
pub mod pump;
pub mod stats;
