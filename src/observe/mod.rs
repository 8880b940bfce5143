//! What operators and systemd see of a running relay: the control socket
//! (`relay status`, `relay switch`), the Prometheus metrics page and the
//! small HTTP server behind it and the on_publish endpoint, sd_notify, and
//! logging to journald.

pub mod api;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod notify;
