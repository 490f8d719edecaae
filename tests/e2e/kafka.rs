//! `ferry serve --kafka`: the same binary, CLI and YAML with events kept in a real
//! Kafka-protocol server (tansu, started here).

use super::subscriber::TestSubscriber;
use super::support::*;
use super::tansu::Tansu;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_ferry_on_kafka() {
    let kafka = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &kafka_flags(&kafka.bootstrap));
    let sub = TestSubscriber::start().await;
    let yaml = format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t\nspec:\n  broker: default\n  filters:\n  - exact: {{type: e2e.test}}\n  subscriber:\n    uri: {}\n",
        sub.at("kafka")
    );
    let out = server.cli_stdin(&["apply", "-f", "-"], &yaml);
    assert!(out.status.success(), "{}", stderr(&out));
    for i in 0..20 {
        assert_eq!(
            server
                .post_event("default", "default", &format!("k{i}"))
                .await,
            202
        );
    }
    let got = sub.wait_for("kafka", 20, Duration::from_secs(30)).await;
    let ids: std::collections::HashSet<String> = got.iter().map(|r| r.id()).collect();
    assert_eq!(ids.len(), 20);
    let events = server.events("default", "default");
    assert_eq!(events.len(), 20, "tail reads the Kafka topic");
    assert_eq!(events[0]["source"], "/e2e");
    // Appends to Kafka are measured like the embedded engine's (the 20 events, and the
    // control plane's resource events).
    let metrics = reqwest::get(format!("{}/metrics", server.api))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let appended: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ferry_log_appended_events_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(appended >= 20, "{metrics}");
    assert!(metrics.contains("ferry_log_append_seconds_count"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_and_events_live_in_kafka_not_on_the_node() {
    let kafka = Tansu::start();
    let flags = kafka_flags(&kafka.bootstrap);
    let first = tempfile::tempdir().unwrap();
    let mut node = Server::start(&first.path().join("data"), &flags);
    let out = node.cli_stdin(
        &["apply", "-f", "-"],
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: orders\n  namespace: shop\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(node.post_event("shop", "orders", "o1").await, 202);
    assert_eq!(node.terminate().code(), Some(0));

    // Another node, with an empty data dir of its own, sees the broker and its event.
    let second = tempfile::tempdir().unwrap();
    let node = Server::start(&second.path().join("data"), &flags);
    let out = node.cli(&["get", "brokers", "-A"]);
    let table = stdout(&out);
    assert!(
        table.contains("orders") && table.contains("shop"),
        "{table}"
    );
    let events = node.events("shop", "orders");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["id"], "o1");
}

/// Runs the independent Kafka client (Python confluent-kafka) in tests/e2e/interop.
pub fn peer(args: &[&str]) -> std::process::Output {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/e2e/interop/kafka_peer.py"
    );
    let out = std::process::Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kafka_peer.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_kafka_client_reads_and_writes_ferrys_topics() {
    let kafka = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &kafka_flags(&kafka.bootstrap));
    let resp = binary_post(
        &reqwest::Client::new(),
        &format!("{}/default/default", server.ingress),
        "from-ferry",
        &[("ce-partitionkey", "k-1"), ("ce-ext", "a b")],
        b"{\"n\":1}",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 202);

    // confluent-kafka sees a binary-mode CloudEvent: ce_* headers, content-type, key, value.
    let out = peer(&[
        "read",
        &kafka.bootstrap,
        "knative-broker-default-default",
        "1",
    ]);
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["key"], "k-1");
    assert_eq!(record["value"], "{\"n\":1}");
    assert_eq!(record["headers"]["ce_id"], "from-ferry");
    assert_eq!(record["headers"]["ce_ext"], "a b");
    assert_eq!(record["headers"]["ce_specversion"], "1.0");
    assert_eq!(record["headers"]["content-type"], "application/json");

    // And a record it writes in binary mode is an event of the broker.
    peer(&[
        "write",
        &kafka.bootstrap,
        "knative-broker-default-default",
        "from-python",
    ]);
    let events = server.events("default", "default");
    let python = events
        .iter()
        .find(|e| e["id"] == "from-python")
        .expect("the Python record is an event");
    assert_eq!(python["source"], "/python");
    assert_eq!(python["data"], serde_json::json!({"from": "python"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_sink_writes_what_it_is_given_to_its_topic() {
    let kafka = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    // Embedded mode: the sink writes to a Kafka cluster of its own.
    let server = Server::start(&dir.path().join("data"), &[]);
    let sinks = format!(
        "apiVersion: eventing.knative.dev/v1alpha1\nkind: KafkaSink\nmetadata:\n  name: out\nspec:\n  topic: sink-binary\n  bootstrapServers: [\"{b}\"]\n---\napiVersion: eventing.knative.dev/v1alpha1\nkind: KafkaSink\nmetadata:\n  name: out-json\nspec:\n  topic: sink-structured\n  bootstrapServers: [\"{b}\"]\n  contentMode: structured\n---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: to-sink\nspec:\n  broker: default\n  subscriber:\n    ref:\n      apiVersion: eventing.knative.dev/v1alpha1\n      kind: KafkaSink\n      name: out-json\n",
        b = kafka.bootstrap
    );
    let out = server.cli_stdin(&["apply", "-f", "-"], &sinks);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&server.cli(&["get", "kafkasinks"]));
    assert!(
        table.contains(&format!("{}/kafkasinks/default/out", server.ingress))
            && table.contains("True"),
        "{table}"
    );

    // POSTed to the sink's address: a binary-mode record.
    let resp = binary_post(
        &reqwest::Client::new(),
        &format!("{}/kafkasinks/default/out", server.ingress),
        "s-1",
        &[("ce-partitionkey", "pk")],
        b"{\"to\":\"kafka\"}",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 202);
    let record: serde_json::Value =
        serde_json::from_slice(&peer(&["read", &kafka.bootstrap, "sink-binary", "1"]).stdout)
            .unwrap();
    assert_eq!(record["headers"]["ce_id"], "s-1");
    assert_eq!(record["key"], "pk");
    assert_eq!(record["value"], "{\"to\":\"kafka\"}");
    let resp = binary_post(
        &reqwest::Client::new(),
        &format!("{}/kafkasinks/default/nope", server.ingress),
        "x",
        &[],
        b"{}",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 404);

    // Delivered by a trigger (subscriber ref to the sink): a structured-mode record.
    assert_eq!(
        server.post_event("default", "default", "via-trigger").await,
        202
    );
    let record: serde_json::Value =
        serde_json::from_slice(&peer(&["read", &kafka.bootstrap, "sink-structured", "1"]).stdout)
            .unwrap();
    assert_eq!(
        record["headers"]["content-type"],
        "application/cloudevents+json"
    );
    let event: serde_json::Value = serde_json::from_str(record["value"].as_str().unwrap()).unwrap();
    assert_eq!(event["id"], "via-trigger");
    assert_eq!(event["source"], "/e2e");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_live_in_kafka_too() {
    use super::subscriber::Behaviour;
    let kafka = Tansu::start();
    let flags = kafka_flags(&kafka.bootstrap);
    let sub = TestSubscriber::start().await;
    sub.set("no", Behaviour::Status(422));
    let first = tempfile::tempdir().unwrap();
    let mut node = Server::start(&first.path().join("data"), &flags);
    let yaml = format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t\nspec:\n  broker: default\n  subscriber:\n    uri: {}\n",
        sub.at("no")
    );
    let out = node.cli_stdin(&["apply", "-f", "-"], &yaml);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(node.post_event("default", "default", "dl-1").await, 202);
    let list = |node: &Server| -> Vec<serde_json::Value> {
        let out = node.cli(&["dlq", "list", "t", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["items"].as_array().cloned().unwrap_or_default()
    };
    eventually(Duration::from_secs(30), "the dead letter", || {
        let n = list(&node).len();
        async move { (n == 1).then_some(()) }
    })
    .await;
    assert_eq!(node.terminate().code(), Some(0));

    // A new node with an empty data dir has the dead letter, and can replay it.
    let second = tempfile::tempdir().unwrap();
    let node = Server::start(&second.path().join("data"), &flags);
    let items = list(&node);
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["event"]["id"], "dl-1");
    sub.set("no", Behaviour::Status(200));
    let out = node.cli(&["dlq", "replay", "t", "--all"]);
    assert!(out.status.success(), "{}", stderr(&out));
    eventually(Duration::from_secs(30), "the replayed delivery", || {
        let n = sub
            .received("no")
            .iter()
            .filter(|r| r.id() == "dl-1")
            .count();
        async move { (n >= 2).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_topic_ferry_did_not_create_is_neither_taken_over_nor_deleted() {
    let kafka = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &kafka_flags(&kafka.bootstrap));
    // Someone else's topic, where broker default/theirs would live, with a record in it.
    let theirs = "knative-broker-default-theirs";
    peer(&["create", &kafka.bootstrap, theirs, "2"]);
    peer(&["write", &kafka.bootstrap, theirs, "their-record"]);

    let broker = |name: &str| {
        format!("apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: {name}\n")
    };
    let out = server.cli_stdin(&["apply", "-f", "-"], &broker("theirs"));
    assert!(out.status.success(), "{}", stderr(&out));
    let ready_condition = |name: &str| {
        let out = server.cli(&["get", "broker", name, "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let ready = v["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned());
        (v, ready)
    };
    let refused = eventually(Duration::from_secs(30), "the broker refused", || {
        let (_, ready) = ready_condition("theirs");
        async move { ready.filter(|r| r["reason"] == "TopicNotOwned") }
    })
    .await;
    assert_eq!(refused["status"], "False");
    assert!(
        refused["message"].as_str().unwrap().contains(theirs),
        "{refused}"
    );
    // Nothing is written into it, nor into a topic named like a broker that does not exist.
    assert_eq!(server.post_event("default", "theirs", "refused").await, 404);
    peer(&[
        "create",
        &kafka.bootstrap,
        "knative-broker-default-stray",
        "1",
    ]);
    assert_eq!(server.post_event("default", "stray", "stray").await, 404);

    // Deleting the broker leaves their topic and its record as they were.
    let out = server.cli(&["delete", "broker", "theirs"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let record = peer(&["read", &kafka.bootstrap, theirs, "1"]);
    let record: serde_json::Value = serde_json::from_slice(&record.stdout).unwrap();
    assert_eq!(record["headers"]["ce_id"], "their-record");

    // Asked for explicitly, the broker uses the topic there is.
    let adopting = format!(
        "{}  annotations:\n    ferry.dev/adopt-topic: \"true\"\n",
        broker("theirs")
    );
    let out = server.cli_stdin(&["apply", "-f", "-"], &adopting);
    assert!(out.status.success(), "{}", stderr(&out));
    eventually(
        Duration::from_secs(30),
        "broker theirs adopting the topic",
        || {
            let (_, ready) = ready_condition("theirs");
            async move { ready.filter(|r| r["status"] == "True") }
        },
    )
    .await;
    // Into each of its 2 partitions (the topic's layout, not the 4 a new broker gets).
    for i in 0..4 {
        let id = format!("adopted-{i}");
        assert_eq!(server.post_event("default", "theirs", &id).await, 202);
    }

    // A broker whose topic Ferry makes records it, as Knative's Kafka broker does.
    let out = server.cli_stdin(&["apply", "-f", "-"], &broker("mine"));
    assert!(out.status.success(), "{}", stderr(&out));
    let (mine, _) = eventually(Duration::from_secs(30), "broker mine ready", || {
        let (v, ready) = ready_condition("mine");
        async move { ready.filter(|r| r["status"] == "True").map(|r| (v, r)) }
    })
    .await;
    assert_eq!(
        mine["status"]["annotations"]["default.topic"],
        "knative-broker-default-mine"
    );
}
