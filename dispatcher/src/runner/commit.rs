//! Committing the settled offsets, and the gauges that go with it (lag, retry queue, dead
//! letters), every second and when the trigger stops.

use super::Runner;
use std::collections::HashMap;

impl Runner {
    /// The group's committed offsets, asked for once while this node's partitions stay the
    /// same (empty when they cannot be read now: asked again next time).
    async fn unread_committed(&self) -> Vec<Option<u64>> {
        let cached = self
            .unread_committed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(c) = cached {
            return c;
        }
        match self
            .log
            .committed(&self.spec.topic, &self.spec.group())
            .await
        {
            Ok(c) => {
                *self
                    .unread_committed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
                c
            }
            Err(_) => Vec::new(),
        }
    }

    pub(super) async fn commit(&self, consumer: &mut dyn broker::Consumer) {
        let (retries, dead) = self.store.counts(&self.key);
        self.metrics
            .retry_queue
            .with_label_values(&self.labels())
            .set(retries as i64);
        self.metrics
            .dead_letter_store
            .with_label_values(&self.labels())
            .set(dead as i64);
        let positions = self.offsets().to_commit();
        if !positions.is_empty() {
            match consumer.commit(&positions).await {
                Ok(()) => self.offsets().committed(&positions),
                Err(e) => {
                    tracing::warn!(trigger = %self.key, error = %e, "committing offsets failed; will try again")
                }
            }
        }
        // The lag of the partitions this node holds (in Kafka mode the nodes' figures add up to
        // the trigger's); the committed offsets are asked for only for a partition not read
        // yet since the runner started.
        if let Ok(ends) = self.log.watermarks(&self.spec.topic).await {
            let marks: HashMap<u32, u64> = self.offsets().watermarks().collect();
            let unread = (0..ends.len() as u32).any(|p| self.owns(p) && !marks.contains_key(&p));
            let committed = if unread {
                self.unread_committed().await
            } else {
                Vec::new()
            };
            let lag: u64 = ends
                .iter()
                .enumerate()
                .filter(|(p, _)| self.owns(*p as u32))
                .map(|(p, w)| {
                    let mark = marks
                        .get(&(p as u32))
                        .copied()
                        .or(committed.get(p).copied().flatten())
                        .unwrap_or(w.end);
                    w.end.saturating_sub(mark)
                })
                .sum();
            self.metrics
                .lag
                .with_label_values(&self.labels())
                .set(lag as i64);
        }
    }
}
