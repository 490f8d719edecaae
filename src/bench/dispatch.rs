//! `ferry bench dispatch`: what triggers deliver, measured at a real HTTP subscriber.
//!
//! Five phases, each on a fresh server: (1) deliveries/s of one matching trigger with the
//! ingress driven flat out; (2) ingress→subscriber latency at half that rate; (3) deliveries/s
//! summed over 10 matching triggers; (4) one matching trigger beside 100 non-matching ones,
//! relative to (1); (5) 9 healthy triggers while a 10th subscriber takes 3 s per event,
//! relative to 9/10 of (3). A phase's rate counts deliveries from the first event until its
//! subscribers have all the events the ingress accepted.

use super::load::{self, micros_since_epoch, Load, SENT_AT};
use super::{cores, parse_fsync, temp_server};
use anyhow::{bail, Context};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use hdrhistogram::Histogram;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct DispatchBench {
    /// Concurrent keep-alive producer connections.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// How long producers run in each phase, like 5s.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Event data size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// fsync mode of the log: always or never.
    #[arg(long, default_value = "always")]
    pub fsync: String,
    /// Partitions of the broker.
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    #[command(flatten)]
    pub kafka: super::KafkaArgs,
}

const MAX_TRIGGERS: usize = 128;
const SLOW: Duration = Duration::from_secs(3);

/// The subscriber: counts deliveries per trigger, records end-to-end latency when asked.
struct Sink {
    counts: Vec<AtomicU64>,
    latency: Mutex<Histogram<u64>>,
    record: AtomicBool,
    slow: AtomicUsize,
}

async fn receive(
    State(sink): State<Arc<Sink>>,
    Path(i): Path<usize>,
    headers: HeaderMap,
) -> axum::http::StatusCode {
    if sink.slow.load(Ordering::Relaxed) == i {
        tokio::time::sleep(SLOW).await;
    }
    if let Some(c) = sink.counts.get(i) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    if sink.record.load(Ordering::Relaxed) {
        let sent = headers
            .get(SENT_AT)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let (Some(sent), Ok(mut h)) = (sent, sink.latency.lock()) {
            h.saturating_record(micros_since_epoch().saturating_sub(sent).max(1));
        }
    }
    axum::http::StatusCode::OK
}

async fn start_sink() -> anyhow::Result<(Arc<Sink>, SocketAddr)> {
    let sink = Arc::new(Sink {
        counts: (0..MAX_TRIGGERS).map(|_| AtomicU64::new(0)).collect(),
        latency: Mutex::new(load::histogram()?),
        record: AtomicBool::new(false),
        slow: AtomicUsize::new(usize::MAX),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/t/{i}", axum::routing::post(receive))
        .with_state(sink.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((sink, addr))
}

impl Sink {
    fn reset(&self) {
        for c in &self.counts {
            c.store(0, Ordering::Relaxed);
        }
    }

    fn delivered(&self, triggers: std::ops::Range<usize>) -> u64 {
        self.counts[triggers]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

/// One phase's server with its triggers: `matching` triggers on the bench events (the first
/// `slow` of them... see `Sink::slow`), `other` triggers filtering them out.
async fn phase_server(
    b: &DispatchBench,
    sink_addr: SocketAddr,
    matching: usize,
    other: usize,
) -> anyhow::Result<(tempfile::TempDir, crate::serve::Running)> {
    let dir = tempfile::tempdir().context("creating a temp dir")?;
    let server = temp_server(
        &dir,
        parse_fsync(&b.fsync)?,
        b.partitions,
        b.kafka.options(),
    )
    .await?;
    let mut docs = Vec::new();
    for i in 0..matching + other {
        let ty = if i < matching {
            "bench.event"
        } else {
            "never.sent"
        };
        docs.push(json!({
            "apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
            "metadata": {"name": format!("t{i}"), "namespace": "default"},
            "spec": {"broker": "default", "subscriber": {"uri": format!("http://{sink_addr}/t/{i}")},
                     "filters": [{"exact": {"type": ty}}]},
        }));
    }
    super::apply(&format!("http://{}", server.api_addr), docs).await?;
    Ok((dir, server))
}

/// Deletes a phase's triggers before its server stops: on Kafka the resources outlive the
/// server (they are in the cluster), and the next phase must not inherit them.
async fn end_phase(server: crate::serve::Running, triggers: usize) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    for i in 0..triggers {
        let resp = client
            .delete(format!(
                "http://{}/api/v1/namespaces/default/triggers/t{i}",
                server.api_addr
            ))
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("deleting bench trigger t{i}: {}", resp.text().await?);
        }
    }
    server.stop().await
}

/// Drives the ingress, then waits until the subscribers of `triggers` have every accepted
/// event. Returns deliveries/s (per trigger summed) and what the producers saw.
async fn drive(
    sink: &Sink,
    load: &Load,
    triggers: std::ops::Range<usize>,
) -> anyhow::Result<(f64, load::Phase)> {
    sink.reset();
    let started = Instant::now();
    let produced = load::run(load).await?;
    let want = produced.requests * triggers.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    while sink.delivered(triggers.clone()) < want {
        if Instant::now() > deadline {
            bail!(
                "subscribers got {} of {want} deliveries in time",
                sink.delivered(triggers)
            );
        }
        poll.tick().await;
    }
    Ok((want as f64 / started.elapsed().as_secs_f64(), produced))
}

pub async fn run(b: DispatchBench) -> anyhow::Result<()> {
    println!(
        "ferry bench dispatch: {} producer connections, {:?} per phase, {}-byte events, {}, {} partitions, {} cores",
        b.connections, b.duration, b.size, b.kafka.describe(&b.fsync), b.partitions, cores()
    );
    let (sink, sink_addr) = start_sink().await?;
    let spec = |addr: SocketAddr, rate: Option<f64>| Load {
        addr,
        path: "/default/default".into(),
        connections: b.connections,
        duration: b.duration,
        size: b.size,
        event_type: "bench.event".into(),
        rate,
    };

    // (1) and (2): one trigger.
    let (_dir, server) = phase_server(&b, sink_addr, 1, 0).await?;
    let (one, produced) = drive(&sink, &spec(server.ingress_addr, None), 0..1).await?;
    println!(
        "1 trigger        {one:>9.0} deliveries/s   (ingress accepted {:.0} events/s)",
        produced.rate()
    );
    sink.record.store(true, Ordering::Relaxed);
    let (_, _) = drive(&sink, &spec(server.ingress_addr, Some(one / 2.0)), 0..1).await?;
    sink.record.store(false, Ordering::Relaxed);
    {
        let h = sink
            .latency
            .lock()
            .map_err(|_| anyhow::anyhow!("latency histogram poisoned"))?;
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "latency at {:.0}/s  ingress→subscriber p50 {:.2} ms   p99 {:.2} ms   p999 {:.2} ms   (goal p50 ≤ 2 ms, p99 ≤ 10 ms)",
            one / 2.0,
            ms(0.5),
            ms(0.99),
            ms(0.999)
        );
    }
    end_phase(server, 1).await?;

    // (3) ten matching triggers.
    let (_dir, server) = phase_server(&b, sink_addr, 10, 0).await?;
    let (ten, _) = drive(&sink, &spec(server.ingress_addr, None), 0..10).await?;
    println!(
        "10 triggers      {ten:>9.0} deliveries/s   ({:.0} per core; goal ≥ 10,000 per core)",
        ten / cores() as f64
    );
    end_phase(server, 10).await?;

    // (4) one matching beside 100 non-matching.
    let (_dir, server) = phase_server(&b, sink_addr, 1, 100).await?;
    let (crowded, _) = drive(&sink, &spec(server.ingress_addr, None), 0..1).await?;
    println!(
        "1 + 100 others   {crowded:>9.0} deliveries/s   {:.2}× of 1 trigger alone (goal ≥ 0.8)",
        crowded / one
    );
    end_phase(server, 101).await?;

    // (5) nine healthy triggers and a slow one.
    let (_dir, server) = phase_server(&b, sink_addr, 10, 0).await?;
    sink.slow.store(9, Ordering::Relaxed);
    let (healthy, _) = drive(&sink, &spec(server.ingress_addr, None), 0..9).await?;
    sink.slow.store(usize::MAX, Ordering::Relaxed);
    println!(
        "9 + 1 slow (3 s) {healthy:>9.0} deliveries/s   {:.2}× of 9 healthy in the all-healthy run (goal ≥ 0.9)",
        healthy / (ten * 0.9)
    );
    end_phase(server, 10).await?;
    Ok(())
}
