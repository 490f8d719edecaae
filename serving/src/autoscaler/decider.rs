//! The KPA decider (§1.4): every [`TICK`] it turns the stable and panic averages into the
//! number of instances a revision should run.
//!
//! - desired = ceil(average / target) over the stable window, at most `max-scale-up-rate` ×
//!   ready up and half the ready instances down per tick (`max-scale-down-rate`);
//! - panic: when the panic window wants at least `panic-threshold` × the ready instances, the
//!   panic window decides and the count only grows, until a whole stable window passes calm;
//! - `activation-scale`: the least non-zero count; `scale-down-delay`: the largest wish of the
//!   last delay, in 2 s buckets;
//! - excess burst capacity: ready × total − `target-burst-capacity` − panic average; negative
//!   means the activator stays in the path.
//!
//! Scale to zero falls out of it: the stable average is 0 only after a whole stable window
//! without traffic.

use super::settings::Scaling;
use std::collections::VecDeque;
use std::time::Duration;

/// How often the decider ticks.
pub const TICK: Duration = Duration::from_secs(2);

/// What one tick decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Tick {
    /// Instances wanted (before min/max/initial scale, see `bounded`).
    pub desired: u32,
    /// Spare capacity beyond the burst allowance; negative: keep the activator in the path
    /// (`-1` also when `target-burst-capacity` is -1).
    pub excess_burst_capacity: i64,
    pub stable: f64,
    pub panic: f64,
    pub panicking: bool,
}

/// One revision's decider: the state a tick carries over.
#[derive(Clone, Debug)]
pub struct Decider {
    scaling: Scaling,
    /// When panic mode began or was last extended.
    panic_since: Option<u64>,
    /// The most instances wanted while panicking: never fewer until panic ends.
    max_panic_pods: u32,
    /// (2 s bucket, largest wish in it) over the scale-down delay.
    delay: VecDeque<(u64, u32)>,
}

impl Decider {
    /// A decider for a revision that has `ready` instances now (at `now_ms`): after a restart
    /// with more than one, it starts in panic mode so that none are dropped at once.
    pub fn new(scaling: Scaling, ready: u32, now_ms: u64) -> Self {
        let (panic_since, max_panic_pods) = if ready > 1 {
            (Some(now_ms), ready)
        } else {
            (None, 0)
        };
        Self {
            scaling,
            panic_since,
            max_panic_pods,
            delay: VecDeque::new(),
        }
    }

    /// One tick at `now_ms` with `ready` instances and the windows' averages; `None` without
    /// stable data (the previous decision stays). `reachable`: some route sends traffic here.
    pub fn tick(
        &mut self,
        now_ms: u64,
        ready: u32,
        stable: Option<f64>,
        panic: Option<f64>,
        reachable: bool,
    ) -> Option<Tick> {
        let stable = stable?;
        let s = self.scaling.clone();
        let panic = panic.unwrap_or(stable);
        let orig_ready = ready;
        let ready = ready.max(1);
        let ready_f = f64::from(ready);
        let max_up = (s.max_scale_up_rate * ready_f).ceil();
        let max_down = if reachable {
            (ready_f / s.max_scale_down_rate).floor()
        } else {
            0.0
        };
        let dspc = (stable / s.target).ceil();
        let dppc = (panic / s.target).ceil();
        let mut ds = dspc.max(max_down).min(max_up);
        let mut dp = dppc.max(max_down).min(max_up);
        if s.activation_scale > 1 {
            let activation = f64::from(s.activation_scale);
            if dspc > 0.0 {
                ds = ds.max(activation);
            }
            if dppc > 0.0 {
                dp = dp.max(activation);
            }
        }
        let over = dppc / ready_f >= s.panic_threshold;
        let stable_ms = s.stable_window.as_millis() as u64;
        if over {
            self.panic_since = Some(now_ms);
        } else if self
            .panic_since
            .is_some_and(|since| since + stable_ms < now_ms)
        {
            self.panic_since = None;
            self.max_panic_pods = 0;
        }
        let mut desired = to_count(ds);
        if self.panic_since.is_some() {
            desired = desired.max(to_count(dp));
            self.max_panic_pods = self.max_panic_pods.max(desired);
            desired = self.max_panic_pods;
        }
        if reachable && !s.scale_down_delay.is_zero() {
            desired = self.delayed(now_ms, desired);
        }
        let tbc = s.target_burst_capacity;
        let excess_burst_capacity = if tbc == 0.0 {
            0
        } else if tbc < 0.0 {
            -1
        } else {
            (f64::from(orig_ready) * s.total - tbc - panic).floor() as i64
        };
        Some(Tick {
            desired,
            excess_burst_capacity,
            stable,
            panic,
            panicking: self.panic_since.is_some(),
        })
    }

    /// The largest wish over the scale-down delay (a sliding max in 2 s buckets).
    fn delayed(&mut self, now_ms: u64, desired: u32) -> u32 {
        let bucket_ms = TICK.as_millis() as u64;
        let bucket = now_ms / bucket_ms;
        match self.delay.back_mut() {
            Some((b, max)) if *b == bucket => *max = (*max).max(desired),
            _ => self.delay.push_back((bucket, desired)),
        }
        let span = (self.scaling.scale_down_delay.as_millis() as u64).div_ceil(bucket_ms);
        while self.delay.front().is_some_and(|(b, _)| *b + span <= bucket) {
            self.delay.pop_front();
        }
        self.delay.iter().map(|(_, m)| *m).max().unwrap_or(desired)
    }
}

/// A non-negative float count as instances (saturating).
fn to_count(x: f64) -> u32 {
    if x.is_nan() || x <= 0.0 {
        0
    } else if x >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        x as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscaler::settings::{Defaults, Scaling};
    use std::collections::BTreeMap;

    const S: u64 = 1000;

    fn scaling(pairs: &[(&str, &str)]) -> Scaling {
        let a: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (format!("autoscaling.knative.dev/{k}"), v.to_string()))
            .collect();
        Scaling::resolve(&Defaults::default(), &a, 0).unwrap()
    }

    fn tick(d: &mut Decider, now: u64, ready: u32, stable: f64, panic: f64) -> Tick {
        d.tick(now, ready, Some(stable), Some(panic), true).unwrap()
    }

    #[test]
    fn the_first_request_wakes_one_instance() {
        let mut d = Decider::new(scaling(&[]), 0, 0);
        let t = tick(&mut d, 2 * S, 0, 1.0, 1.0);
        assert_eq!(t.desired, 1);
        // With no instance the activator stays in the path (ebc < 0).
        assert!(t.excess_burst_capacity < 0);
    }

    #[test]
    fn no_stable_data_keeps_the_previous_decision() {
        let mut d = Decider::new(scaling(&[]), 1, 0);
        assert_eq!(d.tick(2 * S, 1, None, Some(5.0), true), None);
    }

    #[test]
    fn steady_load_wants_load_over_target_instances() {
        let mut d = Decider::new(scaling(&[]), 2, 0);
        // 140 in flight at 70 per instance: 2. (Starting with 2 ready: panic until calm.)
        let t = tick(&mut d, 2 * S, 2, 140.0, 140.0);
        assert_eq!(t.desired, 2);
        let t = tick(&mut d, 2 * S + 70 * S, 2, 210.0, 210.0);
        assert_eq!((t.desired, t.panicking), (3, false));
    }

    #[test]
    fn scale_down_is_at_most_half_per_tick_and_reaches_zero_after_a_quiet_window() {
        let mut d = Decider::new(scaling(&[]), 1, 0);
        let t = tick(&mut d, 2 * S, 10, 0.5, 0.5);
        assert_eq!(t.desired, 5, "floor(10 / 2)");
        let t = tick(&mut d, 4 * S, 5, 0.5, 0.5);
        assert_eq!(t.desired, 2);
        let t = tick(&mut d, 6 * S, 1, 0.0, 0.0);
        assert_eq!(t.desired, 0, "a whole stable window without traffic");
        // An unreachable revision drops at once.
        let t = d.tick(8 * S, 10, Some(0.0), Some(0.0), false).unwrap();
        assert_eq!(t.desired, 0);
    }

    #[test]
    fn a_burst_panics_and_panic_only_scales_up_until_a_calm_stable_window() {
        let mut d = Decider::new(scaling(&[]), 1, 0);
        // The panic window wants ceil(300 / 70) = 5 ≥ 2 × 1 ready: panic.
        let t = tick(&mut d, 2 * S, 1, 70.0, 300.0);
        assert_eq!((t.desired, t.panicking), (5, true));
        // Calmer, but still in panic: never fewer than the most wanted.
        let t = tick(&mut d, 4 * S, 5, 70.0, 70.0);
        assert_eq!((t.desired, t.panicking), (5, true));
        // A whole stable window (60 s) after the last panicky tick: out of panic.
        let t = tick(&mut d, 63 * S, 5, 70.0, 70.0);
        assert_eq!(
            (t.desired, t.panicking),
            (2, false),
            "ceil(70/70)=1, but at most halve: 2"
        );
    }

    #[test]
    fn scale_up_rate_caps_a_tick() {
        let defaults = Defaults {
            max_scale_up_rate: 2.0,
            ..Defaults::default()
        };
        let s = Scaling::resolve(&defaults, &BTreeMap::new(), 0).unwrap();
        let mut d = Decider::new(s, 1, 0);
        let t = tick(&mut d, 2 * S, 1, 7000.0, 7000.0);
        assert_eq!(t.desired, 2);
    }

    #[test]
    fn activation_scale_is_the_least_non_zero_count() {
        let mut d = Decider::new(scaling(&[("activation-scale", "3")]), 0, 0);
        assert_eq!(tick(&mut d, 2 * S, 0, 1.0, 1.0).desired, 3);
        assert_eq!(tick(&mut d, 4 * S, 0, 0.0, 0.0).desired, 0);
    }

    #[test]
    fn scale_down_delay_keeps_the_largest_recent_wish() {
        let mut d = Decider::new(scaling(&[("scale-down-delay", "10s")]), 1, 0);
        // 140 in flight on 2 ready: 2 (no panic: 2 < 2 × 2).
        assert_eq!(tick(&mut d, 2 * S, 2, 140.0, 140.0).desired, 2);
        // The load is gone: the decider wants 1, the delay keeps 2 for 10 s.
        assert_eq!(
            tick(&mut d, 4 * S, 2, 0.5, 0.5).desired,
            2,
            "within the delay"
        );
        assert_eq!(tick(&mut d, 13 * S, 2, 0.5, 0.5).desired, 1, "past it");
    }

    #[test]
    fn excess_burst_capacity_keeps_the_activator_until_three_instances() {
        let mut d = Decider::new(scaling(&[]), 1, 0);
        assert_eq!(
            tick(&mut d, 2 * S, 2, 10.0, 10.0).excess_burst_capacity,
            -21
        );
        assert_eq!(tick(&mut d, 4 * S, 3, 10.0, 10.0).excess_burst_capacity, 79);
        let mut d = Decider::new(scaling(&[("target-burst-capacity", "0")]), 1, 0);
        assert_eq!(tick(&mut d, 2 * S, 1, 10.0, 10.0).excess_burst_capacity, 0);
        let mut d = Decider::new(scaling(&[("target-burst-capacity", "-1")]), 1, 0);
        assert_eq!(tick(&mut d, 2 * S, 9, 10.0, 10.0).excess_burst_capacity, -1);
    }
}
