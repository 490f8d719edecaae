//! The delivery store on Kafka (`ferry-deliveries`, a real Kafka-protocol server): a node's
//! local copy resumes where it stopped, a new node reads the topic, and each sees the other's
//! writes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../broker/tests/support/tansu.rs"]
mod tansu;

use broker::{AttrValue, Event};
use bytes::Bytes;
use dispatcher::store::{DeadLetter, DeliveryStore, ErrorInfo, Retry};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);

fn event(id: &str) -> Event {
    Event {
        attributes: vec![("id".into(), AttrValue::String(id.into()))],
        data: Some(Bytes::from(vec![7u8; 2048])),
    }
}

fn retry(id: &str, due_ms: u64) -> Retry {
    Retry {
        id: id.into(),
        due_ms,
        attempts: 2,
        event: event(id),
        last_error: None,
        to_sink: false,
    }
}

fn options(bootstrap: &str) -> broker::KafkaOptions {
    broker::KafkaOptions {
        bootstrap: bootstrap.into(),
        replication_factor: 1,
        max_batch_records: Some(1),
        fetch_wait: None,
        produce_timeout: None,
        min_insync_replicas: None,
        security: Default::default(),
    }
}

async fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

fn ids(s: &DeliveryStore) -> Vec<(String, u64)> {
    s.retries("ns/t", 100)
        .unwrap()
        .into_iter()
        .map(|r| (r.id, r.due_ms))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_retries_and_dead_letters_through_the_topic() {
    let kafka = tansu::Tansu::start();
    let opts = options(&kafka.bootstrap);
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    {
        let a = DeliveryStore::kafka(&opts, a_dir.path()).await.unwrap();
        for (i, due) in [300u64, 100, 200].into_iter().enumerate() {
            a.put_retry("ns/t", &retry(&format!("{i}-1-00"), due))
                .await
                .unwrap();
        }
        // Moved: written again under the same id.
        a.put_retry("ns/t", &retry("1-1-00", 50)).await.unwrap();
        a.put_dead_letter(
            "ns/t",
            &DeadLetter {
                id: "0-1-00".into(),
                time_ms: 9,
                event: event("0-1-00"),
                error: ErrorInfo {
                    code: Some(500),
                    body: String::new(),
                    message: "no".into(),
                    attempts: 3,
                    time: "t".into(),
                    destination: "http://x".into(),
                },
            },
        )
        .await
        .unwrap();
        assert_eq!(
            ids(&a),
            [("1-1-00".to_string(), 50), ("2-1-00".to_string(), 200)]
        );
        assert_eq!(a.counts("ns/t"), (2, 1));
    }
    // A restart of node a reads on from its copy; node b, new, reads the whole topic.
    let a = DeliveryStore::kafka(&opts, a_dir.path()).await.unwrap();
    let b = DeliveryStore::kafka(&opts, b_dir.path()).await.unwrap();
    for s in [&a, &b] {
        assert_eq!(
            ids(s),
            [("1-1-00".to_string(), 50), ("2-1-00".to_string(), 200)]
        );
        assert_eq!(s.counts("ns/t"), (2, 1));
        assert_eq!(
            s.dead_letters("ns/t", None, 10).unwrap().items[0]
                .event
                .data
                .as_ref()
                .map(Bytes::len),
            Some(2048)
        );
    }
    // Each sees the other's writes as they come.
    b.remove_retry("ns/t", "1-1-00").await.unwrap();
    eventually("a to see b's removal", || ids(&a).len() == 1).await;
    assert_eq!(a.replay("ns/t", Some("0-1-00"), 7).await.unwrap(), 1);
    eventually("b to see a's replay", || {
        ids(&b).first().map(|(id, due)| (id.as_str(), *due)) == Some(("0-1-00", 7))
            && b.counts("ns/t") == (2, 0)
    })
    .await;
}

/// A retry an earlier Ferry wrote (`r` + trigger + due + id, and its `i` index) is read, written
/// anew in this layout and its old records deleted from the topic: a node that reads the topic
/// later finds it once, and not at all once it is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_of_an_earlier_ferry_are_rewritten_once() {
    let kafka = tansu::Tansu::start();
    let opts = options(&kafka.bootstrap);
    {
        let raw = broker::kafka::compacted::CompactedTopic::open(&opts, "ferry-deliveries", false)
            .await
            .unwrap();
        let header = br#"{"id":"1-5-00","attempts":2,"error":null,"time_ms":0,"to_sink":false}"#;
        let mut value = (header.len() as u32).to_le_bytes().to_vec();
        value.extend_from_slice(header);
        value.extend_from_slice(&broker::codec::encode(&event("1-5-00"), 0));
        let mut r = b"rns/t\x00".to_vec();
        r.extend_from_slice(&777u64.to_be_bytes());
        r.extend_from_slice(b"1-5-00");
        raw.write(vec![
            (r, Some(value)),
            (
                b"ins/t\x001-5-00".to_vec(),
                Some(777u64.to_be_bytes().to_vec()),
            ),
        ])
        .await
        .unwrap();
    }
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = DeliveryStore::kafka(&opts, dirs[0].path()).await.unwrap();
    assert_eq!(ids(&a), [("1-5-00".to_string(), 777)]);
    let b = DeliveryStore::kafka(&opts, dirs[1].path()).await.unwrap();
    assert_eq!(ids(&b), [("1-5-00".to_string(), 777)], "once, not twice");
    assert_eq!(b.retries("ns/t", 10).unwrap()[0].event, event("1-5-00"));
    b.remove_retry("ns/t", "1-5-00").await.unwrap();
    eventually("a to see the removal", || ids(&a).is_empty()).await;
    let c = DeliveryStore::kafka(&opts, dirs[2].path()).await.unwrap();
    assert!(ids(&c).is_empty(), "the old record does not bring it back");
}
