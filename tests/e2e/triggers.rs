//! Triggers end to end: the real binary, real HTTP subscribers.

use super::subscriber::{Behaviour, TestSubscriber};
use super::support::*;
use serde_json::Value;
use std::collections::HashSet;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn trigger(name: &str, broker: &str, subscriber: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: {name}\nspec:\n  broker: {broker}\n  subscriber:\n    uri: {subscriber}\n{extra_spec}"
    )
}

fn apply(server: &Server, yaml: &str) {
    let out = server.cli_stdin(&["apply", "-f", "-"], yaml);
    assert!(
        out.status.success(),
        "apply failed: {}\n{yaml}",
        stderr(&out)
    );
}

fn get_trigger(server: &Server, name: &str) -> Value {
    let out = server.cli(&["get", "trigger", name, "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn ready(t: &Value) -> Option<&Value> {
    t["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
}

/// Waits until the trigger has settled everything (lag 0, committed).
async fn settled(server: &Server, name: &str) {
    eventually(WAIT, &format!("trigger {name} to settle"), || {
        let t = get_trigger(server, name);
        async move { (t["status"]["lag"].as_u64() == Some(0)).then_some(()) }
    })
    .await;
}

/// A trigger's dead letters (`ferry dlq list -o json`).
fn dead_letters(server: &Server, trigger: &str) -> Vec<Value> {
    let out = server.cli(&["dlq", "list", trigger, "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["items"].as_array().unwrap().clone()
}

/// Waits until a trigger has dead letters; returns them.
async fn wait_dead_letters(server: &Server, trigger: &str) -> Vec<Value> {
    eventually(WAIT, &format!("dead letters of {trigger}"), || {
        let items = dead_letters(server, trigger);
        async move { (!items.is_empty()).then_some(items) }
    })
    .await
}

async fn post(server: &Server, id: &str, ty: &str, extra: &[(&str, &str)]) {
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

fn ids(got: &[super::subscriber::Received]) -> HashSet<String> {
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
async fn retries_back_off_then_dead_letter_sink_gets_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let sub = TestSubscriber::start().await;
    sub.set(
        "flaky",
        Behaviour::FailTimes {
            times: 2,
            status: 503,
            retry_after: None,
        },
    );
    sub.set(
        "broken",
        Behaviour::FailWith {
            status: 500,
            body: "database down".into(),
        },
    );
    sub.set(
        "rejects",
        Behaviour::FailWith {
            status: 400,
            body: "bad request".into(),
        },
    );
    let delivery = format!(
        "  delivery:\n    retry: 2\n    backoffPolicy: linear\n    backoffDelay: PT0.3S\n    deadLetterSink:\n      uri: {}\n",
        sub.at("dls")
    );
    apply(
        &server,
        &[
            trigger(
                "flaky",
                "default",
                &sub.at("flaky"),
                &format!("  filters:\n  - exact: {{type: flaky}}\n{delivery}"),
            ),
            trigger(
                "broken",
                "default",
                &sub.at("broken"),
                &format!("  filters:\n  - exact: {{type: broken}}\n{delivery}"),
            ),
            trigger(
                "rejects",
                "default",
                &sub.at("rejects"),
                &format!("  filters:\n  - exact: {{type: rejects}}\n{delivery}"),
            ),
        ]
        .join("---\n"),
    );

    post(&server, "f1", "flaky", &[]).await;
    let got = sub.wait_for("flaky", 3, WAIT).await;
    assert_eq!(got.len(), 3, "two failures, then success");
    // Linear backoff counting from 1: 0.3 s, then 0.6 s (with tolerance for scheduling).
    let gap1 = got[1].at - got[0].at;
    let gap2 = got[2].at - got[1].at;
    assert!(
        gap1 >= Duration::from_millis(280) && gap1 < Duration::from_millis(2500),
        "first wait {gap1:?}"
    );
    assert!(
        gap2 >= Duration::from_millis(580) && gap2 < Duration::from_millis(3000),
        "second wait {gap2:?}"
    );

    // 429 with Retry-After: 1 waits 1 s (capped by retryAfterMax), not the 10 ms backoff.
    sub.set(
        "busy",
        Behaviour::FailTimes {
            times: 1,
            status: 429,
            retry_after: Some(1),
        },
    );
    apply(&server, &trigger("busy", "default", &sub.at("busy"), "  filters:\n  - exact: {type: busy}\n  delivery:\n    retry: 2\n    backoffDelay: PT0.01S\n    retryAfterMax: PT5S\n"));
    post(&server, "ra1", "busy", &[]).await;
    let got = sub.wait_for("busy", 2, WAIT).await;
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(950) && gap < Duration::from_secs(4),
        "Retry-After wait {gap:?}"
    );

    post(&server, "b1", "broken", &[]).await;
    post(&server, "r1", "rejects", &[]).await;
    let dls = sub.wait_for("dls", 2, WAIT).await;
    let broken = dls.iter().find(|r| r.id() == "b1").unwrap();
    assert_eq!(broken.header("ce-knativeerrordest"), Some(sub.at("broken")));
    assert_eq!(broken.header("ce-knativeerrorcode").as_deref(), Some("500"));
    assert_eq!(
        broken.header("ce-knativeerrordata").as_deref(),
        Some("ZGF0YWJhc2UgZG93bg=="),
        "base64 of the body"
    );
    assert_eq!(broken.header("ce-type").as_deref(), Some("broken"));
    assert_eq!(&broken.body[..], b"{\"id\":\"b1\"}");
    assert_eq!(sub.received("broken").len(), 3, "1 attempt + 2 retries");
    let rejected = dls.iter().find(|r| r.id() == "r1").unwrap();
    assert_eq!(
        rejected.header("ce-knativeerrorcode").as_deref(),
        Some("400")
    );
    assert_eq!(sub.received("rejects").len(), 1, "a 400 is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_without_a_sink_are_kept_listed_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"), &[]);
    let sub = TestSubscriber::start().await;
    sub.set(
        "fails",
        Behaviour::FailWith {
            status: 422,
            body: "no thanks".into(),
        },
    );
    sub.set("garbage", Behaviour::Garbage);
    apply(
        &server,
        &[
            trigger(
                "fails",
                "default",
                &sub.at("fails"),
                "  filters:\n  - exact: {type: x}\n  delivery:\n    retry: 1\n",
            ),
            trigger(
                "garbage",
                "default",
                &sub.at("garbage"),
                "  filters:\n  - exact: {type: g}\n",
            ),
        ]
        .join("---\n"),
    );
    post(&server, "x1", "x", &[]).await;
    post(&server, "g1", "g", &[]).await;

    let items = wait_dead_letters(&server, "fails").await;
    assert_eq!(items[0]["event"]["id"], "x1");
    assert_eq!(items[0]["error"]["code"], 422);
    assert_eq!(items[0]["error"]["attempts"], 1, "422 is not retried");
    assert_eq!(items[0]["error"]["destination"], sub.at("fails"));
    let g = wait_dead_letters(&server, "garbage").await;
    assert!(
        g[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a valid CloudEvent"),
        "{}",
        g[0]
    );
    let text = stdout(&server.cli(&["dlq", "list", "fails"]));
    assert!(text.contains("x1") && text.contains("422"), "{text}");

    // Dead letters survive a restart.
    server.kill9();
    let server = Server::start(&dir.path().join("data"), &[]);
    assert_eq!(dead_letters(&server, "fails").len(), 1);

    // The subscriber is fixed: replay delivers it, and the dead letter is gone.
    sub.set("fails", Behaviour::Status(200));
    let out = server.cli(&[
        "dlq",
        "replay",
        "fails",
        "--id",
        items[0]["id"].as_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    eventually(WAIT, "the replayed event", || {
        let ok = sub
            .received("fails")
            .iter()
            .filter(|r| r.id() == "x1")
            .count()
            >= 2;
        async move { ok.then_some(()) }
    })
    .await;
    assert!(dead_letters(&server, "fails").is_empty());
    let out = server.cli(&["dlq", "purge", "garbage"]);
    assert!(stdout(&out).contains("1 dead letter"), "{}", stdout(&out));
    assert!(dead_letters(&server, "garbage").is_empty());
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
async fn a_pending_retry_survives_a_crash_with_its_attempt_count() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &[]);
    let sub = TestSubscriber::start().await;
    sub.set("down", Behaviour::Status(500));
    apply(
        &server,
        &trigger(
            "down",
            "default",
            &sub.at("down"),
            "  delivery:\n    retry: 2\n    backoffPolicy: linear\n    backoffDelay: PT1S\n",
        ),
    );
    post(&server, "d1", "t", &[]).await;
    sub.wait_for("down", 1, WAIT).await;
    // The retry is stored and the event settled (lag 0, committed): now crash.
    settled(&server, "down").await;
    server.kill9();
    let server = Server::start(&data, &[]);
    // The retry goes on where it was: 1 + 2 attempts in all, then the dead-letter store.
    let items = wait_dead_letters(&server, "down").await;
    assert_eq!(items[0]["error"]["attempts"], 3);
    assert_eq!(
        sub.received("down").len(),
        3,
        "the crash neither lost the retry nor restarted its count"
    );
    // Metrics count what happened.
    let metrics = reqwest::get(format!("{}/metrics", server.api))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("ferry_dispatch_dead_letters_total{destination=\"store\",namespace=\"default\",trigger=\"down\"} 1"), "{metrics}");
    assert!(metrics.contains(
        "ferry_dispatch_deliveries_total{class=\"5xx\",namespace=\"default\",trigger=\"down\"}"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_dead_letter_sink_fails_too_ferry_keeps_the_event() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let sub = TestSubscriber::start().await;
    sub.set("down", Behaviour::Status(503));
    sub.set("sink", Behaviour::Status(500));
    let delivery = format!(
        "  delivery:\n    retry: 1\n    backoffDelay: PT0.1S\n    deadLetterSink:\n      uri: {}\n",
        sub.at("sink")
    );
    apply(
        &server,
        &trigger("down", "default", &sub.at("down"), &delivery),
    );
    post(&server, "s1", "t", &[]).await;
    let items = wait_dead_letters(&server, "down").await;
    assert_eq!(sub.received("down").len(), 2, "1 attempt + 1 retry");
    assert_eq!(
        sub.received("sink").len(),
        2,
        "the sink gets the same retry policy"
    );
    let sink_copy = &sub.received("sink")[0];
    assert_eq!(
        sink_copy.header("ce-knativeerrorcode").as_deref(),
        Some("503")
    );
    let message = items[0]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("dead-letter sink") && message.contains("500"),
        "{message}"
    );
    assert_eq!(items[0]["event"]["id"], "s1");
    assert!(
        items[0]["event"].get("knativeerrordest").is_none(),
        "kept as it was sent, for replay"
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
