//! The single writer thread and its group commit.
//!
//! Appends queue in a bounded channel. The writer takes the first waiting command, then every
//! append already queued behind it (up to `max_batch_events`), writes them as one `WriteBatch`
//! with one fsync, and only then answers each caller with its positions. While it syncs, new
//! appends queue up and form the next batch, so the cost of a sync is shared by all of them.
//! Offsets are assigned here, so each partition's offsets are dense and in write order.

use super::keys::{self, TopicMeta};
use super::{cf, storage, FsyncMode, PartitionState, RocksOptions, Shared, TopicState};
use crate::codec;
use crate::event::Event;
use crate::log::{LogError, Position, Stored, Topic, TopicConfig};
use bytes::Bytes;
use rocksdb::{WriteBatch, WriteOptions};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Notify};

/// Memory a cached event's attribute takes beyond its text (two strings' headers, the
/// vector slot, allocator rounding).
const CACHED_ATTRIBUTE: usize = 96;

type Reply<T> = oneshot::Sender<Result<T, LogError>>;

/// One event to append: its partition, its encoded record, and the event itself (for the
/// tail cache).
pub(super) struct Record {
    pub partition: u32,
    pub encoded: Bytes,
    pub event: Arc<Event>,
    pub appended_ms: u64,
}

pub(super) enum Command {
    Append {
        topic: Arc<TopicState>,
        records: Vec<Record>,
        reply: Reply<Vec<Position>>,
    },
    CreateTopic {
        topic: Topic,
        config: TopicConfig,
        reply: Reply<()>,
    },
    DeleteTopic {
        topic: Topic,
        reply: Reply<()>,
    },
    Commit {
        topic: Arc<TopicState>,
        group: String,
        offsets: Vec<Position>,
        reply: Reply<()>,
    },
    Trim {
        topic: Arc<TopicState>,
        partition: u32,
        trim: Trim,
        reply: Reply<()>,
    },
    Close {
        reply: Reply<()>,
    },
}

/// What retention removes from one partition: every event before `new_start`.
pub(super) struct Trim {
    pub new_start: u64,
    pub removed_bytes: u64,
    pub removed_events: u64,
}

pub(super) fn spawn(
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Command>,
    options: RocksOptions,
) -> Result<std::thread::JoinHandle<()>, LogError> {
    std::thread::Builder::new()
        .name("ferry-log-writer".into())
        .spawn(move || Writer { shared, options }.run(rx))
        .map_err(|e| LogError::Storage(format!("cannot start the log writer: {e}")))
}

struct Writer {
    shared: Arc<Shared>,
    options: RocksOptions,
}

impl Writer {
    fn run(self, mut rx: mpsc::Receiver<Command>) {
        let mut carry: Option<Command> = None;
        loop {
            let Some(first) = carry.take().or_else(|| rx.blocking_recv()) else {
                return;
            };
            match first {
                Command::Append { .. } => {
                    let mut appends = vec![first];
                    let mut events = appends_len(&appends);
                    // Group commit: everything already waiting joins this batch.
                    while events < self.options.max_batch_events {
                        match rx.try_recv() {
                            Ok(c @ Command::Append { .. }) => {
                                events += appends_len(std::slice::from_ref(&c));
                                appends.push(c);
                            }
                            Ok(other) => {
                                carry = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.write_appends(appends);
                }
                Command::Close { reply } => {
                    let r = self.shared.db.flush_wal(true).map_err(storage);
                    let _ = reply.send(r);
                    // Anything queued after close is refused: dropping the receiver answers
                    // the waiting callers' oneshots with `Closed`.
                    return;
                }
                other => self.control(other),
            }
        }
    }

    fn write_opts(&self) -> WriteOptions {
        let mut o = WriteOptions::default();
        o.set_sync(self.options.fsync == FsyncMode::Always);
        o
    }

    fn write_appends(&self, appends: Vec<Command>) {
        let (events_cf, meta_cf) = match (
            cf(&self.shared.db, keys::EVENTS),
            cf(&self.shared.db, keys::META),
        ) {
            (Ok(e), Ok(m)) => (e, m),
            (Err(e), _) | (_, Err(e)) => {
                let msg = e.to_string();
                for c in appends {
                    if let Command::Append { reply, .. } = c {
                        let _ = reply.send(Err(LogError::Storage(msg.clone())));
                    }
                }
                return;
            }
        };
        let mut batch = WriteBatch::default();
        // Per (topic id, partition) touched by this batch: its state, next offset, bytes added.
        let mut touched: HashMap<(u64, u32), (Arc<TopicState>, u64, u64)> = HashMap::new();
        let mut pending = Vec::with_capacity(appends.len());
        // What the tail caches get once the batch is durable, in offset order.
        let mut fresh: Vec<(Arc<TopicState>, Stored)> = Vec::new();
        let mut count = 0u64;
        for c in appends {
            let Command::Append {
                topic,
                records,
                reply,
            } = c
            else {
                continue;
            };
            if topic.deleted.load(Ordering::Acquire) {
                let _ = reply.send(Err(LogError::UnknownTopic(topic.name.clone())));
                continue;
            }
            let mut positions = Vec::with_capacity(records.len());
            for record in records {
                let partition = record.partition;
                let Some(ps) = topic.partitions.get(partition as usize) else {
                    continue;
                };
                let slot = touched
                    .entry((topic.id, partition))
                    .or_insert_with(|| (topic.clone(), ps.end.load(Ordering::Acquire), 0));
                let offset = slot.1;
                slot.1 += 1;
                slot.2 += record.encoded.len() as u64;
                batch.put_cf(
                    events_cf,
                    keys::event(topic.id, partition, offset),
                    &record.encoded,
                );
                let position = Position { partition, offset };
                positions.push(position);
                fresh.push((
                    topic.clone(),
                    Stored {
                        position,
                        appended_ms: record.appended_ms,
                        event: record.event,
                    },
                ));
                count += 1;
            }
            pending.push((topic, positions, reply));
        }
        for (&(id, partition), (topic, _, added)) in &touched {
            let total = topic.partitions[partition as usize]
                .bytes
                .load(Ordering::Acquire)
                + added;
            batch.put_cf(meta_cf, keys::bytes(id, partition), total.to_le_bytes());
        }
        let metrics = &self.shared.metrics;
        match self.shared.db.write_opt(batch, &self.write_opts()) {
            Ok(()) => {
                if self.options.fsync == FsyncMode::Always {
                    metrics.fsyncs.inc();
                }
                metrics.batch_events.observe(count as f64);
                metrics.appended_events.inc_by(count);
                for (topic, stored) in fresh {
                    // What the decoded event takes in memory, roughly: its bytes plus the
                    // allocations around each attribute (so small events count for more
                    // than their size, and the budget bounds memory, not just payload).
                    let size = stored.event.size()
                        + CACHED_ATTRIBUTE * (stored.event.attributes.len() + 1);
                    topic.partitions[stored.position.partition as usize]
                        .cache()
                        .push(stored, size);
                }
                let mut added_total = 0u64;
                for ((_, partition), (topic, end, added)) in touched {
                    let ps = &topic.partitions[partition as usize];
                    ps.bytes.fetch_add(added, Ordering::AcqRel);
                    ps.end.store(end, Ordering::Release);
                    added_total += added;
                }
                metrics.stored_bytes.add(added_total as i64);
                for (topic, positions, reply) in pending {
                    topic.appended.notify_waiters();
                    let _ = reply.send(Ok(positions));
                }
            }
            Err(e) => {
                let msg = e.into_string();
                tracing::error!(error = %msg, "log write failed");
                for (_, _, reply) in pending {
                    let _ = reply.send(Err(LogError::Storage(msg.clone())));
                }
            }
        }
    }

    fn control(&self, command: Command) {
        match command {
            Command::CreateTopic {
                topic,
                config,
                reply,
            } => {
                let _ = reply.send(self.create_topic(topic, config));
            }
            Command::DeleteTopic { topic, reply } => {
                let _ = reply.send(self.delete_topic(&topic));
            }
            Command::Commit {
                topic,
                group,
                offsets,
                reply,
            } => {
                let r = (|| {
                    let meta = cf(&self.shared.db, keys::META)?;
                    let mut batch = WriteBatch::default();
                    for pos in &offsets {
                        batch.put_cf(
                            meta,
                            keys::committed(topic.id, &group, pos.partition),
                            pos.offset.to_le_bytes(),
                        );
                    }
                    self.shared
                        .db
                        .write_opt(batch, &self.write_opts())
                        .map_err(storage)
                })();
                let _ = reply.send(r);
            }
            Command::Trim {
                topic,
                partition,
                trim,
                reply,
            } => {
                let _ = reply.send(self.trim(&topic, partition, trim));
            }
            Command::Append { .. } | Command::Close { .. } => {}
        }
    }

    fn create_topic(&self, topic: Topic, config: TopicConfig) -> Result<(), LogError> {
        let db = &self.shared.db;
        let meta = cf(db, keys::META)?;
        let mut topics = self
            .shared
            .topics
            .write()
            .map_err(|_| LogError::Storage("topic table poisoned".into()))?;
        if topics.contains_key(&topic) {
            return Ok(());
        }
        let id = db
            .get_pinned_cf(meta, keys::NEXT_ID)
            .map_err(storage)?
            .and_then(|v| keys::u64_value(&v))
            .unwrap_or(1);
        let m = TopicMeta {
            id,
            partitions: config.partitions.max(1),
            retention_age_ms: config.retention.max_age.map(|d| d.as_millis() as u64),
            retention_bytes: config.retention.max_bytes_per_partition,
        };
        let json = serde_json::to_vec(&m).map_err(|e| LogError::Storage(e.to_string()))?;
        let mut batch = WriteBatch::default();
        batch.put_cf(meta, keys::NEXT_ID, (id + 1).to_le_bytes());
        batch.put_cf(meta, keys::topic(&topic.to_string()), json);
        db.write_opt(batch, &self.write_opts()).map_err(storage)?;
        let partitions = (0..m.partitions)
            .map(|_| PartitionState::new(0, 0, 0, self.shared.tail_cache_bytes))
            .collect();
        let config = TopicConfig {
            partitions: m.partitions,
            ..config
        };
        topics.insert(
            topic.clone(),
            Arc::new(TopicState {
                name: topic.clone(),
                id,
                config,
                partitions,
                next_partition: AtomicU32::new(0),
                appended: Notify::new(),
                deleted: AtomicBool::new(false),
            }),
        );
        Ok(())
    }

    fn delete_topic(&self, topic: &Topic) -> Result<(), LogError> {
        let db = &self.shared.db;
        let (events, meta) = (cf(db, keys::EVENTS)?, cf(db, keys::META)?);
        let state = {
            let mut topics = self
                .shared
                .topics
                .write()
                .map_err(|_| LogError::Storage("topic table poisoned".into()))?;
            topics
                .remove(topic)
                .ok_or_else(|| LogError::UnknownTopic(topic.clone()))?
        };
        state.deleted.store(true, Ordering::Release);
        state.appended.notify_waiters();
        let mut batch = WriteBatch::default();
        let (lo, hi) = keys::topic_range(state.id);
        batch.delete_range_cf(events, &lo, &hi);
        for tag in [b's', b'b', b'c'] {
            let (a, b) = keys::meta_range(tag, state.id);
            batch.delete_range_cf(meta, &a, &b);
        }
        batch.delete_cf(meta, keys::topic(&topic.to_string()));
        db.write_opt(batch, &self.write_opts()).map_err(storage)?;
        let freed: u64 = state
            .partitions
            .iter()
            .map(|p| p.bytes.load(Ordering::Acquire))
            .sum();
        self.shared.metrics.stored_bytes.sub(freed as i64);
        // Give the disk space back now rather than at some later compaction.
        db.compact_range_cf(events, Some(&lo), Some(&hi));
        Ok(())
    }

    fn trim(&self, topic: &TopicState, partition: u32, trim: Trim) -> Result<(), LogError> {
        if topic.deleted.load(Ordering::Acquire) {
            return Ok(());
        }
        let db = &self.shared.db;
        let (events, meta) = (cf(db, keys::EVENTS)?, cf(db, keys::META)?);
        let Some(ps) = topic.partitions.get(partition as usize) else {
            return Ok(());
        };
        let old_start = ps.start.load(Ordering::Acquire);
        if trim.new_start <= old_start {
            return Ok(());
        }
        let bytes = ps
            .bytes
            .load(Ordering::Acquire)
            .saturating_sub(trim.removed_bytes);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            events,
            keys::event(topic.id, partition, old_start),
            keys::event(topic.id, partition, trim.new_start),
        );
        batch.put_cf(
            meta,
            keys::start(topic.id, partition),
            trim.new_start.to_le_bytes(),
        );
        batch.put_cf(meta, keys::bytes(topic.id, partition), bytes.to_le_bytes());
        db.write_opt(batch, &self.write_opts()).map_err(storage)?;
        ps.start.store(trim.new_start, Ordering::Release);
        ps.cache().trim_below(trim.new_start);
        ps.bytes.store(bytes, Ordering::Release);
        self.shared
            .metrics
            .stored_bytes
            .sub(trim.removed_bytes as i64);
        Ok(())
    }
}

fn appends_len(appends: &[Command]) -> usize {
    appends
        .iter()
        .map(|c| match c {
            Command::Append { records, .. } => records.len(),
            _ => 0,
        })
        .sum()
}

/// Works out what retention removes from one partition (read-only; the writer applies it).
pub(super) fn plan_trim(
    shared: &Shared,
    topic: &TopicState,
    partition: u32,
    now_ms: u64,
) -> Result<Option<Trim>, LogError> {
    let Some(ps) = topic.partitions.get(partition as usize) else {
        return Ok(None);
    };
    let retention = topic.config.retention;
    let cutoff = retention
        .max_age
        .map(|a| now_ms.saturating_sub(a.as_millis() as u64));
    let mut excess = retention
        .max_bytes_per_partition
        .map(|max| ps.bytes.load(Ordering::Acquire).saturating_sub(max))
        .unwrap_or(0);
    let events = cf(&shared.db, keys::EVENTS)?;
    let start = ps.start.load(Ordering::Acquire);
    let (_, hi) = keys::partition_range(topic.id, partition);
    let mut it = shared.db.raw_iterator_cf(events);
    it.seek(keys::event(topic.id, partition, start));
    let mut trim = Trim {
        new_start: start,
        removed_bytes: 0,
        removed_events: 0,
    };
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        if k >= &hi[..] {
            break;
        }
        let expired = match cutoff {
            Some(c) => codec::appended_ms(v)? < c,
            None => false,
        };
        if !expired && excess == 0 {
            break;
        }
        let Some(offset) = keys::event_offset(k) else {
            break;
        };
        trim.new_start = offset + 1;
        trim.removed_bytes += v.len() as u64;
        trim.removed_events += 1;
        excess = excess.saturating_sub(v.len() as u64);
        it.next();
    }
    it.status().map_err(storage)?;
    Ok((trim.removed_events > 0).then_some(trim))
}
