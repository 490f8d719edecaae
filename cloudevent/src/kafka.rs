//! The Kafka binding, as pure functions over a record's headers and value (the `broker` crate
//! turns them into rdkafka's types).
//!
//! Binary mode: each attribute a `ce_<name>` header (UTF-8 string), `datacontenttype` as the
//! `content-type` header, the data as the value, the `partitionkey` as the key. Extension
//! types that binary mode would lose (integers, booleans from structured-mode producers) travel
//! in one extra header, `ferry_types` (`name:i,name:b`), so a Ferry reader gets back exactly
//! what was sent while any other Kafka client sees an ordinary binary-mode CloudEvent.
//! Structured mode: the JSON format as the value, `content-type: application/cloudevents+json`.

use crate::validate::{media_type, InvalidEvent};
use crate::{json, AttrValue, Event};
use bytes::Bytes;

/// The header that keeps binary mode's extension types (Ferry's own; other clients ignore it).
pub const TYPES_HEADER: &str = "ferry_types";

/// Calls `header(key, value)` for each header of the event in binary mode, in attribute order,
/// `ferry_types` last when needed.
pub fn binary_headers(event: &Event, mut header: impl FnMut(&str, &[u8])) {
    let mut types = Vec::new();
    for (name, value) in &event.attributes {
        let text = value.to_text();
        if name == "datacontenttype" {
            header("content-type", text.as_bytes());
            continue;
        }
        match value {
            AttrValue::Integer(_) => types.push(format!("{name}:i")),
            AttrValue::Boolean(_) => types.push(format!("{name}:b")),
            AttrValue::String(_) => {}
        }
        header(&format!("ce_{name}"), text.as_bytes());
    }
    if !types.is_empty() {
        header(TYPES_HEADER, types.join(",").as_bytes());
    }
}

/// The binary-mode event in a record's headers `(key, value)` and value; `None` if the record
/// has no `ce_specversion` (it is not a binary-mode CloudEvent). Not validated: the log reads
/// back what it wrote this way.
pub fn decode_binary<'a>(
    headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    value: Option<&[u8]>,
) -> Option<Event> {
    let mut attributes = Vec::new();
    let mut types: Vec<(String, char)> = Vec::new();
    for (key, raw) in headers {
        let Some(v) = raw.and_then(|v| std::str::from_utf8(v).ok()) else {
            continue;
        };
        if key == TYPES_HEADER {
            types = v
                .split(',')
                .filter_map(|t| {
                    t.rsplit_once(':')
                        .and_then(|(n, k)| k.chars().next().map(|k| (n.to_string(), k)))
                })
                .collect();
        } else if key.eq_ignore_ascii_case("content-type") {
            attributes.push((
                "datacontenttype".to_string(),
                AttrValue::String(v.to_string()),
            ));
        } else if let Some(name) = key.strip_prefix("ce_") {
            attributes.push((name.to_string(), AttrValue::String(v.to_string())));
        }
    }
    if !attributes.iter().any(|(n, _)| n == "specversion") {
        return None;
    }
    for (name, kind) in types {
        if let Some((_, v)) = attributes.iter_mut().find(|(n, _)| *n == name) {
            let text = v.to_text().into_owned();
            *v = match kind {
                'i' => text
                    .parse()
                    .map(AttrValue::Integer)
                    .unwrap_or(AttrValue::String(text)),
                'b' => AttrValue::Boolean(text == "true"),
                _ => AttrValue::String(text),
            };
        }
    }
    Some(Event {
        attributes,
        data: value.filter(|v| !v.is_empty()).map(Bytes::copy_from_slice),
    })
}

/// The CloudEvent a record carries, in either mode, validated: `Ok(None)` when the record is
/// not a CloudEvent at all (no `ce_specversion`, not structured), an error when it claims to
/// be one but is not valid.
pub fn decode<'a>(
    headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)> + Clone,
    value: Option<&[u8]>,
) -> Result<Option<Event>, InvalidEvent> {
    let structured = headers
        .clone()
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .and_then(|(_, v)| std::str::from_utf8(v?).ok())
        .is_some_and(|ct| media_type(ct) == json::CONTENT_TYPE);
    let event = if structured {
        json::decode(value.unwrap_or_default())?
    } else {
        match decode_binary(headers, value) {
            Some(e) => e,
            None => return Ok(None),
        }
    };
    crate::validate(&event)?;
    Ok(Some(event))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(e: &Event) -> Vec<(String, Vec<u8>)> {
        let mut h = Vec::new();
        binary_headers(e, |k, v| h.push((k.to_string(), v.to_vec())));
        h
    }

    fn view(h: &[(String, Vec<u8>)]) -> Vec<(&str, Option<&[u8]>)> {
        h.iter().map(|(k, v)| (k.as_str(), Some(&v[..]))).collect()
    }

    #[test]
    fn binary_mode_round_trips_with_types() {
        let e = Event {
            attributes: vec![
                ("specversion".into(), AttrValue::String("1.0".into())),
                ("id".into(), AttrValue::String("1".into())),
                (
                    "datacontenttype".into(),
                    AttrValue::String("application/json".into()),
                ),
                ("n".into(), AttrValue::Integer(-4)),
                ("flag".into(), AttrValue::Boolean(true)),
            ],
            data: Some(Bytes::from_static(b"{}")),
        };
        let h = headers(&e);
        assert_eq!(h[2].0, "content-type");
        assert_eq!(decode_binary(view(&h), Some(b"{}")), Some(e));
        assert_eq!(decode_binary(vec![], Some(b"x")), None, "not a CloudEvent");
    }

    #[test]
    fn decode_tells_a_plain_record_from_a_bad_event() {
        assert_eq!(decode(vec![], Some(b"x")), Ok(None));
        let h = [("ce_specversion", Some(&b"1.0"[..]))];
        let err = decode(h, None).unwrap_err();
        assert_eq!(err, InvalidEvent::Missing("id"));
    }
}
