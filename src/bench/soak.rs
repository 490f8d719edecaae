//! `ferry bench soak`, in the spirit of Knative's Sacura: events at a fixed rate through a
//! broker and one trigger for `--duration`, the subscriber failing `--fail-fraction` of the
//! deliveries at random (the trigger retries them), and, with `--kill-every`, Ferry killed
//! with -9 and started again on the same data dir at random moments around that period.
//!
//! Ferry runs as a child process (this binary's `serve`); the producer and the subscriber
//! live in this process. Each event has a unique id. Acknowledged: the ingress answered 202.
//! Delivered: the subscriber answered 2xx to it at least once. Lost: acknowledged and never
//! delivered (must be 0). Duplicated: 2xx deliveries beyond the first. The child's RSS is
//! sampled every second. The last line is `sent N acknowledged N delivered N lost N
//! duplicated N`.

use anyhow::{bail, Context};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use rand::Rng;
use serde_json::json;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct SoakBench {
    /// How long events are produced, like 1m or 10m.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Events per second.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// Fraction of deliveries the subscriber answers 500 (retried).
    #[arg(long, default_value_t = 0.1)]
    pub fail_fraction: f64,
    /// Kill Ferry with -9 about this often (a random moment between half and one and a half
    /// of it), then start it again; not given: no kills.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub kill_every: Option<Duration>,
    /// How long to wait after the last event for deliveries to finish.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub drain: Duration,
}

/// Longest a (re)start of Ferry may take to listen.
const START: Duration = Duration::from_secs(60);

/// What the subscriber saw: 2xx deliveries per event id.
#[derive(Default)]
struct Seen {
    ok: HashMap<u64, u32>,
    failed: u64,
}

struct Sub {
    seen: Mutex<Seen>,
    fail_fraction: f64,
}

async fn receive(State(sub): State<Arc<Sub>>, headers: HeaderMap) -> StatusCode {
    let Some(id) = headers
        .get("ce-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return StatusCode::BAD_REQUEST;
    };
    let fail = rand::rng().random_bool(sub.fail_fraction.clamp(0.0, 1.0));
    let Ok(mut seen) = sub.seen.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR;
    };
    if fail {
        seen.failed += 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    *seen.ok.entry(id).or_default() += 1;
    StatusCode::OK
}

/// `ferry serve` as a child, on `data`, with ports chosen by the OS.
struct Ferry {
    child: Child,
    ingress: String,
    api: String,
}

fn start_ferry(data: &std::path::Path) -> anyhow::Result<Ferry> {
    let exe = std::env::current_exe().context("finding the ferry binary")?;
    let mut child = Command::new(exe)
        .args(["serve", "--data-dir"])
        .arg(data)
        .args([
            "--ingress-listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
            "--gateway-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting ferry serve")?;
    // Read on a thread of its own to the end, so the pipe never fills.
    let stdout = child.stdout.take().context("ferry serve's stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut ingress, mut api) = (None, None);
    while ingress.is_none() || api.is_none() {
        let Ok(line) = rx.recv_timeout(START) else {
            break;
        };
        if let Some(a) = line.strip_prefix("ingress listening on ") {
            ingress = Some(a.to_string());
        }
        if let Some(a) = line.strip_prefix("api listening on ") {
            api = Some(a.to_string());
        }
    }
    match (ingress, api) {
        (Some(ingress), Some(api)) => Ok(Ferry {
            child,
            ingress,
            api,
        }),
        _ => {
            let _ = child.kill();
            bail!("ferry serve did not listen within {START:?}")
        }
    }
}

impl Drop for Ferry {
    /// No `ferry serve` is left behind, however the bench ends.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

pub async fn run(b: SoakBench) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let sub = Arc::new(Sub {
        seen: Mutex::default(),
        fail_fraction: b.fail_fraction,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sub_addr = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/", axum::routing::post(receive))
        .with_state(sub.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let ferry = start_ferry(&data)?;
    let client = reqwest::Client::new();
    let trigger = json!({
        "apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
        "metadata": {"name": "soak", "namespace": "default"},
        "spec": {"broker": "default", "subscriber": {"uri": format!("http://{sub_addr}/")},
                 "delivery": {"retry": 30, "backoffPolicy": "exponential", "backoffDelay": "PT0.1S"}},
    });
    super::apply(&ferry.api, vec![trigger]).await?;
    // Events count from when the trigger is Ready (it starts at the log's end then).
    let url = format!("{}/api/v1/namespaces/default/triggers/soak", ferry.api);
    let deadline = Instant::now() + START;
    loop {
        let t: serde_json::Value = client.get(&url).send().await?.json().await?;
        let ready = t["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
        if ready {
            break;
        }
        if Instant::now() > deadline {
            bail!("the soak trigger did not turn Ready: {t}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("(kill -9 stops the process, not the machine: what it tests is Ferry's own durability, not fsync's)");
    println!(
        "soak: {} events/s for {:?}, subscriber failing {:.0}%, kill -9 {}",
        b.rate,
        b.duration,
        b.fail_fraction * 100.0,
        b.kill_every
            .map_or("never".to_string(), |k| format!("about every {k:?}"))
    );

    let ferry = Arc::new(Mutex::new(ferry));
    let (mut sent, mut acknowledged) = (0u64, Vec::new());
    let mut kills = 0;
    let started = Instant::now();
    let mut next_kill = b.kill_every.map(|k| started + jitter(k));
    let mut rss: Vec<(u64, f64)> = Vec::new();
    let mut next_sample = started;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / b.rate.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut in_flight = tokio::task::JoinSet::new();
    while started.elapsed() < b.duration {
        tick.tick().await;
        let now = Instant::now();
        if now >= next_sample {
            if let Ok(f) = ferry.lock() {
                if let Some(m) = rss_mib(f.child.id()) {
                    rss.push((started.elapsed().as_secs(), m));
                }
            }
            next_sample = now + Duration::from_secs(1);
        }
        if next_kill.is_some_and(|k| now >= k) {
            tokio::task::block_in_place(|| kill_and_restart(&ferry, &data))?;
            kills += 1;
            next_kill = b.kill_every.map(|k| Instant::now() + jitter(k));
        }
        let id = sent;
        sent += 1;
        let url = ferry
            .lock()
            .map(|f| format!("{}/default/default", f.ingress))
            .unwrap_or_default();
        let client = client.clone();
        in_flight.spawn(async move {
            let ok = client
                .post(url)
                .header("ce-specversion", "1.0")
                .header("ce-id", id.to_string())
                .header("ce-source", "/soak")
                .header("ce-type", "soak")
                .header("content-type", "application/json")
                .body("{}")
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::ACCEPTED);
            (id, ok)
        });
        while let Some(Ok((id, ok))) = in_flight.try_join_next() {
            if ok {
                acknowledged.push(id);
            }
        }
    }
    while let Some(r) = in_flight.join_next().await {
        if let Ok((id, true)) = r {
            acknowledged.push(id);
        }
    }
    // Deliveries finish: every acknowledged event delivered, or the drain time is up.
    let drain_until = Instant::now() + b.drain;
    loop {
        let missing = {
            let seen = sub.seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            acknowledged
                .iter()
                .filter(|id| !seen.ok.contains_key(id))
                .count()
        };
        if missing == 0 || Instant::now() > drain_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if let Ok(f) = ferry.lock() {
        if let Some(m) = rss_mib(f.child.id()) {
            rss.push((started.elapsed().as_secs(), m));
        }
    }

    let seen = sub.seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let delivered = acknowledged
        .iter()
        .filter(|id| seen.ok.contains_key(id))
        .count() as u64;
    let lost = acknowledged.len() as u64 - delivered;
    let duplicated: u64 = seen
        .ok
        .values()
        .map(|n| u64::from(n.saturating_sub(1)))
        .sum();
    println!(
        "kills: {kills}; subscriber answered 500 {} times",
        seen.failed
    );
    let peak = rss.iter().map(|(_, m)| *m).fold(0.0, f64::max);
    let step = (rss.len() / 10).max(1);
    let timeline: Vec<String> = rss
        .iter()
        .step_by(step)
        .map(|(t, m)| format!("{t}s {m:.0}"))
        .collect();
    println!(
        "rss MiB over time: {} (peak {peak:.0})",
        timeline.join(", ")
    );
    println!(
        "duplicated: {:.3}% of delivered",
        if delivered == 0 {
            0.0
        } else {
            duplicated as f64 * 100.0 / delivered as f64
        }
    );
    println!(
        "sent {sent} acknowledged {} delivered {delivered} lost {lost} duplicated {duplicated}",
        acknowledged.len()
    );
    if lost > 0 {
        bail!("{lost} acknowledged events were never delivered");
    }
    Ok(())
}

/// A random moment between half and one and a half of `every` from now.
fn jitter(every: Duration) -> Duration {
    every.mul_f64(rand::rng().random_range(0.5..1.5))
}

/// Kills Ferry with -9 and starts it again on the same data dir (new ports).
fn kill_and_restart(ferry: &Mutex<Ferry>, data: &std::path::Path) -> anyhow::Result<()> {
    let mut f = ferry
        .lock()
        .map_err(|_| anyhow::anyhow!("the child's lock is poisoned"))?;
    f.child.kill().context("kill -9 of ferry")?;
    f.child.wait()?;
    *f = start_ferry(data)?;
    Ok(())
}
