//! `ferry status` (a node's status over gRPC, as text or JSON), `ferry
//! promote` and `ferry switchover`.

use std::process::ExitCode;

use anyhow::Context;
use ferry_proto::auth::Attach;
use ferry_proto::tls::{Tls, causes};
use ferry_proto::v1::status_client::StatusClient;
use ferry_proto::v1::{GetStatusRequest, GetStatusResponse, Lag};
use serde_json::{Value, json};

/// How long `ferry status` waits for a node.
const STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A channel whose calls carry the cluster token.
type Calls = tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Attach>;

/// How this node or tool calls a node: the cluster token its calls carry,
/// and TLS for `https://` addresses.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub token: Attach,
    pub tls: Tls,
}

/// A connection to the node at `addr` (a gRPC URL).
async fn connect(addr: &str, caller: &Caller) -> anyhow::Result<Calls> {
    let channel = caller
        .tls
        .endpoint(&caller.tls.url(addr))?
        .connect_timeout(STATUS_TIMEOUT)
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("connecting to {addr}: {}", causes(&e)))?;
    Ok(Calls::new(channel, caller.token.clone()))
}

/// Runs `f` to completion on a small runtime, for the one-shot commands.
fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    Ok(runtime.block_on(f))
}

/// Fetches the status of the node at `addr`.
///
/// # Errors
///
/// An unreachable node or a failed call.
pub async fn fetch(addr: &str, caller: &Caller) -> anyhow::Result<GetStatusResponse> {
    let channel = tokio::time::timeout(STATUS_TIMEOUT, connect(addr, caller))
        .await
        .with_context(|| format!("no answer from {addr}"))??;
    let response = tokio::time::timeout(
        STATUS_TIMEOUT,
        StatusClient::new(channel).get_status(GetStatusRequest {}),
    )
    .await
    .with_context(|| format!("no answer from {addr}"))?
    .with_context(|| format!("asking {addr} for its status"))?;
    Ok(response.into_inner())
}

fn lag_json(lag: Option<&Lag>) -> (u64, u64, u64) {
    lag.map_or((0, 0, 0), |l| (l.records, l.bytes, l.ms))
}

/// The status as JSON, with snake_case keys.
pub fn to_json(s: &GetStatusResponse) -> Value {
    let wal = s.wal.unwrap_or_default();
    let replicas: Vec<Value> = s
        .replicas
        .iter()
        .map(|r| {
            let (records, bytes, ms) = lag_json(r.lag.as_ref());
            json!({
                "node_id": r.node_id,
                "addr": r.addr,
                "resp_addr": r.resp_addr,
                "state": r.state,
                "sent_lsn": r.sent_lsn,
                "written_lsn": r.written_lsn,
                "flushed_lsn": r.flushed_lsn,
                "applied_lsn": r.applied_lsn,
                "lag_records": records,
                "lag_bytes": bytes,
                "lag_ms": ms,
                "last_ack_age_ms": r.last_ack_age_ms,
                "frames_sent": r.frames_sent,
                "bytes_sent": r.bytes_sent,
            })
        })
        .collect();
    let mut out = json!({
        "role": s.role,
        "cluster_id": s.cluster_id,
        "node_id": s.node_id,
        "version": s.version,
        "epoch": wal.epoch,
        "first_retained_lsn": wal.first_retained_lsn,
        "last_lsn": wal.last_lsn,
        "durable_lsn": wal.durable_lsn,
        "applied_lsn": s.applied_lsn,
        "replicas": replicas,
        "newer_epoch_seen": s.newer_epoch_seen,
        "quarantined_records": s.quarantined_records,
        "epoch_history": s.epoch_history.iter().map(|e| json!({"epoch": e.epoch, "first_lsn": e.first_lsn})).collect::<Vec<_>>(),
        "persisted_lsn": s.persisted_lsn,
        "wal_retention_max_bytes": s.wal_retention_max_bytes,
        "slots": s.slots.iter().map(|slot| json!({
            "node_id": slot.node_id,
            "lsn": slot.lsn,
            "retained_bytes": slot.retained_bytes,
            "wal_status": slot.wal_status,
            "safe_bytes": slot.safe_bytes,
            "active": slot.active,
        })).collect::<Vec<_>>(),
        "failover_state": s.failover_state,
        "sync_full": s.sync_full,
        "sync_partial_ok": s.sync_partial_ok,
        "sync_partial_err": s.sync_partial_err,
    });
    if let Some(link) = &s.primary_link {
        let (records, bytes, ms) = lag_json(link.lag.as_ref());
        out["primary_link"] = json!({
            "primary_addr": link.primary,
            "state": link.state,
            "link_up": link.link_up,
            "down_since_seconds": link.down_since_seconds,
            "last_io_age_ms": link.last_io_age_ms,
            "primary_durable_lsn": link.primary_durable_lsn,
            "lag_records": records,
            "lag_bytes": bytes,
            "lag_ms": ms,
            "last_refusal": link.last_refusal,
            "last_error": link.last_error,
            "connects": link.connects,
            "frames_received": link.frames_received,
            "frames_rejected": link.frames_rejected,
            "bytes_received": link.bytes_received,
            "bootstraps": link.bootstraps,
            "snapshot_chunks_rejected": link.snapshot_chunks_rejected,
            "snapshot_bytes_received": link.snapshot_bytes_received,
        });
        if let Some(sync) = &link.sync {
            out["primary_link"]["sync"] = json!({
                "snapshot_id": sync.snapshot_id,
                "lsn": sync.lsn,
                "total_bytes": sync.total_bytes,
                "done_bytes": sync.done_bytes,
                "rate_bytes_per_sec": sync.rate_bytes_per_sec,
                "eta_ms": sync.eta_ms,
                "elapsed_ms": sync.elapsed_ms,
            });
        }
    }
    out
}

/// The status as text for people.
pub fn to_text(s: &GetStatusResponse) -> String {
    use std::fmt::Write;
    let wal = s.wal.unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "role {}  cluster {}  node {}  epoch {}  failover {}  version {}",
        s.role,
        if s.cluster_id.is_empty() {
            "-"
        } else {
            &s.cluster_id
        },
        s.node_id,
        wal.epoch,
        s.failover_state,
        s.version
    );
    let _ = writeln!(
        out,
        "lsn  last {}  durable {}  applied {}  first retained {}",
        wal.last_lsn, wal.durable_lsn, s.applied_lsn, wal.first_retained_lsn
    );
    if s.newer_epoch_seen > wal.epoch {
        let _ = writeln!(
            out,
            "STALE: a replica showed epoch {}; this node takes no writes",
            s.newer_epoch_seen
        );
    }
    if s.quarantined_records > 0 {
        let _ = writeln!(
            out,
            "quarantined {} records (forked from the primary; see quarantine/ in the data dir)",
            s.quarantined_records
        );
    }
    if !s.epoch_history.is_empty() {
        let terms: Vec<String> = s
            .epoch_history
            .iter()
            .map(|e| format!("epoch {} from lsn {}", e.epoch, e.first_lsn))
            .collect();
        let _ = writeln!(out, "epoch history: {}", terms.join(", "));
    }
    if let Some(link) = &s.primary_link {
        let (records, bytes, ms) = lag_json(link.lag.as_ref());
        let _ = writeln!(
            out,
            "primary {}  link {} ({})  last io {} ms ago  primary durable {}  lag {records} records, {bytes} bytes, {ms} ms",
            link.primary,
            if link.link_up { "up" } else { "down" },
            link.state,
            link.last_io_age_ms,
            link.primary_durable_lsn
        );
        if !link.link_up {
            let _ = writeln!(out, "  down for {} s", link.down_since_seconds);
        }
        if !link.last_refusal.is_empty() {
            let _ = writeln!(out, "  refused: {}", link.last_refusal);
        }
        if !link.last_error.is_empty() && !link.link_up {
            let _ = writeln!(out, "  last error: {}", link.last_error);
        }
        if let Some(sync) = &link.sync {
            let _ = writeln!(
                out,
                "  bootstrap: snapshot {} at lsn {}  {} of {} bytes ({:.1} %)  {} bytes/s  eta {} s",
                sync.snapshot_id,
                sync.lsn,
                sync.done_bytes,
                sync.total_bytes,
                if sync.total_bytes == 0 {
                    100.0
                } else {
                    sync.done_bytes as f64 * 100.0 / sync.total_bytes as f64
                },
                sync.rate_bytes_per_sec,
                sync.eta_ms / 1000
            );
        }
        if link.bootstraps > 0 || link.snapshot_chunks_rejected > 0 {
            let _ = writeln!(
                out,
                "  bootstraps {}  snapshot bytes received {}  rejected chunks {}",
                link.bootstraps, link.snapshot_bytes_received, link.snapshot_chunks_rejected
            );
        }
    }
    let _ = writeln!(
        out,
        "syncs  full {}  partial ok {}  partial refused {}  persisted lsn {}",
        s.sync_full, s.sync_partial_ok, s.sync_partial_err, s.persisted_lsn
    );
    if !s.slots.is_empty() {
        let cap = if s.wal_retention_max_bytes == 0 {
            "none".to_string()
        } else {
            s.wal_retention_max_bytes.to_string()
        };
        let _ = writeln!(out, "retention slots (cap {cap} bytes)");
        for slot in &s.slots {
            let safe = if slot.safe_bytes == u64::MAX {
                "-".to_string()
            } else {
                slot.safe_bytes.to_string()
            };
            let _ = writeln!(
                out,
                "  {} lsn {}  retained {} bytes  {}  safe {safe} bytes{}",
                slot.node_id,
                slot.lsn,
                slot.retained_bytes,
                slot.wal_status,
                if slot.active { "" } else { "  (not connected)" }
            );
        }
    }
    let _ = writeln!(out, "replicas {}", s.replicas.len());
    if !s.replicas.is_empty() {
        let _ = writeln!(
            out,
            "  {:<12} {:<21} {:<10} {:>10} {:>10} {:>10} {:>10} {:>22} {:>9}",
            "node",
            "addr",
            "state",
            "sent",
            "written",
            "flushed",
            "applied",
            "lag rec/bytes/ms",
            "ack age"
        );
        for r in &s.replicas {
            let (records, bytes, ms) = lag_json(r.lag.as_ref());
            let _ = writeln!(
                out,
                "  {:<12} {:<21} {:<10} {:>10} {:>10} {:>10} {:>10} {:>22} {:>6} ms",
                r.node_id.get(..12).unwrap_or(&r.node_id),
                r.addr,
                r.state,
                r.sent_lsn,
                r.written_lsn,
                r.flushed_lsn,
                r.applied_lsn,
                format!("{records}/{bytes}/{ms}"),
                r.last_ack_age_ms
            );
        }
    }
    out
}

/// `ferry promote`.
///
/// # Errors
///
/// An unreachable node.
pub fn promote(
    addr: &str,
    caller: &Caller,
    force: bool,
    wait_secs: u64,
) -> anyhow::Result<ExitCode> {
    let result = block_on(async {
        let channel = connect(addr, caller).await?;
        let reply = ferry_proto::v1::admin_client::AdminClient::new(channel)
            .promote(ferry_proto::v1::PromoteRequest {
                force,
                wait_ms: wait_secs.saturating_mul(1000),
            })
            .await;
        Ok::<_, anyhow::Error>(reply)
    })??;
    match result {
        Ok(reply) => {
            let p = reply.into_inner();
            println!("promoted: epoch {} from lsn {}", p.epoch, p.first_lsn);
            if p.lost_from <= p.lost_to {
                println!(
                    "lost: lsn {}..={} (durable on the old primary, never received here)",
                    p.lost_from, p.lost_to
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(status) => {
            eprintln!("refused: {}", status.message());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `ferry drop-slot`.
///
/// # Errors
///
/// An unreachable node, or an error from it.
pub fn drop_slot(addr: &str, caller: &Caller, node_id: &str) -> anyhow::Result<ExitCode> {
    let dropped = block_on(async {
        let channel = connect(addr, caller).await?;
        let reply = ferry_proto::v1::admin_client::AdminClient::new(channel)
            .drop_slot(ferry_proto::v1::DropSlotRequest {
                node_id: node_id.to_string(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        Ok::<_, anyhow::Error>(reply.into_inner().dropped)
    })??;
    if dropped {
        println!("dropped the slot of {node_id}");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("no slot for {node_id}");
        Ok(ExitCode::FAILURE)
    }
}

/// `ferry switchover`.
///
/// # Errors
///
/// An unreachable node.
pub fn switchover(
    addr: &str,
    caller: &Caller,
    to: Option<String>,
    timeout_secs: u64,
) -> anyhow::Result<ExitCode> {
    let result = block_on(async {
        let channel = connect(addr, caller).await?;
        let reply = ferry_proto::v1::admin_client::AdminClient::new(channel)
            .switchover(ferry_proto::v1::SwitchoverRequest {
                to_node_id: to.unwrap_or_default(),
                timeout_ms: timeout_secs.saturating_mul(1000),
            })
            .await;
        Ok::<_, anyhow::Error>(reply)
    })??;
    match result {
        Ok(reply) => {
            let s = reply.into_inner();
            println!(
                "switched over: {} ({}) is the primary of epoch {} from lsn {}; {addr} follows it",
                s.new_primary, s.node_id, s.epoch, s.first_lsn
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(status) => {
            eprintln!("switchover failed: {}", status.message());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `ferry status`.
///
/// # Errors
///
/// As [`fetch`].
pub fn run(addr: &str, caller: &Caller, json: bool) -> anyhow::Result<ExitCode> {
    let status = block_on(fetch(addr, caller))??;
    if json {
        println!("{}", serde_json::to_string_pretty(&to_json(&status))?);
    } else {
        print!("{}", to_text(&status));
    }
    Ok(ExitCode::SUCCESS)
}
