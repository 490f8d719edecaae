//! Which offsets a trigger may commit: the low watermark of settled events, per partition.
//! An event is settled when it is delivered, dead-lettered, filtered out, or handed to the
//! durable retry queue; until then it holds the watermark back, so a crash redelivers it.

use broker::Position;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Default, Debug)]
pub struct Offsets {
    partitions: BTreeMap<u32, Partition>,
}

#[derive(Default, Debug)]
struct Partition {
    /// One past the highest offset polled.
    next: u64,
    pending: BTreeSet<u64>,
    /// The watermark last committed.
    committed: Option<u64>,
}

impl Offsets {
    /// An event was read and is now in flight.
    pub fn polled(&mut self, pos: Position) {
        let p = self.partitions.entry(pos.partition).or_default();
        p.pending.insert(pos.offset);
        p.next = p.next.max(pos.offset + 1);
    }

    /// Reading got to `pos` (the next offset to read): every event before it was either
    /// polled (and is tracked) or needs nothing (filtered out).
    pub fn read_up_to(&mut self, pos: Position) {
        let p = self.partitions.entry(pos.partition).or_default();
        p.next = p.next.max(pos.offset);
    }

    /// An event is settled.
    pub fn settled(&mut self, pos: Position) {
        if let Some(p) = self.partitions.get_mut(&pos.partition) {
            p.pending.remove(&pos.offset);
        }
    }

    /// Events in flight.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.pending.len()).sum()
    }

    /// Positions to commit (the next offset to read, per partition) that moved since the last
    /// successful commit.
    pub fn to_commit(&self) -> Vec<Position> {
        let mut out = Vec::new();
        for (&partition, p) in &self.partitions {
            let mark = p.pending.first().copied().unwrap_or(p.next);
            if p.committed != Some(mark) {
                out.push(Position {
                    partition,
                    offset: mark,
                });
            }
        }
        out
    }

    /// Stops tracking `partitions` (they went to another group member) and returns what to
    /// commit for them: their settled prefix, where it moved since the last commit.
    pub fn release(&mut self, partitions: &[u32]) -> Vec<Position> {
        let mut out = Vec::new();
        for partition in partitions {
            if let Some(p) = self.partitions.remove(partition) {
                let mark = p.pending.first().copied().unwrap_or(p.next);
                if p.committed != Some(mark) {
                    out.push(Position {
                        partition: *partition,
                        offset: mark,
                    });
                }
            }
        }
        out
    }

    /// Records that `positions` were committed.
    pub fn committed(&mut self, positions: &[Position]) {
        for pos in positions {
            if let Some(p) = self.partitions.get_mut(&pos.partition) {
                p.committed = Some(pos.offset);
            }
        }
    }

    /// The watermark per partition (for lag).
    pub fn watermarks(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.partitions
            .iter()
            .map(|(&k, p)| (k, p.pending.first().copied().unwrap_or(p.next)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(partition: u32, offset: u64) -> Position {
        Position { partition, offset }
    }

    #[test]
    fn the_watermark_waits_for_the_oldest_unsettled_event() {
        let mut o = Offsets::default();
        for off in 0..5 {
            o.polled(pos(0, off));
        }
        o.polled(pos(1, 7));
        o.settled(pos(0, 0));
        o.settled(pos(0, 2));
        o.settled(pos(0, 3));
        assert_eq!(o.to_commit(), vec![pos(0, 1), pos(1, 7)]);
        assert_eq!(
            o.to_commit(),
            vec![pos(0, 1), pos(1, 7)],
            "a commit that did not happen is offered again"
        );
        o.committed(&[pos(0, 1), pos(1, 7)]);
        assert_eq!(o.to_commit(), vec![], "nothing moved");
        o.settled(pos(0, 1));
        o.settled(pos(1, 7));
        assert_eq!(o.to_commit(), vec![pos(0, 4), pos(1, 8)]);
        o.committed(&[pos(0, 4), pos(1, 8)]);
        o.settled(pos(0, 4));
        o.read_up_to(pos(0, 6));
        assert_eq!(
            o.to_commit(),
            vec![pos(0, 6)],
            "filtered-out events move the watermark too"
        );
        assert_eq!(o.in_flight(), 0);
    }

    #[test]
    fn a_released_partition_offers_its_settled_prefix_then_is_forgotten() {
        let mut o = Offsets::default();
        for off in 0..3 {
            o.polled(pos(0, off));
            o.polled(pos(1, off));
        }
        o.settled(pos(1, 0));
        o.settled(pos(1, 1));
        assert_eq!(o.release(&[1]), vec![pos(1, 2)]);
        // Its last event finishes after it went to another member: nothing more to commit.
        o.settled(pos(1, 2));
        assert_eq!(o.to_commit(), vec![pos(0, 0)]);
        assert_eq!(o.in_flight(), 3);
        assert_eq!(o.release(&[1]), vec![], "already released");
    }
}
