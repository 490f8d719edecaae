//! Pipelines as a user meets them: Tekton v1 YAML applied with `ferry apply`, run as local
//! processes by the real binary, every transition an event in `ferry-system/pipelines`.

use super::subscriber::TestSubscriber;
use super::support::*;
use super::triggers::apply;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Long enough for the whole upstream corpus on a busy 2-core machine.
const CORPUS_WAIT: Duration = Duration::from_secs(240);
const WAIT: Duration = Duration::from_secs(60);

fn corpus(part: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/conformance/tekton")
        .join(part)
}

/// A server whose shebang-less scripts run with bash, with `sh` on the steps' PATH being bash
/// too (the corpus README's advice: its scripts were written for busybox or bash).
fn start_bash(dir: &Path, extra: &[&str]) -> Server {
    let shim = dir.join("shim");
    std::fs::create_dir_all(&shim).unwrap();
    let _ = std::os::unix::fs::symlink("/bin/bash", shim.join("sh"));
    let path = format!(
        "{}:{}",
        shim.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut args = vec!["--pipelines-shell", "/bin/bash"];
    args.extend(extra);
    Server::start_with_env(&dir.join("data"), &args, &[("PATH", path)])
}

fn succeeded(r: &Value) -> (String, String, String) {
    let c = r["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Succeeded"));
    let get = |k: &str| c.and_then(|c| c[k].as_str()).unwrap_or("").to_string();
    (get("status"), get("reason"), get("message"))
}

fn done(r: &Value) -> bool {
    matches!(succeeded(r).0.as_str(), "True" | "False")
}

fn items(server: &Server, kind: &str, ns: &str) -> Vec<Value> {
    get_json(server, &["get", kind, "-n", ns])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits until run `kind/name` has ended; returns it.
async fn ended(server: &Server, kind: &str, ns: &str, name: &str) -> Value {
    eventually(WAIT, &format!("{kind} {ns}/{name} ended"), || async {
        let out = server.cli(&["get", kind, name, "-n", ns, "-o", "json"]);
        let r: Value = serde_json::from_slice(&out.stdout).ok()?;
        done(&r).then_some(r)
    })
    .await
}

fn result<'a>(r: &'a Value, name: &str) -> Option<&'a Value> {
    r["status"]["results"]
        .as_array()?
        .iter()
        .find(|x| x["name"] == name)
        .map(|x| &x["value"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upstream_example_ends_as_upstream_says() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_bash(dir.path(), &[]);
    let expected: &[(&str, &str, &str)] = &[
        ("taskruns", "task-result.yaml", "Succeeded"),
        ("taskruns", "steptemplate-env-merge.yaml", "Succeeded"),
        ("taskruns", "object-param-result.yaml", "Succeeded"),
        ("taskruns", "ignore-step-error.yaml", "Succeeded"),
        ("taskruns", "optional-workspaces.yaml", "Succeeded"),
        ("taskruns", "using_context_variables.yaml", "Succeeded"),
        ("taskruns", "default_task_params.yaml", "Succeeded"),
        ("taskruns", "emit-array-results.yaml", "Succeeded"),
        ("taskruns", "array-default.yaml", "Succeeded"),
        ("taskruns", "propagating_workspaces.yaml", "Succeeded"),
        ("pipelineruns", "pipelinerun-results.yaml", "Succeeded"),
        ("pipelineruns", "task_results_example.yaml", "Succeeded"),
        (
            "pipelineruns",
            "pipelinerun-with-final-results.yaml",
            "Succeeded",
        ),
        (
            "pipelineruns",
            "pipelinerun-task-execution-status.yaml",
            "Completed",
        ),
        (
            "pipelineruns",
            "pipelinerun-with-when-expressions.yaml",
            "Completed",
        ),
        ("pipelineruns", "6139-regression.yaml", "Completed"),
        ("pipelineruns", "ignore-step-error.yaml", "Succeeded"),
        ("pipelineruns", "ignore-task-error.yaml", "Succeeded"),
        (
            "pipelineruns",
            "using-retries-and-retry-count-variables.yaml",
            "Succeeded",
        ),
        ("pipelineruns", "pipelinerun-with-matrix.yaml", "Completed"),
        (
            "pipelineruns",
            "pipelinerun-with-matrix-emitting-results.yaml",
            "Succeeded",
        ),
        (
            "pipelineruns",
            "pipeline-emitting-results.yaml",
            "Succeeded",
        ),
        (
            "pipelineruns",
            "pipelinerun-with-parallel-tasks-using-pvc.yaml",
            "Succeeded",
        ),
        (
            "pipelineruns",
            "pipelinerun-array-results-substitution.yaml",
            "Succeeded",
        ),
        (
            "pipelineruns",
            "pipelinerun-with-task-timeout-override.yaml",
            "Succeeded",
        ),
    ];
    // Every file of the corpus is listed, and applied unchanged, each in its own namespace.
    for part in ["taskruns", "pipelineruns"] {
        let on_disk = std::fs::read_dir(corpus(part)).unwrap().count();
        let listed = expected.iter().filter(|(p, _, _)| *p == part).count();
        assert_eq!(
            on_disk, listed,
            "{part}: every file has its expected outcome"
        );
    }
    for (i, (part, file, _)) in expected.iter().enumerate() {
        let path = corpus(part).join(file);
        let ns = format!("c{i}");
        let out = server.cli(&["apply", "-f", path.to_str().unwrap(), "-n", &ns]);
        assert!(out.status.success(), "{file}: {}", stderr(&out));
    }
    for (i, (part, file, reason)) in expected.iter().enumerate() {
        let ns = format!("c{i}");
        let kind = if *part == "taskruns" {
            "taskruns"
        } else {
            "pipelineruns"
        };
        let runs = eventually(CORPUS_WAIT, &format!("{file} ended"), || async {
            let runs: Vec<Value> = items(&server, kind, &ns)
                .into_iter()
                .filter(|r| r["metadata"]["labels"]["tekton.dev/pipelineRun"].is_null())
                .collect();
            (!runs.is_empty() && runs.iter().all(done)).then_some(runs)
        })
        .await;
        // Reads /tekton/steps/... literally: only where steps get a private view of /tekton.
        if *file == "ignore-step-error.yaml" && !pipelines::sandbox::private_view_available() {
            continue;
        }
        for r in &runs {
            let (status, got, message) = succeeded(r);
            let logs = server.cli(&[
                "logs",
                kind,
                r["metadata"]["name"].as_str().unwrap(),
                "-n",
                &ns,
            ]);
            assert_eq!(
                (status.as_str(), got.as_str()),
                ("True", *reason),
                "{file}: {message}\n{}",
                stdout(&logs)
            );
        }
        let r = &runs[0];
        let s = |v: &str| Value::String(v.into());
        match *file {
            "pipelinerun-results.yaml" => {
                assert_eq!(result(r, "sum"), Some(&s("22")));
                assert_eq!(result(r, "partial-sum"), Some(&s("12")));
                assert_eq!(result(r, "all-sum"), Some(&s("22-12")));
            }
            "pipelinerun-with-final-results.yaml" => {
                assert_eq!(result(r, "task-result"), Some(&s("2")));
                assert_eq!(result(r, "finally-result"), Some(&s("484")));
            }
            "6139-regression.yaml" => {
                let results = r["status"]["results"].as_array().unwrap();
                assert_eq!(results.len(), 1, "{results:?}");
                assert_eq!(result(r, "result-hello"), Some(&s("RES1")));
            }
            "task_results_example.yaml" => {
                let sums: Vec<Value> = items(&server, "taskruns", &ns)
                    .iter()
                    .filter_map(|t| result(t, "sum").cloned())
                    .collect();
                assert!(sums.contains(&s("4024")), "{sums:?}");
            }
            "using-retries-and-retry-count-variables.yaml" => {
                let retried = items(&server, "taskruns", &ns)
                    .into_iter()
                    .find(|t| t["metadata"]["labels"]["tekton.dev/pipelineTask"] == "retry-me")
                    .unwrap();
                let attempts = retried["status"]["retriesStatus"].as_array().unwrap();
                assert_eq!(attempts.len(), 1, "fails once, then retries");
                let first = serde_json::json!({"status": attempts[0]});
                assert_eq!(succeeded(&first).0, "False");
            }
            "array-default.yaml" => {
                let name = r["metadata"]["name"].as_str().unwrap();
                let logs = stdout(&server.cli(&["logs", "taskrun", name, "-n", &ns]));
                assert!(
                    logs.contains("foo bar foo-default bar-default baz"),
                    "{logs}"
                );
            }
            _ => {}
        }
    }
}

/// A pipeline: `fail` exits 3, `after` depends on it, `report` is finally and sees its status.
const FAILING: &str = r#"apiVersion: tekton.dev/v1
kind: Pipeline
metadata: {name: failing}
spec:
  tasks:
    - name: fail
      taskSpec:
        steps:
          - name: boom
            image: alpine
            script: |
              echo about to fail
              exit 3
    - name: after
      runAfter: [fail]
      taskSpec:
        steps: [{name: never, script: "echo never"}]
  finally:
    - name: report
      params: [{name: s, value: "$(tasks.fail.status)"}]
      taskSpec:
        params: [{name: s}]
        results: [{name: seen}]
        steps:
          - name: tell
            script: 'printf "%s" "$(params.s)" > $(results.seen.path)'
---
apiVersion: tekton.dev/v1
kind: PipelineRun
metadata: {name: failing-1}
spec:
  pipelineRef: {name: failing}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_step_fails_the_run_finally_runs_and_a_users_trigger_hears_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let sub = TestSubscriber::start().await;
    // A user's trigger on the system broker: failures, with no code of Ferry's.
    apply(
        &server,
        &format!(
            "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: on-failure, namespace: ferry-system}}\nspec:\n  broker: pipelines\n  filter: {{attributes: {{type: dev.tekton.event.pipelinerun.failed.v1}}}}\n  subscriber: {{uri: {}}}\n",
            sub.at("/failed")
        ),
    );
    apply(&server, FAILING);
    let pr = ended(&server, "pipelinerun", "default", "failing-1").await;
    let (status, reason, message) = succeeded(&pr);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "Failed"),
        "{message}"
    );
    let skipped = pr["status"]["skippedTasks"].as_array().unwrap();
    assert!(
        skipped
            .iter()
            .any(|s| s["name"] == "after" && s["reason"] == "PipelineRun was stopping"),
        "{skipped:?}"
    );
    let fail = get_json(&server, &["get", "taskrun", "failing-1-fail"]);
    let (_, reason, message) = succeeded(&fail);
    assert_eq!(reason, "StepFailed");
    assert!(
        message.contains("\"step-boom\" exited with code 3"),
        "{message}"
    );
    assert_eq!(fail["status"]["steps"][0]["terminated"]["exitCode"], 3);
    let report = get_json(&server, &["get", "taskrun", "failing-1-report"]);
    assert_eq!(
        result(&report, "seen"),
        Some(&Value::String("Failed".into()))
    );
    // The user's trigger got Tekton's event, the run as `-o json` shows it.
    let got = sub.wait_for("/failed", 1, WAIT).await;
    assert_eq!(
        got[0].header("ce-type").as_deref(),
        Some("dev.tekton.event.pipelinerun.failed.v1")
    );
    assert_eq!(got[0].header("ce-subject").as_deref(), Some("failing-1"));
    assert_eq!(
        got[0].header("ce-source").as_deref(),
        Some("/apis/tekton.dev/v1/namespaces/default/pipelineruns/failing-1")
    );
    let data: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(succeeded(&data["pipelineRun"]).1, "Failed");
    // Every transition is in the broker, in order, keyed by the run.
    let events = server.events("ferry-system", "pipelines");
    let types: Vec<&str> = events
        .iter()
        .filter(|e| e["subject"] == "failing-1")
        .filter_map(|e| e["type"].as_str())
        .filter(|t| t.starts_with("dev.tekton"))
        .collect();
    assert_eq!(
        types.first(),
        Some(&"dev.tekton.event.pipelinerun.started.v1"),
        "{types:?}"
    );
    assert_eq!(
        types.last(),
        Some(&"dev.tekton.event.pipelinerun.failed.v1")
    );
    assert!(types.contains(&"dev.tekton.event.pipelinerun.running.v1"));
    assert!(events
        .iter()
        .filter(|e| e["type"].as_str().is_some_and(|t| t.contains("taskrun")))
        .all(|e| e["partitionkey"] == "default/failing-1"));
    // The CLI: the table, logs prefixed task/step, describe.
    let table = stdout(&server.cli(&["get", "pipelineruns"]));
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAMESPACE",
            "NAME",
            "SUCCEEDED",
            "REASON",
            "STARTED",
            "DURATION"
        ]
    );
    assert!(
        table.contains("failing-1") && table.contains("False"),
        "{table}"
    );
    let trs = stdout(&server.cli(&["get", "tr"]));
    assert!(
        trs.contains("failing-1-fail") && trs.contains("failing-1-report"),
        "{trs}"
    );
    let logs = stdout(&server.cli(&["logs", "pipelinerun", "failing-1"]));
    assert!(logs.contains("[fail/boom] about to fail"), "{logs}");
    let described = stdout(&server.cli(&["describe", "pipelinerun", "failing-1"]));
    assert!(described.contains("failing-1-fail"), "{described}");
    assert!(
        described.contains("PipelineRun was stopping"),
        "{described}"
    );
    // Delete takes the TaskRuns and the run's directory with it.
    let run_dir = dir.path().join("data/pipelines/default").join(format!(
        "failing-1-{}",
        pr["metadata"]["uid"].as_str().unwrap()
    ));
    assert!(run_dir.exists());
    let out = server.cli(&["delete", "pipelinerun", "failing-1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(items(&server, "taskruns", "default").is_empty());
    assert!(!run_dir.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pipelines_are_refused_with_the_field_named_and_nothing_applied() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let bad = r#"apiVersion: tekton.dev/v1
kind: Task
metadata: {name: fine}
spec:
  steps: [{script: "true"}]
---
apiVersion: tekton.dev/v1
kind: Pipeline
metadata: {name: cyclic}
spec:
  params: [{name: n, type: string}]
  tasks:
    - {name: a, runAfter: [b], taskRef: {name: fine}}
    - {name: b, runAfter: [a], taskRef: {name: fine}}
    - {name: c, runAfter: [nowhere], taskRef: {name: fine}}
"#;
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, bad).unwrap();
    let out = server.cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("cycle") && err.contains("a") && err.contains("b"),
        "{err}"
    );
    assert!(err.contains("nowhere"), "{err}");
    assert!(err.contains("bad.yaml"), "{err}");
    assert!(
        items(&server, "tasks", "default").is_empty(),
        "nothing applied"
    );
    // A run missing a param without default, another giving an array for a string.
    apply(
        &server,
        "apiVersion: tekton.dev/v1\nkind: Pipeline\nmetadata: {name: p}\nspec:\n  params: [{name: n, type: string}]\n  tasks: [{name: a, taskSpec: {steps: [{script: 'true'}]}}]\n",
    );
    let out = server.cli_stdin(
        &["apply", "-f", "-"],
        "apiVersion: tekton.dev/v1\nkind: PipelineRun\nmetadata: {name: r1}\nspec: {pipelineRef: {name: p}}\n",
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("spec.params") && stderr(&out).contains("\"n\""),
        "{}",
        stderr(&out)
    );
    let out = server.cli_stdin(
        &["apply", "-f", "-"],
        "apiVersion: tekton.dev/v1\nkind: PipelineRun\nmetadata: {name: r2}\nspec:\n  pipelineRef: {name: p}\n  params: [{name: n, value: [x, y]}]\n",
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("declared string but given array"),
        "{}",
        stderr(&out)
    );
    assert!(items(&server, "pipelineruns", "default").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_running_steps_and_graceful_cancel_runs_finally() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let pids = dir.path().join("pids");
    std::fs::create_dir_all(&pids).unwrap();
    let run = |name: &str| {
        format!(
            r#"apiVersion: tekton.dev/v1
kind: PipelineRun
metadata: {{name: {name}}}
spec:
  pipelineSpec:
    tasks:
      - name: slow
        taskSpec:
          steps:
            - script: |
                sleep 600 &
                echo $! > {dir}/{name}
                wait
    finally:
      - name: cleanup
        taskSpec:
          steps: [{{script: "echo cleaned"}}]
"#,
            dir = pids.display()
        )
    };
    for (name, flags, reason, finally_ran) in [
        ("hard", vec![], "Cancelled", false),
        ("soft", vec!["--graceful"], "Cancelled", true),
    ] {
        apply(&server, &run(name));
        let pid_file = pids.join(name);
        let pid: i32 = eventually(WAIT, "the step's sleep started", || async {
            std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
        })
        .await;
        let mut args = vec!["cancel", "pipelinerun", name];
        args.extend(flags);
        let out = server.cli(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        let pr = ended(&server, "pipelinerun", "default", name).await;
        assert_eq!(succeeded(&pr).0, "False");
        assert_eq!(succeeded(&pr).1, reason, "{pr}");
        let slow = get_json(&server, &["get", "taskrun", &format!("{name}-slow")]);
        assert_eq!(succeeded(&slow).1, "TaskRunCancelled");
        eventually(WAIT, "the step's processes are gone", || async {
            (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
        })
        .await;
        let cleanup = server.cli(&["get", "taskrun", &format!("{name}-cleanup")]);
        assert_eq!(cleanup.status.success(), finally_ran, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_end_runs_with_tektons_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    apply(
        &server,
        r#"apiVersion: tekton.dev/v1
kind: PipelineRun
metadata: {name: pipeline-timeout}
spec:
  timeouts: {pipeline: 1s}
  pipelineSpec:
    tasks: [{name: slow, taskSpec: {steps: [{script: "sleep 600"}]}}]
    finally: [{name: report, taskSpec: {steps: [{script: "true"}]}}]
---
apiVersion: tekton.dev/v1
kind: TaskRun
metadata: {name: task-timeout}
spec:
  timeout: 1s
  taskSpec:
    steps: [{script: "sleep 600"}]
"#,
    );
    let pr = ended(&server, "pipelinerun", "default", "pipeline-timeout").await;
    let (_, reason, message) = succeeded(&pr);
    assert_eq!(reason, "PipelineRunTimeout");
    assert_eq!(
        message,
        "PipelineRun \"pipeline-timeout\" failed to finish within \"1s\""
    );
    let tr = ended(&server, "taskrun", "default", "task-timeout").await;
    let (status, reason, message) = succeeded(&tr);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "TaskRunTimeout"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_result_fails_the_run_and_generate_name_makes_new_runs() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let run = r#"apiVersion: tekton.dev/v1
kind: PipelineRun
metadata: {generateName: missing-}
spec:
  pipelineSpec:
    tasks:
      - name: quiet
        taskSpec:
          results: [{name: out}]
          steps: [{script: "true"}]
      - name: reader
        params: [{name: v, value: "$(tasks.quiet.results.out)"}]
        taskSpec:
          params: [{name: v}]
          steps: [{script: "echo $(params.v)"}]
"#;
    apply(&server, run);
    apply(&server, run);
    let runs = eventually(WAIT, "both runs ended", || async {
        let runs = items(&server, "pipelineruns", "default");
        (runs.len() == 2 && runs.iter().all(done)).then_some(runs)
    })
    .await;
    for r in &runs {
        assert!(r["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("missing-"));
        let (status, reason, message) = succeeded(r);
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "InvalidTaskResultReference"),
            "{message}"
        );
        assert!(message.contains("out"), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limits_keep_runs_pending_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let server = Server::start(
        &dir.path().join("data"),
        &["--pipelines-max-running-tasks", "2"],
    );
    apply(
        &server,
        &format!(
            r#"apiVersion: tekton.dev/v1
kind: Pipeline
metadata:
  name: one-at-a-time
  annotations: {{ferry.dev/max-concurrent-runs: "1"}}
spec:
  tasks:
    - name: wait
      taskSpec:
        steps: [{{script: "while [ ! -e {gate} ]; do sleep 0.05; done"}}]
"#,
            gate = gate.display()
        ),
    );
    for name in ["first", "second"] {
        apply(
            &server,
            &format!("apiVersion: tekton.dev/v1\nkind: PipelineRun\nmetadata: {{name: {name}}}\nspec: {{pipelineRef: {{name: one-at-a-time}}}}\n"),
        );
    }
    eventually(WAIT, "first runs, second waits", || async {
        let first = get_json(&server, &["get", "pr", "first"]);
        let second = get_json(&server, &["get", "pr", "second"]);
        let pending = succeeded(&second);
        (succeeded(&first).1 == "Running" && pending.1 == "PipelineRunPending").then_some(pending.2)
    })
    .await;
    assert!(get_json(&server, &["get", "pr", "second"])["status"]["startTime"].is_null());
    // A third in line, cancelled while it waits: it ends at once, without starting.
    apply(
        &server,
        "apiVersion: tekton.dev/v1\nkind: PipelineRun\nmetadata: {name: third}\nspec: {pipelineRef: {name: one-at-a-time}}\n",
    );
    eventually(WAIT, "third waits", || async {
        let r = get_json(&server, &["get", "pr", "third"]);
        (succeeded(&r).1 == "PipelineRunPending").then_some(())
    })
    .await;
    let out = server.cli(&["cancel", "pr", "third"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let third = ended(&server, "pr", "default", "third").await;
    assert_eq!(succeeded(&third).1, "Cancelled");
    assert!(
        items(&server, "taskruns", "default")
            .iter()
            .all(|t| t["metadata"]["labels"]["tekton.dev/pipelineRun"] != "third"),
        "nothing of it ran"
    );
    // More TaskRuns than slots: the third waits Pending.
    let tr = |n: usize| {
        format!("apiVersion: tekton.dev/v1\nkind: TaskRun\nmetadata: {{name: tr{n}}}\nspec:\n  taskSpec:\n    steps: [{{script: \"while [ ! -e {} ]; do sleep 0.05; done\"}}]\n", gate.display())
    };
    apply(&server, &tr(1));
    apply(&server, &tr(2));
    eventually(WAIT, "a TaskRun waits for a slot", || async {
        let waiting = [1, 2].iter().any(|n| {
            let r = get_json(&server, &["get", "tr", &format!("tr{n}")]);
            succeeded(&r).1 == "Pending" && succeeded(&r).2.contains("task slots")
        });
        waiting.then_some(())
    })
    .await;
    std::fs::write(&gate, "").unwrap();
    for (kind, name) in [
        ("pr", "first"),
        ("pr", "second"),
        ("tr", "tr1"),
        ("tr", "tr2"),
    ] {
        let r = ended(&server, kind, "default", name).await;
        assert_eq!(succeeded(&r).0, "True", "{name}: {r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_survives_kill_9_of_ferry_its_step_retried_and_no_process_left() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let marks = dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let mut server = Server::start(&data, &[]);
    apply(
        &server,
        &format!(
            r#"apiVersion: tekton.dev/v1
kind: PipelineRun
metadata: {{name: survivor}}
spec:
  pipelineSpec:
    tasks:
      - name: slow
        retries: 1
        taskSpec:
          steps:
            - script: |
                if [ -e {m}/tried ]; then echo second; exit 0; fi
                touch {m}/tried
                sleep 600 &
                echo $! > {m}/pid
                wait
      - name: after
        runAfter: [slow]
        taskSpec:
          steps: [{{script: "echo after"}}]
"#,
            m = marks.display()
        ),
    );
    let pid: i32 = eventually(WAIT, "the first attempt is running", || async {
        std::fs::read_to_string(marks.join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    })
    .await;
    server.kill9();
    let server = Server::start(&data, &[]);
    eventually(WAIT, "the killed run's processes are gone", || async {
        (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    })
    .await;
    let pr = ended(&server, "pipelinerun", "default", "survivor").await;
    assert_eq!(succeeded(&pr).1, "Succeeded", "{pr}");
    let slow = get_json(&server, &["get", "taskrun", "survivor-slow"]);
    let attempts = slow["status"]["retriesStatus"].as_array().unwrap();
    assert_eq!(attempts.len(), 1);
    assert!(
        succeeded(&serde_json::json!({"status": attempts[0]}))
            .2
            .contains("Ferry stopped"),
        "{}",
        attempts[0]
    );
    let after = get_json(&server, &["get", "taskrun", "survivor-after"]);
    assert_eq!(succeeded(&after).1, "Succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_a_run_live_until_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let server = Server::start(&dir.path().join("data"), &[]);
    apply(
        &server,
        &format!(
            r#"apiVersion: tekton.dev/v1
kind: PipelineRun
metadata: {{name: live}}
spec:
  pipelineSpec:
    tasks:
      - name: talk
        taskSpec:
          steps:
            - name: say
              script: |
                echo first line
                while [ ! -e {gate} ]; do sleep 0.05; done
                echo second line
"#,
            gate = gate.display()
        ),
    );
    let mut follow = std::process::Command::new(BIN)
        .args(["logs", "pipelinerun", "live", "-f", "--server", &server.api])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let first = rx.recv_timeout(WAIT).unwrap();
    assert_eq!(first, "[talk/say] first line");
    std::fs::write(&gate, "").unwrap();
    let second = rx.recv_timeout(WAIT).unwrap();
    assert_eq!(second, "[talk/say] second line");
    // The run has ended: the stream ends, and so does the CLI.
    let status = wait_exit(&mut follow, WAIT);
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_runs_on_one_node_in_kafka_mode() {
    let kafka = super::tansu::Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &kafka_flags(&kafka.bootstrap));
    apply(
        &server,
        r#"apiVersion: tekton.dev/v1
kind: PipelineRun
metadata: {name: on-kafka}
spec:
  pipelineSpec:
    results: [{name: doubled, value: "$(tasks.double.results.out)"}]
    tasks:
      - name: give
        taskSpec:
          results: [{name: out}]
          steps: [{script: 'printf 21 > $(results.out.path)'}]
      - name: double
        params: [{name: n, value: "$(tasks.give.results.out)"}]
        taskSpec:
          params: [{name: n}]
          results: [{name: out}]
          steps: [{script: 'printf $(( $(params.n) * 2 )) > $(results.out.path)'}]
"#,
    );
    let pr = ended(&server, "pipelinerun", "default", "on-kafka").await;
    assert_eq!(succeeded(&pr).1, "Succeeded", "{pr}");
    assert_eq!(result(&pr, "doubled"), Some(&Value::String("42".into())));
}
