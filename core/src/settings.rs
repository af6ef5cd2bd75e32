//! Settings shared by several binaries, as `clap` argument groups.
//!
//! Every setting is read from its environment variable (optionally from `.env`) and may be
//! given as a command-line flag instead. Values are validated by their parsers, so a malformed
//! one stops the binary at start with a line naming the variable. Secrets are marked
//! `hide_env_values` so that `--help` never prints them, and [`Redacted`] keeps them out of
//! logs.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;

use crate::locale::Locale;
use crate::subjects::Subjects;

/// A secret setting; its `Debug` and `Display` print `***`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Redacted(pub String);

impl Redacted {
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

impl fmt::Display for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl FromStr for Redacted {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Redacted(s.to_owned()))
    }
}

/// Parses a duration given in seconds (`5`, `0.5`).
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("expected a number of seconds, got {s:?}"))?;
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("expected a number of seconds between 0 and 1e9, got {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_prefix(s: &str) -> Result<String, String> {
    Subjects::new(s).map(|_| s.to_owned()).map_err(|e| e.to_string())
}

/// Connection to NATS JetStream and the names derived from the subject prefix.
#[derive(Debug, Clone, Args)]
pub struct NatsSettings {
    /// NATS server URL(s), comma-separated.
    #[arg(long = "nats-url", env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub url: String,

    /// Path of a NATS credentials file (.creds).
    #[arg(long = "nats-creds", env = "NATS_CREDS")]
    pub creds: Option<std::path::PathBuf>,

    /// Prefix of every subject, stream and bucket name.
    #[arg(long = "subject-prefix", env = "MONITOR_SUBJECT_PREFIX", default_value = "monitor", value_parser = parse_prefix)]
    pub subject_prefix: String,

    /// Replicas of every stream and bucket (3 on a three-node cluster).
    #[arg(long = "nats-replicas", env = "NATS_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub replicas: u8,

    /// How long the events stream keeps frames, in hours (they are what replay reads).
    #[arg(long = "events-max-age-hours", env = "EVENTS_MAX_AGE_HOURS", default_value_t = 72)]
    pub events_max_age_hours: u64,
}

impl NatsSettings {
    pub fn local(url: &str, prefix: &str) -> Self {
        NatsSettings {
            url: url.to_owned(),
            creds: None,
            subject_prefix: prefix.to_owned(),
            replicas: 1,
            events_max_age_hours: 72,
        }
    }

    pub fn subjects(&self) -> Subjects {
        // The prefix was validated by its value parser (or by the test that built it).
        Subjects::new(&self.subject_prefix).unwrap_or_else(|_| {
            Subjects::new("monitor").unwrap_or_else(|_| unreachable!("constant prefix is valid"))
        })
    }

    /// Connects to NATS with the client settings every stage uses.
    pub async fn connect(&self, name: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(10)));
        if let Some(path) = &self.creds {
            options = options.credentials_file(path).await.map_err(|e| {
                async_nats::ConnectError::with_source(async_nats::ConnectErrorKind::Io, e)
            })?;
        }
        options.connect(self.url.as_str()).await
    }
}

/// Connection to MySQL / MariaDB; the names follow the original monitor's `.env`.
///
/// Argument ids carry a `db_` prefix (and `redis_` in [`RedisSettings`]) so that both groups
/// can be flattened into one command without clashing on `host`, `port` or `password`.
#[derive(Debug, Clone, Args)]
pub struct DbSettings {
    /// Database host name or IP address.
    #[arg(id = "db_host", long = "db-host", env = "DB_HOST", default_value = "localhost")]
    pub host: String,

    /// Database TCP port.
    #[arg(id = "db_port", long = "db-port", env = "DB_PORT", default_value_t = 3306)]
    pub port: u16,

    /// Database user name.
    #[arg(id = "db_user", long = "db-user", env = "DB_USER", default_value = "root")]
    pub user: String,

    /// Database password.
    #[arg(id = "db_password", long = "db-password", env = "DB_PASSWORD", default_value = "", hide_env_values = true, hide_default_value = true)]
    pub password: Redacted,

    /// Database (schema) name.
    #[arg(id = "db_name", long = "db-name", env = "DB_NAME", default_value = "kakarot_web3")]
    pub name: String,

    /// Maximum connections in the pool.
    #[arg(id = "db_max_connections", long = "db-max-connections", env = "DB_MAX_CONNECTIONS", default_value_t = 8)]
    pub max_connections: u32,
}

impl DbSettings {
    pub fn local(port: u16, name: &str) -> Self {
        DbSettings {
            host: "127.0.0.1".into(),
            port,
            user: "root".into(),
            password: Redacted::default(),
            name: name.to_owned(),
            max_connections: 8,
        }
    }
}

/// Connection to Redis, for config change notifications.
#[derive(Debug, Clone, Args)]
pub struct RedisSettings {
    /// Redis host name or IP address.
    #[arg(id = "redis_host", long = "redis-host", env = "REDIS_HOST", default_value = "localhost")]
    pub host: String,

    /// Redis TCP port.
    #[arg(id = "redis_port", long = "redis-port", env = "REDIS_PORT", default_value_t = 6379)]
    pub port: u16,

    /// Redis database number.
    #[arg(id = "redis_db", long = "redis-db", env = "REDIS_DB", default_value_t = 0)]
    pub db: u32,

    /// Redis password.
    #[arg(id = "redis_password", long = "redis-password", env = "REDIS_PASSWORD", default_value = "", hide_env_values = true, hide_default_value = true)]
    pub password: Redacted,
}

impl RedisSettings {
    pub fn local(port: u16) -> Self {
        RedisSettings {
            host: "127.0.0.1".into(),
            port,
            db: 0,
            password: Redacted::default(),
        }
    }

    /// The connection URL (it contains the password, so never log it).
    pub fn url(&self) -> String {
        let auth = if self.password.is_empty() {
            String::new()
        } else {
            format!(":{}@", self.password.expose())
        };
        format!("redis://{auth}{}:{}/{}", self.host, self.port, self.db)
    }
}

/// Output settings every long-running binary shares.
#[derive(Debug, Clone, Args)]
pub struct RuntimeSettings {
    /// Log format: `text` (readable) or `json` (one object per line).
    #[arg(long = "log-format", env = "LOG_FORMAT", default_value = "text")]
    pub log_format: crate::telemetry::LogFormat,

    /// Language of texts shown to users: zh-CN or en.
    #[arg(long = "locale", env = "MONITOR_LOCALE", default_value = "zh-CN")]
    pub locale: Locale,

    /// Address of the /metrics and /healthz endpoint (empty to disable).
    #[arg(long = "metrics-addr", env = "METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Prefix of this instance's consumer id (defaults to the host name).
    #[arg(long = "consumer-id-prefix", env = "CONSUMER_ID_PREFIX")]
    pub consumer_id_prefix: Option<String>,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        RuntimeSettings {
            log_format: crate::telemetry::LogFormat::Text,
            locale: Locale::ZhCn,
            metrics_addr: None,
            consumer_id_prefix: None,
        }
    }
}

impl RuntimeSettings {
    /// `<CONSUMER_ID_PREFIX or hostname>-<pid>`, unique per process.
    pub fn consumer_id(&self) -> String {
        let prefix = self.consumer_id_prefix.clone().unwrap_or_else(hostname);
        format!("{prefix}-{}", std::process::id())
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "monitor".into())
}

/// Loads `.env` from the working directory if present, before the command line is parsed.
/// Variables already set in the environment win over the file.
pub fn load_dotenv() {
    match dotenvy::dotenv() {
        Ok(_) => {}
        Err(e) if e.not_found() => {}
        Err(e) => eprintln!("warning: ignoring .env: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Debug, Parser)]
    struct AllGroups {
        #[command(flatten)]
        db: DbSettings,
        #[command(flatten)]
        nats: NatsSettings,
        #[command(flatten)]
        redis: RedisSettings,
        #[command(flatten)]
        runtime: RuntimeSettings,
    }

    #[test]
    fn all_groups_flatten_into_one_command() {
        AllGroups::command().debug_assert();
        let parsed = AllGroups::try_parse_from(["x", "--db-host", "db.local", "--redis-host", "cache.local", "--redis-port", "6380"]).unwrap();
        assert_eq!(parsed.db.host, "db.local");
        assert_eq!(parsed.redis.host, "cache.local");
        assert_eq!(parsed.redis.port, 6380);
    }
}
