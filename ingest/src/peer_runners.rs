//! The batch runners of other ingest instances, as their status changes report them. Pure.
//!
//! Consumes the [`StatusChange`]s that every instance publishes for its batches and produces
//! the answer to one question of an epoch switch: has the runner of a new batch that another
//! instance holds been `running` long enough for the old batch to stop here? The supervisor
//! reads the changes from a plain subscription to the batch status subjects, so it learns
//! only of changes sent while it listens. That is enough: a batch of a new epoch starts after
//! the switch, and an old batch whose successor's `running` was missed keeps running (a
//! longer overlap, never a gap) until the next change or the overlap limit.

use std::collections::HashMap;

use monitor_core::messages::{BatchStatus, StatusChange, StatusScope};
use tokio::time::Instant;

use crate::plan;

/// A runner of another instance that reports `running`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PeerRunner {
    consumer_id: String,
    running_since: Instant,
}

/// The batches that other instances report `running`, by batch id.
#[derive(Debug, Default)]
pub struct PeerRunners {
    running: HashMap<u64, PeerRunner>,
}

impl PeerRunners {
    /// Records a status change received at `now`. Changes of block tasks and of this
    /// instance's own runners (`own_consumer_id`) are ignored.
    pub fn record(&mut self, change: &StatusChange, own_consumer_id: &str, now: Instant) {
        let StatusScope::Batch { batch_id, .. } = change.scope else {
            return;
        };
        if change.consumer_id == own_consumer_id {
            return;
        }
        if change.status != BatchStatus::Running {
            // Any other change of the batch, from whichever instance, ends what was known:
            // a runner that starts anywhere first reports `pending`.
            self.running.remove(&batch_id);
            return;
        }
        let same_runner = self
            .running
            .get(&batch_id)
            .is_some_and(|peer| peer.consumer_id == change.consumer_id);
        if !same_runner {
            self.running.insert(
                batch_id,
                PeerRunner {
                    consumer_id: change.consumer_id.clone(),
                    running_since: now,
                },
            );
        }
    }

    /// Returns whether `owner`, the instance that should hold the batch's lease, has
    /// reported it `running` for at least [`plan::SUBSCRIBE_SETTLE`].
    ///
    /// NOTE: an owner that dies within the settle time still counts until its member key
    /// expires (15 s), so the batch it reported goes unwatched until another instance takes
    /// it over.
    pub fn running_settled(&self, batch_id: u64, owner: Option<&str>, now: Instant) -> bool {
        let running_for = self
            .running
            .get(&batch_id)
            .filter(|peer| Some(peer.consumer_id.as_str()) == owner)
            .map(|peer| now.duration_since(peer.running_since));
        plan::running_settled(running_for)
    }

    /// Forgets the batches for which `keep` is false.
    pub fn retain(&mut self, mut keep: impl FnMut(u64) -> bool) {
        self.running.retain(|batch_id, _| keep(*batch_id));
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
        let mut peers = PeerRunners::default();
        peers.record(&change(7, "b", BatchStatus::Pending), "a", start);
        assert!(!peers.running_settled(7, Some("b"), start + SUBSCRIBE_SETTLE));

        peers.record(&change(7, "b", BatchStatus::Running), "a", start);
        let settled = start + SUBSCRIBE_SETTLE;
        assert!(!peers.running_settled(7, Some("b"), settled - Duration::from_millis(1)));
        assert!(peers.running_settled(7, Some("b"), settled));
        // A repeated `running` does not restart the settle time.
        peers.record(&change(7, "b", BatchStatus::Running), "a", settled);
        assert!(peers.running_settled(7, Some("b"), settled));
    }

    #[test]
    fn running_counts_only_for_the_lease_owner() {
        let start = Instant::now();
        let later = start + SUBSCRIBE_SETTLE;
        let mut peers = PeerRunners::default();
        peers.record(&change(7, "b", BatchStatus::Running), "a", start);
        // The batch is being handed to "c", or "b" left the members.
        assert!(!peers.running_settled(7, Some("c"), later));
        assert!(!peers.running_settled(7, None, later));
        assert!(!peers.running_settled(8, Some("b"), later));
    }

    #[test]
    fn any_other_change_ends_running() {
        let start = Instant::now();
        let later = start + SUBSCRIBE_SETTLE;
        let mut peers = PeerRunners::default();
        peers.record(&change(7, "b", BatchStatus::Running), "a", start);
        peers.record(&change(7, "b", BatchStatus::Error), "a", start);
        assert!(!peers.running_settled(7, Some("b"), later));

        // A new runner on "c" reports `pending` first, which clears the old one's record.
        peers.record(&change(7, "b", BatchStatus::Running), "a", start);
        peers.record(&change(7, "c", BatchStatus::Pending), "a", start);
        assert!(!peers.running_settled(7, Some("b"), later));

        // Running again starts the settle time again.
        peers.record(&change(7, "b", BatchStatus::Running), "a", later);
        assert!(!peers.running_settled(7, Some("b"), later));
    }

    #[test]
    fn own_changes_and_task_changes_are_ignored() {
        let start = Instant::now();
        let later = start + SUBSCRIBE_SETTLE;
        let mut peers = PeerRunners::default();
        peers.record(&change(7, "a", BatchStatus::Running), "a", start);
        assert!(!peers.running_settled(7, Some("a"), later));

        let mut task_change = change(7, "b", BatchStatus::Running);
        task_change.scope = StatusScope::Task { task_id: 7 };
        peers.record(&task_change, "a", start);
        assert!(!peers.running_settled(7, Some("b"), later));
    }

    #[test]
    fn retain_forgets_batches() {
        let start = Instant::now();
        let later = start + SUBSCRIBE_SETTLE;
        let mut peers = PeerRunners::default();
        peers.record(&change(7, "b", BatchStatus::Running), "a", start);
        peers.record(&change(8, "b", BatchStatus::Running), "a", start);
        peers.retain(|batch_id| batch_id == 8);
        assert!(!peers.running_settled(7, Some("b"), later));
        assert!(peers.running_settled(8, Some("b"), later));
    }
}
