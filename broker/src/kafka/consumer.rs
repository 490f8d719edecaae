//! Consumers of a broker's topic. Two ways to get partitions:
//! - assigned by this engine (`EventLog::consumer`): every partition, at the offsets
//!   `EventLog::consumer` worked out (committed, else earliest or latest);
//! - as a member of a consumer group (`EventLog::group_member`): Kafka's group protocol
//!   shares the partitions among the members (the nodes), cooperatively: a rebalance moves
//!   only the partitions that change hands, and before one leaves this member the consumer's
//!   revoke hook names the settled offsets to commit for it.

use super::{client_config, kafka_err, record, KafkaOptions, Naming, RawRecord};
use crate::log::{Consumer, Keep, LogError, Position, RevokeHook, StartAt, Stored};
use async_trait::async_trait;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How long a dead node keeps its partitions: the group coordinator gives them to the other
/// members once it has not heard from the node for this long.
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);
const HEARTBEAT: Duration = Duration::from_secs(3);

/// What the rebalance callbacks share with the consumer.
#[derive(Default)]
struct Membership {
    /// Partitions this member holds; `None` when assigned by the engine (all of them).
    assigned: Option<BTreeSet<u32>>,
    hook: Option<RevokeHook>,
    /// Per partition, how many times it was revoked: what was read before a revoke is not
    /// this member's any more, even if the partition came back since.
    epochs: HashMap<u32, u64>,
}

impl Membership {
    fn epoch(&self, partition: u32) -> u64 {
        self.epochs.get(&partition).copied().unwrap_or(0)
    }

    /// Whether something read from `partition` at `epoch` is still this member's.
    fn holds(&self, partition: u32, epoch: u64) -> bool {
        self.epoch(partition) == epoch
            && self
                .assigned
                .as_ref()
                .is_none_or(|a| a.contains(&partition))
    }
}

pub(super) struct Ctx {
    topic: String,
    membership: Arc<Mutex<Membership>>,
}

fn lock(m: &Mutex<Membership>) -> MutexGuard<'_, Membership> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn partitions_of(topic: &str, tpl: &TopicPartitionList) -> Vec<u32> {
    tpl.elements_for_topic(topic)
        .iter()
        .map(|e| e.partition().max(0) as u32)
        .collect()
}

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, base: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let revoked = partitions_of(&self.topic, tpl);
        let hook = {
            let mut m = lock(&self.membership);
            for p in &revoked {
                if let Some(assigned) = m.assigned.as_mut() {
                    assigned.remove(p);
                }
                *m.epochs.entry(*p).or_default() += 1;
            }
            m.hook.clone()
        };
        tracing::info!(topic = %self.topic, partitions = ?revoked, "partitions revoked");
        let Some(hook) = hook else { return };
        // The settled prefix is committed before the partitions go, so the next owner starts
        // where this one stopped; only events still in flight are delivered again.
        let positions = hook(&revoked);
        if positions.is_empty() {
            return;
        }
        let mut commit = TopicPartitionList::new();
        for p in positions {
            let _ = commit.add_partition_offset(
                &self.topic,
                p.partition as i32,
                Offset::Offset(p.offset as i64),
            );
        }
        // A synchronous commit, so the next owner starts after it. This runs inside the
        // consumer's poll on a runtime worker: tell the runtime the worker blocks.
        let sync_commit = || base.commit(&commit, CommitMode::Sync);
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let committed = if multi_thread {
            tokio::task::block_in_place(sync_commit)
        } else {
            sync_commit()
        };
        if let Err(e) = committed {
            tracing::warn!(topic = %self.topic, error = %e, "committing revoked partitions failed; their settled events may be delivered again");
        }
    }

    fn post_rebalance(&self, _base: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let added = partitions_of(&self.topic, tpl);
                tracing::info!(topic = %self.topic, partitions = ?added, "partitions assigned");
                let mut m = lock(&self.membership);
                m.assigned.get_or_insert_with(BTreeSet::new).extend(added);
            }
            Rebalance::Error(e) => tracing::warn!(topic = %self.topic, error = %e, "rebalance"),
            Rebalance::Revoke(_) => {}
        }
    }
}

pub(super) struct KafkaConsumer {
    consumer: StreamConsumer<Ctx>,
    naming: Naming,
    name: String,
    group: Option<String>,
    membership: Arc<Mutex<Membership>>,
    /// Next offset to read, per partition read from (or assigned at a known offset), with the
    /// partition's epoch when it was read.
    positions: BTreeMap<u32, (u64, u64)>,
    /// Records retention removed before they were read: a jump past the next offset (a
    /// broker's topic has no gaps of its own: no transactions, no compaction).
    skipped: u64,
}

/// The stored event in a record: on a broker's topic, if it is a CloudEvent (K-13: other
/// records are passed over); on another topic, what its decoder makes of it.
pub(super) fn stored<M: Message>(naming: &Naming, m: &M) -> Option<Stored> {
    let event = match naming {
        Naming::Brokers => record::event(m.headers(), m.payload())?,
        Naming::External(decode) => {
            let headers = m
                .headers()
                .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
                .unwrap_or_default();
            decode(&RawRecord {
                topic: m.topic(),
                partition: m.partition(),
                offset: m.offset(),
                timestamp_ms: m.timestamp().to_millis(),
                key: m.key(),
                headers,
                value: m.payload(),
            })?
        }
    };
    Some(Stored {
        position: Position {
            partition: m.partition() as u32,
            offset: m.offset() as u64,
        },
        appended_ms: m.timestamp().to_millis().unwrap_or(0).max(0) as u64,
        event: Arc::new(event),
    })
}

impl KafkaConsumer {
    fn create(
        options: &KafkaOptions,
        name: &str,
        group: Option<&str>,
        reset: StartAt,
    ) -> Result<(StreamConsumer<Ctx>, Arc<Mutex<Membership>>), LogError> {
        let mut config = client_config(options);
        config
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("group.id", group.unwrap_or("ferry-reader"))
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set(
                "session.timeout.ms",
                SESSION_TIMEOUT.as_millis().to_string(),
            )
            .set("heartbeat.interval.ms", HEARTBEAT.as_millis().to_string())
            .set(
                "auto.offset.reset",
                match reset {
                    StartAt::Earliest => "earliest",
                    StartAt::Latest => "latest",
                },
            );
        if let Some(wait) = options.fetch_wait {
            config.set("fetch.wait.max.ms", wait.as_millis().max(1).to_string());
        }
        let membership = Arc::new(Mutex::new(Membership::default()));
        let ctx = Ctx {
            topic: name.to_string(),
            membership: membership.clone(),
        };
        let consumer = config.create_with_context(ctx).map_err(kafka_err)?;
        Ok((consumer, membership))
    }

    /// Every partition, at `positions` (indexed by partition).
    pub(super) fn assigned(
        options: &KafkaOptions,
        naming: Naming,
        name: String,
        group: Option<String>,
        positions: Vec<u64>,
    ) -> Result<Self, LogError> {
        let (consumer, membership) =
            Self::create(options, &name, group.as_deref(), StartAt::Earliest)?;
        let mut tpl = TopicPartitionList::new();
        for (p, offset) in positions.iter().enumerate() {
            tpl.add_partition_offset(&name, p as i32, Offset::Offset(*offset as i64))
                .map_err(kafka_err)?;
        }
        consumer.assign(&tpl).map_err(kafka_err)?;
        Ok(Self {
            consumer,
            naming,
            name,
            group,
            membership,
            positions: positions
                .into_iter()
                .enumerate()
                .map(|(p, o)| (p as u32, (o, 0)))
                .collect(),
            skipped: 0,
        })
    }

    /// A member of `group`: the partitions Kafka gives it, from the group's committed offsets
    /// (else `start`).
    pub(super) fn member(
        options: &KafkaOptions,
        naming: Naming,
        name: String,
        group: String,
        start: StartAt,
    ) -> Result<Self, LogError> {
        let (consumer, membership) = Self::create(options, &name, Some(&group), start)?;
        lock(&membership).assigned = Some(BTreeSet::new());
        consumer.subscribe(&[&name]).map_err(kafka_err)?;
        Ok(Self {
            consumer,
            naming,
            name,
            group: Some(group),
            membership,
            positions: BTreeMap::new(),
            skipped: 0,
        })
    }

    fn partition_list(&self, partition: u32) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.name, partition as i32);
        tpl
    }

    /// The partition's epoch now (rebalance callbacks run only inside `recv`).
    fn epoch(&self, partition: u32) -> u64 {
        lock(&self.membership).epoch(partition)
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn poll_where(
        &mut self,
        max: usize,
        wait: Duration,
        keep: &Keep<'_>,
    ) -> Result<Vec<Stored>, LogError> {
        let mut out: Vec<(Stored, u64)> = Vec::new();
        let mut scanned = 0;
        let mut limit = wait;
        while scanned < max.max(1) {
            let m = match tokio::time::timeout(limit, self.consumer.recv()).await {
                Err(_) => break,
                Ok(m) => m.map_err(kafka_err)?,
            };
            // After the first record, take only what is already here.
            limit = Duration::ZERO;
            scanned += 1;
            let partition = m.partition().max(0) as u32;
            let epoch = self.epoch(partition);
            if let Some(&(next, e)) = self.positions.get(&partition) {
                if e == epoch
                    && (m.offset() as u64) > next
                    && matches!(self.naming, Naming::Brokers)
                {
                    self.skipped += m.offset() as u64 - next;
                }
            }
            self.positions
                .insert(partition, ((m.offset() + 1) as u64, epoch));
            if let Some(s) = stored(&self.naming, &m) {
                if keep(&s.event) {
                    out.push((s, epoch));
                }
            }
        }
        // What was read from a partition before it was revoked (during this poll) belongs to
        // its next owner, even if it came back here since: drop it, and its read position.
        let m = lock(&self.membership);
        self.positions.retain(|&p, (_, epoch)| m.holds(p, *epoch));
        Ok(out
            .into_iter()
            .filter(|(s, epoch)| m.holds(s.position.partition, *epoch))
            .map(|(s, _)| s)
            .collect())
    }

    fn take_skipped(&mut self) -> u64 {
        std::mem::take(&mut self.skipped)
    }

    fn positions(&self) -> Vec<Position> {
        self.positions
            .iter()
            .map(|(&partition, &(offset, _))| Position { partition, offset })
            .collect()
    }

    fn assignment(&self) -> Option<Vec<u32>> {
        lock(&self.membership)
            .assigned
            .as_ref()
            .map(|a| a.iter().copied().collect())
    }

    fn on_revoke(&mut self, hook: RevokeHook) {
        lock(&self.membership).hook = Some(hook);
    }

    async fn commit(&mut self, positions: &[Position]) -> Result<(), LogError> {
        if self.group.is_none() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for p in positions {
            tpl.add_partition_offset(
                &self.name,
                p.partition as i32,
                Offset::Offset(p.offset as i64),
            )
            .map_err(kafka_err)?;
        }
        tokio::task::block_in_place(|| self.consumer.commit(&tpl, CommitMode::Sync))
            .map_err(kafka_err)
    }

    fn pause(&mut self, partition: u32) {
        let _ = self.consumer.pause(&self.partition_list(partition));
    }

    fn resume(&mut self, partition: u32) {
        let _ = self.consumer.resume(&self.partition_list(partition));
    }
}
