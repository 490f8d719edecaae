//! One revision's instances at run time: how many are wanted (the supervisor sets it from the
//! autoscaler's decisions), starting and draining processes to match, restarts with backoff,
//! and the request side the gateway uses: picking an instance with a free slot
//! (`containerConcurrency`), holding requests while none is ready (the activator), and the
//! queue-proxy's accounting (time-weighted concurrency, requests per second).

use crate::autoscaler::Scaling;
use crate::process::{signal, Output, Readiness, Spawner};
use crate::spec::RevisionSpec;
use control::Key;
use rustix::process::Signal;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{broadcast, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Probing at start: every 2 ms for the first 100 ms (a probe of loopback costs ~50 µs, and
/// most programs are up by then: a cold start waits for no poll interval), then every 10 ms up
/// to 10 s (Knative's queue-proxy probes "aggressively" too), then once a second.
const FIRST_PROBING: Duration = Duration::from_millis(100);
const FIRST_PROBE_EVERY: Duration = Duration::from_millis(2);
const FAST_PROBING: Duration = Duration::from_secs(10);
const FAST_PROBE_EVERY: Duration = Duration::from_millis(10);
const SLOW_PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);
/// An instance not ready after this long is stopped and counted as failed (Knative's progress
/// deadline).
const PROGRESS_DEADLINE: Duration = Duration::from_secs(600);
/// Most instances of one revision, whatever a decision says.
pub const MAX_INSTANCES: u32 = 1000;
/// Most requests held for a revision with no free instance (the activator's queue depth).
const MAX_HELD: u32 = 10_000;
/// Restart backoff: from this, doubling, at most `BACKOFF_MAX`.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// After SIGTERM, how long an instance has before SIGKILL (at most; `timeoutSeconds` if less).
const TERM_GRACE: Duration = Duration::from_secs(10);
/// How long a dead instance's output is read on before its failure is reported.
const OUTPUT_WAIT: Duration = Duration::from_secs(1);
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
                            wait = Some(Instant::now() + BACKOFF_FIRST);
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

    /// One instance's life: start, probe until ready, serve until told to stop or it exits.
    async fn run(self: Arc<Self>, instance: Arc<Instance>) {
        let mut env = self.env.clone();
        env.push(("PORT".into(), instance.port.to_string()));
        let outcome = if instance.drain.is_cancelled() {
            // Stopped before it started.
            Ok(())
        } else {
            self.start_and_supervise(&instance, &env).await
        };
        self.ended(&instance, outcome);
    }

    /// Starts the instance's process and supervises it until it ends.
    async fn start_and_supervise(
        &self,
        instance: &Arc<Instance>,
        env: &[(String, String)],
    ) -> Result<(), Failure> {
        match self.spawner.spawn(&self.spec, env).await {
            Err(e) => Err(Failure {
                reason: "ExecFailed".into(),
                message: format!("cannot start {:?}: {e}", self.command()),
            }),
            Ok(mut child) => {
                let pid = child.id();
                tracing::debug!(revision = %self.key, instance = instance.id, ?pid, "started");
                let mut readers = Vec::new();
                if let Some(out) = child.stdout.take() {
                    readers.push(tokio::spawn(instance.output.clone().collect(out, false)));
                }
                if let Some(err) = child.stderr.take() {
                    readers.push(tokio::spawn(instance.output.clone().collect(err, true)));
                }
                let outcome = match self.supervise(instance, &mut child).await {
                    Ok(()) => Ok(()),
                    Err(Ended::Failed(f)) => Err(f),
                    Err(Ended::Exited(status, when)) => {
                        // Its last words first: the output is read to its end (bounded: what
                        // it started may hold the pipes open).
                        for r in readers {
                            let _ = tokio::time::timeout(OUTPUT_WAIT, r).await;
                        }
                        Err(self.exit_failure(instance, status, when))
                    }
                };
                if let Some(pid) = pid {
                    self.spawner.exited(pid);
                }
                outcome
            }
        }
    }

    /// The instance is gone: its output kept, a failure counted (restart backoff).
    fn ended(&self, instance: &Arc<Instance>, outcome: Result<(), Failure>) {
        {
            let mut st = self.lock();
            instance.phase.store(GONE, Ordering::Release);
            st.past.push_back(instance.output.clone());
            if st.past.len() > PAST_OUTPUTS {
                st.past.pop_front();
            }
            if let Err(failure) = outcome {
                st.failures += 1;
                let n = st.failures.min(8);
                let backoff = (BACKOFF_FIRST * 2u32.pow(n - 1)).min(BACKOFF_MAX);
                st.not_before = Some(Instant::now() + backoff);
                tracing::warn!(revision = %self.key, instance = instance.id, reason = %failure.reason, message = %failure.message, "instance failed");
                st.failure = Some(failure);
            }
        }
        self.changed.notify_waiters();
        self.gone.notify_waiters();
        self.wake.notify_one();
        self.status_changed();
    }

    fn command(&self) -> Vec<String> {
        self.spec
            .containers
            .first()
            .map(|c| c.command.clone())
            .unwrap_or_default()
    }

    /// Probes until ready, then serves; `Err` when the instance failed (exited on its own, or
    /// never got ready).
    async fn supervise(
        &self,
        instance: &Arc<Instance>,
        child: &mut tokio::process::Child,
    ) -> Result<(), Ended> {
        let started = Instant::now();
        let probe = async {
            loop {
                if self.readiness.check(instance.port, PROBE_TIMEOUT).await {
                    return true;
                }
                let elapsed = started.elapsed();
                if elapsed > PROGRESS_DEADLINE {
                    return false;
                }
                let every = if elapsed < FIRST_PROBING {
                    FIRST_PROBE_EVERY
                } else if elapsed < FAST_PROBING {
                    FAST_PROBE_EVERY
                } else {
                    SLOW_PROBE_EVERY
                };
                tokio::time::sleep(every).await;
            }
        };
        let ready = tokio::select! {
            status = child.wait() => {
                return Err(Ended::Exited(status, "before it was ready"));
            }
            ok = probe => ok,
            _ = instance.drain.cancelled() => {
                self.terminate(instance, child).await;
                return Ok(());
            }
        };
        if !ready {
            self.terminate(instance, child).await;
            return Err(Ended::Failed(Failure {
                reason: "ProgressDeadlineExceeded".into(),
                message: format!(
                    "the instance was not ready within {}s; last stderr:\n{}",
                    PROGRESS_DEADLINE.as_secs(),
                    instance.output.stderr_tail(5)
                ),
            }));
        }
        if instance
            .phase
            .compare_exchange(STARTING, READY, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            tracing::debug!(revision = %self.key, instance = instance.id, after = ?started.elapsed(), "ready");
            let mut st = self.lock();
            st.ever_ready = true;
            st.failures = 0;
            st.failure = None;
            st.not_before = None;
            st.poked = false;
            let ready = st.instances.iter().filter(|i| i.phase() == READY).count() as u32;
            if ready >= self.scaling.initial_scale {
                st.initial_reached = true;
            }
        }
        self.changed.notify_waiters();
        self.status_changed();
        tokio::select! {
            status = child.wait() => {
                Err(Ended::Exited(status, "while serving"))
            }
            _ = instance.drain.cancelled() => {
                {
                    // Under the lock: no request is given a slot on it after this.
                    let _st = self.lock();
                    instance.begin_drain();
                }
                self.changed.notify_waiters();
                self.drain(instance).await;
                self.terminate(instance, child).await;
                Ok(())
            }
        }
    }

    fn exit_failure(
        &self,
        instance: &Instance,
        status: std::io::Result<std::process::ExitStatus>,
        when: &str,
    ) -> Failure {
        let (reason, how) = match status {
            Ok(s) => match s.code() {
                Some(c) => (format!("ExitCode{c}"), format!("exited with code {c}")),
                None => ("Killed".to_string(), format!("ended by {s}")),
            },
            Err(e) => ("Error".to_string(), format!("could not be waited for: {e}")),
        };
        Failure {
            reason,
            message: format!(
                "Container failed: the process {how} {when}; last stderr:\n{}",
                instance.output.stderr_tail(5)
            ),
        }
    }

    /// Waits until the instance has no request in flight, at most `timeoutSeconds`.
    async fn drain(&self, instance: &Instance) {
        let deadline = Instant::now() + self.timeout();
        loop {
            let idle = instance.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if instance.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                tracing::warn!(revision = %self.key, instance = instance.id, "requests still in flight after timeoutSeconds; stopping anyway");
                return;
            }
        }
    }

    /// SIGTERM, then SIGKILL after the grace.
    async fn terminate(&self, instance: &Instance, child: &mut tokio::process::Child) {
        if let Some(pid) = child.id() {
            signal(pid, Signal::TERM);
        }
        let grace = TERM_GRACE.min(self.timeout());
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            tracing::warn!(revision = %self.key, instance = instance.id, "no exit after SIGTERM; killing");
            if let Some(pid) = child.id() {
                signal(pid, Signal::KILL);
            }
            let _ = child.kill().await;
        }
    }
}

/// How an instance that did not stop on request ended.
enum Ended {
    /// Its process exited on its own (`when`: before it was ready, or while serving).
    Exited(std::io::Result<std::process::ExitStatus>, &'static str),
    Failed(Failure),
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
