//! The targets of one batch and their per-target state.
//!
//! Consumes parsed feed data ([`PriceData`], [`TradeData`]) and produces [`Event`]s that carry
//! the target's [`TokenSnapshot`]: the last candle close, the market cap from the target spec,
//! and the figures of every window length the task's rules use. State per target is a plain
//! struct (windows and a seen flag) inside the batch runner, so thousands of targets cost no
//! task or timer each. This module is pure.

use std::collections::HashMap;

use monitor_core::messages::{
    Event, EventKind, Holders, Price, TargetRef, TargetSpec, TokenSnapshot, Trade,
};

use crate::birdeye::{address_key, PriceData, TradeData};
use crate::holders::HolderSnapshot;
use crate::window::{Observation, Placement, TargetWindows};

/// One watched token.
#[derive(Debug)]
struct TargetState {
    spec: TargetSpec,
    windows: TargetWindows,
    /// Whether any event of the target arrived since the runner started.
    seen: bool,
    /// Figures of the last holder poll, carried in every snapshot after it.
    market: Market,
}

/// Figures that come from the REST API rather than the feed.
#[derive(Debug, Clone, Copy, Default)]
struct Market {
    holders: Option<u64>,
    top_share_pct: Option<f64>,
    liquidity: Option<f64>,
    market_cap: Option<f64>,
}

/// Result of one piece of feed data.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Event(Box<Event>),
    /// The address is not a target of this batch.
    Unknown,
    /// Older than every window of the target: counted and dropped.
    TooOld,
}

/// The targets of a batch, looked up by address.
#[derive(Debug, Default)]
pub struct Targets {
    states: Vec<TargetState>,
    index: HashMap<String, usize>,
    /// Addresses listed more than once in the batch; only the first entry is used.
    duplicates: Vec<String>,
}

impl Targets {
    pub fn new(specs: &[TargetSpec], window_lengths: &[u32]) -> Self {
        let mut targets = Targets::default();
        for spec in specs {
            let key = address_key(&spec.address).into_owned();
            if targets.index.contains_key(&key) {
                targets.duplicates.push(spec.address.clone());
                continue;
            }
            targets.index.insert(key, targets.states.len());
            targets.states.push(TargetState {
                spec: spec.clone(),
                windows: TargetWindows::new(window_lengths),
                seen: false,
                market: Market::default(),
            });
        }
        targets
    }

    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    pub fn duplicates(&self) -> &[String] {
        &self.duplicates
    }

    pub fn is_watched(&self, address: &str) -> bool {
        self.index.contains_key(&*address_key(address))
    }

    /// Addresses in batch order, as the subscriptions list them.
    pub fn addresses(&self) -> Vec<String> {
        self.states.iter().map(|s| s.spec.address.clone()).collect()
    }

    /// Percent of the targets that had at least one event.
    pub fn progress(&self) -> f64 {
        if self.states.is_empty() {
            return 0.0;
        }
        let seen = self.states.iter().filter(|s| s.seen).count();
        seen as f64 * 100.0 / self.states.len() as f64
    }

    /// Changes the window lengths of every target, keeping windows whose length stays.
    pub fn set_window_lengths(&mut self, lengths: &[u32]) {
        for state in &mut self.states {
            state.windows.set_lengths(lengths);
        }
    }

    /// Takes new target specs. Targets whose address stays keep their windows and seen flag;
    /// the caller re-subscribes when [`Targets::addresses`] changed.
    pub fn update_specs(&mut self, specs: &[TargetSpec], window_lengths: &[u32]) {
        let mut old: HashMap<String, TargetState> = std::mem::take(&mut self.states)
            .into_iter()
            .map(|s| (address_key(&s.spec.address).into_owned(), s))
            .collect();
        let mut next = Targets::new(specs, window_lengths);
        for state in &mut next.states {
            if let Some(previous) = old.remove(&*address_key(&state.spec.address)) {
                state.windows = previous.windows;
                state.seen = previous.seen;
                state.market = previous.market;
            }
        }
        *self = next;
    }

    /// Turns a candle into a `Price` event.
    pub fn on_price(&mut self, price: &PriceData, ingest_time_ms: i64) -> Outcome {
        let observation = Observation::Price {
            open: price.open,
            high: price.high,
            low: price.low,
            close: price.close,
        };
        // The candle volume is in token units; it is not converted to USD here.
        let kind = EventKind::Price(Price {
            open: price.open,
            high: price.high,
            low: price.low,
            close: price.close,
            volume_usd: None,
        });
        self.observe(
            &price.address,
            price.time_ms,
            ingest_time_ms,
            observation,
            kind,
        )
    }

    /// Turns a trade into a `Trade` event.
    pub fn on_trade(&mut self, trade: &TradeData, ingest_time_ms: i64) -> Outcome {
        let observation = Observation::Trade {
            side: trade.side,
            volume_usd: trade.volume_usd,
        };
        let kind = EventKind::Trade(Trade {
            side: trade.side,
            volume_usd: trade.volume_usd,
            price_usd: trade.price_usd,
            tx_hash: trade.tx_hash.clone(),
            owner: trade.owner.clone(),
        });
        self.observe(
            &trade.address,
            trade.time_ms,
            ingest_time_ms,
            observation,
            kind,
        )
    }

    /// Turns a holder poll into a `Holders` event; the source time is the poll's time.
    pub fn on_holders(&mut self, snapshot: &HolderSnapshot, ingest_time_ms: i64) -> Outcome {
        let Some(&position) = self.index.get(&*address_key(&snapshot.address)) else {
            return Outcome::Unknown;
        };
        let market = &mut self.states[position].market;
        market.holders = snapshot.holders.or(market.holders);
        market.top_share_pct = snapshot.top_share_pct.or(market.top_share_pct);
        market.liquidity = snapshot.liquidity.or(market.liquidity);
        market.market_cap = snapshot.market_cap.or(market.market_cap);
        let observation = snapshot
            .holders
            .map(|holders| Observation::Holders { holders });
        let kind = EventKind::Holders(Holders {
            holders: snapshot.holders,
            top_share_pct: snapshot.top_share_pct,
            top_n: snapshot.top_n,
        });
        self.observe_at(
            position,
            snapshot.time_ms,
            ingest_time_ms,
            observation,
            kind,
        )
    }

    fn observe(
        &mut self,
        address: &str,
        source_time_ms: i64,
        ingest_time_ms: i64,
        observation: Observation,
        kind: EventKind,
    ) -> Outcome {
        let Some(&position) = self.index.get(&*address_key(address)) else {
            return Outcome::Unknown;
        };
        self.observe_at(
            position,
            source_time_ms,
            ingest_time_ms,
            Some(observation),
            kind,
        )
    }

    fn observe_at(
        &mut self,
        position: usize,
        source_time_ms: i64,
        ingest_time_ms: i64,
        observation: Option<Observation>,
        kind: EventKind,
    ) -> Outcome {
        let state = &mut self.states[position];
        if let Some(observation) = observation {
            let placement: Placement = state.windows.observe(source_time_ms, observation);
            if placement.is_dropped() {
                return Outcome::TooOld;
            }
        }
        state.seen = true;
        Outcome::Event(Box::new(Event {
            source_time_ms,
            ingest_time_ms,
            target: Some(TargetRef {
                target_id: state.spec.target_id,
                address: state.spec.address.clone(),
            }),
            kind,
            snapshot: Some(TokenSnapshot {
                price: state.windows.price(),
                market_cap: state.market.market_cap.or(state.spec.market_cap),
                liquidity: state.market.liquidity,
                holders: state.market.holders,
                top_share_pct: state.market.top_share_pct,
                windows: state.windows.stats(),
            }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use monitor_core::messages::Side;

    use super::*;

    const WETH: &str = "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2";
    const PEPE: &str = "0x6982508145454ce325ddbf47a25d4ec3d2311933";
    const T0: i64 = 1_675_329_600_000;

    fn spec(target_id: u64, address: &str, market_cap: Option<f64>) -> TargetSpec {
        TargetSpec {
            target_id,
            address: address.into(),
            pair_address: None,
            token_name: None,
            token_symbol: None,
            market_cap,
            source: None,
            batch_order: target_id as u32,
        }
    }

    fn trade(address: &str, time_ms: i64, side: Side, volume_usd: f64) -> TradeData {
        TradeData {
            address: address.into(),
            side,
            volume_usd,
            price_usd: Some(1666.8),
            time_ms,
            tx_hash: Some("0xabc".into()),
            owner: None,
        }
    }

    fn candle(address: &str, time_ms: i64, open: f64, close: f64) -> PriceData {
        PriceData {
            address: address.into(),
            open,
            high: open.max(close),
            low: open.min(close),
            close,
            volume_token: Some(1.0),
            time_ms,
        }
    }

    fn event(outcome: Outcome) -> Event {
        match outcome {
            Outcome::Event(event) => *event,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    #[test]
    fn trade_event_carries_snapshot() {
        let mut targets = Targets::new(&[spec(1, WETH, Some(2.0e11))], &[60, 300]);
        targets.on_price(&candle(WETH, T0, 1666.0, 1667.0), T0 + 5);
        targets.on_trade(&trade(WETH, T0 + 1_000, Side::Buy, 100.0), T0 + 1_005);
        let event = event(targets.on_trade(&trade(WETH, T0 + 2_000, Side::Sell, 50.0), T0 + 2_005));

        assert_eq!(event.source_time_ms, T0 + 2_000);
        assert_eq!(event.ingest_time_ms, T0 + 2_005);
        assert_eq!(
            event.target,
            Some(TargetRef {
                target_id: 1,
                address: WETH.into()
            })
        );
        let EventKind::Trade(trade) = &event.kind else {
            panic!("expected a trade, got {:?}", event.kind);
        };
        assert_eq!(trade.side, Side::Sell);
        assert_eq!(trade.volume_usd, 50.0);

        let snapshot = event.snapshot.expect("token events carry a snapshot");
        assert_eq!(snapshot.price, Some(1667.0));
        assert_eq!(snapshot.market_cap, Some(2.0e11));
        assert_eq!(snapshot.windows.len(), 2);
        let w60 = snapshot.window(60).unwrap();
        assert_eq!(w60.volume_usd, 150.0);
        assert_eq!(w60.buy_usd, 100.0);
        assert_eq!(w60.sell_usd, 50.0);
        assert_eq!(w60.trades, 2);
        assert_eq!(w60.start_price, Some(1666.0));
        assert!(snapshot.window(300).is_some());
    }

    #[test]
    fn lookup_ignores_case_of_evm_addresses() {
        let mut targets = Targets::new(&[spec(1, WETH, None)], &[60]);
        let upper = "0xC02AAA39B223FE8D0A0E5C4F27EAD9083C756CC2";
        assert!(targets.is_watched(upper));
        let event = event(targets.on_trade(&trade(upper, T0, Side::Buy, 1.0), T0));
        assert_eq!(
            event.target.unwrap().address,
            WETH,
            "the event names the spec's address"
        );
    }

    #[test]
    fn unknown_address_gives_no_event() {
        let mut targets = Targets::new(&[spec(1, WETH, None)], &[60]);
        assert_eq!(
            targets.on_trade(&trade(PEPE, T0, Side::Buy, 1.0), T0),
            Outcome::Unknown
        );
        assert_eq!(targets.progress(), 0.0);
    }

    #[test]
    fn trade_older_than_every_window_is_dropped() {
        let mut targets = Targets::new(&[spec(1, WETH, None)], &[60]);
        targets.on_trade(&trade(WETH, T0 + 600_000, Side::Buy, 1.0), T0);
        assert_eq!(
            targets.on_trade(&trade(WETH, T0, Side::Buy, 1.0), T0),
            Outcome::TooOld
        );
    }

    #[test]
    fn progress_counts_targets_seen() {
        let mut targets = Targets::new(&[spec(1, WETH, None), spec(2, PEPE, None)], &[60]);
        assert_eq!(targets.progress(), 0.0);
        targets.on_price(&candle(PEPE, T0, 1.0, 1.0), T0);
        assert_eq!(targets.progress(), 50.0);
        targets.on_trade(&trade(WETH, T0, Side::Buy, 1.0), T0);
        assert_eq!(targets.progress(), 100.0);
    }

    #[test]
    fn duplicate_address_is_listed_once() {
        let targets = Targets::new(&[spec(1, WETH, None), spec(2, WETH, None)], &[60]);
        assert_eq!(targets.len(), 1);
        assert_eq!(targets.duplicates(), [WETH.to_owned()]);
        assert_eq!(targets.addresses(), vec![WETH.to_owned()]);
    }

    #[test]
    fn window_length_change_keeps_existing_sums() {
        let mut targets = Targets::new(&[spec(1, WETH, None)], &[60]);
        targets.on_trade(&trade(WETH, T0, Side::Buy, 10.0), T0);
        targets.set_window_lengths(&[60, 900]);
        let event = event(targets.on_trade(&trade(WETH, T0 + 1, Side::Buy, 1.0), T0));
        let snapshot = event.snapshot.unwrap();
        assert_eq!(snapshot.window(60).unwrap().volume_usd, 11.0);
        assert_eq!(snapshot.window(900).unwrap().volume_usd, 1.0);
    }

    fn holder_poll(address: &str, time_ms: i64, holders: u64) -> HolderSnapshot {
        HolderSnapshot {
            address: address.into(),
            holders: Some(holders),
            top_share_pct: Some(42.5),
            top_n: Some(10),
            liquidity: Some(1.0e6),
            market_cap: Some(3.0e9),
            price: Some(1666.0),
            time_ms,
        }
    }

    #[test]
    fn holder_polls_fill_start_holders_and_snapshots() {
        let mut targets = Targets::new(&[spec(1, WETH, Some(1.0))], &[60]);
        targets.on_holders(&holder_poll(WETH, T0, 1000), T0);
        let polled = event_of(&mut targets, T0 + 30_000, 1100);
        let EventKind::Holders(holders) = &polled.kind else {
            panic!("expected holders, got {:?}", polled.kind);
        };
        assert_eq!(holders.holders, Some(1100));
        assert_eq!(holders.top_n, Some(10));
        let snapshot = polled.snapshot.unwrap();
        assert_eq!(snapshot.holders, Some(1100));
        assert_eq!(snapshot.top_share_pct, Some(42.5));
        assert_eq!(
            snapshot.market_cap,
            Some(3.0e9),
            "the polled market cap wins"
        );
        assert_eq!(snapshot.window(60).unwrap().start_holders, Some(1000));

        let later = event_of(&mut targets, T0 + 95_000, 1200);
        assert_eq!(
            later.snapshot.unwrap().window(60).unwrap().start_holders,
            Some(1200),
            "polls older than the window no longer count"
        );
        let trade = event(targets.on_trade(&trade(WETH, T0 + 96_000, Side::Buy, 1.0), T0));
        assert_eq!(
            trade.snapshot.unwrap().holders,
            Some(1200),
            "trades carry the last count"
        );
    }

    fn event_of(targets: &mut Targets, time_ms: i64, holders: u64) -> Event {
        event(targets.on_holders(&holder_poll(WETH, time_ms, holders), time_ms))
    }

    #[test]
    fn spec_update_keeps_state_of_remaining_targets() {
        let mut targets = Targets::new(&[spec(1, WETH, Some(1.0))], &[60]);
        targets.on_trade(&trade(WETH, T0, Side::Buy, 10.0), T0);
        targets.update_specs(&[spec(1, WETH, Some(5.0)), spec(2, PEPE, None)], &[60]);
        assert_eq!(targets.progress(), 50.0);

        let event = event(targets.on_trade(&trade(WETH, T0 + 1, Side::Buy, 1.0), T0));
        let snapshot = event.snapshot.unwrap();
        assert_eq!(snapshot.market_cap, Some(5.0));
        assert_eq!(snapshot.window(60).unwrap().volume_usd, 11.0);
    }
}
