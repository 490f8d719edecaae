//! A consumer over every partition of a topic (the embedded engine has one node, so it is
//! assigned all of them).

use super::{RocksLog, TopicState};
use crate::log::{Consumer, EventLog, Keep, LogError, Position, Stored, Topic};
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
    /// Events retention removed before they were read (see `Consumer::take_skipped`).
    skipped: u64,
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
            skipped: 0,
            paused: vec![false; positions.len()],
            positions,
        }
    }

    /// Reads up to `max` events across the partitions; returns those `keep` accepts and how
    /// many were read.
    async fn read_available(
        &mut self,
        max: usize,
        keep: &Keep<'_>,
    ) -> Result<(Vec<Stored>, usize), LogError> {
        let n = self.positions.len();
        let mut out = Vec::new();
        let mut scanned = 0;
        for i in 0..n {
            if scanned >= max {
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
                self.skipped += start - self.positions[p];
                self.positions[p] = start;
            }
            let from = self.positions[p];
            if from >= ps.end.load(Ordering::Acquire) {
                continue;
            }
            // Fresh events straight from the tail cache (no topic lookup, no blocking pool,
            // no copy of what `keep` passes over).
            let cached = ps.cache().read_where(from, max - scanned, keep);
            let (got, next) = match cached {
                Some(hit) => hit,
                None => {
                    let mut got = self
                        .log
                        .read(&self.topic, p as u32, from, max - scanned)
                        .await?;
                    let next = got.last().map_or(from, |s| s.position.offset + 1);
                    got.retain(|s| keep(&s.event));
                    (got, next)
                }
            };
            scanned += usize::try_from(next - from).unwrap_or(usize::MAX);
            self.positions[p] = next;
            out.extend(got);
        }
        self.cursor = (self.cursor + 1) % n.max(1);
        Ok((out, scanned))
    }
}

#[async_trait]
impl Consumer for RocksConsumer {
    async fn poll_where(
        &mut self,
        max: usize,
        wait: Duration,
        keep: &Keep<'_>,
    ) -> Result<Vec<Stored>, LogError> {
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
            let (got, scanned) = self.read_available(max, keep).await?;
            if scanned > 0 {
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

    fn take_skipped(&mut self) -> u64 {
        std::mem::take(&mut self.skipped)
    }

    fn positions(&self) -> Vec<Position> {
        crate::log::positions_of(&self.positions)
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
