//! Snapshots for replicas whose resume point the WAL no longer holds: a
//! RocksDB checkpoint of the engine at a known applied LSN, served file by
//! file in checksummed chunks.
//!
//! One checkpoint is shared by every replica that bootstraps while it is
//! current. It is replaced when the WAL no longer holds its anchor frame
//! (the replica could not continue after it), and deleted once no transfer
//! uses it and it was idle for [`SNAPSHOT_IDLE_KEEP`]. Its files are hard
//! links to the engine's, so it costs disk only as the engine compacts away
//! from it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_engine::Engine;
use ferry_proto::seal::Sealed;
use ferry_proto::v1::snapshot_message::Msg;
use ferry_proto::v1::{SnapshotChunk, SnapshotFile, SnapshotManifest, SnapshotMessage};
use ferry_wal::{Lsn, Wal};
use tokio::sync::{mpsc, watch};

use crate::error::{Result, ShipError};

/// Bytes of file data per chunk.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// A checkpoint no transfer used for this long is deleted.
pub const SNAPSHOT_IDLE_KEEP: Duration = Duration::from_secs(600);
/// Where checkpoints live, in the node's state directory.
pub const SNAPSHOTS_DIR: &str = "snapshots";
/// Fault injection for tests: the chunk with this number (counted from 1
/// over the process's life) is sent with one byte flipped after its crc was
/// computed.
pub const CORRUPT_CHUNK_ENV: &str = "FERRY_FAULT_SNAPSHOT_CORRUPT_CHUNK";

/// A checkpoint being served.
#[derive(Debug)]
pub struct Checkpoint {
    pub manifest: SnapshotManifest,
    dir: PathBuf,
    /// The first LSN of the anchor frame.
    pub anchor_first: Lsn,
    last_used: Mutex<Instant>,
}

impl Drop for Checkpoint {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not delete a snapshot");
        } else {
            tracing::info!(snapshot = %self.manifest.snapshot_id, "deleted a snapshot");
        }
    }
}

impl Checkpoint {
    fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    fn idle(&self) -> Duration {
        self.last_used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }
}

/// The checkpoints of a node.
#[derive(Debug)]
pub struct Snapshots {
    dir: PathBuf,
    current: tokio::sync::Mutex<Option<Arc<Checkpoint>>>,
    next: AtomicU64,
    /// Bytes per second per transfer; 0: no limit.
    rate_limit: u64,
    chunks_sent: AtomicU64,
    corrupt_chunk: Option<u64>,
}

fn io(what: &str, path: &Path, e: impl std::fmt::Display) -> ShipError {
    ShipError::Io(format!("{what} {}: {e}", path.display()))
}

/// crc32 and size of a file.
pub fn file_crc(path: &Path) -> std::io::Result<(u64, u32)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; SNAPSHOT_CHUNK_BYTES];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((bytes, hasher.finalize()));
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
}

impl Snapshots {
    /// Checkpoints in `dir`; what an earlier run left there is deleted.
    ///
    /// # Errors
    ///
    /// [`ShipError::Io`] if the directory cannot be cleared or made.
    pub fn new(dir: PathBuf, rate_limit: u64) -> Result<Snapshots> {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| io("clearing", &dir, e))?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| io("creating", &dir, e))?;
        let corrupt_chunk = std::env::var(CORRUPT_CHUNK_ENV)
            .ok()
            .and_then(|v| v.parse().ok());
        Ok(Snapshots {
            dir,
            current: tokio::sync::Mutex::new(None),
            next: AtomicU64::new(1),
            rate_limit,
            chunks_sent: AtomicU64::new(0),
            corrupt_chunk,
        })
    }

    /// The current checkpoint, or a new one if there is none or the WAL no
    /// longer holds its anchor frame.
    ///
    /// # Errors
    ///
    /// Engine, WAL and file errors.
    pub async fn get(
        &self,
        wal: &Arc<Wal>,
        engine: &Arc<Engine>,
        cluster_id: String,
    ) -> Result<Arc<Checkpoint>> {
        let mut current = self.current.lock().await;
        if let Some(c) = &*current
            && c.anchor_first >= wal.first_lsn()
            && still_holds(wal, c)
        {
            c.touch();
            return Ok(c.clone());
        }
        let started = Instant::now();
        let id = format!(
            "{}-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis()),
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let dir = self.dir.join(&id);
        let (lsn, files) = {
            let (engine, target) = (engine.clone(), dir.clone());
            tokio::task::spawn_blocking(move || -> Result<(Lsn, Vec<SnapshotFile>)> {
                let started = Instant::now();
                let lsn = engine
                    .checkpoint(&target)
                    .map_err(|e| io("writing a checkpoint to", &target, e))?;
                tracing::debug!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "checkpoint written"
                );
                let checked = Instant::now();
                let mut files = Vec::new();
                for entry in std::fs::read_dir(&target).map_err(|e| io("listing", &target, e))? {
                    let entry = entry.map_err(|e| io("listing", &target, e))?;
                    let path = entry.path();
                    let (bytes, crc32) = file_crc(&path).map_err(|e| io("reading", &path, e))?;
                    files.push(SnapshotFile {
                        name: entry.file_name().to_string_lossy().into_owned(),
                        bytes,
                        crc32,
                    });
                }
                files.sort_by(|a, b| a.name.cmp(&b.name));
                tracing::debug!(
                    elapsed_ms = checked.elapsed().as_millis() as u64,
                    "checkpoint files checksummed"
                );
                Ok((lsn, files))
            })
            .await
            .map_err(|e| ShipError::Io(format!("the checkpoint task failed: {e}")))
            .and_then(|r| r)
            .inspect_err(|_| {
                let _ = std::fs::remove_dir_all(&dir);
            })?
        };
        let remove = |e: ShipError| {
            let _ = std::fs::remove_dir_all(&dir);
            e
        };
        if lsn == Lsn::ZERO {
            return Err(remove(ShipError::Io(
                "the engine holds nothing to snapshot".into(),
            )));
        }
        // The frame holding the checkpoint's LSN starts the replica's log,
        // and a replica holds nothing the primary could still lose: wait
        // for it to be durable, synced now rather than at the next second.
        let synced = Instant::now();
        {
            let _eager = wal.eager_sync();
            wal.wait_durable(lsn).await.map_err(|e| remove(e.into()))?;
        }
        tracing::debug!(
            elapsed_ms = synced.elapsed().as_millis() as u64,
            "the snapshot's records are durable"
        );
        let frame = wal
            .frames(lsn)
            .and_then(|mut r| r.next_frame())
            .map_err(|e| remove(e.into()))?
            .ok_or_else(|| remove(ShipError::Io(format!("no durable frame holds lsn {lsn}"))))?;
        let total_bytes = files.iter().map(|f| f.bytes).sum();
        let checkpoint = Arc::new(Checkpoint {
            manifest: SnapshotManifest {
                snapshot_id: id.clone(),
                cluster_id,
                lsn: lsn.0,
                anchor_frame: frame.bytes.clone(),
                files,
                total_bytes,
                epoch: frame.header.epoch.0,
            },
            dir,
            anchor_first: frame.header.first_lsn,
            last_used: Mutex::new(Instant::now()),
        });
        tracing::info!(snapshot = %id, %lsn, total_bytes, files = checkpoint.manifest.files.len(),
            elapsed_ms = started.elapsed().as_millis() as u64, "took a snapshot");
        *current = Some(checkpoint.clone());
        Ok(checkpoint)
    }

    /// Deletes the current checkpoint if no transfer holds it and it was
    /// idle long enough.
    pub fn expire_idle(&self) {
        let Ok(mut current) = self.current.try_lock() else {
            return;
        };
        if current
            .as_ref()
            .is_some_and(|c| Arc::strong_count(c) == 1 && c.idle() > SNAPSHOT_IDLE_KEEP)
        {
            *current = None;
        }
    }

    /// Sends the manifest, then the chunks of every file except the ones
    /// the replica has whole, and of the file it has a part of only the rest
    /// (when it asked about this same checkpoint). Returns the file bytes
    /// sent.
    pub(crate) async fn send(
        &self,
        checkpoint: Arc<Checkpoint>,
        have: &[String],
        resume: Option<(&str, u64)>,
        tx: &mpsc::Sender<std::result::Result<SnapshotMessage, tonic::Status>>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<u64> {
        let gone = || ShipError::StreamEnded("the replica went away".into());
        let manifest = SnapshotMessage {
            msg: Some(Msg::Manifest(checkpoint.manifest.clone())),
            crc32: 0,
        }
        .sealed();
        tx.send(Ok(manifest)).await.map_err(|_| gone())?;
        let started = Instant::now();
        let mut sent = 0u64;
        for (index, file) in checkpoint.manifest.files.iter().enumerate() {
            if have.contains(&file.name) {
                continue;
            }
            let path = checkpoint.dir.join(&file.name);
            let mut offset = match resume {
                Some((name, at)) if name == file.name && at < file.bytes => at,
                _ => 0,
            };
            let empty = file.bytes == 0;
            while offset < file.bytes || empty {
                let len = (file.bytes - offset).min(SNAPSHOT_CHUNK_BYTES as u64) as usize;
                let data = {
                    let path = path.clone();
                    tokio::task::spawn_blocking(move || read_at(&path, offset, len))
                        .await
                        .map_err(|e| ShipError::Io(format!("the read task failed: {e}")))?
                        .map_err(|e| io("reading", &checkpoint.dir.join(&file.name), e))?
                };
                let crc32 = crc32fast::hash(&data);
                let data = self.maybe_corrupt(data);
                let chunk = SnapshotMessage {
                    msg: Some(Msg::Chunk(SnapshotChunk {
                        file: index as u32,
                        offset,
                        data,
                        crc32,
                    })),
                    crc32: 0,
                }
                .sealed();
                tokio::select! {
                    r = tx.send(Ok(chunk)) => r.map_err(|_| gone())?,
                    _ = stop.wait_for(|&s| s) => return Err(ShipError::ShuttingDown),
                }
                offset += len as u64;
                sent += len as u64;
                checkpoint.touch();
                if self.rate_limit > 0 {
                    let due =
                        started + Duration::from_secs_f64(sent as f64 / self.rate_limit as f64);
                    tokio::select! {
                        () = tokio::time::sleep_until(due.into()) => {}
                        _ = stop.wait_for(|&s| s) => return Err(ShipError::ShuttingDown),
                    }
                }
                if empty {
                    break;
                }
            }
        }
        Ok(sent)
    }

    fn maybe_corrupt(&self, data: Bytes) -> Bytes {
        let n = self.chunks_sent.fetch_add(1, Ordering::Relaxed) + 1;
        if self.corrupt_chunk != Some(n) || data.is_empty() {
            return data;
        }
        tracing::warn!(
            chunk = n,
            "fault injection: sending a snapshot chunk with a flipped byte"
        );
        let mut bad = data.to_vec();
        bad[data.len() / 2] ^= 0x5a;
        Bytes::from(bad)
    }
}

/// Whether the WAL still holds the checkpoint's anchor frame as it was (a
/// log started again, as after a rejoin, holds other frames).
fn still_holds(wal: &Wal, checkpoint: &Checkpoint) -> bool {
    wal.frames(checkpoint.anchor_first)
        .and_then(|mut r| r.next_frame())
        .ok()
        .flatten()
        .is_some_and(|f| f.bytes == checkpoint.manifest.anchor_frame)
}

fn read_at(path: &Path, offset: u64, len: usize) -> std::io::Result<Bytes> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; len];
    file.read_exact(&mut buf)?;
    Ok(Bytes::from(buf))
}
