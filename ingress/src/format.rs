//! Events → CloudEvents JSON (structured mode) and binary-mode headers: the way out, for
//! `ferry tail`, deliveries and replies.

use crate::parse::is_json;
use base64::Engine as _;
use broker::{AttrValue, Event};
use http::{HeaderMap, HeaderName, HeaderValue};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};

/// Characters percent-encoded in a binary-mode header value (HTTP binding §3.1.3.2): space,
/// `"`, `%` and everything outside printable ASCII.
const HEADER_ESCAPES: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// The event as one CloudEvents JSON object (structured mode), attributes in their stored
/// order and with their JSON types. Data is embedded as JSON when it is JSON, as a string when
/// it is text, else as `data_base64`.
pub fn structured_json(event: &Event) -> String {
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

fn is_text(ct: &str) -> bool {
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media.starts_with("text/") || media.ends_with("+xml") || media == "application/xml"
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;
    use bytes::Bytes;

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
    fn structured_round_trips_through_the_parser() {
        for (ct, data) in [
            (Some("application/json"), &br#"{"a": [1, 2]}"#[..]),
            (None, &br#"[1,2,3]"#[..]),
            (Some("text/plain"), &b"hello \"you\""[..]),
            (Some("application/octet-stream"), &[0u8, 255, 7][..]),
            (Some("application/json"), &b"not json"[..]),
        ] {
            let e = event(ct, data);
            let json = structured_json(&e);
            let back = parse::structured(json.as_bytes()).unwrap();
            assert_eq!(back, e, "{json}");
        }
    }

    #[test]
    fn binary_headers_round_trip_through_the_parser() {
        let e = event(Some("application/json"), b"{}");
        let headers = binary_headers(&e);
        assert_eq!(headers["ce-id"], "a%20%22b%22%20100%25");
        let back = parse::binary(&headers, e.data.clone().unwrap()).unwrap();
        // Binary mode carries every attribute as a string.
        assert_eq!(back.attr_text("id"), e.attr_text("id"));
        assert_eq!(back.attr_text("n").as_deref(), Some("3"));
        assert_eq!(back.data, e.data);
    }
}
