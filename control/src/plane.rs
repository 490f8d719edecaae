//! The control plane: validates and stores resources, reconciles each through its kind's
//! work queue, writes back what reconcile observed, and publishes every change as a
//! CloudEvent into the system broker `ferry-system/resources`.
//!
//! Apply and delete are quick: validate, store, publish, queue. The queues' workers reconcile
//! (never one key on two tasks at once, retried with backoff), so a slow reconcile never holds
//! up another apply. A reconcile whose status changes queues what depends on the resource
//! (triggers on a broker, sources whose sink it is). In Kafka mode the store tells of changes
//! other nodes made; they are queued the same way, to converge what runs here, but only the
//! node that made a change writes statuses. `reconcile.rs` is that side: the workers, one
//! pass over a key, dependents, following other nodes.

mod reconcile;

use crate::kind::{Kind, KindInfo};
use crate::queue::{Flags, WorkQueue};
use crate::registry::Registry;
use crate::resource::{FieldError, FieldErrors, Key, Resource, SYSTEM_LABEL};
use crate::store::{ResourceStore, StoreError};
use broker::{EventLog, LogError, Publisher, Topic, TopicConfig};
use cloudevent::ext::SYSTEM_NAMESPACE;
use cloudevent::EventBuilder;
use dispatcher::Dispatcher;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The system broker that receives every resource change.
pub const RESOURCES_BROKER: &str = "resources";

/// How many keys of one kind are reconciled at once.
const WORKERS_PER_KIND: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("invalid resources")]
    Invalid(Vec<FieldError>),
    #[error("{kind} {namespace}/{name} not found")]
    NotFound {
        kind: String,
        namespace: String,
        name: String,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("unknown resource type {name:?} (known: {known})")]
    UnknownType { name: String, known: String },
    #[error("namespace {SYSTEM_NAMESPACE} is reserved for Ferry's system brokers and triggers (you may add and delete your own triggers there)")]
    Reserved,
    /// The identity may not do this (`--auth tokens`).
    #[error("{0}")]
    Forbidden(String),
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
    /// The kind's API group (`sources.knative.dev`).
    #[serde(default)]
    pub group: String,
    pub namespace: String,
    pub name: String,
    /// `created`, `configured` or `unchanged` (as kubectl says it).
    pub action: String,
}

/// What the control plane's kinds need to know of the server.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// Base URL of the ingress, for brokers' and sinks' `status.address.url`.
    pub ingress_url: String,
    /// Layout of new brokers' logs.
    pub topic_defaults: TopicConfig,
    /// `batch.num.messages` for KafkaSinks' producers (see `--kafka-max-batch-records`).
    pub sink_batch_records: Option<usize>,
    /// This node's id (stable across restarts: kept in the data dir). Work that must stay on
    /// one node (a pipeline run's) is owned by a node and handled by its triggers.
    pub node: String,
    /// PEM CA certificates of the ingress's TLS certificate (`--tls-ca`), published as
    /// brokers' and sinks' `status.address.CACerts` so deliveries to them trust it.
    pub address_ca: Option<String>,
    /// Where secrets referenced by resources are (`<dir>/<namespace>/<name>/<key>`).
    pub secrets_dir: std::path::PathBuf,
}

/// The parts of the server the control plane drives.
pub struct Parts {
    pub store: Box<dyn ResourceStore>,
    pub registry: Registry,
    pub publisher: Arc<Publisher>,
    pub dispatcher: Arc<Dispatcher>,
    /// The KafkaSinks the ingress writes to.
    pub sinks: ingress::Sinks,
    pub config: ControlConfig,
}

pub struct ControlPlane {
    store: Box<dyn ResourceStore>,
    registry: Registry,
    log: Arc<dyn EventLog>,
    publisher: Arc<Publisher>,
    dispatcher: Arc<Dispatcher>,
    sinks: ingress::Sinks,
    config: ControlConfig,
    /// One queue per kind, by kind name.
    queues: HashMap<&'static str, Arc<WorkQueue>>,
    /// In-process subscribers of system triggers, by name (`handler:NAME`).
    pub(crate) handlers: crate::system::Handlers,
    /// Read-modify-write of a stored resource is one at a time (short: no reconcile inside).
    writes: tokio::sync::Mutex<()>,
    /// Resources created here whose reconciles have not yet made them Ready, by uid.
    created_pending: std::sync::Mutex<HashMap<Key, String>>,
    /// Cancelled when the server stops: schedulers and leases end.
    shutdown: CancellationToken,
}

impl ControlPlane {
    /// Starts the control plane: the queues' workers, the system broker `resources`, the
    /// broker `default/default` on the first start of a store, every stored resource queued
    /// for reconcile, and (Kafka mode) following other nodes' changes.
    pub async fn start(parts: Parts) -> Result<Arc<Self>, ControlError> {
        let queues = parts
            .registry
            .all()
            .iter()
            .map(|k| (k.info().kind, Arc::new(WorkQueue::default())))
            .collect();
        let cp = Arc::new(Self {
            log: parts.publisher.log().clone(),
            store: parts.store,
            registry: parts.registry,
            publisher: parts.publisher,
            dispatcher: parts.dispatcher,
            sinks: parts.sinks,
            config: parts.config,
            queues,
            handlers: Default::default(),
            writes: tokio::sync::Mutex::new(()),
            created_pending: Default::default(),
            shutdown: CancellationToken::new(),
        });
        for (kind, queue) in &cp.queues {
            for _ in 0..WORKERS_PER_KIND {
                tokio::spawn(reconcile::work(Arc::downgrade(&cp), kind, queue.clone()));
            }
        }
        // Listen before converging, so what other nodes change meanwhile is not missed.
        let changes = cp.store.changes();
        let first = cp.store.first_start().await?;
        cp.ensure_system_broker(RESOURCES_BROKER, crate::system::BrokerLayout::default())
            .await?;
        if first {
            let doc = serde_json::json!({
                "apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
                // Several nodes starting at once each apply it: whichever made the Kafka
                // topic, it is this broker's.
                "metadata": {"name": "default", "namespace": "default",
                    "annotations": {crate::kinds::broker::ADOPT_TOPIC_ANNOTATION: "true"}},
                "spec": {},
            });
            let applied = cp.apply(&[doc]).await?;
            cp.wait_reconciled(&applied, Duration::from_secs(30)).await;
        }
        // Brokers' topics known to be Ferry's are usable before their passes run (the ingress
        // listens from the moment this returns).
        for r in cp.store.list("Broker", None)? {
            if crate::kinds::broker::admissible(&r) {
                cp.log()
                    .admit(&Topic::new(&r.metadata.namespace, &r.metadata.name));
            }
        }
        // Converge: every stored resource reconciled, in registration order (brokers first).
        for kind in cp.registry.all() {
            for r in cp.store.list(kind.info().kind, None)? {
                cp.enqueue(r.key(), Flags::WRITE);
            }
        }
        if let Some(changes) = changes {
            tokio::spawn(reconcile::follow(Arc::downgrade(&cp), changes));
        }
        Ok(cp)
    }

    /// Stops the queues' workers and everything the kinds run on their own (schedules).
    pub fn stop(&self) {
        self.shutdown.cancel();
        for q in self.queues.values() {
            q.close();
        }
    }

    /// Where resources (and tokens) are kept.
    pub(crate) fn store(&self) -> &dyn ResourceStore {
        self.store.as_ref()
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }
    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }
    pub fn publisher(&self) -> &Arc<Publisher> {
        &self.publisher
    }
    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.dispatcher
    }
    pub fn sinks(&self) -> &ingress::Sinks {
        &self.sinks
    }
    pub fn config(&self) -> &ControlConfig {
        &self.config
    }
    /// Cancelled when the server stops.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// The kind `name` names (kind, plural, singular or short name).
    pub fn kind(&self, name: &str) -> Result<&Arc<dyn Kind>, ControlError> {
        self.registry
            .find(name)
            .ok_or_else(|| ControlError::UnknownType {
                name: name.to_string(),
                known: self.registry.plurals().join(", "),
            })
    }

    fn queue(&self, kind: &str) -> Option<&Arc<WorkQueue>> {
        self.queues.get(kind)
    }

    pub(crate) fn enqueue(&self, key: Key, flags: Flags) {
        if let Some(q) = self.queue(&key.kind) {
            q.add(key, flags);
        }
    }

    /// Queues `key`'s reconcile: something a kind runs changed on its own (an instance got
    /// ready, a process died) and the status should say so.
    pub fn requeue(&self, key: Key) {
        self.enqueue(key, Flags::WRITE);
    }

    /// Applies a resource a controller makes and owns (a Service's Configuration and Route, a
    /// Configuration's Revisions): validated like any, stored, queued; not waited for.
    pub async fn apply_owned(&self, doc: &Value) -> Result<Applied, ControlError> {
        let mut errors = FieldErrors::new(1);
        let r = self.validate(&mut errors, doc)?;
        let Some(r) = r.filter(|_| errors.is_empty()) else {
            return Err(ControlError::Invalid(errors.list));
        };
        self.store_one(r).await
    }

    /// Changes the stored status of `key` (if it is still the resource `uid`) with `change`,
    /// for what a kind drives outside its reconcile (a run's executor and scheduler): stored,
    /// published as a change, dependents queued. Returns the resource as stored, or `None` if
    /// it is gone or another one of the name.
    pub async fn update_status(
        &self,
        key: &Key,
        uid: &str,
        change: impl FnOnce(&mut Value),
    ) -> Result<Option<Resource>, ControlError> {
        let written = {
            let _guard = self.writes.lock().await;
            match self.store.get(&key.kind, &key.namespace, &key.name)? {
                Some(mut cur) if cur.metadata.uid == uid => {
                    let before = cur.status.clone();
                    if !cur.status.is_object() {
                        cur.status = Value::Object(Default::default());
                    }
                    change(&mut cur.status);
                    if cur.status == before {
                        return Ok(Some(cur));
                    }
                    self.store.put(&cur).await?;
                    cur
                }
                _ => return Ok(None),
            }
        };
        self.publish_change("updated", &written).await;
        self.enqueue_dependents(&written.key(), Flags::WRITE)?;
        Ok(Some(written))
    }

    /// Validates every document, then stores them all and queues their reconcile; nothing is
    /// applied if any is invalid. Returns at once: [`wait_reconciled`](Self::wait_reconciled)
    /// waits for the outcome.
    pub async fn apply(&self, documents: &[Value]) -> Result<Vec<Applied>, ControlError> {
        let mut resources = Vec::new();
        let mut errors = Vec::new();
        for (i, doc) in documents.iter().enumerate() {
            let mut errs = FieldErrors::new(i + 1);
            if let Some(r) = self.validate(&mut errs, doc)? {
                self.check_system_rules(&r, &mut errs)?;
                if errs.is_empty() {
                    resources.push(r);
                }
            }
            errors.extend(errs.list);
        }
        if !errors.is_empty() {
            return Err(ControlError::Invalid(errors));
        }
        let mut applied = Vec::new();
        for r in resources {
            applied.push(self.store_one(r).await?);
        }
        Ok(applied)
    }

    /// One document as a resource of a registered kind, every problem reported, a change
    /// checked against what is stored.
    pub(crate) fn validate(
        &self,
        errors: &mut FieldErrors,
        doc: &Value,
    ) -> Result<Option<Resource>, ControlError> {
        let Some(r) = self.registry.validate(errors, doc) else {
            return Ok(None);
        };
        // A generated name that happens to be taken is not an update of that resource: it
        // gets another name when it is stored.
        if let Some(kind) = self
            .registry
            .kind(&r.kind)
            .filter(|_| !r.metadata.generated)
        {
            if let Some(old) = self
                .store
                .get(&r.kind, &r.metadata.namespace, &r.metadata.name)?
            {
                kind.validate_update(&old, &r, errors);
            }
        }
        Ok(Some(r))
    }

    /// What users may do in `ferry-system`: add, change and delete Triggers of their own (on
    /// system brokers); give back a system resource unchanged (`get -o yaml | apply`).
    fn check_system_rules(
        &self,
        r: &Resource,
        errors: &mut FieldErrors,
    ) -> Result<(), ControlError> {
        let old = self
            .store
            .get(&r.kind, &r.metadata.namespace, &r.metadata.name)?;
        let unchanged = old.as_ref().is_some_and(|old| same_content(old, r));
        if unchanged {
            return Ok(());
        }
        if r.is_system() || old.as_ref().is_some_and(Resource::is_system) {
            errors.push(
                &format!("metadata.labels.{SYSTEM_LABEL}"),
                "marks a resource Ferry made itself; it cannot be applied",
            );
        } else if r.metadata.namespace == SYSTEM_NAMESPACE && r.kind != "Trigger" {
            errors.push("metadata.namespace", ControlError::Reserved.to_string());
        } else if crate::system::reserved_name(
            self,
            &r.kind,
            &r.metadata.namespace,
            &r.metadata.name,
        ) {
            errors.push(
                "metadata.name",
                format!(
                    "{:?} is a name Ferry keeps for what it makes itself",
                    r.metadata.name
                ),
            );
        }
        // In-process handlers are Ferry's controllers: only its own triggers deliver to them.
        for path in crate::resolve::handler_uris(&r.spec, "spec") {
            errors.push(
                &path,
                "handler: addresses are Ferry's in-process controllers; give an http(s) URL or a ref",
            );
        }
        Ok(())
    }

    /// Stores one validated resource (server-owned fields set), publishes the change and
    /// queues its reconcile and its dependents'.
    pub(crate) async fn store_one(&self, mut r: Resource) -> Result<Applied, ControlError> {
        let action = {
            let _guard = self.writes.lock().await;
            let mut existing = self
                .store
                .get(&r.kind, &r.metadata.namespace, &r.metadata.name)?;
            // A generated name that is taken: another one, as Kubernetes retries.
            if let Some(prefix) = r
                .metadata
                .generate_name
                .clone()
                .filter(|_| r.metadata.generated)
            {
                let mut tries = 0;
                while existing.is_some() && tries < 16 {
                    tries += 1;
                    r.metadata.name = crate::resource::generate_name(&prefix);
                    existing = self
                        .store
                        .get(&r.kind, &r.metadata.namespace, &r.metadata.name)?;
                }
                if existing.is_some() {
                    return Err(ControlError::BadRequest(format!(
                        "no free name with prefix {prefix:?} after 16 tries"
                    )));
                }
            }
            let action = match &existing {
                None => {
                    r.metadata.uid = uuid::Uuid::new_v4().to_string();
                    r.metadata.generation = 1;
                    r.metadata.creation_timestamp = crate::status::now();
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
                    if same_content(old, &r) {
                        "unchanged"
                    } else {
                        "configured"
                    }
                }
            };
            if action != "unchanged" {
                self.store.put(&r).await?;
            }
            action
        };
        if action != "unchanged" {
            let change = if action == "created" {
                "created"
            } else {
                "updated"
            };
            self.publish_change(change, &r).await;
            if action == "created" {
                self.created_pending()
                    .insert(r.key(), r.metadata.uid.clone());
            }
            self.enqueue(r.key(), Flags::WRITE);
            self.enqueue_dependents(&r.key(), Flags::WRITE)?;
        }
        let group = self
            .registry
            .kind(&r.kind)
            .map_or("", |k| k.info().group)
            .to_string();
        Ok(Applied {
            kind: r.kind,
            group,
            namespace: r.metadata.namespace,
            name: r.metadata.name,
            action: action.to_string(),
        })
    }

    /// Waits until the applied resources have been reconciled (or `limit` passed).
    pub async fn wait_reconciled(&self, applied: &[Applied], limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut all = true;
        for a in applied {
            if let Some(q) = self.queue(&a.kind) {
                let key = Key::new(&a.kind, &a.namespace, &a.name);
                all &= q.wait_idle(&[key], deadline).await;
            }
        }
        all
    }

    /// Deletes a resource: its kind finalizes it (stops what runs, releases topics, dead
    /// letters, what it owns), then it leaves the store and the change is published.
    pub async fn delete(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<&'static KindInfo, ControlError> {
        let kind = self.kind(kind)?.clone();
        let info = kind.info();
        let r = self.get(info.kind, namespace, name)?;
        if r.is_system() || (namespace == SYSTEM_NAMESPACE && info.kind != "Trigger") {
            return Err(ControlError::Reserved);
        }
        self.delete_resource(&kind, r.key()).await?;
        Ok(info)
    }

    /// Deletes the resource `key` whatever it is (system resources too).
    pub(crate) async fn delete_resource(
        &self,
        kind: &Arc<dyn Kind>,
        key: Key,
    ) -> Result<(), ControlError> {
        let guard = match self.queue(&key.kind) {
            Some(q) => Some(q.exclusive(&key).await),
            None => None,
        };
        // Read again under the hold: another delete may have gone first.
        let r = self.get(&key.kind, &key.namespace, &key.name)?;
        kind.finalize(self, &r).await?;
        {
            let _w = self.writes.lock().await;
            self.store
                .delete(&key.kind, &key.namespace, &key.name)
                .await?;
        }
        drop(guard);
        self.publish_change("deleted", &r).await;
        self.enqueue_dependents(&key, Flags::WRITE)?;
        Ok(())
    }

    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Result<Resource, ControlError> {
        self.store
            .get(kind, namespace, name)?
            .ok_or_else(|| ControlError::NotFound {
                kind: kind.to_string(),
                namespace: namespace.to_string(),
                name: name.to_string(),
            })
    }

    /// The stored resource, if any.
    pub fn find(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Resource>, ControlError> {
        Ok(self.store.get(kind, namespace, name)?)
    }

    pub fn list(&self, kind: &str, namespace: Option<&str>) -> Result<Vec<Resource>, ControlError> {
        Ok(self.store.list(kind, namespace)?)
    }

    /// Appends a resource change to `ferry-system/resources`. A failure is logged: the change
    /// itself has happened and is stored.
    async fn publish_change(&self, change: &str, r: &Resource) {
        let topic = Topic::new(SYSTEM_NAMESPACE, RESOURCES_BROKER);
        let plural = self
            .registry
            .kind(&r.kind)
            .map_or("resources", |k| k.info().plural);
        let source = format!(
            "/apis/{}/namespaces/{}/{plural}/{}",
            r.api_version, r.metadata.namespace, r.metadata.name
        );
        let published = match serde_json::to_vec(r) {
            Err(e) => Err(e.to_string()),
            Ok(data) => match EventBuilder::new(&format!("dev.ferry.resource.{change}"), &source)
                .subject(format!("{}/{}", r.metadata.namespace, r.metadata.name))
                .attr("resourcekind", r.kind.to_ascii_lowercase())
                .data("application/json", data)
                .build()
            {
                Err(e) => Err(e.to_string()),
                Ok(event) => self
                    .publisher
                    .publish_own(&topic, event)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            },
        };
        if let Err(e) = published {
            tracing::warn!(error = %e, "cannot publish resource change to {topic}");
        }
    }
}

/// Two versions of a resource with the same spec, labels and annotations.
fn same_content(a: &Resource, b: &Resource) -> bool {
    a.spec == b.spec
        && a.metadata.labels == b.metadata.labels
        && a.metadata.annotations == b.metadata.annotations
}
