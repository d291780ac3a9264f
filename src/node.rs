//! A running node: its data directory, WAL, engine and write pipeline, its
//! configuration, and the counters INFO reports.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use ferry_engine::{Engine, Pipeline};
use ferry_wal::{SyncPolicy, Wal, WalOptions};

/// Default for `--proto-max-bulk-len`: 32 MiB. Smaller than Redis's 512 MB
/// because a value must fit in one WAL frame (64 MiB).
pub const PROTO_MAX_BULK_LEN_DEFAULT: usize = 32 << 20;
/// Default for `--proto-max-multibulk-len`: arguments in one request.
pub const PROTO_MAX_MULTIBULK_LEN_DEFAULT: usize = 1 << 20;
/// Default for `--client-query-buffer-limit`: unparsed bytes per client.
pub const CLIENT_QUERY_BUFFER_LIMIT_DEFAULT: usize = 96 << 20;
/// Default for `--maxclients`, as Redis.
pub const MAXCLIENTS_DEFAULT: usize = 10_000;
/// How often the active expiry sweep runs, and how many keys it deletes in
/// one go at most.
pub const EXPIRE_SWEEP_INTERVAL: Duration = Duration::from_millis(100);
pub const EXPIRE_SWEEP_KEYS_MAX: usize = 256;
/// SCAN cursors remembered (the oldest are forgotten first).
pub const SCAN_CURSORS_MAX: usize = 16_384;

/// What `ferry serve` was told.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub fsync: SyncPolicy,
    pub requirepass: Option<String>,
    pub maxclients: usize,
    pub proto_max_bulk_len: usize,
    pub proto_max_multibulk_len: usize,
    pub client_query_buffer_limit: usize,
}

/// Server-wide counters, named as in Redis's INFO.
#[derive(Debug, Default)]
pub struct Stats {
    pub total_connections_received: AtomicU64,
    pub total_commands_processed: AtomicU64,
    pub rejected_connections: AtomicU64,
    pub connected_clients: AtomicU64,
    pub expired_keys: AtomicU64,
    pub total_net_input_bytes: AtomicU64,
    pub total_net_output_bytes: AtomicU64,
}

/// What CLIENT INFO / CLIENT LIST show of a connection.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub id: u64,
    pub addr: String,
    pub laddr: String,
    pub name: Option<Bytes>,
    pub connected_at: Instant,
    pub resp: u8,
    pub last_command: String,
}

/// SCAN and HSCAN cursors: a number standing for the last key returned, as
/// clients expect numeric cursors.
#[derive(Debug, Default)]
pub struct Cursors {
    next: u64,
    positions: HashMap<u64, Bytes>,
    order: VecDeque<u64>,
}

impl Cursors {
    /// A new cursor for the position after `key`.
    pub fn save(&mut self, key: Bytes) -> u64 {
        self.next += 1;
        let id = self.next;
        self.positions.insert(id, key);
        self.order.push_back(id);
        while self.order.len() > SCAN_CURSORS_MAX {
            if let Some(old) = self.order.pop_front() {
                self.positions.remove(&old);
            }
        }
        id
    }

    pub fn get(&self, id: u64) -> Option<Bytes> {
        self.positions.get(&id).cloned()
    }
}

pub struct Node {
    pub config: Config,
    pub wal: Arc<Wal>,
    pub engine: Arc<Engine>,
    pub pipeline: Pipeline,
    pub stats: Stats,
    pub clients: Mutex<HashMap<u64, ClientInfo>>,
    pub cursors: Mutex<Cursors>,
    pub started: Instant,
    pub run_id: String,
    pub resp_port: u16,
    next_client_id: AtomicU64,
    _lock: File,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Locks the data directory: a second process on it is refused.
fn lock_data_dir(dir: &Path) -> anyhow::Result<File> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the data directory {}", dir.display()))?;
    let path = dir.join("LOCK");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "the data directory {} is in use by another ferry process",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

impl Node {
    /// Opens the data directory: locks it, recovers the WAL, opens the engine
    /// and replays what it lacks, and starts the write pipeline.
    ///
    /// # Errors
    ///
    /// A locked or unreadable data directory, a corrupt WAL, an engine that
    /// does not match its WAL.
    pub fn open(config: Config, resp_port: u16) -> anyhow::Result<Node> {
        let lock = lock_data_dir(&config.data_dir)?;
        let wal_dir = config.data_dir.join("wal");
        let options = WalOptions {
            sync_policy: config.fsync,
            ..WalOptions::default()
        };
        let wal = Wal::open(&wal_dir, options)
            .with_context(|| format!("opening the WAL in {}", wal_dir.display()))?;
        let engine_dir = config.data_dir.join("engine");
        let engine = Engine::open(&engine_dir)
            .with_context(|| format!("opening the engine in {}", engine_dir.display()))?;
        let started = Instant::now();
        let replayed = engine
            .replay(&wal)
            .context("replaying the WAL into the engine")?;
        tracing::info!(
            replayed,
            applied_lsn = %engine.applied_lsn(),
            keys = engine.key_count(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "recovered"
        );
        let (wal, engine) = (Arc::new(wal), Arc::new(engine));
        let pipeline = Pipeline::start(engine.clone(), wal.clone());
        Ok(Node {
            config,
            wal,
            engine,
            pipeline,
            stats: Stats::default(),
            clients: Mutex::new(HashMap::new()),
            cursors: Mutex::new(Cursors::default()),
            started: Instant::now(),
            run_id: run_id(),
            resp_port,
            next_client_id: AtomicU64::new(1),
            _lock: lock,
        })
    }

    pub fn next_client_id(&self) -> u64 {
        self.next_client_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// 40 hex characters, as Redis's run_id.
fn run_id() -> String {
    let seed = format!(
        "{:?}{}{:?}",
        std::time::SystemTime::now(),
        std::process::id(),
        std::thread::current().id()
    );
    let mut h = sha1_smol::Sha1::new();
    h.update(seed.as_bytes());
    h.digest().to_string()
}

/// Wall-clock time in ms since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
