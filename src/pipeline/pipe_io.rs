//! The pipe system calls relay makes on raw frames, each with its retry
//! rules written once.
//!
//! Every pipe relay moves frames through is non-blocking on our side: a
//! call moves what the pipe has room (or data) for, and says
//! [`io::ErrorKind::WouldBlock`] when it has none. EINTR is retried here,
//! so no caller sees it. Waiting is poll(2) in [`wait_for`] for threads,
//! and tokio's readiness for tasks ([`drive_async`], which runs one
//! non-blocking step, such as "move this frame into the output's pipe",
//! to completion).

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Duration;

use nix::fcntl::SpliceFFlags;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use tokio::net::unix::pipe;

/// Assumed pipe capacity if the kernel does not say (Linux's maximum for
/// unprivileged processes, so what is counted against it is kept long
/// enough either way).
const FALLBACK_CAPACITY: usize = 1 << 20;

/// Runs a system call again while it is interrupted by a signal. EAGAIN
/// comes back as [`io::ErrorKind::WouldBlock`], EPIPE as `BrokenPipe`.
pub fn retry<T>(mut call: impl FnMut() -> nix::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(nix::errno::Errno::EINTR) => {}
            other => return other.map_err(io::Error::from),
        }
    }
}

/// Moves up to `len` bytes from the pipe `from` to `to` (one of them a
/// pipe), without copying them where the kernel can avoid it.
pub fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
    retry(|| nix::fcntl::splice(from, None, to, None, len, flags))
}

/// Gives the pipe `to` a reference to up to `len` bytes at the start of
/// the pipe `from`, which keeps them.
pub fn tee(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    retry(|| nix::fcntl::tee(from, to, len, SpliceFFlags::SPLICE_F_NONBLOCK))
}

/// Makes the pipe `to` reference as much of `data` as it has room for:
/// the memory must stay alive and unchanged until the reader has read it.
pub fn vmsplice(to: BorrowedFd<'_>, data: &[u8]) -> io::Result<usize> {
    let iov = [IoSlice::new(data)];
    retry(|| nix::fcntl::vmsplice(to, &iov, SpliceFFlags::SPLICE_F_NONBLOCK))
}

/// Reads what `from` holds, up to `buf`'s length; `Ok(0)` at its end.
pub fn read(from: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    retry(|| nix::unistd::read(from, &mut *buf))
}

/// Waits until `fd` is ready for `events`, at most `wait` (`None`: for
/// ever; zero: just looks). False on timeout; an error if the other end is
/// gone.
pub fn wait_for(fd: BorrowedFd<'_>, events: PollFlags, wait: Option<Duration>) -> io::Result<bool> {
    let timeout = match wait {
        None => PollTimeout::NONE,
        Some(d) => PollTimeout::try_from(d).unwrap_or(PollTimeout::MAX),
    };
    let mut fds = [PollFd::new(fd, events)];
    loop {
        match retry(|| nix::poll::poll(&mut fds, timeout))? {
            0 => return Ok(false),
            _ => {
                let got = fds[0].revents().unwrap_or(PollFlags::empty());
                if got.intersects(events) {
                    return Ok(true);
                }
                if got.intersects(PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL) {
                    return Err(io::ErrorKind::BrokenPipe.into());
                }
            }
        }
    }
}

/// Runs `step` until it is done with the non-blocking pipe `out`, waiting
/// for room through the runtime whenever it says `WouldBlock`. For tasks.
pub async fn drive_async(
    out: &pipe::Sender,
    mut step: impl FnMut(BorrowedFd<'_>) -> io::Result<()>,
) -> io::Result<()> {
    loop {
        out.writable().await?;
        match out.try_io(|| step(out.as_fd())) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            done => return done,
        }
    }
}

/// Bytes written to the pipe and not yet read.
pub fn unread_bytes(fd: BorrowedFd<'_>) -> Option<usize> {
    let mut n: nix::libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through a valid pointer.
    let r = unsafe { nix::libc::ioctl(fd.as_raw_fd(), nix::libc::FIONREAD, &mut n) };
    (r == 0 && n >= 0).then_some(n as usize)
}

/// How many bytes the pipe holds at most.
pub fn capacity(fd: BorrowedFd<'_>) -> usize {
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETPIPE_SZ)
        .map_or(FALLBACK_CAPACITY, |c| c.max(0) as usize)
}

/// For unit tests that need pipes of 1 MB: what `make` gave, or `None`
/// when it failed (the user's pipe memory at the kernel's limit,
/// fs.pipe-user-pages-soft), said on stderr. Under CI (`CI` set) that is a
/// failure instead: such a test must not pass without running.
#[cfg(test)]
pub(crate) fn big_pipes_or_skip<T>(made: io::Result<T>) -> Option<T> {
    match made {
        Ok(t) => Some(t),
        Err(err) if std::env::var_os("CI").is_some() => {
            panic!("no pipes of 1 MB under CI ({err}): this test cannot run")
        }
        Err(err) => {
            eprintln!("skipped: no pipes of 1 MB here ({err})");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    fn nonblocking_pipe() -> (OwnedFd, OwnedFd) {
        let flags = nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK;
        nix::unistd::pipe2(flags).unwrap()
    }

    #[test]
    fn an_empty_pipe_would_block_and_a_closed_one_is_broken() {
        let (read_end, write_end) = nonblocking_pipe();
        let mut buf = [0u8; 4];
        let err = read(read_end.as_fd(), &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(!wait_for(read_end.as_fd(), PollFlags::POLLIN, Some(Duration::ZERO)).unwrap());
        drop(read_end);
        let err = retry(|| nix::unistd::write(write_end.as_fd(), b"x")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
