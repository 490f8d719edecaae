//! Ferry's pipelines: Tekton v1 Tasks and Pipelines run as local processes, every run's
//! transition a CloudEvent through the system broker `ferry-system/pipelines`.
//!
//! The control-plane side:
//! - [`kinds`]: Task, Pipeline, TaskRun, PipelineRun (`tekton.dev/v1`) in the registry.
//! - [`events`]: Tekton's run events and Ferry's own (`taskrun.queued`, `pipelinerun.changed`),
//!   the system broker and its two triggers.
//! - [`driver`]: the scheduler trigger: one pass over a PipelineRun per event (start, skip,
//!   cancel tasks as TaskRuns; the run's status and outcome).
//! - [`worker`]: the executor trigger: runs queued TaskRuns (attempts, retries, slots).
//! - [`status`]: the Tekton v1 status shapes.
//! - [`api`]: `ferry logs pipelinerun|taskrun`.
//!
//! The pure core they are built from:
//! - [`spec`]: the Tekton v1 shapes (Task, Pipeline, TaskRun, PipelineRun specs).
//! - [`params`]: param values and declarations, resolved with Tekton's errors.
//! - [`subst`]: `$(...)` substitution in one pass, with `[*]` expansion.
//! - [`dag`]: the pipeline graph from `runAfter` and result references, cycles named.
//! - [`validate`]: Tasks, Pipelines and runs checked, every problem with its field path.
//! - [`matrix`]: matrix fan-out (the cartesian product, `include`).
//! - [`scheduler`]: a PipelineRun's next moves as a pure function of its tasks' states.
//! - [`pipelinerun`]: a run's pieces: bindings checked, a task's TaskRun specs, its state.
//! - [`taskrun`]: one attempt of a TaskRun: its directory, workspaces, steps.
//! - [`plan`]: a TaskRun's steps as processes: template merged, fields substituted, scripts
//!   with Tekton's preamble, container paths mapped to the run's directories.
//! - [`executor`]: runs the planned steps as processes (groups killed on timeout and cancel).
//! - [`sandbox`]: a TaskRun's view of `/tekton` and `/workspace` (a private mount namespace
//!   where the system allows it).

pub mod api;
pub mod dag;
pub mod driver;
pub mod events;
pub mod executor;
pub mod kinds;
pub mod matrix;
pub mod params;
pub mod pipelinerun;
pub mod plan;
pub mod sandbox;
pub mod scheduler;
pub mod spec;
pub mod status;
pub mod subst;
pub mod taskrun;
pub mod validate;
pub mod worker;

use control::{ControlPlane, Key, Registry};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use taskrun::Runner;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// How pipelines run here (`ferry serve`'s flags).
#[derive(Clone, Debug)]
pub struct PipelinesConfig {
    /// Runs' directories (`<data-dir>/pipelines`).
    pub work_dir: PathBuf,
    /// The interpreter of scripts without `#!` (`--pipelines-shell`).
    pub shell: String,
    /// `--pipelines-max-result-size`, bytes.
    pub max_result_size: usize,
    /// `--pipelines-max-running-tasks`.
    pub max_running_tasks: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelinesError {
    #[error("cannot prepare {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--pipelines-shell {0:?} is not an executable file nor found on PATH")]
    Shell(String),
    #[error(transparent)]
    Control(#[from] control::ControlError),
}

/// `program` as an absolute path: as given if it has a `/`, else the first on `PATH` (it goes
/// into scripts' `#!` line, which does not search).
fn find_program(program: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &std::path::Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return runnable(std::path::Path::new(program)).then(|| program.to_string());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| runnable(p))
        .map(|p| p.to_string_lossy().into_owned())
}

/// A TaskRun running (or waiting for a slot) on this node.
struct Running {
    uid: String,
    cancel: CancellationToken,
    /// Cancelled when it has stopped (its processes gone).
    stopped: CancellationToken,
}

/// Pipelines' shared state: the runner, the TaskRuns running here, the task slots.
pub struct Pipelines {
    pub config: PipelinesConfig,
    runner: Runner,
    control: OnceLock<Weak<ControlPlane>>,
    running: Mutex<HashMap<Key, Running>>,
    /// `--pipelines-max-running-tasks` slots, handed out in order.
    slots: Arc<Semaphore>,
    /// Runs reconciled since this process started (by uid): the first pass after a restart
    /// picks up where the run was.
    seen: Mutex<HashSet<String>>,
    /// One PipelineRun admitted at a time (`ferry.dev/max-concurrent-runs`).
    admission: tokio::sync::Mutex<()>,
    /// PipelineRuns being deleted (by uid): no pass makes TaskRuns for them any more.
    deleting: Mutex<HashSet<String>>,
    /// Wake-ups armed for runs' timeouts, by run uid.
    timers: Mutex<HashMap<String, std::time::SystemTime>>,
    /// Cancelled when the server stops: `ferry logs -f` streams end, timers stop.
    stop: CancellationToken,
}

impl Pipelines {
    pub fn new(config: PipelinesConfig) -> Result<Arc<Self>, PipelinesError> {
        let io = |path: &std::path::Path| {
            let path = path.to_path_buf();
            move |source| PipelinesError::Io { path, source }
        };
        std::fs::create_dir_all(&config.work_dir).map_err(io(&config.work_dir))?;
        let pids = config.work_dir.join(".pids");
        let spawner = control::process::Spawner::new(&pids, "pipeline step").map_err(io(&pids))?;
        let shell = find_program(&config.shell)
            .ok_or_else(|| PipelinesError::Shell(config.shell.clone()))?;
        let private_view = sandbox::private_view_available();
        if !private_view {
            tracing::warn!("no private mount namespace here (unshare): steps see their runs' real directories, and scripts naming /tekton or /workspace literally will not find them");
        }
        let runner = Runner {
            work_dir: config.work_dir.clone(),
            shell,
            private_view,
            max_result_size: config.max_result_size,
            env: Vec::new(),
            spawner: Some(Arc::new(spawner)),
        };
        Ok(Arc::new(Self {
            slots: Arc::new(Semaphore::new(config.max_running_tasks.max(1))),
            config,
            runner,
            control: OnceLock::new(),
            running: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashSet::new()),
            admission: tokio::sync::Mutex::new(()),
            timers: Mutex::new(HashMap::new()),
            deleting: Mutex::new(HashSet::new()),
            stop: CancellationToken::new(),
        }))
    }

    pub fn runner(&self) -> &Runner {
        &self.runner
    }

    /// The control plane, once [`start`](Self::start) ran.
    pub fn control(&self) -> Option<Arc<ControlPlane>> {
        self.control.get().and_then(Weak::upgrade)
    }

    /// Sets up the system broker and its triggers once the control plane runs.
    pub async fn start(self: &Arc<Self>, cp: &Arc<ControlPlane>) -> Result<(), PipelinesError> {
        let _ = self.control.set(Arc::downgrade(cp));
        events::start(self, cp).await?;
        // Runs reconciled before this node's triggers existed (the first start with them)
        // published events the triggers, made at the log's end, do not see: again, now.
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clear();
        for kind in ["PipelineRun", "TaskRun"] {
            for r in cp.list(kind, None)? {
                if !status::is_done(&r.status) {
                    cp.requeue(r.key());
                }
            }
        }
        Ok(())
    }

    /// Cancels every running TaskRun and waits (at most `limit`) for their processes to stop.
    pub async fn stop(&self, limit: std::time::Duration) {
        self.stop.cancel();
        let stopped: Vec<CancellationToken> = self
            .lock_running()
            .values()
            .map(|r| r.stopped.clone())
            .collect();
        // Running TaskRuns are not cancelled: after the restart they are reported as
        // interrupted (or retried). Their processes die with Ferry.
        let _ = tokio::time::timeout(limit, async {
            for s in stopped {
                s.cancelled().await;
            }
        })
        .await;
    }

    /// Ends `ferry logs -f` streams (they would hold the API's graceful shutdown open).
    pub fn end_streams(&self) {
        self.stop.cancel();
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `uid` is reconciled for the first time in this process (and marks it seen).
    fn first_seen(&self, uid: &str) -> bool {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid.to_string())
    }

    fn is_deleting(&self, uid: &str) -> bool {
        self.deleting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(uid)
    }

    /// Marks a run as being deleted: no pass makes TaskRuns for it (a PipelineRun), none
    /// counts it (a TaskRun deleted by hand, made anew), its end is not written.
    fn mark_deleting(&self, uid: &str) {
        self.deleting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid.to_string());
    }

    /// The delete failed: the run goes on.
    fn unmark_deleting(&self, uid: &str) {
        self.deleting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
    }

    /// Forgets the mark in a minute (the run is gone from the store by then).
    fn forget_deleting_later(self: &Arc<Self>, uid: &str) {
        let me = Arc::downgrade(self);
        let uid = uid.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(DELETING_MARK).await;
            if let Some(p) = me.upgrade() {
                p.deleting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&uid);
            }
        });
    }

    fn unsee(&self, uid: &str) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
    }

    /// Cancels the TaskRun `key` if it runs here; the token that says it has stopped.
    fn cancel_running(&self, key: &Key) -> Option<CancellationToken> {
        let running = self.lock_running();
        let r = running.get(key)?;
        r.cancel.cancel();
        Some(r.stopped.clone())
    }

    fn is_running(&self, key: &Key, uid: &str) -> bool {
        self.lock_running().get(key).is_some_and(|r| r.uid == uid)
    }
}

/// How long a deleted PipelineRun stays marked (no pass makes TaskRuns for it meanwhile).
const DELETING_MARK: std::time::Duration = std::time::Duration::from_secs(60);

/// Registers pipelines' kinds (Task, Pipeline, TaskRun, PipelineRun).
pub fn register(registry: &mut Registry, pipelines: &Arc<Pipelines>) {
    kinds::register(registry, pipelines);
}
