//! In-process handlers (Ferry's own controllers) go through the same runner as HTTP
//! subscribers: filters, retries (checked in virtual time too), the dead-letter store, replies,
//! committed offsets, the max-age drop.

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use broker::metrics::LogMetrics;
use broker::{AttrValue, Event, EventLog, Retention, RocksLog, RocksOptions, Topic, TopicConfig};
use dispatcher::filter::Filter;
use dispatcher::policy::DeliveryPolicy;
use dispatcher::subscriber::{Handler, HandlerError};
use dispatcher::{Dispatcher, TriggerSpec};
use futures::FutureExt;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn event(id: &str, ty: &str) -> Event {
    let s = |v: &str| AttrValue::String(v.to_string());
    Event {
        attributes: vec![
            ("specversion".into(), s("1.0")),
            ("id".into(), s(id)),
            ("source".into(), s("/t")),
            ("type".into(), s(ty)),
        ],
        data: None,
    }
}

/// How often a wait re-checks its condition.
const POLL: Duration = Duration::from_millis(10);

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// A RocksDB log with `topic` of `partitions`, and a dispatcher on it, in `dir`.
async fn setup(
    dir: &tempfile::TempDir,
    topic: &Topic,
    partitions: u32,
) -> (Arc<dyn EventLog>, Arc<Dispatcher>) {
    let registry = prometheus::Registry::new();
    let metrics = LogMetrics::new(&registry).unwrap();
    let log: Arc<dyn EventLog> =
        Arc::new(RocksLog::open(dir.path().join("log"), RocksOptions::default(), metrics).unwrap());
    log.create_topic(
        topic,
        TopicConfig {
            partitions,
            retention: Retention::default(),
        },
    )
    .await
    .unwrap();
    let dispatcher = Dispatcher::open(
        Arc::new(broker::Publisher::with_default_limit(log.clone())),
        &dir.path().join("dispatch"),
        &registry,
        Duration::from_secs(1),
    )
    .unwrap();
    (log, dispatcher)
}

/// The spec of a trigger named `name` on `topic` (in the topic's namespace) delivering to
/// `handler`: ordered ones one event at a time, unordered ones up to 10 at once.
fn runner(
    name: &str,
    topic: &Topic,
    handler: Handler,
    filter: Filter,
    policy: DeliveryPolicy,
    ordered: bool,
) -> TriggerSpec {
    TriggerSpec {
        namespace: topic.namespace.clone(),
        name: name.into(),
        topic: topic.clone(),
        filter,
        subscriber: Arc::new(handler),
        dead_letter: None,
        policy,
        ordered,
        max_in_flight: if ordered { 1 } else { 10 },
        feed: None,
        instance: "1".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_gets_filters_retries_dead_letters_replies_and_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let topic = Topic::new("ferry-system", "work");
    let (log, dispatcher) = setup(&dir, &topic, 2).await;

    // The handler: "flaky" fails twice (retryable) then works; "fatal" fails for good;
    // "ask" answers with a reply; everything it sees is recorded.
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let calls: Arc<Mutex<u32>> = Arc::default();
    let handler = {
        let (seen, calls) = (seen.clone(), calls.clone());
        Handler::new("controller", move |e: Event| {
            let (seen, calls) = (seen.clone(), calls.clone());
            async move {
                let id = e.attr_text("id").unwrap().into_owned();
                seen.lock().unwrap().push(id.clone());
                match id.as_str() {
                    "flaky" => {
                        let mut n = calls.lock().unwrap();
                        *n += 1;
                        if *n <= 2 {
                            return Err(HandlerError {
                                retryable: true,
                                message: "not yet".into(),
                            });
                        }
                        Ok(None)
                    }
                    "fatal" => Err(HandlerError {
                        retryable: false,
                        message: "cannot do that".into(),
                    }),
                    "ask" => Ok(Some(event("answer", "work.done"))),
                    _ => Ok(None),
                }
            }
            .boxed()
        })
    };
    dispatcher
        .start_at_end(&topic, "ferry-system", "controller")
        .await
        .unwrap();
    let policy = DeliveryPolicy::from_spec(
        &json!({"retry": 3, "backoffPolicy": "linear", "backoffDelay": "PT0.05S"}),
    );
    dispatcher
        .run(
            runner(
                "controller",
                &topic,
                handler,
                Filter::compile(None, Some(&json!([{"prefix": {"type": "work."}}]))).unwrap(),
                policy,
                false,
            ),
            "v1".into(),
        )
        .await;

    log.append(
        &topic,
        vec![
            event("flaky", "work.item"),
            event("fatal", "work.item"),
            event("ask", "work.item"),
            event("skip", "other"),
        ],
    )
    .await
    .unwrap();

    let count = |id: &str| seen.lock().unwrap().iter().filter(|s| *s == id).count();
    eventually("three attempts of flaky", || count("flaky") == 3).await;
    eventually("the reply to reach the handler", || count("answer") == 1).await;
    assert_eq!(count("skip"), 0, "filtered out");
    assert_eq!(count("fatal"), 1, "not retried");
    let dls = dispatcher
        .dead_letters("ferry-system", "controller", None, 100)
        .unwrap()
        .items;
    assert_eq!(dls.len(), 1);
    assert_eq!(dls[0].event.attr_text("id").as_deref(), Some("fatal"));
    assert_eq!(dls[0].error.message, "cannot do that");
    assert_eq!(dls[0].error.destination, "handler:controller");

    // Stopping drains and commits: every event (the reply too) is settled.
    dispatcher.shutdown().await;
    let ends = log.watermarks(&topic).await.unwrap();
    let committed = log
        .committed(&topic, &dispatcher::group("ferry-system", "controller"))
        .await
        .unwrap();
    for (w, c) in ends.iter().zip(committed) {
        assert_eq!(c, Some(w.end), "committed up to the end");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_partition_stuck_on_one_event_holds_up_no_other_partition() {
    let dir = tempfile::tempdir().unwrap();
    let topic = Topic::new("default", "ordered");
    let (log, dispatcher) = setup(&dir, &topic, 4).await;
    // Two keys on different partitions.
    let stuck_key = "stuck".to_string();
    let free_key = (0..100)
        .map(|i| format!("free-{i}"))
        .find(|k| {
            broker::event::partition_for_key(k, 4)
                != broker::event::partition_for_key(&stuck_key, 4)
        })
        .unwrap();
    let release = Arc::new(tokio::sync::Notify::new());
    let free_seen: Arc<Mutex<Vec<u32>>> = Arc::default();
    let handler = {
        let (release, free_seen) = (release.clone(), free_seen.clone());
        Handler::new("ordered", move |e: Event| {
            let (release, free_seen) = (release.clone(), free_seen.clone());
            async move {
                let id = e.attr_text("id").unwrap().into_owned();
                if let Some(n) = id.strip_prefix("free-") {
                    free_seen.lock().unwrap().push(n.parse().unwrap());
                } else {
                    release.notified().await;
                }
                Ok(None)
            }
            .boxed()
        })
    };
    dispatcher
        .start_at_end(&topic, "default", "ordered")
        .await
        .unwrap();
    dispatcher
        .run(
            runner(
                "ordered",
                &topic,
                handler,
                Filter::Everything,
                DeliveryPolicy::default(),
                true,
            ),
            "v1".into(),
        )
        .await;
    let keyed = |id: String, key: &str| {
        let mut e = event(&id, "t");
        e.set_attr("partitionkey", AttrValue::String(key.to_string()));
        e
    };
    // More stuck events than an ordered worker's queue holds, then the free ones.
    log.append(
        &topic,
        (0..600)
            .map(|i| keyed(format!("stuck-{i}"), &stuck_key))
            .collect(),
    )
    .await
    .unwrap();
    log.append(
        &topic,
        (0..50)
            .map(|i| keyed(format!("free-{i}"), &free_key))
            .collect(),
    )
    .await
    .unwrap();
    eventually("the free partition's events", || {
        free_seen.lock().unwrap().len() == 50
    })
    .await;
    assert_eq!(
        *free_seen.lock().unwrap(),
        (0..50).collect::<Vec<u32>>(),
        "in order"
    );
    release.notify_waiters();
    dispatcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_older_than_the_max_age_are_dropped_not_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let topic = Topic::new("ferry-system", "samples");
    let (log, dispatcher) = setup(&dir, &topic, 1).await;
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let handler = {
        let seen = seen.clone();
        Handler::new("sampler", move |e: Event| {
            seen.lock()
                .unwrap()
                .push(e.attr_text("id").unwrap().into_owned());
            async { Ok(None) }.boxed()
        })
    };
    dispatcher
        .start_at_end(&topic, "ferry-system", "sampler")
        .await
        .unwrap();
    let mut policy = DeliveryPolicy::from_spec(&json!({"retry": 0}));
    policy.max_age = Some(Duration::from_secs(10));
    dispatcher
        .run(
            runner("sampler", &topic, handler, Filter::Everything, policy, true),
            "v1".into(),
        )
        .await;
    let arrived = |id: &str, ago: chrono::Duration| {
        let mut e = event(id, "sample");
        let at = (chrono::Utc::now() - ago).to_rfc3339();
        e.set_attr("knativearrivaltime", AttrValue::String(at));
        e
    };
    log.append(
        &topic,
        vec![
            arrived("stale", chrono::Duration::seconds(3600)),
            arrived("fresh", chrono::Duration::zero()),
        ],
    )
    .await
    .unwrap();
    eventually("the fresh sample", || {
        seen.lock().unwrap().contains(&"fresh".to_string())
    })
    .await;
    assert_eq!(
        *seen.lock().unwrap(),
        ["fresh"],
        "the stale one was dropped"
    );
    assert!(dispatcher
        .dead_letters("ferry-system", "sampler", None, 100)
        .unwrap()
        .items
        .is_empty());
    dispatcher.shutdown().await;
}

/// Retry scheduling on tokio's paused clock: an exponential backoff of 10 retries (2 s, 4 s,
/// … 1024 s, 34 minutes in all) checked in virtual time, with the real RocksDB log and
/// delivery store underneath and no wall-clock wait.
#[tokio::test(start_paused = true)]
async fn ten_exponential_retries_wait_2_to_1024_seconds_in_virtual_time() {
    let real_start = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let topic = Topic::new("ferry-system", "work");
    let (log, dispatcher) = setup(&dir, &topic, 1).await;

    // A handler that is never ready: every attempt is retryable, and its time is recorded.
    let attempts: Arc<Mutex<Vec<tokio::time::Instant>>> = Arc::default();
    let (count_tx, mut count) = tokio::sync::watch::channel(0usize);
    let handler = {
        let attempts = attempts.clone();
        Handler::new("never-ready", move |_e: Event| {
            let mut a = attempts.lock().unwrap();
            a.push(tokio::time::Instant::now());
            count_tx.send_replace(a.len());
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
    let spec = runner(
        "never-ready",
        &topic,
        handler,
        Filter::Everything,
        policy,
        false,
    );
    dispatcher.run(spec, "v1".into()).await;
    log.append(&topic, vec![event("e1", "work")]).await.unwrap();

    // Waiting is virtual: the paused clock jumps from timer to timer.
    tokio::time::timeout(Duration::from_secs(4 * 3600), count.wait_for(|n| *n == 11))
        .await
        .expect("11 attempts within 4 virtual hours")
        .unwrap();
    let times = attempts.lock().unwrap().clone();
    assert_eq!(times.len(), 11, "the first attempt and 10 retries");
    for (n, pair) in times.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let backoff = Duration::from_secs(1 << (n + 1));
        // Retries are due at whole milliseconds (the store's clock), so one may come up to
        // 1 ms before the exact backoff.
        assert!(
            gap + Duration::from_millis(1) >= backoff && gap < backoff + Duration::from_millis(250),
            "retry {}: waited {gap:?}, backoff {backoff:?}",
            n + 1
        );
    }
    let total = times[10] - times[0];
    assert!(
        total + Duration::from_millis(10) >= Duration::from_secs(2046),
        "{total:?}"
    );
    eventually("the dead letter", || {
        !dispatcher
            .dead_letters("ferry-system", "never-ready", None, 100)
            .unwrap()
            .items
            .is_empty()
    })
    .await;
    let dl = &dispatcher
        .dead_letters("ferry-system", "never-ready", None, 100)
        .unwrap()
        .items[0];
    assert_eq!(dl.error.attempts, 11);
    assert_eq!(dl.error.message, "not ready");
    // 34 virtual minutes took a small part of that in real time.
    assert!(real_start.elapsed() < Duration::from_secs(120));
    dispatcher.shutdown().await;
}
