//! Ferry's control plane, as a library the binary wires and Serving and Pipelines plug into.
//!
//! Resources are Knative- and Tekton-shaped documents; each kind is one [`Kind`]
//! implementation registered in the [`Registry`], which drives validation, the HTTP API and
//! the CLI's generic verbs. Apply validates, stores, publishes the change and queues a
//! reconcile; a [`queue::WorkQueue`] per kind reconciles each key level-triggered (never two
//! at once for one key, retried with backoff), writes back the observed status and queues
//! what depends on the resource.
//!
//! - [`resource`]: the stored resource, metadata, field errors, shared validators, typed
//!   `Destination`.
//! - [`kind`]: the [`Kind`] trait and its [`KindInfo`]; [`registry`]: the [`Registry`].
//! - [`plane`]: the [`ControlPlane`]: apply, delete, get/list, the reconcile workers, change
//!   events into `ferry-system/resources`, following other nodes (Kafka mode).
//! - [`queue`]: the work queue; [`status`]: Knative conditions; [`resolve`]: addresses of
//!   destinations (duck-typed `status.address.url`, `handler:NAME`).
//! - [`system`]: system brokers with their own layout, and [`SystemTrigger`]s: in-process
//!   handlers as Trigger resources in `ferry-system`.
//! - [`lease`]: one holder per cluster (a one-partition consumer group).
//! - [`process`]: process-group signals and bounded line reading, for kinds that run processes.
//! - [`store`]: where resources persist (RocksDB, or a compacted Kafka topic).
//! - [`kinds`]: eventing's kinds: Broker, Trigger, KafkaSink, KafkaSource, PingSource.
//! - [`auth`]: who may do what (`--auth tokens`): tokens, roles, the 401/403 middleware.
//! - [`api`]: the HTTP API the CLI talks to, plus `/metrics`, `/healthz`, `/readyz`;
//!   [`health`]: what the last two report (storage refusing writes, a wedged runtime).

pub mod api;
pub mod auth;
pub mod health;
pub mod kind;
pub mod kinds;
pub mod lease;
pub mod plane;
pub mod process;
pub mod queue;
pub mod registry;
pub mod resolve;
pub mod resource;
pub mod status;
pub mod store;
pub mod system;

pub use kind::{Kind, KindInfo, Reconciled};
pub use plane::{Applied, ControlConfig, ControlError, ControlPlane, Parts, RESOURCES_BROKER};
pub use registry::Registry;
pub use resource::{FieldError, FieldErrors, Key, Resource};
pub use system::{BrokerLayout, SystemTrigger};
