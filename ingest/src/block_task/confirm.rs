//! Confirmations and reorg retractions of a block task's events. Pure.
//!
//! The tracker keeps every event a block task reported for the blocks of its reorg window,
//! keyed by block number and hash. It consumes the progress of the chain (the number of each
//! new canonical block) and the blocks a reorg replaced. It produces copies of earlier events
//! with [`ChainStatus::Confirmed`] once their block is `confirmations` deep, and with
//! [`ChainStatus::Removed`] when their block left the canonical chain. Each copy keeps the
//! source time of the first report, so evaluate gives it the same alert id.
//!
//! Guarantees: an event is confirmed at most once and removed at most once, a removed event
//! is never confirmed afterwards, and the same key (transaction, log or block) is tracked
//! once per block hash, so a log delivered twice (by the subscription and by `eth_getLogs`
//! after a reconnect) is reported once. Memory is bounded by the events of the last
//! `window` blocks.

use std::collections::BTreeMap;

use monitor_core::messages::{ChainStatus, Event, EventKind};

/// The identity of a tracked event within its block.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKey {
    Block,
    Transaction(String),
    Log {
        tx_hash: String,
        log_index: u64,
    },
    ProgramLog {
        signature: String,
        program_id: String,
    },
}

impl EventKey {
    /// Returns the key of an event of a block task; `None` for token events.
    pub fn of(event: &Event) -> Option<EventKey> {
        Some(match &event.kind {
            EventKind::Block(_) => EventKey::Block,
            EventKind::Transaction(tx) => EventKey::Transaction(tx.hash.clone()),
            EventKind::Log(log) => EventKey::Log {
                tx_hash: log.tx_hash.clone(),
                log_index: log.log_index,
            },
            EventKind::ProgramLog(log) => EventKey::ProgramLog {
                signature: log.signature.clone(),
                program_id: log.program_id.clone(),
            },
            EventKind::Trade(_) | EventKind::Price(_) | EventKind::Holders(_) => return None,
        })
    }
}

#[derive(Debug, Clone)]
struct Tracked {
    block_hash: String,
    key: EventKey,
    event: Event,
    /// Block events describe the chain's progress, which a reorg does not undo.
    retract_on_reorg: bool,
    confirmed: bool,
}

/// Events of the recent blocks of one task, waiting for confirmations or a reorg.
#[derive(Debug)]
pub struct Confirmations {
    depth: u32,
    window: u64,
    blocks: BTreeMap<u64, Vec<Tracked>>,
}

impl Confirmations {
    /// `depth` is the task's `confirmations`; events are kept for `window` blocks (at least
    /// `depth + 1`) so that a reorg of that depth can still retract them.
    pub fn new(depth: u32, window: u64) -> Self {
        Confirmations {
            depth,
            window: window.max(u64::from(depth) + 1),
            blocks: BTreeMap::new(),
        }
    }

    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// Applies a new `confirmations` value; events already confirmed stay confirmed.
    pub fn set_depth(&mut self, depth: u32) {
        self.depth = depth;
        self.window = self.window.max(u64::from(depth) + 1);
    }

    /// Starts tracking an event reported for a block. Returns false (and tracks nothing)
    /// when the same key of the same block was tracked before, so the caller does not
    /// report it again.
    pub fn track(&mut self, block_number: u64, block_hash: &str, event: &Event) -> bool {
        let Some(key) = EventKey::of(event) else {
            return false;
        };
        let entries = self.blocks.entry(block_number).or_default();
        if entries
            .iter()
            .any(|t| t.key == key && t.block_hash == block_hash)
        {
            return false;
        }
        entries.push(Tracked {
            block_hash: block_hash.to_owned(),
            retract_on_reorg: !matches!(key, EventKey::Block),
            key,
            event: event.clone(),
            confirmed: false,
        });
        true
    }

    /// Returns whether an event with this key is tracked for the block.
    pub fn contains(&self, block_number: u64, key: &EventKey) -> bool {
        self.blocks
            .get(&block_number)
            .is_some_and(|entries| entries.iter().any(|t| t.key == *key))
    }

    /// Returns the first report of a tracked event, to build its removal from.
    pub fn find(&self, block_number: u64, key: &EventKey) -> Option<&Event> {
        self.blocks
            .get(&block_number)?
            .iter()
            .find(|t| t.key == *key)
            .map(|t| &t.event)
    }

    /// Records that block `head` joined the canonical chain. Returns the confirmed copies of
    /// the events whose block is now `depth` blocks deep (none when `depth` is 0, because
    /// those alerts are confirmed from the start) and drops blocks older than the window.
    pub fn on_head(&mut self, head: u64) -> Vec<Event> {
        let mut confirmed = Vec::new();
        if self.depth > 0 {
            let deepest = head.saturating_sub(u64::from(self.depth));
            for entries in self.blocks.range_mut(..=deepest).map(|(_, e)| e) {
                for tracked in entries.iter_mut().filter(|t| !t.confirmed) {
                    tracked.confirmed = true;
                    confirmed.push(with_status(&tracked.event, ChainStatus::Confirmed));
                }
            }
        }
        let oldest_kept = head.saturating_sub(self.window);
        self.blocks = self.blocks.split_off(&oldest_kept);
        confirmed
    }

    /// Records that the block `number`/`hash` left the canonical chain. Returns the removed
    /// copies of its events and drops them.
    pub fn on_block_removed(&mut self, number: u64, hash: &str) -> Vec<Event> {
        let Some(entries) = self.blocks.get_mut(&number) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        entries.retain(|tracked| {
            if tracked.block_hash != hash {
                return true;
            }
            if tracked.retract_on_reorg {
                removed.push(with_status(&tracked.event, ChainStatus::Removed));
                false
            } else {
                true
            }
        });
        removed
    }

    /// Forgets one event (its removal was reported by the node itself); returns its first
    /// report.
    pub fn forget(&mut self, block_number: u64, key: &EventKey) -> Option<Event> {
        let entries = self.blocks.get_mut(&block_number)?;
        let position = entries.iter().position(|t| t.key == *key)?;
        Some(entries.remove(position).event)
    }

    /// Number of events tracked.
    pub fn len(&self) -> usize {
        self.blocks.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Returns a copy of a block task's event with another chain status.
pub fn with_status(event: &Event, status: ChainStatus) -> Event {
    let mut copy = event.clone();
    match &mut copy.kind {
        EventKind::Block(block) => block.status = status,
        EventKind::Transaction(tx) => tx.status = status,
        EventKind::Log(log) => {
            log.status = status;
            log.removed = status == ChainStatus::Removed;
        }
        EventKind::ProgramLog(log) => log.status = status,
        EventKind::Trade(_) | EventKind::Price(_) | EventKind::Holders(_) => {}
    }
    copy
}

#[cfg(test)]
mod tests {
    use monitor_core::messages::{Block, Log, Transaction};

    use super::*;

    fn tx_event(hash: &str, block: u64) -> Event {
        Event {
            source_time_ms: 1_000 * block as i64,
            ingest_time_ms: 0,
            target: None,
            kind: EventKind::Transaction(Transaction {
                hash: hash.into(),
                block_number: Some(block),
                from: "0xa".into(),
                to: None,
                value_native: 10.0,
                value_usd: Some(20_000.0),
                pending: false,
                native_price_usd: Some(2_000.0),
                price_source: None,
                status: ChainStatus::New,
            }),
            snapshot: None,
        }
    }

    fn block_event(number: u64) -> Event {
        Event {
            source_time_ms: 1_000 * number as i64,
            ingest_time_ms: 0,
            target: None,
            kind: EventKind::Block(Block {
                number,
                hash: format!("0xb{number}"),
                interval_sec: Some(12.0),
                status: ChainStatus::New,
            }),
            snapshot: None,
        }
    }

    fn status(event: &Event) -> ChainStatus {
        match &event.kind {
            EventKind::Transaction(tx) => tx.status,
            EventKind::Block(block) => block.status,
            EventKind::Log(log) => log.status,
            _ => unreachable!(),
        }
    }

    #[test]
    fn events_confirm_at_depth() {
        let mut tracker = Confirmations::new(2, 64);
        tracker.track(10, "0xb10", &tx_event("0x1", 10));

        assert!(tracker.on_head(11).is_empty());
        let confirmed = tracker.on_head(12);

        assert_eq!(confirmed.len(), 1);
        assert_eq!(status(&confirmed[0]), ChainStatus::Confirmed);
        assert_eq!(
            confirmed[0].source_time_ms, 10_000,
            "keeps the first report's time"
        );
        assert!(tracker.on_head(13).is_empty(), "confirmed once");
    }

    #[test]
    fn zero_depth_confirms_nothing_later() {
        let mut tracker = Confirmations::new(0, 64);
        tracker.track(10, "0xb10", &tx_event("0x1", 10));

        assert!(tracker.on_head(10).is_empty());
        assert!(tracker.on_head(20).is_empty());
        assert_eq!(tracker.len(), 1, "kept for reorgs within the window");
    }

    #[test]
    fn removed_block_retracts_its_transactions() {
        let mut tracker = Confirmations::new(3, 64);
        tracker.track(10, "0xb10", &tx_event("0x1", 10));
        tracker.track(10, "0xb10", &block_event(10));
        tracker.track(11, "0xb11", &tx_event("0x2", 11));

        let removed = tracker.on_block_removed(10, "0xb10");

        assert_eq!(removed.len(), 1, "the block event is not retracted");
        assert_eq!(status(&removed[0]), ChainStatus::Removed);
        let confirmed = tracker.on_head(13);
        assert_eq!(
            confirmed.len(),
            1,
            "only the block event of block 10 is confirmed"
        );
        assert!(matches!(confirmed[0].kind, EventKind::Block(_)));
    }

    #[test]
    fn removal_of_other_hash_keeps_events() {
        let mut tracker = Confirmations::new(1, 64);
        tracker.track(10, "0xb10", &tx_event("0x1", 10));

        assert!(tracker.on_block_removed(10, "0xother").is_empty());
        assert_eq!(tracker.len(), 1);
    }

    #[test]
    fn same_key_is_tracked_once() {
        let mut tracker = Confirmations::new(1, 64);

        assert!(tracker.track(10, "0xb10", &tx_event("0x1", 10)));
        assert!(!tracker.track(10, "0xb10", &tx_event("0x1", 10)));
        assert!(
            tracker.track(10, "0xother", &tx_event("0x1", 10)),
            "another block hash"
        );
    }

    #[test]
    fn window_bounds_memory() {
        let mut tracker = Confirmations::new(0, 4);
        for block in 1..=10 {
            tracker.track(
                block,
                &format!("0xb{block}"),
                &tx_event(&format!("0x{block}"), block),
            );
            tracker.on_head(block);
        }

        assert_eq!(tracker.len(), 5, "blocks 6 to 10");
        assert!(!tracker.contains(5, &EventKey::Transaction("0x5".into())));
        assert!(tracker.contains(6, &EventKey::Transaction("0x6".into())));
    }

    #[test]
    fn forgotten_log_is_not_confirmed() {
        let log = Event {
            source_time_ms: 5,
            ingest_time_ms: 0,
            target: None,
            kind: EventKind::Log(Log {
                address: "0xc".into(),
                topics: Vec::new(),
                data: "0x".into(),
                block_number: 10,
                tx_hash: "0xt".into(),
                log_index: 2,
                removed: false,
                decoded: None,
                block_hash: Some("0xb10".into()),
                status: ChainStatus::New,
            }),
            snapshot: None,
        };
        let mut tracker = Confirmations::new(1, 64);
        tracker.track(10, "0xb10", &log);
        let key = EventKey::Log {
            tx_hash: "0xt".into(),
            log_index: 2,
        };

        let first = tracker.forget(10, &key).unwrap();

        assert_eq!(first, log);
        assert!(tracker.on_head(11).is_empty());
        let removed = with_status(&log, ChainStatus::Removed);
        assert!(matches!(removed.kind, EventKind::Log(ref l) if l.removed));
    }
}
