//! The upstream PipelineRun examples of ../shared/conformance/tekton/pipelineruns, run to their
//! end in-process (`pipelinerun::Runner`: scheduler, executor, matrix, retries, workspaces),
//! each checked against the outcome the corpus README gives, with its notable values.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use pipelines::params::ParamValue;
use pipelines::pipelinerun::{RunId, RunRecord, Runner};
use pipelines::sandbox::private_view_available;
use pipelines::spec::{PipelineRunSpec, PipelineSpec, TaskSpec};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/tekton/pipelineruns")
}

/// Runs every PipelineRun of `file`; the records and the steps' output.
async fn run(file: &Path) -> (Vec<RunRecord>, String) {
    let text = std::fs::read_to_string(file).unwrap();
    let mut tasks = BTreeMap::new();
    let mut pipelines: BTreeMap<String, PipelineSpec> = BTreeMap::new();
    let mut runs = Vec::new();
    for d in serde_yaml_ng::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(d).unwrap();
        let name = v["metadata"]["name"].as_str().unwrap_or("").to_string();
        match v["kind"].as_str() {
            Some("Task") => {
                let t: TaskSpec = serde_json::from_value(v["spec"].clone()).unwrap();
                tasks.insert(name, t);
            }
            Some("Pipeline") => {
                pipelines.insert(name, serde_json::from_value(v["spec"].clone()).unwrap());
            }
            Some("PipelineRun") => runs.push(v),
            _ => {}
        }
    }
    let work = tempfile::tempdir().unwrap();
    let shim = work.path().join("shim");
    std::fs::create_dir_all(&shim).unwrap();
    std::os::unix::fs::symlink("/bin/bash", shim.join("sh")).unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let sink = log.clone();
    let runner = Runner {
        tasks,
        work_dir: work.path().join("runs"),
        shell: "/bin/bash".into(),
        private_view: private_view_available(),
        max_result_size: 1 << 20,
        env: vec![(
            "PATH".into(),
            format!(
                "{}:{}",
                shim.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )],
        output: Arc::new(move |c: &str, _: bool, line: &str| {
            sink.lock().unwrap().push_str(&format!("[{c}] {line}\n"));
        }),
    };
    let mut records = Vec::new();
    for (i, v) in runs.iter().enumerate() {
        let spec: PipelineRunSpec = serde_json::from_value(v["spec"].clone()).unwrap();
        let (pipeline, pipeline_name) = match (&spec.pipeline_spec, &spec.pipeline_ref) {
            (Some(p), _) => (p.clone(), None),
            (None, Some(r)) => (pipelines[&r.name].clone(), Some(r.name.clone())),
            _ => panic!("no pipeline"),
        };
        let name = v["metadata"]["name"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("{}x{i}", v["metadata"]["generateName"].as_str().unwrap()));
        let id = RunId {
            name,
            namespace: "default".into(),
            uid: format!("uid-{i}"),
            pipeline: pipeline_name,
        };
        records.push(runner.run(&id, &spec, &pipeline).await);
    }
    let log = log.lock().unwrap().clone();
    (records, log)
}

fn result<'a>(r: &'a RunRecord, name: &str) -> Option<&'a ParamValue> {
    r.results.iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

fn s(v: &str) -> ParamValue {
    ParamValue::String(v.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upstream_pipeline_run_ends_as_upstream_says() {
    // file → (status, reason), from the corpus README.
    let expected: BTreeMap<&str, (&str, &str)> = [
        ("pipelinerun-results.yaml", ("True", "Succeeded")),
        ("task_results_example.yaml", ("True", "Succeeded")),
        ("pipelinerun-with-final-results.yaml", ("True", "Succeeded")),
        (
            "pipelinerun-task-execution-status.yaml",
            ("True", "Completed"),
        ),
        (
            "pipelinerun-with-when-expressions.yaml",
            ("True", "Completed"),
        ),
        ("6139-regression.yaml", ("True", "Completed")),
        ("ignore-step-error.yaml", ("True", "Succeeded")),
        ("ignore-task-error.yaml", ("True", "Succeeded")),
        (
            "using-retries-and-retry-count-variables.yaml",
            ("True", "Succeeded"),
        ),
        ("pipelinerun-with-matrix.yaml", ("True", "Completed")),
        (
            "pipelinerun-with-matrix-emitting-results.yaml",
            ("True", "Succeeded"),
        ),
        ("pipeline-emitting-results.yaml", ("True", "Succeeded")),
        (
            "pipelinerun-with-parallel-tasks-using-pvc.yaml",
            ("True", "Succeeded"),
        ),
        (
            "pipelinerun-array-results-substitution.yaml",
            ("True", "Succeeded"),
        ),
        (
            "pipelinerun-with-task-timeout-override.yaml",
            ("True", "Succeeded"),
        ),
    ]
    .into();
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), expected.len());
    let private = private_view_available();
    for f in &files {
        let name = f.file_name().unwrap().to_str().unwrap();
        if name == "ignore-step-error.yaml" && !private {
            // Reads /tekton/steps/... literally: needs the private view.
            continue;
        }
        let (records, log) = run(f).await;
        let want = expected[name];
        for r in &records {
            let got = (r.condition.status, r.condition.reason);
            assert_eq!(got, want, "{name}: {}\n{r:#?}\n{log}", r.condition.message);
        }
        let r = &records[0];
        match name {
            "pipelinerun-results.yaml" => {
                assert_eq!(result(r, "sum"), Some(&s("22")));
                assert_eq!(result(r, "partial-sum"), Some(&s("12")));
                assert_eq!(result(r, "all-sum"), Some(&s("22-12")));
            }
            "pipelinerun-with-final-results.yaml" => {
                // 2×1 = 2; then 22×22 = 484 (the shell arithmetic sees the results).
                assert_eq!(result(r, "task-result"), Some(&s("2")));
                assert_eq!(result(r, "finally-result"), Some(&s("484")));
            }
            "task_results_example.yaml" => {
                let last = r
                    .task_runs
                    .iter()
                    .filter_map(|t| t.results.get("sum"))
                    .next_back()
                    .cloned();
                assert_eq!(last, Some(s("4024")), "{r:#?}");
            }
            "6139-regression.yaml" => {
                assert_eq!(r.results, [("result-hello".to_string(), s("RES1"))]);
            }
            "using-retries-and-retry-count-variables.yaml" => {
                let attempts: Vec<u32> = r
                    .task_runs
                    .iter()
                    .filter(|t| t.pipeline_task == "retry-me")
                    .map(|t| t.retries)
                    .collect();
                assert_eq!(attempts, [0, 1], "fails once, then retries");
            }
            _ => {}
        }
    }
}

fn runner(work: &Path) -> Runner {
    Runner {
        tasks: BTreeMap::new(),
        work_dir: work.join("runs"),
        shell: "/bin/sh".into(),
        private_view: false,
        max_result_size: 1 << 20,
        env: Vec::new(),
        output: Arc::new(|_: &str, _: bool, _: &str| {}),
    }
}

fn id(name: &str) -> RunId {
    RunId {
        name: name.into(),
        namespace: "default".into(),
        uid: "u".into(),
        pipeline: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_cancel_the_run_and_the_tasks_timeout_still_runs_finally() {
    let work = tempfile::tempdir().unwrap();
    let r = runner(work.path());
    let spec = |timeouts: Value| -> PipelineRunSpec {
        serde_json::from_value(serde_json::json!({
            "timeouts": timeouts,
            "pipelineSpec": {
                "tasks": [{"name": "slow", "taskSpec": {"steps": [{"script": "sleep 30"}]}}],
                "finally": [{"name": "report", "taskSpec": {"steps": [{"script": "true"}]}}],
            },
        }))
        .unwrap()
    };
    // timeouts.pipeline: the running task is cancelled (its process killed), no finally.
    let s = spec(serde_json::json!({"pipeline": "1s"}));
    let rec = r.run(&id("p"), &s, s.pipeline_spec.as_ref().unwrap()).await;
    assert_eq!(
        (rec.condition.status, rec.condition.reason),
        ("False", "PipelineRunTimeout"),
        "{rec:#?}"
    );
    assert_eq!(
        rec.condition.message,
        "PipelineRun \"p\" failed to finish within \"1s\""
    );
    assert!(rec
        .skipped
        .contains(&("report".to_string(), "PipelineRun timeout has been reached")));
    assert!(rec
        .task_runs
        .iter()
        .any(|t| t.pipeline_task == "slow" && t.ended.reason == "TaskRunCancelled"));
    // timeouts.tasks: the DAG task is cancelled, finally runs.
    let s = spec(serde_json::json!({"pipeline": "1m", "tasks": "1s"}));
    let rec = r.run(&id("t"), &s, s.pipeline_spec.as_ref().unwrap()).await;
    assert_eq!(rec.condition.reason, "PipelineRunTimeout", "{rec:#?}");
    assert!(rec
        .task_runs
        .iter()
        .any(|t| t.pipeline_task == "report" && t.ended.succeeded));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_missing_a_task_or_a_binding_fails_before_anything_starts() {
    let work = tempfile::tempdir().unwrap();
    let r = runner(work.path());
    let run = |spec: Value| -> PipelineRunSpec {
        serde_json::from_value(serde_json::json!({ "pipelineSpec": spec })).unwrap()
    };
    let marker = work.path().join("ran");
    let first = serde_json::json!({"name": "first", "taskSpec": {"steps": [{"script": format!("touch {}", marker.display())}]}});
    let s =
        run(serde_json::json!({"tasks": [first, {"name": "b", "taskRef": {"name": "nowhere"}}]}));
    let rec = r
        .run(&id("missing-task"), &s, s.pipeline_spec.as_ref().unwrap())
        .await;
    assert_eq!(
        (rec.condition.status, rec.condition.reason),
        ("False", "CouldntGetTask")
    );
    assert!(
        rec.condition.message.contains("\"nowhere\""),
        "{}",
        rec.condition.message
    );
    let s = run(serde_json::json!({
        "workspaces": [{"name": "src"}],
        "tasks": [{"name": "first", "taskSpec": {"steps": [{"script": "true"}]}}],
    }));
    let rec = r
        .run(&id("unbound"), &s, s.pipeline_spec.as_ref().unwrap())
        .await;
    assert_eq!(rec.condition.reason, "InvalidWorkspaceBindings");
    assert!(rec.task_runs.is_empty());
    assert!(!marker.exists(), "nothing ran");
}
