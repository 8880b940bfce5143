//! METRICS_ADDR: `/metrics` read as Prometheus text by a strict parser,
//! its values against what relay is doing, and garbage, idle and many
//! connections that must not hurt the daemon. Real relay, private nginx,
//! real FFmpeg publisher.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;
use crate::relay_rig::*;

/// One sample: metric name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format (0.0.4) strictly: every sample
/// belongs to a family declared by `# HELP` and `# TYPE` before it, names
/// and labels are well-formed, counters end in `_total`, no family or
/// series appears twice, and the text ends with a newline.
fn parse(text: &str) -> anyhow::Result<Vec<Sample>> {
    ensure!(text.ends_with('\n'), "no final newline");
    let valid_name = |n: &str| {
        let mut c = n.chars();
        c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
            && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
    };
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helped: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').context("HELP without text")?;
            ensure!(valid_name(name) && !help.is_empty(), "line {n}: {line}");
            ensure!(!helped.contains(&name.to_string()), "line {n}: HELP twice");
            helped.push(name.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').context("TYPE without kind")?;
            ensure!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "line {n}: unknown type {kind}"
            );
            ensure!(
                helped.last().map(String::as_str) == Some(name),
                "line {n}: TYPE before HELP"
            );
            ensure!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "line {n}: TYPE twice"
            );
            continue;
        }
        ensure!(
            !line.starts_with('#') && !line.is_empty(),
            "line {n}: {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').context("no value")?;
        let value: f64 = match value {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .with_context(|| format!("line {n}: value {v:?}"))?,
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').context("unclosed labels")?;
                (
                    name,
                    parse_labels(body).with_context(|| format!("line {n}"))?,
                )
            }
        };
        ensure!(valid_name(name), "line {n}: name {name:?}");
        let kind = types
            .get(name)
            .with_context(|| format!("line {n}: {name} has no TYPE"))?;
        if kind == "counter" {
            ensure!(name.ends_with("_total"), "counter {name} without _total");
            ensure!(value >= 0.0, "negative counter {name}");
        }
        ensure!(seen.insert(series.to_string()), "line {n}: series twice");
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(samples)
}

fn parse_labels(body: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").context("label without =\"")?;
        ensure!(
            !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "label name {key:?}"
        );
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                None => bail!("unterminated label value"),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => bail!("bad escape {other:?}"),
                },
                Some((_, c)) => value.push(c),
            }
        };
        ensure!(
            labels.insert(key.to_string(), value).is_none(),
            "label twice"
        );
        rest = &after[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else {
            ensure!(rest.is_empty(), "junk after a label: {rest:?}");
        }
    }
    Ok(labels)
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

async fn fetch(url: &str) -> anyhow::Result<(String, Vec<Sample>)> {
    let response = reqwest::get(url).await?;
    ensure!(response.status() == 200, "{url}: {}", response.status());
    let kind = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    ensure!(
        kind.starts_with("text/plain; version=0.0.4"),
        "content type {kind:?}"
    );
    let text = response.text().await?;
    let samples = parse(&text).with_context(|| format!("not Prometheus text:\n{text}"))?;
    Ok((text, samples))
}

/// Fetches until `check` holds, or fails with the last page.
async fn wait_for(
    url: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&[Sample]) -> bool,
) -> anyhow::Result<Vec<Sample>> {
    let deadline = Instant::now() + timeout;
    loop {
        let (text, samples) = fetch(url).await?;
        if check(&samples) {
            return Ok(samples);
        }
        ensure!(
            Instant::now() < deadline,
            "{what} not seen within {timeout:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn metrics_page_tracks_the_state_and_survives_abuse() -> anyhow::Result<()> {
    let rig = Rig::start(
        "metrics",
        RigOpts {
            allowed_publishers: Some("any".to_string()),
            ..RigOpts::default()
        },
    )
    .await?;
    let port = free_tcp_port()?;
    let mut text = std::fs::read_to_string(&rig.env_file)?;
    text.push_str(&format!("METRICS_ADDR=127.0.0.1:{port}\n"));
    std::fs::write(&rig.env_file, text)?;
    let mut relay = rig.start_relay().await?;
    // The status does not say where metrics are served: the log does.
    relay.wait_for_log("metrics at http://", secs(10)).await?;
    let url = format!("http://127.0.0.1:{port}/metrics");

    // Offline, output streaming, filler frames going out.
    let first = wait_for(&url, "offline and streaming", secs(30), |s| {
        value(s, "relay_state", &[("state", "offline")]) == Some(1.0)
            && value(s, "relay_output_up", &[]) == Some(1.0)
    })
    .await?;
    let filler = value(&first, "relay_filler_frames_total", &[]).context("filler")?;
    assert_eq!(
        value(&first, "relay_state", &[("state", "live")]),
        Some(0.0)
    );
    assert_eq!(value(&first, "relay_publisher_connected", &[]), Some(0.0));
    assert_eq!(
        value(&first, "relay_live_bitrate_bits_per_second", &[]),
        None
    );
    wait_for(&url, "filler frames increasing", secs(10), |s| {
        value(s, "relay_filler_frames_total", &[]).is_some_and(|v| v > filler)
    })
    .await?;

    // Live: state, the switch by its reason, bitrate, live frames, fps.
    let mut publisher = Publisher::start(&rig.live_url(), PublisherOpts::colour("blue")).await?;
    relay
        .wait_for_status("the live feed on air", live_on_air, secs(60))
        .await?;
    let live = wait_for(&url, "live with a bitrate", secs(30), |s| {
        value(s, "relay_state", &[("state", "live")]) == Some(1.0)
            && value(s, "relay_live_bitrate_bits_per_second", &[]).is_some_and(|b| b > 0.0)
            && value(s, "relay_live_frames_total", &[]).is_some_and(|f| f > 0.0)
    })
    .await?;
    let to_live = [("to", "live"), ("reason", "publisher_live")];
    assert_eq!(value(&live, "relay_switches_total", &to_live), Some(1.0));
    assert_eq!(value(&live, "relay_publisher_connected", &[]), Some(1.0));
    assert!(value(&live, "relay_output_fps", &[]).is_some_and(|f| f > 0.0));
    assert!(value(&live, "relay_output_speed", &[]).is_some_and(|f| f > 0.0));
    assert_eq!(value(&live, "relay_output_restarts_total", &[]), Some(0.0));

    // Abuse: garbage, an oversized request, a POST, idle connections
    // holding every slot, and far more connections than slots.
    let addr = format!("127.0.0.1:{port}");
    for junk in [
        b"\x00\x01\x02garbage\r\n\r\n".to_vec(),
        b"GET /metrics HTTP/9.9\r\n\r\n".to_vec(),
        format!(
            "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(100_000)
        )
        .into_bytes(),
        b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
    ] {
        let mut c = TcpStream::connect(&addr).await?;
        let _ = c.write_all(&junk).await;
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(secs(10), c.read_to_end(&mut reply)).await;
    }
    let mut idle = Vec::new();
    for _ in 0..100 {
        if let Ok(c) = TcpStream::connect(&addr).await {
            idle.push(c);
        }
    }
    // The daemon itself does not notice: still live, status answers.
    tokio::time::sleep(secs(2)).await;
    let socket = rig.dir.path().join("relay.sock");
    match relay::api::call(&socket, &relay::api::Request::Status).await? {
        relay::api::Reply::Status(s) => {
            assert_eq!(s.state, relay::api::StateName::Live, "{s:?}");
            assert_eq!(s.output_restarts, 0, "{s:?}");
        }
        other => bail!("unexpected {other:?}"),
    }
    drop(idle);
    let not_found = reqwest::get(format!("http://{addr}/other")).await?;
    assert_eq!(not_found.status(), 404);

    // Publisher gone: the failover is counted by its reason.
    publisher.kill().await?;
    let (text, _) = {
        wait_for(&url, "failover counted", secs(30), |s| {
            value(
                s,
                "relay_switches_total",
                &[("to", "offline"), ("reason", "frames_stopped")],
            ) == Some(1.0)
                && value(s, "relay_state", &[("state", "offline")]) == Some(1.0)
        })
        .await?;
        fetch(&url).await?
    };
    assert!(!text.contains(KEY), "the stream key leaked:\n{text}");
    assert!(
        !text.contains(&rig.stream),
        "the stream name leaked:\n{text}"
    );
    assert!(relay.is_running());
    assert!(!logged(&relay, "panicked"), "{:?}", relay.logs());

    let status = relay.sigterm_and_wait(secs(15)).await?;
    assert!(status.success(), "{status}");
    Ok(())
}
