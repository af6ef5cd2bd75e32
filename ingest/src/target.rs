//! The targets of one batch and their per-target state.
//!
//! Consumes parsed feed data ([`PriceData`], [`TradeData`]) and produces [`Event`]s that carry
//! the target's [`TokenSnapshot`]: the last candle close, the market cap from the target spec,
//! and the figures of every window length the task's rules use. State per target is a plain
//! struct (windows and a seen flag) inside the batch runner, so thousands of targets cost no
//! task or timer each. This module is pure.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use monitor_core::messages::{
    Event, EventKind, Holders, Price, Side, TargetRef, TargetSpec, TokenSnapshot, Trade,
};

use crate::birdeye::{address_key, Channel, PriceData, TradeData};
use crate::history::Repeats;
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
    /// Already in the stored events read back: published and judged before, so dropped.
    Repeat,
}

/// Result of one stored event read back into the windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restored {
    /// Added to at least one window.
    Added,
    /// A trade or candle already counted, from the live feed or from an earlier stored copy.
    Repeat,
    /// Older than every window of the target.
    TooOld,
    /// Not an observation of a target of this batch.
    NotOurs,
}

/// The targets of a batch, looked up by address.
#[derive(Debug, Default)]
pub struct Targets {
    states: Vec<TargetState>,
    index: HashMap<String, usize>,
    /// Addresses listed more than once in the batch; only the first entry is used.
    duplicates: Vec<String>,
    /// Trades and candles seen while stored copies may still come, so that none counts twice.
    repeats: Option<Repeats>,
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
        next.repeats = self.repeats.take();
        *self = next;
    }

    /// Turns a candle into a `Price` event, or [`Outcome::Repeat`] for a candle that the stored
    /// events read back already carry.
    pub fn on_price(&mut self, price: &PriceData, ingest_time_ms: i64) -> Outcome {
        let Some(&position) = self.index.get(&*address_key(&price.address)) else {
            return Outcome::Unknown;
        };
        // The candle volume is in token units; it is not converted to USD here.
        let candle = Price {
            open: price.open,
            high: price.high,
            low: price.low,
            close: price.close,
            volume_usd: None,
        };
        if self.compares(Channel::Prices) {
            let key = candle_key(&self.states[position].spec.address, price.time_ms, &candle);
            if self.is_live_repeat(Channel::Prices, key, price.time_ms) {
                return Outcome::Repeat;
            }
        }
        let observation = Observation::Price {
            open: price.open,
            high: price.high,
            low: price.low,
            close: price.close,
        };
        let kind = EventKind::Price(candle);
        self.observe_at(
            position,
            price.time_ms,
            ingest_time_ms,
            Some(observation),
            kind,
        )
    }

    /// Turns a trade into a `Trade` event, or [`Outcome::Repeat`] for a trade that the stored
    /// events read back already carry.
    pub fn on_trade(&mut self, trade: &TradeData, ingest_time_ms: i64) -> Outcome {
        let Some(&position) = self.index.get(&*address_key(&trade.address)) else {
            return Outcome::Unknown;
        };
        let event = Trade {
            side: trade.side,
            volume_usd: trade.volume_usd,
            price_usd: trade.price_usd,
            tx_hash: trade.tx_hash.clone(),
            owner: trade.owner.clone(),
        };
        if self.compares(Channel::Trades) {
            let key = trade_key(&self.states[position].spec.address, trade.time_ms, &event);
            if self.is_live_repeat(Channel::Trades, key, trade.time_ms) {
                return Outcome::Repeat;
            }
        }
        let observation = Observation::Trade {
            side: trade.side,
            volume_usd: trade.volume_usd,
        };
        let kind = EventKind::Trade(event);
        self.observe_at(
            position,
            trade.time_ms,
            ingest_time_ms,
            Some(observation),
            kind,
        )
    }

    /// Returns whether live observations of `channel` are compared with stored ones, so that
    /// the feed's hot path computes no key otherwise.
    fn compares(&self, channel: Channel) -> bool {
        self.repeats
            .as_ref()
            .is_some_and(|repeats| repeats.compares(channel))
    }

    /// Records a live observation while stored copies may come, and returns whether one came.
    /// Drops the records once no copy can come any more.
    fn is_live_repeat(&mut self, channel: Channel, key: u64, time_ms: i64) -> bool {
        let Some(repeats) = &mut self.repeats else {
            return false;
        };
        let repeat = repeats.live(channel, key, time_ms);
        if repeats.is_done() {
            self.repeats = None;
        }
        repeat
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

    /// Starts comparing live and stored observations: stored events will be read back.
    pub fn start_history(&mut self) {
        self.repeats = Some(Repeats::default());
    }

    /// Marks the end of the stored events. Live observations are still compared until the
    /// feed has moved past the newest stored one of their channel.
    pub fn end_history(&mut self) {
        if let Some(repeats) = &mut self.repeats {
            repeats.end_history();
            if repeats.is_done() {
                self.repeats = None;
            }
        }
    }

    /// Adds the observation of a stored event to its target's windows, without producing an
    /// event. A trade or candle counts once however often it was stored or received live,
    /// from [`Targets::start_history`] to the end of comparing.
    pub fn restore(&mut self, event: &Event) -> Restored {
        let mut repeats = self.repeats.take();
        let restored = self.restore_with(event, None, repeats.as_mut());
        self.repeats = repeats;
        restored
    }

    /// Adds the observation of a stored event to its target's windows of `lengths` only, which
    /// a config change added after the event was counted live. `seen` keeps the stored
    /// observations of this read, so that one stored twice counts once.
    pub fn restore_into(&mut self, event: &Event, lengths: &[u32], seen: &mut Repeats) -> Restored {
        self.restore_with(event, Some(lengths), Some(seen))
    }

    fn restore_with(
        &mut self,
        event: &Event,
        lengths: Option<&[u32]>,
        seen: Option<&mut Repeats>,
    ) -> Restored {
        let Some(StoredObservation {
            position,
            observation,
            key,
        }) = self.stored_observation(event)
        else {
            return Restored::NotOurs;
        };
        if let (Some((channel, key)), Some(seen)) = (key, seen) {
            if seen.stored(channel, key, event.source_time_ms) {
                return Restored::Repeat;
            }
        }
        let windows = &mut self.states[position].windows;
        if windows
            .observe_in(lengths, event.source_time_ms, observation)
            .is_dropped()
        {
            Restored::TooOld
        } else {
            Restored::Added
        }
    }

    /// Returns what a stored event observed of which target; `None` when it is no observation
    /// of a target of this batch.
    fn stored_observation(&self, event: &Event) -> Option<StoredObservation> {
        let target = event.target.as_ref()?;
        let &position = self.index.get(&*address_key(&target.address))?;
        let target_address = &self.states[position].spec.address;
        let time_ms = event.source_time_ms;
        let (observation, key) = match &event.kind {
            EventKind::Trade(trade) => (
                Observation::Trade {
                    side: trade.side,
                    volume_usd: trade.volume_usd,
                },
                Some((Channel::Trades, trade_key(target_address, time_ms, trade))),
            ),
            EventKind::Price(candle) => (
                Observation::Price {
                    open: candle.open,
                    high: candle.high,
                    low: candle.low,
                    close: candle.close,
                },
                Some((Channel::Prices, candle_key(target_address, time_ms, candle))),
            ),
            // Holder counts come from polls, and one seen twice leaves the figures as they are.
            EventKind::Holders(Holders {
                holders: Some(holders),
                ..
            }) => (Observation::Holders { holders: *holders }, None),
            _ => return None,
        };
        Some(StoredObservation {
            position,
            observation,
            key,
        })
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

/// Observation read from a stored event, with the position of its target.
struct StoredObservation {
    /// Position of the target in the batch.
    position: usize,
    observation: Observation,
    /// Channel and identity of a trade or candle; holder counts have none.
    key: Option<(Channel, u64)>,
}

/// Returns the identity of a trade across reports: a hash of its target, source time, side,
/// amount, transaction and wallet.
fn trade_key(target: &str, time_ms: i64, trade: &Trade) -> u64 {
    let mut hasher = DefaultHasher::new();
    target.hash(&mut hasher);
    time_ms.hash(&mut hasher);
    matches!(trade.side, Side::Buy).hash(&mut hasher);
    trade.volume_usd.to_bits().hash(&mut hasher);
    trade.tx_hash.hash(&mut hasher);
    trade.owner.hash(&mut hasher);
    hasher.finish()
}

/// Returns the identity of a candle across reports: a hash of its target, source time and
/// prices.
fn candle_key(target: &str, time_ms: i64, candle: &Price) -> u64 {
    let mut hasher = DefaultHasher::new();
    target.hash(&mut hasher);
    time_ms.hash(&mut hasher);
    for price in [candle.open, candle.high, candle.low, candle.close] {
        price.to_bits().hash(&mut hasher);
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use monitor_core::messages::{Side, WindowStats};

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

    /// Returns the events an earlier runner of the same targets published for `trades`.
    fn stored(trades: &[TradeData]) -> Vec<Event> {
        let mut earlier = Targets::new(&[spec(1, WETH, None), spec(2, PEPE, None)], &[300]);
        trades
            .iter()
            .map(|t| event(earlier.on_trade(t, t.time_ms)))
            .collect()
    }

    fn w300(outcome: Outcome) -> WindowStats {
        event(outcome)
            .snapshot
            .unwrap()
            .window(300)
            .unwrap()
            .clone()
    }

    #[test]
    fn restored_trades_fill_later_windows() {
        let mut targets = Targets::new(&[spec(1, WETH, None)], &[300]);
        targets.start_history();
        let history = stored(&[
            trade(WETH, T0, Side::Buy, 100.0),
            trade(PEPE, T0 + 500, Side::Buy, 7.0),
            trade(WETH, T0 + 1_000, Side::Sell, 40.0),
        ]);
        let restored: Vec<Restored> = history.iter().map(|e| targets.restore(e)).collect();
        assert_eq!(
            restored,
            vec![Restored::Added, Restored::NotOurs, Restored::Added]
        );
        assert_eq!(targets.progress(), 0.0, "stored events are not live data");

        let mut live = trade(WETH, T0 + 2_000, Side::Buy, 10.0);
        live.tx_hash = Some("0xdef".into());
        let window = w300(targets.on_trade(&live, T0 + 2_000));
        assert_eq!(window.trades, 3);
        assert_eq!(window.volume_usd, 150.0);
        assert_eq!(window.buy_usd, 110.0);
        assert_eq!(targets.progress(), 100.0);
    }

    #[test]
    fn trade_stored_and_live_counts_once() {
        let mut targets = Targets::new(&[spec(1, WETH, None)], &[300]);
        targets.start_history();
        let first = trade(WETH, T0, Side::Buy, 100.0);
        let mut second = trade(WETH, T0 + 1_000, Side::Buy, 30.0);
        second.tx_hash = Some("0xdef".into());
        let history = stored(&[first.clone(), second.clone()]);

        // Stored first, then live: the live copy was published before, so it is dropped.
        assert_eq!(targets.restore(&history[0]), Restored::Added);
        assert_eq!(targets.on_trade(&first, T0 + 5), Outcome::Repeat);

        // Live first, then stored (twice, as two runners stored it).
        let window = w300(targets.on_trade(&second, T0 + 1_005));
        assert_eq!((window.trades, window.volume_usd), (2, 130.0));
        assert_eq!(targets.restore(&history[1]), Restored::Repeat);
        assert_eq!(targets.restore(&history[1]), Restored::Repeat);
    }

    #[test]
    fn repeats_end_once_feed_passes_history() {
        let mut targets = Targets::new(&[spec(1, WETH, None)], &[300]);
        targets.start_history();
        let first = trade(WETH, T0, Side::Buy, 100.0);
        assert_eq!(
            targets.restore(&stored(std::slice::from_ref(&first))[0]),
            Restored::Added
        );
        targets.end_history();

        // A feed that sends the stored trade again after the history ended.
        assert_eq!(targets.on_trade(&first, T0 + 5), Outcome::Repeat);
        let mut newer = trade(WETH, T0 + 1, Side::Sell, 20.0);
        newer.tx_hash = Some("0xdef".into());
        let window = w300(targets.on_trade(&newer, T0 + 6));
        assert_eq!((window.trades, window.volume_usd), (2, 120.0));

        // Past the newest stored trade, nothing is compared any more.
        let window = w300(targets.on_trade(&first, T0 + 7));
        assert_eq!(window.trades, 3);
    }

    #[test]
    fn candle_stored_and_live_goes_out_once() {
        let mut targets = Targets::new(&[spec(1, WETH, None)], &[300]);
        let mut earlier = Targets::new(&[spec(1, WETH, None)], &[300]);
        let bar = candle(WETH, T0, 1600.0, 1610.0);
        targets.start_history();
        assert_eq!(
            targets.restore(&event(earlier.on_price(&bar, T0))),
            Restored::Added
        );
        assert_eq!(targets.on_price(&bar, T0 + 5), Outcome::Repeat);
        let next = candle(WETH, T0 + 60_000, 1610.0, 1620.0);
        assert!(matches!(
            targets.on_price(&next, T0 + 60_005),
            Outcome::Event(_)
        ));
    }

    #[test]
    fn restored_candles_set_window_start() {
        let mut targets = Targets::new(&[spec(1, WETH, None)], &[300]);
        let mut earlier = Targets::new(&[spec(1, WETH, None)], &[300]);
        let candle_event = event(earlier.on_price(&candle(WETH, T0, 1600.0, 1610.0), T0));
        let holders_event = event(earlier.on_holders(&holder_poll(WETH, T0, 900), T0));
        assert_eq!(targets.restore(&candle_event), Restored::Added);
        assert_eq!(targets.restore(&holders_event), Restored::Added);

        let live = targets.on_price(&candle(WETH, T0 + 60_000, 1650.0, 1660.0), T0 + 60_000);
        let window = w300(live);
        assert_eq!(window.start_price, Some(1600.0));
        assert_eq!(window.high, Some(1660.0));
        let window = w300(targets.on_holders(&holder_poll(WETH, T0 + 60_000, 950), T0));
        assert_eq!(window.start_holders, Some(900));
    }

    #[test]
    fn restore_fills_only_the_given_lengths() {
        let mut targets = Targets::new(&[spec(1, WETH, None)], &[60, 300]);
        let history = stored(&[trade(WETH, T0, Side::Buy, 100.0)]);
        let mut seen = Repeats::default();
        assert_eq!(
            targets.restore_into(&history[0], &[300], &mut seen),
            Restored::Added
        );
        assert_eq!(
            targets.restore_into(&history[0], &[300], &mut seen),
            Restored::Repeat,
            "the same trade stored twice"
        );

        let mut live = trade(WETH, T0 + 1_000, Side::Buy, 10.0);
        live.tx_hash = Some("0xdef".into());
        let snapshot = event(targets.on_trade(&live, T0 + 1_000)).snapshot.unwrap();
        assert_eq!(snapshot.window(60).unwrap().volume_usd, 10.0);
        assert_eq!(snapshot.window(300).unwrap().volume_usd, 110.0);
    }

    #[test]
    fn new_window_restores_live_trades() {
        let mut targets = Targets::new(&[spec(1, WETH, None)], &[60]);
        targets.start_history();
        let counted = trade(WETH, T0, Side::Buy, 100.0);
        targets.on_trade(&counted, T0);
        targets.set_window_lengths(&[60, 300]);

        // The start read compares with live trades; the read for the new window does not.
        let history = stored(std::slice::from_ref(&counted));
        let mut seen = Repeats::default();
        assert_eq!(
            targets.restore_into(&history[0], &[300], &mut seen),
            Restored::Added
        );
        let mut live = trade(WETH, T0 + 1_000, Side::Buy, 10.0);
        live.tx_hash = Some("0xdef".into());
        let snapshot = event(targets.on_trade(&live, T0 + 1_000)).snapshot.unwrap();
        assert_eq!(snapshot.window(60).unwrap().volume_usd, 110.0);
        assert_eq!(snapshot.window(300).unwrap().volume_usd, 110.0);
    }
}
