//! Statements that MariaDB rolls back for a lock conflict run again, against a real MariaDB.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on a broken set-up.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::Env;
use monitor_notify::alert_log::{is_lock_conflict, retry_lock_conflicts};
use sqlx::MySqlPool;

/// Creates a table of two rows, (1, 0) and (2, 0), to take row locks on.
async fn probe_table(pool: &MySqlPool) {
    sqlx::query("CREATE TABLE lock_probe (id INT PRIMARY KEY, v INT NOT NULL)")
        .execute(pool)
        .await
        .expect("failed to create lock_probe");
    sqlx::query("INSERT INTO lock_probe VALUES (1, 0), (2, 0)")
        .execute(pool)
        .await
        .expect("failed to fill lock_probe");
}

async fn value_of(pool: &MySqlPool, id: i32) -> i32 {
    sqlx::query_scalar("SELECT v FROM lock_probe WHERE id = ?")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("failed to read lock_probe")
}

/// Returns the error of a real deadlock: two transactions each lock one row and then wait for
/// the other's row, so InnoDB rolls one of them back.
async fn real_deadlock(pool: &MySqlPool) -> sqlx::Error {
    let mut first = pool.begin().await.unwrap();
    let mut second = pool.begin().await.unwrap();
    sqlx::query("UPDATE lock_probe SET v = v + 1 WHERE id = 1")
        .execute(&mut *first)
        .await
        .unwrap();
    sqlx::query("UPDATE lock_probe SET v = v + 1 WHERE id = 2")
        .execute(&mut *second)
        .await
        .unwrap();
    let (a, b) = tokio::join!(
        sqlx::query("UPDATE lock_probe SET v = v + 1 WHERE id = 2").execute(&mut *first),
        async {
            // Lets the first transaction wait on row 2 before this one closes the cycle.
            tokio::time::sleep(Duration::from_millis(200)).await;
            sqlx::query("UPDATE lock_probe SET v = v + 1 WHERE id = 1")
                .execute(&mut *second)
                .await
        }
    );
    let error = match (a, b) {
        (Err(error), Ok(_)) | (Ok(_), Err(error)) => error,
        (a, b) => panic!("expected one deadlock victim, got {a:?} and {b:?}"),
    };
    let _ = first.rollback().await;
    let _ = second.rollback().await;
    error
}

#[tokio::test]
async fn lock_conflict_kinds_from_mariadb() {
    let env = Env::new("lock_kinds").await;
    probe_table(&env.pool).await;

    let deadlock = real_deadlock(&env.pool).await;
    assert!(is_lock_conflict(&deadlock), "{deadlock}");

    let mut holder = env.pool.begin().await.unwrap();
    sqlx::query("UPDATE lock_probe SET v = 7 WHERE id = 1")
        .execute(&mut *holder)
        .await
        .unwrap();
    let timeout = sqlx::query(
        "SET STATEMENT innodb_lock_wait_timeout = 1 FOR UPDATE lock_probe SET v = 8 WHERE id = 1",
    )
    .execute(&env.pool)
    .await
    .expect_err("the row is locked");
    assert!(is_lock_conflict(&timeout), "{timeout}");
    holder.rollback().await.unwrap();

    let duplicate = sqlx::query("INSERT INTO lock_probe VALUES (1, 0)")
        .execute(&env.pool)
        .await
        .expect_err("the key exists");
    assert!(!is_lock_conflict(&duplicate), "{duplicate}");
}

#[tokio::test]
async fn retry_after_lock_wait_timeout() {
    let env = Env::new("lock_retry").await;
    probe_table(&env.pool).await;

    // Another transaction keeps row 1 locked for 1.5 s, and each run waits 1 s for the lock.
    let mut holder = env.pool.begin().await.unwrap();
    sqlx::query("UPDATE lock_probe SET v = 100 WHERE id = 1")
        .execute(&mut *holder)
        .await
        .unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        holder.commit().await.unwrap();
    });

    let runs = AtomicU32::new(0);
    let updated = retry_lock_conflicts("probe update", || {
        runs.fetch_add(1, Ordering::SeqCst);
        sqlx::query(
            "SET STATEMENT innodb_lock_wait_timeout = 1 FOR \
             UPDATE lock_probe SET v = v + 1 WHERE id = 1",
        )
        .execute(&env.pool)
    })
    .await
    .expect("the second run gets the lock");
    release.await.unwrap();

    assert_eq!(updated.rows_affected(), 1);
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "one timed-out run, one that succeeded"
    );
    assert_eq!(
        value_of(&env.pool, 1).await,
        101,
        "ran once after the holder's commit"
    );
}

#[tokio::test]
async fn retry_skips_other_errors() {
    let env = Env::new("lock_other").await;
    probe_table(&env.pool).await;

    let runs = AtomicU32::new(0);
    let error = retry_lock_conflicts("probe insert", || {
        runs.fetch_add(1, Ordering::SeqCst);
        sqlx::query("INSERT INTO lock_probe VALUES (2, 5)").execute(&env.pool)
    })
    .await
    .expect_err("the key exists");

    assert!(!is_lock_conflict(&error));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(value_of(&env.pool, 2).await, 0);
}
