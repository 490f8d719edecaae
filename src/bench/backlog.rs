//! `ferry bench backlog`: one trigger's subscriber is down while events pour in, then comes
//! back. Measures what the backlog costs: the other trigger's deliveries/s beside it (against
//! a run where both subscribers are up; goal: not slowed by more than 10%), the process's peak
//! memory while the backlog waits in the retry queue (payloads on disk, not in memory), and
//! how long the backlog takes to drain once the subscriber is back.

use super::load::{self, Load};
use super::{cores, temp_server};
use anyhow::{bail, Context};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct BacklogBench {
    /// How long producers run in each phase (at full speed: ~1,000,000 events in 60s here).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Concurrent keep-alive producer connections.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Event data size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
}

/// Two subscribers: `/t/0` (healthy) and `/t/1` (down while `down` is set: 503).
struct Subs {
    counts: [AtomicU64; 2],
    down: AtomicBool,
}

async fn receive(State(s): State<Arc<Subs>>, Path(i): Path<usize>) -> StatusCode {
    if i == 1 && s.down.load(Ordering::Relaxed) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    if let Some(c) = s.counts.get(i) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    StatusCode::OK
}

/// This process's resident memory now and at its peak, in MiB.
fn rss() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Starts a new peak for `VmHWM` (Linux: writing 5 to `clear_refs`).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

async fn wait_for(counter: &AtomicU64, want: u64, limit: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while counter.load(Ordering::Relaxed) < want {
        if started.elapsed() > limit {
            bail!(
                "the subscriber got {} of {want} events in {limit:?}",
                counter.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(started.elapsed())
}

/// A phase: a fresh server with both triggers, producers at full speed, then the healthy
/// trigger's deliveries/s until it has every accepted event.
async fn phase(
    b: &BacklogBench,
    subs: &Arc<Subs>,
    subs_addr: SocketAddr,
) -> anyhow::Result<(tempfile::TempDir, crate::serve::Running, u64, f64)> {
    let dir = tempfile::tempdir().context("creating a temp dir")?;
    let server = temp_server(&dir, broker::FsyncMode::Always, 4, None).await?;
    let docs: Vec<_> = (0..2)
        .map(|i| json!({
            "apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
            "metadata": {"name": format!("t{i}"), "namespace": "default"},
            "spec": {"broker": "default", "subscriber": {"uri": format!("http://{subs_addr}/t/{i}")},
                     "delivery": {"retry": 1000, "backoffPolicy": "linear", "backoffDelay": "PT2S"}},
        }))
        .collect();
    super::apply(&format!("http://{}", server.api_addr), docs).await?;
    for c in &subs.counts {
        c.store(0, Ordering::Relaxed);
    }
    let started = Instant::now();
    let produced = load::run(&Load {
        addr: server.ingress_addr,
        path: "/default/default".into(),
        connections: b.connections,
        duration: b.duration,
        size: b.size,
        event_type: "bench.event".into(),
        rate: None,
    })
    .await?;
    wait_for(&subs.counts[0], produced.requests, Duration::from_secs(600)).await?;
    let rate = produced.requests as f64 / started.elapsed().as_secs_f64();
    Ok((dir, server, produced.requests, rate))
}

pub async fn run(b: BacklogBench) -> anyhow::Result<()> {
    println!(
        "ferry bench backlog: {} connections for {:?} per phase, {}-byte events, fsync on, {} cores",
        b.connections,
        b.duration,
        b.size,
        cores()
    );
    let subs = Arc::new(Subs {
        counts: [AtomicU64::new(0), AtomicU64::new(0)],
        down: AtomicBool::new(false),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let subs_addr = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/t/{i}", axum::routing::post(receive))
        .with_state(subs.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    // Both subscribers up: the healthy trigger's rate beside a healthy neighbour.
    let (dir, server, n, both_up) = phase(&b, &subs, subs_addr).await?;
    wait_for(&subs.counts[1], n, Duration::from_secs(600)).await?;
    println!("both up          {n} events, trigger t0 {both_up:.0} deliveries/s");
    server.stop().await?;
    drop(dir);

    // t1's subscriber down while the events arrive.
    subs.down.store(true, Ordering::Relaxed);
    reset_peak();
    let (rss_before, _) = rss();
    let (_dir, server, n, beside_down) = phase(&b, &subs, subs_addr).await?;
    println!(
        "t1 down          {n} events, trigger t0 {beside_down:.0} deliveries/s: {:.2}× of both up (goal ≥ 0.9)",
        beside_down / both_up
    );
    let metrics = reqwest::get(format!("http://{}/metrics", server.api_addr))
        .await?
        .text()
        .await?;
    let queued = super::metric(
        &metrics,
        "ferry_dispatch_retry_queue{namespace=\"default\",trigger=\"t1\"}",
    );
    let lag = super::metric(
        &metrics,
        "ferry_dispatch_lag{namespace=\"default\",trigger=\"t1\"}",
    );
    let (rss_now, peak) = rss();
    println!(
        "backlog of t1    {queued:.0} in its retry queue, {lag:.0} not yet read; process RSS {rss_before:.0} MiB before, {rss_now:.0} MiB now, peak {peak:.0} MiB"
    );
    // t1's subscriber back: the backlog drains.
    subs.down.store(false, Ordering::Relaxed);
    reset_peak();
    let drained = wait_for(&subs.counts[1], n, Duration::from_secs(1800)).await?;
    let (_, peak) = rss();
    println!(
        "t1 back          backlog of {n} delivered in {:.1} s ({:.0} deliveries/s, retry due times included); peak RSS {peak:.0} MiB",
        drained.as_secs_f64(),
        n as f64 / drained.as_secs_f64()
    );
    server.stop().await
}
