//! The two JetStream operations both forwarders share: opening their durable pull consumer
//! and moving an undecodable message to the dead stream.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::message::Message;
use async_nats::jetstream::{self, AckKind};
use async_nats::HeaderMap;
use monitor_core::Subjects;

/// Header of a dead message with the reason it could not be handled.
pub const DEAD_REASON_HEADER: &str = "Monitor-Dead-Reason";
/// Header of a dead message that names the subject it was first published on.
pub const DEAD_SUBJECT_HEADER: &str = "Monitor-Dead-Subject";

/// How long the server waits for an ack before redelivering a message.
const ACK_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum JetStreamError {
    #[error("failed to open stream {stream}: {source}")]
    Stream {
        stream: String,
        source: async_nats::jetstream::context::GetStreamError,
    },
    #[error("failed to create or open consumer {consumer} on stream {stream}: {source}")]
    Consumer {
        stream: String,
        consumer: String,
        source: async_nats::jetstream::stream::ConsumerError,
    },
    #[error("failed to read consumer {consumer}: {source}")]
    Messages {
        consumer: String,
        source: async_nats::jetstream::consumer::StreamError,
    },
}

/// Creates (or opens) a durable pull consumer with explicit acks over every subject of `stream`.
pub async fn durable_consumer(
    js: &jetstream::Context,
    stream: &str,
    name: &str,
    filter_subject: &str,
) -> Result<PullConsumer, JetStreamError> {
    let handle = js
        .get_stream(stream)
        .await
        .map_err(|source| JetStreamError::Stream {
            stream: stream.to_owned(),
            source,
        })?;
    let config = pull::Config {
        durable_name: Some(name.to_owned()),
        ack_policy: AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        filter_subject: filter_subject.to_owned(),
        ..Default::default()
    };
    handle
        .get_or_create_consumer(name, config)
        .await
        .map_err(|source| JetStreamError::Consumer {
            stream: stream.to_owned(),
            consumer: name.to_owned(),
            source,
        })
}

/// Expiry of each pull request of [`messages`].
const PULL_EXPIRES: Duration = Duration::from_secs(10);
/// Idle heartbeat of each pull request. Two missed heartbeats end a stream with an error.
const PULL_HEARTBEAT: Duration = Duration::from_secs(1);

/// Opens the message stream of a pull consumer.
///
/// The stream requests idle heartbeats, so that a pull request lost between client and server
/// shows up as a "missed idle heartbeat" error within two seconds. The callers then open a
/// new stream. Without heartbeats, the client found out only when the request expired, and
/// full-speed loadgen runs showed notify idle for 35 s with hundreds of alerts pending and no
/// pull request waiting at the server.
pub async fn messages(consumer: &PullConsumer, name: &str) -> Result<pull::Stream, JetStreamError> {
    consumer
        .stream()
        .max_messages_per_batch(64)
        .expires(PULL_EXPIRES)
        .heartbeat(PULL_HEARTBEAT)
        .messages()
        .await
        .map_err(|source| JetStreamError::Messages {
            consumer: name.to_owned(),
            source,
        })
}

/// Publishes the message's payload on the stage's dead subject with the reason, then
/// terminates the original. If the dead stream does not confirm the publish, the original is
/// nak'ed instead, so the message is never dropped before a copy is stored.
pub async fn dead_letter(
    js: &jetstream::Context,
    subjects: &Subjects,
    message: &Message,
    reason: &str,
) {
    let mut headers = HeaderMap::new();
    headers.insert(DEAD_REASON_HEADER, one_line(reason).as_str());
    headers.insert(DEAD_SUBJECT_HEADER, message.subject.as_str());
    let dead_subject = subjects.dead("notify");

    let stored = match js
        .publish_with_headers(dead_subject.clone(), headers, message.payload.clone())
        .await
    {
        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
        Err(error) => Err(error.to_string()),
    };

    match stored {
        Ok(()) => {
            tracing::warn!(subject = %message.subject, dead_subject, reason, "moved an undecodable message to the dead stream");
            acknowledge(message, AckKind::Term).await;
        }
        Err(error) => {
            tracing::warn!(subject = %message.subject, dead_subject, error, "failed to store an undecodable message in the dead stream, it will be redelivered");
            acknowledge(message, AckKind::Nak(Some(Duration::from_secs(5)))).await;
        }
    }
}

/// Sends an ack of the given kind. A lost ack only means the message is delivered again,
/// which every handler tolerates, so the failure is logged and not returned.
pub async fn acknowledge(message: &Message, kind: AckKind) {
    if let Err(error) = message.ack_with(kind).await {
        tracing::warn!(subject = %message.subject, error = %error, "failed to acknowledge a message, it will be redelivered");
    }
}

/// Header values cannot contain line breaks.
fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}
