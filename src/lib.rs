//! relay: keeps one RTMP(S) connection to a streaming platform alive and
//! switches what it carries between a live feed and a looping offline video.

pub mod nginx;
