//! KafkaSource: the records another Kafka client (Python confluent-kafka) writes to any
//! topic, delivered as CloudEvents to a URI or into a broker, in embedded and in Kafka mode.

use super::kafka::peer;
use super::subscriber::{Behaviour, TestSubscriber};
use super::support::*;
use super::tansu::Tansu;
use std::collections::HashSet;
use std::time::Duration;

fn ready(node: &Server, name: &str) -> bool {
    let out = node.cli(&["get", "kafkasource", name, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

async fn a_kafka_source_delivers_any_topics_records(kafka_mode: bool) {
    let kafka = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let flags: Vec<&str> = if kafka_mode {
        kafka_flags(&kafka.bootstrap)
    } else {
        Vec::new()
    };
    let server = Server::start(&dir.path().join("data"), &flags);
    let sub = TestSubscriber::start().await;
    // The first attempt fails: the source's delivery retries it, in order.
    sub.set(
        "direct",
        Behaviour::FailTimes {
            times: 1,
            status: 503,
            retry_after: None,
        },
    );
    sub.set("reject", Behaviour::Status(422));
    peer(&["create", &kafka.bootstrap, "orders", "2"]);
    peer(&["records", &kafka.bootstrap, "orders", "before"]);

    // The trigger first: a trigger gets what its broker receives after it is Ready, and the
    // `earliest` source starts delivering into the broker as soon as it is applied.
    let yaml = format!(
        r#"apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: replayed
spec:
  broker: default
  filters:
  - exact: {{via: replay}}
  subscriber:
    uri: {replayed}
---
apiVersion: sources.knative.dev/v1beta1
kind: KafkaSource
metadata:
  name: from-orders
spec:
  bootstrapServers: ["{b}"]
  topics: [orders]
  delivery:
    retry: 3
    backoffDelay: PT0.05S
  sink:
    uri: {direct}
---
apiVersion: sources.knative.dev/v1beta1
kind: KafkaSource
metadata:
  name: replay
spec:
  bootstrapServers: ["{b}"]
  topics: [orders]
  initialOffset: earliest
  consumerGroup: replay-group
  ordering: unordered
  ceOverrides:
    extensions: {{via: replay}}
  sink:
    ref:
      apiVersion: eventing.knative.dev/v1
      kind: Broker
      name: default
---
apiVersion: sources.knative.dev/v1beta1
kind: KafkaSource
metadata:
  name: rejected
spec:
  bootstrapServers: ["{b}"]
  topics: [orders]
  initialOffset: earliest
  sink:
    uri: {reject}
"#,
        b = kafka.bootstrap,
        direct = sub.at("direct"),
        replayed = sub.at("replayed"),
        reject = sub.at("reject"),
    );
    let out = server.cli_stdin(&["apply", "-f", "-"], &yaml);
    assert!(out.status.success(), "{}", stderr(&out));
    eventually(Duration::from_secs(30), "both sources Ready", || {
        let r = ready(&server, "from-orders") && ready(&server, "replay");
        async move { r.then_some(()) }
    })
    .await;
    let table = stdout(&server.cli(&["get", "kafkasources"]));
    assert!(
        table.contains("from-orders") && table.contains(&sub.at("direct")),
        "{table}"
    );

    peer(&["records", &kafka.bootstrap, "orders", "after"]);

    // initialOffset latest (the default): only what came after the source was Ready, in
    // partition order, the failed first attempt retried before the next record.
    let got = sub.wait_for("direct", 4, Duration::from_secs(60)).await;
    let ids: Vec<String> = got.iter().map(|r| r.id()).collect();
    assert_eq!(
        ids,
        [
            "partition:0/offset:3",
            "partition:0/offset:3",
            "bin-after",
            "json-after"
        ],
        "{got:?}"
    );
    let plain = &got[1];
    let h = |name: &str| plain.header(name).unwrap_or_default();
    assert_eq!(h("ce-type"), "dev.knative.kafka.event");
    assert_eq!(
        h("ce-source"),
        "/apis/v1/namespaces/default/kafkasources/from-orders#orders"
    );
    assert_eq!(h("ce-subject"), "partition:0#3");
    assert_eq!(h("ce-key"), "key-after");
    assert_eq!(h("ce-partitionkey"), "key-after");
    assert_eq!(h("ce-kafkaheaderxtraceid"), "after");
    assert!(!h("ce-time").is_empty());
    assert_eq!(h("content-type"), "application/json");
    assert_eq!(&plain.body[..], b"{\"plain\":true}");
    // CloudEvents pass through as they were written, binary and structured.
    assert_eq!(got[2].header("ce-type").unwrap(), "interop.binary");
    assert_eq!(got[2].header("ce-source").unwrap(), "/python");
    assert_eq!(&got[2].body[..], b"binary");
    assert_eq!(got[3].header("ce-type").unwrap(), "interop.structured");
    let data: serde_json::Value = serde_json::from_slice(&got[3].body).unwrap();
    assert_eq!(data, serde_json::json!({"structured": true}));

    // initialOffset earliest, into a broker: every record, the override on each.
    let got = sub.wait_for("replayed", 6, Duration::from_secs(60)).await;
    let ids: HashSet<String> = got.iter().map(|r| r.id()).collect();
    let want: HashSet<String> = [
        "partition:0/offset:0",
        "bin-before",
        "json-before",
        "partition:0/offset:3",
        "bin-after",
        "json-after",
    ]
    .map(String::from)
    .into();
    assert_eq!(ids, want);
    assert!(got
        .iter()
        .all(|r| r.header("ce-via").as_deref() == Some("replay")));

    // Refused by its sink, with no dead-letter sink: Ferry keeps the records as dead letters,
    // listed and replayed like a trigger's.
    let list = || {
        let out = server.cli(&["dlq", "list", "kafkasource/rejected", "-o", "json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["items"].as_array().cloned().unwrap_or_default()
    };
    eventually(Duration::from_secs(60), "six dead letters", || {
        let n = list().len();
        async move { (n == 6).then_some(()) }
    })
    .await;
    sub.set("reject", Behaviour::Status(200));
    let out = server.cli(&["dlq", "replay", "kafkasource/rejected", "--all"]);
    assert!(out.status.success(), "{}", stderr(&out));
    eventually(Duration::from_secs(60), "the replayed records", || {
        let ok = sub.received("reject").len() >= 12 && list().is_empty();
        async move { ok.then_some(()) }
    })
    .await;

    // Deleted: the source stops; its topic is the user's and stays.
    let out = server.cli(&["delete", "kafkasource", "from-orders"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = server.cli(&["get", "kafkasource", "from-orders"]);
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_source_in_embedded_mode() {
    a_kafka_source_delivers_any_topics_records(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_source_in_kafka_mode() {
    a_kafka_source_delivers_any_topics_records(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_kafka_source_is_refused_with_its_fields() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let out = server.cli_stdin(
        &["apply", "-f", "-"],
        "apiVersion: sources.knative.dev/v1beta1\nkind: KafkaSource\nmetadata:\n  name: bad\n  labels:\n    kafkasources.sources.knative.dev/key-type: uuid\nspec:\n  bootstrapServers: []\n  initialOffset: newest\n  sink: {}\n",
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    for field in [
        "spec.bootstrapServers",
        "spec.topics",
        "spec.initialOffset",
        "spec.sink",
        "metadata.labels.kafkasources.sources.knative.dev/key-type",
    ] {
        assert!(err.contains(field), "{field} not named in: {err}");
    }
    assert!(!server.cli(&["get", "kafkasource", "bad"]).status.success());
}
