//! MySQL / MariaDB access: the connection pool and the schema migrations.
//!
//! Production tables belong to the Java backend; `migrations/` creates the same tables for
//! development, tests and the demo.

use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::{ConnectOptions, Connection};

use crate::settings::DbSettings;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("failed to connect to MySQL at {host}:{port} database {name}: {source}")]
    Connect {
        host: String,
        port: u16,
        name: String,
        source: sqlx::Error,
    },
    #[error("invalid database name {0:?}: use letters, digits and '_' only")]
    InvalidName(String),
    #[error("failed to create database {name}: {source}")]
    Create { name: String, source: sqlx::Error },
    #[error("failed to apply migrations to database {name}: {source}")]
    Migrate {
        name: String,
        source: sqlx::migrate::MigrateError,
    },
}

fn options(settings: &DbSettings) -> MySqlConnectOptions {
    let mut options = MySqlConnectOptions::new()
        .host(&settings.host)
        .port(settings.port)
        .username(&settings.user)
        .charset("utf8mb4")
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(2));
    if !settings.password.is_empty() {
        options = options.password(settings.password.expose());
    }
    options
}

/// A pooled connection idle for longer than this is pinged before it is used. The pool
/// pings every connection when it is released, so one used more recently passed a ping
/// less than that long ago.
const PING_AFTER_IDLE: Duration = Duration::from_secs(10);

/// Opens a pool on the configured database.
///
/// The pool's own test pings every connection it hands out, which puts a second round trip
/// before each statement. Here only connections idle for [`PING_AFTER_IDLE`] are pinged. A
/// connection that broke since its release fails its statement like any other connection
/// error, and the ping at its release then makes the pool drop it.
pub async fn connect(settings: &DbSettings) -> Result<MySqlPool, DbError> {
    MySqlPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .test_before_acquire(false)
        .before_acquire(|connection, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_AFTER_IDLE {
                    connection.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_with(options(settings).database(&settings.name))
        .await
        .map_err(|source| DbError::Connect {
            host: settings.host.clone(),
            port: settings.port,
            name: settings.name.clone(),
            source,
        })
}

/// Creates the configured database if it does not exist.
pub async fn create_database(settings: &DbSettings) -> Result<(), DbError> {
    let name = &settings.name;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(DbError::InvalidName(name.clone()));
    }
    let pool = MySqlPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options(settings))
        .await
        .map_err(|source| DbError::Connect {
            host: settings.host.clone(),
            port: settings.port,
            name: String::new(),
            source,
        })?;
    // The name was checked above: it cannot carry SQL, and identifiers cannot be bound.
    let statement = format!(
        "CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
    );
    sqlx::query(&statement)
        .execute(&pool)
        .await
        .map_err(|source| DbError::Create {
            name: name.clone(),
            source,
        })?;
    pool.close().await;
    Ok(())
}

/// Creates the database if needed and applies every migration not applied yet.
pub async fn migrate(settings: &DbSettings) -> Result<MySqlPool, DbError> {
    create_database(settings).await?;
    let pool = connect(settings).await?;
    sqlx::migrate!("../migrations")
        .run(&pool)
        .await
        .map_err(|source| DbError::Migrate {
            name: settings.name.clone(),
            source,
        })?;
    Ok(pool)
}
