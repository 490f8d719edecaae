//! One pipeline task's TaskRuns: the Task found or embedded (run params propagated into an
//! embedded one), one TaskRun per matrix combination, each attempted up to `retries` + 1 times
//! in its own directory and view of its workspaces; their outcomes folded into the task's state.

use super::{substitute, RunId, Runner, TaskRunRecord, DEFAULT_TIMEOUT};
use crate::executor::{execute, Ended, Options};
use crate::matrix::{combinations, is_matrixed};
use crate::params::{resolve, ParamValue};
use crate::plan::{plan, Context};
use crate::sandbox::{Sandbox, WorkspaceDir};
use crate::scheduler::TaskState;
use crate::spec::{PipelineRunSpec, PipelineTask, TaskSpec, WorkspaceBinding};
use crate::subst::Vars;
use control::resource::parse_go_duration;
use std::collections::BTreeMap;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// What one pipeline task came to.
pub(super) struct TaskDone {
    pub(super) name: String,
    pub(super) state: TaskState,
    pub(super) results: BTreeMap<String, ParamValue>,
    pub(super) runs: Vec<TaskRunRecord>,
}

/// What one TaskRun (of a pipeline task, or of one matrix combination of it) runs.
struct TaskRunInput<'a> {
    id: &'a RunId,
    run: &'a PipelineRunSpec,
    t: &'a PipelineTask,
    name: String,
    spec: TaskSpec,
    given: Vec<(String, ParamValue)>,
    /// Params an embedded spec sees besides its own.
    propagated: BTreeMap<String, ParamValue>,
    retries: u32,
    timeout: Option<String>,
    cancel: CancellationToken,
}

impl TaskDone {
    /// `t` failed before any TaskRun could run (its Task missing, its matrix too large).
    fn failed(id: &RunId, t: &PipelineTask, reason: &str, message: String) -> TaskDone {
        let record = TaskRunRecord {
            name: format!("{}-{}", id.name, t.name),
            pipeline_task: t.name.clone(),
            retries: 0,
            ended: Ended {
                succeeded: false,
                reason: reason.into(),
                message,
            },
            results: BTreeMap::new(),
        };
        TaskDone {
            name: t.name.clone(),
            state: TaskState::Failed { ignored: false },
            results: BTreeMap::new(),
            runs: vec![record],
        }
    }
}

impl Runner {
    /// Runs one pipeline task: its TaskRuns (matrix instances, retries), to one state.
    pub(super) async fn pipeline_task(
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
                    let m = format!("Task {:?} not found", r.name);
                    return TaskDone::failed(id, t, "CouldntGetTask", m);
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
                let m = format!(
                    "matrix of {:?} has {} combinations; at most {}",
                    t.name,
                    combos.len(),
                    crate::validate::MAX_MATRIX_COMBINATIONS
                );
                return TaskDone::failed(id, t, "PipelineValidationFailed", m);
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
            let input = TaskRunInput {
                id,
                run,
                t,
                name,
                spec: spec.clone(),
                given: given.clone(),
                // An embedded spec sees the run's params and its pipeline task's, declared
                // or not.
                propagated: if embedded {
                    given.iter().cloned().collect()
                } else {
                    BTreeMap::new()
                },
                retries,
                timeout: timeout.clone(),
                cancel: cancel.clone(),
            };
            async move { self.task_run(&input).await }
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
    async fn task_run(
        &self,
        input: &TaskRunInput<'_>,
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
        for attempt in 0..=input.retries {
            let (ended, results) = self.attempt(input, attempt).await;
            records.push(TaskRunRecord {
                name: input.name.clone(),
                pipeline_task: input.t.name.clone(),
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

    /// One attempt of a TaskRun: its directory, workspaces and view, its steps planned and run.
    async fn attempt(
        &self,
        input: &TaskRunInput<'_>,
        attempt: u32,
    ) -> (Ended, BTreeMap<String, ParamValue>) {
        let TaskRunInput {
            id,
            run,
            t,
            name,
            spec,
            given,
            propagated,
            cancel,
            ..
        } = input;
        let timeout = input.timeout.as_deref();
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
