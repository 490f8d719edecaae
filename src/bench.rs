//! `ferry bench`: load tests of the real stack over loopback.
//!
//! `ferry bench ingress` starts a full server (RocksDB in a temp dir) in this process, drives its
//! ingress with N keep-alive connections posting binary-mode events for T seconds, then drives
//! a no-op HTTP server on the same stack (axum, same runtime, answers 202 after reading the
//! body) the same way: the ceiling. Both share the machine's cores with the load generator, so
//! the ratio is what the broker's work (parse, encode, group-committed fsync) costs.

use crate::serve::{self, ServeConfig};
use anyhow::Context;
use axum::routing::post;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Events/s and latency of the ingress (durable appends), against a no-op HTTP ceiling.
    Ingress(IngressBench),
}

#[derive(clap::Args, Debug, Clone)]
pub struct IngressBench {
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// How long each phase runs, like 10s.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Event data size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// fsync mode of the log: always or never.
    #[arg(long, default_value = "always")]
    pub fsync: String,
    /// Partitions of the benchmarked broker.
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Ingress(b) => ingress(b).await,
    }
}

/// What one load phase measured.
struct Phase {
    requests: u64,
    errors: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn line(&self, what: &str) -> String {
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

async fn ingress(b: IngressBench) -> anyhow::Result<()> {
    let fsync = match b.fsync.as_str() {
        "always" => broker::FsyncMode::Always,
        "never" => broker::FsyncMode::Never,
        other => anyhow::bail!("--fsync {other:?}: use always or never"),
    };
    let dir = tempfile::tempdir().context("creating a temp dir")?;
    let config = ServeConfig {
        data_dir: dir.path().to_path_buf(),
        ingress_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ingress_url: None,
        fsync,
        partitions: b.partitions,
        retention: Duration::from_secs(3600),
        retention_bytes: None,
        max_event_size: 1024 * 1024,
        shutdown_grace: Duration::from_secs(10),
    };
    println!(
        "ferry bench ingress: {} connections, {:?} per phase, {}-byte binary-mode events, fsync={}, {} partitions, {} cores",
        b.connections,
        b.duration,
        b.size,
        b.fsync,
        b.partitions,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let server = serve::start(config).await?;
    let target = server.ingress_addr;
    let ferry = load(target, "/default/default", &b).await?;
    let stats = reqwest::get(format!("http://{}/metrics", server.api_addr))
        .await?
        .text()
        .await?;
    server.stop().await?;
    println!("{}", ferry.line("ferry ingress"));
    let fsyncs = metric(&stats, "ferry_log_fsyncs_total");
    let appended = metric(&stats, "ferry_log_appended_events_total");
    if fsyncs > 0.0 {
        println!(
            "{:<16} {fsyncs:.0} fsyncs for {appended:.0} events: {:.1} events per group commit",
            "",
            appended / fsyncs
        );
    }

    let noop = noop_server().await?;
    let ceiling = load(noop.0, "/default/default", &b).await?;
    noop.1.cancel();
    println!("{}", ceiling.line("no-op ceiling"));
    println!(
        "ratio            {:.2} of the no-op ceiling; {:.0} events/s per core",
        ferry.rate() / ceiling.rate(),
        ferry.rate() / std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
    );
    Ok(())
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn noop_server() -> anyhow::Result<(SocketAddr, tokio_util::sync::CancellationToken)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let token = tokio_util::sync::CancellationToken::new();
    let app = axum::Router::new().route(
        "/{ns}/{name}",
        post(|_body: Bytes| async { axum::http::StatusCode::ACCEPTED }),
    );
    let t = token.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(t.cancelled_owned())
            .await;
    });
    Ok((addr, token))
}

/// Drives `addr` with `b.connections` keep-alive HTTP/1.1 connections for `b.duration`.
async fn load(addr: SocketAddr, path: &str, b: &IngressBench) -> anyhow::Result<Phase> {
    let body = Bytes::from(vec![b'x'; b.size]);
    let deadline = Instant::now() + b.duration;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for conn in 0..b.connections {
        let body = body.clone();
        let path = path.to_string();
        tasks.spawn(async move { connection(addr, &path, conn, body, deadline).await });
    }
    let mut phase = Phase {
        requests: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency: Histogram::new_with_bounds(1, 60_000_000, 3).context("histogram")?,
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
    addr: SocketAddr,
    path: &str,
    conn: usize,
    body: Bytes,
    deadline: Instant,
) -> anyhow::Result<(u64, u64, Histogram<u64>)> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram")?;
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let (mut ok, mut errors) = (0u64, 0u64);
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let req = hyper::Request::post(path)
            .header("host", addr.to_string())
            .header("ce-specversion", "1.0")
            .header("ce-id", format!("{conn}-{n}"))
            .header("ce-source", "/bench")
            .header("ce-type", "bench.event")
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
