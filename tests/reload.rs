//! `systemctl reload` (SIGHUP): a changed configuration is applied without
//! the unit stopping; an invalid one is rejected with the reason and the
//! running one stays; an unchanged one changes nothing.

#[allow(unused_imports)]
mod common;
mod relay_rig;

use nix::sys::signal::Signal;

use common::*;
use relay_rig::*;

fn append(rig: &Rig, line: &str) -> anyhow::Result<()> {
    let mut text = std::fs::read_to_string(&rig.env_file)?;
    text.push_str(line);
    text.push('\n');
    std::fs::write(&rig.env_file, text)?;
    Ok(())
}

#[tokio::test]
async fn reload_applies_a_changed_configuration() -> anyhow::Result<()> {
    // Default ALLOWED_PUBLISHERS (external) refuses a loopback publisher…
    let rig = Rig::start("reload-apply", RigOpts::default()).await?;
    let mut relay = rig.start_relay().await?;
    let mut publisher = Publisher::start(&rig.live_url(), PublisherOpts::colour("blue")).await?;
    relay
        .wait_for_log("publisher refused by ALLOWED_PUBLISHERS", secs(30))
        .await?;

    // …until the reloaded configuration allows it.
    append(&rig, "ALLOWED_PUBLISHERS=any")?;
    let mark = relay.log_mark();
    relay.signal(Signal::SIGHUP)?;
    relay
        .wait_for_log_since(mark, "reload: applying the new configuration", secs(30))
        .await?;
    relay
        .wait_for_log_since(mark, "on air: live", secs(60))
        .await?;
    assert!(relay.is_running(), "relay must not exit on reload");

    publisher.kill().await?;
    let status = relay.sigterm_and_wait(secs(10)).await?;
    assert!(status.success(), "{status}");
    Ok(())
}

#[tokio::test]
async fn invalid_reload_keeps_the_running_configuration() -> anyhow::Result<()> {
    let rig = Rig::start("reload-bad", RigOpts::default()).await?;
    let mut relay = rig.start_relay().await?;
    let good = std::fs::read_to_string(&rig.env_file)?;

    append(&rig, "OUT_FPS=abc")?;
    let mark = relay.log_mark();
    relay.signal(Signal::SIGHUP)?;
    let line = relay
        .wait_for_log_since(mark, "reload rejected", secs(30))
        .await?;
    assert!(
        line.contains("OUT_FPS"),
        "the reason must name the key: {line}"
    );
    assert!(!line.contains(KEY), "the stream key leaked: {line}");

    // Still the same pipeline: no restart of the output happened.
    tokio::time::sleep(secs(2)).await;
    assert!(relay.is_running());
    let restarted = relay.logs()[mark..]
        .iter()
        .any(|l| l.contains("output started") || l.contains("relay starting"));
    assert!(!restarted, "a rejected reload must not touch the output");

    // The file put back as it was: nothing to do.
    std::fs::write(&rig.env_file, good)?;
    let mark = relay.log_mark();
    relay.signal(Signal::SIGHUP)?;
    relay
        .wait_for_log_since(mark, "reload: the configuration is unchanged", secs(30))
        .await?;

    let status = relay.sigterm_and_wait(secs(10)).await?;
    assert!(status.success(), "{status}");
    Ok(())
}
