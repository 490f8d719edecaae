//! Validation of the Kafka kinds: KafkaSink (`eventing.knative.dev/v1alpha1`) and KafkaSource
//! (`sources.knative.dev/v1beta1`).

use crate::resource::{validate_delivery, validate_destination};
use dispatcher::source::KEY_TYPE_LABEL;
use serde_json::Value;
use std::collections::BTreeMap;

/// Client options for the cluster a sink or source names in `spec.bootstrapServers`.
pub(super) fn kafka_options(
    bootstrap: &[String],
    max_batch_records: Option<usize>,
    security: broker::kafka::security::KafkaSecurity,
) -> broker::KafkaOptions {
    broker::KafkaOptions {
        bootstrap: bootstrap.join(","),
        replication_factor: 1,
        max_batch_records,
        fetch_wait: None,
        produce_timeout: None,
        min_insync_replicas: None,
        security,
    }
}

/// A KafkaSink: `topic`, `bootstrapServers`, `contentMode` (binary|structured),
/// `numPartitions`, `replicationFactor`.
pub(super) fn validate_kafka_sink(spec: &Value, err: &mut impl FnMut(&str, String)) {
    let Some(obj) = spec.as_object() else {
        err(
            "spec",
            "must be a mapping with topic and bootstrapServers".into(),
        );
        return;
    };
    for (key, v) in obj {
        let field = format!("spec.{key}");
        match key.as_str() {
            "topic" => {
                if !v.as_str().is_some_and(|t| !t.is_empty() && t.len() <= 249) {
                    err(&field, format!("{v} is not a Kafka topic name"));
                }
                if let Some(problem) = v.as_str().and_then(reserved_topic) {
                    err(&field, problem);
                }
            }
            "bootstrapServers" => {
                if !bootstrap_servers_ok(v) {
                    err(&field, "must be a non-empty list of host:port".into());
                }
            }
            "contentMode" => {
                if !matches!(v.as_str(), Some("binary") | Some("structured")) {
                    err(&field, format!("{v} must be \"binary\" or \"structured\""));
                }
            }
            "numPartitions" | "replicationFactor" => {
                if !v.as_i64().is_some_and(|n| (1..=10_000).contains(&n)) {
                    err(&field, format!("{v} must be a positive integer"));
                }
            }
            "auth" => super::kafka_auth::validate_auth(&field, v, err),
            "delivery" => {}
            _ => err(&field, "unknown field".into()),
        }
    }
    for required in ["topic", "bootstrapServers"] {
        if !obj.contains_key(required) {
            err(&format!("spec.{required}"), "required".into());
        }
    }
}

/// Why a topic is not for a source or sink: Ferry's own (`ferry-…`: resources, tokens and
/// keys, retries and dead letters) and Kafka's internal ones (`__…`).
fn reserved_topic(topic: &str) -> Option<String> {
    if !topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Some(format!(
            "{topic:?} is not a Kafka topic name (letters, digits, '.', '_' and '-')"
        ));
    }
    (topic.starts_with("ferry-") || topic.starts_with("__")).then(|| {
        format!("{topic:?} is reserved: topics starting ferry- are Ferry's own, __ Kafka's")
    })
}

/// Why a consumer group is not for a source: Ferry's own (its triggers', its readers').
fn reserved_group(group: &str) -> Option<String> {
    (group.starts_with("knative-trigger-") || group.starts_with("ferry-")).then(|| {
        format!("{group:?} is reserved: groups starting knative-trigger- or ferry- are Ferry's own")
    })
}

fn bootstrap_servers_ok(v: &Value) -> bool {
    v.as_array().is_some_and(|a| {
        !a.is_empty() && a.iter().all(|s| s.as_str().is_some_and(|s| !s.is_empty()))
    })
}

/// A KafkaSource (KS-01): `bootstrapServers`, `topics`, `consumerGroup`, `consumers`,
/// `initialOffset` (latest|earliest), `ordering` (ordered|unordered), `sink`, `delivery`,
/// `ceOverrides.extensions`, `net` (SASL and TLS, [`super::kafka_auth`]); the key-type label.
pub(super) fn validate_kafka_source(
    spec: &Value,
    labels: &BTreeMap<String, String>,
    err: &mut impl FnMut(&str, String),
) {
    let Some(obj) = spec.as_object() else {
        err(
            "spec",
            "must be a mapping with bootstrapServers, topics and sink".into(),
        );
        return;
    };
    for (key, v) in obj {
        let field = format!("spec.{key}");
        match key.as_str() {
            "bootstrapServers" => {
                if !bootstrap_servers_ok(v) {
                    err(&field, "must be a non-empty list of host:port".into());
                }
            }
            "topics" => {
                let ok = v.as_array().is_some_and(|a| {
                    !a.is_empty()
                        && a.iter()
                            .all(|t| t.as_str().is_some_and(|t| !t.is_empty() && t.len() <= 249))
                });
                if !ok {
                    err(
                        &field,
                        "must be a non-empty list of Kafka topic names".into(),
                    );
                }
                for (i, t) in v.as_array().into_iter().flatten().enumerate() {
                    if let Some(problem) = t.as_str().and_then(reserved_topic) {
                        err(&format!("{field}[{i}]"), problem);
                    }
                }
            }
            "consumerGroup" => {
                if v.as_str().is_none_or(str::is_empty) {
                    err(&field, format!("{v} is not a consumer group name"));
                }
                if let Some(problem) = v.as_str().and_then(reserved_group) {
                    err(&field, problem);
                }
            }
            "consumers" => {
                if !v.as_i64().is_some_and(|n| (1..=10_000).contains(&n)) {
                    err(&field, format!("{v} must be a positive integer"));
                }
            }
            "initialOffset" => {
                if !matches!(v.as_str(), Some("latest") | Some("earliest")) {
                    err(&field, format!("{v} must be \"latest\" or \"earliest\""));
                }
            }
            "ordering" => {
                if !matches!(v.as_str(), Some("ordered") | Some("unordered")) {
                    err(&field, format!("{v} must be \"ordered\" or \"unordered\""));
                }
            }
            "sink" => validate_destination(&field, v, err),
            "delivery" => validate_delivery(&field, v, err),
            "ceOverrides" => {
                let ok = v.as_object().is_some_and(|o| {
                    o.iter().all(|(k, v)| {
                        k == "extensions"
                            && v.as_object()
                                .is_some_and(|e| e.values().all(Value::is_string))
                    })
                });
                if !ok {
                    err(
                        &field,
                        "must be {extensions: {name: value, ...}} with string values".into(),
                    );
                }
            }
            "net" => super::kafka_auth::validate_net(&field, v, err),
            _ => err(&field, "unknown field".into()),
        }
    }
    for required in ["bootstrapServers", "topics", "sink"] {
        if !obj.contains_key(required) {
            err(&format!("spec.{required}"), "required".into());
        }
    }
    if let Some(t) = labels.get(KEY_TYPE_LABEL) {
        if !matches!(t.as_str(), "string" | "int" | "float" | "byte-array") {
            err(
                &format!("metadata.labels.{KEY_TYPE_LABEL}"),
                format!("{t:?} must be string, int, float or byte-array"),
            );
        }
    }
}
