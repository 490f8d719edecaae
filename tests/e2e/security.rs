//! Security through the real binary: `--auth tokens` (401 without or with a bad token, 403 by
//! role and namespace, tokens made, expired and revoked through the CLI, nothing of a token in
//! logs, metrics or `-o yaml`), the admin token bootstrap, `--auth none` refused off
//! loopback, and TLS on every listener with a test CA (the CLI and a CloudEvents client
//! connect; a renewed certificate is served after SIGHUP).

use crate::support::{binary_post, eventually, stderr, stdout, Server, BIN};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// The CLI against `api`, with `token` (if any) in FERRY_TOKEN and `extra` env.
pub(super) fn ferry(
    api: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
    args: &[&str],
) -> Output {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("FERRY_SERVER", api)
        .env_remove("FERRY_TOKEN")
        .env_remove("FERRY_CA_FILE")
        .stdin(Stdio::null());
    if let Some(t) = token {
        c.env("FERRY_TOKEN", t);
    }
    for (k, v) in extra {
        c.env(k, v);
    }
    c.output().unwrap()
}

pub(super) fn ok(o: &Output) -> String {
    assert!(o.status.success(), "ferry failed: {}", stderr(o));
    stdout(o)
}

pub(super) fn refused(o: &Output, needle: &str) -> String {
    assert!(
        !o.status.success(),
        "ferry should have failed: {}",
        stdout(o)
    );
    let err = stderr(o);
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    err
}

/// `ferry apply -f -` of `yaml` with `token`.
pub(super) fn apply_as(api: &str, token: &str, yaml: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(["apply", "-f", "-"])
        .env("FERRY_SERVER", api)
        .env("FERRY_TOKEN", token)
        .env_remove("FERRY_CA_FILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Makes a token through the CLI; returns it (stdout is the token alone).
pub(super) fn create_token(api: &str, admin: &str, env: &[(&str, &str)], args: &[&str]) -> String {
    let mut all = vec!["token", "create"];
    all.extend_from_slice(args);
    let out = ok(&ferry(api, Some(admin), env, &all));
    let token = out.trim().to_string();
    assert_eq!(
        out.lines().count(),
        1,
        "create prints the token alone: {out:?}"
    );
    assert!(token.starts_with("ferry."), "{token}");
    token
}

pub(super) async fn post(
    server: &Server,
    token: Option<&str>,
    ns: &str,
    broker: &str,
    id: &str,
) -> u16 {
    let client = reqwest::Client::new();
    let url = format!("{}/{ns}/{broker}", server.ingress);
    let mut req = binary_post(&client, &url, id, &[], b"{}");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap().status().as_u16()
}

pub(super) async fn status(url: &str, token: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let code = resp.status().as_u16();
    (code, resp.text().await.unwrap_or_default())
}

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
    let admin = std::fs::read_to_string(&admin_file)
        .unwrap()
        .trim()
        .to_string();

    // No token: 401 everywhere but the probes; the CLI says how to pass one.
    let err = refused(&ferry(&api, None, &[], &["get", "brokers"]), "--token");
    assert!(err.contains("FERRY_TOKEN"), "{err}");
    for path in [
        "/api/v1/brokers",
        "/api/v1/api-resources",
        "/metrics",
        "/api/v1/tokens",
    ] {
        let (code, body) = status(&format!("{api}{path}"), None).await;
        assert_eq!(code, 401, "{path}: {body}");
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
        .output()
        .unwrap();
    ok(&before);
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

/// A test CA and a certificate for 127.0.0.1 and localhost it signed.
pub(super) struct TestCa {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

pub(super) fn test_ca(name: &str) -> TestCa {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, name);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    TestCa {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: leaf_key.serialize_pem(),
    }
}

pub(super) fn https_client(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap()
}

pub(super) fn write(path: &Path, text: &str) {
    // Written beside and renamed: the server never reads a half-written file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

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
