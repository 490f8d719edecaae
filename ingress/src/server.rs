//! The ingress's HTTP server: the router behind connection bounds that `axum::serve` does not
//! have.
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

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

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
    limits: ServerLimits,
    refused: prometheus::IntCounter,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "ingress: accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused.inc();
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
        let service = TowerToHyperService::new(router.clone());
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // A connection ending badly (reset, header timeout) is the client's business.
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "ingress connection ended");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
