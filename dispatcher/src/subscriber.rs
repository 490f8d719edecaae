//! The one delivery interface: HTTP subscribers and in-process handlers (Ferry's own
//! controllers) both implement [`Subscriber`], so filters, retries, dead letters and offsets
//! are the same for both.

use crate::outbound::Credentials;
use crate::policy::Format;
use async_trait::async_trait;
use broker::Event;
use bytes::Bytes;
use cloudevent::trace::TraceContext;
use futures::future::BoxFuture;
use futures::StreamExt;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use std::sync::Arc;
use std::time::Duration;

/// Largest subscriber answer read (a reply event, or an error body).
pub const MAX_RESPONSE: usize = 1024 * 1024;

/// Why an attempt failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// HTTP status, if there was an answer.
    pub code: Option<u16>,
    /// The answer's body (at most 1024 bytes kept).
    pub body: Bytes,
    pub message: String,
    /// `Retry-After` of a 429 or 503.
    pub retry_after: Option<Duration>,
}

impl Failure {
    pub fn new(code: Option<u16>, body: Bytes, message: impl Into<String>) -> Self {
        Self {
            code,
            body: body.slice(..body.len().min(1024)),
            message: message.into(),
            retry_after: None,
        }
    }
}

/// What one attempt came to (D-03).
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Accepted; `reply` when the answer was a 200 carrying a CloudEvent.
    Delivered { reply: Option<Event> },
    /// Failed, worth retrying (404, 408, 409, 429, 5xx, timeout, connection error).
    Retry(Failure),
    /// Failed for good (other 4xx, 1xx, 3xx, a malformed reply): straight to the dead letter.
    Fail(Failure),
}

impl Outcome {
    /// The metric class of this outcome.
    pub fn class(&self) -> &'static str {
        let code = match self {
            Outcome::Delivered { .. } => return "2xx",
            Outcome::Retry(f) | Outcome::Fail(f) => f.code,
        };
        match code {
            None => "error",
            Some(c) if c < 200 => "1xx",
            Some(c) if c < 300 => "2xx",
            Some(c) if c < 400 => "3xx",
            Some(c) if c < 500 => "4xx",
            Some(_) => "5xx",
        }
    }
}

/// Classifies a subscriber's answer (pure).
pub fn classify(status: StatusCode, headers: &HeaderMap, body: Bytes) -> Outcome {
    let code = status.as_u16();
    if status.is_success() {
        if code != 200 || !looks_like_event(headers) {
            // A 202 is never a reply (D-03); a body that is not an event is ignored.
            return Outcome::Delivered { reply: None };
        }
        // A copy: the body may be a slice of a larger read buffer, which the reply, kept in the
        // log's tail cache, would otherwise hold on to.
        return match cloudevent::http::decode_one(headers, Bytes::copy_from_slice(&body)) {
            Ok(reply) => Outcome::Delivered { reply: Some(reply) },
            Err(e) => Outcome::Fail(Failure::new(
                Some(code),
                body,
                format!("the reply is not a valid CloudEvent: {e}"),
            )),
        };
    }
    let mut failure = Failure::new(Some(code), body, format!("subscriber answered {status}"));
    match code {
        404 | 408 | 409 | 429 | 500..=599 => {
            if code == 429 || code == 503 {
                failure.retry_after = headers
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after);
            }
            Outcome::Retry(failure)
        }
        _ => Outcome::Fail(failure),
    }
}

fn looks_like_event(headers: &HeaderMap) -> bool {
    headers.contains_key("ce-specversion")
        || headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                ct.to_ascii_lowercase()
                    .starts_with("application/cloudevents")
            })
}

/// `Retry-After`: delta-seconds or an HTTP-date in any of the three forms HTTP allows
/// (IMF-fixdate, and the obsolete RFC 850 and asctime forms).
fn parse_retry_after(v: &str) -> Option<Duration> {
    if let Ok(secs) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v.trim()).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Where a trigger's events go.
#[async_trait]
pub trait Subscriber: Send + Sync {
    /// One attempt to deliver `event`.
    async fn deliver(&self, event: &Event) -> Outcome;
    /// The destination, as `knativeerrordest` names it.
    fn destination(&self) -> String;
}

/// An HTTP subscriber: POST in binary mode (or structured), with `Prefer: reply`.
pub struct HttpSubscriber {
    client: reqwest::Client,
    url: String,
    format: Format,
    timeout: Duration,
    /// A bearer token for the destination's audience with each request.
    credentials: Option<Credentials>,
}

impl HttpSubscriber {
    pub fn new(
        client: reqwest::Client,
        url: impl Into<String>,
        format: Format,
        timeout: Duration,
        credentials: Option<Credentials>,
    ) -> Self {
        Self {
            client,
            url: url.into(),
            format,
            timeout,
            credentials,
        }
    }
}

#[async_trait]
impl Subscriber for HttpSubscriber {
    async fn deliver(&self, event: &Event) -> Outcome {
        let request = self
            .client
            .post(&self.url)
            .timeout(self.timeout)
            .header("prefer", "reply");
        // The hop's trace context: the delivery span's, else the event's (W3C headers).
        let mut trace = HeaderMap::new();
        if let Some(cx) = TraceContext::for_hop(&tracing::Span::current(), event) {
            cx.to_headers(&mut trace);
        }
        let mut request = request.headers(trace);
        if let Some(c) = &self.credentials {
            match c.tokens.token(&c.subject, &c.audience) {
                Ok(token) => request = request.bearer_auth(token),
                Err(e) => {
                    return Outcome::Retry(Failure::new(
                        None,
                        Bytes::new(),
                        format!("no token for audience {}: {e}", c.audience),
                    ))
                }
            }
        }
        let request = match self.format {
            Format::Binary => request
                .headers(cloudevent::http::binary_headers(event))
                .body(event.data.clone().unwrap_or_default()),
            Format::Structured => request
                .header(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/cloudevents+json"),
                )
                .body(cloudevent::json::encode(event)),
        };
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                let what = if e.is_timeout() {
                    "timed out"
                } else {
                    "failed"
                };
                // With its causes: "error sending request" alone does not say that a certificate
                // was not trusted or a connection refused.
                let mut text = e.to_string();
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    text.push_str(&format!(": {c}"));
                    cause = c.source();
                }
                return Outcome::Retry(Failure::new(
                    None,
                    Bytes::new(),
                    format!("request to {} {what}: {text}", self.url),
                ));
            }
        };
        let status = response.status();
        let headers = response.headers().clone();
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        let mut truncated = false;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) if body.len() + c.len() <= MAX_RESPONSE => body.extend_from_slice(&c),
                // Past the limit the body is not kept; the status still decides.
                Ok(_) => {
                    truncated = true;
                    break;
                }
                Err(e) => {
                    return Outcome::Retry(Failure::new(
                        Some(status.as_u16()),
                        Bytes::from(body),
                        format!("reading the answer failed: {e}"),
                    ))
                }
            }
        }
        if truncated && status == StatusCode::OK && looks_like_event(&headers) {
            return Outcome::Fail(Failure::new(
                Some(status.as_u16()),
                Bytes::from(body),
                "the reply event is larger than 1 MiB",
            ));
        }
        classify(status, &headers, Bytes::from(body))
    }

    fn destination(&self) -> String {
        self.url.clone()
    }
}

/// What an in-process handler answers: a reply or none, or a failure (retryable or not).
pub type HandlerResult = Result<Option<Event>, HandlerError>;

#[derive(Clone, Debug)]
pub struct HandlerError {
    pub retryable: bool,
    pub message: String,
}

type HandlerFn = dyn Fn(Event) -> BoxFuture<'static, HandlerResult> + Send + Sync;

/// An in-process subscriber: one of Ferry's own controllers.
#[derive(Clone)]
pub struct Handler {
    name: String,
    f: Arc<HandlerFn>,
}

impl Handler {
    pub fn new(
        name: impl Into<String>,
        f: impl Fn(Event) -> BoxFuture<'static, HandlerResult> + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            f: Arc::new(f),
        }
    }
}

#[async_trait]
impl Subscriber for Handler {
    async fn deliver(&self, event: &Event) -> Outcome {
        match (self.f)(event.clone()).await {
            Ok(reply) => Outcome::Delivered { reply },
            Err(e) => {
                let failure = Failure::new(None, Bytes::from(e.message.clone()), e.message);
                if e.retryable {
                    Outcome::Retry(failure)
                } else {
                    Outcome::Fail(failure)
                }
            }
        }
    }

    fn destination(&self) -> String {
        format!("handler:{}", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[test]
    fn status_codes() {
        let ok = |c: u16| {
            classify(
                StatusCode::from_u16(c).unwrap(),
                &HeaderMap::new(),
                Bytes::new(),
            )
        };
        assert_eq!(ok(200), Outcome::Delivered { reply: None });
        assert_eq!(ok(204), Outcome::Delivered { reply: None });
        for c in [404, 408, 409, 429, 500, 502, 503, 504] {
            assert!(matches!(ok(c), Outcome::Retry(_)), "{c} retries");
        }
        for c in [400, 401, 403, 405, 410, 413, 301, 100] {
            assert!(matches!(ok(c), Outcome::Fail(_)), "{c} does not retry");
        }
    }

    #[test]
    fn replies() {
        let headers = h(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "r"),
            ("ce-source", "/s"),
            ("ce-type", "reply"),
        ]);
        match classify(StatusCode::OK, &headers, Bytes::from_static(b"{}")) {
            Outcome::Delivered { reply: Some(e) } => {
                assert_eq!(e.attr_text("type").as_deref(), Some("reply"))
            }
            other => panic!("{other:?}"),
        }
        // 202 with an event is not a reply.
        assert_eq!(
            classify(StatusCode::ACCEPTED, &headers, Bytes::new()),
            Outcome::Delivered { reply: None }
        );
        // A body that is not an event is ignored; one that claims to be an event but is not fails.
        assert_eq!(
            classify(
                StatusCode::OK,
                &h(&[("content-type", "text/plain")]),
                Bytes::from_static(b"garbage")
            ),
            Outcome::Delivered { reply: None }
        );
        let broken = classify(
            StatusCode::OK,
            &h(&[("content-type", "application/cloudevents+json")]),
            Bytes::from_static(b"{garbage"),
        );
        assert!(
            matches!(broken, Outcome::Fail(ref f) if f.message.contains("not a valid CloudEvent")),
            "{broken:?}"
        );
    }

    #[test]
    fn retry_after_only_on_429_and_503() {
        let headers = h(&[("retry-after", "7")]);
        match classify(StatusCode::TOO_MANY_REQUESTS, &headers, Bytes::new()) {
            Outcome::Retry(f) => assert_eq!(f.retry_after, Some(Duration::from_secs(7))),
            other => panic!("{other:?}"),
        }
        match classify(StatusCode::INTERNAL_SERVER_ERROR, &headers, Bytes::new()) {
            Outcome::Retry(f) => assert_eq!(f.retry_after, None),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retry_after_takes_every_http_date_form() {
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        let fixdate = httpdate::fmt_http_date(later);
        // The same instant in the obsolete forms: "Sunday, 06-Nov-94 08:49:37 GMT" and
        // "Sun Nov  6 08:49:37 1994".
        let t = chrono::DateTime::<chrono::Utc>::from(later);
        let rfc850 = t.format("%A, %d-%b-%y %H:%M:%S GMT").to_string();
        let asctime = t.format("%a %b %e %H:%M:%S %Y").to_string();
        for form in [fixdate, rfc850, asctime] {
            let wait = parse_retry_after(&form).unwrap_or_else(|| panic!("{form:?} refused"));
            assert!(
                wait > Duration::from_secs(100) && wait <= Duration::from_secs(120),
                "{form:?}: {wait:?}"
            );
        }
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn failure_bodies_are_truncated() {
        let f = Failure::new(Some(500), Bytes::from(vec![b'x'; 5000]), "boom");
        assert_eq!(f.body.len(), 1024);
    }
}
