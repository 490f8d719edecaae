//! Kafka failing under load: the Kafka-protocol server frozen (SIGSTOP) and thawed, and one of
//! two nodes cut off from Kafka by taking its network link down (`ip netns`, veth pairs).
//! Every event acknowledged with 202 is delivered; refused ones are answered 503.

use super::nodes::{ready, shares};
use super::subscriber::TestSubscriber;
use super::support::*;
use super::tansu::Tansu;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long an append waits for Kafka before the ingress answers 503 (`--kafka-produce-timeout`).
const PRODUCE_TIMEOUT: &str = "2s";
/// Each producer posts at most one event per this (a bounded load).
const PACE: Duration = Duration::from_millis(20);
/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(100);
/// Generous: Kafka consumer groups rebalance on their own timers.
const WAIT: Duration = Duration::from_secs(90);

/// What the producers got: the ids acknowledged with 202, and a count per status.
#[derive(Default)]
struct Tally {
    acked: Vec<String>,
    statuses: HashMap<u16, usize>,
}

/// Producers posting binary events to `ingresses` in turn, `prefix` + a counter as the id,
/// until stopped.
struct Load {
    tally: Arc<Mutex<Tally>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(ingresses: Vec<String>, prefix: &str, producers: usize) -> Self {
        let tally: Arc<Mutex<Tally>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..producers)
            .map(|p| {
                let (tally, stop, ingresses) = (tally.clone(), stop.clone(), ingresses.clone());
                let prefix = format!("{prefix}{p}-");
                tokio::spawn(async move {
                    let client = reqwest::Client::builder()
                        .timeout(Duration::from_secs(20))
                        .build()
                        .unwrap();
                    let mut i = 0usize;
                    let mut pace = tokio::time::interval(PACE);
                    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    while !stop.load(Ordering::Relaxed) {
                        pace.tick().await;
                        let id = format!("{prefix}{i}");
                        let url = format!("{}/default/default", ingresses[i % ingresses.len()]);
                        let status = match binary_post(&client, &url, &id, &[], b"{}").send().await
                        {
                            Ok(r) => r.status().as_u16(),
                            Err(_) => 0,
                        };
                        let mut t = tally.lock().unwrap();
                        *t.statuses.entry(status).or_default() += 1;
                        if status == 202 {
                            t.acked.push(id);
                        }
                        drop(t);
                        i += 1;
                    }
                })
            })
            .collect();
        Self { tally, stop, tasks }
    }

    fn acked(&self) -> usize {
        self.tally.lock().unwrap().acked.len()
    }

    fn count(&self, status: u16) -> usize {
        self.tally
            .lock()
            .unwrap()
            .statuses
            .get(&status)
            .copied()
            .unwrap_or(0)
    }

    /// Waits until `n` more events than now are acknowledged.
    async fn until_more_acked(&self, n: usize, what: &str) {
        let target = self.acked() + n;
        eventually(WAIT, what, || async move {
            (self.acked() >= target).then_some(())
        })
        .await;
    }

    /// Stops the producers; checks every answer was 202 or 503; returns the acknowledged ids.
    async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let tally = Arc::try_unwrap(self.tally)
            .ok()
            .unwrap()
            .into_inner()
            .unwrap();
        eprintln!(
            "acknowledged {}, statuses {:?}",
            tally.acked.len(),
            tally.statuses
        );
        assert!(
            tally.statuses.keys().all(|s| matches!(s, 202 | 503)),
            "only 202 or 503: {:?}",
            tally.statuses
        );
        tally.acked
    }
}

async fn readyz(api: &str) -> (u16, String) {
    match reqwest::get(format!("{api}/readyz")).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// Waits until every acknowledged id reached the subscriber; returns how many came twice or more.
async fn all_delivered(sub: &TestSubscriber, path: &str, acked: &[String]) -> usize {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for r in sub.received(path) {
            *seen.entry(r.id()).or_default() += 1;
        }
        let missing: Vec<&String> = acked.iter().filter(|id| !seen.contains_key(*id)).collect();
        if missing.is_empty() {
            return seen.values().filter(|&&n| n > 1).count();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {} acknowledged events never reached /{path}, e.g. {:?}",
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(10)]
        );
        tokio::time::sleep(POLL).await;
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

fn apply_trigger(node: &Server, sub: &TestSubscriber) {
    let yaml = format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t\nspec:\n  broker: default\n  subscriber:\n    uri: {}\n",
        sub.at("all")
    );
    let out = node.cli_stdin(&["apply", "-f", "-"], &yaml);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_frozen_under_load_means_503s_then_recovery_with_nothing_acknowledged_lost() {
    let kafka = Tansu::start();
    let mut flags = kafka_flags(&kafka.bootstrap);
    flags.extend(["--kafka-produce-timeout", PRODUCE_TIMEOUT]);
    let dir = tempfile::tempdir().unwrap();
    let node = Server::start(&dir.path().join("data"), &flags);
    let sub = TestSubscriber::start().await;
    apply_trigger(&node, &sub);
    eventually(WAIT, "the trigger ready", || async {
        ready(&node, "trigger", "t").then_some(())
    })
    .await;

    let load = Load::start(vec![node.ingress.clone()], "f", 4);
    load.until_more_acked(100, "events taken before the freeze")
        .await;

    // Kafka stops answering (a hung broker, a partition between Ferry and it).
    signal(kafka.child.id(), "-STOP");
    eventually(
        WAIT,
        "503s and an unready node while Kafka is frozen",
        || async {
            let (code, body) = readyz(&node.api).await;
            (load.count(503) > 0 && code == 503 && body.contains("event log")).then_some(())
        },
    )
    .await;

    // Kafka answers again: the node recovers on its own.
    signal(kafka.child.id(), "-CONT");
    load.until_more_acked(100, "events taken after the thaw")
        .await;
    eventually(WAIT, "the node ready again", || async {
        (readyz(&node.api).await.0 == 200).then_some(())
    })
    .await;
    let acked = load.finish().await;
    let twice = all_delivered(&sub, "all", &acked).await;
    eprintln!("delivered twice {twice}");
}

/// A network namespace joined to this one by two veth pairs: a "kafka" link (the one cut) and
/// an "access" link the test reaches the node through. Removed when dropped.
struct Netns {
    name: String,
    /// The namespace's end of the kafka link.
    kafka_if: String,
    /// This side's address on the kafka link (Kafka is advertised there).
    kafka_host: String,
    /// This side's and the namespace's addresses on the access link.
    access_host: String,
    access_ns: String,
}

/// Runs `ip ARGS`; its error output is returned, not printed.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

fn ip_ok(args: &[&str]) {
    if let Err(e) = ip(args) {
        panic!("ip {}: {e}", args.join(" "));
    }
}

/// Deletes the namespaces of earlier runs whose process is gone (killed before cleaning up);
/// deleting a namespace deletes its veth pairs.
fn remove_leftovers() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let owner = name
            .strip_prefix("ferry-e2e-")
            .and_then(|rest| rest.rsplit('-').next());
        if owner.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

impl Netns {
    /// Fails the test where namespaces cannot be made (not root, no `ip`), unless
    /// `FERRY_E2E_NO_NETNS=1` says this machine cannot (then `None`: the test is skipped, loudly).
    fn create() -> Option<Self> {
        let pid = std::process::id();
        remove_leftovers();
        // A free id: a live run's link names (and so its subnets) are taken.
        let id = (0..250).map(|n| (pid + n) % 250).find(|id| {
            let (h, n) = (format!("fk{id}h"), format!("fk{id}n"));
            ip(&["link", "add", &h, "type", "veth", "peer", "name", &n]).is_ok()
        });
        let Some(id) = id else {
            assert!(
                std::env::var("FERRY_E2E_NO_NETNS").is_ok_and(|v| v == "1"),
                "cannot create veth pairs (needs root and iproute2); \
                 FERRY_E2E_NO_NETNS=1 skips this test"
            );
            return None;
        };
        let ns = Self {
            name: format!("ferry-e2e-{id}-{pid}"),
            kafka_if: format!("fk{id}n"),
            kafka_host: format!("10.231.{id}.1"),
            access_host: format!("10.232.{id}.1"),
            access_ns: format!("10.232.{id}.2"),
        };
        if let Err(e) = ip(&["netns", "add", &ns.name]) {
            let _ = ip(&["link", "del", &format!("fk{id}h")]);
            panic!("ip netns add {}: {e}", ns.name);
        }
        for (link, host, ns_ip) in [
            ("fk", &ns.kafka_host, format!("10.231.{id}.2")),
            ("fa", &ns.access_host, ns.access_ns.clone()),
        ] {
            let (h, n) = (format!("{link}{id}h"), format!("{link}{id}n"));
            if link == "fa" {
                ip_ok(&["link", "add", &h, "type", "veth", "peer", "name", &n]);
            }
            ip_ok(&["link", "set", &n, "netns", &ns.name]);
            ip_ok(&["addr", "add", &format!("{host}/24"), "dev", &h]);
            ip_ok(&["link", "set", &h, "up"]);
            ns.exec(&["addr", "add", &format!("{ns_ip}/24"), "dev", &n]);
            ns.exec(&["link", "set", &n, "up"]);
        }
        ns.exec(&["link", "set", "lo", "up"]);
        Some(ns)
    }

    /// `ip ARGS` inside the namespace.
    fn exec(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.name, "ip"];
        all.extend_from_slice(args);
        ip_ok(&all);
    }

    fn kafka_link(&self, up: bool) {
        self.exec(&[
            "link",
            "set",
            &self.kafka_if,
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth ends, and with them their peers here.
        let _ = ip(&["netns", "del", &self.name]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_kafka_hands_over_turns_unready_and_rejoins_losing_nothing() {
    let Some(net) = Netns::create() else {
        eprintln!("SKIPPED: cannot create a network namespace (needs root and iproute2)");
        return;
    };
    // Kafka on every address here, advertised on the kafka link, which both nodes reach.
    let kafka = Tansu::start_at("0.0.0.0", &net.kafka_host);
    let mut flags = kafka_flags(&kafka.bootstrap);
    flags.extend(["--kafka-produce-timeout", PRODUCE_TIMEOUT]);
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = Server::start(&dirs[0].path().join("data"), &flags);
    let listen = format!("{}:0", net.access_ns);
    let mut b_flags = flags.clone();
    b_flags.extend([
        "--ingress-listen",
        &listen,
        "--api-listen",
        &listen,
        "--gateway-listen",
        &listen,
        // An address of the test's own network, not loopback: no authentication on purpose.
        "--insecure-no-auth",
    ]);
    let b = Server::start_under(
        &["ip", "netns", "exec", &net.name],
        &dirs[1].path().join("data"),
        &b_flags,
        &[],
    );
    // Reachable from both namespaces.
    let sub = TestSubscriber::start_on(&net.access_host).await;
    apply_trigger(&a, &sub);
    eventually(WAIT, "the partitions shared", || async {
        let s = shares(&[&a, &b]).await;
        (s == [2, 2]).then_some(())
    })
    .await;

    // Producers at each node.
    let load_a = Load::start(vec![a.ingress.clone()], "a", 2);
    let load_b = Load::start(vec![b.ingress.clone()], "b", 2);
    load_a.until_more_acked(50, "events taken by A").await;
    load_b.until_more_acked(50, "events taken by B").await;

    // B loses its link to Kafka: it refuses (503) and turns unready; A takes B's partitions.
    net.kafka_link(false);
    eventually(WAIT, "B unready and refusing", || async {
        let (code, body) = readyz(&b.api).await;
        (load_b.count(503) > 0 && code == 503 && body.contains("event log")).then_some(())
    })
    .await;
    // (When this times out, the panic carries both nodes' last log lines and A's partition
    // metrics, so a failure in CI says whether A saw a rebalance at all.)
    let holding = tokio::time::timeout(WAIT, async {
        while shares(&[&a]).await != [4] {
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
    if holding.is_err() {
        let tail = |log: std::path::PathBuf| {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        let metrics = reqwest::get(format!("{}/metrics", a.api))
            .await
            .unwrap()
            .text()
            .await
            .unwrap_or_default();
        let partitions: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("ferry_dispatch_partitions"))
            .collect();
        panic!(
            "timed out waiting for A holding every partition\nA's partitions: {partitions:?}\n\
             A's log:\n{}\nB's log:\n{}",
            tail(dirs[0].path().join("data.log")),
            tail(dirs[1].path().join("data.log"))
        );
    }
    // A goes on taking and delivering events meanwhile.
    load_a
        .until_more_acked(100, "events taken by A while B is cut off")
        .await;

    // The link returns: B is ready again, takes events, and gets its share back.
    net.kafka_link(true);
    eventually(WAIT, "B ready again", || async {
        (readyz(&b.api).await.0 == 200).then_some(())
    })
    .await;
    eventually(WAIT, "the partitions shared again", || async {
        (shares(&[&a, &b]).await == [2, 2]).then_some(())
    })
    .await;
    load_b
        .until_more_acked(50, "events taken by B after it rejoined")
        .await;
    let mut acked = load_a.finish().await;
    acked.extend(load_b.finish().await);
    let twice = all_delivered(&sub, "all", &acked).await;
    eprintln!("delivered twice {twice}");
}
