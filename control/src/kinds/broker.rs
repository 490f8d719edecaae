//! Broker (`eventing.knative.dev/v1`): a topic in the event log, addressable at
//! `{ingress}/{namespace}/{name}`. Annotations `ferry.dev/partitions` and `ferry.dev/retention`
//! set its own layout (system brokers use them; they apply when the log is created).

use crate::kind::{cell, ready_cell, Flags, Kind, KindInfo, Reconciled};
use crate::plane::{ControlError, ControlPlane};
use crate::resource::{
    validate_delivery, validate_duration_annotation, DeliverySpec, FieldErrors, Key, Resource,
};
use crate::status::{status, NotReady};
use crate::system::BrokerLayout;
use async_trait::async_trait;
use broker::{Created, LogError, Topic};
use cloudevent::ext::SYSTEM_NAMESPACE;
use serde::Deserialize;
use serde_json::Value;

/// Annotation: the broker's number of partitions (when its log is created).
pub const PARTITIONS_ANNOTATION: &str = "ferry.dev/partitions";
/// Annotation: how long the broker keeps events (ISO-8601, when its log is created).
pub const RETENTION_ANNOTATION: &str = "ferry.dev/retention";

#[derive(Default)]
pub struct Broker {
    /// Uids of the brokers whose topic this process created (so a retry after a failed status
    /// write does not take the topic for someone else's).
    made: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Broker {
    fn made_here(&self, uid: &str) -> bool {
        self.made.lock().is_ok_and(|m| m.contains(uid))
    }
}

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

/// In a broker's `status.annotations` (as Knative's Kafka broker has it): the Kafka topic Ferry
/// created for it. A topic that exists without it is someone else's, and is left alone.
pub const TOPIC_STATUS_ANNOTATION: &str = "default.topic";

/// The reason a broker is not ready when its Kafka topic exists and is not Ferry's.
pub const TOPIC_NOT_OWNED: &str = "TopicNotOwned";

/// Whether the broker's status records the topic Ferry created for it.
fn claimed(r: &Resource) -> bool {
    r.status
        .pointer(&format!("/annotations/{TOPIC_STATUS_ANNOTATION}"))
        .is_some_and(Value::is_string)
}

/// In a broker's `status.annotations`: `pending` while Ferry has not been able to find out
/// whether the broker's Kafka topic is someone else's (Kafka did not answer).
pub const TOPIC_CHECK_ANNOTATION: &str = "ferry.dev/topic-check";

/// On a broker: `"true"` makes it use the Kafka topic of its name even if Ferry did not create
/// it (and delete it with the broker).
pub const ADOPT_TOPIC_ANNOTATION: &str = "ferry.dev/adopt-topic";

/// Whether the broker's topic is known to be Ferry's (see [`broker::EventLog::admit`]): its
/// status records it, or it is ready (a broker an earlier Ferry made, before topics were
/// recorded).
pub fn admissible(r: &Resource) -> bool {
    claimed(r) || (r.ready() == Some(true) && !undecided(r))
}

/// Whether the broker was refused a topic Ferry did not create, or its check is pending.
fn undecided(r: &Resource) -> bool {
    r.status
        .get("conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| c.iter().any(|c| c["reason"] == TOPIC_NOT_OWNED))
        || r.status
            .pointer(&format!("/annotations/{TOPIC_CHECK_ANNOTATION}"))
            .is_some()
}

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
        if let Some(v) = a.get(ADOPT_TOPIC_ANNOTATION) {
            if v != "true" && v != "false" {
                err(
                    &format!("metadata.annotations.{ADOPT_TOPIC_ANNOTATION}"),
                    format!("{v:?} must be \"true\" or \"false\""),
                );
            }
        }
        drop(err);
        // Whatever the checks above let through decodes into the typed spec.
        if errors.is_empty() {
            errors.decode::<BrokerSpec>("spec", &r.spec);
        }
    }

    async fn reconcile(&self, cp: &ControlPlane, r: &Resource, pass: Flags) -> Reconciled {
        // Only the node that made the change creates the topic (and records that it did):
        // another node creating it first would make the topic look like someone else's.
        if !pass.write {
            // Another node's change: this node only follows whose the topic is.
            let topic = Topic::new(&r.metadata.namespace, &r.metadata.name);
            if admissible(r) {
                cp.log().admit(&topic);
            } else if undecided(r) {
                cp.log().forget(&topic);
            }
            return Reconciled::done(r.status.clone());
        }
        let topic = Topic::new(&r.metadata.namespace, &r.metadata.name);
        let config = layout(r).topic_config(cp.config().topic_defaults);
        let shared = cp.log().storage_name(&topic);
        let claimed = claimed(r) || self.made_here(&r.metadata.uid);
        // Whether a topic found there already is someone else's is decided for a broker just
        // applied here, or one refused (or left undecided) before; any other pass is of a
        // broker whose topic Ferry made (perhaps before topics were recorded, or on another
        // node whose status this node has not seen yet). Ferry's own brokers' topics are made
        // before their resources; `ferry.dev/adopt-topic: "true"` asks for the topic there is.
        let decide = shared.is_some()
            && !claimed
            && r.metadata.namespace != SYSTEM_NAMESPACE
            && r.metadata
                .annotations
                .get(ADOPT_TOPIC_ANNOTATION)
                .map(String::as_str)
                != Some("true")
            && (pass.created || undecided(r));
        let not_ready = |f: NotReady| {
            let mut s = status(&r.status, r.metadata.generation, CONDITIONS, Some(&f));
            if let Some(name) = &shared {
                if claimed {
                    // The record of the topic outlives a failed pass.
                    s["annotations"][TOPIC_STATUS_ANNOTATION] = Value::String(name.clone());
                } else if decide && f.reason != TOPIC_NOT_OWNED {
                    // Not known yet whose the topic is: asked again on the next pass, whatever
                    // its flags (a restart must not take the topic without asking).
                    s["annotations"][TOPIC_CHECK_ANNOTATION] = Value::String("pending".into());
                }
            }
            Reconciled::retry(s)
        };
        if decide {
            // Asked of Kafka, not of what this node remembers (the topic may be gone since).
            cp.log().forget(&topic);
        }
        let created = match cp.log().create_topic(&topic, config).await {
            Ok(c) => c,
            Err(e) => return not_ready(NotReady::new("LogReady", "LogUnavailable", e.to_string())),
        };
        if created == Created::New {
            if let Ok(mut made) = self.made.lock() {
                made.insert(r.metadata.uid.clone());
            }
        } else if decide {
            cp.log().forget(&topic);
            let name = shared.as_deref().unwrap_or_default();
            return not_ready(NotReady::new(
                "LogReady",
                TOPIC_NOT_OWNED,
                format!(
                    "Kafka topic {name} exists and Ferry did not create it for this broker; \
                     Ferry neither takes over nor deletes a topic it did not create: delete the \
                     topic, give the broker another name, or annotate the broker \
                     {ADOPT_TOPIC_ANNOTATION}: \"true\" to use it"
                ),
            ));
        }
        let url = format!(
            "{}/{}/{}",
            cp.config().ingress_url,
            topic.namespace,
            topic.name
        );
        let mut s = super::ingress_address(cp, r, CONDITIONS, INFO.group, url);
        if let Some(name) = shared {
            s["annotations"][TOPIC_STATUS_ANNOTATION] = Value::String(name);
        }
        cp.log().admit(&topic);
        Reconciled::done(s)
    }

    async fn finalize(&self, cp: &ControlPlane, r: &Resource) -> Result<(), ControlError> {
        let topic = Topic::new(&r.metadata.namespace, &r.metadata.name);
        // A topic Ferry refused to take over (or had not decided about) stays as it is.
        if undecided(r) && !claimed(r) && !self.made_here(&r.metadata.uid) {
            cp.log().forget(&topic);
            return Ok(());
        }
        if let Ok(mut made) = self.made.lock() {
            made.remove(&r.metadata.uid);
        }
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
