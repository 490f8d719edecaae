//! The gateway: every request is routed by its Host to a route's revision (weighted per
//! request; a tag's host always to its revision), waits for a free instance (held while the
//! revision is at zero, which asks for a scale from zero at once), and is proxied to the
//! instance with both bodies streamed. `timeoutSeconds` bounds the whole exchange: 503 while
//! still waiting for an instance, 504 once sent.

use crate::pool::Refused;
use crate::Serving;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use axum::Router;
use control::Key;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use tokio::time::Instant;

/// Where one host's requests go: revisions with their percents (summing to `total`).
#[derive(Clone, Debug, PartialEq)]
pub struct Destinations {
    pub targets: Vec<(Key, u32)>,
}

impl Destinations {
    /// One revision, weighted by the percents.
    fn pick(&self) -> Option<&Key> {
        let total: u32 = self.targets.iter().map(|(_, p)| p).sum();
        if total == 0 {
            return self.targets.first().map(|(k, _)| k);
        }
        let mut n = rand::random_range(0..total);
        for (k, p) in &self.targets {
            if n < *p {
                return Some(k);
            }
            n -= p;
        }
        None
    }
}

/// The routing table: hosts to destinations, by the route that set them.
#[derive(Default)]
pub struct Routes {
    inner: RwLock<Table>,
}

#[derive(Default)]
struct Table {
    /// Host → the route that has it, and where it sends.
    hosts: HashMap<String, (Key, Arc<Destinations>)>,
    by_route: HashMap<Key, Vec<String>>,
    /// Routes refused a host another route had: tried again when hosts are freed.
    refused: std::collections::HashSet<Key>,
}

impl Table {
    /// Drops `route`'s hosts; the refused routes to try again if any was freed.
    fn free(&mut self, route: &Key, keep: &[&String]) -> Vec<Key> {
        let mut freed = false;
        if let Some(old) = self.by_route.remove(route) {
            for h in old.iter().filter(|h| !keep.contains(h)) {
                self.hosts.remove(h);
                freed = true;
            }
        }
        if freed {
            self.refused
                .iter()
                .filter(|k| *k != route)
                .cloned()
                .collect()
        } else {
            Vec::new()
        }
    }
}

impl Routes {
    /// Sets the hosts of `route` (replacing what it had): `Ok` with the routes to reconcile
    /// again (refused before, and some host is free now); refused, changing nothing, when
    /// another route has one of them (`a-b` vs route `b`'s tag `a`).
    pub fn set(&self, route: &Key, hosts: Vec<(String, Destinations)>) -> Result<Vec<Key>, String> {
        let mut t = self.inner.write().unwrap_or_else(|p| p.into_inner());
        for (h, _) in &hosts {
            if let Some((other, _)) = t.hosts.get(h).filter(|(owner, _)| owner != route) {
                let why = format!(
                    "host {h} is already Route {}/{}'s",
                    other.namespace, other.name
                );
                t.refused.insert(route.clone());
                return Err(why);
            }
        }
        t.refused.remove(route);
        let names: Vec<String> = hosts.iter().map(|(h, _)| h.clone()).collect();
        let again = t.free(route, &names.iter().collect::<Vec<_>>());
        for (h, d) in hosts {
            t.hosts.insert(h, (route.clone(), Arc::new(d)));
        }
        t.by_route.insert(route.clone(), names);
        Ok(again)
    }

    /// Drops `route`'s hosts: the routes to reconcile again (refused before).
    pub fn remove(&self, route: &Key) -> Vec<Key> {
        let mut t = self.inner.write().unwrap_or_else(|p| p.into_inner());
        t.refused.remove(route);
        t.free(route, &[])
    }

    pub fn lookup(&self, host: &str) -> Option<Arc<Destinations>> {
        let t = self.inner.read().unwrap_or_else(|p| p.into_inner());
        t.hosts.get(host).map(|(_, d)| d.clone())
    }

    /// Whether some route sends traffic to the revision (Knative's routingState `active`).
    pub fn reaches(&self, revision: &Key) -> bool {
        let t = self.inner.read().unwrap_or_else(|p| p.into_inner());
        t.hosts
            .values()
            .any(|(_, d)| d.targets.iter().any(|(k, _)| k == revision))
    }
}

#[derive(Clone)]
struct Gateway {
    serving: Arc<Serving>,
    client: Client<HttpConnector, Body>,
}

/// The gateway's router.
pub fn router(serving: Arc<Serving>) -> Router {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(connector);
    Router::new()
        .fallback(handle)
        .with_state(Gateway { serving, client })
}

fn refuse(status: StatusCode, message: String) -> Response<Body> {
    let mut r = Response::new(Body::from(message + "\n"));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The request's host, lower case, without a port.
fn host_of(req: &Request<Body>) -> Option<String> {
    let raw = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_string()))?;
    let host = match raw.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => raw.as_str(),
    };
    Some(host.trim_end_matches('.').to_ascii_lowercase())
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(*n);
    }
}

async fn handle(
    State(g): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request<Body>,
) -> Response<Body> {
    let Some(host) = host_of(&req) else {
        return refuse(StatusCode::BAD_REQUEST, "the request has no Host".into());
    };
    let Some(dest) = g.serving.routes.lookup(&host) else {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("no service answers at host {host:?}"),
        );
    };
    let Some(revision) = dest.pick() else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("host {host:?} has no revision to send to"),
        );
    };
    let Some(pool) = g.serving.pool(revision) else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("revision {} is not running", revision.name),
        );
    };
    let arrived = Instant::now();
    let answer = forward(&g, &pool, revision, req, peer, host, arrived).await;
    let (ns, rev) = (revision.namespace.as_str(), revision.name.as_str());
    let m = &g.serving.metrics;
    m.requests
        .with_label_values(&[ns, rev, answer.status().as_str()])
        .inc();
    m.latency
        .with_label_values(&[ns, rev])
        .observe(arrived.elapsed().as_secs_f64());
    answer
}

/// Waits for an instance of `revision` and proxies the request to it.
async fn forward(
    g: &Gateway,
    pool: &Arc<crate::pool::Pool>,
    revision: &Key,
    req: Request<Body>,
    peer: SocketAddr,
    host: String,
    arrived: Instant,
) -> Response<Body> {
    let deadline = arrived + pool.timeout();
    let lease = match pool.acquire(deadline).await {
        Ok(l) => l,
        Err(Refused::Overflow) => {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("revision {}: pending request queue full", revision.name),
            )
        }
        Err(Refused::Timeout) => {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "revision {}: no instance was ready within timeoutSeconds ({}s)",
                    revision.name,
                    pool.timeout().as_secs()
                ),
            )
        }
        Err(Refused::Stopped) => {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("revision {} is being stopped", revision.name),
            )
        }
    };
    if lease.cold() {
        g.serving
            .metrics
            .cold_starts
            .with_label_values(&[revision.namespace.as_str(), revision.name.as_str()])
            .observe(arrived.elapsed().as_secs_f64());
    }
    let (mut parts, body) = req.into_parts();
    let original_host = parts.headers.get(header::HOST).cloned();
    strip_hop_by_hop(&mut parts.headers);
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let uri = match format!("http://127.0.0.1:{}{path}", lease.port()).parse() {
        Ok(u) => u,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("bad request path: {e}")),
    };
    parts.uri = uri;
    let ip = peer.ip().to_string();
    let xff = match parts
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
    {
        Some(prior) => format!("{prior}, {ip}"),
        None => ip.clone(),
    };
    let forwarded_host = original_host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .unwrap_or(&host)
        .to_string();
    let forwarded = format!(
        "for={};host={forwarded_host};proto=http",
        forwarded_for(&peer)
    );
    for (name, value) in [
        ("x-forwarded-for", xff),
        ("x-forwarded-proto", "http".to_string()),
        ("x-forwarded-host", forwarded_host.clone()),
        ("forwarded", forwarded),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            parts.headers.insert(name, v);
        }
    }
    if let Some(h) = original_host {
        parts.headers.insert(header::HOST, h);
    }
    let upstream = Request::from_parts(parts, body);
    match tokio::time::timeout_at(deadline, g.client.request(upstream)).await {
        Err(_) => refuse(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "revision {} did not answer within timeoutSeconds ({}s)",
                revision.name,
                pool.timeout().as_secs()
            ),
        ),
        Ok(Err(e)) => refuse(
            StatusCode::BAD_GATEWAY,
            format!("revision {}: {e}", revision.name),
        ),
        Ok(Ok(resp)) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(
                parts,
                Body::new(Leased {
                    inner: body,
                    _lease: lease,
                }),
            )
        }
    }
}

/// `for=` of RFC 7239: IPv6 quoted in brackets.
fn forwarded_for(peer: &SocketAddr) -> String {
    match peer {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("\"[{}]\"", a.ip()),
    }
}

/// An instance's answer, streamed; the instance's slot is held until it ends.
struct Leased<B> {
    inner: B,
    _lease: crate::pool::Lease,
}

impl<B: HttpBody + Unpin> HttpBody for Leased<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_hold_over_many_picks() {
        let a = Key::new("Revision", "ns", "a");
        let b = Key::new("Revision", "ns", "b");
        let d = Destinations {
            targets: vec![(a.clone(), 20), (b.clone(), 80)],
        };
        let n = 10_000;
        let to_a = (0..n).filter(|_| d.pick() == Some(&a)).count();
        assert!((1700..2300).contains(&to_a), "{to_a} of {n} went to a");
    }

    #[test]
    fn a_host_belongs_to_one_route_and_the_refused_one_is_tried_again_when_it_is_free() {
        let routes = Routes::default();
        let (a, b) = (Key::new("Route", "ns", "a-b"), Key::new("Route", "ns", "b"));
        let rev = Key::new("Revision", "ns", "r");
        let to = |host: &str| {
            vec![(
                host.to_string(),
                Destinations {
                    targets: vec![(rev.clone(), 100)],
                },
            )]
        };
        assert_eq!(routes.set(&a, to("a-b.ns.localhost")), Ok(vec![]));
        let refused = routes.set(&b, to("a-b.ns.localhost")).unwrap_err();
        assert!(refused.contains("Route ns/a-b"), "{refused}");
        assert!(routes.lookup("a-b.ns.localhost").is_some());
        assert!(routes.reaches(&rev));
        // Route a moves to another host: b is to be reconciled again, and then gets it.
        assert_eq!(
            routes.set(&a, to("other.ns.localhost")),
            Ok(vec![b.clone()])
        );
        assert_eq!(routes.set(&b, to("a-b.ns.localhost")), Ok(vec![]));
        assert_eq!(routes.remove(&a), Vec::<Key>::new());
        assert!(routes.lookup("other.ns.localhost").is_none());
    }

    #[test]
    fn hosts_lose_their_port_and_case() {
        let req = Request::builder()
            .header("host", "Hello.Default.localhost:8082")
            .body(Body::empty())
            .unwrap();
        assert_eq!(host_of(&req).as_deref(), Some("hello.default.localhost"));
    }
}
