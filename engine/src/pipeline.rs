//! The write path of a primary: commands run one at a time against the
//! applied state plus the effects still on their way, their effects go to
//! the WAL in that order, and each record is applied to the engine once it
//! is durable, in LSN order. Many records are in flight at once, so the WAL
//! group-commits them, yet each command sees every earlier one.
//!
//! ```text
//! execute(f): [lock] f(View) -> effects -> overlay, wal.enqueue  [unlock]
//! applier:    after each group commit, on the WAL's writer thread:
//!             durable jobs (in order) -> engine.apply(batch) -> drop overlay entries -> answer
//! ```
//!
//! Readers outside the pipeline read the engine, which holds only durable
//! records: a client never sees a write that a crash could take back.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use ferry_proto::v1::{KeyEvent, Mutation, WalRecord, mutation::Op};
use ferry_wal::{Lsn, PendingAppend, Wal, WalError};
use prost::Message;
use tokio::sync::watch;

use crate::engine::{
    Digest, Engine, FastMap, Scanned, StoredState, Target, apply_mutation, digest_hex, op_key,
};
use crate::error::{EngineError, Result};
use crate::keys::{self, Entry, Value};
use crate::watch::Watch;

/// Effects not yet applied to the engine, by key.
#[derive(Debug, Default)]
struct Overlay {
    keys: FastMap<Bytes, Pending>,
    /// A FLUSHALL is on its way: the engine's keys are as good as gone.
    flushed_seq: Option<u64>,
    /// The keys each record touched (a record's keys side by side, with its
    /// sequence number), to drop their entries once it is applied.
    touched: VecDeque<(u64, Bytes)>,
}

#[derive(Debug, Clone)]
struct Pending {
    /// The last record that touched the key.
    seq: u64,
    /// `None`: deleted.
    state: Option<PendingEntry>,
}

#[derive(Debug, Clone)]
struct PendingEntry {
    entry: Entry,
    /// For hashes: field changes over the engine's fields.
    fields: HashMap<Bytes, Option<Bytes>>,
    /// The engine's fields of the key do not count (it was recreated).
    base_cleared: bool,
}

impl Overlay {
    fn entry(&self, engine: &Engine, key: &[u8]) -> Result<Option<Entry>> {
        match self.keys.get(key) {
            Some(p) => Ok(p.state.as_ref().map(|s| s.entry.clone())),
            None if self.flushed_seq.is_some() => Ok(None),
            None => engine.entry(key),
        }
    }

    fn field(&self, engine: &Engine, key: &[u8], field: &[u8]) -> Result<Option<Bytes>> {
        match self.keys.get(key) {
            Some(Pending { state: None, .. }) => Ok(None),
            Some(Pending { state: Some(s), .. }) => match s.fields.get(field) {
                Some(v) => Ok(v.clone()),
                None if s.base_cleared => Ok(None),
                None => engine.hash_field(key, field),
            },
            None if self.flushed_seq.is_some() => Ok(None),
            None => engine.hash_field(key, field),
        }
    }

    /// Drops what records up to `seq` added, now that the engine has them.
    fn applied(&mut self, seq: u64) {
        while self.touched.front().is_some_and(|(s, _)| *s <= seq) {
            let (_, key) = self.touched.pop_front().expect("checked");
            if let MapEntry::Occupied(e) = self.keys.entry(key)
                && e.get().seq <= seq
            {
                e.remove();
            }
        }
        if self.flushed_seq.is_some_and(|s| s <= seq) {
            self.flushed_seq = None;
        }
    }
}

/// The overlay as a [`Target`]: applies a command's effects so later reads
/// in the executor see them.
struct OverlayTarget<'a> {
    engine: &'a Engine,
    overlay: &'a mut Overlay,
    seq: u64,
    undo: &'a mut Undo,
}

/// How to take a command's effects back out of the overlay: what each key it
/// touched had before, and the FLUSHALL marker.
#[derive(Debug, Default)]
struct Undo {
    keys: Vec<(Bytes, Option<Pending>)>,
    flushed_seq: Option<Option<u64>>,
}

impl Overlay {
    /// Takes back the effects of a command that will not reach the WAL.
    fn undo(&mut self, undo: Undo) {
        for (key, before) in undo.keys.into_iter().rev() {
            match before {
                Some(p) => self.keys.insert(key, p),
                None => self.keys.remove(&key),
            };
        }
        if let Some(flushed_seq) = undo.flushed_seq {
            self.flushed_seq = flushed_seq;
        }
    }
}

impl OverlayTarget<'_> {
    fn pending(&mut self, key: &Bytes) -> &mut Pending {
        let first_touch = !self.undo.keys.iter().any(|(k, _)| k == key);
        let seq = self.seq;
        match self.overlay.keys.entry(key.clone()) {
            MapEntry::Occupied(e) => {
                if first_touch {
                    self.undo.keys.push((key.clone(), Some(e.get().clone())));
                }
                let p = e.into_mut();
                p.seq = seq;
                p
            }
            MapEntry::Vacant(e) => {
                if first_touch {
                    self.undo.keys.push((key.clone(), None));
                }
                e.insert(Pending { seq, state: None })
            }
        }
    }
}

impl Target for OverlayTarget<'_> {
    /// A key the overlay does not hold yet enters it as the engine holds
    /// it: a mutation may change its fields before its entry (HDEL), and
    /// those changes need a state to go into.
    fn entry(&mut self, key: &Bytes) -> Result<Option<Entry>> {
        if self.overlay.keys.contains_key(key.as_ref()) || self.overlay.flushed_seq.is_some() {
            return self.overlay.entry(self.engine, key);
        }
        let entry = self.engine.entry(key)?;
        self.pending(key).state = entry.clone().map(|entry| PendingEntry {
            entry,
            fields: HashMap::new(),
            base_cleared: false,
        });
        Ok(entry)
    }

    fn field(&mut self, key: &Bytes, field: &[u8]) -> Result<Option<Bytes>> {
        self.overlay.field(self.engine, key, field)
    }

    fn put_entry(&mut self, key: &Bytes, old: Option<&Entry>, new: Entry) {
        let p = self.pending(key);
        match &mut p.state {
            Some(state) if old.is_some() => state.entry = new,
            _ => {
                // A key of the engine, first touched now, or a new key.
                p.state = Some(PendingEntry {
                    entry: new,
                    fields: HashMap::new(),
                    base_cleared: old.is_none(),
                });
            }
        }
    }

    fn remove(&mut self, key: &Bytes, _old: &Entry) {
        self.pending(key).state = None;
    }

    fn put_field(&mut self, key: &Bytes, field: &Bytes, value: &Bytes) {
        if let Some(state) = &mut self.pending(key).state {
            state.fields.insert(field.clone(), Some(value.clone()));
        }
    }

    fn delete_field(&mut self, key: &Bytes, field: &Bytes) {
        if let Some(state) = &mut self.pending(key).state {
            state.fields.insert(field.clone(), None);
        }
    }

    /// Whatever the key held, it now holds this string: no read of the
    /// engine. Its fields there (were it a hash) no longer count.
    fn set_string(&mut self, key: &Bytes, value: &Bytes, expire_at_ms: u64) -> Result<()> {
        let (value, fields) = if keys::is_long(value.len() as u64) {
            let chunks = keys::chunks(value).map(|(field, chunk)| (field, Some(chunk)));
            (
                Value::LongString {
                    len: value.len() as u64,
                },
                chunks.collect(),
            )
        } else {
            (Value::String(value.clone()), HashMap::new())
        };
        self.pending(key).state = Some(PendingEntry {
            entry: Entry {
                value,
                expire_at_ms,
            },
            fields,
            base_cleared: true,
        });
        Ok(())
    }

    fn flush_all(&mut self) {
        let keys: Vec<Bytes> = self.overlay.keys.keys().cloned().collect();
        for key in keys {
            self.pending(&key).state = None;
        }
        self.undo
            .flushed_seq
            .get_or_insert(self.overlay.flushed_seq);
        self.overlay.flushed_seq = Some(self.seq);
    }
}

/// What a command sees and does inside [`Pipeline::execute`].
pub struct View<'a> {
    engine: &'a Engine,
    overlay: &'a mut Overlay,
    seq: u64,
    now_ms: u64,
    effects: Vec<Mutation>,
    /// The keyspace events of its effects, logged with them.
    events: Vec<KeyEvent>,
    undo: Undo,
    /// Reads for the client that found their key, and that did not...
    hits: u64,
    misses: u64,
    /// ... and the keys of those that did not.
    missed: Vec<Bytes>,
    /// Some key is watched: the keys the command changes are noted.
    watching: bool,
    /// The keys the command changed (for watches).
    touched: Vec<Bytes>,
}

impl View<'_> {
    /// The time this command runs at, ms since the Unix epoch: every expiry
    /// decision of the command uses it.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The entry of `key`, logically expired ones included.
    ///
    /// # Errors
    ///
    /// Engine read errors.
    pub fn entry(&self, key: &[u8]) -> Result<Option<Entry>> {
        self.overlay.entry(self.engine, key)
    }

    /// The entry of `key` unless missing or expired.
    ///
    /// # Errors
    ///
    /// Engine read errors.
    pub fn get(&self, key: &[u8]) -> Result<Option<Entry>> {
        Ok(self.entry(key)?.filter(|e| !e.is_expired(self.now_ms)))
    }

    /// [`View::get`] for a read the client asked for (as GETSET's, beside
    /// the reads a write makes for itself): counted in
    /// [`View::lookups`].
    ///
    /// # Errors
    ///
    /// Engine read errors.
    pub fn lookup(&mut self, key: &[u8]) -> Result<Option<Entry>> {
        let entry = self.get(key)?;
        match entry {
            Some(_) => self.hits += 1,
            None => {
                self.misses += 1;
                self.missed.push(Bytes::copy_from_slice(key));
            }
        }
        Ok(entry)
    }

    /// The keys of the reads for the client that found none, in order.
    pub fn missed(&self) -> &[Bytes] {
        &self.missed
    }

    /// How many of the command's [`View::lookup`]s found their key, and
    /// how many did not.
    pub fn lookups(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }

    /// A field of the hash at `key` (whose entry the caller has checked).
    ///
    /// # Errors
    ///
    /// Engine read errors.
    pub fn hash_field(&self, key: &[u8], field: &[u8]) -> Result<Option<Bytes>> {
        self.overlay.field(self.engine, key, field)
    }

    /// Every field of the hash at `key`, in byte order.
    ///
    /// # Errors
    ///
    /// Engine read errors.
    pub fn hash_fields(&self, key: &[u8]) -> Result<Vec<(Bytes, Bytes)>> {
        let (changes, base) = match self.overlay.keys.get(key) {
            Some(Pending { state: None, .. }) => return Ok(Vec::new()),
            Some(Pending { state: Some(s), .. }) => (Some(&s.fields), !s.base_cleared),
            None => (None, self.overlay.flushed_seq.is_none()),
        };
        let mut fields: std::collections::BTreeMap<Bytes, Bytes> = if base {
            self.engine
                .hash_fields(key, None, usize::MAX)?
                .into_iter()
                .collect()
        } else {
            Default::default()
        };
        for (field, value) in changes.into_iter().flatten() {
            match value {
                Some(v) => fields.insert(field.clone(), v.clone()),
                None => fields.remove(field),
            };
        }
        Ok(fields.into_iter().collect())
    }

    /// Records an effect of the command; later reads of this command see it.
    ///
    /// # Errors
    ///
    /// Engine read errors.
    pub fn push(&mut self, op: Op) -> Result<()> {
        if self.watching {
            match op_key(&op) {
                Some(key) => self.touched.push(key.clone()),
                // A FLUSHALL changes the watched keys that exist.
                None if matches!(op, Op::FlushAll(_)) => {
                    for key in self.engine.watchers().keys() {
                        if self.entry(&key)?.is_some() {
                            self.touched.push(key);
                        }
                    }
                }
                None => {}
            }
        }
        let mut target = OverlayTarget {
            engine: self.engine,
            overlay: self.overlay,
            seq: self.seq,
            undo: &mut self.undo,
        };
        apply_mutation(&mut target, &op)?;
        self.effects.push(Mutation { op: Some(op) });
        Ok(())
    }

    /// Whether the command has recorded effects.
    pub fn has_effects(&self) -> bool {
        !self.effects.is_empty()
    }

    /// The effects recorded so far, in order.
    pub fn effects(&self) -> &[Mutation] {
        &self.effects
    }

    /// Logs a keyspace event with the command's effects: each node that
    /// applies them tells it ([`crate::ChangeListener::notified`]).
    pub fn notify(&mut self, class: &str, event: &str, key: Bytes) {
        self.events.push(KeyEvent {
            event: event.to_string(),
            key,
            class: class.to_string(),
        });
    }

    /// Whether `watch` still holds (for EXEC): no key of it changed since
    /// it was watched, and none that was live then has expired since.
    ///
    /// # Errors
    ///
    /// Engine read errors.
    pub fn watch_holds(&self, watch: &Watch) -> Result<bool> {
        if watch.is_spoiled() {
            return Ok(false);
        }
        for (key, expired_then) in watch.keys() {
            if !expired_then && self.entry(&key)?.is_some_and(|e| e.is_expired(self.now_ms)) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Reads of a keyspace state: the engine's applied state, or a [`View`]
/// of the write path, which adds the effects on their way (so the reads of
/// a transaction see its earlier writes). The read commands are written
/// once, against this.
pub trait Reader {
    /// The entry of `key` unless it is missing or expired at `now_ms`.
    ///
    /// # Errors
    ///
    /// Engine read errors.
    fn live(&self, key: &[u8], now_ms: u64) -> Result<Option<Entry>>;

    /// A field of the hash at `key` (whose entry the caller has checked).
    ///
    /// # Errors
    ///
    /// Engine read errors.
    fn field(&self, key: &[u8], field: &[u8]) -> Result<Option<Bytes>>;

    /// Fields of the hash at `key` in byte order after `after`, at most
    /// `limit` of them.
    ///
    /// # Errors
    ///
    /// Engine read errors.
    fn fields(&self, key: &[u8], after: Option<&[u8]>, limit: usize)
    -> Result<Vec<(Bytes, Bytes)>>;

    /// Keys in scan order from scan position `from`, as [`Engine::scan`].
    ///
    /// # Errors
    ///
    /// Engine read errors.
    fn scan(&self, from: u64, limit: usize, now_ms: u64) -> Result<Scanned>;

    /// Every live key that `keep` keeps, in scan order, of one state.
    ///
    /// # Errors
    ///
    /// Engine read errors.
    fn keys(&self, now_ms: u64, keep: &mut dyn FnMut(&[u8]) -> bool) -> Result<Vec<Bytes>>;

    /// Keys stored, logically expired ones included.
    ///
    /// # Errors
    ///
    /// Engine read errors.
    fn key_count(&self) -> Result<u64>;

    /// The keyspace digest, as [`Engine::digest`].
    ///
    /// # Errors
    ///
    /// Engine read errors.
    fn digest(&self, now_ms: u64) -> Result<String>;

    /// Runs `read` (reads of the reader it is given only) so that it sees
    /// one state, as [`Engine::stable`]; a view's state cannot change
    /// meanwhile.
    ///
    /// # Errors
    ///
    /// What `read` returns.
    fn stable(&self, read: &mut dyn FnMut(&dyn Reader) -> Result<()>) -> Result<()>;
}

impl Reader for Engine {
    fn live(&self, key: &[u8], now_ms: u64) -> Result<Option<Entry>> {
        self.get(key, now_ms)
    }

    fn field(&self, key: &[u8], field: &[u8]) -> Result<Option<Bytes>> {
        self.hash_field(key, field)
    }

    fn fields(
        &self,
        key: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>> {
        self.hash_fields(key, after, limit)
    }

    fn scan(&self, from: u64, limit: usize, now_ms: u64) -> Result<Scanned> {
        Engine::scan(self, from, limit, now_ms)
    }

    fn keys(&self, now_ms: u64, keep: &mut dyn FnMut(&[u8]) -> bool) -> Result<Vec<Bytes>> {
        Engine::keys(self, now_ms, keep)
    }

    fn key_count(&self) -> Result<u64> {
        Ok(Engine::key_count(self))
    }

    fn digest(&self, now_ms: u64) -> Result<String> {
        Engine::digest(self, now_ms)
    }

    fn stable(&self, read: &mut dyn FnMut(&dyn Reader) -> Result<()>) -> Result<()> {
        Engine::stable(self, read)
    }
}

/// One snapshot of the engine's stored state ([`Engine::stable`]'s last
/// try).
impl Reader for StoredState<'_> {
    fn live(&self, key: &[u8], now_ms: u64) -> Result<Option<Entry>> {
        Ok(self.entry(key)?.filter(|e| !e.is_expired(now_ms)))
    }

    fn field(&self, key: &[u8], field: &[u8]) -> Result<Option<Bytes>> {
        StoredState::field(self, key, field)
    }

    fn fields(
        &self,
        key: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>> {
        StoredState::fields(self, key, after, limit)
    }

    fn scan(&self, from: u64, limit: usize, now_ms: u64) -> Result<Scanned> {
        StoredState::scan(self, from, limit, now_ms)
    }

    fn keys(&self, now_ms: u64, keep: &mut dyn FnMut(&[u8]) -> bool) -> Result<Vec<Bytes>> {
        StoredState::keys(self, now_ms, keep)
    }

    fn key_count(&self) -> Result<u64> {
        StoredState::key_count(self)
    }

    fn digest(&self, now_ms: u64) -> Result<String> {
        Ok(digest_hex(&StoredState::digest(self, now_ms)?))
    }

    fn stable(&self, read: &mut dyn FnMut(&dyn Reader) -> Result<()>) -> Result<()> {
        read(self)
    }
}

/// The view's state is the engine's with the overlay's keys in place of
/// theirs. While a view exists the overlay is locked, so no record's keys
/// leave it; the engine's other keys cannot change meanwhile, since every
/// record on its way to the engine has its keys in the overlay. Only the
/// figures over the whole keyspace (the key count, the digest) compare the
/// overlay's keys with the engine's, so they read one snapshot of it.
impl Reader for View<'_> {
    fn live(&self, key: &[u8], now_ms: u64) -> Result<Option<Entry>> {
        Ok(self.entry(key)?.filter(|e| !e.is_expired(now_ms)))
    }

    fn field(&self, key: &[u8], field: &[u8]) -> Result<Option<Bytes>> {
        self.hash_field(key, field)
    }

    fn fields(
        &self,
        key: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>> {
        if !self.overlay.keys.contains_key(key) && self.overlay.flushed_seq.is_none() {
            return self.engine.hash_fields(key, after, limit);
        }
        Ok(self
            .hash_fields(key)?
            .into_iter()
            .filter(|(f, _)| after.is_none_or(|a| f.as_ref() > a))
            .take(limit)
            .collect())
    }

    fn scan(&self, from: u64, limit: usize, now_ms: u64) -> Result<Scanned> {
        let flushed = self.overlay.flushed_seq.is_some();
        let mut out = if flushed {
            Scanned::default()
        } else {
            self.engine.scan(from, limit, now_ms)?
        };
        out.entries
            .retain(|(k, _)| !self.overlay.keys.contains_key(k.as_ref()));
        // The overlay's live keys in the stretch the engine's batch covers
        // (all of them from `from` when the engine's keys do not count).
        let resume = out.resume;
        let mut ours: Vec<(u64, Bytes, Entry)> = self
            .overlay
            .keys
            .iter()
            .filter_map(|(k, p)| {
                let hash = keys::scan_hash(k);
                if hash < from || resume.is_some_and(|r| hash >= r) {
                    return None;
                }
                let state = p.state.as_ref()?;
                (!state.entry.is_expired(now_ms)).then(|| (hash, k.clone(), state.entry.clone()))
            })
            .collect();
        ours.sort_unstable_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        if flushed && ours.len() > limit.max(1) {
            // Keys of one hash together, as the engine's scan keeps them.
            let last = ours[limit.max(1) - 1].0;
            let end = ours.partition_point(|(hash, _, _)| *hash <= last);
            if let Some(&(next, _, _)) = ours.get(end) {
                out.resume = Some(next);
                ours.truncate(end);
            }
        }
        let mut all: Vec<(u64, Bytes, Entry)> = std::mem::take(&mut out.entries)
            .into_iter()
            .map(|(k, e)| (keys::scan_hash(&k), k, e))
            .chain(ours)
            .collect();
        all.sort_unstable_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        out.entries = all.into_iter().map(|(_, k, e)| (k, e)).collect();
        Ok(out)
    }

    /// The view's state stands still: its scan, stretch by stretch.
    fn keys(&self, now_ms: u64, keep: &mut dyn FnMut(&[u8]) -> bool) -> Result<Vec<Bytes>> {
        let mut out = Vec::new();
        let mut from = 0;
        loop {
            let scanned = Reader::scan(self, from, 1024, now_ms)?;
            out.extend(
                scanned
                    .entries
                    .into_iter()
                    .map(|(k, _)| k)
                    .filter(|k| keep(k)),
            );
            match scanned.resume {
                Some(resume) => from = resume,
                None => return Ok(out),
            }
        }
    }

    fn key_count(&self) -> Result<u64> {
        let flushed = self.overlay.flushed_seq.is_some();
        self.engine.snapshot_read(|stored| {
            let mut count = if flushed { 0 } else { stored.key_count()? };
            for (key, p) in &self.overlay.keys {
                let before = !flushed && stored.entry(key)?.is_some();
                match (before, p.state.is_some()) {
                    (false, true) => count += 1,
                    (true, false) => count = count.saturating_sub(1),
                    _ => {}
                }
            }
            Ok(count)
        })
    }

    fn digest(&self, now_ms: u64) -> Result<String> {
        let flushed = self.overlay.flushed_seq.is_some();
        let fields_of = |entry: &Entry, read: &dyn Fn() -> Result<Vec<(Bytes, Bytes)>>| {
            if entry.has_rows() {
                read()
            } else {
                Ok(Vec::new())
            }
        };
        let digest = self.engine.snapshot_read(|stored| {
            let mut acc = if flushed {
                Digest::default()
            } else {
                stored.digest(now_ms)?
            };
            for (key, p) in &self.overlay.keys {
                // Out with the engine's entry, in with the view's.
                if !flushed
                    && let Some(entry) = stored.entry(key)?.filter(|e| !e.is_expired(now_ms))
                {
                    acc.add(
                        key,
                        &entry,
                        &fields_of(&entry, &|| stored.hash_fields(key))?,
                    );
                }
                if let Some(state) = &p.state
                    && !state.entry.is_expired(now_ms)
                {
                    let fields = fields_of(&state.entry, &|| self.hash_fields(key))?;
                    acc.add(key, &state.entry, &fields);
                }
            }
            Ok(acc)
        })?;
        Ok(digest_hex(&digest))
    }

    fn stable(&self, read: &mut dyn FnMut(&dyn Reader) -> Result<()>) -> Result<()> {
        read(self)
    }
}

/// The outcome of [`Pipeline::execute`], ready once the command's effects
/// (and everything it read) are durable and applied.
#[derive(Debug)]
pub struct Ticket<R> {
    reply: R,
    wait: Wait,
}

#[derive(Debug)]
enum Wait {
    /// The `n`th record of an apply job.
    Applied(Done, u64),
    Seq(u64, watch::Receiver<u64>),
}

impl<R> Ticket<R> {
    /// Waits for the command's effects (or what it read) to be applied.
    ///
    /// # Errors
    ///
    /// [`EngineError::Stopped`] if the WAL failed or the node is stopping.
    pub async fn wait(self) -> Result<R> {
        self.wait_with_lsn().await.map(|(reply, _)| reply)
    }

    /// As [`Ticket::wait`], with the LSN of the command's record when it
    /// had effects.
    ///
    /// # Errors
    ///
    /// As [`Ticket::wait`].
    pub async fn wait_with_lsn(self) -> Result<(R, Option<Lsn>)> {
        match self.wait {
            Wait::Applied(done, n) => match done.wait().await {
                Ok(first) => Ok((self.reply, Some(Lsn(first.0 + n)))),
                Err(why) => Err(EngineError::Stopped(why.clone())),
            },
            Wait::Seq(seq, mut rx) => match rx.wait_for(|&applied| applied >= seq).await {
                Ok(_) => Ok((self.reply, None)),
                Err(_) => Err(EngineError::Stopped("the applier stopped".into())),
            },
        }
    }
}

/// The records of one append, in order (with their sequence numbers), and
/// whom to tell once they are applied: one completion for the whole append.
struct ApplyJob {
    records: Vec<(u64, WalRecord)>,
    /// The client whose commands these are ([`Engine::apply_by`]).
    by: Option<u64>,
    pending: PendingAppend,
    applied: Applied,
}

/// An append's outcome, shared by the tickets of its commands: the first
/// LSN of its records once they are applied (each ticket adds its place in
/// the append), or why they were not.
#[derive(Debug, Default)]
struct JobOutcome {
    outcome: OnceLock<Result<Lsn, String>>,
    notify: tokio::sync::Notify,
}

type Done = Arc<JobOutcome>;

impl JobOutcome {
    async fn wait(&self) -> &Result<Lsn, String> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the look, so a set in between still wakes.
            notified.as_mut().enable();
            if let Some(outcome) = self.outcome.get() {
                return outcome;
            }
            notified.await;
        }
    }
}

/// Sets an append's outcome and wakes its waiters when dropped; dropped
/// unset (the write path stopped before it), the outcome is an error.
struct Applied(Done);

impl Applied {
    fn set(self, outcome: Result<Lsn, String>) {
        let _ = self.0.outcome.set(outcome);
    }
}

impl Drop for Applied {
    fn drop(&mut self) {
        self.0
            .outcome
            .get_or_init(|| Err("the applier stopped".into()));
        self.0.notify.notify_waiters();
    }
}

/// What a command whose record did not reach the WAL gets.
fn failed(failure: &Option<String>) -> EngineError {
    EngineError::Stopped(
        failure
            .clone()
            .unwrap_or_else(|| "the applier stopped".into()),
    )
}

/// A command of [`Pipeline::execute_many`] as it ran.
enum Outcome<R> {
    /// No effects: ready once what it read (up to this sequence) is applied.
    Read(R, u64),
    Failed(EngineError),
    /// Effects staged for the WAL (the next of the staged records).
    Staged(R),
}

/// A command's record on its way to the WAL.
struct Staged {
    seq: u64,
    bytes: Bytes,
    /// Its length as the WAL frames it.
    framed: u64,
    record: WalRecord,
    undo: Undo,
}

struct ExecState {
    /// The last record given to the WAL.
    seq: u64,
}

/// The write path of a primary (see the module docs).
pub struct Pipeline {
    engine: Arc<Engine>,
    wal: Arc<Wal>,
    exec: tokio::sync::Mutex<ExecState>,
    overlay: Arc<Mutex<Overlay>>,
    applier: Arc<Applier>,
    applied_seq: watch::Receiver<u64>,
    /// Off on a replica: commands with effects are refused
    /// ([`EngineError::ReadOnly`]); checked under the executor lock, so
    /// [`Pipeline::fence`] knows no write slips past it.
    writable: AtomicBool,
    /// The pauses on, one per purpose ([`Pipeline::pause`]).
    paused: watch::Sender<Pauses>,
    /// Set by [`Pipeline::refuse_paused`]: the held commands fail.
    refusing: AtomicBool,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").finish_non_exhaustive()
    }
}

/// Why commands are held ([`Pipeline::pause`]); each purpose's pause is
/// kept apart, as Redis keeps them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PausePurpose {
    /// CLIENT PAUSE, until CLIENT UNPAUSE or its timeout.
    Client,
    /// A SHUTDOWN waiting for replicas to catch up.
    Shutdown,
    /// A FAILOVER handing the primary's role over.
    Failover,
}

/// How many [`PausePurpose`]s there are.
const PAUSE_PURPOSES: usize = 3;

/// One purpose's pause: until when, and whether of every command or only
/// of the write path's.
#[derive(Clone, Copy, Debug)]
struct Pause {
    until: std::time::Instant,
    all: bool,
}

/// The pause of each purpose, if on.
#[derive(Clone, Copy, Debug, Default)]
struct Pauses([Option<Pause>; PAUSE_PURPOSES]);

impl Pauses {
    /// When the last pause holding writes (`all`: holding everything)
    /// ends, if one holds now (the clock is read only if a pause is set:
    /// this is asked of every command).
    fn end(&self, all: bool) -> Option<std::time::Instant> {
        let mut set = self.0.iter().flatten().filter(|p| p.all || !all).peekable();
        set.peek()?;
        let now = std::time::Instant::now();
        set.filter(|p| p.until > now).map(|p| p.until).max()
    }
}

fn lock(overlay: &Mutex<Overlay>) -> MutexGuard<'_, Overlay> {
    overlay.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Pipeline {
    /// Starts the write path over an engine that has replayed `wal`; the
    /// WAL's writer thread applies the records (see [`Wal::set_after_commit`]).
    ///
    /// # Panics
    ///
    /// If the engine has not caught up with the WAL.
    pub fn start(engine: Arc<Engine>, wal: Arc<Wal>) -> Pipeline {
        assert_eq!(
            engine.applied_lsn(),
            wal.last_lsn(),
            "the engine has replayed the WAL"
        );
        let (applied_tx, applied_seq) = watch::channel(0);
        let overlay = Arc::new(Mutex::new(Overlay::default()));
        let applier = Arc::new(Applier {
            engine: engine.clone(),
            overlay: overlay.clone(),
            queue: Mutex::new(VecDeque::new()),
            stopped: OnceLock::new(),
            on_failure: OnceLock::new(),
            state: Mutex::new(ApplierState {
                failure: None,
                applied_tx: Some(applied_tx),
            }),
        });
        let hook = applier.clone();
        wal.set_after_commit(Some(Arc::new(move || hook.run())));
        Pipeline {
            engine,
            wal,
            exec: tokio::sync::Mutex::new(ExecState { seq: 0 }),
            overlay,
            applier,
            applied_seq,
            writable: AtomicBool::new(true),
            paused: watch::Sender::new(Pauses::default()),
            refusing: AtomicBool::new(false),
        }
    }

    /// Has `f` called when durable records (logged, maybe shipped) still
    /// fail to apply to the engine after [`APPLY_RETRY_FOR`], before their
    /// writes are answered: the node's state then lacks writes its log and
    /// its replicas hold, which a restart (replaying the log) mends. If `f`
    /// returns, the write path stops: those writes and every later one get
    /// an error. Set once; later calls are ignored.
    pub fn on_apply_failure(&self, f: ApplyFailure) {
        let _ = self.applier.on_failure.set(f);
    }

    /// Ends every pause by failing the commands they hold, and any after
    /// ([`EngineError::Stopped`]), as the node shuts down: a write held by
    /// a pause for a switchover must not run on the old primary once its
    /// replica may have taken over. Whether a pause was on.
    pub fn refuse_paused(&self) -> bool {
        let was = self.is_paused();
        if was {
            self.refusing.store(true, Ordering::Release);
        }
        self.paused.send_replace(Pauses::default());
        was
    }

    /// Has the write path's commands wait until `until` before they run,
    /// as CLIENT PAUSE WRITE has writes wait; with `all`,
    /// [`Pipeline::until_all_unpaused`] holds every other command too
    /// (CLIENT PAUSE ALL). Each purpose's pause is kept apart, as Redis
    /// keeps them: ending one ([`Pipeline::unpause`]) leaves the others
    /// on, and a pause for a purpose already paused neither shortens it
    /// nor lets more through. Checked under the executor lock: once
    /// [`Pipeline::quiesce`] returns after it, no command of the write path
    /// runs until the pause ends.
    pub fn pause(&self, purpose: PausePurpose, until: std::time::Instant, all: bool) {
        let now = std::time::Instant::now();
        self.paused.send_modify(|pauses| {
            let slot = &mut pauses.0[purpose as usize];
            *slot = Some(match *slot {
                Some(old) if old.until > now => Pause {
                    until: old.until.max(until),
                    all: old.all || all,
                },
                _ => Pause { until, all },
            });
        });
    }

    /// Ends the pause of `purpose`; the others hold on.
    pub fn unpause(&self, purpose: PausePurpose) {
        self.paused
            .send_modify(|pauses| pauses.0[purpose as usize] = None);
    }

    /// Whether a pause of everything holds now.
    pub fn is_all_paused(&self) -> bool {
        self.paused.borrow().end(true).is_some()
    }

    /// Waits while a pause of everything holds ([`Pipeline::pause`]).
    pub async fn until_all_unpaused(&self) {
        if self.is_all_paused() {
            self.until_unpaused(true).await;
        }
    }

    /// Returns once no command is running (none starts while paused).
    pub async fn quiesce(&self) {
        drop(self.exec.lock().await);
    }

    /// Whether the write path's commands are paused now.
    pub fn is_paused(&self) -> bool {
        self.paused.borrow().end(false).is_some()
    }

    /// Waits until no pause holds commands with effects.
    pub async fn until_writes_unpaused(&self) {
        self.until_unpaused(false).await;
    }

    /// Waits while the write path's commands are paused, or (`all`) while
    /// everything is.
    async fn until_unpaused(&self, all: bool) {
        let mut paused = self.paused.subscribe();
        loop {
            let end = paused.borrow_and_update().end(all);
            let Some(until) = end else { return };
            tokio::select! {
                () = tokio::time::sleep_until(until.into()) => {}
                _ = paused.changed() => {}
            }
        }
    }

    /// Whether commands with effects are accepted.
    pub fn is_writable(&self) -> bool {
        self.writable.load(Ordering::Acquire)
    }

    /// Stops accepting commands with effects, then waits until every one
    /// accepted before is durable and applied (or has failed). After it
    /// returns the engine holds everything the pipeline wrote, and only
    /// [`Pipeline::unfence`] lets writes in again.
    pub async fn fence(&self) {
        let seq = {
            let exec = self.exec.lock().await;
            self.writable.store(false, Ordering::Release);
            exec.seq
        };
        let mut applied = self.applied_seq.clone();
        // An error means the applier stopped: nothing more will be applied.
        let _ = applied.wait_for(|&a| a >= seq).await;
        // From now on records reach the engine from outside the write path
        // (those staged before touched the watches when they were staged).
        self.engine.watchers().set_on_apply(true);
    }

    /// Accepts commands with effects again. The engine must hold everything
    /// in the WAL (a replica's records were applied outside the pipeline).
    ///
    /// # Panics
    ///
    /// If the engine has not applied the whole WAL.
    pub fn unfence(&self) {
        assert_eq!(
            self.engine.applied_lsn(),
            self.wal.last_lsn(),
            "the engine holds the whole WAL before writes resume"
        );
        self.engine.watchers().set_on_apply(false);
        self.writable.store(true, Ordering::Release);
    }

    /// Watches `keys` for `watch` (WATCH): a change to one of them staged
    /// after this spoils it. Each key's state is read as the commands
    /// before it left it.
    ///
    /// # Errors
    ///
    /// Engine read errors.
    pub fn watch(&self, watch: &Watch, keys: &[Bytes]) -> Result<()> {
        // The overlay's lock orders this among the commands' changes; on a
        // replica, records applied from outside wait. The overlay before
        // the engine's gate, as EXEC takes them.
        let overlay = lock(&self.overlay);
        let _still = (!self.is_writable()).then(|| self.engine.hold_writes());
        let now_ms = now_ms();
        for key in keys {
            let expired = overlay
                .entry(&self.engine, key)?
                .is_some_and(|e| e.is_expired(now_ms));
            watch.add(key.clone(), expired);
        }
        Ok(())
    }

    /// The engine behind the pipeline (it holds only applied records).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Why the write path stopped (a record failed to apply), once it did:
    /// it takes no command with effects from then on.
    pub fn stopped(&self) -> Option<&str> {
        self.applier.stopped.get().map(String::as_str)
    }

    /// Runs `command` alone against the latest state, sends its effects to
    /// the WAL, and returns a ticket for its reply. The command must only
    /// read and push effects: it runs under the write lock.
    ///
    /// # Errors
    ///
    /// What `command` returns, a record too large for the WAL
    /// ([`EngineError::Wal`]), [`EngineError::Stopped`] once the WAL failed
    /// or the applier stopped.
    pub async fn execute<R>(
        &self,
        command: impl FnOnce(&mut View<'_>) -> Result<R>,
    ) -> Result<Ticket<R>> {
        self.execute_held(None, [command], true)
            .await
            .pop()
            .expect("one outcome per command")
    }

    /// [`Pipeline::execute`] for a command that only reads (a transaction
    /// of reads): it runs through a pause of the write path's commands, as
    /// Redis runs such an EXEC under CLIENT PAUSE WRITE. Effects it pushes
    /// all the same are refused ([`EngineError::ReadOnly`]) while a pause
    /// holds, so nothing reaches the WAL during one.
    ///
    /// # Errors
    ///
    /// As [`Pipeline::execute`].
    pub async fn execute_read<R>(
        &self,
        by: Option<u64>,
        command: impl FnOnce(&mut View<'_>) -> Result<R>,
    ) -> Result<Ticket<R>> {
        self.execute_held(by, [command], false)
            .await
            .pop()
            .expect("one outcome per command")
    }

    /// [`Pipeline::execute`] for several commands in a row, as one client
    /// pipelines them: each runs alone and sees the ones before it, each
    /// has its own record and outcome, in order; the records go to the WAL
    /// in as few appends (and the applier in as few jobs) as fit. `by`:
    /// the client's id, which the engine's change listener is told with
    /// the keys they change ([`Engine::apply_by`]).
    pub async fn execute_many<R, C>(
        &self,
        by: Option<u64>,
        commands: impl IntoIterator<Item = C>,
    ) -> Vec<Result<Ticket<R>>>
    where
        C: FnOnce(&mut View<'_>) -> Result<R>,
    {
        self.execute_held(by, commands, true).await
    }

    /// [`Pipeline::execute_many`]; `held`: they wait out a pause of the
    /// write path's commands (else effects are refused during one).
    async fn execute_held<R, C>(
        &self,
        by: Option<u64>,
        commands: impl IntoIterator<Item = C>,
        held: bool,
    ) -> Vec<Result<Ticket<R>>>
    where
        C: FnOnce(&mut View<'_>) -> Result<R>,
    {
        // Not while paused: checked again under the lock, which a pause
        // may have come before.
        let mut exec = loop {
            if held && self.is_paused() {
                self.until_unpaused(false).await;
            }
            let exec = self.exec.lock().await;
            if !held || !self.is_paused() {
                break exec;
            }
        };
        if let Some(why) = self.applier.stopped.get() {
            return commands
                .into_iter()
                .map(|_| Err(EngineError::Stopped(why.clone())))
                .collect();
        }
        if self.refusing.load(Ordering::Acquire) {
            let why = "the node is shutting down during a pause of writes";
            return commands
                .into_iter()
                .map(|_| Err(EngineError::Stopped(why.into())))
                .collect();
        }
        // A read's effects (there should be none) may not slip through.
        let writable = self.writable.load(Ordering::Acquire) && (held || !self.is_paused());
        let append_max = self.wal.append_bytes_max();
        let mut outcomes: Vec<Outcome<R>> = Vec::new();
        let mut staged: Vec<Staged> = Vec::new();
        {
            let mut overlay = lock(&self.overlay);
            let now_ms = now_ms();
            let watching = self.engine.watchers().active();
            let mut seq = exec.seq;
            for command in commands {
                let mut view = View {
                    engine: &self.engine,
                    overlay: &mut overlay,
                    seq: seq + 1,
                    now_ms,
                    effects: Vec::new(),
                    events: Vec::new(),
                    undo: Undo::default(),
                    hits: 0,
                    misses: 0,
                    missed: Vec::new(),
                    watching,
                    touched: Vec::new(),
                };
                let mut reply = command(&mut view);
                let (effects, events, undo, touched) =
                    (view.effects, view.events, view.undo, view.touched);
                if !writable && (!effects.is_empty() || !events.is_empty()) && reply.is_ok() {
                    reply = Err(EngineError::ReadOnly);
                }
                // A command's events without effects (a SET already
                // expired) are logged all the same.
                let reply = match reply {
                    Ok(reply) if !effects.is_empty() || !events.is_empty() => reply,
                    Ok(reply) => {
                        outcomes.push(Outcome::Read(reply, seq));
                        overlay.undo(undo);
                        continue;
                    }
                    Err(err) => {
                        outcomes.push(Outcome::Failed(err));
                        overlay.undo(undo);
                        continue;
                    }
                };
                let record = WalRecord {
                    mutations: effects,
                    events,
                };
                let bytes = Bytes::from(record.encode_to_vec());
                let framed = ferry_wal::format::encoded_record_len(bytes.len()) as u64;
                if framed > append_max {
                    // Refused as the WAL would refuse it, before a later
                    // command can see its effects.
                    overlay.undo(undo);
                    outcomes.push(Outcome::Failed(EngineError::Wal(WalError::BatchTooLarge {
                        bytes: framed,
                        max: append_max,
                    })));
                    continue;
                }
                seq += 1;
                let applied_keys = undo.keys.iter().map(|(k, _)| (seq, k.clone()));
                overlay.touched.extend(applied_keys);
                // Watches see the change now, under the lock an EXEC checks
                // its watch under.
                for key in touched {
                    let exists = overlay
                        .entry(&self.engine, &key)
                        .map_or(true, |e| e.is_some());
                    self.engine.watchers().touch(&key, exists);
                }
                outcomes.push(Outcome::Staged(reply));
                staged.push(Staged {
                    seq,
                    bytes,
                    framed,
                    record,
                    undo,
                });
            }
        }
        // The staged records, in appends that each fit one frame.
        let mut done = Vec::with_capacity(staged.len());
        let mut staged = staged.into_iter().peekable();
        // Why the rest of the records did not reach the WAL.
        let mut failure: Option<String> = None;
        let mut undo_from = None;
        while staged.peek().is_some() {
            let mut group = Vec::new();
            let mut bytes = 0;
            while let Some(next) =
                staged.next_if(|s| group.is_empty() || bytes + s.framed <= append_max)
            {
                bytes += next.framed;
                group.push(next);
            }
            let bytes = group
                .iter_mut()
                .map(|s| std::mem::take(&mut s.bytes))
                .collect();
            let records = group
                .iter_mut()
                .map(|s| (s.seq, std::mem::take(&mut s.record)))
                .collect();
            let outcome = Done::default();
            let applied = Applied(outcome.clone());
            let receivers = (0..group.len() as u64).map(move |n| (outcome.clone(), n));
            // Queued before the append is sent: the writer thread, which
            // applies after each commit, always finds the job.
            let queue = &self.applier.queue;
            let queued = self
                .wal
                .enqueue_with(bytes, |pending| {
                    queue
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_back(ApplyJob {
                            records,
                            by,
                            pending,
                            applied,
                        });
                })
                .await;
            if let Err(err) = queued {
                // Nothing of this group or after it reached the log.
                failure = Some(err.to_string());
                undo_from = Some(group);
                break;
            }
            exec.seq = group.last().expect("a group").seq;
            done.extend(receivers);
        }
        if let Some(group) = undo_from {
            // Take their effects back out of the overlay, last first.
            let mut overlay = lock(&self.overlay);
            let mut unsent = group;
            unsent.extend(staged);
            for s in unsent.into_iter().rev() {
                while overlay.touched.back().is_some_and(|(seq, _)| *seq == s.seq) {
                    overlay.touched.pop_back();
                }
                overlay.undo(s.undo);
            }
        }
        let mut done = done.into_iter();
        outcomes
            .into_iter()
            .map(|outcome| match outcome {
                // It read effects that never reached the WAL.
                Outcome::Read(_, seq) if seq > exec.seq => Err(failed(&failure)),
                Outcome::Read(reply, seq) => Ok(Ticket {
                    reply,
                    wait: Wait::Seq(seq, self.applied_seq.clone()),
                }),
                Outcome::Failed(err) => Err(err),
                Outcome::Staged(reply) => match done.next() {
                    Some((rx, n)) => Ok(Ticket {
                        reply,
                        wait: Wait::Applied(rx, n),
                    }),
                    None => Err(failed(&failure)),
                },
            })
            .collect()
    }

    /// Deletes up to `limit` keys whose expiry has passed, through the WAL
    /// (so replicas, which never expire keys themselves, delete them too).
    /// Returns how many were deleted.
    ///
    /// # Errors
    ///
    /// As [`Pipeline::execute`].
    pub async fn expire_keys(&self, limit: usize, notify: bool) -> Result<usize> {
        let candidates = self.engine.expired_keys(now_ms(), limit)?;
        if candidates.is_empty() {
            return Ok(0);
        }
        let ticket = self
            .execute(|view| {
                let mut deleted = 0;
                for key in candidates {
                    if view
                        .entry(&key)?
                        .is_some_and(|e| e.is_expired(view.now_ms()))
                    {
                        if notify {
                            view.notify("x", "expired", key.clone());
                        }
                        view.push(Op::Delete(ferry_proto::v1::Delete { key }))?;
                        deleted += 1;
                    }
                }
                Ok(deleted)
            })
            .await?;
        ticket.wait().await
    }
}

/// A RocksDB write of durable records that fails is tried again after this
/// long, doubling up to [`APPLY_RETRY_DELAY_MAX`], for up to
/// [`APPLY_RETRY_FOR`]: the records are in the WAL (and shipped), so they
/// must be applied, and a disk error may pass. The write path waits
/// meanwhile.
pub const APPLY_RETRY_FIRST: Duration = Duration::from_millis(10);
pub const APPLY_RETRY_DELAY_MAX: Duration = Duration::from_secs(1);
pub const APPLY_RETRY_FOR: Duration = Duration::from_secs(5);

/// What the applier calls when durable records still fail to apply after
/// [`APPLY_RETRY_FOR`] (see [`Pipeline::on_apply_failure`]).
pub type ApplyFailure = Box<dyn Fn(&str) + Send + Sync>;

/// Applies records in order as they become durable, many per RocksDB write.
/// The WAL's writer thread runs it after each group commit, so applying
/// needs no hand-off to another thread; a job is queued before its append
/// is sent, so the commit that makes it durable always finds it.
struct Applier {
    engine: Arc<Engine>,
    overlay: Arc<Mutex<Overlay>>,
    /// Jobs in WAL order, each with its append's outcome to come.
    queue: Mutex<VecDeque<ApplyJob>>,
    /// Why it stopped, once it did: no command with effects is taken from
    /// then on (it would be logged and shipped, never applied here).
    stopped: OnceLock<String>,
    state: Mutex<ApplierState>,
    /// Called when durable records cannot be applied.
    on_failure: OnceLock<ApplyFailure>,
}

struct ApplierState {
    /// Why the write path stopped, once it did.
    failure: Option<String>,
    /// Dropped at the first failure, so waiters on the applied sequence
    /// stop waiting (and fail) instead of waiting forever.
    applied_tx: Option<watch::Sender<u64>>,
}

impl Applier {
    /// Applies every job at the front of the queue whose append is durable
    /// (called by the WAL's writer thread after each commit).
    fn run(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while self.apply_durable(&mut state) {}
    }

    /// One RocksDB write of the durable jobs at the front of the queue;
    /// whether there were any.
    fn apply_durable(&self, state: &mut ApplierState) -> bool {
        // Each durable job's completion and first LSN; their records.
        let mut done = Vec::new();
        let mut records: Vec<(Lsn, WalRecord)> = Vec::new();
        let mut by = Vec::new();
        let mut last_seq = 0;
        {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            while let Some(front) = queue.front_mut() {
                if let Some(why) = &state.failure {
                    let job = queue.pop_front().expect("a front job");
                    job.applied.set(Err(why.clone()));
                    continue;
                }
                let outcome = match front.pending.try_durable() {
                    Some(outcome) => outcome,
                    None => break,
                };
                let job = queue.pop_front().expect("a front job");
                match outcome {
                    Ok(range) => {
                        let mut lsn = range.first;
                        for (seq, record) in job.records {
                            records.push((lsn, record));
                            by.push(job.by);
                            last_seq = seq;
                            lsn = lsn.next();
                        }
                        done.push((job.applied, range.first));
                    }
                    Err(err) => {
                        let _ = self.stopped.set(err.to_string());
                        state.failure = Some(err.to_string());
                        state.applied_tx = None;
                        job.applied.set(Err(err.to_string()));
                    }
                }
            }
        }
        if records.is_empty() {
            return false;
        }
        let mut applied = self.engine.apply_by(&records, &by);
        let (started, mut delay) = (std::time::Instant::now(), APPLY_RETRY_FIRST);
        while let Err(err) = &applied
            && started.elapsed() < APPLY_RETRY_FOR
        {
            tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64,
                "applying durable records failed; trying again");
            std::thread::sleep(delay);
            delay = (delay * 2).min(APPLY_RETRY_DELAY_MAX);
            applied = self.engine.apply_by(&records, &by);
        }
        match applied {
            Ok(()) => {
                lock(&self.overlay).applied(last_seq);
                if let Some(tx) = &state.applied_tx {
                    tx.send_replace(last_seq);
                }
                for (applied, first) in done {
                    applied.set(Ok(first));
                }
            }
            Err(err) => {
                let why = format!("applying to the engine failed: {err}");
                if let Some(on_failure) = self.on_failure.get() {
                    on_failure(&why);
                }
                tracing::error!(error = %err, "applying durable records failed; the write path stops");
                for (applied, _) in done {
                    applied.set(Err(why.clone()));
                }
                let _ = self.stopped.set(why.clone());
                state.failure = Some(why);
                state.applied_tx = None;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_ticket_of_an_append_learns_its_outcome_set_or_dropped() {
        // Waiting before and after the outcome is set.
        let outcome = Done::default();
        let applied = Applied(outcome.clone());
        let early = tokio::spawn({
            let outcome = outcome.clone();
            async move { outcome.wait().await.clone() }
        });
        tokio::task::yield_now().await;
        applied.set(Ok(Lsn(7)));
        assert_eq!(early.await.unwrap(), Ok(Lsn(7)));
        assert_eq!(outcome.wait().await, &Ok(Lsn(7)));

        // Dropped unset: the write path stopped before the append's turn.
        let outcome = Done::default();
        let applied = Applied(outcome.clone());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let outcome = outcome.clone();
                tokio::spawn(async move { outcome.wait().await.clone() })
            })
            .collect();
        tokio::task::yield_now().await;
        drop(applied);
        for waiter in waiters {
            assert_eq!(waiter.await.unwrap(), Err("the applier stopped".into()));
        }
    }
}
