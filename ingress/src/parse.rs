//! HTTP request → CloudEvents (pure: no I/O, no async).
//!
//! - binary mode: attributes in `ce-*` headers (percent-decoded, HTTP binding §3.1.3.2), the
//!   `Content-Type` as `datacontenttype`, the body as data;
//! - structured mode (`application/cloudevents+json`): one JSON object; `data` is kept as the
//!   exact bytes of its JSON text (or the string's bytes for a non-JSON content type),
//!   `data_base64` decoded;
//! - batched mode (`application/cloudevents-batch+json`): a JSON array of structured events,
//!   all valid or none accepted.
//!
//! Every error names what is wrong, so the 400 tells the producer what to fix.

use base64::Engine as _;
use broker::{AttrValue, Event};
use bytes::Bytes;
use http::HeaderMap;
use indexmap::IndexMap;
use serde_json::value::RawValue;

/// How a request carries its events (HTTP binding §3, from `Content-Type`, case-insensitive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Binary,
    Structured,
    Batch,
}

/// Why a request is not a valid CloudEvent (a 400).
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

fn attr_err(name: &str, problem: impl Into<String>) -> InvalidEvent {
    InvalidEvent::Attribute {
        name: name.to_string(),
        problem: problem.into(),
    }
}

/// The content mode of a request with this `Content-Type`, or an error for a structured
/// format other than JSON.
pub fn mode(content_type: Option<&str>) -> Result<Mode, InvalidEvent> {
    let Some(ct) = content_type else {
        return Ok(Mode::Binary);
    };
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media.starts_with("application/cloudevents-batch") {
        if media == "application/cloudevents-batch+json" {
            return Ok(Mode::Batch);
        }
        return Err(InvalidEvent::Format(media));
    }
    if media.starts_with("application/cloudevents") {
        if media == "application/cloudevents+json" || media == "application/cloudevents" {
            return Ok(Mode::Structured);
        }
        return Err(InvalidEvent::Format(media));
    }
    Ok(Mode::Binary)
}

/// Parses a binary-mode request.
pub fn binary(headers: &HeaderMap, body: Bytes) -> Result<Event, InvalidEvent> {
    let mut event = Event::default();
    for (name, value) in headers {
        let Some(attr) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        if attr == "datacontenttype" {
            return Err(attr_err(
                "datacontenttype",
                "must travel in the Content-Type header, not ce-datacontenttype",
            ));
        }
        let raw = value
            .to_str()
            .map_err(|_| attr_err(attr, "header value is not visible ASCII; percent-encode it"))?;
        let decoded = percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| attr_err(attr, "percent-encoding does not decode to valid UTF-8"))?;
        check_percent_escapes(attr, raw)?;
        if event.attr(attr).is_some() {
            return Err(attr_err(attr, "given more than once"));
        }
        event
            .attributes
            .push((attr.to_string(), AttrValue::String(decoded.into_owned())));
    }
    if let Some(ct) = headers.get(http::header::CONTENT_TYPE) {
        let ct = ct
            .to_str()
            .map_err(|_| attr_err("datacontenttype", "Content-Type is not visible ASCII"))?;
        event
            .attributes
            .push(("datacontenttype".into(), AttrValue::String(ct.to_string())));
    }
    if !body.is_empty() {
        event.data = Some(body);
    }
    validate(&event)?;
    Ok(event)
}

/// A `%` must start a two-digit hex escape; `percent_decode` would pass a stray one through.
fn check_percent_escapes(attr: &str, raw: &str) -> Result<(), InvalidEvent> {
    let b = raw.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let ok =
                b.len() > i + 2 && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit();
            if !ok {
                return Err(attr_err(
                    attr,
                    "invalid percent-encoding (a '%' must be followed by two hex digits)",
                ));
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// Parses a structured-mode body.
pub fn structured(body: &[u8]) -> Result<Event, InvalidEvent> {
    let members: IndexMap<String, &RawValue> =
        serde_json::from_slice(body).map_err(|e| InvalidEvent::Json(e.to_string()))?;
    from_members(members)
}

/// Parses a batched-mode body: every event valid, or an error naming the first bad one.
pub fn batch(body: &[u8]) -> Result<Vec<Event>, InvalidEvent> {
    let items: Vec<IndexMap<String, &RawValue>> =
        serde_json::from_slice(body).map_err(|e| InvalidEvent::Json(e.to_string()))?;
    items
        .into_iter()
        .enumerate()
        .map(|(index, members)| {
            from_members(members).map_err(|e| InvalidEvent::InBatch {
                index,
                source: Box::new(e),
            })
        })
        .collect()
}

fn from_members(members: IndexMap<String, &RawValue>) -> Result<Event, InvalidEvent> {
    let mut event = Event::default();
    let mut data: Option<&RawValue> = None;
    let mut data_base64: Option<&RawValue> = None;
    for (name, raw) in members {
        match name.as_str() {
            "data" => data = Some(raw),
            "data_base64" => data_base64 = Some(raw),
            _ => {
                let value: serde_json::Value = serde_json::from_str(raw.get())
                    .map_err(|e| InvalidEvent::Json(e.to_string()))?;
                let value = match value {
                    serde_json::Value::Null => continue,
                    serde_json::Value::String(s) => AttrValue::String(s),
                    serde_json::Value::Bool(b) => AttrValue::Boolean(b),
                    serde_json::Value::Number(n) => {
                        AttrValue::Integer(n.as_i64().ok_or_else(|| {
                            attr_err(
                                &name,
                                "a number attribute must be an integer in the 64-bit range",
                            )
                        })?)
                    }
                    _ => return Err(attr_err(&name, "must be a string, an integer or a boolean")),
                };
                event.attributes.push((name, value));
            }
        }
    }
    event.data = match (data, data_base64) {
        (Some(_), Some(_)) => {
            return Err(attr_err(
                "data",
                "'data' and 'data_base64' are mutually exclusive",
            ))
        }
        (Some(raw), None) if raw.get() == "null" => None,
        (Some(raw), None) => Some(json_data(&event, raw)?),
        (None, Some(raw)) => {
            let s: Option<String> = serde_json::from_str(raw.get())
                .map_err(|_| attr_err("data_base64", "must be a base64 string"))?;
            match s {
                Some(s) => Some(Bytes::from(
                    base64::engine::general_purpose::STANDARD
                        .decode(s.as_bytes())
                        .map_err(|e| attr_err("data_base64", format!("not valid base64: {e}")))?,
                )),
                None => None,
            }
        }
        (None, None) => None,
    };
    validate(&event)?;
    Ok(event)
}

/// `data` of a structured event as bytes: the JSON text itself when the content type is JSON
/// (or absent, which means JSON in this format); a string's characters otherwise.
fn json_data(event: &Event, raw: &RawValue) -> Result<Bytes, InvalidEvent> {
    let ct = event.attr_text("datacontenttype");
    if ct.as_deref().is_none_or(is_json) {
        return Ok(Bytes::copy_from_slice(raw.get().as_bytes()));
    }
    match serde_json::from_str::<serde_json::Value>(raw.get()) {
        Ok(serde_json::Value::String(s)) => Ok(Bytes::from(s)),
        Ok(_) => Ok(Bytes::copy_from_slice(raw.get().as_bytes())),
        Err(e) => Err(InvalidEvent::Json(e.to_string())),
    }
}

/// Whether a media type carries JSON (`application/json`, `text/json`, `*+json`).
pub fn is_json(content_type: &str) -> bool {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || media == "text/json" || media.ends_with("+json")
}

/// Knative's loop guard (I-11): replies carry one less each time they re-enter a broker; an
/// event that arrives with it at 0 went round a loop of triggers and is refused.
pub const BROKER_TTL: &str = "knativebrokerttl";

/// Checks the attributes of a CloudEvents 1.0 event (spec "Context Attributes").
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
            BROKER_TTL => {
                let ttl = match value {
                    AttrValue::Integer(i) => Some(*i),
                    AttrValue::String(s) => s.parse::<i64>().ok(),
                    AttrValue::Boolean(_) => None,
                };
                match ttl {
                    Some(t) if t > 0 => {}
                    Some(_) => {
                        return Err(attr_err(
                            name,
                            "reached 0: the event went round a loop of triggers",
                        ))
                    }
                    None => return Err(attr_err(name, "must be an integer")),
                }
            }
            "subject" | "datacontenttype" if text()?.is_empty() => {
                return Err(attr_err(name, "must be a non-empty string"));
            }
            _ => {}
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests;
