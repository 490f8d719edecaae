//! The load generator: N keep-alive HTTP/1.1 connections posting binary-mode CloudEvents.

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Extension carrying the send time (µs since the Unix epoch), for end-to-end latency.
pub const SENT_AT: &str = "ce-benchsent";

/// What to send, how hard, for how long.
#[derive(Clone, Debug)]
pub struct Load {
    pub addr: SocketAddr,
    pub path: String,
    pub connections: usize,
    pub duration: Duration,
    pub size: usize,
    pub event_type: String,
    /// Total requests per second across connections; `None` sends as fast as answers come.
    pub rate: Option<f64>,
}

/// What one load phase measured.
pub struct Phase {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
}

pub fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 600_000_000, 3).context("histogram")
}

pub fn micros_since_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl Phase {
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    pub fn line(&self, what: &str) -> String {
        let ms = |q: f64| self.latency.value_at_quantile(q) as f64 / 1000.0;
        format!(
            "{what:<16} {:>9.0} req/s   p50 {:>6.2} ms   p99 {:>6.2} ms   p999 {:>6.2} ms   errors {}",
            self.rate(),
            ms(0.5),
            ms(0.99),
            ms(0.999),
            self.errors
        )
    }
}

/// Runs the load and returns what the producers saw.
pub async fn run(load: &Load) -> anyhow::Result<Phase> {
    let body = Bytes::from(vec![b'x'; load.size]);
    let started = Instant::now();
    let deadline = started + load.duration;
    let interval = load
        .rate
        .map(|r| Duration::from_secs_f64(load.connections as f64 / r.max(1.0)));
    let mut tasks = tokio::task::JoinSet::new();
    for conn in 0..load.connections {
        let (body, load) = (body.clone(), load.clone());
        tasks.spawn(async move { connection(&load, conn, body, deadline, interval).await });
    }
    let mut phase = Phase {
        requests: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency: histogram()?,
    };
    while let Some(r) = tasks.join_next().await {
        let (ok, errors, hist) = r.context("load task")??;
        phase.requests += ok;
        phase.errors += errors;
        phase.latency.add(&hist).context("merging histograms")?;
    }
    phase.elapsed = started.elapsed();
    Ok(phase)
}

async fn connection(
    load: &Load,
    conn: usize,
    body: Bytes,
    deadline: Instant,
    interval: Option<Duration>,
) -> anyhow::Result<(u64, u64, Histogram<u64>)> {
    let mut hist = histogram()?;
    let stream = tokio::net::TcpStream::connect(load.addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let (mut ok, mut errors) = (0u64, 0u64);
    let mut ticker = interval.map(|i| {
        let mut t = tokio::time::interval_at(
            tokio::time::Instant::now() + i.mul_f64(conn as f64 / load.connections.max(1) as f64),
            i,
        );
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut n = 0u64;
    while Instant::now() < deadline {
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
        }
        n += 1;
        let req = hyper::Request::post(load.path.as_str())
            .header("host", load.addr.to_string())
            .header("ce-specversion", "1.0")
            .header("ce-id", format!("{conn}-{n}"))
            .header("ce-source", "/bench")
            .header("ce-type", load.event_type.as_str())
            .header(SENT_AT, micros_since_epoch().to_string())
            .header("content-type", "application/octet-stream")
            .body(Full::new(body.clone()))?;
        let t = Instant::now();
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        resp.into_body().collect().await?;
        hist.saturating_record(t.elapsed().as_micros() as u64);
        if status == hyper::StatusCode::ACCEPTED {
            ok += 1;
        } else {
            errors += 1;
        }
    }
    Ok((ok, errors, hist))
}
