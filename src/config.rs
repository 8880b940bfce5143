//! The relay's configuration: where it is read from, how the sources are
//! layered, and the validation that turns loose text into typed settings.
//!
//! Sources, lowest precedence first:
//!
//! 1. built-in defaults;
//! 2. `DIR/NAME.toml`, then `DIR/NAME.env` (for `Source::Instance`; `DIR` is
//!    `$RELAY_CONFIG_DIR` or `/etc/relay`). At least one must exist; when both
//!    do, values in the `.env` file override those in the `.toml` file. With
//!    `Source::File` there is exactly one file, `.toml` or `.env`;
//! 3. process environment variables named exactly like a known key
//!    (`OUT_RES=720`). Every other variable is ignored: the environment of a
//!    daemon is full of unrelated names.
//!
//! In `.env` files and the environment keys are upper case (`KICK_URL`); in
//! TOML files they are the same names in lower case (`kick_url`). An empty
//! value anywhere counts as "not set", so `KICK_KEY=` in the environment does
//! not erase a key from a file and `OUT_RES=` falls back to the default.
//!
//! Any problem is a [`ConfigError`] whose message is one line naming the key
//! or file, so the daemon can print it and exit with [`EX_CONFIG`]. The
//! stream key never appears in a message or in `Debug` output.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

/// Exit status for configuration errors (`EX_CONFIG` from sysexits.h), so
/// systemd and scripts can tell "fix the config" apart from a crash.
pub const EX_CONFIG: i32 = 78;

/// Where `RELAY_CONFIG_DIR` points when it is not set.
const DEFAULT_CONFIG_DIR: &str = "/etc/relay";

/// Every key the relay understands, in the upper-case form used by `.env`
/// files and the environment. Must match the fields of [`RawSettings`]; a test
/// checks that.
const KEYS: [&str; 28] = [
    "KICK_URL",
    "KICK_KEY",
    "RTMP_HOST",
    "RTMP_PORT",
    "RTMP_APP",
    "RTMP_STREAM_NAME",
    "OFFLINE_VIDEO_PATH",
    "OUT_RES",
    "OUT_FPS",
    "VID_BITRATE",
    "MAX_BITRATE",
    "BUFFER_SIZE",
    "AUDIO_BITRATE",
    "AUDIO_SAMPLERATE",
    "POLL_INTERVAL",
    "KILL_GRACE",
    "CRASH_BACKOFF",
    "HTTP_STATS_PORT",
    "STATS_URL",
    "ZMQ_PORT",
    "ALLOWED_PUBLISHERS",
    "PUBLISH_KEY",
    "PUBLISH_AUTH_PORT",
    "OFFLINE_AFTER_MS",
    "LIVE_STABLE_SECS",
    "LOW_BITRATE_KBPS",
    "LOW_BITRATE_SECS",
    "METRICS_ADDR",
];

/// Defaults, in the lower-case form the layered configuration uses.
/// `STATS_URL` is missing on purpose: its default depends on `HTTP_STATS_PORT`.
const DEFAULTS: [(&str, &str); 22] = [
    ("kick_key", ""),
    ("rtmp_host", "127.0.0.1"),
    ("rtmp_port", "1936"),
    ("rtmp_app", "live"),
    ("rtmp_stream_name", "mystream"),
    ("out_res", "1080"),
    ("out_fps", "30"),
    ("vid_bitrate", "3000k"),
    ("max_bitrate", "3500k"),
    ("buffer_size", "12000k"),
    ("audio_bitrate", "128k"),
    ("audio_samplerate", "48000"),
    ("poll_interval", "1"),
    ("kill_grace", "3"),
    ("crash_backoff", "2"),
    ("http_stats_port", "8080"),
    ("zmq_port", "5559"),
    ("allowed_publishers", "external"),
    ("publish_key", ""),
    ("publish_auth_port", "8081"),
    ("offline_after_ms", "300"),
    ("live_stable_secs", "3"),
];

/// Where to read the configuration from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `NAME.toml` and/or `NAME.env` in `$RELAY_CONFIG_DIR` (default `/etc/relay`).
    Instance(String),
    /// One file; its extension (`.toml` or `.env`) selects the format.
    File(PathBuf),
}

/// The destination as FFmpeg gets it: `url` goes on its command line,
/// `stream_name` (the stream key) reaches it through a preset file
/// (`-fpre`) read from a pipe.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputTarget {
    pub url: String,
    pub stream_name: Option<Secret>,
}

impl OutputTarget {
    /// Whether `url` still holds something secret: a user name and password
    /// (`rtmp://user:pass@host/...`) or a query after the application name,
    /// which FFmpeg can only take on its command line.
    pub fn url_has_secret(&self) -> bool {
        let (scheme_authority, path) = split_path(&self.url);
        scheme_authority.contains('@') || path.contains('?')
    }
}

/// A value that must not end up in logs: `Debug` and `Display` print `****`
/// (or `<empty>`, which is worth knowing and reveals nothing).
#[derive(Clone, Default, PartialEq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The real value; only for the places that must hand it on (FFmpeg's argv).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "<empty>" } else { "****" })
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Which addresses may publish the live feed to the local nginx-rtmp.
#[derive(Debug, Clone, PartialEq)]
pub enum AllowedPublishers {
    /// Anything that is neither loopback nor RFC 1918 private space.
    External,
    Any,
    Cidrs(Vec<IpNet>),
}

impl AllowedPublishers {
    pub fn allows(&self, addr: IpAddr) -> bool {
        match self {
            AllowedPublishers::Any => true,
            AllowedPublishers::External => is_external(addr),
            AllowedPublishers::Cidrs(nets) => {
                // A v4 client reaching a dual-stack socket shows up as
                // ::ffff:a.b.c.d; it must match the rule written for a.b.c.d
                // (and the other way round).
                let alternate = match addr {
                    IpAddr::V4(v4) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
                    IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
                };
                nets.iter().any(|net| {
                    net.contains(&addr) || alternate.is_some_and(|alt| net.contains(&alt))
                })
            }
        }
    }
}

impl fmt::Display for AllowedPublishers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowedPublishers::External => f.write_str("external"),
            AllowedPublishers::Any => f.write_str("any"),
            AllowedPublishers::Cidrs(nets) => {
                let list: Vec<String> = nets.iter().map(ToString::to_string).collect();
                f.write_str(&list.join(", "))
            }
        }
    }
}

/// "External" is deliberately literal: not loopback and not RFC 1918. Other
/// special ranges (documentation, CGNAT, link-local...) count as external,
/// because a publisher may legitimately come from them.
fn is_external(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => is_external_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_external_v4(v4),
            None => v6 != Ipv6Addr::LOCALHOST,
        },
    }
}

fn is_external_v4(addr: Ipv4Addr) -> bool {
    let [a, b, _, _] = addr.octets();
    let loopback = a == 127;
    let rfc1918 = a == 10 || (a == 172 && (16..=31).contains(&b)) || (a == 192 && b == 168);
    !(loopback || rfc1918)
}

/// A bitrate as FFmpeg wants it written (`text`) and as a number (`bps`).
#[derive(Debug, Clone, PartialEq)]
pub struct Bitrate {
    pub text: String,
    pub bps: u64,
}

impl fmt::Display for Bitrate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The validated configuration.
#[derive(Clone, PartialEq)]
pub struct Config {
    /// NAME for `Source::Instance`, the file stem for `Source::File`.
    pub instance: String,
    /// Without a trailing slash.
    pub kick_url: String,
    pub kick_key: Secret,
    pub rtmp_host: String,
    pub rtmp_port: u16,
    pub rtmp_app: String,
    pub rtmp_stream_name: String,
    pub offline_video_path: PathBuf,
    pub out_width: u32,
    pub out_height: u32,
    pub out_fps: u32,
    pub vid_bitrate: Bitrate,
    pub max_bitrate: Bitrate,
    pub buffer_size: Bitrate,
    pub audio_bitrate: Bitrate,
    pub audio_samplerate: u32,
    pub poll_interval: Duration,
    pub kill_grace: Duration,
    pub crash_backoff: Duration,
    pub http_stats_port: u16,
    pub stats_url: String,
    pub zmq_port: u16,
    pub allowed_publishers: AllowedPublishers,
    /// What a publisher must send as `?key=` (see `publish_auth.rs`); empty:
    /// anyone who knows the stream name may publish.
    pub publish_key: Secret,
    /// Port on 127.0.0.1 of the endpoint for nginx's `on_publish`; 0: none.
    pub publish_auth_port: u16,
    /// No live frame for this long: the offline video goes on air.
    pub offline_after: Duration,
    /// A publisher returning soon after a failover must flow this long
    /// before it goes back on air; zero: at once.
    pub live_stable: Duration,
    /// Below this bitrate for this long: offline (LOW_BITRATE_KBPS/SECS).
    pub low_bitrate: Option<LowBitrate>,
    /// Where to serve Prometheus metrics; `None`: nowhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// LOW_BITRATE_KBPS and LOW_BITRATE_SECS together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LowBitrate {
    pub bps: u64,
    pub window: Duration,
}

// Written by hand rather than derived: with an empty KICK_KEY the stream key
// may be the tail of KICK_URL, so the URL is shown masked too.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("instance", &self.instance)
            .field(
                "kick_url",
                &mask_url(&self.kick_url, self.kick_key.is_empty()),
            )
            .field("kick_key", &self.kick_key)
            .field("rtmp_host", &self.rtmp_host)
            .field("rtmp_port", &self.rtmp_port)
            .field("rtmp_app", &self.rtmp_app)
            .field("rtmp_stream_name", &self.rtmp_stream_name)
            .field("offline_video_path", &self.offline_video_path)
            .field("out_width", &self.out_width)
            .field("out_height", &self.out_height)
            .field("out_fps", &self.out_fps)
            .field("vid_bitrate", &self.vid_bitrate)
            .field("max_bitrate", &self.max_bitrate)
            .field("buffer_size", &self.buffer_size)
            .field("audio_bitrate", &self.audio_bitrate)
            .field("audio_samplerate", &self.audio_samplerate)
            .field("poll_interval", &self.poll_interval)
            .field("kill_grace", &self.kill_grace)
            .field("crash_backoff", &self.crash_backoff)
            .field("http_stats_port", &self.http_stats_port)
            .field("stats_url", &self.stats_url)
            .field("zmq_port", &self.zmq_port)
            .field("allowed_publishers", &self.allowed_publishers)
            .field("publish_key", &self.publish_key)
            .field("publish_auth_port", &self.publish_auth_port)
            .field("offline_after", &self.offline_after)
            .field("live_stable", &self.live_stable)
            .field("low_bitrate", &self.low_bitrate)
            .field("metrics_addr", &self.metrics_addr)
            .finish()
    }
}

/// What went wrong while loading the configuration. Each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "invalid instance name {0:?}: use a plain name such as \"kick\" (no '/', not starting with '.')"
    )]
    InstanceName(String),

    #[error(
        "no configuration for instance {instance:?}: neither {} nor {} exists",
        toml.display(),
        env.display()
    )]
    NoConfiguration {
        instance: String,
        toml: PathBuf,
        env: PathBuf,
    },

    #[error(
        "{}: unsupported configuration file type; name it NAME.toml or NAME.env",
        path.display()
    )]
    UnsupportedFormat { path: PathBuf },

    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },

    #[error("{}{}: {message}", path.display(), line.map(|n| format!(", line {n}")).unwrap_or_default())]
    Syntax {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },

    #[error(
        "unknown key {key:?} in {origin}{}{}",
        line.map(|n| format!(", line {n}")).unwrap_or_default(),
        hint.as_ref().map(|h| format!(" ({h})")).unwrap_or_default()
    )]
    UnknownKey {
        key: String,
        origin: String,
        line: Option<usize>,
        hint: Option<String>,
    },

    #[error("{key}: required but not set; add it to the configuration file or the environment")]
    Missing { key: &'static str },

    #[error("{key}: {problem}{}", origin.as_ref().map(|o| format!(" [from {o}]")).unwrap_or_default())]
    Invalid {
        key: &'static str,
        problem: String,
        origin: Option<String>,
    },

    #[error(
        "{}: holds a stream or publish key and every user on this host can read it; run: chmod 0640 {} && chown root:relay {}",
        path.display(), path.display(), path.display()
    )]
    Exposed { path: PathBuf },

    /// The `config` crate refused the merged settings; only reachable if the
    /// key list and [`RawSettings`] disagree.
    #[error("cannot assemble the configuration: {0}")]
    Layering(String),
}

/// Everything as text, exactly as layered; validation happens afterwards so
/// that every error can name its key. Numbers written as TOML integers arrive
/// here already turned into text.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    kick_url: Option<String>,
    kick_key: String,
    rtmp_host: String,
    rtmp_port: String,
    rtmp_app: String,
    rtmp_stream_name: String,
    offline_video_path: Option<String>,
    out_res: String,
    out_fps: String,
    vid_bitrate: String,
    max_bitrate: String,
    buffer_size: String,
    audio_bitrate: String,
    audio_samplerate: String,
    poll_interval: String,
    kill_grace: String,
    crash_backoff: String,
    http_stats_port: String,
    stats_url: Option<String>,
    zmq_port: String,
    allowed_publishers: String,
    publish_key: String,
    publish_auth_port: String,
    offline_after_ms: String,
    live_stable_secs: String,
    low_bitrate_kbps: Option<String>,
    low_bitrate_secs: Option<String>,
    metrics_addr: Option<String>,
}

fn known_key(upper: &str) -> Option<&'static str> {
    KEYS.iter().copied().find(|k| *k == upper)
}

/// The upper-case key whose TOML spelling is `lower`.
fn known_toml_key(lower: &str) -> Option<&'static str> {
    KEYS.iter()
        .copied()
        .find(|k| k.to_ascii_lowercase() == lower)
}

/// One layer of settings (a file, the environment, or given pairs), already
/// reduced to known keys with text values, fed to the `config` crate.
#[derive(Clone)]
struct Layer {
    /// Shown in error messages: a file path, or "the environment".
    origin: String,
    values: config::Map<String, config::Value>,
    /// The file it was read from, if any.
    file: Option<PathBuf>,
}

// Not derived: the values include the stream key.
impl fmt::Debug for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Layer")
            .field("origin", &self.origin)
            .field("keys", &self.values.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Layer {
    fn new(origin: impl Into<String>) -> Layer {
        Layer {
            origin: origin.into(),
            values: config::Map::new(),
            file: None,
        }
    }

    /// Whether it sets KICK_KEY or PUBLISH_KEY, or a KICK_URL with a key
    /// or password in it.
    fn holds_secret(&self) -> bool {
        let set = |key: &str| self.values.get(key).map(|v| v.to_string());
        set("kick_key").is_some()
            || set("publish_key").is_some()
            || set("kick_url").is_some_and(|url| {
                let url = url.trim_end_matches('/');
                mask_url(url, true) != url
            })
    }

    /// `upper_key` must be a known key. Empty values mean "not set".
    fn set(&mut self, upper_key: &str, value: &str) {
        let value = value.trim();
        let lower = upper_key.to_ascii_lowercase();
        if value.is_empty() {
            // A later empty value in the same layer still un-sets an earlier one.
            self.values.remove(&lower);
        } else {
            let value = config::Value::new(Some(&self.origin), value.to_owned());
            self.values.insert(lower, value);
        }
    }

    fn has(&self, lower_key: &str) -> bool {
        self.values.contains_key(lower_key)
    }
}

impl config::Source for Layer {
    fn clone_into_box(&self) -> Box<dyn config::Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<config::Map<String, config::Value>, config::ConfigError> {
        Ok(self.values.clone())
    }
}

impl Config {
    /// Loads from `source`, with the real process environment on top.
    pub fn load(source: &Source) -> Result<Config, ConfigError> {
        // Lossy rather than `var().ok()`: a non-UTF-8 value should fail
        // validation loudly, not be silently ignored.
        let env = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
        Config::load_with_env(source, &env)
    }

    /// Like [`Config::load`], with `env` standing in for the process
    /// environment (including `RELAY_CONFIG_DIR`), so tests need not mutate it.
    pub fn load_with_env(
        source: &Source,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let (instance, mut layers) = match source {
            Source::Instance(name) => (name.clone(), instance_layers(name, env)?),
            Source::File(path) => {
                let stem = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (stem, vec![file_layer(path)?])
            }
        };
        layers.push(environment_layer(env));
        let secret_files: Vec<PathBuf> = layers
            .iter()
            .filter(|layer| layer.holds_secret())
            .filter_map(|layer| layer.file.clone())
            .collect();
        let config = assemble(&instance, layers)?;
        for path in secret_files {
            refuse_if_world_readable(&path)?;
        }
        Ok(config)
    }

    /// Builds a configuration from `KEY=VALUE` style pairs alone: no files,
    /// no environment. Unknown keys are refused as in a `.env` file.
    pub fn from_pairs(instance: &str, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut layer = Layer::new("the given settings");
        for (key, value) in pairs {
            match known_key(key) {
                Some(known) => layer.set(known, value),
                None => {
                    return Err(unknown_key(key, &layer.origin, None, KeyCase::Upper));
                }
            }
        }
        assemble(instance, vec![layer])
    }

    /// Where FFmpeg publishes to, split so that the stream key stays off
    /// FFmpeg's command line, which every local user may read.
    pub fn output_target(&self) -> OutputTarget {
        if !self.kick_key.is_empty() {
            // The trailing slash makes FFmpeg parse the application name as
            // it would from `KICK_URL/KEY`.
            return OutputTarget {
                url: format!("{}/", self.kick_url),
                stream_name: Some(self.kick_key.clone()),
            };
        }
        let (scheme_authority, path) = split_path(&self.kick_url);
        let before_query = path.split('?').next().unwrap_or("");
        match before_query.rfind('/') {
            // "/app/KEY": the last segment is the stream name.
            Some(i) if i > 0 => OutputTarget {
                url: format!("{scheme_authority}{}", &path[..=i]),
                stream_name: Some(Secret::new(&path[i + 1..])),
            },
            _ => OutputTarget {
                url: self.kick_url.clone(),
                stream_name: None,
            },
        }
    }

    /// The destination with its secret parts replaced by `****`, for logs.
    pub fn output_url_masked(&self) -> String {
        if self.kick_key.is_empty() {
            mask_url(&self.kick_url, true)
        } else {
            format!("{}/****", mask_url(&self.kick_url, false))
        }
    }

    /// Whether `new` differs from this configuration only in keys that a
    /// running daemon applies at once, without restarting its FFmpeg
    /// children: the switching policy, POLL_INTERVAL, ALLOWED_PUBLISHERS,
    /// KILL_GRACE, CRASH_BACKOFF, and a PUBLISH_KEY replaced by another one
    /// (setting or removing the key restarts, so that start-up says again
    /// what protects the stream).
    pub fn only_tuning_differs(&self, new: &Config) -> bool {
        let mut new = new.clone();
        if !self.publish_key.is_empty() && !new.publish_key.is_empty() {
            new.publish_key = self.publish_key.clone();
        }
        new.poll_interval = self.poll_interval;
        new.kill_grace = self.kill_grace;
        new.crash_backoff = self.crash_backoff;
        new.allowed_publishers = self.allowed_publishers.clone();
        new.offline_after = self.offline_after;
        new.live_stable = self.live_stable;
        new.low_bitrate = self.low_bitrate;
        new == *self
    }

    /// The local nginx-rtmp stream carrying the live feed.
    pub fn live_url(&self) -> String {
        let host = if self.rtmp_host.contains(':') {
            format!("[{}]", self.rtmp_host)
        } else {
            self.rtmp_host.clone()
        };
        format!(
            "rtmp://{host}:{}/{}/{}",
            self.rtmp_port, self.rtmp_app, self.rtmp_stream_name
        )
    }
}

/// Hides what may be secret in an RTMP URL: a password in the user-info part
/// and, when `key_in_path` (no separate KICK_KEY, so the URL is used as is),
/// everything after the application name, where platforms put the key.
/// Splits `scheme://authority/path?query` into `scheme://authority` and
/// `/path?query` (empty when there is no path).
fn split_path(url: &str) -> (&str, &str) {
    let start = url.find("://").map_or(0, |i| i + 3);
    match url[start..].find('/') {
        Some(i) => url.split_at(start + i),
        None => (url, ""),
    }
}

fn mask_url(url: &str, key_in_path: bool) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "****".to_owned();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("****@{host}"),
        None => authority.to_owned(),
    };
    let path = if key_in_path {
        // path is "" or "/app[...]"; keep "/app" and mask the rest.
        let after_slash = path.get(1..).unwrap_or("");
        match after_slash.find(['/', '?']) {
            Some(i) => format!("/{}{}****", &after_slash[..i], &after_slash[i..=i]),
            None => path.to_owned(),
        }
    } else {
        path.to_owned()
    };
    format!("{scheme}://{authority}{path}")
}

/// The output width for a 16:9 frame `height` pixels tall, rounded to the
/// nearest even number because H.264 with 4:2:0 chroma needs even sizes.
pub fn width_16_9(height: u32) -> u32 {
    // round(height * 16 / 9 / 2) * 2, in integers.
    (height * 8 + 4) / 9 * 2
}

fn instance_layers(
    name: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Layer>, ConfigError> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') || name.contains('\0') {
        return Err(ConfigError::InstanceName(name.to_owned()));
    }
    let dir = env("RELAY_CONFIG_DIR")
        .filter(|d| !d.trim().is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_DIR));
    let toml_path = dir.join(format!("{name}.toml"));
    let env_path = dir.join(format!("{name}.env"));

    // Order matters: the .env file is layered after (over) the TOML file.
    let mut layers = Vec::new();
    if let Some(text) = read_if_exists(&toml_path)? {
        layers.push(toml_layer(&toml_path, &text)?);
    }
    if let Some(text) = read_if_exists(&env_path)? {
        layers.push(dotenv_layer(&env_path, &text)?);
    }
    if layers.is_empty() {
        return Err(ConfigError::NoConfiguration {
            instance: name.to_owned(),
            toml: toml_path,
            env: env_path,
        });
    }
    Ok(layers)
}

/// A file holding a secret may be readable by its owner and its group
/// (root:relay 0640 is the convention), not by every user.
fn refuse_if_world_readable(path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path)
        .map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?
        .permissions()
        .mode();
    if mode & 0o004 != 0 {
        return Err(ConfigError::Exposed {
            path: path.to_owned(),
        });
    }
    Ok(())
}

fn read_if_exists(path: &Path) -> Result<Option<String>, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ConfigError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

fn file_layer(path: &Path) -> Result<Layer, ConfigError> {
    let extension = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    let read = || {
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })
    };
    match extension.as_deref() {
        Some("toml") => toml_layer(path, &read()?),
        Some("env") => dotenv_layer(path, &read()?),
        _ => Err(ConfigError::UnsupportedFormat {
            path: path.to_owned(),
        }),
    }
}

#[derive(Clone, Copy)]
enum KeyCase {
    Lower,
    Upper,
}

fn unknown_key(key: &str, origin: &str, line: Option<usize>, case: KeyCase) -> ConfigError {
    // The most likely mistake with a known name is the wrong case for the format.
    let hint = known_key(&key.to_ascii_uppercase()).map(|known| match case {
        KeyCase::Lower => format!(
            "keys in TOML files are lower case: {}",
            known.to_ascii_lowercase()
        ),
        KeyCase::Upper => format!("keys are upper case here: {known}"),
    });
    ConfigError::UnknownKey {
        key: key.to_owned(),
        origin: origin.to_owned(),
        line,
        hint,
    }
}

fn toml_layer(path: &Path, text: &str) -> Result<Layer, ConfigError> {
    use config::Source as _;

    let table = config::File::from_str(text, config::FileFormat::Toml)
        .collect()
        .map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            line: None,
            message: toml_error_summary(&e),
        })?;

    let mut layer = Layer::new(path.display().to_string());
    layer.file = Some(path.to_owned());
    for (key, value) in table {
        let Some(known) = known_toml_key(&key) else {
            return Err(unknown_key(&key, &layer.origin, None, KeyCase::Lower));
        };
        let text = scalar_text(value).map_err(|found| ConfigError::Invalid {
            key: known,
            problem: format!("expected a single value, found {found}"),
            origin: Some(layer.origin.clone()),
        })?;
        layer.set(known, &text);
    }
    Ok(layer)
}

/// TOML numbers, booleans and dates become text; validation parses them.
fn scalar_text(value: config::Value) -> Result<String, &'static str> {
    use config::ValueKind;
    match value.kind {
        ValueKind::Table(_) => Err("a table"),
        ValueKind::Array(_) => Err("an array"),
        ValueKind::Nil => Ok(String::new()),
        _ => value.into_string().map_err(|_| "a value that is not text"),
    }
}

/// The toml crate's message quotes the offending source line, which could be
/// the stream key: keep the position and the description, drop the excerpt.
fn toml_error_summary(error: &config::ConfigError) -> String {
    let text = match error {
        config::ConfigError::FileParse { cause, .. } => cause.to_string(),
        other => other.to_string(),
    };
    let lines: Vec<&str> = text.lines().collect();
    let kept: Vec<&str> = match lines.first() {
        // Header, then a three-line excerpt (gutter, source line, caret).
        Some(first) if first.starts_with("TOML parse error at") => std::iter::once(*first)
            .chain(lines.iter().skip(4).copied())
            .collect(),
        _ => lines,
    };
    let kept: Vec<&str> = kept
        .into_iter()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if kept.is_empty() {
        "invalid TOML".to_owned()
    } else {
        kept.join(": ")
    }
}

/// Parses the `.env` format: `KEY=VALUE` lines, optional `export `, `#`
/// comment lines, blank lines, optional matching quotes around the value.
/// No escapes and no trailing comments: the same file should mean the same
/// thing to systemd's `EnvironmentFile=`.
fn dotenv_layer(path: &Path, text: &str) -> Result<Layer, ConfigError> {
    let syntax = |line: usize, message: &str| ConfigError::Syntax {
        path: path.to_owned(),
        line: Some(line),
        message: message.to_owned(),
    };
    let mut layer = Layer::new(path.display().to_string());
    layer.file = Some(path.to_owned());
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (index, raw_line) in text.lines().enumerate() {
        let number = index + 1;
        let line = raw_line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = match line.strip_prefix("export") {
            Some(rest) if rest.starts_with(char::is_whitespace) => rest.trim_start(),
            _ => line,
        };
        // The line's text is never quoted back: it may hold the stream key.
        let Some((key, value)) = line.split_once('=') else {
            return Err(syntax(number, "expected KEY=VALUE but found no '='"));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(syntax(number, "nothing before '='; expected KEY=VALUE"));
        }
        if !is_identifier(key) {
            return Err(syntax(
                number,
                "the text before '=' is not a key name (letters, digits and '_')",
            ));
        }
        let Some(known) = known_key(key) else {
            return Err(unknown_key(
                key,
                &layer.origin,
                Some(number),
                KeyCase::Upper,
            ));
        };
        let value = unquote(value.trim())
            .ok_or_else(|| syntax(number, "the value's opening quote is never closed"))?;
        layer.set(known, value);
    }
    Ok(layer)
}

fn is_identifier(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Strips one pair of matching surrounding quotes; `None` if a quote opens
/// the value but does not close it.
fn unquote(value: &str) -> Option<&str> {
    for quote in ['"', '\''] {
        if let Some(inner) = value.strip_prefix(quote) {
            return inner.strip_suffix(quote);
        }
    }
    Some(value)
}

fn environment_layer(env: &dyn Fn(&str) -> Option<String>) -> Layer {
    let mut layer = Layer::new("the environment");
    for key in KEYS {
        if let Some(value) = env(key) {
            layer.set(key, &value);
        }
    }
    layer
}

/// Layers defaults and `layers` (later wins) with the `config` crate, then
/// validates the result.
fn assemble(instance: &str, layers: Vec<Layer>) -> Result<Config, ConfigError> {
    let layering = |e: config::ConfigError| ConfigError::Layering(e.to_string().replace('\n', " "));

    let mut builder = config::Config::builder();
    for (key, value) in DEFAULTS {
        builder = builder.set_default(key, value).map_err(layering)?;
    }
    // Remember where each key was last set, so a bad value names its source.
    let origin_of = |key: &str| {
        let lower = key.to_ascii_lowercase();
        layers
            .iter()
            .rev()
            .find(|layer| layer.has(&lower))
            .map(|layer| layer.origin.clone())
    };
    for layer in &layers {
        builder = builder.add_source(layer.clone());
    }
    let raw: RawSettings = builder
        .build()
        .and_then(config::Config::try_deserialize)
        .map_err(layering)?;

    validate(instance, raw, &origin_of)
}

/// Attaches the key and where its value came from to a problem description.
struct Checker<'a> {
    origin_of: &'a dyn Fn(&str) -> Option<String>,
}

impl Checker<'_> {
    fn check<T>(
        &self,
        key: &'static str,
        value: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        parse(value.trim()).map_err(|problem| ConfigError::Invalid {
            key,
            problem,
            origin: (self.origin_of)(key),
        })
    }
}

fn validate(
    instance: &str,
    raw: RawSettings,
    origin_of: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let c = Checker { origin_of };

    let kick_url = raw
        .kick_url
        .ok_or(ConfigError::Missing { key: "KICK_URL" })?;
    let kick_url = c.check("KICK_URL", &kick_url, parse_kick_url)?;
    let kick_key = c.check("KICK_KEY", &raw.kick_key, parse_kick_key)?;
    let rtmp_host = c.check("RTMP_HOST", &raw.rtmp_host, parse_host)?;
    let rtmp_port = c.check("RTMP_PORT", &raw.rtmp_port, parse_port)?;
    let rtmp_app = c.check("RTMP_APP", &raw.rtmp_app, parse_name)?;
    let rtmp_stream_name = c.check("RTMP_STREAM_NAME", &raw.rtmp_stream_name, parse_name)?;
    let offline_video_path = raw.offline_video_path.ok_or(ConfigError::Missing {
        key: "OFFLINE_VIDEO_PATH",
    })?;
    let offline_video_path = PathBuf::from(offline_video_path.trim());
    let out_height = c.check("OUT_RES", &raw.out_res, parse_height)?;
    let out_fps = c.check("OUT_FPS", &raw.out_fps, parse_fps)?;
    let vid_bitrate = c.check("VID_BITRATE", &raw.vid_bitrate, parse_bitrate)?;
    let max_bitrate = c.check("MAX_BITRATE", &raw.max_bitrate, parse_bitrate)?;
    let buffer_size = c.check("BUFFER_SIZE", &raw.buffer_size, parse_bitrate)?;
    let audio_bitrate = c.check("AUDIO_BITRATE", &raw.audio_bitrate, parse_bitrate)?;
    let audio_samplerate = c.check("AUDIO_SAMPLERATE", &raw.audio_samplerate, parse_samplerate)?;
    let poll_interval = c.check("POLL_INTERVAL", &raw.poll_interval, |v| {
        parse_seconds(v, 60)
    })?;
    let kill_grace = c.check("KILL_GRACE", &raw.kill_grace, |v| parse_seconds(v, 60))?;
    let crash_backoff = c.check("CRASH_BACKOFF", &raw.crash_backoff, |v| {
        parse_seconds(v, 300)
    })?;
    let http_stats_port = c.check("HTTP_STATS_PORT", &raw.http_stats_port, parse_port)?;
    let stats_url = match raw.stats_url {
        Some(url) => c.check("STATS_URL", &url, parse_stats_url)?,
        None => format!("http://127.0.0.1:{http_stats_port}/rtmp_stat"),
    };
    let zmq_port = c.check("ZMQ_PORT", &raw.zmq_port, parse_port)?;
    let allowed_publishers = c.check(
        "ALLOWED_PUBLISHERS",
        &raw.allowed_publishers,
        parse_allowed_publishers,
    )?;
    let publish_key = c.check("PUBLISH_KEY", &raw.publish_key, parse_publish_key)?;
    let publish_auth_port = c.check("PUBLISH_AUTH_PORT", &raw.publish_auth_port, |v| {
        if v == "0" {
            Ok(0)
        } else {
            parse_port(v)
                .map_err(|_| format!("{v:?} is not a port number (1..=65535, or 0 for none)"))
        }
    })?;
    let offline_after = c.check(
        "OFFLINE_AFTER_MS",
        &raw.offline_after_ms,
        parse_offline_after,
    )?;
    let live_stable = c.check("LIVE_STABLE_SECS", &raw.live_stable_secs, |v| {
        parse_seconds_or_zero(v, 60)
    })?;
    let low_kbps = raw.low_bitrate_kbps.as_deref();
    let low_kbps = low_kbps.map(|v| c.check("LOW_BITRATE_KBPS", v, parse_kbps));
    let low_secs = raw.low_bitrate_secs.as_deref();
    let low_secs = low_secs.map(|v| c.check("LOW_BITRATE_SECS", v, |v| parse_seconds(v, 600)));
    let low_bitrate = match (low_kbps.transpose()?, low_secs.transpose()?) {
        (Some(bps), Some(window)) => Some(LowBitrate { bps, window }),
        (None, None) => None,
        (Some(_), None) => return Err(both_or_neither(&c, "LOW_BITRATE_KBPS", "LOW_BITRATE_SECS")),
        (None, Some(_)) => return Err(both_or_neither(&c, "LOW_BITRATE_SECS", "LOW_BITRATE_KBPS")),
    };
    let metrics_addr = raw.metrics_addr.as_deref();
    let metrics_addr = metrics_addr.map(|v| c.check("METRICS_ADDR", v, parse_metrics_addr));

    Ok(Config {
        instance: instance.to_owned(),
        kick_url,
        kick_key,
        rtmp_host,
        rtmp_port,
        rtmp_app,
        rtmp_stream_name,
        offline_video_path,
        out_width: width_16_9(out_height),
        out_height,
        out_fps,
        vid_bitrate,
        max_bitrate,
        buffer_size,
        audio_bitrate,
        audio_samplerate,
        poll_interval,
        kill_grace,
        crash_backoff,
        http_stats_port,
        stats_url,
        zmq_port,
        allowed_publishers,
        publish_key,
        publish_auth_port,
        offline_after,
        live_stable,
        low_bitrate,
        metrics_addr: metrics_addr.transpose()?,
    })
}

fn both_or_neither(c: &Checker, set: &'static str, missing: &str) -> ConfigError {
    ConfigError::Invalid {
        key: set,
        problem: format!("set {missing} too, or neither (they work together)"),
        origin: (c.origin_of)(set),
    }
}

fn parse_offline_after(value: &str) -> Result<Duration, String> {
    match value.parse::<u64>() {
        Ok(ms) if (100..=10_000).contains(&ms) => Ok(Duration::from_millis(ms)),
        _ => Err(format!(
            "{value:?} is not a whole number of milliseconds from 100 to 10000"
        )),
    }
}

fn parse_seconds_or_zero(value: &str, max: u32) -> Result<Duration, String> {
    match value.parse::<f64>() {
        Ok(0.0) => Ok(Duration::ZERO),
        _ => parse_seconds(value, max)
            .map_err(|_| format!("{value:?} is not a number of seconds from 0 to {max}")),
    }
}

fn parse_kbps(value: &str) -> Result<u64, String> {
    match value.parse::<u64>() {
        Ok(kbps) if (1..=1_000_000).contains(&kbps) => Ok(kbps * 1000),
        _ => Err(format!(
            "{value:?} is not a whole number of kbit/s from 1 to 1000000"
        )),
    }
}

/// Metrics carry no secret, but an HTTP port on a public address is one
/// more thing to attack: loopback only (scrape through SSH or a proxy).
fn parse_metrics_addr(value: &str) -> Result<std::net::SocketAddr, String> {
    let addr: std::net::SocketAddr = value.parse().map_err(|_| {
        format!("{value:?} is not an address with a port, e.g. 127.0.0.1:9108 or [::1]:9108")
    })?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{value:?} is not a loopback address; metrics are served on 127.0.0.1 or ::1 only"
        ));
    }
    Ok(addr)
}

fn has_space_or_control(text: &str) -> bool {
    text.chars().any(|c| c.is_whitespace() || c.is_control())
}

// KICK_URL may carry the stream key when KICK_KEY is empty, so its problems
// are described without quoting it.
fn parse_kick_url(value: &str) -> Result<String, String> {
    let rest = value
        .strip_prefix("rtmp://")
        .or_else(|| value.strip_prefix("rtmps://"))
        .ok_or("must be an rtmp:// or rtmps:// URL")?;
    if has_space_or_control(value) {
        return Err("must not contain spaces or control characters".to_owned());
    }
    let authority = rest.split('/').next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') {
        return Err("has no host name after the scheme".to_owned());
    }
    Ok(value.trim_end_matches('/').to_owned())
}

/// FFmpeg reads preset lines of up to 999 bytes; platform keys are far
/// shorter.
const MAX_KEY_LEN: usize = 512;

fn parse_kick_key(value: &str) -> Result<Secret, String> {
    if has_space_or_control(value) {
        return Err("must not contain spaces or control characters (value not shown)".to_owned());
    }
    if value.len() > MAX_KEY_LEN {
        return Err(format!(
            "is longer than {MAX_KEY_LEN} characters (value not shown)"
        ));
    }
    Ok(Secret::new(value))
}

// It travels in the stream key field as `NAME?key=VALUE`, so it is kept to
// characters that need no URL encoding.
fn parse_publish_key(value: &str) -> Result<Secret, String> {
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c))
    {
        return Err("use only letters, digits, '-', '_', '.' and '~' (value not shown)".to_owned());
    }
    Ok(Secret::new(value))
}

fn parse_host(value: &str) -> Result<String, String> {
    let problem = || format!("{value:?} is not a host name or IP address");
    if value.is_empty() || value.contains('/') || has_space_or_control(value) {
        return Err(problem());
    }
    // IPv6 literals may be written with or without brackets; store them bare.
    let bare = value
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .unwrap_or(value);
    if bare.contains(':') && bare.parse::<Ipv6Addr>().is_err() {
        return Err(problem());
    }
    Ok(bare.to_owned())
}

fn parse_port(value: &str) -> Result<u16, String> {
    match value.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!("{value:?} is not a port number (1..=65535)")),
    }
}

fn parse_name(value: &str) -> Result<String, String> {
    if value.is_empty() || value.contains('/') || has_space_or_control(value) {
        return Err(format!(
            "{value:?} is not a valid name (non-empty, no '/' or whitespace)"
        ));
    }
    Ok(value.to_owned())
}

fn parse_height(value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(h) if (144..=2160).contains(&h) && h % 2 == 0 => Ok(h),
        _ => Err(format!(
            "{value:?} is not an even output height in pixels (144..=2160), e.g. 1080 or 720"
        )),
    }
}

fn parse_fps(value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(fps) if (1..=120).contains(&fps) => Ok(fps),
        _ => Err(format!(
            "{value:?} is not a whole number of frames per second (1..=120)"
        )),
    }
}

/// Upper bound for any bitrate: FFmpeg stores `-bufsize` in a C `int`.
const MAX_BPS: u64 = i32::MAX as u64;

fn parse_bitrate(value: &str) -> Result<Bitrate, String> {
    let (digits, multiplier, suffix) = if let Some(d) = value.strip_suffix(['k', 'K']) {
        (d, 1_000, "k")
    } else if let Some(d) = value.strip_suffix('M') {
        (d, 1_000_000, "M")
    } else {
        (value, 1, "")
    };
    let malformed = || {
        format!("{value:?} is not a bitrate: use digits with an optional k or M suffix, e.g. 3000k")
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    let number: u64 = digits.parse().map_err(|_| malformed())?;
    match number.checked_mul(multiplier) {
        Some(bps) if bps > 0 && bps <= MAX_BPS => Ok(Bitrate {
            // Normalized ("03000K" → "3000k") so FFmpeg sees a plain form.
            text: format!("{number}{suffix}"),
            bps,
        }),
        _ => Err(format!(
            "{value:?} must be above 0 and at most {MAX_BPS} bits per second"
        )),
    }
}

fn parse_samplerate(value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(rate @ (32000 | 44100 | 48000)) => Ok(rate),
        _ => Err(format!("{value:?} is not one of 32000, 44100, 48000")),
    }
}

fn parse_seconds(value: &str, max: u32) -> Result<Duration, String> {
    match value.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 && secs <= f64::from(max) => {
            Ok(Duration::from_secs_f64(secs))
        }
        _ => Err(format!(
            "{value:?} is not a number of seconds above 0 and at most {max}"
        )),
    }
}

fn parse_stats_url(value: &str) -> Result<String, String> {
    let rest = value
        .strip_prefix("http://")
        .ok_or_else(|| format!("{value:?} must be an http:// URL"))?;
    if has_space_or_control(value) || rest.split('/').next().unwrap_or("").is_empty() {
        return Err(format!("{value:?} is not a valid http:// URL"));
    }
    Ok(value.to_owned())
}

fn parse_allowed_publishers(value: &str) -> Result<AllowedPublishers, String> {
    if value.eq_ignore_ascii_case("external") {
        return Ok(AllowedPublishers::External);
    }
    if value.eq_ignore_ascii_case("any") {
        return Ok(AllowedPublishers::Any);
    }
    let mut nets = Vec::new();
    // Empty items are skipped so a trailing comma is harmless.
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let net = match item.parse::<IpNet>() {
            Ok(net) => net.trunc(),
            // A bare address means that single host.
            Err(_) => item.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
                format!(
                    "{item:?} is not an address or CIDR; use \"external\", \"any\" \
                     or a comma-separated list like 203.0.113.0/24, ::1/128"
                )
            })?,
        };
        nets.push(net);
    }
    if nets.is_empty() {
        return Err(format!(
            "{value:?} lists no addresses; use \"external\", \"any\" or CIDRs"
        ));
    }
    Ok(AllowedPublishers::Cidrs(nets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const REQUIRED: [(&str, &str); 2] = [
        ("KICK_URL", "rtmps://ingest.example.com/app"),
        ("OFFLINE_VIDEO_PATH", "/srv/offline.mp4"),
    ];

    /// A config from the required keys plus `extra` (later pairs win).
    fn with(extra: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut pairs = REQUIRED.to_vec();
        pairs.extend_from_slice(extra);
        Config::from_pairs("test", &pairs)
    }

    fn error_for(extra: &[(&str, &str)]) -> String {
        match with(extra) {
            Ok(config) => panic!("expected an error for {extra:?}, got {config:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn env_from(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    /// Writes a file with mode 0640, as a file holding a key must be.
    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        chmod(&path, 0o640);
        path
    }

    fn chmod(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn files_with_secrets_must_not_be_world_readable() {
        let dir = tempfile::tempdir().unwrap();
        let base = "KICK_URL=rtmp://h/app\nOFFLINE_VIDEO_PATH=/o.mp4\n";
        let load = |name: &str, text: &str, mode: u32| {
            let path = write(dir.path(), name, text);
            chmod(&path, mode);
            Config::load_with_env(&Source::File(path), &no_env).map(|_| ())
        };
        for secret in [
            "KICK_KEY=SECRETVALUE\n",
            "PUBLISH_KEY=SECRETVALUE\n",
            "KICK_URL=rtmp://h/app/SECRETVALUE\n",
            "KICK_URL=rtmp://user:SECRETVALUE@h/app\n",
        ] {
            let text = format!("{base}{secret}");
            let e = load("k.env", &text, 0o644).unwrap_err();
            assert!(matches!(e, ConfigError::Exposed { .. }), "{secret}: {e}");
            let msg = e.to_string();
            assert!(msg.contains("k.env") && msg.contains("chmod 0640"), "{msg}");
            assert!(!msg.contains("SECRETVALUE") && !msg.contains('\n'), "{msg}");
            load("k.env", &text, 0o640).unwrap();
            load("k.env", &text, 0o600).unwrap();
        }
        // Nothing secret: any mode will do.
        load("k.env", base, 0o644).unwrap();
        load(
            "k.env",
            "KICK_URL=rtmp://h/app/\nOFFLINE_VIDEO_PATH=/o.mp4\n",
            0o644,
        )
        .unwrap();
        // TOML too, and per file: the .env holding the key is the one named.
        let cdir = tempfile::tempdir().unwrap();
        write(cdir.path(), "i.toml", "kick_url = \"rtmp://h/app\"\n");
        chmod(&cdir.path().join("i.toml"), 0o644);
        let env_path = write(cdir.path(), "i.env", "KICK_KEY=s\nOFFLINE_VIDEO_PATH=/o\n");
        let dir_env = env_from(&[("RELAY_CONFIG_DIR", cdir.path().to_str().unwrap())]);
        Config::load_with_env(&Source::Instance("i".into()), &dir_env).unwrap();
        chmod(&env_path, 0o604);
        let e = Config::load_with_env(&Source::Instance("i".into()), &dir_env).unwrap_err();
        assert!(
            e.to_string().starts_with(&env_path.display().to_string()),
            "{e}"
        );
        let toml = write(
            cdir.path(),
            "t.toml",
            "kick_url = \"rtmp://h/a\"\npublish_key = \"p\"\noffline_video_path = \"/o\"\n",
        );
        chmod(&toml, 0o644);
        let e = Config::load_with_env(&Source::File(toml), &no_env).unwrap_err();
        assert!(matches!(e, ConfigError::Exposed { .. }), "{e}");
    }

    #[test]
    fn defaults() {
        let c = with(&[]).unwrap();
        assert_eq!(c.instance, "test");
        assert_eq!(c.kick_url, "rtmps://ingest.example.com/app");
        assert!(c.kick_key.is_empty());
        assert_eq!(c.rtmp_host, "127.0.0.1");
        assert_eq!(c.rtmp_port, 1936);
        assert_eq!(c.rtmp_app, "live");
        assert_eq!(c.rtmp_stream_name, "mystream");
        assert_eq!(c.offline_video_path, PathBuf::from("/srv/offline.mp4"));
        assert_eq!((c.out_width, c.out_height, c.out_fps), (1920, 1080, 30));
        assert_eq!(
            c.vid_bitrate,
            Bitrate {
                text: "3000k".into(),
                bps: 3_000_000
            }
        );
        assert_eq!(c.max_bitrate.bps, 3_500_000);
        assert_eq!(c.buffer_size.bps, 12_000_000);
        assert_eq!(
            c.audio_bitrate,
            Bitrate {
                text: "128k".into(),
                bps: 128_000
            }
        );
        assert_eq!(c.audio_samplerate, 48000);
        assert_eq!(c.poll_interval, Duration::from_secs(1));
        assert_eq!(c.kill_grace, Duration::from_secs(3));
        assert_eq!(c.crash_backoff, Duration::from_secs(2));
        assert_eq!(c.http_stats_port, 8080);
        assert_eq!(c.stats_url, "http://127.0.0.1:8080/rtmp_stat");
        assert_eq!(c.zmq_port, 5559);
        assert_eq!(c.allowed_publishers, AllowedPublishers::External);
        assert!(c.publish_key.is_empty());
        assert_eq!(c.publish_auth_port, 8081);
        assert_eq!(c.offline_after, Duration::from_millis(300));
        assert_eq!(c.live_stable, Duration::from_secs(3));
        assert_eq!(c.low_bitrate, None);
        assert_eq!(c.metrics_addr, None);
        assert_eq!(c.live_url(), "rtmp://127.0.0.1:1936/live/mystream");
        assert_eq!(
            c.output_target(),
            OutputTarget {
                url: "rtmps://ingest.example.com/app".into(),
                stream_name: None
            }
        );
    }

    #[test]
    fn every_key_is_read_into_its_field() {
        // Also proves KEYS and RawSettings agree: a key missing from either
        // would be refused or keep its default.
        let c = with(&[
            ("KICK_URL", "rtmp://a.example/app/"),
            ("KICK_KEY", "sk_1"),
            ("RTMP_HOST", "::1"),
            ("RTMP_PORT", "1935"),
            ("RTMP_APP", "in"),
            ("RTMP_STREAM_NAME", "cam"),
            ("OFFLINE_VIDEO_PATH", "/o.mp4"),
            ("OUT_RES", "720"),
            ("OUT_FPS", "60"),
            ("VID_BITRATE", "6M"),
            ("MAX_BITRATE", "7000K"),
            ("BUFFER_SIZE", "128000"),
            ("AUDIO_BITRATE", "160k"),
            ("AUDIO_SAMPLERATE", "44100"),
            ("POLL_INTERVAL", "0.5"),
            ("KILL_GRACE", "10"),
            ("CRASH_BACKOFF", "300"),
            ("HTTP_STATS_PORT", "8081"),
            ("STATS_URL", "http://10.0.0.2:81/stat"),
            ("ZMQ_PORT", "6000"),
            ("ALLOWED_PUBLISHERS", "any"),
            ("PUBLISH_KEY", "pk-1_a.b~"),
            ("PUBLISH_AUTH_PORT", "0"),
            ("OFFLINE_AFTER_MS", "450"),
            ("LIVE_STABLE_SECS", "0"),
            ("LOW_BITRATE_KBPS", "500"),
            ("LOW_BITRATE_SECS", "2.5"),
            ("METRICS_ADDR", "[::1]:9108"),
        ])
        .unwrap();
        assert_eq!(c.offline_after, Duration::from_millis(450));
        assert_eq!(c.live_stable, Duration::ZERO);
        assert_eq!(
            c.low_bitrate,
            Some(LowBitrate {
                bps: 500_000,
                window: Duration::from_millis(2500)
            })
        );
        assert_eq!(c.metrics_addr, Some("[::1]:9108".parse().unwrap()));
        assert_eq!(KEYS.len(), 28);
        assert_eq!(c.publish_key.expose(), "pk-1_a.b~");
        assert_eq!(c.publish_auth_port, 0);
        assert_eq!(c.kick_url, "rtmp://a.example/app");
        assert_eq!(c.kick_key.expose(), "sk_1");
        assert_eq!(c.output_target().url, "rtmp://a.example/app/");
        assert_eq!(c.output_target().stream_name, Some(Secret::new("sk_1")));
        assert_eq!(c.rtmp_host, "::1");
        assert_eq!(c.live_url(), "rtmp://[::1]:1935/in/cam");
        assert_eq!(c.offline_video_path, PathBuf::from("/o.mp4"));
        assert_eq!((c.out_width, c.out_height, c.out_fps), (1280, 720, 60));
        assert_eq!(
            c.vid_bitrate,
            Bitrate {
                text: "6M".into(),
                bps: 6_000_000
            }
        );
        assert_eq!(
            c.max_bitrate,
            Bitrate {
                text: "7000k".into(),
                bps: 7_000_000
            }
        );
        assert_eq!(
            c.buffer_size,
            Bitrate {
                text: "128000".into(),
                bps: 128_000
            }
        );
        assert_eq!(c.audio_bitrate.bps, 160_000);
        assert_eq!(c.audio_samplerate, 44100);
        assert_eq!(c.poll_interval, Duration::from_millis(500));
        assert_eq!(c.kill_grace, Duration::from_secs(10));
        assert_eq!(c.crash_backoff, Duration::from_secs(300));
        assert_eq!(c.http_stats_port, 8081);
        assert_eq!(c.stats_url, "http://10.0.0.2:81/stat");
        assert_eq!(c.zmq_port, 6000);
        assert_eq!(c.allowed_publishers, AllowedPublishers::Any);
    }

    #[test]
    fn low_bitrate_keys_come_together() {
        let e = error_for(&[("LOW_BITRATE_KBPS", "300")]);
        assert!(
            e.starts_with("LOW_BITRATE_KBPS: set LOW_BITRATE_SECS too"),
            "{e}"
        );
        let e = error_for(&[("LOW_BITRATE_SECS", "5")]);
        assert!(
            e.starts_with("LOW_BITRATE_SECS: set LOW_BITRATE_KBPS too"),
            "{e}"
        );
        let e = error_for(&[("LOW_BITRATE_KBPS", "300"), ("LOW_BITRATE_SECS", "0")]);
        assert!(e.starts_with("LOW_BITRATE_SECS: "), "{e}");
    }

    #[test]
    fn tuning_changes_are_told_apart() {
        let old = with(&[]).unwrap();
        let tuned = with(&[
            ("OFFLINE_AFTER_MS", "2000"),
            ("LIVE_STABLE_SECS", "10"),
            ("LOW_BITRATE_KBPS", "300"),
            ("LOW_BITRATE_SECS", "5"),
            ("POLL_INTERVAL", "2"),
            ("ALLOWED_PUBLISHERS", "any"),
            ("KILL_GRACE", "5"),
            ("CRASH_BACKOFF", "5"),
        ])
        .unwrap();
        assert!(old.only_tuning_differs(&tuned));
        for (key, value) in [
            ("KICK_URL", "rtmp://other.example/app"),
            ("KICK_KEY", "sk_2"),
            ("OUT_RES", "720"),
            ("VID_BITRATE", "2000k"),
            ("OFFLINE_VIDEO_PATH", "/srv/other.mp4"),
            ("ZMQ_PORT", "6000"),
            ("METRICS_ADDR", "127.0.0.1:9108"),
        ] {
            let new = with(&[(key, value)]).unwrap();
            assert!(!old.only_tuning_differs(&new), "{key}");
        }
        // A replaced publish key applies at once; setting or removing one
        // restarts, so that start-up says again what protects the stream.
        let keyed = with(&[("PUBLISH_KEY", "pk-1")]).unwrap();
        assert!(keyed.only_tuning_differs(&with(&[("PUBLISH_KEY", "pk-2")]).unwrap()));
        assert!(!old.only_tuning_differs(&keyed));
        assert!(!keyed.only_tuning_differs(&old));
        assert!(!keyed.only_tuning_differs(
            &with(&[("PUBLISH_KEY", "pk-1"), ("PUBLISH_AUTH_PORT", "9")]).unwrap()
        ));
    }

    #[test]
    fn stats_url_default_follows_http_stats_port() {
        let c = with(&[("HTTP_STATS_PORT", "9000")]).unwrap();
        assert_eq!(c.stats_url, "http://127.0.0.1:9000/rtmp_stat");
    }

    #[test]
    fn required_keys() {
        let e = Config::from_pairs("t", &[REQUIRED[1]]).unwrap_err();
        assert!(e.to_string().starts_with("KICK_URL: required"), "{e}");
        let e = Config::from_pairs("t", &[REQUIRED[0]]).unwrap_err();
        assert!(
            e.to_string().starts_with("OFFLINE_VIDEO_PATH: required"),
            "{e}"
        );
        // Empty counts as not set.
        let e = error_for(&[("KICK_URL", "  ")]);
        assert!(e.starts_with("KICK_URL: required"), "{e}");
    }

    #[test]
    fn each_bad_value_names_its_key() {
        let cases: &[(&str, &str)] = &[
            ("KICK_URL", "http://x/app"),
            ("KICK_URL", "rtmp://"),
            ("KICK_URL", "rtmp://host/a b"),
            ("KICK_KEY", "sk live"),
            ("RTMP_HOST", "a/b"),
            ("RTMP_HOST", "fe80::1::2"),
            ("RTMP_PORT", "0"),
            ("RTMP_PORT", "65536"),
            ("RTMP_PORT", "http"),
            ("RTMP_APP", "a/b"),
            ("RTMP_STREAM_NAME", "my stream"),
            ("OUT_RES", "1081"),
            ("OUT_RES", "142"),
            ("OUT_RES", "2162"),
            ("OUT_RES", "1080p"),
            ("OUT_FPS", "abc"),
            ("OUT_FPS", "0"),
            ("OUT_FPS", "121"),
            ("OUT_FPS", "29.97"),
            ("VID_BITRATE", "3.5M"),
            ("VID_BITRATE", "0"),
            ("MAX_BITRATE", "3m"),
            ("BUFFER_SIZE", "k"),
            ("BUFFER_SIZE", "99999999999M"),
            ("AUDIO_BITRATE", "-128k"),
            ("AUDIO_SAMPLERATE", "22050"),
            ("POLL_INTERVAL", "0"),
            ("POLL_INTERVAL", "61"),
            ("POLL_INTERVAL", "NaN"),
            ("KILL_GRACE", "-1"),
            ("KILL_GRACE", "inf"),
            ("CRASH_BACKOFF", "301"),
            ("HTTP_STATS_PORT", "99999"),
            ("STATS_URL", "https://127.0.0.1/rtmp_stat"),
            ("STATS_URL", "http:///x"),
            ("ZMQ_PORT", "-1"),
            ("ALLOWED_PUBLISHERS", "internal"),
            ("ALLOWED_PUBLISHERS", "10.0.0.0/33"),
            ("ALLOWED_PUBLISHERS", ","),
            ("PUBLISH_KEY", "a b"),
            ("PUBLISH_KEY", "a&b"),
            ("PUBLISH_KEY", "a%20"),
            ("PUBLISH_AUTH_PORT", "65536"),
            ("PUBLISH_AUTH_PORT", "-1"),
            ("OFFLINE_AFTER_MS", "99"),
            ("OFFLINE_AFTER_MS", "10001"),
            ("OFFLINE_AFTER_MS", "0.5"),
            ("LIVE_STABLE_SECS", "-1"),
            ("LIVE_STABLE_SECS", "61"),
            ("LOW_BITRATE_KBPS", "0"),
            ("METRICS_ADDR", "127.0.0.1"),
            ("METRICS_ADDR", "0.0.0.0:9108"),
            ("METRICS_ADDR", "203.0.113.1:9108"),
        ];
        for (key, value) in cases {
            let e = error_for(&[(key, value)]);
            assert!(e.starts_with(&format!("{key}: ")), "{key}={value:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn error_wording() {
        assert_eq!(
            error_for(&[("OUT_FPS", "abc")]),
            r#"OUT_FPS: "abc" is not a whole number of frames per second (1..=120) [from the given settings]"#
        );
    }

    #[test]
    fn bitrate_forms() {
        let b = |t: &str| parse_bitrate(t).unwrap();
        assert_eq!(
            b("3000k"),
            Bitrate {
                text: "3000k".into(),
                bps: 3_000_000
            }
        );
        assert_eq!(
            b("3000K"),
            Bitrate {
                text: "3000k".into(),
                bps: 3_000_000
            }
        );
        assert_eq!(
            b("3M"),
            Bitrate {
                text: "3M".into(),
                bps: 3_000_000
            }
        );
        assert_eq!(
            b("128000"),
            Bitrate {
                text: "128000".into(),
                bps: 128_000
            }
        );
        assert_eq!(b("0128k").text, "128k");
        assert!(parse_bitrate("3 M").is_err());
        assert!(parse_bitrate("+3M").is_err());
    }

    #[test]
    fn width_is_16_9_rounded_to_even() {
        assert_eq!(width_16_9(1080), 1920);
        assert_eq!(width_16_9(720), 1280);
        assert_eq!(width_16_9(480), 854);
        assert_eq!(width_16_9(180), 320);
        assert_eq!(width_16_9(144), 256);
        assert_eq!(width_16_9(2160), 3840);
        for h in (144..=2160).step_by(2) {
            let w = width_16_9(h);
            assert_eq!(w % 2, 0);
            assert!(
                (f64::from(w) - f64::from(h) * 16.0 / 9.0).abs() <= 1.0,
                "{h} -> {w}"
            );
        }
        assert_eq!(with(&[("OUT_RES", "480")]).unwrap().out_width, 854);
    }

    #[test]
    fn allowed_publishers_external() {
        let ext = AllowedPublishers::External;
        let allows = |a: &str| ext.allows(a.parse().unwrap());
        assert!(allows("198.51.100.2"));
        assert!(!allows("10.1.2.3"));
        assert!(!allows("172.31.0.1"));
        assert!(allows("172.32.0.1"));
        assert!(allows("172.15.255.255"));
        assert!(!allows("172.16.0.0"));
        assert!(!allows("192.168.1.1"));
        assert!(allows("192.169.1.1"));
        assert!(!allows("127.0.0.1"));
        assert!(!allows("127.255.0.9"));
        assert!(allows("8.8.8.8"));
        assert!(allows("100.64.0.1"));
        assert!(!allows("::1"));
        assert!(allows("2001:db8::1"));
        assert!(!allows("::ffff:10.1.2.3"));
        assert!(!allows("::ffff:127.0.0.1"));
        assert!(allows("::ffff:198.51.100.2"));
    }

    #[test]
    fn allowed_publishers_parsing_and_cidrs() {
        let parse = |t: &str| {
            with(&[("ALLOWED_PUBLISHERS", t)])
                .unwrap()
                .allowed_publishers
        };
        assert_eq!(parse("ANY"), AllowedPublishers::Any);
        assert_eq!(parse(" External "), AllowedPublishers::External);
        assert!(AllowedPublishers::Any.allows("10.0.0.1".parse().unwrap()));

        let list = parse("203.0.113.0/24, 127.0.0.1, ::1/128,");
        assert_eq!(list.to_string(), "203.0.113.0/24, 127.0.0.1/32, ::1/128");
        let allows = |a: &str| list.allows(a.parse().unwrap());
        assert!(allows("203.0.113.77"));
        assert!(allows("127.0.0.1"));
        assert!(allows("::ffff:127.0.0.1"));
        assert!(allows("::1"));
        assert!(!allows("127.0.0.2"));
        assert!(!allows("203.0.114.1"));
        assert!(!allows("8.8.8.8"));

        // Host bits in a CIDR are dropped rather than refused.
        assert_eq!(parse("10.1.2.3/8").to_string(), "10.0.0.0/8");
    }

    #[test]
    fn secret_is_masked() {
        let c = with(&[("KICK_KEY", "sk_us_SECRETVALUE")]).unwrap();
        assert_eq!(format!("{}", c.kick_key), "****");
        assert_eq!(format!("{:?}", c.kick_key), "****");
        assert_eq!(format!("{}", Secret::new("")), "<empty>");
        assert_eq!(format!("{:?}", Secret::default()), "<empty>");
        assert!(!format!("{c:?}").contains("SECRETVALUE"));
        assert_eq!(c.output_url_masked(), "rtmps://ingest.example.com/app/****");
        let target = c.output_target();
        assert_eq!(target.url, "rtmps://ingest.example.com/app/");
        assert_eq!(target.stream_name, Some(Secret::new("sk_us_SECRETVALUE")));
        assert!(!target.url_has_secret());
    }

    #[test]
    fn key_inside_url_is_masked_when_kick_key_is_empty() {
        let c = with(&[("KICK_URL", "rtmps://h.example/app/sk_SECRETVALUE")]).unwrap();
        assert_eq!(c.output_url_masked(), "rtmps://h.example/app/****");
        let target = c.output_target();
        assert_eq!(target.url, "rtmps://h.example/app/");
        assert_eq!(target.stream_name, Some(Secret::new("sk_SECRETVALUE")));
        assert!(!target.url_has_secret());

        // An application with an instance: FFmpeg takes the last segment
        // as the stream name, and so does relay.
        let c = with(&[("KICK_URL", "rtmp://h.example/app/inst/SECRETVALUE?a=b/c")]).unwrap();
        let target = c.output_target();
        assert_eq!(target.url, "rtmp://h.example/app/inst/");
        assert_eq!(target.stream_name, Some(Secret::new("SECRETVALUE?a=b/c")));
        assert!(!format!("{c:?}").contains("SECRETVALUE"));

        let c = with(&[("KICK_URL", "rtmp://u:SECRETVALUE@h.example/app?k=1")]).unwrap();
        assert_eq!(c.output_url_masked(), "rtmp://****@h.example/app?****");
        // FFmpeg takes credentials and an application's query only in the
        // URL; `relay check` warns about them.
        assert!(c.output_target().url_has_secret());
        assert_eq!(c.output_target().stream_name, None);

        let c = with(&[("KICK_URL", "rtmp://h.example:1935/app")]).unwrap();
        assert_eq!(c.output_url_masked(), "rtmp://h.example:1935/app");
        assert!(!c.output_target().url_has_secret());
        assert_eq!(c.output_target().stream_name, None);
    }

    #[test]
    fn errors_never_show_the_key() {
        let e = error_for(&[("KICK_KEY", "sk SECRETVALUE")]);
        assert!(e.starts_with("KICK_KEY: "), "{e}");
        assert!(!e.contains("SECRETVALUE"), "{e}");
        let e = error_for(&[("KICK_URL", "rtsp://h/app/SECRETVALUE")]);
        assert!(!e.contains("SECRETVALUE"), "{e}");
        let long = format!("SECRETVALUE{}", "x".repeat(MAX_KEY_LEN));
        let e = error_for(&[("KICK_KEY", &long)]);
        assert!(e.starts_with("KICK_KEY: is longer than"), "{e}");
        assert!(!e.contains("SECRETVALUE"), "{e}");
        let e = error_for(&[("PUBLISH_KEY", "SECRET&VALUE")]);
        assert!(e.starts_with("PUBLISH_KEY: "), "{e}");
        assert!(!e.contains("SECRET"), "{e}");
        let c = with(&[("PUBLISH_KEY", "PKSECRETVALUE")]).unwrap();
        assert!(!format!("{c:?}").contains("PKSECRETVALUE"));

        let dir = tempfile::tempdir().unwrap();
        let bad_toml = write(dir.path(), "k.toml", "kick_key = \"SECRETVALUE\n");
        let e = Config::load_with_env(&Source::File(bad_toml.clone()), &no_env).unwrap_err();
        let e = e.to_string();
        assert!(e.starts_with(&bad_toml.display().to_string()), "{e}");
        assert!(e.contains("line 1"), "{e}");
        assert!(!e.contains("SECRETVALUE"), "{e}");
        assert!(!e.contains('\n'), "{e}");

        let bad_env = write(dir.path(), "k.env", "KICK_KEY SECRETVALUE\n");
        let e = Config::load_with_env(&Source::File(bad_env), &no_env).unwrap_err();
        assert!(!e.to_string().contains("SECRETVALUE"), "{e}");
        let bad_env = write(dir.path(), "k.env", "KICK_KEY SECRET=VALUE\n");
        let e = Config::load_with_env(&Source::File(bad_env), &no_env).unwrap_err();
        assert!(!e.to_string().contains("SECRET"), "{e}");
        let bad_env = write(dir.path(), "k.env", "KICK_KEY=\"SECRETVALUE\n");
        let e = Config::load_with_env(&Source::File(bad_env), &no_env).unwrap_err();
        assert!(!e.to_string().contains("SECRETVALUE"), "{e}");
    }

    #[test]
    fn toml_file_lower_case_names_and_numbers_as_integers_or_strings() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "kick.toml",
            r#"
                # comment
                kick_url = "rtmps://ingest.example.com/app/"
                kick_key = "sk_abc"
                offline_video_path = "/srv/o.mp4"
                rtmp_port = 1937
                out_res = "720"
                poll_interval = 0.25
                kill_grace = 5
            "#,
        );
        let c = Config::load_with_env(&Source::File(path), &no_env).unwrap();
        assert_eq!(c.instance, "kick");
        assert_eq!(c.kick_url, "rtmps://ingest.example.com/app");
        assert_eq!(c.kick_key.expose(), "sk_abc");
        assert_eq!(c.rtmp_port, 1937);
        assert_eq!(c.out_height, 720);
        assert_eq!(c.poll_interval, Duration::from_millis(250));
        assert_eq!(c.kill_grace, Duration::from_secs(5));
    }

    #[test]
    fn unknown_key_in_toml() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "kick.toml", "kick_ur = \"rtmp://x/app\"\n");
        let e = Config::load_with_env(&Source::File(path.clone()), &no_env).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("unknown key \"kick_ur\" in {}", path.display())
        );

        let path = write(dir.path(), "kick.toml", "KICK_URL = \"rtmp://x/app\"\n");
        let e = Config::load_with_env(&Source::File(path), &no_env).unwrap_err();
        assert!(e.to_string().contains("unknown key \"KICK_URL\""), "{e}");
        assert!(e.to_string().contains("lower case: kick_url"), "{e}");

        let path = write(
            dir.path(),
            "kick.toml",
            "[relay]\nkick_url = \"rtmp://x/app\"\n",
        );
        let e = Config::load_with_env(&Source::File(path), &no_env).unwrap_err();
        assert!(e.to_string().starts_with("unknown key \"relay\""), "{e}");

        let path = write(dir.path(), "kick.toml", "out_res = [720]\n");
        let e = Config::load_with_env(&Source::File(path), &no_env).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("OUT_RES: expected a single value"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_in_env_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "kick.env",
            "# c\nKICK_URL=rtmp://x/app\nOUT_RESS=720\n",
        );
        let e = Config::load_with_env(&Source::File(path.clone()), &no_env).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("unknown key \"OUT_RESS\" in {}, line 3", path.display())
        );
        let path = write(dir.path(), "kick.env", "out_res=720\n");
        let e = Config::load_with_env(&Source::File(path), &no_env).unwrap_err();
        assert!(e.to_string().contains("upper case here: OUT_RES"), "{e}");
    }

    #[test]
    fn unknown_key_in_pairs() {
        let e = with(&[("KICK_UR", "x")]).unwrap_err();
        assert!(e.to_string().starts_with("unknown key \"KICK_UR\""), "{e}");
    }

    #[test]
    fn env_file_syntax() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "kick.env",
            "\u{feff}# a comment\n\
             \n\
             export KICK_URL=\"rtmps://ingest.example.com/app\"\r\n\
             \tKICK_KEY = 'sk_a\"b'  \n\
             OFFLINE_VIDEO_PATH=/srv/with space.mp4\n\
             export  OUT_RES = 720\n\
             OUT_FPS=\"\"\n\
             RTMP_APP=\"a=b\"\n\
             RTMP_STREAM_NAME=cam\n",
        );
        let c = Config::load_with_env(&Source::File(path), &no_env).unwrap();
        assert_eq!(c.kick_url, "rtmps://ingest.example.com/app");
        assert_eq!(c.kick_key.expose(), "sk_a\"b");
        assert_eq!(c.offline_video_path, PathBuf::from("/srv/with space.mp4"));
        assert_eq!(c.out_height, 720);
        assert_eq!(c.out_fps, 30, "an empty value means the default");
        assert_eq!(c.rtmp_app, "a=b");
        assert_eq!(c.rtmp_stream_name, "cam");
    }

    #[test]
    fn env_file_line_without_equals() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "kick.env",
            "KICK_URL=rtmp://x/app\n\nOUT_RES 720\n",
        );
        let e = Config::load_with_env(&Source::File(path.clone()), &no_env).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("{}, line 3: ", path.display())),
            "{text}"
        );
        assert!(matches!(e, ConfigError::Syntax { line: Some(3), .. }));
    }

    #[test]
    fn unsupported_extension_and_unreadable_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "kick.yaml", "kick_url: x\n");
        let e = Config::load_with_env(&Source::File(path), &no_env).unwrap_err();
        assert!(matches!(e, ConfigError::UnsupportedFormat { .. }), "{e}");
        assert!(e.to_string().contains("NAME.toml or NAME.env"), "{e}");

        let missing = dir.path().join("nope.toml");
        let e = Config::load_with_env(&Source::File(missing.clone()), &no_env).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("cannot read {}", missing.display())),
            "{e}"
        );
    }

    #[test]
    fn environment_overrides_file_and_ignores_unrelated_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "kick.toml",
            "kick_url = \"rtmp://file/app\"\noffline_video_path = \"/f.mp4\"\nout_res = 720\nout_fps = 25\n",
        );
        let env = env_from(&[
            ("OUT_RES", "480"),
            ("PATH", "/usr/bin"),
            ("out_fps", "60"),
            ("HOME", "/root"),
            ("KICK_KEY", ""),
        ]);
        let c = Config::load_with_env(&Source::File(path), &env).unwrap();
        assert_eq!(c.out_height, 480, "environment wins over the file");
        assert_eq!(c.out_fps, 25, "lower-case variables are not keys");
        assert_eq!(c.kick_url, "rtmp://file/app");
    }

    #[test]
    fn bad_environment_value_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "kick.env",
            "KICK_URL=rtmp://file/app\nOFFLINE_VIDEO_PATH=/f.mp4\nZMQ_PORT=1\n",
        );
        let env = env_from(&[("ZMQ_PORT", "x")]);
        let e = Config::load_with_env(&Source::File(path.clone()), &env).unwrap_err();
        assert!(e.to_string().starts_with("ZMQ_PORT: \"x\""), "{e}");
        assert!(e.to_string().ends_with("[from the environment]"), "{e}");

        let env = env_from(&[]);
        let path = write(
            dir.path(),
            "kick.env",
            "KICK_URL=rtmp://file/app\nOFFLINE_VIDEO_PATH=/f.mp4\nZMQ_PORT=y\n",
        );
        let e = Config::load_with_env(&Source::File(path.clone()), &env).unwrap_err();
        assert!(
            e.to_string()
                .ends_with(&format!("[from {}]", path.display())),
            "{e}"
        );
    }

    #[test]
    fn instance_lookup_in_config_dir() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "kick.toml",
            "kick_url = \"rtmp://toml/app\"\noffline_video_path = \"/t.mp4\"\nout_res = 720\nout_fps = 25\n",
        );
        let dir_text = dir.path().to_str().unwrap();
        let env = env_from(&[("RELAY_CONFIG_DIR", dir_text)]);
        let c = Config::load_with_env(&Source::Instance("kick".into()), &env).unwrap();
        assert_eq!(c.instance, "kick");
        assert_eq!((c.out_height, c.out_fps), (720, 25));

        // The .env file overrides the .toml file, the environment both.
        write(dir.path(), "kick.env", "OUT_RES=480\nOUT_FPS=50\n");
        let env = env_from(&[("RELAY_CONFIG_DIR", dir_text), ("OUT_FPS", "60")]);
        let c = Config::load_with_env(&Source::Instance("kick".into()), &env).unwrap();
        assert_eq!((c.out_height, c.out_fps), (480, 60));
        assert_eq!(c.kick_url, "rtmp://toml/app");

        // .env alone is enough.
        std::fs::remove_file(dir.path().join("kick.toml")).unwrap();
        let e = Config::load_with_env(&Source::Instance("kick".into()), &env).unwrap_err();
        assert!(e.to_string().starts_with("KICK_URL: required"), "{e}");
    }

    #[test]
    fn missing_instance_names_both_paths() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_from(&[("RELAY_CONFIG_DIR", dir.path().to_str().unwrap())]);
        let e = Config::load_with_env(&Source::Instance("kick".into()), &env).unwrap_err();
        let d = dir.path().display();
        assert_eq!(
            e.to_string(),
            format!("no configuration for instance \"kick\": neither {d}/kick.toml nor {d}/kick.env exists")
        );
    }

    #[test]
    fn default_config_dir() {
        let e = Config::load_with_env(&Source::Instance("no-such-instance-x".into()), &no_env)
            .unwrap_err();
        assert!(
            e.to_string().contains(
                "neither /etc/relay/no-such-instance-x.toml nor /etc/relay/no-such-instance-x.env"
            ),
            "{e}"
        );
    }

    #[test]
    fn instance_name_must_be_plain() {
        for name in ["", "../etc/passwd", "a/b", ".hidden"] {
            let e = Config::load_with_env(&Source::Instance(name.into()), &no_env).unwrap_err();
            assert!(matches!(e, ConfigError::InstanceName(_)), "{name}: {e}");
        }
    }

    #[test]
    fn exit_code_is_sysexits_config() {
        assert_eq!(EX_CONFIG, 78);
    }
}
