//! `AlertLog::insert` against a real MariaDB: a new alert is stored by one `INSERT`, and a
//! redelivered one finds the row the first delivery stored, with that row's status and state.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on a broken set-up.

mod common;

use common::{price_alert, Env};
use monitor_core::messages::AlertState;
use monitor_notify::alert_log::{AlertLog, LoggedAlert, NewAlertRow, NotifyStatus};
use serde_json::json;

#[tokio::test]
async fn redelivery_finds_first_row() {
    let env = Env::new("log_redelivery").await;
    let log = AlertLog::new(env.pool.clone());
    let mut alert = price_alert("4:0xc02a:large_trade:1700000000123", 1_700_000_000_123);
    alert.state = AlertState::Provisional;
    let alert_data = json!({"title": "first"});
    let row = NewAlertRow {
        alert: &alert,
        title: "first",
        alert_data: &alert_data,
    };

    let first = log.insert(&row).await.unwrap();
    assert_eq!(first.notify_status, NotifyStatus::Pending);
    assert_eq!(first.state, AlertState::Provisional);
    let (status, state): (String, String) =
        sqlx::query_as("SELECT notify_status, state FROM monitor_alert_log_v2 WHERE id = ?")
            .bind(first.id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(status, "pending", "the row the insert reported");
    assert_eq!(state, "provisional", "the row the insert reported");

    // The same alert id again, now confirmed: the stored row is reported as it is.
    log.mark_pushed(&[first.id]).await.unwrap();
    let mut confirmed = alert.clone();
    confirmed.state = AlertState::Confirmed;
    let again = log
        .insert(&NewAlertRow {
            alert: &confirmed,
            ..row
        })
        .await
        .unwrap();
    assert_eq!(
        again,
        LoggedAlert {
            id: first.id,
            notify_status: NotifyStatus::Pushed,
            state: AlertState::Provisional,
        }
    );
    assert_eq!(env.row_count(&alert.id).await, 1);

    env.cleanup().await;
}

#[tokio::test]
async fn new_alerts_get_distinct_rows() {
    let env = Env::new("log_new").await;
    let log = AlertLog::new(env.pool.clone());
    let alert_data = json!({});
    let mut ids = Vec::new();
    for n in 0..3 {
        let alert = price_alert(&format!("4:0xc02a:price_change:{n}"), 1_700_000_000_000 + n);
        let logged = log
            .insert(&NewAlertRow {
                alert: &alert,
                title: "t",
                alert_data: &alert_data,
            })
            .await
            .unwrap();
        let key: String =
            sqlx::query_scalar("SELECT alert_key FROM monitor_alert_log_v2 WHERE id = ?")
                .bind(logged.id)
                .fetch_one(&env.pool)
                .await
                .unwrap();
        assert_eq!(
            key, alert.id,
            "the id the insert returned is the alert's row"
        );
        ids.push(logged.id);
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3);

    env.cleanup().await;
}
