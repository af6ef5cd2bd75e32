//! `monitor_alert_log_v2` as the outbox, with the notify binary against real MariaDB, NATS
//! JetStream and devkit's backend-stub. Alerts that arrive while the Java side is down are
//! stored and survive a restart of notify. When the Java side returns, they are all pushed in
//! `event_time` order, before any newer alert. A state change that the Java side missed
//! arrives as `alert_update`, not as the whole alert again.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on a broken set-up.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use chrono::NaiveDateTime;
use common::{eventually, price_alert, Env, Stub};
use monitor_core::messages::{Alert, AlertState, AlertType};
use monitor_core::Subjects;
use monitor_tests::free_port;
use sqlx::Row;

const CONSUMER: &str = Subjects::NOTIFY_ALERTS_CONSUMER;

/// `count` alerts of task 4 whose event times are spread over `span_ms` and published newest
/// first, so that publish order and event-time order differ.
fn alerts_newest_first(prefix: &str, count: usize, base_ms: i64, span_ms: i64) -> Vec<Alert> {
    let step = span_ms / count as i64;
    (0..count)
        .map(|i| {
            let event_time = base_ms + (count - 1 - i) as i64 * step;
            price_alert(&format!("4:{prefix}:price_change:{i}"), event_time)
        })
        .collect()
}

/// Rows of task 4 as `(id, event time in ms, notify_status)`, in `(event_time, id)` order.
async fn rows(env: &Env) -> Vec<(i64, i64, String)> {
    sqlx::query(
        "SELECT id, event_time, notify_status FROM monitor_alert_log_v2 \
         WHERE task_id = 4 ORDER BY event_time, id",
    )
    .fetch_all(&env.pool)
    .await
    .expect("failed to read monitor_alert_log_v2")
    .iter()
    .map(|row| {
        let event_time: NaiveDateTime = row.get("event_time");
        (
            row.get("id"),
            event_time.and_utc().timestamp_millis(),
            row.get("notify_status"),
        )
    })
    .collect()
}

/// Alert ids in the order of their first push.
fn first_push_order(stub: &Stub) -> Vec<i64> {
    let mut seen = HashSet::new();
    stub.received("alert")
        .iter()
        .filter_map(|m| m["data"]["alertId"].as_i64())
        .filter(|id| seen.insert(*id))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_pushes_in_order_after_restart_and_outage() {
    let env = Env::new("outbox").await;
    let stub_addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let stub_dir = env.test.work_dir().join("stub");
    let ws_url = format!("ws://{stub_addr}/websocket/monitor");
    let notify = env.notify_process(&ws_url);
    let mut first_run = notify.spawn("notify");

    // The Java side is down: alerts are stored pending and acked.
    let before_restart = alerts_newest_first("a", 30, 1_700_000_000_000, 600_000);
    for alert in &before_restart {
        env.publish_alert(alert, &alert.id).await;
    }
    env.wait_acked(&env.subjects.alerts_stream(), CONSUMER, 30)
        .await;
    let stored = rows(&env).await;
    assert_eq!(stored.len(), 30);
    assert!(
        stored.iter().all(|(_, _, status)| status == "pending"),
        "nothing can be pushed while the Java side is down"
    );

    // A restart in between: the pending rows stay, and more alerts arrive, with event times
    // between the earlier ones.
    let status = first_run.terminate().await;
    assert!(status.success(), "notify exited with {status}");
    let mut second_run = notify.spawn("notify");
    let after_restart = alerts_newest_first("b", 20, 1_700_000_000_007, 600_000);
    for alert in &after_restart {
        env.publish_alert(alert, &alert.id).await;
    }
    env.wait_acked(&env.subjects.alerts_stream(), CONSUMER, 50)
        .await;
    assert_eq!(rows(&env).await.len(), 50);

    // The Java side returns: every row is pushed once, oldest event first.
    let stub = Stub::start(stub_addr, &stub_dir).await;
    eventually("every row to be marked pushed", || async {
        let rows = rows(&env).await;
        rows.iter()
            .all(|(_, _, status)| status == "pushed")
            .then_some(())
    })
    .await;
    let stored = rows(&env).await;
    let expected_order: Vec<i64> = stored.iter().map(|(id, _, _)| *id).collect();
    let mut event_times: Vec<i64> = before_restart
        .iter()
        .chain(&after_restart)
        .map(|a| a.event_time_ms)
        .collect();
    event_times.sort();
    assert_eq!(
        stored.iter().map(|(_, t, _)| *t).collect::<Vec<_>>(),
        event_times,
        "every alert has its row, with its event time"
    );
    let pushed = stub.wait_for("alert", 50).await;
    assert_eq!(first_push_order(&stub), expected_order);
    assert_eq!(
        pushed.len(),
        50,
        "each row is pushed once when no session ended in between"
    );

    // A new alert, older than all of them, comes after the outbox.
    let newest = price_alert("4:c:price_change:0", 1_600_000_000_000);
    env.publish_alert(&newest, &newest.id).await;
    let received = stub.wait_for("alert", 51).await;
    assert_eq!(
        received[50]["data"]["alertData"]["alertKey"], newest.id,
        "the alert published after the flush is pushed last"
    );

    assert!(
        second_run
            .wait_for_log("java websocket greeted the client", Duration::from_secs(30))
            .await,
        "notify logs the connected greeting:\n{}",
        second_run.log()
    );
    assert!(
        second_run.log().contains("WebSocket连接成功"),
        "the greeting text of the Java side is logged"
    );
    stub.assert_no_violations();

    second_run.terminate().await;
    stub.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retraction_during_outage_arrives_as_alert_update() {
    let env = Env::new("outbox_update").await;
    let stub_addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let stub_dir = env.test.work_dir().join("stub");
    let stub = Stub::start(stub_addr, &stub_dir).await;
    let notify = env.notify_process(&format!("ws://{stub_addr}/websocket/monitor"));
    let mut first_run = notify.spawn("notify");
    let mut alert = price_alert("4:0xabc:large_transaction:21000000", 1_700_000_000_000);
    alert.alert_type = AlertType::LargeTransaction;
    alert.findings[0].rule = AlertType::LargeTransaction;
    alert.state = AlertState::Provisional;
    env.publish_alert(&alert, &format!("{}:provisional", alert.id))
        .await;
    let pushed = stub.wait_for("alert", 1).await;
    let row_id = pushed[0]["data"]["alertId"].as_i64().unwrap();

    // The Java side goes away; the retraction arrives meanwhile, and notify restarts.
    stub.stop().await;
    assert!(
        first_run
            .wait_for_log("java websocket disconnected", Duration::from_secs(60))
            .await,
        "{}",
        first_run.log()
    );
    alert.state = AlertState::Retracted;
    env.publish_alert(&alert, &format!("{}:retracted", alert.id))
        .await;
    env.wait_acked(&env.subjects.alerts_stream(), CONSUMER, 2)
        .await;
    let (state, status): (String, String) =
        sqlx::query_as("SELECT state, notify_status FROM monitor_alert_log_v2 WHERE id = ?")
            .bind(row_id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(state, "retracted");
    assert_eq!(status, "pending", "the change waits in the outbox");
    first_run.terminate().await;
    let mut second_run = notify.spawn("notify");

    let stub = Stub::start(stub_addr, &stub_dir).await;
    let updates = stub.wait_for("alert_update", 1).await;
    assert_eq!(updates[0]["data"]["alertId"], row_id);
    assert_eq!(updates[0]["data"]["state"], "retracted");
    assert_eq!(
        stub.received("alert").len(),
        1,
        "the Java side received the alert once, then only its update"
    );
    eventually("the row to be marked pushed", || async {
        let status: String =
            sqlx::query_scalar("SELECT notify_status FROM monitor_alert_log_v2 WHERE id = ?")
                .bind(row_id)
                .fetch_one(&env.pool)
                .await
                .ok()?;
        (status == "pushed").then_some(())
    })
    .await;
    stub.assert_no_violations();

    second_run.terminate().await;
    stub.stop().await;
    env.cleanup().await;
}
