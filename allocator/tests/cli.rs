//! The `allocator` binary's one-shot commands against real MariaDB and NATS.

// Helpers outside #[test] functions panic on failure too: a panic is the test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output};

use common::{addresses, Fixture, INVALID_RULES, VALID_RULES};

/// Runs the binary with the fixture's services and `db_name`, in a directory without `.env`.
fn allocator(fx: &Fixture, db_name: &str, args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_allocator"))
        .args(args)
        .env_clear()
        .env("DB_HOST", &fx.services.db_host)
        .env("DB_PORT", fx.services.db_port.to_string())
        .env("DB_USER", &fx.services.db_user)
        .env("DB_PASSWORD", &fx.services.db_password)
        .env("DB_NAME", db_name)
        .env("NATS_URL", &fx.services.nats_url)
        .env("MONITOR_SUBJECT_PREFIX", &fx.name)
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run the allocator binary");
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
    let db_name = format!("{}_cli", fx.name);

    let first = allocator(&fx, &db_name, &["migrate"]);
    let second = allocator(&fx, &db_name, &["migrate"]);

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
    fx.cleanup().await;
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
        &fx.name,
        &[
            "allocate",
            "--task-id",
            &task,
            "--allocation-strategy",
            "seed",
        ],
    );
    let second = allocator(&fx, &fx.name, &["allocate", "--task-id", &task]);

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
    let status = stdout(&allocator(&fx, &fx.name, &["status", "--task-id", &task]));

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
    for batch in &spec.batches {
        let line = format!(
            "batch {} (no. {}): {} items, pending",
            batch.batch_id, batch.batch_no, batch.item_count
        );
        assert!(status.contains(&line), "{line} in {status}");
    }
    fx.cleanup().await;
}
