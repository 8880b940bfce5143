//! The offline source's picture, as the pump takes it: whole frames read
//! ahead into relay's pipe stores, and the last one kept to repeat
//! (ARCHITECTURE.md, "Going live without a black flash, and never a black frame").
//!
//! A thread of its own moves each of the source's frames out of its pipe
//! with splice(2) into a store of relay's pipes (`pipe_frames`), as the
//! ingest's reader does for live frames; a frame goes through memory only
//! when no store can be had. At most [`QUEUE`] frames wait for the pump:
//! while live is on air the pump takes none, the queue stays full, the
//! reader waits for room before it touches the next frame, and the source
//! rests blocked in its write.
//!
//! The pump never waits for the source: a tick that finds no frame queued
//! (the source is late: a loaded machine, a source that was resting and
//! has to be scheduled again, one that died) repeats the last offline
//! frame. That frame is owed: the sound went on, so the next frames the
//! source delivers are skipped, one a tick, until the picture is level with
//! the sound again.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use nix::poll::PollFlags;
use tokio::sync::mpsc;

use crate::pipeline::frames::{Frame, FramePool};
use crate::pipeline::ingest::{read_frame, splice_frame};
use crate::pipeline::pipe_frames::PipePool;
use crate::pipeline::pipe_io::wait_for;

/// Frames owed (the last frame repeated while the source was late) are
/// made up by skipping; beyond a second's worth the debt is forgiven, for
/// the sound as for the picture (`offline_frames`), so the two stay level
/// either way.
pub(crate) const MAX_OWED_FRAMES: u64 = 30;

/// Offline frames read ahead of the pump: enough to ride out a source that
/// is scheduled late, few because each holds a store (three pipes at
/// 1080p) for as long as live is on air.
pub const QUEUE: usize = 2;

/// Starts reading the source's video pipe `pipe` (non-blocking) into
/// whole frames, in a thread of its own; the thread ends when the source
/// closes its pipe or the receiver is dropped.
pub fn read(
    pipe: OwnedFd,
    pipes: Option<PipePool>,
    frames: FramePool,
) -> std::io::Result<mpsc::Receiver<Frame>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let runtime = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("offline-video".into())
        .spawn(move || read_frames(pipe, pipes, frames, tx, runtime))?;
    Ok(rx)
}

fn read_frames(
    pipe: OwnedFd,
    pipes: Option<PipePool>,
    frames: FramePool,
    tx: mpsc::Sender<Frame>,
    runtime: tokio::runtime::Handle,
) {
    loop {
        // Room in the queue first, then the frame's first bytes, then a
        // store: while live is on air the next frame stays in the source,
        // which rests blocked in its write.
        let Ok(permit) = runtime.block_on(tx.reserve()) else {
            return;
        };
        if wait_for(pipe.as_fd(), PollFlags::POLLIN, None).is_err() {
            return;
        }
        let frame = match pipes.as_ref().and_then(PipePool::frame) {
            Some(store) => match splice_frame(pipe.as_fd(), store) {
                Some(frame) => Frame::Piped(Arc::new(frame)),
                None => return,
            },
            None => {
                let Ok(buf) = frames.take() else {
                    return;
                };
                match read_frame(pipe.as_fd(), buf) {
                    Some(buf) => Frame::Mem(frames.share(buf)),
                    None => return,
                }
            }
        };
        permit.send(frame);
    }
}

/// The offline picture the pump sends: the current source's frames, and
/// the last frame any source gave, which outlives its source (a source
/// that died and is being restarted is repeated too).
#[derive(Default)]
pub struct OfflinePicture {
    source: Option<mpsc::Receiver<Frame>>,
    last: Option<Frame>,
    /// Ticks that repeated the last frame while the source was late.
    owed: u64,
}

impl OfflinePicture {
    /// A (re)started source's frames, or `None` while there is none.
    pub fn set_source(&mut self, frames: Option<mpsc::Receiver<Frame>>) {
        self.source = frames;
        // A new source's sound starts afresh with its picture.
        self.owed = 0;
    }

    /// This tick's offline frame: the source's next, or, if it has none
    /// queued, the last one again (owed). `None` only before any source
    /// ever gave a frame.
    pub fn next(&mut self) -> Option<Frame> {
        let Some(source) = self.source.as_mut() else {
            return self.last.clone();
        };
        if self.owed > MAX_OWED_FRAMES {
            // Too far behind to catch up unnoticed: the sound's debt is
            // forgiven at the same bound (`SourceAudio`).
            self.owed = 0;
        }
        // Catch up one frame a tick, and only while another is queued, so
        // that skipping never leaves the tick without a fresh frame.
        if self.owed > 0 && source.len() >= 2 {
            let _ = source.try_recv();
            self.owed -= 1;
        }
        match source.try_recv() {
            Ok(frame) => {
                self.last = Some(frame.clone());
                Some(frame)
            }
            Err(_) => {
                if self.last.is_some() {
                    self.owed += 1;
                }
                self.last.clone()
            }
        }
    }

    /// The last offline frame, without taking one from the source.
    pub fn last(&self) -> Option<Frame> {
        self.last.clone()
    }

    /// Whether an offline frame is there to send (taken or queued).
    pub fn has_frame(&self) -> bool {
        self.last.is_some() || self.source.as_ref().is_some_and(|s| !s.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn frame(n: u8) -> Frame {
        Frame::Mem(Bytes::from(vec![n; 4]))
    }

    fn id(f: Option<Frame>) -> Option<u8> {
        f.and_then(|f| f.memory()).map(|b| b[0])
    }

    fn picture() -> (OfflinePicture, mpsc::Sender<Frame>) {
        let (tx, rx) = mpsc::channel(8);
        let mut p = OfflinePicture::default();
        p.set_source(Some(rx));
        (p, tx)
    }

    #[test]
    fn nothing_before_the_first_frame_then_every_frame_in_turn() {
        let (mut p, tx) = picture();
        assert!(!p.has_frame());
        assert_eq!(id(p.next()), None);
        assert_eq!(p.owed, 0, "nothing to owe before a first frame");
        tx.try_send(frame(1)).unwrap();
        assert!(p.has_frame());
        tx.try_send(frame(2)).unwrap();
        assert_eq!(id(p.next()), Some(1));
        assert_eq!(id(p.next()), Some(2));
    }

    #[test]
    fn a_late_source_repeats_the_last_frame_and_catches_up_after() {
        let (mut p, tx) = picture();
        tx.try_send(frame(1)).unwrap();
        assert_eq!(id(p.next()), Some(1));
        // Late for two ticks: the last frame again, twice owed.
        assert_eq!(id(p.next()), Some(1));
        assert_eq!(id(p.next()), Some(1));
        assert_eq!(p.owed, 2);
        // It comes back with a burst: one skipped a tick, while another
        // is queued, until level.
        for n in 2..=6 {
            tx.try_send(frame(n)).unwrap();
        }
        assert_eq!(id(p.next()), Some(3));
        assert_eq!(id(p.next()), Some(5));
        assert_eq!(p.owed, 0);
        assert_eq!(id(p.next()), Some(6));
        // A single queued frame is shown, not skipped, even when owed.
        assert_eq!(id(p.next()), Some(6));
        tx.try_send(frame(7)).unwrap();
        assert_eq!(id(p.next()), Some(7));
        assert_eq!(p.owed, 1);
    }

    #[test]
    fn the_last_frame_outlives_its_source() {
        let (mut p, tx) = picture();
        tx.try_send(frame(1)).unwrap();
        assert_eq!(id(p.next()), Some(1));
        // The source dies: its frames end, the picture stays.
        drop(tx);
        assert_eq!(id(p.next()), Some(1));
        p.set_source(None);
        assert_eq!(id(p.next()), Some(1));
        assert_eq!(id(p.last()), Some(1));
        // The restarted source owes nothing and takes over at once.
        let (tx, rx) = mpsc::channel(8);
        p.set_source(Some(rx));
        assert_eq!(p.owed, 0);
        tx.try_send(frame(9)).unwrap();
        tx.try_send(frame(10)).unwrap();
        assert_eq!(id(p.next()), Some(9));
    }

    #[test]
    fn a_debt_beyond_a_second_is_forgiven() {
        let (mut p, tx) = picture();
        tx.try_send(frame(1)).unwrap();
        p.next();
        for _ in 0..=MAX_OWED_FRAMES {
            p.next();
        }
        assert_eq!(p.owed, MAX_OWED_FRAMES + 1);
        tx.try_send(frame(2)).unwrap();
        tx.try_send(frame(3)).unwrap();
        // Forgiven: nothing skipped.
        assert_eq!(id(p.next()), Some(2));
        assert_eq!(p.owed, 0);
    }
}
