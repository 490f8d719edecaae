//! The tail cache: a partition's most recent events, decoded, in offset order.
//!
//! Every trigger of a broker reads the same fresh events; served from here they are read and
//! decoded once, not once per trigger. The writer pushes each durable batch in offset order;
//! the cache keeps a contiguous run of offsets and forgets the oldest past its byte budget.

use crate::log::Stored;
use std::collections::VecDeque;

pub(super) struct TailCache {
    events: VecDeque<(Stored, usize)>,
    bytes: usize,
    budget: usize,
}

impl TailCache {
    pub(super) fn new(budget: usize) -> Self {
        Self {
            events: VecDeque::new(),
            bytes: 0,
            budget,
        }
    }

    pub(super) fn first_offset(&self) -> Option<u64> {
        self.events.front().map(|(s, _)| s.position.offset)
    }

    /// Adds the next event; a gap (after a restart) starts the run afresh.
    pub(super) fn push(&mut self, stored: Stored, size: usize) {
        if self.budget == 0 {
            return;
        }
        let next = self.events.back().map(|(s, _)| s.position.offset + 1);
        if next.is_some_and(|n| n != stored.position.offset) {
            self.events.clear();
            self.bytes = 0;
        }
        self.bytes += size;
        self.events.push_back((stored, size));
        while self.bytes > self.budget && self.events.len() > 1 {
            if let Some((_, s)) = self.events.pop_front() {
                self.bytes -= s;
            }
        }
    }

    /// Up to `max` events from `offset`, if the cache holds `offset`.
    pub(super) fn read(&self, offset: u64, max: usize) -> Option<Vec<Stored>> {
        self.read_where(offset, max, &|_| true).map(|(got, _)| got)
    }

    /// Scans up to `max` events from `offset` (if the cache holds `offset`) and returns those
    /// `keep` accepts, with the offset after the last one scanned.
    pub(super) fn read_where(
        &self,
        offset: u64,
        max: usize,
        keep: &crate::log::Keep<'_>,
    ) -> Option<(Vec<Stored>, u64)> {
        let first = self.first_offset()?;
        let index = usize::try_from(offset.checked_sub(first)?).ok()?;
        if index >= self.events.len() {
            return None;
        }
        let mut next = offset;
        let mut got = Vec::new();
        for (s, _) in self.events.iter().skip(index).take(max) {
            next = s.position.offset + 1;
            if keep(&s.event) {
                got.push(s.clone());
            }
        }
        Some((got, next))
    }

    /// Forgets events retention removed.
    pub(super) fn trim_below(&mut self, start: u64) {
        while self.first_offset().is_some_and(|o| o < start) {
            if let Some((_, s)) = self.events.pop_front() {
                self.bytes -= s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use crate::log::Position;
    use std::sync::Arc;

    fn stored(offset: u64) -> Stored {
        Stored {
            position: Position {
                partition: 0,
                offset,
            },
            appended_ms: 0,
            event: Arc::new(Event::default()),
        }
    }

    #[test]
    fn keeps_a_contiguous_run_within_budget() {
        let mut c = TailCache::new(300);
        for o in 5..10 {
            c.push(stored(o), 100);
        }
        assert_eq!(c.first_offset(), Some(7), "only 300 bytes kept");
        assert!(c.read(6, 10).is_none(), "evicted");
        let got: Vec<u64> = c
            .read(8, 10)
            .unwrap()
            .iter()
            .map(|s| s.position.offset)
            .collect();
        assert_eq!(got, [8, 9]);
        assert!(c.read(10, 10).is_none(), "not yet appended");
        c.push(stored(20), 100);
        assert_eq!(c.first_offset(), Some(20), "a gap restarts the run");
        c.trim_below(21);
        assert_eq!(c.first_offset(), None);
    }
}
