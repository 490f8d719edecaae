//! Events as Kafka records: [`cloudevent::kafka`]'s binary mode in rdkafka's header types.

use crate::event::Event;
use rdkafka::message::{Header, Headers, OwnedHeaders};

pub use cloudevent::kafka::TYPES_HEADER;

/// The event's binary-mode headers.
pub fn headers(event: &Event) -> OwnedHeaders {
    // `insert` takes the headers by value; the Option lets the closure move them through.
    let mut h = Some(OwnedHeaders::new_with_capacity(event.attributes.len() + 1));
    cloudevent::kafka::binary_headers(event, |key, value| {
        h = h.take().map(|h| {
            h.insert(Header {
                key,
                value: Some(value),
            })
        });
    });
    h.unwrap_or_default()
}

/// The binary-mode event in a record's headers and value; `None` if it is not a CloudEvent.
pub fn event<H: Headers>(headers: Option<&H>, value: Option<&[u8]>) -> Option<Event> {
    cloudevent::kafka::decode_binary(headers?.iter().map(|h| (h.key, h.value)), value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::AttrValue;
    use bytes::Bytes;

    #[test]
    fn round_trips_through_rdkafka_headers() {
        let e = Event {
            attributes: vec![
                ("specversion".into(), AttrValue::String("1.0".into())),
                ("id".into(), AttrValue::String("1".into())),
                (
                    "datacontenttype".into(),
                    AttrValue::String("application/json".into()),
                ),
                ("n".into(), AttrValue::Integer(-4)),
            ],
            data: Some(Bytes::from_static(b"{}")),
        };
        let h = headers(&e);
        assert_eq!(event(Some(&h), Some(b"{}")), Some(e));
        assert_eq!(event(Some(&OwnedHeaders::new()), Some(b"x")), None);
    }
}
