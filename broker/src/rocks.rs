//! The embedded engine: every broker's log in one RocksDB database.
//!
//! - `keys.rs`: the key layout.
//! - `writer.rs`: the single writer thread and its group commit: appends that arrive while a
//!   sync is under way are written together in the next `WriteBatch`, with one fsync for all.
//! - `consumer.rs`: a consumer over all partitions of a topic.
//!
//! Reads of recent events are served from a per-partition tail cache (`cache.rs`) that the
//! writer fills in offset order, so the triggers of a broker, which all read the same fresh
//! events, share one decoded copy; older events come from RocksDB (on the blocking pool). All
//! writes go through the writer, so offsets, byte counts and start offsets have one owner.

mod cache;
mod consumer;
mod keys;
mod writer;

use crate::codec;
use crate::event::{partition_for_key, Event};
use crate::log::{
    Consumer, Created, EventLog, LogError, Position, Retention, StartAt, Stored, Topic,
    TopicConfig, Watermarks,
};
use crate::metrics::LogMetrics;
use async_trait::async_trait;
use bytes::Bytes;
use keys::TopicMeta;
use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, DB};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, Notify};
use writer::Command;

/// When appends reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    /// Every acknowledged append is fsynced (group commit shares one sync among concurrent
    /// appends). Nothing acknowledged is lost, even on power loss.
    #[default]
    Always,
    /// Appends are written to the WAL without fsync: they survive a crash of Ferry but not of
    /// the machine. For those who accept losing the last moments of events on power loss.
    Never,
}

/// Options of the RocksDB engine.
#[derive(Clone, Debug)]
pub struct RocksOptions {
    pub fsync: FsyncMode,
    /// Most events written in one group-commit batch.
    pub max_batch_events: usize,
    /// Appends waiting for the writer before `append` itself waits (backpressure).
    pub queue_depth: usize,
    /// Bytes of recent events kept decoded in memory per partition, for readers.
    pub tail_cache_bytes: usize,
}

impl Default for RocksOptions {
    fn default() -> Self {
        Self {
            fsync: FsyncMode::Always,
            max_batch_events: 2048,
            queue_depth: 4096,
            tail_cache_bytes: 4 * 1024 * 1024,
        }
    }
}

/// One partition's live state. `end` and `bytes` are written only by the writer thread.
struct PartitionState {
    start: AtomicU64,
    end: AtomicU64,
    bytes: AtomicU64,
    cache: std::sync::Mutex<cache::TailCache>,
}

impl PartitionState {
    fn new(start: u64, end: u64, bytes: u64, cache_bytes: usize) -> Self {
        Self {
            start: AtomicU64::new(start),
            end: AtomicU64::new(end),
            bytes: AtomicU64::new(bytes),
            cache: std::sync::Mutex::new(cache::TailCache::new(cache_bytes)),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, cache::TailCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One topic's live state.
struct TopicState {
    name: Topic,
    id: u64,
    config: TopicConfig,
    partitions: Vec<PartitionState>,
    /// Round-robin cursor for events without a partition key.
    next_partition: AtomicU32,
    /// Woken after every batch that appended to this topic.
    appended: Notify,
    /// Set when the topic is deleted, so consumers and writers holding it stop.
    deleted: AtomicBool,
}

impl TopicState {
    fn partition(&self, topic: &Topic, p: u32) -> Result<&PartitionState, LogError> {
        self.partitions
            .get(p as usize)
            .ok_or_else(|| LogError::UnknownPartition {
                topic: topic.clone(),
                partition: p,
            })
    }
}

struct Shared {
    db: DB,
    topics: RwLock<HashMap<Topic, Arc<TopicState>>>,
    metrics: LogMetrics,
    tail_cache_bytes: usize,
}

/// The RocksDB event log. Cheap to clone.
#[derive(Clone)]
pub struct RocksLog {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Command>,
    closed: Arc<AtomicBool>,
    /// The writer thread, joined by `close` so that the database is released when the last
    /// handle is dropped.
    writer: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

fn storage(e: rocksdb::Error) -> LogError {
    LogError::Storage(e.into_string())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl RocksLog {
    /// Opens (or creates) the log under `path` and starts its writer thread.
    pub fn open(
        path: impl AsRef<Path>,
        options: RocksOptions,
        metrics: LogMetrics,
    ) -> Result<Self, LogError> {
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        // Large appends are batched by us; let RocksDB pipeline WAL and memtable writes.
        db_opts.set_enable_pipelined_write(true);
        let mut events_opts = Options::default();
        events_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let cfs = vec![
            ColumnFamilyDescriptor::new(keys::EVENTS, events_opts),
            ColumnFamilyDescriptor::new(keys::META, Options::default()),
        ];
        let db = DB::open_cf_descriptors(&db_opts, path, cfs).map_err(storage)?;
        let topics = load_topics(&db, options.tail_cache_bytes)?;
        let total: u64 = topics
            .values()
            .flat_map(|t| t.partitions.iter())
            .map(|p| p.bytes.load(Ordering::Relaxed))
            .sum();
        metrics.stored_bytes.set(total as i64);
        let shared = Arc::new(Shared {
            db,
            topics: RwLock::new(topics),
            metrics,
            tail_cache_bytes: options.tail_cache_bytes,
        });
        let (tx, rx) = mpsc::channel(options.queue_depth.max(1));
        let writer = writer::spawn(shared.clone(), rx, options)?;
        Ok(Self {
            shared,
            tx,
            closed: Arc::new(AtomicBool::new(false)),
            writer: Arc::new(std::sync::Mutex::new(Some(writer))),
        })
    }

    fn topic_state(&self, topic: &Topic) -> Result<Arc<TopicState>, LogError> {
        let topics = self
            .shared
            .topics
            .read()
            .map_err(|_| LogError::Storage("topic table poisoned".into()))?;
        topics
            .get(topic)
            .cloned()
            .ok_or_else(|| LogError::UnknownTopic(topic.clone()))
    }

    async fn send(&self, command: Command) -> Result<(), LogError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        self.tx.send(command).await.map_err(|_| LogError::Closed)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared) -> Result<T, LogError> + Send + 'static,
    ) -> Result<T, LogError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(|e| LogError::Storage(format!("blocking task failed: {e}")))?
    }
}

/// The last handle releases the database at once: the writer finishes what is queued, syncs
/// the WAL and stops, and the database closes here rather than at process exit (where RocksDB's
/// background threads can outlive the runtime and abort it).
impl Drop for RocksLog {
    fn drop(&mut self) {
        if Arc::strong_count(&self.writer) != 1 {
            return;
        }
        let handle = self.writer.lock().ok().and_then(|mut w| w.take());
        let Some(handle) = handle else {
            return; // closed already
        };
        let (reply, _) = oneshot::channel();
        if self.tx.try_send(Command::Close { reply }).is_ok() {
            let _ = handle.join();
        }
    }
}

fn load_topics(db: &DB, cache_bytes: usize) -> Result<HashMap<Topic, Arc<TopicState>>, LogError> {
    let meta = cf(db, keys::META)?;
    let events = cf(db, keys::EVENTS)?;
    let mut topics = HashMap::new();
    for item in db.iterator_cf(meta, IteratorMode::From(b"t", Direction::Forward)) {
        let (k, v) = item.map_err(storage)?;
        if k.first() != Some(&b't') {
            break;
        }
        let name = String::from_utf8_lossy(&k[1..]).to_string();
        let Some((ns, n)) = name.split_once('/') else {
            continue;
        };
        let m: TopicMeta = serde_json::from_slice(&v)
            .map_err(|e| LogError::Storage(format!("topic {name}: bad metadata: {e}")))?;
        let mut partitions = Vec::new();
        for p in 0..m.partitions {
            let start = get_u64(db, meta, &keys::start(m.id, p))?.unwrap_or(0);
            let bytes = get_u64(db, meta, &keys::bytes(m.id, p))?.unwrap_or(0);
            let (lo, hi) = keys::partition_range(m.id, p);
            let mut it = db.raw_iterator_cf(events);
            it.seek_for_prev(hi);
            let last = match it.key() {
                Some(k) if k >= &lo[..] => keys::event_offset(k).map(|o| o + 1),
                _ => None,
            };
            it.status().map_err(storage)?;
            let end = last.unwrap_or(start).max(start);
            partitions.push(PartitionState::new(start, end, bytes, cache_bytes));
        }
        let config = TopicConfig {
            partitions: m.partitions,
            retention: Retention {
                max_age: m.retention_age_ms.map(Duration::from_millis),
                max_bytes_per_partition: m.retention_bytes,
            },
        };
        topics.insert(
            Topic::new(ns, n),
            Arc::new(TopicState {
                name: Topic::new(ns, n),
                id: m.id,
                config,
                partitions,
                next_partition: AtomicU32::new(0),
                appended: Notify::new(),
                deleted: AtomicBool::new(false),
            }),
        );
    }
    Ok(topics)
}

fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a rocksdb::ColumnFamily, LogError> {
    db.cf_handle(name)
        .ok_or_else(|| LogError::Storage(format!("column family {name} missing")))
}

fn get_u64(db: &DB, cf: &rocksdb::ColumnFamily, key: &[u8]) -> Result<Option<u64>, LogError> {
    Ok(db
        .get_pinned_cf(cf, key)
        .map_err(storage)?
        .and_then(|v| keys::u64_value(&v)))
}

/// Reads up to `max` events of a partition from `offset`.
fn read_partition(
    shared: &Shared,
    id: u64,
    partition: u32,
    offset: u64,
    max: usize,
) -> Result<Vec<Stored>, LogError> {
    let events = cf(&shared.db, keys::EVENTS)?;
    let (_, hi) = keys::partition_range(id, partition);
    let mut it = shared.db.raw_iterator_cf(events);
    it.seek(keys::event(id, partition, offset));
    let mut out = Vec::with_capacity(max.min(1024));
    while out.len() < max {
        let (Some(k), Some(v)) = (it.key(), it.value()) else {
            break;
        };
        if k >= &hi[..] {
            break;
        }
        let offset = keys::event_offset(k).ok_or(LogError::Storage("bad event key".into()))?;
        let (event, appended_ms) = codec::decode(Bytes::copy_from_slice(v))?;
        out.push(Stored {
            position: Position { partition, offset },
            appended_ms,
            event: Arc::new(event),
        });
        it.next();
    }
    it.status().map_err(storage)?;
    Ok(out)
}

#[async_trait]
impl EventLog for RocksLog {
    async fn create_topic(&self, topic: &Topic, config: TopicConfig) -> Result<Created, LogError> {
        if self.topic_state(topic).is_ok() {
            return Ok(Created::Existing);
        }
        let (reply, rx) = oneshot::channel();
        self.send(Command::CreateTopic {
            topic: topic.clone(),
            config,
            reply,
        })
        .await?;
        rx.await.map_err(|_| LogError::Closed)??;
        Ok(Created::New)
    }

    async fn delete_topic(&self, topic: &Topic) -> Result<(), LogError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::DeleteTopic {
            topic: topic.clone(),
            reply,
        })
        .await?;
        rx.await.map_err(|_| LogError::Closed)??;
        Ok(())
    }

    async fn topics(&self) -> Result<Vec<(Topic, TopicConfig)>, LogError> {
        let topics = self
            .shared
            .topics
            .read()
            .map_err(|_| LogError::Storage("topic table poisoned".into()))?;
        let mut all: Vec<_> = topics.iter().map(|(t, s)| (t.clone(), s.config)).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }

    async fn append(&self, topic: &Topic, events: Vec<Event>) -> Result<Vec<Position>, LogError> {
        let state = self.topic_state(topic)?;
        let started = std::time::Instant::now();
        let n = state.config.partitions.max(1);
        let appended_ms = now_ms();
        let records = events
            .into_iter()
            .map(|e| {
                let partition = match e.partition_key() {
                    Some(k) => partition_for_key(&k, n),
                    None => state.next_partition.fetch_add(1, Ordering::Relaxed) % n,
                };
                let encoded = codec::encode(&e, appended_ms);
                writer::Record {
                    partition,
                    encoded,
                    event: Arc::new(e),
                    appended_ms,
                }
            })
            .collect();
        let (reply, rx) = oneshot::channel();
        self.send(Command::Append {
            topic: state,
            records,
            reply,
        })
        .await?;
        let positions = rx.await.map_err(|_| LogError::Closed)??;
        self.shared
            .metrics
            .append_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(positions)
    }

    async fn read(
        &self,
        topic: &Topic,
        partition: u32,
        offset: u64,
        max: usize,
    ) -> Result<Vec<Stored>, LogError> {
        let state = self.topic_state(topic)?;
        let p = state.partition(topic, partition)?;
        if offset >= p.end.load(Ordering::Acquire) || max == 0 {
            return Ok(Vec::new());
        }
        let offset = offset.max(p.start.load(Ordering::Acquire));
        // Recent events come from memory; older ones, up to where the cache starts, from disk.
        let cached_from = {
            let cache = p.cache();
            match cache.read(offset, max) {
                Some(hit) => return Ok(hit),
                None => cache.first_offset(),
            }
        };
        let disk_max = match cached_from {
            Some(first) if first > offset => max.min((first - offset) as usize),
            _ => max,
        };
        let id = state.id;
        let mut got = self
            .blocking(move |s| read_partition(s, id, partition, offset, disk_max))
            .await?;
        // The disk part ends where the cache begins: continue from memory.
        if let (Some(first), true) = (cached_from, got.len() < max) {
            let next = got.last().map_or(offset, |s| s.position.offset + 1);
            if next == first {
                if let Some(more) = p.cache().read(first, max - got.len()) {
                    got.extend(more);
                }
            }
        }
        Ok(got)
    }

    async fn watermarks(&self, topic: &Topic) -> Result<Vec<Watermarks>, LogError> {
        let state = self.topic_state(topic)?;
        Ok(state
            .partitions
            .iter()
            .map(|p| Watermarks {
                start: p.start.load(Ordering::Acquire),
                end: p.end.load(Ordering::Acquire),
            })
            .collect())
    }

    async fn commit(
        &self,
        topic: &Topic,
        group: &str,
        offsets: &[Position],
    ) -> Result<(), LogError> {
        let state = self.topic_state(topic)?;
        for pos in offsets {
            state.partition(topic, pos.partition)?;
        }
        let (reply, rx) = oneshot::channel();
        self.send(Command::Commit {
            topic: state,
            group: group.to_string(),
            offsets: offsets.to_vec(),
            reply,
        })
        .await?;
        rx.await.map_err(|_| LogError::Closed)?
    }

    async fn committed(&self, topic: &Topic, group: &str) -> Result<Vec<Option<u64>>, LogError> {
        let state = self.topic_state(topic)?;
        let group = group.to_string();
        self.blocking(move |s| {
            let meta = cf(&s.db, keys::META)?;
            (0..state.config.partitions)
                .map(|p| get_u64(&s.db, meta, &keys::committed(state.id, &group, p)))
                .collect()
        })
        .await
    }

    async fn consumer(
        &self,
        topic: &Topic,
        group: Option<&str>,
        start: StartAt,
    ) -> Result<Box<dyn Consumer>, LogError> {
        let state = self.topic_state(topic)?;
        let committed = match group {
            Some(g) => self.committed(topic, g).await?,
            None => vec![None; state.partitions.len()],
        };
        let positions = state
            .partitions
            .iter()
            .zip(committed)
            .map(|(p, c)| {
                c.unwrap_or(match start {
                    StartAt::Earliest => p.start.load(Ordering::Acquire),
                    StartAt::Latest => p.end.load(Ordering::Acquire),
                })
            })
            .collect();
        Ok(Box::new(consumer::RocksConsumer::new(
            self.clone(),
            topic.clone(),
            state,
            group.map(str::to_string),
            positions,
        )))
    }

    async fn enforce_retention(&self) -> Result<u64, LogError> {
        let topics: Vec<Arc<TopicState>> = {
            let t = self
                .shared
                .topics
                .read()
                .map_err(|_| LogError::Storage("topic table poisoned".into()))?;
            t.values().cloned().collect()
        };
        let now = now_ms();
        let mut removed = 0;
        for state in topics {
            let retention = state.config.retention;
            if retention.max_age.is_none() && retention.max_bytes_per_partition.is_none() {
                continue;
            }
            for partition in 0..state.config.partitions {
                let st = state.clone();
                let trim = self
                    .blocking(move |s| writer::plan_trim(s, &st, partition, now))
                    .await?;
                let Some(trim) = trim else { continue };
                let count = trim.removed_events;
                let (reply, rx) = oneshot::channel();
                self.send(Command::Trim {
                    topic: state.clone(),
                    partition,
                    trim,
                    reply,
                })
                .await?;
                rx.await.map_err(|_| LogError::Closed)??;
                removed += count;
            }
        }
        self.shared.metrics.retention_removed.inc_by(removed);
        Ok(removed)
    }

    fn knows(&self, topic: &Topic) -> bool {
        self.topic_state(topic).is_ok()
    }

    /// A synced write of one key in the default column family (no topic's).
    async fn probe(&self) -> Result<(), LogError> {
        self.blocking(|s| {
            let mut o = rocksdb::WriteOptions::default();
            o.set_sync(true);
            s.db.put_opt(b"probe", now_ms().to_be_bytes(), &o)
                .map_err(storage)
        })
        .await
    }

    async fn close(&self) -> Result<(), LogError> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Close { reply })
            .await
            .map_err(|_| LogError::Closed)?;
        let flushed = rx.await.map_err(|_| LogError::Closed)?;
        let handle = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(handle) = handle {
            tokio::task::spawn_blocking(move || handle.join())
                .await
                .map_err(|e| LogError::Storage(format!("joining the log writer: {e}")))?
                .map_err(|_| LogError::Storage("the log writer panicked".into()))?;
        }
        flushed
    }
}
