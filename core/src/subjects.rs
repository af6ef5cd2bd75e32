//! Subject, stream, bucket and consumer names, all derived from one prefix.
//!
//! The default prefix `monitor` gives the production names (`monitor.events.>`, stream
//! `MONITOR_EVENTS`, bucket `monitor_tasks`). Tests pick a prefix of their own so that many
//! pipelines share one nats-server without seeing each other's messages.

use crate::messages::Chain;

/// Names of every subject, stream, bucket and durable consumer of one pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
    upper: String,
}

/// Error returned for a prefix that cannot be part of a subject and a stream name.
#[derive(Debug, thiserror::Error)]
#[error("invalid subject prefix {0:?}: use letters, digits, '_' or '-' only")]
pub struct InvalidPrefix(pub String);

impl Subjects {
    pub fn new(prefix: &str) -> Result<Self, InvalidPrefix> {
        let valid = !prefix.is_empty()
            && prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            return Err(InvalidPrefix(prefix.to_owned()));
        }
        Ok(Subjects {
            prefix: prefix.to_owned(),
            upper: prefix.to_ascii_uppercase().replace('-', "_"),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    // Streams and buckets.

    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.upper)
    }

    pub fn alerts_stream(&self) -> String {
        format!("{}_ALERTS", self.upper)
    }

    pub fn status_stream(&self) -> String {
        format!("{}_STATUS", self.upper)
    }

    pub fn dead_stream(&self) -> String {
        format!("{}_DEAD", self.upper)
    }

    pub fn tasks_bucket(&self) -> String {
        format!("{}_tasks", self.prefix)
    }

    pub fn leases_bucket(&self) -> String {
        format!("{}_leases", self.prefix)
    }

    /// Bucket in which notify keeps the latest status message of each scope.
    pub fn notify_status_bucket(&self) -> String {
        format!("{}_notify_status", self.prefix)
    }

    // Subjects.

    /// Subject of the event frames of one batch of a token task.
    pub fn batch_events(&self, chain: Chain, task_id: u64, batch_id: u64) -> String {
        format!("{}.events.{}.{}.{}", self.prefix, chain, task_id, batch_id)
    }

    /// Subject of the event frames of a block task, which has no batches.
    pub fn chain_events(&self, chain: Chain, task_id: u64) -> String {
        format!("{}.events.{}.{}.chain", self.prefix, chain, task_id)
    }

    /// Filter matching every event frame of one task, whatever its batch.
    pub fn task_events_filter(&self, chain: Chain, task_id: u64) -> String {
        format!("{}.events.{}.{}.*", self.prefix, chain, task_id)
    }

    pub fn all_events(&self) -> String {
        format!("{}.events.>", self.prefix)
    }

    pub fn alerts(&self, task_id: u64) -> String {
        format!("{}.alerts.{}", self.prefix, task_id)
    }

    pub fn all_alerts(&self) -> String {
        format!("{}.alerts.>", self.prefix)
    }

    pub fn batch_status(&self, task_id: u64, batch_id: u64) -> String {
        format!("{}.status.batch.{}.{}", self.prefix, task_id, batch_id)
    }

    pub fn task_status(&self, task_id: u64) -> String {
        format!("{}.status.task.{}", self.prefix, task_id)
    }

    /// Status subjects of every batch, of every task.
    pub fn all_batch_status(&self) -> String {
        format!("{}.status.batch.>", self.prefix)
    }

    pub fn all_status(&self) -> String {
        format!("{}.status.>", self.prefix)
    }

    /// Subject under which a frame that could not be judged is kept for inspection.
    pub fn dead(&self, stage: &str) -> String {
        format!("{}.dead.{}", self.prefix, stage)
    }

    pub fn all_dead(&self) -> String {
        format!("{}.dead.>", self.prefix)
    }

    // Keys of the tasks bucket.

    pub fn task_key(task_id: u64) -> String {
        format!("task.{task_id}")
    }

    pub fn batch_key(batch_id: u64) -> String {
        format!("batch.{batch_id}")
    }

    // Durable consumers.

    pub const EVALUATE_CONSUMER: &'static str = "evaluate";
    pub const NOTIFY_ALERTS_CONSUMER: &'static str = "notify_alerts";
    pub const NOTIFY_STATUS_CONSUMER: &'static str = "notify_status";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_prefix_gives_production_names() {
        let s = Subjects::new("monitor").unwrap();
        assert_eq!(s.events_stream(), "MONITOR_EVENTS");
        assert_eq!(s.tasks_bucket(), "monitor_tasks");
        assert_eq!(s.batch_events(Chain::Eth, 3, 17), "monitor.events.eth.3.17");
        assert_eq!(s.chain_events(Chain::Sol, 4), "monitor.events.sol.4.chain");
        assert_eq!(s.batch_status(3, 17), "monitor.status.batch.3.17");
        assert_eq!(s.alerts(3), "monitor.alerts.3");
    }

    #[test]
    fn prefix_with_dot_is_rejected() {
        assert!(Subjects::new("a.b").is_err());
        assert!(Subjects::new("").is_err());
    }

    #[test]
    fn dashed_prefix_gives_valid_stream_name() {
        let s = Subjects::new("t-42").unwrap();
        assert_eq!(s.alerts_stream(), "T_42_ALERTS");
    }
}
