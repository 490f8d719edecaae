//! Triggers end to end: the real binary, real HTTP subscribers.

use super::subscriber::{Behaviour, TestSubscriber};
use super::support::*;
use serde_json::Value;
use std::collections::HashSet;
use std::time::Duration;

pub(super) const WAIT: Duration = Duration::from_secs(30);

pub(super) fn trigger(name: &str, broker: &str, subscriber: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: {name}\nspec:\n  broker: {broker}\n  subscriber:\n    uri: {subscriber}\n{extra_spec}"
    )
}

pub(super) fn apply(server: &Server, yaml: &str) {
    let out = server.cli_stdin(&["apply", "-f", "-"], yaml);
    assert!(
        out.status.success(),
        "apply failed: {}\n{yaml}",
        stderr(&out)
    );
}

pub(super) fn get_trigger(server: &Server, name: &str) -> Value {
    let out = server.cli(&["get", "trigger", name, "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

pub(super) fn ready(t: &Value) -> Option<&Value> {
    t["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
}

/// Waits until the trigger has settled everything (lag 0, committed).
pub(super) async fn settled(server: &Server, name: &str) {
    eventually(WAIT, &format!("trigger {name} to settle"), || {
        let t = get_trigger(server, name);
        async move { (t["status"]["lag"].as_u64() == Some(0)).then_some(()) }
    })
    .await;
}

/// A trigger's dead letters (`ferry dlq list -o json`).
pub(super) fn dead_letters(server: &Server, trigger: &str) -> Vec<Value> {
    let out = server.cli(&["dlq", "list", trigger, "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["items"].as_array().unwrap().clone()
}

/// Waits until a trigger has dead letters; returns them.
pub(super) async fn wait_dead_letters(server: &Server, trigger: &str) -> Vec<Value> {
    eventually(WAIT, &format!("dead letters of {trigger}"), || {
        let items = dead_letters(server, trigger);
        async move { (!items.is_empty()).then_some(items) }
    })
    .await
}

pub(super) async fn post(server: &Server, id: &str, ty: &str, extra: &[(&str, &str)]) {
    let http = reqwest::Client::new();
    let mut req = http
        .post(format!("{}/default/default", server.ingress))
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/e2e")
        .header("ce-type", ty)
        .header("content-type", "application/json")
        .body(format!("{{\"id\":\"{id}\"}}"));
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    assert_eq!(req.send().await.unwrap().status(), 202);
}

pub(super) fn ids(got: &[super::subscriber::Received]) -> HashSet<String> {
    got.iter().map(|r| r.id()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_select_events_and_delivery_is_faithful() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let sub = TestSubscriber::start().await;
    let triggers = [
        trigger("all", "default", &sub.at("all"), ""),
        trigger("attrs", "default", &sub.at("attrs"), "  filter:\n    attributes:\n      type: order.created\n"),
        trigger("exact", "default", &sub.at("exact"), "  filters:\n  - exact:\n      type: order.created\n"),
        trigger("prefix", "default", &sub.at("prefix"), "  filters:\n  - prefix:\n      type: order.\n"),
        trigger("suffix", "default", &sub.at("suffix"), "  filters:\n  - suffix:\n      type: .cancelled\n"),
        trigger("any", "default", &sub.at("any"), "  filters:\n  - any:\n    - exact: {type: order.created}\n    - exact: {type: user.signup}\n"),
        trigger("not", "default", &sub.at("not"), "  filters:\n  - not:\n      prefix: {type: order.}\n"),
        trigger("all-of", "default", &sub.at("all-of"), "  filters:\n  - all:\n    - prefix: {type: order.}\n    - exact: {region: eu}\n"),
        trigger("cesql", "default", &sub.at("cesql"), "  filters:\n  - cesql: \"type LIKE 'order.%' AND INT(amount) > 100\"\n"),
    ];
    apply(&server, &triggers.join("---\n"));
    for t in ["all", "attrs", "cesql"] {
        assert_eq!(
            ready(&get_trigger(&server, t)).unwrap()["status"],
            "True",
            "{t} Ready"
        );
    }

    post(
        &server,
        "e1",
        "order.created",
        &[("ce-region", "eu"), ("ce-amount", "250")],
    )
    .await;
    post(
        &server,
        "e2",
        "order.cancelled",
        &[("ce-region", "us"), ("ce-amount", "50")],
    )
    .await;
    post(&server, "e3", "user.signup", &[]).await;
    for t in [
        "all", "attrs", "exact", "prefix", "suffix", "any", "not", "all-of", "cesql",
    ] {
        settled(&server, t).await;
    }
    let want = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<HashSet<_>>();
    assert_eq!(ids(&sub.received("all")), want(&["e1", "e2", "e3"]));
    assert_eq!(ids(&sub.received("attrs")), want(&["e1"]));
    assert_eq!(ids(&sub.received("exact")), want(&["e1"]));
    assert_eq!(ids(&sub.received("prefix")), want(&["e1", "e2"]));
    assert_eq!(ids(&sub.received("suffix")), want(&["e2"]));
    assert_eq!(ids(&sub.received("any")), want(&["e1", "e3"]));
    assert_eq!(ids(&sub.received("not")), want(&["e3"]));
    assert_eq!(ids(&sub.received("all-of")), want(&["e1"]));
    assert_eq!(ids(&sub.received("cesql")), want(&["e1"]));

    // Binary mode, attributes and data as sent, Prefer: reply.
    let e1 = sub
        .received("all")
        .into_iter()
        .find(|r| r.id() == "e1")
        .unwrap();
    assert_eq!(e1.header("ce-type").as_deref(), Some("order.created"));
    assert_eq!(e1.header("ce-region").as_deref(), Some("eu"));
    assert_eq!(e1.header("ce-source").as_deref(), Some("/e2e"));
    assert_eq!(
        e1.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(e1.header("prefer").as_deref(), Some("reply"));
    assert!(e1.header("ce-knativearrivaltime").is_some());
    assert_eq!(&e1.body[..], b"{\"id\":\"e1\"}");

    // The table shows the triggers with their broker, subscriber, readiness and lag.
    let out = server.cli(&["get", "triggers"]);
    let table = stdout(&out);
    assert!(table.starts_with("NAMESPACE   NAME"), "{table}");
    assert!(table.lines().next().unwrap().split_whitespace().eq([
        "NAMESPACE",
        "NAME",
        "BROKER",
        "SUBSCRIBER",
        "READY",
        "LAG",
        "AGE"
    ]));
    assert!(table.contains(&sub.at("cesql")), "{table}");

    // A bad CESQL expression is rejected with its position; nothing changes.
    let bad = trigger(
        "bad",
        "default",
        &sub.at("bad"),
        "  filters:\n  - cesql: \"type = \"\n",
    );
    let out = server.cli_stdin(&["apply", "-f", "-"], &bad);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("spec.filters[0].cesql") && stderr(&out).contains("column"),
        "{}",
        stderr(&out)
    );

    // Live change: the filter of "exact" now selects user.signup.
    apply(
        &server,
        &trigger(
            "exact",
            "default",
            &sub.at("exact"),
            "  filters:\n  - exact:\n      type: user.signup\n",
        ),
    );
    post(&server, "e4", "order.created", &[]).await;
    post(&server, "e5", "user.signup", &[]).await;
    settled(&server, "exact").await;
    assert_eq!(ids(&sub.received("exact")), want(&["e1", "e5"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_go_back_into_the_broker_for_other_triggers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let sub = TestSubscriber::start().await;
    sub.set(
        "orders",
        Behaviour::Reply {
            ty: "receipt".into(),
        },
    );
    apply(
        &server,
        &[
            trigger(
                "orders",
                "default",
                &sub.at("orders"),
                "  filters:\n  - exact: {type: order}\n",
            ),
            trigger(
                "receipts",
                "default",
                &sub.at("receipts"),
                "  filters:\n  - exact: {type: receipt}\n",
            ),
        ]
        .join("---\n"),
    );
    post(&server, "o1", "order", &[]).await;
    let got = sub.wait_for("receipts", 1, WAIT).await;
    assert_eq!(got[0].header("ce-type").as_deref(), Some("receipt"));
    assert_eq!(
        got[0].header("ce-source").as_deref(),
        Some("/test-subscriber")
    );
    assert_eq!(&got[0].body[..], b"{\"reply\":true}");
    assert!(
        got[0].header("ce-knativebrokerttl").is_none(),
        "the loop guard is not shown to subscribers"
    );
    // The reply is in the broker's log, one step along the loop guard.
    let events = server.events("default", "default");
    let reply = events.iter().find(|e| e["type"] == "receipt").unwrap();
    assert_eq!(reply["knativebrokerttl"], "254");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_waits_for_its_broker() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let sub = TestSubscriber::start().await;
    apply(&server, &trigger("early", "later", &sub.at("early"), ""));
    let t = get_trigger(&server, "early");
    let r = ready(&t).unwrap();
    assert_eq!(r["status"], "False");
    assert!(r["message"].as_str().unwrap().contains("later"), "{r}");
    let broker_ready = t["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "BrokerReady")
        .unwrap();
    assert_eq!(broker_ready["reason"], "BrokerDoesNotExist");

    apply(
        &server,
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: later\n",
    );
    let t = get_trigger(&server, "early");
    assert_eq!(ready(&t).unwrap()["status"], "True", "{t}");
    let resp = binary_post(
        &reqwest::Client::new(),
        &format!("{}/default/later", server.ingress),
        "l1",
        &[],
        b"{}",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 202);
    let got = sub.wait_for("early", 1, WAIT).await;
    assert_eq!(got[0].id(), "l1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_does_not_slow_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let sub = TestSubscriber::start().await;
    sub.set("slow", Behaviour::Delay(Duration::from_secs(3)));
    apply(
        &server,
        &[
            trigger("slow", "default", &sub.at("slow"), ""),
            trigger("fast", "default", &sub.at("fast"), ""),
        ]
        .join("---\n"),
    );
    for i in 0..100 {
        post(&server, &format!("s{i}"), "t", &[]).await;
    }
    let got = sub.wait_for("fast", 100, WAIT).await;
    assert_eq!(ids(&got).len(), 100);
    // The slow subscriber holds at most its trigger's in-flight limit at once.
    assert!(
        sub.received("slow").len() <= 50,
        "{} in flight at the slow subscriber",
        sub.received("slow").len()
    );
    let first_slow = sub.wait_for("slow", 1, WAIT).await[0].at;
    let last_fast = got.iter().map(|r| r.at).max().unwrap();
    assert!(
        last_fast < first_slow + Duration::from_secs(3),
        "the fast trigger finished before the slow subscriber answered once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_delivery_keeps_partition_order_through_retries() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let sub = TestSubscriber::start().await;
    sub.set(
        "ordered",
        Behaviour::FailTimes {
            times: 2,
            status: 503,
            retry_after: None,
        },
    );
    let yaml = format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: ordered\n  annotations:\n    kafka.eventing.knative.dev/delivery.order: ordered\nspec:\n  broker: default\n  subscriber:\n    uri: {}\n  delivery:\n    retry: 3\n    backoffPolicy: linear\n    backoffDelay: PT0.1S\n",
        sub.at("ordered")
    );
    apply(&server, &yaml);
    for i in 0..5 {
        post(
            &server,
            &format!("o{i}"),
            "t",
            &[("ce-partitionkey", "same")],
        )
        .await;
    }
    let got = sub.wait_for("ordered", 7, WAIT).await;
    let seq: Vec<String> = got.iter().map(|r| r.id()).collect();
    assert_eq!(
        seq,
        ["o0", "o0", "o0", "o1", "o2", "o3", "o4"],
        "o0 is retried before o1 starts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_without_delivery_uses_its_brokers_and_json_format_is_structured() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let sub = TestSubscriber::start().await;
    sub.set("fails", Behaviour::Status(500));
    apply(
        &server,
        &format!(
            "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: b\nspec:\n  delivery:\n    retry: 0\n    deadLetterSink:\n      uri: {}\n",
            sub.at("broker-dls")
        ),
    );
    apply(
        &server,
        &[
            trigger("inherits", "b", &sub.at("fails"), ""),
            // Its own delivery replaces the broker's whole: no sink, so Ferry keeps the event.
            trigger("own", "b", &sub.at("fails"), "  delivery:\n    retry: 0\n"),
            trigger(
                "json",
                "b",
                &sub.at("json"),
                "  delivery:\n    format: json\n",
            ),
        ]
        .join("---\n"),
    );
    let t = get_trigger(&server, "inherits");
    assert_eq!(t["status"]["deadLetterSinkUri"], sub.at("broker-dls"));
    let resp = binary_post(
        &reqwest::Client::new(),
        &format!("{}/default/b", server.ingress),
        "j1",
        &[("ce-ext", "v")],
        b"{\"a\":1}",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 202);
    let dls = sub.wait_for("broker-dls", 1, WAIT).await;
    assert_eq!(
        dls.len(),
        1,
        "only the trigger without its own delivery used the broker's sink"
    );
    assert_eq!(dls[0].id(), "j1");
    assert_eq!(wait_dead_letters(&server, "own").await.len(), 1);
    let json = sub.wait_for("json", 1, WAIT).await;
    assert_eq!(
        json[0].header("content-type").as_deref(),
        Some("application/cloudevents+json")
    );
    let body: Value = serde_json::from_slice(&json[0].body).unwrap();
    assert_eq!(body["id"], "j1");
    assert_eq!(body["ext"], "v");
    assert_eq!(body["data"], serde_json::json!({"a": 1}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_ref_to_a_broker_resolves_when_it_appears() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let sub = TestSubscriber::start().await;
    apply(
        &server,
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: forward\nspec:\n  broker: default\n  subscriber:\n    ref:\n      apiVersion: eventing.knative.dev/v1\n      kind: Broker\n      name: second\n",
    );
    let t = get_trigger(&server, "forward");
    let resolved = t["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "SubscriberResolved")
        .unwrap();
    assert_eq!(resolved["status"], "False", "{t}");
    assert!(
        resolved["message"].as_str().unwrap().contains("second"),
        "{resolved}"
    );

    apply(
        &server,
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: second\n",
    );
    let t = get_trigger(&server, "forward");
    assert_eq!(ready(&t).unwrap()["status"], "True", "{t}");
    assert_eq!(
        t["status"]["subscriberUri"],
        format!("{}/default/second", server.ingress)
    );
    apply(
        &server,
        &trigger("on-second", "second", &sub.at("via-second"), ""),
    );
    assert_eq!(server.post_event("default", "default", "fwd-1").await, 202);
    let got = sub.wait_for("via-second", 1, WAIT).await;
    assert_eq!(
        got[0].id(),
        "fwd-1",
        "delivered into the second broker, then to its trigger"
    );

    let text = stdout(&server.cli(&["describe", "trigger", "forward"]));
    assert!(
        text.contains(&format!("Subscriber:   {}/default/second", server.ingress)),
        "{text}"
    );
    assert!(text.contains("SubscriberResolved"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_triggers_gauges_leave_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let sub = TestSubscriber::start().await;
    apply(
        &server,
        &trigger("short-lived", "default", &sub.at("x"), ""),
    );
    let line = "ferry_dispatch_lag{namespace=\"default\",trigger=\"short-lived\"}";
    let metrics = || async {
        reqwest::get(format!("{}/metrics", server.api))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    eventually(WAIT, "the trigger's lag gauge", || async {
        metrics().await.contains(line).then_some(())
    })
    .await;
    let out = server.cli(&["delete", "trigger", "short-lived"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = metrics().await;
    assert!(!text.contains(line), "{text}");
}
