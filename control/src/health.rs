//! What `/readyz` and `/healthz` report beyond shutdown.
//!
//! - Ready: the event log and the delivery store take writes. A write that failed in storage
//!   (a full disk, Kafka unreachable) turns the node unready, with the reason, until a write
//!   succeeds; while unready, [`Health::watch`] tries a small write every second, so the node
//!   turns ready again on its own once storage is back, without traffic.
//! - Healthy: the runtime runs. A heartbeat task of its own ticks every [`BEAT`]; `/healthz`
//!   fails once it has not ticked for [`WEDGED`] (worker threads blocked).

use crate::plane::ControlPlane;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub const BEAT: Duration = Duration::from_secs(1);
pub const WEDGED: Duration = Duration::from_secs(10);
/// Longest a storage probe may take before it counts as failed.
pub const PROBE: Duration = Duration::from_secs(5);

pub struct Health {
    started: Instant,
    /// Milliseconds after `started` of the last heartbeat.
    beat_ms: AtomicU64,
    /// [`BEAT`] and [`WEDGED`] (shorter in tests).
    beat: Duration,
    wedged: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Self::with_timing(BEAT, WEDGED)
    }
}

impl Health {
    fn with_timing(beat: Duration, wedged: Duration) -> Self {
        Self {
            started: Instant::now(),
            beat_ms: AtomicU64::new(0),
            beat,
            wedged,
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Why the node should not get traffic now, if it should not.
    pub fn unready(&self, control: &ControlPlane) -> Option<String> {
        let mut reasons = Vec::new();
        if let Some(r) = control.publisher().failing() {
            reasons.push(format!("the event log refuses writes: {r}"));
        }
        if let Some(r) = control.dispatcher().store_failing() {
            reasons.push(format!("the delivery store refuses writes: {r}"));
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    /// Why the process is not healthy, if it is not: its runtime has stopped running tasks.
    pub fn unhealthy(&self) -> Option<String> {
        let since = self
            .now_ms()
            .saturating_sub(self.beat_ms.load(Ordering::Acquire));
        (since > self.wedged.as_millis() as u64).then(|| {
            format!("the runtime has not run its heartbeat for {since} ms (worker threads blocked)")
        })
    }

    /// Beats until `stop`. Nothing else runs in this loop, so a slow probe never looks like
    /// a wedged runtime.
    pub async fn beat(&self, stop: CancellationToken) {
        loop {
            self.beat_ms.store(self.now_ms(), Ordering::Release);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.beat) => {}
            }
        }
    }

    /// Probes storage while it refuses writes (each probe bounded by [`PROBE`]), until
    /// `stop`.
    pub async fn watch(&self, control: Arc<ControlPlane>, stop: CancellationToken) {
        loop {
            if control.publisher().failing().is_some()
                && tokio::time::timeout(PROBE, control.publisher().probe())
                    .await
                    .unwrap_or(false)
            {
                tracing::info!("the event log takes writes again");
            }
            if control.dispatcher().store_failing().is_some()
                && tokio::time::timeout(PROBE, control.dispatcher().probe_store())
                    .await
                    .unwrap_or(false)
            {
                tracing::info!("the delivery store takes writes again");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(BEAT) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_runtime_that_stops_running_tasks_is_unhealthy_until_it_runs_again() {
        let health = Arc::new(Health::with_timing(
            Duration::from_millis(10),
            Duration::from_millis(1000),
        ));
        let stop = CancellationToken::new();
        let beating = tokio::spawn({
            let (health, stop) = (health.clone(), stop.clone());
            async move { health.beat(stop).await }
        });
        // The runtime runs its tasks for longer than the limit: healthy throughout.
        for _ in 0..150 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert_eq!(health.unhealthy(), None);
        }
        // Its only worker thread blocked past the limit (the fault): unhealthy, saying why.
        std::thread::sleep(Duration::from_millis(1200));
        let why = health.unhealthy().unwrap();
        assert!(why.contains("has not run its heartbeat"), "{why}");
        // Running again: healthy after its next beat.
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(health.unhealthy(), None);
        stop.cancel();
        beating.await.unwrap();
    }
}
