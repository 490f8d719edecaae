//! Retry scheduling on tokio's paused clock: an exponential backoff of 10 retries (2 s, 4 s,
//! … 1024 s, 34 minutes in all) checked in virtual time, with the real RocksDB log and
//! delivery store underneath and no wall-clock wait.

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use broker::metrics::LogMetrics;
use broker::{
    AttrValue, Event, EventLog, Publisher, Retention, RocksLog, RocksOptions, Topic, TopicConfig,
};
use dispatcher::filter::Filter;
use dispatcher::policy::DeliveryPolicy;
use dispatcher::subscriber::{Handler, HandlerError};
use dispatcher::{Dispatcher, TriggerSpec};
use futures::FutureExt;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn ten_exponential_retries_wait_2_to_1024_seconds_in_virtual_time() {
    let real_start = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let registry = prometheus::Registry::new();
    let log: Arc<dyn EventLog> = Arc::new(
        RocksLog::open(
            dir.path().join("log"),
            RocksOptions::default(),
            LogMetrics::new(&registry).unwrap(),
        )
        .unwrap(),
    );
    let topic = Topic::new("ferry-system", "work");
    let config = TopicConfig {
        partitions: 1,
        retention: Retention::default(),
    };
    log.create_topic(&topic, config).await.unwrap();
    let dispatcher = Dispatcher::open(
        Arc::new(Publisher::with_default_limit(log.clone())),
        &dir.path().join("dispatch"),
        &registry,
        Duration::from_secs(1),
    )
    .unwrap();

    // A handler that is never ready: every attempt is retryable, and its time is recorded.
    let attempts: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let handler = {
        let attempts = attempts.clone();
        Handler::new("never-ready", move |_e: Event| {
            attempts.lock().unwrap().push(Instant::now());
            async {
                Err(HandlerError {
                    retryable: true,
                    message: "not ready".into(),
                })
            }
            .boxed()
        })
    };
    dispatcher
        .start_at_end(&topic, "ferry-system", "never-ready")
        .await
        .unwrap();
    let policy = DeliveryPolicy::from_spec(
        &json!({"retry": 10, "backoffPolicy": "exponential", "backoffDelay": "PT1S"}),
    );
    let spec = TriggerSpec {
        namespace: "ferry-system".into(),
        name: "never-ready".into(),
        topic: topic.clone(),
        filter: Filter::compile(None, None).unwrap(),
        subscriber: Arc::new(handler),
        dead_letter: None,
        policy,
        ordered: false,
        max_in_flight: 10,
        feed: None,
        instance: "1".into(),
    };
    dispatcher.run(spec, "v1".into()).await;
    let s = |v: &str| AttrValue::String(v.to_string());
    let event = Event {
        attributes: vec![
            ("specversion".into(), s("1.0")),
            ("id".into(), s("e1")),
            ("source".into(), s("/t")),
            ("type".into(), s("work")),
        ],
        data: None,
    };
    log.append(&topic, vec![event]).await.unwrap();

    // Waiting is virtual: each sleep of this loop lets the paused clock jump to the next timer.
    let deadline = Instant::now() + Duration::from_secs(4 * 3600);
    while dispatcher
        .dead_letters("ferry-system", "never-ready")
        .unwrap()
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "no dead letter after 4 virtual hours"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let times = attempts.lock().unwrap().clone();
    assert_eq!(times.len(), 11, "the first attempt and 10 retries");
    for (n, pair) in times.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let backoff = Duration::from_secs(1 << (n + 1));
        assert!(
            gap >= backoff && gap < backoff + Duration::from_millis(250),
            "retry {}: waited {gap:?}, backoff {backoff:?}",
            n + 1
        );
    }
    let total = times[10] - times[0];
    assert!(total >= Duration::from_secs(2046), "{total:?}");
    let dl = &dispatcher
        .dead_letters("ferry-system", "never-ready")
        .unwrap()[0];
    assert_eq!(dl.error.attempts, 11);
    assert_eq!(dl.error.message, "not ready");
    // 34 virtual minutes took a small part of that in real time.
    assert!(real_start.elapsed() < Duration::from_secs(120));
    dispatcher.shutdown().await;
}
