//! [`Engine`]: the RocksDB keyspace, applying WAL records in LSN order and
//! answering reads of the applied state.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use ferry_proto::v1::{KeyEvent, Publish, WalRecord, mutation::Op};
use ferry_wal::{Lsn, Wal};
use prost::Message;
use rocksdb::{DB, Options, WriteBatch, WriteOptions};

use crate::cache::{READ_CACHE_BYTES_DEFAULT, ReadCache, ReadCacheStats};
use crate::error::{EngineError, Result};
use crate::keys::{self, Entry, Expiring, Value};
use crate::pipeline::Reader;
use crate::watch::{Watch, Watchers};

/// Records applied per RocksDB write batch during replay.
pub const REPLAY_BATCH_RECORDS: usize = 1024;

/// Size of a RocksDB memtable. Recent writes are also in the read cache, so
/// a larger one buys little and costs resident memory.
pub const MEMTABLE_BYTES: usize = 16 << 20;
/// Memtable inserts hint from the last insert of keys of the same first
/// byte (see [`options`]).
const MEMTABLE_INSERT_HINT_OPTION: &str =
    "memtable_insert_with_hint_prefix_extractor=rocksdb.FixedPrefix.1";
/// The prefix RocksDB's filters know keys by: the kind of entry.
const KIND_PREFIX_BYTES: usize = 1;
/// Share of the memtable given to its bloom filter.
pub const MEMTABLE_BLOOM_RATIO: f64 = 0.1;
/// Bloom filter bits per key in SST files (about 1 % false positives).
pub const SST_BLOOM_BITS_PER_KEY: f64 = 10.0;
/// Keys per bucket of the hash index in each SST data block (RocksDB's
/// default).
pub const DATA_BLOCK_HASH_RATIO: f64 = 0.75;

/// Chunks of a long string a read looks up one by one at most; a read of
/// more passes over them with an iterator.
pub const STRING_CHUNK_LOOKUPS_MAX: u64 = 4;

/// How long a swap waits for operations holding the old database.
pub const SWAP_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(10);

fn options() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.increase_parallelism(2);
    opts.set_max_background_jobs(2);
    opts.set_write_buffer_size(MEMTABLE_BYTES);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    // Most writes look their key up first (its old type and expiry), and
    // most new keys are in neither the memtable nor the SST files: bloom
    // filters on whole keys answer those misses without a search.
    opts.set_memtable_whole_key_filtering(true);
    opts.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO);
    // Each kind of entry (its first byte, see `keys`) is a prefix, in the
    // filters too: an iterator over one kind (the expiry index, which the
    // sweep reads ten times a second) skips the files that hold none of
    // it, instead of reading the first block past where it would be (a
    // large string's, decompressed on every sweep).
    opts.set_prefix_extractor(rocksdb::SliceTransform::create_fixed_prefix(
        KIND_PREFIX_BYTES,
    ));
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_bloom_filter(SST_BLOOM_BITS_PER_KEY, false);
    // GET is a point lookup: a hash index in each data block finds the key
    // without a binary search of the block.
    table.set_data_block_index_type(rocksdb::DataBlockIndexType::BinaryAndHash);
    table.set_data_block_hash_ratio(DATA_BLOCK_HASH_RATIO);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    opts.set_block_based_table_factory(&table);
    // Inserts into the memtable resume their search where the last insert
    // of the same kind of key (its first byte) ended, climbing only as far
    // as the gap to it; with the writes of a batch in key order
    // ([`SortedBatch`]) that is a short climb, not a search from the top.
    // Not in RocksDB's C API, so set by name.
    opts.get_options_from_string(MEMTABLE_INSERT_HINT_OPTION)
        .expect("a known option of this RocksDB")
}

fn open_db(dir: &Path) -> Result<DB> {
    let db = open_families(options(), dir)?;
    ensure_layout(&db)?;
    Ok(db)
}

/// An empty column family in every keyspace of layout 2 and later. It
/// holds nothing: RocksDB opens a database for writing only with all of
/// its column families named, so a version before layout 2, which names
/// none, refuses the directory ("Column families not opened: layout-2")
/// instead of serving it as empty and writing rows of the old layout.
pub const LAYOUT_COLUMN_FAMILY: &str = "layout-2";

/// Opens the database in `dir` with its column families: the default one,
/// which holds the keyspace, and [`LAYOUT_COLUMN_FAMILY`] (made if
/// missing).
fn open_families(mut opts: Options, dir: &Path) -> Result<DB> {
    opts.create_missing_column_families(true);
    // Each family with its own options (the keyspace's are `opts`, which
    // RocksDB would not apply to a family named without them).
    let families = [
        rocksdb::ColumnFamilyDescriptor::new(rocksdb::DEFAULT_COLUMN_FAMILY_NAME, opts.clone()),
        rocksdb::ColumnFamilyDescriptor::new(LAYOUT_COLUMN_FAMILY, Options::default()),
    ];
    Ok(DB::open_cf_descriptors(&opts, dir, families)?)
}

/// Key entries moved in one RocksDB write when a keyspace of layout 1 is
/// opened ([`ensure_layout`]).
pub const LAYOUT_MOVE_BATCH_ROWS: usize = 65_536;

/// Brings the keyspace in `db` to [`keys::LAYOUT`]: one of layout 1 has
/// its key entries moved into scan order, a batch at a time, each entry's
/// old row deleted in the write that puts its new one (so a crash midway
/// leaves every key in one of the two, and the next open goes on); one of
/// a later layout is refused. With RocksDB's WAL off, the layout row
/// reaches disk no later than anything written after it.
fn ensure_layout(db: &DB) -> Result<()> {
    let stored = db
        .get_pinned(keys::META_LAYOUT)?
        .map(|v| keys::decode_u64(&v));
    match stored {
        Some(Some(keys::LAYOUT)) => return Ok(()),
        Some(Some(found)) if found > keys::LAYOUT => {
            return Err(EngineError::UnknownLayout {
                found,
                supported: keys::LAYOUT,
            });
        }
        Some(None) => {
            return Err(EngineError::CorruptEntry {
                key: String::from_utf8_lossy(keys::META_LAYOUT).into_owned(),
            });
        }
        _ => {}
    }
    let mut opts = WriteOptions::default();
    opts.disable_wal(true);
    let mut moved = 0;
    // Each batch seeks past the last row moved, not over the deletions
    // before it.
    let mut from = vec![keys::LEGACY_KEY];
    loop {
        let mut batch = WriteBatch::default();
        let mut rows = 0;
        {
            let mut it = db.iter_over(&[keys::LEGACY_KEY]);
            it.seek(&from);
            while rows < LAYOUT_MOVE_BATCH_ROWS && it.valid() {
                let (Some(k), Some(v)) = (it.key(), it.value()) else {
                    break;
                };
                if k.first() != Some(&keys::LEGACY_KEY) {
                    break;
                }
                batch.delete(k);
                batch.put(keys::key_key(&k[1..]), v);
                from.clear();
                from.extend_from_slice(k);
                from.push(0);
                rows += 1;
                it.next();
            }
            it.status()?;
        }
        if rows == 0 {
            break;
        }
        db.write_opt(batch, &opts)?;
        moved += rows;
    }
    let mut batch = WriteBatch::default();
    batch.put(keys::META_LAYOUT, keys::LAYOUT.to_be_bytes());
    db.write_opt(batch, &opts)?;
    if moved > 0 {
        tracing::info!(keys = moved, "key entries moved into scan order (layout 2)");
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| EngineError::Io(format!("syncing {}: {e}", dir.display())))
}

/// Makes the checkpoint in `checkpoint` the engine directory `engine_dir`
/// (not open), or finishes doing so after a crash; safe to repeat:
///
/// ```text
/// engine -> engine.old, checkpoint -> engine, engine.old deleted
/// ```
///
/// With `checkpoint` gone, only a leftover `engine.old` is deleted.
///
/// # Errors
///
/// [`EngineError::Io`] if a rename, deletion or directory sync fails.
pub fn complete_checkpoint_swap(engine_dir: &Path, checkpoint: &Path) -> Result<()> {
    let io = |what: &str, path: &Path, e: std::io::Error| {
        EngineError::Io(format!("{what} {}: {e}", path.display()))
    };
    let old = engine_dir.with_extension("old");
    let parent = engine_dir.parent().unwrap_or(Path::new("."));
    if checkpoint.exists() {
        if engine_dir.exists() {
            if old.exists() {
                std::fs::remove_dir_all(&old).map_err(|e| io("deleting", &old, e))?;
            }
            std::fs::rename(engine_dir, &old).map_err(|e| io("moving", engine_dir, e))?;
            sync_dir(parent)?;
            ferry_wal::testing::crash_point("engine::swap::old_moved");
        }
        std::fs::rename(checkpoint, engine_dir).map_err(|e| io("moving", checkpoint, e))?;
        sync_dir(parent)?;
        if let Some(from) = checkpoint.parent() {
            sync_dir(from)?;
        }
    }
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| io("deleting", &old, e))?;
    }
    Ok(())
}

/// What reads of the stored state need of RocksDB: the database as it is,
/// or a snapshot of it.
trait Stored {
    fn pinned(
        &self,
        key: &[u8],
    ) -> std::result::Result<Option<rocksdb::DBPinnableSlice<'_>>, rocksdb::Error>;
    /// An iterator over the keys that start with `prefix` only: RocksDB
    /// stops at the prefix's end instead of reading on into the blocks of
    /// other kinds of entries (a large string's among them).
    fn iter_over(&self, prefix: &[u8]) -> rocksdb::DBRawIterator<'_>;
}

/// Read options bounding an iterator to `prefix` (which starts with the
/// kind of entry: RocksDB's prefix filters apply).
fn within(prefix: &[u8]) -> rocksdb::ReadOptions {
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_prefix_same_as_start(true);
    opts.set_iterate_lower_bound(prefix.to_vec());
    opts.set_iterate_upper_bound(keys::prefix_end(prefix));
    opts
}

/// The database and its snapshots read alike.
macro_rules! stored {
    ($t:ty) => {
        impl Stored for $t {
            fn pinned(
                &self,
                key: &[u8],
            ) -> std::result::Result<Option<rocksdb::DBPinnableSlice<'_>>, rocksdb::Error> {
                self.get_pinned(key)
            }
            fn iter_over(&self, prefix: &[u8]) -> rocksdb::DBRawIterator<'_> {
                self.raw_iterator_opt(within(prefix))
            }
        }
    };
}

stored!(DB);
stored!(rocksdb::Snapshot<'_>);

/// The applier's reads, which learn a key's old state to replace it: they
/// leave RocksDB's block cache as it was. Most of them find that a key is
/// new, and a block read for that (a filter's false positive, one file in a
/// hundred) would evict one that clients read: a load of new keys filled
/// the cache with them.
struct Uncached<'a>(&'a DB, &'a rocksdb::ReadOptions);

impl Stored for Uncached<'_> {
    fn pinned(
        &self,
        key: &[u8],
    ) -> std::result::Result<Option<rocksdb::DBPinnableSlice<'_>>, rocksdb::Error> {
        self.0.get_pinned_opt(key, self.1)
    }
    fn iter_over(&self, prefix: &[u8]) -> rocksdb::DBRawIterator<'_> {
        let mut opts = within(prefix);
        opts.fill_cache(false);
        self.0.raw_iterator_opt(opts)
    }
}

/// Read options that leave the block cache as it was ([`Uncached`]).
fn uncached_reads() -> rocksdb::ReadOptions {
    let mut opts = rocksdb::ReadOptions::default();
    opts.fill_cache(false);
    opts
}

/// The stored entry of `key` in `db` (see [`Engine::entry`]).
fn entry_in(db: &impl Stored, key: &[u8]) -> Result<Option<Entry>> {
    match db.pinned(&keys::key_key(key))? {
        Some(v) => Ok(Some(keys::decode_entry(key, &v)?)),
        None => Ok(None),
    }
}

/// As [`entry_in`], a string's bytes left out ([`keys::decode_entry_header`]).
fn entry_header_in(db: &impl Stored, key: &[u8]) -> Result<Option<Entry>> {
    match db.pinned(&keys::key_key(key))? {
        Some(v) => Ok(Some(keys::decode_entry_header(key, &v)?)),
        None => Ok(None),
    }
}

/// A field of hash `key` in `db` (see [`Engine::hash_field`]).
fn field_in(db: &impl Stored, key: &[u8], field: &[u8]) -> Result<Option<Bytes>> {
    Ok(db
        .pinned(&keys::field_key(key, field))?
        .map(|v| Bytes::copy_from_slice(&v)))
}

/// The fields of hash `key` in `db` (see [`Engine::hash_fields`]).
fn hash_fields_in(
    db: &impl Stored,
    key: &[u8],
    after: Option<&[u8]>,
    limit: usize,
) -> Result<Vec<(Bytes, Bytes)>> {
    let prefix = keys::field_prefix(key);
    let mut it = db.iter_over(&prefix);
    match after {
        Some(after) => {
            let mut start = keys::field_key(key, after);
            start.push(0);
            it.seek(&start);
        }
        None => it.seek(&prefix),
    }
    let mut out = Vec::new();
    while it.valid() && out.len() < limit {
        let (Some(k), Some(v)) = (it.key(), it.value()) else {
            break;
        };
        if !k.starts_with(&prefix) {
            break;
        }
        out.push((
            Bytes::copy_from_slice(&k[prefix.len()..]),
            Bytes::copy_from_slice(v),
        ));
        it.next();
    }
    it.status()?;
    Ok(out)
}

/// Visits the stored keys in scan order ([`keys::scan_hash`], then the
/// key) from scan position `from`, each with its hash and stored value,
/// while `visit` says go on.
fn each_key(
    db: &impl Stored,
    from: u64,
    mut visit: impl FnMut(u64, &[u8], &[u8]) -> Result<bool>,
) -> Result<()> {
    let mut it = db.iter_over(&[keys::KEY]);
    it.seek(keys::key_position(from));
    while it.valid() {
        let (Some(k), Some(v)) = (it.key(), it.value()) else {
            break;
        };
        let Some((hash, key)) = keys::split_key_row(k) else {
            break;
        };
        if !visit(hash, key, v)? {
            break;
        }
        it.next();
    }
    it.status()?;
    Ok(())
}

fn scan_in(db: &impl Stored, from: u64, limit: usize, now_ms: u64) -> Result<Scanned> {
    let mut out = Scanned::default();
    let mut visited = 0;
    let mut last_hash = None;
    each_key(db, from, |hash, k, v| {
        // Keys of one hash go together, so the next call, which goes on at
        // a hash, repeats none and always moves on.
        if visited >= limit.max(1) && last_hash != Some(hash) {
            out.resume = Some(hash);
            return Ok(false);
        }
        visited += 1;
        last_hash = Some(hash);
        let key = Bytes::copy_from_slice(k);
        let entry = keys::decode_entry(&key, v)?;
        if !entry.is_expired(now_ms) {
            out.entries.push((key, entry));
        }
        Ok(true)
    })?;
    Ok(out)
}

fn keys_in(
    db: &impl Stored,
    now_ms: u64,
    keep: &mut dyn FnMut(&[u8]) -> bool,
) -> Result<Vec<Bytes>> {
    let mut out = Vec::new();
    each_key(db, 0, |_, key, v| {
        if keep(key) && !keys::decode_entry_header(key, v)?.is_expired(now_ms) {
            out.push(Bytes::copy_from_slice(key));
        }
        Ok(true)
    })?;
    Ok(out)
}

fn digest_in(db: &impl Stored, now_ms: u64) -> Result<Digest> {
    let mut acc = Digest::default();
    each_key(db, 0, |_, key, v| {
        let entry = keys::decode_entry(key, v)?;
        if !entry.is_expired(now_ms) {
            let fields = if entry.has_rows() {
                hash_fields_in(db, key, None, usize::MAX)?
            } else {
                Vec::new()
            };
            acc.add(key, &entry, &fields);
        }
        Ok(true)
    })?;
    Ok(acc)
}

/// A snapshot of an engine's stored state ([`Engine::snapshot_read`]).
pub(crate) struct StoredState<'a>(rocksdb::Snapshot<'a>);

impl StoredState<'_> {
    pub(crate) fn entry(&self, key: &[u8]) -> Result<Option<Entry>> {
        entry_in(&self.0, key)
    }

    pub(crate) fn field(&self, key: &[u8], field: &[u8]) -> Result<Option<Bytes>> {
        field_in(&self.0, key, field)
    }

    pub(crate) fn fields(
        &self,
        key: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>> {
        hash_fields_in(&self.0, key, after, limit)
    }

    pub(crate) fn scan(&self, from: u64, limit: usize, now_ms: u64) -> Result<Scanned> {
        scan_in(&self.0, from, limit, now_ms)
    }

    pub(crate) fn keys(
        &self,
        now_ms: u64,
        keep: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<Vec<Bytes>> {
        keys_in(&self.0, now_ms, keep)
    }

    pub(crate) fn hash_fields(&self, key: &[u8]) -> Result<Vec<(Bytes, Bytes)>> {
        hash_fields_in(&self.0, key, None, usize::MAX)
    }

    /// Keys stored, as [`Engine::key_count`].
    pub(crate) fn key_count(&self) -> Result<u64> {
        Ok(self
            .0
            .pinned(keys::META_KEY_COUNT)?
            .and_then(|v| keys::decode_u64(&v))
            .unwrap_or(0))
    }

    pub(crate) fn digest(&self, now_ms: u64) -> Result<Digest> {
        digest_in(&self.0, now_ms)
    }
}

/// The applied LSN and key count stored in a checkpoint (or any engine
/// directory not open elsewhere), read without changing it.
///
/// # Errors
///
/// [`EngineError::Rocks`] if RocksDB cannot open it read-only;
/// [`EngineError::UnknownLayout`] if a later version wrote it.
pub fn checkpoint_meta(dir: &Path) -> Result<(Lsn, u64)> {
    let db = DB::open_for_read_only(&Options::default(), dir, false)?;
    let read_u64 = |name: &[u8]| -> Result<u64> {
        Ok(db
            .get_pinned(name)?
            .and_then(|v| keys::decode_u64(&v))
            .unwrap_or(0))
    };
    // One this version could not open is refused before it is installed.
    let layout = read_u64(keys::META_LAYOUT)?;
    if layout > keys::LAYOUT {
        return Err(EngineError::UnknownLayout {
            found: layout,
            supported: keys::LAYOUT,
        });
    }
    Ok((
        Lsn(read_u64(keys::META_APPLIED_LSN)?),
        read_u64(keys::META_KEY_COUNT)?,
    ))
}

/// What `db` stores beside the keyspace: the applied LSN, the key count,
/// and the keys with an expiry (counted from the expiry index when a
/// keyspace written before they were stored lacks them).
fn read_meta(db: &DB) -> Result<(Lsn, u64, Expiring)> {
    let (applied, keys) = {
        let read_u64 = |name: &[u8]| -> Result<u64> {
            Ok(db
                .get_pinned(name)?
                .and_then(|v| keys::decode_u64(&v))
                .unwrap_or(0))
        };
        (
            Lsn(read_u64(keys::META_APPLIED_LSN)?),
            read_u64(keys::META_KEY_COUNT)?,
        )
    };
    let stored = db.get_pinned(keys::META_EXPIRING)?;
    let expiring = match stored.as_deref().map(Expiring::decode) {
        Some(Some(expiring)) => expiring,
        Some(None) => {
            // Only a figure for INFO: counted again rather than refused.
            tracing::warn!(
                "the stored count of keys with an expiry does not decode; counting them"
            );
            expiring_in(db)?
        }
        None => expiring_in(db)?,
    };
    Ok((applied, keys, expiring))
}

/// The keys with an expiry, counted from the expiry index.
fn expiring_in(db: &DB) -> Result<Expiring> {
    let mut expiring = Expiring::default();
    let mut it = db.iter_over(&[keys::EXPIRY]);
    it.seek([keys::EXPIRY]);
    while let Some(k) = it.key() {
        if k.first() != Some(&keys::EXPIRY) {
            break;
        }
        expiring.add(k.get(1..9).and_then(keys::decode_u64).unwrap_or(0));
        it.next();
    }
    it.status()?;
    Ok(expiring)
}

/// The keyspace of a node.
#[derive(Debug)]
pub struct Engine {
    dir: PathBuf,
    /// Every operation takes its own handle for its duration, so that
    /// [`Engine::replace_with_checkpoint`] can swap the database.
    db: RwLock<Option<Arc<DB>>>,
    applied_lsn: AtomicU64,
    key_count: AtomicU64,
    expiring: Mutex<Expiring>,
    /// The applied LSN known to be in RocksDB's files (RocksDB's WAL is
    /// off, so the memtable is lost in a crash): what ferry's WAL must keep
    /// records after.
    persisted_lsn: AtomicU64,
    /// One more each time the whole state is replaced (a reset, a swap, an
    /// ingest), under the gate: a flush that began before it does not
    /// count its LSN as persisted.
    replaced: AtomicU64,
    /// Entries read, in front of RocksDB.
    cache: ReadCache,
    /// Clients' WATCH of keys.
    watchers: Arc<Watchers>,
    /// Odd while a write changes the state (the RocksDB write and the read
    /// cache's entries after it), one more after each: reads of several
    /// keys that must see one state retry until none overlapped them
    /// ([`Engine::stable`]).
    generation: AtomicU64,
    /// Held by every write, and by a reader that failed to read between
    /// writes [`STABLE_READ_ATTEMPTS`] times.
    gate: RwLock<()>,
    /// The compaction that gives a FLUSHALL's disk space back.
    reclaim: Arc<Mutex<Reclaim>>,
    /// [`RECLAIM_STEP_BYTES`] unless set ([`Engine::set_reclaim_step_bytes`]).
    reclaim_step_bytes: AtomicU64,
    /// Told how long each RocksDB write of applied records took.
    latency: ferry_wal::LatencySlot,
    /// Told of every change once reads see it ([`Engine::set_change_listener`]).
    changes: std::sync::OnceLock<Arc<dyn ChangeListener>>,
}

/// A key an applied write changed, and the client whose command changed
/// it (`None`: the expiry sweep, a replica's stream, a load; see
/// [`Engine::apply_by`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangedKey<'a> {
    pub key: &'a Bytes,
    pub by: Option<u64>,
}

/// What changed in the keyspace, by one applied write.
#[derive(Debug, Clone, Copy)]
pub enum Changed<'a> {
    /// These keys, in order (a key may come more than once).
    Keys(&'a [ChangedKey<'a>]),
    /// Any key may have: `flushes` FLUSHALLs, or a whole state put in
    /// place (one, no keys). `before`: the keys the write changed before
    /// the first; `keys`: all it changed, in order.
    All {
        before: &'a [ChangedKey<'a>],
        flushes: usize,
        keys: &'a [ChangedKey<'a>],
    },
}

impl Changed<'static> {
    /// A whole state put in place.
    pub const REPLACED: Changed<'static> = Changed::All {
        before: &[],
        flushes: 1,
        keys: &[],
    };
}

/// Follows the keyspace's changes, from clients' writes, a replica's
/// stream and expiry alike (for client-side caching's invalidations).
pub trait ChangeListener: Send + Sync + std::fmt::Debug {
    /// Whether it wants changes now (the engine skips gathering them if
    /// not).
    fn listening(&self) -> bool;
    /// Called once the change is applied: a read that starts after sees
    /// it.
    fn changed(&self, changed: Changed<'_>);
    /// A Pub/Sub message of record `lsn`, once applied (after the changes
    /// of the records before it, in LSN order), listening or not. Records
    /// replayed as the engine opens are not told.
    fn published(&self, lsn: Lsn, message: &Publish) {
        let _ = (lsn, message);
    }
    /// The keyspace events of record `lsn` once applied, before its
    /// messages.
    fn notified(&self, lsn: Lsn, events: &[KeyEvent]) {
        let _ = (lsn, events);
    }
}

/// A FLUSHALL deletes every key with three range deletions, which free no
/// disk space by themselves: the files they cover stay until a compaction
/// reads them, and with no more writes none comes. So after one, a thread
/// compacts the whole keyspace (in the background, reads and writes go on;
/// snapshots taken before still see the old state), in steps of about
/// [`RECLAIM_STEP_BYTES`] of files, so that a swap of the database or
/// closing it waits for one step, not the whole compaction; a FLUSHALL
/// while it runs asks for one more pass after it.
#[derive(Debug, Default)]
struct Reclaim {
    thread: Option<std::thread::JoinHandle<()>>,
    running: bool,
    again: bool,
    /// Set to end the compaction after its step under way: its database
    /// is being swapped out or closed.
    stop: bool,
}

/// RocksDB's figures an operator watches ([`Engine::rocksdb_figures`]):
/// INFO rocksdb and the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RocksFigures {
    /// Bytes in memtables, the one written to and those being flushed.
    pub memtable_bytes: u64,
    /// SST files in level 0: RocksDB slows writes down past 20 and stops
    /// them at 36 (its defaults).
    pub level0_files: u64,
    /// Bytes compactions have yet to rewrite, by RocksDB's estimate.
    pub pending_compaction_bytes: u64,
    pub running_compactions: u64,
    pub running_flushes: u64,
    /// The rate RocksDB holds writes to while it slows them down, bytes/s
    /// (0: not slowed).
    pub delayed_write_rate: u64,
    /// Writes stopped until a flush or compaction catches up.
    pub writes_stopped: bool,
    /// Bytes of the block cache in use (data, index and filter blocks).
    pub block_cache_bytes: u64,
    /// The compaction after a FLUSHALL is running.
    pub reclaiming: bool,
}

/// Bytes of RocksDB files one step of the compaction after a FLUSHALL
/// covers (about: a file is not split).
pub const RECLAIM_STEP_BYTES: u64 = 256 << 20;

/// Where the steps of a compaction of `files` end: keys in order, each
/// about `step_bytes` of files past the one before. The steps are the key
/// ranges between them (the first from the start, the last to the end).
fn reclaim_bounds(files: &[rocksdb::LiveFile], step_bytes: u64) -> Vec<Vec<u8>> {
    let mut ends: Vec<(&[u8], u64)> = files
        .iter()
        .filter_map(|f| Some((f.end_key.as_deref()?, f.size as u64)))
        .collect();
    ends.sort_unstable();
    let mut bounds = Vec::new();
    let mut bytes = 0;
    for (end, size) in ends {
        bytes += size;
        if bytes >= step_bytes
            && bounds
                .last()
                .is_none_or(|last: &Vec<u8>| last.as_slice() < end)
        {
            bounds.push(end.to_vec());
            bytes = 0;
        }
    }
    bounds
}

impl Drop for Engine {
    /// Ends a compaction under way after its step and waits for its
    /// thread, so the database is closed when the engine is.
    fn drop(&mut self) {
        let thread = {
            let mut reclaim = self.reclaim.lock().unwrap_or_else(|e| e.into_inner());
            reclaim.stop = true;
            reclaim.thread.take()
        };
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

/// Tries of a read of several keys between writes before it holds writes
/// off instead ([`Engine::stable`]).
pub const STABLE_READ_ATTEMPTS: usize = 4;

/// A write of the state in progress (see [`Engine::generation`]).
struct Changing<'a> {
    generation: &'a AtomicU64,
    _gate: std::sync::RwLockWriteGuard<'a, ()>,
}

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

/// A stretch of [`Engine::scan`]: the live keys found, in scan order, and
/// the scan position where the next stretch goes on when more keys follow
/// (the [`keys::scan_hash`] of the first key not looked at: every key
/// before it was).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scanned {
    pub entries: Vec<(Bytes, Entry)>,
    pub resume: Option<u64>,
}

/// The keyspace digest: each live key's SHA-1 XORed in, so keys can be
/// added and taken out in any order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Digest([u8; 20]);

impl Digest {
    /// XORs in (or, done twice, out) one key with its entry and, for a
    /// hash, its fields in byte order (for a long string, its chunks).
    pub(crate) fn add(&mut self, key: &[u8], entry: &Entry, fields: &[(Bytes, Bytes)]) {
        let mut h = sha1_smol::Sha1::new();
        h.update(&(key.len() as u64).to_be_bytes());
        h.update(key);
        h.update(&entry.expire_at_ms.to_be_bytes());
        match &entry.value {
            Value::String(s) => {
                h.update(b"s");
                h.update(s);
            }
            // As the same bytes held whole: the digest is of the data,
            // whatever rows hold it.
            Value::LongString { len } => {
                h.update(b"s");
                h.update(&keys::assemble(*len, fields, 0..*len).unwrap_or_default());
            }
            Value::Hash { .. } => {
                h.update(b"h");
                for (field, value) in fields {
                    h.update(&(field.len() as u64).to_be_bytes());
                    h.update(field);
                    h.update(&(value.len() as u64).to_be_bytes());
                    h.update(value);
                }
            }
        }
        for (a, b) in self.0.iter_mut().zip(h.digest().bytes()) {
            *a ^= b;
        }
    }
}

/// A digest as `DEBUG DIGEST` shows it: 40 hex digits.
pub(crate) fn digest_hex(digest: &Digest) -> String {
    digest.0.iter().map(|b| format!("{b:02x}")).collect()
}

impl Engine {
    /// Opens (or creates) the RocksDB keyspace in `dir`. RocksDB's own WAL
    /// is not used: ferry's WAL is the one source of durability, and
    /// [`Engine::replay`] catches up from it.
    ///
    /// # Errors
    ///
    /// [`EngineError::Rocks`] if RocksDB cannot open the directory.
    pub fn open(dir: &Path) -> Result<Engine> {
        Engine::open_with(dir, READ_CACHE_BYTES_DEFAULT)
    }

    /// As [`Engine::open`], with a read cache of `read_cache_bytes` (0:
    /// none).
    ///
    /// # Errors
    ///
    /// As [`Engine::open`].
    pub fn open_with(dir: &Path, read_cache_bytes: usize) -> Result<Engine> {
        let db = open_db(dir)?;
        let (Lsn(applied_lsn), key_count, expiring) = read_meta(&db)?;
        Ok(Engine {
            dir: dir.to_path_buf(),
            db: RwLock::new(Some(Arc::new(db))),
            applied_lsn: AtomicU64::new(applied_lsn),
            key_count: AtomicU64::new(key_count),
            expiring: Mutex::new(expiring),
            // What a fresh open reads is in the files.
            persisted_lsn: AtomicU64::new(applied_lsn),
            replaced: AtomicU64::new(0),
            cache: ReadCache::new(read_cache_bytes),
            watchers: Arc::default(),
            generation: AtomicU64::new(0),
            gate: RwLock::new(()),
            reclaim: Arc::default(),
            reclaim_step_bytes: AtomicU64::new(RECLAIM_STEP_BYTES),
            latency: ferry_wal::LatencySlot::default(),
            changes: std::sync::OnceLock::new(),
        })
    }

    /// Has the engine tell `listener` of every change to the keyspace once
    /// it is applied. Set once; later calls change nothing.
    pub fn set_change_listener(&self, listener: Arc<dyn ChangeListener>) {
        let _ = self.changes.set(listener);
    }

    /// The change listener, if one is set and listening.
    fn listener(&self) -> Option<&Arc<dyn ChangeListener>> {
        self.changes.get().filter(|l| l.listening())
    }

    /// Tells the listener that any key may have changed.
    fn changed_all(&self) {
        if let Some(listener) = self.listener() {
            listener.changed(Changed::REPLACED);
        }
    }

    /// Marks the state as changing until the guard drops.
    fn changing(&self) -> Changing<'_> {
        let gate = self.gate.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
        Changing {
            generation: &self.generation,
            _gate: gate,
        }
    }

    /// Runs `read` (reads of the reader it is given) so that it sees one
    /// state: against the engine again while a write overlapped it, and
    /// after [`STABLE_READ_ATTEMPTS`] tries against one snapshot of RocksDB
    /// (the read cache left out), which holds no write off. For reads of
    /// several keys (MGET), or of a hash's entry and its fields, which a
    /// write applied in between would tear (half of an MSET or of a
    /// transaction). `read` must only read.
    ///
    /// # Errors
    ///
    /// What `read` returns.
    pub fn stable<T>(&self, read: impl FnMut(&dyn Reader) -> Result<T>) -> Result<T> {
        self.stable_tries(STABLE_READ_ATTEMPTS, read)
    }

    /// [`Engine::stable`] with `tries` against the engine before the
    /// snapshot (0: the snapshot at once).
    ///
    /// # Errors
    ///
    /// What `read` returns.
    pub fn stable_tries<T>(
        &self,
        tries: usize,
        mut read: impl FnMut(&dyn Reader) -> Result<T>,
    ) -> Result<T> {
        for _ in 0..tries {
            let before = self.generation.load(Ordering::SeqCst);
            if before.is_multiple_of(2) {
                let out = read(self)?;
                // The reads are ordered before this load by the locks of
                // RocksDB and the cache, which a write takes after raising
                // the generation.
                if self.generation.load(Ordering::SeqCst) == before {
                    return Ok(out);
                }
            }
            std::thread::yield_now();
        }
        self.snapshot_read(|stored| read(stored))
    }

    /// Holds writes off while the guard lives, so that a series of reads
    /// sees one state (a transaction's on a replica, whose records are
    /// applied beside it).
    pub fn hold_writes(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|e| e.into_inner())
    }

    /// A new, empty watch of keys (see [`crate::Pipeline::watch`]).
    pub fn new_watch(&self) -> Watch {
        Watch::new(self.watchers.clone())
    }

    pub(crate) fn watchers(&self) -> &Watchers {
        &self.watchers
    }

    /// The database, for one operation; absent only after a swap that
    /// could not reopen it.
    fn db(&self) -> Result<Arc<DB>> {
        self.db
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| {
                EngineError::Io(
                    "the engine's database could not be reopened after a swap; restart the node"
                        .into(),
                )
            })
    }

    /// The applied LSN that is in RocksDB's files: after a crash the engine
    /// restarts from at least there (see [`Engine::flush`]).
    pub fn persisted_lsn(&self) -> Lsn {
        Lsn(self.persisted_lsn.load(Ordering::Acquire))
    }

    /// The LSN of the last record applied.
    pub fn applied_lsn(&self) -> Lsn {
        Lsn(self.applied_lsn.load(Ordering::Acquire))
    }

    /// Keys stored, logically expired ones included (as Redis's DBSIZE).
    pub fn key_count(&self) -> u64 {
        self.key_count.load(Ordering::Acquire)
    }

    /// The keys with an expiry (logically expired ones included, as
    /// Redis's `expires`).
    pub fn expiring(&self) -> Expiring {
        *self.expiring.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_expiring(&self, expiring: Expiring) {
        *self.expiring.lock().unwrap_or_else(|e| e.into_inner()) = expiring;
    }

    /// Applies every record of `wal` after [`Engine::applied_lsn`]. Returns
    /// how many were applied.
    ///
    /// # Errors
    ///
    /// [`EngineError::WalMismatch`] if the WAL does not reach back to the
    /// applied LSN, [`EngineError::CorruptRecord`], and WAL read errors.
    pub fn replay(&self, wal: &Wal) -> Result<u64> {
        let from = self.applied_lsn().next();
        if from < wal.first_lsn() || from > wal.last_lsn().next() {
            return Err(EngineError::WalMismatch {
                applied: self.applied_lsn(),
                first: wal.first_lsn(),
                last: wal.last_lsn(),
            });
        }
        let mut batch = Vec::with_capacity(REPLAY_BATCH_RECORDS);
        let mut applied = 0;
        for record in wal.records(from)? {
            let record = record?;
            batch.push((record.lsn, decode_record(record.lsn, &record.data)?));
            if batch.len() == REPLAY_BATCH_RECORDS {
                self.apply(&batch)?;
                applied += batch.len() as u64;
                batch.clear();
            }
        }
        if !batch.is_empty() {
            self.apply(&batch)?;
            applied += batch.len() as u64;
        }
        Ok(applied)
    }

    /// Applies records, which must follow [`Engine::applied_lsn`] in order,
    /// in one atomic RocksDB write that also stores the new applied LSN.
    ///
    /// # Errors
    ///
    /// [`EngineError::Rocks`].
    ///
    /// # Panics
    ///
    /// If the LSNs do not continue the applied LSN.
    pub fn apply(&self, records: &[(Lsn, WalRecord)]) -> Result<()> {
        self.apply_by(records, &[])
    }

    /// [`Engine::apply`], telling the change listener whose command each
    /// record is (`by[i]` of `records[i]`, the client's id; none past the
    /// end of `by`), so a client may be spared its own writes' news
    /// (CLIENT TRACKING's NOLOOP).
    ///
    /// # Errors
    ///
    /// As [`Engine::apply`].
    ///
    /// # Panics
    ///
    /// As [`Engine::apply`].
    pub fn apply_by(&self, records: &[(Lsn, WalRecord)], by: &[Option<u64>]) -> Result<()> {
        let mut expected = self.applied_lsn().next();
        for (lsn, _) in records {
            assert_eq!(*lsn, expected, "records are applied in LSN order");
            expected = expected.next();
        }
        self.write(records, by)
    }

    /// Applies a stretch of the log that may begin with records applied
    /// already: those at or below [`Engine::applied_lsn`] are skipped, the
    /// rest applied as [`Engine::apply`] does. The applied LSN is stored in
    /// the same RocksDB write as the data it covers, so the engine knows
    /// exactly which records it holds, and replaying a suffix twice changes
    /// nothing.
    ///
    /// Skipping is what makes this exact, not the records: most effects
    /// (SET as the value, INCR as the result, TTLs as absolute times) could
    /// be applied again harmlessly, but not all (APPEND as a range write
    /// after the old end, a field delete that empties a hash and so deletes
    /// the key, fields added to a hash keeping its expiry) when the key has
    /// changed since.
    ///
    /// # Errors
    ///
    /// [`EngineError::Rocks`].
    ///
    /// # Panics
    ///
    /// If the records past the applied LSN do not continue it.
    pub fn apply_again(&self, records: &[(Lsn, WalRecord)]) -> Result<()> {
        let applied = self.applied_lsn();
        let start = records.partition_point(|(lsn, _)| *lsn <= applied);
        self.apply(&records[start..])
    }

    /// Has the engine tell `hook` how long each RocksDB write of applied
    /// records took (`engine-apply`): RocksDB's write stalls show there.
    /// Set once; later calls change nothing.
    pub fn set_latency_hook(&self, hook: ferry_wal::LatencyHook) {
        self.latency.set(hook);
    }

    fn write(&self, records: &[(Lsn, WalRecord)], by: &[Option<u64>]) -> Result<()> {
        let Some(&(last, _)) = records.last() else {
            return Ok(());
        };
        let last = last.max(self.applied_lsn());
        // Under the gate, so a WATCH (which holds it while it registers)
        // is wholly before or after this write.
        let _changing = self.changing();
        // Records from outside the write path change watched keys as they
        // are applied: a FLUSHALL changes those that exist before it.
        let watching = self.watchers.on_apply();
        let flushed_watched: Vec<Bytes> = if watching
            && records.iter().any(|(_, r)| {
                r.mutations
                    .iter()
                    .any(|m| matches!(m.op, Some(Op::FlushAll(_))))
            }) {
            let keys = self.watchers.keys();
            keys.into_iter()
                .filter(|k| self.entry(k).map_or(true, |e| e.is_some()))
                .collect()
        } else {
            Vec::new()
        };
        let mut target = BatchTarget::new(self)?;
        let (count_before, expiring_before) = (target.key_count, target.expiring);
        // Whether the listener has events or messages to be told.
        let mut to_tell = false;
        for (_, record) in records {
            to_tell |= !record.events.is_empty();
            // A mutation of a kind this version does not know has no `op`.
            for op in record.mutations.iter().filter_map(|m| m.op.as_ref()) {
                apply_mutation(&mut target, op)?;
                to_tell |= matches!(op, Op::Publish(_));
            }
        }
        let BatchTarget {
            db,
            batch,
            entries,
            key_count,
            expiring,
            flushed,
            ..
        } = target;
        let mut batch = batch.into_write_batch();
        batch.put(keys::META_APPLIED_LSN, last.0.to_be_bytes());
        // The stored count is the count before (overwrites, the usual
        // write, leave it): each memtable entry costs a skiplist insert.
        if key_count != count_before {
            batch.put(keys::META_KEY_COUNT, key_count.to_be_bytes());
        }
        if expiring != expiring_before {
            batch.put(keys::META_EXPIRING, expiring.encode());
        }
        let mut opts = WriteOptions::default();
        opts.disable_wal(true);
        let written = match ferry_wal::testing::fail_point("engine::apply") {
            Ok(()) => self
                .latency
                .timed("engine-apply", || db.write_opt(batch, &opts))
                .map_err(EngineError::from),
            Err(e) => Err(EngineError::Io(e.to_string())),
        };
        // After the write (see the cache's module documentation): a cached
        // key takes the entry the batch left it, or is forgotten if the
        // write failed.
        for (_, record) in records {
            for op in record.mutations.iter().filter_map(|m| m.op.as_ref()) {
                match op_key(op) {
                    Some(key) => match entries.get(key) {
                        Some(left) if written.is_ok() => self.cache.update(key, left.as_ref()),
                        _ => self.cache.invalidate(key),
                    },
                    None if matches!(op, Op::FlushAll(_)) => self.cache.clear(),
                    None => {}
                }
                if watching && let Some(key) = op_key(op) {
                    let exists = entries.get(key).is_none_or(|left| left.is_some());
                    self.watchers.touch(key, exists);
                }
            }
        }
        for key in flushed_watched {
            let exists = entries.get(&key).is_some_and(|left| left.is_some());
            self.watchers.touch(&key, exists);
        }
        if let Some(listener) = self.listener() {
            let mut keys: Vec<ChangedKey<'_>> = Vec::new();
            // The keys changed before the first FLUSHALL, and the count.
            let (mut before, mut flushes) = (None, 0);
            let ops = records.iter().enumerate().flat_map(|(i, (_, r))| {
                let by = by.get(i).copied().flatten();
                r.mutations
                    .iter()
                    .filter_map(move |m| Some((m.op.as_ref()?, by)))
            });
            for (op, by) in ops {
                match op_key(op) {
                    Some(key) => keys.push(ChangedKey { key, by }),
                    None if matches!(op, Op::FlushAll(_)) => {
                        before.get_or_insert(keys.len());
                        flushes += 1;
                    }
                    None => {}
                }
            }
            match before {
                Some(n) => listener.changed(Changed::All {
                    before: &keys[..n],
                    flushes,
                    keys: &keys,
                }),
                None if !keys.is_empty() => listener.changed(Changed::Keys(&keys)),
                None => {}
            }
        }
        written?;
        self.key_count.store(key_count, Ordering::Release);
        self.set_expiring(expiring);
        self.applied_lsn.store(last.0, Ordering::Release);
        // Keyspace events and messages once their records are applied
        // (and readable), after the changes' invalidations.
        if let Some(listener) = self.changes.get().filter(|_| to_tell) {
            for (lsn, record) in records {
                if !record.events.is_empty() {
                    listener.notified(*lsn, &record.events);
                }
                for op in record.mutations.iter().filter_map(|m| m.op.as_ref()) {
                    if let Op::Publish(message) = op {
                        listener.published(*lsn, message);
                    }
                }
            }
        }
        if flushed {
            self.reclaim_space(db);
        }
        Ok(())
    }

    /// Compacts the whole keyspace in the background, once more if a
    /// compaction runs already (see [`Reclaim`]).
    fn reclaim_space(&self, db: Arc<DB>) {
        let mut reclaim = self.reclaim.lock().unwrap_or_else(|e| e.into_inner());
        if reclaim.running && !reclaim.stop {
            reclaim.again = true;
            return;
        }
        // One that was told to stop ends after its step (on a database
        // swapped out since).
        if let Some(done) = reclaim.thread.take() {
            drop(reclaim);
            let _ = done.join();
            reclaim = self.reclaim.lock().unwrap_or_else(|e| e.into_inner());
        }
        reclaim.stop = false;
        reclaim.again = false;
        let shared = Arc::clone(&self.reclaim);
        let step_bytes = self.reclaim_step_bytes.load(Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name("ferry-reclaim".into())
            .spawn(move || {
                let stopped = || {
                    let mut reclaim = shared.lock().unwrap_or_else(|e| e.into_inner());
                    if reclaim.stop {
                        reclaim.running = false;
                    }
                    reclaim.stop
                };
                loop {
                    let mut opts = rocksdb::CompactOptions::default();
                    // The last level too: it holds most of the data.
                    opts.set_bottommost_level_compaction(
                        rocksdb::BottommostLevelCompaction::ForceOptimized,
                    );
                    let started = std::time::Instant::now();
                    let files = db.live_files().unwrap_or_default();
                    let bounds = reclaim_bounds(&files, step_bytes);
                    let steps = bounds.len() + 1;
                    let mut from: Option<Vec<u8>> = None;
                    for to in bounds.into_iter().map(Some).chain([None]) {
                        if stopped() {
                            return;
                        }
                        db.compact_range_opt(from.as_deref(), to.as_deref(), &opts);
                        from = to;
                    }
                    tracing::info!(
                        took_ms = started.elapsed().as_millis() as u64,
                        steps,
                        "compacted the keyspace after a FLUSHALL"
                    );
                    let mut reclaim = shared.lock().unwrap_or_else(|e| e.into_inner());
                    if reclaim.stop || !std::mem::take(&mut reclaim.again) {
                        reclaim.running = false;
                        return;
                    }
                }
            });
        match spawned {
            Ok(thread) => {
                reclaim.thread = Some(thread);
                reclaim.running = true;
            }
            Err(e) => tracing::warn!(error = %e, "could not start the compaction after a FLUSHALL"),
        }
    }

    /// Sets the bytes of files each step of the compaction after a FLUSHALL
    /// covers (see [`RECLAIM_STEP_BYTES`]), for the compactions started
    /// from now on.
    pub fn set_reclaim_step_bytes(&self, bytes: u64) {
        self.reclaim_step_bytes
            .store(bytes.max(1), Ordering::Relaxed);
    }

    /// The size of the engine's live files on disk (RocksDB's SST files;
    /// the WAL's segments are apart), in bytes.
    ///
    /// # Errors
    ///
    /// [`EngineError::Rocks`].
    pub fn disk_bytes(&self) -> Result<u64> {
        Ok(self
            .db()?
            .property_int_value(rocksdb::properties::LIVE_SST_FILES_SIZE)?
            .unwrap_or(0))
    }

    /// What RocksDB is doing and holding, as an operator watches it.
    ///
    /// # Errors
    ///
    /// [`EngineError::Rocks`].
    pub fn rocksdb_figures(&self) -> Result<RocksFigures> {
        use rocksdb::properties as p;
        let db = self.db()?;
        let int = |name: &rocksdb::properties::PropName| -> Result<u64> {
            Ok(db.property_int_value(name)?.unwrap_or(0))
        };
        let level0_files = db
            .property_int_value(p::num_files_at_level(0))?
            .unwrap_or(0);
        Ok(RocksFigures {
            memtable_bytes: int(p::CUR_SIZE_ALL_MEM_TABLES)?,
            level0_files,
            pending_compaction_bytes: int(p::ESTIMATE_PENDING_COMPACTION_BYTES)?,
            running_compactions: int(p::NUM_RUNNING_COMPACTIONS)?,
            running_flushes: int(p::NUM_RUNNING_FLUSHES)?,
            delayed_write_rate: int(p::ACTUAL_DELAYED_WRITE_RATE)?,
            writes_stopped: int(p::IS_WRITE_STOPPED)? != 0,
            block_cache_bytes: int(p::BLOCK_CACHE_USAGE)?,
            reclaiming: self
                .reclaim
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .running,
        })
    }

    /// The read cache's figures.
    pub fn read_cache_stats(&self) -> ReadCacheStats {
        self.cache.stats()
    }

    /// Persists everything applied so far to RocksDB's files.
    ///
    /// # Errors
    ///
    /// [`EngineError::Rocks`].
    pub fn flush(&self) -> Result<()> {
        let before = self.persisting();
        self.db()?.flush()?;
        self.persisted(before);
        Ok(())
    }

    /// Before a flush: the state's replacements so far, and the applied
    /// LSN the flush will persist.
    fn persisting(&self) -> (u64, u64) {
        let _gate = self.gate.read().unwrap_or_else(|e| e.into_inner());
        (
            self.replaced.load(Ordering::Acquire),
            self.applied_lsn.load(Ordering::Acquire),
        )
    }

    /// After a flush begun at `before` ([`Engine::persisting`]): its
    /// applied LSN is persisted, unless the state was replaced meanwhile
    /// (a reset's LSN 0 is not raised to one of the state it dropped, which
    /// would let the WAL it still needs be purged).
    fn persisted(&self, (replaced, applied): (u64, u64)) {
        let _gate = self.gate.read().unwrap_or_else(|e| e.into_inner());
        if self.replaced.load(Ordering::Acquire) == replaced {
            self.persisted_lsn.fetch_max(applied, Ordering::AcqRel);
        }
    }

    /// Writes a RocksDB checkpoint of the engine into `dir` (which must not
    /// exist): hard links to its files, after a flush. Returns the applied
    /// LSN the checkpoint holds, read back from it.
    ///
    /// # Errors
    ///
    /// [`EngineError::Rocks`].
    pub fn checkpoint(&self, dir: &Path) -> Result<Lsn> {
        let before = self.persisting();
        rocksdb::checkpoint::Checkpoint::new(&*self.db()?)?.create_checkpoint(dir)?;
        // The checkpoint flushed the memtable first.
        self.persisted(before);
        let (lsn, _) = checkpoint_meta(dir)?;
        Ok(lsn)
    }

    /// Makes the engine hold exactly the state of the RocksDB checkpoint in
    /// `checkpoint` (on the same file system), which becomes the engine's
    /// directory: the database is closed, the directories are swapped (see
    /// [`complete_checkpoint_swap`]) and the new one is opened. Readers see
    /// the old state until then, and wait during the swap: until the
    /// operations in flight finish (at most [`SWAP_WAIT_MAX`]) and the new
    /// database opens. Nothing may apply records meanwhile. Returns the
    /// applied LSN it holds.
    ///
    /// # Errors
    ///
    /// [`EngineError::Rocks`] and [`EngineError::Io`]; the engine then holds
    /// whatever its directory holds (the old state if the swap did not
    /// happen; a directory moved aside is moved back). If no database can be
    /// reopened, every operation fails until the node restarts (which
    /// completes the swap).
    pub fn replace_with_checkpoint(&self, checkpoint: &Path) -> Result<Lsn> {
        let _changing = self.changing();
        // A compaction after a FLUSHALL holds the database: it ends after
        // its step (the new state needs none).
        self.reclaim.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        let Some(mut old) = slot.take() else {
            return Err(EngineError::Io(
                "the engine's database is closed; restart the node".into(),
            ));
        };
        // Operations that took a handle before the lock finish first: the
        // old database must be closed before its directory moves, or its
        // background jobs would write into the new one.
        let deadline = std::time::Instant::now() + SWAP_WAIT_MAX;
        let closed = loop {
            match Arc::try_unwrap(old) {
                Ok(db) => break db,
                Err(shared) if std::time::Instant::now() < deadline => {
                    old = shared;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(shared) => {
                    *slot = Some(shared);
                    return Err(EngineError::Io(format!(
                        "the database stayed in use for {SWAP_WAIT_MAX:?}; not swapped"
                    )));
                }
            }
        };
        drop(closed);
        let swapped = complete_checkpoint_swap(&self.dir, checkpoint);
        if let Err(e) = &swapped {
            // Put the old directory back if it was moved aside.
            let old_dir = self.dir.with_extension("old");
            if !self.dir.exists()
                && old_dir.exists()
                && let Err(back) = std::fs::rename(&old_dir, &self.dir)
            {
                tracing::error!(error = %back, "could not move the old engine directory back");
            }
            tracing::error!(error = %e, "swapping in the checkpoint failed");
        }
        // Never create an empty database in place of the one that was here.
        let mut opts = options();
        opts.create_if_missing(false);
        let db = open_families(opts, &self.dir).map_err(|e| {
            EngineError::Io(format!(
                "reopening the engine in {} after a checkpoint swap: {e}; restart the node",
                self.dir.display()
            ))
        });
        // Whatever follows, nothing cached from the old state may answer
        // (the write lock keeps readers out until then), and no watch holds.
        self.cache.clear();
        self.watchers.spoil_all();
        self.changed_all();
        let db = db?;
        // A checkpoint from a node of an earlier version is moved into
        // this one's layout.
        ensure_layout(&db)?;
        let (applied, key_count, expiring) = read_meta(&db)?;
        *slot = Some(Arc::new(db));
        self.key_count.store(key_count, Ordering::Release);
        self.set_expiring(expiring);
        self.applied_lsn.store(applied.0, Ordering::Release);
        self.persisted_lsn.store(applied.0, Ordering::Release);
        self.replaced.fetch_add(1, Ordering::AcqRel);
        swapped.map(|()| applied)
    }

    /// Removes every key and the applied LSN, durably: the engine is empty
    /// again, for a node that rebuilds it (a primary rejoining after its
    /// log forked).
    ///
    /// # Errors
    ///
    /// [`EngineError::Rocks`].
    pub fn reset(&self) -> Result<()> {
        let _changing = self.changing();
        let mut batch = WriteBatch::default();
        batch.delete_range([0u8], [0xffu8]);
        let mut opts = WriteOptions::default();
        opts.disable_wal(true);
        let written = self.db()?.write_opt(batch, &opts);
        self.cache.clear();
        self.watchers.spoil_all();
        self.changed_all();
        written?;
        // Empty now, whether or not the flush below succeeds (reads see
        // the deletion already).
        self.key_count.store(0, Ordering::Release);
        self.set_expiring(Expiring::default());
        self.applied_lsn.store(0, Ordering::Release);
        self.persisted_lsn.store(0, Ordering::Release);
        self.replaced.fetch_add(1, Ordering::AcqRel);
        // RocksDB's WAL is off: flush, or a crash would bring the keys back.
        let db = self.db()?;
        db.flush()?;
        self.reclaim_space(db);
        Ok(())
    }

    /// Ingests a sorted SST file holding a whole state at `applied` with
    /// `key_count` keys, `expiring` of them with an expiry (see
    /// [`crate::StateBuilder`]).
    pub(crate) fn ingest_file(
        &self,
        path: &Path,
        applied: Lsn,
        key_count: u64,
        expiring: Expiring,
    ) -> Result<()> {
        let _changing = self.changing();
        let mut opts = rocksdb::IngestExternalFileOptions::default();
        opts.set_move_files(true);
        let ingested = self.db()?.ingest_external_file_opts(&opts, vec![path]);
        self.cache.clear();
        self.watchers.spoil_all();
        self.changed_all();
        ingested?;
        self.key_count.store(key_count, Ordering::Release);
        self.set_expiring(expiring);
        self.applied_lsn.store(applied.0, Ordering::Release);
        // An ingested file is in the files at once; the memtable may still
        // hold older applied records, which the new state covers.
        self.persisted_lsn.store(applied.0, Ordering::Release);
        self.replaced.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// The stored entry of `key`, expired or not.
    ///
    /// # Errors
    ///
    /// [`EngineError::Rocks`], [`EngineError::CorruptEntry`].
    pub fn entry(&self, key: &[u8]) -> Result<Option<Entry>> {
        let miss = match self.cache.get(key) {
            Ok(hit) => return Ok(hit),
            Err(miss) => miss,
        };
        let entry = entry_in(&*self.db()?, key)?;
        self.cache.insert(miss, key, entry.as_ref());
        Ok(entry)
    }

    /// The entry of `key` unless it is missing or expired at `now_ms`.
    ///
    /// # Errors
    ///
    /// As [`Engine::entry`].
    pub fn get(&self, key: &[u8], now_ms: u64) -> Result<Option<Entry>> {
        Ok(self.entry(key)?.filter(|e| !e.is_expired(now_ms)))
    }

    /// A field of the hash at `key` (the caller has checked the key).
    ///
    /// # Errors
    ///
    /// [`EngineError::Rocks`].
    pub fn hash_field(&self, key: &[u8], field: &[u8]) -> Result<Option<Bytes>> {
        field_in(&*self.db()?, key, field)
    }

    /// Fields of the hash at `key` in byte order, starting after `after`,
    /// at most `limit` of them.
    ///
    /// # Errors
    ///
    /// [`EngineError::Rocks`].
    pub fn hash_fields(
        &self,
        key: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>> {
        hash_fields_in(&*self.db()?, key, after, limit)
    }

    /// Keys in scan order from scan position `from` (0: the first; see
    /// [`keys::scan_hash`]), with their entries: `limit` keys looked at,
    /// more only while they share the last one's hash, logically expired
    /// ones left out (so a stretch of expired keys gives an empty batch
    /// that still goes on past them).
    ///
    /// # Errors
    ///
    /// [`EngineError::Rocks`], [`EngineError::CorruptEntry`].
    pub fn scan(&self, from: u64, limit: usize, now_ms: u64) -> Result<Scanned> {
        scan_in(&*self.db()?, from, limit, now_ms)
    }

    /// Every live key that `keep` keeps, in scan order, read in one pass
    /// (one state: KEYS).
    ///
    /// # Errors
    ///
    /// [`EngineError::Rocks`], [`EngineError::CorruptEntry`].
    pub fn keys(&self, now_ms: u64, keep: &mut dyn FnMut(&[u8]) -> bool) -> Result<Vec<Bytes>> {
        keys_in(&*self.db()?, now_ms, keep)
    }

    /// Up to `limit` keys whose expiry is at or before `now_ms`, from the
    /// expiry index.
    ///
    /// # Errors
    ///
    /// [`EngineError::Rocks`].
    pub fn expired_keys(&self, now_ms: u64, limit: usize) -> Result<Vec<Bytes>> {
        // Ten times a second: the prefix filters keep it off the files
        // without an expiry entry.
        let db = self.db()?;
        let mut it = db.iter_over(&[keys::EXPIRY]);
        it.seek([keys::EXPIRY]);
        let mut out = Vec::new();
        while it.valid() && out.len() < limit {
            let Some(k) = it.key() else { break };
            if k.first() != Some(&keys::EXPIRY) || k.len() < 9 {
                break;
            }
            let at = keys::decode_u64(&k[1..9]).unwrap_or(u64::MAX);
            if at > now_ms {
                break;
            }
            out.push(Bytes::copy_from_slice(&k[9..]));
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// A digest of the logical data at `now_ms`: keys, types, values and
    /// expiry times of every key not expired. Equal on two nodes exactly
    /// when their data is (with overwhelming probability): each key's SHA-1
    /// is XORed in, so the order of keys does not matter. 40 zeros when
    /// empty, as Redis's `DEBUG DIGEST`.
    ///
    /// # Errors
    ///
    /// [`EngineError::Rocks`], [`EngineError::CorruptEntry`].
    pub fn digest(&self, now_ms: u64) -> Result<String> {
        Ok(digest_hex(&self.digest_bytes(now_ms)?))
    }

    /// [`Engine::digest`] before it is written in hex.
    pub(crate) fn digest_bytes(&self, now_ms: u64) -> Result<Digest> {
        // One snapshot: the keys and their hashes' fields of one state.
        self.snapshot_read(|stored| stored.digest(now_ms))
    }

    /// Runs `read` against one snapshot of the stored state (the read
    /// cache left out): reads that must agree with each other while
    /// records are applied.
    ///
    /// # Errors
    ///
    /// What `read` returns, and [`Engine::db`]'s.
    pub(crate) fn snapshot_read<T>(
        &self,
        read: impl FnOnce(&StoredState<'_>) -> Result<T>,
    ) -> Result<T> {
        let db = self.db()?;
        let snapshot = db.snapshot();
        read(&StoredState(snapshot))
    }
}

/// Decodes a WAL record's bytes.
///
/// # Errors
///
/// [`EngineError::CorruptRecord`].
pub fn decode_record(lsn: Lsn, data: &Bytes) -> Result<WalRecord> {
    WalRecord::decode(data.clone()).map_err(|e| EngineError::CorruptRecord {
        lsn,
        reason: e.to_string(),
    })
}

/// A map of the write path's own: keys come from clients, so the hasher is
/// seeded per process (foldhash), yet far cheaper than SipHash on short keys.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The puts and deletes of one RocksDB write, handed to RocksDB in key
/// order: RocksDB inserts them into its memtable one after another, and
/// each insert's search starts from where the last one of the same kind of
/// key ended (see [`options`]), so in key order it climbs only as far as
/// the gap between neighbours. Sorting is stable and a key written twice
/// keeps only its last operation, which is what the write leaves either
/// way. A range deletion is a barrier: what came before it is written
/// before it, since it must not delete what comes after it.
#[derive(Default)]
struct SortedBatch {
    batch: WriteBatch,
    /// The keys and values of `ops`, side by side.
    bytes: Vec<u8>,
    ops: Vec<BatchOp>,
}

#[derive(Debug, Clone, Copy)]
struct BatchOp {
    /// Where its key starts in `bytes`; its value (if a put) follows.
    at: usize,
    key_len: usize,
    /// `None`: a delete.
    value_len: Option<usize>,
}

impl SortedBatch {
    fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.put_with(
            |k| k.extend_from_slice(key.as_ref()),
            |v| v.extend_from_slice(value.as_ref()),
        );
    }

    /// A put whose key and value are encoded in place.
    fn put_with(&mut self, key: impl FnOnce(&mut Vec<u8>), value: impl FnOnce(&mut Vec<u8>)) {
        let at = self.bytes.len();
        key(&mut self.bytes);
        let key_len = self.bytes.len() - at;
        value(&mut self.bytes);
        let value_len = Some(self.bytes.len() - at - key_len);
        self.ops.push(BatchOp {
            at,
            key_len,
            value_len,
        });
    }

    fn delete(&mut self, key: impl AsRef<[u8]>) {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(key.as_ref());
        self.ops.push(BatchOp {
            at,
            key_len: key.as_ref().len(),
            value_len: None,
        });
    }

    fn delete_range(&mut self, from: &[u8], to: &[u8]) {
        self.write_sorted();
        self.batch.delete_range(from, to);
    }

    fn into_write_batch(mut self) -> WriteBatch {
        self.write_sorted();
        self.batch
    }

    /// Moves the operations gathered so far into the write batch, in key
    /// order, the last of each key only.
    fn write_sorted(&mut self) {
        let bytes = &self.bytes;
        let key = |op: &BatchOp| &bytes[op.at..op.at + op.key_len];
        self.ops.sort_by(|a, b| key(a).cmp(key(b)));
        for (i, op) in self.ops.iter().enumerate() {
            if self.ops.get(i + 1).is_some_and(|next| key(next) == key(op)) {
                continue;
            }
            match op.value_len {
                Some(len) => {
                    let value_at = op.at + op.key_len;
                    self.batch.put(key(op), &bytes[value_at..value_at + len]);
                }
                None => self.batch.delete(key(op)),
            }
        }
        self.ops.clear();
        self.bytes.clear();
    }
}

/// One atomic application: the write batch, and what it has changed so far
/// (so later mutations of the same batch see earlier ones).
struct BatchTarget<'e> {
    /// One handle for the reads and the write of a batch.
    db: Arc<DB>,
    /// The engine's read cache: what it holds is the state before the
    /// batch, as RocksDB holds it.
    cache: &'e ReadCache,
    batch: SortedBatch,
    /// Options of the batch's reads ([`Uncached`]).
    uncached: rocksdb::ReadOptions,
    entries: FastMap<Bytes, Option<Entry>>,
    /// Fields (and chunks) written or deleted in this batch:
    /// `field_key -> value`.
    fields: FastMap<Vec<u8>, Option<Bytes>>,
    /// Keys whose stored fields were all deleted in this batch.
    cleared: HashSet<Bytes, foldhash::fast::RandomState>,
    /// Everything stored before was deleted in this batch.
    flushed: bool,
    key_count: u64,
    expiring: Expiring,
}

impl BatchTarget<'_> {
    fn new(engine: &Engine) -> Result<BatchTarget<'_>> {
        Ok(BatchTarget {
            db: engine.db()?,
            cache: &engine.cache,
            batch: SortedBatch::default(),
            uncached: uncached_reads(),
            entries: FastMap::default(),
            fields: FastMap::default(),
            cleared: HashSet::default(),
            flushed: false,
            key_count: engine.key_count(),
            expiring: engine.expiring(),
        })
    }
}

impl BatchTarget<'_> {
    /// The stored state the batch reads, through [`Uncached`].
    fn stored(&self) -> Uncached<'_> {
        Uncached(&self.db, &self.uncached)
    }

    /// A field (or chunk) as this batch has left it, `Some(None)` if gone;
    /// `None` if the batch has not touched it, so RocksDB holds it.
    fn field_in_batch(&self, key: &Bytes, field_key: &[u8]) -> Option<Option<Bytes>> {
        if let Some(value) = self.fields.get(field_key) {
            return Some(value.clone());
        }
        (self.flushed || self.cleared.contains(key)).then_some(None)
    }
}

impl Target for BatchTarget<'_> {
    fn entry(&mut self, key: &Bytes) -> Result<Option<Entry>> {
        if let Some(entry) = self.entries.get(key) {
            return Ok(entry.clone());
        }
        if self.flushed {
            return Ok(None);
        }
        let entry = match self.cache.peek(key) {
            Some(cached) => cached,
            None => entry_in(&self.stored(), key)?,
        };
        self.entries.insert(key.clone(), entry.clone());
        Ok(entry)
    }

    /// Not kept for later mutations of the batch: the write that asked
    /// replaces the entry at once.
    fn entry_to_replace(&mut self, key: &Bytes) -> Result<Option<Entry>> {
        match self.entries.get(key) {
            Some(entry) => Ok(entry.clone()),
            None if self.flushed => Ok(None),
            None => match self.cache.peek_header(key) {
                Some(cached) => Ok(cached),
                None => entry_header_in(&self.stored(), key),
            },
        }
    }

    fn field(&mut self, key: &Bytes, field: &[u8]) -> Result<Option<Bytes>> {
        let fk = keys::field_key(key, field);
        match self.field_in_batch(key, &fk) {
            Some(value) => Ok(value),
            None => Ok(self
                .stored()
                .pinned(&fk)?
                .map(|v| Bytes::copy_from_slice(&v))),
        }
    }

    /// As [`Target::field`], with no copy of the value.
    fn field_exists(&mut self, key: &Bytes, field: &Bytes) -> Result<bool> {
        let fk = keys::field_key(key, field);
        match self.field_in_batch(key, &fk) {
            Some(value) => Ok(value.is_some()),
            None => Ok(self.stored().pinned(&fk)?.is_some()),
        }
    }

    fn put_entry(&mut self, key: &Bytes, old: Option<&Entry>, new: Entry) {
        if let Some(old) = old {
            self.expiring.remove(old.expire_at_ms);
        }
        self.expiring.add(new.expire_at_ms);
        match old {
            None => self.key_count += 1,
            Some(old) if old.expire_at_ms != 0 && old.expire_at_ms != new.expire_at_ms => {
                self.batch.delete(keys::expiry_key(old.expire_at_ms, key));
            }
            Some(_) => {}
        }
        if new.expire_at_ms != 0 {
            self.batch.put(keys::expiry_key(new.expire_at_ms, key), []);
        }
        self.batch.put_with(
            |k| keys::key_key_into(key, k),
            |v| keys::encode_entry_into(&new, v),
        );
        self.entries.insert(key.clone(), Some(new));
    }

    fn remove(&mut self, key: &Bytes, old: &Entry) {
        self.batch.delete(keys::key_key(key));
        if old.expire_at_ms != 0 {
            self.batch.delete(keys::expiry_key(old.expire_at_ms, key));
        }
        if old.has_rows() {
            let prefix = keys::field_prefix(key);
            self.batch.delete_range(&prefix, &keys::prefix_end(&prefix));
            self.fields.retain(|k, _| !k.starts_with(&prefix));
            self.cleared.insert(key.clone());
        }
        self.key_count -= 1;
        self.expiring.remove(old.expire_at_ms);
        self.entries.insert(key.clone(), None);
    }

    fn put_field(&mut self, key: &Bytes, field: &Bytes, value: &Bytes) {
        let fk = keys::field_key(key, field);
        self.batch.put(&fk, value);
        self.fields.insert(fk, Some(value.clone()));
    }

    fn delete_field(&mut self, key: &Bytes, field: &Bytes) {
        let fk = keys::field_key(key, field);
        self.batch.delete(&fk);
        self.fields.insert(fk, None);
    }

    fn flush_all(&mut self) {
        for prefix in [keys::KEY, keys::FIELD, keys::EXPIRY] {
            self.batch.delete_range(&[prefix], &[prefix + 1]);
        }
        self.entries.clear();
        self.fields.clear();
        self.cleared.clear();
        self.flushed = true;
        self.key_count = 0;
        self.expiring = Expiring::default();
    }
}

/// Where mutations are applied: a RocksDB write batch, or the write
/// pipeline's overlay of records not yet applied. [`apply_mutation`] gives
/// the meaning of each mutation once, for both.
pub(crate) trait Target {
    /// The stored entry of `key`, expired or not.
    fn entry(&mut self, key: &Bytes) -> Result<Option<Entry>>;
    /// The value of `field` of `key`: a hash's field, or a long string's
    /// chunk ([`keys::chunk_field`]).
    fn field(&mut self, key: &Bytes, field: &[u8]) -> Result<Option<Bytes>>;
    /// Whether the hash at `key` has `field`.
    fn field_exists(&mut self, key: &Bytes, field: &Bytes) -> Result<bool> {
        Ok(self.field(key, field)?.is_some())
    }
    /// `key`, which held `old` of the same kind (or nothing), now holds `new`.
    fn put_entry(&mut self, key: &Bytes, old: Option<&Entry>, new: Entry);
    /// `key`, which held `old`, is gone with its fields.
    fn remove(&mut self, key: &Bytes, old: &Entry);
    fn put_field(&mut self, key: &Bytes, field: &Bytes, value: &Bytes);
    fn delete_field(&mut self, key: &Bytes, field: &Bytes);
    fn flush_all(&mut self);

    /// The entry of `key` for a write that replaces its value whatever it
    /// is: only its kind and expiry count (a string's bytes may be left
    /// out, and the entry must be replaced before anything reads it).
    fn entry_to_replace(&mut self, key: &Bytes) -> Result<Option<Entry>> {
        self.entry(key)
    }

    /// `key` now holds the string `value` (the most common record). A
    /// target may do this in fewer steps, with the same outcome.
    fn set_string(&mut self, key: &Bytes, value: &Bytes, expire_at_ms: u64) -> Result<()>
    where
        Self: Sized,
    {
        // A hash's fields or a long string's chunks go with it.
        let old = match self.entry_to_replace(key)? {
            Some(old) if old.has_rows() => {
                self.remove(key, &old);
                None
            }
            other => other,
        };
        put_string(self, key, old.as_ref(), value.clone(), expire_at_ms);
        Ok(())
    }
}

/// `key`, which held the string `old` (or nothing), now holds `value`:
/// whole, or in chunks if it is long.
pub(crate) fn put_string(
    t: &mut impl Target,
    key: &Bytes,
    old: Option<&Entry>,
    value: Bytes,
    expire_at_ms: u64,
) {
    let len = value.len() as u64;
    if !keys::is_long(len) {
        let new = Entry {
            value: Value::String(value),
            expire_at_ms,
        };
        t.put_entry(key, old, new);
        return;
    }
    let new = Entry {
        value: Value::LongString { len },
        expire_at_ms,
    };
    t.put_entry(key, old, new);
    for (field, chunk) in keys::chunks(&value) {
        t.put_field(key, &field, &chunk);
    }
}

/// Writes `data` at `offset` into the long string `old` of `key`,
/// rewriting only the chunks the write touches (and, past the old end,
/// the chunks up to it, with zeros).
fn set_long_range(
    t: &mut impl Target,
    key: &Bytes,
    old: &Entry,
    len: u64,
    offset: u64,
    data: &[u8],
) -> Result<()> {
    let chunk_bytes = keys::STRING_CHUNK_BYTES as u64;
    let end = offset.saturating_add(data.len() as u64);
    let new_len = len.max(end);
    let new = Entry {
        value: Value::LongString { len: new_len },
        expire_at_ms: old.expire_at_ms,
    };
    t.put_entry(key, Some(old), new);
    let from = offset.min(len);
    if from >= end {
        return Ok(());
    }
    for index in from / chunk_bytes..=(end - 1) / chunk_bytes {
        let field = Bytes::copy_from_slice(&keys::chunk_field(index));
        let mut chunk = t.field(key, &field)?.map(Vec::from).unwrap_or_default();
        chunk.resize(keys::chunk_len(new_len, index), 0);
        let start = index * chunk_bytes;
        let (lo, hi) = (offset.max(start), end.min(start + chunk_bytes));
        if lo < hi {
            chunk[(lo - start) as usize..(hi - start) as usize]
                .copy_from_slice(&data[(lo - offset) as usize..(hi - offset) as usize]);
        }
        t.put_field(key, &field, &Bytes::from(chunk));
    }
    Ok(())
}

/// The bytes `range` of the string `entry` of `key` (cut to its length),
/// read from `r` for a long string, whose chunks are rows of their own;
/// empty for a hash.
///
/// # Errors
///
/// Engine read errors.
pub fn string_bytes(
    r: &dyn Reader,
    key: &[u8],
    entry: &Entry,
    range: std::ops::Range<u64>,
) -> Result<Bytes> {
    match &entry.value {
        Value::String(s) => {
            let len = s.len() as u64;
            let (start, end) = (range.start.min(len), range.end.min(len));
            Ok(s.slice(start as usize..end.max(start) as usize))
        }
        Value::LongString { len } => {
            let end = range.end.min(*len);
            if range.start >= end {
                return Ok(Bytes::new());
            }
            let chunk_bytes = keys::STRING_CHUNK_BYTES as u64;
            let (first, last) = (range.start / chunk_bytes, (end - 1) / chunk_bytes);
            // A few chunks (the end of a time series) are looked up one by
            // one; more, with one pass of an iterator.
            let chunks = if last - first < STRING_CHUNK_LOOKUPS_MAX {
                let mut chunks = Vec::new();
                for index in first..=last {
                    let field = keys::chunk_field(index);
                    if let Some(chunk) = r.field(key, &field)? {
                        chunks.push((Bytes::copy_from_slice(&field), chunk));
                    }
                }
                chunks
            } else {
                let after = first.checked_sub(1).map(keys::chunk_field);
                let limit = (last - first + 1) as usize;
                r.fields(key, after.as_ref().map(|a| &a[..]), limit)?
            };
            keys::assemble(*len, &chunks, range.start..end)
        }
        Value::Hash { .. } => Ok(Bytes::new()),
    }
}

/// The entry of `key` if it is a hash (`want_hash`) or a string (not):
/// a key of the other kind is removed and reads as missing.
fn entry_of_kind(t: &mut impl Target, key: &Bytes, want_hash: bool) -> Result<Option<Entry>> {
    let found = t.entry(key)?;
    Ok(keep_kind(t, key, found, want_hash))
}

/// `found`, the entry of `key`, if it is a hash (`want_hash`) or a string
/// (not): one of the other kind is removed and reads as missing.
fn keep_kind(
    t: &mut impl Target,
    key: &Bytes,
    found: Option<Entry>,
    want_hash: bool,
) -> Option<Entry> {
    match found {
        Some(old) if matches!(old.value, Value::Hash { .. }) != want_hash => {
            t.remove(key, &old);
            None
        }
        other => other,
    }
}

/// The key a mutation changes (`None`: FLUSHALL, which changes every key,
/// and an epoch change, which changes none).
pub fn op_key(op: &Op) -> Option<&Bytes> {
    match op {
        Op::SetString(m) => Some(&m.key),
        Op::SetRange(m) => Some(&m.key),
        Op::Delete(m) => Some(&m.key),
        Op::SetExpiry(m) => Some(&m.key),
        Op::HashSet(m) => Some(&m.key),
        Op::HashDelete(m) => Some(&m.key),
        Op::FlushAll(_) | Op::EpochChange(_) | Op::Publish(_) => None,
    }
}

/// Applies one mutation: the meaning of every [`Op`], as documented in
/// `wal.proto`. Never fails but for reads of the stored state.
pub(crate) fn apply_mutation(t: &mut impl Target, op: &Op) -> Result<()> {
    match op {
        Op::SetString(m) => t.set_string(&m.key, &m.value, m.expire_at_ms)?,
        Op::SetRange(m) => {
            let old = entry_of_kind(t, &m.key, false)?;
            if let Some(
                old @ Entry {
                    value: Value::LongString { len },
                    ..
                },
            ) = &old
            {
                return set_long_range(t, &m.key, old, *len, m.offset, &m.data);
            }
            let (mut value, expire_at_ms) = match &old {
                Some(Entry {
                    value: Value::String(s),
                    expire_at_ms,
                }) => (s.to_vec(), *expire_at_ms),
                _ => (Vec::new(), 0),
            };
            let offset = usize::try_from(m.offset).unwrap_or(usize::MAX);
            let end = offset.saturating_add(m.data.len());
            if value.len() < end {
                value.resize(end, 0);
            }
            value[offset..end].copy_from_slice(&m.data);
            put_string(t, &m.key, old.as_ref(), Bytes::from(value), expire_at_ms);
        }
        Op::Delete(m) => {
            if let Some(old) = t.entry(&m.key)? {
                t.remove(&m.key, &old);
            }
        }
        Op::SetExpiry(m) => {
            if let Some(old) = t.entry(&m.key)? {
                let new = Entry {
                    expire_at_ms: m.expire_at_ms,
                    ..old.clone()
                };
                t.put_entry(&m.key, Some(&old), new);
            }
        }
        Op::HashSet(m) => {
            if m.fields.is_empty() {
                return Ok(());
            }
            let old = entry_of_kind(t, &m.key, true)?;
            let (mut len, expire_at_ms) = match &old {
                Some(Entry {
                    value: Value::Hash { len },
                    expire_at_ms,
                }) => (*len, *expire_at_ms),
                _ => (0, 0),
            };
            // The hash exists before its fields are written; its length is
            // set once they are.
            let before = Entry {
                value: Value::Hash { len },
                expire_at_ms,
            };
            t.put_entry(&m.key, old.as_ref(), before.clone());
            for fv in &m.fields {
                if !t.field_exists(&m.key, &fv.field)? {
                    len += 1;
                }
                t.put_field(&m.key, &fv.field, &fv.value);
            }
            let after = Entry {
                value: Value::Hash { len },
                expire_at_ms,
            };
            t.put_entry(&m.key, Some(&before), after);
        }
        Op::HashDelete(m) => {
            let Some(old) = t.entry(&m.key)? else {
                return Ok(());
            };
            let Value::Hash { mut len } = old.value else {
                return Ok(());
            };
            for field in &m.fields {
                if t.field_exists(&m.key, field)? {
                    len -= 1;
                    t.delete_field(&m.key, field);
                }
            }
            if len == 0 {
                t.remove(&m.key, &old);
            } else {
                let new = Entry {
                    value: Value::Hash { len },
                    ..old.clone()
                };
                t.put_entry(&m.key, Some(&old), new);
            }
        }
        Op::FlushAll(_) => t.flush_all(),
        // Marks a new primary term; no key changes.
        Op::EpochChange(_) => {}
        // Delivered to subscribers once applied ([`ChangeListener::published`]).
        Op::Publish(_) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string_row(value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        keys::encode_string_into(value, 0, &mut v);
        v
    }

    /// Keys that share a hash (written here by hand: finding 53-bit
    /// collisions would take long) come in one stretch, however small the
    /// limit, so a scan that goes on at a hash neither repeats nor loops.
    #[test]
    fn a_scan_keeps_the_keys_of_one_hash_together() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        let row = |hash: u64, key: &[u8]| {
            let mut k = keys::key_position(hash).to_vec();
            k.extend_from_slice(key);
            k
        };
        for key in [&b"x"[..], b"y", b"z"] {
            db.put(row(7, key), string_row(key)).unwrap();
        }
        db.put(row(9, b"w"), string_row(b"w")).unwrap();
        let keys_of =
            |s: &Scanned| -> Vec<Bytes> { s.entries.iter().map(|e| e.0.clone()).collect() };
        let first = scan_in(&db, 0, 1, 0).unwrap();
        assert_eq!(keys_of(&first), [&b"x"[..], b"y", b"z"]);
        assert_eq!(first.resume, Some(9));
        let second = scan_in(&db, 9, 1, 0).unwrap();
        assert_eq!(keys_of(&second), [&b"w"[..]]);
        assert_eq!(second.resume, None);
        // A limit of 0 looks at one hash's keys all the same.
        assert_eq!(scan_in(&db, 0, 0, 0).unwrap(), first);
        // A position between hashes goes on at the next one.
        assert_eq!(scan_in(&db, 8, 10, 0).unwrap(), second);
    }

    /// A keyspace of layout 1 (`K user_key` rows, no layout row) opens with
    /// every key readable and scanned, in more than one batch; a crash
    /// midway (some keys moved, the rest not, no layout row) is finished by
    /// the next open.
    #[test]
    fn a_keyspace_of_layout_1_is_moved_into_scan_order_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let count = LAYOUT_MOVE_BATCH_ROWS + 10;
        let key = |i: usize| format!("key:{i:06}").into_bytes();
        {
            let db = DB::open(&options(), dir.path()).unwrap();
            let mut opts = WriteOptions::default();
            opts.disable_wal(true);
            let mut batch = WriteBatch::default();
            for i in 0..count {
                let mut k = vec![keys::LEGACY_KEY];
                k.extend_from_slice(&key(i));
                batch.put(k, string_row(&key(i)));
            }
            // The first ten as a crash midway left them: moved already.
            for i in 0..10 {
                let mut k = vec![keys::LEGACY_KEY];
                k.extend_from_slice(&key(i));
                batch.delete(k);
                batch.put(keys::key_key(&key(i)), string_row(&key(i)));
            }
            batch.put(keys::META_APPLIED_LSN, 5u64.to_be_bytes());
            batch.put(keys::META_KEY_COUNT, (count as u64).to_be_bytes());
            db.write_opt(batch, &opts).unwrap();
            db.flush().unwrap();
        }
        let engine = Engine::open(dir.path()).unwrap();
        assert_eq!(engine.applied_lsn(), Lsn(5));
        assert_eq!(engine.key_count(), count as u64);
        for i in [0, 9, 10, count / 2, count - 1] {
            let entry = engine.entry(&key(i)).unwrap().expect("a moved key");
            assert_eq!(entry.value, Value::String(Bytes::from(key(i))));
        }
        let scanned = engine.scan(0, usize::MAX, 0).unwrap();
        assert_eq!(scanned.entries.len(), count);
        let db = engine.db().unwrap();
        let mut it = db.iter_over(&[keys::LEGACY_KEY]);
        it.seek([keys::LEGACY_KEY]);
        assert!(!it.valid(), "no row of layout 1 left");
        drop(it);
        let layout = db.get_pinned(keys::META_LAYOUT).unwrap().unwrap();
        assert_eq!(keys::decode_u64(&layout), Some(keys::LAYOUT));
    }

    /// A version before layout 2 opens its database naming no column
    /// family: it is refused, so it neither serves the keyspace as empty
    /// nor writes rows of the old layout into it.
    #[test]
    fn a_version_before_layout_2_cannot_open_the_keyspace() {
        let dir = tempfile::tempdir().unwrap();
        drop(Engine::open(dir.path()).unwrap());
        let refused = DB::open(&options(), dir.path())
            .err()
            .map(|e| e.to_string());
        assert!(
            refused
                .as_deref()
                .is_some_and(|e| e.contains(LAYOUT_COLUMN_FAMILY)),
            "{refused:?}"
        );
        // This version opens it again, and a checkpoint of it.
        let engine = Engine::open(dir.path()).unwrap();
        let checkpoint = dir.path().join("checkpoint");
        engine.checkpoint(&checkpoint).unwrap();
        assert_eq!(
            checkpoint_meta(&checkpoint).unwrap().0,
            engine.applied_lsn()
        );
        drop(engine);
        assert!(Engine::open(&checkpoint).is_ok());
    }

    /// A keyspace a later version wrote is refused, opened or offered as a
    /// checkpoint, with a message that says so.
    #[test]
    fn a_keyspace_of_a_later_layout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open_db(dir.path()).unwrap();
            db.put(keys::META_LAYOUT, (keys::LAYOUT + 1).to_be_bytes())
                .unwrap();
            db.flush().unwrap();
        }
        let Err(refused) = Engine::open(dir.path()) else {
            panic!("a later layout opened");
        };
        assert!(
            matches!(refused, EngineError::UnknownLayout { found, .. } if found == keys::LAYOUT + 1)
        );
        assert!(
            refused.to_string().contains("newer than this version"),
            "{refused}"
        );
        assert!(matches!(
            checkpoint_meta(dir.path()),
            Err(EngineError::UnknownLayout { .. })
        ));
    }

    fn file(end: &str, size: usize) -> rocksdb::LiveFile {
        rocksdb::LiveFile {
            column_family_name: "default".into(),
            name: format!("{end}.sst"),
            size,
            level: 1,
            start_key: Some(b"A".to_vec()),
            end_key: Some(end.as_bytes().to_vec()),
            num_entries: 1,
            num_deletions: 0,
        }
    }

    #[test]
    fn a_reclaim_steps_over_about_so_many_bytes_of_files() {
        // Out of order, one end twice (files of two levels): a step ends
        // once past its bytes, never twice at one key.
        let files = [
            file("K5", 10),
            file("K1", 60),
            file("K3", 50),
            file("K3", 200),
            file("K9", 10),
            file("K7", 100),
        ];
        let bounds = reclaim_bounds(&files, 100);
        assert_eq!(bounds, vec![b"K3".to_vec(), b"K5".to_vec(), b"K7".to_vec()]);
        // Fewer bytes than a step: one step, the whole keyspace.
        assert!(reclaim_bounds(&files, 1000).is_empty());
        assert!(reclaim_bounds(&[], 1).is_empty());
    }
}
