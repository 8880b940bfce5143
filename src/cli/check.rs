//! `relay check`: everything an instance needs, checked without starting
//! it, one report line per check (`ok` or `FAIL` and what was found).
//!
//! Exit status: 0 when every check passes; 78 (EX_CONFIG) when the
//! configuration itself does not load, since nothing else can be checked
//! then; 1 when it loads but another check fails — a missing offline video
//! included, although `relay run` reports that one as 78 too: for an
//! operator running `check`, "the file is not there" is a finding, not a
//! malformed configuration.
//!
//! KICK_KEY is never printed: the destination is shown masked.
//!
//! `warn` lines do not change the exit status. One says when no
//! PUBLISH_KEY protects the stream; another says when other users could
//! read credentials on the output FFmpeg's command line. The stream key
//! reaches FFmpeg through a pipe, but FFmpeg 5.1 takes a user name,
//! password or query of KICK_URL only in the URL argument, and
//! `/proc/PID/cmdline` is readable by every user unless `/proc` is mounted
//! with `hidepid=` (systemd's `ProtectProc=` only changes the unit's own
//! view of `/proc`).

use std::path::Path;
use std::time::Duration;

use crate::config::{Config, LiveSource, Source, EX_CONFIG};
use crate::ffmpeg::preflight;
use crate::nginx::stat_page::StatsClient;

/// How long the stat page may take to answer.
const STATS_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs every check for `source`, prints the report, returns the exit status.
pub async fn run(source: &Source) -> i32 {
    let config = match Config::load(source) {
        Ok(c) => c,
        Err(err) => {
            report("config", Err(err.to_string()));
            return EX_CONFIG;
        }
    };
    report(
        "config",
        Ok(format!(
            "instance {}, destination {}",
            config.instance,
            config.output_url_masked()
        )),
    );
    for notice in &config.notices {
        println!("note config: {notice}");
    }
    let ffmpeg = Path::new("ffmpeg");
    let results = [
        report(
            "ffmpeg",
            preflight::check_ffmpeg(ffmpeg)
                .map(|()| "zmq, streamselect, astreamselect, libx264, aac".to_string())
                .map_err(|e| e.to_string()),
        ),
        report("tls", check_tls(&config, ffmpeg)),
        report("offline video", check_offline(&config)),
        report("stat page", check_stats(&config).await),
    ];
    let srt = config.live.sources.contains(&LiveSource::Srt);
    let srt_ok = !srt || report("srt", check_srt(&config, ffmpeg));
    if srt && config.srt.passphrase.is_empty() {
        println!(
            "warn srt: SRT_PASSPHRASE is not set: the SRT feed is unencrypted and any caller who finds UDP port {} can go on air",
            config.srt.port
        );
    }
    match publish_key_report(&config) {
        Ok(detail) => println!("ok   publish key: {detail}"),
        Err(warning) => println!("warn publish key: {warning}"),
    }
    if let Some(warning) = argv_warning(&config) {
        println!("warn {warning}");
    }
    if srt_ok && results.iter().all(|ok| *ok) {
        0
    } else {
        1
    }
}

/// Prints one report line; returns whether the check passed.
fn report(what: &str, result: Result<String, String>) -> bool {
    match result {
        Ok(detail) => {
            println!("ok   {what}: {detail}");
            true
        }
        Err(detail) => {
            println!("FAIL {what}: {detail}");
            false
        }
    }
}

/// RTMPS needs FFmpeg built with TLS; plain RTMP does not.
fn check_tls(config: &Config, ffmpeg: &Path) -> Result<String, String> {
    if !config
        .destination
        .url
        .to_ascii_lowercase()
        .starts_with("rtmps://")
    {
        return Ok("not needed (KICK_URL is not rtmps://)".to_string());
    }
    preflight::check_protocol(ffmpeg, "rtmps")
        .map(|()| "ffmpeg can write rtmps://".to_string())
        .map_err(|e| e.to_string())
}

/// With `srt` in LIVE_SOURCES: FFmpeg has libsrt, and where callers
/// connect (the UDP port the firewall must let in).
fn check_srt(config: &Config, ffmpeg: &Path) -> Result<String, String> {
    preflight::check_protocol(ffmpeg, "srt").map_err(|e| e.to_string())?;
    let host = if config.srt.host.is_empty() {
        "every address"
    } else {
        config.srt.host.as_str()
    };
    Ok(format!(
        "ffmpeg has libsrt; callers connect to UDP port {} on {host} (open it in the firewall), latency {} ms{}",
        config.srt.port,
        config.srt.latency.as_millis(),
        if config.srt.passphrase.is_empty() {
            ""
        } else {
            ", encrypted"
        }
    ))
}

fn check_offline(config: &Config) -> Result<String, String> {
    let info = preflight::probe_offline(Path::new("ffprobe"), &config.offline_video_path)
        .map_err(|e| e.to_string())?;
    let duration = info
        .duration
        .map(|d| format!(", {:.1} s", d.as_secs_f64()))
        .unwrap_or_default();
    Ok(format!(
        "{} decodes: {}x{}{}, {}",
        config.offline_video_path.display(),
        info.width,
        info.height,
        duration,
        if info.has_audio {
            "with audio"
        } else {
            "no audio (silence is sent)"
        }
    ))
}

/// The stat page answers, and whether our stream is published right now.
async fn check_stats(config: &Config) -> Result<String, String> {
    let client =
        StatsClient::new(&config.live.stats_url, STATS_TIMEOUT).map_err(|e| e.to_string())?;
    let page = client.fetch().await.map_err(|e| e.to_string())?;
    let (app, name) = (&config.live.rtmp_app, &config.live.rtmp_stream_name);
    let publisher = page.stream(app, name).and_then(|s| s.publisher());
    let now = match publisher {
        Some(p) => {
            let addr = p.address.map_or("unknown".to_string(), |a| a.to_string());
            let verdict = match p.address {
                Some(a) if config.live.allowed_publishers.allows(a) => "allowed",
                _ => "refused by ALLOWED_PUBLISHERS",
            };
            format!("{app}/{name} is published now by {addr} ({verdict})")
        }
        None => format!("{app}/{name} is not published now"),
    };
    Ok(format!("{} answers; {now}", config.live.stats_url))
}

/// Whether publishers need a key, and who checks it.
fn publish_key_report(config: &Config) -> Result<String, String> {
    let stream = format!("{}/{}", config.live.rtmp_app, config.live.rtmp_stream_name);
    if config.live.publish_key.is_empty() {
        return Err(format!(
            "not set: anyone who can reach nginx's RTMP port and knows the stream name {stream} can publish"
        ));
    }
    Ok(match config.endpoints.publish_auth_port {
        0 => "set, but PUBLISH_AUTH_PORT=0: only another instance that nginx's on_publish asks can check it".to_string(),
        port => format!(
            "required for {stream}; nginx's on_publish must ask http://127.0.0.1:{port}{}",
            crate::nginx::publish_auth::PATH
        ),
    })
}

/// Why other users could read a secret on FFmpeg's command line, if they
/// can: the stream key never goes there, but credentials or a query in
/// KICK_URL do, and this host's `/proc` does not hide other users'
/// processes.
fn argv_warning(config: &Config) -> Option<String> {
    if !config.output_target().url_has_secret() {
        return None;
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if proc_hides_processes(&mountinfo) {
        return None;
    }
    Some(
        "KICK_URL: every local user can read its user name, password or query on the \
         output FFmpeg's command line; put the key in KICK_KEY or mount /proc with \
         hidepid=invisible (see the README, \"Secrets\")"
            .to_string(),
    )
}

/// Whether the `/proc` mount in `mountinfo` (the last one, if stacked) has
/// `hidepid` set to hide other users' process details.
fn proc_hides_processes(mountinfo: &str) -> bool {
    let Some(line) = mountinfo.lines().rev().find(|line| {
        let mut fields = line.split(' ');
        fields.nth(4) == Some("/proc") && line.contains(" - proc ")
    }) else {
        return false;
    };
    let super_options = line.rsplit(' ').next().unwrap_or("");
    super_options.split(',').any(|option| {
        matches!(
            option,
            "hidepid=1"
                | "hidepid=2"
                | "hidepid=4"
                | "hidepid=noaccess"
                | "hidepid=invisible"
                | "hidepid=ptraceable"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidepid_is_read_from_the_proc_mount() {
        let plain = "22 27 0:21 / /proc rw,relatime - proc proc rw\n";
        assert!(!proc_hides_processes(plain));
        let hidden = "22 27 0:21 / /proc rw,relatime - proc proc rw,hidepid=invisible\n";
        assert!(proc_hides_processes(hidden));
        let gid = "22 27 0:21 / /proc rw - proc proc rw,gid=27,hidepid=2\n";
        assert!(proc_hides_processes(gid));
        // Stacked mounts: the last one counts.
        assert!(!proc_hides_processes(&format!("{hidden}{plain}")));
        // Another mount point with hidepid does not count.
        let other = "30 27 0:40 / /run/x/proc rw - proc proc rw,hidepid=2\n";
        assert!(!proc_hides_processes(&format!("{plain}{other}")));
        assert!(!proc_hides_processes(""));
    }

    #[test]
    fn no_warning_without_a_key_on_the_command_line() {
        let c = Config::from_pairs(
            "t",
            &[
                ("KICK_URL", "rtmp://h/app"),
                ("OFFLINE_VIDEO_PATH", "/o.mp4"),
            ],
        )
        .unwrap();
        assert_eq!(argv_warning(&c), None);
        // The stream key travels through a pipe, not the command line.
        let c = Config::from_pairs(
            "t",
            &[
                ("KICK_URL", "rtmp://h/app/SECRETVALUE"),
                ("OFFLINE_VIDEO_PATH", "/o.mp4"),
            ],
        )
        .unwrap();
        assert_eq!(argv_warning(&c), None);
    }

    #[test]
    fn credentials_in_the_url_are_warned_about_on_a_plain_proc() {
        let c = Config::from_pairs(
            "t",
            &[
                ("KICK_URL", "rtmp://user:SECRETVALUE@h/app"),
                ("OFFLINE_VIDEO_PATH", "/o.mp4"),
            ],
        )
        .unwrap();
        let hidden =
            std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| proc_hides_processes(&m));
        let warning = argv_warning(&c);
        assert_eq!(warning.is_some(), !hidden, "{warning:?}");
        assert!(!warning.unwrap_or_default().contains("SECRETVALUE"));
    }
}
