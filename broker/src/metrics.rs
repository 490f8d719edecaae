//! Metrics of the event log. Names are documented in the README.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};

/// The log's metrics, registered once per process.
#[derive(Clone)]
pub struct LogMetrics {
    /// `ferry_log_append_seconds`: time from an append request to its durable acknowledgement.
    pub append_seconds: Histogram,
    /// `ferry_log_fsyncs_total`: synced writes (one per group-commit batch).
    pub fsyncs: IntCounter,
    /// `ferry_log_batch_events`: events per group-commit batch.
    pub batch_events: Histogram,
    /// `ferry_log_appended_events_total`: events appended.
    pub appended_events: IntCounter,
    /// `ferry_log_stored_bytes`: bytes of events held in the log (all topics).
    pub stored_bytes: IntGauge,
    /// `ferry_log_retention_removed_total`: events removed by retention.
    pub retention_removed: IntCounter,
}

impl LogMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            append_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "ferry_log_append_seconds",
                    "Time from an append request to its durable acknowledgement.",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    1.0,
                ]),
            )?,
            fsyncs: IntCounter::new(
                "ferry_log_fsyncs_total",
                "Synced writes to the log (one per group-commit batch).",
            )?,
            batch_events: Histogram::with_opts(
                HistogramOpts::new("ferry_log_batch_events", "Events per group-commit batch.")
                    .buckets(vec![
                        1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0,
                    ]),
            )?,
            appended_events: IntCounter::new(
                "ferry_log_appended_events_total",
                "Events appended to the log.",
            )?,
            stored_bytes: IntGauge::new(
                "ferry_log_stored_bytes",
                "Bytes of events held in the log, all brokers.",
            )?,
            retention_removed: IntCounter::new(
                "ferry_log_retention_removed_total",
                "Events removed by retention.",
            )?,
        };
        registry.register(Box::new(m.append_seconds.clone()))?;
        registry.register(Box::new(m.fsyncs.clone()))?;
        registry.register(Box::new(m.batch_events.clone()))?;
        registry.register(Box::new(m.appended_events.clone()))?;
        registry.register(Box::new(m.stored_bytes.clone()))?;
        registry.register(Box::new(m.retention_removed.clone()))?;
        Ok(m)
    }
}
