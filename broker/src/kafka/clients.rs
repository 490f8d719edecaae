//! How Ferry's Kafka clients are configured: producers, readers, topics' in-sync replicas.

use super::{kafka_err, KafkaOptions};
use crate::log::LogError;
use rdkafka::config::ClientConfig;
use rdkafka::producer::FutureProducer;

/// `min.insync.replicas` of the topics Ferry creates: the configured value, else 2 when there
/// are at least 3 replicas (so `acks=all` means two brokers have a record, and one broker may
/// be down without stopping writes; the broker's default of 1 would let the leader alone
/// acknowledge it); else `None`, the broker's default.
pub fn min_insync_replicas(options: &KafkaOptions) -> Option<String> {
    options
        .min_insync_replicas
        .map(|m| m.to_string())
        .or_else(|| (options.replication_factor >= 3).then(|| "2".to_string()))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn options(replication_factor: i32, min_insync_replicas: Option<i32>) -> KafkaOptions {
        KafkaOptions {
            bootstrap: String::new(),
            replication_factor,
            min_insync_replicas,
            max_batch_records: None,
            fetch_wait: None,
        }
    }

    #[test]
    fn two_in_sync_replicas_from_three_replicas_unless_configured() {
        assert_eq!(min_insync_replicas(&options(1, None)), None);
        assert_eq!(min_insync_replicas(&options(2, None)), None);
        assert_eq!(min_insync_replicas(&options(3, None)).as_deref(), Some("2"));
        assert_eq!(
            min_insync_replicas(&options(2, Some(2))).as_deref(),
            Some("2")
        );
        assert_eq!(
            min_insync_replicas(&options(5, Some(3))).as_deref(),
            Some("3")
        );
    }
}
