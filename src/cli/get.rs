//! `ferry get`, `ferry describe`, `ferry delete`, `ferry api-resources`: generic over every kind
//! the server registers. The server resolves the type name (plural, singular, kind or short
//! name) and fills in each kind's printer columns (kubectl's server-side printing), so the CLI
//! has no per-kind code.

use super::client::{Client, ServerArg};
use anyhow::Context;
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
    /// Resource type: plural, singular, kind or short name (`ferry api-resources` lists them).
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
    /// Set from the top-level options (`--server`, `--token`, `--ca-file`).
    #[arg(skip)]
    pub server: ServerArg,
}

#[derive(clap::Args, Debug)]
pub struct ApiResourcesArgs {
    /// Set from the top-level options (`--server`, `--token`, `--ca-file`).
    #[arg(skip)]
    pub server: ServerArg,
}

#[derive(clap::Args, Debug)]
pub struct DescribeArgs {
    pub kind: String,
    pub name: String,
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// Set from the top-level options (`--server`, `--token`, `--ca-file`).
    #[arg(skip)]
    pub server: ServerArg,
}

#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    pub kind: String,
    pub name: String,
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// Set from the top-level options (`--server`, `--token`, `--ca-file`).
    #[arg(skip)]
    pub server: ServerArg,
}

/// The API path of one resource (`kind` as the user typed it; the server resolves it).
fn resource_path(namespace: &str, kind: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/{kind}/{name}")
}

pub async fn get(args: GetArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.server)?;
    let view = if args.output == Output::Table {
        "view=table"
    } else {
        ""
    };
    let path = match &args.name {
        Some(name) => format!(
            "{}?{view}",
            resource_path(&args.namespace, &args.kind, name)
        ),
        None if args.all_namespaces => format!("/api/v1/{}?{view}", args.kind),
        None => format!("/api/v1/{}?namespace={}&{view}", args.kind, args.namespace),
    };
    let answer = client.request(Method::GET, &path, None).await?;
    let single = args.name.is_some();
    match args.output {
        Output::Json => {
            let v = if single {
                answer
            } else {
                json!({"apiVersion": "v1", "kind": "List", "items": answer["items"]})
            };
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Yaml => {
            let items = if single {
                vec![answer]
            } else {
                answer["items"].as_array().cloned().unwrap_or_default()
            };
            let docs: Vec<String> = items
                .iter()
                .map(serde_yaml_ng::to_string)
                .collect::<Result<_, _>>()
                .context("encoding YAML")?;
            print!("{}", docs.join("---\n"));
        }
        Output::Table => {
            let rows = answer["rows"].as_array().cloned().unwrap_or_default();
            if rows.is_empty() {
                let plural = answer["plural"].as_str().unwrap_or(&args.kind);
                match args.all_namespaces {
                    true => eprintln!("No {plural} found."),
                    false => eprintln!("No {plural} found in namespace {}.", args.namespace),
                }
                return Ok(());
            }
            print!("{}", table(&answer["columns"], &rows));
        }
    }
    Ok(())
}

/// Columns padded to their widest cell, three spaces apart.
pub fn table(columns: &Value, rows: &[Value]) -> String {
    let cells = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|c| c.as_str().unwrap_or("").to_string())
            .collect()
    };
    let mut all = vec![cells(columns)];
    all.extend(rows.iter().map(cells));
    let n = all.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|c| {
            all.iter()
                .map(|r| r.get(c).map_or(0, String::len))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in all {
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

/// `ferry api-resources`: the kinds the server serves, as kubectl lists them.
pub async fn api_resources(args: ApiResourcesArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.server)?;
    let answer = client
        .request(Method::GET, "/api/v1/api-resources", None)
        .await?;
    let rows: Vec<Value> = answer["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let short: Vec<&str> = r["shortNames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            json!([
                r["name"],
                short.join(","),
                r["apiVersion"],
                if r["namespaced"] == true {
                    "true"
                } else {
                    "false"
                },
                r["kind"],
            ])
        })
        .collect();
    let columns = json!(["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]);
    print!("{}", table(&columns, &rows));
    Ok(())
}

pub async fn describe(args: DescribeArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.server)?;
    let path = resource_path(&args.namespace, &args.kind, &args.name);
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
        control::api::age(m["creationTimestamp"].as_str().unwrap_or(""))
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
            "Sink:        ",
            status["sinkUri"].as_str().map(str::to_string),
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
    if let Some(url) = status["url"].as_str() {
        println!("URL:          {url}");
    }
    if let Some(traffic) = status["traffic"].as_array() {
        println!("Traffic:");
        for t in traffic {
            let tag = t["tag"]
                .as_str()
                .map(|tag| format!("  #{tag} {}", t["url"].as_str().unwrap_or("")))
                .unwrap_or_default();
            let latest = if t["latestRevision"] == true {
                " (latest)"
            } else {
                ""
            };
            println!(
                "  {:>3}%  {}{latest}{tag}",
                t["percent"].as_u64().unwrap_or(0),
                t["revisionName"].as_str().unwrap_or("")
            );
        }
    }
    let owner_label = match r["kind"].as_str() {
        Some("Service") => Some("serving.knative.dev/service"),
        Some("Configuration") => Some("serving.knative.dev/configuration"),
        _ => None,
    };
    if let Some(label) = owner_label {
        revisions(&client, &args.namespace, label, &args.name).await?;
    }
    if matches!(r["kind"].as_str(), Some("PipelineRun" | "TaskRun")) {
        super::runs::describe(&client, &r).await?;
        return Ok(());
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

/// The revisions of a Service or Configuration, newest first, with their instances.
async fn revisions(
    client: &Client,
    namespace: &str,
    label: &str,
    owner: &str,
) -> anyhow::Result<()> {
    let list = client
        .request(
            Method::GET,
            &format!("/api/v1/revisions?namespace={namespace}"),
            None,
        )
        .await?;
    let mut revs: Vec<&Value> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["metadata"]["labels"][label].as_str() == Some(owner))
        .collect();
    let generation = |r: &Value| -> u64 {
        r["metadata"]["labels"]["serving.knative.dev/configurationGeneration"]
            .as_str()
            .and_then(|g| g.parse().ok())
            .unwrap_or(0)
    };
    revs.sort_by_key(|r| std::cmp::Reverse(generation(r)));
    println!("Revisions:");
    let columns = json!(["NAME", "GENERATION", "READY", "INSTANCES", "REASON"]);
    let rows: Vec<Value> = revs
        .iter()
        .map(|r| {
            let ready = r["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"));
            json!([
                r["metadata"]["name"],
                generation(r).to_string(),
                ready
                    .and_then(|c| c["status"].as_str())
                    .unwrap_or("Unknown"),
                format!(
                    "{}/{}",
                    r["status"]["actualReplicas"].as_u64().unwrap_or(0),
                    r["status"]["desiredReplicas"].as_u64().unwrap_or(0)
                ),
                ready.and_then(|c| c["reason"].as_str()).unwrap_or(""),
            ])
        })
        .collect();
    for line in table(&columns, &rows).lines() {
        println!("  {line}");
    }
    Ok(())
}

pub async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.server)?;
    let path = resource_path(&args.namespace, &args.kind, &args.name);
    let answer = client.request(Method::DELETE, &path, None).await?;
    let d = &answer["deleted"];
    println!(
        "{}.{}/{} deleted (namespace {})",
        d["kind"]
            .as_str()
            .unwrap_or(&args.kind)
            .to_ascii_lowercase(),
        d["group"].as_str().unwrap_or(""),
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
        let columns = json!(["NAMESPACE", "NAME", "READY", "URL", "AGE"]);
        let rows = vec![json!([
            "default",
            "default",
            "True",
            "http://127.0.0.1:8080/default/default",
            "5s"
        ])];
        let t = table(&columns, &rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "NAMESPACE   NAME      READY   URL                                     AGE"
        );
        assert_eq!(
            lines[1],
            "default     default   True    http://127.0.0.1:8080/default/default   5s"
        );
    }
}
