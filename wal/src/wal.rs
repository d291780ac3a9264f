//! The [`Wal`] handle: opening and recovering a log, and the writer and
//! syncer threads that carry out appends.
//!
//! # Group commit
//!
//! Appenders send their records over a bounded channel to one writer thread.
//! The writer takes every request waiting in the channel (up to
//! [`WalOptions::group_requests_max`]), encodes them into as few frames as
//! [`WalOptions::group_bytes_max`] allows, writes them with one write call
//! per segment, syncs once (under [`SyncPolicy::Always`]), and only then
//! answers every appender of the group. While it syncs, the next group
//! gathers in the channel.
//!
//! # Preallocation
//!
//! A sync of data written past a file's end must also commit the file's new
//! size through the file system's journal; a sync of data overwriting bytes
//! already on disk need not, and takes about half as long (0.13–0.25 ms
//! against 0.21–0.50 ms for 4 KiB on a virtio disk). So the writer keeps the
//! active segment zero-filled [`WalOptions::preallocate_bytes`] ahead of what
//! it has written, one write of zeros per that many bytes of log: under
//! `always` nearly every sync is an overwrite. A segment is cut to its
//! frames when it is sealed and when the log closes, so a log at rest holds
//! no zeros; after a crash, recovery reads a zero-filled tail as the end of
//! the log ([`format::is_zero_filled`]) and cuts it (no `.broken` copy: it
//! holds nothing).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Result, WalError};
use crate::format::{self, Decoded, FrameEncoder, FrameHeader, FrameLimits, SEGMENT_HEADER_LEN};
use crate::reader::{FrameReader, RecordReader};
use crate::segment::{self, INDEX_INTERVAL_BYTES, SegmentMeta, TMP_SUFFIX};
use crate::storage::{FsStorage, Storage, StorageFile, read_all};
use crate::{Epoch, Lsn};

/// When an append counts as durable, named after Redis's `appendfsync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// fdatasync before an append returns: nothing acknowledged is lost.
    Always,
    /// A background sync every [`WalOptions::sync_interval`]: a crash loses
    /// at most about that much, always a suffix of the log.
    #[default]
    EverySec,
    /// No sync of its own (only when a segment is sealed, or when asked:
    /// [`Wal::sync`], [`Wal::eager_sync`]); the operating system decides.
    /// Records are readable (and so shipped) once synced, as under the
    /// other policies.
    No,
}

impl SyncPolicy {
    fn to_u8(self) -> u8 {
        match self {
            SyncPolicy::Always => 0,
            SyncPolicy::EverySec => 1,
            SyncPolicy::No => 2,
        }
    }

    fn from_u8(v: u8) -> SyncPolicy {
        match v {
            0 => SyncPolicy::Always,
            1 => SyncPolicy::EverySec,
            _ => SyncPolicy::No,
        }
    }
}

impl FromStr for SyncPolicy {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "always" => Ok(SyncPolicy::Always),
            "everysec" => Ok(SyncPolicy::EverySec),
            "no" => Ok(SyncPolicy::No),
            other => Err(format!(
                "unknown sync policy {other:?}: expected always, everysec or no"
            )),
        }
    }
}

impl std::fmt::Display for SyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SyncPolicy::Always => "always",
            SyncPolicy::EverySec => "everysec",
            SyncPolicy::No => "no",
        })
    }
}

/// Default for [`WalOptions::segment_bytes_max`]: 64 MiB.
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 64 << 20;
/// Default for [`WalOptions::group_bytes_max`]: 1 MiB.
pub const GROUP_BYTES_MAX_DEFAULT: usize = 1 << 20;
/// Default for [`WalOptions::group_requests_max`].
pub const GROUP_REQUESTS_MAX_DEFAULT: usize = 4096;
/// Default for [`WalOptions::append_queue_max`].
pub const APPEND_QUEUE_MAX_DEFAULT: usize = 4096;
/// Default for [`WalOptions::sync_interval`]: one second, as Redis's `everysec`.
pub const SYNC_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
/// Default for [`WalOptions::compression_level`]: zstd level 1 (level 3
/// compresses these records no better at half the speed).
pub const COMPRESSION_LEVEL_DEFAULT: i32 = 1;
/// Default for [`WalOptions::preallocate_bytes`]: 1 MiB, one extension per
/// about 15,000 SET records, each a sync that writes 1 MiB more.
pub const PREALLOCATE_BYTES_DEFAULT: u64 = 1 << 20;

/// How a log is written. Every limit has a default.
#[derive(Debug, Clone)]
pub struct WalOptions {
    pub sync_policy: SyncPolicy,
    /// A segment is sealed and a new one started once it reaches this size.
    pub segment_bytes_max: u64,
    /// Caps on the frames written and read, stored and decompressed.
    pub limits: FrameLimits,
    /// A group commit starts a new frame once the raw body of the current
    /// one reaches this size. One append's records always share a frame.
    pub group_bytes_max: usize,
    /// At most this many appends join one group commit.
    pub group_requests_max: usize,
    /// Appends waiting for the writer; more wait to be queued.
    pub append_queue_max: usize,
    /// How far the background sync of [`SyncPolicy::EverySec`] lags at most.
    pub sync_interval: Duration,
    /// zstd level for frame bodies.
    pub compression_level: i32,
    /// How far ahead of its frames the active segment is zero-filled (see
    /// the module's notes on preallocation); 0 leaves files to grow with
    /// each write.
    pub preallocate_bytes: u64,
    /// The LSN of the first record of a new, empty log.
    pub first_lsn: Lsn,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            sync_policy: SyncPolicy::default(),
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
            limits: FrameLimits::default(),
            group_bytes_max: GROUP_BYTES_MAX_DEFAULT,
            group_requests_max: GROUP_REQUESTS_MAX_DEFAULT,
            append_queue_max: APPEND_QUEUE_MAX_DEFAULT,
            sync_interval: SYNC_INTERVAL_DEFAULT,
            compression_level: COMPRESSION_LEVEL_DEFAULT,
            preallocate_bytes: PREALLOCATE_BYTES_DEFAULT,
            first_lsn: Lsn(1),
        }
    }
}

/// Records queued by [`Wal::enqueue`], on their way to the log.
#[derive(Debug)]
pub struct PendingAppend {
    rx: oneshot::Receiver<Result<LsnRange>>,
}

impl PendingAppend {
    /// Waits until the records are durable under the sync policy.
    ///
    /// # Errors
    ///
    /// As [`Wal::append`].
    pub async fn durable(self) -> Result<LsnRange> {
        self.rx.await.unwrap_or(Err(WalError::Closed))
    }

    /// The outcome if it is known already, without waiting.
    pub fn try_durable(&mut self) -> Option<Result<LsnRange>> {
        match self.rx.try_recv() {
            Ok(result) => Some(result),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(WalError::Closed)),
        }
    }
}

/// The LSNs given to one append: `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LsnRange {
    pub first: Lsn,
    pub last: Lsn,
}

/// Counters since the log was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    pub records: u64,
    pub frames: u64,
    /// Frame bytes written, headers included.
    pub bytes: u64,
    /// File syncs (fdatasync) of segment data.
    pub syncs: u64,
}

#[derive(Debug, Default)]
struct Counters {
    records: AtomicU64,
    frames: AtomicU64,
    bytes: AtomicU64,
    syncs: AtomicU64,
}

/// What the writer, the syncer and the readers share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub storage: Arc<dyn Storage>,
    pub options: WalOptions,
    /// Sorted by first LSN; the last one is being written.
    pub segments: RwLock<Vec<Arc<SegmentMeta>>>,
    /// The last durable LSN. Also signalled, unchanged, when the log fails or
    /// closes, so waiters wake up and look.
    pub durable: watch::Sender<Lsn>,
    last_lsn: AtomicU64,
    epoch: AtomicU64,
    /// The sync policy now ([`Wal::set_sync_policy`]), as
    /// [`SyncPolicy::to_u8`] gives it.
    sync_policy: AtomicU8,
    failure: Mutex<Option<String>>,
    failed: AtomicBool,
    closed: AtomicBool,
    counters: Counters,
    sync_target: Mutex<SyncTarget>,
    sync_wake: Condvar,
    /// Live [`EagerSync`] guards: while any exists, the everysec syncer
    /// syncs as soon as something is written.
    eager: AtomicU64,
    after_commit: AfterCommitSlot,
    latency: LatencySlot,
}

/// What the WAL tells of its slow steps, if set (see
/// [`Wal::set_latency_hook`]): `wal-write` or `wal-fsync`, and how long.
pub type LatencyHook = Arc<dyn Fn(&'static str, std::time::Duration) + Send + Sync>;

/// A [`LatencyHook`] set once, or not at all.
#[derive(Default)]
pub struct LatencySlot(std::sync::OnceLock<LatencyHook>);

impl LatencySlot {
    pub fn get(&self) -> Option<&LatencyHook> {
        self.0.get()
    }

    /// Sets it unless set already.
    pub fn set(&self, hook: LatencyHook) {
        let _ = self.0.set(hook);
    }

    /// Runs `step`, telling the hook (if set) how long it took, as `event`.
    pub fn timed<T>(&self, event: &'static str, step: impl FnOnce() -> T) -> T {
        let Some(hook) = self.get() else {
            return step();
        };
        let started = std::time::Instant::now();
        let out = step();
        hook(event, started.elapsed());
        out
    }
}

impl std::fmt::Debug for LatencySlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.get().is_some() { "set" } else { "none" })
    }
}

/// What the writer calls after each group commit (see
/// [`Wal::set_after_commit`]).
pub type AfterCommit = Arc<dyn Fn() + Send + Sync>;

/// The hook of [`Wal::set_after_commit`], if set.
#[derive(Default)]
struct AfterCommitSlot(Mutex<Option<AfterCommit>>);

impl std::fmt::Debug for AfterCommitSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if lock(&self.0).is_some() {
            "set"
        } else {
            "none"
        })
    }
}

/// What the [`SyncPolicy::EverySec`] syncer syncs next.
#[derive(Debug)]
struct SyncTarget {
    file: Arc<dyn StorageFile>,
    path: PathBuf,
    written: Lsn,
    /// Raised when the log is cut or started again: a sync taken before
    /// then must not publish its LSN, which may no longer exist (or hold
    /// other records by the time it would be published).
    generation: u64,
    /// Sync at once instead of at the end of the interval.
    soon: bool,
    stop: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn sync_policy(&self) -> SyncPolicy {
        SyncPolicy::from_u8(self.sync_policy.load(Ordering::Acquire))
    }

    pub fn last_lsn(&self) -> Lsn {
        Lsn(self.last_lsn.load(Ordering::Acquire))
    }

    pub fn first_lsn(&self) -> Lsn {
        self.segments.read().unwrap_or_else(|e| e.into_inner())[0].first_lsn
    }

    /// The error for appends and waiters once the log failed or closed.
    pub fn stopped(&self) -> Option<WalError> {
        if self.failed.load(Ordering::Acquire) {
            let reason = lock(&self.failure).clone().unwrap_or_default();
            return Some(WalError::Failed { reason });
        }
        if self.closed.load(Ordering::Acquire) {
            return Some(WalError::Closed);
        }
        None
    }

    fn fail(&self, err: &WalError) {
        let mut failure = lock(&self.failure);
        if failure.is_none() {
            tracing::error!(dir = %self.dir.display(), error = %err, "WAL failed; it refuses appends until reopened");
            *failure = Some(err.to_string());
        }
        self.failed.store(true, Ordering::Release);
        drop(failure);
        self.durable.send_modify(|_| {});
    }

    fn publish_durable(&self, lsn: Lsn) {
        self.durable.send_if_modified(|durable| {
            if lsn > *durable {
                *durable = lsn;
                true
            } else {
                false
            }
        });
    }

    /// The segment holding `lsn`.
    pub fn segment_for(&self, lsn: Lsn) -> Result<Arc<SegmentMeta>> {
        let segments = self.segments.read().unwrap_or_else(|e| e.into_inner());
        let at = segments.partition_point(|s| s.first_lsn <= lsn);
        if at == 0 {
            return Err(WalError::NotRetained {
                requested: lsn,
                first_retained: segments[0].first_lsn,
            });
        }
        Ok(segments[at - 1].clone())
    }
}

enum Request {
    Append {
        records: Vec<Bytes>,
        reply: oneshot::Sender<Result<LsnRange>>,
    },
    Frames {
        bytes: Bytes,
        headers: Vec<FrameHeader>,
        reply: oneshot::Sender<Result<LsnRange>>,
    },
    SetEpoch {
        epoch: Epoch,
        reply: oneshot::Sender<Result<()>>,
    },
    Sync {
        reply: oneshot::Sender<Result<Lsn>>,
    },
    TruncateAfter {
        lsn: Lsn,
        reply: oneshot::Sender<Result<Lsn>>,
    },
    Restart {
        first: Lsn,
        epoch: Epoch,
        reply: oneshot::Sender<Result<Lsn>>,
    },
}

impl Request {
    fn fail(self, err: WalError) {
        // An appender that gave up waiting dropped its receiver: nothing to tell.
        match self {
            Request::Append { reply, .. } | Request::Frames { reply, .. } => {
                drop(reply.send(Err(err)))
            }
            Request::SetEpoch { reply, .. } => drop(reply.send(Err(err))),
            Request::Sync { reply }
            | Request::TruncateAfter { reply, .. }
            | Request::Restart { reply, .. } => drop(reply.send(Err(err))),
        }
    }
}

/// A reply owed once the group's write (and sync) succeeds.
enum Owed {
    Range(oneshot::Sender<Result<LsnRange>>, LsnRange),
    Epoch(oneshot::Sender<Result<()>>),
    Sync(oneshot::Sender<Result<Lsn>>),
}

/// Keeps the everysec syncer eager; see [`Wal::eager_sync`].
#[derive(Debug)]
pub struct EagerSync {
    shared: Arc<Shared>,
}

impl Drop for EagerSync {
    fn drop(&mut self) {
        self.shared.eager.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A write-ahead log, open for appending and reading.
///
/// Appends and syncs are carried out by a writer thread; `append` and
/// friends are async, `*_blocking` are for threads outside a tokio runtime.
/// Dropping the handle stops the writer after a final sync.
#[derive(Debug)]
pub struct Wal {
    shared: Arc<Shared>,
    tx: Option<mpsc::Sender<Request>>,
    threads: Vec<JoinHandle<()>>,
}

impl Wal {
    /// Opens (or creates) the log in `dir` on the real file system.
    ///
    /// # Errors
    ///
    /// As [`Wal::open_with`].
    pub fn open(dir: impl Into<PathBuf>, options: WalOptions) -> Result<Wal> {
        Wal::open_with(dir, options, Arc::new(FsStorage))
    }

    /// Opens (or creates) the log in `dir` through `storage`, recovering it:
    /// every segment is read and every frame's crc, LSN and epoch checked; a
    /// torn tail of the last segment is cut off after a copy of the segment
    /// is kept as `<segment>.broken`.
    ///
    /// # Errors
    ///
    /// [`WalError::Corruption`] naming the segment file and byte offset when
    /// a bad frame is not a torn tail (it is followed by valid frames, or it
    /// is in an older segment), or segments do not continue each other;
    /// [`WalError::Io`] when the storage fails.
    ///
    /// # Panics
    ///
    /// If `options` are inconsistent (a zero size, or a group larger than a
    /// frame).
    pub fn open_with(
        dir: impl Into<PathBuf>,
        options: WalOptions,
        storage: Arc<dyn Storage>,
    ) -> Result<Wal> {
        let dir = dir.into();
        assert!(
            options.segment_bytes_max > 0,
            "segment_bytes_max must be positive"
        );
        assert!(options.group_requests_max > 0 && options.append_queue_max > 0);
        assert!(
            options.group_bytes_max > 0
                && options.group_bytes_max <= options.limits.body_bytes_max as usize,
            "group_bytes_max must be positive and at most limits.body_bytes_max"
        );
        assert!(options.first_lsn.0 > 0, "LSNs start at 1");
        let recovered = recover(&*storage, &dir, &options)?;
        let last = Lsn(recovered.next_lsn.0 - 1);
        let active = recovered
            .segments
            .last()
            .expect("a log has a segment")
            .clone();
        let (durable, _) = watch::channel(last);
        let policy = options.sync_policy.to_u8();
        let shared = Arc::new(Shared {
            dir,
            storage,
            sync_target: Mutex::new(SyncTarget {
                file: recovered.file.clone(),
                path: active.path.clone(),
                written: last,
                generation: 0,
                soon: false,
                stop: false,
            }),
            eager: AtomicU64::new(0),
            after_commit: AfterCommitSlot::default(),
            latency: LatencySlot::default(),
            options,
            segments: RwLock::new(recovered.segments),
            durable,
            last_lsn: AtomicU64::new(last.0),
            epoch: AtomicU64::new(recovered.epoch.0),
            sync_policy: AtomicU8::new(policy),
            failure: Mutex::new(None),
            failed: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            counters: Counters::default(),
            sync_wake: Condvar::new(),
        });
        let (tx, rx) = mpsc::channel(shared.options.append_queue_max);
        let file_len = recovered
            .file
            .size()
            .map_err(|e| WalError::io("reading the size of", &active.path, e))?;
        let writer = Writer {
            encoder: FrameEncoder::new(shared.options.compression_level),
            file: recovered.file,
            offset: active.end(),
            indexed_at: active.last_indexed(),
            segment: active,
            next_lsn: recovered.next_lsn,
            epoch: recovered.epoch,
            out: Vec::new(),
            frames: Vec::new(),
            file_len,
            zeros: Vec::new(),
            preallocating: true,
            shared: shared.clone(),
        };
        // The syncer runs whatever the policy, which may change.
        let syncer = shared.clone();
        let threads = vec![
            spawn("ferry-wal-writer", move || writer.run(rx)),
            spawn("ferry-wal-syncer", move || run_syncer(&syncer)),
        ];
        Ok(Wal {
            shared,
            tx: Some(tx),
            threads,
        })
    }

    fn sender(&self) -> &mpsc::Sender<Request> {
        self.tx.as_ref().expect("the sender lives until drop")
    }

    /// Has the writer thread call `hook` after each group commit, once every
    /// append in it has its outcome: work that follows durability (applying
    /// the records) starts there without a hand-off to another thread. The
    /// hook runs on the writer thread, so the next group waits for it.
    pub fn set_after_commit(&self, hook: Option<AfterCommit>) {
        *lock(&self.shared.after_commit.0) = hook;
    }

    /// Has the WAL tell `hook` how long each write of a group commit
    /// (`wal-write`) and each sync of segment data (`wal-fsync`, by the
    /// writer or the everysec syncer) took. Set once; later calls change
    /// nothing.
    pub fn set_latency_hook(&self, hook: LatencyHook) {
        self.shared.latency.set(hook);
    }

    /// The most an append's records may take, framed
    /// ([`format::encoded_record_len`] each): they share one frame.
    pub fn append_bytes_max(&self) -> u64 {
        u64::from(self.shared.options.limits.body_bytes_max)
    }

    fn check_batch(&self, records: &[Bytes]) -> Result<()> {
        if records.is_empty() {
            return Err(WalError::EmptyBatch);
        }
        let bytes: u64 = records
            .iter()
            .map(|r| format::encoded_record_len(r.len()) as u64)
            .sum();
        let max = self.append_bytes_max();
        if bytes > max {
            return Err(WalError::BatchTooLarge { bytes, max });
        }
        Ok(())
    }

    /// Appends records, which get contiguous LSNs and share one frame, and
    /// returns once they are durable under the sync policy.
    ///
    /// If the future is dropped after the records were queued, they may
    /// still be written.
    ///
    /// # Errors
    ///
    /// [`WalError::EmptyBatch`], [`WalError::BatchTooLarge`]; the write or
    /// sync error that failed the log, or [`WalError::Failed`] after one.
    pub async fn append(&self, records: Vec<Bytes>) -> Result<LsnRange> {
        self.check_batch(&records)?;
        self.ask(|reply| Request::Append { records, reply }).await
    }

    /// Queues records for appending and returns once they are queued, not
    /// durable: their place in the log is fixed by the order of `enqueue`
    /// calls. Await [`PendingAppend::durable`] for the outcome. This lets a
    /// caller that must keep records in its own order (holding a lock while
    /// it queues) wait for durability after releasing it.
    ///
    /// # Errors
    ///
    /// [`WalError::EmptyBatch`], [`WalError::BatchTooLarge`], and
    /// [`WalError::Failed`] or [`WalError::Closed`] once the log stopped.
    pub async fn enqueue(&self, records: Vec<Bytes>) -> Result<PendingAppend> {
        let mut pending = None;
        self.enqueue_with(records, |p| pending = Some(p)).await?;
        Ok(pending.expect("handed over before the send"))
    }

    /// [`Wal::enqueue`], handing the [`PendingAppend`] to `file` before the
    /// records are sent to the writer (and after they passed the checks):
    /// whatever reacts to the commit (see [`Wal::set_after_commit`]) finds
    /// it wherever `file` put it. If the send then fails, its outcome is an
    /// error.
    ///
    /// # Errors
    ///
    /// As [`Wal::enqueue`].
    pub async fn enqueue_with(
        &self,
        records: Vec<Bytes>,
        file: impl FnOnce(PendingAppend),
    ) -> Result<()> {
        self.check_batch(&records)?;
        let (reply, rx) = oneshot::channel();
        file(PendingAppend { rx });
        self.send(Request::Append { records, reply }).await
    }

    /// [`Wal::append`] for threads outside an async runtime.
    ///
    /// # Errors
    ///
    /// As [`Wal::append`].
    ///
    /// # Panics
    ///
    /// If called from within an async runtime.
    pub fn append_blocking(&self, records: Vec<Bytes>) -> Result<LsnRange> {
        self.check_batch(&records)?;
        self.ask_blocking(|reply| Request::Append { records, reply })
    }

    /// Appends frames produced by another node's log (for example from a
    /// [`FrameReader`]), storing the same bytes. Every frame's crc and body
    /// are verified, and its LSNs must continue this log exactly; otherwise
    /// nothing is written.
    ///
    /// # Errors
    ///
    /// [`WalError::InvalidFrames`] for bytes that are not whole valid
    /// frames, [`WalError::LsnGap`] when they do not start at the log's next
    /// LSN, [`WalError::EpochRegression`]; write and sync errors as
    /// [`Wal::append`].
    pub async fn append_frames(&self, bytes: Bytes) -> Result<LsnRange> {
        let headers = verify_frames(&bytes, self.shared.options.limits)?;
        self.ask(|reply| Request::Frames {
            bytes,
            headers,
            reply,
        })
        .await
    }

    /// [`Wal::append_frames`] for frames already checked by
    /// [`check_frames`] (their bodies are not decompressed again).
    ///
    /// # Errors
    ///
    /// As [`Wal::append_frames`].
    pub async fn append_checked(&self, frames: CheckedFrames) -> Result<LsnRange> {
        self.ask(|reply| Request::Frames {
            bytes: frames.bytes,
            headers: frames.headers,
            reply,
        })
        .await
    }

    /// [`Wal::append_frames`] for threads outside an async runtime.
    ///
    /// # Errors
    ///
    /// As [`Wal::append_frames`].
    pub fn append_frames_blocking(&self, bytes: Bytes) -> Result<LsnRange> {
        let headers = verify_frames(&bytes, self.shared.options.limits)?;
        self.ask_blocking(|reply| Request::Frames {
            bytes,
            headers,
            reply,
        })
    }

    /// Sets the epoch of the frames appended after this call.
    ///
    /// # Errors
    ///
    /// [`WalError::EpochRegression`] if `epoch` is below the current one.
    pub async fn set_epoch(&self, epoch: Epoch) -> Result<()> {
        self.ask(|reply| Request::SetEpoch { epoch, reply }).await
    }

    /// Cuts the log after `lsn`, which must end a frame: every record after
    /// it is gone (the caller keeps a copy first if it wants one, as a
    /// rejoining primary keeps its diverged records in a quarantine log).
    /// Nothing may append or read past `lsn` meanwhile. Returns the new last
    /// LSN.
    ///
    /// # Errors
    ///
    /// [`WalError::InvalidFrames`] if `lsn` falls inside a frame,
    /// [`WalError::NotRetained`], I/O errors (which fail the log).
    pub async fn truncate_after(&self, lsn: Lsn) -> Result<Lsn> {
        self.ask(|reply| Request::TruncateAfter { lsn, reply })
            .await
    }

    /// Throws the whole log away and starts it again, empty, so that the
    /// next record gets `first` and the next frame may carry `epoch` or a
    /// later one: for a replica whose engine was replaced by a snapshot of
    /// its primary's state. Nothing may read the log meanwhile, and the
    /// durable LSN moves to `first - 1`, back if `first` is lower: readers
    /// and durable-LSN watchers must have stopped. A crash leaves a suffix of
    /// the old log, or nothing, or the new empty log; the caller completes
    /// its change from its own record of it. Returns the new last LSN
    /// (`first - 1`).
    ///
    /// # Errors
    ///
    /// I/O errors, which fail the log.
    pub async fn restart_at(&self, first: Lsn, epoch: Epoch) -> Result<Lsn> {
        assert!(first.0 > 0, "LSNs start at 1");
        self.ask(|reply| Request::Restart {
            first,
            epoch,
            reply,
        })
        .await
    }

    /// Syncs everything written so far, whatever the policy, and returns the
    /// durable LSN.
    ///
    /// # Errors
    ///
    /// The sync error, which fails the log.
    pub async fn sync(&self) -> Result<Lsn> {
        self.ask(|reply| Request::Sync { reply }).await
    }

    /// [`Wal::sync`] for threads outside an async runtime.
    ///
    /// # Errors
    ///
    /// As [`Wal::sync`].
    pub fn sync_blocking(&self) -> Result<Lsn> {
        self.ask_blocking(|reply| Request::Sync { reply })
    }

    /// Sends the writer the request `make` builds around a reply channel,
    /// and waits for its answer.
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Request) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.send(make(reply)).await?;
        rx.await.unwrap_or(Err(WalError::Closed))
    }

    /// [`Wal::ask`] for threads outside an async runtime.
    fn ask_blocking<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> Request,
    ) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.send_blocking(make(reply))?;
        rx.blocking_recv().unwrap_or(Err(WalError::Closed))
    }

    async fn send(&self, request: Request) -> Result<()> {
        if let Some(err) = self.shared.stopped() {
            return Err(err);
        }
        self.sender()
            .send(request)
            .await
            .map_err(|_| WalError::Closed)
    }

    fn send_blocking(&self, request: Request) -> Result<()> {
        if let Some(err) = self.shared.stopped() {
            return Err(err);
        }
        self.sender()
            .blocking_send(request)
            .map_err(|_| WalError::Closed)
    }

    /// The first LSN still retained (the log may be empty from there).
    pub fn first_lsn(&self) -> Lsn {
        self.shared.first_lsn()
    }

    /// The last LSN written (perhaps not yet durable); [`Lsn::ZERO`] for a
    /// log that never held a record.
    pub fn last_lsn(&self) -> Lsn {
        self.shared.last_lsn()
    }

    /// The last durable LSN.
    pub fn durable_lsn(&self) -> Lsn {
        *self.shared.durable.borrow()
    }

    /// Whether a write or sync failed, so that the log takes no more
    /// appends.
    pub fn has_failed(&self) -> bool {
        self.shared.failed.load(Ordering::Acquire)
    }

    /// The sync policy now.
    pub fn sync_policy(&self) -> SyncPolicy {
        self.shared.sync_policy()
    }

    /// Changes the sync policy from the next group commit on (Redis's
    /// CONFIG SET appendfsync). Records written before keep the promise
    /// they were written under: under `everysec` the syncer still syncs
    /// them (at once, when the new policy is `no`, which syncs only when
    /// asked).
    pub fn set_sync_policy(&self, policy: SyncPolicy) {
        let before = SyncPolicy::from_u8(
            self.shared
                .sync_policy
                .swap(policy.to_u8(), Ordering::AcqRel),
        );
        if policy == SyncPolicy::No && before == SyncPolicy::EverySec {
            lock(&self.shared.sync_target).soon = true;
            self.shared.sync_wake.notify_one();
        }
    }

    /// The epoch of the last frame written, or set by [`Wal::set_epoch`].
    pub fn epoch(&self) -> Epoch {
        Epoch(self.shared.epoch.load(Ordering::Acquire))
    }

    /// A watch of the last durable LSN, for tailing the log without polling.
    pub fn subscribe_durable(&self) -> watch::Receiver<Lsn> {
        self.shared.durable.subscribe()
    }

    /// Waits until `lsn` is durable; returns the durable LSN then.
    ///
    /// # Errors
    ///
    /// [`WalError::Failed`] or [`WalError::Closed`] if the log stops first.
    pub async fn wait_durable(&self, lsn: Lsn) -> Result<Lsn> {
        wait_durable(&self.shared, &mut self.shared.durable.subscribe(), lsn).await
    }

    /// Counters since the log was opened.
    pub fn stats(&self) -> WalStats {
        let c = &self.shared.counters;
        WalStats {
            records: c.records.load(Ordering::Relaxed),
            frames: c.frames.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            syncs: c.syncs.load(Ordering::Relaxed),
        }
    }

    /// Stored bytes of the frames after the one holding `lsn` (every frame
    /// for [`Lsn::ZERO`]), up to the last written. An estimate that may count
    /// up to one index interval (64 KiB) too many, cheap enough for status
    /// reports of replication lag.
    pub fn bytes_after(&self, lsn: Lsn) -> u64 {
        let segments = self
            .shared
            .segments
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let mut total = 0;
        for segment in segments.iter().rev() {
            if segment.first_lsn > lsn {
                total += segment
                    .end()
                    .saturating_sub(format::SEGMENT_HEADER_LEN as u64);
            } else {
                total += segment.end().saturating_sub(segment.seek_hint(lsn.next()));
                break;
            }
        }
        total
    }

    /// Makes the [`SyncPolicy::EverySec`] syncer sync as soon as frames are
    /// written, in the background (appends do not wait for it), for as long
    /// as the guard lives. Readers that follow the durable LSN, such as
    /// replication, then see new frames within a sync's time rather than
    /// within the interval. Other policies already publish every write.
    pub fn eager_sync(&self) -> EagerSync {
        self.shared.eager.fetch_add(1, Ordering::AcqRel);
        let mut target = lock(&self.shared.sync_target);
        target.soon = true;
        drop(target);
        self.shared.sync_wake.notify_one();
        EagerSync {
            shared: self.shared.clone(),
        }
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// A reader of the stored frames from the one holding `from`, up to the
    /// durable LSN (it follows it as it grows). The first frame may start
    /// before `from`.
    ///
    /// # Errors
    ///
    /// [`WalError::NotRetained`] below the first retained LSN,
    /// [`WalError::BeyondEnd`] past the next LSN to be written.
    pub fn frames(&self, from: Lsn) -> Result<FrameReader> {
        FrameReader::new(self.shared.clone(), from)
    }

    /// A reader of records from `from` on, up to the durable LSN.
    ///
    /// # Errors
    ///
    /// As [`Wal::frames`].
    pub fn records(&self, from: Lsn) -> Result<RecordReader> {
        Ok(RecordReader::new(self.frames(from)?, from))
    }

    /// The segments, oldest first: (first LSN, stored bytes).
    pub fn segments(&self) -> Vec<(Lsn, u64)> {
        self.shared
            .segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|s| (s.first_lsn, s.end()))
            .collect()
    }

    /// Deletes the segments all of whose records are below `lsn`, oldest
    /// first; the segment being written is never deleted. Returns how many
    /// were deleted.
    ///
    /// # Errors
    ///
    /// [`WalError::Io`] if a deletion or the directory sync fails; the
    /// segments deleted before it stay deleted.
    pub fn purge_before(&self, lsn: Lsn) -> Result<usize> {
        let shared = &self.shared;
        let mut segments = shared.segments.write().unwrap_or_else(|e| e.into_inner());
        let mut deleted = 0;
        let mut result = Ok(());
        while segments.len() > 1 && segments[1].first_lsn <= lsn {
            let path = segments[0].path.clone();
            if let Err(e) = shared.storage.remove(&path) {
                result = Err(WalError::io("deleting", path, e));
                break;
            }
            segments.remove(0);
            deleted += 1;
        }
        if deleted > 0 {
            tracing::info!(
                dir = %shared.dir.display(),
                deleted,
                first_retained_lsn = %segments[0].first_lsn,
                "purged WAL segments"
            );
            shared
                .storage
                .sync_dir(&shared.dir)
                .map_err(|e| WalError::io("syncing directory", &shared.dir, e))?;
        }
        result.map(|()| deleted)
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        // Closing the channel stops the writer after it drains and syncs.
        drop(self.tx.take());
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!("a WAL thread panicked");
            }
        }
    }
}

pub(crate) async fn wait_durable(
    shared: &Shared,
    rx: &mut watch::Receiver<Lsn>,
    lsn: Lsn,
) -> Result<Lsn> {
    let mut stopped = None;
    let result = rx
        .wait_for(|&durable| {
            if durable >= lsn {
                return true;
            }
            stopped = shared.stopped();
            stopped.is_some()
        })
        .await
        .map(|durable| *durable);
    match (stopped, result) {
        (Some(err), _) => Err(err),
        (None, Ok(durable)) => Ok(durable),
        (None, Err(_)) => Err(WalError::Closed),
    }
}

/// Checks that `bytes` are whole, valid frames with contiguous LSNs and
/// non-decreasing epochs: every crc, and every body decompressed and
/// parsed. Returns their headers.
///
/// # Errors
///
/// [`WalError::EmptyBatch`] for no bytes, [`WalError::InvalidFrames`]
/// naming the byte offset and the reason otherwise.
pub fn verify_frames(bytes: &Bytes, limits: FrameLimits) -> Result<Vec<FrameHeader>> {
    check_frames(bytes.clone(), limits).map(|checked| checked.headers)
}

/// Frames that passed [`check_frames`], with their decoded records; only
/// that function makes them, so [`Wal::append_checked`] need not check again.
#[derive(Debug, Clone)]
pub struct CheckedFrames {
    bytes: Bytes,
    headers: Vec<FrameHeader>,
    records: Vec<Bytes>,
}

impl CheckedFrames {
    /// The headers, in order.
    pub fn headers(&self) -> &[FrameHeader] {
        &self.headers
    }

    /// Every record of every frame, in LSN order from
    /// [`first_lsn`](Self::first_lsn).
    pub fn records(&self) -> &[Bytes] {
        &self.records
    }

    pub fn first_lsn(&self) -> Lsn {
        self.headers[0].first_lsn
    }

    pub fn last_lsn(&self) -> Lsn {
        self.headers[self.headers.len() - 1].last_lsn()
    }

    /// The stored bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

/// As [`verify_frames`], keeping the decoded records: each body is
/// decompressed once, for both the check and the caller.
///
/// # Errors
///
/// As [`verify_frames`].
pub fn check_frames(bytes: Bytes, limits: FrameLimits) -> Result<CheckedFrames> {
    if bytes.is_empty() {
        return Err(WalError::EmptyBatch);
    }
    let mut headers: Vec<FrameHeader> = Vec::new();
    let mut records = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        let invalid = |reason: String| WalError::InvalidFrames {
            offset: offset as u64,
            reason,
        };
        let header = match format::decode_frame(&bytes[offset..], limits) {
            Decoded::Frame(frame) => frame.header,
            Decoded::NeedMore(n) => {
                return Err(invalid(format!(
                    "the input ends inside a frame of {n} bytes ({} given)",
                    bytes.len() - offset
                )));
            }
            Decoded::Corrupt(why) => return Err(invalid(why.to_string())),
        };
        let frame = bytes.slice(offset..offset + header.frame_len());
        records.extend(
            format::decode_records(&header, &frame).map_err(|why| invalid(why.to_string()))?,
        );
        if let Some(prev) = headers.last() {
            if header.first_lsn != prev.last_lsn().next() {
                return Err(invalid(format!(
                    "frame starts at lsn {}, the previous frame ends at {}",
                    header.first_lsn,
                    prev.last_lsn()
                )));
            }
            if header.epoch < prev.epoch {
                return Err(invalid(format!(
                    "frame epoch {} is below the previous frame's {}",
                    header.epoch, prev.epoch
                )));
            }
        }
        offset += header.frame_len();
        headers.push(header);
    }
    Ok(CheckedFrames {
        bytes,
        headers,
        records,
    })
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .expect("spawning a WAL thread")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What recovery hands to the writer.
struct Recovered {
    segments: Vec<Arc<SegmentMeta>>,
    /// The last segment, open for appending.
    file: Arc<dyn StorageFile>,
    next_lsn: Lsn,
    epoch: Epoch,
}

fn recover(storage: &dyn Storage, dir: &Path, options: &WalOptions) -> Result<Recovered> {
    storage
        .create_dir_all(dir)
        .map_err(|e| WalError::io("creating directory", dir, e))?;
    let scanned = scan_log(storage, dir, options.limits, true)?;
    let Some(file) = scanned.last_file else {
        let (file, path) = segment::create_segment(storage, dir, options.first_lsn)?;
        let meta = SegmentMeta::new(
            options.first_lsn,
            path,
            SEGMENT_HEADER_LEN as u64,
            Vec::new(),
        );
        return Ok(Recovered {
            segments: vec![Arc::new(meta)],
            file,
            next_lsn: options.first_lsn,
            epoch: Epoch(0),
        });
    };
    let (_, last_path, last_scan) = scanned.segments.last().expect("a last segment");
    // What survived is durable from now on, whatever wrote it.
    file.sync_data()
        .map_err(|e| WalError::io("syncing", last_path, e))?;
    let (next_lsn, epoch) = (last_scan.next_lsn, last_scan.epoch);
    let segments = scanned
        .segments
        .into_iter()
        .map(|(first, path, scan)| {
            Arc::new(SegmentMeta::new(first, path, scan.valid_len, scan.index))
        })
        .collect();
    Ok(Recovered {
        segments,
        file,
        next_lsn,
        epoch,
    })
}

/// Every segment of a log, scanned in order.
struct ScannedLog {
    segments: Vec<(Lsn, PathBuf, segment::Scan)>,
    /// The last segment, open for writing when repairing.
    last_file: Option<Arc<dyn StorageFile>>,
    /// Bytes of all segment files as found.
    bytes: u64,
    /// Bytes of the last segment file as found.
    last_bytes: u64,
}

/// Reads and checks every segment of the log in `dir`. With `repair`, the
/// leftovers of an unfinished segment creation are removed and a torn tail
/// is cut off (after a `.broken` copy is kept); without it nothing is
/// written.
fn scan_log(
    storage: &dyn Storage,
    dir: &Path,
    limits: FrameLimits,
    repair: bool,
) -> Result<ScannedLog> {
    let names = storage
        .list(dir)
        .map_err(|e| WalError::io("listing", dir, e))?;
    let mut firsts = Vec::new();
    for name in &names {
        if name.ends_with(TMP_SUFFIX) && repair {
            // A segment whose creation did not finish: it never held a record.
            let path = dir.join(name);
            tracing::warn!(path = %path.display(), "removing an unfinished segment");
            storage
                .remove(&path)
                .map_err(|e| WalError::io("removing", &path, e))?;
        } else if let Some(first) = segment::parse_segment_name(name) {
            firsts.push(first);
        }
    }
    firsts.sort();
    let mut scanned = ScannedLog {
        segments: Vec::with_capacity(firsts.len()),
        last_file: None,
        bytes: 0,
        last_bytes: 0,
    };
    let mut expected = None;
    let mut epoch = Epoch(0);
    for (i, &first) in firsts.iter().enumerate() {
        let is_last = i + 1 == firsts.len();
        let path = dir.join(segment::segment_name(first));
        let file = storage
            .open(&path, is_last && repair)
            .map_err(|e| WalError::io("opening", &path, e))?;
        let data = read_all(&*file).map_err(|e| WalError::io("reading", &path, e))?;
        let scan = segment::scan_segment(&path, &data, expected, is_last, limits, epoch)?;
        scanned.bytes += data.len() as u64;
        scanned.last_bytes = data.len() as u64;
        if let (Some((offset, why)), true) = (&scan.torn, repair) {
            let broken = keep_broken_copy(storage, dir, &path, &data)?;
            file.truncate(*offset)
                .map_err(|e| WalError::io("truncating", &path, e))?;
            file.sync_data()
                .map_err(|e| WalError::io("syncing", &path, e))?;
            tracing::warn!(
                segment = %path.display(),
                offset,
                cut_bytes = data.len() as u64 - offset,
                reason = %why,
                copy = %broken.display(),
                "cut a torn tail off the WAL"
            );
        }
        if let (None, true, true) = (
            &scan.torn,
            repair && is_last,
            scan.valid_len < data.len() as u64,
        ) {
            // Zero-filled space after the last frame: nothing to keep a copy
            // of. Cut, so the log ends at its last frame as after a torn tail.
            file.truncate(scan.valid_len)
                .map_err(|e| WalError::io("truncating", &path, e))?;
            file.sync_data()
                .map_err(|e| WalError::io("syncing", &path, e))?;
            tracing::info!(
                segment = %path.display(),
                offset = scan.valid_len,
                cut_bytes = data.len() as u64 - scan.valid_len,
                "cut zero-filled space off the end of the WAL"
            );
        }
        if is_last {
            scanned.last_file = Some(file);
        }
        expected = Some(scan.next_lsn);
        epoch = scan.epoch;
        scanned.segments.push((first, path, scan));
    }
    Ok(scanned)
}

/// What [`verify`] found in a log that is intact but for a torn tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSummary {
    pub segments: usize,
    /// The first LSN retained, and the last one held ([`Lsn::ZERO`] if none).
    pub first_lsn: Lsn,
    pub last_lsn: Lsn,
    /// The epoch of the last frame.
    pub epoch: Epoch,
    /// Bytes of all segment files.
    pub bytes: u64,
    /// A torn tail that opening the log would cut off.
    pub torn_tail: Option<TornTail>,
}

/// Where a torn tail starts and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub segment: PathBuf,
    pub offset: u64,
    /// Bytes from the offset to the end of the segment.
    pub bytes: u64,
    pub reason: String,
}

/// Checks every frame of the log in `dir` without changing anything: safe on
/// a log a running node is writing (frames it writes during the check may
/// be reported as a torn tail).
///
/// # Errors
///
/// [`WalError::Corruption`] naming the segment and offset of the first
/// problem that is not a torn tail; [`WalError::Io`].
pub fn verify(storage: &dyn Storage, dir: &Path, limits: FrameLimits) -> Result<LogSummary> {
    let scanned = scan_log(storage, dir, limits, false)?;
    let (first_lsn, last_lsn, epoch, torn_tail) =
        match (scanned.segments.first(), scanned.segments.last()) {
            (Some((first, _, _)), Some((_, path, last))) => {
                let torn_tail = last.torn.as_ref().map(|(offset, reason)| TornTail {
                    segment: path.clone(),
                    offset: *offset,
                    bytes: scanned.last_bytes - offset,
                    reason: reason.clone(),
                });
                (*first, Lsn(last.next_lsn.0 - 1), last.epoch, torn_tail)
            }
            _ => (Lsn::ZERO, Lsn::ZERO, Epoch(0), None),
        };
    Ok(LogSummary {
        segments: scanned.segments.len(),
        first_lsn,
        last_lsn,
        epoch,
        bytes: scanned.bytes,
        torn_tail,
    })
}

/// Saves `data` as `<segment>.broken` (or `.broken.N` if taken), durably.
fn keep_broken_copy(
    storage: &dyn Storage,
    dir: &Path,
    segment: &Path,
    data: &[u8],
) -> Result<PathBuf> {
    let names = storage
        .list(dir)
        .map_err(|e| WalError::io("listing", dir, e))?;
    let base = format!(
        "{}.broken",
        segment
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("segment")
    );
    let name = (0..)
        .map(|n| {
            if n == 0 {
                base.clone()
            } else {
                format!("{base}.{n}")
            }
        })
        .find(|candidate| !names.contains(candidate))
        .expect("an unused name");
    let path = dir.join(name);
    let file = storage
        .create(&path)
        .map_err(|e| WalError::io("creating", &path, e))?;
    file.write_at(data, 0)
        .map_err(|e| WalError::io("writing", &path, e))?;
    file.sync_data()
        .map_err(|e| WalError::io("syncing", &path, e))?;
    storage
        .sync_dir(dir)
        .map_err(|e| WalError::io("syncing directory", dir, e))?;
    Ok(path)
}

/// A frame encoded into [`Writer::out`], not yet written.
#[derive(Debug, Clone, Copy)]
struct PendingFrame {
    start: usize,
    first_lsn: Lsn,
    records: u64,
}

/// The writer thread's state: it alone writes segments.
struct Writer {
    shared: Arc<Shared>,
    file: Arc<dyn StorageFile>,
    segment: Arc<SegmentMeta>,
    /// Bytes written to the active segment.
    offset: u64,
    /// Offset of the active segment's last index entry.
    indexed_at: Option<u64>,
    next_lsn: Lsn,
    epoch: Epoch,
    encoder: FrameEncoder,
    /// The encoded frames of the current group.
    out: Vec<u8>,
    frames: Vec<PendingFrame>,
    /// Bytes of the active segment file, its zero-filled space included.
    file_len: u64,
    /// [`WalOptions::preallocate_bytes`] of zeros, once the first is needed.
    zeros: Vec<u8>,
    /// Whether to zero-fill ahead in this segment (not after a failure).
    preallocating: bool,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let group_max = self.shared.options.group_requests_max;
        let mut group = Vec::with_capacity(group_max.min(1024));
        while let Some(first) = next_request(&mut rx) {
            group.push(first);
            while group.len() < group_max {
                match rx.try_recv() {
                    Ok(request) => group.push(request),
                    Err(_) => break,
                }
            }
            self.commit(&mut group);
            let hook = lock(&self.shared.after_commit.0).clone();
            if let Some(hook) = hook {
                hook();
            }
        }
        // Every handle is gone: make what was written durable, leave the
        // segment holding its frames only, and stop.
        if self.shared.stopped().is_none() {
            match self.file.sync_data().and_then(|()| self.cut_zeros()) {
                Ok(()) => self.shared.publish_durable(Lsn(self.next_lsn.0 - 1)),
                Err(e) => self
                    .shared
                    .fail(&WalError::io("syncing", &self.segment.path, e)),
            }
        }
        self.shared.closed.store(true, Ordering::Release);
        lock(&self.shared.sync_target).stop = true;
        self.shared.sync_wake.notify_all();
        self.shared.durable.send_modify(|_| {});
    }

    /// Carries out one group commit and answers every request in it.
    fn commit(&mut self, group: &mut Vec<Request>) {
        if let Some(err) = self.shared.stopped() {
            for request in group.drain(..) {
                request.fail(err.duplicate());
            }
            return;
        }
        let timestamp_ms = now_ms();
        let mut owed = Vec::with_capacity(group.len());
        let mut force_sync = false;
        let epoch_before = self.epoch;
        for request in group.drain(..) {
            match request {
                Request::Append { records, reply } => {
                    let bytes: usize = records
                        .iter()
                        .map(|r| format::encoded_record_len(r.len()))
                        .sum();
                    if self.encoder.record_count() > 0
                        && self.encoder.raw_len() + bytes > self.shared.options.group_bytes_max
                    {
                        self.finish_frame(timestamp_ms);
                    }
                    let first = self.next_lsn;
                    for record in &records {
                        self.encoder.push(record);
                    }
                    self.next_lsn = Lsn(first.0 + records.len() as u64);
                    let range = LsnRange {
                        first,
                        last: Lsn(self.next_lsn.0 - 1),
                    };
                    owed.push(Owed::Range(reply, range));
                }
                Request::Frames {
                    bytes,
                    headers,
                    reply,
                } => {
                    self.finish_frame(timestamp_ms);
                    let (first, last) = (headers[0], headers[headers.len() - 1]);
                    if first.first_lsn != self.next_lsn {
                        let _ = reply.send(Err(WalError::LsnGap {
                            expected: self.next_lsn,
                            found: first.first_lsn,
                        }));
                        continue;
                    }
                    if first.epoch < self.epoch {
                        let _ = reply.send(Err(WalError::EpochRegression {
                            current: self.epoch,
                            found: first.epoch,
                        }));
                        continue;
                    }
                    let mut start = self.out.len();
                    for header in &headers {
                        self.frames.push(PendingFrame {
                            start,
                            first_lsn: header.first_lsn,
                            records: u64::from(header.record_count),
                        });
                        start += header.frame_len();
                    }
                    self.out.extend_from_slice(&bytes);
                    self.next_lsn = last.last_lsn().next();
                    self.epoch = last.epoch;
                    let range = LsnRange {
                        first: first.first_lsn,
                        last: last.last_lsn(),
                    };
                    owed.push(Owed::Range(reply, range));
                }
                Request::SetEpoch { epoch, reply } => {
                    self.finish_frame(timestamp_ms);
                    if epoch < self.epoch {
                        let _ = reply.send(Err(WalError::EpochRegression {
                            current: self.epoch,
                            found: epoch,
                        }));
                        continue;
                    }
                    self.epoch = epoch;
                    owed.push(Owed::Epoch(reply));
                }
                Request::Sync { reply } => {
                    force_sync = true;
                    owed.push(Owed::Sync(reply));
                }
                Request::TruncateAfter { lsn, reply } => {
                    // What came before it in the group is written first.
                    self.finish_frame(timestamp_ms);
                    if let Err(err) = self.write_group(false) {
                        let _ = reply.send(Err(err.duplicate()));
                        self.shared.fail(&err);
                        continue;
                    }
                    match self.truncate_after(lsn) {
                        Ok(last) => drop(reply.send(Ok(last))),
                        // Refused before anything changed: the log goes on.
                        Err(
                            err @ (WalError::InvalidFrames { .. } | WalError::NotRetained { .. }),
                        ) => drop(reply.send(Err(err))),
                        Err(err) => {
                            let _ = reply.send(Err(err.duplicate()));
                            self.shared.fail(&err);
                        }
                    }
                }
                Request::Restart {
                    first,
                    epoch,
                    reply,
                } => {
                    self.finish_frame(timestamp_ms);
                    let result = self
                        .write_group(false)
                        .and_then(|_| self.restart_at(first, epoch));
                    match result {
                        Ok(()) => drop(reply.send(Ok(Lsn(first.0 - 1)))),
                        Err(err) => {
                            let _ = reply.send(Err(err.duplicate()));
                            self.shared.fail(&err);
                        }
                    }
                }
            }
        }
        self.finish_frame(timestamp_ms);
        match self.write_group(force_sync) {
            Ok(durable) => {
                for reply in owed {
                    match reply {
                        Owed::Range(reply, range) => drop(reply.send(Ok(range))),
                        Owed::Epoch(reply) => drop(reply.send(Ok(()))),
                        Owed::Sync(reply) => drop(reply.send(Ok(durable))),
                    }
                }
            }
            Err(err) => {
                self.epoch = epoch_before;
                self.shared.fail(&err);
                // What a segment's seal synced before the failure is on
                // disk, and may have been shipped: those appends succeeded
                // (they come back at restart), in order up to the first
                // that did not. A sync asked for failed.
                let durable = *self.shared.durable.borrow();
                let mut err = Some(err);
                let mut ok = true;
                for reply in owed {
                    if let Owed::Range(_, range) = &reply {
                        ok &= range.last <= durable;
                    }
                    let reply = match reply {
                        Owed::Range(reply, range) if ok => {
                            drop(reply.send(Ok(range)));
                            continue;
                        }
                        Owed::Epoch(reply) if ok => {
                            drop(reply.send(Ok(())));
                            continue;
                        }
                        reply => reply,
                    };
                    let e = match err.take() {
                        Some(first) => first,
                        None => self.shared.stopped().expect("the log has failed"),
                    };
                    match reply {
                        Owed::Range(reply, _) => drop(reply.send(Err(e))),
                        Owed::Epoch(reply) => drop(reply.send(Err(e))),
                        Owed::Sync(reply) => drop(reply.send(Err(e))),
                    }
                }
            }
        }
    }

    /// Closes the frame being encoded, if it holds records.
    fn finish_frame(&mut self, timestamp_ms: u64) {
        let records = self.encoder.record_count();
        if records == 0 {
            return;
        }
        let first_lsn = Lsn(self.next_lsn.0 - u64::from(records));
        let start = self.out.len();
        self.encoder
            .finish(first_lsn, self.epoch, timestamp_ms, &mut self.out);
        self.frames.push(PendingFrame {
            start,
            first_lsn,
            records: u64::from(records),
        });
    }

    /// Writes the group's frames, rolling segments as needed, syncs under the
    /// policy, and publishes the new LSNs. Returns the durable LSN.
    fn write_group(&mut self, force_sync: bool) -> Result<Lsn> {
        let frames = std::mem::take(&mut self.frames);
        let out = std::mem::take(&mut self.out);
        let result = self.write_frames(&frames, &out, force_sync);
        self.frames = frames;
        self.frames.clear();
        self.out = out;
        self.out.clear();
        result
    }

    fn write_frames(
        &mut self,
        frames: &[PendingFrame],
        out: &[u8],
        force_sync: bool,
    ) -> Result<Lsn> {
        let (segment_bytes_max, policy) = (
            self.shared.options.segment_bytes_max,
            self.shared.sync_policy(),
        );
        let mut chunk_start = 0;
        for frame in frames {
            let mut at = self.offset + (frame.start - chunk_start) as u64;
            if at >= segment_bytes_max && at > SEGMENT_HEADER_LEN as u64 {
                self.write_chunk(&out[chunk_start..frame.start])?;
                self.roll(frame.first_lsn)?;
                chunk_start = frame.start;
                at = self.offset;
            }
            if self
                .indexed_at
                .is_none_or(|last| at - last >= INDEX_INTERVAL_BYTES)
            {
                lock(&self.segment.index).push((frame.first_lsn, at));
                self.indexed_at = Some(at);
            }
        }
        self.write_chunk(&out[chunk_start..])?;
        let last = Lsn(self.next_lsn.0 - 1);
        let sync_now = force_sync || (policy == SyncPolicy::Always && !frames.is_empty());
        if sync_now {
            self.sync_file()?;
        }
        let counters = &self.shared.counters;
        counters
            .frames
            .fetch_add(frames.len() as u64, Ordering::Relaxed);
        counters
            .records
            .fetch_add(frames.iter().map(|f| f.records).sum(), Ordering::Relaxed);
        counters
            .bytes
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        self.shared.last_lsn.store(last.0, Ordering::Release);
        self.shared.epoch.store(self.epoch.0, Ordering::Release);
        // Durable means on disk: under `no` too (what replicas are sent,
        // and what a replica acks as flushed), synced by the syncer only
        // when asked (a replica streams, a snapshot, a caller's sync), by
        // a segment's seal, or at close.
        if sync_now || policy == SyncPolicy::Always {
            self.shared.publish_durable(last);
        } else {
            let mut target = lock(&self.shared.sync_target);
            target.written = last;
            // Written under `everysec` as the policy turned to `no`: these
            // are synced too ([`Wal::set_sync_policy`]).
            if self.shared.eager.load(Ordering::Acquire) > 0
                || (policy == SyncPolicy::EverySec && self.shared.sync_policy() == SyncPolicy::No)
            {
                target.soon = true;
                drop(target);
                self.shared.sync_wake.notify_one();
            }
        }
        Ok(*self.shared.durable.borrow())
    }

    fn write_chunk(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.preallocate(self.offset + bytes.len() as u64);
        let file = &self.file;
        self.shared
            .latency
            .timed("wal-write", || file.write_at(bytes, self.offset))
            .map_err(|e| WalError::io("writing", &self.segment.path, e))?;
        self.offset += bytes.len() as u64;
        self.file_len = self.file_len.max(self.offset);
        self.segment.end.store(self.offset, Ordering::Release);
        Ok(())
    }

    /// Before a write that ends at `end`: when it would pass the zero-filled
    /// space, fills [`WalOptions::preallocate_bytes`] more past it (not past
    /// the size that seals the segment), so the write and the sync after
    /// it leave the file's size alone. The zeros are synced with the write.
    fn preallocate(&mut self, end: u64) {
        let options = &self.shared.options;
        if options.preallocate_bytes == 0 || !self.preallocating || end <= self.file_len {
            return;
        }
        let to = (end + options.preallocate_bytes).min(options.segment_bytes_max);
        if to <= end {
            // The write passes the size that seals the segment: it is the last.
            return;
        }
        let from = self.file_len.max(self.offset);
        let len = (to - from) as usize;
        if self.zeros.len() < len {
            self.zeros.resize(len, 0);
        }
        match self.file.write_at(&self.zeros[..len], from) {
            Ok(()) => self.file_len = to,
            Err(e) => {
                // Only a speed-up: the frames are written all the same (a
                // full disk fails them if they do not fit). Not tried again
                // in this segment; part of the zeros may be there.
                tracing::warn!(
                    segment = %self.segment.path.display(),
                    error = %e,
                    "could not zero-fill WAL space ahead; writing without"
                );
                self.preallocating = false;
                self.file_len = self.file.size().unwrap_or(self.offset);
            }
        }
    }

    /// Cuts the zero-filled space off the active segment, durably.
    fn cut_zeros(&mut self) -> std::io::Result<()> {
        if self.file_len > self.offset {
            self.file.truncate(self.offset)?;
            self.file.sync_data()?;
            self.file_len = self.offset;
        }
        Ok(())
    }

    fn sync_file(&mut self) -> Result<()> {
        let file = &self.file;
        self.shared
            .latency
            .timed("wal-fsync", || file.sync_data())
            .map_err(|e| WalError::io("syncing", &self.segment.path, e))?;
        self.shared.counters.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Cuts the log after `lsn` (a frame boundary): later segments are
    /// deleted, the segment holding `lsn + 1` is truncated where that frame
    /// begins, and the next append gets `lsn + 1`. Returns the new last LSN.
    fn truncate_after(&mut self, lsn: Lsn) -> Result<Lsn> {
        let last = Lsn(self.next_lsn.0 - 1);
        if lsn >= last {
            return Ok(last);
        }
        self.sync_file()?;
        let shared = self.shared.clone();
        let cut = lsn.next();
        let segment = shared.segment_for(cut)?;
        let file = shared
            .storage
            .open(&segment.path, true)
            .map_err(|e| WalError::io("opening", &segment.path, e))?;
        let data = crate::storage::read_all(file.as_ref())
            .map_err(|e| WalError::io("reading", &segment.path, e))?;
        let mut offset = segment.seek_hint(cut) as usize;
        let mut epoch = None;
        while offset < data.len() {
            let header = match format::decode_frame(&data[offset..], shared.options.limits) {
                Decoded::Frame(frame) => frame.header,
                _ => break,
            };
            if header.first_lsn >= cut {
                break;
            }
            if header.last_lsn() >= cut {
                return Err(WalError::InvalidFrames {
                    offset: offset as u64,
                    reason: format!(
                        "lsn {lsn} is inside the frame holding lsn {}..={}: not a frame boundary",
                        header.first_lsn,
                        header.last_lsn()
                    ),
                });
            }
            epoch = Some(header.epoch);
            offset += header.frame_len();
        }
        {
            let mut segments = shared.segments.write().unwrap_or_else(|e| e.into_inner());
            while segments
                .last()
                .is_some_and(|s| s.first_lsn > segment.first_lsn)
            {
                let gone = segments.pop().expect("checked");
                shared
                    .storage
                    .remove(&gone.path)
                    .map_err(|e| WalError::io("deleting", &gone.path, e))?;
            }
        }
        file.truncate(offset as u64)
            .map_err(|e| WalError::io("truncating", &segment.path, e))?;
        file.sync_data()
            .map_err(|e| WalError::io("syncing", &segment.path, e))?;
        shared
            .storage
            .sync_dir(&shared.dir)
            .map_err(|e| WalError::io("syncing directory", &shared.dir, e))?;
        segment.end.store(offset as u64, Ordering::Release);
        segment
            .index
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|&(first, at)| first <= lsn && (at as usize) < offset);
        self.file = file.clone();
        self.segment = segment.clone();
        self.offset = offset as u64;
        self.file_len = self.offset;
        self.preallocating = true;
        self.indexed_at = segment.last_indexed();
        self.next_lsn = cut;
        if let Some(epoch) = epoch {
            self.epoch = epoch;
        }
        {
            let mut target = lock(&shared.sync_target);
            target.file = file;
            target.path = segment.path.clone();
            target.written = lsn;
            target.generation += 1;
        }
        shared.last_lsn.store(lsn.0, Ordering::Release);
        shared.epoch.store(self.epoch.0, Ordering::Release);
        shared.durable.send_replace(lsn);
        tracing::warn!(dir = %shared.dir.display(), after = %lsn, "cut the WAL");
        Ok(lsn)
    }

    /// Deletes every segment, oldest first (a crash leaves a suffix of the
    /// old log, or nothing), then starts an empty one at `first`. The list
    /// readers see changes only once the new segment exists.
    fn restart_at(&mut self, first: Lsn, epoch: Epoch) -> Result<()> {
        let shared = self.shared.clone();
        let old: Vec<PathBuf> = shared
            .segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|s| s.path.clone())
            .collect();
        for path in &old {
            shared
                .storage
                .remove(path)
                .map_err(|e| WalError::io("deleting", path, e))?;
        }
        let (file, path) = segment::create_segment(&*shared.storage, &shared.dir, first)?;
        let meta = Arc::new(SegmentMeta::new(
            first,
            path.clone(),
            SEGMENT_HEADER_LEN as u64,
            Vec::new(),
        ));
        *shared.segments.write().unwrap_or_else(|e| e.into_inner()) = vec![meta.clone()];
        shared
            .storage
            .sync_dir(&shared.dir)
            .map_err(|e| WalError::io("syncing directory", &shared.dir, e))?;
        let last = Lsn(first.0 - 1);
        {
            let mut target = lock(&shared.sync_target);
            target.file = file.clone();
            target.path = path;
            target.written = last;
            target.generation += 1;
        }
        self.file = file;
        self.segment = meta;
        self.offset = SEGMENT_HEADER_LEN as u64;
        self.file_len = self.offset;
        self.preallocating = true;
        self.indexed_at = None;
        self.next_lsn = first;
        self.epoch = epoch;
        shared.last_lsn.store(last.0, Ordering::Release);
        shared.epoch.store(epoch.0, Ordering::Release);
        shared.durable.send_replace(last);
        tracing::warn!(dir = %shared.dir.display(), first = %first, "started the WAL again, empty");
        Ok(())
    }

    /// Seals the active segment (synced) and starts a new one at `first_lsn`.
    fn roll(&mut self, first_lsn: Lsn) -> Result<()> {
        self.sync_file()?;
        // Everything before the new segment is durable now, whatever
        // fails next.
        self.shared
            .last_lsn
            .store(first_lsn.0 - 1, Ordering::Release);
        self.shared.publish_durable(Lsn(first_lsn.0 - 1));
        // Sealed before the next segment exists: only the last segment of a
        // log ever holds zero-filled space.
        self.cut_zeros()
            .map_err(|e| WalError::io("truncating", &self.segment.path, e))?;
        let shared = &self.shared;
        let (file, path) = segment::create_segment(&*shared.storage, &shared.dir, first_lsn)?;
        let meta = Arc::new(SegmentMeta::new(
            first_lsn,
            path.clone(),
            SEGMENT_HEADER_LEN as u64,
            Vec::new(),
        ));
        shared
            .segments
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(meta.clone());
        tracing::debug!(segment = %path.display(), "started a WAL segment");
        {
            let mut target = lock(&shared.sync_target);
            target.file = file.clone();
            target.path = path;
            target.written = Lsn(first_lsn.0 - 1);
        }
        self.file = file;
        self.segment = meta;
        self.offset = SEGMENT_HEADER_LEN as u64;
        self.file_len = self.offset;
        self.preallocating = true;
        self.indexed_at = None;
        Ok(())
    }
}

/// Yields to other threads this many times, looking for the next request,
/// before the writer sleeps: appenders answered by the last group commit
/// usually send their next append within a few microseconds, and catching it
/// without a sleep and a wake-up keeps two context switches off every group.
const WRITER_SPIN_YIELDS: u32 = 50;

/// The next request for the writer, or `None` once every handle is gone.
fn next_request(rx: &mut mpsc::Receiver<Request>) -> Option<Request> {
    for _ in 0..WRITER_SPIN_YIELDS {
        match rx.try_recv() {
            Ok(request) => return Some(request),
            Err(mpsc::error::TryRecvError::Empty) => std::thread::yield_now(),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
        }
    }
    rx.blocking_recv()
}

/// The syncer thread: syncs the active segment every interval if something
/// was written since the last sync and not synced by the writer (under
/// [`SyncPolicy::EverySec`], at once while an [`EagerSync`] lives). Under
/// [`SyncPolicy::No`] it syncs only while an [`EagerSync`] lives; under
/// [`SyncPolicy::Always`] the writer syncs and publishes what it writes,
/// and the syncer idles, there for a change of policy.
fn run_syncer(shared: &Shared) {
    let interval = shared.options.sync_interval;
    let mut target = lock(&shared.sync_target);
    loop {
        // `stop` is checked with the lock held before every wait, so the
        // writer's notification cannot be missed.
        if target.stop {
            return;
        }
        if !target.soon {
            target = shared
                .sync_wake
                .wait_timeout(target, interval)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let asked = std::mem::take(&mut target.soon);
        // Under `no`, only when asked (or while an eager sync lives).
        if shared.sync_policy() == SyncPolicy::No
            && !asked
            && shared.eager.load(Ordering::Acquire) == 0
        {
            continue;
        }
        if target.stop {
            return;
        }
        let (file, path, written, generation) = (
            target.file.clone(),
            target.path.clone(),
            target.written,
            target.generation,
        );
        if written <= *shared.durable.borrow() {
            continue;
        }
        drop(target);
        let synced = shared.latency.timed("wal-fsync", || file.sync_data());
        target = lock(&shared.sync_target);
        match synced {
            Ok(()) => {
                shared.counters.syncs.fetch_add(1, Ordering::Relaxed);
                // Published with the target locked, so a cut cannot come
                // between the check and the publication.
                if target.generation == generation {
                    shared.publish_durable(written);
                }
            }
            Err(e) => {
                drop(target);
                shared.fail(&WalError::io("syncing", &path, e));
                return;
            }
        }
    }
}
