//! Where resources persist, behind [`ResourceStore`]:
//! - [`RocksStore`]: a small RocksDB database of its own (`<data-dir>/control`), one key per
//!   resource (`Kind/namespace/name` → JSON), every write synced (embedded mode);
//! - [`KafkaStore`] (`store/kafka.rs`): a compacted topic, so the resources live in Kafka,
//!   not on a node (Kafka mode).

use crate::resource::{Key, Resource};
use rocksdb::{Direction, IteratorMode, Options, WriteOptions, DB};
use std::path::Path;

mod kafka;
pub use kafka::KafkaStore;

/// Resources, by kind, namespace and name.
#[async_trait::async_trait]
pub trait ResourceStore: Send + Sync {
    /// The resource of kind `kind` (its name, `Broker`) named `namespace/name`.
    fn get(&self, kind: &str, namespace: &str, name: &str) -> Result<Option<Resource>, StoreError>;
    /// Every resource of `kind`, in `namespace` if given, sorted by namespace and name.
    fn list(&self, kind: &str, namespace: Option<&str>) -> Result<Vec<Resource>, StoreError>;
    /// Stores `r`, durably, before returning.
    async fn put(&self, r: &Resource) -> Result<(), StoreError>;
    async fn delete(&self, kind: &str, namespace: &str, name: &str) -> Result<(), StoreError>;
    /// True the first time it is called on a store.
    async fn first_start(&self) -> Result<bool, StoreError>;
    /// The keys (`Kind/namespace/name`) other nodes change, as this store sees the changes;
    /// `None` for a store no other node writes.
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Vec<u8>>> {
        None
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("resource store: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("resource store: kafka: {0}")]
    Kafka(String),
    #[error("resource store: corrupt entry {key}: {source}")]
    Corrupt {
        key: String,
        source: serde_json::Error,
    },
}

pub struct RocksStore {
    db: DB,
}

pub(crate) fn key(kind: &str, namespace: &str, name: &str) -> String {
    format!("{kind}/{namespace}/{name}")
}

/// A resource's key and stored form (its JSON), as both stores keep it.
pub(crate) fn entry(r: &Resource) -> Result<(String, Vec<u8>), StoreError> {
    let k = key(&r.kind, &r.metadata.namespace, &r.metadata.name);
    let v = serde_json::to_vec(r).map_err(|source| StoreError::Corrupt {
        key: k.clone(),
        source,
    })?;
    Ok((k, v))
}

/// The resource a store key names (`None` for Ferry's own markers, which start with `!`).
pub(crate) fn parse_key(key: &[u8]) -> Option<Key> {
    let text = std::str::from_utf8(key).ok()?;
    if text.starts_with('!') {
        return None;
    }
    let mut parts = text.splitn(3, '/');
    Some(Key::new(parts.next()?, parts.next()?, parts.next()?))
}

/// A stored resource, or `None` (logged) when its record cannot be read: one bad record
/// must not keep the rest from being listed (nor the server from starting).
pub(crate) fn readable(k: &[u8], v: &[u8]) -> Option<Resource> {
    match serde_json::from_slice(v) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(
                key = %String::from_utf8_lossy(k),
                error = %e,
                "skipping a resource record that cannot be read"
            );
            None
        }
    }
}

/// Marks a store whose first start is done (the default broker was created once).
pub(crate) const INITIALIZED: &[u8] = b"!initialized";

impl RocksStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        // Resources are few and small: a small memtable, so the write-ahead log preallocates
        // little and RocksDB resumes after a full disk once that much is free again.
        opts.set_write_buffer_size(4 << 20);
        Ok(Self {
            db: DB::open(&opts, path)?,
        })
    }

    fn synced() -> WriteOptions {
        let mut o = WriteOptions::default();
        o.set_sync(true);
        o
    }
}

#[async_trait::async_trait]
impl ResourceStore for RocksStore {
    fn get(&self, kind: &str, namespace: &str, name: &str) -> Result<Option<Resource>, StoreError> {
        let k = key(kind, namespace, name);
        match self.db.get_pinned(k.as_bytes())? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|source| StoreError::Corrupt { key: k, source }),
        }
    }

    async fn put(&self, r: &Resource) -> Result<(), StoreError> {
        let (k, v) = entry(r)?;
        self.db.put_opt(k.as_bytes(), v, &Self::synced())?;
        Ok(())
    }

    async fn delete(&self, kind: &str, namespace: &str, name: &str) -> Result<(), StoreError> {
        self.db
            .delete_opt(key(kind, namespace, name).as_bytes(), &Self::synced())?;
        Ok(())
    }

    fn list(&self, kind: &str, namespace: Option<&str>) -> Result<Vec<Resource>, StoreError> {
        let prefix = match namespace {
            Some(ns) => format!("{kind}/{ns}/"),
            None => format!("{kind}/"),
        };
        let mut out = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(prefix.as_bytes(), Direction::Forward))
        {
            let (k, v) = item?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            if let Some(r) = readable(&k, &v) {
                out.push(r);
            }
        }
        Ok(out)
    }

    async fn first_start(&self) -> Result<bool, StoreError> {
        if self.db.get_pinned(INITIALIZED)?.is_some() {
            return Ok(false);
        }
        self.db.put_opt(INITIALIZED, b"1", &Self::synced())?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn one_unreadable_record_does_not_hide_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path()).unwrap();
        let doc = |name: &str| -> Resource {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "eventing.knative.dev/v1",
                "kind": "Broker",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {},
            }))
            .unwrap()
        };
        store.put(&doc("a")).await.unwrap();
        store.put(&doc("c")).await.unwrap();
        store.db.put(b"Broker/default/b", b"{not json").unwrap();
        let names: Vec<String> = store
            .list("Broker", None)
            .unwrap()
            .into_iter()
            .map(|r| r.metadata.name)
            .collect();
        assert_eq!(names, ["a", "c"]);
        // Read by name, it is an error that says which record.
        let err = store.get("Broker", "default", "b").unwrap_err();
        assert!(err.to_string().contains("Broker/default/b"), "{err}");
    }
}
