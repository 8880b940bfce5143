//! The output's four raw pipes and the tasks that write them: live video and
//! audio (inputs 0 and 1), offline video and audio (inputs 2 and 3).
//!
//! Each pipe has its own writer behind a short queue, so the pump's clock
//! never blocks on a pipe (a single writer deadlocks at start-up while
//! FFmpeg probes one input and the other pipe fills). When any queue is
//! full the whole tick is dropped, on all four pipes, so the raw timelines
//! stay in step.
//!
//! Video never goes through a copy of ours: live frames held in pipes
//! (`pipeframes`) go out with tee(2), frames in our memory (black filler,
//! and live frames when no pipes can be had) with vmsplice(2), and the
//! offline source's frames go from its pipe into the output's with
//! splice(2).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::pipeline::frames::{Black, Frame, FramePool};
use crate::pipeline::offline_source::SourceVideo;
use crate::pipeline::pipe_frames::Cursor;
use crate::pipeline::pipe_io;
use crate::pipeline::raw_format::RawFormat;

/// Ticks queued per pipe before ticks are dropped.
const PIPE_QUEUE: usize = 3;

/// How long the offline writer waits for the source's next frame to begin
/// before it writes the fallback instead. The source decodes ahead and waits
/// blocked in its write, so a frame is normally there at once; the pump's
/// queue covers this wait.
const SOURCE_WAIT: Duration = Duration::from_millis(40);

/// What goes into the output's offline video input on one tick.
pub enum OfflineFrame {
    /// A frame we hold: the live frame while live is on air (the offline
    /// source then rests), or filler while there is no offline source.
    Held(Frame),
    /// The offline source's next frame, moved pipe to pipe. If it has none
    /// in time: `fallback`, or black if that is `None`.
    Source {
        source: Arc<SourceVideo>,
        fallback: Option<Frame>,
    },
}

/// One tick for all four pipes.
pub struct Tick {
    pub video: Frame,
    pub audio: Bytes,
    pub offline_video: OfflineFrame,
    pub offline_audio: Bytes,
}

/// The sending side of the output's raw pipes.
pub struct OutputPipes {
    video: mpsc::Sender<Frame>,
    audio: mpsc::Sender<Bytes>,
    offline_video: mpsc::Sender<OfflineFrame>,
    offline_audio: mpsc::Sender<Bytes>,
}

/// Our ends of the output's four pipes.
pub struct PipeEnds {
    pub video: pipe::Sender,
    pub audio: pipe::Sender,
    pub offline_video: pipe::Sender,
    pub offline_audio: pipe::Sender,
}

impl OutputPipes {
    /// Starts one writer per pipe. The offline video's writer is a thread:
    /// it moves data between two pipes and waits on both.
    pub fn spawn(ends: PipeEnds, format: RawFormat) -> io::Result<OutputPipes> {
        let (vtx, vrx) = mpsc::channel(PIPE_QUEUE);
        let (atx, arx) = mpsc::channel(PIPE_QUEUE);
        let (ovtx, ovrx) = mpsc::channel(PIPE_QUEUE);
        let (oatx, oarx) = mpsc::channel(PIPE_QUEUE);
        let offline_fd = ends.offline_video.into_nonblocking_fd()?;
        std::thread::Builder::new()
            .name("offline-video".into())
            .spawn(move || write_offline_video(offline_fd, ovrx, format))?;
        tokio::spawn(write_live_video(ends.video, vrx, format));
        tokio::spawn(write_pipe(ends.audio, arx));
        tokio::spawn(write_pipe(ends.offline_audio, oarx));
        Ok(OutputPipes {
            video: vtx,
            audio: atx,
            offline_video: ovtx,
            offline_audio: oatx,
        })
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

/// Moves live video frames into the pipe without copying them (the kernel's
/// copy was once the daemon's largest cost): a frame held in pipes with
/// tee(2), a frame in our memory with vmsplice(2), which makes the pipe
/// reference our pages. A task: it waits for room through the runtime.
async fn write_live_video(pipe: pipe::Sender, mut rx: mpsc::Receiver<Frame>, format: RawFormat) {
    let capacity = pipe_io::capacity(pipe.as_fd());
    let mut in_flight = InFlight::default();
    let mut video = VideoWriter::new(format);
    while let Some(frame) = rx.recv().await {
        in_flight.update(pipe.as_fd(), capacity);
        let frame = video.sendable(frame);
        let mut sending = Sending::default();
        let sent = pipe_io::drive_async(&pipe, |out| {
            sending.step(out, &frame, video.cursor.as_mut())
        })
        .await;
        if sent.is_err() {
            // The output exited; the supervisor attaches a new one.
            return;
        }
        in_flight.push(frame.memory(), frame.len());
        in_flight.update(pipe.as_fd(), capacity);
    }
}

/// How far a frame has gone into a pipe: what one non-blocking step at a
/// time has moved, until [`Sending::step`] says it is all in. The one way
/// a video writer sends a frame, whether it waits for room in a task
/// ([`pipe_io::drive_async`]) or in a thread ([`pipe_io::drive`]).
#[derive(Default)]
struct Sending {
    /// A frame in memory: bytes moved so far.
    offset: usize,
    /// A frame in pipes: the next piece to load into the cursor.
    piece: usize,
}

impl Sending {
    /// Moves what `out` has room for; `Ok` once the whole frame is in,
    /// `WouldBlock` when `out` is full. A frame in pipes needs `cursor`
    /// ([`VideoWriter::sendable`] sees to that).
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

/// What a video writer needs besides its pipe: tee's [`Cursor`], made at
/// the first frame held in pipes, and the black frame. Without a cursor
/// (no pipe of 1 MB to be had), such frames go out black: the output's
/// stream stays whole, and the error is logged once.
struct VideoWriter {
    cursor: Option<Cursor>,
    failed: bool,
    black: Black,
}

impl VideoWriter {
    fn new(format: RawFormat) -> VideoWriter {
        VideoWriter {
            cursor: None,
            failed: false,
            black: Black::new(format, FramePool::new(format.frame_bytes(), 0, 1)),
        }
    }

    /// `frame`, or black if it is held in pipes and there is no cursor to
    /// move it with.
    fn sendable(&mut self, frame: Frame) -> Frame {
        if !matches!(frame, Frame::Piped(_)) || self.cursor.is_some() {
            return frame;
        }
        if !self.failed {
            match Cursor::new() {
                Ok(c) => {
                    self.cursor = Some(c);
                    return frame;
                }
                Err(err) => {
                    self.failed = true;
                    warn!(%err, "no pipe to move live frames with: they go out black");
                }
            }
        }
        Frame::Mem(self.black.frame())
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

/// The offline video's writer (a thread: it moves data between two pipes
/// and waits on both). Frames we hold go as above; source frames are
/// spliced from the source's pipe. Ends when the pump drops its sender or
/// the output stops reading.
fn write_offline_video(out: OwnedFd, mut rx: mpsc::Receiver<OfflineFrame>, format: RawFormat) {
    let capacity = pipe_io::capacity(out.as_fd());
    let mut in_flight = InFlight::default();
    let mut video = VideoWriter::new(format);
    while let Some(item) = rx.blocking_recv() {
        in_flight.update(out.as_fd(), capacity);
        let held = match item {
            OfflineFrame::Held(frame) => frame,
            OfflineFrame::Source { source, fallback } => {
                match source.splice_frame(out.as_fd(), SOURCE_WAIT) {
                    Ok(true) => {
                        in_flight.push(None, format.frame_bytes());
                        video.black.end_round();
                        continue;
                    }
                    // The source is late and there is no fallback.
                    Ok(false) => fallback.unwrap_or_else(|| Frame::Mem(video.black.frame())),
                    Err(err) => {
                        debug!(%err, "offline video pipe closed");
                        return;
                    }
                }
            }
        };
        let held = video.sendable(held);
        let mut sending = Sending::default();
        let sent = pipe_io::drive(out.as_fd(), |out| {
            sending.step(out, &held, video.cursor.as_mut())
        });
        if let Err(err) = sent {
            debug!(%err, "offline video pipe closed");
            return;
        }
        in_flight.push(held.memory(), held.len());
        in_flight.update(out.as_fd(), capacity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

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

    #[test]
    fn a_frame_in_memory_goes_out_whole_from_a_thread() {
        let frame = Frame::Mem(Bytes::from(data(100_000)));
        let (out, reader) = small_pipe(frame.len());
        let mut sending = Sending::default();
        pipe_io::drive(out.as_fd(), |out| sending.step(out, &frame, None)).unwrap();
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
        let mut video = VideoWriter::new(RawFormat {
            width: 4,
            height: 2,
            fps: 30,
            sample_rate: 48000,
        });
        let frame = video.sendable(frame);
        assert!(matches!(frame, Frame::Piped(_)), "a cursor was made");
        let mut sending = Sending::default();
        pipe_io::drive_async(&out, |fd| sending.step(fd, &frame, video.cursor.as_mut()))
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
