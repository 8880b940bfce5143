//! The pump: relay's clock. Every frame interval it writes one video frame
//! and the matching audio to each pair of the output's raw inputs, so that
//! none of them ever stalls (ARCHITECTURE.md, "Raw pipes and the pump"):
//!
//! - live (inputs 0, 1): live if the ingest delivered a fresh frame, else
//!   filler (the last live frame, or, before this feed's first frame, the
//!   offline frame, and silence);
//! - offline (inputs 2, 3): the offline source's next frame and its sound,
//!   or its last frame again when it is late; except while live is on air
//!   and live frames come: then the live frame again and silence, nobody
//!   sees that input, and the offline source rests. At the first tick
//!   without a live frame the offline source is read again, so that a
//!   failover finds offline frames already queued.
//!
//! Every frame it sends is a live frame, a repeat of the last one, or an
//! offline frame, never black (ARCHITECTURE.md, "Going live without a black flash, and never a black frame"):
//! black goes out only before any frame exists at all, and the first tick
//! waits up to [`FIRST_FRAME_WAIT`] for the offline source's first frame.
//!
//! It also watches the live feed, because it is the first to know: it
//! reports when live frames have flowed long enough to go on air, and the
//! moment they stop, without waiting for a stat poll.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info};

use crate::config::LiveSource;
use crate::ffmpeg::zmq::Input;
use crate::pipeline::frames::{Black, Frame, FramePool};
use crate::pipeline::ingest::{AudioQueue, LiveFeed};
use crate::pipeline::ingest_link::IngestLink;
use crate::pipeline::offline_frames::OfflinePicture;
use crate::pipeline::offline_source::{OfflineSource, SourceAudio};
use crate::pipeline::output_pipes::{OutputPipes, Tick};
use crate::pipeline::raw_format::{RawFormat, SampleClock, AUDIO_BYTES_PER_SAMPLE};

/// Frames that can wait between the pump and the output's filters: our
/// queue, about one in the pipe, FFmpeg's `-thread_queue_size` of 4, and
/// one being read. Live frames must have flowed at least this long before
/// a switch, or filler queued earlier would still be what goes on air.
const BACKLOG_FRAMES: u32 = 10;

/// The longest frame interval a feed can have and still be told from a
/// stopped one by its rhythm: a 1 fps slideshow goes on air and stays; a
/// feed slower than that fails over between its frames.
const MAX_INTERVAL: Duration = Duration::from_secs(1);

/// Frame intervals the rhythm is judged on: the median of the last few,
/// so one late frame does not change it.
const RHYTHM_FRAMES: usize = 8;

/// How long a late frame holds the last picture, instead of failing over,
/// while the publisher's data still arrives unread at the ingest (relay's
/// own ingest starved, not a stopped publisher). After that relay fails
/// over anyway: a stuck ingest must not freeze the picture for long.
pub const STARVED_HOLD: Duration = Duration::from_secs(3);

/// How long the first tick waits for the offline source's first frame, so
/// that the output does not start on black. The source's first frame takes
/// about 0.2 s; a source that cannot start is not waited for longer.
const FIRST_FRAME_WAIT: Duration = Duration::from_secs(3);

/// CPU time (run or run-queue wait) an ingest must have used since its
/// frame became late to count as busy rather than waiting for data: an
/// ingest waiting on its socket uses well under a millisecond in that
/// time; one decoding, or starved, far more.
const BUSY_WHILE_LATE: Duration = Duration::from_millis(20);

/// Instructions to the pump.
pub enum Command {
    /// A (re)started output: write to these pipes from now on.
    Attach(OutputPipes),
    /// A new ingest's frames for this live source (replacing the
    /// source's last), or `None` to stop reading that source's frames.
    Feed(LiveSource, Option<LiveFeed>),
    /// Carry this ingest session's frames on the live input. Until told,
    /// and while that feed has none, the live input carries filler.
    Air(u64),
    /// A new failover gap (OFFLINE_AFTER_MS, changed by a reload).
    SetGap(Duration),
    /// A (re)started offline source, or `None` while there is none.
    Offline(Option<OfflineSource>),
}

/// What the pump tells the daemon about the live feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The first live frame of this session (or the first after a gap).
    Flowing { session: u64 },
    /// Live frames have flowed without a gap for the pre-roll: safe to
    /// switch, the output's queues now hold live frames, not filler.
    Ready { session: u64 },
    /// No live frame for the failover gap.
    Stopped { session: u64, silent_for: Duration },
}

/// Counters for status and benchmarks.
#[derive(Debug, Default)]
pub struct Stats {
    pub live_frames: AtomicU64,
    pub filler_frames: AtomicU64,
    pub dropped_ticks: AtomicU64,
    pub skipped_live_frames: AtomicU64,
    /// Times a late live frame held the last picture because the
    /// publisher's data was still arriving (a starved ingest).
    pub starved_holds: AtomicU64,
}

/// Timing of the pump's decisions.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// No live frame for this long means the live feed has stopped
    /// (OFFLINE_AFTER_MS; the daemon sets it from the configuration).
    pub gap: Duration,
    /// Live frames must flow this long before the feed is `Ready`.
    pub preroll: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            gap: Duration::from_millis(300),
            preroll: Duration::from_millis(300),
        }
    }
}

struct LiveState {
    feed: LiveFeed,
    backlog: Backlog,
    sync: AudioSync,
    /// When the current run of frames started, and whether `Ready` was sent.
    flowing_since: Option<Instant>,
    ready_sent: bool,
    last_frame_at: Option<Instant>,
    stopped_sent: bool,
    rhythm: Rhythm,
    /// Since when a late frame holds the picture for a starved ingest.
    starved_since: Option<Instant>,
    /// The ingest's CPU time (run + run-queue wait) when the frame became
    /// late, to tell a busy or starved ingest from one waiting for data.
    late_cpu: Option<u64>,
}

impl LiveState {
    fn new(feed: LiveFeed, format: &RawFormat) -> LiveState {
        LiveState {
            feed,
            backlog: Backlog::new(format.fps),
            sync: AudioSync::new(format),
            flowing_since: None,
            ready_sent: false,
            last_frame_at: None,
            stopped_sent: false,
            rhythm: Rhythm::default(),
            starved_since: None,
            late_cpu: None,
        }
    }
}

/// Runs the clock until `commands` closes.
pub async fn run(
    format: RawFormat,
    timing: Timing,
    mut commands: mpsc::Receiver<Command>,
    selection: watch::Receiver<Input>,
    events: mpsc::Sender<Event>,
    stats: Arc<Stats>,
    frames: FramePool,
) {
    let period = Duration::from_nanos(1_000_000_000 / format.fps as u64);
    let mut timing = Timing {
        preroll: timing.preroll.max(period * BACKLOG_FRAMES),
        ..timing
    };
    let mut ticker = tokio::time::interval(period);
    // Catch up after a late wake-up: the raw inputs' timestamps are frame
    // counts, so the count must follow the wall clock.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    // Kept only while needed (before any frame exists): 3 MB at 1080p.
    let mut black = Black::new(format, frames);
    let mut samples = SampleClock::new(&format);
    let silence = Bytes::from(vec![
        0u8;
        (format.sample_rate as usize / format.fps as usize + 1)
            * AUDIO_BYTES_PER_SAMPLE
    ]);
    let mut output: Option<OutputPipes> = None;
    // One feed per live source; the one of session `air` is on the live
    // input, the others are read and watched, and their frames dropped.
    let mut feeds: Vec<(LiveSource, LiveState)> = Vec::new();
    let mut air: Option<u64> = None;
    // The feed on the live input at the last tick: its last frame is the
    // filler.
    let mut carrying: Option<u64> = None;
    let mut last_frame: Option<Frame> = None;
    let mut picture = OfflinePicture::default();
    let mut offline_sound: Option<Arc<SourceAudio>> = None;
    // Ticks wait for the offline source's first frame until then.
    let mut holding = Some(Instant::now() + FIRST_FRAME_WAIT);

    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                None => return,
                Some(Command::Attach(pipes)) => output = Some(pipes),
                Some(Command::SetGap(gap)) => timing.gap = gap,
                Some(Command::Offline(source)) => {
                    let (video, sound) = source.map(|s: OfflineSource| (s.video, s.audio)).unzip();
                    picture.set_source(video);
                    offline_sound = sound;
                }
                Some(Command::Feed(source, feed)) => {
                    let gone = feeds
                        .iter()
                        .position(|(s, _)| *s == source)
                        .map(|i| feeds.remove(i).1.feed.session);
                    if gone.is_some() && gone == carrying {
                        last_frame = None;
                    }
                    if let Some(feed) = feed {
                        feeds.push((source, LiveState::new(feed, &format)));
                    }
                }
                Some(Command::Air(session)) => air = Some(session),
            },
            _ = ticker.tick() => {
                let now = Instant::now();
                if let Some(until) = holding {
                    if !picture.has_frame() && now < until {
                        continue;
                    }
                    holding = None;
                    debug!(offline_frame = picture.has_frame(), "the first tick");
                }
                let audio_len = samples.next_samples() * AUDIO_BYTES_PER_SAMPLE;
                let on_air = *selection.borrow();
                let mut video = None;
                let mut audio = None;
                // The feed the policy chose; while it has none (not told
                // yet, or that ingest was replaced), the first there is:
                // with one source, always that source's.
                let on_input = air
                    .filter(|a| feeds.iter().any(|(_, l)| l.feed.session == *a))
                    .or_else(|| feeds.first().map(|(_, l)| l.feed.session));
                carrying = on_input;
                for (_, l) in feeds.iter_mut() {
                    let carried = Some(l.feed.session) == on_input;
                    // One frame per tick, oldest first, so frames that
                    // arrive unevenly still go out one per tick.
                    let queued = l.feed.video.len();
                    let skip = l.backlog.frames_to_skip(queued, l.feed.video.max_capacity());
                    for _ in 0..skip {
                        let _ = l.feed.video.try_recv();
                        stats.skipped_live_frames.fetch_add(1, Ordering::Relaxed);
                    }
                    if skip > 0 {
                        l.sync.skipped();
                    }
                    let mut left = None;
                    if let Ok((frame, mark)) = l.feed.video.try_recv() {
                        left = Some(mark);
                        if l.flowing_since.is_none() {
                            l.sync.restart();
                            l.rhythm = Rhythm::default();
                            l.flowing_since = Some(now);
                            l.ready_sent = false;
                            l.stopped_sent = false;
                            let _ = events.try_send(Event::Flowing { session: l.feed.session });
                        } else if let Some(last) = l.last_frame_at {
                            l.rhythm.push(now - last);
                        }
                        l.starved_since = None;
                        l.late_cpu = None;
                        l.last_frame_at = Some(now);
                        if carried {
                            last_frame = Some(frame.clone());
                            video = Some(frame);
                            stats.live_frames.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    let sound = l.sync.take(&l.feed.audio, left, audio_len);
                    if carried {
                        audio = sound;
                    }
                    check_flow(l, now, &timing, period, &events, &stats);
                }
                let live_audio = pad_audio(audio, audio_len, &silence);
                // A live frame goes to the offline input only while live is
                // on air: a publisher not on air never shows.
                let held_live = || last_frame.clone().filter(|_| on_air == Input::Live);
                let (offline_video, offline_audio) = match (&video, &offline_sound) {
                    // Live on air with a fresh frame: the offline source rests.
                    (Some(frame), _) if on_air == Input::Live => {
                        (Some(frame.clone()), silence.slice(..audio_len))
                    }
                    // The source's next frame, or its last again if it is late.
                    (_, Some(sound)) => (
                        picture.next().or_else(held_live),
                        sound.take(audio_len),
                    ),
                    // No source (restarting): the last offline frame.
                    (_, None) => (
                        picture.last().or_else(held_live),
                        silence.slice(..audio_len),
                    ),
                };
                // Black only while no frame exists at all.
                let mut or_black = |frame: Option<Frame>| {
                    frame.unwrap_or_else(|| Frame::Mem(black.frame()))
                };
                let live_video = match video {
                    Some(frame) => frame,
                    None => {
                        stats.filler_frames.fetch_add(1, Ordering::Relaxed);
                        // The last live frame; before this feed's first, the
                        // offline picture, so that a switch made early
                        // shows that rather than black.
                        or_black(last_frame.clone().or_else(|| offline_video.clone()))
                    }
                };
                let offline_video = or_black(offline_video);
                black.end_round();
                let tick = Tick {
                    video: live_video,
                    audio: live_audio,
                    offline_video,
                    offline_audio,
                };
                if let Some(pipes) = output.as_ref() {
                    if pipes.closed() {
                        output = None;
                    } else if !pipes.send(tick) {
                        stats.dropped_ticks.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

/// Keeps the live frames' queue a jitter buffer rather than latency: a
/// full queue (a burst, or an ingest that got ahead) is cut to the newest
/// frame at once; a queue that never ran empty for a whole second (the
/// publisher's clock a little faster than ours) loses one frame.
struct Backlog {
    window: u32,
    ticks: u32,
    least: usize,
}

impl Backlog {
    fn new(fps: u32) -> Backlog {
        Backlog {
            window: fps.max(1),
            ticks: 0,
            least: usize::MAX,
        }
    }

    /// How many of the `queued` frames to drop before this tick's.
    fn frames_to_skip(&mut self, queued: usize, capacity: usize) -> usize {
        if queued >= capacity {
            self.ticks = 0;
            self.least = usize::MAX;
            return queued - 1;
        }
        self.least = self.least.min(queued);
        self.ticks += 1;
        if self.ticks < self.window {
            return 0;
        }
        let skip = usize::from(self.least >= 2);
        self.ticks = 0;
        self.least = usize::MAX;
        skip
    }
}

/// Keeps live sound level with the picture. A frame leaves the jitter
/// buffer (`Backlog`) some ticks after it arrived, while audio goes out
/// every tick: left alone, the sound would lead the picture by the
/// buffer's depth. So the audio is held back by the frames' wait: each
/// frame, as it leaves, measures how far the audio is from the audio that
/// arrived with it (`AudioQueue::lead`), and the pump inserts silence
/// (audio ahead) or drops audio (behind) to close the difference.
///
/// Each change is a short gap or jump in the sound, so it is made rarely:
/// once when a run of frames starts (before the feed can go on air), then
/// only when the lead, the median over a second of frames, is off by more
/// than half a frame, or together with frames the jitter buffer skips.
/// A depth that wobbles by a frame now and then moves nothing.
struct AudioSync {
    /// Frames measured before the first correction, and per window after.
    first: u32,
    window: u32,
    /// Past the first window of this run of frames.
    settled: bool,
    /// The jitter buffer skipped frames: correct at the next frame.
    now: bool,
    /// This window's leads, in bytes.
    leads: Vec<i64>,
    /// Largest lead (median of a window) left alone, in bytes.
    threshold: i64,
    /// Silence still to go out in place of live audio, in bytes.
    silence_due: usize,
    bytes_per_ms: f64,
    /// Corrections made so far (for the log).
    changes: u64,
}

/// Frames measured when a run of frames starts: fewer than the pre-roll,
/// so the first correction is made before the feed goes on air.
const SYNC_FIRST_FRAMES: u32 = BACKLOG_FRAMES / 2;

impl AudioSync {
    fn new(format: &RawFormat) -> AudioSync {
        let per_frame = (format.sample_rate / format.fps.max(1)) as usize;
        AudioSync {
            first: SYNC_FIRST_FRAMES,
            window: format.fps.max(1),
            settled: false,
            now: false,
            leads: Vec::with_capacity(format.fps.max(1) as usize),
            threshold: (per_frame / 2 * AUDIO_BYTES_PER_SAMPLE) as i64,
            silence_due: 0,
            changes: 0,
            bytes_per_ms: (format.sample_rate as usize * AUDIO_BYTES_PER_SAMPLE) as f64 / 1000.0,
        }
    }

    /// A new run of frames: measure afresh and correct at once.
    fn restart(&mut self) {
        self.settled = false;
        self.leads.clear();
    }

    fn skipped(&mut self) {
        self.now = true;
    }

    /// This tick's live audio, up to `len` bytes; `left` is the audio mark
    /// of the frame leaving the jitter buffer on this tick, if one does.
    fn take(&mut self, queue: &AudioQueue, left: Option<u64>, len: usize) -> Option<Bytes> {
        if let Some(mark) = left {
            self.observe(queue, queue.lead(mark, len) - self.silence_due as i64);
        }
        let hold = self.silence_due.min(len);
        self.silence_due -= hold;
        let audio = queue.take(len - hold);
        if hold == 0 {
            return (!audio.is_empty()).then_some(audio);
        }
        let mut v = Vec::with_capacity(len);
        v.resize(hold, 0);
        v.extend_from_slice(&audio);
        Some(v.into())
    }

    fn observe(&mut self, queue: &AudioQueue, lead: i64) {
        if std::mem::take(&mut self.now) {
            self.leads.clear();
            if lead < -self.threshold {
                self.correct(queue, lead, "frames skipped");
            }
            return;
        }
        self.leads.push(lead);
        let n = if self.settled {
            self.window
        } else {
            self.first
        };
        if self.leads.len() < n as usize {
            return;
        }
        // The median: a frame that came late or early does not count.
        self.leads.sort_unstable();
        let median = self.leads[self.leads.len() / 2];
        self.leads.clear();
        let why = if std::mem::replace(&mut self.settled, true) {
            if median.abs() <= self.threshold {
                return;
            }
            "lasting"
        } else {
            "frames started"
        };
        self.correct(queue, median, why);
    }

    fn correct(&mut self, queue: &AudioQueue, lead: i64, why: &'static str) {
        let bytes =
            (lead.unsigned_abs() as usize / AUDIO_BYTES_PER_SAMPLE) * AUDIO_BYTES_PER_SAMPLE;
        if lead > 0 {
            self.silence_due += bytes;
        } else {
            queue.skip(bytes);
        }
        self.changes += 1;
        debug!(
            lead_ms = lead as f64 / self.bytes_per_ms,
            changes = self.changes,
            why,
            "live audio realigned"
        );
    }
}

/// The rhythm of a run of live frames: the median interval between the
/// last `RHYTHM_FRAMES` frames, as the pump took them.
#[derive(Debug, Default)]
struct Rhythm {
    intervals: std::collections::VecDeque<Duration>,
}

impl Rhythm {
    fn push(&mut self, interval: Duration) {
        if self.intervals.len() == RHYTHM_FRAMES {
            self.intervals.pop_front();
        }
        self.intervals.push_back(interval);
    }

    /// The feed's frame interval, once two frames have come.
    fn interval(&self) -> Option<Duration> {
        let mut v: Vec<Duration> = self.intervals.iter().copied().collect();
        v.sort_unstable();
        v.get(v.len() / 2).copied()
    }
}

/// How long without a frame means the feed has stopped: the failover gap
/// (OFFLINE_AFTER_MS), counted from when the next frame was due. For a
/// feed at the output's frame rate that is the gap itself; a 2 fps feed
/// (500 ms between frames) is stopped 300 ms after a frame it should have
/// sent, not between two of its frames. Before a run has a rhythm (one
/// frame so far) its second frame gets up to `MAX_INTERVAL`; it cannot be
/// on air yet. The live audio is no separate sign of life: publishers'
/// FLV muxers interleave by timestamp, so a slow feed's sound comes in
/// bursts with its frames.
fn stop_after(l: &LiveState, gap: Duration, period: Duration) -> Duration {
    match l.rhythm.interval() {
        Some(interval) => gap + interval.min(MAX_INTERVAL).saturating_sub(period),
        None => gap + MAX_INTERVAL,
    }
}

/// Sends `Ready` after the pre-roll and `Stopped` when the feed stopped:
/// no frame for longer than its rhythm allows, and no sign that the
/// publisher's data is still arriving at a starved ingest.
fn check_flow(
    l: &mut LiveState,
    now: Instant,
    timing: &Timing,
    period: Duration,
    events: &mpsc::Sender<Event>,
    stats: &Stats,
) {
    let session = l.feed.session;
    let (Some(since), Some(last)) = (l.flowing_since, l.last_frame_at) else {
        return;
    };
    let silent_for = now - last;
    let due = l.rhythm.interval().unwrap_or(period).max(period);
    if l.late_cpu.is_none() && silent_for >= due * 2 {
        l.late_cpu = l.feed.link.as_ref().and_then(IngestLink::cpu_ns);
    }
    if silent_for >= stop_after(l, timing.gap, period) {
        if l.stopped_sent {
            return;
        }
        if starved(l, now, stats) {
            return;
        }
        l.stopped_sent = true;
        l.flowing_since = None;
        l.starved_since = None;
        debug!(session, ?silent_for, "live frames stopped");
        let _ = events.try_send(Event::Stopped {
            session,
            silent_for,
        });
    } else if !l.ready_sent && now - since >= timing.preroll && l.rhythm.interval().is_some() {
        l.ready_sent = true;
        let _ = events.try_send(Event::Ready { session });
    }
}

/// Whether a late frame should hold the last picture: the publisher's
/// data is still arriving unread at the ingest, for at most
/// `STARVED_HOLD`.
fn starved(l: &mut LiveState, now: Instant, stats: &Stats) -> bool {
    if let Some(since) = l.starved_since {
        return now.saturating_duration_since(since) < STARVED_HOLD;
    }
    let Some(link) = l.feed.link.as_ref() else {
        return false;
    };
    // The publisher's data waits unread at the ingest; the ingest's frames
    // wait for relay's reader; or the ingest ran, or waited to run, for a
    // good part of the silence (decoding what it has, on a CPU it does not
    // get): each says relay, not the publisher, is late.
    let why =
        if link.unread_bytes().is_some_and(|n| n > 0) {
            Some("the publisher's data waits unread at the ingest")
        } else if link.pipe_unread().is_some_and(|n| n > 0) {
            Some("the ingest's frames wait for relay's reader")
        } else if l.late_cpu.zip(link.cpu_ns()).is_some_and(|(then, now)| {
            now.saturating_sub(then) >= BUSY_WHILE_LATE.as_nanos() as u64
        }) {
            Some("the ingest is busy or waiting for the CPU")
        } else {
            None
        };
    let Some(why) = why else {
        return false;
    };
    l.starved_since = Some(now);
    stats.starved_holds.fetch_add(1, Ordering::Relaxed);
    // Worth an operator's notice: the machine is starving relay.
    info!(
        session = l.feed.session,
        why, "live frame late, relay's ingest starved: holding the last picture"
    );
    true
}

/// Live audio for one tick, completed with silence if short.
fn pad_audio(audio: Option<Bytes>, len: usize, silence: &Bytes) -> Bytes {
    match audio {
        Some(a) if a.len() == len => a,
        Some(a) => {
            let mut v = Vec::with_capacity(len);
            v.extend_from_slice(&a);
            v.resize(len, 0);
            v.into()
        }
        None => silence.slice(..len),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    #[test]
    fn backlog_rides_out_jitter_but_not_a_lasting_lead() {
        let mut b = Backlog::new(30);
        // Frames arriving two at a time, then none: nothing skipped.
        for tick in 0..300 {
            assert_eq!(b.frames_to_skip(if tick % 2 == 0 { 2 } else { 1 }, 3), 0);
        }
        // A full queue is cut to the newest frame at once.
        assert_eq!(b.frames_to_skip(3, 3), 2);
        // Two frames waiting at every tick for a second: one goes.
        let skipped: usize = (0..30).map(|_| b.frames_to_skip(2, 3)).sum();
        assert_eq!(skipped, 1);
    }

    /// A live feed whose audio arrives one tick's worth per tick, and whose
    /// frames arrive as told and wait their turn in the jitter buffer.
    struct Sim {
        audio: AudioQueue,
        sync: AudioSync,
        /// Waiting frames: the tick each arrived on, and its audio mark.
        frames: VecDeque<(u64, u64)>,
        tick: u64,
        len: usize,
    }

    fn tag(tick: u64) -> u8 {
        (tick % 200) as u8 + 1
    }

    impl Sim {
        fn new() -> Sim {
            let format = RawFormat {
                width: 4,
                height: 2,
                fps: 30,
                sample_rate: 48000,
            };
            Sim {
                audio: AudioQueue::new(&format),
                sync: AudioSync::new(&format),
                frames: VecDeque::new(),
                tick: 0,
                len: 1600 * AUDIO_BYTES_PER_SAMPLE,
            }
        }

        /// One tick: `arrivals` frames arrive, the oldest leaves. Whether
        /// the sound that went out with it is the audio that arrived with
        /// it, if one left.
        fn tick(&mut self, arrivals: usize) -> Option<bool> {
            self.audio.push(&vec![tag(self.tick); self.len]);
            for _ in 0..arrivals {
                self.frames.push_back((self.tick, self.audio.mark()));
            }
            let left = self.frames.pop_front();
            let out = self.sync.take(&self.audio, left.map(|f| f.1), self.len);
            let out = pad_audio(out, self.len, &Bytes::from(vec![0u8; self.len]));
            self.tick += 1;
            left.map(|(arrived, _)| out.iter().all(|&b| b == tag(arrived)))
        }

        /// Runs `ticks` ticks of one arrival each; whether every frame
        /// left with its own sound.
        fn steady(&mut self, ticks: usize) -> bool {
            (0..ticks).all(|_| self.tick(1) == Some(true))
        }
    }

    #[test]
    fn audio_waits_as_long_as_the_frames() {
        for depth in 0..=3 {
            let mut sim = Sim::new();
            // A burst fills the buffer, then frames leave `depth` ticks
            // after they arrived.
            sim.tick(depth + 1);
            for _ in 0..60 {
                sim.tick(1);
            }
            assert_eq!(sim.frames.len(), depth);
            assert!(sim.steady(120), "depth {depth}: sound not with its frame");
        }
    }

    #[test]
    fn the_audio_moves_only_for_a_lasting_change_of_depth() {
        let mut sim = Sim::new();
        sim.tick(2);
        for _ in 0..30 {
            sim.tick(1);
        }
        assert!(sim.steady(60));
        let settled = sim.sync.changes;
        // Now and then a frame arrives a tick late, with the next one: the
        // buffer runs dry for a tick, then refills. The sound stays put.
        for _ in 0..20 {
            sim.tick(0);
            sim.tick(2);
            for _ in 0..8 {
                sim.tick(1);
            }
        }
        assert_eq!(sim.sync.changes, settled, "the sound moved with jitter");
        assert!(sim.steady(60));
        // A burst that stays: the frames now wait a tick longer, and so,
        // after a while, does their sound, in one step.
        sim.tick(2);
        for _ in 0..90 {
            sim.tick(1);
        }
        assert_eq!(sim.sync.changes, settled + 1);
        assert!(sim.steady(60));
    }

    #[test]
    fn the_audio_jumps_with_frames_the_buffer_skips() {
        let mut sim = Sim::new();
        sim.tick(3);
        for _ in 0..60 {
            sim.tick(1);
        }
        assert!(sim.steady(30));
        let settled = sim.sync.changes;
        // The jitter buffer is cut to its newest frame: the sound skips
        // the same stretch as the picture, on the same tick.
        sim.tick(1);
        let waiting = sim.frames.len();
        sim.frames.drain(..waiting - 1);
        sim.sync.skipped();
        assert!(sim.steady(60));
        assert_eq!(sim.sync.changes, settled + 1);
    }

    #[test]
    fn short_audio_is_padded_with_silence() {
        let silence = Bytes::from(vec![0u8; 100]);
        assert_eq!(pad_audio(None, 64, &silence).len(), 64);
        let got = pad_audio(Some(Bytes::from(vec![7u8; 10])), 64, &silence);
        assert_eq!(got.len(), 64);
        assert_eq!(got[9], 7);
        assert_eq!(got[10], 0);
    }
}
