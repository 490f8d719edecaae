//! A consumer over every partition of a topic (the embedded engine has one node, so it is
//! assigned all of them).

use super::{RocksLog, TopicState};
use crate::log::{Consumer, EventLog, LogError, Position, Stored, Topic};
use async_trait::async_trait;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub(super) struct RocksConsumer {
    log: RocksLog,
    topic: Topic,
    state: Arc<TopicState>,
    group: Option<String>,
    /// Next offset to read, per partition.
    positions: Vec<u64>,
    /// Partition to read first on the next poll, so no partition starves the others.
    cursor: usize,
    paused: Vec<bool>,
}

impl RocksConsumer {
    pub(super) fn new(
        log: RocksLog,
        topic: Topic,
        state: Arc<TopicState>,
        group: Option<String>,
        positions: Vec<u64>,
    ) -> Self {
        Self {
            log,
            topic,
            state,
            group,
            cursor: 0,
            paused: vec![false; positions.len()],
            positions,
        }
    }

    async fn read_available(&mut self, max: usize) -> Result<Vec<Stored>, LogError> {
        let n = self.positions.len();
        let mut out = Vec::new();
        for i in 0..n {
            if out.len() >= max {
                break;
            }
            let p = (self.cursor + i) % n;
            if self.paused[p] {
                continue;
            }
            let ps = &self.state.partitions[p];
            // Retention may have removed what this consumer had not read yet.
            let start = ps.start.load(Ordering::Acquire);
            if self.positions[p] < start {
                self.positions[p] = start;
            }
            if self.positions[p] >= ps.end.load(Ordering::Acquire) {
                continue;
            }
            // Fresh events straight from the tail cache (no topic lookup, no blocking pool).
            let cached = ps.cache().read(self.positions[p], max - out.len());
            let got = match cached {
                Some(got) => got,
                None => {
                    self.log
                        .read(&self.topic, p as u32, self.positions[p], max - out.len())
                        .await?
                }
            };
            if let Some(last) = got.last() {
                self.positions[p] = last.position.offset + 1;
            }
            out.extend(got);
        }
        self.cursor = (self.cursor + 1) % n.max(1);
        Ok(out)
    }
}

#[async_trait]
impl Consumer for RocksConsumer {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Stored>, LogError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.state.deleted.load(Ordering::Acquire) {
                return Err(LogError::UnknownTopic(self.topic.clone()));
            }
            // Register for the wake-up before looking, so an append between the look and the
            // wait is not missed.
            let state = self.state.clone();
            let appended = state.appended.notified();
            tokio::pin!(appended);
            appended.as_mut().enable();
            let got = self.read_available(max).await?;
            if !got.is_empty() {
                return Ok(got);
            }
            if tokio::time::timeout_at(deadline, appended).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn commit(&mut self, positions: &[Position]) -> Result<(), LogError> {
        match &self.group {
            Some(group) => self.log.commit(&self.topic, group, positions).await,
            None => Ok(()),
        }
    }

    fn pause(&mut self, partition: u32) {
        if let Some(p) = self.paused.get_mut(partition as usize) {
            *p = true;
        }
    }

    fn resume(&mut self, partition: u32) {
        if let Some(p) = self.paused.get_mut(partition as usize) {
            *p = false;
        }
    }
}
