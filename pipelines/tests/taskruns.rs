//! The upstream TaskRun examples of ../shared/conformance/tekton/taskruns, run as local
//! processes through `plan` and `executor` (no control plane yet): each must succeed, as the
//! corpus README says. Scripts written for busybox or bash run with bash (the README's advice):
//! bash is the preamble's shell and `sh` on the steps' PATH.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use pipelines::executor::{execute, Options};
use pipelines::params::{resolve, ParamValue};
use pipelines::plan::{plan, Context};
use pipelines::sandbox::{private_view_available, Sandbox, WorkspaceDir};
use pipelines::spec::{TaskRunSpec, TaskSpec};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// Reads `/tekton/steps/...` literally: runs only where steps get a private view of `/tekton`.
const NEEDS_CONTAINER_PATHS: &[&str] = &["ignore-step-error.yaml"];

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/tekton/taskruns")
}

async fn run(file: &Path, work: &Path, private: bool) -> (bool, String, String) {
    let text = std::fs::read_to_string(file).unwrap();
    let mut tasks: BTreeMap<String, TaskSpec> = BTreeMap::new();
    let mut run = None;
    for d in serde_yaml_ng::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(d).unwrap();
        match v["kind"].as_str() {
            Some("Task") => {
                let name = v["metadata"]["name"].as_str().unwrap().to_string();
                tasks.insert(name, serde_json::from_value(v["spec"].clone()).unwrap());
            }
            Some("TaskRun") => run = Some(v),
            _ => {}
        }
    }
    let run = run.expect("a TaskRun");
    let spec: TaskRunSpec = serde_json::from_value(run["spec"].clone()).unwrap();
    let (task, task_name) = match (&spec.task_spec, &spec.task_ref) {
        (Some(s), _) => (s.clone(), String::new()),
        (None, Some(r)) => (tasks[&r.name].clone(), r.name.clone()),
        _ => panic!("no task"),
    };
    let given: Vec<(String, ParamValue)> = spec
        .params
        .iter()
        .map(|p| (p.name.clone(), p.value.clone()))
        .collect();
    let params = resolve(&task.params, &given).unwrap();
    let mut workspaces = BTreeMap::new();
    for w in &task.workspaces {
        let bound = spec.workspaces.iter().any(|b| b.name == w.name);
        let dir = work.join("volumes").join(&w.name);
        if bound {
            std::fs::create_dir_all(&dir).unwrap();
        } else {
            assert!(
                w.optional,
                "{}: workspace {} unbound",
                file.display(),
                w.name
            );
        }
        let host = bound.then_some(dir);
        let mount_path = w.mount_path.clone();
        workspaces.insert(w.name.clone(), WorkspaceDir { host, mount_path });
    }
    let sandbox = Sandbox::new(&work.join("run"), &workspaces, private).unwrap();
    let paths = sandbox.view.clone();
    let name = run["metadata"]["name"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("{}abcde", run["metadata"]["generateName"].as_str().unwrap()));
    let ctx = Context {
        task_run_name: name,
        task_run_namespace: "default".into(),
        task_run_uid: "0b6a5c8e-1f4e-4c2a-9d59-6e1f1b0f7c11".into(),
        task_name,
        ..Context::default()
    };
    let steps = plan(&task, &params, &ctx, &paths, "/bin/bash").unwrap();
    let shim = work.join("shim");
    std::fs::create_dir_all(&shim).unwrap();
    let _ = std::os::unix::fs::symlink("/bin/bash", shim.join("sh"));
    let path = format!(
        "{}:{}",
        shim.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let log = Arc::new(Mutex::new(String::new()));
    let sink_log = log.clone();
    let opts = Options {
        spawner: None,
        max_result_size: 1 << 20,
        env: vec![
            ("PATH".into(), path),
            ("HOME".into(), paths.home.display().to_string()),
        ],
        default_dir: work.to_path_buf(),
        deadline: None,
        timeout_text: None,
        output: Arc::new(move |c: &str, _err: bool, line: &str| {
            sink_log
                .lock()
                .unwrap()
                .push_str(&format!("[{c}] {line}\n"));
        }),
    };
    let out = execute(&steps, &task, &sandbox, &opts, &CancellationToken::new()).await;
    let log = log.lock().unwrap().clone();
    (
        out.ended.succeeded,
        format!("{}: {}", out.ended.reason, out.ended.message),
        log,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upstream_task_run_succeeds_as_local_processes() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let private = private_view_available();
    let mut ran = 0;
    for f in &files {
        let name = f.file_name().unwrap().to_str().unwrap();
        let literal = NEEDS_CONTAINER_PATHS.contains(&name);
        if literal && !private {
            eprintln!("{name}: no private view of /tekton on this machine; not run");
            continue;
        }
        let work = tempfile::tempdir().unwrap();
        let (ok, ended, log) = run(f, work.path(), private).await;
        assert!(ok, "{name} (private view: {private}): {ended}\n{log}");
        // The same without a private view: substituted paths are the run's own.
        if !literal {
            let work = tempfile::tempdir().unwrap();
            let (ok, ended, log) = run(f, work.path(), false).await;
            assert!(ok, "{name} (no private view): {ended}\n{log}");
        }
        ran += 1;
    }
    let expected = files.len()
        - if private {
            0
        } else {
            NEEDS_CONTAINER_PATHS.len()
        };
    assert_eq!(ran, expected);
}
