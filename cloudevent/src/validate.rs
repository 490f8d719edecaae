//! CloudEvents 1.0 validation (the spec's "Context Attributes"), and the one error type that
//! says what is wrong with an event, so a 400 tells the producer what to fix.

use crate::ext::BROKER_TTL;
use crate::{AttrValue, Event};

/// Why something is not a valid CloudEvent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidEvent {
    #[error("missing required attribute '{0}'")]
    Missing(&'static str),
    #[error("attribute '{name}': {problem}")]
    Attribute { name: String, problem: String },
    #[error("unsupported specversion '{0}' (this broker accepts 1.0)")]
    SpecVersion(String),
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error("unsupported structured format '{0}' (use application/cloudevents+json)")]
    Format(String),
    #[error("event {index} of the batch: {source}")]
    InBatch {
        index: usize,
        #[source]
        source: Box<InvalidEvent>,
    },
}

impl InvalidEvent {
    /// The error as the `index`th event of a batch.
    pub fn in_batch(self, index: usize) -> Self {
        InvalidEvent::InBatch {
            index,
            source: Box::new(self),
        }
    }
}

pub(crate) fn attr_err(name: &str, problem: impl Into<String>) -> InvalidEvent {
    InvalidEvent::Attribute {
        name: name.to_string(),
        problem: problem.into(),
    }
}

/// Checks the attributes of a CloudEvents 1.0 event: `specversion` 1.0; `id`, `source`, `type`
/// non-empty strings; names of `a-z0-9` only; `source` a URI-reference, `dataschema` an
/// absolute URI, `time` RFC 3339; `subject` and `datacontenttype` non-empty; and Knative's
/// `knativebrokerttl`, when present, an integer above 0.
pub fn validate(event: &Event) -> Result<(), InvalidEvent> {
    match event.attr("specversion") {
        None => return Err(InvalidEvent::Missing("specversion")),
        Some(AttrValue::String(v)) if v == "1.0" => {}
        Some(v) => return Err(InvalidEvent::SpecVersion(v.to_text().into_owned())),
    }
    for required in ["id", "source", "type"] {
        match event.attr(required) {
            None => return Err(InvalidEvent::Missing(required)),
            Some(AttrValue::String(s)) if s.is_empty() => {
                return Err(attr_err(required, "must be a non-empty string"))
            }
            Some(AttrValue::String(_)) => {}
            Some(_) => return Err(attr_err(required, "must be a string")),
        }
    }
    for (name, value) in &event.attributes {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(attr_err(
                name,
                "attribute names may contain only a-z and 0-9",
            ));
        }
        if name == "data" {
            // The JSON format's member for the payload: an attribute of that name would be
            // written twice there (a `ce-data` header in binary mode).
            return Err(attr_err(
                name,
                "'data' is the event's payload, not an attribute: send it as the body",
            ));
        }
        let text = || match value {
            AttrValue::String(s) => Ok(s.as_str()),
            _ => Err(attr_err(name, "must be a string")),
        };
        match name.as_str() {
            "source" => {
                let s = text()?;
                if !is_uri_reference(s) {
                    return Err(attr_err(name, format!("'{s}' is not a URI-reference")));
                }
            }
            "dataschema" => {
                let s = text()?;
                if s.is_empty() || url::Url::parse(s).is_err() {
                    return Err(attr_err(name, format!("'{s}' is not an absolute URI")));
                }
            }
            "time" => {
                let s = text()?;
                chrono::DateTime::parse_from_rfc3339(s)
                    .map_err(|_| attr_err(name, format!("'{s}' is not an RFC 3339 timestamp")))?;
            }
            BROKER_TTL => match ttl_of(value) {
                Some(t) if t > 0 => {}
                Some(_) => {
                    return Err(attr_err(
                        name,
                        "reached 0: the event went round a loop of triggers",
                    ))
                }
                None => return Err(attr_err(name, "must be an integer")),
            },
            "subject" | "datacontenttype" if text()?.is_empty() => {
                return Err(attr_err(name, "must be a non-empty string"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The loop guard's value as an integer: structured mode may carry it as a JSON integer,
/// binary mode always as a string.
pub fn ttl_of(value: &AttrValue) -> Option<i64> {
    match value {
        AttrValue::Integer(i) => Some(*i),
        AttrValue::String(s) => s.parse::<i64>().ok(),
        AttrValue::Boolean(_) => None,
    }
}

fn is_uri_reference(s: &str) -> bool {
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    match url::Url::parse(s) {
        Ok(_) => true,
        Err(url::ParseError::RelativeUrlWithoutBase) => url::Url::parse("http://base.invalid/")
            .and_then(|b| b.join(s))
            .is_ok(),
        Err(_) => false,
    }
}

/// Whether a media type carries JSON (`application/json`, `text/json`, `*+json`).
pub fn is_json(content_type: &str) -> bool {
    let media = media_type(content_type);
    media == "application/json" || media == "text/json" || media.ends_with("+json")
}

/// Whether a media type is text that JSON can carry as a string.
pub(crate) fn is_text(content_type: &str) -> bool {
    let media = media_type(content_type);
    media.starts_with("text/") || media.ends_with("+xml") || media == "application/xml"
}

/// The media type of a `Content-Type`, without parameters, lower-cased.
pub(crate) fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}
