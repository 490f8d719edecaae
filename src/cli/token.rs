//! `ferry token create|list|revoke`: API tokens of a server run with `--auth tokens` (an
//! admin's verbs). `create` prints the token alone on stdout, the only time it is shown; the
//! server keeps only its hash.

use super::client::{Client, ServerArg};
use super::get::{table, Output};
use anyhow::bail;
use reqwest::Method;
use serde_json::{json, Value};

#[derive(clap::Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a token and print it (once).
    Create {
        /// The token's name: its subject in policies and logs (a DNS label).
        #[arg(long)]
        name: String,
        /// admin, editor, viewer or producer.
        #[arg(long)]
        role: String,
        /// Limit the token to this namespace.
        #[arg(short, long)]
        namespace: Option<String>,
        /// Expire after this long (`30d`, `12h`) or at this time (RFC 3339); never if not given.
        #[arg(long)]
        expires: Option<String>,
    },
    /// The tokens: name, role, namespace, expiry (never the secret).
    List {
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Revoke a token: requests with it are refused from now on.
    Revoke { name: String },
}

/// `--expires`: a duration from now, or a time.
fn expiry(text: &str) -> anyhow::Result<String> {
    if let Ok(d) = humantime::parse_duration(text) {
        let d = chrono::Duration::from_std(d)
            .map_err(|_| anyhow::anyhow!("--expires {text:?}: too far away"))?;
        return Ok((chrono::Utc::now() + d).to_rfc3339());
    }
    match chrono::DateTime::parse_from_rfc3339(text) {
        Ok(t) => Ok(t.to_rfc3339()),
        Err(_) => bail!(
            "--expires {text:?}: give a duration like 30d or a time like 2027-01-01T00:00:00Z"
        ),
    }
}

pub async fn run(cmd: TokenCommand, server: ServerArg) -> anyhow::Result<()> {
    let client = Client::new(&server)?;
    match cmd {
        TokenCommand::Create {
            name,
            role,
            namespace,
            expires,
        } => {
            let mut body = json!({ "name": name, "role": role });
            if let Some(ns) = namespace {
                body["namespace"] = json!(ns);
            }
            if let Some(e) = expires {
                body["expires"] = json!(expiry(&e)?);
            }
            let made = client
                .request(Method::POST, "/api/v1/tokens", Some(&body))
                .await?;
            let Some(token) = made["token"].as_str() else {
                bail!("the server answered without a token: {made}");
            };
            println!("{token}");
            eprintln!("token {name} ({role}) made; it is shown only now: keep it somewhere safe");
        }
        TokenCommand::List { output } => {
            let list = client.request(Method::GET, "/api/v1/tokens", None).await?;
            let items = list["items"].as_array().cloned().unwrap_or_default();
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&items)?),
                Output::Yaml => print!("{}", serde_yaml_ng::to_string(&items)?),
                Output::Table => {
                    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
                    let rows: Vec<Value> = items
                        .iter()
                        .map(|t| {
                            json!([
                                s(&t["name"]),
                                s(&t["role"]),
                                t["namespace"].as_str().unwrap_or("*"),
                                t["expires"].as_str().unwrap_or("never"),
                                s(&t["created"]),
                            ])
                        })
                        .collect();
                    let columns = json!(["NAME", "ROLE", "NAMESPACE", "EXPIRES", "CREATED"]);
                    print!("{}", table(&columns, &rows));
                }
            }
        }
        TokenCommand::Revoke { name } => {
            client
                .request(Method::DELETE, &format!("/api/v1/tokens/{name}"), None)
                .await?;
            println!("token {name} revoked");
        }
    }
    Ok(())
}
