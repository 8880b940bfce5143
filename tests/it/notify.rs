//! What relay tells systemd, read from a real notify socket (a Unix
//! datagram socket this test binds and hands over in NOTIFY_SOCKET, as
//! systemd does): READY=1 once, when the output streams; WATCHDOG=1 while
//! it does; a STATUS= line that follows what is on air; STOPPING=1 at the
//! end. (The packaging tests check the same under a real systemd.)

use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::relay_rig::*;

/// Every datagram relay sent, with when it arrived.
#[derive(Clone, Default)]
struct Notifications(Arc<Mutex<Vec<(Instant, String)>>>);

impl Notifications {
    fn listen(socket: UnixDatagram) -> Notifications {
        let seen = Notifications::default();
        let sink = seen.clone();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends when the test process does.
            loop {
                if let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    for line in text.lines() {
                        sink.0
                            .lock()
                            .unwrap()
                            .push((Instant::now(), line.to_string()));
                    }
                }
            }
        });
        seen
    }

    fn all(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, l)| l.clone())
            .collect()
    }

    fn count_since(&self, since: Instant, line: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, l)| *at >= since && l == line)
            .count()
    }

    async fn wait_for(
        &self,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.all().into_iter().find(|l| pred(l)) {
                return Ok(l);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "no such notification within {timeout:?}; got {:?}",
                self.all()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn relay_tells_systemd_ready_watchdog_status_and_stopping() -> anyhow::Result<()> {
    let rig = Rig::start(
        "notify",
        RigOpts {
            allowed_publishers: Some("any".into()),
            ..RigOpts::default()
        },
    )
    .await?;
    let path = rig.dir.path().join("notify.sock");
    let seen = Notifications::listen(UnixDatagram::bind(&path)?);
    let path = path.to_str().unwrap().to_string();
    let mut relay = RelayProc::run(
        &rig.env_file,
        &[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "3000000")],
    )?;

    relay
        .wait_for_status("the output streaming", output_streaming, secs(60))
        .await?;
    seen.wait_for(|l| l == "READY=1", secs(5)).await?;
    let status = seen
        .wait_for(
            |l| l.starts_with("STATUS=offline") && l.contains("output up"),
            secs(10),
        )
        .await?;
    assert!(status.contains("no publisher"), "{status}");

    // The watchdog is fed about every second while the output streams.
    let window = Instant::now();
    tokio::time::sleep(secs(4)).await;
    let pings = seen.count_since(window, "WATCHDOG=1");
    assert!((2..=8).contains(&pings), "{pings} watchdog pings in 4 s");

    let mut publisher = Publisher::start(&rig.live_url(), PublisherOpts::colour("blue")).await?;
    relay
        .wait_for_status("the live feed on air", live_on_air, secs(30))
        .await?;
    let live = seen
        .wait_for(
            |l| l.starts_with("STATUS=live") && l.contains("publisher 127.0.0.1"),
            secs(10),
        )
        .await?;
    assert!(live.contains("output up"), "{live}");
    publisher.kill().await?;
    relay
        .wait_for_status(
            "the offline video back on air",
            |s| last_switch_is(s, "offline", "frames_stopped"),
            secs(30),
        )
        .await?;
    seen.wait_for(|l| l.starts_with("STATUS=offline"), secs(10))
        .await?;

    let status = relay.sigterm_and_wait(secs(10)).await?;
    assert!(status.success(), "{status}");
    seen.wait_for(|l| l == "STOPPING=1", secs(5)).await?;
    assert_eq!(
        seen.all().iter().filter(|l| *l == "READY=1").count(),
        1,
        "READY=1 must be sent once: {:?}",
        seen.all()
    );
    assert!(
        !seen.all().iter().any(|l| l.contains(KEY)),
        "the stream key reached systemd: {:?}",
        seen.all()
    );
    Ok(())
}
