//! A pipeline of one test on the nats-server that `scripts/test` started: its own subject
//! prefix (so its own streams and buckets, from `monitor_tests::TestEnv`), task and batch
//! specs in its tasks bucket, and evaluate instances run in-process.

#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, message::StreamMessage};
use async_nats::HeaderMap;
use monitor_core::codec;
use monitor_core::messages::{
    Alert, BatchRef, BatchSpec, BatchStatus, Chain, ConfigSpec, Event, EventFrame, EventKind, Side,
    TargetRef, TargetSpec, TaskSpec, TaskType, TokenSnapshot, Trade, WindowStats, MESSAGE_VERSION,
};
use monitor_core::rules::{
    LargeTradeRule, Rules, SideFilter, TokenRules, TriggerLogic, VolumeRule,
};
use monitor_core::settings::NatsSettings;
use monitor_core::topology::{self, Topology};
use monitor_core::Subjects;
use monitor_evaluate::Settings;
use monitor_tests::TestEnv;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const TASK_ID: u64 = 41;
pub const BATCH_ID: u64 = 410;
pub const TARGET_ID: u64 = 4100;
pub const WETH: &str = "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2";
/// A source time on a whole 300-second boundary.
pub const T0: i64 = 1_700_000_100_000;
pub const COOLDOWN_SEC: u32 = 300;

/// Upper bound of every wait; a wait ends as soon as its condition holds.
const WAIT_LIMIT: Duration = Duration::from_secs(120);

pub struct Pipeline {
    pub env: TestEnv,
    pub settings: Settings,
    pub subjects: Subjects,
    pub js: jetstream::Context,
    pub topology: Topology,
}

/// An evaluate stage running in this process.
pub struct Instance {
    shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Instance {
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.handle.await.context("evaluate panicked")?
    }
}

impl Pipeline {
    /// Sets up a pipeline on the shared nats-server.
    pub async fn new(test: &str) -> anyhow::Result<Self> {
        let env = TestEnv::new(test).await;
        let nats = env.nats_settings();
        Self::on(env, nats).await
    }

    /// Sets up a pipeline with the test's subject prefix on the server of `nats`.
    pub async fn on(env: TestEnv, nats: NatsSettings) -> anyhow::Result<Self> {
        monitor_core::telemetry::init(monitor_core::telemetry::LogFormat::Text);
        let settings = Settings {
            nats,
            ..Settings::local("", env.subject_prefix())
        };
        let client = settings.nats.connect("evaluate-test").await?;
        let js = jetstream::new(client);
        let topology = topology::ensure(&js, &settings.nats).await?;
        Ok(Pipeline {
            env,
            subjects: settings.nats.subjects(),
            settings,
            js,
            topology,
        })
    }

    pub fn start(&self) -> Instance {
        self.start_with(self.settings.clone())
    }

    pub fn start_with(&self, settings: Settings) -> Instance {
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(monitor_evaluate::run(settings, shutdown.clone()));
        Instance { shutdown, handle }
    }

    pub async fn put_task(&self, spec: &TaskSpec) -> anyhow::Result<()> {
        let key = Subjects::task_key(spec.task_id);
        self.topology
            .tasks
            .put(key, codec::encode(spec)?.into())
            .await?;
        Ok(())
    }

    pub async fn put_batch(&self, spec: &BatchSpec) -> anyhow::Result<()> {
        let key = Subjects::batch_key(spec.batch_id);
        self.topology
            .tasks
            .put(key, codec::encode(spec)?.into())
            .await?;
        Ok(())
    }

    pub async fn delete_task(&self, task_id: u64) -> anyhow::Result<()> {
        self.topology
            .tasks
            .delete(Subjects::task_key(task_id))
            .await?;
        Ok(())
    }

    /// Publishes a frame as ingest does, with its `Nats-Msg-Id`.
    pub async fn publish_frame(&self, frame: &EventFrame) -> anyhow::Result<()> {
        let subject = self.frame_subject(frame);
        self.publish_raw(&subject, &frame.msg_id(), codec::encode(frame)?)
            .await
    }

    pub fn frame_subject(&self, frame: &EventFrame) -> String {
        self.subjects.batch_events(
            frame.chain,
            frame.task_id,
            frame.batch_id.unwrap_or_default(),
        )
    }

    pub async fn publish_raw(
        &self,
        subject: &str,
        msg_id: &str,
        payload: Vec<u8>,
    ) -> anyhow::Result<()> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id);
        self.js
            .publish_with_headers(subject.to_owned(), headers, payload.into())
            .await?
            .await?;
        Ok(())
    }

    /// Reads every message stored in a stream, in order.
    pub async fn stream_messages(&self, stream_name: &str) -> anyhow::Result<Vec<StreamMessage>> {
        let mut stream = self.js.get_stream(stream_name).await?;
        let state = stream.info().await?.state.clone();
        let mut messages = Vec::new();
        if state.messages == 0 {
            return Ok(messages);
        }
        for sequence in state.first_sequence..=state.last_sequence {
            messages.push(stream.get_raw_message(sequence).await?);
        }
        Ok(messages)
    }

    pub async fn alerts(&self) -> anyhow::Result<Vec<(StreamMessage, Alert)>> {
        let messages = self.stream_messages(&self.subjects.alerts_stream()).await?;
        messages
            .into_iter()
            .map(|m| {
                let alert = codec::decode::<Alert>(&m.payload)?;
                Ok((m, alert))
            })
            .collect()
    }

    pub async fn dead_letters(&self) -> anyhow::Result<Vec<StreamMessage>> {
        self.stream_messages(&self.subjects.dead_stream()).await
    }

    /// Returns the state of the evaluate consumer, once evaluate has created it.
    pub async fn consumer_info(&self) -> anyhow::Result<Option<jetstream::consumer::Info>> {
        let events = self.js.get_stream(self.subjects.events_stream()).await?;
        let Ok(mut consumer) = events
            .get_consumer::<jetstream::consumer::pull::Config>(Subjects::EVALUATE_CONSUMER)
            .await
        else {
            return Ok(None);
        };
        Ok(Some(consumer.info().await?.clone()))
    }

    /// Waits until the evaluate consumer has acked, nakked-and-redelivered or terminated
    /// every frame of the events stream.
    pub async fn wait_settled(&self) -> anyhow::Result<()> {
        wait_for("every frame settled", || async {
            let mut events = self.js.get_stream(self.subjects.events_stream()).await?;
            let last = events.info().await?.state.last_sequence;
            let Some(info) = self.consumer_info().await? else {
                return Ok(false);
            };
            Ok(info.delivered.stream_sequence >= last
                && info.num_pending == 0
                && info.num_ack_pending == 0)
        })
        .await
    }
}

/// Polls `condition` until it returns true, and fails after [`WAIT_LIMIT`].
pub async fn wait_for<F, Fut>(description: &str, mut condition: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
    loop {
        if condition().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {WAIT_LIMIT:?} waiting for {description}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn header<'a>(message: &'a StreamMessage, name: &str) -> Option<&'a str> {
    message.headers.get(name).map(|v| v.as_str())
}

// ---------------------------------------------------------------------------------------------
// Specs and frames.

/// Builds a token task raising `large_trade` (>= 10 000 USD, any side) and `volume_change`
/// (>= 100 000 USD in 60 s) alerts.
pub fn task_spec(task_id: u64) -> TaskSpec {
    let rules = TokenRules {
        price_change: None,
        volume: Some(VolumeRule {
            window_sec: 60,
            min_volume_usd: 100_000.0,
        }),
        holder_change: None,
        large_trade: Some(LargeTradeRule {
            side: SideFilter::Any,
            min_usd: 10_000.0,
        }),
        cumulative_buy: None,
        top_holders: None,
        cooldown_sec: COOLDOWN_SEC,
    };
    TaskSpec {
        v: MESSAGE_VERSION,
        task_id,
        name: format!("task {task_id}"),
        task_type: TaskType::Smart,
        chain: Chain::Eth,
        epoch: 1,
        config: Some(ConfigSpec {
            config_id: 5,
            version: 2,
            name: "whales".into(),
            trigger_logic: TriggerLogic::Or,
            rules: Rules::Token(rules),
        }),
        batches: vec![BatchRef {
            batch_id: BATCH_ID,
            batch_no: 1,
            item_count: 1,
            status: BatchStatus::Running,
        }],
        config_error: None,
        published_ms: T0,
    }
}

pub fn batch_spec(task_id: u64) -> BatchSpec {
    BatchSpec {
        v: MESSAGE_VERSION,
        batch_id: BATCH_ID,
        task_id,
        epoch: 1,
        batch_no: 1,
        status: BatchStatus::Running,
        targets: vec![TargetSpec {
            target_id: TARGET_ID,
            address: WETH.into(),
            pair_address: None,
            token_name: Some("Wrapped Ether".into()),
            token_symbol: Some("WETH".into()),
            market_cap: Some(5e9),
            source: None,
            batch_order: 0,
        }],
    }
}

/// Builds a buy of `volume_usd` at `time_ms`, with `window_volume_usd` traded in its 60 s window.
pub fn trade_event(time_ms: i64, volume_usd: f64, window_volume_usd: f64) -> Event {
    Event {
        source_time_ms: time_ms,
        ingest_time_ms: time_ms + 15,
        target: Some(TargetRef {
            target_id: TARGET_ID,
            address: WETH.into(),
        }),
        kind: EventKind::Trade(Trade {
            side: Side::Buy,
            volume_usd,
            price_usd: Some(2000.0),
            tx_hash: Some(format!("0x{time_ms:x}")),
            owner: None,
        }),
        snapshot: Some(TokenSnapshot {
            price: Some(2000.0),
            market_cap: None,
            windows: vec![WindowStats {
                window_sec: 60,
                start_time_ms: Some(time_ms - 30_000),
                volume_usd: window_volume_usd,
                buy_usd: window_volume_usd,
                trades: 3,
                ..WindowStats::default()
            }],
            ..TokenSnapshot::default()
        }),
    }
}

pub fn frame(task_id: u64, seq: u64, events: Vec<Event>) -> EventFrame {
    EventFrame {
        v: MESSAGE_VERSION,
        task_id,
        batch_id: Some(BATCH_ID),
        epoch: 1,
        chain: Chain::Eth,
        producer: "ingest-test".into(),
        seq,
        events,
    }
}
