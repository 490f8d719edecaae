//! The pipeline scheduler: this node's system trigger `pipelines-scheduler-{node}` calls [`on_event`] for
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
//!
//! `admit.rs`: step 1 and the waiting runs woken when a slot frees; `children.rs`: the run's
//! TaskRuns found and made; `timers.rs`: the wake-ups.

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

mod admit;
mod children;
mod timers;

pub(crate) use admit::wake_waiting;
use admit::{admit, finish_early};
use children::{child_doc, child_ref, children, create_child};

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
    let dag = Dag::of(pipeline).map_err(|e| {
        e.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })?;
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
                        child_doc(run, t, finally, &child, &cp.config().node),
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

/// The reasons a task can fail before running, as `'static` for the condition.
fn static_reason(reason: &str) -> &'static str {
    match reason {
        "InvalidTaskResultReference" => "InvalidTaskResultReference",
        "CouldntGetTask" => "CouldntGetTask",
        "CreateRunFailed" => "CreateRunFailed",
        _ => "PipelineValidationFailed",
    }
}
