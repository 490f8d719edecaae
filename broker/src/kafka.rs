//! The distributed engine: every broker's log is a Kafka topic `knative-broker-{ns}-{name}`
//! (K-02), events are records in the CloudEvents Kafka binding's binary mode (`record.rs`),
//! appends are acknowledged by all in-sync replicas (idempotent producer, `acks=all`), and
//! consumer groups keep the committed offsets.
//!
//! - `record.rs`: event ⇄ record.
//! - `compacted.rs`: a compacted topic as a durable key-value map (resources, retries).
//! - `writer.rs`: a producer for any topic (what a KafkaSink writes with).
//! - `consumer.rs`: a consumer over a topic's partitions: all of them, assigned by this engine,
//!   or a share of them as a member of a consumer group (a trigger on several nodes).
//!
//! Retention is Kafka's (`retention.ms`, `retention.bytes` set on the topic when it is created);
//! `enforce_retention` has nothing to do. A batch append is not atomic on Kafka: if one record
//! of a batch fails, the append fails (the producer gets a 503 and retries), but records of
//! the batch that were acknowledged stay: at-least-once, never lost.

mod clients;
pub mod compacted;
mod consumer;
mod names;
pub mod record;
pub mod security;
mod topics;
mod writer;

pub use clients::min_insync_replicas;
use clients::reader_config;
pub(crate) use clients::{client_config, producer, producer_config};
pub use names::{escaped_namespace, topic_name};

pub use writer::{ContentMode, TopicWriter};

use crate::event::Event;
use crate::log::{
    Consumer, Created, EventLog, LogError, Position, Retention, StartAt, Stored, Topic,
    TopicConfig, Watermarks,
};
use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};

use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a metadata, watermark or offset request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where [`EventLog::probe`] writes: one partition, compacted, one key, so it stays one record.
/// (Ferry's own topics start with `ferry-`, which no broker's does.)
pub const PROBE_TOPIC: &str = "ferry-probe";

/// Options of the Kafka engine.
#[derive(Clone, Debug)]
pub struct KafkaOptions {
    /// `bootstrap.servers`.
    pub bootstrap: String,
    /// Replication factor of the topics Ferry creates.
    pub replication_factor: i32,
    /// Most records the producer puts in one batch (`batch.num.messages`); `None`: librdkafka's
    /// default. tansu 0.6 reports a wrong log end (ListOffsets) after a multi-record batch, and
    /// Ferry reads the log end for a new trigger's start and for `ferry tail`, so the tests set
    /// 1 against it.
    pub max_batch_records: Option<usize>,
    /// Longest a trigger's or source's fetch waits for records (`fetch.wait.max.ms`); `None`:
    /// librdkafka's (500 ms). Kafka answers as soon as a record is there, so this only bounds
    /// idle polls; a server that holds every fetch for this long (tansu 0.6) makes it the
    /// delivery latency.
    pub fetch_wait: Option<Duration>,
    /// How long an append waits for Kafka's acknowledgement before it fails (and the ingress
    /// answers 503): the producer's `message.timeout.ms`; `None`: 30 s.
    pub produce_timeout: Option<Duration>,
    /// `min.insync.replicas` of the topics Ferry creates; `None`: 2 from 3 replicas on, else
    /// the cluster's default (see [`min_insync_replicas`]).
    pub min_insync_replicas: Option<i32>,
    /// How Ferry's clients authenticate and encrypt (plaintext by default).
    pub security: security::KafkaSecurity,
}

struct TopicState {
    config: TopicConfig,
    next_partition: AtomicU32,
    /// The Kafka topic ([`topic_name`]'s, or an external topic's own name).
    name: String,
}

/// The Kafka event log. Cheap to clone.
#[derive(Clone)]
pub struct KafkaLog {
    inner: Arc<Inner>,
}

struct Inner {
    options: KafkaOptions,
    naming: Naming,
    /// `ferry_log_append_seconds` and `ferry_log_appended_events_total` (the others are the
    /// embedded engine's own).
    metrics: Option<crate::metrics::LogMetrics>,
    producer: clients::Producer,
    admin: AdminClient<DefaultClientContext>,
    topics: RwLock<HashMap<Topic, Arc<TopicState>>>,
    /// Topics looked up and not found, and when: asked again only after [`UNKNOWN_TTL`], so a
    /// flood of requests for made-up brokers costs no lookups.
    unknown: std::sync::Mutex<HashMap<Topic, std::time::Instant>>,
    /// Brokers' topics the control plane says are Ferry's ([`EventLog::admit`]): the only ones
    /// looked up in Kafka when this node has not created them (Ferry's own brokers, in
    /// `ferry-system`, always are).
    admitted: RwLock<std::collections::HashSet<Topic>>,
    /// One client for metadata and watermarks, made once (a client is threads and
    /// connections: not something to make per request).
    reader: BaseConsumer,
    closed: AtomicBool,
    /// [`PROBE_TOPIC`] is known to exist.
    probe_topic: AtomicBool,
}

/// How long a topic found missing stays missing without asking the cluster again.
const UNKNOWN_TTL: Duration = Duration::from_secs(2);
/// Most topics remembered as missing (the memory is cleared past this).
const UNKNOWN_MAX: usize = 10_000;

/// A record as read from a topic Ferry did not write, for a [`Decode`].
pub struct RawRecord<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp (Unix milliseconds), if it has one.
    pub timestamp_ms: Option<i64>,
    pub key: Option<&'a [u8]>,
    /// Headers in record order.
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
    pub value: Option<&'a [u8]>,
}

/// Turns a record of someone else's topic into an event (`None`: pass it over).
pub type Decode = Arc<dyn Fn(&RawRecord<'_>) -> Option<Event> + Send + Sync>;

/// How a log names its topics and reads its records.
#[derive(Clone)]
pub(crate) enum Naming {
    /// Brokers' topics (`knative-broker-{ns}-{name}`), records written by Ferry or another
    /// CloudEvents producer in binary mode.
    Brokers,
    /// Any cluster's topics by their own name (`Topic::name`), records decoded by the given
    /// function (a KafkaSource).
    External(Decode),
}

fn kafka_err(e: rdkafka::error::KafkaError) -> LogError {
    LogError::Storage(format!("kafka: {e}"))
}

impl KafkaLog {
    pub fn open(options: KafkaOptions) -> Result<Self, LogError> {
        Self::with_naming(options, Naming::Brokers, None)
    }

    /// Like `open`, counting appends in `metrics`.
    pub fn open_measured(
        options: KafkaOptions,
        metrics: crate::metrics::LogMetrics,
    ) -> Result<Self, LogError> {
        Self::with_naming(options, Naming::Brokers, Some(metrics))
    }

    /// A log over any cluster's topics, by their own names (`Topic::new("", name)`), whose
    /// records `decode` turns into events: what a KafkaSource reads.
    pub fn external(options: KafkaOptions, decode: Decode) -> Result<Self, LogError> {
        Self::with_naming(options, Naming::External(decode), None)
    }

    fn with_naming(
        options: KafkaOptions,
        naming: Naming,
        metrics: Option<crate::metrics::LogMetrics>,
    ) -> Result<Self, LogError> {
        let producer = producer(&options)?;
        let admin: AdminClient<DefaultClientContext> =
            client_config(&options).create().map_err(kafka_err)?;
        let reader = reader_config(&options, None).create().map_err(kafka_err)?;
        Ok(Self {
            inner: Arc::new(Inner {
                options,
                naming,
                metrics,
                producer,
                admin,
                topics: RwLock::new(HashMap::new()),
                unknown: Default::default(),
                admitted: Default::default(),
                reader,
                closed: AtomicBool::new(false),
                probe_topic: AtomicBool::new(false),
            }),
        })
    }

    /// A plain consumer (no group membership) for reads and a group's offsets.
    fn base_consumer(&self, group: Option<&str>) -> Result<BaseConsumer, LogError> {
        reader_config(&self.inner.options, group)
            .create()
            .map_err(kafka_err)
    }

    /// The shared client for metadata and watermarks, its queue of events (errors while the
    /// cluster is away) emptied first: nothing else polls it.
    fn reader(&self) -> &BaseConsumer {
        let r = &self.inner.reader;
        while r.poll(Duration::ZERO).is_some() {}
        r
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&KafkaLog) -> Result<T, LogError> + Send + 'static,
    ) -> Result<T, LogError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me))
            .await
            .map_err(|e| LogError::Storage(format!("blocking task failed: {e}")))?
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[async_trait]
impl EventLog for KafkaLog {
    async fn create_topic(&self, topic: &Topic, config: TopicConfig) -> Result<Created, LogError> {
        if self.known(topic).is_some() {
            return Ok(Created::Existing);
        }
        let name = self.name_of(topic);
        let age = config
            .retention
            .max_age
            .map(|a| a.as_millis().to_string())
            .unwrap_or_else(|| "-1".into());
        let bytes = config
            .retention
            .max_bytes_per_partition
            .map(|b| b.to_string())
            .unwrap_or_else(|| "-1".into());
        let min_insync = min_insync_replicas(&self.inner.options);
        let mut new = NewTopic::new(
            &name,
            config.partitions.max(1) as i32,
            TopicReplication::Fixed(self.inner.options.replication_factor),
        )
        .set("retention.ms", &age)
        .set("retention.bytes", &bytes);
        if let Some(m) = &min_insync {
            new = new.set("min.insync.replicas", m);
        }
        let created = self.create(new).await?;
        if let Ok(mut u) = self.inner.unknown.lock() {
            u.remove(topic);
        }
        // A topic that was there already is not taken as this node's: its layout is Kafka's,
        // read when it is used (once admitted), and it may be someone else's.
        if created == Created::Existing {
            return Ok(created);
        }
        if let Ok(mut t) = self.inner.topics.write() {
            t.insert(
                topic.clone(),
                Arc::new(TopicState {
                    config,
                    next_partition: AtomicU32::new(0),
                    name,
                }),
            );
        }
        Ok(created)
    }

    fn storage_name(&self, topic: &Topic) -> Option<String> {
        Some(self.name_of(topic))
    }

    async fn delete_topic(&self, topic: &Topic) -> Result<(), LogError> {
        // By name, known here or not (its broker may be deleted on a node that never used it).
        let name = self.name_of(topic);
        let results = self
            .inner
            .admin
            .delete_topics(
                &[&name],
                &AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT)),
            )
            .await
            .map_err(kafka_err)?;
        if let Ok(mut t) = self.inner.topics.write() {
            t.remove(topic);
        }
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((t, code)) => {
                    return Err(LogError::Storage(format!("deleting topic {t}: {code}")))
                }
            }
        }
        Ok(())
    }

    /// A record written to [`PROBE_TOPIC`] by the producer appends use, acknowledged like an
    /// append: the log takes writes again only once writes go through (a metadata answer
    /// alone says nothing of a producer that is fenced or of too few in-sync replicas).
    async fn probe(&self) -> Result<(), LogError> {
        if !self.inner.probe_topic.load(Ordering::Acquire) {
            let mut new = NewTopic::new(
                PROBE_TOPIC,
                1,
                TopicReplication::Fixed(self.inner.options.replication_factor),
            )
            .set("cleanup.policy", "compact");
            let min_insync = min_insync_replicas(&self.inner.options);
            if let Some(m) = &min_insync {
                new = new.set("min.insync.replicas", m);
            }
            self.create(new).await?;
            self.inner.probe_topic.store(true, Ordering::Release);
        }
        let (generation, producer) = self.inner.producer.get();
        let record = FutureRecord::<str, [u8]>::to(PROBE_TOPIC)
            .key("probe")
            .payload(&[]);
        producer
            .send(record, REQUEST_TIMEOUT)
            .await
            .map_err(|(e, _)| {
                self.inner.producer.failed(generation, &e);
                kafka_err(e)
            })?;
        Ok(())
    }

    fn knows(&self, topic: &Topic) -> bool {
        self.known(topic).is_some()
    }

    async fn topics(&self) -> Result<Vec<(Topic, TopicConfig)>, LogError> {
        let t = self
            .inner
            .topics
            .read()
            .map_err(|_| LogError::Storage("topic table poisoned".into()))?;
        let mut all: Vec<_> = t.iter().map(|(k, v)| (k.clone(), v.config)).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }

    async fn append(&self, topic: &Topic, events: Vec<Event>) -> Result<Vec<Position>, LogError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        let started = std::time::Instant::now();
        let state = self.topic_state(topic).await?;
        let name = self.name_of(topic);
        let n = state.config.partitions.max(1);
        let timestamp = now_ms();
        let (generation, producer) = self.inner.producer.get();
        let sends = events.iter().map(|e| {
            let key = e.partition_key();
            // A keyed event goes where any Kafka client puts that key (librdkafka's
            // `murmur2_random` is the Java client's murmur2), so per-key order holds for
            // producers of every kind; the others are spread round-robin.
            let partition = match &key {
                Some(_) => None,
                None => Some(state.next_partition.fetch_add(1, Ordering::Relaxed) % n),
            };
            let headers = record::headers(e);
            let payload = e.data.clone().unwrap_or_default();
            let name = name.clone();
            let key = key.map(|k| k.into_owned());
            let producer = producer.clone();
            async move {
                let mut rec = FutureRecord::to(&name)
                    .payload(payload.as_ref())
                    .headers(headers)
                    .timestamp(timestamp);
                if let Some(p) = partition {
                    rec = rec.partition(p as i32);
                }
                if let Some(k) = &key {
                    rec = rec.key(k.as_str());
                }
                producer.send(rec, Duration::from_secs(30)).await
            }
        });
        let results = futures::future::join_all(sends).await;
        let mut positions = Vec::with_capacity(results.len());
        for r in results {
            match r {
                Ok(d) => positions.push(Position {
                    partition: d.partition as u32,
                    offset: d.offset as u64,
                }),
                Err((e, _)) => {
                    self.inner.producer.failed(generation, &e);
                    return Err(kafka_err(e));
                }
            }
        }
        if let Some(m) = &self.inner.metrics {
            m.append_seconds.observe(started.elapsed().as_secs_f64());
            m.appended_events.inc_by(positions.len() as u64);
        }
        Ok(positions)
    }

    async fn read(
        &self,
        topic: &Topic,
        partition: u32,
        offset: u64,
        max: usize,
    ) -> Result<Vec<Stored>, LogError> {
        let state = self.topic_state(topic).await?;
        if partition >= state.config.partitions {
            return Err(LogError::UnknownPartition {
                topic: topic.clone(),
                partition,
            });
        }
        let name = self.name_of(topic);
        self.blocking(move |me| {
            let c = me.base_consumer(None)?;
            let (low, high) = c
                .fetch_watermarks(&name, partition as i32, REQUEST_TIMEOUT)
                .map_err(kafka_err)?;
            let from = (offset as i64).max(low);
            if from >= high || max == 0 {
                return Ok(Vec::new());
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&name, partition as i32, Offset::Offset(from))
                .map_err(kafka_err)?;
            c.assign(&tpl).map_err(kafka_err)?;
            let want = ((high - from) as usize).min(max);
            let mut out = Vec::with_capacity(want);
            let deadline = std::time::Instant::now() + REQUEST_TIMEOUT;
            while out.len() < want && std::time::Instant::now() < deadline {
                let Some(m) = c.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let m = m.map_err(kafka_err)?;
                if let Some(s) = consumer::stored(&me.inner.naming, &m) {
                    out.push(s);
                } else if (m.offset() + 1) as usize >= high as usize {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }

    async fn watermarks(&self, topic: &Topic) -> Result<Vec<Watermarks>, LogError> {
        let state = self.topic_state(topic).await?;
        let name = self.name_of(topic);
        self.blocking(move |me| {
            let c = me.reader();
            (0..state.config.partitions)
                .map(|p| {
                    let query = || c.fetch_watermarks(&name, p as i32, REQUEST_TIMEOUT);
                    // The shared client learns of a topic made since it last looked (by this
                    // node or another) from a metadata request, then asks again.
                    let (low, high) = match query() {
                        Ok(w) => w,
                        Err(_) => {
                            c.fetch_metadata(Some(&name), REQUEST_TIMEOUT)
                                .map_err(kafka_err)?;
                            query().map_err(kafka_err)?
                        }
                    };
                    Ok(Watermarks {
                        start: low.max(0) as u64,
                        end: high.max(0) as u64,
                    })
                })
                .collect()
        })
        .await
    }

    async fn commit(
        &self,
        topic: &Topic,
        group: &str,
        offsets: &[Position],
    ) -> Result<(), LogError> {
        self.topic_state(topic).await?;
        let name = self.name_of(topic);
        let group = group.to_string();
        let offsets = offsets.to_vec();
        self.blocking(move |me| {
            let c = me.base_consumer(Some(&group))?;
            let mut tpl = TopicPartitionList::new();
            for p in &offsets {
                tpl.add_partition_offset(
                    &name,
                    p.partition as i32,
                    Offset::Offset(p.offset as i64),
                )
                .map_err(kafka_err)?;
            }
            c.commit(&tpl, CommitMode::Sync).map_err(kafka_err)
        })
        .await
    }

    async fn committed(&self, topic: &Topic, group: &str) -> Result<Vec<Option<u64>>, LogError> {
        let state = self.topic_state(topic).await?;
        let name = self.name_of(topic);
        let group = group.to_string();
        self.blocking(move |me| {
            let c = me.base_consumer(Some(&group))?;
            let mut tpl = TopicPartitionList::new();
            for p in 0..state.config.partitions {
                tpl.add_partition(&name, p as i32);
            }
            let got = c
                .committed_offsets(tpl, REQUEST_TIMEOUT)
                .map_err(kafka_err)?;
            let mut out = vec![None; state.config.partitions as usize];
            for e in got.elements() {
                if let (Offset::Offset(o), Some(slot)) =
                    (e.offset(), out.get_mut(e.partition() as usize))
                {
                    *slot = Some(o as u64);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn consumer(
        &self,
        topic: &Topic,
        group: Option<&str>,
        start: StartAt,
    ) -> Result<Box<dyn Consumer>, LogError> {
        let state = self.topic_state(topic).await?;
        let committed = match group {
            Some(g) => self.committed(topic, g).await?,
            None => vec![None; state.config.partitions as usize],
        };
        let marks = self.watermarks(topic).await?;
        let positions: Vec<u64> = marks
            .iter()
            .zip(committed)
            .map(|(w, c)| {
                c.unwrap_or(match start {
                    StartAt::Earliest => w.start,
                    StartAt::Latest => w.end,
                })
            })
            .collect();
        Ok(Box::new(consumer::KafkaConsumer::assigned(
            &self.inner.options,
            self.inner.naming.clone(),
            self.name_of(topic),
            group.map(str::to_string),
            positions,
        )?))
    }

    async fn group_member(
        &self,
        topic: &Topic,
        group: &str,
        start: StartAt,
    ) -> Result<Box<dyn Consumer>, LogError> {
        self.topic_state(topic).await?;
        Ok(Box::new(consumer::KafkaConsumer::member(
            &self.inner.options,
            self.inner.naming.clone(),
            self.name_of(topic),
            group.to_string(),
            start,
        )?))
    }

    fn forget(&self, topic: &Topic) {
        if let Ok(mut t) = self.inner.topics.write() {
            t.remove(topic);
        }
        if let Ok(mut a) = self.inner.admitted.write() {
            a.remove(topic);
        }
    }

    fn admit(&self, topic: &Topic) {
        if let Ok(mut a) = self.inner.admitted.write() {
            a.insert(topic.clone());
        }
        // Asked again now rather than after the negative cache's time.
        if let Ok(mut u) = self.inner.unknown.lock() {
            u.remove(topic);
        }
    }

    async fn enforce_retention(&self) -> Result<u64, LogError> {
        // Kafka applies the topics' retention.ms and retention.bytes itself.
        Ok(0)
    }

    async fn close(&self) -> Result<(), LogError> {
        self.inner.closed.store(true, Ordering::Release);
        let (_, producer) = self.inner.producer.get();
        tokio::task::spawn_blocking(move || {
            rdkafka::producer::Producer::flush(&producer, REQUEST_TIMEOUT)
        })
        .await
        .map_err(|e| LogError::Storage(e.to_string()))?
        .map_err(kafka_err)
    }
}
