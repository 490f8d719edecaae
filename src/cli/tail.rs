//! `ferry tail BROKER`: a broker's events, one per line, as they arrive.

use super::client::{Client, ServerArg};
use anyhow::{bail, Context};
use futures::StreamExt;
use serde_json::Value;
use std::io::Write;

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TailOutput {
    /// `TIME  TYPE  SOURCE  ID  DATA`
    #[default]
    Text,
    /// One structured-mode CloudEvent JSON per line.
    Json,
}

#[derive(clap::Args, Debug)]
pub struct TailArgs {
    /// Broker name.
    pub broker: String,
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// Start with the oldest retained event instead of new ones.
    #[arg(long)]
    pub from_beginning: bool,
    /// Print what is there and exit instead of waiting for more.
    #[arg(long)]
    pub no_follow: bool,
    #[arg(short, long, value_enum, default_value_t)]
    pub output: TailOutput,
    /// Set from the top-level options (`--server`, `--token`, `--ca-file`).
    #[arg(skip)]
    pub server: ServerArg,
}

pub async fn run(args: TailArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.server)?;
    let from = if args.from_beginning {
        "beginning"
    } else {
        "end"
    };
    let url = client.url(&format!(
        "/api/v1/namespaces/{}/brokers/{}/events?from={from}&follow={}",
        args.namespace, args.broker, !args.no_follow
    ));
    let resp = client
        .http()
        .get(&url)
        .send()
        .await
        .map_err(|e| client.unreachable(e))?;
    if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        return Err(client.unauthenticated(&body));
    }
    if !resp.status().is_success() {
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        bail!(
            "{}",
            body["error"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| status.to_string())
        );
    }
    let mut stream = resp.bytes_stream();
    let mut pending = Vec::new();
    let stdout = std::io::stdout();
    while let Some(chunk) = stream.next().await {
        pending.extend_from_slice(&chunk.context("reading events")?);
        while let Some(i) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            let mut out = stdout.lock();
            match args.output {
                TailOutput::Json => out.write_all(&line)?,
                TailOutput::Text => writeln!(out, "{}", text_line(&line))?,
            }
            out.flush()?;
        }
    }
    Ok(())
}

fn text_line(json: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<Value>(json) else {
        return String::from_utf8_lossy(json).trim_end().to_string();
    };
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
    let data = match (v.get("data"), v.get("data_base64")) {
        (Some(Value::String(t)), _) => t.clone(),
        (Some(d), _) => d.to_string(),
        (None, Some(_)) => "<binary>".into(),
        (None, None) => String::new(),
    };
    let time = v
        .get("time")
        .or_else(|| v.get("knativearrivaltime"))
        .and_then(Value::as_str)
        .unwrap_or("-");
    format!(
        "{time}  {}  {}  {}  {data}",
        s("type"),
        s("source"),
        s("id")
    )
}
