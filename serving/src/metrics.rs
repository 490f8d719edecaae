//! Metrics of serving. Names are documented in the README.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Clone)]
pub struct ServingMetrics {
    /// `ferry_serving_requests_total{namespace,revision,code}`: requests the gateway answered,
    /// by HTTP status (its own 503/504 included).
    pub requests: IntCounterVec,
    /// `ferry_serving_request_seconds{namespace,revision}`: arrival to the answer's headers.
    pub latency: HistogramVec,
    /// `ferry_serving_cold_start_seconds{namespace,revision}`: how long a request that arrived
    /// at zero instances waited for one.
    pub cold_starts: HistogramVec,
    /// `ferry_serving_instances{namespace,revision,state}`: instances `ready`, or `starting`.
    pub instances: IntGaugeVec,
}

impl ServingMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let labels = &["namespace", "revision"];
        let m = Self {
            requests: IntCounterVec::new(
                Opts::new(
                    "ferry_serving_requests_total",
                    "Requests the gateway answered, by HTTP status.",
                ),
                &["namespace", "revision", "code"],
            )?,
            latency: HistogramVec::new(
                HistogramOpts::new(
                    "ferry_serving_request_seconds",
                    "Gateway request time, arrival to the answer's headers.",
                )
                .buckets(BUCKETS.to_vec()),
                labels,
            )?,
            cold_starts: HistogramVec::new(
                HistogramOpts::new(
                    "ferry_serving_cold_start_seconds",
                    "How long a request that arrived at zero instances waited for one.",
                )
                .buckets(BUCKETS.to_vec()),
                labels,
            )?,
            instances: IntGaugeVec::new(
                Opts::new("ferry_serving_instances", "Instances by state."),
                &["namespace", "revision", "state"],
            )?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.latency.clone()))?;
        registry.register(Box::new(m.cold_starts.clone()))?;
        registry.register(Box::new(m.instances.clone()))?;
        Ok(m)
    }
}
