//! Ferry's ingress: `POST /{namespace}/{broker}` takes CloudEvents over HTTP and appends them to
//! the broker's log, answering 202 only once they are durable.
//!
//! - [`error`]: every way a request can fail, and the one mapping from failure to HTTP status.
//! - [`service`]: the axum router and handler: the hot path (decode the request with
//!   [`cloudevent`]'s HTTP binding, hand the events to the [`broker::Publisher`], answer).
//! - [`metrics`]: Prometheus metrics of the ingress.

pub mod error;
pub mod metrics;
pub mod service;

pub use error::IngressError;
pub use metrics::IngressMetrics;
pub use service::{router, IngressConfig, IngressState, Sinks};
