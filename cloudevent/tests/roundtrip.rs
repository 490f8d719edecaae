//! Any valid event, through each binding and back: the same attributes (binary HTTP keeps
//! their text, every other binding their JSON types too) and byte-identical data. (The JSON
//! format embeds JSON data as a value, without white space around it, so the generated JSON
//! data has none, as any JSON encoder writes it.)

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use cloudevent::{http, json, kafka, validate, AttrValue, Event};
use proptest::prelude::*;

const RESERVED: &[&str] = &[
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
    "knativebrokerttl",
];

fn attr_value() -> impl Strategy<Value = AttrValue> {
    prop_oneof![
        any::<String>().prop_map(AttrValue::String),
        any::<i64>().prop_map(AttrValue::Integer),
        any::<bool>().prop_map(AttrValue::Boolean),
    ]
}

fn non_empty() -> impl Strategy<Value = String> {
    any::<String>().prop_filter("non-empty", |s| !s.is_empty())
}

fn source() -> impl Strategy<Value = String> {
    prop_oneof![
        "/([a-z0-9._-]{1,8}(/[a-z0-9._-]{1,8}){0,3})?",
        "https://[a-z]{1,10}\\.example/[a-z0-9/]{0,20}",
        "urn:[a-z]{1,8}:[a-z0-9]{1,10}",
    ]
}

fn time() -> impl Strategy<Value = String> {
    (0i64..4_102_444_800, 0u32..1_000_000_000, -720i32..720).prop_map(|(secs, nanos, offset)| {
        let offset = chrono::FixedOffset::east_opt(offset * 60).unwrap();
        chrono::DateTime::from_timestamp(secs, nanos)
            .unwrap()
            .with_timezone(&offset)
            .to_rfc3339()
    })
}

/// Data and its content type, as producers send them.
fn data() -> impl Strategy<Value = (Option<String>, Option<Vec<u8>>)> {
    let json_text = prop_oneof![
        any::<i32>().prop_map(|i| serde_json::json!(i)),
        any::<String>().prop_map(|s| serde_json::json!({ "s": s, "list": [1, 2] })),
        prop::collection::vec(any::<bool>(), 0..5).prop_map(|v| serde_json::json!(v)),
    ]
    .prop_map(|v| v.to_string().into_bytes());
    prop_oneof![
        Just((None, None)),
        json_text
            .clone()
            .prop_map(|d| (Some("application/json".to_string()), Some(d))),
        json_text.prop_map(|d| (None, Some(d))),
        non_empty().prop_map(|s| (
            Some("text/plain; charset=utf-8".into()),
            Some(s.into_bytes())
        )),
        prop::collection::vec(any::<u8>(), 1..64)
            .prop_map(|d| (Some("application/octet-stream".into()), Some(d))),
        prop::collection::vec(any::<u8>(), 1..64)
            .prop_filter("not JSON", |d| {
                serde_json::from_slice::<serde::de::IgnoredAny>(d).is_err()
            })
            .prop_map(|d| (None, Some(d))),
    ]
}

prop_compose! {
    fn event()(
        id in non_empty(),
        source in source(),
        ty in non_empty(),
        subject in prop::option::of(non_empty()),
        time in prop::option::of(time()),
        (ct, data) in data(),
        extensions in prop::collection::btree_map("[a-z][a-z0-9]{0,19}", attr_value(), 0..6),
    ) -> Event {
        let s = |v: String| AttrValue::String(v);
        let mut attributes = vec![
            ("specversion".to_string(), s("1.0".into())),
            ("id".to_string(), s(id)),
            ("source".to_string(), s(source)),
            ("type".to_string(), s(ty)),
        ];
        if let Some(v) = subject { attributes.push(("subject".into(), s(v))); }
        if let Some(v) = time { attributes.push(("time".into(), s(v))); }
        if let Some(v) = ct { attributes.push(("datacontenttype".into(), s(v))); }
        for (name, value) in extensions {
            if !RESERVED.contains(&name.as_str()) {
                attributes.push((name, value));
            }
        }
        Event { attributes, data: data.map(Bytes::from) }
    }
}

fn texts(e: &Event) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = e
        .attributes
        .iter()
        .map(|(n, v)| (n.clone(), v.to_text().into_owned()))
        .collect();
    v.sort();
    v
}

proptest! {
    #[test]
    fn json_format(e in event()) {
        prop_assert!(validate(&e).is_ok());
        let back = json::decode(json::encode(&e).as_bytes()).unwrap();
        prop_assert_eq!(back, e);
    }

    #[test]
    fn json_batch(events in prop::collection::vec(event(), 0..4)) {
        let back = json::decode_batch(json::encode_batch(&events).as_bytes()).unwrap();
        prop_assert_eq!(back, events);
    }

    #[test]
    fn http_binary_mode(e in event()) {
        let headers = http::binary_headers(&e);
        let back = http::decode_one(&headers, e.data.clone().unwrap_or_default()).unwrap();
        // Binary mode carries every attribute as a string.
        prop_assert_eq!(texts(&back), texts(&e));
        prop_assert_eq!(back.data, e.data);
    }

    #[test]
    fn http_structured_mode(e in event()) {
        let mut headers = ::http::HeaderMap::new();
        headers.insert("content-type", json::CONTENT_TYPE.parse().unwrap());
        let back = http::decode_one(&headers, Bytes::from(json::encode(&e))).unwrap();
        prop_assert_eq!(back, e);
    }

    #[test]
    fn kafka_binary_mode(e in event()) {
        let mut h: Vec<(String, Vec<u8>)> = Vec::new();
        kafka::binary_headers(&e, |k, v| h.push((k.to_string(), v.to_vec())));
        let view: Vec<(&str, Option<&[u8]>)> =
            h.iter().map(|(k, v)| (k.as_str(), Some(&v[..]))).collect();
        let back = kafka::decode(view, e.data.as_deref()).unwrap().unwrap();
        prop_assert_eq!(back, e);
    }

    #[test]
    fn kafka_structured_mode(e in event()) {
        let value = json::encode(&e);
        let h = [("content-type", Some(json::CONTENT_TYPE.as_bytes()))];
        let back = kafka::decode(h, Some(value.as_bytes())).unwrap().unwrap();
        prop_assert_eq!(back, e);
    }
}
