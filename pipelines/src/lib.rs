//! Ferry's pipelines: Tekton v1 Tasks and Pipelines run as local processes.
//!
//! Work in progress (issue "Pipelines"): so far the pure core, which the kinds, the executor
//! and the scheduler (driven by Tekton's CloudEvents through the broker) will build on:
//!
//! - [`spec`]: the Tekton v1 shapes (Task, Pipeline, TaskRun, PipelineRun specs).
//! - [`params`]: param values and declarations, resolved with Tekton's errors.
//! - [`subst`]: `$(...)` substitution in one pass, with `[*]` expansion.
//! - [`dag`]: the pipeline graph from `runAfter` and result references, cycles named.
//! - [`validate`]: Tasks, Pipelines and runs checked, every problem with its field path.
//! - [`matrix`]: matrix fan-out (the cartesian product, `include`).
//! - [`executor`]: runs the planned steps as processes (groups killed on timeout and
//!   cancel), exit codes and results where Tekton puts them.
//! - [`sandbox`]: a TaskRun's directories and its steps' view of them (`/tekton`,
//!   `/workspace` as bind mounts in a private mount namespace where the system allows it).
//! - [`pipelinerun`]: a PipelineRun driven to its end in-process (scheduler, matrix,
//!   retries, workspaces, results): what the control plane's executor is built from.
//! - [`plan`]: a TaskRun's steps as processes: template merged, fields substituted, scripts
//!   with Tekton's preamble, container paths mapped to the run's directories.
//! - [`scheduler`]: a PipelineRun's next moves as a pure function of its tasks' states:
//!   starts, skips with Tekton's reasons, cancellations, finally, the `Succeeded` condition.

pub mod dag;
pub mod executor;
pub mod matrix;
pub mod params;
pub mod pipelinerun;
pub mod plan;
pub mod sandbox;
pub mod scheduler;
pub mod spec;
pub mod subst;
pub mod validate;
