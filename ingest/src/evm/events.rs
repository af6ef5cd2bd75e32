//! Turning EVM blocks, transactions and logs into events of a block task. Pure.
//!
//! Source times are chain times: the block's timestamp for blocks, mined transactions and
//! logs, and the time ingest first saw a pending transaction.

use monitor_core::messages::{Block, ChainStatus, Event, EventKind, Log, Transaction};

use super::abi::{decode_erc20, wei_to_native};
use super::types::{Header, RawLog, RawTransaction};
use crate::block_task::price::Quote;

/// Builds the event of a new block. `interval_sec` is the time since its parent, when the task
/// saw the parent.
pub fn block_event(header: &Header, interval_sec: Option<f64>, now_ms: i64) -> Event {
    event(
        header.timestamp as i64 * 1000,
        now_ms,
        EventKind::Block(Block {
            number: header.number,
            hash: header.hash.clone(),
            interval_sec,
            status: ChainStatus::New,
        }),
    )
}

/// Returns the USD value of a transaction at `quote`.
pub fn value_usd(tx: &RawTransaction, quote: &Quote) -> f64 {
    wei_to_native(tx.value_wei) * quote.usd
}

/// Builds the event of a transaction, mined (`block_number` set) or pending.
pub fn transaction_event(
    tx: &RawTransaction,
    block_number: Option<u64>,
    quote: &Quote,
    source_time_ms: i64,
    now_ms: i64,
) -> Event {
    event(
        source_time_ms,
        now_ms,
        EventKind::Transaction(Transaction {
            hash: tx.hash.clone(),
            block_number,
            from: tx.from.clone(),
            to: tx.to.clone(),
            value_native: wei_to_native(tx.value_wei),
            value_usd: Some(value_usd(tx, quote)),
            pending: block_number.is_none(),
            native_price_usd: Some(quote.usd),
            price_source: Some(quote.source.clone()),
            status: ChainStatus::New,
        }),
    )
}

/// Builds the event of a log, with ERC-20 `Transfer` and `Approval` decoded. `block_timestamp` is the
/// time of the log's block in seconds.
pub fn log_event(log: &RawLog, block_timestamp: u64, now_ms: i64) -> Event {
    let status = if log.removed {
        ChainStatus::Removed
    } else {
        ChainStatus::New
    };
    event(
        block_timestamp as i64 * 1000,
        now_ms,
        EventKind::Log(Log {
            address: log.address.clone(),
            topics: log.topics.clone(),
            data: log.data.clone(),
            block_number: log.block_number,
            tx_hash: log.tx_hash.clone(),
            log_index: log.log_index,
            removed: log.removed,
            decoded: decode_erc20(&log.topics, &log.data),
            block_hash: Some(log.block_hash.clone()),
            status,
        }),
    )
}

fn event(source_time_ms: i64, ingest_time_ms: i64, kind: EventKind) -> Event {
    Event {
        source_time_ms,
        ingest_time_ms,
        target: None,
        kind,
        snapshot: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evm::abi::TRANSFER_TOPIC;

    fn quote() -> Quote {
        Quote {
            usd: 2_000.0,
            source: "setting NATIVE_PRICE_USD_ETH".into(),
        }
    }

    #[test]
    fn mined_transaction_is_priced_at_block_time() {
        let tx = RawTransaction {
            hash: "0xcf08".into(),
            from: "0xa".into(),
            to: Some("0xb".into()),
            value_wei: 32_000_000_000_000_000_000,
            block_number: Some(17_173_050),
        };

        let event = transaction_event(&tx, Some(17_173_050), &quote(), 1_683_030_011_000, 5);

        assert_eq!(event.source_time_ms, 1_683_030_011_000);
        let EventKind::Transaction(tx) = event.kind else {
            panic!("expected a transaction");
        };
        assert_eq!(tx.value_native, 32.0);
        assert_eq!(tx.value_usd, Some(64_000.0));
        assert!(!tx.pending);
        assert_eq!(
            tx.price_source.as_deref(),
            Some("setting NATIVE_PRICE_USD_ETH")
        );
    }

    #[test]
    fn transfer_log_is_decoded() {
        let log = RawLog {
            address: "0xdac17f958d2ee523a2206206994597c13d831ec7".into(),
            topics: vec![
                TRANSFER_TOPIC.into(),
                format!("0x{:0>64}", "a1"),
                format!("0x{:0>64}", "b2"),
            ],
            data: format!("0x{:0>64}", "64"),
            block_number: 10,
            block_hash: "0xb10".into(),
            tx_hash: "0xt".into(),
            log_index: 4,
            removed: false,
            block_timestamp: None,
        };

        let event = log_event(&log, 1_683_029_999, 7);

        assert_eq!(event.source_time_ms, 1_683_029_999_000);
        let EventKind::Log(log) = event.kind else {
            panic!("expected a log");
        };
        let decoded = log.decoded.unwrap();
        assert_eq!(decoded.amount, "100");
        assert_eq!(decoded.to, format!("0x{:0>40}", "b2"));
        assert_eq!(log.status, ChainStatus::New);
    }

    #[test]
    fn block_event_carries_interval() {
        let header = Header {
            number: 17_173_050,
            hash: "0x56".into(),
            parent_hash: "0xaa".into(),
            timestamp: 1_683_030_011,
        };

        let event = block_event(&header, Some(12.0), 0);

        assert!(matches!(event.kind, EventKind::Block(ref b) if b.interval_sec == Some(12.0)));
    }
}
