//! Runs a TaskRun's planned steps as processes, one after the other, in the run's
//! directories: each step its own process group (killed whole on timeout and cancel), its
//! output passed on line by line, its exit code written where Tekton puts it
//! (`steps/step-NAME/exitCode`, with `steps/I` linking to it); then the results are read from
//! their files (verbatim; arrays and objects as JSON; at most `max_result_size` bytes each).

use crate::params::ParamValue;
use crate::plan::{Paths, PlannedStep};
use crate::sandbox::Sandbox;
use crate::spec::TaskSpec;
use control::process::signal_group;
use rustix::process::Signal;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::AsyncRead;
use tokio_util::sync::CancellationToken;

/// A step's output, as it comes: (container, stderr?, line).
pub type OutputSink = Arc<dyn Fn(&str, bool, &str) + Send + Sync>;

/// How steps are run.
#[derive(Clone)]
pub struct Options {
    /// Largest result accepted, in bytes (`--pipelines-max-result-size`).
    pub max_result_size: usize,
    /// Variables added to every step's environment (after the step's own).
    pub env: Vec<(String, String)>,
    /// Where steps run when they set no `workingDir`.
    pub default_dir: PathBuf,
    /// The TaskRun's deadline (its `timeout`), if any.
    pub deadline: Option<tokio::time::Instant>,
    /// The TaskRun's timeout as written, for the message.
    pub timeout_text: Option<String>,
    pub output: OutputSink,
    /// Starts steps so that they die with Ferry and are reclaimed after a crash; `None`:
    /// plain children (tests).
    pub spawner: Option<Arc<control::process::Spawner>>,
}

/// One step as `status.steps[]` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepRecord {
    pub container: String,
    pub name: String,
    pub exit_code: i32,
    /// `Completed`, `Error`, `TimeoutExceeded`, `Cancelled`, or `Skipped` for a step that
    /// did not run.
    pub reason: String,
    /// `Continued` (failed with `onError: continue`) or `Skipped`.
    pub termination_reason: Option<String>,
    pub started_at: String,
    pub finished_at: String,
}

/// How a TaskRun's attempt ended: its `Succeeded` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ended {
    pub succeeded: bool,
    /// `Succeeded`, `StepFailed`, `TaskRunTimeout`, `TaskRunCancelled`,
    /// `TaskRunResultLargerThanAllowedLimit`, `Failed`.
    pub reason: String,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub steps: Vec<StepRecord>,
    pub results: BTreeMap<String, ParamValue>,
    pub ended: Ended,
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Longest output line passed on (longer ones are cut).
const LINE_MAX: usize = 16 * 1024;

async fn forward(from: impl AsyncRead + Unpin, container: String, stderr: bool, sink: OutputSink) {
    control::process::for_each_line(from, LINE_MAX, |l| sink(&container, stderr, &l)).await;
}

enum StepEnd {
    Exited(i32),
    TimedOut,
    TaskTimedOut,
    Cancelled,
    NotStarted(String),
}

async fn run_step(
    step: &PlannedStep,
    sandbox: &Sandbox,
    opts: &Options,
    cancel: &CancellationToken,
) -> StepEnd {
    if let Some((_, content)) = &step.script {
        // Where the step sees it (`program`) is the view's; it is written on the host.
        let path = sandbox.host.scripts.join(&step.container);
        if let Err(e) = write_script(&path, content) {
            return StepEnd::NotStarted(format!("cannot write the script {}: {e}", path.display()));
        }
    }
    let (program, args) = sandbox.wrap(&step.program, &step.args, step.working_dir.as_deref());
    let mut cmd = match &opts.spawner {
        Some(s) => s.command(&program),
        None => {
            let mut cmd = tokio::process::Command::new(&program);
            control::process::without_secrets(&mut cmd);
            cmd
        }
    };
    cmd.args(&args)
        // The runner's variables first: a step's own `env` wins.
        .envs(opts.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .envs(step.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        // In a private view the wrapper changes to `workingDir` once the mounts are made.
        .current_dir(
            step.working_dir
                .as_deref()
                .filter(|_| sandbox.mounts.is_empty())
                .map_or(opts.default_dir.as_path(), Path::new),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = step
        .working_dir
        .as_deref()
        .filter(|_| sandbox.mounts.is_empty())
    {
        if let Err(e) = std::fs::create_dir_all(dir) {
            return StepEnd::NotStarted(format!("cannot create workingDir {dir}: {e}"));
        }
    }
    let spawned = match &opts.spawner {
        Some(s) => s.spawn(cmd).await,
        None => control::process::spawn_retrying(|| cmd.spawn()),
    };
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return StepEnd::NotStarted(format!("cannot start {:?}: {e}", step.program)),
    };
    let pid = child.id();
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(forward(
            out,
            step.container.clone(),
            false,
            opts.output.clone(),
        )));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(forward(
            err,
            step.container.clone(),
            true,
            opts.output.clone(),
        )));
    }
    let step_deadline = step.timeout.map(|t| tokio::time::Instant::now() + t);
    let sleep_until = |d: Option<tokio::time::Instant>| async move {
        match d {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    let end = tokio::select! {
        status = child.wait() => StepEnd::Exited(match status {
            Ok(s) => s.code().unwrap_or(128 + 9),
            Err(_) => 1,
        }),
        _ = sleep_until(step_deadline) => StepEnd::TimedOut,
        _ = sleep_until(opts.deadline) => StepEnd::TaskTimedOut,
        _ = cancel.cancelled() => StepEnd::Cancelled,
    };
    // The group goes whatever ended the step: what the step left running goes with it.
    if let Some(pid) = pid {
        signal_group(pid, Signal::KILL);
        if let Some(s) = &opts.spawner {
            s.exited(pid);
        }
    }
    if !matches!(end, StepEnd::Exited(_)) {
        let _ = child.kill().await;
    }
    for mut r in readers {
        // What escaped the group may hold the pipes open: the readers stop after a second.
        if tokio::time::timeout(Duration::from_secs(1), &mut r)
            .await
            .is_err()
        {
            r.abort();
        }
    }
    end
}

fn write_script(path: &Path, content: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, content)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

/// Runs the steps; `cancel` stops the running one (its group killed) and the rest.
pub async fn execute(
    steps: &[PlannedStep],
    spec: &TaskSpec,
    sandbox: &Sandbox,
    opts: &Options,
    cancel: &CancellationToken,
) -> Outcome {
    let paths = &sandbox.host;
    let mut records = Vec::with_capacity(steps.len());
    let mut failure: Option<Ended> = None;
    for (i, step) in steps.iter().enumerate() {
        let dir = paths.steps.join(&step.container);
        let _ = std::fs::create_dir_all(&dir);
        // `steps/I` → `step-NAME`, relative: it resolves in the step's view too.
        let _ = std::os::unix::fs::symlink(&step.container, paths.steps.join(i.to_string()));
        if failure.is_some() {
            let at = now();
            records.push(StepRecord {
                container: step.container.clone(),
                name: step.name.clone(),
                exit_code: 0,
                reason: "Skipped".into(),
                termination_reason: Some("Skipped".into()),
                started_at: at.clone(),
                finished_at: at,
            });
            continue;
        }
        let started_at = now();
        let end = run_step(step, sandbox, opts, cancel).await;
        let not_started = matches!(end, StepEnd::NotStarted(_));
        let finished_at = now();
        let (exit_code, reason, fail) = match end {
            StepEnd::Exited(0) => (0, "Completed", None),
            StepEnd::Exited(code) => (
                code,
                "Error",
                Some(Ended {
                    succeeded: false,
                    reason: "StepFailed".into(),
                    message: format!("{:?} exited with code {code}", step.container),
                }),
            ),
            StepEnd::TimedOut => (
                1,
                "TimeoutExceeded",
                Some(Ended {
                    succeeded: false,
                    reason: "StepFailed".into(),
                    message: format!(
                        "{:?} exited because the step exceeded the specified timeout limit",
                        step.container
                    ),
                }),
            ),
            StepEnd::TaskTimedOut => (
                1,
                "TimeoutExceeded",
                Some(Ended {
                    succeeded: false,
                    reason: "TaskRunTimeout".into(),
                    message: format!(
                        "TaskRun failed to finish within {:?}",
                        opts.timeout_text.as_deref().unwrap_or("its timeout")
                    ),
                }),
            ),
            StepEnd::Cancelled => (
                1,
                "Cancelled",
                Some(Ended {
                    succeeded: false,
                    reason: "TaskRunCancelled".into(),
                    message: "TaskRun was cancelled".into(),
                }),
            ),
            StepEnd::NotStarted(m) => (
                1,
                "Error",
                Some(Ended {
                    succeeded: false,
                    reason: "StepFailed".into(),
                    message: format!("{:?}: {m}", step.container),
                }),
            ),
        };
        let _ = std::fs::write(dir.join("exitCode"), exit_code.to_string());
        // Only a step that exited on its own may fail and go on (not a timeout, a cancel or
        // a step that could not start).
        let continued = fail.is_some()
            && step.on_error_continue
            && reason == "Error"
            && exit_code != 0
            && !not_started;
        records.push(StepRecord {
            container: step.container.clone(),
            name: step.name.clone(),
            exit_code,
            reason: reason.into(),
            termination_reason: continued.then(|| "Continued".to_string()),
            started_at,
            finished_at,
        });
        if !continued {
            failure = failure.or(fail);
        }
    }
    let (results, result_error) = read_results(spec, paths, opts.max_result_size);
    let ended = match (failure, result_error) {
        (Some(f), _) => f,
        (None, Some(e)) => e,
        (None, None) => Ended {
            succeeded: true,
            reason: "Succeeded".into(),
            message: "All Steps have completed executing".into(),
        },
    };
    Outcome {
        steps: records,
        results,
        ended,
    }
}

/// The declared results that were written.
fn read_results(
    spec: &TaskSpec,
    paths: &Paths,
    max: usize,
) -> (BTreeMap<String, ParamValue>, Option<Ended>) {
    let mut out = BTreeMap::new();
    for r in &spec.results {
        let file = paths.results.join(&r.name);
        // The file itself, not what a link points to; a regular file (not a FIFO or a device
        // a step could leave to hang or flood the reader).
        let Ok(meta) = std::fs::symlink_metadata(&file) else {
            continue;
        };
        if !meta.is_file() {
            return (
                out,
                Some(Ended {
                    succeeded: false,
                    reason: "Failed".into(),
                    message: format!("result {:?} is not a regular file", r.name),
                }),
            );
        }
        if meta.len() > max as u64 {
            return (
                out,
                Some(Ended {
                    succeeded: false,
                    reason: "TaskRunResultLargerThanAllowedLimit".into(),
                    message: format!(
                        "result {:?} is {} bytes; at most {max} (--pipelines-max-result-size)",
                        r.name,
                        meta.len()
                    ),
                }),
            );
        }
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let value = match r.kind.as_deref() {
            Some("array") => match serde_json::from_str::<Vec<String>>(text.trim()) {
                Ok(a) => ParamValue::Array(a),
                Err(e) => return (out, Some(bad_result(&r.name, "an array", e))),
            },
            Some("object") => match serde_json::from_str::<BTreeMap<String, String>>(text.trim()) {
                Ok(o) => ParamValue::Object(o),
                Err(e) => return (out, Some(bad_result(&r.name, "an object", e))),
            },
            _ => ParamValue::String(text),
        };
        out.insert(r.name.clone(), value);
    }
    (out, None)
}

fn bad_result(name: &str, what: &str, e: serde_json::Error) -> Ended {
    Ended {
        succeeded: false,
        reason: "Failed".into(),
        message: format!("result {name:?} is not {what} of strings in JSON: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{plan, Context};
    use serde_json::json;

    /// How often a wait re-checks its condition.
    const POLL: Duration = Duration::from_millis(10);

    struct Run {
        _dir: tempfile::TempDir,
        paths: Paths,
        sandbox: Sandbox,
        opts: Options,
    }

    fn setup() -> Run {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = Sandbox::new(dir.path(), &BTreeMap::new(), false).unwrap();
        let paths = sandbox.host.clone();
        let opts = Options {
            spawner: None,
            max_result_size: 16,
            env: Vec::new(),
            default_dir: dir.path().to_path_buf(),
            deadline: None,
            timeout_text: None,
            output: Arc::new(|_: &str, _: bool, _: &str| {}),
        };
        Run {
            _dir: dir,
            paths,
            sandbox,
            opts,
        }
    }

    async fn go(r: &Run, task: serde_json::Value, cancel: &CancellationToken) -> Outcome {
        let spec: TaskSpec = serde_json::from_value(task).unwrap();
        let steps = plan(
            &spec,
            &BTreeMap::new(),
            &Context::default(),
            &r.paths,
            "/bin/sh",
        )
        .unwrap();
        execute(&steps, &spec, &r.sandbox, &r.opts, cancel).await
    }

    fn reasons(o: &Outcome) -> Vec<(String, i32, Option<String>)> {
        o.steps
            .iter()
            .map(|s| (s.reason.clone(), s.exit_code, s.termination_reason.clone()))
            .collect()
    }

    #[tokio::test]
    async fn a_failing_step_stops_the_task_and_the_rest_is_skipped() {
        let r = setup();
        let o = go(
            &r,
            json!({"results": [{"name": "out"}], "steps": [
                {"name": "ok", "script": "printf 'hi\\n' > $(results.out.path)"},
                {"name": "soft", "script": "exit 4", "onError": "continue"},
                {"name": "hard", "command": ["sh", "-c", "exit 3"]},
                {"name": "never", "script": "true"},
            ]}),
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(
            reasons(&o),
            [
                ("Completed".into(), 0, None),
                ("Error".into(), 4, Some("Continued".into())),
                ("Error".into(), 3, None),
                ("Skipped".into(), 0, Some("Skipped".into())),
            ]
        );
        assert_eq!(
            o.ended,
            Ended {
                succeeded: false,
                reason: "StepFailed".into(),
                message: "\"step-hard\" exited with code 3".into()
            }
        );
        // The result written before the failure is kept, verbatim; exit codes are on disk.
        assert_eq!(o.results["out"], ParamValue::String("hi\n".into()));
        let code = std::fs::read_to_string(r.paths.steps.join("1/exitCode")).unwrap();
        assert_eq!(code, "4");
    }

    #[tokio::test]
    async fn a_step_timeout_and_a_cancel_kill_the_whole_group() {
        let r = setup();
        let pidfile = r.paths.home.join("grandchild");
        // The step starts a grandchild (which says who it is) and waits.
        let script = format!(
            "sh -c 'echo $$ > {}.tmp; mv {0}.tmp {0}; exec sleep 30' & sleep 30",
            pidfile.display()
        );
        let o = go(
            &r,
            json!({"steps": [{"name": "slow", "script": script, "timeout": "500ms"}]}),
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(o.ended.reason, "StepFailed");
        assert!(
            o.ended.message.contains("exceeded the specified timeout"),
            "{:?}",
            o.ended
        );
        assert_eq!(o.steps[0].reason, "TimeoutExceeded");
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        let canceller = tokio::spawn(async move {
            tokio::task::yield_now().await;
            c.cancel();
        });
        let o = go(
            &r,
            json!({"steps": [{"name": "slow", "script": "sleep 30"}]}),
            &cancel,
        )
        .await;
        canceller.await.unwrap();
        assert_eq!(o.ended.reason, "TaskRunCancelled");
        // The grandchild of the timed-out step died with its group.
        let pid = std::fs::read_to_string(&pidfile).expect("the grandchild started");
        let stat = format!("/proc/{}/stat", pid.trim());
        let gone = || {
            std::fs::read_to_string(&stat).map_or(true, |s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !gone() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "a process outlived its step"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    #[tokio::test]
    async fn a_working_dir_in_a_workspace_works_in_either_view() {
        for private in [false, crate::sandbox::private_view_available()] {
            let dir = tempfile::tempdir().unwrap();
            let shared = dir.path().join("shared");
            let ws = [(
                "source".to_string(),
                crate::sandbox::WorkspaceDir {
                    host: Some(shared.clone()),
                    mount_path: None,
                },
            )]
            .into();
            let sandbox = Sandbox::new(&dir.path().join("run"), &ws, private).unwrap();
            std::fs::create_dir_all(&shared).unwrap();
            let spec: TaskSpec = serde_json::from_value(json!({
                "workspaces": [{"name": "source"}],
                "steps": [{"name": "w", "workingDir": "$(workspaces.source.path)/sub",
                           "script": "printf ok > here; printf \"$PWD\" > $(workspaces.source.path)/pwd"}],
            }))
            .unwrap();
            let steps = plan(
                &spec,
                &BTreeMap::new(),
                &Context::default(),
                &sandbox.view,
                "/bin/sh",
            )
            .unwrap();
            let mut r = setup();
            r.opts.default_dir = dir.path().to_path_buf();
            let o = execute(&steps, &spec, &sandbox, &r.opts, &CancellationToken::new()).await;
            assert!(o.ended.succeeded, "private {private}: {:?}", o.ended);
            assert_eq!(
                std::fs::read_to_string(shared.join("sub/here")).unwrap(),
                "ok"
            );
            let seen = std::fs::read_to_string(shared.join("pwd")).unwrap();
            let want = if private {
                "/workspace/source/sub".to_string()
            } else {
                shared.join("sub").display().to_string()
            };
            assert_eq!(seen, want, "private {private}");
        }
    }

    #[tokio::test]
    async fn results_are_bounded_and_typed() {
        let r = setup();
        let o = go(
            &r,
            json!({"results": [{"name": "big"}], "steps": [
                {"script": "printf '0123456789abcdefXYZ' > $(results.big.path)"},
            ]}),
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(o.ended.reason, "TaskRunResultLargerThanAllowedLimit");
        let o = go(
            &r,
            json!({"results": [{"name": "list", "type": "array"}], "steps": [
                {"script": "printf '[\"a\",\"b\"]' > $(results.list.path)"},
            ]}),
            &CancellationToken::new(),
        )
        .await;
        assert!(o.ended.succeeded, "{:?}", o.ended);
        assert_eq!(
            o.results["list"],
            ParamValue::Array(vec!["a".into(), "b".into()])
        );
    }
}
