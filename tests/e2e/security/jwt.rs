//! JWTs of an identity provider (keys made here): audience, expiry, not-before, issuer,
//! signature and algorithm checked; roles from claims on the control API.

use super::support::*;
use crate::support::{binary_post, Server};
use base64::Engine;
use serde_json::{json, Value};

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

    // The same issuer's keys from a URL (an identity provider's JWKS endpoint).
    let served = idp.jwks.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let keys = served.clone();
            async move { axum::Json(keys) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut server = server;
    server.terminate();
    let from_url = Server::start(
        &dir.path().join("url"),
        &[
            "--auth",
            "tokens",
            "--jwks",
            &jwks_url,
            "--jwt-issuer",
            "https://idp.test",
        ],
    );
    assert_eq!(
        post_jwt(&from_url, &good, "default", "default", "u1")
            .await
            .0,
        202
    );
    assert_eq!(
        post_jwt(&from_url, &forged, "default", "default", "u2")
            .await
            .0,
        401
    );
}
