//! Names of brokers' topics on Kafka: injective, and Knative's where that cannot collide.

use crate::log::Topic;

/// The Kafka topic of a broker: Knative's `knative-broker-{namespace}-{name}` (K-02), with
/// the namespace as [`escaped_namespace`] writes it, so no two brokers share a topic.
pub fn topic_name(topic: &Topic) -> String {
    format!(
        "knative-broker-{}-{}",
        escaped_namespace(&topic.namespace),
        topic.name
    )
}

/// A namespace in a Kafka topic or group name: as it is if it has no `-` (Knative's names then
/// already cannot collide: the first `-` after the prefix ends the namespace), else with each
/// `-` written `_` (which no namespace has: they are DNS-1123 labels). Either way the
/// namespace part has no `-`, so `{prefix}-{namespace}-{name}` names one broker or trigger:
/// `a-b/c` and `a/b-c`, one topic in Knative's scheme, are `…-a_b-c` and `…-a-b-c`.
pub fn escaped_namespace(namespace: &str) -> std::borrow::Cow<'_, str> {
    if namespace.contains('-') {
        namespace.replace('-', "_").into()
    } else {
        namespace.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_knatives_where_unambiguous_and_never_shared() {
        assert_eq!(
            topic_name(&Topic::new("shop", "orders-eu")),
            "knative-broker-shop-orders-eu"
        );
        assert_ne!(
            topic_name(&Topic::new("a-b", "c")),
            topic_name(&Topic::new("a", "b-c"))
        );
        assert_eq!(topic_name(&Topic::new("a-b", "c")), "knative-broker-a_b-c");
        assert!(!topic_name(&Topic::new("ferry", "x")).starts_with("ferry-"));
    }
}
