//! A small builder for the events Ferry emits itself (resource changes, PingSource ticks,
//! serving statistics, pipeline transitions): the required attributes filled in, the result
//! validated.

use crate::{validate, AttrValue, Event, InvalidEvent};
use bytes::Bytes;

impl From<&str> for AttrValue {
    fn from(s: &str) -> Self {
        AttrValue::String(s.to_string())
    }
}

impl From<String> for AttrValue {
    fn from(s: String) -> Self {
        AttrValue::String(s)
    }
}

impl From<i64> for AttrValue {
    fn from(i: i64) -> Self {
        AttrValue::Integer(i)
    }
}

impl From<bool> for AttrValue {
    fn from(b: bool) -> Self {
        AttrValue::Boolean(b)
    }
}

/// Builds an event: `specversion` 1.0, the given `type` and `source`, a fresh UUID as `id` and
/// the current time as `time` unless set.
#[derive(Clone, Debug)]
pub struct EventBuilder {
    event: Event,
}

impl EventBuilder {
    pub fn new(ty: &str, source: &str) -> Self {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        Self {
            event: Event {
                attributes: vec![
                    ("specversion".into(), "1.0".into()),
                    ("id".into(), uuid::Uuid::new_v4().to_string().into()),
                    ("source".into(), source.into()),
                    ("type".into(), ty.into()),
                    ("time".into(), now.into()),
                ],
                data: None,
            },
        }
    }

    /// Any attribute or extension, replacing one of the same name.
    pub fn attr(mut self, name: &str, value: impl Into<AttrValue>) -> Self {
        self.event.set_attr(name, value.into());
        self
    }

    pub fn id(self, id: impl Into<String>) -> Self {
        self.attr("id", id.into())
    }

    pub fn subject(self, subject: impl Into<String>) -> Self {
        self.attr("subject", subject.into())
    }

    pub fn time(self, time: chrono::DateTime<chrono::Utc>) -> Self {
        self.attr(
            "time",
            time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        )
    }

    /// Data with its content type.
    pub fn data(self, content_type: &str, data: impl Into<Bytes>) -> Self {
        let mut b = self.attr("datacontenttype", content_type);
        b.event.data = Some(data.into());
        b
    }

    /// Data without a content type.
    pub fn bytes(mut self, data: impl Into<Bytes>) -> Self {
        self.event.data = Some(data.into());
        self
    }

    /// JSON data (`application/json`).
    pub fn json(self, value: &serde_json::Value) -> Self {
        self.data("application/json", value.to_string())
    }

    /// The event, validated.
    pub fn build(self) -> Result<Event, InvalidEvent> {
        validate(&self.event)?;
        Ok(self.event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_valid_event_with_defaults() {
        let e = EventBuilder::new("dev.ferry.test", "/ferry/test")
            .subject("ns/name")
            .attr("partitionkey", "k")
            .json(&serde_json::json!({"a": 1}))
            .build()
            .unwrap();
        assert_eq!(e.attr_text("type").as_deref(), Some("dev.ferry.test"));
        assert!(uuid::Uuid::parse_str(&e.attr_text("id").unwrap()).is_ok());
        assert!(chrono::DateTime::parse_from_rfc3339(&e.attr_text("time").unwrap()).is_ok());
        assert_eq!(e.data.as_deref(), Some(&br#"{"a":1}"#[..]));
        assert_eq!(e.partition_key().as_deref(), Some("k"));
    }

    #[test]
    fn an_invalid_event_is_refused() {
        let err = EventBuilder::new("", "/s").build().unwrap_err();
        assert!(err.to_string().contains("'type'"), "{err}");
    }
}
