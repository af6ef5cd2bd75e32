//! Alerts from the stream to `monitor_alert_log_v2` and the Java WebSocket, against real
//! MariaDB, NATS JetStream and a WebSocket peer.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on a broken set-up.

mod common;

use common::{eventually, free_addr, price_alert, stop_notify, Env, JavaPeer};
use monitor_core::messages::AlertState;
use monitor_core::{titles, Locale, Subjects};
use monitor_notify::jetstream::DEAD_REASON_HEADER;
use sqlx::Row;

const CONSUMER: &str = Subjects::NOTIFY_ALERTS_CONSUMER;

/// Row id, push status and alert_data of the row of `alert_key`, if it exists.
async fn alert_row(env: &Env, alert_key: &str) -> Option<(u64, String, String)> {
    let row = sqlx::query(
        "SELECT id, notify_status, title FROM monitor_alert_log_v2 WHERE alert_key = ?",
    )
    .bind(alert_key)
    .fetch_optional(&env.pool)
    .await
    .expect("failed to read monitor_alert_log_v2")?;
    let id: i64 = row.get("id");
    Some((id as u64, row.get("notify_status"), row.get("title")))
}

#[tokio::test]
async fn alert_published_twice_is_stored_once_and_pushed_with_row_id() {
    let env = Env::new("once").await;
    let peer = JavaPeer::start("127.0.0.1:0".parse().unwrap(), true).await;
    let notify = env.start_notify(env.notify_settings(&peer.url()));
    let alert = price_alert("4:0xc02a:price_change:5580000", 1_700_000_000_123);

    env.publish_alert(&alert, "first-publish").await;
    env.publish_alert(&alert, "second-publish").await;
    env.wait_acked(&env.subjects.alerts_stream(), CONSUMER, 2)
        .await;

    assert_eq!(env.row_count(&alert.id).await, 1);
    let (row_id, _, title) = alert_row(&env, &alert.id).await.expect("alert row");
    assert_eq!(title, titles::alert_title(&alert, Locale::ZhCn));
    let pushed = peer.wait_for("alert", 1).await;
    assert_eq!(
        pushed.len(),
        1,
        "a redelivered alert whose row is pushed is not pushed again"
    );
    let message = &pushed[0].message;
    assert_eq!(message["data"]["alertId"], row_id);
    assert_eq!(message["data"]["alertType"], "price_change");
    assert_eq!(message["data"]["alertData"]["ca"], alert.target_value);
    assert_eq!(
        message["data"]["alertData"]["eventTime"],
        alert.event_time_ms
    );
    assert_eq!(message["data"]["alertData"]["title"], title);
    assert!(message["timestamp"].is_i64());
    eventually("the row to be marked pushed", || async {
        let (_, status, _) = alert_row(&env, &alert.id).await?;
        (status == "pushed").then_some(())
    })
    .await;

    stop_notify(notify).await;
    peer.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn alert_waits_pending_until_java_websocket_starts() {
    let env = Env::new("pending").await;
    let addr = free_addr().await;
    let notify = env.start_notify(env.notify_settings(&format!("ws://{addr}/websocket/monitor")));
    let alert = price_alert("4:0xc02a:price_change:5580001", 1_700_000_000_456);

    env.publish_alert(&alert, &alert.id).await;
    env.wait_acked(&env.subjects.alerts_stream(), CONSUMER, 1)
        .await;
    let (row_id, status, _) = alert_row(&env, &alert.id)
        .await
        .expect("row stored while the socket is down");
    assert_eq!(status, "pending");

    let peer = JavaPeer::start(addr, true).await;
    let pushed = peer.wait_for("alert", 1).await;
    assert_eq!(pushed[0].message["data"]["alertId"], row_id);
    eventually("the row to be marked pushed", || async {
        let (_, status, _) = alert_row(&env, &alert.id).await?;
        (status == "pushed").then_some(())
    })
    .await;

    stop_notify(notify).await;
    peer.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn pending_alerts_are_pushed_by_event_time_before_new_ones() {
    let env = Env::new("order").await;
    let addr = free_addr().await;
    let notify = env.start_notify(env.notify_settings(&format!("ws://{addr}/websocket/monitor")));
    // Published out of event-time order while the socket is down.
    let late = price_alert("4:a:price_change:3", 1_700_000_300_000);
    let early = price_alert("4:a:price_change:1", 1_700_000_100_000);
    let middle = price_alert("4:a:price_change:2", 1_700_000_200_000);
    for alert in [&late, &early, &middle] {
        env.publish_alert(alert, &alert.id).await;
    }
    env.wait_acked(&env.subjects.alerts_stream(), CONSUMER, 3)
        .await;

    let peer = JavaPeer::start(addr, true).await;
    peer.wait_for("alert", 3).await;
    let newest = price_alert("4:a:price_change:0", 1_600_000_000_000);
    env.publish_alert(&newest, &newest.id).await;
    let pushed = peer.wait_for("alert", 4).await;

    let event_times: Vec<_> = pushed
        .iter()
        .map(|r| {
            r.message["data"]["alertData"]["eventTime"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        event_times,
        vec![
            early.event_time_ms,
            middle.event_time_ms,
            late.event_time_ms,
            newest.event_time_ms
        ]
    );

    stop_notify(notify).await;
    peer.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn undecodable_alert_goes_to_dead_stream_and_next_alert_is_pushed() {
    let env = Env::new("dead").await;
    let peer = JavaPeer::start("127.0.0.1:0".parse().unwrap(), true).await;
    let notify = env.start_notify(env.notify_settings(&peer.url()));

    let garbage = b"\xc1 not messagepack".to_vec();
    env.publish(
        env.subjects.alerts(4),
        async_nats::HeaderMap::new(),
        garbage.clone(),
    )
    .await;
    let alert = price_alert("4:0xc02a:price_change:5580002", 1_700_000_000_789);
    env.publish_alert(&alert, &alert.id).await;

    let pushed = peer.wait_for("alert", 1).await;
    assert_eq!(
        pushed[0].message["data"]["alertData"]["ca"],
        alert.target_value
    );
    let dead_stream = env
        .js
        .get_stream(env.subjects.dead_stream())
        .await
        .expect("dead stream");
    let dead = eventually("a message on the dead stream", || async {
        dead_stream
            .get_last_raw_message_by_subject(&env.subjects.dead("notify"))
            .await
            .ok()
    })
    .await;
    assert_eq!(dead.payload.as_ref(), garbage.as_slice());
    let reason = dead
        .headers
        .get(DEAD_REASON_HEADER)
        .map(|v| v.as_str().to_owned())
        .expect("dead message carries a reason");
    assert!(reason.contains("failed to decode alert"), "{reason}");
    env.wait_acked(&env.subjects.alerts_stream(), CONSUMER, 2)
        .await;

    stop_notify(notify).await;
    peer.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn alert_unacked_until_table_returns() {
    let env = Env::new("dbdown").await;
    let peer = JavaPeer::start("127.0.0.1:0".parse().unwrap(), true).await;
    sqlx::query("RENAME TABLE monitor_alert_log_v2 TO monitor_alert_log_v2_away")
        .execute(&env.pool)
        .await
        .expect("failed to rename the table");
    let notify = env.start_notify(env.notify_settings(&peer.url()));
    let alert = price_alert("4:0xc02a:price_change:5580003", 1_700_000_001_000);

    env.publish_alert(&alert, &alert.id).await;
    // notify keeps the alert it cannot store: delivered, and neither acked nor nak'ed.
    let alerts_stream = env
        .js
        .get_stream(env.subjects.alerts_stream())
        .await
        .expect("alerts stream");
    eventually("the alert to be delivered", || async {
        let info = alerts_stream.consumer_info(CONSUMER).await.ok()?;
        (info.delivered.stream_sequence >= 1 && info.num_ack_pending == 1).then_some(())
    })
    .await;
    assert_eq!(
        env.acked(&env.subjects.alerts_stream(), CONSUMER).await,
        0,
        "an alert that was not stored must not be acked"
    );
    assert!(peer.received("alert").is_empty());

    sqlx::query("RENAME TABLE monitor_alert_log_v2_away TO monitor_alert_log_v2")
        .execute(&env.pool)
        .await
        .expect("failed to rename the table back");
    let pushed = peer.wait_for("alert", 1).await;
    let (row_id, _, _) = alert_row(&env, &alert.id).await.expect("alert row");
    assert_eq!(pushed[0].message["data"]["alertId"], row_id);
    assert_eq!(env.row_count(&alert.id).await, 1);
    env.wait_acked(&env.subjects.alerts_stream(), CONSUMER, 1)
        .await;

    stop_notify(notify).await;
    peer.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn retracted_alert_updates_row_and_pushes_alert_update() {
    let env = Env::new("retract").await;
    let peer = JavaPeer::start("127.0.0.1:0".parse().unwrap(), true).await;
    let notify = env.start_notify(env.notify_settings(&peer.url()));
    let mut alert = price_alert("4:0xabc:large_transaction:21000000", 1_700_000_004_000);
    alert.state = AlertState::Provisional;

    env.publish_alert(&alert, &alert.id).await;
    let pushed = peer.wait_for("alert", 1).await;
    assert_eq!(
        pushed[0].message["data"]["alertData"]["state"],
        "provisional"
    );
    alert.state = AlertState::Retracted;
    env.publish_alert(&alert, &format!("{}:retracted", alert.id))
        .await;
    let updates = peer.wait_for("alert_update", 1).await;

    let (row_id, _, _) = alert_row(&env, &alert.id).await.expect("alert row");
    assert_eq!(updates[0].message["data"]["alertId"], row_id);
    assert_eq!(updates[0].message["data"]["state"], "retracted");
    assert_eq!(updates[0].message["data"]["reason"], "区块重组，告警已撤回");
    assert_eq!(env.row_count(&alert.id).await, 1);
    let (state, data_state): (String, String) = sqlx::query_as(
        "SELECT state, CAST(JSON_UNQUOTE(JSON_EXTRACT(alert_data, '$.state')) AS CHAR) FROM monitor_alert_log_v2 WHERE id = ?",
    )
    .bind(row_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(state, "retracted");
    assert_eq!(data_state, "retracted");
    eventually("the row to be marked pushed again", || async {
        let (_, status, _) = alert_row(&env, &alert.id).await?;
        (status == "pushed").then_some(())
    })
    .await;

    stop_notify(notify).await;
    peer.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn burst_with_rejected_row_stores_rest() {
    let env = Env::new("burst").await;
    let peer = JavaPeer::start("127.0.0.1:0".parse().unwrap(), true).await;

    // Published before notify starts, so that its first pulls take many alerts at once.
    let alerts: Vec<_> = (0..150)
        .map(|n| price_alert(&format!("4:0xc02a:price_change:{n}"), 1_700_000_000_000 + n))
        .collect();
    let mut rejected = price_alert("4:0xc02a:price_change:rejected", 1_700_000_000_075);
    rejected.target_value = "0x".repeat(100); // longer than the column's 128 characters
    for (n, alert) in alerts.iter().enumerate() {
        env.publish_alert(alert, &alert.id).await;
        if n == 40 {
            // the same alert again under another msg id, inside the same batch
            env.publish_alert(alert, "repeat").await;
        }
        if n == 75 {
            env.publish_alert(&rejected, &rejected.id).await;
        }
    }
    let published = alerts.len() as u64 + 2;

    let notify = env.start_notify(env.notify_settings(&peer.url()));
    env.wait_acked(&env.subjects.alerts_stream(), CONSUMER, published)
        .await;

    for alert in &alerts {
        assert_eq!(env.row_count(&alert.id).await, 1, "rows of {}", alert.id);
    }
    assert_eq!(env.row_count(&rejected.id).await, 0);
    let pushed = peer.wait_for("alert", alerts.len()).await;
    let mut times: Vec<i64> = pushed
        .iter()
        .map(|p| {
            p.message["data"]["alertData"]["eventTime"]
                .as_i64()
                .expect("eventTime")
        })
        .collect();
    assert_eq!(
        times.len(),
        alerts.len(),
        "each stored alert is pushed once"
    );
    times.sort_unstable();
    times.dedup();
    assert_eq!(times.len(), alerts.len(), "no alert is pushed twice");

    let dead_stream = env
        .js
        .get_stream(env.subjects.dead_stream())
        .await
        .expect("dead stream");
    let dead = eventually("the rejected alert on the dead stream", || async {
        dead_stream
            .get_last_raw_message_by_subject(&env.subjects.dead("notify"))
            .await
            .ok()
    })
    .await;
    let reason = dead
        .headers
        .get(DEAD_REASON_HEADER)
        .map(|v| v.as_str().to_owned())
        .expect("dead message carries a reason");
    assert!(
        reason.contains("failed to insert alert 4:0xc02a:price_change:rejected"),
        "{reason}"
    );
    eventually("every row to be marked pushed", || async {
        let pending: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM monitor_alert_log_v2 WHERE notify_status <> 'pushed'",
        )
        .fetch_one(&env.pool)
        .await
        .ok()?;
        (pending == 0).then_some(())
    })
    .await;

    stop_notify(notify).await;
    peer.stop().await;
    env.cleanup().await;
}
