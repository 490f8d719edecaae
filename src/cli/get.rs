//! `ferry get`, `ferry describe`, `ferry delete`.

use super::client::{Client, ServerArg};
use crate::control::resource::Kind;
use anyhow::{anyhow, Context};
use reqwest::Method;
use serde_json::{json, Value};

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Output {
    #[default]
    Table,
    Yaml,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// Resource type: brokers or triggers.
    pub kind: String,
    /// One resource's name (all of the namespace if omitted).
    pub name: Option<String>,
    /// Namespace.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Output format; yaml and json can be given back to `ferry apply`.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
    #[command(flatten)]
    pub server: ServerArg,
}

#[derive(clap::Args, Debug)]
pub struct DescribeArgs {
    pub kind: String,
    pub name: String,
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    #[command(flatten)]
    pub server: ServerArg,
}

#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    pub kind: String,
    pub name: String,
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    #[command(flatten)]
    pub server: ServerArg,
}

fn kind(s: &str) -> anyhow::Result<Kind> {
    Kind::parse(s).ok_or_else(|| {
        let known: Vec<&str> = Kind::ALL.iter().map(|k| k.plural()).collect();
        anyhow!("unknown resource type {s:?} (known: {})", known.join(", "))
    })
}

/// The API path of one resource.
fn resource_path(namespace: &str, kind: Kind, name: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/{}/{name}", kind.plural())
}

pub async fn get(args: GetArgs) -> anyhow::Result<()> {
    let kind = kind(&args.kind)?;
    let client = Client::new(&args.server)?;
    let items: Vec<Value> = match &args.name {
        Some(name) => {
            let path = resource_path(&args.namespace, kind, name);
            vec![client.request(Method::GET, &path, None).await?]
        }
        None => {
            let mut path = format!("/api/v1/{}", kind.plural());
            if !args.all_namespaces {
                path.push_str(&format!("?namespace={}", args.namespace));
            }
            let answer = client.request(Method::GET, &path, None).await?;
            answer["items"].as_array().cloned().unwrap_or_default()
        }
    };
    let single = args.name.is_some();
    match args.output {
        Output::Json => {
            let v = if single {
                items.into_iter().next().unwrap_or(Value::Null)
            } else {
                json!({"apiVersion": "v1", "kind": "List", "items": items})
            };
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Yaml => {
            let docs: Vec<String> = items
                .iter()
                .map(serde_yaml_ng::to_string)
                .collect::<Result<_, _>>()
                .context("encoding YAML")?;
            print!("{}", docs.join("---\n"));
        }
        Output::Table => {
            if items.is_empty() {
                eprintln!("No {} found.", kind.plural());
                return Ok(());
            }
            print!("{}", table(kind, &items));
        }
    }
    Ok(())
}

/// The table of a kind (brokers and sinks: `NAMESPACE NAME READY URL AGE`; triggers:
/// `NAMESPACE NAME BROKER SUBSCRIBER READY LAG AGE`; sources: `NAMESPACE NAME TOPICS SINK
/// READY AGE`), columns padded to their widest cell.
fn table(kind: Kind, items: &[Value]) -> String {
    let headers: &[&str] = match kind {
        Kind::Broker | Kind::KafkaSink => &["NAMESPACE", "NAME", "READY", "URL", "AGE"],
        Kind::Trigger => &[
            "NAMESPACE",
            "NAME",
            "BROKER",
            "SUBSCRIBER",
            "READY",
            "LAG",
            "AGE",
        ],
        Kind::KafkaSource => &["NAMESPACE", "NAME", "TOPICS", "SINK", "READY", "AGE"],
    };
    let mut rows = vec![headers.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    for r in items {
        let s = |v: &Value| v.as_str().unwrap_or("").to_string();
        let (ns, name, age) = (
            s(&r["metadata"]["namespace"]),
            s(&r["metadata"]["name"]),
            age(r["metadata"]["creationTimestamp"].as_str()),
        );
        rows.push(match kind {
            Kind::Broker | Kind::KafkaSink => {
                vec![ns, name, ready(r).0, s(&r["status"]["address"]["url"]), age]
            }
            Kind::Trigger => vec![
                ns,
                name,
                s(&r["spec"]["broker"]),
                s(&r["status"]["subscriberUri"]),
                ready(r).0,
                r["status"]["lag"]
                    .as_u64()
                    .map_or("-".into(), |l| l.to_string()),
                age,
            ],
            Kind::KafkaSource => vec![
                ns,
                name,
                r["spec"]["topics"]
                    .as_array()
                    .map(|t| {
                        t.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default(),
                s(&r["status"]["sinkUri"]),
                ready(r).0,
                age,
            ],
        });
    }
    let widths: Vec<usize> = (0..headers.len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// The Ready condition: status, reason, message.
fn ready(r: &Value) -> (String, String, String) {
    let cond = r["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"));
    match cond {
        Some(c) => (
            c["status"].as_str().unwrap_or("Unknown").to_string(),
            c["reason"].as_str().unwrap_or("").to_string(),
            c["message"].as_str().unwrap_or("").to_string(),
        ),
        None => ("Unknown".into(), String::new(), String::new()),
    }
}

/// Age like kubectl shows it: 42s, 5m, 3h, 2d.
fn age(created: Option<&str>) -> String {
    let Some(t) = created.and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok()) else {
        return "<unknown>".into();
    };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

pub async fn describe(args: DescribeArgs) -> anyhow::Result<()> {
    let kind = kind(&args.kind)?;
    let client = Client::new(&args.server)?;
    let path = resource_path(&args.namespace, kind, &args.name);
    let r = client.request(Method::GET, &path, None).await?;
    let m = &r["metadata"];
    let map = |v: &Value| -> String {
        match v.as_object() {
            Some(o) if !o.is_empty() => o
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(", "),
            _ => "<none>".into(),
        }
    };
    println!("Name:         {}", m["name"].as_str().unwrap_or(""));
    println!("Namespace:    {}", m["namespace"].as_str().unwrap_or(""));
    println!("Kind:         {}", r["kind"].as_str().unwrap_or(""));
    println!("API Version:  {}", r["apiVersion"].as_str().unwrap_or(""));
    println!("UID:          {}", m["uid"].as_str().unwrap_or(""));
    println!("Generation:   {}", m["generation"]);
    println!(
        "Created:      {} ({} ago)",
        m["creationTimestamp"].as_str().unwrap_or(""),
        age(m["creationTimestamp"].as_str())
    );
    println!("Labels:       {}", map(&m["labels"]));
    println!("Annotations:  {}", map(&m["annotations"]));
    let spec = serde_yaml_ng::to_string(&r["spec"]).context("encoding YAML")?;
    println!("Spec:");
    for line in spec.lines() {
        println!("  {line}");
    }
    let status = &r["status"];
    for (label, value) in [
        (
            "Address:     ",
            status["address"]["url"].as_str().map(str::to_string),
        ),
        (
            "Subscriber:  ",
            status["subscriberUri"].as_str().map(str::to_string),
        ),
        (
            "Dead letters:",
            status["deadLetterSinkUri"].as_str().map(str::to_string),
        ),
        (
            "Lag:         ",
            status["lag"].as_u64().map(|l| l.to_string()),
        ),
    ] {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            println!("{label} {v}");
        }
    }
    println!("Conditions:");
    println!(
        "  {:<24} {:<8} {:<22} {:<20} MESSAGE",
        "TYPE", "STATUS", "LAST TRANSITION", "REASON"
    );
    for c in r["status"]["conditions"].as_array().into_iter().flatten() {
        println!(
            "  {:<24} {:<8} {:<22} {:<20} {}",
            c["type"].as_str().unwrap_or(""),
            c["status"].as_str().unwrap_or(""),
            c["lastTransitionTime"].as_str().unwrap_or(""),
            c["reason"].as_str().unwrap_or(""),
            c["message"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

pub async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let kind = kind(&args.kind)?;
    let client = Client::new(&args.server)?;
    let path = resource_path(&args.namespace, kind, &args.name);
    client.request(Method::DELETE, &path, None).await?;
    println!(
        "{}.eventing.knative.dev/{} deleted (namespace {})",
        kind.name().to_ascii_lowercase(),
        args.name,
        args.namespace
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let items = vec![json!({
            "metadata": {"namespace": "default", "name": "default", "creationTimestamp": chrono::Utc::now().to_rfc3339()},
            "status": {"conditions": [{"type": "Ready", "status": "True"}], "address": {"url": "http://127.0.0.1:8080/default/default"}}
        })];
        let t = table(Kind::Broker, &items);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "NAMESPACE   NAME      READY   URL                                     AGE"
        );
        assert!(lines[1]
            .starts_with("default     default   True    http://127.0.0.1:8080/default/default   "));
    }
}
