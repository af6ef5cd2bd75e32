//! Test fixture: a migrated database, a subject prefix and the tasks bucket of one test.
//!
//! Built on `monitor_tests::TestEnv`, which reads the services that `scripts/test` starts
//! (`TEST_NATS_URL`, `TEST_DB_*`, `TEST_REDIS_*`). Each fixture has its own database and
//! prefix, so tests run in parallel; nothing is dropped afterwards, so a failed test's data
//! stays for inspection.

// Test helpers panic on failure: a panic is the test failure.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use async_nats::jetstream;
use monitor_allocator::control::{ControlOptions, ControlPlane};
use monitor_allocator::order::Strategy;
use monitor_allocator::publish::Publisher;
use monitor_allocator::AllocatorSettings;
use monitor_core::codec;
use monitor_core::messages::{BatchSpec, StatusMessage, TaskSpec};
use monitor_core::settings::RedisSettings;
use monitor_core::topology::Topology;
use monitor_core::Subjects;
use monitor_tests::TestEnv;
use sqlx::MySqlPool;

/// One test's database, prefix and bucket.
pub struct Fixture {
    pub env: TestEnv,
    pub pool: MySqlPool,
    pub jetstream: jetstream::Context,
    pub topology: Topology,
}

/// Valid token rules: a volume rule and large trades.
pub const VALID_RULES: &str =
    r#"{"volume": {"window_sec": 300, "min_volume_usd": 100000}, "large_trade": {"side": "any"}}"#;
/// Invalid token rules: a negative volume threshold.
pub const INVALID_RULES: &str = r#"{"volume": {"window_sec": 300, "min_volume_usd": -1}}"#;

impl Fixture {
    pub async fn new(test: &str) -> Fixture {
        let env = TestEnv::new(&format!("alloc_{test}")).await;
        let pool = env.pool().clone();
        let jetstream = env.jetstream().await;
        let topology = env.topology().await;
        Fixture {
            env,
            pool,
            jetstream,
            topology,
        }
    }

    pub fn redis(&self) -> RedisSettings {
        self.env.redis_settings()
    }

    /// Settings of an allocator on this fixture; Redis on the channel `<name>:config`.
    pub fn settings(&self) -> AllocatorSettings {
        let mut settings = AllocatorSettings::local(
            self.env.db_settings(),
            self.env.nats_settings(),
            self.env.redis_settings(),
        );
        settings.config_channel = format!("{}:config", self.env.id());
        settings.runtime.consumer_id_prefix = Some("allocator-test".into());
        settings
    }

    /// A publisher on this fixture's bucket, as one allocator holds it.
    pub fn publisher(&self, consumer_id: &str) -> Publisher {
        Publisher::new(
            self.topology.tasks.clone(),
            self.jetstream.clone(),
            self.topology.subjects.clone(),
            consumer_id.into(),
            monitor_core::Locale::ZhCn,
        )
    }

    /// A control plane on this fixture, with the bucket's entries loaded.
    pub async fn plane(&self, strategy: Strategy, batch_size: u32) -> ControlPlane {
        let mut settings = self.settings();
        settings.allocation_strategy = strategy;
        settings.batch_size = batch_size.try_into().expect("batch size is not 0");
        let publisher = self.publisher("allocator-test-1");
        let mut plane = ControlPlane::new(
            self.pool.clone(),
            publisher,
            ControlOptions::from(&settings),
        );
        plane.load_published().await.expect("load the tasks bucket");
        plane
    }

    pub async fn insert_config(&self, events_config: &str) -> u64 {
        sqlx::query(
            "INSERT INTO monitor_config_v2 (config_name, chain_type, min_transaction_usd, events_config, trigger_logic, version) \
             VALUES ('majors', 'eth', 50000, ?, 'OR', 1)",
        )
        .bind(events_config)
        .execute(&self.pool)
        .await
        .expect("insert config")
        .last_insert_id()
    }

    /// Sets a config's `events_config` and version.
    pub async fn update_config(&self, config_id: u64, events_config: &str, version: u64) {
        sqlx::query("UPDATE monitor_config_v2 SET events_config = ?, version = ? WHERE id = ?")
            .bind(events_config)
            .bind(version)
            .bind(config_id)
            .execute(&self.pool)
            .await
            .expect("update config");
    }

    pub async fn insert_task(&self, task_type: &str, chain: &str, config_id: u64) -> u64 {
        let task_id = sqlx::query(
            "INSERT INTO monitor_task_v2 (task_name, task_type, chain_type) VALUES ('watch', ?, ?)",
        )
        .bind(task_type)
        .bind(chain)
        .execute(&self.pool)
        .await
        .expect("insert task")
        .last_insert_id();
        sqlx::query("INSERT INTO monitor_task_config_v2 (task_id, config_id, config_order) VALUES (?, ?, 0)")
            .bind(task_id)
            .bind(config_id)
            .execute(&self.pool)
            .await
            .expect("link config");
        task_id
    }

    /// Inserts active targets and returns their ids.
    pub async fn insert_targets(&self, task_id: u64, addresses: &[String]) -> Vec<u64> {
        let mut ids = Vec::with_capacity(addresses.len());
        for address in addresses {
            let id = sqlx::query(
                "INSERT INTO monitor_task_target_v2 (task_id, target_value, token_symbol, market_cap, source) \
                 VALUES (?, ?, 'TKN', 1234.5, 'birdeye')",
            )
            .bind(task_id)
            .bind(address)
            .execute(&self.pool)
            .await
            .expect("insert target")
            .last_insert_id();
            ids.push(id);
        }
        ids
    }

    pub async fn set_task_status(&self, task_id: u64, status: i8) {
        sqlx::query("UPDATE monitor_task_v2 SET status = ? WHERE id = ?")
            .bind(status)
            .bind(task_id)
            .execute(&self.pool)
            .await
            .expect("update task status");
    }

    pub async fn current_epoch(&self, task_id: u64) -> u32 {
        let epoch: i32 =
            sqlx::query_scalar("SELECT current_epoch FROM monitor_task_v2 WHERE id = ?")
                .bind(task_id)
                .fetch_one(&self.pool)
                .await
                .expect("read current epoch");
        epoch as u32
    }

    /// Batch rows of an epoch: (id, batch_no, status, item_count), by batch number.
    pub async fn batch_rows(&self, task_id: u64, epoch: u32) -> Vec<(u64, u32, String, u32)> {
        let rows: Vec<(i64, i32, String, i32)> = sqlx::query_as(
            "SELECT id, batch_no, status, item_count FROM monitor_batch_v2 WHERE task_id = ? AND epoch = ? ORDER BY batch_no",
        )
        .bind(task_id)
        .bind(epoch)
        .fetch_all(&self.pool)
        .await
        .expect("read batches");
        rows.into_iter()
            .map(|(id, no, status, count)| (id as u64, no as u32, status, count as u32))
            .collect()
    }

    /// Items of an epoch: (batch_no, item_order, target_id), by batch number and order.
    pub async fn items(&self, task_id: u64, epoch: u32) -> Vec<(u32, u32, u64)> {
        let rows: Vec<(i32, i32, i64)> = sqlx::query_as(
            "SELECT b.batch_no, i.item_order, i.target_id FROM monitor_batch_v2 b \
             JOIN monitor_batch_item_v2 i ON i.batch_id = b.id \
             WHERE b.task_id = ? AND b.epoch = ? ORDER BY b.batch_no, i.item_order",
        )
        .bind(task_id)
        .bind(epoch)
        .fetch_all(&self.pool)
        .await
        .expect("read items");
        rows.into_iter()
            .map(|(no, order, id)| (no as u32, order as u32, id as u64))
            .collect()
    }

    /// Targets' positions: (target_id, batch_id, batch_order), by target id.
    pub async fn target_positions(&self, task_id: u64) -> Vec<(u64, Option<u32>, Option<u32>)> {
        let rows: Vec<(i64, Option<i32>, Option<i32>)> = sqlx::query_as(
            "SELECT id, batch_id, batch_order FROM monitor_task_target_v2 WHERE task_id = ? ORDER BY id",
        )
        .bind(task_id)
        .fetch_all(&self.pool)
        .await
        .expect("read target positions");
        rows.into_iter()
            .map(|(id, no, order)| (id as u64, no.map(|n| n as u32), order.map(|o| o as u32)))
            .collect()
    }

    pub async fn task_spec(&self, task_id: u64) -> Option<TaskSpec> {
        let bytes = self
            .topology
            .tasks
            .get(Subjects::task_key(task_id))
            .await
            .expect("read task spec")?;
        Some(codec::decode(&bytes).expect("decode task spec"))
    }

    pub async fn batch_spec(&self, batch_id: u64) -> Option<BatchSpec> {
        let bytes = self
            .topology
            .tasks
            .get(Subjects::batch_key(batch_id))
            .await
            .expect("read batch spec")?;
        Some(codec::decode(&bytes).expect("decode batch spec"))
    }

    /// Revision of a key in the tasks bucket, to tell whether it was rewritten.
    pub async fn revision(&self, key: &str) -> Option<u64> {
        self.topology
            .tasks
            .entry(key)
            .await
            .expect("read entry")
            .map(|e| e.revision)
    }

    /// Reads the last status message published for a task, if any.
    pub async fn last_task_status(&self, task_id: u64) -> Option<StatusMessage> {
        let stream = self
            .jetstream
            .get_stream(self.topology.subjects.status_stream())
            .await
            .expect("open status stream");
        let message = stream
            .get_last_raw_message_by_subject(&self.topology.subjects.task_status(task_id))
            .await
            .ok()?;
        Some(codec::decode(&message.payload).expect("decode status message"))
    }
}

/// `n` made-up EVM addresses, distinct per `seed`.
pub fn addresses(seed: u64, n: u64) -> Vec<String> {
    (0..n)
        .map(|i| format!("0x{:020x}{:020x}", seed, i))
        .collect()
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `limit`.
pub async fn wait_for<T, F, Fut>(limit: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
