//! `evaluate replay`: judges a task's stored event frames again, as a backtest.
//!
//! Consumes the task's frames from the events stream through an ephemeral ordered consumer
//! (filter `<prefix>.events.<chain>.<task_id>.*`, delivery from `--since`), and the task and
//! batch specs from the tasks bucket (rules, chain, token names). Rules come from the task's
//! spec, or from a JSON file with `--config` (see [`config_file`]). Produces, on the writer it
//! is given, one line per alert that would have fired and a summary per alert type. With
//! `--publish` it also publishes those alerts to the alerts stream under their ids, as the
//! live consumer does. A rules file can change thresholds freely, but only windows that the
//! live rules used have figures in the stored snapshots.
//!
//! It stops at the first frame stored after `--until`, or once it has read the last frame of
//! the task that the stream held when the replay started, so frames published meanwhile do
//! not keep it running. Alerts are deduplicated by id across the whole replay, as the alerts
//! stream deduplicates them live, so judging the same frames gives the same id set as the live
//! run. Frames that cannot be decoded are counted, logged and skipped.

pub mod collect;
pub mod config_file;
pub mod output;

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use async_nats::datetime;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, kv};
use clap::Args;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use monitor_core::codec;
use monitor_core::messages::{
    Alert, BatchSpec, Chain, ConfigSpec, EventFrame, TargetSpec, TaskSpec, TaskType,
    MESSAGE_VERSION,
};
use monitor_core::rules::Rules;
use monitor_core::settings::{NatsSettings, RuntimeSettings};
use monitor_core::{Locale, Subjects};
use tracing::{info, warn};

use collect::Collector;
use output::Totals;

/// Time without a new frame after which a replay that expects more frames gives up: the
/// stream may have dropped them (`max_age`) while the replay ran.
const IDLE_LIMIT: Duration = Duration::from_secs(30);
/// Alert publishes awaited at once with `--publish`.
const MAX_PENDING_PUBLISHES: usize = 256;

/// Arguments of `evaluate replay`.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub nats: NatsSettings,

    #[command(flatten)]
    pub runtime: RuntimeSettings,

    /// Id of the task whose stored frames are judged.
    #[arg(long)]
    pub task: u64,

    /// Start: a duration back from now (`90m`, `2h`, `3d`) or an RFC 3339 time
    /// (`2023-02-02T00:00:00Z`), compared with the time the stream stored each frame.
    #[arg(long, value_parser = parse_time_arg)]
    pub since: TimeArg,

    /// End, in the same forms as `--since`; by default the last frame stored at start.
    #[arg(long, value_parser = parse_time_arg)]
    pub until: Option<TimeArg>,

    /// JSON file with the rules to judge with: an `events_config` object plus the config
    /// columns (`min_transaction_usd`, `cumulative_min_amount_usd`, `time_interval`,
    /// `top_holders_threshold`, `trigger_logic`). By default the task's current rules.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Chain of the task (sol, eth, bsc), needed only when the task is no longer in the
    /// tasks bucket.
    #[arg(long)]
    pub chain: Option<Chain>,

    /// Print JSON lines instead of text.
    #[arg(long)]
    pub json: bool,

    /// Publish the alerts to the alerts stream, as the live consumer does.
    #[arg(long)]
    pub publish: bool,
}

/// A point in time given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeArg {
    /// This long before the replay starts.
    Ago(Duration),
    /// Milliseconds since the Unix epoch.
    At(i64),
}

impl TimeArg {
    fn to_ms(self, now_ms: i64) -> i64 {
        match self {
            TimeArg::Ago(duration) => {
                now_ms.saturating_sub(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX))
            }
            TimeArg::At(ms) => ms,
        }
    }
}

/// Parses `--since` and `--until`: a humantime duration or an RFC 3339 time.
pub fn parse_time_arg(value: &str) -> Result<TimeArg, String> {
    let value = value.trim();
    if let Ok(duration) = humantime::parse_duration(value) {
        return Ok(TimeArg::Ago(duration));
    }
    match chrono::DateTime::parse_from_rfc3339(value) {
        Ok(time) => Ok(TimeArg::At(time.timestamp_millis())),
        Err(_) => Err(format!(
            "expected a duration such as 90m or 2h, or an RFC 3339 time such as \
             2023-02-02T00:00:00Z, got {value:?}"
        )),
    }
}

/// Error that stopped a replay.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("failed to connect to NATS: {0}")]
    Connect(String),
    #[error("failed to open {what}: {error}")]
    Open { what: String, error: String },
    #[error("failed to read key {key} of the tasks bucket: {error}")]
    ReadSpec { key: String, error: String },
    #[error("task {task_id} is not in the tasks bucket; {hint}")]
    TaskMissing { task_id: u64, hint: &'static str },
    #[error("task {task_id} has no valid config in the tasks bucket; pass --config FILE")]
    NoConfig { task_id: u64 },
    #[error("--since {since} is after --until {until}")]
    EmptyRange { since: String, until: String },
    #[error(transparent)]
    ConfigFile(#[from] config_file::ConfigFileError),
    #[error("failed to read frames of task {task_id}: {error}")]
    Read { task_id: u64, error: String },
    #[error("failed to publish alert {alert_id}: {error}")]
    Publish { alert_id: String, error: String },
    #[error("failed to write the output: {0}")]
    Output(#[from] std::io::Error),
}

/// The rules, chain and token names that a replay judges with.
struct Plan {
    task: TaskSpec,
    targets: HashMap<u64, TargetSpec>,
}

/// Replays the task's frames and writes the result to `out`; returns the totals.
pub async fn run(args: &ReplayArgs, out: &mut dyn Write) -> Result<Totals, ReplayError> {
    let now_ms = monitor_core::time::now_ms();
    let since_ms = args.since.to_ms(now_ms);
    let until_ms = args.until.map(|until| until.to_ms(now_ms));
    if let Some(until_ms) = until_ms.filter(|until| *until < since_ms) {
        return Err(ReplayError::EmptyRange {
            since: output::time_text(since_ms),
            until: output::time_text(until_ms),
        });
    }

    let client = args
        .nats
        .connect("evaluate-replay")
        .await
        .map_err(|e| ReplayError::Connect(e.to_string()))?;
    let js = jetstream::new(client);
    let subjects = args.nats.subjects();
    let plan = plan(args, &js, &subjects).await?;

    let mut replay = Replay {
        args,
        js: &js,
        subjects: &subjects,
        plan: &plan,
        collector: Collector::default(),
        totals: Totals::default(),
        pending: Vec::new(),
        out,
    };
    replay.read_frames(since_ms, until_ms).await?;
    replay.finish().await
}

/// Loads the task, its targets and the rules to judge with.
async fn plan(
    args: &ReplayArgs,
    js: &jetstream::Context,
    subjects: &Subjects,
) -> Result<Plan, ReplayError> {
    let bucket = subjects.tasks_bucket();
    let store = js
        .get_key_value(&bucket)
        .await
        .map_err(|e| ReplayError::Open {
            what: format!("bucket {bucket}"),
            error: e.to_string(),
        })?;
    let stored_task: Option<TaskSpec> = read_spec(&store, &Subjects::task_key(args.task)).await?;
    let targets = match &stored_task {
        Some(task) => read_targets(&store, task).await?,
        None => HashMap::new(),
    };

    let task = match (stored_task, &args.config) {
        (Some(task), None) => {
            if task.config.is_none() {
                return Err(ReplayError::NoConfig {
                    task_id: task.task_id,
                });
            }
            task
        }
        (Some(task), Some(path)) => with_file_rules(task, path)?,
        (None, Some(path)) => {
            let chain = args.chain.ok_or(ReplayError::TaskMissing {
                task_id: args.task,
                hint: "pass --chain to replay its stored frames",
            })?;
            with_file_rules(detached_task(args.task, chain), path)?
        }
        (None, None) => {
            return Err(ReplayError::TaskMissing {
                task_id: args.task,
                hint: "pass --config FILE and --chain to replay its stored frames",
            })
        }
    };
    let task = match args.chain {
        Some(chain) => TaskSpec { chain, ..task },
        None => task,
    };
    Ok(Plan { task, targets })
}

/// Builds a stand-in spec for a task that left the tasks bucket; its rules come from a file.
fn detached_task(task_id: u64, chain: Chain) -> TaskSpec {
    TaskSpec {
        v: MESSAGE_VERSION,
        task_id,
        name: format!("task {task_id}"),
        task_type: TaskType::Smart,
        chain,
        epoch: 0,
        config: None,
        batches: Vec::new(),
        config_error: None,
        published_ms: 0,
    }
}

/// Replaces the task's rules with those of the file. Alerts keep the task's config id and
/// version when the file names none, so published alerts point at the config they replace.
fn with_file_rules(task: TaskSpec, path: &std::path::Path) -> Result<TaskSpec, ReplayError> {
    let file = config_file::read(path, task.task_type)?;
    if !file.unknown_keys.is_empty() {
        warn!(file = %path.display(), keys = ?file.unknown_keys, "config file has keys that no rule reads, they are ignored");
    }
    warn_about_untracked_windows(&task, &file.parsed.rules);
    let (config_id, version) = match (&task.config, file.row.config_id) {
        (Some(current), 0) => (current.config_id, current.version),
        _ => (file.row.config_id, file.row.version),
    };
    let config = ConfigSpec {
        config_id,
        version,
        name: file.row.name,
        trigger_logic: file.parsed.trigger_logic,
        rules: file.parsed.rules,
    };
    Ok(TaskSpec {
        config: Some(config),
        ..task
    })
}

/// Warns when the file's rules use windows that the task's live rules do not: ingest tracks
/// only the live windows, so the stored snapshots lack the others and rules on them raise
/// nothing.
fn warn_about_untracked_windows(task: &TaskSpec, file_rules: &Rules) {
    let (Some(live), Some(file)) = (
        task.rules().and_then(Rules::as_token),
        file_rules.as_token(),
    ) else {
        return;
    };
    let tracked = live.window_lengths();
    let untracked: Vec<u32> = file
        .window_lengths()
        .into_iter()
        .filter(|w| !tracked.contains(w))
        .collect();
    if !untracked.is_empty() {
        warn!(untracked_windows_sec = ?untracked, tracked_windows_sec = ?tracked, "the rules file uses windows that the stored snapshots do not have, rules on them raise nothing");
    }
}

async fn read_spec<T: serde::de::DeserializeOwned + codec::Message>(
    store: &kv::Store,
    key: &str,
) -> Result<Option<T>, ReplayError> {
    let read_error = |error: String| ReplayError::ReadSpec {
        key: key.to_owned(),
        error,
    };
    let Some(value) = store
        .get(key)
        .await
        .map_err(|e| read_error(e.to_string()))?
    else {
        return Ok(None);
    };
    codec::decode(&value)
        .map(Some)
        .map_err(|e| read_error(e.to_string()))
}

/// Reads the targets of the task's current batches. Frames of older epochs name the same
/// targets by id, so one map serves every frame.
async fn read_targets(
    store: &kv::Store,
    task: &TaskSpec,
) -> Result<HashMap<u64, TargetSpec>, ReplayError> {
    let mut targets = HashMap::new();
    for batch in &task.batches {
        let spec: Option<BatchSpec> =
            read_spec(store, &Subjects::batch_key(batch.batch_id)).await?;
        match spec {
            Some(spec) => targets.extend(spec.targets.into_iter().map(|t| (t.target_id, t))),
            None => warn!(
                batch_id = batch.batch_id,
                "batch spec missing, its alerts will have no token names"
            ),
        }
    }
    Ok(targets)
}

/// One replay in progress.
struct Replay<'a> {
    args: &'a ReplayArgs,
    js: &'a jetstream::Context,
    subjects: &'a Subjects,
    plan: &'a Plan,
    collector: Collector,
    totals: Totals,
    pending: Vec<(String, PublishAckFuture)>,
    out: &'a mut dyn Write,
}

impl Replay<'_> {
    fn locale(&self) -> Locale {
        self.args.runtime.locale
    }

    fn read_error(&self, error: impl ToString) -> ReplayError {
        ReplayError::Read {
            task_id: self.plan.task.task_id,
            error: error.to_string(),
        }
    }

    /// Reads the task's frames from `since_ms` in stream order and judges each one.
    async fn read_frames(
        &mut self,
        since_ms: i64,
        until_ms: Option<i64>,
    ) -> Result<(), ReplayError> {
        let task = &self.plan.task;
        let stream_name = self.subjects.events_stream();
        let mut stream = self
            .js
            .get_stream(&stream_name)
            .await
            .map_err(|e| ReplayError::Open {
                what: format!("stream {stream_name}"),
                error: e.to_string(),
            })?;
        let last_sequence = stream
            .info()
            .await
            .map_err(|e| self.read_error(e))?
            .state
            .last_sequence;
        let start_time = datetime::from_nanos(i128::from(since_ms) * 1_000_000)
            .map_err(|e| self.read_error(e))?;
        let until = until_ms
            .map(|ms| datetime::from_nanos(i128::from(ms) * 1_000_000))
            .transpose()
            .map_err(|e| self.read_error(e))?;

        let filter = self.subjects.task_events_filter(task.chain, task.task_id);
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: filter.clone(),
                deliver_policy: DeliverPolicy::ByStartTime { start_time },
                description: Some(format!("evaluate replay of task {}", task.task_id)),
                ..Default::default()
            })
            .await
            .map_err(|e| self.read_error(e))?;
        let expected = consumer.cached_info().num_pending;
        info!(task_id = task.task_id, filter = %filter, since = %output::time_text(since_ms), frames = expected, last_sequence, "replaying frames");
        if expected == 0 {
            return Ok(());
        }

        let progress = progress_bar(expected);
        let mut frames = consumer.messages().await.map_err(|e| self.read_error(e))?;
        loop {
            let next = match tokio::time::timeout(IDLE_LIMIT, frames.next()).await {
                Ok(next) => next,
                Err(_) => {
                    warn!(
                        task_id = task.task_id,
                        idle_sec = IDLE_LIMIT.as_secs(),
                        "no frame arrived, the stream may have dropped the rest; stopping"
                    );
                    break;
                }
            };
            let message = match next {
                Some(Ok(message)) => message,
                Some(Err(error)) => return Err(self.read_error(error)),
                None => break,
            };
            let info = message.info().map_err(|e| self.read_error(e))?;
            let (sequence, pending) = (info.stream_sequence, info.pending);
            if sequence > last_sequence || until.is_some_and(|until| info.published > until) {
                break;
            }

            self.judge(&message.payload, sequence, &progress).await?;
            progress.inc(1);
            if pending == 0 || sequence == last_sequence {
                break;
            }
        }
        progress.finish_and_clear();
        Ok(())
    }

    /// Decodes and judges one frame, printing (and publishing) the alerts that are new.
    async fn judge(
        &mut self,
        payload: &[u8],
        sequence: u64,
        progress: &ProgressBar,
    ) -> Result<(), ReplayError> {
        let frame = match codec::decode::<EventFrame>(payload) {
            Ok(frame) => frame,
            Err(error) => {
                warn!(sequence, error = %error, "skipping a frame that cannot be decoded");
                self.totals.undecodable_frames += 1;
                return Ok(());
            }
        };
        let targets = &self.plan.targets;
        let alerts = self.collector.judge(&self.plan.task, &frame, |target| {
            targets.get(&target.target_id)
        });
        for alert in alerts {
            self.print_alert(&alert, progress)?;
            if self.args.publish {
                self.publish(&alert).await?;
            }
        }
        Ok(())
    }

    fn print_alert(&mut self, alert: &Alert, progress: &ProgressBar) -> Result<(), ReplayError> {
        let line = if self.args.json {
            output::alert_json(alert, self.locale()).to_string()
        } else {
            output::alert_line(alert, self.locale())
        };
        let out = &mut self.out;
        progress.suspend(|| writeln!(out, "{line}"))?;
        Ok(())
    }

    async fn publish(&mut self, alert: &Alert) -> Result<(), ReplayError> {
        let publish_error = |error: String| ReplayError::Publish {
            alert_id: alert.id.clone(),
            error,
        };
        let payload = codec::encode(alert).map_err(|e| publish_error(e.to_string()))?;
        let message = PublishMessage::build()
            .payload(payload.into())
            .message_id(alert.msg_id());
        let ack = self
            .js
            .send_publish(self.subjects.alerts(alert.task_id), message)
            .await
            .map_err(|e| publish_error(e.to_string()))?;
        self.pending.push((alert.id.clone(), ack));
        if self.pending.len() >= MAX_PENDING_PUBLISHES {
            self.await_publishes().await?;
        }
        Ok(())
    }

    /// Waits for the alerts stream to store the alerts published so far.
    async fn await_publishes(&mut self) -> Result<(), ReplayError> {
        for (alert_id, ack) in self.pending.drain(..) {
            let ack = ack.await.map_err(|e| ReplayError::Publish {
                alert_id,
                error: e.to_string(),
            })?;
            if !ack.duplicate {
                self.totals.published += 1;
            }
        }
        Ok(())
    }

    /// Awaits the last publishes and writes the summary.
    async fn finish(mut self) -> Result<Totals, ReplayError> {
        self.await_publishes().await?;
        self.totals.frames = self.collector.frames;
        self.totals.events = self.collector.events;
        self.totals.alerts = self.collector.alerts();
        let rules: Vec<_> = self.collector.summary().collect();
        if self.args.json {
            for line in output::summary_json(&self.totals, &rules) {
                writeln!(self.out, "{line}")?;
            }
        } else {
            for line in output::summary_lines(&self.totals, &rules) {
                writeln!(self.out, "{line}")?;
            }
        }
        self.out.flush()?;
        Ok(self.totals)
    }
}

/// Creates a progress bar on stderr when stderr is a terminal, else a hidden one.
fn progress_bar(frames: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(frames), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} frames ({per_sec}, eta {eta})",
    ) {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_args_accept_durations_and_rfc3339() {
        assert_eq!(
            parse_time_arg("90m"),
            Ok(TimeArg::Ago(Duration::from_secs(5400)))
        );
        assert_eq!(
            parse_time_arg("2023-02-02T00:00:00Z"),
            Ok(TimeArg::At(1_675_296_000_000))
        );
        assert_eq!(
            parse_time_arg("2023-02-02T08:00:00+08:00"),
            Ok(TimeArg::At(1_675_296_000_000))
        );
        let error = parse_time_arg("yesterday").unwrap_err();
        assert!(error.contains("\"yesterday\""), "{error}");
    }

    #[test]
    fn durations_count_back_from_now() {
        assert_eq!(TimeArg::Ago(Duration::from_secs(2)).to_ms(10_000), 8_000);
        assert_eq!(TimeArg::At(5).to_ms(10_000), 5);
    }
}
