//! Writes a WAL of about `BYTES` stored bytes for the tools benchmark
//! (`bench/tools.sh`): records that are valid `ferry.v1.WalRecord`s, each one
//! SET of a random key (of 1M) to 100 random letters and digits, 16 records
//! per frame.
//!
//! usage: cargo run --release -p ferry-wal --example gen_log -- DIR BYTES

use std::time::Instant;

use bytes::Bytes;
use ferry_wal::testing::SeededRng;
use ferry_wal::{SyncPolicy, Wal, WalOptions};

/// Records per append (one frame each).
const RECORDS_PER_FRAME: usize = 16;
const KEYS: u64 = 1_000_000;
const VALUE_BYTES: usize = 100;
const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

fn varint(mut n: usize, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Field `tag` (length-delimited) holding `body`.
fn field(tag: u8, body: &[u8], out: &mut Vec<u8>) {
    out.push((tag << 3) | 2);
    varint(body.len(), out);
    out.extend_from_slice(body);
}

/// `WalRecord { mutations: [Mutation { set_string: SetString { key, value } }] }`.
fn set_record(key: &[u8], value: &[u8]) -> Bytes {
    let mut set = Vec::new();
    field(1, key, &mut set);
    field(2, value, &mut set);
    let mut mutation = Vec::new();
    field(1, &set, &mut mutation);
    let mut record = Vec::new();
    field(1, &mutation, &mut record);
    Bytes::from(record)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (dir, bytes): (&str, u64) = match args.as_slice() {
        [_, dir, bytes] => (dir, bytes.parse().expect("BYTES is a number")),
        _ => {
            eprintln!("usage: gen_log DIR BYTES");
            std::process::exit(2);
        }
    };
    let wal = Wal::open(
        dir,
        WalOptions {
            sync_policy: SyncPolicy::No,
            ..WalOptions::default()
        },
    )
    .expect("open the WAL");
    let mut rng = SeededRng::new(7);
    let started = Instant::now();
    let mut records = 0u64;
    while wal.stats().bytes < bytes {
        let batch = (0..RECORDS_PER_FRAME)
            .map(|_| {
                let key = format!("key:{:07}", rng.below(KEYS));
                let value: Vec<u8> = (0..VALUE_BYTES)
                    .map(|_| ALNUM[rng.below(ALNUM.len() as u64) as usize])
                    .collect();
                set_record(key.as_bytes(), &value)
            })
            .collect();
        wal.append_blocking(batch).expect("append");
        records += RECORDS_PER_FRAME as u64;
    }
    wal.sync_blocking().expect("sync");
    println!(
        "wrote {records} records, {} bytes in {:.1} s",
        wal.stats().bytes,
        started.elapsed().as_secs_f64()
    );
}
