//! The key-value backends of the delivery store: RocksDB (embedded mode) and a compacted Kafka
//! topic mirrored in memory (Kafka mode, so a node keeps no state of its own).

use super::StoreError;
use broker::kafka::compacted::CompactedTopic;
use std::path::Path;

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

pub use broker::kafka::compacted::Entries;

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

/// The compacted topic `ferry-deliveries`, read whole at start and followed (a node that takes
/// over a partition from another sees the retries that node left); writes are acknowledged by
/// Kafka before they count.
pub struct KafkaKv {
    topic: CompactedTopic,
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Kafka(e.to_string())
}

impl KafkaKv {
    pub async fn open(options: &broker::KafkaOptions) -> Result<Self, StoreError> {
        Ok(Self {
            topic: CompactedTopic::open(options, TOPIC, true)
                .await
                .map_err(err)?,
        })
    }
}

impl Kv for KafkaKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.topic.get(key))
    }

    fn scan(&self, prefix: &[u8]) -> Result<Entries, StoreError> {
        Ok(self.topic.scan(prefix))
    }

    fn write(&self, batch: Batch) -> Result<(), StoreError> {
        // Deliveries are completed by librdkafka's own thread, so waiting here cannot deadlock
        // the runtime; retries and dead letters are rare next to deliveries.
        futures::executor::block_on(self.topic.write(batch.ops)).map_err(err)
    }
}
