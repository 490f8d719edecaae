//! Faults and hostile clients, through the real binary: a full disk (the data dir on a small
//! tmpfs of the server's own mount namespace), clients that hold connections or trickle their
//! requests, and a flood of connections.

use super::subscriber::{Behaviour, TestSubscriber};
use super::support::*;
use super::triggers::{apply, trigger, WAIT};
use serde_json::Value;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The server's data dir, a tmpfs of this size mounted in a mount namespace of its own
/// (`unshare`, as root of a user namespace: no privilege needed). RocksDB resumes writing
/// after a full disk only once a memtable's worth (64 MiB) is free again: the tmpfs must be
/// larger than that.
const DISK: &str = "size=320m";
/// How long the small events' retries take to come due, and then to fail their removals.
const RETRY_WAIT: Duration = Duration::from_secs(90);
/// How often a wait re-checks its condition.
const POLL: Duration = Duration::from_millis(50);

fn mount_wrapper(data: &Path) -> Vec<String> {
    vec![
        "unshare".into(),
        "-rm".into(),
        "sh".into(),
        "-c".into(),
        format!("mount -t tmpfs -o {DISK} tmpfs \"$1\" && shift && exec \"$@\""),
        "sh".into(),
        data.display().to_string(),
    ]
}

/// Fills the file system at `file` until it refuses a write; returns the bytes written.
fn fill(file: &Path) -> u64 {
    let mut f = std::fs::File::create(file).unwrap();
    let chunk = vec![0u8; 256 * 1024];
    let mut written = 0;
    while f.write_all(&chunk).and_then(|()| f.sync_all()).is_ok() {
        written += chunk.len() as u64;
    }
    written
}

async fn metric(server: &Server, line_start: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", server.api))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(line_start))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn readyz(server: &Server) -> (u16, String) {
    let r = reqwest::get(format!("{}/readyz", server.api))
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// How many times the subscriber got each event at `path`.
fn per_id(sub: &TestSubscriber, path: &str) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for r in sub.received(path) {
        *n.entry(r.id()).or_default() += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_turns_the_node_unready_storms_no_one_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let wrapper = mount_wrapper(&data);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let server = Server::start_under(&wrapper, &data, &[], &[]);
    // The data dir as the server sees it: its tmpfs.
    let root = PathBuf::from(format!(
        "/proc/{}/root{}",
        server.child.id(),
        data.display()
    ));
    assert!(
        root.join("node-id").exists(),
        "the server's data dir is at {}",
        root.display()
    );
    let sub = TestSubscriber::start().await;
    // Trigger `s` gets the small events: its subscriber fails them once, then takes them; their
    // retries come due well after the disk is full. Trigger `big` gets the large ones and fails
    // them, so their retries (payload included) are what the full disk refuses first.
    sub.set("s", Behaviour::Status(500));
    sub.set("big", Behaviour::Status(500));
    let retry =
        "  delivery:\n    retry: 1000\n    backoffPolicy: linear\n    backoffDelay: PT40S\n";
    apply(
        &server,
        &trigger(
            "s",
            "default",
            &sub.at("s"),
            &format!("  filters:\n  - prefix:\n      id: before-\n{retry}"),
        ),
    );
    apply(
        &server,
        &trigger(
            "big",
            "default",
            &sub.at("big"),
            &format!("  filters:\n  - prefix:\n      id: full-\n{retry}"),
        ),
    );
    let mut accepted = Vec::new();
    for i in 0..5 {
        let id = format!("before-{i}");
        assert_eq!(server.post_event("default", "default", &id).await, 202);
        accepted.push(id);
    }
    sub.wait_for("s", 5, WAIT).await;
    // Each small event's first attempt (500); its retry comes due 40 s later, well after the
    // disk is full (a few seconds from now).
    let before = per_id(&sub, "s");
    sub.set("s", Behaviour::Status(200));

    // The disk fills: the ingress answers 503 once the log's preallocated space is used up
    // (large events use it up quickly), and the node turns unready, saying why.
    let written = fill(&root.join("filler"));
    // Whatever RocksDB frees meanwhile (a preallocated log file closed) is taken too, so the
    // disk stays full until the test frees it.
    let keep_full = Arc::new(AtomicBool::new(true));
    let topping = {
        let (keep_full, file) = (keep_full.clone(), root.join("filler2"));
        std::thread::spawn(move || {
            let mut f = std::fs::File::create(file).unwrap();
            let chunk = vec![0u8; 64 * 1024];
            while keep_full.load(Ordering::Relaxed) {
                if f.write_all(&chunk).and_then(|()| f.sync_all()).is_err() {
                    std::thread::sleep(POLL);
                }
            }
        })
    };
    assert!(
        written < 320 << 20,
        "the data dir is not on the small tmpfs"
    );
    let client = reqwest::Client::new();
    let url = format!("{}/default/default", server.ingress);
    let big: &'static [u8] = Box::leak(
        format!("\"{}\"", "x".repeat(512 * 1024))
            .into_bytes()
            .into_boxed_slice(),
    );
    let deadline = std::time::Instant::now() + WAIT;
    for n in 0.. {
        assert!(
            std::time::Instant::now() < deadline,
            "the ingress never refused an event"
        );
        let id = format!("full-{n}");
        let answer = binary_post(&client, &url, &id, &[], big)
            .send()
            .await
            .unwrap();
        match answer.status().as_u16() {
            202 => accepted.push(id),
            503 => break,
            other => panic!("POST answered {other}"),
        }
    }
    let (code, why) = readyz(&server).await;
    assert_eq!(code, 503, "{why}");
    assert!(why.contains("the event log refuses writes"), "{why}");
    // The large events' retries cannot be stored: the delivery store refuses writes too.
    eventually(WAIT, "the delivery store to refuse writes", || {
        let server = &server;
        async move {
            readyz(server)
                .await
                .1
                .contains("the delivery store refuses writes")
                .then_some(())
        }
    })
    .await;

    // The small events' retries come due: the subscriber takes each, and its removal cannot
    // be stored. Each is delivered once, the removal waiting for the disk, not delivered
    // again on every pass.
    eventually(
        RETRY_WAIT,
        "deliveries whose removal fails against the full disk",
        || {
            let (server, sub, before) = (&server, &sub, &before);
            async move {
                let errors = metric(
                    server,
                    "ferry_dispatch_store_errors_total{namespace=\"default\",trigger=\"s\"}",
                )
                .await;
                let now = per_id(sub, "s");
                let all = before.iter().all(|(id, n)| now[id] > *n);
                (errors >= 20.0 && all).then_some(())
            }
        },
    )
    .await;
    let during = per_id(&sub, "s");
    for (id, n) in &before {
        assert_eq!(
            during[id] - n,
            1,
            "{id}: delivered once while its removal waits, not again on every pass"
        );
    }
    // The trigger's status says so meanwhile.
    let s = get_json(&server, &["get", "trigger", "s"]);
    let store = condition(&s, "StoreReady").unwrap_or(&Value::Null);
    assert_eq!(store["status"], "False", "{s}");
    assert_eq!(store["reason"], "StoreWriteFailing", "{s}");
    assert!(
        store["message"]
            .as_str()
            .unwrap()
            .contains("retry queue or dead-letter store"),
        "{s}"
    );
    assert_eq!(condition(&s, "Ready").unwrap()["status"], "False", "{s}");

    // Space comes back: the node turns ready on its own, and takes events again. (The large
    // events' subscriber takes them from now on: failing them all, it counts as down, and
    // gets one event a second, while the trigger probes it.)
    keep_full.store(false, Ordering::Relaxed);
    topping.join().unwrap();
    std::fs::remove_file(root.join("filler")).unwrap();
    std::fs::remove_file(root.join("filler2")).unwrap();
    sub.set("big", Behaviour::Status(200));
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (code, why) = readyz(&server).await;
        if code == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz stayed {code} after space came back: {why}"
        );
        tokio::time::sleep(POLL).await;
    }
    eventually(WAIT, "the ingress to take events again", || {
        let server = &server;
        async move {
            (server.post_event("default", "default", "before-late").await == 202).then_some(())
        }
    })
    .await;
    accepted.push("before-late".into());
    sub.wait_for("s", during.values().sum::<usize>() + 1, WAIT)
        .await;
    // The removals went through once the disk was back: the queue of `s` empties, with no
    // event delivered again.
    eventually(WAIT, "the retry queue of s to empty", || {
        let server = &server;
        async move {
            (metric(
                server,
                "ferry_dispatch_retry_queue{namespace=\"default\",trigger=\"s\"}",
            )
            .await
                == 0.0)
                .then_some(())
        }
    })
    .await;
    assert!(
        per_id(&sub, "s").values().all(|n| *n <= 2),
        "{:?}",
        per_id(&sub, "s")
    );
    let s = get_json(&server, &["get", "trigger", "s"]);
    assert_eq!(condition(&s, "StoreReady"), None, "{s}");
    assert_eq!(condition(&s, "Ready").unwrap()["status"], "True", "{s}");
    // Every acknowledged event is in the log and was delivered (the large ones at least once:
    // their subscriber still fails them).
    let stored: Vec<String> = server
        .events("default", "default")
        .iter()
        .map(|e| e["id"].as_str().unwrap_or_default().to_string())
        .collect();
    for id in &accepted {
        assert!(
            stored.contains(id),
            "{id} was acknowledged and is not in the log"
        );
    }
    eventually(WAIT, "every acknowledged event to be delivered", || {
        let mut got = per_id(&sub, "s");
        got.extend(per_id(&sub, "big"));
        let all = accepted.iter().all(|id| got.contains_key(id));
        async move { all.then_some(()) }
    })
    .await;
}

/// Reads what the server sends until it closes the connection (or `limit` passes: `None`).
async fn until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(limit, stream.read_to_end(&mut got)).await;
    match read {
        Ok(_) => Some(String::from_utf8_lossy(&got).into_owned()),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_flooding_clients_do_not_starve_producers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &[
            // Long enough that the flood below is held while producers get through (so what
            // closes its oldest connection is an eviction, not this timeout).
            "--ingress-header-timeout",
            "5s",
            // The trickling requests below hold their slots this long: room for the third
            // request to find them held even on a loaded machine (5 s was not always, in CI).
            "--ingress-body-timeout",
            "15s",
            "--ingress-max-connections",
            "16",
            "--ingress-max-in-flight",
            "2",
        ],
    );
    let addr = server.ingress.trim_start_matches("http://").to_string();
    // A slowloris client: half a header, then nothing. Closed once the header is late.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /default/default HTTP/1.1\r\nHost: x\r\nce-id: ")
        .await
        .unwrap();
    assert!(
        until_closed(&mut slow, WAIT).await.is_some(),
        "a half-sent header keeps its connection open"
    );

    // Requests trickling their bodies hold both request slots: a third request is refused at
    // once with 503 and Retry-After; the trickling ones get 408 when their time is up.
    let mut trickling = Vec::new();
    for i in 0..2 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /default/default HTTP/1.1\r\nHost: x\r\nce-specversion: 1.0\r\nce-id: t{i}\r\nce-source: /e2e\r\nce-type: t\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        trickling.push(s);
    }
    // Both are past the gate before the third is tried (else the third could take a slot
    // first and one trickling request be the one refused).
    eventually(
        WAIT,
        "both trickling requests to hold their slots",
        || async {
            (metric(&server, "ferry_ingress_requests_in_flight").await == 2.0).then_some(())
        },
    )
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/default/default", server.ingress);
    let refused = eventually(WAIT, "a request refused while both slots are held", || {
        let req = binary_post(&client, &url, "third", &[], b"{}");
        async move {
            let r = req.send().await.unwrap();
            (r.status() == 503).then_some(r)
        }
    })
    .await;
    assert_eq!(refused.headers()["retry-after"], "1");
    assert!(refused
        .text()
        .await
        .unwrap()
        .contains("limit of 2 requests in flight"));
    for mut s in trickling {
        let answer = until_closed(&mut s, WAIT).await.unwrap_or_default();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    assert_eq!(
        server
            .post_event("default", "default", "after-trickle")
            .await,
        202
    );

    // A flood of idle connections (half of them slowloris) fills the connection limit: a
    // producer still gets through at once, each new connection taking the place of the one
    // idle the longest, which is closed. (Every connection busy with a request is what gets a
    // new one refused: `ingress::server`'s test.)
    let flood_started = std::time::Instant::now();
    let mut idle = Vec::new();
    for i in 0..16 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        if i % 2 == 0 {
            s.write_all(b"POST /default/default HTTP/1.1\r\nHo")
                .await
                .unwrap();
        }
        idle.push(s);
    }
    for i in 0..4 {
        let id = format!("during-flood-{i}");
        let answer = binary_post(&reqwest::Client::new(), &url, &id, &[], b"{}")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 202, "a producer during the flood");
    }
    // The oldest flooder (half a header) was closed for them, without an answer, before its
    // header timeout (5 s); the newest is still open.
    let oldest = until_closed(&mut idle[0], Duration::from_secs(2)).await;
    assert!(
        flood_started.elapsed() < Duration::from_secs(5),
        "inconclusive: the flood took longer than the header timeout"
    );
    assert_eq!(oldest.as_deref(), Some(""), "the oldest flooder is closed");
    assert_eq!(
        until_closed(&mut idle[15], Duration::from_millis(200)).await,
        None,
        "the newest flooder is still open"
    );
    drop(idle);
    assert_eq!(
        metric(
            &server,
            "ferry_ingress_refused_total{reason=\"connections\"}"
        )
        .await,
        0.0
    );
    assert!(metric(&server, "ferry_ingress_refused_total{reason=\"in_flight\"}").await >= 1.0);
}
