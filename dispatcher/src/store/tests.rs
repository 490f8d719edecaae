//! The delivery store on RocksDB: order, paging, retention, counts, the first layout.

use super::*;
use broker::AttrValue;

fn event(id: &str) -> Event {
    Event {
        attributes: vec![
            ("id".into(), AttrValue::String(id.into())),
            ("n".into(), AttrValue::Integer(3)),
        ],
        data: Some(Bytes::from_static(&[0, 1, 2, 255])),
    }
}

fn info() -> ErrorInfo {
    ErrorInfo {
        code: Some(500),
        body: "b29wcw==".into(),
        message: "boom".into(),
        attempts: 3,
        time: "t".into(),
        destination: "http://x".into(),
    }
}

#[tokio::test]
async fn retries_in_due_order_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = DeliveryStore::open(dir.path()).unwrap();
        for (id, due) in [("late", 300), ("early", 100), ("mid", 200)] {
            s.put_retry(
                "ns/t",
                &Retry {
                    id: id.into(),
                    due_ms: due,
                    attempts: 2,
                    event: event(id),
                    last_error: None,
                    to_sink: false,
                },
            )
            .await
            .unwrap();
        }
        s.put_retry(
            "ns/other",
            &Retry {
                id: "x".into(),
                due_ms: 1,
                attempts: 1,
                event: event("x"),
                last_error: None,
                to_sink: false,
            },
        )
        .await
        .unwrap();
    }
    let s = DeliveryStore::open(dir.path()).unwrap();
    let r = s.retries("ns/t", 10).unwrap();
    assert_eq!(
        r.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["early", "mid", "late"]
    );
    assert_eq!(r[0].event, event("early"));
    assert_eq!(r[0].attempts, 2);
    s.remove_retry("ns/t", "early").await.unwrap();
    assert_eq!(s.retries("ns/t", 10).unwrap().len(), 2);
    // The same id again moves the retry instead of adding one.
    s.put_retry(
        "ns/t",
        &Retry {
            id: "mid".into(),
            due_ms: 50,
            attempts: 3,
            event: event("mid"),
            last_error: None,
            to_sink: false,
        },
    )
    .await
    .unwrap();
    let r = s.retries("ns/t", 10).unwrap();
    assert_eq!(
        r.iter()
            .map(|r| (r.id.as_str(), r.due_ms))
            .collect::<Vec<_>>(),
        [("mid", 50), ("late", 300)]
    );
}

#[tokio::test]
async fn dead_letters_list_replay_and_purge() {
    let dir = tempfile::tempdir().unwrap();
    let s = DeliveryStore::open(dir.path()).unwrap();
    s.put_retry(
        "ns/t",
        &Retry {
            id: "a".into(),
            due_ms: 5,
            attempts: 3,
            event: event("a"),
            last_error: None,
            to_sink: false,
        },
    )
    .await
    .unwrap();
    s.put_dead_letter("ns/t", &dead("a", 10)).await.unwrap();
    s.put_dead_letter("ns/t", &dead("b", 11)).await.unwrap();
    // The same event dead-lettered again (redelivered after a crash) stays one dead letter.
    s.put_dead_letter("ns/t", &dead("b", 12)).await.unwrap();
    assert!(
        s.retries("ns/t", 10).unwrap().is_empty(),
        "dead-lettering removes the retry"
    );
    let dls = s.dead_letters("ns/t", None, 100).unwrap().items;
    assert_eq!(dls.len(), 2);
    assert_eq!(dls[0].error, info());
    assert_eq!(s.replay("ns/t", Some("b"), 50).await.unwrap(), 1);
    assert_eq!(s.dead_letters("ns/t", None, 100).unwrap().items.len(), 1);
    let r = s.retries("ns/t", 10).unwrap();
    assert_eq!((r[0].id.as_str(), r[0].attempts, r[0].due_ms), ("b", 0, 50));
    assert_eq!(s.purge("ns/t", true).await.unwrap(), 1);
    assert!(s.dead_letters("ns/t", None, 100).unwrap().items.is_empty());
    assert!(s.retries("ns/t", 10).unwrap().is_empty());
}

fn retry(id: &str, due_ms: u64) -> Retry {
    Retry {
        id: id.into(),
        due_ms,
        attempts: 1,
        event: event(id),
        last_error: None,
        to_sink: false,
    }
}

fn dead(id: &str, time_ms: u64) -> DeadLetter {
    DeadLetter {
        id: id.into(),
        time_ms,
        event: event(id),
        error: info(),
    }
}

#[tokio::test]
async fn a_pass_reads_only_what_is_due_in_the_partitions_it_owns() {
    let dir = tempfile::tempdir().unwrap();
    let s = DeliveryStore::open(dir.path()).unwrap();
    // Partition 0..4, due 100, 200, 300 each (ids `p-n-hash`), and another trigger's.
    for p in 0..4 {
        for (n, due) in [100, 200, 300].into_iter().enumerate() {
            s.put_retry("ns/t", &retry(&format!("{p}-{n}-00"), due))
                .await
                .unwrap();
        }
    }
    s.put_retry("ns/u", &retry("0-9-00", 1)).await.unwrap();
    let (due, next) = s.due_retries("ns/t", 250, 100, &|p| p != 1).unwrap();
    let mut ids: Vec<_> = due.iter().map(|r| r.id.as_str()).collect();
    assert!(
        due.windows(2).all(|w| w[0].due_ms <= w[1].due_ms),
        "earliest first"
    );
    ids.sort();
    assert_eq!(
        ids,
        ["0-0-00", "0-1-00", "2-0-00", "2-1-00", "3-0-00", "3-1-00"]
    );
    assert_eq!(next, Some(300), "the earliest not yet due");
    // A limit bounds each pass; more due now says so.
    let (due, next) = s.due_retries("ns/t", 250, 2, &|_| true).unwrap();
    assert_eq!(due.len(), 2);
    assert!(due.iter().all(|r| r.due_ms == 100));
    assert_eq!(next, Some(250));
    // Moving a retry moves its index entry (no stale entry left behind).
    s.put_retry("ns/t", &retry("0-0-00", 1000)).await.unwrap();
    let (due, _) = s.due_retries("ns/t", 999, 100, &|p| p == 0).unwrap();
    assert_eq!(due.len(), 2);
    assert_eq!(s.counts("ns/t"), (12, 0));
    s.remove_retry("ns/t", "0-0-00").await.unwrap();
    assert_eq!(s.counts("ns/t"), (11, 0));
    assert_eq!(s.counts("ns/u"), (1, 0));
}

#[tokio::test]
async fn dead_letters_come_in_pages_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let s = DeliveryStore::open(dir.path()).unwrap();
    for i in 0..7u64 {
        s.put_dead_letter("ns/t", &dead(&format!("0-{i}-00"), 1000 + i))
            .await
            .unwrap();
    }
    s.put_dead_letter("ns/u", &dead("0-0-00", 1)).await.unwrap();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = s.dead_letters("ns/t", after.as_deref(), 3).unwrap();
        assert!(page.items.len() <= 3);
        seen.extend(page.items.iter().map(|d| d.time_ms));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(
        seen,
        (1000..1007).collect::<Vec<_>>(),
        "oldest first, each once"
    );
    assert!(matches!(
        s.dead_letters("ns/t", Some("nonsense"), 3),
        Err(StoreError::BadRequest(_))
    ));
    assert_eq!(s.counts("ns/t"), (0, 7));
    // Kept before 1004: 1000..1003 go, in every trigger.
    assert_eq!(s.expire_dead_letters(1004).await.unwrap(), 5);
    let left = s.dead_letters("ns/t", None, 100).unwrap().items;
    assert_eq!(left.first().map(|d| d.time_ms), Some(1004));
    assert_eq!(s.counts("ns/t"), (0, 3));
    assert_eq!(s.counts("ns/u"), (0, 0));
    // Replaying all moves every one to the queue, page by page.
    assert_eq!(s.replay("ns/t", None, 5).await.unwrap(), 3);
    assert_eq!(s.counts("ns/t"), (3, 0));
}

#[tokio::test]
async fn records_of_the_first_layout_are_read_after_an_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    {
        // What an earlier Ferry wrote: `r` + trigger + 0 + due + id, its `i` index, a
        // dead letter under `d` + trigger + 0 + id.
        let db = rocksdb::DB::open_default(dir.path()).unwrap();
        let value = retry_value(&retry("1-5-00", 0)).unwrap();
        let mut k = b"rns/t\x00".to_vec();
        k.extend_from_slice(&777u64.to_be_bytes());
        k.extend_from_slice(b"1-5-00");
        db.put(&k, &value).unwrap();
        db.put(b"ins/t\x001-5-00", 777u64.to_be_bytes()).unwrap();
        let d = encode(
            &Header {
                id: "2-6-00".into(),
                attempts: 3,
                error: Some(info()),
                time_ms: 42,
                to_sink: false,
                due_ms: 0,
                legacy: false,
            },
            &event("2-6-00"),
        )
        .unwrap();
        db.put(b"dns/t\x002-6-00", &d).unwrap();
    }
    for _ in 0..2 {
        let s = DeliveryStore::open(dir.path()).unwrap();
        let r = s.retries("ns/t", 10).unwrap();
        assert_eq!(
            r.iter()
                .map(|r| (r.id.as_str(), r.due_ms))
                .collect::<Vec<_>>(),
            [("1-5-00", 777)]
        );
        assert_eq!(r[0].event, event("1-5-00"));
        let dls = s.dead_letters("ns/t", None, 10).unwrap().items;
        assert_eq!((dls.len(), dls[0].time_ms), (1, 42));
        assert_eq!(s.counts("ns/t"), (1, 1));
        assert!(s.known("ns/t", "1-5-00").unwrap());
    }
}

#[tokio::test]
async fn replaying_and_purging_more_than_a_page_takes_every_one() {
    let dir = tempfile::tempdir().unwrap();
    let s = DeliveryStore::open(dir.path()).unwrap();
    let n = PAGE * 2 + 5;
    for i in 0..n {
        s.put_dead_letter("ns/t", &dead(&format!("0-{i}-00"), 1000 + i as u64))
            .await
            .unwrap();
    }
    assert_eq!(s.counts("ns/t"), (0, n as u64));
    assert_eq!(s.replay("ns/t", None, 5).await.unwrap(), n);
    assert_eq!(s.counts("ns/t"), (n as u64, 0));
    assert_eq!(s.retries("ns/t", n + 1).unwrap().len(), n);
    for i in 0..n {
        s.put_dead_letter("ns/t", &dead(&format!("1-{i}-00"), 1000 + i as u64))
            .await
            .unwrap();
    }
    assert_eq!(s.purge("ns/t", false).await.unwrap(), n);
    assert_eq!(s.counts("ns/t"), (n as u64, 0));
}
