//! The event-log contract every engine implements.

use crate::event::Event;
use async_trait::async_trait;
use std::fmt;
use std::time::Duration;

/// A broker's log: `namespace/name`. Engines map it to their own naming (a key prefix in
/// RocksDB; `knative-broker-{ns}-{name}` in Kafka).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic {
    pub namespace: String,
    pub name: String,
}

impl Topic {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Retention limits of a topic; an event is removed once either limit is passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Retention {
    /// Events older than this (by append time) are removed. `None`: kept regardless of age.
    pub max_age: Option<Duration>,
    /// Per partition: the oldest events are removed while the partition holds more bytes than
    /// this. `None`: no size limit.
    pub max_bytes_per_partition: Option<u64>,
}

/// How a topic is laid out. Fixed when the topic is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopicConfig {
    pub partitions: u32,
    pub retention: Retention,
}

/// Where an appended event landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub partition: u32,
    pub offset: u64,
}

/// An event read back from the log. Cheap to clone: readers of the same event (every trigger
/// of a broker) share one copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub position: Position,
    /// When the log accepted it (Unix milliseconds).
    pub appended_ms: u64,
    pub event: std::sync::Arc<Event>,
}

/// The offsets of one partition: events live in `start..end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Watermarks {
    pub start: u64,
    pub end: u64,
}

/// Where a consumer without a committed offset starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest retained event.
    Earliest,
    /// The log end: only events appended from now on.
    Latest,
}

/// Errors of the log. The ingress maps them to HTTP statuses in one place.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("broker {0} does not exist")]
    UnknownTopic(Topic),
    #[error("partition {partition} does not exist in broker {topic}")]
    UnknownPartition { topic: Topic, partition: u32 },
    #[error("the event log is shutting down")]
    Closed,
    #[error("the event log cannot store the write: {0}")]
    Storage(String),
    #[error("{0}")]
    Corrupt(#[from] crate::codec::CorruptRecord),
}

/// What [`EventLog::create_topic`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    /// The topic was made by this call.
    New,
    /// The topic was there already (its layout kept): made earlier, by this node or another,
    /// or, in Kafka, by someone else (see [`EventLog::storage_name`]).
    Existing,
}

/// A durable, partitioned event log.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Creates a topic; creating one that exists already is a no-op (its layout is kept).
    async fn create_topic(&self, topic: &Topic, config: TopicConfig) -> Result<Created, LogError>;

    /// Where `topic` lives when that place is shared with others (the Kafka topic's name), so
    /// its creator can record that it made it; `None` when only Ferry writes there (RocksDB).
    fn storage_name(&self, _topic: &Topic) -> Option<String> {
        None
    }

    /// Deletes a topic with all its events and committed offsets.
    async fn delete_topic(&self, topic: &Topic) -> Result<(), LogError>;

    /// The topics that exist, with their layout.
    async fn topics(&self) -> Result<Vec<(Topic, TopicConfig)>, LogError>;

    /// Whether this process knows the topic exists, without asking anyone (a cheap check for
    /// hot paths; a topic made by another node may be missing here until it is used).
    fn knows(&self, topic: &Topic) -> bool;

    /// Appends `events` as one all-or-nothing write and returns where each landed, in order, once
    /// the write is durable. An event with a `partitionkey` goes to that key's partition; the rest
    /// are spread over the partitions.
    async fn append(&self, topic: &Topic, events: Vec<Event>) -> Result<Vec<Position>, LogError>;

    /// Reads up to `max` events of one partition from `offset` on (an offset below the start
    /// of the retained log reads from the start).
    async fn read(
        &self,
        topic: &Topic,
        partition: u32,
        offset: u64,
        max: usize,
    ) -> Result<Vec<Stored>, LogError>;

    /// The watermarks of each partition, indexed by partition.
    async fn watermarks(&self, topic: &Topic) -> Result<Vec<Watermarks>, LogError>;

    /// Stores a consumer group's committed offsets: the next offset it will read, per partition.
    async fn commit(
        &self,
        topic: &Topic,
        group: &str,
        offsets: &[Position],
    ) -> Result<(), LogError>;

    /// A consumer group's committed offsets, indexed by partition.
    async fn committed(&self, topic: &Topic, group: &str) -> Result<Vec<Option<u64>>, LogError>;

    /// A consumer over the partitions this process is assigned (all of them in the embedded
    /// engine; a share of them in Kafka), starting from `group`'s committed offsets, else `start`.
    /// With `group: None` nothing is committed (a `ferry tail`).
    async fn consumer(
        &self,
        topic: &Topic,
        group: Option<&str>,
        start: StartAt,
    ) -> Result<Box<dyn Consumer>, LogError>;

    /// A member of consumer group `group`: the engine shares the topic's partitions among the
    /// members (every process running the trigger). The embedded engine has one process, so
    /// its member holds every partition: the same as `consumer`.
    async fn group_member(
        &self,
        topic: &Topic,
        group: &str,
        start: StartAt,
    ) -> Result<Box<dyn Consumer>, LogError> {
        self.consumer(topic, Some(group), start).await
    }

    /// Another process deleted `topic` (a node of the same cluster), or it is not Ferry's:
    /// forget what this one knows of it, so appends to it fail as for any unknown topic.
    fn forget(&self, _topic: &Topic) {}

    /// The control plane knows `topic` is a broker's and Ferry's: it may be found in shared
    /// storage (Kafka) when this process has not created it. Until then a broker's topic that
    /// merely exists there is unknown, so events are never written into a topic of that name
    /// that someone else made. A log only Ferry writes ignores it.
    fn admit(&self, _topic: &Topic) {}

    /// Removes events past their topic's retention; returns how many were removed.
    async fn enforce_retention(&self) -> Result<u64, LogError>;

    /// Makes every acknowledged write durable and stops taking new ones.
    async fn close(&self) -> Result<(), LogError>;

    /// Whether the log's storage answers now (after writes failed): a small durable write
    /// where the engine can make one without touching any topic, else a metadata request.
    async fn probe(&self) -> Result<(), LogError> {
        self.topics().await.map(|_| ())
    }
}

/// Positions from next offsets indexed by partition (what `Consumer::positions` returns).
pub fn positions_of(next: &[u64]) -> Vec<Position> {
    next.iter()
        .enumerate()
        .map(|(p, &offset)| Position {
            partition: p as u32,
            offset,
        })
        .collect()
}

/// Called when partitions are taken from a group member (another member gets them), before
/// they go: returns the positions to commit for them (the settled prefix), and from then on
/// the member's owner treats their in-flight events as the next owner's.
pub type RevokeHook = std::sync::Arc<dyn Fn(&[u32]) -> Vec<Position> + Send + Sync>;

/// A predicate on events (a trigger's filter), for [`Consumer::poll_where`]. An alias, so that
/// its higher-ranked `&Event` survives `async_trait`.
pub type Keep<'a> = dyn Fn(&Event) -> bool + Send + Sync + 'a;

/// Reads a topic's assigned partitions in order.
#[async_trait]
pub trait Consumer: Send {
    /// The next events (at most `max`), waiting up to `wait` for at least one. An empty vector
    /// means nothing arrived in time.
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Stored>, LogError> {
        self.poll_where(max, wait, &|_| true).await
    }

    /// Like `poll`, but returns only the events `keep` accepts; the others are read and passed
    /// over (they count against `max`; [`Consumer::positions`] tells how far reading got). It
    /// may return an empty vector before `wait` when every event read was passed over. An
    /// engine evaluates `keep` where the events are, so passing over one copies nothing.
    async fn poll_where(
        &mut self,
        max: usize,
        wait: Duration,
        keep: &Keep<'_>,
    ) -> Result<Vec<Stored>, LogError>;

    /// The next offset this consumer reads, per partition it is assigned.
    fn positions(&self) -> Vec<Position>;

    /// How many events the log removed (retention) before this consumer read them, since the
    /// last call: events its group never got.
    fn take_skipped(&mut self) -> u64 {
        0
    }

    /// Commits, for the consumer's group, that every event before each position is settled.
    async fn commit(&mut self, positions: &[Position]) -> Result<(), LogError>;

    /// Stops returning events of `partition` (its reader is busy) until [`Consumer::resume`];
    /// the other partitions go on.
    fn pause(&mut self, partition: u32);

    /// The partitions this consumer holds now, when they can change (a group member);
    /// `None`: every partition, for good.
    fn assignment(&self) -> Option<Vec<u32>> {
        None
    }

    /// Sets what to do when partitions are revoked (only a group member's can be).
    fn on_revoke(&mut self, _hook: RevokeHook) {}

    fn resume(&mut self, partition: u32);
}
