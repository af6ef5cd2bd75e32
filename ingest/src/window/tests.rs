use proptest::prelude::*;

use super::*;

const MINUTE_MS: i64 = 60_000;
const T0: i64 = 1_675_329_600_000;

fn buy(volume_usd: f64) -> Observation {
    Observation::Trade {
        side: Side::Buy,
        volume_usd,
    }
}

fn sell(volume_usd: f64) -> Observation {
    Observation::Trade {
        side: Side::Sell,
        volume_usd,
    }
}

fn candle(open: f64, high: f64, low: f64, close: f64) -> Observation {
    Observation::Price {
        open,
        high,
        low,
        close,
    }
}

#[test]
fn geometry_keeps_at_most_64_buckets() {
    assert_eq!(
        Geometry::new(60),
        Geometry {
            window_sec: 60,
            bucket_sec: 1,
            buckets: 60
        }
    );
    assert_eq!(
        Geometry::new(64),
        Geometry {
            window_sec: 64,
            bucket_sec: 1,
            buckets: 64
        }
    );
    assert_eq!(
        Geometry::new(65),
        Geometry {
            window_sec: 65,
            bucket_sec: 2,
            buckets: 33
        }
    );
    assert_eq!(
        Geometry::new(300),
        Geometry {
            window_sec: 300,
            bucket_sec: 5,
            buckets: 60
        }
    );
    assert_eq!(
        Geometry::new(3600),
        Geometry {
            window_sec: 3600,
            bucket_sec: 57,
            buckets: 64
        }
    );
    assert_eq!(
        Geometry::new(0),
        Geometry {
            window_sec: 1,
            bucket_sec: 1,
            buckets: 1
        }
    );
    for window_sec in 1..=20_000 {
        let g = Geometry::new(window_sec);
        assert!(g.buckets <= MAX_BUCKETS, "{g:?}");
        assert!(g.buckets * g.bucket_sec >= window_sec, "{g:?}");
    }
}

#[test]
fn bucket_index_floors_seconds_by_width() {
    let g = Geometry::new(300);
    assert_eq!(g.index(4_999), 0);
    assert_eq!(g.index(5_000), 1);
    assert_eq!(g.index(-1), -1);
    // 300 s is bucket 60; the window covers the 60 buckets 1..=60.
    assert_eq!(g.first_covered(300_000), 1);
}

#[test]
fn trades_sum_by_side_within_window() {
    let mut windows = TargetWindows::new(&[60]);
    windows.observe(T0, buy(100.0));
    windows.observe(T0 + 1_000, sell(40.0));
    windows.observe(T0 + 2_000, buy(10.0));

    let stats = windows.stats();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].window_sec, 60);
    assert_eq!(stats[0].volume_usd, 150.0);
    assert_eq!(stats[0].buy_usd, 110.0);
    assert_eq!(stats[0].sell_usd, 40.0);
    assert_eq!(stats[0].trades, 3);
    assert_eq!(stats[0].start_price, None);
}

#[test]
fn trades_leave_window_as_time_advances() {
    let mut windows = TargetWindows::new(&[60]);
    windows.observe(T0, buy(100.0));
    windows.observe(T0 + 59_000, buy(1.0));
    assert_eq!(windows.stats()[0].volume_usd, 101.0);

    windows.observe(T0 + 60_000, buy(2.0));
    assert_eq!(windows.stats()[0].volume_usd, 3.0);
    assert_eq!(windows.stats()[0].trades, 2);
}

#[test]
fn too_old_trade_is_counted_and_not_placed() {
    let mut windows = TargetWindows::new(&[60, 300]);
    windows.observe(T0 + 10 * MINUTE_MS, buy(5.0));

    let placement = windows.observe(T0 + 8 * MINUTE_MS, buy(7.0));
    assert_eq!(
        placement,
        Placement {
            placed: 1,
            too_old: 1
        }
    );
    assert!(!placement.is_dropped());
    let stats = windows.stats();
    assert_eq!(stats[0].volume_usd, 5.0, "the 60 s window must not take it");
    assert_eq!(stats[1].volume_usd, 12.0, "the 300 s window must take it");

    let placement = windows.observe(T0, buy(9.0));
    assert_eq!(
        placement,
        Placement {
            placed: 0,
            too_old: 2
        }
    );
    assert!(placement.is_dropped());
    assert_eq!(windows.stats()[1].volume_usd, 12.0);
}

#[test]
fn late_trade_inside_window_is_placed() {
    let mut windows = TargetWindows::new(&[60]);
    windows.observe(T0 + 30_000, buy(1.0));
    let placement = windows.observe(T0 + 5_000, sell(2.0));
    assert_eq!(
        placement,
        Placement {
            placed: 1,
            too_old: 0
        }
    );
    assert_eq!(windows.stats()[0].sell_usd, 2.0);

    // The late trade leaves the window when the newest time passes its own bucket + 60 s.
    windows.observe(T0 + 65_000, buy(4.0));
    assert_eq!(windows.stats()[0].volume_usd, 5.0);
}

#[test]
fn price_start_is_earliest_candle_open() {
    let mut windows = TargetWindows::new(&[300]);
    windows.observe(T0 + MINUTE_MS, candle(10.0, 12.0, 9.0, 11.0));
    windows.observe(T0 + MINUTE_MS, candle(10.5, 13.0, 8.0, 12.5));
    windows.observe(T0, candle(7.0, 7.5, 6.5, 7.2));

    let stats = &windows.stats()[0];
    assert_eq!(stats.start_time_ms, Some(T0));
    assert_eq!(stats.start_price, Some(7.0));
    assert_eq!(stats.high, Some(13.0));
    assert_eq!(stats.low, Some(6.5));
    assert_eq!(
        windows.price(),
        Some(12.5),
        "the late candle must not replace the newer close"
    );
}

#[test]
fn price_start_at_equal_times_is_first_arrival() {
    let mut windows = TargetWindows::new(&[60]);
    windows.observe(T0, candle(10.0, 10.0, 10.0, 10.0));
    windows.observe(T0, candle(11.0, 12.0, 9.0, 11.5));
    let stats = &windows.stats()[0];
    assert_eq!(stats.start_price, Some(10.0));
    assert_eq!(windows.price(), Some(11.5));
}

#[test]
fn channels_keep_separate_newest_times() {
    // A trade far ahead of the candles must not push candles out of the price window.
    let mut windows = TargetWindows::new(&[60]);
    windows.observe(T0, candle(10.0, 11.0, 9.0, 10.5));
    windows.observe(T0 + 5 * MINUTE_MS, buy(3.0));
    let placement = windows.observe(T0 + 30_000, candle(10.0, 12.0, 9.0, 11.0));
    assert_eq!(placement.placed, 1);
    let stats = &windows.stats()[0];
    assert_eq!(stats.start_price, Some(10.0));
    assert_eq!(stats.high, Some(12.0));
    assert_eq!(stats.volume_usd, 3.0);
}

#[test]
fn set_lengths_keeps_buckets_of_unchanged_lengths() {
    let mut windows = TargetWindows::new(&[60, 300]);
    windows.observe(T0, buy(5.0));
    windows.set_lengths(&[900, 300, 300]);
    assert_eq!(windows.lengths(), vec![300, 900]);

    let stats = windows.stats();
    assert_eq!(stats[0].volume_usd, 5.0, "300 s window keeps its trades");
    assert_eq!(stats[1].volume_usd, 0.0, "new 900 s window starts empty");

    windows.observe(T0 + 1_000, buy(1.0));
    let stats = windows.stats();
    assert_eq!(stats[0].volume_usd, 6.0);
    assert_eq!(stats[1].volume_usd, 1.0);
}

#[test]
fn no_windows_means_nothing_is_dropped() {
    let mut windows = TargetWindows::new(&[]);
    windows.observe(T0 + MINUTE_MS, buy(1.0));
    let placement = windows.observe(T0, buy(1.0));
    assert!(!placement.is_dropped());
    assert!(windows.stats().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Brute force: the semantics written out directly over the list of observations.

#[derive(Debug, Clone, Copy)]
struct Arrival {
    time_ms: i64,
    observation: Observation,
}

/// Computes the expected figures of one window length after every arrival, by keeping every
/// accepted observation and summing over the covered bucket range each time.
struct BruteForce {
    window_sec: u32,
    bucket_ms: i64,
    buckets: i64,
    newest_trade_ms: Option<i64>,
    newest_price_ms: Option<i64>,
    newest_holders_ms: Option<i64>,
    accepted: Vec<(usize, Arrival)>,
    too_old: usize,
}

impl BruteForce {
    fn new(window_sec: u32) -> Self {
        let bucket_sec = (i64::from(window_sec) + 63) / 64;
        let bucket_sec = bucket_sec.max(1);
        BruteForce {
            window_sec,
            bucket_ms: bucket_sec * 1000,
            buckets: (i64::from(window_sec) + bucket_sec - 1) / bucket_sec,
            newest_trade_ms: None,
            newest_price_ms: None,
            newest_holders_ms: None,
            accepted: Vec::new(),
            too_old: 0,
        }
    }

    fn index(&self, time_ms: i64) -> i64 {
        (time_ms as f64 / self.bucket_ms as f64).floor() as i64
    }

    fn range(&self, newest_ms: i64) -> std::ops::RangeInclusive<i64> {
        let last = self.index(newest_ms);
        (last - self.buckets + 1)..=last
    }

    fn arrive(&mut self, order: usize, arrival: Arrival) {
        let newest = match arrival.observation {
            Observation::Trade { .. } => &mut self.newest_trade_ms,
            Observation::Price { .. } => &mut self.newest_price_ms,
            Observation::Holders { .. } => &mut self.newest_holders_ms,
        };
        let newest_ms = newest.map_or(arrival.time_ms, |n| n.max(arrival.time_ms));
        *newest = Some(newest_ms);
        if self.range(newest_ms).contains(&self.index(arrival.time_ms)) {
            self.accepted.push((order, arrival));
        } else {
            self.too_old += 1;
        }
    }

    fn expected(&self) -> WindowStats {
        let mut stats = WindowStats {
            window_sec: self.window_sec,
            ..WindowStats::default()
        };
        let mut start: Option<(i64, usize, f64)> = None;
        let mut start_holders: Option<(i64, usize, u64)> = None;
        for (order, arrival) in &self.accepted {
            let index = self.index(arrival.time_ms);
            match arrival.observation {
                Observation::Holders { holders } => {
                    let Some(newest) = self.newest_holders_ms else {
                        continue;
                    };
                    if !self.range(newest).contains(&index) {
                        continue;
                    }
                    if start_holders.is_none_or(|(t, o, _)| (arrival.time_ms, *order) < (t, o)) {
                        start_holders = Some((arrival.time_ms, *order, holders));
                    }
                }
                Observation::Trade { side, volume_usd } => {
                    let Some(newest) = self.newest_trade_ms else {
                        continue;
                    };
                    if !self.range(newest).contains(&index) {
                        continue;
                    }
                    stats.volume_usd += volume_usd;
                    match side {
                        Side::Buy => stats.buy_usd += volume_usd,
                        Side::Sell => stats.sell_usd += volume_usd,
                    }
                    stats.trades += 1;
                }
                Observation::Price {
                    open, high, low, ..
                } => {
                    let Some(newest) = self.newest_price_ms else {
                        continue;
                    };
                    if !self.range(newest).contains(&index) {
                        continue;
                    }
                    if start.is_none_or(|(t, o, _)| (arrival.time_ms, *order) < (t, o)) {
                        start = Some((arrival.time_ms, *order, open));
                    }
                    stats.high = Some(stats.high.map_or(high, |h| h.max(high)));
                    stats.low = Some(stats.low.map_or(low, |l| l.min(low)));
                }
            }
        }
        stats.start_time_ms = start.map(|(t, _, _)| t);
        stats.start_price = start.map(|(_, _, open)| open);
        stats.start_holders = start_holders.map(|(_, _, holders)| holders);
        stats
    }
}

fn expected_close(arrivals: &[Arrival]) -> Option<f64> {
    let mut best: Option<(i64, f64)> = None;
    for arrival in arrivals {
        if let Observation::Price { close, .. } = arrival.observation {
            if best.is_none_or(|(t, _)| arrival.time_ms >= t) {
                best = Some((arrival.time_ms, close));
            }
        }
    }
    best.map(|(_, close)| close)
}

/// Whole-dollar amounts, so sums are exact in any order and can be compared with `==`.
fn observation() -> impl Strategy<Value = Observation> {
    prop_oneof![
        (any::<bool>(), 0u32..50_000).prop_map(|(is_buy, usd)| Observation::Trade {
            side: if is_buy { Side::Buy } else { Side::Sell },
            volume_usd: f64::from(usd),
        }),
        (1u32..1_000, 0u32..100, 0u32..100, 0u32..200).prop_map(|(open, up, down, close)| {
            Observation::Price {
                open: f64::from(open),
                high: f64::from(open + up),
                low: f64::from(open.saturating_sub(down)),
                close: f64::from(close),
            }
        }),
        (0u64..1_000_000).prop_map(|holders| Observation::Holders { holders }),
    ]
}

/// Generates a stream that mostly moves forward but often jumps back, sometimes beyond the window.
/// Times are rounded to a per-stream granularity (1 ms, 1 s or 1 min, the candle start), so
/// equal times, and ties broken by arrival, are frequent.
fn arrivals() -> impl Strategy<Value = Vec<Arrival>> {
    let steps = prop::collection::vec((0i64..20_000, -400_000i64..2_000, observation()), 1..150);
    (prop_oneof![Just(1i64), Just(1_000), Just(MINUTE_MS)], steps).prop_map(
        |(granularity, steps)| {
            let mut clock = T0;
            steps
                .into_iter()
                .map(|(advance, offset, observation)| {
                    clock += advance;
                    Arrival {
                        time_ms: (clock + offset).div_euclid(granularity) * granularity,
                        observation,
                    }
                })
                .collect()
        },
    )
}

fn window_lengths() -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(
        prop_oneof![
            Just(1u32),
            Just(7),
            Just(60),
            Just(65),
            Just(300),
            Just(3600),
            1u32..1_000
        ],
        1..4,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn windows_match_brute_force_on_random_streams(
        lengths in window_lengths(),
        stream in arrivals(),
    ) {
        let mut windows = TargetWindows::new(&lengths);
        let mut sorted = lengths.clone();
        sorted.sort_unstable();
        sorted.dedup();
        let mut brute: Vec<BruteForce> = sorted.iter().map(|w| BruteForce::new(*w)).collect();

        for (order, arrival) in stream.iter().enumerate() {
            let placement = windows.observe(arrival.time_ms, arrival.observation);
            let too_old_before: usize = brute.iter().map(|b| b.too_old).sum();
            for b in &mut brute {
                b.arrive(order, *arrival);
            }
            let too_old_after: usize = brute.iter().map(|b| b.too_old).sum();
            prop_assert_eq!(placement.too_old, too_old_after - too_old_before);
            prop_assert_eq!(placement.placed, brute.len() - placement.too_old);

            let actual = windows.stats();
            prop_assert_eq!(actual.len(), brute.len());
            for (actual, b) in actual.iter().zip(&brute) {
                prop_assert_eq!(actual, &b.expected(), "after arrival {} at {}", order, arrival.time_ms);
            }
            prop_assert_eq!(windows.price(), expected_close(&stream[..=order]));
        }
    }
}

/// Returns the figures computed with every kept prefix cleared, so from every bucket.
fn stats_from_scratch(windows: &TargetWindows) -> Vec<WindowStats> {
    let fresh = windows.clone();
    for window in &fresh.windows {
        window.trade_prefix.set(None);
        window.price_prefix.set(None);
    }
    fresh.stats()
}

/// Amounts with fractions, whose sums depend on the order of the additions.
fn with_fractions(stream: Vec<Arrival>) -> Vec<Arrival> {
    stream
        .into_iter()
        .map(|arrival| match arrival.observation {
            Observation::Trade { side, volume_usd } => Arrival {
                observation: Observation::Trade {
                    side,
                    volume_usd: volume_usd * 0.1 + 0.013,
                },
                ..arrival
            },
            _ => arrival,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn kept_prefix_gives_identical_figures(
        lengths in window_lengths(),
        stream in arrivals().prop_map(with_fractions),
    ) {
        let mut windows = TargetWindows::new(&lengths);
        for (order, arrival) in stream.iter().enumerate() {
            windows.observe(arrival.time_ms, arrival.observation);
            let expected = stats_from_scratch(&windows);
            prop_assert_eq!(windows.stats(), expected, "after arrival {}", order);
        }
    }
}

#[test]
fn buckets_stay_small() {
    // The memory of 10,000 targets is mostly these buckets, 60 of each per 300 s window.
    assert_eq!(std::mem::size_of::<TradeBucket>(), 24);
    assert_eq!(std::mem::size_of::<PriceBucket>(), 32);
    assert_eq!(std::mem::size_of::<HolderBucket>(), 16);
}
