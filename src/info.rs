//! INFO, CONFIG GET and CLIENT INFO text, with Redis's field names so that
//! tools written for Redis read them.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::commands::{self, Args, Conn};
use crate::node::{ClientInfo, Node};
use crate::resp::Reply;

/// The Redis version ferry answers as (`HELLO`, `INFO server`): the command
/// set and replies follow Redis 7.0.
pub const REDIS_VERSION: &str = "7.0.0";

/// Every section, in Redis's order; all but commandstats and latencystats
/// are in a plain `INFO` (those come with `INFO all`, or by name).
const SECTIONS: &[&str] = &[
    "server",
    "clients",
    "memory",
    "persistence",
    "stats",
    "replication",
    "cpu",
    "modules",
    "commandstats",
    "errorstats",
    "latencystats",
    "cluster",
    "keyspace",
    "rocksdb",
];

/// Clock ticks per second in `/proc`'s CPU times: Linux's `USER_HZ`, 100
/// on every architecture it reports to user space with.
const PROC_TICKS_PER_SEC: u64 = 100;

/// The percentiles INFO latencystats shows, as Redis's default
/// `latency-tracking-info-percentiles`.
pub const LATENCY_PERCENTILES: [f64; 3] = [50.0, 99.0, 99.9];
/// The same as Prometheus quantiles (their text, not a float's rounding).
pub const LATENCY_QUANTILES: [&str; 3] = ["0.5", "0.99", "0.999"];

pub fn info(node: &Node, _conn: &mut Conn, args: &Args) -> Reply {
    let wanted: Vec<String> = args[1..]
        .iter()
        .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
        .collect();
    let all = wanted.iter().any(|w| w == "all" || w == "everything");
    let default = wanted.is_empty() || wanted.iter().any(|w| w == "default");
    let mut out = String::new();
    for section in SECTIONS {
        let in_default = !matches!(*section, "commandstats" | "latencystats");
        if all || (default && in_default) || wanted.iter().any(|w| w == section) {
            if !out.is_empty() {
                out.push_str("\r\n");
            }
            section_text(node, section, &mut out);
        }
    }
    Reply::Verbatim(out.into())
}

/// INFO's `hz`: how many times a second the server's background work runs
/// (the active expiry sweep and the sampling of the rates).
const HZ: u32 = 10;
const _: () = assert!(
    crate::node::EXPIRE_SWEEP_INTERVAL.as_millis() == 1000 / HZ as u128
        && crate::node::STATS_SAMPLE_INTERVAL.as_millis() == 1000 / HZ as u128
);

/// What the async runtime waits for sockets with, as Redis names it.
const MULTIPLEXING_API: &str = if cfg!(target_os = "linux") {
    "epoll"
} else if cfg!(any(target_os = "macos", target_os = "freebsd")) {
    "kqueue"
} else {
    "poll"
};

/// Bytes as Redis's `*_human` fields show them (`1.50M`, `0B`).
fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.2}{}", UNITS[unit])
    }
}

/// The machine's memory in bytes, from `/proc/meminfo` (0 if unknown).
fn total_system_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// This process's CPU seconds from `/proc/self/stat`: user, system, and
/// those of waited-for children (zeros if unknown).
fn cpu_times() -> [f64; 4] {
    let fields: Vec<u64> = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // The fields after the command name, which may hold spaces.
            let rest = &s[s.rfind(')')? + 2..];
            Some(
                rest.split_whitespace()
                    .skip(11)
                    .take(4)
                    .filter_map(|f| f.parse().ok())
                    .collect(),
            )
        })
        .unwrap_or_default();
    let mut out = [0.0; 4];
    for (slot, ticks) in out.iter_mut().zip(fields) {
        *slot = ticks as f64 / PROC_TICKS_PER_SEC as f64;
    }
    out
}

/// Resident set size of this process, in bytes (Linux).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn section_text(node: &Node, section: &str, out: &mut String) {
    let stats = &node.stats;
    let uptime = node.started.elapsed().as_secs();
    match section {
        "server" => {
            let _ = write!(
                out,
                "# Server\r\nredis_version:{REDIS_VERSION}\r\nferry_version:{}\r\nredis_mode:standalone\r\n\
                 os:{} {}\r\narch_bits:64\r\nprocess_id:{}\r\nrun_id:{}\r\ntcp_port:{}\r\n\
                 multiplexing_api:{MULTIPLEXING_API}\r\nserver_time_usec:{}\r\n\
                 uptime_in_seconds:{uptime}\r\nuptime_in_days:{}\r\nhz:{HZ}\r\nconfigured_hz:{HZ}\r\n\
                 executable:{}\r\nconfig_file:{}\r\n",
                env!("CARGO_PKG_VERSION"),
                std::env::consts::OS,
                std::env::consts::ARCH,
                std::process::id(),
                node.run_id,
                node.resp_port,
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros()),
                uptime / 86_400,
                std::env::current_exe()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                node.config
                    .config_file
                    .as_ref()
                    .map(|f| f.path.display().to_string())
                    .unwrap_or_default(),
            );
            if let Some(left) = node.shutdown_in() {
                let _ = write!(out, "shutdown_in_milliseconds:{}\r\n", left.as_millis());
            }
        }
        "clients" => {
            let _ = write!(
                out,
                "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\nblocked_clients:{}\r\n\
                 tracking_clients:{}\r\n",
                stats.connected_clients.load(Ordering::Relaxed),
                node.config.maxclients.load(Ordering::Relaxed),
                stats.blocked_clients.load(Ordering::Relaxed),
                node.tracking.figures().clients,
            );
        }
        "memory" => {
            let rss = rss_bytes();
            let peak = stats
                .used_memory_peak
                .fetch_max(rss, Ordering::Relaxed)
                .max(rss);
            let system = total_system_memory();
            let cache = node.engine.read_cache_stats();
            let _ = write!(
                out,
                "# Memory\r\nused_memory:{rss}\r\nused_memory_human:{}\r\nused_memory_rss:{rss}\r\n\
                 used_memory_rss_human:{}\r\nused_memory_peak:{peak}\r\nused_memory_peak_human:{}\r\n\
                 total_system_memory:{system}\r\ntotal_system_memory_human:{}\r\n\
                 maxmemory:0\r\nmaxmemory_human:0B\r\nmaxmemory_policy:noeviction\r\nmem_allocator:libc\r\n\
                 mem_fragmentation_ratio:1.00\r\n\
                 read_cache_bytes:{}\r\nread_cache_entries:{}\r\nread_cache_bytes_max:{}\r\n",
                human(rss),
                human(rss),
                human(peak),
                human(system),
                cache.bytes,
                cache.entries,
                node.config.read_cache_bytes,
            );
        }
        "persistence" => {
            let wal = node.wal.stats();
            // Records applied since the engine last wrote its files: what a
            // restart replays from the WAL (Redis: changes since the last
            // snapshot on disk).
            let (applied, persisted) = (node.engine.applied_lsn(), node.engine.persisted_lsn());
            let (save_ok, save_at, saving, saved) = {
                let saves = node.saves.lock().unwrap_or_else(|e| e.into_inner());
                (
                    saves.last_ok,
                    saves.last_save_secs,
                    saves.in_progress,
                    saves.count,
                )
            };
            let _ = write!(
                out,
                "# Persistence\r\nloading:0\r\naof_enabled:1\r\naof_rewrite_in_progress:0\r\n\
                 aof_rewrite_scheduled:0\r\naof_last_bgrewrite_status:ok\r\nrdb_last_bgsave_status:{}\r\n\
                 rdb_last_save_time:{save_at}\r\nrdb_saves:{saved}\r\n\
                 aof_last_write_status:{}\r\nrdb_changes_since_last_save:{}\r\nrdb_bgsave_in_progress:{}\r\n\
                 appendfsync:{}\r\nwal_first_lsn:{}\r\nwal_last_lsn:{}\r\nwal_durable_lsn:{}\r\n\
                 wal_records_written:{}\r\nwal_frames_written:{}\r\nwal_syncs:{}\r\nengine_applied_lsn:{}\r\n\
                 engine_persisted_lsn:{}\r\nengine_disk_bytes:{}\r\nwal_bytes:{}\r\n",
                if save_ok { "ok" } else { "err" },
                if node.wal.has_failed() || node.pipeline.stopped().is_some() {
                    "err"
                } else {
                    "ok"
                },
                applied.0.saturating_sub(persisted.0),
                u8::from(saving),
                node.wal.sync_policy(),
                node.wal.first_lsn(),
                node.wal.last_lsn(),
                node.wal.durable_lsn(),
                wal.records,
                wal.frames,
                wal.syncs,
                applied,
                persisted,
                node.engine.disk_bytes().unwrap_or(0),
                node.wal.bytes_after(ferry_wal::Lsn::ZERO),
            );
        }
        "stats" => {
            let cache = node.engine.read_cache_stats();
            let rates = stats.rates();
            let tracking = node.tracking.figures();
            let pubsub = node.pubsub.figures();
            let _ = write!(
                out,
                "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\n\
                 instantaneous_ops_per_sec:{}\r\ntotal_net_input_bytes:{}\r\ntotal_net_output_bytes:{}\r\n\
                 instantaneous_input_kbps:{:.2}\r\ninstantaneous_output_kbps:{:.2}\r\n\
                 rejected_connections:{}\r\nsync_full:{}\r\nsync_partial_ok:{}\r\nsync_partial_err:{}\r\n\
                 expired_keys:{}\r\nevicted_keys:0\r\nkeyspace_hits:{}\r\nkeyspace_misses:{}\r\n\
                 pubsub_channels:{}\r\npubsub_patterns:{}\r\npubsubshard_channels:{}\r\n\
                 latest_fork_usec:0\r\ntotal_forks:0\r\n\
                 tracking_total_keys:{}\r\ntracking_total_items:{}\r\ntracking_total_prefixes:{}\r\n\
                 total_error_replies:{}\r\nclient_query_buffer_limit_disconnections:{}\r\n\
                 client_output_buffer_limit_disconnections:{}\r\n\
                 read_cache_hits:{}\r\nread_cache_misses:{}\r\n",
                stats.total_connections_received.load(Ordering::Relaxed),
                stats.total_commands_processed.load(Ordering::Relaxed),
                rates.ops_per_sec,
                stats.total_net_input_bytes.load(Ordering::Relaxed),
                stats.total_net_output_bytes.load(Ordering::Relaxed),
                rates.input_kbps,
                rates.output_kbps,
                stats.rejected_connections.load(Ordering::Relaxed),
                node.shipper.counters.sync_full.load(Ordering::Relaxed),
                node.shipper
                    .counters
                    .sync_partial_ok
                    .load(Ordering::Relaxed),
                node.shipper
                    .counters
                    .sync_partial_err
                    .load(Ordering::Relaxed),
                stats.expired_keys.load(Ordering::Relaxed),
                stats.keyspace_hits.load(Ordering::Relaxed),
                stats.keyspace_misses.load(Ordering::Relaxed),
                pubsub.channels,
                pubsub.patterns,
                pubsub.shard_channels,
                tracking.keys,
                tracking.items,
                tracking.prefixes,
                stats.total_error_replies.load(Ordering::Relaxed),
                stats
                    .client_query_buffer_limit_disconnections
                    .load(Ordering::Relaxed),
                stats
                    .client_output_buffer_limit_disconnections
                    .load(Ordering::Relaxed)
                    + pubsub
                        .closed
                        .saturating_sub(stats.pubsub_closed_base.load(Ordering::Relaxed)),
                cache.hits,
                cache.misses,
            );
        }
        "replication" => replication_text(node, out),
        "cpu" => {
            // Not Redis's main-thread figures: ferry's commands run on
            // several threads, none of them the main one.
            let [user, sys, user_children, sys_children] = cpu_times();
            let _ = write!(
                out,
                "# CPU\r\nused_cpu_sys:{sys:.6}\r\nused_cpu_user:{user:.6}\r\n\
                 used_cpu_sys_children:{sys_children:.6}\r\nused_cpu_user_children:{user_children:.6}\r\n"
            );
        }
        "modules" => out.push_str("# Modules\r\n"),
        "cluster" => out.push_str("# Cluster\r\ncluster_enabled:0\r\n"),
        "commandstats" => {
            out.push_str("# Commandstats\r\n");
            for (name, c) in stats.per_command() {
                let calls = c.calls.load(Ordering::Relaxed);
                let usec = c.nanos.load(Ordering::Relaxed) / 1000;
                let rejected = c.rejected.load(Ordering::Relaxed);
                let failed = c.failed.load(Ordering::Relaxed);
                if calls + rejected + failed == 0 {
                    continue;
                }
                let per_call = if calls == 0 {
                    0.0
                } else {
                    c.nanos.load(Ordering::Relaxed) as f64 / 1000.0 / calls as f64
                };
                let _ = write!(
                    out,
                    "cmdstat_{name}:calls={calls},usec={usec},usec_per_call={per_call:.2},\
                     rejected_calls={rejected},failed_calls={failed}\r\n"
                );
            }
        }
        "latencystats" => {
            out.push_str("# Latencystats\r\n");
            for (name, c) in stats.per_command() {
                let Some(nanos) = c.latency.percentiles(&LATENCY_PERCENTILES) else {
                    continue;
                };
                let shown: Vec<String> = LATENCY_PERCENTILES
                    .iter()
                    .zip(nanos)
                    .map(|(p, n)| format!("p{p}={:.3}", n / 1000.0))
                    .collect();
                let _ = write!(
                    out,
                    "latency_percentiles_usec_{name}:{}\r\n",
                    shown.join(",")
                );
            }
        }
        "errorstats" => {
            out.push_str("# Errorstats\r\n");
            for (code, count) in stats.error_codes() {
                let _ = write!(out, "errorstat_{code}:count={count}\r\n");
            }
        }
        "rocksdb" => {
            // What the engine's RocksDB is doing: a stall of writes shows
            // here first.
            let f = node.engine.rocksdb_figures().unwrap_or_default();
            let _ = write!(
                out,
                "# RocksDB\r\nmemtable_bytes:{}\r\nlevel0_files:{}\r\npending_compaction_bytes:{}\r\n\
                 running_compactions:{}\r\nrunning_flushes:{}\r\ndelayed_write_rate:{}\r\n\
                 writes_stopped:{}\r\nblock_cache_bytes:{}\r\nflushall_compaction_running:{}\r\n",
                f.memtable_bytes,
                f.level0_files,
                f.pending_compaction_bytes,
                f.running_compactions,
                f.running_flushes,
                f.delayed_write_rate,
                u8::from(f.writes_stopped),
                f.block_cache_bytes,
                u8::from(f.reclaiming),
            );
        }
        "keyspace" => {
            out.push_str("# Keyspace\r\n");
            let keys = node.engine.key_count();
            if keys > 0 {
                let expiring = node.engine.expiring();
                let _ = write!(
                    out,
                    "db0:keys={keys},expires={},avg_ttl={}\r\n",
                    expiring.keys,
                    expiring.avg_ttl_ms(crate::node::now_ms()),
                );
            }
        }
        _ => {}
    }
}

/// `INFO replication`: Redis's fields (offsets are LSNs), then ferry's own.
fn replication_text(node: &Node, out: &mut String) {
    let applied = node.engine.applied_lsn().0;
    out.push_str("# Replication\r\n");
    let link = node.link_status();
    match &link {
        Some(link) => {
            let (host, port) = commands::primary_host_port(link);
            let _ = write!(
                out,
                "role:slave\r\nmaster_host:{host}\r\nmaster_port:{port}\r\nmaster_link_status:{}\r\n\
                 master_last_io_seconds_ago:{}\r\nmaster_sync_in_progress:{}\r\n",
                if link.link_up { "up" } else { "down" },
                link.last_io.map_or(-1, |t| t.elapsed().as_secs() as i64),
                u8::from(link.sync.is_some()),
            );
            if let Some(sync) = &link.sync {
                let _ = write!(
                    out,
                    "master_sync_total_bytes:{}\r\nmaster_sync_read_bytes:{}\r\n\
                     master_sync_left_bytes:{}\r\nmaster_sync_perc:{:.2}\r\n\
                     master_sync_last_io_seconds_ago:{}\r\nferry_sync_rate_bytes_per_sec:{}\r\n\
                     ferry_sync_eta_seconds:{}\r\nferry_sync_snapshot_lsn:{}\r\n",
                    sync.total_bytes,
                    sync.done_bytes,
                    sync.total_bytes.saturating_sub(sync.done_bytes),
                    if sync.total_bytes == 0 {
                        100.0
                    } else {
                        sync.done_bytes as f64 * 100.0 / sync.total_bytes as f64
                    },
                    link.last_io.map_or(-1, |t| t.elapsed().as_secs() as i64),
                    sync.rate(),
                    sync.eta().map_or(-1, |d| d.as_secs() as i64),
                    sync.lsn.0,
                );
            }
            let _ = write!(
                out,
                "slave_read_repl_offset:{}\r\nslave_repl_offset:{applied}\r\n\
                 ferry_bootstraps:{}\r\n",
                node.wal.last_lsn().0,
                link.bootstraps,
            );
            if let Some(since) = link.down_since.filter(|_| !link.link_up) {
                let _ = write!(
                    out,
                    "master_link_down_since_seconds:{}\r\n",
                    since.elapsed().as_secs()
                );
            }
            out.push_str("slave_priority:100\r\nslave_read_only:1\r\nreplica_announced:1\r\n");
        }
        None => out.push_str("role:master\r\n"),
    }
    let replicas = node.shipper.list();
    let _ = write!(out, "connected_slaves:{}\r\n", replicas.len());
    for (i, r) in replicas.iter().enumerate() {
        let (ip, port) = commands::replica_addr(&r.resp_addr, &r.addr);
        let _ = write!(
            out,
            "slave{i}:ip={ip},port={port},state=online,offset={},lag={}\r\n",
            r.applied_lsn.0,
            r.last_ack_age.as_secs()
        );
    }
    let failover = node.failover_state();
    let _ = write!(
        out,
        "master_failover_state:{}\r\nferry_failover_state:{failover}\r\nmaster_replid:{}\r\nmaster_replid2:0000000000000000000000000000000000000000\r\n\
         master_repl_offset:{}\r\nsecond_repl_offset:-1\r\nrepl_backlog_active:1\r\n\
         repl_backlog_size:{}\r\nrepl_backlog_first_byte_offset:{}\r\nrepl_backlog_histlen:{}\r\n",
        // Redis's names: a switchover waits for its replica to sync, then
        // hands over to it.
        match failover.as_str() {
            "switchover" if node.switchover_promoting.load(Ordering::Acquire) => {
                "failover-in-progress"
            }
            "switchover" => "waiting-for-sync",
            _ => "no-failover",
        },
        if node.identity.cluster_id().is_empty() {
            "0000000000000000000000000000000000000000".to_string()
        } else {
            node.identity.cluster_id()
        },
        node.wal.durable_lsn().0,
        node.wal.bytes_after(ferry_wal::Lsn::ZERO),
        node.wal.first_lsn().0,
        node.wal
            .durable_lsn()
            .0
            .saturating_sub(node.wal.first_lsn().0)
            + 1,
    );
    let _ = write!(
        out,
        "ferry_node_id:{}\r\nferry_cluster_id:{}\r\nferry_epoch:{}\r\nferry_applied_lsn:{applied}\r\n",
        node.identity.node_id(),
        node.identity.cluster_id(),
        node.wal.epoch().0,
    );
    if let Some(link) = &link {
        let records = link.primary_durable_lsn.0.saturating_sub(applied);
        let _ = write!(
            out,
            "ferry_link_state:{}\r\nferry_primary_durable_lsn:{}\r\nferry_lag_records:{records}\r\n\
             ferry_lag_bytes:{}\r\nferry_lag_ms:{}\r\nferry_link_connects:{}\r\nferry_frames_received:{}\r\n\
             ferry_frames_rejected:{}\r\n",
            link.state,
            link.primary_durable_lsn.0,
            if records == 0 {
                0
            } else {
                link.primary_lag_bytes
            },
            if records == 0 { 0 } else { link.primary_lag_ms },
            link.connects,
            link.frames_received,
            link.frames_rejected,
        );
    }
    for (i, r) in replicas.iter().enumerate() {
        let _ = write!(
            out,
            "ferry_replica{i}:node_id={},state={},sent_lsn={},written_lsn={},flushed_lsn={},applied_lsn={},\
             lag_records={},lag_bytes={},lag_ms={},frames_sent={},bytes_sent={}\r\n",
            r.node_id,
            r.state.as_str(),
            r.sent_lsn.0,
            r.written_lsn.0,
            r.flushed_lsn.0,
            r.applied_lsn.0,
            r.lag.records,
            r.lag.bytes,
            r.lag.ms,
            r.frames_sent,
            r.bytes_sent
        );
    }
}

/// A file's path as CONFIG GET shows it ("" for none).
fn path_text(path: Option<&std::path::Path>) -> String {
    path.map(|p| p.display().to_string()).unwrap_or_default()
}

/// The parameters CONFIG GET answers, with their values.
pub fn config_params(node: &Node) -> Vec<(String, String)> {
    let c = &node.config;
    let tls_files = c.tls.files();
    vec![
        (
            "acllog-max-len".into(),
            c.acllog_max_len.load(Ordering::Relaxed).to_string(),
        ),
        ("appendfsync".into(), node.wal.sync_policy().to_string()),
        ("appendonly".into(), "yes".into()),
        (
            "client-query-buffer-limit".into(),
            c.client_query_buffer_limit
                .load(Ordering::Relaxed)
                .to_string(),
        ),
        ("databases".into(), "1".into()),
        (
            "tcp-keepalive".into(),
            c.tcp_keepalive_secs.load(Ordering::Relaxed).to_string(),
        ),
        (
            "timeout".into(),
            c.timeout_secs.load(Ordering::Relaxed).to_string(),
        ),
        ("dir".into(), c.data_dir.display().to_string()),
        (
            "maxclients".into(),
            c.maxclients.load(Ordering::Relaxed).to_string(),
        ),
        ("maxmemory".into(), "0".into()),
        // No eviction: what INFO's `maxmemory_policy` says too.
        ("maxmemory-policy".into(), "noeviction".into()),
        (
            "min-replicas-max-lag".into(),
            c.min_replicas_max_lag_secs
                .load(Ordering::Relaxed)
                .to_string(),
        ),
        (
            "min-replicas-to-write".into(),
            c.min_replicas_to_write.load(Ordering::Relaxed).to_string(),
        ),
        ("port".into(), node.resp_port.to_string()),
        ("read-cache-bytes".into(), c.read_cache_bytes.to_string()),
        ("repl-timeout".into(), c.repl_timeout.as_secs().to_string()),
        ("replica-read-only".into(), "yes".into()),
        (
            "replica-serve-stale-data".into(),
            if c.replica_serve_stale_data.load(Ordering::Relaxed) {
                "yes"
            } else {
                "no"
            }
            .into(),
        ),
        (
            "proto-max-bulk-len".into(),
            c.proto_max_bulk_len.load(Ordering::Relaxed).to_string(),
        ),
        (
            "proto-max-multibulk-len".into(),
            c.proto_max_multibulk_len
                .load(Ordering::Relaxed)
                .to_string(),
        ),
        (
            "requirepass".into(),
            c.requirepass
                .get()
                .map(|p| String::from_utf8_lossy(&p).into_owned())
                .unwrap_or_default(),
        ),
        ("save".into(), String::new()),
        (
            "notify-keyspace-events".into(),
            crate::notify::format(node.notify.flags()),
        ),
        (
            "client-output-buffer-limit".into(),
            crate::pubsub::format_output_limits(&node.pubsub.output_limits()),
        ),
        (
            "tracking-table-max-keys".into(),
            node.tracking.max_keys().to_string(),
        ),
        (
            "shutdown-timeout".into(),
            c.shutdown_timeout_secs.load(Ordering::Relaxed).to_string(),
        ),
        ("tls-auth-clients".into(), c.tls.client_auth().to_string()),
        (
            "tls-ca-cert-file".into(),
            path_text(tls_files.ca.as_deref()),
        ),
        ("tls-cert-file".into(), path_text(tls_files.cert.as_deref())),
        ("tls-key-file".into(), path_text(tls_files.key.as_deref())),
        ("tls-protocols".into(), c.tls.protocols().to_string()),
        ("tls-ciphers".into(), c.tls.ciphers().names(false)),
        ("tls-ciphersuites".into(), c.tls.ciphers().names(true)),
        (
            "slowlog-log-slower-than".into(),
            c.slowlog_log_slower_than
                .load(Ordering::Relaxed)
                .to_string(),
        ),
        (
            "slowlog-max-len".into(),
            c.slowlog_max_len.load(Ordering::Relaxed).to_string(),
        ),
        (
            "latency-monitor-threshold".into(),
            node.latency.threshold_ms().to_string(),
        ),
    ]
}

/// One line of CLIENT LIST for a connection.
pub fn client_line(info: &ClientInfo, conn: &Conn) -> String {
    // The asking connection shows what it has just set.
    let own = info.id == conn.id;
    let (name, lib_name, lib_ver) = if own {
        (&conn.name, &conn.lib_name, &conn.lib_ver)
    } else {
        (&info.name, &info.lib_name, &info.lib_ver)
    };
    let text = |b: &Option<bytes::Bytes>| {
        b.as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default()
    };
    // The asking connection is busy now; the others since their last
    // request.
    let age = info.connected_at.elapsed();
    let (idle, multi) = if own {
        (
            0,
            conn.multi.as_ref().map_or(-1, |m| m.commands.len() as i64),
        )
    } else {
        let last = Duration::from_millis(info.activity.last_ms.load(Ordering::Relaxed));
        (
            age.saturating_sub(last).as_secs(),
            info.activity.multi.load(Ordering::Relaxed),
        )
    };
    // The buffers as the connection left them after its last batch of
    // requests; `omem` while its replies wait for the client to read them.
    let figure = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let a = &info.activity;
    let (qbuf, qbuf_free, omem) = (figure(&a.qbuf), figure(&a.qbuf_free), figure(&a.omem));
    let multi_mem = figure(&a.multi_mem);
    let tracking = a.tracking.load(Ordering::Relaxed);
    let [sub, psub, ssub] = a.subscriptions.each_ref().map(figure);
    // Redis's flags, in its order, for those ferry has.
    let mut flags: String = [
        (sub + psub + ssub > 0, 'P'),
        (multi >= 0, 'x'),
        (tracking, 't'),
    ]
    .into_iter()
    .filter_map(|(on, flag)| on.then_some(flag))
    .collect();
    if flags.is_empty() {
        flags.push('N');
    }
    let tot_mem = qbuf + qbuf_free + figure(&a.obuf_bytes) + multi_mem;
    // Redis's fields, in its order, for those ferry has.
    format!(
        "id={} addr={} laddr={} fd={} name={} age={} idle={idle} flags={flags} db=0 sub={sub} psub={psub} ssub={ssub} \
         multi={multi} qbuf={qbuf} qbuf-free={qbuf_free} argv-mem=0 multi-mem={multi_mem} obl=0 oll=0 \
         omem={omem} tot-mem={tot_mem} events={} cmd={} user=default redir={} resp={} lib-name={} \
         lib-ver={}\n",
        info.id,
        info.addr,
        info.laddr,
        info.activity.fd,
        text(name),
        age.as_secs(),
        if omem > 0 { "rw" } else { "r" },
        info.last_command,
        if tracking {
            a.redirect.load(Ordering::Relaxed)
        } else {
            -1
        },
        if own && conn.resp3 { 3 } else { info.resp },
        text(lib_name),
        text(lib_ver),
    )
}
