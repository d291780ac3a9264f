//! Snapshot bootstrap and WAL retention end to end: real `ferry serve`
//! processes on loopback, real Redis clients, the real gRPC clients, and the
//! TCP proxy to cut a transfer.
//!
//! Nodes run with small WAL segments so that retention deletes segments
//! after a few thousand writes. The tests take a lock so that only one runs
//! at a time.

mod common;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::*;
use ferry_proto::v1::GetStatusResponse;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Small segments: retention has whole segments to delete early.
const SEGMENT: &[&str] = &["--wal-segment-bytes", "262144"];
/// How long a replica may take to bootstrap and catch up in these tests.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

fn args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut all = SEGMENT.to_vec();
    all.extend_from_slice(extra);
    all
}

/// `count` keys `key:{from..from+count}` with `value_len`-byte values,
/// pipelined 1000 at a time.
fn fill(server: &Server, from: usize, count: usize, value_len: usize) {
    let mut c = server.client();
    let mut rng = ferry_wal::testing::SeededRng::new(from as u64 + 1);
    for start in (from..from + count).step_by(1000) {
        let mut pipe = redis::pipe();
        for i in start..(start + 1000).min(from + count) {
            let value: String = (0..value_len)
                .map(|_| char::from(b'a' + (rng.below(26) as u8)))
                .collect();
            pipe.cmd("SET").arg(format!("key:{i}")).arg(value).ignore();
        }
        pipe.query::<()>(&mut c).expect("pipelined SETs");
    }
}

fn first_retained(server: &Server) -> u64 {
    status(server.grpc).wal.expect("wal").first_retained_lsn
}

fn link(s: &GetStatusResponse) -> ferry_proto::v1::PrimaryLink {
    s.primary_link.clone().expect("a replica has a link")
}

fn sync_full(primary: &Server) -> u64 {
    status(primary.grpc).sync_full
}

fn converged(primary: &Server, replica: &Server) -> bool {
    caught_up(primary, replica) && digest(primary) == digest(replica)
}

/// Waits until `replica` holds what `primary` holds; fails naming its link.
fn assert_converges(primary: &Server, replica: &Server) {
    assert!(
        wait_until(CONVERGE_TIMEOUT, || converged(primary, replica)),
        "the replica did not converge: {:?}",
        status(replica.grpc).primary_link
    );
}

/// Writes keys from `key:{from}` on, 5,000 at a time, until the slot of
/// `node_id` on `primary` is lost (bounded by a minute and 2M keys);
/// returns the next key number.
fn fill_until_slot_lost(primary: &Server, from: usize, node_id: &str) -> usize {
    let mut next = from;
    assert!(
        wait_until(Duration::from_secs(60), || {
            assert!(next < 2_000_000, "the slot was not lost after 2M keys");
            fill(primary, next, 5_000, 64);
            next += 5_000;
            status(primary.grpc)
                .slots
                .iter()
                .any(|s| s.node_id == node_id && s.wal_status == "lost")
        }),
        "the slot was never lost"
    );
    next
}

/// Waits until retention has deleted the start of `primary`'s WAL.
fn wait_purged(primary: &Server) {
    assert!(
        wait_until(Duration::from_secs(20), || first_retained(primary) > 1),
        "the primary kept its whole WAL"
    );
}

#[test]
fn a_new_replica_of_a_primary_whose_early_wal_is_purged_bootstraps_then_streams() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Server::start(&dir.path().join("p"), &args(&[]));
    fill(&primary, 0, 200_000, 32);
    // The engine is flushed and the early segments go (no slot holds them).
    wait_purged(&primary);
    // Two new replicas at once: they share one checkpoint.
    let replica = Server::replica(&dir.path().join("r"), &primary.grpc_url(), SEGMENT);
    let second = Server::replica(&dir.path().join("r2"), &primary.grpc_url(), SEGMENT);
    for r in [&replica, &second] {
        assert_converges(&primary, r);
        let mut c = r.client();
        let keys: u64 = cmd(&["DBSIZE"]).query(&mut c).expect("DBSIZE");
        assert_eq!(keys, 200_000);
        let s = status(r.grpc);
        assert_eq!(link(&s).bootstraps, 1);
        assert_eq!(link(&s).snapshot_chunks_rejected, 0);
        assert_eq!(s.cluster_id, status(primary.grpc).cluster_id);
    }
    let r = status(replica.grpc);
    assert_eq!(sync_full(&primary), 2);
    assert_eq!(
        primary.stderr().matches("took a snapshot").count(),
        1,
        "one checkpoint for both"
    );
    drop(second);
    // The tail streams as usual afterwards.
    fill(&primary, 200_000, 5_000, 32);
    assert_converges(&primary, &replica);
    assert_eq!(sync_full(&primary), 2);
    assert_eq!(
        replica
            .info_field("replication", "master_sync_in_progress")
            .as_deref(),
        Some("0")
    );
    let p = status(primary.grpc);
    let slot = p
        .slots
        .iter()
        .find(|s| s.node_id == r.node_id)
        .expect("the replica has a slot");
    assert!(slot.active);
    assert_eq!(slot.wal_status, "reserved");
}

#[test]
fn a_cascaded_replica_of_a_bootstrapping_replica_converges() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Server::start(&dir.path().join("p"), &args(&[]));
    fill(&primary, 0, 100_000, 32);
    wait_purged(&primary);
    // The middle replica starts empty and bootstraps; its own replica
    // starts at the same time, before the middle one holds anything.
    let middle = Server::replica(&dir.path().join("m"), &primary.grpc_url(), SEGMENT);
    let leaf = Server::replica(&dir.path().join("l"), &middle.grpc_url(), SEGMENT);
    for r in [&middle, &leaf] {
        assert_converges(&primary, r);
    }
    // The middle replica's log starts at its snapshot: the leaf
    // bootstrapped from it.
    assert!(sync_full(&middle) >= 1);
    assert_eq!(link(&status(leaf.grpc)).bootstraps, 1);
    // Then the tail flows through both.
    fill(&primary, 100_000, 5_000, 32);
    for r in [&middle, &leaf] {
        assert_converges(&primary, r);
    }
}

#[test]
fn a_streaming_cascaded_replica_bootstraps_again_when_its_upstream_does() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let cap = 2u64 << 20;
    let primary = Server::start(
        &dir.path().join("p"),
        &args(&["--wal-retention-max-bytes", &cap.to_string()]),
    );
    // The middle replica reaches the primary through a proxy; the leaf
    // follows the middle one directly.
    let proxy = Proxy::start(primary.grpc);
    let middle = Server::replica(&dir.path().join("m"), &proxy.url(), SEGMENT);
    // The leaf starts once the middle one has joined the cluster and
    // streams from it from its first record.
    assert!(wait_until(Duration::from_secs(10), || !status(middle.grpc)
        .cluster_id
        .is_empty()));
    let leaf = Server::replica(&dir.path().join("l"), &middle.grpc_url(), SEGMENT);
    assert!(wait_until(Duration::from_secs(10), || link(&status(
        leaf.grpc
    ))
    .link_up));
    fill(&primary, 0, 20_000, 32);
    for r in [&middle, &leaf] {
        assert_converges(&primary, r);
    }
    assert_eq!(link(&status(leaf.grpc)).bootstraps, 0);
    let middle_id = status(middle.grpc).node_id;

    // The middle replica is cut off until its slot is lost; the leaf stays
    // connected to it all along.
    proxy.isolate();
    let next = fill_until_slot_lost(&primary, 20_000, &middle_id);
    assert!(link(&status(leaf.grpc)).link_up);
    // Back: the middle replica bootstraps, its log starts again past where
    // the leaf stands, and the leaf bootstraps from it in turn.
    proxy.heal();
    for r in [&middle, &leaf] {
        assert_converges(&primary, r);
    }
    assert_eq!(link(&status(middle.grpc)).bootstraps, 1);
    assert_eq!(link(&status(leaf.grpc)).bootstraps, 1);
    assert!(first_retained(&middle) > 20_000);
    // Then the tail flows through both, with no further bootstrap.
    fill(&primary, next, 5_000, 32);
    for r in [&middle, &leaf] {
        assert_converges(&primary, r);
    }
    assert_eq!(link(&status(middle.grpc)).bootstraps, 1);
    assert_eq!(link(&status(leaf.grpc)).bootstraps, 1);
    for r in [&middle, &leaf] {
        assert!(!r.stderr().contains("panicked"), "{}", r.stderr());
    }
}

/// A primary whose snapshots go out slowly, and its replica restarted
/// (with `extra`) after falling past the retention cap: it bootstraps for
/// some seconds.
fn a_replica_fallen_past_the_cap(dir: &std::path::Path, extra: &[&str]) -> (Server, Server) {
    let cap = 2u64 << 20;
    let primary = Server::start(
        &dir.join("p"),
        &args(&[
            "--wal-retention-max-bytes",
            &cap.to_string(),
            "--snapshot-rate-limit",
            "400000",
        ]),
    );
    let replica_dir = dir.join("r");
    let mut replica = Server::replica(&replica_dir, &primary.grpc_url(), SEGMENT);
    fill(&primary, 0, 20_000, 32);
    assert_converges(&primary, &replica);
    let node_id = status(replica.grpc).node_id;
    replica.terminate();
    fill_until_slot_lost(&primary, 20_000, &node_id);
    let replica = Server::start(&replica_dir, &args(extra));
    (primary, replica)
}

/// A replica that fell past the retention cap bootstraps from a snapshot
/// that takes longer than its `--failover-after`: its primary is there,
/// sending the snapshot, so it does not promote itself (a second primary
/// serving old data); nor does a promotion asked meanwhile without force.
#[test]
fn a_replica_bootstrapping_longer_than_its_failover_delay_does_not_fail_over() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let (primary, replica) = a_replica_fallen_past_the_cap(dir.path(), &["--failover-after", "1"]);
    let (mut seen, mut c) = (Duration::ZERO, replica.client());
    let started = Instant::now();
    let mut refused = false;
    assert!(wait_until(CONVERGE_TIMEOUT, || {
        let s = status(replica.grpc);
        assert_eq!(s.role, "replica", "it failed over during the bootstrap");
        if link(&s).sync.is_some() {
            seen = started.elapsed();
            if !refused {
                let e = error(&mut c, &["REPLICAOF", "NO", "ONE"]);
                assert!(e.contains("snapshot"), "{e}");
                refused = true;
            }
        }
        converged(&primary, &replica)
    }));
    assert!(
        seen > Duration::from_secs(2),
        "the bootstrap was seen only for {seen:?}, under the failover delay"
    );
    assert_eq!(link(&status(replica.grpc)).bootstraps, 1);
}

/// A replica promoted (with force) in the middle of a bootstrap keeps its
/// own data and drops the snapshot it was fetching: nothing staged is left
/// on disk, or installed over its new term at the next start.
#[test]
fn a_replica_promoted_mid_bootstrap_drops_the_staged_snapshot() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let (primary, mut replica) = a_replica_fallen_past_the_cap(dir.path(), &[]);
    assert!(
        wait_until(CONVERGE_TIMEOUT, || link(&status(replica.grpc))
            .sync
            .is_some_and(|s| s.done_bytes > 0)),
        "no bootstrap seen"
    );
    run_ok(ferry().args(["promote", "--force", "--addr", &replica.grpc_url()]));
    drop(primary);
    let staged = dir.path().join("r").join("bootstrap");
    for name in ["ready", "manifest", "checkpoint"] {
        assert!(!staged.join(name).exists(), "{name} left in {staged:?}");
    }
    let mut c = replica.client();
    raw(&mut c, &["SET", "new", "term"]);
    let keys: u64 = cmd(&["DBSIZE"]).query(&mut c).expect("DBSIZE");
    assert_eq!(keys, 20_001, "its own data and the new write");
    replica.terminate();
    let replica = Server::start(&dir.path().join("r"), SEGMENT);
    let mut c = replica.client();
    let keys: u64 = cmd(&["DBSIZE"]).query(&mut c).expect("DBSIZE");
    assert_eq!(keys, 20_001);
    assert_eq!(status(replica.grpc).role, "primary");
}

#[test]
fn an_outage_past_the_retention_cap_bootstraps_once_and_one_within_it_does_not() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let cap = 2u64 << 20;
    // Paced snapshots: the replica is seen serving its old data meanwhile.
    let primary = Server::start(
        &dir.path().join("p"),
        &args(&[
            "--wal-retention-max-bytes",
            &cap.to_string(),
            "--snapshot-rate-limit",
            "2000000",
        ]),
    );
    let replica_dir = dir.path().join("r");
    let mut replica = Server::replica(&replica_dir, &primary.grpc_url(), SEGMENT);
    fill(&primary, 0, 20_000, 32);
    assert_converges(&primary, &replica);
    let node_id = status(replica.grpc).node_id;

    // Within the cap: the slot keeps the WAL, and the replica resumes.
    replica.terminate();
    fill(&primary, 20_000, 5_000, 32);
    let p = status(primary.grpc);
    let slot = p.slots.iter().find(|s| s.node_id == node_id).expect("slot");
    assert!(!slot.active);
    assert_ne!(slot.wal_status, "lost");
    assert!(slot.retained_bytes < cap && slot.safe_bytes == cap - slot.retained_bytes);
    let mut replica = Server::start(&replica_dir, SEGMENT);
    assert_converges(&primary, &replica);
    assert_eq!(
        sync_full(&primary),
        0,
        "an outage within the cap needs no snapshot"
    );
    assert_eq!(link(&status(replica.grpc)).bootstraps, 0);

    // Past the cap: the slot is lost, the replica bootstraps exactly once.
    replica.terminate();
    let next = fill_until_slot_lost(&primary, 25_000, &node_id);
    let held: u64 = {
        let p = status(primary.grpc);
        let w = p.wal.expect("wal");
        assert!(w.first_retained_lsn > 25_000);
        p.slots
            .iter()
            .find(|s| s.node_id == node_id)
            .expect("slot")
            .safe_bytes
    };
    assert_eq!(held, 0);
    let replica = Server::start(&replica_dir, SEGMENT);
    // No wipe before the load: while the snapshot arrives, reads answer
    // from the old data.
    let mut c = replica.client();
    let mut old_reads = 0;
    assert!(wait_until(CONVERGE_TIMEOUT, || {
        if replica
            .info_field("replication", "master_sync_in_progress")
            .as_deref()
            == Some("1")
        {
            let value: Option<String> = cmd(&["GET", "key:0"]).query(&mut c).expect("GET");
            assert!(
                value.is_some(),
                "the replica dropped its data before the load"
            );
            old_reads += 1;
        }
        converged(&primary, &replica)
    }));
    assert!(old_reads > 0, "the bootstrap was never seen in progress");
    assert_eq!(sync_full(&primary), 1);
    assert_eq!(link(&status(replica.grpc)).bootstraps, 1);
    fill(&primary, next, 5_000, 32);
    assert_converges(&primary, &replica);
    assert_eq!(sync_full(&primary), 1, "streaming after the bootstrap");
    let slot = status(primary.grpc)
        .slots
        .into_iter()
        .find(|s| s.node_id == node_id)
        .expect("slot");
    assert_ne!(slot.wal_status, "lost");
    drop(replica);

    // An operator drops the slot of a replica that is gone for good.
    run_ok(ferry().args(["drop-slot", "--addr", &primary.grpc_url(), &node_id]));
    let again = ferry()
        .args(["drop-slot", "--addr", &primary.grpc_url(), &node_id])
        .output()
        .expect("ferry drop-slot");
    assert!(!again.status.success(), "a second drop finds no slot");
    assert!(
        status(primary.grpc)
            .slots
            .iter()
            .all(|s| s.node_id != node_id)
    );
}

#[test]
fn a_bootstrap_cut_midway_resumes_where_it_stopped() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    // Paced, so the cut falls in the middle of the transfer.
    let primary = Server::start(
        &dir.path().join("p"),
        &args(&["--snapshot-rate-limit", "4000000"]),
    );
    fill(&primary, 0, 120_000, 100);
    wait_purged(&primary);
    let proxy = Proxy::start(primary.grpc);
    let replica = Server::replica(&dir.path().join("r"), &proxy.url(), SEGMENT);
    let mut total = 0;
    assert!(
        wait_until(Duration::from_secs(30), || {
            let l = link(&status(replica.grpc));
            l.sync.is_some_and(|s| {
                total = s.total_bytes;
                s.done_bytes > s.total_bytes / 3
            })
        }),
        "the transfer never got a third of the way"
    );
    assert!(
        total > 4 << 20,
        "a snapshot of {total} bytes is too small for this test"
    );
    proxy.cut();
    assert_converges(&primary, &replica);
    let l = link(&status(replica.grpc));
    assert_eq!(l.bootstraps, 1);
    assert!(
        l.snapshot_bytes_received < total + total / 10,
        "{} bytes received for a snapshot of {total}: the transfer started over",
        l.snapshot_bytes_received
    );
    assert!(
        proxy.connections() >= 2,
        "the cut did not break the transfer"
    );
    assert_eq!(sync_full(&primary), 2, "one transfer, resumed once");
}

#[test]
fn a_corrupted_snapshot_chunk_is_rejected_and_fetched_again() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Server::try_start_env(
        &dir.path().join("p"),
        &args(&[]),
        &[("FERRY_FAULT_SNAPSHOT_CORRUPT_CHUNK", "2")],
    )
    .expect("start");
    fill(&primary, 0, 60_000, 100);
    wait_purged(&primary);
    let replica = Server::replica(&dir.path().join("r"), &primary.grpc_url(), SEGMENT);
    assert_converges(&primary, &replica);
    let l = link(&status(replica.grpc));
    assert_eq!(l.snapshot_chunks_rejected, 1);
    assert_eq!(l.bootstraps, 1);
    assert_eq!(sync_full(&primary), 2, "fetched again after the bad chunk");
    assert!(
        replica.stderr().contains("fails its crc"),
        "the replica did not say why"
    );
}

#[test]
fn a_bootstrap_under_continuous_writes_converges_without_a_loop() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Server::start(&dir.path().join("p"), &args(&[]));
    fill(&primary, 0, 100_000, 64);
    wait_purged(&primary);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, acked) = (stop.clone(), acked.clone());
        let mut c = primary.client();
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut i = 0u64;
            // Bounded by the flag, a count and a time.
            while !stop.load(Ordering::Relaxed)
                && i < 2_000_000
                && started.elapsed() < Duration::from_secs(60)
            {
                let mut pipe = redis::pipe();
                for j in 0..50 {
                    pipe.cmd("SET")
                        .arg(format!("live:{}", (i + j) % 50_000))
                        .arg(i + j)
                        .ignore();
                }
                pipe.cmd("INCR").arg("writes").ignore();
                pipe.query::<()>(&mut c).expect("writes");
                acked.fetch_add(1, Ordering::Relaxed);
                i += 50;
            }
        })
    };
    let replica = Server::replica(&dir.path().join("r"), &primary.grpc_url(), SEGMENT);
    assert!(
        wait_until(CONVERGE_TIMEOUT, || {
            let l = link(&status(replica.grpc));
            l.bootstraps == 1 && l.state == "streaming"
        }),
        "the replica did not bootstrap: {:?}",
        status(replica.grpc).primary_link
    );
    // Writes went on through the bootstrap, and still do.
    let before = acked.load(Ordering::Relaxed);
    assert!(wait_until(Duration::from_secs(10), || acked
        .load(Ordering::Relaxed)
        > before + 10));
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    assert_converges(&primary, &replica);
    let mut c = replica.client();
    let writes: u64 = cmd(&["GET", "writes"]).query(&mut c).expect("GET");
    assert_eq!(writes, acked.load(Ordering::Relaxed));
    assert_eq!(link(&status(replica.grpc)).bootstraps, 1);
    assert_eq!(sync_full(&primary), 1, "one snapshot, no full-sync loop");
}

#[test]
fn a_crash_at_any_step_of_an_install_is_completed_on_restart() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = Server::start(&dir.path().join("p"), &args(&[]));
    fill(&primary, 0, 30_000, 32);
    wait_purged(&primary);
    for (n, point) in [
        "bootstrap::ready",
        "engine::swap::old_moved",
        "bootstrap::installed",
        "bootstrap::wal_restarted",
        "bootstrap::anchored",
        "bootstrap::clearing",
    ]
    .into_iter()
    .enumerate()
    {
        let replica_dir = dir.path().join(format!("r{n}"));
        let mut replica = Server::try_start_env(
            &replica_dir,
            &args(&["--replica-of", &primary.grpc_url()]),
            &[("FERRY_CRASH_AT", point)],
        )
        .expect("start");
        let exited = replica.wait_exit(Duration::from_secs(60));
        assert!(
            exited.is_some_and(|s| !s.success()),
            "{point}: the replica did not crash there"
        );
        let replica = Server::start(&replica_dir, SEGMENT);
        assert!(
            wait_until(CONVERGE_TIMEOUT, || converged(&primary, &replica)),
            "{point}: {:?}",
            status(replica.grpc).primary_link
        );
        let mut c = replica.client();
        let keys: u64 = cmd(&["DBSIZE"]).query(&mut c).expect("DBSIZE");
        assert_eq!(keys, 30_000, "{point}");
        for staged in ["ready", "manifest", "checkpoint"] {
            assert!(
                !replica_dir.join("bootstrap").join(staged).exists(),
                "{point}: the staging was not cleared ({staged})"
            );
        }
    }
}
