//! What a run does and says: failures, finally, events, the CLI, validation, cancel,
//! timeouts, retries, missing results, generateName, logs.

use super::*;
use crate::subscriber::TestSubscriber;
use crate::support::*;
use crate::triggers::apply;
use serde_json::Value;
use std::path::Path;

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
kind: PipelineRun
metadata: {name: finally-timeout}
spec:
  timeouts: {pipeline: 10m, finally: 1s}
  pipelineSpec:
    tasks: [{name: quick, taskSpec: {steps: [{script: "true"}]}}]
    finally: [{name: slow-cleanup, taskSpec: {steps: [{script: "sleep 600"}]}}]
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
    // timeouts.finally: the finally task is stopped, the run times out.
    let pr = ended(&server, "pipelinerun", "default", "finally-timeout").await;
    let (_, reason, message) = succeeded(&pr);
    assert_eq!(reason, "PipelineRunTimeout", "{message}");
    assert!(message.contains("\"1s\""), "{message}");
    assert!(pr["status"]["finallyStartTime"].is_string(), "{pr}");
    let cleanup = get_json(&server, &["get", "taskrun", "finally-timeout-slow-cleanup"]);
    assert_eq!(succeeded(&cleanup).1, "TaskRunCancelled");
    let tr = ended(&server, "taskrun", "default", "task-timeout").await;
    let (status, reason, message) = succeeded(&tr);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "TaskRunTimeout"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_exhausted_fail_the_taskrun_with_every_attempt_kept() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    apply(
        &server,
        r#"apiVersion: tekton.dev/v1
kind: TaskRun
metadata: {name: hopeless}
spec:
  retries: 2
  taskSpec:
    steps:
      - name: try
        script: 'echo "attempt $(context.taskRun.retry-count)"; exit 7'
"#,
    );
    let tr = ended(&server, "taskrun", "default", "hopeless").await;
    let (status, reason, message) = succeeded(&tr);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "StepFailed"));
    assert!(message.contains("exited with code 7"), "{message}");
    let attempts = tr["status"]["retriesStatus"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "two retries, each kept");
    for a in attempts {
        assert_eq!(a["steps"][0]["terminated"]["exitCode"], 7, "{a}");
    }
    let logs = stdout(&server.cli(&["logs", "taskrun", "hopeless"]));
    for i in 0..3 {
        assert!(
            logs.contains(&format!("[hopeless/try] attempt {i}")),
            "{logs}"
        );
    }
    // Tekton's events: one started, one failed, an unknown per retry.
    let types: Vec<String> = server
        .events("ferry-system", "pipelines")
        .iter()
        .filter(|e| e["subject"] == "hopeless")
        .filter_map(|e| e["type"].as_str().map(str::to_string))
        .filter(|t| t.starts_with("dev.tekton"))
        .collect();
    let count = |t: &str| types.iter().filter(|x| *x == t).count();
    assert_eq!(count("dev.tekton.event.taskrun.started.v1"), 1, "{types:?}");
    assert_eq!(count("dev.tekton.event.taskrun.failed.v1"), 1, "{types:?}");
    assert_eq!(count("dev.tekton.event.taskrun.unknown.v1"), 2, "{types:?}");
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
async fn a_taskrun_deleted_by_hand_is_made_anew_and_the_run_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let server = Server::start(&dir.path().join("data"), &[]);
    apply(
        &server,
        &format!(
            "apiVersion: tekton.dev/v1\nkind: PipelineRun\nmetadata: {{name: again}}\nspec:\n  pipelineSpec:\n    tasks:\n      - name: wait\n        taskSpec:\n          steps: [{{script: \"while [ ! -e {} ]; do sleep 0.05; done\"}}]\n",
            gate.display()
        ),
    );
    let first = eventually(WAIT, "the TaskRun runs", || async {
        let tr = get_json(&server, &["get", "taskruns"])["items"][0].clone();
        (succeeded(&tr).1 == "Running").then(|| tr["metadata"]["uid"].as_str().unwrap().to_string())
    })
    .await;
    let out = server.cli(&["delete", "taskrun", "again-wait"]);
    assert!(out.status.success(), "{}", stderr(&out));
    eventually(WAIT, "a new TaskRun of the same name", || async {
        let tr = get_json(&server, &["get", "taskruns"])["items"][0].clone();
        tr["metadata"]["uid"]
            .as_str()
            .filter(|u| *u != first)
            .map(|_| ())
    })
    .await;
    std::fs::write(&gate, "").unwrap();
    let pr = ended(&server, "pipelinerun", "default", "again").await;
    assert_eq!(succeeded(&pr).1, "Succeeded", "{pr}");
}
