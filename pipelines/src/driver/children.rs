//! A run's TaskRuns: found by their labels (in planned order), made (never another run's).

use super::*;

/// The run's TaskRuns by pipeline task, each task's in instance order.
pub(super) fn children(
    p: &Pipelines,
    cp: &ControlPlane,
    run: &Run,
) -> Result<BTreeMap<String, Vec<Resource>>, String> {
    let mut out: BTreeMap<String, Vec<Resource>> = BTreeMap::new();
    for tr in cp.list("TaskRun", Some(&run.id.namespace)).map_err(text)? {
        let labels = &tr.metadata.labels;
        let mine = labels.get(PIPELINE_RUN_LABEL) == Some(&run.id.name)
            && tr.metadata.annotations.get(PIPELINE_RUN_UID_ANNOTATION) == Some(&run.id.uid)
            // One being deleted by hand is as good as gone: it is made anew.
            && !p.is_deleting(&tr.metadata.uid);
        if let (true, Some(task)) = (mine, labels.get(PIPELINE_TASK_LABEL)) {
            out.entry(task.clone()).or_default().push(tr);
        }
    }
    // In the order they were planned (a matrix's instances' order is its results' order).
    let planned: Vec<&str> = run.pr.status["childReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for runs in out.values_mut() {
        let place = |r: &Resource| {
            planned
                .iter()
                .position(|n| *n == r.metadata.name)
                .unwrap_or(usize::MAX)
        };
        runs.sort_by(|a, b| {
            (place(a), a.metadata.name.len(), &a.metadata.name).cmp(&(
                place(b),
                b.metadata.name.len(),
                &b.metadata.name,
            ))
        });
    }
    Ok(out)
}

/// The TaskRun document of `child`, labelled as Tekton labels a PipelineRun's TaskRuns.
pub(super) fn child_doc(
    run: &Run,
    t: &crate::spec::PipelineTask,
    finally: bool,
    child: &crate::pipelinerun::ChildRun,
    // The node that owns the run (this one).
    owner: &str,
) -> Value {
    let mut labels = json!({
        PIPELINE_RUN_LABEL: run.id.name,
        PIPELINE_TASK_LABEL: t.name,
        MEMBER_OF_LABEL: if finally { "finally" } else { "tasks" },
    });
    if let Some(pl) = &run.id.pipeline {
        labels[PIPELINE_LABEL] = json!(pl);
    }
    if let Some(r) = &t.task_ref {
        labels[TASK_LABEL] = json!(r.name);
    }
    json!({
        "apiVersion": "tekton.dev/v1",
        "kind": "TaskRun",
        "metadata": {
            "name": child.name,
            "namespace": run.id.namespace,
            "labels": labels,
            "annotations": {
                PIPELINE_RUN_UID_ANNOTATION: run.id.uid,
                // Its run's node runs it: the run's workspaces are there.
                control::resource::NODE_ANNOTATION: owner,
            },
        },
        "spec": child.spec,
    })
}

/// Makes the TaskRun `doc` unless it exists (this run's: done already). `Ok(Err(why))`: it
/// cannot be made (invalid, or the name is another's).
pub(super) async fn create_child(
    cp: &ControlPlane,
    run: &Run,
    name: &str,
    doc: &Value,
) -> Result<Result<(), String>, String> {
    if let Some(tr) = cp.find("TaskRun", &run.id.namespace, name).map_err(text)? {
        return Ok(
            match tr.metadata.annotations.get(PIPELINE_RUN_UID_ANNOTATION) == Some(&run.id.uid) {
                true => Ok(()),
                false => Err(format!(
                    "a TaskRun of that name exists and is not this run's; delete it (ferry delete taskrun {name} -n {}) and run again",
                    run.id.namespace
                )),
            },
        );
    }
    match cp.apply_owned(doc).await {
        Ok(_) => Ok(Ok(())),
        Err(control::ControlError::Invalid(list)) => Ok(Err(list
            .iter()
            .map(|f| format!("{}: {}", f.field, f.message))
            .collect::<Vec<_>>()
            .join("; "))),
        Err(e) => Err(e.to_string()),
    }
}

pub(super) fn child_ref(name: &str, task: &str) -> Value {
    json!({
        "apiVersion": "tekton.dev/v1",
        "kind": "TaskRun",
        "name": name,
        "pipelineTaskName": task,
    })
}
