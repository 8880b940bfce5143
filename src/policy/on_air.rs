//! Changes of what is on air: going live (and the holds that delay it),
//! going offline, and the operator's overrides.

use std::net::IpAddr;
use std::time::Instant;

use tracing::info;

use super::{Action, Hold, Input, OnAir, Pending, Policy, Why, RETURN_WINDOW};
use crate::observe::api::{Mode, Reply};

impl Policy {
    /// Sends a switch to `input` and waits for its result.
    pub(super) fn select(&mut self, input: Input, pending: Pending) {
        self.pending.push_back(pending);
        self.out.push(Action::Select(input));
    }

    /// The first source in priority order whose ingest session has flowed
    /// for the pump's pre-roll, with an allowed publisher, and a bitrate
    /// above LOW_BITRATE_KBPS if any source has one; else the first such
    /// source below it (which is then held off air for its bitrate).
    pub(super) fn live_candidate(&self) -> Option<(u64, Option<IpAddr>)> {
        let ready = |s: &super::source::Source| {
            let session = s.ready.filter(|r| s.session() == Some(*r))?;
            let publisher = s.publisher.as_ref().filter(|p| p.allowed)?;
            Some((session, publisher.publisher.address))
        };
        self.sources
            .iter()
            .filter(|s| s.low_bitrate.is_none())
            .find_map(ready)
            .or_else(|| self.sources.iter().find_map(ready))
    }

    /// When session `session`'s source's bitrate last came back above
    /// LOW_BITRATE_KBPS.
    fn low_cleared_at(&self, session: u64) -> Option<Instant> {
        self.source_of(session)
            .and_then(|i| self.sources[i].low_cleared_at)
    }

    fn going_live(&self) -> bool {
        self.pending
            .iter()
            .any(|p| matches!(p, Pending::GoLive { .. }))
    }

    pub(super) fn maybe_go_live(&mut self, now: Instant) {
        let on_air = match self.on_air {
            OnAir::Live { session, .. } => Some(session),
            OnAir::Offline => None,
        };
        // A manual live holds the feed on air; a higher source in
        // LIVE_SOURCES takes over only in automatic mode.
        if (on_air.is_some() && self.manual.is_some())
            || self.manual == Some(Input::Offline)
            || self.going_live()
        {
            return;
        }
        let Some((session, address)) = self.live_candidate() else {
            return;
        };
        // The candidate is the first ready source: the one on air, unless
        // a source before it in LIVE_SOURCES is back.
        if on_air == Some(session) {
            return;
        }
        if let Some((hold, why)) = self.hold_reason(now) {
            if self
                .held
                .as_ref()
                .is_none_or(|(s, h, _)| *s != session || *h != hold)
            {
                info!(session, "live frames held off air: {why}");
            }
            self.held = Some((session, hold, why));
            return;
        }
        // Held and now let go: because its bitrate recovered during this
        // run of frames, or because the run lasted LIVE_STABLE_SECS.
        let flowing_since = self.flowing_since(session);
        let recovered = self
            .low_cleared_at(session)
            .zip(flowing_since)
            .is_some_and(|(cleared, flowing)| cleared > flowing);
        let (reason, why) = match self.held.take() {
            Some((s, _, _)) if s == session && recovered => (
                "live bitrate back above LOW_BITRATE_KBPS".to_string(),
                Why::BitrateRecovered,
            ),
            Some((s, _, _)) if s == session => (
                format!(
                    "publisher back and stable for {} s (LIVE_STABLE_SECS)",
                    self.settings.live_stable.as_secs_f64()
                ),
                Why::PublisherStable,
            ),
            _ => (
                "publisher allowed and frames flowing".to_string(),
                Why::PublisherLive,
            ),
        };
        if on_air.is_some() {
            self.take_over(now, session, address, reason, why);
        } else {
            self.go_live(session, address, reason, why, None);
        }
    }

    /// Puts another source's frames on the live input while live stays on
    /// air: no switch of the output, so no offline frame in between.
    pub(super) fn take_over(
        &mut self,
        now: Instant,
        session: u64,
        publisher: Option<IpAddr>,
        reason: String,
        why: Why,
    ) {
        let kind = self.kind_of(session).map_or("live", |k| k.name());
        let from = self.on_air_source().map_or("live", |k| k.name());
        info!(
            session,
            source = kind,
            from,
            publisher = %super::show_addr(publisher),
            "on air: live from {kind} ({reason})"
        );
        self.out.push(Action::Feed { session });
        *self.switches.entry((Input::Live, why)).or_default() += 1;
        self.on_air = OnAir::Live {
            session,
            publisher,
            since: now,
        };
        self.held = None;
        self.last_switch = Some(super::LastSwitch {
            at: now,
            to: Input::Live,
            reason,
            why,
        });
    }

    fn flowing_since(&self, session: u64) -> Option<Instant> {
        self.sources
            .iter()
            .find(|s| s.flowing == Some(session))
            .and_then(|s| s.flowing_since)
    }

    /// Why an allowed publisher whose frames flow must stay off air for
    /// now, if it must; sets the timer to look again.
    fn hold_reason(&mut self, now: Instant) -> Option<(Hold, String)> {
        let low = self
            .live_candidate()
            .and_then(|(s, _)| self.source_of(s))
            .and_then(|i| self.sources[i].low_bitrate);
        if let Some(bps) = low {
            return Some((
                Hold::LowBitrate,
                format!(
                    "live bitrate {} kb/s is below LOW_BITRATE_KBPS {}",
                    bps / 1000,
                    self.settings.low_bitrate.map_or(0, |l| l.bps / 1000)
                ),
            ));
        }
        let stable = self.settings.live_stable;
        let (session, _) = self.live_candidate()?;
        let since = self.flowing_since(session)?;
        let returning = self
            .last_drop
            .is_some_and(|drop| since.saturating_duration_since(drop) < RETURN_WINDOW);
        if !returning || stable.is_zero() {
            return None;
        }
        let from = match self.low_cleared_at(session) {
            Some(t) if t > since => t,
            _ => since,
        };
        let until = from + stable;
        if now >= until {
            return None;
        }
        self.set_hold_timer(Some(until));
        Some((
            Hold::Unstable,
            format!(
                "back within {} s of a failover; on air after {} s of steady frames (LIVE_STABLE_SECS)",
                RETURN_WINDOW.as_secs(),
                stable.as_secs_f64()
            ),
        ))
    }

    fn go_live(
        &mut self,
        session: u64,
        publisher: Option<IpAddr>,
        reason: String,
        why: Why,
        manual: Option<Mode>,
    ) {
        self.out.push(Action::Feed { session });
        self.select(
            Input::Live,
            Pending::GoLive {
                session,
                publisher,
                reason,
                why,
                manual,
            },
        );
    }

    pub(super) fn go_offline(&mut self, now: Instant, reason: &str, why: Why) {
        // A manual live holds only while live is on air.
        if self.manual == Some(Input::Live) {
            self.manual = None;
        }
        let was = std::mem::replace(&mut self.on_air, OnAir::Offline);
        let live_for = match was {
            OnAir::Live { since, .. } => {
                *self.switches.entry((Input::Offline, why)).or_default() += 1;
                now.saturating_duration_since(since)
            }
            OnAir::Offline => std::time::Duration::ZERO,
        };
        self.select(
            Input::Offline,
            Pending::GoOffline {
                reason: reason.to_string(),
                why,
                live_for,
            },
        );
    }

    /// `relay switch live|offline|auto`.
    pub(super) fn on_manual(&mut self, now: Instant, to: Mode) {
        let reason = format!("manual: relay switch {}", to.name());
        match to {
            Mode::Offline => {
                self.manual = Some(Input::Offline);
                // Also when already offline: it re-asserts the selection and
                // the log shows the operator's decision.
                self.go_offline(now, &reason, Why::Manual);
            }
            Mode::Live => {
                let Some((session, address)) = self.live_candidate() else {
                    let flowing = self.sources.iter().any(|s| s.flowing.is_some());
                    let why = if flowing {
                        "live frames only just started; try again in a moment"
                    } else {
                        "no live frames are flowing (nobody allowed is publishing)"
                    };
                    self.out.push(Action::Reply(Box::new(Reply::Refused {
                        message: format!("cannot switch to live: {why}"),
                    })));
                    return;
                };
                self.manual = Some(Input::Live);
                if matches!(self.on_air, OnAir::Live { .. }) {
                    info!("on air: live ({reason})");
                    self.last_switch = Some(super::LastSwitch {
                        at: now,
                        to: Input::Live,
                        reason,
                        why: Why::Manual,
                    });
                } else {
                    // Answered once the output confirms the switch.
                    self.go_live(session, address, reason, Why::Manual, Some(to));
                    return;
                }
            }
            Mode::Auto => {
                let was = self.manual.take().map_or("auto", Input::name);
                // Re-evaluate at once: an allowed publisher already flowing
                // goes on air now, not at its next event.
                match (&self.on_air, self.live_candidate()) {
                    (OnAir::Offline, Some((session, address))) => {
                        let why = format!("{reason}; publisher allowed and frames flowing");
                        self.go_live(session, address, why, Why::Manual, Some(to));
                        return;
                    }
                    // Nothing changes on air, but the log shows the decision.
                    (OnAir::Live { .. }, _) => info!(was, "on air: live ({reason})"),
                    (OnAir::Offline, None) => {
                        info!(was, "on air: offline video ({reason}; nobody live)")
                    }
                }
            }
        }
        // Queued behind the switch: the daemon answers once it is done.
        self.reply_switched(to);
    }

    /// Answers the operator with the state after a switch.
    pub(super) fn reply_switched(&mut self, to: Mode) {
        let state = self.state_name();
        self.out.push(Action::Reply(Box::new(Reply::Switched {
            state,
            message: format!("relay switch {}: now {}", to.name(), state.text()),
        })));
    }
}
