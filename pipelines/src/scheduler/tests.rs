//! The scheduler against Tekton's rules, one scenario at a time.
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
