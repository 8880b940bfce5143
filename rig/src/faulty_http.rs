//! [`FaultyStatPage`]: a stat page that misbehaves on demand.
//!
//! A tiny HTTP/1.1 server on a free loopback port. In [`StatMode::Pass`] it
//! answers every request with the real nginx stat page it fronts; in the
//! other modes it answers with an error status, garbage, an endless body, or
//! not at all. Every answer closes the connection, so each poll of relay's
//! is one fresh connection and sees the current mode.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the page does with the next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatMode {
    /// The real page, fetched from the upstream URL.
    Pass,
    /// `500 Internal Server Error`.
    Error500,
    /// `200 OK` with bytes that are not XML.
    Garbage,
    /// `200 OK` with a body that never ends (until the client hangs up).
    Huge,
    /// Reads the request and never answers.
    Hang,
}

pub struct FaultyStatPage {
    port: u16,
    mode: Arc<Mutex<StatMode>>,
    requests: Arc<Mutex<usize>>,
    task: JoinHandle<()>,
}

impl FaultyStatPage {
    /// Starts fronting `upstream` (an nginx stat URL), in [`StatMode::Pass`].
    pub async fn start(upstream: &str) -> anyhow::Result<FaultyStatPage> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let mode = Arc::new(Mutex::new(StatMode::Pass));
        let requests = Arc::new(Mutex::new(0));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .no_proxy()
            .build()?;
        let (m, r, up) = (mode.clone(), requests.clone(), upstream.to_string());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                *r.lock().unwrap() += 1;
                let mode = *m.lock().unwrap();
                tokio::spawn(answer(stream, mode, client.clone(), up.clone()));
            }
        });
        Ok(FaultyStatPage {
            port,
            mode,
            requests,
            task,
        })
    }

    /// The URL to give relay as `STATS_URL`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/rtmp_stat", self.port)
    }

    pub fn set(&self, mode: StatMode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Connections accepted so far.
    pub fn requests(&self) -> usize {
        *self.requests.lock().unwrap()
    }
}

impl Drop for FaultyStatPage {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(mut stream: TcpStream, mode: StatMode, client: reqwest::Client, upstream: String) {
    // The request head; its content does not matter.
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let reply = |status: &str, body: &[u8]| {
        let mut r = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    };
    let bytes = match mode {
        StatMode::Pass => match client.get(&upstream).send().await {
            Ok(resp) => {
                let status = resp.status();
                let body = resp.bytes().await.unwrap_or_default();
                reply(&status.to_string(), &body)
            }
            Err(_) => reply("502 Bad Gateway", b"upstream down\n"),
        },
        StatMode::Error500 => reply("500 Internal Server Error", b"<html>oops</html>\n"),
        StatMode::Garbage => {
            let junk: Vec<u8> = (0..4096u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect();
            reply("200 OK", &junk)
        }
        StatMode::Huge => {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nConnection: close\r\n\r\n<rtmp><server><application><name>";
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = vec![b'x'; 64 * 1024];
            // Until the client gives up (or a minute passes).
            for _ in 0..100_000 {
                if stream.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            return;
        }
        StatMode::Hang => {
            tokio::time::sleep(Duration::from_secs(120)).await;
            return;
        }
    };
    let _ = stream.write_all(&bytes).await;
    let _ = stream.shutdown().await;
}
