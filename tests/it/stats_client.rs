//! `relay::nginx::stat_page::StatsClient` against a small HTTP server written here
//! (good page, error status, hang, huge bodies, ...) and, when nginx with the
//! rtmp module is installed, against a private nginx.

use std::time::{Duration, Instant};

use relay::nginx::stat_page::{StatsClient, StatsError, DEFAULT_MAX_BODY};
use relay_rig::nginx::{NginxOptions, PrivateNginx};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const GOOD: &str = include_str!("../fixtures/stat/publishing_av.xml");
const TEN_MIB: usize = 10 * 1024 * 1024;

async fn read_request_path(sock: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    head.split_whitespace().nth(1).map(str::to_owned)
}

async fn respond(sock: &mut TcpStream, status: &str, headers: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n",
        body.len()
    );
    let _ = sock.write_all(head.as_bytes()).await;
    let _ = sock.write_all(body).await;
    let _ = sock.shutdown().await;
}

async fn stream_forever_ish(sock: &mut TcpStream, total: usize) {
    let block = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    while sent < total {
        if sock.write_all(&block).await.is_err() {
            return;
        }
        sent += block.len();
    }
    let _ = sock.shutdown().await;
}

async fn handle(mut sock: TcpStream) {
    let Some(path) = read_request_path(&mut sock).await else {
        return;
    };
    match path.as_str() {
        "/good" => {
            respond(
                &mut sock,
                "200 OK",
                "Content-Type: text/xml\r\n",
                GOOD.as_bytes(),
            )
            .await
        }
        "/error" => respond(&mut sock, "500 Internal Server Error", "", b"oops").await,
        "/redirect" => respond(&mut sock, "302 Found", "Location: /good\r\n", b"").await,
        "/html" => {
            respond(
                &mut sock,
                "200 OK",
                "Content-Type: text/html\r\n",
                b"<html><body>502 Bad Gateway</body></html>",
            )
            .await
        }
        "/empty" => respond(&mut sock, "200 OK", "", b"").await,
        "/truncated" => respond(&mut sock, "200 OK", "", &GOOD.as_bytes()[..GOOD.len() / 2]).await,
        "/latin1" => {
            // A client-supplied flashver with a byte that is not UTF-8.
            let body = GOOD.replacen("FMLE/3.0", "FMLE/3.0 \u{1}", 1).into_bytes();
            let at = body.iter().position(|&b| b == 1).unwrap();
            let mut body = body;
            body[at] = 0xE9;
            respond(&mut sock, "200 OK", "", &body).await
        }
        "/hang" => tokio::time::sleep(Duration::from_secs(3600)).await,
        "/slow-body" => {
            let head =
                "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n<?xml version=\"1.0\"?><rtmp>";
            let _ = sock.write_all(head.as_bytes()).await;
            tokio::time::sleep(Duration::from_secs(3600)).await
        }
        "/huge" => {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {TEN_MIB}\r\n\r\n");
            let _ = sock.write_all(head.as_bytes()).await;
            stream_forever_ish(&mut sock, TEN_MIB).await
        }
        "/huge-unannounced" => {
            // No Content-Length: the body runs until the connection closes.
            let _ = sock
                .write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                .await;
            stream_forever_ish(&mut sock, TEN_MIB).await
        }
        "/huge-chunked" => {
            let _ = sock
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await;
            let block = vec![b'x'; 64 * 1024];
            let mut sent = 0;
            while sent < TEN_MIB {
                let frame = [format!("{:x}\r\n", block.len()).as_bytes(), &block, b"\r\n"].concat();
                if sock.write_all(&frame).await.is_err() {
                    return;
                }
                sent += block.len();
            }
            let _ = sock.write_all(b"0\r\n\r\n").await;
        }
        _ => respond(&mut sock, "404 Not Found", "", b"").await,
    }
}

/// Serves the routes above on a loopback port; returns the base URL.
async fn serve() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(handle(sock));
        }
    });
    format!("http://{addr}")
}

fn client(url: &str, timeout: Duration) -> StatsClient {
    StatsClient::new(url, timeout).unwrap()
}

#[tokio::test]
async fn fetches_and_parses_a_good_page() {
    let base = serve().await;
    let c = client(&format!("{base}/good"), Duration::from_secs(5));
    for _ in 0..3 {
        // several polls on the same client (connection reuse)
        let page = c.fetch().await.unwrap();
        let s = page.stream("live", "mystream").unwrap();
        assert_eq!(s.bytes_in, 237_896);
        assert_eq!(s.has_audio(), Some(true));
    }
}

#[tokio::test]
async fn error_status_is_reported_with_the_url() {
    let base = serve().await;
    let url = format!("{base}/error");
    let err = client(&url, Duration::from_secs(5))
        .fetch()
        .await
        .unwrap_err();
    assert!(
        matches!(err, StatsError::Status { status: 500, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&url) && msg.contains("500"), "{msg}");

    let err = client(&format!("{base}/nope"), Duration::from_secs(5))
        .fetch()
        .await
        .unwrap_err();
    assert!(
        matches!(err, StatsError::Status { status: 404, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let base = serve().await;
    let err = client(&format!("{base}/redirect"), Duration::from_secs(5))
        .fetch()
        .await
        .unwrap_err();
    assert!(
        matches!(err, StatsError::Status { status: 302, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_hanging_server_times_out() {
    let base = serve().await;
    for path in ["/hang", "/slow-body"] {
        let url = format!("{base}{path}");
        let c = client(&url, Duration::from_millis(300));
        let started = Instant::now();
        let err = c.fetch().await.unwrap_err();
        let took = started.elapsed();
        assert!(matches!(err, StatsError::Timeout { .. }), "{path}: {err:?}");
        assert!(took < Duration::from_secs(3), "{path}: took {took:?}");
        let msg = err.to_string();
        assert!(msg.contains(&url) && msg.contains("300ms"), "{msg}");
    }
}

#[tokio::test]
async fn huge_bodies_are_refused() {
    let base = serve().await;
    for path in ["/huge", "/huge-unannounced", "/huge-chunked"] {
        let url = format!("{base}{path}");
        let err = client(&url, Duration::from_secs(10))
            .fetch()
            .await
            .unwrap_err();
        assert!(
            matches!(err, StatsError::TooLarge { limit, .. } if limit == DEFAULT_MAX_BODY),
            "{path}: {err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&url) && msg.contains("4194304"), "{msg}");
    }
    // A smaller cap applies to an ordinary page too.
    let err = client(&format!("{base}/good"), Duration::from_secs(5))
        .with_max_body(100)
        .fetch()
        .await
        .unwrap_err();
    assert!(
        matches!(err, StatsError::TooLarge { limit: 100, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn bad_bodies_are_xml_errors_naming_the_url() {
    let base = serve().await;
    for path in ["/html", "/empty", "/truncated"] {
        let url = format!("{base}{path}");
        let err = client(&url, Duration::from_secs(5))
            .fetch()
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StatsError::Xml { url: Some(u), .. } if *u == url),
            "{path}: {err:?}"
        );
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("stat page {url}: ")), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }
}

#[tokio::test]
async fn non_utf8_bytes_do_not_fail_the_page() {
    let base = serve().await;
    let page = client(&format!("{base}/latin1"), Duration::from_secs(5))
        .fetch()
        .await
        .unwrap();
    assert!(page
        .stream("live", "mystream")
        .unwrap()
        .publisher()
        .is_some());
}

#[tokio::test]
async fn connection_refused_is_a_request_error() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let url = format!("http://{addr}/rtmp_stat");
    let err = client(&url, Duration::from_secs(5))
        .fetch()
        .await
        .unwrap_err();
    assert!(matches!(err, StatsError::Request { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&url), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
}

#[test]
fn unusable_urls_are_refused() {
    for url in [
        "",
        "not a url",
        "localhost:8080/stat",
        "https://127.0.0.1/stat",
        "ftp://127.0.0.1/stat",
        "unix:/run/nginx.sock",
    ] {
        match StatsClient::new(url, Duration::from_secs(1)) {
            Err(e @ StatsError::InvalidUrl { .. }) => {
                assert!(e.to_string().contains(&format!("{url:?}")), "{e}")
            }
            other => panic!("{url:?}: {other:?}"),
        }
    }
    // An IPv6 literal is a usable host. (Messages name the URL as given and
    // fetches keep to the timeout: see the fetch tests above.)
    assert!(StatsClient::new("http://[::1]:8080/rtmp_stat", Duration::from_secs(1)).is_ok());
}

// --- a real nginx, when available --------------------------------------------

/// The rig's private nginx (loopback, free ports, files in a temporary
/// directory); `None` (the test is skipped, loudly) when nginx's rtmp module
/// is not installed. Under CI (`CI` set) that panics instead: a test that
/// cannot run proves nothing.
async fn start_private_nginx() -> Option<(PrivateNginx, u16)> {
    let module = std::path::Path::new(relay_rig::nginx::RTMP_MODULE_PATH);
    if !module.exists() {
        let what = format!("{} not installed", module.display());
        assert!(
            std::env::var_os("CI").is_none(),
            "cannot run under CI: {what}"
        );
        eprintln!("SKIPPED (not a pass): {what}");
        return None;
    }
    let nginx = PrivateNginx::start(NginxOptions::default())
        .await
        .expect("starting a private nginx");
    let port = nginx.http_port();
    Some((nginx, port))
}

#[tokio::test]
async fn real_nginx_idle_page() {
    let Some((nginx, port)) = start_private_nginx().await else {
        return;
    };
    let c = client(
        &format!("http://127.0.0.1:{port}/rtmp_stat"),
        Duration::from_secs(2),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let page = loop {
        match c.fetch().await {
            Ok(page) => break page,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}; nginx error log: {}", nginx.error_log()),
        }
    };
    assert!(page.streams.is_empty(), "{page:?}");
}
