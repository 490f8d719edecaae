//! A work queue of resource keys, one per kind, as controller-runtime has them: a key is
//! queued once however often it is added, never reconciled on two tasks at once (added again
//! while it runs, it runs again after), retried with backoff, and can be waited on.

use crate::resource::Key;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// What a reconcile of a key should do besides looking; merged when a key is added twice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    /// Write the observed status back (this node made the change, or is starting).
    pub write: bool,
    /// The resource was just created here (a new trigger starts at the log end).
    pub created: bool,
}

impl Flags {
    pub const WRITE: Flags = Flags {
        write: true,
        created: false,
    };
    pub const OBSERVE: Flags = Flags {
        write: false,
        created: false,
    };

    fn merge(self, other: Flags) -> Flags {
        Flags {
            write: self.write || other.write,
            created: self.created || other.created,
        }
    }
}

#[derive(Default)]
struct State {
    /// Keys waiting for a worker, in order.
    ready: VecDeque<Key>,
    /// The flags of the keys in `ready`.
    queued: HashMap<Key, Flags>,
    /// Keys being reconciled (or held by a delete).
    running: HashSet<Key>,
    /// Keys added while running: queued again when they finish.
    again: HashMap<Key, Flags>,
    /// Keys with a delayed add pending, and the flags it will add with.
    delayed: HashMap<Key, Flags>,
    /// Consecutive failed reconciles, for the backoff.
    failures: HashMap<Key, u32>,
    closed: bool,
}

pub struct WorkQueue {
    state: Mutex<State>,
    /// A key became ready, or the queue closed.
    wake: Notify,
    /// A key finished.
    finished: Notify,
}

/// The first wait after a failed reconcile; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

impl Default for WorkQueue {
    fn default() -> Self {
        Self {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            finished: Notify::new(),
        }
    }
}

impl WorkQueue {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding it leaves plain collections behind: still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `key` (once, whatever how often it is added before a worker takes it).
    pub fn add(&self, key: Key, flags: Flags) {
        let mut s = self.state();
        if s.closed {
            return;
        }
        if s.running.contains(&key) {
            let f = s.again.entry(key).or_default();
            *f = f.merge(flags);
            return;
        }
        match s.queued.get_mut(&key) {
            Some(f) => *f = f.merge(flags),
            None => {
                s.queued.insert(key.clone(), flags);
                s.ready.push_back(key);
                drop(s);
                self.wake.notify_one();
            }
        }
    }

    /// Queues `key` after `delay`. One delayed add per key at a time: another while one is
    /// pending merges its flags into it.
    pub fn add_after(self: &Arc<Self>, key: Key, flags: Flags, delay: Duration) {
        {
            let mut s = self.state();
            if let Some(pending) = s.delayed.get_mut(&key) {
                *pending = pending.merge(flags);
                return;
            }
            s.delayed.insert(key.clone(), flags);
        }
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(q) = me.upgrade() {
                let flags = q.state().delayed.remove(&key).unwrap_or(flags);
                q.add(key, flags);
            }
        });
    }

    /// The next key to reconcile, marked running; `None` once the queue is closed.
    pub async fn next(&self) -> Option<(Key, Flags)> {
        loop {
            let woken = self.wake.notified();
            {
                let mut s = self.state();
                if s.closed {
                    return None;
                }
                while let Some(key) = s.ready.pop_front() {
                    let flags = s.queued.remove(&key).unwrap_or_default();
                    if s.running.contains(&key) {
                        // Held by a delete meanwhile: after it.
                        let f = s.again.entry(key).or_default();
                        *f = f.merge(flags);
                        continue;
                    }
                    s.running.insert(key.clone());
                    return Some((key, flags));
                }
            }
            woken.await;
        }
    }

    /// A worker finished `key`: it may run again.
    pub fn done(&self, key: &Key) {
        let mut s = self.state();
        s.running.remove(key);
        if let Some(flags) = s.again.remove(key) {
            if !s.closed && !s.queued.contains_key(key) {
                s.queued.insert(key.clone(), flags);
                s.ready.push_back(key.clone());
            }
        }
        drop(s);
        self.wake.notify_one();
        self.finished.notify_waiters();
    }

    /// Records the outcome of a reconcile; returns the wait before the next try when it failed.
    pub fn outcome(&self, key: &Key, failed: bool) -> Option<Duration> {
        let mut s = self.state();
        if !failed {
            s.failures.remove(key);
            return None;
        }
        let n = s.failures.entry(key.clone()).or_default();
        *n = n.saturating_add(1);
        let factor = 2u32.saturating_pow(n.saturating_sub(1).min(16));
        Some(FIRST_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF))
    }

    /// Holds `key` exclusively (no reconcile of it meanwhile) until the guard is dropped.
    pub async fn exclusive(self: &Arc<Self>, key: &Key) -> KeyGuard {
        loop {
            let finished = self.finished.notified();
            {
                let mut s = self.state();
                if !s.running.contains(key) {
                    s.running.insert(key.clone());
                    return KeyGuard {
                        queue: self.clone(),
                        key: key.clone(),
                    };
                }
            }
            finished.await;
        }
    }

    fn busy(s: &State, key: &Key) -> bool {
        s.queued.contains_key(key) || s.running.contains(key) || s.again.contains_key(key)
    }

    /// Waits until none of `keys` is queued or running, or `deadline`; true if they settled.
    pub async fn wait_idle(&self, keys: &[Key], deadline: Instant) -> bool {
        loop {
            let finished = self.finished.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            if !keys.iter().any(|k| Self::busy(&self.state(), k)) {
                return true;
            }
            tokio::select! {
                _ = &mut finished => {}
                _ = tokio::time::sleep_until(deadline) => return false,
            }
        }
    }

    /// Stops handing out keys: workers' `next` returns `None`.
    pub fn close(&self) {
        self.state().closed = true;
        self.wake.notify_waiters();
    }
}

/// Exclusive hold of a key (see [`WorkQueue::exclusive`]).
pub struct KeyGuard {
    queue: Arc<WorkQueue>,
    key: Key,
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        self.queue.done(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(n: &str) -> Key {
        Key::new("Broker", "default", n)
    }

    #[tokio::test]
    async fn a_key_added_twice_runs_once_and_again_if_added_while_running() {
        let q = Arc::new(WorkQueue::default());
        q.add(k("a"), Flags::OBSERVE);
        q.add(k("a"), Flags::WRITE);
        q.add(k("b"), Flags::OBSERVE);
        let (first, flags) = q.next().await.unwrap();
        assert_eq!(
            (first.clone(), flags),
            (k("a"), Flags::WRITE),
            "merged flags"
        );
        // Added while running: not handed to another worker now.
        q.add(k("a"), Flags::OBSERVE);
        let (second, _) = q.next().await.unwrap();
        assert_eq!(second, k("b"));
        q.done(&second);
        q.done(&first);
        let (again, _) = q.next().await.unwrap();
        assert_eq!(again, k("a"), "runs again after it finished");
        q.done(&again);
        let deadline = Instant::now() + Duration::from_secs(1);
        assert!(q.wait_idle(&[k("a"), k("b")], deadline).await);
    }

    #[tokio::test]
    async fn exclusive_waits_for_a_running_reconcile() {
        let q = Arc::new(WorkQueue::default());
        q.add(k("a"), Flags::OBSERVE);
        let (key, _) = q.next().await.unwrap();
        let q2 = q.clone();
        let held = tokio::spawn(async move {
            let _g = q2.exclusive(&k("a")).await;
        });
        tokio::task::yield_now().await;
        assert!(!held.is_finished());
        q.done(&key);
        held.await.unwrap();
        // The guard is gone: the key is free.
        assert!(q.wait_idle(&[k("a")], Instant::now()).await);
    }

    #[test]
    fn backoff_doubles_and_resets() {
        let q = WorkQueue::default();
        assert_eq!(q.outcome(&k("a"), true), Some(Duration::from_millis(200)));
        assert_eq!(q.outcome(&k("a"), true), Some(Duration::from_millis(400)));
        assert_eq!(q.outcome(&k("a"), false), None);
        assert_eq!(q.outcome(&k("a"), true), Some(Duration::from_millis(200)));
        for _ in 0..40 {
            q.outcome(&k("b"), true);
        }
        assert_eq!(q.outcome(&k("b"), true), Some(MAX_BACKOFF));
    }
}
