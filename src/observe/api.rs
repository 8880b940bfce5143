//! The control socket: how `relay status` and `relay switch` talk to a
//! running daemon.
//!
//! The daemon listens on a Unix socket, `<runtime dir>/<instance>.sock`
//! (see [`runtime_dir`]), mode 0660 so that members of group `relay` can
//! operate it without root. The protocol is one JSON [`Request`] line in,
//! one JSON [`Reply`] line out, then the connection closes: easy to drive
//! from a shell (`socat - UNIX:/run/relay/NAME.sock`) and nothing to keep
//! in sync.
//!
//! The socket task never touches the daemon's state: it hands each request
//! to the daemon's event loop with a oneshot for the reply, so every change
//! of what is on air still goes through the policy (`policy/`).
//!
//! # `relay status --json`
//!
//! The reply to [`Request::Status`] is a [`Reply::Status`] whose fields are
//! those of [`Status`]; they are a stable interface for scripts and
//! monitoring. Fields may be added; existing ones keep their name and meaning.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn, Instrument};

/// Where the socket lives when neither systemd nor the environment says.
pub const DEFAULT_RUNTIME_DIR: &str = "/run/relay";
/// The group allowed to operate relay in production (created by the package).
pub const CONTROL_GROUP: &str = "relay";
/// How long a client may take to send its request, and how long the CLI
/// waits for the daemon's answer. The daemon answers from its event loop,
/// which never blocks for long; a zmq switch takes at most a few seconds.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A request is one short line; anything longer is not a client of ours.
const MAX_REQUEST: usize = 4096;

/// What a client asks the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Report what is on air and how the children are doing.
    Status,
    /// Override what is on air (`live`, `offline`) or end an override (`auto`).
    Switch { to: Mode },
}

/// The operator's choice for [`Request::Switch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Keep the live feed on air until `auto`, or until its frames stop.
    Live,
    /// Keep the offline video on air until `auto`, whatever publishes.
    Offline,
    /// Let the daemon decide again, from publishers and live frames.
    Auto,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Live => "live",
            Mode::Offline => "offline",
            Mode::Auto => "auto",
        }
    }
}

/// What the daemon answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
// One reply per request over a socket: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Reply {
    /// The daemon's state, for [`Request::Status`].
    Status(Status),
    /// The switch was done; `state` is the state after it.
    Switched { state: StateName, message: String },
    /// The switch was not done, and why (e.g. nobody is live).
    Refused { message: String },
    /// The request could not be understood.
    Error { message: String },
}

/// What is on air, as `relay status` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateName {
    /// The offline video is on air and nobody allowed is sending frames.
    Offline,
    /// An allowed publisher's frames flow; the switch follows within a
    /// second, or after LIVE_STABLE_SECS for a publisher returning soon
    /// after a failover (`held_off_air` says so).
    GoingLive,
    /// The live feed is on air.
    Live,
    /// The live feed is on air by `relay switch live`.
    ManualLive,
    /// The offline video is on air by `relay switch offline`.
    ManualOffline,
}

impl StateName {
    /// Words for people: `going live`, `manual offline`.
    pub fn text(self) -> &'static str {
        match self {
            StateName::Offline => "offline",
            StateName::GoingLive => "going live",
            StateName::Live => "live",
            StateName::ManualLive => "manual live",
            StateName::ManualOffline => "manual offline",
        }
    }
}

/// The reply to [`Request::Status`]; the JSON of `relay status --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The instance name (`relay@NAME`).
    pub instance: String,
    /// What is on air; see [`StateName`].
    pub state: StateName,
    /// The publisher on the stat page: its address, or `null` if none.
    pub publisher: Option<String>,
    /// Whether ALLOWED_PUBLISHERS accepts that publisher; `null` if none.
    pub publisher_allowed: Option<bool>,
    /// The live feed's bitrate in bits/s (the source's on air, else the
    /// first one's with a publisher): into nginx for RTMP, from `bytes_in`
    /// deltas; as relay received it for an SRT caller. `null` when unknown
    /// or nobody publishes.
    pub live_bitrate_bps: Option<u64>,
    /// Seconds since the output FFmpeg started sending; `null` while it
    /// starts or restarts.
    pub output_uptime_s: Option<u64>,
    /// How many times the output FFmpeg was restarted (each one is a
    /// reconnect to the platform).
    pub output_restarts: u64,
    /// How many times an ingest FFmpeg exited on its own and was restarted.
    pub ingest_restarts: u64,
    /// The last change of what is on air; `null` before the first.
    pub last_switch: Option<LastSwitch>,
    /// Live frames sent to the output since start.
    pub live_frames: u64,
    /// Filler frames (the last live frame, or the offline frame) sent since start.
    pub filler_frames: u64,
    /// Clock ticks dropped because the output did not keep up.
    pub dropped_ticks: u64,
    /// Times a late live frame held the last picture instead of failing
    /// over, because the publisher's data was still arriving at a starved
    /// ingest (for at most 3 s each).
    #[serde(default)]
    pub starved_holds: u64,
    /// Why an allowed publisher whose frames flow is kept off air for now
    /// (LIVE_STABLE_SECS, LOW_BITRATE_KBPS); `null` if it is not.
    #[serde(default)]
    pub held_off_air: Option<String>,
    /// Why, as a stable word, when `held_off_air` is set: `unstable`
    /// (LIVE_STABLE_SECS) or `low_bitrate` (LOW_BITRATE_KBPS).
    #[serde(default)]
    pub held_kind: Option<String>,
    /// The switching policy in effect (it changes on reload).
    #[serde(default)]
    pub policy: Policy,
    /// The output FFmpeg's pid; `null` while it restarts.
    #[serde(default)]
    pub output_pid: Option<u32>,
    /// The current ingest FFmpeg's pid (of the source on air, else of the
    /// first in LIVE_SOURCES); `null` when none runs.
    #[serde(default)]
    pub ingest_pid: Option<u32>,
    /// The live source on air: `"rtmp"`, `"srt"`; `null` while offline.
    #[serde(default)]
    pub source: Option<String>,
    /// How many `systemctl reload`s (SIGHUP) this process has handled.
    #[serde(default)]
    pub reloads: u64,
    /// The last reload and what it did; `null` before the first.
    #[serde(default)]
    pub last_reload: Option<LastReload>,
    /// Why the output FFmpeg last stopped; `null` if it never did.
    #[serde(default)]
    pub last_output_exit: Option<OutputExit>,
    /// Whether the last poll of nginx's stat page got an answer.
    #[serde(default = "yes")]
    pub stat_page_ok: bool,
    /// Switches the output's zmq filter did not confirm (each is retried
    /// once, then the output is restarted on the selection).
    #[serde(default)]
    pub switch_failures: u64,
    /// Every destination the one encode goes to, in DESTINATIONS' order.
    #[serde(default)]
    pub destinations: Vec<DestinationStatus>,
    /// The offline video's normalised copy; `null` when relay keeps none
    /// (`RELAY_OFFLINE_CACHE=off`).
    #[serde(default)]
    pub offline_cache: Option<OfflineCache>,
}

/// The offline video's copy normalised once to the output's format
/// (ARCHITECTURE.md, "The offline video's cached copy").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfflineCache {
    /// `building`, `ready` (the offline source reads it), `failed` (it
    /// normalises on every loop) or `off` (not cached: see `detail`).
    pub state: String,
    /// Normalising runs this process started: a reload that needs no new
    /// copy leaves it as it was.
    pub generation: u64,
    /// How the picture is stored: `rawvideo` or `h264`.
    #[serde(default)]
    pub codec: Option<String>,
    /// Why it failed or is off; empty otherwise.
    #[serde(default)]
    pub detail: String,
}

/// One destination's connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DestinationStatus {
    /// Its name in DESTINATIONS.
    pub name: String,
    /// Where it goes, the stream key masked.
    pub url: String,
    /// Whether its pusher is connected and sending.
    pub up: bool,
    /// Seconds it has been sending; `null` while it is down.
    pub uptime_s: Option<u64>,
    /// How many times its connection was made again.
    pub reconnects: u64,
    /// Why it last stopped; `null` if it never did.
    pub last_error: Option<String>,
    /// What it sent over the last seconds, in bits/s; `null` while down.
    pub bitrate_bps: Option<u64>,
    /// Its pusher FFmpeg's pid; `null` while it restarts.
    pub pid: Option<u32>,
    /// Whole GOPs dropped because it fell behind.
    pub dropped_gops: u64,
}

fn yes() -> bool {
    true
}

/// Why the output FFmpeg stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputExit {
    /// `exited` (by itself: the platform closed the connection, a crash),
    /// `stalled` (no progress for 15 s), `restart_requested` (its zmq
    /// control did not answer) or `spawn_failed`.
    pub kind: String,
    /// Whether it had been streaming: its restart is then a reconnect to
    /// the platform; otherwise it is still trying to get through.
    pub was_streaming: bool,
    /// Seconds since it stopped.
    pub seconds_ago: u64,
    /// FFmpeg's exit status and last lines, or why it was stopped.
    pub detail: String,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastReload {
    /// `unchanged`, `applied` (settings that apply at once, no restart),
    /// `new_offline_video` (only the offline source restarted),
    /// `restarted` (the pipeline restarted, the output reconnected once)
    /// or `rejected` (the running configuration stays).
    pub outcome: String,
    /// Seconds since the reload.
    pub seconds_ago: u64,
    /// Why a reload was rejected; empty otherwise.
    #[serde(default)]
    pub detail: String,
}

/// The switching policy in effect: OFFLINE_AFTER_MS, LIVE_STABLE_SECS,
/// LOW_BITRATE_KBPS and LOW_BITRATE_SECS (`null` when off).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub offline_after_ms: u64,
    pub live_stable_s: f64,
    pub low_bitrate_kbps: Option<u64>,
    pub low_bitrate_s: Option<f64>,
}

/// One change of what is on air.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastSwitch {
    /// `live` or `offline`.
    pub to: String,
    /// Seconds since the switch.
    pub seconds_ago: u64,
    /// Why, as logged (e.g. `no live frame for 500 ms`).
    pub reason: String,
    /// Why, as a stable word for scripts and tests: `publisher_live`,
    /// `publisher_stable`, `bitrate_recovered`, `frames_stopped`,
    /// `publisher_stopped`, `low_bitrate`, `publisher_refused` or `manual`.
    #[serde(default)]
    pub kind: String,
}

/// A request on its way to the daemon's event loop, with where to answer.
pub type Call = (Request, oneshot::Sender<Reply>);

/// The runtime directory: `$RUNTIME_DIRECTORY` (systemd's
/// `RuntimeDirectory=`, first entry), else `$RELAY_RUNTIME_DIR`, else
/// `/run/relay`.
pub fn runtime_dir() -> PathBuf {
    systemd_dir("RUNTIME_DIRECTORY")
        .or_else(|| {
            std::env::var_os("RELAY_RUNTIME_DIR")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUNTIME_DIR))
}

/// The first directory systemd passes in `var` (`RUNTIME_DIRECTORY`,
/// `CACHE_DIRECTORY`, …: several entries are joined with ':').
pub fn systemd_dir(var: &str) -> Option<PathBuf> {
    let dirs = std::env::var_os(var)?;
    let first = dirs.to_string_lossy().split(':').next().map(PathBuf::from);
    first.filter(|d| !d.as_os_str().is_empty())
}

/// The control socket of instance `name` in the runtime directory.
pub fn socket_path(name: &str) -> PathBuf {
    runtime_dir().join(format!("{name}.sock"))
}

/// A bound control socket; removes its file when dropped, if the file is
/// still ours (another relay may have replaced it since).
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
    inode: (u64, u64),
}

impl ControlSocket {
    /// Binds `path`: creates the directory if needed, replaces a stale
    /// socket (one nobody answers on), refuses to steal one that answers.
    pub async fn bind(path: &Path) -> io::Result<ControlSocket> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "exists and is not a socket",
                ));
            }
            if UnixStream::connect(path).await.is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another relay answers on it (same instance name?)",
                ));
            }
            // Left by a relay that was killed: nobody listens any more.
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        // Connecting needs write permission, which the umask normally
        // leaves to the owner only: until this widens it, nobody else can.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
        give_to_control_group(path);
        let meta = std::fs::metadata(path)?;
        Ok(ControlSocket {
            listener,
            path: path.to_owned(),
            inode: (meta.dev(), meta.ino()),
        })
    }

    /// Accepts connections until the task is aborted (the daemon does so
    /// when it stops, which also removes the file); each request goes to
    /// `daemon` and its reply back to the client.
    pub async fn serve(self, daemon: mpsc::Sender<Call>) {
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(err) => {
                    warn!(%err, "control socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let to_daemon = daemon.clone();
            tokio::spawn(
                async move {
                    if let Err(err) = handle(stream, to_daemon).await {
                        debug!(%err, "control connection ended");
                    }
                }
                .instrument(tracing::debug_span!("control")),
            );
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.inode);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// In production the socket belongs to group `relay` so that operators in
/// it need no root. Running as root, the socket would otherwise be root's.
/// Best effort: without the group (tests, development) it stays as it is.
fn give_to_control_group(path: &Path) {
    let Ok(Some(group)) = nix::unistd::Group::from_name(CONTROL_GROUP) else {
        return;
    };
    if let Err(err) = nix::unistd::chown(path, None, Some(group.gid)) {
        debug!(%err, "could not give the control socket to group {CONTROL_GROUP}");
    }
}

/// One connection: one request line, one reply line.
async fn handle(stream: UnixStream, daemon: mpsc::Sender<Call>) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST as u64);
    tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request"))??;
    let reply = match serde_json::from_str::<Request>(line.trim()) {
        Ok(request) => {
            let (tx, rx) = oneshot::channel();
            if daemon.send((request.clone(), tx)).await.is_err() {
                Reply::Error {
                    message: "relay is stopping".to_string(),
                }
            } else {
                rx.await.unwrap_or_else(|_| Reply::Error {
                    message: "relay is stopping".to_string(),
                })
            }
        }
        Err(err) => Reply::Error {
            message: format!("bad request: {err}"),
        },
    };
    if let Reply::Switched { message, .. } | Reply::Refused { message } = &reply {
        info!("control: {message}");
    }
    let mut text = serde_json::to_string(&reply).map_err(io::Error::other)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    write.shutdown().await
}

/// Why a client could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No socket, or nobody listening on it: the daemon does not run.
    #[error("no control socket at {}", path.display())]
    NotRunning { path: PathBuf },
    #[error("control socket {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("control socket {}: no answer within {} s", path.display(), REQUEST_TIMEOUT.as_secs())]
    Timeout { path: PathBuf },
    #[error("control socket {}: unexpected answer {text:?}: {source}", path.display())]
    BadReply {
        path: PathBuf,
        text: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Sends one request to the daemon listening on `path` and returns its reply.
pub async fn call(path: &Path, request: &Request) -> Result<Reply, ClientError> {
    let io_err = |source: io::Error| ClientError::Io {
        path: path.to_owned(),
        source,
    };
    let mut stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(err)
            if matches!(
                err.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ClientError::NotRunning {
                path: path.to_owned(),
            })
        }
        Err(err) => return Err(io_err(err)),
    };
    let exchange = async {
        let mut text = serde_json::to_string(request).map_err(io::Error::other)?;
        text.push('\n');
        stream.write_all(text.as_bytes()).await?;
        let mut line = String::new();
        BufReader::new(&mut stream).read_line(&mut line).await?;
        Ok::<_, io::Error>(line)
    };
    let line = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| ClientError::Timeout {
            path: path.to_owned(),
        })?
        .map_err(io_err)?;
    serde_json::from_str(line.trim()).map_err(|source| ClientError::BadReply {
        path: path.to_owned(),
        text: line.trim().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_object_per_line() {
        let text = serde_json::to_string(&Request::Switch { to: Mode::Offline }).unwrap();
        assert_eq!(text, r#"{"request":"switch","to":"offline"}"#);
        let back: Request = serde_json::from_str(r#"{"request":"status"}"#).unwrap();
        assert_eq!(back, Request::Status);
        assert!(serde_json::from_str::<Request>(r#"{"request":"reboot"}"#).is_err());
    }

    #[test]
    fn state_names_are_snake_case_in_json_and_words_for_people() {
        let json = serde_json::to_string(&StateName::ManualOffline).unwrap();
        assert_eq!(json, r#""manual_offline""#);
        assert_eq!(StateName::GoingLive.text(), "going live");
    }

    #[tokio::test]
    async fn a_request_reaches_the_daemon_and_its_reply_the_client() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sock");
        let socket = ControlSocket::bind(&path).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        let (tx, mut rx) = mpsc::channel::<Call>(1);
        tokio::spawn(socket.serve(tx));
        tokio::spawn(async move {
            while let Some((request, reply)) = rx.recv().await {
                let _ = reply.send(Reply::Refused {
                    message: format!("{request:?}"),
                });
            }
        });
        let reply = call(&path, &Request::Switch { to: Mode::Live })
            .await
            .unwrap();
        assert_eq!(
            reply,
            Reply::Refused {
                message: "Switch { to: Live }".to_string()
            }
        );
    }

    #[tokio::test]
    async fn garbage_and_huge_lines_get_an_error_reply_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.sock");
        let socket = ControlSocket::bind(&path).await.unwrap();
        let (tx, _rx) = mpsc::channel::<Call>(1);
        tokio::spawn(socket.serve(tx));
        for request in ["reboot\n".to_string(), "x".repeat(1 << 20) + "\n"] {
            let mut stream = UnixStream::connect(&path).await.unwrap();
            // The daemon stops reading after MAX_REQUEST; the rest may not fit.
            let _ = stream.write_all(request.as_bytes()).await;
            let mut line = String::new();
            BufReader::new(&mut stream)
                .read_line(&mut line)
                .await
                .unwrap();
            let reply: Reply = serde_json::from_str(&line).unwrap();
            assert!(
                matches!(&reply, Reply::Error { message } if message.starts_with("bad request")),
                "{reply:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_missing_one_means_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stale.sock");
        assert!(matches!(
            call(&path, &Request::Status).await,
            Err(ClientError::NotRunning { .. })
        ));
        // A socket file nobody listens on, as a killed relay leaves it.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(matches!(
            call(&path, &Request::Status).await,
            Err(ClientError::NotRunning { .. })
        ));
        let socket = ControlSocket::bind(&path).await.unwrap();
        // A second relay with the same name must not steal it.
        assert!(ControlSocket::bind(&path).await.is_err());
        drop(socket);
        assert!(!path.exists(), "the socket file is removed on drop");
    }
}
