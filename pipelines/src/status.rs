//! Tekton v1's status shapes, as `ferry get -o json` shows runs: the `Succeeded` condition,
//! `startTime`/`completionTime`, a TaskRun's `steps` (with exit codes), `results`,
//! `retriesStatus`; a PipelineRun's `childReferences`, `skippedTasks`, `results`.

use crate::executor::{Ended, Outcome, StepRecord};
use crate::params::ParamValue;
use crate::spec::TaskSpec;
use control::status::condition;
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub const SUCCEEDED: &str = "Succeeded";

/// The `Succeeded` condition's status: `True`, `False`, `Unknown`; `None` before the first.
pub fn succeeded(status: &Value) -> Option<&str> {
    control::status::condition_status(status, SUCCEEDED)
}

fn succeeded_condition(status: &Value) -> Option<&Value> {
    control::status::find_condition(status, SUCCEEDED)
}

/// The `Succeeded` condition's reason.
pub fn reason(status: &Value) -> &str {
    succeeded_condition(status)
        .and_then(|c| c["reason"].as_str())
        .unwrap_or("")
}

/// Whether the run has ended (its `Succeeded` condition is True or False).
pub fn is_done(status: &Value) -> bool {
    matches!(succeeded(status), Some("True" | "False"))
}

/// How a TaskRun ended, if it has.
pub fn ended(status: &Value) -> Option<Ended> {
    let c = succeeded_condition(status)?;
    let s = c["status"].as_str()?;
    if s == "Unknown" {
        return None;
    }
    Some(Ended {
        succeeded: s == "True",
        reason: c["reason"].as_str().unwrap_or("").into(),
        message: c["message"].as_str().unwrap_or("").into(),
    })
}

/// Sets the `Succeeded` condition of `status`.
pub fn set_condition(status: &mut Value, s: &str, reason: &str, message: &str) {
    let c = condition(status, SUCCEEDED, s, Some(reason), Some(message));
    status["conditions"] = json!([c]);
}

/// A TaskRun's `status.results`.
pub fn results(status: &Value) -> BTreeMap<String, ParamValue> {
    status
        .get("results")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let name = r["name"].as_str()?.to_string();
            let value: ParamValue = serde_json::from_value(r["value"].clone()).ok()?;
            Some((name, value))
        })
        .collect()
}

fn result_list(results: &BTreeMap<String, ParamValue>, typed: bool) -> Value {
    Value::Array(
        results
            .iter()
            .map(|(name, value)| {
                let ty = match value {
                    ParamValue::String(_) => "string",
                    ParamValue::Array(_) => "array",
                    ParamValue::Object(_) => "object",
                };
                let mut r = json!({"name": name, "value": value});
                if typed {
                    r["type"] = json!(ty);
                }
                r
            })
            .collect(),
    )
}

/// A PipelineRun's `status.results` (`{name, value}`).
pub fn pipeline_results(results: &[(String, ParamValue)]) -> Value {
    Value::Array(
        results
            .iter()
            .map(|(name, value)| json!({"name": name, "value": value}))
            .collect(),
    )
}

fn steps(records: &[StepRecord], spec: &TaskSpec) -> Value {
    Value::Array(
        records
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut v = json!({
                    "name": s.name,
                    "container": s.container,
                    "terminated": {
                        "exitCode": s.exit_code,
                        "reason": s.reason,
                        "startedAt": s.started_at,
                        "finishedAt": s.finished_at,
                    },
                });
                if let Some(image) = spec.steps.get(i).and_then(|st| st.image.clone()) {
                    // Kept and shown, not pulled: steps run on this machine.
                    v["image"] = json!(image);
                }
                if let Some(t) = &s.termination_reason {
                    v["terminationReason"] = json!(t);
                }
                v
            })
            .collect(),
    )
}

/// The status of a TaskRun attempt that has ended (`old`: the status before, for the
/// condition's transition time and what is kept: `retriesStatus`, `taskSpec`).
pub fn attempt_ended(old: &Value, outcome: &Outcome, spec: &TaskSpec) -> Value {
    let mut s = old.clone();
    if !s.is_object() {
        s = json!({});
    }
    let e = &outcome.ended;
    set_condition(
        &mut s,
        if e.succeeded { "True" } else { "False" },
        &e.reason,
        &e.message,
    );
    s["completionTime"] = json!(control::status::now());
    s["steps"] = steps(&outcome.steps, spec);
    s["results"] = result_list(&outcome.results, true);
    if outcome.results.is_empty() {
        if let Some(o) = s.as_object_mut() {
            o.remove("results");
        }
    }
    s
}

/// `status` with its current attempt moved into `retriesStatus` and a new attempt begun.
pub fn retry(status: &mut Value) {
    let mut attempt = status.clone();
    if let Some(o) = attempt.as_object_mut() {
        for k in ["retriesStatus", "taskSpec", "podName", "ferry"] {
            o.remove(k);
        }
    }
    let mut list = status["retriesStatus"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    list.push(attempt);
    status["retriesStatus"] = Value::Array(list);
    if let Some(o) = status.as_object_mut() {
        for k in ["startTime", "completionTime", "steps", "results"] {
            o.remove(k);
        }
    }
    // Not over yet: the next attempt comes.
    set_condition(
        status,
        "Unknown",
        "ToBeRetried",
        "An attempt failed; the TaskRun runs again",
    );
}

/// How many attempts have ended in `retriesStatus`.
pub fn retries_used(status: &Value) -> u32 {
    status["retriesStatus"]
        .as_array()
        .map_or(0, |a| u32::try_from(a.len()).unwrap_or(u32::MAX))
}

/// A run's time field parsed (`startTime`, `completionTime`).
pub fn time(status: &Value, field: &str) -> Option<std::time::SystemTime> {
    status
        .get(field)
        .and_then(Value::as_str)
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
}

/// `STARTED` and `DURATION` cells: how long ago it started, how long it ran (or has run).
pub fn started_and_duration(status: &Value) -> (String, String) {
    let now = std::time::SystemTime::now();
    let Some(start) = time(status, "startTime") else {
        return (String::new(), String::new());
    };
    let short = |d: std::time::Duration| {
        let s = d.as_secs();
        match s {
            0..=59 => format!("{s}s"),
            60..=3599 => format!("{}m{}s", s / 60, s % 60),
            _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        }
    };
    let ago = now.duration_since(start).unwrap_or_default();
    let end = time(status, "completionTime").unwrap_or(now);
    let ran = end.duration_since(start).unwrap_or_default();
    (format!("{} ago", short(ago)), short(ran))
}
