//! Tracing set-up: readable text by default, one JSON object per line with `LOG_FORMAT=json`,
//! filtered by `RUST_LOG` (default [`DEFAULT_FILTER`]). Also the two log lines every binary writes at the
//! edges of its life: the settings in force ([`log_settings`]) and a fatal error
//! ([`exit_code`]), so that with `LOG_FORMAT=json` every line on stderr is JSON.

use std::str::FromStr;

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" | "" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("expected text or json, got {other:?}")),
        }
    }
}

/// Log filter without `RUST_LOG`. The NATS client's own lines start at `warn`, because it
/// logs every failed reconnect at `info` without the server. The stages log each client event
/// themselves, with the servers named.
pub const DEFAULT_FILTER: &str = "info,async_nats=warn";

/// Installs the global subscriber; logs go to stderr so that stdout stays free for command
/// output (alerts printed by the demo, replay results).
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // Colours only on a terminal: a log file or journal would otherwise be full of escapes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    // A second init (tests running several stages in one process) keeps the first subscriber.
    let _ = result;
}

/// Logs the settings in force once, at start. `settings` is printed with `Debug`, in which
/// secrets ([`crate::settings::Redacted`]) and NATS URL credentials appear as `***`.
pub fn log_settings(binary: &str, settings: &impl std::fmt::Debug) {
    tracing::info!(binary, settings = ?settings, "settings in force");
}

/// Returns an error and its causes in one line, leaving out a cause whose text the line
/// already contains. Many errors here and in sqlx print their source in their own message,
/// and `{:#}` would then repeat it once per level.
pub fn error_line(error: &anyhow::Error) -> String {
    let mut line = error.to_string();
    for cause in error.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

/// Turns the result of a binary's work into its exit status, logging an error through
/// tracing (one line, with its causes) instead of printing it to stderr.
pub fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %error_line(&error), "stopped on an error");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("failed to connect: {source}")]
    struct Outer {
        source: std::io::Error,
    }

    #[test]
    fn error_line_skips_repeated_causes() {
        let source = std::io::Error::other("connection refused");
        let error = anyhow::Error::new(Outer { source }).context("failed to start");

        assert_eq!(
            error_line(&error),
            "failed to start: failed to connect: connection refused"
        );
        assert_eq!(
            format!("{error:#}"),
            "failed to start: failed to connect: connection refused: connection refused"
        );
    }

    #[test]
    fn error_line_keeps_new_causes() {
        let error = anyhow::anyhow!("disk full").context("failed to write the log");

        assert_eq!(error_line(&error), "failed to write the log: disk full");
    }
}
