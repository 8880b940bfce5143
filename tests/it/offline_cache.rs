//! The offline video normalised once (ARCHITECTURE.md, "The offline
//! video's cached copy"): relay's status says when the copy is ready and
//! how many normalising runs it made; once it is ready the offline source
//! reads it, and viewers still see the offline video. A reload that
//! changes neither the video nor OUT_RES/OUT_FPS makes no new copy, even
//! when it restarts the pipeline; a new frame rate or a replaced file
//! makes one. None is left behind when relay stops.

use std::path::Path;

use nix::sys::signal::Signal;

use crate::common::*;
use crate::relay_rig::*;

fn append(rig: &Rig, line: &str) -> anyhow::Result<()> {
    let mut text = std::fs::read_to_string(&rig.env_file)?;
    text.push_str(line);
    text.push('\n');
    std::fs::write(&rig.env_file, text)?;
    Ok(())
}

async fn reload(relay: &RelayProc) -> anyhow::Result<(String, Status)> {
    let before = relay.status().await?.reloads;
    relay.signal(Signal::SIGHUP)?;
    let s = relay
        .wait_for_status("the reload done", |s| s.reloads > before, secs(30))
        .await?;
    let outcome = last_reload_outcome(&s).unwrap_or_default().to_string();
    Ok((outcome, s))
}

/// The cache's generation once it is ready at `generation`.
async fn wait_ready(relay: &RelayProc, generation: u64) -> anyhow::Result<Status> {
    relay
        .wait_for_status(
            &format!("the normalised copy ready, generation {generation}"),
            |s| {
                s.offline_cache
                    .as_ref()
                    .is_some_and(|c| c.state == "ready" && c.generation == generation)
            },
            secs(90),
        )
        .await
}

fn generation(s: &Status) -> u64 {
    s.offline_cache.as_ref().map_or(0, |c| c.generation)
}

/// The normalised copies in relay's copy directory (the runtime directory
/// beside the env file, in the tests).
fn normalised_copies(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains("-normalised-"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn the_offline_video_is_normalised_once_and_kept_by_reloads_that_do_not_change_it(
) -> anyhow::Result<()> {
    let rig = Rig::start("cache-keep", RigOpts::default()).await?;
    // The sink waits for the output before relay starts, so it plays the
    // source that normalises every loop too, and the switch to the copy:
    // the last frame is repeated over the restart, never black.
    let sink = Sink::start(&rig.out_url());
    let mut relay = RelayProc::run(&rig.env_file, &[])?;
    relay
        .wait_for_status("the output streaming", output_streaming, secs(60))
        .await?;
    sink.wait_for(Colour::Green, secs(30)).await?;

    let s = wait_ready(&relay, 1).await?;
    let cache = s.offline_cache.clone().expect("a cache");
    assert_eq!(cache.codec.as_deref(), Some("rawvideo"), "{cache:?}");
    // The offline source reads it, and viewers still see the offline video.
    wait_for_ffmpeg_child(relay.pid(), "-normalised-", secs(30)).await?;
    let since = std::time::Instant::now();
    sink.wait_for_since(Colour::Green, since, secs(30)).await?;
    assert_eq!(normalised_copies(rig.dir.path()).len(), 1);

    // Unchanged: no new copy.
    let (outcome, s) = reload(&relay).await?;
    assert_eq!(outcome, "unchanged", "{s:?}");
    assert_eq!(generation(&s), 1, "{s:?}");

    // A change that restarts the whole pipeline but neither the video nor
    // its format: the copy is kept and read at once.
    append(&rig, "VID_BITRATE=350k")?;
    let (outcome, _) = reload(&relay).await?;
    assert_eq!(outcome, "restarted");
    relay
        .wait_for_status("the output streaming again", output_streaming, secs(60))
        .await?;
    let s = relay.status().await?;
    assert_eq!(generation(&s), 1, "a new copy was made: {s:?}");
    assert_eq!(s.offline_cache.as_ref().unwrap().state, "ready", "{s:?}");
    wait_for_ffmpeg_child(relay.pid(), "-normalised-", secs(30)).await?;
    assert_eq!(normalised_copies(rig.dir.path()).len(), 1);
    sink.wait_for_since(Colour::Green, std::time::Instant::now(), secs(30))
        .await?;
    sink.expect_no_black()?;

    let status = relay.sigterm_and_wait(secs(15)).await?;
    assert!(status.success(), "{status}");
    assert_eq!(
        normalised_copies(rig.dir.path()),
        Vec::<String>::new(),
        "a normalised copy was left behind"
    );
    Ok(())
}

#[tokio::test]
async fn a_new_frame_rate_or_a_replaced_file_makes_a_new_copy() -> anyhow::Result<()> {
    let rig = Rig::start("cache-renew", RigOpts::default()).await?;
    let mut relay = rig.start_relay().await?;
    let sink = Sink::start(&rig.out_url());
    wait_ready(&relay, 1).await?;
    sink.wait_for(Colour::Green, secs(30)).await?;
    let red = make_offline_video(rig.dir.path(), "red", true, 320, 180).await?;

    // OUT_FPS: the pipeline restarts, and the copy is made again at 25 fps.
    append(&rig, "OUT_FPS=25")?;
    let (outcome, _) = reload(&relay).await?;
    assert_eq!(outcome, "restarted");
    wait_ready(&relay, 2).await?;
    wait_for_ffmpeg_child(relay.pid(), "-normalised-", secs(30)).await?;

    // The same path, a new file: only the offline source restarts, on the
    // new video normalised every loop, then again on its new copy; viewers
    // see the new video, and no black at either hand-over.
    let path = std::fs::read_to_string(&rig.env_file)?
        .lines()
        .find_map(|l| l.strip_prefix("OFFLINE_VIDEO_PATH=").map(str::to_owned))
        .expect("OFFLINE_VIDEO_PATH in the env file");
    std::fs::rename(&red, &path)?;
    let (outcome, s) = reload(&relay).await?;
    assert_eq!(outcome, "new_offline_video", "{s:?}");
    wait_ready(&relay, 3).await?;
    sink.wait_for(Colour::Red, secs(60)).await?;
    // The old copies are gone once nothing reads them.
    let deadline = std::time::Instant::now() + secs(30);
    while normalised_copies(rig.dir.path()).len() != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "old copies stay: {:?}",
            normalised_copies(rig.dir.path())
        );
        tokio::time::sleep(secs(1)).await;
    }
    wait_for_ffmpeg_child(relay.pid(), "-normalised-", secs(30)).await?;
    sink.wait_for_since(Colour::Red, std::time::Instant::now(), secs(30))
        .await?;
    sink.expect_no_black()?;

    let status = relay.sigterm_and_wait(secs(15)).await?;
    assert!(status.success(), "{status}");
    Ok(())
}
