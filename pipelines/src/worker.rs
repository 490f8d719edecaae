//! The executor: the system trigger `pipelines-executor` hands each queued TaskRun to
//! [`on_queued`], which starts it on this node (unless it runs here already or has ended) and
//! acknowledges the event at once; the TaskRun then runs in its own task:
//!
//! 1. a slot of `--pipelines-max-running-tasks` (waiting `Pending` if none is free);
//! 2. its Task (stored, or embedded) and params resolved into a [`Job`];
//! 3. each attempt: `status` Running (`startTime`, `taskSpec`) and Tekton's `started` /
//!    `running` events; the steps; the outcome written (`steps` with exit codes,
//!    `results`, `Succeeded`); a failed attempt with retries left goes into
//!    `retriesStatus` and the next one starts;
//! 4. Tekton's `successful` or `failed` event, after the status is stored.
//!
//! A TaskRun whose status says it was running when Ferry stopped (its processes died with
//! Ferry, or were reclaimed at start) is queued again by its reconcile: that attempt is
//! reported failed with a message saying so, and the next one runs if it has retries.

use crate::events::{self, Transition};
use crate::executor::{Outcome, OutputSink};
use crate::kinds::{PIPELINE_LABEL, PIPELINE_RUN_LABEL, PIPELINE_RUN_UID_ANNOTATION};
use crate::spec::TaskRunSpec;
use crate::status::{self, set_condition};
use crate::taskrun::{failed, Job, RunId};
use crate::{Pipelines, Running};
use cloudevent::Event;
use control::{ControlPlane, Resource};
use dispatcher::subscriber::HandlerError;
use serde_json::json;
use std::io::Write;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// Starts the TaskRun a `queued` event names, unless it has ended or runs here already.
pub(crate) async fn on_queued(p: &Arc<Pipelines>, e: &Event) -> Result<(), HandlerError> {
    let what = events::queued(e)?;
    let Some(cp) = p.control() else {
        return Err(HandlerError {
            retryable: true,
            message: "the control plane is not running yet".into(),
        });
    };
    let tr = match cp.find("TaskRun", &what.namespace, &what.name) {
        Ok(Some(tr)) if tr.metadata.uid == what.uid => tr,
        Ok(Some(_)) => return Ok(()),
        // Another node made it and this node's copy of the resources has not caught up yet
        // (Kafka mode); or it was deleted since: tried again with backoff, then dead-lettered.
        // Deleted here: done with.
        Ok(None) if p.is_deleting(&what.uid) => return Ok(()),
        Ok(None) => {
            return Err(HandlerError {
                retryable: true,
                message: format!(
                    "TaskRun {}/{} is not (yet) in this node's store",
                    what.namespace, what.name
                ),
            })
        }
        Err(e) => {
            return Err(HandlerError {
                retryable: true,
                message: e.to_string(),
            })
        }
    };
    if status::is_done(&tr.status) || events::owner(&tr, &cp.config().node) != cp.config().node {
        return Ok(());
    }
    let key = tr.key();
    let (cancel, stopped) = (CancellationToken::new(), CancellationToken::new());
    {
        let mut running = p.lock_running();
        if running.get(&key).is_some_and(|r| r.uid == tr.metadata.uid) {
            return Ok(());
        }
        running.insert(
            key.clone(),
            Running {
                uid: tr.metadata.uid.clone(),
                cancel: cancel.clone(),
                stopped: stopped.clone(),
            },
        );
    }
    let p = p.clone();
    let uid = tr.metadata.uid.clone();
    tokio::spawn(async move {
        let failed = run(&p, &cp, tr, &cancel).await.err();
        {
            let mut running = p.lock_running();
            if running.get(&key).is_some_and(|r| r.uid == uid) {
                running.remove(&key);
            }
        }
        stopped.cancel();
        if let Some(e) = failed {
            // Its status could not be stored: queued again in a while, when the attempt that
            // was under way counts as interrupted (or is run again if it had not begun).
            tracing::warn!(taskrun = %key, error = %e, "TaskRun stopped early; queuing it again");
            p.unsee(&uid);
            tokio::time::sleep(REQUEUE_AFTER).await;
            cp.requeue(key);
        }
    });
    Ok(())
}

/// The PipelineRun a TaskRun belongs to, from its labels.
pub(crate) fn pipeline_run(tr: &Resource) -> Option<RunId> {
    let labels = &tr.metadata.labels;
    Some(RunId {
        name: labels.get(PIPELINE_RUN_LABEL)?.clone(),
        namespace: tr.metadata.namespace.clone(),
        uid: tr
            .metadata
            .annotations
            .get(PIPELINE_RUN_UID_ANNOTATION)?
            .clone(),
        pipeline: labels.get(PIPELINE_LABEL).cloned(),
    })
}

/// Writes `change` into the TaskRun's status unless it has ended meanwhile (cancelled before
/// it ran): the TaskRun as stored, or `None` (gone, or ended by another writer).
async fn write(
    cp: &ControlPlane,
    tr: &Resource,
    change: impl FnOnce(&mut serde_json::Value),
) -> Result<Option<Resource>, String> {
    let applied = std::sync::atomic::AtomicBool::new(false);
    let written = cp
        .update_status(&tr.key(), &tr.metadata.uid, |s| {
            if !status::is_done(s) {
                change(s);
                applied.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok(written.filter(|_| applied.load(std::sync::atomic::Ordering::Relaxed)))
}

/// Publishes Tekton's event for a TaskRun whose status is stored, trying a few times: the
/// scheduler waits for it (a restart's pass would find the status anyway).
async fn announce(cp: &ControlPlane, tr: &Resource, what: Transition) -> Result<(), String> {
    let mut wait = PUBLISH_RETRY;
    for _ in 0..PUBLISH_TRIES {
        match events::transition(cp, tr, what).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(taskrun = %tr.key(), error = %e, "cannot publish a TaskRun's event; trying again")
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(PUBLISH_RETRY_MAX);
    }
    events::transition(cp, tr, what).await
}

/// First wait between tries of [`announce`] (doubling).
const PUBLISH_RETRY: std::time::Duration = std::time::Duration::from_millis(100);
const PUBLISH_TRIES: u32 = 12;
/// Longest wait between tries.
const PUBLISH_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5);
/// A TaskRun whose executor failed (its status could not be stored) is queued again after this.
const REQUEUE_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

async fn run(
    p: &Pipelines,
    cp: &ControlPlane,
    tr: Resource,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let spec: TaskRunSpec = tr.spec_as()?;
    let pr = pipeline_run(&tr);
    let mut attempt = status::retries_used(&tr.status);
    let retries = spec.retries.unwrap_or(0);
    let mut tr = tr;
    // It was running when Ferry stopped: that attempt is over.
    if status::time(&tr.status, "startTime").is_some() {
        let message =
            "Ferry stopped while this TaskRun's steps were running; they were killed with it";
        let last = attempt >= retries;
        let Some(now) = write(cp, &tr, |s| {
            set_condition(s, "False", "Failed", message);
            s["completionTime"] = json!(control::status::now());
            if !last {
                status::retry(s);
            }
        })
        .await?
        else {
            return Ok(());
        };
        if last {
            return announce(cp, &now, Transition::Failed).await;
        }
        attempt += 1;
        tr = now;
    }
    // A slot.
    let _permit = match p.slots.clone().try_acquire_owned() {
        Ok(permit) => permit,
        Err(_) => {
            let m = format!(
                "waiting for one of the {} task slots (--pipelines-max-running-tasks)",
                p.config.max_running_tasks
            );
            if let Some(now) =
                write(cp, &tr, |s| set_condition(s, "Unknown", "Pending", &m)).await?
            {
                tr = now;
            }
            tokio::select! {
                permit = p.slots.clone().acquire_owned() => permit.map_err(|e| e.to_string())?,
                _ = cancel.cancelled() => return cancelled(cp, &tr).await,
            }
        }
    };
    if cancel.is_cancelled() || tr.spec["status"] == "TaskRunCancelled" {
        return cancelled(cp, &tr).await;
    }
    let task = spec
        .task_ref
        .as_ref()
        .and_then(|r| crate::kinds::stored_task(cp, &tr.metadata.namespace, &r.name));
    let job = match Job::new(
        &tr.metadata.namespace,
        &tr.metadata.name,
        &tr.metadata.uid,
        &spec,
        task,
        pr,
    ) {
        Ok(j) => j,
        Err(ended) => {
            let outcome = Outcome {
                steps: Vec::new(),
                results: Default::default(),
                ended,
            };
            return finish(cp, &tr, &outcome, &crate::spec::TaskSpec::default()).await;
        }
    };
    let log = output(p, &job);
    let private_view = p.runner().private_view;
    let task_spec = serde_json::to_value(&job.spec).map_err(|e| e.to_string())?;
    loop {
        let first = attempt == 0;
        let me = cp.config().node.clone();
        let Some(now) = write(cp, &tr, |s| {
            // Whoever runs it owns it (a TaskRun of its own, started here).
            if !s["node"].is_string() {
                s["node"] = json!(me);
            }
            s["startTime"] = json!(control::status::now());
            s["podName"] = json!("");
            s["taskSpec"] = task_spec.clone();
            set_condition(
                s,
                "Unknown",
                "Running",
                "Not all Steps in the Task have finished executing",
            );
            if !private_view {
                s["ferry"] = json!({"containerPaths": "not available: this system allows no private mount namespace (unshare), so steps see the run's real directories; scripts naming /tekton or /workspace literally will not find them"});
            }
        })
        .await?
        else {
            return Ok(());
        };
        tr = now;
        // Each of Tekton's event types at most once per run (retries are not new runs).
        if first {
            // Nothing waits for these two: a failure to publish them is logged, not fatal
            // (the steps have not run; failing here would cost the TaskRun an attempt).
            for t in [Transition::Started, Transition::Running] {
                if let Err(e) = events::transition(cp, &tr, t).await {
                    tracing::warn!(taskrun = %tr.key(), error = %e, "cannot publish a TaskRun's event");
                }
            }
        }
        let outcome = p.runner().attempt(&job, attempt, cancel, log.clone()).await;
        if p.is_deleting(&tr.metadata.uid) {
            // Deleted by hand while it ran: its PipelineRun makes it anew.
            return Ok(());
        }
        let e = &outcome.ended;
        let over = e.succeeded || e.reason == "TaskRunCancelled" || attempt >= job.retries;
        if over {
            return finish(cp, &tr, &outcome, &job.spec).await;
        }
        let Some(now) = write(cp, &tr, |s| {
            *s = status::attempt_ended(s, &outcome, &job.spec);
            status::retry(s);
        })
        .await?
        else {
            return Ok(());
        };
        announce(cp, &now, Transition::Unknown).await?;
        tr = now;
        attempt += 1;
    }
}

/// The TaskRun ended with `outcome`: its status, then Tekton's event.
async fn finish(
    cp: &ControlPlane,
    tr: &Resource,
    outcome: &Outcome,
    spec: &crate::spec::TaskSpec,
) -> Result<(), String> {
    let mut outcome = outcome.clone();
    if outcome.ended.reason == "TaskRunCancelled" {
        // Why, as whoever cancelled it said (the PipelineRun's timeout, its cancel): the
        // spec as it is now, not as it was when the TaskRun started.
        let now = cp
            .find("TaskRun", &tr.metadata.namespace, &tr.metadata.name)
            .ok()
            .flatten();
        if let Some(m) = now.as_ref().and_then(|t| t.spec["statusMessage"].as_str()) {
            outcome.ended.message = m.to_string();
        }
    }
    let Some(now) = write(cp, tr, |s| *s = status::attempt_ended(s, &outcome, spec)).await? else {
        return Ok(());
    };
    let t = if outcome.ended.succeeded {
        Transition::Successful
    } else {
        Transition::Failed
    };
    announce(cp, &now, t).await
}

/// The TaskRun was cancelled before it ran.
pub(crate) async fn cancelled(cp: &ControlPlane, tr: &Resource) -> Result<(), String> {
    let message = tr.spec["statusMessage"]
        .as_str()
        .unwrap_or("TaskRun was cancelled")
        .to_string();
    let outcome = Outcome {
        steps: Vec::new(),
        results: Default::default(),
        ended: failed("TaskRunCancelled", message),
    };
    finish(cp, tr, &outcome, &crate::spec::TaskSpec::default()).await
}

/// Where a TaskRun's steps' output goes: its `output.log`, each line prefixed
/// `[{task}/{step}]` (the pipeline task, or the TaskRun's name for one of its own).
fn output(p: &Pipelines, job: &Job) -> OutputSink {
    let path = p.runner().log_file(job);
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path);
    let file = match file {
        Ok(f) => Some(Mutex::new(f)),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot write a TaskRun's output");
            None
        }
    };
    let task = match &job.pipeline_run {
        Some(pr) => job
            .name
            .strip_prefix(&format!("{}-", pr.name))
            .unwrap_or(&job.name)
            .to_string(),
        None => job.name.clone(),
    };
    Arc::new(move |container: &str, _stderr: bool, line: &str| {
        let step = container.strip_prefix("step-").unwrap_or(container);
        if let Some(f) = &file {
            let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(f, "[{task}/{step}] {line}");
        }
    })
}
