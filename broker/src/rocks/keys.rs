//! Key layout of the RocksDB engine.
//!
//! Column family `events`: `topic id (u64 BE) | partition (u32 BE) | offset (u64 BE)`, so one
//! partition's events are contiguous and in offset order, and a whole topic is one key range.
//! Column family `meta`:
//! - `t` + topic name (`ns/name`): the topic's id and layout (JSON, [`TopicMeta`]);
//! - `s` + id + partition: the partition's start offset (moves forward with retention);
//! - `b` + id + partition: the bytes the partition holds;
//! - `c` + id + group + `0x00` + partition: a consumer group's committed offset;
//! - `n`: the next topic id. Ids are never reused, so a re-created broker starts empty.

use serde::{Deserialize, Serialize};

pub const EVENTS: &str = "events";
pub const META: &str = "meta";
pub const NEXT_ID: &[u8] = b"n";

/// What `meta` keeps of a topic.
#[derive(Serialize, Deserialize)]
pub struct TopicMeta {
    pub id: u64,
    pub partitions: u32,
    pub retention_age_ms: Option<u64>,
    pub retention_bytes: Option<u64>,
}

pub fn event(id: u64, partition: u32, offset: u64) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..8].copy_from_slice(&id.to_be_bytes());
    k[8..12].copy_from_slice(&partition.to_be_bytes());
    k[12..].copy_from_slice(&offset.to_be_bytes());
    k
}

/// The offset in an event key.
pub fn event_offset(key: &[u8]) -> Option<u64> {
    let b: [u8; 8] = key.get(12..20)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// The first key of a partition and the first key after it.
pub fn partition_range(id: u64, partition: u32) -> ([u8; 20], [u8; 20]) {
    (event(id, partition, 0), event(id, partition, u64::MAX))
}

/// The first event key of topic `id` and the first key after the topic.
pub fn topic_range(id: u64) -> (Vec<u8>, Vec<u8>) {
    (id.to_be_bytes().to_vec(), (id + 1).to_be_bytes().to_vec())
}

pub fn topic(name: &str) -> Vec<u8> {
    let mut k = vec![b't'];
    k.extend_from_slice(name.as_bytes());
    k
}

fn tagged(tag: u8, id: u64, partition: u32) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[0] = tag;
    k[1..9].copy_from_slice(&id.to_be_bytes());
    k[9..].copy_from_slice(&partition.to_be_bytes());
    k
}

pub fn start(id: u64, partition: u32) -> [u8; 13] {
    tagged(b's', id, partition)
}

pub fn bytes(id: u64, partition: u32) -> [u8; 13] {
    tagged(b'b', id, partition)
}

pub fn committed(id: u64, group: &str, partition: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(14 + group.len());
    k.push(b'c');
    k.extend_from_slice(&id.to_be_bytes());
    k.extend_from_slice(group.as_bytes());
    k.push(0);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// Every `meta` key with `tag` that belongs to topic `id`: `[tag|id, tag|id+1)`.
pub fn meta_range(tag: u8, id: u64) -> (Vec<u8>, Vec<u8>) {
    let mut a = vec![tag];
    a.extend_from_slice(&id.to_be_bytes());
    let mut b = vec![tag];
    b.extend_from_slice(&(id + 1).to_be_bytes());
    (a, b)
}

pub fn u64_value(v: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(v.try_into().ok()?))
}
