//! WAL throughput on the real file system: append records/s with 1, 8 and
//! 64 concurrent appenders under each sync policy (with records per sync and
//! per frame), and replay records/s and MB/s.
//!
//! `cargo bench -p ferry-wal` runs it. Knobs, all optional:
//! - `FERRY_BENCH_DIR`: where the logs go (default: a temporary directory
//!   under the system temp dir; it should be on the disk you care about).
//! - `FERRY_BENCH_SECS`: seconds per append configuration (default 3).
//! - `FERRY_BENCH_REPLAY_RECORDS`: records in the replay log (default 1M).
//! - `FERRY_BENCH_ROUNDS`: rounds of everything; medians are printed (default 3).
//!
//! Each appender is a tokio task appending one 100-byte record at a time and
//! waiting for it, like a client connection; the runtime has 2 worker
//! threads. Records look like a SET effect: a key and 80 random
//! alphanumeric bytes.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_wal::testing::SeededRng;
use ferry_wal::{Lsn, SyncPolicy, Wal, WalOptions};

/// Bytes of each benchmark record.
const RECORD_BYTES: usize = 100;
/// Appends per appender at most, so every run is bounded in count too.
const APPENDS_PER_APPENDER_MAX: u64 = 5_000_000;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn make_record(rng: &mut SeededRng, n: u64) -> Bytes {
    const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut r = format!("set key:{n:012} ").into_bytes();
    while r.len() < RECORD_BYTES {
        r.push(ALNUM[rng.below(ALNUM.len() as u64) as usize]);
    }
    Bytes::from(r)
}

struct AppendResult {
    records_per_s: f64,
    records_per_sync: f64,
    records_per_frame: f64,
}

fn fresh_dir(base: &std::path::Path, name: &str) -> PathBuf {
    let dir = base.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn bench_append(
    rt: &tokio::runtime::Runtime,
    base: &std::path::Path,
    policy: SyncPolicy,
    appenders: u64,
    secs: f64,
) -> AppendResult {
    let dir = fresh_dir(base, &format!("append-{policy}-{appenders}"));
    let wal = Arc::new(
        Wal::open(
            &dir,
            WalOptions {
                sync_policy: policy,
                ..WalOptions::default()
            },
        )
        .expect("open"),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let stats_before = wal.stats();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for a in 0..appenders {
            let (wal, stop, done) = (wal.clone(), stop.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                let mut rng = SeededRng::new(a);
                for i in 0..APPENDS_PER_APPENDER_MAX {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let record = make_record(&mut rng, a << 32 | i);
                    wal.append(vec![record]).await.expect("append");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.await.expect("appender");
        }
    });
    let elapsed = start.elapsed().as_secs_f64();
    let stats = wal.stats();
    let records = done.load(Ordering::Relaxed) as f64;
    let syncs = (stats.syncs - stats_before.syncs).max(1) as f64;
    let frames = (stats.frames - stats_before.frames).max(1) as f64;
    drop(wal);
    let _ = std::fs::remove_dir_all(&dir);
    AppendResult {
        records_per_s: records / elapsed,
        records_per_sync: records / syncs,
        records_per_frame: records / frames,
    }
}

struct ReplayResult {
    records_per_s: f64,
    stored_mb_per_s: f64,
    raw_mb_per_s: f64,
    ratio: f64,
}

/// Writes `records` 100-byte records (in appends of 64, as group commit
/// would coalesce them), then times reading them all back.
fn bench_replay(base: &std::path::Path, records: u64) -> ReplayResult {
    let dir = fresh_dir(base, "replay");
    let options = WalOptions {
        sync_policy: SyncPolicy::No,
        ..WalOptions::default()
    };
    let wal = Wal::open(&dir, options.clone()).expect("open");
    let mut rng = SeededRng::new(7);
    let mut n = 0;
    while n < records {
        let batch: Vec<Bytes> = (0..64.min(records - n))
            .map(|i| make_record(&mut rng, n + i))
            .collect();
        n += batch.len() as u64;
        wal.append_blocking(batch).expect("append");
    }
    let stored = wal.stats().bytes;
    drop(wal);
    // Reopen, as a replay after restart does (the recovery scan is not timed).
    let wal = Wal::open(&dir, options).expect("reopen");
    let start = Instant::now();
    let mut count = 0u64;
    let mut raw = 0u64;
    for record in wal.records(Lsn(1)).expect("reader") {
        let record = record.expect("record");
        count += 1;
        raw += record.data.len() as u64;
    }
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(count, records, "every record replays");
    drop(wal);
    let _ = std::fs::remove_dir_all(&dir);
    ReplayResult {
        records_per_s: count as f64 / elapsed,
        stored_mb_per_s: stored as f64 / elapsed / 1e6,
        raw_mb_per_s: raw as f64 / elapsed / 1e6,
        ratio: raw as f64 / stored as f64,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would pass
    // nothing of the kind and must not run the whole benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        println!("wal_bench: run it with `cargo bench -p ferry-wal`");
        return;
    }
    let secs: f64 = env_or("FERRY_BENCH_SECS", 3.0);
    let replay_records: u64 = env_or("FERRY_BENCH_REPLAY_RECORDS", 1_000_000);
    let rounds: usize = env_or::<usize>("FERRY_BENCH_ROUNDS", 3).max(1);
    let tmp = tempfile::Builder::new()
        .prefix("ferry-wal-bench")
        .tempdir_in(
            std::env::var_os("FERRY_BENCH_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir),
        );
    let tmp = tmp.expect("a benchmark directory");
    let base = tmp.path();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "ferry-wal benchmark: {RECORD_BYTES}-byte records, {secs} s per append run, {rounds} rounds (medians), dir {}",
        base.display()
    );
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!("load average at start: {}", load.trim());
    }

    let policies = [SyncPolicy::Always, SyncPolicy::EverySec, SyncPolicy::No];
    let appenders = [1u64, 8, 64];
    let mut results: Vec<Vec<Vec<AppendResult>>> = Vec::new();
    let mut replays = Vec::new();
    for _ in 0..rounds {
        let mut round = Vec::new();
        for &policy in &policies {
            round.push(
                appenders
                    .iter()
                    .map(|&n| bench_append(&rt, base, policy, n, secs))
                    .collect(),
            );
        }
        results.push(round);
        replays.push(bench_replay(base, replay_records));
    }

    println!();
    println!("| policy | appenders | records/s | records per sync | records per frame |");
    println!("| --- | --- | --- | --- | --- |");
    let rate = |p: usize, a: usize| median(results.iter().map(|r| r[p][a].records_per_s).collect());
    let mut table = Vec::new();
    for (p, policy) in policies.iter().enumerate() {
        for (a, n) in appenders.iter().enumerate() {
            let per_sync = median(results.iter().map(|r| r[p][a].records_per_sync).collect());
            let per_frame = median(results.iter().map(|r| r[p][a].records_per_frame).collect());
            let per_sync = match policy {
                SyncPolicy::Always => format!("{per_sync:.1}"),
                SyncPolicy::EverySec => "background".to_owned(),
                SyncPolicy::No => "none".to_owned(),
            };
            table.push(format!(
                "| {policy} | {n} | {:.0} | {per_sync} | {per_frame:.1} |",
                rate(p, a)
            ));
        }
    }
    for row in table {
        println!("{row}");
    }
    let always_ratio = rate(0, 2) / rate(0, 0);
    let no_64 = rate(2, 2);
    let replay_rate = median(replays.iter().map(|r| r.records_per_s).collect());
    let replay_stored = median(replays.iter().map(|r| r.stored_mb_per_s).collect());
    let replay_raw = median(replays.iter().map(|r| r.raw_mb_per_s).collect());
    let ratio = median(replays.iter().map(|r| r.ratio).collect());
    println!();
    println!(
        "replay of {replay_records} records: {replay_rate:.0} records/s, {replay_stored:.0} MB/s of WAL ({replay_raw:.0} MB/s of records, compression {ratio:.2}x)"
    );
    println!();
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!("targets:");
    println!(
        "  always, 64 appenders vs 1: {always_ratio:.1}x (target >= 20x): {}",
        verdict(always_ratio >= 20.0)
    );
    println!(
        "  no, 64 appenders: {no_64:.0} records/s (target >= 500k): {}",
        verdict(no_64 >= 500_000.0)
    );
    println!(
        "  replay: {replay_rate:.0} records/s (target >= 1M): {}",
        verdict(replay_rate >= 1_000_000.0)
    );
}
