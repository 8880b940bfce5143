//! A private nginx with the RTMP module, started on demand.
//!
//! [`PrivateNginx`] writes its own configuration into a temporary directory
//! and runs nginx in the foreground (`daemon off; master_process off;`), so
//! the process is a plain child of ours: no pid file games, no system service,
//! nothing outside the temporary directory is written. It is used by relay's
//! built-in demo (`relay demo`), its benchmark and its integration tests,
//! which need a real RTMP server to publish to and to play from.
//!
//! The server has two live applications, `live` (where a streamer publishes)
//! and `out` (where a demo or test points relay's output), and an HTTP server
//! on loopback with the statistics page at `/rtmp_stat` and the control
//! module at `/control` (for example `/control/drop/publisher?app=live&name=s`
//! makes nginx hang up on a publisher, as a platform would).
//!
//! Behaviour of nginx-rtmp worth knowing (module 1.1.4, nginx 1.22):
//! * `idle_streams` is on by default: a player may connect to a stream that has
//!   no publisher and simply waits; when the publisher leaves, players stay
//!   connected and receive the next publisher's data, whose timestamps start
//!   again from zero.
//! * The `rtmp{}` block has its own `access_log`, whose default is the
//!   compiled-in `/var/log/nginx/access.log`; it is switched off here, or a
//!   non-root user could not start the server.
//! * With `on_publish URL`, nginx POSTs a form (HTTP/1.0) before it accepts
//!   a publisher: `app`, `name` (without the query), `addr`, `clientid`,
//!   `call=publish`, `tcurl`, … and the query arguments of the publisher's
//!   URL (`NAME?key=K` gives `name=NAME&…&key=K`). A 2xx answer accepts, a
//!   3xx renames the stream, anything else or no answer refuses. At log
//!   level `info` nginx writes those arguments (the publish key) into its
//!   error log; this private one does, the packaged one logs `warn` only.
//! * In single-process mode SIGTERM is nginx's fast shutdown (connections are
//!   closed at once) while SIGQUIT would wait for every RTMP session to end,
//!   which may be never; [`PrivateNginx::stop`] therefore uses SIGTERM.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// Where Debian's `libnginx-mod-rtmp` installs the RTMP module.
pub const RTMP_MODULE_PATH: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";

/// How long [`PrivateNginx::start`] waits for nginx to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stop waits after SIGTERM before it sends SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// How to run a [`PrivateNginx`].
#[derive(Debug, Clone)]
pub struct NginxOptions {
    /// Addresses the RTMP server listens on, all with the same port.
    /// Default: `[127.0.0.1]`. An unspecified address (`0.0.0.0`, `::`) listens
    /// everywhere and is reached through loopback.
    pub listen: Vec<IpAddr>,
    /// RTMP port; `None` picks a free one.
    pub rtmp_port: Option<u16>,
    /// Port of the HTTP server (statistics and control, on 127.0.0.1 only);
    /// `None` picks a free one.
    pub http_port: Option<u16>,
    /// The nginx executable. Default: `nginx` (looked up in `PATH`).
    pub nginx_bin: PathBuf,
    /// The RTMP module to load. Default: [`RTMP_MODULE_PATH`].
    pub rtmp_module: PathBuf,
    /// An `on_publish` URL for the `live` application (relay's publish
    /// check, `http://127.0.0.1:PORT/on_publish`). Default: none, every
    /// publisher is accepted.
    pub on_publish: Option<String>,
    /// The `out` application refuses every publisher (`deny publish all`),
    /// as a platform refuses a revoked stream key. Default: false.
    pub deny_publish_out: bool,
}

impl Default for NginxOptions {
    fn default() -> Self {
        NginxOptions {
            listen: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            rtmp_port: None,
            http_port: None,
            nginx_bin: PathBuf::from("nginx"),
            rtmp_module: PathBuf::from(RTMP_MODULE_PATH),
            on_publish: None,
            deny_publish_out: false,
        }
    }
}

/// A running nginx-rtmp that belongs to this process.
///
/// It owns a temporary directory (configuration, `error.log`, nginx's own
/// stderr in `nginx.stderr`, pid file, temp paths) and the nginx child.
/// Dropping it kills nginx (SIGTERM, then SIGKILL after a grace period),
/// reaps it and removes the directory; [`stop`](Self::stop) does the same
/// without blocking the async runtime.
#[derive(Debug)]
pub struct PrivateNginx {
    dir: tempfile::TempDir,
    opts: NginxOptions,
    rtmp_port: u16,
    http_port: u16,
    child: Option<Child>,
    /// Length of error.log when nginx was last launched: diagnostics show
    /// only what this launch wrote.
    log_offset: usize,
}

impl PrivateNginx {
    /// Writes the configuration and starts nginx, then waits until both the
    /// RTMP and the HTTP port accept TCP connections.
    ///
    /// Fails, with the content of nginx's error log, if nginx exits or is not
    /// up within 10 seconds. A free port is found by binding port 0, which
    /// leaves a small race with other programs: if nginx then reports
    /// "Address already in use" for a port picked here, the start is retried
    /// once with new ports.
    pub async fn start(opts: NginxOptions) -> anyhow::Result<PrivateNginx> {
        if opts.listen.is_empty() {
            bail!("NginxOptions.listen is empty: nginx needs an address to listen on");
        }
        if !opts.rtmp_module.exists() {
            bail!(
                "the nginx RTMP module {} does not exist (Debian package libnginx-mod-rtmp)",
                opts.rtmp_module.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("relay-nginx-")
            .tempdir()
            .context("creating the private nginx directory")?;
        let (rtmp_port, http_port) = choose_ports(&opts)?;
        let mut nginx = PrivateNginx {
            dir,
            opts,
            rtmp_port,
            http_port,
            child: None,
            log_offset: 0,
        };
        match nginx.launch().await {
            Ok(()) => Ok(nginx),
            Err(e) if busy_port(&e).is_some_and(|p| nginx.picked_port(p)) => {
                tracing::debug!("private nginx: a port was taken meanwhile, retrying: {e:#}");
                nginx.kill_and_reap_blocking();
                let (rtmp_port, http_port) = choose_ports(&nginx.opts)?;
                nginx.rtmp_port = rtmp_port;
                nginx.http_port = http_port;
                nginx.launch().await?;
                Ok(nginx)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether `port` was picked here rather than fixed by the options.
    fn picked_port(&self, port: u16) -> bool {
        (self.opts.rtmp_port.is_none() && port == self.rtmp_port)
            || (self.opts.http_port.is_none() && port == self.http_port)
    }

    /// The RTMP port (the same on every listen address).
    pub fn rtmp_port(&self) -> u16 {
        self.rtmp_port
    }

    /// The HTTP port (statistics page and control module, on 127.0.0.1).
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// `rtmp://ADDR:PORT/app/stream` on the first listen address, which is
    /// `127.0.0.1` by default (an unspecified address becomes loopback).
    pub fn rtmp_url(&self, app: &str, stream: &str) -> String {
        self.rtmp_url_on(self.opts.listen[0], app, stream)
    }

    /// `rtmp://ADDR:PORT/app/stream` for a given address (one nginx listens
    /// on, such as a network namespace's host-side address).
    pub fn rtmp_url_on(&self, addr: IpAddr, app: &str, stream: &str) -> String {
        let addr = SocketAddr::new(reachable(addr), self.rtmp_port);
        format!("rtmp://{addr}/{app}/{stream}")
    }

    /// `http://127.0.0.1:HTTP/rtmp_stat`, nginx-rtmp's XML statistics.
    pub fn stat_url(&self) -> String {
        format!("http://127.0.0.1:{}/rtmp_stat", self.http_port)
    }

    /// `http://127.0.0.1:HTTP/control`, the base of nginx-rtmp's control
    /// module (`/drop/publisher?app=APP&name=STREAM`, `/drop/client?...`).
    pub fn control_url(&self) -> String {
        format!("http://127.0.0.1:{}/control", self.http_port)
    }

    /// The private directory (configuration, logs, pid file, temp paths).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id of the running nginx, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// The content of nginx's error log (empty if it cannot be read).
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir().join("error.log")).unwrap_or_default()
    }

    /// Stops nginx (SIGTERM, SIGKILL after 5 s), waits for it to exit and
    /// removes the private directory.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    /// Stops nginx and starts it again with the same configuration, on the
    /// same ports. Every RTMP session is cut; clients must reconnect.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.shutdown().await;
        // The listening sockets use SO_REUSEADDR, so the ports are free again
        // at once; still allow a moment in case another program grabbed one.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match self.launch().await {
                Ok(()) => return Ok(()),
                Err(e) if busy_port(&e).is_some() && Instant::now() < deadline => {
                    self.kill_and_reap_blocking();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e.context("restarting the private nginx")),
            }
        }
    }

    async fn shutdown(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        if tokio::time::timeout(STOP_TIMEOUT, child.wait())
            .await
            .is_err()
        {
            tracing::warn!("private nginx did not stop within {STOP_TIMEOUT:?}; killing it");
            let _ = child.kill().await;
        }
    }

    /// Writes the configuration, spawns nginx and waits until it serves.
    async fn launch(&mut self) -> anyhow::Result<()> {
        let dir = self.dir().to_path_buf();
        let _ = std::fs::remove_file(dir.join("nginx.pid"));
        self.log_offset = self.error_log().len();
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, self.config_text())
            .with_context(|| format!("writing {}", conf.display()))?;
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("nginx.stderr"))
            .context("creating nginx.stderr")?;
        let mut prefix = dir.clone().into_os_string();
        prefix.push("/");
        let child = Command::new(&self.opts.nginx_bin)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(stderr.try_clone().context("duplicating a file handle")?)
            .stderr(stderr)
            // Its own process group: a Ctrl-C meant for relay must not reach
            // nginx before relay has finished with it.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("running {}", self.opts.nginx_bin.display()))?;
        self.child = Some(child);
        self.wait_until_serving().await
    }

    async fn wait_until_serving(&mut self) -> anyhow::Result<()> {
        let mut targets: Vec<SocketAddr> = self
            .opts
            .listen
            .iter()
            .map(|a| SocketAddr::new(reachable(*a), self.rtmp_port))
            .collect();
        targets.push(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            self.http_port,
        ));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("nginx was just spawned");
            if let Some(status) = child.try_wait().context("waiting for nginx")? {
                self.child = None;
                return Err(anyhow!(
                    "nginx exited during start-up ({status}){}",
                    self.diagnostics()
                ));
            }
            // nginx writes its pid file only once every listening socket is
            // bound; until then another program could be the one answering
            // on a port (nginx keeps retrying a busy port for 2.5 s).
            let child_pid = child.id().unwrap_or(0);
            let pid_file =
                std::fs::read_to_string(self.dir().join("nginx.pid")).unwrap_or_default();
            let mut all_up = pid_file.trim().parse::<u32>().ok() == Some(child_pid);
            for target in targets.iter().take_while(|_| all_up) {
                let connect = tokio::net::TcpStream::connect(*target);
                match tokio::time::timeout(Duration::from_millis(500), connect).await {
                    Ok(Ok(_stream)) => {}
                    _ => {
                        all_up = false;
                        break;
                    }
                }
            }
            if all_up {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let e = anyhow!(
                    "nginx did not accept connections on {targets:?} within {START_TIMEOUT:?}{}",
                    self.diagnostics()
                );
                self.kill_and_reap_blocking();
                return Err(e);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn diagnostics(&self) -> String {
        let mut s = String::new();
        let log = self.error_log();
        let new_part = log.get(self.log_offset..).unwrap_or(&log);
        let _ = write!(
            s,
            "\n--- {}/error.log ---\n{}",
            self.dir().display(),
            tail(new_part, 40)
        );
        let stderr = std::fs::read_to_string(self.dir().join("nginx.stderr")).unwrap_or_default();
        if !stderr.trim().is_empty() {
            let _ = write!(s, "\n--- nginx stderr ---\n{}", tail(&stderr, 20));
        }
        s
    }

    /// The nginx configuration for this instance.
    fn config_text(&self) -> String {
        let dir = self.dir().display().to_string();
        let mut listen = String::new();
        for addr in &self.opts.listen {
            let sa = SocketAddr::new(*addr, self.rtmp_port);
            let _ = writeln!(listen, "        listen {sa};");
        }
        format!(
            r#"# Written by relay for a private nginx-rtmp; removed when it stops.
load_module {module};
daemon off;
master_process off;
worker_processes 1;
error_log {dir}/error.log info;
pid {dir}/nginx.pid;

events {{
    worker_connections 256;
}}

rtmp {{
    access_log off;
    server {{
{listen}        chunk_size 4096;
        application live {{
            live on;
            record off;
            wait_video on;
{on_publish}        }}
        application out {{
            live on;
            record off;
{deny_publish_out}        }}
    }}
}}

http {{
    access_log off;
    client_body_temp_path {dir}/client_body_temp;
    proxy_temp_path {dir}/proxy_temp;
    fastcgi_temp_path {dir}/fastcgi_temp;
    uwsgi_temp_path {dir}/uwsgi_temp;
    scgi_temp_path {dir}/scgi_temp;
    server {{
        listen 127.0.0.1:{http};
        location /rtmp_stat {{
            rtmp_stat all;
        }}
        location /control {{
            rtmp_control all;
        }}
    }}
}}
"#,
            module = self.opts.rtmp_module.display(),
            http = self.http_port,
            on_publish = self
                .opts
                .on_publish
                .as_ref()
                .map(|url| format!(
                    "            on_publish {url};\n            on_publish_done {url};\n"
                ))
                .unwrap_or_default(),
            deny_publish_out = if self.opts.deny_publish_out {
                "            deny publish all;\n"
            } else {
                ""
            },
        )
    }

    /// SIGTERM, a grace period, SIGKILL; always reaps. Blocks the thread
    /// briefly, which is acceptable in `Drop` and on error paths.
    fn kill_and_reap_blocking(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        let _ = child.start_kill();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }
}

impl Drop for PrivateNginx {
    fn drop(&mut self) {
        self.kill_and_reap_blocking();
    }
}

/// A free TCP port on 127.0.0.1 (bound and released again: another program
/// may take it before it is used).
pub fn free_tcp_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// A free UDP port on 127.0.0.1 (bound and released again), for an SRT
/// listener.
pub fn free_udp_port() -> std::io::Result<u16> {
    Ok(std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// Picks the ports not fixed in `opts`. The RTMP port must be free on every
/// listen address; the two ports differ because both are held while chosen.
fn choose_ports(opts: &NginxOptions) -> anyhow::Result<(u16, u16)> {
    let mut held = Vec::new();
    let rtmp_port = match opts.rtmp_port {
        Some(p) => p,
        None => 'search: {
            for _ in 0..20 {
                let first = TcpListener::bind((opts.listen[0], 0))
                    .with_context(|| format!("binding {} to find a free port", opts.listen[0]))?;
                let port = first.local_addr()?.port();
                let others: Result<Vec<_>, _> = opts.listen[1..]
                    .iter()
                    .map(|a| TcpListener::bind((*a, port)))
                    .collect();
                if let Ok(others) = others {
                    held.push(first);
                    held.extend(others);
                    break 'search port;
                }
            }
            bail!("found no port free on all of {:?}", opts.listen);
        }
    };
    let http_port = match opts.http_port {
        Some(p) => p,
        None => {
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .context("binding 127.0.0.1 to find a free port")?;
            l.local_addr()?.port()
        }
    };
    drop(held);
    if rtmp_port == http_port {
        bail!("the RTMP and HTTP ports are both {rtmp_port}");
    }
    Ok((rtmp_port, http_port))
}

/// The address to connect to for a listen address: unspecified becomes
/// loopback of the same family.
fn reachable(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        a => a,
    }
}

/// The port of nginx's `bind() to ADDR:PORT failed (98: Address already in
/// use)` in an error from a failed start.
fn busy_port(e: &anyhow::Error) -> Option<u16> {
    let text = format!("{e:#}");
    text.lines().find_map(|line| {
        let rest = &line[line.find("bind() to ")? + "bind() to ".len()..];
        let (addr, reason) = rest.split_once(" failed")?;
        if !reason.contains("Address already in use") {
            return None;
        }
        addr.rsplit(':').next()?.parse().ok()
    })
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_port_is_read_from_the_error_log() {
        let e = anyhow!(
            "nginx exited\n2026/11/24 02:09:57 [emerg] 3027#3027: bind() to \
             [::1]:21990 failed (98: Address already in use)\n"
        );
        assert_eq!(busy_port(&e), Some(21990));
        assert_eq!(
            busy_port(&anyhow!(
                "bind() to 1.2.3.4:5 failed (13: Permission denied)"
            )),
            None
        );
    }

    #[test]
    fn config_has_one_listen_line_per_address_and_private_paths() {
        let nginx = PrivateNginx {
            dir: tempfile::tempdir().unwrap(),
            opts: NginxOptions {
                listen: vec![
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    "198.51.100.1".parse().unwrap(),
                    IpAddr::V6(Ipv6Addr::LOCALHOST),
                ],
                ..NginxOptions::default()
            },
            rtmp_port: 1935,
            http_port: 8080,
            child: None,
            log_offset: 0,
        };
        let text = nginx.config_text();
        assert!(text.contains("listen 127.0.0.1:1935;"));
        assert!(text.contains("listen 198.51.100.1:1935;"));
        assert!(text.contains("listen [::1]:1935;"));
        assert!(text.contains("listen 127.0.0.1:8080;"));
        assert!(!text.contains("on_publish"));
        assert!(!text.contains("deny publish"));
        let dir = nginx.dir().display().to_string();
        for line in text
            .lines()
            .filter(|l| l.contains("_path") || l.contains("pid "))
        {
            assert!(line.contains(&dir), "not private: {line}");
        }
        assert_eq!(
            nginx.rtmp_url_on("0.0.0.0".parse().unwrap(), "live", "s"),
            "rtmp://127.0.0.1:1935/live/s"
        );
        assert_eq!(
            nginx.rtmp_url_on(IpAddr::V6(Ipv6Addr::LOCALHOST), "out", "x"),
            "rtmp://[::1]:1935/out/x"
        );
    }
}
