//! The request side of a pool, as the gateway uses it: a slot on the least busy ready instance
//! (at most `containerConcurrency` each), requests held in arrival order while none is free
//! (bounded), the poke that asks for a scale from zero, and the queue-proxy's accounting of
//! time-weighted concurrency.

use super::{Instance, Pool, State, DRAINING, READY};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::time::Instant;

/// Most requests held for a revision with no free instance (the activator's queue depth).
const MAX_HELD: u32 = 10_000;

/// Why a request got no instance.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The queue for this revision is full.
    Overflow,
    /// No instance was free within `timeoutSeconds`.
    Timeout,
    /// The revision is being stopped (deleted, replaced, Ferry shutting down).
    Stopped,
}

impl Pool {
    /// Waits for a free instance and takes one of its slots, or refuses: the queue is full, or
    /// none came free before `deadline`.
    pub async fn acquire(self: &Arc<Self>, deadline: Instant) -> Result<Lease, Refused> {
        let counted = Counted::enter(self.clone());
        // The common case first: a free slot now, no waiting registered.
        if let Some(instance) = self.take_slot() {
            return Ok(Lease {
                instance,
                cold: false,
                _counted: counted,
            });
        }
        let mut waiting = None;
        let mut cold = false;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (picked, poke) = {
                let mut st = self.lock();
                // With limited slots, one that arrives while others wait queues behind them.
                let queued_behind =
                    waiting.is_none() && st.waiting > 0 && self.container_concurrency() > 0;
                let free = if queued_behind { None } else { self.pick(&st) };
                if let Some(instance) = free {
                    instance.in_flight.fetch_add(1, Ordering::AcqRel);
                    (Some(instance), false)
                } else {
                    if waiting.is_none() {
                        let ready =
                            st.instances.iter().filter(|i| i.phase() == READY).count() as u32;
                        let cc = self.container_concurrency();
                        let limit = if cc > 0 && ready > 0 {
                            (10 * cc * ready).min(MAX_HELD)
                        } else {
                            MAX_HELD
                        };
                        if st.waiting >= limit {
                            return Err(Refused::Overflow);
                        }
                        st.waiting += 1;
                        waiting = Some(Waiting(self.clone()));
                    }
                    let zero = !st.instances.iter().any(|i| i.live());
                    cold |= zero;
                    let poke = zero && st.desired == 0 && !st.poked;
                    if poke {
                        st.poked = true;
                    }
                    (None, poke)
                }
            };
            if let Some(instance) = picked {
                if waiting.is_some() {
                    drop(waiting);
                    // Pass it on: another waiter may have a free slot too.
                    if self.lock().waiting > 0 {
                        self.changed.notify_one();
                    }
                }
                return Ok(Lease {
                    instance,
                    cold,
                    _counted: counted,
                });
            }
            if poke {
                tracing::debug!(revision = %self.key, "a request waits at zero: poke");
                if let Some(h) = self.hooks.upgrade() {
                    h.poke(self);
                }
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => return Err(Refused::Timeout),
                _ = self.stop.cancelled() => return Err(Refused::Stopped),
            }
        }
    }

    /// A slot on a ready instance, if one is free now.
    fn take_slot(&self) -> Option<Arc<Instance>> {
        let st = self.lock();
        if st.waiting > 0 && self.container_concurrency() > 0 {
            // Those waiting for a slot go first.
            return None;
        }
        let instance = self.pick(&st)?;
        instance.in_flight.fetch_add(1, Ordering::AcqRel);
        Some(instance)
    }

    /// A ready instance with a free slot, the least busy.
    fn pick(&self, st: &State) -> Option<Arc<Instance>> {
        let cc = self.container_concurrency();
        st.instances
            .iter()
            .filter(|i| i.phase() == READY)
            .map(|i| (i.in_flight.load(Ordering::Acquire), i))
            .filter(|(n, _)| cc == 0 || *n < cc)
            .min_by_key(|(n, _)| *n)
            .map(|(_, i)| i.clone())
    }

    fn release(&self, instance: &Instance) {
        let left = instance.in_flight.fetch_sub(1, Ordering::AcqRel) - 1;
        if left == 0 && instance.phase() == DRAINING {
            instance.idle.notify_waiters();
        }
        if self.lock().waiting > 0 {
            // One slot freed: one waiter (in arrival order) takes it.
            self.changed.notify_one();
        }
    }
}

/// A slot on an instance, held for one request until its answer has been sent.
pub struct Lease {
    instance: Arc<Instance>,
    /// The request arrived when the revision had no instance (a cold start).
    cold: bool,
    _counted: Counted,
}

impl Lease {
    pub fn port(&self) -> u16 {
        self.instance.port
    }

    pub fn cold(&self) -> bool {
        self.cold
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self._counted.0.release(&self.instance);
    }
}

/// A request counted in the revision's concurrency from arrival to answer.
struct Counted(Arc<Pool>);

impl Counted {
    fn enter(pool: Arc<Pool>) -> Self {
        {
            let mut a = pool.acct.lock().unwrap_or_else(|p| p.into_inner());
            a.integrate(Instant::now());
            a.level += 1;
            a.requests += 1;
        }
        Self(pool)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut a = self.0.acct.lock().unwrap_or_else(|p| p.into_inner());
        a.integrate(Instant::now());
        a.level = a.level.saturating_sub(1);
    }
}

/// A request counted as waiting.
struct Waiting(Arc<Pool>);

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.waiting = st.waiting.saturating_sub(1);
    }
}
