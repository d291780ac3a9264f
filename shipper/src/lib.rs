//! ferry-shipper: the sending side of replication — the gRPC `Replication`
//! service that streams durable WAL frames to each replica from the LSN it
//! asks for, and tracks what each replica acknowledged.
//!
//! A primary runs it, and so does a replica serving its own (cascaded)
//! replicas: it only reads the node's WAL, so both send the same bytes and
//! LSNs.
//!
//! # Layout
//! - [`Shipper`]: the registry of connected replicas and the hello check.
//! - [`ShipperService`]: the tonic service, one session per stream, and
//!   snapshots for replicas the WAL no longer reaches back to.
//! - [`retention`]: the slot kept per replica, and which segments may go.
//! - [`snapshot`]: shared checkpoints, served in checksummed chunks.
//! - `error`: [`ShipError`] and its one mapping to a gRPC status.
//!
//! # A session
//! ```text
//! hello -> check (cluster, history at the replica's flushed LSN, retention)
//!       -> Refusal, end           (the replica backs off and retries)
//!       -> Accept(from) -> loop: durable frames from `from`, batched -> Frames
//!                                idle: Heartbeat every interval
//!          acks (another task) -> written / flushed / applied, last ack time
//!          no ack for `replica_timeout`, or the stream fails -> end
//! ```
//! The session reads the WAL on its own, through bounded queues: a slow or
//! stuck replica never slows the primary's clients.

pub mod error;
pub mod retention;
pub mod snapshot;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ferry_engine::Engine;
use ferry_proto::seal::{Sealed, checked};
use ferry_proto::v1::primary_message::Msg as Out;
use ferry_proto::v1::refusal::Reason;
use ferry_proto::v1::replica_message::Msg as In;
use ferry_proto::v1::replication_server::{Replication, ReplicationServer};
use ferry_proto::v1::{
    Accept, Frames, Heartbeat, Hello, PrimaryMessage, Refusal, ReplicaMessage, SnapshotMessage,
    SnapshotRequest,
};
use ferry_wal::{Lsn, Wal};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

pub use crate::error::{Result, ShipError};
pub use crate::retention::{Retention, SlotInfo, WAL_RETENTION_MAX_BYTES_DEFAULT, WalStatus};
use crate::snapshot::Snapshots;

/// How often an idle stream carries a heartbeat.
pub const HEARTBEAT_INTERVAL_DEFAULT: Duration = Duration::from_millis(250);
/// A replica that acks nothing for this long is dropped (it may reconnect),
/// as Redis's `repl-timeout`.
pub const REPLICA_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);
/// How long a new stream may take to send its hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames are batched into messages of about this many bytes (a larger
/// frame travels alone).
pub const FRAMES_MESSAGE_BYTES_MAX_DEFAULT: usize = 1 << 20;
/// Messages queued for one replica's stream before the session waits.
pub const SEND_QUEUE_MESSAGES_MAX: usize = 8;
/// The largest replication message either end accepts: one WAL frame of the
/// largest body, its header and the message's own fields.
pub const REPLICATION_MESSAGE_BYTES_MAX: usize = ferry_wal::format::BODY_BYTES_MAX_DEFAULT as usize
    + ferry_wal::format::FRAME_HEADER_LEN
    + (64 << 10);
/// Frames remembered per replica for lag reports (the oldest are forgotten
/// first; lag then reads low until acks catch up).
pub const INFLIGHT_FRAMES_MAX: usize = 1 << 16;

/// What the shipper needs to know of its node.
pub trait Membership: Send + Sync + 'static {
    /// The node's cluster id; empty while a new replica has not synced yet.
    fn cluster_id(&self) -> String;
    /// The node's stable id.
    fn node_id(&self) -> String;
    /// A replica showed a newer epoch than this node's: this node is a stale
    /// primary and must stop taking writes.
    fn saw_newer_epoch(&self, epoch: u64);
    /// The terms of this node's log, begun by it or by the primaries it
    /// followed: (epoch, first LSN).
    fn epoch_history(&self) -> Vec<(u64, u64)>;
    /// Where this node's own clients connect (host:port of its RESP
    /// server), told to its replicas; empty if unknown.
    fn resp_addr(&self) -> String {
        String::new()
    }
}

/// Tunables of a [`Shipper`].
#[derive(Debug, Clone)]
pub struct ShipperConfig {
    pub heartbeat_interval: Duration,
    pub replica_timeout: Duration,
    pub frames_message_bytes_max: usize,
    /// The most WAL bytes a replica's slot may hold back (0: no cap).
    pub wal_retention_max_bytes: u64,
    /// Bytes per second each snapshot transfer may send (0: no limit).
    pub snapshot_rate_limit: u64,
}

impl Default for ShipperConfig {
    fn default() -> Self {
        ShipperConfig {
            heartbeat_interval: HEARTBEAT_INTERVAL_DEFAULT,
            replica_timeout: REPLICA_TIMEOUT_DEFAULT,
            frames_message_bytes_max: FRAMES_MESSAGE_BYTES_MAX_DEFAULT,
            wal_retention_max_bytes: WAL_RETENTION_MAX_BYTES_DEFAULT,
            snapshot_rate_limit: 0,
        }
    }
}

/// Where a replica's stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaState {
    /// Hello received, not yet accepted.
    Connecting,
    /// Sending frames that were durable before the replica connected.
    Catchup,
    /// Caught up once: sending frames as they become durable.
    Streaming,
}

impl ReplicaState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaState::Connecting => "connecting",
            ReplicaState::Catchup => "catchup",
            ReplicaState::Streaming => "streaming",
        }
    }
}

/// One connected replica, as status reports show it.
#[derive(Debug, Clone)]
pub struct ReplicaInfo {
    pub stream_id: u64,
    pub node_id: String,
    /// The peer address of the stream.
    pub addr: String,
    /// Where the replica's clients connect, as it said in its hello.
    pub resp_addr: String,
    /// Where its gRPC services listen, as it said in its hello.
    pub grpc_addr: String,
    pub state: ReplicaState,
    pub sent_lsn: Lsn,
    pub written_lsn: Lsn,
    pub flushed_lsn: Lsn,
    pub applied_lsn: Lsn,
    pub lag: Lag,
    pub last_ack_age: Duration,
    pub frames_sent: u64,
    pub bytes_sent: u64,
}

/// How far a replica is behind the sender's durable LSN.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lag {
    pub records: u64,
    /// Stored bytes of the frames it has not applied.
    pub bytes: u64,
    /// Age of the oldest record it has not applied, on the sender's clock.
    pub ms: u64,
}

/// Counters since start, named as Redis's INFO stats.
#[derive(Debug, Default)]
pub struct ShipperCounters {
    /// Hellos accepted (a resume from the replica's own LSN).
    pub sync_partial_ok: AtomicU64,
    /// Hellos refused.
    pub sync_partial_err: AtomicU64,
    /// Snapshot transfers begun (bootstraps served).
    pub sync_full: AtomicU64,
}

/// A frame sent and perhaps not yet applied by the replica.
#[derive(Debug, Clone, Copy)]
struct Sent {
    last_lsn: Lsn,
    bytes: u64,
    timestamp_ms: u64,
}

struct Tracked {
    node_id: String,
    addr: String,
    resp_addr: String,
    grpc_addr: String,
    state: ReplicaState,
    sent_lsn: Lsn,
    written_lsn: Lsn,
    flushed_lsn: Lsn,
    applied_lsn: Lsn,
    last_ack: Instant,
    frames_sent: u64,
    bytes_sent: u64,
    inflight: VecDeque<Sent>,
    disconnect: watch::Sender<bool>,
}

/// The replicas of one node and the WAL it ships.
pub struct Shipper {
    wal: Arc<Wal>,
    engine: Arc<Engine>,
    pub retention: Retention,
    snapshots: Snapshots,
    membership: Arc<dyn Membership>,
    config: ShipperConfig,
    replicas: Mutex<HashMap<u64, Tracked>>,
    next_stream_id: AtomicU64,
    stop: watch::Receiver<bool>,
    /// Bumped on every ack, for waiters such as WAIT.
    acks: watch::Sender<u64>,
    /// Every replica accepted since start, by node id: where its gRPC
    /// services listen (as it said) and the address its stream came from.
    /// Kept after it disconnects.
    known: Mutex<HashMap<String, (String, String)>>,
    pub counters: ShipperCounters,
}

impl std::fmt::Debug for Shipper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shipper")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The longest node id a replica may give.
pub const NODE_ID_BYTES_MAX: usize = 128;

/// Node ids name retention slots on disk: printable ASCII, no spaces.
fn valid_node_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= NODE_ID_BYTES_MAX && id.bytes().all(|b| b.is_ascii_graphic())
}

fn refused(reason: Reason, message: String) -> ShipError {
    ShipError::Refused { reason, message }
}

/// A replica naming a cluster (`theirs`, empty for none yet) other than
/// this node's is refused.
fn same_cluster(theirs: &str, ours: &str) -> Result<()> {
    if !theirs.is_empty() && theirs != ours {
        return Err(refused(
            Reason::OtherCluster,
            format!(
                "the replica's data belongs to cluster {theirs}, this node's to cluster {ours}"
            ),
        ));
    }
    Ok(())
}

impl Shipper {
    /// A shipper of `wal`, serving snapshots of `engine`, keeping its slots
    /// and checkpoints in `state_dir`. Sessions end when `stop` turns true.
    ///
    /// # Errors
    ///
    /// [`ShipError::Io`] if the slots cannot be read or the snapshot
    /// directory prepared.
    pub fn new(
        wal: Arc<Wal>,
        engine: Arc<Engine>,
        membership: Arc<dyn Membership>,
        config: ShipperConfig,
        state_dir: &std::path::Path,
        stop: watch::Receiver<bool>,
    ) -> Result<Shipper> {
        Ok(Shipper {
            retention: Retention::load(state_dir, config.wal_retention_max_bytes)?,
            snapshots: Snapshots::new(
                state_dir.join(snapshot::SNAPSHOTS_DIR),
                config.snapshot_rate_limit,
            )?,
            wal,
            engine,
            membership,
            config,
            replicas: Mutex::new(HashMap::new()),
            next_stream_id: AtomicU64::new(1),
            stop,
            acks: watch::channel(0).0,
            known: Mutex::new(HashMap::new()),
            counters: ShipperCounters::default(),
        })
    }

    /// The node's epoch history, as the protocol carries it.
    fn epoch_history(&self) -> Vec<ferry_proto::v1::EpochBegin> {
        self.membership
            .epoch_history()
            .into_iter()
            .map(|(epoch, first_lsn)| ferry_proto::v1::EpochBegin { epoch, first_lsn })
            .collect()
    }

    /// The retention slots, with the bytes each holds back.
    pub fn slots(&self) -> Vec<SlotInfo> {
        self.retention.list(&self.wal, &self.engine)
    }

    /// One retention round (see [`Retention::enforce`]) and the expiry of
    /// an idle snapshot. Blocking: run it off the async threads.
    ///
    /// # Errors
    ///
    /// As [`Retention::enforce`].
    pub fn enforce_retention(&self) -> Result<usize> {
        self.snapshots.expire_idle();
        self.retention.enforce(&self.wal, &self.engine)
    }

    /// Every replica accepted since start and not connected now: (node id,
    /// gRPC listen address, stream peer address).
    pub fn departed(&self) -> Vec<(String, String, String)> {
        let connected: Vec<String> = self
            .replicas()
            .values()
            .map(|t| t.node_id.clone())
            .collect();
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(id, _)| !connected.contains(id))
            .map(|(id, (grpc, addr))| (id.clone(), grpc.clone(), addr.clone()))
            .collect()
    }

    /// A watch that changes on every ack from any replica.
    pub fn subscribe_acks(&self) -> watch::Receiver<u64> {
        self.acks.subscribe()
    }

    /// Whether the node has replicas: one connected, or one with a
    /// retention slot (it will come back for the log).
    pub fn has_replicas(&self) -> bool {
        !self.replicas().is_empty() || !self.retention.is_empty()
    }

    /// How many connected replicas acked within `max_lag` (monotonic clock).
    pub fn acked_within(&self, max_lag: Duration) -> usize {
        self.replicas()
            .values()
            .filter(|t| t.last_ack.elapsed() <= max_lag)
            .count()
    }

    /// How many connected replicas have flushed `lsn`.
    pub fn flushed_count(&self, lsn: Lsn) -> usize {
        self.replicas()
            .values()
            .filter(|t| t.flushed_lsn >= lsn)
            .count()
    }

    /// How many connected replicas have not flushed `lsn`.
    pub fn behind(&self, lsn: Lsn) -> usize {
        self.replicas()
            .values()
            .filter(|t| t.flushed_lsn < lsn)
            .count()
    }

    /// The tonic service, with its message size limits set.
    pub fn service(self: &Arc<Self>) -> ReplicationServer<ShipperService> {
        ReplicationServer::new(ShipperService {
            shipper: self.clone(),
        })
        .max_decoding_message_size(REPLICATION_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(REPLICATION_MESSAGE_BYTES_MAX)
    }

    fn replicas(&self) -> MutexGuard<'_, HashMap<u64, Tracked>> {
        self.replicas.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connected replicas, by stream id.
    pub fn list(&self) -> Vec<ReplicaInfo> {
        let durable = self.wal.durable_lsn();
        let now = now_ms();
        let mut rows: Vec<ReplicaInfo> = self
            .replicas()
            .iter()
            .map(|(&stream_id, t)| ReplicaInfo {
                stream_id,
                node_id: t.node_id.clone(),
                addr: t.addr.clone(),
                resp_addr: t.resp_addr.clone(),
                grpc_addr: t.grpc_addr.clone(),
                state: t.state,
                sent_lsn: t.sent_lsn,
                written_lsn: t.written_lsn,
                flushed_lsn: t.flushed_lsn,
                applied_lsn: t.applied_lsn,
                lag: self.lag(t, durable, now),
                last_ack_age: t.last_ack.elapsed(),
                frames_sent: t.frames_sent,
                bytes_sent: t.bytes_sent,
            })
            .collect();
        rows.sort_by_key(|r| r.stream_id);
        rows
    }

    fn lag(&self, t: &Tracked, durable: Lsn, now_ms: u64) -> Lag {
        let records = durable.0.saturating_sub(t.applied_lsn.0);
        if records == 0 {
            return Lag::default();
        }
        let pending = t.inflight.iter().filter(|s| s.last_lsn > t.applied_lsn);
        let mut bytes: u64 = pending.clone().map(|s| s.bytes).sum();
        if t.sent_lsn < durable {
            bytes += self.wal.bytes_after(t.sent_lsn);
        }
        let ms = pending
            .map(|s| now_ms.saturating_sub(s.timestamp_ms))
            .next()
            .unwrap_or(0);
        Lag { records, bytes, ms }
    }

    /// Ends every replica's stream; returns how many.
    pub fn disconnect_all(&self) -> usize {
        let replicas = self.replicas();
        for t in replicas.values() {
            t.disconnect.send_replace(true);
        }
        replicas.len()
    }

    /// Ends the streams of the replica with this node id; returns how many.
    pub fn disconnect(&self, node_id: &str) -> usize {
        let replicas = self.replicas();
        let mut ended = 0;
        for t in replicas.values().filter(|t| t.node_id == node_id) {
            t.disconnect.send_replace(true);
            ended += 1;
        }
        ended
    }

    /// Checks a hello; returns the first LSN to send.
    async fn check_hello(&self, hello: &Hello) -> Result<Lsn> {
        let ours = self.membership.cluster_id();
        if ours.is_empty() {
            return Err(refused(
                Reason::NotReady,
                "this node has not joined a cluster yet (it has not synced from its own primary)"
                    .into(),
            ));
        }
        if !valid_node_id(&hello.node_id) {
            return Err(refused(
                Reason::BadHello,
                format!(
                    "the hello's node id {:?} is empty, too long or not printable",
                    hello.node_id
                ),
            ));
        }
        if hello.node_id == self.membership.node_id() {
            return Err(refused(
                Reason::BadHello,
                "a node cannot replicate from itself".into(),
            ));
        }
        let flushed = Lsn(hello.flushed_lsn);
        if flushed.0 > 0 && hello.cluster_id.is_empty() {
            return Err(refused(
                Reason::BadHello,
                format!("the replica has records up to lsn {flushed} but names no cluster"),
            ));
        }
        same_cluster(&hello.cluster_id, &ours)?;
        let ours_epoch = self.wal.epoch().0;
        if hello.flushed_epoch > ours_epoch {
            self.membership.saw_newer_epoch(hello.flushed_epoch);
            return Err(refused(
                Reason::StaleEpoch,
                format!(
                    "the replica has records of epoch {}, this node is at epoch {ours_epoch}: \
                     a newer primary exists, and this node stops taking writes",
                    hello.flushed_epoch
                ),
            ));
        }
        let last = self.wal.last_lsn();
        if flushed > last {
            return Err(refused(
                Reason::HistoryMismatch,
                format!(
                    "the replica has records up to lsn {flushed}, this node only up to lsn {last}: \
                     the replica holds records this node never had"
                ),
            ));
        }
        if flushed > self.wal.durable_lsn() {
            // Synced now, whatever the policy (under `no`, only when asked).
            let _eager = self.wal.eager_sync();
            self.wal.wait_durable(flushed).await?;
        }
        let first = self.wal.first_lsn();
        // The histories are compared before anything else: a replica whose
        // resume point this node no longer keeps, or one right before it,
        // may still have forked (an old primary back after a long
        // partition), and must be told so (it then sets its records past
        // the fork aside), not just sent a snapshot over them.
        if flushed.0 > 0 && flushed < first {
            // Without the frame, by the terms: the epoch this node's log
            // has at `flushed` must be the replica's.
            let ours = ferry_wal::epoch_at(&self.membership.epoch_history(), flushed);
            if ours != hello.flushed_epoch {
                return Err(refused(
                    Reason::HistoryMismatch,
                    format!(
                        "the histories differ at lsn {flushed}: the replica's frame ending there has \
                         epoch {}; this node's log has epoch {ours} there (its frame is no longer kept)",
                        hello.flushed_epoch
                    ),
                ));
            }
        }
        if flushed.next() < first {
            return Err(refused(
                Reason::NotRetained,
                format!(
                    "the replica needs lsn {} next, this node keeps lsn {first} and later only",
                    flushed.next()
                ),
            ));
        }
        if flushed.0 > 0 && flushed >= first {
            let mut reader = self.wal.frames(flushed)?;
            let frame = reader.next_frame()?.ok_or_else(|| {
                refused(
                    Reason::HistoryMismatch,
                    format!("this node has no durable frame holding lsn {flushed}"),
                )
            })?;
            let h = frame.header;
            if h.last_lsn() != flushed
                || h.crc != hello.flushed_frame_crc
                || h.epoch.0 != hello.flushed_epoch
            {
                return Err(refused(
                    Reason::HistoryMismatch,
                    format!(
                        "the histories differ at lsn {flushed}: the replica's frame ending there has \
                         epoch {} and crc {:08x}; this node's frame holding it spans lsn {}..={}, \
                         epoch {}, crc {:08x}",
                        hello.flushed_epoch,
                        hello.flushed_frame_crc,
                        h.first_lsn,
                        h.last_lsn(),
                        h.epoch,
                        h.crc
                    ),
                ));
            }
        }
        Ok(flushed.next())
    }

    /// Checks a hello and takes the replica's retention slot; then checks
    /// again that the WAL holds its resume point (a purge may have come
    /// between the two; from the slot on, none can). Returns the first LSN
    /// to send.
    async fn admit(&self, hello: &Hello) -> Result<Lsn> {
        let from = self.check_hello(hello).await?;
        if let Err(e) = self.retention.hold(&hello.node_id, Lsn(from.0 - 1)) {
            tracing::warn!(error = %e, "saving a retention slot failed");
        }
        let first = self.wal.first_lsn();
        if from < first {
            return Err(refused(
                Reason::NotRetained,
                format!(
                    "the replica needs lsn {from} next, this node keeps lsn {first} and later only"
                ),
            ));
        }
        Ok(from)
    }

    fn update(&self, stream_id: u64, f: impl FnOnce(&mut Tracked)) {
        if let Some(t) = self.replicas().get_mut(&stream_id) {
            f(t);
        }
    }

    fn on_ack(&self, stream_id: u64, ack: &ferry_proto::v1::Ack) {
        let mut flushed = None;
        self.update(stream_id, |t| {
            // Acks only move forward; a stale or corrupt one is ignored.
            t.written_lsn = t.written_lsn.max(Lsn(ack.written_lsn.min(t.sent_lsn.0)));
            t.flushed_lsn = t.flushed_lsn.max(Lsn(ack.flushed_lsn.min(t.written_lsn.0)));
            t.applied_lsn = t.applied_lsn.max(Lsn(ack.applied_lsn.min(t.flushed_lsn.0)));
            t.last_ack = Instant::now();
            while t
                .inflight
                .front()
                .is_some_and(|s| s.last_lsn <= t.applied_lsn)
            {
                t.inflight.pop_front();
            }
            flushed = Some((t.node_id.clone(), t.flushed_lsn));
        });
        if let Some((node_id, lsn)) = flushed {
            self.retention.advance(&node_id, lsn);
        }
        self.acks.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Sends durable frames from `from` until the stream ends; returns why.
    async fn ship(
        self: Arc<Self>,
        stream_id: u64,
        from: Lsn,
        tx: mpsc::Sender<Result<PrimaryMessage, tonic::Status>>,
        mut ended: watch::Receiver<Option<String>>,
        mut disconnect: watch::Receiver<bool>,
    ) -> ShipError {
        let mut stop = self.stop.clone();
        let mut reader = match self.wal.frames(from) {
            Ok(r) => r,
            Err(e) => return e.into(),
        };
        // Under everysec, sync as soon as frames are written while a replica
        // streams, so it does not wait for the interval.
        let _eager = self.wal.eager_sync();
        let mut tick = tokio::time::interval(self.config.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sent_since_tick = false;
        let limit = self.config.frames_message_bytes_max;
        loop {
            let mut data = BytesMut::new();
            let (mut first, mut last) = (Lsn::ZERO, Lsn::ZERO);
            let mut sent = Vec::new();
            while data.len() < limit {
                match reader.next_frame() {
                    Ok(Some(frame)) => {
                        if first == Lsn::ZERO {
                            first = frame.header.first_lsn;
                        }
                        last = frame.header.last_lsn();
                        sent.push(Sent {
                            last_lsn: last,
                            bytes: frame.bytes.len() as u64,
                            timestamp_ms: frame.header.timestamp_ms,
                        });
                        if data.is_empty() && frame.bytes.len() >= limit {
                            data = BytesMut::from(frame.bytes);
                            break;
                        }
                        data.extend_from_slice(&frame.bytes);
                    }
                    Ok(None) => break,
                    Err(e) => return e.into(),
                }
            }
            let durable = self.wal.durable_lsn();
            if !data.is_empty() {
                let caught_up = last >= durable;
                self.update(stream_id, |t| {
                    t.sent_lsn = last;
                    t.frames_sent += sent.len() as u64;
                    t.bytes_sent += data.len() as u64;
                    if caught_up {
                        t.state = ReplicaState::Streaming;
                    }
                    t.inflight.extend(sent);
                    while t.inflight.len() > INFLIGHT_FRAMES_MAX {
                        t.inflight.pop_front();
                    }
                });
                let message = PrimaryMessage {
                    msg: Some(Out::Frames(Frames {
                        data: data.freeze(),
                        first_lsn: first.0,
                        last_lsn: last.0,
                        durable_lsn: durable.0,
                    })),
                    crc32: 0,
                }
                .sealed();
                let send = tx.send(Ok(message));
                tokio::pin!(send);
                loop {
                    tokio::select! {
                        r = &mut send => {
                            if r.is_err() {
                                return ShipError::StreamEnded("the replica went away".into());
                            }
                            break;
                        }
                        _ = tick.tick() => {
                            if let Some(err) = self.stalled(stream_id) {
                                return err;
                            }
                        }
                        r = ended.changed() => return self.ended(r, &ended),
                        _ = disconnect.changed() => return ShipError::Disconnected,
                        _ = stop.changed() => return ShipError::ShuttingDown,
                    }
                }
                sent_since_tick = true;
                continue;
            }
            self.update(stream_id, |t| t.state = ReplicaState::Streaming);
            tokio::select! {
                r = reader.wait() => {
                    if let Err(e) = r {
                        return e.into();
                    }
                }
                _ = tick.tick() => {
                    if let Some(err) = self.stalled(stream_id) {
                        return err;
                    }
                    if !std::mem::take(&mut sent_since_tick) {
                        let heartbeat = self.heartbeat(stream_id);
                        // A full queue already tells the replica the link lives.
                        let _ = tx.try_send(Ok(heartbeat));
                    }
                }
                r = ended.changed() => return self.ended(r, &ended),
                _ = disconnect.changed() => return ShipError::Disconnected,
                _ = stop.changed() => return ShipError::ShuttingDown,
            }
        }
    }

    fn ended(
        &self,
        changed: std::result::Result<(), watch::error::RecvError>,
        ended: &watch::Receiver<Option<String>>,
    ) -> ShipError {
        match changed {
            Ok(()) => ShipError::StreamEnded(ended.borrow().clone().unwrap_or_default()),
            Err(_) => ShipError::StreamEnded("the ack reader stopped".into()),
        }
    }

    fn stalled(&self, stream_id: u64) -> Option<ShipError> {
        let age = self
            .replicas()
            .get(&stream_id)
            .map(|t| t.last_ack.elapsed())?;
        (age > self.config.replica_timeout).then_some(ShipError::Stalled {
            ms: age.as_millis() as u64,
        })
    }

    fn heartbeat(&self, stream_id: u64) -> PrimaryMessage {
        let durable = self.wal.durable_lsn();
        let now = now_ms();
        let lag = self
            .replicas()
            .get(&stream_id)
            .map(|t| self.lag(t, durable, now))
            .unwrap_or_default();
        PrimaryMessage {
            msg: Some(Out::Heartbeat(Heartbeat {
                durable_lsn: durable.0,
                clock_ms: now,
                lag_bytes: lag.bytes,
                lag_ms: lag.ms,
            })),
            crc32: 0,
        }
        .sealed()
    }
}

/// The tonic `Replication` service of a [`Shipper`].
#[derive(Debug, Clone)]
pub struct ShipperService {
    shipper: Arc<Shipper>,
}

type OutStream = ReceiverStream<Result<PrimaryMessage, tonic::Status>>;
type SnapshotStream = ReceiverStream<Result<SnapshotMessage, tonic::Status>>;

impl Shipper {
    /// Checks who asks for a snapshot, as the hello check does.
    fn check_snapshot_request(&self, request: &SnapshotRequest) -> Result<()> {
        let ours = self.membership.cluster_id();
        if ours.is_empty() {
            return Err(refused(
                Reason::NotReady,
                "this node has not joined a cluster yet".into(),
            ));
        }
        if !valid_node_id(&request.node_id) || request.node_id == self.membership.node_id() {
            return Err(refused(
                Reason::BadHello,
                "a snapshot request needs the id of another node".into(),
            ));
        }
        same_cluster(&request.cluster_id, &ours)
    }
}

#[tonic::async_trait]
impl Replication for ShipperService {
    type StreamStream = OutStream;
    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        request: tonic::Request<SnapshotRequest>,
    ) -> std::result::Result<tonic::Response<SnapshotStream>, tonic::Status> {
        let shipper = self.shipper.clone();
        let request = checked(Ok(Some(request.into_inner())))?.expect("a request was given");
        shipper.check_snapshot_request(&request)?;
        // The replica continues after the anchor frame: its slot keeps the
        // WAL from there. A purge between taking the checkpoint and the slot
        // makes the checkpoint useless: then a new one is taken.
        let mut checkpoint = None;
        for _ in 0..2 {
            let taken = shipper
                .snapshots
                .get(
                    &shipper.wal,
                    &shipper.engine,
                    shipper.membership.cluster_id(),
                )
                .await?;
            if let Err(e) = shipper
                .retention
                .hold(&request.node_id, Lsn(taken.anchor_first.0 - 1))
            {
                tracing::warn!(error = %e, "saving a retention slot failed");
            }
            if taken.anchor_first >= shipper.wal.first_lsn() {
                checkpoint = Some(taken);
                break;
            }
        }
        let checkpoint = checkpoint.ok_or_else(|| {
            tonic::Status::unavailable("the WAL moved past the snapshot twice; ask again")
        })?;
        shipper.counters.sync_full.fetch_add(1, Ordering::Relaxed);
        let same = request.snapshot_id == checkpoint.manifest.snapshot_id;
        let have = if same { request.have_files } else { Vec::new() };
        let resume = (same && !request.resume_file.is_empty())
            .then_some((request.resume_file, request.resume_offset));
        tracing::info!(replica = %request.node_id, snapshot = %checkpoint.manifest.snapshot_id,
            lsn = checkpoint.manifest.lsn, total_bytes = checkpoint.manifest.total_bytes,
            files_skipped = have.len(), resume_offset = resume.as_ref().map_or(0, |r| r.1),
            "sending a snapshot");
        let (tx, rx) = mpsc::channel(SEND_QUEUE_MESSAGES_MAX);
        tokio::spawn(async move {
            let started = Instant::now();
            let result = shipper
                .snapshots
                .send(
                    checkpoint,
                    &have,
                    resume.as_ref().map(|(name, at)| (name.as_str(), *at)),
                    &tx,
                    shipper.stop.clone(),
                )
                .await;
            match result {
                Ok(bytes) => tracing::info!(replica = %request.node_id, bytes,
                    elapsed_ms = started.elapsed().as_millis() as u64, "snapshot sent"),
                Err(e) => {
                    tracing::warn!(replica = %request.node_id, error = %e, "snapshot transfer ended");
                    let _ = tx.try_send(Err(e.into()));
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }

    async fn stream(
        &self,
        request: tonic::Request<tonic::Streaming<ReplicaMessage>>,
    ) -> std::result::Result<tonic::Response<OutStream>, tonic::Status> {
        let shipper = &self.shipper;
        let addr = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let mut inbound = request.into_inner();
        let hello = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map(checked);
        let hello = match hello {
            Ok(Ok(Some(ReplicaMessage {
                msg: Some(In::Hello(hello)),
                ..
            }))) => hello,
            Ok(Ok(Some(_))) => {
                return Err(tonic::Status::invalid_argument(
                    "the first message of a replication stream must be a hello",
                ));
            }
            Ok(Ok(None)) => return Err(tonic::Status::cancelled("the stream ended at once")),
            Ok(Err(status)) => return Err(status),
            Err(_) => return Err(tonic::Status::deadline_exceeded("no hello in time")),
        };
        let (tx, rx) = mpsc::channel(SEND_QUEUE_MESSAGES_MAX);
        let from = match shipper.admit(&hello).await {
            Ok(from) => from,
            Err(ShipError::Refused { reason, message }) => {
                shipper
                    .counters
                    .sync_partial_err
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(replica = %hello.node_id, %addr, ?reason, %message, "replica refused");
                let refusal = PrimaryMessage {
                    msg: Some(Out::Refusal(Refusal {
                        reason: reason as i32,
                        message,
                        epoch_history: shipper.epoch_history(),
                    })),
                    crc32: 0,
                }
                .sealed();
                let _ = tx.send(Ok(refusal)).await;
                return Ok(tonic::Response::new(ReceiverStream::new(rx)));
            }
            Err(err) => return Err(err.into()),
        };
        shipper
            .counters
            .sync_partial_ok
            .fetch_add(1, Ordering::Relaxed);
        if !hello.grpc_addr.is_empty() {
            shipper
                .known
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(
                    hello.node_id.clone(),
                    (hello.grpc_addr.clone(), addr.clone()),
                );
        }
        let stream_id = shipper.next_stream_id.fetch_add(1, Ordering::Relaxed);
        let (disconnect_tx, disconnect_rx) = watch::channel(false);
        shipper.replicas().insert(
            stream_id,
            Tracked {
                node_id: hello.node_id.clone(),
                addr: addr.clone(),
                resp_addr: hello.resp_addr.clone(),
                grpc_addr: hello.grpc_addr.clone(),
                state: ReplicaState::Catchup,
                sent_lsn: Lsn(from.0 - 1),
                written_lsn: Lsn(from.0 - 1),
                flushed_lsn: Lsn(from.0 - 1),
                applied_lsn: Lsn(from.0 - 1),
                last_ack: Instant::now(),
                frames_sent: 0,
                bytes_sent: 0,
                inflight: VecDeque::new(),
                disconnect: disconnect_tx,
            },
        );
        let accept = PrimaryMessage {
            msg: Some(Out::Accept(Accept {
                from_lsn: from.0,
                cluster_id: shipper.membership.cluster_id(),
                node_id: shipper.membership.node_id(),
                epoch: shipper.wal.epoch().0,
                durable_lsn: shipper.wal.durable_lsn().0,
                epoch_history: shipper.epoch_history(),
                resp_addr: shipper.membership.resp_addr(),
            })),
            crc32: 0,
        }
        .sealed();
        let _ = tx.send(Ok(accept)).await;
        tracing::info!(replica = %hello.node_id, %addr, from = %from, "replica accepted");
        let (ended_tx, ended_rx) = watch::channel(None);
        let acks = shipper.clone();
        tokio::spawn(async move {
            let why = loop {
                match checked(inbound.message().await) {
                    Ok(Some(ReplicaMessage {
                        msg: Some(In::Ack(ack)),
                        ..
                    })) => acks.on_ack(stream_id, &ack),
                    Ok(Some(_)) => break "the replica sent a second hello".to_string(),
                    Ok(None) => break "the replica closed the stream".to_string(),
                    Err(status) => break status.message().to_string(),
                }
            };
            ended_tx.send_replace(Some(why));
        });
        let session = shipper.clone();
        tokio::spawn(async move {
            let why = session
                .clone()
                .ship(stream_id, from, tx.clone(), ended_rx, disconnect_rx)
                .await;
            let node_id = session
                .replicas()
                .remove(&stream_id)
                .map(|t| t.node_id)
                .unwrap_or_default();
            tracing::info!(replica = %node_id, reason = %why, "replica stream ended");
            // The replica learns why, unless the stream is gone already.
            let _ = tx.try_send(Err(why.into()));
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}
