//! Scenarios of the Kafka engine alone (the shared ones run on both engines in `scenarios.rs`).

/// Consumer groups across processes exist only on Kafka: the members of a group share the
/// partitions, and a member's partitions move to the others when it leaves.
mod kafka_groups {
    use super::super::*;
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    fn held(c: &dyn broker::Consumer) -> BTreeSet<u32> {
        c.assignment().unwrap().into_iter().collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn members_share_partitions_and_take_over_when_one_leaves() {
        let engine = super::super::engines::Kafka::default();
        let log = engine.open().await;
        let topic = Topic::new("ns", "share");
        log.create_topic(&topic, config(4)).await.unwrap();
        log.append(&topic, (0..40).map(|i| event(&format!("a{i}"))).collect())
            .await
            .unwrap();
        let all: BTreeSet<u32> = (0..4).collect();

        // Alone, a member holds every partition and reads all of them.
        let mut a = log
            .group_member(&topic, "share", StartAt::Earliest)
            .await
            .unwrap();
        let revoked = Arc::new(Mutex::new(Vec::new()));
        let seen = revoked.clone();
        a.on_revoke(Arc::new(move |parts: &[u32]| {
            seen.lock().unwrap().extend_from_slice(parts);
            Vec::new()
        }));
        let mut first = HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while first.len() < 40 || held(a.as_ref()) != all {
            assert!(Instant::now() < deadline, "a read {} of 40", first.len());
            for s in a.poll(100, Duration::from_millis(100)).await.unwrap() {
                first.insert(id_of(&s.event));
            }
        }
        let positions = a.positions();
        a.commit(&positions).await.unwrap();

        // A second member: the partitions are split between the two, none held twice.
        let mut b = log
            .group_member(&topic, "share", StartAt::Earliest)
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (ha, hb) = (held(a.as_ref()), held(b.as_ref()));
            if !ha.is_empty() && !hb.is_empty() && ha.is_disjoint(&hb) && &ha | &hb == all {
                break;
            }
            assert!(Instant::now() < deadline, "no split: a {ha:?}, b {hb:?}");
            assert!(a
                .poll(10, Duration::from_millis(50))
                .await
                .unwrap()
                .is_empty());
            assert!(b
                .poll(10, Duration::from_millis(50))
                .await
                .unwrap()
                .is_empty());
        }
        let (ha, hb) = (held(a.as_ref()), held(b.as_ref()));
        assert_eq!(
            revoked
                .lock()
                .unwrap()
                .iter()
                .copied()
                .collect::<BTreeSet<_>>(),
            hb,
            "a was told which partitions went to b"
        );

        // New events: each read once, by the member holding its partition.
        log.append(&topic, (0..40).map(|i| event(&format!("b{i}"))).collect())
            .await
            .unwrap();
        let mut got: Vec<(String, bool)> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while got.len() < 40 {
            assert!(Instant::now() < deadline, "read {} of 40", got.len());
            for (c, mine, is_a) in [(&mut a, &ha, true), (&mut b, &hb, false)] {
                for s in c.poll(100, Duration::from_millis(50)).await.unwrap() {
                    assert!(mine.contains(&s.position.partition));
                    got.push((id_of(&s.event), is_a));
                }
            }
        }
        let ids: HashSet<&String> = got.iter().map(|(id, _)| id).collect();
        assert_eq!(ids.len(), 40, "no event read twice");
        assert!(got.iter().any(|(_, is_a)| *is_a) && got.iter().any(|(_, is_a)| !*is_a));

        // b leaves: a holds every partition again.
        drop(b);
        let deadline = Instant::now() + Duration::from_secs(30);
        while held(a.as_ref()) != all {
            assert!(Instant::now() < deadline, "a holds {:?}", held(a.as_ref()));
            a.poll(10, Duration::from_millis(50)).await.unwrap();
        }
    }
}

/// Keyed events on Kafka land where the Java client (Kafka's default partitioner: murmur2)
/// puts the same key, so per-key order holds across producers of every kind.
mod kafka_keys {
    use super::super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_partition_key_lands_where_kafkas_murmur2_puts_it() {
        let engine = super::super::engines::Kafka::default();
        let log = engine.open().await;
        let topic = Topic::new("ns", "keys");
        log.create_topic(&topic, config(7)).await.unwrap();
        // Kafka's `Utils.murmur2` of these keys (its own unit tests' values).
        let known: [(&str, i32); 3] = [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("abc", 479_470_107),
        ];
        for (key, hash) in known {
            let at = log
                .append(&topic, vec![keyed(&format!("e-{key}"), key)])
                .await
                .unwrap();
            assert_eq!(
                at[0].partition,
                ((hash & 0x7fff_ffff) % 7) as u32,
                "key {key:?}"
            );
        }
    }
}

/// Broker topics are named so that no two brokers share one (a `-` in the namespace is written
/// `_`), and keep Knative's name where that cannot collide.
mod kafka_names {
    use super::super::*;
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn brokers_never_share_a_topic() {
        let engine = super::super::engines::Kafka::default();
        let log = engine.open().await;
        // `a-b/c` and `a/b-c`: one topic under Knative's plain scheme, two here.
        let (x, y) = (Topic::new("a-b", "c"), Topic::new("a", "b-c"));
        log.create_topic(&x, config(1)).await.unwrap();
        log.create_topic(&y, config(1)).await.unwrap();
        log.append(&x, vec![event("x1")]).await.unwrap();
        log.append(&y, vec![event("y1")]).await.unwrap();
        let ids =
            |got: Vec<broker::Stored>| got.iter().map(|s| id_of(&s.event)).collect::<Vec<_>>();
        assert_eq!(ids(read_all(log.as_ref(), &x).await), ["x1"]);
        assert_eq!(ids(read_all(log.as_ref(), &y).await), ["y1"]);
        log.delete_topic(&y).await.unwrap();
        assert_eq!(
            ids(read_all(log.as_ref(), &x).await),
            ["x1"],
            "deleting y deleted x"
        );

        // Knative's plain name where no collision is possible: a namespace without a `-`.
        let raw = broker::KafkaLog::external(engine.options(), Arc::new(|_| None)).unwrap();
        let plain = Topic::new("shop", "orders-eu");
        log.create_topic(&plain, config(1)).await.unwrap();
        log.append(&plain, vec![event("p1")]).await.unwrap();
        let seen = Topic::new("", "knative-broker-shop-orders-eu");
        assert_eq!(raw.watermarks(&seen).await.unwrap()[0].end, 1);
    }

    /// A broker's topic that exists in Kafka is used only once the control plane admits it
    /// (it knows the topic is Ferry's); its layout is then Kafka's, whatever was asked for.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_topic_that_merely_exists_is_unknown_until_admitted() {
        let engine = super::super::engines::Kafka::default();
        let theirs = Topic::new("ns", "theirs");
        // Someone else (here another client) made it, with 2 partitions.
        engine
            .open()
            .await
            .create_topic(&theirs, config(2))
            .await
            .unwrap();
        let log = engine.open().await;
        assert!(matches!(
            log.append(&theirs, vec![event("t1")]).await,
            Err(LogError::UnknownTopic(_))
        ));
        // Asked to create it with 4, Ferry finds it there and takes none of it as its own.
        assert_eq!(
            log.create_topic(&theirs, config(4)).await.unwrap(),
            broker::Created::Existing
        );
        assert!(matches!(
            log.watermarks(&theirs).await,
            Err(LogError::UnknownTopic(_))
        ));
        log.admit(&theirs);
        assert_eq!(log.watermarks(&theirs).await.unwrap().len(), 2);
        for i in 0..4 {
            log.append(&theirs, vec![event(&format!("t{i}"))])
                .await
                .unwrap();
        }
        // Forgotten (refused, or deleted elsewhere): unknown again.
        log.forget(&theirs);
        assert!(matches!(
            log.append(&theirs, vec![event("t9")]).await,
            Err(LogError::UnknownTopic(_))
        ));
    }
}
