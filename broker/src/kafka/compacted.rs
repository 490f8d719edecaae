//! A compacted topic used as a durable key-value map: read whole when opened (and, if asked,
//! followed afterwards, to see other nodes' writes), written through: a write counts once Kafka
//! acknowledged it. An empty value is a tombstone. Ferry keeps its resources
//! (`ferry-resources`) and its triggers' retries and dead letters (`ferry-deliveries`) so.
//!
//! Every record carries its writer's id (header `ferry-writer`): a follower applies only other
//! writers' records (its own are in the copy once acknowledged, and applying them again as
//! they come back round could briefly bring back a key deleted since), and announces each key
//! they changed on [`CompactedTopic::changes`].

use super::{client_config, kafka_err, KafkaOptions};
use crate::log::LogError;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::broadcast;

const TIMEOUT: Duration = Duration::from_secs(10);
/// The header naming a record's writer.
const WRITER: &str = "ferry-writer";

/// An id no other writer has: this process and a counter, with the start time against pid
/// reuse.
fn writer_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn written_by<M: Message>(m: &M, id: &str) -> bool {
    m.headers().is_some_and(|h| {
        h.iter()
            .any(|h| h.key == WRITER && h.value == Some(id.as_bytes()))
    })
}

type Map = Arc<RwLock<BTreeMap<Vec<u8>, Vec<u8>>>>;

/// Keys and values, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

pub struct CompactedTopic {
    topic: String,
    producer: FutureProducer,
    map: Map,
    writer: String,
    changes: broadcast::Sender<Vec<u8>>,
}

/// Applies one record to the copy; true if it changed it.
fn apply<M: Message>(map: &Map, m: &M) -> bool {
    let Some(k) = m.key() else { return false };
    let Ok(mut map) = map.write() else {
        return false;
    };
    match m.payload() {
        Some(v) if !v.is_empty() => map.insert(k.to_vec(), v.to_vec()).as_deref() != Some(v),
        _ => map.remove(k).is_some(),
    }
}

impl CompactedTopic {
    /// Creates the topic if needed (one partition, `cleanup.policy=compact`) and reads it
    /// whole; with `follow`, keeps reading what is written to it afterwards.
    pub async fn open(options: &KafkaOptions, topic: &str, follow: bool) -> Result<Self, LogError> {
        let admin: AdminClient<DefaultClientContext> =
            client_config(options).create().map_err(kafka_err)?;
        let new = NewTopic::new(
            topic,
            1,
            TopicReplication::Fixed(options.replication_factor),
        )
        .set("cleanup.policy", "compact");
        for r in admin
            .create_topics(
                &[new],
                &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
            )
            .await
            .map_err(kafka_err)?
        {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => return Err(LogError::Storage(format!("creating {t}: {code}"))),
            }
        }
        let map: Map = Arc::default();
        let (load_map, load_options, load_topic) =
            (map.clone(), options.clone(), topic.to_string());
        let high = tokio::task::spawn_blocking(move || -> Result<i64, LogError> {
            let c: BaseConsumer = client_config(&load_options)
                .set("group.id", "ferry-compacted-reader")
                .set("enable.auto.commit", "false")
                .create()
                .map_err(kafka_err)?;
            let (_, high) = c
                .fetch_watermarks(&load_topic, 0, TIMEOUT)
                .map_err(kafka_err)?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&load_topic, 0, Offset::Beginning)
                .map_err(kafka_err)?;
            c.assign(&tpl).map_err(kafka_err)?;
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            let mut next = 0;
            while next < high {
                if std::time::Instant::now() > deadline {
                    return Err(LogError::Storage(format!(
                        "reading {load_topic} took too long ({next} of {high})"
                    )));
                }
                if let Some(m) = c.poll(Duration::from_millis(200)) {
                    let m = m.map_err(kafka_err)?;
                    apply(&load_map, &m);
                    next = m.offset() + 1;
                }
            }
            Ok(high)
        })
        .await
        .map_err(|e| LogError::Storage(e.to_string()))??;
        let writer = writer_id();
        let (changes, _) = broadcast::channel(1024);
        if follow {
            let follower: StreamConsumer = client_config(options)
                .set("group.id", "ferry-compacted-reader")
                .set("enable.auto.commit", "false")
                // Other nodes' changes show within a fraction of a second.
                .set("fetch.wait.max.ms", "100")
                .create()
                .map_err(kafka_err)?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, 0, Offset::Offset(high))
                .map_err(kafka_err)?;
            follower.assign(&tpl).map_err(kafka_err)?;
            let (follow_map, name) = (map.clone(), topic.to_string());
            let (me, announce) = (writer.clone(), changes.clone());
            tokio::spawn(async move {
                loop {
                    match follower.recv().await {
                        Ok(m) if written_by(&m, &me) => {}
                        Ok(m) => {
                            if apply(&follow_map, &m) {
                                if let Some(k) = m.key() {
                                    // No one listening is fine.
                                    let _ = announce.send(k.to_vec());
                                }
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "following {name}"),
                    }
                }
            });
        }
        Ok(Self {
            topic: topic.to_string(),
            producer: super::producer(&KafkaOptions {
                max_batch_records: Some(1),
                ..options.clone()
            })?,
            map,
            writer,
            changes,
        })
    }

    /// The keys other writers change from now on (when following), as they are applied to
    /// the copy. A receiver that falls behind gets `Lagged` and should look at everything.
    pub fn changes(&self) -> broadcast::Receiver<Vec<u8>> {
        self.changes.subscribe()
    }

    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.map.read().ok()?.get(key).cloned()
    }

    /// Every entry whose key starts with `prefix`, in key order.
    pub fn scan(&self, prefix: &[u8]) -> Entries {
        let Ok(map) = self.map.read() else {
            return Vec::new();
        };
        map.range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Writes (value `Some`) or deletes (`None`) each key, in order; returns once Kafka
    /// acknowledged them all, and the copy shows them.
    pub async fn write(&self, ops: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), LogError> {
        for (k, v) in &ops {
            let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic)
                .key(k.as_slice())
                .headers(OwnedHeaders::new().insert(Header {
                    key: WRITER,
                    value: Some(self.writer.as_bytes()),
                }));
            if let Some(v) = v {
                record = record.payload(v.as_slice());
            }
            self.producer
                .send(record, TIMEOUT)
                .await
                .map_err(|(e, _)| kafka_err(e))?;
        }
        if let Ok(mut map) = self.map.write() {
            for (k, v) in ops {
                match v {
                    Some(v) => map.insert(k, v),
                    None => map.remove(&k),
                };
            }
        }
        Ok(())
    }
}
