//! The run's outward state: its `Succeeded` condition with Tekton's reasons and messages, and
//! what finally tasks may read of the DAG tasks.

use super::Condition;
use super::{Mode, TaskState, View};
use crate::spec::PipelineSpec;
use std::collections::BTreeMap;

/// What finally tasks may read of the DAG tasks: `tasks.T.status` (`Succeeded`, `Failed`,
/// `None` when skipped), `tasks.T.reason`, and `tasks.status` (`Succeeded`, `Failed`,
/// `Completed`).
pub fn status_vars(
    spec: &PipelineSpec,
    states: &BTreeMap<String, TaskState>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut any_failed = false;
    let mut any_skipped = false;
    for t in &spec.tasks {
        let st = states
            .get(&t.name)
            .cloned()
            .unwrap_or(TaskState::NotStarted);
        let (status, reason) = match &st {
            TaskState::Succeeded => ("Succeeded", "Succeeded"),
            TaskState::Failed { ignored: true } => ("Failed", "FailureIgnored"),
            TaskState::Failed { ignored: false } => ("Failed", "Failed"),
            TaskState::Cancelled => ("Failed", "TaskRunCancelled"),
            TaskState::Skipped(_) | TaskState::NotStarted | TaskState::Running => ("None", "None"),
        };
        // An ignored failure is a failure to `$(tasks.status)` too (as upstream).
        any_failed |= matches!(st, TaskState::Failed { .. } | TaskState::Cancelled);
        any_skipped |= matches!(st, TaskState::Skipped(_));
        out.push((format!("tasks.{}.status", t.name), status.to_string()));
        out.push((format!("tasks.{}.reason", t.name), reason.to_string()));
    }
    let overall = if any_failed {
        "Failed"
    } else if any_skipped {
        "Completed"
    } else {
        "Succeeded"
    };
    out.push(("tasks.status".to_string(), overall.to_string()));
    out
}

/// The run's condition once `states` hold.
pub(super) fn condition(
    view: &View,
    states: &BTreeMap<String, TaskState>,
    dag_failed: bool,
    invalid: Option<&str>,
) -> Condition {
    let all = view.spec.tasks.iter().chain(&view.spec.finally);
    let (mut completed, mut failed, mut ignored, mut cancelled, mut skipped, mut incomplete) =
        (0, 0, 0, 0, 0, 0);
    for t in all {
        match states.get(&t.name).unwrap_or(&TaskState::NotStarted) {
            TaskState::Succeeded => completed += 1,
            TaskState::Failed { ignored: i } => {
                completed += 1;
                failed += 1;
                if *i {
                    ignored += 1;
                }
            }
            TaskState::Cancelled => {
                completed += 1;
                cancelled += 1;
            }
            TaskState::Skipped(_) => skipped += 1,
            TaskState::NotStarted | TaskState::Running => incomplete += 1,
        }
    }
    let failed_text = if ignored > 0 {
        format!("{failed} (Ignored: {ignored})")
    } else {
        failed.to_string()
    };
    let real_failures = failed - ignored;
    let any_real_failure = states
        .values()
        .any(|s| matches!(s, TaskState::Failed { ignored: false }));
    let finally_failed = view.spec.finally.iter().any(|t| {
        matches!(
            states.get(&t.name),
            Some(TaskState::Failed { ignored: false } | TaskState::Cancelled)
        )
    });
    if incomplete > 0 {
        let message = format!(
            "Tasks Completed: {completed} (Failed: {real_failures}, Cancelled {cancelled}), Incomplete: {incomplete}, Skipped: {skipped}"
        );
        let reason = match view.mode {
            Mode::CancelledRunFinally => "CancelledRunningFinally",
            Mode::StoppedRunFinally => "StoppedRunningFinally",
            _ if view.tasks_timed_out => "PipelineRunTimeoutRunningFinally",
            _ if dag_failed => "PipelineRunStopping",
            _ => "Running",
        };
        return Condition {
            status: "Unknown",
            reason,
            message,
        };
    }
    let message = format!(
        "Tasks Completed: {completed} (Failed: {failed_text}, Cancelled {cancelled}), Skipped: {skipped}"
    );
    let (status, reason) = if let Some(m) = invalid {
        return Condition {
            status: "False",
            reason: "InvalidTaskResultReference",
            message: m.to_string(),
        };
    } else if view.pipeline_timed_out || view.tasks_timed_out {
        ("False", "PipelineRunTimeout")
    } else if any_real_failure {
        ("False", "Failed")
    } else if view.mode != Mode::Normal {
        ("False", "Cancelled")
    } else if dag_failed || finally_failed {
        ("False", "Failed")
    } else if skipped > 0 {
        ("True", "Completed")
    } else {
        ("True", "Succeeded")
    };
    Condition {
        status,
        reason,
        message,
    }
}
