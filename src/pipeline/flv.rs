//! A walker over an FLV byte stream: it cuts what the output FFmpeg writes
//! into the file header and whole tags, and says what each tag is, so the
//! fan-out (`fanout.rs`) can keep what a new connection needs and drop
//! whole GOPs. It copies nothing it does not have to: each tag is one
//! [`Bytes`] shared by every destination.
//!
//! The format (ARCHITECTURE.md, "One encode, many destinations"): a 9-byte
//! header (`FLV`, version, flags, a 32-bit header size) and a 4-byte
//! previous-tag-size of 0; then tags, each an 11-byte header (type: 8
//! audio, 9 video, 18 script data; a 24-bit data size; a 24-bit timestamp
//! and its upper 8 bits; a 3-byte stream id), the data, and a 4-byte size
//! of the tag just ended (11 + data size). Video data starts with the
//! frame type (1: keyframe) << 4 | the codec (7: AVC), then for AVC a
//! packet type (0: sequence header) and a 24-bit composition time. AAC
//! audio (sound format 10 in the upper 4 bits) has a packet type byte
//! (0: sequence header).

use bytes::{Buf, Bytes, BytesMut};

/// A tag's header.
pub const TAG_HEADER_LEN: usize = 11;
/// What follows each tag's data: its size.
const TRAILER_LEN: usize = 4;
/// A header that says it is larger than this is not one FFmpeg wrote.
const MAX_HEADER_SIZE: u32 = 1024;

pub const AUDIO: u8 = 8;
pub const VIDEO: u8 = 9;
pub const SCRIPT: u8 = 18;

/// One whole tag: header, data and trailing size.
#[derive(Clone, PartialEq, Eq)]
pub struct Tag {
    bytes: Bytes,
}

impl std::fmt::Debug for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tag(type {}, {} ms, {} bytes{}{})",
            self.kind(),
            self.timestamp(),
            self.bytes.len(),
            if self.is_keyframe() { ", key" } else { "" },
            if self.is_sequence_header() {
                ", sequence header"
            } else {
                ""
            },
        )
    }
}

impl Tag {
    /// A tag from its parts (for tests and the fuzz corpus).
    pub fn build(kind: u8, timestamp: u32, data: &[u8]) -> Tag {
        let mut out = BytesMut::with_capacity(TAG_HEADER_LEN + data.len() + TRAILER_LEN);
        let size = data.len() as u32;
        out.extend_from_slice(&[kind, (size >> 16) as u8, (size >> 8) as u8, size as u8]);
        out.extend_from_slice(&timestamp_bytes(timestamp));
        out.extend_from_slice(&[0, 0, 0]);
        out.extend_from_slice(data);
        out.extend_from_slice(&(TAG_HEADER_LEN as u32 + size).to_be_bytes());
        Tag {
            bytes: out.freeze(),
        }
    }

    /// 8 audio, 9 video, 18 script data.
    pub fn kind(&self) -> u8 {
        self.bytes[0] & 0x1f
    }

    /// Milliseconds.
    pub fn timestamp(&self) -> u32 {
        let b = &self.bytes;
        u32::from_be_bytes([b[7], b[4], b[5], b[6]])
    }

    pub fn data(&self) -> &[u8] {
        &self.bytes[TAG_HEADER_LEN..self.bytes.len() - TRAILER_LEN]
    }

    /// The whole tag as it goes on the wire.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Bytes on the wire, header and trailer included (never 0).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// A tag always has its header: never.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The same tag at another timestamp (a copy: the original is shared).
    pub fn at(&self, timestamp: u32) -> Tag {
        if timestamp == self.timestamp() {
            return self.clone();
        }
        let mut b = BytesMut::from(&self.bytes[..]);
        b[4..8].copy_from_slice(&timestamp_bytes(timestamp));
        Tag { bytes: b.freeze() }
    }

    pub fn is_video(&self) -> bool {
        self.kind() == VIDEO
    }

    pub fn is_audio(&self) -> bool {
        self.kind() == AUDIO
    }

    /// `onMetaData` and other script data.
    pub fn is_script(&self) -> bool {
        self.kind() == SCRIPT
    }

    /// A video keyframe that is a picture: for AVC, packet type 1 (not the
    /// sequence header, 0, nor the end of sequence, 2, which FFmpeg writes
    /// flagged as a keyframe when it ends a stream).
    pub fn is_keyframe(&self) -> bool {
        let d = self.data();
        let key = self.is_video() && d.first().is_some_and(|b| b >> 4 == 1);
        let picture = match d {
            [codec, packet, ..] if codec & 0x0f == 7 => *packet == 1,
            [codec] if codec & 0x0f == 7 => false,
            _ => true,
        };
        key && picture
    }

    /// The AVC decoder configuration, or AAC's audio specific config.
    pub fn is_sequence_header(&self) -> bool {
        let d = self.data();
        match self.kind() {
            VIDEO => d.len() >= 2 && d[0] & 0x0f == 7 && d[1] == 0,
            AUDIO => d.len() >= 2 && d[0] >> 4 == 10 && d[1] == 0,
            _ => false,
        }
    }
}

/// A timestamp as a tag header writes it: 24 bits, then the upper 8.
fn timestamp_bytes(ts: u32) -> [u8; 4] {
    let b = ts.to_be_bytes();
    [b[1], b[2], b[3], b[0]]
}

/// What the walker found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// The file header with the first previous-tag-size.
    Header(Bytes),
    Tag(Tag),
}

/// Why a stream is not FLV any more.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlvError {
    #[error("not an FLV stream (no FLV header)")]
    NotFlv,
    #[error("FLV header size {0} is not plausible")]
    HeaderSize(u32),
    #[error("an FLV tag ends with size {found}, not {expected}: the stream is corrupt")]
    TagSize { expected: u32, found: u32 },
}

/// Cuts a byte stream, fed in any pieces, into the header and whole tags.
/// After an error it stays failed: the stream cannot be trusted again.
#[derive(Debug, Default)]
pub struct Walker {
    buf: BytesMut,
    header_seen: bool,
    failed: Option<FlvError>,
}

impl Walker {
    pub fn new() -> Walker {
        Walker::default()
    }

    /// Takes `data` and returns every item it completes.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Item>, FlvError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.buf.extend_from_slice(data);
        let mut items = Vec::new();
        loop {
            match self.next_item() {
                Ok(Some(item)) => items.push(item),
                Ok(None) => return Ok(items),
                Err(e) => {
                    self.failed = Some(e.clone());
                    self.buf.clear();
                    return Err(e);
                }
            }
        }
    }

    fn next_item(&mut self) -> Result<Option<Item>, FlvError> {
        if !self.header_seen {
            if self.buf.len() < 9 {
                if !b"FLV".starts_with(&self.buf[..self.buf.len().min(3)]) {
                    return Err(FlvError::NotFlv);
                }
                return Ok(None);
            }
            if &self.buf[..3] != b"FLV" {
                return Err(FlvError::NotFlv);
            }
            let size = u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]]);
            if !(9..=MAX_HEADER_SIZE).contains(&size) {
                return Err(FlvError::HeaderSize(size));
            }
            let len = size as usize + TRAILER_LEN;
            if self.buf.len() < len {
                return Ok(None);
            }
            self.header_seen = true;
            return Ok(Some(Item::Header(self.buf.split_to(len).freeze())));
        }
        if self.buf.len() < TAG_HEADER_LEN {
            return Ok(None);
        }
        let b = &self.buf;
        let size = u32::from_be_bytes([0, b[1], b[2], b[3]]);
        let len = TAG_HEADER_LEN + size as usize + TRAILER_LEN;
        if self.buf.len() < len {
            self.buf.reserve(len - self.buf.len());
            return Ok(None);
        }
        let mut trailer = &self.buf[len - TRAILER_LEN..len];
        let found = trailer.get_u32();
        let expected = TAG_HEADER_LEN as u32 + size;
        if found != expected {
            return Err(FlvError::TagSize { expected, found });
        }
        Ok(Some(Item::Tag(Tag {
            bytes: self.buf.split_to(len).freeze(),
        })))
    }
}

/// A plausible FLV header with audio and video.
pub fn header() -> Bytes {
    Bytes::from_static(&[b'F', b'L', b'V', 1, 5, 0, 0, 0, 9, 0, 0, 0, 0])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn avc_seq(ts: u32) -> Tag {
        Tag::build(VIDEO, ts, &[0x17, 0, 0, 0, 0, 1, 2, 3])
    }
    pub(crate) fn aac_seq(ts: u32) -> Tag {
        Tag::build(AUDIO, ts, &[0xaf, 0, 0x11, 0x90])
    }
    pub(crate) fn key(ts: u32) -> Tag {
        Tag::build(VIDEO, ts, &[0x17, 1, 0, 0, 0, 9, 9, 9, 9])
    }
    pub(crate) fn inter(ts: u32) -> Tag {
        Tag::build(VIDEO, ts, &[0x27, 1, 0, 0, 0, 8, 8])
    }
    pub(crate) fn audio(ts: u32) -> Tag {
        Tag::build(AUDIO, ts, &[0xaf, 1, 5, 5, 5])
    }
    pub(crate) fn meta() -> Tag {
        Tag::build(SCRIPT, 0, b"\x02\x00\x0aonMetaData")
    }

    fn stream(tags: &[Tag]) -> Vec<u8> {
        let mut out = header().to_vec();
        for t in tags {
            out.extend_from_slice(t.bytes());
        }
        out
    }

    #[test]
    fn tags_are_found_whatever_the_pieces() {
        let tags = vec![meta(), avc_seq(0), aac_seq(0), key(0), audio(21), inter(33)];
        let bytes = stream(&tags);
        for piece in [1, 2, 7, 13, 64, bytes.len()] {
            let mut w = Walker::new();
            let mut items = Vec::new();
            for chunk in bytes.chunks(piece) {
                items.extend(w.push(chunk).unwrap());
            }
            assert_eq!(items[0], Item::Header(header()), "pieces of {piece}");
            let found: Vec<Tag> = items[1..]
                .iter()
                .map(|i| match i {
                    Item::Tag(t) => t.clone(),
                    other => panic!("{other:?}"),
                })
                .collect();
            assert_eq!(found, tags, "pieces of {piece}");
        }
    }

    #[test]
    fn what_each_tag_is() {
        assert!(meta().is_script());
        assert!(avc_seq(0).is_sequence_header() && !avc_seq(0).is_keyframe());
        assert!(aac_seq(0).is_sequence_header() && aac_seq(0).is_audio());
        assert!(key(0).is_keyframe() && !key(0).is_sequence_header());
        assert!(!inter(0).is_keyframe() && inter(0).is_video());
        assert!(!audio(0).is_sequence_header());
    }

    #[test]
    fn timestamps_use_all_32_bits_and_can_be_rewritten() {
        let t = key(0x1234_5678);
        assert_eq!(t.timestamp(), 0x1234_5678);
        let moved = t.at(42);
        assert_eq!(moved.timestamp(), 42);
        assert_eq!(moved.data(), t.data());
        assert_eq!(t.timestamp(), 0x1234_5678, "the original is untouched");
    }

    /// What FFmpeg itself writes (1 s of x264 with a keyframe every 5
    /// frames and AAC, the fuzz corpus's seed after its first byte).
    #[test]
    fn ffmpegs_own_flv_is_walked_whole() {
        let file = include_bytes!("../../fuzz/corpus/flv/ffmpeg_1s.flv");
        let mut w = Walker::new();
        let items = w.push(&file[1..]).unwrap();
        assert!(matches!(items[0], Item::Header(_)));
        let tags: Vec<&Tag> = items
            .iter()
            .filter_map(|i| match i {
                Item::Tag(t) => Some(t),
                Item::Header(_) => None,
            })
            .collect();
        assert!(tags[0].is_script(), "onMetaData first");
        let configs = tags.iter().filter(|t| t.is_sequence_header()).count();
        assert_eq!(configs, 2, "one AVC and one AAC sequence header");
        let keys: Vec<u32> = tags
            .iter()
            .filter(|t| t.is_keyframe())
            .map(|t| t.timestamp())
            .collect();
        // The end of sequence FFmpeg writes last, flagged "key", is no picture.
        assert_eq!(keys, [0, 500], "{tags:?}");
        let frames = tags
            .iter()
            .filter(|t| t.is_video() && t.data().get(1) == Some(&1))
            .count();
        assert_eq!(frames, 10);
        assert!(tags.iter().filter(|t| t.is_audio()).count() > 40);
    }

    #[test]
    fn what_is_not_flv_is_refused_and_stays_refused() {
        let mut w = Walker::new();
        assert_eq!(w.push(b"GIF89a"), Err(FlvError::NotFlv));
        assert_eq!(w.push(&header()), Err(FlvError::NotFlv));
        let mut w = Walker::new();
        let mut bad = stream(&[key(0)]);
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert!(matches!(w.push(&bad), Err(FlvError::TagSize { .. })));
        let mut w = Walker::new();
        let mut huge = header().to_vec();
        huge[5..9].copy_from_slice(&100_000u32.to_be_bytes());
        assert_eq!(w.push(&huge), Err(FlvError::HeaderSize(100_000)));
    }
}
