//! Settings of the evaluate stage, read from the environment or the command line.

use std::time::Duration;

use clap::Args;
use monitor_core::settings::{parse_seconds, NatsSettings, RuntimeSettings};

/// Default `EVALUATE_BATCH`: frames requested per pull.
pub const DEFAULT_PULL_BATCH: usize = 256;
/// Default `UNKNOWN_TASK_TIMEOUT`.
pub const DEFAULT_UNKNOWN_TASK_TIMEOUT: Duration = Duration::from_secs(60);

/// Everything `evaluate run` needs.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    #[command(flatten)]
    pub nats: NatsSettings,

    #[command(flatten)]
    pub runtime: RuntimeSettings,

    /// Frames requested from the events stream per pull (also the limit of frames whose alert
    /// publishes are awaited at once).
    #[arg(long = "evaluate-batch", env = "EVALUATE_BATCH", default_value_t = DEFAULT_PULL_BATCH,
          value_parser = parse_pull_batch)]
    pub pull_batch: usize,

    /// Seconds a frame of a task missing from the tasks bucket is redelivered before it is
    /// moved to the dead stream, counted from the frame's first delivery (as redeliveries
    /// times the retry delay, a sixth of this timeout).
    #[arg(long = "unknown-task-timeout", env = "UNKNOWN_TASK_TIMEOUT", default_value = "60",
          value_parser = parse_seconds)]
    pub unknown_task_timeout: Duration,
}

impl Settings {
    /// Settings for a local NATS server with the defaults of every other value.
    pub fn local(nats_url: &str, subject_prefix: &str) -> Self {
        Settings {
            nats: NatsSettings::local(nats_url, subject_prefix),
            runtime: RuntimeSettings::default(),
            pull_batch: DEFAULT_PULL_BATCH,
            unknown_task_timeout: DEFAULT_UNKNOWN_TASK_TIMEOUT,
        }
    }

    /// Delay before a frame that cannot be judged yet is redelivered: a sixth of the
    /// unknown-task timeout, so a frame is retried several times before it is given up, kept
    /// between 100 ms and 5 s.
    pub fn retry_delay(&self) -> Duration {
        (self.unknown_task_timeout / 6).clamp(Duration::from_millis(100), Duration::from_secs(5))
    }
}

fn parse_pull_batch(value: &str) -> Result<usize, String> {
    match value.trim().parse::<usize>() {
        Ok(n) if (1..=10_000).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected a whole number between 1 and 10000, got {value:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_follows_the_timeout() {
        let mut settings = Settings::local("nats://127.0.0.1:4222", "monitor");
        assert_eq!(settings.retry_delay(), Duration::from_secs(5));
        settings.unknown_task_timeout = Duration::from_secs(3);
        assert_eq!(settings.retry_delay(), Duration::from_millis(500));
        settings.unknown_task_timeout = Duration::ZERO;
        assert_eq!(settings.retry_delay(), Duration::from_millis(100));
    }

    #[test]
    fn pull_batch_bounds() {
        assert_eq!(parse_pull_batch("256"), Ok(256));
        assert!(parse_pull_batch("0").is_err());
        assert!(parse_pull_batch("10001").is_err());
        assert!(parse_pull_batch("many").is_err());
    }
}
