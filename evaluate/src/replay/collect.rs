//! Judges replayed frames and keeps each alert id once, as the alerts stream does live.
//!
//! Consumes decoded frames in stream order. Produces the alerts that would have been stored
//! and a summary per alert type. Only the first alert of each id is kept, because the alerts
//! stream drops a repeated `Nats-Msg-Id`. It is pure, so tests can compare a replay
//! with a live run whatever the frame boundaries were.

use std::collections::{BTreeMap, HashSet};

use monitor_core::messages::{Alert, AlertType, EventFrame, TargetRef, TargetSpec, TaskSpec};

use crate::engine::evaluate_with_targets;

/// Count and source-time span of one alert type's alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleSummary {
    pub count: u64,
    pub first_ms: i64,
    pub last_ms: i64,
}

/// Alerts of a replay, deduplicated by id, with counts.
#[derive(Debug, Default)]
pub struct Collector {
    seen_ids: HashSet<String>,
    summary: BTreeMap<&'static str, (AlertType, RuleSummary)>,
    pub frames: u64,
    pub events: u64,
}

impl Collector {
    /// Judges one frame and returns the alerts whose id no earlier frame raised.
    pub fn judge<'a, F>(&mut self, task: &TaskSpec, frame: &EventFrame, lookup: F) -> Vec<Alert>
    where
        F: Fn(&TargetRef) -> Option<&'a TargetSpec>,
    {
        self.frames += 1;
        self.events += frame.events.len() as u64;
        let mut fresh = evaluate_with_targets(task, frame, lookup);
        fresh.retain(|alert| self.seen_ids.insert(alert.id.clone()));
        for alert in &fresh {
            self.count(alert);
        }
        fresh
    }

    fn count(&mut self, alert: &Alert) {
        let time_ms = alert.event_time_ms;
        let (_, entry) = self.summary.entry(alert.alert_type.as_str()).or_insert((
            alert.alert_type,
            RuleSummary {
                count: 0,
                first_ms: time_ms,
                last_ms: time_ms,
            },
        ));
        entry.count += 1;
        entry.first_ms = entry.first_ms.min(time_ms);
        entry.last_ms = entry.last_ms.max(time_ms);
    }

    /// Number of distinct alerts so far.
    pub fn alerts(&self) -> u64 {
        self.seen_ids.len() as u64
    }

    /// Ids of the distinct alerts so far.
    pub fn ids(&self) -> &HashSet<String> {
        &self.seen_ids
    }

    /// Summary per alert type, in the order of the type names.
    pub fn summary(&self) -> impl Iterator<Item = (AlertType, RuleSummary)> + '_ {
        self.summary.values().copied()
    }
}

#[cfg(test)]
mod tests {
    use monitor_core::messages::{
        BatchRef, BatchStatus, Chain, ConfigSpec, Event, EventKind, Side, TaskType, TokenSnapshot,
        Trade, MESSAGE_VERSION,
    };
    use monitor_core::rules::{LargeTradeRule, Rules, SideFilter, TokenRules, TriggerLogic};

    use super::*;

    fn task() -> TaskSpec {
        let rules = TokenRules {
            price_change: None,
            volume: None,
            holder_change: None,
            large_trade: Some(LargeTradeRule {
                side: SideFilter::Any,
                min_usd: 100.0,
            }),
            cumulative_buy: None,
            top_holders: None,
            cooldown_sec: 60,
        };
        TaskSpec {
            v: MESSAGE_VERSION,
            task_id: 1,
            name: "t".into(),
            task_type: TaskType::Smart,
            chain: Chain::Eth,
            epoch: 1,
            config: Some(ConfigSpec {
                config_id: 1,
                version: 1,
                name: "c".into(),
                trigger_logic: TriggerLogic::Or,
                rules: Rules::Token(rules),
            }),
            batches: vec![BatchRef {
                batch_id: 10,
                batch_no: 1,
                item_count: 1,
                status: BatchStatus::Running,
            }],
            config_error: None,
            published_ms: 0,
        }
    }

    fn frame(seq: u64, times_ms: &[i64]) -> EventFrame {
        let events = times_ms
            .iter()
            .map(|&time_ms| Event {
                source_time_ms: time_ms,
                ingest_time_ms: time_ms,
                target: Some(TargetRef {
                    target_id: 5,
                    address: "0xabc".into(),
                }),
                kind: EventKind::Trade(Trade {
                    side: Side::Buy,
                    volume_usd: 500.0,
                    price_usd: None,
                    tx_hash: None,
                    owner: None,
                }),
                snapshot: Some(TokenSnapshot::default()),
            })
            .collect();
        EventFrame {
            v: MESSAGE_VERSION,
            task_id: 1,
            batch_id: Some(10),
            epoch: 1,
            chain: Chain::Eth,
            producer: "p".into(),
            seq,
            events,
        }
    }

    #[test]
    fn repeated_id_kept_once() {
        let task = task();
        let mut collector = Collector::default();
        let first = collector.judge(&task, &frame(1, &[1_000, 2_000]), |_| None);
        let second = collector.judge(&task, &frame(2, &[3_000, 61_000]), |_| None);

        assert_eq!(first.len(), 1);
        assert_eq!(first[0].event_time_ms, 1_000);
        assert_eq!(second.len(), 1, "only the next cooldown bucket is new");
        assert_eq!(second[0].event_time_ms, 61_000);
        assert_eq!((collector.frames, collector.events), (2, 4));
        assert_eq!(collector.alerts(), 2);

        let summary: Vec<_> = collector.summary().collect();
        assert_eq!(
            summary,
            vec![(
                AlertType::LargeTrade,
                RuleSummary {
                    count: 2,
                    first_ms: 1_000,
                    last_ms: 61_000
                }
            )]
        );
    }
}
