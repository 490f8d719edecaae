//! `ferry-example-app`: a tiny HTTP server to run as a Serving revision in tests, benchmarks
//! and the README's walk-through. A binary of its own, small (no RocksDB, no librdkafka), so
//! that it is ready within a few milliseconds and what is measured is Ferry. Listens on
//! `$PORT` (default 8080):
//!
//! - `GET /healthz`: `ok`;
//! - anything else: `{TARGET or "hello"} from {K_REVISION}` after `?sleep=MS` milliseconds;
//!   each request is logged to stdout (method, path, `ce-id` when it carries a CloudEvent);
//! - `GET /stats`: `{"requests": N, "maxConcurrent": N}` (the most requests it ever had at once);
//! - `GET /headers`: the request's headers as JSON; `POST /echo`: the body streamed back.
//!
//! SIGTERM: stops accepting, finishes what is in flight, exits 0.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

struct InFlight(Arc<Counters>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Deserialize)]
struct Params {
    sleep: Option<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let counters = Arc::new(Counters::default());
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/stats", get(stats))
        .route("/headers", get(headers))
        .route("/echo", axum::routing::post(echo))
        .fallback(answer)
        .with_state(counters);
    println!(
        "example-app listening on {port} (pid {})",
        std::process::id()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            term.recv().await;
        })
        .await?;
    Ok(())
}

/// The request's headers, as a JSON object (the last value of each name).
async fn headers(headers: HeaderMap) -> Json<serde_json::Value> {
    let map: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(k, v)| {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (k.as_str().to_string(), serde_json::Value::String(v))
        })
        .collect();
    Json(serde_json::Value::Object(map))
}

/// The request's body, streamed back as it comes.
async fn echo(body: axum::body::Body) -> axum::body::Body {
    body
}

async fn stats(State(c): State<Arc<Counters>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "requests": c.requests.load(Ordering::Acquire),
        "maxConcurrent": c.max_in_flight.load(Ordering::Acquire),
    }))
}

async fn answer(
    State(c): State<Arc<Counters>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(p): Query<Params>,
) -> String {
    c.requests.fetch_add(1, Ordering::AcqRel);
    let now = c.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
    c.max_in_flight.fetch_max(now, Ordering::AcqRel);
    // Leaves on every path, a client that goes away mid-sleep included.
    let _in_flight = InFlight(c.clone());
    let ce = headers
        .get("ce-id")
        .and_then(|v| v.to_str().ok())
        .map(|id| format!(" ce-id={id}"))
        .unwrap_or_default();
    println!("{method} {uri}{ce}");
    if let Some(ms) = p.sleep {
        tokio::time::sleep(Duration::from_millis(ms.min(600_000))).await;
    }
    let target = std::env::var("TARGET").unwrap_or_else(|_| "hello".into());
    let revision = std::env::var("K_REVISION").unwrap_or_default();
    format!("{target} from {revision}\n")
}
