//! The switching policy: what is on air, and why, decided in one place.
//!
//! It is pure: no async runtime, no I/O, no clock of its own. The daemon feeds
//! [`Policy::handle`] every [`Event`] with the time it happened and carries
//! out the [`Action`]s it returns, in order; the result of a switch comes
//! back as [`Event::Switched`]. So every rule below is unit-tested with a
//! made-up clock (`tests.rs`), and the daemon only does what it is told.
//!
//! Going live needs two things: the stat page shows a publisher that
//! ALLOWED_PUBLISHERS (and PUBLISH_KEY) accept, and its frames have flowed
//! for the pump's pre-roll. Going offline needs one: live frames stopped —
//! the pump says so within its gap (OFFLINE_AFTER_MS), whatever the stat
//! page says.
//!
//! Two rules keep a bad street feed from flapping the output: frames that
//! come back within [`RETURN_WINDOW`] of a failover are held off air until
//! they have flowed for LIVE_STABLE_SECS, and with LOW_BITRATE_KBPS/SECS a
//! publisher whose average bitrate stays under the threshold is taken off
//! air and held until it recovers. The first go-live is never held.
//!
//! An operator can override this (`relay switch`): `offline` holds the
//! offline video whatever publishes; `live` holds the live feed, but only
//! while its frames flow — when they stop, relay fails over as always and
//! the override ends, since a frozen frame on air is worse than the offline
//! video. `auto` hands the decision back at once.
//!
//! Live sources form a list in priority order and the output a set of
//! destinations; today there is one of each (the RTMP feed through
//! nginx-rtmp, and the platform the output FFmpeg pushes to).

mod backoff;
mod bitrate;
mod on_air;
mod publishers;
mod source;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

pub use backoff::Backoff;
pub use bitrate::ByteCounter;
use source::Source;
pub use source::SourceKind;

use crate::config::{AllowedPublishers, LowBitrate};
use crate::observe::api::{Mode, Reply, StateName};

/// Live frames that come back within this long of a failover are a
/// returning publisher: they must flow for LIVE_STABLE_SECS before going
/// back on air. A flapping link reconnects within seconds (OBS retries
/// after a few); a publisher back after longer is a new start and goes on
/// air as fast as the first time.
pub const RETURN_WINDOW: Duration = Duration::from_secs(60);

/// A publisher whose stream gave no picture for this long gets a fresh
/// ingest: the running one may be stuck on what an earlier publisher sent
/// (a broken stream's codec configuration, timestamps hours ahead). Longer
/// than any sane keyframe interval.
pub const NO_PICTURE: Duration = Duration::from_secs(20);

/// The output's streamselect/astreamselect input index of each source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Input {
    /// The live raw pipes written by the daemon.
    Live = 0,
    /// The looping offline video.
    Offline = 1,
}

impl Input {
    pub fn name(self) -> &'static str {
        match self {
            Input::Live => "live",
            Input::Offline => "offline",
        }
    }
}

/// What the ingest should expect from the publisher: it decides how the
/// ingest FFmpeg probes its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    AudioVideo,
    VideoOnly,
    /// Not known yet: probe briefly, audio optional.
    Either,
}

/// Why what is on air changed: a stable word for status, metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Why {
    PublisherLive,
    PublisherStable,
    BitrateRecovered,
    FramesStopped,
    /// nginx's `on_publish_done`: the publisher ended its stream.
    PublisherStopped,
    LowBitrate,
    PublisherRefused,
    Manual,
    /// The source on air stopped and the next one in LIVE_SOURCES,
    /// flowing, took over without the offline video in between.
    Backup,
}

impl Why {
    pub fn name(self) -> &'static str {
        match self {
            Why::PublisherLive => "publisher_live",
            Why::PublisherStable => "publisher_stable",
            Why::BitrateRecovered => "bitrate_recovered",
            Why::FramesStopped => "frames_stopped",
            Why::PublisherStopped => "publisher_stopped",
            Why::LowBitrate => "low_bitrate",
            Why::PublisherRefused => "publisher_refused",
            Why::Manual => "manual",
            Why::Backup => "backup",
        }
    }
}

/// Why flowing frames of an allowed publisher are kept off air.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Back within RETURN_WINDOW of a failover: LIVE_STABLE_SECS first.
    Unstable,
    /// Below LOW_BITRATE_KBPS.
    LowBitrate,
}

impl Hold {
    pub fn name(self) -> &'static str {
        match self {
            Hold::Unstable => "unstable",
            Hold::LowBitrate => "low_bitrate",
        }
    }
}

/// The settings the policy uses; they change on reload without a restart.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub offline_after: Duration,
    pub live_stable: Duration,
    pub low_bitrate: Option<LowBitrate>,
    pub allowed_publishers: AllowedPublishers,
    /// The ingest's crash backoff starts here.
    pub crash_backoff: Duration,
    /// relay's on_publish endpoint, for the refusal message.
    pub publish_auth_url: String,
}

/// A publisher the stat page shows on our stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Publisher {
    /// nginx's client id: tells one publisher from the next.
    pub id: u64,
    pub address: Option<IpAddr>,
    /// With PUBLISH_KEY set: nginx never asked relay's on_publish endpoint
    /// about it (so it is not allowed either).
    pub unchecked: bool,
    /// Whether its stream has audio; `None` until the stat page knows.
    pub has_audio: Option<bool>,
}

/// What a stat page says about our stream.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StatSummary {
    pub publisher: Option<Publisher>,
    /// The stream's byte count into nginx.
    pub bytes_in: u64,
}

/// How a switch over the output's zmq filter went.
#[derive(Debug, Clone, PartialEq)]
pub enum Switched {
    /// The filter confirmed it.
    Confirmed,
    /// No filter to ask: the output is starting, waiting to retry, or has
    /// exited. It starts on the selection, which is re-asserted once it
    /// streams.
    NotStreaming,
    /// The filter did not confirm.
    Failed(String),
}

/// Timers the policy sets through [`Action::SetTimer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// Start a (new) ingest for this source.
    IngestRetry(SourceKind),
    /// Look again at a publisher held off air until stable.
    Hold,
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A stat page. (One that could not be had changes nothing: live
    /// frames, not the stat page, decide failover.)
    StatPage(StatSummary),
    /// The first live frame of this ingest session (or the first after a gap).
    Flowing { session: u64 },
    /// Live frames have flowed without a gap for the pump's pre-roll.
    Ready { session: u64 },
    /// No live frame for the failover gap.
    Stopped { session: u64, silent_for: Duration },
    /// How many bytes of its feed ingest session `session` has received
    /// so far, for a source no stat page counts (SRT); sent every second.
    IngestBytes { session: u64, bytes: u64 },
    /// nginx's `on_publish_done` for the publisher with this client id:
    /// it ended its stream (a clean stop), no need to wait for the gap.
    PublisherDone { id: u64 },
    /// The ingest of [`Action::StartIngest`] could not be started.
    IngestFailed { session: u64, error: String },
    /// The ingest exited; `requested` if [`Action::StopIngest`] stopped it.
    IngestExited {
        session: u64,
        requested: bool,
        reason: String,
    },
    /// The output's first frame went out to `destination`.
    OutputStreaming { destination: &'static str },
    /// The output stopped sending to `destination`; it restarts on the
    /// selection.
    OutputStopped { destination: &'static str },
    /// The result of [`Action::Select`].
    Switched { input: Input, result: Switched },
    /// An operator's `relay switch`; answered by [`Action::Reply`].
    Manual(Mode),
    /// A timer set by [`Action::SetTimer`] is due.
    Timer(Timer),
    /// A reload changed settings that apply at once.
    Reconfigured(Settings),
}

/// What the daemon must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Put `input` on air: the selection a (re)started output starts on,
    /// and a switch over zmq; answer with [`Event::Switched`] before any
    /// other event.
    Select(Input),
    /// Start an ingest for `source` as session `session`; answer with
    /// [`Event::IngestFailed`] if it cannot start.
    StartIngest {
        source: SourceKind,
        session: u64,
        expect: Expect,
    },
    /// Put this ingest session's frames on the output's live input (the
    /// pump carries one source's frames there); sent before the switch
    /// that puts them on air, and alone when one source takes over from
    /// another while live stays on air.
    Feed { session: u64 },
    /// Stop this ingest session (SIGTERM, then SIGKILL after KILL_GRACE)
    /// without waiting for it, and stop reading its frames.
    StopIngest { session: u64 },
    /// Fire [`Event::Timer`] at `at`; `None` cancels the timer.
    SetTimer { timer: Timer, at: Option<Instant> },
    /// The output's zmq control does not answer: restart the output.
    RestartOutput,
    /// Fetch the stat page now rather than at the next poll.
    PollNow,
    /// The answer to [`Event::Manual`].
    Reply(Box<Reply>),
}

/// What is on air.
#[derive(Debug, Clone, PartialEq)]
enum OnAir {
    Offline,
    Live {
        session: u64,
        publisher: Option<IpAddr>,
        since: Instant,
    },
}

/// The last change of what is on air.
#[derive(Debug, Clone, PartialEq)]
pub struct LastSwitch {
    pub at: Instant,
    pub to: Input,
    pub reason: String,
    pub why: Why,
}

/// A switch sent out as [`Action::Select`], waiting for its result.
#[derive(Debug, Clone, PartialEq)]
enum Pending {
    GoLive {
        session: u64,
        publisher: Option<IpAddr>,
        reason: String,
        why: Why,
        /// Answer the operator's `relay switch` with the result.
        manual: Option<Mode>,
    },
    GoOffline {
        reason: String,
        why: Why,
        live_for: Duration,
    },
    /// The output streams again: its selection is asserted.
    Reassert,
    /// A failed switch, tried once more before restarting the output.
    Retry,
}

/// The policy's state: see the module documentation.
#[derive(Debug)]
pub struct Policy {
    settings: Settings,
    /// Live sources, first in priority order.
    sources: Vec<Source>,
    /// Destinations the output sends to, and whether each streams.
    destinations: BTreeMap<&'static str, bool>,
    on_air: OnAir,
    /// The operator's override; `None`: automatic.
    manual: Option<Input>,
    last_switch: Option<LastSwitch>,
    pending: VecDeque<Pending>,
    next_session: u64,
    /// When live frames last stopped, or a low bitrate took live off air:
    /// frames back within RETURN_WINDOW of it must be stable first.
    last_drop: Option<Instant>,
    /// When to look again at a publisher held off air until stable.
    hold_until: Option<Instant>,
    /// Why flowing live frames are held off air: session, hold, message.
    held: Option<(u64, Hold, String)>,
    /// Changes of what is on air: (to, why) → count.
    switches: BTreeMap<(Input, Why), u64>,
    out: Vec<Action>,
}

impl Policy {
    /// A policy with the offline video on air, ready to start an ingest
    /// that waits for the first publisher.
    #[cfg(test)]
    pub fn new(settings: Settings, now: Instant, destinations: &[&'static str]) -> Policy {
        Policy::with_sources(settings, now, destinations, &[SourceKind::Rtmp])
    }

    /// A policy for these live sources, first in priority order
    /// (LIVE_SOURCES).
    pub fn with_sources(
        settings: Settings,
        now: Instant,
        destinations: &[&'static str],
        kinds: &[SourceKind],
    ) -> Policy {
        let sources = kinds
            .iter()
            .map(|&kind| Source::new(kind, settings.crash_backoff))
            .collect();
        let mut policy = Policy {
            settings,
            sources,
            destinations: destinations.iter().map(|d| (*d, false)).collect(),
            on_air: OnAir::Offline,
            manual: None,
            last_switch: None,
            pending: VecDeque::new(),
            next_session: 1,
            last_drop: None,
            hold_until: None,
            held: None,
            switches: BTreeMap::new(),
            out: Vec::new(),
        };
        for &source in kinds {
            policy.set_retry(source, Some(now));
        }
        policy
    }

    /// The actions a policy just made must take first: the timers it set.
    pub fn start(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.out)
    }

    /// Handles one event that happened at `now`; returns what to do.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        match event {
            Event::StatPage(page) => self.on_stat_page(now, page),
            Event::Flowing { session } => self.on_flowing(now, session),
            Event::Ready { session } => {
                if let Some(i) = self.source_of(session) {
                    self.sources[i].ready = Some(session);
                    self.maybe_go_live(now);
                }
            }
            Event::Stopped {
                session,
                silent_for,
            } => self.on_stopped(now, session, silent_for),
            Event::IngestBytes { session, bytes } => self.on_ingest_bytes(now, session, bytes),
            Event::PublisherDone { id } => self.on_publisher_done(now, id),
            Event::IngestFailed { session, error } => self.on_ingest_failed(now, session, &error),
            Event::IngestExited {
                session,
                requested,
                reason,
            } => self.on_ingest_exit(now, session, requested, &reason),
            Event::OutputStreaming { destination } => {
                self.destinations.insert(destination, true);
                // The output started on the selection current at its spawn;
                // what is on air may have moved since. Unconfirmed, the
                // wrong source could stay on air.
                self.select(self.selection(), Pending::Reassert);
            }
            Event::OutputStopped { destination } => {
                self.destinations.insert(destination, false);
            }
            Event::Switched { input, result } => self.on_switched(now, input, result),
            Event::Manual(mode) => self.on_manual(now, mode),
            Event::Timer(timer) => self.on_timer(now, timer),
            Event::Reconfigured(settings) => self.reconfigure(settings),
        }
        std::mem::take(&mut self.out)
    }

    // --- What the daemon shows -------------------------------------------

    /// What is on air, as `relay status` names it.
    pub fn state_name(&self) -> StateName {
        match (&self.on_air, self.manual) {
            (OnAir::Live { .. }, Some(Input::Live)) => StateName::ManualLive,
            (OnAir::Live { .. }, _) => StateName::Live,
            (OnAir::Offline, Some(Input::Offline)) => StateName::ManualOffline,
            (OnAir::Offline, _) => {
                let starved = self
                    .held
                    .as_ref()
                    .is_some_and(|(_, hold, _)| *hold == Hold::LowBitrate);
                let going = self.sources.iter().any(|s| {
                    s.flowing.is_some() && s.publisher.as_ref().is_some_and(|p| p.allowed)
                });
                if going && !starved {
                    StateName::GoingLive
                } else {
                    StateName::Offline
                }
            }
        }
    }

    /// The input the output should have selected.
    pub fn selection(&self) -> Input {
        match self.on_air {
            OnAir::Live { .. } => Input::Live,
            OnAir::Offline => Input::Offline,
        }
    }

    /// The publisher on air, if live.
    pub fn on_air_publisher(&self) -> Option<Option<IpAddr>> {
        match &self.on_air {
            OnAir::Live { publisher, .. } => Some(*publisher),
            OnAir::Offline => None,
        }
    }

    /// The RTMP source's publisher on the last good stat page, and whether
    /// it is allowed on air.
    pub fn publisher(&self) -> Option<(&Publisher, bool)> {
        self.source(SourceKind::Rtmp)?
            .publisher
            .as_ref()
            .map(|s| (&s.publisher, s.allowed))
    }

    /// The live feed's bitrate, bits/s: the source's on air, else the
    /// first one's with a publisher (into nginx for RTMP, as received for
    /// SRT).
    pub fn live_bitrate(&self) -> Option<u64> {
        let with_publisher = |s: &&Source| s.publisher.is_some();
        let source = match self.on_air_source() {
            Some(kind) => self.source(kind).filter(with_publisher),
            None => self.sources.iter().find(with_publisher),
        }?;
        source.live_bps
    }

    /// The source whose frames are on air, if live.
    pub fn on_air_source(&self) -> Option<SourceKind> {
        match &self.on_air {
            OnAir::Live { session, .. } => self
                .sources
                .iter()
                .find(|s| s.session() == Some(*session))
                .map(|s| s.kind),
            OnAir::Offline => None,
        }
    }

    /// The live sources, first in priority order.
    pub fn source_kinds(&self) -> Vec<SourceKind> {
        self.sources.iter().map(|s| s.kind).collect()
    }

    pub fn last_switch(&self) -> Option<&LastSwitch> {
        self.last_switch.as_ref()
    }

    /// Why flowing frames are held off air, if they are.
    pub fn held(&self) -> Option<(Hold, &str)> {
        self.held
            .as_ref()
            .map(|(_, hold, why)| (*hold, why.as_str()))
    }

    /// Ingests that exited on their own (not stopped by us).
    pub fn ingest_restarts(&self) -> u64 {
        self.sources.iter().map(|s| s.restarts).sum()
    }

    /// Changes of what is on air so far, by where to and why.
    pub fn switches(&self) -> impl Iterator<Item = (Input, Why, u64)> + '_ {
        self.switches.iter().map(|(&(to, why), &n)| (to, why, n))
    }

    // --- Events ------------------------------------------------------------

    fn reconfigure(&mut self, settings: Settings) {
        if settings.crash_backoff != self.settings.crash_backoff {
            for source in &mut self.sources {
                source.backoff = Backoff::new(settings.crash_backoff);
            }
        }
        self.settings = settings;
        // Publishers are judged again on a fresh stat page: allowed ones go
        // on air, refused ones off.
        self.out.push(Action::PollNow);
    }

    fn on_flowing(&mut self, now: Instant, session: u64) {
        let Some(i) = self.source_of(session) else {
            return;
        };
        let source = &mut self.sources[i];
        source.flowing = Some(session);
        source.flowing_since = Some(now);
        if source.kind == SourceKind::Srt {
            // No stat page: the caller is there when its frames are. The
            // passphrase let it in; its address is not known
            // (ALLOWED_PUBLISHERS does not apply to SRT callers).
            source.publisher_since.get_or_insert(now);
            source.publisher = Some(source::Seen {
                publisher: Publisher {
                    id: session,
                    address: None,
                    unchecked: false,
                    has_audio: None,
                },
                allowed: true,
            });
        }
        source.note_served();
        info!(session, source = source.kind.name(), "live frames arriving");
        // Confirm the publisher now rather than at the next poll.
        self.out.push(Action::PollNow);
    }

    fn on_stopped(&mut self, now: Instant, session: u64, silent_for: Duration) {
        let Some(i) = self.source_of(session) else {
            return;
        };
        let source = &mut self.sources[i];
        source.flowing = None;
        source.ready = None;
        source.flowing_since = None;
        self.set_hold_timer(None);
        self.held = None;
        let mut reason = format!(
            "no live frame for {} ms (OFFLINE_AFTER_MS {})",
            silent_for.as_millis(),
            self.settings.offline_after.as_millis()
        );
        // Viewers must not watch a frozen frame, whatever the operator
        // asked: a manual live ends with its frames.
        if self.manual == Some(Input::Live) {
            self.manual = None;
            reason.push_str("; manual live override ended, back to auto");
        }
        // Only a failover counts for the flap hold: frames that stopped
        // before they ever went on air (a feed too slow or too short to
        // be ready) hold nobody off.
        if matches!(self.on_air, OnAir::Live { session: s, .. } if s == session) {
            self.last_drop = Some(now);
            self.live_stopped(now, &reason);
        }
        // An SRT listener takes no second caller while it holds the first,
        // and a killed caller looks connected until SRT's peer idle
        // timeout: re-arm a fresh listener now, so that the caller (or
        // another) is taken again at once.
        if self.sources[i].kind == SourceKind::Srt {
            let source = &mut self.sources[i];
            source.publisher = None;
            source.publisher_since = None;
            info!(session, "SRT frames stopped; listening for a caller again");
            self.restart_ingest(SourceKind::Srt, now);
            return;
        }
        // A publisher that stalled is still connected: its ingest stays
        // and carries on when the stream resumes. A fresh one would join
        // mid-GOP, and could fail on the timestamps' jump. Once the
        // publisher leaves, nginx would hand this player the next
        // publisher with restarted timestamps: then it is replaced (on
        // the stat page that shows it).
        let source = &self.sources[i];
        if source.ingest.as_ref().is_some_and(|i| i.served.is_some())
            && !source.ingest_outlived_its_publisher()
        {
            info!(
                session,
                source = source.kind.name(),
                "live frames stopped; the publisher is still connected, its ingest waits for it"
            );
            return;
        }
        let kind = source.kind;
        self.stop_ingest(kind);
        self.set_retry(kind, Some(now));
    }

    fn on_publisher_done(&mut self, now: Instant, id: u64) {
        let kind = SourceKind::Rtmp;
        let source = self.source_mut(kind);
        let served = source.ingest.as_ref().and_then(|i| i.served);
        let listed = source.publisher.as_ref().map(|p| p.publisher.id);
        if served != Some(id) && listed != Some(id) {
            return;
        }
        let session = source.session();
        source.flowing = None;
        source.ready = None;
        source.flowing_since = None;
        if self.manual == Some(Input::Live) {
            self.manual = None;
        }
        if matches!(self.on_air, OnAir::Live { session: s, .. } if Some(s) == session) {
            self.last_drop = Some(now);
            self.go_offline(
                now,
                "the publisher ended its stream (nginx on_publish_done)",
                Why::PublisherStopped,
            );
        }
        // nginx would hand this ingest the next publisher with restarted
        // timestamps: a fresh one waits for it.
        self.stop_ingest(kind);
        self.set_retry(kind, Some(now));
    }

    fn on_ingest_failed(&mut self, now: Instant, session: u64, error: &str) {
        let Some(i) = self.source_of(session) else {
            return;
        };
        let source = &mut self.sources[i];
        source.ingest = None;
        let delay = source.backoff.next(Duration::ZERO);
        let kind = source.kind;
        error!(
            source = kind.name(),
            retry_in_s = delay.as_secs_f64(),
            "could not start the ingest ffmpeg: {error}"
        );
        self.set_retry(kind, Some(now + delay));
    }

    fn on_ingest_exit(&mut self, now: Instant, session: u64, requested: bool, reason: &str) {
        let Some(i) = self.source_of(session) else {
            return;
        };
        let source = &mut self.sources[i];
        let ran_for = source
            .ingest
            .take()
            .map_or(Duration::ZERO, |i| now.saturating_duration_since(i.started));
        if requested {
            return;
        }
        if source.kind == SourceKind::Srt {
            source.publisher = None;
            source.publisher_since = None;
        }
        // An SRT listener ends with its caller: that is no crash, listen
        // again at once. (One that ends within a second never listened:
        // the port is taken, say; that waits out the crash backoff.)
        let caller_left = source.kind == SourceKind::Srt
            && (source.flowing_since.is_some() || ran_for >= Duration::from_secs(1));
        if !caller_left {
            source.restarts += 1;
        }
        let delay = if caller_left {
            source.backoff.reset();
            Duration::ZERO
        } else {
            source.backoff.next(ran_for)
        };
        warn!(
            session,
            source = source.kind.name(),
            retry_in_s = delay.as_secs_f64(),
            "ingest exited: {reason}"
        );
        // The pump's "no live frame" for this session would be ignored now
        // that it is no longer current: fail over here (the host nginx
        // restarted, say), or live would stay on air with nothing behind it.
        if source.flowing == Some(session) {
            source.flowing = None;
        }
        if source.ready == Some(session) {
            source.ready = None;
        }
        let kind = source.kind;
        self.set_retry(kind, Some(now + delay));
        if matches!(self.on_air, OnAir::Live { session: s, .. } if s == session) {
            self.last_drop = Some(now);
            self.live_stopped(now, "the ingest of the live feed exited");
        }
    }

    /// The frames on air stopped: the next source in LIVE_SOURCES whose
    /// frames flow takes over at once, without the offline video in
    /// between; with none, the offline video goes on air.
    fn live_stopped(&mut self, now: Instant, reason: &str) {
        self.live_ended(now, reason, Why::FramesStopped);
    }

    /// Live on air ended (its frames, or its bitrate): a flowing backup
    /// takes over, else the offline video goes on air for `why`.
    pub(super) fn live_ended(&mut self, now: Instant, reason: &str, why: Why) {
        let from = self.on_air_source();
        let backup = self
            .live_candidate()
            .filter(|(s, _)| !matches!(self.on_air, OnAir::Live { session, .. } if session == *s))
            .filter(|(s, _)| !self.bitrate_low(*s));
        match backup {
            Some((session, address)) if self.manual != Some(Input::Offline) => {
                let reason = format!(
                    "{} stopped ({reason}); its backup in LIVE_SOURCES is flowing",
                    from.map_or("live", SourceKind::name)
                );
                self.take_over(now, session, address, reason, Why::Backup);
            }
            _ => self.go_offline(now, reason, why),
        }
    }

    /// Whether session `session`'s source is below LOW_BITRATE_KBPS.
    pub(super) fn bitrate_low(&self, session: u64) -> bool {
        self.source_of(session)
            .is_some_and(|i| self.sources[i].low_bitrate.is_some())
    }

    /// The source of ingest session `session`.
    pub(super) fn kind_of(&self, session: u64) -> Option<SourceKind> {
        self.source_of(session).map(|i| self.sources[i].kind)
    }

    fn on_timer(&mut self, now: Instant, timer: Timer) {
        match timer {
            Timer::IngestRetry(kind) => {
                let source = self.source_mut(kind);
                if source.retry_at.is_some_and(|at| at <= now) {
                    source.retry_at = None;
                    self.start_ingest(kind, now);
                }
            }
            Timer::Hold => {
                if self.hold_until.is_some_and(|at| at <= now) {
                    self.hold_until = None;
                    self.maybe_go_live(now);
                }
            }
        }
    }

    fn on_switched(&mut self, now: Instant, input: Input, result: Switched) {
        let Some(pending) = self.pending.pop_front() else {
            return;
        };
        let ok = !matches!(result, Switched::Failed(_));
        let err = match &result {
            Switched::Failed(err) => err.as_str(),
            _ => "",
        };
        match pending {
            Pending::GoLive {
                session,
                publisher,
                reason,
                why,
                manual,
            } if ok => {
                info!(
                    session,
                    publisher = %show_addr(publisher),
                    "on air: live ({reason})"
                );
                self.last_switch = Some(LastSwitch {
                    at: now,
                    to: Input::Live,
                    reason,
                    why,
                });
                self.held = None;
                if !matches!(self.on_air, OnAir::Live { .. }) {
                    *self.switches.entry((Input::Live, why)).or_default() += 1;
                }
                self.on_air = OnAir::Live {
                    session,
                    publisher,
                    since: now,
                };
                if let Some(mode) = manual {
                    self.reply_switched(mode);
                }
            }
            Pending::GoLive { manual, .. } => {
                error!(%err, "could not switch to live; staying offline");
                self.select(Input::Offline, Pending::Retry);
                match manual {
                    Some(Mode::Live) => {
                        self.manual = None;
                        self.out.push(Action::Reply(Box::new(Reply::Refused {
                            message: "cannot switch to live: the output did not confirm the switch"
                                .to_string(),
                        })));
                    }
                    Some(mode) => self.reply_switched(mode),
                    None => {}
                }
            }
            Pending::GoOffline {
                reason,
                why,
                live_for,
            } if ok => {
                info!(
                    live_for_s = live_for.as_secs(),
                    "on air: offline video ({reason})"
                );
                self.last_switch = Some(LastSwitch {
                    at: now,
                    to: Input::Offline,
                    reason,
                    why,
                });
            }
            Pending::GoOffline { reason, .. } => {
                error!(%err, "could not switch to offline ({reason})");
                self.select(self.selection(), Pending::Retry);
            }
            Pending::Reassert if ok => {}
            Pending::Reassert => {
                warn!(%err, "could not re-assert the selection after the output started");
                self.select(self.selection(), Pending::Retry);
            }
            Pending::Retry => match result {
                Switched::Confirmed => info!(on_air = input.name(), "switch confirmed on retry"),
                Switched::NotStreaming => info!(
                    on_air = input.name(),
                    "the output is not streaming; it restarts on the selection"
                ),
                Switched::Failed(_) => {
                    error!("the output's zmq control does not answer; restarting the output");
                    self.out.push(Action::RestartOutput);
                }
            },
        }
    }
}

fn show_addr(addr: Option<IpAddr>) -> String {
    addr.map_or_else(|| "unknown".to_string(), |a| a.to_string())
}
