//! The engine: what each mutation does, idempotent replay, recovery after a
//! crash between RocksDB flushes, and the write pipeline's ordering.

use std::sync::Arc;

use bytes::Bytes;
use ferry_engine::{
    Engine, Entry, LONG_STRING_BYTES, Pipeline, Reader, STRING_CHUNK_BYTES, Value, scan_hash,
    string_bytes,
};
use ferry_proto::v1::{self as pb, Mutation, WalRecord, mutation::Op};
use ferry_wal::testing::SeededRng;
use ferry_wal::{Lsn, SyncPolicy, Wal, WalOptions};
use prost::Message;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn record(ops: Vec<Op>) -> WalRecord {
    WalRecord {
        mutations: ops
            .into_iter()
            .map(|op| Mutation { op: Some(op) })
            .collect(),
        events: Vec::new(),
    }
}

/// A random mutation over a small keyspace, so keys collide and change type.
fn random_op(rng: &mut SeededRng) -> Op {
    let key = b(&format!("k{}", rng.below(8)));
    let field = b(&format!("f{}", rng.below(4)));
    // Now and then a value or a write past the length at which strings are
    // stored in chunks, in place or across chunk boundaries.
    let long = rng.below(16) == 0;
    let value = if long {
        long_value(rng)
    } else {
        b(&format!("v{}", rng.below(1000)))
    };
    let expire_at_ms = if rng.below(4) == 0 {
        4_000_000_000_000 + rng.below(1000)
    } else {
        0
    };
    match rng.below(8) {
        0 | 1 => Op::SetString(pb::SetString {
            key,
            value,
            expire_at_ms,
        }),
        2 => Op::SetRange(pb::SetRange {
            key,
            offset: if long || rng.below(8) == 0 {
                rng.below(3 * LONG_STRING_BYTES as u64)
            } else {
                rng.below(6)
            },
            data: value,
        }),
        3 => Op::Delete(pb::Delete { key }),
        4 => Op::SetExpiry(pb::SetExpiry { key, expire_at_ms }),
        5 | 6 => Op::HashSet(pb::HashSet {
            key,
            fields: vec![pb::FieldValue { field, value }],
        }),
        _ if rng.below(20) == 0 => Op::FlushAll(pb::FlushAll {}),
        _ => Op::HashDelete(pb::HashDelete {
            key,
            fields: vec![field],
        }),
    }
}

/// A value about as long as a chunk of a long string, or a few chunks,
/// whose bytes tell where they are.
fn long_value(rng: &mut SeededRng) -> Bytes {
    let len = LONG_STRING_BYTES as u64 - 2 + rng.below(2 * LONG_STRING_BYTES as u64);
    let tag = rng.below(256) as u8;
    (0..len as usize)
        .map(|i| tag.wrapping_add((i % 251) as u8))
        .collect()
}

fn random_records(seed: u64, n: usize) -> Vec<(Lsn, WalRecord)> {
    let mut rng = SeededRng::new(seed);
    (1..=n as u64)
        .map(|lsn| {
            let ops = (0..1 + rng.below(3)).map(|_| random_op(&mut rng)).collect();
            (Lsn(lsn), record(ops))
        })
        .collect()
}

fn seed() -> u64 {
    ferry_wal::testing::test_seed("engine")
}

/// The keys with an expiry and their expiry times' sum, from the stored
/// entries (as a scan at time 0, before anything expires, lists them).
fn expiring_in_entries(engine: &Engine) -> ferry_engine::Expiring {
    let scanned = engine.scan(0, usize::MAX, 0).unwrap();
    assert!(scanned.resume.is_none());
    let with_expiry: Vec<u64> = scanned
        .entries
        .iter()
        .map(|(_, e)| e.expire_at_ms)
        .filter(|&at| at != 0)
        .collect();
    ferry_engine::Expiring {
        keys: with_expiry.len() as u64,
        sum_ms: with_expiry.iter().map(|&at| u128::from(at)).sum(),
    }
}

#[test]
fn mutations_do_what_wal_proto_says() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let ops = vec![
        Op::SetString(pb::SetString {
            key: b("s"),
            value: b("hello"),
            expire_at_ms: 0,
        }),
        Op::SetRange(pb::SetRange {
            key: b("s"),
            offset: 7,
            data: b("!"),
        }),
        Op::HashSet(pb::HashSet {
            key: b("h"),
            fields: vec![
                pb::FieldValue {
                    field: b("a"),
                    value: b("1"),
                },
                pb::FieldValue {
                    field: b("b"),
                    value: b("2"),
                },
                pb::FieldValue {
                    field: b("a"),
                    value: b("3"),
                },
            ],
        }),
        Op::SetExpiry(pb::SetExpiry {
            key: b("h"),
            expire_at_ms: 5_000_000_000_000,
        }),
        Op::HashDelete(pb::HashDelete {
            key: b("h"),
            fields: vec![b("b"), b("zz")],
        }),
        Op::SetExpiry(pb::SetExpiry {
            key: b("missing"),
            expire_at_ms: 7,
        }),
    ];
    engine.apply(&[(Lsn(1), record(ops))]).unwrap();
    assert_eq!(engine.applied_lsn(), Lsn(1));
    assert_eq!(
        engine.get(b"s", 0).unwrap(),
        Some(Entry {
            value: Value::String(Bytes::from_static(b"hello\0\0!")),
            expire_at_ms: 0
        })
    );
    assert_eq!(
        engine.get(b"h", 0).unwrap(),
        Some(Entry {
            value: Value::Hash { len: 1 },
            expire_at_ms: 5_000_000_000_000
        })
    );
    assert_eq!(
        engine.hash_fields(b"h", None, 10).unwrap(),
        vec![(b("a"), b("3"))]
    );
    assert_eq!(engine.get(b"missing", 0).unwrap(), None);
    assert_eq!(engine.key_count(), 2);
    let expiring = engine.expiring();
    assert_eq!(
        expiring,
        ferry_engine::Expiring {
            keys: 1,
            sum_ms: 5_000_000_000_000
        }
    );
    assert_eq!(expiring.avg_ttl_ms(4_999_999_999_000), 1000);
    assert_eq!(expiring.avg_ttl_ms(5_000_000_000_001), 0, "due");
    assert_eq!(
        engine.expired_keys(5_000_000_000_000, 10).unwrap(),
        vec![b("h")]
    );
    assert!(
        engine
            .expired_keys(4_999_999_999_999, 10)
            .unwrap()
            .is_empty()
    );
    // A string over the hash drops its fields; the last field's removal drops a hash.
    let ops = vec![
        Op::SetString(pb::SetString {
            key: b("h"),
            value: b("x"),
            expire_at_ms: 0,
        }),
        Op::HashSet(pb::HashSet {
            key: b("h2"),
            fields: vec![pb::FieldValue {
                field: b("f"),
                value: b("v"),
            }],
        }),
        Op::HashDelete(pb::HashDelete {
            key: b("h2"),
            fields: vec![b("f")],
        }),
    ];
    engine.apply(&[(Lsn(2), record(ops))]).unwrap();
    assert!(engine.hash_fields(b"h", None, 10).unwrap().is_empty());
    assert!(
        engine.expired_keys(u64::MAX, 10).unwrap().is_empty(),
        "the expiry index follows"
    );
    assert_eq!(engine.get(b"h2", 0).unwrap(), None);
    assert_eq!(engine.key_count(), 2);
    engine
        .apply(&[(Lsn(3), record(vec![Op::FlushAll(pb::FlushAll {})]))])
        .unwrap();
    assert_eq!(engine.key_count(), 0);
    assert_eq!(engine.expiring(), ferry_engine::Expiring::default());
    assert_eq!(engine.scan(0, 100, 0).unwrap().entries.len(), 0);
    assert_eq!(engine.digest(0).unwrap(), "0".repeat(40));
}

/// Records of `n` SETs of 2 KiB values that do not compress, from LSN
/// `first`, 100 to a record.
fn incompressible_sets(rng: &mut SeededRng, first: u64, n: usize) -> Vec<(Lsn, WalRecord)> {
    let ops: Vec<Op> = (0..n)
        .map(|i| {
            let value: Bytes = (0..256)
                .flat_map(|_| rng.next_u64().to_le_bytes())
                .collect();
            Op::SetString(pb::SetString {
                key: b(&format!("key:{first}:{i}")),
                value,
                expire_at_ms: 0,
            })
        })
        .collect();
    ops.chunks(100)
        .zip(first..)
        .map(|(ops, lsn)| (Lsn(lsn), record(ops.to_vec())))
        .collect()
}

/// The applier reads each key's old entry to replace it. For new keys
/// those reads find nothing, and a block read on the way (a filter's
/// false positive, about one probe in a hundred) stays out of RocksDB's
/// block cache: a load of new keys leaves it holding the files' indexes
/// and filters, not data blocks that would evict what clients read.
#[test]
fn a_load_of_new_keys_leaves_the_block_cache_to_readers() {
    let dir = tempfile::tempdir().unwrap();
    // No read cache: every old entry is looked for in RocksDB.
    let engine = Engine::open_with(dir.path(), 0).unwrap();
    let mut lsn = 0;
    for round in 0..4 {
        let ops: Vec<Op> = (0..5_000)
            .map(|i| {
                Op::SetString(pb::SetString {
                    key: b(&format!("new:{round}:{i}")),
                    value: b(&format!("{i:032}")),
                    expire_at_ms: 0,
                })
            })
            .collect();
        let records: Vec<(Lsn, WalRecord)> = ops
            .chunks(100)
            .map(|ops| {
                lsn += 1;
                (Lsn(lsn), record(ops.to_vec()))
            })
            .collect();
        engine.apply(&records).unwrap();
        engine.flush().unwrap();
    }
    assert_eq!(engine.key_count(), 20_000);
    let figures = engine.rocksdb_figures().unwrap();
    assert!(
        figures.block_cache_bytes < 256 << 10,
        "{} bytes in the block cache",
        figures.block_cache_bytes
    );
    // A client's read is cached. (Once the compaction the four files set
    // off has ended: the blocks of the files it replaces leave the cache
    // when it ends.)
    assert!(holds_within_a_minute(|| {
        let f = engine.rocksdb_figures().unwrap();
        f.level0_files < 4 && f.running_compactions == 0
    }));
    let before = engine.rocksdb_figures().unwrap().block_cache_bytes;
    assert!(engine.entry(b"new:0:7").unwrap().is_some());
    assert!(engine.rocksdb_figures().unwrap().block_cache_bytes > before);
}

/// Whether `done` holds within 60 s (polled).
fn holds_within_a_minute(mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !done() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    true
}

#[test]
fn a_flushall_gives_its_disk_space_back() {
    let seed = seed();
    let mut rng = SeededRng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    // Steps of 1 MiB: three files of keys apart, a step ending after each
    // (the first takes in all of level 0, which the FLUSHALL's range
    // deletions, flushed there, overlap whole).
    engine.set_reclaim_step_bytes(1 << 20);
    for first in [1, 11, 21] {
        engine
            .apply(&incompressible_sets(&mut rng, first, 1000))
            .unwrap();
        // RocksDB's figures follow: the memtable holds what was applied,
        // then a flush makes it a file of level 0.
        let before = engine.rocksdb_figures().unwrap();
        assert!(before.memtable_bytes > 1 << 20, "{before:?}");
        engine.flush().unwrap();
    }
    let figures = engine.rocksdb_figures().unwrap();
    assert_eq!(figures.level0_files, 3, "{figures:?}");
    assert!(
        !figures.writes_stopped && !figures.reclaiming,
        "{figures:?}"
    );
    let full = engine.disk_bytes().unwrap();
    assert!(full > 5 << 20, "6 MiB written, {full} bytes in files");
    engine
        .apply(&[(Lsn(31), record(vec![Op::FlushAll(pb::FlushAll {})]))])
        .unwrap();
    assert_eq!(engine.key_count(), 0);
    // The compaction runs beside: bounded wait for its outcome.
    holds_within_a_minute(|| engine.disk_bytes().unwrap() <= 64 << 10);
    let left = engine.disk_bytes().unwrap();
    assert!(
        left <= 64 << 10,
        "{left} bytes still in files after a FLUSHALL of {full}"
    );
    assert!(holds_within_a_minute(|| !engine
        .rocksdb_figures()
        .unwrap()
        .reclaiming));

    // Dropped while a compaction may still run: the database is closed with
    // the engine, so it opens again at once, with what was applied.
    engine
        .apply(&incompressible_sets(&mut rng, 32, 2000))
        .unwrap();
    engine.flush().unwrap();
    engine
        .apply(&[
            (Lsn(52), record(vec![Op::FlushAll(pb::FlushAll {})])),
            (
                Lsn(53),
                record(vec![Op::SetString(pb::SetString {
                    key: b("kept"),
                    value: b("v"),
                    expire_at_ms: 0,
                })]),
            ),
        ])
        .unwrap();
    drop(engine);
    let engine = Engine::open(dir.path()).unwrap();
    assert_eq!(engine.applied_lsn(), Lsn(53), "seed {seed}");
    assert_eq!(engine.key_count(), 1);
    assert!(engine.get(b"kept", 0).unwrap().is_some());
}

/// A string and its rows: its entry, and its chunks' lengths.
fn stored_string(engine: &Engine, key: &[u8]) -> (Option<Entry>, Vec<usize>) {
    let chunks = engine.hash_fields(key, None, usize::MAX).unwrap();
    (
        engine.get(key, 0).unwrap(),
        chunks.iter().map(|(_, c)| c.len()).collect(),
    )
}

/// The whole string at `key` of `engine`.
fn string_at(engine: &Engine, key: &[u8]) -> Bytes {
    let entry = engine.get(key, 0).unwrap().expect("present");
    string_bytes(engine, key, &entry, 0..entry.string_len()).unwrap()
}

#[test]
fn long_strings_are_stored_in_chunks_and_read_as_one() {
    const CHUNK: usize = STRING_CHUNK_BYTES;
    const LONG: usize = LONG_STRING_BYTES;
    // The chunks' lengths a long string of `len` bytes is stored in.
    let chunk_lens = |len: usize| -> Vec<usize> {
        (0..len)
            .step_by(CHUNK)
            .map(|at| CHUNK.min(len - at))
            .collect()
    };
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(&dir.path().join("a")).unwrap();
    let mut lsn = 0;
    let mut apply = |engine: &Engine, op: Op| {
        lsn += 1;
        engine.apply(&[(Lsn(lsn), record(vec![op]))]).unwrap();
    };
    let long = |entry: Option<Entry>| entry.map(|e| e.value);
    let value: Bytes = (0..LONG + 100).map(|i| (i % 251) as u8).collect();
    apply(
        &engine,
        Op::SetString(pb::SetString {
            key: b("s"),
            value: value.clone(),
            expire_at_ms: 9_000_000_000_000,
        }),
    );
    let (entry, chunks) = stored_string(&engine, b"s");
    assert_eq!(
        long(entry),
        Some(Value::LongString {
            len: value.len() as u64
        })
    );
    assert_eq!(chunks, chunk_lens(LONG + 100));
    assert_eq!(chunks.last(), Some(&100));
    assert_eq!(string_at(&engine, b"s"), value);
    let entry = engine.get(b"s", 0).unwrap().unwrap();
    let across = CHUNK as u64 - 3..2 * CHUNK as u64 + 5;
    assert_eq!(
        string_bytes(&engine, b"s", &entry, across.clone()).unwrap(),
        value.slice(across.start as usize..across.end as usize)
    );
    assert_eq!(
        string_bytes(&engine, b"s", &entry, LONG as u64 + 90..u64::MAX).unwrap(),
        value.slice(LONG + 90..)
    );

    // A write past the end: the old last chunk grows, the gap reads as
    // zeros and is stored, and only the chunks from the old end on change.
    apply(
        &engine,
        Op::SetRange(pb::SetRange {
            key: b("s"),
            offset: (LONG + 3 * CHUNK + 1) as u64,
            data: b("xy"),
        }),
    );
    let mut expected = value.to_vec();
    expected.resize(LONG + 3 * CHUNK + 1, 0);
    expected.extend_from_slice(b"xy");
    assert_eq!(string_at(&engine, b"s"), expected);
    assert_eq!(
        stored_string(&engine, b"s").1,
        chunk_lens(LONG + 3 * CHUNK + 3)
    );
    assert_eq!(
        engine.get(b"s", 0).unwrap().unwrap().expire_at_ms,
        9_000_000_000_000
    );
    // A write across a chunk boundary, inside the string.
    apply(
        &engine,
        Op::SetRange(pb::SetRange {
            key: b("s"),
            offset: CHUNK as u64 - 1,
            data: b("AB"),
        }),
    );
    expected[CHUNK - 1..CHUNK + 1].copy_from_slice(b"AB");
    assert_eq!(string_at(&engine, b"s"), expected);

    // A short string that grows past the threshold is stored in chunks
    // from then on; one that reaches it is still one row.
    apply(
        &engine,
        Op::SetString(pb::SetString {
            key: b("t"),
            value: b("abc"),
            expire_at_ms: 0,
        }),
    );
    apply(
        &engine,
        Op::SetRange(pb::SetRange {
            key: b("t"),
            offset: 3,
            data: value.slice(..LONG),
        }),
    );
    assert_eq!(stored_string(&engine, b"t").1, chunk_lens(LONG + 3));
    let mut t = b"abc".to_vec();
    t.extend_from_slice(&value[..LONG]);
    assert_eq!(string_at(&engine, b"t"), t);
    apply(
        &engine,
        Op::SetRange(pb::SetRange {
            key: b("w"),
            offset: 0,
            data: value.slice(..LONG),
        }),
    );
    assert_eq!(
        stored_string(&engine, b"w"),
        (
            Some(Entry {
                value: Value::String(value.slice(..LONG)),
                expire_at_ms: 0
            }),
            vec![]
        )
    );
    apply(&engine, Op::Delete(pb::Delete { key: b("w") }));

    // The same data, whatever writes made it, stores the same rows and
    // digests alike; another engine SET it whole.
    let other = Engine::open(&dir.path().join("b")).unwrap();
    for (i, (key, bytes)) in [(b("s"), expected.clone()), (b("t"), t)]
        .into_iter()
        .enumerate()
    {
        other
            .apply(&[(
                Lsn(i as u64 + 1),
                record(vec![Op::SetString(pb::SetString {
                    key: key.clone(),
                    value: Bytes::from(bytes),
                    expire_at_ms: if i == 0 { 9_000_000_000_000 } else { 0 },
                })]),
            )])
            .unwrap();
        assert_eq!(stored_string(&engine, &key), stored_string(&other, &key));
    }
    assert_eq!(engine.digest(0).unwrap(), other.digest(0).unwrap());
    assert_eq!(
        (engine.key_count(), engine.expiring()),
        (other.key_count(), other.expiring())
    );

    // A short string over a long one, a hash over one, a deletion: the
    // chunks go with it.
    apply(
        &engine,
        Op::SetString(pb::SetString {
            key: b("s"),
            value: b("short"),
            expire_at_ms: 0,
        }),
    );
    assert_eq!(
        stored_string(&engine, b"s"),
        (
            Some(Entry {
                value: Value::String(b("short")),
                expire_at_ms: 0
            }),
            vec![]
        )
    );
    apply(
        &engine,
        Op::HashSet(pb::HashSet {
            key: b("t"),
            fields: vec![pb::FieldValue {
                field: b("f"),
                value: b("v"),
            }],
        }),
    );
    assert_eq!(
        engine.hash_fields(b"t", None, 10).unwrap(),
        vec![(b("f"), b("v"))]
    );
    apply(
        &engine,
        Op::SetString(pb::SetString {
            key: b("u"),
            value: value.clone(),
            expire_at_ms: 0,
        }),
    );
    apply(&engine, Op::Delete(pb::Delete { key: b("u") }));
    assert_eq!(stored_string(&engine, b"u"), (None, vec![]));
    assert_eq!(engine.key_count(), 2);
    assert!(
        engine.expiring().keys == 0,
        "the expiry went with the long string"
    );
}

#[test]
fn replaying_any_suffix_twice_gives_the_same_state() {
    let seed = seed();
    for round in 0..20u64 {
        let records = random_records(seed.wrapping_add(round), 200);
        let dir = tempfile::tempdir().unwrap();
        let once = Engine::open(&dir.path().join("once")).unwrap();
        once.apply(&records).unwrap();
        // Applied up to `mid`, then a replay from `from` at or before it
        // (what the engine holds is skipped, the rest applied), then the
        // same replay again.
        let twice = Engine::open(&dir.path().join("twice")).unwrap();
        let from = (seed.wrapping_add(round) % 200) as usize;
        let mid = from + (seed.wrapping_add(round) / 200 % (201 - from as u64)) as usize;
        twice.apply(&records[..mid]).unwrap();
        twice.apply_again(&records[from..]).unwrap();
        assert_eq!(twice.applied_lsn(), Lsn(200));
        twice.apply_again(&records[from..]).unwrap();
        assert_eq!(twice.applied_lsn(), Lsn(200));
        assert_eq!(
            once.digest(0).unwrap(),
            twice.digest(0).unwrap(),
            "round {round}, applied to {mid}, suffix from {from}"
        );
        assert_eq!(once.key_count(), twice.key_count(), "round {round}");
        // And applying record by record, in many batches, agrees with one batch.
        let single = Engine::open(&dir.path().join("single")).unwrap();
        for r in &records {
            single.apply(std::slice::from_ref(r)).unwrap();
        }
        assert_eq!(
            once.digest(0).unwrap(),
            single.digest(0).unwrap(),
            "round {round}"
        );
    }
}

/// What `single_string_set` must find in `encoded`: the SET when the
/// record is exactly one `SetString`, else nothing.
fn expected_set(record: &WalRecord) -> Option<(Vec<u8>, Vec<u8>, u64)> {
    match record.mutations.as_slice() {
        [
            Mutation {
                op: Some(Op::SetString(s)),
            },
        ] => Some((s.key.to_vec(), s.value.to_vec(), s.expire_at_ms)),
        _ => None,
    }
}

#[test]
fn single_sets_read_in_place_are_what_prost_decodes() {
    let seed = seed();
    let mut records: Vec<WalRecord> = random_records(seed, 2000)
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    for (key, value, expire_at_ms) in [("", "", 0), ("k", "", u64::MAX), ("", "v", 1)] {
        records.push(record(vec![Op::SetString(pb::SetString {
            key: b(key),
            value: b(value),
            expire_at_ms,
        })]));
    }
    let mut rng = SeededRng::new(seed);
    let mut sets = 0;
    for r in &records {
        let encoded = r.encode_to_vec();
        let found = ferry_engine::single_string_set(&encoded)
            .map(|s| (s.key.to_vec(), s.value.to_vec(), s.expire_at_ms));
        assert_eq!(found, expected_set(r), "{r:?}");
        sets += usize::from(found.is_some());
        // Damaged or unusual encodings: whatever is read in place is what
        // prost reads; the rest is left to prost.
        for _ in 0..20 {
            let mut bad = encoded.clone();
            match rng.below(3) {
                0 if !bad.is_empty() => {
                    let i = rng.below(bad.len() as u64) as usize;
                    bad[i] ^= 1 << rng.below(8);
                }
                1 => bad.truncate(rng.below(bad.len() as u64 + 1) as usize),
                _ => bad.extend_from_slice(&encoded),
            }
            if let Some(s) = ferry_engine::single_string_set(&bad) {
                let decoded = WalRecord::decode(bad.as_slice()).expect("prost reads it too");
                assert_eq!(
                    Some((s.key.to_vec(), s.value.to_vec(), s.expire_at_ms)),
                    expected_set(&decoded),
                    "{bad:?}"
                );
            }
        }
    }
    assert!(sets > 100, "only {sets} single SETs among the records");
}

#[test]
fn a_state_built_in_memory_and_ingested_equals_applying_record_by_record() {
    let seed = seed();
    for round in 0..20u64 {
        let records = random_records(seed.wrapping_add(round), 300);
        let dir = tempfile::tempdir().unwrap();
        let applied = Engine::open(&dir.path().join("applied")).unwrap();
        for chunk in records.chunks(7) {
            applied.apply(chunk).unwrap();
        }
        // All in one RocksDB write: a key written many times over, and
        // FLUSHALLs between writes, in one batch sorted by key.
        let whole = Engine::open(&dir.path().join("whole")).unwrap();
        whole.apply(&records).unwrap();
        let built = Engine::open(&dir.path().join("built")).unwrap();
        let mut builder = ferry_engine::StateBuilder::new();
        for (lsn, r) in &records {
            builder.apply(*lsn, r).unwrap();
        }
        built.ingest(builder, dir.path()).unwrap();
        // The value arena compacted as soon as replaced values outweigh the
        // live ones (after most records here).
        let compacted = Engine::open(&dir.path().join("compacted")).unwrap();
        // SETs read in place, as `ferry replay` folds them.
        let mut builder = ferry_engine::StateBuilder::with_compaction_floor(0);
        for (lsn, r) in &records {
            let encoded = r.encode_to_vec();
            match ferry_engine::single_string_set(&encoded) {
                Some(set) => builder.apply_string_set(*lsn, set).unwrap(),
                None => builder.apply(*lsn, r).unwrap(),
            }
        }
        compacted.ingest(builder, dir.path()).unwrap();
        // Part built and ingested, the rest applied on top.
        let mixed = Engine::open(&dir.path().join("mixed")).unwrap();
        let cut = (seed.wrapping_add(round) % 300) as usize;
        let mut builder = ferry_engine::StateBuilder::new();
        for (lsn, r) in &records[..cut] {
            builder.apply(*lsn, r).unwrap();
        }
        if cut > 0 {
            mixed.ingest(builder, dir.path()).unwrap();
        }
        mixed.apply(&records[cut..]).unwrap();
        for (name, engine) in [
            ("whole", &whole),
            ("built", &built),
            ("compacted", &compacted),
            ("mixed", &mixed),
        ] {
            assert_eq!(
                applied.digest(0).unwrap(),
                engine.digest(0).unwrap(),
                "{name}, round {round}, cut {cut}"
            );
            // The same rows, not only the same data: each key's entry, and
            // a hash's fields or a long string's chunks.
            assert!(
                seen_in_engine(&applied) == seen_in_engine(engine),
                "{name}, round {round}, cut {cut}: stored rows differ"
            );
            assert_eq!(
                applied.key_count(),
                engine.key_count(),
                "{name}, round {round}"
            );
            assert_eq!(engine.applied_lsn(), Lsn(300));
            assert_eq!(
                engine.expiring(),
                expiring_in_entries(engine),
                "{name}, round {round}"
            );
            // What the expiry sweep would find agrees too.
            assert_eq!(
                applied.expired_keys(u64::MAX, 1000).unwrap(),
                engine.expired_keys(u64::MAX, 1000).unwrap(),
                "{name}, round {round}"
            );
        }
        drop((built, mixed));
        // And it all survives a reopen.
        let reopened = Engine::open(&dir.path().join("built")).unwrap();
        assert_eq!(reopened.applied_lsn(), Lsn(300));
        assert_eq!(applied.digest(0).unwrap(), reopened.digest(0).unwrap());
        assert_eq!(applied.expiring(), expiring_in_entries(&applied));
        assert_eq!(reopened.expiring(), applied.expiring(), "round {round}");
    }
}

/// The engine's RocksDB database in `path`, opened as it is, to change it
/// by hand.
fn open_raw(path: &std::path::Path) -> rocksdb::DB {
    let families = [
        rocksdb::DEFAULT_COLUMN_FAMILY_NAME,
        ferry_engine::LAYOUT_COLUMN_FAMILY,
    ];
    rocksdb::DB::open_cf(&rocksdb::Options::default(), path, families).unwrap()
}

#[test]
fn a_keyspace_without_its_expiry_count_gets_it_from_the_expiry_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("engine");
    let engine = Engine::open(&path).unwrap();
    engine.apply(&random_records(seed(), 300)).unwrap();
    let ops = vec![Op::SetString(pb::SetString {
        key: b("expiring"),
        value: b("v"),
        expire_at_ms: 4_000_000_000_123,
    })];
    engine.apply(&[(Lsn(301), record(ops))]).unwrap();
    engine.flush().unwrap();
    let expected = expiring_in_entries(&engine);
    assert!(expected.keys >= 1);
    assert_eq!(engine.expiring(), expected);
    drop(engine);
    // As a keyspace written before the count was stored.
    let db = open_raw(&path);
    db.delete(b"Mexpiring").unwrap();
    db.flush().unwrap();
    drop(db);
    let engine = Engine::open(&path).unwrap();
    assert_eq!(engine.expiring(), expected);
    drop(engine);
    // A stored count that does not decode is counted again, not refused.
    let db = open_raw(&path);
    db.put(b"Mexpiring", b"bad").unwrap();
    db.flush().unwrap();
    drop(db);
    let engine = Engine::open(&path).unwrap();
    assert_eq!(engine.expiring(), expected);
}

#[test]
fn an_engine_replaced_with_a_checkpoint_holds_exactly_its_state() {
    let seed = seed();
    for round in 0..10u64 {
        let dir = tempfile::tempdir().unwrap();
        // The source: a primary's engine, checkpointed.
        let source = Engine::open(&dir.path().join("source")).unwrap();
        let theirs = random_records(seed.wrapping_add(round), 400);
        source.apply(&theirs).unwrap();
        let checkpoint = dir.path().join("checkpoint");
        assert_eq!(source.checkpoint(&checkpoint).unwrap(), Lsn(400));
        assert_eq!(source.persisted_lsn(), Lsn(400));
        assert_eq!(
            ferry_engine::checkpoint_meta(&checkpoint).unwrap(),
            (Lsn(400), source.key_count())
        );
        // The target holds other data (keys the source lacks, others it has
        // with other values), or nothing.
        let target = Engine::open(&dir.path().join("target")).unwrap();
        if round % 3 != 0 {
            target
                .apply(&random_records(seed.wrapping_add(round + 1000), 250))
                .unwrap();
        }
        assert_eq!(
            target.replace_with_checkpoint(&checkpoint).unwrap(),
            Lsn(400)
        );
        assert!(
            !checkpoint.exists(),
            "the checkpoint became the engine's directory"
        );
        assert!(!dir.path().join("target.old").exists());
        assert_eq!(target.applied_lsn(), Lsn(400), "round {round}");
        assert_eq!(target.persisted_lsn(), Lsn(400));
        assert_eq!(target.key_count(), source.key_count(), "round {round}");
        assert_eq!(target.expiring(), source.expiring(), "round {round}");
        assert_eq!(
            target.digest(0).unwrap(),
            source.digest(0).unwrap(),
            "round {round}"
        );
        assert_eq!(
            target.expired_keys(u64::MAX, 1000).unwrap(),
            source.expired_keys(u64::MAX, 1000).unwrap()
        );
        // Records after the checkpoint apply on top as on the source.
        let more: Vec<_> = random_records(seed.wrapping_add(round + 2000), 50)
            .into_iter()
            .map(|(lsn, r)| (Lsn(lsn.0 + 400), r))
            .collect();
        source.apply(&more).unwrap();
        target.apply(&more).unwrap();
        assert_eq!(target.digest(0).unwrap(), source.digest(0).unwrap());
        drop(target);
        let reopened = Engine::open(&dir.path().join("target")).unwrap();
        assert!(reopened.applied_lsn() >= Lsn(400), "the ingest is durable");
    }
}

/// Writes `records` to a WAL in `dir/wal` and applies them to the engine in
/// `dir/engine`.
fn write_and_apply(wal: &Wal, engine: &Engine, records: &[(Lsn, WalRecord)]) {
    for (lsn, r) in records {
        let range = wal
            .append_blocking(vec![Bytes::from(r.encode_to_vec())])
            .unwrap();
        assert_eq!(range.first, *lsn);
    }
    engine.apply(records).unwrap();
}

const CRASH_CHILD_ENV: &str = "FERRY_ENGINE_CRASH_CHILD_DIR";

/// The crash test's records: random, but without FLUSHALL, whose compaction
/// (which gives its disk space back) flushes the memtable when it starts.
fn crash_records() -> Vec<(Lsn, WalRecord)> {
    let mut records = random_records(42, 1000);
    for (_, record) in &mut records {
        record
            .mutations
            .retain(|m| !matches!(m.op, Some(Op::FlushAll(_))));
    }
    records
}

/// Run as a child process by the test below: applies 1..=500, flushes
/// RocksDB, applies 501..=1000, and exits without closing anything.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CRASH_CHILD_ENV) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let wal = Wal::open(
        dir.join("wal"),
        WalOptions {
            sync_policy: SyncPolicy::Always,
            ..Default::default()
        },
    )
    .unwrap();
    let engine = Engine::open(&dir.join("engine")).unwrap();
    let records = crash_records();
    write_and_apply(&wal, &engine, &records[..500]);
    engine.flush().unwrap();
    write_and_apply(&wal, &engine, &records[500..]);
    // No destructors: RocksDB's memtable (and its unflushed records) is lost.
    std::process::exit(0);
}

/// Goal: RocksDB's WAL is off, so a crash loses what was applied after its
/// last flush; recovery must replay exactly that from ferry's WAL.
/// Method: a child process applies 1000 records with a flush after 500 and
/// exits without closing; the engine reopens at LSN 500, replays, and its
/// digest equals that of an engine that applied all 1000 without a crash.
#[test]
fn a_crash_between_flushes_is_recovered_by_replay() {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CRASH_CHILD_ENV, dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let wal = Wal::open(dir.path().join("wal"), WalOptions::default()).unwrap();
    assert_eq!(wal.last_lsn(), Lsn(1000));
    let engine = Engine::open(&dir.path().join("engine")).unwrap();
    assert_eq!(
        engine.applied_lsn(),
        Lsn(500),
        "only the flushed half survived in RocksDB"
    );
    assert_eq!(engine.replay(&wal).unwrap(), 500);
    assert_eq!(engine.applied_lsn(), Lsn(1000));
    let reference = Engine::open(&dir.path().join("reference")).unwrap();
    reference.apply(&crash_records()).unwrap();
    assert_eq!(engine.digest(0).unwrap(), reference.digest(0).unwrap());
    assert_eq!(engine.key_count(), reference.key_count());
}

#[test]
fn an_engine_ahead_of_its_wal_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(&dir.path().join("engine")).unwrap();
    engine.apply(&random_records(1, 10)).unwrap();
    let wal = Wal::open(dir.path().join("wal"), WalOptions::default()).unwrap();
    assert!(matches!(
        engine.replay(&wal),
        Err(ferry_engine::EngineError::WalMismatch { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_orders_commands_and_applies_only_durable_records() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Arc::new(
        Wal::open(
            dir.path().join("wal"),
            WalOptions {
                sync_policy: SyncPolicy::Always,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let engine = Arc::new(Engine::open(&dir.path().join("engine")).unwrap());
    let pipeline = Arc::new(Pipeline::start(engine.clone(), wal.clone()));
    // 16 tasks increment one counter 100 times each, read-modify-write
    // through the view: every increment sees the one before.
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let pipeline = pipeline.clone();
        tasks.push(tokio::spawn(async move {
            let mut tickets = Vec::new();
            for _ in 0..100 {
                let ticket = pipeline
                    .execute(|view| {
                        let n = match view.get(b"n")? {
                            Some(Entry {
                                value: Value::String(s),
                                ..
                            }) => std::str::from_utf8(&s).unwrap().parse::<u64>().unwrap(),
                            _ => 0,
                        };
                        view.push(Op::SetString(pb::SetString {
                            key: b("n"),
                            value: b(&(n + 1).to_string()),
                            expire_at_ms: 0,
                        }))?;
                        Ok(n + 1)
                    })
                    .await
                    .unwrap();
                tickets.push(ticket);
            }
            let mut seen = Vec::new();
            for t in tickets {
                seen.push(t.wait().await.unwrap());
            }
            seen
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    assert_eq!(
        all,
        (1..=1600).collect::<Vec<u64>>(),
        "each increment saw the one before"
    );
    assert_eq!(
        engine.get(b"n", 0).unwrap().map(|e| e.value),
        Some(Value::String(b("1600")))
    );
    assert_eq!(engine.applied_lsn(), wal.durable_lsn());
    assert!(
        wal.stats().syncs < 1600,
        "records shared syncs ({} syncs)",
        wal.stats().syncs
    );
    // A command that fails pushes nothing; one with no effects waits for what it read.
    let ticket = pipeline
        .execute(|view| Ok(view.get(b"n")?.is_some()))
        .await
        .unwrap();
    assert!(ticket.wait().await.unwrap());
    let before = wal.last_lsn();
    let err = pipeline
        .execute(|view| -> ferry_engine::Result<()> {
            view.push(Op::Delete(pb::Delete { key: b("n") }))?;
            Err(ferry_engine::EngineError::Stopped(
                "the command changed its mind".into(),
            ))
        })
        .await;
    assert!(err.is_err());
    assert_eq!(
        wal.last_lsn(),
        before,
        "nothing of the failed command was logged"
    );
    let ticket = pipeline
        .execute(|view| Ok(view.get(b"n")?.is_some()))
        .await
        .unwrap();
    assert!(
        ticket.wait().await.unwrap(),
        "the failed command's effects were taken back"
    );
}

#[tokio::test]
async fn a_failed_wal_fails_the_pending_commands_and_those_that_read_them() {
    let dir = tempfile::tempdir().unwrap();
    let storage = ferry_wal::testing::MemStorage::new();
    let options = WalOptions {
        sync_policy: SyncPolicy::Always,
        ..Default::default()
    };
    let wal = Arc::new(Wal::open_with("/wal", options, Arc::new(storage.clone())).unwrap());
    let engine = Arc::new(Engine::open(dir.path()).unwrap());
    let pipeline = Pipeline::start(engine.clone(), wal.clone());
    let set = |key: &'static str| {
        move |view: &mut ferry_engine::View<'_>| {
            view.push(Op::SetString(pb::SetString {
                key: b(key),
                value: b("v"),
                expire_at_ms: 0,
            }))?;
            Ok(())
        }
    };
    pipeline
        .execute(set("a"))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    storage.set_fail_sync(true);
    let failed = pipeline.execute(set("b")).await.unwrap();
    // Reads what the failing command wrote: it must not answer as if it were durable.
    let reader = pipeline
        .execute(|view| Ok(view.get(b"b")?.is_some()))
        .await
        .unwrap();
    assert!(failed.wait().await.is_err());
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), reader.wait())
        .await
        .expect("the reader is told, not left waiting");
    assert!(read.is_err());
    assert_eq!(
        engine.get(b"b", 0).unwrap(),
        None,
        "nothing unsynced reached the engine"
    );
    assert!(
        pipeline.execute(set("c")).await.is_err(),
        "the write path refuses more"
    );
}

/// What a key holds, as a command sees it: its entry and, for a hash, its
/// fields.
type Seen = Vec<(Option<Entry>, Vec<(Bytes, Bytes)>)>;

/// What keys `k0..k7` hold, read with `entry` and, for a hash, `fields`.
fn seen(
    mut entry: impl FnMut(&[u8]) -> Option<Entry>,
    mut fields: impl FnMut(&[u8]) -> Vec<(Bytes, Bytes)>,
) -> Seen {
    (0..8)
        .map(|k| {
            let key = format!("k{k}");
            let entry = entry(key.as_bytes());
            // A long string's chunks are compared as a hash's fields are.
            let fields = match &entry {
                Some(Entry {
                    value: Value::Hash { .. } | Value::LongString { .. },
                    ..
                }) => fields(key.as_bytes()),
                _ => Vec::new(),
            };
            (entry, fields)
        })
        .collect()
}

fn seen_in_engine(engine: &Engine) -> Seen {
    seen(
        |key| engine.entry(key).unwrap(),
        |key| engine.hash_fields(key, None, usize::MAX).unwrap(),
    )
}

/// Random commands through the pipeline, many in flight and in runs of
/// one to twenty as a client pipelines them (some failing, some only
/// reading): what each sees of every key right after its effect is what an
/// engine that applied the same records one by one holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_view_agrees_with_the_engine_after_each_command() {
    let seed = seed();
    let dir = tempfile::tempdir().unwrap();
    let wal = Arc::new(Wal::open(dir.path().join("wal"), WalOptions::default()).unwrap());
    let engine = Arc::new(Engine::open(&dir.path().join("engine")).unwrap());
    let pipeline = Pipeline::start(engine.clone(), wal.clone());
    let reference = Engine::open(&dir.path().join("reference")).unwrap();
    let mut rng = SeededRng::new(seed);
    let mut tickets = Vec::new();
    let mut lsn = 0u64;
    let mut commands = 0;
    while commands < 1500 {
        // (the op, whether it is pushed and kept, what it should see)
        let mut run = Vec::new();
        for _ in 0..1 + rng.below(20) {
            let op = random_op(&mut rng);
            let kind = rng.below(10);
            if kind >= 2 {
                lsn += 1;
                reference
                    .apply(&[(Lsn(lsn), record(vec![op.clone()]))])
                    .unwrap();
            }
            run.push((op, kind, seen_in_engine(&reference)));
        }
        commands += run.len();
        let outcomes = pipeline
            .execute_many(
                None,
                run.iter().map(|(op, kind, _)| {
                    move |view: &mut ferry_engine::View<'_>| {
                        if *kind > 0 {
                            view.push(op.clone())?;
                        }
                        let seen = seen(
                            |key| view.entry(key).unwrap(),
                            |key| view.hash_fields(key).unwrap(),
                        );
                        match kind {
                            // Pushed its effect, then failed: taken back.
                            1 => Err(ferry_engine::EngineError::Stopped(
                                "changed its mind".into(),
                            )),
                            _ => Ok(seen),
                        }
                    }
                }),
            )
            .await;
        assert_eq!(outcomes.len(), run.len());
        for ((op, kind, expected), outcome) in run.into_iter().zip(outcomes) {
            match outcome {
                Ok(ticket) => tickets.push((lsn, op, expected, ticket)),
                Err(_) => assert_eq!(kind, 1, "only the failing command fails: {op:?}"),
            }
        }
        // Let records pile up in the overlay, then drain them now and then.
        if rng.below(5) == 0 {
            for (lsn, op, expected, ticket) in tickets.drain(..) {
                assert_eq!(ticket.wait().await.unwrap(), expected, "lsn {lsn}: {op:?}");
            }
        }
    }
    for (lsn, op, expected, ticket) in tickets.drain(..) {
        assert_eq!(ticket.wait().await.unwrap(), expected, "lsn {lsn}: {op:?}");
    }
    assert_eq!(seen_in_engine(&engine), seen_in_engine(&reference));
    assert_eq!(engine.applied_lsn(), Lsn(lsn));
}

/// Commands run together go to the WAL in appends that each fit one frame;
/// one whose record no frame could hold is refused alone, before the next
/// command sees its effects.
#[tokio::test]
async fn commands_run_together_split_into_appends_that_fit() {
    let dir = tempfile::tempdir().unwrap();
    let max = 4096;
    let options = WalOptions {
        limits: ferry_wal::FrameLimits {
            body_bytes_max: max,
        },
        group_bytes_max: max as usize,
        ..Default::default()
    };
    let wal = Arc::new(Wal::open(dir.path().join("wal"), options).unwrap());
    let engine = Arc::new(Engine::open(&dir.path().join("engine")).unwrap());
    let pipeline = Pipeline::start(engine.clone(), wal.clone());
    let sizes = [1500, 1500, 5000, 1500, 10];
    let outcomes = pipeline
        .execute_many(
            None,
            sizes.iter().enumerate().map(|(i, &size)| {
                move |view: &mut ferry_engine::View<'_>| {
                    // Each sees the ones before it that were kept.
                    let before = (0..i)
                        .filter(|j| view.entry(format!("k{j}").as_bytes()).unwrap().is_some())
                        .count();
                    view.push(Op::SetString(pb::SetString {
                        key: b(&format!("k{i}")),
                        value: Bytes::from(vec![b'x'; size]),
                        expire_at_ms: 0,
                    }))?;
                    Ok(before)
                }
            }),
        )
        .await;
    let (mut seen_before, mut lsns) = (Vec::new(), Vec::new());
    for (i, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok(ticket) => {
                let (before, lsn) = ticket.wait_with_lsn().await.unwrap();
                seen_before.push(before);
                lsns.push(lsn.expect("a write has an LSN"));
            }
            Err(err) => {
                assert_eq!(i, 2, "{err}");
                assert!(err.to_string().contains("exceeds"), "{err}");
            }
        }
    }
    assert_eq!(seen_before, vec![0, 1, 2, 3]);
    // Each command gets its own record's LSN, across the appends.
    assert_eq!(lsns, vec![Lsn(1), Lsn(2), Lsn(3), Lsn(4)]);
    assert_eq!(wal.last_lsn(), Lsn(4));
    assert!(
        wal.stats().frames >= 2,
        "1500-byte records in 4096-byte frames: {:?}",
        wal.stats()
    );
    assert_eq!(engine.get(b"k2", 0).unwrap(), None);
    assert_eq!(engine.key_count(), 4);
}

#[test]
fn reads_through_the_read_cache_always_see_the_applied_state() {
    let seed = seed();
    let dir = tempfile::tempdir().unwrap();
    // A small cache (evictions) against an engine without one. The cached
    // engine's applier also reads the state before its batch from the
    // cache; batches of one to five records.
    let cached = Engine::open_with(&dir.path().join("cached"), 64 << 10).unwrap();
    let plain = Engine::open_with(&dir.path().join("plain"), 0).unwrap();
    let keys: Vec<Bytes> = (0..8).map(|i| b(&format!("k{i}"))).collect();
    let records = random_records(seed, 3000);
    let mut rng = SeededRng::new(seed);
    let mut at = 0;
    while at < records.len() {
        let end = (at + 1 + rng.below(5) as usize).min(records.len());
        cached.apply(&records[at..end]).unwrap();
        plain.apply(&records[at..end]).unwrap();
        for key in &keys {
            assert_eq!(
                cached.entry(key).unwrap(),
                plain.entry(key).unwrap(),
                "seed {seed}, records ..{end}, key {key:?}"
            );
        }
        assert_eq!(
            cached.key_count(),
            plain.key_count(),
            "seed {seed}, records ..{end}"
        );
        at = end;
    }
    assert_eq!(
        cached.digest(0).unwrap(),
        plain.digest(0).unwrap(),
        "seed {seed}"
    );
    let stats = cached.read_cache_stats();
    assert!(stats.hits > 0 && stats.misses > 0, "{stats:?}");
    // A reset and a checkpoint swap leave nothing stale behind.
    let checkpoint = dir.path().join("checkpoint");
    plain.checkpoint(&checkpoint).unwrap();
    cached.reset().unwrap();
    for key in &keys {
        assert_eq!(cached.entry(key).unwrap(), None);
    }
    cached.replace_with_checkpoint(&checkpoint).unwrap();
    for key in &keys {
        assert_eq!(cached.entry(key).unwrap(), plain.entry(key).unwrap());
    }
}

#[test]
fn a_racing_reader_never_leaves_an_old_value_in_the_read_cache() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(&dir.path().join("e")).unwrap());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Another thread reads the key all along, filling the cache with
    // whatever it finds, possibly just before each write.
    let reader = {
        let (engine, stop) = (engine.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                engine.entry(b"k").unwrap();
                reads += 1;
            }
            reads
        })
    };
    for i in 1..=20_000u64 {
        let set = Op::SetString(pb::SetString {
            key: b("k"),
            value: Bytes::from(i.to_string()),
            expire_at_ms: 0,
        });
        engine.apply(&[(Lsn(i), record(vec![set]))]).unwrap();
        // The writer reads its own write, whatever the reader cached.
        let seen = engine.entry(b"k").unwrap().map(|e| e.value);
        assert_eq!(
            seen,
            Some(Value::String(Bytes::from(i.to_string()))),
            "write {i}"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
}

/// Everything a reader shows of its state at `now_ms`: each key (scanned
/// `step` keys at a time) with its entry and fields, the key count and the
/// digest. Checks on the way that the other reads agree with the scan.
type Shown = (Vec<(Bytes, Entry, Vec<(Bytes, Bytes)>)>, u64, String);

fn read_all(r: &dyn Reader, step: usize, now_ms: u64) -> Shown {
    let mut keys = Vec::new();
    let mut from = 0;
    // The scan order: each key's hash, then the key.
    let mut last: Option<(u64, Bytes)> = None;
    loop {
        let scanned = r.scan(from, step, now_ms).unwrap();
        for (key, entry) in scanned.entries {
            let at = (scan_hash(&key), key.clone());
            assert!(at.0 >= from, "a key from the scan position on");
            assert!(
                scanned.resume.is_none_or(|resume| at.0 < resume),
                "a key before where the next stretch goes on"
            );
            assert!(last.as_ref().is_none_or(|l| at > *l), "keys in order");
            last = Some(at);
            assert_eq!(r.live(&key, now_ms).unwrap().as_ref(), Some(&entry));
            let fields = r.fields(&key, None, usize::MAX).unwrap();
            if let Some((first, value)) = fields.first() {
                assert_eq!(r.field(&key, first).unwrap().as_ref(), Some(value));
                assert_eq!(
                    r.fields(&key, Some(first), usize::MAX).unwrap(),
                    fields[1..]
                );
                assert_eq!(r.fields(&key, None, 1).unwrap(), fields[..1]);
            }
            keys.push((key, entry, fields));
        }
        match scanned.resume {
            Some(resume) => {
                assert!(resume > from, "every stretch moves on");
                from = resume;
            }
            None => break,
        }
    }
    (keys, r.key_count().unwrap(), r.digest(now_ms).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_reads_the_state_the_engine_will_hold_once_its_writes_are_applied() {
    let seed = seed();
    let mut rng = SeededRng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let wal = Arc::new(Wal::open(dir.path().join("wal"), WalOptions::default()).unwrap());
    let engine = Arc::new(Engine::open(&dir.path().join("engine")).unwrap());
    let pipeline = Pipeline::start(engine.clone(), wal.clone());
    // Half of the keys with an expiry (see `random_op`) have expired then.
    let now_ms = 4_000_000_000_500;
    for round in 0..40 {
        // Records on their way (some applied, some not, as it happens),
        // then a command that writes more and reads it all back.
        let mut tickets = Vec::new();
        for _ in 0..rng.below(12) {
            let ops: Vec<Op> = (0..1 + rng.below(3)).map(|_| random_op(&mut rng)).collect();
            let ticket = pipeline
                .execute(move |view| {
                    for op in ops {
                        view.push(op)?;
                    }
                    Ok(())
                })
                .await
                .unwrap();
            tickets.push(ticket);
        }
        let ops: Vec<Op> = (0..rng.below(4)).map(|_| random_op(&mut rng)).collect();
        let step = 1 + rng.below(4) as usize;
        let shown = pipeline
            .execute(move |view| {
                for op in ops {
                    view.push(op)?;
                }
                Ok(read_all(view, step, now_ms))
            })
            .await
            .unwrap();
        for ticket in tickets {
            ticket.wait().await.unwrap();
        }
        let seen = shown.wait().await.unwrap();
        let held = read_all(&*engine, 1 + rng.below(4) as usize, now_ms);
        assert_eq!(seen, held, "seed {seed}, round {round}");
    }
}

#[test]
fn a_scan_resumes_past_a_stretch_of_expired_keys() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let mut ops: Vec<Op> = (0..10)
        .map(|i| {
            Op::SetString(pb::SetString {
                key: b(&format!("a{i}")),
                value: b("x"),
                expire_at_ms: 1,
            })
        })
        .collect();
    ops.push(Op::SetString(pb::SetString {
        key: b("b"),
        value: b("live"),
        expire_at_ms: 0,
    }));
    engine.apply(&[(Lsn(1), record(ops))]).unwrap();
    // The first three keys in scan order, and the fourth.
    let mut order: Vec<Bytes> = (0..10)
        .map(|i| b(&format!("a{i}")))
        .chain([b("b")])
        .collect();
    order.sort_by_key(|k| (scan_hash(k), k.clone()));
    let first = engine.scan(0, 3, 1000).unwrap();
    let live: Vec<Bytes> = first.entries.iter().map(|(k, _)| k.clone()).collect();
    let expected: Vec<Bytes> = order[..3]
        .iter()
        .filter(|k| **k == b("b"))
        .cloned()
        .collect();
    assert_eq!(live, expected, "the live keys among the first three");
    assert_eq!(
        first.resume,
        Some(scan_hash(&order[3])),
        "goes on at the first key not looked at"
    );
    let (keys, count, _) = read_all(&engine, 3, 1000);
    assert_eq!(keys.len(), 1, "only the live key");
    assert_eq!(keys[0].0, b("b"));
    assert_eq!(count, 11, "expired keys are stored until deleted");
}

/// Whether `watch` holds, as an EXEC would find it.
async fn holds(pipeline: &Pipeline, watch: &ferry_engine::Watch) -> bool {
    let ticket = pipeline.execute(|view| view.watch_holds(watch)).await;
    ticket.unwrap().wait().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_is_spoiled_by_changes_after_it_not_by_deleting_a_key_expired_when_watched() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Arc::new(Wal::open(dir.path().join("wal"), WalOptions::default()).unwrap());
    let engine = Arc::new(Engine::open(&dir.path().join("engine")).unwrap());
    let pipeline = Pipeline::start(engine.clone(), wal.clone());
    let write = |op: Op| {
        let pipeline = &pipeline;
        async move {
            let ticket = pipeline.execute(|view| view.push(op)).await.unwrap();
            ticket.wait().await.unwrap();
        }
    };
    let set = |key: &str, expire_at_ms: u64| {
        Op::SetString(pb::SetString {
            key: b(key),
            value: b("v"),
            expire_at_ms,
        })
    };
    write(set("gone", 1)).await;
    let watch = engine.new_watch();
    assert!(watch.is_empty());
    pipeline.watch(&watch, &[b("gone"), b("k")]).unwrap();
    assert!(holds(&pipeline, &watch).await);
    // The key was logically expired when watched: deleting it changes
    // nothing, but a later change does.
    write(Op::Delete(pb::Delete { key: b("gone") })).await;
    assert!(holds(&pipeline, &watch).await);
    write(set("gone", 0)).await;
    assert!(!holds(&pipeline, &watch).await);
    // Cleared, then watched again: only changes after it count.
    watch.clear();
    assert!(watch.is_empty() && holds(&pipeline, &watch).await);
    pipeline.watch(&watch, &[b("k")]).unwrap();
    write(set("other", 0)).await;
    assert!(holds(&pipeline, &watch).await);
    write(Op::FlushAll(pb::FlushAll {})).await;
    assert!(
        holds(&pipeline, &watch).await,
        "FLUSHALL did not change a missing key"
    );
    write(set("k", 0)).await;
    assert!(!holds(&pipeline, &watch).await);
    // A watch dropped leaves nothing behind to spoil or slow down.
    drop(watch);
    // Fenced (a replica), records reach the engine from outside the write
    // path and spoil watches as they are applied.
    let watch = engine.new_watch();
    pipeline.watch(&watch, &[b("k")]).unwrap();
    pipeline.fence().await;
    let next = engine.applied_lsn().next();
    engine
        .apply(&[(next, record(vec![set("unrelated", 0)]))])
        .unwrap();
    assert!(!watch.is_spoiled());
    engine
        .apply(&[(next.next(), record(vec![Op::FlushAll(pb::FlushAll {})]))])
        .unwrap();
    assert!(
        watch.is_spoiled(),
        "FLUSHALL changed the watched key that existed"
    );
}

#[test]
fn reads_of_several_keys_see_each_record_whole() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(dir.path()).unwrap());
    const RECORDS: u64 = 5_000;
    let writer = {
        let engine = engine.clone();
        std::thread::spawn(move || {
            for i in 1..=RECORDS {
                // One record sets both keys and a hash's two fields.
                let v = b(&i.to_string());
                let ops = vec![
                    Op::SetString(pb::SetString {
                        key: b("a"),
                        value: v.clone(),
                        expire_at_ms: 0,
                    }),
                    Op::SetString(pb::SetString {
                        key: b("b"),
                        value: v.clone(),
                        expire_at_ms: 0,
                    }),
                    Op::HashSet(pb::HashSet {
                        key: b("h"),
                        fields: vec![
                            pb::FieldValue {
                                field: b("x"),
                                value: v.clone(),
                            },
                            pb::FieldValue {
                                field: b("y"),
                                value: v,
                            },
                        ],
                    }),
                ];
                engine.apply(&[(Lsn(i), record(ops))]).unwrap();
            }
        })
    };
    let value = |e: Option<Entry>| match e.map(|e| e.value) {
        Some(Value::String(s)) => s,
        _ => Bytes::new(),
    };
    let mut reads = 0;
    while !writer.is_finished() || reads == 0 {
        // Every other read from a snapshot at once, the others as
        // `Engine::stable` reads (the engine, then a snapshot).
        let tries = if reads % 2 == 0 { 0 } else { 4 };
        let (a, b_, fields) = engine
            .stable_tries(tries, |r| {
                Ok((
                    value(r.live(b"a", 0)?),
                    value(r.live(b"b", 0)?),
                    r.fields(b"h", None, 10)?,
                ))
            })
            .unwrap();
        assert_eq!(a, b_, "a read fell between the two keys of one record");
        if !fields.is_empty() {
            assert_eq!(fields[0].1, fields[1].1, "torn hash");
        }
        reads += 1;
    }
    writer.join().unwrap();
    assert_eq!(engine.applied_lsn(), Lsn(RECORDS));
    eprintln!("{reads} reads beside {RECORDS} writes");
}

/// The sweep for expired keys, ten times a second on a primary, reads only
/// the expiry index: the prefix filters keep it off the files without an
/// expiry entry (with no key to expire it reads no block at all), and it
/// stops at the index's end instead of reading on into the block of a
/// large string (which RocksDB would decompress on every sweep).
#[test]
fn the_expiry_sweep_reads_only_the_expiry_index() {
    use rocksdb::perf::{PerfContext, PerfMetric, PerfStatsLevel, set_perf_stats};
    const LARGE: usize = 4 << 20;
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let mut rng = SeededRng::new(seed());
    let large: Vec<u8> = (0..LARGE).map(|_| rng.next_u64() as u8).collect();
    let set = |key: &str, value: Bytes, expire_at_ms: u64| {
        Op::SetString(pb::SetString {
            key: b(key),
            value,
            expire_at_ms,
        })
    };
    engine
        .apply(&[(
            Lsn(1),
            record(vec![
                set("large", Bytes::from(large), 0),
                set("small", b("v"), 0),
            ]),
        )])
        .unwrap();
    engine.flush().unwrap();
    let now = 10_000_000_000_000;
    set_perf_stats(PerfStatsLevel::EnableCount);
    let mut perf = PerfContext::default();
    perf.reset();
    assert!(engine.expired_keys(now, 100).unwrap().is_empty());
    assert_eq!(
        perf.metric(PerfMetric::BlockReadCount),
        0,
        "{}",
        perf.report(true)
    );

    // A key that is due, and one that is not: the sweep finds the first
    // without reading the large string's block.
    engine
        .apply(&[(
            Lsn(2),
            record(vec![
                set("due", b("v"), 1_000),
                set("later", b("v"), now + 1),
            ]),
        )])
        .unwrap();
    engine.flush().unwrap();
    perf.reset();
    assert_eq!(engine.expired_keys(now, 100).unwrap(), vec![b("due")]);
    let read = perf.metric(PerfMetric::BlockReadByte);
    assert!(
        read < LARGE as u64 / 4,
        "read {read} bytes: {}",
        perf.report(true)
    );
    // All due: the sweep walks the whole index, and still not the string.
    perf.reset();
    assert_eq!(
        engine.expired_keys(now + 2, 100).unwrap(),
        vec![b("due"), b("later")]
    );
    let read = perf.metric(PerfMetric::BlockReadByte);
    assert!(
        read < LARGE as u64 / 4,
        "read {read} bytes: {}",
        perf.report(true)
    );
    set_perf_stats(PerfStatsLevel::Disable);
}

/// The latency hook hears of each RocksDB write of applied records.
#[test]
fn the_latency_hook_hears_of_each_apply() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let heard = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let hook = heard.clone();
    engine.set_latency_hook(std::sync::Arc::new(move |event, _took| {
        hook.lock().unwrap().push(event);
    }));
    for lsn in 1..=3 {
        let op = Op::SetString(pb::SetString {
            key: b("k"),
            value: b(&lsn.to_string()),
            expire_at_ms: 0,
        });
        engine.apply(&[(Lsn(lsn), record(vec![op]))]).unwrap();
    }
    assert_eq!(*heard.lock().unwrap(), vec!["engine-apply"; 3]);
}
