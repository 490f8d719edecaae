//! The CLI as a user drives it: the quick start, apply/get/describe/delete, bad YAML.

use super::support::*;
use serde_json::Value;

const BROKERS: &str = r#"
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: orders
  namespace: shop
  labels: {team: checkout}
spec:
  delivery:
    retry: 5
    backoffPolicy: exponential
    backoffDelay: PT0.2S
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: audit
  namespace: shop
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_start_and_resource_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &[]);

    // The default broker exists at once, Ready, with its address.
    let out = server.cli(&["get", "brokers"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAMESPACE")
            && lines[0].contains("READY")
            && lines[0].contains("URL")
            && lines[0].ends_with("AGE")
    );
    assert!(
        lines[1].contains("default")
            && lines[1].contains("True")
            && lines[1].contains(&format!("{}/default/default", server.ingress)),
        "{table}"
    );

    // ferry send, then ferry tail shows it.
    let out = server.cli(&[
        "send",
        "--broker",
        "default",
        "-n",
        "default",
        "--type",
        "demo",
        "--source",
        "/me",
        "--data",
        r#"{"hi":1}"#,
        "--id",
        "cli-1",
        "-e",
        "partitionkey=k1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let events = server.events("default", "default");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["id"], "cli-1");
    assert_eq!(events[0]["type"], "demo");
    assert_eq!(events[0]["source"], "/me");
    assert_eq!(events[0]["partitionkey"], "k1");
    assert_eq!(events[0]["data"], serde_json::json!({"hi": 1}));

    // apply a multi-document file; both brokers appear.
    let file = dir.path().join("brokers.yaml");
    std::fs::write(&file, BROKERS).unwrap();
    let out = server.cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).matches("created").count(),
        2,
        "{}",
        stdout(&out)
    );
    let out = server.cli(&["get", "brokers", "-n", "shop", "-o", "json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["audit", "orders"]);
    let orders = &list["items"][1];
    assert_eq!(orders["spec"]["delivery"]["backoffDelay"], "PT0.2S");
    assert_eq!(orders["metadata"]["labels"]["team"], "checkout");
    assert_eq!(
        orders["status"]["address"]["url"],
        format!("{}/shop/orders", server.ingress)
    );
    let ready = orders["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["status"], "True");

    // -o yaml round-trips into apply (unchanged), and from stdin.
    let out = server.cli(&["get", "brokers", "-n", "shop", "-o", "yaml"]);
    assert!(out.status.success());
    let again = server.cli_stdin(&["apply", "-f", "-"], &stdout(&out));
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(
        stdout(&again).matches("unchanged").count(),
        2,
        "{}",
        stdout(&again)
    );
    // Everything, system broker included, round-trips too.
    let all = server.cli(&["get", "brokers", "-A", "-o", "yaml"]);
    let again = server.cli_stdin(&["apply", "-f", "-"], &stdout(&all));
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        !stdout(&again).contains("created") && !stdout(&again).contains("configured"),
        "{}",
        stdout(&again)
    );
    // -o json of one resource too.
    let out = server.cli(&["get", "broker", "orders", "-n", "shop", "-o", "json"]);
    let again = server.cli_stdin(&["apply", "-f", "-"], &stdout(&out));
    assert!(stdout(&again).contains("unchanged"), "{}", stdout(&again));

    // Events to the new broker are accepted.
    assert_eq!(server.post_event("shop", "orders", "o-1").await, 202);

    let out = server.cli(&["describe", "broker", "orders", "-n", "shop"]);
    let text = stdout(&out);
    assert!(
        text.contains("Name:         orders")
            && text.contains("team=checkout")
            && text.contains("backoffDelay: PT0.2S")
            && text.contains("Ready"),
        "{text}"
    );

    // Resources and events survive a restart.
    assert!(server.terminate().success());
    let server = Server::start(&data, &[]);
    let out = server.cli(&["get", "brokers", "-A"]);
    let table = stdout(&out);
    for name in ["default", "orders", "audit", "resources"] {
        assert!(table.contains(name), "{name} after restart: {table}");
    }
    assert_eq!(server.events("shop", "orders").len(), 1);

    // Delete: the broker and its events are gone; its address answers 404.
    let out = server.cli(&["delete", "broker", "orders", "-n", "shop"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(server.post_event("shop", "orders", "o-2").await, 404);
    let out = server.cli(&["get", "broker", "orders", "-n", "shop"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));

    // Every change was published to the system broker ferry-system/resources.
    let changes = server.events("ferry-system", "resources");
    let kinds: Vec<(String, String)> = changes
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_string(),
                e["subject"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for want in [
        ("dev.ferry.resource.created", "shop/orders"),
        ("dev.ferry.resource.created", "shop/audit"),
        ("dev.ferry.resource.deleted", "shop/orders"),
    ] {
        assert!(
            kinds.contains(&(want.0.to_string(), want.1.to_string())),
            "{want:?} in {kinds:?}"
        );
    }
    let deleted = changes
        .iter()
        .find(|e| e["type"] == "dev.ferry.resource.deleted")
        .unwrap();
    assert_eq!(deleted["data"]["metadata"]["name"], "orders");
    // The system namespace is reserved.
    let out = server.cli(&["delete", "broker", "resources", "-n", "ferry-system"]);
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_yaml_is_reported_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let before = stdout(&server.cli(&["get", "brokers", "-A", "-o", "json"]));

    // A field error in document 2: document 1 of the same file is not applied either.
    let file = dir.path().join("brokers.yaml");
    std::fs::write(
        &file,
        BROKERS
            .replace("backoffDelay: PT0.2S", "backoffDelay: 5s")
            .replace("name: audit", "name: Audit"),
    )
    .unwrap();
    // Swap the documents so the bad one is second.
    let text = std::fs::read_to_string(&file).unwrap();
    let docs: Vec<&str> = text.split("---").collect();
    std::fs::write(&file, format!("{}---{}", docs[1], docs[0])).unwrap();
    let out = server.cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(r#"brokers.yaml: document 2: spec.delivery.backoffDelay: "5s" is not an ISO-8601 duration"#), "{err}");
    assert!(
        err.contains("brokers.yaml: document 1: metadata.name:"),
        "{err}"
    );
    assert!(err.contains("nothing in this file was applied"), "{err}");

    // A YAML syntax error names the file, the document and the line.
    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: x\n",
    )
    .unwrap();
    let out = server.cli(&["apply", "-f", broken.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("broken.yaml: document 1: YAML error") && err.contains("line"),
        "{err}"
    );

    // A directory with one bad file applies nothing at all.
    let d = dir.path().join("dir");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(
        d.join("a.yaml"),
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: fine}\n",
    )
    .unwrap();
    std::fs::write(d.join("b.yaml"), "kind: [\n").unwrap();
    let out = server.cli(&["apply", "-f", d.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("b.yaml"), "{}", stderr(&out));

    assert_eq!(
        stdout(&server.cli(&["get", "brokers", "-A", "-o", "json"])),
        before,
        "nothing changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_follows_new_events_until_interrupted() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let mut tail = std::process::Command::new(BIN)
        .args(["tail", "default", "-n", "default", "-o", "json"])
        .env("FERRY_SERVER", &server.api)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = tail.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    // The tail starts at the end; keep sending until it shows one (it may attach after the first).
    let http = reqwest::Client::new();
    let url = format!("{}/default/default", server.ingress);
    let mut seen = None;
    for i in 0..200 {
        let resp = binary_post(&http, &url, &format!("live-{i}"), &[], b"{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        if let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(100)) {
            seen = Some(line);
            break;
        }
    }
    let line = seen.expect("tail printed a live event");
    let event: Value = serde_json::from_str(&line).unwrap();
    assert!(event["id"].as_str().unwrap().starts_with("live-"));
    // Still following: the next event shows up too.
    let resp = binary_post(&http, &url, "live-last", &[], b"{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("tail keeps printing new events");
        if line.contains("live-last") {
            break;
        }
    }
    tail.kill().unwrap();
    tail.wait().unwrap();
}
