//! WAL retention: which segments a node may delete.
//!
//! Each replica that ever followed this node has a slot (PostgreSQL's
//! replication slot): the LSN it has flushed, kept in the data directory
//! across restarts. A segment goes only when every record in it is below
//! the engine's persisted LSN (what RocksDB's files hold) and below every
//! slot, unless the cap (`wal_retention_max_bytes`) forces it: then the
//! slots left behind are marked lost and their replicas bootstrap from a
//! snapshot when they return.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use ferry_engine::Engine;
use ferry_wal::{Lsn, Wal};

use crate::error::{Result, ShipError};

/// Default for the retention cap: a slot may hold back at most this many
/// bytes of WAL (0: no cap).
pub const WAL_RETENTION_MAX_BYTES_DEFAULT: u64 = 8 << 30;
/// A slot whose safe bytes fall below this share of the cap is warned of.
pub const SLOT_WARN_FRACTION: f64 = 0.2;
/// An engine idle for a round persists its memtable once it holds at least
/// this many applied records (fewer are not worth a small SST file).
pub const IDLE_FLUSH_RECORDS_MIN: u64 = 10_000;
/// The file of the slots, in the node's state directory.
pub const SLOTS_FILE: &str = "slots";

/// How a slot stands, as PostgreSQL's `wal_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalStatus {
    /// Within what the node keeps anyway.
    Reserved,
    /// The slot alone keeps WAL the engine no longer needs.
    Extended,
    /// The cap forced out records the replica needs.
    Lost,
}

impl WalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            WalStatus::Reserved => "reserved",
            WalStatus::Extended => "extended",
            WalStatus::Lost => "lost",
        }
    }
}

/// One slot, as status reports show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    pub node_id: String,
    pub lsn: Lsn,
    pub retained_bytes: u64,
    pub wal_status: WalStatus,
    /// Bytes the WAL may grow before the slot is lost: 0 once lost,
    /// `u64::MAX` without a cap.
    pub safe_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    lsn: Lsn,
    lost: bool,
    /// Warned that it nears the cap (until it moves away again).
    warned: bool,
}

#[derive(Debug, Default)]
struct SlotTable {
    slots: BTreeMap<String, Slot>,
    /// Changed since last saved.
    dirty: bool,
}

/// The retention slots of a node.
#[derive(Debug)]
pub struct Retention {
    path: PathBuf,
    /// 0: no cap.
    max_bytes: u64,
    table: Mutex<SlotTable>,
    /// The engine's applied LSN at the last round, to see it idle.
    applied_last_round: std::sync::atomic::AtomicU64,
}

impl Retention {
    /// Loads the slots kept in `dir` (none if the file is missing).
    ///
    /// # Errors
    ///
    /// [`ShipError::Io`] if the file cannot be read or does not parse.
    pub fn load(dir: &Path, max_bytes: u64) -> Result<Retention> {
        let path = dir.join(SLOTS_FILE);
        let mut slots = BTreeMap::new();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    let mut parts = line.split_whitespace();
                    let parsed = (|| {
                        let id = parts.next()?.to_string();
                        let lsn = parts.next()?.parse().ok()?;
                        let lost = parts.next()? == "lost";
                        Some((id, lsn, lost))
                    })();
                    let Some((id, lsn, lost)) = parsed else {
                        tracing::warn!(file = %path.display(), %line, "skipping a bad slot line");
                        continue;
                    };
                    slots.insert(
                        id,
                        Slot {
                            lsn: Lsn(lsn),
                            lost,
                            warned: false,
                        },
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ShipError::Io(format!("reading {}: {e}", path.display()))),
        }
        Ok(Retention {
            path,
            max_bytes,
            table: Mutex::new(SlotTable {
                slots,
                dirty: false,
            }),
            applied_last_round: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn table(&self) -> MutexGuard<'_, SlotTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cap (0: none).
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Keeps the records after `lsn` for `node_id` (a replica accepted from
    /// there, or bootstrapping from a snapshot at it). A new slot is written
    /// to disk at once, so that a restart keeps it.
    ///
    /// # Errors
    ///
    /// [`ShipError::Io`] if a new slot cannot be saved (it is kept in
    /// memory, and saved again by the next round).
    pub fn hold(&self, node_id: &str, lsn: Lsn) -> Result<()> {
        let new = {
            let mut table = self.table();
            let new = table
                .slots
                .insert(
                    node_id.to_string(),
                    Slot {
                        lsn,
                        lost: false,
                        warned: false,
                    },
                )
                .is_none();
            table.dirty = true;
            new
        };
        if new { self.save() } else { Ok(()) }
    }

    /// A replica flushed up to `lsn`: its slot moves forward.
    pub fn advance(&self, node_id: &str, lsn: Lsn) {
        let mut table = self.table();
        if let Some(slot) = table.slots.get_mut(node_id)
            && !slot.lost
            && lsn > slot.lsn
        {
            slot.lsn = lsn;
            table.dirty = true;
        }
    }

    /// Forgets a slot; returns whether there was one.
    pub fn drop_slot(&self, node_id: &str) -> bool {
        let mut table = self.table();
        let dropped = table.slots.remove(node_id).is_some();
        table.dirty |= dropped;
        dropped
    }

    /// Whether no replica has a slot.
    pub fn is_empty(&self) -> bool {
        self.table().slots.is_empty()
    }

    /// Whether the slot of `node_id` was lost to the cap.
    pub fn is_lost(&self, node_id: &str) -> bool {
        self.table().slots.get(node_id).is_some_and(|s| s.lost)
    }

    /// Every slot with its retained and safe bytes.
    pub fn list(&self, wal: &Wal, engine: &Engine) -> Vec<SlotInfo> {
        let persisted = engine.persisted_lsn();
        self.table()
            .slots
            .iter()
            .map(|(id, slot)| self.info(id, slot, wal, persisted))
            .collect()
    }

    fn info(&self, id: &str, slot: &Slot, wal: &Wal, persisted: Lsn) -> SlotInfo {
        let retained_bytes = if slot.lost {
            0
        } else {
            wal.bytes_after(slot.lsn)
        };
        let wal_status = if slot.lost {
            WalStatus::Lost
        } else if slot.lsn < persisted {
            WalStatus::Extended
        } else {
            WalStatus::Reserved
        };
        let safe_bytes = match (slot.lost, self.max_bytes) {
            (true, _) => 0,
            (false, 0) => u64::MAX,
            (false, max) => max.saturating_sub(retained_bytes),
        };
        SlotInfo {
            node_id: id.to_string(),
            lsn: slot.lsn,
            retained_bytes,
            wal_status,
            safe_bytes,
        }
    }

    /// One round: persists the engine if it was idle since the last round or
    /// if that lets segments go, enforces
    /// the cap (marking slots lost), deletes the segments nothing needs, and
    /// saves the slots if they changed. Blocking (RocksDB flush, file I/O).
    /// Returns how many segments were deleted.
    ///
    /// # Errors
    ///
    /// Engine, WAL or file errors; the next round tries again.
    pub fn enforce(&self, wal: &Wal, engine: &Engine) -> Result<usize> {
        // Idle since the last round with applied records only in the
        // memtable: persist them now, while it costs no one anything. The
        // WAL after them can go sooner, a restart replays nothing, and a
        // snapshot needs no flush.
        let applied = engine.applied_lsn();
        let before = self
            .applied_last_round
            .swap(applied.0, std::sync::atomic::Ordering::AcqRel);
        if applied.0 == before
            && applied.0.saturating_sub(engine.persisted_lsn().0) >= IDLE_FLUSH_RECORDS_MIN
        {
            engine.flush().map_err(|e| ShipError::Io(e.to_string()))?;
        }
        let segments = wal.segments();
        let mut deleted = 0;
        if segments.len() > 1 {
            let slots_min = {
                let table = self.table();
                table
                    .slots
                    .values()
                    .filter(|s| !s.lost)
                    .map(|s| s.lsn)
                    .min()
            };
            let sealed_end = Lsn(segments[segments.len() - 1].0.0 - 1);
            // Records the slots (or the cap) let go but the engine's files
            // still need: flush RocksDB so its persisted LSN moves past them.
            // Without this a busy primary whose memtable never fills would
            // neither purge nor enforce the cap.
            let wanted = self.purge_point(wal, &segments, slots_min, sealed_end);
            if engine.persisted_lsn() < wanted && segments[1].0 <= wanted.next() {
                engine.flush().map_err(|e| ShipError::Io(e.to_string()))?;
            }
            let persisted = engine.persisted_lsn();
            // The slots are read again and the purge made under their lock:
            // a slot taken meanwhile (a replica just accepted) is either
            // seen here or sees the purge when it checks retention after.
            let mut table = self.table();
            let slots_min = table
                .slots
                .values()
                .filter(|s| !s.lost)
                .map(|s| s.lsn)
                .min();
            let keep_from = self
                .purge_point(wal, &segments, slots_min, sealed_end)
                .min(persisted)
                .next();
            deleted = wal.purge_before(keep_from)?;
            let first = wal.first_lsn();
            let mut lost_now = Vec::new();
            for (id, slot) in table.slots.iter_mut() {
                if !slot.lost && slot.lsn.next() < first {
                    slot.lost = true;
                    lost_now.push(id.clone());
                }
            }
            for id in &lost_now {
                tracing::warn!(replica = %id, first_retained = %first, cap = self.max_bytes,
                    "the WAL retention cap forced out records a replica needs: its slot is lost, it will bootstrap from a snapshot");
            }
            table.dirty |= !lost_now.is_empty();
            drop(table);
        }
        self.warn_near_cap(wal, engine);
        self.save()?;
        Ok(deleted)
    }

    /// The last record the WAL could let go of were the engine persisted
    /// everything: the oldest slot's LSN (or every sealed segment when there
    /// is no slot), moved forward when the WAL from there exceeds the cap to
    /// the start of the oldest segment from which it fits. Never past the
    /// sealed segments.
    fn purge_point(
        &self,
        wal: &Wal,
        segments: &[(Lsn, u64)],
        slots_min: Option<Lsn>,
        sealed_end: Lsn,
    ) -> Lsn {
        let kept = slots_min.unwrap_or(sealed_end).min(sealed_end);
        if self.max_bytes == 0 || wal.bytes_after(kept) <= self.max_bytes {
            return kept;
        }
        let fits = segments
            .iter()
            .map(|&(first, _)| first)
            .find(|&first| wal.bytes_after(Lsn(first.0 - 1)) <= self.max_bytes)
            .map_or(sealed_end, |first| Lsn(first.0 - 1));
        kept.max(fits).min(sealed_end)
    }

    fn warn_near_cap(&self, wal: &Wal, engine: &Engine) {
        if self.max_bytes == 0 {
            return;
        }
        let persisted = engine.persisted_lsn();
        let threshold = (self.max_bytes as f64 * SLOT_WARN_FRACTION) as u64;
        let mut table = self.table();
        let ids: Vec<String> = table.slots.keys().cloned().collect();
        for id in ids {
            let slot = table.slots[&id];
            let info = self.info(&id, &slot, wal, persisted);
            let near = !slot.lost && info.safe_bytes < threshold;
            if near && !slot.warned {
                tracing::warn!(replica = %id, lsn = %slot.lsn, retained_bytes = info.retained_bytes,
                    safe_bytes = info.safe_bytes, cap = self.max_bytes,
                    "a replica's slot nears the WAL retention cap");
            }
            if let Some(s) = table.slots.get_mut(&id) {
                s.warned = near;
            }
        }
    }

    /// Writes the slots if they changed: a temporary file, synced, renamed.
    fn write(&self) -> Result<()> {
        let text = {
            let mut table = self.table();
            if !table.dirty {
                return Ok(());
            }
            table.dirty = false;
            table
                .slots
                .iter()
                .map(|(id, s)| {
                    format!(
                        "{id} {} {}\n",
                        s.lsn.0,
                        if s.lost { "lost" } else { "kept" }
                    )
                })
                .collect::<String>()
        };
        let io = |what: &str, e: std::io::Error| {
            ShipError::Io(format!("{what} {}: {e}", self.path.display()))
        };
        let tmp = self.path.with_extension("tmp");
        {
            use std::io::Write;
            let mut file = std::fs::File::create(&tmp).map_err(|e| io("creating", e))?;
            file.write_all(text.as_bytes())
                .map_err(|e| io("writing", e))?;
            file.sync_all().map_err(|e| io("syncing", e))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(|e| io("renaming", e))?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("syncing the directory of", e))?;
        }
        Ok(())
    }

    /// Writes the slots if they changed; after a failure they stay marked
    /// changed, for the next round.
    fn save(&self) -> Result<()> {
        let result = self.write();
        if result.is_err() {
            self.table().dirty = true;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ferry_proto::v1::{Mutation, SetString, WalRecord, mutation::Op};
    use ferry_wal::testing::SeededRng;
    use ferry_wal::{SyncPolicy, WalOptions};
    use prost::Message;

    /// A SET of key `i` to 64 random letters (they do not compress away).
    fn set(i: u64, rng: &mut SeededRng) -> WalRecord {
        let value: String = (0..64)
            .map(|_| char::from(b'a' + rng.below(26) as u8))
            .collect();
        WalRecord {
            mutations: vec![Mutation {
                op: Some(Op::SetString(SetString {
                    key: Bytes::from(format!("key:{i}")),
                    value: Bytes::from(value),
                    expire_at_ms: 0,
                })),
            }],
            events: Vec::new(),
        }
    }

    /// A primary written to without pause, whose memtable never fills and
    /// which is never idle for a round, still enforces the cap: the round
    /// flushes the engine itself when only the engine stands in the way.
    #[test]
    fn the_cap_is_enforced_on_a_busy_engine_without_waiting_for_a_flush() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = Wal::open(
            dir.path().join("wal"),
            WalOptions {
                sync_policy: SyncPolicy::No,
                segment_bytes_max: 64 << 10,
                ..WalOptions::default()
            },
        )
        .expect("wal");
        let engine = Engine::open(&dir.path().join("engine")).expect("engine");
        let cap = 256 << 10;
        let retention = Retention::load(dir.path(), cap).expect("slots");
        retention.hold("gone", Lsn(0)).expect("hold");
        let mut next = 0u64;
        let mut rng = SeededRng::new(7);
        for round in 0..200 {
            let records: Vec<WalRecord> = (next..next + 500).map(|i| set(i, &mut rng)).collect();
            next += 500;
            let range = wal
                .append_blocking(
                    records
                        .iter()
                        .map(|r| Bytes::from(r.encode_to_vec()))
                        .collect(),
                )
                .expect("append");
            let applied: Vec<(Lsn, WalRecord)> = (range.first.0..=range.last.0)
                .map(Lsn)
                .zip(records)
                .collect();
            engine.apply(&applied).expect("apply");
            retention.enforce(&wal, &engine).expect("round");
            if retention.is_lost("gone") {
                assert!(wal.bytes_after(Lsn(wal.first_lsn().0 - 1)) <= cap + (64 << 10));
                assert!(engine.persisted_lsn() >= Lsn(wal.first_lsn().0 - 1));
                return;
            }
            assert!(
                round < 199,
                "the slot was never lost: {} segments, {} bytes, persisted {:?}",
                wal.segments().len(),
                wal.bytes_after(Lsn(0)),
                engine.persisted_lsn()
            );
        }
    }
}
