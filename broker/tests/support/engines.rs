//! The engines every log scenario runs on. Today: RocksDB in a temp dir. The Kafka engine joins
//! here, and every scenario then runs on it unchanged.

use broker::metrics::LogMetrics;
use broker::{EventLog, RocksLog, RocksOptions};
use std::sync::Arc;

/// Opens an engine's log on the same storage again and again (to test restarts).
#[async_trait::async_trait]
pub trait Engine: Send + Sync {
    async fn open(&self) -> Arc<dyn EventLog>;
}

pub struct Rocks {
    pub dir: tempfile::TempDir,
}

impl Default for Rocks {
    fn default() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }
}

#[async_trait::async_trait]
impl Engine for Rocks {
    async fn open(&self) -> Arc<dyn EventLog> {
        let metrics = LogMetrics::new(&prometheus::Registry::new()).unwrap();
        Arc::new(RocksLog::open(self.dir.path(), RocksOptions::default(), metrics).unwrap())
    }
}

/// The Kafka engine on a real Kafka-protocol server (tansu), for as long as this lives.
pub struct Kafka {
    server: crate::tansu::Tansu,
}

impl Default for Kafka {
    fn default() -> Self {
        Self {
            server: crate::tansu::Tansu::start(),
        }
    }
}

impl Kafka {
    /// Options for a client of this server.
    #[allow(dead_code)]
    pub fn options(&self) -> broker::KafkaOptions {
        broker::KafkaOptions {
            bootstrap: self.server.bootstrap.clone(),
            replication_factor: 1,
            // tansu 0.6 reports a wrong log end (ListOffsets) after a multi-record batch.
            max_batch_records: Some(1),
            fetch_wait: None,
            produce_timeout: None,
            min_insync_replicas: None,
            security: Default::default(),
        }
    }
}

#[async_trait::async_trait]
impl Engine for Kafka {
    async fn open(&self) -> Arc<dyn EventLog> {
        Arc::new(broker::KafkaLog::open(self.options()).unwrap())
    }
}
