//! `relay bench`: measures relay as a user would run it and prints a
//! markdown table.
//!
//! Everything is real and on loopback: a private nginx-rtmp, the relay
//! binary itself as a child process (`relay run --config …`), an FFmpeg
//! publisher that comes and goes, and an FFmpeg player on the output that
//! tells by colour what viewers see (offline = green, live = blue).
//!
//! What is measured, and from where:
//! - start → first frame: relay spawned → the player decodes its first frame;
//! - go-live: the publisher's first data reaches nginx (stat page polled
//!   every 20 ms) → relay confirms the switch (`on air: live`), and → the
//!   player shows blue (adds the encoder's and player's own latency);
//! - failover: the publisher is killed, stopped or frozen (its last frame)
//!   → relay confirms the switch back (`on air: offline`), and → green at
//!   the player;
//! - the daemon's own CPU (% of one core, from /proc utime+stime) and RSS
//!   while live, excluding its FFmpeg children.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{sleep, timeout, Instant};

use crate::demo;
use crate::nginx::{free_tcp_port, NginxOptions, PrivateNginx};
use crate::stats;

/// How long the daemon's CPU is sampled while live.
const CPU_WINDOW: Duration = Duration::from_secs(10);
/// Any single step of a cycle taking longer than this fails the benchmark.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
const STREAM: &str = "bench";

#[derive(Debug, Clone)]
pub struct Options {
    pub cycles: usize,
    pub res: u32,
    pub fps: u32,
    /// How long each live period lasts.
    pub hold: Duration,
}

/// How a publisher goes away in a cycle.
#[derive(Debug, Clone, Copy)]
enum Ending {
    Killed,
    CleanStop,
    Stalled,
}

impl Ending {
    fn of_cycle(i: usize) -> Ending {
        [Ending::Killed, Ending::CleanStop, Ending::Stalled][i % 3]
    }
    fn signal(self) -> Signal {
        match self {
            Ending::Killed => Signal::SIGKILL,
            Ending::CleanStop => Signal::SIGINT,
            Ending::Stalled => Signal::SIGSTOP,
        }
    }
}

#[derive(Debug, Default)]
struct Samples {
    start_to_player_frame: Option<Duration>,
    go_live: Vec<Duration>,
    go_live_player: Vec<Duration>,
    failover: Vec<Duration>,
    failover_player: Vec<Duration>,
    cpu_percent: Option<f64>,
    rss_kb: Option<u64>,
    hwm_kb: Option<u64>,
}

pub async fn run(opts: Options) -> anyhow::Result<i32> {
    let nginx = PrivateNginx::start(NginxOptions::default()).await?;
    let dir = nginx.dir().to_path_buf();
    let offline = dir.join("offline-green.mp4");
    demo::make_offline_video(&offline, opts.res, "color=c=green").await?;
    let env = write_config(&nginx, &dir, &offline, &opts)?;
    eprintln!(
        "bench: {} cycles at {}p{}, publisher keyframe every 2 s; this takes about {} s",
        opts.cycles,
        opts.res,
        opts.fps,
        opts.cycles as u64 * (opts.hold.as_secs() + 5) + CPU_WINDOW.as_secs() + 10
    );

    let mut samples = Samples::default();
    let player = Player::start(&nginx.rtmp_url("out", STREAM))?;
    let started = Instant::now();
    let relay = Relay::start(&env)?;
    relay.wait_for("output streaming", started).await?;
    let first = player.wait_for_frame(started).await?;
    samples.start_to_player_frame = Some(first - started);

    let stat = stats::StatsClient::new(&nginx.stat_url(), Duration::from_secs(2))?;
    let first_output = output_client(&stat).await;
    for i in 0..opts.cycles {
        let ending = Ending::of_cycle(i);
        let mark = Instant::now();
        let mut publisher = start_publisher(&nginx.rtmp_url("live", STREAM), &opts)?;
        let first_data = wait_for_publisher_data(&stat, mark).await?;
        let live = relay.wait_for("on air: live", mark).await?;
        let blue = player.wait_for_colour(Colour::Blue, mark).await?;
        samples
            .go_live
            .push(live.saturating_duration_since(first_data));
        samples
            .go_live_player
            .push(blue.saturating_duration_since(first_data));
        if i == 0 {
            let (cpu, rss, hwm) = measure_daemon(relay.pid()).await?;
            samples.cpu_percent = Some(cpu);
            samples.rss_kb = Some(rss);
            samples.hwm_kb = Some(hwm);
        } else {
            sleep(opts.hold).await;
        }
        let gone = Instant::now();
        let pid = Pid::from_raw(publisher.id().unwrap_or(0) as i32);
        kill(pid, ending.signal())?;
        let off = relay.wait_for("on air: offline", gone).await?;
        let green = player.wait_for_colour(Colour::Green, gone).await?;
        samples.failover.push(off - gone);
        samples.failover_player.push(green - gone);
        let _ = kill(pid, Signal::SIGKILL);
        let _ = kill(pid, Signal::SIGCONT);
        let _ = publisher.wait().await;
        eprintln!(
            "bench: cycle {}/{} ({:?}): go-live {:.2} s, failover {:.2} s",
            i + 1,
            opts.cycles,
            ending,
            secs(*samples.go_live.last().unwrap()),
            secs(off - gone)
        );
        // Let relay put a fresh ingest in place, as between real sessions.
        sleep(Duration::from_millis(1500)).await;
    }
    let same_output = first_output.is_some() && first_output == output_client(&stat).await;
    relay.stop().await;
    nginx.stop().await;
    print_report(&opts, &samples, same_output);
    Ok(0)
}

fn write_config(
    nginx: &PrivateNginx,
    dir: &Path,
    offline: &Path,
    opts: &Options,
) -> anyhow::Result<PathBuf> {
    let path = dir.join("bench.env");
    let text = format!(
        "KICK_URL=rtmp://127.0.0.1:{port}/out\nKICK_KEY={STREAM}\nRTMP_PORT={port}\n\
         RTMP_STREAM_NAME={STREAM}\nSTATS_URL={stat}\nZMQ_PORT={zmq}\nOFFLINE_VIDEO_PATH={off}\n\
         OUT_RES={res}\nOUT_FPS={fps}\nALLOWED_PUBLISHERS=any\nKILL_GRACE=2\nPUBLISH_AUTH_PORT=0\n",
        port = nginx.rtmp_port(),
        stat = nginx.stat_url(),
        zmq = free_tcp_port()?,
        off = offline.display(),
        res = opts.res,
        fps = opts.fps,
    );
    std::fs::write(&path, text)?;
    // It holds a stream key: relay refuses it if every user may read it.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(path)
}

/// The relay binary under test, its log lines timestamped as they arrive.
struct Relay {
    child: Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Relay {
    fn start(env: &Path) -> anyhow::Result<Relay> {
        let exe = std::env::current_exe().context("locating the relay binary")?;
        let mut child = Command::new(exe)
            .args(["run", "--config"])
            .arg(env)
            .env("RELAY_LOG", "info")
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting relay")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped");
        let sink = lines.clone();
        tokio::spawn(async move {
            let mut r = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = r.next_line().await {
                sink.lock().unwrap().push((Instant::now(), line));
            }
        });
        Ok(Relay { child, lines })
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// When a line containing `needle` arrived after `since`.
    async fn wait_for(&self, needle: &str, since: Instant) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if let Some((at, _)) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|(at, l)| *at >= since && l.contains(needle))
            {
                return Ok(*at);
            }
            if Instant::now() > deadline {
                let tail: Vec<String> = self
                    .lines
                    .lock()
                    .unwrap()
                    .iter()
                    .rev()
                    .take(15)
                    .map(|(_, l)| l.clone())
                    .collect();
                bail!(
                    "relay did not log {needle:?} within {STEP_TIMEOUT:?}; last lines:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            sleep(Duration::from_millis(5)).await;
        }
    }

    async fn stop(mut self) {
        let _ = kill(Pid::from_raw(self.pid() as i32), Signal::SIGTERM);
        let _ = timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

fn start_publisher(url: &str, opts: &Options) -> anyhow::Result<Child> {
    let size = format!("{}x{}", crate::config::width_16_9(opts.res), opts.res);
    Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
        .args([
            "-f",
            "lavfi",
            "-i",
            &format!("color=c=blue:s={size}:r={}", opts.fps),
        ])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
        ])
        .args(["-g", &(opts.fps * 2).to_string(), "-pix_fmt", "yuv420p"])
        .args(["-c:a", "aac", "-f", "flv", url])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting the publisher ffmpeg")
}

/// When nginx first counted bytes from the publisher (polled every 20 ms).
async fn wait_for_publisher_data(
    stat: &stats::StatsClient,
    since: Instant,
) -> anyhow::Result<Instant> {
    let deadline = since + STEP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(page) = stat.fetch().await {
            if let Some(s) = page.stream("live", STREAM) {
                if s.publisher().is_some() && s.bytes_in > 0 {
                    return Ok(Instant::now());
                }
            }
        }
        sleep(Duration::from_millis(20)).await;
    }
    bail!("the publisher's data never reached nginx")
}

/// nginx's client id of relay's output connection: the same id at the start
/// and the end of the run means the output never reconnected.
async fn output_client(stat: &stats::StatsClient) -> Option<u64> {
    let page = stat.fetch().await.ok()?;
    let s = page.stream("out", STREAM)?;
    s.publisher().map(|p| p.id)
}

/// The daemon's CPU (% of one core) over CPU_WINDOW, its RSS and peak RSS (kB).
async fn measure_daemon(pid: u32) -> anyhow::Result<(f64, u64, u64)> {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    let t0 = cpu_ticks(pid)?;
    let start = Instant::now();
    sleep(CPU_WINDOW).await;
    let t1 = cpu_ticks(pid)?;
    let cpu = (t1 - t0) as f64 / ticks / start.elapsed().as_secs_f64() * 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((cpu, field("VmRSS:"), field("VmHWM:")))
}

fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Colour {
    Blue,
    Green,
    Other,
}

/// An FFmpeg player on the output, decoding it to 16x9 RGB frames.
struct Player {
    frames: Arc<Mutex<Vec<(Instant, Colour)>>>,
    _child: Child,
}

impl Player {
    fn start(url: &str) -> anyhow::Result<Player> {
        let mut child = Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-nostdin",
                "-fpsprobesize",
                "0",
            ])
            .args(["-i", url, "-map", "0:v", "-vf", "scale=16:9"])
            .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting the player ffmpeg")?;
        let mut out = child.stdout.take().expect("piped");
        let frames = Arc::new(Mutex::new(Vec::new()));
        let sink = frames.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 16 * 9 * 3];
            while out.read_exact(&mut buf).await.is_ok() {
                sink.lock().unwrap().push((Instant::now(), classify(&buf)));
            }
        });
        Ok(Player {
            frames,
            _child: child,
        })
    }

    async fn wait_for_frame(&self, since: Instant) -> anyhow::Result<Instant> {
        self.wait(since, |_| true, "any frame").await
    }

    async fn wait_for_colour(&self, colour: Colour, since: Instant) -> anyhow::Result<Instant> {
        self.wait(since, |c| c == colour, "the expected colour")
            .await
    }

    async fn wait(
        &self,
        since: Instant,
        want: impl Fn(Colour) -> bool,
        what: &str,
    ) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if let Some((at, _)) = self
                .frames
                .lock()
                .unwrap()
                .iter()
                .find(|(at, c)| *at >= since && want(*c))
            {
                return Ok(*at);
            }
            if Instant::now() > deadline {
                bail!("the player did not see {what} within {STEP_TIMEOUT:?}");
            }
            sleep(Duration::from_millis(5)).await;
        }
    }
}

fn classify(rgb: &[u8]) -> Colour {
    let n = (rgb.len() / 3) as u32;
    let (mut r, mut g, mut b) = (0u32, 0u32, 0u32);
    for px in rgb.chunks(3) {
        r += px[0] as u32;
        g += px[1] as u32;
        b += px[2] as u32;
    }
    let (r, g, b) = (r / n, g / n, b / n);
    if b > 120 && r < 80 && g < 80 {
        Colour::Blue
    } else if g > 80 && r < 60 && b < 60 {
        Colour::Green
    } else {
        Colour::Other
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn median_worst(v: &[Duration]) -> (String, String) {
    if v.is_empty() {
        return ("–".into(), "–".into());
    }
    let mut s = v.to_vec();
    s.sort();
    let median = s[s.len() / 2];
    (
        format!("{:.2} s", secs(median)),
        format!("{:.2} s", secs(*s.last().unwrap())),
    )
}

fn print_report(opts: &Options, s: &Samples, same_output: bool) {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "relay bench — {} cycles (kill / clean stop / freeze), {}p{}, publisher keyframe every 2 s",
        opts.cycles, opts.res, opts.fps
    );
    println!("machine: {cpu_model}, {cores} cores");
    println!();
    println!("| figure | median | worst | target |");
    println!("|---|---|---|---|");
    let start = s
        .start_to_player_frame
        .map_or("–".into(), |d| format!("{:.2} s", secs(d)));
    println!("| start → first output frame at a player | {start} | | |");
    let (m, w) = median_worst(&s.go_live);
    println!("| go-live: publisher's first data → switch confirmed | {m} | {w} | ≤ 2.5 s (keyframe interval + 0.5 s) |");
    let (m, w) = median_worst(&s.go_live_player);
    println!("| go-live as a player sees it (+ encoder and player latency) | {m} | {w} | |");
    let (m, w) = median_worst(&s.failover);
    println!("| failover: last live frame → switch to offline confirmed | {m} | {w} | ≤ 0.5 s |");
    let (m, w) = median_worst(&s.failover_player);
    println!("| failover as a player sees it (+ encoder and player latency) | {m} | {w} | |");
    if let Some(cpu) = s.cpu_percent {
        println!(
            "| daemon CPU while live ({}p{}, {} s window) | {cpu:.1} % of one core | | ≤ 3 % |",
            opts.res,
            opts.fps,
            CPU_WINDOW.as_secs()
        );
    }
    if let (Some(rss), Some(hwm)) = (s.rss_kb, s.hwm_kb) {
        println!(
            "| daemon RSS while live (peak) | {:.1} MB | {:.1} MB | ≤ 25 MB |",
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        );
    }
    let reconnects = if same_output { "0" } else { "≥ 1" };
    println!("| output reconnections during the run | {reconnects} | | 0 |");
}
