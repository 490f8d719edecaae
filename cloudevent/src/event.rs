//! The CloudEvent as Ferry keeps it.
//!
//! Attributes are kept exactly as they arrived (names, string forms, JSON types of extensions) and
//! the data as the exact bytes received, so a subscriber gets back what the producer sent (CE-07).
//! The cloudevents-sdk `Event` normalises `time` to UTC and `dataschema` through `Url`, which would
//! change what subscribers see; that is why the log keeps its own record type.

use crate::ext::PARTITION_KEY;
use bytes::Bytes;

/// The value of one context attribute or extension, with its JSON type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttrValue {
    String(String),
    Integer(i64),
    Boolean(bool),
}

impl AttrValue {
    /// The canonical string form (what a binary-mode header carries).
    pub fn to_text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            AttrValue::String(s) => std::borrow::Cow::Borrowed(s),
            AttrValue::Integer(i) => std::borrow::Cow::Owned(i.to_string()),
            AttrValue::Boolean(b) => std::borrow::Cow::Borrowed(if *b { "true" } else { "false" }),
        }
    }
}

/// One CloudEvent: its context attributes (including `specversion`, `id`, `source`, `type` and any
/// extensions), in the order received, and its data.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Event {
    pub attributes: Vec<(String, AttrValue)>,
    pub data: Option<Bytes>,
}

impl Event {
    /// The value of attribute `name`, if present.
    pub fn attr(&self, name: &str) -> Option<&AttrValue> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// The string form of attribute `name`, if present.
    pub fn attr_text(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        self.attr(name).map(AttrValue::to_text)
    }

    /// Sets attribute `name`, replacing an existing value in place or appending it.
    pub fn set_attr(&mut self, name: &str, value: AttrValue) {
        match self.attributes.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value,
            None => self.attributes.push((name.to_string(), value)),
        }
    }

    /// Removes attribute `name`, returning its value.
    pub fn remove_attr(&mut self, name: &str) -> Option<AttrValue> {
        let i = self.attributes.iter().position(|(n, _)| n == name)?;
        Some(self.attributes.remove(i).1)
    }

    /// The partition key (the `partitionkey` extension), if any.
    pub fn partition_key(&self) -> Option<std::borrow::Cow<'_, str>> {
        self.attr_text(PARTITION_KEY)
    }

    /// Size counted against the max event size: attribute names and values plus data.
    pub fn size(&self) -> usize {
        let attrs: usize = self
            .attributes
            .iter()
            .map(|(n, v)| n.len() + v.to_text().len())
            .sum();
        attrs + self.data.as_ref().map_or(0, Bytes::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_attr_replaces_in_place() {
        let mut e = Event::default();
        e.set_attr("id", AttrValue::String("1".into()));
        e.set_attr("type", AttrValue::String("t".into()));
        e.set_attr("id", AttrValue::String("2".into()));
        assert_eq!(
            e.attributes[0],
            ("id".into(), AttrValue::String("2".into()))
        );
        assert_eq!(e.remove_attr("type"), Some(AttrValue::String("t".into())));
        assert_eq!(e.attributes.len(), 1);
    }
}
