//! The tokio runtime each stage runs on.
//!
//! Every stage runs a multi-thread runtime. How many worker threads it gets is a setting
//! (`WORKER_THREADS`), with a default that suits the stage: one per core for allocator and
//! ingest, one for evaluate and notify. Ingest does most of the pipeline's work and needs the
//! cores. Evaluate and notify do little per message and mostly wait for NATS and MySQL, so a
//! second worker thread there mostly adds wake-ups between threads. Each of those costs a trip
//! through the host on a virtual machine. Four pairs of `devkit loadgen` runs at 10,000
//! events/s on 2 cores measured it. The alert latency p50 was 2.66 to 2.81 ms with two worker
//! threads each and 2.40 to 2.73 ms with one, and evaluate and notify used 7 to 9 % less CPU
//! with one. At full speed the pipeline's rate did not drop (two pairs of runs).

use std::future::Future;
use std::num::NonZeroUsize;
use std::process::ExitCode;

use crate::settings::RuntimeSettings;

/// Worker threads of a stage when `WORKER_THREADS` is not set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultWorkers {
    /// One per core the process may use.
    PerCore,
    /// A single worker thread.
    One,
}

impl DefaultWorkers {
    fn count(self) -> NonZeroUsize {
        match self {
            DefaultWorkers::PerCore => {
                std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
            }
            DefaultWorkers::One => NonZeroUsize::MIN,
        }
    }
}

/// Starts logging in the format of `settings`, runs `stage` to completion with the configured
/// worker threads (or the stage's `default`), and returns the exit code. A fatal error is
/// logged and gives exit code 1.
pub fn run_stage<F>(settings: &RuntimeSettings, default: DefaultWorkers, stage: F) -> ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    crate::telemetry::init(settings.log_format);
    let workers = worker_threads(settings.worker_threads, default);
    crate::telemetry::exit_code(block_on(workers, stage))
}

/// Returns the worker threads to run: `configured` when set, otherwise the stage's default.
fn worker_threads(configured: Option<NonZeroUsize>, default: DefaultWorkers) -> NonZeroUsize {
    configured.unwrap_or_else(|| default.count())
}

/// Runs `future` to completion on a new multi-thread runtime with `workers` worker threads.
fn block_on<F>(workers: NonZeroUsize, future: F) -> anyhow::Result<()>
where
    F: Future<Output = anyhow::Result<()>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.get())
        .enable_all()
        .build()
        .map_err(|error| {
            anyhow::anyhow!(
                "failed to start the tokio runtime with {workers} worker threads: {error}"
            )
        })?;
    runtime.block_on(future)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_count_wins_over_the_default() {
        let three = NonZeroUsize::new(3).unwrap();
        assert_eq!(worker_threads(Some(three), DefaultWorkers::One), three);
        assert_eq!(worker_threads(Some(three), DefaultWorkers::PerCore), three);
    }

    #[test]
    fn defaults_are_one_or_one_per_core() {
        assert_eq!(worker_threads(None, DefaultWorkers::One).get(), 1);
        let cores = std::thread::available_parallelism().unwrap();
        assert_eq!(worker_threads(None, DefaultWorkers::PerCore), cores);
    }

    #[test]
    fn runtime_has_the_given_number_of_workers() {
        let workers = NonZeroUsize::new(2).unwrap();
        let result = block_on(workers, async {
            let metrics = tokio::runtime::Handle::current().metrics();
            anyhow::ensure!(
                metrics.num_workers() == 2,
                "{} workers",
                metrics.num_workers()
            );
            Ok(())
        });
        result.unwrap();
    }

    #[test]
    fn block_on_returns_the_error_of_the_future() {
        let failed = block_on(NonZeroUsize::MIN, async { anyhow::bail!("stage failed") });
        assert_eq!(failed.unwrap_err().to_string(), "stage failed");
    }
}
