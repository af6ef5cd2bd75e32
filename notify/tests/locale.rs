//! Text shown to users (alert titles, task status messages, alert update reasons) in the
//! notify binary's locale: zh-CN by default, English with `MONITOR_LOCALE=en`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on a broken set-up.

mod common;

use std::time::Duration;

use common::{price_alert, Env};
use monitor_core::messages::{
    AlertState, AlertType, BatchStatus, StatusChange, StatusMessage, StatusScope, MESSAGE_VERSION,
};
use monitor_core::time::now_ms;
use monitor_core::{codec, titles, Locale};
use serde_json::Value;

/// What the stub received for one alert, one retraction and one task status.
struct Shown {
    db_title: String,
    alert_title: Value,
    task_message: Value,
    update_reason: Value,
}

/// Runs the notify binary with `locale_env` set, sends it an alert, the retraction of a
/// provisional block alert and a task status without a reason, and returns the texts shown.
async fn shown_texts(
    name: &str,
    locale_env: Option<&str>,
) -> (Shown, Vec<monitor_core::messages::Alert>) {
    let env = Env::new(name).await;
    let stub = env.start_stub().await;
    let mut builder = env.notify_process(&stub.url());
    if let Some(locale) = locale_env {
        builder = builder.env("MONITOR_LOCALE", locale);
    }
    let mut notify = builder.spawn("notify");
    assert!(
        notify
            .wait_for_log("connected to the java websocket", Duration::from_secs(60))
            .await,
        "{}",
        notify.log()
    );

    let alert = price_alert("4:0xc02a:price_change:1", 1_700_000_000_000);
    env.publish_alert(&alert, &alert.id).await;
    let mut block_alert = price_alert("4:0xabc:large_transaction:21000000", 1_700_000_001_000);
    block_alert.alert_type = AlertType::LargeTransaction;
    block_alert.findings[0].rule = AlertType::LargeTransaction;
    block_alert.state = AlertState::Provisional;
    env.publish_alert(&block_alert, &format!("{}:provisional", block_alert.id))
        .await;
    stub.wait_for("alert", 2).await;
    block_alert.state = AlertState::Retracted;
    env.publish_alert(&block_alert, &format!("{}:retracted", block_alert.id))
        .await;
    let change = StatusMessage::Change(StatusChange {
        v: MESSAGE_VERSION,
        scope: StatusScope::Task { task_id: 4 },
        consumer_id: "allocator".into(),
        status: BatchStatus::Stopped,
        reason: None,
        item_count: 0,
        progress: 0.0,
        errors: 0,
        sent_ms: now_ms(),
    });
    env.publish(
        env.subjects.task_status(4),
        async_nats::HeaderMap::new(),
        codec::encode(&change).unwrap(),
    )
    .await;

    let updates = stub.wait_for("alert_update", 1).await;
    let task = stub.wait_for("task_status", 1).await;
    let alerts = stub.received("alert");
    let pushed = alerts
        .iter()
        .find(|m| m["data"]["alertData"]["alertKey"] == alert.id)
        .unwrap();
    let db_title: String =
        sqlx::query_scalar("SELECT title FROM monitor_alert_log_v2 WHERE alert_key = ?")
            .bind(&alert.id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    let shown = Shown {
        db_title,
        alert_title: pushed["data"]["alertData"]["title"].clone(),
        task_message: task[0]["data"]["message"].clone(),
        update_reason: updates[0]["data"]["reason"].clone(),
    };
    stub.assert_no_violations();

    notify.terminate().await;
    stub.stop().await;
    env.cleanup().await;
    (shown, vec![alert])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chinese_texts_by_default() {
    let (shown, alerts) = shown_texts("locale_default", None).await;

    let title = titles::alert_title(&alerts[0], Locale::ZhCn);
    assert!(title.contains("价格上涨"), "{title}");
    assert_eq!(shown.db_title, title);
    assert_eq!(shown.alert_title, title.as_str());
    assert_eq!(shown.task_message, "任务已停止");
    assert_eq!(shown.update_reason, "区块重组，告警已撤回");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn english_texts_with_monitor_locale_en() {
    let (shown, alerts) = shown_texts("locale_en", Some("en")).await;

    let title = titles::alert_title(&alerts[0], Locale::En);
    assert!(title.is_ascii(), "{title}");
    assert_eq!(shown.db_title, title);
    assert_eq!(shown.alert_title, title.as_str());
    assert_eq!(shown.task_message, "Task stopped");
    assert_eq!(
        shown.update_reason,
        "retracted after a chain reorganization"
    );
}
