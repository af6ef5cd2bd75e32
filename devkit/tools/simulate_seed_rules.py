#!/usr/bin/env python3
"""Count the alerts that `devkit seed`'s rules raise on the recorded trades.

Replays data/binance-ethusdt-trades-2023-02-02/trades.csv the way `devkit feed-replay` sends it
(one trade event per row, and after every row a price event carrying the current one-minute
candle with source time = candle start) and judges each event with the window semantics of the
pipeline:

- a window of W seconds has buckets of b = ceil(W / 64) seconds; the window ending at t covers
  the n = ceil(W / b) bucket indices idx(t) - n + 1 ..= idx(t), where idx(t) = t_ms // 1000 // b;
- trades feed volume and buy sums; price events feed prices, and start_price is the earliest
  price observation (by source time, then arrival) in the covered buckets;
- large_trade, cumulative_buy and volume are judged on trades, price_change on price events;
  thresholds are inclusive;
- an alert id is (rule, source_time_ms // 1000 // cooldown_sec), so a rule raises at most one
  alert per cooldown bucket.

Usage: devkit/tools/simulate_seed_rules.py [trades.csv]
The thresholds below must match devkit/src/seed.rs.
"""

import csv
import math
import sys
from collections import defaultdict

MIN_TRANSACTION_USD = 100_000.0
CUMULATIVE_MIN_AMOUNT_USD = 1_000_000.0
TIME_INTERVAL_SEC = 60
MIN_VOLUME_USD = 2_000_000.0
WINDOW_SEC = 60
PRICE_CHANGE_PCT = 0.02
COOLDOWN_SEC = 60


def bucket_range(t_ms, window_sec):
    width = max(1, math.ceil(window_sec / 64))
    count = math.ceil(window_sec / width)
    last = t_ms // 1000 // width
    return width, last - count + 1, last


def window_sum(events, t_ms, window_sec):
    width, first, last = bucket_range(t_ms, window_sec)
    return sum(value for (time_ms, value) in events if first <= time_ms // 1000 // width <= last)


def load(path):
    with open(path, newline="") as f:
        return [
            (int(r["timestamp"]), r["side"], float(r["price"]), float(r["cost"]))
            for r in csv.DictReader(f)
        ]


def simulate(trades):
    buckets = defaultdict(set)
    buys, volumes = [], []
    for time_ms, side, _price, cost in trades:
        volumes.append((time_ms, cost))
        if side == "buy":
            buys.append((time_ms, cost))
        bucket = time_ms // 1000 // COOLDOWN_SEC
        if cost >= MIN_TRANSACTION_USD:
            buckets["large_trade"].add(bucket)
        if window_sum(buys, time_ms, TIME_INTERVAL_SEC) >= CUMULATIVE_MIN_AMOUNT_USD:
            buckets["cumulative_buy"].add(bucket)
        if window_sum(volumes, time_ms, WINDOW_SEC) >= MIN_VOLUME_USD:
            buckets["volume_change"].add(bucket)

    observations = []  # (source time ms, arrival, candle open, candle close)
    candle_start, candle_open = None, None
    for arrival, (time_ms, _side, price, _cost) in enumerate(trades):
        start_s = time_ms // 60_000 * 60
        if start_s != candle_start:
            candle_start, candle_open = start_s, price
        source_ms = start_s * 1000
        observations.append((source_ms, arrival, candle_open, price))
        width, first, last = bucket_range(source_ms, WINDOW_SEC)
        covered = [o for o in observations if first <= o[0] // 1000 // width <= last]
        start_price = min(covered, key=lambda o: (o[0], o[1]))[2]
        change_pct = (price - start_price) / start_price * 100
        if change_pct >= PRICE_CHANGE_PCT or change_pct <= -PRICE_CHANGE_PCT:
            buckets["price_change"].add(source_ms // 1000 // COOLDOWN_SEC)
    return buckets


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "data/binance-ethusdt-trades-2023-02-02/trades.csv"
    buckets = simulate(load(path))
    total = 0
    for rule in ["large_trade", "cumulative_buy", "volume_change", "price_change"]:
        minutes = sorted(b * COOLDOWN_SEC for b in buckets[rule])
        total += len(minutes)
        print(f"{rule}: {len(minutes)} alerts, cooldown buckets starting at unix {minutes}")
    print(f"total: {total} alerts")


if __name__ == "__main__":
    main()
