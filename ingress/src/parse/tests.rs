use super::*;
use http::{HeaderMap, HeaderValue};

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

/// The CloudEvents conformance features (HTTP binding), read from ../shared/conformance.
#[test]
fn cloudevents_http_conformance_features() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/conformance/cloudevents-features/http-protocol-binding.feature"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let mut checked = 0;
    for scenario in text.split("Scenario Outline:").skip(1) {
        let request = scenario.split("\"\"\"").nth(1).unwrap();
        let expected_json = scenario.split("\"\"\"").nth(3).unwrap();
        let table: Vec<(String, String)> = scenario
            .split("Then the attributes are:")
            .nth(1)
            .unwrap()
            .split("And the data")
            .next()
            .unwrap()
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                (cells.len() >= 3 && cells[1] != "key")
                    .then(|| (cells[1].to_string(), cells[2].to_string()))
            })
            .collect();
        let examples: Vec<String> = scenario
            .split("Examples:")
            .nth(1)
            .unwrap()
            .lines()
            .filter_map(|l| {
                l.trim()
                    .strip_prefix('|')
                    .map(|c| c.trim_end_matches('|').trim().to_string())
            })
            .skip(1)
            .collect();
        for ct in examples {
            let req = request.replace("<contentType>", &ct);
            let lines: Vec<&str> = req.trim().lines().map(str::trim).collect();
            let blank = lines.iter().skip(1).position(|l| l.is_empty()).unwrap() + 1;
            let mut h = HeaderMap::new();
            for l in &lines[1..blank] {
                let (k, v) = l.split_once(':').unwrap();
                let k =
                    http::HeaderName::from_bytes(k.trim().to_ascii_lowercase().as_bytes()).unwrap();
                h.append(k, HeaderValue::from_str(v.trim()).unwrap());
            }
            let body = Bytes::from(lines[blank + 1..].join("\n"));
            let ct_header = h.get("content-type").and_then(|v| v.to_str().ok());
            let event = match mode(ct_header).unwrap() {
                Mode::Binary => binary(&h, body).unwrap(),
                Mode::Structured => structured(&body).unwrap(),
                Mode::Batch => unreachable!(),
            };
            for (k, v) in &table {
                let want = v.replace("<contentType>", &ct);
                assert_eq!(
                    event.attr_text(k).as_deref(),
                    Some(want.as_str()),
                    "{k} with {ct}"
                );
            }
            let got: serde_json::Value =
                serde_json::from_slice(event.data.as_deref().unwrap()).unwrap();
            let want: serde_json::Value = serde_json::from_str(expected_json).unwrap();
            assert_eq!(got, want);
            checked += 1;
        }
    }
    assert_eq!(checked, 4, "both scenario outlines, two examples each");
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
    let back: cloudevents::Event =
        serde_json::from_str(&crate::format::structured_json(&e)).unwrap();
    assert_eq!(back, sdk);
}
