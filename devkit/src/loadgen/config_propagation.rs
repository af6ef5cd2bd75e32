//! `devkit loadgen config-propagation`: the delay from a config change notice on Redis to the
//! first event frame judged with the new rules.
//!
//! Starts `allocator run` and `evaluate run` as processes on a database and subject prefix of
//! its own, with the Redis channel `<run id>:config`. It creates one `smart` task whose config
//! raises a `large_trade` alert on every trade, and publishes an event frame with one large
//! trade every `--frame-interval-ms` into the events stream, as ingest would. Each frame's
//! source time is one second after the previous one, so with `cooldown_sec` 1 every frame
//! raises an alert of its own.
//!
//! One sample: update the config row (new threshold, version + 1), note the time, publish
//! `{"configId": N, "version": M}` on the channel, and wait for the first alert that carries
//! version M, received on a core NATS subscription to the task's alert subject. The delay
//! therefore covers the allocator's reload and publish, the tasks bucket, evaluate's watch,
//! the wait for the next frame (at most one frame interval) and the alert's way back to this
//! process. Ingest is not on the path: a threshold change does not change its windows.
//! Samples are `--pause` apart, longer than the allocator's 2 s debounce window, so each
//! notice is applied at once rather than merged into the next one.
//!
//! Prints one result line: `loadgen mode=config-propagation samples=N ... p50_ms=... p99_ms=...
//! max_ms=...`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::HeaderMap;
use bytes::Bytes;
use clap::Args;
use futures::StreamExt;
use sqlx::MySqlPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use monitor_core::codec;
use monitor_core::messages::{
    Alert, Chain, Event, EventFrame, EventKind, Side, TargetRef, TaskSpec, TokenSnapshot, Trade,
    MESSAGE_VERSION,
};
use monitor_core::settings::{parse_seconds, DbSettings, NatsSettings, RedisSettings};
use monitor_core::time::now_ms;
use monitor_core::{topology, Subjects};

use super::report::{Latencies, ResultLine};
use super::stages::{Launcher, Stage};
use super::{cleanup_nats, drop_database, parse_run_id, sleep_or_stop, LoadgenError};

/// Volume of every published trade, in USD; above every threshold the samples set.
const TRADE_USD: f64 = 50_000.0;
/// Threshold of the first version; sample `k` sets `BASE_THRESHOLD_USD + k`.
const BASE_THRESHOLD_USD: f64 = 1_000.0;
/// The target of the task (an address no real token has).
const TARGET: &str = "0xc0f1600000000000000000000000000000000001";
/// Time the stages get to publish the task and raise the first alert.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Time a stage gets to drain after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// Settings of `devkit loadgen config-propagation`.
#[derive(Debug, Clone, Args)]
pub struct ConfigPropagationSettings {
    /// Number of config changes measured.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub samples: u32,

    /// Milliseconds between two published event frames; a sample waits up to this long for
    /// the next frame.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub frame_interval_ms: u64,

    /// Seconds between a sample's alert and the next change. Keep it above the allocator's
    /// 2 s debounce window, because notices within the window are applied when it closes.
    #[arg(long, default_value = "2.5", value_parser = parse_seconds)]
    pub pause: Duration,

    /// Seconds to wait for one change to reach an alert before the run fails.
    #[arg(long, default_value = "30", value_parser = parse_seconds)]
    pub sample_timeout: Duration,

    /// Name of the database, subject prefix and Redis channel prefix the run creates (letters,
    /// digits and '_'); `loadgen_config_<unix time>_<pid>` when unset. The run always uses its
    /// own, so --db-name (DB_NAME) and --subject-prefix (MONITOR_SUBJECT_PREFIX) are ignored.
    #[arg(long, value_parser = parse_run_id)]
    pub run_id: Option<String>,

    /// Keep the run's database, streams and buckets instead of removing them at the end.
    #[arg(long)]
    pub keep: bool,

    /// Directory of the allocator and evaluate binaries.
    #[arg(long, env = "MONITOR_BIN_DIR", default_value = "target/release")]
    pub bin_dir: PathBuf,

    /// Directory for the stages' logs; `.run/loadgen/<run id>` when unset.
    #[arg(long)]
    pub log_dir: Option<PathBuf>,

    #[command(flatten)]
    pub nats: NatsSettings,

    #[command(flatten)]
    pub db: DbSettings,

    #[command(flatten)]
    pub redis: RedisSettings,
}

impl ConfigPropagationSettings {
    fn run_id(&self) -> String {
        self.run_id.clone().unwrap_or_else(|| {
            format!(
                "loadgen_config_{}_{}",
                now_ms().div_euclid(1000),
                std::process::id()
            )
        })
    }

    /// Creates the log directory and returns it as an absolute path.
    fn log_dir(&self, run_id: &str) -> Result<PathBuf, LoadgenError> {
        let dir = self
            .log_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(".run/loadgen").join(run_id));
        let failed = |source| LoadgenError::LogDir {
            path: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(failed)?;
        std::fs::canonicalize(&dir).map_err(failed)
    }
}

/// The task of a run, as the allocator published it.
struct Probe {
    task_id: u64,
    config_id: u64,
    target_id: u64,
    batch_id: u64,
    epoch: u32,
}

/// Runs the measurement and returns its result line.
pub async fn run(
    settings: ConfigPropagationSettings,
    shutdown: CancellationToken,
) -> Result<ResultLine, LoadgenError> {
    let run_id = settings.run_id();
    let log_dir = settings.log_dir(&run_id)?;
    let db = DbSettings {
        name: run_id.clone(),
        ..settings.db.clone()
    };
    let nats = NatsSettings {
        subject_prefix: run_id.clone(),
        ..settings.nats.clone()
    };
    let channel = format!("{run_id}:config");
    tracing::info!(run_id, log_dir = %log_dir.display(), samples = settings.samples, frame_interval_ms = settings.frame_interval_ms, "loadgen config-propagation run starting");

    let pool = monitor_core::db::migrate(&db).await?;
    let (config_id, task_id, target_id) = create_task(&pool).await?;
    let client = nats
        .connect(&format!("loadgen {run_id}"))
        .await
        .map_err(|source| LoadgenError::Connect {
            url: nats.url.clone(),
            source,
        })?;
    let js = jetstream::new(client.clone());
    let topology = topology::ensure(&js, &nats).await?;

    let launcher = Launcher {
        bin_dir: settings.bin_dir.clone(),
        log_dir: log_dir.clone(),
        env: stage_env(&run_id, &nats, &db, &settings.redis, &channel),
    };
    let mut stages = vec![
        launcher.spawn("allocator", "allocator", &["run"])?,
        launcher.spawn("evaluate", "evaluate", &["run"])?,
    ];
    let outcome = async {
        let (batch_id, epoch) =
            wait_for_task(&topology.tasks, task_id, &mut stages, &log_dir, &shutdown).await?;
        let run = Run {
            settings: &settings,
            probe: Probe {
                task_id,
                config_id,
                target_id,
                batch_id,
                epoch,
            },
            pool: &pool,
            channel: &channel,
            log_dir: &log_dir,
        };
        run.measure(&client, &js, &topology.subjects, &mut stages, &shutdown)
            .await
    }
    .await;

    for stage in &mut stages {
        stage.stop(STOP_GRACE).await;
    }
    if !settings.keep {
        cleanup_nats(&js, &topology.subjects).await;
        drop_database(&pool, &run_id).await;
    }
    pool.close().await;
    let latencies = outcome?;
    Ok(result_line(&settings, latencies))
}

/// Inserts the config (version 1), the task and its target; returns their ids.
async fn create_task(pool: &MySqlPool) -> Result<(u64, u64, u64), LoadgenError> {
    let sql = |step: &'static str| move |source| LoadgenError::nats(step, source);
    let config_id = sqlx::query(
        "INSERT INTO monitor_config_v2 (config_name, chain_type, min_transaction_usd, \
         events_config, trigger_logic, version) VALUES ('loadgen config propagation', 'eth', ?, \
         '{\"large_trade\": {\"side\": \"any\"}, \"cooldown_sec\": 1}', 'OR', 1)",
    )
    .bind(BASE_THRESHOLD_USD)
    .execute(pool)
    .await
    .map_err(sql("insert the config"))?
    .last_insert_id();
    let task_id = sqlx::query(
        "INSERT INTO monitor_task_v2 (task_name, task_type, chain_type) \
         VALUES ('loadgen config propagation', 'smart', 'eth')",
    )
    .execute(pool)
    .await
    .map_err(sql("insert the task"))?
    .last_insert_id();
    sqlx::query(
        "INSERT INTO monitor_task_config_v2 (task_id, config_id, config_order) VALUES (?, ?, 0)",
    )
    .bind(task_id)
    .bind(config_id)
    .execute(pool)
    .await
    .map_err(sql("link the config"))?;
    let target_id = sqlx::query(
        "INSERT INTO monitor_task_target_v2 (task_id, target_value, token_symbol, source) \
         VALUES (?, ?, 'PROBE', 'loadgen')",
    )
    .bind(task_id)
    .bind(TARGET)
    .execute(pool)
    .await
    .map_err(sql("insert the target"))?
    .last_insert_id();
    Ok((config_id, task_id, target_id))
}

fn stage_env(
    run_id: &str,
    nats: &NatsSettings,
    db: &DbSettings,
    redis: &RedisSettings,
    channel: &str,
) -> Vec<(String, String)> {
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
        ("CONFIG_CHANGED_CHANNEL", channel.to_owned()),
        ("CONSUMER_ID_PREFIX", run_id.to_owned()),
    ];
    if let Some(creds) = &nats.creds {
        env.push(("NATS_CREDS", creds.display().to_string()));
    }
    env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// Waits until the allocator published the task with its batch; returns the batch id and epoch.
async fn wait_for_task(
    tasks: &jetstream::kv::Store,
    task_id: u64,
    stages: &mut [Stage],
    log_dir: &std::path::Path,
    shutdown: &CancellationToken,
) -> Result<(u64, u32), LoadgenError> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        for stage in stages.iter_mut() {
            stage.check_running()?;
        }
        let entry = tasks
            .get(Subjects::task_key(task_id))
            .await
            .map_err(|e| LoadgenError::nats("read the task spec", e))?;
        if let Some(spec) = entry.and_then(|bytes| codec::decode::<TaskSpec>(&bytes).ok()) {
            if let Some(batch) = spec.batches.first() {
                return Ok((batch.batch_id, spec.epoch));
            }
        }
        if Instant::now() >= deadline {
            return Err(LoadgenError::Timeout {
                what: "the allocator published the task".into(),
                timeout_sec: START_TIMEOUT.as_secs(),
                log_dir: log_dir.display().to_string(),
            });
        }
        sleep_or_stop(Duration::from_millis(50), shutdown).await?;
    }
}

/// The task, database and channel of one measurement.
struct Run<'a> {
    settings: &'a ConfigPropagationSettings,
    probe: Probe,
    pool: &'a MySqlPool,
    channel: &'a str,
    log_dir: &'a std::path::Path,
}

impl Run<'_> {
    /// Publishes frames, waits for the first alert, then measures every sample.
    async fn measure(
        &self,
        client: &async_nats::Client,
        js: &jetstream::Context,
        subjects: &Subjects,
        stages: &mut [Stage],
        shutdown: &CancellationToken,
    ) -> Result<Latencies, LoadgenError> {
        let mut alerts = client
            .subscribe(subjects.alerts(self.probe.task_id))
            .await
            .map_err(|e| LoadgenError::nats("subscribe to the task's alerts", e))?;
        let frames = CancellationToken::new();
        let publisher = spawn_frames(
            js.clone(),
            subjects.batch_events(Chain::Eth, self.probe.task_id, self.probe.batch_id),
            &self.probe,
            Duration::from_millis(self.settings.frame_interval_ms),
            frames.clone(),
        );
        let result = self.samples(&mut alerts, stages, shutdown).await;
        frames.cancel();
        if let Err(error) = publisher.await {
            tracing::warn!(error = %error, "the frame publisher failed");
        }
        result
    }

    async fn samples(
        &self,
        alerts: &mut async_nats::Subscriber,
        stages: &mut [Stage],
        shutdown: &CancellationToken,
    ) -> Result<Latencies, LoadgenError> {
        let redis = redis::Client::open(self.settings.redis.url())
            .map_err(|e| LoadgenError::nats("open the Redis client", e))?;
        let mut connection = redis
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| LoadgenError::nats("connect to Redis", e))?;
        if wait_for_version(alerts, 1, START_TIMEOUT, shutdown)
            .await?
            .is_none()
        {
            return Err(self.timeout("evaluate raised the first alert", START_TIMEOUT));
        }

        let mut latencies = Latencies::default();
        for sample in 1..=u64::from(self.settings.samples) {
            for stage in stages.iter_mut() {
                stage.check_running()?;
            }
            let delay = self
                .sample(&mut connection, alerts, sample, shutdown)
                .await?;
            latencies.record(delay.as_micros() as u64);
            sleep_or_stop(self.settings.pause, shutdown).await?;
        }
        Ok(latencies)
    }

    /// Changes the config to version `sample + 1`, announces it and returns the delay until
    /// the first alert of that version.
    async fn sample(
        &self,
        connection: &mut redis::aio::MultiplexedConnection,
        alerts: &mut async_nats::Subscriber,
        sample: u64,
        shutdown: &CancellationToken,
    ) -> Result<Duration, LoadgenError> {
        let version = sample + 1;
        let config_id = self.probe.config_id;
        update_config(self.pool, config_id, sample, version).await?;
        let notice = format!(r#"{{"configId": {config_id}, "version": {version}}}"#);

        let published = Instant::now();
        let _: i64 = redis::cmd("PUBLISH")
            .arg(self.channel)
            .arg(notice)
            .query_async(connection)
            .await
            .map_err(|e| LoadgenError::nats("publish the config change notice", e))?;
        let limit = self.settings.sample_timeout;
        let Some(seen) = wait_for_version(alerts, version, limit, shutdown).await? else {
            let what = format!("an alert carried config version {version}");
            return Err(self.timeout(&what, limit));
        };

        let delay = seen.duration_since(published);
        tracing::info!(
            sample,
            version,
            delay_ms = delay.as_secs_f64() * 1000.0,
            "config change in force"
        );
        Ok(delay)
    }

    fn timeout(&self, what: &str, limit: Duration) -> LoadgenError {
        LoadgenError::Timeout {
            what: what.to_owned(),
            timeout_sec: limit.as_secs(),
            log_dir: self.log_dir.display().to_string(),
        }
    }
}

/// Sets sample `sample`'s threshold and `version` on the config row.
async fn update_config(
    pool: &MySqlPool,
    config_id: u64,
    sample: u64,
    version: u64,
) -> Result<(), LoadgenError> {
    sqlx::query("UPDATE monitor_config_v2 SET min_transaction_usd = ?, version = ? WHERE id = ?")
        .bind(BASE_THRESHOLD_USD + sample as f64)
        .bind(version)
        .bind(config_id)
        .execute(pool)
        .await
        .map_err(|e| LoadgenError::nats("update the config", e))?;
    Ok(())
}

/// Reads alerts until one carries `version` (returns when it arrived) or `limit` passes.
async fn wait_for_version(
    alerts: &mut async_nats::Subscriber,
    version: u64,
    limit: Duration,
    shutdown: &CancellationToken,
) -> Result<Option<Instant>, LoadgenError> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return Err(LoadgenError::Interrupted),
            _ = tokio::time::sleep_until(deadline) => return Ok(None),
            message = alerts.next() => message,
        };
        let Some(message) = message else {
            return Ok(None);
        };
        let arrived = Instant::now();
        match codec::decode::<Alert>(&message.payload) {
            Ok(alert) if alert.config_version == version => return Ok(Some(arrived)),
            Ok(_) => {}
            Err(error) => tracing::warn!(error = %error, "ignoring an undecodable alert"),
        }
    }
}

/// Publishes one frame with one large trade every `interval` until `stop`.
fn spawn_frames(
    js: jetstream::Context,
    subject: String,
    probe: &Probe,
    interval: Duration,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let producer = format!("loadgen-config-{}", std::process::id());
    let (task_id, batch_id, epoch, target_id) =
        (probe.task_id, probe.batch_id, probe.epoch, probe.target_id);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let first_source_ms = now_ms();
        let mut failing = false;
        for seq in 1u64.. {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let frame = EventFrame {
                v: MESSAGE_VERSION,
                task_id,
                batch_id: Some(batch_id),
                epoch,
                chain: Chain::Eth,
                producer: producer.clone(),
                seq,
                events: vec![large_trade(target_id, first_source_ms + seq as i64 * 1000)],
            };
            match publish_frame(&js, &subject, &frame).await {
                Ok(()) if failing => {
                    tracing::info!("frames published again");
                    failing = false;
                }
                Ok(()) => {}
                Err(error) if !failing => {
                    tracing::warn!(error = %error, "failed to publish a frame, retrying with the next");
                    failing = true;
                }
                Err(_) => {}
            }
        }
    })
}

fn large_trade(target_id: u64, source_time_ms: i64) -> Event {
    Event {
        source_time_ms,
        ingest_time_ms: now_ms(),
        target: Some(TargetRef {
            target_id,
            address: TARGET.to_owned(),
        }),
        kind: EventKind::Trade(Trade {
            side: Side::Buy,
            volume_usd: TRADE_USD,
            price_usd: Some(1.0),
            tx_hash: None,
            owner: None,
        }),
        snapshot: Some(TokenSnapshot {
            price: Some(1.0),
            ..TokenSnapshot::default()
        }),
    }
}

async fn publish_frame(
    js: &jetstream::Context,
    subject: &str,
    frame: &EventFrame,
) -> Result<(), LoadgenError> {
    let payload = codec::encode(frame).map_err(|e| LoadgenError::nats("encode a frame", e))?;
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", frame.msg_id().as_str());
    js.publish_with_headers(subject.to_owned(), headers, Bytes::from(payload))
        .await
        .map_err(|e| LoadgenError::nats("publish a frame", e))?
        .await
        .map_err(|e| LoadgenError::nats("store a frame", e))?;
    Ok(())
}

fn result_line(settings: &ConfigPropagationSettings, mut latencies: Latencies) -> ResultLine {
    let mut line = ResultLine::new("config-propagation");
    line.push("samples", latencies.len());
    line.push("frame_interval_ms", settings.frame_interval_ms);
    line.push_ms("min_ms", latencies.percentile(0.0));
    line.push_ms("p50_ms", latencies.percentile(0.5));
    line.push_ms("p90_ms", latencies.percentile(0.9));
    line.push_ms("p99_ms", latencies.percentile(0.99));
    line.push_ms("max_ms", latencies.max());
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_line_reports_percentiles_in_milliseconds() {
        let settings = ConfigPropagationSettings {
            samples: 4,
            frame_interval_ms: 5,
            pause: Duration::from_secs(3),
            sample_timeout: Duration::from_secs(30),
            run_id: None,
            keep: false,
            bin_dir: PathBuf::from("target/release"),
            log_dir: None,
            nats: NatsSettings::local("nats://127.0.0.1:4222", "monitor"),
            db: DbSettings::local(3306, "loadgen"),
            redis: RedisSettings::local(6379),
        };
        let mut latencies = Latencies::default();
        for micros in [12_000, 15_500, 30_000, 90_250] {
            latencies.record(micros);
        }

        let line = result_line(&settings, latencies);

        assert_eq!(line.get("mode"), Some("config-propagation"));
        assert_eq!(line.get("samples"), Some("4"));
        assert_eq!(line.get("min_ms"), Some("12.000"));
        assert_eq!(line.get("p50_ms"), Some("15.500"));
        assert_eq!(line.get("p99_ms"), Some("90.250"));
        assert_eq!(line.get("max_ms"), Some("90.250"));
    }

    #[test]
    fn large_trade_targets_the_probe() {
        let event = large_trade(7, 1_000);
        assert_eq!(
            event.target.map(|t| (t.target_id, t.address)),
            Some((7, TARGET.to_owned()))
        );
        assert!(
            matches!(event.kind, EventKind::Trade(Trade { volume_usd, .. }) if volume_usd == TRADE_USD)
        );
    }
}
