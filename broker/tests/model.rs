//! Model-based test: random append / read / commit / reopen sequences against an in-memory model.

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/tansu.rs"]
#[allow(dead_code)]
mod tansu;

#[path = "support/engines.rs"]
#[allow(dead_code)] // the Kafka engine is for the scenarios
mod engines;

use broker::{AttrValue, Event, Position, Retention, Topic, TopicConfig};
use bytes::Bytes;
use engines::Engine;
use proptest::prelude::*;
use std::collections::HashMap;

const PARTITIONS: u32 = 3;

#[derive(Clone, Debug)]
enum Op {
    /// Append a batch; each event with an optional partition key (one of 4).
    Append(Vec<Option<u8>>),
    Read {
        partition: u32,
        from: u64,
        max: usize,
    },
    Commit {
        group: u8,
        partition: u32,
        offset: u64,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec(proptest::option::of(0u8..4), 1..5).prop_map(Op::Append),
        3 => (0..PARTITIONS, 0u64..30, 0usize..10).prop_map(|(partition, from, max)| Op::Read { partition, from, max }),
        2 => (0u8..2, 0..PARTITIONS, 0u64..30).prop_map(|(group, partition, offset)| Op::Commit { group, partition, offset }),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Default)]
struct Model {
    partitions: Vec<Vec<Event>>,
    committed: HashMap<(u8, u32), u64>,
    key_partition: HashMap<u8, u32>,
}

fn make_event(n: usize, key: Option<u8>) -> Event {
    let mut attributes = vec![
        ("specversion".into(), AttrValue::String("1.0".into())),
        ("id".into(), AttrValue::String(n.to_string())),
        ("source".into(), AttrValue::String("/model".into())),
        ("type".into(), AttrValue::String("t".into())),
        ("seq".into(), AttrValue::Integer(n as i64)),
    ];
    if let Some(k) = key {
        attributes.push(("partitionkey".into(), AttrValue::String(format!("key-{k}"))));
    }
    Event {
        attributes,
        data: Some(Bytes::from(vec![n as u8; n % 7])),
    }
}

async fn check(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let engine = engines::Rocks::default();
    let topic = Topic::new("model", "log");
    let mut log = engine.open().await;
    log.create_topic(
        &topic,
        TopicConfig {
            partitions: PARTITIONS,
            retention: Retention::default(),
        },
    )
    .await
    .unwrap();
    let mut model = Model {
        partitions: vec![Vec::new(); PARTITIONS as usize],
        ..Model::default()
    };
    let mut n = 0;
    for op in ops {
        match op {
            Op::Append(keys) => {
                let events: Vec<Event> = keys
                    .iter()
                    .map(|k| {
                        n += 1;
                        make_event(n, *k)
                    })
                    .collect();
                let positions = log.append(&topic, events.clone()).await.unwrap();
                prop_assert_eq!(positions.len(), events.len());
                for ((pos, event), key) in positions.iter().zip(events).zip(keys) {
                    let part = &mut model.partitions[pos.partition as usize];
                    prop_assert_eq!(pos.offset, part.len() as u64, "offsets are dense");
                    part.push(event);
                    if let Some(k) = key {
                        let first = *model.key_partition.entry(k).or_insert(pos.partition);
                        prop_assert_eq!(first, pos.partition, "a key keeps its partition");
                    }
                }
            }
            Op::Read {
                partition,
                from,
                max,
            } => {
                let got = log.read(&topic, partition, from, max).await.unwrap();
                let part = &model.partitions[partition as usize];
                let lo = (from as usize).min(part.len());
                let hi = (lo + max).min(part.len());
                let want = &part[lo..hi];
                prop_assert_eq!(got.len(), want.len());
                for (i, (s, w)) in got.iter().zip(want).enumerate() {
                    prop_assert_eq!(&*s.event, w);
                    prop_assert_eq!(
                        s.position,
                        Position {
                            partition,
                            offset: (lo + i) as u64
                        }
                    );
                }
            }
            Op::Commit {
                group,
                partition,
                offset,
            } => {
                log.commit(
                    &topic,
                    &format!("g{group}"),
                    &[Position { partition, offset }],
                )
                .await
                .unwrap();
                model.committed.insert((group, partition), offset);
            }
            Op::Reopen => {
                log.close().await.unwrap();
                drop(log);
                log = engine.open().await;
                for group in 0..2u8 {
                    let got = log.committed(&topic, &format!("g{group}")).await.unwrap();
                    let want: Vec<Option<u64>> = (0..PARTITIONS)
                        .map(|p| model.committed.get(&(group, p)).copied())
                        .collect();
                    prop_assert_eq!(got, want);
                }
                let w = log.watermarks(&topic).await.unwrap();
                for (p, part) in model.partitions.iter().enumerate() {
                    prop_assert_eq!(w[p].end, part.len() as u64);
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn log_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(check(ops))?;
    }
}
