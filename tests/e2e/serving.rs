//! Serving as a user meets it: Knative Services applied with `ferry apply`, answered through
//! the gateway by real processes (`ferry-example-app`, a tiny HTTP server), scaled by the
//! autoscaler's events, down to zero and back.

use super::support::*;
use super::triggers::{apply, WAIT};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// The revision's program: a tiny HTTP server (`src/bin/ferry-example-app.rs`).
const APP: &str = env!("CARGO_BIN_EXE_ferry-example-app");

/// Short windows so that scale to zero happens within a test: a 6 s stable window (the least
/// Knative allows) and a 1 s grace period.
const FAST_SCALING: &str = "autoscaler:\n  stable-window: 6s\n  scale-to-zero-grace-period: 1s\n  allow-zero-initial-scale: true\n";

fn start(dir: &Path) -> Server {
    let config = dir.join("ferry.yaml");
    std::fs::write(&config, FAST_SCALING).unwrap();
    Server::start(&dir.join("data"), &["--config", config.to_str().unwrap()])
}

/// A Service running `ferry-example-app` with `TARGET=target`, annotations and spec lines.
fn service(name: &str, target: &str, annotations: &str, extra_spec: &str, traffic: &str) -> String {
    format!(
        r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  template:
    metadata:
      annotations: {{{annotations}}}
    spec:
{extra_spec}      containers:
        - image: example/hello
          command: ["{APP}"]
          env: [{{name: TARGET, value: {target}}}]
          readinessProbe: {{httpGet: {{path: /healthz}}}}
{traffic}"#
    )
}

fn ready(r: &Value) -> bool {
    condition(r, "Ready").is_some_and(|c| c["status"] == "True")
}

/// Waits until `ksvc name` is Ready with `latest` as its latest ready revision.
async fn wait_ready(server: &Server, name: &str, latest: &str) -> Value {
    eventually(
        WAIT,
        &format!("service {name} ready at {latest}"),
        || async {
            let s = get_json(server, &["get", "ksvc", name]);
            (ready(&s) && s["status"]["latestReadyRevisionName"] == latest).then_some(s)
        },
    )
    .await
}

/// GET through the gateway with a Host header: (status, body).
async fn call(client: &reqwest::Client, server: &Server, host: &str, path: &str) -> (u16, String) {
    let resp = client
        .get(format!("{}{path}", server.gateway))
        .header("host", host)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// `n` GETs through the gateway at once: (status, body) of each.
async fn concurrently(
    client: &reqwest::Client,
    server: &Server,
    host: &str,
    path: &str,
    n: usize,
) -> Vec<(u16, String)> {
    let calls = (0..n).map(|_| call(client, server, host, path));
    futures::future::join_all(calls).await
}

/// The revision's instance count (`status.actualReplicas`, ready instances).
fn instances(server: &Server, revision: &str) -> u64 {
    get_json(server, &["get", "revision", revision])["status"]["actualReplicas"]
        .as_u64()
        .unwrap_or(0)
}

/// The pids the revision's instances printed (`example-app listening on PORT (pid N)`).
fn pids(server: &Server, revision: &str) -> Vec<u32> {
    let out = server.cli(&["logs", "revision", revision]);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
        .lines()
        .filter_map(|l| l.split("(pid ").nth(1))
        .filter_map(|p| p.trim_end_matches(')').parse().ok())
        .collect()
}

fn alive(pid: u32) -> bool {
    // A zombie is dead too: only a running process has a state other than Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|r| r.trim_start().to_string()))
        .is_some_and(|r| !r.starts_with('Z'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_tags_splits_and_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let client = reqwest::Client::new();
    apply(&server, &service("hello", "one", "", "", ""));
    let s = wait_ready(&server, "hello", "hello-00001").await;
    let url = s["status"]["url"].as_str().unwrap();
    let port = server.gateway.rsplit(':').next().unwrap();
    assert_eq!(url, format!("http://hello.default.localhost:{port}"));
    assert_eq!(s["status"]["address"]["url"], url);
    let (code, body) = call(&client, &server, "hello.default.localhost", "/").await;
    assert_eq!((code, body.as_str()), (200, "one from hello-00001\n"));
    // The port in the Host header does not matter; an unknown host is a 404 naming it.
    let (code, _) = call(
        &client,
        &server,
        &format!("hello.default.localhost:{port}"),
        "/",
    )
    .await;
    assert_eq!(code, 200);
    let (code, body) = call(&client, &server, "nobody.default.localhost", "/").await;
    assert_eq!(code, 404);
    assert!(body.contains("nobody.default.localhost"), "{body}");
    // What the instance is told of the request (runtime contract: Host and Forwarded).
    let (_, seen) = call(&client, &server, "hello.default.localhost", "/headers").await;
    let seen: Value = serde_json::from_str(&seen).unwrap();
    assert_eq!(seen["host"], "hello.default.localhost");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "hello.default.localhost");
    assert_eq!(
        seen["forwarded"],
        "for=127.0.0.1;host=hello.default.localhost;proto=http"
    );
    // Bodies stream both ways: 32 MiB up and back.
    let big = vec![7u8; 32 << 20];
    let back = client
        .post(format!("{}/echo", server.gateway))
        .header("host", "hello.default.localhost")
        .body(big.clone())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(back.len() == big.len() && back[..] == big[..]);

    // A change of the template makes a revision; the route follows once it is ready.
    apply(&server, &service("hello", "two", "", "", ""));
    wait_ready(&server, "hello", "hello-00002").await;
    let (_, body) = call(&client, &server, "hello.default.localhost", "/").await;
    assert_eq!(body, "two from hello-00002\n");

    // Traffic: 30/70 between the two with a tag each; no new revision for it.
    let traffic = "  traffic:\n    - {revisionName: hello-00001, percent: 30, tag: old}\n    - {latestRevision: true, percent: 70, tag: new}\n";
    apply(&server, &service("hello", "two", "", "", traffic));
    eventually(WAIT, "traffic split in status", || async {
        let s = get_json(&server, &["get", "ksvc", "hello"]);
        (s["status"]["traffic"].as_array().map(Vec::len) == Some(2) && ready(&s)).then_some(())
    })
    .await;
    let revisions = get_json(&server, &["get", "revisions"]);
    assert_eq!(
        revisions["items"].as_array().unwrap().len(),
        2,
        "{revisions}"
    );
    let mut old = 0;
    for _ in 0..200 {
        let (code, body) = call(&client, &server, "hello.default.localhost", "/").await;
        assert_eq!(code, 200);
        if body.contains("hello-00001") {
            old += 1;
        }
    }
    // 30% of 200 = 60; binomial sd ≈ 6.5: ±25 is almost four of them.
    assert!(
        (35..=85).contains(&old),
        "{old} of 200 went to hello-00001 (30% asked)"
    );
    let (_, body) = call(&client, &server, "old-hello.default.localhost", "/").await;
    assert_eq!(body, "one from hello-00001\n");
    let (_, body) = call(&client, &server, "new-hello.default.localhost", "/").await;
    assert_eq!(body, "two from hello-00002\n");
    let s = get_json(&server, &["get", "ksvc", "hello"]);
    let tags: Vec<&str> = s["status"]["traffic"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["url"].as_str())
        .collect();
    assert_eq!(
        tags,
        [
            format!("http://old-hello.default.localhost:{port}"),
            format!("http://new-hello.default.localhost:{port}")
        ]
    );
    for kind in ["ksvc", "configurations", "routes", "revisions"] {
        let out = server.cli(&["get", kind]);
        assert!(out.status.success(), "{kind}: {}", stderr(&out));
        assert!(stdout(&out).contains("hello"), "{kind}: {}", stdout(&out));
    }
    let out = server.cli(&["describe", "ksvc", "hello"]);
    let text = stdout(&out);
    assert!(text.contains("Traffic:") && text.contains("#old"), "{text}");
    assert!(
        text.contains("Revisions:") && text.contains("hello-00002"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_no_route_targets_are_collected_beyond_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--revision-history", "1"]);
    for (n, target) in ["a", "b", "c", "d"].iter().enumerate() {
        apply(&server, &service("gc", target, "", "", ""));
        wait_ready(&server, "gc", &format!("gc-0000{}", n + 1)).await;
    }
    // gc-00004 serves; one more is kept (the history); the two oldest go.
    let names = eventually(WAIT, "the oldest revisions collected", || async {
        let list = get_json(&server, &["get", "revisions"]);
        let names: Vec<String> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        (names.len() == 2).then_some(names)
    })
    .await;
    assert_eq!(names, ["gc-00003", "gc-00004"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_services_are_refused_and_failing_revisions_do_not_take_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let client = reqwest::Client::new();
    // Validation names every bad field and applies nothing.
    let bad = r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: bad, namespace: default}
spec:
  template:
    metadata:
      annotations: {autoscaling.knative.dev/target: "lots"}
    spec:
      containers:
        - image: example/hello
  traffic:
    - {latestRevision: true, percent: 60, tag: a}
    - {latestRevision: true, percent: 20, tag: a}
"#;
    let out = server.cli_stdin(&["apply", "-f", "-"], bad);
    assert!(!out.status.success());
    let err = stderr(&out);
    for field in [
        "spec.template.spec.containers[0].command",
        "spec.template.metadata.annotations.autoscaling.knative.dev/target",
        "spec.traffic[1].tag",
        "percents add up to 80",
    ] {
        assert!(err.contains(field), "{field} not in: {err}");
    }
    let out = server.cli(&["get", "ksvc", "bad"]);
    assert!(!out.status.success(), "nothing applied");

    apply(&server, &service("hello", "good", "", "", ""));
    wait_ready(&server, "hello", "hello-00001").await;
    let failing = r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: hello, namespace: default}
spec:
  template:
    spec:
      containers:
        - command: ["sh", "-c", "echo 'cannot read /etc/hello.conf' >&2; exit 3"]
"#;
    apply(&server, failing);
    let s = eventually(WAIT, "the failing revision reported", || async {
        let s = get_json(&server, &["get", "ksvc", "hello"]);
        condition(&s, "Ready")
            .is_some_and(|c| c["status"] == "False")
            .then_some(s)
    })
    .await;
    let c = condition(&s, "ConfigurationsReady").unwrap();
    assert_eq!(c["reason"], "RevisionFailed");
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains("cannot read /etc/hello.conf"),
        "{c}"
    );
    let rev = get_json(&server, &["get", "revision", "hello-00002"]);
    let r = condition(&rev, "Ready").unwrap();
    assert_eq!(
        (r["status"].as_str(), r["reason"].as_str()),
        (Some("False"), Some("ExitCode3"))
    );
    assert_eq!(s["status"]["latestReadyRevisionName"], "hello-00001");
    let (code, body) = call(&client, &server, "hello.default.localhost", "/").await;
    assert_eq!((code, body.as_str()), (200, "good from hello-00001\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scales_up_under_load_and_to_zero_when_idle_then_wakes_on_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let client = reqwest::Client::new();
    // One request in flight per instance: 4 requests of 1.5 s at once want 4 instances.
    apply(
        &server,
        &service(
            "busy",
            "x",
            "autoscaling.knative.dev/target: \"1\", autoscaling.knative.dev/target-utilization-percentage: \"100\"",
            "",
            "",
        ),
    );
    wait_ready(&server, "busy", "busy-00001").await;
    let load: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            let gateway = server.gateway.clone();
            tokio::spawn(async move {
                let mut codes = Vec::new();
                for _ in 0..3 {
                    let r = client
                        .get(format!("{gateway}/?sleep=1500"))
                        .header("host", "busy.default.localhost")
                        .send()
                        .await
                        .unwrap();
                    codes.push(r.status().as_u16());
                }
                codes
            })
        })
        .collect();
    eventually(WAIT, "more than one instance under load", || async {
        (instances(&server, "busy-00001") > 1).then_some(())
    })
    .await;
    for l in load {
        assert!(l.await.unwrap().iter().all(|c| *c == 200));
    }
    // Idle: down to zero after the stable window and the grace period.
    eventually(Duration::from_secs(60), "scale to zero", || async {
        let r = get_json(&server, &["get", "revision", "busy-00001"]);
        (r["status"]["actualReplicas"] == 0 && r["status"]["desiredReplicas"] == 0).then_some(())
    })
    .await;
    // The next request is held, wakes an instance and is answered.
    let (code, body) = call(&client, &server, "busy.default.localhost", "/").await;
    assert_eq!((code, body.as_str()), (200, "x from busy-00001\n"));
    assert_eq!(instances(&server, "busy-00001"), 1);
    // The loop is visible as events in ferry-system/serving.
    let events = server.events("ferry-system", "serving");
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(types.contains(&"dev.ferry.serving.stat.v1"));
    let activation = events
        .iter()
        .find(|e| e["type"] == "dev.ferry.serving.scale.v1" && e["data"]["reason"] == "activation")
        .expect("a scale-from-zero decision");
    assert_eq!(activation["data"]["desired"], 1);
    assert_eq!(activation["partitionkey"], "default/busy-00001");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_concurrency_one_never_overlaps_requests_on_an_instance() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let client = reqwest::Client::new();
    apply(
        &server,
        &service(
            "one",
            "x",
            "autoscaling.knative.dev/max-scale: \"1\"",
            "      containerConcurrency: 1\n",
            "",
        ),
    );
    wait_ready(&server, "one", "one-00001").await;
    let answers = concurrently(&client, &server, "one.default.localhost", "/?sleep=100", 8).await;
    assert!(answers.iter().all(|(c, _)| *c == 200), "{answers:?}");
    let (_, stats) = call(&client, &server, "one.default.localhost", "/stats").await;
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["maxConcurrent"], 1, "{stats}");
    assert!(stats["requests"].as_u64().unwrap() >= 8, "{stats}");

    // One in flight and ten waiting (10 × containerConcurrency): the others get 503 at once.
    let answers = concurrently(&client, &server, "one.default.localhost", "/?sleep=400", 15).await;
    let ok = answers.iter().filter(|(c, _)| *c == 200).count();
    let full: Vec<_> = answers.iter().filter(|(c, _)| *c == 503).collect();
    assert_eq!(ok + full.len(), 15, "{answers:?}");
    assert!(ok >= 11 && !full.is_empty(), "{answers:?}");
    assert!(
        full[0].1.contains("pending request queue full"),
        "{answers:?}"
    );

    // timeoutSeconds bounds a request: 504 once it has gone to the instance.
    apply(
        &server,
        &service("slow", "x", "", "      timeoutSeconds: 1\n", ""),
    );
    wait_ready(&server, "slow", "slow-00001").await;
    let (code, body) = call(&client, &server, "slow.default.localhost", "/?sleep=3000").await;
    assert_eq!(code, 504, "{body}");
    assert!(body.contains("timeoutSeconds"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_delivers_to_a_service_at_zero() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    apply(
        &server,
        &service(
            "sink",
            "x",
            "autoscaling.knative.dev/initial-scale: \"0\"",
            "",
            "",
        ),
    );
    wait_ready(&server, "sink", "sink-00001").await;
    assert_eq!(instances(&server, "sink-00001"), 0);
    apply(
        &server,
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: to-sink, namespace: default}\nspec:\n  broker: default\n  subscriber:\n    ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: sink}\n",
    );
    let t = get_json(&server, &["get", "trigger", "to-sink"]);
    let port = server.gateway.rsplit(':').next().unwrap();
    assert_eq!(
        t["status"]["subscriberUri"],
        format!("http://sink.default.localhost:{port}")
    );
    assert_eq!(
        server.post_event("default", "default", "evt-to-sink").await,
        202
    );
    eventually(WAIT, "the event in the service's output", || async {
        let out = server.cli(&["logs", "revision", "sink-00001"]);
        stdout(&out).contains("ce-id=evt-to-sink").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_process_outlives_its_service_or_ferry() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path());
    apply(
        &server,
        &service("a", "x", "autoscaling.knative.dev/min-scale: \"2\"", "", ""),
    );
    apply(&server, &service("b", "x", "", "", ""));
    wait_ready(&server, "a", "a-00001").await;
    wait_ready(&server, "b", "b-00001").await;
    let a = eventually(WAIT, "two instances of a", || async {
        let p = pids(&server, "a-00001");
        (p.len() == 2).then_some(p)
    })
    .await;
    assert!(a.iter().all(|p| alive(*p)));
    let out = server.cli(&["delete", "ksvc", "a"]);
    assert!(out.status.success(), "{}", stderr(&out));
    eventually(WAIT, "a's processes gone", || async {
        a.iter().all(|p| !alive(*p)).then_some(())
    })
    .await;
    let b = pids(&server, "b-00001");
    assert_eq!(b.len(), 1);
    server.kill9();
    eventually(WAIT, "b's process gone with ferry", || async {
        b.iter().all(|p| !alive(*p)).then_some(())
    })
    .await;
    // After a restart, b is still ready and serves (waking if it has to).
    let server = start(dir.path());
    let s = get_json(&server, &["get", "ksvc", "b"]);
    assert!(ready(&s), "{s}");
    let (code, body) = call(&reqwest::Client::new(), &server, "b.default.localhost", "/").await;
    assert_eq!((code, body.as_str()), (200, "x from b-00001\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_works_on_one_node_in_kafka_mode() {
    let kafka = super::tansu::Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.yaml");
    std::fs::write(&config, FAST_SCALING).unwrap();
    let mut flags = kafka_flags(&kafka.bootstrap);
    flags.extend(["--config", config.to_str().unwrap()]);
    let server = Server::start(&dir.path().join("data"), &flags);
    apply(
        &server,
        &service(
            "k",
            "x",
            "autoscaling.knative.dev/initial-scale: \"0\"",
            "",
            "",
        ),
    );
    wait_ready(&server, "k", "k-00001").await;
    // A cold start through the autoscaler's events, kept in Kafka.
    let (code, body) = call(&reqwest::Client::new(), &server, "k.default.localhost", "/").await;
    assert_eq!((code, body.as_str()), (200, "x from k-00001\n"));
    let events = server.events("ferry-system", "serving");
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "dev.ferry.serving.scale.v1"
                && e["data"]["reason"] == "activation"),
        "{events:?}"
    );
}
