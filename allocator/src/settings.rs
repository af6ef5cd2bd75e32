//! Settings of the allocator: the shared connection groups plus allocation and polling.

use std::num::NonZeroU32;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::Args;
use monitor_core::settings::{
    parse_seconds, DbSettings, NatsSettings, RedisSettings, RuntimeSettings,
};

use crate::order::Strategy;

/// Redis channel on which the Java side announces config changes.
pub const DEFAULT_CONFIG_CHANNEL: &str = "monitor:config:changed";

/// Everything the allocator reads from the environment or the command line.
#[derive(Debug, Clone, Args)]
pub struct AllocatorSettings {
    #[command(flatten)]
    pub db: DbSettings,

    #[command(flatten)]
    pub nats: NatsSettings,

    #[command(flatten)]
    pub redis: RedisSettings,

    #[command(flatten)]
    pub runtime: RuntimeSettings,

    /// Maximum targets per batch (market-data feeds accept about 100 addresses a subscription).
    #[arg(long = "batch-size", env = "BATCH_SIZE", default_value = "99", value_parser = parse_batch_size)]
    pub batch_size: NonZeroU32,

    /// Seconds between two database polls for changed tasks, configs and targets.
    #[arg(long = "config-poll-interval", env = "CONFIG_POLL_INTERVAL", default_value = "5", value_parser = parse_poll_interval)]
    pub config_poll_interval: Duration,

    /// Allocation strategy: sticky (targets keep their batch) or seed (md5 order from scratch).
    #[arg(
        long = "allocation-strategy",
        env = "ALLOCATION_STRATEGY",
        default_value = "sticky"
    )]
    pub allocation_strategy: Strategy,

    /// Seconds that the batch rows of a replaced epoch are kept before they are deleted.
    #[arg(long = "epoch-grace-period", env = "EPOCH_GRACE_PERIOD", default_value = "600", value_parser = parse_seconds)]
    pub epoch_grace_period: Duration,

    /// Redis channel carrying config change notices ({"configId": N, "version": M}).
    #[arg(long = "config-channel", env = "CONFIG_CHANGED_CHANNEL", default_value = DEFAULT_CONFIG_CHANNEL)]
    pub config_channel: String,

    /// Maximum active targets of one task; a task with more is not allocated and the error
    /// names the count.
    #[arg(long = "max-targets-per-task", env = "MAX_TARGETS_PER_TASK", default_value_t = monitor_core::limits::DEFAULT_MAX_TARGETS_PER_TASK, value_parser = clap::value_parser!(u64).range(1..=10_000_000).map(|n| n as usize))]
    pub max_targets_per_task: usize,
}

impl AllocatorSettings {
    /// Settings for a test or an embedded run: local services, default intervals.
    pub fn local(db: DbSettings, nats: NatsSettings, redis: RedisSettings) -> Self {
        AllocatorSettings {
            db,
            nats,
            redis,
            runtime: RuntimeSettings::default(),
            batch_size: NonZeroU32::new(99).unwrap_or(NonZeroU32::MIN),
            config_poll_interval: Duration::from_secs(5),
            allocation_strategy: Strategy::Sticky,
            epoch_grace_period: Duration::from_secs(600),
            config_channel: DEFAULT_CONFIG_CHANNEL.to_owned(),
            max_targets_per_task: monitor_core::limits::DEFAULT_MAX_TARGETS_PER_TASK,
        }
    }
}

/// Largest batch size accepted; one Birdeye subscription message carries at most 100 addresses.
const MAX_BATCH_SIZE: u32 = 100;

fn parse_batch_size(s: &str) -> Result<NonZeroU32, String> {
    let size: u32 = s.trim().parse().map_err(|_| {
        format!("expected a whole number between 1 and {MAX_BATCH_SIZE}, got {s:?}")
    })?;
    if size == 0 || size > MAX_BATCH_SIZE {
        return Err(format!(
            "expected a whole number between 1 and {MAX_BATCH_SIZE}, got {size}"
        ));
    }
    NonZeroU32::new(size).ok_or_else(|| format!("batch size must not be 0, got {s:?}"))
}

fn parse_poll_interval(s: &str) -> Result<Duration, String> {
    let interval = parse_seconds(s)?;
    if interval < Duration::from_millis(100) {
        return Err(format!("expected at least 0.1 seconds, got {s:?}"));
    }
    Ok(interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_size_accepts_one_to_one_hundred() {
        assert_eq!(parse_batch_size("99").unwrap().get(), 99);
        assert_eq!(parse_batch_size("1").unwrap().get(), 1);
        assert_eq!(parse_batch_size("100").unwrap().get(), 100);
    }

    #[test]
    fn batch_size_rejects_zero_and_oversized_values() {
        assert!(parse_batch_size("0").unwrap_err().contains("got 0"));
        assert!(parse_batch_size("101").unwrap_err().contains("got 101"));
        assert!(parse_batch_size("ten").unwrap_err().contains("\"ten\""));
    }

    #[test]
    fn poll_interval_rejects_zero() {
        assert!(parse_poll_interval("0").is_err());
        assert_eq!(
            parse_poll_interval("0.5").unwrap(),
            Duration::from_millis(500)
        );
    }
}
