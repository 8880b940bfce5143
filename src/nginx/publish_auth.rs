//! Who may publish: the endpoint behind nginx-rtmp's `on_publish`.
//!
//! nginx-rtmp asks an HTTP URL before it accepts a publisher
//! (`on_publish http://127.0.0.1:8081/on_publish;` in the application). It
//! POSTs a form (`application/x-www-form-urlencoded`, HTTP/1.0) with `call=publish`,
//! `app`, `name` (the stream name without its query), `addr` (the
//! publisher's IP address), `clientid`, `tcurl`, `flashver`, … and every
//! argument of the publisher's query string. A streamer enters
//! `NAME?key=PUBLISH_KEY` as the stream key in OBS, so the form carries
//! `name=NAME` and `key=PUBLISH_KEY`. Any 2xx answer accepts the publisher;
//! anything else (here 403) makes nginx refuse it before a single frame
//! arrives. A 3xx would be a redirect to another stream name, so none is
//! ever sent. If nginx cannot reach the URL it refuses the publisher.
//!
//! The rules, with `PUBLISH_KEY` set: only `RTMP_APP/RTMP_STREAM_NAME` with
//! the right `key` is accepted; a missing or wrong key and any other stream
//! are refused and logged with the publisher's address (never the key sent).
//! Keys are compared in constant time. Without `PUBLISH_KEY` everything is
//! accepted, as without the endpoint.
//!
//! An nginx whose application lacks the `on_publish` line never asks, and
//! would let anyone publish whatever PUBLISH_KEY says. So the endpoint also
//! remembers the nginx client ids it accepted ([`Approvals`]), and the
//! daemon puts on air only a publisher it accepted — or one that was
//! already connected before the endpoint listened (relay restarted while
//! the streamer stayed), which it cannot tell about.
//!
//! The endpoint listens on 127.0.0.1 only (`PUBLISH_AUTH_PORT`, 0: none) and
//! is built to shrug off whatever else reaches it: at most 32 connections at
//! once, 5 s to send the headers, 10 s per connection, 8 KiB of body.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use subtle::ConstantTimeEq as _;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::config::{Config, Secret};
use crate::observe::http;

/// The path nginx's `on_publish` URL must use.
pub const PATH: &str = "/on_publish";
/// nginx asks once per publish, one request per connection.
const LIMITS: http::Limits = http::Limits {
    max_connections: 32,
    header_timeout: Duration::from_secs(5),
    connection_timeout: Duration::from_secs(10),
    keep_alive: false,
};
/// Longest accepted request body (nginx sends a few hundred bytes).
const MAX_BODY: usize = 8 * 1024;
/// How many accepted client ids are remembered (one publisher at a time is
/// on the stream; a few reconnects are plenty).
const REMEMBERED: usize = 16;
/// Allowance for the stat page's view of a connection's age: a publisher
/// that connected this little before the endpoint listened still counts
/// as connected after it.
const AGE_SLACK: Duration = Duration::from_secs(2);
/// Longest stream name or address quoted in the log.
const LOG_LIMIT: usize = 64;

/// What the endpoint checks.
#[derive(Debug, Clone)]
pub struct Policy {
    pub app: String,
    pub name: String,
    pub key: Secret,
}

impl Policy {
    pub fn of(config: &Config) -> Policy {
        Policy {
            app: config.live.rtmp_app.clone(),
            name: config.live.rtmp_stream_name.clone(),
            key: config.live.publish_key.clone(),
        }
    }
}

/// The answer to one `on_publish` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The key matches (or no key is configured).
    Accept,
    /// Not a `call=publish` form, or not this instance's stream.
    OtherStream,
    /// No `key` argument.
    NoKey,
    /// A `key` argument that does not match.
    WrongKey,
}

impl Verdict {
    fn reason(self) -> &'static str {
        match self {
            Verdict::Accept => "accepted",
            Verdict::OtherStream => "not this instance's stream",
            Verdict::NoKey => "no publish key",
            Verdict::WrongKey => "wrong publish key",
        }
    }
}

/// Whether the endpoint vouches for a publisher on the stat page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vouch {
    /// It accepted this client id.
    Accepted,
    /// The publisher connected before the endpoint listened: it was checked,
    /// or not, by whatever answered then.
    Earlier,
    /// It connected since, and nginx never asked: its application has no
    /// `on_publish` pointing here.
    NeverAsked,
}

/// The nginx client ids the endpoint accepted, shared with the daemon.
#[derive(Debug, Clone)]
pub struct Approvals {
    since: Instant,
    ids: Arc<Mutex<VecDeque<u64>>>,
}

impl Approvals {
    fn new() -> Approvals {
        Approvals {
            since: Instant::now(),
            ids: Arc::default(),
        }
    }

    fn accepted(&self, id: u64) {
        let mut ids = self.ids.lock().unwrap();
        if ids.len() == REMEMBERED {
            ids.pop_front();
        }
        ids.push_back(id);
    }

    /// The verdict on client `id`, connected for `connected_for` (the stat
    /// page's `time`).
    pub fn vouch(&self, id: u64, connected_for: Duration) -> Vouch {
        if self.ids.lock().unwrap().contains(&id) {
            Vouch::Accepted
        } else if connected_for > self.since.elapsed() + AGE_SLACK {
            Vouch::Earlier
        } else {
            Vouch::NeverAsked
        }
    }
}

/// The fields of nginx's form that matter here.
#[derive(Debug, Default)]
struct Form {
    call: Option<String>,
    app: Option<String>,
    name: Option<String>,
    addr: Option<String>,
    clientid: Option<u64>,
    key: Option<Secret>,
}

fn parse_form(body: &[u8]) -> Form {
    let mut form = Form::default();
    for (k, v) in form_urlencoded::parse(body) {
        let v = v.into_owned();
        match &*k {
            "call" => form.call = Some(v),
            "app" => form.app = Some(v),
            "name" => form.name = Some(v),
            "addr" => form.addr = Some(v),
            "clientid" => form.clientid = v.parse().ok(),
            // A second `key` must not smuggle a guess past the first.
            "key" if form.key.is_none() => form.key = Some(Secret::new(v)),
            _ => {}
        }
    }
    form
}

/// The client id of this stream's publisher, if the form is nginx's
/// `on_publish_done` for it. nginx ignores the answer to that call.
fn publish_done_of(policy: &Policy, form: &Form) -> Option<u64> {
    let ours = form.call.as_deref() == Some("publish_done")
        && form.app.as_deref() == Some(policy.app.as_str())
        && form.name.as_deref() == Some(policy.name.as_str());
    ours.then_some(form.clientid).flatten()
}

/// The decision for one form.
fn decide(policy: &Policy, form: &Form) -> Verdict {
    if policy.key.is_empty() {
        return Verdict::Accept;
    }
    let ours = form.call.as_deref() == Some("publish")
        && form.app.as_deref() == Some(policy.app.as_str())
        && form.name.as_deref() == Some(policy.name.as_str());
    if !ours {
        return Verdict::OtherStream;
    }
    match &form.key {
        None => Verdict::NoKey,
        Some(sent) => {
            // ct_eq compares equal-length slices in constant time; only the
            // length can leak, and that is not the secret.
            if bool::from(
                sent.expose()
                    .as_bytes()
                    .ct_eq(policy.key.expose().as_bytes()),
            ) {
                Verdict::Accept
            } else {
                Verdict::WrongKey
            }
        }
    }
}

/// The running endpoint; dropping it stops it.
#[derive(Debug)]
pub struct Endpoint {
    approvals: Approvals,
    done: Option<mpsc::UnboundedReceiver<u64>>,
    task: JoinHandle<()>,
}

impl Endpoint {
    /// The publishers it accepted.
    pub fn approvals(&self) -> Approvals {
        self.approvals.clone()
    }

    /// nginx's client ids of this stream's publishers that ended their
    /// stream, as nginx's `on_publish_done` reports them (taken once).
    pub fn publish_done(&mut self) -> Option<mpsc::UnboundedReceiver<u64>> {
        self.done.take()
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the endpoint for `config`, and says at start what protects the
/// stream. With `PUBLISH_KEY` set, failing to listen is an error (the key
/// would protect nothing); without it, a warning. Each request is checked
/// against the latest configuration in `updates`, so a reload that replaces
/// the key applies at once.
pub async fn start(
    config: &Config,
    updates: watch::Receiver<Arc<Config>>,
) -> anyhow::Result<Option<Endpoint>> {
    let policy = Policy::of(config);
    let stream = format!("{}/{}", policy.app, policy.name);
    let port = config.endpoints.publish_auth_port;
    if policy.key.is_empty() {
        warn!(
            "no PUBLISH_KEY: anyone who can reach nginx's RTMP port and knows the stream name {stream} can publish; set PUBLISH_KEY and publish to {stream}?key=PUBLISH_KEY"
        );
    }
    if port == 0 {
        if !policy.key.is_empty() {
            warn!(
                "PUBLISH_AUTH_PORT=0: this instance does not check publishers itself; PUBLISH_KEY protects {stream} only if nginx's on_publish asks an instance that does"
            );
        }
        return Ok(None);
    }
    let bind = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = match bind_soon(bind).await {
        Ok(l) => l,
        Err(err) if policy.key.is_empty() => {
            warn!(
                "not answering nginx's on_publish: cannot listen on {bind}: {err} (another relay instance may answer it)"
            );
            return Ok(None);
        }
        Err(err) => {
            return Err(err).with_context(|| {
                format!(
                    "cannot listen on {bind} for nginx's on_publish (PUBLISH_AUTH_PORT); if another relay instance uses the port, give this one its own port, or 0 if it carries the same stream as that one"
                )
            })
        }
    };
    let addr = listener
        .local_addr()
        .context("on_publish endpoint address")?;
    info!(
        endpoint = %format!("http://{addr}{PATH}"),
        key = if policy.key.is_empty() { "none: every publisher is accepted" } else { "required" },
        "answering nginx's on_publish"
    );
    let approvals = Approvals::new();
    let recorder = approvals.clone();
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(http::serve_with(listener, LIMITS, move |req| {
        let policy = Policy::of(&updates.borrow());
        let recorder = recorder.clone();
        let done = done_tx.clone();
        async move { handle(req, &policy, &recorder, &done).await }
    }));
    Ok(Some(Endpoint {
        approvals,
        done: Some(done_rx),
        task,
    }))
}

/// Binds `addr`, retrying for a moment while it is in use: after a reload
/// the previous pipeline's endpoint may not have closed its socket yet.
async fn bind_soon(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        match TcpListener::bind(addr).await {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    policy: &Policy,
    approvals: &Approvals,
    done: &mpsc::UnboundedSender<u64>,
) -> Response<Full<Bytes>> {
    if req.uri().path() != PATH {
        return answer(StatusCode::NOT_FOUND);
    }
    if req.method() != Method::POST {
        return answer(StatusCode::METHOD_NOT_ALLOWED);
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(err) => {
            debug!("on_publish endpoint: body refused: {err}");
            return answer(StatusCode::PAYLOAD_TOO_LARGE);
        }
    };
    let form = parse_form(&body);
    if let Some(id) = publish_done_of(policy, &form) {
        info!(
            client = id,
            "publisher ended its stream (nginx on_publish_done)"
        );
        let _ = done.send(id);
        return answer(StatusCode::OK);
    }
    let verdict = decide(policy, &form);
    let addr = shown(form.addr.as_deref());
    let stream = format!(
        "{}/{}",
        shown(form.app.as_deref()),
        shown(form.name.as_deref())
    );
    match verdict {
        Verdict::Accept => {
            if let Some(id) = form.clientid {
                approvals.accepted(id);
            }
            info!(publisher = %addr, %stream, "publish accepted");
            answer(StatusCode::OK)
        }
        refused => {
            warn!(publisher = %addr, %stream, reason = refused.reason(), "publish refused");
            answer(StatusCode::FORBIDDEN)
        }
    }
}

/// A form value fit for the log: escaped, cut to a sane length.
fn shown(value: Option<&str>) -> String {
    match value {
        None => "-".to_string(),
        Some(v) => {
            let cut: String = v.chars().take(LOG_LIMIT).collect();
            let escaped = cut.escape_debug().to_string();
            if v.chars().count() > LOG_LIMIT {
                format!("{escaped}…")
            } else {
                escaped
            }
        }
    }
}

fn answer(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!(
        "{}\n",
        status.canonical_reason().unwrap_or("")
    ))));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(key: &str) -> Policy {
        Policy {
            app: "live".into(),
            name: "cam".into(),
            key: Secret::new(key),
        }
    }

    const NGINX_FORM: &str = "app=live&flashver=FMLE/3.0%20(compatible%3B%20Lavf59.27&swfurl=&tcurl=rtmp://127.0.0.1:19361/live&pageurl=&addr=198.51.100.7&clientid=1&call=publish&name=cam&type=live";

    fn verdict(key: &str, extra: &str) -> Verdict {
        decide(
            &policy(key),
            &parse_form(format!("{NGINX_FORM}{extra}").as_bytes()),
        )
    }

    #[test]
    fn approvals_vouch_for_accepted_and_earlier_publishers_only() {
        let a = Approvals::new();
        for id in 1..=20 {
            a.accepted(id);
        }
        assert_eq!(a.vouch(20, Duration::ZERO), Vouch::Accepted);
        // Only the last REMEMBERED ids are kept.
        assert_eq!(a.vouch(1, Duration::ZERO), Vouch::NeverAsked);
        assert_eq!(a.vouch(99, Duration::from_secs(1)), Vouch::NeverAsked);
        assert_eq!(a.vouch(99, Duration::from_secs(3600)), Vouch::Earlier);
        assert_eq!(
            parse_form(NGINX_FORM.as_bytes()).clientid,
            Some(1),
            "nginx's form carries the client id"
        );
    }

    #[test]
    fn publish_done_is_told_apart_and_needs_our_stream() {
        let p = policy("k");
        let done = |extra: &str| publish_done_of(&p, &parse_form(extra.as_bytes()));
        assert_eq!(
            done("call=publish_done&app=live&name=cam&clientid=7"),
            Some(7)
        );
        assert_eq!(
            done("call=publish_done&app=live&name=other&clientid=7"),
            None
        );
        assert_eq!(done("call=publish&app=live&name=cam&clientid=7"), None);
        assert_eq!(done("call=publish_done&app=live&name=cam"), None);
        // Without a key too.
        let open = policy("");
        assert_eq!(
            publish_done_of(
                &open,
                &parse_form(b"call=publish_done&app=live&name=cam&clientid=3")
            ),
            Some(3)
        );
    }

    #[test]
    fn key_decides() {
        assert_eq!(verdict("s3cret", "&key=s3cret"), Verdict::Accept);
        assert_eq!(verdict("s3cret", "&key=s3cre"), Verdict::WrongKey);
        assert_eq!(verdict("s3cret", "&key=s3cretX"), Verdict::WrongKey);
        assert_eq!(verdict("s3cret", "&key="), Verdict::WrongKey);
        assert_eq!(verdict("s3cret", ""), Verdict::NoKey);
        assert_eq!(verdict("s3cret", "&key=bad&key=s3cret"), Verdict::WrongKey);
        // Percent-encoded forms of the key decode to the key.
        assert_eq!(verdict("s3cret", "&key=s3%63ret"), Verdict::Accept);
    }

    #[test]
    fn other_streams_and_calls_are_refused_with_a_key() {
        let p = policy("k");
        let form = |s: &str| parse_form(s.as_bytes());
        assert_eq!(
            decide(&p, &form("call=publish&app=live&name=other&key=k")),
            Verdict::OtherStream
        );
        assert_eq!(
            decide(&p, &form("call=publish&app=out&name=cam&key=k")),
            Verdict::OtherStream
        );
        assert_eq!(
            decide(&p, &form("call=play&app=live&name=cam&key=k")),
            Verdict::OtherStream
        );
        assert_eq!(decide(&p, &form("")), Verdict::OtherStream);
        assert_eq!(decide(&p, &form("\u{0}\u{ff}&&==")), Verdict::OtherStream);
    }

    #[test]
    fn without_a_key_everything_is_accepted() {
        assert_eq!(verdict("", ""), Verdict::Accept);
        assert_eq!(verdict("", "&key=anything"), Verdict::Accept);
        assert_eq!(
            decide(&policy(""), &parse_form(b"call=publish&app=x&name=y")),
            Verdict::Accept
        );
    }

    #[test]
    fn log_values_are_escaped_and_cut() {
        assert_eq!(shown(None), "-");
        assert_eq!(shown(Some("a\nb")), "a\\nb");
        let long = "x".repeat(500);
        assert_eq!(shown(Some(&long)).chars().count(), LOG_LIMIT + 1);
    }
}
