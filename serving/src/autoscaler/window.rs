//! Per-second buckets averaged over a window, as Knative's bucketing does (§1.3.4): values
//! recorded in the same second add up; the average is the sum over the buckets from the first
//! write (or the window's start) to the last write, divided by their number — gaps between
//! writes count as 0, the seconds after the last write are left out — and a window written
//! to longer ago than its length averages 0 and starts afresh.

use std::collections::VecDeque;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Window {
    /// Length in whole seconds (at least 1).
    len: u64,
    /// (second, sum) of the seconds written, oldest first.
    buckets: VecDeque<(u64, f64)>,
    first_write: Option<u64>,
    last_write: Option<u64>,
}

impl Window {
    pub fn new(len: Duration) -> Self {
        Self {
            len: len.as_secs().max(1),
            buckets: VecDeque::new(),
            first_write: None,
            last_write: None,
        }
    }

    /// Adds `value` to the bucket of the second `now_ms` falls in.
    pub fn record(&mut self, now_ms: u64, value: f64) {
        let sec = now_ms / 1000;
        if self.last_write.is_some_and(|last| sec >= last + self.len) {
            self.buckets.clear();
            self.first_write = None;
        }
        self.first_write.get_or_insert(sec);
        self.last_write = Some(self.last_write.map_or(sec, |l| l.max(sec)));
        match self.buckets.iter_mut().rev().find(|(s, _)| *s == sec) {
            Some((_, sum)) => *sum += value,
            None => {
                let at = self
                    .buckets
                    .iter()
                    .rposition(|(s, _)| *s < sec)
                    .map_or(0, |i| i + 1);
                self.buckets.insert(at, (sec, value));
            }
        }
        let oldest = sec.saturating_sub(self.len - 1);
        while self.buckets.front().is_some_and(|(s, _)| *s < oldest) {
            self.buckets.pop_front();
        }
    }

    /// The average at `now_ms`; `None` when nothing was ever recorded (no data).
    pub fn average(&self, now_ms: u64) -> Option<f64> {
        let now = now_ms / 1000;
        let (first, last) = (self.first_write?, self.last_write?);
        if now >= last + self.len {
            return Some(0.0);
        }
        let start = first.max((now + 1).saturating_sub(self.len));
        if last < start {
            return Some(0.0);
        }
        let n = (last - start + 1) as f64;
        let sum: f64 = self
            .buckets
            .iter()
            .filter(|(s, _)| (start..=last).contains(s))
            .map(|(_, v)| v)
            .sum();
        Some(sum / n)
    }

    /// Whether anything was ever recorded.
    pub fn has_data(&self) -> bool {
        self.first_write.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1000;

    #[test]
    fn no_data_until_written() {
        let w = Window::new(Duration::from_secs(60));
        assert_eq!(w.average(5 * S), None);
        assert!(!w.has_data());
    }

    #[test]
    fn a_young_window_averages_what_it_has_seen() {
        let mut w = Window::new(Duration::from_secs(60));
        w.record(100 * S, 10.0);
        w.record(101 * S, 20.0);
        w.record(101 * S + 500, 10.0); // the same second: added
        assert_eq!(w.average(101 * S), Some(20.0)); // (10 + 30) / 2
                                                    // Gaps count as 0, trailing seconds after the last write do not.
        w.record(104 * S, 0.0);
        assert_eq!(w.average(110 * S), Some(40.0 / 5.0));
    }

    #[test]
    fn a_full_window_is_capped_at_its_length() {
        let mut w = Window::new(Duration::from_secs(6));
        for s in 0..20 {
            w.record(s * S, s as f64);
        }
        // Seconds 14..=19.
        assert_eq!(w.average(19 * S), Some((14..20).sum::<u64>() as f64 / 6.0));
    }

    #[test]
    fn silence_longer_than_the_window_means_zero_and_a_fresh_start() {
        let mut w = Window::new(Duration::from_secs(6));
        w.record(0, 12.0);
        assert_eq!(w.average(6 * S), Some(0.0));
        w.record(10 * S, 3.0);
        assert_eq!(w.average(10 * S), Some(3.0), "the old write is gone");
    }
}
