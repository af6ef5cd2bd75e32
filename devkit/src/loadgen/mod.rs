//! `devkit loadgen`: load runs that measure the pipeline's rate, latency and resource use.
//!
//! Sub-commands, each printing one result line (see [`report::ResultLine`]):
//! - `pipeline` (the default): the four stages as processes under a chosen trade rate, fed by
//!   an in-process Birdeye server and drained into an in-process backend stub
//!   ([`pipeline`]);
//! - `raw`: event frames of the same size straight through JetStream, the ceiling for the
//!   pipeline's rate ([`raw`]);
//! - `config-propagation`: the delay from a config change notice on Redis to the first frame
//!   judged with the new rules ([`config_propagation`]).
//!
//! Each run creates its own database and subject prefix, both named after the run id, and
//! removes them at the end unless `--keep` is given.

pub mod alerts;
pub mod config_propagation;
pub mod feed;
pub mod pipeline;
pub mod procstat;
pub mod raw;
pub mod report;
pub mod schedule;
pub mod setup;
pub mod stages;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use clap::{Args, Subcommand};
use sqlx::MySqlPool;
use tokio_util::sync::CancellationToken;

use monitor_core::settings::{parse_seconds, DbSettings, NatsSettings, RedisSettings};
use monitor_core::time::now_ms;
use monitor_core::topology::TopologyError;
use monitor_core::Subjects;

use procstat::NamedPid;
use report::ResultLine;
use schedule::DEFAULT_LARGE_TRADE_PERIOD;

/// Targets per batch, the allocator's default `BATCH_SIZE`.
pub const BATCH_SIZE: usize = 99;

/// `devkit loadgen [pipeline|raw|--raw|config-propagation] ...`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LoadgenCommand {
    #[command(subcommand)]
    pub action: Option<LoadgenAction>,

    #[command(flatten)]
    pub pipeline: PipelineSettings,
}

#[derive(Debug, Subcommand)]
pub enum LoadgenAction {
    /// Run the four stages under load and measure rate, alert latency, CPU and memory (the
    /// default when no sub-command is given).
    Pipeline(Box<PipelineSettings>),
    /// Publish and consume event frames straight through JetStream: NATS's own rate for
    /// frames of this size (also `--raw`).
    #[command(long_flag = "raw")]
    Raw(Box<RawSettings>),
    /// Measure the delay from a config change notice on Redis to the first frame judged with
    /// the new rules (allocator and evaluate as processes), and print its percentiles.
    ConfigPropagation(Box<config_propagation::ConfigPropagationSettings>),
}

/// Runs the selected load and returns its result line.
pub async fn run(
    command: LoadgenCommand,
    shutdown: CancellationToken,
) -> Result<ResultLine, LoadgenError> {
    match command.action {
        None => pipeline::run(command.pipeline, shutdown).await,
        Some(LoadgenAction::Pipeline(settings)) => pipeline::run(*settings, shutdown).await,
        Some(LoadgenAction::Raw(settings)) => raw::run(*settings, shutdown).await,
        Some(LoadgenAction::ConfigPropagation(settings)) => {
            config_propagation::run(*settings, shutdown).await
        }
    }
}

/// Settings every load run shares.
#[derive(Debug, Clone, Args)]
pub struct RunSettings {
    /// Number of targets (token addresses) of the generated task.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub targets: u32,

    /// Seconds measured.
    #[arg(long, default_value = "10", value_parser = parse_seconds)]
    pub duration: Duration,

    /// Seconds of load before the measurement starts.
    #[arg(long, default_value = "3", value_parser = parse_seconds)]
    pub warmup: Duration,

    /// Name of the database and subject prefix the run creates (letters, digits and '_');
    /// `loadgen_<unix time>_<pid>` when unset. The run always uses its own database and prefix,
    /// so --db-name (DB_NAME) and --subject-prefix (MONITOR_SUBJECT_PREFIX) are ignored.
    #[arg(long, value_parser = parse_run_id)]
    pub run_id: Option<String>,

    /// Keep the run's database, streams and buckets instead of removing them at the end.
    #[arg(long)]
    pub keep: bool,

    /// Another process to report CPU time and peak memory for, as NAME=PID (repeatable),
    /// for example the NATS server.
    #[arg(long = "pid", value_name = "NAME=PID")]
    pub pids: Vec<NamedPid>,
}

impl RunSettings {
    pub fn run_id(&self) -> String {
        self.run_id.clone().unwrap_or_else(|| {
            format!(
                "loadgen_{}_{}",
                now_ms().div_euclid(1000),
                std::process::id()
            )
        })
    }

    /// Number of targets as an index bound.
    pub fn target_count(&self) -> usize {
        self.targets as usize
    }
}

/// Settings of `devkit loadgen pipeline`.
#[derive(Debug, Clone, Args)]
pub struct PipelineSettings {
    #[command(flatten)]
    pub run: RunSettings,

    /// Trades per second over all targets, or `max` to send as fast as the pipeline reads.
    #[arg(long, default_value = "10000")]
    pub rate: Rate,

    /// One trade in this many is large and raises an alert; 100 gives alerts on 1 % of
    /// the events.
    #[arg(long, default_value_t = DEFAULT_LARGE_TRADE_PERIOD, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub large_every: u64,

    /// With `--rate max`: events sent and not yet through the pipeline, at most. The feed
    /// waits for alerts before it sends more, so the whole pipeline, not ingest's intake,
    /// sets the rate. Estimated from the large trades (see --large-every).
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub max_in_flight: u64,

    /// Seconds to wait after the measured load for the last alerts and frames.
    #[arg(long, default_value = "60", value_parser = parse_seconds)]
    pub drain_timeout: Duration,

    /// Directory of the allocator, ingest, evaluate and notify binaries.
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

impl PipelineSettings {
    /// Creates the log directory and returns it.
    fn log_dir(&self, run_id: &str) -> Result<PathBuf, LoadgenError> {
        let dir = self
            .log_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(".run/loadgen").join(run_id));
        std::fs::create_dir_all(&dir).map_err(|source| LoadgenError::LogDir {
            path: dir.display().to_string(),
            source,
        })?;
        // Stages run in this directory, so relative paths would break.
        std::fs::canonicalize(&dir).map_err(|source| LoadgenError::LogDir {
            path: dir.display().to_string(),
            source,
        })
    }
}

/// Settings of `devkit loadgen raw`.
#[derive(Debug, Clone, Args)]
pub struct RawSettings {
    #[command(flatten)]
    pub run: RunSettings,

    /// Mean number of events per frame; a fraction mixes frames of the two nearest sizes.
    /// Give the pipeline run's `events_per_frame` to compare like with like.
    #[arg(long, default_value_t = 1.0, value_parser = parse_events_per_frame)]
    pub events_per_frame: f64,

    /// Publishers, each with one frame in flight; one per batch of `--targets` when unset,
    /// as ingest keeps one frame in flight per batch.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub in_flight: Option<u32>,

    /// Frames per second over all publishers, or `max` to publish each frame as soon as the
    /// previous one of its publisher is acknowledged. With a rate the run also reports the
    /// latency of one JetStream hop (publish to delivery at the consumer).
    #[arg(long, default_value = "max")]
    pub rate: Rate,

    #[command(flatten)]
    pub nats: NatsSettings,
}

/// A trade rate: a number per second, or as fast as the receiver reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    PerSecond(f64),
    Max,
}

impl Rate {
    pub fn per_second(self) -> Option<f64> {
        match self {
            Rate::PerSecond(rate) => Some(rate),
            Rate::Max => None,
        }
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("max") {
            return Ok(Rate::Max);
        }
        match s.parse::<f64>() {
            Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(Rate::PerSecond(rate)),
            _ => Err(format!(
                "expected trades per second (a number > 0) or max, got {s:?}"
            )),
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::PerSecond(rate) => write!(f, "{rate}"),
            Rate::Max => f.write_str("max"),
        }
    }
}

fn parse_run_id(s: &str) -> Result<String, String> {
    let valid =
        !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "expected up to 64 letters, digits or '_' (it names a database and a subject prefix), got {s:?}"
        ))
    }
}

fn parse_events_per_frame(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(mean) if mean.is_finite() && (1.0..=256.0).contains(&mean) => Ok(mean),
        _ => Err(format!("expected a number from 1 to 256, got {s:?}")),
    }
}

/// The clock that stamps sends and receives within one run, in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct RunClock {
    start: Instant,
}

impl RunClock {
    pub fn start() -> Self {
        RunClock {
            start: Instant::now(),
        }
    }

    pub fn elapsed_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("{0}")]
    Settings(String),
    #[error("failed to create the log directory {path}: {source}")]
    LogDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Db(#[from] monitor_core::db::DbError),
    #[error(transparent)]
    Setup(#[from] setup::SetupError),
    #[error("failed to connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error("failed to {step}: {source}")]
    Nats {
        step: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("failed to listen on 127.0.0.1: {0}")]
    Listen(std::io::Error),
    #[error(transparent)]
    Stage(#[from] stages::StageError),
    #[error(
        "timed out after {timeout_sec} s waiting until {what}; the stages' logs are in {log_dir}"
    )]
    Timeout {
        what: String,
        timeout_sec: u64,
        log_dir: String,
    },
    #[error("interrupted by a signal")]
    Interrupted,
}

impl LoadgenError {
    pub(crate) fn nats(
        step: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        LoadgenError::Nats {
            step,
            source: Box::new(source),
        }
    }
}

/// Sleeps for `duration`; fails at once when `shutdown` is cancelled.
async fn sleep_or_stop(
    duration: Duration,
    shutdown: &CancellationToken,
) -> Result<(), LoadgenError> {
    tokio::select! {
        _ = tokio::time::sleep(duration) => Ok(()),
        _ = shutdown.cancelled() => Err(LoadgenError::Interrupted),
    }
}

/// Deletes the run's streams and buckets. Failures are logged: the run's result stands.
async fn cleanup_nats(js: &jetstream::Context, subjects: &Subjects) {
    let streams = [
        subjects.events_stream(),
        subjects.alerts_stream(),
        subjects.status_stream(),
        subjects.dead_stream(),
    ];
    for stream in streams {
        if let Err(error) = js.delete_stream(&stream).await {
            tracing::warn!(stream, error = %error, "failed to delete a stream of the run");
        }
    }
    for bucket in [subjects.tasks_bucket(), subjects.leases_bucket()] {
        delete_bucket(js, &bucket).await;
    }
}

/// Deletes a key-value bucket of the run, logging a failure.
async fn delete_bucket(js: &jetstream::Context, bucket: &str) {
    if let Err(error) = js.delete_key_value(bucket).await {
        tracing::warn!(bucket, error = %error, "failed to delete a bucket of the run");
    }
}

/// Drops the run's database. `name` was checked by [`parse_run_id`] or built from digits.
async fn drop_database(pool: &MySqlPool, name: &str) {
    let statement = format!("DROP DATABASE IF EXISTS `{name}`");
    if let Err(error) = sqlx::query(&statement).execute(pool).await {
        tracing::warn!(database = name, error = %error, "failed to drop the run's database");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        loadgen: LoadgenCommand,
    }

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn pipeline_is_the_default() {
        let cli = Cli::try_parse_from(["loadgen", "--targets", "50", "--rate", "max"]).unwrap();
        assert!(cli.loadgen.action.is_none());
        assert_eq!(cli.loadgen.pipeline.run.targets, 50);
        assert_eq!(cli.loadgen.pipeline.rate, Rate::Max);
    }

    #[test]
    fn raw_takes_its_own_settings() {
        let cli = Cli::try_parse_from([
            "loadgen",
            "raw",
            "--events-per-frame",
            "2.5",
            "--duration",
            "1",
            "--rate",
            "5000",
        ])
        .unwrap();
        let Some(LoadgenAction::Raw(raw)) = cli.loadgen.action else {
            panic!("expected raw");
        };
        assert_eq!(raw.events_per_frame, 2.5);
        assert_eq!(raw.run.duration, Duration::from_secs(1));
        assert_eq!(raw.rate, Rate::PerSecond(5_000.0));
    }

    #[test]
    fn raw_flag_selects_raw() {
        let cli = Cli::try_parse_from(["loadgen", "--raw", "--events-per-frame", "3"]).unwrap();
        let Some(LoadgenAction::Raw(raw)) = cli.loadgen.action else {
            panic!("expected raw");
        };
        assert_eq!(raw.events_per_frame, 3.0);
    }

    #[test]
    fn rate_parses_numbers_and_max() {
        assert_eq!("10000".parse::<Rate>(), Ok(Rate::PerSecond(10_000.0)));
        assert_eq!("MAX".parse::<Rate>(), Ok(Rate::Max));
        assert!("0".parse::<Rate>().is_err());
        assert!("fast".parse::<Rate>().is_err());
    }

    #[test]
    fn run_id_must_name_a_database() {
        assert!(parse_run_id("loadgen_1").is_ok());
        assert!(parse_run_id("a.b").is_err());
        assert!(parse_run_id("").is_err());
        assert!(parse_run_id(&"x".repeat(65)).is_err());
    }
}
