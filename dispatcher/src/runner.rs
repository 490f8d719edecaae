//! One trigger at work: read the broker, filter, deliver, settle, commit.
//!
//! - Unordered (default): up to `max_in_flight` deliveries at once; a failed attempt that may
//!   be retried goes to the durable retry queue and is settled, so it holds back neither the
//!   other events nor the committed offset. A scheduler re-attempts due retries.
//! - Ordered: one worker per partition; an event finishes (success, retries, dead letter)
//!   before the next of its partition starts. Retries wait in place; the offset stays
//!   unsettled meanwhile, so a crash redelivers the event.
//!
//! `retry.rs` holds the durable retry queue, `dead_letter.rs` giving up on an event,
//! `commit.rs` the commit of settled offsets and the trigger's gauges, `down.rs` telling a
//! subscriber that is down.
//!
//! Stopping: polling and scheduling stop at once; in-flight deliveries get the grace period
//! to finish, then are abandoned (their events stay unsettled and come again); the settled
//! watermark is committed last.

mod attempt;
mod commit;
mod dead_letter;
mod down;
mod retry;

use crate::filter::Filter;
use crate::metrics::DispatchMetrics;
use crate::offsets::Offsets;
use crate::policy::DeliveryPolicy;
use crate::store::DeliveryStore;
use crate::subscriber::{Failure, Subscriber};
use broker::{Event, EventLog, Position, Publisher, StartAt, Stored, Topic};
use dead_letter::SinkRetries;
use down::DOWN_PROBE;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Loop guard (I-11): replies carry `knativebrokerttl`, one less each time round.
pub use cloudevent::ext::{BROKER_TTL as TTL, MAX_TTL};
const POLL_MAX: usize = 256;
const POLL_WAIT: Duration = Duration::from_millis(200);
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);
const ORDERED_QUEUE: usize = 256;

/// Everything a trigger needs to run, compiled from its resource.
pub struct TriggerSpec {
    pub namespace: String,
    pub name: String,
    pub topic: Topic,
    pub filter: Filter,
    pub subscriber: Arc<dyn Subscriber>,
    pub dead_letter: Option<Arc<dyn Subscriber>>,
    pub policy: DeliveryPolicy,
    pub ordered: bool,
    pub max_in_flight: usize,
    /// Where the events come from: `None`, the broker's log (a trigger); else another log (a
    /// KafkaSource's topic), whose subscriber's replies are not kept.
    pub feed: Option<Feed>,
    /// Which resource this is (its uid): a runner of an earlier resource of the same name
    /// (deleted and made again) is replaced without its last commit, which would move the new
    /// one's offsets back.
    pub instance: String,
}

/// A log other than the dispatcher's own, read as a consumer group's member.
pub struct Feed {
    pub log: Arc<dyn EventLog>,
    pub group: String,
    /// Where a group without committed offsets starts.
    pub start: StartAt,
}

impl TriggerSpec {
    /// `namespace/name`, the trigger's key in the delivery store.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The consumer group (K-05), or the feed's.
    pub fn group(&self) -> String {
        match &self.feed {
            Some(f) => f.group.clone(),
            None => group(&self.namespace, &self.name),
        }
    }
}

/// A trigger's consumer group: Knative's `knative-trigger-{namespace}-{name}` with the
/// namespace escaped as broker topics are ([`broker::kafka::escaped_namespace`]), so no two
/// triggers share a group.
pub fn group(namespace: &str, name: &str) -> String {
    format!(
        "knative-trigger-{}-{name}",
        broker::kafka::escaped_namespace(namespace)
    )
}

/// The group an earlier Ferry gave a trigger (ambiguous when the namespace has a `-`): its
/// committed offsets are carried over to [`group`] once.
pub fn legacy_group(namespace: &str, name: &str) -> String {
    format!("knative-trigger-{namespace}-{name}")
}

/// A delivery's id: the event's log position and a hash of its `source` and `id`, so a
/// redelivery after a crash is recognised, and a re-created broker's events (offsets start
/// again at 0) are not mistaken for old ones.
fn delivery_id(stored: &Stored) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in ["source", "id"] {
        for b in stored
            .event
            .attr_text(part)
            .unwrap_or_default()
            .bytes()
            .chain([0])
        {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!(
        "{}-{}-{h:016x}",
        stored.position.partition, stored.position.offset
    )
}

pub(crate) use crate::clock::now_ms;

fn now_rfc3339() -> String {
    crate::clock::now_utc().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub(crate) struct Runner {
    spec: Arc<TriggerSpec>,
    key: String,
    /// Where the events come from: the broker's log, or a feed's.
    log: Arc<dyn EventLog>,
    /// Where replies go.
    publisher: Arc<Publisher>,
    store: Arc<DeliveryStore>,
    metrics: DispatchMetrics,
    offsets: Mutex<Offsets>,
    /// Woken when a retry is stored, so the scheduler looks again.
    retry_wake: Notify,
    /// The partitions this node delivers for the trigger; `None`: all of them (embedded mode).
    /// In Kafka mode the consumer group shares them among the nodes, and a node re-attempts
    /// only the retries of the partitions it holds.
    owned: Mutex<Option<HashSet<u32>>>,
    /// Per partition, how many times it was taken from this node: an ordered worker started
    /// before the last time stops (its partition may be back, with a new worker).
    epochs: Mutex<HashMap<u32, u64>>,
    /// Partitions taken from this node since the run loop last looked.
    revoked: Mutex<Vec<u32>>,
    /// Retries being attempted now (their records stay in the store until settled).
    retrying: Mutex<HashSet<String>>,
    permits: Arc<Semaphore>,
    tasks: TaskTracker,
    /// Stop reading and scheduling.
    stop: CancellationToken,
    /// Abandon in-flight attempts (after the grace period).
    abort: CancellationToken,
    /// Set when the runner is replaced by another instance: no last commit.
    pub(crate) superseded: std::sync::atomic::AtomicBool,
    /// Attempts in a row the subscriber answered with a retryable failure (5xx, 429, timeout,
    /// no connection); any other answer resets it. From `down::DOWN_AFTER` on, the subscriber
    /// counts as down (see `down`).
    failing_streak: std::sync::atomic::AtomicU32,
    /// When the last retryable failure happened (ms).
    last_failure_ms: std::sync::atomic::AtomicU64,
    /// While writes to the delivery store fail: the last error, and since when.
    store_trouble: Mutex<Option<StoreTrouble>>,
    /// The group's committed offsets, for the lag of partitions this node holds and has not
    /// read yet: asked for once (in Kafka mode each question is a client of its own), again
    /// after the partitions this node holds change. Nothing else commits them meanwhile.
    unread_committed: Mutex<Option<Vec<Option<u64>>>>,
}

/// A trigger's writes to the delivery store failing (shown in its status while they do).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreTrouble {
    /// The last failed write's error.
    pub error: String,
    /// When the first of the failures in a row happened.
    pub since: chrono::DateTime<chrono::Utc>,
}

/// What one attempt came to, after the reply (if any) was stored.
enum Attempt {
    Done,
    Retry(Failure),
    Fail(Failure),
    Abandoned,
}

impl Runner {
    pub(crate) fn new(
        spec: TriggerSpec,
        publisher: Arc<Publisher>,
        store: Arc<DeliveryStore>,
        metrics: DispatchMetrics,
        stop: CancellationToken,
    ) -> Arc<Self> {
        let permits = Arc::new(Semaphore::new(spec.max_in_flight.max(1)));
        let log = spec
            .feed
            .as_ref()
            .map_or_else(|| publisher.log().clone(), |f| f.log.clone());
        Arc::new(Self {
            key: spec.key(),
            spec: Arc::new(spec),
            log,
            publisher,
            store,
            metrics,
            offsets: Mutex::new(Offsets::default()),
            owned: Mutex::new(None),
            epochs: Mutex::new(HashMap::new()),
            revoked: Mutex::new(Vec::new()),
            retry_wake: Notify::new(),
            retrying: Mutex::new(HashSet::new()),
            permits,
            tasks: TaskTracker::new(),
            stop,
            abort: CancellationToken::new(),
            superseded: std::sync::atomic::AtomicBool::new(false),
            failing_streak: std::sync::atomic::AtomicU32::new(0),
            last_failure_ms: std::sync::atomic::AtomicU64::new(0),
            store_trouble: Mutex::new(None),
            unread_committed: Mutex::new(None),
        })
    }

    /// While the trigger's writes to the delivery store fail: why, and since when.
    pub(crate) fn store_trouble(&self) -> Option<StoreTrouble> {
        self.store_trouble
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records a store write's outcome: `Some(error)` failed, `None` succeeded.
    fn store_written(&self, error: Option<String>) {
        let mut trouble = self.store_trouble.lock().unwrap_or_else(|p| p.into_inner());
        *trouble = error.map(|error| StoreTrouble {
            error,
            since: trouble
                .as_ref()
                .map_or_else(crate::clock::now_utc, |t| t.since),
        });
    }

    pub(crate) fn instance(&self) -> &str {
        &self.spec.instance
    }

    fn labels(&self) -> [&str; 2] {
        [&self.spec.namespace, &self.spec.name]
    }

    fn offsets(&self) -> std::sync::MutexGuard<'_, Offsets> {
        self.offsets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this node delivers `partition`'s events now.
    pub(crate) fn owns(&self, partition: u32) -> bool {
        self.owned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_none_or(|o| o.contains(&partition))
    }

    fn epoch(&self, partition: u32) -> u64 {
        self.epochs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&partition)
            .copied()
            .unwrap_or(0)
    }

    /// Whether this node re-attempts the retry with delivery id `id`.
    pub(crate) fn owns_delivery(&self, id: &str) -> bool {
        self.owns(crate::store::partition_of(id))
    }

    fn set_owned(&self, assignment: Option<Vec<u32>>) {
        let count = assignment.as_ref().map(Vec::len);
        let owned: Option<HashSet<u32>> = assignment.map(|a| a.into_iter().collect());
        let mut current = self.owned.lock().unwrap_or_else(|p| p.into_inner());
        if *current != owned {
            *current = owned;
            *self
                .unread_committed
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = None;
        }
        if let Some(n) = count {
            self.metrics
                .partitions
                .with_label_values(&self.labels())
                .set(n as i64);
        }
    }

    /// Partitions going to another node (Kafka mode): returns their settled prefix, to commit
    /// before they go. Events of theirs still in flight here are the next owner's to deliver:
    /// ordered workers of these partitions stop (epoch), the run loop drops their queues.
    fn revoke(&self, partitions: &[u32]) -> Vec<Position> {
        if let Some(owned) = self
            .owned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            for p in partitions {
                owned.remove(p);
            }
        }
        {
            let mut epochs = self.epochs.lock().unwrap_or_else(|p| p.into_inner());
            for p in partitions {
                *epochs.entry(*p).or_default() += 1;
            }
        }
        self.revoked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(partitions);
        let released = self.offsets().release(partitions);
        // A runner replaced by a new instance of its trigger commits nothing more: its offsets
        // would move the new one's back.
        if self.superseded.load(std::sync::atomic::Ordering::Acquire) {
            Vec::new()
        } else {
            released
        }
    }

    /// Runs until `stop`, then drains (up to `grace`) and commits.
    pub(crate) async fn run(self: Arc<Self>, grace: Duration) {
        let group = self.spec.group();
        let start = self.spec.feed.as_ref().map_or(StartAt::Latest, |f| f.start);
        let mut consumer = loop {
            match self.log.group_member(&self.spec.topic, &group, start).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(trigger = %self.key, error = %e, "cannot read the broker; trying again");
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        let me = self.clone();
        consumer.on_revoke(Arc::new(move |partitions: &[u32]| me.revoke(partitions)));
        self.set_owned(consumer.assignment());
        if consumer.assignment().is_none() {
            if let Ok(marks) = self.log.watermarks(&self.spec.topic).await {
                self.metrics
                    .partitions
                    .with_label_values(&self.labels())
                    .set(marks.len() as i64);
            }
        }
        // Ordered triggers have no retries of their own in the queue, but replayed dead
        // letters and retries left by an earlier unordered version of the trigger go there.
        let me = self.clone();
        self.tasks.spawn(async move { me.schedule_retries().await });
        let mut ordered: HashMap<u32, mpsc::Sender<Stored>> = HashMap::new();
        // Ordered: events of a partition whose worker's queue is full wait here, and the
        // partition is paused meanwhile, so a partition stuck in retries holds up no other.
        let mut held: HashMap<u32, std::collections::VecDeque<Stored>> = HashMap::new();
        // Unordered: events read while the subscriber is down, waiting for probes.
        let mut parked: std::collections::VecDeque<Stored> = std::collections::VecDeque::new();
        let mut last_commit = Instant::now();
        'poll: while !self.stop.is_cancelled() {
            held.retain(|&partition, queue| {
                let Some(tx) = ordered.get(&partition) else {
                    return false;
                };
                while let Some(stored) = queue.pop_front() {
                    if let Err(e) = tx.try_send(stored) {
                        if let mpsc::error::TrySendError::Full(stored) = e {
                            queue.push_front(stored);
                        }
                        return true;
                    }
                }
                consumer.resume(partition);
                false
            });
            // A subscriber that is down gets one of the events read (and parked) per probe
            // period; once it answers, the parked ones go at once.
            let down = self.down() && !self.spec.ordered;
            if down && !parked.is_empty() {
                tokio::select! {
                    _ = self.stop.cancelled() => break 'poll,
                    _ = tokio::time::sleep(DOWN_PROBE) => {}
                }
                if let Some(stored) = parked.pop_front() {
                    if !self.start_first_attempt(stored).await {
                        break 'poll;
                    }
                }
                if last_commit.elapsed() >= COMMIT_INTERVAL {
                    self.commit(consumer.as_mut()).await;
                    last_commit = Instant::now();
                }
                continue 'poll;
            }
            while let Some(stored) = parked.pop_front() {
                if !self.start_first_attempt(stored).await {
                    break 'poll;
                }
            }
            // `poll` is not cancelled mid-way (it is not cancel-safe); it returns within POLL_WAIT.
            // The filter runs where the events are: an event it passes over is not copied.
            let filter = &self.spec.filter;
            let polled = consumer
                .poll_where(POLL_MAX, POLL_WAIT, &|e| filter.matches(e))
                .await;
            let batch = match polled {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(trigger = %self.key, error = %e, "reading the broker failed");
                    tokio::select! {
                        _ = self.stop.cancelled() => break 'poll,
                        _ = tokio::time::sleep(POLL_WAIT) => continue 'poll,
                    }
                }
            };
            // The partitions held may have changed during the poll (Kafka mode). A revoked
            // partition's worker and held events go (its next owner delivers them), and it is
            // resumed, so that it is not still paused if it comes back.
            let assignment = consumer.assignment();
            if assignment.is_some() {
                self.set_owned(assignment);
                let revoked =
                    std::mem::take(&mut *self.revoked.lock().unwrap_or_else(|p| p.into_inner()));
                parked.retain(|s| !revoked.contains(&s.position.partition));
                for p in revoked {
                    ordered.remove(&p);
                    if held.remove(&p).is_some() {
                        consumer.resume(p);
                    }
                }
            }
            let skipped = consumer.take_skipped();
            if skipped > 0 {
                self.metrics
                    .retention_skipped
                    .with_label_values(&self.labels())
                    .inc_by(skipped);
                tracing::warn!(trigger = %self.key, skipped, "retention removed events before this trigger read them: they will not be delivered");
            }
            // What matched is in flight; everything else read is settled (filtered out).
            {
                let mut offsets = self.offsets();
                for stored in &batch {
                    offsets.polled(stored.position);
                }
                for position in consumer.positions() {
                    offsets.read_up_to(position);
                }
            }
            for stored in batch {
                if self.spec.ordered {
                    let partition = stored.position.partition;
                    if let Some(queue) = held.get_mut(&partition) {
                        queue.push_back(stored);
                        continue;
                    }
                    let tx = ordered.entry(partition).or_insert_with(|| {
                        let (tx, rx) = mpsc::channel(ORDERED_QUEUE);
                        let me = self.clone();
                        let epoch = self.epoch(partition);
                        self.tasks
                            .spawn(async move { me.ordered_worker(rx, partition, epoch).await });
                        tx
                    });
                    match tx.try_send(stored) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(stored)) => {
                            held.entry(partition).or_default().push_back(stored);
                            consumer.pause(partition);
                        }
                        // The worker stopped (the trigger is stopping).
                        Err(mpsc::error::TrySendError::Closed(_)) => break 'poll,
                    }
                } else if self.down() {
                    parked.push_back(stored);
                } else if !self.start_first_attempt(stored).await {
                    break 'poll;
                }
            }
            if last_commit.elapsed() >= COMMIT_INTERVAL {
                self.commit(consumer.as_mut()).await;
                last_commit = Instant::now();
            }
        }
        drop(ordered);
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(trigger = %self.key, "in-flight deliveries did not finish in the grace period; abandoning them");
            self.abort.cancel();
            self.tasks.wait().await;
        }
        if !self.superseded.load(std::sync::atomic::Ordering::Acquire) {
            self.commit(consumer.as_mut()).await;
        }
        self.metrics
            .partitions
            .with_label_values(&self.labels())
            .set(0);
    }

    /// Starts an unordered event's first attempt within the in-flight limit. False if the
    /// trigger stops first (the event stays unsettled and is read again after a restart).
    async fn start_first_attempt(self: &Arc<Self>, stored: Stored) -> bool {
        let permit = tokio::select! {
            p = self.permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return false },
            _ = self.stop.cancelled() => return false,
        };
        let me = self.clone();
        self.tasks.spawn(async move {
            me.first_attempt(stored).await;
            drop(permit);
        });
        true
    }

    /// The first attempt of an event read from the broker (unordered mode).
    async fn first_attempt(self: Arc<Self>, stored: Stored) {
        let id = delivery_id(&stored);
        // Read again after a crash, but already handed to the retry queue or the dead-letter
        // store: that copy goes on from where it was.
        match self.store.known(&self.key, &id) {
            Ok(true) => {
                self.offsets().settled(stored.position);
                return;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(trigger = %self.key, error = %e, "cannot look up the retry queue")
            }
        }
        let settled = match self.attempt(&stored.event, 1).await {
            Attempt::Done => true,
            Attempt::Abandoned => false,
            // Its partition went to another node meanwhile: that node reads the event again
            // and owns its retries; writing them here too would race it.
            _ if !self.owns(stored.position.partition) => false,
            Attempt::Retry(f) if self.spec.policy.retry >= 1 => {
                let info = self.error_info(&f, 1);
                self.queue_retry(
                    id,
                    Event::clone(&stored.event),
                    1,
                    f.retry_after,
                    info,
                    false,
                )
                .await
            }
            Attempt::Retry(f) | Attempt::Fail(f) => {
                self.dead_letter(&id, &stored.event, f, 1, SinkRetries::Queued)
                    .await
            }
        };
        if settled {
            self.offsets().settled(stored.position);
        }
    }

    /// Ordered mode: one partition's events, one at a time. The attempts made at the event in
    /// hand are on disk, so a crash does not restart its count.
    /// It stops when its partition goes to another node (`epoch` is passed), which delivers
    /// what it had not finished.
    async fn ordered_worker(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<Stored>,
        partition: u32,
        epoch: u64,
    ) {
        let mine = || self.epoch(partition) == epoch && self.owns(partition);
        while let Some(stored) = rx.recv().await {
            if !mine() {
                return;
            }
            let id = delivery_id(&stored);
            let mut attempts = self.store.attempts(&self.key, &id).unwrap_or(0);
            let settled = loop {
                if !mine() {
                    return;
                }
                attempts += 1;
                let attempt = self.attempt(&stored.event, attempts).await;
                if !mine() {
                    return;
                }
                match attempt {
                    Attempt::Done => break true,
                    Attempt::Abandoned => break false,
                    Attempt::Retry(f) if attempts <= self.spec.policy.retry => {
                        self.metrics.retries.with_label_values(&self.labels()).inc();
                        if let Err(e) = self
                            .store
                            .set_attempts(&self.key, &id, Some(attempts))
                            .await
                        {
                            tracing::warn!(trigger = %self.key, error = %e, "cannot record the attempt count");
                        }
                        let wait = self.spec.policy.wait_before(attempts, f.retry_after);
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = self.stop.cancelled() => break false,
                        }
                    }
                    Attempt::Retry(f) | Attempt::Fail(f) => {
                        break self
                            .dead_letter(&id, &stored.event, f, attempts, SinkRetries::InPlace)
                            .await
                    }
                }
            };
            if !settled {
                return;
            }
            if attempts > 1 {
                if let Err(e) = self.store.set_attempts(&self.key, &id, None).await {
                    tracing::warn!(trigger = %self.key, error = %e, "cannot forget the attempt count");
                }
            }
            self.offsets().settled(stored.position);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_groups_are_knatives_where_unambiguous_and_never_shared() {
        assert_eq!(group("shop", "orders-eu"), "knative-trigger-shop-orders-eu");
        // One group in Knative's scheme, two here.
        assert_eq!(legacy_group("a-b", "c"), legacy_group("a", "b-c"));
        assert_ne!(group("a-b", "c"), group("a", "b-c"));
        assert_eq!(group("a-b", "c"), "knative-trigger-a_b-c");
        // Every pair of these distinct triggers gets a distinct group.
        let triggers = [
            ("a", "b-c"),
            ("a-b", "c"),
            ("a-b-c", "d"),
            ("a", "b-c-d"),
            ("a-b", "c-d"),
            ("ab", "c"),
            ("a", "bc"),
        ];
        let groups: HashSet<String> = triggers.iter().map(|(n, t)| group(n, t)).collect();
        assert_eq!(groups.len(), triggers.len());
    }
}
