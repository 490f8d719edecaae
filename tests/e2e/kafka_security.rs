//! Kafka security through the real binary, as far as the Kafka-protocol server of the tests
//! allows: tansu 0.6 (as installed here) offers neither a TLS listener nor a SASL mechanism
//! Ferry can log in with, so a successful SASL or TLS session is not tested end to end. What
//! is: records another client compressed with zstd are read (librdkafka built with zstd);
//! KafkaSource `spec.net` and KafkaSink `spec.auth` read their secrets (a missing one says
//! which file or env var) and take TLS to the cluster (the source's client then speaks TLS to
//! a plaintext server and fails, instead of connecting without it); `ferry serve`'s Kafka
//! security flags are checked as a whole. The unit test
//! `broker::kafka::security::tests::librdkafka_takes_every_protocol_and_mechanism` shows the
//! client accepts SSL, SASL_SSL with SCRAM-SHA-256/512 and PLAIN (it refuses them when built
//! without `ssl`).

use super::kafka::peer;
use super::subscriber::TestSubscriber;
use super::support::*;
use super::tansu::Tansu;
use serde_json::Value;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn condition(server: &Server, kind: &str, name: &str) -> Option<Value> {
    let out = server.cli(&["get", kind, name, "-o", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_reads_zstd_records_and_takes_its_clusters_credentials_from_secrets() {
    let kafka = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let sub = TestSubscriber::start().await;
    peer(&["create", &kafka.bootstrap, "squeezed", "1"]);
    let source = |name: &str, net: &str| {
        format!(
            "apiVersion: sources.knative.dev/v1beta1\nkind: KafkaSource\nmetadata:\n  name: {name}\nspec:\n  bootstrapServers: [\"{}\"]\n  topics: [squeezed]\n  initialOffset: earliest\n  sink:\n    uri: {}\n{net}",
            kafka.bootstrap,
            sub.at(name)
        )
    };
    let out = server.cli_stdin(&["apply", "-f", "-"], &source("plain", ""));
    assert!(out.status.success(), "{}", stderr(&out));
    peer(&["zstd", &kafka.bootstrap, "squeezed", "z-1"]);
    let got = sub.wait_for("plain", 1, WAIT).await;
    assert_eq!(got[0].id(), "z-1");

    // TLS to the cluster, its CA from a secret that is not there yet: not Ready, saying where
    // the secret is looked for.
    let net = "  net:\n    tls:\n      enable: true\n      caCert:\n        secretKeyRef: {name: kafka-tls, key: ca.crt}\n";
    let out = server.cli_stdin(&["apply", "-f", "-"], &source("secure", net));
    assert!(out.status.success(), "{}", stderr(&out));
    let missing = eventually(WAIT, "the source to miss its secret", || async {
        condition(&server, "kafkasource", "secure").filter(|c| c["status"] == "False")
    })
    .await;
    assert_eq!(missing["reason"], "SecretUnavailable", "{missing}");
    let message = missing["message"].as_str().unwrap();
    assert!(
        message.contains("secrets/default/kafka-tls/ca.crt")
            && message.contains("FERRY_SECRET__default__kafka_2Dtls__ca_2Ecrt"),
        "{message}"
    );
    // With the secret, the source's client speaks TLS: to this plaintext server it gets no
    // answer (it does not fall back to plaintext), so nothing is read.
    let secret = data.join("secrets/default/kafka-tls");
    std::fs::create_dir_all(&secret).unwrap();
    let ca = super::security::support::test_ca("Kafka CA");
    std::fs::write(secret.join("ca.crt"), &ca.ca_pem).unwrap();
    let unreachable = eventually(WAIT, "the source to try TLS", || async {
        condition(&server, "kafkasource", "secure")
            .filter(|c| c["status"] == "False" && c["reason"] != "SecretUnavailable")
    })
    .await;
    // Kafka unreachable over TLS, not a missing secret.
    assert!(
        matches!(
            unreachable["reason"].as_str(),
            Some("TopicUnavailable" | "KafkaUnavailable")
        ),
        "{unreachable}"
    );
    assert!(sub.received("secure").is_empty());

    // A sink's auth secret: its protocol key is required and named when missing.
    let sink = format!(
        "apiVersion: eventing.knative.dev/v1alpha1\nkind: KafkaSink\nmetadata:\n  name: out\nspec:\n  topic: out\n  bootstrapServers: [\"{}\"]\n  auth:\n    secret:\n      ref: {{name: kafka-sasl}}\n",
        kafka.bootstrap
    );
    let out = server.cli_stdin(&["apply", "-f", "-"], &sink);
    assert!(out.status.success(), "{}", stderr(&out));
    let sink_missing = eventually(WAIT, "the sink to miss its secret", || async {
        condition(&server, "kafkasink", "out").filter(|c| c["status"] == "False")
    })
    .await;
    assert!(
        sink_missing["message"]
            .as_str()
            .unwrap()
            .contains("secrets/default/kafka-sasl/protocol"),
        "{sink_missing}"
    );
    // A malformed net is refused at apply, naming the field.
    let bad = server.cli_stdin(
        &["apply", "-f", "-"],
        &source("bad", "  net:\n    sasl:\n      enable: yes-please\n"),
    );
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("spec.net.sasl"), "{}", stderr(&bad));
}

#[test]
fn ferry_serves_kafka_security_flags_checked_as_a_whole() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--data-dir", dir.path().to_str().unwrap()])
        .args([
            "--kafka",
            "127.0.0.1:9",
            "--kafka-security-protocol",
            "SASL_SSL",
        ])
        .args([
            "--kafka-sasl-mechanism",
            "GSSAPI",
            "--kafka-ca-file",
            "/nonexistent/ca.pem",
        ])
        .env_remove("FERRY_KAFKA_SASL_PASSWORD")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    for needle in [
        "GSSAPI",
        "needs a user",
        "needs a password",
        "kafka-ca-file",
    ] {
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
    }
}
