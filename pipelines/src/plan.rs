//! A TaskRun's steps as processes to run: `stepTemplate` merged in, every field substituted
//! (params, context, results/workspaces/steps paths), scripts given Tekton's preamble, and the
//! container paths Tekton promises (`/tekton/results`, `/workspace/NAME`, `/tekton/home`)
//! mapped to directories of the run. Pure: the executor writes the scripts and spawns.

use crate::params::ParamValue;
use crate::spec::{EnvVar, Step, TaskSpec};
use crate::subst::Vars;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where a TaskRun's container paths live on this machine.
#[derive(Clone, Debug, PartialEq)]
pub struct Paths {
    /// `/tekton/results`.
    pub results: PathBuf,
    /// `/tekton/steps` (each step's `exitCode` and results under `step-NAME/`).
    pub steps: PathBuf,
    /// `/tekton/home`.
    pub home: PathBuf,
    /// Where the step scripts are written.
    pub scripts: PathBuf,
    /// Each declared workspace's directory; `None`: an optional one left unbound.
    pub workspaces: BTreeMap<String, Option<PathBuf>>,
}

/// The `$(context...)` values.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Context {
    pub task_run_name: String,
    pub task_run_namespace: String,
    pub task_run_uid: String,
    pub task_name: String,
    pub retry_count: u32,
    pub pipeline_run: Option<(String, String, String)>,
    pub pipeline_name: Option<String>,
    pub pipeline_task_retries: u32,
}

/// One step, ready to run.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedStep {
    /// `step-NAME` (`step-unnamed-I` without a name), as Tekton names the container.
    pub container: String,
    /// The step's own name (`unnamed-I` without one).
    pub name: String,
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    /// The script file's content, to write at `script_path` and run as `program`.
    pub script: Option<(PathBuf, String)>,
    pub timeout: Option<Duration>,
    /// `onError` after substitution: `continue` keeps going after a failure.
    pub on_error_continue: bool,
}

/// Why a step cannot be planned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanError {
    pub step: String,
    pub message: String,
}

/// The variables a TaskRun's fields are substituted with.
pub fn vars(
    spec: &TaskSpec,
    params: &BTreeMap<String, ParamValue>,
    ctx: &Context,
    paths: &Paths,
) -> Vars {
    let mut v = Vars::default();
    for (name, value) in params {
        v.set_value(format!("params.{name}"), value);
        // Legacy form some tasks still use.
        v.set_value(format!("inputs.params.{name}"), value);
    }
    v.set("context.taskRun.name", ctx.task_run_name.clone());
    v.set("context.taskRun.namespace", ctx.task_run_namespace.clone());
    v.set("context.taskRun.uid", ctx.task_run_uid.clone());
    v.set("context.task.name", ctx.task_name.clone());
    v.set("context.task.retry-count", ctx.retry_count.to_string());
    // The same count under the TaskRun's name, as some documents write it.
    v.set("context.taskRun.retry-count", ctx.retry_count.to_string());
    v.set(
        "context.pipelineTask.retries",
        ctx.pipeline_task_retries.to_string(),
    );
    if let Some((name, ns, uid)) = &ctx.pipeline_run {
        v.set("context.pipelineRun.name", name.clone());
        v.set("context.pipelineRun.namespace", ns.clone());
        v.set("context.pipelineRun.uid", uid.clone());
    }
    if let Some(p) = &ctx.pipeline_name {
        v.set("context.pipeline.name", p.clone());
    }
    for r in &spec.results {
        v.set(
            format!("results.{}.path", r.name),
            show(&paths.results.join(&r.name)),
        );
    }
    for (i, s) in spec.steps.iter().enumerate() {
        let dir = paths.steps.join(container(s, i));
        v.set(
            format!("steps.{}.exitCode.path", container(s, i)),
            show(&dir.join("exitCode")),
        );
        for r in &s.results {
            v.set(
                format!("steps.{}.results.{}.path", container(s, i), r.name),
                show(&dir.join("results").join(&r.name)),
            );
        }
    }
    v.set("credentials.path", show(&paths.home));
    for (name, dir) in &paths.workspaces {
        let (path, bound) = match dir {
            Some(d) => (show(d), "true"),
            None => (String::new(), "false"),
        };
        v.set(format!("workspaces.{name}.path"), path);
        v.set(format!("workspaces.{name}.bound"), bound);
        v.set(format!("workspaces.{name}.claim"), "");
        v.set(format!("workspaces.{name}.volume"), name.clone());
    }
    v
}

fn show(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// `step-NAME`, or `step-unnamed-I`.
pub fn container(s: &Step, i: usize) -> String {
    format!("step-{}", step_name(s, i))
}

fn step_name(s: &Step, i: usize) -> String {
    s.name.clone().unwrap_or_else(|| format!("unnamed-{i}"))
}

/// The steps of `spec` as processes. `shell`: the interpreter of a script without a `#!`
/// line (Tekton's preamble is `#!/bin/sh` and `set -e`).
pub fn plan(
    spec: &TaskSpec,
    params: &BTreeMap<String, ParamValue>,
    ctx: &Context,
    paths: &Paths,
    shell: &str,
) -> Result<Vec<PlannedStep>, PlanError> {
    let v = vars(spec, params, ctx, paths);
    let template = spec.step_template.clone().unwrap_or_default();
    let mut steps = Vec::with_capacity(spec.steps.len());
    for (i, s) in spec.steps.iter().enumerate() {
        let name = step_name(s, i);
        let container = container(s, i);
        let fail = |message: String| PlanError {
            step: container.clone(),
            message,
        };
        // The template's env first, the step's replacing by name.
        let mut env: Vec<EnvVar> = template.env.clone();
        for e in &s.env {
            match env.iter_mut().find(|t| t.name == e.name) {
                Some(t) => t.value = e.value.clone(),
                None => env.push(e.clone()),
            }
        }
        let env: Vec<(String, String)> = env
            .iter()
            .map(|e| (e.name.clone(), v.replace(&e.value)))
            .collect();
        let command = if s.command.is_empty() && s.script.is_none() {
            v.expand_list(&template.command)
        } else {
            v.expand_list(&s.command)
        };
        let raw_args = if s.args.is_empty() && s.command.is_empty() && s.script.is_none() {
            &template.args
        } else {
            &s.args
        };
        let args = v.expand_list(raw_args);
        let working_dir = s
            .working_dir
            .as_ref()
            .or(template.working_dir.as_ref())
            .map(|w| v.replace(w));
        let timeout = match &s.timeout {
            Some(t) => Some(
                crate::validate::timeout(&v.replace(t))
                    .map_err(|e| fail(format!("timeout {t:?}: {e}")))?,
            )
            .filter(|d| !d.is_zero()),
            None => None,
        };
        let on_error_continue = s
            .on_error
            .as_ref()
            .is_some_and(|o| v.replace(o) == "continue");
        let (program, args, script) = match &s.script {
            Some(text) => {
                let body = v.replace(text);
                let content = if body.trim_start().starts_with("#!") {
                    body.trim_start().to_string()
                } else {
                    format!("#!{shell}\nset -e\n{body}")
                };
                let path = paths.scripts.join(&container);
                (show(&path), args, Some((path, content)))
            }
            None => {
                let mut all = command;
                all.extend(args);
                let mut it = all.into_iter();
                let Some(program) = it.next() else {
                    return Err(fail("no script, command or args to run".into()));
                };
                (program, it.collect(), None)
            }
        };
        steps.push(PlannedStep {
            container,
            name,
            program,
            args,
            env,
            working_dir,
            script,
            timeout,
            on_error_continue,
        });
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn paths() -> Paths {
        Paths {
            results: "/run/tr/results".into(),
            steps: "/run/tr/steps".into(),
            home: "/run/tr/home".into(),
            scripts: "/run/tr/scripts".into(),
            workspaces: [
                (
                    "source".to_string(),
                    Some(PathBuf::from("/run/pr/ws/source")),
                ),
                ("cache".to_string(), None),
            ]
            .into(),
        }
    }

    fn task(v: serde_json::Value) -> TaskSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn scripts_get_the_preamble_unless_they_have_a_shebang() {
        let spec = task(json!({
            "results": [{"name": "sum"}],
            "steps": [
                {"name": "plain", "script": "echo $(params.who) > $(results.sum.path)"},
                {"script": "#!/usr/bin/env bash\n[[ 1 == 1 ]]", "args": ["$(params.list[*])"]},
            ],
        }));
        let params = [
            ("who".to_string(), ParamValue::String("me".into())),
            (
                "list".to_string(),
                ParamValue::Array(vec!["a".into(), "b".into()]),
            ),
        ]
        .into();
        let steps = plan(&spec, &params, &Context::default(), &paths(), "/bin/bash").unwrap();
        let (path, body) = steps[0].script.clone().unwrap();
        assert_eq!(path, PathBuf::from("/run/tr/scripts/step-plain"));
        assert_eq!(body, "#!/bin/bash\nset -e\necho me > /run/tr/results/sum");
        assert_eq!(steps[0].program, "/run/tr/scripts/step-plain");
        assert_eq!(steps[1].container, "step-unnamed-1");
        assert_eq!(
            steps[1].script.as_ref().unwrap().1,
            "#!/usr/bin/env bash\n[[ 1 == 1 ]]"
        );
        assert_eq!(steps[1].args, ["a", "b"]);
    }

    #[test]
    fn commands_env_template_context_and_workspaces() {
        let spec = task(json!({
            "stepTemplate": {"env": [{"name": "QUX", "value": "original"}, {"name": "KEEP", "value": "k"}],
                             "workingDir": "$(workspaces.source.path)"},
            "workspaces": [{"name": "source"}, {"name": "cache", "optional": true}],
            "steps": [
                {"name": "run", "command": ["/bin/sh", "-c"], "args": ["echo $(context.taskRun.name) $(workspaces.cache.bound)"],
                 "env": [{"name": "QUX", "value": "override"}], "timeout": "2s", "onError": "$(params.mode)"},
                {"name": "args-only", "args": ["ls", "$(steps.step-run.exitCode.path)"]},
            ],
        }));
        let params = [("mode".to_string(), ParamValue::String("continue".into()))].into();
        let ctx = Context {
            task_run_name: "tr-1".into(),
            ..Context::default()
        };
        let steps = plan(&spec, &params, &ctx, &paths(), "/bin/sh").unwrap();
        let s = &steps[0];
        assert_eq!(s.program, "/bin/sh");
        assert_eq!(s.args, ["-c", "echo tr-1 false"]);
        assert_eq!(
            s.env,
            [
                ("QUX".to_string(), "override".to_string()),
                ("KEEP".to_string(), "k".to_string())
            ]
        );
        assert_eq!(s.working_dir.as_deref(), Some("/run/pr/ws/source"));
        assert_eq!(s.timeout, Some(Duration::from_secs(2)));
        assert!(s.on_error_continue);
        assert_eq!(steps[1].program, "ls");
        assert_eq!(steps[1].args, ["/run/tr/steps/step-run/exitCode"]);
    }
}
