//! ferry-receiver: the replica side of replication — connects to a primary
//! (or to a replica serving cascaded replicas), checks and appends its WAL
//! frames verbatim to the local WAL, syncs, applies them to the engine,
//! acknowledges, and reconnects with backoff.
//!
//! # Layout
//! - [`state`]: the decisions (connect, resume point, backoff, refusals) as a
//!   plain state machine, tested without sockets.
//! - [`Receiver`]: the task that carries them out, and its [`LinkStatus`].
//! - [`bootstrap`]: fetching, checking, staging and installing a snapshot
//!   when the primary no longer holds this node's resume point.
//! - `error`: [`ReceiveError`].
//!
//! # Guarantees
//! - A frame is written only after its crc, body and LSN continuity are
//!   checked; a bad frame breaks the link and nothing of its message is
//!   written.
//! - Receiving and applying run apart: the stream task checks and appends
//!   frames (the replica's WAL syncs them in the background, eagerly), and an
//!   applier task follows the local WAL's durable LSN into the engine. So
//!   `flushed_lsn` is acked only once synced, the engine never holds what a
//!   crash of the replica could take out of its log, and neither a sync nor
//!   a RocksDB write holds up the stream.
//! - Every stream resumes after the last LSN in the local log: no gap, and no
//!   record applied twice.

pub mod bootstrap;
pub mod error;
pub mod state;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ferry_engine::{Engine, decode_record};
use ferry_proto::seal::{Sealed, checked};
use ferry_proto::v1::primary_message::Msg as In;
use ferry_proto::v1::refusal::Reason;
use ferry_proto::v1::replica_message::Msg as Out;
use ferry_proto::v1::replication_client::ReplicationClient;
use ferry_proto::v1::{Ack, Frames, Hello, PrimaryMessage, ReplicaMessage, SnapshotRequest};
use ferry_wal::{FrameLimits, Lsn, Wal, format};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

pub use crate::bootstrap::{BOOTSTRAP_DIR, Staging, SyncProgress};
pub use crate::error::{ReceiveError, Result};
use crate::state::{Backoff, Command, Event, Machine, Phase};

/// A link on which the primary says nothing (not even a heartbeat) for this
/// long is considered broken.
pub const PRIMARY_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// How long connecting and the handshake may take.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// An ack goes out at least this often, even with nothing new.
pub const ACK_INTERVAL: Duration = Duration::from_millis(250);
/// The largest replication message accepted or sent: one whole WAL frame of
/// the largest size, and room for the message's other fields.
pub const REPLICATION_MESSAGE_BYTES_MAX: usize = format::FRAME_BYTES_MAX + (64 << 10);
/// The HTTP/2 flow-control window the receiver grants the primary, per
/// stream and per connection. It bounds the bytes in flight on the link, so
/// it must cover the bandwidth-delay product of a cross-region link (the
/// HTTP/2 default of 64 KiB allows only 320 KiB/s at 200 ms round trip).
pub const RECEIVE_WINDOW_BYTES: u32 = 32 << 20;
/// The largest HTTP/2 frame the receiver accepts: 1 MiB messages (WAL
/// frames, snapshot chunks) travel in a few frames instead of 64 of the
/// default 16 KiB.
pub const RECEIVE_FRAME_BYTES_MAX: u32 = 1 << 20;
/// Records applied to the engine in one RocksDB write at most.
pub const APPLY_BATCH_RECORDS_MAX: usize = 8192;
/// A bootstrap logs its progress this often.
pub const BOOTSTRAP_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// After the applier failed (a RocksDB write error: a full disk), the pause
/// before it is started again and the link reconnects: doubled after each
/// failure in a row, up to [`APPLY_RETRY_MAX`].
pub const APPLY_RETRY_MIN: Duration = Duration::from_millis(500);
/// The longest pause between two tries of a failed applier.
pub const APPLY_RETRY_MAX: Duration = Duration::from_secs(30);
/// Acks queued towards the primary (a full queue skips one: the next
/// carries newer numbers anyway).
const ACK_QUEUE_MAX: usize = 16;

/// What the receiver needs to know of its node.
pub trait Membership: Send + Sync + 'static {
    /// The node's cluster id; empty for a new replica. A node whose log
    /// never held a record adopts its primary's.
    fn cluster_id(&self) -> String;
    fn node_id(&self) -> String;
    /// Where the node's clients connect, for the primary's reports.
    fn resp_addr(&self) -> String;
    /// Where the node's gRPC services listen, for the primary's switchover.
    fn grpc_addr(&self) -> String;
    /// Records the cluster id of the primary, for a node that had none.
    ///
    /// # Errors
    ///
    /// Why it could not be recorded durably.
    fn adopt_cluster(&self, cluster_id: &str) -> std::result::Result<(), String>;
    /// Records terms (epoch, first LSN) of the primary's history that this
    /// node's log holds or will hold, so that it serves them in turn.
    ///
    /// # Errors
    ///
    /// Why they could not be recorded durably.
    fn learn_terms(&self, terms: &[(u64, u64)]) -> std::result::Result<(), String>;
    /// The terms of this node's log, begun by it or by the primaries it
    /// followed: (epoch, first LSN).
    fn epoch_history(&self) -> Vec<(u64, u64)>;
}

/// Tunables of a [`Receiver`].
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// The gRPC address of the primary, e.g. `http://10.0.0.1:7379`.
    pub primary: String,
    pub backoff: Backoff,
    pub primary_timeout: Duration,
    pub connect_timeout: Duration,
    /// Seeds the backoff jitter.
    pub seed: u64,
    /// The software version sent in the hello.
    pub version: String,
    /// Where a snapshot is staged for a bootstrap; `None`: this node does
    /// not bootstrap (it stays refused when its resume point is gone).
    pub bootstrap_dir: Option<std::path::PathBuf>,
    /// The cluster token the primary asks for (see `ferry_proto::auth`).
    pub cluster_token: Option<String>,
    /// TLS to the primary, for an `https://` address (see
    /// `ferry_proto::tls`).
    pub tls: ferry_proto::tls::Tls,
}

impl ReceiverConfig {
    pub fn new(primary: impl Into<String>) -> ReceiverConfig {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id());
        ReceiverConfig {
            primary: primary.into(),
            backoff: Backoff::default(),
            primary_timeout: PRIMARY_TIMEOUT_DEFAULT,
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            seed,
            version: String::new(),
            bootstrap_dir: None,
            cluster_token: None,
            tls: ferry_proto::tls::Tls::default(),
        }
    }
}

/// The link to the primary, as status reports show it.
#[derive(Debug, Clone)]
pub struct LinkStatus {
    pub primary: String,
    /// Where the primary's own clients connect, as it last told (empty
    /// until it did).
    pub primary_resp_addr: String,
    /// "connecting", "catchup", "streaming", "bootstrap", "down",
    /// "refused" or "stopped".
    pub state: &'static str,
    pub link_up: bool,
    /// When the link last went down (or the receiver started), while down.
    pub down_since: Option<Instant>,
    /// When the primary last sent anything.
    pub last_io: Option<Instant>,
    /// The primary's durable LSN, from its last message.
    pub primary_durable_lsn: Lsn,
    /// The lag the primary last reported for this node.
    pub primary_lag_bytes: u64,
    pub primary_lag_ms: u64,
    pub last_refusal: Option<String>,
    pub last_error: Option<String>,
    /// Streams opened, hellos accepted, frames rejected before being
    /// written, frames and bytes received.
    pub connects: u64,
    pub accepted: u64,
    pub frames_rejected: u64,
    pub frames_received: u64,
    pub bytes_received: u64,
    /// Set when the primary's history shows this node's log forked from it
    /// after this LSN: the records after it are not the primary's, and the
    /// node must set them aside before it can follow.
    pub diverged_after: Option<Lsn>,
    /// A bootstrap from a snapshot, while one runs.
    pub sync: Option<SyncProgress>,
    /// Bootstraps finished, snapshot chunks or files rejected for a bad
    /// checksum, and snapshot bytes received, since start.
    pub bootstraps: u64,
    pub snapshot_chunks_rejected: u64,
    pub snapshot_bytes_received: u64,
}

impl LinkStatus {
    fn new(primary: String) -> LinkStatus {
        LinkStatus {
            primary,
            primary_resp_addr: String::new(),
            state: "connecting",
            link_up: false,
            down_since: Some(Instant::now()),
            last_io: None,
            primary_durable_lsn: Lsn::ZERO,
            primary_lag_bytes: 0,
            primary_lag_ms: 0,
            last_refusal: None,
            last_error: None,
            connects: 0,
            accepted: 0,
            frames_rejected: 0,
            frames_received: 0,
            bytes_received: 0,
            diverged_after: None,
            sync: None,
            bootstraps: 0,
            snapshot_chunks_rejected: 0,
            snapshot_bytes_received: 0,
        }
    }
}

/// A running receiver; [`Receiver::stop`] ends it.
#[derive(Debug)]
pub struct Receiver {
    status: Arc<Mutex<LinkStatus>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

struct Context {
    config: ReceiverConfig,
    wal: Arc<Wal>,
    engine: Arc<Engine>,
    membership: Arc<dyn Membership>,
    status: Arc<Mutex<LinkStatus>>,
    limits: FrameLimits,
    /// The engine's applied LSN, as the applier moves it.
    applied: watch::Receiver<Lsn>,
    applied_tx: Arc<watch::Sender<Lsn>>,
    /// Set by the applier if it fails: the stream must not go on.
    applier_failed: watch::Receiver<Option<String>>,
    failed_tx: Arc<watch::Sender<Option<String>>>,
}

/// The running applier task and its stop switch.
struct Applier {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Applier {
    async fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

/// How a session ended.
enum Ended {
    Event(Event),
    Stopped,
}

fn lock(status: &Mutex<LinkStatus>) -> MutexGuard<'_, LinkStatus> {
    status.lock().unwrap_or_else(|e| e.into_inner())
}

impl Receiver {
    /// Starts following `config.primary`. The engine must have applied the
    /// whole local WAL, and nothing else may append to that WAL while the
    /// receiver runs.
    ///
    /// # Errors
    ///
    /// [`ReceiveError::BadAddress`] for an address that is not a URI;
    /// [`ReceiveError::Tls`] for one that does not fit the TLS settings.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn start(
        config: ReceiverConfig,
        wal: Arc<Wal>,
        engine: Arc<Engine>,
        membership: Arc<dyn Membership>,
    ) -> Result<Receiver> {
        endpoint(&config)?;
        ferry_proto::auth::Attach::new(config.cluster_token.as_deref())
            .map_err(|e| ReceiveError::Protocol(e.to_string()))?;
        let status = Arc::new(Mutex::new(LinkStatus::new(config.primary.clone())));
        let (stop, stop_rx) = watch::channel(false);
        let (applied_tx, applied) = watch::channel(engine.applied_lsn());
        let (failed_tx, applier_failed) = watch::channel(None);
        let ctx = Context {
            config,
            wal,
            engine,
            membership,
            status: status.clone(),
            limits: FrameLimits::default(),
            applied,
            applied_tx: Arc::new(applied_tx),
            applier_failed,
            failed_tx: Arc::new(failed_tx),
        };
        let task = tokio::spawn(ctx.run(stop_rx));
        Ok(Receiver { status, stop, task })
    }

    pub fn status(&self) -> LinkStatus {
        lock(&self.status).clone()
    }

    /// Ends the link and waits for its tasks; whatever was applied stays.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

/// An endpoint for the primary, over TLS for `https://`.
fn endpoint(config: &ReceiverConfig) -> Result<tonic::transport::Endpoint> {
    config.tls.endpoint(&config.primary).map_err(|e| match e {
        ferry_proto::auth::AuthError::BadAddress { reason, .. } => ReceiveError::BadAddress {
            addr: config.primary.clone(),
            reason,
        },
        other => ReceiveError::Tls(other),
    })
}

/// A failed call's status as the link's error, with its cause (a refused
/// TLS certificate shows only there).
fn link_status(s: tonic::Status) -> ReceiveError {
    let cause = std::error::Error::source(&s)
        .map(|cause| format!(" ({})", ferry_proto::tls::causes(cause)))
        .unwrap_or_default();
    ReceiveError::Link(format!("{}: {}{cause}", s.code(), s.message()))
}

/// The next message of a stream, or an error after `timeout` of silence.
async fn next_message<T: Sealed>(
    stream: &mut tonic::Streaming<T>,
    timeout: Duration,
) -> Result<Option<T>> {
    match tokio::time::timeout(timeout, stream.message()).await {
        Ok(r) => checked(r).map_err(link_status),
        Err(_) => Err(ReceiveError::Link(format!(
            "nothing from the primary for {timeout:?}"
        ))),
    }
}

/// Applies the local WAL to the engine as it becomes durable, in batches,
/// for as long as the receiver runs (across streams, so nothing appended is
/// left unapplied when a stream breaks).
async fn run_applier(
    wal: Arc<Wal>,
    engine: Arc<Engine>,
    applied: Arc<watch::Sender<Lsn>>,
    failed: Arc<watch::Sender<Option<String>>>,
    mut stop: watch::Receiver<bool>,
) {
    // Under everysec, frames are synced as soon as they are written.
    let _eager = wal.eager_sync();
    let result: Result<()> = async {
        let mut reader = wal.records(engine.applied_lsn().next())?;
        loop {
            let mut batch = Vec::new();
            while batch.len() < APPLY_BATCH_RECORDS_MAX {
                match reader.next() {
                    Some(record) => {
                        let record = record?;
                        batch.push((record.lsn, decode_record(record.lsn, &record.data)?));
                    }
                    None => break,
                }
            }
            if let Some(&(last, _)) = batch.last() {
                engine.apply(&batch)?;
                applied.send_replace(last);
                // A batch is synchronous work: let the stream, the clients
                // and the status service run between batches while catching
                // up, even on a runtime of one worker.
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                r = reader.wait() => r?,
                _ = stop.wait_for(|&s| s) => return Ok(()),
            }
        }
    }
    .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "applying the replicated log failed; the link stops");
        failed.send_replace(Some(e.to_string()));
    }
}

impl Context {
    fn start_applier(&self) -> Applier {
        // A new applier starts afresh: from the engine as it is now (a
        // snapshot may have replaced it), and with no failure.
        self.applied_tx.send_replace(self.engine.applied_lsn());
        self.failed_tx.send_replace(None);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run_applier(
            self.wal.clone(),
            self.engine.clone(),
            self.applied_tx.clone(),
            self.failed_tx.clone(),
            stop_rx,
        ));
        Applier { stop, task }
    }

    async fn run(self, mut stop: watch::Receiver<bool>) {
        // An install a failure interrupted is completed before anything
        // reads the log.
        if let Some(dir) = &self.config.bootstrap_dir
            && let Err(e) =
                bootstrap::finish_install(&Staging::new(dir.clone()), &self.wal, &self.engine).await
        {
            tracing::error!(error = %e, "completing a snapshot install failed");
        }
        let mut applier = Some(self.start_applier());
        self.follow(&mut applier, &mut stop).await;
        if let Some(applier) = applier {
            applier.stop().await;
        }
        let mut status = lock(&self.status);
        status.state = "stopped";
        status.link_up = false;
        status.sync = None;
    }

    async fn follow(&self, applier: &mut Option<Applier>, stop: &mut watch::Receiver<bool>) {
        let mut machine = Machine::new(self.config.backoff, self.config.seed);
        // The resume point is what the log holds durably.
        let flushed = match self.wal.sync().await {
            Ok(lsn) => lsn,
            Err(e) => {
                tracing::error!(error = %e, "the local WAL failed; not following the primary");
                lock(&self.status).last_error = Some(e.to_string());
                return;
            }
        };
        let mut commands = machine.on_event(Event::Start { flushed });
        // Applier failures in a row, for the pause before the next try.
        let mut apply_failures = 0u32;
        while let Some(command) = commands.pop() {
            let event = match command {
                Command::Connect { resume_from } => {
                    // A failed applier (which ended the last session) is
                    // started again after a pause: following without one
                    // would reconnect at once, over and over, applying
                    // nothing.
                    let failed = self.failed_tx.borrow().clone();
                    if let Some(why) = failed {
                        let pause = APPLY_RETRY_MIN
                            .saturating_mul(1 << apply_failures.min(8))
                            .min(APPLY_RETRY_MAX);
                        apply_failures += 1;
                        tracing::warn!(error = %why, pause_ms = pause.as_millis() as u64,
                            "applying failed: trying again after a pause");
                        tokio::select! {
                            () = tokio::time::sleep(pause) => {}
                            _ = stop.wait_for(|&s| s) => break,
                        }
                        if let Some(running) = applier.take() {
                            running.stop().await;
                        }
                        *applier = Some(self.start_applier());
                    } else {
                        apply_failures = 0;
                    }
                    match self.session(&mut machine, resume_from, stop).await {
                        Ended::Event(event) => event,
                        Ended::Stopped => break,
                    }
                }
                Command::Retry { after } => {
                    tokio::select! {
                        () = tokio::time::sleep(after) => Event::RetryDue,
                        _ = stop.wait_for(|&s| s) => break,
                    }
                }
                Command::Bootstrap => {
                    // Nothing may apply while the engine and log are replaced.
                    if let Some(running) = applier.take() {
                        running.stop().await;
                    }
                    let ended = self.bootstrap(stop).await;
                    *applier = Some(self.start_applier());
                    match ended {
                        Ended::Event(event) => event,
                        Ended::Stopped => break,
                    }
                }
            };
            self.note(&event, machine.phase());
            commands = machine.on_event(event);
        }
        machine.on_event(Event::Stop);
    }

    /// Fetches the primary's snapshot into staging (resuming a transfer
    /// that broke), checks it, and installs it.
    async fn bootstrap(&self, stop: &mut watch::Receiver<bool>) -> Ended {
        let Some(dir) = self.config.bootstrap_dir.clone() else {
            return Ended::Event(Event::Broken {
                error: "the primary no longer holds this node's resume point, and this node \
                        does not bootstrap from snapshots"
                    .into(),
            });
        };
        lock(&self.status).state = "bootstrap";
        let result = self.fetch_and_install(Staging::new(dir), stop).await;
        let mut status = lock(&self.status);
        status.sync = None;
        match result {
            Ok(None) => Ended::Stopped,
            Ok(Some(flushed)) => {
                status.bootstraps += 1;
                Ended::Event(Event::Bootstrapped { flushed })
            }
            Err(e) => {
                if matches!(e, ReceiveError::BadSnapshot(_)) {
                    status.snapshot_chunks_rejected += 1;
                }
                drop(status);
                tracing::warn!(error = %e, "the bootstrap failed; it resumes after a pause");
                Ended::Event(Event::Broken {
                    error: e.to_string(),
                })
            }
        }
    }

    /// Fetches the snapshot (a stop ends this part) and installs it (this
    /// part, once begun, runs to its end). `None` if stopped.
    async fn fetch_and_install(
        &self,
        staging: Staging,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Option<Lsn>> {
        // A failure may have left an install that only has to be completed;
        // the stream may resume with the snapshot's tail.
        if let Some(flushed) = bootstrap::finish_install(&staging, &self.wal, &self.engine).await? {
            return Ok(Some(flushed));
        }
        let fetched = tokio::select! {
            r = self.fetch(staging) => r?,
            _ = stop.wait_for(|&s| s) => return Ok(None),
        };
        let (staging, lsn, total, started) = fetched;
        let flushed = bootstrap::finish_install(&staging, &self.wal, &self.engine)
            .await?
            .ok_or_else(|| ReceiveError::Io("the staged snapshot vanished".into()))?;
        tracing::info!(%lsn, total_bytes = total, elapsed_ms = started.elapsed().as_millis() as u64,
            "bootstrapped from the snapshot; streaming the tail");
        Ok(Some(flushed))
    }

    /// Fetches the primary's snapshot into staging, resuming what is staged,
    /// and checks it: then it is ready to install. Returns the staging, the
    /// snapshot's LSN and size, and when the transfer began.
    async fn fetch(&self, staging: Staging) -> Result<(Staging, Lsn, u64, Instant)> {
        let previous = staging.manifest()?;
        let (resume_file, resume_offset) = staging.resume_point()?.unwrap_or_default();
        let request = SnapshotRequest {
            cluster_id: if self.wal.last_lsn() == Lsn::ZERO {
                String::new()
            } else {
                self.membership.cluster_id()
            },
            node_id: self.membership.node_id(),
            snapshot_id: previous.map(|m| m.snapshot_id).unwrap_or_default(),
            have_files: staging.whole()?,
            resume_file,
            resume_offset,
            crc32: 0,
        }
        .sealed();
        let mut client = ReplicationClient::with_interceptor(self.channel().await?, self.token())
            .max_decoding_message_size(REPLICATION_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(REPLICATION_MESSAGE_BYTES_MAX);
        let mut stream = client
            .snapshot(request)
            .await
            .map_err(link_status)?
            .into_inner();
        use ferry_proto::v1::snapshot_message::Msg as Snap;
        let timeout = self.config.primary_timeout;
        let manifest = match next_message(&mut stream, timeout).await? {
            Some(ferry_proto::v1::SnapshotMessage {
                msg: Some(Snap::Manifest(m)),
                ..
            }) => m,
            _ => {
                return Err(ReceiveError::Protocol(
                    "a snapshot stream must begin with its manifest".into(),
                ));
            }
        };
        self.check_cluster(&manifest.cluster_id)?;
        let mut download = bootstrap::Download::begin(staging, manifest)?;
        tracing::info!(primary = %self.config.primary, snapshot = %download.progress.snapshot_id,
            lsn = %download.progress.lsn, total_bytes = download.progress.total_bytes,
            staged_bytes = download.progress.done_bytes, "bootstrapping from a snapshot");
        {
            let mut status = lock(&self.status);
            status.sync = Some(download.progress.clone());
            status.last_io = Some(Instant::now());
        }
        let mut logged = Instant::now();
        while let Some(message) = next_message(&mut stream, timeout).await? {
            let chunk = match message.msg {
                Some(Snap::Chunk(chunk)) => chunk,
                _ => return Err(ReceiveError::Protocol("a second manifest".into())),
            };
            let bytes = chunk.data.len() as u64;
            download.chunk(chunk)?;
            {
                let mut status = lock(&self.status);
                status.last_io = Some(Instant::now());
                status.snapshot_bytes_received += bytes;
                status.sync = Some(download.progress.clone());
            }
            if logged.elapsed() >= BOOTSTRAP_LOG_INTERVAL {
                logged = Instant::now();
                let p = &download.progress;
                tracing::info!(
                    done_bytes = p.done_bytes,
                    total_bytes = p.total_bytes,
                    rate_bytes_per_sec = p.rate(),
                    eta_ms = p.eta().map_or(0, |d| d.as_millis() as u64),
                    "bootstrap progress"
                );
            }
        }
        let (lsn, total) = (download.progress.lsn, download.progress.total_bytes);
        let started = download.progress.started;
        Ok((download.finish().await?, lsn, total, started))
    }

    /// Records a session's outcome in the status.
    fn note(&self, event: &Event, _phase: Phase) {
        let mut status = lock(&self.status);
        match event {
            Event::Refused { reason, message } => {
                status.state = "refused";
                status.last_refusal = Some(format!("{}: {message}", reason.as_str_name()));
            }
            Event::Broken { error } => {
                status.state = "down";
                status.last_error = Some(error.clone());
            }
            _ => return,
        }
        if status.link_up || status.down_since.is_none() {
            status.down_since = Some(Instant::now());
        }
        status.link_up = false;
    }

    /// The hello for a stream that resumes at `resume_from`.
    fn hello(&self, resume_from: Lsn) -> Result<Hello> {
        let flushed = Lsn(resume_from.0 - 1);
        let (mut epoch, mut crc) = (0, 0);
        if flushed > Lsn::ZERO {
            let frame = self.wal.frames(flushed)?.next_frame()?.ok_or_else(|| {
                ReceiveError::Protocol(format!("no durable frame holds lsn {flushed}"))
            })?;
            epoch = frame.header.epoch.0;
            crc = frame.header.crc;
        }
        Ok(Hello {
            // A log that never held a record belongs to no cluster yet.
            cluster_id: if flushed == Lsn::ZERO {
                String::new()
            } else {
                self.membership.cluster_id()
            },
            node_id: self.membership.node_id(),
            flushed_lsn: flushed.0,
            flushed_epoch: epoch,
            flushed_frame_crc: crc,
            version: self.config.version.clone(),
            resp_addr: self.membership.resp_addr(),
            grpc_addr: self.membership.grpc_addr(),
        })
    }

    fn ack(&self) -> ReplicaMessage {
        ReplicaMessage {
            msg: Some(Out::Ack(Ack {
                written_lsn: self.wal.last_lsn().0,
                flushed_lsn: self.wal.durable_lsn().0,
                applied_lsn: self.engine.applied_lsn().0,
            })),
            crc32: 0,
        }
        .sealed()
    }

    /// One stream: connect, hello, then frames until it breaks.
    async fn session(
        &self,
        machine: &mut Machine,
        resume_from: Lsn,
        stop: &mut watch::Receiver<bool>,
    ) -> Ended {
        {
            let mut status = lock(&self.status);
            status.state = "connecting";
            status.connects += 1;
        }
        let broken = |e: ReceiveError| {
            Ended::Event(Event::Broken {
                error: e.to_string(),
            })
        };
        // The stream resumes after everything the log holds; the hello names
        // the frame ending there, which must be durable to be read back.
        if let Err(e) = self.wal.sync().await {
            return broken(ReceiveError::Wal(e));
        }
        // Every frame written was reported to the machine as it was appended.
        debug_assert_eq!(resume_from, self.wal.last_lsn().next());
        let opened = tokio::select! {
            r = tokio::time::timeout(self.config.connect_timeout, self.open(resume_from)) => r,
            _ = stop.wait_for(|&s| s) => return Ended::Stopped,
        };
        let (out_tx, mut inbound) = match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(e)) => return broken(e),
            Err(_) => {
                return broken(ReceiveError::Link(format!(
                    "no answer from {} within {:?}",
                    self.config.primary, self.config.connect_timeout
                )));
            }
        };
        let first = tokio::select! {
            r = tokio::time::timeout(self.config.connect_timeout, inbound.message()) => r.map(checked),
            _ = stop.wait_for(|&s| s) => return Ended::Stopped,
        };
        let accept = match first {
            Ok(Ok(Some(PrimaryMessage {
                msg: Some(In::Accept(accept)),
                ..
            }))) => accept,
            Ok(Ok(Some(PrimaryMessage {
                msg: Some(In::Refusal(refusal)),
                ..
            }))) => {
                lock(&self.status).last_io = Some(Instant::now());
                let reason = Reason::try_from(refusal.reason).unwrap_or(Reason::Unspecified);
                if reason == Reason::HistoryMismatch
                    && let Some(fork) = self.fork_point(&refusal.epoch_history)
                {
                    tracing::warn!(after = %fork, "this node's log forked from the primary's");
                    lock(&self.status).diverged_after = Some(fork);
                }
                tracing::warn!(primary = %self.config.primary, ?reason, message = %refusal.message, "the primary refused this node");
                return Ended::Event(Event::Refused {
                    reason,
                    message: refusal.message,
                });
            }
            Ok(Ok(Some(_))) => {
                return broken(ReceiveError::Protocol(
                    "the primary's first message is neither accept nor refusal".into(),
                ));
            }
            Ok(Ok(None)) => {
                return broken(ReceiveError::Link(
                    "the primary ended the stream at once".into(),
                ));
            }
            Ok(Err(status)) => return broken(link_status(status)),
            Err(_) => {
                return broken(ReceiveError::Link("no answer to the hello in time".into()));
            }
        };
        let ours = self.wal.epoch().0;
        if accept.epoch < ours {
            let message = format!(
                "the primary is at epoch {}, this node has records of epoch {ours}: it is a stale primary",
                accept.epoch
            );
            tracing::error!(%message, "not following the primary");
            return Ended::Event(Event::Refused {
                reason: Reason::StaleEpoch,
                message,
            });
        }
        if let Err(e) = self.check_cluster(&accept.cluster_id) {
            tracing::error!(error = %e, "not following the primary");
            return Ended::Event(Event::Refused {
                reason: Reason::OtherCluster,
                message: e.to_string(),
            });
        }
        let history: Vec<(u64, u64)> = accept
            .epoch_history
            .iter()
            .map(|t| (t.epoch, t.first_lsn))
            .collect();
        if let Err(e) = self.membership.learn_terms(&history) {
            return broken(ReceiveError::Membership(e));
        }
        machine.on_event(Event::Accepted {
            from: Lsn(accept.from_lsn),
        });
        if machine.phase() != Phase::Streaming {
            return broken(ReceiveError::Protocol(format!(
                "the primary offered lsn {}, this node asked for {resume_from}",
                accept.from_lsn
            )));
        }
        tracing::info!(primary = %self.config.primary, from = accept.from_lsn, primary_durable = accept.durable_lsn, "following the primary");
        {
            let mut status = lock(&self.status);
            status.state = if accept.durable_lsn >= resume_from.0 {
                "catchup"
            } else {
                "streaming"
            };
            status.link_up = true;
            status.down_since = None;
            status.last_io = Some(Instant::now());
            status.last_refusal = None;
            status.accepted += 1;
            status.primary_durable_lsn = Lsn(accept.durable_lsn);
            status.primary_resp_addr = accept.resp_addr.clone();
        }
        let mut ack_tick = tokio::time::interval(ACK_INTERVAL);
        ack_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut applied = self.applied.clone();
        let mut failed = self.applier_failed.clone();
        // Only a message from the primary moves the deadline: the other arms
        // (acks, applied progress) must not keep a silent link alive.
        let mut silent_until = tokio::time::Instant::now() + self.config.primary_timeout;
        loop {
            let message = tokio::select! {
                r = tokio::time::timeout_at(silent_until, inbound.message()) => r.map(checked),
                _ = ack_tick.tick() => {
                    let _ = out_tx.try_send(self.ack());
                    continue;
                }
                r = applied.changed() => {
                    if r.is_ok() {
                        let _ = out_tx.try_send(self.ack());
                        self.note_applied();
                        continue;
                    }
                    return broken(ReceiveError::Protocol("the applier stopped".into()));
                }
                r = failed.wait_for(Option::is_some) => {
                    let why = r.ok().and_then(|why| why.clone()).unwrap_or_default();
                    return broken(ReceiveError::Protocol(format!("applying failed: {why}")));
                }
                _ = stop.wait_for(|&s| s) => return Ended::Stopped,
            };
            let message = match message {
                Ok(Ok(Some(PrimaryMessage { msg: Some(m), .. }))) => m,
                Ok(Ok(Some(PrimaryMessage { msg: None, .. }))) => {
                    return broken(ReceiveError::Protocol("an empty message".into()));
                }
                Ok(Ok(None)) => {
                    return broken(ReceiveError::Link("the primary ended the stream".into()));
                }
                Ok(Err(status)) => return broken(link_status(status)),
                Err(_) => {
                    return broken(ReceiveError::Link(format!(
                        "nothing from the primary for {:?}",
                        self.config.primary_timeout
                    )));
                }
            };
            silent_until = tokio::time::Instant::now() + self.config.primary_timeout;
            lock(&self.status).last_io = Some(Instant::now());
            match message {
                In::Frames(frames) => match self.receive(machine, frames).await {
                    Ok(()) => {}
                    Err(e) => {
                        if matches!(e, ReceiveError::RejectedFrames(_)) {
                            lock(&self.status).frames_rejected += 1;
                        }
                        tracing::warn!(error = %e, "dropping the link to the primary");
                        return broken(e);
                    }
                },
                In::Heartbeat(h) => {
                    {
                        let mut status = lock(&self.status);
                        status.primary_durable_lsn =
                            status.primary_durable_lsn.max(Lsn(h.durable_lsn));
                        status.primary_lag_bytes = h.lag_bytes;
                        status.primary_lag_ms = h.lag_ms;
                    }
                    self.note_applied();
                }
                In::Accept(_) | In::Refusal(_) => {
                    return broken(ReceiveError::Protocol(
                        "a second accept or refusal on one stream".into(),
                    ));
                }
            }
        }
    }

    /// Adds the cluster token to each call (checked when the receiver
    /// started).
    fn token(&self) -> ferry_proto::auth::Attach {
        ferry_proto::auth::Attach::new(self.config.cluster_token.as_deref()).unwrap_or_default()
    }

    /// Connects to the primary.
    async fn channel(&self) -> Result<tonic::transport::Channel> {
        let endpoint = endpoint(&self.config)?
            .connect_timeout(self.config.connect_timeout)
            .tcp_nodelay(true)
            .initial_stream_window_size(RECEIVE_WINDOW_BYTES)
            .initial_connection_window_size(RECEIVE_WINDOW_BYTES);
        endpoint.connect().await.map_err(|e| {
            ReceiveError::Link(format!(
                "connecting to {}: {}",
                self.config.primary,
                ferry_proto::tls::causes(&e)
            ))
        })
    }

    /// Connects and sends the hello.
    async fn open(
        &self,
        resume_from: Lsn,
    ) -> Result<(
        mpsc::Sender<ReplicaMessage>,
        tonic::Streaming<PrimaryMessage>,
    )> {
        let link = |e: &dyn std::fmt::Display| ReceiveError::Link(e.to_string());
        let mut client = ReplicationClient::with_interceptor(self.channel().await?, self.token())
            .max_decoding_message_size(REPLICATION_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(REPLICATION_MESSAGE_BYTES_MAX);
        let (out_tx, out_rx) = mpsc::channel(ACK_QUEUE_MAX);
        let hello = self.hello(resume_from)?;
        out_tx
            .try_send(
                ReplicaMessage {
                    msg: Some(Out::Hello(hello)),
                    crc32: 0,
                }
                .sealed(),
            )
            .map_err(|e| link(&e))?;
        let response = client
            .stream(ReceiverStream::new(out_rx))
            .await
            .map_err(|s| {
                let closed = ferry_proto::tls::handshake_failed(&s.to_string());
                match link_status(s) {
                    // With TLS 1.3 the primary checks this node's
                    // certificate after the handshake seemed done: a
                    // refusal shows as the first call's connection closing.
                    ReceiveError::Link(text) if closed && self.config.tls.serves() => {
                        ReceiveError::Link(format!(
                            "{text}; over TLS this is how the primary refuses this node's certificate (not signed by its CA?)"
                        ))
                    }
                    other => other,
                }
            })?;
        Ok((out_tx, response.into_inner()))
    }

    /// Where this node's log left the primary's: the LSN before the first
    /// term the primary began whose first record this node holds with an
    /// older epoch (its frame's, or once purged, by this node's terms).
    fn fork_point(&self, history: &[ferry_proto::v1::EpochBegin]) -> Option<Lsn> {
        let last = self.wal.last_lsn();
        let ours = self.membership.epoch_history();
        let mut terms: Vec<_> = history.iter().filter(|t| t.first_lsn >= 1).collect();
        terms.sort_by_key(|t| t.first_lsn);
        for term in terms {
            let first = Lsn(term.first_lsn);
            if first > last {
                continue;
            }
            let epoch = match self.wal.frames(first).and_then(|mut r| r.next_frame()) {
                Ok(Some(frame)) => frame.header.epoch.0,
                _ => ferry_wal::epoch_at(&ours, first),
            };
            if epoch < term.epoch {
                return Some(Lsn(first.0 - 1));
            }
        }
        None
    }

    fn check_cluster(&self, primary: &str) -> Result<()> {
        let ours = self.membership.cluster_id();
        if ours.is_empty() || (ours != primary && self.wal.last_lsn() == Lsn::ZERO) {
            self.membership
                .adopt_cluster(primary)
                .map_err(ReceiveError::Membership)?;
            tracing::info!(cluster = %primary, "joined the primary's cluster");
            return Ok(());
        }
        if ours != primary {
            return Err(ReceiveError::OtherCluster {
                ours,
                primary: primary.to_string(),
            });
        }
        Ok(())
    }

    /// Checks, appends, syncs and applies one message of frames.
    async fn receive(&self, machine: &mut Machine, frames: Frames) -> Result<()> {
        let expected = self.wal.last_lsn().next();
        if frames.first_lsn != expected.0 {
            return Err(ReceiveError::RejectedFrames(format!(
                "frames start at lsn {}, the log continues at {expected}",
                frames.first_lsn
            )));
        }
        let bytes = frames.data.len() as u64;
        let checked = ferry_wal::check_frames(frames.data, self.limits)
            .map_err(|e| ReceiveError::RejectedFrames(e.to_string()))?;
        let (first, last) = (checked.first_lsn(), checked.last_lsn());
        if first != expected || last.0 != frames.last_lsn {
            return Err(ReceiveError::RejectedFrames(format!(
                "the frames hold lsn {first}..={last}, the message says {}..={}",
                frames.first_lsn, frames.last_lsn
            )));
        }
        // A term that begins in these frames (a primary upstream of a
        // cascade changed) is recorded before its records are written.
        let mut epoch = self.wal.epoch();
        let mut begun = Vec::new();
        for h in checked.headers() {
            if h.epoch > epoch {
                epoch = h.epoch;
                begun.push((h.epoch.0, h.first_lsn.0));
            }
        }
        if !begun.is_empty() {
            self.membership
                .learn_terms(&begun)
                .map_err(ReceiveError::Membership)?;
        }
        let frame_count = checked.headers().len() as u64;
        let range = self
            .wal
            .append_checked(checked)
            .await
            .map_err(|e| match e {
                ferry_wal::WalError::InvalidFrames { .. } | ferry_wal::WalError::LsnGap { .. } => {
                    ReceiveError::RejectedFrames(e.to_string())
                }
                other => ReceiveError::Wal(other),
            })?;
        // Written; the WAL syncs it in the background and the applier
        // applies it once durable.
        machine.on_event(Event::Flushed { lsn: range.last });
        let mut status = lock(&self.status);
        status.frames_received += frame_count;
        status.bytes_received += bytes;
        status.primary_durable_lsn = status.primary_durable_lsn.max(Lsn(frames.durable_lsn));
        Ok(())
    }

    /// "streaming" once the engine holds what the primary had durable.
    fn note_applied(&self) {
        let applied = *self.applied.borrow();
        let mut status = lock(&self.status);
        if status.link_up && applied >= status.primary_durable_lsn {
            status.state = "streaming";
        }
    }
}
