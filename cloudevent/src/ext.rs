//! The extension names and limits Ferry and Knative give meaning to, in one place.

/// Selects a partition: events with the same key land on the same partition, in order.
pub const PARTITION_KEY: &str = "partitionkey";

/// Knative's loop guard (I-11): a reply carries one less than the event it answers; an event
/// that arrives with it at 0 went round a loop of triggers and is refused.
pub const BROKER_TTL: &str = "knativebrokerttl";

/// The loop guard's start: what an event without [`BROKER_TTL`] counts as.
pub const MAX_TTL: i64 = 255;

/// Stamped on every event a broker stores: when it arrived (RFC 3339, UTC, microseconds).
pub const ARRIVAL_TIME: &str = "knativearrivaltime";

/// Added to an event sent to a dead-letter sink: the subscriber that failed.
pub const ERROR_DEST: &str = "knativeerrordest";
/// Added to an event sent to a dead-letter sink: the subscriber's last HTTP status.
pub const ERROR_CODE: &str = "knativeerrorcode";
/// Added to an event sent to a dead-letter sink: base64 of the first 1024 bytes of its answer.
pub const ERROR_DATA: &str = "knativeerrordata";

/// The namespace of Ferry's own brokers (resource changes, serving statistics, pipeline
/// transitions): users may subscribe to them, producers may not post to them.
pub const SYSTEM_NAMESPACE: &str = "ferry-system";

/// The largest event a broker takes by default (attributes plus data), in bytes.
pub const DEFAULT_MAX_EVENT_SIZE: usize = 1024 * 1024;
