//! The middleware in front of the control API and the ingress: authenticates the bearer
//! token, classifies the request, answers 401 (no or bad credentials, with
//! `WWW-Authenticate: Bearer`) or 403 (the message names the role or the namespace that is
//! missing), counts and logs each refusal without the token, and hands the [`Identity`] to
//! the handler as a request extension.

use super::{Action, Auth, AuthMode, Identity, Refusal, Scope};
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;

/// Which listener a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    Api,
    Ingress,
}

impl Listener {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Listener::Api => "api",
            Listener::Ingress => "ingress",
        }
    }
}

/// The middleware's state: `axum::middleware::from_fn_with_state(Guard {..}, guard)`.
#[derive(Clone)]
pub struct Guard {
    pub auth: Arc<Auth>,
    pub listener: Listener,
}

fn refuse(status: StatusCode, message: String) -> Response {
    let mut resp = (status, Json(serde_json::json!({ "error": message }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    resp
}

/// The bearer token of a request, if it has one.
fn bearer(req: &Request) -> Result<Option<&str>, String> {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| "the Authorization header is not text".to_string())?;
    match text.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err("the Authorization header must be `Bearer <token>`".to_string()),
    }
}

pub async fn guard(State(g): State<Guard>, mut req: Request, next: Next) -> Response {
    if g.auth.mode() == AuthMode::None {
        return next.run(req).await;
    }
    let path = req.uri().path().to_string();
    if g.listener == Listener::Api && is_open(&path) {
        return next.run(req).await;
    }
    let (audience, api) = match g.listener {
        Listener::Api => (g.auth.api_audience().to_string(), true),
        Listener::Ingress => (ingress_audience(&path), false),
    };
    let identity = match bearer(&req) {
        Ok(Some(token)) => g.auth.authenticate(token, &audience, api),
        Ok(None) => Err(Refusal::Unauthenticated(format!(
            "{} needs a token: send `Authorization: Bearer <token>` (the CLI: --token or FERRY_TOKEN)",
            path
        ))),
        Err(e) => Err(Refusal::Unauthenticated(e)),
    };
    let identity = match identity {
        Ok(i) => i,
        Err(Refusal::Unauthenticated(why)) => {
            g.auth.count_refusal(g.listener, "unauthenticated");
            tracing::warn!(listener = g.listener.as_str(), method = %req.method(), %path, reason = %why, "refused: unauthenticated");
            return refuse(StatusCode::UNAUTHORIZED, why);
        }
        Err(Refusal::Unavailable(why)) => {
            let mut resp = refuse(StatusCode::SERVICE_UNAVAILABLE, why);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            return resp;
        }
    };
    let query = req.uri().query().unwrap_or("").to_string();
    // HEAD is GET without the body; a kind is named by its plural however the request names it.
    let method = if req.method() == Method::HEAD {
        Method::GET
    } else {
        req.method().clone()
    };
    let registry = g.auth.control().registry();
    let plural = |name: &str| registry.find(name).map(|k| k.info().plural);
    let (action, scope) = match g.listener {
        Listener::Api => classify_api(&method, &path, &query, &plural),
        Listener::Ingress => classify_ingress(&path),
    };
    // Apply's namespaces are in its body: the role is checked here, the namespaces by the
    // handler (`check_apply`).
    let checked = match &scope {
        // Apply's namespaces are the handler's; the resource types are everyone's to list.
        _ if action == Action::Discover => identity.check_role(action),
        Classified::Deferred => identity.check_role(action),
        Classified::In(s) => identity.check(action, &s.as_scope()),
    };
    if let Err(why) = checked {
        g.auth.count_refusal(g.listener, "forbidden");
        tracing::warn!(listener = g.listener.as_str(), subject = %identity.subject, method = %req.method(), %path, reason = %why, "refused: forbidden");
        return refuse(StatusCode::FORBIDDEN, why);
    }
    req.extensions_mut().insert(identity);
    next.run(req).await
}

/// Paths of the API anyone may read: probes, and Ferry's issuer's public keys.
fn is_open(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/readyz" | super::api::JWKS_PATH | super::api::DISCOVERY_PATH
    )
}

/// The audience a JWT posted to an ingress path must name: the broker's or the sink's.
fn ingress_audience(path: &str) -> String {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["kafkasinks", ns, name] => super::audience("eventing.knative.dev", "KafkaSink", ns, name),
        [ns, name] => super::audience("eventing.knative.dev", "Broker", ns, name),
        _ => String::new(),
    }
}

/// Checks an apply's documents against the identity (none: auth is off): each in a namespace
/// the identity may change, and a KafkaSource or KafkaSink on a broker's topic (which would
/// read or write that broker's events past its namespace and its policies) by an admin only.
pub fn check_apply(
    identity: Option<&Identity>,
    documents: &[serde_json::Value],
) -> Result<(), String> {
    let Some(identity) = identity else {
        return Ok(());
    };
    for doc in documents {
        let ns = doc
            .pointer("/metadata/namespace")
            .and_then(serde_json::Value::as_str)
            .unwrap_or(crate::resource::DEFAULT_NAMESPACE);
        identity.check(Action::Write, &Scope::Namespace(ns))?;
        let topics: Vec<&str> = ["/spec/topic", "/spec/topics"]
            .iter()
            .filter_map(|p| doc.pointer(p))
            .flat_map(|v| match v {
                serde_json::Value::Array(a) => a.iter().filter_map(|t| t.as_str()).collect(),
                other => other.as_str().into_iter().collect::<Vec<_>>(),
            })
            .collect();
        if let Some(t) = topics.iter().find(|t| t.starts_with("knative-broker-")) {
            identity
                .check_role(Action::Administer)
                .map_err(|_| format!("{} may not use the broker topic {t:?}: only an admin may read or write a broker's topic directly", identity.subject))?;
        }
    }
    Ok(())
}

/// A request's scope as classified (owned: it comes from the path).
enum Classified {
    In(OwnedScope),
    Deferred,
}

enum OwnedScope {
    Cluster,
    Namespace(String),
}

impl OwnedScope {
    fn as_scope(&self) -> Scope<'_> {
        match self {
            OwnedScope::Cluster => Scope::Cluster,
            OwnedScope::Namespace(ns) => Scope::Namespace(ns),
        }
    }
}

fn ns(s: &str) -> Classified {
    Classified::In(OwnedScope::Namespace(s.to_string()))
}

const CLUSTER: Classified = Classified::In(OwnedScope::Cluster);

/// What a control-API request does, and where (`plural`: a kind's plural from any of its
/// names).
fn classify_api(
    method: &Method,
    path: &str,
    query: &str,
    plural: &dyn Fn(&str) -> Option<&'static str>,
) -> (Action, Classified) {
    if path == "/metrics" {
        return (Action::Read, CLUSTER);
    }
    let Some(rest) = path.strip_prefix("/api/v1/") else {
        return (Action::Administer, CLUSTER);
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let read = |name: &str| {
        if plural(name) == Some("brokers") {
            Action::ReadBroker
        } else {
            Action::Read
        }
    };
    match (method, parts.as_slice()) {
        (&Method::GET, ["api-resources"]) => (Action::Discover, CLUSTER),
        (_, ["tokens", ..]) => (Action::Administer, CLUSTER),
        (&Method::POST, ["apply"]) => (Action::Write, Classified::Deferred),
        (&Method::GET, [plural]) => {
            let namespace = url::form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "namespace")
                .map(|(_, v)| v.into_owned());
            match namespace {
                Some(n) => (read(plural), ns(&n)),
                None => (read(plural), CLUSTER),
            }
        }
        (&Method::GET, ["namespaces", n, plural, _]) => (read(plural), ns(n)),
        (&Method::DELETE, ["namespaces", n, _, _]) => (Action::Write, ns(n)),
        (&Method::GET, ["namespaces", n, _, _, "events" | "deadletters" | "logs"]) => {
            (Action::ReadContents, ns(n))
        }
        (&Method::DELETE, ["namespaces", n, _, _, "deadletters"])
        | (&Method::POST, ["namespaces", n, _, _, "deadletters", "replay"]) => {
            (Action::Write, ns(n))
        }
        _ => (Action::Administer, CLUSTER),
    }
}

/// What an ingress request does: post to `/{namespace}/{broker}` or
/// `/kafkasinks/{namespace}/{name}`.
fn classify_ingress(path: &str) -> (Action, Classified) {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["kafkasinks", n, _] | [n, _] => (Action::Produce, ns(n)),
        _ => (Action::Produce, CLUSTER),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(c: &Classified) -> Option<Scope<'_>> {
        match c {
            Classified::In(s) => Some(s.as_scope()),
            Classified::Deferred => None,
        }
    }

    #[test]
    fn api_requests_are_classified_by_path() {
        let cases = [
            (
                Method::GET,
                "/api/v1/brokers",
                "",
                Action::ReadBroker,
                Some(Scope::Cluster),
            ),
            (
                Method::GET,
                "/api/v1/namespaces/a/broker/b",
                "",
                Action::ReadBroker,
                Some(Scope::Namespace("a")),
            ),
            (
                Method::GET,
                "/api/v1/br",
                "namespace=a",
                Action::ReadBroker,
                Some(Scope::Namespace("a")),
            ),
            (
                Method::GET,
                "/api/v1/triggers",
                "namespace=shop",
                Action::Read,
                Some(Scope::Namespace("shop")),
            ),
            (
                Method::GET,
                "/api/v1/namespaces/a/triggers/t",
                "",
                Action::Read,
                Some(Scope::Namespace("a")),
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/a/triggers/t",
                "",
                Action::Write,
                Some(Scope::Namespace("a")),
            ),
            (
                Method::GET,
                "/api/v1/namespaces/a/brokers/b/events",
                "",
                Action::ReadContents,
                Some(Scope::Namespace("a")),
            ),
            (
                Method::GET,
                "/api/v1/namespaces/a/triggers/t/deadletters",
                "",
                Action::ReadContents,
                Some(Scope::Namespace("a")),
            ),
            (
                Method::POST,
                "/api/v1/namespaces/a/triggers/t/deadletters/replay",
                "",
                Action::Write,
                Some(Scope::Namespace("a")),
            ),
            (
                Method::GET,
                "/api/v1/namespaces/a/taskruns/t/logs",
                "",
                Action::ReadContents,
                Some(Scope::Namespace("a")),
            ),
            (Method::POST, "/api/v1/apply", "", Action::Write, None),
            (
                Method::POST,
                "/api/v1/tokens",
                "",
                Action::Administer,
                Some(Scope::Cluster),
            ),
            (
                Method::GET,
                "/metrics",
                "",
                Action::Read,
                Some(Scope::Cluster),
            ),
            (
                Method::PUT,
                "/api/v1/whatever",
                "",
                Action::Administer,
                Some(Scope::Cluster),
            ),
        ];
        let plural = |name: &str| match name {
            "brokers" | "broker" | "br" => Some("brokers"),
            _ => None,
        };
        for (method, path, query, action, want) in cases {
            let (a, c) = classify_api(&method, path, query, &plural);
            assert_eq!((a, scope(&c)), (action, want), "{method} {path}?{query}");
        }
    }

    #[test]
    fn ingress_requests_post_into_a_namespace() {
        let (a, c) = classify_ingress("/shop/orders");
        assert_eq!(
            (a, scope(&c)),
            (Action::Produce, Some(Scope::Namespace("shop")))
        );
        let (_, c) = classify_ingress("/kafkasinks/shop/s");
        assert_eq!(scope(&c), Some(Scope::Namespace("shop")));
    }
}
