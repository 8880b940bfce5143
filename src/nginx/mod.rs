//! nginx-rtmp, where publishers arrive: its stat page, read to see who
//! publishes, and relay's endpoint for its `on_publish` (who may).

pub mod publish_auth;
pub mod stat_page;
