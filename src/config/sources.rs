//! The sources a configuration is layered from: the instance's files, one
//! given file, the process environment, or given pairs. Each becomes a
//! [`Layer`] of known keys with text values; later layers win.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use super::env_file::dotenv_layer;
use super::keys::{key, toml_key, Key, KEYS};
use super::ConfigError;

/// Where `RELAY_CONFIG_DIR` points when it is not set.
const DEFAULT_CONFIG_DIR: &str = "/etc/relay";

/// One layer of settings, already reduced to known keys with text values.
pub(super) struct Layer {
    /// Shown in error messages: a file path, or "the environment".
    pub origin: String,
    values: BTreeMap<&'static str, String>,
    /// Keys of destinations other than `kick` (`YOUTUBE_URL`, upper case
    /// whatever the file's spelling): not in the key table, so they are
    /// checked against DESTINATIONS once every layer is read.
    destination_values: BTreeMap<String, String>,
    /// The file it was read from, if any.
    pub file: Option<PathBuf>,
    /// Keys it set that relay ignores ([`super::keys::IGNORED`]), and why.
    pub notices: Vec<String>,
}

// Not derived: the values include the stream key.
impl fmt::Debug for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Layer")
            .field("origin", &self.origin)
            .field("keys", &self.values.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Layer {
    pub fn new(origin: impl Into<String>) -> Layer {
        Layer {
            origin: origin.into(),
            values: BTreeMap::new(),
            destination_values: BTreeMap::new(),
            file: None,
            notices: Vec::new(),
        }
    }

    pub fn from_file(path: &Path) -> Layer {
        let mut layer = Layer::new(path.display().to_string());
        layer.file = Some(path.to_owned());
        layer
    }

    /// Whether it sets a secret key, or a URL with a key or password in it.
    pub fn holds_secret(&self) -> bool {
        let destination_secret = |(name, value): (&String, &String)| match name.strip_suffix("_KEY")
        {
            Some(_) => !value.is_empty(),
            None => super::keys::url_holds_secret(value),
        };
        self.values
            .iter()
            .any(|(name, value)| key(name).is_some_and(|k| k.is_secret_value(value)))
            || self.destination_values.iter().any(destination_secret)
    }

    /// Sets a destination key that is not in the key table (`upper`, e.g.
    /// `YOUTUBE_URL`); empty values mean "not set".
    pub fn set_destination(&mut self, upper: &str, value: &str) {
        let value = value.trim();
        if value.is_empty() {
            self.destination_values.remove(upper);
        } else {
            self.destination_values
                .insert(upper.to_owned(), value.to_owned());
        }
    }

    /// A destination key's value (`upper`, e.g. `YOUTUBE_URL`).
    pub fn get_destination(&self, upper: &str) -> Option<&str> {
        self.destination_values.get(upper).map(String::as_str)
    }

    /// The destination keys it sets.
    pub fn destination_keys(&self) -> impl Iterator<Item = &str> {
        self.destination_values.keys().map(String::as_str)
    }

    /// Empty values mean "not set".
    pub fn set(&mut self, key: &'static Key, value: &str) {
        let value = value.trim();
        if value.is_empty() {
            // A later empty value in the same layer still un-sets an earlier one.
            self.values.remove(key.name);
        } else {
            self.values.insert(key.name, value.to_owned());
        }
    }

    pub fn sets(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    pub fn get(&self, key: &Key) -> Option<&str> {
        self.values.get(key.name).map(String::as_str)
    }
}

/// The configuration directory: `$RELAY_CONFIG_DIR`, else `/etc/relay`.
pub fn config_dir(env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    env("RELAY_CONFIG_DIR")
        .filter(|d| !d.trim().is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_DIR))
}

/// `NAME.toml` then `NAME.env` in the configuration directory.
pub(super) fn instance_layers(
    name: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Layer>, ConfigError> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') || name.contains('\0') {
        return Err(ConfigError::InstanceName(name.to_owned()));
    }
    let dir = config_dir(env);
    let toml_path = dir.join(format!("{name}.toml"));
    let env_path = dir.join(format!("{name}.env"));

    // Order matters: the .env file is layered after (over) the TOML file.
    let mut layers = Vec::new();
    if let Some(text) = read_if_exists(&toml_path)? {
        layers.push(toml_layer(&toml_path, &text)?);
    }
    if let Some(text) = read_if_exists(&env_path)? {
        layers.push(dotenv_layer(&env_path, &text)?);
    }
    if layers.is_empty() {
        return Err(ConfigError::NoConfiguration {
            instance: name.to_owned(),
            toml: toml_path,
            env: env_path,
        });
    }
    Ok(layers)
}

/// A file holding a secret may be readable by its owner and its group
/// (root:relay 0640 is the convention), not by every user.
pub(super) fn refuse_if_world_readable(path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path)
        .map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?
        .permissions()
        .mode();
    if mode & 0o004 != 0 {
        return Err(ConfigError::Exposed {
            path: path.to_owned(),
        });
    }
    Ok(())
}

fn read_if_exists(path: &Path) -> Result<Option<String>, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ConfigError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// `.env.relay1` and `.env` are dotenv files named the Docker setup's way.
fn dotenv_named(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_string_lossy();
    if name == ".env" {
        return Some("env".to_owned());
    }
    name.strip_prefix(".env.").map(str::to_owned)
}

/// The instance a single file configures: its name without the extension,
/// or what follows `.env.` (`.env.relay1` is `relay1`).
pub(super) fn file_instance_name(path: &Path) -> String {
    dotenv_named(path)
        .or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

/// One file, `.toml` or `.env` by its extension, or a dotenv file named
/// the Docker setup's way (`.env`, `.env.relay1`, `.env.example`).
pub(super) fn file_layer(path: &Path) -> Result<Layer, ConfigError> {
    let extension = if dotenv_named(path).is_some() {
        Some("env".to_owned())
    } else {
        path.extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
    };
    let read = || {
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })
    };
    match extension.as_deref() {
        Some("toml") => toml_layer(path, &read()?),
        Some("env") => dotenv_layer(path, &read()?),
        _ => Err(ConfigError::UnsupportedFormat {
            path: path.to_owned(),
        }),
    }
}

/// Process environment variables named exactly like a key; every other
/// variable is ignored, since a daemon's environment is full of them.
pub(super) fn environment_layer(env: &dyn Fn(&str) -> Option<String>) -> Layer {
    let mut layer = Layer::new("the environment");
    for key in &KEYS {
        if let Some(value) = env(key.name) {
            layer.set(key, &value);
        }
    }
    layer
}

/// Adds to the environment's layer the keys of the destinations `names`
/// (other than `kick`, whose keys are in the table): `YOUTUBE_URL`, …
pub(super) fn environment_destinations(
    layer: &mut Layer,
    names: &[String],
    env: &dyn Fn(&str) -> Option<String>,
) {
    for name in names.iter().filter(|n| n.as_str() != super::KICK) {
        for upper in super::keys::destination_keys(name) {
            if let Some(value) = env(&upper) {
                layer.set_destination(&upper, &value);
            }
        }
    }
}

/// Given `KEY=VALUE` pairs; unknown keys are refused as in a `.env` file.
pub(super) fn pairs_layer(pairs: &[(&str, &str)]) -> Result<Layer, ConfigError> {
    let mut layer = Layer::new("the given settings");
    for (name, value) in pairs {
        match key(name) {
            Some(known) => layer.set(known, value),
            None if super::keys::is_destination_key(name) => layer.set_destination(name, value),
            None => return Err(unknown_key(name, &layer.origin, None, KeyCase::Upper)),
        }
    }
    Ok(layer)
}

#[derive(Clone, Copy)]
pub(super) enum KeyCase {
    Lower,
    Upper,
}

pub(super) fn unknown_key(
    name: &str,
    origin: &str,
    line: Option<usize>,
    case: KeyCase,
) -> ConfigError {
    // The most likely mistake with a known name is the wrong case for the format.
    let hint = key(&name.to_ascii_uppercase()).map(|known| match case {
        KeyCase::Lower => format!("keys in TOML files are lower case: {}", known.toml_name()),
        KeyCase::Upper => format!("keys are upper case here: {}", known.name),
    });
    ConfigError::UnknownKey {
        key: name.to_owned(),
        origin: origin.to_owned(),
        line,
        hint,
    }
}

/// A TOML file: a flat table of lower-case keys. Numbers, booleans and
/// dates become text; validation parses them as it would from a `.env` file.
fn toml_layer(path: &Path, text: &str) -> Result<Layer, ConfigError> {
    let table = toml::de::DeTable::parse(text).map_err(|e| ConfigError::Syntax {
        path: path.to_owned(),
        line: None,
        message: toml_error_summary(&e.to_string()),
    })?;
    let mut layer = Layer::from_file(path);
    for (name, value) in table.into_inner() {
        let name = name.into_inner();
        let upper = name.to_ascii_uppercase();
        let destination =
            name == name.to_ascii_lowercase() && super::keys::is_destination_key(&upper);
        let Some(known) = toml_key(&name).filter(|_| !destination) else {
            if let Some(why) = super::keys::ignored(&upper) {
                layer
                    .notices
                    .push(format!("{name} in {}: {why}", layer.origin));
                continue;
            }
            if destination {
                match scalar_text(value.into_inner()) {
                    Ok(text) => layer.set_destination(&upper, &text),
                    Err(_) => {
                        return Err(ConfigError::Invalid {
                            key: upper,
                            problem: "expected a single value".to_owned(),
                            origin: Some(layer.origin.clone()),
                        })
                    }
                }
                continue;
            }
            return Err(unknown_key(&name, &layer.origin, None, KeyCase::Lower));
        };
        let text = match scalar_text(value.into_inner()) {
            Ok(text) => text,
            Err(Scalar::Not(found)) => {
                return Err(ConfigError::Invalid {
                    key: known.name.to_owned(),
                    problem: format!("expected a single value, found {found}"),
                    origin: Some(layer.origin.clone()),
                })
            }
            Err(Scalar::Unreadable(message)) => {
                return Err(ConfigError::Syntax {
                    path: path.to_owned(),
                    line: None,
                    message: toml_error_summary(&message),
                })
            }
        };
        layer.set(known, &text);
    }
    Ok(layer)
}

enum Scalar {
    /// A table or an array.
    Not(&'static str),
    /// A number the TOML grammar accepts but no machine type holds.
    Unreadable(String),
}

/// The text of a scalar, written as Rust writes the number (`5.0` is "5"),
/// which is how these files have always been read.
fn scalar_text(value: toml::de::DeValue<'_>) -> Result<String, Scalar> {
    use toml::de::DeValue;
    match value {
        DeValue::String(text) => Ok(text.into_owned()),
        DeValue::Integer(number) => i64::from_str_radix(number.as_str(), number.radix())
            .map(|n| n.to_string())
            .map_err(|e| Scalar::Unreadable(e.to_string())),
        DeValue::Float(number) => {
            let float: f64 = number
                .as_str()
                .parse()
                .map_err(|e: std::num::ParseFloatError| Scalar::Unreadable(e.to_string()))?;
            if float.is_infinite() && !number.as_str().contains("inf") {
                return Err(Scalar::Unreadable(
                    "floating-point number overflowed".to_owned(),
                ));
            }
            Ok(float.to_string())
        }
        DeValue::Boolean(b) => Ok(b.to_string()),
        DeValue::Datetime(datetime) => Ok(datetime.to_string()),
        DeValue::Table(_) => Err(Scalar::Not("a table")),
        DeValue::Array(_) => Err(Scalar::Not("an array")),
    }
}

/// The TOML parser's message quotes the offending source line, which could
/// be the stream key: keep the position and the description, drop the
/// excerpt.
fn toml_error_summary(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let kept: Vec<&str> = match lines.first() {
        // Header, then a three-line excerpt (gutter, source line, caret).
        Some(first) if first.starts_with("TOML parse error at") => std::iter::once(*first)
            .chain(lines.iter().skip(4).copied())
            .collect(),
        _ => lines,
    };
    let kept: Vec<&str> = kept
        .into_iter()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if kept.is_empty() {
        "invalid TOML".to_owned()
    } else {
        kept.join(": ")
    }
}
