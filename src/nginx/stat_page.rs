//! The nginx-rtmp statistics page (`rtmp_stat all`): fetching, parsing and
//! the little arithmetic the daemon needs on top of it.
//!
//! The page is untrusted input. [`parse`] never panics: malformed XML, a
//! page that is not a stat page at all, or one nested absurdly deep is an
//! error; a number that does not parse (non-numeric, negative, out of range
//! for its type, NaN/infinite for the frame rate) reads as 0, the same as a
//! missing element. Elements this module does not know are ignored, so newer
//! or patched nginx-rtmp builds that add fields still parse.
//!
//! What the page looks like (nginx 1.22 + nginx-rtmp 1.2.2, which reports
//! itself as `<nginx_rtmp_version>1.1.4</nginx_rtmp_version>`), as captured
//! in `tests/fixtures/stat/`:
//!
//! ```text
//! rtmp/server*/application*/{name, live?}
//!     live/{stream*, nclients}
//!     stream/{name, time, bw_in, bytes_in, bw_out, bytes_out, bw_audio, bw_video,
//!             client*, meta?, nclients, publishing?, active?}
//!     client/{id, address, time, flashver, dropped, avsync, timestamp, publishing?, active?}
//!     meta/video/{width, height, frame_rate, codec, profile, compat, level}
//!     meta/audio/{codec, profile, channels, sample_rate}
//! ```
//!
//! * `time` (stream and client) is in milliseconds; `bw_*` are bits/s
//!   averaged over 10 s and only recomputed when data flows, so right after
//!   a publish starts they read 0 and after the publisher goes they keep the
//!   last value for ~10 s or more. The live rate is derived from `bytes_in`
//!   instead (`policy/bitrate.rs`).
//! * An application without `live on;` has no `<live>` element at all, and a
//!   publisher on it is not listed anywhere.
//! * A stream stays listed while a player is connected, even after its
//!   publisher left: no `<publishing/>`, no `<active/>`, no `<meta>`, and the
//!   remaining clients lose their `<active/>`. Its `bytes_in` is not reset
//!   when a new publisher arrives on the same name.
//! * `<meta>` appears once the stream is active; `<video>` is then always
//!   there (all zeros without a codec for an audio-only stream) while a
//!   stream without audio shows an empty `<audio></audio>`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::time::Duration;

use quick_xml::events::Event;
use serde::de::IgnoredAny;
use serde::Deserialize;

/// Default cap on the size of a stat page body, see [`StatsClient::with_max_body`].
pub const DEFAULT_MAX_BODY: usize = 4 * 1024 * 1024;

/// Deeper nesting than this is refused before it reaches the deserializer
/// (a real page nests 8 levels).
const MAX_DEPTH: usize = 64;

/// Events the deserializer may hold while looking ahead for more items of a
/// list interleaved with other elements (a 4 MiB page has fewer than 2^20).
const MAX_LOOKAHEAD_EVENTS: usize = 1 << 20;

// ---------------------------------------------------------------------------
// Public model
// ---------------------------------------------------------------------------

/// One parsed stat page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatPage {
    /// Every live stream, flattened over all `<server>` and `<application>`
    /// elements, in document order.
    pub streams: Vec<StreamStat>,
}

/// One `<stream>` of an application's `<live>` section.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamStat {
    /// Name of the enclosing `<application>`.
    pub app: String,
    pub name: String,
    /// Bytes received on this stream since it was created (by all its
    /// publishers so far: it is not reset when a publisher is replaced).
    pub bytes_in: u64,
    /// Incoming bits/s averaged by nginx-rtmp over 10 s (lagging, see module doc).
    pub bw_in: u64,
    /// Number of clients (publisher and players) on this stream.
    pub nclients: u32,
    /// `<publishing/>`: a publisher is attached.
    pub publishing: bool,
    /// `<active/>`: the stream carries data (has seen its codec headers).
    pub active: bool,
    /// `meta/video`, present once nginx-rtmp has codec information for the
    /// stream. For an audio-only stream it is there with zero size and an
    /// empty codec (see [`StreamStat::has_video`]).
    pub video: Option<VideoMeta>,
    /// `meta/audio` when it names a codec, sample rate or channel count; an
    /// empty `<audio></audio>` (stream without audio) gives `None`.
    pub audio: Option<AudioMeta>,
    pub clients: Vec<ClientStat>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VideoMeta {
    pub width: u32,
    pub height: u32,
    /// From the publisher's metadata; 0 when it sent none (e.g. ffmpeg with
    /// `-flvflags no_metadata`).
    pub frame_rate: f64,
    /// As nginx-rtmp names it, e.g. `H264`; empty when unknown.
    pub codec: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AudioMeta {
    /// As nginx-rtmp names it, e.g. `AAC`; empty when unknown.
    pub codec: String,
    pub sample_rate: u32,
    pub channels: u32,
}

/// One `<client>` of a stream: its publisher or a player.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientStat {
    /// nginx connection number; a new connection gets a new id, which is how
    /// a replaced publisher is told apart from the previous one.
    pub id: u64,
    /// `None` when the address is not an IP address (e.g. `unix:`).
    /// IPv4-mapped IPv6 addresses are given as IPv4.
    pub address: Option<IpAddr>,
    /// How long the client has been connected (`<time>` is in milliseconds).
    pub time: Duration,
    pub publishing: bool,
}

impl StatPage {
    /// The first stream named `name` in application `app`, searching all
    /// servers in document order.
    pub fn stream(&self, app: &str, name: &str) -> Option<&StreamStat> {
        self.streams.iter().find(|s| s.app == app && s.name == name)
    }
}

impl StreamStat {
    /// The client with `<publishing/>` (the first one, should a malformed
    /// page list several). `None` for an idle stream that only has players.
    pub fn publisher(&self) -> Option<&ClientStat> {
        self.clients.iter().find(|c| c.publishing)
    }

    /// Whether the stream carries audio. Audio presence is only known once
    /// video meta is there: `None` = not known yet.
    pub fn has_audio(&self) -> Option<bool> {
        self.video.as_ref().map(|_| self.audio.is_some())
    }

    /// Whether the stream carries video: `None` while there is no meta yet,
    /// `Some(false)` for an audio-only stream (meta/video without codec or size).
    pub fn has_video(&self) -> Option<bool> {
        self.video
            .as_ref()
            .map(|v| !v.codec.is_empty() || (v.width > 0 && v.height > 0))
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Where in the document a syntax error was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XmlPosition {
    /// 1-based.
    pub line: u64,
    /// 1-based, in bytes.
    pub column: u64,
    /// 0-based byte offset.
    pub offset: u64,
}

impl XmlPosition {
    fn in_text(text: &str, offset: u64) -> XmlPosition {
        let end = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(text.len());
        let before = &text.as_bytes()[..end];
        let line = before.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        XmlPosition {
            line,
            column: (end - line_start) as u64 + 1,
            offset: end as u64,
        }
    }
}

impl fmt::Display for XmlPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {} (byte {})",
            self.line, self.column, self.offset
        )
    }
}

/// Errors of [`parse`] and [`StatsClient`]. Every message is one line and
/// names the URL when the error comes from a fetch.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// The stat URL given to [`StatsClient::new`] is unusable.
    #[error("invalid stat page URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// Connecting, sending or receiving failed (refused, reset, ...).
    #[error("stat page {url}: request failed: {reason}")]
    Request { url: String, reason: String },
    /// The server answered with a non-2xx status.
    #[error("stat page {url}: HTTP status {status}")]
    Status { url: String, status: u16 },
    /// No complete answer within the client's timeout.
    #[error("stat page {url}: no complete answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    /// The body is larger than the client's cap.
    #[error("stat page {url}: body larger than {limit} bytes, refused")]
    TooLarge { url: String, limit: usize },
    /// Not well-formed XML, or not an nginx-rtmp stat page.
    #[error("{}unparsable stat XML{}: {message}", url_prefix(.url), position_suffix(.position))]
    Xml {
        /// Set when the page came from [`StatsClient::fetch`].
        url: Option<String>,
        position: Option<XmlPosition>,
        message: String,
    },
}

fn url_prefix(url: &Option<String>) -> String {
    url.as_ref()
        .map(|u| format!("stat page {u}: "))
        .unwrap_or_default()
}

fn position_suffix(position: &Option<XmlPosition>) -> String {
    position.map(|p| format!(" at {p}")).unwrap_or_default()
}

/// Keeps error messages on one line whatever the underlying library says.
fn one_line(s: impl fmt::Display) -> String {
    s.to_string()
        .split(['\n', '\r'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

impl StatsError {
    fn xml(position: Option<XmlPosition>, message: impl fmt::Display) -> StatsError {
        StatsError::Xml {
            url: None,
            position,
            message: one_line(message),
        }
    }

    fn with_url(self, page_url: &str) -> StatsError {
        match self {
            StatsError::Xml {
                url: None,
                position,
                message,
            } => StatsError::Xml {
                url: Some(page_url.to_owned()),
                position,
                message,
            },
            other => other,
        }
    }
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// Parses a stat page.
///
/// Errors on XML that is not well-formed (including a truncated page), on a
/// document whose root element is not `<rtmp>` (an HTML error page must not
/// read as "no streams"), and on nesting deeper than 64 levels. Values are
/// lenient, see the module documentation.
pub fn parse(xml: &str) -> Result<StatPage, StatsError> {
    check_document(xml)?;
    let mut de = quick_xml::de::Deserializer::from_str(xml);
    // `overlapped-lists`: a repeated element (`<client>`, `<stream>`, ...)
    // need not be consecutive; bound how many events the look-ahead keeps.
    de.event_buffer_size(NonZeroUsize::new(MAX_LOOKAHEAD_EVENTS));
    let raw = RawRoot::deserialize(&mut de).map_err(|e| StatsError::xml(None, e))?;
    Ok(raw.into_page())
}

/// One pass with the low-level reader: well-formedness with a position for
/// errors, truncation, the root element's name, a depth limit.
fn check_document(xml: &str) -> Result<(), StatsError> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let at = |offset: u64| Some(XmlPosition::in_text(xml, offset));
    let mut depth = 0usize;
    let mut root_seen = false;
    loop {
        let event = match reader.read_event() {
            Ok(event) => event,
            Err(e) => return Err(StatsError::xml(at(reader.error_position()), e)),
        };
        let before_root = !root_seen && depth == 0;
        match event {
            Event::Start(ref start) | Event::Empty(ref start) => {
                if depth == 0 {
                    if root_seen {
                        return Err(StatsError::xml(
                            at(reader.buffer_position()),
                            "content after the root element",
                        ));
                    }
                    root_seen = true;
                    let name = start.name();
                    if name.into_inner() != "rtmp" {
                        return Err(StatsError::xml(
                            None,
                            format!(
                                "root element is <{}>, not <rtmp>: not an nginx-rtmp stat page",
                                truncate(name.into_inner(), 40)
                            ),
                        ));
                    }
                }
                if matches!(event, Event::Start(_)) {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err(StatsError::xml(
                            at(reader.buffer_position()),
                            format!("elements nested deeper than {MAX_DEPTH} levels"),
                        ));
                    }
                }
            }
            Event::End(_) => depth = depth.saturating_sub(1),
            Event::Text(ref text) if depth == 0 && !text.trim().is_empty() => {
                let what = if before_root { "before" } else { "after" };
                return Err(StatsError::xml(
                    at(reader.buffer_position()),
                    format!("text {what} the root element"),
                ));
            }
            Event::CData(_) | Event::GeneralRef(_) if depth == 0 => {
                return Err(StatsError::xml(
                    at(reader.buffer_position()),
                    "text outside the root element",
                ));
            }
            Event::Eof => {
                if depth > 0 {
                    return Err(StatsError::xml(
                        at(reader.buffer_position()),
                        format!("document ends with {depth} element(s) still open (truncated?)"),
                    ));
                }
                if !root_seen {
                    return Err(StatsError::xml(None, "no root element (empty document?)"));
                }
                return Ok(());
            }
            _ => {}
        }
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

/// Lenient number: surrounding whitespace is allowed; anything that does not
/// parse as `T` (empty, non-numeric, negative for unsigned, out of range)
/// gives `T::default()`, i.e. 0.
fn num<T: std::str::FromStr + Default>(s: &str) -> T {
    s.trim().parse().unwrap_or_default()
}

/// Frame rates are fractional (29.97); NaN, infinities and negatives give 0.
fn rate(s: &str) -> f64 {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => v,
        _ => 0.0,
    }
}

/// `127.0.0.1`, `::1`, `[::1]`, `1.2.3.4:5678`, `[::1]:5678`, `fe80::1%eth0`;
/// IPv4-mapped IPv6 becomes IPv4. Anything else (`unix:`, empty) is `None`.
fn parse_address(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    let ip = if let Ok(ip) = s.parse::<IpAddr>() {
        ip
    } else if let Ok(sa) = s.parse::<SocketAddr>() {
        sa.ip()
    } else {
        let inner = s
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(s);
        // An IPv6 zone index ("%eth0") is not part of the address.
        let without_zone = inner.split_once('%').map_or(inner, |(a, _)| a);
        without_zone.parse::<IpAddr>().ok()?
    };
    Some(ip.to_canonical())
}

// Raw structs mirroring the XML. Every field is defaulted so that missing
// elements are fine; unknown elements are skipped by serde; numbers are read
// as text and converted leniently.

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawRoot {
    server: Vec<RawServer>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawServer {
    application: Vec<RawApplication>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawApplication {
    name: String,
    live: Option<RawLive>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawLive {
    stream: Vec<RawStream>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawStream {
    name: String,
    bw_in: String,
    bytes_in: String,
    nclients: String,
    publishing: Option<IgnoredAny>,
    active: Option<IgnoredAny>,
    meta: Option<RawMeta>,
    client: Vec<RawClient>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawMeta {
    video: Option<RawVideo>,
    audio: Option<RawAudio>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawVideo {
    width: String,
    height: String,
    frame_rate: String,
    codec: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawAudio {
    codec: String,
    channels: String,
    sample_rate: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawClient {
    id: String,
    address: String,
    time: String,
    publishing: Option<IgnoredAny>,
}

impl RawRoot {
    fn into_page(self) -> StatPage {
        let mut streams = Vec::new();
        for server in self.server {
            for application in server.application {
                let Some(live) = application.live else {
                    continue;
                };
                for stream in live.stream {
                    streams.push(stream.into_stat(&application.name));
                }
            }
        }
        StatPage { streams }
    }
}

impl RawStream {
    fn into_stat(self, app: &str) -> StreamStat {
        let (video, audio) = match self.meta {
            Some(meta) => (
                meta.video.map(RawVideo::into_meta),
                meta.audio.and_then(RawAudio::into_meta),
            ),
            None => (None, None),
        };
        StreamStat {
            app: app.to_owned(),
            name: self.name,
            bytes_in: num(&self.bytes_in),
            bw_in: num(&self.bw_in),
            nclients: num(&self.nclients),
            publishing: self.publishing.is_some(),
            active: self.active.is_some(),
            video,
            audio,
            clients: self.client.into_iter().map(RawClient::into_stat).collect(),
        }
    }
}

impl RawVideo {
    fn into_meta(self) -> VideoMeta {
        VideoMeta {
            width: num(&self.width),
            height: num(&self.height),
            frame_rate: rate(&self.frame_rate),
            codec: self.codec.trim().to_owned(),
        }
    }
}

impl RawAudio {
    fn into_meta(self) -> Option<AudioMeta> {
        let meta = AudioMeta {
            codec: self.codec.trim().to_owned(),
            sample_rate: num(&self.sample_rate),
            channels: num(&self.channels),
        };
        let known = !meta.codec.is_empty() || meta.sample_rate > 0 || meta.channels > 0;
        known.then_some(meta)
    }
}

impl RawClient {
    fn into_stat(self) -> ClientStat {
        ClientStat {
            id: num(&self.id),
            address: parse_address(&self.address),
            time: Duration::from_millis(num(&self.time)),
            publishing: self.publishing.is_some(),
        }
    }
}

// ---------------------------------------------------------------------------
// Fetching
// ---------------------------------------------------------------------------

/// Fetches and parses the stat page; each fetch has a timeout and a
/// body-size cap (4 MiB by default) so a hanging or huge page can't wedge
/// the daemon. Plain `http://` only; no proxy is used, redirects are not
/// followed (a 3xx is an error).
#[derive(Debug, Clone)]
pub struct StatsClient {
    http: reqwest::Client,
    url: reqwest::Url,
    /// `url` as given, for messages.
    url_text: String,
    timeout: Duration,
    max_body: usize,
}

impl StatsClient {
    /// `timeout` bounds a whole fetch: connecting, the response head and the
    /// complete body.
    pub fn new(url: &str, timeout: Duration) -> Result<StatsClient, StatsError> {
        let invalid = |reason: String| StatsError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| invalid(one_line(e)))?;
        if parsed.scheme() != "http" {
            return Err(invalid(format!(
                "scheme {:?} not supported, only http://",
                parsed.scheme()
            )));
        }
        if parsed.host().is_none() {
            return Err(invalid("no host".to_owned()));
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout)
            .timeout(timeout)
            // nginx closes idle keep-alive connections after 75 s; drop ours
            // well before so a slow poll never races a closing connection.
            .pool_idle_timeout(Duration::from_secs(20))
            .user_agent(concat!("relay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| invalid(format!("cannot build HTTP client: {}", error_chain(&e))))?;
        Ok(StatsClient {
            http,
            url: parsed,
            url_text: url.to_owned(),
            timeout,
            max_body: DEFAULT_MAX_BODY,
        })
    }

    /// Changes the body-size cap (default [`DEFAULT_MAX_BODY`]).
    pub fn with_max_body(mut self, bytes: usize) -> StatsClient {
        self.max_body = bytes;
        self
    }

    /// One GET of the stat page, parsed. Bytes that are not UTF-8 (client
    /// supplied strings such as `flashver` are copied by nginx-rtmp as they
    /// come) are replaced rather than failing the whole page.
    pub async fn fetch(&self) -> Result<StatPage, StatsError> {
        let body = match tokio::time::timeout(self.timeout, self.fetch_body()).await {
            Ok(result) => result?,
            Err(_) => return Err(self.timed_out()),
        };
        let text = String::from_utf8_lossy(&body);
        parse(&text).map_err(|e| e.with_url(&self.url_text))
    }

    async fn fetch_body(&self) -> Result<Vec<u8>, StatsError> {
        let mut response = self
            .http
            .get(self.url.clone())
            .send()
            .await
            .map_err(|e| self.request_error(e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(StatsError::Status {
                url: self.url_text.clone(),
                status: status.as_u16(),
            });
        }
        let too_large = || StatsError::TooLarge {
            url: self.url_text.clone(),
            limit: self.max_body,
        };
        let announced = response.content_length();
        if announced.is_some_and(|n| n > self.max_body as u64) {
            return Err(too_large());
        }
        let mut body = Vec::with_capacity(
            announced
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(16 * 1024)
                .min(self.max_body),
        );
        while let Some(chunk) = response.chunk().await.map_err(|e| self.request_error(e))? {
            if chunk.len() > self.max_body - body.len() {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn timed_out(&self) -> StatsError {
        StatsError::Timeout {
            url: self.url_text.clone(),
            timeout: self.timeout,
        }
    }

    fn request_error(&self, e: reqwest::Error) -> StatsError {
        if e.is_timeout() {
            return self.timed_out();
        }
        StatsError::Request {
            url: self.url_text.clone(),
            reason: error_chain(&e.without_url()),
        }
    }
}

/// "outer: cause: root cause" on one line, skipping repeated messages.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = current {
        let text = one_line(err);
        if !text.is_empty() && parts.last() != Some(&text) {
            parts.push(text);
        }
        current = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn lenient_numbers() {
        assert_eq!(num::<u64>(" 42\n"), 42);
        assert_eq!(num::<u64>(""), 0);
        assert_eq!(num::<u64>("abc"), 0);
        assert_eq!(num::<u64>("-1"), 0);
        assert_eq!(num::<u64>("18446744073709551615"), u64::MAX);
        assert_eq!(num::<u64>("18446744073709551616"), 0);
        assert_eq!(num::<u32>("4294967296"), 0);
        assert_eq!(num::<u32>("1e3"), 0);
        assert_eq!(rate("29.97"), 29.97);
        assert_eq!(rate("NaN"), 0.0);
        assert_eq!(rate("inf"), 0.0);
        assert_eq!(rate("-30"), 0.0);
        assert_eq!(rate("1e400"), 0.0);
        assert_eq!(rate("x"), 0.0);
    }

    #[test]
    fn addresses() {
        let lo4 = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let lo6 = Some(IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(parse_address("127.0.0.1"), lo4);
        assert_eq!(parse_address(" 127.0.0.1 "), lo4);
        assert_eq!(parse_address("127.0.0.1:1935"), lo4);
        assert_eq!(parse_address("::1"), lo6);
        assert_eq!(parse_address("[::1]"), lo6);
        assert_eq!(parse_address("[::1]:1935"), lo6);
        assert_eq!(parse_address("::ffff:127.0.0.1"), lo4);
        assert_eq!(
            parse_address("fe80::1%eth0"),
            Some("fe80::1".parse().unwrap())
        );
        assert_eq!(parse_address("unix:"), None);
        assert_eq!(parse_address(""), None);
        assert_eq!(parse_address("localhost"), None);
    }

    #[test]
    fn positions() {
        let text = "ab\ncd\nef";
        assert_eq!(
            XmlPosition::in_text(text, 4),
            XmlPosition {
                line: 2,
                column: 2,
                offset: 4
            }
        );
        assert_eq!(XmlPosition::in_text(text, 0).line, 1);
        assert_eq!(XmlPosition::in_text(text, 99).offset, 8);
    }

    #[test]
    fn messages_are_one_line() {
        let e = StatsError::xml(None, "a\nb\r\n c");
        assert_eq!(e.to_string(), "unparsable stat XML: a b c");
        let e = e.with_url("http://127.0.0.1:8080/stat");
        assert_eq!(
            e.to_string(),
            "stat page http://127.0.0.1:8080/stat: unparsable stat XML: a b c"
        );
    }
}
