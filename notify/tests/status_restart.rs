//! Status changes and heartbeats on the Java WebSocket across a restart of notify, and the
//! alert counters they carry, against real MariaDB, NATS JetStream and devkit's backend-stub.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on a broken set-up.

mod common;

use std::time::Duration;

use common::{eventually, price_alert, stop_notify, Env, Stub};
use monitor_core::codec;
use monitor_core::messages::{
    BatchStatus, Heartbeat, StatusChange, StatusMessage, StatusScope, MESSAGE_VERSION,
};
use monitor_core::time::now_ms;
use serde_json::Value;

const BATCH_RUNNING: StatusScope = StatusScope::Batch {
    task_id: 4,
    batch_id: 12345,
};
const BATCH_PAUSED: StatusScope = StatusScope::Batch {
    task_id: 4,
    batch_id: 12346,
};
const TASK: StatusScope = StatusScope::Task { task_id: 9 };
/// A batch that only sends heartbeats, used to see that earlier messages were handled.
const MARKER: StatusScope = StatusScope::Batch {
    task_id: 4,
    batch_id: 777,
};

fn heartbeat(scope: StatusScope, sent_ms: i64) -> StatusMessage {
    StatusMessage::Heartbeat(Heartbeat {
        v: MESSAGE_VERSION,
        scope,
        consumer_id: "server-01-12345".into(),
        progress: 50.0,
        item_count: 99,
        events: 120,
        errors: 0,
        last_error: None,
        last_event_ms: None,
        last_block: None,
        sent_ms,
    })
}

fn change(scope: StatusScope, status: BatchStatus, sent_ms: i64) -> StatusMessage {
    StatusMessage::Change(StatusChange {
        v: MESSAGE_VERSION,
        scope,
        consumer_id: "server-01-12345".into(),
        status,
        reason: None,
        item_count: 99,
        progress: 30.0,
        errors: 0,
        sent_ms,
    })
}

async fn publish_status(env: &Env, message: &StatusMessage) {
    let scope = match message {
        StatusMessage::Heartbeat(h) => h.scope,
        StatusMessage::Change(c) => c.scope,
    };
    let subject = match scope {
        StatusScope::Batch { task_id, batch_id } => env.subjects.batch_status(task_id, batch_id),
        StatusScope::Task { task_id } => env.subjects.task_status(task_id),
    };
    env.publish(
        subject,
        async_nats::HeaderMap::new(),
        codec::encode(message).unwrap(),
    )
    .await;
}

/// `batch_status` messages of `batch_id` recorded by the stub.
fn batch_statuses(stub: &Stub, batch_id: u64) -> Vec<Value> {
    stub.received("batch_status")
        .into_iter()
        .filter(|m| m["data"]["batchId"] == batch_id)
        .collect()
}

fn task_statuses(stub: &Stub, task_id: u64) -> Vec<Value> {
    stub.received("task_status")
        .into_iter()
        .filter(|m| m["data"]["taskId"] == task_id)
        .collect()
}

/// Publishes fresh marker heartbeats until the stub has one, so that everything notify sent
/// before it has arrived too. Heartbeats are dropped while notify is not connected, hence the
/// repeats.
async fn pass_marker(env: &Env, stub: &Stub) {
    let before = stub.received("batch_heartbeat").len();
    eventually("a marker heartbeat at the stub", || async {
        publish_status(env, &heartbeat(MARKER, now_ms())).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        stub.received("batch_heartbeat")
            .iter()
            .skip(before)
            .any(|m| m["data"]["batchId"] == 777)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_statuses_resent_after_restart() {
    let env = Env::new("status_restart").await;
    let stub = env.start_stub().await;
    let notify = env.notify_process(&stub.url());
    let mut first_run = notify.spawn("notify");
    // Heartbeats are forwarded only while connected.
    assert!(
        first_run
            .wait_for_log("connected to the java websocket", Duration::from_secs(60))
            .await,
        "{}",
        first_run.log()
    );
    let t0 = now_ms();

    publish_status(&env, &change(BATCH_RUNNING, BatchStatus::Running, t0)).await;
    publish_status(&env, &change(BATCH_PAUSED, BatchStatus::Paused, t0 + 1)).await;
    publish_status(&env, &change(TASK, BatchStatus::Running, t0 + 2)).await;
    // Ten heartbeats on the running batch's subject: the stream keeps 8 messages per subject,
    // so its status change is no longer in the stream.
    for i in 0..10 {
        publish_status(&env, &heartbeat(BATCH_RUNNING, now_ms() + i)).await;
    }
    stub.wait_for("batch_heartbeat", 10).await;
    assert_eq!(batch_statuses(&stub, 12345).len(), 1);
    assert_eq!(batch_statuses(&stub, 12346).len(), 1);
    assert_eq!(task_statuses(&stub, 9).len(), 1);

    first_run.terminate().await;
    let mut second_run = notify.spawn("notify");
    pass_marker(&env, &stub).await;

    let running = batch_statuses(&stub, 12345);
    let paused = batch_statuses(&stub, 12346);
    let task = task_statuses(&stub, 9);
    assert_eq!(
        running.len(),
        2,
        "the running batch's status is sent once more"
    );
    assert_eq!(
        paused.len(),
        2,
        "the paused batch's status is sent once more"
    );
    assert_eq!(task.len(), 2, "the task's status is sent once more");
    assert_eq!(running[1]["data"]["status"], "running");
    assert_eq!(
        running[1]["data"]["timestamp"], t0,
        "the change keeps its own time"
    );
    assert_eq!(paused[1]["data"]["status"], "paused");
    assert_eq!(task[1]["data"]["status"], 1);
    assert_eq!(task[1]["data"]["message"], "任务运行中");
    assert!(
        second_run
            .wait_for_log("restored the latest statuses", Duration::from_secs(30))
            .await,
        "{}",
        second_run.log()
    );
    stub.assert_no_violations();

    second_run.terminate().await;
    stub.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_messages_carry_alert_counts() {
    let env = Env::new("status_counts").await;
    let stub = env.start_stub().await;
    let notify = env.start_notify(env.notify_settings(&stub.url()));

    // Three alerts of batch 12345 and two of batch 12346, all of task 4.
    let mut newest_of_batch = 0;
    for (i, (batch_id, event_time)) in [
        (12345, 1_700_000_000_000_i64),
        (12345, 1_700_000_300_000),
        (12345, 1_700_000_100_000),
        (12346, 1_700_000_900_000),
        (12346, 1_700_000_200_000),
    ]
    .into_iter()
    .enumerate()
    {
        let mut alert = price_alert(&format!("4:0xc02a:price_change:{i}"), event_time);
        alert.batch_id = Some(batch_id);
        if batch_id == 12345 {
            newest_of_batch = newest_of_batch.max(event_time);
        }
        env.publish_alert(&alert, &alert.id).await;
    }
    stub.wait_for("alert", 5).await;

    // Heartbeats carry the counts as soon as notify has read them.
    let heartbeat_counts = eventually("a batch heartbeat with three alerts", || async {
        publish_status(&env, &heartbeat(BATCH_RUNNING, now_ms())).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        stub.received("batch_heartbeat")
            .into_iter()
            .rev()
            .find(|m| m["data"]["batchId"] == 12345 && m["data"]["totalAlerts"] == 3)
    })
    .await;
    assert_eq!(heartbeat_counts["data"]["lastAlertTime"], newest_of_batch);

    publish_status(&env, &change(BATCH_RUNNING, BatchStatus::Running, now_ms())).await;
    publish_status(
        &env,
        &change(
            StatusScope::Task { task_id: 4 },
            BatchStatus::Running,
            now_ms(),
        ),
    )
    .await;
    publish_status(&env, &change(BATCH_PAUSED, BatchStatus::Paused, now_ms())).await;
    let status = &stub.wait_for("batch_status", 2).await;
    let details = |batch_id: u64| {
        status
            .iter()
            .find(|m| m["data"]["batchId"] == batch_id)
            .map(|m| m["data"]["details"].clone())
            .unwrap()
    };
    assert_eq!(details(12345)["totalAlerts"], 3);
    assert_eq!(details(12345)["lastAlertTime"], newest_of_batch);
    assert_eq!(details(12346)["totalAlerts"], 2);
    assert_eq!(details(12346)["lastAlertTime"], 1_700_000_900_000_i64);
    let task = stub.wait_for("task_status", 1).await;
    assert_eq!(task[0]["data"]["totalAlerts"], 5);
    assert_eq!(task[0]["data"]["lastAlertTime"], 1_700_000_900_000_i64);

    // A batch without alerts reports zero and no time.
    pass_marker(&env, &stub).await;
    let marker = stub
        .received("batch_heartbeat")
        .into_iter()
        .find(|m| m["data"]["batchId"] == 777)
        .unwrap();
    assert_eq!(marker["data"]["totalAlerts"], 0);
    assert_eq!(marker["data"]["lastAlertTime"], Value::Null);
    stub.assert_no_violations();

    stop_notify(notify).await;
    stub.stop().await;
    env.cleanup().await;
}
