//! The kinds Ferry's eventing serves, each one module implementing [`crate::Kind`]:
//!
//! - `broker.rs`: Broker (`eventing.knative.dev/v1`): a log, addressable at the ingress.
//! - `trigger.rs`: Trigger (`eventing.knative.dev/v1`): a runner in the dispatcher.
//! - `kafka_sink.rs`: KafkaSink (`eventing.knative.dev/v1alpha1`): an address writing to a topic.
//! - `kafka_source.rs`: KafkaSource (`sources.knative.dev/v1beta1`): runners reading topics.
//! - `ping_source.rs`: PingSource (`sources.knative.dev/v1`): events on a cron schedule.
//!
//! Serving and pipelines register theirs the same way, each in its own crate.

pub mod broker;
pub mod kafka_sink;
pub mod kafka_source;
mod kafka_validate;
pub mod ping_source;
pub mod trigger;

use crate::registry::Registry;

/// Registers the eventing kinds, in reconcile order (what has an address before what
/// delivers to it).
pub fn register_eventing(registry: &mut Registry) {
    registry.register(broker::Broker::default());
    registry.register(kafka_sink::KafkaSink);
    registry.register(trigger::Trigger);
    registry.register(kafka_source::KafkaSource);
    registry.register(ping_source::PingSource::default());
}
