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

/// How often a wait re-checks its condition.
const POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// A real Kafka-protocol server (tansu) on a free loopback port, for as long as this lives.
pub struct Kafka {
    child: std::process::Child,
    pub bootstrap: String,
}

/// The tansu binary: `FERRY_TANSU`, else the one `scripts/setup` installs, else `tansu` on PATH.
pub fn tansu() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("FERRY_TANSU") {
        return p.into();
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let installed = std::path::Path::new(&home).join(".cache/ferry/tools/bin/tansu");
    if installed.exists() {
        return installed;
    }
    "tansu".into()
}

impl Default for Kafka {
    fn default() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = std::process::Command::new(tansu())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start tansu ({}): {e}; run scripts/setup",
                    tansu().display()
                )
            });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "tansu did not listen on {port}"
            );
            std::thread::sleep(POLL);
        }
        Self {
            child,
            bootstrap: format!("127.0.0.1:{port}"),
        }
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[async_trait::async_trait]
impl Engine for Kafka {
    async fn open(&self) -> Arc<dyn EventLog> {
        let options = broker::KafkaOptions {
            bootstrap: self.bootstrap.clone(),
            replication_factor: 1,
            // tansu 0.6 numbers a multi-record batch as one offset.
            max_batch_records: Some(1),
        };
        Arc::new(broker::KafkaLog::open(options).unwrap())
    }
}
