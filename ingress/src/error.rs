//! Ingress failures and their HTTP statuses (the only place that maps one to the other).

use axum::response::{IntoResponse, Response};
use broker::{LogError, PublishError};
use cloudevent::InvalidEvent;
use http::{header, HeaderValue, StatusCode};

/// Why the ingress refused a request.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// An EventPolicy (or the namespace's default) does not let the sender send this.
    #[error("{0}")]
    Forbidden(String),
    #[error("invalid CloudEvent: {0}")]
    Invalid(#[from] InvalidEvent),
    #[error("broker {namespace}/{name} not found")]
    UnknownBroker { namespace: String, name: String },
    #[error("namespace ferry-system holds Ferry's own brokers; producers cannot post to it")]
    Reserved,
    #[error("no broker at this path; send events to /{{namespace}}/{{broker}}")]
    NoRoute,
    #[error("method {0} not allowed; use POST")]
    Method(http::Method),
    #[error("event of {size} bytes is larger than the maximum of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("request body larger than the maximum of {max} bytes")]
    BodyTooLarge { max: usize },
    #[error("cannot read the request body: {0}")]
    Body(String),
    #[error("the event was not stored, try again: {0}")]
    Unavailable(LogError),
    /// Too much in flight: a request limit of the ingress (the message says which).
    #[error("{0}; retry")]
    Saturated(String),
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(std::time::Duration),
}

impl IngressError {
    pub fn status(&self) -> StatusCode {
        match self {
            IngressError::Invalid(_) | IngressError::Body(_) => StatusCode::BAD_REQUEST,
            IngressError::UnknownBroker { .. } | IngressError::NoRoute => StatusCode::NOT_FOUND,
            IngressError::Method(_) => StatusCode::METHOD_NOT_ALLOWED,
            IngressError::Reserved | IngressError::Forbidden(_) => StatusCode::FORBIDDEN,
            IngressError::TooLarge { .. } | IngressError::BodyTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            IngressError::Unavailable(_) | IngressError::Saturated(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            IngressError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The `reason` label of `ferry_ingress_refused_total` for a refusal by a limit.
    pub fn refusal(&self) -> &'static str {
        match self {
            IngressError::Saturated(m) if m.contains("bytes") => "buffered_bytes",
            IngressError::Saturated(_) => "in_flight",
            IngressError::BodyTimeout(_) => "body_timeout",
            _ => "other",
        }
    }

    /// Maps a publishing failure; `batch`: the request was a batch, whose errors name the
    /// event by its index.
    pub fn from_publish(e: PublishError, batch: bool, namespace: &str, name: &str) -> Self {
        match e {
            PublishError::Invalid { index, source } if batch => source.in_batch(index).into(),
            PublishError::Invalid { source, .. } => source.into(),
            PublishError::TooLarge { size, max, .. } => IngressError::TooLarge { size, max },
            PublishError::Log(e) => Self::from_log(e, namespace, name),
        }
    }

    /// Maps an append failure: an unknown topic is the client's 404; anything else means the
    /// event was not stored, a 503 the producer may retry.
    pub fn from_log(e: LogError, namespace: &str, name: &str) -> Self {
        match e {
            LogError::UnknownTopic(_) => IngressError::UnknownBroker {
                namespace: namespace.to_string(),
                name: name.to_string(),
            },
            other => IngressError::Unavailable(other),
        }
    }
}

/// Methods the ingress path answers, for `Allow`.
pub const ALLOW: HeaderValue = HeaderValue::from_static("POST, OPTIONS");

impl IntoResponse for IngressError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut resp = (status, format!("{self}\n")).into_response();
        resp.headers_mut().insert(header::ALLOW, ALLOW);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}
