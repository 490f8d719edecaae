//! System brokers and system triggers: Ferry's own events and controllers, as resources in
//! the namespace `ferry-system` that users can list, watch and subscribe to.
//!
//! - [`ControlPlane::ensure_system_broker`]: a Broker with its own layout (partitions,
//!   retention), labelled `ferry.dev/system: "true"`.
//! - [`SystemTrigger`]: an in-process handler (a controller) subscribed to a system broker, as
//!   a Trigger resource whose subscriber is `handler:NAME`: it has a status, a lag and dead
//!   letters like any trigger, and a delivery policy that can say "no retries", "drop events
//!   older than N", "ordered by partitionkey".

use crate::kinds::broker::{PARTITIONS_ANNOTATION, RETENTION_ANNOTATION};
use crate::kinds::trigger::MAX_EVENT_AGE;
use crate::plane::{ControlError, ControlPlane};
use crate::queue::Flags;
use crate::resource::{FieldErrors, Key, SYSTEM_LABEL};
use broker::{Retention, Topic, TopicConfig};
use cloudevent::ext::SYSTEM_NAMESPACE;
use dispatcher::subscriber::{Handler, Subscriber};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How a system broker's log is laid out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BrokerLayout {
    /// Partitions; `None`: the server's default.
    pub partitions: Option<u32>,
    /// How long events are kept; `None`: the server's default.
    pub retention: Option<Duration>,
}

impl BrokerLayout {
    pub fn partitions(mut self, n: u32) -> Self {
        self.partitions = Some(n);
        self
    }

    pub fn retention(mut self, d: Duration) -> Self {
        self.retention = Some(d);
        self
    }

    /// The topic configuration, from the server's defaults.
    pub fn topic_config(&self, defaults: TopicConfig) -> TopicConfig {
        TopicConfig {
            partitions: self.partitions.unwrap_or(defaults.partitions),
            retention: Retention {
                max_age: self.retention.or(defaults.retention.max_age),
                ..defaults.retention
            },
        }
    }
}

/// In-process subscribers by name.
#[derive(Default)]
pub struct Handlers(RwLock<HashMap<String, Arc<dyn Subscriber>>>);

impl Handlers {
    fn insert(&self, name: &str, handler: Arc<dyn Subscriber>) {
        if let Ok(mut m) = self.0.write() {
            m.insert(name.to_string(), handler);
        }
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<dyn Subscriber>> {
        self.0.read().ok()?.get(name).cloned()
    }
}

/// An in-process handler subscribed to a system broker, built like this:
/// `SystemTrigger::new("autoscaler", "serving", handler).filter(json!([{"exact": {"type":
/// "dev.ferry.serving.stat.v1"}}])).no_retries().drop_older_than(Duration::from_secs(10))`.
pub struct SystemTrigger {
    name: String,
    broker: String,
    handler: Handler,
    filters: Option<Value>,
    delivery: Value,
    ordered: bool,
    max_age: Option<Duration>,
    node: Option<String>,
}

impl SystemTrigger {
    /// A trigger named `name` on the system broker `broker`, delivering to `handler`, with
    /// Knative's default delivery (10 retries, exponential from 0.2 s).
    pub fn new(name: &str, broker: &str, handler: Handler) -> Self {
        Self {
            name: name.to_string(),
            broker: broker.to_string(),
            handler,
            filters: None,
            delivery: json!({}),
            ordered: false,
            max_age: None,
            node: None,
        }
    }

    /// Only on the node `node` (its handler is that node's alone; in Kafka mode it is a
    /// consumer group of one node, which reads every partition). Its name should say the node.
    pub fn on_node(mut self, node: &str) -> Self {
        self.node = Some(node.to_string());
        self
    }

    /// The Subscriptions API filters (`[{"exact": {"type": "..."}}]`), as a Trigger's
    /// `spec.filters`.
    pub fn filter(mut self, filters: Value) -> Self {
        self.filters = Some(filters);
        self
    }

    /// A Knative `DeliverySpec` (retries, backoff, timeout).
    pub fn delivery(mut self, delivery: Value) -> Self {
        self.delivery = delivery;
        self
    }

    /// One attempt per event, no retry.
    pub fn no_retries(mut self) -> Self {
        self.delivery["retry"] = json!(0);
        self
    }

    /// Events older than `age` (since they reached the broker) are dropped, not delivered:
    /// for samples that are worthless late.
    pub fn drop_older_than(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// One event at a time per partition, so events with the same `partitionkey` are
    /// handled in order.
    pub fn ordered(mut self) -> Self {
        self.ordered = true;
        self
    }

    fn document(&self) -> Value {
        let mut annotations = serde_json::Map::new();
        if self.ordered {
            annotations.insert(
                crate::kinds::trigger::DELIVERY_ORDER.into(),
                json!("ordered"),
            );
        }
        if let Some(age) = self.max_age {
            annotations.insert(
                MAX_EVENT_AGE.into(),
                json!(format!("PT{}S", age.as_secs_f64())),
            );
        }
        if let Some(node) = &self.node {
            annotations.insert(crate::resource::NODE_ANNOTATION.into(), json!(node));
        }
        let mut spec = json!({
            "broker": self.broker,
            "subscriber": {"uri": format!("{}{}", crate::resolve::HANDLER_SCHEME, self.name)},
            "delivery": self.delivery,
        });
        if let Some(f) = &self.filters {
            spec["filters"] = f.clone();
        }
        json!({
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Trigger",
            "metadata": {
                "name": self.name,
                "namespace": SYSTEM_NAMESPACE,
                "labels": {SYSTEM_LABEL: "true"},
                "annotations": annotations,
            },
            "spec": spec,
        })
    }
}

/// Whether a resource name is kept for what Ferry makes itself: a registered system trigger's,
/// or one a kind reserves (a PingSource's trigger).
pub(crate) fn reserved_name(cp: &ControlPlane, kind: &str, namespace: &str, name: &str) -> bool {
    (kind == "Trigger" && namespace == SYSTEM_NAMESPACE && cp.handlers.get(name).is_some())
        || cp
            .registry()
            .all()
            .iter()
            .any(|k| k.reserves(kind, namespace, name))
}

impl ControlPlane {
    /// Makes sure the system broker `ferry-system/{name}` exists with `layout`, and its log.
    pub async fn ensure_system_broker(
        &self,
        name: &str,
        layout: BrokerLayout,
    ) -> Result<(), ControlError> {
        // The log first: the broker's own creation is published into `resources`.
        let topic = Topic::new(SYSTEM_NAMESPACE, name);
        self.log()
            .create_topic(&topic, layout.topic_config(self.config().topic_defaults))
            .await?;
        let mut annotations = serde_json::Map::new();
        if let Some(p) = layout.partitions {
            annotations.insert(PARTITIONS_ANNOTATION.into(), json!(p.to_string()));
        }
        if let Some(r) = layout.retention {
            annotations.insert(
                RETENTION_ANNOTATION.into(),
                json!(format!("PT{}S", r.as_secs_f64())),
            );
        }
        let doc = json!({
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Broker",
            "metadata": {
                "name": name,
                "namespace": SYSTEM_NAMESPACE,
                "labels": {SYSTEM_LABEL: "true"},
                "annotations": annotations,
            },
            "spec": {},
        });
        self.apply_system(&doc).await
    }

    /// Deletes a system trigger no longer used (a controller renamed), if there is one.
    pub async fn remove_system_trigger(&self, name: &str) -> Result<(), ControlError> {
        let Some(r) = self.find("Trigger", SYSTEM_NAMESPACE, name)? else {
            return Ok(());
        };
        if !r.is_system() {
            return Ok(());
        }
        let kind = self.kind("Trigger")?.clone();
        self.delete_resource(&kind, r.key()).await
    }

    /// Registers the handler of a system trigger on this node and applies its Trigger.
    pub async fn system_trigger(&self, trigger: SystemTrigger) -> Result<(), ControlError> {
        self.handlers
            .insert(&trigger.name, Arc::new(trigger.handler.clone()));
        self.apply_system(&trigger.document()).await
    }

    /// Applies a resource of Ferry's own (validated like any other) and waits for its first
    /// reconcile.
    pub(crate) async fn apply_system(&self, doc: &Value) -> Result<(), ControlError> {
        let mut errors = FieldErrors::new(1);
        let r = self.validate(&mut errors, doc)?;
        let Some(r) = r.filter(|_| errors.is_empty()) else {
            return Err(ControlError::Invalid(errors.list));
        };
        let applied = self.store_one(r).await?;
        if applied.action == "unchanged" {
            // What it needs may be new on this node (a handler registered just now).
            let key = Key::new(&applied.kind, &applied.namespace, &applied.name);
            self.enqueue(key, Flags::WRITE);
        }
        self.wait_reconciled(&[applied], Duration::from_secs(30))
            .await;
        Ok(())
    }
}
