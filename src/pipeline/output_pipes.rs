//! The output's four raw pipes and the tasks that write them: live video and
//! audio (inputs 0 and 1), offline video and audio (inputs 2 and 3).
//!
//! Each pipe has its own writer behind a short queue, so the pump's clock
//! never blocks on a pipe (a single writer deadlocks at start-up while
//! FFmpeg probes one input and the other pipe fills). When any queue is
//! full the whole tick is dropped, on all four pipes, so the raw timelines
//! stay in step.
//!
//! Video never goes through a copy of ours: frames held in pipes (live
//! and offline frames, `pipe_frames`) go out with tee(2), frames in our
//! memory (when no pipes can be had) with vmsplice(2). Each writer sends
//! exactly the frame the pump chose: it has no filler of its own
//! (ARCHITECTURE.md, "Going live without a black flash, and never a black frame").

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tracing::error;

use crate::pipeline::frames::Frame;
use crate::pipeline::pipe_frames::{Cursor, LentCursor};
use crate::pipeline::pipe_io;

/// Ticks queued per pipe before ticks are dropped.
const PIPE_QUEUE: usize = 3;

/// One tick for all four pipes.
pub struct Tick {
    pub video: Frame,
    pub audio: Bytes,
    pub offline_video: Frame,
    pub offline_audio: Bytes,
}

/// The sending side of the output's raw pipes.
pub struct OutputPipes {
    video: mpsc::Sender<Frame>,
    audio: mpsc::Sender<Bytes>,
    offline_video: mpsc::Sender<Frame>,
    offline_audio: mpsc::Sender<Bytes>,
}

/// The cursors of the two video writers, lent when the output's pipes are
/// made (`Cursors`); `None` when relay holds no frame in pipes.
pub type WriterCursors = Option<(LentCursor, LentCursor)>;

/// Our ends of the output's four pipes.
pub struct PipeEnds {
    pub video: pipe::Sender,
    pub audio: pipe::Sender,
    pub offline_video: pipe::Sender,
    pub offline_audio: pipe::Sender,
}

impl OutputPipes {
    /// Starts one writer per pipe.
    pub fn spawn(ends: PipeEnds, cursors: WriterCursors) -> OutputPipes {
        let (vtx, vrx) = mpsc::channel(PIPE_QUEUE);
        let (atx, arx) = mpsc::channel(PIPE_QUEUE);
        let (ovtx, ovrx) = mpsc::channel(PIPE_QUEUE);
        let (oatx, oarx) = mpsc::channel(PIPE_QUEUE);
        let (live_cursor, offline_cursor) = cursors.unzip();
        tokio::spawn(write_video(ends.video, vrx, live_cursor));
        tokio::spawn(write_pipe(ends.audio, arx));
        tokio::spawn(write_video(ends.offline_video, ovrx, offline_cursor));
        tokio::spawn(write_pipe(ends.offline_audio, oarx));
        OutputPipes {
            video: vtx,
            audio: atx,
            offline_video: ovtx,
            offline_audio: oatx,
        }
    }

    /// Queues one tick; false if it had to be dropped.
    pub fn send(&self, tick: Tick) -> bool {
        if self.video.capacity() == 0
            || self.audio.capacity() == 0
            || self.offline_video.capacity() == 0
            || self.offline_audio.capacity() == 0
        {
            return false;
        }
        self.video.try_send(tick.video).is_ok()
            && self.audio.try_send(tick.audio).is_ok()
            && self.offline_video.try_send(tick.offline_video).is_ok()
            && self.offline_audio.try_send(tick.offline_audio).is_ok()
    }

    pub fn closed(&self) -> bool {
        self.video.is_closed()
            || self.audio.is_closed()
            || self.offline_video.is_closed()
            || self.offline_audio.is_closed()
    }
}

/// What we wrote into a pipe and FFmpeg may not have read yet. A frame
/// moved with vmsplice is our memory until FFmpeg reads it, so it must stay
/// alive and unchanged until then; `Bytes` are immutable, and we keep the
/// newest entries that together still cover what is unread in the pipe
/// (FIONREAD; the pipe's capacity if it cannot say): older bytes have been
/// read. Data spliced from another pipe is counted too, without memory.
#[derive(Default)]
struct InFlight {
    entries: VecDeque<(Option<Bytes>, usize)>,
    held: usize,
}

impl InFlight {
    fn push(&mut self, frame: Option<Bytes>, len: usize) {
        self.held += len;
        self.entries.push_back((frame, len));
    }

    /// Drops what FFmpeg has read from `pipe`. Asking the pipe takes its
    /// lock, which FFmpeg holds while it copies a read out (perf showed us
    /// spinning on it), so it is asked only while memory of ours is in
    /// the pipe: data spliced or teed from pipes needs nothing kept.
    /// Forgetting such data early only keeps later memory longer.
    fn update(&mut self, pipe: BorrowedFd<'_>, capacity: usize) {
        if self.entries.iter().all(|(f, _)| f.is_none()) {
            self.entries.clear();
            self.held = 0;
            return;
        }
        self.release(pipe_io::unread_bytes(pipe).unwrap_or(capacity));
    }

    /// Drops the oldest entries whose bytes FFmpeg has read from the pipe.
    fn release(&mut self, unread: usize) {
        while self
            .entries
            .front()
            .is_some_and(|(_, len)| self.held - len >= unread)
        {
            self.held -= self.entries.pop_front().map_or(0, |(_, len)| len);
        }
    }

    #[cfg(test)]
    fn frames(&self) -> usize {
        self.entries.iter().filter(|(f, _)| f.is_some()).count()
    }
}

/// Moves video frames into the pipe without copying them (the kernel's
/// copy was once the daemon's largest cost): a frame held in pipes with
/// tee(2) through `cursor`, a frame in our memory with vmsplice(2), which
/// makes the pipe reference our pages. A task: it waits for room through
/// the runtime. Ends when the pump drops its sender or the output stops
/// reading.
async fn write_video(
    pipe: pipe::Sender,
    mut rx: mpsc::Receiver<Frame>,
    mut cursor: Option<LentCursor>,
) {
    let capacity = pipe_io::capacity(pipe.as_fd());
    let mut in_flight = InFlight::default();
    while let Some(frame) = rx.recv().await {
        in_flight.update(pipe.as_fd(), capacity);
        let mut sending = Sending::default();
        let sent = pipe_io::drive_async(&pipe, |out| {
            sending.step(out, &frame, cursor.as_deref_mut())
        })
        .await;
        if let Err(err) = sent {
            if err.kind() != io::ErrorKind::BrokenPipe {
                error!(%err, "cannot write the output's video pipe");
            }
            // The output exited; the supervisor attaches a new one.
            return;
        }
        in_flight.push(frame.memory(), frame.len());
        in_flight.update(pipe.as_fd(), capacity);
    }
}

/// How far a frame has gone into a pipe: what one non-blocking step at a
/// time has moved, until [`Sending::step`] says it is all in. The one way
/// a video writer sends a frame ([`pipe_io::drive_async`]).
#[derive(Default)]
struct Sending {
    /// A frame in memory: bytes moved so far.
    offset: usize,
    /// A frame in pipes: the next piece to load into the cursor.
    piece: usize,
}

impl Sending {
    /// Moves what `out` has room for; `Ok` once the whole frame is in,
    /// `WouldBlock` when `out` is full. A frame in pipes needs `cursor`:
    /// frames are held in pipes only where the writers have cursors
    /// (`Cursors`), so without one this is an error, never a substitute.
    fn step(
        &mut self,
        out: BorrowedFd<'_>,
        frame: &Frame,
        cursor: Option<&mut Cursor>,
    ) -> io::Result<()> {
        match frame {
            Frame::Mem(bytes) => {
                while self.offset < bytes.len() {
                    self.offset += pipe_io::vmsplice(out, &bytes[self.offset..])?;
                }
            }
            Frame::Piped(piped) => {
                let cursor =
                    cursor.ok_or_else(|| io::Error::other("no cursor for a piped frame"))?;
                loop {
                    if cursor.left() == 0 {
                        if self.piece == Cursor::pieces(piped) {
                            break;
                        }
                        cursor.load(piped, self.piece)?;
                        self.piece += 1;
                        continue;
                    }
                    cursor.flush(out)?;
                }
            }
        }
        Ok(())
    }
}

async fn write_pipe(mut pipe: pipe::Sender, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(buf) = rx.recv().await {
        if pipe.write_all(&buf).await.is_err() {
            // The output exited; the supervisor attaches a new one.
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::OwnedFd;
    use std::sync::Arc;
    use std::time::Duration;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// A small pipe (so a frame needs many steps) and a thread reading
    /// `len` bytes out of it.
    fn small_pipe(len: usize) -> (OwnedFd, std::thread::JoinHandle<Vec<u8>>) {
        let flags = nix::fcntl::OFlag::O_CLOEXEC;
        let (read, write) = nix::unistd::pipe2(flags).unwrap();
        nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_SETPIPE_SZ(4096)).unwrap();
        nix::fcntl::fcntl(
            &write,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; len];
            std::fs::File::from(read).read_exact(&mut got).unwrap();
            got
        });
        (write, reader)
    }

    #[tokio::test]
    async fn a_frame_in_memory_goes_out_whole() {
        let frame = Frame::Mem(Bytes::from(data(100_000)));
        let (out, reader) = small_pipe(frame.len());
        let out = pipe::Sender::from_owned_fd(out).unwrap();
        let mut sending = Sending::default();
        pipe_io::drive_async(&out, |fd| sending.step(fd, &frame, None))
            .await
            .unwrap();
        assert!(reader.join().unwrap() == data(100_000));
    }

    #[tokio::test]
    async fn a_frame_in_pipes_goes_out_whole_from_a_task() {
        let len = 1_500_000;
        let Some(pool) =
            pipe_io::big_pipes_or_skip(crate::pipeline::pipe_frames::PipePool::new(len))
        else {
            return;
        };
        let (input, feed) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let writer = std::thread::spawn(move || std::fs::File::from(feed).write_all(&data(len)));
        let mut piped = pool.frame().unwrap();
        while piped.missing() > 0 {
            match piped.splice_from(input.as_fd()) {
                Ok(n) => assert!(n > 0, "the input ended early"),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("{e}"),
            }
        }
        writer.join().unwrap().unwrap();
        let frame = Frame::Piped(Arc::new(piped));
        let (out, reader) = small_pipe(len);
        let out = pipe::Sender::from_owned_fd(out).unwrap();
        let mut cursor = Cursor::new().unwrap();
        let mut sending = Sending::default();
        pipe_io::drive_async(&out, |fd| sending.step(fd, &frame, Some(&mut cursor)))
            .await
            .unwrap();
        assert!(reader.join().unwrap() == data(len));
    }

    #[test]
    fn frames_stay_until_ffmpeg_has_read_them() {
        let mut f = InFlight::default();
        for i in 0..3u8 {
            f.push(Some(Bytes::from(vec![i; 100])), 100);
        }
        // All 300 bytes unread: every frame may still be in the pipe.
        f.release(300);
        assert_eq!(f.frames(), 3);
        // 150 read: the first frame is out of the pipe, the second is not.
        f.release(150);
        assert_eq!((f.frames(), f.held), (2, 200));
        assert_eq!(f.entries[0].0.as_ref().unwrap()[0], 1);
        f.release(0);
        assert_eq!((f.frames(), f.held), (0, 0));
    }

    #[test]
    fn spliced_data_counts_without_memory() {
        let mut f = InFlight::default();
        f.push(Some(Bytes::from(vec![1; 100])), 100);
        f.push(None, 100);
        f.push(None, 100);
        // 200 unread: the held frame was read, the source's frames not.
        f.release(200);
        assert_eq!((f.frames(), f.held), (0, 200));
    }
}
