//! Decoding and validation of the HTTP binding and the JSON format: what a producer's mistake
//! is told.

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use cloudevent::http::{decode_binary, mode, Mode};
use cloudevent::{json, validate, AttrValue, Event, InvalidEvent};
use http::{HeaderMap, HeaderValue};

/// What the ingress does with a binary-mode request: decode, then validate.
fn binary(h: &HeaderMap, body: Bytes) -> Result<Event, InvalidEvent> {
    let e = decode_binary(h, body)?;
    validate(&e)?;
    Ok(e)
}

fn structured(body: &[u8]) -> Result<Event, InvalidEvent> {
    let e = json::decode(body)?;
    validate(&e)?;
    Ok(e)
}

fn batch(body: &[u8]) -> Result<Vec<Event>, InvalidEvent> {
    let events = json::decode_batch(body)?;
    for (i, e) in events.iter().enumerate() {
        validate(e).map_err(|err| err.in_batch(i))?;
    }
    Ok(events)
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

fn minimal() -> Vec<(&'static str, &'static str)> {
    vec![
        ("ce-specversion", "1.0"),
        ("ce-id", "1"),
        ("ce-source", "/me"),
        ("ce-type", "demo"),
    ]
}

#[test]
fn modes_follow_content_type_case_insensitively() {
    assert_eq!(mode(None), Ok(Mode::Binary));
    assert_eq!(mode(Some("application/json")), Ok(Mode::Binary));
    assert_eq!(
        mode(Some("Application/CloudEvents+JSON; charset=utf-8")),
        Ok(Mode::Structured)
    );
    assert_eq!(
        mode(Some("application/cloudevents-batch+json")),
        Ok(Mode::Batch)
    );
    assert!(matches!(
        mode(Some("application/cloudevents+avro")),
        Err(InvalidEvent::Format(_))
    ));
}

#[test]
fn binary_keeps_attributes_and_body() {
    let mut h = headers(&minimal());
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert("ce-myext", HeaderValue::from_static("x"));
    let e = binary(&h, Bytes::from_static(b"{\"hi\": 1}")).unwrap();
    assert_eq!(
        e.attr_text("datacontenttype").as_deref(),
        Some("application/json")
    );
    assert_eq!(e.attr_text("myext").as_deref(), Some("x"));
    assert_eq!(e.data.as_deref(), Some(&b"{\"hi\": 1}"[..]));
}

#[test]
fn binary_percent_decodes_header_values() {
    let mut pairs = minimal();
    pairs[1] = ("ce-id", "hello%20w%C3%b6rld%25");
    let e = binary(&headers(&pairs), Bytes::new()).unwrap();
    assert_eq!(e.attr_text("id").as_deref(), Some("hello wörld%"));
    assert_eq!(e.data, None);
}

#[test]
fn binary_rejects_invalid_percent_encoding() {
    for bad in ["%C0%A0", "%zz", "abc%4"] {
        let mut pairs = minimal();
        pairs.push(("ce-ext", bad));
        let err = binary(&headers(&pairs), Bytes::new()).unwrap_err();
        assert!(
            matches!(&err, InvalidEvent::Attribute { name, .. } if name == "ext"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn each_missing_required_attribute_is_named() {
    for (i, name) in ["specversion", "id", "source", "type"].iter().enumerate() {
        let mut pairs = minimal();
        pairs.remove(i);
        let err = binary(&headers(&pairs), Bytes::new()).unwrap_err();
        assert_eq!(err, InvalidEvent::Missing(name), "without {name}");
        assert!(err.to_string().contains(name));
    }
}

#[test]
fn bad_values_are_rejected() {
    let cases = [
        ("ce-specversion", "0.2", "specversion"),
        ("ce-time", "yesterday", "time"),
        ("ce-dataschema", "not a uri", "dataschema"),
        ("ce-source", "has space", "source"),
        ("ce-id", "", "id"),
        ("ce-knativebrokerttl", "0", "loop"),
        ("ce-knativebrokerttl", "x", "knativebrokerttl"),
    ];
    for (header, value, named) in cases {
        let mut pairs: Vec<_> = minimal()
            .into_iter()
            .filter(|(k, _)| *k != header)
            .collect();
        pairs.push((header, value));
        let err = binary(&headers(&pairs), Bytes::new()).unwrap_err();
        assert!(err.to_string().contains(named), "{header}={value}: {err}");
    }
    let mut pairs = minimal();
    pairs.push(("ce-datacontenttype", "text/plain"));
    assert!(binary(&headers(&pairs), Bytes::new()).is_err());
}

#[test]
fn structured_keeps_json_data_bytes_and_types() {
    let body = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","ext":7,"flag":true,
        "time":"2018-04-05T03:56:24+02:00","data":{ "b": 2,  "a": [1, 2] }}"#;
    let e = structured(body).unwrap();
    assert_eq!(e.data.as_deref(), Some(&br#"{ "b": 2,  "a": [1, 2] }"#[..]));
    assert_eq!(e.attr("ext"), Some(&AttrValue::Integer(7)));
    assert_eq!(e.attr("flag"), Some(&AttrValue::Boolean(true)));
    assert_eq!(
        e.attr_text("time").as_deref(),
        Some("2018-04-05T03:56:24+02:00")
    );
    let names: Vec<&str> = e.attributes.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["specversion", "id", "source", "type", "ext", "flag", "time"]
    );
}

#[test]
fn structured_text_and_base64_data() {
    let e = structured(br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text/plain","data":"hi there"}"#).unwrap();
    assert_eq!(e.data.as_deref(), Some(&b"hi there"[..]));
    let e = structured(
        br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"AAEC"}"#,
    )
    .unwrap();
    assert_eq!(e.data.as_deref(), Some(&[0u8, 1, 2][..]));
    let err = structured(
        br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":1,"data_base64":"AAEC"}"#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("mutually exclusive"));
}

#[test]
fn malformed_json_is_reported() {
    assert!(matches!(
        structured(b"{not json"),
        Err(InvalidEvent::Json(_))
    ));
    assert!(matches!(
        structured(br#"{"specversion":"1.0","id":{"x":1},"source":"/s","type":"t"}"#),
        Err(InvalidEvent::Attribute { .. })
    ));
}

#[test]
fn batch_is_all_or_nothing_and_names_the_bad_event() {
    let ok = br#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"1.0","id":"2","source":"/s","type":"t"}]"#;
    assert_eq!(batch(ok).unwrap().len(), 2);
    let bad = br#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"1.0","source":"/s","type":"t"}]"#;
    let err = batch(bad).unwrap_err();
    assert_eq!(
        err.to_string(),
        "event 1 of the batch: missing required attribute 'id'"
    );
}

/// Structured JSON written by the official CloudEvents SDK (an independent encoder) parses to
/// the same event.
#[test]
fn structured_json_from_the_cloudevents_sdk() {
    use cloudevents::{EventBuilder, EventBuilderV10};
    let sdk = EventBuilderV10::new()
        .id("sdk-1")
        .source("http://example.com/x")
        .ty("com.example")
        .subject("s")
        .extension("count", 5i64)
        .extension("ok", true)
        .data("application/json", serde_json::json!({"a": [1, 2]}))
        .build()
        .unwrap();
    let json = serde_json::to_vec(&sdk).unwrap();
    let e = structured(&json).unwrap();
    assert_eq!(e.attr_text("id").as_deref(), Some("sdk-1"));
    assert_eq!(
        e.attr_text("source").as_deref(),
        Some("http://example.com/x")
    );
    assert_eq!(e.attr_text("subject").as_deref(), Some("s"));
    assert_eq!(e.attr("count"), Some(&AttrValue::Integer(5)));
    assert_eq!(e.attr("ok"), Some(&AttrValue::Boolean(true)));
    let data: serde_json::Value = serde_json::from_slice(e.data.as_deref().unwrap()).unwrap();
    assert_eq!(data, serde_json::json!({"a": [1, 2]}));
    // And back: our structured JSON is read by the SDK as the same event.
    let back: cloudevents::Event = serde_json::from_str(&json::encode(&e)).unwrap();
    assert_eq!(back, sdk);
}

#[test]
fn binary_headers_round_trip_through_the_decoder() {
    let e = Event {
        attributes: vec![
            ("specversion".into(), AttrValue::String("1.0".into())),
            ("id".into(), AttrValue::String("a \"b\" 100%".into())),
            ("source".into(), AttrValue::String("/s".into())),
            ("type".into(), AttrValue::String("t".into())),
            ("n".into(), AttrValue::Integer(3)),
            (
                "datacontenttype".into(),
                AttrValue::String("application/json".into()),
            ),
        ],
        data: Some(Bytes::from_static(b"{}")),
    };
    let headers = cloudevent::http::binary_headers(&e);
    assert_eq!(headers["ce-id"], "a%20%22b%22%20100%25");
    let back = binary(&headers, e.data.clone().unwrap()).unwrap();
    // Binary mode carries every attribute as a string.
    assert_eq!(back.attr_text("id"), e.attr_text("id"));
    assert_eq!(back.attr_text("n").as_deref(), Some("3"));
    assert_eq!(back.data, e.data);
}

#[test]
fn a_ce_data_header_is_refused_not_written_twice_as_data() {
    let h = headers(&[
        ("ce-specversion", "1.0"),
        ("ce-id", "1"),
        ("ce-source", "/s"),
        ("ce-type", "t"),
        ("ce-data", "sneaky"),
        ("content-type", "text/plain"),
    ]);
    let err = binary(&h, Bytes::from_static(b"body")).unwrap_err();
    assert!(
        err.to_string().contains("'data' is the event's payload"),
        "{err}"
    );
}
