//! Whether the publisher's data is still reaching the ingest, and whether
//! the ingest is at work: the bytes waiting unread in the receive queues of
//! the ingest FFmpeg's TCP sockets (its connection to nginx), the bytes of
//! frames waiting in its pipe for relay's reader, and the CPU time its
//! threads used or waited for since a mark.
//!
//! The pump asks only when live frames are late. Frames can be late for
//! two reasons that look the same from the pipes: the publisher stopped
//! sending (nothing arrives, the queue is empty), or relay's own ingest is
//! starved (a busy machine: the ingest FFmpeg, or relay's thread that reads
//! its frames, does not get the CPU; the publisher's data piles up unread).
//! Only the first is a reason to fail over (ARCHITECTURE.md, "A late frame
//! is not always a stopped publisher").

use std::collections::HashSet;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};

/// The ingest FFmpeg's side of its connection to nginx, and our end of its
/// video pipe.
#[derive(Debug)]
pub struct IngestLink {
    pid: u32,
    pipe: Option<OwnedFd>,
}

impl IngestLink {
    /// `pipe`: a duplicate of our read end of the ingest's video pipe.
    pub fn new(pid: u32, pipe: Option<OwnedFd>) -> IngestLink {
        IngestLink { pid, pipe }
    }

    /// Bytes the ingest wrote into its video pipe that relay's reader has
    /// not taken yet (relay's own reader starved).
    pub fn pipe_unread(&self) -> Option<usize> {
        let fd = self.pipe.as_ref()?.as_raw_fd();
        let mut n: nix::libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int through the pointer, which
        // points at `n`; `fd` is open for as long as `self.pipe` is.
        let r = unsafe { nix::libc::ioctl(fd, nix::libc::FIONREAD, &mut n) };
        (r == 0).then_some(n.max(0) as usize)
    }

    /// Nanoseconds the ingest's threads have run or waited to run (on a
    /// run queue), in all: `/proc/PID/task/*/schedstat`. An ingest that
    /// waits for data uses almost none; one that decodes, or is starved of
    /// the CPU it wants, adds up quickly. libsrt's own threads (`SRT:RcvQ`,
    /// `SRT:TsbPd`, …) are left out: they keep polling and acknowledging
    /// after a caller died, about 15 ms a second measured, more with the
    /// run-queue waits of a busy machine, and would pass for an ingest at
    /// work (a starved SRT ingest shows in its UDP receive queue instead).
    pub fn cpu_ns(&self) -> Option<u64> {
        let tasks = fs::read_dir(format!("/proc/{}/task", self.pid)).ok()?;
        let mut total = 0u64;
        for task in tasks.flatten() {
            let comm = fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.starts_with("SRT:") {
                continue;
            }
            let Ok(text) = fs::read_to_string(task.path().join("schedstat")) else {
                continue;
            };
            let mut fields = text
                .split_whitespace()
                .map(|f| f.parse::<u64>().unwrap_or(0));
            total += fields.next().unwrap_or(0) + fields.next().unwrap_or(0);
        }
        Some(total)
    }

    /// Bytes received from the network but not yet read by the ingest,
    /// over all its TCP sockets; `None` if that cannot be known (the
    /// process is gone, or /proc is not readable).
    pub fn unread_bytes(&self) -> Option<u64> {
        let inodes = socket_inodes(self.pid)?;
        if inodes.is_empty() {
            return Some(0);
        }
        let mut total = 0;
        let mut readable = false;
        // UDP for the SRT ingest: its datagrams wait there when the whole
        // process is starved (libsrt's own buffer is not visible).
        for table in ["tcp", "tcp6", "udp", "udp6"] {
            if let Ok(text) = fs::read_to_string(format!("/proc/{}/net/{table}", self.pid)) {
                readable = true;
                total += unread_in_table(&text, &inodes);
            }
        }
        readable.then_some(total)
    }
}

/// The inodes of the process's sockets, from its /proc/PID/fd links.
fn socket_inodes(pid: u32) -> Option<HashSet<u64>> {
    let dir = fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(
        dir.filter_map(|e| fs::read_link(e.ok()?.path()).ok())
            .filter_map(|target| {
                let t = target.to_str()?;
                t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
            })
            .collect(),
    )
}

/// The receive queues (`rx_queue`, hexadecimal) of the sockets in a
/// /proc/net/tcp (or udp: the same columns) table whose inode is in `inodes`, summed.
fn unread_in_table(text: &str, inodes: &HashSet<u64>) -> u64 {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let inode: u64 = fields.get(9)?.parse().ok()?;
            if !inodes.contains(&inode) {
                return None;
            }
            let (_, rx) = fields.get(4)?.split_once(':')?;
            u64::from_str_radix(rx, 16).ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0790 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:D2F4 0100007F:0790 01 00000000:0001A2B0 00:00000000 00000000     0        0 2222 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:D2F6 0100007F:0790 01 00000010:00000100 00:00000000 00000000     0        0 3333 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn only_the_processs_sockets_count() {
        let ours: HashSet<u64> = [2222, 9999].into();
        assert_eq!(unread_in_table(TABLE, &ours), 0x1A2B0);
        let both: HashSet<u64> = [2222, 3333].into();
        assert_eq!(unread_in_table(TABLE, &both), 0x1A2B0 + 0x100);
        assert_eq!(unread_in_table("garbage\nmore garbage", &both), 0);
    }

    #[test]
    fn a_connected_socket_with_unread_data_is_seen() {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut sender = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_receiver, _) = listener.accept().unwrap();
        sender.write_all(&[7u8; 5000]).unwrap();
        let link = IngestLink::new(std::process::id(), None);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while link.unread_bytes().unwrap_or(0) < 5000 {
            assert!(
                std::time::Instant::now() < deadline,
                "unread data never seen"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(IngestLink::new(u32::MAX, None).unread_bytes(), None);
        assert_eq!(IngestLink::new(u32::MAX, None).cpu_ns(), None);
    }

    #[test]
    fn a_busy_process_and_a_full_pipe_are_seen() {
        use std::io::Write;
        let link = IngestLink::new(std::process::id(), None);
        let before = link.cpu_ns().expect("our own schedstat");
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        let after = link.cpu_ns().unwrap();
        assert!(after >= before + 20_000_000, "{before} -> {after}");

        let (read, write) = nix::unistd::pipe().unwrap();
        let link = IngestLink::new(std::process::id(), Some(read));
        assert_eq!(link.pipe_unread(), Some(0));
        std::fs::File::from(write).write_all(&[1u8; 300]).unwrap();
        assert_eq!(link.pipe_unread(), Some(300));
    }

    #[test]
    fn unread_datagrams_are_seen() {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let before = IngestLink::new(std::process::id(), None)
            .unread_bytes()
            .unwrap();
        sender
            .send_to(&[7u8; 1316], receiver.local_addr().unwrap())
            .unwrap();
        let link = IngestLink::new(std::process::id(), None);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while link.unread_bytes().unwrap_or(0) < before + 1316 {
            assert!(
                std::time::Instant::now() < deadline,
                "unread datagram never seen"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
