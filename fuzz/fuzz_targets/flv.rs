//! The FLV walker the fan-out reads the encoder with, on arbitrary input
//! cut in arbitrary pieces (the first byte says how long each is). Any
//! result is fine; a panic (or an abort, a hang) is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::flv::{Item, Walker};

fuzz_target!(|data: &[u8]| {
    let Some((&piece, rest)) = data.split_first() else {
        return;
    };
    let mut walker = Walker::new();
    for chunk in rest.chunks(usize::from(piece).max(1)) {
        let Ok(items) = walker.push(chunk) else {
            return;
        };
        for item in items {
            if let Item::Tag(tag) = item {
                let _ = (tag.is_keyframe(), tag.is_sequence_header(), tag.timestamp());
                let _ = tag.at(tag.timestamp().wrapping_add(1)).data().len();
            }
        }
    }
});
