//! Log scenarios, each written once against the `EventLog` trait and run on every engine.

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/tansu.rs"]
#[allow(dead_code)]
mod tansu;

#[path = "support/engines.rs"]
mod engines;

use broker::{
    AttrValue, Event, EventLog, LogError, Position, Retention, StartAt, Topic, TopicConfig,
};
use bytes::Bytes;
use engines::Engine;
use std::collections::HashSet;
use std::time::Duration;

fn config(partitions: u32) -> TopicConfig {
    TopicConfig {
        partitions,
        retention: Retention::default(),
    }
}

fn event(id: &str) -> Event {
    Event {
        attributes: vec![
            ("specversion".into(), AttrValue::String("1.0".into())),
            ("id".into(), AttrValue::String(id.into())),
            ("source".into(), AttrValue::String("/test".into())),
            ("type".into(), AttrValue::String("demo".into())),
        ],
        data: Some(Bytes::from(format!("{{\"id\":\"{id}\"}}"))),
    }
}

fn keyed(id: &str, key: &str) -> Event {
    let mut e = event(id);
    e.set_attr("partitionkey", AttrValue::String(key.into()));
    e
}

fn id_of(e: &Event) -> String {
    e.attr_text("id").unwrap().into_owned()
}

async fn read_all(log: &dyn EventLog, topic: &Topic) -> Vec<broker::Stored> {
    let mut all = Vec::new();
    for (p, w) in log.watermarks(topic).await.unwrap().into_iter().enumerate() {
        all.extend(
            log.read(topic, p as u32, w.start, usize::MAX)
                .await
                .unwrap(),
        );
    }
    all
}

async fn faithful_round_trip(engine: &dyn Engine) {
    let log = engine.open().await;
    let topic = Topic::new("default", "default");
    log.create_topic(&topic, config(3)).await.unwrap();
    let full = Event {
        attributes: vec![
            ("specversion".into(), AttrValue::String("1.0".into())),
            ("id".into(), AttrValue::String("ünï-cøde id".into())),
            (
                "source".into(),
                AttrValue::String("https://example.com/a?b=c".into()),
            ),
            ("type".into(), AttrValue::String("com.example.demo".into())),
            (
                "time".into(),
                AttrValue::String("2020-01-01T10:00:00.123+02:00".into()),
            ),
            (
                "dataschema".into(),
                AttrValue::String("http://schema".into()),
            ),
            (
                "datacontenttype".into(),
                AttrValue::String("application/octet-stream".into()),
            ),
            ("subject".into(), AttrValue::String("".into())),
            ("count".into(), AttrValue::Integer(-42)),
            ("flag".into(), AttrValue::Boolean(true)),
        ],
        data: Some(Bytes::from((0..=255u8).collect::<Vec<_>>())),
    };
    let no_data = Event {
        data: None,
        ..event("2")
    };
    let pos = log
        .append(&topic, vec![full.clone(), no_data.clone()])
        .await
        .unwrap();
    assert_eq!(pos.len(), 2);
    let got = log
        .read(&topic, pos[0].partition, pos[0].offset, 1)
        .await
        .unwrap();
    assert_eq!(*got[0].event, full);
    assert_eq!(got[0].position, pos[0]);
    let got = log
        .read(&topic, pos[1].partition, pos[1].offset, 1)
        .await
        .unwrap();
    assert_eq!(*got[0].event, no_data);
}

async fn partition_key_keeps_order(engine: &dyn Engine) {
    let log = engine.open().await;
    let topic = Topic::new("ns", "orders");
    log.create_topic(&topic, config(4)).await.unwrap();
    let mut positions = Vec::new();
    for i in 0..50 {
        positions.extend(
            log.append(&topic, vec![keyed(&i.to_string(), "customer-1")])
                .await
                .unwrap(),
        );
    }
    let partitions: HashSet<u32> = positions.iter().map(|p| p.partition).collect();
    assert_eq!(partitions.len(), 1, "one key, one partition");
    let p = positions[0].partition;
    let got = log.read(&topic, p, 0, 1000).await.unwrap();
    let ids: Vec<String> = got.iter().map(|s| id_of(&s.event)).collect();
    let want: Vec<String> = (0..50).map(|i| i.to_string()).collect();
    assert_eq!(ids, want);
    let offsets: Vec<u64> = got.iter().map(|s| s.position.offset).collect();
    assert_eq!(offsets, (0..50).collect::<Vec<u64>>(), "offsets are dense");
}

async fn unkeyed_events_spread(engine: &dyn Engine) {
    let log = engine.open().await;
    let topic = Topic::new("ns", "spread");
    log.create_topic(&topic, config(4)).await.unwrap();
    let events = (0..40).map(|i| event(&i.to_string())).collect();
    log.append(&topic, events).await.unwrap();
    for w in log.watermarks(&topic).await.unwrap() {
        assert_eq!(w.end - w.start, 10, "40 events over 4 partitions");
    }
}

async fn unknown_topic_is_an_error(engine: &dyn Engine) {
    let log = engine.open().await;
    let topic = Topic::new("nope", "missing");
    assert!(matches!(
        log.append(&topic, vec![event("1")]).await,
        Err(LogError::UnknownTopic(_))
    ));
    assert!(matches!(
        log.read(&topic, 0, 0, 1).await,
        Err(LogError::UnknownTopic(_))
    ));
}

async fn commits_per_group_survive_restart(engine: &dyn Engine) {
    let topic = Topic::new("ns", "commits");
    {
        let log = engine.open().await;
        log.create_topic(&topic, config(2)).await.unwrap();
        log.append(&topic, (0..10).map(|i| event(&i.to_string())).collect())
            .await
            .unwrap();
        log.commit(
            &topic,
            "g1",
            &[Position {
                partition: 0,
                offset: 3,
            }],
        )
        .await
        .unwrap();
        log.commit(
            &topic,
            "g2",
            &[Position {
                partition: 1,
                offset: 5,
            }],
        )
        .await
        .unwrap();
        log.close().await.unwrap();
    }
    let log = engine.open().await;
    // What a restarted server's control plane does for the brokers it knows are Ferry's.
    log.admit(&topic);
    assert_eq!(
        log.committed(&topic, "g1").await.unwrap(),
        vec![Some(3), None]
    );
    assert_eq!(
        log.committed(&topic, "g2").await.unwrap(),
        vec![None, Some(5)]
    );
    assert_eq!(log.committed(&topic, "g3").await.unwrap(), vec![None, None]);
}

async fn restart_keeps_events_and_continues_offsets(engine: &dyn Engine) {
    let topic = Topic::new("ns", "restart");
    {
        let log = engine.open().await;
        log.create_topic(&topic, config(1)).await.unwrap();
        log.append(&topic, vec![event("a"), event("b")])
            .await
            .unwrap();
        log.close().await.unwrap();
        assert!(matches!(
            log.append(&topic, vec![event("x")]).await,
            Err(LogError::Closed)
        ));
    }
    let log = engine.open().await;
    log.admit(&topic);
    let pos = log.append(&topic, vec![event("c")]).await.unwrap();
    assert_eq!(
        pos,
        vec![Position {
            partition: 0,
            offset: 2
        }]
    );
    let ids: Vec<String> = read_all(log.as_ref(), &topic)
        .await
        .iter()
        .map(|s| id_of(&s.event))
        .collect();
    assert_eq!(ids, ["a", "b", "c"]);
}

async fn consumer_resumes_from_commit_and_waits(engine: &dyn Engine) {
    let log = engine.open().await;
    let topic = Topic::new("ns", "consume");
    log.create_topic(&topic, config(1)).await.unwrap();
    log.append(&topic, (0..5).map(|i| event(&i.to_string())).collect())
        .await
        .unwrap();

    let mut c = log
        .consumer(&topic, Some("g"), StartAt::Earliest)
        .await
        .unwrap();
    let got = c.poll(3, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        got.iter().map(|s| id_of(&s.event)).collect::<Vec<_>>(),
        ["0", "1", "2"]
    );
    c.commit(&[Position {
        partition: 0,
        offset: 3,
    }])
    .await
    .unwrap();

    // A new consumer of the same group starts at the commit.
    let mut c = log
        .consumer(&topic, Some("g"), StartAt::Earliest)
        .await
        .unwrap();
    let got = c.poll(10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        got.iter().map(|s| id_of(&s.event)).collect::<Vec<_>>(),
        ["3", "4"]
    );

    // Latest sees only what comes after it; poll wakes up when it arrives.
    let mut latest = log.consumer(&topic, None, StartAt::Latest).await.unwrap();
    let writer = {
        let log = log.clone();
        let topic = topic.clone();
        tokio::spawn(async move { log.append(&topic, vec![event("new")]).await.unwrap() })
    };
    let got = latest.poll(10, Duration::from_secs(10)).await.unwrap();
    writer.await.unwrap();
    assert_eq!(
        got.iter().map(|s| id_of(&s.event)).collect::<Vec<_>>(),
        ["new"]
    );
    // Nothing more: poll returns empty after its wait.
    assert!(latest
        .poll(10, Duration::from_millis(20))
        .await
        .unwrap()
        .is_empty());
}

async fn poll_where_passes_over_what_is_not_kept(engine: &dyn Engine) {
    let log = engine.open().await;
    let topic = Topic::new("ns", "where");
    log.create_topic(&topic, config(1)).await.unwrap();
    log.append(&topic, (0..10).map(|i| event(&i.to_string())).collect())
        .await
        .unwrap();
    let mut c = log.consumer(&topic, None, StartAt::Earliest).await.unwrap();
    let keep = |e: &Event| {
        e.attr_text("id")
            .is_some_and(|id| id.parse::<u32>().unwrap() % 3 == 0)
    };
    let got = c
        .poll_where(100, Duration::from_secs(5), &keep)
        .await
        .unwrap();
    let ids: Vec<String> = got.iter().map(|s| id_of(&s.event)).collect();
    assert_eq!(ids, ["0", "3", "6", "9"]);
    assert_eq!(
        c.positions(),
        vec![Position {
            partition: 0,
            offset: 10
        }],
        "read past the others"
    );
    // Nothing new: an empty answer after the wait.
    assert!(c
        .poll_where(100, Duration::from_millis(20), &keep)
        .await
        .unwrap()
        .is_empty());
}

async fn concurrent_appends_all_land_once(engine: &dyn Engine) {
    let log = engine.open().await;
    let topic = Topic::new("ns", "concurrent");
    log.create_topic(&topic, config(4)).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let log = log.clone();
        let topic = topic.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..50 {
                let id = format!("{t}-{i}");
                let pos = log
                    .append(&topic, vec![keyed(&id, &format!("k{t}"))])
                    .await
                    .unwrap();
                acked.push((id, pos[0]));
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    let positions: HashSet<Position> = acked.iter().map(|(_, p)| *p).collect();
    assert_eq!(positions.len(), 800, "every append got its own position");
    let stored = read_all(log.as_ref(), &topic).await;
    assert_eq!(stored.len(), 800);
    for (id, pos) in &acked {
        let s = stored.iter().find(|s| s.position == *pos).unwrap();
        assert_eq!(&id_of(&s.event), id);
    }
    // Per key, events are stored in the order they were acknowledged.
    for t in 0..16 {
        let ids: Vec<String> = stored
            .iter()
            .filter(|s| s.event.attr_text("partitionkey").unwrap() == format!("k{t}"))
            .map(|s| id_of(&s.event))
            .collect();
        let want: Vec<String> = (0..50).map(|i| format!("{t}-{i}")).collect();
        assert_eq!(ids, want);
    }
}

async fn retention_by_bytes_removes_oldest(engine: &dyn Engine) {
    let log = engine.open().await;
    let topic = Topic::new("ns", "bytes");
    let cfg = TopicConfig {
        partitions: 1,
        retention: Retention {
            max_age: None,
            max_bytes_per_partition: Some(2_000),
        },
    };
    log.create_topic(&topic, cfg).await.unwrap();
    // A reader that has read nothing yet.
    let mut slow = log
        .consumer(&topic, Some("slow"), StartAt::Earliest)
        .await
        .unwrap();
    for i in 0..20 {
        let mut e = event(&i.to_string());
        e.data = Some(Bytes::from(vec![b'x'; 400]));
        log.append(&topic, vec![e]).await.unwrap();
    }
    let removed = log.enforce_retention().await.unwrap();
    assert!(removed >= 15, "removed {removed}");
    // It reads what is left, and is told how many it will never see.
    let got = slow.poll(100, Duration::from_millis(200)).await.unwrap();
    assert_eq!(got.len() as u64, 20 - removed);
    assert_eq!(slow.take_skipped(), removed);
    assert_eq!(slow.take_skipped(), 0, "told once");
    let w = log.watermarks(&topic).await.unwrap()[0];
    assert_eq!(w.end, 20, "the end offset never moves back");
    assert_eq!(w.start, removed);
    let kept = log.read(&topic, 0, 0, 100).await.unwrap();
    assert_eq!(kept.len() as u64, 20 - removed);
    assert_eq!(
        id_of(&kept.last().unwrap().event),
        "19",
        "the newest are kept"
    );
    assert_eq!(
        kept[0].position.offset, removed,
        "reads below start begin at start"
    );
}

async fn retention_by_age_keeps_offsets_across_restart(engine: &dyn Engine) {
    let topic = Topic::new("ns", "age");
    {
        let log = engine.open().await;
        let cfg = TopicConfig {
            partitions: 1,
            retention: Retention {
                max_age: Some(Duration::from_millis(1)),
                max_bytes_per_partition: None,
            },
        };
        log.create_topic(&topic, cfg).await.unwrap();
        log.append(&topic, vec![event("old1"), event("old2")])
            .await
            .unwrap();
        // Age is measured in wall-clock milliseconds: poll until they have aged out.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut removed = 0;
        while removed < 2 && std::time::Instant::now() < deadline {
            removed += log.enforce_retention().await.unwrap();
            tokio::task::yield_now().await;
        }
        assert_eq!(removed, 2);
        log.close().await.unwrap();
    }
    let log = engine.open().await;
    assert_eq!(
        log.watermarks(&topic).await.unwrap()[0],
        broker::Watermarks { start: 2, end: 2 }
    );
    let pos = log.append(&topic, vec![event("new")]).await.unwrap();
    assert_eq!(pos[0].offset, 2, "offsets are never reused");
}

async fn delete_topic_deletes_its_data(engine: &dyn Engine) {
    let log = engine.open().await;
    let topic = Topic::new("ns", "doomed");
    let other = Topic::new("ns", "kept");
    log.create_topic(&topic, config(2)).await.unwrap();
    log.create_topic(&other, config(2)).await.unwrap();
    log.append(&topic, vec![event("1"), event("2")])
        .await
        .unwrap();
    log.append(&other, vec![event("3")]).await.unwrap();
    log.commit(
        &topic,
        "g",
        &[Position {
            partition: 0,
            offset: 1,
        }],
    )
    .await
    .unwrap();
    log.delete_topic(&topic).await.unwrap();
    assert!(matches!(
        log.append(&topic, vec![event("x")]).await,
        Err(LogError::UnknownTopic(_))
    ));
    assert!(log.topics().await.unwrap().iter().all(|(t, _)| t != &topic));
    log.create_topic(&topic, config(2)).await.unwrap();
    assert!(
        read_all(log.as_ref(), &topic).await.is_empty(),
        "a re-created broker starts empty"
    );
    assert_eq!(log.committed(&topic, "g").await.unwrap(), vec![None, None]);
    assert_eq!(
        read_all(log.as_ref(), &other).await.len(),
        1,
        "other brokers are untouched"
    );
}

macro_rules! on_engines {
    ($($scenario:ident),* $(,)?) => {
        mod rocksdb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let engine = super::engines::Rocks::default();
                    super::$scenario(&engine).await;
                }
            )*
        }
        mod kafka {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let engine = super::engines::Kafka::default();
                    super::$scenario(&engine).await;
                }
            )*
        }
    };
}

on_engines!(
    faithful_round_trip,
    partition_key_keeps_order,
    unkeyed_events_spread,
    unknown_topic_is_an_error,
    commits_per_group_survive_restart,
    restart_keeps_events_and_continues_offsets,
    consumer_resumes_from_commit_and_waits,
    poll_where_passes_over_what_is_not_kept,
    concurrent_appends_all_land_once,
    delete_topic_deletes_its_data,
);

/// Retention is the engine's own on RocksDB; Kafka applies the topic's retention.ms and
/// retention.bytes itself, on its own schedule.
mod rocksdb_retention {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retention_by_bytes_removes_oldest() {
        super::retention_by_bytes_removes_oldest(&super::engines::Rocks::default()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retention_by_age_keeps_offsets_across_restart() {
        super::retention_by_age_keeps_offsets_across_restart(&super::engines::Rocks::default())
            .await;
    }
}

/// What only the Kafka engine has: consumer groups across processes, Kafka's key partitioning,
/// topic names.
#[path = "scenarios/kafka_only.rs"]
mod kafka_only;
