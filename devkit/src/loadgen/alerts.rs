//! The receiving end of a run: the backend stub's messages, turned into alert counts and
//! latencies.
//!
//! Consumes the JSON lines that [`crate::backend_stub`] writes for every message notify sends.
//! The stub runs in this process with an [`AlertSink`] as its output, so a line reaches the
//! sink microseconds after the stub read the message. For every `alert` message it reads the
//! alert key (`alertData.alertKey`) and the trade's transaction hash
//! (`alertData.extra.trade.tx_hash`), which carries the [`TradeTag`] the feed wrote. The
//! latency of an alert is its receive time minus the tag's send time, both on the run clock.
//! An alert key seen before is counted as a repeat and not measured again.

use std::collections::HashSet;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use serde_json::Value;
use tokio::io::AsyncWrite;

use super::feed::InFlightWindow;
use super::report::Latencies;
use super::schedule::{Phase, TradeTag};
use super::RunClock;

/// What the stub received so far.
#[derive(Debug, Default)]
pub struct AlertTally {
    /// Distinct alerts by the phase of the trade that raised them.
    pub by_phase: [u64; 5],
    /// Alerts whose trade hash carries no tag.
    pub untagged: u64,
    /// Alerts received again under a key already seen (notify pushes at least once).
    pub repeats: u64,
    /// Latencies of the measured alerts, in microseconds.
    pub measured: Latencies,
    /// Run clock time of the last measured alert, in nanoseconds.
    pub last_measured_ns: Option<u64>,
    /// Latencies from the trade to evaluate's publish of its alert, for the measured alerts
    /// seen on the alerts subject, in microseconds. The rest of [`AlertTally::measured`] is
    /// notify's share: its pull, the alert log in MySQL and the push.
    pub published: Latencies,
}

impl AlertTally {
    pub fn received(&self, phase: Phase) -> u64 {
        self.by_phase[phase as usize]
    }

    pub fn total(&self) -> u64 {
        self.by_phase.iter().sum::<u64>() + self.untagged
    }
}

/// The alerts received by the stub, shared between the sink and the run.
#[derive(Debug)]
pub struct AlertBook {
    clock: RunClock,
    /// The feed's in-flight window, told of every tagged alert.
    window: Option<Arc<InFlightWindow>>,
    state: Mutex<BookState>,
}

#[derive(Debug, Default)]
struct BookState {
    keys: HashSet<String>,
    tally: AlertTally,
}

impl AlertBook {
    pub fn new(clock: RunClock, window: Option<Arc<InFlightWindow>>) -> Arc<AlertBook> {
        Arc::new(AlertBook {
            clock,
            window,
            state: Mutex::default(),
        })
    }

    /// Runs `read` on the tally.
    pub fn read<T>(&self, read: impl FnOnce(&mut AlertTally) -> T) -> Option<T> {
        self.state
            .lock()
            .ok()
            .map(|mut state| read(&mut state.tally))
    }

    /// Whether an alert with this key was received.
    pub fn has_key(&self, key: &str) -> bool {
        self.state
            .lock()
            .map(|state| state.keys.contains(key))
            .unwrap_or(false)
    }

    /// Records an alert that evaluate published, seen at `seen_ns` on the run clock.
    pub fn record_published(&self, tx_hash: Option<&str>, seen_ns: u64) {
        let Some(tag) = tx_hash.and_then(TradeTag::from_tx_hash) else {
            return;
        };
        if tag.phase != Phase::Measure {
            return;
        }
        if let Ok(mut state) = self.state.lock() {
            let latency_ns = seen_ns.saturating_sub(tag.sent_ns);
            state.tally.published.record(latency_ns / 1000);
        }
    }

    pub fn clock(&self) -> RunClock {
        self.clock
    }

    /// Records one line of the stub's output received at `received_ns` on the run clock.
    pub fn record_line(&self, line: &str, received_ns: u64) {
        // Cheap test first: most lines are heartbeats and status messages.
        if !line.contains(r#""type":"alert""#) {
            return;
        }
        let Some((key, tag)) = alert_of(line) else {
            tracing::warn!(
                line_len = line.len(),
                "backend stub line is an alert without alertData.alertKey"
            );
            return;
        };
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if !state.keys.insert(key) {
            state.tally.repeats += 1;
            return;
        }
        let tally = &mut state.tally;
        match tag {
            None => tally.untagged += 1,
            Some(tag) => {
                if let Some(window) = &self.window {
                    window.add_received();
                }
                tally.by_phase[tag.phase as usize] += 1;
                if tag.phase == Phase::Measure {
                    let latency_ns = received_ns.saturating_sub(tag.sent_ns);
                    tally.measured.record(latency_ns / 1000);
                    tally.last_measured_ns = Some(
                        tally
                            .last_measured_ns
                            .map_or(received_ns, |last| last.max(received_ns)),
                    );
                }
            }
        }
    }
}

/// Returns the key of an `alert` message and the tag of its trade, if it has one.
fn alert_of(line: &str) -> Option<(String, Option<TradeTag>)> {
    let message: Value = serde_json::from_str(line).ok()?;
    if message.get("type").and_then(Value::as_str) != Some("alert") {
        return None;
    }
    let data = message.get("data")?.get("alertData")?;
    let key = data.get("alertKey")?.as_str()?.to_owned();
    let tag = data
        .pointer("/extra/trade/tx_hash")
        .and_then(Value::as_str)
        .and_then(TradeTag::from_tx_hash);
    Some((key, tag))
}

/// The backend stub's output: splits what it writes into lines and records each line in the
/// book at once.
pub struct AlertSink {
    book: Arc<AlertBook>,
    pending: Vec<u8>,
}

impl AlertSink {
    pub fn new(book: Arc<AlertBook>) -> Self {
        AlertSink {
            book,
            pending: Vec::new(),
        }
    }

    fn take_lines(&mut self) {
        let received_ns = self.book.clock.elapsed_ns();
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            match std::str::from_utf8(&line[..end]) {
                Ok(text) => self.book.record_line(text, received_ns),
                Err(_) => tracing::warn!("backend stub wrote a line that is not UTF-8"),
            }
        }
    }
}

impl AsyncWrite for AlertSink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.pending.extend_from_slice(buf);
        self.take_lines();
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::io::AsyncWriteExt;

    fn alert_line(key: &str, tag: Option<TradeTag>) -> String {
        let extra = tag.map(
            |t| json!({"trade": {"side": "buy", "volume_usd": 1.0, "tx_hash": t.to_tx_hash()}}),
        );
        json!({
            "type": "alert",
            "data": {"alertId": 1, "alertType": "large_trade", "alertData": {"alertKey": key, "extra": extra}},
        })
        .to_string()
    }

    fn tag(phase: Phase, sent_ns: u64) -> TradeTag {
        TradeTag {
            phase,
            seq: 9,
            sent_ns,
        }
    }

    #[test]
    fn measured_alert_gives_its_latency() {
        let book = AlertBook::new(RunClock::start(), None);
        book.record_line(
            &alert_line("1:a:large_trade:5", Some(tag(Phase::Measure, 1_000_000))),
            3_500_000,
        );

        let (measured, p50, last) = book
            .read(|t| {
                (
                    t.received(Phase::Measure),
                    t.measured.percentile(0.5),
                    t.last_measured_ns,
                )
            })
            .unwrap();
        assert_eq!(measured, 1);
        assert_eq!(p50, Some(2_500));
        assert_eq!(last, Some(3_500_000));
    }

    #[test]
    fn repeated_key_is_counted_once() {
        let book = AlertBook::new(RunClock::start(), None);
        let line = alert_line("1:a:large_trade:5", Some(tag(Phase::Warmup, 0)));
        book.record_line(&line, 10);
        book.record_line(&line, 20);

        let (warmup, repeats, latencies) = book
            .read(|t| (t.received(Phase::Warmup), t.repeats, t.measured.len()))
            .unwrap();
        assert_eq!(warmup, 1);
        assert_eq!(repeats, 1);
        assert_eq!(latencies, 0, "only measured alerts have latencies");
    }

    #[test]
    fn other_messages_and_untagged_alerts() {
        let book = AlertBook::new(RunClock::start(), None);
        book.record_line(r#"{"type":"batch_heartbeat","data":{}}"#, 1);
        book.record_line(r#"{"type":"alert_update","data":{"alertId":1}}"#, 1);
        book.record_line(&alert_line("1:b:large_trade:5", None), 1);

        let (total, untagged) = book.read(|t| (t.total(), t.untagged)).unwrap();
        assert_eq!(total, 1);
        assert_eq!(untagged, 1);
    }

    #[tokio::test]
    async fn sink_records_whole_lines_across_writes() {
        let book = AlertBook::new(RunClock::start(), None);
        let mut sink = AlertSink::new(Arc::clone(&book));
        let line = alert_line("1:c:large_trade:5", Some(tag(Phase::Measure, 0)));
        let (head, tail) = line.split_at(20);

        sink.write_all(head.as_bytes()).await.unwrap();
        assert_eq!(book.read(|t| t.total()), Some(0));
        sink.write_all(format!("{tail}\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(book.read(|t| t.received(Phase::Measure)), Some(1));
    }
}
