//! The table of topics a `KafkaLog` knows: Kafka names, layouts looked up and kept, the
//! negative cache of unknown ones, which broker topics may be looked up at all (admitted), and
//! topic creation.

use super::{
    kafka_err, Created, KafkaLog, LogError, Naming, Retention, Topic, TopicConfig, TopicState,
    REQUEST_TIMEOUT, UNKNOWN_MAX, UNKNOWN_TTL,
};
use rdkafka::admin::{AdminOptions, NewTopic};
use rdkafka::consumer::Consumer as _;
use rdkafka::types::RDKafkaErrorCode;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

impl KafkaLog {
    /// The Kafka topic behind `topic`.
    pub(super) fn name_of(&self, topic: &Topic) -> String {
        if let Some(s) = self.known(topic) {
            return s.name.clone();
        }
        self.new_name(topic)
    }

    pub(super) fn new_name(&self, topic: &Topic) -> String {
        match self.inner.naming {
            Naming::Brokers => super::topic_name(topic),
            Naming::External(_) => topic.name.clone(),
        }
    }

    /// Partitions of the Kafka topic `name`, 0 if it does not exist.
    pub(super) fn partitions_of(&self, name: &str) -> Result<usize, LogError> {
        let md = self
            .reader()
            .fetch_metadata(Some(name), REQUEST_TIMEOUT)
            .map_err(kafka_err)?;
        Ok(md
            .topics()
            .iter()
            .find(|t| t.name() == name && t.error().is_none())
            .map_or(0, |t| t.partitions().len()))
    }

    pub(super) fn recently_unknown(&self, topic: &Topic) -> bool {
        let Ok(mut unknown) = self.inner.unknown.lock() else {
            return false;
        };
        match unknown.get(topic) {
            Some(at) if at.elapsed() < UNKNOWN_TTL => true,
            Some(_) => {
                unknown.remove(topic);
                false
            }
            None => false,
        }
    }

    pub(super) fn remember_unknown(&self, topic: &Topic) {
        if let Ok(mut unknown) = self.inner.unknown.lock() {
            if unknown.len() >= UNKNOWN_MAX {
                unknown.clear();
            }
            unknown.insert(topic.clone(), std::time::Instant::now());
        }
    }

    /// The topic's state: known from this process, else looked up in the cluster.
    pub(super) async fn topic_state(&self, topic: &Topic) -> Result<Arc<TopicState>, LogError> {
        if let Some(s) = self.known(topic) {
            return Ok(s);
        }
        if self.recently_unknown(topic) || !self.may_look_up(topic) {
            return Err(LogError::UnknownTopic(topic.clone()));
        }
        self.look_up(topic).await
    }

    /// Reads `topic`'s layout from Kafka and keeps it.
    pub(super) async fn look_up(&self, topic: &Topic) -> Result<Arc<TopicState>, LogError> {
        let name = self.new_name(topic);
        let me = self.clone();
        let lookup = name.clone();
        let partitions = tokio::task::spawn_blocking(move || me.partitions_of(&lookup))
            .await
            .map_err(|e| LogError::Storage(e.to_string()))??;
        if partitions == 0 {
            self.remember_unknown(topic);
            return Err(LogError::UnknownTopic(topic.clone()));
        }
        let state = Arc::new(TopicState {
            config: TopicConfig {
                partitions: partitions as u32,
                retention: Retention::default(),
            },
            next_partition: AtomicU32::new(0),
            name,
        });
        if let Ok(mut t) = self.inner.topics.write() {
            t.insert(topic.clone(), state.clone());
        }
        Ok(state)
    }

    /// Creates one topic: whether it was made now or was there already.
    pub(super) async fn create(&self, new: NewTopic<'_>) -> Result<Created, LogError> {
        let results = self
            .inner
            .admin
            .create_topics(
                &[new],
                &AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT)),
            )
            .await
            .map_err(kafka_err)?;
        let mut created = Created::New;
        for r in results {
            match r {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => created = Created::Existing,
                Err((t, code)) => {
                    return Err(LogError::Storage(format!("creating topic {t}: {code}")))
                }
            }
        }
        Ok(created)
    }

    /// Whether `topic` may be looked up in Kafka: any topic of a KafkaSource's; of brokers',
    /// Ferry's own and those admitted.
    pub(super) fn may_look_up(&self, topic: &Topic) -> bool {
        matches!(self.inner.naming, Naming::External(_))
            || topic.namespace == cloudevent::ext::SYSTEM_NAMESPACE
            || self.inner.admitted.read().is_ok_and(|a| a.contains(topic))
    }

    pub(super) fn known(&self, topic: &Topic) -> Option<Arc<TopicState>> {
        self.inner
            .topics
            .read()
            .ok()
            .and_then(|t| t.get(topic).cloned())
    }
}
