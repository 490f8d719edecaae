//! The one clock of Ferry's delivery and control loops: tokio's. Due times that must survive a
//! restart (retries, dead letters) are wall-clock milliseconds, but they move with tokio's
//! clock from an anchor taken on first use, so under tokio's paused time (`start_paused`)
//! backoff, windows and timeouts all run in virtual time and a test waits for none of them.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// The wall clock and tokio's clock at one moment.
struct Anchor {
    wall_ms: u64,
    at: Instant,
}

static ANCHOR: OnceLock<Anchor> = OnceLock::new();

/// Milliseconds since the Unix epoch, by tokio's clock.
pub fn now_ms() -> u64 {
    let anchor = ANCHOR.get_or_init(|| Anchor {
        wall_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        at: Instant::now(),
    });
    anchor.wall_ms
        + Instant::now()
            .saturating_duration_since(anchor.at)
            .as_millis() as u64
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
        assert!(
            (3_600_000..3_600_050).contains(&(after - before)),
            "{before} {after}"
        );
    }
}
