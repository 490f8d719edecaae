//! One instance's life: its process started, probed until ready (fast at first), serving until
//! told to stop or it exits; a stop drains in-flight requests, then SIGTERM, then SIGKILL; a
//! failure is counted, its last stderr kept, and the next start backed off.

use super::{Failure, Instance, Pool, GONE, PAST_OUTPUTS, READY, STARTING};
use control::process::signal_group;
use rustix::process::Signal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

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
/// Restart backoff: from this, doubling, at most `BACKOFF_MAX`.
pub(super) const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// After SIGTERM, how long an instance has before SIGKILL (at most; `timeoutSeconds` if less).
const TERM_GRACE: Duration = Duration::from_secs(10);
/// How long a dead instance's output is read on before its failure is reported.
const OUTPUT_WAIT: Duration = Duration::from_secs(1);

impl Pool {
    /// One instance's life: start, probe until ready, serve until told to stop or it exits.
    pub(super) async fn run(self: Arc<Self>, instance: Arc<Instance>) {
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
            signal_group(pid, Signal::TERM);
        }
        let grace = TERM_GRACE.min(self.timeout());
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            tracing::warn!(revision = %self.key, instance = instance.id, "no exit after SIGTERM; killing");
            if let Some(pid) = child.id() {
                signal_group(pid, Signal::KILL);
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
