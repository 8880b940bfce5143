//! What a reload does with a new configuration, decided from the key table
//! alone: nothing, apply some settings at once, restart only the offline
//! source, or restart the pipeline.

use super::keys::{Applies, Key, KEYS};
use super::Config;

/// What a reload from one valid configuration to another must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadPlan {
    /// Nothing changed.
    Unchanged,
    /// Only settings the running daemon applies at once: no FFmpeg
    /// restarts, but the pushers of destinations that changed, came or went.
    ApplyAtOnce,
    /// A new offline video: only the offline source restarts, on it. With
    /// `at_once`, settings that apply at once changed too.
    NewOfflineVideo { at_once: bool },
    /// Anything else: the pipeline restarts, and the output reconnects once.
    Restart,
}

impl ReloadPlan {
    /// The same plan when the offline video's file itself was replaced
    /// (something a configuration cannot show): the offline source must
    /// restart even if no key changed.
    pub fn with_offline_file_replaced(self) -> ReloadPlan {
        match self {
            ReloadPlan::Unchanged => ReloadPlan::NewOfflineVideo { at_once: false },
            ReloadPlan::ApplyAtOnce => ReloadPlan::NewOfflineVideo { at_once: true },
            other => other,
        }
    }
}

/// What each changed key requires, from its entry in the key table.
fn required_by(key: &Key, old: &str, new: &str) -> Applies {
    match key.applies {
        // Setting or clearing it restarts, so that start-up says again what
        // it does (for PUBLISH_KEY: what protects the stream).
        Applies::AtOnceWhileSet if old.is_empty() || new.is_empty() => Applies::Restart,
        Applies::AtOnceWhileSet => Applies::AtOnce,
        other => other,
    }
}

/// The keys whose values differ between `old` and `new`.
pub fn changed_keys(old: &Config, new: &Config) -> Vec<&'static Key> {
    KEYS.iter()
        .filter(|key| (key.value)(old) != (key.value)(new))
        .collect()
}

/// Decides what a reload from `old` to `new` must do.
pub fn classify(old: &Config, new: &Config) -> ReloadPlan {
    if old.instance != new.instance {
        return ReloadPlan::Restart;
    }
    let (mut at_once, mut offline) = (false, false);
    for key in changed_keys(old, new) {
        match required_by(key, &(key.value)(old), &(key.value)(new)) {
            Applies::AtOnce | Applies::AtOnceWhileSet | Applies::Destination => at_once = true,
            Applies::OfflineSource => offline = true,
            Applies::Restart => return ReloadPlan::Restart,
        }
    }
    // Other destinations' keys are not in the table.
    at_once |= old.destinations != new.destinations;
    match (offline, at_once) {
        (true, at_once) => ReloadPlan::NewOfflineVideo { at_once },
        (false, true) => ReloadPlan::ApplyAtOnce,
        // Every field is some key's value; should one ever not be, a
        // difference there must not pass for "unchanged".
        (false, false) if old != new => ReloadPlan::Restart,
        (false, false) => ReloadPlan::Unchanged,
    }
}
