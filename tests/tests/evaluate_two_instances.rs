//! Two `evaluate` processes on one durable consumer: every alert reaches MySQL exactly once.
//!
//! The test writes a task and its batch into the tasks bucket, starts two `evaluate run`
//! processes with small pulls, `notify` and `devkit backend-stub`, and publishes frames the
//! way ingest does. Every frame is published twice under different message ids, as after an
//! ingest restart, so both instances may judge the same events. The alerts stream and
//! `monitor_alert_log_v2` must then hold each alert once, and both instances must have
//! judged frames.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on a broken set-up.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::HeaderMap;
use monitor_core::codec;
use monitor_core::messages::{
    BatchRef, BatchSpec, BatchStatus, Chain, ConfigSpec, Event, EventFrame, EventKind, Side,
    TargetRef, TargetSpec, TaskSpec, TaskType, TokenSnapshot, Trade, MESSAGE_VERSION,
};
use monitor_core::rules::{LargeTradeRule, Rules, SideFilter, TokenRules, TriggerLogic};
use monitor_core::Subjects;
use monitor_tests::{free_port, wait_until, Process, TestEnv};
use serde_json::Value;
use sqlx::Row;

const TASK_ID: u64 = 51;
const BATCH_ID: u64 = 510;
const TARGET_ID: u64 = 5100;
const WETH: &str = "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2";
/// A source time on a whole 300-second boundary.
const T0: i64 = 1_700_000_100_000;
const COOLDOWN_SEC: u32 = 300;
/// Frames with distinct alerts; each is published twice.
const FRAMES: u64 = 200;

fn task_spec() -> TaskSpec {
    let rules = TokenRules {
        price_change: None,
        volume: None,
        holder_change: None,
        large_trade: Some(LargeTradeRule {
            side: SideFilter::Any,
            min_usd: 10_000.0,
        }),
        cumulative_buy: None,
        top_holders: None,
        cooldown_sec: COOLDOWN_SEC,
    };
    TaskSpec {
        v: MESSAGE_VERSION,
        task_id: TASK_ID,
        name: "two instances".into(),
        task_type: TaskType::Smart,
        chain: Chain::Eth,
        epoch: 1,
        config: Some(ConfigSpec {
            config_id: 5,
            version: 2,
            name: "large trades".into(),
            trigger_logic: TriggerLogic::Or,
            rules: Rules::Token(rules),
        }),
        batches: vec![BatchRef {
            batch_id: BATCH_ID,
            batch_no: 1,
            item_count: 1,
            status: BatchStatus::Running,
        }],
        config_error: None,
        published_ms: T0,
    }
}

fn batch_spec() -> BatchSpec {
    BatchSpec {
        v: MESSAGE_VERSION,
        batch_id: BATCH_ID,
        task_id: TASK_ID,
        epoch: 1,
        batch_no: 1,
        status: BatchStatus::Running,
        targets: vec![TargetSpec {
            target_id: TARGET_ID,
            address: WETH.into(),
            pair_address: None,
            token_name: Some("Wrapped Ether".into()),
            token_symbol: Some("WETH".into()),
            market_cap: Some(5e9),
            source: None,
            batch_order: 0,
        }],
    }
}

/// A frame with one large trade in cooldown bucket `bucket`, published under `seq`.
fn frame(seq: u64, bucket: u64) -> EventFrame {
    let time_ms = T0 + bucket as i64 * i64::from(COOLDOWN_SEC) * 1000;
    EventFrame {
        v: MESSAGE_VERSION,
        task_id: TASK_ID,
        batch_id: Some(BATCH_ID),
        epoch: 1,
        chain: Chain::Eth,
        producer: "ingest-test".into(),
        seq,
        events: vec![Event {
            source_time_ms: time_ms,
            ingest_time_ms: time_ms + 5,
            target: Some(TargetRef {
                target_id: TARGET_ID,
                address: WETH.into(),
            }),
            kind: EventKind::Trade(Trade {
                side: Side::Buy,
                volume_usd: 20_000.0,
                price_usd: Some(2000.0),
                tx_hash: Some(format!("0x{bucket:064x}")),
                owner: None,
            }),
            snapshot: Some(TokenSnapshot {
                price: Some(2000.0),
                ..TokenSnapshot::default()
            }),
        }],
    }
}

async fn publish_frame(js: &jetstream::Context, subjects: &Subjects, frame: &EventFrame) {
    let subject = subjects.batch_events(frame.chain, frame.task_id, BATCH_ID);
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", frame.msg_id());
    let payload = codec::encode(frame).expect("a frame encodes");
    js.publish_with_headers(subject, headers, payload.into())
        .await
        .expect("the frame is sent")
        .await
        .expect("the frame is stored");
}

async fn consumer_info(
    js: &jetstream::Context,
    stream_name: &str,
    consumer: &str,
) -> Option<jetstream::consumer::Info> {
    let stream = js.get_stream(stream_name).await.ok()?;
    let mut consumer = stream
        .get_consumer::<jetstream::consumer::pull::Config>(consumer)
        .await
        .ok()?;
    consumer.info().await.ok().cloned()
}

/// Whether the consumer has delivered and settled every message of its stream.
async fn consumer_settled(js: &jetstream::Context, stream_name: &str, consumer: &str) -> bool {
    let Ok(mut stream) = js.get_stream(stream_name).await else {
        return false;
    };
    let Ok(stream_info) = stream.info().await else {
        return false;
    };
    let last = stream_info.state.last_sequence;
    consumer_info(js, stream_name, consumer)
        .await
        .is_some_and(|info| {
            info.delivered.stream_sequence >= last
                && info.num_pending == 0
                && info.num_ack_pending == 0
        })
}

async fn alert_keys(env: &TestEnv) -> BTreeMap<String, i64> {
    sqlx::query(
        "SELECT alert_key, COUNT(*) AS copies FROM monitor_alert_log_v2 \
         WHERE task_id = ? GROUP BY alert_key",
    )
    .bind(TASK_ID)
    .fetch_all(env.pool())
    .await
    .expect("alert rows can be read")
    .into_iter()
    .map(|row| (row.get("alert_key"), row.get("copies")))
    .collect()
}

/// Reads `frames_acked` from the JSON log line an evaluate process writes when it stops.
fn frames_acked(process: &Process) -> u64 {
    process
        .log()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["message"] == "event consumer stopped")
        .and_then(|line| line["frames_acked"].as_u64())
        .unwrap_or_else(|| panic!("{} logged no counts:\n{}", process.name(), process.log()))
}

fn start_evaluate(env: &TestEnv, name: &str) -> Process {
    env.stage("evaluate")
        .arg("run")
        .env("EVALUATE_BATCH", "4")
        .env("LOG_FORMAT", "json")
        .spawn(name)
}

async fn start_backend_stub(env: &TestEnv) -> (Process, String) {
    let address = format!("127.0.0.1:{}", free_port());
    let out = env.work_dir().join("backend-stub.jsonl");
    let process = env
        .stage("devkit")
        .args(["backend-stub", "--listen", address.as_str(), "--out"])
        .arg(&out)
        .spawn("backend-stub");
    assert!(
        process
            .wait_for_log("listening on", Duration::from_secs(30))
            .await,
        "backend-stub did not start:\n{}",
        process.log()
    );
    (process, address)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_evaluate_processes_write_each_alert_once() {
    let env = TestEnv::new("eval_two_instances").await;
    let subjects = env.subjects();
    let topology = env.topology().await;
    let js = env.jetstream().await;
    topology
        .tasks
        .put(
            Subjects::task_key(TASK_ID),
            codec::encode(&task_spec()).expect("encodes").into(),
        )
        .await
        .expect("the task spec is stored");
    topology
        .tasks
        .put(
            Subjects::batch_key(BATCH_ID),
            codec::encode(&batch_spec()).expect("encodes").into(),
        )
        .await
        .expect("the batch spec is stored");

    let (_stub, stub_address) = start_backend_stub(&env).await;
    let _notify = env
        .stage("notify")
        .arg("run")
        .env("WS_URL", format!("ws://{stub_address}/websocket/monitor"))
        .spawn("notify");
    let mut first = start_evaluate(&env, "evaluate-1");
    let mut second = start_evaluate(&env, "evaluate-2");

    // Both instances have a pull request waiting before the first frame is stored, so the
    // server hands the frames out to both.
    let events_stream = subjects.events_stream();
    let both_pulling = wait_until(
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            consumer_info(&js, &events_stream, Subjects::EVALUATE_CONSUMER)
                .await
                .is_some_and(|info| info.num_waiting >= 2)
        },
    )
    .await;
    assert!(
        both_pulling,
        "both evaluate instances pull from the consumer"
    );

    for bucket in 0..FRAMES {
        publish_frame(&js, &subjects, &frame(bucket, bucket)).await;
        publish_frame(&js, &subjects, &frame(FRAMES + bucket, bucket)).await;
    }

    let alerts_stream = subjects.alerts_stream();
    let settled = wait_until(
        Duration::from_secs(120),
        Duration::from_millis(250),
        || async {
            consumer_settled(&js, &events_stream, Subjects::EVALUATE_CONSUMER).await
                && consumer_settled(&js, &alerts_stream, Subjects::NOTIFY_ALERTS_CONSUMER).await
                && alert_keys(&env).await.len() as u64 >= FRAMES
        },
    )
    .await;
    let keys = alert_keys(&env).await;
    assert!(
        settled,
        "frames and alerts did not settle: {} alert rows of {FRAMES}",
        keys.len()
    );

    assert_eq!(
        keys.len() as u64,
        FRAMES,
        "one alert row per cooldown bucket"
    );
    let bucket0 = T0 / 1000 / i64::from(COOLDOWN_SEC);
    for bucket in 0..FRAMES as i64 {
        let key = format!("{TASK_ID}:{WETH}:large_trade:{}", bucket0 + bucket);
        assert_eq!(keys.get(&key), Some(&1), "rows of {key}");
    }
    let mut alerts = js.get_stream(&alerts_stream).await.expect("alerts stream");
    let stored_alerts = alerts.info().await.expect("stream info").state.messages;
    assert_eq!(
        stored_alerts, FRAMES,
        "the alerts stream stores each id once"
    );

    first.terminate().await;
    second.terminate().await;
    let (acked_first, acked_second) = (frames_acked(&first), frames_acked(&second));
    assert!(acked_first > 0, "the first instance judged no frame");
    assert!(acked_second > 0, "the second instance judged no frame");
    assert!(
        acked_first + acked_second >= 2 * FRAMES,
        "{acked_first} + {acked_second} frames acked, {} stored",
        2 * FRAMES
    );
}
