//! Evaluate across a restart of its nats-server: a private server of this test, so that the
//! outage does not disturb other tests.

mod common;

use common::*;
use monitor_tests::{NatsServer, TestEnv};

#[tokio::test]
async fn evaluate_recovers_after_nats_restart() -> anyhow::Result<()> {
    let env = TestEnv::new("eval_restart").await;
    let mut server = NatsServer::start(&env).await;
    let nats = server.settings(&env);
    let pipeline = Pipeline::on(env, nats).await?;
    let evaluate = pipeline.start();
    wait_for("the evaluate consumer", || async {
        Ok(pipeline.consumer_info().await?.is_some())
    })
    .await?;

    server.restart().await;

    // The task, its batch and the frame are written only after the restart: the alert needs
    // both the task cache's watch and the frame consumer to work again. Writes are retried
    // while the clients reconnect; each retry stores the same value.
    wait_for("the task and batch stored", || async {
        let task = pipeline.put_task(&task_spec(TASK_ID)).await;
        let batch = pipeline.put_batch(&batch_spec(TASK_ID)).await;
        Ok(task.is_ok() && batch.is_ok())
    })
    .await?;
    let trade = frame(TASK_ID, 1, vec![trade_event(T0, 20_000.0, 0.0)]);
    wait_for("the frame stored", || async {
        Ok(pipeline.publish_frame(&trade).await.is_ok())
    })
    .await?;
    wait_for("the alert", || async {
        Ok(!pipeline.alerts().await?.is_empty())
    })
    .await?;
    pipeline.wait_settled().await?;

    let alerts = pipeline.alerts().await?;
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].1.token_symbol.as_deref(), Some("WETH"));
    assert!(pipeline.dead_letters().await?.is_empty());

    evaluate.stop().await?;
    server.stop().await;
    Ok(())
}
