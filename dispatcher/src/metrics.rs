//! Metrics of the dispatcher. Names are documented in the README.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct DispatchMetrics {
    /// `ferry_dispatch_deliveries_total{namespace,trigger,class}`: delivery attempts by response
    /// class (`2xx`, `3xx`, `4xx`, `5xx`, `1xx`, `error` for timeouts and connection errors).
    pub deliveries: IntCounterVec,
    /// `ferry_dispatch_latency_seconds{namespace,trigger}`: time of one delivery attempt.
    pub latency: HistogramVec,
    /// `ferry_dispatch_retries_total{namespace,trigger}`: retries scheduled.
    pub retries: IntCounterVec,
    /// `ferry_dispatch_dead_letters_total{namespace,trigger,destination}`: events given up on,
    /// sent to the dead-letter `sink` or kept in Ferry's dead-letter `store`.
    pub dead_letters: IntCounterVec,
    /// `ferry_dispatch_replies_total{namespace,trigger,outcome}`: replies `stored` in the broker,
    /// or `dropped` by the loop guard.
    pub replies: IntCounterVec,
    /// `ferry_dispatch_expired_total{namespace,trigger}`: events dropped undelivered because
    /// they were older than the trigger's `ferry.dev/max-event-age`.
    pub expired: IntCounterVec,
    /// `ferry_dispatch_lag{namespace,trigger}`: events in the broker not yet settled by the trigger.
    pub lag: IntGaugeVec,
    /// `ferry_dispatch_partitions{namespace,trigger}`: partitions of the broker this node
    /// delivers for the trigger (all of them in embedded mode; a share in Kafka mode).
    pub partitions: IntGaugeVec,
    /// `ferry_dispatch_retry_queue{namespace,trigger}`: retries waiting in the durable queue.
    pub retry_queue: IntGaugeVec,
    /// `ferry_dispatch_dead_letter_store{namespace,trigger}`: events kept in Ferry's
    /// dead-letter store.
    pub dead_letter_store: IntGaugeVec,
    /// `ferry_dispatch_store_errors_total{namespace,trigger}`: writes to the delivery store
    /// that failed (each is tried again, with backoff).
    pub store_errors: IntCounterVec,
    /// `ferry_dispatch_retention_skipped_total{namespace,trigger}`: events the broker's
    /// retention removed before the trigger read them (never delivered).
    pub retention_skipped: IntCounterVec,
}

impl DispatchMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let labels = &["namespace", "trigger"];
        let m = Self {
            deliveries: IntCounterVec::new(
                Opts::new(
                    "ferry_dispatch_deliveries_total",
                    "Delivery attempts by response class.",
                ),
                &["namespace", "trigger", "class"],
            )?,
            latency: HistogramVec::new(
                HistogramOpts::new(
                    "ferry_dispatch_latency_seconds",
                    "Time of one delivery attempt.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ]),
                labels,
            )?,
            retries: IntCounterVec::new(
                Opts::new("ferry_dispatch_retries_total", "Retries scheduled."),
                labels,
            )?,
            dead_letters: IntCounterVec::new(
                Opts::new(
                    "ferry_dispatch_dead_letters_total",
                    "Events given up on, by where they went.",
                ),
                &["namespace", "trigger", "destination"],
            )?,
            replies: IntCounterVec::new(
                Opts::new(
                    "ferry_dispatch_replies_total",
                    "Subscriber replies, stored or dropped by the loop guard.",
                ),
                &["namespace", "trigger", "outcome"],
            )?,
            expired: IntCounterVec::new(
                Opts::new(
                    "ferry_dispatch_expired_total",
                    "Events dropped undelivered: older than the trigger's max event age.",
                ),
                labels,
            )?,
            lag: IntGaugeVec::new(
                Opts::new(
                    "ferry_dispatch_lag",
                    "Events not yet settled by the trigger.",
                ),
                labels,
            )?,
            partitions: IntGaugeVec::new(
                Opts::new(
                    "ferry_dispatch_partitions",
                    "Partitions this node delivers for the trigger.",
                ),
                labels,
            )?,
            retry_queue: IntGaugeVec::new(
                Opts::new(
                    "ferry_dispatch_retry_queue",
                    "Retries waiting in the trigger's durable queue.",
                ),
                labels,
            )?,
            dead_letter_store: IntGaugeVec::new(
                Opts::new(
                    "ferry_dispatch_dead_letter_store",
                    "Events kept in Ferry's dead-letter store for the trigger.",
                ),
                labels,
            )?,
            store_errors: IntCounterVec::new(
                Opts::new(
                    "ferry_dispatch_store_errors_total",
                    "Failed writes to the delivery store (each tried again).",
                ),
                labels,
            )?,
            retention_skipped: IntCounterVec::new(
                Opts::new(
                    "ferry_dispatch_retention_skipped_total",
                    "Events retention removed before the trigger read them.",
                ),
                labels,
            )?,
        };
        registry.register(Box::new(m.retention_skipped.clone()))?;
        registry.register(Box::new(m.retry_queue.clone()))?;
        registry.register(Box::new(m.dead_letter_store.clone()))?;
        registry.register(Box::new(m.store_errors.clone()))?;
        registry.register(Box::new(m.partitions.clone()))?;
        registry.register(Box::new(m.deliveries.clone()))?;
        registry.register(Box::new(m.latency.clone()))?;
        registry.register(Box::new(m.retries.clone()))?;
        registry.register(Box::new(m.dead_letters.clone()))?;
        registry.register(Box::new(m.replies.clone()))?;
        registry.register(Box::new(m.lag.clone()))?;
        registry.register(Box::new(m.expired.clone()))?;
        Ok(m)
    }
}
