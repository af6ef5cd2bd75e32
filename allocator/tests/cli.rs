//! The `allocator` binary's one-shot commands against real MariaDB and NATS.

// Helpers outside #[test] functions panic on failure too: a panic is the test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Output;
use std::time::Duration;

use common::{addresses, Fixture, INVALID_RULES, VALID_RULES};

/// Upper bound of one command; each finishes in about a second.
const COMMAND_LIMIT: Duration = Duration::from_secs(120);

/// Runs the binary with the fixture's settings and `db_name`, in the test's work directory.
async fn allocator(fx: &Fixture, db_name: &str, args: &[&str]) -> Output {
    let output = fx
        .env
        .command(env!("CARGO_BIN_EXE_allocator"))
        .envs(fx.env.stage_env())
        .env("DB_NAME", db_name)
        .args(args)
        .output("allocator", COMMAND_LIMIT)
        .await;
    assert!(
        output.status.success(),
        "allocator {args:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn migrate_creates_database_twice_safely() {
    let fx = Fixture::new("migrate").await;
    let db_name = format!("{}_cli", fx.env.db_name());

    let first = allocator(&fx, &db_name, &["migrate"]).await;
    let second = allocator(&fx, &db_name, &["migrate"]).await;

    assert_eq!(
        stdout(&first).trim(),
        format!("database {db_name} is migrated")
    );
    assert_eq!(
        stdout(&second).trim(),
        format!("database {db_name} is migrated")
    );
    let tables: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = ? AND table_name LIKE 'monitor_%'")
        .bind(&db_name)
        .fetch_one(&fx.pool)
        .await
        .unwrap();
    assert_eq!(tables, 7);
    sqlx::query(&format!("DROP DATABASE `{db_name}`"))
        .execute(&fx.pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn allocate_and_status_commands() {
    let fx = Fixture::new("cli").await;
    let config_id = fx.insert_config(VALID_RULES).await;
    let task_id = fx.insert_task("batch", "eth", config_id).await;
    fx.insert_targets(task_id, &addresses(1, 100)).await;
    let task = task_id.to_string();

    let first = allocator(
        &fx,
        fx.env.db_name(),
        &[
            "allocate",
            "--task-id",
            &task,
            "--allocation-strategy",
            "seed",
        ],
    )
    .await;
    let second = allocator(&fx, fx.env.db_name(), &["allocate", "--task-id", &task]).await;

    assert!(
        stdout(&first).contains("epoch 1 written (was 0): 100 targets in 2 batches"),
        "{}",
        stdout(&first)
    );
    assert!(
        stdout(&second).contains("epoch 1 unchanged; task spec unchanged"),
        "{}",
        stdout(&second)
    );
    let spec = fx.task_spec(task_id).await.expect("task spec published");
    assert_eq!(spec.epoch, 1);

    fx.update_config(config_id, INVALID_RULES, 2).await;
    let status = stdout(&allocator(&fx, fx.env.db_name(), &["status", "--task-id", &task]).await);

    assert!(
        status.contains(&format!(
            "task {task_id} \"watch\": batch on eth, active, epoch 1"
        )),
        "{status}"
    );
    assert!(
        status.contains(&format!("config {config_id} version 2")),
        "{status}"
    );
    assert!(status.contains("config error: invalid config"), "{status}");
    assert!(status.contains("active targets: 100\n"), "{status}");
    // No allocator has synced version 2 yet, so the data plane still runs version 1.
    assert!(
        status.contains(&format!(
            "published: epoch 1, 2 batches, 100 items, config {config_id} version 1 in force"
        )),
        "{status}"
    );
    assert!(!status.contains("published config error"), "{status}");
    for batch in &spec.batches {
        let line = format!(
            "batch {} (no. {}): {} items, pending",
            batch.batch_id, batch.batch_no, batch.item_count
        );
        assert!(status.contains(&line), "{line} in {status}");
    }
}

#[tokio::test]
async fn status_shows_published_config_error() {
    let fx = Fixture::new("clierr").await;
    let config_id = fx.insert_config(VALID_RULES).await;
    let task_id = fx.insert_task("smart", "eth", config_id).await;
    fx.insert_targets(task_id, &addresses(2, 3)).await;
    let mut plane = fx
        .plane(monitor_allocator::order::Strategy::Sticky, 99)
        .await;
    plane.poll().await.unwrap();
    fx.update_config(config_id, INVALID_RULES, 2).await;
    plane.sync_task(task_id).await.unwrap();

    let task = task_id.to_string();
    let status = stdout(&allocator(&fx, fx.env.db_name(), &["status", "--task-id", &task]).await);

    assert!(
        status.contains(&format!(
            "published: epoch 1, 1 batches, 3 items, config {config_id} version 1 in force"
        )),
        "{status}"
    );
    assert!(
        status.contains(&format!(
            "published config error: invalid config {config_id} version 2: volume.min_volume_usd"
        )),
        "{status}"
    );
}

#[tokio::test]
async fn status_without_nats_shows_database() {
    let fx = Fixture::new("clinonats").await;
    let config_id = fx.insert_config(VALID_RULES).await;
    let task_id = fx.insert_task("batch", "eth", config_id).await;
    fx.insert_targets(task_id, &addresses(3, 5)).await;
    let closed = monitor_tests::free_port();

    let output = fx
        .env
        .command(env!("CARGO_BIN_EXE_allocator"))
        .envs(fx.env.stage_env())
        .env("NATS_URL", format!("nats://127.0.0.1:{closed}"))
        .args(["status", "--task-id", &task_id.to_string()])
        .output("allocator", COMMAND_LIMIT)
        .await;
    let status = stdout(&output);

    assert!(output.status.success(), "{output:?}");
    assert!(
        status.contains(&format!("config {config_id} version 1")),
        "{status}"
    );
    assert!(
        status.contains("active targets: 5, not yet allocated"),
        "{status}"
    );
    assert!(status.contains("published: unknown"), "{status}");
}
