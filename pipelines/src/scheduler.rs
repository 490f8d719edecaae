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
            match skip {
                Some(s) => {
                    states.insert(t.name.clone(), TaskState::Skipped(s));
                    actions.push(Action::Skip(t.name.clone(), s));
                }
                None => {
                    states.insert(t.name.clone(), TaskState::Running);
                    actions.push(Action::Start(t.name.clone()));
                }
            }
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
            match skip {
                Some(s) => {
                    states.insert(t.name.clone(), TaskState::Skipped(s));
                    actions.push(Action::Skip(t.name.clone(), s));
                }
                None => {
                    states.insert(t.name.clone(), TaskState::Running);
                    actions.push(Action::Start(t.name.clone()));
                }
            }
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

/// The run's condition once `states` hold.
fn condition(
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Run {
        spec: PipelineSpec,
        dag: Dag,
        states: BTreeMap<String, TaskState>,
        results: BTreeMap<String, BTreeMap<String, ParamValue>>,
        params: BTreeMap<String, ParamValue>,
        mode: Mode,
        tasks_timed_out: bool,
        pipeline_timed_out: bool,
    }

    impl Run {
        fn new(spec: serde_json::Value) -> Run {
            let spec: PipelineSpec = serde_json::from_value(spec).unwrap();
            let dag = Dag::of(&spec).unwrap();
            Run {
                spec,
                dag,
                states: BTreeMap::new(),
                results: BTreeMap::new(),
                params: BTreeMap::new(),
                mode: Mode::Normal,
                tasks_timed_out: false,
                pipeline_timed_out: false,
            }
        }

        /// Applies what `next` says (starts become Running) and returns it.
        fn step(&mut self) -> Next {
            let view = View {
                spec: &self.spec,
                dag: &self.dag,
                states: &self.states,
                results: &self.results,
                params: &self.params,
                mode: self.mode,
                tasks_timed_out: self.tasks_timed_out,
                pipeline_timed_out: self.pipeline_timed_out,
            };
            let n = next(&view);
            for a in &n.actions {
                match a {
                    Action::Start(t) => self.states.insert(t.clone(), TaskState::Running),
                    Action::Skip(t, s) => self.states.insert(t.clone(), TaskState::Skipped(*s)),
                    Action::Cancel(t) => self.states.insert(t.clone(), TaskState::Cancelled),
                    Action::Fail(t, _) => self
                        .states
                        .insert(t.clone(), TaskState::Failed { ignored: false }),
                };
            }
            n
        }

        fn finish(&mut self, task: &str, state: TaskState) {
            self.states.insert(task.into(), state);
        }

        fn result(&mut self, task: &str, name: &str, value: &str) {
            self.results
                .entry(task.into())
                .or_default()
                .insert(name.into(), ParamValue::String(value.into()));
        }
    }

    fn started(n: &Next) -> Vec<&str> {
        n.actions
            .iter()
            .filter_map(|a| match a {
                Action::Start(t) => Some(t.as_str()),
                _ => None,
            })
            .collect()
    }

    fn t(name: &str, extra: serde_json::Value) -> serde_json::Value {
        let mut v = json!({"name": name, "taskRef": {"name": "x"}});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        v
    }

    #[test]
    fn independent_tasks_start_together_and_results_feed_the_next() {
        let mut r = Run::new(json!({"tasks": [
            t("a", json!({})),
            t("b", json!({})),
            t("c", json!({"params": [{"name": "x", "value": "$(tasks.a.results.sum)"}]})),
        ]}));
        let n = r.step();
        assert_eq!(started(&n), ["a", "b"]);
        assert_eq!(n.condition.reason, "Running");
        assert_eq!(
            n.condition.message,
            "Tasks Completed: 0 (Failed: 0, Cancelled 0), Incomplete: 3, Skipped: 0"
        );
        r.result("a", "sum", "4");
        r.finish("a", TaskState::Succeeded);
        assert_eq!(started(&r.step()), ["c"]);
        r.finish("b", TaskState::Succeeded);
        r.finish("c", TaskState::Succeeded);
        let n = r.step();
        assert_eq!(
            (n.condition.status, n.condition.reason),
            ("True", "Succeeded")
        );
        assert_eq!(
            n.condition.message,
            "Tasks Completed: 3 (Failed: 0, Cancelled 0), Skipped: 0"
        );
    }

    #[test]
    fn when_false_skips_the_task_not_what_only_runs_after_it() {
        let mut r = Run::new(json!({
            "params": [{"name": "go", "default": "no"}],
            "tasks": [
                t("guarded", json!({"when": [{"input": "$(params.go)", "operator": "in", "values": ["yes"]}]})),
                t("after", json!({"runAfter": ["guarded"]})),
                t("user", json!({"params": [{"name": "x", "value": "$(tasks.guarded.results.r)"}]})),
                t("grandchild", json!({"runAfter": ["user"]})),
            ],
        }));
        r.params
            .insert("go".into(), ParamValue::String("no".into()));
        let n = r.step();
        assert_eq!(started(&n), ["after"]);
        assert!(n
            .actions
            .contains(&Action::Skip("guarded".into(), Skip::WhenFalse)));
        assert!(n
            .actions
            .contains(&Action::Skip("user".into(), Skip::ResultsMissing)));
        assert!(n
            .actions
            .contains(&Action::Skip("grandchild".into(), Skip::ParentSkipped)));
        r.finish("after", TaskState::Succeeded);
        let n = r.step();
        assert_eq!(
            (n.condition.status, n.condition.reason),
            ("True", "Completed")
        );
        assert_eq!(
            n.condition.message,
            "Tasks Completed: 1 (Failed: 0, Cancelled 0), Skipped: 3"
        );
    }

    #[test]
    fn a_failure_stops_the_run_and_finally_sees_it() {
        let mut r = Run::new(json!({
            "tasks": [t("a", json!({})), t("slow", json!({})), t("b", json!({"runAfter": ["a"]}))],
            "finally": [
                t("report", json!({"params": [{"name": "s", "value": "$(tasks.a.status)"}],
                    "when": [{"input": "$(tasks.status)", "operator": "in", "values": ["Failed"]}]})),
                t("on-success", json!({"when": [{"input": "$(tasks.status)", "operator": "in", "values": ["Succeeded"]}]})),
            ],
        }));
        assert_eq!(started(&r.step()), ["a", "slow"]);
        r.finish("a", TaskState::Failed { ignored: false });
        let n = r.step();
        assert_eq!(n.actions, [Action::Skip("b".into(), Skip::Stopping)]);
        assert_eq!(n.condition.reason, "PipelineRunStopping");
        // What runs finishes; then finally.
        r.finish("slow", TaskState::Succeeded);
        let n = r.step();
        assert_eq!(started(&n), ["report"]);
        assert!(n
            .actions
            .contains(&Action::Skip("on-success".into(), Skip::WhenFalse)));
        r.finish("report", TaskState::Succeeded);
        let n = r.step();
        assert_eq!(
            (n.condition.status, n.condition.reason),
            ("False", "Failed")
        );
        assert_eq!(
            n.condition.message,
            "Tasks Completed: 3 (Failed: 1, Cancelled 0), Skipped: 2"
        );
    }

    #[test]
    fn an_ignored_failure_lets_the_run_succeed() {
        let mut r = Run::new(json!({"tasks": [
            t("flaky", json!({"onError": "continue"})),
            t("next", json!({"runAfter": ["flaky"]})),
        ]}));
        r.step();
        r.finish("flaky", TaskState::Failed { ignored: true });
        assert_eq!(started(&r.step()), ["next"]);
        r.finish("next", TaskState::Succeeded);
        let n = r.step();
        assert_eq!(
            (n.condition.status, n.condition.reason),
            ("True", "Succeeded")
        );
        assert_eq!(
            n.condition.message,
            "Tasks Completed: 2 (Failed: 1 (Ignored: 1), Cancelled 0), Skipped: 0"
        );
    }

    #[test]
    fn a_missing_result_fails_the_run() {
        let mut r = Run::new(json!({"tasks": [
            t("a", json!({})),
            t("b", json!({"params": [{"name": "x", "value": "$(tasks.a.results.out)"}]})),
        ]}));
        r.step();
        r.finish("a", TaskState::Succeeded);
        let n = r.step();
        assert_eq!(n.condition.reason, "InvalidTaskResultReference");
        assert!(
            n.condition.message.contains("\"out\""),
            "{}",
            n.condition.message
        );
    }

    #[test]
    fn cancellation_modes() {
        let spec = json!({
            "tasks": [t("a", json!({})), t("b", json!({"runAfter": ["a"]}))],
            "finally": [t("f", json!({}))],
        });
        // Cancelled: cancel what runs, no finally.
        let mut r = Run::new(spec.clone());
        r.step();
        r.mode = Mode::Cancelled;
        let n = r.step();
        assert!(n.actions.contains(&Action::Cancel("a".into())));
        let n = r.step();
        assert!(n
            .actions
            .contains(&Action::Skip("f".into(), Skip::GracefullyCancelled)));
        assert_eq!(
            (n.condition.status, n.condition.reason),
            ("False", "Cancelled")
        );
        // StoppedRunFinally: what runs finishes, nothing new, then finally.
        let mut r = Run::new(spec);
        r.step();
        r.mode = Mode::StoppedRunFinally;
        let n = r.step();
        assert!(n.actions.is_empty(), "{n:?}");
        assert_eq!(n.condition.reason, "StoppedRunningFinally");
        r.finish("a", TaskState::Succeeded);
        let n = r.step();
        assert_eq!(
            n.actions,
            [
                Action::Skip("b".into(), Skip::GracefullyStopped),
                Action::Start("f".into())
            ]
        );
        r.finish("f", TaskState::Succeeded);
        assert_eq!(r.step().condition.reason, "Cancelled");
    }

    #[test]
    fn timeouts_cancel_what_runs_and_the_tasks_timeout_still_runs_finally() {
        let spec = json!({
            "tasks": [t("a", json!({})), t("b", json!({"runAfter": ["a"]}))],
            "finally": [t("f", json!({}))],
        });
        // timeouts.tasks: DAG tasks cancelled, the rest skipped, finally runs. Cancelling
        // takes effect when the executor reports it (here at once, by `step`).
        let mut r = Run::new(spec.clone());
        r.step();
        r.tasks_timed_out = true;
        assert_eq!(r.step().actions, [Action::Cancel("a".into())]);
        let n = r.step();
        assert_eq!(
            n.actions,
            [
                Action::Skip("b".into(), Skip::Stopping),
                Action::Start("f".into())
            ]
        );
        assert_eq!(n.condition.reason, "PipelineRunTimeoutRunningFinally");
        r.finish("f", TaskState::Succeeded);
        let n = r.step();
        assert_eq!(
            (n.condition.status, n.condition.reason),
            ("False", "PipelineRunTimeout")
        );
        // timeouts.pipeline: everything cancelled, finally skipped.
        let mut r = Run::new(spec);
        r.step();
        r.pipeline_timed_out = true;
        assert_eq!(r.step().actions, [Action::Cancel("a".into())]);
        let n = r.step();
        assert!(
            n.actions
                .contains(&Action::Skip("f".into(), Skip::TimedOut)),
            "{n:?}"
        );
        assert_eq!(
            (n.condition.status, n.condition.reason),
            ("False", "PipelineRunTimeout")
        );
    }

    #[test]
    fn a_when_skip_does_not_cascade_even_below_another_skip() {
        // m is skipped (empty matrix); c runs after it but its own `when` is false, which
        // comes first: c is "When Expressions evaluated to false", so d, after c, runs.
        let mut r = Run::new(json!({"tasks": [
            t("m", json!({"matrix": {"params": [{"name": "v", "value": []}]}})),
            t("c", json!({"runAfter": ["m"],
                "when": [{"input": "a", "operator": "in", "values": ["b"]}]})),
            t("d", json!({"runAfter": ["c"]})),
        ]}));
        let n = r.step();
        assert_eq!(
            n.actions,
            [
                Action::Skip("m".into(), Skip::EmptyMatrix),
                Action::Skip("c".into(), Skip::WhenFalse),
                Action::Start("d".into()),
            ]
        );
    }

    #[test]
    fn a_pending_run_starts_nothing() {
        let mut r = Run::new(json!({"tasks": [t("a", json!({}))]}));
        r.mode = Mode::Pending;
        let n = r.step();
        assert!(n.actions.is_empty());
        assert_eq!(n.condition.reason, "PipelineRunPending");
    }

    #[test]
    fn an_empty_matrix_skips_its_task() {
        let mut r = Run::new(json!({"tasks": [
            t("m", json!({"matrix": {"params": [{"name": "v", "value": []}]}})),
        ]}));
        let n = r.step();
        assert_eq!(n.actions, [Action::Skip("m".into(), Skip::EmptyMatrix)]);
        assert_eq!(n.condition.reason, "Completed");
    }
}
