//! Ferry's HTTP server, for every listener (ingress, control API, gateway, ops): a router
//! behind connection bounds that `axum::serve` does not have, over TLS when a certificate is
//! configured ([`crate::tls`]). Each request carries the peer's address as axum's
//! `ConnectInfo<SocketAddr>`.
//!
//! - At most `max_connections` connections at once. At the limit, a new connection takes the
//!   place of the one idle the longest (no request being handled: between keep-alive requests,
//!   or still sending its first header), which is closed; only when every connection is busy
//!   with a request is the new one answered `503` with `Retry-After` (after its request's first
//!   bytes) and closed. A flood of idle connections therefore cannot lock producers out.
//! - A connection must send a request's whole header within `header_timeout`, and the timer
//!   also runs while a kept-alive connection waits for its next request: a client that sends
//!   half a header (slowloris) or idles is disconnected.
//!
//! Request-level bounds (requests in flight, body bytes buffered, body read time) are the
//! handler's ([`crate::service`]).

use crate::tls::Tls;
use axum::extract::ConnectInfo;
use axum::Router;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1::Builder as Http1;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How a listener serves: its bounds, its TLS identity, its name in logs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub limits: ServerLimits,
    /// TLS when set; plain HTTP otherwise.
    pub tls: Option<Arc<Tls>>,
    /// Counts connections refused over the limit.
    pub refused: Option<prometheus::IntCounter>,
    /// `ingress`, `api`, ... in logs.
    pub name: &'static str,
}

/// Connection bounds.
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            header_timeout: Duration::from_secs(30),
        }
    }
}

/// What a connection over the limit gets before it is closed.
const FULL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: 50\r\n\r\nthe ingress is at its limit of connections, retry\n";
/// How long an over-the-limit connection may take to send its request, and to take its
/// answer.
const FULL_WRITE: Duration = Duration::from_secs(1);
/// After a failed accept (out of file descriptors), before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `router` on `listener` until `stop`, then lets open connections finish their
/// requests (the caller bounds how long it waits for this future).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    options: ServeOptions,
    stop: CancellationToken,
) {
    let ServeOptions {
        limits,
        tls,
        refused,
        name,
    } = options;
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let conns = Arc::new(Conns::default());
    let tasks = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, listener = name, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        // At the limit: the connection idle the longest makes room, or the new one is refused.
        let slot = slots.clone().try_acquire_owned().ok();
        if slot.is_none() && !conns.evict_idlest() {
            if let Some(r) = &refused {
                r.inc();
            }
            tokio::spawn(refuse(stream));
            continue;
        }
        let _ = stream.set_nodelay(true);
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        let (http, stop, slots, conns) = (http.clone(), stop.clone(), slots.clone(), conns.clone());
        let (router, refused) = (router.clone(), refused.clone());
        tasks.spawn(async move {
            // Room made by closing an idle connection: its slot comes free at once.
            let slot = match slot {
                Some(s) => s,
                None => match tokio::time::timeout(FULL_WRITE, slots.acquire_owned()).await {
                    Ok(Ok(s)) => s,
                    _ => {
                        if let Some(r) = &refused {
                            r.inc();
                        }
                        refuse(stream).await;
                        return;
                    }
                },
            };
            let registered = Registered::new(conns);
            let conn = registered.conn.clone();
            // The peer's address as axum's `ConnectInfo`, put on each request of the
            // connection, which is not idle while one is handled: until its answer's body is
            // sent (a stream of events or logs may take long) or dropped.
            let handled = conn.clone();
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                let handling = Handling::new(handled.clone());
                let answer = tower::ServiceExt::oneshot(router.clone(), req);
                async move {
                    let answer = answer.await?;
                    Ok::<_, std::convert::Infallible>(answer.map(|body| {
                        axum::body::Body::new(body.map_frame(move |frame| {
                            let _ = &handling;
                            frame
                        }))
                    }))
                }
            });
            let serving = Serving {
                http: &http,
                stop: &stop,
                conn: &conn,
                name,
            };
            match acceptor {
                None => serving.serve(TokioIo::new(stream), service).await,
                Some(acceptor) => {
                    // The handshake runs in the connection's task, bounded like a request
                    // header, so a client that stalls in it holds only its own slot (and gives
                    // it up to make room, like an idle connection).
                    let handshake =
                        tokio::time::timeout(limits.header_timeout, acceptor.accept(stream));
                    tokio::select! {
                        done = handshake => match done {
                            Ok(Ok(s)) => serving.serve(TokioIo::new(s), service).await,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, %peer, listener = name, "TLS handshake failed")
                            }
                            Err(_) => {
                                tracing::debug!(%peer, listener = name, "TLS handshake timed out")
                            }
                        },
                        _ = conn.evict.cancelled() => {}
                    }
                }
            }
            drop(registered);
            drop(slot);
        });
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
}

/// Answers a connection over the limit `503` and closes it. The answer follows the request's
/// first bytes (a client that has not sent its request yet would take an answer for a
/// protocol error), within a second.
async fn refuse(mut stream: tokio::net::TcpStream) {
    let mut first = [0u8; 1024];
    let _ = tokio::time::timeout(FULL_WRITE, stream.read(&mut first)).await;
    let _ = tokio::time::timeout(FULL_WRITE, async {
        stream.write_all(FULL).await?;
        stream.shutdown().await
    })
    .await;
}

/// The open connections of a listener, to find the one idle the longest.
struct Conns {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
    /// What `Conn::idle_since` counts from.
    start: Instant,
}

impl Default for Conns {
    fn default() -> Self {
        Self {
            next: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
            start: Instant::now(),
        }
    }
}

/// One open connection: how many of its requests are being handled, since when it has had
/// none, and the signal that closes it to make room.
struct Conn {
    handling: AtomicUsize,
    /// Microseconds from `Conns::start`.
    idle_since: AtomicU64,
    start: Instant,
    evict: CancellationToken,
}

impl Conn {
    fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

impl Conns {
    fn add(&self) -> (u64, Arc<Conn>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            handling: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            start: self.start,
            evict: CancellationToken::new(),
        });
        conn.idle_since.store(conn.now(), Ordering::Relaxed);
        self.lock().insert(id, conn.clone());
        (id, conn)
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Signals the connection idle the longest (and not already signalled) to close: false
    /// when every connection is handling a request.
    fn evict_idlest(&self) -> bool {
        let open = self.lock();
        let idlest = open
            .iter()
            .filter(|(_, c)| c.handling.load(Ordering::Acquire) == 0 && !c.evict.is_cancelled())
            .min_by_key(|(id, c)| (c.idle_since.load(Ordering::Relaxed), **id));
        match idlest {
            Some((_, c)) => {
                c.evict.cancel();
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A connection's place in [`Conns`], given up when its task ends (however it ends).
struct Registered {
    conns: Arc<Conns>,
    id: u64,
    conn: Arc<Conn>,
}

impl Registered {
    fn new(conns: Arc<Conns>) -> Self {
        let (id, conn) = conns.add();
        Self { conns, id, conn }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.conns.remove(self.id);
    }
}

/// A request of a connection being handled (its connection is not idle meanwhile).
struct Handling(Arc<Conn>);

impl Handling {
    fn new(conn: Arc<Conn>) -> Self {
        conn.handling.fetch_add(1, Ordering::AcqRel);
        Self(conn)
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        if self.0.handling.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle_since.store(self.0.now(), Ordering::Relaxed);
        }
    }
}

/// What serving one connection needs.
struct Serving<'a> {
    http: &'a Http1,
    stop: &'a CancellationToken,
    conn: &'a Conn,
    name: &'static str,
}

impl Serving<'_> {
    /// Serves one connection (plain or TLS) until it ends, shutdown closes it (after the
    /// request being handled, if any), or it is closed to make room for another.
    async fn serve<I, S>(&self, io: I, service: S)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
        S: hyper::service::HttpService<Incoming> + Send + 'static,
        S::Future: Send + 'static,
        S::ResBody: Send + 'static,
        <S::ResBody as hyper::body::Body>::Data: Send,
        <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let connection = self.http.serve_connection(io, service);
        tokio::pin!(connection);
        let ended = tokio::select! {
            // The connection first: a request already in its buffer is taken (and counted as
            // handled) before an eviction is looked at.
            biased;
            ended = connection.as_mut() => ended,
            _ = self.stop.cancelled() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
            _ = self.conn.evict.cancelled() => {
                if self.conn.handling.load(Ordering::Acquire) == 0 {
                    // Idle, or half a header: dropping it closes it.
                    tracing::debug!(listener = self.name, "idle connection closed to make room");
                    return;
                }
                // A request arrived meanwhile: answered, then closed.
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        // A connection ending badly (reset, header timeout) is the client's business.
        if let Err(e) = ended {
            tracing::debug!(error = %e, listener = self.name, "connection ended");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::net::TcpStream;
    use tokio::sync::mpsc;

    const LIMIT: Duration = Duration::from_secs(10);

    /// A listener of two connections whose `/wait` answers once `release` has a permit for it
    /// (each arrival reported on `arrived`).
    async fn start() -> (
        String,
        Arc<Semaphore>,
        mpsc::UnboundedReceiver<()>,
        CancellationToken,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let release = Arc::new(Semaphore::new(0));
        let (arrived_tx, arrived) = mpsc::unbounded_channel();
        let wait = {
            let release = release.clone();
            move || {
                let (arrived_tx, release) = (arrived_tx.clone(), release.clone());
                async move {
                    let _ = arrived_tx.send(());
                    let _permit = release.acquire().await;
                    "waited"
                }
            }
        };
        let router = Router::new()
            .route("/", get(|| async { "ok" }))
            .route("/wait", get(wait));
        let stop = CancellationToken::new();
        let options = ServeOptions {
            limits: ServerLimits {
                max_connections: 2,
                header_timeout: Duration::from_secs(30),
            },
            tls: None,
            refused: None,
            name: "test",
        };
        tokio::spawn(serve(listener, router, options, stop.clone()));
        (addr, release, arrived, stop)
    }

    async fn send(stream: &mut TcpStream, path: &str) {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
    }

    /// The first answer's bytes (up to what one read gives).
    async fn answer(stream: &mut TcpStream) -> String {
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(LIMIT, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[tokio::test]
    async fn the_idlest_connection_makes_room_and_busy_ones_do_not() {
        let (addr, release, mut arrived, stop) = start().await;
        // Two idle connections fill the limit (one sent half a header).
        let mut oldest = TcpStream::connect(&addr).await.unwrap();
        oldest.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        let mut other = TcpStream::connect(&addr).await.unwrap();
        // A third is served: the oldest idle one is closed for it.
        let mut third = TcpStream::connect(&addr).await.unwrap();
        send(&mut third, "/").await;
        let got = answer(&mut third).await;
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        assert!(got.ends_with("ok"), "{got}");
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(LIMIT, oldest.read_to_end(&mut rest)).await;
        assert!(matches!(closed, Ok(Ok(0))), "{closed:?}");

        // Both open connections busy with a request: one more is refused, not made room for.
        send(&mut other, "/wait").await;
        send(&mut third, "/wait").await;
        for _ in 0..2 {
            tokio::time::timeout(LIMIT, arrived.recv()).await.unwrap();
        }
        let mut fourth = TcpStream::connect(&addr).await.unwrap();
        send(&mut fourth, "/").await;
        let got = answer(&mut fourth).await;
        assert!(got.starts_with("HTTP/1.1 503"), "{got}");
        assert!(got.contains("retry-after: 1"), "{got}");
        assert!(got.contains("limit of connections"), "{got}");
        // The busy ones are answered.
        release.add_permits(2);
        for s in [&mut other, &mut third] {
            let got = answer(s).await;
            assert!(got.ends_with("waited"), "{got}");
        }
        stop.cancel();
    }
}
