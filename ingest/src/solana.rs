//! The Solana adapter (sol): one runner per block task.

use monitor_core::messages::BatchStatus;

use crate::block_task::output::TaskOutput;
use crate::block_task::RunnerHandles;

/// The runner of one Solana block task.
pub struct SolanaRunner {
    handles: RunnerHandles,
}

impl SolanaRunner {
    pub fn new(handles: RunnerHandles) -> Self {
        SolanaRunner { handles }
    }

    /// Reports that this build cannot follow Solana and waits to be stopped.
    // TODO: follow slots, program logs and large transfers over SOLANA_WS_URL and
    // SOLANA_RPC_URL; until then a sol block task reports an error status.
    pub async fn run(self) {
        let RunnerHandles {
            context,
            mut config_rx,
            stop,
            next_seq,
        } = self.handles;
        let config = config_rx.borrow_and_update().clone();
        let mut output = TaskOutput::new(&context, &config, next_seq);
        output.set_status(
            BatchStatus::Error,
            Some("Solana block tasks are not supported by this ingest build".into()),
        );
        output.start_publishes();
        stop.cancelled().await;
        output.drain(Some(stop.reason())).await;
    }
}
