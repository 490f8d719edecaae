//! A PipelineRun driven to its end in this process: the [`scheduler`](crate::scheduler) says
//! what to start or skip, each pipeline task becomes TaskRuns (one per matrix combination,
//! again per retry) whose steps the [`executor`](crate::executor) runs, and the run's results
//! are gathered. This is the library the control plane's executor and scheduler (which pass
//! the same transitions through the broker as Tekton's CloudEvents) are built from; the
//! upstream examples run through it in `tests/pipelineruns.rs`.

use crate::dag::Dag;
use crate::executor::{Ended, OutputSink};
use crate::params::{resolve, ParamValue};
use crate::scheduler::{next, Action, Condition, Mode, TaskState, View};
use crate::spec::{PipelineRunSpec, PipelineSpec, TaskSpec};
use crate::subst::Vars;
use control::resource::parse_go_duration;
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

mod results;
mod task;

use results::pipeline_results;
use task::TaskDone;

/// Tekton's default TaskRun timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);

/// What runs pipelines here.
#[derive(Clone)]
pub struct Runner {
    /// Tasks by name, for `taskRef`s.
    pub tasks: BTreeMap<String, TaskSpec>,
    /// Where runs keep their files.
    pub work_dir: PathBuf,
    /// The interpreter of scripts without `#!` (`--pipelines-shell`).
    pub shell: String,
    /// Steps get a private view of `/tekton` and `/workspace`.
    pub private_view: bool,
    pub max_result_size: usize,
    /// Added to every step's environment.
    pub env: Vec<(String, String)>,
    pub output: OutputSink,
}

/// The run's identity.
#[derive(Clone, Debug, Default)]
pub struct RunId {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub pipeline: Option<String>,
}

/// One TaskRun (one attempt of one matrix instance of one pipeline task).
#[derive(Clone, Debug, PartialEq)]
pub struct TaskRunRecord {
    pub name: String,
    pub pipeline_task: String,
    pub retries: u32,
    pub ended: Ended,
    pub results: BTreeMap<String, ParamValue>,
}

/// How a PipelineRun ended.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRecord {
    pub condition: Condition,
    pub results: Vec<(String, ParamValue)>,
    /// `status.skippedTasks`: (task, reason).
    pub skipped: Vec<(String, &'static str)>,
    pub task_runs: Vec<TaskRunRecord>,
}

fn failed(reason: &'static str, message: String) -> RunRecord {
    RunRecord {
        condition: Condition {
            status: "False",
            reason,
            message,
        },
        results: Vec::new(),
        skipped: Vec::new(),
        task_runs: Vec::new(),
    }
}

/// A param value with `vars` substituted (a whole `$(x[*])` string becomes the array).
fn substitute(value: &ParamValue, vars: &Vars) -> ParamValue {
    match value {
        ParamValue::String(s) => match (vars.whole_array(s), vars.whole_object(s)) {
            (Some(a), _) => ParamValue::Array(a.clone()),
            (None, Some(o)) => ParamValue::Object(o.clone()),
            (None, None) => ParamValue::String(vars.replace(s)),
        },
        ParamValue::Array(a) => ParamValue::Array(vars.expand_list(a)),
        ParamValue::Object(o) => ParamValue::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), vars.replace(v)))
                .collect(),
        ),
    }
}

impl Runner {
    /// Runs `pipeline` as the PipelineRun `run` to its end.
    pub async fn run(
        &self,
        id: &RunId,
        run: &PipelineRunSpec,
        pipeline: &PipelineSpec,
    ) -> RunRecord {
        let given: Vec<(String, ParamValue)> = run
            .params
            .iter()
            .map(|p| (p.name.clone(), p.value.clone()))
            .collect();
        let params = match resolve(&pipeline.params, &given) {
            Ok(p) => p,
            Err(e) => {
                let reason = e.first().map_or("ParameterMissing", |e| e.reason);
                let message = e
                    .iter()
                    .map(|e| e.message.clone())
                    .collect::<Vec<_>>()
                    .join("; ");
                return failed(reason, message);
            }
        };
        let dag = match Dag::of(pipeline) {
            Ok(d) => d,
            Err(e) => {
                let m = e
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ");
                return failed("PipelineValidationFailed", m);
            }
        };
        if let Err((reason, message)) = self.check_bindings(run, pipeline) {
            return failed(reason, message);
        }
        let mut states: BTreeMap<String, TaskState> = BTreeMap::new();
        let mut results: BTreeMap<String, BTreeMap<String, ParamValue>> = BTreeMap::new();
        let mut skipped = Vec::new();
        let mut task_runs = Vec::new();
        let mut running = FuturesUnordered::new();
        let mut invalid: Option<String> = None;
        // Timeouts: `timeouts.pipeline` (Tekton's default 1 h, 0 none), `timeouts.tasks`.
        let limit = |t: Option<&String>| -> Result<Option<Duration>, String> {
            match t {
                None => Ok(None),
                Some(t) => parse_go_duration(t)
                    .map(|d| (!d.is_zero()).then_some(d))
                    .map_err(|e| format!("timeout {t:?}: {e}")),
            }
        };
        let timeouts = run.timeouts.clone().unwrap_or_default();
        let (pipeline_limit, tasks_limit) = match (
            limit(timeouts.pipeline.as_ref()),
            limit(timeouts.tasks.as_ref()),
        ) {
            (Ok(p), Ok(t)) => (
                if timeouts.pipeline.is_some() {
                    p
                } else {
                    Some(DEFAULT_TIMEOUT)
                },
                t,
            ),
            (Err(e), _) | (_, Err(e)) => return failed("PipelineValidationFailed", e),
        };
        let started = tokio::time::Instant::now();
        let pipeline_deadline = pipeline_limit.map(|d| started + d);
        let tasks_deadline = tasks_limit.map(|d| started + d);
        let (mut pipeline_timed_out, mut tasks_timed_out) = (false, false);
        let mut cancels: BTreeMap<String, CancellationToken> = BTreeMap::new();
        let condition = loop {
            let now = tokio::time::Instant::now();
            pipeline_timed_out |= pipeline_deadline.is_some_and(|d| now >= d);
            tasks_timed_out |= tasks_deadline.is_some_and(|d| now >= d);
            let view = View {
                spec: pipeline,
                dag: &dag,
                states: &states,
                results: &results,
                params: &params,
                mode: Mode::of(run.status.as_deref()),
                tasks_timed_out,
                pipeline_timed_out,
            };
            let n = next(&view);
            for a in n.actions {
                match a {
                    Action::Start(name) => {
                        let finally = pipeline.finally.iter().any(|t| t.name == name);
                        let Some(t) = pipeline
                            .tasks
                            .iter()
                            .chain(&pipeline.finally)
                            .find(|t| t.name == name)
                        else {
                            continue;
                        };
                        let vars =
                            self.task_vars(id, pipeline, &params, &states, &results, finally);
                        states.insert(name.clone(), TaskState::Running);
                        let cancel = CancellationToken::new();
                        cancels.insert(name.clone(), cancel.clone());
                        running.push(self.pipeline_task(id, run, t, vars, &params, cancel));
                    }
                    Action::Skip(name, why) => {
                        skipped.push((name.clone(), why.reason()));
                        states.insert(name, TaskState::Skipped(why));
                    }
                    Action::Cancel(name) => {
                        // Takes effect when the task reports it has stopped.
                        if let Some(c) = cancels.get(&name) {
                            c.cancel();
                        }
                    }
                    Action::Fail(name, message) => {
                        invalid.get_or_insert(message);
                        states.insert(name, TaskState::Failed { ignored: false });
                    }
                }
            }
            if n.condition.status != "Unknown" && running.is_empty() {
                break match &invalid {
                    // A result reference that could not be resolved is why the run failed.
                    Some(m) => Condition {
                        status: "False",
                        reason: "InvalidTaskResultReference",
                        message: m.clone(),
                    },
                    None if n.condition.reason == "PipelineRunTimeout" => Condition {
                        message: format!(
                            "PipelineRun {:?} failed to finish within {:?}",
                            id.name,
                            if pipeline_timed_out {
                                timeouts.pipeline.clone().unwrap_or_else(|| "1h0m0s".into())
                            } else {
                                timeouts.tasks.clone().unwrap_or_default()
                            }
                        ),
                        ..n.condition
                    },
                    None => n.condition,
                };
            }
            // The next deadline that has not passed yet, if any.
            let deadline = [
                pipeline_deadline.filter(|_| !pipeline_timed_out),
                tasks_deadline.filter(|_| !tasks_timed_out),
            ]
            .into_iter()
            .flatten()
            .min();
            let wake = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                done = running.next() => match done {
                    Some(done) => {
                        let done: TaskDone = done;
                        cancels.remove(&done.name);
                        results.insert(done.name.clone(), done.results);
                        states.insert(done.name, done.state);
                        task_runs.extend(done.runs);
                    }
                    None => break n.condition,
                },
                _ = wake => {}
            }
        };
        RunRecord {
            condition,
            results: pipeline_results(pipeline, &states, &results),
            skipped,
            task_runs,
        }
    }

    /// What must hold before anything starts (as Tekton checks it): every referenced Task
    /// exists, the pipeline's required workspaces are bound by the run, and every task's
    /// required workspaces are given one of the pipeline's.
    fn check_bindings(
        &self,
        run: &PipelineRunSpec,
        pipeline: &PipelineSpec,
    ) -> Result<(), (&'static str, String)> {
        for w in pipeline.workspaces.iter().filter(|w| !w.optional) {
            if !run.workspaces.iter().any(|b| b.name == w.name) {
                return Err((
                    "InvalidWorkspaceBindings",
                    format!("pipeline workspace {:?} is not bound by the run", w.name),
                ));
            }
        }
        for t in pipeline.tasks.iter().chain(&pipeline.finally) {
            let spec = match (&t.task_spec, &t.task_ref) {
                (Some(s), _) => &s.spec,
                (None, Some(r)) => match self.tasks.get(&r.name) {
                    Some(s) => s,
                    None => {
                        return Err((
                            "CouldntGetTask",
                            format!("pipeline task {:?}: Task {:?} not found", t.name, r.name),
                        ))
                    }
                },
                (None, None) => continue,
            };
            for w in spec.workspaces.iter().filter(|w| !w.optional) {
                let given = t.workspaces.iter().find(|b| b.name == w.name);
                let bound = given.is_some_and(|b| {
                    let pw = b.workspace.as_deref().unwrap_or(&b.name);
                    pipeline.workspaces.iter().any(|p| p.name == pw)
                });
                if !bound {
                    return Err((
                        "InvalidWorkspaceBindings",
                        format!(
                            "pipeline task {:?} does not bind the task's workspace {:?} to one of the pipeline's",
                            t.name, w.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// What a pipeline task's fields are substituted with.
    fn task_vars(
        &self,
        id: &RunId,
        pipeline: &PipelineSpec,
        params: &BTreeMap<String, ParamValue>,
        states: &BTreeMap<String, TaskState>,
        results: &BTreeMap<String, BTreeMap<String, ParamValue>>,
        finally: bool,
    ) -> Vars {
        let mut v = Vars::default();
        for (name, value) in params {
            v.set_value(format!("params.{name}"), value);
        }
        for (task, rs) in results {
            for (name, value) in rs {
                v.set_value(format!("tasks.{task}.results.{name}"), value);
            }
        }
        v.set("context.pipelineRun.name", id.name.clone());
        v.set("context.pipelineRun.namespace", id.namespace.clone());
        v.set("context.pipelineRun.uid", id.uid.clone());
        if let Some(p) = &id.pipeline {
            v.set("context.pipeline.name", p.clone());
        }
        if finally {
            for (k, value) in crate::scheduler::status_vars(pipeline, states) {
                v.set(k, value);
            }
        }
        v
    }
}
