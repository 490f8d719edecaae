//! `ferry logs revision|pipelinerun|taskrun NAME [-n NS] [-f]`: the output of a revision's
//! instances (each line prefixed by its instance) or of a run's steps (prefixed
//! `[task/step]`).

use super::client::{Client, ServerArg};
use anyhow::{bail, Context};
use futures::StreamExt;
use std::io::Write;

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// What to show the output of: `revision`, `pipelinerun` (`pr`) or `taskrun` (`tr`).
    pub kind: String,
    pub name: String,
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// Keep printing new lines as they come.
    #[arg(short, long)]
    pub follow: bool,
    /// Set from the top-level options (`--server`, `--token`, `--ca-file`).
    #[arg(skip)]
    pub server: ServerArg,
}

pub async fn run(args: LogsArgs) -> anyhow::Result<()> {
    let plural = match args.kind.to_ascii_lowercase().as_str() {
        "revision" | "revisions" | "rev" => "revisions",
        "pipelinerun" | "pipelineruns" | "pr" => "pipelineruns",
        "taskrun" | "taskruns" | "tr" => "taskruns",
        _ => bail!(
            "ferry logs shows the output of a revision, a pipelinerun or a taskrun: ferry logs revision|pipelinerun|taskrun NAME -n NAMESPACE [-f] (got {:?})",
            args.kind
        ),
    };
    let client = Client::new(&args.server)?;
    let url = client.url(&format!(
        "/api/v1/namespaces/{}/{plural}/{}/logs?follow={}",
        args.namespace, args.name, args.follow
    ));
    let resp = client
        .http()
        .get(url)
        .send()
        .await
        .map_err(|e| client.unreachable(e))?;
    if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
        let body = resp.json().await.unwrap_or(serde_json::Value::Null);
        return Err(client.unauthenticated(&body));
    }
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        bail!(
            "cannot show the logs of {plural}/{} in namespace {}: {} ({status})",
            args.name,
            args.namespace,
            text.trim()
        );
    }
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("reading the logs")?;
        let mut out = std::io::stdout();
        out.write_all(&chunk).context("writing to stdout")?;
        out.flush().context("writing to stdout")?;
    }
    Ok(())
}
