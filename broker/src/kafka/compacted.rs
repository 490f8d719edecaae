//! A compacted topic used as a durable key-value map: read whole when opened (and, if asked,
//! followed afterwards, to see other nodes' writes), written through: a write counts once Kafka
//! acknowledged it. An empty value is a tombstone. Ferry keeps its resources
//! (`ferry-resources`) and its triggers' retries and dead letters (`ferry-deliveries`) so.
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
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::broadcast;

const TIMEOUT: Duration = Duration::from_secs(10);
/// The copy, and the offsets of this node's writes the follower has not passed yet.
#[derive(Default)]
struct State {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    own: HashMap<Vec<u8>, i64>,
    /// The offset after the last record applied from the topic (loaded or followed).
    next: i64,
}

impl State {
    /// Sets (`Some`) or removes a key; true if that changed the copy.
    fn set(&mut self, key: &[u8], value: Option<&[u8]>) -> bool {
        match value {
            Some(v) if !v.is_empty() => {
                self.map.insert(key.to_vec(), v.to_vec()).as_deref() != Some(v)
            }
            _ => self.map.remove(key).is_some(),
        }
    }

    /// This node's write of `key`, acknowledged at `offset`. When following, the follower may
    /// have read it already (and what came after it): then the copy is as new, or newer.
    fn acknowledged(&mut self, key: &[u8], value: Option<&[u8]>, offset: i64, following: bool) {
        if following && offset < self.next {
            return;
        }
        self.set(key, value);
        if following {
            let own = self.own.entry(key.to_vec()).or_insert(offset);
            *own = (*own).max(offset);
        }
    }

    /// A record the follower read: applied unless this node wrote the key at this offset or
    /// later. True if it changed the copy.
    fn follow<M: Message>(&mut self, m: &M) -> bool {
        self.next = self.next.max(m.offset() + 1);
        let Some(k) = m.key() else { return false };
        if let Some(&own) = self.own.get(k) {
            if m.offset() <= own {
                if m.offset() == own {
                    self.own.remove(k);
                }
                return false;
            }
            self.own.remove(k);
        }
        self.set(k, m.payload())
    }
}

type Map = Arc<RwLock<State>>;

/// Keys and values, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

pub struct CompactedTopic {
    topic: String,
    producer: FutureProducer,
    map: Map,
    follow: bool,
    changes: broadcast::Sender<Vec<u8>>,
}

impl CompactedTopic {
    /// Creates the topic if needed (one partition, `cleanup.policy=compact`) and reads it
    /// whole; with `follow`, keeps reading what is written to it afterwards.
    pub async fn open(options: &KafkaOptions, topic: &str, follow: bool) -> Result<Self, LogError> {
        let admin: AdminClient<DefaultClientContext> =
            client_config(options).create().map_err(kafka_err)?;
        let min_insync = super::min_insync_replicas(options.replication_factor);
        let mut new = NewTopic::new(
            topic,
            1,
            TopicReplication::Fixed(options.replication_factor),
        )
        .set("cleanup.policy", "compact");
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
        let map: Map = Arc::default();
        let (load_map, load_options, load_topic) =
            (map.clone(), options.clone(), topic.to_string());
        let high = tokio::task::spawn_blocking(move || -> Result<i64, LogError> {
            let c: BaseConsumer = client_config(&load_options)
                .set("group.id", "ferry-compacted-reader")
                .set("enable.auto.commit", "false")
                .create()
                .map_err(kafka_err)?;
            let (_, high) = c
                .fetch_watermarks(&load_topic, 0, TIMEOUT)
                .map_err(kafka_err)?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&load_topic, 0, Offset::Beginning)
                .map_err(kafka_err)?;
            c.assign(&tpl).map_err(kafka_err)?;
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            let mut next = 0;
            while next < high {
                if std::time::Instant::now() > deadline {
                    return Err(LogError::Storage(format!(
                        "reading {load_topic} took too long ({next} of {high})"
                    )));
                }
                if let Some(m) = c.poll(Duration::from_millis(200)) {
                    let m = m.map_err(kafka_err)?;
                    if let Ok(mut state) = load_map.write() {
                        if let Some(k) = m.key() {
                            state.set(k, m.payload());
                        }
                        state.next = m.offset() + 1;
                    }
                    next = m.offset() + 1;
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
            let (follow_map, name) = (Arc::downgrade(&map), topic.to_string());
            let announce = changes.clone();
            tokio::spawn(async move {
                loop {
                    let m = follower.recv().await;
                    // The topic's owner is gone: stop following.
                    let Some(map) = follow_map.upgrade() else {
                        return;
                    };
                    match m {
                        Ok(m) => {
                            let changed = map.write().is_ok_and(|mut state| state.follow(&m));
                            if let (true, Some(k)) = (changed, m.key()) {
                                // No one listening is fine.
                                let _ = announce.send(k.to_vec());
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "following {name}"),
                    }
                }
            });
        }
        Ok(Self {
            topic: topic.to_string(),
            producer: super::producer(&KafkaOptions {
                max_batch_records: Some(1),
                fetch_wait: None,
                ..options.clone()
            })?,
            map,
            follow,
            changes,
        })
    }

    /// The keys other writers change from now on (when following), as they are applied to
    /// the copy. A receiver that falls behind gets `Lagged` and should look at everything.
    pub fn changes(&self) -> broadcast::Receiver<Vec<u8>> {
        self.changes.subscribe()
    }

    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.map.read().ok()?.map.get(key).cloned()
    }

    /// Every entry whose key starts with `prefix`, in key order.
    pub fn scan(&self, prefix: &[u8]) -> Entries {
        let Ok(state) = self.map.read() else {
            return Vec::new();
        };
        state
            .map
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Writes (value `Some`) or deletes (`None`) each key, in order; returns once Kafka
    /// acknowledged them all. Each shows in the copy as soon as it is acknowledged (if one
    /// fails, those before it are written and shown).
    pub async fn write(&self, ops: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), LogError> {
        for (k, v) in &ops {
            let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).key(k.as_slice());
            if let Some(v) = v {
                record = record.payload(v.as_slice());
            }
            let offset = self
                .producer
                .send(record, TIMEOUT)
                .await
                .map_err(|(e, _)| kafka_err(e))?
                .offset;
            if let Ok(mut state) = self.map.write() {
                state.acknowledged(k, v.as_deref(), offset, self.follow);
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

    fn record(key: &str, value: Option<&str>, offset: i64) -> OwnedMessage {
        OwnedMessage::new(
            value.map(|v| v.as_bytes().to_vec()),
            Some(key.as_bytes().to_vec()),
            "t".into(),
            Timestamp::NotAvailable,
            0,
            offset,
            None,
        )
    }

    /// This node's write of `key` acknowledged at `offset`, as `write` records it.
    fn own_write(s: &mut State, key: &str, value: Option<&str>, offset: i64) {
        s.acknowledged(key.as_bytes(), value.map(str::as_bytes), offset, true);
    }

    fn get(s: &State, key: &str) -> Option<String> {
        s.map
            .get(key.as_bytes())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    #[test]
    fn the_copy_follows_the_topics_order_not_the_arrival_of_records() {
        let mut s = State::default();
        own_write(&mut s, "k", Some("mine"), 5);
        // Another node's older write, still on its way: the newer own write stays.
        assert!(!s.follow(&record("k", Some("older"), 3)));
        assert_eq!(get(&s, "k").as_deref(), Some("mine"));
        // The own write coming round: nothing changes.
        assert!(!s.follow(&record("k", Some("mine"), 5)));
        // Another node's later write: applied, and announced as a change.
        assert!(s.follow(&record("k", Some("theirs"), 7)));
        assert_eq!(get(&s, "k").as_deref(), Some("theirs"));

        // A key deleted here is not brought back by an older record.
        own_write(&mut s, "k", None, 9);
        assert!(!s.follow(&record("k", Some("theirs"), 8)));
        assert_eq!(get(&s, "k"), None);
        assert!(!s.follow(&record("k", None, 9)));
        assert!(s.own.is_empty(), "nothing left to skip");
        // Other keys are applied as they come.
        assert!(s.follow(&record("other", Some("x"), 10)));
        assert!(s.follow(&record("other", None, 11)));
        assert_eq!(get(&s, "other"), None);

        // The follower reads this node's write (12) and another's after it (13) before the
        // write's acknowledgement comes back: the acknowledgement changes nothing.
        assert!(s.follow(&record("k", Some("mine-2"), 12)));
        assert!(s.follow(&record("k", Some("theirs-2"), 13)));
        own_write(&mut s, "k", Some("mine-2"), 12);
        assert_eq!(get(&s, "k").as_deref(), Some("theirs-2"));
        assert!(s.own.is_empty(), "nothing left to skip");
    }
}
