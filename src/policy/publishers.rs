//! The stat page's publishers: who is connected, who may go on air, and the
//! low-bitrate rule (LOW_BITRATE_KBPS/SECS) on their byte counts and on
//! those of an SRT caller, which relay counts itself.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::source::Seen;
use super::{Expect, Policy, SourceKind, StatSummary, Why, NO_PICTURE, RETURN_WINDOW};

impl Policy {
    pub(super) fn on_stat_page(&mut self, now: Instant, page: StatSummary) {
        let kind = SourceKind::Rtmp;
        if self.source(kind).is_none() {
            return;
        }
        let allowed_publishers = &self.settings.allowed_publishers;
        let seen = page.publisher.map(|p| Seen {
            allowed: !p.unchecked && p.address.is_some_and(|a| allowed_publishers.allows(a)),
            publisher: p,
        });
        let id = seen.as_ref().map(|s| s.publisher.id);

        let keep = self.byte_window();
        let source = self.source_mut(kind);
        let bytes_of_new_publisher = id != source.bytes.publisher();
        source.live_bps = source.bytes.update(id, page.bytes_in, now, keep);
        self.check_low_bitrate(now, kind, bytes_of_new_publisher);

        let source = self.source_mut(kind);
        let old = source.publisher.take();
        if id != old.as_ref().map(|s| s.publisher.id) {
            source.publisher_since = Some(now);
            match &seen {
                Some(s) => {
                    info!(
                        publisher = %super::show_addr(s.publisher.address),
                        client = s.publisher.id,
                        allowed = s.allowed,
                        "publisher connected"
                    );
                    // Ingest failures before this publisher (nginx down, a
                    // broken stream) say nothing about it: don't make it
                    // wait out their backoff.
                    source.backoff.reset();
                    if source.ingest.is_none() && s.allowed {
                        self.set_retry(kind, Some(now));
                    }
                }
                None => {
                    if let Some(old) = &old {
                        info!(publisher = %super::show_addr(old.publisher.address), "publisher left");
                    }
                    // nginx hands its players on to the next publisher. An
                    // ingest that got no picture out of this one may be
                    // stuck on its stream: start the next one afresh. (One
                    // with frames flowing is replaced when they stop.)
                    if source.ingest.is_some() && source.flowing.is_none() {
                        self.stop_ingest(kind);
                        self.set_retry(kind, Some(now));
                    }
                }
            }
        }
        let source = self.source_mut(kind);
        source.publisher = seen.clone();
        source.note_served();
        // A new publisher while the ingest, stopped, still holds the last
        // one's stream: a fresh ingest for the new one.
        if source.flowing.is_none() && source.ingest_outlived_its_publisher() {
            self.restart_ingest(kind, now);
        }
        let source = self.source_mut(kind);

        match seen {
            Some(s) if !s.allowed => {
                if source.refused != Some(s.publisher.id) {
                    source.refused = Some(s.publisher.id);
                    let address = super::show_addr(s.publisher.address);
                    if s.publisher.unchecked {
                        warn!(
                            publisher = %address,
                            "publisher refused: nginx did not ask relay for its PUBLISH_KEY; add `on_publish {};` to the RTMP application; it stays off air",
                            self.settings.publish_auth_url
                        );
                    } else {
                        warn!(
                            publisher = %address,
                            rule = %self.settings.allowed_publishers,
                            "publisher refused by ALLOWED_PUBLISHERS; it stays off air"
                        );
                    }
                }
                if self.on_air_source() == Some(kind) {
                    self.go_offline(now, "publisher not allowed", Why::PublisherRefused);
                }
                // Don't decode a feed that will never go on air.
                self.stop_ingest(kind);
                self.set_retry(kind, None);
            }
            Some(s) => {
                source.refused = None;
                let wanted = source.expect();
                // An `Either` ingest takes the stream as it comes.
                let mismatch = source
                    .ingest
                    .as_ref()
                    .is_some_and(|i| i.expect != wanted && i.expect != Expect::Either)
                    && s.publisher.has_audio.is_some();
                if mismatch && source.flowing.is_none() {
                    info!(
                        expect = ?wanted,
                        "publisher sends video only; restarting the ingest to match"
                    );
                    self.restart_ingest(kind, now);
                } else if source.no_picture_for(NO_PICTURE, now) {
                    let message = format!(
                        "the publisher's stream gave no picture in {} s; restarting the ingest",
                        NO_PICTURE.as_secs()
                    );
                    let address = super::show_addr(s.publisher.address);
                    if source.no_picture != Some(s.publisher.id) {
                        source.no_picture = Some(s.publisher.id);
                        warn!(publisher = %address, "{message}");
                    } else {
                        info!(publisher = %address, "{message}");
                    }
                    self.restart_ingest(kind, now);
                } else if source.ingest.is_none() && source.retry_at.is_none() {
                    self.set_retry(kind, Some(now));
                }
                self.maybe_go_live(now);
            }
            None => {
                source.refused = None;
                if source.ingest.is_none() && source.retry_at.is_none() {
                    self.set_retry(kind, Some(now));
                }
            }
        }
    }

    /// How long byte-count readings are kept: LOW_BITRATE_SECS' window.
    fn byte_window(&self) -> Duration {
        self.settings
            .low_bitrate
            .map_or(Duration::ZERO, |rule| rule.window)
    }

    /// The byte count of an ingest that no stat page counts for (SRT):
    /// its caller is its session.
    pub(super) fn on_ingest_bytes(&mut self, now: Instant, session: u64, bytes: u64) {
        let Some(i) = self.source_of(session) else {
            return;
        };
        let keep = self.byte_window();
        let source = &mut self.sources[i];
        // Counted from the first frame: the listener's wait for a caller
        // is no low bitrate.
        let caller = source.flowing.filter(|&s| s == session);
        let new_caller = caller.is_some() && caller != source.bytes.publisher();
        source.live_bps = source.bytes.update(caller, bytes, now, keep);
        if caller.is_some() {
            let kind = source.kind;
            self.check_low_bitrate(now, kind, new_caller);
            self.maybe_go_live(now);
        }
    }

    /// LOW_BITRATE_KBPS + LOW_BITRATE_SECS: the publisher's average bitrate
    /// over the window.
    fn check_low_bitrate(&mut self, now: Instant, kind: SourceKind, new_publisher: bool) {
        let Some(rule) = self.settings.low_bitrate else {
            self.source_mut(kind).low_bitrate = None;
            return;
        };
        // A publisher back soon after a low-bitrate failover must prove its
        // bitrate first; one long after starts with a clean slate.
        if new_publisher
            && self
                .last_drop
                .is_none_or(|d| now.saturating_duration_since(d) >= RETURN_WINDOW)
        {
            self.source_mut(kind).low_bitrate = None;
        }
        let source = self.source_mut(kind);
        if source.bytes.publisher().is_none() {
            return;
        }
        let Some(average) = source.bytes.average(rule.window) else {
            return;
        };
        if average < rule.bps {
            let was_low = source.low_bitrate.replace(average).is_some();
            let on_air = self.on_air_source() == Some(kind);
            if !was_low && on_air && self.manual.is_none() {
                self.last_drop = Some(now);
                let reason = format!(
                    "{} bitrate {} kb/s below LOW_BITRATE_KBPS {} for {} s",
                    kind.name(),
                    average / 1000,
                    rule.bps / 1000,
                    rule.window.as_secs_f64()
                );
                self.live_ended(now, &reason, Why::LowBitrate);
            }
        } else if source.low_bitrate.take().is_some() {
            source.low_cleared_at = Some(now);
            info!(
                source = kind.name(),
                "live bitrate {} kb/s is back above LOW_BITRATE_KBPS {}",
                average / 1000,
                rule.bps / 1000
            );
        }
    }
}
