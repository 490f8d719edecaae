//! The last step to zero (§1.5): the decider may wish for zero as soon as its stable average is
//! 0, but a revision goes to zero only once it has been active for a whole stable window and
//! the wish has held for `scale-to-zero-grace-period` (or the pod retention period, when a
//! route reaches it and that is longer). Until then one instance stays.

use super::settings::Scaling;

#[derive(Clone, Debug)]
pub struct ZeroGate {
    /// Since when the revision has had instances.
    active_since: u64,
    /// Since when zero has been wished for, without a break.
    zero_since: Option<u64>,
}

impl ZeroGate {
    pub fn new(now_ms: u64) -> Self {
        Self {
            active_since: now_ms,
            zero_since: None,
        }
    }

    /// The revision has no instance at `now_ms`: its active time starts again when it wakes.
    pub fn inactive(&mut self, now_ms: u64) {
        self.active_since = now_ms;
    }

    /// `want` (bounded) with `current` instances, after the gate: `(count, held)`, `held` when
    /// a wish for zero is being held back.
    pub fn gate(
        &mut self,
        s: &Scaling,
        now_ms: u64,
        want: u32,
        current: u32,
        reachable: bool,
    ) -> (u32, bool) {
        if want > 0 || current == 0 {
            self.zero_since = None;
            return (want, false);
        }
        let since = *self.zero_since.get_or_insert(now_ms);
        let retention = if reachable {
            s.pod_retention
        } else {
            std::time::Duration::ZERO
        };
        let hold = s.scale_to_zero_grace_period.max(retention).as_millis() as u64;
        let stable = s.stable_window.as_millis() as u64;
        if now_ms < self.active_since + stable || now_ms < since + hold {
            (1, true)
        } else {
            (0, false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscaler::settings::Defaults;
    use std::collections::BTreeMap;

    fn scaling(retention: &str) -> Scaling {
        let mut a = BTreeMap::new();
        a.insert(
            "autoscaling.knative.dev/scale-to-zero-pod-retention-period".to_string(),
            retention.to_string(),
        );
        Scaling::resolve(&Defaults::default(), &a, 0).unwrap()
    }

    #[test]
    fn zero_waits_for_a_stable_window_active_and_the_grace_period() {
        let s = scaling("0s"); // stable window 60 s, grace 30 s
        let mut g = ZeroGate::new(0);
        // Wished for at 10 s: held until 60 s (active a stable window), then 30 s of grace
        // from the first wish (10 s) have passed too.
        assert_eq!(g.gate(&s, 10_000, 0, 1, true), (1, true));
        assert_eq!(g.gate(&s, 59_000, 0, 1, true), (1, true));
        assert_eq!(g.gate(&s, 60_000, 0, 1, true), (0, false));
        // A break in the wish starts the grace period again.
        let mut g = ZeroGate::new(0);
        assert_eq!(g.gate(&s, 70_000, 0, 1, true), (1, true));
        assert_eq!(g.gate(&s, 80_000, 1, 1, true), (1, false));
        assert_eq!(g.gate(&s, 90_000, 0, 1, true), (1, true));
        assert_eq!(g.gate(&s, 119_000, 0, 1, true), (1, true));
        assert_eq!(g.gate(&s, 120_000, 0, 1, true), (0, false));
    }

    #[test]
    fn waking_restarts_the_active_time_and_retention_extends_the_grace() {
        let s = scaling("2m");
        let mut g = ZeroGate::new(0);
        g.inactive(100_000);
        assert_eq!(g.gate(&s, 150_000, 0, 1, true), (1, true));
        // Reachable: the 2 minute retention, from the first wish at 150 s.
        assert_eq!(g.gate(&s, 200_000, 0, 1, true), (1, true));
        assert_eq!(g.gate(&s, 270_000, 0, 1, true), (0, false));
        // Unreachable: retention is ignored, the 30 s grace is what holds.
        let mut g = ZeroGate::new(0);
        assert_eq!(g.gate(&s, 60_000, 0, 1, false), (1, true));
        assert_eq!(g.gate(&s, 90_000, 0, 1, false), (0, false));
    }
}
