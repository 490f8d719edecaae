//! Every file of ../shared/conformance/tekton, applied unchanged, ends as the corpus README says.

use super::*;
use crate::support::*;
use serde_json::Value;

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
