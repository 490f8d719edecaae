//! Tokens and roles: 401 without or with a bad token, 403 by role and namespace, tokens made,
//! expired and revoked through the CLI, nothing of a token in logs, metrics or `-o yaml`; the
//! admin token bootstrap or from a file; `--auth none` refused off loopback.

use super::support::*;
use crate::support::{eventually, stderr, Server, BIN};
use std::process::Command;

const SHOP: &str = "apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: orders, namespace: shop}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_roles_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &["--auth", "tokens"]);
    let api = server.api.clone();

    // The first start wrote an admin token, readable by the owner only.
    let admin_file = data.join("admin-token");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&admin_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "admin-token mode {mode:o}");
    let dir_mode = std::fs::metadata(&data).unwrap().permissions().mode();
    assert_eq!(dir_mode & 0o777, 0o700, "data dir mode {dir_mode:o}");
    let admin = std::fs::read_to_string(&admin_file)
        .unwrap()
        .trim()
        .to_string();

    // No token: 401 everywhere but the probes; every verb says how to pass one.
    let verbs: &[&[&str]] = &[
        &["get", "brokers"],
        &["get", "triggers", "-A"],
        &["describe", "broker", "default"],
        &["delete", "broker", "default"],
        &["api-resources"],
        &["tail", "default", "--no-follow"],
        &[
            "send", "--broker", "default", "--type", "t", "--source", "s",
        ],
        &["dlq", "list", "t"],
        &["dlq", "replay", "t", "--all"],
        &["dlq", "purge", "t"],
        &["logs", "taskrun", "x"],
        &["cancel", "taskrun", "x"],
        &["token", "list"],
        &["token", "create", "--name", "x", "--role", "viewer"],
        &["token", "revoke", "x"],
    ];
    for verb in verbs {
        let err = refused(&ferry(&api, None, &[], verb), "--token");
        assert!(err.contains("FERRY_TOKEN"), "{verb:?}: {err}");
    }
    let unapplied = apply_with(
        &api,
        None,
        None,
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: nope}\n",
    );
    refused(&unapplied, "--token");
    for path in [
        "/api/v1/brokers",
        "/api/v1/api-resources",
        "/metrics",
        "/api/v1/tokens",
        "/api/v1/namespaces/default/brokers/default",
        "/api/v1/namespaces/default/brokers/default/events?follow=false",
        "/api/v1/namespaces/default/triggers/t/deadletters",
        "/api/v1/namespaces/default/taskruns/x/logs",
    ] {
        let (code, body) = status(&format!("{api}{path}"), None).await;
        assert_eq!(code, 401, "{path}: {body}");
    }
    for (method, path) in [
        (reqwest::Method::POST, "/api/v1/apply"),
        (
            reqwest::Method::DELETE,
            "/api/v1/namespaces/default/brokers/default",
        ),
        (
            reqwest::Method::POST,
            "/api/v1/namespaces/default/triggers/t/deadletters/replay",
        ),
        (reqwest::Method::DELETE, "/api/v1/tokens/admin"),
    ] {
        let resp = reqwest::Client::new()
            .request(method.clone(), format!("{api}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{method} {path}");
    }
    assert_eq!(status(&format!("{api}/healthz"), None).await.0, 200);
    assert_eq!(status(&format!("{api}/readyz"), None).await.0, 200);
    assert_eq!(post(&server, None, "default", "default", "anon").await, 401);
    assert_eq!(
        post(&server, Some("ferry.nobody.xyz"), "default", "default", "x").await,
        401
    );
    let bad = ferry(&api, Some("not-a-token"), &[], &["get", "brokers"]);
    refused(&bad, "refused the token");

    // The admin makes the rest.
    let apply = |token: &str, yaml: &str| apply_as(&api, token, yaml);
    ok(&apply(&admin, SHOP));
    let editor = create_token(
        &api,
        &admin,
        &[],
        &["--name", "shop-editor", "--role", "editor", "-n", "shop"],
    );
    let viewer = create_token(
        &api,
        &admin,
        &[],
        &["--name", "auditor", "--role", "viewer"],
    );
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
    let brief = create_token(
        &api,
        &admin,
        &[],
        &["--name", "brief", "--role", "viewer", "--expires", "2s"],
    );
    let doomed = create_token(&api, &admin, &[], &["--name", "doomed", "--role", "viewer"]);
    // Names are unique; an admin token cannot be limited to a namespace.
    refused(
        &ferry(
            &api,
            Some(&admin),
            &[],
            &["token", "create", "--name", "auditor", "--role", "viewer"],
        ),
        "exists",
    );
    refused(
        &ferry(
            &api,
            Some(&admin),
            &[],
            &[
                "token", "create", "--name", "x", "--role", "admin", "-n", "shop",
            ],
        ),
        "namespace",
    );

    // Producer: posts to its namespace's brokers only, can read a broker's address, no more.
    assert_eq!(
        post(&server, Some(&producer), "shop", "orders", "p1").await,
        202
    );
    assert_eq!(
        post(&server, Some(&producer), "default", "default", "p2").await,
        403
    );
    ok(&ferry(
        &api,
        Some(&producer),
        &[],
        &["get", "brokers", "-n", "shop"],
    ));
    // A broker by any of its names; the resource types, whatever the namespace limit.
    ok(&ferry(
        &api,
        Some(&producer),
        &[],
        &["describe", "broker", "orders", "-n", "shop"],
    ));
    ok(&ferry(&api, Some(&producer), &[], &["api-resources"]));
    let sent = ferry(
        &api,
        Some(&producer),
        &[],
        &[
            "send", "--broker", "orders", "-n", "shop", "--type", "t", "--source", "s",
        ],
    );
    ok(&sent);
    refused(
        &ferry(
            &api,
            Some(&producer),
            &[],
            &["get", "triggers", "-n", "shop"],
        ),
        "may not read resources",
    );
    refused(
        &ferry(
            &api,
            Some(&producer),
            &[],
            &["tail", "orders", "-n", "shop", "--no-follow"],
        ),
        "may not",
    );

    // Viewer: reads resources everywhere, no event contents, no changes, no sending.
    ok(&ferry(&api, Some(&viewer), &[], &["get", "brokers", "-A"]));
    ok(&ferry(
        &api,
        Some(&viewer),
        &[],
        &["describe", "broker", "orders", "-n", "shop"],
    ));
    refused(
        &ferry(
            &api,
            Some(&viewer),
            &[],
            &[
                "tail",
                "orders",
                "-n",
                "shop",
                "--from-beginning",
                "--no-follow",
            ],
        ),
        "role viewer",
    );
    refused(
        &ferry(
            &api,
            Some(&viewer),
            &[],
            &["dlq", "list", "t", "-n", "shop"],
        ),
        "role viewer",
    );
    refused(&apply(&viewer, SHOP), "role viewer");
    refused(
        &ferry(
            &api,
            Some(&viewer),
            &[],
            &["delete", "broker", "orders", "-n", "shop"],
        ),
        "role viewer",
    );
    assert_eq!(
        post(&server, Some(&viewer), "shop", "orders", "v1").await,
        403
    );
    assert_eq!(
        status(&format!("{api}/metrics"), Some(&viewer)).await.0,
        200
    );

    // Editor of shop: changes and reads contents in shop, nothing elsewhere, no tokens.
    let trigger = "apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: t, namespace: shop}
spec: {broker: orders, subscriber: {uri: http://127.0.0.1:9/}}
";
    ok(&apply(&editor, trigger));
    let elsewhere = apply(
        &editor,
        &trigger.replace("namespace: shop", "namespace: default"),
    );
    refused(&elsewhere, "limited to namespace shop");
    // A broker's topic is not for a source or sink of an editor: it would bypass the
    // broker's namespace and policies.
    let topic_sink = "apiVersion: eventing.knative.dev/v1alpha1
kind: KafkaSink
metadata: {name: tap, namespace: shop}
spec: {topic: knative-broker-default-default, bootstrapServers: [\"127.0.0.1:9\"]}
";
    refused(&apply(&editor, topic_sink), "only an admin");
    let tail = ok(&ferry(
        &api,
        Some(&editor),
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
    assert!(tail.contains("\"p1\""), "{tail}");
    refused(
        &ferry(&api, Some(&editor), &[], &["get", "brokers", "-A"]),
        "limited to namespace shop",
    );
    refused(
        &ferry(&api, Some(&editor), &[], &["token", "list"]),
        "may not administer",
    );
    assert_eq!(
        post(&server, Some(&editor), "shop", "orders", "e1").await,
        202
    );

    // Expired and revoked tokens: 401, saying which.
    eventually(WAIT, "the brief token to expire", || async {
        let o = ferry(&api, Some(&brief), &[], &["get", "brokers"]);
        (!o.status.success() && stderr(&o).contains("expired")).then_some(())
    })
    .await;
    ok(&ferry(&api, Some(&doomed), &[], &["get", "brokers"]));
    ok(&ferry(
        &api,
        Some(&admin),
        &[],
        &["token", "revoke", "doomed"],
    ));
    refused(
        &ferry(&api, Some(&doomed), &[], &["get", "brokers"]),
        "refused the token",
    );

    // The list shows names and roles, never a secret.
    let list = ok(&ferry(
        &api,
        Some(&admin),
        &[],
        &["token", "list", "-o", "json"],
    ));
    for name in ["admin", "shop-editor", "auditor", "shop-producer", "brief"] {
        assert!(list.contains(&format!("\"{name}\"")), "{list}");
    }
    assert!(!list.contains("doomed"), "{list}");

    // Every refusal counted, by listener and reason.
    let (_, metrics) = status(&format!("{api}/metrics"), Some(&admin)).await;
    let count = |labels: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("ferry_auth_refused_total{{{labels}}}")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    assert!(
        count("listener=\"api\",reason=\"unauthenticated\"") >= 6.0,
        "{metrics}"
    );
    assert!(
        count("listener=\"api\",reason=\"forbidden\"") >= 8.0,
        "{metrics}"
    );
    assert_eq!(
        count("listener=\"ingress\",reason=\"unauthenticated\""),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        count("listener=\"ingress\",reason=\"forbidden\""),
        2.0,
        "{metrics}"
    );

    // No token anywhere: not in the resources as YAML, not in metrics, not in the log.
    let yaml = ok(&ferry(
        &api,
        Some(&admin),
        &[],
        &["get", "brokers", "-A", "-o", "yaml"],
    ));
    server.terminate();
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
    for token in [&admin, &editor, &viewer, &producer, &brief, &doomed] {
        let secret = token.rsplit('.').next().unwrap();
        for (what, text) in [("yaml", &yaml), ("metrics", &metrics), ("log", &log)] {
            assert!(!text.contains(secret), "a token's secret is in the {what}");
        }
    }
    assert!(
        log.contains("admin-token"),
        "the log says where the admin token is"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_token_from_a_file_and_auth_none_refused_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("admin.secret");
    std::fs::write(&secret_file, "s3cret-from-the-orchestrator-0123456789\n").unwrap();
    let data = dir.path().join("data");
    let file_arg = secret_file.to_str().unwrap();
    let mut server = Server::start(&data, &["--auth", "tokens", "--admin-token-file", file_arg]);
    let admin = "s3cret-from-the-orchestrator-0123456789";
    ok(&ferry(&server.api, Some(admin), &[], &["get", "brokers"]));
    refused(
        &ferry(
            &server.api,
            Some("s3cret-from-the-orchestrator-012345678"),
            &[],
            &["get", "brokers"],
        ),
        "refused the token",
    );
    assert!(
        !data.join("admin-token").exists(),
        "no admin token made when one is given"
    );
    // `ferry --token X VERB`: the option before the verb works too.
    let before = Command::new(BIN)
        .args([
            "--token",
            admin,
            "--server",
            &server.api,
            "get",
            "brokers",
            "-A",
        ])
        .env_remove("FERRY_TOKEN")
        .env("FERRY_CLI_CONFIG", "/nonexistent/ferry-cli.yaml")
        .output()
        .unwrap();
    ok(&before);
    // Or the CLI's configuration file: server and token (from a file) there, nothing given.
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{admin}\n")).unwrap();
    let cli_config = dir.path().join("cli.yaml");
    let config_text = format!(
        "server: {}\ntoken-file: {}\n",
        server.api,
        token_file.display()
    );
    std::fs::write(&cli_config, config_text).unwrap();
    let from_file = |config: &std::path::Path| {
        Command::new(BIN)
            .args(["get", "brokers", "-A"])
            .env_remove("FERRY_TOKEN")
            .env_remove("FERRY_SERVER")
            .env("FERRY_CLI_CONFIG", config)
            .output()
            .unwrap()
    };
    ok(&from_file(&cli_config));
    // The file's token is for the file's server: named another way, that server gets none.
    let elsewhere = server.api.replace("127.0.0.1", "localhost");
    let other = Command::new(BIN)
        .args(["--server", &elsewhere, "get", "brokers"])
        .env_remove("FERRY_TOKEN")
        .env("FERRY_CLI_CONFIG", &cli_config)
        .output()
        .unwrap();
    refused(&other, "needs a token");
    std::fs::write(&cli_config, "server: x\ntokn: y\n").unwrap();
    let err = refused(&from_file(&cli_config), "cli.yaml");
    assert!(
        err.contains("tokn"),
        "the file and the field are named: {err}"
    );
    server.terminate();

    // Without auth on an address others can reach: refused, saying why and what to do.
    let other = dir.path().join("open");
    let out = Command::new(BIN)
        .args(["serve", "--data-dir", other.to_str().unwrap()])
        .args([
            "--api-listen",
            "0.0.0.0:0",
            "--ingress-listen",
            "127.0.0.1:0",
            "--gateway-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    for needle in [
        "api-listen",
        "0.0.0.0",
        "--auth tokens",
        "--insecure-no-auth",
    ] {
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
    }
    // Said explicitly, it starts.
    let mut open = Server::start(&other, &["--api-listen", "0.0.0.0:0", "--insecure-no-auth"]);
    let port = open.api.rsplit(':').next().unwrap().to_string();
    let (code, _) = status(&format!("http://127.0.0.1:{port}/api/v1/brokers"), None).await;
    assert_eq!(code, 200);
    open.terminate();
}
