//! `--kafka-security-protocol` and its companions: how Ferry's own Kafka clients authenticate
//! and encrypt. Secrets come from files (or, for the password, the env var
//! `FERRY_KAFKA_SASL_PASSWORD`), never from a flag's value, so they do not show in process
//! lists.

use broker::kafka::security::{KafkaSecurity, Protocol};
use std::path::{Path, PathBuf};

/// The settings as given (flags over the file).
#[derive(Default, PartialEq)]
pub(super) struct Given {
    pub protocol: Option<Protocol>,
    pub mechanism: Option<String>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

fn read(flag: &str, path: &Path, problems: &mut Vec<String>) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) => {
            problems.push(format!("{flag}: cannot read {}: {e}", path.display()));
            None
        }
    }
}

/// The security of Ferry's clients; every problem goes into `problems`.
pub(super) fn resolve(given: Given, problems: &mut Vec<String>) -> KafkaSecurity {
    // The env var is read for a SASL protocol only: one left in the environment does not
    // stop a plaintext start.
    let sasl = given.protocol.is_some_and(Protocol::sasl);
    let password = match (
        &given.password_file,
        std::env::var("FERRY_KAFKA_SASL_PASSWORD"),
    ) {
        (Some(path), _) => read("kafka-sasl-password-file", path, problems)
            .map(|p| p.trim_end_matches('\n').to_string()),
        (None, Ok(p)) if sasl => Some(p),
        (None, _) => None,
    };
    let security = KafkaSecurity {
        protocol: given.protocol.unwrap_or_default(),
        mechanism: given.mechanism,
        username: given.username,
        password,
        ca_pem: given
            .ca_file
            .and_then(|p| read("kafka-ca-file", &p, problems)),
        cert_pem: given
            .cert_file
            .and_then(|p| read("kafka-cert-file", &p, problems)),
        key_pem: given
            .key_file
            .and_then(|p| read("kafka-key-file", &p, problems)),
    };
    problems.extend(
        security
            .problems()
            .into_iter()
            .map(|p| format!("kafka security: {p}")),
    );
    security
}
