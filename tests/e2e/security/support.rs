//! The security tests' helpers: the CLI with a token, applying as someone, tokens, plain
//! requests, a test CA.

use crate::support::{binary_post, stderr, stdout, Server, BIN};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

pub const WAIT: Duration = Duration::from_secs(30);

/// The CLI against `api`, with `token` (if any) in FERRY_TOKEN and `extra` env.
pub fn ferry(api: &str, token: Option<&str>, extra: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("FERRY_SERVER", api)
        .env_remove("FERRY_TOKEN")
        .env_remove("FERRY_CA_FILE")
        .env("FERRY_CLI_CONFIG", "/nonexistent/ferry-cli.yaml")
        .stdin(Stdio::null());
    if let Some(t) = token {
        c.env("FERRY_TOKEN", t);
    }
    for (k, v) in extra {
        c.env(k, v);
    }
    c.output().unwrap()
}

pub fn ok(o: &Output) -> String {
    assert!(o.status.success(), "ferry failed: {}", stderr(o));
    stdout(o)
}

pub fn refused(o: &Output, needle: &str) -> String {
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
pub fn apply_as(api: &str, token: &str, yaml: &str) -> Output {
    apply_with(api, Some(token), None, yaml)
}

/// [`apply_as`] with the CLI trusting `ca_file`.
pub fn apply_as_ca(api: &str, token: &str, ca_file: &str, yaml: &str) -> Output {
    apply_with(api, Some(token), Some(ca_file), yaml)
}

/// `ferry apply -f -` with `token` (if any) and the CLI trusting `ca_file` (if any).
pub fn apply_with(api: &str, token: Option<&str>, ca_file: Option<&str>, yaml: &str) -> Output {
    use std::io::Write;
    let mut command = Command::new(BIN);
    command
        .args(["apply", "-f", "-"])
        .env("FERRY_SERVER", api)
        .env_remove("FERRY_TOKEN")
        .env_remove("FERRY_CA_FILE")
        .env("FERRY_CLI_CONFIG", "/nonexistent/ferry-cli.yaml")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(token) = token {
        command.env("FERRY_TOKEN", token);
    }
    if let Some(ca) = ca_file {
        command.env("FERRY_CA_FILE", ca);
    }
    let mut child = command.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Makes a token through the CLI; returns it (stdout is the token alone).
pub fn create_token(api: &str, admin: &str, env: &[(&str, &str)], args: &[&str]) -> String {
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

pub async fn post(server: &Server, token: Option<&str>, ns: &str, broker: &str, id: &str) -> u16 {
    let client = reqwest::Client::new();
    let url = format!("{}/{ns}/{broker}", server.ingress);
    let mut req = binary_post(&client, &url, id, &[], b"{}");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap().status().as_u16()
}

pub async fn status(url: &str, token: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let code = resp.status().as_u16();
    (code, resp.text().await.unwrap_or_default())
}

pub fn admin_of(data: &std::path::Path) -> String {
    std::fs::read_to_string(data.join("admin-token"))
        .unwrap()
        .trim()
        .to_string()
}

/// A test CA and a certificate for 127.0.0.1 and localhost it signed.
pub struct TestCa {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn test_ca(name: &str) -> TestCa {
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

pub fn https_client(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap()
}

pub fn write(path: &Path, text: &str) {
    // Written beside and renamed: the server never reads a half-written file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
