//! TLS on every listener with a test CA: the CLI and a CloudEvents client connect, Ferry's own
//! deliveries to its brokers trust `--tls-ca`, a renewed certificate is served after SIGHUP.

use super::support::*;
use crate::support::{eventually, stdout, Server};
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_every_listener_with_a_private_ca_and_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let first = test_ca("Ferry test CA one");
    let (cert, key, ca) = (
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
        dir.path().join("ca.pem"),
    );
    write(&cert, &first.cert_pem);
    write(&key, &first.key_pem);
    write(&ca, &first.ca_pem);
    let data = dir.path().join("data");
    let mut server = Server::start(
        &data,
        &[
            "--auth",
            "tokens",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--ops-listen",
            "127.0.0.1:0",
            "--tls-ca",
            ca.to_str().unwrap(),
        ],
    );
    assert!(server.api.starts_with("https://"), "{}", server.api);
    assert!(server.ingress.starts_with("https://"), "{}", server.ingress);
    assert!(server.gateway.starts_with("https://"), "{}", server.gateway);
    let admin = std::fs::read_to_string(data.join("admin-token"))
        .unwrap()
        .trim()
        .to_string();
    let api = server.api.clone();
    let ca_arg = ca.to_str().unwrap();

    // The CLI: with the CA it connects; without, it refuses the certificate.
    ok(&ferry(
        &api,
        Some(&admin),
        &[("FERRY_CA_FILE", ca_arg)],
        &["get", "brokers"],
    ));
    ok(&ferry(
        &api,
        Some(&admin),
        &[],
        &["--ca-file", ca_arg, "get", "brokers"],
    ));
    assert!(!ferry(&api, Some(&admin), &[], &["get", "brokers"])
        .status
        .success());
    // Plain HTTP to a TLS listener gets nowhere.
    let plain = api.replace("https://", "http://");
    let refused_plain = reqwest::Client::new()
        .get(format!("{plain}/healthz"))
        .send()
        .await;
    assert!(refused_plain
        .map(|r| !r.status().is_success())
        .unwrap_or(true));

    // Ferry delivering to its own broker over HTTPS: the broker's address carries the CA
    // (--tls-ca) and the audience, so a trigger whose subscriber is that broker trusts the
    // certificate and sends a token.
    let forward = apply_as_ca(
        &api,
        &admin,
        ca_arg,
        "apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: second}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: forward}
spec:
  broker: default
  subscriber: {ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: second}}
",
    );
    ok(&forward);
    let second = ok(&ferry(
        &api,
        Some(&admin),
        &[("FERRY_CA_FILE", ca_arg)],
        &["get", "broker", "second", "-o", "json"],
    ));
    let second: serde_json::Value = serde_json::from_str(&second).unwrap();
    assert_eq!(
        second["status"]["address"]["CACerts"],
        first.ca_pem.as_str()
    );
    assert!(second["status"]["address"]["url"]
        .as_str()
        .unwrap()
        .starts_with("https://"));

    // A CloudEvents SDK client posts over HTTPS with a producer token.
    let producer = create_token(
        &api,
        &admin,
        &[("FERRY_CA_FILE", ca_arg)],
        &["--name", "p", "--role", "producer"],
    );
    let client = https_client(&first.ca_pem);
    use cloudevents::binding::reqwest::RequestBuilderExt;
    use cloudevents::{EventBuilder, EventBuilderV10};
    let event = EventBuilderV10::new()
        .id("tls-1")
        .source("/e2e/tls")
        .ty("e2e.tls")
        .data("application/json", serde_json::json!({"over": "tls"}))
        .build()
        .unwrap();
    let resp = client
        .post(format!("{}/default/default", server.ingress))
        .bearer_auth(&producer)
        .event(event)
        .unwrap()
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let tail = ok(&ferry(
        &api,
        Some(&admin),
        &[("FERRY_CA_FILE", ca_arg)],
        &[
            "tail",
            "default",
            "--from-beginning",
            "--no-follow",
            "-o",
            "json",
        ],
    ));
    assert!(tail.contains("tls-1"), "{tail}");
    eventually(WAIT, "the event forwarded to the second broker", || async {
        let out = ferry(
            &api,
            Some(&admin),
            &[("FERRY_CA_FILE", ca_arg)],
            &[
                "tail",
                "second",
                "--from-beginning",
                "--no-follow",
                "-o",
                "json",
            ],
        );
        stdout(&out).contains("tls-1").then_some(())
    })
    .await;

    // The ops listener: probes and metrics over the same TLS, no token needed.
    let ops = server
        .ops
        .clone()
        .expect("the server printed the ops listener");
    assert!(ops.starts_with("https://"), "{ops}");
    for path in ["/healthz", "/readyz", "/metrics"] {
        let resp = client.get(format!("{ops}{path}")).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
    }

    // A new certificate from another CA, then SIGHUP: new connections get it.
    let second = test_ca("Ferry test CA two");
    write(&cert, &second.cert_pem);
    write(&key, &second.key_pem);
    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let renewed = https_client(&second.ca_pem);
    eventually(WAIT, "the renewed certificate to be served", || {
        let renewed = renewed.clone();
        let url = format!("{api}/healthz");
        async move {
            renewed
                .get(url)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
        }
    })
    .await;
    assert!(https_client(&first.ca_pem)
        .get(format!("{api}/healthz"))
        .send()
        .await
        .is_err());
    server.terminate();
}
