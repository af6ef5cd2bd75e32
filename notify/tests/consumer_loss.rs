//! Notify's alert consumer deleted under a running notify process, and its stream reopened,
//! against real NATS JetStream, MariaDB and the backend stub.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on a broken set-up.

mod common;

use common::{price_alert, Env};
use monitor_core::Subjects;
use monitor_notify::jetstream::{DurableConsumer, StreamEnd};
use tokio_util::sync::CancellationToken;

const CONSUMER: &str = Subjects::NOTIFY_ALERTS_CONSUMER;

#[tokio::test]
async fn deleted_alert_consumer_is_recreated() {
    let env = Env::new("consumer_loss").await;
    let stub = env.start_stub().await;
    let mut notify = env
        .notify_process(&stub.url())
        .env("RUST_LOG", "info")
        .spawn("notify");
    let before = price_alert("4:0xc02a:price_change:1", 1_700_000_000_001);
    env.publish_alert(&before, "before-deletion").await;
    stub.wait_for("alert", 1).await;

    let stream = env
        .js
        .get_stream(env.subjects.alerts_stream())
        .await
        .unwrap();
    stream
        .delete_consumer(CONSUMER)
        .await
        .expect("failed to delete the alert consumer");
    let after = price_alert("4:0xc02a:price_change:2", 1_700_000_000_002);
    env.publish_alert(&after, "after-deletion").await;

    // The alert published after the deletion arrives through the recreated consumer.
    stub.wait_for("alert", 2).await;
    assert!(stream.consumer_info(CONSUMER).await.is_ok());
    assert_eq!(env.row_count(&before.id).await, 1);
    assert_eq!(env.row_count(&after.id).await, 1);

    // The first alert comes again through the new consumer, and its row stops the push.
    env.wait_acked(&env.subjects.alerts_stream(), CONSUMER, 2)
        .await;
    assert_eq!(stub.received("alert").len(), 2);

    // A few reopens at most: without a pause, a consumer that fails every pull made notify
    // reopen its stream thousands of times a second.
    let log = notify.log();
    let reopens = log.matches("reopening").count();
    assert!(
        reopens >= 1,
        "notify did not notice the lost consumer:\n{log}"
    );
    assert!(
        reopens <= 5,
        "notify reopened its stream {reopens} times:\n{log}"
    );

    notify.terminate().await;
    stub.stop().await;
    env.cleanup().await;
}

/// A lost pull request reopens the stream without the pause that other failures wait: with
/// shutdown already requested, only the reopen that does not pause gets to open a stream.
#[tokio::test]
async fn lost_pull_reopens_without_pause() {
    let env = Env::new("reopen_at_once").await;
    let stream = env.subjects.alerts_stream();
    let filter = env.subjects.all_alerts();
    let mut consumer = DurableConsumer::open(&env.js, &stream, CONSUMER, &filter)
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    shutdown.cancel();

    assert!(consumer
        .reopen(StreamEnd::LostPull, &shutdown)
        .await
        .is_some());
    assert!(consumer
        .reopen(StreamEnd::Failed, &shutdown)
        .await
        .is_none());

    env.cleanup().await;
}
