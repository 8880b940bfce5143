//! The table of configuration keys. Each key is declared here once: its
//! name, its default, how its text sets the configuration, whether a reload
//! applies it without a restart, whether it is secret, and a line of
//! documentation for users. Everything else (the key list, the defaults, the
//! unknown-key check, `Debug` masking, the reload classification) reads it.

use std::time::Duration;

use super::parse::*;
use super::secret::mask_url;
use super::Config;

/// What a key is when no source sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// The configuration is refused without it.
    Required,
    /// This text, parsed like a value from a file (`""`: empty).
    Text(&'static str),
    /// The feature it configures is off.
    Off,
    /// Computed from other keys; the text says how, for users.
    Derived(&'static str),
}

/// What a reload that changes the key does to the running relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applies {
    /// The running daemon applies it at once; no FFmpeg restarts.
    AtOnce,
    /// At once when one value replaces another; setting or clearing it
    /// restarts the pipeline, so that start-up says again what it does.
    AtOnceWhileSet,
    /// Only the offline source restarts; the output keeps its connection.
    OfflineSource,
    /// Only the destinations it changes, adds or removes connect or
    /// disconnect; the encoder and every other destination run on.
    Destination,
    /// The pipeline restarts in the same process: the output reconnects once.
    Restart,
}

/// Whether a key's value must stay out of logs and `Debug` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrecy {
    Public,
    /// The whole value is secret.
    Secret,
    /// A URL that may carry a password or, after the application name, the
    /// stream key.
    InUrl,
}

/// One configuration key.
pub struct Key {
    /// The upper-case name used in `.env` files and the environment; TOML
    /// files use it in lower case.
    pub name: &'static str,
    pub default: Fallback,
    pub applies: Applies,
    pub secrecy: Secrecy,
    /// One line for users (the README table and the manual page).
    pub doc: &'static str,
    /// Parses the (trimmed, non-empty) text and stores it in the draft.
    pub(super) parse: fn(&mut Draft, &str) -> Result<(), String>,
    /// The key's value in a configuration as canonical text ("" when off),
    /// secrets included: what reloads compare and `Debug` shows masked.
    pub(super) value: fn(&Config) -> String,
}

impl Key {
    /// The key as TOML files spell it.
    pub fn toml_name(&self) -> String {
        self.name.to_ascii_lowercase()
    }

    /// The value as logs and `Debug` may show it.
    pub(super) fn shown(&self, config: &Config) -> String {
        let value = (self.value)(config);
        match self.secrecy {
            Secrecy::Public => value,
            Secrecy::Secret if value.is_empty() => "<empty>".to_owned(),
            Secrecy::Secret => "****".to_owned(),
            Secrecy::InUrl => mask_url(&value, true),
        }
    }

    /// Whether `value`, as written in a source, holds something secret.
    pub(super) fn is_secret_value(&self, value: &str) -> bool {
        match self.secrecy {
            Secrecy::Public => false,
            Secrecy::Secret => !value.is_empty(),
            Secrecy::InUrl => {
                let url = value.trim_end_matches('/');
                mask_url(url, true) != url
            }
        }
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// A configuration being assembled: keys that only make sense together, or
/// whose default depends on another key, wait here for the cross-key rules.
pub(super) struct Draft {
    pub config: Config,
    pub stats_url: Option<String>,
    pub low_bitrate_bps: Option<u64>,
    pub low_bitrate_window: Option<Duration>,
}

/// Stores a parsed value.
fn put<T>(slot: &mut T, parsed: Result<T, String>) -> Result<(), String> {
    *slot = parsed?;
    Ok(())
}

fn seconds(d: Duration) -> String {
    d.as_secs_f64().to_string()
}

/// Every key, in the order validation reads them (and so the order in which
/// problems are found).
pub static KEYS: [Key; 34] = [
    Key {
        name: "DESTINATIONS",
        default: Fallback::Text("kick"),
        applies: Applies::Destination,
        secrecy: Secrecy::Public,
        doc: "Where the one encode goes: a comma list of names (lower-case letters, digits, _), each with NAME_URL and NAME_KEY (kick: KICK_URL, KICK_KEY).",
        parse: |d, v| put(&mut d.config.destination_names, parse_destination_names(v)),
        value: |c| c.destination_names.join(","),
    },
    Key {
        name: "KICK_URL",
        default: Fallback::Required,
        applies: Applies::Destination,
        secrecy: Secrecy::InUrl,
        doc: "Where the destination kick goes (any platform, despite the name): an rtmp:// or rtmps:// URL; required while DESTINATIONS names kick.",
        parse: |d, v| put(&mut d.config.destination.url, parse_kick_url(v)),
        value: |c| c.destination.url.clone(),
    },
    Key {
        name: "KICK_KEY",
        default: Fallback::Text(""),
        applies: Applies::Destination,
        secrecy: Secrecy::Secret,
        doc: "Stream key, published to as KICK_URL/KICK_KEY; empty if the key is already the last segment of KICK_URL.",
        parse: |d, v| put(&mut d.config.destination.key, parse_kick_key(v)),
        value: |c| c.destination.key.expose().to_owned(),
    },
    Key {
        name: "RTMP_HOST",
        default: Fallback::Text("127.0.0.1"),
        applies: Applies::Restart,
        secrecy: Secrecy::Public,
        doc: "Host of the local nginx-rtmp the live feed is pulled from.",
        parse: |d, v| put(&mut d.config.live.rtmp_host, parse_host(v)),
        value: |c| c.live.rtmp_host.clone(),
    },
    Key {
        name: "RTMP_PORT",
        default: Fallback::Text("1936"),
        applies: Applies::Restart,
        secrecy: Secrecy::Public,
        doc: "RTMP port of the local nginx-rtmp the live feed is pulled from.",
        parse: |d, v| put(&mut d.config.live.rtmp_port, parse_port(v)),
        value: |c| c.live.rtmp_port.to_string(),
    },
    Key {
        name: "RTMP_APP",
        default: Fallback::Text("live"),
        applies: Applies::Restart,
        secrecy: Secrecy::Public,
        doc: "nginx-rtmp application the streamer publishes to.",
        parse: |d, v| put(&mut d.config.live.rtmp_app, parse_name(v)),
        value: |c| c.live.rtmp_app.clone(),
    },
    Key {
        name: "RTMP_STREAM_NAME",
        default: Fallback::Text("mystream"),
        applies: Applies::Restart,
        secrecy: Secrecy::Public,
        doc: "Stream name the streamer publishes to (the \"stream key\" entered in OBS).",
        parse: |d, v| put(&mut d.config.live.rtmp_stream_name, parse_name(v)),
        value: |c| c.live.rtmp_stream_name.clone(),
    },
    Key {
        name: "OFFLINE_VIDEO_PATH",
        default: Fallback::Required,
        applies: Applies::OfflineSource,
        secrecy: Secrecy::Public,
        doc: "Video looped while nobody is live; any size, scaled and padded to the output.",
        parse: |d, v| {
            d.config.offline_video_path = v.into();
            Ok(())
        },
        value: |c| c.offline_video_path.to_string_lossy().into_owned(),
    },
    Key {
        name: "OUT_RES",
        default: Fallback::Text("1080"),
        applies: Applies::Restart,
        secrecy: Secrecy::Public,
        doc: "Output height in pixels, even, 144 to 2160; the width is 16:9.",
        parse: |d, v| {
            let height = parse_height(v)?;
            d.config.encoding.height = height;
            d.config.encoding.width = width_16_9(height);
            Ok(())
        },
        value: |c| c.encoding.height.to_string(),
    },
    Key {
        name: "OUT_FPS",
        default: Fallback::Text("30"),
        applies: Applies::Restart,
        secrecy: Secrecy::Public,
        doc: "Output frame rate, 1 to 120.",
        parse: |d, v| put(&mut d.config.encoding.fps, parse_fps(v)),
        value: |c| c.encoding.fps.to_string(),
    },
    Key {
        name: "VID_BITRATE",
        default: Fallback::Text("3000k"),
        applies: Applies::Restart,
        secrecy: Secrecy::Public,
        doc: "x264 target bitrate: digits with an optional k or M suffix.",
        parse: |d, v| put(&mut d.config.encoding.vid_bitrate, parse_bitrate(v)),
        value: |c| c.encoding.vid_bitrate.text.clone(),
    },
    Key {
        name: "MAX_BITRATE",
        default: Fallback::Text("3500k"),
        applies: Applies::Restart,
        secrecy: Secrecy::Public,
        doc: "x264 maximum bitrate (-maxrate), same format.",
        parse: |d, v| put(&mut d.config.encoding.max_bitrate, parse_bitrate(v)),
        value: |c| c.encoding.max_bitrate.text.clone(),
    },
    Key {
        name: "BUFFER_SIZE",
        default: Fallback::Text("12000k"),
        applies: Applies::Restart,
        secrecy: Secrecy::Public,
        doc: "Rate-control buffer (-bufsize), same format.",
        parse: |d, v| put(&mut d.config.encoding.buffer_size, parse_bitrate(v)),
        value: |c| c.encoding.buffer_size.text.clone(),
    },
    Key {
        name: "AUDIO_BITRATE",
        default: Fallback::Text("128k"),
        applies: Applies::Restart,
        secrecy: Secrecy::Public,
        doc: "AAC bitrate, same format.",
        parse: |d, v| put(&mut d.config.encoding.audio_bitrate, parse_bitrate(v)),
        value: |c| c.encoding.audio_bitrate.text.clone(),
    },
    Key {
        name: "AUDIO_SAMPLERATE",
        default: Fallback::Text("48000"),
        applies: Applies::Restart,
        secrecy: Secrecy::Public,
        doc: "Output sample rate: 32000, 44100 or 48000.",
        parse: |d, v| put(&mut d.config.encoding.audio_samplerate, parse_samplerate(v)),
        value: |c| c.encoding.audio_samplerate.to_string(),
    },
    Key {
        name: "POLL_INTERVAL",
        default: Fallback::Text("1"),
        applies: Applies::AtOnce,
        secrecy: Secrecy::Public,
        doc: "Seconds between reads of the nginx stat page, above 0 and at most 60.",
        parse: |d, v| put(&mut d.config.live.poll_interval, parse_seconds(v, 60)),
        value: |c| seconds(c.live.poll_interval),
    },
    Key {
        name: "KILL_GRACE",
        default: Fallback::Text("3"),
        applies: Applies::AtOnce,
        secrecy: Secrecy::Public,
        doc: "Seconds between SIGTERM and SIGKILL when stopping an FFmpeg child, above 0 and at most 60.",
        parse: |d, v| put(&mut d.config.supervision.kill_grace, parse_seconds(v, 60)),
        value: |c| seconds(c.supervision.kill_grace),
    },
    Key {
        name: "CRASH_BACKOFF",
        default: Fallback::Text("2"),
        applies: Applies::AtOnce,
        secrecy: Secrecy::Public,
        doc: "Seconds before an FFmpeg child that exited unexpectedly is restarted, above 0 and at most 300.",
        parse: |d, v| put(&mut d.config.supervision.crash_backoff, parse_seconds(v, 300)),
        value: |c| seconds(c.supervision.crash_backoff),
    },
    Key {
        name: "HTTP_STATS_PORT",
        default: Fallback::Text("8080"),
        applies: Applies::Restart,
        secrecy: Secrecy::Public,
        doc: "Port of nginx's HTTP server with the stat page on 127.0.0.1; it only sets the default STATS_URL.",
        parse: |d, v| put(&mut d.config.live.http_stats_port, parse_port(v)),
        value: |c| c.live.http_stats_port.to_string(),
    },
    Key {
        name: "STATS_URL",
        default: Fallback::Derived("http://127.0.0.1:HTTP_STATS_PORT/rtmp_stat"),
        applies: Applies::Restart,
        secrecy: Secrecy::Public,
        doc: "Full http:// URL of the nginx-rtmp stat page.",
        parse: |d, v| {
            d.stats_url = Some(parse_stats_url(v)?);
            Ok(())
        },
        value: |c| c.live.stats_url.clone(),
    },
    Key {
        name: "ZMQ_PORT",
        default: Fallback::Text("5559"),
        applies: Applies::Restart,
        secrecy: Secrecy::Public,
        doc: "Port on 127.0.0.1 where relay controls the output FFmpeg; one per instance on a host.",
        parse: |d, v| put(&mut d.config.endpoints.zmq_port, parse_port(v)),
        value: |c| c.endpoints.zmq_port.to_string(),
    },
    Key {
        name: "ALLOWED_PUBLISHERS",
        default: Fallback::Text("external"),
        applies: Applies::AtOnce,
        secrecy: Secrecy::Public,
        doc: "Who may go on air: external (not loopback, not RFC 1918), any, or a list of addresses and CIDRs.",
        parse: |d, v| {
            put(
                &mut d.config.live.allowed_publishers,
                parse_allowed_publishers(v),
            )
        },
        value: |c| c.live.allowed_publishers.to_string(),
    },
    Key {
        name: "PUBLISH_KEY",
        default: Fallback::Text(""),
        applies: Applies::AtOnceWhileSet,
        secrecy: Secrecy::Secret,
        doc: "Secret a publisher must send as RTMP_STREAM_NAME?key=PUBLISH_KEY; empty: anyone may publish.",
        parse: |d, v| put(&mut d.config.live.publish_key, parse_publish_key(v)),
        value: |c| c.live.publish_key.expose().to_owned(),
    },
    Key {
        name: "PUBLISH_AUTH_PORT",
        default: Fallback::Text("8081"),
        applies: Applies::Restart,
        secrecy: Secrecy::Public,
        doc: "Port on 127.0.0.1 where relay answers nginx's on_publish; 0: it does not answer.",
        parse: |d, v| {
            put(
                &mut d.config.endpoints.publish_auth_port,
                parse_port_or_zero(v),
            )
        },
        value: |c| c.endpoints.publish_auth_port.to_string(),
    },
    Key {
        name: "LIVE_SOURCES",
        default: Fallback::Text("rtmp"),
        applies: Applies::Restart,
        secrecy: Secrecy::Public,
        doc: "Live sources in priority order, comma-separated: rtmp (nginx-rtmp's stream), srt (relay's SRT listener); the first whose frames flow is on air, the next is its backup.",
        parse: |d, v| put(&mut d.config.live.sources, parse_live_sources(v)),
        value: |c| {
            let names: Vec<&str> = c.live.sources.iter().map(|s| s.name()).collect();
            names.join(",")
        },
    },
    Key {
        name: "SRT_HOST",
        default: Fallback::Text(""),
        applies: Applies::Restart,
        secrecy: Secrecy::Public,
        doc: "IP address the SRT listener binds (UDP); empty: every address.",
        parse: |d, v| put(&mut d.config.srt.host, parse_listen_addr(v)),
        value: |c| c.srt.host.clone(),
    },
    Key {
        name: "SRT_PORT",
        default: Fallback::Text("9000"),
        applies: Applies::Restart,
        secrecy: Secrecy::Public,
        doc: "UDP port of the SRT listener (with srt in LIVE_SOURCES); open it in the firewall.",
        parse: |d, v| put(&mut d.config.srt.port, parse_port(v)),
        value: |c| c.srt.port.to_string(),
    },
    Key {
        name: "SRT_PASSPHRASE",
        default: Fallback::Text(""),
        applies: Applies::Restart,
        secrecy: Secrecy::Secret,
        doc: "SRT encryption passphrase, 10 to 79 characters; a caller without it never goes on air. Empty: no encryption, anyone who finds the port may go live (relay warns).",
        parse: |d, v| put(&mut d.config.srt.passphrase, parse_srt_passphrase(v)),
        value: |c| c.srt.passphrase.expose().to_owned(),
    },
    Key {
        name: "SRT_LATENCY_MS",
        default: Fallback::Text("1500"),
        applies: Applies::Restart,
        secrecy: Secrecy::Public,
        doc: "SRT receiver latency in milliseconds, 20 to 8000: how long lost packets may take to be resent; cellular links want 1000 to 2000, a LAN 120.",
        parse: |d, v| put(&mut d.config.srt.latency, parse_srt_latency(v)),
        value: |c| c.srt.latency.as_millis().to_string(),
    },
    Key {
        name: "OFFLINE_AFTER_MS",
        default: Fallback::Text("300"),
        applies: Applies::AtOnce,
        secrecy: Secrecy::Public,
        doc: "Milliseconds without a live frame before the offline video goes on air, 100 to 10000; counted from when the next frame was due, so a feed slower than the output (a few frames a second) is judged on its own rhythm.",
        parse: |d, v| put(&mut d.config.policy.offline_after, parse_offline_after(v)),
        value: |c| c.policy.offline_after.as_millis().to_string(),
    },
    Key {
        name: "LIVE_STABLE_SECS",
        default: Fallback::Text("3"),
        applies: Applies::AtOnce,
        secrecy: Secrecy::Public,
        doc: "Seconds a publisher returning soon after a failover must flow before going back on air, 0 to 60.",
        parse: |d, v| {
            put(
                &mut d.config.policy.live_stable,
                parse_seconds_or_zero(v, 60),
            )
        },
        value: |c| seconds(c.policy.live_stable),
    },
    Key {
        name: "LOW_BITRATE_KBPS",
        default: Fallback::Off,
        applies: Applies::AtOnce,
        secrecy: Secrecy::Public,
        doc: "With LOW_BITRATE_SECS: a live feed below this many kbit/s for that long is taken off air.",
        parse: |d, v| {
            d.low_bitrate_bps = Some(parse_kbps(v)?);
            Ok(())
        },
        value: |c| {
            let low = c.policy.low_bitrate;
            low.map(|l| (l.bps / 1000).to_string()).unwrap_or_default()
        },
    },
    Key {
        name: "LOW_BITRATE_SECS",
        default: Fallback::Off,
        applies: Applies::AtOnce,
        secrecy: Secrecy::Public,
        doc: "The window for LOW_BITRATE_KBPS in seconds, above 0 and at most 600.",
        parse: |d, v| {
            d.low_bitrate_window = Some(parse_seconds(v, 600)?);
            Ok(())
        },
        value: |c| {
            let low = c.policy.low_bitrate;
            low.map(|l| seconds(l.window)).unwrap_or_default()
        },
    },
    Key {
        name: "METRICS_ADDR",
        default: Fallback::Off,
        applies: Applies::Restart,
        secrecy: Secrecy::Public,
        doc: "Loopback address and port to serve Prometheus metrics on, e.g. 127.0.0.1:9108.",
        parse: |d, v| {
            d.config.endpoints.metrics_addr = Some(parse_metrics_addr(v)?);
            Ok(())
        },
        value: |c| {
            let addr = c.endpoints.metrics_addr;
            addr.map(|a| a.to_string()).unwrap_or_default()
        },
    },
];

/// Keys of the Docker setup relay replaces that have no meaning here: a
/// file with them still loads, with one notice each saying why, so that an
/// existing `.env` works as written. Every other unknown key is an error.
pub const IGNORED: [(&str, &str); 2] = [
    (
        "LOG_DIR",
        "relay logs to the journal, not to files: read it with `journalctl -u relay@NAME` \
         (`-f` follows it); LOG_DIR is ignored and can be removed",
    ),
    (
        "COMPOSE_PROJECT_NAME",
        "a docker-compose setting; relay ignores it and it can be removed",
    ),
];

/// The destination whose keys are in the table (KICK_URL, KICK_KEY).
pub const KICK: &str = "kick";

/// The URL and key names of destination `name` (`YOUTUBE_URL`, `YOUTUBE_KEY`).
pub fn destination_keys(name: &str) -> [String; 2] {
    let upper = name.to_ascii_uppercase();
    [format!("{upper}_URL"), format!("{upper}_KEY")]
}

/// Whether `upper` has the shape of another destination's key (`NAME_URL`,
/// `NAME_KEY`) and is not in the table: whether it is wanted is decided
/// against DESTINATIONS once every source is read.
pub fn is_destination_key(upper: &str) -> bool {
    let name = upper
        .strip_suffix("_URL")
        .or_else(|| upper.strip_suffix("_KEY"));
    key(upper).is_none()
        && name.is_some_and(|n| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
}

/// Whether a destination URL holds a key or a password.
pub(super) fn url_holds_secret(value: &str) -> bool {
    let url = value.trim_end_matches('/');
    mask_url(url, true) != url
}

/// Why relay ignores `upper`, if it is one of [`IGNORED`].
pub fn ignored(upper: &str) -> Option<&'static str> {
    IGNORED
        .iter()
        .find(|(name, _)| *name == upper)
        .map(|(_, why)| *why)
}

/// The key named `upper` exactly (the `.env` and environment spelling).
pub fn key(upper: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == upper)
}

/// The key whose TOML spelling is `lower`.
pub(super) fn toml_key(lower: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.toml_name() == lower)
}
