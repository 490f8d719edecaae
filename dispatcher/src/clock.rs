//! The one clock of Ferry's delivery and control loops. Due times that must survive a restart
//! (retries, dead letters) and ages of events are wall-clock milliseconds: the system clock,
//! plus how far tokio's clock is from the real monotonic clock. That offset is zero in a
//! running server (tokio's clock is the real one), so times agree with every other node's and
//! with events' stamps; under tokio's paused time (`start_paused`) it is the time advanced, so
//! backoff, windows and timeouts run in virtual time and a test waits for none of them.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, by tokio's clock.
pub fn now_ms() -> u64 {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i128);
    let virtual_now = tokio::time::Instant::now().into_std();
    let real_now = std::time::Instant::now();
    let offset = if virtual_now >= real_now {
        (virtual_now - real_now).as_micros() as i128
    } else {
        -((real_now - virtual_now).as_micros() as i128)
    };
    u64::try_from((wall + offset) / 1000).unwrap_or(0)
}

/// Now by tokio's clock, as a UTC time.
pub fn now_utc() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(now_ms() as i64).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn follows_tokio_time() {
        let before = now_ms();
        tokio::time::advance(Duration::from_secs(3600)).await;
        let after = now_ms();
        // The two clocks are read a few microseconds apart: within a millisecond.
        let elapsed = after - before;
        assert!(
            (3_599_999..3_600_050).contains(&elapsed),
            "{before} {after}"
        );
    }
}
