//! Trace context end to end: W3C `traceparent`/`tracestate` kept on events, sent to subscribers,
//! inherited by replies; with `--otlp-endpoint`, Ferry's spans at a real OTLP/HTTP collector.

use super::subscriber::{Behaviour, Received, TestSubscriber};
use super::support::*;
use super::triggers::{apply, post, trigger, wait_dead_letters, WAIT};
use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message as _;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PRODUCER_SPAN: &str = "00f067aa0ba902b7";

fn traceparent(trace: &str, span: &str) -> String {
    format!("00-{trace}-{span}-01")
}

/// The trace and span ids of a `traceparent`.
fn ids(traceparent: &str) -> (String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "a W3C traceparent: {traceparent}");
    (parts[1].to_string(), parts[2].to_string())
}

fn header(r: &Received, name: &str) -> String {
    r.header(name)
        .unwrap_or_else(|| panic!("no {name} header in {:?}", r.headers))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_is_kept_on_events_and_goes_to_subscribers_and_replies() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let sub = TestSubscriber::start().await;
    sub.set(
        "answers",
        Behaviour::Reply {
            ty: "traced.reply".into(),
        },
    );
    apply(
        &server,
        &[
            trigger(
                "answers",
                "default",
                &sub.at("answers"),
                "  filters:\n  - exact: {type: traced.event}\n",
            ),
            trigger(
                "replies",
                "default",
                &sub.at("replies"),
                "  filters:\n  - exact: {type: traced.reply}\n",
            ),
        ]
        .join("---\n"),
    );

    // The producer's context arrives in the W3C headers; the event has none of its own.
    let producer = traceparent(TRACE, PRODUCER_SPAN);
    post(
        &server,
        "t1",
        "traced.event",
        &[("traceparent", &producer), ("tracestate", "vendor=x")],
    )
    .await;
    let got = sub.wait_for("answers", 1, WAIT).await;
    // Kept on the event (its extension) and, with no span exporter, the hop's context too.
    assert_eq!(header(&got[0], "ce-traceparent"), producer);
    assert_eq!(header(&got[0], "ce-tracestate"), "vendor=x");
    assert_eq!(header(&got[0], "traceparent"), producer);
    assert_eq!(header(&got[0], "tracestate"), "vendor=x");
    let stored = server.events("default", "default");
    let t1 = stored.iter().find(|e| e["id"] == "t1").unwrap();
    assert_eq!(t1["traceparent"], producer.as_str());

    // The reply (which set no context) goes on in the trace of the event it answers.
    let replies = sub.wait_for("replies", 1, WAIT).await;
    assert_eq!(header(&replies[0], "ce-traceparent"), producer);
    assert_eq!(header(&replies[0], "traceparent"), producer);

    // An event's own context is never replaced by the request's.
    let own = traceparent("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    post(
        &server,
        "t2",
        "traced.event",
        &[("ce-traceparent", &own), ("traceparent", &producer)],
    )
    .await;
    let got = sub.wait_for("answers", 2, WAIT).await;
    let t2 = got.iter().find(|r| r.id() == "t2").unwrap();
    assert_eq!(header(t2, "ce-traceparent"), own);
    assert_eq!(header(t2, "traceparent"), own);

    // No context at all: none is made up when spans are not exported.
    post(&server, "t3", "traced.event", &[]).await;
    let got = sub.wait_for("answers", 3, WAIT).await;
    let t3 = got.iter().find(|r| r.id() == "t3").unwrap();
    assert_eq!(t3.header("traceparent"), None);
    assert_eq!(t3.header("ce-traceparent"), None);
}

/// One span as the collector got it.
#[derive(Clone, Debug)]
struct Span {
    name: String,
    trace: String,
    id: String,
    parent: String,
    attributes: HashMap<String, String>,
    service: String,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A real OTLP/HTTP (protobuf) trace collector on loopback.
async fn collector() -> (String, Arc<Mutex<Vec<Span>>>) {
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let kept = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let kept = kept.clone();
            async move {
                let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                    return (axum::http::StatusCode::BAD_REQUEST, Vec::new());
                };
                let mut kept = kept.lock().unwrap();
                for rs in request.resource_spans {
                    let service = rs
                        .resource
                        .iter()
                        .flat_map(|r| r.attributes.iter())
                        .find(|a| a.key == "service.name")
                        .and_then(|a| text(a.value.as_ref()?.value.as_ref()?))
                        .unwrap_or_default();
                    for s in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                        kept.push(Span {
                            name: s.name,
                            trace: hex(&s.trace_id),
                            id: hex(&s.span_id),
                            parent: hex(&s.parent_span_id),
                            attributes: s
                                .attributes
                                .iter()
                                .filter_map(|a| {
                                    Some((a.key.clone(), text(a.value.as_ref()?.value.as_ref()?)?))
                                })
                                .collect(),
                            service: service.clone(),
                        });
                    }
                }
                // An empty ExportTraceServiceResponse.
                (axum::http::StatusCode::OK, Vec::new())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, spans)
}

fn text(v: &any_value::Value) -> Option<String> {
    match v {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_to_the_otlp_collector_in_the_events_trace() {
    let (collector_url, spans) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(
        &dir.path().join("data"),
        &["--otlp-endpoint", &collector_url],
        // Export every 100 ms instead of every 5 s.
        &[("OTEL_BSP_SCHEDULE_DELAY", "100".to_string())],
    );
    let sub = TestSubscriber::start().await;
    sub.set(
        "ok",
        Behaviour::Reply {
            ty: "otel.reply".into(),
        },
    );
    sub.set(
        "down",
        Behaviour::FailWith {
            status: 500,
            body: "down".into(),
        },
    );
    apply(
        &server,
        &[
            trigger(
                "ok",
                "default",
                &sub.at("ok"),
                "  filters:\n  - exact: {type: otel.event}\n",
            ),
            trigger(
                "down",
                "default",
                &sub.at("down"),
                "  filters:\n  - exact: {type: otel.event}\n  delivery:\n    retry: 1\n    backoffDelay: PT0.05S\n",
            ),
        ]
        .join("---\n"),
    );
    let producer = traceparent(TRACE, PRODUCER_SPAN);
    post(&server, "o1", "otel.event", &[("traceparent", &producer)]).await;
    wait_dead_letters(&server, "down").await;
    let delivered = sub.wait_for("ok", 1, WAIT).await;

    let of = |name: &str, trigger: Option<&str>| {
        spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| {
                s.name == name
                    && trigger.is_none_or(|t| {
                        s.attributes
                            .get("trigger")
                            .is_some_and(|k| k.ends_with(&format!("/{t}")))
                    })
            })
            .cloned()
            .collect::<Vec<_>>()
    };
    let all = eventually(WAIT, "every span at the collector", || {
        let found = [
            of("ferry.ingest", None),
            of("ferry.deliver", Some("ok")),
            of("ferry.deliver", Some("down")),
            of("ferry.retry", Some("down")),
            of("ferry.dead_letter", Some("down")),
        ];
        let counts = [1, 1, 2, 1, 1];
        async move {
            found
                .iter()
                .zip(counts)
                .all(|(f, n)| f.len() >= n)
                .then_some(found)
        }
    })
    .await;
    let [ingest, ok, down, retry, dead] = all;

    // All in the producer's trace; ingest and deliveries are children of the producer's span
    // (the event's own context), as OpenTelemetry's messaging conventions have it.
    for s in ingest
        .iter()
        .chain(&ok)
        .chain(&down)
        .chain(&retry)
        .chain(&dead)
    {
        assert_eq!(s.trace, TRACE, "{s:?}");
        assert_eq!(s.service, "ferry", "{s:?}");
    }
    assert_eq!(ingest[0].parent, PRODUCER_SPAN);
    assert_eq!(ingest[0].attributes["broker"], "default/default");
    assert_eq!(ingest[0].attributes["http.response.status_code"], "202");
    assert_eq!(ok[0].parent, PRODUCER_SPAN);
    assert_eq!(ok[0].attributes["outcome"], "delivered");
    let mut attempts: Vec<&str> = down
        .iter()
        .map(|s| s.attributes["attempt"].as_str())
        .collect();
    attempts.sort();
    assert_eq!(attempts, ["1", "2"]);
    assert!(down.iter().all(|s| s.attributes["outcome"] != "delivered"));
    assert_eq!(dead[0].attributes["to"], "store");

    // The subscriber saw the delivery span as its parent; the event kept the producer's context.
    let (trace, parent) = ids(&header(&delivered[0], "traceparent"));
    assert_eq!(
        (trace.as_str(), parent.as_str()),
        (TRACE, ok[0].id.as_str())
    );
    assert_eq!(header(&delivered[0], "ce-traceparent"), producer);
    // The reply is a child of that delivery.
    let stored = server.events("default", "default");
    let reply = stored.iter().find(|e| e["type"] == "otel.reply").unwrap();
    let (trace, parent) = ids(reply["traceparent"].as_str().unwrap());
    assert_eq!(
        (trace.as_str(), parent.as_str()),
        (TRACE, ok[0].id.as_str())
    );
}
