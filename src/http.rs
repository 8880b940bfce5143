//! A tiny HTTP/1.1 server for loopback endpoints such as `/metrics`.
//!
//! hyper parses the requests; this file only adds what keeps a small
//! endpoint from hurting the daemon next to it: a cap on connections
//! (beyond it new ones are closed at once), a deadline for a request's
//! headers and for a whole connection, a small header buffer, and GET/HEAD
//! only. Request bodies are never read.

use std::convert::Infallible;
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

/// Connections served at once; more are closed without an answer.
const MAX_CONNECTIONS: usize = 16;
/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may stay open, keep-alive included.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
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

/// Serves `listener` until the task is dropped or aborted.
pub async fn serve(listener: TcpListener, handler: Handler) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
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
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(respond(&handler, req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_BUF)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
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
