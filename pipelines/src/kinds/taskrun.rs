//! TaskRun: queued to the executor (`dev.ferry.pipelines.taskrun.queued.v1`) when it is
//! created and when Ferry starts while it has not ended; cancelled through `spec.status:
//! TaskRunCancelled`; its status is written by the executor ([`crate::worker`]).

use super::{
    check_params_when_made, immutable_run_spec, run_row, stored_task, GROUP, PIPELINE_RUN_LABEL,
    RUN_COLUMNS,
};
use crate::events::{self, QUEUED_TYPE};
use crate::spec::TaskRunSpec;
use crate::status;
use crate::Pipelines;
use control::kind::Flags;
use control::kind::KindInfo;
use control::{ControlError, ControlPlane, FieldErrors, Key, Kind, Reconciled, Resource};
use std::sync::Arc;
use std::time::Duration;

pub struct TaskRun(pub Arc<Pipelines>);

static TASK_RUN: KindInfo = KindInfo {
    group: GROUP,
    version: "v1",
    kind: "TaskRun",
    plural: "taskruns",
    short_names: &["tr"],
    addressable: false,
    columns: RUN_COLUMNS,
};

/// How long deleting a TaskRun waits for its processes to stop.
const STOP_WAIT: Duration = Duration::from_secs(10);

#[async_trait::async_trait]
impl Kind for TaskRun {
    fn info(&self) -> &'static KindInfo {
        &TASK_RUN
    }

    fn validate(&self, r: &Resource, errors: &mut FieldErrors) {
        let Some(spec) = errors.decode::<TaskRunSpec>("spec", &r.spec) else {
            return;
        };
        crate::validate::task_run("spec", &spec, errors);
        // A PipelineRun's TaskRuns are checked when they run (and fail as Tekton's do).
        if r.metadata.labels.contains_key(PIPELINE_RUN_LABEL) {
            return;
        }
        check_params_when_made(&self.0, r, &spec.params, errors, |cp| {
            match (&spec.task_spec, &spec.task_ref) {
                (Some(t), _) => Some(t.params.clone()),
                (None, Some(tr)) => {
                    stored_task(cp, &r.metadata.namespace, &tr.name).map(|t| t.params)
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
        let key = r.key();
        let cancel = r.spec["status"] == "TaskRunCancelled";
        // Running here: a cancel made anywhere (another node, in Kafka mode) stops it.
        if p.is_running(&key, &r.metadata.uid) {
            if cancel {
                p.cancel_running(&key);
            }
            return unchanged;
        }
        if !pass.write {
            return unchanged;
        }
        // Whatever it waits for (a cancel, TaskRunPending), it is the node's it was made on.
        let Some(r) = super::pipelinerun::own_if_created(cp, r, pass).await else {
            return Reconciled::retry(unchanged.status);
        };
        let r = &r;
        if cancel {
            if let Err(e) = crate::worker::cancelled(cp, r).await {
                tracing::warn!(taskrun = %key, error = %e, "cannot record a TaskRun's cancellation");
                return Reconciled::retry(r.status.clone());
            }
            return unchanged;
        }
        if r.spec["status"] == "TaskRunPending" {
            return unchanged;
        }
        // Created, or found not ended after a start: to the executor (its node's: a start of
        // this node picks up only this node's TaskRuns).
        if events::owner(r, &cp.config().node) != cp.config().node {
            return unchanged;
        }
        if p.first_seen(&r.metadata.uid) {
            if let Err(e) = events::internal(cp, QUEUED_TYPE, r, "").await {
                tracing::warn!(taskrun = %key, error = %e, "cannot queue a TaskRun");
                p.unsee(&r.metadata.uid);
                return Reconciled::retry(r.status.clone());
            }
        }
        unchanged
    }

    async fn finalize(&self, cp: &ControlPlane, r: &Resource) -> Result<(), ControlError> {
        let p = &self.0;
        let pr = crate::worker::pipeline_run(r).filter(|pr| !p.is_deleting(&pr.uid));
        // Its end is not written (deleted by hand, it is no failure of its run, which makes it
        // anew, as Tekton does), and its queued events are done with.
        p.mark_deleting(&r.metadata.uid);
        self.release(cp, &r.key()).await;
        p.unsee(&r.metadata.uid);
        match pr {
            Some(pr) => tell_when_gone(p.clone(), r.key(), r.metadata.uid.clone(), pr),
            None => {
                p.forget_deleting_later(&r.metadata.uid);
                if !r.metadata.labels.contains_key(PIPELINE_RUN_LABEL) {
                    let dir = p.runner().task_run_dir(
                        &r.metadata.namespace,
                        &r.metadata.name,
                        &r.metadata.uid,
                        None,
                    );
                    remove_dir(&dir);
                }
            }
        }
        Ok(())
    }

    async fn release(&self, _cp: &ControlPlane, key: &Key) {
        if let Some(stopped) = self.0.cancel_running(key) {
            let _ = tokio::time::timeout(STOP_WAIT, stopped.cancelled()).await;
        }
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

/// How often, and how many times, a deleted TaskRun is looked for until it is gone.
const GONE_POLL: Duration = Duration::from_millis(50);
const GONE_TRIES: u32 = 200;

/// Once the TaskRun `key` has left the store, its PipelineRun looks again (a pass before that
/// would still see it).
fn tell_when_gone(p: Arc<Pipelines>, key: Key, uid: String, pr: crate::taskrun::RunId) {
    tokio::spawn(async move {
        let Some(cp) = p.control() else { return };
        for _ in 0..GONE_TRIES {
            if !matches!(cp.find(&key.kind, &key.namespace, &key.name), Ok(Some(t)) if t.metadata.uid == uid)
            {
                break;
            }
            tokio::time::sleep(GONE_POLL).await;
        }
        p.forget_deleting_later(&uid);
        if let Ok(Some(run)) = cp.find("PipelineRun", &pr.namespace, &pr.name) {
            if run.metadata.uid == pr.uid && !status::is_done(&run.status) {
                if let Err(e) =
                    events::internal(&cp, events::CHANGED_TYPE, &run, "child deleted").await
                {
                    tracing::warn!(pipelinerun = %run.key(), error = %e, "cannot tell a PipelineRun its TaskRun is gone");
                }
            }
        }
    });
}

/// Removes a run's directory (logged if it cannot).
pub(super) fn remove_dir(dir: &std::path::Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a run's directory")
        }
    }
}
