//! `METRICS_ADDR`: Prometheus text format at `/metrics`, on loopback.
//!
//! The daemon's event loop publishes a [`Snapshot`] every second (and the
//! pump's counters are atomics), so a scrape never waits for the daemon,
//! and many or slow scrapers cannot slow it down (see `http.rs` for the
//! limits). Nothing secret is in here: no URL, no key, no publisher
//! address.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::watch;

use crate::observe::api::StateName;
use crate::observe::http::{self, Answer};
use crate::pipeline::pump;

/// Why what is on air changed, as the `reason` label of
/// `relay_switches_total`: (to, reason). Listed so every series exists
/// from the start, at 0.
pub const SWITCH_REASONS: [(&str, &str); 10] = [
    ("live", "publisher_live"),
    ("live", "backup"),
    ("live", "publisher_stable"),
    ("live", "bitrate_recovered"),
    ("live", "manual"),
    ("offline", "frames_stopped"),
    ("offline", "publisher_stopped"),
    ("offline", "low_bitrate"),
    ("offline", "publisher_refused"),
    ("offline", "manual"),
];

const STATES: [StateName; 5] = [
    StateName::Offline,
    StateName::GoingLive,
    StateName::Live,
    StateName::ManualLive,
    StateName::ManualOffline,
];

/// What the daemon knows, as of its last housekeeping tick.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub instance: String,
    pub state: StateName,
    /// ((to, reason), count), for the reasons in [`SWITCH_REASONS`].
    pub switches: Vec<((&'static str, &'static str), u64)>,
    pub output_restarts: u64,
    pub ingest_restarts: u64,
    pub publisher_connected: bool,
    pub live_bitrate_bps: Option<u64>,
    /// The live source on air (`rtmp`, `srt`), and every one configured.
    pub live_source: Option<&'static str>,
    pub live_sources: Vec<&'static str>,
    /// Seconds since the output started streaming; `None` while it is not.
    pub output_uptime_s: Option<f64>,
    /// From the output FFmpeg's last `-progress` report.
    pub output_fps: Option<f64>,
    pub output_speed: Option<f64>,
    /// Every destination, in DESTINATIONS' order.
    pub destinations: Vec<Destination>,
}

/// One destination's connection, for the `destination` label.
#[derive(Debug, Clone)]
pub struct Destination {
    pub name: String,
    pub up: bool,
    pub uptime_s: Option<f64>,
    pub reconnects: u64,
    pub sent_bytes: u64,
    pub dropped_gops: u64,
}

/// Binds `addr`; the future returned serves `/metrics` from `snapshot` and
/// `pump` until it is dropped.
pub async fn serve(
    addr: SocketAddr,
    snapshot: watch::Receiver<Snapshot>,
    pump: Arc<pump::Stats>,
) -> std::io::Result<impl std::future::Future<Output = ()>> {
    let listener = http::bind(addr).await?;
    let handler: http::Handler = Arc::new(move |path| match path {
        "/metrics" => Answer::ok(
            "text/plain; version=0.0.4; charset=utf-8",
            render(&snapshot.borrow(), &pump),
        ),
        _ => Answer::not_found(),
    });
    Ok(http::serve(listener, handler))
}

/// The Prometheus text exposition of `s` and the pump's counters.
pub fn render(s: &Snapshot, pump: &pump::Stats) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {}", number(*value));
        }
    };
    let one = |v: f64| vec![(String::new(), v)];
    let maybe = |v: Option<f64>| v.map(one).unwrap_or_default();

    family(
        "relay_info",
        "gauge",
        "Always 1; the labels name the instance and relay's version.",
        &[(
            format!(
                "{{instance=\"{}\",version=\"{}\"}}",
                escape(&s.instance),
                env!("CARGO_PKG_VERSION")
            ),
            1.0,
        )],
    );
    let states: Vec<(String, f64)> = STATES
        .iter()
        .map(|st| {
            let name = serde_json::to_value(st)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            (
                format!("{{state=\"{name}\"}}"),
                f64::from(u8::from(*st == s.state)),
            )
        })
        .collect();
    family(
        "relay_state",
        "gauge",
        "1 for what relay is doing now (offline, going_live, live, manual_live, manual_offline), else 0.",
        &states,
    );
    let switches: Vec<(String, f64)> = SWITCH_REASONS
        .iter()
        .map(|&(to, reason)| {
            let n = s
                .switches
                .iter()
                .find(|(key, _)| *key == (to, reason))
                .map_or(0, |(_, n)| *n);
            (format!("{{to=\"{to}\",reason=\"{reason}\"}}"), n as f64)
        })
        .collect();
    family(
        "relay_switches_total",
        "counter",
        "Changes of what is on air, by where to and why.",
        &switches,
    );
    family(
        "relay_output_restarts_total",
        "counter",
        "Restarts of the output FFmpeg, the encoder; the destinations' connections stay up through them.",
        &one(s.output_restarts as f64),
    );
    family(
        "relay_ingest_restarts_total",
        "counter",
        "Ingest FFmpeg processes that exited on their own and were restarted.",
        &one(s.ingest_restarts as f64),
    );
    let sources: Vec<(String, f64)> = s
        .live_sources
        .iter()
        .map(|&name| {
            (
                format!("{{source=\"{name}\"}}"),
                f64::from(u8::from(s.live_source == Some(name))),
            )
        })
        .collect();
    family(
        "relay_live_source",
        "gauge",
        "1 for the live source on air (rtmp, srt; LIVE_SOURCES), else 0.",
        &sources,
    );
    family(
        "relay_publisher_connected",
        "gauge",
        "1 while nginx shows a publisher on the live stream, else 0.",
        &one(f64::from(u8::from(s.publisher_connected))),
    );
    family(
        "relay_live_bitrate_bits_per_second",
        "gauge",
        "The publisher's bitrate into nginx; absent when nobody publishes.",
        &maybe(s.live_bitrate_bps.map(|b| b as f64)),
    );
    family(
        "relay_output_up",
        "gauge",
        "1 while the output FFmpeg is streaming, else 0.",
        &one(f64::from(u8::from(s.output_uptime_s.is_some()))),
    );
    family(
        "relay_output_uptime_seconds",
        "gauge",
        "Seconds since the output FFmpeg started streaming; absent while it is not.",
        &maybe(s.output_uptime_s),
    );
    family(
        "relay_output_fps",
        "gauge",
        "Frames per second the output FFmpeg encodes, from its progress report.",
        &maybe(s.output_fps),
    );
    family(
        "relay_output_speed",
        "gauge",
        "The output FFmpeg's speed relative to real time (1 is on time).",
        &maybe(s.output_speed),
    );
    let per = |value: &dyn Fn(&Destination) -> Option<f64>| -> Vec<(String, f64)> {
        s.destinations
            .iter()
            .filter_map(|d| {
                let labels = format!("{{destination=\"{}\"}}", escape(&d.name));
                value(d).map(|v| (labels, v))
            })
            .collect()
    };
    family(
        "relay_destination_up",
        "gauge",
        "1 while the destination's connection is up and sending, else 0.",
        &per(&|d| Some(f64::from(u8::from(d.up)))),
    );
    family(
        "relay_destination_uptime_seconds",
        "gauge",
        "Seconds the destination has been sending; absent while it is down.",
        &per(&|d| d.uptime_s),
    );
    family(
        "relay_destination_reconnects_total",
        "counter",
        "Times the destination's connection was made again.",
        &per(&|d| Some(d.reconnects as f64)),
    );
    family(
        "relay_destination_sent_bytes_total",
        "counter",
        "Bytes of FLV handed to the destination's connection.",
        &per(&|d| Some(d.sent_bytes as f64)),
    );
    family(
        "relay_destination_dropped_gops_total",
        "counter",
        "Whole GOPs dropped because the destination fell behind.",
        &per(&|d| Some(d.dropped_gops as f64)),
    );
    let counter = |c: &std::sync::atomic::AtomicU64| one(c.load(Ordering::Relaxed) as f64);
    family(
        "relay_live_frames_total",
        "counter",
        "Live frames written to the output.",
        &counter(&pump.live_frames),
    );
    family(
        "relay_filler_frames_total",
        "counter",
        "Filler frames (the last live frame, or the offline frame) written to the output.",
        &counter(&pump.filler_frames),
    );
    family(
        "relay_dropped_ticks_total",
        "counter",
        "Clock ticks dropped because the output did not keep up.",
        &counter(&pump.dropped_ticks),
    );
    family(
        "relay_starved_holds_total",
        "counter",
        "Late live frames that held the last picture because the publisher's data was still arriving at a starved ingest.",
        &counter(&pump.starved_holds),
    );
    out
}

/// A sample value: integers without a fraction, NaN and infinities as
/// Prometheus spells them.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// A label value: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_families_with_help_and_type() {
        let s = Snapshot {
            instance: "a\"b\\c".to_string(),
            state: StateName::Live,
            switches: vec![(("live", "publisher_live"), 2)],
            output_restarts: 1,
            ingest_restarts: 0,
            publisher_connected: true,
            live_source: Some("srt"),
            live_sources: vec!["srt", "rtmp"],
            live_bitrate_bps: Some(2_500_000),
            output_uptime_s: Some(12.5),
            output_fps: Some(30.0),
            output_speed: Some(1.01),
            destinations: vec![
                Destination {
                    name: "kick".to_string(),
                    up: true,
                    uptime_s: Some(10.0),
                    reconnects: 0,
                    sent_bytes: 1000,
                    dropped_gops: 0,
                },
                Destination {
                    name: "youtube".to_string(),
                    up: false,
                    uptime_s: None,
                    reconnects: 3,
                    sent_bytes: 0,
                    dropped_gops: 1,
                },
            ],
        };
        let text = render(&s, &pump::Stats::default());
        assert!(
            text.contains("relay_info{instance=\"a\\\"b\\\\c\",version="),
            "{text}"
        );
        assert!(text.contains("relay_state{state=\"live\"} 1\n"), "{text}");
        assert!(
            text.contains("relay_state{state=\"going_live\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("relay_switches_total{to=\"live\",reason=\"publisher_live\"} 2\n"));
        assert!(text.contains("relay_switches_total{to=\"offline\",reason=\"low_bitrate\"} 0\n"));
        assert!(text.contains("relay_live_bitrate_bits_per_second 2500000\n"));
        assert!(text.contains("relay_output_speed 1.01\n"));
        assert!(text.contains("# TYPE relay_filler_frames_total counter\n"));
        assert!(text.contains("relay_destination_up{destination=\"kick\"} 1\n"));
        assert!(text.contains("relay_destination_up{destination=\"youtube\"} 0\n"));
        assert!(text.contains("relay_destination_reconnects_total{destination=\"youtube\"} 3\n"));
        assert!(text.contains("relay_destination_uptime_seconds{destination=\"kick\"} 10\n"));
        assert!(!text.contains("relay_destination_uptime_seconds{destination=\"youtube\"}"));
        assert_eq!(number(f64::NAN), "NaN");
    }
}
