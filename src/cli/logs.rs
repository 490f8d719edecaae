//! `ferry logs revision NAME [-n NS] [-f]`: the output of a revision's instances, each line
//! prefixed by its instance.

use super::client::{Client, ServerArg};
use anyhow::{bail, Context};
use futures::StreamExt;
use std::io::Write;

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// What to show the output of: `revision`.
    pub kind: String,
    pub name: String,
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// Keep printing new lines as they come.
    #[arg(short, long)]
    pub follow: bool,
    #[command(flatten)]
    pub server: ServerArg,
}

pub async fn run(args: LogsArgs) -> anyhow::Result<()> {
    if !["revision", "revisions", "rev"].contains(&args.kind.to_ascii_lowercase().as_str()) {
        bail!(
            "ferry logs shows a revision's output: ferry logs revision NAME -n NAMESPACE [-f] (got {:?})",
            args.kind
        );
    }
    let client = Client::new(&args.server)?;
    let url = client.url(&format!(
        "/api/v1/namespaces/{}/revisions/{}/logs?follow={}",
        args.namespace, args.name, args.follow
    ));
    let resp = client
        .http()
        .get(url)
        .send()
        .await
        .map_err(|e| client.unreachable(e))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        bail!("{} ({status})", text.trim());
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
