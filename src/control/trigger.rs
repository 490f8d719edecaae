//! Reconciling a Trigger: resolve its broker, subscriber and dead-letter sink, compile its
//! filter and policy, and (re)start its runner in the dispatcher; write Knative's status.

use super::resource::{Kind, Resource, DELIVERY_ORDER, MAX_IN_FLIGHT};
use super::{condition, ControlPlane};
use broker::Topic;
use dispatcher::filter::Filter;
use dispatcher::policy::DeliveryPolicy;
use dispatcher::TriggerSpec;
use serde_json::{json, Value};

/// Default in-flight limit of an unordered trigger.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 50;

/// Why a trigger is not Ready: the condition that failed, its reason and message.
struct NotReady {
    condition: &'static str,
    reason: &'static str,
    message: String,
}

fn not_ready(
    condition: &'static str,
    reason: &'static str,
    message: impl Into<String>,
) -> NotReady {
    NotReady {
        condition,
        reason,
        message: message.into(),
    }
}

pub async fn reconcile(cp: &ControlPlane, r: &mut Resource, created: bool) {
    let (ns, name) = (r.metadata.namespace.clone(), r.metadata.name.clone());
    let mut resolved = json!({});
    let outcome = start(cp, r, created, &mut resolved).await;
    if outcome.is_err() {
        cp.dispatcher.stop(&ns, &name).await;
    }
    let old = &r.status;
    let order = [
        "BrokerReady",
        "SubscriberResolved",
        "DeadLetterSinkResolved",
        "Ready",
    ];
    let failed_at = match &outcome {
        Ok(()) => order.len() - 1,
        Err(e) => order.iter().position(|c| *c == e.condition).unwrap_or(0),
    };
    let mut conditions = Vec::new();
    for (i, c) in order.iter().enumerate() {
        let cond = match (&outcome, i.cmp(&failed_at)) {
            (_, std::cmp::Ordering::Less) | (Ok(()), _) => condition(old, c, "True", None, None),
            (Err(e), std::cmp::Ordering::Equal) => {
                condition(old, c, "False", Some(e.reason), Some(&e.message))
            }
            (Err(_), std::cmp::Ordering::Greater) => condition(old, c, "Unknown", None, None),
        };
        conditions.push(cond);
    }
    if let Err(e) = &outcome {
        if let Some(ready) = conditions.last_mut() {
            *ready = condition(old, "Ready", "False", Some(e.reason), Some(&e.message));
        }
    }
    let mut status = json!({
        "observedGeneration": r.metadata.generation,
        "conditions": conditions,
        "subscriberUri": resolved.get("subscriber").cloned().unwrap_or(Value::String(String::new())),
    });
    if let Some(dls) = resolved.get("deadLetterSink") {
        status["deadLetterSinkUri"] = dls.clone();
    }
    r.status = status;
}

async fn start(
    cp: &ControlPlane,
    r: &Resource,
    created: bool,
    resolved: &mut Value,
) -> Result<(), NotReady> {
    let (ns, name) = (&r.metadata.namespace, &r.metadata.name);
    let spec = &r.spec;
    let broker_name = spec["broker"].as_str().unwrap_or_default();
    let broker = cp
        .store
        .get(Kind::Broker, ns, broker_name)
        .map_err(|e| not_ready("BrokerReady", "BrokerUnavailable", e.to_string()))?
        .ok_or_else(|| {
            not_ready(
                "BrokerReady",
                "BrokerDoesNotExist",
                format!("Broker {broker_name:?} does not exist in namespace {ns:?}"),
            )
        })?;
    if super::ready_status(&broker.status) != Some(true) {
        return Err(not_ready(
            "BrokerReady",
            "BrokerNotReady",
            format!("Broker {broker_name:?} is not Ready"),
        ));
    }
    let subscriber = cp
        .resolve(&spec["subscriber"], ns)
        .map_err(|m| not_ready("SubscriberResolved", "Unresolved", m))?;
    resolved["subscriber"] = Value::String(subscriber.clone());

    // D-06: a trigger's delivery replaces its broker's whole.
    let delivery = spec.get("delivery").or_else(|| broker.spec.get("delivery"));
    let policy = delivery.map_or_else(DeliveryPolicy::default, DeliveryPolicy::from_spec);
    let dead_letter = match delivery.and_then(|d| d.get("deadLetterSink")) {
        None => None,
        Some(dls) => {
            let url = cp
                .resolve(dls, ns)
                .map_err(|m| not_ready("DeadLetterSinkResolved", "Unresolved", m))?;
            resolved["deadLetterSink"] = Value::String(url.clone());
            Some(url)
        }
    };
    let filter = Filter::compile(spec.get("filter"), spec.get("filters")).map_err(|errors| {
        let text: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect();
        not_ready("Ready", "InvalidFilter", text.join("; "))
    })?;
    let annotations = &r.metadata.annotations;
    let ordered = annotations
        .get(DELIVERY_ORDER)
        .is_some_and(|o| o == "ordered");
    let max_in_flight = annotations
        .get(MAX_IN_FLIGHT)
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_MAX_IN_FLIGHT);

    let topic = Topic::new(ns, broker_name);
    let group = dispatcher::group(ns, name);
    let never_started = cp
        .log
        .committed(&topic, &group)
        .await
        .map(|c| c.iter().all(Option::is_none))
        .map_err(|e| not_ready("Ready", "OffsetsUnavailable", e.to_string()))?;
    // K-06: a new trigger receives every event after it is Ready, none from before. A runner
    // of an earlier trigger of that name is stopped first, so its last commit comes before.
    if created || never_started {
        cp.dispatcher.stop(ns, name).await;
        super::commit_patiently(&format!("trigger {ns}/{name}"), || {
            cp.dispatcher.start_at_end(&topic, ns, name)
        })
        .await
        .map_err(|e| not_ready("Ready", "OffsetsNotCommitted", e.to_string()))?;
    }
    let trigger = TriggerSpec {
        namespace: ns.clone(),
        name: name.clone(),
        topic,
        filter,
        subscriber: cp.dispatcher.http_subscriber(&subscriber, &policy),
        dead_letter: dead_letter.map(|url| cp.dispatcher.http_subscriber(&url, &policy)),
        policy,
        ordered,
        max_in_flight,
        feed: None,
        instance: r.metadata.uid.clone(),
    };
    // Everything the runner is built from: the same again (a label-only change of the trigger
    // or its broker) leaves the running trigger alone.
    let fingerprint = json!({
        "spec": spec,
        "annotations": annotations,
        "delivery": delivery,
        "subscriber": subscriber,
        "deadLetterSink": resolved.get("deadLetterSink"),
        "uid": r.metadata.uid,
    })
    .to_string();
    cp.dispatcher.run(trigger, fingerprint).await;
    Ok(())
}
