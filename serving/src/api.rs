//! Serving's part of the control API:
//!
//! | method and path | what |
//! |---|---|
//! | `GET /api/v1/namespaces/{ns}/revisions/{name}/logs[?follow=true]` | the instances' kept stdout/stderr, one line each, prefixed `[{revision}-{instance}]`; `follow`: then new lines as they come |

use crate::Serving;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use control::Key;
use futures::StreamExt;
use serde::Deserialize;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;

#[derive(Deserialize)]
struct LogsQuery {
    #[serde(default)]
    follow: bool,
}

pub fn router(serving: Arc<Serving>) -> Router {
    Router::new()
        .route("/api/v1/namespaces/{ns}/revisions/{name}/logs", get(logs))
        .with_state(serving)
}

async fn logs(
    State(s): State<Arc<Serving>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<LogsQuery>,
) -> Response {
    let key = Key::new("Revision", &ns, &name);
    let Some(pool) = s.pool(&key) else {
        let known = s
            .control()
            .and_then(|cp| cp.find("Revision", &ns, &name).ok().flatten())
            .is_some();
        let m = if known {
            format!("revision {ns}/{name} has no instances on this node")
        } else {
            format!("Revision {ns}/{name} not found")
        };
        return (StatusCode::NOT_FOUND, m + "\n").into_response();
    };
    let (lines, feed) = pool.logs();
    drop(pool);
    let mut head = String::new();
    for l in lines {
        head.push_str(&l);
        head.push('\n');
    }
    if !q.follow {
        return ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], head).into_response();
    }
    let head = futures::stream::once(async move { Ok::<_, std::io::Error>(head) });
    let follow =
        futures::stream::unfold((feed, s.streams.clone()), |(mut feed, stop)| async move {
            let item = tokio::select! {
                _ = stop.cancelled() => return None,
                got = feed.recv() => match got {
                    Ok(line) => line + "\n",
                    Err(RecvError::Lagged(n)) => format!("... {n} lines skipped\n"),
                    Err(RecvError::Closed) => return None,
                },
            };
            Some((Ok(item), (feed, stop)))
        });
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(head.chain(follow)),
    )
        .into_response()
}
