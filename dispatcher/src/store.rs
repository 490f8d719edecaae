//! Durable delivery state: pending retries and Ferry's own dead-letter store, in a RocksDB
//! database of their own (`<data-dir>/dispatch`), every write synced.
//!
//! Keys: `r` + trigger + `0x00` + due time (ms, BE) + id for a retry, so a trigger's retries
//! read in due order, with `i` + trigger + `0x00` + id → due time as its index; `d` + trigger +
//! `0x00` + id for a dead letter. Ids are the event's log position (`partition-offset`), so an
//! event redelivered after a crash replaces its own retry or dead letter instead of adding a
//! second one. A value is a JSON header (length-prefixed) followed by the event in the log's
//! record encoding, so the event keeps every attribute and data byte.

use broker::{codec, Event};
use bytes::Bytes;
use kv::{Batch, Kv};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("delivery store: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("delivery store: kafka: {0}")]
    Kafka(String),
    #[error("delivery store: corrupt entry: {0}")]
    Corrupt(String),
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

#[derive(Serialize, Deserialize)]
struct Header {
    id: String,
    attempts: u32,
    error: Option<ErrorInfo>,
    #[serde(default)]
    time_ms: u64,
    #[serde(default)]
    to_sink: bool,
}

mod kv;
pub use kv::KafkaKv;

pub struct DeliveryStore {
    kv: Arc<dyn Kv>,
    /// Writes read an id's index and then change it: one at a time, so two writers on one id
    /// can never leave a record the index does not know.
    writes: std::sync::Mutex<()>,
}

fn prefix(tag: u8, trigger: &str) -> Vec<u8> {
    let mut k = vec![tag];
    k.extend_from_slice(trigger.as_bytes());
    k.push(0);
    k
}

fn key(tag: u8, trigger: &str, time_ms: u64, id: &str) -> Vec<u8> {
    let mut k = prefix(tag, trigger);
    k.extend_from_slice(&time_ms.to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

fn id_key(tag: u8, trigger: &str, id: &str) -> Vec<u8> {
    let mut k = prefix(tag, trigger);
    k.extend_from_slice(id.as_bytes());
    k
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

fn header(
    id: &str,
    attempts: u32,
    error: Option<&ErrorInfo>,
    time_ms: u64,
    to_sink: bool,
) -> Header {
    Header {
        id: id.to_string(),
        attempts,
        error: error.cloned(),
        time_ms,
        to_sink,
    }
}

fn decode(v: &[u8]) -> Result<(Header, Event), StoreError> {
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
    let (event, _) = codec::decode(Bytes::copy_from_slice(&v[4 + len..]))
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok((header, event))
}

fn time_of(key: &[u8], prefix_len: usize) -> u64 {
    key.get(prefix_len..prefix_len + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

impl DeliveryStore {
    /// On RocksDB (`<data-dir>/dispatch`), every write synced.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self::on(Arc::new(kv::RocksKv::open(path)?)))
    }

    /// On any key-value backend (RocksDB, or Kafka's compacted topic).
    pub fn on(kv: Arc<dyn Kv>) -> Self {
        Self {
            kv,
            writes: std::sync::Mutex::new(()),
        }
    }

    /// Whether an event with this id already waits in the retry queue or the dead-letter store
    /// (it was read before a crash, and handed over before its offset was committed).
    pub fn known(&self, trigger: &str, id: &str) -> Result<bool, StoreError> {
        Ok(self.retry_due(trigger, id)?.is_some()
            || self.kv.get(&id_key(b'd', trigger, id))?.is_some())
    }

    /// Attempts already made at an event an ordered trigger is working on (it waits in place,
    /// not in the queue): kept so a crash does not restart the count.
    pub fn attempts(&self, trigger: &str, id: &str) -> Result<u32, StoreError> {
        Ok(self
            .kv
            .get(&id_key(b'a', trigger, id))?
            .and_then(|v| v.as_slice().try_into().ok().map(u32::from_be_bytes))
            .unwrap_or(0))
    }

    /// Records (`Some`) or forgets (`None`) an ordered trigger's attempts at an event.
    pub fn set_attempts(
        &self,
        trigger: &str,
        id: &str,
        attempts: Option<u32>,
    ) -> Result<(), StoreError> {
        let mut batch = Batch::default();
        match attempts {
            Some(n) => batch.put(id_key(b'a', trigger, id), n.to_be_bytes()),
            None => batch.delete(id_key(b'a', trigger, id)),
        }
        self.kv.write(batch)
    }

    /// The due time of the retry with this id, if one is queued.
    pub fn retry_due(&self, trigger: &str, id: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .kv
            .get(&id_key(b'i', trigger, id))?
            .and_then(|v| v.as_slice().try_into().ok().map(u64::from_be_bytes)))
    }

    /// Deletes the retry with this id (and its index entry) in `batch`, if there is one.
    fn unqueue(&self, batch: &mut Batch, trigger: &str, id: &str) -> Result<(), StoreError> {
        if let Some(due) = self.retry_due(trigger, id)? {
            batch.delete(key(b'r', trigger, due, id));
            batch.delete(id_key(b'i', trigger, id));
        }
        Ok(())
    }

    /// Stores a retry, replacing any queued under the same id.
    pub fn put_retry(&self, trigger: &str, retry: &Retry) -> Result<(), StoreError> {
        let _one_at_a_time = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = Batch::default();
        self.unqueue(&mut batch, trigger, &retry.id)?;
        batch.put(
            key(b'r', trigger, retry.due_ms, &retry.id),
            encode(
                &header(
                    &retry.id,
                    retry.attempts,
                    retry.last_error.as_ref(),
                    0,
                    retry.to_sink,
                ),
                &retry.event,
            )?,
        );
        batch.put(id_key(b'i', trigger, &retry.id), retry.due_ms.to_be_bytes());
        self.kv.write(batch)
    }

    pub fn remove_retry(&self, trigger: &str, id: &str) -> Result<(), StoreError> {
        let _one_at_a_time = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = Batch::default();
        self.unqueue(&mut batch, trigger, id)?;
        self.kv.write(batch)
    }

    /// Retries of `trigger`, earliest due first, at most `limit`.
    pub fn retries(&self, trigger: &str, limit: usize) -> Result<Vec<Retry>, StoreError> {
        self.retries_where(trigger, limit, &|_| true)
    }

    /// Like `retries`, but only those whose id `mine` accepts (a node retries the events of
    /// the partitions it holds).
    pub fn retries_where(
        &self,
        trigger: &str,
        limit: usize,
        mine: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<Retry>, StoreError> {
        let p = prefix(b'r', trigger);
        let mut out = Vec::new();
        for (k, v) in self.kv.scan(&p)? {
            if out.len() >= limit {
                break;
            }
            let (h, event) = match decode(&v) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(trigger, error = %e, "skipping a corrupt retry record");
                    continue;
                }
            };
            if !mine(&h.id) {
                continue;
            }
            out.push(Retry {
                id: h.id,
                due_ms: time_of(&k, p.len()),
                attempts: h.attempts,
                event,
                last_error: h.error,
                to_sink: h.to_sink,
            });
        }
        Ok(out)
    }

    /// Keeps an event in the dead-letter store (replacing one with the same id) and drops its
    /// queued retry, if any, in the same write.
    pub fn put_dead_letter(&self, trigger: &str, dl: &DeadLetter) -> Result<(), StoreError> {
        let _one_at_a_time = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = Batch::default();
        self.unqueue(&mut batch, trigger, &dl.id)?;
        batch.put(
            id_key(b'd', trigger, &dl.id),
            encode(
                &header(
                    &dl.id,
                    dl.error.attempts,
                    Some(&dl.error),
                    dl.time_ms,
                    false,
                ),
                &dl.event,
            )?,
        );
        self.kv.write(batch)
    }

    /// A trigger's dead letters, oldest first.
    pub fn dead_letters(&self, trigger: &str) -> Result<Vec<DeadLetter>, StoreError> {
        let p = prefix(b'd', trigger);
        let mut out = Vec::new();
        for (_k, v) in self.kv.scan(&p)? {
            let (h, event) = decode(&v)?;
            let Some(error) = h.error else { continue };
            out.push(DeadLetter {
                id: h.id,
                time_ms: h.time_ms,
                event,
                error,
            });
        }
        out.sort_by_key(|d| d.time_ms);
        Ok(out)
    }

    /// Moves dead letters (all, or the one with `id`) back to the retry queue, due now with a
    /// fresh attempt count. Returns how many.
    pub fn replay(
        &self,
        trigger: &str,
        id: Option<&str>,
        now_ms: u64,
    ) -> Result<usize, StoreError> {
        let _one_at_a_time = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = Batch::default();
        let mut n = 0;
        for dl in self.dead_letters(trigger)? {
            if id.is_some_and(|id| id != dl.id) {
                continue;
            }
            batch.delete(id_key(b'd', trigger, &dl.id));
            self.unqueue(&mut batch, trigger, &dl.id)?;
            batch.put(
                key(b'r', trigger, now_ms, &dl.id),
                encode(&header(&dl.id, 0, None, 0, false), &dl.event)?,
            );
            batch.put(id_key(b'i', trigger, &dl.id), now_ms.to_be_bytes());
            n += 1;
        }
        self.kv.write(batch)?;
        Ok(n)
    }

    /// Deletes a trigger's dead letters (and, with `retries`, its pending retries).
    pub fn purge(&self, trigger: &str, retries: bool) -> Result<usize, StoreError> {
        let _one_at_a_time = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = Batch::default();
        let mut n = 0;
        let tags: &[u8] = if retries { b"dria" } else { b"d" };
        for tag in tags {
            let p = prefix(*tag, trigger);
            for (k, _) in self.kv.scan(&p)? {
                batch.delete(k);
                if *tag == b'd' {
                    n += 1;
                }
            }
        }
        self.kv.write(batch)?;
        Ok(n)
    }
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

    #[test]
    fn retries_in_due_order_survive_reopen() {
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
        s.remove_retry("ns/t", "early").unwrap();
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
        .unwrap();
        let r = s.retries("ns/t", 10).unwrap();
        assert_eq!(
            r.iter()
                .map(|r| (r.id.as_str(), r.due_ms))
                .collect::<Vec<_>>(),
            [("mid", 50), ("late", 300)]
        );
    }

    #[test]
    fn dead_letters_list_replay_and_purge() {
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
        .unwrap();
        assert!(
            s.retries("ns/t", 10).unwrap().is_empty(),
            "dead-lettering removes the retry"
        );
        let dls = s.dead_letters("ns/t").unwrap();
        assert_eq!(dls.len(), 2);
        assert_eq!(dls[0].error, info());
        assert_eq!(s.replay("ns/t", Some("b"), 50).unwrap(), 1);
        assert_eq!(s.dead_letters("ns/t").unwrap().len(), 1);
        let r = s.retries("ns/t", 10).unwrap();
        assert_eq!((r[0].id.as_str(), r[0].attempts, r[0].due_ms), ("b", 0, 50));
        assert_eq!(s.purge("ns/t", true).unwrap(), 1);
        assert!(s.dead_letters("ns/t").unwrap().is_empty());
        assert!(s.retries("ns/t", 10).unwrap().is_empty());
    }
}
