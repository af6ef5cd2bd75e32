//! The batch runners of other ingest instances, as their status changes report them. Pure.
//!
//! Consumes the [`StatusChange`]s that every instance publishes for its batches. Produces,
//! for an epoch switch or a handover, whether another instance has run a batch long enough
//! for the runner here that it replaces to stop. The supervisor reads
//! the changes from a plain subscription to the batch status subjects, so it learns only of
//! changes sent while it listens. That is enough: a batch of a new epoch starts after the
//! switch, and a handed-over batch starts after this instance released its lease. A missed
//! `running` keeps the old runner longer (never a gap), until the next change or the
//! overlap limit. For a handover only a report received after the handover began counts,
//! because an earlier one may be left from a previous run of the same batch there.

use std::collections::HashMap;

use monitor_core::messages::{BatchStatus, StatusChange, StatusScope};
use tokio::time::Instant;

use crate::plan;

/// Since when other instances report their runners `running`, by batch id and consumer id.
#[derive(Debug, Default)]
pub struct PeerRunners {
    running_since: HashMap<(u64, String), Instant>,
}

impl PeerRunners {
    /// Records a status change received at `now`. Changes of block tasks and of this
    /// instance's own runners (`own_consumer_id`) are ignored. A change reaches only the
    /// record of the instance that sent it, because another instance's runner of the same
    /// batch may be stopping at the same time.
    pub fn record(&mut self, change: &StatusChange, own_consumer_id: &str, now: Instant) {
        let StatusScope::Batch { batch_id, .. } = change.scope else {
            return;
        };
        if change.consumer_id == own_consumer_id {
            return;
        }
        let key = (batch_id, change.consumer_id.clone());
        if change.status == BatchStatus::Running {
            self.running_since.entry(key).or_insert(now);
        } else {
            self.running_since.remove(&key);
        }
    }

    /// Returns whether `owner`, the instance that should hold the batch's lease, has
    /// reported it `running` for at least [`plan::SUBSCRIBE_SETTLE`], in a report received
    /// after `reported_after` when that is given.
    ///
    /// NOTE: an owner that dies within the settle time still counts until its member key
    /// expires (15 s), so the batch it reported goes unwatched until another instance takes
    /// it over.
    pub fn running_settled(
        &self,
        batch_id: u64,
        owner: Option<&str>,
        reported_after: Option<Instant>,
        now: Instant,
    ) -> bool {
        let Some(owner) = owner else {
            return false;
        };
        let running_for = self
            .running_since
            .get(&(batch_id, owner.to_owned()))
            .filter(|since| reported_after.is_none_or(|after| **since >= after))
            .map(|since| now.duration_since(*since));
        plan::running_settled(running_for)
    }

    /// Forgets the batches for which `keep` is false.
    pub fn retain(&mut self, mut keep: impl FnMut(u64) -> bool) {
        self.running_since
            .retain(|(batch_id, _), _| keep(*batch_id));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use monitor_core::messages::MESSAGE_VERSION;

    use super::*;
    use crate::plan::SUBSCRIBE_SETTLE;

    fn change(batch_id: u64, consumer_id: &str, status: BatchStatus) -> StatusChange {
        StatusChange {
            v: MESSAGE_VERSION,
            scope: StatusScope::Batch {
                task_id: 1,
                batch_id,
            },
            consumer_id: consumer_id.into(),
            status,
            reason: None,
            item_count: 1,
            progress: 0.0,
            errors: 0,
            sent_ms: 0,
        }
    }

    #[test]
    fn peer_batch_counts_once_running_settled() {
        let start = Instant::now();
        let settled = start + SUBSCRIBE_SETTLE;
        let mut peers = PeerRunners::default();
        peers.record(&change(7, "b", BatchStatus::Pending), "a", start);
        assert!(!peers.running_settled(7, Some("b"), None, settled));

        peers.record(&change(7, "b", BatchStatus::Running), "a", start);
        let just_before = settled - Duration::from_millis(1);
        assert!(!peers.running_settled(7, Some("b"), None, just_before));
        assert!(peers.running_settled(7, Some("b"), None, settled));
        // A repeated `running` does not restart the settle time.
        peers.record(&change(7, "b", BatchStatus::Running), "a", settled);
        assert!(peers.running_settled(7, Some("b"), None, settled));
    }

    #[test]
    fn running_counts_only_for_the_owner() {
        let start = Instant::now();
        let later = start + SUBSCRIBE_SETTLE;
        let mut peers = PeerRunners::default();
        peers.record(&change(7, "b", BatchStatus::Running), "a", start);
        // The batch is being handed to "c", or "b" left the members.
        assert!(!peers.running_settled(7, Some("c"), None, later));
        assert!(!peers.running_settled(7, None, None, later));
        assert!(!peers.running_settled(8, Some("b"), None, later));
    }

    #[test]
    fn change_ends_running_of_its_sender_only() {
        let start = Instant::now();
        let later = start + SUBSCRIBE_SETTLE;
        let mut peers = PeerRunners::default();
        peers.record(&change(7, "b", BatchStatus::Running), "a", start);
        peers.record(&change(7, "c", BatchStatus::Running), "a", start);
        peers.record(&change(7, "b", BatchStatus::Stopped), "a", start);
        assert!(!peers.running_settled(7, Some("b"), None, later));
        assert!(peers.running_settled(7, Some("c"), None, later));

        // Running again starts the settle time again.
        peers.record(&change(7, "b", BatchStatus::Running), "a", later);
        assert!(!peers.running_settled(7, Some("b"), None, later));
    }

    #[test]
    fn report_before_handover_does_not_count() {
        let start = Instant::now();
        let handover = start + Duration::from_secs(1);
        let mut peers = PeerRunners::default();
        peers.record(&change(7, "b", BatchStatus::Running), "a", start);
        let later = handover + SUBSCRIBE_SETTLE;
        assert!(!peers.running_settled(7, Some("b"), Some(handover), later));
        assert!(peers.running_settled(7, Some("b"), Some(start), later));
    }

    #[test]
    fn own_changes_and_task_changes_are_ignored() {
        let start = Instant::now();
        let later = start + SUBSCRIBE_SETTLE;
        let mut peers = PeerRunners::default();
        peers.record(&change(7, "a", BatchStatus::Running), "a", start);
        assert!(!peers.running_settled(7, Some("a"), None, later));

        let mut task_change = change(7, "b", BatchStatus::Running);
        task_change.scope = StatusScope::Task { task_id: 7 };
        peers.record(&task_change, "a", start);
        assert!(!peers.running_settled(7, Some("b"), None, later));
    }

    #[test]
    fn retain_forgets_batches() {
        let start = Instant::now();
        let later = start + SUBSCRIBE_SETTLE;
        let mut peers = PeerRunners::default();
        peers.record(&change(7, "b", BatchStatus::Running), "a", start);
        peers.record(&change(8, "b", BatchStatus::Running), "a", start);
        peers.retain(|batch_id| batch_id == 8);
        assert!(!peers.running_settled(7, Some("b"), None, later));
        assert!(peers.running_settled(8, Some("b"), None, later));
    }
}
