//! Bootstrap from a snapshot: for a replica whose resume point its primary
//! no longer holds (or a new one, when the primary's log does not reach
//! back to LSN 1).
//!
//! ```text
//! SnapshotRequest(have: files staged whole) -> manifest, chunks
//!   staging/manifest      the manifest (a new snapshot id wipes staging)
//!   staging/checkpoint/   the files, each chunk crc-checked before it is
//!                         written, each file crc-checked and synced whole
//!   staging/whole         names of the files that arrived whole: a broken
//!                         transfer resumes without them
//!   staging/ready         every file whole and RocksDB reads the LSN the
//!                         manifest names: from here on the install rolls
//!                         forward, even after a crash
//! install: the staged checkpoint becomes the engine's directory (the old
//!          one is closed, moved aside and deleted; readers see the old
//!          data until then and wait for the swap)
//!          the WAL starts again with the anchor frame, synced
//!          staging is deleted
//! ```
//!
//! Disk: while a snapshot arrives the replica holds its old data and the
//! staged checkpoint: the snapshot's size beside the old data.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_engine::Engine;
use ferry_proto::v1::SnapshotManifest;
use ferry_wal::{FrameLimits, Lsn, Wal};
use prost::Message;

use crate::error::{ReceiveError, Result};

/// The staging directory's name in a node's data directory.
pub const BOOTSTRAP_DIR: &str = "bootstrap";
const MANIFEST: &str = "manifest";
const WHOLE: &str = "whole";
const CHECKPOINT: &str = "checkpoint";
const READY: &str = "ready";

fn io(what: &str, path: &Path, e: impl std::fmt::Display) -> ReceiveError {
    ReceiveError::Io(format!("{what} {}: {e}", path.display()))
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("syncing", dir, e))
}

/// Progress of a bootstrap, as status reports show it.
#[derive(Debug, Clone)]
pub struct SyncProgress {
    pub snapshot_id: String,
    pub lsn: Lsn,
    pub total_bytes: u64,
    /// Bytes staged, whole files and parts.
    pub done_bytes: u64,
    pub started: Instant,
    /// Bytes received since `started`.
    pub received_bytes: u64,
}

impl SyncProgress {
    /// Bytes per second received so far.
    pub fn rate(&self) -> u64 {
        let secs = self.started.elapsed().as_secs_f64();
        if secs <= 0.0 {
            return 0;
        }
        (self.received_bytes as f64 / secs) as u64
    }

    /// Time to go at the rate so far, if there is one.
    pub fn eta(&self) -> Option<Duration> {
        let rate = self.rate();
        (rate > 0).then(|| {
            Duration::from_secs_f64(
                self.total_bytes.saturating_sub(self.done_bytes) as f64 / rate as f64,
            )
        })
    }
}

/// The staging directory of a bootstrap.
#[derive(Debug, Clone)]
pub struct Staging {
    dir: PathBuf,
}

impl Staging {
    pub fn new(dir: PathBuf) -> Staging {
        Staging { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn has(&self, name: &str) -> bool {
        self.path(name).exists()
    }

    /// The manifest of the snapshot staged (in part), if any.
    pub fn manifest(&self) -> Result<Option<SnapshotManifest>> {
        let path = self.path(MANIFEST);
        match std::fs::read(&path) {
            Ok(bytes) => SnapshotManifest::decode(bytes.as_slice())
                .map(Some)
                .map_err(|e| io("decoding", &path, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("reading", &path, e)),
        }
    }

    /// The files staged whole.
    pub fn whole(&self) -> Result<Vec<String>> {
        let path = self.path(WHOLE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(text.lines().map(str::to_string).collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io("reading", &path, e)),
        }
    }

    /// The file staged in part, if any: the first one not whole whose
    /// staged bytes fall short of its size, and how many it has. The
    /// transfer resumes there.
    pub fn resume_point(&self) -> Result<Option<(String, u64)>> {
        let Some(manifest) = self.manifest()? else {
            return Ok(None);
        };
        let whole = self.whole()?;
        for file in manifest.files.iter().filter(|f| !whole.contains(&f.name)) {
            let path = self.path(CHECKPOINT).join(&file.name);
            if let Ok(meta) = std::fs::metadata(&path)
                && meta.len() > 0
                && meta.len() < file.bytes
            {
                return Ok(Some((file.name.clone(), meta.len())));
            }
        }
        Ok(None)
    }

    /// Starts staging `manifest`'s snapshot, throwing away anything staged.
    fn begin(&self, manifest: &SnapshotManifest) -> Result<()> {
        self.clear()?;
        let checkpoint = self.path(CHECKPOINT);
        std::fs::create_dir_all(&checkpoint).map_err(|e| io("creating", &checkpoint, e))?;
        self.write_synced(MANIFEST, &manifest.encode_to_vec())?;
        sync_dir(&self.dir)
    }

    fn write_synced(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.path(name);
        let mut file = std::fs::File::create(&path).map_err(|e| io("creating", &path, e))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| io("writing", &path, e))
    }

    fn set(&self, marker: &str) -> Result<()> {
        self.write_synced(marker, b"")?;
        sync_dir(&self.dir)
    }

    /// Records that a file arrived whole.
    fn mark_whole(&self, name: &str) -> Result<()> {
        let path = self.path(WHOLE);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io("opening", &path, e))?;
        file.write_all(format!("{name}\n").as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| io("writing", &path, e))
    }

    /// Deletes everything staged: the ready marker first, synced, so a
    /// crash midway never leaves one without the files it stands for.
    pub fn clear(&self) -> Result<()> {
        if self.dir.exists() {
            let ready = self.path(READY);
            if ready.exists() {
                std::fs::remove_file(&ready).map_err(|e| io("deleting", &ready, e))?;
                std::fs::File::open(&self.dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| io("syncing", &self.dir, e))?;
                ferry_wal::testing::crash_point("bootstrap::clearing");
            }
            std::fs::remove_dir_all(&self.dir).map_err(|e| io("deleting", &self.dir, e))?;
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| io("creating", &self.dir, e))
    }
}

/// Receives the chunks of one transfer into staging.
pub(crate) struct Download {
    staging: Staging,
    pub manifest: SnapshotManifest,
    whole: Vec<bool>,
    /// The file being written: its index, handle, bytes so far, running crc.
    open: Option<(usize, std::fs::File, u64, crc32fast::Hasher)>,
    pub progress: SyncProgress,
}

impl Download {
    /// Checks `manifest` and prepares staging for it, keeping the files
    /// staged whole if it is the snapshot staged before.
    pub(crate) fn begin(staging: Staging, manifest: SnapshotManifest) -> Result<Download> {
        for file in &manifest.files {
            let plain = !file.name.is_empty()
                && !file.name.contains(['/', '\\'])
                && file.name != "."
                && file.name != "..";
            if !plain {
                return Err(ReceiveError::BadSnapshot(format!(
                    "the manifest names a file {:?}",
                    file.name
                )));
            }
        }
        if manifest.files.iter().map(|f| f.bytes).sum::<u64>() != manifest.total_bytes {
            return Err(ReceiveError::BadSnapshot(
                "the manifest's total does not add up".into(),
            ));
        }
        // The same snapshot only if everything about it is the same (ids
        // alone could repeat across the primary's restarts).
        let same = staging.manifest()?.is_some_and(|m| m == manifest);
        let staged = if same { staging.whole()? } else { Vec::new() };
        if !same {
            staging.begin(&manifest)?;
        }
        let whole: Vec<bool> = manifest
            .files
            .iter()
            .map(|f| staged.contains(&f.name))
            .collect();
        let mut done_bytes = manifest
            .files
            .iter()
            .zip(&whole)
            .filter(|(_, w)| **w)
            .map(|(f, _)| f.bytes)
            .sum();
        // The part of a file staged before goes on where it stopped; its
        // crc runs over what is there (a torn write fails the file's crc at
        // the end, and the file is fetched again).
        let mut open = None;
        if same
            && let Some((name, len)) = staging.resume_point()?
            && let Some(index) = manifest.files.iter().position(|f| f.name == name)
        {
            let path = staging.path(CHECKPOINT).join(&name);
            let mut handle = std::fs::OpenOptions::new()
                .read(true)
                .append(true)
                .open(&path)
                .map_err(|e| io("opening", &path, e))?;
            let mut hasher = crc32fast::Hasher::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut read = 0u64;
            while read < len {
                use std::io::Read;
                let n = handle.read(&mut buf).map_err(|e| io("reading", &path, e))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                read += n as u64;
            }
            done_bytes += read;
            open = Some((index, handle, read, hasher));
        }
        let progress = SyncProgress {
            snapshot_id: manifest.snapshot_id.clone(),
            lsn: Lsn(manifest.lsn),
            total_bytes: manifest.total_bytes,
            done_bytes,
            started: Instant::now(),
            received_bytes: 0,
        };
        Ok(Download {
            staging,
            manifest,
            whole,
            open,
            progress,
        })
    }

    /// Checks and writes one chunk.
    pub(crate) fn chunk(&mut self, chunk: ferry_proto::v1::SnapshotChunk) -> Result<()> {
        let index = chunk.file as usize;
        let Some(file) = self.manifest.files.get(index) else {
            return Err(ReceiveError::Protocol(format!(
                "a chunk of file {index}, the manifest has {}",
                self.manifest.files.len()
            )));
        };
        if self.whole[index] {
            return Err(ReceiveError::Protocol(format!(
                "a chunk of {}, which arrived whole already",
                file.name
            )));
        }
        if crc32fast::hash(&chunk.data) != chunk.crc32 {
            return Err(ReceiveError::BadSnapshot(format!(
                "the chunk of {} at offset {} fails its crc",
                file.name, chunk.offset
            )));
        }
        let path = self.staging.path(CHECKPOINT).join(&file.name);
        if chunk.offset == 0 {
            let handle = std::fs::File::create(&path).map_err(|e| io("creating", &path, e))?;
            self.open = Some((index, handle, 0, crc32fast::Hasher::new()));
        }
        let Some((at, handle, written, hasher)) = self.open.as_mut() else {
            return Err(ReceiveError::Protocol(format!(
                "the first chunk of {} starts at offset {}",
                file.name, chunk.offset
            )));
        };
        if *at != index || *written != chunk.offset {
            return Err(ReceiveError::Protocol(format!(
                "a chunk of {} at offset {}, expected offset {written} of file {at}",
                file.name, chunk.offset
            )));
        }
        if *written + chunk.data.len() as u64 > file.bytes {
            return Err(ReceiveError::BadSnapshot(format!(
                "{} grows past its {} bytes",
                file.name, file.bytes
            )));
        }
        handle
            .write_all(&chunk.data)
            .map_err(|e| io("writing", &path, e))?;
        hasher.update(&chunk.data);
        *written += chunk.data.len() as u64;
        self.progress.done_bytes += chunk.data.len() as u64;
        self.progress.received_bytes += chunk.data.len() as u64;
        if *written == file.bytes {
            let (_, handle, _, hasher) = self.open.take().expect("open");
            handle.sync_all().map_err(|e| io("syncing", &path, e))?;
            let crc = hasher.finalize();
            if crc != file.crc32 {
                let _ = std::fs::remove_file(&path);
                self.progress.done_bytes -= file.bytes;
                return Err(ReceiveError::BadSnapshot(format!(
                    "{} fails its crc (got {crc:08x}, the manifest says {:08x})",
                    file.name, file.crc32
                )));
            }
            self.staging.mark_whole(&file.name)?;
            self.whole[index] = true;
        }
        Ok(())
    }

    /// After the last chunk: every file must be whole, and RocksDB must read
    /// the LSN the manifest names. Then the install may roll forward.
    pub(crate) async fn finish(self) -> Result<Staging> {
        if let Some(missing) = self
            .manifest
            .files
            .iter()
            .zip(&self.whole)
            .find(|(_, w)| !**w)
        {
            return Err(ReceiveError::Link(format!(
                "the snapshot ended before {} arrived",
                missing.0.name
            )));
        }
        let checkpoint = self.staging.path(CHECKPOINT);
        sync_dir(&checkpoint)?;
        let dir = checkpoint.clone();
        let meta = tokio::task::spawn_blocking(move || ferry_engine::checkpoint_meta(&dir))
            .await
            .map_err(|e| ReceiveError::Io(format!("the check task failed: {e}")))?;
        match meta {
            Ok((lsn, _)) if lsn.0 == self.manifest.lsn => {}
            other => {
                // Never installed, and not resumed either: fetched anew.
                let _ = self.staging.clear();
                return Err(ReceiveError::BadSnapshot(format!(
                    "the staged checkpoint does not read as lsn {}: {other:?}",
                    self.manifest.lsn
                )));
            }
        }
        self.staging.set(READY)?;
        Ok(self.staging)
    }
}

/// Before the engine in `engine_dir` is opened: completes a swap of the
/// engine's directory for a ready snapshot that a crash interrupted (see
/// [`ferry_engine::complete_checkpoint_swap`]).
///
/// # Errors
///
/// File errors.
pub fn finish_engine_swap(staging: &Staging, engine_dir: &Path) -> Result<()> {
    if staging.has(READY) {
        ferry_engine::complete_checkpoint_swap(engine_dir, &staging.path(CHECKPOINT))?;
    }
    Ok(())
}

/// Completes a staged install, if one is ready: the engine takes the
/// checkpoint as its directory (if it has not yet), the WAL starts again with
/// the anchor frame, staging is deleted. Safe to repeat after a crash at any
/// step. Returns the last LSN of the log afterwards, or `None` if no install
/// was ready.
///
/// # Errors
///
/// Engine, WAL and file errors; a bad anchor frame.
pub async fn finish_install(
    staging: &Staging,
    wal: &Arc<Wal>,
    engine: &Arc<Engine>,
) -> Result<Option<Lsn>> {
    if !staging.has(READY) {
        // What a crash left while clearing an install that was done (its
        // snapshot is in the engine already) goes; a transfer under way,
        // of a snapshot ahead of the engine, stays to be resumed.
        if let Ok(Some(manifest)) = staging.manifest()
            && manifest.lsn <= engine.applied_lsn().0
        {
            staging.clear()?;
        }
        return Ok(None);
    }
    let manifest = staging
        .manifest()?
        .ok_or_else(|| ReceiveError::BadSnapshot("a ready snapshot has no manifest".into()))?;
    let anchor = ferry_wal::check_frames(manifest.anchor_frame.clone(), FrameLimits::default())
        .map_err(|e| ReceiveError::BadSnapshot(format!("the anchor frame: {e}")))?;
    let (first, last) = (anchor.first_lsn(), anchor.last_lsn());
    if !(first.0..=last.0).contains(&manifest.lsn) {
        return Err(ReceiveError::BadSnapshot(format!(
            "the anchor frame holds lsn {first}..={last}, not the snapshot's lsn {}",
            manifest.lsn
        )));
    }
    ferry_wal::testing::crash_point("bootstrap::ready");
    let checkpoint = staging.path(CHECKPOINT);
    if checkpoint.exists() {
        let started = Instant::now();
        let engine = engine.clone();
        let lsn = tokio::task::spawn_blocking(move || engine.replace_with_checkpoint(&checkpoint))
            .await
            .map_err(|e| ReceiveError::Io(format!("the install task failed: {e}")))??;
        if lsn.0 != manifest.lsn {
            return Err(ReceiveError::BadSnapshot(format!(
                "the installed checkpoint holds lsn {lsn}, its manifest says {}",
                manifest.lsn
            )));
        }
        tracing::info!(%lsn, elapsed_ms = started.elapsed().as_millis() as u64,
            "the engine holds the snapshot's state");
        ferry_wal::testing::crash_point("bootstrap::installed");
    }
    let header = anchor.headers()[0];
    let in_place = wal.first_lsn() == first
        && wal
            .frames(first)
            .and_then(|mut r| r.next_frame())
            .ok()
            .flatten()
            .is_some_and(|f| f.header.crc == header.crc && f.header.last_lsn() == last);
    if !in_place {
        wal.restart_at(first, header.epoch).await?;
        ferry_wal::testing::crash_point("bootstrap::wal_restarted");
        wal.append_checked(anchor).await?;
    }
    wal.sync().await?;
    ferry_wal::testing::crash_point("bootstrap::anchored");
    staging.clear()?;
    Ok(Some(wal.last_lsn()))
}
