//! The JetStream operations both forwarders share: reading their durable pull consumer, and
//! moving an undecodable message to the dead stream.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::message::Message;
use async_nats::jetstream::{self, AckKind};
use async_nats::HeaderMap;
use monitor_core::Subjects;
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;
use tracing::warn;

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

/// The reason a pull stream is reopened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The stream failed or ended.
    Failed,
    /// The server's idle heartbeats stopped: it no longer has the stream's pull request, though
    /// the server itself may still be reachable.
    LostPull,
}

impl StreamEnd {
    /// Classifies the error that ended a stream, `None` for a stream that ended.
    pub fn of(error: Option<&pull::MessagesError>) -> StreamEnd {
        match error.map(|error| error.kind()) {
            Some(pull::MessagesErrorKind::MissingHeartbeat) => StreamEnd::LostPull,
            _ => StreamEnd::Failed,
        }
    }
}

/// Messages requested by each pull request of [`DurableConsumer::messages`]. The client sends
/// the next request when half of them have arrived, so this sets how often a busy stream pulls.
/// With 64, a full-speed loadgen run sent about 50 requests a second, and the server lost one
/// in four runs of five. With 256 it lost none in fourteen runs. Alerts are still handled in
/// batches of at most `alerts::MAX_BATCH`.
const PULL_BATCH: usize = 256;
/// Expiry of each pull request.
const PULL_EXPIRES: Duration = Duration::from_secs(10);
/// Idle heartbeat of each pull request. Two missed heartbeats end a stream with an error.
/// NOTE: why the server loses a pull request under load is not known. The missed heartbeats
/// reveal a lost one after about two seconds.
const PULL_HEARTBEAT: Duration = Duration::from_secs(1);
/// First pause before a failed or ended stream is reopened. It doubles while reopened streams
/// keep failing soon, up to [`REOPEN_MAX`].
const REOPEN_MIN: Duration = Duration::from_millis(500);
const REOPEN_MAX: Duration = Duration::from_secs(10);

/// A durable pull consumer with explicit acks over the subjects of one stream, created again
/// when the server has lost it (deleted by an operator, or a stream recreated).
pub struct DurableConsumer {
    js: jetstream::Context,
    stream: String,
    name: &'static str,
    filter_subject: String,
    consumer: PullConsumer,
    /// Pause before the next reopen attempt.
    reopen_delay: Duration,
    /// Time the current stream was opened.
    opened_at: Instant,
}

impl DurableConsumer {
    /// Creates (or opens) the consumer `name` on `stream`.
    pub async fn open(
        js: &jetstream::Context,
        stream: &str,
        name: &'static str,
        filter_subject: &str,
    ) -> Result<DurableConsumer, JetStreamError> {
        let consumer = create_consumer(js, stream, name, filter_subject).await?;
        Ok(DurableConsumer {
            js: js.clone(),
            stream: stream.to_owned(),
            name,
            filter_subject: filter_subject.to_owned(),
            consumer,
            reopen_delay: REOPEN_MIN,
            opened_at: Instant::now(),
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Opens the message stream of the consumer.
    ///
    /// The stream requests idle heartbeats, so that a pull request lost between client and
    /// server shows up as a "missed idle heartbeat" error within two seconds. The callers then
    /// reopen it. Without heartbeats, the client found out only when the request expired, and
    /// full-speed loadgen runs showed notify idle for 35 s with hundreds of alerts pending and
    /// no pull request waiting at the server.
    pub async fn messages(&mut self) -> Result<pull::Stream, JetStreamError> {
        self.opened_at = Instant::now();
        self.consumer
            .stream()
            .max_messages_per_batch(PULL_BATCH)
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_HEARTBEAT)
            .messages()
            .await
            .map_err(|source| JetStreamError::Messages {
                consumer: self.name.to_owned(),
                source,
            })
    }

    /// Opens a new stream after the current one ended for `end`, creating the consumer again
    /// first. Each attempt waits a pause, which doubles while streams keep failing within
    /// [`REOPEN_MAX`] of being opened, so a consumer that fails every pull costs one attempt
    /// and one log line per pause. After a lost pull request the first attempt is made at
    /// once: the heartbeat that revealed it already took two seconds. Returns `None` when
    /// `shutdown` is cancelled first.
    pub async fn reopen(
        &mut self,
        end: StreamEnd,
        shutdown: &CancellationToken,
    ) -> Option<pull::Stream> {
        if self.opened_at.elapsed() > REOPEN_MAX {
            self.reopen_delay = REOPEN_MIN;
        }
        let mut pause = end != StreamEnd::LostPull;
        loop {
            if pause {
                let delay = self.reopen_delay;
                self.reopen_delay = (delay * 2).min(REOPEN_MAX);
                shutdown.run_until_cancelled(sleep(delay)).await?;
            }
            pause = true;
            let opened = match create_consumer(
                &self.js,
                &self.stream,
                self.name,
                &self.filter_subject,
            )
            .await
            {
                Ok(consumer) => {
                    self.consumer = consumer;
                    self.messages().await
                }
                Err(error) => Err(error),
            };
            match opened {
                Ok(stream) => return Some(stream),
                Err(error) => {
                    warn!(consumer = self.name, error = %error, retry_in_ms = self.reopen_delay.as_millis() as u64, "failed to reopen the consumer, retrying")
                }
            }
        }
    }
}

async fn create_consumer(
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

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::jetstream::consumer::pull::{MessagesError, MessagesErrorKind};

    #[test]
    fn missed_heartbeat_means_lost_pull() {
        let missed = MessagesError::new(MessagesErrorKind::MissingHeartbeat);
        assert_eq!(StreamEnd::of(Some(&missed)), StreamEnd::LostPull);
    }

    #[test]
    fn other_stream_ends_are_failures() {
        let deleted = MessagesError::new(MessagesErrorKind::ConsumerDeleted);
        assert_eq!(StreamEnd::of(Some(&deleted)), StreamEnd::Failed);
        assert_eq!(StreamEnd::of(None), StreamEnd::Failed);
    }
}
