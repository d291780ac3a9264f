//! Recovery of a damaged log: torn tails are cut, corruption is refused,
//! and crashes lose nothing that was acknowledged.
//!
//! Method: logs live in [`MemStorage`], whose bytes the tests edit directly
//! (cut, zero, flip) or whose `crash` drops what was not synced, tearing
//! the unsynced tail at a seeded-random point.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use ferry_wal::format::{Decoded, SEGMENT_HEADER_LEN, decode_frame};
use ferry_wal::testing::{MemStorage, SECTOR_BYTES, SeededRng};
use ferry_wal::{Lsn, SyncPolicy, WalError, WalOptions};
use proptest::prelude::*;

/// A log of one append per frame, some frames over a sector long, over a
/// few segments.
fn build_log(appends: usize) -> (MemStorage, Vec<Bytes>) {
    let storage = MemStorage::new();
    let wal = open(&storage, options(SyncPolicy::Always));
    let mut written = Vec::new();
    for i in 0..appends {
        let data = if i % 3 == 0 {
            // Incompressible and longer than a sector.
            let mut rng = SeededRng::new(i as u64);
            Bytes::from((0..700).map(|_| rng.next_u64() as u8).collect::<Vec<_>>())
        } else {
            record("r", i)
        };
        wal.append_blocking(vec![data.clone()]).expect("append");
        written.push(data);
    }
    (storage, written)
}

fn expect_records(storage: &MemStorage, expected: &[Bytes]) -> ferry_wal::Wal {
    let wal = open(storage, options(SyncPolicy::Always));
    let got = read_all(&wal);
    let want: Vec<(u64, Bytes)> = expected
        .iter()
        .enumerate()
        .map(|(i, d)| (i as u64 + 1, d.clone()))
        .collect();
    assert_eq!(got.len(), want.len(), "record count");
    assert_eq!(got, want);
    wal
}

fn corruption_of(result: ferry_wal::Result<ferry_wal::Wal>) -> (std::path::PathBuf, u64, String) {
    match result {
        Err(WalError::Corruption {
            segment,
            offset,
            reason,
        }) => (segment, offset, reason),
        Err(other) => panic!("expected corruption, got {other}"),
        Ok(_) => panic!("a corrupt log opened"),
    }
}

#[test]
fn truncation_at_every_offset_of_the_last_four_frames_keeps_exactly_the_whole_frames() {
    let (storage, written) = build_log(40);
    let last = segments(&storage).pop().expect("a segment");
    let bytes = storage.file_bytes(&last).expect("segment bytes");
    let frames = frame_bounds(&bytes);
    assert!(frames.len() >= 5, "the last segment holds enough frames");
    let tail = &frames[frames.len() - 4..];
    let first_lsn_of_segment = frames[0].2;
    for cut in tail[0].0..bytes.len() {
        let damaged = storage.snapshot();
        damaged.set_file_bytes(&last, bytes[..cut].to_vec());
        let whole: u64 = frames
            .iter()
            .filter(|f| f.0 + f.1 <= cut)
            .map(|f| u64::from(f.3))
            .sum();
        let kept = (first_lsn_of_segment - 1 + whole) as usize;
        let wal = expect_records(&damaged, &written[..kept]);
        let at_boundary = frames.iter().any(|f| f.0 == cut);
        // A frame cut while its bytes so far are zeros (a crc's low byte)
        // reads as zero-filled space: nothing to keep.
        let zeros = frames
            .iter()
            .any(|f| f.0 < cut && cut < f.0 + f.1 && bytes[f.0..cut].iter().all(|&b| b == 0));
        assert_eq!(
            broken_copies(&damaged).len(),
            usize::from(!at_boundary && !zeros),
            "cut at {cut}"
        );
        let mut more = written[..kept].to_vec();
        for i in 0..10 {
            let data = record("after", i);
            let range = wal
                .append_blocking(vec![data.clone()])
                .expect("append after recovery");
            assert_eq!(range.first, Lsn(kept as u64 + 1 + i as u64));
            more.push(data);
        }
        drop(wal);
        drop(expect_records(&damaged, &more));
    }
}

#[test]
fn a_zero_filled_sector_in_the_last_frame_is_a_torn_tail() {
    let (storage, written) = build_log(31);
    let last = segments(&storage).pop().expect("a segment");
    let mut bytes = storage.file_bytes(&last).expect("segment bytes");
    let frames = frame_bounds(&bytes);
    let (at, len, _, count) = *frames.last().expect("a frame");
    assert!(len > SECTOR_BYTES, "the last frame spans a whole sector");
    // The first sector boundary inside the frame's body.
    let sector = (at + 48).div_ceil(SECTOR_BYTES) * SECTOR_BYTES;
    let sector = if sector + SECTOR_BYTES <= at + len {
        sector
    } else {
        at + len - SECTOR_BYTES
    };
    bytes[sector..sector + SECTOR_BYTES].fill(0);
    storage.set_file_bytes(&last, bytes);
    let wal = expect_records(&storage, &written[..written.len() - count as usize]);
    assert_eq!(broken_copies(&storage).len(), 1);
    drop(wal);
}

#[test]
fn single_bit_flips_in_a_sealed_segment_are_always_detected() {
    let seed = seed("single_bit_flips_in_a_sealed_segment_are_always_detected");
    let (storage, _) = build_log(40);
    let sealed = segments(&storage)[0].clone();
    assert!(segments(&storage).len() >= 3);
    let bytes = storage.file_bytes(&sealed).expect("segment bytes");
    let mut rng = SeededRng::new(seed);
    let options = WalOptions {
        sync_policy: SyncPolicy::No,
        ..options(SyncPolicy::No)
    };
    for _ in 0..10_000 {
        let bit = rng.below(bytes.len() as u64 * 8) as usize;
        let mut flipped = bytes.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        let damaged = storage.snapshot();
        damaged.set_file_bytes(&sealed, flipped);
        let (segment, _, _) = corruption_of(try_open(&damaged, options.clone()));
        assert_eq!(segment, sealed, "bit {bit}");
    }
}

#[test]
fn a_reader_never_returns_a_flipped_record() {
    let seed = seed("a_reader_never_returns_a_flipped_record");
    let (storage, written) = build_log(40);
    let sealed = segments(&storage)[0].clone();
    let bytes = storage.file_bytes(&sealed).expect("segment bytes");
    let wal = open(&storage, options(SyncPolicy::Always));
    let mut rng = SeededRng::new(seed);
    for _ in 0..1_000 {
        // Flip a frame byte under the open log, where readers look.
        let bit = (rng.below(((bytes.len() - 24) * 8) as u64) as usize) + 24 * 8;
        let mut flipped = bytes.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        storage.set_file_bytes(&sealed, flipped);
        let mut failed = false;
        for record in wal.records(Lsn(1)).expect("a reader") {
            match record {
                Ok(r) => assert_eq!(r.data, written[r.lsn.0 as usize - 1], "bit {bit}"),
                Err(e) => {
                    assert!(matches!(e, WalError::Corruption { .. }), "bit {bit}: {e}");
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed, "the flip of bit {bit} went unnoticed");
    }
    storage.set_file_bytes(&sealed, bytes);
}

#[test]
fn a_bad_frame_followed_by_valid_frames_refuses_to_open_naming_file_and_offset() {
    let (storage, _) = build_log(40);
    let last = segments(&storage).pop().expect("a segment");
    let mut bytes = storage.file_bytes(&last).expect("segment bytes");
    let frames = frame_bounds(&bytes);
    let (at, len, _, _) = frames[frames.len() / 2];
    bytes[at + len / 2] ^= 0x10;
    storage.set_file_bytes(&last, bytes);
    let result = try_open(&storage, options(SyncPolicy::Always));
    let message = result
        .as_ref()
        .err()
        .map(ToString::to_string)
        .unwrap_or_default();
    let (segment, offset, reason) = corruption_of(result);
    assert_eq!(segment, last);
    assert_eq!(offset, at as u64);
    assert!(reason.contains("followed by a valid frame"), "{reason}");
    assert!(message.contains(&last.display().to_string()), "{message}");
    assert!(message.contains(&format!("at byte {at}")), "{message}");
    assert!(message.contains("ferry wal verify"), "{message}");
    assert!(broken_copies(&storage).is_empty(), "nothing was cut");
}

#[test]
fn a_missing_middle_segment_refuses_to_open() {
    let (storage, _) = build_log(40);
    let all = segments(&storage);
    assert!(all.len() >= 3);
    let damaged = storage.snapshot();
    use ferry_wal::storage::Storage;
    damaged.remove(&all[1]).expect("remove a segment");
    let (segment, offset, reason) = corruption_of(try_open(&damaged, options(SyncPolicy::Always)));
    assert_eq!(segment, all[2]);
    assert_eq!(offset, 0);
    assert!(reason.contains("previous segment ends"), "{reason}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn every_prefix_of_a_valid_log_recovers_to_a_prefix_of_its_records(
        batches in prop::collection::vec(prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..5), 1..12),
        cut_permille in 0u64..=1000,
    ) {
        let storage = MemStorage::new();
        let options = WalOptions { segment_bytes_max: 1 << 20, ..options(SyncPolicy::No) };
        let wal = open(&storage, options.clone());
        let mut all = Vec::new();
        for batch in &batches {
            let batch: Vec<Bytes> = batch.iter().map(|r| Bytes::from(r.clone())).collect();
            wal.append_blocking(batch.clone()).expect("append");
            all.extend(batch);
        }
        drop(wal);
        let segment = segments(&storage).pop().expect("a segment");
        let bytes = storage.file_bytes(&segment).expect("bytes");
        let cut = 24 + ((bytes.len() - 24) as u64 * cut_permille / 1000) as usize;
        storage.set_file_bytes(&segment, bytes[..cut].to_vec());
        let wal = open(&storage, options);
        let got: Vec<Bytes> = read_all(&wal).into_iter().map(|(_, d)| d).collect();
        prop_assert!(got.len() <= all.len());
        prop_assert_eq!(&got[..], &all[..got.len()]);
        // Exactly the whole frames before the cut survive.
        let whole: u32 = frame_bounds(&bytes).iter().filter(|f| f.0 + f.1 <= cut).map(|f| f.3).sum();
        prop_assert_eq!(got.len(), whole as usize);
    }
}

/// What the appenders of a crash test saw acknowledged.
#[derive(Default)]
struct Acked {
    by_lsn: Mutex<HashMap<u64, Bytes>>,
}

/// Appenders on threads, then a crash once `crash_after` records were
/// acknowledged; returns what they saw acknowledged, the durable LSN seen just
/// before the crash, and the storage after it.
fn run_until_crash(
    policy: SyncPolicy,
    seed: u64,
    crash_after: u64,
) -> (HashMap<u64, Bytes>, u64, MemStorage) {
    let storage = MemStorage::new();
    let options = WalOptions {
        sync_interval: std::time::Duration::from_millis(2),
        ..options(policy)
    };
    let wal = Arc::new(open(&storage, options));
    let acked = Arc::new(Acked::default());
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let mut threads = Vec::new();
    for t in 0..8 {
        let (wal, acked, count, stop, tx) = (
            wal.clone(),
            acked.clone(),
            count.clone(),
            stop.clone(),
            tx.clone(),
        );
        threads.push(std::thread::spawn(move || {
            // Bounded: at most 100k appends per thread.
            for i in 0..100_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let data = Bytes::from(format!("t{t}-{i}"));
                match wal.append_blocking(vec![data.clone()]) {
                    Ok(range) => {
                        acked.by_lsn.lock().unwrap().insert(range.first.0, data);
                        if count.fetch_add(1, Ordering::SeqCst) + 1 == crash_after {
                            let _ = tx.send(());
                        }
                    }
                    Err(_) => break,
                }
            }
        }));
    }
    drop(tx);
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .expect("the appenders reach the crash point");
    let durable = wal.durable_lsn().0;
    let crashed = storage.crash(seed);
    stop.store(true, Ordering::SeqCst);
    for thread in threads {
        thread.join().expect("appender");
    }
    let acked = std::mem::take(&mut *acked.by_lsn.lock().unwrap());
    (acked, durable, crashed)
}

/// Recovered records are LSNs 1..=n with no hole (the reader checks
/// continuity), each holding a payload that was sent, none twice.
fn check_recovered(crashed: &MemStorage, acked: &HashMap<u64, Bytes>, policy: SyncPolicy) -> u64 {
    let wal = open(crashed, options(policy));
    let records = read_all(&wal);
    let mut seen = std::collections::HashSet::new();
    for (i, (lsn, data)) in records.iter().enumerate() {
        assert_eq!(*lsn, i as u64 + 1, "no holes");
        assert!(seen.insert(data.clone()), "payload {data:?} appears twice");
        if let Some(expected) = acked.get(lsn) {
            assert_eq!(
                data, expected,
                "lsn {lsn} holds what was acknowledged for it"
            );
        }
    }
    records.len() as u64
}

#[test]
fn a_crash_under_always_loses_no_acknowledged_record() {
    let seed = seed("a_crash_under_always_loses_no_acknowledged_record");
    let mut rng = SeededRng::new(seed);
    for round in 0..20 {
        let round_seed = rng.next_u64();
        let (acked, _, crashed) =
            run_until_crash(SyncPolicy::Always, round_seed, 200 + rng.below(800));
        let recovered = check_recovered(&crashed, &acked, SyncPolicy::Always);
        let highest_acked = acked.keys().max().copied().unwrap_or(0);
        assert!(
            recovered >= highest_acked,
            "round {round} (seed {round_seed}): recovered {recovered} records, but lsn {highest_acked} was acknowledged"
        );
    }
}

#[test]
fn a_crash_under_everysec_loses_only_a_suffix_after_the_durable_lsn() {
    let seed = seed("a_crash_under_everysec_loses_only_a_suffix_after_the_durable_lsn");
    let mut rng = SeededRng::new(seed);
    let mut lost_any = false;
    for round in 0..20 {
        let round_seed = rng.next_u64();
        let (acked, durable, crashed) =
            run_until_crash(SyncPolicy::EverySec, round_seed, 500 + rng.below(2000));
        let recovered = check_recovered(&crashed, &acked, SyncPolicy::EverySec);
        assert!(
            recovered >= durable,
            "round {round} (seed {round_seed}): recovered {recovered}, durable was {durable}"
        );
        lost_any |= acked.keys().any(|&lsn| lsn > recovered);
    }
    // Not asserted (it depends on timing), but says whether the model bit.
    eprintln!("acknowledged records lost to a crash under everysec in some round: {lost_any}");
}

#[test]
fn verify_reports_a_torn_tail_without_changing_anything() {
    let (storage, written) = build_log(20);
    let summary = ferry_wal::verify(&storage, dir(), Default::default()).expect("verify");
    assert_eq!(summary.torn_tail, None);
    assert_eq!(
        (summary.first_lsn, summary.last_lsn),
        (Lsn(1), Lsn(written.len() as u64))
    );
    assert_eq!(summary.segments, segments(&storage).len());

    let last = segments(&storage).pop().expect("a segment");
    let bytes = storage.file_bytes(&last).expect("bytes");
    let (at, len, _, _) = *frame_bounds(&bytes).last().expect("a frame");
    storage.set_file_bytes(&last, bytes[..at + len - 1].to_vec());
    let summary = ferry_wal::verify(&storage, dir(), Default::default()).expect("verify");
    let torn = summary.torn_tail.expect("a torn tail");
    assert_eq!(
        (torn.segment, torn.offset, torn.bytes),
        (last.clone(), at as u64, len as u64 - 1)
    );
    assert_eq!(
        storage.file_bytes(&last).expect("bytes").len(),
        at + len - 1,
        "nothing cut"
    );
    assert!(broken_copies(&storage).is_empty());
}

/// Options whose active segment is zero-filled well past its frames.
fn preallocating(policy: SyncPolicy) -> WalOptions {
    WalOptions {
        sync_policy: policy,
        segment_bytes_max: 64 << 10,
        preallocate_bytes: 16 << 10,
        ..WalOptions::default()
    }
}

/// Appends `count` records tagged `tag` to `wal`, one per frame; the
/// records, in order, added to `written`.
fn append_records(wal: &ferry_wal::Wal, tag: &str, count: usize, written: &mut Vec<Bytes>) {
    for i in 0..count {
        let data = record(tag, i);
        wal.append_blocking(vec![data.clone()]).expect("append");
        written.push(data);
    }
}

/// The end of the frames of a segment's bytes.
fn frames_end(segment: &[u8]) -> usize {
    let frames = frame_bounds(segment);
    frames.last().map_or(SEGMENT_HEADER_LEN, |f| f.0 + f.1)
}

#[test]
fn the_active_segment_is_zero_filled_ahead_and_a_closed_log_holds_no_zeros() {
    let storage = MemStorage::new();
    let wal = open(&storage, preallocating(SyncPolicy::Always));
    let mut written = Vec::new();
    append_records(&wal, "p", 2_000, &mut written);
    let files = segments(&storage);
    assert!(files.len() >= 2, "the appends crossed a segment");
    for sealed in &files[..files.len() - 1] {
        let bytes = storage.file_bytes(sealed).expect("bytes");
        assert_eq!(
            frames_end(&bytes),
            bytes.len(),
            "{sealed:?} holds its frames only"
        );
    }
    let active = files.last().expect("a segment");
    let bytes = storage.file_bytes(active).expect("bytes");
    let frames = frame_bounds_until_zeros(&bytes);
    assert!(
        bytes.len() > frames && bytes[frames..].iter().all(|&b| b == 0),
        "zero-filled past the frames (frames end at {frames} of {})",
        bytes.len()
    );
    assert!(bytes.len() - frames <= 16 << 10);
    drop(wal);
    let bytes = storage.file_bytes(active).expect("bytes");
    assert_eq!(frames_end(&bytes), bytes.len(), "closing cut the zeros off");
    drop(expect_records_with(
        &storage,
        &written,
        preallocating(SyncPolicy::Always),
    ));
}

/// The end of the frames before zero-filled space.
fn frame_bounds_until_zeros(segment: &[u8]) -> usize {
    let mut at = SEGMENT_HEADER_LEN;
    while let Decoded::Frame(f) = decode_frame(&segment[at..], Default::default()) {
        at += f.header.frame_len();
    }
    at
}

fn expect_records_with(
    storage: &MemStorage,
    expected: &[Bytes],
    options: WalOptions,
) -> ferry_wal::Wal {
    let wal = open(storage, options);
    let got: Vec<Bytes> = read_all(&wal).into_iter().map(|(_, d)| d).collect();
    assert_eq!(got.len(), expected.len(), "record count");
    assert!(got == expected, "the records read back are those written");
    wal
}

#[test]
fn a_crash_with_zero_filled_space_recovers_every_record_and_keeps_no_copy() {
    let storage = MemStorage::new();
    let wal = open(&storage, preallocating(SyncPolicy::Always));
    let mut written = Vec::new();
    append_records(&wal, "z", 300, &mut written);
    // Everything was synced under always: the crash keeps it all, zeros too.
    let crashed = storage.crash(1);
    drop(wal);
    let active = segments(&crashed).pop().expect("a segment");
    let bytes = crashed.file_bytes(&active).expect("bytes");
    assert!(
        bytes.len() > frame_bounds_until_zeros(&bytes),
        "the zeros survived"
    );
    let summary = ferry_wal::verify(&crashed, dir(), Default::default()).expect("verify");
    assert_eq!(
        summary.torn_tail, None,
        "zero-filled space is not a torn tail"
    );
    let inspection = ferry_wal::inspect::scan_dir(&crashed, dir(), Default::default(), |_| {
        Ok(std::ops::ControlFlow::Continue(()))
    })
    .expect("scan");
    assert!(inspection.is_intact(), "{:?}", inspection.problems);
    let last = inspection.segments.last().expect("a segment");
    assert_eq!(
        last.zero_filled_bytes as usize,
        bytes.len() - frame_bounds_until_zeros(&bytes),
        "the zeros are counted apart"
    );

    let wal = expect_records_with(&crashed, &written, preallocating(SyncPolicy::Always));
    assert!(broken_copies(&crashed).is_empty(), "zeros are not kept");
    let bytes = crashed.file_bytes(&active).expect("bytes");
    assert_eq!(
        frames_end(&bytes),
        bytes.len(),
        "the log ends at its last frame"
    );
    // Appends go on in the zero-filled space, and survive the next crash.
    append_records(&wal, "after", 300, &mut written);
    let again = crashed.crash(2);
    drop(wal);
    drop(expect_records_with(
        &again,
        &written,
        preallocating(SyncPolicy::Always),
    ));
    assert!(broken_copies(&again).is_empty());
}

#[test]
fn zeros_followed_by_a_frame_are_corruption_not_the_end() {
    let storage = MemStorage::new();
    let wal = open(&storage, preallocating(SyncPolicy::Always));
    append_records(&wal, "c", 20, &mut Vec::new());
    drop(wal);
    let active = segments(&storage).pop().expect("a segment");
    let mut bytes = storage.file_bytes(&active).expect("bytes");
    let frames = frame_bounds(&bytes);
    let (at, len, _, _) = frames[frames.len() / 2];
    bytes[at..at + len].fill(0);
    storage.set_file_bytes(&active, bytes);
    let (segment, offset, reason) =
        corruption_of(try_open(&storage, preallocating(SyncPolicy::Always)));
    assert_eq!((segment, offset), (active, at as u64));
    assert!(reason.contains("followed by a valid frame"), "{reason}");
}

#[test]
fn a_failed_zero_fill_is_only_warned_of_and_the_appends_go_on() {
    let storage = MemStorage::new();
    let wal = open(&storage, preallocating(SyncPolicy::Always));
    // The first append's first write is the zero fill ahead: it fails
    // half-way.
    storage.tear_next_write();
    let mut written = Vec::new();
    // Each append succeeds though the zero fill failed.
    append_records(&wal, "t", 300, &mut written);
    let active = segments(&storage).pop().expect("a segment");
    let bytes = storage.file_bytes(&active).expect("bytes");
    assert!(
        bytes.len() > 16 << 10,
        "the appends passed the first zero fill"
    );
    assert_eq!(
        frame_bounds_until_zeros(&bytes),
        bytes.len(),
        "no zero fill after the failed one in this segment"
    );
    drop(wal);
    drop(expect_records_with(
        &storage,
        &written,
        preallocating(SyncPolicy::Always),
    ));
}
