//! Window history: a starting batch runner reads its targets' recent events back from the
//! events stream, so that its windows go on from where the previous runner left them.
//!
//! After a restart, a handover between instances, or an epoch switch that moved the targets to
//! new batches, a runner starts for targets that another runner watched before. With empty
//! windows, a rule over the last hour would judge only what arrived since the start. Instead,
//! the runner reads the frames stored since `now - longest window - HISTORY_SLACK` on its own
//! batch's subject and on the subjects of the earlier batches that held its targets, and adds
//! their observations to its windows. It connects to the feed meanwhile, but leaves the data of
//! an open connection waiting until the reader has caught up ([`History::holds_feed`]), for at
//! most [`HISTORY_WAIT_LIMIT`], so that its first live events carry the whole window.
//!
//! Around a handover or an epoch switch, the old and the new runner receive the same trades for
//! a few seconds, and both publish them. The reader therefore goes on reading new frames until
//! the runner has reported `running` for [`HISTORY_TAIL`], longer than the old runner keeps
//! going, and the runner counts an observation once when it arrives both ways ([`Repeats`]).
//! Frames the runner itself published are skipped.
//!
//! A config change that adds window lengths reads their history the same way, for the new
//! windows only, up to the last frame stored at the change, so the events counted live since
//! the change are not read back.
//!
//! Produces [`Stored`] items through [`History::next`]: the frames, the moment the reader has
//! caught up, and the end. Which events apply to which target is the runner's business. A read that fails (NATS down, stream missing) is logged in one line
//! and ends the history: the windows then hold live data only, as without it.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use async_nats::datetime;
use async_nats::jetstream::{self, consumer::pull::OrderedConfig, consumer::DeliverPolicy};
use futures::StreamExt;
use monitor_core::codec;
use monitor_core::messages::EventFrame;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tracing::{debug, warn, Instrument};

use crate::birdeye::Channel;
use crate::plan::SUBSCRIBE_SETTLE;

/// How much older than the longest window the first frame read may be: a trade's source time
/// lags the time its frame was stored, and windows end at the newest source time.
pub const HISTORY_SLACK: Duration = Duration::from_secs(60);
/// How long the reader goes on after the runner first reports `running`: longer than an old
/// runner keeps going after that, so the trades only the old runner received are read too.
pub const HISTORY_TAIL: Duration = Duration::from_secs(SUBSCRIBE_SETTLE.as_secs() + 3);
/// Maximum time a runner holds back the feed data of its open connections until its history
/// has caught up. Beyond it, the runner reads on with partial windows.
pub const HISTORY_WAIT_LIMIT: Duration = Duration::from_secs(5);
/// Time without a new frame after which the reader counts as caught up, even if the stream
/// counted more frames at the start.
const IDLE_CAUGHT_UP: Duration = Duration::from_secs(1);
/// Frames decoded ahead of the runner.
const READ_AHEAD_FRAMES: usize = 8;
/// Keys remembered per channel and source (live feed, stream). Copies of one trade published by
/// two runners are stored seconds apart, far fewer trades apart than this for a batch.
const SEEN_PER_SOURCE: usize = 20_000;

/// A history read: the stored frames of these subjects since `since_ms`.
#[derive(Debug, Clone)]
pub struct HistoryRequest {
    pub stream: String,
    pub subjects: Vec<String>,
    pub since_ms: i64,
    /// Whether to go on reading frames stored later, until the runner ends the history, or to
    /// stop at the last frame stored when the read starts.
    pub follow: bool,
    /// The reading runner's own frames, which are skipped.
    pub own: OwnFrames,
}

/// Frames of one runner: its producer and batch, from its first sequence number on.
#[derive(Debug, Clone)]
pub struct OwnFrames {
    pub producer: String,
    pub batch_id: u64,
    pub first_seq: u64,
}

impl OwnFrames {
    fn contains(&self, frame: &EventFrame) -> bool {
        frame.producer == self.producer
            && frame.batch_id == Some(self.batch_id)
            && frame.seq >= self.first_seq
    }
}

/// Item of a history read, from [`History::next`]. The reader sends frames and `CaughtUp`, and
/// `End` means that the reader or the history has ended.
#[derive(Debug)]
pub enum Stored {
    Frame(EventFrame),
    /// Every frame stored when the read started has come out.
    CaughtUp,
    /// The history has ended.
    End,
}

/// The history of one runner, read in the background.
pub struct History {
    frames: mpsc::Receiver<Stored>,
    reader: JoinHandle<()>,
    /// Time from the start to the moment every frame stored then had come out.
    caught_up_after: Option<Duration>,
    close_at: Option<Instant>,
    started: Instant,
}

impl History {
    /// Starts reading. Frames come out of [`History::next`].
    pub fn start(js: jetstream::Context, request: HistoryRequest) -> History {
        let (sender, frames) = mpsc::channel(READ_AHEAD_FRAMES);
        History {
            frames,
            // The reader logs under the runner's span, which names the task and batch.
            reader: tokio::spawn(read(js, request, sender).in_current_span()),
            caught_up_after: None,
            close_at: None,
            started: Instant::now(),
        }
    }

    /// Ends the history [`HISTORY_TAIL`] after now, or once caught up if that is later. Only the
    /// first call counts, so a runner that reconnects later does not read longer.
    pub fn close_after_tail(&mut self) {
        self.close_at.get_or_insert(Instant::now() + HISTORY_TAIL);
    }

    /// Returns whether the runner should hold back feed data: the history has not caught up yet,
    /// for at most [`HISTORY_WAIT_LIMIT`].
    pub fn holds_feed(&self) -> bool {
        self.caught_up_after.is_none() && Instant::now() < self.hold_deadline()
    }

    /// Returns the end of the [`HISTORY_WAIT_LIMIT`].
    pub fn hold_deadline(&self) -> Instant {
        self.started + HISTORY_WAIT_LIMIT
    }

    /// Returns how long it took until every frame stored at the start had come out, once it
    /// has.
    pub fn caught_up_after(&self) -> Option<Duration> {
        self.caught_up_after
    }

    /// Returns the time since the read started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Returns what comes next: a stored frame, the moment the reader caught up (so that the
    /// runner reads its feed again), or the end. Cancel-safe.
    pub async fn next(&mut self) -> Stored {
        let closing = self.close_at.filter(|_| self.caught_up_after.is_some());
        if closing.is_some_and(|at| at <= Instant::now()) {
            return Stored::End;
        }
        tokio::select! {
            read = self.frames.recv() => match read {
                Some(Stored::CaughtUp) => {
                    self.caught_up_after = Some(self.started.elapsed());
                    Stored::CaughtUp
                }
                Some(stored) => stored,
                None => Stored::End,
            },
            () = sleep_until(closing.unwrap_or_else(Instant::now)), if closing.is_some() => Stored::End,
        }
    }
}

impl Drop for History {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn read(js: jetstream::Context, request: HistoryRequest, sender: mpsc::Sender<Stored>) {
    if let Err(error) = read_frames(&js, &request, &sender).await {
        warn!(
            subjects = ?request.subjects,
            since_ms = request.since_ms,
            error = %error,
            "reading the window history failed, the windows start from live data"
        );
    }
}

async fn read_frames(
    js: &jetstream::Context,
    request: &HistoryRequest,
    sender: &mpsc::Sender<Stored>,
) -> anyhow::Result<()> {
    let mut stream = js.get_stream(&request.stream).await?;
    let last_sequence = match request.follow {
        true => u64::MAX,
        false => stream.info().await?.state.last_sequence,
    };
    let start_time = datetime::from_nanos(i128::from(request.since_ms) * 1_000_000)
        .map_err(|error| anyhow::anyhow!(error))?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subjects: request.subjects.clone(),
            deliver_policy: DeliverPolicy::ByStartTime { start_time },
            description: Some(format!("window history of batch {}", request.own.batch_id)),
            ..Default::default()
        })
        .await?;
    let mut caught_up = consumer.cached_info().num_pending == 0;
    if caught_up && (sender.send(Stored::CaughtUp).await.is_err() || !request.follow) {
        return Ok(());
    }
    let mut messages = consumer.messages().await?;
    loop {
        let next = tokio::select! {
            () = sender.closed() => return Ok(()),
            next = messages.next() => next,
            // Frames counted as pending at the start may have expired from the stream since.
            () = tokio::time::sleep(IDLE_CAUGHT_UP), if !caught_up => {
                caught_up = true;
                if sender.send(Stored::CaughtUp).await.is_err() || !request.follow {
                    return Ok(());
                }
                continue;
            }
        };
        let Some(message) = next.transpose()? else {
            return Ok(());
        };
        let info = message.info().map_err(anyhow::Error::msg)?;
        let (sequence, pending) = (info.stream_sequence, info.pending);
        if sequence > last_sequence {
            sender.send(Stored::CaughtUp).await.ok();
            return Ok(());
        }
        match codec::decode::<EventFrame>(&message.payload) {
            Ok(frame) if request.own.contains(&frame) => {}
            Ok(frame) => {
                if sender.send(Stored::Frame(frame)).await.is_err() {
                    return Ok(());
                }
            }
            Err(error) => {
                debug!(subject = %message.subject, error = %error, "stored frame cannot be decoded, skipped in the window history");
            }
        }
        let at_end = pending == 0 || sequence == last_sequence;
        if !caught_up && at_end {
            caught_up = true;
            if sender.send(Stored::CaughtUp).await.is_err() {
                return Ok(());
            }
        }
        if caught_up && !request.follow {
            return Ok(());
        }
    }
}

/// Keys of the trades and candles a runner received live and read back from the stream, so that
/// one seen both ways counts once and goes out once.
///
/// The stored copy of an observation was published and judged already, by this runner or an
/// earlier one, so a live copy of a stored observation is dropped. Stored copies arrive until
/// the history ends, live copies until the feed has moved past the newest stored observation
/// of their channel: a feed that sends recent data again after a reconnect sends it before
/// anything newer. Each channel stops comparing on its own, and the keys are dropped then.
#[derive(Debug, Default)]
pub struct Repeats {
    trades: ChannelRepeats,
    prices: ChannelRepeats,
    history_ended: bool,
}

#[derive(Debug, Default)]
struct ChannelRepeats {
    live: KeyQueue,
    stored: KeyQueue,
    live_newest_ms: Option<i64>,
    stored_newest_ms: Option<i64>,
    done: bool,
}

impl ChannelRepeats {
    fn live(&mut self, key: u64, time_ms: i64) -> bool {
        if self.done {
            return false;
        }
        let repeat = self.stored.contains(key);
        self.live.insert(key);
        self.live_newest_ms = self.live_newest_ms.max(Some(time_ms));
        repeat
    }

    fn stored(&mut self, key: u64, time_ms: i64) -> bool {
        self.stored_newest_ms = self.stored_newest_ms.max(Some(time_ms));
        self.live.contains(key) || !self.stored.insert(key)
    }

    /// Stops comparing once no stored copy comes any more and no live copy can come.
    fn finish_if_past(&mut self, history_ended: bool) {
        let past = match self.stored_newest_ms {
            None => true,
            Some(stored) => self.live_newest_ms.is_some_and(|live| live > stored),
        };
        if history_ended && past && !self.done {
            *self = ChannelRepeats {
                done: true,
                ..ChannelRepeats::default()
            };
        }
    }
}

impl Repeats {
    fn channel(&mut self, channel: Channel) -> &mut ChannelRepeats {
        match channel {
            Channel::Trades => &mut self.trades,
            Channel::Prices => &mut self.prices,
        }
    }

    /// Records a live observation; returns whether the stream already brought it.
    pub fn live(&mut self, channel: Channel, key: u64, time_ms: i64) -> bool {
        let history_ended = self.history_ended;
        let repeats = self.channel(channel);
        let repeat = repeats.live(key, time_ms);
        repeats.finish_if_past(history_ended);
        repeat
    }

    /// Records a stored observation; returns whether it was counted before, live or stored.
    pub fn stored(&mut self, channel: Channel, key: u64, time_ms: i64) -> bool {
        self.channel(channel).stored(key, time_ms)
    }

    /// Marks the end of the history: no stored observation comes any more.
    pub fn end_history(&mut self) {
        self.history_ended = true;
        self.trades.finish_if_past(true);
        self.prices.finish_if_past(true);
    }

    /// Returns whether live observations of `channel` are still compared.
    pub fn compares(&self, channel: Channel) -> bool {
        match channel {
            Channel::Trades => !self.trades.done,
            Channel::Prices => !self.prices.done,
        }
    }

    /// Returns whether neither channel compares any more.
    pub fn is_done(&self) -> bool {
        self.trades.done && self.prices.done
    }
}

/// A set of the most recent keys, at most [`SEEN_PER_SOURCE`].
#[derive(Debug, Default)]
struct KeyQueue {
    keys: HashSet<u64>,
    order: VecDeque<u64>,
}

impl KeyQueue {
    fn contains(&self, key: u64) -> bool {
        self.keys.contains(&key)
    }

    /// Returns false when the key is already present.
    fn insert(&mut self, key: u64) -> bool {
        if !self.keys.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > SEEN_PER_SOURCE {
            if let Some(oldest) = self.order.pop_front() {
                self.keys.remove(&oldest);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRADES: Channel = Channel::Trades;

    #[test]
    fn trade_seen_live_then_stored_counts_once() {
        let mut repeats = Repeats::default();
        assert!(!repeats.live(TRADES, 7, 1_000));
        assert!(repeats.stored(TRADES, 7, 1_000));
    }

    #[test]
    fn trade_stored_then_live_is_a_repeat() {
        let mut repeats = Repeats::default();
        assert!(!repeats.stored(TRADES, 7, 1_000));
        assert!(repeats.live(TRADES, 7, 1_000));
    }

    #[test]
    fn trade_stored_twice_counts_once() {
        let mut repeats = Repeats::default();
        assert!(!repeats.stored(TRADES, 7, 1_000));
        assert!(repeats.stored(TRADES, 7, 1_000));
        assert!(!repeats.stored(TRADES, 8, 1_000));
    }

    #[test]
    fn channels_keep_their_own_keys() {
        let mut repeats = Repeats::default();
        assert!(!repeats.stored(TRADES, 7, 1_000));
        assert!(!repeats.live(Channel::Prices, 7, 1_000));
    }

    #[test]
    fn comparing_ends_past_newest_stored() {
        let mut repeats = Repeats::default();
        repeats.stored(TRADES, 1, 5_000);
        repeats.end_history();
        assert!(
            !repeats.is_done(),
            "prices are done, trades may still repeat"
        );
        assert!(
            repeats.live(TRADES, 1, 5_000),
            "sent again after the history ended"
        );
        assert!(!repeats.live(TRADES, 2, 5_000));
        assert!(!repeats.is_done(), "not past the newest stored trade yet");
        assert!(repeats.compares(TRADES));
        assert!(!repeats.live(TRADES, 3, 5_001));
        assert!(!repeats.compares(TRADES));
        assert!(repeats.is_done());
        assert!(!repeats.live(TRADES, 1, 5_000), "no longer compared");
    }

    #[test]
    fn oldest_keys_dropped_beyond_limit() {
        let mut repeats = Repeats::default();
        for key in 0..=SEEN_PER_SOURCE as u64 {
            assert!(!repeats.stored(TRADES, key, 1_000));
        }
        assert!(!repeats.stored(TRADES, 0, 1_000), "key 0 was dropped first");
        assert!(repeats.stored(TRADES, SEEN_PER_SOURCE as u64, 1_000));
    }

    #[test]
    fn own_frames_start_at_first_sequence() {
        let own = OwnFrames {
            producer: "ingest-1-a".into(),
            batch_id: 5,
            first_seq: 10,
        };
        let frame = |producer: &str, batch_id: u64, seq: u64| EventFrame {
            v: monitor_core::messages::MESSAGE_VERSION,
            task_id: 1,
            batch_id: Some(batch_id),
            epoch: 1,
            chain: monitor_core::messages::Chain::Eth,
            producer: producer.into(),
            seq,
            events: vec![],
        };
        assert!(own.contains(&frame("ingest-1-a", 5, 10)));
        assert!(
            !own.contains(&frame("ingest-1-a", 5, 9)),
            "an earlier runner's frame"
        );
        assert!(!own.contains(&frame("ingest-1-a", 6, 10)), "another batch");
        assert!(
            !own.contains(&frame("ingest-2-b", 5, 10)),
            "another instance"
        );
    }
}
