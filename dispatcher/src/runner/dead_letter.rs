//! Giving up on an event: the dead-letter sink (retried like a delivery), else Ferry's own
//! dead-letter store.

use super::{now_ms, Runner, TTL};
use crate::store::{DeadLetter, ErrorInfo, Retry};
use crate::subscriber::{Failure, Outcome, Subscriber};
use base64::Engine as _;
use broker::{AttrValue, Event};
use cloudevent::ext::{ERROR_CODE, ERROR_DATA, ERROR_DEST};
use tracing::Instrument;

impl Runner {
    /// What went wrong, as a retry or dead letter keeps it: the answer's status and body (base64),
    /// the message, the attempts made, when, and where to.
    pub(super) fn error_info(&self, f: &Failure, attempts: u32) -> ErrorInfo {
        ErrorInfo {
            code: f.code,
            body: base64::engine::general_purpose::STANDARD.encode(&f.body),
            message: f.message.clone(),
            attempts,
            time: super::now_rfc3339(),
            destination: self.spec.subscriber.destination(),
        }
    }

    /// The event as the dead-letter sink gets it: the `knativeerror*` extensions added.
    pub(super) fn for_sink(&self, event: &Event, failure: &Failure, info: &ErrorInfo) -> Event {
        let mut dl = event.clone();
        dl.remove_attr(TTL);
        dl.set_attr(
            ERROR_DEST,
            AttrValue::String(self.spec.subscriber.destination()),
        );
        if let Some(code) = failure.code {
            dl.set_attr(ERROR_CODE, AttrValue::String(code.to_string()));
        }
        if !failure.body.is_empty() {
            dl.set_attr(ERROR_DATA, AttrValue::String(info.body.clone()));
        }
        dl
    }

    /// One attempt at the dead-letter sink.
    pub(super) async fn sink_attempt(
        &self,
        sink: &dyn Subscriber,
        event: &Event,
    ) -> Option<Outcome> {
        let outcome = tokio::select! {
            o = sink.deliver(event) => o,
            _ = self.abort.cancelled() => return None,
        };
        let labels = self.labels();
        self.metrics
            .deliveries
            .with_label_values(&[labels[0], labels[1], outcome.class()])
            .inc();
        Some(outcome)
    }

    /// Gives up on an event: the dead-letter sink (with the same retry policy: queued, so a
    /// failing sink holds up nothing, or in place for an ordered trigger), else, or if that
    /// fails too, Ferry's dead-letter store. True once the event is safely somewhere.
    pub(super) async fn dead_letter(
        &self,
        id: &str,
        event: &Event,
        failure: Failure,
        attempts: u32,
        sink_retries: SinkRetries,
    ) -> bool {
        let span = self.dead_letter_span(event, attempts);
        self.dead_letter_in_span(id, event, failure, attempts, sink_retries)
            .instrument(span)
            .await
    }

    /// A `ferry.dead_letter` span: giving up on an event, to the sink or the store.
    fn dead_letter_span(&self, event: &Event, attempts: u32) -> tracing::Span {
        let to = match &self.spec.dead_letter {
            Some(sink) => sink.destination(),
            None => "store".to_string(),
        };
        self.span(
            tracing::info_span!(
                "ferry.dead_letter",
                trigger = %self.key,
                event.id = %event.attr_text("id").unwrap_or_default(),
                attempts,
                to = %to,
            ),
            event,
        )
    }

    async fn dead_letter_in_span(
        &self,
        id: &str,
        event: &Event,
        failure: Failure,
        attempts: u32,
        sink_retries: SinkRetries,
    ) -> bool {
        let mut info = self.error_info(&failure, attempts);
        if let Some(sink) = &self.spec.dead_letter {
            let dl = self.for_sink(event, &failure, &info);
            let mut n = 0;
            let last = loop {
                let Some(outcome) = self.sink_attempt(sink.as_ref(), &dl).await else {
                    return false;
                };
                match outcome {
                    Outcome::Delivered { .. } => return self.sink_took(id).await,
                    Outcome::Retry(f) if n < self.spec.policy.retry => {
                        n += 1;
                        if sink_retries == SinkRetries::Queued {
                            return self
                                .queue_retry(id.to_string(), dl, n, f.retry_after, info, true)
                                .await;
                        }
                        let wait = self.spec.policy.wait_before(n, f.retry_after);
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = self.stop.cancelled() => return false,
                        }
                    }
                    Outcome::Retry(f) | Outcome::Fail(f) => break f,
                }
            };
            info.message = format!(
                "{}; then the dead-letter sink {} failed too: {}",
                info.message,
                sink.destination(),
                last.message
            );
        }
        self.keep(id, event.clone(), info).await
    }

    /// A queued retry of the dead-letter sink.
    pub(super) async fn sink_retry(&self, r: Retry) {
        let span = self.dead_letter_span(&r.event, r.attempts);
        self.sink_retry_in_span(r).instrument(span).await
    }

    async fn sink_retry_in_span(&self, r: Retry) {
        let Some(sink) = &self.spec.dead_letter else {
            // The trigger lost its sink meanwhile: keep the event ourselves.
            let info = r.last_error.clone().unwrap_or_else(|| {
                self.error_info(
                    &Failure::new(None, Default::default(), "no dead-letter sink"),
                    r.attempts,
                )
            });
            self.keep(&r.id, without_error_extensions(r.event), info)
                .await;
            return;
        };
        let Some(outcome) = self.sink_attempt(sink.as_ref(), &r.event).await else {
            return;
        };
        let n = r.attempts + 1;
        match outcome {
            Outcome::Delivered { .. } => {
                self.sink_took(&r.id).await;
            }
            Outcome::Retry(f) if n <= self.spec.policy.retry => {
                let info = r
                    .last_error
                    .clone()
                    .unwrap_or_else(|| self.error_info(&f, n));
                self.queue_retry(r.id, r.event, n, f.retry_after, info, true)
                    .await;
            }
            Outcome::Retry(f) | Outcome::Fail(f) => {
                let mut info = r
                    .last_error
                    .clone()
                    .unwrap_or_else(|| self.error_info(&f, n));
                info.message = format!(
                    "{}; then the dead-letter sink {} failed too: {}",
                    info.message,
                    sink.destination(),
                    f.message
                );
                self.keep(&r.id, without_error_extensions(r.event), info)
                    .await;
            }
        }
    }

    /// The dead-letter sink took the event: its queued retry, if any, goes.
    pub(super) async fn sink_took(&self, id: &str) -> bool {
        let labels = self.labels();
        self.metrics
            .dead_letters
            .with_label_values(&[labels[0], labels[1], "sink"])
            .inc();
        if self.store.retry_due(&self.key, id).ok().flatten().is_none() {
            return true;
        }
        self.store_patiently("remove a dead-lettered retry", || {
            self.store.remove_retry(&self.key, id)
        })
        .await;
        true
    }

    /// Keeps an event in Ferry's dead-letter store. The event is in nobody's hands but ours:
    /// keep trying the store until it takes it (or the trigger is aborted, leaving the event
    /// unsettled, to come again).
    pub(super) async fn keep(&self, id: &str, event: Event, error: ErrorInfo) -> bool {
        let dl = DeadLetter {
            id: id.to_string(),
            time_ms: now_ms(),
            event,
            error,
        };
        if !self
            .store_patiently("store a dead letter", || {
                self.store.put_dead_letter(&self.key, &dl)
            })
            .await
        {
            return false;
        }
        tracing::info!(trigger = %self.key, id = %dl.id, error = %dl.error.message, "event kept in the dead-letter store");
        let labels = self.labels();
        self.metrics
            .dead_letters
            .with_label_values(&[labels[0], labels[1], "store"])
            .inc();
        true
    }
}

/// How retries of the dead-letter sink wait.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum SinkRetries {
    /// In the durable retry queue (unordered: a failing sink holds up nothing).
    Queued,
    /// In place (ordered: nothing else of the partition may go first anyway).
    InPlace,
}

/// The event as it was before the `knativeerror*` extensions were added for the sink.
fn without_error_extensions(mut event: Event) -> Event {
    for ext in [ERROR_DEST, ERROR_CODE, ERROR_DATA] {
        event.remove_attr(ext);
    }
    event
}
