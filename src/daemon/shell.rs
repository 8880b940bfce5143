//! The event loop: what happens goes to the policy as events, and what the
//! policy decides is carried out here.

use super::*;

/// The I/O shell around the policy: it turns what happens into
/// [`policy::Event`]s and carries out the [`Action`]s that come back.
pub(super) struct Daemon {
    pub(super) config: Arc<Config>,
    pub(super) options: Options,
    pub(super) policy: Policy,
    /// The policy's timers and when each is due.
    pub(super) timers: BTreeMap<Timer, std::time::Instant>,
    pub(super) switch: Switch,
    pub(super) selection: watch::Sender<Input>,
    pub(super) restart_output: supervisor::Restart,
    pub(super) pump: mpsc::Sender<pump::Command>,
    pub(super) pump_stats: Arc<pump::Stats>,
    /// Live frames' buffers, reused by every ingest of this pipeline.
    pub(super) frames: FramePool,
    /// Pipes that hold live frames instead (`None`: frames go through
    /// `frames`).
    pub(super) pipes: Option<PipePool>,
    pub(super) poll_now: Arc<Notify>,
    /// The running ingest of each live source.
    pub(super) ingests: Vec<IngestHandle>,
    /// The SRT ingest told to stop and not gone yet: it holds the UDP
    /// port, so the next one starts when it is gone (else it fails with
    /// "Address already in use" and waits out the crash backoff).
    pub(super) srt_closing: Option<u64>,
    /// The SRT ingest waiting for that: its session and what it expects.
    pub(super) srt_waiting: Option<(u64, policy::Expect)>,
    /// Every child's supervisor, and the one way to stop them all.
    pub(super) children: Children,
    pub(super) ingest_events: mpsc::Sender<IngestExit>,
    pub(super) metrics: watch::Sender<metrics::Snapshot>,
    /// What nginx's on_publish endpoint accepted, with PUBLISH_KEY set.
    pub(super) approvals: Option<Approvals>,
    pub(super) stats_ok: bool,
    /// Switches the zmq filter did not confirm.
    pub(super) switch_failures: u64,
    pub(super) output: OutputState,
    /// Every destination's pusher, in DESTINATIONS' order.
    pub(super) destinations: Vec<DestinationState>,
    pub(super) fanout: FanOut,
    /// Where new destinations' pushers report.
    pub(super) pusher_events: mpsc::Sender<PusherEvent>,
    pub(super) ready_sent: bool,
    pub(super) last_status: String,
}

/// The next `on_publish_done` client id, or never without the endpoint.
async fn next_publish_done(rx: &mut Option<mpsc::UnboundedReceiver<u64>>) -> Option<u64> {
    if let Some(open) = rx {
        if let Some(id) = open.recv().await {
            return Some(id);
        }
        *rx = None;
    }
    std::future::pending().await
}

impl Daemon {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn event_loop(
        &mut self,
        shutdown: impl Future<Output = ()>,
        mut pump_events: mpsc::Receiver<PumpEvent>,
        mut output_events: mpsc::Receiver<OutputEvent>,
        mut stat_pages: mpsc::Receiver<Result<StatPage, String>>,
        mut ingest_events: mpsc::Receiver<IngestExit>,
        mut api_calls: mpsc::Receiver<Call>,
        mut publish_done: Option<mpsc::UnboundedReceiver<u64>>,
        mut updates: watch::Receiver<Arc<Config>>,
        mut pusher_events: mpsc::Receiver<PusherEvent>,
    ) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        loop {
            let next_timer = self.timers.values().min().copied().map(Instant::from_std);
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                Some(ev) = pump_events.recv() => {
                    let event = match ev {
                        PumpEvent::Flowing { session } => Event::Flowing { session },
                        PumpEvent::Ready { session } => Event::Ready { session },
                        PumpEvent::Stopped { session, silent_for } => {
                            Event::Stopped { session, silent_for }
                        }
                    };
                    self.dispatch(event).await;
                }
                Some(ev) = output_events.recv() => self.on_output(ev).await,
                Some((name, ev)) = pusher_events.recv() => self.on_pusher(&name, ev),
                Some(page) = stat_pages.recv() => self.on_stats(page).await,
                Some(ev) = ingest_events.recv() => self.on_ingest_exit(ev).await,
                Some(id) = next_publish_done(&mut publish_done) => {
                    self.dispatch(Event::PublisherDone { id }).await;
                }
                Some((request, reply)) = api_calls.recv() => {
                    let answer = self.on_request(request).await;
                    let _ = reply.send(answer);
                }
                _ = sleep_until(next_timer.unwrap_or_else(far_future)), if next_timer.is_some() => {
                    self.fire_timers().await;
                }
                _ = housekeeping.tick() => {
                    self.housekeeping();
                    self.count_ingest_bytes().await;
                }
                Ok(()) = updates.changed() => {
                    let new = updates.borrow_and_update().clone();
                    self.apply_tuning(new).await;
                }
            }
        }
    }

    /// Hands `event` to the policy and carries out what it decides;
    /// returns the policy's answer to an operator, if it gave one.
    async fn dispatch(&mut self, event: Event) -> Option<Reply> {
        let actions = self.policy.handle(std::time::Instant::now(), event);
        self.carry_out(actions).await
    }

    /// Carries out `actions` in order. A switch's result goes back to the
    /// policy at once, and what it decides then is carried out too.
    pub(super) async fn carry_out(&mut self, actions: Vec<Action>) -> Option<Reply> {
        let mut queue = VecDeque::from(actions);
        let mut reply = None;
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Select(input) => {
                    // A (re)starting output starts on the selection.
                    let _ = self.selection.send(input);
                    let result = self.select(input).await;
                    if matches!(result, Switched::Failed(_)) {
                        self.switch_failures += 1;
                    }
                    let more = self
                        .policy
                        .handle(std::time::Instant::now(), Event::Switched { input, result });
                    queue.extend(more);
                }
                Action::StartIngest {
                    source,
                    session,
                    expect,
                } => {
                    if let Err(error) = self.start_ingest(source, session, expect) {
                        let more = self.policy.handle(
                            std::time::Instant::now(),
                            Event::IngestFailed {
                                session,
                                error: error.to_string(),
                            },
                        );
                        queue.extend(more);
                    }
                }
                Action::StopIngest { session } => self.stop_ingest(session),
                Action::Feed { session } => {
                    let _ = self.pump.try_send(pump::Command::Air(session));
                }
                Action::SetTimer { timer, at } => match at {
                    Some(at) => {
                        self.timers.insert(timer, at);
                    }
                    None => {
                        self.timers.remove(&timer);
                    }
                },
                Action::RestartOutput => {
                    self.restart_output.request();
                }
                Action::PollNow => self.poll_now.notify_one(),
                Action::Reply(r) => reply = Some(*r),
            }
        }
        reply
    }

    /// Hands every timer that is due to the policy.
    async fn fire_timers(&mut self) {
        let now = std::time::Instant::now();
        let due: Vec<Timer> = self
            .timers
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(timer, _)| *timer)
            .collect();
        for timer in due {
            self.timers.remove(&timer);
            self.dispatch(Event::Timer(timer)).await;
        }
    }

    /// A reload that changed only what applies at once
    /// ([`ReloadPlan::ApplyAtOnce`](crate::config::ReloadPlan)): no child is
    /// restarted.
    async fn apply_tuning(&mut self, new: Arc<Config>) {
        let old = std::mem::replace(&mut self.config, new.clone());
        if old.destinations != new.destinations {
            self.apply_destinations(&new);
        }
        if old.policy.offline_after != new.policy.offline_after {
            let _ = self
                .pump
                .send(pump::Command::SetGap(new.policy.offline_after))
                .await;
        }
        info!(
            offline_after_ms = new.policy.offline_after.as_millis() as u64,
            live_stable_s = new.policy.live_stable.as_secs_f64(),
            low_bitrate_kbps = new.policy.low_bitrate.map(|l| l.bps / 1000),
            low_bitrate_s = new.policy.low_bitrate.map(|l| l.window.as_secs_f64()),
            poll_interval_s = new.live.poll_interval.as_secs_f64(),
            allowed_publishers = %new.live.allowed_publishers,
            "reload: new settings applied at once; the output keeps running"
        );
        self.dispatch(Event::Reconfigured(settings(&new))).await;
    }

    /// A reload changed the destinations: only those removed or changed
    /// are stopped, only those added or changed are started; the rest, and
    /// the encoder, run on.
    fn apply_destinations(&mut self, new: &Arc<Config>) {
        let mut old: Vec<DestinationState> = std::mem::take(&mut self.destinations);
        for named in &new.destinations {
            let same = old.iter().position(|d| d.handle.named == *named);
            let state = match same {
                Some(i) => old.remove(i),
                None => {
                    info!(destination = %named.name, url = %named.destination.masked(), "reload: destination starts");
                    DestinationState::new(pusher::supervise(
                        &self.children,
                        new.clone(),
                        named.clone(),
                        self.options.ffmpeg.clone(),
                        self.fanout.clone(),
                        self.pusher_events.clone(),
                    ))
                }
            };
            self.destinations.push(state);
        }
        // Dropping a destination's handle stops its pusher.
        for gone in old {
            info!(destination = gone.name(), "reload: destination stops");
        }
    }

    async fn on_output(&mut self, ev: OutputEvent) {
        match ev {
            OutputEvent::Started { pid } => {
                self.output.pid = Some(pid);
                self.output.since = Some(Instant::now());
                self.output.last_progress = None;
                self.output.in_backoff = false;
            }
            OutputEvent::Progress(p) => {
                self.output.rates = Some((p.fps, p.speed));
                let advanced = self
                    .output
                    .last_progress
                    .is_none_or(|(_, frame)| p.frame > frame);
                if advanced && p.frame > 0 {
                    let first = self.output.last_progress.is_none();
                    self.output.last_progress = Some((Instant::now(), p.frame));
                    if first {
                        self.on_output_streaming().await;
                    }
                }
            }
            OutputEvent::Exited {
                reason,
                uptime,
                retry_in,
            } => {
                // An output that streamed lost its connection (the platform
                // ended the broadcast, the network dropped): a reconnect.
                // One that never streamed is still trying to get through.
                let again = if self.output.last_progress.is_some() {
                    "reconnecting"
                } else {
                    "retrying"
                };
                let restarts = self.output.restarts + 1;
                self.output = OutputState {
                    restarts,
                    in_backoff: true,
                    last_exit: Some(LastExit {
                        at: Instant::now(),
                        kind: reason.kind(),
                        was_streaming: again == "reconnecting",
                        detail: reason.to_string(),
                    }),
                    ..OutputState::default()
                };
                warn!(
                    uptime_s = uptime.as_secs(),
                    restarts,
                    "output stopped: {reason}; {again} in {:.1} s",
                    retry_in.as_secs_f64(),
                );
                self.dispatch(Event::OutputStopped {
                    destination: DESTINATION,
                })
                .await;
            }
        }
    }

    /// What a destination's pusher did. Nothing here touches the encoder
    /// or another destination.
    fn on_pusher(&mut self, name: &str, ev: OutputEvent) {
        let Some(d) = self.destinations.iter_mut().find(|d| d.name() == name) else {
            return;
        };
        match ev {
            OutputEvent::Started { pid } => {
                d.pid = Some(pid);
                d.since = Some(Instant::now());
                d.last_progress = None;
            }
            OutputEvent::Progress(p) => {
                let advanced = d.last_progress.is_none_or(|(_, frame)| p.frame > frame);
                if advanced && p.frame > 0 {
                    if d.last_progress.is_none() {
                        info!(destination = name, pid = d.pid, "destination streaming");
                    }
                    d.last_progress = Some((Instant::now(), p.frame));
                }
            }
            OutputEvent::Exited {
                reason,
                uptime,
                retry_in,
            } => {
                let again = if d.up() { "reconnecting" } else { "retrying" };
                d.reconnects += 1;
                d.pid = None;
                d.since = None;
                d.last_progress = None;
                d.bitrate_bps = None;
                d.last_error = Some(reason.to_string());
                warn!(
                    destination = name,
                    uptime_s = uptime.as_secs(),
                    reconnects = d.reconnects,
                    "destination {name} stopped: {reason}; {again} in {:.1} s{}",
                    retry_in.as_secs_f64(),
                    refusal_hint(&reason.to_string(), uptime, name)
                );
            }
        }
        self.maybe_ready();
    }

    /// READY=1 once the encoder streams and one destination is up: an
    /// unreachable destination does not hold the others back, and one
    /// that is up proves the whole path.
    fn maybe_ready(&mut self) {
        let encoding = self.output.last_progress.is_some();
        if !self.ready_sent && encoding && self.destinations.iter().any(|d| d.up()) {
            self.ready_sent = true;
            notify::ready();
        }
    }

    /// The output's first frame went out: tell systemd, re-assert the selection.
    async fn on_output_streaming(&mut self) {
        let input = *self.selection.borrow();
        info!(
            pid = self.output.pid,
            on_air = input.name(),
            "output streaming"
        );
        self.maybe_ready();
        self.dispatch(Event::OutputStreaming {
            destination: DESTINATION,
        })
        .await;
    }

    async fn on_stats(&mut self, page: Result<StatPage, String>) {
        let page = match page {
            Ok(page) => {
                if !self.stats_ok {
                    info!("stat page answers again");
                    self.stats_ok = true;
                }
                page
            }
            Err(err) => {
                // Keep what is on air: live frames, not the stat page,
                // decide failover.
                if self.stats_ok {
                    warn!(url = %self.config.live.stats_url, "stat page unavailable: {err}");
                    self.stats_ok = false;
                }
                return;
            }
        };
        let stream = page.stream(
            &self.config.live.rtmp_app,
            &self.config.live.rtmp_stream_name,
        );
        let publisher = stream.and_then(|s| {
            s.publisher().map(|p| policy::Publisher {
                id: p.id,
                address: p.address,
                unchecked: self
                    .approvals
                    .as_ref()
                    .is_some_and(|a| a.vouch(p.id, p.time) == Vouch::NeverAsked),
                has_audio: s.has_audio(),
            })
        });
        let summary = StatSummary {
            publisher,
            bytes_in: stream.map_or(0, |s| s.bytes_in),
        };
        self.dispatch(Event::StatPage(summary)).await;
    }

    async fn on_ingest_exit(&mut self, ev: IngestExit) {
        self.ingests.retain(|i| i.session != ev.session);
        if self.srt_closing == Some(ev.session) {
            self.srt_closing = None;
            if let Some((session, expect)) = self.srt_waiting.take() {
                if let Err(error) = self.start_ingest(policy::SourceKind::Srt, session, expect) {
                    self.dispatch(Event::IngestFailed {
                        session,
                        error: error.to_string(),
                    })
                    .await;
                }
            }
        }
        self.dispatch(Event::IngestExited {
            session: ev.session,
            requested: ev.requested,
            reason: ev.reason.detail(),
        })
        .await;
    }

    /// Puts `input` on air through the output's zmq filter. An output that
    /// is not streaming (starting, or waiting to retry a destination that
    /// refused it) has no filter to ask: it starts on the selection, which
    /// is re-asserted once it streams, so there is nothing to confirm — and
    /// nothing to restart, which would only cut its connection attempt.
    async fn select(&self, input: Input) -> Switched {
        if self.output.last_progress.is_none() || self.output_gone() {
            return Switched::NotStreaming;
        }
        match self.switch.select(input).await {
            Ok(()) => Switched::Confirmed,
            Err(err) => Switched::Failed(err.to_string()),
        }
    }

    /// The output we last heard of has exited, though its supervisor's word
    /// may still be queued behind the event being handled: it restarts on
    /// the selection, so there is no filter to ask. (A destination that
    /// refuses the stream kills the output right after it starts
    /// streaming; a go-live at that moment asked a dead filter, then
    /// restarted outputs that were already restarting.)
    fn output_gone(&self) -> bool {
        self.output.pid.is_some_and(|pid| {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None)
                == Err(nix::errno::Errno::ESRCH)
        })
    }

    /// Starts the ingest FFmpeg of session `session`, which waits for (or
    /// joins) the publisher.
    fn start_ingest(
        &mut self,
        source: policy::SourceKind,
        session: u64,
        expect: policy::Expect,
    ) -> std::io::Result<()> {
        // One ingest per source: a new one replaces the source's last.
        if let Some(old) = self.ingests.iter().find(|i| i.source == source) {
            let old = old.session;
            self.stop_ingest(old);
        }
        if source == policy::SourceKind::Srt && self.srt_closing.is_some() {
            tracing::debug!(
                session,
                "SRT ingest waits for the last one to free the port"
            );
            self.srt_waiting = Some((session, expect));
            return Ok(());
        }
        let expect = match expect {
            policy::Expect::AudioVideo => Expect::AudioVideo,
            policy::Expect::VideoOnly => Expect::VideoOnly,
            policy::Expect::Either => Expect::Either,
        };
        let started = ingest::spawn(
            &self.config,
            source,
            expect,
            session,
            &self.options.ffmpeg,
            &self.frames,
            self.pipes.as_ref(),
        )?;
        let pid = started.child.pid;
        let received = started.received.clone();
        info!(session, pid, source = source.name(), expect = ?expect, "ingest waiting for live frames");
        let _ = self
            .pump
            .try_send(pump::Command::Feed(source, Some(started.feed)));
        let child = self.children.once(
            started.child,
            session,
            self.ingest_events.clone(),
            tracing::info_span!("ingest", session),
        );
        self.ingests.push(IngestHandle {
            source,
            session,
            child,
            received,
        });
        Ok(())
    }

    /// Tells the ingest of `session` to stop (SIGTERM, then SIGKILL after
    /// KILL_GRACE) without waiting for it.
    fn stop_ingest(&mut self, session: u64) {
        if self.srt_waiting.is_some_and(|(s, _)| s == session) {
            self.srt_waiting = None;
        }
        let Some(i) = self.ingests.iter().position(|i| i.session == session) else {
            return;
        };
        let handle = self.ingests.remove(i);
        if handle.source == policy::SourceKind::Srt {
            self.srt_closing = Some(session);
        }
        let _ = self.pump.try_send(pump::Command::Feed(handle.source, None));
        // Its supervisor stops the child in the background; shutdown waits
        // for all of them.
        handle.child.stop();
    }

    /// Stops every ingest (at shutdown).
    pub(super) fn stop_all_ingests(&mut self) {
        let sessions: Vec<u64> = self.ingests.iter().map(|i| i.session).collect();
        for session in sessions {
            self.stop_ingest(session);
        }
    }

    /// Hands the policy the byte counts relay keeps itself (SRT's), for
    /// the bitrate and LOW_BITRATE_KBPS.
    async fn count_ingest_bytes(&mut self) {
        let counts: Vec<(u64, u64)> = self
            .ingests
            .iter()
            .filter_map(|i| Some((i.session, i.received.as_ref()?.load(Ordering::Relaxed))))
            .collect();
        for (session, bytes) in counts {
            self.dispatch(Event::IngestBytes { session, bytes }).await;
        }
    }

    fn housekeeping(&mut self) {
        for d in &mut self.destinations {
            let sent = d.handle.sent.load(Ordering::Relaxed);
            let (at, before) = d.sampled;
            let secs = at.elapsed().as_secs_f64();
            if secs >= 2.0 {
                d.bitrate_bps = d
                    .up()
                    .then(|| ((sent.saturating_sub(before)) as f64 * 8.0 / secs) as u64);
                d.sampled = (Instant::now(), sent);
            }
        }
        self.metrics.send_replace(self.snapshot());
        let status = self.status_line();
        if status != self.last_status {
            notify::status(&status);
            self.last_status = status;
        }
        // WATCHDOG=1 only while the output advances — or while it waits out
        // a crash backoff, which is relay working as designed (a dead
        // destination is not a hung daemon).
        let progressing = self
            .output
            .last_progress
            .is_some_and(|(at, _)| at.elapsed() < OUTPUT_STALL);
        let starting = self
            .output
            .since
            .is_some_and(|t| t.elapsed() < OUTPUT_STALL);
        if progressing || starting || self.output.in_backoff {
            notify::watchdog();
        }
    }

    /// An operator's request from the control socket.
    async fn on_request(&mut self, request: Request) -> Reply {
        match request {
            Request::Status => Reply::Status(self.status()),
            Request::Switch { to } => {
                self.dispatch(Event::Manual(to))
                    .await
                    .unwrap_or_else(|| Reply::Error {
                        message: "the switch was not answered".to_string(),
                    })
            }
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}
