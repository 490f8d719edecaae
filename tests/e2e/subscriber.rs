//! A real HTTP subscriber for tests: records every request and answers as told, per path.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a path answers.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Answer this status.
    Status(u16),
    /// Fail `times` times with `status` (and `Retry-After`), then 200.
    FailTimes {
        times: usize,
        status: u16,
        retry_after: Option<u64>,
    },
    /// Wait, then 200.
    Delay(Duration),
    /// 200 with a binary-mode reply event of this type.
    Reply { ty: String },
    /// 200 claiming to be a CloudEvent, with a broken body.
    Garbage,
    /// Always this status, with this body.
    FailWith { status: u16, body: String },
    /// 302 to this URL.
    Redirect(String),
}

/// One request the subscriber got.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    pub fn id(&self) -> String {
        self.header("ce-id").unwrap_or_default()
    }
}

#[derive(Default)]
struct Inner {
    behaviours: HashMap<String, Behaviour>,
    received: Vec<Received>,
    counts: HashMap<String, usize>,
}

#[derive(Clone)]
pub struct TestSubscriber {
    inner: Arc<Mutex<Inner>>,
    pub url: String,
}

impl TestSubscriber {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1").await
    }

    /// Listening on `ip` (e.g. an address another network namespace reaches), a free port.
    pub async fn start_on(ip: &str) -> Self {
        let inner: Arc<Mutex<Inner>> = Arc::default();
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .route("/{*path}", axum::routing::any(handle))
            .with_state(inner.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { inner, url }
    }

    /// Over HTTPS with `tls`'s certificate, on 127.0.0.1.
    pub async fn start_tls(tls: Arc<ingress::Tls>) -> Self {
        let inner: Arc<Mutex<Inner>> = Arc::default();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .route("/{*path}", axum::routing::any(handle))
            .with_state(inner.clone());
        let options = ingress::ServeOptions {
            limits: ingress::ServerLimits::default(),
            tls: Some(tls),
            refused: None,
            name: "test-subscriber",
        };
        tokio::spawn(ingress::serve(
            listener,
            app,
            options,
            tokio_util::sync::CancellationToken::new(),
        ));
        Self { inner, url }
    }

    /// The URL of `path` (behaviour `Status(200)` unless set).
    pub fn at(&self, path: &str) -> String {
        format!("{}/{path}", self.url)
    }

    pub fn set(&self, path: &str, b: Behaviour) {
        self.inner
            .lock()
            .unwrap()
            .behaviours
            .insert(path.to_string(), b);
    }

    pub fn received(&self, path: &str) -> Vec<Received> {
        self.inner
            .lock()
            .unwrap()
            .received
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Waits until `path` got at least `n` requests; returns them.
    pub async fn wait_for(&self, path: &str, n: usize, limit: Duration) -> Vec<Received> {
        let what = format!("{n} requests at /{path}");
        super::support::eventually(limit, &what, || {
            let got = self.received(path);
            async move { (got.len() >= n).then_some(got) }
        })
        .await
    }
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let behaviour = {
        let mut i = inner.lock().unwrap();
        i.received.push(Received {
            path: path.clone(),
            headers: headers.clone(),
            body,
            at: Instant::now(),
        });
        let count = i.counts.entry(path.clone()).or_default();
        *count += 1;
        let n = *count;
        (
            i.behaviours
                .get(&path)
                .cloned()
                .unwrap_or(Behaviour::Status(200)),
            n,
        )
    };
    match behaviour {
        (Behaviour::Status(s), _) => StatusCode::from_u16(s).unwrap().into_response(),
        (
            Behaviour::FailTimes {
                times,
                status,
                retry_after,
            },
            n,
        ) if n <= times => {
            let mut r = StatusCode::from_u16(status).unwrap().into_response();
            if let Some(ra) = retry_after {
                r.headers_mut()
                    .insert("retry-after", ra.to_string().parse().unwrap());
            }
            r
        }
        (Behaviour::FailTimes { .. }, _) => StatusCode::OK.into_response(),
        (Behaviour::Delay(d), _) => {
            tokio::time::sleep(d).await;
            StatusCode::OK.into_response()
        }
        (Behaviour::Reply { ty }, n) => (
            StatusCode::OK,
            [
                ("ce-specversion", "1.0".to_string()),
                ("ce-id", format!("reply-{n}")),
                ("ce-source", "/test-subscriber".to_string()),
                ("ce-type", ty),
                ("content-type", "application/json".to_string()),
            ],
            "{\"reply\":true}",
        )
            .into_response(),
        (Behaviour::Garbage, _) => (
            StatusCode::OK,
            [("content-type", "application/cloudevents+json")],
            "{garbage",
        )
            .into_response(),
        (Behaviour::FailWith { status, body }, _) => {
            (StatusCode::from_u16(status).unwrap(), body).into_response()
        }
        (Behaviour::Redirect(to), _) => (StatusCode::FOUND, [("location", to)]).into_response(),
    }
}
