//! Writes records to any Kafka topic: what a KafkaSink does with the events it is given.

use super::{kafka_err, record, KafkaOptions};
use crate::event::Event;
use crate::log::LogError;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::types::RDKafkaErrorCode;
use std::time::Duration;

/// How a sink's records carry the event (the CloudEvents Kafka binding's content modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentMode {
    /// `ce_*` headers, the data as the value.
    Binary,
    /// The structured JSON event as the value, `content-type: application/cloudevents+json`.
    Structured,
}

/// A producer for one topic (idempotent, `acks=all`).
pub struct TopicWriter {
    producer: super::clients::Producer,
    topic: String,
    mode: ContentMode,
}

impl TopicWriter {
    /// Creates the topic if it does not exist (with `partitions` and `replication`, or the
    /// cluster's defaults), and a producer for it.
    pub async fn open(
        options: &KafkaOptions,
        topic: &str,
        mode: ContentMode,
        partitions: Option<i32>,
        replication: Option<i32>,
    ) -> Result<Self, LogError> {
        let config = super::clients::client_config(options);
        let admin: AdminClient<DefaultClientContext> = config.create().map_err(kafka_err)?;
        let new = NewTopic::new(
            topic,
            partitions.unwrap_or(-1),
            replication.map_or(TopicReplication::Fixed(-1), TopicReplication::Fixed),
        );
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for r in admin
            .create_topics(&[new], &opts)
            .await
            .map_err(kafka_err)?
        {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => {
                    return Err(LogError::Storage(format!("creating topic {t}: {code}")))
                }
            }
        }
        let producer = super::producer(options)?;
        Ok(Self {
            producer,
            topic: topic.to_string(),
            mode,
        })
    }

    pub fn mode(&self) -> ContentMode {
        self.mode
    }

    /// Writes the events, `structured` holding each one's structured JSON (used in structured
    /// mode); returns once Kafka acknowledged them all.
    pub async fn write(&self, events: &[Event], structured: &[String]) -> Result<(), LogError> {
        for (i, e) in events.iter().enumerate() {
            let key = e.partition_key().map(|k| k.into_owned());
            let (headers, value): (OwnedHeaders, Vec<u8>) = match self.mode {
                ContentMode::Binary => (
                    record::headers(e),
                    e.data.as_deref().unwrap_or_default().to_vec(),
                ),
                ContentMode::Structured => (
                    OwnedHeaders::new().insert(Header {
                        key: "content-type",
                        value: Some("application/cloudevents+json".as_bytes()),
                    }),
                    structured
                        .get(i)
                        .map(|s| s.as_bytes().to_vec())
                        .unwrap_or_default(),
                ),
            };
            let mut rec = FutureRecord::to(&self.topic)
                .payload(value.as_slice())
                .headers(headers);
            if let Some(k) = &key {
                rec = rec.key(k.as_str());
            }
            let (generation, producer) = self.producer.get();
            producer
                .send(rec, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| {
                    self.producer.failed(generation, &e);
                    kafka_err(e)
                })?;
        }
        Ok(())
    }
}
