//! The ingest stage run in-process against the real NATS server and a real WebSocket server
//! that speaks the Birdeye protocol and replays recorded ETH/USDT trades.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use monitor_core::messages::{
    BatchStatus, Event, EventKind, Side, StatusChange, StatusMessage, StatusScope, WindowStats,
};
use monitor_core::rules::{PriceChangeRule, TokenRules, VolumeRule};
use monitor_core::settings::RuntimeSettings;
use monitor_ingest::birdeye;
use monitor_ingest::ownership::{self, rendezvous_owner, LeaseKey};
use monitor_ingest::plan::SUBSCRIBE_SETTLE;
use monitor_ingest::publish::MAX_EVENTS_PER_FRAME;
use monitor_ingest::settings::IngestSettings;
use support::*;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// An ingest stage running in this process.
struct Ingest {
    consumer_id: String,
    shutdown: CancellationToken,
    handle: JoinHandle<Result<(), monitor_ingest::IngestError>>,
}

impl Ingest {
    fn start(
        nats: &Nats,
        server: &FeedServer,
        configure: impl FnOnce(&mut IngestSettings),
    ) -> Ingest {
        // Logs only on request: they go to stderr, which the test harness does not capture.
        if std::env::var_os("RUST_LOG").is_some() {
            monitor_core::telemetry::init(monitor_core::telemetry::LogFormat::Text);
        }
        let prefix = nats.settings.subject_prefix.clone();
        let mut settings =
            IngestSettings::local(&nats.settings.url, &prefix, server.url.clone(), API_KEY);
        settings.heartbeat_interval = Duration::from_secs(3600);
        settings.runtime.consumer_id_prefix = Some(prefix);
        configure(&mut settings);
        let consumer_id = settings.runtime.consumer_id();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(monitor_ingest::run(settings, shutdown.clone()));
        Ingest {
            consumer_id,
            shutdown,
            handle,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.handle.await.unwrap().unwrap();
    }
}

fn is_change(record: &StatusRecord, batch_id: u64, status: BatchStatus) -> bool {
    matches!(&record.message, StatusMessage::Change(c)
        if c.status == status && matches!(c.scope, StatusScope::Batch { batch_id: b, .. } if b == batch_id))
}

/// Returns the first change of batch `batch_id` to `status` in `records`.
fn first_change(records: &[StatusRecord], batch_id: u64, status: BatchStatus) -> &StatusChange {
    records
        .iter()
        .find_map(|r| match &r.message {
            StatusMessage::Change(change) if is_change(r, batch_id, status) => Some(change),
            _ => None,
        })
        .unwrap_or_else(|| panic!("batch {batch_id} never changed to {status}"))
}

/// Reads status messages into `records` until batch `batch_id` has changed to `status`.
async fn read_change(
    reader: &mut StreamReader,
    records: &mut Vec<StatusRecord>,
    batch_id: u64,
    status: BatchStatus,
) {
    let what = format!("batch {batch_id} {status}");
    read_status_until(reader, records, &what, |r| {
        r.iter().any(|r| is_change(r, batch_id, status))
    })
    .await;
}

/// Reads frames into `frames` until batch `batch_id` has published the trade `tx_hash(tx)`.
async fn read_trade(
    reader: &mut StreamReader,
    frames: &mut Vec<Published>,
    batch_id: u64,
    tx: usize,
    what: &str,
) {
    read_frames_until(reader, frames, what, |f| {
        trade_hashes(f, batch_id).contains(&tx_hash(tx))
    })
    .await;
}

fn event_count(frames: &[Published]) -> usize {
    frames.iter().map(|p| p.frame.events.len()).sum()
}

fn trade_hashes(frames: &[Published], batch_id: u64) -> Vec<String> {
    frames
        .iter()
        .filter(|p| p.frame.batch_id == Some(batch_id))
        .flat_map(|p| &p.frame.events)
        .filter_map(|e| match &e.kind {
            EventKind::Trade(t) => t.tx_hash.clone(),
            _ => None,
        })
        .collect()
}

fn tx_hash(tx: usize) -> String {
    format!("0x{tx:064x}")
}

#[tokio::test]
async fn frames_carry_trades_candles_and_snapshots() {
    let nats = Nats::new(&unique_prefix("frames")).await;
    let trades = recorded_trades(6);
    let candles = candles_after_each_trade(&trades[..5]);
    let script_trades = trades.clone();
    let script_candles = candles.clone();
    let server = FeedServer::start(move |sub| match (sub.channel, sub.repeat) {
        (FeedChannel::Trades, 0) => {
            let mut frames: Vec<Action> = script_trades[..5]
                .iter()
                .enumerate()
                .map(|(i, t)| Action::Send(simple_trade_frame(WETH, t, i)))
                .collect();
            let malformed = simple_trade_frame(WETH, &script_trades[0], 99).replace(
                &format!("\"volumeUSD\":{}", script_trades[0].cost),
                "\"volumeUSD\":\"abc\"",
            );
            frames.push(Action::Send(malformed));
            frames.push(Action::Send(complex_trade_frame(
                USDT,
                PEPE,
                &script_trades[5],
                5,
            )));
            frames
        }
        (FeedChannel::Prices, 0) => script_candles
            .iter()
            .map(|c| Action::Send(price_frame(WETH, c)))
            .collect(),
        _ => vec![],
    })
    .await;
    let mut events = StreamReader::new(&nats.js, &nats.subjects().events_stream()).await;
    let mut status = StreamReader::new(&nats.js, &nats.subjects().status_stream()).await;

    nats.put_batch(&batch(
        101,
        1,
        1,
        &[(11, WETH, Some(2.0e11)), (12, PEPE, None)],
    ))
    .await;
    nats.put_task(&task(1, 1, token_rules(), &[101])).await;
    let ingest = Ingest::start(&nats, &server, |s| {
        s.heartbeat_interval = Duration::from_millis(300)
    });

    let mut frames = Vec::new();
    read_frames_until(&mut events, &mut frames, "11 events", |f| {
        event_count(f) >= 11
    })
    .await;
    assert_eq!(
        event_count(&frames),
        11,
        "5 WETH trades, 1 PEPE trade, 5 candles; the malformed frame gives none"
    );

    // Subjects, msg ids and frame headers.
    let subject = nats
        .subjects()
        .batch_events(monitor_core::messages::Chain::Eth, 1, 101);
    for (i, published) in frames.iter().enumerate() {
        let seq = i as u64 + 1;
        assert_eq!(published.subject, subject);
        assert_eq!(
            published.msg_id.as_deref(),
            Some(format!("{}:101:{seq}", ingest.consumer_id).as_str())
        );
        assert_eq!(published.msg_id, Some(published.frame.msg_id()));
        assert_eq!(published.frame.seq, seq);
        assert_eq!(published.frame.producer, ingest.consumer_id);
        assert_eq!(published.frame.task_id, 1);
        assert_eq!(published.frame.batch_id, Some(101));
        assert_eq!(published.frame.epoch, 1);
    }
    let all: Vec<_> = frames.iter().flat_map(|p| p.frame.events.clone()).collect();

    // WETH trades: in order, with sums over every window length the rules use.
    let weth_trades: Vec<_> = all
        .iter()
        .filter(|e| {
            matches!(e.kind, EventKind::Trade(_)) && e.target.as_ref().unwrap().address == WETH
        })
        .collect();
    assert_eq!(weth_trades.len(), 5);
    let times: Vec<i64> = weth_trades.iter().map(|e| e.source_time_ms).collect();
    assert_eq!(
        times,
        trades[..5].iter().map(|t| t.time_ms).collect::<Vec<_>>()
    );
    let last = weth_trades[4];
    assert_eq!(last.target.as_ref().unwrap().target_id, 11);
    let EventKind::Trade(trade) = &last.kind else {
        unreachable!()
    };
    assert_eq!(trade.volume_usd, trades[4].cost);
    assert_eq!(trade.price_usd, Some(trades[4].price));
    assert_eq!(trade.tx_hash, Some(tx_hash(4)));
    let snapshot = last.snapshot.as_ref().unwrap();
    assert_eq!(snapshot.market_cap, Some(2.0e11));
    let lengths: Vec<u32> = snapshot.windows.iter().map(|w| w.window_sec).collect();
    assert_eq!(lengths, vec![60, 120, 300]);
    let total: f64 = trades[..5].iter().map(|t| t.cost).sum();
    let bought: f64 = trades[..5]
        .iter()
        .filter(|t| t.is_buy)
        .map(|t| t.cost)
        .sum();
    for window in &snapshot.windows {
        assert!(
            (window.volume_usd - total).abs() < 1e-6,
            "{window:?} volume, expected {total}"
        );
        assert!(
            (window.buy_usd - bought).abs() < 1e-6,
            "{window:?} buys, expected {bought}"
        );
        assert!(
            (window.sell_usd - (total - bought)).abs() < 1e-6,
            "{window:?} sells"
        );
        assert_eq!(window.trades, 5);
    }

    // Candles: the price is the last close; the window starts at the first candle's open.
    let prices: Vec<_> = all
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Price(_)))
        .collect();
    assert_eq!(prices.len(), 5);
    let last_price = prices[4];
    let final_candle = candles[4];
    assert_eq!(last_price.source_time_ms, final_candle.unix_time * 1000);
    let EventKind::Price(price) = &last_price.kind else {
        unreachable!()
    };
    assert_eq!(
        (price.open, price.high, price.low, price.close),
        (
            final_candle.open,
            final_candle.high,
            final_candle.low,
            final_candle.close
        )
    );
    let snapshot = last_price.snapshot.as_ref().unwrap();
    assert_eq!(snapshot.price, Some(final_candle.close));
    let minute = snapshot.window(60).unwrap();
    assert_eq!(minute.start_price, Some(candles[0].open));
    assert_eq!(minute.start_time_ms, Some(candles[0].unix_time * 1000));
    assert_eq!(minute.high, Some(final_candle.high));
    assert_eq!(minute.low, Some(final_candle.low));

    // The complex-shape trade: PEPE is the `to` leg, so it is a buy at that leg's price.
    let pepe: Vec<_> = all
        .iter()
        .filter(|e| e.target.as_ref().unwrap().address == PEPE)
        .collect();
    assert_eq!(pepe.len(), 1);
    assert_eq!(pepe[0].target.as_ref().unwrap().target_id, 12);
    let EventKind::Trade(trade) = &pepe[0].kind else {
        panic!("expected a trade: {:?}", pepe[0])
    };
    assert_eq!(trade.side, Side::Buy);
    assert_eq!(trade.volume_usd, trades[5].cost);
    assert_eq!(trade.price_usd, Some(trades[5].price));
    let snapshot = pepe[0].snapshot.as_ref().unwrap();
    assert_eq!(snapshot.market_cap, None);
    assert_eq!(snapshot.window(300).unwrap().trades, 1);

    // The connection: URL, sub-protocol, origin and one subscription per channel.
    let handshakes = server.handshakes();
    assert_eq!(handshakes.len(), 2);
    for handshake in &handshakes {
        assert_eq!(handshake.path, "/socket/ethereum");
        assert_eq!(handshake.query.as_deref(), Some("x-api-key=test-key"));
        assert_eq!(handshake.protocol.as_deref(), Some("echo-protocol"));
        assert_eq!(
            handshake.origin.as_deref(),
            Some("ws://public-api.birdeye.so")
        );
    }
    let addresses = vec![WETH.to_owned(), PEPE.to_owned()];
    let subscriptions = server.subscriptions();
    let texts = |channel| {
        subscriptions
            .iter()
            .filter(|s| s.channel == channel)
            .map(|s| s.text.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        texts(FeedChannel::Trades),
        birdeye::trade_subscriptions(&addresses)
    );
    assert_eq!(
        texts(FeedChannel::Prices),
        birdeye::price_subscriptions(&addresses)
    );

    // Heartbeats count the events, the malformed frame, and both targets as seen.
    let mut records = Vec::new();
    read_status_until(
        &mut status,
        &mut records,
        "a heartbeat with all 11 events",
        |r| {
            r.iter()
                .any(|r| matches!(&r.message, StatusMessage::Heartbeat(h) if h.events == 11))
        },
    )
    .await;
    let heartbeat = records
        .iter()
        .find_map(|r| match &r.message {
            StatusMessage::Heartbeat(h) if h.events == 11 => Some(h.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        heartbeat.scope,
        StatusScope::Batch {
            task_id: 1,
            batch_id: 101
        }
    );
    assert_eq!(heartbeat.consumer_id, ingest.consumer_id);
    assert_eq!(heartbeat.progress, 100.0);
    assert_eq!(heartbeat.item_count, 2);
    assert_eq!(heartbeat.errors, 1);
    assert_eq!(
        heartbeat.last_error.as_deref(),
        Some(r#"malformed TXS_DATA frame: volumeUSD must be a number, got "abc""#)
    );
    assert_eq!(heartbeat.last_event_ms, Some(trades[5].time_ms));
    assert!(records
        .iter()
        .any(|r| is_change(r, 101, BatchStatus::Running)));
    assert!(records
        .iter()
        .all(|r| r.subject == nats.subjects().batch_status(1, 101)));

    ingest.stop().await;
    read_status_until(&mut status, &mut records, "the stopped status", |r| {
        r.iter().any(|r| is_change(r, 101, BatchStatus::Stopped))
    })
    .await;
    assert!(
        events.next(Duration::from_millis(500)).await.is_none(),
        "no frame beyond the 11 events"
    );
    nats.cleanup().await;
}

#[tokio::test]
async fn error_frame_makes_runner_resubscribe() {
    let nats = Nats::new(&unique_prefix("error")).await;
    let trades = recorded_trades(2);
    let script_trades = trades.clone();
    let server = FeedServer::start(move |sub| match (sub.channel, sub.repeat) {
        (FeedChannel::Trades, 0) => vec![
            Action::Send(simple_trade_frame(WETH, &script_trades[0], 0)),
            Action::Send(error_frame("quota exceeded for this key")),
        ],
        (FeedChannel::Trades, _) => {
            vec![Action::Send(simple_trade_frame(WETH, &script_trades[1], 1))]
        }
        _ => vec![],
    })
    .await;
    let mut events = StreamReader::new(&nats.js, &nats.subjects().events_stream()).await;
    let mut status = StreamReader::new(&nats.js, &nats.subjects().status_stream()).await;
    nats.put_batch(&batch(201, 2, 1, &[(21, WETH, None)])).await;
    nats.put_task(&task(2, 1, token_rules(), &[201])).await;
    let ingest = Ingest::start(&nats, &server, |_| {});

    let mut frames = Vec::new();
    read_frames_until(
        &mut events,
        &mut frames,
        "the trade sent after the reconnect",
        |f| trade_hashes(f, 201).contains(&tx_hash(1)),
    )
    .await;
    assert_eq!(trade_hashes(&frames, 201), vec![tx_hash(0), tx_hash(1)]);

    let trade_subscriptions: Vec<_> = server
        .subscriptions()
        .into_iter()
        .filter(|s| s.channel == FeedChannel::Trades)
        .collect();
    assert_eq!(trade_subscriptions.len(), 2, "subscribed again after ERROR");
    assert_eq!(trade_subscriptions[0].text, trade_subscriptions[1].text);
    assert_ne!(
        trade_subscriptions[0].connection, trade_subscriptions[1].connection,
        "on a new connection"
    );

    let mut records = Vec::new();
    read_status_until(&mut status, &mut records, "error then running", |r| {
        let error = r.iter().position(|r| {
            is_change(r, 201, BatchStatus::Error)
                && matches!(&r.message, StatusMessage::Change(c) if c.reason.as_deref().is_some_and(|x| x.contains("quota exceeded for this key")))
        });
        error.is_some_and(|i| r[i..].iter().any(|r| is_change(r, 201, BatchStatus::Running)))
    })
    .await;

    ingest.stop().await;
    nats.cleanup().await;
}

#[tokio::test]
async fn closed_socket_makes_runner_resubscribe() {
    let nats = Nats::new(&unique_prefix("close")).await;
    let trades = recorded_trades(8);
    let candles = candles_after_each_trade(&trades);
    let script_candles = candles.clone();
    let server = FeedServer::start(move |sub| match (sub.channel, sub.repeat) {
        (FeedChannel::Prices, 0) => vec![
            Action::Send(price_frame(WETH, &script_candles[0])),
            Action::Close,
        ],
        (FeedChannel::Prices, _) => vec![Action::Send(price_frame(WETH, &script_candles[7]))],
        _ => vec![],
    })
    .await;
    let mut events = StreamReader::new(&nats.js, &nats.subjects().events_stream()).await;
    nats.put_batch(&batch(301, 3, 1, &[(31, WETH, None)])).await;
    nats.put_task(&task(3, 1, token_rules(), &[301])).await;
    let ingest = Ingest::start(&nats, &server, |_| {});

    let mut frames = Vec::new();
    read_frames_until(&mut events, &mut frames, "two candles", |f| {
        event_count(f) >= 2
    })
    .await;
    let closes: Vec<f64> = frames
        .iter()
        .flat_map(|p| &p.frame.events)
        .filter_map(|e| match &e.kind {
            EventKind::Price(p) => Some(p.close),
            _ => None,
        })
        .collect();
    assert_eq!(closes, vec![candles[0].close, candles[7].close]);

    let subscriptions = server.subscriptions();
    let prices: Vec<_> = subscriptions
        .iter()
        .filter(|s| s.channel == FeedChannel::Prices)
        .collect();
    assert_eq!(prices.len(), 2, "subscribed again after the close");
    assert_eq!(prices[0].text, prices[1].text);
    assert_ne!(prices[0].connection, prices[1].connection);
    let trades_subscribed = subscriptions
        .iter()
        .filter(|s| s.channel == FeedChannel::Trades)
        .count();
    assert_eq!(
        trades_subscribed, 1,
        "the trades connection is not affected"
    );

    ingest.stop().await;
    nats.cleanup().await;
}

#[tokio::test]
async fn epoch_switch_keeps_old_batch_until_new_runs() {
    let nats = Nats::new(&unique_prefix("epoch")).await;
    let trades = recorded_trades(3);
    let server = FeedServer::start(|_| vec![]).await;
    let mut events = StreamReader::new(&nats.js, &nats.subjects().events_stream()).await;
    let mut status = StreamReader::new(&nats.js, &nats.subjects().status_stream()).await;
    nats.put_batch(&batch(401, 4, 1, &[(41, WETH, None)])).await;
    nats.put_task(&task(4, 1, token_rules(), &[401])).await;
    let ingest = Ingest::start(&nats, &server, |_| {});

    let mut records = Vec::new();
    read_change(&mut status, &mut records, 401, BatchStatus::Running).await;

    // The new epoch cannot connect yet: the old batch must keep publishing.
    server.refuse_handshakes(true);
    nats.put_batch(&batch(402, 4, 2, &[(41, WETH, None), (42, PEPE, None)]))
        .await;
    nats.put_task(&task(4, 2, token_rules(), &[402])).await;
    wait_until("batch 402 trying both channels", || server.refused() >= 2).await;
    server.push(
        FeedChannel::Trades,
        WETH,
        simple_trade_frame(WETH, &trades[0], 0),
    );
    let mut frames = Vec::new();
    let during_switch = "the old batch publishing during the switch";
    read_trade(&mut events, &mut frames, 401, 0, during_switch).await;
    assert!(
        !records
            .iter()
            .any(|r| is_change(r, 401, BatchStatus::Stopped)),
        "batch 401 stopped before batch 402 ran: {records:#?}"
    );

    // Once the new epoch runs, the old batch keeps reading while the feed applies the new
    // subscriptions, then stops, and the new one carries the events.
    server.refuse_handshakes(false);
    read_change(&mut status, &mut records, 402, BatchStatus::Running).await;
    server.push(
        FeedChannel::Trades,
        WETH,
        simple_trade_frame(WETH, &trades[2], 2),
    );
    let after_run = "the old batch publishing after the new one runs";
    read_trade(&mut events, &mut frames, 401, 2, after_run).await;
    read_change(&mut status, &mut records, 401, BatchStatus::Stopped).await;
    let ran_ms = first_change(&records, 402, BatchStatus::Running).sent_ms;
    let stopped_ms = first_change(&records, 401, BatchStatus::Stopped).sent_ms;
    assert!(
        stopped_ms - ran_ms >= SUBSCRIBE_SETTLE.as_millis() as i64,
        "batch 401 stopped {} ms after batch 402 ran",
        stopped_ms - ran_ms
    );
    server.push(
        FeedChannel::Trades,
        PEPE,
        simple_trade_frame(PEPE, &trades[1], 1),
    );
    read_frames_until(&mut events, &mut frames, "a trade of the new batch", |f| {
        trade_hashes(f, 402).contains(&tx_hash(1))
    })
    .await;
    let new_frame = frames
        .iter()
        .find(|p| p.frame.batch_id == Some(402))
        .unwrap();
    assert_eq!(
        new_frame.subject,
        nats.subjects()
            .batch_events(monitor_core::messages::Chain::Eth, 4, 402)
    );
    assert_eq!(new_frame.frame.epoch, 2);

    ingest.stop().await;
    nats.cleanup().await;
}

/// Returns the first batch id from `from` whose lease rendezvous hashing gives to `owner`
/// among `members`.
fn batch_owned_by(from: u64, owner: &str, members: [&str; 2]) -> u64 {
    (from..)
        .find(|id| rendezvous_owner(&LeaseKey::batch(*id).to_string(), members) == Some(owner))
        .unwrap()
}

#[tokio::test]
async fn epoch_switch_across_instances_keeps_old_batch() {
    let prefix = unique_prefix("epoch_peer");
    let nats = Nats::new(&prefix).await;
    let trades = recorded_trades(3);
    let server = FeedServer::start(|_| vec![]).await;
    let mut events = StreamReader::new(&nats.js, &nats.subjects().events_stream()).await;
    let mut status = StreamReader::new(&nats.js, &nats.subjects().status_stream()).await;
    let instance = |name: &str| {
        let prefix = format!("{prefix}-{name}");
        move |settings: &mut IngestSettings| settings.runtime.consumer_id_prefix = Some(prefix)
    };
    let a = Ingest::start(&nats, &server, instance("a"));
    let (old_batch, new_batch) = {
        let b_id = RuntimeSettings {
            consumer_id_prefix: Some(format!("{prefix}-b")),
            ..RuntimeSettings::default()
        }
        .consumer_id();
        let members = [a.consumer_id.as_str(), b_id.as_str()];
        (
            batch_owned_by(6100, members[0], members),
            batch_owned_by(6200, members[1], members),
        )
    };
    nats.put_batch(&batch(old_batch, 6, 1, &[(61, WETH, None)]))
        .await;
    nats.put_task(&task(6, 1, token_rules(), &[old_batch]))
        .await;
    let mut records = Vec::new();
    read_change(&mut status, &mut records, old_batch, BatchStatus::Running).await;

    // A second instance joins; the old batch stays with the first one.
    let b = Ingest::start(&nats, &server, instance("b"));
    let leases = &nats.topology.leases;
    let member_key = format!("member.{}", b.consumer_id);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while leases.get(&member_key).await.unwrap().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{member_key} never appeared"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Both list the members once per ownership tick.
    tokio::time::sleep(2 * ownership::TICK).await;

    // The new epoch's batch goes to the second instance, which cannot connect yet. The first
    // instance finds that lease held elsewhere, and must keep the old batch running anyway.
    server.refuse_handshakes(true);
    nats.put_batch(&batch(
        new_batch,
        6,
        2,
        &[(61, WETH, None), (62, PEPE, None)],
    ))
    .await;
    nats.put_task(&task(6, 2, token_rules(), &[new_batch]))
        .await;
    wait_until("the new batch trying both channels", || {
        server.refused() >= 2
    })
    .await;
    tokio::time::sleep(2 * ownership::TICK).await;
    server.push(
        FeedChannel::Trades,
        WETH,
        simple_trade_frame(WETH, &trades[0], 0),
    );
    let mut frames = Vec::new();
    let during_switch = "the old batch publishing while the new one cannot connect";
    read_trade(&mut events, &mut frames, old_batch, 0, during_switch).await;

    // Once the new batch runs on the second instance, the old one keeps reading while the
    // feed applies the new subscriptions, then stops.
    server.refuse_handshakes(false);
    read_change(&mut status, &mut records, new_batch, BatchStatus::Running).await;
    let ran = first_change(&records, new_batch, BatchStatus::Running).clone();
    assert_eq!(ran.consumer_id, b.consumer_id);
    server.push(
        FeedChannel::Trades,
        WETH,
        simple_trade_frame(WETH, &trades[2], 2),
    );
    let after_run = "the old batch publishing after the new one runs";
    read_trade(&mut events, &mut frames, old_batch, 2, after_run).await;
    read_change(&mut status, &mut records, old_batch, BatchStatus::Stopped).await;
    let stopped = first_change(&records, old_batch, BatchStatus::Stopped);
    assert_eq!(stopped.consumer_id, a.consumer_id);
    let (ran_ms, stopped_ms) = (ran.sent_ms, stopped.sent_ms);
    assert!(
        stopped_ms - ran_ms >= SUBSCRIBE_SETTLE.as_millis() as i64,
        "the old batch stopped {} ms after the new one ran",
        stopped_ms - ran_ms
    );

    a.stop().await;
    b.stop().await;
    nats.cleanup().await;
}

/// Returns the 300 s window figures of the event of trade `tx` that batch `batch_id` published,
/// and the volume of trades `0..=tx` as published by any batch.
fn window_at_trade(frames: &[Published], batch_id: u64, tx: usize) -> (WindowStats, f64) {
    let hash = |event: &Event| match &event.kind {
        EventKind::Trade(trade) => trade.tx_hash.clone(),
        _ => None,
    };
    let event = frames
        .iter()
        .filter(|p| p.frame.batch_id == Some(batch_id))
        .flat_map(|p| &p.frame.events)
        .find(|e| hash(e) == Some(tx_hash(tx)))
        .unwrap_or_else(|| panic!("batch {batch_id} published no trade {tx}"));
    let window = event
        .snapshot
        .as_ref()
        .unwrap()
        .window(300)
        .unwrap()
        .clone();
    let mut volumes = std::collections::BTreeMap::new();
    for event in frames.iter().flat_map(|p| &p.frame.events) {
        if let (Some(hash), EventKind::Trade(trade)) = (hash(event), &event.kind) {
            volumes.insert(hash, trade.volume_usd);
        }
    }
    let expected = (0..=tx).map(|t| volumes[&tx_hash(t)]).sum();
    (window, expected)
}

/// A feed of WETH trades and the readers of the events and status streams, for the tests of
/// windows across runners.
struct WindowRun {
    server: FeedServer,
    trades: Vec<RecordedTrade>,
    events: StreamReader,
    status: StreamReader,
    records: Vec<StatusRecord>,
    frames: Vec<Published>,
}

impl WindowRun {
    /// Puts task `task_id` with WETH in batch `batch_id` of epoch 1, under a 300 s volume rule.
    async fn start(nats: &Nats, task_id: u64, batch_id: u64) -> WindowRun {
        let run = WindowRun {
            server: FeedServer::start(|_| vec![]).await,
            trades: recorded_trades(4),
            events: StreamReader::new(&nats.js, &nats.subjects().events_stream()).await,
            status: StreamReader::new(&nats.js, &nats.subjects().status_stream()).await,
            records: Vec::new(),
            frames: Vec::new(),
        };
        nats.put_batch(&batch(batch_id, task_id, 1, &[(1, WETH, None)]))
            .await;
        nats.put_task(&task(task_id, 1, volume_only(300), &[batch_id]))
            .await;
        run
    }

    /// Waits until batch `batch_id` reports `status` (again).
    async fn wait_for(&mut self, batch_id: u64, status: BatchStatus) {
        self.records.clear();
        read_change(&mut self.status, &mut self.records, batch_id, status).await;
    }

    /// Sends WETH trade `tx` and waits until batch `batch_id` has published it.
    async fn trade(&mut self, tx: usize, batch_id: u64, waiting_for: &str) {
        let frame = simple_trade_frame(WETH, &self.trades[tx], tx);
        self.server.push(FeedChannel::Trades, WETH, frame);
        read_trade(
            &mut self.events,
            &mut self.frames,
            batch_id,
            tx,
            waiting_for,
        )
        .await;
    }

    /// Asserts that the 300 s window of batch `batch_id`'s event for trade `tx` counts trades 0
    /// to `tx` once each: their number, and their volume as any batch published it.
    fn assert_window_counts_trades_to(&self, batch_id: u64, tx: usize) {
        let (window, volume) = window_at_trade(&self.frames, batch_id, tx);
        assert_eq!(
            window.trades as usize,
            tx + 1,
            "trades 0 to {tx}, each once: {window:?}"
        );
        assert!(
            (window.volume_usd - volume).abs() < 1e-6,
            "window volume {} against {volume} for trades 0 to {tx}",
            window.volume_usd
        );
    }
}

#[tokio::test]
async fn restarted_ingest_reads_its_windows_back() {
    let nats = Nats::new(&unique_prefix("history_restart")).await;
    let mut run = WindowRun::start(&nats, 7, 701).await;
    let first = Ingest::start(&nats, &run.server, |_| {});
    run.wait_for(701, BatchStatus::Running).await;
    run.trade(0, 701, "the first trade").await;
    run.trade(1, 701, "the second trade").await;
    let first_id = first.consumer_id.clone();
    first.stop().await;

    // A restarted process has a new producer id (its random run part) and empty windows
    // until it reads the stored frames back.
    let restarted_prefix = format!("{}-restarted", nats.settings.subject_prefix);
    let second = Ingest::start(&nats, &run.server, |settings| {
        settings.runtime.consumer_id_prefix = Some(restarted_prefix)
    });
    assert_ne!(second.consumer_id, first_id);
    run.wait_for(701, BatchStatus::Running).await;
    run.trade(2, 701, "the trade after the restart").await;

    // Both earlier trades and the new one.
    run.assert_window_counts_trades_to(701, 2);

    second.stop().await;
    nats.cleanup().await;
}

#[tokio::test]
async fn epoch_switch_carries_windows_over_once() {
    let nats = Nats::new(&unique_prefix("history_epoch")).await;
    let mut run = WindowRun::start(&nats, 8, 801).await;
    let ingest = Ingest::start(&nats, &run.server, |_| {});
    run.wait_for(801, BatchStatus::Running).await;
    run.trade(0, 801, "the first trade").await;
    run.trade(1, 801, "the second trade").await;

    // The new epoch moves WETH to batch 802. While both run, a trade reaches both, and both
    // publish it; the new batch must count it once.
    nats.put_batch(&batch(802, 8, 2, &[(1, WETH, None), (2, PEPE, None)]))
        .await;
    nats.put_task(&task(8, 2, volume_only(300), &[802])).await;
    run.wait_for(802, BatchStatus::Running).await;
    run.trade(2, 801, "the old batch during the overlap").await;
    run.wait_for(801, BatchStatus::Stopped).await;
    run.trade(3, 802, "the new batch after the switch").await;

    run.assert_window_counts_trades_to(802, 3);

    ingest.stop().await;
    nats.cleanup().await;
}

fn volume_only(window_sec: u32) -> TokenRules {
    TokenRules {
        price_change: None,
        volume: Some(VolumeRule {
            window_sec,
            min_volume_usd: 1_000.0,
        }),
        holder_change: None,
        large_trade: None,
        cumulative_buy: None,
        top_holders: None,
        cooldown_sec: 300,
    }
}

#[tokio::test]
async fn config_change_updates_windows_without_reconnecting() {
    let nats = Nats::new(&unique_prefix("config")).await;
    let trades = recorded_trades(60);
    let first = trades[0];
    let server = FeedServer::start(move |sub| match (sub.channel, sub.repeat) {
        (FeedChannel::Trades, 0) => vec![Action::Send(simple_trade_frame(WETH, &first, 0))],
        _ => vec![],
    })
    .await;
    let mut events = StreamReader::new(&nats.js, &nats.subjects().events_stream()).await;
    nats.put_batch(&batch(501, 5, 1, &[(51, WETH, None)])).await;
    nats.put_task(&task(5, 1, volume_only(300), &[501])).await;
    let ingest = Ingest::start(&nats, &server, |_| {});

    let mut frames = Vec::new();
    read_frames_until(&mut events, &mut frames, "the first trade", |f| {
        event_count(f) >= 1
    })
    .await;
    let windows = &frames[0].frame.events[0].snapshot.as_ref().unwrap().windows;
    assert_eq!(
        windows.iter().map(|w| w.window_sec).collect::<Vec<_>>(),
        vec![300]
    );

    let mut changed = volume_only(300);
    changed.price_change = Some(PriceChangeRule {
        window_sec: 900,
        rise_pct: Some(3.0),
        fall_pct: None,
    });
    nats.put_task(&task(5, 1, changed, &[501])).await;

    // The change reaches the runner asynchronously: send trades until one carries both windows.
    let mut sent = 1;
    let snapshot = loop {
        assert!(
            sent < trades.len(),
            "no event with the new windows after {sent} trades"
        );
        server.push(
            FeedChannel::Trades,
            WETH,
            simple_trade_frame(WETH, &trades[sent], sent),
        );
        sent += 1;
        read_frames_until(&mut events, &mut frames, "the pushed trade", |f| {
            event_count(f) >= sent
        })
        .await;
        let last = frames.last().unwrap().frame.events.last().unwrap();
        let snapshot = last.snapshot.clone().unwrap();
        if snapshot.windows.len() == 2 {
            break snapshot;
        }
    };
    let lengths: Vec<u32> = snapshot.windows.iter().map(|w| w.window_sec).collect();
    assert_eq!(lengths, vec![300, 900]);
    assert_eq!(
        snapshot.window(300).unwrap().trades as usize,
        sent,
        "the 300 s window kept every trade"
    );
    assert_eq!(
        snapshot.window(900).unwrap().trades as usize,
        sent,
        "the new 900 s window read the earlier trades back"
    );
    assert_eq!(server.connections(), 2, "no reconnect for a config change");
    assert_eq!(server.subscriptions().len(), 2);

    ingest.stop().await;
    nats.cleanup().await;
}

/// Sends `trades` of WETH while the events stream is deleted, so that every publish fails and
/// the runner must hold and retry, then restores the stream and returns the frames that reach
/// it.
async fn frames_after_outage(
    nats: &Nats,
    server: &FeedServer,
    trades: &[RecordedTrade],
) -> Vec<Published> {
    nats.js
        .delete_stream(nats.subjects().events_stream())
        .await
        .unwrap();
    for (i, trade) in trades.iter().enumerate() {
        server.push(
            FeedChannel::Trades,
            WETH,
            simple_trade_frame(WETH, trade, i),
        );
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    monitor_core::topology::ensure(&nats.js, &nats.settings)
        .await
        .unwrap();

    let mut events = StreamReader::new(&nats.js, &nats.subjects().events_stream()).await;
    let mut frames = Vec::new();
    read_frames_until(&mut events, &mut frames, "every trade", |f| {
        event_count(f) >= trades.len()
    })
    .await;
    frames
}

/// Starts ingest with a buffer of `max_buffered_events` and waits until batch `batch_id` of
/// task `task_id` runs.
async fn running_batch(
    nats: &Nats,
    server: &FeedServer,
    task_id: u64,
    batch_id: u64,
    max_buffered_events: u32,
) -> Ingest {
    let mut status = StreamReader::new(&nats.js, &nats.subjects().status_stream()).await;
    nats.put_batch(&batch(batch_id, task_id, 1, &[(batch_id * 10, WETH, None)]))
        .await;
    nats.put_task(&task(task_id, 1, token_rules(), &[batch_id]))
        .await;
    let ingest = Ingest::start(nats, server, |s| {
        s.max_buffered_events = max_buffered_events
    });
    let mut records = Vec::new();
    read_status_until(&mut status, &mut records, "batch running", |r| {
        r.iter()
            .any(|r| is_change(r, batch_id, BatchStatus::Running))
    })
    .await;
    ingest
}

#[tokio::test]
async fn nats_outage_loses_no_events() {
    let nats = Nats::new(&unique_prefix("outage")).await;
    let trades = recorded_trades(20);
    let server = FeedServer::start(|_| vec![]).await;
    let ingest = running_batch(&nats, &server, 6, 601, 4).await;

    let frames = frames_after_outage(&nats, &server, &trades).await;
    let expected: Vec<String> = (0..20).map(tx_hash).collect();
    assert_eq!(
        trade_hashes(&frames, 601),
        expected,
        "every trade once, in order"
    );
    let seqs: Vec<u64> = frames.iter().map(|p| p.frame.seq).collect();
    assert_eq!(
        seqs,
        (1..=frames.len() as u64).collect::<Vec<_>>(),
        "frames retried in order, none skipped"
    );
    assert!(
        frames.len() < 20,
        "events that waited were coalesced into fewer frames: {}",
        frames.len()
    );

    ingest.stop().await;
    nats.cleanup().await;
}

/// A backlog larger than one frame leaves in frames of at most MAX_EVENTS_PER_FRAME events,
/// in feed order.
#[tokio::test]
async fn backlog_splits_into_full_frames() {
    let nats = Nats::new(&unique_prefix("backlog")).await;
    let total = 2 * MAX_EVENTS_PER_FRAME + 88;
    let trades = recorded_trades(total);
    let server = FeedServer::start(|_| vec![]).await;
    let ingest = running_batch(&nats, &server, 7, 611, 4096).await;

    let frames = frames_after_outage(&nats, &server, &trades).await;
    let expected: Vec<String> = (0..total).map(tx_hash).collect();
    assert_eq!(
        trade_hashes(&frames, 611),
        expected,
        "every trade once, in order"
    );
    let sizes: Vec<usize> = frames.iter().map(|p| p.frame.events.len()).collect();
    assert!(
        sizes.iter().all(|&size| size <= MAX_EVENTS_PER_FRAME),
        "frame sizes {sizes:?}"
    );
    let full = sizes
        .iter()
        .filter(|&&size| size == MAX_EVENTS_PER_FRAME)
        .count();
    assert!(full >= 2, "the backlog fills whole frames: {sizes:?}");

    ingest.stop().await;
    nats.cleanup().await;
}
