//! The ingress router and its one handler.

use crate::error::{IngressError, ALLOW};
use crate::metrics::IngressMetrics;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use broker::kafka::{ContentMode, TopicWriter};
use broker::{EventLog, Publisher, Topic};
use cloudevent::ext::SYSTEM_NAMESPACE;
use cloudevent::http::{decode_binary, mode, Mode};
use cloudevent::json;
use cloudevent::trace::{TraceContext, TRACEPARENT};
use prometheus::IntGauge;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::RwLock;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

/// Limits of the ingress (the largest event is the [`Publisher`]'s).
#[derive(Clone, Debug)]
pub struct IngressConfig {
    /// Largest batched-mode request body, in bytes.
    pub max_batch_size: usize,
    /// Most requests handled at once; one more is answered 503 with `Retry-After`.
    pub max_in_flight: usize,
    /// Most request-body bytes held at once (each request reserves its `Content-Length`, or
    /// its mode's maximum without one, before reading); over it, 503 with `Retry-After`.
    pub max_buffered_bytes: usize,
    /// A request body must arrive within this (a client trickling it gets 408).
    pub body_timeout: Duration,
}

impl Default for IngressConfig {
    fn default() -> Self {
        Self {
            max_batch_size: 16 * 1024 * 1024,
            max_in_flight: 1024,
            max_buffered_bytes: 256 * 1024 * 1024,
            body_timeout: Duration::from_secs(60),
        }
    }
}

/// Requests and body bytes in flight, bounded (see [`IngressConfig`]). Bytes are counted in
/// KiB (a semaphore's permits are `u32`).
pub struct Gate {
    requests: Arc<Semaphore>,
    kib: Arc<Semaphore>,
    max_kib: usize,
    in_flight: IntGauge,
}

/// A request's place in the gate, given back when it is dropped.
struct Admitted {
    _request: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
    in_flight: IntGauge,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.in_flight.dec();
    }
}

impl Gate {
    /// `in_flight` counts the requests admitted and not yet answered.
    pub fn new(config: &IngressConfig, in_flight: IntGauge) -> Self {
        let max_kib = config
            .max_buffered_bytes
            .div_ceil(1024)
            .clamp(1, u32::MAX as usize);
        Self {
            requests: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            kib: Arc::new(Semaphore::new(max_kib)),
            max_kib,
            in_flight,
        }
    }

    /// Admits a request whose body may be up to `bytes` long, or says why not.
    fn admit(&self, config: &IngressConfig, bytes: usize) -> Result<Admitted, IngressError> {
        let request = self.requests.clone().try_acquire_owned().map_err(|_| {
            IngressError::Saturated(format!(
                "the ingress is at its limit of {} requests in flight",
                config.max_in_flight
            ))
        })?;
        let kib = bytes.div_ceil(1024).clamp(1, self.max_kib) as u32;
        let bytes = self.kib.clone().try_acquire_many_owned(kib).map_err(|_| {
            IngressError::Saturated(format!(
                "the ingress is at its limit of {} request-body bytes in flight",
                config.max_buffered_bytes
            ))
        })?;
        self.in_flight.inc();
        Ok(Admitted {
            _request: request,
            _bytes: bytes,
            in_flight: self.in_flight.clone(),
        })
    }
}

/// Decides whether a request's sender may send its events where it sends them (Ferry's
/// EventPolicies): the sender is in the request's extensions (put there by the middleware
/// that authenticated it); `Err` is a 403 with the message.
pub trait Admission: Send + Sync {
    fn admit(
        &self,
        sender: &http::Extensions,
        to: Addressee<'_>,
        events: &[broker::Event],
    ) -> Result<(), String>;
}

/// What a request sends to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addressee<'a> {
    Broker { namespace: &'a str, name: &'a str },
    KafkaSink { namespace: &'a str, name: &'a str },
}

/// What the handler needs.
#[derive(Clone)]
pub struct IngressState {
    /// Validates, limits, stamps and appends what producers send.
    pub publisher: Arc<Publisher>,
    pub sinks: Sinks,
    pub config: IngressConfig,
    pub metrics: IngressMetrics,
    pub gate: Arc<Gate>,
    /// Who may send what where; none: anyone anything.
    pub admission: Option<Arc<dyn Admission>>,
}

impl IngressState {
    pub fn new(
        publisher: Arc<Publisher>,
        sinks: Sinks,
        config: IngressConfig,
        metrics: IngressMetrics,
    ) -> Self {
        let gate = Arc::new(Gate::new(&config, metrics.in_flight.clone()));
        Self {
            publisher,
            sinks,
            config,
            metrics,
            gate,
            admission: None,
        }
    }

    /// Requests are admitted by `admission` (after they are decoded, before they are stored).
    pub fn with_admission(mut self, admission: Arc<dyn Admission>) -> Self {
        self.admission = Some(admission);
        self
    }

    fn log(&self) -> &Arc<dyn EventLog> {
        self.publisher.log()
    }
}

/// The ingress routes: `/{namespace}/{broker}`; anything else is 404.
pub fn router(state: IngressState) -> Router {
    Router::new()
        .route("/{namespace}/{broker}", any(handle))
        .route("/kafkasinks/{namespace}/{name}", any(handle_sink))
        .fallback(|| async { IngressError::NoRoute })
        .with_state(state)
}

async fn handle(
    State(state): State<IngressState>,
    Path((namespace, name)): Path<(String, String)>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let (span, hop) = ingest_span(&request, &namespace, &name);
    let (count, result) = match *request.method() {
        // Ferry's own brokers take events from Ferry only.
        _ if namespace == SYSTEM_NAMESPACE => (1, Err(IngressError::Reserved)),
        Method::POST => {
            accept(&state, &namespace, &name, request, hop)
                .instrument(span.clone())
                .await
        }
        Method::OPTIONS => return options(),
        ref m => (1, Err(IngressError::Method(m.clone()))),
    };
    let status = match &result {
        Ok(()) => StatusCode::ACCEPTED,
        Err(e) => e.status(),
    };
    let code = status.as_str();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
    // Label values come from brokers that exist, so a scan of made-up paths cannot grow the
    // metric without bound. Asked of what the log knows, not of its storage: a refused request
    // costs no lookup.
    let known = match &result {
        Ok(()) | Err(IngressError::Unavailable(_)) => true,
        Err(IngressError::UnknownBroker { .. } | IngressError::Reserved) => false,
        Err(_) => state.log().knows(&Topic::new(&namespace, &name)),
    };
    let (ns_label, name_label) = if known {
        (namespace.as_str(), name.as_str())
    } else {
        ("", "")
    };
    state
        .metrics
        .events
        .with_label_values(&[ns_label, name_label, code])
        .inc_by(count.max(1) as u64);
    state
        .metrics
        .request_seconds
        .with_label_values(&[code])
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(()) => {
            let mut r = StatusCode::ACCEPTED.into_response();
            r.headers_mut().insert(header::ALLOW, ALLOW);
            r
        }
        Err(e) => {
            if status.is_server_error() {
                tracing::warn!(broker = %format!("{namespace}/{name}"), error = %e, "event not stored");
            } else {
                tracing::debug!(broker = %format!("{namespace}/{name}"), error = %e, "event rejected");
            }
            e.into_response()
        }
    }
}

/// The `ferry.ingest` span of a request: a child of the request's `traceparent` header, else of
/// a binary-mode event's own `ce-traceparent`. Also the header's context (the hop's), if any.
fn ingest_span(
    request: &Request,
    namespace: &str,
    name: &str,
) -> (tracing::Span, Option<TraceContext>) {
    let span = tracing::info_span!(
        "ferry.ingest",
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        broker = %format_args!("{namespace}/{name}"),
        http.response.status_code = tracing::field::Empty,
    );
    let headers = request.headers();
    let hop = TraceContext::of_headers(headers);
    let parent = hop.clone().or_else(|| {
        let own = headers.get("ce-traceparent")?.to_str().ok()?;
        TraceContext::parse(own, None)
    });
    if let Some(cx) = parent {
        cx.adopt(&span);
    }
    (span, hop)
}

/// Where a request's events go.
enum Target<'a> {
    /// A broker's log.
    Broker { namespace: &'a str, name: &'a str },
    /// A KafkaSink's topic.
    Sink {
        namespace: &'a str,
        name: &'a str,
        writer: Arc<TopicWriter>,
    },
}

impl Target<'_> {
    fn addressee(&self) -> Addressee<'_> {
        match self {
            Target::Broker { namespace, name } => Addressee::Broker { namespace, name },
            Target::Sink {
                namespace, name, ..
            } => Addressee::KafkaSink { namespace, name },
        }
    }
}

async fn accept(
    state: &IngressState,
    namespace: &str,
    name: &str,
    request: Request,
    hop: Option<TraceContext>,
) -> (usize, Result<(), IngressError>) {
    accept_into(state, Target::Broker { namespace, name }, request, hop).await
}

/// Parses, stamps and appends the request's events (`hop`: the request's trace context).
/// Returns how many events the request held (for the metrics) and the outcome.
async fn accept_into(
    state: &IngressState,
    target: Target<'_>,
    request: Request,
    hop: Option<TraceContext>,
) -> (usize, Result<(), IngressError>) {
    let (parts, body) = request.into_parts();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let mode = match mode(content_type) {
        Ok(m) => m,
        Err(e) => return (1, Err(e.into())),
    };
    let limit = match mode {
        Mode::Batch => state.config.max_batch_size,
        // Attributes travel in headers in binary mode; the body alone must fit.
        Mode::Binary | Mode::Structured => state.publisher.max_event_size(),
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return (1, Err(IngressError::BodyTooLarge { max: limit }));
    }
    let _admitted = match state.gate.admit(&state.config, declared.unwrap_or(limit)) {
        Ok(a) => a,
        Err(e) => {
            state
                .metrics
                .refused
                .with_label_values(&[e.refusal()])
                .inc();
            return (1, Err(e));
        }
    };
    // Read no more than was reserved (a `Content-Length` beside a chunked body does not get
    // past the gate).
    let reserved = declared.unwrap_or(limit).min(limit);
    let body =
        match tokio::time::timeout(state.config.body_timeout, read_body(body, reserved)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return (1, Err(e)),
            Err(_) => return (1, Err(IngressError::BodyTimeout(state.config.body_timeout))),
        };
    // Decoding checks the encoding; the publisher validates, limits and stamps.
    let events = match mode {
        // The data gets an allocation of its own: the body may be a slice of the connection's
        // read buffer (8 KiB or more), which an event kept in the log's tail cache would
        // otherwise hold on to, whatever the event's size.
        Mode::Binary => {
            decode_binary(&parts.headers, bytes::Bytes::copy_from_slice(&body)).map(|e| vec![e])
        }
        Mode::Structured => json::decode(&body).map(|e| vec![e]),
        Mode::Batch => json::decode_batch(&body),
    };
    let mut events = match events {
        Ok(e) => e,
        Err(e) => return (1, Err(e.into())),
    };
    let count = events.len();
    if count == 0 {
        return (0, Ok(()));
    }
    if let Some(admission) = &state.admission {
        if let Err(why) = admission.admit(&parts.extensions, target.addressee(), &events) {
            return (count, Err(IngressError::Forbidden(why)));
        }
    }
    // An event without a trace context of its own is kept with the request's (its producer's),
    // else with the ingest span's when spans are exported.
    let origin = hop.or_else(|| TraceContext::of_span(&tracing::Span::current()));
    if let Some(cx) = origin {
        for e in events.iter_mut().filter(|e| e.attr(TRACEPARENT).is_none()) {
            cx.set_on(e);
        }
    }
    let batch = mode == Mode::Batch;
    let result = match target {
        Target::Broker { namespace, name } => state
            .publisher
            .publish(&Topic::new(namespace, name), events)
            .await
            .map(|_| ())
            .map_err(|e| IngressError::from_publish(e, batch, namespace, name)),
        Target::Sink { writer, .. } => match state.publisher.prepare(&mut events) {
            Err(e) => Err(IngressError::from_publish(e, batch, "", "")),
            Ok(()) => {
                let structured: Vec<String> = match writer.mode() {
                    ContentMode::Structured => events.iter().map(json::encode).collect(),
                    ContentMode::Binary => Vec::new(),
                };
                writer
                    .write(&events, &structured)
                    .await
                    .map_err(IngressError::Unavailable)
            }
        },
    };
    (count, result)
}

/// The KafkaSinks the ingress writes to, by namespace and name; the control plane keeps it
/// up to date as sinks are applied and deleted.
#[derive(Clone, Default)]
pub struct Sinks(Arc<RwLock<SinkTable>>);

/// Sinks by (namespace, name).
type SinkTable = HashMap<(String, String), Arc<TopicWriter>>;

impl Sinks {
    pub fn set(&self, namespace: &str, name: &str, writer: TopicWriter) {
        if let Ok(mut m) = self.0.write() {
            m.insert((namespace.to_string(), name.to_string()), Arc::new(writer));
        }
    }

    pub fn remove(&self, namespace: &str, name: &str) {
        if let Ok(mut m) = self.0.write() {
            m.remove(&(namespace.to_string(), name.to_string()));
        }
    }

    fn get(&self, namespace: &str, name: &str) -> Option<Arc<TopicWriter>> {
        self.0
            .read()
            .ok()?
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }
}

/// `POST /kafkasinks/{namespace}/{name}`: events produced to the sink's topic.
async fn handle_sink(
    State(state): State<IngressState>,
    Path((namespace, name)): Path<(String, String)>,
    request: Request,
) -> Response {
    let result = match (request.method().clone(), state.sinks.get(&namespace, &name)) {
        (Method::OPTIONS, _) => return options(),
        (Method::POST, Some(writer)) => {
            let hop = TraceContext::of_headers(request.headers());
            let target = Target::Sink {
                namespace: &namespace,
                name: &name,
                writer,
            };
            accept_into(&state, target, request, hop).await.1
        }
        (Method::POST, None) => Err(IngressError::UnknownBroker { namespace, name }),
        (m, _) => Err(IngressError::Method(m)),
    };
    match result {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, IngressError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        // `to_bytes` reports an over-long body as a `LengthLimitError` somewhere in its chain.
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = source {
            if s.is::<http_body_util::LengthLimitError>() {
                return IngressError::BodyTooLarge { max: limit };
            }
            source = s.source();
        }
        IngressError::Body(e.to_string())
    })
}

fn options() -> Response {
    let mut r = StatusCode::OK.into_response();
    let h = r.headers_mut();
    h.insert(header::ALLOW, ALLOW);
    h.insert("webhook-allowed-origin", HeaderValue::from_static("*"));
    h.insert("webhook-allowed-rate", HeaderValue::from_static("*"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker::metrics::LogMetrics;
    use broker::{Retention, RocksLog, RocksOptions, TopicConfig};
    use tower::ServiceExt;

    async fn state(dir: &std::path::Path) -> (IngressState, RocksLog) {
        let registry = prometheus::Registry::new();
        let log = RocksLog::open(
            dir,
            RocksOptions::default(),
            LogMetrics::new(&registry).unwrap(),
        )
        .unwrap();
        let topic = Topic::new("default", "default");
        let config = TopicConfig {
            partitions: 2,
            retention: Retention::default(),
        };
        log.create_topic(&topic, config).await.unwrap();
        let state = IngressState::new(
            Arc::new(Publisher::with_default_limit(Arc::new(log.clone()))),
            Sinks::default(),
            IngressConfig::default(),
            IngressMetrics::new(&registry).unwrap(),
        );
        (state, log)
    }

    #[test]
    fn the_gate_bounds_requests_and_body_bytes_in_flight() {
        let config = IngressConfig {
            max_in_flight: 2,
            max_buffered_bytes: 10 * 1024,
            ..IngressConfig::default()
        };
        let gauge = IntGauge::new("in_flight", "test").unwrap();
        let gate = Gate::new(&config, gauge.clone());
        let first = gate.admit(&config, 5 * 1024).unwrap();
        let err = gate.admit(&config, 6 * 1024).err().unwrap();
        assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            err.to_string().contains("10240 request-body bytes"),
            "{err}"
        );
        let second = gate.admit(&config, 100).unwrap();
        assert_eq!(gauge.get(), 2);
        let err = gate.admit(&config, 100).err().unwrap();
        assert!(err.to_string().contains("2 requests in flight"), "{err}");
        assert_eq!(err.into_response().headers()[header::RETRY_AFTER], "1");
        drop((first, second));
        assert_eq!(gauge.get(), 0);
        gate.admit(&config, 9 * 1024).unwrap();
    }

    fn post() -> Request {
        Request::post("/default/default")
            .header("ce-specversion", "1.0")
            .header("ce-id", "1")
            .header("ce-source", "/s")
            .header("ce-type", "t")
            .body(Body::from("{}"))
            .unwrap()
    }

    #[tokio::test]
    async fn a_log_that_cannot_write_answers_503_never_202() {
        let dir = tempfile::tempdir().unwrap();
        let (state, log) = state(dir.path()).await;
        let app = router(state);
        assert_eq!(
            app.clone().oneshot(post()).await.unwrap().status(),
            StatusCode::ACCEPTED
        );
        // Shutting down: the log refuses writes.
        log.close().await.unwrap();
        let resp = app.oneshot(post()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()["retry-after"], "1");
        let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
        assert!(String::from_utf8_lossy(&body).contains("not stored"));
    }

    #[tokio::test]
    async fn accepted_events_are_in_the_log_with_arrival_time() {
        let dir = tempfile::tempdir().unwrap();
        let (state, log) = state(dir.path()).await;
        let app = router(state);
        assert_eq!(
            app.oneshot(post()).await.unwrap().status(),
            StatusCode::ACCEPTED
        );
        let topic = Topic::new("default", "default");
        let mut stored = Vec::new();
        for p in 0..2 {
            stored.extend(log.read(&topic, p, 0, 10).await.unwrap());
        }
        assert_eq!(stored.len(), 1);
        let e = &stored[0].event;
        assert_eq!(e.attr_text("id").as_deref(), Some("1"));
        let arrival = e.attr_text(cloudevent::ext::ARRIVAL_TIME).unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(&arrival).is_ok(),
            "{arrival}"
        );
        assert_eq!(e.data.as_deref(), Some(&b"{}"[..]));
    }
}
