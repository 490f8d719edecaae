//! W3C Trace Context on events: the CloudEvents distributed-tracing extension
//! (`traceparent`, `tracestate`) and its meeting point with `tracing` spans.
//!
//! The extension is the event's creation context: Ferry keeps it as the producer set it, and
//! sets it only on an event that arrives without one (from the request's `traceparent` header,
//! else from Ferry's own ingest span when spans are exported). Each hop (a delivery, a reply)
//! carries its own context in the HTTP `traceparent` header. Parsing and formatting are
//! OpenTelemetry's W3C propagator; spans become OpenTelemetry spans only when the binary
//! installs the exporter (`--otlp-endpoint`): otherwise a span has no valid context and the
//! event's own context travels on unchanged.

use std::collections::HashMap;

use http::{HeaderMap, HeaderValue};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{AttrValue, Event};

/// The extension attribute (and HTTP header) with the W3C `traceparent`.
pub const TRACEPARENT: &str = "traceparent";
/// The extension attribute (and HTTP header) with the W3C `tracestate`.
pub const TRACESTATE: &str = "tracestate";

/// A valid W3C trace context: a `traceparent` and its optional `tracestate`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub parent: String,
    pub state: Option<String>,
}

impl TraceContext {
    /// Checks a `traceparent` by the W3C rules and keeps it, and its `tracestate`, exactly as
    /// given; `None` if invalid. (OpenTelemetry's propagator is not used here: it refuses
    /// version-00 flags other than 0 and 1, such as Level 2's random flag, and rewrites what
    /// it accepts.)
    pub fn parse(parent: &str, state: Option<&str>) -> Option<Self> {
        let ids = w3c_ids(parent)?;
        let zero = |s: &str| s.bytes().all(|c| c == b'0');
        if &parent[..2] == "ff" || zero(ids.0) || zero(ids.1) {
            return None;
        }
        let state = state.map(str::trim).filter(|s| !s.is_empty());
        Some(Self {
            parent: parent.to_string(),
            state: state.map(str::to_string),
        })
    }

    /// The OpenTelemetry span context this context names (a remote parent).
    fn span_context(&self) -> Option<SpanContext> {
        let (trace, span) = w3c_ids(&self.parent)?;
        let flags = u8::from_str_radix(&self.parent[53..55], 16).ok()?;
        let state = self
            .state
            .as_deref()
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        Some(SpanContext::new(
            TraceId::from_hex(trace).ok()?,
            SpanId::from_hex(span).ok()?,
            TraceFlags::new(flags & TraceFlags::SAMPLED.to_u8()),
            true,
            state,
        ))
    }

    /// The context an event carries in its extension attributes, if valid.
    pub fn of_event(event: &Event) -> Option<Self> {
        let parent = event.attr_text(TRACEPARENT)?;
        let state = event.attr_text(TRACESTATE);
        Self::parse(&parent, state.as_deref())
    }

    /// The context of an HTTP request's `traceparent`/`tracestate` headers, if valid.
    pub fn of_headers(headers: &HeaderMap) -> Option<Self> {
        let parent = headers.get(TRACEPARENT)?.to_str().ok()?;
        let state = headers
            .get_all(TRACESTATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>();
        // Several `tracestate` fields are one list (W3C: combined with commas).
        let state = (!state.is_empty()).then(|| state.join(","));
        Self::parse(parent, state.as_deref())
    }

    /// The context of a `tracing` span, when spans are exported (else `None`).
    pub fn of_span(span: &tracing::Span) -> Option<Self> {
        Self::of_context(&span.context())
    }

    fn of_context(cx: &Context) -> Option<Self> {
        if !cx.span().span_context().is_valid() {
            return None;
        }
        let mut carrier = HashMap::with_capacity(2);
        TraceContextPropagator::new().inject_context(cx, &mut carrier);
        let parent = carrier.remove(TRACEPARENT)?;
        let state = carrier.remove(TRACESTATE).filter(|s| !s.is_empty());
        Some(Self { parent, state })
    }

    /// As the event's extension attributes (a `tracestate` it had is replaced or removed).
    pub fn set_on(&self, event: &mut Event) {
        event.set_attr(TRACEPARENT, AttrValue::String(self.parent.clone()));
        match &self.state {
            Some(s) => event.set_attr(TRACESTATE, AttrValue::String(s.clone())),
            None => {
                event.remove_attr(TRACESTATE);
            }
        }
    }

    /// As HTTP `traceparent`/`tracestate` headers.
    pub fn to_headers(&self, headers: &mut HeaderMap) {
        if let Ok(v) = HeaderValue::from_str(&self.parent) {
            headers.insert(TRACEPARENT, v);
        }
        match self.state.as_deref().map(HeaderValue::from_str) {
            Some(Ok(v)) => {
                headers.insert(TRACESTATE, v);
            }
            _ => {
                headers.remove(TRACESTATE);
            }
        }
    }

    /// Makes this context the parent of `span` (a no-op unless spans are exported). Call it
    /// before the span is first entered.
    pub fn adopt(&self, span: &tracing::Span) {
        if let Some(sc) = self.span_context() {
            // Fails only when no exporter is installed: nothing to link then.
            let _ = span.set_parent(Context::new().with_remote_span_context(sc));
        }
    }

    /// The context a hop inside `span` sends on: the span's own when spans are exported,
    /// else the event's, unchanged.
    pub fn for_hop(span: &tracing::Span, event: &Event) -> Option<Self> {
        Self::of_span(span).or_else(|| Self::of_event(event))
    }
}

/// The trace and parent ids of a `traceparent` in the layout W3C fixes
/// (`vv-<32 hex>-<16 hex>-ff`, lowercase; a later version may append `-…`).
fn w3c_ids(parent: &str) -> Option<(&str, &str)> {
    let b = parent.as_bytes();
    let hex = |r: std::ops::Range<usize>| {
        b[r].iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    let shaped = b.len() >= 55
        && (b.len() == 55 || (b[..2] != *b"00" && b[55] == b'-'))
        && b[2] == b'-'
        && b[35] == b'-'
        && b[52] == b'-'
        && hex(0..2)
        && hex(3..35)
        && hex(36..52)
        && hex(53..55);
    // All ASCII from here on, so the slices are on character boundaries.
    shaped.then(|| (&parent[3..35], &parent[36..52]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_valid_and_refuses_invalid_contexts() {
        let cx = TraceContext::parse(PARENT, Some("vendor=x")).unwrap();
        assert_eq!(cx.parent, PARENT);
        assert_eq!(cx.state.as_deref(), Some("vendor=x"));
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "not a trace",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01é",
            "é0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad, None), None, "{bad:?}");
        }
        // Kept exactly: Level 2's random flag, a later version's extra field.
        for good in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later",
        ] {
            assert_eq!(TraceContext::parse(good, None).unwrap().parent, good);
        }
    }

    #[test]
    fn round_trips_through_events_and_headers() {
        let cx = TraceContext::parse(PARENT, Some("a=1,b=2")).unwrap();
        let mut event = crate::EventBuilder::new("t", "/s").build().unwrap();
        cx.set_on(&mut event);
        assert_eq!(TraceContext::of_event(&event), Some(cx.clone()));
        let mut headers = HeaderMap::new();
        cx.to_headers(&mut headers);
        assert_eq!(TraceContext::of_headers(&headers), Some(cx));
        let plain = TraceContext::parse(PARENT, None).unwrap();
        plain.set_on(&mut event);
        assert!(event.attr(TRACESTATE).is_none());
    }

    #[test]
    fn without_an_exporter_a_hop_carries_the_events_context() {
        let mut event = crate::EventBuilder::new("t", "/s").build().unwrap();
        let span = tracing::info_span!("test");
        assert_eq!(TraceContext::for_hop(&span, &event), None);
        let cx = TraceContext::parse(PARENT, None).unwrap();
        cx.set_on(&mut event);
        cx.adopt(&span);
        assert_eq!(TraceContext::for_hop(&span, &event), Some(cx));
    }
}
