//! Every switching rule, on a made-up clock: events in, actions out.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use super::*;
use crate::config::{AllowedPublishers, LowBitrate};

const PUBLISHER: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));

fn settings() -> Settings {
    Settings {
        offline_after: Duration::from_millis(300),
        live_stable: Duration::from_secs(3),
        low_bitrate: None,
        allowed_publishers: AllowedPublishers::Any,
        crash_backoff: Duration::from_secs(2),
        publish_auth_url: "http://127.0.0.1:8081/on_publish".to_string(),
    }
}

/// A policy and the daemon's side of it: switches are confirmed (unless
/// told otherwise) and answered at once, as the daemon does.
struct Rig {
    policy: Policy,
    t0: Instant,
    now: Instant,
    /// What the zmq filter answers to the next switches.
    switch_results: Vec<Switched>,
    /// Every action so far, switches' follow-ups included.
    log: Vec<Action>,
}

impl Rig {
    fn new() -> Rig {
        Rig::with(settings())
    }

    fn with(settings: Settings) -> Rig {
        let t0 = Instant::now();
        let mut policy = Policy::new(settings, t0, &["kick"]);
        let log = policy.start();
        let mut rig = Rig {
            policy,
            t0,
            now: t0,
            switch_results: Vec::new(),
            log,
        };
        // The output streams; its selection (offline) is re-asserted.
        rig.handle(Event::OutputStreaming {
            destination: "kick",
        });
        rig
    }

    /// Moves the clock to `s` seconds after the start.
    fn at(&mut self, s: f64) -> &mut Rig {
        self.now = self.t0 + Duration::from_secs_f64(s);
        self
    }

    /// Handles `event` like the daemon; returns every action it led to.
    fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut done = Vec::new();
        let mut queue = std::collections::VecDeque::from(self.policy.handle(self.now, event));
        while let Some(action) = queue.pop_front() {
            if let Action::Select(input) = action {
                let result = if self.switch_results.is_empty() {
                    Switched::Confirmed
                } else {
                    self.switch_results.remove(0)
                };
                queue.extend(
                    self.policy
                        .handle(self.now, Event::Switched { input, result }),
                );
            }
            done.push(action);
        }
        self.log.extend(done.clone());
        done
    }

    fn fire(&mut self, timer: Timer) -> Vec<Action> {
        self.handle(Event::Timer(timer))
    }

    fn page(&mut self, id: Option<u64>, bytes_in: u64) -> Vec<Action> {
        self.page_with(
            id.map(|id| Publisher {
                id,
                address: Some(PUBLISHER),
                unchecked: false,
                has_audio: Some(true),
            }),
            bytes_in,
        )
    }

    fn page_with(&mut self, publisher: Option<Publisher>, bytes_in: u64) -> Vec<Action> {
        self.handle(Event::StatPage(StatSummary {
            publisher,
            bytes_in,
        }))
    }

    /// The ingest session the last StartIngest started.
    fn started_session(&self) -> u64 {
        self.log
            .iter()
            .rev()
            .find_map(|a| match a {
                Action::StartIngest { session, .. } => Some(*session),
                _ => None,
            })
            .expect("an ingest was started")
    }

    /// At `s`: the standby ingest starts, publisher `id` shows up, its
    /// frames flow and are ready. Returns the session.
    fn live_at(&mut self, s: f64, id: u64) -> u64 {
        self.at(s);
        self.fire(Timer::IngestRetry(SourceKind::Rtmp));
        self.page(Some(id), 1_000);
        let session = self.started_session();
        self.handle(Event::Flowing { session });
        self.at(s + 0.3);
        self.handle(Event::Ready { session });
        session
    }

    fn state(&self) -> StateName {
        self.policy.state_name()
    }

    fn why(&self) -> Option<Why> {
        self.policy.last_switch().map(|s| s.why)
    }
}

fn selects(actions: &[Action], input: Input) -> bool {
    actions.contains(&Action::Select(input))
}

fn starts_ingest(actions: &[Action]) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::StartIngest { .. }))
}

fn stops_ingest(actions: &[Action]) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::StopIngest { .. }))
}

fn reply(actions: &[Action]) -> Option<&Reply> {
    actions.iter().find_map(|a| match a {
        Action::Reply(r) => Some(&**r),
        _ => None,
    })
}

#[test]
fn a_standby_ingest_waits_for_the_first_publisher() {
    let mut rig = Rig::new();
    assert!(rig.log.contains(&Action::SetTimer {
        timer: Timer::IngestRetry(SourceKind::Rtmp),
        at: Some(rig.t0),
    }));
    let actions = rig.fire(Timer::IngestRetry(SourceKind::Rtmp));
    assert_eq!(
        actions,
        [Action::StartIngest {
            source: SourceKind::Rtmp,
            session: 1,
            expect: Expect::Either,
        }]
    );
    assert_eq!(rig.state(), StateName::Offline);
}

#[test]
fn an_allowed_publisher_goes_live_once_its_frames_are_ready() {
    let mut rig = Rig::new();
    rig.fire(Timer::IngestRetry(SourceKind::Rtmp));
    rig.page(Some(1), 1_000);
    assert_eq!(rig.state(), StateName::Offline);
    let flowing = rig.handle(Event::Flowing { session: 1 });
    assert!(
        flowing.contains(&Action::PollNow),
        "confirm the publisher at once"
    );
    assert_eq!(rig.state(), StateName::GoingLive);
    let ready = rig.handle(Event::Ready { session: 1 });
    assert!(selects(&ready, Input::Live));
    assert_eq!(rig.state(), StateName::Live);
    assert_eq!(rig.policy.selection(), Input::Live);
    assert_eq!(rig.why(), Some(Why::PublisherLive));
}

#[test]
fn frames_without_a_publisher_on_the_stat_page_stay_off_air() {
    let mut rig = Rig::new();
    rig.fire(Timer::IngestRetry(SourceKind::Rtmp));
    rig.handle(Event::Flowing { session: 1 });
    let ready = rig.handle(Event::Ready { session: 1 });
    assert!(!selects(&ready, Input::Live));
    // The stat page then shows it: on air.
    assert!(selects(&rig.page(Some(1), 1_000), Input::Live));
}

#[test]
fn frames_that_stop_fail_over_and_get_a_fresh_ingest_once_the_publisher_left() {
    let mut rig = Rig::new();
    let session = rig.live_at(1.0, 1);
    rig.at(5.0);
    let actions = rig.handle(Event::Stopped {
        session,
        silent_for: Duration::from_millis(310),
    });
    assert!(selects(&actions, Input::Offline));
    assert_eq!(rig.state(), StateName::Offline);
    assert_eq!(rig.why(), Some(Why::FramesStopped));
    assert!(rig.policy.last_switch().unwrap().reason.contains("310 ms"));
    // Still on the stat page (stalled): its ingest waits for it.
    assert!(!actions.contains(&Action::StopIngest { session }));
    assert!(!starts_ingest(&rig.page(Some(1), 2_000)));
    // Gone: nginx would hand the player the next publisher.
    rig.at(6.0);
    let actions = rig.page(None, 0);
    assert!(actions.contains(&Action::StopIngest { session }));
    assert!(actions.contains(&Action::SetTimer {
        timer: Timer::IngestRetry(SourceKind::Rtmp),
        at: Some(rig.now),
    }));
}

#[test]
fn a_stalled_publisher_resumes_on_the_same_ingest() {
    let mut rig = Rig::new();
    let session = rig.live_at(1.0, 1);
    rig.at(5.0);
    rig.handle(Event::Stopped {
        session,
        silent_for: Duration::from_millis(300),
    });
    rig.at(10.0);
    rig.handle(Event::Flowing { session });
    rig.at(10.3);
    rig.handle(Event::Ready { session });
    // Back within the return window: held for LIVE_STABLE_SECS, then on.
    assert_eq!(rig.state(), StateName::GoingLive);
    rig.at(13.1);
    let actions = rig.fire(Timer::Hold);
    assert!(selects(&actions, Input::Live));
}

#[test]
fn a_new_publisher_gets_a_fresh_ingest_after_a_stall() {
    let mut rig = Rig::new();
    let session = rig.live_at(1.0, 1);
    rig.at(5.0);
    rig.handle(Event::Stopped {
        session,
        silent_for: Duration::from_millis(300),
    });
    // Between two polls the stalled publisher left and another came.
    let actions = rig.page(Some(2), 0);
    assert!(actions.contains(&Action::StopIngest { session }));
    assert!(starts_ingest(&actions));
}

#[test]
fn frames_that_never_went_on_air_do_not_count_as_a_failover() {
    let mut rig = Rig::new();
    rig.fire(Timer::IngestRetry(SourceKind::Rtmp));
    rig.page(Some(1), 1_000);
    // A feed that starts and stops before its pre-roll, again and again.
    for k in 0..5 {
        rig.at(1.0 + k as f64);
        rig.handle(Event::Flowing { session: 1 });
        rig.at(1.2 + k as f64);
        rig.handle(Event::Stopped {
            session: 1,
            silent_for: Duration::from_millis(300),
        });
    }
    rig.at(8.0);
    rig.handle(Event::Flowing { session: 1 });
    rig.at(8.4);
    let actions = rig.handle(Event::Ready { session: 1 });
    assert!(
        selects(&actions, Input::Live),
        "held off as if it had failed over"
    );
}

#[test]
fn events_of_a_replaced_ingest_are_ignored() {
    let mut rig = Rig::new();
    let old = rig.live_at(1.0, 1);
    rig.handle(Event::Stopped {
        session: old,
        silent_for: Duration::from_millis(300),
    });
    rig.page(None, 0);
    rig.fire(Timer::IngestRetry(SourceKind::Rtmp));
    for event in [
        Event::Flowing { session: old },
        Event::Ready { session: old },
        Event::IngestExited {
            session: old,
            requested: true,
            reason: "stopped".into(),
        },
    ] {
        assert_eq!(rig.handle(event), []);
    }
    assert_eq!(rig.state(), StateName::Offline);
}

#[test]
fn a_publisher_back_soon_after_a_failover_must_be_stable_first() {
    let mut rig = Rig::new();
    let first = rig.live_at(1.0, 1);
    rig.at(10.0);
    rig.handle(Event::Stopped {
        session: first,
        silent_for: Duration::from_millis(300),
    });
    rig.page(None, 0);
    // Back 5 s later: held for LIVE_STABLE_SECS (3 s) of steady frames.
    let second = rig.live_at(15.0, 2);
    assert_eq!(rig.state(), StateName::GoingLive);
    let (hold, _) = rig.policy.held().expect("held off air");
    assert_eq!(hold, Hold::Unstable);
    let until = rig.t0 + Duration::from_secs(15) + Duration::from_secs(3);
    assert!(rig.log.contains(&Action::SetTimer {
        timer: Timer::Hold,
        at: Some(until),
    }));
    rig.at(18.0);
    assert!(selects(&rig.fire(Timer::Hold), Input::Live));
    assert_eq!(rig.why(), Some(Why::PublisherStable));
    assert!(rig.policy.held().is_none());
    let _ = second;
}

#[test]
fn a_publisher_back_after_the_return_window_goes_on_air_at_once() {
    let mut rig = Rig::new();
    let first = rig.live_at(1.0, 1);
    rig.at(10.0);
    rig.handle(Event::Stopped {
        session: first,
        silent_for: Duration::from_millis(300),
    });
    rig.page(None, 0);
    rig.live_at(10.0 + RETURN_WINDOW.as_secs_f64() + 1.0, 2);
    assert_eq!(rig.state(), StateName::Live);
    assert_eq!(rig.why(), Some(Why::PublisherLive));
}

#[test]
fn live_stable_zero_never_holds() {
    let mut rig = Rig::with(Settings {
        live_stable: Duration::ZERO,
        ..settings()
    });
    let first = rig.live_at(1.0, 1);
    rig.at(2.0);
    rig.handle(Event::Stopped {
        session: first,
        silent_for: Duration::from_millis(300),
    });
    rig.live_at(3.0, 1);
    assert_eq!(rig.state(), StateName::Live);
}

#[test]
fn a_refused_publisher_stays_off_air_and_gets_no_ingest() {
    let mut rig = Rig::with(Settings {
        allowed_publishers: AllowedPublishers::External,
        ..settings()
    });
    rig.fire(Timer::IngestRetry(SourceKind::Rtmp));
    let local = Publisher {
        id: 4,
        address: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        unchecked: false,
        has_audio: Some(true),
    };
    let actions = rig.page_with(Some(local.clone()), 1_000);
    assert!(
        stops_ingest(&actions),
        "no decoding of a feed that never goes on air"
    );
    assert_eq!(rig.policy.publisher().map(|(_, ok)| ok), Some(false));
    // No ingest while it stays, however often the page says so.
    assert!(!starts_ingest(&rig.page_with(Some(local), 2_000)));
    // It leaves: a standby ingest again.
    let left = rig.page_with(None, 2_000);
    assert!(left.contains(&Action::SetTimer {
        timer: Timer::IngestRetry(SourceKind::Rtmp),
        at: Some(rig.now),
    }));
}

#[test]
fn a_publisher_refused_after_a_reload_is_taken_off_air() {
    let mut rig = Rig::new();
    rig.live_at(1.0, 1);
    let actions = rig.handle(Event::Reconfigured(Settings {
        allowed_publishers: AllowedPublishers::External,
        ..settings()
    }));
    assert_eq!(
        actions,
        [Action::PollNow],
        "judged again on a fresh stat page"
    );
    let local = Publisher {
        id: 1,
        address: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        unchecked: false,
        has_audio: Some(true),
    };
    let actions = rig.page_with(Some(local), 2_000);
    assert!(selects(&actions, Input::Offline));
    assert_eq!(rig.why(), Some(Why::PublisherRefused));
}

#[test]
fn a_publisher_nginx_never_asked_about_is_unchecked_and_refused() {
    let mut rig = Rig::new();
    rig.fire(Timer::IngestRetry(SourceKind::Rtmp));
    rig.page_with(
        Some(Publisher {
            id: 9,
            address: Some(PUBLISHER),
            unchecked: true,
            has_audio: Some(true),
        }),
        0,
    );
    assert_eq!(rig.policy.publisher().map(|(_, ok)| ok), Some(false));
    rig.handle(Event::Flowing { session: 1 });
    assert_eq!(rig.state(), StateName::Offline);
}

#[test]
fn a_video_only_publisher_keeps_the_ingest_that_waited_for_it() {
    let mut rig = Rig::new();
    rig.fire(Timer::IngestRetry(SourceKind::Rtmp));
    let video_only = Publisher {
        id: 3,
        address: Some(PUBLISHER),
        unchecked: false,
        has_audio: Some(false),
    };
    // The waiting ingest takes audio or none: no restart, no lost GOP.
    let actions = rig.page_with(Some(video_only.clone()), 0);
    assert!(!actions
        .iter()
        .any(|a| matches!(a, Action::StopIngest { .. })));
    // A later ingest for the same publisher is told what to expect.
    rig.handle(Event::IngestExited {
        session: 1,
        requested: false,
        reason: "crashed".into(),
    });
    rig.at(60.0);
    let actions = rig.fire(Timer::IngestRetry(SourceKind::Rtmp));
    assert!(actions.contains(&Action::StartIngest {
        source: SourceKind::Rtmp,
        session: 2,
        expect: Expect::VideoOnly,
    }));
}

#[test]
fn a_stream_with_no_picture_gets_a_fresh_ingest() {
    let mut rig = Rig::new();
    rig.fire(Timer::IngestRetry(SourceKind::Rtmp));
    rig.page(Some(1), 0);
    rig.at(NO_PICTURE.as_secs_f64() - 1.0);
    assert!(!starts_ingest(&rig.page(Some(1), 0)));
    rig.at(NO_PICTURE.as_secs_f64() + 0.5);
    let actions = rig.page(Some(1), 0);
    assert!(actions.contains(&Action::StopIngest { session: 1 }));
    assert!(starts_ingest(&actions));
}

#[test]
fn an_ingest_that_exits_is_restarted_with_a_doubling_backoff() {
    let mut rig = Rig::new();
    rig.fire(Timer::IngestRetry(SourceKind::Rtmp));
    let mut delays = Vec::new();
    for _ in 0..3 {
        let session = rig.started_session();
        let actions = rig.handle(Event::IngestExited {
            session,
            requested: false,
            reason: "exit status: 1".into(),
        });
        let at = actions
            .iter()
            .find_map(|a| match a {
                Action::SetTimer {
                    timer: Timer::IngestRetry(_),
                    at: Some(at),
                } => Some(*at),
                _ => None,
            })
            .expect("a retry");
        delays.push(at - rig.now);
        rig.now = at;
        rig.fire(Timer::IngestRetry(SourceKind::Rtmp));
    }
    assert_eq!(
        delays,
        [2, 4, 8].map(Duration::from_secs),
        "CRASH_BACKOFF doubling"
    );
    assert_eq!(rig.policy.ingest_restarts(), 3);
    // A new publisher does not wait out earlier failures.
    let actions = rig.page(Some(5), 0);
    let session = rig.started_session();
    let exit = rig.handle(Event::IngestExited {
        session,
        requested: false,
        reason: "exit status: 1".into(),
    });
    assert!(exit.contains(&Action::SetTimer {
        timer: Timer::IngestRetry(SourceKind::Rtmp),
        at: Some(rig.now + Duration::from_secs(2)),
    }));
    let _ = actions;
}

#[test]
fn an_ingest_that_cannot_start_is_retried_after_the_backoff() {
    let mut rig = Rig::new();
    rig.fire(Timer::IngestRetry(SourceKind::Rtmp));
    let actions = rig.handle(Event::IngestFailed {
        session: 1,
        error: "No such file or directory".into(),
    });
    assert_eq!(
        actions,
        [Action::SetTimer {
            timer: Timer::IngestRetry(SourceKind::Rtmp),
            at: Some(rig.now + Duration::from_secs(2)),
        }]
    );
    assert!(rig.policy.sources[0].ingest.is_none());
}

#[test]
fn the_live_ingest_exiting_fails_over() {
    let mut rig = Rig::new();
    let session = rig.live_at(1.0, 1);
    let actions = rig.handle(Event::IngestExited {
        session,
        requested: false,
        reason: "signal: 9".into(),
    });
    assert!(selects(&actions, Input::Offline));
    assert_eq!(rig.state(), StateName::Offline);
    assert_eq!(rig.why(), Some(Why::FramesStopped));
}

#[test]
fn a_starved_feed_goes_offline_and_comes_back_when_it_recovers() {
    let rule = LowBitrate {
        bps: 1_000_000,
        window: Duration::from_secs(5),
    };
    let mut rig = Rig::with(Settings {
        low_bitrate: Some(rule),
        ..settings()
    });
    let session = rig.live_at(1.0, 1);
    // 2 Mb/s for 6 s: stays on air.
    let mut bytes = 1_000;
    for s in 2..=8 {
        bytes += 250_000;
        rig.at(s as f64).page(Some(1), bytes);
    }
    assert_eq!(rig.state(), StateName::Live);
    // 400 kb/s: off air once the window's average is below 1 Mb/s.
    let mut went_offline = None;
    for s in 9..=20 {
        bytes += 50_000;
        let actions = rig.at(s as f64).page(Some(1), bytes);
        if selects(&actions, Input::Offline) && went_offline.is_none() {
            went_offline = Some(s);
        }
    }
    assert!(went_offline.is_some(), "off air for the low bitrate");
    assert_eq!(rig.why(), Some(Why::LowBitrate));
    assert_eq!(rig.policy.held().map(|(h, _)| h), Some(Hold::LowBitrate));
    assert_eq!(
        rig.state(),
        StateName::Offline,
        "not 'going live' while starved"
    );
    // Frames keep flowing; the bitrate recovers: back on air.
    let mut back = None;
    for s in 21..=40 {
        bytes += 500_000;
        let actions = rig.at(s as f64).page(Some(1), bytes);
        if selects(&actions, Input::Live) && back.is_none() {
            back = Some(s);
        }
    }
    assert!(back.is_some(), "back on air when the bitrate recovers");
    assert_eq!(rig.why(), Some(Why::BitrateRecovered));
    let _ = session;
}

#[test]
fn a_manual_offline_holds_whatever_publishes() {
    let mut rig = Rig::new();
    rig.live_at(1.0, 1);
    let actions = rig.handle(Event::Manual(Mode::Offline));
    assert!(selects(&actions, Input::Offline));
    assert_eq!(rig.state(), StateName::ManualOffline);
    assert!(matches!(
        reply(&actions),
        Some(Reply::Switched {
            state: StateName::ManualOffline,
            ..
        })
    ));
    // The Select comes before the answer: the switch is done first.
    let select = actions.iter().position(|a| matches!(a, Action::Select(_)));
    let answer = actions.iter().position(|a| matches!(a, Action::Reply(_)));
    assert!(select < answer);
    // A new ready session does not go on air.
    rig.at(3.0).handle(Event::Ready { session: 1 });
    assert_eq!(rig.state(), StateName::ManualOffline);
    // auto: the flowing publisher goes on air at once.
    let actions = rig.handle(Event::Manual(Mode::Auto));
    assert!(selects(&actions, Input::Live));
    assert_eq!(rig.state(), StateName::Live);
    assert!(matches!(
        reply(&actions),
        Some(Reply::Switched {
            state: StateName::Live,
            ..
        })
    ));
}

#[test]
fn a_manual_live_needs_flowing_frames_and_ends_with_them() {
    let mut rig = Rig::new();
    let refused = rig.handle(Event::Manual(Mode::Live));
    assert!(matches!(reply(&refused), Some(Reply::Refused { .. })));
    let session = rig.live_at(1.0, 1);
    rig.handle(Event::Manual(Mode::Offline));
    let actions = rig.handle(Event::Manual(Mode::Live));
    assert!(selects(&actions, Input::Live));
    assert_eq!(rig.state(), StateName::ManualLive);
    // A low bitrate does not take a manual live off air; stopped frames do.
    let actions = rig.at(4.0).handle(Event::Stopped {
        session,
        silent_for: Duration::from_millis(300),
    });
    assert!(selects(&actions, Input::Offline));
    assert_eq!(rig.state(), StateName::Offline, "the override ended");
}

#[test]
fn a_manual_live_the_output_does_not_confirm_is_refused() {
    let mut rig = Rig::new();
    rig.live_at(1.0, 1);
    rig.handle(Event::Manual(Mode::Offline));
    rig.switch_results = vec![Switched::Failed("timeout".into()), Switched::Confirmed];
    let actions = rig.handle(Event::Manual(Mode::Live));
    assert!(matches!(reply(&actions), Some(Reply::Refused { .. })));
    assert_eq!(rig.policy.selection(), Input::Offline);
    assert_eq!(rig.state(), StateName::GoingLive, "back to auto");
    assert!(
        !actions.contains(&Action::RestartOutput),
        "the retry worked"
    );
}

#[test]
fn a_switch_that_fails_twice_restarts_the_output() {
    let mut rig = Rig::new();
    rig.fire(Timer::IngestRetry(SourceKind::Rtmp));
    rig.page(Some(1), 0);
    rig.handle(Event::Flowing { session: 1 });
    rig.switch_results = vec![
        Switched::Failed("timeout".into()),
        Switched::Failed("timeout".into()),
    ];
    let actions = rig.handle(Event::Ready { session: 1 });
    assert_eq!(
        actions,
        [
            Action::Feed { session: 1 },
            Action::Select(Input::Live),
            Action::Select(Input::Offline),
            Action::RestartOutput
        ]
    );
    assert_eq!(
        rig.state(),
        StateName::GoingLive,
        "still offline, frames flowing"
    );
    assert_eq!(rig.policy.selection(), Input::Offline);
}

#[test]
fn an_output_that_is_not_streaming_takes_the_selection_when_it_starts() {
    let mut rig = Rig::new();
    rig.handle(Event::OutputStopped {
        destination: "kick",
    });
    rig.switch_results = vec![Switched::NotStreaming];
    rig.live_at(1.0, 1);
    assert_eq!(rig.state(), StateName::Live, "it starts on the selection");
    let actions = rig.handle(Event::OutputStreaming {
        destination: "kick",
    });
    assert_eq!(actions, [Action::Select(Input::Live)], "re-asserted");
}

#[test]
fn a_publisher_that_leaves_without_a_picture_gets_a_fresh_ingest_for_the_next() {
    let mut rig = Rig::new();
    rig.fire(Timer::IngestRetry(SourceKind::Rtmp));
    rig.page(Some(1), 0);
    let actions = rig.page(None, 0);
    assert!(actions.contains(&Action::StopIngest { session: 1 }));
    assert!(actions.contains(&Action::SetTimer {
        timer: Timer::IngestRetry(SourceKind::Rtmp),
        at: Some(rig.now),
    }));
}

#[test]
fn a_reload_applies_the_new_crash_backoff_to_the_ingest() {
    let mut rig = Rig::new();
    rig.handle(Event::Reconfigured(Settings {
        crash_backoff: Duration::from_secs(5),
        ..settings()
    }));
    rig.fire(Timer::IngestRetry(SourceKind::Rtmp));
    let actions = rig.handle(Event::IngestExited {
        session: 1,
        requested: false,
        reason: "exit status: 1".into(),
    });
    assert!(actions.contains(&Action::SetTimer {
        timer: Timer::IngestRetry(SourceKind::Rtmp),
        at: Some(rig.now + Duration::from_secs(5)),
    }));
}

#[test]
fn switches_are_counted_by_direction_and_reason() {
    let mut rig = Rig::new();
    let session = rig.live_at(1.0, 1);
    rig.handle(Event::Stopped {
        session,
        silent_for: Duration::from_millis(300),
    });
    let counts: Vec<_> = rig.policy.switches().collect();
    assert_eq!(
        counts,
        [
            (Input::Live, Why::PublisherLive, 1),
            (Input::Offline, Why::FramesStopped, 1)
        ]
    );
}

#[test]
fn a_stale_timer_does_nothing() {
    let mut rig = Rig::new();
    rig.fire(Timer::IngestRetry(SourceKind::Rtmp));
    assert_eq!(rig.fire(Timer::IngestRetry(SourceKind::Rtmp)), []);
    assert_eq!(rig.fire(Timer::Hold), []);
}

#[test]
fn nginx_saying_the_publisher_ended_fails_over_at_once() {
    let mut rig = Rig::new();
    let session = rig.live_at(1.0, 4);
    rig.at(5.0);
    // Another publisher's end changes nothing.
    assert!(rig.handle(Event::PublisherDone { id: 9 }).is_empty());
    let actions = rig.handle(Event::PublisherDone { id: 4 });
    assert!(selects(&actions, Input::Offline));
    assert!(actions.contains(&Action::StopIngest { session }));
    assert_eq!(rig.why(), Some(Why::PublisherStopped));
    // The pump's later word on the replaced ingest is stale.
    assert!(!selects(
        &rig.handle(Event::Stopped {
            session,
            silent_for: Duration::from_millis(300),
        }),
        Input::Offline
    ));
}

// --- Live sources in order: SRT and a backup feed ----------------------

impl Rig {
    fn with_sources(kinds: &[SourceKind]) -> Rig {
        Rig::with_sources_and(settings(), kinds)
    }

    fn with_sources_and(settings: Settings, kinds: &[SourceKind]) -> Rig {
        let t0 = Instant::now();
        let mut policy = Policy::with_sources(settings, t0, &["kick"], kinds);
        let log = policy.start();
        let mut rig = Rig {
            policy,
            t0,
            now: t0,
            switch_results: Vec::new(),
            log,
        };
        rig.handle(Event::OutputStreaming {
            destination: "kick",
        });
        rig
    }

    /// The session of the last StartIngest for `kind`.
    fn session_of(&self, kind: SourceKind) -> u64 {
        self.log
            .iter()
            .rev()
            .find_map(|a| match a {
                Action::StartIngest {
                    source, session, ..
                } if *source == kind => Some(*session),
                _ => None,
            })
            .expect("an ingest was started")
    }

    /// At `s`: an SRT caller's frames flow and are ready.
    fn srt_at(&mut self, s: f64) -> u64 {
        self.at(s);
        self.fire(Timer::IngestRetry(SourceKind::Srt));
        let session = self.session_of(SourceKind::Srt);
        self.handle(Event::Flowing { session });
        self.at(s + 0.3);
        self.handle(Event::Ready { session });
        session
    }

    /// At `s`: an RTMP publisher's frames flow and are ready.
    fn rtmp_at(&mut self, s: f64, id: u64) -> u64 {
        self.at(s);
        self.fire(Timer::IngestRetry(SourceKind::Rtmp));
        self.page(Some(id), 1_000);
        let session = self.session_of(SourceKind::Rtmp);
        self.handle(Event::Flowing { session });
        self.at(s + 0.3);
        self.handle(Event::Ready { session });
        session
    }
}

fn feeds(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Feed { session } => Some(*session),
            _ => None,
        })
        .collect()
}

#[test]
fn an_srt_caller_goes_live_without_a_stat_page() {
    let mut rig = Rig::with_sources(&[SourceKind::Srt]);
    let srt = rig.srt_at(1.0);
    assert_eq!(rig.state(), StateName::Live);
    assert_eq!(rig.policy.on_air_source(), Some(SourceKind::Srt));
    assert!(feeds(&rig.log).contains(&srt));
    // A stat page changes nothing for SRT.
    assert!(rig.page(Some(7), 10).is_empty());
    assert!(rig.policy.publisher().is_none());
}

#[test]
fn srt_frames_stopping_re_arm_the_listener_at_once() {
    let mut rig = Rig::with_sources(&[SourceKind::Srt]);
    let srt = rig.srt_at(1.0);
    rig.at(5.0);
    let actions = rig.handle(Event::Stopped {
        session: srt,
        silent_for: Duration::from_millis(300),
    });
    assert!(selects(&actions, Input::Offline));
    assert!(actions.contains(&Action::StopIngest { session: srt }));
    assert!(
        starts_ingest(&actions),
        "a fresh listener at once: {actions:?}"
    );
    assert_eq!(rig.policy.on_air_source(), None);
}

#[test]
fn an_srt_listener_that_ends_with_its_caller_is_no_crash() {
    let mut rig = Rig::with_sources(&[SourceKind::Srt]);
    let srt = rig.srt_at(1.0);
    rig.at(5.0);
    let actions = rig.handle(Event::IngestExited {
        session: srt,
        requested: false,
        reason: "exit status 0".into(),
    });
    assert!(selects(&actions, Input::Offline));
    assert!(actions.contains(&Action::SetTimer {
        timer: Timer::IngestRetry(SourceKind::Srt),
        at: Some(rig.now),
    }));
    assert_eq!(rig.policy.ingest_restarts(), 0);
}

#[test]
fn rtmp_backs_up_srt_without_offline_in_between_and_srt_takes_over_again() {
    let mut rig = Rig::with_sources(&[SourceKind::Srt, SourceKind::Rtmp]);
    let srt = rig.srt_at(1.0);
    let rtmp = rig.rtmp_at(2.0, 1);
    assert_eq!(rig.policy.on_air_source(), Some(SourceKind::Srt));
    // SRT stops: RTMP takes over, the output is not switched.
    rig.at(10.0);
    let actions = rig.handle(Event::Stopped {
        session: srt,
        silent_for: Duration::from_millis(300),
    });
    assert!(!selects(&actions, Input::Offline), "{actions:?}");
    assert_eq!(feeds(&actions), [rtmp]);
    assert_eq!(rig.state(), StateName::Live);
    assert_eq!(rig.policy.on_air_source(), Some(SourceKind::Rtmp));
    assert_eq!(rig.why(), Some(Why::Backup));
    // SRT back within the return window: held for LIVE_STABLE_SECS.
    let srt = rig.srt_at(12.0);
    assert_eq!(rig.policy.on_air_source(), Some(SourceKind::Rtmp));
    assert_eq!(rig.policy.held().map(|(h, _)| h), Some(Hold::Unstable));
    rig.at(15.1);
    let actions = rig.fire(Timer::Hold);
    assert_eq!(feeds(&actions), [srt]);
    assert!(!selects(&actions, Input::Offline));
    assert_eq!(rig.policy.on_air_source(), Some(SourceKind::Srt));
    assert_eq!(rig.why(), Some(Why::PublisherStable));
}

#[test]
fn srt_backs_up_rtmp_the_other_way_round() {
    let mut rig = Rig::with_sources(&[SourceKind::Rtmp, SourceKind::Srt]);
    let rtmp = rig.rtmp_at(1.0, 1);
    let srt = rig.srt_at(2.0);
    assert_eq!(rig.policy.on_air_source(), Some(SourceKind::Rtmp));
    rig.at(10.0);
    let actions = rig.handle(Event::Stopped {
        session: rtmp,
        silent_for: Duration::from_millis(300),
    });
    assert!(!selects(&actions, Input::Offline), "{actions:?}");
    assert_eq!(feeds(&actions), [srt]);
    assert_eq!(rig.policy.on_air_source(), Some(SourceKind::Srt));
    // The backup stops too: now the offline video.
    rig.at(11.0);
    let actions = rig.handle(Event::Stopped {
        session: srt,
        silent_for: Duration::from_millis(300),
    });
    assert!(selects(&actions, Input::Offline));
    assert_eq!(rig.state(), StateName::Offline);
}

#[test]
fn a_backup_only_flowing_goes_live_and_the_first_source_takes_over_when_it_comes() {
    let mut rig = Rig::with_sources(&[SourceKind::Srt, SourceKind::Rtmp]);
    rig.rtmp_at(1.0, 1);
    assert_eq!(rig.policy.on_air_source(), Some(SourceKind::Rtmp));
    // No failover before: SRT takes over at once.
    let srt = rig.srt_at(5.0);
    assert_eq!(rig.policy.on_air_source(), Some(SourceKind::Srt));
    assert!(feeds(&rig.log).ends_with(&[srt]));
}

/// LOW_BITRATE_KBPS on an SRT caller's bytes, which relay counts itself:
/// a starved SRT feed hands over to its flowing RTMP backup without the
/// offline video, and takes over again once its bitrate is back and has
/// held for LIVE_STABLE_SECS.
#[test]
fn a_starved_srt_feed_hands_over_to_its_backup_and_comes_back() {
    let rule = LowBitrate {
        bps: 1_000_000,
        window: Duration::from_secs(5),
    };
    let settings = Settings {
        low_bitrate: Some(rule),
        ..settings()
    };
    let mut rig = Rig::with_sources_and(settings, &[SourceKind::Srt, SourceKind::Rtmp]);
    let srt = rig.srt_at(1.0);
    let rtmp = rig.rtmp_at(1.5, 1);
    // 2 Mb/s for 6 s: SRT stays on air, and its bitrate is shown.
    let mut bytes = 0;
    for s in 2..=8 {
        bytes += 250_000;
        rig.at(s as f64).handle(Event::IngestBytes {
            session: srt,
            bytes,
        });
    }
    assert_eq!(rig.policy.on_air_source(), Some(SourceKind::Srt));
    assert_eq!(rig.policy.live_bitrate(), Some(2_000_000));
    // 400 kb/s: RTMP takes over, the output is not switched.
    let mut handed_over = None;
    for s in 9..=20 {
        bytes += 50_000;
        let actions = rig.at(s as f64).handle(Event::IngestBytes {
            session: srt,
            bytes,
        });
        assert!(!selects(&actions, Input::Offline), "{actions:?}");
        if feeds(&actions) == [rtmp] {
            handed_over = Some(s);
        }
    }
    assert!(handed_over.is_some(), "the backup takes over");
    assert_eq!(rig.policy.on_air_source(), Some(SourceKind::Rtmp));
    assert_eq!(rig.policy.held().map(|(h, _)| h), None);
    // Back at 4 Mb/s: SRT on air again once the average recovered and
    // LIVE_STABLE_SECS passed.
    let mut back = None;
    for s in 21..=40 {
        bytes += 500_000;
        let mut actions = rig.at(s as f64).handle(Event::IngestBytes {
            session: srt,
            bytes,
        });
        actions.extend(rig.fire(Timer::Hold));
        if feeds(&actions) == [srt] && back.is_none() {
            back = Some(s);
        }
    }
    let back = back.expect("SRT back on air");
    assert!(back > 21, "held for LIVE_STABLE_SECS first");
    assert_eq!(rig.policy.on_air_source(), Some(SourceKind::Srt));
    assert_eq!(rig.why(), Some(Why::BitrateRecovered));
}

/// Alone, a starved SRT feed goes offline like an RTMP one; its listener's
/// wait for a caller is no low bitrate.
#[test]
fn a_starved_srt_feed_alone_goes_offline() {
    let rule = LowBitrate {
        bps: 1_000_000,
        window: Duration::from_secs(3),
    };
    let settings = Settings {
        low_bitrate: Some(rule),
        ..settings()
    };
    let mut rig = Rig::with_sources_and(settings, &[SourceKind::Srt]);
    rig.at(0.5).fire(Timer::IngestRetry(SourceKind::Srt));
    let waiting = rig.session_of(SourceKind::Srt);
    for s in 1..=5 {
        rig.at(s as f64).handle(Event::IngestBytes {
            session: waiting,
            bytes: 0,
        });
    }
    assert_eq!(rig.policy.live_bitrate(), None);
    let srt = rig.srt_at(6.0);
    assert_eq!(srt, waiting);
    assert_eq!(rig.state(), StateName::Live);
    let mut bytes = 0;
    for s in 7..=15 {
        bytes += 10_000;
        rig.at(s as f64).handle(Event::IngestBytes {
            session: srt,
            bytes,
        });
    }
    assert_eq!(rig.state(), StateName::Offline);
    assert_eq!(rig.why(), Some(Why::LowBitrate));
    assert_eq!(rig.policy.held().map(|(h, _)| h), Some(Hold::LowBitrate));
}
