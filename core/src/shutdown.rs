//! One shutdown path for every stage.
//!
//! SIGINT and SIGTERM cancel one [`CancellationToken`] that every task of the stage holds. The
//! stage then stops taking new work, finishes or naks what it holds, and returns. A second
//! signal exits the process at once with status 130.

use std::future::Future;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Returns a token cancelled by the first SIGINT or SIGTERM; a second one exits the process.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested, draining (send the signal again to exit at once)");
        cancel.cancel();
        wait_for_signal().await;
        tracing::warn!("second signal, exiting at once");
        std::process::exit(130);
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs a start-up step of `stage` until it finishes or `shutdown` is cancelled, and returns
/// `None` in the second case. Start-up waits on services that may be down: creating the
/// streams times out while NATS is unreachable. A stage asked to stop meanwhile returns at
/// once, with a clean exit, instead of waiting out the step's timeouts.
pub async fn start_up<T>(
    shutdown: &CancellationToken,
    stage: &'static str,
    step: impl Future<Output = T>,
) -> Option<T> {
    let outcome = shutdown.run_until_cancelled(step).await;
    if outcome.is_none() {
        tracing::info!(stage, "{stage} stopped during start-up");
    }
    outcome
}

/// Long-lived tasks of a stage. A task that fails cancels the others, so that one broken part
/// stops the stage with an error instead of leaving it half alive.
pub struct Tasks {
    set: JoinSet<(&'static str, anyhow::Result<()>)>,
    shutdown: CancellationToken,
}

impl Tasks {
    pub fn new(shutdown: CancellationToken) -> Self {
        Tasks {
            set: JoinSet::new(),
            shutdown,
        }
    }

    /// Spawns a named task.
    pub fn spawn<F>(&mut self, name: &'static str, future: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.set.spawn(async move { (name, future.await) });
    }

    /// Waits for every task; returns the first error, after cancelling the rest.
    pub async fn join(mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        while let Some(joined) = self.set.join_next().await {
            let (name, result) = match joined {
                Ok(pair) => pair,
                Err(e) => ("unknown", Err(anyhow::anyhow!("task panicked: {e}"))),
            };
            match result {
                Ok(()) => tracing::debug!(task = name, "task finished"),
                Err(error) => {
                    tracing::error!(task = name, error = %format!("{error:#}"), "task failed, stopping the stage");
                    self.shutdown.cancel();
                    first_error.get_or_insert(error.context(format!("task {name} failed")));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
