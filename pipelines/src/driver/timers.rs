//! Wake-ups for runs' timeouts: a `changed` event at the deadline.

use super::*;

impl Pipelines {
    /// Publishes `changed` for the run at `at` (once per run and deadline), so that its
    /// timeout is acted on. A restart re-arms it on the run's first pass.
    pub(super) fn arm_timer(self: &Arc<Self>, pr: &Resource, at: SystemTime) {
        {
            let mut timers = self.timers.lock().unwrap_or_else(|p| p.into_inner());
            if timers.get(&pr.metadata.uid) == Some(&at) {
                return;
            }
            timers.insert(pr.metadata.uid.clone(), at);
        }
        let me = Arc::downgrade(self);
        let pr = pr.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let Some(p) = me.upgrade() else { return };
            let current = p
                .timers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&pr.metadata.uid)
                == Some(&at);
            if !current {
                return;
            }
            p.forget_timer(&pr.metadata.uid);
            if let Some(cp) = p.control() {
                if let Err(e) = events::internal(&cp, CHANGED_TYPE, &pr, "timeout").await {
                    tracing::warn!(run = %pr.key(), error = %e, "cannot publish a PipelineRun's timeout");
                }
            }
        });
    }

    pub(crate) fn forget_timer(&self, uid: &str) {
        self.timers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
    }
}
