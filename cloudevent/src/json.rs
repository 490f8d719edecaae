//! The JSON event format (structured mode) and its batch form.
//!
//! Decoding keeps `data` as the exact bytes of its JSON text (or the string's characters for a
//! non-JSON content type) and decodes `data_base64`; encoding writes attributes in their
//! stored order with their JSON types, and data as JSON when it is JSON, a string when it is
//! text, else `data_base64`. Decoding checks the format only: [`crate::validate`] checks the
//! attributes.

use crate::validate::{attr_err, is_json, is_text, InvalidEvent};
use crate::{AttrValue, Event};
use base64::Engine as _;
use bytes::Bytes;
use indexmap::IndexMap;
use serde_json::value::RawValue;

/// `Content-Type` of one event in the JSON format.
pub const CONTENT_TYPE: &str = "application/cloudevents+json";
/// `Content-Type` of a batch of events in the JSON format.
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";

/// Decodes one event in the JSON format.
pub fn decode(body: &[u8]) -> Result<Event, InvalidEvent> {
    let members: IndexMap<String, &RawValue> =
        serde_json::from_slice(body).map_err(|e| InvalidEvent::Json(e.to_string()))?;
    from_members(members)
}

/// Decodes a batch (a JSON array of events); an error names the first bad event.
pub fn decode_batch(body: &[u8]) -> Result<Vec<Event>, InvalidEvent> {
    let items: Vec<IndexMap<String, &RawValue>> =
        serde_json::from_slice(body).map_err(|e| InvalidEvent::Json(e.to_string()))?;
    items
        .into_iter()
        .enumerate()
        .map(|(index, members)| from_members(members).map_err(|e| e.in_batch(index)))
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
    Ok(event)
}

/// `data` of a JSON-format event as bytes: the JSON text itself when the content type is JSON
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

/// The event as one JSON object, attributes in their stored order and with their JSON types.
/// Data is embedded as JSON when it is JSON (without the white space around it), as a string
/// when it is text, else as `data_base64`: decoding gives back the same bytes, but for white
/// space around JSON data.
pub fn encode(event: &Event) -> String {
    let mut out = String::with_capacity(128 + event.size() * 4 / 3);
    out.push('{');
    let mut first = true;
    let mut member = |out: &mut String, name: &str, value: &str| {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(&json_string(name));
        out.push(':');
        out.push_str(value);
    };
    for (name, value) in &event.attributes {
        let v = match value {
            AttrValue::String(s) => json_string(s),
            AttrValue::Integer(i) => i.to_string(),
            AttrValue::Boolean(b) => b.to_string(),
        };
        member(&mut out, name, &v);
    }
    if let Some(data) = &event.data {
        let ct = event.attr_text("datacontenttype");
        // JSON data is embedded as a JSON value (white space around it is not part of the
        // value, and the decoder gives back the value's own bytes).
        let as_json = ct.as_deref().is_none_or(is_json)
            && serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok();
        match std::str::from_utf8(data) {
            Ok(text) if as_json => member(&mut out, "data", text.trim()),
            Ok(text) if ct.as_deref().is_some_and(is_text) => {
                member(&mut out, "data", &json_string(text))
            }
            _ => member(
                &mut out,
                "data_base64",
                &json_string(&base64::engine::general_purpose::STANDARD.encode(data)),
            ),
        }
    }
    out.push('}');
    out
}

/// Events as a batch: a JSON array of [`encode`]d events.
pub fn encode_batch(events: &[Event]) -> String {
    let mut out = String::from("[");
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&encode(e));
    }
    out.push(']');
    out
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ct: Option<&str>, data: &[u8]) -> Event {
        let mut e = Event {
            attributes: vec![
                ("specversion".into(), AttrValue::String("1.0".into())),
                ("id".into(), AttrValue::String("a \"b\" 100%".into())),
                ("source".into(), AttrValue::String("/s".into())),
                ("type".into(), AttrValue::String("t".into())),
                ("n".into(), AttrValue::Integer(3)),
            ],
            data: Some(Bytes::copy_from_slice(data)),
        };
        if let Some(ct) = ct {
            e.set_attr("datacontenttype", AttrValue::String(ct.into()));
        }
        e
    }

    #[test]
    fn encoding_round_trips_through_the_decoder() {
        for (ct, data) in [
            (Some("application/json"), &br#"{"a": [1, 2]}"#[..]),
            (None, &br#"[1,2,3]"#[..]),
            (Some("text/plain"), &b"hello \"you\""[..]),
            (Some("application/octet-stream"), &[0u8, 255, 7][..]),
            (Some("application/json"), &b"not json"[..]),
        ] {
            let e = event(ct, data);
            let json = encode(&e);
            let back = decode(json.as_bytes()).unwrap();
            assert_eq!(back, e, "{json}");
        }
    }

    #[test]
    fn a_batch_round_trips_and_names_its_bad_event() {
        let events = vec![event(None, b"1"), event(Some("text/plain"), b"x")];
        assert_eq!(
            decode_batch(encode_batch(&events).as_bytes()).unwrap(),
            events
        );
        let bad = br#"[{"id":"1"},{"id":1.5}]"#;
        let err = decode_batch(bad).unwrap_err().to_string();
        assert!(
            err.starts_with("event 1 of the batch: attribute 'id'"),
            "{err}"
        );
    }

    #[test]
    fn data_and_data_base64_exclude_each_other() {
        let err = decode(br#"{"data":1,"data_base64":"AA=="}"#).unwrap_err();
        assert!(err.to_string().contains("mutually exclusive"), "{err}");
    }
}
