//! How Ferry's Kafka clients are configured: producers, readers, topics' in-sync replicas.

use super::{kafka_err, KafkaOptions};
use crate::log::LogError;
use rdkafka::config::ClientConfig;
use rdkafka::producer::FutureProducer;

/// `min.insync.replicas` for a topic of `replication_factor` replicas: 2 when there are at
/// least 2, so that `acks=all` means two brokers have a record (the broker's default of 1
/// would let the leader alone acknowledge it); `None` (the broker's default) with one.
pub fn min_insync_replicas(replication_factor: i32) -> Option<String> {
    (replication_factor >= 2).then(|| "2".to_string())
}
/// A consumer's configuration for metadata, watermarks, reads and a group's offsets (it never
/// joins the group).
pub(super) fn reader_config(options: &KafkaOptions, group: Option<&str>) -> ClientConfig {
    let mut c = client_config(options);
    c.set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("group.id", group.unwrap_or("ferry-reader"));
    c
}

pub(crate) fn client_config(options: &KafkaOptions) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &options.bootstrap);
    c
}

/// An idempotent producer that waits for every in-sync replica (`acks=all`): an append is
/// acknowledged only once Kafka holds it.
pub(crate) fn producer(options: &KafkaOptions) -> Result<FutureProducer, LogError> {
    producer_config(options).create().map_err(kafka_err)
}

/// The configuration of [`producer`].
pub(crate) fn producer_config(options: &KafkaOptions) -> ClientConfig {
    let mut c = client_config(options);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        // Keys to partitions as the Java client does (murmur2).
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "1")
        .set("message.timeout.ms", "30000")
        .set(
            "batch.num.messages",
            options
                .max_batch_records
                .map_or_else(|| "10000".to_string(), |n| n.max(1).to_string()),
        );
    c
}
