//! Layers the sources over the defaults and turns the text into a typed
//! [`Config`]: each key through its parser from the table, and the rules
//! that tie keys together.

use super::keys::{destination_keys, Draft, Fallback, KEYS, KICK};
use super::parse::{parse_kick_key, parse_kick_url};
use super::sources::Layer;
use super::{Config, ConfigError, Destination, LowBitrate, Named, Secret};

/// Where the value of a key came from, for error messages.
type OriginOf<'a> = &'a dyn Fn(&str) -> Option<String>;

/// A rule between keys, checked right after the last key it reads, so that
/// problems are still found in the order of the table.
struct Rule {
    after: &'static str,
    apply: fn(&mut Draft, OriginOf) -> Result<(), ConfigError>,
}

const RULES: [Rule; 2] = [
    Rule {
        after: "STATS_URL",
        apply: |d, _| {
            let port = d.config.live.http_stats_port;
            d.config.live.stats_url = d
                .stats_url
                .take()
                .unwrap_or_else(|| format!("http://127.0.0.1:{port}/rtmp_stat"));
            Ok(())
        },
    },
    Rule {
        after: "LOW_BITRATE_SECS",
        apply: |d, origin_of| {
            let both_or_neither = |set: &'static str, missing: &str| ConfigError::Invalid {
                key: set.to_owned(),
                problem: format!("set {missing} too, or neither (they work together)"),
                origin: origin_of(set),
            };
            d.config.policy.low_bitrate = match (d.low_bitrate_bps, d.low_bitrate_window) {
                (Some(bps), Some(window)) => Some(LowBitrate { bps, window }),
                (None, None) => None,
                (Some(_), None) => {
                    return Err(both_or_neither("LOW_BITRATE_KBPS", "LOW_BITRATE_SECS"))
                }
                (None, Some(_)) => {
                    return Err(both_or_neither("LOW_BITRATE_SECS", "LOW_BITRATE_KBPS"))
                }
            };
            Ok(())
        },
    },
];

/// Reads every key from the last of `layers` that sets it (or its default)
/// and applies the rules between keys. The first problem found is returned,
/// naming its key and the source its value came from.
pub(super) fn assemble(instance: &str, layers: &[Layer]) -> Result<Config, ConfigError> {
    let origin_of = |name: &str| {
        layers
            .iter()
            .rev()
            .find(|layer| layer.sets(name))
            .map(|layer| layer.origin.clone())
    };
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
        let parsed = match (set, key.default) {
            (Some((value, origin)), _) => Some((value, Some(origin))),
            (None, Fallback::Text(text)) => Some((text, None)),
            // Only the destination `kick` needs KICK_URL.
            (None, Fallback::Required)
                if key.name == "KICK_URL"
                    && !draft.config.destination_names.iter().any(|n| n == KICK) =>
            {
                None
            }
            (None, Fallback::Required) => {
                return Err(ConfigError::Missing {
                    key: key.name.to_owned(),
                })
            }
            (None, Fallback::Off | Fallback::Derived(_)) => None,
        };
        if let Some((value, origin)) = parsed {
            (key.parse)(&mut draft, value.trim()).map_err(|problem| ConfigError::Invalid {
                key: key.name.to_owned(),
                problem,
                origin: origin.cloned(),
            })?;
        }
        for rule in RULES.iter().filter(|rule| rule.after == key.name) {
            (rule.apply)(&mut draft, &origin_of)?;
        }
    }
    let mut config = draft.config;
    config.notices = layers.iter().flat_map(|l| l.notices.clone()).collect();
    config.destinations = destinations(&config, layers)?;
    Ok(config)
}

/// Every destination DESTINATIONS names, in its order: `kick` from the
/// table's KICK_URL and KICK_KEY, the others from their `NAME_URL` and
/// `NAME_KEY`, read with the same rules. A destination key no name claims
/// is an unknown key.
fn destinations(config: &Config, layers: &[Layer]) -> Result<Vec<Named>, ConfigError> {
    let mut out = Vec::new();
    for name in &config.destination_names {
        if name == KICK {
            out.push(Named {
                name: name.clone(),
                destination: config.destination.clone(),
            });
            continue;
        }
        let [url_key, key_key] = destination_keys(name);
        let set = |upper: &str| {
            layers
                .iter()
                .rev()
                .find_map(|l| l.get_destination(upper).map(|v| (v, l.origin.clone())))
        };
        let invalid = |key: &String, origin: String| {
            let key = key.clone();
            move |problem| ConfigError::Invalid {
                key,
                problem,
                origin: Some(origin),
            }
        };
        let Some((url, origin)) = set(&url_key) else {
            return Err(ConfigError::Missing { key: url_key });
        };
        let url = parse_kick_url(url).map_err(invalid(&url_key, origin))?;
        let key = match set(&key_key) {
            Some((key, origin)) => parse_kick_key(key).map_err(invalid(&key_key, origin))?,
            None => Secret::default(),
        };
        out.push(Named {
            name: name.clone(),
            destination: Destination { url, key },
        });
    }
    for layer in layers {
        for upper in layer.destination_keys() {
            let claimed = config
                .destination_names
                .iter()
                .any(|n| n != KICK && destination_keys(n).iter().any(|k| k == upper));
            if !claimed {
                return Err(ConfigError::UnknownKey {
                    key: upper.to_owned(),
                    origin: layer.origin.clone(),
                    line: None,
                    hint: Some("DESTINATIONS names no destination it would configure".to_owned()),
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_follows_a_key() {
        for rule in &RULES {
            assert!(KEYS.iter().any(|k| k.name == rule.after), "{}", rule.after);
        }
    }
}
