//! How Ferry's Kafka clients are configured: producers, readers, topics' in-sync replicas.

use super::{kafka_err, KafkaOptions};
use crate::log::LogError;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use std::sync::RwLock;

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
    options.security.apply(&mut c);
    c
}

/// An idempotent producer that waits for every in-sync replica (`acks=all`): an append is
/// acknowledged only once Kafka holds it.
pub(crate) fn producer(options: &KafkaOptions) -> Result<Producer, LogError> {
    Producer::new(producer_config(options))
}

/// How long a replaced producer is kept before it is destroyed: past any send's message timeout.
const RETIRE_AFTER: std::time::Duration = std::time::Duration::from_secs(120);

/// A producer that replaces itself once it is broken for good. librdkafka's idempotent
/// producer turns unusable after a fatal error (seen: fenced once Kafka stopped answering long
/// enough for messages in flight to time out), and would then fail every later send; the sends
/// that failed still fail (their callers answer 503 or retry), the next ones go through a new
/// producer with a new producer id.
pub(crate) struct Producer {
    config: ClientConfig,
    /// The producer in use and its generation (so two failed sends replace it once).
    current: RwLock<(u64, FutureProducer)>,
}

impl Producer {
    pub(crate) fn new(config: ClientConfig) -> Result<Self, LogError> {
        let producer = config.create().map_err(kafka_err)?;
        Ok(Self {
            config,
            current: RwLock::new((0, producer)),
        })
    }

    /// The producer to send with, and its generation for [`failed`](Self::failed).
    pub(crate) fn get(&self) -> (u64, FutureProducer) {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// After a send with producer `generation` failed with `error`: replaces that producer if
    /// the error leaves it unusable.
    pub(crate) fn failed(&self, generation: u64, error: &KafkaError) {
        let (current, producer) = self.get();
        if current != generation {
            return;
        }
        let fatal = rdkafka::producer::Producer::client(&producer).fatal_error();
        let fenced = matches!(
            error.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
                    | RDKafkaErrorCode::Fatal
            )
        );
        if fatal.is_none() && !fenced {
            return;
        }
        let fresh: FutureProducer = match self.config.create() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot replace a broken Kafka producer");
                return;
            }
        };
        let mut c = match self.current.write() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        if c.0 == generation {
            tracing::warn!(error = %error, fatal = ?fatal, "the Kafka producer is broken for good: replaced by a new one");
            let old = std::mem::replace(&mut *c, (generation + 1, fresh));
            drop(c);
            // Destroying a producer blocks (it joins its thread and flushes): not on a runtime
            // worker. The sends still holding it end within their message timeout.
            let _ = std::thread::Builder::new()
                .name("retire-producer".into())
                .spawn(move || {
                    std::thread::sleep(RETIRE_AFTER);
                    drop(old);
                });
        }
    }
}

/// The configuration of [`producer`].
pub(crate) fn producer_config(options: &KafkaOptions) -> ClientConfig {
    let mut c = client_config(options);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        // Keys to partitions as the Java client does (murmur2).
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "1")
        .set(
            "message.timeout.ms",
            options
                .produce_timeout
                .map_or(30_000, |t| t.as_millis().clamp(1, i32::MAX as u128))
                .to_string(),
        )
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
            security: Default::default(),
            max_batch_records: None,
            fetch_wait: None,
            produce_timeout: None,
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
