//! Value types and the parsers that turn one key's text into its typed
//! value. Each parser returns a one-line problem description; the caller
//! adds the key's name and where the value came from.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

use super::Secret;

/// Which addresses may publish the live feed to the local nginx-rtmp.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum AllowedPublishers {
    /// Anything that is neither loopback nor RFC 1918 private space.
    #[default]
    External,
    Any,
    Cidrs(Vec<IpNet>),
}

impl AllowedPublishers {
    pub fn allows(&self, addr: IpAddr) -> bool {
        match self {
            AllowedPublishers::Any => true,
            AllowedPublishers::External => is_external(addr),
            AllowedPublishers::Cidrs(nets) => {
                // A v4 client reaching a dual-stack socket shows up as
                // ::ffff:a.b.c.d; it must match the rule written for a.b.c.d
                // (and the other way round).
                let alternate = match addr {
                    IpAddr::V4(v4) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
                    IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
                };
                nets.iter().any(|net| {
                    net.contains(&addr) || alternate.is_some_and(|alt| net.contains(&alt))
                })
            }
        }
    }
}

impl fmt::Display for AllowedPublishers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowedPublishers::External => f.write_str("external"),
            AllowedPublishers::Any => f.write_str("any"),
            AllowedPublishers::Cidrs(nets) => {
                let list: Vec<String> = nets.iter().map(ToString::to_string).collect();
                f.write_str(&list.join(", "))
            }
        }
    }
}

/// "External" is deliberately literal: not loopback and not RFC 1918. Other
/// special ranges (documentation, CGNAT, link-local...) count as external,
/// because a publisher may legitimately come from them.
fn is_external(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => is_external_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_external_v4(v4),
            None => v6 != Ipv6Addr::LOCALHOST,
        },
    }
}

fn is_external_v4(addr: Ipv4Addr) -> bool {
    let [a, b, _, _] = addr.octets();
    let loopback = a == 127;
    let rfc1918 = a == 10 || (a == 172 && (16..=31).contains(&b)) || (a == 192 && b == 168);
    !(loopback || rfc1918)
}

/// A bitrate as FFmpeg wants it written (`text`) and as a number (`bps`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bitrate {
    pub text: String,
    pub bps: u64,
}

impl fmt::Display for Bitrate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// LOW_BITRATE_KBPS and LOW_BITRATE_SECS together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LowBitrate {
    pub bps: u64,
    pub window: Duration,
}

/// The output width for a 16:9 frame `height` pixels tall, rounded to the
/// nearest even number because H.264 with 4:2:0 chroma needs even sizes.
pub fn width_16_9(height: u32) -> u32 {
    // round(height * 16 / 9 / 2) * 2, in integers.
    (height * 8 + 4) / 9 * 2
}

pub(super) fn parse_offline_after(value: &str) -> Result<Duration, String> {
    match value.parse::<u64>() {
        Ok(ms) if (100..=10_000).contains(&ms) => Ok(Duration::from_millis(ms)),
        _ => Err(format!(
            "{value:?} is not a whole number of milliseconds from 100 to 10000"
        )),
    }
}

pub(super) fn parse_seconds_or_zero(value: &str, max: u32) -> Result<Duration, String> {
    match value.parse::<f64>() {
        Ok(0.0) => Ok(Duration::ZERO),
        _ => parse_seconds(value, max)
            .map_err(|_| format!("{value:?} is not a number of seconds from 0 to {max}")),
    }
}

pub(super) fn parse_kbps(value: &str) -> Result<u64, String> {
    match value.parse::<u64>() {
        Ok(kbps) if (1..=1_000_000).contains(&kbps) => Ok(kbps * 1000),
        _ => Err(format!(
            "{value:?} is not a whole number of kbit/s from 1 to 1000000"
        )),
    }
}

/// Metrics carry no secret, but an HTTP port on a public address is one
/// more thing to attack: loopback only (scrape through SSH or a proxy).
pub(super) fn parse_metrics_addr(value: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = value.parse().map_err(|_| {
        format!("{value:?} is not an address with a port, e.g. 127.0.0.1:9108 or [::1]:9108")
    })?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{value:?} is not a loopback address; metrics are served on 127.0.0.1 or ::1 only"
        ));
    }
    Ok(addr)
}

fn has_space_or_control(text: &str) -> bool {
    text.chars().any(|c| c.is_whitespace() || c.is_control())
}

// KICK_URL may carry the stream key when KICK_KEY is empty, so its problems
// are described without quoting it.
pub(super) fn parse_kick_url(value: &str) -> Result<String, String> {
    let rest = value
        .strip_prefix("rtmp://")
        .or_else(|| value.strip_prefix("rtmps://"))
        .ok_or("must be an rtmp:// or rtmps:// URL")?;
    if has_space_or_control(value) {
        return Err("must not contain spaces or control characters".to_owned());
    }
    let authority = rest.split('/').next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') {
        return Err("has no host name after the scheme".to_owned());
    }
    Ok(value.trim_end_matches('/').to_owned())
}

/// DESTINATIONS: a comma list of names, each lower-case letters, digits
/// and `_`, none twice, none whose keys are another setting's.
pub(super) fn parse_destination_names(value: &str) -> Result<Vec<String>, String> {
    let mut names: Vec<String> = Vec::new();
    for name in value.split(',').map(str::trim) {
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Err(format!(
                "{name:?} is not a destination name (lower-case letters, digits and _, comma-separated)"
            ));
        }
        if names.iter().any(|n| n == name) {
            return Err(format!("names {name:?} twice"));
        }
        if name != super::keys::KICK {
            let taken = super::keys::destination_keys(name)
                .into_iter()
                .find(|k| super::keys::key(k).is_some());
            if let Some(taken) = taken {
                return Err(format!(
                    "the destination {name:?} would be configured by {taken}, which is another setting; choose another name"
                ));
            }
        }
        names.push(name.to_owned());
    }
    Ok(names)
}

/// FFmpeg reads preset lines of up to 999 bytes; platform keys are far
/// shorter.
pub(super) const MAX_KEY_LEN: usize = 512;

pub(super) fn parse_kick_key(value: &str) -> Result<Secret, String> {
    if has_space_or_control(value) {
        return Err("must not contain spaces or control characters (value not shown)".to_owned());
    }
    if value.len() > MAX_KEY_LEN {
        return Err(format!(
            "is longer than {MAX_KEY_LEN} characters (value not shown)"
        ));
    }
    Ok(Secret::new(value))
}

// It travels in the stream key field as `NAME?key=VALUE`, so it is kept to
// characters that need no URL encoding.
pub(super) fn parse_publish_key(value: &str) -> Result<Secret, String> {
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c))
    {
        return Err("use only letters, digits, '-', '_', '.' and '~' (value not shown)".to_owned());
    }
    Ok(Secret::new(value))
}

pub(super) fn parse_host(value: &str) -> Result<String, String> {
    let problem = || format!("{value:?} is not a host name or IP address");
    if value.is_empty() || value.contains('/') || has_space_or_control(value) {
        return Err(problem());
    }
    // IPv6 literals may be written with or without brackets; store them bare.
    let bare = value
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .unwrap_or(value);
    if bare.contains(':') && bare.parse::<Ipv6Addr>().is_err() {
        return Err(problem());
    }
    Ok(bare.to_owned())
}

pub(super) fn parse_port(value: &str) -> Result<u16, String> {
    match value.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!("{value:?} is not a port number (1..=65535)")),
    }
}

pub(super) fn parse_name(value: &str) -> Result<String, String> {
    if value.is_empty() || value.contains('/') || has_space_or_control(value) {
        return Err(format!(
            "{value:?} is not a valid name (non-empty, no '/' or whitespace)"
        ));
    }
    Ok(value.to_owned())
}

pub(super) fn parse_height(value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(h) if (144..=2160).contains(&h) && h % 2 == 0 => Ok(h),
        _ => Err(format!(
            "{value:?} is not an even output height in pixels (144..=2160), e.g. 1080 or 720"
        )),
    }
}

pub(super) fn parse_fps(value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(fps) if (1..=120).contains(&fps) => Ok(fps),
        _ => Err(format!(
            "{value:?} is not a whole number of frames per second (1..=120)"
        )),
    }
}

/// Upper bound for any bitrate: FFmpeg stores `-bufsize` in a C `int`.
const MAX_BPS: u64 = i32::MAX as u64;

pub(super) fn parse_bitrate(value: &str) -> Result<Bitrate, String> {
    let (digits, multiplier, suffix) = if let Some(d) = value.strip_suffix(['k', 'K']) {
        (d, 1_000, "k")
    } else if let Some(d) = value.strip_suffix('M') {
        (d, 1_000_000, "M")
    } else {
        (value, 1, "")
    };
    let malformed = || {
        format!("{value:?} is not a bitrate: use digits with an optional k or M suffix, e.g. 3000k")
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    let number: u64 = digits.parse().map_err(|_| malformed())?;
    match number.checked_mul(multiplier) {
        Some(bps) if bps > 0 && bps <= MAX_BPS => Ok(Bitrate {
            // Normalized ("03000K" → "3000k") so FFmpeg sees a plain form.
            text: format!("{number}{suffix}"),
            bps,
        }),
        _ => Err(format!(
            "{value:?} must be above 0 and at most {MAX_BPS} bits per second"
        )),
    }
}

pub(super) fn parse_samplerate(value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(rate @ (32000 | 44100 | 48000)) => Ok(rate),
        _ => Err(format!("{value:?} is not one of 32000, 44100, 48000")),
    }
}

pub(super) fn parse_seconds(value: &str, max: u32) -> Result<Duration, String> {
    match value.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 && secs <= f64::from(max) => {
            Ok(Duration::from_secs_f64(secs))
        }
        _ => Err(format!(
            "{value:?} is not a number of seconds above 0 and at most {max}"
        )),
    }
}

pub(super) fn parse_stats_url(value: &str) -> Result<String, String> {
    let rest = value
        .strip_prefix("http://")
        .ok_or_else(|| format!("{value:?} must be an http:// URL"))?;
    if has_space_or_control(value) || rest.split('/').next().unwrap_or("").is_empty() {
        return Err(format!("{value:?} is not a valid http:// URL"));
    }
    Ok(value.to_owned())
}

pub(super) fn parse_allowed_publishers(value: &str) -> Result<AllowedPublishers, String> {
    if value.eq_ignore_ascii_case("external") {
        return Ok(AllowedPublishers::External);
    }
    if value.eq_ignore_ascii_case("any") {
        return Ok(AllowedPublishers::Any);
    }
    let mut nets = Vec::new();
    // Empty items are skipped so a trailing comma is harmless.
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let net = match item.parse::<IpNet>() {
            Ok(net) => net.trunc(),
            // A bare address means that single host.
            Err(_) => item.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
                format!(
                    "{item:?} is not an address or CIDR; use \"external\", \"any\" \
                     or a comma-separated list like 203.0.113.0/24, ::1/128"
                )
            })?,
        };
        nets.push(net);
    }
    if nets.is_empty() {
        return Err(format!(
            "{value:?} lists no addresses; use \"external\", \"any\" or CIDRs"
        ));
    }
    Ok(AllowedPublishers::Cidrs(nets))
}

/// A port, or 0 for "none".
pub(super) fn parse_port_or_zero(value: &str) -> Result<u16, String> {
    if value == "0" {
        return Ok(0);
    }
    parse_port(value)
        .map_err(|_| format!("{value:?} is not a port number (1..=65535, or 0 for none)"))
}

/// A kind of live source LIVE_SOURCES can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LiveSource {
    /// A publisher of nginx-rtmp's stream.
    Rtmp,
    /// A caller of relay's SRT listener.
    Srt,
}

impl LiveSource {
    pub fn name(self) -> &'static str {
        match self {
            LiveSource::Rtmp => "rtmp",
            LiveSource::Srt => "srt",
        }
    }
}

pub(super) fn parse_live_sources(value: &str) -> Result<Vec<LiveSource>, String> {
    let mut list = Vec::new();
    for word in value.split(',').map(str::trim) {
        let source = match word.to_ascii_lowercase().as_str() {
            "rtmp" => LiveSource::Rtmp,
            "srt" => LiveSource::Srt,
            "" => return Err(format!("{value:?}: an empty entry; list rtmp and/or srt, comma-separated")),
            _ => return Err(format!("{word:?} is not a live source; use rtmp and/or srt, comma-separated, first has priority")),
        };
        if list.contains(&source) {
            return Err(format!("{word:?} is listed twice"));
        }
        list.push(source);
    }
    Ok(list)
}

/// SRT's passphrase: 10 to 79 characters (SRT refuses others). It goes to
/// FFmpeg in an options file, one line, so no control characters.
pub(super) fn parse_srt_passphrase(value: &str) -> Result<Secret, String> {
    if value.is_empty() {
        return Ok(Secret::new(""));
    }
    let n = value.chars().count();
    if !(10..=79).contains(&n) {
        return Err(format!(
            "must be 10 to 79 characters, as SRT requires; this one has {n} (value not shown)"
        ));
    }
    if value.chars().any(|c| c.is_control() || !c.is_ascii()) {
        return Err("use printable ASCII characters only (value not shown)".to_owned());
    }
    Ok(Secret::new(value))
}

/// SRT_HOST: an IP address to listen on (a name would need a lookup).
pub(super) fn parse_listen_addr(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Ok(String::new());
    }
    let bare = value
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .unwrap_or(value);
    bare.parse::<std::net::IpAddr>()
        .map(|a| a.to_string())
        .map_err(|_| format!("{value:?} is not an IP address to listen on"))
}

/// SRT_LATENCY_MS: 20 ms (a LAN) to 8000 ms (SRT's own ceiling is higher,
/// but past that the feed is seconds behind for nothing).
pub(super) fn parse_srt_latency(value: &str) -> Result<Duration, String> {
    match value.parse::<u64>() {
        Ok(ms) if (20..=8000).contains(&ms) => Ok(Duration::from_millis(ms)),
        _ => Err(format!(
            "{value:?} is not a number of milliseconds from 20 to 8000"
        )),
    }
}
