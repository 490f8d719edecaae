//! Resources in a compacted Kafka topic, `ferry-resources`: key `Kind/namespace/name`, value the
//! resource's JSON, a delete a tombstone. A node reads the whole topic when it starts and then
//! follows it, so it sees what other nodes apply; reads are served from that copy.

use super::{key, ResourceStore, StoreError, INITIALIZED};
use crate::control::resource::{Kind, Resource};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The topic that holds every resource.
pub const TOPIC: &str = "ferry-resources";
const TIMEOUT: Duration = Duration::from_secs(10);

type Map = Arc<RwLock<BTreeMap<String, Vec<u8>>>>;

pub struct KafkaStore {
    producer: FutureProducer,
    map: Map,
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Kafka(e.to_string())
}

fn config(options: &broker::KafkaOptions) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &options.bootstrap);
    c
}

/// Applies one record of the topic to the copy.
fn apply<M: Message>(map: &Map, m: &M) {
    let Some(k) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
        return;
    };
    if let Ok(mut map) = map.write() {
        match m.payload() {
            Some(v) if !v.is_empty() => {
                map.insert(k.to_string(), v.to_vec());
            }
            _ => {
                map.remove(k);
            }
        }
    }
}

impl KafkaStore {
    /// Creates the topic if needed, reads it whole, and follows it from there.
    pub async fn open(options: &broker::KafkaOptions) -> Result<Self, StoreError> {
        let admin: AdminClient<DefaultClientContext> = config(options).create().map_err(err)?;
        let topic = NewTopic::new(
            TOPIC,
            1,
            TopicReplication::Fixed(options.replication_factor),
        )
        .set("cleanup.policy", "compact");
        for r in admin
            .create_topics(
                &[topic],
                &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
            )
            .await
            .map_err(err)?
        {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => return Err(StoreError::Kafka(format!("creating {t}: {code}"))),
            }
        }
        let map: Map = Arc::default();
        let (load_map, load_options) = (map.clone(), options.clone());
        let high = tokio::task::spawn_blocking(move || -> Result<i64, StoreError> {
            let c: BaseConsumer = config(&load_options)
                .set("group.id", "ferry-resources-reader")
                .set("enable.auto.commit", "false")
                .create()
                .map_err(err)?;
            let (_, high) = c.fetch_watermarks(TOPIC, 0, TIMEOUT).map_err(err)?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(TOPIC, 0, Offset::Beginning)
                .map_err(err)?;
            c.assign(&tpl).map_err(err)?;
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            let mut next = 0;
            while next < high {
                if std::time::Instant::now() > deadline {
                    return Err(StoreError::Kafka(format!(
                        "reading {TOPIC} took too long ({next} of {high})"
                    )));
                }
                if let Some(m) = c.poll(Duration::from_millis(200)) {
                    let m = m.map_err(err)?;
                    apply(&load_map, &m);
                    next = m.offset() + 1;
                }
            }
            Ok(high)
        })
        .await
        .map_err(err)??;
        // Follow what this and other nodes write from here on.
        let follower: StreamConsumer = config(options)
            .set("group.id", "ferry-resources-reader")
            .set("enable.auto.commit", "false")
            .create()
            .map_err(err)?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(TOPIC, 0, Offset::Offset(high))
            .map_err(err)?;
        follower.assign(&tpl).map_err(err)?;
        let follow_map = map.clone();
        tokio::spawn(async move {
            loop {
                match follower.recv().await {
                    Ok(m) => apply(&follow_map, &m),
                    Err(e) => tracing::warn!(error = %e, "following {TOPIC}"),
                }
            }
        });
        let producer: FutureProducer = config(options)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()
            .map_err(err)?;
        Ok(Self { producer, map })
    }

    async fn write(&self, k: &str, value: Option<Vec<u8>>) -> Result<(), StoreError> {
        let mut record = FutureRecord::<str, [u8]>::to(TOPIC).key(k);
        if let Some(v) = &value {
            record = record.payload(v.as_slice());
        }
        self.producer
            .send(record, TIMEOUT)
            .await
            .map_err(|(e, _)| err(e))?;
        // Our own copy changes now (the follower sees the record too, with the same result).
        if let Ok(mut map) = self.map.write() {
            match value {
                Some(v) => map.insert(k.to_string(), v),
                None => map.remove(k),
            };
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl ResourceStore for KafkaStore {
    fn get(&self, kind: Kind, namespace: &str, name: &str) -> Result<Option<Resource>, StoreError> {
        let k = key(kind, namespace, name);
        let map = self.map.read().map_err(|_| err("resource copy poisoned"))?;
        match map.get(&k) {
            None => Ok(None),
            Some(v) => serde_json::from_slice(v)
                .map(Some)
                .map_err(|source| StoreError::Corrupt { key: k, source }),
        }
    }

    fn list(&self, kind: Kind, namespace: Option<&str>) -> Result<Vec<Resource>, StoreError> {
        let prefix = match namespace {
            Some(ns) => format!("{}/{ns}/", kind.name()),
            None => format!("{}/", kind.name()),
        };
        let map = self.map.read().map_err(|_| err("resource copy poisoned"))?;
        map.range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| {
                serde_json::from_slice(v).map_err(|source| StoreError::Corrupt {
                    key: k.clone(),
                    source,
                })
            })
            .collect()
    }

    async fn put(&self, r: &Resource) -> Result<(), StoreError> {
        let k = key(r.kind, &r.metadata.namespace, &r.metadata.name);
        let v = serde_json::to_vec(r).map_err(|source| StoreError::Corrupt {
            key: k.clone(),
            source,
        })?;
        self.write(&k, Some(v)).await
    }

    async fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Result<(), StoreError> {
        self.write(&key(kind, namespace, name), None).await
    }

    async fn first_start(&self) -> Result<bool, StoreError> {
        let marker = String::from_utf8_lossy(INITIALIZED).into_owned();
        let seen = self
            .map
            .read()
            .map_err(|_| err("resource copy poisoned"))?
            .contains_key(&marker);
        if seen {
            return Ok(false);
        }
        self.write(&marker, Some(b"1".to_vec())).await?;
        Ok(true)
    }
}
