//! The schedule of one channel's replay of one token on one connection.
//!
//! Consumes the recorded trades and the start of the replay's timeline: the time the
//! subscription arrived, or the server's start for live replays, which first skip what was due
//! before the subscription. Produces, one at a time, the next frame and the instant it is due:
//! recorded gaps divided by the speed, or at once with speed 0. With looping, each pass shifts
//! the recorded times by a whole number of minutes past the previous pass, so source times
//! keep increasing and every candle keeps its shape.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::frames::{price_frame, txs_frame, Candle, ReplayTrade, TokenInfo, TxsShape};
use super::query::Channel;
use super::record::Recording;

/// Trades, token and pacing shared by every replay of a server.
#[derive(Debug)]
pub struct ReplayPlan {
    pub trades: Vec<ReplayTrade>,
    /// Tokens the trades are attributed to; each subscribed one is replayed on its own.
    pub tokens: Vec<TokenInfo>,
    /// 0 sends as fast as the connection takes frames; otherwise recorded gaps are divided by it.
    pub speed: f64,
    pub looping: bool,
    pub txs_shape: TxsShape,
    /// Recorded frames served in place of the trades (`--recording`).
    pub recording: Option<Recording>,
}

impl ReplayPlan {
    fn first_time_ms(&self) -> i64 {
        self.trades.first().map_or(0, |t| t.trade.timestamp_ms)
    }

    /// Time shift between two passes: the recorded span rounded up to whole minutes.
    fn cycle_ms(&self) -> i64 {
        let last = self.trades.last().map_or(0, |t| t.trade.timestamp_ms);
        let span = last - self.first_time_ms() + 1;
        (span + 59_999).div_euclid(60_000).max(1) * 60_000
    }
}

/// The replay of one channel on one connection.
#[derive(Debug)]
pub struct ChannelReplay {
    pub channel: Channel,
    plan: Arc<ReplayPlan>,
    /// Index of the replayed token in `plan.tokens`.
    token: usize,
    started: Instant,
    /// Index of the next trade to send.
    position: usize,
    /// Number of completed passes over the file.
    cycle: u64,
    candle: Option<Candle>,
}

impl ChannelReplay {
    pub fn new(channel: Channel, plan: Arc<ReplayPlan>, token: usize, started: Instant) -> Self {
        ChannelReplay {
            channel,
            plan,
            token,
            started,
            position: 0,
            cycle: 0,
            candle: None,
        }
    }

    /// Index of the replayed token in the plan.
    pub fn token(&self) -> usize {
        self.token
    }

    /// Moves past every trade due before `now` without sending it; the price channel's candle
    /// still takes them in. Whole passes of a looping replay are skipped without a scan.
    pub fn skip_until(&mut self, now: Instant) {
        if self.plan.speed == 0.0 {
            return;
        }
        let elapsed_ms = now.saturating_duration_since(self.started).as_secs_f64() * 1000.0;
        let source_offset_ms = elapsed_ms * self.plan.speed;
        if self.plan.looping {
            let passes = (source_offset_ms / self.plan.cycle_ms() as f64).floor();
            if passes >= 1.0 && passes < u64::MAX as f64 {
                self.cycle = passes as u64;
                self.position = 0;
                self.candle = None;
            }
        }
        while self.due().is_some_and(|due| due < now) {
            self.advance();
        }
    }

    /// Returns whether every trade was sent and the replay does not loop.
    pub fn is_finished(&self) -> bool {
        match &self.plan.recording {
            Some(recording) => self.position >= recording.frames(self.channel).len(),
            None => self.position >= self.plan.trades.len(),
        }
    }

    /// Replayed source time of the next trade, in milliseconds.
    fn next_time_ms(&self) -> Option<i64> {
        let item = self.plan.trades.get(self.position)?;
        let shift = i64::try_from(self.cycle)
            .ok()?
            .checked_mul(self.plan.cycle_ms())?;
        item.trade.timestamp_ms.checked_add(shift)
    }

    /// When the next frame is due; `None` once the replay is finished.
    pub fn due(&self) -> Option<Instant> {
        if let Some(recording) = &self.plan.recording {
            let frame = recording.frames(self.channel).get(self.position)?;
            return Some(self.after(frame.offset_ms as f64));
        }
        let time_ms = self.next_time_ms()?;
        if self.plan.speed == 0.0 {
            return Some(self.started);
        }
        let offset_ms = (time_ms - self.plan.first_time_ms()).max(0) as f64;
        Some(self.after(offset_ms))
    }

    /// The instant `offset_ms` of recorded time after the start, at the replay's speed.
    fn after(&self, offset_ms: f64) -> Instant {
        if self.plan.speed == 0.0 {
            return self.started;
        }
        let delay = Duration::try_from_secs_f64(offset_ms.max(0.0) / 1000.0 / self.plan.speed)
            .unwrap_or(Duration::MAX);
        self.started.checked_add(delay).unwrap_or_else(far_future)
    }

    /// Builds the next frame and moves past it; `None` once the replay is finished.
    pub fn next_frame(&mut self) -> Option<String> {
        if let Some(recording) = &self.plan.recording {
            let text = recording
                .frames(self.channel)
                .get(self.position)?
                .text
                .clone();
            self.position += 1;
            return Some(text);
        }
        let time_ms = self.next_time_ms()?;
        let plan = Arc::clone(&self.plan);
        let item = &plan.trades[self.position];
        let token = &plan.tokens[self.token];

        let text = match self.channel {
            Channel::Txs => txs_frame(item, time_ms, self.cycle, token, plan.txs_shape),
            Channel::Price => {
                let candle = Candle::advance(self.candle.take(), time_ms, &item.trade);
                let text = price_frame(&candle, token);
                self.candle = Some(candle);
                text
            }
        };

        self.move_on();
        Some(text)
    }

    /// Moves past the next trade without building its frame.
    fn advance(&mut self) {
        let Some(time_ms) = self.next_time_ms() else {
            return;
        };
        if self.channel == Channel::Price {
            let trade = &self.plan.trades[self.position].trade;
            self.candle = Some(Candle::advance(self.candle.take(), time_ms, trade));
        }
        self.move_on();
    }

    fn move_on(&mut self) {
        self.position += 1;
        if self.is_finished() && self.plan.looping {
            self.position = 0;
            self.cycle += 1;
        }
    }
}

fn far_future() -> Instant {
    // About 30 years, the same horizon tokio uses for a sleep without a deadline.
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trades::Trade;
    use monitor_core::messages::Side;
    use serde_json::Value;

    fn plan(times: &[i64], speed: f64, looping: bool) -> Arc<ReplayPlan> {
        let trades = times
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let trade = Trade {
                    timestamp_ms: *t,
                    id: i as u64,
                    side: Side::Buy,
                    price: 100.0 + i as f64,
                    amount: 1.0,
                    amount_text: "1".into(),
                    cost: 100.0,
                    cost_text: "100".into(),
                };
                ReplayTrade::new(trade, 18).unwrap()
            })
            .collect();
        Arc::new(ReplayPlan {
            trades,
            tokens: vec![TokenInfo {
                address: "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2".into(),
                symbol: "WETH".into(),
                decimals: 18,
                pair_address: "0x11b815efb8f581194ae79006d24e0d814b7697f6".into(),
            }],
            speed,
            looping,
            txs_shape: TxsShape::Simple,
            recording: None,
        })
    }

    fn frame_time_ms(text: &str) -> i64 {
        let frame: Value = serde_json::from_str(text).unwrap();
        frame["data"]["blockUnixTimeMs"].as_i64().unwrap()
    }

    #[test]
    fn gaps_are_divided_by_the_speed() {
        let start = Instant::now();
        let mut replay = ChannelReplay::new(
            Channel::Txs,
            plan(&[10_000, 12_000, 20_000], 2.0, false),
            0,
            start,
        );

        assert_eq!(replay.due(), Some(start));
        replay.next_frame();
        assert_eq!(replay.due(), Some(start + Duration::from_secs(1)));
        replay.next_frame();
        assert_eq!(replay.due(), Some(start + Duration::from_secs(5)));
        replay.next_frame();
        assert_eq!(replay.due(), None);
        assert!(replay.next_frame().is_none());
    }

    #[test]
    fn speed_zero_makes_every_frame_due_at_once() {
        let start = Instant::now();
        let mut replay = ChannelReplay::new(
            Channel::Txs,
            plan(&[0, 50_000, 90_000], 0.0, false),
            0,
            start,
        );
        for _ in 0..3 {
            assert_eq!(replay.due(), Some(start));
            replay.next_frame();
        }
        assert!(replay.is_finished());
    }

    #[test]
    fn looping_shifts_times_by_whole_minutes() {
        let mut replay = ChannelReplay::new(
            Channel::Txs,
            plan(&[1_000, 61_000], 0.0, true),
            0,
            Instant::now(),
        );

        let times: Vec<i64> = (0..5)
            .map(|_| frame_time_ms(&replay.next_frame().unwrap()))
            .collect();

        // The span 1 s ..= 61 s rounds up to two minutes per pass.
        assert_eq!(times, vec![1_000, 61_000, 121_000, 181_000, 241_000]);
        assert!(!replay.is_finished());
    }

    #[test]
    fn price_channel_sends_the_running_candle() {
        let mut replay = ChannelReplay::new(
            Channel::Price,
            plan(&[1_000, 2_000, 61_000], 0.0, false),
            0,
            Instant::now(),
        );

        let frames: Vec<Value> = (0..3)
            .map(|_| serde_json::from_str(&replay.next_frame().unwrap()).unwrap())
            .collect();

        assert_eq!(frames[1]["data"]["o"], 100.0);
        assert_eq!(frames[1]["data"]["c"], 101.0);
        assert_eq!(frames[1]["data"]["v"], 2.0);
        assert_eq!(frames[2]["data"]["unixTime"], 60);
        assert_eq!(frames[2]["data"]["o"], 102.0);
    }

    #[test]
    fn live_replay_skips_trades_due_before_the_subscription() {
        let start = Instant::now();
        let mut replay = ChannelReplay::new(
            Channel::Txs,
            plan(&[10_000, 12_000, 20_000], 2.0, false),
            0,
            start,
        );

        // At speed 2, the trades are due 0 s, 1 s and 5 s after the start.
        replay.skip_until(start + Duration::from_millis(1500));

        assert_eq!(replay.due(), Some(start + Duration::from_secs(5)));
        assert_eq!(frame_time_ms(&replay.next_frame().unwrap()), 20_000);
    }

    #[test]
    fn live_replay_skips_whole_passes_when_looping() {
        let start = Instant::now();
        let mut replay =
            ChannelReplay::new(Channel::Txs, plan(&[1_000, 61_000], 1.0, true), 0, start);

        // A pass lasts two minutes; 250 s after the start the third pass (times shifted by
        // 240 s) has sent its first trade (due at 240 s) and its second is due at 300 s.
        replay.skip_until(start + Duration::from_secs(250));

        assert_eq!(replay.due(), Some(start + Duration::from_secs(300)));
        assert_eq!(frame_time_ms(&replay.next_frame().unwrap()), 301_000);
    }

    #[test]
    fn live_price_candle_includes_skipped_trades_of_the_minute() {
        let start = Instant::now();
        let mut replay = ChannelReplay::new(
            Channel::Price,
            plan(&[1_000, 2_000, 3_000], 1.0, false),
            0,
            start,
        );

        replay.skip_until(start + Duration::from_millis(1500));
        let frame: Value = serde_json::from_str(&replay.next_frame().unwrap()).unwrap();

        assert_eq!(
            frame["data"]["o"], 100.0,
            "open of the first trade of the minute"
        );
        assert_eq!(frame["data"]["c"], 102.0);
        assert_eq!(frame["data"]["v"], 3.0);
    }
}
