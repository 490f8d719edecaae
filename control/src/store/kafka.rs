//! Resources in a compacted Kafka topic, `ferry-resources`: key `Kind/namespace/name`, value the
//! resource's JSON, a delete a tombstone. A node reads the whole topic when it starts and then
//! follows it, so it sees what other nodes apply; reads are served from that copy.

use super::{key, ResourceStore, StoreError, INITIALIZED};
use crate::resource::Resource;
use broker::kafka::compacted::CompactedTopic;

/// The topic that holds every resource.
pub const TOPIC: &str = "ferry-resources";

pub struct KafkaStore {
    topic: CompactedTopic,
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Kafka(e.to_string())
}

impl KafkaStore {
    /// Reads the topic whole and follows it from there.
    pub async fn open(options: &broker::KafkaOptions) -> Result<Self, StoreError> {
        Ok(Self {
            topic: CompactedTopic::open(options, TOPIC, true)
                .await
                .map_err(err)?,
        })
    }

    fn decode(k: &[u8], v: &[u8]) -> Result<Resource, StoreError> {
        serde_json::from_slice(v).map_err(|source| StoreError::Corrupt {
            key: String::from_utf8_lossy(k).into_owned(),
            source,
        })
    }
}

#[async_trait::async_trait]
impl ResourceStore for KafkaStore {
    fn get(&self, kind: &str, namespace: &str, name: &str) -> Result<Option<Resource>, StoreError> {
        let k = key(kind, namespace, name);
        self.topic
            .get(k.as_bytes())
            .map(|v| Self::decode(k.as_bytes(), &v))
            .transpose()
    }

    fn list(&self, kind: &str, namespace: Option<&str>) -> Result<Vec<Resource>, StoreError> {
        let prefix = match namespace {
            Some(ns) => format!("{kind}/{ns}/"),
            None => format!("{kind}/"),
        };
        Ok(self
            .topic
            .scan(prefix.as_bytes())
            .iter()
            .filter_map(|(k, v)| super::readable(k, v))
            .collect())
    }

    async fn put(&self, r: &Resource) -> Result<(), StoreError> {
        let (k, v) = super::entry(r)?;
        self.topic
            .write(vec![(k.into_bytes(), Some(v))])
            .await
            .map_err(err)
    }

    async fn delete(&self, kind: &str, namespace: &str, name: &str) -> Result<(), StoreError> {
        self.topic
            .write(vec![(key(kind, namespace, name).into_bytes(), None)])
            .await
            .map_err(err)
    }

    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Vec<u8>>> {
        Some(self.topic.changes())
    }

    async fn first_start(&self) -> Result<bool, StoreError> {
        if self.topic.get(INITIALIZED).is_some() {
            return Ok(false);
        }
        self.topic
            .write(vec![(INITIALIZED.to_vec(), Some(b"1".to_vec()))])
            .await
            .map_err(err)?;
        Ok(true)
    }
}
