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
//!
//! The parts: `keys.rs` declares every key once (name, default, parser,
//! reload class, secrecy, documentation); `sources.rs` and `env_file.rs`
//! read the layers; `parse.rs` turns one value's text into its type;
//! `validate.rs` applies the layers, the parsers and the rules between
//! keys; `reload.rs` decides what a reload does; `secret.rs` keeps secrets
//! out of logs.

mod env_file;
mod keys;
mod parse;
mod reload;
mod secret;
mod sources;
mod validate;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use keys::{destination_keys, key, Applies, Fallback, Key, Secrecy, KEYS, KICK};
pub use parse::{width_16_9, AllowedPublishers, Bitrate, LiveSource, LowBitrate};
pub use reload::{changed_keys, classify, ReloadPlan};
pub use secret::{OutputTarget, Secret};
pub use sources::config_dir;

use secret::{mask_url, split_path};
use sources::{environment_layer, file_instance_name, file_layer, instance_layers, pairs_layer};

/// Exit status for configuration errors (`EX_CONFIG` from sysexits.h), so
/// systemd and scripts can tell "fix the config" apart from a crash.
pub const EX_CONFIG: i32 = 78;

/// Where to read the configuration from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `NAME.toml` and/or `NAME.env` in `$RELAY_CONFIG_DIR` (default `/etc/relay`).
    Instance(String),
    /// One file; its extension (`.toml` or `.env`) selects the format.
    File(PathBuf),
}

/// The validated configuration, grouped by concern. Which key sets which
/// field, and its default, is in [`KEYS`].
#[derive(Clone, PartialEq)]
pub struct Config {
    /// NAME for `Source::Instance`, the file stem for `Source::File`.
    pub instance: String,
    /// OFFLINE_VIDEO_PATH.
    pub offline_video_path: PathBuf,
    /// KICK_URL and KICK_KEY: the destination `kick` (empty when
    /// DESTINATIONS does not name it).
    pub destination: Destination,
    /// DESTINATIONS, as written.
    pub destination_names: Vec<String>,
    /// Every destination DESTINATIONS names, in its order, `kick` included.
    pub destinations: Vec<Named>,
    pub encoding: Encoding,
    pub live: Live,
    pub srt: Srt,
    pub policy: SwitchPolicy,
    pub supervision: Supervision,
    pub endpoints: Endpoints,
    /// Keys relay ignores that the files set, each with why: logged once
    /// at start ([`keys::IGNORED`]).
    pub notices: Vec<String>,
}

/// Where the output goes (KICK_URL, KICK_KEY).
#[derive(Clone, Default, PartialEq)]
pub struct Destination {
    /// Without a trailing slash. With an empty `key` it may end in the
    /// stream key, so it is shown masked.
    pub url: String,
    pub key: Secret,
}

/// One destination and its name.
#[derive(Debug, Clone, PartialEq)]
pub struct Named {
    pub name: String,
    pub destination: Destination,
}

/// What the output FFmpeg encodes (OUT_RES, OUT_FPS, the bitrates, the
/// sample rate).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Encoding {
    /// 16:9 to `height`, rounded to even ([`width_16_9`]).
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub vid_bitrate: Bitrate,
    pub max_bitrate: Bitrate,
    pub buffer_size: Bitrate,
    pub audio_bitrate: Bitrate,
    pub audio_samplerate: u32,
}

/// The live feed: the local nginx-rtmp it comes from, how its stat page is
/// read, and who may publish it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Live {
    pub rtmp_host: String,
    pub rtmp_port: u16,
    pub rtmp_app: String,
    pub rtmp_stream_name: String,
    pub http_stats_port: u16,
    pub stats_url: String,
    pub poll_interval: Duration,
    pub allowed_publishers: AllowedPublishers,
    /// What a publisher must send as `?key=` (see `nginx/publish_auth.rs`); empty:
    /// anyone who knows the stream name may publish.
    pub publish_key: Secret,
    /// LIVE_SOURCES: the live sources in priority order, each once.
    pub sources: Vec<LiveSource>,
}

/// The SRT listener (SRT_HOST, SRT_PORT, SRT_PASSPHRASE, SRT_LATENCY_MS,
/// SRT_MAX_RTT_MS); it listens only with `srt` in LIVE_SOURCES.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Srt {
    /// Empty: every address.
    pub host: String,
    pub port: u16,
    /// Turns on SRT encryption; empty: none (relay warns at start).
    pub passphrase: Secret,
    /// The receiver's latency budget for retransmissions.
    pub latency: Duration,
}

/// When the offline video goes on air and when the live feed returns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SwitchPolicy {
    /// No live frame for this long: the offline video goes on air.
    pub offline_after: Duration,
    /// A publisher returning soon after a failover must flow this long
    /// before it goes back on air; zero: at once.
    pub live_stable: Duration,
    /// Below this bitrate for this long: offline (LOW_BITRATE_KBPS/SECS).
    pub low_bitrate: Option<LowBitrate>,
}

/// How FFmpeg children are stopped and restarted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Supervision {
    pub kill_grace: Duration,
    pub crash_backoff: Duration,
}

/// Local ports and addresses the relay listens on or talks to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Endpoints {
    /// The output FFmpeg's ZMQ control socket on 127.0.0.1.
    pub zmq_port: u16,
    /// Where to serve Prometheus metrics; `None`: nowhere.
    pub metrics_addr: Option<SocketAddr>,
    /// Port on 127.0.0.1 of the endpoint for nginx's `on_publish`; 0: none.
    pub publish_auth_port: u16,
}

// Not derived: the URL may end in the stream key.
impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Destination")
            .field("url", &mask_url(&self.url, self.key.is_empty()))
            .field("key", &self.key)
            .finish()
    }
}

// By key, from the table, so every key is shown and every secret masked.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("Config");
        out.field("instance", &self.instance);
        for key in &KEYS {
            out.field(key.name, &format_args!("{}", key.shown(self)));
        }
        out.field("destinations", &self.destinations);
        out.finish()
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
        "{}: unsupported configuration file type; name it NAME.toml, NAME.env or .env.NAME",
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
    Missing { key: String },

    #[error("{key}: {problem}{}", origin.as_ref().map(|o| format!(" [from {o}]")).unwrap_or_default())]
    Invalid {
        key: String,
        problem: String,
        origin: Option<String>,
    },

    #[error(
        "{}: holds a stream or publish key and every user on this host can read it; run: chmod 0640 {} && chown root:relay {}",
        path.display(), path.display(), path.display()
    )]
    Exposed { path: PathBuf },
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
            Source::File(path) => (file_instance_name(path), vec![file_layer(path)?]),
        };
        let mut environment = environment_layer(env);
        // Other destinations' keys in the environment: those of the names
        // DESTINATIONS has where it is set last.
        let names = layers
            .iter()
            .chain(std::iter::once(&environment))
            .rev()
            .find_map(|l| l.get(keys::key("DESTINATIONS").expect("in the table")))
            .map_or_else(Vec::new, |v| {
                v.split(',')
                    .map(|n| n.trim().to_owned())
                    .collect::<Vec<_>>()
            });
        sources::environment_destinations(&mut environment, &names, env);
        layers.push(environment);
        let config = validate::assemble(&instance, &layers)?;
        let secret_files = layers
            .iter()
            .filter(|layer| layer.holds_secret())
            .filter_map(|layer| layer.file.as_deref());
        for path in secret_files {
            sources::refuse_if_world_readable(path)?;
        }
        Ok(config)
    }

    /// Builds a configuration from `KEY=VALUE` style pairs alone: no files,
    /// no environment. Unknown keys are refused as in a `.env` file.
    pub fn from_pairs(instance: &str, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        validate::assemble(instance, &[pairs_layer(pairs)?])
    }

    /// The starting point validation fills in: every field is then set by
    /// its key's parser or default, or by a cross-key rule.
    fn unset(instance: &str) -> Config {
        Config {
            instance: instance.to_owned(),
            offline_video_path: PathBuf::new(),
            destination: Destination::default(),
            destination_names: Vec::new(),
            destinations: Vec::new(),
            encoding: Encoding::default(),
            live: Live::default(),
            srt: Srt::default(),
            policy: SwitchPolicy::default(),
            supervision: Supervision::default(),
            endpoints: Endpoints::default(),
            notices: Vec::new(),
        }
    }

    /// Where FFmpeg publishes to (`kick`), split so that the stream key
    /// stays off FFmpeg's command line, which every local user may read.
    pub fn output_target(&self) -> OutputTarget {
        self.destination.target()
    }

    /// Every destination's stream key: what must never reach a log line.
    pub fn stream_keys(&self) -> Vec<String> {
        self.destinations
            .iter()
            .filter_map(|d| d.destination.target().stream_name)
            .map(|s| s.expose().to_string())
            .collect()
    }

    /// The destination `kick` with its secret parts replaced by `****`, for logs.
    pub fn output_url_masked(&self) -> String {
        self.destination.masked()
    }

    /// The local nginx-rtmp stream carrying the live feed.
    pub fn live_url(&self) -> String {
        let live = &self.live;
        let host = if live.rtmp_host.contains(':') {
            format!("[{}]", live.rtmp_host)
        } else {
            live.rtmp_host.clone()
        };
        format!(
            "rtmp://{host}:{}/{}/{}",
            live.rtmp_port, live.rtmp_app, live.rtmp_stream_name
        )
    }
}

impl Destination {
    /// Where FFmpeg publishes to, split so that the stream key stays off
    /// FFmpeg's command line, which every local user may read.
    pub fn target(&self) -> OutputTarget {
        let Destination { url, key } = self;
        if !key.is_empty() {
            // The trailing slash makes FFmpeg parse the application name as
            // it would from `KICK_URL/KEY`.
            return OutputTarget {
                url: format!("{url}/"),
                stream_name: Some(key.clone()),
            };
        }
        let (scheme_authority, path) = split_path(url);
        let before_query = path.split('?').next().unwrap_or("");
        match before_query.rfind('/') {
            // "/app/KEY": the last segment is the stream name.
            Some(i) if i > 0 => OutputTarget {
                url: format!("{scheme_authority}{}", &path[..=i]),
                stream_name: Some(Secret::new(&path[i + 1..])),
            },
            _ => OutputTarget {
                url: url.clone(),
                stream_name: None,
            },
        }
    }

    /// The destination with its secret parts replaced by `****`, for logs.
    pub fn masked(&self) -> String {
        let Destination { url, key } = self;
        if key.is_empty() {
            mask_url(url, true)
        } else {
            format!("{}/****", mask_url(url, false))
        }
    }
}
