//! Contracts that every stage of the monitor pipeline shares.
//!
//! The stages (allocator, ingest, evaluate, notify) are separate processes that talk only
//! through NATS JetStream. Everything they must agree on lives here: subject and stream names
//! ([`subjects`], [`topology`]), the message types and their MessagePack codec ([`messages`],
//! [`codec`]), the rule model with its validation ([`rules`]), settings, database access,
//! tracing, metrics and health ([`metrics`]), the tokio runtime ([`runtime`]) and shutdown.

pub mod codec;
pub mod db;
pub mod limits;
pub mod locale;
pub mod messages;
pub mod metrics;
pub mod rules;
pub mod runtime;
pub mod settings;
pub mod shutdown;
pub mod subjects;
pub mod telemetry;
pub mod time;
pub mod titles;
pub mod topology;

pub use locale::Locale;
pub use subjects::Subjects;
