//! Delivery policy: Knative's `DeliverySpec` as the dispatcher uses it.
//!
//! Backoff numbering: the wait before retry `n` (n = 1, 2, …) is `delay·2^n` when
//! exponential and `delay·n` when linear, as the Kafka broker and Knative's retry tests count:
//! `PT1.5S` exponential waits 3 s, 6 s, 12 s, … No cap, no jitter. With no
//! `backoffDelay`, retries follow each other at once.

use serde_json::Value;
use std::time::Duration;

/// Defaults when neither the trigger nor its broker says otherwise.
pub const DEFAULT_RETRY: u32 = 10;
pub const DEFAULT_BACKOFF_DELAY: Duration = Duration::from_millis(200);
/// Per-attempt timeout; the Kafka broker's default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackoffPolicy {
    Exponential,
    Linear,
}

/// How events are sent to subscribers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Binary,
    Structured,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryPolicy {
    /// Retries after the first attempt.
    pub retry: u32,
    pub backoff_policy: BackoffPolicy,
    pub backoff_delay: Option<Duration>,
    pub timeout: Duration,
    /// Cap on a `Retry-After` wait; `None` ignores `Retry-After`, as Knative does by default.
    pub retry_after_max: Option<Duration>,
    pub format: Format,
    /// Events older than this (since they reached the broker) are dropped, not delivered
    /// (`ferry.dev/max-event-age`: samples worthless when late).
    pub max_age: Option<Duration>,
}

impl Default for DeliveryPolicy {
    /// What a trigger gets when neither it nor its broker sets `delivery` (Knative's
    /// `config-br-defaults`: 10 retries, exponential, PT0.2S).
    fn default() -> Self {
        Self {
            retry: DEFAULT_RETRY,
            backoff_policy: BackoffPolicy::Exponential,
            backoff_delay: Some(DEFAULT_BACKOFF_DELAY),
            timeout: DEFAULT_TIMEOUT,
            retry_after_max: None,
            format: Format::Binary,
            max_age: None,
        }
    }
}

/// Parses an ISO-8601 duration (`PT0.2S`, `PT1M`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    iso8601::duration(s)
        .map(Duration::from)
        .map_err(|e| e.to_string())
}

impl DeliveryPolicy {
    /// From a (validated) Knative `DeliverySpec`. Fields it does not set are "unset", not the
    /// defaults: a trigger's delivery replaces its broker's whole (D-06).
    pub fn from_spec(spec: &Value) -> Self {
        let dur = |k: &str| {
            spec.get(k)
                .and_then(Value::as_str)
                .and_then(|s| parse_duration(s).ok())
        };
        Self {
            retry: spec
                .get("retry")
                .and_then(Value::as_u64)
                .map_or(0, |r| r.min(u64::from(u32::MAX)) as u32),
            backoff_policy: match spec.get("backoffPolicy").and_then(Value::as_str) {
                Some("linear") => BackoffPolicy::Linear,
                _ => BackoffPolicy::Exponential,
            },
            backoff_delay: dur("backoffDelay"),
            timeout: dur("timeout").unwrap_or(DEFAULT_TIMEOUT),
            retry_after_max: dur("retryAfterMax").filter(|d| !d.is_zero()),
            format: match spec.get("format").and_then(Value::as_str) {
                Some("json") => Format::Structured,
                _ => Format::Binary,
            },
            max_age: None,
        }
    }

    /// The wait before retry number `n` (1-based).
    pub fn backoff(&self, n: u32) -> Duration {
        let Some(d) = self.backoff_delay else {
            return Duration::ZERO;
        };
        let factor = match self.backoff_policy {
            BackoffPolicy::Exponential => 2u64.saturating_pow(n),
            BackoffPolicy::Linear => u64::from(n),
        };
        d.saturating_mul(u32::try_from(factor).unwrap_or(u32::MAX))
    }

    /// The wait before retry `n` after an answer that carried `Retry-After`: the longer
    /// of the backoff and the server's wish, the latter capped by `retryAfterMax`.
    pub fn wait_before(&self, n: u32, retry_after: Option<Duration>) -> Duration {
        let backoff = self.backoff(n);
        match (retry_after, self.retry_after_max) {
            (Some(ra), Some(max)) => backoff.max(ra.min(max)),
            _ => backoff,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exponential_counts_from_one() {
        let p = DeliveryPolicy::from_spec(
            &json!({"retry": 5, "backoffPolicy": "exponential", "backoffDelay": "PT1.5S"}),
        );
        let waits: Vec<f64> = (1..=5).map(|n| p.backoff(n).as_secs_f64()).collect();
        assert_eq!(waits, [3.0, 6.0, 12.0, 24.0, 48.0]);
        assert_eq!(p.retry, 5);
    }

    #[test]
    fn linear_and_no_delay() {
        let p =
            DeliveryPolicy::from_spec(&json!({"backoffPolicy": "linear", "backoffDelay": "PT1S"}));
        assert_eq!(p.backoff(1), Duration::from_secs(1));
        assert_eq!(p.backoff(3), Duration::from_secs(3));
        assert_eq!(
            p.retry, 0,
            "an explicit delivery without retry means no retries"
        );
        let p = DeliveryPolicy::from_spec(&json!({"retry": 3, "backoffPolicy": "linear"}));
        assert_eq!(p.backoff(2), Duration::ZERO);
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap_only_when_set() {
        let p = DeliveryPolicy::from_spec(
            &json!({"retry": 3, "backoffDelay": "PT0.1S", "retryAfterMax": "PT5S"}),
        );
        assert_eq!(
            p.wait_before(1, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            p.wait_before(1, Some(Duration::from_secs(60))),
            Duration::from_secs(5)
        );
        assert_eq!(p.wait_before(1, None), Duration::from_millis(200));
        let p = DeliveryPolicy::from_spec(&json!({"retry": 3, "backoffDelay": "PT0.1S"}));
        assert_eq!(
            p.wait_before(1, Some(Duration::from_secs(60))),
            Duration::from_millis(200)
        );
    }

    #[test]
    fn huge_retry_counts_do_not_overflow() {
        let p = DeliveryPolicy::from_spec(&json!({"retry": 100, "backoffDelay": "PT1S"}));
        assert!(p.backoff(100) > Duration::from_secs(1_000_000));
    }
}
