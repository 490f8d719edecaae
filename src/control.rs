//! The control plane: validates and stores resources, reconciles what runs (a broker's log),
//! writes back Knative-style `status`, and publishes every change as a CloudEvent into the
//! system broker `ferry-system/resources`.
//!
//! - `resource.rs`: the resource model and its pure validation.
//! - `store.rs`: persistence (RocksDB, every write synced).
//! - `trigger.rs`: reconciling a Trigger (broker, subscriber, dead-letter sink, runner).
//! - `api.rs`: the HTTP API the CLI talks to, plus /metrics, /healthz, /readyz.

pub mod api;
pub mod resource;
pub(crate) mod source;
pub mod store;
mod trigger;

use broker::{AttrValue, Event, EventLog, LogError, Topic, TopicConfig};
use dispatcher::Dispatcher;
use resource::{FieldError, Kind, Resource};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use store::{ResourceStore, StoreError};

/// Namespace of Ferry's own brokers.
pub const SYSTEM_NAMESPACE: &str = ingress::service::RESERVED_NAMESPACE;
/// The system broker that receives every resource change.
pub const RESOURCES_BROKER: &str = "resources";

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("invalid resources")]
    Invalid(Vec<FieldError>),
    #[error("{kind} {namespace}/{name} not found")]
    NotFound {
        kind: &'static str,
        namespace: String,
        name: String,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("unknown resource type {0:?}")]
    UnknownType(String),
    #[error("namespace {SYSTEM_NAMESPACE} is reserved for Ferry's system brokers")]
    Reserved,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("event log: {0}")]
    Log(#[from] LogError),
    #[error("dispatcher: {0}")]
    Dispatch(#[from] dispatcher::DispatchError),
}

/// What `apply` did with one resource.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Applied {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// `created`, `configured` or `unchanged` (as kubectl says it).
    pub action: String,
}

pub struct ControlPlane {
    store: Box<dyn ResourceStore>,
    log: Arc<dyn EventLog>,
    dispatcher: Arc<Dispatcher>,
    /// The KafkaSinks the ingress writes to.
    sinks: ingress::Sinks,
    /// `batch.num.messages` for sinks' producers (see `--kafka-max-batch-records`).
    sink_batch_records: Option<usize>,
    /// Layout of new brokers' logs.
    topic_defaults: TopicConfig,
    /// Base URL of the ingress, for `status.address.url`.
    ingress_url: String,
    /// Applies and deletes run one at a time, so read-modify-write of a resource is safe.
    writes: tokio::sync::Mutex<()>,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl ControlPlane {
    /// Opens the control plane and reconciles every stored resource. On the first start of a
    /// data directory it creates the broker `default/default`.
    pub async fn start(
        store: Box<dyn ResourceStore>,
        log: Arc<dyn EventLog>,
        dispatcher: Arc<Dispatcher>,
        sinks: ingress::Sinks,
        sink_batch_records: Option<usize>,
        topic_defaults: TopicConfig,
        ingress_url: String,
    ) -> Result<Arc<Self>, ControlError> {
        let cp = Arc::new(Self {
            store,
            log,
            dispatcher,
            sinks,
            sink_batch_records,
            topic_defaults,
            ingress_url: ingress_url.trim_end_matches('/').to_string(),
            writes: tokio::sync::Mutex::new(()),
        });
        // Listen before converging, so what other nodes change meanwhile is not missed.
        let changes = cp.store.changes();
        let first = cp.store.first_start().await?;
        cp.ensure_broker(SYSTEM_NAMESPACE, RESOURCES_BROKER).await?;
        if first {
            cp.ensure_broker("default", "default").await?;
        }
        // Converge: every stored broker has its log (a log lost with its disk is re-created
        // empty), every trigger its runner, each a fresh status. Brokers first.
        for kind in Kind::ALL {
            for mut r in cp.store.list(*kind, None)? {
                let before = r.status.clone();
                cp.reconcile(&mut r, false).await;
                if r.status != before {
                    cp.store.put(&r).await?;
                    cp.publish("updated", &r).await;
                }
            }
        }
        if let Some(changes) = changes {
            tokio::spawn(follow(Arc::downgrade(&cp), changes));
        }
        Ok(cp)
    }

    /// Makes what runs on this node match a resource another node applied or deleted. The
    /// status is that node's to write (every node computes the same from the same store), so
    /// nothing is written here.
    async fn converge(&self, kind: Kind, namespace: &str, name: &str) -> Result<(), ControlError> {
        let _guard = self.writes.lock().await;
        match self.store.get(kind, namespace, name)? {
            Some(mut r) => self.reconcile(&mut r, false).await,
            None => match kind {
                Kind::Broker => self.log.forget(&Topic::new(namespace, name)),
                Kind::Trigger => self.dispatcher.stop(namespace, name).await,
                Kind::KafkaSink => self.sinks.remove(namespace, name),
                Kind::KafkaSource => {
                    let prefix = format!("{name}#");
                    for runner in self.dispatcher.running(namespace, &prefix).await {
                        self.dispatcher.stop(namespace, &runner).await;
                    }
                }
            },
        }
        if kind.addressable() {
            self.reconcile_dependents(kind, namespace, name, false)
                .await?;
        }
        Ok(())
    }

    /// Converges every stored resource (after missing some changes).
    async fn converge_all(&self) -> Result<(), ControlError> {
        for kind in Kind::ALL {
            for r in self.store.list(*kind, None)? {
                self.converge(*kind, &r.metadata.namespace, &r.metadata.name)
                    .await?;
            }
        }
        Ok(())
    }

    async fn ensure_broker(&self, namespace: &str, name: &str) -> Result<(), ControlError> {
        if self.store.get(Kind::Broker, namespace, name)?.is_some() {
            return Ok(());
        }
        let doc = json!({
            "apiVersion": resource::EVENTING_V1,
            "kind": "Broker",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {},
        });
        let r = resource::validate(1, &doc).map_err(ControlError::Invalid)?;
        self.apply_one(r).await?;
        Ok(())
    }

    /// Validates every document, then applies them all; nothing is applied if any is invalid.
    pub async fn apply(&self, documents: &[Value]) -> Result<Vec<Applied>, ControlError> {
        let mut resources = Vec::new();
        let mut errors = Vec::new();
        for (i, doc) in documents.iter().enumerate() {
            match resource::validate(i + 1, doc) {
                Ok(r) if r.metadata.namespace == SYSTEM_NAMESPACE => {
                    // A system resource given back as it is (`ferry get -A -o yaml | ferry
                    // apply -f -`) is fine: it is unchanged. Any change is refused.
                    let same = self
                        .store
                        .get(r.kind, &r.metadata.namespace, &r.metadata.name)?
                        .is_some_and(|old| {
                            old.spec == r.spec
                                && old.metadata.labels == r.metadata.labels
                                && old.metadata.annotations == r.metadata.annotations
                        });
                    if same {
                        resources.push(r);
                    } else {
                        errors.push(FieldError {
                            document: i + 1,
                            field: "metadata.namespace".into(),
                            message: ControlError::Reserved.to_string(),
                        });
                    }
                }
                Ok(r) => {
                    // S-05: a trigger's broker is immutable.
                    if r.kind == Kind::Trigger {
                        let old =
                            self.store
                                .get(r.kind, &r.metadata.namespace, &r.metadata.name)?;
                        if old.is_some_and(|old| old.spec.get("broker") != r.spec.get("broker")) {
                            errors.push(FieldError {
                                document: i + 1,
                                field: "spec.broker".into(),
                                message: "is immutable: delete the trigger and create it again"
                                    .into(),
                            });
                        }
                    }
                    resources.push(r)
                }
                Err(e) => errors.extend(e),
            }
        }
        if !errors.is_empty() {
            return Err(ControlError::Invalid(errors));
        }
        let mut applied = Vec::new();
        for r in resources {
            applied.push(self.apply_one(r).await?);
        }
        Ok(applied)
    }

    async fn apply_one(&self, mut r: Resource) -> Result<Applied, ControlError> {
        let _guard = self.writes.lock().await;
        let (ns, name) = (r.metadata.namespace.clone(), r.metadata.name.clone());
        let existing = self.store.get(r.kind, &ns, &name)?;

        let action = match &existing {
            None => {
                r.metadata.uid = uuid::Uuid::new_v4().to_string();
                r.metadata.generation = 1;
                r.metadata.creation_timestamp = now();
                "created"
            }
            Some(old) => {
                r.metadata.uid = old.metadata.uid.clone();
                r.metadata.creation_timestamp = old.metadata.creation_timestamp.clone();
                r.metadata.generation = old.metadata.generation;
                r.status = old.status.clone();
                if old.spec != r.spec {
                    r.metadata.generation += 1;
                }
                let same = old.spec == r.spec
                    && old.metadata.labels == r.metadata.labels
                    && old.metadata.annotations == r.metadata.annotations;
                if same {
                    "unchanged"
                } else {
                    "configured"
                }
            }
        };
        if action != "unchanged" {
            // "unchanged" needs no converging: what runs already matches.
            self.reconcile(&mut r, action == "created").await;
            self.store.put(&r).await?;
            let change = if action == "created" {
                "created"
            } else {
                "updated"
            };
            self.publish(change, &r).await;
            if r.kind.addressable() {
                self.reconcile_dependents(r.kind, &ns, &name, true).await?;
            }
        }
        Ok(Applied {
            kind: r.kind.name().to_string(),
            namespace: ns,
            name,
            action: action.to_string(),
        })
    }

    /// Makes what runs match `r` and records the outcome in `r.status`. `created`: `r` is new
    /// (a new trigger starts at the log end even if an old one of that name left offsets).
    async fn reconcile(&self, r: &mut Resource, created: bool) {
        match r.kind {
            Kind::Broker => {
                let topic = Topic::new(&r.metadata.namespace, &r.metadata.name);
                let outcome = self.log.create_topic(&topic, self.topic_defaults).await;
                let url = format!("{}/{}/{}", self.ingress_url, topic.namespace, topic.name);
                r.status = broker_status(r, outcome.as_ref().err(), &url);
            }
            Kind::Trigger => trigger::reconcile(self, r, created).await,
            Kind::KafkaSink => self.reconcile_sink(r).await,
            Kind::KafkaSource => source::reconcile(self, r).await,
        }
    }

    /// Client options for the cluster a sink or source names in `spec.bootstrapServers`.
    fn kafka_options_of(&self, spec: &Value) -> broker::KafkaOptions {
        let bootstrap: Vec<&str> = spec["bootstrapServers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        broker::KafkaOptions {
            bootstrap: bootstrap.join(","),
            replication_factor: 1,
            max_batch_records: self.sink_batch_records,
            fetch_wait: None,
        }
    }

    /// A KafkaSink: its topic exists and the ingress writes to it at
    /// `/kafkasinks/{namespace}/{name}`.
    async fn reconcile_sink(&self, r: &mut Resource) {
        let (ns, name) = (r.metadata.namespace.clone(), r.metadata.name.clone());
        let spec = &r.spec;
        let options = self.kafka_options_of(spec);
        let mode = match spec["contentMode"].as_str() {
            Some("structured") => broker::kafka::ContentMode::Structured,
            _ => broker::kafka::ContentMode::Binary,
        };
        let topic = spec["topic"].as_str().unwrap_or_default();
        let opened = broker::kafka::TopicWriter::open(
            &options,
            topic,
            mode,
            spec["numPartitions"].as_i64().map(|n| n as i32),
            spec["replicationFactor"].as_i64().map(|n| n as i32),
        )
        .await;
        let old = &r.status;
        r.status = match opened {
            Ok(writer) => {
                self.sinks.set(&ns, &name, writer);
                json!({
                    "observedGeneration": r.metadata.generation,
                    "conditions": [
                        condition(old, "TopicReady", "True", None, None),
                        condition(old, "Addressable", "True", None, None),
                        condition(old, "Ready", "True", None, None),
                    ],
                    "address": {"name": "http", "url": format!("{}/kafkasinks/{ns}/{name}", self.ingress_url)},
                })
            }
            Err(e) => {
                self.sinks.remove(&ns, &name);
                let msg = e.to_string();
                json!({
                    "observedGeneration": r.metadata.generation,
                    "conditions": [
                        condition(old, "TopicReady", "False", Some("TopicUnavailable"), Some(&msg)),
                        condition(old, "Ready", "False", Some("TopicUnavailable"), Some(&msg)),
                    ],
                })
            }
        };
    }

    /// Re-reconciles what depends on an addressable resource (a broker, a sink) that appeared,
    /// changed or went away: the triggers on it, and the triggers and sources whose subscriber,
    /// sink or dead-letter sink refers to it (in any namespace). With `write`, a status that changes is stored and published like any other
    /// change (without: another node made the change and writes the statuses).
    async fn reconcile_dependents(
        &self,
        kind: Kind,
        namespace: &str,
        broker: &str,
        write: bool,
    ) -> Result<(), ControlError> {
        let refers = |dest: Option<&Value>, trigger_ns: &str| {
            dest.and_then(|d| d.get("ref")).is_some_and(|r| {
                r.get("kind").and_then(Value::as_str).and_then(Kind::parse) == Some(kind)
                    && r.get("name").and_then(Value::as_str) == Some(broker)
                    && r.get("namespace")
                        .and_then(Value::as_str)
                        .unwrap_or(trigger_ns)
                        == namespace
            })
        };
        let mut dependents = self.store.list(Kind::Trigger, None)?;
        dependents.extend(self.store.list(Kind::KafkaSource, None)?);
        for mut t in dependents {
            let ns = t.metadata.namespace.clone();
            let on_it = kind == Kind::Broker
                && t.kind == Kind::Trigger
                && ns == namespace
                && t.spec.get("broker").and_then(Value::as_str) == Some(broker);
            let dls = t.spec.pointer("/delivery/deadLetterSink");
            let to = t.spec.get("subscriber").or(t.spec.get("sink"));
            if on_it || refers(to, &ns) || refers(dls, &ns) {
                let before = t.status.clone();
                self.reconcile(&mut t, false).await;
                if write && t.status != before {
                    self.store.put(&t).await?;
                    self.publish("updated", &t).await;
                }
            }
        }
        Ok(())
    }

    /// The address of a Knative `Destination`: its `uri`, or the `status.address.url` of the
    /// resource its `ref` names (any kind Ferry keeps that has an address: Ferry's resolver is
    /// Knative's duck type), with a `uri` beside a `ref` taken relative to it (D-07).
    pub fn resolve(&self, dest: &Value, namespace: &str) -> Result<String, String> {
        let uri = dest.get("uri").and_then(Value::as_str);
        let Some(r) = dest.get("ref") else {
            return uri
                .map(str::to_string)
                .ok_or_else(|| "the destination has neither uri nor ref".to_string());
        };
        let kind_name = r.get("kind").and_then(Value::as_str).unwrap_or_default();
        let name = r.get("name").and_then(Value::as_str).unwrap_or_default();
        let ns = r
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or(namespace);
        let kind = Kind::parse(kind_name).ok_or_else(|| {
            format!("cannot resolve a {kind_name}: Ferry has no resources of that kind")
        })?;
        let target = self
            .store
            .get(kind, ns, name)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{kind_name} {ns}/{name} does not exist"))?;
        let base = target
            .status
            .pointer("/address/url")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                format!("{kind_name} {ns}/{name} has no address (not Ready, or not addressable)")
            })?;
        match uri {
            None => Ok(base.to_string()),
            Some(rel) => url::Url::parse(&format!("{}/", base.trim_end_matches('/')))
                .and_then(|b| b.join(rel.trim_start_matches('/')))
                .map(|u| u.to_string())
                .map_err(|e| format!("uri {rel:?} relative to {base}: {e}")),
        }
    }

    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Result<Resource, ControlError> {
        self.store
            .get(kind, namespace, name)?
            .ok_or_else(|| ControlError::NotFound {
                kind: kind.name(),
                namespace: namespace.to_string(),
                name: name.to_string(),
            })
    }

    pub fn list(&self, kind: Kind, namespace: Option<&str>) -> Result<Vec<Resource>, ControlError> {
        Ok(self.store.list(kind, namespace)?)
    }

    pub async fn delete(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<(), ControlError> {
        if namespace == SYSTEM_NAMESPACE {
            return Err(ControlError::Reserved);
        }
        let _guard = self.writes.lock().await;
        let r = self.get(kind, namespace, name)?;
        match kind {
            Kind::Broker => match self.log.delete_topic(&Topic::new(namespace, name)).await {
                Ok(()) | Err(LogError::UnknownTopic(_)) => {}
                Err(e) => return Err(e.into()),
            },
            Kind::Trigger => self.dispatcher.forget(namespace, name).await?,
            // The topic is the user's: deleting the sink leaves it (and its records) alone.
            Kind::KafkaSink => self.sinks.remove(namespace, name),
            // So are the source's topics and its group's offsets.
            Kind::KafkaSource => source::forget(self, &r).await?,
        }
        self.store.delete(kind, namespace, name).await?;
        self.publish("deleted", &r).await;
        if kind.addressable() {
            self.reconcile_dependents(kind, namespace, name, true)
                .await?;
        }
        Ok(())
    }

    /// Appends a resource change to `ferry-system/resources`. A failure is logged: the change
    /// itself has happened and is stored.
    async fn publish(&self, change: &str, r: &Resource) {
        let topic = Topic::new(SYSTEM_NAMESPACE, RESOURCES_BROKER);
        let data = match serde_json::to_vec(r) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode resource change");
                return;
            }
        };
        let s = |v: &str| AttrValue::String(v.to_string());
        let event = Event {
            attributes: vec![
                ("specversion".into(), s("1.0")),
                ("id".into(), s(&uuid::Uuid::new_v4().to_string())),
                (
                    "source".into(),
                    s(&format!(
                        "/apis/{}/namespaces/{}/{}/{}",
                        r.api_version,
                        r.metadata.namespace,
                        r.kind.plural(),
                        r.metadata.name
                    )),
                ),
                ("type".into(), s(&format!("dev.ferry.resource.{change}"))),
                (
                    "subject".into(),
                    s(&format!("{}/{}", r.metadata.namespace, r.metadata.name)),
                ),
                ("time".into(), s(&now())),
                ("datacontenttype".into(), s("application/json")),
                (
                    "resourcekind".into(),
                    s(&r.kind.name().to_ascii_lowercase()),
                ),
            ],
            data: Some(data.into()),
        };
        if let Err(e) = self.log.append(&topic, vec![event]).await {
            tracing::warn!(error = %e, "cannot publish resource change to {topic}");
        }
    }
}

/// How long a start-offset commit is tried again: on Kafka a commit from outside a consumer
/// group is refused while the group still has members — other nodes still running an earlier
/// trigger of the same name, until they see its delete (well under a second) or their session
/// times out (10 s).
const START_COMMIT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(15);

/// Runs `commit` until it succeeds or `START_COMMIT_PATIENCE` has passed; the last error then.
pub(crate) async fn commit_patiently<E: std::fmt::Display, F, Fut>(
    what: &str,
    mut commit: F,
) -> Result<(), E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
{
    let deadline = tokio::time::Instant::now() + START_COMMIT_PATIENCE;
    loop {
        match commit().await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::info!(error = %e, "committing the start offsets of {what} failed; trying again");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Follows the resources other nodes apply and delete (Kafka mode), converging this node on
/// each change, until the control plane is dropped.
async fn follow(
    cp: std::sync::Weak<ControlPlane>,
    mut changes: tokio::sync::broadcast::Receiver<Vec<u8>>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let change = changes.recv().await;
        let Some(cp) = cp.upgrade() else { return };
        let outcome = match change {
            Ok(key) => match store::parse_key(&key) {
                Some((kind, ns, name)) => {
                    tracing::debug!(kind = kind.name(), namespace = %ns, name = %name, "applied on another node");
                    cp.converge(kind, &ns, &name).await
                }
                None => Ok(()),
            },
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "missed resource changes; converging everything");
                cp.converge_all().await
            }
            Err(RecvError::Closed) => return,
        };
        if let Err(e) = outcome {
            tracing::warn!(error = %e, "converging on another node's change failed");
        }
    }
}

/// One Knative condition; `lastTransitionTime` is kept from `old_status` while the condition's
/// status does not change.
pub(crate) fn condition(
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
pub(crate) fn ready_status(status: &Value) -> Option<bool> {
    status
        .get("conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .map(|c| c["status"] == "True")
}

/// A broker's Knative status: `Ready` with reason and message, `address.url` when addressable.
fn broker_status(r: &Resource, error: Option<&LogError>, url: &str) -> Value {
    let old = &r.status;
    match error {
        None => json!({
            "observedGeneration": r.metadata.generation,
            "conditions": [
                condition(old, "LogReady", "True", None, None),
                condition(old, "Addressable", "True", None, None),
                condition(old, "Ready", "True", None, None),
            ],
            "address": {"name": "http", "url": url},
        }),
        Some(e) => {
            let msg = e.to_string();
            json!({
                "observedGeneration": r.metadata.generation,
                "conditions": [
                    condition(old, "LogReady", "False", Some("LogUnavailable"), Some(&msg)),
                    condition(old, "Ready", "False", Some("LogUnavailable"), Some(&msg)),
                ],
            })
        }
    }
}
