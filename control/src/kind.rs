//! What a kind of resource is to the control plane: one [`Kind`] implementation per kind,
//! registered with one line in [`crate::Registry`]. The API, the CLI (`ferry get`, `describe`,
//! `delete`, `api-resources`, `dlq`) and the reconcile queues are driven by it, so adding a kind
//! touches only its own module and its registration.

use crate::plane::{ControlError, ControlPlane};
pub use crate::queue::Flags;
use crate::resource::{FieldErrors, Key, Resource};
use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;
use std::time::Duration;

/// The names of a kind, as the API and the CLI use them.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KindInfo {
    /// API group: `eventing.knative.dev`, `sources.knative.dev`, `serving.knative.dev`, ...
    pub group: &'static str,
    /// API version within the group: `v1`, `v1beta1`, ...
    pub version: &'static str,
    /// The kind: `Broker`.
    pub kind: &'static str,
    /// The plural, also the URL segment: `brokers`.
    pub plural: &'static str,
    /// Short names the CLI accepts (`ksvc`, `tr`).
    pub short_names: &'static [&'static str],
    /// Whether it has an address others deliver to (`status.address.url`).
    pub addressable: bool,
    /// Printer columns between NAMESPACE/NAME and AGE, as `ferry get` shows them.
    pub columns: &'static [&'static str],
}

impl KindInfo {
    /// `group/version`.
    pub fn api_version(&self) -> String {
        format!("{}/{}", self.group, self.version)
    }

    /// Whether `name` names this kind: its kind, plural, singular or a short name, any case.
    pub fn is_named(&self, name: &str) -> bool {
        let l = name.to_ascii_lowercase();
        l == self.plural
            || l == self.kind.to_ascii_lowercase()
            || self.short_names.contains(&l.as_str())
            || l == format!("{}.{}", self.plural, self.group)
    }
}

/// What one reconcile came to.
#[derive(Clone, Debug, PartialEq)]
pub struct Reconciled {
    /// The status observed (written back when it changed).
    pub status: Value,
    /// Something failed that may work later (a log or cluster unavailable): reconcile again
    /// with backoff.
    pub retry: bool,
    /// Reconcile again after this long, whatever happens meanwhile.
    pub requeue_after: Option<Duration>,
}

impl Reconciled {
    pub fn done(status: Value) -> Self {
        Self {
            status,
            retry: false,
            requeue_after: None,
        }
    }

    pub fn retry(status: Value) -> Self {
        Self {
            status,
            retry: true,
            requeue_after: None,
        }
    }
}

/// One kind of resource: its names, validation, reconcile and finalize, what it depends on,
/// and how `ferry get` prints it.
#[async_trait]
pub trait Kind: Send + Sync + 'static {
    fn info(&self) -> &'static KindInfo;

    /// Pure checks of a resource of this kind (its spec, labels, annotations); every problem
    /// goes into `errors` with its field path.
    fn validate(&self, r: &Resource, errors: &mut FieldErrors);

    /// Checks of a change against what is stored (immutable fields).
    fn validate_update(&self, _old: &Resource, _new: &Resource, _errors: &mut FieldErrors) {}

    /// Makes what runs on this node match `r` and says what it observed. Level-triggered: it
    /// looks at what is, whatever happened before, so running it twice is harmless.
    /// `pass.created`: `r` was just created by this node (not an update, not a restart);
    /// `pass.write`: this node made the change (or is starting), so it is the one to write
    /// shared state (the status, resources `r` owns); without it (another node's change, in
    /// Kafka mode) only what runs on this node is converged.
    async fn reconcile(&self, cp: &ControlPlane, r: &Resource, pass: Flags) -> Reconciled;

    /// `r` is being deleted by this node: release what it holds for good (topics, offsets,
    /// dead letters, the resources it owns). Runs before the resource leaves the store.
    async fn finalize(&self, cp: &ControlPlane, r: &Resource) -> Result<(), ControlError> {
        self.release(cp, &r.key()).await;
        Ok(())
    }

    /// `key` is gone (deleted here or on another node): stop what runs on this node for it.
    async fn release(&self, _cp: &ControlPlane, _key: &Key) {}

    /// The resources `r` depends on: when one of them changes, `r` is reconciled again.
    fn depends_on(&self, _cp: &ControlPlane, _r: &Resource) -> Vec<Key> {
        Vec::new()
    }

    /// Whether any kind may depend on resources of this one. `false` spares every change of
    /// them the look for dependents (which reads every stored resource): for kinds whose
    /// status changes often and that nothing depends on (runs).
    fn has_dependents(&self) -> bool {
        true
    }

    /// The cells of `r` under [`KindInfo::columns`].
    fn row(&self, r: &Resource) -> Vec<String>;

    /// Whether `ferry get` ends its table with `AGE` (runs show `STARTED` and `DURATION`
    /// instead, as `tkn` does).
    fn age_column(&self) -> bool {
        true
    }

    /// Whether the resource `kind/namespace/name` is a name this kind keeps for resources it
    /// makes itself (a PingSource's trigger): users may not take it.
    fn reserves(&self, _kind: &str, _namespace: &str, _name: &str) -> bool {
        false
    }

    /// Adds what is observed live, not stored, to a resource being read (a trigger's lag).
    async fn observe(&self, _cp: &ControlPlane, _r: &mut Resource) {}

    /// The dispatcher runners (namespace, name) whose dead letters are `r`'s (`ferry dlq`);
    /// `None`: this kind delivers nothing.
    fn deliveries(&self, _r: &Resource) -> Option<Vec<(String, String)>> {
        None
    }
}

/// A string field of a resource for a printer column (`spec.broker`, `status.sinkUri`).
pub fn cell(r: &Resource, pointer: &str) -> String {
    let root = serde_json::json!({"spec": r.spec, "status": r.status});
    match root.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
    }
}

/// The `Ready` column: `True`, `False` or `Unknown`.
pub fn ready_cell(r: &Resource) -> String {
    crate::status::condition_status(&r.status, "Ready")
        .unwrap_or("Unknown")
        .to_string()
}
