//! The Debian package on a real systemd.
//!
//! One test, in steps, because every step needs the same booted system:
//!
//! 1. builds the .deb with `cargo deb` (or takes `RELAY_TEST_DEB`) and runs
//!    lintian on it: no errors, no missing manual page; the manual pages,
//!    shell completions and copyright file are in it, and `man -l` renders
//!    the pages;
//! 2. boots a Debian 12 tree with `systemd-nspawn --boot --private-network`
//!    (its own network namespace: all traffic stays on its loopback), and
//!    installs the .deb there with apt;
//! 3. checks the units (`systemd-analyze verify` and `security`), the
//!    relay-rtmp nginx instance the package starts, and then relay@NAME for real: start
//!    to READY with the output at a sink, live and back to offline, a killed
//!    output FFmpeg, two instances at once, the watchdog, reload, upgrade,
//!    stop, a bad configuration, and finally `apt purge`.
//!
//! The tree is debootstrapped once, with the package's dependencies, and
//! kept in `RELAY_TEST_CACHE` (default `/var/cache/relay-tests`). Each run
//! boots a fresh copy and removes it afterwards, also when a step fails.
//!
//! Needs root, `debootstrap`, `systemd-container`, `lintian`, `man-db` and cargo-deb
//! (`cargo install cargo-deb --locked`). The first run downloads from the
//! Debian mirror (`RELAY_TEST_MIRROR` overrides debootstrap's default).

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

const SUITE: &str = "bookworm";
/// Bump when the way the cached tree is built changes.
const RECIPE: &str = "1";
/// What the tree has besides the package's own dependencies.
const BASE_PACKAGES: &str = "systemd,systemd-sysv,dbus,apt,ca-certificates";
/// Only for the test: reading the stat pages.
const TEST_PACKAGES: [&str; 1] = ["curl"];
const PATH_INSIDE: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The sink: a private nginx-rtmp inside the container, `out` application on
/// 1937, stat page on 8091, run as a transient unit.
const SINK_CONF: &str = r#"daemon off;
master_process off;
worker_processes 1;
error_log /srv/sink/error.log;
pid /srv/sink/nginx.pid;
load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;
events { worker_connections 64; }
rtmp { server { listen 127.0.0.1:1937; application out { live on; } } }
http {
    access_log off;
    client_body_temp_path /srv/sink/tmp;
    proxy_temp_path /srv/sink/tmp;
    fastcgi_temp_path /srv/sink/tmp;
    uwsgi_temp_path /srv/sink/tmp;
    scgi_temp_path /srv/sink/tmp;
    server { listen 127.0.0.1:8091; location /stat { rtmp_stat all; } }
}
"#;

/// Small and cheap: the test checks systemd and the package, not encoding.
const INSTANCE_COMMON: &str = "OFFLINE_VIDEO_PATH=/srv/relay/offline.mp4
OUT_RES=240
OUT_FPS=15
VID_BITRATE=300k
MAX_BITRATE=400k
BUFFER_SIZE=800k
AUDIO_BITRATE=64k
ALLOWED_PUBLISHERS=any
";

#[test]
fn deb_installs_and_runs_under_systemd() {
    let started = Instant::now();
    let mut steps = Steps::new();
    preflight();

    let deb = build_deb();
    steps.done("build the .deb");

    lintian(&deb);
    check_contents(&deb);
    steps.done("lintian, contents");

    let depends = package_depends(&deb);
    let cache = Cache::new();
    let tree = cache.tree(&depends);
    steps.done("cached Debian tree");

    let ct = Container::boot(&cache, &tree);
    steps.done("boot the container");

    install(&ct, &deb);
    steps.done("apt install ./relay.deb");

    check_installation(&ct);
    check_unit(&ct);
    steps.done("verify, security, nginx -t");

    prepare_sink_and_media(&ct);
    steps.done("sink and offline video");

    start_and_stream(&ct);
    steps.done("relay@demo streams");

    live_and_back(&ct);
    steps.done("live and back to offline");

    output_killed(&ct);
    steps.done("killed output ffmpeg recovered");

    two_instances(&ct);
    steps.done("two instances");

    watchdog(&ct);
    steps.done("watchdog");

    reload_and_upgrade(&ct, &deb);
    steps.done("reload and upgrade");

    stop_leaves_nothing(&ct);
    steps.done("stop");

    bad_config(&ct);
    steps.done("bad configuration");

    purge(&ct);
    steps.done("apt purge");

    drop(ct);
    steps.done("shut down");
    eprintln!(
        "package test: all steps passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------
// The checks

fn install(ct: &Container, deb: &Path) {
    let name = deb.file_name().unwrap().to_str().unwrap();
    fs::copy(deb, ct.root.join("root").join(name)).expect("copy the .deb into the container");
    let out = ct.sh(&format!(
        "cd /root && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ./{name}"
    ));
    assert!(
        out.status.success(),
        "apt-get install ./{name} failed (the container has no network: every dependency \
         must already be in the cached tree):\n{}",
        show(&out)
    );
}

fn check_installation(ct: &Container) {
    ct.ok("grep -q 'Permission is hereby granted' /usr/share/doc/relay/copyright");
    // Nothing is configured yet: relay status lists no instance (the
    // example is not one) and succeeds.
    let listed = ct.ok("relay status");
    assert!(listed.trim().is_empty(), "relay status:\n{listed}");
    assert_eq!(
        ct.ok("stat -c '%U:%G %a' /etc/relay").trim(),
        "root:relay 750"
    );
    assert_eq!(
        ct.ok("getent passwd relay | cut -d: -f6,7").trim(),
        "/nonexistent:/usr/sbin/nologin"
    );
    ct.ok("test -f /etc/relay/example.env && grep -qx '/etc/relay/example.env' /var/lib/dpkg/info/relay.conffiles");
    // The stream key in the example is a placeholder.
    ct.ok("grep -qx '#KICK_KEY=REPLACE-WITH-YOUR-STREAM-KEY' /etc/relay/example.env");
    // relay-rtmp.service: the single-worker nginx-rtmp, enabled and running;
    // the nginx.service of the host keeps Debian's configuration untouched.
    assert_eq!(ct.prop("relay-rtmp", "ActiveState"), "active");
    assert_eq!(ct.prop("relay-rtmp", "UnitFileState"), "enabled");
    ct.ok("nginx -t -q -c /etc/nginx/relay-rtmp.conf");
    ct.ok("nginx -t -q && dpkg --verify nginx-common");
    assert_eq!(ct.prop("nginx", "ActiveState"), "active");
    wait_for(Duration::from_secs(10), "the relay-rtmp stat page", || {
        ct.sh("curl -fsS http://127.0.0.1:8080/rtmp_stat")
            .status
            .success()
    });
}

fn check_unit(ct: &Container) {
    let out = ct.sh("systemd-analyze verify relay@demo.service relay-rtmp.service");
    let text = show(&out);
    assert!(
        out.status.success() && !text.contains("relay"),
        "systemd-analyze verify:\n{text}"
    );
    for unit in ["relay@demo.service", "relay-rtmp.service"] {
        let security = ct.ok(&format!("systemd-analyze security --no-pager {unit}"));
        let line = security
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or_else(|| panic!("no overall rating in:\n{security}"));
        eprintln!("package test: {}", line.trim());
        let exposure: f64 = line
            .split(':')
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("cannot read the exposure in {line:?}"));
        assert!(
            exposure < 5.0 && (line.contains("OK") || line.contains("SAFE")),
            "exposure too high: {line}\n{security}"
        );
    }
}

fn prepare_sink_and_media(ct: &Container) {
    fs::create_dir_all(ct.root.join("srv/sink/tmp")).unwrap();
    fs::write(ct.root.join("srv/sink/nginx.conf"), SINK_CONF).unwrap();
    ct.ok("systemd-run --unit=sink nginx -p /srv/sink -c /srv/sink/nginx.conf");
    fs::create_dir_all(ct.root.join("srv/relay")).unwrap();
    ct.ok(
        "ffmpeg -hide_banner -loglevel error -f lavfi -i testsrc2=s=426x240:r=15 \
         -f lavfi -i sine=frequency=440 -t 4 -c:v libx264 -preset ultrafast -g 15 \
         -c:a aac -shortest -y /srv/relay/offline.mp4",
    );
    write_instance(
        ct,
        "demo",
        "KICK_URL=rtmp://127.0.0.1:1937/out\nKICK_KEY=demo\nRTMP_STREAM_NAME=mystream\nPUBLISH_KEY=pk-demo\n",
    );
    write_instance(
        ct,
        "demo2",
        "KICK_URL=rtmp://127.0.0.1:1937/out/\nKICK_KEY=demo2\nRTMP_STREAM_NAME=second\nZMQ_PORT=5560\nPUBLISH_AUTH_PORT=0\n",
    );
    // The stream key is for root and the relay group only.
    ct.ok("! setpriv --reuid=nobody --regid=nogroup --clear-groups cat /etc/relay/demo.env");
    ct.ok("setpriv --reuid=relay --regid=relay --init-groups cat /etc/relay/demo.env >/dev/null");
    wait_for(Duration::from_secs(10), "the sink's stat page", || {
        ct.sh("curl -fsS http://127.0.0.1:8091/stat")
            .status
            .success()
    });
}

/// Writes /etc/relay/NAME.env as documented: root:relay 0640.
fn write_instance(ct: &Container, name: &str, lines: &str) {
    let path = ct.root.join(format!("etc/relay/{name}.env"));
    fs::write(&path, format!("{lines}{INSTANCE_COMMON}")).unwrap();
    ct.ok(&format!(
        "chown root:relay /etc/relay/{name}.env && chmod 0640 /etc/relay/{name}.env"
    ));
}

fn start_and_stream(ct: &Container) {
    // Type=notify: start returns once relay sent READY=1, i.e. the output streams.
    let out = ct.sh("systemctl start relay@demo");
    assert!(
        out.status.success(),
        "systemctl start relay@demo failed:\n{}\n{}",
        show(&out),
        ct.journal("relay@demo")
    );
    assert_eq!(ct.prop("relay@demo", "ActiveState"), "active");
    wait_for(
        Duration::from_secs(20),
        "relay@demo publishing at the sink",
        || sink_publishing(ct, "demo"),
    );
    let journal = ct.journal("relay@demo");
    assert!(journal.contains("output streaming"), "journal:\n{journal}");
    let status = ct.sh("systemctl status --no-pager --lines=0 relay@demo");
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(
        status.contains("Status: \"") && status.contains("offline"),
        "no STATUS line in systemctl status:\n{status}"
    );
    // Logged to the journal as relay, with its own fields.
    ct.ok("journalctl -u relay@demo SYSLOG_IDENTIFIER=relay -o cat | grep -q 'relay starting'");
    // The offline source reads relay's own copy of the offline video, or
    // the normalised copy made from it, both on disk under the cache
    // directory.
    let main_pid = ct.prop("relay@demo", "MainPID");
    ct.ok(&format!(
        "ls /var/cache/relay/demo/demo-offline-* && for i in $(seq 20); do pgrep -P {main_pid} -f -- '-stream_loop' | xargs -I{{}} cat /proc/{{}}/cmdline | tr '\\0' ' ' | grep -Eq '/var/cache/relay/demo/demo-(offline|normalised)-' && exit 0; sleep 0.5; done; exit 1"
    ));
}

fn live_and_back(ct: &Container) {
    // relay-rtmp asks relay@demo (on_publish): without its PUBLISH_KEY a
    // publisher is refused at nginx and logged.
    ct.ok("! timeout 20 ffmpeg -hide_banner -loglevel error -re \
         -f lavfi -i color=c=red:s=320x180:r=15 -t 5 \
         -c:v libx264 -preset ultrafast -g 15 -f flv \
         'rtmp://127.0.0.1:1936/live/mystream?key=wrong'");
    wait_journal(ct, "relay@demo", "publish refused", Duration::from_secs(10));
    ct.ok(
        "systemd-run --unit=publisher ffmpeg -hide_banner -loglevel error -re \
         -f lavfi -i color=c=blue:s=320x180:r=15 -f lavfi -i sine=frequency=880 \
         -c:v libx264 -preset ultrafast -g 15 -c:a aac -f flv \
         'rtmp://127.0.0.1:1936/live/mystream?key=pk-demo'",
    );
    wait_journal(ct, "relay@demo", "on air: live", Duration::from_secs(30));
    wait_for(Duration::from_secs(10), "STATUS says live", || {
        ct.prop("relay@demo", "StatusText").starts_with("live")
    });
    ct.ok("systemctl stop publisher");
    wait_journal(
        ct,
        "relay@demo",
        "on air: offline video",
        Duration::from_secs(15),
    );
    // One output session at the sink the whole time.
    assert_eq!(sink_publishers(ct, "demo"), 1);
}

fn output_killed(ct: &Container) {
    let main_pid = ct.prop("relay@demo", "MainPID");
    let restarts = ct.prop("relay@demo", "NRestarts");
    let starts_before = count(&ct.journal("relay@demo"), "output started");
    // The encoder: the destinations' pushers report -progress as well.
    let output_pid = ct.ok(&format!("pgrep -P {main_pid} -f -- 'streamselect'"));
    let output_pid = output_pid.trim();
    assert!(
        !output_pid.is_empty() && !output_pid.contains('\n'),
        "output ffmpeg: {output_pid:?}"
    );
    ct.ok(&format!("kill -KILL {output_pid}"));
    wait_for(Duration::from_secs(20), "output started again", || {
        count(&ct.journal("relay@demo"), "output started") > starts_before
    });
    wait_for(Duration::from_secs(20), "back at the sink", || {
        sink_publishing(ct, "demo")
    });
    assert_eq!(ct.prop("relay@demo", "ActiveState"), "active");
    assert_eq!(
        ct.prop("relay@demo", "MainPID"),
        main_pid,
        "relay itself restarted"
    );
    assert_eq!(ct.prop("relay@demo", "NRestarts"), restarts);
}

fn two_instances(ct: &Container) {
    let out = ct.sh("systemctl start relay@demo2");
    assert!(
        out.status.success(),
        "start relay@demo2:\n{}\n{}",
        show(&out),
        ct.journal("relay@demo2")
    );
    wait_for(Duration::from_secs(20), "relay@demo2 at the sink", || {
        sink_publishing(ct, "demo2")
    });
    assert_eq!(ct.prop("relay@demo", "ActiveState"), "active");
    assert_eq!(ct.prop("relay@demo2", "ActiveState"), "active");
    assert!(sink_publishing(ct, "demo"));
    ct.ok("systemctl stop relay@demo2");
}

fn watchdog(ct: &Container) {
    let dropin = ct.root.join("etc/systemd/system/relay@demo.service.d");
    fs::create_dir_all(&dropin).unwrap();
    fs::write(dropin.join("watchdog.conf"), "[Service]\nWatchdogSec=5s\n").unwrap();
    ct.ok("systemctl daemon-reload && systemctl restart relay@demo");
    assert_eq!(ct.prop("relay@demo", "WatchdogUSec"), "5s");
    let restarts: u32 = ct.prop("relay@demo", "NRestarts").parse().unwrap();
    let frozen = ct.prop("relay@demo", "MainPID");
    // A healthy relay keeps the watchdog fed.
    sleep(Duration::from_secs(7));
    assert_eq!(
        ct.prop("relay@demo", "MainPID"),
        frozen,
        "restarted while healthy"
    );
    ct.ok(&format!("kill -STOP {frozen}"));
    wait_for(
        Duration::from_secs(60),
        "the watchdog restarts the frozen relay",
        || {
            ct.prop("relay@demo", "NRestarts").parse::<u32>().unwrap() > restarts
                && ct.prop("relay@demo", "ActiveState") == "active"
                && ct.prop("relay@demo", "MainPID") != frozen
        },
    );
    let journal = ct.journal("relay@demo");
    assert!(journal.contains("Watchdog timeout"), "journal:\n{journal}");
    fs::remove_dir_all(&dropin).unwrap();
    ct.ok("systemctl daemon-reload");
}

fn reload_and_upgrade(ct: &Container, deb: &Path) {
    // systemctl reload re-reads the configuration in the same process: an
    // unchanged one changes nothing, and the unit is never restarted.
    let pid = ct.prop("relay@demo", "MainPID");
    ct.ok("systemctl reload relay@demo");
    wait_for(Duration::from_secs(30), "the reload in the journal", || {
        ct.journal("relay@demo")
            .contains("reload: the configuration is unchanged")
    });
    assert_eq!(
        ct.prop("relay@demo", "MainPID"),
        pid,
        "reload must not restart relay"
    );
    assert_eq!(ct.prop("relay@demo", "ActiveState"), "active");
    // An upgrade (here: the same version again) restarts running instances.
    let before = ct.prop("relay@demo", "MainPID");
    let name = deb.file_name().unwrap().to_str().unwrap();
    let out = ct.sh(&format!(
        "cd /root && DEBIAN_FRONTEND=noninteractive apt-get install -y --reinstall ./{name}"
    ));
    assert!(out.status.success(), "reinstall:\n{}", show(&out));
    wait_for(Duration::from_secs(30), "restarted by the upgrade", || {
        ct.prop("relay@demo", "ActiveState") == "active"
            && ct.prop("relay@demo", "MainPID") != before
    });
    assert_eq!(
        ct.ok("stat -c '%U:%G %a' /etc/relay").trim(),
        "root:relay 750"
    );
}

fn stop_leaves_nothing(ct: &Container) {
    ct.ok("systemctl stop relay@demo");
    assert_eq!(ct.prop("relay@demo", "ActiveState"), "inactive");
    assert_eq!(ct.prop("relay@demo", "Result"), "success");
    let left = ct.sh("pgrep -a ffmpeg");
    assert!(
        !left.status.success(),
        "ffmpeg left after stop:\n{}",
        show(&left)
    );
    let journal = ct.journal("relay@demo");
    assert!(journal.contains("stopped"), "journal:\n{journal}");
    // relay's copy of the offline video goes with it.
    ct.ok("test -d /var/cache/relay/demo && ! ls /var/cache/relay/demo | grep -q .");
}

fn bad_config(ct: &Container) {
    write_instance(ct, "bad", "KICK_URL=ftp://127.0.0.1/nope\n");
    let out = ct.sh("systemctl start relay@bad");
    assert!(!out.status.success(), "relay@bad started");
    // Longer than RestartSec: a restart would have happened by now.
    sleep(Duration::from_secs(5));
    assert_eq!(ct.prop("relay@bad", "ActiveState"), "failed");
    assert_eq!(ct.prop("relay@bad", "NRestarts"), "0");
    assert_eq!(ct.prop("relay@bad", "ExecMainStatus"), "78");
    let journal = ct.journal("relay@bad");
    assert!(
        journal.contains("KICK_URL") && journal.contains("bad.env"),
        "journal:\n{journal}"
    );
}

fn purge(ct: &Container) {
    let out = ct.sh("DEBIAN_FRONTEND=noninteractive apt-get purge -y relay");
    assert!(out.status.success(), "apt-get purge relay:\n{}", show(&out));
    ct.ok("test ! -e /etc/relay && test ! -e /var/cache/relay");
    ct.ok("! getent passwd relay && ! getent group relay");
    ct.ok("test ! -e /lib/systemd/system/relay@.service && test ! -e /usr/bin/relay");
    ct.ok(
        "test ! -e /lib/systemd/system/relay-rtmp.service && test ! -e /etc/nginx/relay-rtmp.conf",
    );
    ct.ok("test ! -e /etc/systemd/system/multi-user.target.wants/relay-rtmp.service");
    ct.ok("! pgrep -x relay");
    ct.ok("! systemctl list-units --all --plain --no-legend 'relay*' | grep -q .");
    ct.ok("nginx -t -q && systemctl is-active nginx");
    // relay-rtmp is gone with its ports.
    wait_for(Duration::from_secs(10), "stat page gone", || {
        !ct.sh("curl -fsS http://127.0.0.1:8080/rtmp_stat")
            .status
            .success()
    });
}

/// The sink's stat page shows a publisher on out/STREAM.
fn sink_publishing(ct: &Container, stream: &str) -> bool {
    sink_publishers(ct, stream) > 0
}

/// Publishing clients on out/STREAM at the sink.
fn sink_publishers(ct: &Container, stream: &str) -> usize {
    let out = ct.sh("curl -fsS http://127.0.0.1:8091/stat");
    if !out.status.success() {
        return 0;
    }
    let xml = String::from_utf8_lossy(&out.stdout);
    let Some(app) = xml
        .split("<application>")
        .find(|a| a.contains("<name>out</name>"))
    else {
        return 0;
    };
    app.split("<stream>")
        .skip(1)
        .map(|s| s.split("</stream>").next().unwrap_or(""))
        .filter(|s| s.contains(&format!("<name>{stream}</name>")))
        .map(|s| {
            s.split("<client>")
                .skip(1)
                .filter(|c| {
                    c.split("</client>")
                        .next()
                        .unwrap_or("")
                        .contains("<publishing/>")
                })
                .count()
        })
        .sum()
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

// ---------------------------------------------------------------------------
// Building and linting the package

fn preflight() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { nix::libc::geteuid() };
    assert!(
        euid == 0,
        "the package test needs root (it debootstraps and boots a container)"
    );
    let mut missing = Vec::new();
    for (tool, package) in [
        ("debootstrap", "debootstrap"),
        ("systemd-nspawn", "systemd-container"),
        ("lintian", "lintian"),
        ("nsenter", "util-linux"),
        ("dpkg-deb", "dpkg"),
        ("man", "man-db"),
    ] {
        if !on_path(tool) {
            missing.push(package);
        }
    }
    assert!(
        missing.is_empty(),
        "the package test needs these Debian packages: apt-get install {}",
        missing.join(" ")
    );
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// `RELAY_TEST_DEB`, or what `cargo deb` builds now.
fn build_deb() -> PathBuf {
    if let Some(deb) = std::env::var_os("RELAY_TEST_DEB") {
        let deb = PathBuf::from(deb);
        assert!(
            deb.is_file(),
            "RELAY_TEST_DEB={} is not a file",
            deb.display()
        );
        return deb;
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let have = Command::new(&cargo)
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        have,
        "cargo-deb is missing: cargo install cargo-deb --locked (or set RELAY_TEST_DEB)"
    );
    // --fast: lighter compression, same contents.
    let out = Command::new(&cargo)
        .args(["deb", "--fast"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo deb");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "cargo deb failed:\n{stdout}");
    let deb = stdout
        .lines()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .unwrap_or_else(|| panic!("cargo deb printed no .deb path:\n{stdout}"));
    PathBuf::from(deb)
}

fn lintian(deb: &Path) {
    let out = Command::new("lintian")
        .args(["--fail-on", "error"])
        .arg(deb)
        .output()
        .expect("run lintian");
    let text = show(&out);
    eprintln!("package test: lintian:\n{text}");
    assert!(out.status.success(), "lintian reports errors:\n{text}");
    assert!(
        !text.lines().any(|l| l.starts_with("E: ")),
        "lintian:\n{text}"
    );
    // The package has its manual pages and copyright notice.
    for tag in ["no-manual-page", "copyright-without-copyright-notice"] {
        assert!(
            !text.lines().any(|l| l.contains(&format!(": {tag}"))),
            "lintian reports {tag}:\n{text}"
        );
    }
}

/// The manual pages (gzipped, as Debian wants), the completions and the
/// licence are in the .deb where Debian's tools look for them.
fn check_contents(deb: &Path) {
    let out = Command::new("dpkg-deb")
        .arg("--contents")
        .arg(deb)
        .output()
        .expect("dpkg-deb --contents");
    assert!(out.status.success(), "dpkg-deb --contents:\n{}", show(&out));
    let listing = String::from_utf8_lossy(&out.stdout);
    for path in [
        "./usr/share/man/man1/relay.1.gz",
        "./usr/share/man/man5/relay.conf.5.gz",
        "./usr/share/bash-completion/completions/relay",
        "./usr/share/zsh/vendor-completions/_relay",
        "./usr/share/fish/vendor_completions.d/relay.fish",
        "./usr/share/doc/relay/copyright",
    ] {
        assert!(
            listing
                .lines()
                .any(|l| l.split_whitespace().last() == Some(path)),
            "{path} is not in the .deb:\n{listing}"
        );
    }
    // The pages render (man-db on the host reads them as installed).
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(dir.path())
        .output()
        .expect("dpkg-deb -x");
    assert!(out.status.success(), "dpkg-deb -x:\n{}", show(&out));
    for (page, needles) in [
        ("man1/relay.1.gz", ["relay status", "relay.conf(5)"]),
        ("man5/relay.conf.5.gz", ["KICK_URL", "LOW_BITRATE_SECS"]),
    ] {
        let out = Command::new("man")
            .arg("-l")
            .arg(dir.path().join("usr/share/man").join(page))
            .env("MANWIDTH", "80")
            .env("MANPAGER", "cat")
            .output()
            .expect("run man (apt-get install man-db)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && needles.iter().all(|n| text.contains(n)),
            "man -l {page}:\n{}",
            show(&out)
        );
    }
}

/// The package names in the .deb's Depends (first of each alternative).
fn package_depends(deb: &Path) -> BTreeSet<String> {
    let out = Command::new("dpkg-deb")
        .args(["-f"])
        .arg(deb)
        .arg("Depends")
        .output()
        .expect("dpkg-deb -f");
    assert!(out.status.success(), "dpkg-deb -f:\n{}", show(&out));
    String::from_utf8_lossy(&out.stdout)
        .split(',')
        .filter_map(|dep| {
            let first = dep.split('|').next()?.trim();
            let name = first.split([' ', '(', ':']).next()?;
            (!name.is_empty()).then(|| name.to_string())
        })
        .chain(TEST_PACKAGES.iter().map(|p| p.to_string()))
        .collect()
}

// ---------------------------------------------------------------------------
// The cached tree

struct Cache {
    dir: PathBuf,
}

impl Cache {
    fn new() -> Cache {
        let dir = std::env::var_os("RELAY_TEST_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/relay-tests"));
        fs::create_dir_all(dir.join("runs")).expect("create the test cache directory");
        Cache { dir }
    }

    /// A Debian tree with systemd and `packages` installed: from the cache,
    /// or built now (debootstrap, then apt in a non-booted container).
    fn tree(&self, packages: &BTreeSet<String>) -> PathBuf {
        let list: Vec<&str> = packages.iter().map(String::as_str).collect();
        let key = format!(
            "{SUITE}-{:016x}",
            fnv1a(&format!("{RECIPE} {BASE_PACKAGES} {}", list.join(" ")))
        );
        let tree = self.dir.join(&key);
        let _lock = self.lock();
        if tree.join("root/usr/bin/apt-get").is_file() && tree.join("complete").is_file() {
            return tree.join("root");
        }
        eprintln!(
            "package test: building the cached tree {} (debootstrap + {})",
            tree.display(),
            list.join(" ")
        );
        let started = Instant::now();
        // Anything older is an outdated recipe or package list.
        for entry in fs::read_dir(&self.dir).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{SUITE}-")) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        let building = self.dir.join(format!("building-{}", std::process::id()));
        let _ = fs::remove_dir_all(&building);
        fs::create_dir_all(&building).unwrap();
        let root = building.join("root");
        let mut debootstrap = Command::new("debootstrap");
        debootstrap
            .args([
                "--variant=minbase",
                &format!("--include={BASE_PACKAGES}"),
                SUITE,
            ])
            .arg(&root);
        if let Some(mirror) = std::env::var_os("RELAY_TEST_MIRROR") {
            debootstrap.arg(mirror);
        }
        run_logged(&mut debootstrap, &building.join("debootstrap.log"));

        // No service may start while packages are installed.
        let policy = root.join("usr/sbin/policy-rc.d");
        fs::write(&policy, "#!/bin/sh\nexit 101\n").unwrap();
        fs::set_permissions(&policy, fs::Permissions::from_mode(0o755)).unwrap();
        let mut apt = Command::new("systemd-nspawn");
        apt.args(["--register=no", "--keep-unit", "--quiet"])
            .arg(format!("--machine=relay-cache-{}", std::process::id()))
            .arg("-D")
            .arg(&root)
            .args([
                "--setenv=DEBIAN_FRONTEND=noninteractive",
                "/bin/sh",
                "-c",
                &format!(
                    "apt-get update -q && apt-get install -y -q --no-install-recommends {} && apt-get clean",
                    list.join(" ")
                ),
            ]);
        run_logged(&mut apt, &building.join("apt.log"));
        fs::remove_file(&policy).unwrap();

        fs::rename(&building, &tree).unwrap();
        fs::write(tree.join("complete"), "").unwrap();
        eprintln!(
            "package test: cached tree built in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        tree.join("root")
    }

    /// One builder at a time; copies of a finished tree need no lock.
    fn lock(&self) -> nix::fcntl::Flock<fs::File> {
        let file = fs::File::create(self.dir.join("lock")).unwrap();
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .expect("lock the test cache")
    }

    /// A fresh directory for one run; leftovers of runs whose process is
    /// gone are removed first.
    fn run_dir(&self) -> PathBuf {
        let runs = self.dir.join("runs");
        for entry in fs::read_dir(&runs).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name.split('-').next().unwrap_or("");
            if !Path::new("/proc").join(pid).exists() {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        let dir = runs.join(format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}

fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Runs a long command with its output in `log`; panics with the log's tail.
fn run_logged(cmd: &mut Command, log: &Path) {
    let file = fs::File::create(log).unwrap();
    let status = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !status.success() {
        let text = fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!("{cmd:?} failed ({status}):\n{}", tail.join("\n"));
    }
}

// ---------------------------------------------------------------------------
// The booted container

struct Container {
    /// The run's directory: the tree's copy and the console log.
    dir: PathBuf,
    root: PathBuf,
    nspawn: Child,
    /// The container's systemd, as the host sees it.
    init: u32,
}

impl Container {
    fn boot(cache: &Cache, tree: &Path) -> Container {
        let dir = cache.run_dir();
        let root = dir.join("root");
        let copy = Command::new("cp")
            .args(["-a", "--reflink=auto"])
            .arg(tree)
            .arg(&root)
            .output()
            .expect("cp");
        assert!(copy.status.success(), "copy the tree:\n{}", show(&copy));
        let console = fs::File::create(dir.join("console.log")).unwrap();
        let mut nspawn = Command::new("systemd-nspawn");
        // SAFETY: prctl is async-signal-safe. If the test process dies
        // without running Drop (killed by a timeout), nspawn gets SIGTERM,
        // which powers the container off.
        unsafe {
            nspawn.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                    .map_err(std::io::Error::from)
            });
        }
        let nspawn = nspawn
            .args([
                "--register=no",
                "--keep-unit",
                "--boot",
                "--private-network",
                "--console=read-only",
            ])
            .arg(format!("--machine=relay-test-{}", std::process::id()))
            .arg("-D")
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(console.try_clone().unwrap())
            .stderr(console)
            .spawn()
            .expect("start systemd-nspawn");
        let mut ct = Container {
            dir,
            root,
            nspawn,
            init: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while ct.init == 0 {
            if let Ok(Some(status)) = ct.nspawn.try_wait() {
                panic!("systemd-nspawn exited ({status}):\n{}", ct.console());
            }
            assert!(
                Instant::now() < deadline,
                "no systemd in the container after 30 s:\n{}",
                ct.console()
            );
            sleep(Duration::from_millis(100));
            ct.init = child_of(ct.nspawn.id()).unwrap_or(0);
        }
        let mut state = String::new();
        let booted = wait_until(Duration::from_secs(90), || {
            let out = ct.sh("systemctl is-system-running");
            state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            state == "running" || state == "degraded"
        });
        if !booted {
            let failed = ct.sh("systemctl --failed --no-pager");
            panic!(
                "the container did not finish booting (state {state:?}):\n{}\n{}",
                show(&failed),
                ct.console()
            );
        }
        if state == "degraded" {
            eprintln!(
                "package test: the container booted degraded:\n{}",
                show(&ct.sh("systemctl --failed --no-pager"))
            );
        }
        ct
    }

    /// Runs a shell script inside the container, as root, with a clean
    /// environment and a time limit.
    fn sh(&self, script: &str) -> Output {
        Command::new("timeout")
            .args(["--kill-after=10", "180", "nsenter", "-t"])
            .arg(self.init.to_string())
            .args(["-a", "env", "-i"])
            .arg(format!("PATH={PATH_INSIDE}"))
            .args(["LANG=C.UTF-8", "SYSTEMD_PAGER=", "/bin/sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter")
    }

    /// Like `sh`, but the script must succeed; returns its stdout.
    fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "in the container: {script}\nfailed: {}",
            show(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn prop(&self, unit: &str, property: &str) -> String {
        self.ok(&format!("systemctl show -P {property} {unit}"))
            .trim()
            .to_string()
    }

    fn journal(&self, unit: &str) -> String {
        let out = self.sh(&format!("journalctl --no-pager -o cat -u {unit}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn console(&self) -> String {
        let text = fs::read_to_string(self.dir.join("console.log")).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Container {
    /// Powers the container off (SIGKILL to nspawn if that hangs) and
    /// removes the run's copy of the tree.
    fn drop(&mut self) {
        if self.init != 0 {
            let _ = self.sh("systemctl poweroff --no-block");
        }
        let stopped = wait_until(Duration::from_secs(30), || {
            matches!(self.nspawn.try_wait(), Ok(Some(_)))
        });
        if !stopped {
            let _ = self.nspawn.kill();
            let _ = self.nspawn.wait();
        }
        if self.init != 0 && Path::new("/proc").join(self.init.to_string()).exists() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.init as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if std::thread::panicking() {
            eprintln!("package test: console:\n{}", self.console());
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The first process whose parent is `pid`.
fn child_of(pid: u32) -> Option<u32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let child: u32 = entry.file_name().to_str()?.parse().ok()?;
        let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
        // pid (comm) state ppid ...; comm may hold spaces and parentheses.
        let ppid: u32 = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        (ppid == pid).then_some(child)
    })
}

// ---------------------------------------------------------------------------
// Small helpers

fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(250));
    }
}

fn wait_for(limit: Duration, what: &str, cond: impl FnMut() -> bool) {
    assert!(
        wait_until(limit, cond),
        "timed out after {limit:?} waiting for {what}"
    );
}

/// Waits for `needle` in the unit's journal; on timeout the panic shows it.
fn wait_journal(ct: &Container, unit: &str, needle: &str, limit: Duration) {
    if !wait_until(limit, || ct.journal(unit).contains(needle)) {
        panic!(
            "timed out after {limit:?} waiting for {needle:?} in the journal of {unit}:\n{}\n\
             stat page:\n{}",
            ct.journal(unit),
            show(&ct.sh("curl -sS http://127.0.0.1:8080/rtmp_stat"))
        );
    }
}

fn show(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Prints how long each step took.
struct Steps {
    last: Instant,
}

impl Steps {
    fn new() -> Steps {
        Steps {
            last: Instant::now(),
        }
    }

    fn done(&mut self, step: &str) {
        let now = Instant::now();
        eprintln!(
            "package test: {step}: {:.1} s",
            (now - self.last).as_secs_f64()
        );
        let _ = std::io::stderr().flush();
        self.last = now;
    }
}
