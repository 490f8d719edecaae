//! The key-value backends of the delivery store: RocksDB (embedded mode) and a compacted Kafka
//! topic mirrored in memory (Kafka mode, so a node keeps no state of its own).

use super::StoreError;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::RwLock;
use std::time::Duration;

/// Writes applied together.
#[derive(Default)]
pub struct Batch {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Batch {
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.ops
            .push((key.as_ref().to_vec(), Some(value.as_ref().to_vec())));
    }

    pub fn delete(&mut self, key: impl AsRef<[u8]>) {
        self.ops.push((key.as_ref().to_vec(), None));
    }
}

/// Keys and values, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Ordered keys and values, written durably.
pub trait Kv: Send + Sync {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every entry whose key starts with `prefix`, in key order.
    fn scan(&self, prefix: &[u8]) -> Result<Entries, StoreError>;
    /// Applies the batch durably (synced / acknowledged) before returning.
    fn write(&self, batch: Batch) -> Result<(), StoreError>;
}

pub(super) struct RocksKv {
    db: rocksdb::DB,
}

impl RocksKv {
    pub(super) fn open(path: &Path) -> Result<Self, StoreError> {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        Ok(Self {
            db: rocksdb::DB::open(&opts, path)?,
        })
    }
}

impl Kv for RocksKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(key)?)
    }

    fn scan(&self, prefix: &[u8]) -> Result<Entries, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iterator(rocksdb::IteratorMode::From(
            prefix,
            rocksdb::Direction::Forward,
        )) {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn write(&self, batch: Batch) -> Result<(), StoreError> {
        let mut wb = rocksdb::WriteBatch::default();
        for (k, v) in batch.ops {
            match v {
                Some(v) => wb.put(k, v),
                None => wb.delete(k),
            }
        }
        let mut o = rocksdb::WriteOptions::default();
        o.set_sync(true);
        Ok(self.db.write_opt(wb, &o)?)
    }
}

/// The topic holding every trigger's retries and dead letters in Kafka mode.
pub const TOPIC: &str = "ferry-deliveries";
const TIMEOUT: Duration = Duration::from_secs(10);

/// A compacted topic (key → value, empty value = deleted), read whole at start and kept in
/// memory; writes are produced and acknowledged before they count.
pub struct KafkaKv {
    producer: FutureProducer,
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Kafka(e.to_string())
}

impl KafkaKv {
    pub async fn open(bootstrap: &str, replication_factor: i32) -> Result<Self, StoreError> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", bootstrap);
        let admin: AdminClient<DefaultClientContext> = config.create().map_err(err)?;
        let topic = NewTopic::new(TOPIC, 1, TopicReplication::Fixed(replication_factor))
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
        let load_config = config.clone();
        let map = tokio::task::spawn_blocking(
            move || -> Result<BTreeMap<Vec<u8>, Vec<u8>>, StoreError> {
                let c: BaseConsumer = load_config
                    .clone()
                    .set("group.id", "ferry-deliveries-reader")
                    .set("enable.auto.commit", "false")
                    .create()
                    .map_err(err)?;
                let (_, high) = c.fetch_watermarks(TOPIC, 0, TIMEOUT).map_err(err)?;
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(TOPIC, 0, Offset::Beginning)
                    .map_err(err)?;
                c.assign(&tpl).map_err(err)?;
                let mut map = BTreeMap::new();
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                let mut next = 0;
                while next < high {
                    if std::time::Instant::now() > deadline {
                        return Err(StoreError::Kafka(format!("reading {TOPIC} took too long")));
                    }
                    if let Some(m) = c.poll(Duration::from_millis(200)) {
                        let m = m.map_err(err)?;
                        if let Some(k) = m.key() {
                            match m.payload() {
                                Some(v) if !v.is_empty() => map.insert(k.to_vec(), v.to_vec()),
                                _ => map.remove(k),
                            };
                        }
                        next = m.offset() + 1;
                    }
                }
                Ok(map)
            },
        )
        .await
        .map_err(err)??;
        let producer: FutureProducer = config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("batch.num.messages", "1")
            .create()
            .map_err(err)?;
        Ok(Self {
            producer,
            map: RwLock::new(map),
        })
    }
}

impl Kv for KafkaKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .map
            .read()
            .map_err(|_| err("poisoned"))?
            .get(key)
            .cloned())
    }

    fn scan(&self, prefix: &[u8]) -> Result<Entries, StoreError> {
        let map = self.map.read().map_err(|_| err("poisoned"))?;
        Ok(map
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn write(&self, batch: Batch) -> Result<(), StoreError> {
        for (k, v) in &batch.ops {
            let mut record = FutureRecord::<[u8], [u8]>::to(TOPIC).key(k.as_slice());
            if let Some(v) = v {
                record = record.payload(v.as_slice());
            }
            // Deliveries are completed by librdkafka's own thread, so waiting here cannot
            // deadlock the runtime; retries and dead letters are rare next to deliveries.
            futures::executor::block_on(self.producer.send(record, TIMEOUT))
                .map_err(|(e, _)| err(e))?;
        }
        let mut map = self.map.write().map_err(|_| err("poisoned"))?;
        for (k, v) in batch.ops {
            match v {
                Some(v) => map.insert(k, v),
                None => map.remove(&k),
            };
        }
        Ok(())
    }
}
