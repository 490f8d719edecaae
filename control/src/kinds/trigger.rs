//! Trigger (`eventing.knative.dev/v1`): resolve its broker, subscriber and dead-letter sink,
//! compile its filter and policy, and (re)start its runner in the dispatcher; Knative's status.
//! A subscriber `handler:NAME` is one of Ferry's in-process controllers (a system trigger).

use crate::kind::{cell, ready_cell, Flags, Kind, KindInfo, Reconciled};
use crate::kinds::broker::BrokerSpec;
use crate::plane::{ControlError, ControlPlane};
use crate::resolve::HANDLER_SCHEME;
use crate::resource::{
    dns_label_problem, validate_delivery, validate_destination, validate_duration_annotation,
    DeliverySpec, Destination, FieldErrors, Key, Resource,
};
use crate::status::{self, NotReady};
use async_trait::async_trait;
use broker::Topic;
use dispatcher::filter::Filter;
use dispatcher::outbound::Address;
use dispatcher::policy::DeliveryPolicy;
use dispatcher::subscriber::Subscriber;
use dispatcher::TriggerSpec as RunnerSpec;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// Annotation choosing ordered or unordered delivery (K-07).
pub const DELIVERY_ORDER: &str = "kafka.eventing.knative.dev/delivery.order";
/// Annotation setting a trigger's in-flight limit (unordered delivery).
pub const MAX_IN_FLIGHT: &str = "ferry.dev/max-in-flight";
/// Annotation: events older than this (ISO-8601, since they reached the broker) are dropped.
pub const MAX_EVENT_AGE: &str = "ferry.dev/max-event-age";
/// Default in-flight limit of an unordered trigger.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 50;
/// On a system trigger (one Ferry made for a source): the subject its deliveries are sent as
/// (the source's, so EventPolicies name the source). Ignored on any other trigger.
pub const SENDER_ANNOTATION: &str = "ferry.dev/sender";

pub struct Trigger;

/// `spec` of a Trigger (Knative's field names).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub broker: String,
    /// `filter.attributes`.
    #[serde(default)]
    pub filter: Option<Value>,
    /// The Subscriptions API dialects (wins over `filter`).
    #[serde(default)]
    pub filters: Option<Value>,
    pub subscriber: Destination,
    #[serde(default)]
    pub delivery: Option<DeliverySpec>,
}

static INFO: KindInfo = KindInfo {
    group: "eventing.knative.dev",
    version: "v1",
    kind: "Trigger",
    plural: "triggers",
    short_names: &[],
    addressable: false,
    columns: &["BROKER", "SUBSCRIBER", "READY", "LAG"],
};

const CONDITIONS: &[&str] = &[
    "BrokerReady",
    "SubscriberResolved",
    "DeadLetterSinkResolved",
    "Ready",
];

#[async_trait]
impl Kind for Trigger {
    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn validate(&self, r: &Resource, errors: &mut FieldErrors) {
        let mut err = errors.sink();
        let Some(obj) = r.spec.as_object() else {
            err(
                "spec",
                "must be a mapping with broker and subscriber".into(),
            );
            return;
        };
        for (key, value) in obj {
            match key.as_str() {
                "broker" => match value.as_str() {
                    Some(b) if dns_label_problem(b).is_none() => {}
                    _ => err("spec.broker", format!("{value} is not a broker name")),
                },
                "subscriber" => validate_destination("spec.subscriber", value, &mut err),
                "delivery" => validate_delivery("spec.delivery", value, &mut err),
                "filter" | "filters" => {}
                other => err(&format!("spec.{other}"), "unknown field".into()),
            }
        }
        if !obj.contains_key("broker") {
            err("spec.broker", "required".into());
        }
        if !obj.contains_key("subscriber") {
            err("spec.subscriber", "required".into());
        }
        if let Err(errors) = Filter::compile(obj.get("filter"), obj.get("filters")) {
            for e in errors {
                err(&e.field, e.message);
            }
        }
        let annotations = &r.metadata.annotations;
        if let Some(order) = annotations.get(DELIVERY_ORDER) {
            if !matches!(order.as_str(), "ordered" | "unordered") {
                err(
                    &format!("metadata.annotations.{DELIVERY_ORDER}"),
                    format!("{order:?} must be \"ordered\" or \"unordered\""),
                );
            }
        }
        if let Some(n) = annotations.get(MAX_IN_FLIGHT) {
            if !n.parse::<u32>().is_ok_and(|n| (1..=10_000).contains(&n)) {
                err(
                    &format!("metadata.annotations.{MAX_IN_FLIGHT}"),
                    format!("{n:?} must be a number from 1 to 10000 (as a string)"),
                );
            }
        }
        validate_duration_annotation(annotations, MAX_EVENT_AGE, &mut err);
        drop(err);
        // Whatever the checks above let through decodes into the typed spec.
        if errors.is_empty() {
            errors.decode::<Spec>("spec", &r.spec);
        }
    }

    fn validate_update(&self, old: &Resource, new: &Resource, errors: &mut FieldErrors) {
        // S-05: a trigger's broker is immutable.
        if old.spec.get("broker") != new.spec.get("broker") {
            errors.push(
                "spec.broker",
                "is immutable: delete the trigger and create it again",
            );
        }
    }

    async fn reconcile(&self, cp: &ControlPlane, r: &Resource, pass: Flags) -> Reconciled {
        // Another node's system trigger (its handler lives there): not run here.
        let node = r
            .metadata
            .annotations
            .get(crate::resource::NODE_ANNOTATION)
            .filter(|_| r.is_system());
        if node.is_some_and(|n| *n != cp.config().node) {
            cp.dispatcher()
                .stop(&r.metadata.namespace, &r.metadata.name)
                .await;
            return Reconciled::done(r.status.clone());
        }
        let mut resolved = json!({});
        let outcome = start(cp, r, pass, &mut resolved).await;
        if outcome.is_err() {
            cp.dispatcher()
                .stop(&r.metadata.namespace, &r.metadata.name)
                .await;
        }
        let failure = outcome.as_ref().err();
        let mut s = status::status(&r.status, r.metadata.generation, CONDITIONS, failure);
        s["subscriberUri"] = resolved
            .get("subscriber")
            .cloned()
            .unwrap_or(Value::String(String::new()));
        if let Some(dls) = resolved.get("deadLetterSink") {
            s["deadLetterSinkUri"] = dls.clone();
        }
        // Offsets or the log unavailable: worth another try; the rest waits for a change.
        let retry = failure.is_some_and(|f| {
            matches!(
                f.reason,
                "BrokerUnavailable" | "OffsetsUnavailable" | "OffsetsNotCommitted"
            )
        });
        Reconciled {
            status: s,
            retry,
            requeue_after: None,
        }
    }

    async fn finalize(&self, cp: &ControlPlane, r: &Resource) -> Result<(), ControlError> {
        cp.dispatcher()
            .forget(&r.metadata.namespace, &r.metadata.name)
            .await?;
        Ok(())
    }

    async fn release(&self, cp: &ControlPlane, key: &Key) {
        cp.dispatcher().stop(&key.namespace, &key.name).await;
    }

    fn depends_on(&self, cp: &ControlPlane, r: &Resource) -> Vec<Key> {
        let ns = &r.metadata.namespace;
        let mut keys = Vec::new();
        if let Some(b) = r.spec.get("broker").and_then(Value::as_str) {
            keys.push(Key::new("Broker", ns, b));
        }
        keys.extend(cp.referenced(r.spec.get("subscriber"), ns));
        keys.extend(cp.referenced(r.spec.pointer("/delivery/deadLetterSink"), ns));
        // Without a delivery of its own, the broker's dead-letter sink is the trigger's.
        if r.spec.get("delivery").is_none() {
            if let Some(b) = r.spec.get("broker").and_then(Value::as_str) {
                if let Ok(Some(broker)) = cp.find("Broker", ns, b) {
                    keys.extend(cp.referenced(broker.spec.pointer("/delivery/deadLetterSink"), ns));
                }
            }
        }
        keys
    }

    fn row(&self, r: &Resource) -> Vec<String> {
        vec![
            cell(r, "/spec/broker"),
            cell(r, "/status/subscriberUri"),
            ready_cell(r),
            r.status
                .get("lag")
                .and_then(Value::as_u64)
                .map_or("-".into(), |l| l.to_string()),
        ]
    }

    /// Adds `status.lag`: the broker's events past the trigger's committed offsets; and while
    /// this node's writes of the trigger's retries or dead letters fail, `StoreReady=False`
    /// (reason `StoreWriteFailing`, since the first failure) and `Ready=False` with it.
    async fn observe(&self, cp: &ControlPlane, r: &mut Resource) {
        let (ns, name) = (&r.metadata.namespace, &r.metadata.name);
        if let Some(trouble) = cp.dispatcher().store_trouble(ns, name).await {
            store_trouble(&mut r.status, &trouble);
        }
        let Some(broker) = r.spec.get("broker").and_then(Value::as_str) else {
            return;
        };
        let topic = Topic::new(&r.metadata.namespace, broker);
        let group = dispatcher::group(&r.metadata.namespace, &r.metadata.name);
        let log = cp.log();
        let (Ok(ends), Ok(committed)) = (
            log.watermarks(&topic).await,
            log.committed(&topic, &group).await,
        ) else {
            return;
        };
        let lag: u64 = ends
            .iter()
            .zip(committed)
            .map(|(w, c)| w.end.saturating_sub(c.unwrap_or(w.end)))
            .sum();
        if let Some(status) = r.status.as_object_mut() {
            status.insert("lag".into(), json!(lag));
        }
    }

    fn deliveries(&self, r: &Resource) -> Option<Vec<(String, String)>> {
        Some(vec![(
            r.metadata.namespace.clone(),
            r.metadata.name.clone(),
        )])
    }
}

/// Shows a failing delivery store in `status`: `StoreReady=False`, and `Ready=False` with the
/// same reason (events are held, not lost: the writes are tried again with backoff).
fn store_trouble(status: &mut Value, trouble: &dispatcher::StoreTrouble) {
    let message = format!(
        "cannot write this trigger's retry queue or dead-letter store ({}); its events are \
         held and the write is tried again with backoff",
        trouble.error
    );
    let since = trouble
        .since
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let Some(status) = status.as_object_mut() else {
        return;
    };
    let conditions = status.entry("conditions").or_insert_with(|| json!([]));
    let Some(list) = conditions.as_array_mut() else {
        return;
    };
    // A trigger not Ready for another reason keeps that reason.
    let ready = |c: &Value| c["type"] == "Ready" && c["status"] == "True";
    let was_ready = list.iter().any(ready);
    list.retain(|c| !ready(c) && c["type"] != "StoreReady");
    let failing = |kind: &str| {
        json!({
            "type": kind,
            "status": "False",
            "reason": "StoreWriteFailing",
            "message": message,
            "lastTransitionTime": since,
        })
    };
    list.push(failing("StoreReady"));
    if was_ready {
        list.push(failing("Ready"));
    }
}

/// The subject a trigger's deliveries are sent as: its own, or for a system trigger the
/// source's it delivers for.
fn sender(r: &Resource) -> String {
    match r.metadata.annotations.get(SENDER_ANNOTATION) {
        Some(s) if r.is_system() => s.clone(),
        _ => crate::auth::subject_of("Trigger", &r.metadata.namespace, &r.metadata.name),
    }
}

/// A subscriber at `address`: an in-process handler for `handler:NAME`, else HTTP (refused
/// when the destination's network is denied, or its CA certificates are not PEM).
pub(crate) async fn subscriber_at(
    cp: &ControlPlane,
    address: &Address,
    sender: &str,
    policy: &DeliveryPolicy,
    condition: &'static str,
) -> Result<Arc<dyn Subscriber>, NotReady> {
    match address.url.strip_prefix(HANDLER_SCHEME) {
        Some(name) => cp.handlers.get(name).ok_or_else(|| {
            NotReady::new(
                condition,
                "HandlerNotRegistered",
                format!("no in-process handler {name:?} runs on this node"),
            )
        }),
        None => {
            cp.dispatcher()
                .check_destination(&address.url)
                .await
                .map_err(|m| NotReady::new(condition, "DestinationDenied", m))?;
            cp.dispatcher()
                .http_subscriber(address, sender, policy)
                .map_err(|m| NotReady::new(condition, "InvalidDestination", m))
        }
    }
}

async fn start(
    cp: &ControlPlane,
    r: &Resource,
    pass: Flags,
    resolved: &mut Value,
) -> Result<(), NotReady> {
    let (ns, name) = (&r.metadata.namespace, &r.metadata.name);
    let spec: Spec = r
        .spec_as()
        .map_err(|e| NotReady::new("Ready", "InvalidSpec", e))?;
    let broker_name = spec.broker.as_str();
    let broker = cp
        .find("Broker", ns, broker_name)
        .map_err(|e| NotReady::new("BrokerReady", "BrokerUnavailable", e.to_string()))?
        .ok_or_else(|| {
            NotReady::new(
                "BrokerReady",
                "BrokerDoesNotExist",
                format!("Broker {broker_name:?} does not exist in namespace {ns:?}"),
            )
        })?;
    if broker.ready() != Some(true) {
        return Err(NotReady::new(
            "BrokerReady",
            "BrokerNotReady",
            format!("Broker {broker_name:?} is not Ready"),
        ));
    }
    let subscriber_address = cp
        .resolve_address(&spec.subscriber, ns)
        .map_err(|m| NotReady::new("SubscriberResolved", "Unresolved", m))?;
    let subscriber_url = subscriber_address.url.clone();
    resolved["subscriber"] = Value::String(subscriber_url.clone());
    let sender = sender(r);

    // D-06: a trigger's delivery replaces its broker's whole.
    let delivery = spec
        .delivery
        .clone()
        .or_else(|| broker.spec_as::<BrokerSpec>().ok().and_then(|b| b.delivery));
    let mut policy = delivery
        .as_ref()
        .map_or_else(DeliveryPolicy::default, DeliverySpec::policy);
    let annotations = &r.metadata.annotations;
    policy.max_age = annotations
        .get(MAX_EVENT_AGE)
        .and_then(|d| crate::resource::parse_duration(d).ok());
    let subscriber = subscriber_at(
        cp,
        &subscriber_address,
        &sender,
        &policy,
        "SubscriberResolved",
    )
    .await?;
    let mut dead_letter_address = None;
    let dead_letter = match delivery.as_ref().and_then(|d| d.dead_letter_sink.as_ref()) {
        None => None,
        Some(dls) => {
            let address = cp
                .resolve_address(dls, ns)
                .map_err(|m| NotReady::new("DeadLetterSinkResolved", "Unresolved", m))?;
            resolved["deadLetterSink"] = Value::String(address.url.clone());
            let subscriber =
                subscriber_at(cp, &address, &sender, &policy, "DeadLetterSinkResolved").await?;
            dead_letter_address = Some(address);
            Some(subscriber)
        }
    };
    let filter =
        Filter::compile(spec.filter.as_ref(), spec.filters.as_ref()).map_err(|errors| {
            let text: Vec<String> = errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect();
            NotReady::new("Ready", "InvalidFilter", text.join("; "))
        })?;
    let ordered = annotations
        .get(DELIVERY_ORDER)
        .is_some_and(|o| o == "ordered");
    let max_in_flight = annotations
        .get(MAX_IN_FLIGHT)
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_MAX_IN_FLIGHT);

    let topic = Topic::new(ns, broker_name);
    let group = dispatcher::group(ns, name);
    // An existing trigger, on the node that starts or changes it (a trigger made now starts
    // at the log end, whatever an older one of that name left).
    if pass.write && !pass.created {
        carry_over_legacy_offsets(cp, &topic, ns, name)
            .await
            .map_err(|e| NotReady::new("Ready", "OffsetsUnavailable", e.to_string()))?;
    }
    let never_started = cp
        .log()
        .committed(&topic, &group)
        .await
        .map(|c| c.iter().all(Option::is_none))
        .map_err(|e| NotReady::new("Ready", "OffsetsUnavailable", e.to_string()))?;
    // K-06: a new trigger receives every event after it is Ready, none from before. A runner
    // of an earlier trigger of that name is stopped first, so its last commit comes before.
    // Only the node that made the change commits: on Kafka a commit from outside the group is
    // refused once members joined, so other nodes wait for it (its status write wakes them).
    if pass.created || never_started {
        if !pass.write {
            return Err(NotReady::new(
                "Ready",
                "StartPending",
                "waiting for the node that created the trigger to commit its start",
            ));
        }
        cp.dispatcher().stop(ns, name).await;
        commit_patiently(&format!("trigger {ns}/{name}"), || {
            cp.dispatcher().start_at_end(&topic, ns, name)
        })
        .await
        .map_err(|e| NotReady::new("Ready", "OffsetsNotCommitted", e.to_string()))?;
    }
    // Everything the runner is built from: the same again (a label-only change of the trigger
    // or its broker) leaves the running trigger alone.
    let fingerprint = json!({
        "spec": r.spec,
        "annotations": annotations,
        "delivery": delivery,
        "subscriber": address_print(&subscriber_address),
        "deadLetterSink": dead_letter_address.as_ref().map(address_print),
        "sender": sender,
        "uid": r.metadata.uid,
    })
    .to_string();
    let trigger = RunnerSpec {
        namespace: ns.clone(),
        name: name.clone(),
        topic,
        filter,
        subscriber,
        dead_letter,
        policy,
        ordered,
        max_in_flight,
        feed: None,
        instance: r.metadata.uid.clone(),
    };
    cp.dispatcher().run(trigger, fingerprint).await;
    Ok(())
}

/// What of an address decides how a runner delivers (a change restarts it).
pub(crate) fn address_print(a: &Address) -> Value {
    json!({"url": a.url, "audience": a.audience, "CACerts": a.ca_certs})
}

/// A trigger of an earlier Ferry, in a namespace with a `-`, committed under its legacy group
/// name: its offsets become the new group's (once: only while the new group has none), so an
/// upgrade neither redelivers nor skips anything.
async fn carry_over_legacy_offsets(
    cp: &ControlPlane,
    topic: &Topic,
    ns: &str,
    name: &str,
) -> Result<(), broker::LogError> {
    let (group, legacy) = (
        dispatcher::group(ns, name),
        dispatcher::legacy_group(ns, name),
    );
    if group == legacy {
        return Ok(());
    }
    let log = cp.log();
    if log
        .committed(topic, &group)
        .await?
        .iter()
        .any(Option::is_some)
    {
        return Ok(());
    }
    let old: Vec<broker::Position> = log
        .committed(topic, &legacy)
        .await?
        .iter()
        .enumerate()
        .filter_map(|(p, o)| {
            o.map(|offset| broker::Position {
                partition: p as u32,
                offset,
            })
        })
        .collect();
    if !old.is_empty() {
        log.commit(topic, &group, &old).await?;
        tracing::info!(trigger = %format!("{ns}/{name}"), from = %legacy, to = %group, "offsets carried over to the trigger's new consumer group name");
    }
    Ok(())
}

/// How long a start-offset commit is tried again: on Kafka a commit from outside a consumer
/// group is refused while the group still has members — other nodes still running an earlier
/// trigger of the same name, until they see its delete (well under a second) or their session
/// times out (10 s).
const START_COMMIT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(15);

/// Runs `commit` until it succeeds or `START_COMMIT_PATIENCE` has passed; the last error then.
async fn commit_patiently<E: std::fmt::Display, F, Fut>(what: &str, mut commit: F) -> Result<(), E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
{
    let deadline = tokio::time::Instant::now() + START_COMMIT_PATIENCE;
    loop {
        match commit().await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::info!(error = %e, "committing the start offsets of {what} failed; trying again");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}
