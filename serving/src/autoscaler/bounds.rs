//! The decider's wish within the revision's bounds (§1.5): `min-scale` (only while a route
//! reaches the revision), `max-scale`, `initial-scale` until it has been reached once, and no
//! zero when scale to zero is off. (The timing of the last step to zero — grace period, pod
//! retention — is the revision supervisor's, with its clock.)

use super::settings::Scaling;

/// Instances to run for the decider's `want` (`-1`: no decision yet, which means the least
/// allowed). `reachable`: a route sends traffic here; `initial_reached`: the revision has had
/// `initial-scale` ready instances once.
pub fn bounded(s: &Scaling, want: i64, reachable: bool, initial_reached: bool) -> u32 {
    let mut min = if reachable { s.min_scale } else { 0 };
    if s.initial_scale > 1 && !initial_reached && reachable {
        min = min.max(s.initial_scale);
    }
    let want = u32::try_from(want.max(0)).unwrap_or(u32::MAX);
    let mut n = if want < min {
        min
    } else if s.max_scale != 0 && want > s.max_scale {
        s.max_scale
    } else {
        want
    };
    if n == 0 && !s.enable_scale_to_zero {
        n = 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscaler::settings::Defaults;
    use std::collections::BTreeMap;

    fn scaling(pairs: &[(&str, &str)], defaults: Defaults) -> Scaling {
        let a: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (format!("autoscaling.knative.dev/{k}"), v.to_string()))
            .collect();
        Scaling::resolve(&defaults, &a, 0).unwrap()
    }

    #[test]
    fn min_and_max_bound_the_wish_and_no_decision_means_the_minimum() {
        let s = scaling(
            &[("min-scale", "2"), ("max-scale", "5")],
            Defaults::default(),
        );
        assert_eq!(bounded(&s, 0, true, true), 2);
        assert_eq!(bounded(&s, 9, true, true), 5);
        assert_eq!(bounded(&s, 3, true, true), 3);
        assert_eq!(bounded(&s, -1, true, true), 2);
        // No route: min-scale does not apply.
        assert_eq!(bounded(&s, 0, false, true), 0);
    }

    #[test]
    fn initial_scale_holds_until_reached_once() {
        let s = scaling(&[("initial-scale", "3")], Defaults::default());
        assert_eq!(bounded(&s, 1, true, false), 3);
        assert_eq!(bounded(&s, 1, true, true), 1);
    }

    #[test]
    fn without_scale_to_zero_one_instance_stays() {
        let defaults = Defaults {
            enable_scale_to_zero: false,
            ..Defaults::default()
        };
        assert_eq!(bounded(&scaling(&[], defaults), 0, true, true), 1);
    }
}
