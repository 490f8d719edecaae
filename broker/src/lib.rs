//! Ferry's durable event log.
//!
//! Everything in Ferry is an event in a broker, and every broker is a *topic* in an [`EventLog`]:
//! N partitions of append-only, offset-addressed records, committed offsets per consumer group,
//! and retention by age and by size. Callers (the ingress, the control plane, `ferry tail`, the
//! dispatcher) see only the trait; the engine behind it is chosen at start-up.
//!
//! - [`event`]: which partition an event goes to; the event itself is [`cloudevent::Event`].
//! - [`publish`]: the [`Publisher`], the one path into a broker: validate, limit, stamp, append.
//! - [`codec`]: the compact binary encoding of a record (what the RocksDB engine writes).
//! - [`log`]: the [`EventLog`] and [`Consumer`] traits, topic and position types, [`LogError`].
//! - [`rocks`]: the embedded engine on RocksDB, with group commit (one fsync per batch of appends).
//! - [`kafka`]: the distributed engine on Apache Kafka (a topic per broker).
//! - [`metrics`]: the Prometheus metrics the engines record.
//!
//! The Kafka engine implements the same traits with a topic per broker and a consumer group
//! per trigger; nothing above this crate changes. What only a cluster has is in the trait with
//! a default for the embedded engine: [`EventLog::group_member`] (partitions shared among the
//! processes running a trigger), [`Consumer::assignment`] and [`Consumer::on_revoke`] (what a
//! member holds, and the commit before partitions leave it), [`EventLog::forget`] (a topic
//! another process deleted). `kafka::KafkaLog::external` reads any cluster's topics (a
//! KafkaSource).

pub mod codec;
pub mod event;
pub mod kafka;
pub mod log;
pub mod metrics;
pub mod publish;
pub mod rocks;

pub use event::{AttrValue, Event};
pub use kafka::{KafkaLog, KafkaOptions};
pub use log::{
    Consumer, Created, EventLog, Keep, LogError, Position, Retention, RevokeHook, StartAt, Stored,
    Topic, TopicConfig, Watermarks,
};
pub use publish::{PublishError, Publisher, Replied};
pub use rocks::{FsyncMode, RocksLog, RocksOptions};
