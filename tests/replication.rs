//! Replication end to end: real `ferry serve` processes on loopback, real
//! Redis clients, the real gRPC status client, and a TCP proxy between
//! replica and primary that cuts, delays and corrupts.
//!
//! The tests take a lock so that only one runs at a time: each starts
//! several nodes, and the lag test measures time.

mod common;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::*;
use ferry_wal::testing::{SeededRng, test_seed};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long replicas may take to converge after a load in these tests.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(5);

/// A primary, a proxy in front of its gRPC port, and a replica following it
/// through the proxy; each node with its own extra flags.
fn behind_proxy(
    dir: &std::path::Path,
    primary_args: &[&str],
    replica_args: &[&str],
) -> (Server, Proxy, Server) {
    let primary = Server::start(&dir.join("p"), primary_args);
    let proxy = Proxy::start(primary.grpc);
    let replica = Server::replica(&dir.join("r"), &proxy.url(), replica_args);
    (primary, proxy, replica)
}

fn digests_equal(nodes: &[&Server]) -> bool {
    let first = digest(nodes[0]);
    nodes[1..].iter().all(|n| digest(n) == first)
}

#[test]
fn two_replicas_and_a_cascaded_one_converge_after_100k_concurrent_writes() {
    let _one = serial();
    let seed = test_seed("two_replicas_and_a_cascaded_one_converge");
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Server::start(&dir.path().join("p"), &[]);
    let r1 = Server::replica(&dir.path().join("r1"), &primary.grpc_url(), &[]);
    let r2 = Server::replica(&dir.path().join("r2"), &primary.grpc_url(), &[]);
    let r3 = Server::replica(&dir.path().join("r3"), &r1.grpc_url(), &[]);
    std::thread::scope(|s| {
        for t in 0..4 {
            let primary = &primary;
            s.spawn(move || load(primary, seed + t, 25_000, 50_000, 250));
        }
    });
    let written = status(primary.grpc).wal.expect("wal").last_lsn;
    assert_eq!(written, 100_000, "one record per SET");
    let started = Instant::now();
    let converged = wait_until(CONVERGE_TIMEOUT, || {
        [&r1, &r2, &r3].iter().all(|r| r.applied_lsn() == written)
            && digests_equal(&[&primary, &r1, &r2, &r3])
    });
    assert!(
        converged,
        "replicas at {:?} of {written} after {:?}",
        [&r1, &r2, &r3].map(|r| r.applied_lsn()),
        started.elapsed()
    );
    let p = status(primary.grpc);
    assert_eq!(p.replicas.len(), 2, "r1 and r2 stream from the primary");
    assert!(p.replicas.iter().all(|r| r.applied_lsn == written));
    let mid = status(r1.grpc);
    assert_eq!(mid.replicas.len(), 1, "r3 streams from r1");
    assert_eq!(mid.cluster_id, p.cluster_id);
    assert_eq!(status(r3.grpc).cluster_id, p.cluster_id);
}

/// A SCAN cursor names a position every node reads alike: a scan whose
/// calls go to the primary and its replica in turn (as through a pool of
/// read connections) returns every key, each once when nothing changes.
#[test]
fn a_scan_goes_on_from_node_to_node() {
    let _one = serial();
    let seed = test_seed("a_scan_goes_on_from_node_to_node");
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Server::start(&dir.path().join("p"), &[]);
    let replica = Server::replica(&dir.path().join("r"), &primary.grpc_url(), &[]);
    load(&primary, seed, 5_000, 2_000, 500);
    assert!(wait_until(CONVERGE_TIMEOUT, || caught_up(
        &primary, &replica
    )));
    let mut all: Vec<String> = cmd(&["KEYS", "*"])
        .query(&mut primary.client())
        .expect("KEYS");
    all.sort();
    let mut clients = [primary.client(), replica.client()];
    let mut seen = Vec::new();
    let mut cursor = "0".to_string();
    for call in 0..1000 {
        let (next, keys): (String, Vec<String>) = cmd(&["SCAN", &cursor, "COUNT", "100"])
            .query(&mut clients[call % 2])
            .expect("SCAN");
        seen.extend(keys);
        cursor = next;
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(cursor, "0", "the scan ended");
    seen.sort();
    assert_eq!(seen, all, "seed {seed}");
}

#[test]
fn receiver_resumes_after_cuts_every_2s_without_gaps_or_double_applies() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let (primary, proxy, replica) = behind_proxy(dir.path(), &[], &[]);
    const COUNTERS: usize = 8;
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..COUNTERS).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop) = (acked.clone(), stop.clone());
        let mut c = primary.client();
        std::thread::spawn(move || {
            let mut i = 0usize;
            // Bounded by the stop flag and a count.
            while !stop.load(Ordering::Relaxed) && i < 2_000_000 {
                let counter = i % COUNTERS;
                let _: i64 = cmd(&["INCR", &format!("counter:{counter}")])
                    .query(&mut c)
                    .expect("INCR");
                acked[counter].fetch_add(1, Ordering::Relaxed);
                let _: () = cmd(&["SET", &format!("k:{}", i % 5000), &i.to_string()])
                    .query(&mut c)
                    .expect("SET");
                i += 1;
            }
        })
    };
    let load_time = Duration::from_secs(30);
    let started = Instant::now();
    let mut cuts = 0;
    while started.elapsed() < load_time {
        std::thread::sleep(Duration::from_secs(2));
        proxy.cut();
        cuts += 1;
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    assert!(
        wait_until(Duration::from_secs(10), || caught_up(&primary, &replica)),
        "the replica did not catch up"
    );
    assert_eq!(digest(&primary), digest(&replica));
    let mut c = replica.client();
    for (i, n) in acked.iter().enumerate() {
        let value: u64 = cmd(&["GET", &format!("counter:{i}")])
            .query(&mut c)
            .expect("GET");
        assert_eq!(value, n.load(Ordering::Relaxed), "counter {i}");
    }
    let p = status(primary.grpc);
    let r = status(replica.grpc);
    let link = r.primary_link.expect("a replica has a link");
    assert!(
        link.connects > cuts / 2,
        "{} connects for {cuts} cuts",
        link.connects
    );
    assert_eq!(link.frames_rejected, 0);
    assert_eq!(r.wal.expect("wal").last_lsn, p.wal.expect("wal").last_lsn);
    assert_eq!(
        primary.info_field("stats", "sync_full").as_deref(),
        Some("0")
    );
    let partial: u64 = primary
        .info_field("stats", "sync_partial_ok")
        .expect("sync_partial_ok")
        .parse()
        .expect("a number");
    assert!(
        partial >= link.connects.min(cuts) / 2,
        "{partial} partial syncs"
    );
}

#[test]
fn corrupted_frames_are_rejected_before_they_are_written() {
    let _one = serial();
    let seed = test_seed("corrupted_frames_are_rejected_before_they_are_written");
    let dir = tempfile::tempdir().expect("tempdir");
    // A flip in a length can leave the replica waiting for bytes that never
    // come; it drops such a link after the timeout and reconnects.
    let (primary, proxy, replica) = behind_proxy(dir.path(), &[], &["--repl-timeout", "2"]);
    // One chunk in five gets a bit flipped.
    proxy.set_flips(200_000, seed);
    let mut rng = SeededRng::new(seed);
    let started = Instant::now();
    let mut round = 0;
    // Until a flip has landed in a frame's bytes (one in the stream's own
    // framing breaks the link instead), within a bound: which bytes a flip
    // hits depends on how the stream was cut into chunks.
    let rejected = || {
        status(replica.grpc)
            .primary_link
            .is_some_and(|link| link.frames_rejected > 0)
    };
    while (proxy.flips() < 20 || round < 10 || !rejected())
        && started.elapsed() < Duration::from_secs(60)
    {
        load(&primary, rng.next_u64(), 2_000, 10_000, 100);
        round += 1;
    }
    proxy.set_flips(0, seed);
    let caught = wait_until(Duration::from_secs(15), || caught_up(&primary, &replica));
    let link = status(replica.grpc).primary_link.expect("link");
    assert!(
        caught,
        "the replica did not catch up once the flips stopped: applied {} of {}, link {:?}, last error {:?}, last refusal {:?}",
        status(replica.grpc).applied_lsn,
        status(primary.grpc).wal.expect("wal").last_lsn,
        link.state,
        link.last_error,
        link.last_refusal
    );
    assert_eq!(digest(&primary), digest(&replica));
    let link = status(replica.grpc).primary_link.expect("link");
    assert!(proxy.flips() >= 20, "{} flips", proxy.flips());
    assert!(
        link.frames_rejected > 0,
        "no frame was rejected after {} flips ({} connects)",
        proxy.flips(),
        link.connects
    );
    assert!(link.connects > 1);
    // What the replica wrote is intact, frame by frame.
    drop(replica);
    run_ok(
        ferry()
            .args(["wal", "verify"])
            .arg(dir.path().join("r").join("wal")),
    );
}

#[test]
fn a_replica_drops_a_primary_that_went_silent_though_its_acks_still_flow() {
    let _one = serial();
    let seed = test_seed("a_replica_drops_a_primary_that_went_silent");
    let dir = tempfile::tempdir().expect("tempdir");
    let (primary, proxy, replica) = behind_proxy(dir.path(), &[], &["--repl-timeout", "2"]);
    load(&primary, seed, 2_000, 2_000, 100);
    assert!(wait_until(CONVERGE_TIMEOUT, || caught_up(
        &primary, &replica
    )));
    let before = status(replica.grpc).primary_link.expect("link");
    // Nothing more reaches the replica, while its acks (sent on their own
    // clock) still reach the primary and keep the stream open there.
    proxy.stall_down();
    let started = Instant::now();
    let noticed = wait_until(Duration::from_secs(8), || {
        let link = status(replica.grpc).primary_link.expect("link");
        link.last_error.contains("nothing from the primary")
    });
    let link = status(replica.grpc).primary_link.expect("link");
    assert!(
        noticed,
        "after {:?} of silence the link is {:?} (last error {:?})",
        started.elapsed(),
        link.state,
        link.last_error
    );
    // The last heartbeat may have come up to 250 ms before the stall: the
    // silence is measured from it, not from the stall.
    assert!(
        link.last_io_age_ms >= 2_000,
        "dropped after {} ms of silence",
        link.last_io_age_ms
    );
    proxy.unstall();
    load(&primary, seed + 1, 2_000, 2_000, 100);
    assert!(wait_until(Duration::from_secs(15), || caught_up(
        &primary, &replica
    )));
    assert_eq!(digest(&primary), digest(&replica));
    let after = status(replica.grpc).primary_link.expect("link");
    assert!(after.connects > before.connects);
}

#[test]
fn replica_lag_stays_under_a_second_across_a_100ms_link() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Server::start(&dir.path().join("p"), &[]);
    let proxy = Proxy::start(primary.grpc);
    proxy.set_delay(Duration::from_millis(100));
    let replica = Server::replica(&dir.path().join("r"), &proxy.url(), &[]);
    assert!(wait_until(Duration::from_secs(10), || {
        status(primary.grpc).replicas.len() == 1
    }));
    // 5,000 writes/s: 50 every 10 ms, for 10 s.
    let load_time = Duration::from_secs(10);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let mut c = primary.client();
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut tick = 0u32;
            while !stop.load(Ordering::Relaxed) && started.elapsed() < load_time {
                let mut pipe = redis::pipe();
                for i in 0..50 {
                    pipe.cmd("SET")
                        .arg(format!("k{}", (tick * 50 + i) % 20_000))
                        .arg(tick)
                        .ignore();
                }
                pipe.query::<()>(&mut c).expect("SETs");
                tick += 1;
                let due = started + Duration::from_millis(10) * tick;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            tick * 50
        })
    };
    let mut worst_ms = 0;
    let mut samples = 0;
    let started = Instant::now();
    while started.elapsed() < load_time {
        let p = status(primary.grpc);
        if let Some(row) = p.replicas.first() {
            worst_ms = worst_ms.max(row.lag.expect("lag").ms);
            eprintln!(
                "lag sample at {:?}: {:?}, applied {} sent {}",
                started.elapsed(),
                row.lag,
                row.applied_lsn,
                row.sent_lsn
            );
            samples += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().expect("writer");
    let load_end = Instant::now();
    assert!(writes >= 25_000, "only {writes} writes in {load_time:?}");
    let target = status(primary.grpc).wal.expect("wal").last_lsn;
    assert!(wait_until(Duration::from_secs(5), || replica.applied_lsn() >= target));
    let drained = load_end.elapsed();
    assert!(samples > 50, "{samples} samples");
    assert!(worst_ms < 1000, "lag reached {worst_ms} ms");
    assert!(
        drained < Duration::from_secs(1),
        "the replica took {drained:?} to catch up"
    );
    assert_eq!(digest(&primary), digest(&replica));
}

#[test]
fn a_stalled_replica_is_dropped_while_the_primary_keeps_writing() {
    let _one = serial();
    let seed = test_seed("a_stalled_replica_is_dropped_while_the_primary_keeps_writing");
    let dir = tempfile::tempdir().expect("tempdir");
    let timeout = ["--repl-timeout", "2"];
    let (primary, proxy, replica) = behind_proxy(dir.path(), &timeout, &timeout);
    load(&primary, seed, 5_000, 5_000, 100);
    assert!(wait_until(Duration::from_secs(10), || caught_up(
        &primary, &replica
    )));
    let connects = status(replica.grpc).primary_link.expect("link").connects;
    // The replica stops reading and acking; the connection stays open.
    proxy.stall();
    let mut rng = SeededRng::new(seed);
    let mut written = 0;
    let started = Instant::now();
    // Writes go on, bounded in count and time, until the primary drops it.
    while !status(primary.grpc).replicas.is_empty() && started.elapsed() < Duration::from_secs(20) {
        load(&primary, rng.next_u64(), 1_000, 5_000, 100);
        written += 1_000;
    }
    assert!(
        status(primary.grpc).replicas.is_empty(),
        "the stalled replica was not dropped"
    );
    assert!(
        written >= 1_000,
        "the primary took writes while the replica was stalled"
    );
    proxy.unstall();
    assert!(wait_until(Duration::from_secs(20), || caught_up(
        &primary, &replica
    )));
    assert_eq!(digest(&primary), digest(&replica));
    assert!(status(replica.grpc).primary_link.expect("link").connects > connects);
}

#[test]
fn a_replica_killed_during_catchup_never_goes_back() {
    let _one = serial();
    let seed = test_seed("a_replica_killed_during_catchup_never_goes_back");
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Server::start(&dir.path().join("p"), &[]);
    load(&primary, seed, 60_000, 30_000, 500);
    let rdir = dir.path().join("r");
    let mut applied = 0;
    let mut rng = SeededRng::new(seed);
    for round in 0..10 {
        load(&primary, rng.next_u64(), 3_000, 30_000, 500);
        let mut replica = Server::replica(&rdir, &primary.grpc_url(), &[]);
        let now = replica.applied_lsn();
        assert!(
            now >= applied,
            "round {round}: applied lsn went back from {applied} to {now}"
        );
        // Let it fetch some, then kill -9 in the middle.
        assert!(wait_until(Duration::from_secs(10), || replica
            .applied_lsn()
            > now));
        applied = replica.applied_lsn();
        replica.kill();
    }
    let replica = Server::start(&rdir, &[]);
    assert!(replica.applied_lsn() >= applied);
    assert!(wait_until(Duration::from_secs(15), || caught_up(
        &primary, &replica
    )));
    assert_eq!(digest(&primary), digest(&replica));
}

#[test]
fn a_replica_of_another_cluster_or_history_is_refused_and_keeps_its_data() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let p1 = Server::start(&dir.path().join("p1"), &["--fsync", "always"]);
    let p2 = Server::start(&dir.path().join("p2"), &["--fsync", "always"]);
    let mut c1 = p1.client();
    for i in 0..100 {
        raw(&mut c1, &["SET", &format!("a{i}"), "1"]);
    }
    // p3: a copy of p1's data that then went its own way.
    let mut p1 = p1;
    p1.terminate();
    copy_dir(&dir.path().join("p1"), &dir.path().join("p3"));
    let p1 = Server::start(&dir.path().join("p1"), &[]);
    let p3 = Server::start(&dir.path().join("p3"), &[]);
    raw(&mut p1.client(), &["SET", "only-on-p1", "x"]);
    raw(&mut p3.client(), &["SET", "only-on-p3", "y"]);
    raw(&mut p2.client(), &["SET", "p2", "z"]);

    let replica = Server::replica(&dir.path().join("r"), &p1.grpc_url(), &[]);
    assert!(wait_until(Duration::from_secs(10), || caught_up(
        &p1, &replica
    )));
    let before = digest(&replica);

    let mut c = replica.client();
    raw(
        &mut c,
        &["REPLICAOF", "127.0.0.1", &p2.grpc.port().to_string()],
    );
    assert!(wait_until(Duration::from_secs(10), || {
        status(replica.grpc)
            .primary_link
            .is_some_and(|l| l.last_refusal.contains("OTHER_CLUSTER"))
    }));
    let link = status(replica.grpc).primary_link.expect("link");
    assert!(
        link.last_refusal.contains(&status(p2.grpc).cluster_id),
        "{}",
        link.last_refusal
    );
    assert_eq!(digest(&replica), before);

    raw(
        &mut c,
        &["REPLICAOF", "127.0.0.1", &p3.grpc.port().to_string()],
    );
    assert!(wait_until(Duration::from_secs(10), || {
        status(replica.grpc)
            .primary_link
            .is_some_and(|l| l.last_refusal.contains("HISTORY_MISMATCH"))
    }));
    assert_eq!(digest(&replica), before);
    assert_eq!(
        raw(&mut c, &["GET", "only-on-p1"]),
        redis::Value::BulkString(b"x".to_vec())
    );
    assert_eq!(raw(&mut c, &["EXISTS", "only-on-p3"]), redis::Value::Int(0));
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

#[test]
fn a_replica_refuses_writes_and_reports_where_it_stands() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Server::start(&dir.path().join("p"), &[]);
    let rdir = dir.path().join("r");
    let replica = Server::replica(
        &rdir,
        &primary.grpc_url(),
        &["--replica-serve-stale-data", "no"],
    );
    let mut pc = primary.client();
    for i in 0..50 {
        raw(&mut pc, &["SET", &format!("k{i}"), "v"]);
    }
    raw(&mut pc, &["HSET", "h", "f", "1"]);
    assert!(wait_until(Duration::from_secs(10), || caught_up(
        &primary, &replica
    )));

    let mut rc = replica.client();
    assert_eq!(
        error(&mut rc, &["SET", "x", "1"]),
        "READONLY You can't write against a read only replica."
    );
    assert_eq!(
        error(&mut rc, &["HSET", "h", "g", "2"]),
        "READONLY You can't write against a read only replica."
    );
    assert_eq!(
        raw(&mut rc, &["GET", "k7"]),
        redis::Value::BulkString(b"v".to_vec())
    );

    // Status over gRPC and `ferry status --json`.
    let p = status(primary.grpc);
    let r = status(replica.grpc);
    assert_eq!((p.role.as_str(), r.role.as_str()), ("primary", "replica"));
    let row = &p.replicas[0];
    assert_eq!(row.node_id, r.node_id);
    assert_eq!(row.state, "streaming");
    assert_eq!(row.applied_lsn, 51);
    assert_eq!(row.lag.expect("lag").records, 0);
    let json = run_ok(ferry().args(["status", "--json", "--addr", &replica.grpc_url()]));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(v["role"], "replica");
    assert_eq!(v["applied_lsn"], 51);
    assert_eq!(v["cluster_id"], p.cluster_id.as_str());
    assert_eq!(v["primary_link"]["primary_addr"], primary.grpc_url());
    assert_eq!(v["primary_link"]["link_up"], true);
    assert_eq!(v["primary_link"]["primary_durable_lsn"], 51);
    assert_eq!(v["primary_link"]["lag_records"], 0);
    let json = run_ok(ferry().args(["status", "--json", "--addr", &primary.grpc_url()]));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(v["role"], "primary");
    assert_eq!(v["replicas"][0]["node_id"], r.node_id.as_str());
    assert_eq!(v["replicas"][0]["flushed_lsn"], 51);
    assert_eq!(v["replicas"][0]["lag_records"], 0);

    // INFO replication and ROLE, with Redis's names.
    let f = |s: &Server, k: &str| s.info_field("replication", k).unwrap_or_default();
    assert_eq!(f(&primary, "role"), "master");
    assert_eq!(f(&primary, "connected_slaves"), "1");
    assert_eq!(
        f(&primary, "slave0"),
        format!(
            "ip=127.0.0.1,port={},state=online,offset=51,lag=0",
            replica.resp.port()
        )
    );
    assert_eq!(f(&primary, "master_repl_offset"), "51");
    assert_eq!(f(&replica, "role"), "slave");
    assert_eq!(f(&replica, "master_host"), "127.0.0.1");
    // The primary's RESP port, where a Redis client reaches it.
    assert_eq!(f(&replica, "master_port"), primary.resp.port().to_string());
    assert_eq!(f(&replica, "master_link_status"), "up");
    assert_eq!(f(&replica, "slave_repl_offset"), "51");
    assert_eq!(f(&replica, "slave_read_only"), "1");
    match raw(&mut rc, &["ROLE"]) {
        redis::Value::Array(items) => {
            assert_eq!(items[0], redis::Value::BulkString(b"slave".to_vec()));
            assert_eq!(items[2], redis::Value::Int(i64::from(primary.resp.port())));
            assert_eq!(items[3], redis::Value::BulkString(b"connected".to_vec()));
            assert_eq!(items[4], redis::Value::Int(51));
        }
        other => panic!("ROLE answered {other:?}"),
    }
    // HELLO's role, as a Redis replica gives it.
    let role = |s: &Server| {
        let mut c = s.client();
        match raw(&mut c, &["HELLO", "2"]) {
            redis::Value::Array(items) => items
                .chunks(2)
                .find(|kv| kv[0] == redis::Value::BulkString(b"role".to_vec()))
                .map(|kv| kv[1].clone()),
            other => panic!("HELLO answered {other:?}"),
        }
    };
    assert_eq!(
        role(&replica),
        Some(redis::Value::BulkString(b"replica".to_vec()))
    );
    assert_eq!(
        role(&primary),
        Some(redis::Value::BulkString(b"master".to_vec()))
    );

    // The link goes down: stale reads are refused, as asked.
    let mut primary = primary;
    primary.terminate();
    assert!(wait_until(Duration::from_secs(10), || {
        f(&replica, "master_link_status") == "down"
    }));
    assert!(error(&mut rc, &["GET", "k7"]).starts_with("MASTERDOWN"));
    assert!(
        f(&replica, "master_link_down_since_seconds")
            .parse::<u64>()
            .is_ok()
    );
    let text = run_ok(ferry().args(["status", "--addr", &replica.grpc_url()]));
    assert!(String::from_utf8_lossy(&text.stdout).contains("link down"));

    // The role survives a restart without the flag.
    let mut replica = replica;
    replica.terminate();
    let replica = Server::start(&rdir, &[]);
    let r = status(replica.grpc);
    assert_eq!(r.role, "replica");
    assert_eq!(r.applied_lsn, 51);
    assert_eq!(
        r.primary_link.expect("link").primary,
        format!("http://{}", primary.grpc)
    );
}

#[test]
fn the_admin_service_disconnects_replicas_and_makes_a_node_follow_another() {
    use ferry_proto::v1::admin_client::AdminClient;
    use ferry_proto::v1::{DisconnectReplicaRequest, ReplicaOfRequest};
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Server::start(&dir.path().join("p"), &[]);
    let replica = Server::replica(&dir.path().join("r"), &primary.grpc_url(), &[]);
    // A node that starts as a primary with an empty log.
    let other = Server::start(&dir.path().join("o"), &[]);
    load(&primary, 1, 2_000, 1_000, 100);
    assert!(wait_until(Duration::from_secs(10), || caught_up(
        &primary, &replica
    )));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let node_id = status(replica.grpc).node_id;
    let connects = status(replica.grpc).primary_link.expect("link").connects;
    let ended = runtime.block_on(async {
        let mut admin = AdminClient::connect(primary.grpc_url())
            .await
            .expect("connect");
        admin
            .disconnect_replica(DisconnectReplicaRequest { node_id })
            .await
            .expect("disconnect")
            .into_inner()
            .disconnected
    });
    assert_eq!(ended, 1);
    assert!(wait_until(Duration::from_secs(10), || {
        status(replica.grpc).primary_link.expect("link").connects > connects
            && status(primary.grpc).replicas.len() == 1
    }));
    let resume = runtime.block_on(async {
        let mut admin = AdminClient::connect(other.grpc_url())
            .await
            .expect("connect");
        admin
            .replica_of(ReplicaOfRequest {
                primary: primary.grpc_url(),
            })
            .await
            .expect("replica of")
            .into_inner()
            .resume_lsn
    });
    assert_eq!(resume, 1, "an empty log resumes at the first LSN");
    assert!(wait_until(Duration::from_secs(10), || caught_up(
        &primary, &other
    )));
    let o = status(other.grpc);
    assert_eq!(o.role, "replica");
    assert_eq!(
        o.cluster_id,
        status(primary.grpc).cluster_id,
        "it joined the primary's cluster"
    );
    assert_eq!(digest(&primary), digest(&other));
    assert_eq!(
        error(&mut other.client(), &["SET", "k", "v"]),
        "READONLY You can't write against a read only replica."
    );
}

#[test]
fn wait_counts_the_replicas_that_flushed_the_clients_last_write() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let (primary, proxy, replica) = behind_proxy(dir.path(), &[], &[]);
    assert!(wait_until(Duration::from_secs(10), || {
        status(primary.grpc).replicas.len() == 1
    }));
    let mut c = primary.client();
    raw(&mut c, &["SET", "k", "1"]);
    assert_eq!(raw(&mut c, &["WAIT", "1", "10000"]), redis::Value::Int(1));
    // Only one replica exists: asking for two waits out the timeout.
    let started = Instant::now();
    assert_eq!(raw(&mut c, &["WAIT", "2", "200"]), redis::Value::Int(1));
    assert!(started.elapsed() >= Duration::from_millis(200));
    // The replica hears nothing: the new write is not flushed there.
    proxy.stall();
    raw(&mut c, &["SET", "k", "2"]);
    assert_eq!(raw(&mut c, &["WAIT", "1", "300"]), redis::Value::Int(0));
    proxy.unstall();
    assert_eq!(raw(&mut c, &["WAIT", "1", "10000"]), redis::Value::Int(1));
    assert_eq!(
        error(&mut c, &["WAIT", "1", "-5"]),
        "ERR timeout is negative"
    );
    assert_eq!(
        error(&mut replica.client(), &["WAIT", "x", "10"]),
        "ERR WAIT cannot be used with replica instances. Please also note that since Redis 4.0 if a replica is configured to be writable (which is not the default) writes to replicas are just local and are not propagated."
    );
    // WAITAOF (Redis 7.2's): the local log's sync and the replicas' alike.
    let aof = |c: &mut redis::Connection, args: &[&str]| match raw(c, args) {
        redis::Value::Array(v) => v,
        other => panic!("{other:?}"),
    };
    let ints = |a: i64, b: i64| vec![redis::Value::Int(a), redis::Value::Int(b)];
    raw(&mut c, &["SET", "k", "3"]);
    assert_eq!(aof(&mut c, &["WAITAOF", "1", "1", "10000"]), ints(1, 1));
    proxy.stall();
    raw(&mut c, &["SET", "k", "4"]);
    // The local log syncs within a second (everysec); the replica hears
    // nothing.
    assert_eq!(aof(&mut c, &["WAITAOF", "1", "0", "0"]), ints(1, 0));
    let started = Instant::now();
    assert_eq!(aof(&mut c, &["WAITAOF", "0", "1", "300"]), ints(1, 0));
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Inside a transaction it does not wait: what holds the writes so far.
    raw(&mut c, &["MULTI"]);
    raw(&mut c, &["WAITAOF", "1", "1", "0"]);
    assert_eq!(
        raw(&mut c, &["EXEC"]),
        redis::Value::Array(vec![redis::Value::Array(ints(1, 0))])
    );
    proxy.unstall();
    assert_eq!(aof(&mut c, &["WAITAOF", "0", "1", "10000"]), ints(1, 1));
    // Its arguments before the replica's refusal, as Redis reads them.
    let r = &mut replica.client();
    assert_eq!(
        error(r, &["WAITAOF", "2", "0", "0"]),
        "ERR value is out of range, value must between 0 and 1"
    );
    assert_eq!(
        error(r, &["WAITAOF", "0", "0", "0"]),
        "ERR WAITAOF cannot be used with replica instances. Please also note that writes to replicas are just local and are not propagated."
    );
}

/// The lost range `ferry promote --force` reports.
fn lost_range(stdout: &str) -> Option<(u64, u64)> {
    let line = stdout.lines().find(|l| l.starts_with("lost: lsn "))?;
    let range = line.strip_prefix("lost: lsn ")?.split_whitespace().next()?;
    let (a, b) = range.split_once("..=")?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

#[test]
fn promotion_is_refused_while_lagging_and_forced_loses_exactly_the_reported_range() {
    let _one = serial();
    let seed = test_seed("promotion_is_refused_while_lagging");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut primary = Server::start(&dir.path().join("p"), &["--fsync", "always"]);
    // Several messages' worth of log (about 3 MiB; a message carries up
    // to 1 MiB), so the replica spends seconds with part of it.
    load(&primary, seed, 200_000, 200_000, 500);
    let total = primary.durable_lsn();
    // A slow link: the replica hears of all of it at once (the accept says
    // how far the primary is) but gets it a message (1 MiB) at a time.
    let proxy = Proxy::start(primary.grpc);
    proxy.set_rate(150_000);
    let replica = Server::replica(&dir.path().join("r"), &proxy.url(), &[]);
    assert!(
        wait_until(Duration::from_secs(60), || {
            let s = status(replica.grpc);
            let link = s.primary_link.expect("link");
            let written = s.wal.expect("wal").last_lsn;
            link.primary_durable_lsn == total && written > 0 && written < total
        }),
        "{:?}",
        status(replica.grpc)
    );
    // Nothing more arrives: the replica knows of records it does not have.
    proxy.stall();
    let mut rc = replica.client();
    let refusal = error(&mut rc, &["REPLICAOF", "NO", "ONE"]);
    assert!(refusal.contains("not caught up"), "{refusal}");
    assert!(
        refusal.contains(&format!("lsn {total} was durable")),
        "{refusal}"
    );
    assert_eq!(status(replica.grpc).role, "replica");

    let out = run_ok(ferry().args(["promote", "--force", "--addr", &replica.grpc_url()]));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let (from, to) = lost_range(&stdout).unwrap_or_else(|| panic!("no lost range in {stdout}"));
    assert_eq!(to, total);
    assert!(from > 1 && from <= total, "{stdout}");
    let s = status(replica.grpc);
    assert_eq!(s.role, "primary");
    let wal = s.wal.expect("wal");
    assert_eq!(wal.epoch, 1, "the old epoch was 0");
    // The new term begins with its epoch-change record, right after what
    // the replica had: exactly lsn from..=to is missing, nothing else.
    assert_eq!(wal.last_lsn, from);
    assert_eq!(s.epoch_history[0].epoch, 1);
    assert_eq!(s.epoch_history[0].first_lsn, from);
    proxy.unstall();
    primary.terminate();
    let rebuilt = dir.path().join("rebuilt");
    run_ok(
        ferry()
            .args(["replay", "--wal"])
            .arg(dir.path().join("p").join("wal"))
            .arg("--data-dir")
            .arg(&rebuilt)
            .args(["--until-lsn", &(from - 1).to_string()]),
    );
    let expected = Server::start(&rebuilt, &[]);
    assert_eq!(digest(&replica), digest(&expected));
    raw(&mut rc, &["SET", "new", "term"]);
    assert_eq!(status(replica.grpc).wal.expect("wal").last_lsn, from + 1);
}

#[test]
fn a_promoted_replica_starts_a_new_epoch_and_its_replicas_follow_it() {
    let _one = serial();
    let seed = test_seed("a_promoted_replica_starts_a_new_epoch");
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Server::start(&dir.path().join("p"), &[]);
    let rdir = dir.path().join("r");
    // A primary given as host:port is called in the node's scheme.
    let flag = primary.grpc.to_string();
    let replica = Server::replica(&rdir, &flag, &[]);
    let cascaded = Server::replica(&dir.path().join("c"), &replica.grpc_url(), &[]);
    load(&primary, seed, 3_000, 1_000, 100);
    assert!(wait_until(Duration::from_secs(10), || {
        caught_up(&primary, &replica) && caught_up(&replica, &cascaded)
    }));
    let before = status(replica.grpc).wal.expect("wal").last_lsn;
    let mut rc = replica.client();
    assert_eq!(
        raw(&mut rc, &["REPLICAOF", "NO", "ONE"]),
        redis::Value::Okay
    );
    let s = status(replica.grpc);
    assert_eq!(s.role, "primary");
    assert_eq!(s.wal.expect("wal").epoch, 1);
    assert_eq!(s.epoch_history.len(), 1);
    assert_eq!(s.epoch_history[0].first_lsn, before + 1);
    assert_eq!(
        replica.info_field("replication", "role").as_deref(),
        Some("master")
    );
    raw(&mut rc, &["SET", "after", "promotion"]);
    assert!(wait_until(Duration::from_secs(10), || caught_up(
        &replica, &cascaded
    )));
    assert_eq!(digest(&replica), digest(&cascaded));
    assert_eq!(status(cascaded.grpc).wal.expect("wal").epoch, 1);
    // A restart keeps the role and the epoch, and writes no second epoch change.
    let mut replica = replica;
    replica.terminate();
    let mut replica = Server::start(&rdir, &[]);
    let s = status(replica.grpc);
    assert_eq!((s.role.as_str(), s.wal.expect("wal").epoch), ("primary", 1));
    assert_eq!(s.wal.expect("wal").last_lsn, before + 2);
    // So does one with the --replica-of it was first started with (a
    // service's fixed flags, or its config file): that was applied once.
    replica.terminate();
    let replica = Server::start(&rdir, &["--replica-of", &flag]);
    let s = status(replica.grpc);
    assert_eq!((s.role.as_str(), s.wal.expect("wal").epoch), ("primary", 1));
    assert!(
        replica.stderr().contains("its role changed since"),
        "{}",
        replica.stderr()
    );
    raw(&mut replica.client(), &["SET", "after", "restart"]);
}

#[test]
fn a_replica_fails_over_when_its_primary_is_killed() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut primary = Server::start(&dir.path().join("p"), &["--fsync", "always"]);
    let replica = Server::replica(
        &dir.path().join("r"),
        &primary.grpc_url(),
        &["--failover-after", "3", "--repl-timeout", "2"],
    );
    let mut pc = primary.client();
    for i in 0..200 {
        raw(&mut pc, &["SET", &format!("k{i}"), "v"]);
    }
    assert!(wait_until(Duration::from_secs(10), || caught_up(
        &primary, &replica
    )));
    assert_eq!(status(replica.grpc).role, "replica");
    assert_eq!(status(replica.grpc).failover_state, "armed");
    primary.kill();
    let killed = Instant::now();
    let mut rc = replica.client();
    let mut pending_seen = false;
    assert!(
        wait_until(Duration::from_secs(5), || {
            pending_seen |= status(replica.grpc).failover_state.starts_with("pending ");
            cmd(&["SET", "after", "failover"])
                .query::<()>(&mut rc)
                .is_ok()
        }),
        "no failover within 3 s + 2 s: {:?}",
        status(replica.grpc)
    );
    assert!(
        killed.elapsed() >= Duration::from_secs(3),
        "it waited {:?}",
        killed.elapsed()
    );
    let s = status(replica.grpc);
    assert_eq!(s.role, "primary");
    assert_eq!(s.wal.expect("wal").epoch, 1);
    assert!(pending_seen, "the status never showed the failover pending");
    assert_eq!(s.failover_state, "none");
    assert_eq!(raw(&mut rc, &["DBSIZE"]), redis::Value::Int(201));
}

/// A primary that dies while its replica is still catching up, after it
/// told the replica that records the replica never received were durable:
/// the replica fails over all the same (what it never received cannot be
/// waited for), instead of refusing for ever and leaving no primary.
#[test]
fn a_replica_fails_over_when_its_primary_dies_with_records_it_never_received() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut primary = Server::start(&dir.path().join("p"), &[]);
    // A log of several frames messages (values that do not compress away)
    // before the replica starts, over a slow link: the first message says
    // the whole log is durable, and the rest is still on its way when the
    // primary dies.
    let mut pc = primary.client();
    for start in (0..30_000u64).step_by(1000) {
        let mut pipe = redis::pipe();
        for i in start..start + 1000 {
            let value: String = (0..12)
                .map(|j| format!("{:016x}", (i * 12 + j).wrapping_mul(0x9E37_79B9_7F4A_7C15)))
                .collect();
            pipe.cmd("SET").arg(format!("b{i}")).arg(value).ignore();
        }
        pipe.query::<()>(&mut pc).expect("SETs");
    }
    let proxy = Proxy::start(primary.grpc);
    proxy.set_rate(500_000);
    let replica = Server::replica(
        &dir.path().join("r"),
        &proxy.url(),
        &["--failover-after", "2", "--repl-timeout", "10"],
    );
    let heard_more = || {
        let s = status(replica.grpc);
        let written = s.wal.expect("wal").last_lsn;
        let heard = s.primary_link.expect("link").primary_durable_lsn;
        written > 0 && heard > written
    };
    assert!(
        wait_until(Duration::from_secs(20), heard_more),
        "{:?}",
        status(replica.grpc)
    );
    primary.kill();
    proxy.isolate();
    let mut rc = replica.client();
    assert!(
        wait_until(Duration::from_secs(10), || {
            cmd(&["SET", "after", "failover"])
                .query::<()>(&mut rc)
                .is_ok()
        }),
        "no failover: {:?}\n{}",
        status(replica.grpc),
        replica.stderr()
    );
    let s = status(replica.grpc);
    assert_eq!(s.role, "primary");
    assert_eq!(s.wal.expect("wal").epoch, 1);
    let keys = raw(&mut rc, &["DBSIZE"]);
    assert!(
        matches!(keys, redis::Value::Int(n) if n > 1 && n < 30_001),
        "{keys:?}"
    );
}

#[test]
fn a_primary_without_its_write_lease_refuses_writes() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Server::start(
        &dir.path().join("p"),
        &[
            "--min-replicas-to-write",
            "1",
            "--min-replicas-max-lag",
            "1",
        ],
    );
    let mut pc = primary.client();
    assert_eq!(
        error(&mut pc, &["SET", "k", "v"]),
        "NOREPLICAS Not enough good replicas to write."
    );
    let proxy = Proxy::start(primary.grpc);
    let replica = Server::replica(&dir.path().join("r"), &proxy.url(), &[]);
    assert!(wait_until(Duration::from_secs(10), || {
        cmd(&["SET", "k", "v"]).query::<()>(&mut pc).is_ok()
    }));
    // A transaction queued while the lease holds...
    let mut tx = primary.client();
    assert_eq!(raw(&mut tx, &["MULTI"]), redis::Value::Okay);
    assert_eq!(
        raw(&mut tx, &["SET", "k", "queued"]),
        redis::Value::SimpleString("QUEUED".into())
    );
    // Cut off from its replica, the primary stops taking writes once the
    // last ack is older than the lag allowed.
    proxy.stall();
    assert!(wait_until(Duration::from_secs(10), || {
        cmd(&["SET", "k", "v"]).query::<()>(&mut pc).is_err()
    }));
    assert_eq!(
        error(&mut pc, &["SET", "k", "w"]),
        "NOREPLICAS Not enough good replicas to write."
    );
    // ... is discarded at EXEC, as Redis's.
    assert_eq!(
        error(&mut tx, &["EXEC"]),
        "EXECABORT Transaction discarded because of: NOREPLICAS Not enough good replicas to write."
    );
    // Reads still work; after the heal, writes again.
    assert_eq!(
        raw(&mut pc, &["GET", "k"]),
        redis::Value::BulkString(b"v".to_vec())
    );
    proxy.unstall();
    assert!(wait_until(Duration::from_secs(15), || {
        cmd(&["SET", "k", "x"]).query::<()>(&mut pc).is_ok()
    }));
    assert!(wait_until(Duration::from_secs(10), || caught_up(
        &primary, &replica
    )));
    // CONFIG SET changes the lease: two replicas are wanted and there is
    // one; a lag of 0 ends the lease (as in Redis).
    assert_eq!(
        raw(&mut pc, &["CONFIG", "SET", "min-replicas-to-write", "2"]),
        redis::Value::Okay
    );
    assert_eq!(
        error(&mut pc, &["SET", "k", "y"]),
        "NOREPLICAS Not enough good replicas to write."
    );
    assert_eq!(
        raw(&mut pc, &["CONFIG", "SET", "min-replicas-max-lag", "0"]),
        redis::Value::Okay
    );
    assert_eq!(raw(&mut pc, &["SET", "k", "z"]), redis::Value::Okay);
    assert_eq!(status(primary.grpc).failover_state, "none");
}

#[test]
fn failover_after_must_exceed_the_lease_lag_by_a_margin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Server::try_start(
        &dir.path().join("n"),
        &[
            "--failover-after",
            "5",
            "--min-replicas-to-write",
            "1",
            "--min-replicas-max-lag",
            "4",
        ],
    )
    .err()
    .expect("refused");
    assert!(err.contains("--failover-after 5 must be at least"), "{err}");
    // Nor may CONFIG SET make the lease outlast it; without a lease any
    // lag goes.
    let node = Server::start(
        &dir.path().join("n"),
        &[
            "--failover-after",
            "5",
            "--min-replicas-to-write",
            "1",
            "--min-replicas-max-lag",
            "3",
        ],
    );
    let c = &mut node.client();
    assert_eq!(
        error(c, &["CONFIG", "SET", "min-replicas-max-lag", "4"]),
        "ERR CONFIG SET failed (possibly related to argument 'min-replicas-max-lag') - --failover-after 5 must be at least --min-replicas-max-lag (4) + 2 s, so an isolated primary stops writing before a replica promotes"
    );
    assert_eq!(
        raw(
            c,
            &[
                "CONFIG",
                "SET",
                "min-replicas-to-write",
                "0",
                "min-replicas-max-lag",
                "4"
            ]
        ),
        redis::Value::Okay
    );
    assert_eq!(
        node.info_field("replication", "role").as_deref(),
        Some("master")
    );
    let lag = cmd(&["CONFIG", "GET", "min-replicas-max-lag"])
        .query::<Vec<String>>(c)
        .expect("CONFIG GET");
    assert_eq!(lag, ["min-replicas-max-lag", "4"]);
}

#[test]
fn a_crash_at_any_step_of_a_promotion_leaves_one_outcome() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Server::start(&dir.path().join("p"), &["--fsync", "always"]);
    let mut pc = primary.client();
    for i in 0..100 {
        raw(&mut pc, &["SET", &format!("k{i}"), "v"]);
    }
    for (point, promoted) in [
        ("node::promote::before_conf", false),
        ("node::promote::after_conf", true),
        ("node::promote::after_epoch", true),
    ] {
        let rdir = dir.path().join(point.replace("::", "-"));
        let url = primary.grpc_url();
        let mut replica =
            Server::try_start_env(&rdir, &["--replica-of", &url], &[("FERRY_CRASH_AT", point)])
                .expect("replica");
        assert!(wait_until(Duration::from_secs(10), || caught_up(
            &primary, &replica
        )));
        let last = status(replica.grpc).wal.expect("wal").last_lsn;
        let _ = cmd(&["REPLICAOF", "NO", "ONE"]).query::<redis::Value>(&mut replica.client());
        assert!(
            replica.wait_exit(Duration::from_secs(10)).is_some(),
            "{point}: the node did not crash"
        );
        let replica = Server::start(&rdir, &[]);
        let s = status(replica.grpc);
        let wal = s.wal.expect("wal");
        if promoted {
            assert_eq!(s.role, "primary", "{point}");
            assert_eq!(wal.epoch, 1, "{point}");
            assert_eq!(s.epoch_history.len(), 1, "{point}");
            assert_eq!(s.epoch_history[0].first_lsn, last + 1, "{point}");
            // Exactly one epoch change, right where the term begins.
            assert_eq!(wal.last_lsn, last + 1, "{point}");
            raw(&mut replica.client(), &["SET", "new", "term"]);
        } else {
            assert_eq!(s.role, "replica", "{point}");
            assert_eq!(wal.epoch, 0, "{point}");
            assert!(s.epoch_history.is_empty(), "{point}");
            assert!(wait_until(Duration::from_secs(10), || caught_up(
                &primary, &replica
            )));
        }
        drop(replica);
        let dump = ferry()
            .args(["wal", "dump"])
            .arg(rdir.join("wal"))
            .output()
            .expect("dump");
        let epochs = String::from_utf8_lossy(&dump.stdout)
            .lines()
            .filter(|l| l.contains(" epoch epoch="))
            .count();
        assert_eq!(epochs, usize::from(promoted), "{point}");
    }
}

/// A switchover whose caller goes away midway (the tool stopped while the
/// replica cannot catch up) still runs to its end on the primary: when its
/// time is up, writes resume, rather than the primary staying fenced for
/// good.
#[test]
fn a_switchover_whose_caller_goes_away_still_ends() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let (primary, proxy, _replica) = behind_proxy(dir.path(), &[], &[]);
    assert!(wait_until(Duration::from_secs(10), || {
        status(primary.grpc).replicas.len() == 1
    }));
    proxy.stall();
    let p = &mut primary.client();
    raw(p, &["SET", "before", "1"]);
    let mut tool = ferry()
        .args([
            "switchover",
            "--addr",
            &primary.grpc_url(),
            "--timeout",
            "2",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("switchover");
    assert!(
        wait_until(Duration::from_secs(10), || {
            cmd(&["SET", "k", "v"]).query::<()>(p).is_err()
        }),
        "the switchover never stopped writes"
    );
    tool.kill().expect("kill");
    tool.wait().expect("wait");
    assert!(
        wait_until(Duration::from_secs(10), || {
            cmd(&["SET", "k", "v"]).query::<()>(p).is_ok()
        }),
        "writes never resumed: {:?}",
        status(primary.grpc)
    );
}

/// A switchover whose promote call breaks off after the replica promoted
/// (it crashes right after recording its new role) does not hand writes
/// back to the old primary, which would make two primaries: the old one
/// asks the replica how it ended and, once it answers as the new primary,
/// follows it.
#[test]
fn a_switchover_whose_promote_call_breaks_after_the_promotion_follows_the_new_primary() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Server::start(&dir.path().join("p"), &["--fsync", "always"]);
    // The replica's gRPC address goes through a proxy, which follows it to
    // its new port when it restarts.
    let down = Proxy::unbound();
    let announce = down.addr().to_string();
    let rdir = dir.path().join("r");
    let mut replica = Server::try_start_env(
        &rdir,
        &[
            "--replica-of",
            &primary.grpc_url(),
            "--announce-grpc-addr",
            &announce,
        ],
        &[("FERRY_CRASH_AT", "node::promote::after_conf")],
    )
    .expect("replica");
    down.forward_to(replica.grpc);
    let mut pc = primary.client();
    for i in 0..20 {
        raw(&mut pc, &["SET", &format!("k{i}"), "v"]);
    }
    assert!(wait_until(Duration::from_secs(10), || caught_up(
        &primary, &replica
    )));
    let switchover = ferry()
        .args(["switchover", "--addr", &primary.grpc_url()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("switchover");
    assert!(
        replica.wait_exit(Duration::from_secs(10)).is_some(),
        "the replica did not crash after recording its promotion"
    );
    // Meanwhile the old primary takes no writes.
    assert!(
        error(&mut pc, &["SET", "during", "x"]).starts_with("READONLY"),
        "the old primary took a write while the promotion's outcome was unknown"
    );
    let replica = Server::start(&rdir, &["--announce-grpc-addr", &announce]);
    down.forward_to(replica.grpc);
    exited_ok(
        switchover.wait_with_output().expect("switchover"),
        "ferry switchover",
    );
    let s = status(primary.grpc);
    assert_eq!(s.role, "replica", "{s:?}");
    assert!(error(&mut primary.client(), &["SET", "x", "1"]).starts_with("READONLY"));
    raw(&mut replica.client(), &["SET", "after", "switchover"]);
    assert!(
        wait_until(Duration::from_secs(10), || caught_up(&replica, &primary)),
        "{:?}",
        status(primary.grpc)
    );
    assert_eq!(digest(&primary), digest(&replica));
}

#[test]
fn a_planned_switchover_under_load_loses_no_acknowledged_write() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Server::start(&dir.path().join("p"), &[]);
    let replica = Server::replica(&dir.path().join("r"), &primary.grpc_url(), &[]);
    assert!(wait_until(Duration::from_secs(10), || {
        status(primary.grpc).replicas.len() == 1
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, refused) = (stop.clone(), refused.clone());
        let mut c = primary.client();
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut i = 0u64;
            // Bounded by the stop flag and a count.
            while !stop.load(Ordering::Relaxed) && i < 1_000_000 {
                if cmd(&["SET", &format!("w{i}"), &i.to_string()])
                    .query::<()>(&mut c)
                    .is_ok()
                {
                    acked.push(i);
                } else {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
            (acked, i)
        })
    };
    assert!(wait_until(Duration::from_secs(10), || primary
        .durable_lsn()
        > 500));
    run_ok(ferry().args(["switchover", "--addr", &primary.grpc_url()]));
    // The writer goes on until the old primary has refused it.
    assert!(wait_until(Duration::from_secs(10), || {
        refused.load(Ordering::Relaxed) > 0
    }));
    stop.store(true, Ordering::Relaxed);
    let (acked, tried) = writer.join().expect("writer");
    assert!(
        (acked.len() as u64) < tried,
        "writes were refused once it was no longer the primary"
    );
    let r = status(replica.grpc);
    assert_eq!(r.role, "primary");
    assert_eq!(r.wal.expect("wal").epoch, 1, "new epoch = old + 1");
    let p = status(primary.grpc);
    assert_eq!(p.role, "replica");
    assert_eq!(p.primary_link.expect("link").primary, replica.grpc_url());
    // Every acknowledged write is on the new primary.
    let mut rc = replica.client();
    for chunk in acked.chunks(500) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.cmd("GET").arg(format!("w{i}"));
        }
        let values: Vec<Option<String>> = pipe.query(&mut rc).expect("GETs");
        for (i, v) in chunk.iter().zip(values) {
            assert_eq!(v, Some(i.to_string()), "acknowledged write w{i} lost");
        }
    }
    // The old primary follows the new one.
    raw(&mut rc, &["SET", "after", "switchover"]);
    assert!(wait_until(Duration::from_secs(10), || caught_up(
        &replica, &primary
    )));
    assert_eq!(digest(&primary), digest(&replica));
}

#[test]
fn a_primary_that_sees_a_newer_epoch_stops_taking_writes() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let old = Server::start(&dir.path().join("p"), &["--fsync", "always"]);
    let promoted = Server::replica(&dir.path().join("r"), &old.grpc_url(), &[]);
    let mut oc = old.client();
    for i in 0..50 {
        raw(&mut oc, &["SET", &format!("k{i}"), "v"]);
    }
    assert!(wait_until(Duration::from_secs(10), || caught_up(
        &old, &promoted
    )));
    let mut rc = promoted.client();
    assert_eq!(
        raw(&mut rc, &["REPLICAOF", "NO", "ONE"]),
        redis::Value::Okay
    );
    raw(&mut rc, &["SET", "term", "1"]);
    let follower = Server::replica(&dir.path().join("f"), &promoted.grpc_url(), &[]);
    assert!(wait_until(Duration::from_secs(10), || caught_up(
        &promoted, &follower
    )));
    // The old primary still takes writes: nothing told it of epoch 1 yet.
    raw(&mut oc, &["SET", "still", "writing"]);
    // A replica of the new term hellos the old primary: it learns of epoch 1.
    raw(
        &mut follower.client(),
        &["REPLICAOF", "127.0.0.1", &old.grpc.port().to_string()],
    );
    assert!(wait_until(Duration::from_secs(10), || {
        status(follower.grpc)
            .primary_link
            .is_some_and(|l| l.last_refusal.contains("STALE_EPOCH"))
    }));
    assert!(
        error(&mut oc, &["SET", "k", "late"]).starts_with("READONLY this node is a stale primary")
    );
    assert_eq!(status(old.grpc).newer_epoch_seen, 1);
    assert_eq!(
        digest(&follower),
        digest(&promoted),
        "the follower keeps its data"
    );
}

#[test]
fn an_old_primary_rejoins_and_keeps_its_diverged_writes_in_quarantine() {
    rejoin_after_divergence(&[], 100, 0);
}

#[test]
fn an_old_primary_whose_wal_was_purged_rejoins_by_snapshot_and_keeps_its_diverged_writes() {
    rejoin_after_divergence(&["--wal-segment-bytes", "65536"], 30_000, 0);
}

/// The new primary has purged its log past the old one's last record: the
/// fork is found by the terms (no frame to compare), not taken for a
/// replica that is merely behind (a snapshot over its diverged writes).
#[test]
fn an_old_primary_rejoining_a_primary_that_purged_past_the_fork_keeps_its_diverged_writes() {
    rejoin_after_divergence(&["--wal-segment-bytes", "65536"], 30_000, 30_000);
}

/// `count` SETs of `{prefix}{i}`, pipelined, with values that do not
/// compress away (so the WAL spans segments).
fn set_keys(c: &mut redis::Connection, prefix: &str, count: u64) {
    for start in (0..count).step_by(1000) {
        let mut pipe = redis::pipe();
        for i in start..(start + 1000).min(count) {
            let value = format!("{:016x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            pipe.cmd("SET")
                .arg(format!("{prefix}{i}"))
                .arg(value)
                .ignore();
        }
        pipe.query::<()>(c).expect("SETs");
    }
}

/// Writes the old primary acknowledges after the fork.
const DIVERGED: u64 = 37;

/// Cuts the old primary off (`proxy`), has it acknowledge `DIVERGED` writes
/// (`lost{i}`), promotes the replica and writes five keys (`{prefix}{i}`)
/// to it.
fn fork(proxy: &Proxy, old: &mut redis::Connection, new: &mut redis::Connection, prefix: &str) {
    proxy.isolate();
    for i in 0..DIVERGED {
        raw(old, &["SET", &format!("lost{i}"), "x"]);
    }
    assert_eq!(raw(new, &["REPLICAOF", "NO", "ONE"]), redis::Value::Okay);
    for i in 0..5 {
        raw(new, &["SET", &format!("{prefix}{i}"), "y"]);
    }
}

/// `old`, whose log forked (it acknowledged the `DIVERGED` writes
/// `lost{i}` alone), is told to follow `new`, which leads term `epoch`: it
/// finds the fork, sets its diverged records aside, and ends with `new`'s
/// data.
fn rejoin(old: &Server, new: &Server, epoch: u64) {
    raw(
        &mut old.client(),
        &["REPLICAOF", "127.0.0.1", &new.grpc.port().to_string()],
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            status(old.grpc).wal.expect("wal").epoch == epoch && caught_up(new, old)
        }),
        "{:?}\n{}",
        status(old.grpc),
        old.stderr()
    );
    assert_eq!(digest(old), digest(new));
    assert_eq!(status(old.grpc).quarantined_records, DIVERGED);
    assert_eq!(
        raw(&mut old.client(), &["EXISTS", "lost0"]),
        redis::Value::Int(0)
    );
}

/// An old primary with `before` keys acknowledged before a partition (its
/// early WAL purged when there are enough) and diverged writes after it
/// rejoins the promoted replica, which took `after` more writes (and then
/// purged its log past the old primary's last record).
fn rejoin_after_divergence(extra: &[&str], before: u64, after: u64) {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = vec!["--fsync", "always"];
    args.extend_from_slice(extra);
    let old = Server::start(&dir.path().join("p"), &args);
    let proxy = Proxy::start(old.grpc);
    let new = Server::replica(&dir.path().join("r"), &proxy.url(), extra);
    let mut oc = old.client();
    set_keys(&mut oc, "k", before);
    assert!(
        wait_until(Duration::from_secs(20), || caught_up(&old, &new)),
        "{:?}\n{:?}\n{}",
        status(old.grpc),
        status(new.grpc),
        new.stderr()
    );
    if !extra.is_empty() {
        assert!(
            wait_until(Duration::from_secs(20), || {
                [&old, &new]
                    .iter()
                    .all(|n| status(n.grpc).wal.expect("wal").first_retained_lsn > 1)
            }),
            "the WALs were never purged"
        );
    }
    // A partition, and no lease: the old primary acknowledges writes its
    // replica never receives, and the replica is promoted.
    let mut nc = new.client();
    fork(&proxy, &mut oc, &mut nc, "new");
    if after > 0 {
        set_keys(&mut nc, "after", after);
        let old_last = status(old.grpc).wal.expect("wal").last_lsn;
        assert!(
            wait_until(Duration::from_secs(20), || {
                status(new.grpc).wal.expect("wal").first_retained_lsn > old_last + 1
            }),
            "the new primary never purged past lsn {}: {:?}",
            old_last + 1,
            status(new.grpc)
        );
    }
    // The old primary is told to follow the new one: it finds the fork,
    // sets its diverged records aside and follows.
    rejoin(&old, &new, 1);
    let s = status(old.grpc);
    // With its log purged it takes the new primary's state from a snapshot.
    let bootstraps = s.primary_link.as_ref().expect("link").bootstraps;
    assert_eq!(bootstraps, u64::from(!extra.is_empty()));
    assert_eq!(s.wal.expect("wal").epoch, 1);
    // The quarantine log holds exactly the acknowledged diverged writes.
    let quarantine: Vec<_> = std::fs::read_dir(dir.path().join("p").join("quarantine"))
        .expect("quarantine dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(quarantine.len(), 1);
    // With its log purged, the engine's state before the rejoin is kept
    // beside the records.
    assert_eq!(
        quarantine[0].join("engine-state").join("CURRENT").exists(),
        !extra.is_empty()
    );
    let dump = run_ok(ferry().args(["wal", "dump", "--json"]).arg(&quarantine[0]));
    let keys: Vec<String> = String::from_utf8_lossy(&dump.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            v["key"].as_str().expect("key").to_string()
        })
        .collect();
    assert_eq!(
        keys,
        (0..DIVERGED)
            .map(|i| format!("lost{i}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        raw(&mut old.client(), &["EXISTS", "new4"]),
        redis::Value::Int(1)
    );
}

#[test]
fn with_a_lease_the_old_primary_stops_before_the_failover_and_after_the_heal_follows_the_new_one() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let old = Server::start(
        &dir.path().join("p"),
        &[
            "--min-replicas-to-write",
            "1",
            "--min-replicas-max-lag",
            "2",
        ],
    );
    // Every path between the two goes through a proxy: the replica reaches
    // the primary through `up`, and gives the primary `down` as its own
    // address (--announce-grpc-addr), so a partition cuts both ways.
    let up = Proxy::start(old.grpc);
    let down = Proxy::unbound();
    let new = Server::replica(
        &dir.path().join("r"),
        &up.url(),
        &[
            "--failover-after",
            "4",
            "--min-replicas-to-write",
            "1",
            "--min-replicas-max-lag",
            "2",
            "--announce-grpc-addr",
            &down.addr().to_string(),
        ],
    );
    down.forward_to(new.grpc);
    let mut oc = old.client();
    assert!(wait_until(Duration::from_secs(10), || {
        cmd(&["SET", "first", "1"]).query::<()>(&mut oc).is_ok()
    }));
    // Clients write all along; the link between the two is cut.
    let stop = Arc::new(AtomicBool::new(false));
    let refused_at = Arc::new(Mutex::new(None::<Instant>));
    let acks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let (stop, refused_at, acks) = (stop.clone(), refused_at.clone(), acks.clone());
        let mut c = old.client();
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 1_000_000 {
                match cmd(&["SET", &format!("w{i}"), "v"]).query::<()>(&mut c) {
                    Ok(()) => {
                        acked.push(i);
                        acks.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if e.code() == Some("NOREPLICAS") => {
                        refused_at.lock().unwrap().get_or_insert_with(Instant::now);
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
                i += 1;
            }
            acked
        })
    };
    // Let writes flow through the lease before the cut: more than 50
    // acknowledged (each flushed by the replica first).
    assert!(wait_until(Duration::from_secs(10), || acks
        .load(Ordering::Relaxed)
        > 50));
    up.isolate();
    down.isolate();
    // The lease runs out (2 s) before the replica may promote itself (4 s).
    assert!(wait_until(Duration::from_secs(15), || {
        status(old.grpc).failover_state == "lease-lost"
    }));
    assert!(wait_until(Duration::from_secs(15), || status(new.grpc)
        .role
        == "primary"));
    let promoted_at = Instant::now();
    let refused = refused_at
        .lock()
        .unwrap()
        .expect("the old primary refused writes");
    assert!(
        refused < promoted_at,
        "the old primary stopped writing before the failover"
    );
    // While the partition lasts the old primary can reach no one: it stays
    // a primary that takes no writes. (The new one holds the same lease and
    // has no replica yet: it takes writes once the old one follows it.)
    let s = status(old.grpc);
    assert_eq!(
        (s.role.as_str(), s.failover_state.as_str()),
        ("primary", "lease-lost")
    );
    assert_eq!(
        error(&mut oc, &["SET", "during-partition", "1"]),
        "NOREPLICAS Not enough good replicas to write."
    );
    stop.store(true, Ordering::Relaxed);
    let acked = writer.join().expect("writer");
    // After the heal the old primary finds the new one by itself, rejoins
    // and follows. (Its epoch turns 1 only once it holds the new primary's
    // records.)
    up.heal();
    down.heal();
    assert!(
        wait_until(Duration::from_secs(20), || {
            let s = status(old.grpc);
            s.role == "replica" && s.wal.expect("wal").epoch == 1 && caught_up(&new, &old)
        }),
        "{:?}",
        status(old.grpc)
    );
    let mut nc = new.client();
    raw(&mut nc, &["SET", "after-the-heal", "1"]);
    assert!(wait_until(Duration::from_secs(10), || caught_up(
        &new, &old
    )));
    assert_eq!(digest(&old), digest(&new));
    // A write is acknowledged only once the replica flushed it: every
    // acknowledged write is on the new primary. (Writes the old primary made
    // durable but could not get flushed in time were refused to their client
    // with -NOREPLICAS; they are in its quarantine log.)
    let missing: Vec<&u64> = acked
        .iter()
        .filter(|i| {
            let v: Option<String> = cmd(&["GET", &format!("w{i}")]).query(&mut nc).expect("GET");
            v.is_none()
        })
        .collect();
    assert!(acked.len() > 50, "only {} writes acknowledged", acked.len());
    assert!(missing.is_empty(), "acknowledged writes lost: {missing:?}");
}

#[test]
fn an_old_primary_rejoins_two_terms_later_through_the_history_its_new_primary_learned() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    // A leads; B follows it through a proxy; C follows B.
    let a = Server::start(&dir.path().join("a"), &["--fsync", "always"]);
    let proxy = Proxy::start(a.grpc);
    let b = Server::replica(&dir.path().join("b"), &proxy.url(), &[]);
    let c = Server::replica(&dir.path().join("c"), &b.grpc_url(), &[]);
    let mut ac = a.client();
    for i in 0..100 {
        raw(&mut ac, &["SET", &format!("k{i}"), "v"]);
    }
    assert!(wait_until(Duration::from_secs(10), || caught_up(&a, &b)
        && caught_up(&b, &c)));
    // A is cut off and, without a lease, acknowledges writes B never gets;
    // B takes over (epoch 1), then hands over to C (epoch 2).
    let mut bc = b.client();
    fork(&proxy, &mut ac, &mut bc, "b");
    assert!(wait_until(Duration::from_secs(10), || caught_up(&b, &c)));
    run_ok(ferry().args(["switchover", "--addr", &b.grpc_url()]));
    let mut cc = c.client();
    for i in 0..5 {
        raw(&mut cc, &["SET", &format!("c{i}"), "z"]);
    }
    // C began only term 2, but serves the whole history it holds.
    let history: Vec<u64> = status(c.grpc)
        .epoch_history
        .iter()
        .map(|t| t.epoch)
        .collect();
    assert_eq!(history, vec![1, 2]);
    // A follows C: its log forked where term 1 began, not where C's own
    // term did.
    rejoin(&a, &c, 2);
    let mut ac = a.client();
    assert_eq!(raw(&mut ac, &["EXISTS", "b4"]), redis::Value::Int(1));
    assert_eq!(raw(&mut ac, &["EXISTS", "c4"]), redis::Value::Int(1));
}

/// A rejoin that fails once the diverged records are set aside (the
/// engine's rebuild fails: a disk error) does not leave the node unlinked
/// with an empty engine, showing itself a primary: it brings its engine
/// back to its log and follows its primary again.
#[test]
fn a_rejoin_that_fails_midway_follows_the_primary_again() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let old = Server::try_start_env(
        &dir.path().join("p"),
        &["--fsync", "always"],
        &[("FERRY_FAIL_AT", "node::rejoin::ingest")],
    )
    .expect("old primary");
    let proxy = Proxy::start(old.grpc);
    let new = Server::replica(&dir.path().join("r"), &proxy.url(), &[]);
    let mut oc = old.client();
    set_keys(&mut oc, "k", 100);
    assert!(wait_until(Duration::from_secs(20), || caught_up(
        &old, &new
    )));
    let mut nc = new.client();
    fork(&proxy, &mut oc, &mut nc, "new");
    rejoin(&old, &new, 1);
    assert!(
        old.stderr().contains("FERRY_FAIL_AT: failing"),
        "no failure injected"
    );
    assert_eq!(
        old.info_field("replication", "role").as_deref(),
        Some("slave")
    );
    assert_eq!(
        raw(&mut old.client(), &["EXISTS", "k99"]),
        redis::Value::Int(1)
    );
}

/// A replica whose applier fails (a disk error, twice) starts it again
/// after a pause and catches up, instead of reconnecting at once, over and
/// over, applying nothing.
#[test]
fn a_replica_whose_applier_failed_tries_again_after_a_pause() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Server::start(&dir.path().join("p"), &[]);
    let replica = Server::try_start_env(
        &dir.path().join("r"),
        &["--replica-of", &primary.grpc_url()],
        &[
            ("FERRY_FAIL_AT", "engine::apply"),
            ("FERRY_FAIL_TIMES", "2"),
        ],
    )
    .expect("replica");
    let mut pc = primary.client();
    for i in 0..20 {
        raw(&mut pc, &["SET", &format!("k{i}"), "v"]);
    }
    assert!(
        wait_until(Duration::from_secs(20), || caught_up(&primary, &replica)),
        "{:?}",
        status(replica.grpc)
    );
    assert_eq!(digest(&primary), digest(&replica));
    assert!(
        replica.stderr().contains("trying again after a pause"),
        "{}",
        replica.stderr()
    );
    let connects = status(replica.grpc).primary_link.expect("link").connects;
    assert!(connects <= 4, "{connects} connects");
}

/// Under `--fsync no` on both nodes, what the primary ships and what the
/// replica acks as flushed is on disk (each syncs when a replica streams),
/// so a power loss of the primary never leaves a replica ahead of it; the
/// stream, WAIT and the replica's reads work as under the other policies.
#[test]
fn under_fsync_no_replication_ships_and_acks_synced_frames() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Server::start(&dir.path().join("p"), &["--fsync", "no"]);
    let replica = Server::replica(
        &dir.path().join("r"),
        &primary.grpc_url(),
        &["--fsync", "no"],
    );
    let mut pc = primary.client();
    for i in 0..100 {
        raw(&mut pc, &["SET", &format!("k{i}"), "v"]);
    }
    assert_eq!(raw(&mut pc, &["WAIT", "1", "10000"]), redis::Value::Int(1));
    assert!(wait_until(Duration::from_secs(10), || caught_up(
        &primary, &replica
    )));
    let (p, r) = (status(primary.grpc), status(replica.grpc));
    let (pw, rw) = (p.wal.expect("wal"), r.wal.expect("wal"));
    assert_eq!(
        pw.durable_lsn, pw.last_lsn,
        "the primary synced what it shipped"
    );
    assert_eq!(rw.durable_lsn, pw.last_lsn);
    assert_eq!(digest(&primary), digest(&replica));
}

/// A promotion that fails before the new role is recorded (a disk error)
/// leaves the replica following its primary, as it was.
#[test]
fn a_promotion_that_fails_leaves_the_replica_following() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Server::start(&dir.path().join("p"), &[]);
    let replica = Server::try_start_env(
        &dir.path().join("r"),
        &["--replica-of", &primary.grpc_url()],
        &[("FERRY_FAIL_AT", "node::promote::conf")],
    )
    .expect("replica");
    let mut pc = primary.client();
    raw(&mut pc, &["SET", "a", "1"]);
    assert!(wait_until(Duration::from_secs(10), || caught_up(
        &primary, &replica
    )));
    let refused = error(&mut replica.client(), &["REPLICAOF", "NO", "ONE"]);
    assert!(refused.contains("failure injected"), "{refused}");
    raw(&mut pc, &["SET", "b", "2"]);
    assert!(
        wait_until(Duration::from_secs(10), || caught_up(&primary, &replica)),
        "{:?}",
        status(replica.grpc)
    );
    assert_eq!(status(replica.grpc).role, "replica");
    assert_eq!(digest(&primary), digest(&replica));
}

/// A node that rejoins after a fork finds it even when its log no longer
/// holds the start of an earlier term it shares with its new primary (it
/// purged it): that term's epoch is read off its own terms. B takes over
/// from A (term 1) with C following, B's log is purged past term 1's
/// start, then B is cut off and diverges while C takes over (term 2).
#[test]
fn a_node_whose_log_was_purged_past_a_shared_term_s_start_still_finds_its_fork() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let small = ["--wal-segment-bytes", "65536"];
    let a = Server::start(&dir.path().join("a"), &small);
    let b = Server::replica(&dir.path().join("b"), &a.grpc_url(), &small);
    let proxy = Proxy::start(b.grpc);
    let c = Server::replica(&dir.path().join("c"), &proxy.url(), &small);
    set_keys(&mut a.client(), "a", 100);
    assert!(wait_until(Duration::from_secs(20), || caught_up(&a, &b)
        && caught_up(&b, &c)));
    drop(a);
    let (mut bc, mut cc) = (b.client(), c.client());
    assert_eq!(
        raw(&mut bc, &["REPLICAOF", "NO", "ONE"]),
        redis::Value::Okay
    );
    let term1 = status(b.grpc).epoch_history[0].first_lsn;
    set_keys(&mut bc, "t1-", 30_000);
    assert!(
        wait_until(Duration::from_secs(20), || caught_up(&b, &c)
            && status(b.grpc).wal.expect("wal").first_retained_lsn > term1),
        "{:?}",
        status(b.grpc)
    );
    fork(&proxy, &mut bc, &mut cc, "c");
    rejoin(&b, &c, 2);
    let mut bc = b.client();
    assert_eq!(raw(&mut bc, &["EXISTS", "c4"]), redis::Value::Int(1));
    assert_eq!(raw(&mut bc, &["EXISTS", "t1-29999"]), redis::Value::Int(1));
}

/// A primary's transaction reaches a replica as one record, applied whole:
/// a reader there never sees half of it; a WATCH there is spoiled by the
/// records that change its keys; queued writes on a replica doom the
/// transaction, as in Redis.
#[test]
fn a_transaction_reaches_a_replica_whole_and_spoils_its_watches() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Server::start(&dir.path().join("p"), &[]);
    // Two threads, so the replica applies records beside its clients.
    let replica = Server::replica(
        &dir.path().join("r"),
        &primary.grpc_url(),
        &["--worker-threads", "2"],
    );
    let pc = &mut primary.client();
    let rc = &mut replica.client();

    // WATCH on the replica, then the primary changes the key.
    assert_eq!(raw(pc, &["SET", "w", "1"]), redis::Value::Okay);
    assert!(wait_until(Duration::from_secs(10), || caught_up(
        &primary, &replica
    )));
    assert_eq!(raw(rc, &["WATCH", "w"]), redis::Value::Okay);
    assert_eq!(raw(pc, &["SET", "w", "2"]), redis::Value::Okay);
    assert!(wait_until(Duration::from_secs(10), || caught_up(
        &primary, &replica
    )));
    assert_eq!(raw(rc, &["MULTI"]), redis::Value::Okay);
    raw(rc, &["GET", "w"]);
    assert_eq!(
        raw(rc, &["EXEC"]),
        redis::Value::Nil,
        "the replicated SET spoiled the watch"
    );
    // Unchanged since: it runs.
    assert_eq!(raw(rc, &["WATCH", "w"]), redis::Value::Okay);
    assert_eq!(raw(rc, &["MULTI"]), redis::Value::Okay);
    raw(rc, &["GET", "w"]);
    assert_eq!(
        raw(rc, &["EXEC"]),
        redis::Value::Array(vec![redis::Value::BulkString(b"2".to_vec())])
    );
    // A write queued on a replica dooms the transaction.
    assert_eq!(raw(rc, &["MULTI"]), redis::Value::Okay);
    assert!(error(rc, &["SET", "w", "3"]).starts_with("READONLY"));
    assert!(error(rc, &["EXEC"]).starts_with("EXECABORT"));

    // Transactions on the primary, read on the replica all along.
    let writer = {
        let mut c = primary.client();
        std::thread::spawn(move || {
            for i in 0..1000 {
                let _: () = redis::pipe()
                    .atomic()
                    .set("a", i)
                    .incr("n", 1)
                    .set("b", i)
                    .query(&mut c)
                    .expect("transaction");
            }
        })
    };
    let mut reads = 0;
    while !writer.is_finished() && reads < 100_000 {
        let (a, b): (Option<i64>, Option<i64>) = cmd(&["MGET", "a", "b"]).query(rc).expect("MGET");
        assert_eq!(a, b, "the replica showed half of a transaction");
        // A transaction of reads there sees one state too (however long
        // it takes between its reads of the two keys).
        let mut pipe = redis::pipe();
        pipe.atomic().get("a");
        for _ in 0..300 {
            pipe.get("n");
        }
        pipe.get("b");
        let seen: Vec<Option<i64>> = pipe.query(rc).expect("a transaction on the replica");
        assert_eq!(
            seen.first(),
            seen.last(),
            "a transaction on the replica read two states"
        );
        reads += 1;
    }
    eprintln!("{reads} reads on the replica beside the transactions");
    writer.join().expect("writer");
    assert!(wait_until(Duration::from_secs(30), || caught_up(
        &primary, &replica
    )));
    assert_eq!(
        raw(rc, &["GET", "n"]),
        redis::Value::BulkString(b"1000".to_vec())
    );
    assert_eq!(digest(&primary), digest(&replica));
}

/// SHUTDOWN on a primary whose replica has not flushed its last write holds
/// writes and waits (as Redis 7.0's): SHUTDOWN ABORT ends the wait (the
/// SHUTDOWN fails, the held write runs); once the replica catches up the
/// primary stops, and the replica has every write it acknowledged.
#[test]
fn shutdown_waits_for_a_lagging_replica_until_aborted_or_caught_up() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut primary, proxy, replica) = behind_proxy(dir.path(), &[], &[]);
    let c = &mut primary.client();
    assert!(wait_until(Duration::from_secs(10), || {
        status(primary.grpc).replicas.len() == 1
    }));
    redis::cmd("SET")
        .arg("early")
        .arg("1")
        .query::<()>(c)
        .expect("SET");
    assert!(wait_until(Duration::from_secs(10), || caught_up(
        &primary, &replica
    )));
    proxy.stall();
    redis::cmd("SET")
        .arg("late")
        .arg("1")
        .query::<()>(c)
        .expect("SET");
    let spawn = |mut con: redis::Connection, args: &'static [&'static str]| {
        std::thread::spawn(move || cmd(args).query::<redis::Value>(&mut con))
    };
    // INFO shows the wait once writes are held.
    let waiting = |node: &Server| {
        wait_until(Duration::from_secs(10), || {
            node.info_field("server", "shutdown_in_milliseconds")
                .is_some()
        })
    };
    let shutdown = spawn(primary.client(), &["SHUTDOWN"]);
    assert!(waiting(&primary), "SHUTDOWN waits for the replica");
    let held = spawn(primary.client(), &["SET", "held", "1"]);
    assert!(primary.blocked_clients_reach(1), "writes are held");
    assert!(!shutdown.is_finished());
    // Reads go on.
    assert_eq!(cmd(&["GET", "late"]).query::<String>(c).expect("GET"), "1");
    assert_eq!(
        cmd(&["SHUTDOWN", "ABORT"])
            .query::<String>(c)
            .expect("ABORT"),
        "OK"
    );
    let refused = shutdown.join().unwrap().expect_err("the SHUTDOWN failed");
    assert_eq!(
        refused.detail(),
        Some("Errors trying to SHUTDOWN. Check logs.")
    );
    held.join().unwrap().expect("the held write ran");
    // SIGTERM waits the same way (as Redis's), and is aborted the same way.
    primary.sigterm();
    assert!(waiting(&primary), "SIGTERM waits for the replica");
    let held = spawn(primary.client(), &["SET", "held-too", "1"]);
    assert!(primary.blocked_clients_reach(1), "writes are held");
    assert!(primary.running());
    assert_eq!(
        cmd(&["SHUTDOWN", "ABORT"])
            .query::<String>(c)
            .expect("ABORT"),
        "OK"
    );
    held.join().unwrap().expect("the held write ran");
    assert!(primary.running());
    let again = spawn(primary.client(), &["SHUTDOWN"]);
    assert!(waiting(&primary));
    assert!(!again.is_finished());
    proxy.unstall();
    let exited = primary
        .wait_exit(Duration::from_secs(20))
        .expect("the primary stops once its replica caught up");
    assert!(exited.success());
    assert!(again.join().unwrap().is_err(), "closed with no reply");
    let r = &mut replica.client();
    for key in ["early", "late", "held", "held-too"] {
        assert_eq!(
            cmd(&["GET", key]).query::<Option<String>>(r).expect("GET"),
            Some("1".into()),
            "{key} reached the replica before the primary stopped"
        );
    }
}

/// SHUTDOWN stops a primary whose replica lags once --shutdown-timeout
/// passed, SHUTDOWN NOW does not wait at all, nor does a second SIGTERM.
#[test]
fn shutdown_stops_after_its_timeout_or_now() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut primary, proxy, _replica) =
        behind_proxy(dir.path(), &["--shutdown-timeout", "2"], &[]);
    for (round, shutdown) in [&["SHUTDOWN"][..], &["SHUTDOWN", "NOW"][..], &[][..]]
        .into_iter()
        .enumerate()
    {
        let c = &mut primary.client();
        assert!(wait_until(Duration::from_secs(10), || {
            status(primary.grpc).replicas.len() == 1
        }));
        proxy.stall();
        redis::cmd("SET")
            .arg("k")
            .arg(round)
            .query::<()>(c)
            .expect("SET");
        let started = Instant::now();
        if shutdown.is_empty() {
            primary.sigterm();
            // Waiting for the replica, which the second signal cuts short.
            assert!(wait_until(Duration::from_secs(10), || primary
                .info_field("server", "shutdown_in_milliseconds")
                .is_some()));
            primary.sigterm();
            // Stopping: the connection closes.
            assert!(wait_until(Duration::from_secs(5), || cmd(&["PING"])
                .query::<redis::Value>(c)
                .is_err()));
        } else {
            // The connection closes as the node begins to stop.
            assert!(cmd(shutdown).query::<redis::Value>(c).is_err());
        }
        let took = started.elapsed();
        match round {
            0 => assert!(took >= Duration::from_secs(2), "{took:?}"),
            1 => assert!(took < Duration::from_secs(2), "{took:?}"),
            // Well before the 30 s the restarted primary would wait.
            _ => assert!(took < Duration::from_secs(10), "{took:?}"),
        }
        // (A stalled link would hold the stop for its grace period.)
        proxy.unstall();
        assert!(
            primary
                .wait_exit(Duration::from_secs(20))
                .expect("stops")
                .success()
        );
        primary = Server::start(&dir.path().join("p"), &["--shutdown-timeout", "30"]);
        proxy.forward_to(primary.grpc);
    }
}

/// FAILOVER as Redis 7.0's, over ferry's switchover: refusals with Redis's
/// texts; while the replica cannot catch up, writes are refused
/// (`-READONLY`) and `master_failover_state` is `waiting-for-sync` until
/// FAILOVER ABORT or the TIMEOUT, after which writes resume on the same
/// primary; once the replica can catch up, FAILOVER TO it swaps the roles
/// and no write is lost.
#[test]
fn failover_swaps_roles_unless_aborted_or_timed_out() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let (primary, proxy, replica) = behind_proxy(dir.path(), &[], &[]);
    let (p, r) = (&mut primary.client(), &mut replica.client());
    assert!(wait_until(Duration::from_secs(10), || {
        status(primary.grpc).replicas.len() == 1
    }));
    let port = replica.resp.port().to_string();
    let state = || primary.info_field("replication", "master_failover_state");
    assert_eq!(
        error(p, &["FAILOVER", "TO", "127.0.0.1", "1"]),
        "ERR FAILOVER target HOST and PORT is not a replica."
    );
    assert_eq!(
        error(p, &["FAILOVER", "TO", "127.0.0.1", &port, "FORCE"]),
        "ERR FAILOVER with force option requires both a timeout and target HOST and IP."
    );
    assert_eq!(
        error(r, &["FAILOVER"]),
        "ERR FAILOVER is not valid when server is a replica."
    );
    assert_eq!(
        error(p, &["FAILOVER", "ABORT"]),
        "ERR No failover in progress."
    );

    // The replica cannot catch up: ABORT, then a TIMEOUT, end the wait.
    proxy.stall();
    let write = |c: &mut redis::Connection, key: &str| cmd(&["SET", key, "1"]).query::<String>(c);
    write(p, "before").expect("SET");
    for abort in [true, false] {
        let failover: &[&str] = if abort {
            &["FAILOVER"]
        } else {
            &["FAILOVER", "TIMEOUT", "1000"]
        };
        assert_eq!(raw(p, failover), redis::Value::Okay);
        assert_eq!(state().as_deref(), Some("waiting-for-sync"));
        assert_eq!(error(p, &["FAILOVER"]), "ERR FAILOVER already in progress.");
        // A write meanwhile is held (a blocked client), not refused; it
        // runs once the failover is given up.
        let mut writer = primary.client();
        let held = std::thread::spawn(move || write(&mut writer, "during"));
        assert!(primary.blocked_clients_reach(1), "the write is held");
        assert_eq!(
            cmd(&["GET", "before"])
                .query::<Option<String>>(p)
                .expect("GET"),
            Some("1".into()),
            "reads go on"
        );
        let mut also = None;
        if abort {
            // A CLIENT PAUSE begun and ended meanwhile leaves the
            // failover's hold on (as in Redis): a write after it is held
            // beside the first.
            assert_eq!(
                raw(p, &["CLIENT", "PAUSE", "100000", "WRITE"]),
                redis::Value::Okay
            );
            assert_eq!(raw(p, &["CLIENT", "UNPAUSE"]), redis::Value::Okay);
            let mut writer = primary.client();
            also = Some(std::thread::spawn(move || write(&mut writer, "during-too")));
            assert!(primary.blocked_clients_reach(2), "both writes are held");
            assert_eq!(raw(p, &["FAILOVER", "ABORT"]), redis::Value::Okay);
        }
        assert_eq!(held.join().unwrap().expect("the held write ran"), "OK");
        if let Some(also) = also {
            assert_eq!(also.join().unwrap().expect("the held write ran"), "OK");
        }
        write(p, "after").expect("writes resume");
        assert!(wait_until(Duration::from_secs(5), || state().as_deref()
            == Some("no-failover")));
        assert_eq!(
            primary.info_field("replication", "role").as_deref(),
            Some("master")
        );
    }

    // It can: the roles swap, and every write is on both.
    proxy.unstall();
    assert!(wait_until(Duration::from_secs(10), || caught_up(
        &primary, &replica
    )));
    assert_eq!(
        raw(
            p,
            &["FAILOVER", "TO", "127.0.0.1", &port, "TIMEOUT", "10000"]
        ),
        redis::Value::Okay
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            replica.info_field("replication", "role").as_deref() == Some("master")
                && primary.info_field("replication", "role").as_deref() == Some("slave")
        }),
        "the roles swapped"
    );
    let r = &mut replica.client();
    write(r, "on-new-primary").expect("the new primary takes writes");
    let p = &mut primary.client();
    assert!(wait_until(Duration::from_secs(10), || {
        cmd(&["GET", "on-new-primary"])
            .query::<Option<String>>(p)
            .ok()
            .flatten()
            .is_some()
    }));
    for key in ["before", "during", "after"] {
        assert_eq!(
            cmd(&["GET", key]).query::<Option<String>>(r).expect("GET"),
            Some("1".into()),
            "{key} is on the new primary"
        );
    }
}

/// FAILOVER TO ... TIMEOUT ... FORCE: once the timeout passed with the
/// replica still behind, it promotes all the same (as Redis's); the old
/// primary follows it and keeps the write the new one lacks in its
/// quarantine log instead of dropping it.
#[test]
fn a_forced_failover_promotes_a_lagging_replica_and_quarantines_the_rest() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let (primary, proxy, replica) = behind_proxy(dir.path(), &[], &[]);
    let p = &mut primary.client();
    assert!(wait_until(Duration::from_secs(10), || {
        status(primary.grpc).replicas.len() == 1
    }));
    cmd(&["SET", "shared", "1"]).query::<()>(p).expect("SET");
    assert!(wait_until(Duration::from_secs(10), || caught_up(
        &primary, &replica
    )));
    proxy.stall();
    cmd(&["SET", "only-on-the-old-primary", "1"])
        .query::<()>(p)
        .expect("SET");
    let port = replica.resp.port().to_string();
    let started = Instant::now();
    assert_eq!(
        raw(
            p,
            &[
                "FAILOVER",
                "TO",
                "127.0.0.1",
                &port,
                "TIMEOUT",
                "500",
                "FORCE"
            ]
        ),
        redis::Value::Okay
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            replica.info_field("replication", "role").as_deref() == Some("master")
                && primary.info_field("replication", "role").as_deref() == Some("slave")
                && status(primary.grpc).quarantined_records == 1
        }),
        "the replica promoted, the old primary follows it with its extra write quarantined"
    );
    assert!(started.elapsed() >= Duration::from_millis(500));
    let r = &mut replica.client();
    assert_eq!(
        cmd(&["GET", "shared"])
            .query::<Option<String>>(r)
            .expect("GET"),
        Some("1".into())
    );
    assert_eq!(
        cmd(&["GET", "only-on-the-old-primary"])
            .query::<Option<String>>(r)
            .expect("GET"),
        None
    );
    assert!(wait_until(Duration::from_secs(10), || digest(&primary)
        == digest(&replica)));
}

/// While the replica is being asked to promote, the old primary's
/// `master_failover_state` is `failover-in-progress` (Redis's name for the
/// hand-over); once it follows the new primary it is `no-failover`.
#[test]
fn failover_shows_the_hand_over_in_progress() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Server::start(&dir.path().join("p"), &[]);
    // The primary reaches the replica's gRPC (to have it promote) through
    // `down` only.
    let down = Proxy::unbound();
    let replica = Server::replica(
        &dir.path().join("r"),
        &primary.grpc_url(),
        &["--announce-grpc-addr", &down.addr().to_string()],
    );
    down.forward_to(replica.grpc);
    let p = &mut primary.client();
    cmd(&["SET", "k", "1"]).query::<()>(p).expect("SET");
    assert!(wait_until(Duration::from_secs(10), || caught_up(
        &primary, &replica
    )));
    let state = || primary.info_field("replication", "master_failover_state");
    down.stall();
    assert_eq!(raw(p, &["FAILOVER"]), redis::Value::Okay);
    assert!(
        wait_until(Duration::from_secs(10), || state().as_deref()
            == Some("failover-in-progress")),
        "{:?}",
        state()
    );
    // A write during the hand-over is held, then refused by the replica
    // the primary became, as in Redis.
    let mut writer = primary.client();
    let held = std::thread::spawn(move || {
        cmd(&["SET", "during", "1"])
            .query::<String>(&mut writer)
            .map_err(|e| e.to_string())
    });
    assert!(primary.blocked_clients_reach(1), "the write is held");
    down.unstall();
    assert!(
        wait_until(Duration::from_secs(20), || {
            replica.info_field("replication", "role").as_deref() == Some("master")
                && primary.info_field("replication", "role").as_deref() == Some("slave")
        }),
        "the roles swapped"
    );
    let refused = held.join().unwrap().expect_err("refused");
    assert!(
        refused.contains("You can't write against a read only replica"),
        "{refused}"
    );
    assert_eq!(state().as_deref(), Some("no-failover"));
}

/// A replica's SHUTDOWN waits for its own replica as a primary's does (as
/// Redis's): INFO shows `shutdown_in_milliseconds` meanwhile, and once the
/// cascaded replica caught up it stops, the cascaded one holding every
/// write the replica had.
#[test]
fn a_replica_s_shutdown_waits_for_its_cascaded_replica() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Server::start(&dir.path().join("p"), &[]);
    let mut replica = Server::replica(&dir.path().join("r"), &primary.grpc_url(), &[]);
    let proxy = Proxy::start(replica.grpc);
    let cascaded = Server::replica(&dir.path().join("c"), &proxy.url(), &[]);
    let p = &mut primary.client();
    cmd(&["SET", "early", "1"]).query::<()>(p).expect("SET");
    assert!(wait_until(Duration::from_secs(10), || {
        caught_up(&primary, &replica) && caught_up(&replica, &cascaded)
    }));
    proxy.stall();
    cmd(&["SET", "late", "1"]).query::<()>(p).expect("SET");
    assert!(wait_until(Duration::from_secs(10), || caught_up(
        &primary, &replica
    )));
    let mut r = replica.client();
    let shutdown = std::thread::spawn(move || cmd(&["SHUTDOWN"]).query::<redis::Value>(&mut r));
    assert!(
        wait_until(Duration::from_secs(10), || replica
            .info_field("server", "shutdown_in_milliseconds")
            .is_some()),
        "the replica waits for its own replica"
    );
    proxy.unstall();
    let exited = replica
        .wait_exit(Duration::from_secs(20))
        .expect("the replica stops once its replica caught up");
    assert!(exited.success());
    assert!(shutdown.join().unwrap().is_err(), "closed with no reply");
    let c = &mut cascaded.client();
    assert_eq!(
        cmd(&["GET", "late"])
            .query::<Option<String>>(c)
            .expect("GET"),
        Some("1".into()),
        "the write reached the cascaded replica before the replica stopped"
    );
}

/// CLIENT TRACKING on a replica: a client that read a key there is told
/// when a write on the primary reaches the replica (as Redis's replicas
/// tell theirs), and of a FLUSHALL.
#[test]
fn a_tracking_client_of_a_replica_is_told_of_the_primary_s_writes() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Server::start(&dir.path().join("p"), &[]);
    let replica = Server::replica(&dir.path().join("r"), &primary.grpc_url(), &[]);
    let p = &mut primary.client();
    cmd(&["SET", "k", "1"]).query::<()>(p).expect("SET");
    assert!(wait_until(Duration::from_secs(10), || caught_up(
        &primary, &replica
    )));
    let mut t = Resp3::connect(&replica);
    t.exchange(&["CLIENT", "TRACKING", "ON"], "+OK\r\n");
    t.exchange(&["GET", "k"], "$1\r\n1\r\n");
    cmd(&["SET", "k", "2"]).query::<()>(p).expect("SET");
    assert!(t.read_until(invalidate(&["k"]).as_bytes()));
    t.exchange(&["GET", "k"], "$1\r\n2\r\n");
    cmd(&["FLUSHALL"]).query::<()>(p).expect("FLUSHALL");
    assert!(t.read_until(b">2\r\n$10\r\ninvalidate\r\n_\r\n"));
}

/// A Pub/Sub message as RESP3 pushes it.
fn pushed(pattern: Option<&str>, channel: &str, payload: &str) -> String {
    pubsub_message('>', pattern, channel, payload)
}

/// Pub/Sub across replication, as Redis replicates PUBLISH: a message
/// published on the primary reaches a replica's subscribers (by channel
/// and by pattern) in the order published, once the write logged before
/// it is readable on the replica; PUBLISH counts the primary's own
/// subscribers. A message published on the replica reaches the replica's
/// subscribers only.
#[test]
fn a_replica_s_subscribers_get_the_primary_s_messages_after_its_writes() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Server::start(&dir.path().join("p"), &[]);
    let replica = Server::replica(&dir.path().join("r"), &primary.grpc_url(), &[]);
    // Messages are logged once the primary has a replica.
    assert!(wait_until(Duration::from_secs(10), || {
        status(primary.grpc).replicas.len() == 1
    }));
    let mut on_replica = Resp3::connect(&replica);
    on_replica.exchange(
        &["SUBSCRIBE", "news"],
        ">3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n",
    );
    on_replica.exchange(
        &["PSUBSCRIBE", "n*"],
        ">3\r\n$10\r\npsubscribe\r\n$2\r\nn*\r\n:2\r\n",
    );
    let mut on_primary = Resp3::connect(&primary);
    on_primary.exchange(
        &["SUBSCRIBE", "news"],
        ">3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n",
    );
    let p = &mut primary.client();
    let r = &mut replica.client();
    for i in 0..30 {
        let value = i.to_string();
        cmd(&["SET", "k", &value]).query::<()>(p).expect("SET");
        let delivered: i64 = cmd(&["PUBLISH", "news", &value]).query(p).expect("PUBLISH");
        assert_eq!(delivered, 1, "the primary's subscriber");
        let expected = pushed(None, "news", &value) + &pushed(Some("n*"), "news", &value);
        assert!(
            on_replica.read_until(expected.as_bytes()),
            "message {i}: {:?}",
            String::from_utf8_lossy(&on_replica.got)
        );
        assert!(on_replica.got.is_empty(), "in order, nothing between");
        let k: String = cmd(&["GET", "k"]).query(r).expect("GET");
        assert_eq!(k, value, "the write before the message");
        assert!(on_primary.read_until(pushed(None, "news", &value).as_bytes()));
    }
    // Published on the replica: its own subscribers only.
    let delivered: i64 = cmd(&["PUBLISH", "news", "local"])
        .query(r)
        .expect("PUBLISH");
    assert_eq!(delivered, 2);
    assert!(on_replica.read_until(
        (pushed(None, "news", "local") + &pushed(Some("n*"), "news", "local")).as_bytes()
    ));
    let delivered: i64 = cmd(&["PUBLISH", "news", "after"])
        .query(p)
        .expect("PUBLISH");
    assert_eq!(delivered, 1);
    on_primary.exchange(&["PING"], &(pushed(None, "news", "after") + "+PONG\r\n"));
}

/// Keyspace notifications across replication: the primary logs the events
/// of the classes it has on with each write, and a replica delivers them
/// to its own subscribers by its own setting (here `K` where the primary
/// sends `E`), the primary's expiry sweep's `expired` too.
#[test]
fn a_replica_tells_the_keyspace_events_its_primary_logs() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Server::start(&dir.path().join("p"), &["--notify-keyspace-events", "Eg$x"]);
    let replica = Server::replica(
        &dir.path().join("r"),
        &primary.grpc_url(),
        &["--notify-keyspace-events", "KA"],
    );
    let mut on_replica = Resp3::connect(&replica);
    on_replica.exchange(
        &["PSUBSCRIBE", "__key*__:*"],
        ">3\r\n$10\r\npsubscribe\r\n$10\r\n__key*__:*\r\n:1\r\n",
    );
    let mut on_primary = Resp3::connect(&primary);
    on_primary.exchange(
        &["PSUBSCRIBE", "__key*__:*"],
        ">3\r\n$10\r\npsubscribe\r\n$10\r\n__key*__:*\r\n:1\r\n",
    );
    let event =
        |channel: &str, payload: &str| pubsub_message('>', Some("__key*__:*"), channel, payload);
    let p = &mut primary.client();
    cmd(&["SET", "k", "v"]).query::<()>(p).expect("SET");
    cmd(&["HSET", "h", "f", "v"]).query::<()>(p).expect("HSET");
    cmd(&["SET", "e", "v", "PX", "50"])
        .query::<()>(p)
        .expect("SET");
    // The hash's class is off on the primary: not logged, so not told.
    assert!(
        on_replica.read_until(
            (event("__keyspace@0__:k", "set")
                + &event("__keyspace@0__:e", "set")
                + &event("__keyspace@0__:e", "expire"))
                .as_bytes()
        )
    );
    assert!(
        on_primary.read_until(
            (event("__keyevent@0__:set", "k")
                + &event("__keyevent@0__:set", "e")
                + &event("__keyevent@0__:expire", "e"))
                .as_bytes()
        )
    );
    // The primary's sweep deletes the key; both tell it.
    assert!(on_replica.read_until(event("__keyspace@0__:e", "expired").as_bytes()));
    assert!(on_primary.read_until(event("__keyevent@0__:expired", "e").as_bytes()));
    let r = &mut replica.client();
    let shown: Vec<String> = cmd(&["CONFIG", "GET", "notify-keyspace-events"])
        .query(r)
        .expect("CONFIG GET");
    assert_eq!(shown, ["notify-keyspace-events", "AK"]);
}

/// Pub/Sub under concurrent publishers, with a replica: 4 publishers each
/// publish 300 numbered messages over 3 channels (in pipelines of 10, on
/// seeded-random channels), while subscribers on the primary and on the
/// replica listen by channel and by pattern. Every subscriber gets every
/// message it subscribed to, each publisher's in order, and every
/// subscriber of a channel, on either node, gets its messages in one and
/// the same order (the log's).
#[test]
fn concurrent_publishers_keep_one_order_on_every_node() {
    const PUBLISHERS: u64 = 4;
    const MESSAGES: u64 = 300;
    const CHANNELS: u64 = 3;
    let _one = serial();
    let seed = test_seed("concurrent_publishers_keep_one_order_on_every_node");
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Server::start(&dir.path().join("p"), &[]);
    let replica = Server::replica(&dir.path().join("r"), &primary.grpc_url(), &[]);
    // Messages are logged (and so reach the replica) once the primary has
    // a replica, as Redis replicates PUBLISH to the replicas it has.
    assert!(wait_until(Duration::from_secs(10), || {
        status(primary.grpc).replicas.len() == 1
    }));
    // Each publisher's channels, drawn before anything runs.
    let mut rng = SeededRng::new(seed);
    let plan: Vec<Vec<u64>> = (0..PUBLISHERS)
        .map(|_| (0..MESSAGES).map(|_| rng.below(CHANNELS)).collect())
        .collect();
    let sent_to = |channel: u64| -> usize {
        plan.iter()
            .map(|p| p.iter().filter(|&&c| c == channel).count())
            .sum()
    };
    // (node, what it subscribes to, how many messages it must get)
    let mut listeners = Vec::new();
    for node in [&primary, &replica] {
        listeners.push((node.url(), "ch0".to_string(), false, sent_to(0)));
        listeners.push((node.url(), "ch2".to_string(), false, sent_to(2)));
        listeners.push((
            node.url(),
            "ch*".to_string(),
            true,
            (PUBLISHERS * MESSAGES) as usize,
        ));
    }
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let subscribers: Vec<_> = listeners
        .into_iter()
        .map(|(url, name, pattern, expected)| {
            let ready = ready_tx.clone();
            std::thread::spawn(move || {
                let client = redis::Client::open(url).expect("client");
                let mut con = client.get_connection().expect("connect");
                let mut sub = con.as_pubsub();
                sub.set_read_timeout(Some(Duration::from_secs(30)))
                    .expect("timeout");
                if pattern {
                    sub.psubscribe(&name).expect("PSUBSCRIBE");
                } else {
                    sub.subscribe(&name).expect("SUBSCRIBE");
                }
                ready.send(()).expect("ready");
                let mut got: Vec<(String, String)> = Vec::with_capacity(expected);
                while got.len() < expected {
                    let Ok(message) = sub.get_message() else {
                        break;
                    };
                    got.push((
                        message.get_channel_name().to_string(),
                        message.get_payload().expect("payload"),
                    ));
                }
                (name, got, expected)
            })
        })
        .collect();
    for _ in 0..subscribers.len() {
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("subscribed");
    }
    let publishers: Vec<_> = plan
        .iter()
        .enumerate()
        .map(|(p, channels)| {
            let url = primary.url();
            let channels = channels.clone();
            std::thread::spawn(move || {
                let client = redis::Client::open(url).expect("client");
                let mut con = client.get_connection().expect("connect");
                for (batch, chunk) in channels.chunks(10).enumerate() {
                    let mut pipe = redis::pipe();
                    for (i, channel) in chunk.iter().enumerate() {
                        let n = batch * 10 + i;
                        pipe.cmd("PUBLISH")
                            .arg(format!("ch{channel}"))
                            .arg(format!("{p}:{n}"));
                    }
                    let _: Vec<i64> = pipe.query(&mut con).expect("PUBLISH");
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.join().expect("publisher");
    }
    // Each channel's order, as the first subscriber that got it saw it.
    let mut orders: std::collections::HashMap<String, Vec<String>> = Default::default();
    for subscriber in subscribers {
        let (name, got, expected) = subscriber.join().expect("subscriber");
        assert_eq!(got.len(), expected, "seed {seed}: {name} got too few");
        let mut by_channel: std::collections::HashMap<String, Vec<String>> = Default::default();
        for (channel, payload) in got {
            by_channel.entry(channel).or_default().push(payload);
        }
        for (channel, payloads) in by_channel {
            // Each publisher's in the order it published them.
            let mut last = vec![-1i64; PUBLISHERS as usize];
            for payload in &payloads {
                let (p, n) = payload.split_once(':').expect("p:n");
                let (p, n): (usize, i64) = (p.parse().unwrap(), n.parse().unwrap());
                assert!(
                    n > last[p],
                    "seed {seed}: {name} {channel}: {payload} after {}",
                    last[p]
                );
                last[p] = n;
            }
            match orders.get(&channel) {
                Some(order) => assert_eq!(
                    order, &payloads,
                    "seed {seed}: {name} saw {channel} in another order"
                ),
                None => {
                    orders.insert(channel, payloads);
                }
            }
        }
    }
}
