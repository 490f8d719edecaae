//! A PipelineRun driven to its end in this process: the [`scheduler`](crate::scheduler) says
//! what to start or skip, each pipeline task becomes TaskRuns (one per matrix combination,
//! again per retry) whose steps the [`executor`](crate::executor) runs, and the run's results
//! are gathered. This is the library the control plane's executor and scheduler (which pass
//! the same transitions through the broker as Tekton's CloudEvents) are built from; the
//! upstream examples run through it in `tests/pipelineruns.rs`.

use crate::dag::{result_pairs, Dag};
use crate::executor::{execute, Ended, Options, OutputSink};
use crate::matrix::{combinations, is_matrixed};
use crate::params::{resolve, ParamValue};
use crate::plan::{plan, Context};
use crate::sandbox::{Sandbox, WorkspaceDir};
use crate::scheduler::{next, Action, Condition, Mode, TaskState, View};
use crate::spec::{PipelineRunSpec, PipelineSpec, PipelineTask, TaskSpec, WorkspaceBinding};
use crate::subst::Vars;
use control::resource::parse_go_duration;
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

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

/// What one pipeline task came to.
struct TaskDone {
    name: String,
    state: TaskState,
    results: BTreeMap<String, ParamValue>,
    runs: Vec<TaskRunRecord>,
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

    /// Runs one pipeline task: its TaskRuns (matrix instances, retries), to one state.
    async fn pipeline_task(
        &self,
        id: &RunId,
        run: &PipelineRunSpec,
        t: &PipelineTask,
        mut vars: Vars,
        params: &BTreeMap<String, ParamValue>,
        cancel: CancellationToken,
    ) -> TaskDone {
        let done = |state, results, runs| TaskDone {
            name: t.name.clone(),
            state,
            results,
            runs,
        };
        let (spec, embedded) = match (&t.task_spec, &t.task_ref) {
            (Some(s), _) => (s.spec.clone(), true),
            (None, Some(r)) => match self.tasks.get(&r.name) {
                Some(s) => (s.clone(), false),
                None => {
                    let ended = Ended {
                        succeeded: false,
                        reason: "CouldntGetTask".into(),
                        message: format!("Task {:?} not found", r.name),
                    };
                    let record = TaskRunRecord {
                        name: format!("{}-{}", id.name, t.name),
                        pipeline_task: t.name.clone(),
                        retries: 0,
                        ended,
                        results: BTreeMap::new(),
                    };
                    return done(
                        TaskState::Failed { ignored: false },
                        BTreeMap::new(),
                        vec![record],
                    );
                }
            },
            (None, None) => {
                return done(
                    TaskState::Failed { ignored: false },
                    BTreeMap::new(),
                    Vec::new(),
                )
            }
        };
        let retries = t.retries.unwrap_or(0);
        vars.set("context.pipelineTask.retries", retries.to_string());
        // Explicit values, after the run's own (propagated into embedded specs only).
        let mut given: Vec<(String, ParamValue)> = Vec::new();
        if embedded {
            given.extend(params.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        given.extend(
            t.params
                .iter()
                .map(|p| (p.name.clone(), substitute(&p.value, &vars))),
        );
        // The matrix: each combination a TaskRun of its own.
        let instances: Vec<Vec<(String, ParamValue)>> = if is_matrixed(t.matrix.as_ref()) {
            let m = t.matrix.clone().unwrap_or_default();
            let arrays: Vec<(String, Vec<String>)> = m
                .params
                .iter()
                .map(|p| {
                    let values = match substitute(&p.value, &vars) {
                        ParamValue::Array(a) => a,
                        ParamValue::String(s) => vec![s],
                        ParamValue::Object(o) => o.into_values().collect(),
                    };
                    (p.name.clone(), values)
                })
                .collect();
            let include: Vec<Vec<(String, String)>> = m
                .include
                .iter()
                .map(|i| {
                    i.params
                        .iter()
                        .map(|p| match substitute(&p.value, &vars) {
                            ParamValue::String(s) => (p.name.clone(), s),
                            other => (
                                p.name.clone(),
                                serde_json::to_string(&other).unwrap_or_default(),
                            ),
                        })
                        .collect()
                })
                .collect();
            let combos = combinations(&arrays, &include);
            if combos.len() > crate::validate::MAX_MATRIX_COMBINATIONS {
                let ended = Ended {
                    succeeded: false,
                    reason: "PipelineValidationFailed".into(),
                    message: format!(
                        "matrix of {:?} has {} combinations; at most {}",
                        t.name,
                        combos.len(),
                        crate::validate::MAX_MATRIX_COMBINATIONS
                    ),
                };
                let record = TaskRunRecord {
                    name: format!("{}-{}", id.name, t.name),
                    pipeline_task: t.name.clone(),
                    retries: 0,
                    ended,
                    results: BTreeMap::new(),
                };
                return done(
                    TaskState::Failed { ignored: false },
                    BTreeMap::new(),
                    vec![record],
                );
            }
            combos
                .into_iter()
                .map(|c| {
                    let mut g = given.clone();
                    g.extend(c.into_iter().map(|(k, v)| (k, ParamValue::String(v))));
                    g
                })
                .collect()
        } else {
            vec![given]
        };
        let matrixed = is_matrixed(t.matrix.as_ref());
        let timeout = run
            .task_run_specs
            .iter()
            .find(|s| s.pipeline_task_name == t.name)
            .and_then(|s| s.timeout.clone())
            .or_else(|| t.timeout.clone());
        let attempts = instances.iter().enumerate().map(|(i, given)| {
            let name = if matrixed {
                format!("{}-{}-{i}", id.name, t.name)
            } else {
                format!("{}-{}", id.name, t.name)
            };
            let spec = spec.clone();
            let timeout = timeout.clone();
            let cancel = cancel.clone();
            // An embedded spec sees the run's params and its pipeline task's, declared or not.
            let vars_params: BTreeMap<String, ParamValue> = if embedded {
                given.iter().cloned().collect()
            } else {
                BTreeMap::new()
            };
            async move {
                self.task_run(
                    id,
                    run,
                    t,
                    &name,
                    &spec,
                    given,
                    &vars_params,
                    retries,
                    timeout,
                    &cancel,
                )
                .await
            }
        });
        let outcomes: Vec<(Ended, BTreeMap<String, ParamValue>, Vec<TaskRunRecord>)> =
            futures::future::join_all(attempts).await;
        let all_ok = outcomes.iter().all(|(e, _, _)| e.succeeded);
        let mut runs = Vec::new();
        let mut results = BTreeMap::new();
        if matrixed {
            // String results gathered into arrays, in instance order.
            for (_, rs, _) in &outcomes {
                for (k, v) in rs {
                    if let ParamValue::String(s) = v {
                        let entry = results
                            .entry(k.clone())
                            .or_insert_with(|| ParamValue::Array(Vec::new()));
                        if let ParamValue::Array(a) = entry {
                            a.push(s.clone());
                        }
                    }
                }
            }
        } else if let Some((_, rs, _)) = outcomes.first() {
            results = rs.clone();
        }
        for (_, _, r) in outcomes {
            runs.extend(r);
        }
        let cancelled = runs.iter().any(|r| r.ended.reason == "TaskRunCancelled");
        let state = if all_ok {
            TaskState::Succeeded
        } else if cancelled {
            results.clear();
            TaskState::Cancelled
        } else if t.on_error.as_deref() == Some("continue") {
            TaskState::Failed { ignored: true }
        } else {
            results.clear();
            TaskState::Failed { ignored: false }
        };
        done(state, results, runs)
    }

    /// One TaskRun, retried up to `retries` times.
    #[allow(clippy::too_many_arguments)]
    async fn task_run(
        &self,
        id: &RunId,
        run: &PipelineRunSpec,
        t: &PipelineTask,
        name: &str,
        spec: &TaskSpec,
        given: &[(String, ParamValue)],
        propagated: &BTreeMap<String, ParamValue>,
        retries: u32,
        timeout: Option<String>,
        cancel: &CancellationToken,
    ) -> (Ended, BTreeMap<String, ParamValue>, Vec<TaskRunRecord>) {
        let mut records = Vec::new();
        let mut last = (
            Ended {
                succeeded: false,
                reason: "Failed".into(),
                message: "never ran".into(),
            },
            BTreeMap::new(),
        );
        for attempt in 0..=retries {
            let (ended, results) = self
                .attempt(
                    id,
                    run,
                    t,
                    name,
                    spec,
                    given,
                    propagated,
                    attempt,
                    timeout.as_deref(),
                    cancel,
                )
                .await;
            records.push(TaskRunRecord {
                name: name.to_string(),
                pipeline_task: t.name.clone(),
                retries: attempt,
                ended: ended.clone(),
                results: results.clone(),
            });
            // A cancelled attempt is not retried.
            let stop = ended.succeeded || ended.reason == "TaskRunCancelled";
            last = (ended, results);
            if stop {
                break;
            }
        }
        (last.0, last.1, records)
    }

    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        id: &RunId,
        run: &PipelineRunSpec,
        t: &PipelineTask,
        name: &str,
        spec: &TaskSpec,
        given: &[(String, ParamValue)],
        propagated: &BTreeMap<String, ParamValue>,
        attempt: u32,
        timeout: Option<&str>,
        cancel: &CancellationToken,
    ) -> (Ended, BTreeMap<String, ParamValue>) {
        let fail = |reason: &str, message: String| {
            (
                Ended {
                    succeeded: false,
                    reason: reason.into(),
                    message,
                },
                BTreeMap::new(),
            )
        };
        let resolved = match resolve(&spec.params, given) {
            Ok(p) => p,
            Err(e) => {
                let m = e
                    .iter()
                    .map(|e| e.message.clone())
                    .collect::<Vec<_>>()
                    .join("; ");
                return fail(e.first().map_or("ParameterMissing", |e| e.reason), m);
            }
        };
        // Propagated params the task does not declare are still substituted (inline specs).
        let mut all = propagated.clone();
        all.extend(resolved);
        let run_dir = self.run_dir(id).join(format!("{name}-{attempt}"));
        let mut workspaces = BTreeMap::new();
        for w in &spec.workspaces {
            let bound = t.workspaces.iter().find(|b| b.name == w.name);
            let host = bound.and_then(|b| {
                let pw = b.workspace.clone().unwrap_or_else(|| b.name.clone());
                run.workspaces.iter().find(|r| r.name == pw).map(|binding| {
                    self.workspace_dir(id, binding, &run_dir, &w.name, b.sub_path.as_deref())
                })
            });
            if host.is_none() && !w.optional {
                return fail(
                    "InvalidWorkspaceBindings",
                    format!("workspace {:?} of task {:?} is not bound", w.name, t.name),
                );
            }
            if let Some(h) = &host {
                if let Err(e) = std::fs::create_dir_all(h) {
                    return fail(
                        "Failed",
                        format!("cannot create workspace {}: {e}", h.display()),
                    );
                }
            }
            workspaces.insert(
                w.name.clone(),
                WorkspaceDir {
                    host,
                    mount_path: w.mount_path.clone(),
                },
            );
        }
        let sandbox = match Sandbox::new(&run_dir, &workspaces, self.private_view) {
            Ok(s) => s,
            Err(e) => {
                return fail(
                    "Failed",
                    format!("cannot prepare {}: {e}", run_dir.display()),
                )
            }
        };
        let ctx = Context {
            task_run_name: name.to_string(),
            task_run_namespace: id.namespace.clone(),
            task_run_uid: format!("{}-{name}-{attempt}", id.uid),
            task_name: t
                .task_ref
                .as_ref()
                .map(|r| r.name.clone())
                .unwrap_or_default(),
            retry_count: attempt,
            pipeline_run: Some((id.name.clone(), id.namespace.clone(), id.uid.clone())),
            pipeline_name: id.pipeline.clone(),
            pipeline_task_retries: t.retries.unwrap_or(0),
        };
        let steps = match plan(spec, &all, &ctx, &sandbox.view, &self.shell) {
            Ok(s) => s,
            Err(e) => {
                return fail(
                    "TaskRunValidationFailed",
                    format!("{}: {}", e.step, e.message),
                )
            }
        };
        let limit = match timeout {
            Some(t) => match parse_go_duration(t) {
                Ok(d) if d.is_zero() => None,
                Ok(d) => Some(d),
                Err(e) => return fail("TaskRunValidationFailed", format!("timeout {t:?}: {e}")),
            },
            None => Some(DEFAULT_TIMEOUT),
        };
        let mut env = self.env.clone();
        env.push((
            "HOME".into(),
            sandbox.view.home.to_string_lossy().into_owned(),
        ));
        let opts = Options {
            max_result_size: self.max_result_size,
            env,
            default_dir: sandbox.host.home.clone(),
            deadline: limit.map(|d| tokio::time::Instant::now() + d),
            timeout_text: timeout.map(str::to_string),
            output: self.output.clone(),
        };
        let out = execute(&steps, spec, &sandbox, &opts, cancel).await;
        (out.ended, out.results)
    }

    /// The run's own directory: namespace, name and uid, so that no two runs share one.
    fn run_dir(&self, id: &RunId) -> PathBuf {
        self.work_dir
            .join(&id.namespace)
            .join(format!("{}-{}", id.name, id.uid))
    }

    /// Where a run's workspace binding is on this machine.
    fn workspace_dir(
        &self,
        id: &RunId,
        binding: &WorkspaceBinding,
        run_dir: &std::path::Path,
        task_workspace: &str,
        sub_path: Option<&str>,
    ) -> PathBuf {
        let base = if binding.empty_dir.is_some() {
            // One TaskRun's own, not shared.
            run_dir.join("emptydir").join(task_workspace)
        } else {
            self.run_dir(id).join("workspaces").join(&binding.name)
        };
        let mut dir = base;
        for s in [binding.sub_path.as_deref(), sub_path]
            .into_iter()
            .flatten()
        {
            dir = dir.join(s);
        }
        dir
    }
}

/// The pipeline's results: each value substituted; omitted when a task it uses failed, was
/// skipped or did not write the result (#6139).
fn pipeline_results(
    pipeline: &PipelineSpec,
    states: &BTreeMap<String, TaskState>,
    results: &BTreeMap<String, BTreeMap<String, ParamValue>>,
) -> Vec<(String, ParamValue)> {
    let mut v = Vars::default();
    let finals: Vec<&str> = pipeline.finally.iter().map(|t| t.name.as_str()).collect();
    for (task, rs) in results {
        let usable = matches!(
            states.get(task),
            Some(TaskState::Succeeded | TaskState::Failed { ignored: true })
        );
        if !usable {
            continue;
        }
        let prefix = if finals.contains(&task.as_str()) {
            "finally"
        } else {
            "tasks"
        };
        for (name, value) in rs {
            v.set_value(format!("{prefix}.{task}.results.{name}"), value);
        }
    }
    let texts = |p: &ParamValue| -> Vec<String> {
        match p {
            ParamValue::String(s) => vec![s.clone()],
            ParamValue::Array(a) => a.clone(),
            ParamValue::Object(o) => o.values().cloned().collect(),
        }
    };
    let mut out = Vec::new();
    for r in &pipeline.results {
        let refs: Vec<(String, String)> = texts(&r.value)
            .iter()
            .flat_map(|t| {
                let as_tasks = t.replace("$(finally.", "$(tasks.");
                result_pairs(&as_tasks)
            })
            .collect();
        let complete = refs.iter().all(|(task, name)| {
            matches!(
                states.get(task),
                Some(TaskState::Succeeded | TaskState::Failed { ignored: true })
            ) && results.get(task).is_some_and(|rs| rs.contains_key(name))
        });
        if complete {
            out.push((r.name.clone(), substitute(&r.value, &v)));
        }
    }
    out
}
