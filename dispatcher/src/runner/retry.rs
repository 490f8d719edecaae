//! The durable retry queue: storing a retry, and re-attempting due ones.

use super::{now_ms, Attempt, Runner, SinkRetries, POLL_MAX};
use crate::store::{ErrorInfo, Retry, StoreError};
use broker::Event;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// The first wait after a failed store write; doubled after each failure, up to the maximum.
const STORE_BACKOFF: Duration = Duration::from_millis(100);
const STORE_BACKOFF_MAX: Duration = Duration::from_secs(30);

impl Runner {
    /// Runs a store write until it succeeds, waiting longer after each failure (counted in
    /// `ferry_dispatch_store_errors_total` and logged): the event it is about is in this
    /// node's hands only, so neither dropping it nor repeating its delivery is an answer. The
    /// in-flight slot stays taken meanwhile, so a trigger whose store fails stops taking
    /// events instead of piling them up. An error no wait can fix (Kafka refusing the record
    /// as too large, until its limit is raised) is tried again only every
    /// [`STORE_BACKOFF_MAX`]. False if the trigger stops first, or the record cannot even be
    /// encoded (the event stays unsettled and is read again after a restart).
    pub(super) async fn store_patiently<F, Fut>(&self, what: &str, mut write: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), StoreError>>,
    {
        let mut wait = STORE_BACKOFF;
        loop {
            let written = tokio::select! {
                w = write() => w,
                _ = self.abort.cancelled() => return false,
            };
            self.store_written(written.as_ref().err().map(ToString::to_string));
            match written {
                Ok(()) => return true,
                Err(e) => {
                    self.metrics
                        .store_errors
                        .with_label_values(&self.labels())
                        .inc();
                    if matches!(e, StoreError::Corrupt(_) | StoreError::BadRequest(_)) {
                        tracing::error!(trigger = %self.key, error = %e, "cannot {what}, and trying again will not help; the event stays unsettled and comes again after a restart");
                        return false;
                    }
                    if e.is_permanent() {
                        // Kept, not dropped, and not tried in a loop: an operator can see it
                        // (the log, the metric) and act (a larger Kafka message size).
                        wait = STORE_BACKOFF_MAX;
                        tracing::error!(trigger = %self.key, error = %e, "cannot {what}, and trying again will not help until the store changes; the event is held, trying again in {wait:?}");
                    } else {
                        tracing::error!(trigger = %self.key, error = %e, "cannot {what}; trying again in {wait:?}");
                    }
                }
            }
            // Stopping: the event stays unsettled and comes again after a restart.
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.stop.cancelled() => return false,
            }
            wait = (wait * 2).min(STORE_BACKOFF_MAX);
        }
    }

    /// Stores a retry (of the subscriber, or of the dead-letter sink) due after the backoff for
    /// retry number `attempts`. True once durable.
    pub(super) async fn queue_retry(
        &self,
        id: String,
        event: Event,
        attempts: u32,
        retry_after: Option<Duration>,
        last_error: ErrorInfo,
        to_sink: bool,
    ) -> bool {
        let wait = self.spec.policy.wait_before(attempts, retry_after);
        let span = self.span(
            tracing::info_span!(
                "ferry.retry",
                trigger = %self.key,
                event.id = %event.attr_text("id").unwrap_or_default(),
                attempt = attempts + 1,
                wait_ms = wait.as_millis() as u64,
                dead_letter_sink = to_sink,
            ),
            &event,
        );
        let retry = Retry {
            id,
            due_ms: now_ms() + wait.as_millis() as u64,
            attempts,
            last_error: Some(last_error),
            event,
            to_sink,
        };
        if !self
            .store_patiently("store a retry", || self.store.put_retry(&self.key, &retry))
            .instrument(span)
            .await
        {
            return false;
        }
        self.metrics.retries.with_label_values(&self.labels()).inc();
        self.retry_wake.notify_one();
        true
    }

    /// Re-attempts due retries, earliest first, within the in-flight limit.
    pub(super) async fn schedule_retries(self: Arc<Self>) {
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            let now = now_ms();
            // Down: one more than those in flight is all a pass can launch.
            let limit = if self.down() {
                self.retrying
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .len()
                    + 1
            } else {
                POLL_MAX
            };
            let (due, next_due) = match self
                .store
                .due_retries(&self.key, now, limit, &|p| self.owns(p))
            {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(trigger = %self.key, error = %e, "cannot read the retry queue");
                    (Vec::new(), None)
                }
            };
            let mut launched = 0;
            for r in due {
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
                launched += 1;
                // A subscriber that is down gets one retry per probe period.
                let probing = self.down();
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
                if probing {
                    break;
                }
            }
            if self.down() {
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = tokio::time::sleep(super::DOWN_PROBE) => {}
                }
                continue;
            }
            // Due ones all taken (in flight): the next wake-up is a retry finishing.
            let wait = match next_due {
                Some(d) if d > now => {
                    Duration::from_millis(d.saturating_sub(now_ms())).min(Duration::from_secs(1))
                }
                Some(_) if launched > 0 => Duration::ZERO,
                _ => Duration::from_secs(1),
            };
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
        match self.attempt(&r.event, attempts).await {
            // Its partition went to another node meanwhile, which takes the retry from here.
            Attempt::Retry(_) | Attempt::Fail(_) if !self.owns_delivery(&r.id) => {}
            // Kept out of the scheduler's hands (`retrying`) until the removal is stored, so a
            // failing store delays it but never delivers it again meanwhile.
            Attempt::Done => {
                self.store_patiently("remove a delivered retry", || {
                    self.store.remove_retry(&self.key, &r.id)
                })
                .await;
            }
            Attempt::Abandoned => {}
            Attempt::Retry(f) if attempts <= self.spec.policy.retry => {
                let info = self.error_info(&f, attempts);
                self.queue_retry(r.id, r.event, attempts, f.retry_after, info, false)
                    .await;
            }
            Attempt::Retry(f) | Attempt::Fail(f) => {
                self.dead_letter(&r.id, &r.event, f, attempts, SinkRetries::Queued)
                    .await;
            }
        }
    }
}
