//! The `.env` format, kept to what systemd's `EnvironmentFile=` reads the
//! same way, so one file can serve both.

use std::path::Path;

use super::keys::key;
use super::sources::{unknown_key, KeyCase, Layer};
use super::ConfigError;

/// Parses the `.env` format: `KEY=VALUE` lines, optional `export `, `#`
/// comment lines, blank lines, optional matching quotes around the value.
/// No escapes and no trailing comments: the same file should mean the same
/// thing to systemd's `EnvironmentFile=`.
pub(super) fn dotenv_layer(path: &Path, text: &str) -> Result<Layer, ConfigError> {
    let syntax = |line: usize, message: &str| ConfigError::Syntax {
        path: path.to_owned(),
        line: Some(line),
        message: message.to_owned(),
    };
    let mut layer = Layer::from_file(path);
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (index, raw_line) in text.lines().enumerate() {
        let number = index + 1;
        let line = raw_line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = match line.strip_prefix("export") {
            Some(rest) if rest.starts_with(char::is_whitespace) => rest.trim_start(),
            _ => line,
        };
        // The line's text is never quoted back: it may hold the stream key.
        let Some((name, value)) = line.split_once('=') else {
            return Err(syntax(number, "expected KEY=VALUE but found no '='"));
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(syntax(number, "nothing before '='; expected KEY=VALUE"));
        }
        if !is_identifier(name) {
            return Err(syntax(
                number,
                "the text before '=' is not a key name (letters, digits and '_')",
            ));
        }
        let Some(known) = key(name) else {
            if super::keys::is_destination_key(name) {
                let value = unquote(value.trim())
                    .ok_or_else(|| syntax(number, "the value's opening quote is never closed"))?;
                layer.set_destination(name, value);
                continue;
            }
            if let Some(why) = super::keys::ignored(name) {
                let origin = &layer.origin;
                layer
                    .notices
                    .push(format!("{name} in {origin} (line {number}): {why}"));
                continue;
            }
            return Err(unknown_key(
                name,
                &layer.origin,
                Some(number),
                KeyCase::Upper,
            ));
        };
        let value = unquote(value.trim())
            .ok_or_else(|| syntax(number, "the value's opening quote is never closed"))?;
        layer.set(known, value);
    }
    Ok(layer)
}

fn is_identifier(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Strips one pair of matching surrounding quotes; `None` if a quote opens
/// the value but does not close it.
fn unquote(value: &str) -> Option<&str> {
    for quote in ['"', '\''] {
        if let Some(inner) = value.strip_prefix(quote) {
            return inner.strip_suffix(quote);
        }
    }
    Some(value)
}
