//! Layers the sources over the defaults and turns the text into a typed
//! [`Config`]: each key through its parser from the table, then the rules
//! that tie keys together.

use super::keys::{Draft, Fallback, KEYS};
use super::sources::Layer;
use super::{Config, ConfigError, LowBitrate};

/// Reads every key from the last of `layers` that sets it (or its default),
/// then applies the cross-key rules. The first problem found is returned,
/// naming its key and the source its value came from.
pub(super) fn assemble(instance: &str, layers: &[Layer]) -> Result<Config, ConfigError> {
    let mut draft = Draft {
        config: Config::unset(instance),
        stats_url: None,
        low_bitrate_bps: None,
        low_bitrate_window: None,
    };
    for key in &KEYS {
        let set = layers
            .iter()
            .rev()
            .find_map(|layer| layer.get(key).map(|value| (value, &layer.origin)));
        let (value, origin) = match (set, key.default) {
            (Some((value, origin)), _) => (value, Some(origin)),
            (None, Fallback::Text(text)) => (text, None),
            (None, Fallback::Required) => return Err(ConfigError::Missing { key: key.name }),
            (None, Fallback::Off | Fallback::Derived(_)) => continue,
        };
        (key.parse)(&mut draft, value.trim()).map_err(|problem| ConfigError::Invalid {
            key: key.name,
            problem,
            origin: origin.cloned(),
        })?;
    }
    let origin_of = |name: &str| {
        layers
            .iter()
            .rev()
            .find(|layer| layer.sets(name))
            .map(|layer| layer.origin.clone())
    };
    finish(draft, &origin_of)
}

/// The rules between keys.
fn finish(draft: Draft, origin_of: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let mut config = draft.config;
    config.live.stats_url = draft
        .stats_url
        .unwrap_or_else(|| format!("http://127.0.0.1:{}/rtmp_stat", config.live.http_stats_port));
    let both_or_neither = |set: &'static str, missing: &str| ConfigError::Invalid {
        key: set,
        problem: format!("set {missing} too, or neither (they work together)"),
        origin: origin_of(set),
    };
    config.policy.low_bitrate = match (draft.low_bitrate_bps, draft.low_bitrate_window) {
        (Some(bps), Some(window)) => Some(LowBitrate { bps, window }),
        (None, None) => None,
        (Some(_), None) => return Err(both_or_neither("LOW_BITRATE_KBPS", "LOW_BITRATE_SECS")),
        (None, Some(_)) => return Err(both_or_neither("LOW_BITRATE_SECS", "LOW_BITRATE_KBPS")),
    };
    Ok(config)
}
