//! A PipelineRun's pieces that the control plane's scheduler puts together on every
//! transition (`crate::run`): what must hold before it starts ([`check_bindings`]), what a
//! pipeline task's fields are substituted with ([`task_vars`]), its TaskRuns' specs
//! ([`expand`]: one per matrix combination, params and workspaces mapped), a task's state
//! from its TaskRuns' outcomes ([`fold`]), and the pipeline's results once it is done
//! ([`pipeline_results`]).

use crate::params::ParamValue;
use crate::scheduler::TaskState;
use crate::spec::{PipelineRunSpec, PipelineSpec, TaskSpec};
use crate::subst::Vars;
use std::collections::BTreeMap;

mod expand;
mod results;

pub use crate::taskrun::RunId;
pub use expand::{expand, fold, ChildRun};
pub use results::pipeline_results;

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

/// What must hold before anything starts (as Tekton checks it): every referenced Task
/// exists (`task` finds one by name), the pipeline's required workspaces are bound by the run,
/// and every task's required workspaces are given one of the pipeline's.
pub fn check_bindings(
    run: &PipelineRunSpec,
    pipeline: &PipelineSpec,
    task: impl Fn(&str) -> Option<TaskSpec>,
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
            (Some(s), _) => s.spec.clone(),
            (None, Some(r)) => match task(&r.name) {
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
pub fn task_vars(
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
