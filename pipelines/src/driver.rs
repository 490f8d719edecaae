//! The pipeline scheduler: the system trigger `pipelines-scheduler` calls [`on_event`] for
//! every run event of a PipelineRun (its start, a TaskRun's end, `changed`), one at a time
//! per run. Each call is one level-triggered pass over what is stored — the run, its
//! Pipeline (kept in `status.pipelineSpec` from the start on), its TaskRuns (by their labels)
//! — so a repeated event, or one after a restart, does no harm:
//!
//! 1. admission (once): `spec.status: PipelineRunPending`, the Pipeline's
//!    `ferry.dev/max-concurrent-runs` (runs wait `Pending`, in order), then what must hold
//!    before anything runs (params, the graph, Tasks and workspaces);
//! 2. each pipeline task's state from its TaskRuns ([`fold`]), skips from the status;
//! 3. the [`scheduler`](crate::scheduler)'s moves: TaskRuns created (each one queued to the
//!    executor by its own reconcile), skips recorded, running TaskRuns cancelled through
//!    their `spec.status`;
//! 4. the run's status written (`Succeeded`, `childReferences`, `skippedTasks`, `results`,
//!    `completionTime`) and Tekton's event for the transition published after it;
//! 5. a wake-up armed for the next timeout.

use crate::dag::Dag;
use crate::events::{self, RunRef, Transition, CHANGED_TYPE};
use crate::executor::Ended;
use crate::kinds::{
    max_concurrent_runs, stored_pipeline, stored_task, MEMBER_OF_LABEL, PIPELINE_LABEL,
    PIPELINE_RUN_LABEL, PIPELINE_RUN_UID_ANNOTATION, PIPELINE_TASK_LABEL, TASK_LABEL,
};
use crate::params::{resolve, ParamValue};
use crate::pipelinerun::{check_bindings, expand, fold, pipeline_results, task_vars, RunId};
use crate::scheduler::{next, Action, Condition, Mode, Skip, TaskState, View};
use crate::spec::{PipelineRunSpec, PipelineSpec};
use crate::status::{self, set_condition};
use crate::taskrun::DEFAULT_TIMEOUT;
use crate::Pipelines;
use cloudevent::Event;
use control::{ControlPlane, Resource};
use dispatcher::subscriber::HandlerError;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// One scheduler pass for the PipelineRun `e` is about.
pub(crate) async fn on_event(p: &Arc<Pipelines>, e: &Event) -> Result<(), HandlerError> {
    let Some(run) = events::pipeline_run_of(e)? else {
        return Ok(());
    };
    let Some(cp) = p.control() else {
        return Err(HandlerError {
            retryable: true,
            message: "the control plane is not running yet".into(),
        });
    };
    // A TaskRun's end that this node's copy of the resources does not show yet (written by
    // another node, Kafka mode): looked at again once it does, so that the end is not missed.
    if let Some((ns, name, uid)) = events::ended_task_run(e) {
        let behind = match cp.find("TaskRun", &ns, &name) {
            Ok(Some(tr)) => tr.metadata.uid == uid && !status::is_done(&tr.status),
            Ok(None) => false,
            Err(_) => true,
        };
        if behind {
            return Err(HandlerError {
                retryable: true,
                message: format!(
                    "TaskRun {ns}/{name} has ended, but this node's store does not show it yet"
                ),
            });
        }
    }
    pass(p, &cp, &run).await.map_err(|message| HandlerError {
        retryable: true,
        message,
    })
}

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The PipelineRun's work: what it is, and what its tasks are.
struct Run {
    pr: Resource,
    spec: PipelineRunSpec,
    id: RunId,
    generation: i64,
    /// The node that owns it (this one).
    owner: String,
}

async fn pass(p: &Arc<Pipelines>, cp: &ControlPlane, run: &RunRef) -> Result<(), String> {
    let Some(pr) = cp
        .find("PipelineRun", &run.namespace, &run.name)
        .map_err(text)?
    else {
        // Deleted here: done with. Otherwise it may be another node's new run that this
        // node's copy of the resources does not show yet (Kafka mode): looked at again.
        if run.uid.is_empty() || p.is_deleting(&run.uid) {
            return Ok(());
        }
        return Err(format!(
            "PipelineRun {}/{} is not (yet) in this node's store",
            run.namespace, run.name
        ));
    };
    if !run.uid.is_empty() && pr.metadata.uid != run.uid {
        return Ok(());
    }
    if pr.metadata.generation < run.generation {
        // Changed on another node, and this node's copy does not show it yet (Kafka).
        return Err(format!(
            "PipelineRun {} changed (generation {}), not yet seen here",
            pr.key(),
            run.generation
        ));
    }
    // Another node's run (its own triggers take its events).
    if events::owner(&pr, &cp.config().node) != cp.config().node {
        return Ok(());
    }
    if p.is_deleting(&pr.metadata.uid) {
        // Being deleted: once it is gone this event is done with; if the delete failed, the
        // run goes on.
        return Err(format!("PipelineRun {} is being deleted", pr.key()));
    }
    if status::is_done(&pr.status) {
        // Its end may not have woken the runs waiting for its slot (a publish failed).
        p.forget_timer(&pr.metadata.uid);
        if let Some(pipeline) = pr.spec["pipelineRef"]["name"].as_str() {
            wake_waiting(cp, &pr.metadata.namespace, pipeline).await;
        }
        return Ok(());
    }
    let spec: PipelineRunSpec = match pr.spec_as() {
        Ok(s) => s,
        Err(e) => return finish_early(cp, &pr, "PipelineRunValidationFailed", &e).await,
    };
    // The pipeline: as it was when the run started, whatever happened to it since.
    let stored = spec
        .pipeline_ref
        .as_ref()
        .and_then(|r| stored_pipeline(cp, &pr.metadata.namespace, &r.name));
    let from_status: Option<PipelineSpec> = pr
        .status
        .get("pipelineSpec")
        .and_then(|s| serde_json::from_value(s.clone()).ok());
    let pipeline = match (
        from_status,
        &spec.pipeline_spec,
        &stored,
        &spec.pipeline_ref,
    ) {
        (Some(p), _, _, _) => p,
        (None, Some(p), _, _) => p.clone(),
        (None, None, Some((p, _)), _) => p.clone(),
        (None, None, None, r) => {
            let m = format!(
                "Pipeline {:?} not found in namespace {:?}",
                r.as_ref().map_or("", |r| r.name.as_str()),
                pr.metadata.namespace
            );
            return finish_early(cp, &pr, "CouldntGetPipeline", &m).await;
        }
    };
    let id = RunId {
        name: pr.metadata.name.clone(),
        namespace: pr.metadata.namespace.clone(),
        uid: pr.metadata.uid.clone(),
        pipeline: spec.pipeline_ref.as_ref().map(|r| r.name.clone()),
    };
    // The generation whose spec this pass acts on: a newer one (a cancel meanwhile) gets a
    // pass of its own.
    let generation = pr.metadata.generation;
    let mut run = Run {
        pr,
        spec,
        id,
        generation,
        owner: cp.config().node.clone(),
    };
    if status::time(&run.pr.status, "startTime").is_none() {
        let limit = stored.as_ref().and_then(|(_, r)| max_concurrent_runs(r));
        match admit(p, cp, &run, &pipeline, limit).await? {
            Some(started) => run.pr = started,
            None => return Ok(()),
        }
    }
    schedule(p, cp, &run, &pipeline).await
}

/// Starts the run if it may start now: `Some` (as stored, started) or `None` (it waits, or
/// failed before starting).
async fn admit(
    p: &Pipelines,
    cp: &ControlPlane,
    run: &Run,
    pipeline: &PipelineSpec,
    limit: Option<usize>,
) -> Result<Option<Resource>, String> {
    let pr = &run.pr;
    match Mode::of(run.spec.status.as_deref()) {
        Mode::Pending => {
            wait(cp, pr, "PipelineRun is pending").await?;
            return Ok(None);
        }
        Mode::Cancelled | Mode::CancelledRunFinally | Mode::StoppedRunFinally => {
            let m = format!(
                "PipelineRun {:?} was cancelled before it started",
                run.id.name
            );
            finish_early(cp, pr, "Cancelled", &m).await?;
            return Ok(None);
        }
        Mode::Normal => {}
    }
    // One admission at a time: two runs of one pipeline never both take the last slot.
    let _one = p.admission.lock().await;
    if let (Some(limit), Some(pipeline_name)) = (limit, &run.id.pipeline) {
        let runs: Vec<Resource> = cp
            .list("PipelineRun", Some(&pr.metadata.namespace))
            .map_err(text)?
            .into_iter()
            .filter(|r| {
                r.spec["pipelineRef"]["name"].as_str() == Some(pipeline_name.as_str())
                    && !status::is_done(&r.status)
                    && !p.is_deleting(&r.metadata.uid)
            })
            .collect();
        let running = runs
            .iter()
            .filter(|r| status::time(&r.status, "startTime").is_some())
            .count();
        let mut waiting: Vec<&Resource> = runs
            .iter()
            .filter(|r| {
                status::time(&r.status, "startTime").is_none()
                    && r.spec["status"].as_str() != Some("PipelineRunPending")
            })
            .collect();
        waiting.sort_by(|a, b| {
            (&a.metadata.creation_timestamp, &a.metadata.name)
                .cmp(&(&b.metadata.creation_timestamp, &b.metadata.name))
        });
        let place = waiting
            .iter()
            .position(|r| r.metadata.uid == pr.metadata.uid)
            .unwrap_or(0);
        if running + place >= limit {
            let m = format!(
                "waiting for a slot: Pipeline {pipeline_name:?} allows {limit} concurrent runs ({}), {running} running, {place} ahead of this one",
                crate::kinds::MAX_CONCURRENT_RUNS_ANNOTATION
            );
            wait(cp, pr, &m).await?;
            return Ok(None);
        }
    }
    let given = crate::spec::pairs(&run.spec.params);
    let problem = match resolve(&pipeline.params, &given) {
        Err(e) => Some((
            e.first().map_or("ParameterMissing", |e| e.reason),
            e.iter()
                .map(|e| e.message.clone())
                .collect::<Vec<_>>()
                .join("; "),
        )),
        Ok(_) => match Dag::of(pipeline) {
            Err(e) => Some((
                "PipelineValidationFailed",
                e.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )),
            Ok(_) => check_bindings(&run.spec, pipeline, |n| {
                stored_task(cp, &pr.metadata.namespace, n)
            })
            .err(),
        },
    };
    if let Some((reason, message)) = problem {
        finish_early(cp, pr, reason, &message).await?;
        return Ok(None);
    }
    let spec_doc = serde_json::to_value(pipeline).map_err(text)?;
    let generation = pr.metadata.generation;
    let me = cp.config().node.clone();
    let started = cp
        .update_status(&pr.key(), &pr.metadata.uid, |s| {
            if !s["node"].is_string() {
                s["node"] = json!(me);
            }
            s["startTime"] = json!(control::status::now());
            s["pipelineSpec"] = spec_doc;
            s["observedGeneration"] = json!(generation);
            set_condition(s, "Unknown", "Started", "");
        })
        .await
        .map_err(text)?;
    let Some(started) = started else {
        return Ok(None);
    };
    events::transition(cp, &started, Transition::Started).await?;
    Ok(Some(started))
}

/// The run waits (`Unknown`, `PipelineRunPending`, `message`).
async fn wait(cp: &ControlPlane, pr: &Resource, message: &str) -> Result<(), String> {
    let before = status::reason(&pr.status).to_string();
    let generation = pr.metadata.generation;
    let me = cp.config().node.clone();
    let r = cp
        .update_status(&pr.key(), &pr.metadata.uid, |s| {
            set_condition(s, "Unknown", "PipelineRunPending", message);
            s["observedGeneration"] = json!(generation);
            if !s["node"].is_string() {
                s["node"] = json!(me);
            }
        })
        .await
        .map_err(text)?;
    if let Some(r) = r.filter(|_| before != "PipelineRunPending") {
        events::transition(cp, &r, Transition::Unknown).await?;
    }
    Ok(())
}

/// The run fails before any task ran.
async fn finish_early(
    cp: &ControlPlane,
    pr: &Resource,
    reason: &str,
    message: &str,
) -> Result<(), String> {
    let generation = pr.metadata.generation;
    let r = cp
        .update_status(&pr.key(), &pr.metadata.uid, |s| {
            let now = control::status::now();
            if s.get("startTime").is_none() {
                s["startTime"] = json!(now);
            }
            s["completionTime"] = json!(now);
            s["observedGeneration"] = json!(generation);
            set_condition(s, "False", reason, message);
        })
        .await
        .map_err(text)?;
    if let Some(r) = r {
        events::transition(cp, &r, Transition::Failed).await?;
    }
    Ok(())
}

/// A pipeline task that failed before any TaskRun of it could run (its matrix too large, a
/// result it uses missing): `status.tasksNotRun[]`.
fn tasks_not_run(status: &Value) -> Vec<(String, String, String)> {
    status["tasksNotRun"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let s = |k: &str| t[k].as_str().unwrap_or("").to_string();
            (s("name"), s("reason"), s("message"))
        })
        .collect()
}

/// The run's TaskRuns by pipeline task, each task's in instance order.
fn children(
    p: &Pipelines,
    cp: &ControlPlane,
    run: &Run,
) -> Result<BTreeMap<String, Vec<Resource>>, String> {
    let mut out: BTreeMap<String, Vec<Resource>> = BTreeMap::new();
    for tr in cp.list("TaskRun", Some(&run.id.namespace)).map_err(text)? {
        let labels = &tr.metadata.labels;
        let mine = labels.get(PIPELINE_RUN_LABEL) == Some(&run.id.name)
            && tr.metadata.annotations.get(PIPELINE_RUN_UID_ANNOTATION) == Some(&run.id.uid)
            // One being deleted by hand is as good as gone: it is made anew.
            && !p.is_deleting(&tr.metadata.uid);
        if let (true, Some(task)) = (mine, labels.get(PIPELINE_TASK_LABEL)) {
            out.entry(task.clone()).or_default().push(tr);
        }
    }
    // In the order they were planned (a matrix's instances' order is its results' order).
    let planned: Vec<&str> = run.pr.status["childReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for runs in out.values_mut() {
        let place = |r: &Resource| {
            planned
                .iter()
                .position(|n| *n == r.metadata.name)
                .unwrap_or(usize::MAX)
        };
        runs.sort_by(|a, b| {
            (place(a), a.metadata.name.len(), &a.metadata.name).cmp(&(
                place(b),
                b.metadata.name.len(),
                &b.metadata.name,
            ))
        });
    }
    Ok(out)
}

/// The run's limits: `timeouts.pipeline` (Tekton's default 1 h; 0: none), `timeouts.tasks`,
/// `timeouts.finally` (from `status.finallyStartTime`).
struct Limits {
    pipeline: Option<Duration>,
    tasks: Option<Duration>,
    finally: Option<Duration>,
}

fn limits(spec: &PipelineRunSpec) -> Limits {
    let t = spec.timeouts.clone().unwrap_or_default();
    let parse = |v: Option<&String>| {
        v.and_then(|v| crate::validate::timeout(v).ok())
            .filter(|d| !d.is_zero())
    };
    Limits {
        pipeline: match &t.pipeline {
            Some(v) => parse(Some(v)),
            None => Some(DEFAULT_TIMEOUT),
        },
        tasks: parse(t.tasks.as_ref()),
        finally: parse(t.finally.as_ref()),
    }
}

async fn schedule(
    p: &Arc<Pipelines>,
    cp: &ControlPlane,
    run: &Run,
    pipeline: &PipelineSpec,
) -> Result<(), String> {
    let pr = &run.pr;
    let given = crate::spec::pairs(&run.spec.params);
    let params = resolve(&pipeline.params, &given).unwrap_or_default();
    let dag = Dag::of(pipeline).map_err(|e| format!("{e:?}"))?;
    let kids = children(p, cp, run)?;
    // The TaskRuns planned so far; a task with one of them not made yet is still running.
    let mut children_refs: Vec<Value> = pr.status["childReferences"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let missing = |task: &str| {
        children_refs
            .iter()
            .filter(|c| c["pipelineTaskName"] == task)
            .filter_map(|c| c["name"].as_str())
            .any(|n| {
                !kids
                    .get(task)
                    .is_some_and(|trs| trs.iter().any(|tr| tr.metadata.name == n))
            })
    };
    // Each task's state and results, from its TaskRuns.
    let mut states: BTreeMap<String, TaskState> = BTreeMap::new();
    let mut results: BTreeMap<String, BTreeMap<String, ParamValue>> = BTreeMap::new();
    for t in pipeline.tasks.iter().chain(&pipeline.finally) {
        let Some(trs) = kids.get(&t.name) else {
            continue;
        };
        let outcomes: Option<Vec<(Ended, BTreeMap<String, ParamValue>)>> = trs
            .iter()
            .map(|tr| status::ended(&tr.status).map(|e| (e, status::results(&tr.status))))
            .collect();
        match outcomes.filter(|_| !missing(&t.name)) {
            None => {
                states.insert(t.name.clone(), TaskState::Running);
            }
            Some(outcomes) => {
                let (state, rs) = fold(t, &outcomes);
                states.insert(t.name.clone(), state);
                results.insert(t.name.clone(), rs);
            }
        }
    }
    let mut skipped: Vec<(String, String)> = Vec::new();
    for s in pr.status["skippedTasks"].as_array().into_iter().flatten() {
        let (Some(name), Some(reason)) = (s["name"].as_str(), s["reason"].as_str()) else {
            continue;
        };
        if let Some(why) = Skip::from_reason(reason) {
            states.insert(name.to_string(), TaskState::Skipped(why));
            skipped.push((name.into(), reason.into()));
        }
    }
    let mut not_run = tasks_not_run(&pr.status);
    for (name, _, _) in &not_run {
        states.insert(name.clone(), TaskState::Failed { ignored: false });
    }
    // Timeouts.
    let start = status::time(&pr.status, "startTime").unwrap_or_else(SystemTime::now);
    let Limits {
        pipeline: pipeline_limit,
        tasks: tasks_limit,
        finally: finally_limit,
    } = limits(&run.spec);
    let texts = run.spec.timeouts.clone().unwrap_or_default();
    let now = SystemTime::now();
    let passed = |limit: Option<Duration>| limit.is_some_and(|d| now >= start + d);
    // `timeouts.finally` counts from when the first finally task was made.
    let finally_start = status::time(&pr.status, "finallyStartTime");
    let finally_timed_out = match (finally_start, finally_limit) {
        (Some(f), Some(d)) => now >= f + d,
        _ => false,
    };
    // Past `timeouts.finally`, finally is stopped as the whole run is at its timeout.
    let pipeline_timed_out = passed(pipeline_limit) || finally_timed_out;
    let tasks_timed_out = passed(tasks_limit);
    let mode = Mode::of(run.spec.status.as_deref());
    // Decide, until nothing new comes of it.
    let mut starts: Vec<String> = Vec::new();
    let mut cancels: BTreeSet<String> = BTreeSet::new();
    let mut n;
    let mut rounds = 0;
    loop {
        rounds += 1;
        let view = View {
            spec: pipeline,
            dag: &dag,
            states: &states,
            results: &results,
            params: &params,
            mode,
            tasks_timed_out,
            pipeline_timed_out,
        };
        n = next(&view);
        let mut changed = false;
        for a in n.actions.clone() {
            match a {
                Action::Start(name) => {
                    if states
                        .get(&name)
                        .is_none_or(|s| *s == TaskState::NotStarted)
                    {
                        // Substituted with what is known before it starts.
                        states.insert(name.clone(), TaskState::Running);
                        starts.push(name);
                        changed = true;
                    }
                }
                Action::Skip(name, why) => {
                    if !matches!(states.get(&name), Some(TaskState::Skipped(_))) {
                        skipped.push((name.clone(), why.reason().to_string()));
                        states.insert(name, TaskState::Skipped(why));
                        changed = true;
                    }
                }
                Action::Cancel(name) => {
                    cancels.insert(name);
                }
                Action::Fail(name, message) => {
                    if !not_run.iter().any(|(n, _, _)| *n == name) {
                        not_run.push((name.clone(), "InvalidTaskResultReference".into(), message));
                        states.insert(name, TaskState::Failed { ignored: false });
                        changed = true;
                    }
                }
            }
        }
        if !changed || rounds > 2 * (pipeline.tasks.len() + pipeline.finally.len()) + 2 {
            break;
        }
    }
    // Act: TaskRuns made for what starts (with what was known when it was decided), and for
    // a task whose TaskRuns were planned but not all made (a pass cut short).
    // Only while the run goes on: a stopping run makes nothing new.
    let going_on = mode == Mode::Normal && !pipeline_timed_out && !tasks_timed_out;
    let unfinished: Vec<String> = kids
        .keys()
        .filter(|t| going_on && missing(t))
        .cloned()
        .collect();
    let remaining = pipeline_limit.map(|d| (start + d).duration_since(now).unwrap_or_default());
    let mut planned: Vec<(String, String, Value)> = Vec::new();
    for name in starts.iter().chain(&unfinished) {
        let finally = pipeline.finally.iter().any(|t| t.name == *name);
        let Some(t) = pipeline
            .tasks
            .iter()
            .chain(&pipeline.finally)
            .find(|t| t.name == *name)
        else {
            continue;
        };
        let vars = task_vars(&run.id, pipeline, &params, &states, &results, finally);
        match expand(&run.id, &run.spec, t, &vars, &params) {
            Ok(runs) => {
                for mut child in runs {
                    // Without a timeout of its own a TaskRun gets what is left of the run's
                    // (none when the run has none), as Tekton does.
                    // A second more than what is left, so that the run's own timeout, with its
                    // reason, comes first.
                    if child.spec.timeout.is_none() {
                        child.spec.timeout = Some(match remaining {
                            Some(d) => format!("{}ms", d.as_millis() + 1000),
                            None => "0s".into(),
                        });
                    }
                    planned.push((
                        t.name.clone(),
                        child.name.clone(),
                        child_doc(run, t, finally, &child),
                    ));
                }
            }
            Err((reason, message)) => {
                not_run.push((name.clone(), reason.into(), message));
                states.insert(name.clone(), TaskState::Failed { ignored: false });
            }
        }
    }
    if !planned.is_empty() {
        // Planned in the status first: a pass cut short makes the rest next time.
        for (task, name, _) in &planned {
            if !children_refs.iter().any(|c| c["name"] == name.as_str()) {
                children_refs.push(child_ref(name, task));
            }
        }
        let refs = Value::Array(children_refs.clone());
        let finally_begins = planned
            .iter()
            .any(|(task, _, _)| pipeline.finally.iter().any(|f| f.name == *task));
        let stored = cp
            .update_status(&pr.key(), &pr.metadata.uid, |s| {
                s["childReferences"] = refs;
                if finally_begins && s.get("finallyStartTime").is_none() {
                    s["finallyStartTime"] = json!(control::status::now());
                }
            })
            .await
            .map_err(text)?;
        if stored.is_none() {
            // The run is gone (or another under its name): nothing to make.
            return Ok(());
        }
    }
    for (task, name, doc) in &planned {
        if p.is_deleting(&run.id.uid) {
            return Err(format!("PipelineRun {} is being deleted", pr.key()));
        }
        if let Err(why) = create_child(cp, run, name, doc).await? {
            // The task cannot run as written: it fails, the run goes on to its end.
            not_run.push((
                task.clone(),
                "CreateRunFailed".into(),
                format!("TaskRun {name}: {why}"),
            ));
            states.insert(task.clone(), TaskState::Failed { ignored: false });
            children_refs.retain(|c| c["name"] != name.as_str());
        }
    }
    // Cancel what must stop.
    let why = if pipeline_timed_out || tasks_timed_out {
        "TaskRun cancelled as the PipelineRun it belongs to has timed out."
    } else {
        "TaskRun cancelled as the PipelineRun it belongs to has been cancelled."
    };
    for task in &cancels {
        for tr in kids.get(task).into_iter().flatten() {
            if status::is_done(&tr.status) || tr.spec["status"] == "TaskRunCancelled" {
                continue;
            }
            let mut spec = tr.spec.clone();
            spec["status"] = json!("TaskRunCancelled");
            spec["statusMessage"] = json!(why);
            let doc = json!({
                "apiVersion": "tekton.dev/v1",
                "kind": "TaskRun",
                "metadata": {
                    "name": tr.metadata.name,
                    "namespace": tr.metadata.namespace,
                    "labels": tr.metadata.labels,
                    "annotations": tr.metadata.annotations,
                },
                "spec": spec,
            });
            cp.apply_owned(&doc).await.map_err(text)?;
        }
    }
    // The run's condition: what the scheduler says, once nothing runs any more.
    let running = states.values().any(|s| *s == TaskState::Running);
    let first_failure = not_run.first().cloned();
    let condition = match (&n.condition, running) {
        (c, false) if c.status != "Unknown" => match (&first_failure, c.reason) {
            (Some((_, reason, message)), _)
                if c.status == "False" && c.reason != "PipelineRunTimeout" =>
            {
                Condition {
                    status: "False",
                    reason: static_reason(reason),
                    message: message.clone(),
                }
            }
            (_, "PipelineRunTimeout") => Condition {
                message: format!(
                    "PipelineRun {:?} failed to finish within {:?}",
                    run.id.name,
                    if finally_timed_out {
                        texts.finally.clone().unwrap_or_default()
                    } else if pipeline_timed_out {
                        texts.pipeline.clone().unwrap_or_else(|| "1h0m0s".into())
                    } else {
                        texts.tasks.clone().unwrap_or_default()
                    }
                ),
                ..c.clone()
            },
            _ => c.clone(),
        },
        (c, _) if c.status == "Unknown" => c.clone(),
        (c, _) => Condition {
            status: "Unknown",
            reason: "Running",
            message: c.message.clone(),
        },
    };
    let done = condition.status != "Unknown";
    let before = status::reason(&pr.status).to_string();
    let out = if done {
        pipeline_results(pipeline, &states, &results)
    } else {
        Vec::new()
    };
    let generation = run.generation;
    let written = cp
        .update_status(&pr.key(), &pr.metadata.uid, |s| {
            s["observedGeneration"] = json!(generation);
            set_condition(s, condition.status, condition.reason, &condition.message);
            s["childReferences"] = Value::Array(children_refs.clone());
            s["skippedTasks"] = Value::Array(
                skipped
                    .iter()
                    .map(|(name, reason)| json!({"name": name, "reason": reason}))
                    .collect(),
            );
            if !not_run.is_empty() {
                s["tasksNotRun"] = Value::Array(
                    not_run
                        .iter()
                        .map(|(n, r, m)| json!({"name": n, "reason": r, "message": m}))
                        .collect(),
                );
            }
            if done {
                s["completionTime"] = json!(control::status::now());
                if !out.is_empty() {
                    s["results"] = status::pipeline_results(&out);
                }
            }
        })
        .await
        .map_err(text)?;
    let Some(written) = written else {
        return Ok(());
    };
    let transition = match (done, condition.status) {
        (true, "True") => Some(Transition::Successful),
        (true, _) => Some(Transition::Failed),
        (false, _) if condition.reason == "Running" && before != "Running" => {
            Some(Transition::Running)
        }
        (false, _) if condition.reason != before && condition.reason != "Running" => {
            Some(Transition::Unknown)
        }
        _ => None,
    };
    if let Some(t) = transition {
        events::transition(cp, &written, t).await?;
    }
    if written.metadata.generation != run.generation && !done {
        events::internal(cp, CHANGED_TYPE, &written, "spec").await?;
    }
    if done {
        p.forget_timer(&run.id.uid);
        if let Some(pipeline_name) = &run.id.pipeline {
            wake_waiting(cp, &run.id.namespace, pipeline_name).await;
        }
    } else {
        let finally_deadline = match (
            status::time(&written.status, "finallyStartTime"),
            finally_limit,
        ) {
            (Some(f), Some(d)) if !finally_timed_out => Some(f + d),
            _ => None,
        };
        let deadlines = [
            pipeline_limit.filter(|_| !pipeline_timed_out),
            tasks_limit.filter(|_| !tasks_timed_out),
        ];
        if let Some(at) = deadlines
            .into_iter()
            .flatten()
            .map(|d| start + d)
            .chain(finally_deadline)
            .min()
        {
            p.arm_timer(&written, at);
        }
    }
    Ok(())
}

/// The TaskRun document of `child`, labelled as Tekton labels a PipelineRun's TaskRuns.
fn child_doc(
    run: &Run,
    t: &crate::spec::PipelineTask,
    finally: bool,
    child: &crate::pipelinerun::ChildRun,
) -> Value {
    let mut labels = json!({
        PIPELINE_RUN_LABEL: run.id.name,
        PIPELINE_TASK_LABEL: t.name,
        MEMBER_OF_LABEL: if finally { "finally" } else { "tasks" },
    });
    if let Some(pl) = &run.id.pipeline {
        labels[PIPELINE_LABEL] = json!(pl);
    }
    if let Some(r) = &t.task_ref {
        labels[TASK_LABEL] = json!(r.name);
    }
    json!({
        "apiVersion": "tekton.dev/v1",
        "kind": "TaskRun",
        "metadata": {
            "name": child.name,
            "namespace": run.id.namespace,
            "labels": labels,
            "annotations": {
                PIPELINE_RUN_UID_ANNOTATION: run.id.uid,
                // Its run's node runs it: the run's workspaces are there.
                control::resource::NODE_ANNOTATION: run.owner,
            },
        },
        "spec": child.spec,
    })
}

/// Makes the TaskRun `doc` unless it exists (this run's: done already). `Ok(Err(why))`: it
/// cannot be made (invalid, or the name is another's).
async fn create_child(
    cp: &ControlPlane,
    run: &Run,
    name: &str,
    doc: &Value,
) -> Result<Result<(), String>, String> {
    if let Some(tr) = cp.find("TaskRun", &run.id.namespace, name).map_err(text)? {
        return Ok(
            match tr.metadata.annotations.get(PIPELINE_RUN_UID_ANNOTATION) == Some(&run.id.uid) {
                true => Ok(()),
                false => Err("the name belongs to another TaskRun".into()),
            },
        );
    }
    match cp.apply_owned(doc).await {
        Ok(_) => Ok(Ok(())),
        Err(control::ControlError::Invalid(list)) => Ok(Err(list
            .iter()
            .map(|f| format!("{}: {}", f.field, f.message))
            .collect::<Vec<_>>()
            .join("; "))),
        Err(e) => Err(e.to_string()),
    }
}

fn child_ref(name: &str, task: &str) -> Value {
    json!({
        "apiVersion": "tekton.dev/v1",
        "kind": "TaskRun",
        "name": name,
        "pipelineTaskName": task,
    })
}

/// The reasons a task can fail before running, as `'static` for the condition.
fn static_reason(reason: &str) -> &'static str {
    match reason {
        "InvalidTaskResultReference" => "InvalidTaskResultReference",
        "CouldntGetTask" => "CouldntGetTask",
        "CreateRunFailed" => "CreateRunFailed",
        _ => "PipelineValidationFailed",
    }
}

/// A run of `pipeline` ended: the runs waiting for a slot look again (the first in line
/// takes it).
pub(crate) async fn wake_waiting(cp: &ControlPlane, namespace: &str, pipeline: &str) {
    let Ok(runs) = cp.list("PipelineRun", Some(namespace)) else {
        return;
    };
    for r in runs.iter().filter(|r| {
        r.spec["pipelineRef"]["name"].as_str() == Some(pipeline)
            && status::reason(&r.status) == "PipelineRunPending"
            && r.spec["status"].as_str() != Some("PipelineRunPending")
    }) {
        if let Err(e) = events::internal(cp, CHANGED_TYPE, r, "slot").await {
            tracing::warn!(run = %r.key(), error = %e, "cannot wake a waiting PipelineRun");
        }
    }
}

impl Pipelines {
    /// Publishes `changed` for the run at `at` (once per run and deadline), so that its
    /// timeout is acted on. A restart re-arms it on the run's first pass.
    fn arm_timer(self: &Arc<Self>, pr: &Resource, at: SystemTime) {
        {
            let mut timers = self.timers.lock().unwrap_or_else(|p| p.into_inner());
            if timers.get(&pr.metadata.uid) == Some(&at) {
                return;
            }
            timers.insert(pr.metadata.uid.clone(), at);
        }
        let me = Arc::downgrade(self);
        let pr = pr.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let Some(p) = me.upgrade() else { return };
            let current = p
                .timers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&pr.metadata.uid)
                == Some(&at);
            if !current {
                return;
            }
            p.forget_timer(&pr.metadata.uid);
            if let Some(cp) = p.control() {
                if let Err(e) = events::internal(&cp, CHANGED_TYPE, &pr, "timeout").await {
                    tracing::warn!(run = %pr.key(), error = %e, "cannot publish a PipelineRun's timeout");
                }
            }
        });
    }

    pub(crate) fn forget_timer(&self, uid: &str) {
        self.timers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
    }
}
