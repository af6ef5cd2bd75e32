//! A MySQL outage under a steady stream of alerts, with the notify binary against a private
//! MariaDB (stopped and started by the test), NATS JetStream and devkit's backend-stub.
//!
//! While MariaDB is down notify acks no alert that it could not store, logs the outage once
//! and not per alert, and once MariaDB returns it stores and pushes every alert: no row is
//! missing and none is there twice.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on a broken set-up.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, price_alert, Env};
use monitor_core::{codec, Subjects};
use monitor_tests::MariaDb;
use sqlx::MySqlPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const CONSUMER: &str = Subjects::NOTIFY_ALERTS_CONSUMER;
/// Pause between two alerts of the steady stream.
const PUBLISH_PERIOD: Duration = Duration::from_millis(40);

fn alert_key(n: u64) -> String {
    format!("4:0xc02a:price_change:{n}")
}

/// Publishes alert 0, 1, 2, … every [`PUBLISH_PERIOD`] until `stop`; `published` counts the
/// alerts the stream stored.
fn publish_steadily(
    env: &Env,
    published: Arc<AtomicU64>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let js = env.js.clone();
    let subject = env.subjects.alerts(4);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(PUBLISH_PERIOD);
        while !stop.is_cancelled() {
            ticker.tick().await;
            let n = published.load(Ordering::SeqCst);
            let alert = price_alert(&alert_key(n), 1_700_000_000_000 + n as i64 * 1_000);
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", alert.id.as_str());
            js.publish_with_headers(
                subject.clone(),
                headers,
                codec::encode(&alert).unwrap().into(),
            )
            .await
            .expect("failed to publish")
            .await
            .expect("the stream did not store the alert");
            published.fetch_add(1, Ordering::SeqCst);
        }
    })
}

async fn row_count(pool: &MySqlPool) -> Option<u64> {
    sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM monitor_alert_log_v2")
        .fetch_one(pool)
        .await
        .ok()
        .map(|n| n as u64)
}

async fn wait_published(published: &AtomicU64, count: u64) {
    eventually(&format!("{count} alerts to be published"), || async {
        (published.load(Ordering::SeqCst) >= count).then_some(())
    })
    .await;
}

fn count_lines(log: &str, text: &str) -> usize {
    log.lines().filter(|line| line.contains(text)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_outage_under_load_loses_no_alert() {
    let env = Env::new("mysql_outage").await;
    let mut mariadb = MariaDb::start(&env.test).await;
    let pool = monitor_core::db::migrate(&mariadb.settings(&env.test))
        .await
        .expect("failed to migrate the private MariaDB");
    let stub = env.start_stub().await;
    let mut notify = env
        .notify_process(&stub.url())
        .envs(mariadb.stage_env())
        .env("RUST_LOG", "info")
        .spawn("notify");
    let published = Arc::new(AtomicU64::new(0));
    let stop_publishing = CancellationToken::new();
    let publisher = publish_steadily(&env, published.clone(), stop_publishing.clone());

    eventually("40 rows before the outage", || async {
        (row_count(&pool).await? >= 40).then_some(())
    })
    .await;
    mariadb.stop().await;
    let mut alerts_stream = env
        .js
        .get_stream(env.subjects.alerts_stream())
        .await
        .unwrap();
    let last_before_outage = alerts_stream.info().await.unwrap().state.last_sequence;

    // 50 alerts published while MariaDB is down: none of them can be stored, so none is acked.
    wait_published(&published, last_before_outage + 50).await;
    assert!(
        notify
            .wait_for_log("mysql unavailable", Duration::from_secs(60))
            .await,
        "notify logs the outage:\n{}",
        notify.log()
    );
    let info = alerts_stream.consumer_info(CONSUMER).await.unwrap();
    assert!(
        info.ack_floor.stream_sequence <= last_before_outage,
        "an alert published during the outage was acked: ack floor {}, last before the outage {last_before_outage}",
        info.ack_floor.stream_sequence
    );
    let stream_state = alerts_stream.info().await.unwrap().state.clone();
    assert!(
        stream_state.messages >= last_before_outage + 50,
        "the stream keeps the alerts of the outage: {stream_state:?}"
    );

    mariadb.start_again().await;
    let after_outage = published.load(Ordering::SeqCst) + 40;
    wait_published(&published, after_outage).await;
    stop_publishing.cancel();
    publisher.await.unwrap();
    let total = published.load(Ordering::SeqCst);

    eventually("every alert to be stored and acked", || async {
        let rows = row_count(&pool).await?;
        let acked = env.acked(&env.subjects.alerts_stream(), CONSUMER).await;
        (rows == total && acked == total).then_some(())
    })
    .await;
    let keys: Vec<String> = sqlx::query_scalar("SELECT alert_key FROM monitor_alert_log_v2")
        .fetch_all(&pool)
        .await
        .unwrap();
    let distinct: HashSet<&String> = keys.iter().collect();
    assert_eq!(keys.len() as u64, total, "one row per alert published");
    assert_eq!(distinct.len(), keys.len(), "no alert stored twice");
    let expected: HashSet<String> = (0..total).map(alert_key).collect();
    assert_eq!(
        distinct,
        expected.iter().collect::<HashSet<_>>(),
        "no alert missing"
    );

    let row_ids: HashSet<i64> = sqlx::query_scalar("SELECT id FROM monitor_alert_log_v2")
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let pushed = eventually("every row to be pushed", || async {
        let pushed: HashSet<i64> = stub
            .received("alert")
            .iter()
            .filter_map(|m| m["data"]["alertId"].as_i64())
            .collect();
        (pushed == row_ids).then_some(pushed)
    })
    .await;
    assert_eq!(pushed.len() as u64, total);
    stub.assert_no_violations();

    // One line when the outage starts and one when it ends, not one per alert. While MariaDB
    // shuts down, queries may succeed and fail in turn, so each state change counts.
    let log = notify.log();
    let down = count_lines(&log, "mysql unavailable");
    let up = count_lines(&log, "mysql available again");
    assert!(down >= 1, "the outage is logged:\n{log}");
    assert_eq!(down, up, "each outage is logged once at each end:\n{log}");
    assert!(
        down < 10,
        "{down} outage lines for 50 alerts during one outage: logged per alert, not per change"
    );

    notify.terminate().await;
    stub.stop().await;
    mariadb.stop().await;
    env.cleanup().await;
}
