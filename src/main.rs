//! `ferry`: the one binary of ferry.
//!
//! # Layout
//! - `resp`: the Redis protocol (requests and replies).
//! - `commands`: the command table and every command.
//! - `info`: INFO, CONFIG GET and CLIENT LIST text.
//! - `glob`: Redis glob patterns.
//! - `node`: a running node (data dir lock, WAL, engine, pipeline, counters).
//! - `server`: the RESP server and its connections.
//! - `status`: the gRPC server (status, admin, replication, health,
//!   reflection).
//! - `report`: `ferry status`, the text and JSON views of a node's status.
//! - `tools`: `ferry wal inspect | dump | verify | repair` and `ferry replay`.

mod certs;
mod commands;
mod config_file;
mod docs;
mod dump;
mod glob;
mod info;
mod latency;
mod long_double;
mod metrics;
mod node;
mod notify;
mod pubsub;
mod report;
mod resp;
mod server;
mod status;
mod tools;
mod tracking;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use ferry_proto::tls::Tls;
use ferry_wal::SyncPolicy;

use crate::node::{Config, Node};

/// ferry: a Redis-protocol cache with read replicas fed by WAL shipping.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "FERRY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a node: the Redis-protocol server over the WAL and the engine.
    Serve(Box<ServeArgs>),
    /// Shows a node's role, WAL positions, replicas and replication lag.
    Status(StatusArgs),
    /// Makes a replica the primary of a new epoch. Refused, with the
    /// numbers, while it lacks records its primary had, unless --force.
    Promote(PromoteArgs),
    /// Forgets the WAL retention slot of a replica that is gone for good, so
    /// the WAL it held back can go (it bootstraps if it ever returns).
    DropSlot(DropSlotArgs),
    /// Planned switchover, run against a primary: it stops taking writes,
    /// its replica catches up and promotes, and it follows the replica.
    Switchover(SwitchoverArgs),
    /// Builds a new data directory from a WAL, up to an LSN or a time, which
    /// `ferry serve` then serves as a new primary (a new cluster).
    Replay(ReplayArgs),
    /// Tools for WAL directories: a primary's, a replica's or a copy.
    Wal {
        #[command(subcommand)]
        command: WalCommand,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// A file of settings, one `name value` per line: the flags here
    /// without their `--` (`fsync always`; Redis's `appendfsync` too), `#`
    /// for comments, double quotes around a value with spaces. The command
    /// line and the environment come first; CONFIG REWRITE writes what
    /// CONFIG SET changed back into it.
    #[arg(long, env = "FERRY_CONFIG")]
    config: Option<PathBuf>,
    /// The node's data directory (WAL, engine, lock file).
    #[arg(long, env = "FERRY_DATA_DIR")]
    data_dir: PathBuf,
    /// Where clients connect with the Redis protocol (port 0: any free port).
    #[arg(long, env = "FERRY_RESP_ADDR", default_value = "127.0.0.1:6379")]
    resp_addr: SocketAddr,
    /// A second address for the Redis protocol, over TLS (as Redis's
    /// tls-port; `rediss://` URLs), with the node's --tls-cert-file and
    /// its check of client certificates (--tls-auth-clients). Default: none.
    #[arg(long, env = "FERRY_RESP_TLS_ADDR")]
    resp_tls_addr: Option<SocketAddr>,
    /// Where the gRPC status service listens (port 0: any free port).
    #[arg(long, env = "FERRY_GRPC_ADDR", default_value = "127.0.0.1:7379")]
    grpc_addr: SocketAddr,
    /// Where Prometheus scrapes metrics over HTTP (`GET /metrics`; port 0:
    /// any free port). Default: no metrics listener.
    #[arg(long, env = "FERRY_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// The RESP address this node gives other nodes (in its replication
    /// hello, and to the replicas it accepts: shown in their INFO, ROLE
    /// and status) when clients reach it
    /// elsewhere than where it listens (NAT, a proxy), as Redis's
    /// replica-announce-ip and -port. Default: the listening address.
    #[arg(long, env = "FERRY_ANNOUNCE_RESP_ADDR", value_parser = parse_host_port)]
    announce_resp_addr: Option<String>,
    /// The gRPC address this node gives other nodes: where an old primary
    /// looks for a newer one and a switchover reaches this replica. Default:
    /// the listening address.
    #[arg(long, env = "FERRY_ANNOUNCE_GRPC_ADDR", value_parser = parse_host_port)]
    announce_grpc_addr: Option<String>,
    /// When a write counts as durable, as Redis's appendfsync.
    #[arg(long, env = "FERRY_FSYNC", default_value = "everysec", value_parser = parse_policy)]
    fsync: SyncPolicy,
    /// A password clients must give with AUTH (or HELLO ... AUTH).
    #[arg(long, env = "FERRY_REQUIREPASS")]
    requirepass: Option<String>,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Whether callers of this node's gRPC must present a certificate
    /// --tls-ca-cert-file signed: yes, optional (checked if presented) or
    /// no, as Redis's tls-auth-clients. Default with TLS: yes.
    #[arg(long, env = "FERRY_TLS_AUTH_CLIENTS", value_parser = clap::builder::ValueParser::new(|s: &str| s.parse::<ferry_proto::tls::ClientAuth>()))]
    tls_auth_clients: Option<ferry_proto::tls::ClientAuth>,
    /// The TLS versions served on every TLS listener (gRPC, Redis
    /// protocol, metrics), space-separated as Redis's tls-protocols:
    /// "TLSv1.2 TLSv1.3" (the default), "TLSv1.3" or "TLSv1.2".
    #[arg(long, env = "FERRY_TLS_PROTOCOLS", value_parser = clap::builder::ValueParser::new(|s: &str| s.parse::<ferry_proto::tls::TlsProtocols>()))]
    tls_protocols: Option<ferry_proto::tls::TlsProtocols>,
    #[command(flatten)]
    tls_ciphers: TlsCipherArgs,
    /// A token Prometheus must send (`Authorization: Bearer TOKEN`, its
    /// scrape config's `authorization: credentials:`) to read the metrics;
    /// 401 without it. Printable ASCII without spaces. Default: none asked.
    #[arg(long, env = "FERRY_METRICS_TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,
    /// Bytes of key entries kept in memory for reads, in front of RocksDB
    /// (entries enter when read, leave when written; 0: none).
    #[arg(long, env = "FERRY_READ_CACHE_BYTES", default_value_t = ferry_engine::READ_CACHE_BYTES_DEFAULT)]
    read_cache_bytes: usize,
    /// Most clients connected at once.
    #[arg(long, env = "FERRY_MAXCLIENTS", default_value_t = node::MAXCLIENTS_DEFAULT)]
    maxclients: usize,
    /// Commands that run at least this many microseconds enter the slow log
    /// (SLOWLOG GET); 0: every command, negative: none. As Redis's
    /// slowlog-log-slower-than.
    #[arg(long, env = "FERRY_SLOWLOG_LOG_SLOWER_THAN", default_value_t = node::SLOWLOG_LOG_SLOWER_THAN_DEFAULT, allow_negative_numbers = true)]
    slowlog_log_slower_than: i64,
    /// Entries the slow log keeps (the oldest leave first), as Redis's
    /// slowlog-max-len.
    #[arg(long, env = "FERRY_SLOWLOG_MAX_LEN", default_value_t = node::SLOWLOG_MAX_LEN_DEFAULT)]
    slowlog_max_len: usize,
    /// Entries ACL LOG keeps (failed authentications; the oldest leave
    /// first), as Redis's acllog-max-len.
    #[arg(long, env = "FERRY_ACLLOG_MAX_LEN", default_value_t = node::ACLLOG_MAX_LEN_DEFAULT)]
    acllog_max_len: usize,
    /// Events (commands, WAL writes and syncs, RocksDB writes, expiry
    /// sweeps) that take at least this many milliseconds are noted for
    /// LATENCY LATEST, HISTORY, GRAPH and DOCTOR; 0: none. As Redis's
    /// latency-monitor-threshold.
    #[arg(long, env = "FERRY_LATENCY_MONITOR_THRESHOLD", default_value_t = 0)]
    latency_monitor_threshold: u64,
    /// Threads that serve connections (RESP and gRPC). Default: one per core
    /// but one, which is left to the WAL writer thread that logs and applies
    /// every write. On two cores a second worker only adds wake-ups and
    /// context switches.
    #[arg(long, env = "FERRY_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    worker_threads: Option<u16>,
    /// Follow this primary, given by its gRPC address (e.g.
    /// http://10.0.0.1:7379, or host:port). Kept in the data directory: a
    /// restart needs no flag; the same flag at a later start leaves a role
    /// taken since (a promotion) as it is.
    #[arg(long, env = "FERRY_REPLICA_OF")]
    replica_of: Option<String>,
    /// Whether a replica answers reads while its link to the primary is down
    /// (no: -MASTERDOWN), as Redis's replica-serve-stale-data.
    #[arg(long, env = "FERRY_REPLICA_SERVE_STALE_DATA", default_value = "yes", value_parser = parse_yes_no, action = clap::ArgAction::Set)]
    replica_serve_stale_data: bool,
    /// Seconds of silence after which a replication link counts as broken
    /// (either end), as Redis's repl-timeout.
    #[arg(long, env = "FERRY_REPL_TIMEOUT", default_value_t = node::REPL_TIMEOUT_DEFAULT_SECS)]
    repl_timeout: u64,
    /// On a replica: promote itself when the primary has been unreachable
    /// this many seconds and everything received is applied.
    #[arg(long, env = "FERRY_FAILOVER_AFTER")]
    failover_after: Option<u64>,
    /// The write lease, as Redis's min-replicas-to-write: a primary refuses
    /// writes (-NOREPLICAS) when fewer replicas acked within
    /// --min-replicas-max-lag. 0 (or a lag of 0): no lease.
    #[arg(long, env = "FERRY_MIN_REPLICAS_TO_WRITE", default_value_t = 0)]
    min_replicas_to_write: usize,
    /// Seconds within which a replica must have acked to count for the lease.
    #[arg(long, env = "FERRY_MIN_REPLICAS_MAX_LAG", default_value_t = node::MIN_REPLICAS_MAX_LAG_DEFAULT_SECS)]
    min_replicas_max_lag: u64,
    /// Seconds SHUTDOWN waits, writes held, for replicas that have not
    /// flushed the last write (Redis's shutdown-timeout; SHUTDOWN NOW does
    /// not wait).
    #[arg(long, env = "FERRY_SHUTDOWN_TIMEOUT", default_value_t = node::SHUTDOWN_TIMEOUT_DEFAULT_SECS)]
    shutdown_timeout: u64,
    /// Largest bulk string in a request, in bytes (or with a unit, as
    /// Redis's memory values: 512mb, 1gb).
    #[arg(long, env = "FERRY_PROTO_MAX_BULK_LEN", default_value_t = node::PROTO_MAX_BULK_LEN_DEFAULT, value_parser = parse_bytes)]
    proto_max_bulk_len: usize,
    /// Most arguments in one request.
    #[arg(long, env = "FERRY_PROTO_MAX_MULTIBULK_LEN", default_value_t = node::PROTO_MAX_MULTIBULK_LEN_DEFAULT)]
    proto_max_multibulk_len: usize,
    /// The most bytes of WAL a replica's retention slot may hold back; past
    /// it the oldest segments go and that replica bootstraps from a snapshot
    /// when it returns (PostgreSQL's max_slot_wal_keep_size). 0: no cap.
    #[arg(long, env = "FERRY_WAL_RETENTION_MAX_BYTES", default_value_t = ferry_shipper::WAL_RETENTION_MAX_BYTES_DEFAULT)]
    wal_retention_max_bytes: u64,
    /// A WAL segment is sealed and a new one begun at this size; retention
    /// deletes whole segments.
    #[arg(long, env = "FERRY_WAL_SEGMENT_BYTES", default_value_t = ferry_wal::SEGMENT_BYTES_MAX_DEFAULT)]
    wal_segment_bytes: u64,
    /// Bytes per second each snapshot sent to a bootstrapping replica may
    /// use. 0: no limit.
    #[arg(long, env = "FERRY_SNAPSHOT_RATE_LIMIT", default_value_t = 0)]
    snapshot_rate_limit: u64,
    /// Most unparsed bytes buffered for one client before it is closed
    /// (or with a unit: 1gb).
    #[arg(long, env = "FERRY_CLIENT_QUERY_BUFFER_LIMIT", default_value_t = node::CLIENT_QUERY_BUFFER_LIMIT_DEFAULT, value_parser = parse_bytes)]
    client_query_buffer_limit: usize,
    /// Keys CLIENT TRACKING remembers for clients' caches before it
    /// forgets some, telling their clients (Redis's
    /// tracking-table-max-keys; 0: no limit).
    #[arg(long, env = "FERRY_TRACKING_TABLE_MAX_KEYS", default_value_t = tracking::TRACKING_TABLE_MAX_KEYS_DEFAULT)]
    tracking_table_max_keys: usize,
    /// Keyspace notifications' classes, as Redis's notify-keyspace-events
    /// (K, E and A g $ h x n ...; empty: none). A replica tells the events
    /// its primary logs, which takes the classes on there.
    #[arg(long, env = "FERRY_NOTIFY_KEYSPACE_EVENTS", default_value = "", value_parser = parse_keyspace_events)]
    notify_keyspace_events: u32,
    /// When a client whose output waits is closed, as Redis's
    /// client-output-buffer-limit: `class hard soft seconds` for the
    /// classes given (normal, replica, pubsub; sizes as 32mb), over
    /// Redis's defaults; given again (a line per class in a config file),
    /// each over the last. ferry holds subscribers (pubsub) to it.
    #[arg(long, env = "FERRY_CLIENT_OUTPUT_BUFFER_LIMIT", default_value = pubsub::OUTPUT_LIMITS_DEFAULT_TEXT, value_parser = parse_output_limits, action = clap::ArgAction::Append)]
    client_output_buffer_limit: Vec<String>,
    /// Closes a client idle this many seconds (Redis's timeout; 0: never).
    /// A MONITOR client, a subscriber, or one waiting in WAIT, is not idle.
    #[arg(long, env = "FERRY_TIMEOUT", default_value_t = 0)]
    timeout: u64,
    /// TCP keepalive probes on client connections after this many idle
    /// seconds (Redis's tcp-keepalive), so the connection of a client host
    /// that vanished is closed. 0: none.
    #[arg(long, env = "FERRY_TCP_KEEPALIVE", default_value_t = node::TCP_KEEPALIVE_DEFAULT_SECS)]
    tcp_keepalive: u64,
}

fn parse_policy(s: &str) -> Result<SyncPolicy, String> {
    s.parse()
}

/// `host:port`, the form other nodes are given addresses in (an IPv6
/// host in brackets: `[::1]:7379`).
fn parse_host_port(s: &str) -> Result<String, String> {
    let valid = s.rsplit_once(':').is_some_and(|(host, port)| {
        let bracketed = host.starts_with('[') && host.ends_with(']') && host.len() > 2;
        !host.is_empty()
            && !host.contains('/')
            && (bracketed || !host.contains(':'))
            && port.parse::<u16>().is_ok()
    });
    if valid {
        Ok(s.to_string())
    } else {
        Err(format!(
            "expected host:port (an IPv6 host in brackets), got {s:?}"
        ))
    }
}

/// A `client-output-buffer-limit` value, checked.
fn parse_output_limits(s: &str) -> Result<String, String> {
    pubsub::parse_output_limits(s, pubsub::OUTPUT_LIMITS_DEFAULT)
        .map(|_| s.to_string())
        .map_err(str::to_string)
}

/// Keyspace notifications' classes, as Redis reads them ([`notify::parse`]).
fn parse_keyspace_events(s: &str) -> Result<u32, String> {
    notify::parse(s.as_bytes()).ok_or_else(|| notify::INVALID.to_string())
}

/// A number of bytes, bare or with a unit ([`commands::parse_memory`]).
fn parse_bytes(s: &str) -> Result<usize, String> {
    match commands::parse_memory(s.as_bytes()) {
        Some(bytes) if bytes >= 0 => Ok(bytes as usize),
        _ => Err(format!(
            "expected a number of bytes, bare or with a unit (k, kb, m, mb, g, gb), got {s:?}"
        )),
    }
}

fn parse_yes_no(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => Err(format!("expected yes or no, got {s:?}")),
    }
}

/// The cipher suites a node serves over TLS.
#[derive(Debug, Clone, clap::Args)]
pub struct TlsCipherArgs {
    /// The cipher suites served over TLSv1.2, by OpenSSL's names as
    /// Redis's tls-ciphers, separated by ':'
    /// (ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384). Default:
    /// all that rustls has, every one an AEAD with forward secrecy.
    #[arg(long, env = "FERRY_TLS_CIPHERS", value_parser = |s: &str| ferry_proto::tls::TlsCiphers::parse(s, false))]
    tls_ciphers: Option<ferry_proto::tls::CipherSuites>,
    /// The cipher suites served over TLSv1.3, as Redis's tls-ciphersuites
    /// (TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256). Default: all
    /// three.
    #[arg(long, env = "FERRY_TLS_CIPHERSUITES", value_parser = |s: &str| ferry_proto::tls::TlsCiphers::parse(s, true))]
    tls_ciphersuites: Option<ferry_proto::tls::CipherSuites>,
}

impl TlsCipherArgs {
    /// The flags given, by name.
    fn given(&self) -> Option<&'static str> {
        self.tls_ciphers
            .as_ref()
            .map(|_| "--tls-ciphers")
            .or(self.tls_ciphersuites.as_ref().map(|_| "--tls-ciphersuites"))
    }

    /// The suites given.
    fn ciphers(&self) -> ferry_proto::tls::TlsCiphers {
        ferry_proto::tls::TlsCiphers::new(self.tls_ciphers.clone(), self.tls_ciphersuites.clone())
    }
}

#[derive(Debug, clap::Args)]
struct PromoteArgs {
    /// The replica's gRPC address: a URL, or host:port (reached over TLS with
    /// --tls-ca-cert-file).
    #[arg(long, env = "FERRY_ADDR", default_value = "127.0.0.1:7379")]
    addr: String,
    /// Promote even if records the primary had are missing here: they are
    /// lost, and the range is reported.
    #[arg(long)]
    force: bool,
    /// Seconds to wait for the replica to catch up before refusing.
    #[arg(long, default_value_t = 0)]
    wait: u64,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Debug, clap::Args)]
struct SwitchoverArgs {
    /// The primary's gRPC address: a URL, or host:port (reached over TLS with
    /// --tls-ca-cert-file).
    #[arg(long, env = "FERRY_ADDR", default_value = "127.0.0.1:7379")]
    addr: String,
    /// The replica to hand over to (a node id from `ferry status`); by
    /// default the one furthest ahead.
    #[arg(long)]
    to: Option<String>,
    /// Seconds the replica may take to catch up (at least 1: the call's 0
    /// means its default).
    #[arg(long, default_value_t = node::SWITCHOVER_TIMEOUT_DEFAULT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Debug, clap::Args)]
struct DropSlotArgs {
    /// The gRPC address of the node keeping the slot: a URL, or host:port (reached over TLS with
    /// --tls-ca-cert-file).
    #[arg(long, env = "FERRY_ADDR", default_value = "127.0.0.1:7379")]
    addr: String,
    /// The replica's node id, as `ferry status` lists the slots.
    node_id: String,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// The node's gRPC address: a URL, or host:port (reached over TLS with
    /// --tls-ca-cert-file).
    #[arg(long, env = "FERRY_ADDR", default_value = "127.0.0.1:7379")]
    addr: String,
    /// Print JSON (snake_case keys) instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Debug, Subcommand)]
enum WalCommand {
    /// Per segment: LSN range, epochs, time range, stored and decompressed
    /// bytes and their ratio; then totals and any problem. Read-only.
    Inspect {
        /// The WAL directory.
        dir: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// One line per operation: LSN, epoch, time, operation, key, a preview
    /// of the value. Read-only.
    Dump {
        /// The WAL directory.
        dir: PathBuf,
        /// First LSN shown.
        #[arg(long)]
        from: Option<u64>,
        /// Last LSN shown.
        #[arg(long)]
        to: Option<u64>,
        /// Only records written at or after this time (RFC 3339, or ms since
        /// the Unix epoch).
        #[arg(long, value_parser = tools::parse_time)]
        since: Option<u64>,
        /// Only records written at or before this time.
        #[arg(long, value_parser = tools::parse_time)]
        until: Option<u64>,
        /// Only operations on keys matching this glob (Redis syntax).
        #[arg(long)]
        key: Option<String>,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
        /// Keep going: show records as they are written, until interrupted.
        #[arg(long)]
        follow: bool,
    },
    /// Checks every frame of a WAL directory without changing it. Exits 0
    /// when the log is intact, 1 otherwise, naming the segment file, byte
    /// offset and LSN of each problem.
    Verify {
        /// The WAL directory.
        dir: PathBuf,
    },
    /// Cuts a torn tail (keeping a .broken copy). With --salvage, cuts the
    /// log at its first corruption and keeps everything after it in a side
    /// directory. Refuses a log whose node is running.
    Repair {
        /// The WAL directory.
        dir: PathBuf,
        /// Also cut at a corruption before the end of the log.
        #[arg(long)]
        salvage: bool,
    },
}

#[derive(Debug, clap::Args)]
struct ReplayArgs {
    /// The WAL directory to read (it is not changed).
    #[arg(long)]
    wal: PathBuf,
    /// The new data directory to build (must not exist or be empty); with
    /// --onto, an existing primary's data directory to apply the records to.
    #[arg(long)]
    data_dir: PathBuf,
    /// Apply the records onto an existing (stopped) primary's data
    /// directory as new writes after its own, with new LSNs: for a
    /// quarantine file, or any log.
    #[arg(long)]
    onto: bool,
    /// Stop after this LSN.
    #[arg(long, conflicts_with = "until_time")]
    until_lsn: Option<u64>,
    /// Stop after the last record written at or before this time (RFC 3339,
    /// or ms since the Unix epoch).
    #[arg(long, value_parser = tools::parse_time)]
    until_time: Option<u64>,
}

fn main() -> anyhow::Result<ExitCode> {
    // Built, so that serve's flags include the global ones (--log-format).
    let mut command = Cli::command();
    command.build();
    let args = config_file::expand_args(
        std::env::args_os().collect(),
        command.find_subcommand("serve").expect("the serve command"),
    )
    .map_err(anyhow::Error::msg)?;
    let cli = Cli::parse_from(args);
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours for a terminal only: not escape codes in a log file.
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Human => subscriber.init(),
        LogFormat::Json => subscriber.json().init(),
    }
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Status(args) => report::run(&args.addr, &args.cluster.caller()?, args.json),
        Command::Promote(args) => {
            report::promote(&args.addr, &args.cluster.caller()?, args.force, args.wait)
        }
        Command::DropSlot(args) => {
            report::drop_slot(&args.addr, &args.cluster.caller()?, &args.node_id)
        }
        Command::Switchover(args) => {
            report::switchover(&args.addr, &args.cluster.caller()?, args.to, args.timeout)
        }
        Command::Replay(args) => {
            let until = match (args.until_lsn, args.until_time) {
                (Some(n), _) => tools::Until::Lsn(n),
                (None, Some(t)) => tools::Until::TimeMs(t),
                (None, None) => tools::Until::End,
            };
            if args.onto {
                tools::replay_onto(&args.wal, &args.data_dir, until)
            } else {
                tools::replay(&args.wal, &args.data_dir, until)
            }
        }
        Command::Wal { command } => match command {
            WalCommand::Inspect { dir, json } => tools::inspect(&dir, json),
            WalCommand::Dump {
                dir,
                from,
                to,
                since,
                until,
                key,
                json,
                follow,
            } => {
                let filter = tools::DumpFilter {
                    from,
                    to,
                    since_ms: since,
                    until_ms: until,
                    key,
                };
                tools::dump(&dir, &filter, json, follow)
            }
            WalCommand::Verify { dir } => tools::verify(&dir),
            WalCommand::Repair { dir, salvage } => tools::repair(&dir, salvage),
        },
    }
}

/// The cluster token and TLS files, for `ferry serve` and the commands that
/// call a node.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClusterArgs {
    /// A shared secret every gRPC call to this node must carry (a
    /// replica's stream, status, admin; not the health service), and that
    /// it sends to the nodes it calls: give every node of a cluster, and
    /// the tools, the same one. Printable ASCII without spaces. Default:
    /// none asked, none sent.
    #[arg(long, env = "FERRY_CLUSTER_TOKEN", hide_env_values = true)]
    pub cluster_token: Option<String>,
    /// A PEM certificate (chain): a node serves TLS on its gRPC address with
    /// it, and presents it to the nodes it calls; a tool presents it to the
    /// node. Needs --tls-key-file.
    #[arg(long, env = "FERRY_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// The PEM private key of --tls-cert-file.
    #[arg(long, env = "FERRY_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// A PEM CA (one or more certificates): nodes are then called over TLS
    /// only (https:// addresses), their certificates checked against it; a
    /// node serving TLS also asks its callers for a certificate it signed
    /// (see --tls-auth-clients).
    #[arg(long, env = "FERRY_TLS_CA_CERT_FILE")]
    pub tls_ca_cert_file: Option<PathBuf>,
}

impl ClusterArgs {
    /// # Errors
    ///
    /// A token that cannot travel in a header.
    pub fn check_token(&self) -> anyhow::Result<()> {
        if let Some(token) = &self.cluster_token {
            ferry_proto::auth::header_value(token).context("--cluster-token")?;
        }
        Ok(())
    }

    /// The TLS files, read and checked.
    ///
    /// # Errors
    ///
    /// As [`ferry_proto::tls::Tls::load`].
    pub fn tls(
        &self,
        client_auth: ferry_proto::tls::ClientAuth,
        protocols: ferry_proto::tls::TlsProtocols,
        ciphers: ferry_proto::tls::TlsCiphers,
    ) -> anyhow::Result<Tls> {
        let files = ferry_proto::tls::TlsFiles {
            cert: self.tls_cert_file.clone(),
            key: self.tls_key_file.clone(),
            ca: self.tls_ca_cert_file.clone(),
        };
        Ok(Tls::load_serving(&files, client_auth, protocols, ciphers)?)
    }

    /// A node's TLS: the three files together or none, and
    /// `--tls-auth-clients` only with them. Warns of a key others can
    /// read.
    ///
    /// # Errors
    ///
    /// As [`ClusterArgs::tls`], and files or flags missing.
    pub fn node_tls(
        &self,
        client_auth: Option<ferry_proto::tls::ClientAuth>,
        protocols: Option<ferry_proto::tls::TlsProtocols>,
        ciphers: &TlsCipherArgs,
    ) -> anyhow::Result<Tls> {
        let files = [
            ("--tls-cert-file", &self.tls_cert_file),
            ("--tls-key-file", &self.tls_key_file),
            ("--tls-ca-cert-file", &self.tls_ca_cert_file),
        ];
        let missing: Vec<&str> = files
            .iter()
            .filter(|(_, f)| f.is_none())
            .map(|(flag, _)| *flag)
            .collect();
        if missing.is_empty() {
            if let Some(key) = &self.tls_key_file {
                warn_if_others_read(key);
            }
        } else if missing.len() < files.len() {
            anyhow::bail!(
                "a node's TLS needs --tls-cert-file, --tls-key-file and --tls-ca-cert-file together (it serves with the first two and checks its peers with the CA): {} missing",
                missing.join(", ")
            );
        } else if let Some(flag) = [
            client_auth.map(|_| "--tls-auth-clients"),
            protocols.map(|_| "--tls-protocols"),
            ciphers.given(),
        ]
        .into_iter()
        .flatten()
        .next()
        {
            anyhow::bail!(
                "{flag} needs TLS: --tls-cert-file, --tls-key-file and --tls-ca-cert-file"
            );
        }
        self.tls(
            client_auth.unwrap_or_default(),
            protocols.unwrap_or_default(),
            ciphers.ciphers(),
        )
    }

    /// How a tool calls the node: the token and TLS.
    ///
    /// # Errors
    ///
    /// As [`ClusterArgs::check_token`] and [`ClusterArgs::tls`].
    pub fn caller(&self) -> anyhow::Result<report::Caller> {
        Ok(report::Caller {
            token: ferry_proto::auth::Attach::new(self.cluster_token.as_deref())
                .context("--cluster-token")?,
            tls: self.tls(
                ferry_proto::tls::ClientAuth::default(),
                ferry_proto::tls::TlsProtocols::default(),
                ferry_proto::tls::TlsCiphers::default(),
            )?,
        })
    }
}

/// Threads serving connections unless `--worker-threads` says otherwise: a
/// core each, but the one the WAL writer thread keeps busy under load.
fn worker_threads_default() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

/// The smallest WAL segment `--wal-segment-bytes` takes.
const WAL_SEGMENT_BYTES_MIN: u64 = 1 << 16;

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    args.cluster.check_token()?;
    let tls =
        args.cluster
            .node_tls(args.tls_auth_clients, args.tls_protocols, &args.tls_ciphers)?;
    if let Some(token) = &args.metrics_token {
        ferry_proto::auth::header_value(token).context("--metrics-token")?;
    }
    // As CONFIG SET bounds them (so a node never starts with a value it
    // would refuse at run time), and a number of seconds as Redis's
    // (INT_MAX at most: a later one overflows the clock).
    let number = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    for (name, value) in [
        ("maxclients", number(args.maxclients as u64)),
        ("proto-max-bulk-len", number(args.proto_max_bulk_len as u64)),
        (
            "proto-max-multibulk-len",
            number(args.proto_max_multibulk_len as u64),
        ),
        (
            "client-query-buffer-limit",
            number(args.client_query_buffer_limit as u64),
        ),
        ("shutdown-timeout", number(args.shutdown_timeout)),
        (
            "min-replicas-to-write",
            number(args.min_replicas_to_write as u64),
        ),
        ("min-replicas-max-lag", number(args.min_replicas_max_lag)),
        ("slowlog-log-slower-than", args.slowlog_log_slower_than),
        ("timeout", number(args.timeout)),
        ("tcp-keepalive", number(args.tcp_keepalive)),
    ] {
        commands::check_setting(name, value).map_err(|why| anyhow::anyhow!("--{name} {why}"))?;
    }
    for (name, value) in [
        ("repl-timeout", Some(args.repl_timeout)),
        ("failover-after", args.failover_after),
    ] {
        if let Some(secs) = value
            && !(1..=i32::MAX as u64).contains(&secs)
        {
            anyhow::bail!(
                "--{name} must be between 1 and {} seconds, not {secs}",
                i32::MAX
            );
        }
    }
    if args.wal_segment_bytes < WAL_SEGMENT_BYTES_MIN {
        anyhow::bail!(
            "--wal-segment-bytes must be at least {WAL_SEGMENT_BYTES_MIN}, not {}",
            args.wal_segment_bytes
        );
    }
    // As Redis, which CONFIG SET lets set them so: a bulk longer than the
    // query buffer closes its connection at the buffer's limit.
    if args.proto_max_bulk_len > args.client_query_buffer_limit {
        tracing::warn!(
            proto_max_bulk_len = args.proto_max_bulk_len,
            client_query_buffer_limit = args.client_query_buffer_limit,
            "a bulk string as long as --proto-max-bulk-len does not fit in --client-query-buffer-limit: its connection is closed at the buffer's limit"
        );
    }
    // Without a scheme, in the one this node calls in, as the tools take
    // an address; checked before it is kept in the data directory.
    let replica_of = args.replica_of.as_ref().map(|primary| tls.url(primary));
    if let Some(primary) = &replica_of {
        tls.endpoint(primary).context("--replica-of")?;
    }
    node::lease_fits_failover(
        args.min_replicas_to_write,
        args.min_replicas_max_lag,
        args.failover_after.map(std::time::Duration::from_secs),
    )
    .map_err(anyhow::Error::msg)?;
    let worker_threads = args
        .worker_threads
        .map_or_else(worker_threads_default, usize::from);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads)
        .enable_all()
        .thread_name("ferry")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        // From here on SIGHUP never stops the node (see `reload_on_sighup`).
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("watching SIGHUP")?;
        let resp = tokio::net::TcpListener::bind(args.resp_addr)
            .await
            .with_context(|| format!("listening on {}", args.resp_addr))?;
        let grpc = tokio::net::TcpListener::bind(args.grpc_addr)
            .await
            .with_context(|| format!("listening on {}", args.grpc_addr))?;
        let (resp_addr, grpc_addr) = (resp.local_addr()?, grpc.local_addr()?);
        let resp_tls = match args.resp_tls_addr {
            Some(addr) => {
                if tls.resp_config().is_none() {
                    anyhow::bail!(
                        "--resp-tls-addr needs TLS: --tls-cert-file, --tls-key-file and --tls-ca-cert-file"
                    );
                }
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("listening on {addr}"))?;
                Some((listener, tls.clone()))
            }
            None => None,
        };
        let resp_tls_addr = resp_tls
            .as_ref()
            .map(|(l, _)| l.local_addr())
            .transpose()?;
        let metrics = match args.metrics_addr {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("listening on {addr}"))?,
            ),
            None => None,
        };
        let metrics_addr = metrics.as_ref().map(|l| l.local_addr()).transpose()?;
        let config_file = args
            .config
            .as_deref()
            .map(|path| {
                let command = Cli::command();
                let serve = command.find_subcommand("serve").expect("the serve command");
                config_file::ConfigFile::new(path, serve)
            })
            .transpose()
            .context("--config")?;
        let config = Config {
            config_file,
            data_dir: args.data_dir,
            announce_resp_addr: args.announce_resp_addr,
            announce_grpc_addr: args.announce_grpc_addr,
            replica_of,
            replica_serve_stale_data: args.replica_serve_stale_data.into(),
            repl_timeout: std::time::Duration::from_secs(args.repl_timeout),
            failover_after: args.failover_after.map(std::time::Duration::from_secs),
            min_replicas_to_write: args.min_replicas_to_write.into(),
            min_replicas_max_lag_secs: args.min_replicas_max_lag.into(),
            shutdown_timeout_secs: args.shutdown_timeout.into(),
            fsync: args.fsync,
            requirepass: node::Password::new(args.requirepass),
            cluster_token: args.cluster.cluster_token,
            tls,
            metrics_token: args.metrics_token,
            maxclients: fit_maxclients(args.maxclients).into(),
            slowlog_log_slower_than: args.slowlog_log_slower_than.into(),
            slowlog_max_len: (args.slowlog_max_len as u64).into(),
            acllog_max_len: (args.acllog_max_len as u64).into(),
            latency_monitor_threshold: args.latency_monitor_threshold,
            read_cache_bytes: args.read_cache_bytes,
            proto_max_bulk_len: args.proto_max_bulk_len.into(),
            proto_max_multibulk_len: args.proto_max_multibulk_len.into(),
            client_query_buffer_limit: args.client_query_buffer_limit.into(),
            timeout_secs: args.timeout.into(),
            tcp_keepalive_secs: args.tcp_keepalive.into(),
            wal_retention_max_bytes: args.wal_retention_max_bytes,
            wal_segment_bytes: args.wal_segment_bytes,
            snapshot_rate_limit: args.snapshot_rate_limit,
        };
        commands::set_string_bytes_max(args.proto_max_bulk_len);
        let node = Arc::new(Node::open(config, resp_addr, grpc_addr).await?);
        node.tracking.set_max_keys(args.tracking_table_max_keys);
        node.notify.set(args.notify_keyspace_events);
        let mut limits = pubsub::OUTPUT_LIMITS_DEFAULT;
        for value in &args.client_output_buffer_limit {
            limits = pubsub::parse_output_limits(value, limits).map_err(anyhow::Error::msg)?;
        }
        node.pubsub.set_output_limits(limits);
        node.start_role().await?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let grpc_task = tokio::spawn(status::serve(node.clone(), grpc, stop_rx.clone()));
        let failover = {
            let node = node.clone();
            let stop_rx = stop_rx.clone();
            tokio::spawn(async move { node.watch_for_failover(stop_rx).await })
        };
        let metrics_task = metrics
            .map(|listener| tokio::spawn(metrics::serve(node.clone(), listener, stop_rx.clone())));
        certs::log_expiry(&node.config.tls);
        let reloads = tokio::spawn(reload_on_sighup(node.clone(), hangups, stop_rx.clone()));
        let retention = tokio::spawn(node.clone().keep_wal(stop_rx));
        tracing::info!(
            %resp_addr,
            %grpc_addr,
            fsync = %node.config.fsync,
            role = if node.is_replica() { "replica" } else { "primary" },
            node_id = node.identity.node_id(),
            "ferry is ready"
        );
        // Tools and tests wait for this line to know the node is ready.
        let mut ready = format!("ferry listening resp={resp_addr} grpc={grpc_addr}");
        if let Some(addr) = metrics_addr {
            ready.push_str(&format!(" metrics={addr}"));
        }
        if let Some(addr) = resp_tls_addr {
            ready.push_str(&format!(" resp_tls={addr}"));
        }
        println!("{ready}");
        // SIGINT or SIGTERM stop the node as SHUTDOWN does (Redis's
        // shutdown-on-sigterm default): a primary first waits for lagging
        // replicas, up to --shutdown-timeout; SHUTDOWN ABORT cancels that
        // wait, and a second signal during it stops the node at once.
        let stop_asked = {
            let node = node.clone();
            async move {
                loop {
                    tokio::select! {
                        () = shutdown_signal() => {
                            tokio::select! {
                                stopping = node.shutdown_by_command(None, false, false) => {
                                    if stopping.is_ok() {
                                        return;
                                    }
                                }
                                () = shutdown_signal() => {
                                    tracing::warn!("a second signal: stopping now");
                                    return;
                                }
                            }
                        }
                        () = node.shutdown_requested() => return,
                    }
                }
            }
        };
        server::run(node.clone(), resp, resp_tls, stop_asked).await?;
        node.shutdown().await;
        let _ = stop_tx.send(true);
        let _ = failover.await;
        let _ = reloads.await;
        let _ = retention.await;
        if let Some(task) = metrics_task {
            let _ = task.await;
        }
        // A peer that stopped reading (a stuck replica's link) must not hold
        // the shutdown: its connection gets the same grace as clients.
        let mut grpc_task = grpc_task;
        match tokio::time::timeout(server::SHUTDOWN_GRACE, &mut grpc_task).await {
            Ok(joined) => joined.context("the gRPC server task")??,
            Err(_) => {
                tracing::warn!("gRPC connections did not close in time; closing them");
                grpc_task.abort();
            }
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `--maxclients` fitted to the open files limit ([`node::fit_maxclients`]),
/// with a warning when fewer fit (else a connection past them would find
/// accept failing).
fn fit_maxclients(wanted: usize) -> usize {
    let fitted = node::fit_maxclients(wanted);
    if fitted < wanted {
        tracing::warn!(
            maxclients = wanted,
            fitted,
            "--maxclients needs more open files than the limit (ulimit -n) allows: maxclients lowered"
        );
    }
    fitted
}

/// Warns of a TLS key that other users than its owner can read.
fn warn_if_others_read(key: &std::path::Path) {
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(key) {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(key = %key.display(), "the TLS key can be read by other users than its owner: chmod 600 it");
        }
    }
}

/// On each SIGHUP, reads the TLS files again (as PostgreSQL does its SSL
/// files): a rotated certificate, key or CA is used from the next
/// connection on, and files that fail the checks of the start leave the
/// old ones in use. Without TLS, SIGHUP changes nothing (and, as for
/// Redis, does not stop the node).
async fn reload_on_sighup(
    node: Arc<Node>,
    mut hangups: tokio::signal::unix::Signal,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            Some(()) = hangups.recv() => {}
            _ = stop.wait_for(|&s| s) => return,
        }
        match node.config.tls.reload() {
            Ok(true) => {
                node.stats.tls_reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!("SIGHUP: TLS files reloaded; new connections use them");
                certs::log_expiry(&node.config.tls);
                if let Some(key) = node.config.tls.key_file() {
                    warn_if_others_read(key);
                }
            }
            Ok(false) => tracing::info!("SIGHUP: no TLS files to reload"),
            Err(e) => {
                node.stats
                    .tls_reload_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "SIGHUP: TLS files not reloaded; the ones read before stay in use");
            }
        }
    }
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops ferry");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
        _ = term.recv() => tracing::info!("SIGTERM"),
    }
}
