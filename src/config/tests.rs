use super::parse::{parse_bitrate, MAX_KEY_LEN};
use super::*;
use std::collections::HashMap;
use std::path::Path;

const REQUIRED: [(&str, &str); 2] = [
    ("KICK_URL", "rtmps://ingest.example.com/app"),
    ("OFFLINE_VIDEO_PATH", "/srv/offline.mp4"),
];

/// A config from the required keys plus `extra` (later pairs win).
fn with(extra: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let mut pairs = REQUIRED.to_vec();
    pairs.extend_from_slice(extra);
    Config::from_pairs("test", &pairs)
}

fn error_for(extra: &[(&str, &str)]) -> String {
    match with(extra) {
        Ok(config) => panic!("expected an error for {extra:?}, got {config:?}"),
        Err(e) => e.to_string(),
    }
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn env_from(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

/// Writes a file with mode 0640, as a file holding a key must be.
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    chmod(&path, 0o640);
    path
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn files_with_secrets_must_not_be_world_readable() {
    let dir = tempfile::tempdir().unwrap();
    let base = "KICK_URL=rtmp://h/app\nOFFLINE_VIDEO_PATH=/o.mp4\n";
    let load = |name: &str, text: &str, mode: u32| {
        let path = write(dir.path(), name, text);
        chmod(&path, mode);
        Config::load_with_env(&Source::File(path), &no_env).map(|_| ())
    };
    for secret in [
        "KICK_KEY=SECRETVALUE\n",
        "PUBLISH_KEY=SECRETVALUE\n",
        "KICK_URL=rtmp://h/app/SECRETVALUE\n",
        "KICK_URL=rtmp://user:SECRETVALUE@h/app\n",
    ] {
        let text = format!("{base}{secret}");
        let e = load("k.env", &text, 0o644).unwrap_err();
        assert!(matches!(e, ConfigError::Exposed { .. }), "{secret}: {e}");
        let msg = e.to_string();
        assert!(msg.contains("k.env") && msg.contains("chmod 0640"), "{msg}");
        assert!(!msg.contains("SECRETVALUE") && !msg.contains('\n'), "{msg}");
        load("k.env", &text, 0o640).unwrap();
        load("k.env", &text, 0o600).unwrap();
    }
    // Nothing secret: any mode will do.
    load("k.env", base, 0o644).unwrap();
    load(
        "k.env",
        "KICK_URL=rtmp://h/app/\nOFFLINE_VIDEO_PATH=/o.mp4\n",
        0o644,
    )
    .unwrap();
    // TOML too, and per file: the .env holding the key is the one named.
    let cdir = tempfile::tempdir().unwrap();
    write(cdir.path(), "i.toml", "kick_url = \"rtmp://h/app\"\n");
    chmod(&cdir.path().join("i.toml"), 0o644);
    let env_path = write(cdir.path(), "i.env", "KICK_KEY=s\nOFFLINE_VIDEO_PATH=/o\n");
    let dir_env = env_from(&[("RELAY_CONFIG_DIR", cdir.path().to_str().unwrap())]);
    Config::load_with_env(&Source::Instance("i".into()), &dir_env).unwrap();
    chmod(&env_path, 0o604);
    let e = Config::load_with_env(&Source::Instance("i".into()), &dir_env).unwrap_err();
    assert!(
        e.to_string().starts_with(&env_path.display().to_string()),
        "{e}"
    );
    let toml = write(
        cdir.path(),
        "t.toml",
        "kick_url = \"rtmp://h/a\"\npublish_key = \"p\"\noffline_video_path = \"/o\"\n",
    );
    chmod(&toml, 0o644);
    let e = Config::load_with_env(&Source::File(toml), &no_env).unwrap_err();
    assert!(matches!(e, ConfigError::Exposed { .. }), "{e}");
}

#[test]
fn defaults() {
    let c = with(&[]).unwrap();
    assert_eq!(c.instance, "test");
    assert_eq!(c.destination.url, "rtmps://ingest.example.com/app");
    assert!(c.destination.key.is_empty());
    assert_eq!(c.live.rtmp_host, "127.0.0.1");
    assert_eq!(c.live.rtmp_port, 1936);
    assert_eq!(c.live.rtmp_app, "live");
    assert_eq!(c.live.rtmp_stream_name, "mystream");
    assert_eq!(c.offline_video_path, PathBuf::from("/srv/offline.mp4"));
    assert_eq!(
        (c.encoding.width, c.encoding.height, c.encoding.fps),
        (1920, 1080, 30)
    );
    assert_eq!(
        c.encoding.vid_bitrate,
        Bitrate {
            text: "3000k".into(),
            bps: 3_000_000
        }
    );
    assert_eq!(c.encoding.max_bitrate.bps, 3_500_000);
    assert_eq!(c.encoding.buffer_size.bps, 12_000_000);
    assert_eq!(
        c.encoding.audio_bitrate,
        Bitrate {
            text: "128k".into(),
            bps: 128_000
        }
    );
    assert_eq!(c.encoding.audio_samplerate, 48000);
    assert_eq!(c.live.poll_interval, Duration::from_secs(1));
    assert_eq!(c.supervision.kill_grace, Duration::from_secs(3));
    assert_eq!(c.supervision.crash_backoff, Duration::from_secs(2));
    assert_eq!(c.live.http_stats_port, 8080);
    assert_eq!(c.live.stats_url, "http://127.0.0.1:8080/rtmp_stat");
    assert_eq!(c.endpoints.zmq_port, 5559);
    assert_eq!(c.live.allowed_publishers, AllowedPublishers::External);
    assert!(c.live.publish_key.is_empty());
    assert_eq!(c.endpoints.publish_auth_port, 8081);
    assert_eq!(c.policy.offline_after, Duration::from_millis(300));
    assert_eq!(c.policy.live_stable, Duration::from_secs(3));
    assert_eq!(c.policy.low_bitrate, None);
    assert_eq!(c.endpoints.metrics_addr, None);
    assert_eq!(c.live_url(), "rtmp://127.0.0.1:1936/live/mystream");
    assert_eq!(
        c.output_target(),
        OutputTarget {
            url: "rtmps://ingest.example.com/app".into(),
            stream_name: None
        }
    );
}

#[test]
fn every_key_is_read_into_its_field() {
    // Also proves each key's parser in KEYS sets its own field: one that
    // set another would leave a default below.
    let c = with(&[
        ("KICK_URL", "rtmp://a.example/app/"),
        ("KICK_KEY", "sk_1"),
        ("RTMP_HOST", "::1"),
        ("RTMP_PORT", "1935"),
        ("RTMP_APP", "in"),
        ("RTMP_STREAM_NAME", "cam"),
        ("OFFLINE_VIDEO_PATH", "/o.mp4"),
        ("OUT_RES", "720"),
        ("OUT_FPS", "60"),
        ("VID_BITRATE", "6M"),
        ("MAX_BITRATE", "7000K"),
        ("BUFFER_SIZE", "128000"),
        ("AUDIO_BITRATE", "160k"),
        ("AUDIO_SAMPLERATE", "44100"),
        ("POLL_INTERVAL", "0.5"),
        ("KILL_GRACE", "10"),
        ("CRASH_BACKOFF", "300"),
        ("HTTP_STATS_PORT", "8081"),
        ("STATS_URL", "http://10.0.0.2:81/stat"),
        ("ZMQ_PORT", "6000"),
        ("ALLOWED_PUBLISHERS", "any"),
        ("PUBLISH_KEY", "pk-1_a.b~"),
        ("PUBLISH_AUTH_PORT", "0"),
        ("LIVE_SOURCES", "srt, RTMP"),
        ("SRT_HOST", "[::1]"),
        ("SRT_PORT", "7001"),
        ("SRT_PASSPHRASE", "correct horse battery"),
        ("SRT_LATENCY_MS", "120"),
        ("OFFLINE_AFTER_MS", "450"),
        ("LIVE_STABLE_SECS", "0"),
        ("LOW_BITRATE_KBPS", "500"),
        ("LOW_BITRATE_SECS", "2.5"),
        ("METRICS_ADDR", "[::1]:9108"),
    ])
    .unwrap();
    assert_eq!(c.policy.offline_after, Duration::from_millis(450));
    assert_eq!(c.policy.live_stable, Duration::ZERO);
    assert_eq!(
        c.policy.low_bitrate,
        Some(LowBitrate {
            bps: 500_000,
            window: Duration::from_millis(2500)
        })
    );
    assert_eq!(
        c.endpoints.metrics_addr,
        Some("[::1]:9108".parse().unwrap())
    );
    assert_eq!(KEYS.len(), 34);
    assert_eq!(c.live.sources, vec![LiveSource::Srt, LiveSource::Rtmp]);
    assert_eq!(c.srt.host, "::1");
    assert_eq!(c.srt.port, 7001);
    assert_eq!(c.srt.passphrase.expose(), "correct horse battery");
    assert_eq!(c.srt.latency, Duration::from_millis(120));
    assert!(key("OUT_RES").is_some() && key("out_res").is_none());
    assert_eq!(c.live.publish_key.expose(), "pk-1_a.b~");
    assert_eq!(c.endpoints.publish_auth_port, 0);
    assert_eq!(c.destination.url, "rtmp://a.example/app");
    assert_eq!(c.destination.key.expose(), "sk_1");
    assert_eq!(c.output_target().url, "rtmp://a.example/app/");
    assert_eq!(c.output_target().stream_name, Some(Secret::new("sk_1")));
    assert_eq!(c.live.rtmp_host, "::1");
    assert_eq!(c.live_url(), "rtmp://[::1]:1935/in/cam");
    assert_eq!(c.offline_video_path, PathBuf::from("/o.mp4"));
    assert_eq!(
        (c.encoding.width, c.encoding.height, c.encoding.fps),
        (1280, 720, 60)
    );
    assert_eq!(
        c.encoding.vid_bitrate,
        Bitrate {
            text: "6M".into(),
            bps: 6_000_000
        }
    );
    assert_eq!(
        c.encoding.max_bitrate,
        Bitrate {
            text: "7000k".into(),
            bps: 7_000_000
        }
    );
    assert_eq!(
        c.encoding.buffer_size,
        Bitrate {
            text: "128000".into(),
            bps: 128_000
        }
    );
    assert_eq!(c.encoding.audio_bitrate.bps, 160_000);
    assert_eq!(c.encoding.audio_samplerate, 44100);
    assert_eq!(c.live.poll_interval, Duration::from_millis(500));
    assert_eq!(c.supervision.kill_grace, Duration::from_secs(10));
    assert_eq!(c.supervision.crash_backoff, Duration::from_secs(300));
    assert_eq!(c.live.http_stats_port, 8081);
    assert_eq!(c.live.stats_url, "http://10.0.0.2:81/stat");
    assert_eq!(c.endpoints.zmq_port, 6000);
    assert_eq!(c.live.allowed_publishers, AllowedPublishers::Any);
}

#[test]
fn low_bitrate_keys_come_together() {
    let e = error_for(&[("LOW_BITRATE_KBPS", "300")]);
    assert!(
        e.starts_with("LOW_BITRATE_KBPS: set LOW_BITRATE_SECS too"),
        "{e}"
    );
    let e = error_for(&[("LOW_BITRATE_SECS", "5")]);
    assert!(
        e.starts_with("LOW_BITRATE_SECS: set LOW_BITRATE_KBPS too"),
        "{e}"
    );
    let e = error_for(&[("LOW_BITRATE_KBPS", "300"), ("LOW_BITRATE_SECS", "0")]);
    assert!(e.starts_with("LOW_BITRATE_SECS: "), "{e}");
}

#[test]
fn tuning_changes_are_told_apart() {
    let old = with(&[]).unwrap();
    let tuned = with(&[
        ("OFFLINE_AFTER_MS", "2000"),
        ("LIVE_STABLE_SECS", "10"),
        ("LOW_BITRATE_KBPS", "300"),
        ("LOW_BITRATE_SECS", "5"),
        ("POLL_INTERVAL", "2"),
        ("ALLOWED_PUBLISHERS", "any"),
        ("KILL_GRACE", "5"),
        ("CRASH_BACKOFF", "5"),
    ])
    .unwrap();
    assert_eq!(classify(&old, &tuned), ReloadPlan::ApplyAtOnce);
    assert_eq!(classify(&tuned, &old), ReloadPlan::ApplyAtOnce);
    // A destination's URL or key reconnects only that destination.
    for (key, value) in [
        ("KICK_URL", "rtmp://other.example/app"),
        ("KICK_KEY", "sk_2"),
    ] {
        let new = with(&[(key, value)]).unwrap();
        assert_eq!(classify(&old, &new), ReloadPlan::ApplyAtOnce, "{key}");
    }
    for (key, value) in [
        ("OUT_RES", "720"),
        ("VID_BITRATE", "2000k"),
        ("ZMQ_PORT", "6000"),
        ("METRICS_ADDR", "127.0.0.1:9108"),
    ] {
        let new = with(&[(key, value)]).unwrap();
        assert_eq!(classify(&old, &new), ReloadPlan::Restart, "{key}");
        // A restart wins over settings that would apply at once.
        let both = with(&[(key, value), ("KILL_GRACE", "5")]).unwrap();
        assert_eq!(classify(&old, &both), ReloadPlan::Restart, "{key}");
    }
    // A replaced publish key applies at once; setting or removing one
    // restarts, so that start-up says again what protects the stream.
    let keyed = with(&[("PUBLISH_KEY", "pk-1")]).unwrap();
    let rekeyed = with(&[("PUBLISH_KEY", "pk-2")]).unwrap();
    assert_eq!(classify(&keyed, &rekeyed), ReloadPlan::ApplyAtOnce);
    assert_eq!(classify(&old, &keyed), ReloadPlan::Restart);
    assert_eq!(classify(&keyed, &old), ReloadPlan::Restart);
    let moved = with(&[("PUBLISH_KEY", "pk-1"), ("PUBLISH_AUTH_PORT", "9")]).unwrap();
    assert_eq!(classify(&keyed, &moved), ReloadPlan::Restart);
}

#[test]
fn reload_plans() {
    let old = with(&[]).unwrap();
    assert_eq!(classify(&old, &old.clone()), ReloadPlan::Unchanged);
    assert!(changed_keys(&old, &old).is_empty());

    let video = with(&[("OFFLINE_VIDEO_PATH", "/srv/other.mp4")]).unwrap();
    assert_eq!(
        classify(&old, &video),
        ReloadPlan::NewOfflineVideo { at_once: false }
    );
    let video_and_policy = with(&[
        ("OFFLINE_VIDEO_PATH", "/srv/other.mp4"),
        ("OFFLINE_AFTER_MS", "500"),
    ])
    .unwrap();
    assert_eq!(
        classify(&old, &video_and_policy),
        ReloadPlan::NewOfflineVideo { at_once: true }
    );
    let video_and_encoding =
        with(&[("OFFLINE_VIDEO_PATH", "/srv/other.mp4"), ("OUT_FPS", "25")]).unwrap();
    assert_eq!(classify(&old, &video_and_encoding), ReloadPlan::Restart);
    let names: Vec<&str> = changed_keys(&old, &video_and_encoding)
        .iter()
        .map(|k| k.name)
        .collect();
    assert_eq!(names, ["OFFLINE_VIDEO_PATH", "OUT_FPS"]);

    // Another instance is another daemon.
    let other = Config::from_pairs("other", &REQUIRED).unwrap();
    assert_eq!(classify(&old, &other), ReloadPlan::Restart);

    // A file replaced under the same name: the offline source restarts.
    let replaced = ReloadPlan::with_offline_file_replaced;
    assert_eq!(
        replaced(ReloadPlan::Unchanged),
        ReloadPlan::NewOfflineVideo { at_once: false }
    );
    assert_eq!(
        replaced(ReloadPlan::ApplyAtOnce),
        ReloadPlan::NewOfflineVideo { at_once: true }
    );
    for plan in [
        ReloadPlan::NewOfflineVideo { at_once: true },
        ReloadPlan::Restart,
    ] {
        assert_eq!(replaced(plan), plan);
    }
}

/// For every key, a value other than the one in [`BASE`]: changing it alone
/// must show as that key alone, and yield the plan its class says.
const OTHER_VALUE: [(&str, &str); 34] = [
    ("DESTINATIONS", "kick,youtube"),
    ("KICK_URL", "rtmp://other.example/app"),
    ("KICK_KEY", "sk_2"),
    ("RTMP_HOST", "::1"),
    ("RTMP_PORT", "1935"),
    ("RTMP_APP", "in"),
    ("RTMP_STREAM_NAME", "cam"),
    ("OFFLINE_VIDEO_PATH", "/srv/other.mp4"),
    ("OUT_RES", "720"),
    ("OUT_FPS", "60"),
    ("VID_BITRATE", "6M"),
    ("MAX_BITRATE", "7000k"),
    ("BUFFER_SIZE", "128000"),
    ("AUDIO_BITRATE", "160k"),
    ("AUDIO_SAMPLERATE", "44100"),
    ("POLL_INTERVAL", "0.5"),
    ("KILL_GRACE", "10"),
    ("CRASH_BACKOFF", "300"),
    ("HTTP_STATS_PORT", "8082"),
    ("STATS_URL", "http://10.0.0.2:81/stat"),
    ("ZMQ_PORT", "6000"),
    ("ALLOWED_PUBLISHERS", "any"),
    ("PUBLISH_KEY", "pk-2"),
    ("PUBLISH_AUTH_PORT", "0"),
    ("LIVE_SOURCES", "rtmp,srt"),
    ("SRT_HOST", "127.0.0.1"),
    ("SRT_PORT", "9001"),
    ("SRT_PASSPHRASE", "another-passphrase"),
    ("SRT_LATENCY_MS", "2000"),
    ("OFFLINE_AFTER_MS", "450"),
    ("LIVE_STABLE_SECS", "0"),
    ("LOW_BITRATE_KBPS", "500"),
    ("LOW_BITRATE_SECS", "2.5"),
    ("METRICS_ADDR", "[::1]:9108"),
];

/// Every key set, so that each can change alone (the low-bitrate pair
/// must be set together, and a publish key must be replaced, not set).
const BASE: [(&str, &str); 5] = [
    ("PUBLISH_KEY", "pk-1"),
    ("LOW_BITRATE_KBPS", "300"),
    ("LOW_BITRATE_SECS", "5"),
    ("METRICS_ADDR", "127.0.0.1:9108"),
    ("STATS_URL", "http://127.0.0.1:8080/rtmp_stat"),
];

#[test]
fn every_key_has_its_reload_class() {
    use Applies::*;
    let expected = [
        ("DESTINATIONS", Destination),
        ("KICK_URL", Destination),
        ("KICK_KEY", Destination),
        ("RTMP_HOST", Restart),
        ("RTMP_PORT", Restart),
        ("RTMP_APP", Restart),
        ("RTMP_STREAM_NAME", Restart),
        ("OFFLINE_VIDEO_PATH", OfflineSource),
        ("OUT_RES", Restart),
        ("OUT_FPS", Restart),
        ("VID_BITRATE", Restart),
        ("MAX_BITRATE", Restart),
        ("BUFFER_SIZE", Restart),
        ("AUDIO_BITRATE", Restart),
        ("AUDIO_SAMPLERATE", Restart),
        ("POLL_INTERVAL", AtOnce),
        ("KILL_GRACE", AtOnce),
        ("CRASH_BACKOFF", AtOnce),
        ("HTTP_STATS_PORT", Restart),
        ("STATS_URL", Restart),
        ("ZMQ_PORT", Restart),
        ("ALLOWED_PUBLISHERS", AtOnce),
        ("PUBLISH_KEY", AtOnceWhileSet),
        ("PUBLISH_AUTH_PORT", Restart),
        ("LIVE_SOURCES", Restart),
        ("SRT_HOST", Restart),
        ("SRT_PORT", Restart),
        ("SRT_PASSPHRASE", Restart),
        ("SRT_LATENCY_MS", Restart),
        ("OFFLINE_AFTER_MS", AtOnce),
        ("LIVE_STABLE_SECS", AtOnce),
        ("LOW_BITRATE_KBPS", AtOnce),
        ("LOW_BITRATE_SECS", AtOnce),
        ("METRICS_ADDR", Restart),
    ];
    let table: Vec<(&str, Applies)> = KEYS.iter().map(|k| (k.name, k.applies)).collect();
    assert_eq!(table, expected);

    let base = with(&BASE).unwrap();
    for (name, value) in OTHER_VALUE {
        let key = key(name).unwrap();
        let mut pairs = BASE.to_vec();
        pairs.push((name, value));
        if name == "DESTINATIONS" {
            // A destination's own keys are not in the table.
            pairs.push(("YOUTUBE_URL", "rtmp://y.example/live2"));
        }
        let new = with(&pairs).unwrap();
        let changed: Vec<&str> = changed_keys(&base, &new).iter().map(|k| k.name).collect();
        assert_eq!(changed, [name], "changing {name} alone");
        let plan = match key.applies {
            AtOnce | AtOnceWhileSet | Destination => ReloadPlan::ApplyAtOnce,
            OfflineSource => ReloadPlan::NewOfflineVideo { at_once: false },
            Restart => ReloadPlan::Restart,
        };
        assert_eq!(classify(&base, &new), plan, "{name}");
        assert_eq!(classify(&new, &base), plan, "{name}, back");
    }
    let names: Vec<&str> = OTHER_VALUE.iter().map(|(k, _)| *k).collect();
    let keys: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
    assert_eq!(names, keys);
}

#[test]
fn off_and_derived_keys_change_too() {
    // Switching the low-bitrate rule off is a change of both keys, at once.
    let on = with(&[("LOW_BITRATE_KBPS", "300"), ("LOW_BITRATE_SECS", "5")]).unwrap();
    let off = with(&[]).unwrap();
    assert_eq!(changed_keys(&on, &off).len(), 2);
    assert_eq!(classify(&on, &off), ReloadPlan::ApplyAtOnce);
    // STATS_URL follows HTTP_STATS_PORT when not set: both change.
    let port = with(&[("HTTP_STATS_PORT", "9000")]).unwrap();
    let names: Vec<&str> = changed_keys(&off, &port).iter().map(|k| k.name).collect();
    assert_eq!(names, ["HTTP_STATS_PORT", "STATS_URL"]);
}

/// The README's configuration table lists every key, and nothing else,
/// with the table's default.
#[test]
fn readme_documents_every_key() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md next to Cargo.toml");
    let start = readme
        .find("| Key | Default | Meaning |")
        .expect("the configuration table");
    let rows: Vec<(String, String)> = readme[start..]
        .lines()
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            (cells[1].trim_matches('`').to_owned(), cells[2].to_owned())
        })
        .collect();
    let documented = |key: &Key| match key.default {
        Fallback::Required => "*(required)*".to_owned(),
        Fallback::Text("") => "*(empty)*".to_owned(),
        Fallback::Text(text) | Fallback::Derived(text) => format!("`{text}`"),
        Fallback::Off => "*(off)*".to_owned(),
    };
    let table: Vec<(String, String)> = KEYS
        .iter()
        .map(|key| (key.name.to_owned(), documented(key)))
        .collect();
    let mut readme_order = rows.clone();
    let mut table_order = table.clone();
    readme_order.sort();
    table_order.sort();
    assert_eq!(readme_order, table_order);
    for key in &KEYS {
        assert!(
            !key.doc.is_empty() && !key.doc.contains('\n'),
            "{}",
            key.name
        );
    }
}

/// The README's reload section names exactly the keys that apply at once.
#[test]
fn readme_names_the_keys_a_reload_applies_at_once() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md next to Cargo.toml");
    let start = readme.find("- Only `").expect("the reload section");
    let item = &readme[start..];
    let item = &item[..item.find("\n- ").expect("the next item")];
    for key in &KEYS {
        let named = item.contains(&format!("`{}`", key.name));
        let at_once = matches!(key.applies, Applies::AtOnce | Applies::AtOnceWhileSet);
        assert_eq!(named, at_once, "{}", key.name);
    }
}

#[test]
fn debug_shows_every_key_and_masks_secrets() {
    let c = with(&[
        ("KICK_URL", "rtmp://u:URLSECRET@h.example/app/KEYINURL"),
        ("PUBLISH_KEY", "PKSECRET"),
    ])
    .unwrap();
    let shown = format!("{c:?}");
    for key in &KEYS {
        assert!(shown.contains(&format!("{}: ", key.name)), "{shown}");
    }
    for secret in ["URLSECRET", "KEYINURL", "PKSECRET"] {
        assert!(!shown.contains(secret), "{shown}");
    }
    assert!(shown.contains("KICK_KEY: <empty>"), "{shown}");
    assert!(shown.contains("PUBLISH_KEY: ****"), "{shown}");
    let with_key = with(&[("KICK_KEY", "SKSECRET")]).unwrap();
    assert!(!format!("{with_key:?}").contains("SKSECRET"));
    assert!(!format!("{:?}", with_key.destination).contains("SKSECRET"));
}

#[test]
fn stats_url_default_follows_http_stats_port() {
    let c = with(&[("HTTP_STATS_PORT", "9000")]).unwrap();
    assert_eq!(c.live.stats_url, "http://127.0.0.1:9000/rtmp_stat");
}

#[test]
fn required_keys() {
    let e = Config::from_pairs("t", &[REQUIRED[1]]).unwrap_err();
    assert!(e.to_string().starts_with("KICK_URL: required"), "{e}");
    let e = Config::from_pairs("t", &[REQUIRED[0]]).unwrap_err();
    assert!(
        e.to_string().starts_with("OFFLINE_VIDEO_PATH: required"),
        "{e}"
    );
    // Empty counts as not set.
    let e = error_for(&[("KICK_URL", "  ")]);
    assert!(e.starts_with("KICK_URL: required"), "{e}");
}

#[test]
fn each_bad_value_names_its_key() {
    let cases: &[(&str, &str)] = &[
        ("KICK_URL", "http://x/app"),
        ("KICK_URL", "rtmp://"),
        ("KICK_URL", "rtmp://host/a b"),
        ("KICK_KEY", "sk live"),
        ("RTMP_HOST", "a/b"),
        ("RTMP_HOST", "fe80::1::2"),
        ("RTMP_PORT", "0"),
        ("RTMP_PORT", "65536"),
        ("RTMP_PORT", "http"),
        ("RTMP_APP", "a/b"),
        ("RTMP_STREAM_NAME", "my stream"),
        ("OUT_RES", "1081"),
        ("OUT_RES", "142"),
        ("OUT_RES", "2162"),
        ("OUT_RES", "1080p"),
        ("OUT_FPS", "abc"),
        ("OUT_FPS", "0"),
        ("OUT_FPS", "121"),
        ("OUT_FPS", "29.97"),
        ("VID_BITRATE", "3.5M"),
        ("VID_BITRATE", "0"),
        ("MAX_BITRATE", "3m"),
        ("BUFFER_SIZE", "k"),
        ("BUFFER_SIZE", "99999999999M"),
        ("AUDIO_BITRATE", "-128k"),
        ("AUDIO_SAMPLERATE", "22050"),
        ("POLL_INTERVAL", "0"),
        ("POLL_INTERVAL", "61"),
        ("POLL_INTERVAL", "NaN"),
        ("KILL_GRACE", "-1"),
        ("KILL_GRACE", "inf"),
        ("CRASH_BACKOFF", "301"),
        ("HTTP_STATS_PORT", "99999"),
        ("STATS_URL", "https://127.0.0.1/rtmp_stat"),
        ("STATS_URL", "http:///x"),
        ("ZMQ_PORT", "-1"),
        ("ALLOWED_PUBLISHERS", "internal"),
        ("ALLOWED_PUBLISHERS", "10.0.0.0/33"),
        ("ALLOWED_PUBLISHERS", ","),
        ("PUBLISH_KEY", "a b"),
        ("PUBLISH_KEY", "a&b"),
        ("PUBLISH_KEY", "a%20"),
        ("PUBLISH_AUTH_PORT", "65536"),
        ("PUBLISH_AUTH_PORT", "-1"),
        ("LIVE_SOURCES", "rtmp,webrtc"),
        ("LIVE_SOURCES", "srt,srt"),
        ("LIVE_SOURCES", "srt,"),
        ("SRT_HOST", "relay.example.com"),
        ("SRT_PORT", "0"),
        ("SRT_PASSPHRASE", "short"),
        (
            "SRT_PASSPHRASE",
            "0123456789012345678901234567890123456789012345678901234567890123456789012345678X",
        ),
        ("SRT_PASSPHRASE", "tab\there-long-enough"),
        ("SRT_LATENCY_MS", "10"),
        ("SRT_LATENCY_MS", "8001"),
        ("SRT_LATENCY_MS", "1.5"),
        ("OFFLINE_AFTER_MS", "99"),
        ("OFFLINE_AFTER_MS", "10001"),
        ("OFFLINE_AFTER_MS", "0.5"),
        ("LIVE_STABLE_SECS", "-1"),
        ("LIVE_STABLE_SECS", "61"),
        ("LOW_BITRATE_KBPS", "0"),
        ("METRICS_ADDR", "127.0.0.1"),
        ("METRICS_ADDR", "0.0.0.0:9108"),
        ("METRICS_ADDR", "203.0.113.1:9108"),
    ];
    for (key, value) in cases {
        let e = error_for(&[(key, value)]);
        assert!(e.starts_with(&format!("{key}: ")), "{key}={value:?}: {e}");
        assert!(!e.contains('\n'), "{e}");
    }
}

#[test]
fn error_wording() {
    assert_eq!(
        error_for(&[("OUT_FPS", "abc")]),
        r#"OUT_FPS: "abc" is not a whole number of frames per second (1..=120) [from the given settings]"#
    );
}

#[test]
fn bitrate_forms() {
    let b = |t: &str| parse_bitrate(t).unwrap();
    assert_eq!(
        b("3000k"),
        Bitrate {
            text: "3000k".into(),
            bps: 3_000_000
        }
    );
    assert_eq!(
        b("3000K"),
        Bitrate {
            text: "3000k".into(),
            bps: 3_000_000
        }
    );
    assert_eq!(
        b("3M"),
        Bitrate {
            text: "3M".into(),
            bps: 3_000_000
        }
    );
    assert_eq!(
        b("128000"),
        Bitrate {
            text: "128000".into(),
            bps: 128_000
        }
    );
    assert_eq!(b("0128k").text, "128k");
    assert!(parse_bitrate("3 M").is_err());
    assert!(parse_bitrate("+3M").is_err());
}

#[test]
fn width_is_16_9_rounded_to_even() {
    assert_eq!(width_16_9(1080), 1920);
    assert_eq!(width_16_9(720), 1280);
    assert_eq!(width_16_9(480), 854);
    assert_eq!(width_16_9(180), 320);
    assert_eq!(width_16_9(144), 256);
    assert_eq!(width_16_9(2160), 3840);
    for h in (144..=2160).step_by(2) {
        let w = width_16_9(h);
        assert_eq!(w % 2, 0);
        assert!(
            (f64::from(w) - f64::from(h) * 16.0 / 9.0).abs() <= 1.0,
            "{h} -> {w}"
        );
    }
    assert_eq!(with(&[("OUT_RES", "480")]).unwrap().encoding.width, 854);
}

#[test]
fn allowed_publishers_external() {
    let ext = AllowedPublishers::External;
    let allows = |a: &str| ext.allows(a.parse().unwrap());
    assert!(allows("198.51.100.2"));
    assert!(!allows("10.1.2.3"));
    assert!(!allows("172.31.0.1"));
    assert!(allows("172.32.0.1"));
    assert!(allows("172.15.255.255"));
    assert!(!allows("172.16.0.0"));
    assert!(!allows("192.168.1.1"));
    assert!(allows("192.169.1.1"));
    assert!(!allows("127.0.0.1"));
    assert!(!allows("127.255.0.9"));
    assert!(allows("8.8.8.8"));
    assert!(allows("100.64.0.1"));
    assert!(!allows("::1"));
    assert!(allows("2001:db8::1"));
    assert!(!allows("::ffff:10.1.2.3"));
    assert!(!allows("::ffff:127.0.0.1"));
    assert!(allows("::ffff:198.51.100.2"));
}

#[test]
fn allowed_publishers_parsing_and_cidrs() {
    let parse = |t: &str| {
        with(&[("ALLOWED_PUBLISHERS", t)])
            .unwrap()
            .live
            .allowed_publishers
    };
    assert_eq!(parse("ANY"), AllowedPublishers::Any);
    assert_eq!(parse(" External "), AllowedPublishers::External);
    assert!(AllowedPublishers::Any.allows("10.0.0.1".parse().unwrap()));

    let list = parse("203.0.113.0/24, 127.0.0.1, ::1/128,");
    assert_eq!(list.to_string(), "203.0.113.0/24, 127.0.0.1/32, ::1/128");
    let allows = |a: &str| list.allows(a.parse().unwrap());
    assert!(allows("203.0.113.77"));
    assert!(allows("127.0.0.1"));
    assert!(allows("::ffff:127.0.0.1"));
    assert!(allows("::1"));
    assert!(!allows("127.0.0.2"));
    assert!(!allows("203.0.114.1"));
    assert!(!allows("8.8.8.8"));

    // Host bits in a CIDR are dropped rather than refused.
    assert_eq!(parse("10.1.2.3/8").to_string(), "10.0.0.0/8");
}

#[test]
fn secret_is_masked() {
    let c = with(&[("KICK_KEY", "sk_us_SECRETVALUE")]).unwrap();
    assert_eq!(format!("{}", c.destination.key), "****");
    assert_eq!(format!("{:?}", c.destination.key), "****");
    assert_eq!(format!("{}", Secret::new("")), "<empty>");
    assert_eq!(format!("{:?}", Secret::default()), "<empty>");
    assert!(!format!("{c:?}").contains("SECRETVALUE"));
    assert_eq!(c.output_url_masked(), "rtmps://ingest.example.com/app/****");
    let target = c.output_target();
    assert_eq!(target.url, "rtmps://ingest.example.com/app/");
    assert_eq!(target.stream_name, Some(Secret::new("sk_us_SECRETVALUE")));
    assert!(!target.url_has_secret());
}

#[test]
fn key_inside_url_is_masked_when_kick_key_is_empty() {
    let c = with(&[("KICK_URL", "rtmps://h.example/app/sk_SECRETVALUE")]).unwrap();
    assert_eq!(c.output_url_masked(), "rtmps://h.example/app/****");
    let target = c.output_target();
    assert_eq!(target.url, "rtmps://h.example/app/");
    assert_eq!(target.stream_name, Some(Secret::new("sk_SECRETVALUE")));
    assert!(!target.url_has_secret());

    // An application with an instance: FFmpeg takes the last segment
    // as the stream name, and so does relay.
    let c = with(&[("KICK_URL", "rtmp://h.example/app/inst/SECRETVALUE?a=b/c")]).unwrap();
    let target = c.output_target();
    assert_eq!(target.url, "rtmp://h.example/app/inst/");
    assert_eq!(target.stream_name, Some(Secret::new("SECRETVALUE?a=b/c")));
    assert!(!format!("{c:?}").contains("SECRETVALUE"));

    let c = with(&[("KICK_URL", "rtmp://u:SECRETVALUE@h.example/app?k=1")]).unwrap();
    assert_eq!(c.output_url_masked(), "rtmp://****@h.example/app?****");
    // FFmpeg takes credentials and an application's query only in the
    // URL; `relay check` warns about them.
    assert!(c.output_target().url_has_secret());
    assert_eq!(c.output_target().stream_name, None);

    let c = with(&[("KICK_URL", "rtmp://h.example:1935/app")]).unwrap();
    assert_eq!(c.output_url_masked(), "rtmp://h.example:1935/app");
    assert!(!c.output_target().url_has_secret());
    assert_eq!(c.output_target().stream_name, None);
}

#[test]
fn errors_never_show_the_key() {
    let e = error_for(&[("KICK_KEY", "sk SECRETVALUE")]);
    assert!(e.starts_with("KICK_KEY: "), "{e}");
    assert!(!e.contains("SECRETVALUE"), "{e}");
    let e = error_for(&[("KICK_URL", "rtsp://h/app/SECRETVALUE")]);
    assert!(!e.contains("SECRETVALUE"), "{e}");
    let long = format!("SECRETVALUE{}", "x".repeat(MAX_KEY_LEN));
    let e = error_for(&[("KICK_KEY", &long)]);
    assert!(e.starts_with("KICK_KEY: is longer than"), "{e}");
    assert!(!e.contains("SECRETVALUE"), "{e}");
    let e = error_for(&[("PUBLISH_KEY", "SECRET&VALUE")]);
    assert!(e.starts_with("PUBLISH_KEY: "), "{e}");
    assert!(!e.contains("SECRET"), "{e}");
    let c = with(&[("PUBLISH_KEY", "PKSECRETVALUE")]).unwrap();
    assert!(!format!("{c:?}").contains("PKSECRETVALUE"));

    let dir = tempfile::tempdir().unwrap();
    let bad_toml = write(dir.path(), "k.toml", "kick_key = \"SECRETVALUE\n");
    let e = Config::load_with_env(&Source::File(bad_toml.clone()), &no_env).unwrap_err();
    let e = e.to_string();
    assert!(e.starts_with(&bad_toml.display().to_string()), "{e}");
    assert!(e.contains("line 1"), "{e}");
    assert!(!e.contains("SECRETVALUE"), "{e}");
    assert!(!e.contains('\n'), "{e}");

    let bad_env = write(dir.path(), "k.env", "KICK_KEY SECRETVALUE\n");
    let e = Config::load_with_env(&Source::File(bad_env), &no_env).unwrap_err();
    assert!(!e.to_string().contains("SECRETVALUE"), "{e}");
    let bad_env = write(dir.path(), "k.env", "KICK_KEY SECRET=VALUE\n");
    let e = Config::load_with_env(&Source::File(bad_env), &no_env).unwrap_err();
    assert!(!e.to_string().contains("SECRET"), "{e}");
    let bad_env = write(dir.path(), "k.env", "KICK_KEY=\"SECRETVALUE\n");
    let e = Config::load_with_env(&Source::File(bad_env), &no_env).unwrap_err();
    assert!(!e.to_string().contains("SECRETVALUE"), "{e}");
}

#[test]
fn toml_file_lower_case_names_and_numbers_as_integers_or_strings() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "kick.toml",
        r#"
            # comment
            kick_url = "rtmps://ingest.example.com/app/"
            kick_key = "sk_abc"
            offline_video_path = "/srv/o.mp4"
            rtmp_port = 1937
            out_res = "720"
            poll_interval = 0.25
            kill_grace = 5
        "#,
    );
    let c = Config::load_with_env(&Source::File(path), &no_env).unwrap();
    assert_eq!(c.instance, "kick");
    assert_eq!(c.destination.url, "rtmps://ingest.example.com/app");
    assert_eq!(c.destination.key.expose(), "sk_abc");
    assert_eq!(c.live.rtmp_port, 1937);
    assert_eq!(c.encoding.height, 720);
    assert_eq!(c.live.poll_interval, Duration::from_millis(250));
    assert_eq!(c.supervision.kill_grace, Duration::from_secs(5));
}

#[test]
fn unknown_key_in_toml() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "kick.toml", "kick_ur = \"rtmp://x/app\"\n");
    let e = Config::load_with_env(&Source::File(path.clone()), &no_env).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("unknown key \"kick_ur\" in {}", path.display())
    );

    let path = write(dir.path(), "kick.toml", "KICK_URL = \"rtmp://x/app\"\n");
    let e = Config::load_with_env(&Source::File(path), &no_env).unwrap_err();
    assert!(e.to_string().contains("unknown key \"KICK_URL\""), "{e}");
    assert!(e.to_string().contains("lower case: kick_url"), "{e}");

    let path = write(
        dir.path(),
        "kick.toml",
        "[relay]\nkick_url = \"rtmp://x/app\"\n",
    );
    let e = Config::load_with_env(&Source::File(path), &no_env).unwrap_err();
    assert!(e.to_string().starts_with("unknown key \"relay\""), "{e}");

    let path = write(dir.path(), "kick.toml", "out_res = [720]\n");
    let e = Config::load_with_env(&Source::File(path), &no_env).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("OUT_RES: expected a single value"),
        "{e}"
    );
}

#[test]
fn unknown_key_in_env_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "kick.env",
        "# c\nKICK_URL=rtmp://x/app\nOUT_RESS=720\n",
    );
    let e = Config::load_with_env(&Source::File(path.clone()), &no_env).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("unknown key \"OUT_RESS\" in {}, line 3", path.display())
    );
    let path = write(dir.path(), "kick.env", "out_res=720\n");
    let e = Config::load_with_env(&Source::File(path), &no_env).unwrap_err();
    assert!(e.to_string().contains("upper case here: OUT_RES"), "{e}");
}

#[test]
fn unknown_key_in_pairs() {
    let e = with(&[("KICK_UR", "x")]).unwrap_err();
    assert!(e.to_string().starts_with("unknown key \"KICK_UR\""), "{e}");
}

#[test]
fn env_file_syntax() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "kick.env",
        "\u{feff}# a comment\n\
         \n\
         export KICK_URL=\"rtmps://ingest.example.com/app\"\r\n\
         \tKICK_KEY = 'sk_a\"b'  \n\
         OFFLINE_VIDEO_PATH=/srv/with space.mp4\n\
         export  OUT_RES = 720\n\
         OUT_FPS=\"\"\n\
         RTMP_APP=\"a=b\"\n\
         RTMP_STREAM_NAME=cam\n",
    );
    let c = Config::load_with_env(&Source::File(path), &no_env).unwrap();
    assert_eq!(c.destination.url, "rtmps://ingest.example.com/app");
    assert_eq!(c.destination.key.expose(), "sk_a\"b");
    assert_eq!(c.offline_video_path, PathBuf::from("/srv/with space.mp4"));
    assert_eq!(c.encoding.height, 720);
    assert_eq!(c.encoding.fps, 30, "an empty value means the default");
    assert_eq!(c.live.rtmp_app, "a=b");
    assert_eq!(c.live.rtmp_stream_name, "cam");
}

#[test]
fn env_file_line_without_equals() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "kick.env",
        "KICK_URL=rtmp://x/app\n\nOUT_RES 720\n",
    );
    let e = Config::load_with_env(&Source::File(path.clone()), &no_env).unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with(&format!("{}, line 3: ", path.display())),
        "{text}"
    );
    assert!(matches!(e, ConfigError::Syntax { line: Some(3), .. }));
}

#[test]
fn unsupported_extension_and_unreadable_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "kick.yaml", "kick_url: x\n");
    let e = Config::load_with_env(&Source::File(path), &no_env).unwrap_err();
    assert!(matches!(e, ConfigError::UnsupportedFormat { .. }), "{e}");
    assert!(e.to_string().contains("NAME.toml, NAME.env"), "{e}");
    let path = write(dir.path(), "envy", "KICK_URL=x\n");
    let e = Config::load_with_env(&Source::File(path), &no_env).unwrap_err();
    assert!(matches!(e, ConfigError::UnsupportedFormat { .. }), "{e}");

    let missing = dir.path().join("nope.toml");
    let e = Config::load_with_env(&Source::File(missing.clone()), &no_env).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("cannot read {}", missing.display())),
        "{e}"
    );
}

#[test]
fn environment_overrides_file_and_ignores_unrelated_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "kick.toml",
        "kick_url = \"rtmp://file/app\"\noffline_video_path = \"/f.mp4\"\nout_res = 720\nout_fps = 25\n",
    );
    let env = env_from(&[
        ("OUT_RES", "480"),
        ("PATH", "/usr/bin"),
        ("out_fps", "60"),
        ("HOME", "/root"),
        ("KICK_KEY", ""),
    ]);
    let c = Config::load_with_env(&Source::File(path), &env).unwrap();
    assert_eq!(c.encoding.height, 480, "environment wins over the file");
    assert_eq!(c.encoding.fps, 25, "lower-case variables are not keys");
    assert_eq!(c.destination.url, "rtmp://file/app");
}

#[test]
fn bad_environment_value_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "kick.env",
        "KICK_URL=rtmp://file/app\nOFFLINE_VIDEO_PATH=/f.mp4\nZMQ_PORT=1\n",
    );
    let env = env_from(&[("ZMQ_PORT", "x")]);
    let e = Config::load_with_env(&Source::File(path.clone()), &env).unwrap_err();
    assert!(e.to_string().starts_with("ZMQ_PORT: \"x\""), "{e}");
    assert!(e.to_string().ends_with("[from the environment]"), "{e}");

    let env = env_from(&[]);
    let path = write(
        dir.path(),
        "kick.env",
        "KICK_URL=rtmp://file/app\nOFFLINE_VIDEO_PATH=/f.mp4\nZMQ_PORT=y\n",
    );
    let e = Config::load_with_env(&Source::File(path.clone()), &env).unwrap_err();
    assert!(
        e.to_string()
            .ends_with(&format!("[from {}]", path.display())),
        "{e}"
    );
}

#[test]
fn instance_lookup_in_config_dir() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "kick.toml",
        "kick_url = \"rtmp://toml/app\"\noffline_video_path = \"/t.mp4\"\nout_res = 720\nout_fps = 25\n",
    );
    let dir_text = dir.path().to_str().unwrap();
    let env = env_from(&[("RELAY_CONFIG_DIR", dir_text)]);
    let c = Config::load_with_env(&Source::Instance("kick".into()), &env).unwrap();
    assert_eq!(c.instance, "kick");
    assert_eq!((c.encoding.height, c.encoding.fps), (720, 25));

    // The .env file overrides the .toml file, the environment both.
    write(dir.path(), "kick.env", "OUT_RES=480\nOUT_FPS=50\n");
    let env = env_from(&[("RELAY_CONFIG_DIR", dir_text), ("OUT_FPS", "60")]);
    let c = Config::load_with_env(&Source::Instance("kick".into()), &env).unwrap();
    assert_eq!((c.encoding.height, c.encoding.fps), (480, 60));
    assert_eq!(c.destination.url, "rtmp://toml/app");

    // .env alone is enough.
    std::fs::remove_file(dir.path().join("kick.toml")).unwrap();
    let e = Config::load_with_env(&Source::Instance("kick".into()), &env).unwrap_err();
    assert!(e.to_string().starts_with("KICK_URL: required"), "{e}");
}

#[test]
fn missing_instance_names_both_paths() {
    let dir = tempfile::tempdir().unwrap();
    let env = env_from(&[("RELAY_CONFIG_DIR", dir.path().to_str().unwrap())]);
    let e = Config::load_with_env(&Source::Instance("kick".into()), &env).unwrap_err();
    let d = dir.path().display();
    assert_eq!(
        e.to_string(),
        format!(
            "no configuration for instance \"kick\": neither {d}/kick.toml nor {d}/kick.env exists"
        )
    );
}

#[test]
fn default_config_dir() {
    let e =
        Config::load_with_env(&Source::Instance("no-such-instance-x".into()), &no_env).unwrap_err();
    assert!(
        e.to_string().contains(
            "neither /etc/relay/no-such-instance-x.toml nor /etc/relay/no-such-instance-x.env"
        ),
        "{e}"
    );
}

#[test]
fn instance_name_must_be_plain() {
    for name in ["", "../etc/passwd", "a/b", ".hidden"] {
        let e = Config::load_with_env(&Source::Instance(name.into()), &no_env).unwrap_err();
        assert!(matches!(e, ConfigError::InstanceName(_)), "{name}: {e}");
    }
}

#[test]
fn exit_code_is_sysexits_config() {
    assert_eq!(EX_CONFIG, 78);
}

#[test]
fn the_docker_setups_keys_load_with_a_notice_each() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("COMPOSE_PROJECT_NAME=relay1\n");
    text.push_str("KICK_URL=rtmps://ingest.example.com:443/app\n");
    text.push_str("KICK_KEY=sk_test_123\n");
    text.push_str("OFFLINE_VIDEO_PATH=/srv/offline.mp4\n");
    text.push_str("LOG_DIR=./logs\n");
    let env = write(dir.path(), "relay1.env", &text);
    let config = Config::load_with_env(&Source::File(env.clone()), &no_env).unwrap();
    assert_eq!(config.notices.len(), 2, "{:?}", config.notices);
    assert!(config.notices[0].starts_with("COMPOSE_PROJECT_NAME in "));
    assert!(config.notices[1].contains("journalctl -u relay@NAME"));
    assert!(config.notices[1].contains("(line 5)"));
    // Not a secret, but a notice never quotes a line back either.
    assert!(config.notices.iter().all(|n| !n.contains("./logs")));

    // In TOML too, lower case.
    let toml = write(
        dir.path(),
        "relay2.toml",
        "kick_url = \"rtmps://ingest.example.com:443/app\"\nkick_key = \"sk\"\n\
         offline_video_path = \"/srv/offline.mp4\"\nlog_dir = \"./logs\"\n",
    );
    let config = Config::load_with_env(&Source::File(toml), &no_env).unwrap();
    assert_eq!(config.notices.len(), 1, "{:?}", config.notices);

    // Every other unknown key still fails.
    let env = write(
        dir.path(),
        "relay3.env",
        &format!("{text}LOG_LEVEL=debug\n"),
    );
    let err = Config::load_with_env(&Source::File(env), &no_env).unwrap_err();
    assert!(
        matches!(err, ConfigError::UnknownKey { ref key, .. } if key == "LOG_LEVEL"),
        "{err}"
    );
}

/// The Docker setup's own examples (tests/fixtures/seed), byte for byte:
/// its `.env.example` and the three `.env.relayN` files of its
/// multi-instance section load, with one notice per key relay ignores.
#[test]
fn the_docker_setups_examples_load_verbatim() {
    let dir = tempfile::tempdir().unwrap();
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seed");
    let load = |name: &str| {
        let text = std::fs::read_to_string(seed.join(name)).unwrap();
        // Named as the seed names them: .env.example, .env.relay1, ...
        let path = write(dir.path(), &format!(".{name}"), &text);
        Config::load_with_env(&Source::File(path), &no_env)
            .unwrap_or_else(|e| panic!("the seed's {name} does not load: {e}"))
    };

    let example = load("env.example");
    assert_eq!(example.instance, "example");
    assert_eq!(example.live.rtmp_port, 1936);
    assert_eq!(example.live.rtmp_stream_name, "mystream");
    assert_eq!(example.encoding.height, 1080);
    assert_eq!(
        example.encoding.vid_bitrate,
        parse_bitrate("6000k").unwrap()
    );
    assert_eq!(example.encoding.buffer_size, parse_bitrate("12M").unwrap());
    assert_eq!(example.supervision.crash_backoff, Duration::from_secs(2));
    assert_eq!(example.notices.len(), 1, "{:?}", example.notices);
    assert!(example.notices[0].contains("LOG_DIR"));

    for (name, port, stats, url) in [
        ("env.relay1", 1936, 8080, "rtmps://your-kick-ingest.net/app"),
        ("env.relay2", 1937, 8081, "rtmp://a.rtmp.youtube.com/live2"),
        ("env.relay3", 1938, 8082, "rtmp://live.twitch.tv/app"),
    ] {
        let config = load(name);
        assert_eq!(config.instance, &name[4..], "{name}");
        assert_eq!(config.live.rtmp_port, port, "{name}");
        assert_eq!(config.live.http_stats_port, stats, "{name}");
        assert_eq!(config.destination.url, url, "{name}");
        assert_eq!(config.notices.len(), 2, "{name}: {:?}", config.notices);
        assert!(config
            .notices
            .iter()
            .any(|n| n.contains("COMPOSE_PROJECT_NAME")));
        assert!(config.notices.iter().any(|n| n.contains("LOG_DIR")));
    }
}

// ---------------------------------------------------------------------------
// DESTINATIONS
// ---------------------------------------------------------------------------

#[test]
fn destinations_default_to_kick_alone() {
    let config = with(&[("KICK_KEY", "sk_k")]).unwrap();
    assert_eq!(config.destination_names, ["kick"]);
    assert_eq!(config.destinations.len(), 1);
    assert_eq!(config.destinations[0].name, "kick");
    assert_eq!(config.destinations[0].destination, config.destination);
}

#[test]
fn every_destination_has_its_url_and_key() {
    let config = with(&[
        ("DESTINATIONS", "kick, youtube,twitch_2"),
        ("YOUTUBE_URL", "rtmp://a.rtmp.youtube.com/live2/"),
        ("YOUTUBE_KEY", "yt-SECRET"),
        ("TWITCH_2_URL", "rtmps://live.twitch.tv/app/tw_SECRET"),
    ])
    .unwrap();
    let names: Vec<&str> = config
        .destinations
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    assert_eq!(names, ["kick", "youtube", "twitch_2"]);
    let youtube = config.destinations[1].destination.target();
    assert_eq!(youtube.url, "rtmp://a.rtmp.youtube.com/live2/");
    assert_eq!(youtube.stream_name.unwrap().expose(), "yt-SECRET");
    // The key split off the URL, as for KICK_URL.
    let twitch = config.destinations[2].destination.target();
    assert_eq!(twitch.url, "rtmps://live.twitch.tv/app/");
    assert_eq!(twitch.stream_name.unwrap().expose(), "tw_SECRET");
    let debug = format!("{config:?}");
    assert!(!debug.contains("SECRET"), "{debug}");
}

#[test]
fn kick_url_is_required_only_while_destinations_names_kick() {
    let config = Config::from_pairs(
        "t",
        &[
            ("DESTINATIONS", "youtube"),
            ("YOUTUBE_URL", "rtmp://h/app"),
            ("YOUTUBE_KEY", "k"),
            ("OFFLINE_VIDEO_PATH", "/o.mp4"),
        ],
    )
    .unwrap();
    assert_eq!(config.destinations.len(), 1);
    let e = Config::from_pairs("t", &[("OFFLINE_VIDEO_PATH", "/o.mp4")]).unwrap_err();
    assert!(e.to_string().starts_with("KICK_URL: required"), "{e}");
}

#[test]
fn destination_errors_name_the_key() {
    for (extra, expect) in [
        (vec![("DESTINATIONS", "kick,Youtube")], "DESTINATIONS:"),
        (vec![("DESTINATIONS", "kick,you-tube")], "DESTINATIONS:"),
        (vec![("DESTINATIONS", "kick,")], "DESTINATIONS:"),
        (vec![("DESTINATIONS", "kick,kick")], "twice"),
        (
            vec![("DESTINATIONS", "kick,stats")],
            "STATS_URL, which is another setting",
        ),
        (
            vec![("DESTINATIONS", "kick,publish")],
            "PUBLISH_KEY, which is another setting",
        ),
        (
            vec![("DESTINATIONS", "kick,youtube")],
            "YOUTUBE_URL: required",
        ),
        (
            vec![
                ("DESTINATIONS", "kick,youtube"),
                ("YOUTUBE_URL", "http://h/app"),
            ],
            "YOUTUBE_URL: must be an rtmp:// or rtmps:// URL",
        ),
        (
            vec![
                ("DESTINATIONS", "kick,youtube"),
                ("YOUTUBE_URL", "rtmp://h/app"),
                ("YOUTUBE_KEY", "a b"),
            ],
            "YOUTUBE_KEY: must not contain spaces",
        ),
        (
            vec![("YOUTUBE_URL", "rtmp://h/app")],
            "unknown key \"YOUTUBE_URL\"",
        ),
    ] {
        let e = error_for(&extra);
        assert!(e.contains(expect), "{extra:?}: {e}");
    }
}

#[test]
fn destination_keys_in_files_and_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let toml = write(
        dir.path(),
        "a.toml",
        "destinations = \"kick,youtube\"\nkick_url = \"rtmp://k/app\"\nyoutube_url = \"rtmp://y/live2\"\noffline_video_path = \"/o.mp4\"\n",
    );
    let env = env_from(&[("YOUTUBE_KEY", "yt_SECRET")]);
    let config = Config::load_with_env(&Source::File(toml), &env).unwrap();
    let youtube = &config.destinations[1].destination;
    assert_eq!(youtube.url, "rtmp://y/live2");
    assert_eq!(youtube.key.expose(), "yt_SECRET");
    // A key in a world-readable file is refused, as KICK_KEY is.
    let env_file = write(
        dir.path(),
        "b.env",
        "DESTINATIONS=kick,youtube\nKICK_URL=rtmp://k/app\nYOUTUBE_URL=rtmp://y/live2\nYOUTUBE_KEY=yt_SECRET\nOFFLINE_VIDEO_PATH=/o.mp4\n",
    );
    Config::load_with_env(&Source::File(env_file.clone()), &no_env).unwrap();
    chmod(&env_file, 0o644);
    let e = Config::load_with_env(&Source::File(env_file), &no_env).unwrap_err();
    assert!(matches!(e, ConfigError::Exposed { .. }), "{e}");
    // The environment's other keys are ignored unless DESTINATIONS names them.
    let toml = write(
        dir.path(),
        "c.toml",
        "kick_url = \"rtmp://k/app\"\noffline_video_path = \"/o.mp4\"\n",
    );
    let env = env_from(&[("YOUTUBE_URL", "rtmp://y/live2")]);
    let config = Config::load_with_env(&Source::File(toml), &env).unwrap();
    assert_eq!(config.destinations.len(), 1);
}
