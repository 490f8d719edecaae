//! `ferry describe pipelinerun|taskrun`: a run's tasks (status, duration, retries, results),
//! skipped tasks and why, results; a TaskRun's steps with their exit codes.

use super::client::Client;
use reqwest::Method;
use serde_json::Value;

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn succeeded(status: &Value) -> (String, String, String) {
    let c = control::status::find_condition(status, "Succeeded");
    let get = |k: &str| c.and_then(|c| c[k].as_str()).unwrap_or("").to_string();
    match c {
        Some(_) => (get("status"), get("reason"), get("message")),
        None => ("Unknown".into(), String::new(), String::new()),
    }
}

/// `startTime` to `completionTime` (or now), like `12s`.
fn duration(status: &Value) -> String {
    let parse = |k: &str| {
        status[k]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    let Some(start) = parse("startTime") else {
        return String::new();
    };
    let end = parse("completionTime").unwrap_or_else(|| chrono::Utc::now().into());
    let s = (end - start).num_seconds().max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

fn results(list: &Value) -> String {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|r| format!("{}={}", r["name"].as_str().unwrap_or(""), text(&r["value"])))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prints the run part of `ferry describe` for `r` (a PipelineRun or a TaskRun).
pub async fn describe(client: &Client, r: &Value) -> anyhow::Result<()> {
    let status = &r["status"];
    let (s, reason, message) = succeeded(status);
    println!("Succeeded:    {s} {reason} {message}");
    if let Some(start) = status["startTime"].as_str() {
        println!("Started:      {start} (ran {})", duration(status));
    }
    if r["kind"] == "TaskRun" {
        steps(status);
    } else {
        tasks(client, r).await?;
        let skipped: Vec<&Value> = status["skippedTasks"]
            .as_array()
            .into_iter()
            .flatten()
            .collect();
        if !skipped.is_empty() {
            println!("Skipped tasks:");
            for t in skipped {
                println!(
                    "  {:<24} {}",
                    t["name"].as_str().unwrap_or(""),
                    t["reason"].as_str().unwrap_or("")
                );
            }
        }
    }
    let out = results(&status["results"]);
    if !out.is_empty() {
        println!("Results:      {out}");
    }
    Ok(())
}

fn steps(status: &Value) {
    let steps: Vec<&Value> = status["steps"].as_array().into_iter().flatten().collect();
    if steps.is_empty() {
        return;
    }
    println!("Steps:");
    println!("  {:<24} {:<6} {:<16} IMAGE", "NAME", "EXIT", "REASON");
    for s in steps {
        println!(
            "  {:<24} {:<6} {:<16} {}",
            s["name"].as_str().unwrap_or(""),
            text(&s["terminated"]["exitCode"]),
            s["terminated"]["reason"].as_str().unwrap_or(""),
            s["image"].as_str().unwrap_or("")
        );
    }
    let retries = status["retriesStatus"].as_array().map_or(0, Vec::len);
    if retries > 0 {
        println!("Retries:      {retries}");
    }
}

async fn tasks(client: &Client, r: &Value) -> anyhow::Result<()> {
    let ns = r["metadata"]["namespace"].as_str().unwrap_or("default");
    let children: Vec<&Value> = r["status"]["childReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    if children.is_empty() {
        return Ok(());
    }
    println!("Tasks:");
    println!(
        "  {:<20} {:<32} {:<8} {:<24} {:<9} {:<7} RESULTS",
        "NAME", "TASKRUN", "STATUS", "REASON", "DURATION", "RETRIES"
    );
    for c in children {
        let name = c["name"].as_str().unwrap_or("");
        let tr = client
            .request(
                Method::GET,
                &format!("/api/v1/namespaces/{ns}/taskruns/{name}"),
                None,
            )
            .await
            .unwrap_or(Value::Null);
        let st = &tr["status"];
        let (s, reason, _) = succeeded(st);
        println!(
            "  {:<20} {:<32} {:<8} {:<24} {:<9} {:<7} {}",
            c["pipelineTaskName"].as_str().unwrap_or(""),
            name,
            s,
            reason,
            duration(st),
            st["retriesStatus"].as_array().map_or(0, Vec::len),
            results(&st["results"])
        );
    }
    Ok(())
}
