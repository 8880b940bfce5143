//! Raw video frame buffers, reused. A raw frame is large (3 MB at 1080p)
//! and 30 of them a second pass through the daemon, a few alive at any
//! moment (queued for the pump, in the output's pipe). Allocated afresh
//! from the heap, each cost page faults, and the heap kept its peak: glibc
//! serves such blocks from its arena once the first one is freed, and does
//! not give the holes back. Here each buffer is its own anonymous mapping;
//! when the last reference to a frame is dropped its buffer goes back to a
//! small pool, and the next frame is read into it. Buffers beyond what the
//! pool keeps are unmapped, so a burst's memory goes back to the system.

use std::io;
use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use nix::sys::mman::{self, MapFlags, ProtFlags};

/// Free buffers a pool keeps. In steady state 3–5 frames are in use (the
/// one being read, one or two queued for the pump, the one being moved into
/// the output's pipe and the one before it, whose tail may still be in the
/// pipe); keeping a few more lets that number swing without unmapping and
/// mapping again, while the memory of a rarer burst goes back.
pub const KEEP: usize = 3;

/// Buffers of one frame size, shared by everything that reads frames in
/// one pipeline. Cloning gives another handle to the same pool.
#[derive(Clone)]
pub struct FramePool {
    inner: Arc<Inner>,
}

struct Inner {
    frame_bytes: usize,
    keep: usize,
    free: Mutex<Vec<FrameBuf>>,
    /// Buffers now mapped (in use or free), and ever mapped.
    mapped: AtomicUsize,
    ever: AtomicU64,
}

impl FramePool {
    pub fn new(frame_bytes: usize, keep: usize) -> FramePool {
        FramePool {
            inner: Arc::new(Inner {
                frame_bytes,
                keep,
                free: Mutex::new(Vec::new()),
                mapped: AtomicUsize::new(0),
                ever: AtomicU64::new(0),
            }),
        }
    }

    pub fn frame_bytes(&self) -> usize {
        self.inner.frame_bytes
    }

    /// An empty buffer with room for one frame: a free one if there is one.
    pub fn take(&self) -> io::Result<FrameBuf> {
        if let Some(mut buf) = self.inner.free.lock().unwrap().pop() {
            buf.len = 0;
            return Ok(buf);
        }
        let buf = FrameBuf::new(self.inner.frame_bytes)?;
        self.inner.mapped.fetch_add(1, Ordering::Relaxed);
        self.inner.ever.fetch_add(1, Ordering::Relaxed);
        Ok(buf)
    }

    /// Shares a filled buffer; it comes back to the pool when the last
    /// clone of the returned `Bytes` is dropped.
    pub fn share(&self, buf: FrameBuf) -> Bytes {
        Bytes::from_owner(Pooled {
            buf: Some(buf),
            pool: self.inner.clone(),
        })
    }

    /// Buffers mapped now, in use or free.
    pub fn mapped(&self) -> usize {
        self.inner.mapped.load(Ordering::Relaxed)
    }

    /// Buffers ever mapped.
    pub fn ever_mapped(&self) -> u64 {
        self.inner.ever.load(Ordering::Relaxed)
    }

    /// Free buffers waiting for reuse.
    pub fn free(&self) -> usize {
        self.inner.free.lock().unwrap().len()
    }
}

/// One frame's memory: an anonymous private mapping, so it is zeroed when
/// new (always initialised) and returned to the system when dropped.
pub struct FrameBuf {
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
}

// SAFETY: FrameBuf owns its mapping exclusively, like a Vec<u8>.
unsafe impl Send for FrameBuf {}
unsafe impl Sync for FrameBuf {}

impl FrameBuf {
    /// A new mapping of `cap` bytes, zeroed, none of them filled yet.
    pub fn new(cap: usize) -> io::Result<FrameBuf> {
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
        Ok(FrameBuf {
            ptr: ptr.cast(),
            cap: length.get(),
            len: 0,
        })
    }

    /// Bytes filled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The room not yet filled, to read into.
    pub fn spare(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `cap` bytes, initialised (zeroed when
        // mapped), and borrowed mutably through `self`.
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(self.len), self.cap - self.len)
        }
    }

    /// Marks `n` more bytes of the spare room as filled.
    pub fn advance(&mut self, n: usize) {
        self.len = (self.len + n).min(self.cap);
    }
}

impl AsRef<[u8]> for FrameBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the first `len` bytes of the mapping, initialised.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for FrameBuf {
    fn drop(&mut self) {
        // SAFETY: our own mapping, no longer referenced.
        let _ = unsafe { mman::munmap(self.ptr.cast(), self.cap) };
    }
}

struct Pooled {
    buf: Option<FrameBuf>,
    pool: Arc<Inner>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        self.buf.as_ref().map_or(&[], |b| b.as_ref())
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let Some(buf) = self.buf.take() else {
            return;
        };
        let pool = &self.pool;
        let mut free = pool.free.lock().unwrap();
        if free.len() < pool.keep {
            free.push(buf);
        } else {
            drop(free);
            pool.mapped.fetch_sub(1, Ordering::Relaxed);
            drop(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(pool: &FramePool, byte: u8) -> Bytes {
        let mut b = pool.take().unwrap();
        let n = b.spare().len();
        b.spare().fill(byte);
        b.advance(n);
        pool.share(b)
    }

    #[test]
    fn a_dropped_frame_is_reused() {
        let pool = FramePool::new(16, 4);
        let frame = filled(&pool, 7);
        let ptr = frame.as_ptr();
        let copy = frame.clone();
        drop(frame);
        // Still referenced: not back yet.
        assert_eq!(pool.free(), 0);
        assert_eq!(&copy[..], &[7u8; 16]);
        drop(copy);
        assert_eq!(pool.free(), 1);
        let mut again = pool.take().unwrap();
        assert!(again.is_empty());
        assert_eq!(again.spare().as_ptr(), ptr);
        assert_eq!(pool.ever_mapped(), 1);
    }

    #[test]
    fn only_a_few_free_buffers_are_kept() {
        let pool = FramePool::new(8, 2);
        let frames: Vec<Bytes> = (0..5).map(|i| filled(&pool, i)).collect();
        assert_eq!(pool.mapped(), 5);
        assert_eq!(&frames[3][..], &[3u8; 8]);
        drop(frames);
        assert_eq!(pool.free(), 2);
        assert_eq!(pool.mapped(), 2);
    }

    #[test]
    fn a_buffer_is_filled_in_parts() {
        let pool = FramePool::new(6, 1);
        let mut b = pool.take().unwrap();
        b.spare()[..4].copy_from_slice(&[1, 2, 3, 4]);
        b.advance(4);
        assert_eq!(b.spare().len(), 2);
        b.spare().copy_from_slice(&[5, 6]);
        b.advance(2);
        assert!(b.spare().is_empty());
        assert_eq!(&pool.share(b)[..], &[1, 2, 3, 4, 5, 6]);
    }
}
