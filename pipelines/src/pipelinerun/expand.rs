//! One pipeline task as TaskRuns: one per matrix combination, named `{run}-{task}` (matrix:
//! `-0`, `-1`, ...), with the params it is given (the run's propagated into an embedded
//! Task), its workspaces mapped to the run's bindings, its timeout and retries; and the
//! task's state once they have ended (a matrixed task's string results gathered into arrays).

use super::{substitute, RunId};
use crate::executor::Ended;
use crate::matrix::{combinations, is_matrixed};
use crate::params::ParamValue;
use crate::scheduler::TaskState;
use crate::spec::{Param, PipelineRunSpec, PipelineTask, TaskRunSpec, WorkspaceBinding};
use crate::subst::Vars;
use serde_json::json;
use std::collections::BTreeMap;

/// One TaskRun a pipeline task becomes.
#[derive(Clone, Debug, PartialEq)]
pub struct ChildRun {
    pub name: String,
    pub spec: TaskRunSpec,
}

/// The TaskRuns of pipeline task `t` of run `id` (substituted with `vars`; `params`: the
/// run's resolved params); an error (reason, message) when it cannot run at all.
pub fn expand(
    id: &RunId,
    run: &PipelineRunSpec,
    t: &PipelineTask,
    vars: &Vars,
    params: &BTreeMap<String, ParamValue>,
) -> Result<Vec<ChildRun>, (&'static str, String)> {
    let mut vars = vars.clone();
    let embedded = t.task_spec.is_some();
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
            return Err(("PipelineValidationFailed", m));
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
    let workspaces: Vec<WorkspaceBinding> = t
        .workspaces
        .iter()
        .filter_map(|b| {
            let pw = b.workspace.as_deref().unwrap_or(&b.name);
            let rb = run.workspaces.iter().find(|r| r.name == pw)?;
            let sub_path = match (&rb.sub_path, &b.sub_path) {
                (Some(a), Some(b)) => Some(format!("{a}/{b}")),
                (a, b) => a.clone().or(b.clone()),
            };
            let shared = rb.persistent_volume_claim.is_some() || rb.volume_claim_template.is_some();
            Some(WorkspaceBinding {
                name: b.name.clone(),
                sub_path,
                empty_dir: rb.empty_dir.clone(),
                // The run's directory for the binding, shared by its tasks.
                persistent_volume_claim: shared.then(|| json!({"claimName": rb.name})),
                config_map: rb.config_map.clone(),
                secret: rb.secret.clone(),
                ..WorkspaceBinding::default()
            })
        })
        .collect();
    Ok(instances
        .into_iter()
        .enumerate()
        .map(|(i, given)| ChildRun {
            name: child_name(&if matrixed {
                format!("{}-{}-{i}", id.name, t.name)
            } else {
                format!("{}-{}", id.name, t.name)
            }),
            spec: TaskRunSpec {
                task_ref: t.task_ref.clone(),
                task_spec: t.task_spec.as_ref().map(|s| s.spec.clone()),
                params: unique(given),
                workspaces: workspaces.clone(),
                timeout: timeout.clone(),
                retries: t.retries,
                ..TaskRunSpec::default()
            },
        })
        .collect())
}

/// A TaskRun's name: `name` if it is a valid one (at most 63 characters), else cut and ended
/// with a hash of the whole, so that it stays unique and the same on every pass (as Tekton's
/// `kmeta.ChildName` does).
pub fn child_name(name: &str) -> String {
    const MAX: usize = 63;
    if name.len() <= MAX {
        return name.to_string();
    }
    // Stable across processes and builds: the name must come out the same after a restart.
    let hash = broker::event::fnv1a(name.as_bytes());
    let suffix = format!("{hash:016x}");
    let keep = MAX - suffix.len() - 1;
    let head: String = name.chars().take(keep).collect();
    format!("{}-{suffix}", head.trim_end_matches('-'))
}

/// One param per name, the last value given winning (a pipeline task's own over the run's
/// propagated one), in the order names first came.
fn unique(given: Vec<(String, ParamValue)>) -> Vec<Param> {
    let mut out: Vec<Param> = Vec::new();
    for (name, value) in given {
        match out.iter_mut().find(|p| p.name == name) {
            Some(p) => p.value = value,
            None => out.push(Param { name, value }),
        }
    }
    out
}

/// Pipeline task `t`'s state and results from its TaskRuns' outcomes (in instance order).
pub fn fold(
    t: &PipelineTask,
    outcomes: &[(Ended, BTreeMap<String, ParamValue>)],
) -> (TaskState, BTreeMap<String, ParamValue>) {
    let matrixed = is_matrixed(t.matrix.as_ref());
    let all_ok = outcomes.iter().all(|(e, _)| e.succeeded);
    let mut results = BTreeMap::new();
    if matrixed {
        // String results gathered into arrays, in instance order.
        for (_, rs) in outcomes {
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
    } else if let Some((_, rs)) = outcomes.first() {
        results = rs.clone();
    }
    let cancelled = outcomes.iter().any(|(e, _)| e.reason == "TaskRunCancelled");
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
    (state, results)
}

#[cfg(test)]
mod tests {
    use super::child_name;

    #[test]
    fn long_names_are_cut_and_hashed_the_same_way_every_time() {
        let long = format!("{}-task-12", "r".repeat(70));
        let a = child_name(&long);
        assert!(a.len() <= 63, "{a}");
        assert_eq!(a, child_name(&long));
        assert_ne!(a, child_name(&format!("{}-task-13", "r".repeat(70))));
        assert!(control::resource::dns_label_problem(&a).is_none(), "{a}");
        assert_eq!(child_name("short-name"), "short-name");
    }
}
