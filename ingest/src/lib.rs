//! The ingest stage: Birdeye feed connections per batch, rolling windows per target, and
//! event frames to JetStream.
//!
//! [`run`] connects to NATS, makes sure the streams and buckets exist, starts the
//! [`ownership`] task (membership and leases in the leases bucket) and hands control to the
//! [`supervisor::Supervisor`], which watches the tasks bucket and runs one
//! [`runner::BatchRunner`] task per batch of every token task that this instance leases. A runner keeps one WebSocket
//! connection per channel (prices and trades, [`feed`]), parses frames ([`birdeye`]), updates
//! the targets' windows ([`target`], [`window`]), which it reads back from the events stream
//! when it starts ([`history`]), and publishes event frames ([`publish`]),
//! heartbeats and status changes ([`status`]). Block tasks run on the chain adapters
//! ([`block_task`], [`evm`], [`solana`]), one runner per task.

pub mod birdeye;
pub mod block_task;
pub mod evm;
pub mod feed;
pub mod history;
pub mod holders;
pub mod metrics;
pub mod ownership;
pub mod peer_runners;
pub mod plan;
pub mod publish;
pub mod runner;
pub mod settings;
pub mod solana;
pub mod status;
pub mod supervisor;
pub mod target;
pub mod window;

use std::sync::Arc;

use async_nats::jetstream;
use monitor_core::shutdown::start_up;
use monitor_core::topology::{self, TopologyError};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::block_task::price::NativePrices;
use crate::block_task::{BlockContext, BlockTasks};
use crate::holders::{HolderPoller, HolderPolls};
use crate::ownership::{Ownership, OwnershipTask};
use crate::runner::RunnerContext;
use crate::settings::IngestSettings;
use crate::supervisor::Supervisor;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("failed to connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error(transparent)]
    Metrics(#[from] monitor_core::metrics::ServeError),
}

/// Runs the ingest stage until `shutdown` is cancelled, then stops every batch runner after
/// it published what it holds.
pub async fn run(settings: IngestSettings, shutdown: CancellationToken) -> Result<(), IngestError> {
    let consumer_id = settings.runtime.consumer_id();
    monitor_core::telemetry::log_settings("ingest", &settings);
    info!(consumer_id = %consumer_id, "ingest starting");
    let health = metrics::serve(&settings, shutdown.clone()).await?;
    if settings.feed.api_key.is_empty() {
        tracing::warn!("BIRDEYE_API_KEY is empty, the Birdeye socket will reject the connection");
    }

    let client = settings
        .nats
        .connect(&format!("ingest {consumer_id}"))
        .await
        .map_err(|source| IngestError::Connect {
            url: settings.nats.redacted_url(),
            source,
        })?;
    health.attach_nats(&client);
    let js = jetstream::new(client);
    let ensure = topology::ensure(&js, &settings.nats);
    let Some(topology) = start_up(&shutdown, "ingest", ensure).await else {
        return Ok(());
    };
    let topology = topology?;

    let ownership = Ownership::new(consumer_id.clone());
    metrics::watch_ownership(ownership.clone());
    let ownership_stop = CancellationToken::new();
    let ownership_task = tokio::spawn(
        OwnershipTask::new(
            ownership.clone(),
            topology.leases.clone(),
            js.clone(),
            settings.nats.clone(),
        )
        .run(ownership_stop.clone()),
    );

    let block_context = Arc::new(BlockContext {
        js: js.clone(),
        subjects: topology.subjects.clone(),
        consumer_id: consumer_id.clone(),
        heartbeat_interval: settings.heartbeat_interval,
        max_buffered_events: settings.max_buffered_events as usize,
        chains: settings.chains.clone(),
        prices: NativePrices::new(
            settings.chains.clone(),
            settings.feed.clone(),
            shutdown.clone(),
        ),
    });
    let block_tasks = BlockTasks::new(block_context, shutdown.clone());
    let holders = HolderPolls::default();
    let holders_stop = CancellationToken::new();
    let holder_poller = tokio::spawn(
        HolderPoller::new(
            holders.clone(),
            settings.feed.api_url.clone(),
            settings.feed.api_key.clone(),
            settings.feed.rps,
        )
        .run(holders_stop.clone()),
    );

    let context = Arc::new(RunnerContext {
        js,
        subjects: topology.subjects.clone(),
        consumer_id,
        feed: settings.feed.clone(),
        heartbeat_interval: settings.heartbeat_interval,
        max_buffered_events: settings.max_buffered_events as usize,
        holders,
    });
    Supervisor::new(context, topology.tasks, ownership, shutdown)
        .with_block_tasks(block_tasks)
        .run()
        .await;

    // The leases are released only now, after every runner stopped, so that no other
    // instance starts a batch while it still drains here.
    holders_stop.cancel();
    if let Err(error) = holder_poller.await {
        tracing::error!(error = %error, "holder poller failed");
    }
    ownership_stop.cancel();
    if let Err(error) = ownership_task.await {
        tracing::error!(error = %error, "ownership task failed");
    }
    info!("ingest stopped");
    Ok(())
}
