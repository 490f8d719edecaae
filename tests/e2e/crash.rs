//! Durability: kill -9 during a load loses no acknowledged event; SIGTERM drains and exits 0.

use super::support::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_load_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &[]);
    let url = format!("{}/default/default", server.ingress);
    let acked: Arc<Mutex<Vec<(usize, usize)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    for p in 0..16usize {
        let (url, acked, stop) = (url.clone(), acked.clone(), stop.clone());
        producers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let key = format!("producer-{p}");
            // Bounded: at most 2000 events per producer.
            for seq in 0..2000usize {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let id = format!("{p}-{seq}");
                let sent = binary_post(
                    &http,
                    &url,
                    &id,
                    &[("ce-partitionkey", &key), ("ce-seq", &seq.to_string())],
                    b"{\"load\":true}",
                )
                .send()
                .await;
                match sent {
                    Ok(r) if r.status() == 202 => acked.lock().unwrap().push((p, seq)),
                    // The server died under us: this one was never acknowledged.
                    _ => return,
                }
            }
        }));
    }
    // Kill the server mid-load, once a good number of events were acknowledged.
    eventually(Duration::from_secs(60), "500 acknowledged events", || {
        let n = acked.lock().unwrap().len();
        async move { (n >= 500).then_some(()) }
    })
    .await;
    server.kill9();
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    let server = Server::start(&data, &[]);
    let events = server.events("default", "default");
    let mut stored: HashMap<usize, Vec<usize>> = HashMap::new();
    for e in &events {
        let p: usize = e["partitionkey"]
            .as_str()
            .unwrap()
            .trim_start_matches("producer-")
            .parse()
            .unwrap();
        stored
            .entry(p)
            .or_default()
            .push(e["seq"].as_str().unwrap().parse().unwrap());
    }
    for (p, seq) in &acked {
        assert!(
            stored.get(p).is_some_and(|s| s.contains(seq)),
            "acknowledged event {p}-{seq} was lost"
        );
    }
    // Within a partition key (one partition), events are stored in the order they were sent.
    // The tail lists across partitions by append time; the partition's own order is what matters.
    for (p, seqs) in &stored {
        let mut sorted = seqs.clone();
        sorted.sort();
        assert_eq!(seqs, &sorted, "producer {p}'s events out of order");
        let want: Vec<usize> = (0..seqs.len()).collect();
        assert_eq!(seqs, &want, "producer {p}: no gaps, no duplicates");
    }
    // The log takes new events after the crash, at new offsets.
    assert_eq!(server.post_event("default", "default", "after").await, 202);
    assert_eq!(server.events("default", "default").len(), events.len() + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &["--fsync", "never"]);
    let http = reqwest::Client::new();
    let url = format!("{}/default/default", server.ingress);
    for i in 0..20 {
        let resp = binary_post(&http, &url, &format!("t-{i}"), &[], b"{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
    }
    let ready = http
        .get(format!("{}/readyz", server.api))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let status = server.terminate();
    assert_eq!(status.code(), Some(0), "graceful shutdown exits 0");
    // Even with fsync=never, a clean shutdown syncs everything acknowledged.
    let server = Server::start(&data, &[]);
    assert_eq!(server.events("default", "default").len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_delivery_redelivers_what_was_not_settled() {
    use super::subscriber::{Behaviour, TestSubscriber};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &[]);
    let sub = TestSubscriber::start().await;
    sub.set("slow", Behaviour::Delay(Duration::from_millis(300)));
    let yaml = format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t\nspec:\n  broker: default\n  subscriber:\n    uri: {}\n",
        sub.at("slow")
    );
    let out = server.cli_stdin(&["apply", "-f", "-"], &yaml);
    assert!(out.status.success(), "{}", stderr(&out));
    let http = reqwest::Client::new();
    let url = format!("{}/default/default", server.ingress);
    for i in 0..200 {
        let resp = binary_post(&http, &url, &format!("k{i}"), &[], b"{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
    }
    // Kill while deliveries are in flight.
    sub.wait_for("slow", 20, Duration::from_secs(30)).await;
    server.kill9();
    let _server = Server::start(&data, &[]);
    sub.set("slow", Behaviour::Status(200));
    eventually(
        Duration::from_secs(60),
        "every event delivered at least once",
        || {
            let got: std::collections::HashSet<String> =
                sub.received("slow").iter().map(|r| r.id()).collect();
            async move { (got.len() == 200).then_some(()) }
        },
    )
    .await;
}
