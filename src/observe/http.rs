//! A tiny HTTP/1.1 server for relay's loopback endpoints: `/metrics` and
//! nginx's `on_publish`.
//!
//! hyper parses the requests; this file only adds what keeps a small
//! endpoint from hurting the daemon next to it: a cap on connections
//! (beyond it new ones are closed at once), a deadline for a request's
//! headers and for a whole connection, and a small header buffer. [`serve`]
//! answers GET and HEAD only and never reads a request body; a service
//! given to [`serve_with`] reads what it needs itself.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::debug;

/// What keeps one endpoint's clients from hurting the daemon.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more are closed without an answer.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// How long one connection may stay open, keep-alive included.
    pub connection_timeout: Duration,
    /// Whether a connection may carry more than one request.
    pub keep_alive: bool,
}

/// Limits for a scraped page such as `/metrics`.
pub const PAGE_LIMITS: Limits = Limits {
    max_connections: 16,
    header_timeout: Duration::from_secs(5),
    connection_timeout: Duration::from_secs(30),
    keep_alive: true,
};

/// Request line and headers must fit in this (hyper's minimum is 8 KiB).
const MAX_BUF: usize = 8192;

/// What a handler answers: status, content type and body.
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Answer {
    pub fn ok(content_type: &'static str, body: String) -> Answer {
        Answer {
            status: 200,
            content_type,
            body,
        }
    }

    pub fn not_found() -> Answer {
        Answer {
            status: 404,
            content_type: "text/plain; charset=utf-8",
            body: "not found\n".to_string(),
        }
    }
}

/// Answers a GET for a path. Called on the server's tasks: keep it quick.
pub type Handler = Arc<dyn Fn(&str) -> Answer + Send + Sync>;

/// Binds `addr`; the caller spawns [`serve`] with the listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves GET and HEAD requests on `listener` with `handler`, until the
/// task is dropped or aborted.
pub async fn serve(listener: TcpListener, handler: Handler) {
    serve_with(listener, PAGE_LIMITS, move |req| {
        std::future::ready(respond(&handler, req))
    })
    .await
}

/// Serves `listener` with `service` within `limits`, until the task is
/// dropped or aborted.
pub async fn serve_with<S, F>(listener: TcpListener, limits: Limits, service: S)
where
    S: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: wait, don't spin.
                debug!(%err, "http accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "http: too many connections; closing this one");
            drop(stream);
            continue;
        };
        let service = service.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let answer = service(req);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .keep_alive(limits.keep_alive)
                .max_buf_size(MAX_BUF)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(limits.connection_timeout, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => debug!(%peer, %err, "http connection ended"),
                Err(_) => debug!(%peer, "http connection open too long; closed"),
            }
            drop(slot);
        });
    }
}

fn respond(handler: &Handler, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let answer = match *req.method() {
        Method::GET | Method::HEAD => handler(req.uri().path()),
        _ => Answer {
            status: 405,
            content_type: "text/plain; charset=utf-8",
            body: "only GET\n".to_string(),
        },
    };
    let body = if req.method() == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from(answer.body)
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() =
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(value) = answer.content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn server() -> SocketAddr {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handler: Handler = Arc::new(|path| match path {
            "/x" => Answer::ok("text/plain", "hello\n".to_string()),
            _ => Answer::not_found(),
        });
        tokio::spawn(serve(listener, handler));
        addr
    }

    async fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
        let mut c = TcpStream::connect(addr).await?;
        c.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut reply = String::new();
        c.read_to_string(&mut reply).await?;
        Ok(reply)
    }

    #[tokio::test]
    async fn answers_get_and_refuses_the_rest() {
        let addr = server().await;
        let ok = get(addr, "/x").await.unwrap();
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.ends_with("hello\n"), "{ok}");
        assert!(get(addr, "/y").await.unwrap().starts_with("HTTP/1.1 404"));
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"DELETE /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 405"), "{reply}");
    }

    #[tokio::test]
    async fn idle_clients_are_dropped_and_cannot_starve_others() {
        let addr = server().await;
        // Every slot taken by clients that never send a request.
        let mut idle = Vec::new();
        for _ in 0..PAGE_LIMITS.max_connections {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        // One more is closed at once, without an answer.
        let refused = tokio::time::timeout(Duration::from_secs(2), get(addr, "/x")).await;
        assert!(
            refused.is_ok_and(|r| r.map_or(true, |text| text.is_empty())),
            "a connection beyond the cap was served"
        );
        // The idle ones are closed after the header deadline…
        tokio::time::sleep(PAGE_LIMITS.header_timeout + Duration::from_secs(1)).await;
        let mut buf = [0u8; 64];
        for c in &mut idle {
            let n = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf))
                .await
                .expect("an idle connection was kept open");
            assert!(n.map_or(true, |n| n == 0 || buf.starts_with(b"HTTP/1.1 408")));
        }
        // …which frees the slots.
        let ok = get(addr, "/x").await.unwrap();
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    }
}
