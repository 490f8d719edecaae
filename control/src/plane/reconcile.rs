//! The reconcile side of the control plane: the queues' workers, one pass over a key (its
//! "just created here" mark, the status written back, the retry), what depends on a change,
//! and following other nodes' changes (Kafka mode).

use super::{ControlError, ControlPlane};
use crate::kind::Kind;
use crate::queue::{Flags, WorkQueue};
use crate::resource::{Key, Resource};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Weak};

impl ControlPlane {
    /// Queues everything that depends on `changed`.
    pub(super) fn enqueue_dependents(
        &self,
        changed: &Key,
        flags: Flags,
    ) -> Result<(), ControlError> {
        if self
            .registry
            .kind(&changed.kind)
            .is_some_and(|k| !k.has_dependents())
        {
            return Ok(());
        }
        for kind in self.registry.all() {
            for r in self.store.list(kind.info().kind, None)? {
                if kind.depends_on(self, &r).contains(changed) {
                    self.enqueue(r.key(), flags);
                }
            }
        }
        Ok(())
    }

    /// One reconcile of `key`, as a queue's worker runs it.
    async fn reconcile_key(self: &Arc<Self>, kind: &Arc<dyn Kind>, key: &Key, mut flags: Flags) {
        let Some(queue) = self.queue(&key.kind).cloned() else {
            return;
        };
        let r = match self.store.get(&key.kind, &key.namespace, &key.name) {
            Ok(Some(r)) => r,
            Ok(None) => {
                self.created_pending().remove(key);
                kind.release(self, key).await;
                return;
            }
            Err(e) => {
                tracing::warn!(resource = %key, error = %e, "cannot read the resource to reconcile it");
                if let Some(wait) = queue.outcome(key, true) {
                    queue.add_after(key.clone(), flags, wait);
                }
                return;
            }
        };
        // "Just created here" holds from the apply that created the resource until one of this
        // node's passes makes it Ready (a new trigger starts at the log end even when its first
        // passes wait for a broker or a sink); it is this node's to act on, and only once.
        {
            let mut pending = self.created_pending();
            let settled = r.ready() == Some(true)
                && r.status.get("observedGeneration").and_then(Value::as_i64)
                    == Some(r.metadata.generation);
            if pending
                .get(key)
                .is_some_and(|uid| *uid != r.metadata.uid || settled)
            {
                pending.remove(key);
            }
            flags.created = flags.write && pending.get(key) == Some(&r.metadata.uid);
        }
        let out = kind.reconcile(self, &r, flags).await;
        if crate::status::ready(&out.status) == Some(true) {
            self.created_pending().remove(key);
        }
        // Retries re-add without `created`: whether it still holds is decided above.
        let flags = Flags {
            created: false,
            ..flags
        };
        let mut failed = out.retry;
        // Only what this pass changed is written: a status another writer updated meanwhile
        // (a run's executor) is not put back to what this pass read.
        if flags.write && out.status != r.status {
            if let Err(e) = self.write_status(&r, out.status).await {
                tracing::warn!(resource = %key, error = %e, "cannot store the status; trying again");
                failed = true;
            }
        }
        match queue.outcome(key, failed) {
            Some(wait) => {
                tracing::debug!(resource = %key, ?wait, "reconcile failed; trying again");
                queue.add_after(key.clone(), flags, wait);
            }
            None => {
                if let Some(after) = out.requeue_after {
                    queue.add_after(key.clone(), flags, after);
                }
            }
        }
    }

    pub(super) fn created_pending(&self) -> std::sync::MutexGuard<'_, HashMap<Key, String>> {
        self.created_pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Writes back an observed status, if the resource is still the one reconciled and the
    /// status changed; then what depends on it is reconciled again.
    async fn write_status(&self, r: &Resource, status: Value) -> Result<(), ControlError> {
        let written = {
            let _guard = self.writes.lock().await;
            match self
                .store
                .get(&r.kind, &r.metadata.namespace, &r.metadata.name)?
            {
                Some(mut cur)
                    if cur.metadata.uid == r.metadata.uid
                        && cur.metadata.generation == r.metadata.generation
                        && cur.status != status =>
                {
                    cur.status = status;
                    self.store.put(&cur).await?;
                    Some(cur)
                }
                _ => None,
            }
        };
        if let Some(cur) = written {
            self.publish_change("updated", &cur).await;
            self.enqueue_dependents(&cur.key(), Flags::WRITE)?;
        }
        Ok(())
    }

    /// Converges this node on a change another node made: its reconcile (no status written)
    /// and its dependents'.
    fn converge(&self, key: Key) -> Result<(), ControlError> {
        tracing::debug!(resource = %key, "changed on another node");
        // A broker's topic usable here before its dependents' passes (and its own) run.
        if key.kind == "Broker" {
            if let Ok(Some(r)) = self.store.get(&key.kind, &key.namespace, &key.name) {
                if crate::kinds::broker::admissible(&r) {
                    self.log()
                        .admit(&broker::Topic::new(&key.namespace, &key.name));
                }
            }
        }
        self.enqueue_dependents(&key, Flags::OBSERVE)?;
        self.enqueue(key, Flags::OBSERVE);
        Ok(())
    }

    /// Converges every stored resource (after missing some changes).
    fn converge_all(&self) -> Result<(), ControlError> {
        for kind in self.registry.all() {
            for r in self.store.list(kind.info().kind, None)? {
                self.enqueue(r.key(), Flags::OBSERVE);
            }
        }
        Ok(())
    }
}

/// A queue's worker: reconciles the keys of one kind until the queue closes or the control
/// plane is gone. A reconcile that panics is logged and counts as failed (tried again with
/// backoff); the key is released either way.
pub(super) async fn work(cp: Weak<ControlPlane>, kind: &'static str, queue: Arc<WorkQueue>) {
    use futures::FutureExt;
    while let Some((key, flags)) = queue.next().await {
        let Some(cp) = cp.upgrade() else {
            queue.done(&key);
            return;
        };
        if let Some(k) = cp.registry.kind(kind).cloned() {
            let pass = std::panic::AssertUnwindSafe(cp.reconcile_key(&k, &key, flags));
            if pass.catch_unwind().await.is_err() {
                tracing::error!(resource = %key, "reconcile panicked; trying again later");
                if let Some(wait) = queue.outcome(&key, true) {
                    queue.add_after(key.clone(), flags, wait);
                }
            }
        }
        queue.done(&key);
    }
}

/// Follows the resources other nodes apply and delete (Kafka mode), converging this node on
/// each change, until the control plane is dropped.
pub(super) async fn follow(
    cp: Weak<ControlPlane>,
    mut changes: tokio::sync::broadcast::Receiver<Vec<u8>>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let change = changes.recv().await;
        let Some(cp) = cp.upgrade() else { return };
        let outcome = match change {
            Ok(key) => match crate::store::parse_key(&key) {
                Some(key) => cp.converge(key),
                None => Ok(()),
            },
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "missed resource changes; converging everything");
                cp.converge_all()
            }
            Err(RecvError::Closed) => return,
        };
        if let Err(e) = outcome {
            tracing::warn!(error = %e, "converging on another node's change failed");
        }
    }
}
