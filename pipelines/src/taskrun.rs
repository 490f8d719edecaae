//! One attempt of a TaskRun, on this machine: its Task and params resolved into a [`Job`], its
//! directory and workspaces made, its steps planned and run by the [`executor`](crate::executor).
//! The control plane's executor (a system trigger on `dev.ferry.pipelines.taskrun.queued.v1`)
//! calls it once per attempt and writes each attempt's outcome into the TaskRun's status.
//!
//! Where a TaskRun's files are: `{work}/{namespace}/{taskrun}-{uid}/` for one of its own,
//! `{work}/{namespace}/{pipelinerun}-{uid}/{taskrun}/` for one of a PipelineRun's (so deleting
//! the PipelineRun's directory removes its TaskRuns'), each attempt in `attempt-N/`, the
//! output in `output.log`; `persistentVolumeClaim` and `volumeClaimTemplate` workspaces in
//! `workspaces/CLAIM` of the PipelineRun (shared by its tasks) or of the TaskRun.

use crate::executor::{execute, Ended, Options, Outcome, OutputSink};
use crate::params::{resolve, ParamValue};
use crate::plan::{plan, Context};
use crate::sandbox::{Sandbox, WorkspaceDir};
use crate::spec::{TaskRunSpec, TaskSpec, WorkspaceBinding};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Tekton's default TaskRun timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);

/// How TaskRuns run here.
#[derive(Clone)]
pub struct Runner {
    /// Where runs keep their files.
    pub work_dir: PathBuf,
    /// The interpreter of scripts without `#!` (`--pipelines-shell`).
    pub shell: String,
    /// Steps get a private view of `/tekton` and `/workspace`.
    pub private_view: bool,
    pub max_result_size: usize,
    /// Added to every step's environment.
    pub env: Vec<(String, String)>,
    /// Starts steps tied to Ferry's life (`None`: plain children, in tests).
    pub spawner: Option<std::sync::Arc<control::process::Spawner>>,
}

/// The PipelineRun a TaskRun belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunId {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// The Pipeline's name when it was referenced.
    pub pipeline: Option<String>,
}

/// A TaskRun ready to run.
#[derive(Clone, Debug)]
pub struct Job {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub spec: TaskSpec,
    /// The Task is embedded (`taskSpec`): params given but not declared are still substituted
    /// (Tekton's propagation).
    pub embedded: bool,
    pub params: Vec<(String, ParamValue)>,
    pub workspaces: Vec<WorkspaceBinding>,
    pub timeout: Option<String>,
    pub retries: u32,
    /// The referenced Task's name (`$(context.task.name)`).
    pub task_name: String,
    pub pipeline_run: Option<RunId>,
}

impl Job {
    /// The job of a TaskRun `spec`; `task` is the referenced Task's spec (`None`: not found).
    pub fn new(
        namespace: &str,
        name: &str,
        uid: &str,
        spec: &TaskRunSpec,
        task: Option<TaskSpec>,
        pipeline_run: Option<RunId>,
    ) -> Result<Job, Ended> {
        let (task_spec, embedded, task_name) = match (&spec.task_spec, &spec.task_ref) {
            (Some(s), _) => (s.clone(), true, String::new()),
            (None, Some(r)) => match task {
                Some(t) => (t, false, r.name.clone()),
                None => {
                    return Err(failed(
                        "CouldntGetTask",
                        format!("Task {:?} not found in namespace {namespace:?}", r.name),
                    ))
                }
            },
            (None, None) => {
                return Err(failed(
                    "TaskRunValidationFailed",
                    "a TaskRun needs a taskRef or a taskSpec".into(),
                ))
            }
        };
        Ok(Job {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
            spec: task_spec,
            embedded,
            params: crate::spec::pairs(&spec.params),
            workspaces: spec.workspaces.clone(),
            timeout: spec.timeout.clone(),
            retries: spec.retries.unwrap_or(0),
            task_name,
            pipeline_run,
        })
    }
}

/// A TaskRun's `Succeeded` condition when it failed.
pub fn failed(reason: &str, message: String) -> Ended {
    Ended {
        succeeded: false,
        reason: reason.into(),
        message,
    }
}

fn not_run(reason: &str, message: String) -> Outcome {
    Outcome {
        steps: Vec::new(),
        results: BTreeMap::new(),
        ended: failed(reason, message),
    }
}

impl Runner {
    /// The directory of the PipelineRun `id`.
    pub fn pipeline_run_dir(&self, id: &RunId) -> PathBuf {
        self.work_dir
            .join(&id.namespace)
            .join(format!("{}-{}", id.name, id.uid))
    }

    /// The directory of a TaskRun (inside its PipelineRun's, if it has one).
    pub fn task_run_dir(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        pipeline_run: Option<&RunId>,
    ) -> PathBuf {
        match pipeline_run {
            Some(pr) => self.pipeline_run_dir(pr).join(name),
            None => self.work_dir.join(namespace).join(format!("{name}-{uid}")),
        }
    }

    fn job_dir(&self, job: &Job) -> PathBuf {
        self.task_run_dir(
            &job.namespace,
            &job.name,
            &job.uid,
            job.pipeline_run.as_ref(),
        )
    }

    /// Where a TaskRun's steps' output is written.
    pub fn log_file(&self, job: &Job) -> PathBuf {
        self.job_dir(job).join(OUTPUT_LOG)
    }

    /// Where a workspace binding is on this machine.
    fn workspace_dir(
        &self,
        job: &Job,
        attempt_dir: &std::path::Path,
        b: &WorkspaceBinding,
    ) -> PathBuf {
        let mut dir = if b.empty_dir.is_some() {
            // One attempt's own, not shared.
            attempt_dir.join("emptydir").join(&b.name)
        } else {
            let claim = b
                .persistent_volume_claim
                .as_ref()
                .and_then(|c| c.get("claimName"))
                .and_then(Value::as_str)
                .unwrap_or(&b.name);
            let owner = match &job.pipeline_run {
                Some(pr) => self.pipeline_run_dir(pr),
                None => self.job_dir(job),
            };
            owner.join("workspaces").join(claim)
        };
        if let Some(s) = &b.sub_path {
            dir = dir.join(s);
        }
        dir
    }

    /// One attempt of `job` (0 the first, 1 the first retry, ...): its steps' output goes to
    /// `output`; `cancel` stops it.
    pub async fn attempt(
        &self,
        job: &Job,
        attempt: u32,
        cancel: &CancellationToken,
        output: OutputSink,
    ) -> Outcome {
        let resolved = match resolve(&job.spec.params, &job.params) {
            Ok(p) => p,
            Err(e) => {
                let m = e
                    .iter()
                    .map(|e| e.message.clone())
                    .collect::<Vec<_>>()
                    .join("; ");
                return not_run(e.first().map_or("ParameterMissing", |e| e.reason), m);
            }
        };
        // Params given but not declared are still substituted in an embedded spec.
        let mut all: BTreeMap<String, ParamValue> = if job.embedded {
            job.params.iter().cloned().collect()
        } else {
            BTreeMap::new()
        };
        all.extend(resolved);
        let attempt_dir = self.job_dir(job).join(format!("attempt-{attempt}"));
        let mut workspaces = BTreeMap::new();
        for w in &job.spec.workspaces {
            let bound = job.workspaces.iter().find(|b| b.name == w.name);
            if bound.is_some_and(|b| b.config_map.is_some() || b.secret.is_some()) {
                return not_run(
                    "TaskRunValidationFailed",
                    format!(
                        "workspace {:?}: configMap and secret workspaces are not supported yet",
                        w.name
                    ),
                );
            }
            let host = bound.map(|b| self.workspace_dir(job, &attempt_dir, b));
            if host.is_none() && !w.optional {
                return not_run(
                    "InvalidWorkspaceBindings",
                    format!("workspace {:?} of the task is not bound", w.name),
                );
            }
            if let Some(h) = &host {
                if let Err(e) = std::fs::create_dir_all(h) {
                    return not_run(
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
        let sandbox = match Sandbox::new(&attempt_dir, &workspaces, self.private_view) {
            Ok(s) => s,
            Err(e) => {
                return not_run(
                    "Failed",
                    format!("cannot prepare {}: {e}", attempt_dir.display()),
                )
            }
        };
        let pr = job.pipeline_run.as_ref();
        let ctx = Context {
            task_run_name: job.name.clone(),
            task_run_namespace: job.namespace.clone(),
            task_run_uid: job.uid.clone(),
            task_name: job.task_name.clone(),
            retry_count: attempt,
            pipeline_run: pr.map(|p| (p.name.clone(), p.namespace.clone(), p.uid.clone())),
            pipeline_name: pr.and_then(|p| p.pipeline.clone()),
            pipeline_task_retries: job.retries,
        };
        let steps = match plan(&job.spec, &all, &ctx, &sandbox.view, &self.shell) {
            Ok(s) => s,
            Err(e) => {
                return not_run(
                    "TaskRunValidationFailed",
                    format!("{}: {}", e.step, e.message),
                )
            }
        };
        let limit = match job.timeout.as_deref() {
            Some(t) => match crate::validate::timeout(t) {
                Ok(d) if d.is_zero() => None,
                Ok(d) => Some(d),
                Err(e) => return not_run("TaskRunValidationFailed", format!("timeout {t:?}: {e}")),
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
            timeout_text: job.timeout.clone(),
            output,
            spawner: self.spawner.clone(),
        };
        execute(&steps, &job.spec, &sandbox, &opts, cancel).await
    }
}

/// The name of a TaskRun's output file.
pub const OUTPUT_LOG: &str = "output.log";
