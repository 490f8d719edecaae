//! Arbitrary input to every decoder: never a panic, and what a decoder accepts round-trips.
//! (Property tests with proptest; a bounded number of cases per run, more with
//! `PROPTEST_CASES=100000 cargo test -p cloudevent --test arbitrary`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ::http::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use cloudevent::{http, json, kafka};
use proptest::prelude::*;

/// Header names a decoder looks at, and some it does not.
fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("ce-specversion".to_string()),
        Just("ce-id".to_string()),
        Just("ce-source".to_string()),
        Just("ce-type".to_string()),
        Just("ce-time".to_string()),
        Just("ce-data".to_string()),
        Just("ce-knativebrokerttl".to_string()),
        Just("content-type".to_string()),
        "ce-[a-z0-9]{1,12}",
        "[a-z-]{1,12}",
    ]
}

/// Header values: printable text (with `%` escapes, good and bad) or any bytes.
fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"1.0".to_vec()),
        "[ -~]{0,40}".prop_map(String::into_bytes),
        "(%[0-9A-Fa-f]{0,2}|[a-z]){0,10}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..40),
    ]
}

fn headers() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    prop::collection::vec((header_name(), header_value()), 0..10)
}

/// JSON-ish bodies: mostly shaped like events, with arbitrary values, and any bytes.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let value = prop_oneof![
        any::<i64>().prop_map(|i| i.to_string()),
        "[ -~]{0,20}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        Just("null".to_string()),
        Just("[1,{\"a\":[]}]".to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
    ];
    let field = prop_oneof![
        Just("specversion"),
        Just("id"),
        Just("source"),
        Just("type"),
        Just("time"),
        Just("data"),
        Just("data_base64"),
        Just("datacontenttype"),
        Just("dataschema"),
        Just("ext1"),
    ];
    let object = prop::collection::vec((field, value), 0..9).prop_map(|fields| {
        let inner: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", inner.join(","))
    });
    prop_oneof![
        object.clone().prop_map(String::into_bytes),
        prop::collection::vec(object, 0..4).prop_map(|o| format!("[{}]", o.join(",")).into_bytes()),
        prop::collection::vec(any::<u8>(), 0..200),
    ]
}

fn header_map(h: &[(String, Vec<u8>)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in h {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_bytes(v)) {
            map.append(k, v);
        }
    }
    map
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(2000)))]

    #[test]
    fn structured_and_batch_bodies_never_panic_and_round_trip(b in body()) {
        if let Ok(e) = json::decode(&b) {
            prop_assert_eq!(json::decode(json::encode(&e).as_bytes()).unwrap(), e);
        }
        if let Ok(events) = json::decode_batch(&b) {
            prop_assert_eq!(json::decode_batch(json::encode_batch(&events).as_bytes()).unwrap(), events);
        }
    }

    #[test]
    fn binary_requests_never_panic_and_round_trip(h in headers(), b in body()) {
        let map = header_map(&h);
        let _ = http::mode(map.get("content-type").and_then(|v| v.to_str().ok()));
        if let Ok(e) = http::decode_binary(&map, Bytes::from(b.clone())) {
            let again = http::decode_binary(&http::binary_headers(&e), e.data.clone().unwrap_or_default()).unwrap();
            prop_assert_eq!(again, e);
        }
        let _ = http::decode_one(&map, Bytes::from(b));
    }

    #[test]
    fn kafka_records_never_panic(h in headers(), b in prop::option::of(body())) {
        let kafka_headers: Vec<(String, Option<Vec<u8>>)> = h
            .into_iter()
            .map(|(k, v)| (k.replacen("ce-", "ce_", 1), Some(v)))
            .collect();
        let borrowed = kafka_headers.iter().map(|(k, v)| (k.as_str(), v.as_deref()));
        let _ = kafka::decode_binary(borrowed.clone(), b.as_deref());
        let _ = kafka::decode(borrowed, b.as_deref());
    }
}

/// `PROPTEST_CASES` from the environment (a longer run by hand), else `default`: a config's
/// own case count would otherwise override the variable.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
