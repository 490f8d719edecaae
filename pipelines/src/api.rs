//! Pipelines' part of the control API:
//!
//! | method and path | what |
//! |---|---|
//! | `GET /api/v1/namespaces/{ns}/taskruns/{name}/logs[?follow=true]` | the TaskRun's steps' output, each line prefixed `[{task}/{step}]` |
//! | `GET /api/v1/namespaces/{ns}/pipelineruns/{name}/logs[?follow=true]` | every TaskRun's of the run, in the order they started |
//!
//! `follow`: then new lines as they are written, until the run has ended.

use crate::kinds::{PIPELINE_RUN_LABEL, PIPELINE_RUN_UID_ANNOTATION};
use crate::taskrun::OUTPUT_LOG;
use crate::Pipelines;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use control::Resource;
use serde::Deserialize;
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How often a followed log looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

#[derive(Deserialize)]
struct LogsQuery {
    #[serde(default)]
    follow: bool,
}

pub fn router(p: Arc<Pipelines>) -> Router {
    Router::new()
        .route(
            "/api/v1/namespaces/{ns}/taskruns/{name}/logs",
            get(|s, path, q| logs(s, path, q, "TaskRun")),
        )
        .route(
            "/api/v1/namespaces/{ns}/pipelineruns/{name}/logs",
            get(|s, path, q| logs(s, path, q, "PipelineRun")),
        )
        .with_state(p)
}

/// Where the output of `run` is: its own file (a TaskRun), or its TaskRuns' in the order they
/// started (a PipelineRun).
fn files(p: &Pipelines, run: &Resource) -> Vec<PathBuf> {
    let Some(cp) = p.control() else {
        return Vec::new();
    };
    let file = |tr: &Resource| {
        p.runner()
            .task_run_dir(
                &tr.metadata.namespace,
                &tr.metadata.name,
                &tr.metadata.uid,
                crate::worker::pipeline_run(tr).as_ref(),
            )
            .join(OUTPUT_LOG)
    };
    if run.kind == "TaskRun" {
        return vec![file(run)];
    }
    let mut trs: Vec<Resource> = cp
        .list("TaskRun", Some(&run.metadata.namespace))
        .unwrap_or_default()
        .into_iter()
        .filter(|tr| {
            tr.metadata.labels.get(PIPELINE_RUN_LABEL) == Some(&run.metadata.name)
                && tr.metadata.annotations.get(PIPELINE_RUN_UID_ANNOTATION)
                    == Some(&run.metadata.uid)
        })
        .collect();
    trs.sort_by(|a, b| {
        let start = |r: &Resource| r.status["startTime"].as_str().unwrap_or("~").to_string();
        (start(a), &a.metadata.name).cmp(&(start(b), &b.metadata.name))
    });
    trs.iter().map(file).collect()
}

/// At most this much of one file is read at a time (a large log streams, not held).
const CHUNK: u64 = 1 << 20;

/// The complete lines written to `files` past `read` (which moves on), at most [`CHUNK`] of
/// each file.
fn fresh(files: &[PathBuf], read: &mut HashMap<PathBuf, u64>) -> String {
    let mut out = String::new();
    for f in files {
        let Ok(mut file) = std::fs::File::open(f) else {
            continue;
        };
        let at = read.get(f).copied().unwrap_or(0);
        if file.seek(SeekFrom::Start(at)).is_err() {
            continue;
        }
        let mut buf = Vec::new();
        if file.take(CHUNK).read_to_end(&mut buf).is_err() {
            continue;
        }
        // Only whole lines: a line being written is read on the next look.
        let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
            continue;
        };
        out.push_str(&String::from_utf8_lossy(&buf[..=end]));
        read.insert(f.clone(), at + end as u64 + 1);
    }
    out
}

async fn logs(
    State(p): State<Arc<Pipelines>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<LogsQuery>,
    kind: &'static str,
) -> Response {
    let Some(cp) = p.control() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response();
    };
    let run = match cp.find(kind, &ns, &name) {
        Ok(Some(r)) => r,
        Ok(None) => {
            return (
                StatusCode::NOT_FOUND,
                format!("{kind} {ns}/{name} not found\n"),
            )
                .into_response()
        }
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    };
    let follow = q.follow && !crate::status::is_done(&run.status);
    let stop = p.stop.clone();
    // What is written already, chunk by chunk; then (following) new lines until the run ends.
    let stream = futures::stream::unfold(
        (p, run, HashMap::new(), false),
        move |(p, run, mut read, last)| {
            let stop = stop.clone();
            async move {
                if last {
                    return None;
                }
                loop {
                    let now = if follow {
                        let cp = p.control()?;
                        cp.find(&run.kind, &run.metadata.namespace, &run.metadata.name)
                            .ok()
                            .flatten()
                            .filter(|r| r.metadata.uid == run.metadata.uid)
                    } else {
                        Some(run.clone())
                    };
                    // Gone or ended: what is left, then the end.
                    let ended = !follow
                        || now
                            .as_ref()
                            .is_none_or(|r| crate::status::is_done(&r.status));
                    let chunk = fresh(&files(&p, now.as_ref().unwrap_or(&run)), &mut read);
                    if !chunk.is_empty() {
                        return Some((Ok::<_, std::io::Error>(chunk), (p, run, read, false)));
                    }
                    if ended {
                        return None;
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        _ = tokio::time::sleep(FOLLOW_POLL) => {}
                    }
                }
            }
        },
    );
    let text = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    (text, Body::from_stream(stream)).into_response()
}
