//! Broker (`eventing.knative.dev/v1`): a topic in the event log, addressable at
//! `{ingress}/{namespace}/{name}`. Annotations `ferry.dev/partitions` and `ferry.dev/retention`
//! set its own layout (system brokers use them; they apply when the log is created).

use crate::kind::{cell, ready_cell, Flags, Kind, KindInfo, Reconciled};
use crate::plane::{ControlError, ControlPlane};
use crate::resource::{
    validate_delivery, validate_duration_annotation, DeliverySpec, FieldErrors, Key, Resource,
};
use crate::status::{addressable, status, NotReady};
use crate::system::BrokerLayout;
use async_trait::async_trait;
use broker::{LogError, Topic};
use serde::Deserialize;
use serde_json::Value;

/// Annotation: the broker's number of partitions (when its log is created).
pub const PARTITIONS_ANNOTATION: &str = "ferry.dev/partitions";
/// Annotation: how long the broker keeps events (ISO-8601, when its log is created).
pub const RETENTION_ANNOTATION: &str = "ferry.dev/retention";

pub struct Broker;

/// `spec` of a Broker.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BrokerSpec {
    /// The default delivery of the broker's triggers that set none.
    #[serde(default)]
    pub delivery: Option<DeliverySpec>,
    /// Knative's reference to a broker-class config; kept, not interpreted.
    #[serde(default)]
    pub config: Option<Value>,
}

static INFO: KindInfo = KindInfo {
    group: "eventing.knative.dev",
    version: "v1",
    kind: "Broker",
    plural: "brokers",
    short_names: &[],
    addressable: true,
    columns: &["READY", "URL"],
};

const CONDITIONS: &[&str] = &["LogReady", "Addressable", "Ready"];

/// The layout a broker's annotations ask for.
pub fn layout(r: &Resource) -> BrokerLayout {
    let a = &r.metadata.annotations;
    BrokerLayout {
        partitions: a.get(PARTITIONS_ANNOTATION).and_then(|p| p.parse().ok()),
        retention: a
            .get(RETENTION_ANNOTATION)
            .and_then(|d| crate::resource::parse_duration(d).ok()),
    }
}

#[async_trait]
impl Kind for Broker {
    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn validate(&self, r: &Resource, errors: &mut FieldErrors) {
        let mut err = errors.sink();
        match r.spec.as_object() {
            None => err("spec", "must be a mapping".into()),
            Some(obj) => {
                for (key, value) in obj {
                    match key.as_str() {
                        "delivery" => validate_delivery("spec.delivery", value, &mut err),
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
        }
        let a = &r.metadata.annotations;
        if let Some(p) = a.get(PARTITIONS_ANNOTATION) {
            if !p.parse::<u32>().is_ok_and(|n| (1..=1024).contains(&n)) {
                err(
                    &format!("metadata.annotations.{PARTITIONS_ANNOTATION}"),
                    format!("{p:?} must be a number from 1 to 1024"),
                );
            }
        }
        validate_duration_annotation(a, RETENTION_ANNOTATION, &mut err);
        drop(err);
        // Whatever the checks above let through decodes into the typed spec.
        if errors.is_empty() {
            errors.decode::<BrokerSpec>("spec", &r.spec);
        }
    }

    async fn reconcile(&self, cp: &ControlPlane, r: &Resource, _pass: Flags) -> Reconciled {
        let topic = Topic::new(&r.metadata.namespace, &r.metadata.name);
        let config = layout(r).topic_config(cp.config().topic_defaults);
        match cp.log().create_topic(&topic, config).await {
            Ok(()) => {
                let url = format!(
                    "{}/{}/{}",
                    cp.config().ingress_url,
                    topic.namespace,
                    topic.name
                );
                Reconciled::done(addressable(r, CONDITIONS, url))
            }
            Err(e) => {
                let f = NotReady::new("LogReady", "LogUnavailable", e.to_string());
                Reconciled::retry(status(
                    &r.status,
                    r.metadata.generation,
                    CONDITIONS,
                    Some(&f),
                ))
            }
        }
    }

    async fn finalize(&self, cp: &ControlPlane, r: &Resource) -> Result<(), ControlError> {
        let topic = Topic::new(&r.metadata.namespace, &r.metadata.name);
        match cp.log().delete_topic(&topic).await {
            Ok(()) | Err(LogError::UnknownTopic(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn release(&self, cp: &ControlPlane, key: &Key) {
        // Deleted on another node: its topic is gone from the cluster.
        cp.log().forget(&Topic::new(&key.namespace, &key.name));
    }

    fn row(&self, r: &Resource) -> Vec<String> {
        vec![ready_cell(r), cell(r, "/status/address/url")]
    }
}
