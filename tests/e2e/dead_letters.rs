//! Retries and dead letters end to end: backoff timing, Retry-After, the dead-letter sink and
//! its extensions, Ferry's dead-letter store, replay, and retries that survive a crash.

use super::subscriber::{Behaviour, TestSubscriber};
use super::support::*;
use super::triggers::{apply, dead_letters, post, settled, trigger, wait_dead_letters, WAIT};
use std::time::Duration;

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
