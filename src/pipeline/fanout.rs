//! The fan-out: one encode, many destinations. The output FFmpeg writes
//! FLV to relay; what the walker (`flv.rs`) cuts out of it goes to one
//! bounded queue per destination, which its pusher (`pusher.rs`) drains.
//! Nothing a destination does can block the encoder or another
//! destination: a queue that falls behind drops whole GOPs.
//!
//! What a new connection needs is kept ([`Cache`]): the FLV header,
//! `onMetaData`, the AVC and AAC sequence headers, and the tags since the
//! latest keyframe, so a (re)connecting pusher shows a picture at once.
//! Each connection has its own timeline ([`Timeline`]): it starts at 0,
//! and carries on without a step back when a new encoder's stream, whose
//! timestamps start again from 0, replaces the old one
//! (ARCHITECTURE.md, "One encode, many destinations").

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::pipeline::flv::{self, Item, Tag};

/// How far a destination may fall behind before whole GOPs are dropped.
pub const QUEUE_SPAN: Duration = Duration::from_secs(4);
/// And how many bytes it may hold whatever the span (60 Mbit/s for 4 s).
pub const QUEUE_BYTES: usize = 30 << 20;
/// A GOP larger than this is not kept for the next connection.
const GOP_BYTES: usize = 16 << 20;

/// What a new connection is started with.
#[derive(Debug, Default)]
pub struct Cache {
    header: Option<Bytes>,
    metadata: Option<Tag>,
    video_config: Option<Tag>,
    audio_config: Option<Tag>,
    /// Every tag from the latest keyframe on.
    gop: Vec<Tag>,
    gop_bytes: usize,
}

impl Cache {
    /// A new encoder's stream begins: what the old one said no longer holds.
    pub fn new_stream(&mut self) {
        *self = Cache::default();
    }

    pub fn observe(&mut self, item: &Item) {
        let tag = match item {
            Item::Header(h) => {
                self.header = Some(h.clone());
                return;
            }
            Item::Tag(tag) => tag,
        };
        if tag.is_script() {
            self.metadata = Some(tag.clone());
        } else if tag.is_sequence_header() {
            if !tag.is_audio() {
                self.video_config = Some(tag.clone());
            } else {
                self.audio_config = Some(tag.clone());
            }
        } else if tag.is_keyframe() {
            self.gop.clear();
            self.gop.push(tag.clone());
            self.gop_bytes = tag.len();
        } else if !self.gop.is_empty() {
            self.gop_bytes += tag.len();
            if self.gop_bytes > GOP_BYTES {
                self.gop.clear();
            } else {
                self.gop.push(tag.clone());
            }
        }
    }

    /// The FLV header a new connection starts with.
    pub fn header(&self) -> Bytes {
        self.header.clone().unwrap_or_else(flv::header)
    }

    /// What a new connection gets after the header: metadata, sequence
    /// headers, then the latest keyframe and what followed it.
    pub fn start(&self) -> Vec<Tag> {
        let configs = [&self.metadata, &self.video_config, &self.audio_config];
        let mut out: Vec<Tag> = configs.into_iter().flatten().cloned().collect();
        out.extend(self.gop.iter().cloned());
        out
    }
}

/// A connection's timestamps: the first tag it gets is at 0; a new
/// encoder's stream continues where the last one left off.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// Added to an input timestamp; `None` until the first tag.
    offset: Option<i64>,
    /// The last timestamp written.
    last: u32,
    /// The next input timestamp begins a new stream `gap` ms after `last`.
    rebase: Option<u32>,
}

impl Timeline {
    /// The timestamp `ts` goes out with: never negative, never far behind
    /// what went before.
    pub fn map(&mut self, ts: u32) -> u32 {
        let offset = match (self.offset, self.rebase.take()) {
            (Some(offset), None) => offset,
            (None, _) => -i64::from(ts),
            (Some(_), Some(gap)) => i64::from(self.last) + i64::from(gap) - i64::from(ts),
        };
        self.offset = Some(offset);
        let out = (i64::from(ts) + offset).clamp(0, i64::from(u32::MAX)) as u32;
        self.last = self.last.max(out);
        out
    }

    /// The input starts again (a new encoder): its first tag goes out `gap`
    /// after the last one.
    pub fn continue_after(&mut self, gap: Duration) {
        if self.offset.is_some() {
            self.rebase = Some(gap.as_millis().clamp(1, 10_000) as u32);
        }
    }
}

/// One destination's queue.
#[derive(Debug)]
pub struct Outlet {
    queue: VecDeque<Tag>,
    bytes: usize,
    /// After a drop (or at the start) nothing but configuration goes in
    /// until a keyframe.
    waiting_keyframe: bool,
    /// Whole GOPs dropped because the destination fell behind.
    pub dropped_gops: u64,
    /// The connection is being (re)made: the next drain starts with the
    /// header.
    fresh: Option<Bytes>,
    timeline: Timeline,
    /// Which connection of the destination it serves.
    session: u64,
}

impl Outlet {
    fn new() -> Outlet {
        Outlet {
            queue: VecDeque::new(),
            bytes: 0,
            waiting_keyframe: true,
            dropped_gops: 0,
            fresh: None,
            timeline: Timeline::default(),
            session: 0,
        }
    }

    /// A new connection: the header, what the cache holds, then what comes.
    pub fn restart(&mut self, cache: &Cache) {
        self.queue.clear();
        self.bytes = 0;
        self.timeline = Timeline::default();
        self.fresh = Some(cache.header());
        let start = cache.start();
        self.waiting_keyframe = !start.iter().any(Tag::is_keyframe);
        for tag in start {
            self.bytes += tag.len();
            self.queue.push_back(tag);
        }
    }

    /// A new encoder's stream replaces the old one on this connection.
    pub fn new_stream(&mut self, gap: Duration) {
        self.timeline.continue_after(gap);
        self.waiting_keyframe = true;
    }

    pub fn push(&mut self, tag: &Tag) {
        // A new encoder's onMetaData stays off a connection that has begun:
        // FFmpeg's FLV reader (the pusher) takes metadata at a timestamp
        // other than 0 for a new subtitle stream, and says so in the log at
        // every encoder restart. It would tell the pusher nothing: the
        // encoder's settings do not change, and a new connection gets the
        // new metadata from the cache.
        if tag.is_script() && self.begun() {
            return;
        }
        let config = tag.is_script() || tag.is_sequence_header();
        if self.waiting_keyframe && !config {
            if !tag.is_keyframe() {
                return;
            }
            self.waiting_keyframe = false;
        }
        self.bytes += tag.len();
        self.queue.push_back(tag.clone());
        while self.over() && self.drop_gop() {}
    }

    /// Whether the connection has had media (written or queued).
    fn begun(&self) -> bool {
        self.timeline.offset.is_some()
            || self
                .queue
                .iter()
                .any(|t| !(t.is_script() || t.is_sequence_header()))
    }

    /// Whether the media queued (configuration aside) spans too long or
    /// holds too much.
    fn over(&self) -> bool {
        let mut media = self
            .queue
            .iter()
            .filter(|t| !(t.is_script() || t.is_sequence_header()));
        let first = media.next().map(Tag::timestamp);
        let last = media.next_back().map(Tag::timestamp);
        let span = match (first, last) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => 0,
        };
        self.bytes > QUEUE_BYTES || u128::from(span) > QUEUE_SPAN.as_millis()
    }

    /// Drops the oldest GOP: everything up to the second keyframe queued
    /// (or all of it), keeping configuration tags. Returns whether media
    /// was dropped.
    fn drop_gop(&mut self) -> bool {
        let config = |t: &Tag| t.is_script() || t.is_sequence_header();
        let first_media = self.queue.iter().position(|t| !config(t));
        let Some(first_media) = first_media else {
            return false;
        };
        let next_key = self
            .queue
            .iter()
            .enumerate()
            .skip(first_media + 1)
            .find(|(_, t)| t.is_keyframe())
            .map(|(i, _)| i);
        let end = next_key.unwrap_or(self.queue.len());
        let dropped: Vec<Tag> = self.queue.drain(..end).collect();
        let mut kept = Vec::new();
        let mut any = false;
        for tag in dropped {
            if tag.is_script() || tag.is_sequence_header() {
                kept.push(tag);
            } else {
                self.bytes -= tag.len();
                any = true;
            }
        }
        for tag in kept.into_iter().rev() {
            self.queue.push_front(tag);
        }
        if any {
            self.dropped_gops += 1;
        }
        if next_key.is_none() {
            self.waiting_keyframe = true;
        }
        any
    }

    /// Everything queued, as bytes to write, with this connection's
    /// timestamps.
    pub fn drain(&mut self) -> Vec<Bytes> {
        let mut out = Vec::with_capacity(self.queue.len() + 1);
        if let Some(header) = self.fresh.take() {
            out.push(header);
        }
        while let Some(tag) = self.queue.pop_front() {
            let config = tag.is_script() || tag.is_sequence_header();
            let ts = if config && self.timeline.offset.is_none() {
                0
            } else {
                self.timeline.map(tag.timestamp())
            };
            out.push(tag.at(ts).bytes().clone());
        }
        self.bytes = 0;
        out
    }
}

/// The state the encoder's reader and every pusher share.
#[derive(Debug, Default)]
struct Shared {
    cache: Cache,
    outlets: BTreeMap<String, Outlet>,
    /// GOPs each destination dropped on its earlier connections.
    dropped: BTreeMap<String, u64>,
    /// When the last tag came, to continue a new stream after a gap as long.
    last_tag: Option<std::time::Instant>,
    /// The last connection handed out.
    sessions: u64,
}

/// The fan-out: the encoder's reader puts, pushers take.
#[derive(Clone, Default)]
pub struct FanOut {
    shared: Arc<Mutex<Shared>>,
    /// Woken whenever tags arrive; each pusher's writer waits on its own.
    wake: Arc<Mutex<BTreeMap<String, Arc<Notify>>>>,
}

impl FanOut {
    pub fn new() -> FanOut {
        FanOut::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new encoder's stream begins: every connection carries on.
    pub fn new_stream(&self) {
        let mut s = self.lock();
        let gap = s
            .last_tag
            .map_or(Duration::from_millis(33), |t| t.elapsed());
        s.cache.new_stream();
        for outlet in s.outlets.values_mut() {
            outlet.new_stream(gap);
        }
    }

    /// What the encoder's walker found.
    pub fn put(&self, items: &[Item]) {
        let mut s = self.lock();
        for item in items {
            s.cache.observe(item);
            if let Item::Tag(tag) = item {
                for outlet in s.outlets.values_mut() {
                    outlet.push(tag);
                }
            }
        }
        s.last_tag = Some(std::time::Instant::now());
        drop(s);
        for notify in self.wake.lock().unwrap_or_else(|p| p.into_inner()).values() {
            notify.notify_one();
        }
    }

    /// Destination `name` (re)connects: its queue starts afresh from the
    /// cache. Returns the connection's number and what wakes its writer.
    pub fn connect(&self, name: &str) -> (u64, Arc<Notify>) {
        let mut s = self.lock();
        s.sessions += 1;
        let session = s.sessions;
        let Shared { cache, outlets, .. } = &mut *s;
        let outlet = outlets.entry(name.to_owned()).or_insert_with(Outlet::new);
        outlet.restart(cache);
        outlet.session = session;
        drop(s);
        let notify = Arc::new(Notify::new());
        notify.notify_one();
        self.wake
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), notify.clone());
        (session, notify)
    }

    /// Connection `session` of destination `name` is gone (removed, or
    /// between connections); a newer connection of the same name, as a
    /// reload makes, stays.
    pub fn disconnect(&self, name: &str, session: u64) {
        let mut s = self.lock();
        if s.outlets.get(name).is_none_or(|o| o.session != session) {
            return;
        }
        if let Some(outlet) = s.outlets.remove(name) {
            *s.dropped.entry(name.to_owned()).or_default() += outlet.dropped_gops;
        }
        drop(s);
        self.wake
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// What `name` has to write now.
    pub fn take(&self, name: &str) -> Vec<Bytes> {
        self.lock()
            .outlets
            .get_mut(name)
            .map(Outlet::drain)
            .unwrap_or_default()
    }

    /// GOPs `name` dropped, over all its connections.
    pub fn dropped_gops(&self, name: &str) -> u64 {
        let s = self.lock();
        let now = s.outlets.get(name).map_or(0, |o| o.dropped_gops);
        now + s.dropped.get(name).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::flv::tests::{aac_seq, audio, avc_seq, inter, key, meta};
    use crate::pipeline::flv::Walker;

    fn tags_of(bytes: &[Bytes]) -> Vec<Tag> {
        let mut w = Walker::new();
        let mut all = Vec::new();
        for b in bytes {
            all.extend(w.push(b).unwrap());
        }
        all.into_iter()
            .filter_map(|i| match i {
                Item::Tag(t) => Some(t),
                Item::Header(_) => None,
            })
            .collect()
    }

    fn encoder(fan: &FanOut, from: u32, frames: u32) {
        let mut items = Vec::new();
        for i in 0..frames {
            let ts = from + i * 33;
            items.push(Item::Tag(if i % 60 == 0 { key(ts) } else { inter(ts) }));
            items.push(Item::Tag(audio(ts + 5)));
        }
        fan.put(&items);
    }

    fn start(fan: &FanOut) {
        fan.put(&[
            Item::Header(flv::header()),
            Item::Tag(meta()),
            Item::Tag(avc_seq(0)),
            Item::Tag(aac_seq(0)),
        ]);
    }

    #[test]
    fn a_new_connection_gets_the_configuration_then_the_latest_keyframe_at_zero() {
        let fan = FanOut::new();
        start(&fan);
        encoder(&fan, 0, 90); // keyframes at 0 and 1980 ms
        fan.connect("a");
        let tags = tags_of(&fan.take("a"));
        assert!(tags[0].is_script());
        assert!(tags[1].is_sequence_header() && tags[1].is_video());
        assert!(tags[2].is_sequence_header() && tags[2].is_audio());
        assert!(tags[3].is_keyframe());
        assert_eq!(tags[3].timestamp(), 0, "the connection's own timeline");
        assert_eq!(tags.len(), 3 + 2 * 30);
        // Later tags follow on that timeline.
        encoder(&fan, 90 * 33, 1);
        let more = tags_of(&[flv::header(), fan.take("a").concat().into()]);
        assert_eq!(more[0].timestamp(), 90 * 33 - 1980);
    }

    #[test]
    fn a_queue_that_falls_behind_drops_whole_gops_and_others_do_not() {
        let fan = FanOut::new();
        start(&fan);
        fan.connect("slow");
        fan.connect("fast");
        let mut fast = Vec::new();
        for second in 0..10 {
            encoder(&fan, second * 30 * 33, 30);
            fast.extend(fan.take("fast"));
        }
        assert_eq!(fan.dropped_gops("fast"), 0);
        assert!(fan.dropped_gops("slow") >= 2);
        let slow = tags_of(&fan.take("slow"));
        let video: Vec<&Tag> = slow
            .iter()
            .filter(|t| t.is_video() && !t.is_sequence_header())
            .collect();
        assert!(video[0].is_keyframe(), "what is left starts at a keyframe");
        let span = slow.last().unwrap().timestamp() - video[0].timestamp();
        assert!(
            u128::from(span) <= QUEUE_SPAN.as_millis(),
            "{span} ms queued"
        );
        // The configuration survives the drops.
        assert!(slow.iter().any(|t| t.is_sequence_header() && t.is_video()));
        let fast = tags_of(&fast);
        assert_eq!(fast.iter().filter(|t| t.is_video()).count(), 1 + 300);
    }

    #[test]
    fn a_new_encoder_continues_each_timeline_and_resends_its_sequence_headers() {
        let fan = FanOut::new();
        start(&fan);
        encoder(&fan, 0, 60);
        fan.connect("a");
        let before = tags_of(&fan.take("a"));
        let last = before.last().unwrap().timestamp();
        fan.new_stream();
        // The new encoder's stream starts from 0 again.
        start(&fan);
        encoder(&fan, 0, 61);
        let after = tags_of(&[flv::header(), fan.take("a").concat().into()]);
        assert!(after.iter().take(2).all(Tag::is_sequence_header));
        assert!(
            !after.iter().any(Tag::is_script),
            "no second onMetaData on a connection that stays up"
        );
        let first_picture = after.iter().find(|t| t.is_keyframe()).unwrap();
        assert!(
            first_picture.timestamp() > last,
            "{} after {last}",
            first_picture.timestamp()
        );
        let mut prev = 0;
        for t in after
            .iter()
            .filter(|t| t.is_video() && !t.is_sequence_header())
        {
            assert!(t.timestamp() >= prev);
            prev = t.timestamp();
        }
        // No second FLV header goes to a connection that stays up.
        let raw = fan.take("a");
        assert!(raw.iter().all(|b| !b.starts_with(b"FLV")));
    }

    #[test]
    fn a_connection_before_any_keyframe_waits_for_one() {
        let fan = FanOut::new();
        fan.connect("a");
        start(&fan);
        fan.put(&[Item::Tag(inter(0)), Item::Tag(audio(3)), Item::Tag(key(33))]);
        let tags = tags_of(&fan.take("a"));
        let kinds: Vec<bool> = tags.iter().map(|t| t.is_keyframe()).collect();
        assert_eq!(kinds, [false, false, false, true], "{tags:?}");
    }
}
