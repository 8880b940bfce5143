//! Live video frames held in pipes of ours instead of our memory.
//!
//! Read out of the ingest's pipe, a raw frame (3 MB at 1080p) is copied
//! into our memory and the pipe's pages are freed; moved on into the
//! output's pipes with vmsplice, our pages are pinned again. perf put about
//! 40 % of the daemon's CPU there. Instead, a frame moves with splice(2)
//! from the ingest's pipe into a store of pipes of ours: the pages change
//! hands and no byte is copied. From there tee(2) gives each of the
//! output's pipes a reference to the same pages, as often as needed: once
//! for each input it goes to, again while it is held as filler.
//!
//! A pipe holds at most 1 MB for an unprivileged process
//! (fs.pipe-max-size), so a frame is kept in several pipes, its pieces.
//! tee copies from the start of a pipe only, so a writer first tees a piece
//! whole into an empty pipe of its own (a [`Cursor`]), from which splice
//! moves it on as the output's pipe makes room.
//!
//! Pipes are limited per user (fs.pipe-user-pages-soft, 64 MB of pipe
//! capacity by default). When a store cannot be had, at the pool's ceiling
//! or at that limit, the frame is read into memory as before.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag};
use nix::poll::PollFlags;
use tracing::warn;

use crate::pipeline::pipe_io;

/// The size asked for each pipe: Linux's default fs.pipe-max-size.
const PIPE_SIZE: usize = 1 << 20;

/// Stores a pool makes at most: the frame being read, one or two queued for
/// the pump, and the one it holds. Beyond, frames go through memory.
const STORES: usize = 4;

/// Fewer stores than this would send most frames through memory anyway.
const MIN_STORES: usize = 3;

/// Pipes a pool may make: the kernel lets a user have 64 MB of pipe
/// capacity by default, for every relay instance and its FFmpeg children
/// together. Four 1080p frames take 12; frames above 1440p (6 pipes each)
/// go through memory. An instance has two pools (live and offline frames,
/// [`Stores`]): 24 pipes at 1080p, 16 at 720p, and two cursors.
const MAX_PIPES: usize = 18;

/// A pipe of ours, both ends.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    /// A pipe of exactly `size` bytes' capacity, or an error.
    fn new(size: usize) -> io::Result<Pipe> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        nix::fcntl::fcntl(&write, FcntlArg::F_SETPIPE_SZ(size as i32))?;
        let got = nix::fcntl::fcntl(&write, FcntlArg::F_GETPIPE_SZ)?;
        if got as usize != size {
            return Err(io::Error::other(format!(
                "a pipe was sized to {got} bytes, not {size}"
            )));
        }
        Ok(Pipe { read, write })
    }
}

/// Hands out stores for frames, and takes them back emptied.
#[derive(Clone)]
pub struct PipePool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    frame_bytes: usize,
    /// Bytes a piece is filled to: the capacity less two pages, as the
    /// first and last page of a piece may be partly filled.
    piece_bytes: usize,
    free: Mutex<Vec<Vec<Pipe>>>,
    /// Stores in existence, free or holding a frame, and at most.
    stores: AtomicUsize,
    max_stores: usize,
    /// Drained pieces are spliced here.
    null: File,
    warned: AtomicBool,
}

impl PipePool {
    /// A pool for frames of `frame_bytes`, with all its stores made at once:
    /// its fds and its share of the user's pipe capacity stay the same from
    /// the start, and a lack of pipes shows at once.
    pub fn new(frame_bytes: usize) -> io::Result<PipePool> {
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .unwrap_or(4096) as usize;
        let piece_bytes = PIPE_SIZE - 2 * page;
        let pieces = frame_bytes.div_ceil(piece_bytes).max(1);
        let count = (MAX_PIPES / pieces).min(STORES);
        if count < MIN_STORES {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("a frame of {frame_bytes} bytes would take {pieces} pipes"),
            ));
        }
        let stores = (0..count)
            .map(|_| (0..pieces).map(|_| Pipe::new(PIPE_SIZE)).collect())
            .collect::<io::Result<Vec<Vec<Pipe>>>>()?;
        Ok(PipePool {
            inner: Arc::new(PoolInner {
                frame_bytes,
                piece_bytes,
                free: Mutex::new(stores),
                stores: AtomicUsize::new(count),
                max_stores: count,
                null: std::fs::OpenOptions::new().write(true).open("/dev/null")?,
                warned: AtomicBool::new(false),
            }),
        })
    }

    /// An empty frame to fill, or `None` (the frame goes through memory).
    pub fn frame(&self) -> Option<PipedFrame> {
        let inner = &self.inner;
        let reused = inner.free.lock().unwrap().pop();
        let pieces = match reused {
            Some(p) => p,
            None => {
                inner
                    .stores
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < inner.max_stores).then_some(n + 1)
                    })
                    .ok()?;
                let count = inner.frame_bytes.div_ceil(inner.piece_bytes);
                match (0..count).map(|_| Pipe::new(PIPE_SIZE)).collect() {
                    Ok(p) => p,
                    Err(err) => {
                        inner.stores.fetch_sub(1, Ordering::AcqRel);
                        if !inner.warned.swap(true, Ordering::Relaxed) {
                            warn!(
                                %err,
                                "live frames go through memory, which costs more CPU: \
                                 no pipes of 1 MB to hold them (the user's pipe memory \
                                 may be at the kernel's limit, fs.pipe-user-pages-soft)"
                            );
                        }
                        return None;
                    }
                }
            }
        };
        Some(PipedFrame {
            pieces,
            lens: Vec::new(),
            sealed: false,
            len: 0,
            pool: inner.clone(),
        })
    }
}

/// One frame, whole or being filled, in a store's pipes. Dropped, its pipes
/// are emptied and go back to the pool.
pub struct PipedFrame {
    pieces: Vec<Pipe>,
    /// Bytes in each piece filled so far.
    lens: Vec<usize>,
    /// The last piece took no more, before it was counted full.
    sealed: bool,
    len: usize,
    pool: Arc<PoolInner>,
}

impl PipedFrame {
    pub fn len(&self) -> usize {
        self.len
    }

    /// Bytes still missing from the frame.
    pub fn missing(&self) -> usize {
        self.pool.frame_bytes - self.len
    }

    /// Moves up to the rest of the frame from the pipe `input`. `Ok(0)` at
    /// the end of the input, `WouldBlock` if it has nothing now.
    pub fn splice_from(&mut self, input: BorrowedFd<'_>) -> io::Result<usize> {
        loop {
            let missing = self.missing();
            if missing == 0 {
                return Ok(0);
            }
            let full = self.sealed || self.lens.last().is_none_or(|&l| l >= self.pool.piece_bytes);
            if full {
                self.next_piece()?;
                self.sealed = false;
            }
            let i = self.lens.len() - 1;
            let want = (self.pool.piece_bytes - self.lens[i]).min(missing);
            match pipe_io::splice(input, self.pieces[i].write.as_fd(), want) {
                Ok(n) => {
                    self.lens[i] += n;
                    self.len += n;
                    return Ok(n);
                }
                // EAGAIN: the input is empty, or the piece is full sooner
                // than counted (more partly filled pages). The piece says
                // which: a pipe polls writable while it has a free slot.
                // (Asking the input instead raced with its writer.)
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let piece = self.pieces[i].write.as_fd();
                    let room = pipe_io::wait_for(piece, PollFlags::POLLOUT, Some(Duration::ZERO))?;
                    if self.lens[i] == 0 || room {
                        return Err(e);
                    }
                    self.sealed = true;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn next_piece(&mut self) -> io::Result<()> {
        if self.lens.len() == self.pieces.len() {
            // One more than counted is plenty: each piece takes all but two
            // of its pages' worth.
            let counted = self.pool.frame_bytes.div_ceil(self.pool.piece_bytes);
            if self.pieces.len() > counted {
                return Err(io::Error::other("a frame took more pipes than it can"));
            }
            self.pieces.push(Pipe::new(PIPE_SIZE)?);
        }
        self.lens.push(0);
        Ok(())
    }
}

impl Drop for PipedFrame {
    fn drop(&mut self) {
        let mut emptied = true;
        for (piece, &len) in self.pieces.iter().zip(&self.lens) {
            let mut left = len;
            while left > 0 && emptied {
                match pipe_io::splice(piece.read.as_fd(), self.pool.null.as_fd(), left) {
                    Ok(0) | Err(_) => emptied = false,
                    Ok(n) => left -= n,
                }
            }
        }
        if emptied {
            let pieces = std::mem::take(&mut self.pieces);
            self.pool.free.lock().unwrap().push(pieces);
        } else {
            // Closed with the frame; the next store is made afresh.
            self.pool.stores.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A writer's own pipe, through which a frame's pieces pass into the
/// output's pipe.
pub struct Cursor {
    pipe: Pipe,
    /// Bytes of the current piece not yet moved on.
    left: usize,
}

impl Cursor {
    /// A cursor for frames of any pool: its pipe is the size of theirs.
    pub fn new() -> io::Result<Cursor> {
        Ok(Cursor {
            pipe: Pipe::new(PIPE_SIZE)?,
            left: 0,
        })
    }

    /// How many pieces `frame` has.
    pub fn pieces(frame: &PipedFrame) -> usize {
        frame.lens.len()
    }

    /// Takes piece `i` of `frame`, leaving the frame as it is. The cursor
    /// must be empty.
    pub fn load(&mut self, frame: &PipedFrame, i: usize) -> io::Result<()> {
        let len = frame.lens[i];
        debug_assert_eq!(self.left, 0);
        if len == 0 {
            return Ok(());
        }
        match pipe_io::tee(frame.pieces[i].read.as_fd(), self.pipe.write.as_fd(), len)? {
            n if n == len => {
                self.left = len;
                Ok(())
            }
            // Cannot happen with both pipes of one size and the cursor
            // empty; the output would lose its alignment.
            n => Err(io::Error::other(format!(
                "tee moved {n} of a piece's {len} bytes"
            ))),
        }
    }

    /// Bytes of the loaded piece still to move.
    pub fn left(&self) -> usize {
        self.left
    }

    /// Moves what `out` has room for; `WouldBlock` if none.
    pub fn flush(&mut self, out: BorrowedFd<'_>) -> io::Result<usize> {
        let n = pipe_io::splice(self.pipe.read.as_fd(), out, self.left)?;
        self.left -= n;
        Ok(n)
    }
}

/// Everything relay holds frames in pipes with: the live feed's stores,
/// the offline source's (apart, so that neither can take all of them: the
/// offline frames read ahead stay in theirs for as long as live is on
/// air), and the output's video writers' cursors. Made at start, all at
/// once, so relay's share of the user's pipe capacity is fixed from the
/// start. No pool without the cursors: a frame held in pipes can always
/// be sent. What cannot be had is said once; those frames go through
/// memory, which costs more CPU.
pub struct Stores {
    pub live: Option<PipePool>,
    pub offline: Option<PipePool>,
    pub cursors: Option<Cursors>,
}

impl Stores {
    pub fn new(frame_bytes: usize) -> Stores {
        let none = Stores {
            live: None,
            offline: None,
            cursors: None,
        };
        let cursors = match Cursors::new() {
            Ok(c) => c,
            Err(err) => {
                warn_no_pipes(&err, "all frames");
                return none;
            }
        };
        let pool = |what: &str| match PipePool::new(frame_bytes) {
            Ok(pool) => Some(pool),
            Err(err) if err.kind() == io::ErrorKind::Unsupported => {
                tracing::info!(%err, "{what} go through memory at this size");
                None
            }
            Err(err) => {
                warn_no_pipes(&err, what);
                None
            }
        };
        let live = pool("live frames");
        let offline = live.as_ref().and_then(|_| pool("offline frames"));
        if live.is_none() {
            return none;
        }
        Stores {
            live,
            offline,
            cursors: Some(cursors),
        }
    }
}

fn warn_no_pipes(err: &io::Error, what: &str) {
    warn!(
        %err,
        "{what} go through memory, which costs more CPU: no pipes of 1 MB \
         to hold them (the user's pipe memory may be at the kernel's limit, \
         fs.pipe-user-pages-soft)"
    );
}

/// Cursors kept for the output's two video writers (live and offline).
const WRITER_CURSORS: usize = 2;

/// The cursors the output's video writers move frames in pipes with, made
/// at start together with the pools, so that a frame held in pipes never
/// finds its writer without one (it would have to go out as something
/// else). A writer borrows one for the life of its output and gives it
/// back when it ends. Cloning gives another handle to the same reserve.
#[derive(Clone)]
pub struct Cursors {
    free: Arc<Mutex<Vec<Cursor>>>,
}

impl Cursors {
    /// The reserve, its cursors made now; an error if the pipes cannot be
    /// had (then no frame may be held in pipes: make no pool).
    pub fn new() -> io::Result<Cursors> {
        let made = (0..WRITER_CURSORS)
            .map(|_| Cursor::new())
            .collect::<io::Result<Vec<Cursor>>>()?;
        Ok(Cursors {
            free: Arc::new(Mutex::new(made)),
        })
    }

    /// A cursor for one writer: a reserved one, or, while every reserved
    /// one is still lent (the writers of an output that just ended), a new
    /// one; `None` if none can be made.
    pub fn lend(&self) -> Option<LentCursor> {
        let reserved = self.free.lock().unwrap().pop();
        let cursor = match reserved {
            Some(c) => c,
            None => Cursor::new().ok()?,
        };
        Some(LentCursor {
            cursor: Some(cursor),
            home: self.free.clone(),
        })
    }

    /// Cursors in the reserve now.
    #[cfg(test)]
    fn free(&self) -> usize {
        self.free.lock().unwrap().len()
    }
}

/// A cursor borrowed from [`Cursors`], back in the reserve when dropped
/// (unless it still holds part of a piece, or the reserve is full).
pub struct LentCursor {
    /// Always `Some` until dropped.
    cursor: Option<Cursor>,
    home: Arc<Mutex<Vec<Cursor>>>,
}

impl std::ops::Deref for LentCursor {
    type Target = Cursor;
    fn deref(&self) -> &Cursor {
        self.cursor.as_ref().expect("lent until dropped")
    }
}

impl std::ops::DerefMut for LentCursor {
    fn deref_mut(&mut self) -> &mut Cursor {
        self.cursor.as_mut().expect("lent until dropped")
    }
}

impl Drop for LentCursor {
    fn drop(&mut self) {
        // A writer that ended mid-piece: that pipe goes with the rest.
        let Some(cursor) = self.cursor.take().filter(|c| c.left == 0) else {
            return;
        };
        let mut free = self.home.lock().unwrap();
        if free.len() < WRITER_CURSORS {
            free.push(cursor);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    const FRAME: usize = 3 * PIPE_SIZE / 2 + 123;

    /// A blocking pipe, as the ingest's and the output's are on their side.
    fn pipe() -> (File, File) {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        nix::fcntl::fcntl(&write, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32)).unwrap();
        (File::from(read), File::from(write))
    }

    /// Fills a frame from a pipe a writer thread feeds with `data`.
    fn fill(pool: &PipePool, data: Vec<u8>) -> PipedFrame {
        let (input, mut feed) = pipe();
        let writer = std::thread::spawn(move || feed.write_all(&data));
        let mut frame = pool.frame().expect("a store");
        while frame.missing() > 0 {
            match frame.splice_from(input.as_fd()) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Err(e) => panic!("{e}"),
            }
        }
        writer.join().unwrap().unwrap();
        frame
    }

    /// Moves `frame` through a cursor into a pipe and reads it back.
    fn send(frame: &PipedFrame, cursor: &mut Cursor) -> Vec<u8> {
        let (mut out, out_w) = pipe();
        let len = frame.len();
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; len];
            out.read_exact(&mut got).map(|_| got)
        });
        for i in 0..Cursor::pieces(frame) {
            cursor.load(frame, i).unwrap();
            while cursor.left() > 0 {
                match cursor.flush(out_w.as_fd()) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(std::time::Duration::from_millis(1))
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
        reader.join().unwrap().unwrap()
    }

    #[test]
    fn a_frame_goes_out_whole_as_often_as_sent_and_its_pipes_are_reused() {
        let Some(pool) = pipe_io::big_pipes_or_skip(PipePool::new(FRAME)) else {
            return;
        };
        let data: Vec<u8> = (0..FRAME).map(|i| (i % 251) as u8).collect();
        let frame = fill(&pool, data.clone());
        assert_eq!((frame.len(), frame.missing()), (FRAME, 0));
        assert!(Cursor::pieces(&frame) >= 2, "more than a pipe's worth");
        let mut cursor = Cursor::new().unwrap();
        assert!(send(&frame, &mut cursor) == data);
        // Again, as filler: the frame is still all there.
        assert!(send(&frame, &mut cursor) == data);
        drop(frame);
        assert_eq!(pool.inner.free.lock().unwrap().len(), STORES);
        // The store comes back empty: the next frame is only its own data.
        let next: Vec<u8> = (0..FRAME).map(|i| (i % 13) as u8).collect();
        let frame = fill(&pool, next.clone());
        assert_eq!(pool.inner.stores.load(Ordering::Relaxed), STORES);
        assert!(send(&frame, &mut cursor) == next);
    }

    #[test]
    fn a_piece_full_of_small_pages_goes_on_in_the_next() {
        // Packets (O_DIRECT) are never merged: each 10-byte write is a
        // page of its own, so a piece runs out of slots long before bytes.
        let size = 4000;
        let Some(pool) = pipe_io::big_pipes_or_skip(PipePool::new(size)) else {
            return;
        };
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_DIRECT).unwrap();
        nix::fcntl::fcntl(&write, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32)).unwrap();
        let data: Vec<u8> = (0..size).map(|i| (i % 199) as u8).collect();
        let writer = {
            let data = data.clone();
            std::thread::spawn(move || {
                let mut w = File::from(write);
                for packet in data.chunks(10) {
                    w.write_all(packet).unwrap();
                }
            })
        };
        let mut frame = pool.frame().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while frame.missing() > 0 {
            match frame.splice_from(read.as_fd()) {
                Ok(n) => assert!(n > 0, "the input ended early"),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "stuck on a full piece: {} of {size} bytes",
                        frame.len()
                    );
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Err(e) => panic!("{e}"),
            }
        }
        writer.join().unwrap();
        assert_eq!(Cursor::pieces(&frame), 2, "went on in a second piece");
        let mut cursor = Cursor::new().unwrap();
        assert!(send(&frame, &mut cursor) == data);
    }

    #[test]
    fn frames_too_big_for_the_pipe_budget_go_through_memory() {
        let uhd = 3840 * 2160 * 3 / 2;
        let err = PipePool::new(uhd).err().expect("no pool for 4K frames");
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
    }

    #[test]
    fn the_pool_has_a_ceiling_and_a_cut_frame_is_reported() {
        let Some(pool) = pipe_io::big_pipes_or_skip(PipePool::new(FRAME)) else {
            return;
        };
        let frames: Vec<_> = (0..STORES).map(|_| pool.frame().unwrap()).collect();
        assert!(pool.frame().is_none(), "beyond the ceiling: memory");
        drop(frames);
        // A writer that stops mid-frame: the end of the input.
        let (input, mut feed) = pipe();
        feed.write_all(&[1u8; 1000]).unwrap();
        drop(feed);
        let mut frame = pool.frame().unwrap();
        assert_eq!(frame.splice_from(input.as_fd()).unwrap(), 1000);
        assert_eq!(frame.splice_from(input.as_fd()).unwrap(), 0);
        assert_eq!(frame.missing(), FRAME - 1000);
    }

    #[test]
    fn lent_cursors_come_back_and_more_are_made_while_all_are_lent() {
        let Some(cursors) = pipe_io::big_pipes_or_skip(Cursors::new()) else {
            return;
        };
        assert_eq!(cursors.free(), WRITER_CURSORS);
        let a = cursors.lend().unwrap();
        let b = cursors.lend().unwrap();
        assert_eq!(cursors.free(), 0);
        // The writers of the output that just ended still hold theirs.
        let c = cursors.lend().expect("a cursor beyond the reserve");
        drop((a, b, c));
        assert_eq!(cursors.free(), WRITER_CURSORS, "kept no more than reserved");
    }
}
