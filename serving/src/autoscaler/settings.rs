//! The KPA's settings: the global defaults (Knative's `config-autoscaler`, §1.1) overridden
//! per revision by `autoscaling.knative.dev/*` annotations, validated with every bad key named,
//! and the per-instance target resolved as §1.2 does.

use control::resource::parse_go_duration;
use std::collections::BTreeMap;
use std::time::Duration;

/// The prefix of the autoscaling annotations.
pub const PREFIX: &str = "autoscaling.knative.dev/";

/// What the KPA scales on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// In-flight requests per instance (time-weighted).
    Concurrency,
    /// Requests per second per instance.
    Rps,
}

/// How a window averages its buckets (`metric-aggregation-algorithm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggregation {
    Linear,
    WeightedExponential,
}

/// The global defaults (`ferry serve`'s configuration; Knative's `config-autoscaler`).
#[derive(Clone, Debug, PartialEq)]
pub struct Defaults {
    pub container_concurrency_target_default: f64,
    pub requests_per_second_target_default: f64,
    /// Percent of the target actually aimed at (70: 70 of 100 in flight).
    pub container_concurrency_target_percentage: f64,
    pub target_burst_capacity: f64,
    pub stable_window: Duration,
    pub panic_window_percentage: f64,
    pub panic_threshold_percentage: f64,
    pub max_scale_up_rate: f64,
    pub max_scale_down_rate: f64,
    pub enable_scale_to_zero: bool,
    pub scale_to_zero_grace_period: Duration,
    pub scale_to_zero_pod_retention_period: Duration,
    pub scale_down_delay: Duration,
    pub initial_scale: u32,
    pub allow_zero_initial_scale: bool,
    pub min_scale: u32,
    /// 0: unlimited.
    pub max_scale: u32,
    /// 0: no limit on `max-scale`.
    pub max_scale_limit: u32,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            container_concurrency_target_default: 100.0,
            requests_per_second_target_default: 200.0,
            container_concurrency_target_percentage: 70.0,
            target_burst_capacity: 211.0,
            stable_window: Duration::from_secs(60),
            panic_window_percentage: 10.0,
            panic_threshold_percentage: 200.0,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            enable_scale_to_zero: true,
            scale_to_zero_grace_period: Duration::from_secs(30),
            scale_to_zero_pod_retention_period: Duration::ZERO,
            scale_down_delay: Duration::ZERO,
            initial_scale: 1,
            allow_zero_initial_scale: false,
            min_scale: 0,
            max_scale: 0,
            max_scale_limit: 0,
        }
    }
}

impl Defaults {
    /// Knative's `config-autoscaler` keys (`stable-window: 60s`, `enable-scale-to-zero:
    /// "true"`, ...) over the defaults; every bad or unknown key named.
    pub fn from_config(map: &BTreeMap<String, String>) -> Result<Defaults, Vec<SettingError>> {
        let mut d = Defaults::default();
        let mut errors = Vec::new();
        for (key, value) in map {
            let v = value.trim();
            let num = |ok: &dyn Fn(f64) -> bool| {
                v.parse::<f64>().ok().filter(|n| n.is_finite() && ok(*n))
            };
            let whole = || v.parse::<u32>().ok();
            let dur = |ok: &dyn Fn(Duration) -> bool| parse_go_duration(v).ok().filter(|d| ok(*d));
            let flag = || v.parse::<bool>().ok();
            let set = match key.as_str() {
                "container-concurrency-target-default" => num(&|n| n >= 0.01)
                    .map(|n| d.container_concurrency_target_default = n)
                    .ok_or("a number of at least 0.01"),
                "requests-per-second-target-default" => num(&|n| n >= 0.01)
                    .map(|n| d.requests_per_second_target_default = n)
                    .ok_or("a number of at least 0.01"),
                "container-concurrency-target-percentage" => num(&|n| n > 0.0 && n <= 100.0)
                    .map(|n| {
                        d.container_concurrency_target_percentage =
                            if n <= 1.0 { n * 100.0 } else { n }
                    })
                    .ok_or("a percentage in (0, 100]"),
                "target-burst-capacity" => num(&|n| n >= 0.0 || n == -1.0)
                    .map(|n| d.target_burst_capacity = n)
                    .ok_or("-1 or a number of at least 0"),
                "stable-window" => dur(&|d| {
                    whole_seconds(d)
                        && d >= Duration::from_secs(6)
                        && d <= Duration::from_secs(3600)
                })
                .map(|x| d.stable_window = x)
                .ok_or("whole seconds from 6s to 1h"),
                "panic-window-percentage" => num(&|n| (1.0..=100.0).contains(&n))
                    .map(|n| d.panic_window_percentage = n)
                    .ok_or("a percentage from 1 to 100"),
                "panic-threshold-percentage" => num(&|n| (110.0..=1000.0).contains(&n))
                    .map(|n| d.panic_threshold_percentage = n)
                    .ok_or("a percentage from 110 to 1000"),
                "max-scale-up-rate" => num(&|n| n > 1.0)
                    .map(|n| d.max_scale_up_rate = n)
                    .ok_or("a number above 1"),
                "max-scale-down-rate" => num(&|n| n > 1.0)
                    .map(|n| d.max_scale_down_rate = n)
                    .ok_or("a number above 1"),
                "enable-scale-to-zero" => flag()
                    .map(|b| d.enable_scale_to_zero = b)
                    .ok_or("true or false"),
                "scale-to-zero-grace-period" => dur(&|d| !d.is_zero())
                    .map(|x| d.scale_to_zero_grace_period = x)
                    .ok_or("a positive duration like 30s"),
                "scale-to-zero-pod-retention-period" => dur(&|_| true)
                    .map(|x| d.scale_to_zero_pod_retention_period = x)
                    .ok_or("a duration like 1m30s"),
                "scale-down-delay" => dur(&whole_seconds)
                    .map(|x| d.scale_down_delay = x)
                    .ok_or("whole seconds, like 15m"),
                "initial-scale" => whole().map(|n| d.initial_scale = n).ok_or("a whole number"),
                "allow-zero-initial-scale" => flag()
                    .map(|b| d.allow_zero_initial_scale = b)
                    .ok_or("true or false"),
                "min-scale" => whole().map(|n| d.min_scale = n).ok_or("a whole number"),
                "max-scale" => whole().map(|n| d.max_scale = n).ok_or("a whole number"),
                "max-scale-limit" => whole()
                    .map(|n| d.max_scale_limit = n)
                    .ok_or("a whole number"),
                "pod-autoscaler-class" if v == "kpa.autoscaling.knative.dev" => Ok(()),
                "pod-autoscaler-class" => {
                    Err("kpa.autoscaling.knative.dev (Ferry scales with the KPA)")
                }
                "activator-capacity" => num(&|n| n >= 1.0)
                    .map(|_| ())
                    .ok_or("a number of at least 1"),
                _ => {
                    errors.push(SettingError {
                        key: key.clone(),
                        message: "unknown autoscaler setting".into(),
                    });
                    continue;
                }
            };
            if let Err(what) = set {
                errors.push(SettingError {
                    key: key.clone(),
                    message: format!("{value:?} must be {what}"),
                });
            }
        }
        if d.initial_scale == 0 && !d.allow_zero_initial_scale {
            errors.push(SettingError {
                key: "initial-scale".into(),
                message: "0 needs allow-zero-initial-scale: true".into(),
            });
        }
        if d.max_scale > 0 && d.min_scale > d.max_scale {
            errors.push(SettingError {
                key: "min-scale".into(),
                message: format!("{} is above max-scale {}", d.min_scale, d.max_scale),
            });
        }
        if errors.is_empty() {
            Ok(d)
        } else {
            Err(errors)
        }
    }
}

/// One revision's resolved settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Scaling {
    pub metric: Metric,
    /// What each instance is aimed to carry (70 in flight by default), at least 0.01.
    pub target: f64,
    /// Each instance's capacity before utilisation (100 by default; the burst capacity's unit).
    pub total: f64,
    /// `-1`: the activator always in the path; `0`: only at zero.
    pub target_burst_capacity: f64,
    pub stable_window: Duration,
    pub panic_window: Duration,
    /// Panic when the panic window wants this many times the ready instances (2.0).
    pub panic_threshold: f64,
    pub max_scale_up_rate: f64,
    pub max_scale_down_rate: f64,
    pub enable_scale_to_zero: bool,
    pub scale_to_zero_grace_period: Duration,
    pub pod_retention: Duration,
    pub scale_down_delay: Duration,
    pub initial_scale: u32,
    pub min_scale: u32,
    /// 0: unlimited.
    pub max_scale: u32,
    /// The least non-zero scale when waking (1: no minimum).
    pub activation_scale: u32,
    pub aggregation: Aggregation,
}

/// A bad annotation: its full key and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingError {
    pub key: String,
    pub message: String,
}

/// The annotation keys, kebab-case, with their legacy camelCase forms (the kebab one wins).
const KEYS: &[(&str, Option<&str>)] = &[
    ("class", None),
    ("metric", None),
    ("target", None),
    (
        "target-utilization-percentage",
        Some("targetUtilizationPercentage"),
    ),
    ("target-burst-capacity", Some("targetBurstCapacity")),
    ("window", None),
    ("panic-window-percentage", Some("panicWindowPercentage")),
    (
        "panic-threshold-percentage",
        Some("panicThresholdPercentage"),
    ),
    (
        "scale-to-zero-pod-retention-period",
        Some("scaleToZeroPodRetentionPeriod"),
    ),
    ("scale-down-delay", Some("scaleDownDelay")),
    ("initial-scale", Some("initialScale")),
    ("min-scale", Some("minScale")),
    ("max-scale", Some("maxScale")),
    ("activation-scale", Some("activationScale")),
    (
        "metric-aggregation-algorithm",
        Some("metricAggregationAlgorithm"),
    ),
];

/// Reads a revision's annotations: `(full key, value)` of each known one, every unknown
/// `autoscaling.knative.dev/` key an error.
struct Annotations<'a> {
    all: &'a BTreeMap<String, String>,
    errors: Vec<SettingError>,
}

impl<'a> Annotations<'a> {
    fn get(&self, key: &str) -> Option<(String, &'a str)> {
        let legacy = KEYS.iter().find(|(k, _)| *k == key).and_then(|(_, l)| *l);
        let kebab = format!("{PREFIX}{key}");
        if let Some(v) = self.all.get(&kebab) {
            return Some((kebab, v.as_str()));
        }
        let legacy = format!("{PREFIX}{}", legacy?);
        self.all.get(&legacy).map(|v| (legacy, v.as_str()))
    }

    fn err(&mut self, key: &str, message: impl Into<String>) {
        self.errors.push(SettingError {
            key: key.to_string(),
            message: message.into(),
        });
    }

    /// A number in `range`, or the default.
    fn number(&mut self, key: &str, default: f64, ok: impl Fn(f64) -> bool, what: &str) -> f64 {
        let Some((full, v)) = self.get(key) else {
            return default;
        };
        match v.trim().parse::<f64>() {
            Ok(n) if n.is_finite() && ok(n) => n,
            _ => {
                self.err(&full, format!("{v:?} must be {what}"));
                default
            }
        }
    }

    fn whole(&mut self, key: &str, default: u32, min: u32) -> u32 {
        let Some((full, v)) = self.get(key) else {
            return default;
        };
        match v.trim().parse::<u32>() {
            Ok(n) if n >= min => n,
            _ => {
                self.err(
                    &full,
                    format!("{v:?} must be a whole number of at least {min}"),
                );
                default
            }
        }
    }

    fn duration(
        &mut self,
        key: &str,
        default: Duration,
        ok: impl Fn(Duration) -> bool,
        what: &str,
    ) -> Duration {
        let Some((full, v)) = self.get(key) else {
            return default;
        };
        match parse_go_duration(v.trim()) {
            Ok(d) if ok(d) => d,
            _ => {
                self.err(&full, format!("{v:?} must be {what}"));
                default
            }
        }
    }
}

fn whole_seconds(d: Duration) -> bool {
    d.subsec_nanos() == 0
}

impl Scaling {
    /// The settings of a revision with these annotations and `containerConcurrency` (0:
    /// unlimited), every bad annotation reported.
    pub fn resolve(
        defaults: &Defaults,
        annotations: &BTreeMap<String, String>,
        container_concurrency: u32,
    ) -> Result<Scaling, Vec<SettingError>> {
        let mut a = Annotations {
            all: annotations,
            errors: Vec::new(),
        };
        for key in annotations.keys() {
            if let Some(name) = key.strip_prefix(PREFIX) {
                if !KEYS.iter().any(|(k, l)| *k == name || *l == Some(name)) {
                    a.err(key, "unknown autoscaling annotation");
                }
            }
        }
        if let Some((full, class)) = a.get("class") {
            match class {
                "kpa.autoscaling.knative.dev" => {}
                "hpa.autoscaling.knative.dev" => a.err(
                    &full,
                    "the HPA (CPU, memory) is Kubernetes'; Ferry scales with the KPA",
                ),
                other => a.err(
                    &full,
                    format!(
                        "{other:?} is not an autoscaler class (use kpa.autoscaling.knative.dev)"
                    ),
                ),
            }
        }
        let metric = match a.get("metric") {
            None => Metric::Concurrency,
            Some((_, "concurrency")) => Metric::Concurrency,
            Some((_, "rps")) => Metric::Rps,
            Some((full, other)) => {
                a.err(
                    &full,
                    format!("{other:?} must be \"concurrency\" or \"rps\""),
                );
                Metric::Concurrency
            }
        };
        let aggregation = match a.get("metric-aggregation-algorithm") {
            None | Some((_, "linear")) => Aggregation::Linear,
            Some((_, "weighted-exponential")) => Aggregation::WeightedExponential,
            Some((full, other)) => {
                a.err(
                    &full,
                    format!("{other:?} must be \"linear\" or \"weighted-exponential\""),
                );
                Aggregation::Linear
            }
        };
        // §1.2: the per-instance target.
        let (mut total, default_tu) = match metric {
            Metric::Rps => (defaults.requests_per_second_target_default, 0.7),
            Metric::Concurrency => (
                if container_concurrency > 0 {
                    f64::from(container_concurrency)
                } else {
                    defaults.container_concurrency_target_default
                },
                defaults.container_concurrency_target_percentage / 100.0,
            ),
        };
        if a.get("target").is_some() {
            let t = a.number("target", total, |n| n >= 0.01, "a number of at least 0.01");
            total = if metric == Metric::Concurrency && container_concurrency > 0 {
                t.min(f64::from(container_concurrency))
            } else {
                t
            };
        }
        let tu = a.number(
            "target-utilization-percentage",
            default_tu * 100.0,
            |n| n > 0.0 && n <= 100.0,
            "a percentage in (0, 100]",
        );
        let tu = if tu <= 1.0 { tu } else { tu / 100.0 };
        let target = (total * tu).max(0.01);
        let target_burst_capacity = a.number(
            "target-burst-capacity",
            defaults.target_burst_capacity,
            |n| n >= 0.0 || n == -1.0,
            "-1 or a number of at least 0",
        );
        let stable_window = a.duration(
            "window",
            defaults.stable_window,
            |d| whole_seconds(d) && d >= Duration::from_secs(6) && d <= Duration::from_secs(3600),
            "whole seconds from 6s to 1h",
        );
        let panic_pct = a.number(
            "panic-window-percentage",
            defaults.panic_window_percentage,
            |n| (1.0..=100.0).contains(&n),
            "a percentage from 1 to 100",
        );
        let panic_secs = (stable_window.as_secs_f64() * panic_pct / 100.0)
            .round()
            .max(1.0);
        let panic_threshold = a.number(
            "panic-threshold-percentage",
            defaults.panic_threshold_percentage,
            |n| (110.0..=1000.0).contains(&n),
            "a percentage from 110 to 1000",
        ) / 100.0;
        let pod_retention = a.duration(
            "scale-to-zero-pod-retention-period",
            defaults.scale_to_zero_pod_retention_period,
            |_| true,
            "a duration like 1m30s",
        );
        let scale_down_delay = a.duration(
            "scale-down-delay",
            defaults.scale_down_delay,
            whole_seconds,
            "whole seconds, like 15m",
        );
        let initial_min = u32::from(!defaults.allow_zero_initial_scale);
        let initial_scale = a.whole("initial-scale", defaults.initial_scale, initial_min);
        let min_scale = a.whole("min-scale", defaults.min_scale, 0);
        let max_scale = a.whole("max-scale", defaults.max_scale, 0);
        if max_scale > 0 && min_scale > max_scale {
            let key = a
                .get("min-scale")
                .map_or(format!("{PREFIX}min-scale"), |(k, _)| k);
            a.err(&key, format!("{min_scale} is above max-scale {max_scale}"));
        }
        if defaults.max_scale_limit > 0 && (max_scale == 0 || max_scale > defaults.max_scale_limit)
        {
            let key = a
                .get("max-scale")
                .map_or(format!("{PREFIX}max-scale"), |(k, _)| k);
            a.err(
                &key,
                format!("must be set, at most {}", defaults.max_scale_limit),
            );
        }
        let activation_scale = a.whole("activation-scale", 1, 1);
        if !a.errors.is_empty() {
            return Err(a.errors);
        }
        Ok(Scaling {
            metric,
            target,
            total,
            target_burst_capacity,
            stable_window,
            panic_window: Duration::from_secs(panic_secs as u64),
            panic_threshold,
            max_scale_up_rate: defaults.max_scale_up_rate,
            max_scale_down_rate: defaults.max_scale_down_rate,
            enable_scale_to_zero: defaults.enable_scale_to_zero,
            scale_to_zero_grace_period: defaults.scale_to_zero_grace_period,
            pod_retention,
            scale_down_delay,
            initial_scale,
            min_scale,
            max_scale,
            activation_scale,
            aggregation,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
            .collect()
    }

    fn resolve(pairs: &[(&str, &str)], cc: u32) -> Result<Scaling, Vec<SettingError>> {
        Scaling::resolve(&Defaults::default(), &annotations(pairs), cc)
    }

    #[test]
    fn global_settings_are_read_and_bad_ones_named() {
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let d = Defaults::from_config(&map(&[
            ("stable-window", "6s"),
            ("scale-to-zero-grace-period", "1s"),
            ("enable-scale-to-zero", "false"),
        ]))
        .unwrap();
        assert_eq!(d.stable_window, Duration::from_secs(6));
        assert_eq!(d.scale_to_zero_grace_period, Duration::from_secs(1));
        assert!(!d.enable_scale_to_zero);
        let e = Defaults::from_config(&map(&[("stable-window", "2s"), ("nope", "1")])).unwrap_err();
        let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["nope", "stable-window"]);
    }

    #[test]
    fn defaults_aim_at_70_of_100_in_flight() {
        let s = resolve(&[], 0).unwrap();
        assert_eq!(s.metric, Metric::Concurrency);
        assert!((s.target - 70.0).abs() < 1e-9);
        assert_eq!(s.total, 100.0);
        assert_eq!(s.stable_window, Duration::from_secs(60));
        assert_eq!(s.panic_window, Duration::from_secs(6));
        assert_eq!(s.panic_threshold, 2.0);
        assert_eq!(s.target_burst_capacity, 211.0);
        assert_eq!((s.initial_scale, s.min_scale, s.max_scale), (1, 0, 0));
    }

    #[test]
    fn targets_follow_section_1_2() {
        // A hard limit is the total, and caps an annotated target.
        let s = resolve(&[], 10).unwrap();
        assert!((s.target - 7.0).abs() < 1e-9);
        let s = resolve(&[("target", "50")], 10).unwrap();
        assert_eq!(s.total, 10.0);
        let s = resolve(
            &[("target", "10"), ("target-utilization-percentage", "50")],
            0,
        )
        .unwrap();
        assert!((s.target - 5.0).abs() < 1e-9);
        // A utilisation of at most 1 is a fraction.
        let s = resolve(
            &[("target", "10"), ("target-utilization-percentage", "0.5")],
            0,
        )
        .unwrap();
        assert!((s.target - 5.0).abs() < 1e-9);
        let s = resolve(&[("metric", "rps")], 0).unwrap();
        assert!((s.target - 140.0).abs() < 1e-9);
        // Never below 0.01.
        let s = resolve(
            &[("target", "0.01"), ("target-utilization-percentage", "1")],
            0,
        )
        .unwrap();
        assert!((s.target - 0.01).abs() < 1e-12);
    }

    #[test]
    fn windows_and_legacy_keys() {
        let s = resolve(&[("window", "2m"), ("panic-window-percentage", "25")], 0).unwrap();
        assert_eq!(s.stable_window, Duration::from_secs(120));
        assert_eq!(s.panic_window, Duration::from_secs(30));
        let s = resolve(
            &[("minScale", "2"), ("maxScale", "5"), ("min-scale", "3")],
            0,
        )
        .unwrap();
        assert_eq!(
            (s.min_scale, s.max_scale),
            (3, 5),
            "the kebab-case key wins"
        );
        let s = resolve(&[("scale-down-delay", "15m"), ("activation-scale", "3")], 0).unwrap();
        assert_eq!(s.scale_down_delay, Duration::from_secs(900));
        assert_eq!(s.activation_scale, 3);
    }

    #[test]
    fn every_bad_annotation_is_named() {
        let errors = resolve(
            &[
                ("window", "5s"),
                ("panic-threshold-percentage", "100"),
                ("target", "0"),
                ("metric", "cpu"),
                ("min-scale", "4"),
                ("max-scale", "2"),
                ("initial-scale", "0"),
                ("class", "hpa.autoscaling.knative.dev"),
                ("target-burst-capacity", "-2"),
                ("scale-down-delay", "1.5s"),
                ("bogus", "1"),
            ],
            0,
        )
        .unwrap_err();
        let mut keys: Vec<&str> = errors
            .iter()
            .map(|e| e.key.strip_prefix(PREFIX).unwrap())
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "bogus",
                "class",
                "initial-scale",
                "metric",
                "min-scale",
                "panic-threshold-percentage",
                "scale-down-delay",
                "target",
                "target-burst-capacity",
                "window",
            ]
        );
        let zero_ok = Defaults {
            allow_zero_initial_scale: true,
            ..Defaults::default()
        };
        let s = Scaling::resolve(&zero_ok, &annotations(&[("initial-scale", "0")]), 0).unwrap();
        assert_eq!(s.initial_scale, 0);
    }
}
