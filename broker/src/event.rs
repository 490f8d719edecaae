//! Where an event goes in a topic: its partition.
//!
//! The event itself is [`cloudevent::Event`] (re-exported here and at the crate root, so the
//! log's callers name one type).

pub use cloudevent::ext::PARTITION_KEY;
pub use cloudevent::{AttrValue, Event};

/// Picks a partition for a key: a stable FNV-1a hash, so a key always lands on the same partition.
pub fn partition_for_key(key: &str, partitions: u32) -> u32 {
    (fnv1a(key.as_bytes()) % u64::from(partitions.max(1))) as u32
}

/// The 64-bit FNV-1a hash: stable across processes and versions (what partitions and names
/// derived from keys rely on).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_partition_and_keys_spread() {
        assert_eq!(
            partition_for_key("order-7", 8),
            partition_for_key("order-7", 8)
        );
        let used: std::collections::HashSet<u32> = (0..100)
            .map(|i| partition_for_key(&format!("k{i}"), 8))
            .collect();
        assert_eq!(used.len(), 8);
    }
}
