//! [`StallProxy`]: a TCP proxy that can stop reading, like a destination
//! whose server hangs while the connection stays open.
//!
//! Its accepted sockets have a small receive buffer, so a client that keeps
//! writing blocks within moments of a stall instead of filling megabytes of
//! kernel buffers first.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct StallProxy {
    port: u16,
    stalled: Arc<watch::Sender<bool>>,
    task: JoinHandle<()>,
}

impl StallProxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> anyhow::Result<StallProxy> {
        let socket = TcpSocket::new_v4()?;
        // Inherited by accepted sockets (and fixed: no autotuning).
        socket.set_recv_buffer_size(4096)?;
        socket.set_reuseaddr(true)?;
        socket.bind("127.0.0.1:0".parse()?)?;
        let listener = socket.listen(16)?;
        let port = listener.local_addr()?.port();
        let (tx, _) = watch::channel(false);
        let stalled = Arc::new(tx);
        let s = stalled.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(forward(client, upstream, s.subscribe()));
            }
        });
        Ok(StallProxy {
            port,
            stalled,
            task,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops (`true`) or resumes (`false`) reading from every client.
    pub fn stall(&self, stalled: bool) {
        self.stalled.send_replace(stalled);
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(client: TcpStream, upstream: u16, mut stalled: watch::Receiver<bool>) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    // Server to client: always (nothing to stall there).
    let back = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut sr, &mut cw).await;
    });
    let mut buf = vec![0u8; 4096];
    loop {
        // While stalled, read nothing.
        while *stalled.borrow_and_update() {
            if tokio::time::timeout(Duration::from_secs(1), stalled.changed())
                .await
                .is_ok_and(|r| r.is_err())
            {
                back.abort();
                return;
            }
        }
        tokio::select! {
            n = cr.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            },
            _ = stalled.changed() => {}
        }
    }
    back.abort();
}
