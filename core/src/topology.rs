//! Streams, buckets and consumers, created idempotently by whichever stage starts first.
//!
//! Every stage calls [`ensure`] at start with the same definitions, so the order in which
//! stages start does not matter. An existing stream whose configuration differs is updated
//! to these definitions.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

use crate::settings::NatsSettings;
use crate::subjects::Subjects;

/// How long MONITOR_ALERTS deduplicates by alert id: the longest cooldown (10 minutes).
pub const ALERT_DUPLICATE_WINDOW: Duration = Duration::from_secs(600);
/// Lease time-to-live in the leases bucket.
pub const LEASE_TTL: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("failed to create or update stream {name}: {source}")]
    Stream {
        name: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("failed to create or open bucket {name}: {source}")]
    Bucket {
        name: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Handles to the buckets every stage may use.
#[derive(Clone)]
pub struct Topology {
    pub subjects: Subjects,
    pub tasks: kv::Store,
    pub leases: kv::Store,
}

/// Stream definitions of one pipeline.
pub fn stream_configs(subjects: &Subjects, settings: &NatsSettings) -> Vec<stream::Config> {
    let replicas = settings.replicas as usize;
    vec![
        stream::Config {
            name: subjects.events_stream(),
            subjects: vec![subjects.all_events()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(settings.events_max_age_hours * 3600),
            duplicate_window: Duration::from_secs(120),
            num_replicas: replicas,
            ..Default::default()
        },
        stream::Config {
            name: subjects.alerts_stream(),
            subjects: vec![subjects.all_alerts()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(7 * 24 * 3600),
            duplicate_window: ALERT_DUPLICATE_WINDOW,
            num_replicas: replicas,
            ..Default::default()
        },
        stream::Config {
            name: subjects.status_stream(),
            subjects: vec![subjects.all_status()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_messages_per_subject: 8,
            max_age: Duration::from_secs(3600),
            num_replicas: replicas,
            ..Default::default()
        },
        stream::Config {
            name: subjects.dead_stream(),
            subjects: vec![subjects.all_dead()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(7 * 24 * 3600),
            num_replicas: replicas,
            ..Default::default()
        },
    ]
}

/// Creates (or updates) every stream and bucket of the pipeline and returns the buckets.
pub async fn ensure(
    js: &jetstream::Context,
    settings: &NatsSettings,
) -> Result<Topology, TopologyError> {
    let subjects = settings.subjects();
    for config in stream_configs(&subjects, settings) {
        ensure_stream(js, config).await?;
    }
    let tasks = ensure_bucket(
        js,
        kv::Config {
            bucket: subjects.tasks_bucket(),
            history: 1,
            num_replicas: settings.replicas as usize,
            storage: stream::StorageType::File,
            ..Default::default()
        },
    )
    .await?;
    // On disk, so that the leases and members outlive a restart of a NATS server: from an
    // empty bucket every ingest instance would take every batch, and the batches would run
    // twice and then move back and forth.
    let leases = ensure_bucket(
        js,
        kv::Config {
            bucket: subjects.leases_bucket(),
            history: 1,
            max_age: LEASE_TTL,
            num_replicas: settings.replicas as usize,
            storage: stream::StorageType::File,
            ..Default::default()
        },
    )
    .await?;
    warn_if_in_memory(&leases).await;
    Ok(Topology {
        subjects,
        tasks,
        leases,
    })
}

/// Warns when the leases bucket was created in memory by an earlier version. JetStream
/// cannot change the storage of an existing bucket.
async fn warn_if_in_memory(leases: &kv::Store) {
    let Ok(status) = leases.status().await else {
        return;
    };
    if status.info.config.storage == stream::StorageType::Memory {
        tracing::warn!(
            bucket = %status.bucket,
            "the leases bucket is kept in memory, so a NATS restart drops every lease; delete it while no ingest runs (nats kv del {}) and it is created again on disk",
            status.bucket
        );
    }
}

async fn ensure_stream(js: &jetstream::Context, config: stream::Config) -> Result<(), TopologyError> {
    let name = config.name.clone();
    let error = |source: Box<dyn std::error::Error + Send + Sync>| TopologyError::Stream {
        name: name.clone(),
        source,
    };
    match js.get_stream(&config.name).await {
        Ok(mut existing) => {
            let current = existing.info().await.map_err(|e| error(Box::new(e)))?.config.clone();
            if current.subjects != config.subjects
                || current.max_age != config.max_age
                || current.duplicate_window != config.duplicate_window
                || current.max_messages_per_subject != config.max_messages_per_subject
            {
                js.update_stream(config.clone()).await.map_err(|e| error(Box::new(e)))?;
            }
            Ok(())
        }
        Err(_) => {
            // Another stage may create it between our look-up and create: get_or_create_stream
            // returns the existing stream in that case.
            js.get_or_create_stream(config.clone())
                .await
                .map_err(|e| error(Box::new(e)))?;
            Ok(())
        }
    }
}

async fn ensure_bucket(js: &jetstream::Context, config: kv::Config) -> Result<kv::Store, TopologyError> {
    let name = config.bucket.clone();
    match js.get_key_value(&name).await {
        Ok(store) => Ok(store),
        Err(_) => match js.create_key_value(config).await {
            Ok(store) => Ok(store),
            // Lost a race with another stage: open what it created.
            Err(create_error) => js.get_key_value(&name).await.map_err(|_| TopologyError::Bucket {
                name: name.clone(),
                source: Box::new(create_error),
            }),
        },
    }
}
