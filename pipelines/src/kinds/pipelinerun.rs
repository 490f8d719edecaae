//! PipelineRun: handed to the scheduler (`dev.ferry.pipelines.pipelinerun.changed.v1`) when
//! it is created, when its spec changes (cancel), and when Ferry starts while it has not
//! ended; its status is written by the scheduler ([`crate::driver`]). Deleting it deletes its
//! TaskRuns (their processes stopped) and its directory.

use super::taskrun::remove_dir;
use super::{
    check_params_when_made, immutable_run_spec, run_row, stored_pipeline, GROUP,
    PIPELINE_RUN_LABEL, PIPELINE_RUN_UID_ANNOTATION, RUN_COLUMNS,
};
use crate::events::{self, CHANGED_TYPE};
use crate::spec::PipelineRunSpec;
use crate::status;
use crate::taskrun::RunId;
use crate::Pipelines;
use control::kind::Flags;
use control::kind::KindInfo;
use control::{ControlError, ControlPlane, FieldErrors, Kind, Reconciled, Resource};
use serde_json::Value;
use std::sync::Arc;

pub struct PipelineRun(pub Arc<Pipelines>);

/// A run just made on this node is this node's (`status.node`), said before anything else is
/// done with it, so that after a restart of several nodes only this one picks it up. `None`:
/// it could not be stored (try again).
pub(super) async fn own_if_created(
    cp: &ControlPlane,
    r: &Resource,
    pass: Flags,
) -> Option<Resource> {
    let owned = r.status["node"].is_string()
        || r.metadata
            .annotations
            .contains_key(control::resource::NODE_ANNOTATION);
    if !pass.created || owned {
        return Some(r.clone());
    }
    let me = cp.config().node.clone();
    match cp
        .update_status(&r.key(), &r.metadata.uid, |s| {
            if !s["node"].is_string() {
                s["node"] = serde_json::json!(me);
            }
        })
        .await
    {
        Ok(Some(now)) => Some(now),
        Ok(None) => Some(r.clone()),
        Err(e) => {
            tracing::warn!(run = %r.key(), error = %e, "cannot record the run's node");
            None
        }
    }
}

/// Deletes the run's TaskRuns (their processes stopped).
async fn delete_task_runs(cp: &ControlPlane, r: &Resource) -> Result<(), ControlError> {
    for tr in cp.list("TaskRun", Some(&r.metadata.namespace))? {
        let mine = tr.metadata.labels.get(PIPELINE_RUN_LABEL) == Some(&r.metadata.name)
            && tr.metadata.annotations.get(PIPELINE_RUN_UID_ANNOTATION) == Some(&r.metadata.uid);
        if mine {
            match cp
                .delete("TaskRun", &tr.metadata.namespace, &tr.metadata.name)
                .await
            {
                Ok(_) | Err(ControlError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

static PIPELINE_RUN: KindInfo = KindInfo {
    group: GROUP,
    version: "v1",
    kind: "PipelineRun",
    plural: "pipelineruns",
    short_names: &["pr"],
    addressable: false,
    columns: RUN_COLUMNS,
};

#[async_trait::async_trait]
impl Kind for PipelineRun {
    fn info(&self) -> &'static KindInfo {
        &PIPELINE_RUN
    }

    fn validate(&self, r: &Resource, errors: &mut FieldErrors) {
        let Some(spec) = errors.decode::<PipelineRunSpec>("spec", &r.spec) else {
            return;
        };
        crate::validate::pipeline_run("spec", &spec, errors);
        check_params_when_made(&self.0, r, &spec.params, errors, |cp| {
            match (&spec.pipeline_spec, &spec.pipeline_ref) {
                (Some(p), _) => Some(p.params.clone()),
                (None, Some(pr)) => {
                    stored_pipeline(cp, &r.metadata.namespace, &pr.name).map(|(p, _)| p.params)
                }
                (None, None) => None,
            }
        });
    }

    fn validate_update(&self, old: &Resource, new: &Resource, errors: &mut FieldErrors) {
        immutable_run_spec(old, new, errors);
    }

    async fn reconcile(&self, cp: &ControlPlane, r: &Resource, pass: Flags) -> Reconciled {
        let unchanged = Reconciled::done(r.status.clone());
        let p = &self.0;
        if status::is_done(&r.status) {
            p.unsee(&r.metadata.uid);
            return unchanged;
        }
        let me = &cp.config().node;
        let observed = r.status.get("observedGeneration").and_then(Value::as_i64);
        if !pass.write {
            // Another node changed this node's run (a cancel made there): this node's
            // scheduler looks again, now that this node's copy shows the change.
            let changed = observed.is_some_and(|g| g != r.metadata.generation);
            if changed && events::owner(r, me) == *me {
                if let Err(e) = events::internal(cp, CHANGED_TYPE, r, "spec").await {
                    tracing::warn!(pipelinerun = %r.key(), error = %e, "cannot hand a PipelineRun's change to the scheduler");
                    return Reconciled::retry(r.status.clone());
                }
            }
            return unchanged;
        }
        let Some(r) = own_if_created(cp, r, pass).await else {
            return Reconciled::retry(r.status.clone());
        };
        let r = &r;
        if events::owner(r, me) != *me {
            // Another node's run: a change made here (a cancel) goes to that node (the event
            // names it); a start of this node leaves it alone.
            if observed != Some(r.metadata.generation) {
                if let Err(e) = events::internal(cp, CHANGED_TYPE, r, "spec").await {
                    tracing::warn!(pipelinerun = %r.key(), error = %e, "cannot hand a PipelineRun's change to its node");
                    return Reconciled::retry(unchanged.status);
                }
            }
            return unchanged;
        }
        let first = p.first_seen(&r.metadata.uid);
        let why = match (first, observed) {
            (true, None) => "created",
            (true, Some(_)) => "restart",
            (false, Some(g)) if g != r.metadata.generation => "spec",
            // Changed before the scheduler's first pass wrote what it saw.
            (false, None) => "spec",
            _ => return unchanged,
        };
        if let Err(e) = events::internal(cp, CHANGED_TYPE, r, why).await {
            tracing::warn!(pipelinerun = %r.key(), error = %e, "cannot hand a PipelineRun to the scheduler");
            if first {
                p.unsee(&r.metadata.uid);
            }
            return Reconciled::retry(unchanged.status);
        }
        unchanged
    }

    async fn finalize(&self, cp: &ControlPlane, r: &Resource) -> Result<(), ControlError> {
        let p = &self.0;
        p.mark_deleting(&r.metadata.uid);
        if let Err(e) = delete_task_runs(cp, r).await {
            p.unmark_deleting(&r.metadata.uid);
            return Err(e);
        }
        p.forget_deleting_later(&r.metadata.uid);
        p.forget_timer(&r.metadata.uid);
        p.unsee(&r.metadata.uid);
        let id = RunId {
            name: r.metadata.name.clone(),
            namespace: r.metadata.namespace.clone(),
            uid: r.metadata.uid.clone(),
            pipeline: None,
        };
        remove_dir(&p.runner().pipeline_run_dir(&id));
        // A run that held one of its Pipeline's slots gives it up.
        if let Some(pipeline) = r.spec["pipelineRef"]["name"].as_str() {
            crate::driver::wake_waiting(cp, &r.metadata.namespace, pipeline).await;
        }
        Ok(())
    }

    fn row(&self, r: &Resource) -> Vec<String> {
        run_row(r)
    }

    fn age_column(&self) -> bool {
        false
    }

    /// Nothing depends on a run: its frequent status writes look for no dependents.
    fn has_dependents(&self) -> bool {
        false
    }
}
