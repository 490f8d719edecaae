//! Autoscaling as events through the broker (../shared/ARCHITECTURE.md):
//!
//! 1. every second the gateway's accounting of each active revision becomes a
//!    `dev.ferry.serving.stat.v1` event in `ferry-system/serving` (partition key: the
//!    revision), and at once when a request waits at zero instances (the activator's poke);
//! 2. the system trigger `serving-autoscaler` feeds them to the revision's KPA decider (ticks
//!    every 2 s, or at once on a poke) and answers with its decision, a
//!    `dev.ferry.serving.scale.v1` event, which goes back into the same broker as a reply;
//! 3. the system trigger `serving-supervisor` applies each decision to the revision's pool.
//!
//! Both triggers are ordered per partition key and drop events older than 10 s (a late sample
//! or decision is worthless), with no retries.

use crate::autoscaler::{bounded, Aggregation, Decider, Metric, Window, ZeroGate, TICK};
use crate::pool::Pool;
use crate::{Serving, ServingError};
use broker::{Event, Topic};
use cloudevent::ext::{PARTITION_KEY, SYSTEM_NAMESPACE};
use cloudevent::EventBuilder;
use control::{BrokerLayout, ControlPlane, Key, SystemTrigger};
use dispatcher::subscriber::{Handler, HandlerError, HandlerResult};
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// The system broker of serving's statistics and decisions.
pub const SERVING_BROKER: &str = "serving";
pub const STAT_TYPE: &str = "dev.ferry.serving.stat.v1";
pub const SCALE_TYPE: &str = "dev.ferry.serving.scale.v1";
/// The system triggers.
pub const AUTOSCALER_TRIGGER: &str = "serving-autoscaler";
pub const SUPERVISOR_TRIGGER: &str = "serving-supervisor";
const STAT_EVERY: Duration = Duration::from_secs(1);
/// Samples and decisions older than this are dropped.
const TOO_OLD: Duration = Duration::from_secs(10);
const RETENTION: Duration = Duration::from_secs(3600);

/// One revision's statistics over the last second (`dev.ferry.serving.stat.v1`'s data).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Stat {
    pub namespace: String,
    pub revision: String,
    /// Time-weighted requests in flight or waiting, over the second.
    pub average_concurrency: f64,
    pub request_count: u64,
    pub ready_instances: u32,
    /// Starting or ready.
    pub instances: u32,
    /// Requests waiting for an instance now.
    pub held_requests: u32,
    /// Whether a route sends traffic to the revision.
    pub reachable: bool,
}

/// One decision (`dev.ferry.serving.scale.v1`'s data).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Scale {
    pub namespace: String,
    pub revision: String,
    pub desired: u32,
    pub current: u32,
    pub stable_concurrency: f64,
    pub panic_concurrency: f64,
    pub panicking: bool,
    pub excess_burst_capacity: i64,
    pub reason: String,
}

/// The deciders' state, one per revision.
#[derive(Default)]
pub(crate) struct Scaler {
    deciders: Mutex<HashMap<Key, DeciderState>>,
}

struct DeciderState {
    decider: Decider,
    stable: Window,
    panic: Window,
    last_tick: Option<u64>,
    zero: ZeroGate,
}

impl Scaler {
    pub(crate) fn forget(&self, key: &Key) {
        self.lock().remove(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, DeciderState>> {
        self.deciders.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn revision_key(namespace: &str, revision: &str) -> Key {
    Key::new("Revision", namespace, revision)
}

fn source(namespace: &str, revision: &str) -> String {
    format!("/apis/serving.knative.dev/v1/namespaces/{namespace}/revisions/{revision}")
}

fn event<T: Serialize>(
    ty: &str,
    namespace: &str,
    revision: &str,
    data: &T,
) -> Result<Event, String> {
    let data = serde_json::to_value(data).map_err(|e| e.to_string())?;
    EventBuilder::new(ty, &source(namespace, revision))
        .subject(revision)
        .attr(PARTITION_KEY, format!("{namespace}/{revision}"))
        .json(&data)
        .build()
        .map_err(|e| e.to_string())
}

fn data<T: for<'de> Deserialize<'de>>(e: &Event) -> Result<T, HandlerError> {
    let bytes = e.data.as_deref().unwrap_or_default();
    serde_json::from_slice(bytes).map_err(|err| HandlerError {
        retryable: false,
        message: format!("not a serving event: {err}"),
    })
}

/// The system broker, both triggers, and the statistics every second.
pub(crate) async fn start(
    serving: &Arc<Serving>,
    cp: &Arc<ControlPlane>,
) -> Result<(), ServingError> {
    cp.ensure_system_broker(SERVING_BROKER, BrokerLayout::default().retention(RETENTION))
        .await?;
    let weak = Arc::downgrade(serving);
    let decide = Handler::new(AUTOSCALER_TRIGGER, move |e| {
        let s = weak.clone();
        async move { decide(&s, &e) }.boxed()
    });
    cp.system_trigger(
        SystemTrigger::new(AUTOSCALER_TRIGGER, SERVING_BROKER, decide)
            .filter(json!([{"exact": {"type": STAT_TYPE}}]))
            .no_retries()
            .drop_older_than(TOO_OLD)
            .ordered(),
    )
    .await?;
    let weak = Arc::downgrade(serving);
    let supervise = Handler::new(SUPERVISOR_TRIGGER, move |e| {
        let s = weak.clone();
        async move { apply(&s, &e) }.boxed()
    });
    cp.system_trigger(
        SystemTrigger::new(SUPERVISOR_TRIGGER, SERVING_BROKER, supervise)
            .filter(json!([{"exact": {"type": SCALE_TYPE}}]))
            .no_retries()
            .drop_older_than(TOO_OLD)
            .ordered(),
    )
    .await?;
    tokio::spawn(report(Arc::downgrade(serving), serving.stop.clone()));
    Ok(())
}

/// Publishes each active revision's statistics every second.
async fn report(serving: Weak<Serving>, stop: tokio_util::sync::CancellationToken) {
    let mut every = tokio::time::interval(STAT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let Some(s) = serving.upgrade() else { return };
        for pool in s.pools() {
            let sample = pool.sample();
            let o = pool.observed();
            let (ns, rev) = (pool.key.namespace.as_str(), pool.key.name.as_str());
            s.metrics
                .instances
                .with_label_values(&[ns, rev, "ready"])
                .set(i64::from(o.ready));
            s.metrics
                .instances
                .with_label_values(&[ns, rev, "starting"])
                .set(i64::from(o.instances.saturating_sub(o.ready)));
            if o.instances == 0 && o.held == 0 && sample.requests == 0 {
                continue;
            }
            let stat = Stat {
                namespace: pool.key.namespace.clone(),
                revision: pool.key.name.clone(),
                average_concurrency: sample.average_concurrency,
                request_count: sample.requests,
                ready_instances: o.ready,
                instances: o.instances,
                held_requests: o.held,
                reachable: s.routes.reaches(&pool.key),
            };
            publish(&s, &stat).await;
        }
    }
}

/// A request waits at zero instances: a statistics event now, which makes the decider tick.
pub(crate) async fn poke(serving: &Serving, pool: &Arc<Pool>) {
    let o = pool.observed();
    let held = o.held.max(1);
    let stat = Stat {
        namespace: pool.key.namespace.clone(),
        revision: pool.key.name.clone(),
        average_concurrency: f64::from(held),
        request_count: u64::from(held),
        ready_instances: o.ready,
        instances: o.instances,
        held_requests: held,
        reachable: serving.routes.reaches(&pool.key),
    };
    publish(serving, &stat).await;
}

async fn publish(serving: &Serving, stat: &Stat) {
    let Some(cp) = serving.control() else { return };
    let topic = Topic::new(SYSTEM_NAMESPACE, SERVING_BROKER);
    let published = match event(STAT_TYPE, &stat.namespace, &stat.revision, stat) {
        Ok(e) => cp
            .publisher()
            .publish_one(&topic, e)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    if let Err(e) = published {
        tracing::warn!(revision = %stat.revision, error = %e, "cannot publish serving statistics");
    }
}

/// The autoscaler: a sample in, a decision out every tick (or at once on a poke).
fn decide(serving: &Weak<Serving>, e: &Event) -> HandlerResult {
    let stat: Stat = data(e)?;
    let Some(serving) = serving.upgrade() else {
        return Ok(None);
    };
    let key = revision_key(&stat.namespace, &stat.revision);
    let Some(pool) = serving.pool(&key) else {
        return Ok(None);
    };
    let s = &pool.scaling;
    let now = dispatcher::clock::now_ms();
    let mut deciders = serving.scaler.lock();
    let st = deciders.entry(key).or_insert_with(|| DeciderState {
        decider: Decider::new(s.clone(), stat.ready_instances, now),
        stable: Window::new(s.stable_window),
        panic: Window::new(s.panic_window),
        last_tick: None,
        zero: ZeroGate::new(now),
    });
    let value = match s.metric {
        Metric::Concurrency => stat.average_concurrency,
        Metric::Rps => stat.request_count as f64,
    };
    st.stable.record(now, value);
    st.panic.record(now, value);
    let poked = stat.held_requests > 0 && stat.instances == 0;
    // Samples come every second, give or take: a tick is due 2 s after the last, less half a
    // sample's period, so that jitter never skips one.
    let tick_ms = (TICK - STAT_EVERY / 2).as_millis() as u64;
    if !poked && st.last_tick.is_some_and(|t| now < t + tick_ms) {
        return Ok(None);
    }
    st.last_tick = Some(now);
    if stat.instances == 0 {
        st.zero.inactive(now);
    }
    let (stable, panic) = match s.aggregation {
        Aggregation::Linear => (st.stable.average(now), st.panic.average(now)),
        Aggregation::WeightedExponential => (
            st.stable.weighted_average(now),
            st.panic.weighted_average(now),
        ),
    };
    let Some(tick) = st
        .decider
        .tick(now, stat.ready_instances, stable, panic, stat.reachable)
    else {
        return Ok(None);
    };
    let want = bounded(
        s,
        i64::from(tick.desired),
        stat.reachable,
        pool.initial_reached(),
    );
    let current = stat.instances;
    let (want, held) = st.zero.gate(s, now, want, current, stat.reachable);
    let reason = if held {
        "scale-to-zero-grace"
    } else if poked {
        "activation"
    } else if tick.panicking {
        "panic"
    } else if want > current {
        "scale-up"
    } else if want == 0 && current > 0 {
        "scale-to-zero"
    } else if want < current {
        "scale-down"
    } else {
        "steady"
    };
    let decision = Scale {
        namespace: stat.namespace.clone(),
        revision: stat.revision.clone(),
        desired: want,
        current,
        stable_concurrency: tick.stable,
        panic_concurrency: tick.panic,
        panicking: tick.panicking,
        excess_burst_capacity: tick.excess_burst_capacity,
        reason: reason.into(),
    };
    drop(deciders);
    event(SCALE_TYPE, &stat.namespace, &stat.revision, &decision)
        .map(Some)
        .map_err(|message| HandlerError {
            retryable: false,
            message,
        })
}

/// The supervisor: applies a decision to the revision's pool.
fn apply(serving: &Weak<Serving>, e: &Event) -> HandlerResult {
    let scale: Scale = data(e)?;
    if let Some(pool) = serving
        .upgrade()
        .and_then(|s| s.pool(&revision_key(&scale.namespace, &scale.revision)))
    {
        pool.set_desired(scale.desired);
    }
    Ok(None)
}
