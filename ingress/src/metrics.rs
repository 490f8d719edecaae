//! Metrics of the ingress. Names are documented in the README.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct IngressMetrics {
    /// `ferry_ingress_events_total{namespace,broker,code}`: events accepted (202) or rejected,
    /// by broker and HTTP status. Requests to unknown brokers count with empty broker labels.
    pub events: IntCounterVec,
    /// `ferry_ingress_request_seconds{code}`: request handling time, body read to answer.
    pub request_seconds: HistogramVec,
    /// `ferry_ingress_refused_total{reason}`: requests or connections refused by a limit:
    /// `connections`, `in_flight`, `buffered_bytes` (503), `body_timeout` (408).
    pub refused: IntCounterVec,
    /// `ferry_ingress_requests_in_flight`: requests past the in-flight limit's gate and not yet
    /// answered (reading their bodies, or being stored).
    pub in_flight: IntGauge,
}

impl IngressMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            events: IntCounterVec::new(
                Opts::new(
                    "ferry_ingress_events_total",
                    "Events accepted or rejected by the ingress, by broker and HTTP status.",
                ),
                &["namespace", "broker", "code"],
            )?,
            request_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "ferry_ingress_request_seconds",
                    "Ingress request handling time, by HTTP status.",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    1.0,
                ]),
                &["code"],
            )?,
            refused: IntCounterVec::new(
                Opts::new(
                    "ferry_ingress_refused_total",
                    "Requests or connections the ingress refused by a limit, by reason.",
                ),
                &["reason"],
            )?,
            in_flight: IntGauge::new(
                "ferry_ingress_requests_in_flight",
                "Ingress requests admitted and not yet answered.",
            )?,
        };
        registry.register(Box::new(m.in_flight.clone()))?;
        registry.register(Box::new(m.refused.clone()))?;
        registry.register(Box::new(m.events.clone()))?;
        registry.register(Box::new(m.request_seconds.clone()))?;
        Ok(m)
    }
}
