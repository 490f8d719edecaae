//! Validation of Tasks, Pipelines and runs: every problem with its field path, as the control
//! plane reports them (`spec.tasks[2].runAfter`, ...). Only what is wrong whatever the run
//! (unknown tasks, cycles, bad types, impossible combinations); what depends on a run's
//! values (a param without value) is the run's to report.

use crate::dag::{Dag, GraphError};
use crate::params::{ParamSpec, ParamValue};
use crate::spec::{PipelineRunSpec, PipelineSpec, PipelineTask, TaskRunSpec, TaskSpec};
use control::resource::parse_go_duration;
use control::FieldErrors;
use std::collections::{BTreeMap, BTreeSet};

/// Tekton's limit on a matrix's combinations.
pub const MAX_MATRIX_COMBINATIONS: usize = 256;

/// The longest timeout: longer ones are refused (100 years is no timeout in practice, and
/// adding more to a clock overflows it).
pub const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 86_400);

/// A timeout as written (`1h30m`), at most [`MAX_TIMEOUT`].
pub fn timeout(v: &str) -> Result<std::time::Duration, String> {
    let d = parse_go_duration(v)?;
    if d > MAX_TIMEOUT {
        return Err("longer than 100 years".into());
    }
    Ok(d)
}

fn duration(path: &str, value: Option<&String>, errors: &mut FieldErrors) {
    if let Some(v) = value {
        if let Err(e) = timeout(v) {
            errors.push(
                path,
                format!("{v:?} is not a duration like 1h30m or 10s ({e})"),
            );
        }
    }
}

fn unique<'a>(
    path: &str,
    names: impl Iterator<Item = &'a str>,
    what: &str,
    errors: &mut FieldErrors,
) {
    let mut seen = BTreeSet::new();
    for (i, n) in names.enumerate() {
        if !seen.insert(n) {
            errors.push(
                &format!("{path}[{i}].name"),
                format!("{what} {n:?} is declared twice"),
            );
        }
    }
}

/// Declared params: names unique, types known, defaults of the declared type.
pub fn params(path: &str, specs: &[ParamSpec], errors: &mut FieldErrors) {
    unique(path, specs.iter().map(|p| p.name.as_str()), "param", errors);
    for (i, p) in specs.iter().enumerate() {
        let here = format!("{path}[{i}]");
        if p.name.is_empty()
            || !p
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            errors.push(
                &format!("{here}.name"),
                "a param name is letters, digits, '_', '.' and '-'",
            );
        }
        match p.param_type() {
            Err(e) => errors.push(&format!("{here}.type"), e),
            Ok(ty) => {
                if let Some(d) = &p.default {
                    if d.kind() != ty {
                        errors.push(
                            &format!("{here}.default"),
                            format!("is {} but the param is {}", d.kind().name(), ty.name()),
                        );
                    }
                }
            }
        }
    }
}

/// A Task's spec.
pub fn task(path: &str, t: &TaskSpec, errors: &mut FieldErrors) {
    params(&format!("{path}.params"), &t.params, errors);
    if t.steps.is_empty() {
        errors.push(&format!("{path}.steps"), "a task needs at least one step");
    }
    unique(
        &format!("{path}.steps"),
        t.steps.iter().filter_map(|s| s.name.as_deref()),
        "step",
        errors,
    );
    for (i, s) in t.steps.iter().enumerate() {
        let here = format!("{path}.steps[{i}]");
        if s.script.is_some() && !s.command.is_empty() {
            errors.push(
                &format!("{here}.script"),
                "script and command are mutually exclusive",
            );
        }
        let template_command = t
            .step_template
            .as_ref()
            .is_some_and(|st| !st.command.is_empty());
        if s.script.is_none() && s.command.is_empty() && s.args.is_empty() && !template_command {
            errors.push(
                &here,
                "a step needs a script, a command or args: there is no image entrypoint to run",
            );
        }
        if let Some(on_error) = &s.on_error {
            if !["continue", "stopAndFail"].contains(&on_error.as_str()) && !on_error.contains("$(")
            {
                errors.push(
                    &format!("{here}.onError"),
                    format!("{on_error:?} is not continue or stopAndFail"),
                );
            }
        }
        duration(&format!("{here}.timeout"), s.timeout.as_ref(), errors);
        for (j, w) in s.when.iter().enumerate() {
            when(&format!("{here}.when[{j}]"), w, errors);
        }
    }
    unique(
        &format!("{path}.results"),
        t.results.iter().map(|r| r.name.as_str()),
        "result",
        errors,
    );
    for (i, s) in t.steps.iter().enumerate() {
        if let Some(n) = &s.name {
            file_name(&format!("{path}.steps[{i}].name"), n, errors);
        }
    }
    for (i, w) in t.workspaces.iter().enumerate() {
        file_name(&format!("{path}.workspaces[{i}].name"), &w.name, errors);
    }
    for (i, r) in t.results.iter().enumerate() {
        file_name(&format!("{path}.results[{i}].name"), &r.name, errors);
        if let Some(k) = r.kind.as_deref() {
            if !["string", "array", "object"].contains(&k) {
                errors.push(
                    &format!("{path}.results[{i}].type"),
                    format!("type {k:?} is not one of string, array, object"),
                );
            }
        }
    }
    unique(
        &format!("{path}.workspaces"),
        t.workspaces.iter().map(|w| w.name.as_str()),
        "workspace",
        errors,
    );
}

fn when(path: &str, w: &crate::spec::WhenExpression, errors: &mut FieldErrors) {
    if w.cel.is_some() {
        errors.push(
            &format!("{path}.cel"),
            "CEL when expressions (alpha in Tekton) are not supported; use input, operator, values",
        );
        return;
    }
    if !["in", "notin"].contains(&w.operator.as_str()) {
        errors.push(
            &format!("{path}.operator"),
            format!("{:?} is not in or notin", w.operator),
        );
    }
    if w.values.is_empty() {
        errors.push(&format!("{path}.values"), "at least one value");
    }
}

/// A Pipeline's spec: tasks and finally tasks, their graph, their params and matrices.
pub fn pipeline(path: &str, p: &PipelineSpec, errors: &mut FieldErrors) {
    params(&format!("{path}.params"), &p.params, errors);
    let all: Vec<(&str, usize, &PipelineTask)> = p
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| ("tasks", i, t))
        .chain(p.finally.iter().enumerate().map(|(i, t)| ("finally", i, t)))
        .collect();
    let mut seen: BTreeMap<&str, String> = BTreeMap::new();
    for (list, i, t) in &all {
        let here = format!("{path}.{list}[{i}]");
        if let Some(first) = seen.insert(t.name.as_str(), here.clone()) {
            errors.push(
                &format!("{here}.name"),
                format!("task {:?} is already {first}", t.name),
            );
        }
        pipeline_task(&here, t, errors);
        if *list == "finally" && !t.run_after.is_empty() {
            errors.push(
                &format!("{here}.runAfter"),
                "finally tasks all start together: no runAfter",
            );
        }
    }
    // Results of finally tasks are not for DAG tasks.
    let finals: BTreeSet<&str> = p.finally.iter().map(|t| t.name.as_str()).collect();
    match Dag::of(p) {
        Ok(_) => {}
        Err(graph) => {
            for e in graph {
                let field = match &e {
                    GraphError::Unknown { task, via, .. } => {
                        let i = p.tasks.iter().position(|t| &t.name == task).unwrap_or(0);
                        if *via == "runs after" {
                            format!("{path}.tasks[{i}].runAfter")
                        } else {
                            format!("{path}.tasks[{i}]")
                        }
                    }
                    GraphError::Cycle(_) => format!("{path}.tasks"),
                };
                let message = match &e {
                    GraphError::Unknown { missing, .. } if finals.contains(missing.as_str()) => {
                        format!("{e} (it is a finally task: only finally tasks and pipeline results may use its results)")
                    }
                    _ => e.to_string(),
                };
                errors.push(&field, message);
            }
        }
    }
    // Finally tasks may use DAG tasks' results, not other finally tasks'.
    let dag_names: BTreeSet<&str> = p.tasks.iter().map(|t| t.name.as_str()).collect();
    for (i, t) in p.finally.iter().enumerate() {
        let mut refs = BTreeSet::new();
        for text in crate::dag::task_texts(t) {
            refs.extend(crate::dag::result_refs(&text));
        }
        for r in refs.iter().filter(|r| !dag_names.contains(r.as_str())) {
            errors.push(
                &format!("{path}.finally[{i}]"),
                format!("uses a result of {r:?}, which is not a task of the pipeline (finally tasks use the tasks' results)"),
            );
        }
    }
}

fn pipeline_task(path: &str, t: &PipelineTask, errors: &mut FieldErrors) {
    if let Some(p) = control::resource::dns_label_problem(&t.name) {
        errors.push(&format!("{path}.name"), p);
    }
    match (&t.task_ref, &t.task_spec) {
        (Some(_), Some(_)) => errors.push(path, "taskRef and taskSpec are mutually exclusive"),
        (None, None) => errors.push(path, "a pipeline task needs a taskRef or a taskSpec"),
        (Some(r), None) => {
            if let Some(kind) = r.kind.as_deref().filter(|k| *k != "Task") {
                errors.push(
                    &format!("{path}.taskRef.kind"),
                    format!("{kind:?}: only Task is supported"),
                );
            }
        }
        (None, Some(spec)) => task(&format!("{path}.taskSpec"), &spec.spec, errors),
    }
    unique(
        &format!("{path}.params"),
        t.params.iter().map(|p| p.name.as_str()),
        "param",
        errors,
    );
    for (i, w) in t.when.iter().enumerate() {
        when(&format!("{path}.when[{i}]"), w, errors);
    }
    for (i, w) in t.workspaces.iter().enumerate() {
        sub_path(
            &format!("{path}.workspaces[{i}].subPath"),
            w.sub_path.as_ref(),
            errors,
        );
    }
    duration(&format!("{path}.timeout"), t.timeout.as_ref(), errors);
    if let Some(on_error) = &t.on_error {
        if !["continue", "stopAndFail"].contains(&on_error.as_str()) {
            errors.push(
                &format!("{path}.onError"),
                format!("{on_error:?} is not continue or stopAndFail"),
            );
        } else if on_error == "continue" && t.retries.is_some_and(|r| r > 0) {
            errors.push(
                &format!("{path}.onError"),
                "onError: continue cannot be combined with retries",
            );
        }
    }
    if let Some(m) = &t.matrix {
        let given: BTreeSet<&str> = t.params.iter().map(|p| p.name.as_str()).collect();
        let mut combinations = 1usize;
        for (i, p) in m.params.iter().enumerate() {
            let here = format!("{path}.matrix.params[{i}]");
            if given.contains(p.name.as_str()) {
                errors.push(
                    &format!("{here}.name"),
                    format!("param {:?} is in both matrix and params", p.name),
                );
            }
            match &p.value {
                ParamValue::Array(a) => combinations = combinations.saturating_mul(a.len().max(1)),
                ParamValue::String(s)
                    if s.trim().starts_with("$(") && s.trim().ends_with("[*])") => {}
                _ => errors.push(
                    &format!("{here}.value"),
                    "a matrix param is an array (or a whole-array reference like $(params.x[*]))",
                ),
            }
        }
        if combinations > MAX_MATRIX_COMBINATIONS {
            errors.push(
                &format!("{path}.matrix"),
                format!("{combinations} combinations; at most {MAX_MATRIX_COMBINATIONS}"),
            );
        }
    }
}

/// A TaskRun's spec.
pub fn task_run(path: &str, r: &TaskRunSpec, errors: &mut FieldErrors) {
    match (&r.task_ref, &r.task_spec) {
        (Some(_), Some(_)) => errors.push(path, "taskRef and taskSpec are mutually exclusive"),
        (None, None) => errors.push(path, "a TaskRun needs a taskRef or a taskSpec"),
        (None, Some(spec)) => task(&format!("{path}.taskSpec"), spec, errors),
        (Some(_), None) => {}
    }
    unique(
        &format!("{path}.params"),
        r.params.iter().map(|p| p.name.as_str()),
        "param",
        errors,
    );
    duration(&format!("{path}.timeout"), r.timeout.as_ref(), errors);
    if let Some(s) = &r.status {
        if !["TaskRunCancelled", "TaskRunPending"].contains(&s.as_str()) {
            errors.push(
                &format!("{path}.status"),
                format!("{s:?} is not TaskRunCancelled or TaskRunPending"),
            );
        }
    }
    bindings(path, &r.workspaces, errors);
}

/// A PipelineRun's spec.
pub fn pipeline_run(path: &str, r: &PipelineRunSpec, errors: &mut FieldErrors) {
    match (&r.pipeline_ref, &r.pipeline_spec) {
        (Some(_), Some(_)) => {
            errors.push(path, "pipelineRef and pipelineSpec are mutually exclusive")
        }
        (None, None) => errors.push(path, "a PipelineRun needs a pipelineRef or a pipelineSpec"),
        (None, Some(spec)) => pipeline(&format!("{path}.pipelineSpec"), spec, errors),
        (Some(_), None) => {}
    }
    unique(
        &format!("{path}.params"),
        r.params.iter().map(|p| p.name.as_str()),
        "param",
        errors,
    );
    if let Some(t) = &r.timeouts {
        duration(
            &format!("{path}.timeouts.pipeline"),
            t.pipeline.as_ref(),
            errors,
        );
        duration(&format!("{path}.timeouts.tasks"), t.tasks.as_ref(), errors);
        duration(
            &format!("{path}.timeouts.finally"),
            t.finally.as_ref(),
            errors,
        );
    }
    if let Some(s) = &r.status {
        let ok = [
            "Cancelled",
            "CancelledRunFinally",
            "StoppedRunFinally",
            "PipelineRunPending",
        ];
        if !ok.contains(&s.as_str()) {
            errors.push(
                &format!("{path}.status"),
                format!("{s:?} is not one of {}", ok.join(", ")),
            );
        }
    }
    bindings(path, &r.workspaces, errors);
}

/// A `subPath`: relative, inside its workspace (no `..`).
fn sub_path(path: &str, value: Option<&String>, errors: &mut FieldErrors) {
    if let Some(p) = value {
        let escapes = std::path::Path::new(p).components().any(|c| {
            !matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        });
        if escapes {
            errors.push(
                path,
                format!("{p:?} must be a relative path inside the workspace (no '..')"),
            );
        }
    }
}

/// A name that becomes a file name: letters, digits, '-', '_' and '.', not `.` or `..`.
fn file_name(path: &str, name: &str, errors: &mut FieldErrors) {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !ok {
        errors.push(
            path,
            format!("{name:?}: letters, digits, '-', '_' and '.' only"),
        );
    }
}

fn bindings(path: &str, ws: &[crate::spec::WorkspaceBinding], errors: &mut FieldErrors) {
    unique(
        &format!("{path}.workspaces"),
        ws.iter().map(|w| w.name.as_str()),
        "workspace",
        errors,
    );
    for (i, w) in ws.iter().enumerate() {
        let here = format!("{path}.workspaces[{i}]");
        file_name(&format!("{here}.name"), &w.name, errors);
        sub_path(&format!("{here}.subPath"), w.sub_path.as_ref(), errors);
        let kinds = [
            ("emptyDir", w.empty_dir.is_some()),
            ("volumeClaimTemplate", w.volume_claim_template.is_some()),
            ("persistentVolumeClaim", w.persistent_volume_claim.is_some()),
            ("configMap", w.config_map.is_some()),
            ("secret", w.secret.is_some()),
            ("projected", w.projected.is_some()),
            ("csi", w.csi.is_some()),
        ];
        let set: Vec<&str> = kinds.iter().filter(|(_, s)| *s).map(|(k, _)| *k).collect();
        match set.as_slice() {
            [] => errors.push(&here, "a binding needs one of emptyDir, volumeClaimTemplate, persistentVolumeClaim"),
            [one] if ["configMap", "secret", "projected", "csi"].contains(one) => errors.push(
                &format!("{here}.{one}"),
                "not supported yet: a local runner has no Kubernetes objects to mount (use emptyDir or a volumeClaimTemplate)",
            ),
            [_] => {}
            _ => errors.push(&here, format!("one kind of binding, not {}", set.join(" and "))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors_of(spec: serde_json::Value) -> Vec<String> {
        let p: PipelineSpec = serde_json::from_value(spec).unwrap();
        let mut e = FieldErrors::new(1);
        pipeline("spec", &p, &mut e);
        e.list
            .into_iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    #[test]
    fn a_pipeline_names_every_problem() {
        let e = errors_of(json!({
            "params": [{"name": "p", "type": "array", "default": "x"}],
            "tasks": [
                {"name": "a", "taskRef": {"name": "t"}, "runAfter": ["ghost"]},
                {"name": "b", "taskSpec": {"steps": [{"name": "s", "image": "x"}]},
                 "when": [{"input": "x", "operator": "is", "values": []}]},
                {"name": "a", "taskRef": {"name": "t"}, "retries": 2, "onError": "continue"},
                {"name": "m", "taskRef": {"name": "t"}, "params": [{"name": "v", "value": "1"}],
                 "matrix": {"params": [{"name": "v", "value": ["1", "2"]}]}},
            ],
            "finally": [{"name": "f", "taskRef": {"name": "t"}, "runAfter": ["a"]}],
        }));
        assert_eq!(
            e,
            [
                "spec.params[0].default: is string but the param is array",
                "spec.tasks[1].taskSpec.steps[0]: a step needs a script, a command or args: there is no image entrypoint to run",
                "spec.tasks[1].when[0].operator: \"is\" is not in or notin",
                "spec.tasks[1].when[0].values: at least one value",
                "spec.tasks[2].name: task \"a\" is already spec.tasks[0]",
                "spec.tasks[2].onError: onError: continue cannot be combined with retries",
                "spec.tasks[3].matrix.params[0].name: param \"v\" is in both matrix and params",
                "spec.finally[0].runAfter: finally tasks all start together: no runAfter",
                // The graph's problems come after each task's own.
                "spec.tasks[0].runAfter: task \"a\" runs after \"ghost\", which is not a task of the pipeline",
            ],
            "{e:#?}"
        );
    }

    #[test]
    fn a_cycle_is_named_at_spec_tasks() {
        let e = errors_of(json!({"tasks": [
            {"name": "a", "taskRef": {"name": "t"}, "runAfter": ["b"]},
            {"name": "b", "taskRef": {"name": "t"}, "params": [{"name": "x", "value": "$(tasks.a.results.r)"}]},
        ]}));
        assert_eq!(e, ["spec.tasks: cycle in the tasks: a -> b -> a"]);
    }

    #[test]
    fn run_bindings_and_status() {
        let r: PipelineRunSpec = serde_json::from_value(json!({
            "pipelineRef": {"name": "p"},
            "status": "Stopped",
            "timeouts": {"pipeline": "1 hour"},
            "workspaces": [{"name": "w", "secret": {"secretName": "s"}}, {"name": "v"},
                           {"name": "x", "emptyDir": {}, "subPath": "../../etc"}],
        }))
        .unwrap();
        let mut e = FieldErrors::new(1);
        pipeline_run("spec", &r, &mut e);
        let fields: Vec<&str> = e.list.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.timeouts.pipeline",
                "spec.status",
                "spec.workspaces[0].secret",
                "spec.workspaces[1]",
                "spec.workspaces[2].subPath"
            ]
        );
    }
}
