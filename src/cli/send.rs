//! `ferry send`: one CloudEvent, in binary mode, to a broker's address (as any producer would).

use super::client::{Client, ServerArg};
use anyhow::{anyhow, bail, Context};
use broker::{AttrValue, Event};
use reqwest::Method;

#[derive(clap::Args, Debug)]
pub struct SendArgs {
    /// Broker name.
    #[arg(long)]
    pub broker: String,
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// CloudEvent `type`.
    #[arg(long = "type")]
    pub ty: String,
    /// CloudEvent `source` (a URI-reference).
    #[arg(long)]
    pub source: String,
    /// CloudEvent `id` [default: a new UUID].
    #[arg(long)]
    pub id: Option<String>,
    /// CloudEvent `subject`.
    #[arg(long)]
    pub subject: Option<String>,
    /// Event data.
    #[arg(long)]
    pub data: Option<String>,
    /// `datacontenttype` of the data.
    #[arg(long, default_value = "application/json")]
    pub content_type: String,
    /// Extension attribute NAME=VALUE (repeatable), e.g. partitionkey=order-7.
    #[arg(short = 'e', long = "extension", value_parser = parse_extension)]
    pub extensions: Vec<(String, String)>,
    /// Set from the top-level options (`--server`, `--token`, `--ca-file`).
    #[arg(skip)]
    pub server: ServerArg,
}

fn parse_extension(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: use NAME=VALUE"))?;
    Ok((k.to_string(), v.to_string()))
}

pub async fn run(args: SendArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.server)?;
    let path = format!(
        "/api/v1/namespaces/{}/brokers/{}",
        args.namespace, args.broker
    );
    let broker = client.request(Method::GET, &path, None).await?;
    let url = broker["status"]["address"]["url"]
        .as_str()
        .ok_or_else(|| {
            anyhow!(
                "broker {}/{} has no address yet (not Ready)",
                args.namespace,
                args.broker
            )
        })?
        .to_string();

    let id = args.id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let s = |v: &str| AttrValue::String(v.to_string());
    let mut event = Event {
        attributes: vec![
            ("specversion".into(), s("1.0")),
            ("id".into(), s(&id)),
            ("source".into(), s(&args.source)),
            ("type".into(), s(&args.ty)),
        ],
        data: None,
    };
    if let Some(subject) = &args.subject {
        event.set_attr("subject", s(subject));
    }
    for (k, v) in &args.extensions {
        event.set_attr(k, s(v));
    }
    if let Some(data) = args.data {
        event.set_attr("datacontenttype", s(&args.content_type));
        event.data = Some(data.into());
    }
    let headers = cloudevent::http::binary_headers(&event);
    let resp = client
        .http()
        .post(&url)
        .headers(headers)
        .body(event.data.clone().unwrap_or_default())
        .send()
        .await
        .with_context(|| format!("cannot reach the ingress at {url}"))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        bail!("the broker refused the event ({status}): {}", body.trim());
    }
    println!("sent {id} to {}/{} ({status})", args.namespace, args.broker);
    Ok(())
}
