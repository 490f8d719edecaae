//! The credentials of the Kafka clusters KafkaSources and KafkaSinks name, Knative's way
//! (secret references), without Kubernetes: a secret `NAME` of namespace `NS` is the directory
//! `<secrets-dir>/NS/NAME/` with one file per key (the layout of a Kubernetes secret mounted as
//! a volume; `--secrets-dir`, default `<data-dir>/secrets`), and a key may also come from the
//! environment variable `FERRY_SECRET__<NS>__<NAME>__<KEY>`, which wins: the three parts as
//! written, each character other than a letter or digit as `_` and its two hex digits (`-` is
//! `_2D`, `.` `_2E`, `_` `_5F`), so no two secrets share a variable. Every node of a cluster
//! needs the same secrets. Values read from secrets are never put into a message.
//!
//! - KafkaSource `spec.net`: `sasl: {enable, user, password, type}` and `tls: {enable, cert,
//!   key, caCert}`, each a `secretKeyRef: {name, key}`; `type` is `PLAIN`, `SCRAM-SHA-256` or
//!   `SCRAM-SHA-512` (PLAIN when not given).
//! - KafkaSink `spec.auth.secret.ref.name`: a secret with the keys Knative's Kafka sink reads:
//!   `protocol` (PLAINTEXT, SASL_PLAINTEXT, SSL, SASL_SSL), `sasl.mechanism`, `user`,
//!   `password`, `ca.crt`, `user.crt`, `user.key`.

use broker::kafka::security::{KafkaSecurity, Protocol};
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;

/// A `secretKeyRef`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretValue {
    pub secret_key_ref: SecretKeyRef,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Sasl {
    #[serde(default)]
    pub enable: bool,
    #[serde(default)]
    pub user: Option<SecretValue>,
    #[serde(default)]
    pub password: Option<SecretValue>,
    #[serde(default, rename = "type")]
    pub mechanism: Option<SecretValue>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tls {
    #[serde(default)]
    pub enable: bool,
    #[serde(default)]
    pub cert: Option<SecretValue>,
    #[serde(default)]
    pub key: Option<SecretValue>,
    #[serde(default)]
    pub ca_cert: Option<SecretValue>,
}

/// A KafkaSource's `spec.net`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Net {
    #[serde(default)]
    pub sasl: Sasl,
    #[serde(default)]
    pub tls: Tls,
}

/// A KafkaSink's `spec.auth`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    pub secret: AuthSecret,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthSecret {
    #[serde(rename = "ref")]
    pub reference: SecretName,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SecretName {
    pub name: String,
}

/// The environment variable that may hold a secret's key: one per (namespace, name, key).
fn env_name(ns: &str, name: &str, key: &str) -> String {
    let escape = |part: &str| -> String {
        part.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    char::from(b).to_string()
                } else {
                    format!("_{b:02X}")
                }
            })
            .collect()
    };
    format!(
        "FERRY_SECRET__{}__{}__{}",
        escape(ns),
        escape(name),
        escape(key)
    )
}

/// Key `key` of secret `ns/name`, if it exists; an error says where it was looked for.
fn lookup(dir: &Path, ns: &str, name: &str, key: &str) -> Result<Option<String>, String> {
    let var = env_name(ns, name, key);
    if let Ok(v) = std::env::var(&var) {
        return Ok(Some(v));
    }
    // Names are DNS labels or keys like `ca.crt`: nothing may climb out of the directory.
    let safe = |s: &str| !s.is_empty() && !s.contains('/') && s != "." && s != "..";
    if !safe(ns) || !safe(name) || !safe(key) {
        return Err(format!("secret {ns}/{name} key {key:?}: not a valid name"));
    }
    let path = dir.join(ns).join(name).join(key);
    match std::fs::read_to_string(&path) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!(
            "secret {ns}/{name}: cannot read {}: {e}",
            path.display()
        )),
    }
}

fn required(dir: &Path, ns: &str, r: &SecretKeyRef) -> Result<String, String> {
    lookup(dir, ns, &r.name, &r.key)?.ok_or_else(|| {
        format!(
            "secret {ns}/{} has no key {:?} (file {} or env {})",
            r.name,
            r.key,
            dir.join(ns).join(&r.name).join(&r.key).display(),
            env_name(ns, &r.name, &r.key)
        )
    })
}

/// The security of a KafkaSource's cluster, from its `spec.net`.
pub fn source_security(dir: &Path, ns: &str, net: &Net) -> Result<KafkaSecurity, String> {
    let value = |v: &Option<SecretValue>| -> Result<Option<String>, String> {
        v.as_ref()
            .map(|v| required(dir, ns, &v.secret_key_ref))
            .transpose()
    };
    let protocol = match (net.sasl.enable, net.tls.enable) {
        (false, false) => Protocol::Plaintext,
        (false, true) => Protocol::Ssl,
        (true, false) => Protocol::SaslPlaintext,
        (true, true) => Protocol::SaslSsl,
    };
    let mut s = KafkaSecurity {
        protocol,
        ..Default::default()
    };
    if net.sasl.enable {
        s.username = value(&net.sasl.user)?.map(|u| u.trim().to_string());
        s.password = value(&net.sasl.password)?.map(|p| p.trim_end_matches('\n').to_string());
        let from = net.sasl.mechanism.as_ref().map_or_else(String::new, |v| {
            let r = &v.secret_key_ref;
            format!("secret {ns}/{} key {}", r.name, r.key)
        });
        s.mechanism = Some(mechanism(value(&net.sasl.mechanism)?, &from)?);
    }
    if net.tls.enable {
        s.ca_pem = value(&net.tls.ca_cert)?;
        s.cert_pem = value(&net.tls.cert)?;
        s.key_pem = value(&net.tls.key)?;
    }
    checked(s)
}

/// The security of a KafkaSink's cluster, from its `spec.auth` secret.
pub fn sink_security(dir: &Path, ns: &str, auth: &Auth) -> Result<KafkaSecurity, String> {
    let name = &auth.secret.reference.name;
    let key = |k: &str| lookup(dir, ns, name, k);
    let protocol = match key("protocol")? {
        Some(p) => p.trim().parse::<Protocol>().map_err(|_| {
            format!(
                "secret {ns}/{name} key protocol: use PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
            )
        })?,
        None => {
            return Err(format!(
                "secret {ns}/{name} has no key \"protocol\" (file {} or env {})",
                dir.join(ns).join(name).join("protocol").display(),
                env_name(ns, name, "protocol")
            ))
        }
    };
    let trimmed = |v: Option<String>| v.map(|v| v.trim().to_string());
    let s = KafkaSecurity {
        protocol,
        // Knative's sink takes PLAIN when the secret names no mechanism.
        mechanism: if protocol.sasl() {
            Some(mechanism(
                key("sasl.mechanism")?,
                &format!("secret {ns}/{name} key sasl.mechanism"),
            )?)
        } else {
            trimmed(key("sasl.mechanism")?)
        },
        username: trimmed(key("user")?),
        password: key("password")?.map(|p| p.trim_end_matches('\n').to_string()),
        ca_pem: key("ca.crt")?,
        cert_pem: key("user.crt")?,
        key_pem: key("user.key")?,
    };
    checked(s)
}

/// A SASL mechanism read from a secret (PLAIN when none is given), checked without quoting it.
/// (`from` names the secret and key, for the message.)
fn mechanism(value: Option<String>, from: &str) -> Result<String, String> {
    let m = value.map_or_else(|| "PLAIN".to_string(), |m| m.trim().to_string());
    if broker::kafka::security::MECHANISMS.contains(&m.as_str()) {
        Ok(m)
    } else {
        Err(format!(
            "{from}: the SASL mechanism is not one of {}",
            broker::kafka::security::MECHANISMS.join(", ")
        ))
    }
}

fn checked(s: KafkaSecurity) -> Result<KafkaSecurity, String> {
    let problems = s.problems();
    if problems.is_empty() {
        Ok(s)
    } else {
        Err(problems.join("; "))
    }
}

/// Checks the shape of a KafkaSource's `spec.net`.
pub fn validate_net(field: &str, v: &Value, err: &mut impl FnMut(&str, String)) {
    validate_shape::<Net>(field, v, err);
}

/// Checks the shape of a KafkaSink's `spec.auth`.
pub fn validate_auth(field: &str, v: &Value, err: &mut impl FnMut(&str, String)) {
    validate_shape::<Auth>(field, v, err);
}

/// `v` decodes as a `T`, else the error names the field inside it.
fn validate_shape<T: serde::de::DeserializeOwned>(
    field: &str,
    v: &Value,
    err: &mut impl FnMut(&str, String),
) {
    if let Err(e) = serde_path_to_error::deserialize::<_, T>(v) {
        let path = e.path().to_string();
        let at = if path == "." {
            field.to_string()
        } else {
            format!("{field}.{path}")
        };
        err(&at, e.inner().to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secret(dir: &Path, ns: &str, name: &str, pairs: &[(&str, &str)]) {
        let d = dir.join(ns).join(name);
        std::fs::create_dir_all(&d).unwrap();
        for (k, v) in pairs {
            std::fs::write(d.join(k), v).unwrap();
        }
    }

    #[test]
    fn a_sources_net_reads_its_secret_keys() {
        let dir = tempfile::tempdir().unwrap();
        secret(
            dir.path(),
            "shop",
            "kafka",
            &[
                ("user", "ferry\n"),
                ("password", "s3cret"),
                ("saslType", "SCRAM-SHA-512"),
                ("ca.crt", "CA"),
            ],
        );
        let net: Net = serde_json::from_value(json!({
            "sasl": {"enable": true,
                     "user": {"secretKeyRef": {"name": "kafka", "key": "user"}},
                     "password": {"secretKeyRef": {"name": "kafka", "key": "password"}},
                     "type": {"secretKeyRef": {"name": "kafka", "key": "saslType"}}},
            "tls": {"enable": true, "caCert": {"secretKeyRef": {"name": "kafka", "key": "ca.crt"}}},
        }))
        .unwrap();
        let s = source_security(dir.path(), "shop", &net).unwrap();
        assert_eq!(s.protocol, Protocol::SaslSsl);
        assert_eq!(s.mechanism.as_deref(), Some("SCRAM-SHA-512"));
        assert_eq!(
            (s.username.as_deref(), s.password.as_deref()),
            (Some("ferry"), Some("s3cret"))
        );
        assert_eq!(s.ca_pem.as_deref(), Some("CA"));
        // Another namespace's secret of that name is not this one.
        let err = source_security(dir.path(), "other", &net).unwrap_err();
        assert!(
            err.contains("other/kafka") && err.contains("FERRY_SECRET__other__kafka__user"),
            "{err}"
        );
    }

    #[test]
    fn a_sinks_auth_secret_gives_protocol_and_credentials() {
        let dir = tempfile::tempdir().unwrap();
        secret(
            dir.path(),
            "ns",
            "creds",
            &[
                ("protocol", "SASL_PLAINTEXT"),
                ("sasl.mechanism", "PLAIN"),
                ("user", "u"),
                ("password", "p"),
            ],
        );
        let auth: Auth =
            serde_json::from_value(json!({"secret": {"ref": {"name": "creds"}}})).unwrap();
        let s = sink_security(dir.path(), "ns", &auth).unwrap();
        assert_eq!(
            (s.protocol, s.mechanism.as_deref()),
            (Protocol::SaslPlaintext, Some("PLAIN"))
        );
        secret(dir.path(), "ns", "half", &[("protocol", "SASL_SSL")]);
        let half: Auth =
            serde_json::from_value(json!({"secret": {"ref": {"name": "half"}}})).unwrap();
        let err = sink_security(dir.path(), "ns", &half).unwrap_err();
        assert!(err.contains("user") && err.contains("password"), "{err}");
        // A value that is not a mechanism is not quoted back.
        secret(
            dir.path(),
            "ns",
            "odd",
            &[
                ("protocol", "SASL_SSL"),
                ("sasl.mechanism", "hunter2"),
                ("user", "u"),
                ("password", "p"),
            ],
        );
        let odd: Auth =
            serde_json::from_value(json!({"secret": {"ref": {"name": "odd"}}})).unwrap();
        let err = sink_security(dir.path(), "ns", &odd).unwrap_err();
        assert!(
            err.contains("not one of")
                && err.contains("ns/odd key sasl.mechanism")
                && !err.contains("hunter2"),
            "{err}"
        );
        let bad: Auth =
            serde_json::from_value(json!({"secret": {"ref": {"name": "../etc"}}})).unwrap();
        assert!(sink_security(dir.path(), "ns", &bad).is_err());
    }

    #[test]
    fn secrets_of_different_names_never_share_a_variable() {
        assert_ne!(
            env_name("team", "prod-kafka", "password"),
            env_name("team-prod", "kafka", "password")
        );
        assert_eq!(
            env_name("a-b", "c", "ca.crt"),
            "FERRY_SECRET__a_2Db__c__ca_2Ecrt"
        );
    }

    #[test]
    fn shapes_are_checked_with_their_paths() {
        let mut errors = Vec::new();
        validate_net(
            "spec.net",
            &json!({"sasl": {"enable": "yes"}}),
            &mut |f: &str, m: String| errors.push((f.to_string(), m)),
        );
        validate_auth(
            "spec.auth",
            &json!({"secret": {"name": "x"}}),
            &mut |f: &str, m: String| errors.push((f.to_string(), m)),
        );
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].0.starts_with("spec.net.sasl"), "{errors:?}");
        assert!(errors[1].0.starts_with("spec.auth.secret"), "{errors:?}");
    }
}
