//! Pending transactions of one block task that were reported as large and wait to be mined
//! or dropped. Pure.
//!
//! Only transactions whose value reached the task's threshold are kept, at most
//! [`MAX_TRACKED`]; each is checked with `eth_getTransactionByHash` a few blocks after it was
//! seen, in turns of at most [`CHECKS_PER_BLOCK`], and forgotten after [`MAX_AGE`].

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use monitor_core::messages::Event;
use tokio::time::Instant;

/// Pending transactions tracked at most; later ones are reported but not followed.
pub const MAX_TRACKED: usize = 10_000;
/// Node look-ups of tracked transactions after each block, at most.
pub const CHECKS_PER_BLOCK: usize = 32;
/// A transaction is looked up only once this many blocks passed since it was seen, so that
/// one just broadcast is not looked up before it could be mined.
pub const BLOCKS_BEFORE_CHECK: u64 = 1;
/// A transaction still pending after this long is no longer followed; its alert stays
/// provisional.
pub const MAX_AGE: Duration = Duration::from_secs(3600);

struct PendingTx {
    event: Event,
    seen_at: Instant,
    /// Last block processed when the transaction was seen.
    seen_at_block: u64,
}

#[derive(Default)]
pub struct PendingTxs {
    entries: HashMap<String, PendingTx>,
    /// Hashes in check order; a checked hash that stays pending goes to the back.
    order: VecDeque<String>,
}

impl PendingTxs {
    /// Starts following a transaction reported as pending; false when it is followed already
    /// or [`MAX_TRACKED`] are.
    pub fn insert(&mut self, hash: &str, event: Event, seen_at_block: u64, now: Instant) -> bool {
        if self.entries.contains_key(hash) || self.entries.len() >= MAX_TRACKED {
            return false;
        }
        self.entries.insert(
            hash.to_owned(),
            PendingTx {
                event,
                seen_at: now,
                seen_at_block,
            },
        );
        self.order.push_back(hash.to_owned());
        true
    }

    pub fn contains(&self, hash: &str) -> bool {
        self.entries.contains_key(hash)
    }

    /// Stops following a transaction and returns its pending event.
    pub fn take(&mut self, hash: &str) -> Option<Event> {
        let entry = self.entries.remove(hash)?;
        self.order.retain(|h| h != hash);
        Some(entry.event)
    }

    /// Returns up to [`CHECKS_PER_BLOCK`] hashes to look up after block `head`, and moves
    /// them to the back of the check order.
    pub fn due_for_check(&mut self, head: u64) -> Vec<String> {
        let mut due = Vec::new();
        for _ in 0..self.order.len() {
            if due.len() >= CHECKS_PER_BLOCK {
                break;
            }
            let Some(hash) = self.order.pop_front() else {
                break;
            };
            let ready = self
                .entries
                .get(&hash)
                .is_some_and(|e| head >= e.seen_at_block + BLOCKS_BEFORE_CHECK);
            if ready {
                due.push(hash.clone());
            }
            self.order.push_back(hash);
        }
        due
    }

    /// Forgets transactions followed for longer than [`MAX_AGE`]; returns their hashes.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let expired: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| now.duration_since(e.seen_at) >= MAX_AGE)
            .map(|(hash, _)| hash.clone())
            .collect();
        for hash in &expired {
            self.take(hash);
        }
        expired
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use monitor_core::messages::{Block, ChainStatus, EventKind};

    use super::*;

    fn event() -> Event {
        Event {
            source_time_ms: 1,
            ingest_time_ms: 1,
            target: None,
            kind: EventKind::Block(Block {
                number: 1,
                hash: "0x1".into(),
                interval_sec: None,
                status: ChainStatus::New,
            }),
            snapshot: None,
        }
    }

    #[test]
    fn checks_wait_one_block_and_rotate() {
        let now = Instant::now();
        let mut pending = PendingTxs::default();
        pending.insert("0xa", event(), 10, now);
        pending.insert("0xb", event(), 11, now);

        assert!(pending.due_for_check(10).is_empty());
        assert_eq!(pending.due_for_check(11), vec!["0xa".to_owned()]);
        assert_eq!(
            pending.due_for_check(12),
            vec!["0xa".to_owned(), "0xb".to_owned()]
        );
    }

    #[test]
    fn taken_transaction_is_not_checked() {
        let now = Instant::now();
        let mut pending = PendingTxs::default();
        pending.insert("0xa", event(), 1, now);

        assert!(pending.take("0xa").is_some());
        assert!(pending.due_for_check(5).is_empty());
        assert!(pending.is_empty());
    }

    #[test]
    fn old_transactions_expire() {
        let now = Instant::now();
        let mut pending = PendingTxs::default();
        pending.insert("0xa", event(), 1, now);

        assert!(pending.expire(now + Duration::from_secs(10)).is_empty());
        assert_eq!(pending.expire(now + MAX_AGE), vec!["0xa".to_owned()]);
        assert!(pending.is_empty());
    }

    #[test]
    fn same_hash_is_followed_once() {
        let now = Instant::now();
        let mut pending = PendingTxs::default();

        assert!(pending.insert("0xa", event(), 1, now));
        assert!(!pending.insert("0xa", event(), 2, now));
        assert!(pending.contains("0xa"));
    }
}
