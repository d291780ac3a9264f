//! A running node: its data directory, WAL, engine and write pipeline, its
//! configuration, and the counters INFO reports.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use ferry_engine::{Engine, PausePurpose, Pipeline};
use ferry_receiver::{LinkStatus, Receiver, ReceiverConfig};
use ferry_shipper::{Shipper, ShipperConfig};
use ferry_wal::{Lsn, SyncPolicy, Wal, WalOptions};
use tokio::sync::watch;

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
/// How long a switchover waits for its replica by default.
pub const SWITCHOVER_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// How often a promotion checks whether the replica has caught up.
const PROMOTE_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// What a switchover did.
#[derive(Debug, Clone)]
pub struct Switchover {
    pub new_primary: String,
    pub node_id: String,
    pub epoch: u64,
    pub first: Lsn,
}

/// A gRPC URL for `listen` (host:port as a node said it listens), with the
/// host taken from `peer` (the address its stream came from) when it
/// listens on every interface.
fn grpc_url(scheme: &str, listen: &str, peer: &str) -> String {
    let (host, port) = listen.rsplit_once(':').unwrap_or((listen, ""));
    let host = if matches!(host, "0.0.0.0" | "[::]" | "::" | "") {
        peer.rsplit_once(':').map_or(peer, |(h, _)| h)
    } else {
        host
    };
    format!("{scheme}://{host}:{port}")
}

/// What a promotion did.
#[derive(Debug, Clone, Copy)]
pub struct Promotion {
    pub epoch: u64,
    /// The first LSN of the new term.
    pub first: Lsn,
    /// With force: the LSNs the old primary had durable that were not here.
    pub lost: Option<(Lsn, Lsn)>,
}

/// How much longer `--failover-after` must be than `--min-replicas-max-lag`,
/// so an isolated primary has stopped writing before a replica promotes.
pub const FAILOVER_MARGIN: Duration = Duration::from_secs(2);
/// Default for `--min-replicas-max-lag`, in seconds, as Redis.
pub const MIN_REPLICAS_MAX_LAG_DEFAULT_SECS: u64 = 10;

/// Whether a write lease of `to_write` replicas within `max_lag_secs` runs
/// out before a replica promoted after `failover_after` may take writes, by
/// [`FAILOVER_MARGIN`]; the reason if not.
pub fn lease_fits_failover(
    to_write: usize,
    max_lag_secs: u64,
    failover_after: Option<Duration>,
) -> Result<(), String> {
    let Some(after) = failover_after.map(|a| a.as_secs()) else {
        return Ok(());
    };
    let needed = max_lag_secs.saturating_add(FAILOVER_MARGIN.as_secs());
    if to_write > 0 && max_lag_secs > 0 && after < needed {
        return Err(format!(
            "--failover-after {after} must be at least --min-replicas-max-lag ({max_lag_secs}) + {} s, so an isolated primary stops writing before a replica promotes",
            FAILOVER_MARGIN.as_secs()
        ));
    }
    Ok(())
}
/// Default for `--tcp-keepalive`, in seconds, as Redis's.
pub const TCP_KEEPALIVE_DEFAULT_SECS: u64 = 300;
/// Default for `--shutdown-timeout`, in seconds, as Redis's
/// `shutdown-timeout`: how long SHUTDOWN waits for lagging replicas.
pub const SHUTDOWN_TIMEOUT_DEFAULT_SECS: u64 = 10;
/// The longest SHUTDOWN holds writes: past its wait for the replicas, they
/// stay held through the save and the stop, up to this should either hang.
pub const SHUTDOWN_HOLD_MAX: Duration = Duration::from_secs(3600);
/// The longest FAILOVER holds writes; past it they are refused (the write
/// path stays fenced) until the failover ends.
pub const FAILOVER_HOLD_MAX: Duration = Duration::from_secs(3600);
/// How often a primary that has lost its replicas asks them whether one of
/// them leads a newer epoch.
const PEER_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long such a question may take.
const PEER_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a primary whose switchover lost its promote call midway (the
/// replica may have promoted before the call broke) asks the replica how
/// it ended: a primary now is followed, a replica still is one that did
/// not promote (writes resume), no answer leaves writes stopped.
pub const PROMOTE_OUTCOME_WAIT: Duration = Duration::from_secs(10);

/// A promote call that broke after it was sent: the replica may or may not
/// have promoted.
#[derive(Debug)]
struct PromoteOutcomeUnknown(String);

impl std::fmt::Display for PromoteOutcomeUnknown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the promote call broke off: {}", self.0)
    }
}

impl std::error::Error for PromoteOutcomeUnknown {}

/// How often a replica with `--failover-after` looks at its link.
const FAILOVER_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Default for `--repl-timeout`, in seconds.
pub const REPL_TIMEOUT_DEFAULT_SECS: u64 = 10;
/// HSCAN cursors of large hashes remembered (the oldest are forgotten
/// first).
pub const HSCAN_CURSORS_MAX: usize = 16_384;

/// The file in the data directory that keeps the node's identity and role.
pub const NODE_FILE: &str = "node.conf";

/// A marker in the data dir: the engine is being emptied and the WAL
/// started again at LSN 1 (see `Node::reset_to_empty`).
const RESET_MARKER: &str = "reset-in-progress";
/// Where a rejoin keeps the engine's state in its quarantine directory.
const QUARANTINE_ENGINE_DIR: &str = "engine-state";

/// Empties the engine and starts the WAL again at LSN 1, then removes the
/// reset marker; safe to repeat.
async fn complete_reset(data_dir: &Path, wal: &Wal, engine: &Engine) -> anyhow::Result<()> {
    engine.reset().context("emptying the engine")?;
    wal.restart_at(Lsn(1), ferry_wal::Epoch(0))
        .await
        .context("emptying the WAL")?;
    let marker = data_dir.join(RESET_MARKER);
    std::fs::remove_file(&marker).with_context(|| format!("removing {}", marker.display()))?;
    Ok(())
}

/// How often the node looks for WAL segments it may delete.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(1);

/// What `ferry serve` was told. The atomic ones CONFIG SET may change
/// while the node runs (see `commands::config_set`): read where used, a
/// change takes effect at once.
#[derive(Debug)]
pub struct Config {
    /// The file of settings the node started with (`--config`), which
    /// CONFIG REWRITE writes.
    pub config_file: Option<crate::config_file::ConfigFile>,
    pub data_dir: PathBuf,
    /// The addresses given to other nodes, when not where this one listens
    /// (`host:port`).
    pub announce_resp_addr: Option<String>,
    pub announce_grpc_addr: Option<String>,
    /// Follow this primary (a gRPC address); persisted in the data dir.
    pub replica_of: Option<String>,
    /// Whether a replica answers reads while its link is down.
    pub replica_serve_stale_data: AtomicBool,
    /// A replica drops a link on which the primary is silent this long.
    pub repl_timeout: Duration,
    /// A replica promotes itself when its primary has been unreachable this
    /// long (and it has applied all it received); `None`: never.
    pub failover_after: Option<Duration>,
    /// The write lease: a primary refuses writes when fewer than this many
    /// replicas acked within `min_replicas_max_lag_secs` (either 0: no
    /// lease, as in Redis); CONFIG SET changes both ([`Node::lease`]).
    pub min_replicas_to_write: AtomicUsize,
    pub min_replicas_max_lag_secs: AtomicU64,
    /// Seconds SHUTDOWN waits for lagging replicas, writes paused.
    pub shutdown_timeout_secs: AtomicU64,
    /// The WAL's sync policy at start (CONFIG SET appendfsync changes the
    /// WAL's, [`Wal::sync_policy`]).
    pub fsync: SyncPolicy,
    /// `--requirepass`, which CONFIG SET changes.
    pub requirepass: Password,
    /// The shared secret of the cluster's gRPC calls (see
    /// `ferry_proto::auth`).
    pub cluster_token: Option<String>,
    /// TLS on the gRPC channel (see `ferry_proto::tls`).
    pub tls: ferry_proto::tls::Tls,
    /// The bearer token scrapers of the metrics listener must send.
    pub metrics_token: Option<String>,
    /// `--maxclients`, which CONFIG SET changes (see [`fit_maxclients`]).
    pub maxclients: AtomicUsize,
    /// Microseconds from which a command enters the slow log (negative:
    /// none).
    pub slowlog_log_slower_than: AtomicI64,
    pub slowlog_max_len: AtomicU64,
    /// Entries ACL LOG keeps (`--acllog-max-len`).
    pub acllog_max_len: AtomicU64,
    /// Milliseconds from which events are noted at start (0: none; the
    /// live figure is [`crate::latency::LatencyMonitor`]'s).
    pub latency_monitor_threshold: u64,
    /// Bytes of key entries kept in memory for reads (0: none).
    pub read_cache_bytes: usize,
    /// Largest bulk string in a request (`--proto-max-bulk-len`; CONFIG
    /// SET changes it, and [`crate::commands::set_string_bytes_max`]).
    pub proto_max_bulk_len: AtomicUsize,
    pub proto_max_multibulk_len: AtomicUsize,
    pub client_query_buffer_limit: AtomicUsize,
    /// Seconds after which an idle client is closed (`--timeout`; 0:
    /// never).
    pub timeout_secs: AtomicU64,
    /// Idle seconds before TCP keepalive probes on a new client connection
    /// (`--tcp-keepalive`; 0: none).
    pub tcp_keepalive_secs: AtomicU64,
    /// The most WAL bytes a replica's slot may hold back (0: no cap).
    pub wal_retention_max_bytes: u64,
    pub wal_segment_bytes: u64,
    /// Bytes per second per snapshot transfer (0: no limit).
    pub snapshot_rate_limit: u64,
}

/// The default user's password (ferry's one user): none, or one that
/// clients must give (AUTH, HELLO AUTH) before other commands. As in Redis,
/// whether a client must authenticate is asked at each command: a client
/// that connected while no password was set stays in when one is, and one
/// that has not authenticated gets in once the password is removed.
#[derive(Debug, Default)]
pub struct Password(RwLock<Option<Arc<[u8]>>>);

impl Password {
    pub fn new(password: Option<String>) -> Password {
        let held = Password::default();
        held.set(password.as_deref().map(str::as_bytes));
        held
    }

    /// The password, if one is set.
    pub fn get(&self) -> Option<Arc<[u8]>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether clients must authenticate.
    pub fn required(&self) -> bool {
        self.0.read().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// Sets the password; `None` (or an empty one, as CONFIG SET gives it)
    /// removes it.
    pub fn set(&self, password: Option<&[u8]>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) =
            password.filter(|p| !p.is_empty()).map(Arc::from);
    }
}

/// File descriptors kept for the rest of the node beside its clients:
/// RocksDB's files, WAL segments, gRPC and metrics connections, TLS
/// handshakes.
pub const RESERVED_FDS: u64 = 256;

/// `maxclients`, as many as the open files limit allows, as Redis does:
/// the soft limit is raised toward the hard one to fit them and the
/// reserve ([`RESERVED_FDS`]). Returns how many fit (`wanted` unless the
/// limit does not allow them, else fewer, at least one).
pub fn fit_maxclients(wanted: usize) -> usize {
    let needed = wanted as u64 + RESERVED_FDS;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the limit into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return wanted;
    }
    if limit.rlim_cur >= needed {
        return wanted;
    }
    let raised = libc::rlimit {
        rlim_cur: needed.min(limit.rlim_max),
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit reads the struct it is given.
    if raised.rlim_cur > limit.rlim_cur
        && unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0
    {
        tracing::info!(
            from = limit.rlim_cur,
            to = raised.rlim_cur,
            "raised the open files limit for maxclients"
        );
        limit.rlim_cur = raised.rlim_cur;
    }
    if limit.rlim_cur >= needed {
        return wanted;
    }
    limit.rlim_cur.saturating_sub(RESERVED_FDS).max(1) as usize
}

/// Defaults of the slow log's threshold (µs) and length, as Redis's.
pub const SLOWLOG_LOG_SLOWER_THAN_DEFAULT: i64 = 10_000;
pub const SLOWLOG_MAX_LEN_DEFAULT: usize = 128;
/// Default of `--acllog-max-len`, as Redis's.
pub const ACLLOG_MAX_LEN_DEFAULT: usize = 128;
/// A failed authentication joins an entry of the ACL log made less than
/// this long before (same command, user and context), among the newest
/// [`ACL_LOG_GROUPING_SCAN`] entries, as Redis's.
const ACL_LOG_GROUPING_MS: u64 = 60_000;
const ACL_LOG_GROUPING_SCAN: usize = 10;

/// A failed authentication, as ACL LOG shows it (the only denial ferry
/// makes: its one user may run every command on every key).
#[derive(Debug, Clone)]
pub struct AclLogEntry {
    pub count: u64,
    /// `toplevel`, or `multi` inside a transaction.
    pub context: &'static str,
    /// The command, as the client wrote it (AUTH or HELLO).
    pub object: Bytes,
    pub username: Bytes,
    /// When it last happened, in ms since the Unix epoch.
    pub at_ms: u64,
    /// The client, as CLIENT INFO showed it then.
    pub client_info: String,
}

/// Arguments a slow log entry keeps (the last one then says how many more
/// there were), and bytes kept of each, as Redis's.
const SLOWLOG_ENTRY_ARGS_MAX: usize = 32;
const SLOWLOG_ARG_BYTES_MAX: usize = 128;

/// A command that ran slowly, as SLOWLOG GET shows it.
#[derive(Debug, Clone)]
pub struct SlowEntry {
    pub id: u64,
    /// When it ran, in seconds since the Unix epoch.
    pub at_secs: u64,
    pub micros: u64,
    /// Its arguments, cut as Redis cuts them, passwords redacted.
    pub args: Vec<Bytes>,
    pub addr: String,
    pub name: Bytes,
}

/// The slow log, newest entry first.
#[derive(Debug, Default)]
pub struct SlowLog {
    next_id: u64,
    entries: VecDeque<SlowEntry>,
}

impl SlowLog {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The `count` newest entries.
    pub fn newest(&self, count: usize) -> Vec<SlowEntry> {
        self.entries.iter().take(count).cloned().collect()
    }

    pub fn reset(&mut self) {
        self.entries.clear();
    }

    fn push(&mut self, entry: SlowEntry, max_len: usize) {
        self.entries.push_front(entry);
        self.entries.truncate(max_len);
    }
}

/// The arguments a slow log entry keeps of `args`: passwords (AUTH's,
/// HELLO's after AUTH) redacted, at most [`SLOWLOG_ENTRY_ARGS_MAX`] (the
/// last then counting the rest), each cut at [`SLOWLOG_ARG_BYTES_MAX`]
/// bytes with a count of the rest, as Redis keeps them.
pub fn slowlog_args(args: &[Bytes]) -> Vec<Bytes> {
    let args = redacted_args(args);
    let kept = args.len().min(SLOWLOG_ENTRY_ARGS_MAX);
    (0..kept)
        .map(|j| {
            if kept != args.len() && j == kept - 1 {
                Bytes::from(format!("... ({} more arguments)", args.len() - kept + 1))
            } else if args[j].len() > SLOWLOG_ARG_BYTES_MAX {
                let mut cut = args[j][..SLOWLOG_ARG_BYTES_MAX].to_vec();
                cut.extend_from_slice(
                    format!("... ({} more bytes)", args[j].len() - SLOWLOG_ARG_BYTES_MAX)
                        .as_bytes(),
                );
                Bytes::from(cut)
            } else {
                args[j].clone()
            }
        })
        .collect()
}

/// A command's arguments with its secrets replaced by `(redacted)`, as
/// Redis shows them in its slow log and to MONITOR: AUTH's, HELLO AUTH's
/// user and password, and the password CONFIG SET requirepass sets.
pub fn redacted_args(args: &[Bytes]) -> Vec<Bytes> {
    let redacted = Bytes::from_static(b"(redacted)");
    let mut args = args.to_vec();
    if args[0].eq_ignore_ascii_case(b"auth") {
        for a in &mut args[1..] {
            *a = redacted.clone();
        }
    } else if args[0].eq_ignore_ascii_case(b"config")
        && args.get(1).is_some_and(|a| a.eq_ignore_ascii_case(b"set"))
    {
        for pair in args[2..].chunks_mut(2) {
            if let [name, value] = pair
                && name.eq_ignore_ascii_case(b"requirepass")
            {
                *value = redacted.clone();
            }
        }
    } else if args[0].eq_ignore_ascii_case(b"hello")
        && let Some(at) = args.iter().position(|a| a.eq_ignore_ascii_case(b"auth"))
    {
        for a in args.iter_mut().skip(at + 1).take(2) {
            *a = redacted.clone();
        }
    }
    args
}

/// Lines a MONITOR client may fall behind by; past them it is
/// disconnected (its lines are built whether it reads them or not).
pub const MONITOR_BACKLOG_LINES: usize = 65_536;

/// A connection in MONITOR mode: the lines of the commands run, while it
/// lasts (counted in [`Node::monitoring`], so that nothing is built for
/// them without one).
#[derive(Debug)]
pub struct Monitor {
    pub lines: tokio::sync::broadcast::Receiver<Bytes>,
    count: Arc<AtomicU64>,
}

impl Monitor {
    pub fn new(node: &Node) -> Monitor {
        node.monitoring.fetch_add(1, Ordering::AcqRel);
        Monitor {
            lines: node.monitors.subscribe(),
            count: node.monitoring.clone(),
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A MONITOR line for a command `args` run by the client at `addr`, as
/// Redis writes it: `+secs.micros [0 addr] "arg" ...`, each argument
/// quoted and escaped.
pub fn monitor_line(addr: &str, args: &[Bytes]) -> Bytes {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let mut line = format!(
        "+{}.{:06} [0 {addr}]",
        micros / 1_000_000,
        micros % 1_000_000
    );
    for arg in redacted_args(args) {
        line.push_str(" \"");
        for &b in arg.iter() {
            match b {
                b'\\' | b'"' => {
                    line.push('\\');
                    line.push(char::from(b));
                }
                b'\n' => line.push_str("\\n"),
                b'\r' => line.push_str("\\r"),
                b'\t' => line.push_str("\\t"),
                0x07 => line.push_str("\\a"),
                0x08 => line.push_str("\\b"),
                0x20..=0x7e => line.push(char::from(b)),
                _ => line.push_str(&format!("\\x{b:02x}")),
            }
        }
        line.push('"');
    }
    line.push_str("\r\n");
    Bytes::from(line)
}

/// How often the rates of INFO's `instantaneous_*` fields are sampled.
pub const STATS_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
/// Samples the rates span (16 as Redis's: 1.6 s).
const STATS_SAMPLES: usize = 16;

/// Most error codes (an error reply's first word) counted apart in INFO
/// errorstats, as Redis's limit: later new codes count only in the total.
pub const ERROR_CODES_MAX: usize = 128;

/// Buckets of a [`LatencyHistogram`]: eight per power of two, from 1 ns to
/// the largest `u64`.
const LATENCY_BUCKETS: usize = 62 * 8;

/// How long a command took, in buckets of about 12 % (eight per power of
/// two of nanoseconds, exact below 8 ns): INFO latencystats' percentiles.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
}

impl Default for LatencyHistogram {
    fn default() -> LatencyHistogram {
        LatencyHistogram {
            buckets: (0..LATENCY_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl LatencyHistogram {
    fn bucket(nanos: u64) -> usize {
        if nanos < 8 {
            return nanos as usize;
        }
        let top = 63 - nanos.leading_zeros() as usize;
        let sub = ((nanos >> (top - 3)) & 7) as usize;
        (top - 2) * 8 + sub
    }

    /// The middle of bucket `i`, in nanoseconds.
    fn middle(i: usize) -> f64 {
        if i < 8 {
            return i as f64;
        }
        let (top, sub) = (i / 8 + 2, i % 8);
        let width = 1u64 << (top - 3);
        ((8 + sub as u64) * width) as f64 + width as f64 / 2.0
    }

    pub fn record(&self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[Self::bucket(nanos)].fetch_add(1, Ordering::Relaxed);
    }

    /// The `percents` percentiles (e.g. 50, 99, 99.9), in nanoseconds;
    /// `None` with nothing recorded.
    pub fn percentiles(&self, percents: &[f64]) -> Option<Vec<f64>> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        Some(
            percents
                .iter()
                .map(|p| {
                    // Less a hair: 99.9 % of 1000 is the 999th, not the
                    // 1000th that the float's last bit would round up to.
                    let rank = ((p / 100.0 * total as f64 - 1e-9).ceil() as u64).clamp(1, total);
                    let mut seen = 0;
                    let at = counts
                        .iter()
                        .position(|&n| {
                            seen += n;
                            seen >= rank
                        })
                        .expect("rank within the total");
                    Self::middle(at)
                })
                .collect(),
        )
    }

    /// Durations recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// Durations recorded shorter than `nanos`: exact where a bucket
    /// starts (at every power of two).
    pub fn count_below(&self, nanos: u64) -> u64 {
        self.buckets[..Self::bucket(nanos)]
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }

    fn reset(&self) {
        for b in self.buckets.iter() {
            b.store(0, Ordering::Relaxed);
        }
    }
}

/// One command's line of INFO commandstats (and latencystats).
#[derive(Debug, Default)]
pub struct CommandCounters {
    /// Runs, failed ones included.
    pub calls: AtomicU64,
    /// Time spent running it (nanoseconds: fast commands take less than a
    /// microsecond, which would count as none).
    pub nanos: AtomicU64,
    /// Refused before running (arity, authentication, a replica's
    /// READONLY...).
    pub rejected: AtomicU64,
    /// Ran and answered with an error.
    pub failed: AtomicU64,
    pub latency: LatencyHistogram,
}

/// Server-wide counters, named as in Redis's INFO.
#[derive(Debug)]
pub struct Stats {
    pub total_connections_received: AtomicU64,
    pub total_commands_processed: AtomicU64,
    pub rejected_connections: AtomicU64,
    pub connected_clients: AtomicU64,
    /// Clients waiting in a blocking command (WAIT).
    pub blocked_clients: AtomicU64,
    pub expired_keys: AtomicU64,
    pub total_net_input_bytes: AtomicU64,
    pub total_net_output_bytes: AtomicU64,
    /// Reads of a key for a client that found it, or did not (as Redis
    /// counts its lookups for reading: GET and the other read commands,
    /// and the reads of GETSET, GETDEL, GETEX and SET with GET).
    pub keyspace_hits: AtomicU64,
    pub keyspace_misses: AtomicU64,
    /// Replies that were errors.
    pub total_error_replies: AtomicU64,
    /// The largest resident set size sampled.
    pub used_memory_peak: AtomicU64,
    /// SIGHUP reloads of the TLS files that took, and that were refused.
    pub tls_reloads: AtomicU64,
    pub tls_reload_failures: AtomicU64,
    /// TLS handshakes that failed or timed out, on the gRPC, RESP and
    /// metrics listeners.
    pub tls_handshake_failures: AtomicU64,
    /// Clients closed for a query buffer over `client-query-buffer-limit`,
    /// and for replies over their `client-output-buffer-limit` (as Redis
    /// 7.2 counts them; subscribers closed for their messages are
    /// [`crate::pubsub::PubSubFigures::closed`], since `pubsub_closed_base`).
    pub client_query_buffer_limit_disconnections: AtomicU64,
    pub client_output_buffer_limit_disconnections: AtomicU64,
    pub pubsub_closed_base: AtomicU64,
    rates: Mutex<VecDeque<RateSample>>,
    /// By [`crate::commands::stat_names`].
    pub commands: Box<[CommandCounters]>,
    /// Error replies by code, in the order the codes first appeared.
    errors: Mutex<Vec<(String, u64)>>,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            total_connections_received: AtomicU64::default(),
            total_commands_processed: AtomicU64::default(),
            rejected_connections: AtomicU64::default(),
            connected_clients: AtomicU64::default(),
            blocked_clients: AtomicU64::default(),
            expired_keys: AtomicU64::default(),
            total_net_input_bytes: AtomicU64::default(),
            total_net_output_bytes: AtomicU64::default(),
            keyspace_hits: AtomicU64::default(),
            keyspace_misses: AtomicU64::default(),
            total_error_replies: AtomicU64::default(),
            used_memory_peak: AtomicU64::default(),
            tls_reloads: AtomicU64::default(),
            tls_reload_failures: AtomicU64::default(),
            tls_handshake_failures: AtomicU64::default(),
            client_query_buffer_limit_disconnections: AtomicU64::default(),
            client_output_buffer_limit_disconnections: AtomicU64::default(),
            pubsub_closed_base: AtomicU64::default(),
            rates: Mutex::default(),
            commands: crate::commands::stat_names()
                .iter()
                .map(|_| CommandCounters::default())
                .collect(),
            errors: Mutex::default(),
        }
    }
}

/// The counters behind the rates, at one moment.
#[derive(Debug, Clone, Copy)]
struct RateSample {
    at: Instant,
    commands: u64,
    input_bytes: u64,
    output_bytes: u64,
}

/// INFO's `instantaneous_*` fields: over the last samples.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    pub ops_per_sec: u64,
    pub input_kbps: f64,
    pub output_kbps: f64,
}

impl Stats {
    /// Counts reads of keys for a client: `hits` found, `misses` not.
    pub fn lookups(&self, hits: u64, misses: u64) {
        if hits > 0 {
            self.keyspace_hits.fetch_add(hits, Ordering::Relaxed);
        }
        if misses > 0 {
            self.keyspace_misses.fetch_add(misses, Ordering::Relaxed);
        }
    }

    /// Each command's counters with its name in INFO commandstats.
    pub fn per_command(&self) -> impl Iterator<Item = (&'static str, &CommandCounters)> {
        crate::commands::stat_names()
            .iter()
            .map(String::as_str)
            .zip(self.commands.iter())
    }

    /// A command that ran (at `slot` of [`crate::commands::stat_names`]),
    /// for `took`, and whether it answered with an error.
    pub fn command_ran(&self, slot: Option<usize>, took: Duration, failed: bool) {
        // Only commands that ran, as Redis counts them (not one refused
        // before it ran, nor one queued in a transaction until EXEC).
        self.total_commands_processed
            .fetch_add(1, Ordering::Relaxed);
        let Some(c) = slot.and_then(|i| self.commands.get(i)) else {
            return;
        };
        c.calls.fetch_add(1, Ordering::Relaxed);
        c.nanos.fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        c.latency.record(took);
        if failed {
            c.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A command refused before it ran.
    pub fn command_rejected(&self, slot: Option<usize>) {
        if let Some(c) = slot.and_then(|i| self.commands.get(i)) {
            c.rejected.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An error reply: counted in the total and by its code (the first
    /// word), up to [`ERROR_CODES_MAX`] codes.
    pub fn error_reply(&self, text: &str) {
        self.total_error_replies.fetch_add(1, Ordering::Relaxed);
        let code = text.split(' ').next().unwrap_or_default();
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, n)) = errors.iter_mut().find(|(c, _)| c == code) {
            *n += 1;
        } else if errors.len() < ERROR_CODES_MAX {
            errors.push((code.to_string(), 1));
        }
    }

    /// Error replies by code.
    pub fn error_codes(&self) -> Vec<(String, u64)> {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Takes a sample of the counters behind the rates, and of the
    /// resident set size for the peak (called every
    /// [`STATS_SAMPLE_INTERVAL`]).
    pub fn sample(&self, rss_bytes: u64) {
        self.used_memory_peak
            .fetch_max(rss_bytes, Ordering::Relaxed);
        let sample = RateSample {
            at: Instant::now(),
            commands: self.total_commands_processed.load(Ordering::Relaxed),
            input_bytes: self.total_net_input_bytes.load(Ordering::Relaxed),
            output_bytes: self.total_net_output_bytes.load(Ordering::Relaxed),
        };
        let mut rates = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        if rates.len() > STATS_SAMPLES {
            rates.pop_front();
        }
        rates.push_back(sample);
    }

    /// The rates between the oldest sample kept and the newest (zero until
    /// there are two).
    pub fn rates(&self) -> Rates {
        let rates = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        let (Some(first), Some(last)) = (rates.front(), rates.back()) else {
            return Rates::default();
        };
        let secs = last.at.duration_since(first.at).as_secs_f64();
        if secs <= 0.0 {
            return Rates::default();
        }
        // Counters may have been reset in between (CONFIG RESETSTAT).
        let per_sec = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
        Rates {
            ops_per_sec: per_sec(first.commands, last.commands).round() as u64,
            input_kbps: per_sec(first.input_bytes, last.input_bytes) / 1024.0,
            output_kbps: per_sec(first.output_bytes, last.output_bytes) / 1024.0,
        }
    }

    /// CONFIG RESETSTAT: the counters Redis resets.
    pub fn reset(&self, rss_bytes: u64) {
        for c in [
            &self.total_commands_processed,
            &self.total_connections_received,
            &self.rejected_connections,
            &self.expired_keys,
            &self.total_net_input_bytes,
            &self.total_net_output_bytes,
            &self.keyspace_hits,
            &self.keyspace_misses,
            &self.total_error_replies,
            &self.client_query_buffer_limit_disconnections,
            &self.client_output_buffer_limit_disconnections,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        for c in self.commands.iter() {
            for n in [&c.calls, &c.nanos, &c.rejected, &c.failed] {
                n.store(0, Ordering::Relaxed);
            }
            c.latency.reset();
        }
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.used_memory_peak.store(rss_bytes, Ordering::Relaxed);
        self.rates.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// What CLIENT INFO / CLIENT LIST show of a connection.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub id: u64,
    pub addr: String,
    pub laddr: String,
    pub name: Option<Bytes>,
    pub lib_name: Option<Bytes>,
    pub lib_ver: Option<Bytes>,
    pub connected_at: Instant,
    pub resp: u8,
    pub last_command: String,
    /// What changes with every request, updated without the list's lock.
    pub activity: Arc<Activity>,
}

/// The parts of a connection's CLIENT LIST line that change with every
/// request: atomics its connection sets after each batch it reads.
#[derive(Debug)]
pub struct Activity {
    /// When it last sent a request: ms since it connected.
    pub last_ms: AtomicU64,
    /// Commands queued in its transaction; -1 outside MULTI.
    pub multi: AtomicI64,
    /// Bytes of the commands queued in its transaction (`multi-mem`).
    pub multi_mem: AtomicU64,
    /// Bytes read and not yet parsed (`qbuf`: a request in part), and the
    /// room left in the buffer they are read into (`qbuf-free`).
    pub qbuf: AtomicU64,
    pub qbuf_free: AtomicU64,
    /// Reply bytes not yet written to the socket (`omem`, with `events=rw`):
    /// more than a moment's worth only while the client is slow to read.
    pub omem: AtomicU64,
    /// The reply buffer's size, written or not.
    pub obuf_bytes: AtomicU64,
    /// Set by CLIENT KILL: the connection runs nothing more and closes.
    pub killed: AtomicBool,
    /// A MONITOR client, a subscriber, or one in WAIT: never idle
    /// (`--timeout`).
    pub idle_exempt: AtomicBool,
    /// CLIENT TRACKING is on (`flags=t`, `redir=0`), with REDIRECT to
    /// this client (`redir=<id>`; 0: none).
    pub tracking: AtomicBool,
    pub redirect: AtomicI64,
    /// It speaks RESP3 (after HELLO 3): only then is it pushed
    /// invalidations ([`crate::tracking`]).
    pub resp3: AtomicBool,
    /// Its channels, patterns and shard channels (`sub`, `psub`, `ssub`).
    pub subscriptions: [AtomicU64; 3],
    /// Wakes the connection's WAIT when it is killed.
    pub kill: tokio::sync::Notify,
    /// The connection's socket (CLIENT LIST's `fd`).
    pub fd: std::os::fd::RawFd,
}

impl Activity {
    pub fn new(fd: std::os::fd::RawFd) -> Activity {
        Activity {
            last_ms: AtomicU64::new(0),
            multi: AtomicI64::new(-1),
            multi_mem: AtomicU64::new(0),
            qbuf: AtomicU64::new(0),
            qbuf_free: AtomicU64::new(0),
            omem: AtomicU64::new(0),
            obuf_bytes: AtomicU64::new(0),
            killed: AtomicBool::new(false),
            idle_exempt: AtomicBool::new(false),
            tracking: AtomicBool::new(false),
            redirect: AtomicI64::new(0),
            resp3: AtomicBool::new(false),
            subscriptions: Default::default(),
            kill: tokio::sync::Notify::new(),
            fd,
        }
    }

    /// Whether it has subscriptions (`flags=P`, Redis's `pubsub` type).
    pub fn is_subscriber(&self) -> bool {
        self.subscriptions
            .iter()
            .any(|n| n.load(Ordering::Relaxed) > 0)
    }

    /// Whether CLIENT KILL (or a limit) closed it.
    pub fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }

    /// CLIENT KILL. The caller holds the client list's lock, and the
    /// connection's entry is still in it (or the tracking or Pub/Sub
    /// table's, which the connection also leaves before it closes): its
    /// socket is open, so `fd` is its own.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        // A permit if the connection is not waiting now: its next wait ends.
        self.kill.notify_one();
        // Its read ends and its write fails at once, over TLS too, without
        // the connection watching for the kill on every request.
        // SAFETY: shutdown takes a descriptor and changes no memory; on one
        // that is not a socket it only fails.
        unsafe {
            libc::shutdown(self.fd, libc::SHUT_RDWR);
        }
    }
}

/// HSCAN cursors of large hashes: a number standing for the last field
/// returned, as clients expect numeric cursors.
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
        while self.order.len() > HSCAN_CURSORS_MAX {
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

/// Who the node is and whom it follows, as kept in [`NODE_FILE`]:
///
/// ```text
/// cluster_id=<hex>     the data's cluster; empty until a new replica syncs
/// node_id=<hex>        this node, for ever
/// replica_of=<url>     the primary followed; absent on a primary
/// replica_of_flag=<url> the --replica-of a start applied last: the same
///                      flag at a later start leaves the role as it is now
///                      (a promotion since stands)
/// epochs=<e>:<lsn>,... the terms this node began by promotion
/// learned=<e>:<lsn>,.. the terms of its log that other nodes began (from
///                      its primaries' histories and the frames it received)
/// epoch_max=<e>        the highest epoch ever known here (epochs are never
///                      reused, even after the terms past a fork are dropped)
/// ```
///
/// The file is replaced atomically, so a promotion (role and new epoch)
/// takes effect whole or not at all.
#[derive(Debug)]
pub struct Identity {
    path: PathBuf,
    node_id: String,
    resp_addr: String,
    grpc_addr: String,
    state: Mutex<IdentityState>,
    /// `state.replica_of.is_some()`, read on every write command.
    replica: std::sync::atomic::AtomicBool,
    /// A newer epoch a replica showed this node (0: none): a primary that
    /// sees one is stale and takes no more writes.
    newer_epoch_seen: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Clone, Default)]
struct IdentityState {
    cluster_id: String,
    replica_of: Option<String>,
    /// The `--replica-of` a start applied last.
    replica_of_flag: Option<String>,
    /// The terms this node started as a primary: (epoch, first LSN).
    epochs: Vec<(u64, u64)>,
    /// The terms of its log that other nodes started.
    learned: Vec<(u64, u64)>,
    epoch_max: u64,
}

fn parse_terms(path: &Path, value: &str, into: &mut Vec<(u64, u64)>) -> anyhow::Result<()> {
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let parsed = item
            .split_once(':')
            .and_then(|(e, l)| Some((e.parse().ok()?, l.parse().ok()?)));
        let Some(pair) = parsed else {
            anyhow::bail!("{}: a bad epoch entry {item:?}", path.display());
        };
        into.push(pair);
    }
    Ok(())
}

fn format_terms(terms: &[(u64, u64)]) -> String {
    terms
        .iter()
        .map(|(e, l)| format!("{e}:{l}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl Identity {
    fn load(dir: &Path, resp_addr: String, grpc_addr: String) -> anyhow::Result<Option<Identity>> {
        let path = dir.join(NODE_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let (mut node_id, mut state) = (String::new(), IdentityState::default());
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                anyhow::bail!("{}: a line without '=': {line:?}", path.display());
            };
            match key.trim() {
                "cluster_id" => state.cluster_id = value.trim().to_string(),
                "node_id" => node_id = value.trim().to_string(),
                "replica_of" => state.replica_of = Some(value.trim().to_string()),
                "replica_of_flag" => state.replica_of_flag = Some(value.trim().to_string()),
                "epochs" => parse_terms(&path, value, &mut state.epochs)?,
                "learned" => parse_terms(&path, value, &mut state.learned)?,
                "epoch_max" => {
                    state.epoch_max = value.trim().parse().with_context(|| {
                        format!("{}: a bad epoch_max {value:?}", path.display())
                    })?;
                }
                other => anyhow::bail!("{}: unknown key {other:?}", path.display()),
            }
        }
        anyhow::ensure!(!node_id.is_empty(), "{} has no node_id", path.display());
        Ok(Some(Identity {
            path,
            node_id,
            resp_addr,
            grpc_addr,
            replica: std::sync::atomic::AtomicBool::new(state.replica_of.is_some()),
            state: Mutex::new(state),
            newer_epoch_seen: AtomicU64::new(0),
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, IdentityState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the file durably: a temporary file, synced, renamed, and the
    /// directory synced.
    fn save(&self, state: &IdentityState) -> anyhow::Result<()> {
        let mut text = format!(
            "# ferry node identity and role, written by ferry\ncluster_id={}\nnode_id={}\n",
            state.cluster_id, self.node_id
        );
        if let Some(primary) = &state.replica_of {
            text.push_str(&format!("replica_of={primary}\n"));
        }
        if let Some(flag) = &state.replica_of_flag {
            text.push_str(&format!("replica_of_flag={flag}\n"));
        }
        if !state.epochs.is_empty() {
            text.push_str(&format!("epochs={}\n", format_terms(&state.epochs)));
        }
        if !state.learned.is_empty() {
            text.push_str(&format!("learned={}\n", format_terms(&state.learned)));
        }
        if state.epoch_max > 0 {
            text.push_str(&format!("epoch_max={}\n", state.epoch_max));
        }
        crate::config_file::write_atomically(&self.path, &text)
            .with_context(|| format!("writing {}", self.path.display()))
    }

    fn update(&self, f: impl FnOnce(&mut IdentityState)) -> anyhow::Result<()> {
        let mut state = self.state();
        let mut next = state.clone();
        f(&mut next);
        self.save(&next)?;
        self.replica
            .store(next.replica_of.is_some(), Ordering::Release);
        *state = next;
        Ok(())
    }

    pub fn cluster_id(&self) -> String {
        self.state().cluster_id.clone()
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn replica_of(&self) -> Option<String> {
        self.state().replica_of.clone()
    }

    /// A newer epoch a replica showed this node, if any.
    pub fn newer_epoch_seen(&self) -> Option<u64> {
        Some(self.newer_epoch_seen.load(Ordering::Acquire)).filter(|&e| e > 0)
    }

    /// The highest epoch this node began.
    pub fn last_epoch(&self) -> u64 {
        self.state()
            .epochs
            .iter()
            .map(|&(e, _)| e)
            .max()
            .unwrap_or(0)
    }

    /// The highest epoch this node knows of, begun here or elsewhere, now or
    /// before a fork: a new term takes a higher one.
    pub fn highest_epoch(&self) -> u64 {
        let state = self.state();
        state
            .epochs
            .iter()
            .chain(&state.learned)
            .map(|&(e, _)| e)
            .max()
            .unwrap_or(0)
            .max(state.epoch_max)
    }

    /// The terms of this node's log, begun here or by the primaries it
    /// followed, by first LSN: (epoch, first LSN).
    pub fn history(&self) -> Vec<(u64, u64)> {
        let state = self.state();
        // One entry per epoch (a term both begun here and learned back is
        // the same term).
        let by_epoch: std::collections::BTreeMap<u64, u64> =
            state.epochs.iter().chain(&state.learned).copied().collect();
        let mut all: Vec<(u64, u64)> = by_epoch.into_iter().collect();
        all.sort_by_key(|&(e, l)| (l, e));
        all
    }

    /// Records terms other nodes began that this node's log holds or will.
    fn learn(&self, terms: &[(u64, u64)]) -> anyhow::Result<()> {
        let fresh: Vec<(u64, u64)> = {
            let state = self.state();
            terms
                .iter()
                .filter(|(e, _)| !state.epochs.iter().chain(&state.learned).any(|t| t.0 == *e))
                .copied()
                .collect()
        };
        if fresh.is_empty() {
            return Ok(());
        }
        tracing::info!(terms = %format_terms(&fresh), "learned terms of the primary's history");
        self.update(|s| s.learned.extend(fresh))
    }

    /// Drops the terms that began after `fork` (this node's log no longer
    /// holds them), remembering the highest epoch so it is never reused.
    fn forget_terms_after(&self, fork: Lsn) -> anyhow::Result<()> {
        let highest = self.highest_epoch();
        self.update(|s| {
            s.epoch_max = highest;
            s.epochs.retain(|&(_, l)| l <= fork.0);
            s.learned.retain(|&(_, l)| l <= fork.0);
        })
    }
}

impl ferry_shipper::Membership for Identity {
    fn cluster_id(&self) -> String {
        Identity::cluster_id(self)
    }

    fn node_id(&self) -> String {
        self.node_id.clone()
    }

    fn epoch_history(&self) -> Vec<(u64, u64)> {
        self.history()
    }

    fn resp_addr(&self) -> String {
        self.resp_addr.clone()
    }

    fn saw_newer_epoch(&self, epoch: u64) {
        let before = self.newer_epoch_seen.fetch_max(epoch, Ordering::AcqRel);
        if before < epoch {
            tracing::error!(
                epoch,
                "a replica has records of a newer epoch: this node is a stale primary and takes no more writes"
            );
        }
    }
}

impl ferry_receiver::Membership for Identity {
    fn cluster_id(&self) -> String {
        Identity::cluster_id(self)
    }

    fn node_id(&self) -> String {
        self.node_id.clone()
    }

    fn resp_addr(&self) -> String {
        self.resp_addr.clone()
    }

    fn grpc_addr(&self) -> String {
        self.grpc_addr.clone()
    }

    fn adopt_cluster(&self, cluster_id: &str) -> Result<(), String> {
        self.update(|s| s.cluster_id = cluster_id.to_string())
            .map_err(|e| format!("{e:#}"))
    }

    fn learn_terms(&self, terms: &[(u64, u64)]) -> Result<(), String> {
        self.learn(terms).map_err(|e| format!("{e:#}"))
    }

    fn epoch_history(&self) -> Vec<(u64, u64)> {
        self.history()
    }
}

/// 20 random-looking bytes as 40 hex characters.
fn new_id(salt: &str) -> String {
    let seed = format!(
        "{salt}{:?}{}{:?}",
        std::time::SystemTime::now(),
        std::process::id(),
        Instant::now()
    );
    let mut h = sha1_smol::Sha1::new();
    h.update(seed.as_bytes());
    h.digest().to_string()
}

pub struct Node {
    pub config: Config,
    pub identity: Arc<Identity>,
    pub shipper: Arc<Shipper>,
    /// Set while the node follows a primary.
    receiver: Mutex<Option<Receiver>>,
    /// One role change at a time.
    role_change: tokio::sync::Mutex<()>,
    /// Records set aside in quarantine logs since start.
    pub quarantined_records: AtomicU64,
    stop: watch::Sender<bool>,
    pub wal: Arc<Wal>,
    pub engine: Arc<Engine>,
    pub pipeline: Pipeline,
    pub stats: Stats,
    pub clients: Mutex<HashMap<u64, ClientInfo>>,
    pub slowlog: Mutex<SlowLog>,
    /// ACL LOG, newest first.
    pub acl_log: Mutex<VecDeque<AclLogEntry>>,
    pub latency: Arc<crate::latency::LatencyMonitor>,
    /// SAVE's and BGSAVE's state.
    pub saves: Arc<Mutex<Saves>>,
    /// The lines of MONITOR, and how many connections read them.
    pub monitors: tokio::sync::broadcast::Sender<Bytes>,
    /// CLIENT TRACKING's clients and the keys they read.
    pub tracking: Arc<crate::tracking::Tracking>,
    /// Pub/Sub's subscribers.
    pub pubsub: Arc<crate::pubsub::PubSub>,
    /// Keyspace notifications' setting.
    pub notify: Arc<crate::notify::Notify>,
    pub monitoring: Arc<AtomicU64>,
    /// Set by SHUTDOWN: the node stops as on SIGTERM.
    shutdown_requested: watch::Sender<bool>,
    /// While a SHUTDOWN waits for its replicas: SHUTDOWN ABORT ends it.
    shutdown_waiting: Mutex<Option<watch::Sender<bool>>>,
    /// Until when that SHUTDOWN waits (INFO's `shutdown_in_milliseconds`).
    shutdown_deadline: Mutex<Option<Instant>>,
    /// While a FAILOVER runs: FAILOVER ABORT ends its wait.
    failover: Mutex<Option<watch::Sender<bool>>>,
    /// A switchover has asked its replica to promote and awaits the answer
    /// (INFO's `master_failover_state:failover-in-progress`).
    pub switchover_promoting: AtomicBool,
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
pub fn lock_data_dir(dir: &Path) -> anyhow::Result<File> {
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
    pub async fn open(
        config: Config,
        resp_addr: std::net::SocketAddr,
        grpc_addr: std::net::SocketAddr,
    ) -> anyhow::Result<Node> {
        let resp_port = resp_addr.port();
        let lock = lock_data_dir(&config.data_dir)?;
        let wal_dir = config.data_dir.join("wal");
        let options = WalOptions {
            sync_policy: config.fsync,
            segment_bytes_max: config.wal_segment_bytes,
            ..WalOptions::default()
        };
        let wal = Wal::open(&wal_dir, options)
            .with_context(|| format!("opening the WAL in {}", wal_dir.display()))?;
        let engine_dir = config.data_dir.join("engine");
        // A snapshot whose install a crash interrupted is completed first.
        let staging =
            ferry_receiver::Staging::new(config.data_dir.join(ferry_receiver::BOOTSTRAP_DIR));
        ferry_receiver::bootstrap::finish_engine_swap(&staging, &engine_dir)
            .context("completing the install of a snapshot")?;
        let engine = Engine::open_with(&engine_dir, config.read_cache_bytes)
            .with_context(|| format!("opening the engine in {}", engine_dir.display()))?;
        let (wal, engine) = (Arc::new(wal), Arc::new(engine));
        // ... and then its log.
        if let Some(last) = ferry_receiver::bootstrap::finish_install(&staging, &wal, &engine)
            .await
            .context("completing the install of a snapshot")?
        {
            tracing::warn!(last_lsn = %last, "completed the install of a snapshot a restart interrupted");
        }
        if config.data_dir.join(RESET_MARKER).exists() {
            tracing::warn!("completing a reset a restart interrupted (a rejoin)");
            complete_reset(&config.data_dir, &wal, &engine).await?;
        }
        // Power lost under `everysec` or `no`: the WAL's unsynced tail is
        // gone, while the engine (whose flushes the WAL's syncs do not
        // order) kept some of those records. Its state is whole up to its
        // applied LSN (each applied batch is one RocksDB write with it):
        // the log starts again after it, so nothing the engine holds is
        // taken back; replicas, which only ever got synced frames, are
        // behind that point and take a snapshot.
        let (applied, last) = (engine.applied_lsn(), wal.last_lsn());
        if applied > last {
            tracing::warn!(
                engine_applied_lsn = %applied,
                wal_last_lsn = %last,
                "the WAL ends before the engine's state (its unsynced tail was lost, a power loss): it starts again after the engine's applied LSN"
            );
            wal.restart_at(applied.next(), wal.epoch())
                .await
                .context("starting the WAL again after the engine's state")?;
        }
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
        let resp_addr =
            (config.announce_resp_addr.clone()).unwrap_or_else(|| resp_addr.to_string());
        let grpc_addr =
            (config.announce_grpc_addr.clone()).unwrap_or_else(|| grpc_addr.to_string());
        let identity = match Identity::load(&config.data_dir, resp_addr.clone(), grpc_addr.clone())?
        {
            Some(identity) => identity,
            None => {
                let identity = Identity {
                    path: config.data_dir.join(NODE_FILE),
                    node_id: new_id("node"),
                    resp_addr,
                    grpc_addr,
                    state: Mutex::new(IdentityState::default()),
                    replica: std::sync::atomic::AtomicBool::new(false),
                    newer_epoch_seen: AtomicU64::new(0),
                };
                // A new replica takes its primary's cluster id when it first
                // syncs; a primary (or a node with data) starts a cluster.
                let cluster_id = if config.replica_of.is_some() && wal.last_lsn() == Lsn::ZERO {
                    String::new()
                } else {
                    new_id("cluster")
                };
                identity.update(|s| s.cluster_id = cluster_id)?;
                identity
            }
        };
        // A --replica-of is applied once: given again at a later start, it
        // leaves the role the node has now (a promotion, or another primary
        // followed since, stands, as Redis keeps a role CONFIG REWRITE
        // wrote); a different one is applied.
        if let Some(primary) = &config.replica_of {
            let applied = identity.state().replica_of_flag.clone();
            let now = identity.replica_of();
            // The same primary in another scheme (TLS turned on) is the
            // same flag.
            let place = |url: &str| url.split_once("://").map_or(url, |(_, r)| r).to_string();
            if applied.as_deref().map(place) != Some(place(primary)) {
                identity.update(|s| {
                    s.replica_of = Some(primary.clone());
                    s.replica_of_flag = Some(primary.clone());
                })?;
            } else if now.as_deref() != Some(primary) {
                tracing::warn!(
                    flag = %primary,
                    now = now.as_deref().unwrap_or("primary"),
                    "--replica-of names the primary this node was told to follow at an earlier start; its role changed since, and stands (give another primary, or REPLICAOF, to change it)"
                );
            }
        }
        let identity = Arc::new(identity);
        let latency = Arc::new(crate::latency::LatencyMonitor::new(
            config.latency_monitor_threshold,
        ));
        if latency.enabled() {
            let hook = latency.clone();
            let hook: ferry_wal::LatencyHook = Arc::new(move |event, took| hook.note(event, took));
            wal.set_latency_hook(hook.clone());
            engine.set_latency_hook(hook);
        }
        let pubsub = Arc::new(crate::pubsub::PubSub::default());
        let tracking = Arc::new(crate::tracking::Tracking::new(pubsub.clone()));
        let notify = Arc::new(crate::notify::Notify::default());
        engine.set_change_listener(Arc::new(crate::pubsub::Listener {
            tracking: tracking.clone(),
            pubsub: pubsub.clone(),
            notify: notify.clone(),
        }));
        let pipeline = Pipeline::start(engine.clone(), wal.clone());
        // The records are logged and may be shipped: the node stops at
        // once, as after a crash, without answering their writes (their
        // outcome is unknown to their clients; a restart replays them),
        // rather than serve a state its log and its replicas do not hold.
        pipeline.on_apply_failure(Box::new(|why| {
            tracing::error!(
                error = why,
                "durable records could not be applied to the engine; stopping the node (a restart replays them from the WAL)"
            );
            std::process::abort();
        }));
        let (stop, stop_rx) = watch::channel(false);
        let shipper = Arc::new(Shipper::new(
            wal.clone(),
            engine.clone(),
            identity.clone(),
            ShipperConfig {
                replica_timeout: config.repl_timeout,
                wal_retention_max_bytes: config.wal_retention_max_bytes,
                snapshot_rate_limit: config.snapshot_rate_limit,
                ..ShipperConfig::default()
            },
            &config.data_dir,
            stop_rx,
        )?);
        Ok(Node {
            config,
            identity,
            shipper,
            receiver: Mutex::new(None),
            role_change: tokio::sync::Mutex::new(()),
            quarantined_records: AtomicU64::new(0),
            stop,
            wal,
            engine,
            pipeline,
            stats: Stats::default(),
            clients: Mutex::new(HashMap::new()),
            slowlog: Mutex::default(),
            acl_log: Mutex::default(),
            latency,
            saves: Arc::new(Mutex::new(Saves {
                last_save_secs: now_ms() / 1000,
                in_progress: false,
                last_ok: true,
                count: 0,
                ended: watch::Sender::new(0),
            })),
            monitors: tokio::sync::broadcast::channel(MONITOR_BACKLOG_LINES).0,
            tracking,
            pubsub,
            notify,
            monitoring: Arc::new(AtomicU64::new(0)),
            shutdown_requested: watch::Sender::new(false),
            shutdown_waiting: Mutex::new(None),
            shutdown_deadline: Mutex::new(None),
            failover: Mutex::new(None),
            switchover_promoting: AtomicBool::new(false),
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

    /// Takes up the role kept in the data directory: a replica starts
    /// following its primary.
    ///
    /// # Errors
    ///
    /// As [`Node::replicate_from`].
    pub async fn start_role(&self) -> anyhow::Result<()> {
        match self.identity.replica_of() {
            Some(primary) => {
                // A primary kept from before TLS was turned on (or off) is
                // reached in the scheme the node now calls in; one given
                // by --replica-of is taken as given.
                let scheme = self.config.tls.scheme();
                let primary = match primary.split_once("://") {
                    Some((old @ ("http" | "https"), rest))
                        if old != scheme
                            && self.config.replica_of.as_deref() != Some(primary.as_str()) =>
                    {
                        let now = format!("{scheme}://{rest}");
                        tracing::warn!(kept = %primary, now = %now, "the primary kept in the data directory is reached over the node's TLS settings");
                        now
                    }
                    _ => primary,
                };
                self.replicate_from(primary).await?;
            }
            None => self.begin_term().await?,
        }
        Ok(())
    }

    /// Notes a command that ran for `took` in the slow log if it ran long
    /// enough (`--slowlog-log-slower-than`); `conn` is the client's id and
    /// name.
    pub fn slow_command(&self, conn: (u64, Option<&Bytes>), args: &[Bytes], took: Duration) {
        let threshold = self.config.slowlog_log_slower_than.load(Ordering::Relaxed);
        let micros = took.as_micros() as u64;
        if threshold < 0 || micros < threshold as u64 {
            return;
        }
        let addr = self
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&conn.0)
            .map(|c| c.addr.clone())
            .unwrap_or_default();
        let mut log = self.slowlog.lock().unwrap_or_else(|e| e.into_inner());
        let id = log.next_id;
        log.next_id += 1;
        let entry = SlowEntry {
            id,
            at_secs: now_ms() / 1000,
            micros,
            args: slowlog_args(args),
            addr,
            name: conn.1.cloned().unwrap_or_default(),
        };
        log.push(
            entry,
            self.config.slowlog_max_len.load(Ordering::Relaxed) as usize,
        );
    }

    /// Notes a failed authentication in the ACL log: a new entry, or one
    /// alike of the last minute counted again and moved to the front, as
    /// Redis's; a new one pushes the oldest past `--acllog-max-len` out.
    pub fn log_auth_failure(&self, mut entry: AclLogEntry) {
        let max = self.config.acllog_max_len.load(Ordering::Relaxed) as usize;
        let mut log = self.acl_log.lock().unwrap_or_else(|e| e.into_inner());
        let alike = log.iter().take(ACL_LOG_GROUPING_SCAN).position(|old| {
            old.context == entry.context
                && old.object == entry.object
                && old.username == entry.username
                && entry.at_ms.saturating_sub(old.at_ms) <= ACL_LOG_GROUPING_MS
        });
        match alike {
            Some(at) => {
                let old = log.remove(at).expect("found");
                entry.count = old.count + 1;
                log.push_front(entry);
            }
            // Cut only as a new entry comes, as in Redis.
            None => {
                log.push_front(entry);
                log.truncate(max);
            }
        }
    }

    /// SAVE: everything written so far made durable and put in the
    /// engine's files (a sync of the WAL, then a flush of RocksDB's
    /// memtables), so that a restart replays none of it.
    ///
    /// # Errors
    ///
    /// A BGSAVE is under way, or the sync or the flush failed (the text of
    /// the error reply).
    pub async fn save(&self) -> Result<(), String> {
        begin_save(&self.saves)?;
        // A task of its own, so that the save ends (and says so) even if
        // the connection that asked is gone.
        let save = tokio::spawn(persist_all(
            self.wal.clone(),
            self.engine.clone(),
            self.saves.clone(),
        ));
        save.await
            .unwrap_or(false)
            .then_some(())
            .ok_or_else(|| "the save failed: see the node's log".to_string())
    }

    /// [`Node::save`] for SHUTDOWN SAVE: a save under way (a BGSAVE) is
    /// waited for first, then everything written since is saved, as Redis
    /// ends a background save to save at shutdown.
    ///
    /// # Errors
    ///
    /// As [`Node::save`], but for a save under way.
    pub async fn save_after_any(&self) -> Result<(), String> {
        loop {
            let mut ended = self
                .saves
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .ended
                .subscribe();
            match self.save().await {
                Err(why) if why == SAVE_IN_PROGRESS => {
                    tracing::info!("SHUTDOWN: waiting for the save under way, then saving");
                    // A closed channel cannot be: the sender is in `saves`.
                    let _ = ended.changed().await;
                }
                done => return done,
            }
        }
    }

    /// BGSAVE: [`Node::save`] in the background.
    ///
    /// # Errors
    ///
    /// A save is under way already.
    pub fn bgsave(&self) -> Result<(), String> {
        begin_save(&self.saves)?;
        let (wal, engine, saves) = (self.wal.clone(), self.engine.clone(), self.saves.clone());
        tokio::spawn(persist_all(wal, engine, saves));
        Ok(())
    }

    /// SHUTDOWN [NOSAVE|SAVE] [NOW] [FORCE], as Redis 7.0's: unless NOW,
    /// a node (a replica too, for replicas of its own) whose replicas have
    /// not all flushed its last write holds writes (as CLIENT PAUSE WRITE)
    /// and waits for them up to
    /// `--shutdown-timeout`, or until SHUTDOWN ABORT; then, with SAVE, a
    /// save (its failure ends the shutdown unless FORCE); then the node
    /// stops as on SIGTERM. `Err`: the shutdown did not happen (aborted,
    /// or the save failed), the writes it held run.
    pub async fn shutdown_by_command(
        &self,
        save: Option<bool>,
        now: bool,
        force: bool,
    ) -> Result<(), ()> {
        let held = if now {
            false
        } else {
            self.wait_for_replicas_to_stop().await?
        };
        if save == Some(true)
            && let Err(why) = self.save_after_any().await
        {
            tracing::warn!(why, force, "SHUTDOWN: the save failed");
            if !force {
                if held {
                    self.pipeline.unpause(PausePurpose::Shutdown);
                }
                return Err(());
            }
        }
        tracing::info!("stopping");
        self.shutdown_requested.send_replace(true);
        Ok(())
    }

    /// Holds writes while replicas that have not flushed the last write
    /// catch up, up to `--shutdown-timeout`; whether this SHUTDOWN holds
    /// them (not if every replica had everything, nor if another SHUTDOWN
    /// waiting already does). `Err` if a SHUTDOWN ABORT came first (the
    /// writes run again).
    async fn wait_for_replicas_to_stop(&self) -> Result<bool, ()> {
        if self.shipper.behind(self.wal.last_lsn()) == 0 {
            return Ok(false);
        }
        // The first SHUTDOWN holds the writes; another while it waits
        // waits beside it, and ends as it ends.
        let (mut aborted, owner) = {
            let mut waiting = self
                .shutdown_waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match &*waiting {
                Some(abort) => (abort.subscribe(), false),
                None => {
                    let (abort, aborted) = watch::channel(false);
                    *waiting = Some(abort);
                    (aborted, true)
                }
            }
        };
        let timeout =
            Duration::from_secs(self.config.shutdown_timeout_secs.load(Ordering::Relaxed));
        let until = Instant::now() + timeout;
        if owner {
            // Held past the wait, through the save and the stop.
            self.pipeline.pause(
                PausePurpose::Shutdown,
                Instant::now() + SHUTDOWN_HOLD_MAX,
                false,
            );
            // Shown once writes are held.
            *self
                .shutdown_deadline
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(until);
        }
        self.pipeline.quiesce().await;
        let last = self.wal.last_lsn();
        tracing::info!(
            lagging = self.shipper.behind(last),
            last_lsn = %last,
            "SHUTDOWN: writes held while the replicas catch up"
        );
        let mut acks = self.shipper.subscribe_acks();
        let caught_up = tokio::time::timeout_at(until.into(), async {
            loop {
                if self.shipper.behind(last) == 0 {
                    return true;
                }
                tokio::select! {
                    changed = acks.changed() => if changed.is_err() { return true },
                    _ = aborted.wait_for(|&a| a) => return false,
                }
            }
        })
        .await;
        if owner {
            self.shutdown_waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            self.shutdown_deadline
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
        }
        match caught_up {
            Ok(true) => Ok(owner),
            Ok(false) => {
                if owner {
                    tracing::info!("SHUTDOWN aborted: writes go on");
                    self.pipeline.unpause(PausePurpose::Shutdown);
                }
                Err(())
            }
            Err(_) => {
                tracing::warn!(
                    lagging = self.shipper.behind(last),
                    ?timeout,
                    "SHUTDOWN: replicas still lag after --shutdown-timeout; stopping all the same"
                );
                Ok(owner)
            }
        }
    }

    /// FAILOVER [TO host port [FORCE]] [TIMEOUT ms], as Redis 7.0's: checks
    /// as Redis does (its error texts), then starts a switchover
    /// ([`Node::switchover`]) in the background to the replica whose RESP
    /// address is `host:port` (or the one furthest ahead), waiting for it
    /// without limit unless `timeout`; FAILOVER ABORT ends the wait.
    /// From before the reply on, writes are held (a pause of writes, for
    /// at most [`FAILOVER_HOLD_MAX`]) and the write path fenced: once the
    /// failover ends the held writes run, or get `-READONLY` if this node
    /// follows the new primary, as in Redis.
    pub async fn failover_command(
        self: &Arc<Self>,
        to: Option<(String, i64)>,
        timeout: Option<Duration>,
        force: bool,
    ) -> Result<(), &'static str> {
        let (target, aborted) = self.begin_failover(to, timeout, force)?;
        // All in a task of its own, so that it runs to its end (and clears
        // its state) whatever becomes of the asking connection.
        let (fenced_tx, fenced) = tokio::sync::oneshot::channel();
        let node = self.clone();
        tokio::spawn(async move {
            node.pipeline.pause(
                PausePurpose::Failover,
                Instant::now() + FAILOVER_HOLD_MAX,
                false,
            );
            node.pipeline.fence().await;
            let _ = fenced_tx.send(());
            match node
                .switchover_with(target.as_deref(), timeout, force, aborted)
                .await
            {
                Ok(done) => tracing::info!(
                    new_primary = %done.new_primary,
                    epoch = done.epoch,
                    "FAILOVER done: following the new primary"
                ),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "FAILOVER ended without a switchover");
                    // Fenced above, even if the switchover failed before
                    // its own fence; not if the replica may have promoted.
                    if !node.is_replica()
                        && !node.pipeline.is_writable()
                        && !e.is::<PromoteOutcomeUnknown>()
                    {
                        node.pipeline.unfence();
                    }
                }
            }
            node.failover
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            // The held writes go on (unless another pause holds them):
            // run, or refused on a replica.
            node.pipeline.unpause(PausePurpose::Failover);
        });
        let _ = fenced.await;
        Ok(())
    }

    /// FAILOVER's checks, in Redis's order; the target's node id (`None`:
    /// the replica furthest ahead) and the receiver FAILOVER ABORT turns.
    fn begin_failover(
        &self,
        to: Option<(String, i64)>,
        timeout: Option<Duration>,
        force: bool,
    ) -> Result<(Option<String>, watch::Receiver<bool>), &'static str> {
        let mut failover = self.failover.lock().unwrap_or_else(|e| e.into_inner());
        // (A switchover asked over gRPC holds writes too.)
        if failover.is_some() || (!self.is_replica() && !self.pipeline.is_writable()) {
            return Err("FAILOVER already in progress.");
        }
        if self.is_replica() {
            return Err("FAILOVER is not valid when server is a replica.");
        }
        let replicas = self.shipper.list();
        if replicas.is_empty() {
            return Err("FAILOVER requires connected replicas.");
        }
        if force && (timeout.is_none() || to.is_none()) {
            return Err(
                "FAILOVER with force option requires both a timeout and target HOST and IP.",
            );
        }
        let target = match &to {
            None => None,
            Some((host, port)) => {
                let replica = replicas
                    .iter()
                    .find(|r| {
                        r.resp_addr
                            .rsplit_once(':')
                            .is_some_and(|(h, p)| h == host && p.parse() == Ok(*port))
                    })
                    .ok_or("FAILOVER target HOST and PORT is not a replica.")?;
                if replica.state == ferry_shipper::ReplicaState::Connecting {
                    return Err("FAILOVER target replica is not online.");
                }
                Some(replica.node_id.clone())
            }
        };
        let (abort, aborted) = watch::channel(false);
        *failover = Some(abort);
        tracing::info!(to = ?target, ?timeout, force, "FAILOVER requested");
        Ok((target, aborted))
    }

    /// FAILOVER ABORT: whether a FAILOVER was under way (if it still waits
    /// for its replica, it ends there and writes resume; once the replica
    /// was asked to promote, it goes on).
    pub fn abort_failover(&self) -> bool {
        abort_wait(&self.failover)
    }

    /// How long a SHUTDOWN waiting for its replicas may still wait, while
    /// one does.
    pub fn shutdown_in(&self) -> Option<Duration> {
        self.shutdown_deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|until| until.saturating_duration_since(Instant::now()))
    }

    /// SHUTDOWN ABORT: whether a SHUTDOWN was waiting for its replicas
    /// (it fails, and the writes it held run).
    pub fn abort_shutdown(&self) -> bool {
        abort_wait(&self.shutdown_waiting)
    }

    /// Returns once a client asked the node to stop (SHUTDOWN).
    pub async fn shutdown_requested(&self) {
        let _ = self
            .shutdown_requested
            .subscribe()
            .wait_for(|&asked| asked)
            .await;
    }

    /// Whether the node follows a primary.
    pub fn is_replica(&self) -> bool {
        self.identity.replica.load(Ordering::Acquire)
    }

    /// The link to the primary, on a replica.
    pub fn link_status(&self) -> Option<LinkStatus> {
        self.receiver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(Receiver::status)
    }

    /// Where the node stands on failover, for status reports: on a primary
    /// `stale` (a newer epoch exists), `lease-lost`, `switchover` (writes
    /// held for a planned switchover) or `none`; on a replica `manual` (no
    /// `--failover-after`), `armed` (its primary is reachable), or
    /// `pending Xs/Ys` (unreachable that long, promotion after Y).
    pub fn failover_state(&self) -> String {
        if !self.is_replica() {
            return if self.is_stale_primary() {
                "stale"
            } else if !self.lease_holds() {
                "lease-lost"
            } else if !self.pipeline.is_writable() {
                "switchover"
            } else {
                "none"
            }
            .to_string();
        }
        let Some(after) = self.config.failover_after else {
            return "manual".into();
        };
        match self
            .link_status()
            .and_then(|l| l.down_since.filter(|_| !l.link_up))
        {
            Some(since) => format!(
                "pending {}s/{}s",
                since.elapsed().as_secs(),
                after.as_secs()
            ),
            None => "armed".into(),
        }
    }

    /// Whether a replica's link to its primary is down.
    pub fn link_down(&self) -> bool {
        self.link_status().is_some_and(|s| !s.link_up)
    }

    /// Makes the node follow `primary` (a gRPC URL such as
    /// `http://10.0.0.1:7379`), as REPLICAOF does: writes stop, those in
    /// flight finish, the role is persisted, and the receiver resumes after
    /// the last LSN in the log. Returns that resume LSN.
    ///
    /// # Errors
    ///
    /// A malformed address, failing to persist the role, a failed WAL.
    pub async fn replicate_from(&self, primary: String) -> anyhow::Result<Lsn> {
        let _one = self.role_change.lock().await;
        self.config.tls.endpoint(&primary)?;
        self.pipeline.fence().await;
        self.wal.sync().await.context("syncing the WAL")?;
        self.stop_receiver().await;
        if self.identity.replica_of().as_deref() != Some(&primary)
            && let Err(e) = self.clear_staging().and_then(|()| {
                self.identity
                    .update(|s| s.replica_of = Some(primary.clone()))
            })
        {
            // Still following the one it followed, if any.
            self.follow_again();
            return Err(e);
        }
        self.start_receiver(primary.clone())?;
        let resume = self.wal.last_lsn().next();
        tracing::info!(%primary, resume = %resume, "following a primary");
        Ok(resume)
    }

    /// Makes this replica the primary of a new epoch (REPLICAOF NO ONE,
    /// `ferry promote`). Waits up to `wait` for it to have applied all it
    /// received and all its primary last said was durable; refuses if it
    /// has not, unless `force`, and then reports the LSNs that are lost.
    ///
    /// The new epoch and the role change are one atomic write of
    /// [`NODE_FILE`], made before any write of the new term; the term's
    /// first record is an epoch change.
    ///
    /// # Errors
    ///
    /// Not a replica, not caught up (with the numbers), a failed WAL or
    /// engine.
    pub async fn promote(&self, force: bool, wait: Duration) -> anyhow::Result<Promotion> {
        let _one = self.role_change.lock().await;
        let Some(link) = self.link_status() else {
            anyhow::bail!("this node is already a primary");
        };
        let deadline = Instant::now() + wait;
        let (applied, written, heard) = loop {
            let link = self.link_status().unwrap_or(link.clone());
            let applied = self.engine.applied_lsn();
            let (written, heard) = (self.wal.last_lsn(), link.primary_durable_lsn);
            if (applied >= written && applied >= heard) || Instant::now() >= deadline {
                break (applied, written, heard);
            }
            tokio::time::sleep(PROMOTE_POLL_INTERVAL).await;
        };
        let bootstrapping = self.link_status().is_some_and(|l| l.sync.is_some());
        if bootstrapping && !force {
            anyhow::bail!(
                "not caught up: a snapshot of the primary's state is on its way; promoting now \
                 (force) serves the state from before it"
            );
        }
        let behind = applied < written || applied < heard;
        if behind && !force {
            let consequence = if heard > written {
                format!(
                    "promoting now (force) loses lsn {}..={heard}",
                    written.next()
                )
            } else {
                "it has everything; wait for it to apply".to_string()
            };
            anyhow::bail!(
                "not caught up: applied lsn {applied} of {written} received; the primary last said lsn {heard} was durable; {consequence}"
            );
        }
        self.stop_receiver().await;
        // A replica shown a newer epoch downstream takes one above it, or
        // it would be a stale primary at once.
        let seen = self.identity.newer_epoch_seen().unwrap_or(0);
        let epoch = self
            .wal
            .epoch()
            .0
            .max(self.identity.highest_epoch())
            .max(seen)
            + 1;
        let ready = async {
            // What was received is kept: apply the rest of the local log.
            self.wal.sync().await.context("syncing the WAL")?;
            self.engine
                .replay(&self.wal)
                .context("applying the rest of the local WAL")?;
            let first = self.wal.last_lsn().next();
            // A snapshot fetched from the old primary is no longer this
            // node's to install (a ready one would replace the new term's
            // writes at the next start).
            self.clear_staging()?;
            ferry_wal::testing::crash_point("node::promote::before_conf");
            ferry_wal::testing::fail_point("node::promote::conf").context("promoting")?;
            self.identity.update(|s| {
                s.replica_of = None;
                s.epochs.push((epoch, first.0));
            })?;
            anyhow::Ok(first)
        }
        .await;
        if ready.is_err() {
            self.follow_again();
        }
        let first = ready?;
        let last = Lsn(first.0 - 1);
        ferry_wal::testing::crash_point("node::promote::after_conf");
        self.begin_term().await?;
        let lost = (heard > last).then_some((last.next(), heard));
        tracing::warn!(epoch, first_lsn = %first, ?lost, "promoted to primary");
        Ok(Promotion { epoch, first, lost })
    }

    /// Starts the term [`NODE_FILE`] names, if the WAL has not: raises the
    /// WAL's epoch, lets writes in, and writes the epoch-change record.
    /// Run by a promotion, and at start-up (a crash may have come between
    /// the two).
    async fn begin_term(&self) -> anyhow::Result<()> {
        let epoch = self.identity.last_epoch();
        if self.is_replica() || epoch <= self.wal.epoch().0 && self.pipeline.is_writable() {
            return Ok(());
        }
        if epoch > self.wal.epoch().0 {
            self.wal
                .set_epoch(ferry_wal::Epoch(epoch))
                .await
                .context("raising the WAL's epoch")?;
            self.pipeline.unfence();
            ferry_wal::testing::crash_point("node::promote::after_epoch");
            let ticket = self
                .pipeline
                .execute(|view| {
                    view.push(ferry_proto::v1::mutation::Op::EpochChange(
                        ferry_proto::v1::EpochChange { epoch },
                    ))
                })
                .await
                .context("writing the epoch change")?;
            ticket.wait().await.context("writing the epoch change")?;
        } else {
            self.pipeline.unfence();
        }
        Ok(())
    }

    /// Planned switchover (FAILOVER, `ferry switchover`): this primary stops
    /// taking writes, waits up to `timeout` for the replica (`to`, a node
    /// id; or the one furthest ahead) to have everything, has it promote,
    /// then follows it. No acknowledged write is lost. If any step fails
    /// before the replica promotes, this node takes writes again.
    ///
    /// # Errors
    ///
    /// Not a primary, no such replica, the replica not catching up in time
    /// or refusing to promote.
    pub async fn switchover(
        &self,
        to: Option<&str>,
        timeout: Duration,
    ) -> anyhow::Result<Switchover> {
        let (_keep, never) = watch::channel(false);
        self.switchover_with(to, Some(timeout), false, never).await
    }

    /// [`Node::switchover`], waiting for the replica without limit
    /// (`timeout` `None`) or until `abort` turns true; with `force`, once
    /// `timeout` passed the replica promotes all the same (FAILOVER ... FORCE:
    /// writes it lacks stay on this node, which keeps them in its quarantine
    /// log when it follows).
    async fn switchover_with(
        &self,
        to: Option<&str>,
        timeout: Option<Duration>,
        force: bool,
        mut abort: watch::Receiver<bool>,
    ) -> anyhow::Result<Switchover> {
        anyhow::ensure!(
            !self.is_replica(),
            "switchover runs on a primary; this node is a replica"
        );
        let replicas = self.shipper.list();
        let target = match to {
            Some(id) => replicas.iter().find(|r| r.node_id == id),
            None => replicas.iter().max_by_key(|r| r.applied_lsn),
        }
        .cloned()
        .ok_or_else(|| match to {
            Some(id) => anyhow::anyhow!("no replica {id} is connected"),
            None => anyhow::anyhow!("no replica is connected"),
        })?;
        anyhow::ensure!(
            !target.grpc_addr.is_empty(),
            "replica {} did not say where its gRPC services listen",
            target.node_id
        );
        let url = grpc_url(self.config.tls.scheme(), &target.grpc_addr, &target.addr);
        tracing::warn!(to = %target.node_id, %url, "switchover: writes stop");
        self.pipeline.fence().await;
        let promoted = async {
            let last = self.wal.sync().await.context("syncing the WAL")?;
            let deadline = timeout.map(|t| Instant::now() + t);
            let forced = loop {
                let applied = self
                    .shipper
                    .list()
                    .into_iter()
                    .find(|r| r.node_id == target.node_id)
                    .map(|r| r.applied_lsn);
                match applied {
                    Some(a) if a >= last => break false,
                    _ if deadline.is_some_and(|d| Instant::now() >= d) && force => {
                        tracing::warn!(
                            to = %target.node_id,
                            at = %applied.map_or("-".to_string(), |a| a.to_string()),
                            %last,
                            "switchover: the replica did not catch up in time; it promotes all the same (FORCE)"
                        );
                        break true;
                    }
                    _ if deadline.is_some_and(|d| Instant::now() >= d) => anyhow::bail!(
                        "replica {} did not reach lsn {last} within {:?} (it is at {})",
                        target.node_id,
                        timeout.unwrap_or_default(),
                        applied.map_or("-".to_string(), |a| a.to_string())
                    ),
                    _ => tokio::select! {
                        () = tokio::time::sleep(PROMOTE_POLL_INTERVAL) => {}
                        _ = abort.wait_for(|&a| a) => anyhow::bail!("aborted"),
                    },
                }
            };
            self.switchover_promoting.store(true, Ordering::Release);
            let channel = self
                .config
                .tls
                .endpoint(&url)?
                .connect()
                .await
                .map_err(|e| {
                    anyhow::anyhow!("connecting to {url}: {}", ferry_proto::tls::causes(&e))
                })?;
            let mut admin = ferry_proto::v1::admin_client::AdminClient::with_interceptor(
                channel,
                ferry_proto::auth::Attach::new(self.config.cluster_token.as_deref())?,
            );
            let reply = admin
                .promote(ferry_proto::v1::PromoteRequest {
                    force: forced,
                    // Forced: the wait is over.
                    wait_ms: if forced {
                        0
                    } else {
                        timeout.unwrap_or(SWITCHOVER_TIMEOUT_DEFAULT).as_millis() as u64
                    },
                })
                .await
                .map_err(|s| match s.code() {
                    // Answered: it did not promote.
                    tonic::Code::FailedPrecondition
                    | tonic::Code::Unauthenticated
                    | tonic::Code::PermissionDenied
                    | tonic::Code::Unimplemented => {
                        anyhow::anyhow!("the replica refused to promote: {}", s.message())
                    }
                    _ => anyhow::Error::new(PromoteOutcomeUnknown(s.message().to_string())),
                })?;
            Ok(reply.into_inner())
        }
        .await;
        let promoted = match promoted {
            Err(e) if e.is::<PromoteOutcomeUnknown>() => {
                tracing::warn!(error = %format!("{e:#}"), to = %target.node_id,
                    "switchover: the promote call broke off; asking the replica how it ended");
                let asked = timeout.unwrap_or(SWITCHOVER_TIMEOUT_DEFAULT);
                self.promote_outcome(&url, asked).await
            }
            other => other,
        };
        self.switchover_promoting.store(false, Ordering::Release);
        let promoted = match promoted {
            Ok(p) => p,
            Err(e) if e.is::<PromoteOutcomeUnknown>() => {
                tracing::error!(error = %format!("{e:#}"), "switchover: how the promotion ended is unknown; writes stay stopped");
                return Err(e);
            }
            Err(e) => {
                self.pipeline.unfence();
                tracing::warn!(error = %format!("{e:#}"), "switchover abandoned: writes resume");
                return Err(e);
            }
        };
        self.replicate_from(url.clone()).await?;
        Ok(Switchover {
            new_primary: url,
            node_id: target.node_id,
            epoch: promoted.epoch,
            first: Lsn(promoted.first_lsn),
        })
    }

    /// How a switchover's promote call that broke off midway ended, asked
    /// of the replica at `url` for up to [`PROMOTE_OUTCOME_WAIT`] (or the
    /// `wait` the call gave the replica, and a second, if longer: it runs
    /// to its end on the replica whatever became of the call): its new
    /// term if it leads a newer epoch; an error if it is still a replica
    /// once the wait is over (writes may resume). With no answer at all,
    /// [`PromoteOutcomeUnknown`]: writes stay stopped, as resuming them
    /// could make two primaries.
    async fn promote_outcome(
        &self,
        url: &str,
        wait: Duration,
    ) -> anyhow::Result<ferry_proto::v1::PromoteResponse> {
        let ours = self.wal.epoch().0;
        let caller = crate::report::Caller {
            token: ferry_proto::auth::Attach::new(self.config.cluster_token.as_deref())?,
            tls: self.config.tls.clone(),
        };
        let waited = PROMOTE_OUTCOME_WAIT.max(wait + Duration::from_secs(1));
        let until = Instant::now() + waited;
        let mut last = None;
        loop {
            match tokio::time::timeout(PEER_PROBE_TIMEOUT, crate::report::fetch(url, &caller)).await
            {
                Ok(Ok(status)) => {
                    let epoch = status.wal.as_ref().map_or(0, |w| w.epoch);
                    if status.role == "primary" && epoch > ours {
                        let first_lsn = status
                            .epoch_history
                            .iter()
                            .find(|t| t.epoch == epoch)
                            .map_or(0, |t| t.first_lsn);
                        tracing::warn!(epoch, first_lsn, "switchover: the replica did promote");
                        return Ok(ferry_proto::v1::PromoteResponse {
                            epoch,
                            first_lsn,
                            lost_from: 1,
                            lost_to: 0,
                        });
                    }
                    last = Some(status.role);
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %format!("{e:#}"), "switchover: no status from the replica yet");
                }
                Err(_) => {}
            }
            if Instant::now() >= until {
                break;
            }
            tokio::time::sleep(PEER_PROBE_TIMEOUT / 4).await;
        }
        match last {
            Some(role) => Err(anyhow::anyhow!(
                "the promote call broke off and the replica is still a {role} after {waited:?}: it did not promote"
            )),
            None => Err(anyhow::Error::new(PromoteOutcomeUnknown(format!(
                "the replica at {url} has not answered since, within {waited:?}: \
                 it may lead now, so this node takes no writes (follow it with REPLICAOF, \
                 or restart this node to take writes again)"
            )))),
        }
    }

    /// On a primary that lost its write lease or learnt of a newer epoch:
    /// asks the replicas it knew whether one now leads a newer epoch of this
    /// cluster, and if so follows it (rejoining if its log forked).
    async fn look_for_newer_primary(&self) {
        if self.is_replica() || (self.lease_holds() && !self.is_stale_primary()) {
            return;
        }
        let peers: Vec<(String, String)> = self
            .shipper
            .departed()
            .into_iter()
            .map(|(id, grpc, addr)| (id, grpc_url(self.config.tls.scheme(), &grpc, &addr)))
            .collect();
        let (ours, cluster) = (self.wal.epoch().0, self.identity.cluster_id());
        // Checked when the node started.
        let caller = crate::report::Caller {
            token: ferry_proto::auth::Attach::new(self.config.cluster_token.as_deref())
                .unwrap_or_default(),
            tls: self.config.tls.clone(),
        };
        for (id, url) in peers {
            let status = match tokio::time::timeout(
                PEER_PROBE_TIMEOUT,
                crate::report::fetch(&url, &caller),
            )
            .await
            {
                Ok(Ok(status)) => status,
                // Not an absent peer: one this node will never hear from.
                Ok(Err(e)) if format!("{e:#}").contains("cluster token") => {
                    tracing::warn!(peer = %id, %url, error = %format!("{e:#}"), "a peer refused this node's cluster token");
                    continue;
                }
                // Nor is one whose TLS handshake fails (a certificate
                // refused either way, a name it does not hold).
                Ok(Err(e))
                    if self.config.tls.calls_over_tls()
                        && ferry_proto::tls::handshake_failed(&format!("{e:#}")) =>
                {
                    tracing::warn!(peer = %id, %url, error = %format!("{e:#}"), "TLS with a peer failed");
                    continue;
                }
                _ => continue,
            };
            let epoch = status.wal.map_or(0, |w| w.epoch);
            if status.role == "primary" && epoch > ours && status.cluster_id == cluster {
                tracing::warn!(peer = %id, %url, epoch, "a newer primary leads this cluster: following it");
                if let Err(e) = self.replicate_from(url).await {
                    tracing::error!(error = %format!("{e:#}"), "could not follow the newer primary");
                }
                return;
            }
        }
    }

    /// Whether this node learnt that a newer primary exists (a replica
    /// showed it a newer epoch): then it takes no writes.
    pub fn is_stale_primary(&self) -> bool {
        self.identity
            .newer_epoch_seen()
            .is_some_and(|e| e > self.wal.epoch().0)
    }

    /// The write lease, if one is set: how many replicas must have acked,
    /// and within how long.
    pub fn lease(&self) -> Option<(usize, Duration)> {
        let n = self.config.min_replicas_to_write.load(Ordering::Relaxed);
        let lag = self
            .config
            .min_replicas_max_lag_secs
            .load(Ordering::Relaxed);
        (n > 0 && lag > 0).then(|| (n, Duration::from_secs(lag)))
    }

    /// Whether the write lease holds: enough replicas acked recently, or no
    /// lease is set.
    pub fn lease_holds(&self) -> bool {
        self.lease()
            .is_none_or(|(n, lag)| self.shipper.acked_within(lag) >= n)
    }

    /// Watches the link to the primary until `stop` turns true: rejoins
    /// when the primary says this node's log forked, and with
    /// `--failover-after` promotes this replica once its primary has been
    /// unreachable that long and it has applied all it received.
    pub async fn watch_for_failover(&self, mut stop: watch::Receiver<bool>) {
        let mut last_probe = Instant::now();
        loop {
            tokio::select! {
                () = tokio::time::sleep(FAILOVER_CHECK_INTERVAL) => {}
                _ = stop.changed() => return,
            }
            let Some(link) = self.link_status() else {
                if last_probe.elapsed() >= PEER_PROBE_INTERVAL {
                    last_probe = Instant::now();
                    self.look_for_newer_primary().await;
                }
                continue;
            };
            if let Some(fork) = link.diverged_after {
                if let Err(e) = self.rejoin(fork).await {
                    tracing::error!(error = %format!("{e:#}"), "rejoining failed");
                }
                continue;
            }
            let Some(after) = self.config.failover_after else {
                continue;
            };
            // Down since the primary was last heard from (a refusal is
            // word from it too); one fetching a snapshot from it (the
            // resume point refused) has not lost it.
            if link.state == "bootstrap" {
                continue;
            }
            let down_for = link.down_since.filter(|_| !link.link_up).map(|t| {
                let heard = link.last_io.map_or(t, |io| io.max(t));
                heard.elapsed()
            });
            // A replica that never synced has nothing to serve.
            if down_for.is_none_or(|d| d < after) || self.wal.last_lsn() == Lsn::ZERO {
                continue;
            }
            if self.engine.applied_lsn() < self.wal.last_lsn() {
                continue;
            }
            tracing::warn!(
                primary = %link.primary,
                down_ms = down_for.map_or(0, |d| d.as_millis() as u64),
                "the primary is unreachable: failing over"
            );
            // What the primary said was durable past what reached this
            // node cannot be waited for any more: with a write lease none of
            // it was acknowledged (each write waits for this replica's
            // flush); without one, async replication loses it, as Redis's.
            // Refusing would leave the cluster without a primary whenever
            // the primary dies under load.
            match self.promote(true, Duration::ZERO).await {
                Ok(p) => tracing::warn!(
                    epoch = p.epoch,
                    lost = ?p.lost,
                    "failed over: this node is the primary"
                ),
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "failover refused"),
            }
        }
    }

    /// Deletes the WAL segments nothing needs any more (see
    /// [`ferry_shipper::Retention`]), every [`RETENTION_INTERVAL`], until
    /// `stop`.
    pub async fn keep_wal(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(RETENTION_INTERVAL) => {}
                _ = stop.wait_for(|&s| s) => return,
            }
            let node = self.clone();
            let result =
                tokio::task::spawn_blocking(move || node.shipper.enforce_retention()).await;
            match result {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "WAL retention round failed"),
                Err(e) => tracing::error!(error = %e, "WAL retention task failed"),
            }
        }
    }

    /// Ends the link to the primary, if any, and waits for its tasks.
    async fn stop_receiver(&self) {
        let receiver = self
            .receiver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(receiver) = receiver {
            receiver.stop().await;
        }
    }

    fn start_receiver(&self, primary: String) -> anyhow::Result<()> {
        let mut config = ReceiverConfig::new(primary);
        config.primary_timeout = self.config.repl_timeout;
        config.version = env!("CARGO_PKG_VERSION").to_string();
        config.bootstrap_dir = Some(self.config.data_dir.join(ferry_receiver::BOOTSTRAP_DIR));
        config.cluster_token = self.config.cluster_token.clone();
        config.tls = self.config.tls.clone();
        let receiver = Receiver::start(
            config,
            self.wal.clone(),
            self.engine.clone(),
            self.identity.clone(),
        )?;
        *self.receiver.lock().unwrap_or_else(|e| e.into_inner()) = Some(receiver);
        Ok(())
    }

    /// Rejoins after this node's log forked from its primary's after `fork`
    /// (the primary's epoch history says so): the records after the fork
    /// go to a quarantine log in `quarantine/` of the data dir (readable by
    /// `ferry wal dump`, and `ferry replay --onto` brings them back), the
    /// WAL is cut at the fork, the engine is rebuilt to it, and the node
    /// follows its primary again. Returns how many records were set aside.
    ///
    /// # Errors
    ///
    /// Not a replica; I/O, WAL or engine failures.
    pub async fn rejoin(&self, fork: Lsn) -> anyhow::Result<u64> {
        let _one = self.role_change.lock().await;
        let primary = self
            .identity
            .replica_of()
            .context("only a replica rejoins its primary")?;
        self.stop_receiver().await;
        // Its own replicas may be reading past the fork.
        self.shipper.disconnect_all();
        let rejoined = self.rejoin_unlinked(fork, primary).await;
        if rejoined.is_err() {
            self.follow_again();
        }
        rejoined
    }

    /// [`Node::rejoin`] once the link to `primary` is stopped.
    async fn rejoin_unlinked(&self, fork: Lsn, primary: String) -> anyhow::Result<u64> {
        self.wal.sync().await.context("syncing the WAL")?;
        let last = self.wal.last_lsn();
        // Its terms past the fork are not in its log any more (nor served in
        // its history); their epochs stay used.
        self.identity
            .forget_terms_after(fork)
            .context("recording the fork")?;
        if last <= fork {
            self.start_receiver(primary)?;
            return Ok(0);
        }
        let quarantine = self.quarantine_after(fork, last)?;
        let count = last.0 - fork.0;
        let first = self.wal.first_lsn();
        if first > Lsn(1) {
            // The log no longer reaches back to the start, so the engine
            // cannot be rebuilt to the fork from it: start empty and take
            // the primary's state (a snapshot, or its whole log). The
            // engine's state goes to the quarantine too (a checkpoint: hard
            // links), for records past the fork the log no longer holds.
            let state = quarantine.join(QUARANTINE_ENGINE_DIR);
            self.engine
                .checkpoint(&state)
                .context("keeping the engine's state in quarantine")?;
            if first > fork.next() {
                tracing::warn!(from = %fork.next(), to = %Lsn(first.0 - 1), state = %state.display(),
                    "records after the fork were purged from the log: they are only in the engine state kept in quarantine");
            }
            self.reset_to_empty().await?;
            self.quarantined_records.fetch_add(count, Ordering::Relaxed);
            tracing::warn!(after = %fork, records = count, quarantine = %quarantine.display(),
                "rejoined: the records after the fork are in quarantine; the node syncs from its primary anew");
            self.start_receiver(primary)?;
            return Ok(count);
        }
        self.engine.reset().context("emptying the engine")?;
        if let Err(e) = self.wal.truncate_after(fork).await {
            // The log is as it was: bring the engine back to it.
            self.engine
                .replay(&self.wal)
                .context("restoring the engine after a failed cut")?;
            return Err(e).context("cutting the WAL at the fork");
        }
        // Past the cut, they are only in the quarantine.
        self.quarantined_records.fetch_add(count, Ordering::Relaxed);
        let mut state = ferry_engine::StateBuilder::new();
        for record in self.wal.records(Lsn(1)).context("reading the WAL")? {
            let record = record.context("reading the WAL")?;
            let decoded = ferry_engine::decode_record(record.lsn, &record.data)?;
            state.apply(record.lsn, &decoded)?;
        }
        if state.last_lsn() > Lsn::ZERO {
            ferry_wal::testing::fail_point("node::rejoin::ingest")
                .context("rebuilding the engine")?;
            self.engine
                .ingest(state, &self.config.data_dir)
                .context("rebuilding the engine")?;
        }
        tracing::warn!(
            after = %fork,
            records = count,
            quarantine = %quarantine.display(),
            "rejoined: the records after the fork are in quarantine"
        );
        self.start_receiver(primary)?;
        Ok(count)
    }

    /// Deletes a snapshot staged from the primary this node followed (a
    /// transfer under way, or one ready whose install failed).
    fn clear_staging(&self) -> anyhow::Result<()> {
        let dir = self.config.data_dir.join(ferry_receiver::BOOTSTRAP_DIR);
        ferry_receiver::Staging::new(dir)
            .clear()
            .context("deleting the snapshot staged from the primary")
    }

    /// After a role change that failed with the link to the primary
    /// stopped: a node its file still names a replica follows its primary
    /// again, its engine first brought back to its log (a failed rebuild
    /// may have left it empty), so it neither stops replicating for good
    /// nor shows itself a primary. (A rejoin still owed is tried again when
    /// the primary refuses it anew.)
    fn follow_again(&self) {
        let Some(primary) = self.identity.replica_of() else {
            return;
        };
        if self.link_status().is_some() {
            return;
        }
        if self.engine.applied_lsn() < self.wal.last_lsn()
            && let Err(e) = self.engine.replay(&self.wal)
        {
            tracing::error!(error = %e, "bringing the engine back to the WAL failed; not following the primary");
            return;
        }
        match self.start_receiver(primary) {
            Ok(()) => tracing::warn!("the role change failed: following the primary again"),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "following the primary again failed")
            }
        }
    }

    /// Empties the engine and starts the WAL again at LSN 1, as one step
    /// across a crash: a marker file says it is under way, and opening the
    /// node completes it.
    async fn reset_to_empty(&self) -> anyhow::Result<()> {
        let marker = self.config.data_dir.join(RESET_MARKER);
        File::create(&marker)
            .and_then(|f| f.sync_all())
            .and_then(|()| File::open(&self.config.data_dir)?.sync_all())
            .with_context(|| format!("writing {}", marker.display()))?;
        complete_reset(&self.config.data_dir, &self.wal, &self.engine).await
    }

    /// Copies the frames after `fork` (up to `last`) into a new quarantine
    /// log directory, synced; returns it.
    fn quarantine_after(&self, fork: Lsn, last: Lsn) -> anyhow::Result<PathBuf> {
        use std::io::Write;
        let dir = self.config.data_dir.join("quarantine").join(format!(
            "{}-lsn-{}-{}",
            crate::tools::format_time(now_ms()).replace(':', ""),
            fork.next(),
            last
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let first = fork.next();
        let path = dir.join(format!("{:020}.wal", first.0));
        let mut out =
            File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        out.write_all(&ferry_wal::format::encode_segment_header(first))?;
        let mut kept = Vec::new();
        ferry_wal::inspect::scan_dir_from(
            &ferry_wal::storage::FsStorage,
            self.wal.dir(),
            ferry_wal::FrameLimits::default(),
            first,
            |frame| {
                if frame.header.first_lsn >= first {
                    kept.push(frame.bytes.clone());
                }
                Ok(std::ops::ControlFlow::Continue(()))
            },
        )?;
        let frames = kept.len();
        for bytes in kept {
            out.write_all(&bytes)?;
        }
        out.sync_all()?;
        File::open(&dir)?.sync_all()?;
        tracing::info!(frames, dir = %dir.display(), "quarantined");
        Ok(dir)
    }

    /// Ends replication: streams to replicas and the link to the primary.
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        self.stop_receiver().await;
    }
}

/// Ends the wait `slot` holds the abort switch of (FAILOVER ABORT,
/// SHUTDOWN ABORT); whether one was under way.
fn abort_wait(slot: &Mutex<Option<watch::Sender<bool>>>) -> bool {
    match &*slot.lock().unwrap_or_else(|e| e.into_inner()) {
        Some(abort) => {
            abort.send_replace(true);
            true
        }
        None => false,
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
/// SAVE's and BGSAVE's state, as INFO persistence shows it.
#[derive(Debug)]
pub struct Saves {
    /// When the last save ended well (or the node started), unix seconds.
    pub last_save_secs: u64,
    pub in_progress: bool,
    /// Whether the last save ended well.
    pub last_ok: bool,
    /// Saves that ended well.
    pub count: u64,
    /// Saves that ended, well or not: for a save that waits for another.
    pub ended: watch::Sender<u64>,
}

/// Why a save cannot start, as Redis says it.
const SAVE_IN_PROGRESS: &str = "Background save already in progress";

/// Marks a save as under way, unless one is already.
fn begin_save(saves: &Mutex<Saves>) -> Result<(), String> {
    let mut saves = saves.lock().unwrap_or_else(|e| e.into_inner());
    if saves.in_progress {
        return Err(SAVE_IN_PROGRESS.into());
    }
    saves.in_progress = true;
    Ok(())
}

/// The save itself (see [`Node::save`]); whether it ended well.
async fn persist_all(wal: Arc<Wal>, engine: Arc<Engine>, saves: Arc<Mutex<Saves>>) -> bool {
    let outcome = match wal.sync().await {
        Ok(_) => match tokio::task::spawn_blocking(move || engine.flush()).await {
            Ok(flushed) => flushed.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = &outcome {
        tracing::error!(error = %e, "a save failed");
    }
    let mut saves = saves.lock().unwrap_or_else(|e| e.into_inner());
    saves.in_progress = false;
    saves.ended.send_modify(|n| *n += 1);
    saves.last_ok = outcome.is_ok();
    if outcome.is_ok() {
        saves.last_save_secs = now_ms() / 1000;
        saves.count += 1;
    }
    outcome.is_ok()
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_log_entries_keep_arguments_as_redis_keeps_them() {
        let args = |list: &[&str]| -> Vec<Bytes> {
            list.iter()
                .map(|a| Bytes::copy_from_slice(a.as_bytes()))
                .collect()
        };
        assert_eq!(
            slowlog_args(&args(&["AUTH", "user", "secret"])),
            args(&["AUTH", "(redacted)", "(redacted)"])
        );
        assert_eq!(
            slowlog_args(&args(&[
                "hello", "3", "auth", "user", "secret", "SETNAME", "n"
            ])),
            args(&[
                "hello",
                "3",
                "auth",
                "(redacted)",
                "(redacted)",
                "SETNAME",
                "n"
            ])
        );
        assert_eq!(
            slowlog_args(&args(&[
                "config",
                "SET",
                "timeout",
                "5",
                "RequirePass",
                "secret"
            ])),
            args(&["config", "SET", "timeout", "5", "RequirePass", "(redacted)"])
        );
        // An odd last argument (refused as a syntax error) is kept.
        assert_eq!(
            slowlog_args(&args(&["CONFIG", "SET", "requirepass"])),
            args(&["CONFIG", "SET", "requirepass"])
        );
        let long = "x".repeat(200);
        let kept = slowlog_args(&args(&["SET", "k", &long]));
        assert_eq!(
            kept[2],
            Bytes::from(format!("{}... (72 more bytes)", "x".repeat(128)))
        );
        let many: Vec<String> = (0..40).map(|i| i.to_string()).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let kept = slowlog_args(&args(&many));
        assert_eq!(kept.len(), SLOWLOG_ENTRY_ARGS_MAX);
        assert_eq!(kept[30], Bytes::from("30"));
        assert_eq!(kept[31], Bytes::from("... (9 more arguments)"));
    }

    #[test]
    fn latency_buckets_keep_order_and_an_eighth_of_precision() {
        let mut last = 0;
        let values = (0..5000u64).chain((13..64).map(|s| (1u64 << s) + 12345));
        for v in values.chain([u64::MAX]) {
            let b = LatencyHistogram::bucket(v);
            assert!(b >= last, "{v}");
            assert!(b < LATENCY_BUCKETS, "{v}");
            last = b;
            let middle = LatencyHistogram::middle(b);
            assert!(
                (middle - v as f64).abs() <= (v as f64 / 16.0).max(0.5),
                "{v} in a bucket around {middle}"
            );
        }
    }

    #[test]
    fn latency_percentiles_rank_what_was_recorded() {
        let h = LatencyHistogram::default();
        assert_eq!(h.percentiles(&[50.0]), None);
        for _ in 0..999 {
            h.record(Duration::from_micros(1));
        }
        h.record(Duration::from_millis(2));
        let p = h.percentiles(&[50.0, 99.0, 99.9, 100.0]).unwrap();
        let near = |got: f64, want: f64| (got - want).abs() <= want / 16.0;
        assert!(near(p[0], 1000.0) && near(p[1], 1000.0), "{p:?}");
        assert!(near(p[2], 1000.0), "the 999th of 1000: {p:?}");
        assert!(near(p[3], 2_000_000.0), "{p:?}");
        h.reset();
        assert_eq!(h.percentiles(&[50.0]), None);
    }
}
