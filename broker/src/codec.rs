//! Compact binary encoding of a stored record.
//!
//! ```text
//! u8 version (1) | u64 appended_ms | u16 attribute count
//!   per attribute: u8 tag (0 string, 1 integer, 2 boolean) | u16 name len | name | value
//!     string: u32 len | bytes   integer: i64   boolean: u8
//! u8 has_data | (u32 len | bytes)
//! ```
//! All integers little-endian. Decoding checks every length, so a corrupt record is an error,
//! never a panic.

use crate::event::{AttrValue, Event};
use bytes::{Buf, BufMut, Bytes, BytesMut};

const VERSION: u8 = 1;

/// A record that cannot be decoded.
#[derive(Debug, thiserror::Error)]
#[error("corrupt record: {0}")]
pub struct CorruptRecord(&'static str);

/// Encodes `event`, appended at `appended_ms` (Unix milliseconds).
pub fn encode(event: &Event, appended_ms: u64) -> Bytes {
    let mut buf = BytesMut::with_capacity(16 + event.size() + 8 * event.attributes.len());
    buf.put_u8(VERSION);
    buf.put_u64_le(appended_ms);
    buf.put_u16_le(event.attributes.len().min(u16::MAX as usize) as u16);
    for (name, value) in event.attributes.iter().take(u16::MAX as usize) {
        let tag = match value {
            AttrValue::String(_) => 0,
            AttrValue::Integer(_) => 1,
            AttrValue::Boolean(_) => 2,
        };
        buf.put_u8(tag);
        buf.put_u16_le(name.len() as u16);
        buf.put_slice(name.as_bytes());
        match value {
            AttrValue::String(s) => {
                buf.put_u32_le(s.len() as u32);
                buf.put_slice(s.as_bytes());
            }
            AttrValue::Integer(i) => buf.put_i64_le(*i),
            AttrValue::Boolean(b) => buf.put_u8(u8::from(*b)),
        }
    }
    match &event.data {
        Some(d) => {
            buf.put_u8(1);
            buf.put_u32_le(d.len() as u32);
            buf.put_slice(d);
        }
        None => buf.put_u8(0),
    }
    buf.freeze()
}

/// Reads only the append time of an encoded record (retention needs nothing else).
pub fn appended_ms(mut record: &[u8]) -> Result<u64, CorruptRecord> {
    need(record, 9, "header")?;
    if record.get_u8() != VERSION {
        return Err(CorruptRecord("unknown version"));
    }
    Ok(record.get_u64_le())
}

/// Decodes a record, returning the event and its append time.
pub fn decode(record: Bytes) -> Result<(Event, u64), CorruptRecord> {
    let mut r = record;
    need(&r, 11, "header")?;
    if r.get_u8() != VERSION {
        return Err(CorruptRecord("unknown version"));
    }
    let appended = r.get_u64_le();
    let count = r.get_u16_le() as usize;
    let mut attributes = Vec::with_capacity(count);
    for _ in 0..count {
        need(&r, 3, "attribute header")?;
        let tag = r.get_u8();
        let name_len = r.get_u16_le() as usize;
        let name = string(&mut r, name_len)?;
        let value = match tag {
            0 => {
                need(&r, 4, "string length")?;
                let len = r.get_u32_le() as usize;
                AttrValue::String(string(&mut r, len)?)
            }
            1 => {
                need(&r, 8, "integer")?;
                AttrValue::Integer(r.get_i64_le())
            }
            2 => {
                need(&r, 1, "boolean")?;
                AttrValue::Boolean(r.get_u8() != 0)
            }
            _ => return Err(CorruptRecord("unknown attribute tag")),
        };
        attributes.push((name, value));
    }
    need(&r, 1, "data flag")?;
    let data = if r.get_u8() == 1 {
        need(&r, 4, "data length")?;
        let len = r.get_u32_le() as usize;
        need(&r, len, "data")?;
        Some(r.split_to(len))
    } else {
        None
    };
    Ok((Event { attributes, data }, appended))
}

fn need(r: &[u8], n: usize, what: &'static str) -> Result<(), CorruptRecord> {
    if r.len() < n {
        Err(CorruptRecord(what))
    } else {
        Ok(())
    }
}

fn string(r: &mut Bytes, len: usize) -> Result<String, CorruptRecord> {
    need(r, len, "string")?;
    let b = r.split_to(len);
    String::from_utf8(b.to_vec()).map_err(|_| CorruptRecord("string is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = AttrValue> {
        prop_oneof![
            ".*".prop_map(AttrValue::String),
            any::<i64>().prop_map(AttrValue::Integer),
            any::<bool>().prop_map(AttrValue::Boolean),
        ]
    }

    proptest! {
        #[test]
        fn round_trips(
            attributes in proptest::collection::vec(("[a-z0-9]{1,20}", value()), 0..12),
            data in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..2048)),
            at in any::<u64>(),
        ) {
            let event = Event { attributes, data: data.map(Bytes::from) };
            let encoded = encode(&event, at);
            prop_assert_eq!(appended_ms(&encoded).unwrap(), at);
            let (back, back_at) = decode(encoded).unwrap();
            prop_assert_eq!(back, event);
            prop_assert_eq!(back_at, at);
        }

        #[test]
        fn truncated_records_are_errors_not_panics(cut in 0usize..64) {
            let event = Event {
                attributes: vec![("id".into(), AttrValue::String("abc".into())), ("n".into(), AttrValue::Integer(7))],
                data: Some(Bytes::from_static(b"{\"x\":1}")),
            };
            let encoded = encode(&event, 5);
            if cut < encoded.len() {
                prop_assert!(decode(encoded.slice(..cut)).is_err());
            }
        }
    }
}
