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
