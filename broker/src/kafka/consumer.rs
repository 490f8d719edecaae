//! A consumer over all partitions of a broker's topic, assigned by this engine at the
//! offsets `EventLog::consumer` worked out (committed, else earliest or latest).

use super::{client_config, kafka_err, record, KafkaOptions};
use crate::log::{Consumer, Keep, LogError, Position, Stored};
use async_trait::async_trait;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::sync::Arc;
use std::time::Duration;

pub(super) struct KafkaConsumer {
    consumer: StreamConsumer,
    name: String,
    group: Option<String>,
    /// Next offset to read, per partition.
    positions: Vec<u64>,
}

/// The stored event in a record, if it is a CloudEvent (K-13: other records are passed over).
pub(super) fn stored<M: Message>(m: &M) -> Option<Stored> {
    let event = record::event(m.headers(), m.payload())?;
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
    pub(super) fn new(
        options: &KafkaOptions,
        name: String,
        group: Option<String>,
        positions: Vec<u64>,
    ) -> Result<Self, LogError> {
        let mut config = client_config(options);
        config
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("group.id", group.as_deref().unwrap_or("ferry-reader"));
        let consumer: StreamConsumer = config.create().map_err(kafka_err)?;
        let mut tpl = TopicPartitionList::new();
        for (p, offset) in positions.iter().enumerate() {
            tpl.add_partition_offset(&name, p as i32, Offset::Offset(*offset as i64))
                .map_err(kafka_err)?;
        }
        consumer.assign(&tpl).map_err(kafka_err)?;
        Ok(Self {
            consumer,
            name,
            group,
            positions,
        })
    }

    fn partition_list(&self, partition: u32) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.name, partition as i32);
        tpl
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
        let mut out = Vec::new();
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
            if let Some(p) = self.positions.get_mut(m.partition() as usize) {
                *p = (m.offset() + 1) as u64;
            }
            if let Some(s) = stored(&m) {
                if keep(&s.event) {
                    out.push(s);
                }
            }
        }
        Ok(out)
    }

    fn positions(&self) -> Vec<Position> {
        crate::log::positions_of(&self.positions)
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
