//! Values that must stay out of logs, and the masking of URLs that may carry
//! them.

use std::fmt;

/// A value that must not end up in logs: `Debug` and `Display` print `****`
/// (or `<empty>`, which is worth knowing and reveals nothing).
#[derive(Clone, Default, PartialEq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The real value; only for the places that must hand it on (FFmpeg's argv).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "<empty>" } else { "****" })
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The destination as FFmpeg gets it: `url` goes on its command line,
/// `stream_name` (the stream key) reaches it through a preset file
/// (`-fpre`) read from a pipe.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputTarget {
    pub url: String,
    pub stream_name: Option<Secret>,
}

impl OutputTarget {
    /// Whether `url` still holds something secret: a user name and password
    /// (`rtmp://user:pass@host/...`) or a query after the application name,
    /// which FFmpeg can only take on its command line.
    pub fn url_has_secret(&self) -> bool {
        let (scheme_authority, path) = split_path(&self.url);
        scheme_authority.contains('@') || path.contains('?')
    }
}

/// Splits `scheme://authority/path?query` into `scheme://authority` and
/// `/path?query` (empty when there is no path).
pub(crate) fn split_path(url: &str) -> (&str, &str) {
    let start = url.find("://").map_or(0, |i| i + 3);
    match url[start..].find('/') {
        Some(i) => url.split_at(start + i),
        None => (url, ""),
    }
}

/// Hides what may be secret in an RTMP URL: a password in the user-info part
/// and, when `key_in_path` (no separate KICK_KEY, so the URL is used as is),
/// everything after the application name, where platforms put the key.
pub(crate) fn mask_url(url: &str, key_in_path: bool) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "****".to_owned();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("****@{host}"),
        None => authority.to_owned(),
    };
    let path = if key_in_path {
        // path is "" or "/app[...]"; keep "/app" and mask the rest.
        let after_slash = path.get(1..).unwrap_or("");
        match after_slash.find(['/', '?']) {
            Some(i) => format!("/{}{}****", &after_slash[..i], &after_slash[i..=i]),
            None => path.to_owned(),
        }
    } else {
        path.to_owned()
    };
    format!("{scheme}://{authority}{path}")
}
