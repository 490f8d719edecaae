//! Ferry's dispatcher: triggers filter a broker's events and deliver them to subscribers, with
//! retries, dead letters and replies.
//!
//! - [`clock`]: the one clock (tokio's), so backoff and windows run on paused time in tests.
//! - [`cesql`]: CloudEvents SQL, compiled once per trigger, evaluated per event.
//! - [`filter`]: trigger filters (attributes and the Subscriptions API dialects).
//! - [`policy`]: delivery policy: retries, backoff, timeout, Retry-After.
//! - [`outbound`]: resolved addresses, tokens for their audience, the networks deliveries may
//!   reach.
//! - [`subscriber`]: the one delivery interface (HTTP, in-process handlers) and how an answer
//!   is classified.
//! - [`store`]: durable retries and Ferry's own dead-letter store.
//! - [`offsets`]: the committed watermark of settled events.
//! - `runner`: one trigger at work (consume, filter, deliver, settle, commit), on the broker's
//!   log or, for a KafkaSource's topic, on another log ([`Feed`]).
//! - [`source`]: a KafkaSource's records as CloudEvents.
//! - [`service`]: the [`Dispatcher`] that starts, replaces and stops runners.
//! - [`metrics`]: Prometheus metrics.

pub mod cesql;
pub mod clock;
pub mod filter;
pub mod metrics;
pub mod offsets;
pub mod outbound;
pub mod policy;
mod runner;
pub mod service;
pub mod source;
pub mod store;
pub mod subscriber;

pub use runner::{group, legacy_group, Feed, StoreTrouble, TriggerSpec, MAX_TTL, TTL};
pub use service::{commit_at_end, DispatchError, Dispatcher};
