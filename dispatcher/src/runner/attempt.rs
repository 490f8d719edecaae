//! One delivery attempt: the `ferry.deliver` span, the policy's maximum age, the subscriber's
//! answer counted, a reply stored in the broker.

use super::{Attempt, Runner, TTL};
use crate::subscriber::{Failure, Outcome};
use broker::{Event, PublishError, Replied};
use cloudevent::trace::TraceContext;
use tokio::time::Instant;
use tracing::Instrument;

impl Runner {
    /// Whether `event` is past the policy's maximum age (by its arrival time in the broker).
    fn expired(&self, event: &Event) -> bool {
        let Some(max) = self.spec.policy.max_age else {
            return false;
        };
        let Some(arrived) = event
            .attr_text(cloudevent::ext::ARRIVAL_TIME)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
        else {
            return false;
        };
        let age = crate::clock::now_utc() - arrived.with_timezone(&chrono::Utc);
        age.to_std().is_ok_and(|age| age > max)
    }

    /// A span of this trigger's, a child of the event's trace context (see
    /// [`cloudevent::trace`]).
    pub(super) fn span(&self, span: tracing::Span, event: &Event) -> tracing::Span {
        if let Some(cx) = TraceContext::of_event(event) {
            cx.adopt(&span);
        }
        span
    }

    /// Delivery attempt number `number`, reply included, in a `ferry.deliver` span.
    pub(super) async fn attempt(&self, event: &Event, number: u32) -> Attempt {
        let span = self.span(
            tracing::info_span!(
                "ferry.deliver",
                otel.kind = "client",
                otel.status_code = tracing::field::Empty,
                trigger = %self.key,
                event.id = %event.attr_text("id").unwrap_or_default(),
                attempt = number,
                outcome = tracing::field::Empty,
            ),
            event,
        );
        if self.expired(event) {
            self.metrics.expired.with_label_values(&self.labels()).inc();
            span.record("outcome", "expired");
            return Attempt::Done;
        }
        let attempt = self.attempt_in_span(event).instrument(span.clone()).await;
        let outcome = match &attempt {
            Attempt::Done => "delivered",
            Attempt::Retry(_) => "retry",
            Attempt::Fail(_) => "failed",
            Attempt::Abandoned => "abandoned",
        };
        span.record("outcome", outcome);
        if matches!(attempt, Attempt::Retry(_) | Attempt::Fail(_)) {
            span.record("otel.status_code", "error");
        }
        attempt
    }

    async fn attempt_in_span(&self, event: &Event) -> Attempt {
        let mut outgoing = event.clone();
        outgoing.remove_attr(TTL);
        let started = Instant::now();
        let outcome = tokio::select! {
            o = self.spec.subscriber.deliver(&outgoing) => o,
            _ = self.abort.cancelled() => return Attempt::Abandoned,
        };
        let labels = self.labels();
        self.answered(matches!(outcome, Outcome::Retry(_)));
        self.metrics
            .latency
            .with_label_values(&labels)
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .deliveries
            .with_label_values(&[labels[0], labels[1], outcome.class()])
            .inc();
        match outcome {
            Outcome::Delivered { reply: None } => Attempt::Done,
            // A source's sink answers to no broker: its reply goes nowhere.
            Outcome::Delivered { reply: Some(_) } if self.spec.feed.is_some() => {
                let labels = self.labels();
                self.metrics
                    .replies
                    .with_label_values(&[labels[0], labels[1], "ignored"])
                    .inc();
                Attempt::Done
            }
            Outcome::Delivered { reply: Some(reply) } => match self.store_reply(event, reply).await
            {
                Ok(()) => Attempt::Done,
                // A reply no broker takes (invalid, too large) fails for good: asking the
                // subscriber again would only repeat its side effects.
                Err(e @ (PublishError::Invalid { .. } | PublishError::TooLarge { .. })) => {
                    Attempt::Fail(Failure::new(
                        Some(200),
                        bytes::Bytes::new(),
                        format!("the reply was refused: {e}"),
                    ))
                }
                // RP-02: if the reply cannot be stored, the delivery failed.
                Err(e) => Attempt::Retry(Failure::new(
                    None,
                    bytes::Bytes::new(),
                    format!("storing the reply failed: {e}"),
                )),
            },
            Outcome::Retry(f) => Attempt::Retry(f),
            Outcome::Fail(f) => Attempt::Fail(f),
        }
    }

    /// Publishes a reply to the broker, one step further along the loop guard.
    async fn store_reply(&self, event: &Event, mut reply: Event) -> Result<(), PublishError> {
        // A reply without a context of its own goes on in the trace of the delivery.
        if reply.attr(cloudevent::trace::TRACEPARENT).is_none() {
            if let Some(cx) = TraceContext::for_hop(&tracing::Span::current(), event) {
                cx.set_on(&mut reply);
            }
        }
        let outcome = match self.publisher.reply(&self.spec.topic, event, reply).await? {
            Replied::Stored(_) => "stored",
            Replied::Dropped => {
                tracing::warn!(trigger = %self.key, "reply dropped: {TTL} reached 0 (an event loop?)");
                "dropped"
            }
        };
        let labels = self.labels();
        self.metrics
            .replies
            .with_label_values(&[labels[0], labels[1], outcome])
            .inc();
        Ok(())
    }
}
