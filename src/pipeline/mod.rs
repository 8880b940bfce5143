//! The media pipeline: the ingest FFmpeg per publisher, the pump (the
//! clock), the raw pipes into the output FFmpeg, live frames held in pipes,
//! and the offline source with its private copy of the offline video
//! (ARCHITECTURE.md, "The data path").

pub mod fanout;
pub mod flv;
pub mod frames;
pub mod ingest;
pub mod ingest_link;
pub mod offline_cache;
pub mod offline_copy;
pub mod offline_frames;
pub mod offline_source;
pub mod offline_supervisor;
pub mod output;
pub mod output_pipes;
pub mod pipe_frames;
pub mod pipe_io;
pub mod pump;
pub mod pusher;
pub mod raw_format;
