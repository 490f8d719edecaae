//! The delivery store's records on this node's disk, indexed: the store itself in embedded
//! mode (every write synced), the copy of `ferry-deliveries` in Kafka mode (a cache: rebuilt
//! from the topic if lost, so not synced; it keeps the topic offset it has read up to, in the
//! same write as each change, and a restart reads only what came after).
//!
//! Records (the only thing that goes to Kafka): `q` + trigger + `0x00` + id → a queued retry,
//! `d` + trigger + `0x00` + id → a dead letter, `a` + trigger + `0x00` + id → an ordered
//! trigger's attempt count. Each applied change also updates, in the same RocksDB write, the
//! indexes derived from it: `Q` + trigger + `0x00` + partition (4 bytes, BE) + due time (ms,
//! 8 bytes, BE) + id, so a scheduler pass seeks straight to what is due, per partition; `D` +
//! trigger + `0x00` + time (ms, BE) + id, dead letters oldest first (pages and retention).
//! The number of each trigger's retries and dead letters is counted as changes apply.

use super::{decode_header, partition_of, StoreError};
use crate::clock::now_ms;
use broker::kafka::compacted::{Entries, Replica};
use broker::LogError;
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch, WriteOptions, DB};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

pub(super) const RETRY: u8 = b'q';
pub(super) const DEAD: u8 = b'd';
pub(super) const ATTEMPTS: u8 = b'a';
const RETRY_INDEX: u8 = b'Q';
/// Retries read from first-layout records not yet rewritten in the topic (Kafka mode).
const LEGACY: u8 = b'L';
const DEAD_INDEX: u8 = b'D';
/// Locks over the records (see `Local::stripes`).
const STRIPES: usize = 64;
/// Records rewritten per write when upgrading an earlier layout.
const UPGRADE_CHUNK: usize = 1024;
/// Memtable size of the database (RocksDB's default is 64 MiB).
const SMALL_MEMTABLE: usize = 4 << 20;
/// The topic offset read up to (Kafka mode).
const NEXT: &[u8] = b"~next";
/// When `NEXT` was last written (ms since the epoch).
const NEXT_AT: &[u8] = b"~next_at";
/// A copy last brought up to date longer ago than this is read again from the start: Kafka
/// keeps a compacted topic's tombstones for `delete.retention.ms` (24 h by default), and a
/// copy that resumes later may have missed some.
const STALE_AFTER: Duration = Duration::from_secs(20 * 3600);

/// The key layout's version: 2 since the indexes were derived (1 kept `r` + due + id records
/// and an `i` index, written by the store itself).
const FORMAT: &[u8] = b"~format";

pub(super) fn prefix(tag: u8, trigger: &str) -> Vec<u8> {
    let mut k = vec![tag];
    k.extend_from_slice(trigger.as_bytes());
    k.push(0);
    k
}

pub(super) fn record_key(tag: u8, trigger: &str, id: &str) -> Vec<u8> {
    let mut k = prefix(tag, trigger);
    k.extend_from_slice(id.as_bytes());
    k
}

/// The trigger and id of a record key (or an index key's trigger and the rest).
fn split(key: &[u8]) -> Option<(&str, &[u8])> {
    let zero = key.iter().position(|b| *b == 0)?;
    let trigger = std::str::from_utf8(key.get(1..zero)?).ok()?;
    Some((trigger, key.get(zero + 1..)?))
}

fn be_u64(b: &[u8]) -> Option<u64> {
    b.get(..8)?.try_into().ok().map(u64::from_be_bytes)
}

fn be_u32(b: &[u8]) -> Option<u32> {
    b.get(..4)?.try_into().ok().map(u32::from_be_bytes)
}

/// The index entry a record implies, if any.
fn index_key(key: &[u8], value: &[u8]) -> Option<Vec<u8>> {
    let (trigger, id) = split(key)?;
    let id_text = std::str::from_utf8(id).ok()?;
    let header = decode_header(value).ok()?;
    let (tag, time) = match *key.first()? {
        RETRY => (RETRY_INDEX, header.due_ms),
        DEAD => (DEAD_INDEX, header.time_ms),
        _ => return None,
    };
    let mut k = prefix(tag, trigger);
    if tag == RETRY_INDEX {
        k.extend_from_slice(&partition_of(id_text).to_be_bytes());
    }
    k.extend_from_slice(&time.to_be_bytes());
    k.extend_from_slice(id);
    Some(k)
}

/// A due retry's place in the index.
pub(super) struct Due {
    pub due_ms: u64,
    pub id: String,
}

pub struct Local {
    db: DB,
    /// Synced writes (embedded mode: this is the store) or not (Kafka mode: a cache).
    sync: bool,
    /// Changes read a record's old value to update its index: one at a time per record (a
    /// stripe of locks by key), so that changes of different records write at once and
    /// RocksDB syncs them together (group commit).
    stripes: Vec<Mutex<()>>,
    /// Retries and dead letters per trigger: `(tag, trigger)` → count.
    counts: Mutex<HashMap<(u8, String), u64>>,
}

fn poisoned<T>(_: T) -> StoreError {
    StoreError::Corrupt("a lock of the delivery store is poisoned".into())
}

impl Local {
    pub(super) fn open(path: &Path, sync: bool) -> Result<Self, StoreError> {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        // A small database: a small memtable, so its write-ahead log preallocates little and
        // RocksDB resumes after a full disk once that much is free again.
        opts.set_write_buffer_size(SMALL_MEMTABLE);
        let local = Self {
            db: DB::open(&opts, path)?,
            sync,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            counts: Mutex::default(),
        };
        local.upgrade()?;
        local.count()?;
        Ok(local)
    }

    /// Rewrites records of the first layout (a data dir of an earlier Ferry) into this one.
    fn upgrade(&self) -> Result<(), StoreError> {
        if self.db.get(FORMAT)?.is_some() {
            return Ok(());
        }
        // A chunk at a time (an iterator reads a snapshot: writing meanwhile is fine).
        let mut n = 0;
        let mut ops = Vec::new();
        for item in self.db.prefix_iterator([b'r']) {
            let (k, v) = item?;
            if k.first() != Some(&b'r') {
                break;
            }
            ops.extend(upgrade_retry(&k, Some(&v)));
            if ops.len() >= UPGRADE_CHUNK {
                n += ops.len();
                self.apply(&std::mem::take(&mut ops), None)?;
            }
        }
        n += ops.len();
        self.apply(&ops, None)?;
        // A dead letter keeps its key and value: only its index entry is new.
        let mut batch = WriteBatch::default();
        for item in self.db.prefix_iterator([DEAD]) {
            let (k, v) = item?;
            if k.first() != Some(&DEAD) {
                break;
            }
            if let Some(i) = index_key(&k, &v) {
                batch.put(i, []);
                n += 1;
            }
            if batch.len() >= UPGRADE_CHUNK {
                self.db.write(std::mem::take(&mut batch))?;
            }
        }
        self.db.write(batch)?;
        // Then the old records go (a crash before this upgrades them again, to the same).
        let mut batch = WriteBatch::default();
        batch.delete_range(&b"r"[..], &b"s"[..]);
        batch.delete_range(&b"i"[..], &b"j"[..]);
        batch.put(FORMAT, b"2");
        let mut o = WriteOptions::default();
        o.set_sync(true);
        self.db.write_opt(batch, &o)?;
        if n > 0 {
            tracing::info!(
                records = n,
                "delivery store: records rewritten in the indexed layout"
            );
        }
        Ok(())
    }

    fn count(&self) -> Result<(), StoreError> {
        let mut counts = self.counts.lock().map_err(poisoned)?;
        counts.clear();
        for tag in [RETRY_INDEX, DEAD_INDEX] {
            let mut o = ReadOptions::default();
            o.set_iterate_upper_bound([tag + 1]);
            for item in self
                .db
                .iterator_opt(IteratorMode::From(&[tag], Direction::Forward), o)
            {
                let (k, _) = item?;
                if let Some((trigger, _)) = split(&k) {
                    *counts.entry((tag, trigger.to_string())).or_default() += 1;
                }
            }
        }
        Ok(())
    }

    pub(super) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(key)?)
    }

    /// Applies changes in one atomic write (synced in embedded mode), each record's index
    /// entries with it; `next` is kept with them (Kafka mode).
    pub(super) fn apply(
        &self,
        ops: &[(Vec<u8>, Option<Vec<u8>>)],
        next: Option<i64>,
    ) -> Result<bool, StoreError> {
        // A first-layout record changes the record its key translates to: all stripes then
        // (only while an earlier Ferry's records are still read).
        let _locked = if ops.iter().any(|(k, _)| k.first() == Some(&b'r')) {
            self.lock_all()?
        } else {
            self.lock(ops.iter().map(|(k, _)| k.as_slice()))?
        };
        let mut batch = WriteBatch::default();
        // What this write has set already (a later op of the same key sees it).
        let mut pending: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
        let mut delta: HashMap<(u8, String), i64> = HashMap::new();
        let mut changed = false;
        for (k, v) in ops {
            let v = v.as_ref().filter(|v| !v.is_empty());
            let (k, v) = match k.first() {
                // A record of the first layout (an older node's, in Kafka mode).
                Some(b'r') => match upgrade_retry_change(self, k, v.map(Vec::as_slice))? {
                    Some(change) => {
                        // Remembered, so the store can write it in this layout and delete
                        // the old record from the topic (see `legacy`).
                        if change.1.is_some() {
                            batch.put(legacy_marker(&change.0), k);
                        }
                        change
                    }
                    None => continue,
                },
                Some(b'i') => continue,
                _ => (k.clone(), v.cloned()),
            };
            let old = match pending.get(&k) {
                Some(old) => old.clone(),
                None => self.db.get(&k)?,
            };
            if old == v {
                continue;
            }
            changed = true;
            self.apply_one(&mut batch, &mut delta, &k, v.as_deref(), old.as_deref());
            pending.insert(k, v);
        }
        if let Some(next) = next {
            batch.put(NEXT, next.to_be_bytes());
            batch.put(NEXT_AT, now_ms().to_be_bytes());
        }
        let mut o = WriteOptions::default();
        o.set_sync(self.sync);
        self.db.write_opt(batch, &o)?;
        let mut counts = self.counts.lock().map_err(poisoned)?;
        for (key, d) in delta {
            let c = counts.entry(key).or_default();
            *c = c.saturating_add_signed(d);
        }
        Ok(changed)
    }

    /// One change into `batch`: the record, and its index entry moved from where `old` (the
    /// record's value before) had it.
    fn apply_one(
        &self,
        batch: &mut WriteBatch,
        delta: &mut HashMap<(u8, String), i64>,
        k: &[u8],
        v: Option<&[u8]>,
        old: Option<&[u8]>,
    ) {
        let old_index = old.and_then(|o| index_key(k, o));
        let new_index = v.and_then(|v| index_key(k, v));
        if old_index != new_index {
            if let Some(i) = &old_index {
                batch.delete(i);
            }
            if let Some(i) = &new_index {
                batch.put(i, []);
            }
        }
        if let Some((tag, trigger)) = k.first().zip(split(k).map(|(t, _)| t)) {
            let d = i64::from(new_index.is_some()) - i64::from(old_index.is_some());
            if d != 0 {
                let tag = if *tag == RETRY {
                    RETRY_INDEX
                } else {
                    DEAD_INDEX
                };
                *delta.entry((tag, trigger.to_string())).or_default() += d;
            }
        }
        match v {
            Some(v) => batch.put(k, v),
            None => batch.delete(k),
        }
    }

    /// Up to `limit` of `trigger`'s retries due by `now` whose partition `owns` accepts,
    /// earliest first, and the earliest due time of the rest (all partitions `owns` accepts).
    /// Reads each partition's due entries only: one seek per partition that has retries.
    pub(super) fn due(
        &self,
        trigger: &str,
        now: u64,
        limit: usize,
        owns: &dyn Fn(u32) -> bool,
    ) -> Result<(Vec<Due>, Option<u64>), StoreError> {
        let p = prefix(RETRY_INDEX, trigger);
        let mut upper = p.clone();
        if let Some(last) = upper.last_mut() {
            *last = 1;
        }
        let mut due = Vec::new();
        let mut next: Option<u64> = None;
        let mut seek = p.clone();
        loop {
            let mut o = ReadOptions::default();
            o.set_iterate_upper_bound(upper.clone());
            let mut it = self.db.raw_iterator_opt(o);
            it.seek(&seek);
            let Some(k) = it.key() else {
                it.status()?;
                break;
            };
            let rest = &k[p.len()..];
            let Some(partition) = be_u32(rest) else { break };
            let mut taken = 0;
            if owns(partition) {
                while let Some(k) = it.key() {
                    let rest = &k[p.len()..];
                    if be_u32(rest) != Some(partition) {
                        break;
                    }
                    let Some(at) = be_u64(&rest[4..]) else { break };
                    if at > now || taken >= limit {
                        if at > now {
                            next = Some(next.map_or(at, |n| n.min(at)));
                        } else {
                            next = Some(next.map_or(now, |n| n.min(now)));
                        }
                        break;
                    }
                    due.push(Due {
                        due_ms: at,
                        id: String::from_utf8_lossy(&rest[12..]).into_owned(),
                    });
                    taken += 1;
                    it.next();
                }
                it.status()?;
            }
            // The next partition.
            let Some(after) = partition.checked_add(1) else {
                break;
            };
            seek = p.clone();
            seek.extend_from_slice(&after.to_be_bytes());
        }
        due.sort_by_key(|d| d.due_ms);
        if due.len() > limit {
            // More are due now than this pass takes.
            due.truncate(limit);
            next = Some(now);
        }
        Ok((due, next))
    }

    /// Up to `limit` record keys of `tag`'s index for `trigger` after `after` (an index key's
    /// rest: time + id), in index order, with their time; `before`: only entries older than
    /// that time.
    pub(super) fn index_page(
        &self,
        dead_index_trigger: &str,
        after: Option<&[u8]>,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        let p = prefix(DEAD_INDEX, dead_index_trigger);
        let mut upper = p.clone();
        if let Some(last) = upper.last_mut() {
            *last = 1;
        }
        let mut o = ReadOptions::default();
        o.set_iterate_upper_bound(upper);
        let mut it = self.db.raw_iterator_opt(o);
        let mut start = p.clone();
        if let Some(after) = after {
            start.extend_from_slice(after);
            start.push(0);
        }
        it.seek(&start);
        let mut out = Vec::new();
        while let Some(k) = it.key() {
            if out.len() >= limit {
                break;
            }
            let rest = &k[p.len()..];
            let Some(time) = be_u64(rest) else { break };
            if before.is_some_and(|b| time >= b) {
                break;
            }
            out.push((time, String::from_utf8_lossy(&rest[8..]).into_owned()));
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// The triggers that have dead letters.
    pub(super) fn dead_letter_triggers(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .counts
            .lock()
            .map_err(poisoned)?
            .iter()
            .filter(|((tag, _), n)| *tag == DEAD_INDEX && **n > 0)
            .map(|((_, t), _)| t.clone())
            .collect())
    }

    /// Record keys of `tag` under `trigger`, after `after`, at most `limit`.
    pub(super) fn record_keys(
        &self,
        tag: u8,
        trigger: &str,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let p = prefix(tag, trigger);
        let mut out = Vec::new();
        for item in self.db.prefix_iterator(&p) {
            let (k, _) = item?;
            if !k.starts_with(&p) || out.len() >= limit {
                break;
            }
            out.push(k.to_vec());
        }
        Ok(out)
    }

    /// Up to `limit` retries read from first-layout records (Kafka mode) and not yet rewritten:
    /// (record key, old key).
    pub(super) fn legacy(&self, limit: usize) -> Result<Entries, StoreError> {
        let mut out = Vec::new();
        for item in self.db.prefix_iterator([LEGACY]) {
            let (k, v) = item?;
            if k.first() != Some(&LEGACY) || out.len() >= limit {
                break;
            }
            out.push((k[1..].to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// The first-layout key a retry record was read from, if it was and is not yet rewritten.
    pub(super) fn legacy_of(&self, record_key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(legacy_marker(record_key))?)
    }

    /// Forgets the marker of a rewritten first-layout retry, if it still names `old` (the
    /// follower may have read a newer first-layout record of it meanwhile).
    pub(super) fn forget_legacy(&self, record_key: &[u8], old: &[u8]) -> Result<(), StoreError> {
        let _locked = self.lock(std::iter::once(record_key))?;
        if self.db.get(legacy_marker(record_key))?.as_deref() == Some(old) {
            self.db.delete(legacy_marker(record_key))?;
        }
        Ok(())
    }

    /// (retries queued, dead letters kept) of a trigger.
    pub(super) fn counts(&self, trigger: &str) -> (u64, u64) {
        let Ok(counts) = self.counts.lock() else {
            return (0, 0);
        };
        let get = |tag| {
            counts
                .get(&(tag, trigger.to_string()))
                .copied()
                .unwrap_or(0)
        };
        (get(RETRY_INDEX), get(DEAD_INDEX))
    }

    /// The stripes of `keys`, locked in one order (no two writers can wait on each other).
    fn lock<'a>(
        &self,
        keys: impl Iterator<Item = &'a [u8]>,
    ) -> Result<Vec<std::sync::MutexGuard<'_, ()>>, StoreError> {
        let mut stripes: Vec<usize> = keys
            .map(|k| (broker::event::fnv1a(k) % STRIPES as u64) as usize)
            .collect();
        stripes.sort_unstable();
        stripes.dedup();
        stripes
            .into_iter()
            .map(|i| self.stripes[i].lock().map_err(poisoned))
            .collect()
    }

    fn lock_all(&self) -> Result<Vec<std::sync::MutexGuard<'_, ()>>, StoreError> {
        self.stripes
            .iter()
            .map(|s| s.lock().map_err(poisoned))
            .collect()
    }

    fn clear_all(&self) -> Result<(), StoreError> {
        let _locked = self.lock_all()?;
        let mut batch = WriteBatch::default();
        batch.delete_range(&[0u8][..], &[0xffu8; 9][..]);
        self.db.write(batch)?;
        self.counts.lock().map_err(poisoned)?.clear();
        Ok(())
    }
}

/// A key and its new value (`None`: deleted).
type Change = (Vec<u8>, Option<Vec<u8>>);

/// A retry record of the first layout (`r` + trigger + 0 + due + id) as a change of this one.
fn upgrade_retry(key: &[u8], value: Option<&[u8]>) -> Option<Change> {
    let (trigger, rest) = split(key)?;
    let due = be_u64(rest)?;
    let id = std::str::from_utf8(rest.get(8..)?).ok()?;
    let value = value.filter(|v| !v.is_empty())?;
    Some((
        record_key(RETRY, trigger, id),
        Some(super::with_due(value, due).ok()?),
    ))
}

/// A change of a first-layout retry record (another node's of an earlier Ferry): a put
/// becomes a put of the record by id; a delete deletes the record only if it is still the one
/// at that due time (an older Ferry moved a retry by deleting it and putting it anew).
fn upgrade_retry_change(
    local: &Local,
    key: &[u8],
    value: Option<&[u8]>,
) -> Result<Option<Change>, StoreError> {
    if value.is_some_and(|v| !v.is_empty()) {
        return Ok(upgrade_retry(key, value));
    }
    let Some((trigger, rest)) = split(key) else {
        return Ok(None);
    };
    let (Some(due), Ok(id)) = (
        be_u64(rest),
        std::str::from_utf8(rest.get(8..).unwrap_or(&[])),
    ) else {
        return Ok(None);
    };
    let k = record_key(RETRY, trigger, id);
    // Only a record still in the first layout, at that due time: one this layout wrote since
    // (the same event retried, or migrated) is newer than the old node's delete.
    let current = local
        .get(&k)?
        .and_then(|v| decode_header(&v).ok())
        .filter(|h| h.legacy)
        .map(|h| h.due_ms);
    Ok((current == Some(due)).then_some((k, None)))
}

/// The marker of a retry read from a first-layout record: `L` + its record key → the old key.
fn legacy_marker(record_key: &[u8]) -> Vec<u8> {
    let mut k = vec![LEGACY];
    k.extend_from_slice(record_key);
    k
}

/// The `i` index key an older Ferry kept beside a first-layout retry record.
pub(super) fn legacy_index_key(old: &[u8]) -> Option<Vec<u8>> {
    let (trigger, rest) = split(old)?;
    let id = rest.get(8..)?;
    let mut k = vec![b'i'];
    k.extend_from_slice(trigger.as_bytes());
    k.push(0);
    k.extend_from_slice(id);
    Some(k)
}

impl Replica for Local {
    fn apply(&self, key: &[u8], value: Option<&[u8]>, next: Option<i64>) -> Result<bool, LogError> {
        Local::apply(self, &[(key.to_vec(), value.map(<[u8]>::to_vec))], next)
            .map_err(|e| LogError::Storage(e.to_string()))
    }

    fn resume_at(&self) -> i64 {
        self.db
            .get(NEXT)
            .ok()
            .flatten()
            .and_then(|v| v.as_slice().try_into().ok().map(i64::from_be_bytes))
            .unwrap_or(0)
    }

    fn advance(&self, next: i64) -> Result<(), LogError> {
        let mut batch = WriteBatch::default();
        batch.put(NEXT, next.to_be_bytes());
        batch.put(NEXT_AT, now_ms().to_be_bytes());
        self.db
            .write(batch)
            .map_err(|e| LogError::Storage(e.to_string()))
    }

    fn fresh(&self) -> bool {
        let at = self
            .db
            .get(NEXT_AT)
            .ok()
            .flatten()
            .and_then(|v| v.as_slice().try_into().ok().map(u64::from_be_bytes));
        at.is_some_and(|at| now_ms().saturating_sub(at) < STALE_AFTER.as_millis() as u64)
    }

    fn clear(&self) -> Result<(), LogError> {
        self.clear_all()
            .map_err(|e| LogError::Storage(e.to_string()))
    }
}
