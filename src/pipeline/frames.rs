//! A live video frame ([`Frame`]): held in pipes of ours (`pipeframes`),
//! or in memory, for the black filler and for live frames that cannot have
//! pipes. The rest of this file is that memory.
//!
//! Raw video frame buffers, reused. A raw frame is large (3 MB at 1080p)
//! and 30 of them a second may pass through the daemon, a few alive at any
//! moment (queued for the pump, in the output's pipe). Allocated afresh
//! from the heap, each cost page faults, and the heap kept its peak: glibc
//! serves such blocks from its arena once the first one is freed, and does
//! not give the holes back. Here each buffer is its own anonymous mapping;
//! when the last reference to a frame is dropped its buffer goes back to a
//! small pool, and the next frame is read into it. Buffers beyond what the
//! pool keeps are unmapped, so a burst's memory goes back to the system.
//!
//! A pool also has a ceiling ([`CAP`]): when every buffer it may map is in
//! use, the next frame waits in the ingest's pipe until one comes back,
//! instead of in our memory. While the output keeps up, a buffer comes back
//! within a tick or two: the pump takes a frame off the ingest's queue at
//! every tick and the output reads one. At 1080p the ceiling is what keeps
//! the daemon within its memory budget when frames arrive in a burst. When
//! the output stops reading (a stalled destination), the frames queued for
//! it hold buffers for as long as it hangs; then, after [`OVER_CAP_AFTER`],
//! the reader gets a buffer beyond the ceiling, because live frames must
//! keep arriving: the pump would otherwise take the feed for dead.

use std::io;
use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use nix::sys::mman::{self, MapFlags, ProtFlags};

use crate::pipeline::pipe_frames::PipedFrame;
use crate::pipeline::raw_format::RawFormat;

/// Free buffers a pool keeps. In steady state 3–5 frames are in use (the
/// one being read, one or two queued for the pump, the one being moved into
/// the output's pipe and the one before it, whose tail may still be in the
/// pipe); keeping a few more lets that number swing without unmapping and
/// mapping again, while the memory of a rarer burst goes back.
pub const KEEP: usize = 3;
/// Buffers a pool maps at most, in use or free: the frame being read, two
/// queued for the pump (the jitter buffer), the one being moved into the
/// output's pipe, and the one before it. The black filler frame comes from
/// the pool too.
pub const CAP: usize = 5;
/// How long a reader waits at the ceiling before it maps beyond it.
pub const OVER_CAP_AFTER: Duration = Duration::from_millis(100);

/// A live video frame: in our memory, or held in pipes of ours (see
/// `pipeframes`). Clones share it.
#[derive(Clone)]
pub enum Frame {
    Mem(Bytes),
    Piped(Arc<PipedFrame>),
}

impl Frame {
    pub fn len(&self) -> usize {
        match self {
            Frame::Mem(b) => b.len(),
            Frame::Piped(p) => p.len(),
        }
    }

    /// The frame's memory, if it is in ours.
    pub fn memory(&self) -> Option<Bytes> {
        match self {
            Frame::Mem(b) => Some(b.clone()),
            Frame::Piped(_) => None,
        }
    }
}

impl From<Bytes> for Frame {
    fn from(b: Bytes) -> Frame {
        Frame::Mem(b)
    }
}

/// The black filler frame, for every writer of filler: the pump's, and
/// each output pipe writer's fallback. Made ([`black_frame`])
/// when first needed and freed (3 MB at 1080p) once a round of use went by
/// without it.
pub struct Black {
    format: RawFormat,
    pool: FramePool,
    frame: Option<Bytes>,
    used: bool,
}

impl Black {
    /// Black frames of `format`, in buffers of `pool`.
    pub fn new(format: RawFormat, pool: FramePool) -> Black {
        Black {
            format,
            pool,
            frame: None,
            used: false,
        }
    }

    /// The black frame, made if need be.
    pub fn frame(&mut self) -> Bytes {
        self.used = true;
        let (format, pool) = (&self.format, &self.pool);
        self.frame
            .get_or_insert_with(|| black_frame(format, pool))
            .clone()
    }

    /// Ends a round of use (the pump's tick): frees the frame if it was not
    /// asked for since the last round ended.
    pub fn end_round(&mut self) {
        if !std::mem::take(&mut self.used) {
            self.frame = None;
        }
    }
}

/// Buffers of one frame size, shared by everything that reads frames in
/// one pipeline. Cloning gives another handle to the same pool.
#[derive(Clone)]
pub struct FramePool {
    inner: Arc<Inner>,
}

struct Inner {
    frame_bytes: usize,
    keep: usize,
    cap: usize,
    free: Mutex<Vec<Mapping>>,
    /// Signalled whenever a buffer comes back.
    returned: Condvar,
    /// Buffers now mapped (in use or free), and ever mapped.
    mapped: AtomicUsize,
    ever: AtomicU64,
}

impl Inner {
    /// A buffer is no longer used: keep it for the next frame, or unmap it.
    fn give_back(&self, mem: Mapping) {
        let mut free = self.free.lock().unwrap();
        // Counted under the lock, so a reader about to wait sees it.
        let unmap = if free.len() < self.keep {
            free.push(mem);
            None
        } else {
            self.mapped.fetch_sub(1, Ordering::AcqRel);
            Some(mem)
        };
        drop(free);
        self.returned.notify_one();
        drop(unmap);
    }
}

impl FramePool {
    pub fn new(frame_bytes: usize, keep: usize, cap: usize) -> FramePool {
        FramePool {
            inner: Arc::new(Inner {
                frame_bytes,
                keep: keep.min(cap),
                cap: cap.max(1),
                free: Mutex::new(Vec::new()),
                returned: Condvar::new(),
                mapped: AtomicUsize::new(0),
                ever: AtomicU64::new(0),
            }),
        }
    }

    /// An empty buffer with room for one frame: a free one if there is one,
    /// else a new one; at the ceiling, waits for one to come back, for up to
    /// [`OVER_CAP_AFTER`]. However the buffer ends (shared and dropped, or
    /// dropped unfilled), it comes back. Blocks: for the ingest's thread.
    pub fn take(&self) -> io::Result<FrameBuf> {
        let deadline = std::time::Instant::now() + OVER_CAP_AFTER;
        loop {
            if let Some(buf) = self.try_take()? {
                return Ok(buf);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return self.map_new();
            }
            let inner = &self.inner;
            let free = inner.free.lock().unwrap();
            if free.is_empty() && inner.mapped.load(Ordering::Acquire) >= inner.cap {
                let _ = inner.returned.wait_timeout(free, left);
            }
        }
    }

    /// [`take`](Self::take) without waiting: `None` at the ceiling.
    pub fn try_take(&self) -> io::Result<Option<FrameBuf>> {
        let inner = &self.inner;
        let reused = inner.free.lock().unwrap().pop();
        let mem = match reused {
            Some(mem) => mem,
            None => {
                if inner
                    .mapped
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |m| {
                        (m < inner.cap).then_some(m + 1)
                    })
                    .is_err()
                {
                    return Ok(None);
                }
                match Mapping::new(inner.frame_bytes) {
                    Ok(mem) => {
                        inner.ever.fetch_add(1, Ordering::Relaxed);
                        mem
                    }
                    Err(e) => {
                        inner.mapped.fetch_sub(1, Ordering::AcqRel);
                        return Err(e);
                    }
                }
            }
        };
        Ok(Some(self.wrap(mem)))
    }

    /// A new buffer, ceiling or not.
    fn map_new(&self) -> io::Result<FrameBuf> {
        let mem = Mapping::new(self.inner.frame_bytes)?;
        self.inner.mapped.fetch_add(1, Ordering::AcqRel);
        self.inner.ever.fetch_add(1, Ordering::Relaxed);
        Ok(self.wrap(mem))
    }

    fn wrap(&self, mem: Mapping) -> FrameBuf {
        FrameBuf {
            mem: Some(mem),
            len: 0,
            pool: Some(self.inner.clone()),
        }
    }

    /// Shares a filled buffer; it comes back to its pool when the last
    /// clone of the returned `Bytes` is dropped.
    pub fn share(&self, buf: FrameBuf) -> Bytes {
        Bytes::from_owner(buf)
    }

    /// Buffers mapped now, in use or free.
    #[cfg(test)]
    pub fn mapped(&self) -> usize {
        self.inner.mapped.load(Ordering::Relaxed)
    }

    /// Buffers ever mapped.
    #[cfg(test)]
    pub fn ever_mapped(&self) -> u64 {
        self.inner.ever.load(Ordering::Relaxed)
    }

    /// Free buffers waiting for reuse.
    #[cfg(test)]
    pub fn free(&self) -> usize {
        self.inner.free.lock().unwrap().len()
    }
}

/// An anonymous private mapping: zeroed when new (so always initialised),
/// returned to the system when dropped.
struct Mapping {
    ptr: NonNull<u8>,
    cap: usize,
}

// SAFETY: a Mapping owns its memory exclusively, like a Vec<u8>.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(cap: usize) -> io::Result<Mapping> {
        let length = NonZeroUsize::new(cap.max(1)).expect("not zero");
        // SAFETY: a fresh anonymous mapping, aliasing nothing.
        let ptr = unsafe {
            mman::mmap_anonymous(
                None,
                length,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE,
            )
        }?;
        // Huge pages where the mapping allows: fewer page faults when it is
        // new, and vmsplice pins a frame's pages in far fewer steps.
        // SAFETY: advice on our own mapping.
        let _ = unsafe { mman::madvise(ptr, length.get(), mman::MmapAdvise::MADV_HUGEPAGE) };
        Ok(Mapping {
            ptr: ptr.cast(),
            cap: length.get(),
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping, no longer referenced.
        let _ = unsafe { mman::munmap(self.ptr.cast(), self.cap) };
    }
}

/// One frame's memory, filled from the start: from a pool (and back to it
/// when dropped), or a mapping of its own.
pub struct FrameBuf {
    /// Always `Some` until dropped.
    mem: Option<Mapping>,
    len: usize,
    pool: Option<Arc<Inner>>,
}

impl FrameBuf {
    /// A buffer of `cap` bytes outside any pool, none of them filled yet.
    pub fn new(cap: usize) -> io::Result<FrameBuf> {
        Ok(FrameBuf {
            mem: Some(Mapping::new(cap)?),
            len: 0,
            pool: None,
        })
    }

    fn mem(&self) -> &Mapping {
        self.mem.as_ref().expect("mapped until dropped")
    }

    /// Bytes filled so far.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// The room not yet filled, to read into.
    pub fn spare(&mut self) -> &mut [u8] {
        let Mapping { ptr, cap } = *self.mem();
        // SAFETY: the mapping is `cap` bytes, initialised (zeroed when
        // mapped), and borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr().add(self.len), cap - self.len) }
    }

    /// Marks `n` more bytes of the spare room as filled.
    pub fn advance(&mut self, n: usize) {
        self.len = (self.len + n).min(self.mem().cap);
    }
}

impl AsRef<[u8]> for FrameBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the first `len` bytes of the mapping, initialised.
        unsafe { std::slice::from_raw_parts(self.mem().ptr.as_ptr(), self.len) }
    }
}

impl Drop for FrameBuf {
    fn drop(&mut self) {
        if let (Some(mem), Some(pool)) = (self.mem.take(), self.pool.take()) {
            pool.give_back(mem);
        }
        // Without a pool the mapping is unmapped as it drops.
    }
}

/// A black yuv420p frame (Y = 16, U = V = 128: video range black), in
/// a buffer of `pool` (so it counts against its ceiling), or, should the
/// pool be at its ceiling, in its own mapping; either way its memory goes
/// back when it is dropped.
pub fn black_frame(format: &RawFormat, pool: &FramePool) -> Bytes {
    let luma = (format.width * format.height) as usize;
    let len = format.frame_bytes();
    let fill = |frame: &mut FrameBuf| {
        let room = frame.spare();
        room[..luma].fill(16);
        room[luma..len].fill(128);
        frame.advance(len);
    };
    if let Ok(Some(mut frame)) = pool.try_take() {
        fill(&mut frame);
        return pool.share(frame);
    }
    match FrameBuf::new(len) {
        Ok(mut frame) => {
            fill(&mut frame);
            Bytes::from_owner(frame)
        }
        Err(_) => {
            let mut frame = vec![128u8; len];
            frame[..luma].fill(16);
            frame.into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(pool: &FramePool, byte: u8) -> Bytes {
        let mut b = pool.try_take().unwrap().expect("below the ceiling");
        let n = b.spare().len();
        b.spare().fill(byte);
        b.advance(n);
        pool.share(b)
    }

    #[test]
    fn the_black_frame_is_kept_while_used_and_freed_after_a_round_without() {
        let format = RawFormat {
            width: 4,
            height: 2,
            fps: 30,
            sample_rate: 48000,
        };
        let pool = FramePool::new(format.frame_bytes(), 1, 2);
        let mut black = Black::new(format, pool.clone());
        let frame = black.frame();
        assert_eq!(&frame[..8], &[16u8; 8]);
        assert!(frame[8..].iter().all(|&b| b == 128));
        drop(frame);
        black.end_round();
        assert_eq!(pool.mapped(), 1, "used this round: kept");
        black.end_round();
        assert_eq!((pool.mapped(), pool.free()), (1, 1), "back in the pool");
    }

    #[test]
    fn a_dropped_frame_is_reused() {
        let pool = FramePool::new(16, 4, 8);
        let frame = filled(&pool, 7);
        let ptr = frame.as_ptr();
        let copy = frame.clone();
        drop(frame);
        // Still referenced: not back yet.
        assert_eq!(pool.free(), 0);
        assert_eq!(&copy[..], &[7u8; 16]);
        drop(copy);
        assert_eq!(pool.free(), 1);
        let mut again = pool.try_take().unwrap().unwrap();
        assert_eq!(again.len(), 0);
        assert_eq!(again.spare().as_ptr(), ptr);
        assert_eq!(pool.ever_mapped(), 1);
    }

    #[test]
    fn only_a_few_free_buffers_are_kept() {
        let pool = FramePool::new(8, 2, 8);
        let frames: Vec<Bytes> = (0..5).map(|i| filled(&pool, i)).collect();
        assert_eq!(pool.mapped(), 5);
        assert_eq!(&frames[3][..], &[3u8; 8]);
        drop(frames);
        assert_eq!(pool.free(), 2);
        assert_eq!(pool.mapped(), 2);
    }

    #[test]
    fn a_buffer_is_filled_in_parts() {
        let pool = FramePool::new(6, 1, 8);
        let mut b = pool.try_take().unwrap().unwrap();
        b.spare()[..4].copy_from_slice(&[1, 2, 3, 4]);
        b.advance(4);
        assert_eq!(b.spare().len(), 2);
        b.spare().copy_from_slice(&[5, 6]);
        b.advance(2);
        assert!(b.spare().is_empty());
        assert_eq!(&pool.share(b)[..], &[1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn at_the_ceiling_a_reader_waits_for_a_buffer_to_come_back() {
        let pool = FramePool::new(8, 1, 2);
        let a = filled(&pool, 1);
        let b = filled(&pool, 2);
        assert!(pool.try_take().unwrap().is_none(), "a third buffer");
        let waiting = std::thread::spawn({
            let pool = pool.clone();
            move || pool.take().map(|mut buf| buf.spare().len())
        });
        std::thread::sleep(OVER_CAP_AFTER / 4);
        assert!(!waiting.is_finished(), "took a buffer beyond the ceiling");
        drop(a);
        assert_eq!(waiting.join().unwrap().unwrap(), 8);
        assert!(pool.mapped() <= 2, "not a buffer beyond the ceiling");
        drop(b);
    }

    #[test]
    fn a_buffer_dropped_unfilled_comes_back_too() {
        // An ingest that stops in the middle of a frame drops its buffer
        // without sharing it; the pool must not lose the slot.
        let pool = FramePool::new(8, 0, 1);
        for _ in 0..3 {
            let mut b = pool.try_take().unwrap().expect("the slot is back");
            b.advance(3);
            drop(b);
        }
        assert_eq!(pool.mapped(), 0);
    }

    #[test]
    fn a_reader_kept_waiting_too_long_gets_a_buffer_beyond_the_ceiling() {
        let pool = FramePool::new(8, 1, 1);
        let held = filled(&pool, 1);
        let started = std::time::Instant::now();
        let extra = pool.take().unwrap();
        assert!(started.elapsed() >= OVER_CAP_AFTER);
        assert_eq!(pool.mapped(), 2);
        drop(extra);
        drop(held);
        // Back within the ceiling, keeping one.
        assert_eq!((pool.mapped(), pool.free()), (1, 1));
    }

    #[test]
    fn a_black_frame_is_whole_even_at_the_pools_ceiling() {
        let f = RawFormat {
            width: 1280,
            height: 720,
            fps: 30,
            sample_rate: 48000,
        };
        let pool = FramePool::new(f.frame_bytes(), 1, 1);
        assert_eq!(black_frame(&f, &pool).len(), f.frame_bytes());
        assert_eq!(pool.mapped(), 1);
        // At the pool's ceiling it still gets a frame, of its own.
        assert_eq!(black_frame(&f, &pool).len(), f.frame_bytes());
    }
}
