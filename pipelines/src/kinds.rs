//! Pipelines' kinds (`tekton.dev/v1`), each implementing [`control::Kind`]:
//!
//! - Task and Pipeline (here): stored definitions, validated with every bad field named.
//! - `taskrun.rs`: TaskRun: queued to the executor when created (and after a restart);
//!   cancelled through `spec.status`.
//! - `pipelinerun.rs`: PipelineRun: handed to the scheduler when created, changed, past a
//!   timeout or after a restart; deleted with its TaskRuns and directories.

mod pipelinerun;
mod taskrun;

use crate::params::resolve;
use crate::params::ParamSpec;
use crate::spec::{PipelineSpec, TaskSpec};
use crate::Pipelines;
use control::kind::Flags;
use control::kind::KindInfo;
use control::{ControlPlane, FieldErrors, Kind, Reconciled, Registry, Resource};
use serde_json::Value;
use std::sync::Arc;

pub const GROUP: &str = "tekton.dev";
/// Tekton's labels on a PipelineRun's TaskRuns.
pub const PIPELINE_RUN_LABEL: &str = "tekton.dev/pipelineRun";
pub const PIPELINE_TASK_LABEL: &str = "tekton.dev/pipelineTask";
pub const PIPELINE_LABEL: &str = "tekton.dev/pipeline";
pub const TASK_LABEL: &str = "tekton.dev/task";
pub const MEMBER_OF_LABEL: &str = "tekton.dev/memberOf";
/// The uid of the PipelineRun a TaskRun belongs to (a run recreated under the same name is
/// another run).
pub const PIPELINE_RUN_UID_ANNOTATION: &str = "ferry.dev/pipeline-run-uid";
/// On a Pipeline: how many of its runs may run at once; the others wait, `Pending`.
pub const MAX_CONCURRENT_RUNS_ANNOTATION: &str = "ferry.dev/max-concurrent-runs";

/// Registers the four kinds, in reconcile order.
pub fn register(registry: &mut Registry, p: &Arc<Pipelines>) {
    registry.register(Task);
    registry.register(Pipeline);
    registry.register(taskrun::TaskRun(p.clone()));
    registry.register(pipelinerun::PipelineRun(p.clone()));
}

/// The columns of both runs.
const RUN_COLUMNS: &[&str] = &["SUCCEEDED", "REASON", "STARTED", "DURATION"];

fn run_row(r: &Resource) -> Vec<String> {
    let (started, duration) = crate::status::started_and_duration(&r.status);
    vec![
        crate::status::succeeded(&r.status)
            .unwrap_or("Unknown")
            .to_string(),
        crate::status::reason(&r.status).to_string(),
        started,
        duration,
    ]
}

/// A Task's spec, if it is stored.
pub(crate) fn stored_task(cp: &ControlPlane, namespace: &str, name: &str) -> Option<TaskSpec> {
    let r = cp.find("Task", namespace, name).ok().flatten()?;
    r.spec_as().ok()
}

/// A Pipeline, if it is stored.
pub(crate) fn stored_pipeline(
    cp: &ControlPlane,
    namespace: &str,
    name: &str,
) -> Option<(PipelineSpec, Resource)> {
    let r = cp.find("Pipeline", namespace, name).ok().flatten()?;
    let spec = r.spec_as().ok()?;
    Some((spec, r))
}

/// A run's params against what its Task or Pipeline (`declared`, when it is known) declares:
/// a value missing, of the wrong type; every problem under `spec.params`. Checked only when the
/// run is made, against its Task or Pipeline as they are then (a later change to them must not
/// keep the run from being cancelled). Undeclared params are accepted, as Tekton does.
fn check_params_when_made(
    p: &Pipelines,
    r: &Resource,
    given: &[crate::spec::Param],
    errors: &mut FieldErrors,
    declared: impl FnOnce(&ControlPlane) -> Option<Vec<ParamSpec>>,
) {
    let Some(cp) = p.control() else { return };
    let made = !r.metadata.generated
        && matches!(
            cp.find(&r.kind, &r.metadata.namespace, &r.metadata.name),
            Ok(Some(_))
        );
    if made {
        return;
    }
    let Some(declared) = declared(&cp) else {
        return;
    };
    if let Err(problems) = resolve(&declared, &crate::spec::pairs(given)) {
        for problem in problems {
            errors.push("spec.params", problem.message);
        }
    }
}

/// Runs' specs may change only in `status` (to cancel) once they exist, as Tekton allows.
fn immutable_run_spec(old: &Resource, new: &Resource, errors: &mut FieldErrors) {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("status");
            o.remove("statusMessage");
        }
        v
    };
    if strip(&old.spec) != strip(&new.spec) {
        errors.push(
            "spec",
            "a run's spec cannot change once it exists (only spec.status may, to cancel it); delete it and apply a new one, or use metadata.generateName",
        );
    }
}

/// A Task: steps, params, results, workspaces.
pub struct Task;

static TASK: KindInfo = KindInfo {
    group: GROUP,
    version: "v1",
    kind: "Task",
    plural: "tasks",
    short_names: &[],
    addressable: false,
    columns: &["STEPS", "PARAMS"],
};

#[async_trait::async_trait]
impl Kind for Task {
    fn info(&self) -> &'static KindInfo {
        &TASK
    }

    fn validate(&self, r: &Resource, errors: &mut FieldErrors) {
        if let Some(t) = errors.decode::<TaskSpec>("spec", &r.spec) {
            crate::validate::task("spec", &t, errors);
        }
    }

    async fn reconcile(&self, _cp: &ControlPlane, r: &Resource, _pass: Flags) -> Reconciled {
        Reconciled::done(r.status.clone())
    }

    fn row(&self, r: &Resource) -> Vec<String> {
        let count = |f: &str| r.spec[f].as_array().map_or(0, Vec::len).to_string();
        vec![count("steps"), count("params")]
    }
}

/// A Pipeline: tasks as a DAG, finally, results; optionally a limit on concurrent runs.
pub struct Pipeline;

static PIPELINE: KindInfo = KindInfo {
    group: GROUP,
    version: "v1",
    kind: "Pipeline",
    plural: "pipelines",
    short_names: &[],
    addressable: false,
    columns: &["TASKS", "FINALLY"],
};

#[async_trait::async_trait]
impl Kind for Pipeline {
    fn info(&self) -> &'static KindInfo {
        &PIPELINE
    }

    fn validate(&self, r: &Resource, errors: &mut FieldErrors) {
        if let Some(p) = errors.decode::<PipelineSpec>("spec", &r.spec) {
            crate::validate::pipeline("spec", &p, errors);
        }
        if let Some(v) = r.metadata.annotations.get(MAX_CONCURRENT_RUNS_ANNOTATION) {
            if !v.parse::<u32>().is_ok_and(|n| n > 0) {
                errors.push(
                    &format!("metadata.annotations.{MAX_CONCURRENT_RUNS_ANNOTATION}"),
                    format!("{v:?} is not a positive number of runs"),
                );
            }
        }
    }

    async fn reconcile(&self, _cp: &ControlPlane, r: &Resource, _pass: Flags) -> Reconciled {
        Reconciled::done(r.status.clone())
    }

    fn row(&self, r: &Resource) -> Vec<String> {
        let count = |f: &str| r.spec[f].as_array().map_or(0, Vec::len).to_string();
        vec![count("tasks"), count("finally")]
    }
}

/// The limit of concurrent runs a Pipeline sets, if any.
pub(crate) fn max_concurrent_runs(pipeline: &Resource) -> Option<usize> {
    pipeline
        .metadata
        .annotations
        .get(MAX_CONCURRENT_RUNS_ANNOTATION)
        .and_then(|v| v.parse().ok())
}
