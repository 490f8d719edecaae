//! The control-plane HTTP API (what every CLI verb but `serve` talks to), and the operational
//! endpoints: `/metrics`, `/healthz`, `/readyz`.
//!
//! | method and path | what |
//! |---|---|
//! | `POST /api/v1/apply` `{"documents": [...]}` | validate all, apply all (422 with every error) |
//! | `GET /api/v1/{plural}?namespace=NS` | list |
//! | `GET /api/v1/namespaces/{ns}/{plural}/{name}` | one resource |
//! | `DELETE /api/v1/namespaces/{ns}/{plural}/{name}` | delete |
//! | `GET /api/v1/namespaces/{ns}/brokers/{name}/events?from=beginning\|end&follow=BOOL` | NDJSON stream of structured CloudEvents |
//! | `GET /api/v1/namespaces/{ns}/{triggers\|kafkasources}/{name}/deadletters` | the trigger's (source's) dead letters |
//! | `POST /api/v1/namespaces/{ns}/{triggers\|kafkasources}/{name}/deadletters/replay` `{"id": ID}` or `{"all": true}` | deliver them again |
//! | `DELETE /api/v1/namespaces/{ns}/{triggers\|kafkasources}/{name}/deadletters` | purge |
//!
//! Triggers are returned with `status.lag`: events of their broker not yet settled.

use super::resource::Kind;
use super::{ControlError, ControlPlane};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use broker::{EventLog, LogError, StartAt, Stored, Topic};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct ApiState {
    pub control: Arc<ControlPlane>,
    pub log: Arc<dyn EventLog>,
    pub dispatcher: Arc<dispatcher::Dispatcher>,
    pub registry: prometheus::Registry,
    /// Cancelled at shutdown: ends `tail` streams.
    pub shutdown: CancellationToken,
    /// False once shutdown begins (`/readyz` answers 503).
    pub ready: Arc<AtomicBool>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/apply", post(apply))
        .route("/api/v1/{plural}", get(list))
        .route(
            "/api/v1/namespaces/{ns}/{plural}/{name}",
            get(get_one).delete(delete),
        )
        .route("/api/v1/namespaces/{ns}/brokers/{name}/events", get(events))
        .route(
            "/api/v1/namespaces/{ns}/{plural}/{name}/deadletters",
            get(dead_letters).delete(purge_dead_letters),
        )
        .route(
            "/api/v1/namespaces/{ns}/{plural}/{name}/deadletters/replay",
            post(replay_dead_letters),
        )
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        let status = match &self {
            ControlError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ControlError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ControlError::NotFound { .. } | ControlError::UnknownType(_) => StatusCode::NOT_FOUND,
            ControlError::Reserved => StatusCode::FORBIDDEN,
            ControlError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ControlError::Log(_) | ControlError::Dispatch(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        let body = match self {
            ControlError::Invalid(errors) => {
                json!({"error": "invalid resources", "errors": errors})
            }
            other => json!({"error": other.to_string()}),
        };
        (status, Json(body)).into_response()
    }
}

fn kind(plural: &str) -> Result<Kind, ControlError> {
    Kind::parse(plural).ok_or_else(|| ControlError::UnknownType(plural.to_string()))
}

#[derive(Deserialize)]
struct ApplyRequest {
    documents: Vec<Value>,
}

async fn apply(
    State(s): State<ApiState>,
    Json(req): Json<ApplyRequest>,
) -> Result<Json<Value>, ControlError> {
    let applied = s.control.apply(&req.documents).await?;
    Ok(Json(json!({ "applied": applied })))
}

#[derive(Deserialize)]
struct ListQuery {
    namespace: Option<String>,
}

async fn list(
    State(s): State<ApiState>,
    Path(plural): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ControlError> {
    let mut items = s.control.list(kind(&plural)?, q.namespace.as_deref())?;
    for r in &mut items {
        with_lag(s.log.as_ref(), r).await;
    }
    Ok(Json(json!({ "items": items })))
}

async fn get_one(
    State(s): State<ApiState>,
    Path((ns, plural, name)): Path<(String, String, String)>,
) -> Result<Json<super::resource::Resource>, ControlError> {
    let mut r = s.control.get(kind(&plural)?, &ns, &name)?;
    with_lag(s.log.as_ref(), &mut r).await;
    Ok(Json(r))
}

/// Adds `status.lag` to a trigger: its broker's events past the trigger's committed offsets.
async fn with_lag(log: &dyn EventLog, r: &mut super::resource::Resource) {
    if r.kind != Kind::Trigger {
        return;
    }
    let Some(broker) = r.spec.get("broker").and_then(Value::as_str) else {
        return;
    };
    let topic = Topic::new(&r.metadata.namespace, broker);
    let group = dispatcher::group(&r.metadata.namespace, &r.metadata.name);
    let (Ok(ends), Ok(committed)) = (
        log.watermarks(&topic).await,
        log.committed(&topic, &group).await,
    ) else {
        return;
    };
    let lag: u64 = ends
        .iter()
        .zip(committed)
        .map(|(w, c)| w.end.saturating_sub(c.unwrap_or(w.end)))
        .sum();
    if let Some(status) = r.status.as_object_mut() {
        status.insert("lag".into(), json!(lag));
    }
}

/// The runners whose dead letters are a resource's: a trigger's one, a KafkaSource's one per
/// topic. The resource must exist for its dead letters to be asked about.
fn delivery_names(
    s: &ApiState,
    ns: &str,
    plural: &str,
    name: &str,
) -> Result<Vec<String>, ControlError> {
    let k = kind(plural)?;
    let r = s.control.get(k, ns, name)?;
    match k {
        Kind::Trigger => Ok(vec![name.to_string()]),
        Kind::KafkaSource => Ok(super::source::runner_names(&r)),
        _ => Err(ControlError::BadRequest(format!(
            "{} have no dead letters: triggers and kafkasources do",
            k.plural()
        ))),
    }
}

async fn dead_letters(
    State(s): State<ApiState>,
    Path((ns, plural, name)): Path<(String, String, String)>,
) -> Result<Json<Value>, ControlError> {
    let mut all = Vec::new();
    for runner in delivery_names(&s, &ns, &plural, &name)? {
        all.extend(s.dispatcher.dead_letters(&ns, &runner)?);
    }
    let items: Vec<Value> = all
        .into_iter()
        .map(|dl| {
            let event: Value = serde_json::from_str(&ingress::format::structured_json(&dl.event))
                .unwrap_or(Value::Null);
            json!({"id": dl.id, "error": dl.error, "event": event})
        })
        .collect();
    Ok(Json(json!({ "items": items })))
}

#[derive(Deserialize)]
struct ReplayRequest {
    id: Option<String>,
    #[serde(default)]
    all: bool,
}

async fn replay_dead_letters(
    State(s): State<ApiState>,
    Path((ns, plural, name)): Path<(String, String, String)>,
    Json(req): Json<ReplayRequest>,
) -> Result<Json<Value>, ControlError> {
    let runners = delivery_names(&s, &ns, &plural, &name)?;
    let id = match (&req.id, req.all) {
        (Some(id), false) => Some(id.as_str()),
        (None, true) => None,
        _ => {
            return Err(ControlError::BadRequest(
                "give either an id or all: true".into(),
            ))
        }
    };
    let mut n = 0;
    for runner in &runners {
        n += s.dispatcher.replay(&ns, runner, id)?;
    }
    if n == 0 && id.is_some() {
        return Err(ControlError::NotFound {
            kind: "dead letter",
            namespace: ns,
            name: id.unwrap_or_default().to_string(),
        });
    }
    Ok(Json(json!({ "replayed": n })))
}

async fn purge_dead_letters(
    State(s): State<ApiState>,
    Path((ns, plural, name)): Path<(String, String, String)>,
) -> Result<Json<Value>, ControlError> {
    let mut n = 0;
    for runner in delivery_names(&s, &ns, &plural, &name)? {
        n += s.dispatcher.purge(&ns, &runner)?;
    }
    Ok(Json(json!({ "purged": n })))
}

async fn delete(
    State(s): State<ApiState>,
    Path((ns, plural, name)): Path<(String, String, String)>,
) -> Result<Json<Value>, ControlError> {
    let k = kind(&plural)?;
    s.control.delete(k, &ns, &name).await?;
    Ok(Json(
        json!({"deleted": {"kind": k.name(), "namespace": ns, "name": name}}),
    ))
}

#[derive(Deserialize)]
struct EventsQuery {
    /// `beginning` or `end` (default).
    from: Option<String>,
    /// Keep streaming new events (default true).
    follow: Option<bool>,
}

/// Streams a broker's events as NDJSON, one structured CloudEvent per line.
async fn events(
    State(s): State<ApiState>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<EventsQuery>,
) -> Response {
    let topic = Topic::new(&ns, &name);
    let start = match q.from.as_deref() {
        None | Some("end") => StartAt::Latest,
        Some("beginning") => StartAt::Earliest,
        Some(other) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": format!("from={other:?}: use beginning or end")})),
            )
                .into_response()
        }
    };
    let not_found = |e: LogError| match e {
        LogError::UnknownTopic(_) => ControlError::NotFound {
            kind: "Broker",
            namespace: ns.clone(),
            name: name.clone(),
        },
        other => ControlError::Log(other),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    if q.follow.unwrap_or(true) {
        let mut consumer = match s.log.consumer(&topic, None, start).await {
            Ok(c) => c,
            Err(e) => return not_found(e).into_response(),
        };
        let shutdown = s.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let batch = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    b = consumer.poll(256, Duration::from_secs(1)) => b,
                };
                match batch {
                    Ok(events) => {
                        for e in events {
                            if tx.send(Ok(line(&e))).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "tail ended");
                        return;
                    }
                }
            }
        });
    } else {
        // Everything up to now, oldest first across partitions, merged as it is read.
        let ends = match s.log.watermarks(&topic).await {
            Ok(w) => w,
            Err(e) => return not_found(e).into_response(),
        };
        let log = s.log.clone();
        tokio::spawn(async move {
            if start == StartAt::Earliest {
                if let Err(e) = merge_partitions(log.as_ref(), &topic, &ends, &tx).await {
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                }
            }
        });
    }
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Sends every event below `ends`, oldest first across partitions: a k-way merge over
/// per-partition reads of at most `CHUNK` events, so memory stays bounded however long the log.
async fn merge_partitions(
    log: &dyn EventLog,
    topic: &Topic,
    ends: &[broker::Watermarks],
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> Result<(), LogError> {
    const CHUNK: usize = 1024;
    let mut next: Vec<u64> = ends.iter().map(|w| w.start).collect();
    let mut heads: Vec<std::collections::VecDeque<Stored>> = vec![Default::default(); ends.len()];
    loop {
        for (p, head) in heads.iter_mut().enumerate() {
            if head.is_empty() && next[p] < ends[p].end {
                let got = log.read(topic, p as u32, next[p], CHUNK).await?;
                match got.last() {
                    Some(last) => next[p] = last.position.offset + 1,
                    None => next[p] = ends[p].end,
                }
                head.extend(got.into_iter().filter(|s| s.position.offset < ends[p].end));
            }
        }
        let oldest = heads
            .iter()
            .enumerate()
            .filter_map(|(p, h)| h.front().map(|s| ((s.appended_ms, s.position), p)))
            .min();
        let Some((_, p)) = oldest else {
            return Ok(());
        };
        if let Some(event) = heads[p].pop_front() {
            if tx.send(Ok(line(&event))).await.is_err() {
                return Ok(());
            }
        }
    }
}

fn line(s: &Stored) -> Bytes {
    let mut l = ingress::format::structured_json(&s.event);
    l.push('\n');
    Bytes::from(l)
}

async fn metrics(State(s): State<ApiState>) -> Response {
    let encoder = prometheus::TextEncoder::new();
    match encoder.encode_to_string(&s.registry.gather()) {
        Ok(text) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn readyz(State(s): State<ApiState>) -> Response {
    if s.ready.load(Ordering::Acquire) {
        "ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    }
}
