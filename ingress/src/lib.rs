//! Ferry's ingress: `POST /{namespace}/{broker}` takes CloudEvents over HTTP and appends them to
//! the broker's log, answering 202 only once they are durable.
//!
//! - [`error`]: every way a request can fail, and the one mapping from failure to HTTP status.
//! - [`service`]: the axum router and handler: the hot path (decode the request with
//!   [`cloudevent`]'s HTTP binding, hand the events to the [`broker::Publisher`], answer).
//! - [`server`]: the HTTP server with connection bounds (a connection limit, header and idle
//!   timeouts); the handler bounds requests in flight, body bytes held and body read time.
//! - [`metrics`]: Prometheus metrics of the ingress.
//! - [`tls`]: certificates for every listener, reloaded when they change.

pub mod error;
pub mod metrics;
pub mod server;
pub mod service;
pub mod tls;

pub use error::IngressError;
pub use metrics::IngressMetrics;
pub use server::{serve, ServeOptions, ServerLimits};
pub use service::{router, Addressee, Admission, Gate, IngressConfig, IngressState, Sinks};
pub use tls::{Tls, TlsError};
