//! WATCH: the keys clients watch, and what spoils a watch (Redis's
//! optimistic locking for MULTI/EXEC).
//!
//! A watch is spoiled by any change to one of its keys after the WATCH, by
//! any client (the watcher too): on a primary when the change is staged in
//! the write path (under the lock that orders commands, so an EXEC checking
//! its watch under the same lock sees every change before it); on a replica,
//! or a primary whose writes are fenced, when a record from outside the
//! write path is applied. As in Redis, a key that was logically expired
//! when watched and is then deleted has not changed, and a key that was
//! live when watched and has since expired has.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::engine::FastMap;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every watch of an engine, by key.
#[derive(Debug, Default)]
pub struct Watchers {
    /// Keys watched, over all watches: while none are, writes skip the
    /// registry altogether.
    count: AtomicUsize,
    /// Changes reach the engine from outside the write path (a replica's
    /// stream): they are looked at as they are applied.
    on_apply: AtomicBool,
    by_key: Mutex<FastMap<Bytes, Vec<Arc<WatchState>>>>,
}

#[derive(Debug, Default)]
struct WatchState {
    spoiled: AtomicBool,
    /// The keys watched, each with whether it was logically expired then.
    keys: Mutex<FastMap<Bytes, bool>>,
}

impl Watchers {
    /// Whether any key is watched.
    pub(crate) fn active(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    pub(crate) fn set_on_apply(&self, on: bool) {
        self.on_apply.store(on, Ordering::Release);
    }

    /// Whether applied records are looked at (see [`Watchers::on_apply`]),
    /// and a key is watched.
    pub(crate) fn on_apply(&self) -> bool {
        self.on_apply.load(Ordering::Acquire) && self.active()
    }

    /// The keys watched.
    pub(crate) fn keys(&self) -> Vec<Bytes> {
        lock(&self.by_key).keys().cloned().collect()
    }

    /// `key` changed and now exists or not: every watch of it is spoiled,
    /// but for one that watched it while logically expired and now finds
    /// it gone (no logical change; later changes do count).
    pub(crate) fn touch(&self, key: &[u8], exists_after: bool) {
        let by_key = lock(&self.by_key);
        let Some(watches) = by_key.get(key) else {
            return;
        };
        for watch in watches {
            let mut keys = lock(&watch.keys);
            let Some(expired_then) = keys.get_mut(key) else {
                continue;
            };
            if *expired_then && !exists_after {
                *expired_then = false;
            } else {
                watch.spoiled.store(true, Ordering::Release);
            }
        }
    }

    /// The whole keyspace was replaced (a replica's full resync): every
    /// watch is spoiled.
    pub(crate) fn spoil_all(&self) {
        if !self.active() {
            return;
        }
        for watch in lock(&self.by_key).values().flatten() {
            watch.spoiled.store(true, Ordering::Release);
        }
    }
}

/// One client's watch: the keys of its WATCH commands since its last EXEC,
/// DISCARD or UNWATCH. Dropping it forgets them.
#[derive(Debug)]
pub struct Watch {
    state: Arc<WatchState>,
    watchers: Arc<Watchers>,
}

impl Watch {
    pub(crate) fn new(watchers: Arc<Watchers>) -> Watch {
        Watch {
            state: Arc::default(),
            watchers,
        }
    }

    /// Whether no key is watched.
    pub fn is_empty(&self) -> bool {
        lock(&self.state.keys).is_empty()
    }

    /// Whether a change to a watched key spoiled the watch (expiry aside:
    /// see [`crate::View::watch_holds`]).
    pub fn is_spoiled(&self) -> bool {
        self.state.spoiled.load(Ordering::Acquire)
    }

    /// Watches `key` (`expired`: it is logically expired now). A key
    /// watched already keeps its first state, as in Redis.
    pub(crate) fn add(&self, key: Bytes, expired: bool) {
        // The registry before the watch's keys, as [`Watchers::touch`].
        let mut by_key = lock(&self.watchers.by_key);
        let mut keys = lock(&self.state.keys);
        if keys.contains_key(&key) {
            return;
        }
        keys.insert(key.clone(), expired);
        by_key.entry(key).or_default().push(self.state.clone());
        self.watchers.count.fetch_add(1, Ordering::AcqRel);
    }

    /// The keys watched, each with whether it was logically expired then.
    pub(crate) fn keys(&self) -> Vec<(Bytes, bool)> {
        lock(&self.state.keys)
            .iter()
            .map(|(k, &expired)| (k.clone(), expired))
            .collect()
    }

    /// Forgets every key (UNWATCH; EXEC and DISCARD do it too).
    pub fn clear(&self) {
        let mut by_key = lock(&self.watchers.by_key);
        let keys = std::mem::take(&mut *lock(&self.state.keys));
        for key in keys.keys() {
            if let Some(watches) = by_key.get_mut(key) {
                watches.retain(|w| !Arc::ptr_eq(w, &self.state));
                if watches.is_empty() {
                    by_key.remove(key);
                }
            }
        }
        self.watchers.count.fetch_sub(keys.len(), Ordering::AcqRel);
        self.state.spoiled.store(false, Ordering::Release);
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.clear();
    }
}
