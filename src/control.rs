//! The control plane: validates and stores resources, reconciles what runs (a broker's log),
//! writes back Knative-style `status`, and publishes every change as a CloudEvent into the
//! system broker `ferry-system/resources`.
//!
//! - `resource.rs`: the resource model and its pure validation.
//! - `store.rs`: persistence (RocksDB, every write synced).
//! - `api.rs`: the HTTP API the CLI talks to, plus /metrics, /healthz, /readyz.

pub mod api;
pub mod resource;
pub mod store;

use broker::{AttrValue, Event, EventLog, LogError, Topic, TopicConfig};
use resource::{FieldError, Kind, Resource};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use store::{Store, StoreError};

/// Namespace of Ferry's own brokers.
pub const SYSTEM_NAMESPACE: &str = "ferry-system";
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
    #[error("unknown resource type {0:?}")]
    UnknownType(String),
    #[error("namespace {SYSTEM_NAMESPACE} is reserved for Ferry's system brokers")]
    Reserved,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("event log: {0}")]
    Log(#[from] LogError),
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
    store: Store,
    log: Arc<dyn EventLog>,
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
        store: Store,
        log: Arc<dyn EventLog>,
        topic_defaults: TopicConfig,
        ingress_url: String,
    ) -> Result<Arc<Self>, ControlError> {
        let cp = Arc::new(Self {
            store,
            log,
            topic_defaults,
            ingress_url: ingress_url.trim_end_matches('/').to_string(),
            writes: tokio::sync::Mutex::new(()),
        });
        let first = cp.store.first_start()?;
        cp.ensure_broker(SYSTEM_NAMESPACE, RESOURCES_BROKER).await?;
        if first {
            cp.ensure_broker("default", "default").await?;
        }
        // Converge: every stored broker has its log (a log lost with its disk is re-created
        // empty) and a fresh status.
        for mut r in cp.store.list(Kind::Broker, None)? {
            let before = r.status.clone();
            cp.reconcile(&mut r).await;
            if r.status != before {
                cp.store.put(&r)?;
            }
        }
        Ok(cp)
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
                Ok(r) if r.metadata.namespace == SYSTEM_NAMESPACE => errors.push(FieldError {
                    document: i + 1,
                    field: "metadata.namespace".into(),
                    message: ControlError::Reserved.to_string(),
                }),
                Ok(r) => resources.push(r),
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
        self.reconcile(&mut r).await;
        self.store.put(&r)?;
        if action != "unchanged" {
            let change = if action == "created" {
                "created"
            } else {
                "updated"
            };
            self.publish(change, &r).await;
        }
        Ok(Applied {
            kind: r.kind.name().to_string(),
            namespace: ns,
            name,
            action: action.to_string(),
        })
    }

    /// Makes what runs match `r` and records the outcome in `r.status`.
    async fn reconcile(&self, r: &mut Resource) {
        match r.kind {
            Kind::Broker => {
                let topic = Topic::new(&r.metadata.namespace, &r.metadata.name);
                let outcome = self.log.create_topic(&topic, self.topic_defaults).await;
                let url = format!("{}/{}/{}", self.ingress_url, topic.namespace, topic.name);
                r.status = broker_status(r, outcome.as_ref().err(), &url);
            }
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
        }
        self.store.delete(kind, namespace, name)?;
        self.publish("deleted", &r).await;
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

/// A broker's Knative status: `Ready` with reason and message, `address.url` when addressable.
fn broker_status(r: &Resource, error: Option<&LogError>, url: &str) -> Value {
    let at = r
        .status
        .get("conditions")
        .and_then(|c| c.as_array())
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .filter(|c| (c["status"] == "True") == error.is_none())
        .and_then(|c| c.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| Value::String(now()));
    match error {
        None => json!({
            "observedGeneration": r.metadata.generation,
            "conditions": [
                {"type": "LogReady", "status": "True", "lastTransitionTime": at},
                {"type": "Addressable", "status": "True", "lastTransitionTime": at},
                {"type": "Ready", "status": "True", "lastTransitionTime": at},
            ],
            "address": {"name": "http", "url": url},
        }),
        Some(e) => json!({
            "observedGeneration": r.metadata.generation,
            "conditions": [
                {"type": "LogReady", "status": "False", "reason": "LogUnavailable",
                 "message": e.to_string(), "lastTransitionTime": at},
                {"type": "Ready", "status": "False", "reason": "LogUnavailable",
                 "message": e.to_string(), "lastTransitionTime": at},
            ],
        }),
    }
}
