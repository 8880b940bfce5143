//! Live sources: each has at most one ingest at a time, the publisher the
//! stat page shows, and whether its frames flow.

use std::time::{Duration, Instant};

use super::Backoff;
use super::{Action, ByteCounter, Expect, Policy, Publisher, Timer};

/// A kind of live source: LIVE_SOURCES lists them in priority order.
pub use crate::config::LiveSource as SourceKind;

/// The ingest of a source: one FFmpeg per publisher.
#[derive(Debug, Clone)]
pub(super) struct Ingest {
    pub session: u64,
    pub expect: Expect,
    pub started: Instant,
    /// The publisher (stat page id) whose frames it has delivered.
    pub served: Option<u64>,
}

/// A publisher seen on the stat page, as judged.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Seen {
    pub publisher: Publisher,
    pub allowed: bool,
}

/// One live source's state.
#[derive(Debug)]
pub(super) struct Source {
    pub kind: SourceKind,
    pub ingest: Option<Ingest>,
    /// When to (re)start an ingest; `None` while one runs or none is wanted.
    pub retry_at: Option<Instant>,
    pub backoff: Backoff,
    /// Ingests that exited on their own.
    pub restarts: u64,
    /// The session whose frames flow, since when, and whether it has
    /// flowed for the pump's pre-roll.
    pub flowing: Option<u64>,
    pub flowing_since: Option<Instant>,
    pub ready: Option<u64>,
    /// The publisher on the last good stat page, and since when.
    pub publisher: Option<Seen>,
    pub publisher_since: Option<Instant>,
    /// A publisher we refused (logged once, no ingest while it stays).
    pub refused: Option<u64>,
    /// The publisher whose stream gave no picture (warned once).
    pub no_picture: Option<u64>,
    pub bytes: ByteCounter,
    pub live_bps: Option<u64>,
    /// The average bitrate while it is below LOW_BITRATE_KBPS.
    pub low_bitrate: Option<u64>,
    /// When the bitrate last came back above LOW_BITRATE_KBPS.
    pub low_cleared_at: Option<Instant>,
}

impl Source {
    pub fn new(kind: SourceKind, crash_backoff: Duration) -> Source {
        Source {
            kind,
            ingest: None,
            retry_at: None,
            backoff: Backoff::new(crash_backoff),
            restarts: 0,
            flowing: None,
            flowing_since: None,
            ready: None,
            publisher: None,
            publisher_since: None,
            refused: None,
            no_picture: None,
            bytes: ByteCounter::new(),
            live_bps: None,
            low_bitrate: None,
            low_cleared_at: None,
        }
    }

    pub fn session(&self) -> Option<u64> {
        self.ingest.as_ref().map(|i| i.session)
    }

    /// Notes which publisher the flowing ingest serves, once the stat page
    /// has shown one.
    pub fn note_served(&mut self) {
        let id = self.publisher.as_ref().map(|p| p.publisher.id);
        if let (Some(ingest), Some(_), Some(id)) = (self.ingest.as_mut(), self.flowing, id) {
            ingest.served.get_or_insert(id);
        }
    }

    /// Whether the ingest serves another publisher than the stat page's:
    /// nginx would hand it the new one's stream with restarted timestamps,
    /// which a running FFmpeg does not recover from.
    pub fn ingest_outlived_its_publisher(&self) -> bool {
        let id = self.publisher.as_ref().map(|p| p.publisher.id);
        self.ingest
            .as_ref()
            .and_then(|i| i.served)
            .is_some_and(|served| Some(served) != id)
    }

    /// Whether the publisher and the ingest have both been there for
    /// `limit` without a live frame.
    pub fn no_picture_for(&self, limit: Duration, now: Instant) -> bool {
        let since = |t: Instant| now.saturating_duration_since(t) >= limit;
        self.flowing.is_none()
            && self.publisher_since.is_some_and(since)
            && self.ingest.as_ref().is_some_and(|i| since(i.started))
    }

    /// What the ingest should expect from the publisher: what the stat
    /// page's metadata says, or `Either` while it says nothing (no
    /// publisher yet, or its metadata not shown).
    pub fn expect(&self) -> Expect {
        match self.publisher.as_ref().and_then(|p| p.publisher.has_audio) {
            Some(true) => Expect::AudioVideo,
            Some(false) => Expect::VideoOnly,
            None => Expect::Either,
        }
    }
}

impl Policy {
    /// The source whose current ingest is `session`; events of an ingest
    /// that was replaced are stale and ignored.
    pub(super) fn source_of(&self, session: u64) -> Option<usize> {
        self.sources
            .iter()
            .position(|s| s.session() == Some(session))
    }

    pub(super) fn source(&self, kind: SourceKind) -> Option<&Source> {
        self.sources.iter().find(|s| s.kind == kind)
    }

    pub(super) fn source_mut(&mut self, kind: SourceKind) -> &mut Source {
        self.sources
            .iter_mut()
            .find(|s| s.kind == kind)
            .expect("every source kind the policy was made with")
    }

    /// Sets (or with `None` cancels) when to start the source's next ingest.
    pub(super) fn set_retry(&mut self, kind: SourceKind, at: Option<Instant>) {
        let source = self.source_mut(kind);
        if source.retry_at != at {
            source.retry_at = at;
            self.out.push(Action::SetTimer {
                timer: Timer::IngestRetry(kind),
                at,
            });
        }
    }

    /// Sets (or cancels) when to look again at a held publisher.
    pub(super) fn set_hold_timer(&mut self, at: Option<Instant>) {
        if self.hold_until != at {
            self.hold_until = at;
            self.out.push(Action::SetTimer {
                timer: Timer::Hold,
                at,
            });
        }
    }

    /// Starts a fresh ingest that waits for (or joins) the publisher.
    pub(super) fn start_ingest(&mut self, kind: SourceKind, now: Instant) {
        let session = self.next_session;
        let source = self.source_mut(kind);
        if source.ingest.is_some() || source.refused.is_some() {
            return;
        }
        let expect = source.expect();
        source.ingest = Some(Ingest {
            session,
            expect,
            started: now,
            served: None,
        });
        self.next_session += 1;
        self.set_retry(kind, None);
        self.out.push(Action::StartIngest {
            source: kind,
            session,
            expect,
        });
    }

    /// Stops the source's ingest, if one runs, without waiting for it.
    pub(super) fn stop_ingest(&mut self, kind: SourceKind) {
        let source = self.source_mut(kind);
        let Some(ingest) = source.ingest.take() else {
            return;
        };
        if source.flowing == Some(ingest.session) {
            source.flowing = None;
        }
        source.ready = None;
        self.held = None;
        self.set_hold_timer(None);
        self.out.push(Action::StopIngest {
            session: ingest.session,
        });
    }

    /// Replaces the source's ingest with a fresh one at once.
    pub(super) fn restart_ingest(&mut self, kind: SourceKind, now: Instant) {
        self.stop_ingest(kind);
        self.start_ingest(kind, now);
    }
}
