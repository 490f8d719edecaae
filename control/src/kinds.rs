//! The kinds Ferry's eventing serves, each one module implementing [`crate::Kind`]:
//!
//! - `broker.rs`: Broker (`eventing.knative.dev/v1`): a log, addressable at the ingress.
//! - `trigger.rs`: Trigger (`eventing.knative.dev/v1`): a runner in the dispatcher.
//! - `kafka_sink.rs`: KafkaSink (`eventing.knative.dev/v1alpha1`): an address writing to a topic.
//! - `kafka_source.rs`: KafkaSource (`sources.knative.dev/v1beta1`): runners reading topics.
//! - `kafka_auth.rs`: the SASL/TLS settings of those kinds' clusters, from secret references.
//! - `ping_source.rs`: PingSource (`sources.knative.dev/v1`): events on a cron schedule.
//! - `event_policy.rs`: EventPolicy (`eventing.knative.dev/v1alpha1`): who may send what to
//!   which broker or sink (registered with its table of compiled policies, which the
//!   ingress's admission reads).
//!
//! Serving and pipelines register theirs the same way, each in its own crate.

pub mod broker;
pub mod event_policy;
pub mod kafka_auth;
pub mod kafka_sink;
pub mod kafka_source;
mod kafka_validate;
pub mod ping_source;
pub mod trigger;

use crate::plane::ControlPlane;
use crate::registry::Registry;
use crate::resource::Resource;
use serde_json::Value;

/// The status of an addressable Ferry serves at its ingress (a broker, a sink): its address,
/// the audience a token sent to it must name (Knative's `group/kind/namespace/name`) and,
/// with `--tls-ca`, the CA certificates of the ingress's certificate.
pub(crate) fn ingress_address(
    cp: &ControlPlane,
    r: &Resource,
    conditions: &[&str],
    group: &str,
    url: String,
) -> Value {
    let mut s = crate::status::addressable(r, conditions, url);
    s["address"]["audience"] = Value::String(crate::auth::audience(
        group,
        &r.kind,
        &r.metadata.namespace,
        &r.metadata.name,
    ));
    if let Some(ca) = &cp.config().address_ca {
        s["address"]["CACerts"] = Value::String(ca.clone());
    }
    s
}

/// Registers the eventing kinds, in reconcile order (what has an address before what
/// delivers to it).
pub fn register_eventing(registry: &mut Registry) {
    registry.register(broker::Broker::default());
    registry.register(kafka_sink::KafkaSink);
    registry.register(trigger::Trigger);
    registry.register(kafka_source::KafkaSource);
    registry.register(ping_source::PingSource::default());
}
