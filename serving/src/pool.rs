//! One revision's instances at run time: how many are wanted (the supervisor sets it from the
//! autoscaler's decisions), starting and draining processes to match, restarts with backoff,
//! and the request side the gateway uses: picking an instance with a free slot
//! (`containerConcurrency`), holding requests while none is ready (the activator), and the
//! queue-proxy's accounting (time-weighted concurrency, requests per second).
//!
//! - `instance.rs`: one instance's life (start, probe, serve, drain, stop, restart backoff).
//! - `slots.rs`: the request side (a free slot, held requests, the poke, the accounting).

mod instance;
mod slots;

pub use slots::{Lease, Refused};

use crate::autoscaler::Scaling;
use crate::process::{Output, Readiness, Spawner};
use crate::spec::RevisionSpec;
use control::Key;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{broadcast, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Most instances of one revision, whatever a decision says.
pub const MAX_INSTANCES: u32 = 1000;
/// Outputs of instances that are gone, kept for `ferry logs`.
const PAST_OUTPUTS: usize = 5;

const STARTING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;
const GONE: u8 = 3;

/// What a pool tells the rest of serving.
pub trait Hooks: Send + Sync {
    /// The revision's observed state changed (ready, failed, instance count).
    fn status_changed(&self, key: &Key);
    /// A request waits at zero instances: ask for a scale from zero now.
    fn poke(&self, pool: &Arc<Pool>);
}

/// One process of a revision.
pub struct Instance {
    pub id: u64,
    pub port: u16,
    /// Held (no other instance is given the port) until the instance is dropped.
    _port: crate::process::PortLease,
    phase: AtomicU8,
    in_flight: AtomicU32,
    /// Cancelled to stop the instance (drain, then SIGTERM).
    drain: CancellationToken,
    /// Signalled when in-flight requests reach 0.
    idle: Notify,
    output: Arc<Output>,
}

impl Instance {
    fn phase(&self) -> u8 {
        self.phase.load(Ordering::Acquire)
    }

    fn live(&self) -> bool {
        matches!(self.phase(), STARTING | READY)
    }

    /// Starting or ready → draining (never back from gone).
    fn begin_drain(&self) {
        let _ = self
            .phase
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                matches!(p, STARTING | READY).then_some(DRAINING)
            });
    }
}

/// Why the revision's instances fail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub reason: String,
    pub message: String,
}

/// What is observed of a revision's instances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub desired: u32,
    /// Starting or ready.
    pub instances: u32,
    pub ready: u32,
    pub ever_ready: bool,
    /// Set while instances fail to start (the revision is not ready because of it when it
    /// never was, or after several failures in a row).
    pub failure: Option<Failure>,
    /// Requests waiting for an instance.
    pub held: u32,
    /// Instances that failed in a row (0 once one is ready).
    pub failures: u32,
}

struct State {
    instances: Vec<Arc<Instance>>,
    past: VecDeque<Arc<Output>>,
    desired: u32,
    waiting: u32,
    failures: u32,
    failure: Option<Failure>,
    ever_ready: bool,
    initial_reached: bool,
    next_id: u64,
    /// Restart backoff: no new instance before this.
    not_before: Option<Instant>,
    /// A poke was sent for the current stretch at zero.
    poked: bool,
}

/// Time-weighted concurrency and request count since the last snapshot (spec §1.3).
struct Accounting {
    since: Instant,
    last: Instant,
    level: u32,
    integral: f64,
    requests: u64,
}

impl Accounting {
    fn integrate(&mut self, now: Instant) {
        self.integral += f64::from(self.level) * (now - self.last).as_secs_f64();
        self.last = now;
    }
}

/// One revision's snapshot for a statistics event.
#[derive(Clone, Debug)]
pub struct Sample {
    pub average_concurrency: f64,
    pub requests: u64,
}

pub struct Pool {
    pub key: Key,
    pub uid: String,
    pub spec: RevisionSpec,
    pub scaling: Scaling,
    /// `K_SERVICE`, `K_CONFIGURATION`, `K_REVISION`.
    env: Vec<(String, String)>,
    readiness: Readiness,
    state: Mutex<State>,
    /// Availability changed: an instance got ready, a slot was freed.
    changed: Notify,
    /// The maintainer should look again (desired changed, an instance is gone).
    wake: Notify,
    /// An instance is gone.
    gone: Notify,
    acct: Mutex<Accounting>,
    feed: broadcast::Sender<String>,
    stop: CancellationToken,
    spawner: Arc<Spawner>,
    hooks: Weak<dyn Hooks>,
}

/// What a pool runs: one revision as its reconcile read it.
pub struct PoolSpec {
    pub key: Key,
    pub uid: String,
    pub spec: RevisionSpec,
    pub scaling: Scaling,
    /// `K_SERVICE`, `K_CONFIGURATION`, `K_REVISION`.
    pub env: Vec<(String, String)>,
    /// Instances to start with: `initial-scale` for a new revision, `min-scale` for one
    /// that was ready before (a restart of Ferry); the autoscaler takes over from there.
    pub initial: u32,
    /// The revision has had `initial-scale` ready instances before (it was ready).
    pub initial_reached: bool,
}

impl Pool {
    pub fn start(
        p: PoolSpec,
        spawner: Arc<Spawner>,
        hooks: Weak<dyn Hooks>,
        stop: CancellationToken,
    ) -> Arc<Self> {
        let PoolSpec {
            key,
            uid,
            spec,
            scaling,
            env,
            initial,
            initial_reached,
        } = p;
        let readiness = Readiness::of(
            spec.containers
                .first()
                .and_then(|c| c.readiness_probe.as_ref()),
        );
        let now = Instant::now();
        let desired = initial;
        let pool = Arc::new(Self {
            key,
            uid,
            spec,
            scaling,
            env,
            readiness,
            state: Mutex::new(State {
                instances: Vec::new(),
                past: VecDeque::new(),
                desired,
                waiting: 0,
                failures: 0,
                failure: None,
                ever_ready: false,
                initial_reached,
                next_id: 1,
                not_before: None,
                poked: false,
            }),
            changed: Notify::new(),
            wake: Notify::new(),
            gone: Notify::new(),
            acct: Mutex::new(Accounting {
                since: now,
                last: now,
                level: 0,
                integral: 0.0,
                requests: 0,
            }),
            feed: broadcast::channel(1024).0,
            stop,
            spawner,
            hooks,
        });
        tokio::spawn(pool.clone().maintain());
        pool
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn status_changed(&self) {
        if let Some(h) = self.hooks.upgrade() {
            h.status_changed(&self.key);
        }
    }

    pub fn container_concurrency(&self) -> u32 {
        self.spec.container_concurrency()
    }

    pub fn timeout(&self) -> Duration {
        self.spec.timeout()
    }

    pub fn observed(&self) -> Observed {
        let st = self.lock();
        let live = st.instances.iter().filter(|i| i.live()).count();
        let ready = st.instances.iter().filter(|i| i.phase() == READY).count();
        Observed {
            desired: st.desired,
            instances: u32::try_from(live).unwrap_or(u32::MAX),
            ready: u32::try_from(ready).unwrap_or(u32::MAX),
            ever_ready: st.ever_ready,
            failure: st.failure.clone(),
            held: st.waiting,
            failures: st.failures,
        }
    }

    pub fn initial_reached(&self) -> bool {
        self.lock().initial_reached
    }

    /// The supervisor's decision: run `n` instances (at most `max-scale`, or
    /// [`MAX_INSTANCES`] without one, whatever a decision says).
    pub fn set_desired(&self, n: u32) {
        let cap = match self.scaling.max_scale {
            0 => MAX_INSTANCES,
            m => m.min(MAX_INSTANCES),
        };
        let n = n.min(cap);
        let changed = {
            let mut st = self.lock();
            let changed = st.desired != n;
            st.desired = n;
            if n > 0 {
                st.poked = false;
            }
            changed
        };
        if changed {
            tracing::debug!(revision = %self.key, desired = n, "scale");
            self.wake.notify_one();
            self.status_changed();
        }
    }

    /// The queue-proxy's one-second sample, and the start of the next.
    pub fn sample(&self) -> Sample {
        let now = Instant::now();
        let mut a = self.acct.lock().unwrap_or_else(|p| p.into_inner());
        a.integrate(now);
        let span = (now - a.since).as_secs_f64();
        let average_concurrency = if span > 0.0 { a.integral / span } else { 0.0 };
        let s = Sample {
            average_concurrency,
            requests: a.requests,
        };
        a.since = now;
        a.integral = 0.0;
        a.requests = 0;
        s
    }

    /// Every kept output line of every instance (gone ones first), and a feed of new lines.
    pub fn logs(&self) -> (Vec<String>, broadcast::Receiver<String>) {
        let rx = self.feed.subscribe();
        let st = self.lock();
        let mut lines: Vec<String> = st.past.iter().flat_map(|o| o.shown()).collect();
        for i in &st.instances {
            lines.extend(i.output.shown());
        }
        (lines, rx)
    }

    /// Stops every instance (drained, then SIGTERM, SIGKILL) and waits for them, at most
    /// `limit`.
    pub async fn shutdown(&self, limit: Duration) {
        self.stop.cancel();
        let deadline = Instant::now() + limit;
        loop {
            let gone = self.gone.notified();
            tokio::pin!(gone);
            gone.as_mut().enable();
            if self.lock().instances.iter().all(|i| i.phase() == GONE) {
                return;
            }
            if tokio::time::timeout_at(deadline, gone).await.is_err() {
                return;
            }
        }
    }

    /// Starts and drains instances until the count matches what is wanted, until stopped.
    async fn maintain(self: Arc<Self>) {
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.stop.is_cancelled() {
                let all_gone = {
                    let st = self.lock();
                    for i in &st.instances {
                        i.begin_drain();
                        i.drain.cancel();
                    }
                    st.instances.iter().all(|i| i.phase() == GONE)
                };
                if all_gone {
                    return;
                }
                woken.await;
                continue;
            }
            let mut start = 0;
            let mut wait = None;
            let mut drained = false;
            {
                let mut st = self.lock();
                if self.stop.is_cancelled() {
                    continue;
                }
                st.instances.retain(|i| i.phase() != GONE);
                let live: Vec<Arc<Instance>> =
                    st.instances.iter().filter(|i| i.live()).cloned().collect();
                let want = st.desired as usize;
                if live.len() < want {
                    match st.not_before {
                        Some(at) if at > Instant::now() => wait = Some(at),
                        _ => start = want - live.len(),
                    }
                } else if live.len() > want {
                    // Starting ones first, then the least busy.
                    // (Keys read once: `in_flight` changes under our feet.)
                    let mut victims: Vec<_> = live
                        .into_iter()
                        .map(|i| ((i.phase() == READY, i.in_flight.load(Ordering::Acquire)), i))
                        .collect();
                    victims.sort_by_key(|(k, _)| *k);
                    let excess = victims.len() - want;
                    for (_, v) in victims.iter().take(excess) {
                        v.begin_drain();
                        v.drain.cancel();
                        drained = true;
                    }
                }
                for _ in 0..start {
                    let id = st.next_id;
                    st.next_id += 1;
                    match self.spawner.reserve_port() {
                        Ok(port) => {
                            let prefix = format!("{}-{id}", self.key.name);
                            let instance = Arc::new(Instance {
                                id,
                                port: port.port(),
                                _port: port,
                                phase: AtomicU8::new(STARTING),
                                in_flight: AtomicU32::new(0),
                                drain: self.stop.child_token(),
                                idle: Notify::new(),
                                output: Output::new(prefix, self.feed.clone()),
                            });
                            st.instances.push(instance.clone());
                            tokio::spawn(self.clone().run(instance));
                        }
                        Err(e) => {
                            tracing::warn!(revision = %self.key, error = %e, "no free port for an instance");
                            wait = Some(Instant::now() + instance::BACKOFF_FIRST);
                            break;
                        }
                    }
                }
            }
            if drained {
                self.changed.notify_waiters();
            }
            if start > 0 || drained {
                self.status_changed();
            }
            let stop = self.stop.clone();
            match wait {
                Some(at) => {
                    tokio::select! {
                        _ = woken => {}
                        _ = tokio::time::sleep_until(at) => {}
                        _ = stop.cancelled() => {}
                    }
                }
                None => {
                    tokio::select! {
                        _ = woken => {}
                        _ = stop.cancelled() => {}
                    }
                }
            }
        }
    }
}
