//! Appending, reading, shipping and purging a log.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use ferry_wal::testing::MemStorage;
use ferry_wal::{Epoch, Lsn, LsnRange, SyncPolicy, WalError, WalOptions};

#[test]
fn appends_get_contiguous_lsns_and_read_back_from_any_lsn_across_segments() {
    let storage = MemStorage::new();
    let wal = open(&storage, options(SyncPolicy::Always));
    assert_eq!(
        (wal.first_lsn(), wal.last_lsn(), wal.durable_lsn()),
        (Lsn(1), Lsn(0), Lsn(0))
    );
    let mut written = Vec::new();
    for i in 0..300 {
        let batch: Vec<Bytes> = (0..1 + i % 3).map(|j| record("a", i * 10 + j)).collect();
        let range = wal.append_blocking(batch.clone()).expect("append");
        assert_eq!(range.first, Lsn(written.len() as u64 + 1));
        assert_eq!(range.last.0, range.first.0 + batch.len() as u64 - 1);
        written.extend(batch);
    }
    assert!(segments(&storage).len() > 3, "the log rolled");
    assert_eq!(wal.last_lsn(), Lsn(written.len() as u64));
    assert_eq!(wal.durable_lsn(), wal.last_lsn());
    for from in [1, 2, 100, 333, written.len() as u64] {
        let got = read_from(&wal, from);
        let want: Vec<(u64, Bytes)> = (from..=written.len() as u64)
            .map(|lsn| (lsn, written[lsn as usize - 1].clone()))
            .collect();
        assert_eq!(got, want, "from {from}");
    }
    assert!(read_from(&wal, written.len() as u64 + 1).is_empty());
    assert!(matches!(
        wal.records(Lsn(written.len() as u64 + 2)),
        Err(WalError::BeyondEnd { .. })
    ));
    let stats = wal.stats();
    assert_eq!(stats.records, written.len() as u64);
    assert_eq!(stats.frames, 300, "sequential appends: one frame each");
    assert!(stats.syncs >= 300, "always syncs every group");

    // Reopened: the same records, and appends continue after them.
    drop(wal);
    let wal = open(&storage, options(SyncPolicy::Always));
    assert_eq!(read_all(&wal).len(), written.len());
    let range = wal.append_blocking(vec![record("b", 0)]).expect("append");
    assert_eq!(range.first, Lsn(written.len() as u64 + 1));
    assert!(broken_copies(&storage).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_appenders_get_contiguous_lsns_and_lose_nothing() {
    let storage = MemStorage::new();
    let wal = Arc::new(open(&storage, options(SyncPolicy::Always)));
    let mut tasks = Vec::new();
    for t in 0..16 {
        let wal = wal.clone();
        tasks.push(tokio::spawn(async move {
            let mut ranges = Vec::new();
            for i in 0..300 {
                let batch: Vec<Bytes> = (0..1 + i % 2)
                    .map(|j| Bytes::from(format!("t{t}-{i}-{j}")))
                    .collect();
                let range = wal.append(batch.clone()).await.expect("append");
                ranges.push((range, batch));
            }
            ranges
        }));
    }
    let mut by_lsn = BTreeMap::new();
    for task in tasks {
        for (range, batch) in task.await.expect("appender") {
            assert_eq!(range.last.0 - range.first.0 + 1, batch.len() as u64);
            for (i, data) in batch.into_iter().enumerate() {
                assert!(
                    by_lsn.insert(range.first.0 + i as u64, data).is_none(),
                    "an lsn given twice"
                );
            }
        }
    }
    let total = by_lsn.len() as u64;
    assert_eq!(total, 16 * 450);
    assert_eq!(
        by_lsn.keys().copied().collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>()
    );
    let stats = wal.stats();
    assert!(
        stats.frames < 16 * 300,
        "concurrent appends share frames ({} frames)",
        stats.frames
    );
    let read: BTreeMap<u64, Bytes> = read_all(&wal).into_iter().collect();
    assert_eq!(read, by_lsn);
}

#[test]
fn a_failed_sync_is_reported_and_nothing_later_is_accepted() {
    let storage = MemStorage::new();
    let wal = open(&storage, options(SyncPolicy::Always));
    wal.append_blocking(vec![record("ok", 1)]).expect("append");
    storage.set_fail_sync(true);
    let err = wal
        .append_blocking(vec![record("lost", 2)])
        .expect_err("the sync fails");
    assert!(matches!(err, WalError::Io { op: "syncing", .. }), "{err}");
    storage.set_fail_sync(false);
    let err = wal
        .append_blocking(vec![record("later", 3)])
        .expect_err("the log refuses");
    assert!(matches!(err, WalError::Failed { .. }), "{err}");
    assert!(matches!(wal.sync_blocking(), Err(WalError::Failed { .. })));
    assert_eq!(
        wal.durable_lsn(),
        Lsn(1),
        "the failed record never became durable"
    );
    drop(wal);

    // Reopened, the log works again.
    let wal = open(&storage, options(SyncPolicy::Always));
    let range = wal
        .append_blocking(vec![record("again", 4)])
        .expect("append after reopen");
    let records = read_all(&wal);
    assert_eq!(records.last().map(|r| r.0), Some(range.first.0));
    assert_eq!(records[0].1, record("ok", 1));
}

#[test]
fn a_failed_or_torn_write_is_reported_and_recovered_on_reopen() {
    for tear in [false, true] {
        let storage = MemStorage::new();
        let wal = open(&storage, options(SyncPolicy::Always));
        wal.append_blocking(vec![record("ok", 1), record("ok", 2)])
            .expect("append");
        if tear {
            storage.tear_next_write();
        } else {
            storage.set_fail_write(true);
        }
        let err = wal
            .append_blocking(vec![Bytes::from(vec![7u8; 3000])])
            .expect_err("the write fails");
        assert!(matches!(err, WalError::Io { op: "writing", .. }), "{err}");
        storage.set_fail_write(false);
        assert!(matches!(
            wal.append_blocking(vec![record("later", 3)]),
            Err(WalError::Failed { .. })
        ));
        drop(wal);
        let wal = open(&storage, options(SyncPolicy::Always));
        assert_eq!(
            read_all(&wal),
            vec![(1, record("ok", 1)), (2, record("ok", 2))],
            "tear {tear}"
        );
        assert_eq!(
            broken_copies(&storage).len(),
            usize::from(tear),
            "a torn frame is cut off"
        );
        assert_eq!(
            wal.append_blocking(vec![record("new", 4)])
                .expect("append")
                .first,
            Lsn(3)
        );
    }
}

#[test]
fn empty_and_oversize_appends_are_refused() {
    let storage = MemStorage::new();
    let options = WalOptions {
        limits: ferry_wal::FrameLimits {
            body_bytes_max: 1000,
        },
        group_bytes_max: 1000,
        ..options(SyncPolicy::No)
    };
    let wal = open(&storage, options);
    assert!(matches!(
        wal.append_blocking(vec![]),
        Err(WalError::EmptyBatch)
    ));
    assert!(matches!(
        wal.append_blocking(vec![Bytes::from(vec![0u8; 999])]),
        Err(WalError::BatchTooLarge {
            bytes: 1001,
            max: 1000
        })
    ));
    wal.append_blocking(vec![Bytes::from(vec![0u8; 998])])
        .expect("fits exactly");
    assert_eq!(wal.last_lsn(), Lsn(1));
}

/// Frames from `source` from `from` on, concatenated as a shipper sends them.
fn frames_from(source: &ferry_wal::Wal, from: u64) -> Bytes {
    let mut reader = source.frames(Lsn(from)).expect("a frame reader");
    let mut out = Vec::new();
    while let Some(frame) = reader.next_frame().expect("a frame") {
        out.extend_from_slice(&frame.bytes);
    }
    Bytes::from(out)
}

#[test]
fn append_frames_stores_the_same_bytes_and_refuses_anything_else() {
    let source_storage = MemStorage::new();
    let source = open(&source_storage, options(SyncPolicy::Always));
    for i in 0..100 {
        source
            .append_blocking(vec![record("s", i), record("s2", i)])
            .expect("append");
    }
    let target_storage = MemStorage::new();
    let target = open(&target_storage, options(SyncPolicy::Always));

    let all = frames_from(&source, 1);
    let half = frame_bounds_of(&all)[25];
    let first_part = all.slice(..half);
    let range = target
        .append_frames_blocking(first_part.clone())
        .expect("append frames");
    assert_eq!(
        range,
        LsnRange {
            first: Lsn(1),
            last: Lsn(50)
        }
    );

    // A gap, a repeat, a cut frame and a flipped bit: refused, nothing written.
    let rest = all.slice(half..);
    let skip = frame_bounds_of(&rest)[1];
    let err = target
        .append_frames_blocking(rest.slice(skip..))
        .expect_err("a gap");
    assert!(
        matches!(
            err,
            WalError::LsnGap {
                expected: Lsn(51),
                found: Lsn(53)
            }
        ),
        "{err}"
    );
    let err = target
        .append_frames_blocking(first_part)
        .expect_err("a repeat");
    assert!(matches!(err, WalError::LsnGap { .. }), "{err}");
    let err = target
        .append_frames_blocking(rest.slice(..rest.len() - 1))
        .expect_err("a cut frame");
    assert!(matches!(err, WalError::InvalidFrames { .. }), "{err}");
    let mut flipped = rest.to_vec();
    flipped[rest.len() - 3] ^= 4;
    let err = target
        .append_frames_blocking(Bytes::from(flipped))
        .expect_err("a flipped bit");
    assert!(matches!(err, WalError::InvalidFrames { .. }), "{err}");
    assert_eq!(
        target.last_lsn(),
        Lsn(50),
        "nothing of the refused input was written"
    );

    target.append_frames_blocking(rest).expect("the rest");
    assert_eq!(read_all(&target), read_all(&source));
    assert_eq!(frames_from(&target, 1), all, "the same bytes");
    // The target serves the same frames from any LSN (a cascading replica).
    assert_eq!(frames_from(&target, 77), frames_from(&source, 77));
    // And keeps them across a reopen.
    drop(target);
    let target = open(&target_storage, options(SyncPolicy::Always));
    assert_eq!(frames_from(&target, 1), all);
}

fn frame_bounds_of(frames: &Bytes) -> Vec<usize> {
    let mut padded = vec![0u8; 24];
    padded.extend_from_slice(frames);
    frame_bounds(&padded).iter().map(|f| f.0 - 24).collect()
}

#[test]
fn purge_deletes_whole_segments_below_the_lsn_only() {
    let storage = MemStorage::new();
    let wal = open(&storage, options(SyncPolicy::Always));
    for i in 0..500 {
        wal.append_blocking(vec![record("p", i)]).expect("append");
    }
    let before = segments(&storage);
    assert!(before.len() > 4);
    let firsts: Vec<u64> = before
        .iter()
        .map(|p| p.file_stem().unwrap().to_str().unwrap().parse().unwrap())
        .collect();
    // Just below the third segment's start: only the first segment goes.
    assert_eq!(wal.purge_before(Lsn(firsts[2] - 1)).expect("purge"), 1);
    assert_eq!(wal.first_lsn(), Lsn(firsts[1]));
    assert_eq!(segments(&storage), before[1..]);
    assert!(matches!(
        wal.records(Lsn(firsts[1] - 1)),
        Err(WalError::NotRetained { first_retained, .. }) if first_retained == Lsn(firsts[1])
    ));
    assert_eq!(read_all(&wal).len() as u64, 500 - firsts[1] + 1);

    // Everything: the active segment stays.
    wal.purge_before(Lsn(10_000)).expect("purge");
    assert_eq!(segments(&storage), before[before.len() - 1..]);
    assert_eq!(wal.first_lsn(), Lsn(*firsts.last().unwrap()));
    drop(wal);
    let wal = open(&storage, options(SyncPolicy::No));
    assert_eq!(wal.first_lsn(), Lsn(*firsts.last().unwrap()));
    assert_eq!(
        wal.append_blocking(vec![record("q", 0)])
            .expect("append")
            .first,
        Lsn(501)
    );
}

#[test]
fn a_reader_keeps_reading_a_segment_purged_under_it() {
    let storage = MemStorage::new();
    let wal = open(&storage, options(SyncPolicy::No));
    for i in 0..200 {
        wal.append_blocking(vec![record("p", i)]).expect("append");
    }
    let mut reader = wal.records(Lsn(1)).expect("reader");
    assert_eq!(reader.next().expect("one").expect("record").lsn, Lsn(1));
    wal.purge_before(Lsn(150)).expect("purge");
    // The open segment still reads; the next one is gone.
    let mut last = Lsn(1);
    let err = loop {
        match reader.next() {
            Some(Ok(r)) => last = r.lsn,
            Some(Err(e)) => break e,
            None => panic!("the purged segments cannot all be read"),
        }
    };
    assert!(matches!(err, WalError::NotRetained { .. }), "{err}");
    assert!(last.0 > 1);
}

#[tokio::test]
async fn a_tailing_reader_wakes_when_frames_become_durable() {
    let storage = MemStorage::new();
    let wal = Arc::new(open(&storage, options(SyncPolicy::Always)));
    wal.append(vec![record("t", 0)]).await.expect("append");
    let mut reader = wal.frames(Lsn(1)).expect("reader");
    assert!(reader.next_frame().expect("read").is_some());
    assert!(reader.next_frame().expect("read").is_none(), "caught up");
    let waiter = tokio::spawn(async move {
        reader.wait().await.expect("wait");
        reader.next_frame().expect("read").expect("a frame")
    });
    let range = wal
        .append(vec![record("t", 1), record("t", 2)])
        .await
        .expect("append");
    let frame = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the reader woke")
        .expect("task");
    assert_eq!(frame.header.first_lsn, range.first);
    assert_eq!(
        frame.records().expect("records"),
        vec![record("t", 1), record("t", 2)]
    );
    assert_eq!(
        wal.wait_durable(range.last).await.expect("durable"),
        range.last
    );
}

#[tokio::test]
async fn waiters_are_told_when_the_log_fails() {
    let storage = MemStorage::new();
    let wal = Arc::new(open(&storage, options(SyncPolicy::EverySec)));
    let mut reader = wal.frames(Lsn(1)).expect("reader");
    let waiter = tokio::spawn(async move { reader.wait().await });
    storage.set_fail_sync(true);
    wal.append(vec![record("w", 0)])
        .await
        .expect("everysec acknowledges before the sync");
    let err = wal.sync().await.expect_err("the sync fails");
    assert!(matches!(err, WalError::Io { .. }), "{err}");
    let result = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter woke")
        .expect("task");
    assert!(matches!(result, Err(WalError::Failed { .. })), "{result:?}");
}

#[tokio::test]
async fn everysec_makes_appends_durable_in_the_background() {
    let storage = MemStorage::new();
    let options = WalOptions {
        sync_interval: Duration::from_millis(20),
        ..options(SyncPolicy::EverySec)
    };
    let wal = open(&storage, options);
    let syncs_before = storage.sync_count();
    let range = wal.append(vec![record("e", 0)]).await.expect("append");
    let durable = tokio::time::timeout(Duration::from_secs(10), wal.wait_durable(range.last))
        .await
        .expect("the background sync came")
        .expect("durable");
    assert!(durable >= range.last);
    assert!(storage.sync_count() > syncs_before);
}

#[tokio::test]
async fn an_eager_sync_guard_makes_everysec_sync_without_waiting_for_the_interval() {
    let storage = MemStorage::new();
    let options = WalOptions {
        // Far longer than the test: only an eager sync can make it durable.
        sync_interval: Duration::from_secs(3600),
        ..options(SyncPolicy::EverySec)
    };
    let wal = open(&storage, options);
    let first = wal.append(vec![record("g", 0)]).await.expect("append");
    assert!(
        wal.durable_lsn() < first.last,
        "nothing syncs within the interval"
    );
    let guard = wal.eager_sync();
    let durable = tokio::time::timeout(Duration::from_secs(10), wal.wait_durable(first.last))
        .await
        .expect("taking the guard syncs what was written")
        .expect("durable");
    assert_eq!(durable, first.last);
    let second = wal.append(vec![record("g", 1)]).await.expect("append");
    tokio::time::timeout(Duration::from_secs(10), wal.wait_durable(second.last))
        .await
        .expect("a write under the guard is synced at once")
        .expect("durable");
    drop(guard);
    let third = wal.append(vec![record("g", 2)]).await.expect("append");
    // The eager round for the second append is over (it was awaited): the
    // interval rules again.
    assert!(wal.durable_lsn() < third.last);
}

/// A cut of the log while the background sync is under way: that sync's
/// LSN is not published once it ends, since the records it covered are
/// gone and others take their LSNs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_that_ends_after_a_cut_does_not_publish_the_cut_lsns() {
    let storage = MemStorage::new();
    let options = WalOptions {
        sync_interval: Duration::from_secs(3600),
        ..options(SyncPolicy::EverySec)
    };
    let wal = open(&storage, options);
    let mut last = Lsn(0);
    for i in 0..10 {
        last = wal.append(vec![record("c", i)]).await.expect("append").last;
    }
    assert_eq!((last, wal.durable_lsn()), (Lsn(10), Lsn(0)));
    // The guard has the syncer sync what is written at once.
    storage.hold_next_sync();
    let _eager = wal.eager_sync();
    let held = storage.clone();
    let is_held =
        tokio::task::spawn_blocking(move || held.wait_for_held_sync(Duration::from_secs(10)));
    assert!(is_held.await.expect("waited"), "the syncer took its sync");
    // The syncer holds a sync of LSNs 1..=10; the writer cuts after 5 and
    // writes three others.
    assert_eq!(wal.truncate_after(Lsn(5)).await.expect("cut"), Lsn(5));
    for i in 0..3 {
        wal.append(vec![record("d", i)]).await.expect("append");
    }
    assert_eq!(wal.last_lsn(), Lsn(8));
    storage.release_sync();
    let durable = tokio::time::timeout(Duration::from_secs(10), wal.wait_durable(Lsn(8)))
        .await
        .expect("the new records are synced")
        .expect("durable");
    assert_eq!(durable, Lsn(8), "durable past the end of the log");
    assert_eq!(wal.durable_lsn(), Lsn(8));
}

/// The sync policy changes at run time, from the next append on; what an
/// earlier append under everysec left unsynced is synced with the first
/// append under always.
#[tokio::test]
async fn the_sync_policy_changes_from_the_next_append_on() {
    let storage = MemStorage::new();
    let everysec = WalOptions {
        sync_interval: Duration::from_secs(3600),
        ..options(SyncPolicy::EverySec)
    };
    let wal = open(&storage, everysec);
    let first = wal.append(vec![record("p", 0)]).await.expect("append");
    assert!(wal.durable_lsn() < first.last, "everysec: not synced yet");
    wal.set_sync_policy(SyncPolicy::Always);
    assert_eq!(wal.sync_policy(), SyncPolicy::Always);
    let syncs = storage.sync_count();
    let second = wal.append(vec![record("p", 1)]).await.expect("append");
    assert_eq!(
        wal.durable_lsn(),
        second.last,
        "always: synced, the first too"
    );
    assert_eq!(storage.sync_count(), syncs + 1);
    wal.set_sync_policy(SyncPolicy::No);
    let third = wal.append(vec![record("p", 2)]).await.expect("append");
    assert_eq!(
        wal.durable_lsn(),
        second.last,
        "no: not synced, not durable"
    );
    assert_eq!(storage.sync_count(), syncs + 1, "no: no sync");
    // Synced when asked (a replica streams: an eager sync).
    let eager = wal.eager_sync();
    wal.wait_durable(third.last).await.expect("synced");
    drop(eager);
    assert_eq!(storage.sync_count(), syncs + 2);
    // A power loss keeps what was synced: the first two at least.
    let survived = storage.crash(7);
    drop(wal);
    assert!(open(&survived, options(SyncPolicy::No)).last_lsn() >= second.last);
}

/// Records written under `everysec` are still synced when the policy
/// turns to `no` (which syncs only when asked) before the interval ends.
#[tokio::test]
async fn records_written_under_everysec_are_synced_when_the_policy_turns_to_no() {
    let storage = MemStorage::new();
    let everysec = WalOptions {
        sync_interval: Duration::from_secs(3600),
        ..options(SyncPolicy::EverySec)
    };
    let wal = open(&storage, everysec);
    let written = wal.append(vec![record("p", 0)]).await.expect("append");
    assert!(wal.durable_lsn() < written.last, "everysec: not synced yet");
    wal.set_sync_policy(SyncPolicy::No);
    tokio::time::timeout(Duration::from_secs(10), wal.wait_durable(written.last))
        .await
        .expect("synced after the change")
        .expect("durable");
}

#[tokio::test]
async fn epochs_are_stored_per_frame_and_never_go_back() {
    let storage = MemStorage::new();
    let wal = open(&storage, options(SyncPolicy::Always));
    wal.append(vec![record("e", 1)]).await.expect("append");
    wal.set_epoch(Epoch(7)).await.expect("raise the epoch");
    wal.append(vec![record("e", 2)]).await.expect("append");
    assert_eq!(wal.epoch(), Epoch(7));
    let err = wal.set_epoch(Epoch(6)).await.expect_err("lower");
    assert!(matches!(
        err,
        WalError::EpochRegression {
            current: Epoch(7),
            found: Epoch(6)
        }
    ));
    let epochs: Vec<(Lsn, Epoch)> = wal
        .records(Lsn(1))
        .expect("reader")
        .map(|r| r.map(|r| (r.lsn, r.epoch)).expect("record"))
        .collect();
    assert_eq!(epochs, vec![(Lsn(1), Epoch(0)), (Lsn(2), Epoch(7))]);
    drop(wal);
    let wal = open(&storage, options(SyncPolicy::Always));
    assert_eq!(wal.epoch(), Epoch(7), "recovered from the last frame");
}

#[test]
fn a_new_log_can_start_at_any_lsn() {
    let storage = MemStorage::new();
    let options = WalOptions {
        first_lsn: Lsn(1000),
        ..options(SyncPolicy::No)
    };
    let wal = open(&storage, options);
    assert_eq!(wal.first_lsn(), Lsn(1000));
    assert_eq!(wal.last_lsn(), Lsn(999));
    assert_eq!(
        wal.append_blocking(vec![record("s", 0)])
            .expect("append")
            .first,
        Lsn(1000)
    );
    assert!(matches!(
        wal.records(Lsn(5)),
        Err(WalError::NotRetained { .. })
    ));
}

#[test]
fn the_real_file_system_round_trips() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wal");
    let wal = ferry_wal::Wal::open(&path, options(SyncPolicy::Always)).expect("open");
    for i in 0..100 {
        wal.append_blocking(vec![record("fs", i)]).expect("append");
    }
    drop(wal);
    let wal = ferry_wal::Wal::open(&path, options(SyncPolicy::Always)).expect("reopen");
    let got: Vec<Bytes> = read_all(&wal).into_iter().map(|r| r.1).collect();
    assert_eq!(got, (0..100).map(|i| record("fs", i)).collect::<Vec<_>>());
    let names: Vec<String> = std::fs::read_dir(&path)
        .expect("list")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    assert!(
        names.iter().all(|n| n.len() == 24 && n.ends_with(".wal")),
        "{names:?}"
    );
}

#[tokio::test]
async fn truncating_after_an_lsn_cuts_the_log_there_across_segments_and_appends_continue() {
    let storage = MemStorage::new();
    let wal = open(&storage, options(SyncPolicy::Always));
    let mut written = Vec::new();
    for i in 0..300 {
        let r = record("t", i);
        wal.append(vec![r.clone()]).await.expect("append");
        written.push(r);
    }
    let before = segments(&storage).len();
    assert!(before > 3, "the log rolled");
    // Cut in an early segment: the later ones go.
    assert_eq!(wal.truncate_after(Lsn(57)).await.expect("cut"), Lsn(57));
    assert_eq!((wal.last_lsn(), wal.durable_lsn()), (Lsn(57), Lsn(57)));
    assert!(segments(&storage).len() < before);
    let expected: Vec<(u64, Bytes)> = (1..=57u64).zip(written[..57].iter().cloned()).collect();
    assert_eq!(read_all(&wal), expected);
    let next = wal.append(vec![record("after", 0)]).await.expect("append");
    assert_eq!(next.first, Lsn(58));
    // A cut inside a frame is refused, and changes nothing.
    let frame = wal
        .append(vec![record("m", 0), record("m", 1), record("m", 2)])
        .await
        .expect("append");
    assert_eq!((frame.first, frame.last), (Lsn(59), Lsn(61)));
    let err = wal
        .truncate_after(Lsn(60))
        .await
        .expect_err("inside a frame");
    assert!(matches!(err, WalError::InvalidFrames { .. }), "{err}");
    drop(wal);
    // What recovery finds is exactly the cut log and what came after.
    let wal = open(&storage, options(SyncPolicy::Always));
    assert_eq!(wal.last_lsn(), Lsn(61));
    let got = read_all(&wal);
    assert_eq!(got[..57], expected[..]);
    assert_eq!(got[57], (58, record("after", 0)));
}

#[tokio::test]
async fn restart_at_empties_the_log_and_continues_at_the_given_lsn_and_epoch() {
    let storage = MemStorage::new();
    let wal = open(&storage, options(SyncPolicy::No));
    for i in 0..300 {
        wal.append(vec![record("old", i)]).await.expect("append");
    }
    assert!(segments(&storage).len() > 1);
    assert_eq!(
        wal.restart_at(Lsn(1_000), ferry_wal::Epoch(3))
            .await
            .expect("restart"),
        Lsn(999)
    );
    assert_eq!(segments(&storage).len(), 1);
    assert_eq!((wal.first_lsn(), wal.last_lsn()), (Lsn(1_000), Lsn(999)));
    assert_eq!(wal.durable_lsn(), Lsn(999));
    assert_eq!(wal.epoch(), ferry_wal::Epoch(3));
    let range = wal.append(vec![record("new", 0)]).await.expect("append");
    assert_eq!((range.first, range.last), (Lsn(1_000), Lsn(1_000)));
    wal.sync().await.expect("sync");
    drop(wal);
    let wal = open(&storage, options(SyncPolicy::No));
    assert_eq!((wal.first_lsn(), wal.last_lsn()), (Lsn(1_000), Lsn(1_000)));
    assert_eq!(wal.epoch(), ferry_wal::Epoch(3));
    let all = read_all(&wal);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0], (1_000, record("new", 0)));
}

#[test]
fn a_frame_of_many_alike_records_compresses_below_one_byte_each_and_reads_back() {
    let storage = MemStorage::new();
    let wal = open(&storage, options(SyncPolicy::Always));
    let records: Vec<Bytes> = (0..2_000).map(|_| Bytes::from_static(b"v")).collect();
    let range = wal.append_blocking(records).expect("append");
    assert_eq!((range.first, range.last), (Lsn(1), Lsn(2_000)));
    let frame = wal
        .frames(Lsn(1))
        .and_then(|mut r| r.next_frame())
        .expect("read")
        .expect("a frame");
    assert!(
        (frame.header.frame_len() as u64) < 2_000,
        "the frame takes {} bytes: the premise fails",
        frame.header.frame_len()
    );
    assert_eq!(read_all(&wal).len(), 2_000);
    drop(wal);
    // And recovery takes it as a whole, valid frame.
    let wal = open(&storage, options(SyncPolicy::No));
    assert_eq!(wal.last_lsn(), Lsn(2_000));
    assert_eq!(read_all(&wal).len(), 2_000);
}

/// The after-commit hook of each group finds the outcome of every append
/// in it: `enqueue_with` files the pending append before the writer can
/// commit it, so no outcome waits for a later commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_after_commit_hook_finds_every_append_it_committed() {
    for policy in [SyncPolicy::Always, SyncPolicy::EverySec] {
        let storage = MemStorage::new();
        let wal = Arc::new(open(&storage, options(policy)));
        let filed = Arc::new(std::sync::Mutex::new(Vec::<ferry_wal::PendingAppend>::new()));
        let found = Arc::new(std::sync::Mutex::new(Vec::new()));
        // How many outcomes the hook has found, for the test to await.
        let (count_tx, mut count) = tokio::sync::watch::channel(0usize);
        let (hook_filed, hook_found) = (filed.clone(), found.clone());
        wal.set_after_commit(Some(Arc::new(move || {
            let mut filed = hook_filed.lock().unwrap();
            let mut still = Vec::new();
            for mut pending in filed.drain(..) {
                match pending.try_durable() {
                    Some(outcome) => hook_found.lock().unwrap().push(outcome.expect("durable")),
                    None => still.push(pending),
                }
            }
            *filed = still;
            count_tx.send_replace(hook_found.lock().unwrap().len());
        })));
        for i in 0..500 {
            let filed = filed.clone();
            wal.enqueue_with(vec![record("h", i)], move |p| filed.lock().unwrap().push(p))
                .await
                .expect("enqueue");
            if i % 7 == 0 {
                tokio::task::yield_now().await;
            }
        }
        // No commit follows the last append's: its own found it.
        let all =
            tokio::time::timeout(Duration::from_secs(10), count.wait_for(|&n| n >= 500)).await;
        assert!(
            all.is_ok(),
            "{policy:?}: {} of 500 outcomes found, {} left unseen",
            found.lock().unwrap().len(),
            filed.lock().unwrap().len()
        );
        let mut lsns: Vec<u64> = found
            .lock()
            .unwrap()
            .iter()
            .map(|r: &LsnRange| r.first.0)
            .collect();
        lsns.sort();
        assert_eq!(lsns, (1..=500).collect::<Vec<_>>(), "{policy:?}");
    }
}

/// The latency hook hears of each group's write and of each sync, by the
/// writer under `always` and by the syncer under `everysec`.
#[tokio::test]
async fn the_latency_hook_hears_of_writes_and_syncs() {
    for policy in [SyncPolicy::Always, SyncPolicy::EverySec] {
        let storage = MemStorage::new();
        let options = WalOptions {
            sync_interval: Duration::from_millis(20),
            ..options(policy)
        };
        let wal = open(&storage, options);
        let heard = Arc::new(std::sync::Mutex::new(Vec::new()));
        let hook = heard.clone();
        wal.set_latency_hook(Arc::new(move |event, _took| {
            hook.lock().unwrap().push(event);
        }));
        let range = wal.append(vec![record("l", 0)]).await.expect("append");
        tokio::time::timeout(Duration::from_secs(10), wal.wait_durable(range.last))
            .await
            .expect("durable in time")
            .expect("durable");
        let heard = heard.lock().unwrap().clone();
        assert!(
            heard.contains(&"wal-write") && heard.contains(&"wal-fsync"),
            "{policy:?}: {heard:?}"
        );
        assert!(
            heard
                .iter()
                .all(|e| matches!(*e, "wal-write" | "wal-fsync")),
            "{heard:?}"
        );
    }
}

/// A group commit that fails after a segment roll synced the first part of
/// the group: those appends are durable (they come back when the log is
/// opened again, and may have been shipped), so they succeed; the appends
/// after the roll fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_that_fails_after_a_roll_succeeds_for_what_the_roll_synced() {
    let storage = MemStorage::new();
    let options = WalOptions {
        segment_bytes_max: 1024,
        group_bytes_max: 100,
        preallocate_bytes: 0,
        ..options(SyncPolicy::No)
    };
    let wal = Arc::new(open(&storage, options.clone()));
    let first = wal.append(vec![record("a", 0)]).await.expect("append");
    // The writer waits in a sync while two appends queue behind it: one
    // group, of one frame each (past `group_bytes_max`); the first fills
    // the segment, so the second's frame starts a new one.
    storage.hold_next_sync();
    let sync = tokio::spawn({
        let wal = wal.clone();
        async move { wal.sync().await }
    });
    let held = storage.clone();
    let is_held =
        tokio::task::spawn_blocking(move || held.wait_for_held_sync(Duration::from_secs(10)));
    assert!(is_held.await.expect("waited"), "the writer took the sync");
    // Incompressible: its frame is as large.
    let mut rng = ferry_wal::testing::SeededRng::new(5);
    let big: Bytes = (0..2000).map(|_| rng.next_u64() as u8).collect();
    let filled = wal.enqueue(vec![big.clone()]).await.expect("queued");
    let rolled = wal.enqueue(vec![record("c", 2)]).await.expect("queued");
    // The new segment cannot be made.
    storage.set_fail_create(true);
    storage.release_sync();
    sync.await.expect("joined").expect("the first sync");
    let filled = filled.durable().await.expect("synced by the roll");
    assert_eq!(filled.first, first.last.next());
    assert!(wal.durable_lsn() >= filled.last);
    let err = rolled.durable().await.expect_err("no segment for it");
    assert!(matches!(err, WalError::Io { op: "creating", .. }), "{err}");
    drop(wal);
    storage.set_fail_create(false);
    let wal = open(&storage.crash(11), options);
    let records = read_all(&wal);
    assert_eq!(
        records,
        vec![(first.last.0, record("a", 0)), (filled.last.0, big)]
    );
}

/// A segment that says it starts at LSN 0 (LSNs start at 1) is refused as
/// corruption, by the log and by a scan, rather than taken in.
#[test]
fn a_segment_starting_at_lsn_0_is_corruption() {
    use ferry_wal::storage::Storage;
    let storage = MemStorage::new();
    drop(open(&storage, options(SyncPolicy::Always)));
    for file in storage.files(dir()) {
        storage.remove(&file).expect("remove");
    }
    let file = storage
        .create(&dir().join("00000000000000000000.wal"))
        .expect("create");
    file.write_at(&ferry_wal::format::encode_segment_header(Lsn(0)), 0)
        .expect("write");
    file.sync_data().expect("sync");
    storage.sync_dir(dir()).expect("sync the directory");
    let err = try_open(&storage, options(SyncPolicy::Always)).expect_err("refused");
    assert!(matches!(err, WalError::Corruption { .. }), "{err}");
    let scan = ferry_wal::inspect::scan_dir(&storage, dir(), Default::default(), |_| {
        Ok(std::ops::ControlFlow::Continue(()))
    })
    .expect("scan");
    assert!(!scan.is_intact(), "{scan:?}");
}

/// A frame whose epoch is below the one before it: the log refuses to
/// open, and a scan (`ferry wal verify`) reports it rather than calling the
/// log intact.
#[tokio::test]
async fn a_frame_epoch_below_the_one_before_it_is_corruption_to_the_log_and_a_scan() {
    let (x, y) = (MemStorage::new(), MemStorage::new());
    let wx = open(&x, options(SyncPolicy::Always));
    wx.set_epoch(Epoch(3)).await.expect("epoch");
    wx.append(vec![record("x", 1)]).await.expect("append");
    let wy = open(&y, options(SyncPolicy::Always));
    wy.append(vec![record("y", 1)]).await.expect("append");
    wy.append(vec![record("y", 2)]).await.expect("append");
    let (fx, fy) = (frames_from(&wx, 1), frames_from(&wy, 2));
    drop((wx, wy));
    // LSN 1 of epoch 3, then LSN 2 of epoch 0.
    let mut bytes = ferry_wal::format::encode_segment_header(Lsn(1)).to_vec();
    bytes.extend_from_slice(&fx);
    bytes.extend_from_slice(&fy);
    y.set_file_bytes(&dir().join("00000000000000000001.wal"), bytes);
    let err = try_open(&y, options(SyncPolicy::Always)).expect_err("refused");
    assert!(matches!(err, WalError::Corruption { .. }), "{err}");
    let scan = ferry_wal::inspect::scan_dir(&y, dir(), Default::default(), |_| {
        Ok(std::ops::ControlFlow::Continue(()))
    })
    .expect("scan");
    assert_eq!(scan.problems.len(), 1, "{scan:?}");
    let problem = &scan.problems[0];
    assert!(
        !problem.torn_tail && problem.lsn == Lsn(2) && problem.reason.contains("epoch"),
        "{problem:?}"
    );
}
