//! Durable delivery state: pending retries, Ferry's own dead-letter store, and ordered
//! triggers' attempt counts.
//!
//! Embedded mode: a RocksDB database of its own (`<data-dir>/dispatch`), every write synced.
//! Kafka mode: the compacted topic `ferry-deliveries` (a write counts once Kafka acknowledged
//! it), copied into a local RocksDB (`<data-dir>/dispatch-cache`) that a restart reads on
//! from where it stopped; payloads stay on disk, not in memory.
//!
//! One record per retry (`q` + trigger + id), dead letter (`d` + …) or attempt count
//! (`a` + …); `store/local.rs` derives from them the indexes a scheduler pass and a page of
//! dead letters read. Ids are the event's log position and a hash of its source and id, so an
//! event redelivered after a crash replaces its own retry or dead letter instead of adding a
//! second one. A change touching two records writes the new one first and then deletes the
//! old (dead-lettering a retry; replaying a dead letter), so a crash between the two leaves
//! the event in both places, never in neither. A value is a JSON header (length-prefixed)
//! followed by the event in the log's record encoding, so the event keeps every attribute and
//! data byte.

use broker::kafka::compacted::CompactedTopic;
use broker::{codec, Event};
use bytes::Bytes;
use local::{record_key, Local, ATTEMPTS, DEAD, RETRY};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::{Arc, Mutex};

mod local;

/// The topic holding every trigger's retries and dead letters in Kafka mode.
pub const TOPIC: &str = "ferry-deliveries";
/// Records changed per write when a whole trigger's dead letters are replayed or purged.
const PAGE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("delivery store: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("delivery store: kafka: {0}")]
    Kafka(String),
    #[error("delivery store: corrupt entry: {0}")]
    Corrupt(String),
    #[error("delivery store: {0}")]
    Stopped(String),
    /// A caller's mistake (a page cursor that is not one).
    #[error("{0}")]
    BadRequest(String),
}

impl StoreError {
    /// Whether trying the same write again cannot succeed: it cannot be encoded, or Kafka
    /// refuses its size.
    pub fn is_permanent(&self) -> bool {
        match self {
            StoreError::Corrupt(_) | StoreError::BadRequest(_) => true,
            StoreError::Kafka(m) => m.to_lowercase().contains("too large"),
            StoreError::Db(_) | StoreError::Stopped(_) => false,
        }
    }
}

/// Why an event ended in the dead-letter store (or awaits a retry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// HTTP status of the last attempt, if there was an answer.
    pub code: Option<u16>,
    /// Body of the last answer, base64 (at most 1024 bytes before encoding).
    pub body: String,
    pub message: String,
    /// Attempts made (first try included).
    pub attempts: u32,
    /// RFC 3339 time of the last attempt.
    pub time: String,
    /// Where the last attempt went.
    pub destination: String,
}

/// A delivery waiting for its next attempt.
#[derive(Clone, Debug)]
pub struct Retry {
    pub id: String,
    pub due_ms: u64,
    /// Attempts made so far.
    pub attempts: u32,
    pub event: Event,
    pub last_error: Option<ErrorInfo>,
    /// The subscriber gave up on it: this is a retry of the delivery to the dead-letter sink.
    pub to_sink: bool,
}

/// An event the dispatcher gave up on.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub id: String,
    pub time_ms: u64,
    pub event: Event,
    pub error: ErrorInfo,
}

/// One page of a trigger's dead letters, oldest first.
#[derive(Debug, Default)]
pub struct DeadLetterPage {
    pub items: Vec<DeadLetter>,
    /// Where the next page starts (`after` of the next call); `None` on the last page.
    pub next: Option<String>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Header {
    id: String,
    attempts: u32,
    error: Option<ErrorInfo>,
    /// A dead letter's time.
    #[serde(default)]
    time_ms: u64,
    #[serde(default)]
    to_sink: bool,
    /// A retry's due time.
    #[serde(default)]
    due_ms: u64,
    /// Read from a record of the first layout (an earlier Ferry's), not yet written anew.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    legacy: bool,
}

fn encode(header: &Header, event: &Event) -> Result<Vec<u8>, StoreError> {
    let header = serde_json::to_vec(header).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let record = codec::encode(event, 0);
    let mut v = Vec::with_capacity(4 + header.len() + record.len());
    v.extend_from_slice(&(header.len() as u32).to_le_bytes());
    v.extend_from_slice(&header);
    v.extend_from_slice(&record);
    Ok(v)
}

/// A value's header and where the event starts.
fn split_value(v: &[u8]) -> Result<(Header, usize), StoreError> {
    let len = v
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| StoreError::Corrupt("short value".into()))? as usize;
    let header_bytes = v
        .get(4..4 + len)
        .ok_or_else(|| StoreError::Corrupt("short header".into()))?;
    let header: Header =
        serde_json::from_slice(header_bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok((header, 4 + len))
}

pub(crate) fn decode_header(v: &[u8]) -> Result<Header, StoreError> {
    Ok(split_value(v)?.0)
}

fn decode(v: &[u8]) -> Result<(Header, Event), StoreError> {
    let (header, at) = split_value(v)?;
    let (event, _) = codec::decode(Bytes::copy_from_slice(&v[at..]))
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok((header, event))
}

/// A value with its header's due time set (records of the first layout kept it in the key).
pub(crate) fn with_due(v: &[u8], due_ms: u64) -> Result<Vec<u8>, StoreError> {
    let (mut header, at) = split_value(v)?;
    header.due_ms = due_ms;
    header.legacy = true;
    rewrite(header, v, at)
}

/// A value with a new header before the event that starts at `at`.
fn rewrite(header: Header, v: &[u8], at: usize) -> Result<Vec<u8>, StoreError> {
    let header = serde_json::to_vec(&header).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let mut out = Vec::with_capacity(4 + header.len() + v.len() - at);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&v[at..]);
    Ok(out)
}

/// The partition a delivery id (`partition-offset-hash`) names; 0 if none.
pub(crate) fn partition_of(id: &str) -> u32 {
    id.split('-')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

fn retry_value(r: &Retry) -> Result<Vec<u8>, StoreError> {
    encode(
        &Header {
            id: r.id.clone(),
            attempts: r.attempts,
            error: r.last_error.clone(),
            time_ms: 0,
            to_sink: r.to_sink,
            due_ms: r.due_ms,
            legacy: false,
        },
        &r.event,
    )
}

type Ops = Vec<(Vec<u8>, Option<Vec<u8>>)>;

enum Backend {
    Local,
    Kafka(CompactedTopic<Local>),
}

pub struct DeliveryStore {
    local: Arc<Local>,
    backend: Backend,
    /// Why the last write failed, until one succeeds.
    failing: Mutex<Option<String>>,
}

impl DeliveryStore {
    /// On RocksDB (`<data-dir>/dispatch`), every write synced.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            local: Arc::new(Local::open(path, true)?),
            backend: Backend::Local,
            failing: Mutex::default(),
        })
    }

    /// On Kafka's compacted topic `ferry-deliveries`, copied into `cache` (a directory of
    /// this node's), read on from where the copy stopped.
    pub async fn kafka(options: &broker::KafkaOptions, cache: &Path) -> Result<Self, StoreError> {
        let local = Arc::new(Local::open(cache, false)?);
        let topic = CompactedTopic::open_into(options, TOPIC, true, local.clone())
            .await
            .map_err(|e| StoreError::Kafka(e.to_string()))?;
        let store = Self {
            local,
            backend: Backend::Kafka(topic),
            failing: Mutex::default(),
        };
        store.rewrite_legacy().await?;
        Ok(store)
    }

    /// Writes the retries read from an earlier Ferry's records (`r` + trigger + due + id, with
    /// an `i` index) into the topic in this layout, then deletes the old records from it, so
    /// that a node reading the topic later finds each retry once, in this layout.
    async fn rewrite_legacy(&self) -> Result<(), StoreError> {
        loop {
            let legacy = self.local.legacy(PAGE)?;
            if legacy.is_empty() {
                return Ok(());
            }
            let mut puts = Vec::new();
            let mut deletes = Vec::new();
            for (k, old) in &legacy {
                if let Some(v) = self.local.get(k)? {
                    let (mut header, at) = split_value(&v)?;
                    if header.legacy {
                        header.legacy = false;
                        puts.push((k.clone(), Some(rewrite(header, &v, at)?)));
                    }
                }
                deletes.push((old.clone(), None));
                if let Some(i) = local::legacy_index_key(old) {
                    deletes.push((i, None));
                }
            }
            puts.extend(deletes);
            // Straight to the topic: `write` would add the same deletes again.
            if let Backend::Kafka(topic) = &self.backend {
                topic
                    .write(puts)
                    .await
                    .map_err(|e| StoreError::Kafka(e.to_string()))?;
            }
            for (k, old) in &legacy {
                self.local.forget_legacy(k, old)?;
            }
            tracing::info!(
                retries = legacy.len(),
                "retries of an earlier Ferry rewritten in ferry-deliveries"
            );
        }
    }

    /// Applies changes durably, in order. Never blocks a runtime thread: RocksDB's synced
    /// write runs on the blocking pool; Kafka's is awaited.
    async fn write(&self, ops: Ops) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let result = match &self.backend {
            Backend::Local => {
                let local = self.local.clone();
                tokio::task::spawn_blocking(move || local.apply(&ops, None).map(|_| ()))
                    .await
                    .unwrap_or_else(|e| Err(StoreError::Stopped(e.to_string())))
            }
            Backend::Kafka(topic) => {
                // A retry this node read from an earlier Ferry's record: its old records go
                // from the topic with this change (else a node reading the topic from the
                // start, once compaction dropped this change's tombstone, would find it).
                let mut ops = ops;
                let mut legacy = Vec::new();
                for (k, _) in &ops {
                    if k.first() == Some(&RETRY) {
                        if let Some(old) = self.local.legacy_of(k)? {
                            legacy.push((k.clone(), old));
                        }
                    }
                }
                for (_, old) in &legacy {
                    ops.push((old.clone(), None));
                    ops.extend(local::legacy_index_key(old).map(|i| (i, None)));
                }
                let written = topic
                    .write(ops)
                    .await
                    .map_err(|e| StoreError::Kafka(e.to_string()));
                if written.is_ok() {
                    for (k, old) in &legacy {
                        self.local.forget_legacy(k, old)?;
                    }
                }
                written
            }
        };
        if let Ok(mut failing) = self.failing.lock() {
            *failing = result.as_ref().err().map(ToString::to_string);
        }
        result
    }

    /// Why the store refuses writes, while it does (the last write failed).
    pub fn failing(&self) -> Option<String> {
        self.failing.lock().ok().and_then(|f| f.clone())
    }

    /// Tries a write (of a key no one reads, a new value each time, so that something is
    /// written): true once the store takes writes again.
    pub async fn probe(&self) -> bool {
        let now = chrono::Utc::now().timestamp_millis().to_be_bytes().to_vec();
        self.write(vec![(b"~probe".to_vec(), Some(now))])
            .await
            .is_ok()
    }

    /// Whether an event with this id already waits in the retry queue or the dead-letter store
    /// (it was read before a crash, and handed over before its offset was committed).
    pub fn known(&self, trigger: &str, id: &str) -> Result<bool, StoreError> {
        Ok(self.local.get(&record_key(RETRY, trigger, id))?.is_some()
            || self.local.get(&record_key(DEAD, trigger, id))?.is_some())
    }

    /// Attempts already made at an event an ordered trigger is working on (it waits in place,
    /// not in the queue): kept so a crash does not restart the count.
    pub fn attempts(&self, trigger: &str, id: &str) -> Result<u32, StoreError> {
        Ok(self
            .local
            .get(&record_key(ATTEMPTS, trigger, id))?
            .and_then(|v| v.as_slice().try_into().ok().map(u32::from_be_bytes))
            .unwrap_or(0))
    }

    /// Records (`Some`) or forgets (`None`) an ordered trigger's attempts at an event.
    pub async fn set_attempts(
        &self,
        trigger: &str,
        id: &str,
        attempts: Option<u32>,
    ) -> Result<(), StoreError> {
        let k = record_key(ATTEMPTS, trigger, id);
        self.write(vec![(k, attempts.map(|n| n.to_be_bytes().to_vec()))])
            .await
    }

    /// The due time of the retry with this id, if one is queued.
    pub fn retry_due(&self, trigger: &str, id: &str) -> Result<Option<u64>, StoreError> {
        self.local
            .get(&record_key(RETRY, trigger, id))?
            .map(|v| decode_header(&v).map(|h| h.due_ms))
            .transpose()
    }

    /// Stores a retry, replacing any queued under the same id (one record: nothing to order).
    pub async fn put_retry(&self, trigger: &str, retry: &Retry) -> Result<(), StoreError> {
        let k = record_key(RETRY, trigger, &retry.id);
        self.write(vec![(k, Some(retry_value(retry)?))]).await
    }

    pub async fn remove_retry(&self, trigger: &str, id: &str) -> Result<(), StoreError> {
        self.write(vec![(record_key(RETRY, trigger, id), None)])
            .await
    }

    /// Up to `limit` retries of `trigger` due by `now_ms` whose partition `owns` accepts,
    /// earliest first, and when the next of the rest is due. Reads only what is due.
    pub fn due_retries(
        &self,
        trigger: &str,
        now_ms: u64,
        limit: usize,
        owns: &dyn Fn(u32) -> bool,
    ) -> Result<(Vec<Retry>, Option<u64>), StoreError> {
        let (due, next) = self.local.due(trigger, now_ms, limit, owns)?;
        let mut out = Vec::with_capacity(due.len());
        for d in due {
            let Some(v) = self.local.get(&record_key(RETRY, trigger, &d.id))? else {
                continue;
            };
            match decode(&v) {
                Ok((h, event)) => out.push(Retry {
                    id: h.id,
                    due_ms: h.due_ms,
                    attempts: h.attempts,
                    event,
                    last_error: h.error,
                    to_sink: h.to_sink,
                }),
                Err(e) => {
                    tracing::error!(trigger, id = %d.id, error = %e, "skipping a corrupt retry record")
                }
            }
        }
        Ok((out, next))
    }

    /// Retries of `trigger`, earliest due first, at most `limit`.
    pub fn retries(&self, trigger: &str, limit: usize) -> Result<Vec<Retry>, StoreError> {
        Ok(self.due_retries(trigger, u64::MAX, limit, &|_| true)?.0)
    }

    /// Keeps an event in the dead-letter store (replacing one with the same id), then drops
    /// its queued retry, if any.
    pub async fn put_dead_letter(&self, trigger: &str, dl: &DeadLetter) -> Result<(), StoreError> {
        let value = encode(
            &Header {
                id: dl.id.clone(),
                attempts: dl.error.attempts,
                error: Some(dl.error.clone()),
                time_ms: dl.time_ms,
                to_sink: false,
                due_ms: 0,
                legacy: false,
            },
            &dl.event,
        )?;
        let mut ops = vec![(record_key(DEAD, trigger, &dl.id), Some(value))];
        if self.retry_due(trigger, &dl.id)?.is_some() {
            ops.push((record_key(RETRY, trigger, &dl.id), None));
        }
        self.write(ops).await
    }

    fn dead_letter(&self, trigger: &str, id: &str) -> Result<Option<DeadLetter>, StoreError> {
        let Some(v) = self.local.get(&record_key(DEAD, trigger, id))? else {
            return Ok(None);
        };
        let (h, event) = decode(&v)?;
        Ok(h.error.map(|error| DeadLetter {
            id: h.id,
            time_ms: h.time_ms,
            event,
            error,
        }))
    }

    /// Up to `limit` of a trigger's dead letters, oldest first, after the page that ended at
    /// `after` (a page's `next`).
    pub fn dead_letters(
        &self,
        trigger: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<DeadLetterPage, StoreError> {
        let after = after.map(cursor_bytes).transpose()?;
        let entries =
            self.local
                .index_page(trigger, after.as_deref(), None, limit.saturating_add(1))?;
        let more = entries.len() > limit;
        let mut page = DeadLetterPage::default();
        for (time, id) in entries.into_iter().take(limit) {
            if let Some(dl) = self.dead_letter(trigger, &id)? {
                page.items.push(dl);
            }
            if more {
                page.next = Some(format!("{time}.{id}"));
            }
        }
        Ok(page)
    }

    /// Moves a dead letter (by id) or all of them back to the retry queue, due now with a
    /// fresh attempt count: each retry is written before its dead letter is deleted. Returns
    /// how many.
    pub async fn replay(
        &self,
        trigger: &str,
        id: Option<&str>,
        now_ms: u64,
    ) -> Result<usize, StoreError> {
        let replay = |dls: Vec<DeadLetter>| -> Result<Ops, StoreError> {
            let mut puts = Vec::with_capacity(dls.len() * 2);
            let mut deletes = Vec::with_capacity(dls.len());
            for dl in dls {
                let retry = Retry {
                    id: dl.id.clone(),
                    due_ms: now_ms,
                    attempts: 0,
                    event: dl.event,
                    last_error: None,
                    to_sink: false,
                };
                puts.push((
                    record_key(RETRY, trigger, &dl.id),
                    Some(retry_value(&retry)?),
                ));
                deletes.push((record_key(DEAD, trigger, &dl.id), None));
            }
            puts.extend(deletes);
            Ok(puts)
        };
        if let Some(id) = id {
            let Some(dl) = self.dead_letter(trigger, id)? else {
                return Ok(0);
            };
            self.write(replay(vec![dl])?).await?;
            return Ok(1);
        }
        let mut n = 0;
        loop {
            // Each page replayed leaves the store, so the next page starts at the front.
            let page = self.dead_letters(trigger, None, PAGE)?;
            if page.items.is_empty() {
                return Ok(n);
            }
            n += page.items.len();
            self.write(replay(page.items)?).await?;
        }
    }

    /// Deletes a trigger's dead letters (and, with `retries`, its pending retries and attempt
    /// counts), a page at a time. Returns how many dead letters.
    pub async fn purge(&self, trigger: &str, retries: bool) -> Result<usize, StoreError> {
        let tags: &[u8] = if retries {
            &[DEAD, RETRY, ATTEMPTS]
        } else {
            &[DEAD]
        };
        let mut n = 0;
        for &tag in tags {
            loop {
                let keys = self.local.record_keys(tag, trigger, PAGE)?;
                if keys.is_empty() {
                    break;
                }
                if tag == DEAD {
                    n += keys.len();
                }
                self.write(keys.into_iter().map(|k| (k, None)).collect())
                    .await?;
            }
        }
        Ok(n)
    }

    /// Deletes dead letters kept since before `cutoff_ms` (every trigger's), a page at a time.
    /// Returns how many.
    pub async fn expire_dead_letters(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
        let mut n = 0;
        for trigger in self.local.dead_letter_triggers()? {
            loop {
                let old = self
                    .local
                    .index_page(&trigger, None, Some(cutoff_ms), PAGE)?;
                if old.is_empty() {
                    break;
                }
                n += old.len();
                let ops = old
                    .into_iter()
                    .map(|(_, id)| (record_key(DEAD, &trigger, &id), None))
                    .collect();
                self.write(ops).await?;
            }
        }
        Ok(n)
    }

    /// (retries queued, dead letters kept) of a trigger.
    pub fn counts(&self, trigger: &str) -> (u64, u64) {
        self.local.counts(trigger)
    }
}

/// A page cursor (`time.id`) as the index's key rest (time, BE, then id).
fn cursor_bytes(cursor: &str) -> Result<Vec<u8>, StoreError> {
    let bad = || StoreError::BadRequest(format!("not a dead-letter page cursor: {cursor:?}"));
    let (time, id) = cursor.split_once('.').ok_or_else(bad)?;
    let time: u64 = time.parse().map_err(|_| bad())?;
    let mut out = time.to_be_bytes().to_vec();
    out.extend_from_slice(id.as_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests;
