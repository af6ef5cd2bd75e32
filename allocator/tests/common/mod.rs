//! Test fixture: a migrated database, a subject prefix and the tasks bucket of one test.
//!
//! Services come from `TEST_NATS_URL`, `TEST_DB_HOST`, `TEST_DB_PORT`, `TEST_DB_USER`,
//! `TEST_DB_PASSWORD`, `TEST_REDIS_HOST` and `TEST_REDIS_PORT` (set by `scripts/test`), with
//! the development services on 127.0.0.1 as defaults. Each fixture has its own database and
//! prefix, so tests run in parallel. [`Fixture::cleanup`] drops both when a test passes; a
//! failed test leaves them for inspection.

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
use monitor_core::settings::{DbSettings, NatsSettings, Redacted, RedisSettings};
use monitor_core::topology::Topology;
use monitor_core::Subjects;
use sqlx::MySqlPool;

/// Addresses of the services the tests use.
#[derive(Debug, Clone)]
pub struct Services {
    pub nats_url: String,
    pub db_host: String,
    pub db_port: u16,
    pub db_user: String,
    pub db_password: String,
    pub redis_host: String,
    pub redis_port: u16,
}

fn var(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

impl Services {
    pub fn from_env() -> Self {
        Services {
            nats_url: var("TEST_NATS_URL", "nats://127.0.0.1:14222"),
            db_host: var("TEST_DB_HOST", "127.0.0.1"),
            db_port: var("TEST_DB_PORT", "3306")
                .parse()
                .expect("TEST_DB_PORT is a port number"),
            db_user: var("TEST_DB_USER", "root"),
            db_password: var("TEST_DB_PASSWORD", ""),
            redis_host: var("TEST_REDIS_HOST", "127.0.0.1"),
            redis_port: var("TEST_REDIS_PORT", "6379")
                .parse()
                .expect("TEST_REDIS_PORT is a port number"),
        }
    }
}

/// One test's database, prefix and bucket.
pub struct Fixture {
    pub name: String,
    pub services: Services,
    pub db: DbSettings,
    pub nats: NatsSettings,
    pub pool: MySqlPool,
    pub jetstream: jetstream::Context,
    pub topology: Topology,
}

/// Returns a unique name for a test: `t_alloc_<test>_<random>`.
fn unique_name(test: &str) -> String {
    let suffix: u32 = rand::random();
    format!("t_alloc_{test}_{suffix:08x}")
}

/// Valid token rules: a volume rule and large trades.
pub const VALID_RULES: &str =
    r#"{"volume": {"window_sec": 300, "min_volume_usd": 100000}, "large_trade": {"side": "any"}}"#;
/// Invalid token rules: a negative volume threshold.
pub const INVALID_RULES: &str = r#"{"volume": {"window_sec": 300, "min_volume_usd": -1}}"#;

impl Fixture {
    pub async fn new(test: &str) -> Fixture {
        let services = Services::from_env();
        let name = unique_name(test);
        let mut db = DbSettings::local(services.db_port, &name);
        db.host = services.db_host.clone();
        db.user = services.db_user.clone();
        db.password = Redacted(services.db_password.clone());
        let pool = monitor_core::db::migrate(&db)
            .await
            .expect("migrate the test database");

        let nats = NatsSettings::local(&services.nats_url, &name);
        let client = nats
            .connect("allocator-test")
            .await
            .expect("connect to NATS");
        let jetstream = jetstream::new(client);
        let topology = monitor_core::topology::ensure(&jetstream, &nats)
            .await
            .expect("create streams and buckets");
        Fixture {
            name,
            services,
            db,
            nats,
            pool,
            jetstream,
            topology,
        }
    }

    /// Settings of an allocator on this fixture; Redis on the channel `<name>:config`.
    pub fn settings(&self) -> AllocatorSettings {
        let mut redis = RedisSettings::local(self.services.redis_port);
        redis.host = self.services.redis_host.clone();
        let mut settings = AllocatorSettings::local(self.db.clone(), self.nats.clone(), redis);
        settings.config_channel = format!("{}:config", self.name);
        settings.runtime.consumer_id_prefix = Some("allocator-test".into());
        settings
    }

    /// A control plane on this fixture, with the bucket's entries loaded.
    pub async fn plane(&self, strategy: Strategy, batch_size: u32) -> ControlPlane {
        let mut settings = self.settings();
        settings.allocation_strategy = strategy;
        settings.batch_size = batch_size.try_into().expect("batch size is not 0");
        let publisher = Publisher::new(
            self.topology.tasks.clone(),
            self.jetstream.clone(),
            self.topology.subjects.clone(),
            "allocator-test-1".into(),
            settings.runtime.locale,
        );
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

    /// Drops the database, the streams and the buckets of this fixture.
    pub async fn cleanup(self) {
        let subjects = &self.topology.subjects;
        for stream in [
            subjects.events_stream(),
            subjects.alerts_stream(),
            subjects.status_stream(),
            subjects.dead_stream(),
        ] {
            let _ = self.jetstream.delete_stream(stream).await;
        }
        for bucket in [subjects.tasks_bucket(), subjects.leases_bucket()] {
            let _ = self.jetstream.delete_key_value(bucket).await;
        }
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{}`", self.name))
            .execute(&self.pool)
            .await;
        self.pool.close().await;
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
