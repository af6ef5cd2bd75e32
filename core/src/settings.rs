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
use std::sync::OnceLock;
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
///
/// `Debug` prints the URLs without user names, passwords or tokens ([`Self::redacted_url`]).
#[derive(Clone, Args)]
pub struct NatsSettings {
    /// NATS server URL(s), comma-separated. `--help` does not show the value of NATS_URL,
    /// since a URL may carry a user and password or a token.
    #[arg(long = "nats-url", env = "NATS_URL", default_value = "nats://127.0.0.1:4222", hide_env_values = true)]
    pub url: String,

    /// Path of a NATS credentials file (.creds) with the user JWT and NKey seed.
    #[arg(long = "nats-creds", env = "NATS_CREDS", value_parser = parse_readable_file)]
    pub creds: Option<std::path::PathBuf>,

    #[command(flatten)]
    pub tls: NatsTlsSettings,

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

/// TLS to the NATS servers. A `tls://` URL or `NATS_REQUIRE_TLS` turns TLS on; the server
/// certificate is checked against the system's root certificates plus `NATS_TLS_CA`.
#[derive(Debug, Clone, Default, Args)]
pub struct NatsTlsSettings {
    /// Refuse to talk to a NATS server without TLS (implied by tls:// URLs).
    #[arg(long = "nats-require-tls", env = "NATS_REQUIRE_TLS", default_value_t = false, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub require_tls: bool,

    /// PEM file of CA certificates trusted for the NATS server's certificate, in addition to
    /// the system's root certificates.
    #[arg(long = "nats-tls-ca", env = "NATS_TLS_CA", value_parser = parse_readable_file)]
    pub ca: Option<std::path::PathBuf>,

    /// PEM file of the client certificate, for servers that verify clients (needs NATS_TLS_KEY).
    #[arg(long = "nats-tls-cert", env = "NATS_TLS_CERT", value_parser = parse_readable_file, requires = "nats_tls_key")]
    pub cert: Option<std::path::PathBuf>,

    /// PEM file of the client certificate's private key (needs NATS_TLS_CERT).
    #[arg(id = "nats_tls_key", long = "nats-tls-key", env = "NATS_TLS_KEY", value_name = "KEY", value_parser = parse_readable_file, requires = "cert")]
    pub key: Option<std::path::PathBuf>,
}

/// Accepts the path of a file that exists and can be opened, so that a wrong path stops the
/// binary at start with one line instead of failing at the first connection. The contents are
/// not read here, and never printed, since they may be secret.
pub fn parse_readable_file(s: &str) -> Result<std::path::PathBuf, String> {
    let path = std::path::PathBuf::from(s.trim());
    match std::fs::File::open(&path) {
        Ok(file) => match file.metadata() {
            Ok(metadata) if metadata.is_file() => Ok(path),
            Ok(_) => Err(format!("{} is not a regular file", path.display())),
            Err(e) => Err(format!("failed to read {}: {e}", path.display())),
        },
        Err(e) => Err(format!("failed to open {}: {e}", path.display())),
    }
}

impl fmt::Debug for NatsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSettings")
            .field("url", &self.redacted_url())
            .field("creds", &self.creds)
            .field("tls", &self.tls)
            .field("subject_prefix", &self.subject_prefix)
            .field("replicas", &self.replicas)
            .field("events_max_age_hours", &self.events_max_age_hours)
            .finish()
    }
}

impl NatsSettings {
    /// Returns the server URLs with any user name, password or token replaced by `***`.
    pub fn redacted_url(&self) -> String {
        self.url
            .split(',')
            .map(redact_url_credentials)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn local(url: &str, prefix: &str) -> Self {
        NatsSettings {
            url: url.to_owned(),
            creds: None,
            tls: NatsTlsSettings::default(),
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
            .request_timeout(Some(Duration::from_secs(10)))
            .event_callback({
                let servers = self.redacted_url();
                move |event| log_client_event(servers.clone(), event)
            });
        if let Some(path) = &self.creds {
            options = options.credentials_file(path).await.map_err(|e| {
                let message = format!(
                    "failed to load the NATS credentials file {}: {e}",
                    path.display()
                );
                async_nats::ConnectError::with_source(
                    async_nats::ConnectErrorKind::Io,
                    std::io::Error::new(e.kind(), message),
                )
            })?;
        }
        options = self.tls.apply(options);
        // The client logs the URLs it connects to at debug level, so credentials in a URL are
        // moved into the options, which it does not log.
        let (urls, auth) = split_url_auth(&self.url);
        match auth {
            Some(UrlAuth::UserPassword(user, password)) => {
                options = options.user_and_password(user, password);
            }
            Some(UrlAuth::Token(token)) => options = options.token(token),
            None => {}
        }
        // A list, not the joined text: the client parses one string as a single server.
        let servers: Vec<&str> = urls.split(',').collect();
        options.connect(servers).await
    }
}

/// Logs one event of the NATS client in one line, with the servers (credentials redacted).
/// The client's own line for it (`client error: nats: IO error` at info) names no server, and
/// the default log filter hides it.
async fn log_client_event(servers: String, event: async_nats::Event) {
    match event {
        async_nats::Event::Connected => tracing::info!(servers, "connected to NATS"),
        async_nats::Event::Disconnected => {
            tracing::warn!(servers, "disconnected from NATS, reconnecting")
        }
        async_nats::Event::ClientError(error) => {
            tracing::warn!(servers, error = %error, "NATS connection failed, retrying")
        }
        other => tracing::info!(servers, event = %other, "NATS client event"),
    }
}

/// Credentials written in a NATS URL: `nats://user:password@host` or `nats://token@host`.
#[derive(Debug, PartialEq, Eq)]
enum UrlAuth {
    UserPassword(String, String),
    Token(String),
}

/// Removes the user info from each of the comma-separated URLs and returns the first one found,
/// as async-nats reads it (percent-encoded as written).
fn split_url_auth(urls: &str) -> (String, Option<UrlAuth>) {
    let mut auth = None;
    let mut stripped = Vec::new();
    for text in urls.split(',').map(str::trim) {
        let Ok(mut url) = url::Url::parse(text) else {
            stripped.push(text.to_owned());
            continue;
        };
        if !url.username().is_empty() {
            let found = match url.password() {
                Some(password) => {
                    UrlAuth::UserPassword(url.username().to_owned(), password.to_owned())
                }
                None => UrlAuth::Token(url.username().to_owned()),
            };
            auth.get_or_insert(found);
            // Both calls fail only for URLs that cannot have user info, which these have.
            let _ = url.set_username("");
            let _ = url.set_password(None);
        }
        stripped.push(url.to_string());
    }
    (stripped.join(","), auth)
}

impl NatsTlsSettings {
    /// Adds these settings to the client options; `tls://` URLs need nothing here.
    fn apply(&self, mut options: async_nats::ConnectOptions) -> async_nats::ConnectOptions {
        if self.require_tls {
            options = options.require_tls(true);
        }
        if let Some(ca) = &self.ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        options
    }
}

/// Replaces the user info of a URL (`nats://user:password@host`, `nats://token@host`) by
/// `***`. A value that is not a URL is returned unchanged, since it carries no user info.
fn redact_url_credentials(url: &str) -> String {
    let trimmed = url.trim();
    match trimmed.rsplit_once('@') {
        Some((before, host)) => match before.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://***@{host}"),
            None => format!("***@{host}"),
        },
        None => trimmed.to_owned(),
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

    /// Worker threads of the tokio runtime (default: one per core for allocator and ingest,
    /// one for evaluate and notify).
    #[arg(long = "worker-threads", env = "WORKER_THREADS")]
    pub worker_threads: Option<std::num::NonZeroUsize>,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        RuntimeSettings {
            log_format: crate::telemetry::LogFormat::Text,
            locale: Locale::ZhCn,
            metrics_addr: None,
            consumer_id_prefix: None,
            worker_threads: None,
        }
    }
}

impl RuntimeSettings {
    /// `<CONSUMER_ID_PREFIX or hostname>-<pid>-<run>`, unique per process start.
    ///
    /// `run` is 8 hex digits drawn once per process. A container restarted under the same
    /// host name often runs as the same pid (1 in Docker). Ingest's message ids start with the
    /// consumer id, so with a reused id JetStream would drop the new process's first frames
    /// as duplicates of the old one's.
    pub fn consumer_id(&self) -> String {
        let prefix = self.consumer_id_prefix.clone().unwrap_or_else(hostname);
        format!("{prefix}-{}-{:08x}", std::process::id(), process_run())
    }
}

/// Random number drawn once per process, the same for every call.
fn process_run() -> u32 {
    static RUN: OnceLock<u32> = OnceLock::new();
    *RUN.get_or_init(rand::random)
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "monitor".into())
}

/// Parses the command line of `T` like `T::parse()`, except that a malformed value stops the
/// process with status 2 and one line naming the environment variable and flag
/// ([`one_line_error`]). `--help` and `--version` print as usual.
pub fn parse_args<T: clap::Parser>() -> T {
    let matches = matches_or_exit(T::command());
    T::from_arg_matches(&matches).unwrap_or_else(|error| exit_with(&T::command(), error))
}

/// Matches the process's arguments against `command`, exiting like [`parse_args`] on an error.
pub fn matches_or_exit(command: clap::Command) -> clap::ArgMatches {
    match command.clone().try_get_matches() {
        Ok(matches) => matches,
        Err(error) => exit_with(&command, error),
    }
}

fn exit_with(command: &clap::Command, error: clap::Error) -> ! {
    use clap::error::ErrorKind;
    match error.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => error.exit(),
        _ => {
            eprintln!("{}", one_line_error(command, &error));
            std::process::exit(2);
        }
    }
}

/// Describes a command-line error on one line. An invalid value names its environment
/// variable and flag (`error: invalid value "abc" for DB_PORT (--db-port): invalid digit
/// found in string`); the value of a secret is left out. A missing setting is named the same
/// way (`error: missing NATS_TLS_KEY (--nats-tls-key)`). Other errors keep clap's first line.
pub fn one_line_error(command: &clap::Command, error: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if error.kind() == ErrorKind::MissingRequiredArgument {
        if let Some(ContextValue::Strings(missing)) = error.get(ContextKind::InvalidArg) {
            let names: Vec<String> = missing
                .iter()
                .filter_map(|arg| arg.split_whitespace().next())
                .map(|flag| setting_name(command, flag))
                .collect();
            if !names.is_empty() {
                return format!("error: missing {}", names.join(", "));
            }
        }
    }
    let flag = match error.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => arg.split_whitespace().next().map(str::to_owned),
        _ => None,
    };
    let invalid_value = matches!(
        error.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    );
    let (Some(flag), true) = (flag, invalid_value) else {
        // The message before the usage section, joined into one line (a missing argument is
        // listed on the lines after the first).
        let rendered = error.render().to_string();
        let message: Vec<&str> = rendered
            .lines()
            .map(str::trim)
            .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more information"))
            .filter(|line| !line.is_empty())
            .collect();
        if message.is_empty() {
            return "error: invalid command line".to_owned();
        }
        return message.join(" ");
    };

    let arg = find_arg(command, &flag);
    let name = setting_name(command, &flag);
    let secret = arg.is_some_and(|arg| arg.is_hide_env_values_set());
    let value = match error.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(value)) if !secret => format!(" {value:?}"),
        _ => String::new(),
    };
    let reason = match (
        std::error::Error::source(error),
        error.get(ContextKind::ValidValue),
    ) {
        (Some(source), _) => source.to_string(),
        (None, Some(ContextValue::Strings(valid))) => {
            format!("expected one of {}", valid.join(", "))
        }
        _ => "invalid value".to_owned(),
    };
    format!(
        "error: invalid value{value} for {name}: {}",
        reason.replace('\n', " ")
    )
}

/// Returns how an error names the setting of `flag`: `DB_PORT (--db-port)`, or the flag alone
/// when it has no environment variable.
fn setting_name(command: &clap::Command, flag: &str) -> String {
    match find_arg(command, flag).and_then(|arg| arg.get_env()) {
        Some(env) => format!("{} ({flag})", env.to_string_lossy()),
        None => flag.to_owned(),
    }
}

/// Finds the argument with the long flag `flag` (`--db-port`) in `command` or a subcommand.
fn find_arg<'a>(command: &'a clap::Command, flag: &str) -> Option<&'a clap::Arg> {
    let long = flag.trim_start_matches('-');
    command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long))
        .or_else(|| {
            command
                .get_subcommands()
                .find_map(|subcommand| find_arg(subcommand, flag))
        })
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

    #[test]
    fn consumer_id_is_prefix_pid_and_run() {
        let runtime = RuntimeSettings {
            consumer_id_prefix: Some("ingest".into()),
            ..RuntimeSettings::default()
        };
        let id = runtime.consumer_id();
        let run = id
            .strip_prefix(&format!("ingest-{}-", std::process::id()))
            .unwrap();
        assert_eq!(run.len(), 8);
        assert!(run.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
        assert_eq!(runtime.consumer_id(), id, "one process keeps one id");
    }

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

    fn parse_error(args: &[&str]) -> String {
        let command = AllGroups::command();
        let error = command.clone().try_get_matches_from(args).unwrap_err();
        one_line_error(&command, &error)
    }

    #[test]
    fn invalid_value_error_names_the_variable() {
        let line = parse_error(&["x", "--db-port", "abc"]);
        assert_eq!(
            line,
            "error: invalid value \"abc\" for DB_PORT (--db-port): invalid digit found in string"
        );
    }

    #[test]
    fn out_of_range_error_names_the_variable() {
        let line = parse_error(&["x", "--nats-replicas", "9"]);
        assert!(
            line.starts_with("error: invalid value \"9\" for NATS_REPLICAS (--nats-replicas): "),
            "{line}"
        );
        assert!(line.contains("1..=5"), "{line}");
    }

    #[test]
    fn invalid_log_format_names_the_variable() {
        let line = parse_error(&["x", "--log-format", "xml"]);
        assert_eq!(
            line,
            "error: invalid value \"xml\" for LOG_FORMAT (--log-format): expected text or json, got \"xml\""
        );
    }

    #[test]
    fn worker_threads_rejects_zero() {
        let line = parse_error(&["x", "--worker-threads", "0"]);
        assert!(
            line.starts_with("error: invalid value \"0\" for WORKER_THREADS (--worker-threads): "),
            "{line}"
        );
        let parsed = AllGroups::try_parse_from(["x", "--worker-threads", "3"]).unwrap();
        assert_eq!(parsed.runtime.worker_threads.map(|n| n.get()), Some(3));
    }

    #[test]
    fn missing_tls_key_error_names_the_variable() {
        let cert = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let line = parse_error(&["x", "--nats-tls-cert", cert]);
        assert_eq!(line, "error: missing NATS_TLS_KEY (--nats-tls-key)");
    }

    #[test]
    fn unknown_flag_error_is_one_line() {
        let line = parse_error(&["x", "--no-such-flag"]);
        assert!(
            line.starts_with("error: unexpected argument '--no-such-flag'"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn nats_url_credentials_are_redacted() {
        let mut settings = NatsSettings::local(
            "nats://alice:s3cret@n1:4222, nats://t0ken@n2:4222",
            "monitor",
        );
        assert_eq!(
            settings.redacted_url(),
            "nats://***@n1:4222,nats://***@n2:4222"
        );
        assert!(!format!("{settings:?}").contains("s3cret"));
        assert!(!format!("{settings:?}").contains("t0ken"));
        settings.url = "nats://127.0.0.1:4222".into();
        assert_eq!(settings.redacted_url(), "nats://127.0.0.1:4222");
    }

    #[test]
    fn missing_creds_file_is_one_line_naming_the_variable() {
        let line = parse_error(&["x", "--nats-creds", "/nonexistent/monitor.creds"]);
        assert!(
            line.starts_with("error: invalid value \"/nonexistent/monitor.creds\" for NATS_CREDS (--nats-creds): failed to open /nonexistent/monitor.creds: "),
            "{line}"
        );
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn tls_client_certificate_needs_its_key() {
        let file = std::env::current_exe().unwrap();
        let path = file.to_str().unwrap();
        let line = parse_error(&["x", "--nats-tls-cert", path]);
        assert!(line.contains("--nats-tls-key"), "{line}");
        let parsed = AllGroups::try_parse_from(["x", "--nats-tls-ca", path, "--nats-require-tls", "true"]).unwrap();
        assert!(parsed.nats.tls.require_tls);
        assert_eq!(parsed.nats.tls.ca.as_deref(), Some(file.as_path()));
    }

    #[test]
    fn url_credentials_move_out_of_the_urls() {
        let (urls, auth) = split_url_auth("nats://alice:s3cret@n1:4222, nats://n2:4222");
        assert_eq!(urls, "nats://n1:4222,nats://n2:4222");
        assert_eq!(auth, Some(UrlAuth::UserPassword("alice".into(), "s3cret".into())));
        let (urls, auth) = split_url_auth("tls://t0ken@n1:4222");
        assert_eq!(urls, "tls://n1:4222");
        assert_eq!(auth, Some(UrlAuth::Token("t0ken".into())));
        assert_eq!(split_url_auth("nats://127.0.0.1:4222"), ("nats://127.0.0.1:4222".into(), None));
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
