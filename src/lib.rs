//! relay: keeps one RTMP(S) connection to a streaming platform alive and
//! switches what it carries between a live feed and a looping offline video.
//!
//! The layers, from what the user runs down to what everything uses (see
//! ARCHITECTURE.md, "Layers and folders"):
//!
//! - `cli`: the commands (`relay run`, `status`, `switch`, `zmq`, `check`,
//!   `demo`); `main.rs` only calls [`cli::main`].
//! - `daemon`: one instance over its lifetime (start-up, reload) and the
//!   I/O shell that runs the pipeline around the policy.
//! - `policy`: what is on air and why, decided in one pure place: events
//!   in, actions out.
//! - `pipeline`: the media path: ingest, pump (the clock), raw pipes, live
//!   frames in pipes, the output FFmpeg, the offline source.
//! - `ffmpeg`: FFmpeg children (spawn, stop, supervise with a crash
//!   backoff), the ZMQ switch, preflight checks, filter templates.
//! - `nginx`: nginx-rtmp's stat page and relay's `on_publish` endpoint.
//! - `observe`: the control socket (`api`), metrics over HTTP, sd_notify,
//!   logging.
//! - `config`: every configuration key, from one table.

pub mod cli;
pub mod config;
pub(crate) mod daemon;
pub(crate) mod ffmpeg;
pub mod nginx;
pub(crate) mod observe;
pub(crate) mod pipeline;
pub(crate) mod policy;

pub use observe::api;
/// The FLV walker the fan-out reads the encoder with: public for its fuzz
/// target.
pub use pipeline::flv;
/// The output FFmpeg's encoder arguments: the benchmark's naive design
/// encodes with exactly these, so the two are compared like for like.
pub use pipeline::output::encoder_args;
