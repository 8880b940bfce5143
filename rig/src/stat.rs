//! nginx-rtmp's statistics page: parsing, and [`SessionCounter`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::task::JoinHandle;

use crate::POLL;

/// nginx-rtmp's `/rtmp_stat` page, the parts tests look at.
#[derive(Debug, Clone, Default)]
pub struct Stat {
    /// nginx's pid: client ids restart when nginx restarts.
    pub nginx_pid: u32,
    pub applications: Vec<StatApp>,
}

#[derive(Debug, Clone, Default)]
pub struct StatApp {
    pub name: String,
    pub streams: Vec<StatStream>,
}

#[derive(Debug, Clone, Default)]
pub struct StatStream {
    pub name: String,
    /// Some client publishes.
    pub publishing: bool,
    pub clients: Vec<StatClient>,
}

#[derive(Debug, Clone, Default)]
pub struct StatClient {
    /// nginx's connection id (unique until nginx restarts).
    pub id: u64,
    pub address: String,
    /// Milliseconds since the client connected.
    pub time_ms: u64,
    pub flashver: String,
    pub publishing: bool,
    pub active: bool,
}

impl Stat {
    /// A stream of an application, if listed.
    pub fn stream(&self, app: &str, stream: &str) -> Option<&StatStream> {
        self.applications
            .iter()
            .find(|a| a.name == app)?
            .streams
            .iter()
            .find(|s| s.name == stream)
    }

    /// The publishing client of a stream, if any.
    pub fn publisher(&self, app: &str, stream: &str) -> Option<&StatClient> {
        self.stream(app, stream)?
            .clients
            .iter()
            .find(|c| c.publishing)
    }

    /// The playing clients of a stream.
    pub fn players(&self, app: &str, stream: &str) -> Vec<&StatClient> {
        self.stream(app, stream)
            .map(|s| s.clients.iter().filter(|c| !c.publishing).collect())
            .unwrap_or_default()
    }
}

/// Parses nginx-rtmp's statistics XML.
pub fn parse_stat(xml: &str) -> anyhow::Result<Stat> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    reader.config_mut().trim_text(true);
    let mut stat = Stat::default();
    let mut path: Vec<String> = Vec::new();
    let mut text = String::new();
    loop {
        let event = reader
            .read_event()
            .with_context(|| format!("parsing stat XML at {}", reader.buffer_position()))?;
        match event {
            Event::Start(e) => {
                let name = e.name().as_ref().to_string();
                let parent = path.last().map(String::as_str);
                match (name.as_str(), parent) {
                    ("application", Some("server")) => stat.applications.push(StatApp::default()),
                    ("stream", Some("live")) => {
                        if let Some(app) = stat.applications.last_mut() {
                            app.streams.push(StatStream::default());
                        }
                    }
                    ("client", Some("stream")) => {
                        if let Some(s) = stat
                            .applications
                            .last_mut()
                            .and_then(|a| a.streams.last_mut())
                        {
                            s.clients.push(StatClient::default());
                        }
                    }
                    _ => {}
                }
                path.push(name);
                text.clear();
            }
            Event::Empty(e) => {
                let name = e.name().as_ref().to_string();
                let stream = stat
                    .applications
                    .last_mut()
                    .and_then(|a| a.streams.last_mut());
                match (name.as_str(), path.last().map(String::as_str), stream) {
                    ("publishing", Some("stream"), Some(s)) => s.publishing = true,
                    ("publishing", Some("client"), Some(s)) => {
                        if let Some(c) = s.clients.last_mut() {
                            c.publishing = true;
                        }
                    }
                    ("active", Some("client"), Some(s)) => {
                        if let Some(c) = s.clients.last_mut() {
                            c.active = true;
                        }
                    }
                    _ => {}
                }
            }
            Event::Text(t) => text.push_str(t.as_ref()),
            Event::End(_) => {
                let name = path.pop().unwrap_or_default();
                let parent = path.last().map(String::as_str);
                let app = stat.applications.last_mut();
                match (name.as_str(), parent) {
                    ("pid", Some("rtmp")) => stat.nginx_pid = text.trim().parse().unwrap_or(0),
                    ("name", Some("application")) => {
                        if let Some(a) = app {
                            a.name = text.clone();
                        }
                    }
                    ("name", Some("stream")) => {
                        if let Some(s) = app.and_then(|a| a.streams.last_mut()) {
                            s.name = text.clone();
                        }
                    }
                    (field, Some("client")) => {
                        if let Some(c) = app
                            .and_then(|a| a.streams.last_mut())
                            .and_then(|s| s.clients.last_mut())
                        {
                            match field {
                                "id" => c.id = text.trim().parse().unwrap_or(0),
                                "address" => c.address = text.clone(),
                                "time" => c.time_ms = text.trim().parse().unwrap_or(0),
                                "flashver" => c.flashver = text.clone(),
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
                text.clear();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(stat)
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("building an HTTP client")
}

/// Fetches and parses a statistics page.
pub async fn fetch_stat(stat_url: &str) -> anyhow::Result<Stat> {
    fetch_stat_with(&http_client(), stat_url).await
}

async fn fetch_stat_with(client: &reqwest::Client, stat_url: &str) -> anyhow::Result<Stat> {
    let response = client
        .get(stat_url)
        .send()
        .await
        .with_context(|| format!("GET {stat_url}"))?;
    if !response.status().is_success() {
        bail!("GET {stat_url}: {}", response.status());
    }
    let body = response
        .text()
        .await
        .with_context(|| format!("GET {stat_url}"))?;
    parse_stat(&body)
}

/// Waits until some client publishes `app/stream`; returns it.
pub async fn wait_until_publishing(
    stat_url: &str,
    app: &str,
    stream: &str,
    timeout: Duration,
) -> anyhow::Result<StatClient> {
    let client = http_client();
    let deadline = Instant::now() + timeout;
    let mut last;
    loop {
        match fetch_stat_with(&client, stat_url).await {
            Ok(stat) => {
                if let Some(p) = stat.publisher(app, stream) {
                    return Ok(p.clone());
                }
                last = format!("{:?}", stat.stream(app, stream));
            }
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() >= deadline {
            bail!("nobody published {app}/{stream} within {timeout:?}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A publishing session seen by a [`SessionCounter`].
#[derive(Debug, Clone)]
pub struct SessionSeen {
    pub nginx_pid: u32,
    pub client_id: u64,
    pub address: String,
    pub first_seen: Instant,
    pub last_seen: Instant,
}

#[derive(Default)]
struct CounterState {
    sessions: BTreeMap<(u32, u64), SessionSeen>,
    polls: usize,
    publishing_now: bool,
    last_error: Option<String>,
}

/// Counts the distinct publishing sessions on one stream, by polling the
/// statistics page every 200 ms: a stream published by one uninterrupted
/// connection counts 1, each reconnection adds one. Sessions are told apart
/// by nginx pid and client id, so a restarted nginx counts anew. A session
/// shorter than a poll may be missed.
pub struct SessionCounter {
    app: String,
    stream: String,
    state: Arc<Mutex<CounterState>>,
    task: JoinHandle<()>,
}

impl SessionCounter {
    /// Starts polling `stat_url` for publishers of `app/stream`.
    pub fn start(stat_url: &str, app: &str, stream: &str) -> SessionCounter {
        let state: Arc<Mutex<CounterState>> = Arc::default();
        let task = {
            let (url, app, stream, state) = (
                stat_url.to_string(),
                app.to_string(),
                stream.to_string(),
                state.clone(),
            );
            tokio::spawn(async move {
                let client = http_client();
                let mut tick = tokio::time::interval(Duration::from_millis(200));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let result = fetch_stat_with(&client, &url).await;
                    let now = Instant::now();
                    let mut s = state.lock().unwrap();
                    s.polls += 1;
                    match result {
                        Ok(stat) => {
                            s.last_error = None;
                            let publisher = stat.publisher(&app, &stream).cloned();
                            s.publishing_now = publisher.is_some();
                            if let Some(p) = publisher {
                                s.sessions
                                    .entry((stat.nginx_pid, p.id))
                                    .and_modify(|seen| seen.last_seen = now)
                                    .or_insert(SessionSeen {
                                        nginx_pid: stat.nginx_pid,
                                        client_id: p.id,
                                        address: p.address.clone(),
                                        first_seen: now,
                                        last_seen: now,
                                    });
                            }
                        }
                        Err(e) => {
                            s.publishing_now = false;
                            s.last_error = Some(format!("{e:#}"));
                        }
                    }
                }
            })
        };
        SessionCounter {
            app: app.to_string(),
            stream: stream.to_string(),
            state,
            task,
        }
    }

    /// Distinct publishing sessions seen so far.
    pub fn sessions(&self) -> usize {
        self.state.lock().unwrap().sessions.len()
    }

    /// The sessions, in order of first sight.
    pub fn seen(&self) -> Vec<SessionSeen> {
        let mut v: Vec<SessionSeen> = self
            .state
            .lock()
            .unwrap()
            .sessions
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|s| s.first_seen);
        v
    }

    /// Whether the latest poll found a publisher.
    pub fn publishing_now(&self) -> bool {
        self.state.lock().unwrap().publishing_now
    }

    /// Waits until at least `n` sessions have been seen.
    pub async fn wait_for_sessions(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.sessions() >= n {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let s = self.state.lock().unwrap();
                bail!(
                    "{}/{}: {} publishing session(s) after {timeout:?}, wanted {n}; {} polls, last error {:?}",
                    self.app,
                    self.stream,
                    s.sessions.len(),
                    s.polls,
                    s.last_error
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until a poll finds no publisher.
    pub async fn wait_for_no_publisher(&self, timeout: Duration) -> anyhow::Result<()> {
        let start_polls = self.state.lock().unwrap().polls;
        let deadline = Instant::now() + timeout;
        loop {
            {
                let s = self.state.lock().unwrap();
                if s.polls > start_polls && !s.publishing_now && s.last_error.is_none() {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}/{} still published after {timeout:?}",
                    self.app,
                    self.stream
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for SessionCounter {
    fn drop(&mut self) {
        self.task.abort();
    }
}
