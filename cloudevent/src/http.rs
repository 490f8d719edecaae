//! The HTTP binding: which content mode a message uses, binary mode in and out.
//!
//! Binary mode carries each attribute in a `ce-<name>` header, percent-encoded (HTTP binding
//! §3.1.3.2), `datacontenttype` as `Content-Type`, and the data as the body. Structured and
//! batched modes are the JSON format ([`crate::json`]) in the body. Decoding checks the
//! encoding only: [`crate::validate`] checks the attributes.

use crate::validate::{attr_err, media_type, InvalidEvent};
use crate::{json, AttrValue, Event};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};

/// How a message carries its events (HTTP binding §3, from `Content-Type`, case-insensitive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Binary,
    Structured,
    Batch,
}

/// Characters percent-encoded in a binary-mode header value: space, `"`, `%` and everything
/// outside printable ASCII.
const HEADER_ESCAPES: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// The content mode of a message with this `Content-Type`, or an error for a structured format
/// other than JSON.
pub fn mode(content_type: Option<&str>) -> Result<Mode, InvalidEvent> {
    let Some(ct) = content_type else {
        return Ok(Mode::Binary);
    };
    let media = media_type(ct);
    if media.starts_with("application/cloudevents-batch") {
        if media == json::BATCH_CONTENT_TYPE {
            return Ok(Mode::Batch);
        }
        return Err(InvalidEvent::Format(media));
    }
    if media.starts_with("application/cloudevents") {
        if media == json::CONTENT_TYPE || media == "application/cloudevents" {
            return Ok(Mode::Structured);
        }
        return Err(InvalidEvent::Format(media));
    }
    Ok(Mode::Binary)
}

/// Decodes a binary-mode message: `ce-*` headers percent-decoded, `Content-Type` as
/// `datacontenttype`, a non-empty body as data.
pub fn decode_binary(headers: &HeaderMap, body: Bytes) -> Result<Event, InvalidEvent> {
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
    Ok(event)
}

/// Decodes a message that carries one event, binary or structured, and validates it (a
/// subscriber's reply, for example). A batch is refused.
pub fn decode_one(headers: &HeaderMap, body: Bytes) -> Result<Event, InvalidEvent> {
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let event = match mode(ct)? {
        Mode::Binary => decode_binary(headers, body)?,
        Mode::Structured => json::decode(&body)?,
        Mode::Batch => return Err(InvalidEvent::Format(json::BATCH_CONTENT_TYPE.into())),
    };
    crate::validate(&event)?;
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

/// The event's attributes as binary-mode headers (`ce-*`, percent-encoded; `datacontenttype`
/// as `Content-Type`). The body is the event's data.
pub fn binary_headers(event: &Event) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(event.attributes.len());
    for (name, value) in &event.attributes {
        let text = value.to_text();
        if name == "datacontenttype" {
            if let Ok(v) = HeaderValue::from_str(&text) {
                headers.insert(http::header::CONTENT_TYPE, v);
            }
            continue;
        }
        let encoded = utf8_percent_encode(&text, HEADER_ESCAPES).to_string();
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(format!("ce-{name}").as_bytes()),
            HeaderValue::from_str(&encoded),
        ) {
            headers.insert(n, v);
        }
    }
    headers
}
