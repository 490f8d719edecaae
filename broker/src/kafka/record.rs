//! Events as Kafka records, in the CloudEvents Kafka binding's binary mode: each attribute a
//! `ce_<name>` header (UTF-8 string), `datacontenttype` as the `content-type` header, the data
//! as the value, the `partitionkey` as the key. Extension types that binary mode would lose
//! (integers, booleans from structured-mode producers) travel in one extra header,
//! `ferry_types` (`name:i,name:b`), so a Ferry reader gets back exactly what was sent while any
//! other Kafka client sees an ordinary binary-mode CloudEvent.

use crate::event::{AttrValue, Event};
use bytes::Bytes;
use rdkafka::message::{Header, Headers, OwnedHeaders};

pub const TYPES_HEADER: &str = "ferry_types";

pub fn headers(event: &Event) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(event.attributes.len() + 1);
    let mut types = Vec::new();
    for (name, value) in &event.attributes {
        let text = value.to_text();
        if name == "datacontenttype" {
            h = h.insert(Header {
                key: "content-type",
                value: Some(text.as_bytes()),
            });
            continue;
        }
        match value {
            AttrValue::Integer(_) => types.push(format!("{name}:i")),
            AttrValue::Boolean(_) => types.push(format!("{name}:b")),
            AttrValue::String(_) => {}
        }
        let key = format!("ce_{name}");
        h = h.insert(Header {
            key: &key,
            value: Some(text.as_bytes()),
        });
    }
    if !types.is_empty() {
        let t = types.join(",");
        h = h.insert(Header {
            key: TYPES_HEADER,
            value: Some(t.as_bytes()),
        });
    }
    h
}

/// The event in a record's headers and value; `None` if it is not a CloudEvent.
pub fn event<H: Headers>(headers: Option<&H>, value: Option<&[u8]>) -> Option<Event> {
    event_from(headers?.iter().map(|h| (h.key, h.value)), value)
}

/// The binary-mode event in a record's headers (key, value) and value; `None` if it is not a
/// CloudEvent.
pub fn event_from<'a>(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_types() {
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
        assert_eq!(event(Some(&h), Some(b"{}")), Some(e));
        assert_eq!(
            event(Some(&OwnedHeaders::new()), Some(b"x")),
            None,
            "not a CloudEvent"
        );
    }
}
