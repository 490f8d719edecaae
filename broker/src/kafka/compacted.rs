//! A compacted topic used as a durable key-value map: read when opened (and, if asked,
//! followed afterwards, to see other nodes' writes), written through: a write counts once Kafka
//! acknowledged it. An empty value is a tombstone. Ferry keeps its resources
//! (`ferry-resources`, copied in memory) and its triggers' retries and dead letters
//! (`ferry-deliveries`, copied into a local RocksDB) so.
//!
//! The copy is a [`Replica`]: in memory ([`MemoryReplica`]), or one that persists and says
//! where to resume reading, so a restart reads only what was written since.
//!
//! The topic's order is the truth: the copy of a key shows the record with the highest offset
//! seen for it. A write is applied to the copy as soon as Kafka acknowledges it (at its
//! offset), so a reader sees its own writes at once; the follower then skips every record of
//! that key up to that offset (the write itself, and older records of other nodes still on
//! their way), and applies what comes after. Changes made by other nodes are announced on
//! [`CompactedTopic::changes`].

use super::{client_config, kafka_err, KafkaOptions};
use crate::log::LogError;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::broadcast;

const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest record (a retry or dead letter holds a whole event, up to the log's largest, plus
/// its error): set on the topics Ferry creates and on their producer.
const MAX_RECORD: &str = "8388608";
/// Reading the topic at start fails if no record comes for this long.
const LOAD_STALL: Duration = Duration::from_secs(60);

/// Where a compacted topic's copy is kept.
pub trait Replica: Send + Sync + 'static {
    /// Sets (`Some`, not empty) or removes a key. `next`, when given, is the topic offset after
    /// this record: a replica that persists keeps it with the change (atomically) and answers
    /// it from [`Replica::resume_at`]. True if the copy changed.
    fn apply(&self, key: &[u8], value: Option<&[u8]>, next: Option<i64>) -> Result<bool, LogError>;
    /// The offset to read the topic from when opening: 0 for a copy that starts empty.
    fn resume_at(&self) -> i64 {
        0
    }
    /// Whether the copy may resume at all: a copy last brought up to date longer ago than the
    /// topic keeps its tombstones (`delete.retention.ms`) may have missed deletes, and is
    /// read again from the start.
    fn fresh(&self) -> bool {
        true
    }
    /// The topic has been read up to `next` (a record was passed over: this node's own write,
    /// applied when it was acknowledged); a replica that persists keeps it.
    fn advance(&self, _next: i64) -> Result<(), LogError> {
        Ok(())
    }
    /// Forgets everything (the copy is ahead of the topic: it was made anew).
    fn clear(&self) -> Result<(), LogError>;
}

/// A copy in memory.
#[derive(Default)]
pub struct MemoryReplica {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryReplica {
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.map.read().ok()?.get(key).cloned()
    }

    /// Every entry whose key starts with `prefix`, in key order.
    pub fn scan(&self, prefix: &[u8]) -> Entries {
        let Ok(map) = self.map.read() else {
            return Vec::new();
        };
        map.range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl Replica for MemoryReplica {
    fn apply(&self, key: &[u8], value: Option<&[u8]>, _: Option<i64>) -> Result<bool, LogError> {
        let mut map = self
            .map
            .write()
            .map_err(|_| LogError::Storage("the copy's lock is poisoned".into()))?;
        Ok(match value {
            Some(v) if !v.is_empty() => map.insert(key.to_vec(), v.to_vec()).as_deref() != Some(v),
            _ => map.remove(key).is_some(),
        })
    }

    fn clear(&self) -> Result<(), LogError> {
        if let Ok(mut map) = self.map.write() {
            map.clear();
        }
        Ok(())
    }
}

/// The offsets of this node's writes the follower has not passed yet, and where it is.
#[derive(Default)]
struct Follow {
    own: HashMap<Vec<u8>, i64>,
    /// The offset after the last record applied from the topic (loaded or followed).
    next: i64,
}

impl Follow {
    /// This node's write of `key`, acknowledged at `offset`: whether to apply it to the copy.
    /// When following, the follower may have read it already (and what came after it): then
    /// the copy is as new, or newer.
    fn acknowledged(&mut self, key: &[u8], offset: i64, following: bool) -> bool {
        if following && offset < self.next {
            return false;
        }
        if following {
            let own = self.own.entry(key.to_vec()).or_insert(offset);
            *own = (*own).max(offset);
        }
        true
    }

    /// A record the follower read at `offset`: whether to apply it (not if this node wrote
    /// the key at this offset or later).
    fn follow(&mut self, key: &[u8], offset: i64) -> bool {
        self.next = self.next.max(offset + 1);
        if let Some(&own) = self.own.get(key) {
            if offset <= own {
                if offset == own {
                    self.own.remove(key);
                }
                return false;
            }
            self.own.remove(key);
        }
        true
    }
}

/// Keys and values, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

pub struct CompactedTopic<R: Replica = MemoryReplica> {
    topic: String,
    producer: super::clients::Producer,
    /// Held while a change is applied to the replica, so the follower and this node's writes
    /// apply in one order.
    follow_state: Arc<Mutex<Follow>>,
    replica: Arc<R>,
    follow: bool,
    changes: broadcast::Sender<Vec<u8>>,
}

fn poisoned<T>(_: T) -> LogError {
    LogError::Storage("a compacted topic's lock is poisoned".into())
}

/// Applies a record the follower (or the load) read.
fn apply_read<R: Replica, M: Message>(
    state: &Mutex<Follow>,
    replica: &R,
    m: &M,
) -> Result<bool, LogError> {
    let mut state = state.lock().map_err(poisoned)?;
    let Some(k) = m.key() else {
        state.next = state.next.max(m.offset() + 1);
        return Ok(false);
    };
    if !state.follow(k, m.offset()) {
        replica.advance(m.offset() + 1)?;
        return Ok(false);
    }
    replica.apply(k, m.payload(), Some(m.offset() + 1))
}

impl CompactedTopic<MemoryReplica> {
    /// Creates the topic if needed and reads it whole into memory; with `follow`, keeps
    /// reading what is written to it afterwards.
    pub async fn open(options: &KafkaOptions, topic: &str, follow: bool) -> Result<Self, LogError> {
        Self::open_into(options, topic, follow, Arc::new(MemoryReplica::default())).await
    }

    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.replica.get(key)
    }

    /// Every entry whose key starts with `prefix`, in key order.
    pub fn scan(&self, prefix: &[u8]) -> Entries {
        self.replica.scan(prefix)
    }
}

impl<R: Replica> CompactedTopic<R> {
    /// Creates the topic if needed (one partition, `cleanup.policy=compact`) and reads it into
    /// `replica` from where the replica says it stopped (from the start if the topic is behind
    /// that: it was made anew); with `follow`, keeps reading what is written to it afterwards.
    pub async fn open_into(
        options: &KafkaOptions,
        topic: &str,
        follow: bool,
        replica: Arc<R>,
    ) -> Result<Self, LogError> {
        let admin: AdminClient<DefaultClientContext> =
            client_config(options).create().map_err(kafka_err)?;
        let min_insync = super::min_insync_replicas(options);
        let mut new = NewTopic::new(
            topic,
            1,
            TopicReplication::Fixed(options.replication_factor),
        )
        .set("cleanup.policy", "compact")
        .set("max.message.bytes", MAX_RECORD);
        if let Some(m) = &min_insync {
            new = new.set("min.insync.replicas", m);
        }
        for r in admin
            .create_topics(
                &[new],
                &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
            )
            .await
            .map_err(kafka_err)?
        {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => return Err(LogError::Storage(format!("creating {t}: {code}"))),
            }
        }
        let state: Arc<Mutex<Follow>> = Arc::default();
        let (load_state, load_replica, load_options, load_topic) = (
            state.clone(),
            replica.clone(),
            options.clone(),
            topic.to_string(),
        );
        let high = tokio::task::spawn_blocking(move || -> Result<i64, LogError> {
            let c: BaseConsumer = client_config(&load_options)
                .set("group.id", "ferry-compacted-reader")
                .set("enable.auto.commit", "false")
                .create()
                .map_err(kafka_err)?;
            let (low, high) = c
                .fetch_watermarks(&load_topic, 0, TIMEOUT)
                .map_err(kafka_err)?;
            let mut next = load_replica.resume_at();
            if next > high || next < low || !load_replica.fresh() {
                tracing::info!(topic = %load_topic, "reading {load_topic} from its start: the local copy does not match it");
                load_replica.clear()?;
                next = 0;
            }
            load_state.lock().map_err(poisoned)?.next = next;
            let from = if next == 0 {
                Offset::Beginning
            } else {
                Offset::Offset(next)
            };
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&load_topic, 0, from)
                .map_err(kafka_err)?;
            c.assign(&tpl).map_err(kafka_err)?;
            let mut last_progress = std::time::Instant::now();
            while next < high {
                if last_progress.elapsed() > LOAD_STALL {
                    return Err(LogError::Storage(format!(
                        "reading {load_topic}: nothing came for {}s ({next} of {high})",
                        LOAD_STALL.as_secs()
                    )));
                }
                if let Some(m) = c.poll(Duration::from_millis(200)) {
                    let m = m.map_err(kafka_err)?;
                    apply_read(&load_state, load_replica.as_ref(), &m)?;
                    next = m.offset() + 1;
                    last_progress = std::time::Instant::now();
                }
            }
            Ok(high)
        })
        .await
        .map_err(|e| LogError::Storage(e.to_string()))??;
        let (changes, _) = broadcast::channel(1024);
        if follow {
            let follower: StreamConsumer = client_config(options)
                .set("group.id", "ferry-compacted-reader")
                .set("enable.auto.commit", "false")
                // Other nodes' changes show within a fraction of a second.
                .set("fetch.wait.max.ms", "100")
                .create()
                .map_err(kafka_err)?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, 0, Offset::Offset(high))
                .map_err(kafka_err)?;
            follower.assign(&tpl).map_err(kafka_err)?;
            let (follow_state, follow_replica, name) = (
                Arc::downgrade(&state),
                Arc::downgrade(&replica),
                topic.to_string(),
            );
            let announce = changes.clone();
            tokio::spawn(async move {
                loop {
                    let m = follower.recv().await;
                    // The topic's owner is gone: stop following.
                    let (Some(state), Some(replica)) =
                        (follow_state.upgrade(), follow_replica.upgrade())
                    else {
                        return;
                    };
                    match m {
                        Ok(m) => match apply_read(&state, replica.as_ref(), &m) {
                            Ok(true) => {
                                if let Some(k) = m.key() {
                                    // No one listening is fine.
                                    let _ = announce.send(k.to_vec());
                                }
                            }
                            Ok(false) => {}
                            Err(e) => tracing::error!(error = %e, "applying a record of {name}"),
                        },
                        Err(e) => tracing::warn!(error = %e, "following {name}"),
                    }
                }
            });
        }
        Ok(Self {
            topic: topic.to_string(),
            // One record per batch: the log end a reader waits for is then right on every
            // server (tansu 0.6 misreports it after a multi-record batch).
            producer: super::clients::Producer::new(
                super::producer_config(&KafkaOptions {
                    max_batch_records: Some(1),
                    fetch_wait: None,
                    produce_timeout: None,
                    ..options.clone()
                })
                .set("message.max.bytes", MAX_RECORD)
                .clone(),
            )?,
            follow_state: state,
            replica,
            follow,
            changes,
        })
    }

    /// The copy.
    pub fn replica(&self) -> &Arc<R> {
        &self.replica
    }

    /// The keys other writers change from now on (when following), as they are applied to
    /// the copy. A receiver that falls behind gets `Lagged` and should look at everything.
    pub fn changes(&self) -> broadcast::Receiver<Vec<u8>> {
        self.changes.subscribe()
    }

    /// Writes (value `Some`) or deletes (`None`) each key, in this order; returns once Kafka
    /// acknowledged them all. Each shows in the copy as soon as it is acknowledged. Not
    /// atomic: if one fails, those before it are written and shown, so callers order their
    /// changes so that any prefix loses nothing (a put before the delete it replaces). Runs
    /// of puts and runs of deletes are each sent at once, and a run is acknowledged before
    /// the next is sent, so no delete can land while a put before it failed.
    pub async fn write(&self, ops: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), LogError> {
        let mut rest = ops.as_slice();
        while !rest.is_empty() {
            let is_put = rest[0].1.is_some();
            let n = rest
                .iter()
                .take_while(|(_, v)| v.is_some() == is_put)
                .count();
            let (run, after) = rest.split_at(n);
            self.write_run(run).await?;
            rest = after;
        }
        Ok(())
    }

    async fn write_run(&self, ops: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<(), LogError> {
        let mut sent = Vec::with_capacity(ops.len());
        let (generation, producer) = self.producer.get();
        for (k, v) in ops {
            let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).key(k.as_slice());
            if let Some(v) = v {
                record = record.payload(v.as_slice());
            }
            let delivery = producer.send_result(record).map_err(|(e, _)| {
                self.producer.failed(generation, &e);
                kafka_err(e)
            })?;
            sent.push(delivery);
        }
        for ((k, v), delivery) in ops.iter().zip(sent) {
            let offset = match tokio::time::timeout(TIMEOUT * 4, delivery).await {
                Ok(Ok(Ok(d))) => d.offset,
                Ok(Ok(Err((e, _)))) => {
                    self.producer.failed(generation, &e);
                    return Err(kafka_err(e));
                }
                Ok(Err(_)) => {
                    return Err(LogError::Storage("kafka: the write was cancelled".into()))
                }
                Err(_) => return Err(LogError::Storage("kafka: the write timed out".into())),
            };
            let mut state = self.follow_state.lock().map_err(poisoned)?;
            if state.acknowledged(k, offset, self.follow) {
                if let Err(e) = self.replica.apply(k, v.as_deref(), None) {
                    // The follower applies it when it comes round.
                    state.own.remove(k.as_slice());
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::OwnedMessage;
    use rdkafka::Timestamp;

    struct Copy {
        state: Mutex<Follow>,
        replica: MemoryReplica,
    }

    impl Copy {
        fn new() -> Self {
            Self {
                state: Mutex::default(),
                replica: MemoryReplica::default(),
            }
        }

        /// A record the follower reads; true if it changed the copy.
        fn follow(&self, key: &str, value: Option<&str>, offset: i64) -> bool {
            let m = OwnedMessage::new(
                value.map(|v| v.as_bytes().to_vec()),
                Some(key.as_bytes().to_vec()),
                "t".into(),
                Timestamp::NotAvailable,
                0,
                offset,
                None,
            );
            apply_read(&self.state, &self.replica, &m).unwrap()
        }

        /// This node's write of `key` acknowledged at `offset`, as `write` records it.
        fn own_write(&self, key: &str, value: Option<&str>, offset: i64) {
            if self
                .state
                .lock()
                .unwrap()
                .acknowledged(key.as_bytes(), offset, true)
            {
                self.replica
                    .apply(key.as_bytes(), value.map(str::as_bytes), None)
                    .unwrap();
            }
        }

        fn get(&self, key: &str) -> Option<String> {
            self.replica
                .get(key.as_bytes())
                .map(|v| String::from_utf8_lossy(&v).into_owned())
        }

        fn nothing_to_skip(&self) -> bool {
            self.state.lock().unwrap().own.is_empty()
        }
    }

    #[test]
    fn the_copy_follows_the_topics_order_not_the_arrival_of_records() {
        let s = Copy::new();
        s.own_write("k", Some("mine"), 5);
        // Another node's older write, still on its way: the newer own write stays.
        assert!(!s.follow("k", Some("older"), 3));
        assert_eq!(s.get("k").as_deref(), Some("mine"));
        // The own write coming round: nothing changes.
        assert!(!s.follow("k", Some("mine"), 5));
        // Another node's later write: applied, and announced as a change.
        assert!(s.follow("k", Some("theirs"), 7));
        assert_eq!(s.get("k").as_deref(), Some("theirs"));

        // A key deleted here is not brought back by an older record.
        s.own_write("k", None, 9);
        assert!(!s.follow("k", Some("theirs"), 8));
        assert_eq!(s.get("k"), None);
        assert!(!s.follow("k", None, 9));
        assert!(s.nothing_to_skip());
        // Other keys are applied as they come.
        assert!(s.follow("other", Some("x"), 10));
        assert!(s.follow("other", None, 11));
        assert_eq!(s.get("other"), None);

        // The follower reads this node's write (12) and another's after it (13) before the
        // write's acknowledgement comes back: the acknowledgement changes nothing.
        assert!(s.follow("k", Some("mine-2"), 12));
        assert!(s.follow("k", Some("theirs-2"), 13));
        s.own_write("k", Some("mine-2"), 12);
        assert_eq!(s.get("k").as_deref(), Some("theirs-2"));
        assert!(s.nothing_to_skip());
    }
}
