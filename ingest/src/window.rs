//! Rolling windows of one target, keyed on source time.
//!
//! Consumes trade and price observations of one target, each with its source time in
//! milliseconds, and produces one [`WindowStats`] per window length that the task's rules use.
//! This module is pure: no clock, no I/O.
//!
//! Semantics, for a window of `W` seconds:
//! - Bucket width `b = ceil(W / 64)` seconds (at least 1). A time `t` (ms) falls in bucket
//!   index `floor(t / 1000 / b)`. The window ending at `t` covers the `n = ceil(W / b)` bucket
//!   indices `idx(t) - n + 1 ..= idx(t)`, so a window never keeps more than 64 buckets.
//! - Trades and prices come over separate feed connections, so each channel keeps its own
//!   newest source time per target, and each channel's figures are computed over the window
//!   ending at that channel's newest time. Trades feed `volume_usd`, `buy_usd`, `sell_usd` and
//!   `trades`; prices feed `start_price`, `high`, `low` and `start_time_ms`. The figures of a
//!   channel therefore depend only on the order of that channel's own observations.
//! - An observation older than the window (its bucket is before the first covered bucket of
//!   the window ending at the channel's newest time) is not placed in that window and is
//!   counted as too old. A late observation inside the window is placed in its own bucket.
//!   For a late observation the figures are those of the window ending at the channel's
//!   newest time, which includes the late observation. The window ending at the late time
//!   itself could need buckets that have already been recycled, so it is not computed.
//! - `start_price` is the candle `open` of the earliest price observation in the covered
//!   buckets (earliest by source time, then by arrival), `start_time_ms` its source time;
//!   `high` and `low` are the maximum candle `high` and minimum candle `low` over the covered
//!   buckets.
//! - Holder counts are a third channel with its own newest time: `start_holders` is the count
//!   of the earliest holder observation (by source time, then arrival) in the buckets covered
//!   by the window ending at the newest holder observation.
//! - Each ring is allocated on the first observation of its channel, so a target without
//!   holder polls, for example, costs nothing for holders.

use std::cell::Cell;

use monitor_core::messages::{Side, WindowStats};

/// Maximum number of buckets that one window keeps.
pub const MAX_BUCKETS: u32 = 64;

/// Bucket width and count of one window length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub window_sec: u32,
    /// Width of one bucket, in seconds.
    pub bucket_sec: u32,
    /// Number of buckets a window covers.
    pub buckets: u32,
}

impl Geometry {
    pub fn new(window_sec: u32) -> Self {
        let window_sec = window_sec.max(1);
        let bucket_sec = window_sec.div_ceil(MAX_BUCKETS).max(1);
        Geometry {
            window_sec,
            bucket_sec,
            buckets: window_sec.div_ceil(bucket_sec),
        }
    }

    /// Bucket index of a source time in milliseconds.
    pub fn index(&self, time_ms: i64) -> i64 {
        time_ms.div_euclid(1000 * i64::from(self.bucket_sec))
    }

    /// Offset of `time_ms` from the start of its bucket `index`, in milliseconds.
    fn offset_ms(&self, index: i64, time_ms: i64) -> u32 {
        let offset = time_ms - index * 1000 * i64::from(self.bucket_sec);
        u32::try_from(offset).unwrap_or(u32::MAX)
    }

    /// Source time of an offset in bucket `index`, in milliseconds.
    fn time_ms(&self, index: i64, offset_ms: u32) -> i64 {
        index * 1000 * i64::from(self.bucket_sec) + i64::from(offset_ms)
    }

    /// First bucket index covered by the window ending at `newest_ms`.
    pub fn first_covered(&self, newest_ms: i64) -> i64 {
        self.index(newest_ms) - i64::from(self.buckets) + 1
    }
}

/// One observation of a target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Observation {
    Trade {
        side: Side,
        volume_usd: f64,
    },
    Price {
        open: f64,
        high: f64,
        low: f64,
        close: f64,
    },
    Holders {
        holders: u64,
    },
}

/// Outcome of one observation: the number of windows that took it and of those that found it
/// too old.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Placement {
    pub placed: usize,
    pub too_old: usize,
}

impl Placement {
    /// Whether the observation was too old for every window, so it should be dropped.
    pub fn is_dropped(&self) -> bool {
        self.placed == 0 && self.too_old > 0
    }
}

/// Tag of an unused slot. Tags are the low 32 bits of a bucket index, which tell apart the
/// indices that can share a slot (they differ by less than a window). The first index with
/// all 32 low bits set is after the year 2106 for every bucket width.
const EMPTY_TAG: u32 = u32::MAX;

fn tag_of(index: i64) -> u32 {
    // Truncation is the point: see `EMPTY_TAG`.
    index as u32
}

/// A bucket tagged with the bucket index it holds.
trait Tagged: Copy {
    const EMPTY: Self;
    fn tag(&self) -> u32;
}

/// Trade sums of one bucket; the volume is `buy_usd + sell_usd`. Buckets are kept small
/// (24 bytes) because 10,000 targets with one 300 s window hold 600,000 of them.
#[derive(Debug, Clone, Copy)]
struct TradeBucket {
    tag: u32,
    trades: u32,
    buy_usd: f64,
    sell_usd: f64,
}

/// Price extremes of one bucket and its earliest candle, whose time is kept as an offset
/// from the bucket's start (a bucket is at most `ceil(MAX_WINDOW_SEC / 64)` seconds wide).
#[derive(Debug, Clone, Copy)]
struct PriceBucket {
    tag: u32,
    first_offset_ms: u32,
    first_open: f64,
    high: f64,
    low: f64,
}

#[derive(Debug, Clone, Copy)]
struct HolderBucket {
    tag: u32,
    first_offset_ms: u32,
    first_holders: u64,
}

impl Tagged for TradeBucket {
    const EMPTY: Self = TradeBucket {
        tag: EMPTY_TAG,
        trades: 0,
        buy_usd: 0.0,
        sell_usd: 0.0,
    };

    fn tag(&self) -> u32 {
        self.tag
    }
}

impl Tagged for PriceBucket {
    const EMPTY: Self = PriceBucket {
        tag: EMPTY_TAG,
        first_offset_ms: 0,
        first_open: 0.0,
        high: 0.0,
        low: 0.0,
    };

    fn tag(&self) -> u32 {
        self.tag
    }
}

impl Tagged for HolderBucket {
    const EMPTY: Self = HolderBucket {
        tag: EMPTY_TAG,
        first_offset_ms: 0,
        first_holders: 0,
    };

    fn tag(&self) -> u32 {
        self.tag
    }
}

/// Buckets of one window length, stored in rings indexed by `bucket index mod buckets`: one
/// ring per channel (trades, prices, holders), each allocated on the channel's first
/// observation. Each slot is tagged with the bucket index it holds, so a slot left over from
/// an older index reads as empty without being cleared.
#[derive(Debug, Clone)]
struct Window {
    geometry: Geometry,
    trades: Vec<TradeBucket>,
    prices: Vec<PriceBucket>,
    holders: Vec<HolderBucket>,
    /// Trade figures of the covered buckets before the newest one, see [`Prefix`].
    trade_prefix: Cell<Option<Prefix<TradeFigures>>>,
    /// Price figures of the covered buckets before the newest one, see [`Prefix`].
    price_prefix: Cell<Option<Prefix<PriceFigures>>>,
}

/// Figures of the covered buckets before bucket `last`, the newest of the window, kept from
/// one call of [`Window::stats`] to the next. While observations land in bucket `last`, the
/// figures of a window of 64 buckets cost one bucket instead of 64. A window that moves on
/// (a newer `last`) computes them again, and an observation placed in an older bucket clears
/// them. Adding the newest bucket to the kept figures performs the same operations in the same
/// order as summing every bucket, so the floating-point results are identical.
#[derive(Debug, Clone, Copy)]
struct Prefix<F> {
    last: i64,
    figures: F,
}

/// Figures of one channel, added up bucket by bucket from the oldest covered bucket.
trait Figures: Copy + Default {
    type Bucket: Tagged;

    /// Adds bucket `index` of a window with `geometry`.
    fn add(&mut self, geometry: &Geometry, index: i64, bucket: &Self::Bucket);
}

/// Trade figures summed over buckets, oldest first.
#[derive(Debug, Clone, Copy, Default)]
struct TradeFigures {
    volume_usd: f64,
    buy_usd: f64,
    sell_usd: f64,
    trades: u32,
}

impl Figures for TradeFigures {
    type Bucket = TradeBucket;

    fn add(&mut self, _geometry: &Geometry, _index: i64, bucket: &TradeBucket) {
        self.volume_usd += bucket.buy_usd + bucket.sell_usd;
        self.buy_usd += bucket.buy_usd;
        self.sell_usd += bucket.sell_usd;
        self.trades += bucket.trades;
    }
}

/// Price figures merged over buckets, oldest first, so the first bucket gives the start.
#[derive(Debug, Clone, Copy, Default)]
struct PriceFigures {
    start_time_ms: Option<i64>,
    start_price: Option<f64>,
    high: Option<f64>,
    low: Option<f64>,
}

impl Figures for PriceFigures {
    type Bucket = PriceBucket;

    fn add(&mut self, geometry: &Geometry, index: i64, bucket: &PriceBucket) {
        if self.start_time_ms.is_none() {
            self.start_time_ms = Some(geometry.time_ms(index, bucket.first_offset_ms));
            self.start_price = Some(bucket.first_open);
        }
        self.high = Some(self.high.map_or(bucket.high, |h| h.max(bucket.high)));
        self.low = Some(self.low.map_or(bucket.low, |l| l.min(bucket.low)));
    }
}

/// Returns the ring, allocating its slots on first use.
fn ring<T: Tagged>(ring: &mut Vec<T>, slots: usize) -> &mut Vec<T> {
    if ring.is_empty() {
        *ring = vec![T::EMPTY; slots];
    }
    ring
}

impl Window {
    fn new(window_sec: u32) -> Self {
        Window {
            geometry: Geometry::new(window_sec),
            trades: Vec::new(),
            prices: Vec::new(),
            holders: Vec::new(),
            trade_prefix: Cell::new(None),
            price_prefix: Cell::new(None),
        }
    }

    fn slots(&self) -> usize {
        self.geometry.buckets as usize
    }

    /// Returns whether the window has one of `lengths`; any window does when there are none.
    fn is_one_of(&self, lengths: Option<&[u32]>) -> bool {
        lengths.is_none_or(|lengths| lengths.contains(&self.geometry.window_sec))
    }

    fn slot(&self, index: i64) -> usize {
        index.rem_euclid(i64::from(self.geometry.buckets)) as usize
    }

    /// Places a trade in its bucket; `false` when it is older than the window ending at
    /// `newest_ms`.
    fn add_trade(&mut self, time_ms: i64, newest_ms: i64, side: Side, volume_usd: f64) -> bool {
        let index = self.geometry.index(time_ms);
        if index < self.geometry.first_covered(newest_ms) {
            return false;
        }
        let slot = self.slot(index);
        let slots = self.slots();
        let bucket = &mut ring(&mut self.trades, slots)[slot];
        if bucket.tag != tag_of(index) {
            *bucket = TradeBucket {
                tag: tag_of(index),
                ..TradeBucket::EMPTY
            };
        }
        match side {
            Side::Buy => bucket.buy_usd += volume_usd,
            Side::Sell => bucket.sell_usd += volume_usd,
        }
        bucket.trades += 1;
        clear_if_before(&self.trade_prefix, index);
        true
    }

    /// Places a price candle in its bucket; `false` when it is older than the window ending at
    /// `newest_ms`.
    fn add_price(&mut self, time_ms: i64, newest_ms: i64, open: f64, high: f64, low: f64) -> bool {
        let index = self.geometry.index(time_ms);
        if index < self.geometry.first_covered(newest_ms) {
            return false;
        }
        let slot = self.slot(index);
        let slots = self.slots();
        let offset_ms = self.geometry.offset_ms(index, time_ms);
        let bucket = &mut ring(&mut self.prices, slots)[slot];
        if bucket.tag == tag_of(index) {
            // Strictly earlier only: at equal times the first arrival stays the start.
            if offset_ms < bucket.first_offset_ms {
                bucket.first_offset_ms = offset_ms;
                bucket.first_open = open;
            }
            bucket.high = bucket.high.max(high);
            bucket.low = bucket.low.min(low);
        } else {
            *bucket = PriceBucket {
                tag: tag_of(index),
                first_offset_ms: offset_ms,
                first_open: open,
                high,
                low,
            };
        }
        clear_if_before(&self.price_prefix, index);
        true
    }

    /// Places a holder count in its bucket; `false` when it is older than the window ending
    /// at `newest_ms`.
    fn add_holders(&mut self, time_ms: i64, newest_ms: i64, holders: u64) -> bool {
        let index = self.geometry.index(time_ms);
        if index < self.geometry.first_covered(newest_ms) {
            return false;
        }
        let slot = self.slot(index);
        let slots = self.slots();
        let offset_ms = self.geometry.offset_ms(index, time_ms);
        let bucket = &mut ring(&mut self.holders, slots)[slot];
        if bucket.tag == tag_of(index) {
            // Strictly earlier only: at equal times the first arrival stays the start.
            if offset_ms < bucket.first_offset_ms {
                bucket.first_offset_ms = offset_ms;
                bucket.first_holders = holders;
            }
        } else {
            *bucket = HolderBucket {
                tag: tag_of(index),
                first_offset_ms: offset_ms,
                first_holders: holders,
            };
        }
        true
    }

    /// Returns the buckets of the window ending at `newest_ms` in `ring`, from oldest to
    /// newest index, with their indices. Slots tagged with another index are skipped. The
    /// slot follows the index with a wrapping cursor, because a `rem_euclid` per index was
    /// most of the cost of [`Window::stats`].
    fn covered<'r, T: Tagged>(
        &self,
        ring: &'r [T],
        newest_ms: i64,
    ) -> impl Iterator<Item = (i64, T)> + 'r {
        let first = self.geometry.first_covered(newest_ms);
        self.buckets_between(ring, first, self.geometry.index(newest_ms))
    }

    /// Returns the buckets of indices `first..=last` in `ring`, as [`Window::covered`] does.
    fn buckets_between<'r, T: Tagged>(
        &self,
        ring: &'r [T],
        first: i64,
        last: i64,
    ) -> impl Iterator<Item = (i64, T)> + 'r {
        // An empty ring (a channel never observed) has no slot to start from.
        let mut slot = if ring.is_empty() { 0 } else { self.slot(first) };
        // `take(0)` gives no index at all for an empty ring.
        let count = if ring.is_empty() { 0 } else { usize::MAX };
        (first..=last).take(count).filter_map(move |index| {
            let bucket = ring[slot];
            slot += 1;
            if slot == ring.len() {
                slot = 0;
            }
            (bucket.tag() == tag_of(index)).then_some((index, bucket))
        })
    }

    /// Returns the figures of the window ending at bucket `last` in `ring`. The figures of the
    /// buckets before `last` come from `prefix`, which is computed again unless it ends there.
    fn figures<F: Figures>(
        &self,
        ring: &[F::Bucket],
        prefix: &Cell<Option<Prefix<F>>>,
        last: i64,
    ) -> F {
        let mut figures = match prefix.get().filter(|kept| kept.last == last) {
            Some(kept) => kept.figures,
            None => {
                let first = last - i64::from(self.geometry.buckets) + 1;
                let mut before = F::default();
                for (index, bucket) in self.buckets_between(ring, first, last - 1) {
                    before.add(&self.geometry, index, &bucket);
                }
                prefix.set(Some(Prefix {
                    last,
                    figures: before,
                }));
                before
            }
        };
        for (index, bucket) in self.buckets_between(ring, last, last) {
            figures.add(&self.geometry, index, &bucket);
        }
        figures
    }

    /// Figures of the window: each channel's part ends at that channel's newest time.
    /// Buckets are visited from oldest to newest, so sums are added in a fixed order.
    fn stats(&self, newest: &NewestTimes) -> WindowStats {
        let mut stats = WindowStats {
            window_sec: self.geometry.window_sec,
            ..WindowStats::default()
        };
        if let Some(newest) = newest.trade_ms {
            let last = self.geometry.index(newest);
            let figures = self.figures(&self.trades, &self.trade_prefix, last);
            stats.volume_usd = figures.volume_usd;
            stats.buy_usd = figures.buy_usd;
            stats.sell_usd = figures.sell_usd;
            stats.trades = figures.trades;
        }
        if let Some(newest) = newest.price_ms {
            let last = self.geometry.index(newest);
            let figures = self.figures(&self.prices, &self.price_prefix, last);
            stats.start_time_ms = figures.start_time_ms;
            stats.start_price = figures.start_price;
            stats.high = figures.high;
            stats.low = figures.low;
        }
        if let Some(newest) = newest.holders_ms {
            // The first bucket found in index order has the earliest time.
            stats.start_holders = self
                .covered(&self.holders, newest)
                .next()
                .map(|(_, bucket)| bucket.first_holders);
        }
        stats
    }
}

/// Clears the kept figures of a window when a bucket before their newest one changed.
fn clear_if_before<F: Copy>(prefix: &Cell<Option<Prefix<F>>>, index: i64) {
    if prefix.get().is_some_and(|p| index < p.last) {
        prefix.set(None);
    }
}

/// Newest source time of each channel.
#[derive(Debug, Clone, Copy, Default)]
struct NewestTimes {
    trade_ms: Option<i64>,
    price_ms: Option<i64>,
    holders_ms: Option<i64>,
}

fn advance(newest: &mut Option<i64>, time_ms: i64) -> i64 {
    let next = newest.map_or(time_ms, |n| n.max(time_ms));
    *newest = Some(next);
    next
}

/// Every window of one target, plus the newest source time of each channel and the last
/// candle close.
#[derive(Debug, Clone, Default)]
pub struct TargetWindows {
    windows: Vec<Window>,
    newest: NewestTimes,
    /// Source time and close of the newest candle (at equal times, the latest arrival).
    last_close: Option<(i64, f64)>,
}

impl TargetWindows {
    /// Creates empty windows for the given lengths in seconds (duplicates are ignored).
    pub fn new(lengths: &[u32]) -> Self {
        let mut windows = TargetWindows::default();
        windows.set_lengths(lengths);
        windows
    }

    /// Changes the window lengths. Windows of a length that stays keep their buckets; new
    /// lengths start empty, so their figures cover only observations from now on.
    pub fn set_lengths(&mut self, lengths: &[u32]) {
        let mut lengths: Vec<u32> = lengths.iter().map(|l| (*l).max(1)).collect();
        lengths.sort_unstable();
        lengths.dedup();
        let mut old = std::mem::take(&mut self.windows);
        self.windows = lengths
            .into_iter()
            .map(
                |length| match old.iter().position(|w| w.geometry.window_sec == length) {
                    Some(position) => old.swap_remove(position),
                    None => Window::new(length),
                },
            )
            .collect();
    }

    /// Window lengths in seconds, ascending.
    pub fn lengths(&self) -> Vec<u32> {
        self.windows.iter().map(|w| w.geometry.window_sec).collect()
    }

    /// Adds an observation to every window it is recent enough for.
    pub fn observe(&mut self, time_ms: i64, observation: Observation) -> Placement {
        self.observe_in(None, time_ms, observation)
    }

    /// Adds an observation to the windows of the given lengths (all when `None`) that it is
    /// recent enough for.
    pub fn observe_in(
        &mut self,
        lengths: Option<&[u32]>,
        time_ms: i64,
        observation: Observation,
    ) -> Placement {
        let mut placement = Placement::default();
        match observation {
            Observation::Trade { side, volume_usd } => {
                let newest = advance(&mut self.newest.trade_ms, time_ms);
                for window in self.windows.iter_mut().filter(|w| w.is_one_of(lengths)) {
                    count(
                        &mut placement,
                        window.add_trade(time_ms, newest, side, volume_usd),
                    );
                }
            }
            Observation::Price {
                open,
                high,
                low,
                close,
            } => {
                let newest = advance(&mut self.newest.price_ms, time_ms);
                for window in self.windows.iter_mut().filter(|w| w.is_one_of(lengths)) {
                    count(
                        &mut placement,
                        window.add_price(time_ms, newest, open, high, low),
                    );
                }
                if self
                    .last_close
                    .is_none_or(|(last_ms, _)| time_ms >= last_ms)
                {
                    self.last_close = Some((time_ms, close));
                }
            }
            Observation::Holders { holders } => {
                let newest = advance(&mut self.newest.holders_ms, time_ms);
                for window in self.windows.iter_mut().filter(|w| w.is_one_of(lengths)) {
                    count(&mut placement, window.add_holders(time_ms, newest, holders));
                }
            }
        }
        placement
    }

    /// Returns the close of the newest candle seen.
    pub fn price(&self) -> Option<f64> {
        self.last_close.map(|(_, close)| close)
    }

    /// Figures of every window, ascending by length.
    pub fn stats(&self) -> Vec<WindowStats> {
        self.windows.iter().map(|w| w.stats(&self.newest)).collect()
    }
}

fn count(placement: &mut Placement, placed: bool) {
    if placed {
        placement.placed += 1;
    } else {
        placement.too_old += 1;
    }
}

#[cfg(test)]
mod tests;
