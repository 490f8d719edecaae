//! `ferry cancel pipelinerun|taskrun NAME [-n NS] [--graceful | --stop]`: sets the run's
//! `spec.status` as Tekton's cancellation does: `Cancelled` (running tasks stopped, finally
//! not run), `--graceful`: `CancelledRunFinally` (running tasks stopped, then finally),
//! `--stop`: `StoppedRunFinally` (running tasks finish, nothing new starts, then finally); a
//! TaskRun: `TaskRunCancelled`.

use super::client::{Client, ServerArg};
use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::json;

#[derive(clap::Args, Debug)]
pub struct CancelArgs {
    /// `pipelinerun` (`pr`) or `taskrun` (`tr`).
    pub kind: String,
    pub name: String,
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// Stop the running tasks, then run `finally` (CancelledRunFinally).
    #[arg(long, conflicts_with = "stop")]
    pub graceful: bool,
    /// Let the running tasks finish, start nothing new, then run `finally` (StoppedRunFinally).
    #[arg(long)]
    pub stop: bool,
    /// Set from the top-level options (`--server`, `--token`, `--ca-file`).
    #[arg(skip)]
    pub server: ServerArg,
}

pub async fn run(args: CancelArgs) -> anyhow::Result<()> {
    let (plural, status) = match args.kind.to_ascii_lowercase().as_str() {
        "pipelinerun" | "pipelineruns" | "pr" => (
            "pipelineruns",
            if args.graceful {
                "CancelledRunFinally"
            } else if args.stop {
                "StoppedRunFinally"
            } else {
                "Cancelled"
            },
        ),
        "taskrun" | "taskruns" | "tr" if !args.graceful && !args.stop => {
            ("taskruns", "TaskRunCancelled")
        }
        "taskrun" | "taskruns" | "tr" => {
            bail!("--graceful and --stop are for pipelineruns (a TaskRun has no finally)")
        }
        other => bail!("ferry cancel cancels a pipelinerun or a taskrun (got {other:?})"),
    };
    let client = Client::new(&args.server)?;
    let path = format!(
        "/api/v1/namespaces/{}/{plural}/{}",
        args.namespace, args.name
    );
    let mut run = client.request(Method::GET, &path, None).await?;
    let ended = control::status::condition_status(&run["status"], "Succeeded")
        .is_some_and(|s| s != "Unknown");
    if ended {
        bail!(
            "{plural}/{} in namespace {} has already ended; nothing to cancel",
            args.name,
            args.namespace
        );
    }
    run["spec"]["status"] = json!(status);
    if let Some(o) = run.as_object_mut() {
        o.remove("status");
    }
    client
        .request(
            Method::POST,
            "/api/v1/apply",
            Some(&json!({ "documents": [run] })),
        )
        .await
        .with_context(|| format!("cancelling {plural}/{}", args.name))?;
    println!(
        "{}.tekton.dev/{} cancelled ({status}) (namespace {})",
        plural.trim_end_matches('s'),
        args.name,
        args.namespace
    );
    Ok(())
}
