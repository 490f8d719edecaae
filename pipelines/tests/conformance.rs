//! The upstream Tekton examples in ../shared/conformance/tekton, read unchanged: every
//! document decodes into Ferry's Tekton shapes (no field unknown to them), every pipeline's
//! graph is sound, and every run's params resolve against what it runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use control::FieldErrors;
use pipelines::dag::Dag;
use pipelines::params::{resolve, ParamValue};
use pipelines::spec::{PipelineRunSpec, PipelineSpec, TaskRunSpec, TaskSpec};
use pipelines::validate;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/tekton")
}

fn documents() -> Vec<(String, Value)> {
    let mut docs = Vec::new();
    for dir in ["taskruns", "pipelineruns"] {
        let mut files: Vec<_> = std::fs::read_dir(corpus().join(dir))
            .expect("the conformance corpus beside the repository")
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for d in serde_yaml_ng::Deserializer::from_str(&text) {
                let v: Value = serde::Deserialize::deserialize(d).unwrap();
                if !v.is_null() {
                    docs.push((format!("{}", f.display()), v));
                }
            }
        }
    }
    docs
}

fn decode<T: serde::de::DeserializeOwned>(file: &str, v: &Value) -> T {
    serde_json::from_value(v["spec"].clone())
        .unwrap_or_else(|e| panic!("{file}: {} {}: {e}", v["kind"], v["metadata"]))
}

/// Runs a validator; the example must be valid.
fn valid(file: &str, check: impl FnOnce(&mut FieldErrors)) {
    let mut errors = FieldErrors::new(1);
    check(&mut errors);
    assert!(errors.is_empty(), "{file}: {:?}", errors.list);
}

#[test]
fn every_upstream_example_decodes_and_its_graph_and_params_hold() {
    let docs = documents();
    assert!(docs.len() >= 25, "{} documents", docs.len());
    let mut tasks: BTreeMap<String, TaskSpec> = BTreeMap::new();
    let mut pipelines: BTreeMap<String, PipelineSpec> = BTreeMap::new();
    let mut runs = 0;
    for (file, v) in &docs {
        let name = v["metadata"]["name"].as_str().unwrap_or("").to_string();
        match v["kind"].as_str().unwrap() {
            "Task" => {
                let t: TaskSpec = decode(file, v);
                valid(file, |e| validate::task("spec", &t, e));
                tasks.insert(name, t);
            }
            "Pipeline" => {
                let p: PipelineSpec = decode(file, v);
                valid(file, |e| validate::pipeline("spec", &p, e));
                Dag::of(&p).unwrap_or_else(|e| panic!("{file}: {e:?}"));
                pipelines.insert(name, p);
            }
            "TaskRun" => {
                runs += 1;
                let r: TaskRunSpec = decode(file, v);
                valid(file, |e| validate::task_run("spec", &r, e));
                let task = match (&r.task_spec, &r.task_ref) {
                    (Some(s), _) => s.clone(),
                    (None, Some(t)) => tasks[&t.name].clone(),
                    _ => panic!("{file}: a TaskRun without a task"),
                };
                let given: Vec<(String, ParamValue)> = r
                    .params
                    .iter()
                    .map(|p| (p.name.clone(), p.value.clone()))
                    .collect();
                resolve(&task.params, &given).unwrap_or_else(|e| panic!("{file}: {e:?}"));
            }
            "PipelineRun" => {
                runs += 1;
                let r: PipelineRunSpec = decode(file, v);
                valid(file, |e| validate::pipeline_run("spec", &r, e));
                let p = match (&r.pipeline_spec, &r.pipeline_ref) {
                    (Some(s), _) => s.clone(),
                    (None, Some(p)) => pipelines[&p.name].clone(),
                    _ => panic!("{file}: a PipelineRun without a pipeline"),
                };
                Dag::of(&p).unwrap_or_else(|e| panic!("{file}: {e:?}"));
                let given: Vec<(String, ParamValue)> = r
                    .params
                    .iter()
                    .map(|p| (p.name.clone(), p.value.clone()))
                    .collect();
                resolve(&p.params, &given).unwrap_or_else(|e| panic!("{file}: {e:?}"));
            }
            other => panic!("{file}: unexpected kind {other}"),
        }
    }
    assert!(runs >= 25, "every example runs something: {runs} runs");
}
