//! A lease: one node of the cluster holds it at a time. It is membership of a consumer group
//! on a one-partition system broker: whoever holds partition 0 holds the lease, and Kafka's
//! group protocol moves it to a survivor when its holder dies (after the session timeout). In
//! embedded mode the one process holds it always.

use broker::{EventLog, StartAt, Topic};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Held while [`Lease::held`] says so; the task behind it ends with `stop`.
#[derive(Clone)]
pub struct Lease {
    held: Arc<AtomicBool>,
}

impl Lease {
    /// Joins `group` on `topic` (one partition) and keeps its membership alive until `stop`.
    pub fn join(
        log: Arc<dyn EventLog>,
        topic: Topic,
        group: String,
        stop: CancellationToken,
    ) -> Self {
        let held = Arc::new(AtomicBool::new(false));
        let flag = held.clone();
        tokio::spawn(async move {
            loop {
                let mut member = match log.group_member(&topic, &group, StartAt::Latest).await {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(lease = %group, error = %e, "cannot join the lease's group; trying again");
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        }
                    }
                };
                loop {
                    // Polling keeps the membership alive; what is read is not this task's.
                    let polled = tokio::select! {
                        _ = stop.cancelled() => {
                            flag.store(false, Ordering::Release);
                            return;
                        }
                        p = member.poll_where(64, Duration::from_millis(500), &|_| false) => p,
                    };
                    if let Err(e) = polled {
                        tracing::warn!(lease = %group, error = %e, "lease membership lost; joining again");
                        flag.store(false, Ordering::Release);
                        break;
                    }
                    let holds = member.assignment().is_none_or(|a| a.contains(&0));
                    if flag.swap(holds, Ordering::AcqRel) != holds {
                        tracing::info!(lease = %group, held = holds, "lease changed hands");
                    }
                }
            }
        });
        Self { held }
    }

    /// Whether this node holds the lease now.
    pub fn held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }
}
