//! What the daemon shows: `relay status`, `/metrics` and systemd's STATUS line.

use super::shell::Daemon;
use super::*;

impl Daemon {
    /// Seconds the output has been streaming, while it is.
    fn streaming_since(&self) -> Option<Instant> {
        self.output
            .since
            .filter(|_| self.output.last_progress.is_some())
    }

    /// The ingest of the source on air, else of the first source.
    fn ingest_pid(&self) -> Option<u32> {
        let on_air = self.policy.on_air_source();
        self.ingests
            .iter()
            .find(|i| Some(i.source) == on_air)
            .or_else(|| {
                let first = self.policy.source_kinds().first().copied();
                self.ingests.iter().find(|i| Some(i.source) == first)
            })
            .map(|i| i.child.pid)
    }

    /// What `relay status` shows.
    pub(super) fn status(&self) -> api::Status {
        let publisher = self.policy.publisher();
        let held = self.policy.held();
        api::Status {
            instance: self.config.instance.clone(),
            state: self.policy.state_name(),
            publisher: publisher.map(|(p, _)| show_addr(p.address)),
            publisher_allowed: publisher.map(|(_, allowed)| allowed),
            live_bitrate_bps: self.policy.live_bitrate(),
            output_uptime_s: self.streaming_since().map(|t| t.elapsed().as_secs()),
            output_restarts: self.output.restarts,
            ingest_restarts: self.policy.ingest_restarts(),
            last_switch: self.policy.last_switch().map(|s| LastSwitch {
                to: s.to.name().to_string(),
                seconds_ago: s.at.elapsed().as_secs(),
                reason: s.reason.clone(),
                kind: s.why.name().to_string(),
            }),
            live_frames: self.pump_stats.live_frames.load(Ordering::Relaxed),
            filler_frames: self.pump_stats.filler_frames.load(Ordering::Relaxed),
            dropped_ticks: self.pump_stats.dropped_ticks.load(Ordering::Relaxed),
            starved_holds: self.pump_stats.starved_holds.load(Ordering::Relaxed),
            held_off_air: held.map(|(_, why)| why.to_string()),
            held_kind: held.map(|(hold, _)| hold.name().to_string()),
            policy: api::Policy {
                offline_after_ms: self.config.policy.offline_after.as_millis() as u64,
                live_stable_s: self.config.policy.live_stable.as_secs_f64(),
                low_bitrate_kbps: self.config.policy.low_bitrate.map(|l| l.bps / 1000),
                low_bitrate_s: self
                    .config
                    .policy
                    .low_bitrate
                    .map(|l| l.window.as_secs_f64()),
            },
            output_pid: self.output.pid,
            ingest_pid: self.ingest_pid(),
            source: self.policy.on_air_source().map(|s| s.name().to_string()),
            last_output_exit: self.output.last_exit.as_ref().map(|e| api::OutputExit {
                kind: e.kind.to_string(),
                was_streaming: e.was_streaming,
                seconds_ago: e.at.elapsed().as_secs(),
                detail: e.detail.clone(),
            }),
            stat_page_ok: self.stats_ok,
            switch_failures: self.switch_failures,
            offline_cache: self.options.offline_cache.as_ref().map(|c| c.status()),
            destinations: self
                .destinations
                .iter()
                .map(|d| api::DestinationStatus {
                    name: d.name().to_string(),
                    url: d.handle.named.destination.masked(),
                    up: d.up(),
                    uptime_s: d.since.filter(|_| d.up()).map(|t| t.elapsed().as_secs()),
                    reconnects: d.reconnects,
                    last_error: d.last_error.clone(),
                    bitrate_bps: d.bitrate_bps,
                    pid: d.pid,
                    dropped_gops: self.fanout.dropped_gops(d.name()),
                })
                .collect(),
            reloads: self.options.reloads.as_ref().map_or(0, |r| r.borrow().0),
            last_reload: self.options.reloads.as_ref().and_then(|r| {
                r.borrow()
                    .1
                    .as_ref()
                    .map(|(at, outcome, detail)| api::LastReload {
                        outcome: outcome.to_string(),
                        seconds_ago: at.elapsed().as_secs(),
                        detail: detail.clone(),
                    })
            }),
        }
    }

    /// What `/metrics` shows.
    pub(super) fn snapshot(&self) -> metrics::Snapshot {
        metrics::Snapshot {
            instance: self.config.instance.clone(),
            state: self.policy.state_name(),
            switches: self
                .policy
                .switches()
                .map(|(to, why, n)| ((to.name(), why.name()), n))
                .collect(),
            output_restarts: self.output.restarts,
            ingest_restarts: self.policy.ingest_restarts(),
            publisher_connected: self.policy.publisher().is_some(),
            live_source: self.policy.on_air_source().map(|s| s.name()),
            live_sources: self
                .policy
                .source_kinds()
                .iter()
                .map(|s| s.name())
                .collect(),
            live_bitrate_bps: self.policy.live_bitrate(),
            output_uptime_s: self.streaming_since().map(|t| t.elapsed().as_secs_f64()),
            output_fps: self.output.rates.map(|(fps, _)| fps),
            output_speed: self.output.rates.map(|(_, speed)| speed),
            destinations: self
                .destinations
                .iter()
                .map(|d| metrics::Destination {
                    name: d.name().to_string(),
                    up: d.up(),
                    uptime_s: d
                        .since
                        .filter(|_| d.up())
                        .map(|t| t.elapsed().as_secs_f64()),
                    reconnects: d.reconnects,
                    sent_bytes: d.handle.sent.load(Ordering::Relaxed),
                    dropped_gops: self.fanout.dropped_gops(d.name()),
                })
                .collect(),
        }
    }

    pub(super) fn status_line(&self) -> String {
        let mut parts = vec![self.policy.state_name().text().to_string()];
        if let Some(source) = self.policy.on_air_source() {
            parts.push(format!("from {}", source.name()));
        }
        match (self.policy.on_air_publisher(), self.policy.publisher()) {
            (Some(on_air), _) => parts.push(format!("publisher {}", show_addr(on_air))),
            (None, Some((p, false))) => {
                parts.push(format!("publisher {} refused", show_addr(p.address)))
            }
            (None, Some((p, true))) => parts.push(format!("publisher {}", show_addr(p.address))),
            (None, None) => parts.push("no publisher".to_string()),
        }
        if let Some(bps) = self.policy.live_bitrate() {
            parts.push(format!("{:.1} Mb/s", bps as f64 / 1e6));
        }
        match (self.output.since, self.output.last_progress) {
            (Some(since), Some(_)) => {
                parts.push(format!("output up {}", show_duration(since.elapsed())))
            }
            (Some(_), None) => parts.push("output starting".to_string()),
            _ => parts.push("output restarting".to_string()),
        }
        if self.output.restarts > 0 {
            parts.push(format!("{} output restarts", self.output.restarts));
        }
        let up = self.destinations.iter().filter(|d| d.up()).count();
        parts.push(format!(
            "{up} of {} destinations up",
            self.destinations.len()
        ));
        parts.join(" · ")
    }
}

pub(super) fn show_addr(addr: Option<IpAddr>) -> String {
    addr.map_or_else(|| "unknown".to_string(), |a| a.to_string())
}

/// "42s", "2m05s", "3h12m": for status lines.
pub fn show_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(show_duration(Duration::from_secs(42)), "42s");
        assert_eq!(show_duration(Duration::from_secs(125)), "2m05s");
        assert_eq!(show_duration(Duration::from_secs(3 * 3600 + 720)), "3h12m");
    }
}
