//! The control-API client.

use anyhow::{anyhow, Context};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Where the control API is when nothing says.
const DEFAULT_SERVER: &str = "http://127.0.0.1:8081";

/// `--server`, `--token`, `--ca-file`: options of `ferry` itself, given before or after the
/// verb, shared by every client verb; what they leave out comes from the CLI's configuration
/// file ([`super::config`]).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServerArg {
    /// URL of the Ferry control API [default: http://127.0.0.1:8081].
    #[arg(long, env = "FERRY_SERVER", global = true)]
    pub server: Option<String>,
    /// Bearer token for a server run with `--auth tokens` (`ferry token create` makes one;
    /// the first admin token is in the server's <data-dir>/admin-token).
    #[arg(long, env = "FERRY_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA certificate(s) that signed the server's certificate (a private CA), trusted
    /// besides the system's roots.
    #[arg(long, env = "FERRY_CA_FILE", global = true)]
    pub ca_file: Option<std::path::PathBuf>,
}

impl ServerArg {
    /// Fills what flags and env left out from the CLI's configuration file, if there is one.
    pub fn with_config_file(mut self) -> anyhow::Result<Self> {
        let Some(path) = super::config::path() else {
            return Ok(self);
        };
        let file = super::config::CliConfig::read(&path)?;
        // The file's token and CA are for the file's server: another server given by a flag or
        // the environment does not get them.
        let trimmed =
            |s: &Option<String>| s.as_deref().map(|s| s.trim_end_matches('/').to_string());
        let same_server = self.server.is_none() || trimmed(&self.server) == trimmed(&file.server);
        if self.server.is_none() {
            self.server = file.server.clone();
        }
        if same_server {
            if self.token.is_none() {
                self.token = file.token(&path)?;
            }
            if self.ca_file.is_none() {
                self.ca_file = file.ca_file.clone();
            }
        }
        Ok(self)
    }
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    /// A token was given.
    authenticated: bool,
}

/// A non-2xx answer of the API: its status and JSON body.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: Value,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.body.get("error").and_then(Value::as_str) {
            Some(msg) => write!(f, "{msg}"),
            None => write!(f, "server answered {}", self.status),
        }
    }
}

impl std::error::Error for ApiError {}

impl Client {
    pub fn new(server: &ServerArg) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder();
        if let Some(token) = &server.token {
            let mut value =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
                    .map_err(|_| anyhow!("--token: a token is printable ASCII text"))?;
            value.set_sensitive(true);
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::AUTHORIZATION, value);
            builder = builder.default_headers(headers);
        }
        if let Some(path) = &server.ca_file {
            let pem = std::fs::read(path)
                .with_context(|| format!("--ca-file: cannot read {}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
                format!("--ca-file: {} holds no PEM certificate", path.display())
            })?;
            if certs.is_empty() {
                anyhow::bail!("--ca-file: {} holds no PEM certificate", path.display());
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(Self {
            http: builder.build().context("building the HTTP client")?,
            base: server
                .server
                .as_deref()
                .unwrap_or(DEFAULT_SERVER)
                .trim_end_matches('/')
                .to_string(),
            authenticated: server.token.is_some(),
        })
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request; `Ok(Err(ApiError))` is an answer the caller may want to look into.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Result<Value, ApiError>> {
        let mut req = self.http.request(method, self.url(path));
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let text = resp.text().await.context("reading the API's answer")?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status == StatusCode::UNAUTHORIZED {
            return Err(self.unauthenticated(&body));
        }
        if status.is_success() {
            Ok(Ok(body))
        } else {
            Ok(Err(ApiError { status, body }))
        }
    }

    /// Like `call`, with an API error turned into an error.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        Ok(self.call(method, path, body).await??)
    }

    /// A 401: what to do about it.
    pub fn unauthenticated(&self, body: &Value) -> anyhow::Error {
        let said = body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("401 Unauthorized");
        if self.authenticated {
            anyhow!("the Ferry API at {} refused the token: {said}", self.base)
        } else {
            anyhow!(
                "the Ferry API at {} needs a token: pass --token TOKEN or set FERRY_TOKEN \
                 (on its first start with --auth tokens the server wrote an admin token to \
                 <data-dir>/admin-token; `ferry token create` makes others)",
                self.base
            )
        }
    }

    pub fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        anyhow!(
            "cannot reach the Ferry API at {}: is `ferry serve` running? ({e})",
            self.base
        )
    }
}
