//! Ferry's ingress: `POST /{namespace}/{broker}` takes CloudEvents over HTTP and appends them to
//! the broker's log, answering 202 only once they are durable.
//!
//! - [`parse`]: request → events (binary, structured and batched modes) and validation; pure.
//! - [`format`]: events → structured JSON and binary-mode headers (the way out).
//! - [`error`]: every way a request can fail, and the one mapping from failure to HTTP status.
//! - [`service`]: the axum router and handler: the hot path (parse, stamp, append, answer).
//! - [`metrics`]: Prometheus metrics of the ingress.

pub mod error;
pub mod format;
pub mod metrics;
pub mod parse;
pub mod service;

pub use error::IngressError;
pub use metrics::IngressMetrics;
pub use service::{router, IngressConfig, IngressState, Sinks};
