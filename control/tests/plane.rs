//! The control plane as a library: a kind registered from outside the crate, reconciles that
//! never block each other, and system triggers (in-process handlers as Trigger resources).
//! Real RocksDB log, store and dispatcher underneath.

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use async_trait::async_trait;
use broker::metrics::LogMetrics;
use broker::{Event, EventLog, Publisher, Retention, RocksLog, RocksOptions, TopicConfig};
use control::kind::{ready_cell, Flags};
use control::store::RocksStore;
use control::{
    ControlConfig, ControlError, ControlPlane, FieldErrors, Kind, KindInfo, Parts, Reconciled,
    Registry, Resource, SystemTrigger,
};
use dispatcher::subscriber::{Handler, HandlerError};
use dispatcher::Dispatcher;
use futures::FutureExt;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// A kind whose reconcile waits for a permit: a slow reconcile, on demand.
struct Gate {
    permits: Arc<Semaphore>,
}

static GATE: KindInfo = KindInfo {
    group: "test.ferry.dev",
    version: "v1",
    kind: "Gate",
    plural: "gates",
    short_names: &["gt"],
    addressable: false,
    columns: &["READY"],
};

#[async_trait]
impl Kind for Gate {
    fn info(&self) -> &'static KindInfo {
        &GATE
    }

    fn validate(&self, r: &Resource, errors: &mut FieldErrors) {
        if r.spec.get("open").is_none() {
            errors.push("spec.open", "required");
        }
    }

    async fn reconcile(&self, _cp: &ControlPlane, r: &Resource, _pass: Flags) -> Reconciled {
        let permit = self.permits.acquire().await;
        drop(permit);
        Reconciled::done(control::status::status(
            &r.status,
            r.metadata.generation,
            &["Ready"],
            None,
        ))
    }

    fn row(&self, r: &Resource) -> Vec<String> {
        vec![ready_cell(r)]
    }
}

/// How often a wait re-checks its condition.
const POLL: Duration = Duration::from_millis(20);

/// Polls `f` until it gives a value, for at most 20 s.
async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

struct Setup {
    cp: Arc<ControlPlane>,
    dispatcher: Arc<Dispatcher>,
    _dir: tempfile::TempDir,
}

async fn start(extra: impl FnOnce(&mut Registry)) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let metrics = prometheus::Registry::new();
    let log: Arc<dyn EventLog> = Arc::new(
        RocksLog::open(
            dir.path().join("log"),
            RocksOptions::default(),
            LogMetrics::new(&metrics).unwrap(),
        )
        .unwrap(),
    );
    let publisher = Arc::new(Publisher::with_default_limit(log));
    let dispatcher = Dispatcher::open(
        publisher.clone(),
        &dir.path().join("dispatch"),
        &metrics,
        Duration::from_secs(1),
    )
    .unwrap();
    let mut registry = Registry::new();
    control::kinds::register_eventing(&mut registry);
    extra(&mut registry);
    let cp = ControlPlane::start(Parts {
        store: Box::new(RocksStore::open(&dir.path().join("control")).unwrap()),
        registry,
        publisher,
        dispatcher: dispatcher.clone(),
        sinks: ingress::Sinks::default(),
        config: ControlConfig {
            ingress_url: "http://127.0.0.1:1".into(),
            topic_defaults: TopicConfig {
                partitions: 2,
                retention: Retention::default(),
            },
            sink_batch_records: None,
            node: "test".into(),
            address_ca: None,
            secrets_dir: dir.path().join("secrets"),
        },
    })
    .await
    .unwrap();
    Setup {
        cp,
        dispatcher,
        _dir: dir,
    }
}

fn broker(ns: &str, name: &str) -> serde_json::Value {
    json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
           "metadata": {"name": name, "namespace": ns}, "spec": {}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reconcile_blocks_no_other_apply() {
    let permits = Arc::new(Semaphore::new(0));
    let gate_permits = permits.clone();
    let s = start(move |r| {
        r.register(Gate {
            permits: gate_permits,
        });
    })
    .await;
    // The registry knows the new kind by every name.
    for name in ["gates", "gate", "Gate", "gt", "gates.test.ferry.dev"] {
        assert_eq!(s.cp.kind(name).unwrap().info().kind, "Gate", "{name}");
    }
    let err =
        s.cp.apply(&[
            json!({"apiVersion": "test.ferry.dev/v1", "kind": "Gate", "metadata": {"name": "g"}}),
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ControlError::Invalid(e) if e[0].field == "spec.open"),
        "{err:?}"
    );

    let gate =
        s.cp.apply(&[json!({"apiVersion": "test.ferry.dev/v1", "kind": "Gate",
                        "metadata": {"name": "g"}, "spec": {"open": true}})])
            .await
            .unwrap();
    // Its reconcile is stuck; a broker applied meanwhile is reconciled all the same.
    let b = s.cp.apply(&[broker("default", "b")]).await.unwrap();
    assert!(s.cp.wait_reconciled(&b, Duration::from_secs(10)).await);
    assert_eq!(
        s.cp.get("Broker", "default", "b").unwrap().ready(),
        Some(true)
    );
    assert!(
        !s.cp
            .wait_reconciled(&gate, Duration::from_millis(200))
            .await
    );
    assert_eq!(s.cp.get("Gate", "default", "g").unwrap().ready(), None);

    permits.add_permits(1000);
    assert!(s.cp.wait_reconciled(&gate, Duration::from_secs(10)).await);
    assert_eq!(
        s.cp.get("Gate", "default", "g").unwrap().ready(),
        Some(true)
    );
    s.cp.stop();
    s.dispatcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_system_trigger_gets_resource_changes_without_retries() {
    let s = start(|_| {}).await;
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    // A controller publishes what it likes, wherever it likes: two events into a user broker
    // for each broker created; it says so on `published` once they are stored.
    let publisher = s.cp.publisher().clone();
    let (published_tx, mut published) = tokio::sync::mpsc::unbounded_channel::<String>();
    let handler = {
        let seen = seen.clone();
        Handler::new("watcher", move |e: Event| {
            let subject = e.attr_text("subject").unwrap_or_default().into_owned();
            seen.lock().unwrap().push(subject.clone());
            let publisher = publisher.clone();
            let published_tx = published_tx.clone();
            async move {
                if subject == "default/refused" {
                    return Err(HandlerError {
                        retryable: true,
                        message: "not now".into(),
                    });
                }
                let out: Vec<Event> = (0..2)
                    .map(|i| {
                        cloudevent::EventBuilder::new("test.seen", "/watcher")
                            .subject(format!("{subject}#{i}"))
                            .build()
                            .unwrap()
                    })
                    .collect();
                publisher
                    .publish(&broker::Topic::new("default", "default"), out)
                    .await
                    .map_err(|e| HandlerError {
                        retryable: true,
                        message: e.to_string(),
                    })?;
                let _ = published_tx.send(subject);
                Ok(None)
            }
            .boxed()
        })
    };
    s.cp.system_trigger(
        SystemTrigger::new("watcher", "resources", handler)
            .filter(json!([{"exact": {"type": "dev.ferry.resource.created"}}]))
            .no_retries()
            .ordered(),
    )
    .await
    .unwrap();
    // A Trigger resource in ferry-system, Ready, with the handler as subscriber.
    let t = s.cp.get("Trigger", "ferry-system", "watcher").unwrap();
    assert_eq!(t.ready(), Some(true), "{}", t.status);
    assert!(t.is_system());
    assert_eq!(t.status["subscriberUri"], "handler:watcher");
    assert_eq!(
        t.metadata.annotations["kafka.eventing.knative.dev/delivery.order"],
        "ordered"
    );

    let applied =
        s.cp.apply(&[broker("default", "accepted"), broker("default", "refused")])
            .await
            .unwrap();
    s.cp.wait_reconciled(&applied, Duration::from_secs(10))
        .await;
    let dls = eventually("the refused broker's dead letter", || {
        let dls = s
            .dispatcher
            .dead_letters("ferry-system", "watcher", None, 100)
            .unwrap()
            .items;
        (!dls.is_empty()).then_some(dls)
    })
    .await;
    assert_eq!(dls[0].error.attempts, 1, "no retries");
    assert_eq!(
        dls[0].event.attr_text("subject").as_deref(),
        Some("default/refused")
    );
    let seen = seen.lock().unwrap().clone();
    assert!(seen.contains(&"default/accepted".to_string()), "{seen:?}");
    assert_eq!(seen.iter().filter(|s| *s == "default/refused").count(), 1);
    // `accepted` announced by two events in `default/default` (`default` was made before the
    // trigger, `refused` failed).
    let stored = tokio::time::timeout(Duration::from_secs(20), published.recv())
        .await
        .expect("the handler's events for `accepted`");
    assert_eq!(stored.as_deref(), Some("default/accepted"));
    let topic = broker::Topic::new("default", "default");
    let ends = s.cp.log().watermarks(&topic).await.unwrap();
    assert_eq!(ends.iter().map(|w| w.end).sum::<u64>(), 2);

    // Users cannot delete Ferry's own trigger.
    let err =
        s.cp.delete("trigger", "ferry-system", "watcher")
            .await
            .unwrap_err();
    assert!(matches!(err, ControlError::Reserved), "{err:?}");
    s.cp.stop();
    s.dispatcher.shutdown().await;
}
