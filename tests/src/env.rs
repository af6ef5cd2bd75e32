//! One test's share of the shared services: its own database, subject prefix and log files.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use async_nats::jetstream;
use monitor_core::settings::{DbSettings, NatsSettings, Redacted, RedisSettings};
use monitor_core::topology::{self, Topology};
use monitor_core::Subjects;
use sqlx::MySqlPool;

use crate::paths::{self, required_var};
use crate::process::ProcessBuilder;

/// Maximum length of the part of the test name kept in the database name, which MariaDB limits to 64
/// characters: `t_` + 24 + `_` + pid (up to 7 digits) + `_` + counter + `_` + 8 hex digits.
const MAX_NAME_LEN: usize = 24;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The services of one test. Create it with [`TestEnv::new`] at the start of the test.
pub struct TestEnv {
    id: String,
    db: DbSettings,
    nats: NatsSettings,
    redis: RedisSettings,
    pool: MySqlPool,
}

impl TestEnv {
    /// Creates and migrates the database `t_<name>_<suffix>` and picks the subject prefix
    /// `t_<name>_<suffix>`, unique across tests, processes and runs.
    ///
    /// # Panics
    /// If a `TEST_*` variable is missing (the message tells to run `scripts/test`), or if the
    /// database cannot be created or migrated.
    pub async fn new(name: &str) -> TestEnv {
        let nats_url = required_var("TEST_NATS_URL");
        let db_host = required_var("TEST_DB_HOST");
        let db_port = port_var("TEST_DB_PORT");
        let db_user = required_var("TEST_DB_USER");
        let redis_port = port_var("TEST_REDIS_PORT");

        let id = unique_id(name);
        let db = DbSettings {
            host: db_host,
            port: db_port,
            user: db_user,
            password: Redacted(std::env::var("TEST_DB_PASSWORD").unwrap_or_default()),
            name: id.clone(),
            max_connections: 8,
        };
        let nats = NatsSettings::local(&nats_url, &id);
        let redis = RedisSettings {
            host: std::env::var("TEST_REDIS_HOST").unwrap_or_else(|_| "127.0.0.1".into()),
            ..RedisSettings::local(redis_port)
        };

        let pool = monitor_core::db::migrate(&db)
            .await
            .unwrap_or_else(|e| panic!("failed to create and migrate the test database {id}: {e}"));
        TestEnv {
            id,
            db,
            nats,
            redis,
            pool,
        }
    }

    /// Returns the unique id of this test: its database name, subject prefix and log file prefix.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn db_name(&self) -> &str {
        &self.db.name
    }

    pub fn subject_prefix(&self) -> &str {
        &self.nats.subject_prefix
    }

    pub fn db_settings(&self) -> DbSettings {
        self.db.clone()
    }

    pub fn nats_settings(&self) -> NatsSettings {
        self.nats.clone()
    }

    pub fn redis_settings(&self) -> RedisSettings {
        self.redis.clone()
    }

    /// Stream, bucket and subject names under this test's prefix.
    pub fn subjects(&self) -> Subjects {
        self.nats.subjects()
    }

    /// Returns a pool on this test's database, with the migrations applied.
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// Opens a new NATS connection with the client options every stage uses.
    pub async fn nats_client(&self) -> async_nats::Client {
        self.nats
            .connect(&format!("test-{}", self.id))
            .await
            .unwrap_or_else(|e| panic!("failed to connect to NATS at {}: {e}", self.nats.url))
    }

    /// Opens a JetStream context on a new connection.
    pub async fn jetstream(&self) -> jetstream::Context {
        jetstream::new(self.nats_client().await)
    }

    /// Creates this test's streams and buckets (as every stage does at start) and returns
    /// their handles.
    pub async fn topology(&self) -> Topology {
        let js = self.jetstream().await;
        topology::ensure(&js, &self.nats).await.unwrap_or_else(|e| {
            panic!(
                "failed to create the streams and buckets of {}: {e}",
                self.id
            )
        })
    }

    /// Opens a Redis connection on the test Redis server.
    pub async fn redis_connection(&self) -> redis::aio::MultiplexedConnection {
        let url = self.redis.url();
        let client = redis::Client::open(url.as_str())
            .unwrap_or_else(|e| panic!("invalid Redis URL for port {}: {e}", self.redis.port));
        client
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "failed to connect to Redis on port {}: {e}",
                    self.redis.port
                )
            })
    }

    /// Returns the settings of this test as the environment variables the binaries read: database,
    /// NATS, subject prefix, Redis, and the consumer id prefix (the test id).
    pub fn stage_env(&self) -> Vec<(String, String)> {
        [
            ("DB_HOST", self.db.host.clone()),
            ("DB_PORT", self.db.port.to_string()),
            ("DB_USER", self.db.user.clone()),
            ("DB_PASSWORD", self.db.password.expose().to_owned()),
            ("DB_NAME", self.db.name.clone()),
            ("NATS_URL", self.nats.url.clone()),
            ("MONITOR_SUBJECT_PREFIX", self.nats.subject_prefix.clone()),
            ("REDIS_HOST", self.redis.host.clone()),
            ("REDIS_PORT", self.redis.port.to_string()),
            ("REDIS_DB", self.redis.db.to_string()),
            ("REDIS_PASSWORD", self.redis.password.expose().to_owned()),
            ("CONSUMER_ID_PREFIX", self.id.clone()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
    }

    /// Prepares a command for any program, logging to this test's log directory and running in this
    /// test's work directory. It gets no settings; add them with [`ProcessBuilder::env`].
    pub fn command(&self, program: impl AsRef<OsStr>) -> ProcessBuilder {
        ProcessBuilder::new(program, self.log_dir(), self.id.clone(), self.work_dir())
    }

    /// Prepares a command for the workspace binary `name` (see [`crate::bin`]) with [`Self::stage_env`].
    pub fn stage(&self, name: &str) -> ProcessBuilder {
        self.command(paths::bin(name)).envs(self.stage_env())
    }

    /// Directory in which this test's processes run (so that a developer's `.env` in the
    /// repository is not loaded): `<TEST_SERVICES_DIR>/work/<id>`.
    pub fn work_dir(&self) -> PathBuf {
        paths::services_dir().join("work").join(&self.id)
    }

    /// Path of the log of the process named `name`: `<TEST_SERVICES_DIR>/logs/<id>-<name>.log`.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.log_dir().join(format!("{}-{name}.log", self.id))
    }

    fn log_dir(&self) -> PathBuf {
        paths::services_dir().join("logs")
    }
}

fn port_var(name: &str) -> u16 {
    let value = required_var(name);
    value
        .parse()
        .unwrap_or_else(|_| panic!("{name} must be a TCP port number, got {value:?}"))
}

/// `t_<name>_<pid>_<counter>_<random>`: letters, digits and `_` only, so it is both a valid
/// database name and a valid subject prefix, and at most 64 characters.
fn unique_id(name: &str) -> String {
    let mut clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    clean.truncate(MAX_NAME_LEN);
    let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
    let random: u32 = rand::random();
    format!("t_{clean}_{}_{counter}_{random:08x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_id_is_valid_database_name() {
        let id = unique_id("Sticky allocation: moves one batch when one target is added");

        assert!(id.len() <= 64, "{id} is longer than 64 characters");
        assert!(id.starts_with("t_sticky_allocation__moves_"), "{id}");
        assert!(
            id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{id}"
        );
        assert!(
            Subjects::new(&id).is_ok(),
            "{id} is not a valid subject prefix"
        );
    }

    #[test]
    fn unique_id_differs_between_calls() {
        assert_ne!(unique_id("same"), unique_id("same"));
    }
}
