//! The control-API client.

use anyhow::{anyhow, Context};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// `--server`, shared by every client verb.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArg {
    /// URL of the Ferry control API.
    #[arg(
        long,
        env = "FERRY_SERVER",
        default_value = "http://127.0.0.1:8081",
        global = true
    )]
    pub server: String,
}

pub struct Client {
    http: reqwest::Client,
    base: String,
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
        Ok(Self {
            http: reqwest::Client::builder()
                .build()
                .context("building the HTTP client")?,
            base: server.server.trim_end_matches('/').to_string(),
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

    pub fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        anyhow!(
            "cannot reach the Ferry API at {}: is `ferry serve` running? ({e})",
            self.base
        )
    }
}
