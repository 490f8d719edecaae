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

    /// The weighted-exponential average at `now_ms` (`metric-aggregation-algorithm:
    /// weighted-exponential`): from the last written second back over the same span as
    /// [`average`](Self::average), each second weighs `α·(1−α)^age`, with
    /// α = max(1 − 0.0001^(1/window seconds), 0.2), so recent seconds count most and one
    /// value held over the whole window averages to itself (less the weight of what the window
    /// has not seen).
    pub fn weighted_average(&self, now_ms: u64) -> Option<f64> {
        let now = now_ms / 1000;
        let (first, last) = (self.first_write?, self.last_write?);
        if now >= last + self.len {
            return Some(0.0);
        }
        let start = first.max((now + 1).saturating_sub(self.len));
        if last < start {
            return Some(0.0);
        }
        let alpha = (1.0 - 0.0001f64.powf(1.0 / self.len as f64)).max(0.2);
        let mut weight = alpha;
        let mut sum = 0.0;
        for second in (start..=last).rev() {
            let v: f64 = self
                .buckets
                .iter()
                .filter(|(s, _)| *s == second)
                .map(|(_, v)| v)
                .sum();
            sum += v * weight;
            weight *= 1.0 - alpha;
        }
        Some(sum)
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
    fn the_weighted_average_favours_recent_seconds() {
        let mut w = Window::new(Duration::from_secs(60)); // α = 0.2
        for s in 0..60 {
            w.record(s * S, 10.0);
        }
        // A steady 10 over the whole window: 10 · (1 − 0.8^60) ≈ 10.
        let steady = w.weighted_average(59 * S).unwrap();
        assert!((steady - 10.0).abs() < 1e-4, "{steady}");
        // A jump in the last second moves it by α of the jump; the linear average by 1/60.
        w.record(60 * S, 70.0);
        let weighted = w.weighted_average(60 * S).unwrap();
        assert!((weighted - (10.0 + 0.2 * 60.0)).abs() < 1e-3, "{weighted}");
        let linear = w.average(60 * S).unwrap();
        assert!((linear - 11.0).abs() < 1e-9, "{linear}");
        // A short window weighs the last second more: 6 s → α = 1 − 0.0001^(1/6) ≈ 0.785.
        let mut p = Window::new(Duration::from_secs(6));
        p.record(0, 0.0);
        p.record(S, 100.0);
        let alpha = 1.0 - 0.0001f64.powf(1.0 / 6.0);
        assert!((p.weighted_average(S).unwrap() - 100.0 * alpha).abs() < 1e-9);
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
