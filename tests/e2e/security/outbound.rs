//! Deliveries: HTTPS with a destination's own CA, a Ferry token for the destination's audience
//! that verifies against Ferry's published keys (and opens nothing on the control API), no
//! redirects followed, metadata addresses refused.

use super::support::*;
use crate::subscriber::{Behaviour, TestSubscriber};
use crate::support::{eventually, Server};
use serde_json::Value;

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

    // A token Ferry minted for a delivery is no key to the control API, whatever its audience.
    let api_aud = format!(
        "apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: fishing}}
spec:
  broker: default
  subscriber:
    uri: {}
    audience: ferry
    CACerts: |
{}
",
        secure.at("fishing"),
        indent(&ca.ca_pem)
    );
    ok(&apply_as(&api, &admin, &api_aud));
    eventually(WAIT, "the fishing trigger to be ready", || async {
        let t = ferry(
            &api,
            Some(&admin),
            &[],
            &["get", "trigger", "fishing", "-o", "json"],
        );
        let t: Value = serde_json::from_slice(&t.stdout).ok()?;
        t["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
            .then_some(())
    })
    .await;
    assert_eq!(
        post(&server, Some(&admin), "default", "default", "sec-2").await,
        202
    );
    let caught = secure.wait_for("fishing", 1, WAIT).await;
    let caught = caught[0].header("authorization").unwrap();
    let caught = caught.strip_prefix("Bearer ").unwrap();
    refused(
        &ferry(&api, Some(caught), &[], &["get", "brokers"]),
        "not accepted by the control API",
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
