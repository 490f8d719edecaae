//! Knative-style status, shared by every kind: conditions with `lastTransitionTime` kept while
//! a condition's status holds, and the "living condition set" shape where each condition
//! depends on the ones before it and `Ready` sums them up.

use serde_json::{json, Value};

pub fn now() -> String {
    dispatcher::clock::now_utc().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// One Knative condition; `lastTransitionTime` is kept from `old_status` while the condition's
/// status does not change.
pub fn condition(
    old_status: &Value,
    kind: &str,
    status: &str,
    reason: Option<&str>,
    message: Option<&str>,
) -> Value {
    let at = old_status
        .get("conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == kind))
        .filter(|c| c["status"] == status)
        .and_then(|c| c.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| Value::String(now()));
    let mut c = json!({"type": kind, "status": status, "lastTransitionTime": at});
    if let Some(r) = reason {
        c["reason"] = Value::String(r.to_string());
    }
    if let Some(m) = message {
        c["message"] = Value::String(m.to_string());
    }
    c
}

/// The `Ready` condition of a status: `Some(true)` when True.
pub fn ready(status: &Value) -> Option<bool> {
    condition_status(status, "Ready").map(|s| s == "True")
}

/// The condition `kind` of a status, if present.
pub fn find_condition<'a>(status: &'a Value, kind: &str) -> Option<&'a Value> {
    status
        .get("conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == kind))
}

/// The status (`True`, `False`, `Unknown`) of condition `kind`, if present.
pub fn condition_status<'a>(status: &'a Value, kind: &str) -> Option<&'a str> {
    find_condition(status, kind).and_then(|c| c["status"].as_str())
}

/// Why a resource is not Ready: the condition that failed, its reason and its message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotReady {
    pub condition: &'static str,
    pub reason: &'static str,
    pub message: String,
}

impl NotReady {
    pub fn new(condition: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            condition,
            reason,
            message: message.into(),
        }
    }
}

/// The conditions of a living condition set: `order` lists the conditions, `Ready` last. With
/// no failure every one is True; with one, those before it are True, it is False with the
/// reason and message, those after it Unknown, and `Ready` False with the same reason.
pub fn chain(old_status: &Value, order: &[&str], failure: Option<&NotReady>) -> Vec<Value> {
    let failed_at = failure.map(|f| order.iter().position(|c| *c == f.condition).unwrap_or(0));
    order
        .iter()
        .enumerate()
        .map(|(i, c)| match (failure, failed_at) {
            (Some(f), Some(at)) if i == at || *c == "Ready" => {
                condition(old_status, c, "False", Some(f.reason), Some(&f.message))
            }
            (Some(_), Some(at)) if i > at => condition(old_status, c, "Unknown", None, None),
            _ => condition(old_status, c, "True", None, None),
        })
        .collect()
}

/// A status with `observedGeneration` and the conditions of [`chain`].
pub fn status(
    old_status: &Value,
    generation: i64,
    order: &[&str],
    failure: Option<&NotReady>,
) -> Value {
    json!({
        "observedGeneration": generation,
        "conditions": chain(old_status, order, failure),
    })
}

/// The status of an addressable resource that is Ready at `url` (Knative's `address`).
pub fn addressable(r: &crate::resource::Resource, order: &[&str], url: String) -> Value {
    let mut s = status(&r.status, r.metadata.generation, order, None);
    s["address"] = json!({"name": "http", "url": url});
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_makes_later_conditions_unknown_and_ready_false() {
        let order = ["A", "B", "C", "Ready"];
        let f = NotReady::new("B", "Broken", "b is broken");
        let c = chain(&Value::Null, &order, Some(&f));
        let statuses: Vec<&str> = c.iter().map(|c| c["status"].as_str().unwrap()).collect();
        assert_eq!(statuses, ["True", "False", "Unknown", "False"]);
        assert_eq!(c[3]["reason"], "Broken");
        assert_eq!(ready(&json!({"conditions": c})), Some(false));
    }

    #[test]
    fn transition_time_is_kept_while_the_status_holds() {
        let old = json!({"conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"}
        ]});
        let same = condition(&old, "Ready", "True", None, None);
        assert_eq!(same["lastTransitionTime"], "2020-01-01T00:00:00Z");
        let changed = condition(&old, "Ready", "False", Some("X"), None);
        assert_ne!(changed["lastTransitionTime"], "2020-01-01T00:00:00Z");
    }
}
