//! Ferry's HTTP server, for every listener (ingress, control API, gateway, ops): a router
//! behind connection bounds that `axum::serve` does not have, over TLS when a certificate is
//! configured ([`crate::tls`]). Each request carries the peer's address as axum's
//! `ConnectInfo<SocketAddr>`.
//!
//! - At most `max_connections` connections at once; one more is answered `503` with
//!   `Retry-After` (after its request's first bytes) and closed, so a flood of connections
//!   cannot take every socket.
//! - A connection must send a request's whole header within `header_timeout`, and the timer
//!   also runs while a kept-alive connection waits for its next request: a client that sends
//!   half a header (slowloris) or idles is disconnected.
//!
//! Request-level bounds (requests in flight, body bytes buffered, body read time) are the
//! handler's ([`crate::service`]).

use crate::tls::Tls;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1::Builder as Http1;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

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
    let graceful = GracefulShutdown::new();
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if let Some(r) = &refused {
                r.inc();
            }
            // The answer follows the request's first bytes (a client that has not sent its
            // request yet would take an answer for a protocol error), within a second.
            tokio::spawn(async move {
                let mut stream = stream;
                let mut first = [0u8; 1024];
                let _ = tokio::time::timeout(FULL_WRITE, stream.read(&mut first)).await;
                let _ = tokio::time::timeout(FULL_WRITE, async {
                    stream.write_all(FULL).await?;
                    stream.shutdown().await
                })
                .await;
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        // The peer's address as axum's `ConnectInfo`, put on each request of the connection.
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            tower::ServiceExt::oneshot(router.clone(), req)
        });
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        let (http, watcher) = (http.clone(), graceful.watcher());
        tokio::spawn(async move {
            match acceptor {
                None => serve_io(TokioIo::new(stream), &http, watcher, service, name).await,
                Some(acceptor) => {
                    // The handshake runs in the connection's task, bounded like a request
                    // header, so a client that stalls in it holds only its own slot.
                    match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await
                    {
                        Ok(Ok(s)) => serve_io(TokioIo::new(s), &http, watcher, service, name).await,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, %peer, listener = name, "TLS handshake failed")
                        }
                        Err(_) => {
                            tracing::debug!(%peer, listener = name, "TLS handshake timed out")
                        }
                    }
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Serves one connection (plain or TLS) until it ends or shutdown closes it.
async fn serve_io<I, S>(io: I, http: &Http1, watcher: Watcher, service: S, name: &'static str)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming> + Send + 'static,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // A connection ending badly (reset, header timeout) is the client's business.
    if let Err(e) = watcher.watch(http.serve_connection(io, service)).await {
        tracing::debug!(error = %e, listener = name, "connection ended");
    }
}
