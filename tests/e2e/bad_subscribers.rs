//! Subscribers that misbehave at the HTTP level (they hang, answer garbage, close mid-body, or
//! answer 30 MB): each is retried or dead-lettered by its trigger's policy, and Ferry's memory
//! stays bounded.

use super::support::*;
use super::triggers::{apply, dead_letters, post, settled, trigger, WAIT};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// 30 MiB: far more than the 1 MiB of an answer Ferry reads.
const HUGE: usize = 30 * 1024 * 1024;

/// A raw HTTP/1.1 server whose answer depends on the request's path; counts requests per path.
struct RawSubscriber {
    url: String,
    requests: Arc<Mutex<HashMap<String, usize>>>,
}

impl RawSubscriber {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let counts = requests.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(serve(stream, counts.clone()));
            }
        });
        Self { url, requests }
    }

    fn count(&self, path: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

/// Reads one request (head and `Content-Length` body); returns its path.
async fn read_request(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let path = head
        .split_whitespace()
        .nth(1)?
        .trim_start_matches('/')
        .to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut have = buf.len() - head_end;
    while have < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        have += n;
    }
    Some(path)
}

async fn serve(mut stream: TcpStream, counts: Arc<Mutex<HashMap<String, usize>>>) {
    while let Some(path) = read_request(&mut stream).await {
        *counts.lock().unwrap().entry(path.clone()).or_default() += 1;
        let result = match path.as_str() {
            // Never answers; the connection stays open until the test ends.
            "hang" => {
                std::future::pending::<()>().await;
                Ok(())
            }
            "garbage" => stream.write_all(b"\x00\x01 this is not HTTP\r\n\r\n").await,
            // A reply event promised in 1000 bytes, cut off after 10.
            "midbody" => {
                let r = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nce-specversion: 1.0\r\nce-id: r\r\nce-source: /s\r\n\
                          ce-type: reply\r\ncontent-length: 1000\r\n\r\n0123456789",
                    )
                    .await;
                let _ = stream.shutdown().await;
                r.map(|_| ())
            }
            // 30 MiB of something that is not an event: delivered, the body ignored.
            "huge" => answer_huge(&mut stream, "application/octet-stream", "").await,
            // 30 MiB claiming to be a reply event: too large to be one.
            "huge-reply" => {
                answer_huge(
                    &mut stream,
                    "application/json",
                    "ce-specversion: 1.0\r\nce-id: r\r\nce-source: /s\r\nce-type: reply\r\n",
                )
                .await
            }
            _ => {
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await
            }
        };
        if result.is_err() || matches!(path.as_str(), "garbage" | "midbody") {
            return;
        }
    }
}

async fn answer_huge(
    stream: &mut TcpStream,
    content_type: &str,
    extra: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\n{extra}content-length: {HUGE}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    let block = vec![b'x'; 1024 * 1024];
    for _ in 0..HUGE / block.len() {
        // Ferry may stop reading (and close) once it has seen enough.
        stream.write_all(&block).await?;
    }
    Ok(())
}

/// The server's peak resident memory, in MiB (`VmHWM`).
fn peak_rss_mib(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_subscribers_are_retried_or_dead_lettered_with_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let sub = RawSubscriber::start().await;
    let policy = "  delivery:\n    retry: 1\n    backoffDelay: PT0.05S\n    timeout: PT0.5S\n";
    let paths = ["hang", "garbage", "midbody", "huge", "huge-reply"];
    apply(
        &server,
        &paths
            .iter()
            .map(|p| {
                trigger(
                    p,
                    "default",
                    &format!("{}/{p}", sub.url),
                    &format!("  filters:\n  - exact: {{type: {p}}}\n{policy}"),
                )
            })
            .collect::<Vec<_>>()
            .join("---\n"),
    );
    // The footprint before: the same number of events to a subscriber answering plainly.
    const EACH: usize = 6;
    let plain = format!("{}/plain", sub.url);
    apply(
        &server,
        &trigger(
            "plain",
            "default",
            &plain,
            "  filters:\n  - exact: {type: plain}\n",
        ),
    );
    for i in 0..5 * EACH {
        post(&server, &format!("plain-{i}"), "plain", &[]).await;
    }
    settled(&server, "plain").await;
    let before = peak_rss_mib(&server);
    // Several large answers at once: what Ferry holds of them is what is measured.
    for p in paths {
        for i in 0..EACH {
            post(&server, &format!("{p}-{i}"), p, &[]).await;
        }
    }
    for p in paths {
        settled(&server, p).await;
    }

    // Unanswered, unreadable or cut off: retried once (retry: 1), then dead-lettered with why.
    for (p, why) in [
        ("hang", "timed out"),
        ("garbage", "failed"),
        ("midbody", "reading the answer failed"),
    ] {
        let items = eventually(WAIT, &format!("{p}'s dead letters"), || {
            let items = dead_letters(&server, p);
            async move { (items.len() == EACH).then_some(items) }
        })
        .await;
        for item in &items {
            assert_eq!(item["error"]["attempts"], 2, "{p}: {item}");
            let message = item["error"]["message"].as_str().unwrap();
            assert!(message.contains(why), "{p}: {message}");
        }
        assert_eq!(sub.count(p), 2 * EACH, "{p}: one retry per event");
    }
    // 30 MB that is not an event: delivered once each, the body ignored.
    assert_eq!(sub.count("huge"), EACH);
    assert!(dead_letters(&server, "huge").is_empty());
    // 30 MB claiming to be a reply: not retried (asking again repeats side effects), kept.
    let items = dead_letters(&server, "huge-reply");
    assert_eq!(items.len(), EACH);
    assert!(items[0]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("larger than 1 MiB"));
    assert_eq!(sub.count("huge-reply"), EACH);

    // Twelve 30 MiB answers, several at a time (holding them would take 360 MiB), cost Ferry
    // a bounded amount over its footprint before them (measured: 40 MiB, then 92 MiB).
    let peak = peak_rss_mib(&server);
    eprintln!("peak RSS {before} MiB before the large answers, {peak} MiB after");
    assert!(
        peak < before + 128,
        "peak RSS {peak} MiB, {before} MiB before"
    );
}
