//! Prometheus metrics over HTTP (`ferry serve --metrics-addr`): what the
//! status service and INFO report, in Prometheus's text format, for
//! scrapers. `GET /metrics` (or `HEAD`) answers; anything else is a 404 or
//! a 405. Connections are kept alive between scrapes as HTTP/1.1 allows.
//! A node that serves TLS serves these over TLS too (HTTPS), with its
//! certificate as last read and its check of callers' certificates.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::node::Node;

/// The largest request head (request line and headers) read.
pub const METRICS_REQUEST_BYTES_MAX: usize = 8 << 10;
/// How long a connection may take to send a whole request head, and how
/// long an idle kept-alive connection stays open.
pub const METRICS_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Scrapers connected at once; more wait to be accepted.
pub const METRICS_CONNECTIONS_MAX: usize = 16;

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `/metrics` on `listener` until `stop` turns true.
pub async fn serve(node: Arc<Node>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(METRICS_CONNECTIONS_MAX));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = stop.changed() => break,
            permit = slots.clone().acquire_owned() => permit.expect("never closed"),
        };
        let stream = tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a metrics connection failed");
                    tokio::time::sleep(crate::server::ACCEPT_RETRY_PAUSE).await;
                    continue;
                }
            },
        };
        let node = node.clone();
        connections.spawn(async move {
            let ended = match node.config.tls.resp_config() {
                Some(config) => {
                    let addr = stream
                        .peer_addr()
                        .map(|a| a.to_string())
                        .unwrap_or_default();
                    match crate::server::tls_handshake(&node, config, stream, &addr).await {
                        Some(stream) => connection(&node, stream).await,
                        None => Ok(()),
                    }
                }
                None => connection(&node, stream).await,
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "metrics connection ended");
            }
            drop(permit);
        });
        while connections.try_join_next().is_some() {}
    }
    connections.abort_all();
}

/// A request as far as this server reads it.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    path: String,
    keep_alive: bool,
    authorization: Option<String>,
}

/// Why a request head is not answered with metrics.
#[derive(Debug, PartialEq, Eq)]
enum BadRequest {
    TooLarge,
    Malformed,
}

/// Parses a request head (up to and without its blank line).
fn parse_head(head: &[u8]) -> Result<Request, BadRequest> {
    let head = std::str::from_utf8(head).map_err(|_| BadRequest::Malformed)?;
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BadRequest::Malformed);
    };
    let mut authorization = None;
    let mut keep_alive = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err(BadRequest::Malformed),
    };
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(BadRequest::Malformed)?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case("close") {
                keep_alive = false;
            } else if value.eq_ignore_ascii_case("keep-alive") {
                keep_alive = true;
            }
        } else if (name.eq_ignore_ascii_case("content-length") && value != "0")
            || name.eq_ignore_ascii_case("transfer-encoding")
        {
            // No route takes a body: one left unread would be taken for the
            // next request.
            return Err(BadRequest::Malformed);
        }
    }
    let path = target.split('?').next().unwrap_or_default();
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
        keep_alive,
        authorization,
    })
}

/// How long a closing connection's unread input is drained, so the peer
/// reads the last response instead of a reset.
const LINGER: Duration = Duration::from_secs(1);

/// Answers requests on one connection, then closes it gracefully.
async fn connection(
    node: &Node,
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
) -> std::io::Result<()> {
    let answered = answer(node, &mut stream).await;
    let _ = stream.shutdown().await;
    let _ = tokio::time::timeout(LINGER, async {
        let mut chunk = [0u8; 4096];
        let mut drained = 0;
        while drained < 8 * METRICS_REQUEST_BYTES_MAX {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
    answered
}

/// Answers requests until the peer closes, errs, idles past
/// [`METRICS_REQUEST_TIMEOUT`] or asks to close.
async fn answer(
    node: &Node,
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let head = tokio::time::timeout(METRICS_REQUEST_TIMEOUT, read_head(stream, &mut buf))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request timed out"))?;
        let request = match head? {
            None => return Ok(()),
            Some(Err(BadRequest::TooLarge)) => {
                return respond(stream, 431, "request head too large\n", false, true).await;
            }
            Some(Err(BadRequest::Malformed)) => {
                return respond(stream, 400, "bad request\n", false, true).await;
            }
            Some(Ok(request)) => request,
        };
        let head_only = request.method == "HEAD";
        let keep_alive = request.keep_alive;
        if let Some(want) = &node.config.metrics_token {
            let why = match &request.authorization {
                None => Some("a bearer token is required (--metrics-token)\n"),
                Some(given) if !ferry_proto::auth::bearer_matches(given, want) => {
                    Some("wrong bearer token (--metrics-token)\n")
                }
                Some(_) => None,
            };
            if let Some(why) = why {
                respond(stream, 401, why, head_only, !keep_alive).await?;
                if !keep_alive {
                    return Ok(());
                }
                continue;
            }
        }
        match (request.path.as_str(), request.method.as_str()) {
            ("/metrics", "GET" | "HEAD") => {
                let body = render(node);
                respond(stream, 200, &body, head_only, !keep_alive).await?;
            }
            ("/metrics", _) => {
                respond(stream, 405, "only GET and HEAD\n", head_only, true).await?;
                return Ok(());
            }
            _ => {
                respond(
                    stream,
                    404,
                    "not found: try /metrics\n",
                    head_only,
                    !keep_alive,
                )
                .await?
            }
        }
        if !keep_alive {
            return Ok(());
        }
    }
}

/// Reads the next request head into `buf` (which keeps what follows it):
/// `None` when the peer closed between requests.
async fn read_head(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Result<Request, BadRequest>>> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            if end > METRICS_REQUEST_BYTES_MAX {
                return Ok(Some(Err(BadRequest::TooLarge)));
            }
            let parsed = parse_head(&buf[..end]);
            buf.drain(..end + 4);
            return Ok(Some(parsed));
        }
        if buf.len() > METRICS_REQUEST_BYTES_MAX {
            return Ok(Some(Err(BadRequest::TooLarge)));
        }
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn respond(
    stream: &mut (impl AsyncWrite + Unpin),
    status: u16,
    body: &str,
    head_only: bool,
    close: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Request Header Fields Too Large",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        if status == 200 {
            CONTENT_TYPE
        } else {
            "text/plain"
        },
        body.len()
    );
    if status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    if status == 401 {
        out.push_str("WWW-Authenticate: Bearer realm=\"ferry metrics\"\r\n");
    }
    out.push_str(if close {
        "Connection: close\r\n\r\n"
    } else {
        "Connection: keep-alive\r\n\r\n"
    });
    if !head_only {
        out.push_str(body);
    }
    stream.write_all(out.as_bytes()).await?;
    stream.flush().await
}

/// The exposition text: `# HELP` and `# TYPE` before each metric's samples.
struct Exposition(String);

impl Exposition {
    fn metric(&mut self, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
        if samples.is_empty() {
            return;
        }
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(self.0, "{name}{labels} {value}");
        }
    }

    fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.metric(name, "gauge", help, &[(String::new(), value as f64)]);
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.metric(name, "counter", help, &[(String::new(), value as f64)]);
    }
}

/// `{name="value",...}` with Prometheus's escapes.
fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(name, value)| {
            let escaped = value
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{name}=\"{escaped}\"")
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Every metric of the node, now.
fn render(node: &Node) -> String {
    let status = crate::status::status(node);
    let stats = &node.stats;
    let mut out = Exposition(String::with_capacity(8 << 10));
    out.metric(
        "ferry_build_info",
        "gauge",
        "The running version, and the Redis version its commands follow.",
        &[(
            labels(&[
                ("version", &status.version),
                ("redis_version", crate::info::REDIS_VERSION),
            ]),
            1.0,
        )],
    );
    let expiries: Vec<(String, f64)> = crate::certs::expiries(&node.config.tls)
        .into_iter()
        .filter_map(|(file, expiry)| expiry.map(|e| (labels(&[("file", file)]), e as f64)))
        .collect();
    if !expiries.is_empty() {
        out.metric(
            "ferry_tls_cert_expiry_timestamp_seconds",
            "gauge",
            "When the soonest certificate of --tls-cert-file (file=\"cert\") and of --tls-ca-cert-file (file=\"ca\") expires, as last read: Unix time.",
            &expiries,
        );
    }
    out.metric(
        "ferry_role",
        "gauge",
        "1 for the node's role: primary or replica.",
        &[(labels(&[("role", &status.role)]), 1.0)],
    );
    out.gauge(
        "ferry_uptime_seconds",
        "Seconds since the node started.",
        node.started.elapsed().as_secs(),
    );
    out.gauge(
        "process_resident_memory_bytes",
        "Resident memory of the process.",
        crate::info::rss_bytes(),
    );
    out.gauge(
        "ferry_connected_clients",
        "RESP clients connected.",
        load(&stats.connected_clients),
    );
    let pubsub = node.pubsub.figures();
    out.gauge(
        "ferry_pubsub_channels",
        "Channels with subscribers (INFO's pubsub_channels).",
        pubsub.channels as u64,
    );
    out.gauge(
        "ferry_pubsub_patterns",
        "Patterns subscribed to (INFO's pubsub_patterns).",
        pubsub.patterns as u64,
    );
    out.gauge(
        "ferry_pubsub_shard_channels",
        "Shard channels with subscribers (INFO's pubsubshard_channels).",
        pubsub.shard_channels as u64,
    );
    out.counter(
        "ferry_pubsub_messages_total",
        "Pub/Sub messages (keyspace notifications included) queued for subscribers, one per subscriber.",
        pubsub.sent,
    );
    out.counter(
        "ferry_pubsub_subscribers_closed_total",
        "Subscribers closed for letting messages pile up unread (client-output-buffer-limit pubsub).",
        pubsub.closed,
    );
    for (name, help, counter) in [
        (
            "ferry_connections_received_total",
            "RESP connections accepted.",
            &stats.total_connections_received,
        ),
        (
            "ferry_rejected_connections_total",
            "RESP connections refused (maxclients).",
            &stats.rejected_connections,
        ),
        (
            "ferry_tls_handshake_failures_total",
            "TLS handshakes refused or timed out, on the gRPC, RESP and metrics listeners.",
            &stats.tls_handshake_failures,
        ),
        (
            "ferry_tls_reloads_total",
            "Reloads of the TLS files (SIGHUP) that took.",
            &stats.tls_reloads,
        ),
        (
            "ferry_tls_reload_failures_total",
            "Reloads of the TLS files (SIGHUP) refused: the files read before stay in use.",
            &stats.tls_reload_failures,
        ),
        (
            "ferry_commands_processed_total",
            "Commands run.",
            &stats.total_commands_processed,
        ),
        (
            "ferry_keyspace_hits_total",
            "Reads of a key for a client that found it.",
            &stats.keyspace_hits,
        ),
        (
            "ferry_keyspace_misses_total",
            "Reads of a key for a client that did not find it.",
            &stats.keyspace_misses,
        ),
        (
            "ferry_error_replies_total",
            "Replies that were errors.",
            &stats.total_error_replies,
        ),
        (
            "ferry_expired_keys_total",
            "Keys deleted by the active expiry sweep.",
            &stats.expired_keys,
        ),
        (
            "ferry_net_input_bytes_total",
            "Bytes read from RESP clients.",
            &stats.total_net_input_bytes,
        ),
        (
            "ferry_net_output_bytes_total",
            "Bytes written to RESP clients.",
            &stats.total_net_output_bytes,
        ),
    ] {
        out.counter(name, help, load(counter));
    }
    let commands: Vec<(&str, &crate::node::CommandCounters)> = stats
        .per_command()
        .filter(|(_, c)| load(&c.calls) + load(&c.rejected) > 0)
        .collect();
    let per_command = |value: &dyn Fn(&crate::node::CommandCounters) -> f64| -> Vec<(String, f64)> {
        commands
            .iter()
            .map(|(name, c)| (labels(&[("cmd", name)]), value(c)))
            .collect()
    };
    out.metric(
        "ferry_command_calls_total",
        "counter",
        "Runs of each command (failed ones included), as INFO commandstats.",
        &per_command(&|c| load(&c.calls) as f64),
    );
    out.metric(
        "ferry_command_duration_seconds_total",
        "counter",
        "Time spent running each command.",
        &per_command(&|c| load(&c.nanos) as f64 / 1e9),
    );
    out.metric(
        "ferry_command_failed_calls_total",
        "counter",
        "Runs of each command that answered with an error.",
        &per_command(&|c| load(&c.failed) as f64),
    );
    out.metric(
        "ferry_command_rejected_calls_total",
        "counter",
        "Requests for each command refused before it ran.",
        &per_command(&|c| load(&c.rejected) as f64),
    );
    let latency: Vec<(String, f64)> = commands
        .iter()
        .filter_map(|(name, c)| {
            let nanos = c.latency.percentiles(&crate::info::LATENCY_PERCENTILES)?;
            Some(
                crate::info::LATENCY_QUANTILES
                    .iter()
                    .zip(nanos)
                    .map(|(quantile, n)| {
                        (labels(&[("cmd", name), ("quantile", quantile)]), n / 1e9)
                    })
                    .collect::<Vec<_>>(),
            )
        })
        .flatten()
        .collect();
    out.metric(
        "ferry_command_latency_seconds",
        "gauge",
        "Percentiles of each command's running time since the start (or CONFIG RESETSTAT), as INFO latencystats.",
        &latency,
    );
    out.metric(
        "ferry_errors_total",
        "counter",
        "Error replies by code (their first word), as INFO errorstats.",
        &stats
            .error_codes()
            .into_iter()
            .map(|(code, n)| (labels(&[("code", &code)]), n as f64))
            .collect::<Vec<_>>(),
    );
    let expiring = node.engine.expiring();
    out.gauge(
        "ferry_keys",
        "Keys stored, logically expired ones included.",
        node.engine.key_count(),
    );
    out.gauge(
        "ferry_keys_with_expiry",
        "Keys stored with an expiry.",
        expiring.keys,
    );
    let cache = node.engine.read_cache_stats();
    out.gauge(
        "ferry_read_cache_bytes",
        "Bytes held by the read cache.",
        cache.bytes,
    );
    out.gauge(
        "ferry_read_cache_entries",
        "Keys held by the read cache.",
        cache.entries,
    );
    out.counter(
        "ferry_read_cache_hits_total",
        "Reads answered by the read cache.",
        cache.hits,
    );
    out.counter(
        "ferry_read_cache_misses_total",
        "Reads the read cache sent to RocksDB.",
        cache.misses,
    );
    let wal = status.wal.unwrap_or_default();
    out.gauge("ferry_epoch", "The epoch of the last WAL frame.", wal.epoch);
    out.gauge(
        "ferry_wal_first_lsn",
        "The first LSN the WAL retains.",
        wal.first_retained_lsn,
    );
    out.gauge(
        "ferry_wal_last_lsn",
        "The last LSN written to the WAL.",
        wal.last_lsn,
    );
    out.gauge(
        "ferry_wal_durable_lsn",
        "The last LSN that is durable.",
        wal.durable_lsn,
    );
    out.gauge(
        "ferry_engine_applied_lsn",
        "The last LSN applied to the engine.",
        status.applied_lsn,
    );
    out.gauge(
        "ferry_engine_persisted_lsn",
        "The last applied LSN in RocksDB's files.",
        status.persisted_lsn,
    );
    out.gauge(
        "ferry_wal_bytes",
        "Bytes of WAL frames retained.",
        node.wal.bytes_after(ferry_wal::Lsn::ZERO),
    );
    if let Ok(bytes) = node.engine.disk_bytes() {
        out.gauge(
            "ferry_engine_disk_bytes",
            "Bytes of the engine's live files on disk (RocksDB's SST files).",
            bytes,
        );
    }
    if let Ok(f) = node.engine.rocksdb_figures() {
        for (name, help, value) in [
            (
                "ferry_rocksdb_memtable_bytes",
                "Bytes in RocksDB's memtables.",
                f.memtable_bytes,
            ),
            (
                "ferry_rocksdb_level0_files",
                "SST files in level 0 (writes slow down past 20, stop at 36).",
                f.level0_files,
            ),
            (
                "ferry_rocksdb_pending_compaction_bytes",
                "Bytes compactions have yet to rewrite, by RocksDB's estimate.",
                f.pending_compaction_bytes,
            ),
            (
                "ferry_rocksdb_running_compactions",
                "Compactions running.",
                f.running_compactions,
            ),
            (
                "ferry_rocksdb_running_flushes",
                "Memtable flushes running.",
                f.running_flushes,
            ),
            (
                "ferry_rocksdb_delayed_write_rate_bytes",
                "The rate RocksDB holds writes to while it slows them down, bytes/s (0: not slowed).",
                f.delayed_write_rate,
            ),
            (
                "ferry_rocksdb_writes_stopped",
                "1 while RocksDB stops writes until a flush or compaction catches up.",
                u64::from(f.writes_stopped),
            ),
            (
                "ferry_rocksdb_block_cache_bytes",
                "Bytes of RocksDB's block cache in use.",
                f.block_cache_bytes,
            ),
            (
                "ferry_flushall_compaction_running",
                "1 while the compaction after a FLUSHALL gives its disk space back.",
                u64::from(f.reclaiming),
            ),
        ] {
            out.gauge(name, help, value);
        }
    }
    out.gauge(
        "ferry_wal_failed",
        "1 once a WAL write or sync has failed (the node takes no more writes).",
        u64::from(node.wal.has_failed()),
    );
    let wal_stats = node.wal.stats();
    for (name, help, value) in [
        (
            "ferry_wal_records_written_total",
            "Records written to the WAL since the node started.",
            wal_stats.records,
        ),
        (
            "ferry_wal_frames_written_total",
            "Frames (group commits) written since the node started.",
            wal_stats.frames,
        ),
        (
            "ferry_wal_bytes_written_total",
            "Frame bytes written since the node started.",
            wal_stats.bytes,
        ),
        (
            "ferry_wal_syncs_total",
            "fdatasync calls on WAL segments since the node started.",
            wal_stats.syncs,
        ),
        (
            "ferry_sync_full_total",
            "Replicas sent a snapshot.",
            status.sync_full,
        ),
        (
            "ferry_sync_partial_ok_total",
            "Replicas that resumed from the WAL.",
            status.sync_partial_ok,
        ),
        (
            "ferry_sync_partial_err_total",
            "Replicas that asked for records the WAL no longer held.",
            status.sync_partial_err,
        ),
    ] {
        out.counter(name, help, value);
    }
    out.gauge(
        "ferry_connected_replicas",
        "Replicas streaming from this node.",
        status.replicas.len() as u64,
    );
    let per_replica = |value: &dyn Fn(&ferry_proto::v1::ReplicaRow) -> u64| -> Vec<(String, f64)> {
        status
            .replicas
            .iter()
            .map(|r| (labels(&[("node_id", &r.node_id)]), value(r) as f64))
            .collect()
    };
    // The state as a label of its own series: the others keep one series
    // per replica whatever its state.
    out.metric(
        "ferry_replica_info",
        "gauge",
        "1 per replica, with its state and address.",
        &status
            .replicas
            .iter()
            .map(|r| {
                (
                    labels(&[
                        ("node_id", &r.node_id),
                        ("state", &r.state),
                        ("addr", &r.resp_addr),
                    ]),
                    1.0,
                )
            })
            .collect::<Vec<_>>(),
    );
    let lag = |r: &ferry_proto::v1::ReplicaRow| r.lag.unwrap_or_default();
    out.metric(
        "ferry_replica_lag_records",
        "gauge",
        "Records the replica has yet to apply.",
        &per_replica(&|r| lag(r).records),
    );
    out.metric(
        "ferry_replica_lag_bytes",
        "gauge",
        "WAL bytes the replica has yet to apply.",
        &per_replica(&|r| lag(r).bytes),
    );
    out.metric(
        "ferry_replica_lag_seconds",
        "gauge",
        "How far behind the replica's applied state is, in seconds.",
        &per_replica(&|r| lag(r).ms)
            .into_iter()
            .map(|(l, ms)| (l, ms / 1000.0))
            .collect::<Vec<_>>(),
    );
    out.metric(
        "ferry_replica_flushed_lsn",
        "gauge",
        "The last LSN the replica has made durable.",
        &per_replica(&|r| r.flushed_lsn),
    );
    out.metric(
        "ferry_replica_applied_lsn",
        "gauge",
        "The last LSN the replica has applied.",
        &per_replica(&|r| r.applied_lsn),
    );
    out.metric(
        "ferry_replica_sent_bytes_total",
        "counter",
        "Frame bytes sent to the replica on its current stream.",
        &per_replica(&|r| r.bytes_sent),
    );
    if let Some(link) = &status.primary_link {
        let lag = link.lag.unwrap_or_default();
        out.gauge(
            "ferry_link_up",
            "1 while the link to the primary is up.",
            u64::from(link.link_up),
        );
        out.gauge(
            "ferry_link_lag_records",
            "Records durable on the primary not yet applied here.",
            lag.records,
        );
        out.gauge(
            "ferry_link_lag_bytes",
            "WAL bytes durable on the primary not yet applied here.",
            lag.bytes,
        );
        out.metric(
            "ferry_link_lag_seconds",
            "gauge",
            "How far behind the primary this replica's applied state is, in seconds.",
            &[(String::new(), lag.ms as f64 / 1000.0)],
        );
        for (name, help, value) in [
            (
                "ferry_link_connects_total",
                "Connections made to the primary.",
                link.connects,
            ),
            (
                "ferry_link_frames_received_total",
                "WAL frames received from the primary.",
                link.frames_received,
            ),
            (
                "ferry_link_frames_rejected_total",
                "WAL frames refused (bad checksum, gap, another history).",
                link.frames_rejected,
            ),
            (
                "ferry_link_bytes_received_total",
                "Frame bytes received from the primary.",
                link.bytes_received,
            ),
            (
                "ferry_bootstraps_total",
                "Snapshots loaded from the primary.",
                link.bootstraps,
            ),
        ] {
            out.counter(name, help, value);
        }
    }
    out.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads_are_read_as_http_1_reads_them() {
        let parse = |s: &str| parse_head(s.as_bytes());
        assert_eq!(
            parse("GET /metrics?x=1 HTTP/1.1\r\nHost: a"),
            Ok(Request {
                method: "GET".into(),
                path: "/metrics".into(),
                keep_alive: true,
                authorization: None,
            })
        );
        assert_eq!(
            parse("GET /metrics HTTP/1.1\r\nAuthorization:  Bearer t0k ")
                .unwrap()
                .authorization
                .as_deref(),
            Some("Bearer t0k")
        );
        assert!(!parse("GET /metrics HTTP/1.0").unwrap().keep_alive);
        assert!(
            parse("GET /metrics HTTP/1.0\r\nConnection: Keep-Alive")
                .unwrap()
                .keep_alive
        );
        assert!(
            !parse("GET /metrics HTTP/1.1\r\nconnection: close")
                .unwrap()
                .keep_alive
        );
        for bad in [
            "GET /metrics",
            "GET /metrics HTTP/2",
            "GET  /metrics HTTP/1.1",
            "GET /metrics HTTP/1.1\r\nno colon",
            "POST /metrics HTTP/1.1\r\nContent-Length: 5",
            "POST /metrics HTTP/1.1\r\nTransfer-Encoding: chunked",
        ] {
            assert_eq!(parse(bad), Err(BadRequest::Malformed), "{bad}");
        }
        assert!(parse_head(b"GET /\xff HTTP/1.1").is_err());
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(
            labels(&[("a", "x\"y\\z\nw"), ("b", "c")]),
            "{a=\"x\\\"y\\\\z\\nw\",b=\"c\"}"
        );
    }
}
