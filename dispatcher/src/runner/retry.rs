//! The durable retry queue: storing a retry, and re-attempting due ones.

use super::{now_ms, Attempt, Runner, SinkRetries, POLL_MAX};
use crate::store::{ErrorInfo, Retry};
use broker::Event;
use std::sync::Arc;
use std::time::Duration;

impl Runner {
    /// Stores a retry (of the subscriber, or of the dead-letter sink) due after the backoff for
    /// retry number `attempts`. True once durable.
    pub(super) fn queue_retry(
        &self,
        id: String,
        event: Event,
        attempts: u32,
        retry_after: Option<Duration>,
        last_error: ErrorInfo,
        to_sink: bool,
    ) -> bool {
        let wait = self.spec.policy.wait_before(attempts, retry_after);
        let retry = Retry {
            id,
            due_ms: now_ms() + wait.as_millis() as u64,
            attempts,
            last_error: Some(last_error),
            event,
            to_sink,
        };
        match self.store.put_retry(&self.key, &retry) {
            Ok(()) => {
                self.metrics.retries.with_label_values(&self.labels()).inc();
                self.retry_wake.notify_one();
                true
            }
            Err(e) => {
                tracing::error!(trigger = %self.key, error = %e, "cannot store a retry; the event will be read again after a restart");
                false
            }
        }
    }

    /// Re-attempts due retries, earliest first, within the in-flight limit.
    pub(super) async fn schedule_retries(self: Arc<Self>) {
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            let due = match self
                .store
                .retries_where(&self.key, POLL_MAX, &|id| self.owns_delivery(id))
            {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(trigger = %self.key, error = %e, "cannot read the retry queue");
                    Vec::new()
                }
            };
            let now = now_ms();
            let mut next_due: Option<u64> = None;
            for r in due {
                if r.due_ms > now {
                    next_due = Some(r.due_ms);
                    break;
                }
                if !self
                    .retrying
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(r.id.clone())
                {
                    continue;
                }
                let permit = tokio::select! {
                    p = self.permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                    _ = self.stop.cancelled() => return,
                };
                // The record may have moved on (re-queued or finished) since it was listed.
                if self.store.retry_due(&self.key, &r.id).ok().flatten() != Some(r.due_ms) {
                    self.retrying
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&r.id);
                    continue;
                }
                let me = self.clone();
                self.tasks.spawn(async move {
                    let id = r.id.clone();
                    me.retry_attempt(r).await;
                    me.retrying
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                    me.retry_wake.notify_one();
                    drop(permit);
                });
            }
            let wait = next_due.map_or(Duration::from_secs(1), |d| {
                Duration::from_millis(d.saturating_sub(now_ms())).min(Duration::from_secs(1))
            });
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = self.retry_wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One due retry: of the subscriber, or of the dead-letter sink.
    pub(super) async fn retry_attempt(&self, r: Retry) {
        if r.to_sink {
            return self.sink_retry(r).await;
        }
        let attempts = r.attempts + 1;
        match self.attempt(&r.event).await {
            // Its partition went to another node meanwhile, which takes the retry from here.
            Attempt::Retry(_) | Attempt::Fail(_) if !self.owns_delivery(&r.id) => {}
            Attempt::Done => {
                if let Err(e) = self.store.remove_retry(&self.key, &r.id) {
                    tracing::error!(trigger = %self.key, error = %e, "cannot remove a finished retry; it may be delivered again");
                }
            }
            Attempt::Abandoned => {}
            Attempt::Retry(f) if attempts <= self.spec.policy.retry => {
                let info = self.error_info(&f, attempts);
                if !self.queue_retry(r.id, r.event, attempts, f.retry_after, info, false) {
                    // The old record stays due: do not hammer the subscriber meanwhile.
                    self.pause().await;
                }
            }
            Attempt::Retry(f) | Attempt::Fail(f) => {
                self.dead_letter(&r.id, &r.event, f, attempts, SinkRetries::Queued)
                    .await;
            }
        }
    }

    /// Waits a second (less if stopping): after a store failure, before trying again.
    pub(super) async fn pause(&self) {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = self.stop.cancelled() => {}
        }
    }
}
