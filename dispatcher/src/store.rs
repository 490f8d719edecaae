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
            self.write(puts).await?;
            for (k, _) in &legacy {
                self.local.forget_legacy(k)?;
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
            Backend::Kafka(topic) => topic
                .write(ops)
                .await
                .map_err(|e| StoreError::Kafka(e.to_string())),
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
mod tests {
    use super::*;
    use broker::AttrValue;

    fn event(id: &str) -> Event {
        Event {
            attributes: vec![
                ("id".into(), AttrValue::String(id.into())),
                ("n".into(), AttrValue::Integer(3)),
            ],
            data: Some(Bytes::from_static(&[0, 1, 2, 255])),
        }
    }

    fn info() -> ErrorInfo {
        ErrorInfo {
            code: Some(500),
            body: "b29wcw==".into(),
            message: "boom".into(),
            attempts: 3,
            time: "t".into(),
            destination: "http://x".into(),
        }
    }

    #[tokio::test]
    async fn retries_in_due_order_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = DeliveryStore::open(dir.path()).unwrap();
            for (id, due) in [("late", 300), ("early", 100), ("mid", 200)] {
                s.put_retry(
                    "ns/t",
                    &Retry {
                        id: id.into(),
                        due_ms: due,
                        attempts: 2,
                        event: event(id),
                        last_error: None,
                        to_sink: false,
                    },
                )
                .await
                .unwrap();
            }
            s.put_retry(
                "ns/other",
                &Retry {
                    id: "x".into(),
                    due_ms: 1,
                    attempts: 1,
                    event: event("x"),
                    last_error: None,
                    to_sink: false,
                },
            )
            .await
            .unwrap();
        }
        let s = DeliveryStore::open(dir.path()).unwrap();
        let r = s.retries("ns/t", 10).unwrap();
        assert_eq!(
            r.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["early", "mid", "late"]
        );
        assert_eq!(r[0].event, event("early"));
        assert_eq!(r[0].attempts, 2);
        s.remove_retry("ns/t", "early").await.unwrap();
        assert_eq!(s.retries("ns/t", 10).unwrap().len(), 2);
        // The same id again moves the retry instead of adding one.
        s.put_retry(
            "ns/t",
            &Retry {
                id: "mid".into(),
                due_ms: 50,
                attempts: 3,
                event: event("mid"),
                last_error: None,
                to_sink: false,
            },
        )
        .await
        .unwrap();
        let r = s.retries("ns/t", 10).unwrap();
        assert_eq!(
            r.iter()
                .map(|r| (r.id.as_str(), r.due_ms))
                .collect::<Vec<_>>(),
            [("mid", 50), ("late", 300)]
        );
    }

    #[tokio::test]
    async fn dead_letters_list_replay_and_purge() {
        let dir = tempfile::tempdir().unwrap();
        let s = DeliveryStore::open(dir.path()).unwrap();
        s.put_retry(
            "ns/t",
            &Retry {
                id: "a".into(),
                due_ms: 5,
                attempts: 3,
                event: event("a"),
                last_error: None,
                to_sink: false,
            },
        )
        .await
        .unwrap();
        s.put_dead_letter(
            "ns/t",
            &DeadLetter {
                id: "a".into(),
                time_ms: 10,
                event: event("a"),
                error: info(),
            },
        )
        .await
        .unwrap();
        s.put_dead_letter(
            "ns/t",
            &DeadLetter {
                id: "b".into(),
                time_ms: 11,
                event: event("b"),
                error: info(),
            },
        )
        .await
        .unwrap();
        // The same event dead-lettered again (redelivered after a crash) stays one dead letter.
        s.put_dead_letter(
            "ns/t",
            &DeadLetter {
                id: "b".into(),
                time_ms: 12,
                event: event("b"),
                error: info(),
            },
        )
        .await
        .unwrap();
        assert!(
            s.retries("ns/t", 10).unwrap().is_empty(),
            "dead-lettering removes the retry"
        );
        let dls = s.dead_letters("ns/t", None, 100).unwrap().items;
        assert_eq!(dls.len(), 2);
        assert_eq!(dls[0].error, info());
        assert_eq!(s.replay("ns/t", Some("b"), 50).await.unwrap(), 1);
        assert_eq!(s.dead_letters("ns/t", None, 100).unwrap().items.len(), 1);
        let r = s.retries("ns/t", 10).unwrap();
        assert_eq!((r[0].id.as_str(), r[0].attempts, r[0].due_ms), ("b", 0, 50));
        assert_eq!(s.purge("ns/t", true).await.unwrap(), 1);
        assert!(s.dead_letters("ns/t", None, 100).unwrap().items.is_empty());
        assert!(s.retries("ns/t", 10).unwrap().is_empty());
    }

    fn retry(id: &str, due_ms: u64) -> Retry {
        Retry {
            id: id.into(),
            due_ms,
            attempts: 1,
            event: event(id),
            last_error: None,
            to_sink: false,
        }
    }

    fn dead(id: &str, time_ms: u64) -> DeadLetter {
        DeadLetter {
            id: id.into(),
            time_ms,
            event: event(id),
            error: info(),
        }
    }

    #[tokio::test]
    async fn a_pass_reads_only_what_is_due_in_the_partitions_it_owns() {
        let dir = tempfile::tempdir().unwrap();
        let s = DeliveryStore::open(dir.path()).unwrap();
        // Partition 0..4, due 100, 200, 300 each (ids `p-n-hash`), and another trigger's.
        for p in 0..4 {
            for (n, due) in [100, 200, 300].into_iter().enumerate() {
                s.put_retry("ns/t", &retry(&format!("{p}-{n}-00"), due))
                    .await
                    .unwrap();
            }
        }
        s.put_retry("ns/u", &retry("0-9-00", 1)).await.unwrap();
        let (due, next) = s.due_retries("ns/t", 250, 100, &|p| p != 1).unwrap();
        let mut ids: Vec<_> = due.iter().map(|r| r.id.as_str()).collect();
        assert!(
            due.windows(2).all(|w| w[0].due_ms <= w[1].due_ms),
            "earliest first"
        );
        ids.sort();
        assert_eq!(
            ids,
            ["0-0-00", "0-1-00", "2-0-00", "2-1-00", "3-0-00", "3-1-00"]
        );
        assert_eq!(next, Some(300), "the earliest not yet due");
        // A limit bounds each pass; more due now says so.
        let (due, next) = s.due_retries("ns/t", 250, 2, &|_| true).unwrap();
        assert_eq!(due.len(), 2);
        assert!(due.iter().all(|r| r.due_ms == 100));
        assert_eq!(next, Some(250));
        // Moving a retry moves its index entry (no stale entry left behind).
        s.put_retry("ns/t", &retry("0-0-00", 1000)).await.unwrap();
        let (due, _) = s.due_retries("ns/t", 999, 100, &|p| p == 0).unwrap();
        assert_eq!(due.len(), 2);
        assert_eq!(s.counts("ns/t"), (12, 0));
        s.remove_retry("ns/t", "0-0-00").await.unwrap();
        assert_eq!(s.counts("ns/t"), (11, 0));
        assert_eq!(s.counts("ns/u"), (1, 0));
    }

    #[tokio::test]
    async fn dead_letters_come_in_pages_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let s = DeliveryStore::open(dir.path()).unwrap();
        for i in 0..7u64 {
            s.put_dead_letter("ns/t", &dead(&format!("0-{i}-00"), 1000 + i))
                .await
                .unwrap();
        }
        s.put_dead_letter("ns/u", &dead("0-0-00", 1)).await.unwrap();
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = s.dead_letters("ns/t", after.as_deref(), 3).unwrap();
            assert!(page.items.len() <= 3);
            seen.extend(page.items.iter().map(|d| d.time_ms));
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(
            seen,
            (1000..1007).collect::<Vec<_>>(),
            "oldest first, each once"
        );
        assert!(matches!(
            s.dead_letters("ns/t", Some("nonsense"), 3),
            Err(StoreError::BadRequest(_))
        ));
        assert_eq!(s.counts("ns/t"), (0, 7));
        // Kept before 1004: 1000..1003 go, in every trigger.
        assert_eq!(s.expire_dead_letters(1004).await.unwrap(), 5);
        let left = s.dead_letters("ns/t", None, 100).unwrap().items;
        assert_eq!(left.first().map(|d| d.time_ms), Some(1004));
        assert_eq!(s.counts("ns/t"), (0, 3));
        assert_eq!(s.counts("ns/u"), (0, 0));
        // Replaying all moves every one to the queue, page by page.
        assert_eq!(s.replay("ns/t", None, 5).await.unwrap(), 3);
        assert_eq!(s.counts("ns/t"), (3, 0));
    }

    #[tokio::test]
    async fn records_of_the_first_layout_are_read_after_an_upgrade() {
        let dir = tempfile::tempdir().unwrap();
        {
            // What an earlier Ferry wrote: `r` + trigger + 0 + due + id, its `i` index, a
            // dead letter under `d` + trigger + 0 + id.
            let db = rocksdb::DB::open_default(dir.path()).unwrap();
            let value = retry_value(&retry("1-5-00", 0)).unwrap();
            let mut k = b"rns/t\x00".to_vec();
            k.extend_from_slice(&777u64.to_be_bytes());
            k.extend_from_slice(b"1-5-00");
            db.put(&k, &value).unwrap();
            db.put(b"ins/t\x001-5-00", 777u64.to_be_bytes()).unwrap();
            let d = encode(
                &Header {
                    id: "2-6-00".into(),
                    attempts: 3,
                    error: Some(info()),
                    time_ms: 42,
                    to_sink: false,
                    due_ms: 0,
                    legacy: false,
                },
                &event("2-6-00"),
            )
            .unwrap();
            db.put(b"dns/t\x002-6-00", &d).unwrap();
        }
        for _ in 0..2 {
            let s = DeliveryStore::open(dir.path()).unwrap();
            let r = s.retries("ns/t", 10).unwrap();
            assert_eq!(
                r.iter()
                    .map(|r| (r.id.as_str(), r.due_ms))
                    .collect::<Vec<_>>(),
                [("1-5-00", 777)]
            );
            assert_eq!(r[0].event, event("1-5-00"));
            let dls = s.dead_letters("ns/t", None, 10).unwrap().items;
            assert_eq!((dls.len(), dls[0].time_ms), (1, 42));
            assert_eq!(s.counts("ns/t"), (1, 1));
            assert!(s.known("ns/t", "1-5-00").unwrap());
        }
    }
}
