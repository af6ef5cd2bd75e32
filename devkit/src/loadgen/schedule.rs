//! What the load generator sends and when: the trade plan, the pacing and the tag that makes an
//! alert traceable to the frame that caused it.
//!
//! The plan is deterministic. Each feed connection cycles through its targets. In round `r`
//! (every target has had `r` trades), target `t` gets a large trade when
//! `(r + t) % period == 0`, so exactly one trade in `period` ([`DEFAULT_LARGE_TRADE_PERIOD`]
//! unless the run sets another) is large and a target's large trades are `period` rounds
//! apart. That spacing keeps their alerts in distinct cooldown buckets, which would otherwise
//! merge them into one alert id. This module is pure: no clock, no I/O.

use std::time::Duration;

use monitor_core::messages::Side;

/// One trade in this many is large and raises a `large_trade` alert (1 %).
pub const DEFAULT_LARGE_TRADE_PERIOD: u64 = 100;
/// `min_transaction_usd` of the load generator's config. Only large trades reach it.
pub const LARGE_TRADE_USD: f64 = 100_000.0;
/// Normal trades are below this volume in USD.
const NORMAL_TRADE_MAX_USD: f64 = 50_000.0;

/// One planned trade.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlannedTrade {
    /// Unique within a run: `round * targets + target`.
    pub seq: u64,
    pub target: usize,
    pub large: bool,
    pub side: Side,
    pub volume_usd: f64,
}

/// Plans the trade of `target` (index among `targets`) in round `round`, one trade in
/// `period` being large.
pub fn planned_trade(target: usize, round: u64, targets: usize, period: u64) -> PlannedTrade {
    let seq = round * targets as u64 + target as u64;
    let large = (round + target as u64).is_multiple_of(period.max(1));
    let noise = splitmix64(seq);
    // The low bits choose the side and the high bits the volume, so the two are independent.
    let side = if noise & 1 == 0 {
        Side::Buy
    } else {
        Side::Sell
    };
    let fraction = (noise >> 11) as f64 / (1u64 << 53) as f64;
    let volume_usd = if large {
        LARGE_TRADE_USD * (1.0 + fraction)
    } else {
        10.0 + fraction * (NORMAL_TRADE_MAX_USD - 10.0)
    };
    PlannedTrade {
        seq,
        target,
        large,
        side,
        volume_usd,
    }
}

/// A fast, well-mixed hash of a counter (splitmix64), used as the plan's noise.
fn splitmix64(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Stage of a run, as the feed sees it. The phase of each trade travels in its tag, so the
/// backend stub knows which alerts belong to the measured part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Phase {
    /// Nothing is sent yet.
    Idle = 0,
    /// A slow trickle until the first alert shows the pipeline is ready.
    Probe = 1,
    /// The chosen rate, not measured.
    Warmup = 2,
    /// The chosen rate, measured.
    Measure = 3,
    /// Nothing more is sent.
    Stopped = 4,
}

impl Phase {
    pub fn from_u8(value: u8) -> Phase {
        match value {
            1 => Phase::Probe,
            2 => Phase::Warmup,
            3 => Phase::Measure,
            4 => Phase::Stopped,
            _ => Phase::Idle,
        }
    }

    /// Whether trades are sent in this phase.
    pub fn is_sending(self) -> bool {
        matches!(self, Phase::Probe | Phase::Warmup | Phase::Measure)
    }
}

/// What a trade's transaction hash carries: its phase, its plan sequence number and the time
/// it was sent, in nanoseconds since the run's clock started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TradeTag {
    pub phase: Phase,
    pub seq: u64,
    pub sent_ns: u64,
}

/// First hex digits of every tagged hash, so a foreign hash is not mistaken for a tag.
const TAG_MARK: &str = "10ad";
/// The 26 zero digits between the phase and the sequence number of a tagged hash.
const TAG_ZEROS: &str = "00000000000000000000000000";

/// Appends the `digits` lowest hex digits of `value`, in lower case.
fn push_hex(out: &mut String, value: u64, digits: u32) {
    for position in (0..digits).rev() {
        let nibble = (value >> (4 * position)) & 0xf;
        out.push(char::from_digit(nibble as u32, 16).unwrap_or('0'));
    }
}

impl TradeTag {
    /// Writes the tag as a 32-byte transaction hash: `0x`, the mark, the phase (2 digits), 26
    /// zeros, the sequence number (16) and the send time (16).
    pub fn to_tx_hash(self) -> String {
        let mut hash = String::with_capacity(66);
        self.write_tx_hash(&mut hash);
        hash
    }

    /// Appends the hash of [`TradeTag::to_tx_hash`] to `out`. The digits are written one by
    /// one because padded `format!` output costs a call per fill character, and the load
    /// generator writes a hash for every trade.
    pub fn write_tx_hash(self, out: &mut String) {
        out.push_str("0x");
        out.push_str(TAG_MARK);
        push_hex(out, u64::from(self.phase as u8), 2);
        out.push_str(TAG_ZEROS);
        push_hex(out, self.seq, 16);
        push_hex(out, self.sent_ns, 16);
    }

    /// Reads a tag written by [`TradeTag::to_tx_hash`]; `None` for any other text.
    pub fn from_tx_hash(hash: &str) -> Option<TradeTag> {
        let hex = hash.strip_prefix("0x")?;
        if hex.len() != 64 || !hex.starts_with(TAG_MARK) {
            return None;
        }
        let phase = u8::from_str_radix(hex.get(4..6)?, 16).ok()?;
        let seq = u64::from_str_radix(hex.get(32..48)?, 16).ok()?;
        let sent_ns = u64::from_str_radix(hex.get(48..64)?, 16).ok()?;
        Some(TradeTag {
            phase: Phase::from_u8(phase),
            seq,
            sent_ns,
        })
    }
}

/// The wait that stands for "never" in pacing: far beyond any run, small enough to add to an
/// instant.
const NEVER: Duration = Duration::from_secs(24 * 3600);

/// Events a sender may send now to keep to its rate.
#[derive(Debug, Clone)]
pub struct Pacer {
    /// Events per second; `None` sends as fast as the receiver reads.
    rate: Option<f64>,
    /// Events sent since the pacing started.
    sent: u64,
}

impl Pacer {
    pub fn new(rate: Option<f64>) -> Self {
        Pacer { rate, sent: 0 }
    }

    /// Returns how many events are due `elapsed` after the pacing started, at most `burst`.
    pub fn due(&self, elapsed: Duration, burst: u64) -> u64 {
        match self.rate {
            None => burst,
            Some(rate) => {
                let owed = (rate * elapsed.as_secs_f64()).floor() as u64;
                owed.saturating_sub(self.sent).min(burst)
            }
        }
    }

    pub fn record(&mut self, sent: u64) {
        self.sent += sent;
    }

    /// Returns the time after the start at which the next event is due, `None` at full speed.
    /// A rate of zero is never due: the time is a day away.
    pub fn next_due(&self) -> Option<Duration> {
        let rate = self.rate?;
        let seconds = (self.sent + 1) as f64 / rate;
        Some(Duration::try_from_secs_f64(seconds).map_or(NEVER, |due| due.min(NEVER)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_trade_in_a_hundred_is_large() {
        let targets = 250;
        let large = (0..DEFAULT_LARGE_TRADE_PERIOD * 3)
            .flat_map(|round| {
                (0..targets)
                    .map(move |t| planned_trade(t, round, targets, DEFAULT_LARGE_TRADE_PERIOD))
            })
            .filter(|trade| trade.large)
            .count();
        assert_eq!(large, 3 * targets);
    }

    #[test]
    fn large_trades_of_a_target_are_a_period_apart() {
        let rounds: Vec<u64> = (0..400)
            .filter(|round| planned_trade(7, *round, 50, DEFAULT_LARGE_TRADE_PERIOD).large)
            .collect();
        assert_eq!(rounds, vec![93, 193, 293, 393]);
    }

    #[test]
    fn only_large_trades_reach_the_threshold() {
        for round in 0..200 {
            for target in 0..30 {
                let trade = planned_trade(target, round, 30, DEFAULT_LARGE_TRADE_PERIOD);
                assert_eq!(
                    trade.volume_usd >= LARGE_TRADE_USD,
                    trade.large,
                    "{trade:?}"
                );
                assert!(trade.volume_usd > 0.0 && trade.volume_usd < 2.0 * LARGE_TRADE_USD);
            }
        }
    }

    #[test]
    fn period_sets_the_share_of_large_trades() {
        let large = (0..1000)
            .filter(|round| planned_trade(3, *round, 20, 1000).large)
            .count();
        assert_eq!(large, 1);
    }

    #[test]
    fn sequence_numbers_are_unique() {
        let mut seqs: Vec<u64> = (0..20)
            .flat_map(|round| (0..13).map(move |t| planned_trade(t, round, 13, 10).seq))
            .collect();
        let count = seqs.len();
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(seqs.len(), count);
    }

    #[test]
    fn tag_round_trips_through_tx_hash() {
        let tag = TradeTag {
            phase: Phase::Measure,
            seq: 123_456_789,
            sent_ns: 98_765_432_109_876,
        };
        let hash = tag.to_tx_hash();
        assert_eq!(hash.len(), 66);
        assert!(hash[2..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(TradeTag::from_tx_hash(&hash), Some(tag));
    }

    #[test]
    fn tx_hash_has_fixed_layout() {
        let tag = TradeTag {
            phase: Phase::Warmup,
            seq: 0xabc,
            sent_ns: u64::MAX,
        };
        let expected = format!("0x10ad02{}{:016x}{:016x}", "0".repeat(26), 0xabc, u64::MAX);
        assert_eq!(tag.to_tx_hash(), expected);
    }

    #[test]
    fn foreign_hash_is_not_a_tag() {
        let hash = format!("0x{}", "ab".repeat(32));
        assert_eq!(TradeTag::from_tx_hash(&hash), None);
        assert_eq!(TradeTag::from_tx_hash("0x10ad"), None);
    }

    #[test]
    fn pacer_keeps_to_rate() {
        let mut pacer = Pacer::new(Some(1000.0));
        assert_eq!(pacer.due(Duration::from_millis(0), 100), 0);
        assert_eq!(pacer.due(Duration::from_millis(10), 100), 10);
        pacer.record(10);
        assert_eq!(pacer.due(Duration::from_millis(15), 100), 5);
        assert_eq!(pacer.due(Duration::from_secs(1), 100), 100, "burst caps it");
        assert_eq!(pacer.next_due(), Some(Duration::from_millis(11)));
    }

    #[test]
    fn zero_rate_is_never_due() {
        let pacer = Pacer::new(Some(0.0));
        assert_eq!(pacer.due(Duration::from_secs(5), 10), 0);
        assert_eq!(pacer.next_due(), Some(NEVER));
    }

    #[test]
    fn unpaced_sends_whole_bursts() {
        let pacer = Pacer::new(None);
        assert_eq!(pacer.due(Duration::ZERO, 64), 64);
        assert_eq!(pacer.next_due(), None);
    }
}
