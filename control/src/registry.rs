//! The registry of kinds: which kinds this server knows, found by any of their names.

use crate::kind::Kind;
use crate::resource::{envelope, FieldErrors, Resource};
use serde_json::Value;
use std::sync::Arc;

/// Every kind the control plane serves, in registration order: the order resources are
/// reconciled at start, so kinds others depend on (brokers) register first.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: Vec<Arc<dyn Kind>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a kind.
    pub fn register(&mut self, kind: impl Kind) -> &mut Self {
        self.kinds.push(Arc::new(kind));
        self
    }

    /// The kind `name` names: its kind, plural, singular or short name, any case.
    pub fn find(&self, name: &str) -> Option<&Arc<dyn Kind>> {
        self.kinds.iter().find(|k| k.info().is_named(name))
    }

    /// The kind of this exact name (`Broker`), as resources carry it.
    pub fn kind(&self, kind: &str) -> Option<&Arc<dyn Kind>> {
        self.kinds.iter().find(|k| k.info().kind == kind)
    }

    pub fn all(&self) -> &[Arc<dyn Kind>] {
        &self.kinds
    }

    /// One document as a resource of a registered kind (server-owned fields unset): its
    /// envelope, `apiVersion` and the kind's own checks, every problem into `errors`.
    pub fn validate(&self, errors: &mut FieldErrors, doc: &Value) -> Option<Resource> {
        let (api_version, kind_name, metadata, spec) = envelope(errors, doc)?;
        let Some(kind) = self.kind(&kind_name) else {
            let known: Vec<&str> = self.kinds.iter().map(|k| k.info().kind).collect();
            errors.push(
                "kind",
                format!("unknown kind {kind_name:?} (known: {})", known.join(", ")),
            );
            return None;
        };
        let info = kind.info();
        if !api_version.is_empty() && api_version != info.api_version() {
            errors.push(
                "apiVersion",
                format!(
                    "{api_version:?} is not the API version of {} (use {})",
                    info.kind,
                    info.api_version()
                ),
            );
        }
        let r = Resource {
            api_version: info.api_version(),
            kind: info.kind.to_string(),
            metadata,
            spec,
            status: Value::Null,
        };
        kind.validate(&r, errors);
        Some(r)
    }

    /// The plurals of every kind, for messages.
    pub fn plurals(&self) -> Vec<&'static str> {
        self.kinds.iter().map(|k| k.info().plural).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::FieldError;
    use serde_json::json;

    fn eventing() -> Registry {
        let mut r = Registry::new();
        crate::kinds::register_eventing(&mut r);
        r
    }

    fn check(doc: Value) -> Result<Resource, Vec<FieldError>> {
        let mut errors = FieldErrors::new(2);
        let r = eventing().validate(&mut errors, &doc);
        match r {
            Some(r) if errors.is_empty() => Ok(r),
            _ => Err(errors.list),
        }
    }

    fn fields(errors: &[FieldError]) -> Vec<&str> {
        let mut f: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        f.sort();
        f
    }

    #[test]
    fn a_valid_broker() {
        let r = check(json!({
            "apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
            "metadata": {"name": "orders", "labels": {"team": "a"}},
            "spec": {"delivery": {"retry": 5, "backoffPolicy": "exponential", "backoffDelay": "PT0.2S",
                     "deadLetterSink": {"uri": "http://127.0.0.1:9999/dead"}}}
        }))
        .unwrap();
        assert_eq!(r.metadata.namespace, "default");
        assert_eq!(r.metadata.labels["team"], "a");
        assert_eq!(r.kind, "Broker");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let errs = check(json!({
            "apiVersion": "eventing.knative.dev/v2", "kind": "Broker",
            "metadata": {"name": "Bad_Name", "namespace": "ns", "annotations": {"ferry.dev/partitions": "0"}},
            "spec": {"delivery": {"backoffDelay": "5s", "retry": -1, "backoffPolicy": "random", "extra": 1},
                     "nonsense": true}
        }))
        .unwrap_err();
        assert_eq!(
            fields(&errs),
            [
                "apiVersion",
                "metadata.annotations.ferry.dev/partitions",
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
        let errs = check(json!({"metadata": {"name": "x"}})).unwrap_err();
        assert_eq!(fields(&errs), ["apiVersion", "kind"]);
        let errs = check(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}}))
            .unwrap_err();
        assert!(errs[0].message.contains("unknown kind"));
        assert!(
            errs[0].message.contains("PingSource"),
            "lists the known kinds"
        );
        assert!(check(json!("just a string")).is_err());
    }

    #[test]
    fn triggers() {
        let ok = check(json!({
            "apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
            "metadata": {"name": "t", "annotations": {"kafka.eventing.knative.dev/delivery.order": "ordered",
                                                        "ferry.dev/max-event-age": "PT10S"}},
            "spec": {"broker": "default", "subscriber": {"uri": "http://127.0.0.1:9/x"},
                     "filters": [{"cesql": "type = 'a'"}]}
        }));
        assert!(ok.is_ok(), "{ok:?}");
        let errs = check(json!({
            "apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
            "metadata": {"name": "t", "annotations": {"kafka.eventing.knative.dev/delivery.order": "sorted",
                                                        "ferry.dev/max-event-age": "soon"}},
            "spec": {"filters": [{"cesql": "type = "}], "delivery": {"retry": "x"}}
        }))
        .unwrap_err();
        assert_eq!(
            fields(&errs),
            [
                "metadata.annotations.ferry.dev/max-event-age",
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
        let ok = check(json!({
            "apiVersion": "eventing.knative.dev/v1alpha1", "kind": "KafkaSink",
            "metadata": {"name": "out"},
            "spec": {"topic": "t", "bootstrapServers": ["127.0.0.1:9092"], "contentMode": "structured"}
        }));
        assert!(ok.is_ok(), "{ok:?}");
        let errs = check(json!({
            "apiVersion": "eventing.knative.dev/v1", "kind": "KafkaSink",
            "metadata": {"name": "out"},
            "spec": {"bootstrapServers": [], "contentMode": "avro", "numPartitions": 0}
        }))
        .unwrap_err();
        assert_eq!(
            fields(&errs),
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
    fn ping_sources() {
        let ok = check(json!({
            "apiVersion": "sources.knative.dev/v1", "kind": "PingSource",
            "metadata": {"name": "p"},
            "spec": {"schedule": "*/2 * * * *", "timezone": "Europe/Paris", "contentType": "text/plain",
                     "data": "hi", "ceOverrides": {"extensions": {"team": "ops"}},
                     "sink": {"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "default"}}}
        }));
        assert!(ok.is_ok(), "{ok:?}");
        let errs = check(json!({
            "apiVersion": "sources.knative.dev/v1", "kind": "PingSource",
            "metadata": {"name": "p"},
            "spec": {"schedule": "@sometimes", "timezone": "Nowhere/Land", "data": "x", "dataBase64": "eA==",
                     "ceOverrides": {"extensions": {"Bad-Name": "x"}},
                     "sink": {"uri": "http://127.0.0.1:9/x"}}
        }))
        .unwrap_err();
        assert_eq!(
            fields(&errs),
            [
                "spec.ceOverrides.extensions.Bad-Name",
                "spec.data",
                "spec.schedule",
                "spec.timezone",
            ]
        );
        let errs = check(json!({
            "apiVersion": "sources.knative.dev/v1", "kind": "PingSource",
            "metadata": {"name": "p"}, "spec": {"sink": {"uri": "http://x/"}, "scedule": "@hourly"}
        }))
        .unwrap_err();
        assert_eq!(fields(&errs), ["spec.scedule"]);
        let errs = check(json!({
            "apiVersion": "sources.knative.dev/v1", "kind": "PingSource",
            "metadata": {"name": "p"}, "spec": {"schedule": "@hourly"}
        }))
        .unwrap_err();
        assert_eq!(fields(&errs), ["spec.sink"]);
    }
}
