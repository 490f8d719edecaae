//! EventPolicies: allow and deny, a CESQL filter, batches whole, the namespace default, a
//! restart, and a source admitted by `from.ref`.

use super::support::*;
use crate::subscriber::TestSubscriber;
use crate::support::{eventually, Server};
use serde_json::{json, Value};

const POLICY: &str = "apiVersion: eventing.knative.dev/v1alpha1
kind: EventPolicy
metadata: {name: orders-only, namespace: shop}
spec:
  to:
  - ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: orders}
  from:
  - sub: shop-prod*
  filters:
  - cesql: \"type LIKE 'order.%'\"
";

async fn post_typed(
    server: &Server,
    token: &str,
    broker: &str,
    ty: &str,
    id: &str,
) -> (u16, String) {
    let resp = reqwest::Client::new()
        .post(format!("{}/shop/{broker}", server.ingress))
        .bearer_auth(token)
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/e2e")
        .header("ce-type", ty)
        .body("{}")
        .send()
        .await
        .unwrap();
    let code = resp.status().as_u16();
    (code, resp.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_policies_decide_who_sends_what() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--auth", "tokens"]);
    let (api, admin) = (server.api.clone(), admin_of(&data));
    ok(&apply_as(
        &api,
        &admin,
        "apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: orders, namespace: shop}
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: misc, namespace: shop}
",
    ));
    let producer = create_token(
        &api,
        &admin,
        &[],
        &[
            "--name",
            "shop-producer",
            "--role",
            "producer",
            "-n",
            "shop",
        ],
    );
    let intruder = create_token(
        &api,
        &admin,
        &[],
        &["--name", "intruder", "--role", "producer", "-n", "shop"],
    );

    // Before any policy: the namespace's default lets both send.
    assert_eq!(
        post_typed(&server, &intruder, "orders", "order.created", "a0")
            .await
            .0,
        202
    );

    // A bad policy is refused, naming its fields.
    let bad = apply_as(
        &api,
        &admin,
        &POLICY.replace("type LIKE 'order.%'", "type LIKE"),
    );
    refused(&bad, "spec.filters[0]");
    ok(&apply_as(&api, &admin, POLICY));
    let policy = ok(&ferry(
        &api,
        Some(&admin),
        &[],
        &[
            "get",
            "eventpolicy",
            "orders-only",
            "-n",
            "shop",
            "-o",
            "json",
        ],
    ));
    let policy: Value = serde_json::from_str(&policy).unwrap();
    assert_eq!(policy["status"]["from"], json!(["shop-prod*"]), "{policy}");

    // The policy's subjects may send what its filter lets through; others nothing.
    assert_eq!(
        post_typed(&server, &producer, "orders", "order.created", "a1")
            .await
            .0,
        202
    );
    let (code, body) = post_typed(&server, &producer, "orders", "payment.done", "a2").await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("orders-only") && body.contains("payment.done"),
        "{body}"
    );
    let (code, body) = post_typed(&server, &intruder, "orders", "order.created", "a3").await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("intruder"), "{body}");
    // A batch is admitted whole or not at all.
    let batch = json!([
        {"specversion": "1.0", "id": "b1", "source": "/e2e", "type": "order.created"},
        {"specversion": "1.0", "id": "b2", "source": "/e2e", "type": "refund.issued"},
    ]);
    let resp = reqwest::Client::new()
        .post(format!("{}/shop/orders", server.ingress))
        .bearer_auth(&producer)
        .header("content-type", "application/cloudevents-batch+json")
        .body(batch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    // A broker the policy does not select keeps the default.
    assert_eq!(
        post_typed(&server, &intruder, "misc", "anything", "m1")
            .await
            .0,
        202
    );

    // After a restart the policy holds from the first request on.
    let mut server = server;
    server.terminate();
    let server = Server::start(&data, &["--auth", "tokens"]);
    let api = server.api.clone();
    let (code, body) = post_typed(&server, &intruder, "orders", "order.created", "r1").await;
    assert_eq!(code, 403, "the first request after a restart: {body}");

    let tail = ok(&ferry(
        &api,
        Some(&admin),
        &[],
        &[
            "tail",
            "orders",
            "-n",
            "shop",
            "--from-beginning",
            "--no-follow",
            "-o",
            "json",
        ],
    ));
    let ids: Vec<String> = tail
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids, ["a0", "a1"], "only admitted events are stored");

    // Deleting the policy gives the broker back to the default.
    ok(&ferry(
        &api,
        Some(&admin),
        &[],
        &["delete", "eventpolicy", "orders-only", "-n", "shop"],
    ));
    eventually(WAIT, "the policy to be gone", || async {
        (post_typed(&server, &intruder, "orders", "order.created", "a4")
            .await
            .0
            == 202)
            .then_some(())
    })
    .await;
    let (_, metrics) = status(&format!("{api}/metrics"), Some(&admin)).await;
    assert!(
        metrics.contains("ferry_auth_refused_total{listener=\"ingress\",reason=\"forbidden\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_sends_as_itself_and_a_policy_lets_it_into_another_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--auth", "tokens"]);
    let (api, admin) = (server.api.clone(), admin_of(&data));
    let sub = TestSubscriber::start().await;
    ok(&apply_as(
        &api,
        &admin,
        &format!(
            "apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: inbox, namespace: b}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: all, namespace: b}}
spec:
  broker: inbox
  subscriber: {{uri: {}}}
---
apiVersion: sources.knative.dev/v1
kind: PingSource
metadata: {{name: tick, namespace: a}}
spec:
  schedule: '@every 1s'
  sink: {{ref: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: inbox, namespace: b}}}}
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: local, namespace: b}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: local, namespace: b}}
spec:
  broker: local
  subscriber: {{uri: {}}}
---
apiVersion: sources.knative.dev/v1
kind: PingSource
metadata: {{name: near, namespace: b}}
spec:
  schedule: '@every 1s'
  sink: {{uri: {}/b/local}}
",
            sub.at("got"),
            sub.at("local"),
            server.ingress,
        ),
    ));
    // A source of the same namespace that names the broker by its URL, not a ref: its
    // deliveries carry a token for that broker too, and the default lets them in.
    let near = sub.wait_for("local", 1, WAIT).await;
    assert_eq!(
        near[0].header("ce-source").as_deref(),
        Some("/apis/v1/namespaces/b/pingsources/near")
    );
    // From namespace a into b: the default (allow-same-namespace) refuses the source.
    eventually(WAIT, "the source's events to be refused", || async {
        let (_, m) = status(&format!("{api}/metrics"), Some(&admin)).await;
        m.contains("ferry_auth_refused_total{listener=\"ingress\",reason=\"forbidden\"}")
            .then_some(())
    })
    .await;
    assert!(sub.received("got").is_empty());
    // A policy in b naming the source lets its events in.
    ok(&apply_as(
        &api,
        &admin,
        "apiVersion: eventing.knative.dev/v1alpha1
kind: EventPolicy
metadata: {name: ticks, namespace: b}
spec:
  to: [{ref: {kind: Broker, name: inbox}}]
  from: [{ref: {apiVersion: sources.knative.dev/v1, kind: PingSource, name: tick, namespace: a}}]
",
    ));
    let got = sub.wait_for("got", 1, WAIT).await;
    assert_eq!(
        got[0].header("ce-type").as_deref(),
        Some("dev.knative.sources.ping")
    );
}
