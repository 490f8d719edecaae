//! A PipelineRun's next moves, as a pure function of what is known: the pipeline, each task's
//! state, the results so far, the run's params, its cancellation mode and its timeouts. The
//! pipeline scheduler (a trigger on the runs' events) calls it on every transition and does
//! what it says: start tasks, skip them (with Tekton's reason), cancel running ones, and
//! report the run's `Succeeded` condition.
//!
//! Tekton's rules (../shared/specs/pipelines.md, "DAG and failure", "when", "finally"):
//! tasks whose parents are all done start together; after the first failure (not ignored) the
//! run is stopping: nothing new starts, what runs finishes, the rest is skipped; a parent
//! skipped by its `when` does not skip what only runs after it, but what uses its results is
//! skipped ("Results were missing"); other skips cascade; `finally` starts when every DAG task
//! is done; the outcome is Succeeded, Completed (something skipped) or Failed.

use crate::dag::{result_pairs, task_texts, Dag};
use crate::params::ParamValue;
use crate::spec::{PipelineSpec, PipelineTask, WhenExpression};
use crate::subst::Vars;
use std::collections::{BTreeMap, BTreeSet};

mod condition;

use condition::condition;
pub use condition::status_vars;

/// Where one pipeline task is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskState {
    NotStarted,
    Running,
    Succeeded,
    /// Failed, timed out or its retries exhausted; `ignored`: with `onError: continue`.
    Failed {
        ignored: bool,
    },
    Cancelled,
    Skipped(Skip),
}

impl TaskState {
    fn done(&self) -> bool {
        !matches!(self, TaskState::NotStarted | TaskState::Running)
    }
}

/// Why a task was skipped, in Tekton's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    Stopping,
    GracefullyCancelled,
    GracefullyStopped,
    WhenFalse,
    ParentSkipped,
    ResultsMissing,
    /// `timeouts.pipeline` reached.
    TimedOut,
    /// `timeouts.tasks` reached.
    TasksTimedOut,
    EmptyMatrix,
}

impl Skip {
    /// `status.skippedTasks[].reason`.
    pub fn reason(self) -> &'static str {
        match self {
            Skip::Stopping => "PipelineRun was stopping",
            Skip::GracefullyCancelled => "PipelineRun was gracefully cancelled",
            Skip::GracefullyStopped => "PipelineRun was gracefully stopped",
            Skip::WhenFalse => "When Expressions evaluated to false",
            Skip::ParentSkipped => "Parent Tasks were skipped",
            Skip::ResultsMissing => "Results were missing",
            Skip::TimedOut => "PipelineRun timeout has been reached",
            Skip::TasksTimedOut => "PipelineRun Tasks timeout has been reached",
            Skip::EmptyMatrix => "Matrix Parameters have an empty array",
        }
    }

    /// The skip a `status.skippedTasks[].reason` names.
    pub fn from_reason(reason: &str) -> Option<Skip> {
        [
            Skip::Stopping,
            Skip::GracefullyCancelled,
            Skip::GracefullyStopped,
            Skip::WhenFalse,
            Skip::ParentSkipped,
            Skip::ResultsMissing,
            Skip::TimedOut,
            Skip::TasksTimedOut,
            Skip::EmptyMatrix,
        ]
        .into_iter()
        .find(|s| s.reason() == reason)
    }
}

/// `spec.status` of the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    #[default]
    Normal,
    /// `Cancelled`: cancel what runs, no finally.
    Cancelled,
    /// `CancelledRunFinally`: cancel what runs, then finally.
    CancelledRunFinally,
    /// `StoppedRunFinally`: let what runs finish, start nothing new, then finally.
    StoppedRunFinally,
    /// `PipelineRunPending`: nothing starts yet (and no timeout runs).
    Pending,
}

impl Mode {
    pub fn of(status: Option<&str>) -> Mode {
        match status {
            Some("Cancelled") => Mode::Cancelled,
            Some("CancelledRunFinally") => Mode::CancelledRunFinally,
            Some("StoppedRunFinally") => Mode::StoppedRunFinally,
            Some("PipelineRunPending") => Mode::Pending,
            _ => Mode::Normal,
        }
    }
}

/// What is known of a run at one moment.
pub struct View<'a> {
    pub spec: &'a PipelineSpec,
    pub dag: &'a Dag,
    /// Every task's state (DAG and finally), by name; absent means not started.
    pub states: &'a BTreeMap<String, TaskState>,
    /// Each task's results so far (a matrixed task's as arrays).
    pub results: &'a BTreeMap<String, BTreeMap<String, ParamValue>>,
    /// The run's resolved params.
    pub params: &'a BTreeMap<String, ParamValue>,
    pub mode: Mode,
    /// `timeouts.tasks` has passed (DAG tasks are cancelled, finally still runs).
    pub tasks_timed_out: bool,
    /// `timeouts.pipeline` has passed (everything is cancelled, no finally).
    pub pipeline_timed_out: bool,
}

/// One thing the scheduler should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Start(String),
    Skip(String, Skip),
    Cancel(String),
    /// The task cannot run (a result it uses is missing): it counts as failed.
    Fail(String, String),
}

/// The run's `Succeeded` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    /// `True`, `False` or `Unknown`.
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
}

/// What to do now, and how the run stands once it is done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Next {
    pub actions: Vec<Action>,
    pub condition: Condition,
    /// A DAG task uses a result its (succeeded) parent did not write: the run fails with
    /// `InvalidTaskResultReference` (this message), whatever else happens.
    pub invalid_reference: Option<String>,
}

impl View<'_> {
    fn state(&self, task: &str) -> TaskState {
        self.states
            .get(task)
            .cloned()
            .unwrap_or(TaskState::NotStarted)
    }

    /// Params, results, and (for finally) the tasks' statuses, for `when` and matrices.
    fn vars(&self, states: &BTreeMap<String, TaskState>, for_finally: bool) -> Vars {
        let mut v = Vars::default();
        for (name, value) in self.params {
            v.set_value(format!("params.{name}"), value);
        }
        for (task, results) in self.results {
            for (name, value) in results {
                v.set_value(format!("tasks.{task}.results.{name}"), value);
            }
        }
        if for_finally {
            for (k, value) in status_vars(self.spec, states) {
                v.set(k, value);
            }
        }
        v
    }
}

/// Whether every `when` holds (they are ANDed; `values` may expand `[*]`).
pub fn when_holds(when: &[WhenExpression], vars: &Vars) -> bool {
    when.iter().all(|w| {
        let input = vars.replace(&w.input);
        let values = vars.expand_list(&w.values);
        let found = values.contains(&input);
        match w.operator.as_str() {
            "notin" => !found,
            _ => found,
        }
    })
}

/// The results `t` uses, by (task, result).
fn uses(t: &PipelineTask) -> BTreeSet<(String, String)> {
    task_texts(t).iter().flat_map(|s| result_pairs(s)).collect()
}

fn has_result(view: &View, task: &str, result: &str) -> bool {
    view.results
        .get(task)
        .is_some_and(|r| r.contains_key(result))
}

/// Whether a matrixed task has no combination (a matrix param is an empty array).
fn empty_matrix(t: &PipelineTask, vars: &Vars) -> bool {
    let Some(m) = &t.matrix else { return false };
    m.params.iter().any(|p| match &p.value {
        ParamValue::Array(items) => vars.expand_list(items).is_empty(),
        ParamValue::String(s) => vars.whole_array(s).is_some_and(Vec::is_empty),
        ParamValue::Object(_) => false,
    })
}

/// Records one decision: skip `task` (with its reason), or start it.
fn decide(
    states: &mut BTreeMap<String, TaskState>,
    actions: &mut Vec<Action>,
    task: &str,
    skip: Option<Skip>,
) {
    match skip {
        Some(s) => {
            states.insert(task.to_string(), TaskState::Skipped(s));
            actions.push(Action::Skip(task.to_string(), s));
        }
        None => {
            states.insert(task.to_string(), TaskState::Running);
            actions.push(Action::Start(task.to_string()));
        }
    }
}

/// The run's next moves.
pub fn next(view: &View) -> Next {
    if view.mode == Mode::Pending && view.states.values().all(|s| *s == TaskState::NotStarted) {
        return Next {
            actions: Vec::new(),
            condition: Condition {
                status: "Unknown",
                reason: "PipelineRunPending",
                message: "PipelineRun is pending".into(),
            },
            invalid_reference: None,
        };
    }
    let mut actions = Vec::new();
    let mut states: BTreeMap<String, TaskState> = view.states.clone();
    let mut invalid_reference = None;
    let dag_failed = |states: &BTreeMap<String, TaskState>| {
        view.spec.tasks.iter().any(|t| {
            matches!(
                states.get(&t.name),
                Some(TaskState::Failed { ignored: false } | TaskState::Cancelled)
            )
        })
    };
    let cancelling = matches!(view.mode, Mode::Cancelled | Mode::CancelledRunFinally)
        || view.pipeline_timed_out
        || view.tasks_timed_out;
    // Cancel what runs: everything on `Cancelled` or the pipeline timeout, DAG tasks on
    // `CancelledRunFinally` and the tasks timeout.
    let cancel_finally = view.mode == Mode::Cancelled || view.pipeline_timed_out;
    for t in &view.spec.tasks {
        if cancelling && view.state(&t.name) == TaskState::Running {
            actions.push(Action::Cancel(t.name.clone()));
        }
    }
    for t in &view.spec.finally {
        if cancel_finally && view.state(&t.name) == TaskState::Running {
            actions.push(Action::Cancel(t.name.clone()));
        }
    }
    // DAG tasks, parents before children (so a skip cascades within one call).
    let vars = view.vars(&states, false);
    let mut progressed = true;
    while progressed {
        progressed = false;
        for t in &view.spec.tasks {
            if states
                .get(&t.name)
                .is_some_and(|s| *s != TaskState::NotStarted)
            {
                continue;
            }
            let parents = view.dag.parents.get(&t.name).cloned().unwrap_or_default();
            if !parents
                .iter()
                .all(|p| states.get(p).is_some_and(TaskState::done))
            {
                continue;
            }
            let used = uses(t);
            // A result a succeeded parent did not write: the run fails (a consumer that may
            // fail, `onError: continue`, is skipped instead).
            let missing = used.iter().find(|(task, r)| {
                matches!(
                    states.get(task),
                    Some(TaskState::Succeeded | TaskState::Failed { ignored: true })
                ) && !has_result(view, task, r)
            });
            // Tekton's precedence (`skip()`).
            let skip = if dag_failed(&states) {
                Some(Skip::Stopping)
            } else if view.mode == Mode::CancelledRunFinally || view.mode == Mode::Cancelled {
                Some(Skip::GracefullyCancelled)
            } else if view.mode == Mode::StoppedRunFinally {
                Some(Skip::GracefullyStopped)
            } else if !when_holds(&t.when, &vars) {
                Some(Skip::WhenFalse)
            } else if parents.iter().any(
                |p| matches!(states.get(p), Some(TaskState::Skipped(s)) if *s != Skip::WhenFalse),
            ) {
                Some(Skip::ParentSkipped)
            } else if used.iter().any(|(task, _)| {
                matches!(states.get(task), Some(TaskState::Skipped(Skip::WhenFalse)))
            }) || (missing.is_some() && t.on_error.as_deref() == Some("continue"))
            {
                Some(Skip::ResultsMissing)
            } else if view.pipeline_timed_out {
                Some(Skip::TimedOut)
            } else if view.tasks_timed_out {
                Some(Skip::TasksTimedOut)
            } else if let Some((task, result)) = missing {
                let message = format!(
                    "invalid result reference in pipeline task {:?}: task {task:?} did not produce result {result:?}",
                    t.name
                );
                invalid_reference.get_or_insert(message.clone());
                states.insert(t.name.clone(), TaskState::Failed { ignored: false });
                actions.push(Action::Fail(t.name.clone(), message));
                progressed = true;
                continue;
            } else if empty_matrix(t, &vars) {
                Some(Skip::EmptyMatrix)
            } else {
                None
            };
            decide(&mut states, &mut actions, &t.name, skip);
            progressed = true;
        }
    }
    // Finally, once no DAG task is left to run.
    let dag_done = view
        .spec
        .tasks
        .iter()
        .all(|t| states.get(&t.name).is_some_and(TaskState::done));
    if dag_done {
        let fvars = view.vars(&states, true);
        for t in &view.spec.finally {
            if states
                .get(&t.name)
                .is_some_and(|s| *s != TaskState::NotStarted)
            {
                continue;
            }
            let used = uses(t);
            let skip = if view.mode == Mode::Cancelled || view.pipeline_timed_out {
                Some(if view.pipeline_timed_out {
                    Skip::TimedOut
                } else {
                    Skip::GracefullyCancelled
                })
            } else if used.iter().any(|(task, r)| !has_result(view, task, r)) {
                Some(Skip::ResultsMissing)
            } else if !when_holds(&t.when, &fvars) {
                Some(Skip::WhenFalse)
            } else if empty_matrix(t, &fvars) {
                Some(Skip::EmptyMatrix)
            } else {
                None
            };
            decide(&mut states, &mut actions, &t.name, skip);
        }
    }
    let condition = condition(
        view,
        &states,
        dag_failed(&states),
        invalid_reference.as_deref(),
    );
    Next {
        actions,
        condition,
        invalid_reference,
    }
}

#[cfg(test)]
mod tests;
