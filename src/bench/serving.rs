//! `ferry bench serving`: the gateway, the activator and the autoscaler with a real revision
//! (`ferry-example-app`, beside the `ferry` binary: ready within milliseconds, so the figures
//! are Ferry's).
//!
//! 1. Cold start: `--cold-starts` Services at zero instances (`initial-scale: 0`), each asked
//!    once, then deleted (so no other instance runs meanwhile): from the request to its answer
//!    (the poke, the decision through the broker, the process start, the readiness probe, the
//!    proxied request). p50/p99.
//! 2. Warm overhead: one instance, reached directly and through the gateway, with
//!    `--connections` keep-alive clients for `--duration` each: requests/s and p50/p95.
//! 3. Burst: `--burst` clients at once on a Service at zero, each sending requests of 100 ms
//!    for `--burst-duration`: instances (ready/wanted) and answers per second, errors.

use super::load::histogram;
use super::temp_config;
use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct ServingBench {
    /// Cold starts measured (one Service each).
    #[arg(long, default_value_t = 50)]
    pub cold_starts: usize,
    /// Concurrent keep-alive clients of the warm phase.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// How long each side of the warm phase runs, like 5s.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Concurrent clients of the burst.
    #[arg(long, default_value_t = 200)]
    pub burst: usize,
    /// How long the burst lasts.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub burst_duration: Duration,
}

struct Bench {
    http: reqwest::Client,
    api: String,
    gateway: String,
    app: String,
}

impl Bench {
    async fn apply(&self, docs: Vec<Value>) -> anyhow::Result<()> {
        let resp = self
            .http
            .post(format!("{}/api/v1/apply", self.api))
            .json(&json!({ "documents": docs }))
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("apply: {}", resp.text().await.unwrap_or_default());
        }
        Ok(())
    }

    fn service(&self, name: &str, annotations: Value) -> Value {
        json!({
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"template": {
                "metadata": {"annotations": annotations},
                "spec": {"containers": [{"command": [self.app]}]},
            }},
        })
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let resp = self.http.get(format!("{}{path}", self.api)).send().await?;
        Ok(resp.json().await?)
    }

    /// Waits until the Service is Ready.
    async fn ready(&self, name: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = self
                .get(&format!("/api/v1/namespaces/default/services/{name}"))
                .await?;
            let ready = s["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                .is_some_and(|c| c["status"] == "True");
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("service {name} not ready within 60 s: {}", s["status"]);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn call(&self, url: &str, host: &str) -> anyhow::Result<u16> {
        let resp = self.http.get(url).header("host", host).send().await?;
        let status = resp.status().as_u16();
        resp.bytes().await?;
        Ok(status)
    }
}

pub async fn run(b: ServingBench) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let mut config = temp_config(&dir, broker::FsyncMode::Always, 4, None);
    config.autoscaler.allow_zero_initial_scale = true;
    let server = crate::serve::start(config).await?;
    let app = std::env::current_exe()
        .context("finding the ferry binary")?
        .with_file_name("ferry-example-app");
    if !app.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release --bin ferry-example-app` (scripts/run builds it)",
            app.display()
        );
    }
    let app = app.to_string_lossy().into_owned();
    let bench = Bench {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .build()?,
        api: format!("http://{}", server.api_addr),
        gateway: format!("http://{}", server.gateway_addr),
        app,
    };
    println!(
        "ferry bench serving: {} cores, revision = ferry-example-app",
        super::cores()
    );
    cold_starts(&bench, b.cold_starts).await?;
    warm(&bench, b.connections, b.duration).await?;
    burst(&bench, b.burst, b.burst_duration).await?;
    server.stop().await
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

async fn cold_starts(b: &Bench, n: usize) -> anyhow::Result<()> {
    let docs = (0..n)
        .map(|i| {
            b.service(
                &format!("cold-{i}"),
                json!({"autoscaling.knative.dev/initial-scale": "0"}),
            )
        })
        .collect();
    b.apply(docs).await?;
    for i in 0..n {
        b.ready(&format!("cold-{i}")).await?;
    }
    let mut h = histogram()?;
    for i in 0..n {
        let started = Instant::now();
        let code = b
            .call(
                &format!("{}/", b.gateway),
                &format!("cold-{i}.default.localhost"),
            )
            .await?;
        if code != 200 {
            bail!("cold start {i}: status {code}");
        }
        h.record(started.elapsed().as_micros() as u64)?;
        // Each measured on a machine running no other instance: the service goes (with its
        // process) before the next one starts.
        let resp = b
            .http
            .delete(format!(
                "{}/api/v1/namespaces/default/services/cold-{i}",
                b.api
            ))
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!(
                "deleting cold-{i}: {}",
                resp.text().await.unwrap_or_default()
            );
        }
    }
    println!(
        "cold start ({n} services at zero, one request each): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(&h, 0.5),
        ms(&h, 0.99),
        h.max() as f64 / 1000.0
    );
    Ok(())
}

/// `connections` clients for `duration`: (requests/s, latency).
async fn drive(
    b: &Bench,
    url: &str,
    host: &str,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<(f64, Histogram<u64>)> {
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let http = b.http.clone();
            let (url, host) = (url.to_string(), host.to_string());
            tokio::spawn(async move {
                let mut h = histogram()?;
                while started.elapsed() < duration {
                    let t = Instant::now();
                    let resp = http.get(&url).header("host", &host).send().await?;
                    if !resp.status().is_success() {
                        bail!("status {}", resp.status());
                    }
                    resp.bytes().await?;
                    h.record(t.elapsed().as_micros() as u64)?;
                }
                anyhow::Ok(h)
            })
        })
        .collect();
    let mut all = histogram()?;
    for t in tasks {
        all.add(t.await??)?;
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    Ok((rate, all))
}

async fn warm(b: &Bench, connections: usize, duration: Duration) -> anyhow::Result<()> {
    b.apply(vec![b.service(
        "warm",
        json!({"autoscaling.knative.dev/min-scale": "1", "autoscaling.knative.dev/max-scale": "1"}),
    )])
    .await?;
    b.ready("warm").await?;
    // The instance's own port, from its first output line.
    let logs = b
        .http
        .get(format!(
            "{}/api/v1/namespaces/default/revisions/warm-00001/logs",
            b.api
        ))
        .send()
        .await?
        .text()
        .await?;
    let port: u16 = logs
        .split("listening on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .context("the instance's port in its output")?;
    let pid: u32 = logs
        .split("(pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .context("the instance's pid in its output")?;
    let host = "warm.default.localhost";
    let cpu = || (cpu_seconds("self"), cpu_seconds(&pid.to_string()));
    let before = cpu();
    let (direct_rate, direct) = drive(
        b,
        &format!("http://127.0.0.1:{port}/"),
        host,
        connections,
        duration,
    )
    .await?;
    let middle = cpu();
    let (gw_rate, gw) = drive(b, &format!("{}/", b.gateway), host, connections, duration).await?;
    let after = cpu();
    // CPU per request: this process is the clients (direct), then clients and gateway.
    let per = |cpu: f64, n: u64| cpu / n.max(1) as f64 * 1e6;
    let clients = per(middle.0 - before.0, direct.len());
    let app = per(after.1 - middle.1, gw.len());
    let gateway = per(after.0 - middle.0, gw.len()) - clients;
    println!(
        "warm, {connections} connections, {}s each:",
        duration.as_secs()
    );
    println!(
        "  direct   {direct_rate:>8.0} req/s  p50 {:.3} ms  p95 {:.3} ms",
        ms(&direct, 0.5),
        ms(&direct, 0.95)
    );
    println!(
        "  gateway  {gw_rate:>8.0} req/s  p50 {:.3} ms  p95 {:.3} ms   ({:.2}x the rate, p95 {:+.3} ms)",
        ms(&gw, 0.5),
        ms(&gw, 0.95),
        gw_rate / direct_rate,
        ms(&gw, 0.95) - ms(&direct, 0.95)
    );
    println!(
        "  CPU per request: clients {clients:.1} µs, app {app:.1} µs, gateway {gateway:.1} µs (all on the same cores)"
    );
    Ok(())
}

async fn burst(b: &Bench, clients: usize, duration: Duration) -> anyhow::Result<()> {
    b.apply(vec![b.service(
        "burst",
        json!({"autoscaling.knative.dev/initial-scale": "0"}),
    )])
    .await?;
    b.ready("burst").await?;
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let url = format!("{}/?sleep=100", b.gateway);
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (http, url) = (b.http.clone(), url.clone());
            let (ok, errors, done) = (ok.clone(), errors.clone(), done.clone());
            tokio::spawn(async move {
                while !done.load(Ordering::Acquire) {
                    let r = http
                        .get(&url)
                        .header("host", "burst.default.localhost")
                        .send()
                        .await;
                    match r {
                        Ok(resp) if resp.status().is_success() => {
                            let _ = resp.bytes().await;
                            ok.fetch_add(1, Ordering::AcqRel);
                        }
                        _ => {
                            errors.fetch_add(1, Ordering::AcqRel);
                        }
                    }
                }
            })
        })
        .collect();
    println!(
        "burst: 0 → {clients} clients, requests of 100 ms, for {}s",
        duration.as_secs()
    );
    println!(
        "  {:>4}  {:>9}  {:>7}  {:>8}  {:>6}",
        "s", "instances", "wanted", "answers", "errors"
    );
    let started = Instant::now();
    let mut last = (0, 0);
    let mut second = 0;
    while started.elapsed() < duration {
        second += 1;
        let at = started + Duration::from_secs(second);
        tokio::time::sleep_until(at.into()).await;
        let r = b
            .get("/api/v1/namespaces/default/revisions/burst-00001")
            .await?;
        let (o, e) = (ok.load(Ordering::Acquire), errors.load(Ordering::Acquire));
        let n = r["status"]["actualReplicas"].as_u64().unwrap_or(0);
        println!(
            "  {second:>4}  {n:>9}  {:>7}  {:>8}  {:>6}  {}",
            r["status"]["desiredReplicas"].as_u64().unwrap_or(0),
            o - last.0,
            e - last.1,
            "#".repeat(n as usize)
        );
        last = (o, e);
    }
    done.store(true, Ordering::Release);
    for t in tasks {
        let _ = t.await;
    }
    println!(
        "  total: {} answers, {} errors",
        ok.load(Ordering::Acquire),
        errors.load(Ordering::Acquire)
    );
    Ok(())
}

/// User + system CPU seconds of process `pid` (`self` for this one), from /proc.
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0.0;
    };
    // Fields 14 and 15 (utime, stime), in USER_HZ (100 on Linux) ticks.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}
