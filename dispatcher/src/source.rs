//! A KafkaSource's records as CloudEvents (KS-02..KS-05):
//! - a record that is a CloudEvent already passes through: binary mode (`ce_*` headers) or
//!   structured mode (`content-type: application/cloudevents+json`);
//! - any other record is wrapped: `id` `partition:<p>/offset:<o>`, `type`
//!   `dev.knative.kafka.event`, `source` `/apis/v1/namespaces/{ns}/kafkasources/{name}#{topic}`,
//!   `subject` `partition:<p>#<o>`, `time` the record's timestamp, `datacontenttype` its
//!   `content-type` header, the value as data, the key as extensions `key` and `partitionkey`
//!   (typed by the label `kafkasources.sources.knative.dev/key-type`), and every other header
//!   `H` as extension `kafkaheader<h>` (lower-cased, only `[a-z0-9]` kept);
//! - then the source's `ceOverrides.extensions` are set on every event.

use base64::Engine as _;
use broker::kafka::{Decode, RawRecord};
use broker::{AttrValue, Event};
use bytes::Bytes;
use std::sync::Arc;

/// The type of a wrapped event.
pub const KAFKA_EVENT_TYPE: &str = "dev.knative.kafka.event";
/// The label that says how record keys are typed.
pub const KEY_TYPE_LABEL: &str = "kafkasources.sources.knative.dev/key-type";

/// How a record's key becomes the `key` extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    /// UTF-8 text (the default).
    String,
    /// A big-endian integer of 4 or 8 bytes (Kafka's Integer/Long serializers).
    Int,
    /// A big-endian IEEE float of 4 or 8 bytes.
    Float,
    /// Any bytes, as base64.
    ByteArray,
}

impl KeyType {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "string" => Some(Self::String),
            "int" => Some(Self::Int),
            "float" => Some(Self::Float),
            "byte-array" => Some(Self::ByteArray),
            _ => None,
        }
    }
}

/// Which source the records come from, and what it sets on each event.
#[derive(Clone, Debug)]
pub struct SourceInfo {
    pub namespace: String,
    pub name: String,
    pub key_type: KeyType,
    /// `ceOverrides.extensions`.
    pub overrides: Vec<(String, String)>,
}

/// The decoder a KafkaSource's log reads its topics with.
pub fn decoder(info: SourceInfo) -> Decode {
    Arc::new(move |record: &RawRecord<'_>| Some(to_event(&info, record)))
}

/// The event a record stands for.
pub fn to_event(info: &SourceInfo, record: &RawRecord<'_>) -> Event {
    let mut event = passthrough(record).unwrap_or_else(|| wrap(info, record));
    for (name, value) in &info.overrides {
        event.set_attr(name, AttrValue::String(value.clone()));
    }
    event
}

fn content_type<'a>(record: &RawRecord<'a>) -> Option<&'a str> {
    record
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .and_then(|(_, v)| std::str::from_utf8((*v)?).ok())
}

/// KS-02: the record is a valid CloudEvent already (binary or structured mode).
fn passthrough(record: &RawRecord<'_>) -> Option<Event> {
    cloudevent::kafka::decode(record.headers.iter().copied(), record.value)
        .ok()
        .flatten()
}

/// KS-03..KS-05: any other record.
fn wrap(info: &SourceInfo, record: &RawRecord<'_>) -> Event {
    let (p, o) = (record.partition, record.offset);
    let time = record
        .timestamp_ms
        .and_then(chrono::DateTime::from_timestamp_millis)
        .unwrap_or_else(chrono::Utc::now)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let s = |v: String| AttrValue::String(v);
    let mut attributes = vec![
        ("specversion".to_string(), s("1.0".into())),
        ("id".to_string(), s(format!("partition:{p}/offset:{o}"))),
        ("type".to_string(), s(KAFKA_EVENT_TYPE.into())),
        (
            "source".to_string(),
            s(format!(
                "/apis/v1/namespaces/{}/kafkasources/{}#{}",
                info.namespace, info.name, record.topic
            )),
        ),
        ("subject".to_string(), s(format!("partition:{p}#{o}"))),
        ("time".to_string(), s(time)),
    ];
    if let Some(ct) = content_type(record) {
        attributes.push(("datacontenttype".to_string(), s(ct.to_ascii_lowercase())));
    }
    if let Some(key) = record.key {
        let typed = typed_key(info.key_type, key);
        attributes.push(("partitionkey".to_string(), s(typed.to_text().into_owned())));
        attributes.push(("key".to_string(), typed));
    }
    for (name, value) in &record.headers {
        if name.eq_ignore_ascii_case("content-type") {
            continue;
        }
        let ext: String = name
            .to_ascii_lowercase()
            .chars()
            .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            .collect();
        let text = value.map(String::from_utf8_lossy).unwrap_or_default();
        attributes.push((format!("kafkaheader{ext}"), s(text.into_owned())));
    }
    Event {
        attributes,
        data: record
            .value
            .filter(|v| !v.is_empty())
            .map(Bytes::copy_from_slice),
    }
}

/// The key as the label says; bytes that do not fit the type are kept as base64.
fn typed_key(kind: KeyType, key: &[u8]) -> AttrValue {
    let base64 = || AttrValue::String(base64::engine::general_purpose::STANDARD.encode(key));
    match kind {
        KeyType::String => AttrValue::String(String::from_utf8_lossy(key).into_owned()),
        KeyType::ByteArray => base64(),
        KeyType::Int => match key.len() {
            4 => <[u8; 4]>::try_from(key).map_or_else(
                |_| base64(),
                |b| AttrValue::Integer(i64::from(i32::from_be_bytes(b))),
            ),
            // A CloudEvents integer is 32-bit: a larger long is kept as its decimal text.
            8 => <[u8; 8]>::try_from(key).map_or_else(
                |_| base64(),
                |b| {
                    let n = i64::from_be_bytes(b);
                    if i32::try_from(n).is_ok() {
                        AttrValue::Integer(n)
                    } else {
                        AttrValue::String(n.to_string())
                    }
                },
            ),
            _ => base64(),
        },
        KeyType::Float => match key.len() {
            4 => <[u8; 4]>::try_from(key).map_or_else(
                |_| base64(),
                |b| AttrValue::String(f32::from_be_bytes(b).to_string()),
            ),
            8 => <[u8; 8]>::try_from(key).map_or_else(
                |_| base64(),
                |b| AttrValue::String(f64::from_be_bytes(b).to_string()),
            ),
            _ => base64(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> SourceInfo {
        SourceInfo {
            namespace: "ns".into(),
            name: "src".into(),
            key_type: KeyType::String,
            overrides: Vec::new(),
        }
    }

    fn record<'a>(
        key: Option<&'a [u8]>,
        headers: Vec<(&'a str, Option<&'a [u8]>)>,
        value: &'a [u8],
    ) -> RawRecord<'a> {
        RawRecord {
            topic: "orders",
            partition: 2,
            offset: 17,
            timestamp_ms: Some(1_700_000_000_123),
            key,
            headers,
            value: Some(value),
        }
    }

    fn text(e: &Event, name: &str) -> Option<String> {
        e.attr_text(name).map(|t| t.into_owned())
    }

    #[test]
    fn a_plain_record_is_wrapped() {
        let r = record(
            Some(b"k-1"),
            vec![
                ("Content-Type", Some(b"Application/JSON")),
                ("X-Trace_Id.2", Some(b"abc")),
                ("empty", None),
            ],
            b"{\"n\":1}",
        );
        let e = to_event(&info(), &r);
        assert_eq!(text(&e, "id").as_deref(), Some("partition:2/offset:17"));
        assert_eq!(text(&e, "type").as_deref(), Some(KAFKA_EVENT_TYPE));
        assert_eq!(
            text(&e, "source").as_deref(),
            Some("/apis/v1/namespaces/ns/kafkasources/src#orders")
        );
        assert_eq!(text(&e, "subject").as_deref(), Some("partition:2#17"));
        assert_eq!(
            text(&e, "time").as_deref(),
            Some("2023-11-14T22:13:20.123Z")
        );
        assert_eq!(
            text(&e, "datacontenttype").as_deref(),
            Some("application/json")
        );
        assert_eq!(text(&e, "key").as_deref(), Some("k-1"));
        assert_eq!(text(&e, "partitionkey").as_deref(), Some("k-1"));
        assert_eq!(text(&e, "kafkaheaderxtraceid2").as_deref(), Some("abc"));
        assert_eq!(text(&e, "kafkaheaderempty").as_deref(), Some(""));
        assert!(e.attr("kafkaheadercontenttype").is_none());
        assert_eq!(e.data.as_deref(), Some(&b"{\"n\":1}"[..]));
        cloudevent::validate(&e).unwrap();
    }

    #[test]
    fn cloudevents_pass_through_in_both_modes() {
        let binary = record(
            Some(b"k"),
            vec![
                ("ce_specversion", Some(b"1.0")),
                ("ce_id", Some(b"e-1")),
                ("ce_source", Some(b"/producer")),
                ("ce_type", Some(b"order.created")),
                ("content-type", Some(b"text/plain")),
            ],
            b"hello",
        );
        let e = to_event(&info(), &binary);
        assert_eq!(text(&e, "id").as_deref(), Some("e-1"));
        assert_eq!(text(&e, "source").as_deref(), Some("/producer"));
        assert_eq!(text(&e, "datacontenttype").as_deref(), Some("text/plain"));
        assert!(e.attr("key").is_none(), "nothing added to a CloudEvent");

        let body = br#"{"specversion":"1.0","id":"e-2","source":"/s","type":"t","data":{"a":1}}"#;
        let structured = record(
            None,
            vec![(
                "content-type",
                Some(b"application/cloudevents+json; charset=utf-8"),
            )],
            body,
        );
        let e = to_event(&info(), &structured);
        assert_eq!(text(&e, "id").as_deref(), Some("e-2"));
        assert_eq!(e.data.as_deref(), Some(&b"{\"a\":1}"[..]));

        // ce_ headers that do not make a valid event: wrapped, nothing lost.
        let broken = record(None, vec![("ce_specversion", Some(b"1.0"))], b"x");
        let e = to_event(&info(), &broken);
        assert_eq!(text(&e, "type").as_deref(), Some(KAFKA_EVENT_TYPE));
        assert_eq!(text(&e, "kafkaheadercespecversion").as_deref(), Some("1.0"));
    }

    #[test]
    fn keys_are_typed_by_the_label_and_overrides_apply() {
        let mut i = info();
        i.overrides = vec![("team".into(), "blue".into())];
        let int = 42i32.to_be_bytes();
        i.key_type = KeyType::Int;
        let e = to_event(&i, &record(Some(&int), vec![], b""));
        assert_eq!(e.attr("key"), Some(&AttrValue::Integer(42)));
        assert_eq!(text(&e, "partitionkey").as_deref(), Some("42"));
        assert_eq!(text(&e, "team").as_deref(), Some("blue"));
        assert!(e.data.is_none());

        let float = 1.5f64.to_be_bytes();
        i.key_type = KeyType::Float;
        let e = to_event(&i, &record(Some(&float), vec![], b""));
        assert_eq!(text(&e, "key").as_deref(), Some("1.5"));

        i.key_type = KeyType::ByteArray;
        let e = to_event(&i, &record(Some(&[0xff, 0x00]), vec![], b""));
        assert_eq!(text(&e, "key").as_deref(), Some("/wA="));

        i.key_type = KeyType::Int;
        let e = to_event(&i, &record(Some(b"abc"), vec![], b""));
        assert_eq!(
            text(&e, "key").as_deref(),
            Some("YWJj"),
            "not an int: base64"
        );
    }
}
