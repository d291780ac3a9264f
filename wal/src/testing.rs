//! An in-memory [`Storage`] that models what a power loss does to files, and
//! fails on demand: for the crash, torn-write and EIO tests of this crate and
//! of the crates that build on it.
//!
//! # The model
//!
//! Each file keeps its bytes and how many of them are synced. A directory
//! entry (creation, rename, deletion) is durable once its directory is
//! synced. [`MemStorage::crash`] turns the old storage dead (every later call
//! on it or on its open files fails with EIO, like a machine that lost power)
//! and returns what a reboot would find: the durable entries, each with its
//! synced bytes plus a seeded-random prefix of its unsynced bytes (a torn
//! write), whose last sector may be zero-filled (space allocated, data never
//! written).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::storage::{Storage, StorageFile};

/// Bytes of a disk sector, the unit the crash model zero-fills.
pub const SECTOR_BYTES: usize = 512;

/// Fault injection for crash tests of real processes: aborts the process
/// (as kill -9 would, without unwinding or flushing) when `FERRY_CRASH_AT`
/// names this point.
pub fn crash_point(name: &str) {
    if std::env::var("FERRY_CRASH_AT").is_ok_and(|at| at == name) {
        tracing::error!(point = name, "FERRY_CRASH_AT: aborting");
        std::process::abort();
    }
}

/// Fault injection for tests of real processes: an I/O error here when
/// `FERRY_FAIL_AT` names this point (a disk that fails one step of a
/// multi-step change), every time, or the first `FERRY_FAIL_TIMES` times
/// only (a disk that comes back).
///
/// # Errors
///
/// The injected error.
pub fn fail_point(name: &str) -> std::io::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    // Read once: some points are on hot paths.
    static FAIL_AT: std::sync::OnceLock<(Option<String>, u64)> = std::sync::OnceLock::new();
    static FAILED: AtomicU64 = AtomicU64::new(0);
    let (at, times) = FAIL_AT.get_or_init(|| {
        let times = std::env::var("FERRY_FAIL_TIMES")
            .ok()
            .and_then(|t| t.parse().ok());
        (
            std::env::var("FERRY_FAIL_AT").ok(),
            times.unwrap_or(u64::MAX),
        )
    });
    if at.as_deref() == Some(name) && FAILED.fetch_add(1, Ordering::Relaxed) < *times {
        tracing::error!(point = name, "FERRY_FAIL_AT: failing");
        return Err(std::io::Error::other(format!("failure injected at {name}")));
    }
    Ok(())
}

/// The seed of a randomized test: `FERRY_TEST_SEED` if set, else the clock.
/// Printed, so a failure can be replayed.
pub fn test_seed(test: &str) -> u64 {
    let seed = std::env::var("FERRY_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("{test}: seed {seed} (replay with FERRY_TEST_SEED={seed})");
    seed
}

/// A seeded pseudo-random generator (splitmix64): tests print the seed and
/// replay a failure with it.
#[derive(Debug, Clone)]
pub struct SeededRng(u64);

impl SeededRng {
    pub fn new(seed: u64) -> SeededRng {
        SeededRng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n`.
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.next_u64() % n
    }
}

#[derive(Debug, Default)]
struct Faults {
    /// Set by a crash: the machine is gone.
    dead: AtomicBool,
    fail_write: AtomicBool,
    fail_sync: AtomicBool,
    fail_create: AtomicBool,
    /// The next write stores only its first half, then fails.
    tear_next_write: AtomicBool,
    syncs: AtomicU64,
    hold: Mutex<SyncHold>,
    hold_changed: Condvar,
}

/// A sync held in the middle (see [`MemStorage::hold_next_sync`]).
#[derive(Debug, Default)]
struct SyncHold {
    /// The next file sync is to be held.
    armed: bool,
    /// A sync is held now.
    holding: bool,
    released: bool,
}

impl Faults {
    fn check(&self) -> io::Result<()> {
        if self.dead.load(Ordering::SeqCst) {
            return Err(io::Error::other("storage crashed"));
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct InodeData {
    bytes: Vec<u8>,
    /// The prefix known durable: synced, and not written since.
    synced_len: usize,
    /// The file's size at its last sync: the file system has committed it,
    /// so a crash finds at least this many bytes.
    durable_len: usize,
    /// What writes since the last sync overwrote below `durable_len`,
    /// oldest first: a crash that loses such a write finds the old bytes
    /// (preallocated space overwritten by frames never synced is zeros again).
    undo: Vec<(usize, Vec<u8>)>,
}

impl InodeData {
    fn durable(bytes: Vec<u8>) -> InodeData {
        InodeData {
            synced_len: bytes.len(),
            durable_len: bytes.len(),
            bytes,
            undo: Vec::new(),
        }
    }

    /// The bytes a power loss leaves: the synced prefix, a random part of
    /// the rest (its last sector maybe allocated but never written), and up
    /// to the durable size the bytes there before the writes that were lost.
    fn after_crash(&self, rng: &mut SeededRng) -> Vec<u8> {
        let unsynced = self.bytes.len().saturating_sub(self.synced_len);
        let kept = rng.below(unsynced as u64 + 1) as usize;
        let cut = self.synced_len + kept;
        let mut bytes = self.bytes[..cut].to_vec();
        if kept > 0 && rng.below(2) == 0 {
            let start = (bytes.len() - 1) / SECTOR_BYTES * SECTOR_BYTES;
            let start = start.max(self.synced_len);
            bytes[start..].fill(0);
        }
        if self.durable_len > cut {
            let mut rest = self.bytes[cut..self.durable_len].to_vec();
            // Newest first, so the oldest bytes of a range written twice win.
            for (at, old) in self.undo.iter().rev() {
                let (from, to) = ((*at).max(cut), (at + old.len()).min(self.durable_len));
                if from < to {
                    rest[from - cut..to - cut].copy_from_slice(&old[from - at..to - at]);
                }
            }
            bytes.extend_from_slice(&rest);
        }
        bytes
    }
}

type Inode = Arc<Mutex<InodeData>>;

#[derive(Debug, Default)]
struct MemFs {
    dirs: BTreeSet<PathBuf>,
    entries: BTreeMap<PathBuf, Inode>,
    durable_entries: BTreeMap<PathBuf, Inode>,
}

/// The in-memory storage; cloning it shares the files.
#[derive(Clone, Default)]
pub struct MemStorage {
    fs: Arc<Mutex<MemFs>>,
    faults: Arc<Faults>,
}

impl fmt::Debug for MemStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemStorage").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", path.display()),
    )
}

impl MemStorage {
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// Every later write fails with EIO while `on`.
    pub fn set_fail_write(&self, on: bool) {
        self.faults.fail_write.store(on, Ordering::SeqCst);
    }

    /// Every later sync (of a file or a directory) fails with EIO while `on`.
    pub fn set_fail_sync(&self, on: bool) {
        self.faults.fail_sync.store(on, Ordering::SeqCst);
    }

    /// Every later creation of a file fails with EIO while `on`.
    pub fn set_fail_create(&self, on: bool) {
        self.faults.fail_create.store(on, Ordering::SeqCst);
    }

    /// The next write stores the first half of its bytes, then fails with EIO.
    pub fn tear_next_write(&self) {
        self.faults.tear_next_write.store(true, Ordering::SeqCst);
    }

    /// The next file sync, by any thread, stops before it makes anything
    /// durable and waits for [`MemStorage::release_sync`]; later ones run.
    pub fn hold_next_sync(&self) {
        *lock(&self.faults.hold) = SyncHold {
            armed: true,
            ..SyncHold::default()
        };
    }

    /// Waits up to `timeout` for the sync armed by
    /// [`MemStorage::hold_next_sync`] to be held; whether it is.
    pub fn wait_for_held_sync(&self, timeout: Duration) -> bool {
        let hold = lock(&self.faults.hold);
        let (hold, _) = self
            .faults
            .hold_changed
            .wait_timeout_while(hold, timeout, |h| !h.holding)
            .unwrap_or_else(|e| e.into_inner());
        hold.holding
    }

    /// Lets the held sync go on.
    pub fn release_sync(&self) {
        lock(&self.faults.hold).released = true;
        self.faults.hold_changed.notify_all();
    }

    /// File syncs so far.
    pub fn sync_count(&self) -> u64 {
        self.faults.syncs.load(Ordering::SeqCst)
    }

    /// A power loss: this storage and its open files fail from now on, and
    /// the returned storage holds what survived (see the module docs).
    pub fn crash(&self, seed: u64) -> MemStorage {
        self.faults.dead.store(true, Ordering::SeqCst);
        let mut rng = SeededRng::new(seed);
        let fs = lock(&self.fs);
        // Only durable directory entries survive, each with its synced bytes
        // and a random part of the rest.
        MemStorage::durable_copy(&fs.dirs, &fs.durable_entries, |data| {
            data.after_crash(&mut rng)
        })
    }

    /// A storage holding `entries`, each file's bytes chosen by `bytes_of`
    /// and all of it durable.
    fn durable_copy(
        dirs: &BTreeSet<PathBuf>,
        entries: &BTreeMap<PathBuf, Inode>,
        mut bytes_of: impl FnMut(&InodeData) -> Vec<u8>,
    ) -> MemStorage {
        let mut copy = MemFs {
            dirs: dirs.clone(),
            ..MemFs::default()
        };
        for (path, inode) in entries {
            let bytes = bytes_of(&lock(inode));
            let inode = Arc::new(Mutex::new(InodeData::durable(bytes)));
            copy.entries.insert(path.clone(), inode.clone());
            copy.durable_entries.insert(path.clone(), inode);
        }
        MemStorage {
            fs: Arc::new(Mutex::new(copy)),
            faults: Arc::default(),
        }
    }

    /// An independent copy of every file as it is now, all of it durable.
    pub fn snapshot(&self) -> MemStorage {
        let fs = lock(&self.fs);
        MemStorage::durable_copy(&fs.dirs, &fs.entries, |data| data.bytes.clone())
    }

    /// A copy of a file's bytes, synced or not.
    pub fn file_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let fs = lock(&self.fs);
        fs.entries.get(path).map(|inode| lock(inode).bytes.clone())
    }

    /// Replaces a file's bytes, durably: the tests' way to damage a log.
    ///
    /// # Panics
    ///
    /// If the file does not exist.
    pub fn set_file_bytes(&self, path: &Path, bytes: Vec<u8>) {
        let fs = lock(&self.fs);
        let inode = fs
            .entries
            .get(path)
            .unwrap_or_else(|| panic!("no file {}", path.display()));
        *lock(inode) = InodeData::durable(bytes);
    }

    /// The paths of the files in `dir`, sorted.
    pub fn files(&self, dir: &Path) -> Vec<PathBuf> {
        let fs = lock(&self.fs);
        fs.entries
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect()
    }
}

impl Storage for MemStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.faults.check()?;
        let mut fs = lock(&self.fs);
        for dir in dir.ancestors() {
            fs.dirs.insert(dir.to_path_buf());
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.faults.check()?;
        let fs = lock(&self.fs);
        if !fs.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(fs
            .entries
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        self.faults.check()?;
        if self.faults.fail_create.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected create failure"));
        }
        let mut fs = lock(&self.fs);
        let parent = path.parent().unwrap_or(Path::new(""));
        if !fs.dirs.contains(parent) {
            return Err(not_found(parent));
        }
        let inode = Inode::default();
        fs.entries.insert(path.to_path_buf(), inode.clone());
        Ok(Arc::new(MemFile {
            inode,
            writable: true,
            faults: self.faults.clone(),
        }))
    }

    fn open(&self, path: &Path, writable: bool) -> io::Result<Arc<dyn StorageFile>> {
        self.faults.check()?;
        let fs = lock(&self.fs);
        let inode = fs.entries.get(path).ok_or_else(|| not_found(path))?.clone();
        Ok(Arc::new(MemFile {
            inode,
            writable,
            faults: self.faults.clone(),
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.faults.check()?;
        let mut fs = lock(&self.fs);
        let inode = fs.entries.remove(from).ok_or_else(|| not_found(from))?;
        fs.entries.insert(to.to_path_buf(), inode);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.faults.check()?;
        let mut fs = lock(&self.fs);
        fs.entries
            .remove(path)
            .map(drop)
            .ok_or_else(|| not_found(path))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.faults.check()?;
        if self.faults.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected sync failure"));
        }
        let mut fs = lock(&self.fs);
        let fs = &mut *fs;
        fs.durable_entries.retain(|p, _| p.parent() != Some(dir));
        for (path, inode) in &fs.entries {
            if path.parent() == Some(dir) {
                fs.durable_entries.insert(path.clone(), inode.clone());
            }
        }
        Ok(())
    }
}

struct MemFile {
    inode: Inode,
    writable: bool,
    faults: Arc<Faults>,
}

impl fmt::Debug for MemFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemFile")
            .field("writable", &self.writable)
            .finish_non_exhaustive()
    }
}

impl StorageFile for MemFile {
    fn size(&self) -> io::Result<u64> {
        self.faults.check()?;
        Ok(lock(&self.inode).bytes.len() as u64)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.faults.check()?;
        let data = lock(&self.inode);
        let start = (offset as usize).min(data.bytes.len());
        let n = buf.len().min(data.bytes.len() - start);
        buf[..n].copy_from_slice(&data.bytes[start..start + n]);
        Ok(n)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.faults.check()?;
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "file opened read-only",
            ));
        }
        if self.faults.fail_write.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected write failure"));
        }
        let torn = self.faults.tear_next_write.swap(false, Ordering::SeqCst);
        let buf = if torn { &buf[..buf.len() / 2] } else { buf };
        let mut data = lock(&self.inode);
        let offset = offset as usize;
        let end = offset + buf.len();
        if offset < data.durable_len {
            let old = data.bytes[offset..end.min(data.durable_len)].to_vec();
            data.undo.push((offset, old));
        }
        if data.bytes.len() < end {
            data.bytes.resize(end, 0);
        }
        data.bytes[offset..end].copy_from_slice(buf);
        // Overwritten synced bytes are no longer known to be durable.
        data.synced_len = data.synced_len.min(offset);
        if torn {
            return Err(io::Error::other("injected torn write"));
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.faults.check()?;
        {
            let mut hold = lock(&self.faults.hold);
            if hold.armed {
                hold.armed = false;
                hold.holding = true;
                self.faults.hold_changed.notify_all();
                while !hold.released {
                    hold = self
                        .faults
                        .hold_changed
                        .wait(hold)
                        .unwrap_or_else(|e| e.into_inner());
                }
                hold.holding = false;
            }
        }
        if self.faults.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected sync failure"));
        }
        self.faults.syncs.fetch_add(1, Ordering::SeqCst);
        let mut data = lock(&self.inode);
        data.synced_len = data.bytes.len();
        data.durable_len = data.bytes.len();
        data.undo.clear();
        Ok(())
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        self.faults.check()?;
        let mut data = lock(&self.inode);
        let len = len as usize;
        data.bytes.resize(len, 0);
        data.synced_len = data.synced_len.min(len);
        // A cut is taken as durable at once (the WAL syncs right after).
        data.durable_len = data.durable_len.min(len);
        data.undo.retain_mut(|(at, old)| {
            old.truncate(len.saturating_sub(*at));
            !old.is_empty()
        });
        Ok(())
    }
}
