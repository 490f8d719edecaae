//! Concurrency limits, kill -9 of Ferry mid-run, Kafka mode.

use super::*;
use crate::support::*;
use crate::triggers::apply;
use serde_json::Value;
use std::path::Path;

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

/// A run of two tasks passing a result (21 doubled).
fn doubling(name: &str) -> String {
    format!(
        r#"apiVersion: tekton.dev/v1
kind: PipelineRun
metadata: {{name: {name}}}
spec:
  pipelineSpec:
    results: [{{name: doubled, value: "$(tasks.double.results.out)"}}]
    tasks:
      - name: give
        taskSpec:
          results: [{{name: out}}]
          steps: [{{script: 'printf 21 > $(results.out.path)'}}]
      - name: double
        params: [{{name: n, value: "$(tasks.give.results.out)"}}]
        taskSpec:
          params: [{{name: n}}]
          results: [{{name: out}}]
          steps: [{{script: 'printf $(( $(params.n) * 2 )) > $(results.out.path)'}}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_each_run_is_driven_and_run_by_the_node_that_took_it() {
    let kafka = crate::tansu::Tansu::start();
    let flags = kafka_flags(&kafka.bootstrap);
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = Server::start(&dirs[0].path().join("data"), &flags);
    let b = Server::start(&dirs[1].path().join("data"), &flags);
    // Runs applied on either node; each is owned by the node it was applied on.
    for i in 0..3 {
        apply(&a, &doubling(&format!("on-a-{i}")));
        apply(&b, &doubling(&format!("on-b-{i}")));
    }
    for (node, dir, prefix) in [(&a, &dirs[0], "on-a"), (&b, &dirs[1], "on-b")] {
        let me = std::fs::read_to_string(dir.path().join("data/node-id")).unwrap();
        for i in 0..3 {
            let name = format!("{prefix}-{i}");
            let pr = ended(node, "pipelinerun", "default", &name).await;
            assert_eq!(succeeded(&pr).1, "Succeeded", "{pr}");
            assert_eq!(result(&pr, "doubled"), Some(&Value::String("42".into())));
            assert_eq!(pr["status"]["node"].as_str(), Some(me.trim()), "{pr}");
            // Its steps ran on that node: their work directories are in its data dir.
            let uid = pr["metadata"]["uid"].as_str().unwrap();
            let run_dir = dir
                .path()
                .join(format!("data/pipelines/default/{name}-{uid}"));
            assert!(
                run_dir.join(format!("{name}-give")).exists(),
                "{}",
                run_dir.display()
            );
        }
    }
    // A cancel made on the other node reaches the run's node, which stops its step.
    apply(
        &a,
        "apiVersion: tekton.dev/v1\nkind: PipelineRun\nmetadata: {name: long}\nspec:\n  pipelineSpec:\n    tasks: [{name: sleep, taskSpec: {steps: [{script: 'sleep 600'}]}}]\n",
    );
    eventually(WAIT, "the step runs", || async {
        let tr = a.cli(&["get", "taskrun", "long-sleep", "-o", "json"]);
        let tr: Value = serde_json::from_slice(&tr.stdout).ok()?;
        (succeeded(&tr).1 == "Running").then_some(())
    })
    .await;
    eventually(WAIT, "the other node sees it running", || async {
        let pr = b.cli(&["get", "pr", "long", "-o", "json"]);
        let pr: Value = serde_json::from_slice(&pr.stdout).ok()?;
        pr["status"]["observedGeneration"].is_i64().then_some(())
    })
    .await;
    let out = b.cli(&["cancel", "pr", "long"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pr = ended(&a, "pipelinerun", "default", "long").await;
    assert_eq!(succeeded(&pr).1, "Cancelled", "{pr}");
}
