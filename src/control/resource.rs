//! Knative-shaped resources as the control plane stores them, and their validation.
//!
//! A resource is kept as the user wrote it (`apiVersion`, `kind`, `metadata`, `spec`) plus the
//! fields the server owns (`metadata.uid`, `generation`, `creationTimestamp`, and `status`).
//! Validation is pure and reports every problem of a document at once, each with its field path.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

mod kafka;
use kafka::{validate_kafka_sink, validate_kafka_source};

pub const EVENTING_V1: &str = "eventing.knative.dev/v1";
pub const EVENTING_V1ALPHA1: &str = "eventing.knative.dev/v1alpha1";
pub const SOURCES_V1BETA1: &str = "sources.knative.dev/v1beta1";

/// The kinds the control plane knows, with their API version and plural (the URL segment).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    Broker,
    Trigger,
    KafkaSink,
    KafkaSource,
}

impl Kind {
    /// In reconcile order: what has an address (brokers, sinks) before what delivers to it.
    pub const ALL: &'static [Kind] = &[
        Kind::Broker,
        Kind::KafkaSink,
        Kind::Trigger,
        Kind::KafkaSource,
    ];

    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Broker | Kind::Trigger => EVENTING_V1,
            Kind::KafkaSink => EVENTING_V1ALPHA1,
            Kind::KafkaSource => SOURCES_V1BETA1,
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Kind::Broker => "brokers",
            Kind::Trigger => "triggers",
            Kind::KafkaSink => "kafkasinks",
            Kind::KafkaSource => "kafkasources",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Broker => "Broker",
            Kind::Trigger => "Trigger",
            Kind::KafkaSink => "KafkaSink",
            Kind::KafkaSource => "KafkaSource",
        }
    }

    /// Whether it has an address others deliver to (so it has dependents to reconcile).
    pub fn addressable(self) -> bool {
        matches!(self, Kind::Broker | Kind::KafkaSink)
    }

    /// A kind from its name, plural or singular, any case (`broker`, `brokers`, `Broker`).
    pub fn parse(s: &str) -> Option<Kind> {
        let l = s.to_ascii_lowercase();
        Kind::ALL
            .iter()
            .copied()
            .find(|k| l == k.plural() || l == k.name().to_ascii_lowercase())
    }
}

/// `metadata` of a resource.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
    pub namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default)]
    pub generation: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub creation_timestamp: String,
}

/// One resource: what the user applied plus what the server keeps about it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    pub api_version: String,
    pub kind: Kind,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: Value,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub status: Value,
}

/// One problem with one field of one document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// 1-based position of the document in what was applied.
    pub document: usize,
    /// Dotted path of the field (`spec.delivery.backoffDelay`); empty for the whole document.
    pub field: String,
    pub message: String,
}

/// Validates one document and turns it into a resource (without server-owned fields).
pub fn validate(document: usize, doc: &Value) -> Result<Resource, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut err = |field: &str, message: String| {
        errors.push(FieldError {
            document,
            field: field.to_string(),
            message,
        })
    };
    let Some(obj) = doc.as_object() else {
        err(
            "",
            "a resource must be a mapping with apiVersion, kind, metadata and spec".into(),
        );
        return Err(errors);
    };
    for key in obj.keys() {
        if !["apiVersion", "kind", "metadata", "spec", "status"].contains(&key.as_str()) {
            err(key, "unknown field".into());
        }
    }
    let kind = match obj.get("kind").and_then(Value::as_str) {
        None => {
            err("kind", "required".into());
            None
        }
        Some(k) => match Kind::ALL.iter().find(|kind| kind.name() == k) {
            Some(kind) => Some(*kind),
            None => {
                let known: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
                err(
                    "kind",
                    format!("unknown kind {k:?} (known: {})", known.join(", ")),
                );
                None
            }
        },
    };
    match (obj.get("apiVersion").and_then(Value::as_str), kind) {
        (None, _) => err("apiVersion", "required".into()),
        (Some(v), Some(k)) if v != k.api_version() => err(
            "apiVersion",
            format!(
                "{v:?} is not the API version of {} (use {})",
                k.name(),
                k.api_version()
            ),
        ),
        _ => {}
    }
    let metadata = validate_metadata(obj.get("metadata"), &mut err);
    let spec = obj
        .get("spec")
        .cloned()
        .unwrap_or(Value::Object(Map::new()));
    if let Some(kind) = kind {
        match kind {
            Kind::Broker => validate_broker_spec(&spec, &mut err),
            Kind::Trigger => validate_trigger(&spec, obj.get("metadata"), &mut err),
            Kind::KafkaSink => validate_kafka_sink(&spec, &mut err),
            Kind::KafkaSource => validate_kafka_source(&spec, obj.get("metadata"), &mut err),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    match (kind, metadata) {
        (Some(kind), Some(metadata)) => Ok(Resource {
            api_version: kind.api_version().to_string(),
            kind,
            metadata,
            spec,
            status: Value::Null,
        }),
        _ => Err(vec![FieldError {
            document,
            field: String::new(),
            message: "invalid resource".into(),
        }]),
    }
}

fn validate_metadata(meta: Option<&Value>, err: &mut impl FnMut(&str, String)) -> Option<Metadata> {
    let Some(meta) = meta.and_then(Value::as_object) else {
        err("metadata", "required: a mapping with at least name".into());
        return None;
    };
    for key in meta.keys() {
        if ![
            "name",
            "namespace",
            "labels",
            "annotations",
            "uid",
            "generation",
            "creationTimestamp",
        ]
        .contains(&key.as_str())
        {
            err(&format!("metadata.{key}"), "unknown field".into());
        }
    }
    let name = match meta.get("name").and_then(Value::as_str) {
        Some(n) => {
            if let Some(problem) = dns_label_problem(n) {
                err("metadata.name", format!("{n:?} {problem}"));
            }
            n.to_string()
        }
        None => {
            err("metadata.name", "required".into());
            String::new()
        }
    };
    let namespace = match meta.get("namespace") {
        None | Some(Value::Null) => "default".to_string(),
        Some(Value::String(ns)) => {
            if let Some(problem) = dns_label_problem(ns) {
                err("metadata.namespace", format!("{ns:?} {problem}"));
            }
            ns.clone()
        }
        Some(_) => {
            err("metadata.namespace", "must be a string".into());
            String::new()
        }
    };
    let mut string_map = |field: &str| -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        match meta.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    match v.as_str() {
                        Some(s) => {
                            out.insert(k.clone(), s.to_string());
                        }
                        None => err(&format!("metadata.{field}.{k}"), "must be a string".into()),
                    }
                }
            }
            Some(_) => err(
                &format!("metadata.{field}"),
                "must be a mapping of strings".into(),
            ),
        }
        out
    };
    let labels = string_map("labels");
    let annotations = string_map("annotations");
    Some(Metadata {
        name,
        namespace,
        labels,
        annotations,
        ..Metadata::default()
    })
}

/// Why `s` is not a DNS-1123 label (what Kubernetes names are), if it is not.
fn dns_label_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() || s.len() > 63 {
        return Some("must be 1 to 63 characters");
    }
    let ok_chars = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ok_ends = !s.starts_with('-') && !s.ends_with('-');
    (!ok_chars || !ok_ends).then_some(
        "must consist of lower-case letters, digits and '-', and start and end with a letter or digit",
    )
}

fn validate_broker_spec(spec: &Value, err: &mut impl FnMut(&str, String)) {
    let Some(obj) = spec.as_object() else {
        err("spec", "must be a mapping".into());
        return;
    };
    for (key, value) in obj {
        match key.as_str() {
            "delivery" => validate_delivery("spec.delivery", value, err),
            // Knative's reference to a broker-class config; kept, not interpreted.
            "config" => {
                if !value.is_object() {
                    err("spec.config", "must be a mapping (a reference)".into());
                }
            }
            other => err(&format!("spec.{other}"), "unknown field".into()),
        }
    }
}

/// Annotation choosing ordered or unordered delivery (K-07).
pub const DELIVERY_ORDER: &str = "kafka.eventing.knative.dev/delivery.order";
/// Annotation setting a trigger's in-flight limit (unordered delivery).
pub const MAX_IN_FLIGHT: &str = "ferry.dev/max-in-flight";

fn validate_trigger(spec: &Value, metadata: Option<&Value>, err: &mut impl FnMut(&str, String)) {
    let Some(obj) = spec.as_object() else {
        err(
            "spec",
            "must be a mapping with broker and subscriber".into(),
        );
        return;
    };
    for (key, value) in obj {
        match key.as_str() {
            "broker" => match value.as_str() {
                Some(b) if dns_label_problem(b).is_none() => {}
                _ => err("spec.broker", format!("{value} is not a broker name")),
            },
            "subscriber" => validate_destination("spec.subscriber", value, err),
            "delivery" => validate_delivery("spec.delivery", value, err),
            "filter" | "filters" => {}
            other => err(&format!("spec.{other}"), "unknown field".into()),
        }
    }
    if !obj.contains_key("broker") {
        err("spec.broker", "required".into());
    }
    if !obj.contains_key("subscriber") {
        err("spec.subscriber", "required".into());
    }
    if let Err(errors) = dispatcher::filter::Filter::compile(obj.get("filter"), obj.get("filters"))
    {
        for e in errors {
            err(&e.field, e.message);
        }
    }
    let annotations = metadata.and_then(|m| m.get("annotations"));
    if let Some(order) = annotations.and_then(|a| a.get(DELIVERY_ORDER)) {
        if !matches!(order.as_str(), Some("ordered") | Some("unordered")) {
            err(
                &format!("metadata.annotations.{DELIVERY_ORDER}"),
                format!("{order} must be \"ordered\" or \"unordered\""),
            );
        }
    }
    if let Some(n) = annotations.and_then(|a| a.get(MAX_IN_FLIGHT)) {
        if !n
            .as_str()
            .and_then(|s| s.parse::<u32>().ok())
            .is_some_and(|n| (1..=10_000).contains(&n))
        {
            err(
                &format!("metadata.annotations.{MAX_IN_FLIGHT}"),
                format!("{n} must be a number from 1 to 10000 (as a string)"),
            );
        }
    }
}

/// Checks a Knative `DeliverySpec` at `path`.
pub fn validate_delivery(path: &str, value: &Value, err: &mut impl FnMut(&str, String)) {
    let Some(obj) = value.as_object() else {
        err(path, "must be a mapping".into());
        return;
    };
    for (key, v) in obj {
        let field = format!("{path}.{key}");
        match key.as_str() {
            "retry" => match v.as_i64() {
                Some(n) if n >= 0 => {}
                _ => err(&field, format!("{v} must be a non-negative integer")),
            },
            "backoffPolicy" => match v.as_str() {
                Some("linear") | Some("exponential") => {}
                _ => err(&field, format!("{v} must be \"linear\" or \"exponential\"")),
            },
            "backoffDelay" | "timeout" | "retryAfterMax" => match v.as_str().map(parse_duration) {
                Some(Ok(d)) if key == "timeout" && d.is_zero() => {
                    err(&field, "must be greater than zero".into())
                }
                Some(Ok(_)) => {}
                _ => err(
                    &field,
                    format!("{v} is not an ISO-8601 duration (like PT0.2S or PT1M)"),
                ),
            },
            "deadLetterSink" => validate_destination(&field, v, err),
            "format" => match v.as_str() {
                Some("json") | Some("binary") => {}
                _ => err(&field, format!("{v} must be \"json\" or \"binary\"")),
            },
            _ => err(&field, "unknown field".into()),
        }
    }
}

/// Checks a Knative `Destination` (`uri`, `ref`, or both).
pub fn validate_destination(path: &str, value: &Value, err: &mut impl FnMut(&str, String)) {
    let Some(obj) = value.as_object() else {
        err(path, "must be a mapping with uri or ref".into());
        return;
    };
    if !obj.contains_key("uri") && !obj.contains_key("ref") {
        err(path, "needs uri or ref".into());
    }
    for (key, v) in obj {
        let field = format!("{path}.{key}");
        match key.as_str() {
            "uri" => match v.as_str() {
                Some(u) if obj.contains_key("ref") || url::Url::parse(u).is_ok() => {}
                _ => err(&field, format!("{v} is not an absolute URL")),
            },
            "ref" => match v.as_object() {
                Some(r) => {
                    for required in ["kind", "name"] {
                        if !r.get(required).is_some_and(Value::is_string) {
                            err(&format!("{field}.{required}"), "required".into());
                        }
                    }
                }
                None => err(
                    &field,
                    "must be a mapping with kind, name, namespace, apiVersion".into(),
                ),
            },
            "CACerts" | "audience" => {}
            _ => err(&field, "unknown field".into()),
        }
    }
}

pub use dispatcher::policy::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_valid_broker() {
        let r = validate(1, &json!({
            "apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
            "metadata": {"name": "orders", "labels": {"team": "a"}},
            "spec": {"delivery": {"retry": 5, "backoffPolicy": "exponential", "backoffDelay": "PT0.2S",
                     "deadLetterSink": {"uri": "http://127.0.0.1:9999/dead"}}}
        })).unwrap();
        assert_eq!(r.metadata.namespace, "default");
        assert_eq!(r.metadata.labels["team"], "a");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let errs = validate(2, &json!({
            "apiVersion": "eventing.knative.dev/v2", "kind": "Broker",
            "metadata": {"name": "Bad_Name", "namespace": "ns"},
            "spec": {"delivery": {"backoffDelay": "5s", "retry": -1, "backoffPolicy": "random", "extra": 1},
                     "nonsense": true}
        })).unwrap_err();
        let mut fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        fields.sort();
        assert_eq!(
            fields,
            [
                "apiVersion",
                "metadata.name",
                "spec.delivery.backoffDelay",
                "spec.delivery.backoffPolicy",
                "spec.delivery.extra",
                "spec.delivery.retry",
                "spec.nonsense",
            ]
        );
        assert!(errs.iter().all(|e| e.document == 2));
        let delay = errs
            .iter()
            .find(|e| e.field == "spec.delivery.backoffDelay")
            .unwrap();
        assert_eq!(
            delay.message,
            "\"5s\" is not an ISO-8601 duration (like PT0.2S or PT1M)"
        );
    }

    #[test]
    fn missing_and_unknown_kind() {
        let errs = validate(1, &json!({"metadata": {"name": "x"}})).unwrap_err();
        let mut fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        fields.sort();
        assert_eq!(fields, ["apiVersion", "kind"]);
        let errs = validate(
            1,
            &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}}),
        )
        .unwrap_err();
        assert!(errs[0].message.contains("unknown kind"));
        assert!(validate(1, &json!("just a string")).is_err());
    }

    #[test]
    fn triggers() {
        let ok = validate(
            1,
            &json!({
                "apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
                "metadata": {"name": "t", "annotations": {"kafka.eventing.knative.dev/delivery.order": "ordered"}},
                "spec": {"broker": "default", "subscriber": {"uri": "http://127.0.0.1:9/x"},
                         "filters": [{"cesql": "type = 'a'"}]}
            }),
        );
        assert!(ok.is_ok(), "{ok:?}");
        let errs = validate(1, &json!({
            "apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
            "metadata": {"name": "t", "annotations": {"kafka.eventing.knative.dev/delivery.order": "sorted"}},
            "spec": {"filters": [{"cesql": "type = "}], "delivery": {"retry": "x"}}
        })).unwrap_err();
        let mut fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        fields.sort();
        assert_eq!(
            fields,
            [
                "metadata.annotations.kafka.eventing.knative.dev/delivery.order",
                "spec.broker",
                "spec.delivery.retry",
                "spec.filters[0].cesql",
                "spec.subscriber",
            ]
        );
    }

    #[test]
    fn kafka_sinks() {
        let ok = validate(
            1,
            &json!({
                "apiVersion": "eventing.knative.dev/v1alpha1", "kind": "KafkaSink",
                "metadata": {"name": "out"},
                "spec": {"topic": "t", "bootstrapServers": ["127.0.0.1:9092"], "contentMode": "structured"}
            }),
        );
        assert!(ok.is_ok(), "{ok:?}");
        let errs = validate(
            1,
            &json!({
                "apiVersion": "eventing.knative.dev/v1", "kind": "KafkaSink",
                "metadata": {"name": "out"},
                "spec": {"bootstrapServers": [], "contentMode": "avro", "numPartitions": 0}
            }),
        )
        .unwrap_err();
        let mut fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        fields.sort();
        assert_eq!(
            fields,
            [
                "apiVersion",
                "spec.bootstrapServers",
                "spec.contentMode",
                "spec.numPartitions",
                "spec.topic"
            ]
        );
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("PT0.2S").unwrap(),
            std::time::Duration::from_millis(200)
        );
        assert_eq!(
            parse_duration("PT1M").unwrap(),
            std::time::Duration::from_secs(60)
        );
        assert!(parse_duration("5s").is_err());
    }
}
