//! A subscriber that is down: counted from its answers, so the trigger can probe it instead of
//! turning every event into a failed attempt and a stored retry.

use super::{now_ms, Runner};
use std::time::Duration;

/// Retryable failures in a row after which a subscriber counts as down: the trigger then reads
/// one new event and attempts one due retry per [`DOWN_PROBE`] (probes), instead of turning
/// every event into a failed attempt and a stored retry — work that would slow every other
/// trigger while achieving nothing. Events wait in the broker meanwhile (the lag shows them);
/// the first probe that succeeds brings the trigger back to full speed.
const DOWN_AFTER: u32 = 32;
pub(super) const DOWN_PROBE: Duration = Duration::from_secs(1);
const DOWN_LAPSE: Duration = Duration::from_secs(30);

impl Runner {
    /// Whether the subscriber counts as down (see [`DOWN_AFTER`]): not for a trigger without
    /// retries (its failures go to the dead-letter sink, which must not slow down), and no
    /// longer once nothing has reached it for [`DOWN_LAPSE`] (the events read meanwhile were
    /// all past their max age, say).
    pub(crate) fn down(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.spec.policy.retry > 0
            && self.failing_streak.load(Relaxed) >= DOWN_AFTER
            && now_ms().saturating_sub(self.last_failure_ms.load(Relaxed))
                < DOWN_LAPSE.as_millis() as u64
    }

    /// Notes how the subscriber answered an attempt.
    pub(super) fn answered(&self, retryable_failure: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        if retryable_failure {
            self.last_failure_ms.store(now_ms(), Relaxed);
            if self.failing_streak.fetch_add(1, Relaxed) + 1 == DOWN_AFTER {
                tracing::warn!(trigger = %self.key, "the subscriber failed {DOWN_AFTER} attempts in a row: probing it with one event a second until it answers");
            }
        } else if self.failing_streak.swap(0, Relaxed) >= DOWN_AFTER {
            tracing::info!(trigger = %self.key, "the subscriber answers again: back to full speed");
        }
    }
}
