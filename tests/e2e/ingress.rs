//! The ingress as producers meet it: every mode, every bad input, nothing lost or changed.

use super::support::*;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_events_come_back_identical() {
    let dir = tmp();
    let server = Server::start(&dir.path().join("data"), &[]);
    let url = format!("{}/default/default", server.ingress);
    let http = reqwest::Client::new();

    // Binary mode, with an extension, a percent-encoded value and a JSON body.
    let resp = binary_post(
        &http,
        &url,
        "b-1",
        &[
            ("ce-myext", "hello%20world"),
            ("ce-time", "2020-01-01T10:00:00+02:00"),
        ],
        br#"{"hi": 1}"#,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 202);

    // Structured mode, with typed extensions and base64 data.
    let structured = r#"{"specversion":"1.0","id":"s-1","source":"/e2e","type":"e2e.test","count":3,"flag":false,"datacontenttype":"application/octet-stream","data_base64":"AAEC/w=="}"#;
    let resp = http
        .post(&url)
        .header("content-type", "application/cloudevents+json")
        .body(structured)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);

    // An event produced by the official CloudEvents SDK (an independent encoder).
    use cloudevents::binding::reqwest::RequestBuilderExt;
    use cloudevents::{EventBuilder, EventBuilderV10};
    let sdk_event = EventBuilderV10::new()
        .id("sdk-1")
        .source("http://example.com/sdk")
        .ty("sdk.test")
        .subject("sub")
        .extension("sdkext", "v")
        .data("application/json", serde_json::json!({"from": "sdk"}))
        .build()
        .unwrap();
    let resp = http
        .post(&url)
        .event(sdk_event)
        .unwrap()
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);

    let events = server.events("default", "default");
    let by_id = |id: &str| {
        events
            .iter()
            .find(|e| e["id"] == id)
            .unwrap_or_else(|| panic!("{id} missing in {events:?}"))
            .clone()
    };
    let b = by_id("b-1");
    assert_eq!(b["myext"], "hello world");
    assert_eq!(
        b["time"], "2020-01-01T10:00:00+02:00",
        "time is kept as sent, not normalised"
    );
    assert_eq!(b["data"], serde_json::json!({"hi": 1}));
    assert_eq!(b["datacontenttype"], "application/json");
    assert!(
        b["knativearrivaltime"].as_str().is_some(),
        "the ingress stamps arrival time"
    );
    let s = by_id("s-1");
    assert_eq!(s["count"], 3);
    assert_eq!(s["flag"], false);
    assert_eq!(s["data_base64"], "AAEC/w==");
    let k = by_id("sdk-1");
    assert_eq!(k["source"], "http://example.com/sdk");
    assert_eq!(k["subject"], "sub");
    assert_eq!(k["sdkext"], "v");
    assert_eq!(k["data"], serde_json::json!({"from": "sdk"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_status_and_changes_nothing() {
    let dir = tmp();
    let server = Server::start(&dir.path().join("data"), &["--max-event-size", "2048"]);
    let url = format!("{}/default/default", server.ingress);
    let http = reqwest::Client::new();
    assert_eq!(
        binary_post(&http, &url, "good-1", &[], b"{}")
            .send()
            .await
            .unwrap()
            .status(),
        202
    );

    // Every missing required attribute, named in the answer.
    for missing in ["specversion", "id", "source", "type"] {
        let mut req = http
            .post(&url)
            .header("content-type", "application/json")
            .body("{}");
        for (h, v) in [
            ("ce-specversion", "1.0"),
            ("ce-id", "x"),
            ("ce-source", "/s"),
            ("ce-type", "t"),
        ] {
            if h != format!("ce-{missing}") {
                req = req.header(h, v);
            }
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 400, "without {missing}");
        let msg = resp.text().await.unwrap();
        assert!(msg.contains(missing), "message {msg:?} names {missing}");
    }

    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        ("bad specversion", binary_post(&http, &url, "x", &[], b"{}").header("ce-specversion", "0.2"), 400, "specversion"),
        ("malformed JSON", http.post(&url).header("content-type", "application/cloudevents+json").body("{\"id\": "), 400, "JSON"),
        ("invalid percent-encoding", binary_post(&http, &url, "x", &[("ce-ext", "%C0%A0")], b"{}"), 400, "ext"),
        ("invalid percent escape", binary_post(&http, &url, "x", &[("ce-ext", "50%")], b"{}"), 400, "percent"),
        ("oversized body", binary_post(&http, &url, "x", &[], &[b'a'; 4096]), 413, "2048"),
        ("bad time", binary_post(&http, &url, "x", &[("ce-time", "noon")], b"{}"), 400, "time"),
        ("batch with one bad event", http.post(&url).header("content-type", "application/cloudevents-batch+json")
            .body(r#"[{"specversion":"1.0","id":"b1","source":"/s","type":"t"},{"specversion":"1.0","id":"b2","source":"/s"}]"#), 400, "event 1"),
        ("unknown broker", binary_post(&http, &format!("{}/default/nope", server.ingress), "x", &[], b"{}"), 404, "nope"),
        ("no broker path", binary_post(&http, &format!("{}/just-one-segment", server.ingress), "x", &[], b"{}"), 404, "namespace"),
        ("GET", http.get(&url), 405, "POST"),
        ("system broker", binary_post(&http, &format!("{}/ferry-system/resources", server.ingress), "x", &[], b"{}"), 403, "ferry-system"),
        ("PUT", http.put(&url).body("{}"), 405, "POST"),
    ];
    for (what, req, status, needle) in cases {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{what}");
        if status == 405 {
            assert_eq!(resp.headers()["allow"], "POST, OPTIONS", "{what}");
        }
        let msg = resp.text().await.unwrap();
        assert!(
            msg.contains(needle),
            "{what}: {msg:?} should mention {needle:?}"
        );
    }

    let resp = http
        .request(reqwest::Method::OPTIONS, &url)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["allow"], "POST, OPTIONS");
    assert_eq!(resp.headers()["webhook-allowed-origin"], "*");

    let events = server.events("default", "default");
    let ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["good-1"], "rejected requests stored nothing");

    // A good batch is stored whole.
    let resp = http.post(&url).header("content-type", "application/cloudevents-batch+json")
        .body(r#"[{"specversion":"1.0","id":"b1","source":"/s","type":"t"},{"specversion":"1.0","id":"b2","source":"/s","type":"t","data":{"n":2}}]"#)
        .send().await.unwrap();
    assert_eq!(resp.status(), 202);
    let events = server.events("default", "default");
    let mut ids: Vec<String> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["b1", "b2", "good-1"]);

    // The metrics count what happened, by broker and status.
    let metrics = http
        .get(format!("{}/metrics", server.api))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = |needle: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with("ferry_ingress_events_total") && l.contains(needle))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
    };
    assert_eq!(line("broker=\"default\",code=\"202\""), Some(3.0));
    assert!(line("code=\"400\"").unwrap() >= 9.0);
    assert!(metrics.contains("ferry_log_fsyncs_total"));
}
