//! A run's admission (once): pending, its Pipeline's concurrent runs, what must hold before
//! anything runs; and the waiting runs woken when a slot frees.

use super::*;

/// Starts the run if it may start now: `Some` (as stored, started) or `None` (it waits, or
/// failed before starting).
pub(super) async fn admit(
    p: &Pipelines,
    cp: &ControlPlane,
    run: &Run,
    pipeline: &PipelineSpec,
    limit: Option<usize>,
) -> Result<Option<Resource>, String> {
    let pr = &run.pr;
    match Mode::of(run.spec.status.as_deref()) {
        Mode::Pending => {
            wait(cp, pr, "PipelineRun is pending").await?;
            return Ok(None);
        }
        Mode::Cancelled | Mode::CancelledRunFinally | Mode::StoppedRunFinally => {
            let m = format!(
                "PipelineRun {:?} was cancelled before it started",
                run.id.name
            );
            finish_early(cp, pr, "Cancelled", &m).await?;
            return Ok(None);
        }
        Mode::Normal => {}
    }
    // One admission at a time: two runs of one pipeline never both take the last slot.
    let _one = p.admission.lock().await;
    if let (Some(limit), Some(pipeline_name)) = (limit, &run.id.pipeline) {
        let runs: Vec<Resource> = cp
            .list("PipelineRun", Some(&pr.metadata.namespace))
            .map_err(text)?
            .into_iter()
            .filter(|r| {
                r.spec["pipelineRef"]["name"].as_str() == Some(pipeline_name.as_str())
                    && !status::is_done(&r.status)
                    && !p.is_deleting(&r.metadata.uid)
            })
            .collect();
        let running = runs
            .iter()
            .filter(|r| status::time(&r.status, "startTime").is_some())
            .count();
        let mut waiting: Vec<&Resource> = runs
            .iter()
            .filter(|r| {
                status::time(&r.status, "startTime").is_none()
                    && r.spec["status"].as_str() != Some("PipelineRunPending")
            })
            .collect();
        waiting.sort_by(|a, b| {
            (&a.metadata.creation_timestamp, &a.metadata.name)
                .cmp(&(&b.metadata.creation_timestamp, &b.metadata.name))
        });
        let place = waiting
            .iter()
            .position(|r| r.metadata.uid == pr.metadata.uid)
            .unwrap_or(0);
        if running + place >= limit {
            let m = format!(
                "waiting for a slot: Pipeline {pipeline_name:?} allows {limit} concurrent runs ({}), {running} running, {place} ahead of this one",
                crate::kinds::MAX_CONCURRENT_RUNS_ANNOTATION
            );
            wait(cp, pr, &m).await?;
            return Ok(None);
        }
    }
    let given = crate::spec::pairs(&run.spec.params);
    let problem = match resolve(&pipeline.params, &given) {
        Err(e) => Some((
            e.first().map_or("ParameterMissing", |e| e.reason),
            e.iter()
                .map(|e| e.message.clone())
                .collect::<Vec<_>>()
                .join("; "),
        )),
        Ok(_) => match Dag::of(pipeline) {
            Err(e) => Some((
                "PipelineValidationFailed",
                e.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )),
            Ok(_) => check_bindings(&run.spec, pipeline, |n| {
                stored_task(cp, &pr.metadata.namespace, n)
            })
            .err(),
        },
    };
    if let Some((reason, message)) = problem {
        finish_early(cp, pr, reason, &message).await?;
        return Ok(None);
    }
    let spec_doc = serde_json::to_value(pipeline).map_err(text)?;
    let generation = pr.metadata.generation;
    let me = cp.config().node.clone();
    let started = cp
        .update_status(&pr.key(), &pr.metadata.uid, |s| {
            if !s["node"].is_string() {
                s["node"] = json!(me);
            }
            s["startTime"] = json!(control::status::now());
            s["pipelineSpec"] = spec_doc;
            s["observedGeneration"] = json!(generation);
            set_condition(s, "Unknown", "Started", "");
        })
        .await
        .map_err(text)?;
    let Some(started) = started else {
        return Ok(None);
    };
    events::transition(cp, &started, Transition::Started).await?;
    Ok(Some(started))
}

/// The run waits (`Unknown`, `PipelineRunPending`, `message`).
pub(super) async fn wait(cp: &ControlPlane, pr: &Resource, message: &str) -> Result<(), String> {
    let before = status::reason(&pr.status).to_string();
    let generation = pr.metadata.generation;
    let me = cp.config().node.clone();
    let r = cp
        .update_status(&pr.key(), &pr.metadata.uid, |s| {
            set_condition(s, "Unknown", "PipelineRunPending", message);
            s["observedGeneration"] = json!(generation);
            if !s["node"].is_string() {
                s["node"] = json!(me);
            }
        })
        .await
        .map_err(text)?;
    if let Some(r) = r.filter(|_| before != "PipelineRunPending") {
        events::transition(cp, &r, Transition::Unknown).await?;
    }
    Ok(())
}

/// The run fails before any task ran.
pub(super) async fn finish_early(
    cp: &ControlPlane,
    pr: &Resource,
    reason: &str,
    message: &str,
) -> Result<(), String> {
    let generation = pr.metadata.generation;
    let r = cp
        .update_status(&pr.key(), &pr.metadata.uid, |s| {
            let now = control::status::now();
            if s.get("startTime").is_none() {
                s["startTime"] = json!(now);
            }
            s["completionTime"] = json!(now);
            s["observedGeneration"] = json!(generation);
            set_condition(s, "False", reason, message);
        })
        .await
        .map_err(text)?;
    if let Some(r) = r {
        events::transition(cp, &r, Transition::Failed).await?;
    }
    Ok(())
}

/// A run of `pipeline` ended: the runs waiting for a slot look again (the first in line
/// takes it).
pub(crate) async fn wake_waiting(cp: &ControlPlane, namespace: &str, pipeline: &str) {
    let Ok(runs) = cp.list("PipelineRun", Some(namespace)) else {
        return;
    };
    for r in runs.iter().filter(|r| {
        r.spec["pipelineRef"]["name"].as_str() == Some(pipeline)
            && status::reason(&r.status) == "PipelineRunPending"
            && r.spec["status"].as_str() != Some("PipelineRunPending")
    }) {
        if let Err(e) = events::internal(cp, CHANGED_TYPE, r, "slot").await {
            tracing::warn!(run = %r.key(), error = %e, "cannot wake a waiting PipelineRun");
        }
    }
}
