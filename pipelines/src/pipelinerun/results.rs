//! The pipeline's results once the run is done.

use super::substitute;
use crate::dag::result_pairs;
use crate::params::ParamValue;
use crate::scheduler::TaskState;
use crate::spec::PipelineSpec;
use crate::subst::Vars;
use std::collections::BTreeMap;

/// The pipeline's results: each value substituted; omitted when a task it uses failed, was
/// skipped or did not write the result (#6139).
pub fn pipeline_results(
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
