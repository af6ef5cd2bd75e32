//! `devkit loadgen pipeline`: the whole pipeline under a chosen load, end to end.
//!
//! Consumes the services named by the usual settings (NATS, MySQL, Redis) and the built stage
//! binaries. Creates its own database and subject prefix (both named after the run id), a
//! task with the requested number of targets ([`super::setup`]), and allocates it. Starts the
//! feed ([`super::feed`]) and the backend stub ([`crate::backend_stub`] writing into
//! [`super::alerts::AlertSink`]) in this process, and `allocator`, `evaluate`, `notify` and
//! `ingest` as child processes.
//!
//! A run goes through the feed's phases: it waits until ingest subscribed every target,
//! trickles trades until the first alert arrives (the pipeline is ready), warms up at the
//! chosen rate, then measures for the chosen duration. After the last measured trade it waits
//! until every expected alert arrived and evaluate's consumer has nothing pending, or until
//! the drain timeout. Produces one [`ResultLine`]: events and alerts per second over the
//! measured interval (first measured trade to the last measured alert), alert latency
//! percentiles, frames stored, and the CPU time and peak memory of every process.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use futures::StreamExt;
use monitor_core::codec;
use monitor_core::messages::{Alert, Chain};
use monitor_core::settings::{DbSettings, NatsSettings};
use monitor_core::titles::AlertFacts;
use monitor_core::topology;
use monitor_core::Subjects;

use super::alerts::{AlertBook, AlertSink};
use super::feed::{FeedCounters, InFlightWindow, LoadFeed};
use super::procstat::{self, NamedPid, ProcSample, ProcUsage};
use super::report::{per_second, ResultLine};
use super::schedule::Phase;
use super::setup::{create_task, target_address};
use super::stages::{Launcher, Stage};
use super::{
    cleanup_nats, delete_bucket, drop_database, sleep_or_stop, LoadgenError, PipelineSettings,
    Rate, RunClock,
};
use crate::backend_stub::{run_backend_stub, BackendStub};

/// Chain of the generated task.
const CHAIN: Chain = Chain::Eth;
/// Time for `allocator allocate` to finish.
const ALLOCATE_TIMEOUT: Duration = Duration::from_secs(120);
/// Time for ingest to subscribe every target.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(120);
/// Time for the first alert to arrive once trades flow.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Time a stage gets to drain after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(20);
/// Interval of the checks while waiting.
const POLL: Duration = Duration::from_millis(50);
/// Number of missing alert ids logged when the drain times out.
const MISSING_SHOWN: usize = 5;
/// Interval of the progress log and backlog samples.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// Largest consumer backlogs sampled during a run.
#[derive(Debug, Default)]
struct Backlogs {
    /// Event frames stored and not yet acknowledged by evaluate.
    evaluate: u64,
    /// Alerts stored and not yet acknowledged by notify.
    notify: u64,
}

/// The in-process servers and the stages of a run.
struct Pipeline {
    settings: PipelineSettings,
    run_id: String,
    task_id: u64,
    nats: NatsSettings,
    js: jetstream::Context,
    clock: RunClock,
    phase: watch::Sender<Phase>,
    feed: Arc<FeedCounters>,
    book: Arc<AlertBook>,
    stages: Vec<Stage>,
    launcher: Launcher,
}

/// Runs the pipeline under load and returns the result line.
pub async fn run(
    settings: PipelineSettings,
    shutdown: CancellationToken,
) -> Result<ResultLine, LoadgenError> {
    let run_id = settings.run.run_id();
    let log_dir = settings.log_dir(&run_id)?;
    let db = DbSettings {
        name: run_id.clone(),
        ..settings.db.clone()
    };
    let nats = NatsSettings {
        subject_prefix: run_id.clone(),
        ..settings.nats.clone()
    };
    tracing::info!(run_id, log_dir = %log_dir.display(), targets = settings.run.targets, rate = %settings.rate, "loadgen pipeline run starting");

    let pool = monitor_core::db::migrate(&db).await?;
    let addresses: Vec<String> = (0..settings.run.target_count())
        .map(target_address)
        .collect();
    let task = create_task(&pool, CHAIN, &addresses).await?;
    tracing::info!(
        task_id = task.task_id,
        targets = addresses.len(),
        "loadgen task created"
    );

    let client = nats
        .connect(&format!("loadgen {run_id}"))
        .await
        .map_err(|source| LoadgenError::Connect {
            url: nats.url.clone(),
            source,
        })?;
    let js = jetstream::new(client.clone());
    topology::ensure(&js, &nats).await?;

    let clock = RunClock::start();
    let servers = CancellationToken::new();
    let (phase, phase_rx) = watch::channel(Phase::Idle);
    let window = match settings.rate {
        Rate::Max => Some(InFlightWindow::new(
            settings.max_in_flight,
            settings.large_every,
        )),
        Rate::PerSecond(_) => None,
    };
    let feed = Arc::new(LoadFeed::new(
        &addresses,
        CHAIN,
        settings.rate.per_second(),
        settings.large_every,
        window.clone(),
        phase_rx,
        clock,
    ));
    let feed_counters = feed.counters();
    let (feed_listener, feed_address) = bind().await?;
    let feed_task = tokio::spawn(feed.serve(feed_listener, servers.clone()));
    let book = AlertBook::new(clock, window);
    let (stub_listener, stub_address) = bind().await?;
    let stub_task = spawn_stub(stub_listener, Arc::clone(&book), servers.clone());
    let published_task = spawn_alert_watch(
        client.clone(),
        nats.subjects().all_alerts(),
        Arc::clone(&book),
        servers.clone(),
    )
    .await?;

    let launcher = Launcher {
        bin_dir: settings.bin_dir.clone(),
        log_dir: log_dir.clone(),
        env: stage_env(
            &run_id,
            &nats,
            &db,
            &settings,
            &format!("ws://{feed_address}"),
            &format!("ws://{stub_address}/websocket/monitor"),
        ),
    };
    let mut pipeline = Pipeline {
        settings,
        run_id,
        task_id: task.task_id,
        nats,
        js,
        clock,
        phase,
        feed: feed_counters,
        book,
        stages: Vec::new(),
        launcher,
    };

    let task_id = task.task_id.to_string();
    let result = match pipeline
        .launcher
        .run_to_end(
            "allocate",
            "allocator",
            &["allocate", "--task-id", &task_id],
            ALLOCATE_TIMEOUT,
        )
        .await
    {
        Ok(()) => pipeline.start_and_measure(&shutdown).await,
        Err(error) => Err(error.into()),
    };

    pipeline.stop_stages().await;
    servers.cancel();
    let _ = feed_task.await;
    let _ = stub_task.await;
    let _ = published_task.await;
    if !pipeline.settings.run.keep {
        let subjects = pipeline.nats.subjects();
        cleanup_nats(&pipeline.js, &subjects).await;
        // Notify creates this bucket itself, so only a pipeline run has one.
        delete_bucket(&pipeline.js, &subjects.notify_status_bucket()).await;
        drop_database(&pool, &pipeline.run_id).await;
    }
    pool.close().await;
    tracing::info!(log_dir = %log_dir.display(), "loadgen pipeline run finished");
    result
}

async fn bind() -> Result<(TcpListener, std::net::SocketAddr), LoadgenError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(LoadgenError::Listen)?;
    let address = listener.local_addr().map_err(LoadgenError::Listen)?;
    Ok((listener, address))
}

fn spawn_stub(
    listener: TcpListener,
    book: Arc<AlertBook>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let stub = BackendStub {
        answer_pings: true,
        ..BackendStub::default()
    };
    tokio::spawn(async move {
        if let Err(error) = run_backend_stub(listener, stub, AlertSink::new(book), shutdown).await {
            tracing::error!(error = %error, "loadgen backend stub failed");
        }
    })
}

/// Watches the alerts subject with a plain subscription, which sees each alert as evaluate
/// publishes it, and records how long after its trade that was.
async fn spawn_alert_watch(
    client: async_nats::Client,
    subject: String,
    book: Arc<AlertBook>,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, LoadgenError> {
    let mut alerts = client
        .subscribe(subject)
        .await
        .map_err(|e| LoadgenError::nats("subscribe to the alerts subject", e))?;
    Ok(tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return,
                message = alerts.next() => match message {
                    Some(message) => message,
                    None => return,
                },
            };
            let seen_ns = book.clock().elapsed_ns();
            match codec::decode::<Alert>(&message.payload) {
                Ok(alert) => {
                    let facts = AlertFacts::of(&alert);
                    let tx_hash = facts.trade.as_ref().and_then(|t| t.tx_hash.as_deref());
                    book.record_published(tx_hash, seen_ns);
                }
                Err(error) => {
                    tracing::warn!(subject = %message.subject, error = %error, "failed to decode an alert seen on the alerts subject")
                }
            }
        }
    }))
}

/// Settings of every stage, as the environment variables the binaries read.
fn stage_env(
    run_id: &str,
    nats: &NatsSettings,
    db: &DbSettings,
    settings: &PipelineSettings,
    feed_url: &str,
    ws_url: &str,
) -> Vec<(String, String)> {
    let redis = &settings.redis;
    let mut env = vec![
        ("NATS_URL", nats.url.clone()),
        ("MONITOR_SUBJECT_PREFIX", nats.subject_prefix.clone()),
        ("NATS_REPLICAS", nats.replicas.to_string()),
        ("DB_HOST", db.host.clone()),
        ("DB_PORT", db.port.to_string()),
        ("DB_USER", db.user.clone()),
        ("DB_PASSWORD", db.password.expose().to_owned()),
        ("DB_NAME", db.name.clone()),
        ("REDIS_HOST", redis.host.clone()),
        ("REDIS_PORT", redis.port.to_string()),
        ("REDIS_DB", redis.db.to_string()),
        ("REDIS_PASSWORD", redis.password.expose().to_owned()),
        ("BIRDEYE_WS_URL", feed_url.to_owned()),
        ("BIRDEYE_API_KEY", "loadgen".to_owned()),
        ("WS_URL", ws_url.to_owned()),
        ("CONSUMER_ID_PREFIX", run_id.to_owned()),
    ];
    if let Some(creds) = &nats.creds {
        env.push(("NATS_CREDS", creds.display().to_string()));
    }
    env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

impl Pipeline {
    async fn start_and_measure(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<ResultLine, LoadgenError> {
        for (name, args) in [
            ("allocator", ["run"]),
            ("evaluate", ["run"]),
            ("notify", ["run"]),
            ("ingest", ["run"]),
        ] {
            let stage = self.launcher.spawn(name, name, &args)?;
            self.stages.push(stage);
        }

        let targets = self.settings.run.target_count();
        let feed = Arc::clone(&self.feed);
        self.wait_until(
            "ingest subscribed every target",
            SUBSCRIBE_TIMEOUT,
            shutdown,
            || {
                let done = feed.subscribed_targets() >= targets;
                async move { done }
            },
        )
        .await?;
        tracing::info!(
            connections = self.feed.open_connections(),
            "every target subscribed, probing"
        );

        self.phase.send_replace(Phase::Probe);
        let book = Arc::clone(&self.book);
        self.wait_until("the first alert arrived", READY_TIMEOUT, shutdown, || {
            let done = book.read(|t| t.total() > 0).unwrap_or(false);
            async move { done }
        })
        .await?;

        tracing::info!(
            warmup_sec = self.settings.run.warmup.as_secs_f64(),
            "pipeline ready, warming up"
        );
        self.phase.send_replace(Phase::Warmup);
        sleep_or_stop(self.settings.run.warmup, shutdown).await?;

        self.measure(shutdown).await
    }

    async fn measure(&mut self, shutdown: &CancellationToken) -> Result<ResultLine, LoadgenError> {
        let processes = self.processes();
        let before = sample_all(&processes);
        let frames_before = self.events_stream_state().await;
        let start_ns = self.clock.elapsed_ns();
        self.phase.send_replace(Phase::Measure);
        tracing::info!(
            duration_sec = self.settings.run.duration.as_secs_f64(),
            "measuring"
        );
        let mut backlogs = Backlogs::default();
        let measure_end = tokio::time::Instant::now() + self.settings.run.duration;
        while tokio::time::Instant::now() < measure_end {
            let left = measure_end - tokio::time::Instant::now();
            sleep_or_stop(left.min(PROGRESS_INTERVAL), shutdown).await?;
            self.record_progress(&mut backlogs).await;
        }
        self.phase.send_replace(Phase::Stopped);
        let sent_end_ns = self.clock.elapsed_ns();

        let complete = self.drain(&mut backlogs, shutdown).await?;
        let after = sample_all(&processes);
        let frames_after = self.events_stream_state().await;

        let mut line = ResultLine::new("pipeline");
        line.push("targets", self.settings.run.targets);
        line.push("rate", self.settings.rate);
        line.push("large_every", self.settings.large_every);
        if self.settings.rate == Rate::Max {
            line.push("max_in_flight", self.settings.max_in_flight);
        }
        let last_ns = self
            .book
            .read(|t| t.last_measured_ns)
            .flatten()
            .unwrap_or(sent_end_ns)
            .max(sent_end_ns);
        let seconds = (last_ns - start_ns) as f64 / 1e9;
        self.push_counts(&mut line, seconds, complete);
        push_frames(&mut line, frames_before, frames_after);
        line.push("evaluate_backlog_max", backlogs.evaluate);
        line.push("notify_backlog_max", backlogs.notify);
        line.push_usage(&usage(&processes, &before, &after));
        line.push("run_id", &self.run_id);
        Ok(line)
    }

    fn push_counts(&self, line: &mut ResultLine, seconds: f64, complete: bool) {
        let events = self.feed.sent(Phase::Measure);
        let expected = self.feed.expected_measured_alerts();
        line.push_f64("duration_s", seconds, 2);
        line.push("events", events);
        line.push_f64("events_per_s", per_second(events, seconds), 0);
        line.push("large_trades", self.feed.large_measured());
        self.book.read(|tally| {
            let alerts = tally.received(Phase::Measure);
            line.push("alerts", alerts);
            line.push("alerts_expected", expected);
            line.push_f64("alerts_per_s", per_second(alerts, seconds), 1);
            line.push("alert_repeats", tally.repeats);
            line.push_ms("latency_p50_ms", tally.measured.percentile(0.50));
            line.push_ms("latency_p99_ms", tally.measured.percentile(0.99));
            line.push_ms("latency_p999_ms", tally.measured.percentile(0.999));
            line.push_ms("latency_max_ms", tally.measured.max());
            line.push_ms("published_p50_ms", tally.published.percentile(0.50));
            line.push_ms("published_p99_ms", tally.published.percentile(0.99));
        });
        line.push("complete", if complete { "yes" } else { "no" });
    }

    /// Waits until every expected alert arrived and evaluate has nothing pending; returns
    /// whether that happened before the drain timeout.
    async fn drain(
        &mut self,
        backlogs: &mut Backlogs,
        shutdown: &CancellationToken,
    ) -> Result<bool, LoadgenError> {
        let deadline = tokio::time::Instant::now() + self.settings.drain_timeout;
        let mut next_progress = tokio::time::Instant::now() + PROGRESS_INTERVAL;
        loop {
            let expected = self.feed.expected_measured_alerts();
            let received = self.book.read(|t| t.received(Phase::Measure)).unwrap_or(0);
            let evaluate_backlog = self
                .consumer_backlog(
                    &self.nats.subjects().events_stream(),
                    Subjects::EVALUATE_CONSUMER,
                )
                .await;
            if received >= expected && evaluate_backlog == Some(0) {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= next_progress {
                next_progress += PROGRESS_INTERVAL;
                self.record_progress(backlogs).await;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    expected,
                    received,
                    missing = ?self.missing_alerts(MISSING_SHOWN),
                    timeout_sec = self.settings.drain_timeout.as_secs(),
                    "drain timed out: not every expected alert arrived"
                );
                return Ok(false);
            }
            self.check_stages()?;
            sleep_or_stop(POLL, shutdown).await?;
        }
    }

    /// Returns up to `limit` ids of measured alerts that did not arrive.
    fn missing_alerts(&self, limit: usize) -> Vec<String> {
        self.feed
            .measured_alert_ids()
            .into_iter()
            .map(|(target, second)| {
                let address = target_address(target as usize);
                format!("{}:{address}:large_trade:{second}", self.task_id)
            })
            .filter(|key| !self.book.has_key(key))
            .take(limit)
            .collect()
    }

    /// Messages of `stream` that `consumer` has not acknowledged yet: undelivered plus
    /// delivered and unacknowledged. `None` when the consumer cannot be read.
    async fn consumer_backlog(&self, stream: &str, consumer: &str) -> Option<u64> {
        let stream = self.js.get_stream(stream).await.ok()?;
        let info = stream.consumer_info(consumer).await.ok()?;
        Some(info.num_pending + info.num_ack_pending as u64)
    }

    /// Logs the progress of the load and keeps the largest consumer backlogs, which show the
    /// stage that falls behind: evaluate (frames) or notify (alerts).
    async fn record_progress(&self, backlogs: &mut Backlogs) {
        let subjects = self.nats.subjects();
        let evaluate = self
            .consumer_backlog(&subjects.events_stream(), Subjects::EVALUATE_CONSUMER)
            .await;
        let notify = self
            .consumer_backlog(&subjects.alerts_stream(), Subjects::NOTIFY_ALERTS_CONSUMER)
            .await;
        backlogs.evaluate = backlogs.evaluate.max(evaluate.unwrap_or(0));
        backlogs.notify = backlogs.notify.max(notify.unwrap_or(0));
        let alerts = self.book.read(|t| t.received(Phase::Measure)).unwrap_or(0);
        tracing::info!(
            sent = self.feed.sent(Phase::Measure),
            alerts,
            evaluate_backlog = ?evaluate,
            notify_backlog = ?notify,
            "load progress"
        );
    }

    /// Messages and bytes stored in the events stream.
    async fn events_stream_state(&self) -> Option<(u64, u64)> {
        let name = self.nats.subjects().events_stream();
        let mut stream = self.js.get_stream(&name).await.ok()?;
        let info = stream.info().await.ok()?;
        Some((info.state.messages, info.state.bytes))
    }

    /// Polls `condition` until it holds, failing after `limit`, on shutdown or when a stage
    /// exited.
    async fn wait_until<F, Fut>(
        &mut self,
        what: &str,
        limit: Duration,
        shutdown: &CancellationToken,
        mut condition: F,
    ) -> Result<(), LoadgenError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + limit;
        while !condition().await {
            self.check_stages()?;
            if tokio::time::Instant::now() >= deadline {
                return Err(LoadgenError::Timeout {
                    what: what.to_owned(),
                    timeout_sec: limit.as_secs(),
                    log_dir: self.launcher.log_dir.display().to_string(),
                });
            }
            sleep_or_stop(POLL, shutdown).await?;
        }
        Ok(())
    }

    fn check_stages(&mut self) -> Result<(), LoadgenError> {
        for stage in &mut self.stages {
            stage.check_running()?;
        }
        Ok(())
    }

    /// The stages, this process and the processes given with `--pid`, by name.
    fn processes(&self) -> Vec<(String, String)> {
        let mut processes: Vec<(String, String)> = self
            .stages
            .iter()
            .filter_map(|s| Some((s.name.clone(), s.pid()?.to_string())))
            .collect();
        processes.push(("loadgen".to_owned(), "self".to_owned()));
        processes.extend(extra_processes(&self.settings.run.pids));
        processes
    }

    /// Stops ingest first, so the feed goes quiet, then the other stages together.
    async fn stop_stages(&mut self) {
        if let Some(ingest) = self.stages.iter_mut().find(|s| s.name == "ingest") {
            ingest.stop(STOP_GRACE).await;
        }
        futures::future::join_all(self.stages.iter_mut().map(|s| s.stop(STOP_GRACE))).await;
    }
}

pub(super) fn extra_processes(pids: &[NamedPid]) -> Vec<(String, String)> {
    pids.iter()
        .map(|p| (p.name.clone(), p.pid.to_string()))
        .collect()
}

/// Samples every process; a process that cannot be read is logged and left out.
pub(super) fn sample_all(processes: &[(String, String)]) -> Vec<Option<ProcSample>> {
    processes
        .iter()
        .map(|(name, pid)| match procstat::sample(pid) {
            Ok(sample) => Some(sample),
            Err(error) => {
                tracing::warn!(process = %name, pid = %pid, error = %error, "failed to sample a process");
                None
            }
        })
        .collect()
}

pub(super) fn usage(
    processes: &[(String, String)],
    before: &[Option<ProcSample>],
    after: &[Option<ProcSample>],
) -> Vec<ProcUsage> {
    processes
        .iter()
        .zip(before.iter().zip(after))
        .filter_map(|((name, _), (before, after))| {
            Some(ProcUsage::between(name, before.as_ref()?, after.as_ref()?))
        })
        .collect()
}

fn push_frames(line: &mut ResultLine, before: Option<(u64, u64)>, after: Option<(u64, u64)>) {
    let (Some((frames_before, bytes_before)), Some((frames_after, bytes_after))) = (before, after)
    else {
        line.push("frames", "unknown");
        return;
    };
    let frames = frames_after.saturating_sub(frames_before);
    let bytes = bytes_after.saturating_sub(bytes_before);
    let events = line
        .get("events")
        .and_then(|e| e.parse::<u64>().ok())
        .unwrap_or(0);
    line.push("frames", frames);
    if frames > 0 {
        line.push_f64("events_per_frame", events as f64 / frames as f64, 2);
        line.push("frame_bytes", bytes / frames);
    }
}
