//! The control-plane HTTP API (what every CLI verb but `serve` talks to), and the operational
//! endpoints: `/metrics`, `/healthz`, `/readyz`. `{type}` is any name of a registered kind
//! (plural, singular, kind or short name): the API serves every kind the registry holds.
//!
//! | method and path | what |
//! |---|---|
//! | `POST /api/v1/apply` `{"documents": [...]}` | validate all, apply all (422 with every error); answers once they are reconciled (at most 10 s) |
//! | `GET /api/v1/api-resources` | the registered kinds |
//! | `GET /api/v1/{type}?namespace=NS[&view=table]` | list (every namespace without `namespace`); `view=table`: the printer columns, filled in |
//! | `GET /api/v1/namespaces/{ns}/{type}/{name}[?view=table]` | one resource |
//! | `DELETE /api/v1/namespaces/{ns}/{type}/{name}` | delete |
//! | `GET /api/v1/namespaces/{ns}/brokers/{name}/events?from=beginning\|end&follow=BOOL` | NDJSON stream of structured CloudEvents |
//! | `GET /api/v1/namespaces/{ns}/{type}/{name}/deadletters?limit=N&after=NEXT` | a page of the resource's dead letters (triggers, sources), oldest first, and `next` |
//! | `POST /api/v1/namespaces/{ns}/{type}/{name}/deadletters/replay` `{"id": ID}` or `{"all": true}` | deliver them again |
//! | `DELETE /api/v1/namespaces/{ns}/{type}/{name}/deadletters` | purge |
//!
//! Resources are returned with what their kind observes live (a trigger's `status.lag`).

use crate::kind::Kind;
use crate::plane::{ControlError, ControlPlane};
use crate::resource::Resource;
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

/// How long `apply` waits for the first reconcile of what it applied before it answers.
const APPLY_WAIT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct ApiState {
    pub control: Arc<ControlPlane>,
    pub registry: prometheus::Registry,
    /// Cancelled at shutdown: ends `tail` streams.
    pub shutdown: CancellationToken,
    /// False once shutdown begins (`/readyz` answers 503).
    pub ready: Arc<AtomicBool>,
    /// Storage refusing writes, a wedged runtime.
    pub health: Arc<crate::health::Health>,
}

impl ApiState {
    fn log(&self) -> &Arc<dyn EventLog> {
        self.control.log()
    }
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/apply", post(apply))
        .route("/api/v1/api-resources", get(api_resources))
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
        .with_state(state.clone())
        .merge(ops_router(state))
}

/// `/metrics`, `/healthz` and `/readyz`: on the API listener, and alone on `--ops-listen`.
pub fn ops_router(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        let status = match &self {
            ControlError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ControlError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ControlError::NotFound { .. } | ControlError::UnknownType { .. } => {
                StatusCode::NOT_FOUND
            }
            ControlError::Reserved | ControlError::Forbidden(_) => StatusCode::FORBIDDEN,
            ControlError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ControlError::Dispatch(dispatcher::DispatchError::Store(
                dispatcher::store::StoreError::BadRequest(_),
            )) => StatusCode::BAD_REQUEST,
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

fn kind<'a>(s: &'a ApiState, plural: &str) -> Result<&'a Arc<dyn Kind>, ControlError> {
    s.control.kind(plural)
}

#[derive(Deserialize)]
struct ApplyRequest {
    documents: Vec<Value>,
}

async fn apply(
    State(s): State<ApiState>,
    identity: Option<axum::Extension<crate::auth::Identity>>,
    Json(req): Json<ApplyRequest>,
) -> Result<Json<Value>, ControlError> {
    crate::auth::guard::check_apply(identity.as_deref(), &req.documents)
        .map_err(ControlError::Forbidden)?;
    let applied = s.control.apply(&req.documents).await?;
    let reconciled = s.control.wait_reconciled(&applied, APPLY_WAIT).await;
    Ok(Json(
        json!({ "applied": applied, "reconciled": reconciled }),
    ))
}

async fn api_resources(State(s): State<ApiState>) -> Json<Value> {
    let resources: Vec<Value> = s
        .control
        .registry()
        .all()
        .iter()
        .map(|k| {
            let i = k.info();
            json!({
                "name": i.plural,
                "shortNames": i.short_names,
                "apiVersion": i.api_version(),
                "namespaced": true,
                "kind": i.kind,
                "addressable": i.addressable,
            })
        })
        .collect();
    Json(json!({ "resources": resources }))
}

#[derive(Deserialize)]
struct ListQuery {
    namespace: Option<String>,
    /// `table`: the printer columns, filled in.
    view: Option<String>,
}

async fn list(
    State(s): State<ApiState>,
    Path(plural): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ControlError> {
    let kind = kind(&s, &plural)?;
    let mut items = s.control.list(kind.info().kind, q.namespace.as_deref())?;
    for r in &mut items {
        kind.observe(&s.control, r).await;
    }
    Ok(Json(view(kind, items, q.view.as_deref())?))
}

#[derive(Deserialize)]
struct ViewQuery {
    view: Option<String>,
}

async fn get_one(
    State(s): State<ApiState>,
    Path((ns, plural, name)): Path<(String, String, String)>,
    Query(q): Query<ViewQuery>,
) -> Result<Json<Value>, ControlError> {
    let kind = kind(&s, &plural)?;
    let mut r = s.control.get(kind.info().kind, &ns, &name)?;
    kind.observe(&s.control, &mut r).await;
    match q.view.as_deref() {
        None => Ok(Json(serde_json::to_value(r).unwrap_or(Value::Null))),
        v => Ok(Json(view(kind, vec![r], v)?)),
    }
}

/// Resources as `{"items": [...]}`, or with `view=table` as the kind's printer columns
/// (kubectl's server-side printing): `NAMESPACE NAME <kind's columns> AGE`.
fn view(
    kind: &Arc<dyn Kind>,
    items: Vec<Resource>,
    view: Option<&str>,
) -> Result<Value, ControlError> {
    match view {
        None => Ok(json!({ "items": items })),
        Some("table") => {
            let info = kind.info();
            let mut columns = vec!["NAMESPACE", "NAME"];
            columns.extend(info.columns);
            let aged = kind.age_column();
            if aged {
                columns.push("AGE");
            }
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|r| {
                    let mut row = vec![r.metadata.namespace.clone(), r.metadata.name.clone()];
                    row.extend(kind.row(r));
                    if aged {
                        row.push(age(&r.metadata.creation_timestamp));
                    }
                    row
                })
                .collect();
            Ok(json!({"kind": info.kind, "plural": info.plural, "columns": columns, "rows": rows}))
        }
        Some(other) => Err(ControlError::BadRequest(format!(
            "view={other:?}: the only view is table"
        ))),
    }
}

/// Age like kubectl shows it: 42s, 5m, 3h, 2d.
pub fn age(created: &str) -> String {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(created) else {
        return "<unknown>".into();
    };
    let secs = (dispatcher::clock::now_utc() - t.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// The runners whose dead letters are a resource's (the resource must exist).
fn delivery_names(
    s: &ApiState,
    ns: &str,
    plural: &str,
    name: &str,
) -> Result<Vec<(String, String)>, ControlError> {
    let kind = kind(s, plural)?;
    let r = s.control.get(kind.info().kind, ns, name)?;
    kind.deliveries(&r).ok_or_else(|| {
        ControlError::BadRequest(format!(
            "{} have no dead letters: triggers and sources do",
            kind.info().plural
        ))
    })
}

/// A page of dead letters: `limit` (default and most [`DEAD_LETTER_PAGE`]), `after` (the
/// previous page's `next`).
#[derive(Deserialize)]
struct DeadLettersQuery {
    limit: Option<usize>,
    after: Option<String>,
}

/// The most dead letters one answer holds.
pub const DEAD_LETTER_PAGE: usize = 500;

/// One page of the resource's dead letters, oldest first per runner (a source may have
/// several). `next`: `runner-index:cursor` of the next page, null on the last.
async fn dead_letters(
    State(s): State<ApiState>,
    Path((ns, plural, name)): Path<(String, String, String)>,
    Query(q): Query<DeadLettersQuery>,
) -> Result<Json<Value>, ControlError> {
    let limit = q
        .limit
        .unwrap_or(DEAD_LETTER_PAGE)
        .clamp(1, DEAD_LETTER_PAGE);
    let runners = delivery_names(&s, &ns, &plural, &name)?;
    let (mut index, mut cursor) = match q.after.as_deref() {
        None => (0, None),
        Some(after) => {
            let (i, c) = after
                .split_once(':')
                .and_then(|(i, c)| Some((i.parse::<usize>().ok()?, c.to_string())))
                .ok_or_else(|| {
                    ControlError::BadRequest(format!("after: not a page cursor: {after:?}"))
                })?;
            (i, (!c.is_empty()).then_some(c))
        }
    };
    let mut items = Vec::new();
    let mut next = None;
    while let Some((runner_ns, runner)) = runners.get(index) {
        let page = s.control.dispatcher().dead_letters(
            runner_ns,
            runner,
            cursor.as_deref(),
            limit - items.len(),
        )?;
        items.extend(page.items.into_iter().map(|dl| {
            let event: Value =
                serde_json::from_str(&cloudevent::json::encode(&dl.event)).unwrap_or(Value::Null);
            json!({"id": dl.id, "error": dl.error, "event": event})
        }));
        if let Some(c) = page.next {
            next = Some(format!("{index}:{c}"));
            break;
        }
        index += 1;
        cursor = None;
        if items.len() >= limit {
            if index < runners.len() {
                next = Some(format!("{index}:"));
            }
            break;
        }
    }
    Ok(Json(json!({ "items": items, "next": next })))
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
    for (runner_ns, runner) in &runners {
        n += s.control.dispatcher().replay(runner_ns, runner, id).await?;
    }
    if n == 0 && id.is_some() {
        return Err(ControlError::NotFound {
            kind: "dead letter".into(),
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
    for (runner_ns, runner) in delivery_names(&s, &ns, &plural, &name)? {
        n += s.control.dispatcher().purge(&runner_ns, &runner).await?;
    }
    Ok(Json(json!({ "purged": n })))
}

async fn delete(
    State(s): State<ApiState>,
    Path((ns, plural, name)): Path<(String, String, String)>,
) -> Result<Json<Value>, ControlError> {
    kind(&s, &plural)?;
    let info = s.control.delete(&plural, &ns, &name).await?;
    Ok(Json(json!({"deleted": {
        "kind": info.kind, "group": info.group, "plural": info.plural,
        "namespace": ns, "name": name,
    }})))
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
            kind: "Broker".into(),
            namespace: ns.clone(),
            name: name.clone(),
        },
        other => ControlError::Log(other),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    if q.follow.unwrap_or(true) {
        let mut consumer = match s.log().consumer(&topic, None, start).await {
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
        let ends = match s.log().watermarks(&topic).await {
            Ok(w) => w,
            Err(e) => return not_found(e).into_response(),
        };
        let log = s.log().clone();
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
    let mut l = cloudevent::json::encode(&s.event);
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
    if !s.ready.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    match s.health.unready(&s.control) {
        None => "ready\n".into_response(),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

async fn healthz(State(s): State<ApiState>) -> Response {
    match s.health.unhealthy() {
        None => "ok\n".into_response(),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}
