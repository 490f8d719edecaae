//! Security beyond tokens, through the real binary: JWTs of an identity provider (keys made
//! here), EventPolicies (allow, deny, a CESQL filter, the namespace default, a source's
//! identity by `from.ref`), and deliveries: HTTPS with a destination's own CA, a Ferry token
//! for the destination's audience that verifies against Ferry's published keys, no redirects
//! followed, metadata addresses refused.

use super::security::{apply_as, create_token, ferry, ok, post, refused, status, test_ca, write};
use crate::subscriber::{Behaviour, TestSubscriber};
use crate::support::{binary_post, eventually, Server};
use base64::Engine;
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn admin_of(data: &std::path::Path) -> String {
    std::fs::read_to_string(data.join("admin-token"))
        .unwrap()
        .trim()
        .to_string()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A test identity provider: a P-256 key, its JWKS, and JWTs signed with it.
struct Idp {
    key: jsonwebtoken::EncodingKey,
    jwks: Value,
}

impl Idp {
    fn new(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate().unwrap();
        let raw = pair.public_key_raw();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
            "use": "sig", "x": b64(&raw[1..33]), "y": b64(&raw[33..65])}]});
        let key = jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        Idp { key, jwks }
    }

    fn jwt(&self, kid: &str, claims: Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}

async fn post_jwt(server: &Server, jwt: &str, ns: &str, broker: &str, id: &str) -> (u16, String) {
    let client = reqwest::Client::new();
    let url = format!("{}/{ns}/{broker}", server.ingress);
    let resp = binary_post(&client, &url, id, &[], b"{}")
        .bearer_auth(jwt)
        .send()
        .await
        .unwrap();
    let code = resp.status().as_u16();
    (code, resp.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwts_of_an_identity_provider_are_verified() {
    let dir = tempfile::tempdir().unwrap();
    let idp = Idp::new("idp-1");
    let jwks = dir.path().join("jwks.json");
    write(&jwks, &idp.jwks.to_string());
    let data = dir.path().join("data");
    let server = Server::start(
        &data,
        &[
            "--auth",
            "tokens",
            "--jwks",
            jwks.to_str().unwrap(),
            "--jwt-issuer",
            "https://idp.test",
        ],
    );
    let broker_aud = "eventing.knative.dev/broker/default/default";
    let claims = |sub: &str, aud: &str| {
        json!({"iss": "https://idp.test", "sub": sub, "aud": aud, "exp": now() + 300,
               "nbf": now() - 10, "iat": now()})
    };
    let shipper = "system:serviceaccount:default:shipper";

    // A JWT for the broker's audience, from its namespace: accepted.
    let good = idp.jwt("idp-1", claims(shipper, broker_aud));
    assert_eq!(
        post_jwt(&server, &good, "default", "default", "j1").await.0,
        202
    );
    // The broker publishes the audience a sender needs.
    let admin = admin_of(&data);
    let broker = ok(&ferry(
        &server.api,
        Some(&admin),
        &[],
        &["get", "broker", "default", "-o", "json"],
    ));
    let broker: Value = serde_json::from_str(&broker).unwrap();
    assert_eq!(broker["status"]["address"]["audience"], broker_aud);

    // Refused, each saying why: another audience, expired, not yet valid, another issuer,
    // another key under the same id, an algorithm not accepted.
    let cases = [
        (
            claims(shipper, "eventing.knative.dev/broker/default/other"),
            "audience",
        ),
        (
            {
                let mut c = claims(shipper, broker_aud);
                c["exp"] = json!(now() - 120);
                c
            },
            "expired",
        ),
        (
            {
                let mut c = claims(shipper, broker_aud);
                c["nbf"] = json!(now() + 600);
                c
            },
            "not valid yet",
        ),
        (
            {
                let mut c = claims(shipper, broker_aud);
                c["iss"] = json!("https://evil.test");
                c
            },
            "issuer",
        ),
    ];
    for (claims, why) in cases {
        let (code, body) = post_jwt(
            &server,
            &idp.jwt("idp-1", claims),
            "default",
            "default",
            "x",
        )
        .await;
        assert_eq!(code, 401, "{why}: {body}");
        assert!(body.contains(why), "expected {why:?} in {body}");
    }
    let forger = Idp::new("idp-1");
    let forged = forger.jwt("idp-1", claims(shipper, broker_aud));
    let (code, body) = post_jwt(&server, &forged, "default", "default", "x").await;
    assert_eq!((code, body.contains("signature")), (401, true), "{body}");
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims(shipper, broker_aud),
        &jsonwebtoken::EncodingKey::from_secret(b"guessable"),
    )
    .unwrap();
    assert_eq!(
        post_jwt(&server, &hs, "default", "default", "x").await.0,
        401
    );

    // A subject of another namespace, with no EventPolicy: the default (allow-same-namespace)
    // refuses it.
    let stranger = idp.jwt(
        "idp-1",
        claims("system:serviceaccount:other:app", broker_aud),
    );
    let (code, body) = post_jwt(&server, &stranger, "default", "default", "x").await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("allow-same-namespace"), "{body}");

    // The control API: the API's audience, the role in a claim.
    let mut viewer = claims("ops@example.com", "ferry");
    viewer["ferry.dev/role"] = json!("viewer");
    let viewer = idp.jwt("idp-1", viewer);
    ok(&ferry(
        &server.api,
        Some(&viewer),
        &[],
        &["get", "brokers", "-A"],
    ));
    refused(
        &apply_as(
            &server.api,
            &viewer,
            "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: b}\n",
        ),
        "may not change resources",
    );
    // A broker's JWT is not one for the API.
    refused(
        &ferry(&server.api, Some(&good), &[], &["get", "brokers"]),
        "audience",
    );
    // Ferry publishes its own issuer's keys for subscribers to verify its deliveries.
    let (code, keys) = status(&format!("{}/.well-known/jwks.json", server.api), None).await;
    assert_eq!(code, 200, "{keys}");
    let keys: Value = serde_json::from_str(&keys).unwrap();
    assert_eq!(keys["keys"][0]["alg"], "ES256");
    let tail = ok(&ferry(
        &server.api,
        Some(&admin),
        &[],
        &[
            "tail",
            "default",
            "--from-beginning",
            "--no-follow",
            "-o",
            "json",
        ],
    ));
    assert_eq!(
        tail.lines().count(),
        1,
        "only the accepted event is stored: {tail}"
    );
}

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
",
            sub.at("got")
        ),
    ));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_use_https_with_the_destinations_ca_carry_a_ferry_token_and_go_nowhere_else() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--auth", "tokens"]);
    let (api, admin) = (server.api.clone(), admin_of(&data));

    // An HTTPS subscriber whose certificate a private CA signed.
    let ca = test_ca("Subscriber CA");
    let (cert, key) = (dir.path().join("sub.pem"), dir.path().join("sub-key.pem"));
    write(&cert, &ca.cert_pem);
    write(&key, &ca.key_pem);
    let secure = TestSubscriber::start_tls(ingress::Tls::open(&cert, &key).unwrap()).await;
    let plain = TestSubscriber::start().await;
    plain.set("moved", Behaviour::Redirect(plain.at("elsewhere")));
    let indent = |pem: &str| {
        pem.lines()
            .map(|l| format!("      {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let triggers = format!(
        "apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: secure}}
spec:
  broker: default
  subscriber:
    uri: {secure_url}
    audience: https://subscriber.test
    CACerts: |
{ca}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: untrusting}}
spec:
  broker: default
  subscriber: {{uri: {untrusted_url}}}
  delivery: {{retry: 0}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: redirected}}
spec:
  broker: default
  subscriber: {{uri: {moved}}}
  delivery: {{retry: 0}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: metadata}}
spec:
  broker: default
  subscriber: {{uri: http://169.254.169.254/latest/meta-data/}}
",
        secure_url = secure.at("in"),
        ca = indent(&ca.ca_pem),
        untrusted_url = secure.at("untrusted"),
        moved = plain.at("moved"),
    );
    ok(&apply_as(&api, &admin, &triggers));

    // The metadata address is refused: the trigger says why.
    let reason = eventually(WAIT, "the metadata trigger to be refused", || async {
        let t = ferry(
            &api,
            Some(&admin),
            &[],
            &["get", "trigger", "metadata", "-o", "json"],
        );
        let t: Value = serde_json::from_slice(&t.stdout).ok()?;
        let ready = t["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")?
            .clone();
        (ready["status"] == "False").then_some(ready)
    })
    .await;
    assert_eq!(reason["reason"], "DestinationDenied", "{reason}");
    assert!(
        reason["message"]
            .as_str()
            .unwrap()
            .contains("169.254.0.0/16"),
        "{reason}"
    );

    eventually(WAIT, "the other triggers to be ready", || async {
        let out = ferry(&api, Some(&admin), &[], &["get", "triggers", "-o", "json"]);
        let list: Value = serde_json::from_slice(&out.stdout).ok()?;
        let ready = list["items"]
            .as_array()?
            .iter()
            .filter(|t| {
                t["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
            })
            .count();
        (ready == 3).then_some(())
    })
    .await;
    assert_eq!(
        post(&server, Some(&admin), "default", "default", "sec-1").await,
        202
    );

    // Over HTTPS with the destination's CA, with a token for its audience that verifies
    // against the keys Ferry publishes.
    let got = secure.wait_for("in", 1, WAIT).await;
    assert_eq!(got[0].id(), "sec-1");
    let bearer = got[0]
        .header("authorization")
        .expect("a token with the delivery");
    let token = bearer.strip_prefix("Bearer ").unwrap();
    let (_, discovery) = status(&format!("{api}/.well-known/openid-configuration"), None).await;
    let discovery: Value = serde_json::from_str(&discovery).unwrap();
    let (_, keys) = status(discovery["jwks_uri"].as_str().unwrap(), None).await;
    let keys: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&keys).unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    let jwk = keys.find(header.kid.as_deref().unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&["https://subscriber.test"]);
    validation.set_issuer(&[discovery["issuer"].as_str().unwrap()]);
    let claims = jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
        &validation,
    )
    .unwrap()
    .claims;
    assert_eq!(
        claims["sub"],
        "system:serviceaccount:default:ferry-trigger-secure"
    );

    // Without the CA the certificate is not trusted: dead-lettered, never delivered.
    // A redirect is not followed: dead-lettered, and its target never hears of it.
    for (trigger, why) in [("untrusting", "certificate"), ("redirected", "302")] {
        let letter = eventually(WAIT, "a dead letter", || async {
            let out = ferry(
                &api,
                Some(&admin),
                &[],
                &["dlq", "list", trigger, "-o", "json"],
            );
            let list: Value = serde_json::from_slice(&out.stdout).ok()?;
            list["items"].as_array().and_then(|l| l.first().cloned())
        })
        .await;
        assert!(letter.to_string().contains(why), "{trigger}: {letter}");
    }
    assert!(secure.received("untrusted").is_empty());
    assert!(plain.received("elsewhere").is_empty());
}
