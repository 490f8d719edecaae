//! The foundation as a user meets it: PingSource (a kind added through the registry), the
//! registry-driven CLI (`api-resources`, `get` of any kind), and subscribing to Ferry's own
//! events with a Trigger in `ferry-system`.

use super::subscriber::TestSubscriber;
use super::support::*;
use super::triggers::{apply, WAIT};
use serde_json::Value;

fn ready(r: &Value) -> Option<&str> {
    r["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?["status"]
        .as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_source_sends_its_event_on_schedule_until_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let sub = TestSubscriber::start().await;
    let out = server.cli_stdin(
        &["apply", "-f", "-"],
        &format!(
            r#"apiVersion: sources.knative.dev/v1
kind: PingSource
metadata:
  name: heartbeat
  namespace: default
spec:
  schedule: "@every 2s"
  contentType: application/json
  data: '{{"message": "hello"}}'
  ceOverrides:
    extensions: {{team: ops}}
  sink:
    uri: {}
"#,
            sub.at("pings")
        ),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("pingsource.sources.knative.dev/heartbeat created"),
        "{}",
        stdout(&out)
    );
    let got = sub.wait_for("pings", 2, WAIT).await;
    let first = &got[0];
    assert_eq!(
        first.header("ce-type").as_deref(),
        Some("dev.knative.sources.ping")
    );
    assert_eq!(
        first.header("ce-source").as_deref(),
        Some("/apis/v1/namespaces/default/pingsources/heartbeat")
    );
    assert_eq!(first.header("ce-team").as_deref(), Some("ops"));
    assert_eq!(
        first.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(&first.body[..], br#"{"message": "hello"}"#);
    assert_ne!(first.id(), got[1].id(), "each tick is its own event");
    // The ticks are the schedule's: two seconds apart (the time attribute is the tick's).
    let t = |r: &super::subscriber::Received| {
        chrono::DateTime::parse_from_rfc3339(&r.header("ce-time").unwrap()).unwrap()
    };
    let gap = (t(&got[1]) - t(&got[0])).num_milliseconds();
    assert!((1900..=2100).contains(&gap), "{gap} ms between ticks");

    // Shown like any kind, Ready, with its sink; its delivering trigger in ferry-system.
    let source = get_json(&server, &["get", "pingsource", "heartbeat"]);
    assert_eq!(ready(&source), Some("True"), "{source}");
    assert_eq!(source["status"]["sinkUri"], sub.at("pings"));
    let out = server.cli(&["get", "pingsources"]);
    let table = stdout(&out);
    assert!(
        table.starts_with("NAMESPACE") && table.contains("SCHEDULE"),
        "{table}"
    );
    assert!(
        table.contains("heartbeat") && table.contains("@every 2s"),
        "{table}"
    );
    let system = get_json(&server, &["get", "triggers", "-n", "ferry-system"]);
    let trigger = system["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["metadata"]["labels"]["sources.knative.dev/pingsource"] == "default.heartbeat")
        .cloned()
        .unwrap_or_else(|| panic!("no system trigger for the source: {system}"));
    assert_eq!(ready(&trigger), Some("True"));
    let trigger_name = trigger["metadata"]["name"].as_str().unwrap().to_string();
    assert!(
        trigger_name.starts_with("pingsource-default-heartbeat-"),
        "{trigger_name}"
    );
    // Users cannot change it, nor take the names kept for such triggers.
    let out = server.cli(&["delete", "trigger", &trigger_name, "-n", "ferry-system"]);
    assert!(!out.status.success());
    let out = server.cli_stdin(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: pingsource-mine\n  namespace: ferry-system\nspec:\n  broker: pingsources\n  subscriber:\n    uri: {}\n",
            sub.at("x")
        ),
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("metadata.name"), "{}", stderr(&out));

    // Deleting the source stops its ticks and removes its trigger.
    let out = server.cli(&["delete", "pingsource", "heartbeat"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("pingsource.sources.knative.dev/heartbeat deleted"),
        "{}",
        stdout(&out)
    );
    let out = server.cli(&["get", "trigger", &trigger_name, "-n", "ferry-system"]);
    assert!(!out.status.success(), "the source's trigger is gone");
    let before = sub.received("pings").len();
    // A second source, as a clock: three of its ticks (2 s apart) span three of the deleted
    // one's, none of which may come.
    apply(
        &server,
        &format!(
            "apiVersion: sources.knative.dev/v1\nkind: PingSource\nmetadata:\n  name: clock\nspec:\n  schedule: '@every 2s'\n  sink:\n    uri: {}\n",
            sub.at("clock")
        ),
    );
    sub.wait_for("clock", 3, WAIT).await;
    assert!(
        sub.received("pings").len() <= before + 1,
        "ticks went on after the delete"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ping_sources_are_refused_with_their_fields() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let bad = r#"apiVersion: sources.knative.dev/v1
kind: PingSource
metadata: {name: bad}
spec:
  schedule: "* * *"
  timezone: Mars/Olympus
  data: x
  dataBase64: eA==
  sink: {uri: "http://127.0.0.1:9/x"}
"#;
    // An unknown field is named with its path.
    let out = server.cli_stdin(&["apply", "-f", "-"], &format!("{bad}  extra: 1\n"));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("spec.extra"), "{err}");
    // Every other problem at once.
    let out = server.cli_stdin(&["apply", "-f", "-"], bad);
    assert!(!out.status.success());
    let err = stderr(&out);
    for field in ["spec.schedule", "spec.timezone", "spec.data"] {
        assert!(err.contains(field), "{field} not named: {err}");
    }
    let out = server.cli(&["get", "pingsources"]);
    assert!(stdout(&out).is_empty(), "nothing applied from a bad file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_trigger_in_ferry_system_gets_resource_changes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let sub = TestSubscriber::start().await;

    // Every kind the server serves, as kubectl lists them.
    let out = server.cli(&["api-resources"]);
    let table = stdout(&out);
    assert!(table.starts_with("NAME"), "{table}");
    for line in [
        "brokers",
        "triggers",
        "kafkasinks",
        "kafkasources",
        "pingsources",
    ] {
        assert!(
            table.lines().any(|l| l.starts_with(line)),
            "{line}: {table}"
        );
    }
    assert!(table.contains("sources.knative.dev/v1 "), "{table}");

    apply(
        &server,
        &format!(
            "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: watch-brokers\n  namespace: ferry-system\nspec:\n  broker: resources\n  filters:\n  - exact: {{resourcekind: broker}}\n  subscriber:\n    uri: {}\n",
            sub.at("changes")
        ),
    );
    apply(
        &server,
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: watched\n  namespace: team\n",
    );
    let got = eventually(WAIT, "the broker's creation", || {
        let got = sub.received("changes");
        async move {
            got.iter()
                .any(|r| {
                    r.header("ce-type").as_deref() == Some("dev.ferry.resource.created")
                        && r.header("ce-subject").as_deref() == Some("team/watched")
                })
                .then_some(got)
        }
    })
    .await;
    assert!(got
        .iter()
        .all(|r| r.header("ce-resourcekind").as_deref() == Some("broker")));

    // Users cannot make brokers in ferry-system, nor change or delete Ferry's own.
    let out = server.cli_stdin(
        &["apply", "-f", "-"],
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: mine\n  namespace: ferry-system\n",
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("reserved"), "{}", stderr(&out));
    let out = server.cli(&["delete", "broker", "resources", "-n", "ferry-system"]);
    assert!(!out.status.success());
    // Their own trigger there they may delete.
    let out = server.cli(&["delete", "trigger", "watch-brokers", "-n", "ferry-system"]);
    assert!(out.status.success(), "{}", stderr(&out));
}
