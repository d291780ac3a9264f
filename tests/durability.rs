//! Durability and lifecycle of `ferry serve`: kill -9 under load loses no
//! acknowledged write and leaves no transaction in part, SIGTERM exits
//! cleanly, a second process on the same
//! data directory is refused, and malformed protocol is answered and
//! survived.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use common::*;
use redis::Value as V;

/// Goal: under `--fsync always`, nothing acknowledged is lost to `kill -9`.
/// Method: 8 clients write (SET of unique keys, and INCR of a counter per
/// client) until a seeded-random number of writes were acknowledged, the
/// server is killed with SIGKILL, restarted on the same data directory, and
/// every acknowledged write is checked; 20 rounds in a row. An INCR whose
/// reply was lost in the kill may or may not have happened, so a counter
/// may exceed its acknowledged count by the one request in flight.
#[test]
fn kill_9_under_load_loses_no_acknowledged_write_20_times() {
    let mut rng =
        ferry_wal::testing::SeededRng::new(ferry_wal::testing::test_seed("kill_9_under_load"));
    let mut next = move |n: u64| rng.below(n);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("node");
    let mut acked_sets: HashMap<String, String> = HashMap::new();
    let mut acked_incrs: HashMap<String, u64> = HashMap::new();
    for round in 0..20 {
        // Odd rounds serve the clients on several threads, as the default
        // does on a machine of more cores than this test's.
        let workers = if round % 2 == 0 { "1" } else { "3" };
        let mut server = Server::start(&data, &["--fsync", "always", "--worker-threads", workers]);
        // What earlier rounds acknowledged is all there.
        {
            let c = &mut server.client();
            for (key, value) in &acked_sets {
                assert_eq!(
                    raw(c, &["GET", key]),
                    V::BulkString(value.clone().into_bytes()),
                    "round {round}: {key}"
                );
            }
            for (key, count) in acked_incrs.iter_mut() {
                let V::BulkString(v) = raw(c, &["GET", key]) else {
                    panic!("round {round}: {key} missing")
                };
                let v: u64 = String::from_utf8(v).unwrap().parse().unwrap();
                assert!(
                    v >= *count && v <= *count + 1,
                    "round {round}: {key} = {v}, acknowledged {count}"
                );
                // Settle the counter at what it holds, for the next round.
                *count = v;
            }
        }
        let crash_after = 100 + next(900);
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let sets = Arc::new(Mutex::new(Vec::new()));
        let incrs = Arc::new(Mutex::new(HashMap::new()));
        let (tx, rx) = mpsc::channel();
        let mut threads = Vec::new();
        for t in 0..8 {
            let (stop, acked, sets, incrs, tx) = (
                stop.clone(),
                acked.clone(),
                sets.clone(),
                incrs.clone(),
                tx.clone(),
            );
            let mut con = server.client();
            threads.push(std::thread::spawn(move || {
                let counter = format!("counter:{t}");
                // Bounded: at most 10k writes per client per round.
                for i in 0..10_000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let ok = if i % 2 == 0 {
                        let (key, value) = (format!("r{round}:t{t}:{i}"), format!("v{i}"));
                        let r: redis::RedisResult<()> = cmd(&["SET", &key, &value]).query(&mut con);
                        r.map(|()| sets.lock().unwrap().push((key, value)))
                    } else {
                        let r: redis::RedisResult<i64> = cmd(&["INCR", &counter]).query(&mut con);
                        r.map(|_| {
                            *incrs.lock().unwrap().entry(counter.clone()).or_insert(0u64) += 1
                        })
                    };
                    if ok.is_err() {
                        break;
                    }
                    if acked.fetch_add(1, Ordering::SeqCst) + 1 == crash_after {
                        let _ = tx.send(());
                    }
                }
            }));
        }
        drop(tx);
        rx.recv_timeout(Duration::from_secs(60))
            .expect("the load reaches the crash point");
        server.kill();
        stop.store(true, Ordering::SeqCst);
        for t in threads {
            t.join().expect("writer");
        }
        acked_sets.extend(sets.lock().unwrap().drain(..));
        for (key, n) in incrs.lock().unwrap().drain() {
            *acked_incrs.entry(key).or_insert(0) += n;
        }
    }
    let server = Server::start(&data, &["--fsync", "always"]);
    let c = &mut server.client();
    for (key, value) in &acked_sets {
        assert_eq!(
            raw(c, &["GET", key]),
            V::BulkString(value.clone().into_bytes()),
            "{key}"
        );
    }
    for (key, &count) in &acked_incrs {
        let V::BulkString(v) = raw(c, &["GET", key]) else {
            panic!("{key} missing")
        };
        let v: u64 = String::from_utf8(v).unwrap().parse().unwrap();
        assert!(
            v >= count && v <= count + 1,
            "{key} = {v}, acknowledged {count}"
        );
    }
}

/// Goal: a transaction survives `kill -9` whole or not at all, and an
/// acknowledged one always. Method: 4 clients each run transactions that
/// increment two counters and a hash field of their own, under `--fsync
/// always`, until a seeded-random number were acknowledged; the server is
/// killed and restarted, and each client's three values must be equal, at
/// least its acknowledged count, and at most one more (the transaction in
/// flight); 10 rounds in a row.
#[test]
fn kill_9_leaves_every_transaction_whole_or_absent_10_times() {
    let mut rng =
        ferry_wal::testing::SeededRng::new(ferry_wal::testing::test_seed("kill_9_transactions"));
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("node");
    let mut acked = [0u64; 4];
    let value = |c: &mut redis::Connection, args: &[&str]| -> u64 {
        match raw(c, args) {
            V::Nil => 0,
            V::BulkString(v) => String::from_utf8(v).unwrap().parse().unwrap(),
            other => panic!("{args:?}: {other:?}"),
        }
    };
    for round in 0..10 {
        let mut server = Server::start(&data, &["--fsync", "always"]);
        {
            let c = &mut server.client();
            for (t, count) in acked.iter_mut().enumerate() {
                let a = value(c, &["GET", &format!("tx:{t}:a")]);
                let b = value(c, &["GET", &format!("tx:{t}:b")]);
                let h = value(c, &["HGET", &format!("tx:{t}:h"), "f"]);
                assert!(
                    a == b && b == h,
                    "round {round}: client {t} has half a transaction: {a}, {b}, {h}"
                );
                assert!(
                    a >= *count && a <= *count + 1,
                    "round {round}: client {t} at {a}, acknowledged {count}"
                );
                *count = a;
            }
        }
        let crash_after = 50 + rng.below(400);
        let stop = Arc::new(AtomicBool::new(false));
        let total = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (stop, total, tx) = (stop.clone(), total.clone(), tx.clone());
                let mut con = server.client();
                std::thread::spawn(move || {
                    let mut mine = 0u64;
                    // Bounded: at most 10k transactions per client per round.
                    for _ in 0..10_000 {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let done: redis::RedisResult<()> = redis::pipe()
                            .atomic()
                            .incr(format!("tx:{t}:a"), 1)
                            .hincr(format!("tx:{t}:h"), "f", 1)
                            .incr(format!("tx:{t}:b"), 1)
                            .ignore()
                            .query(&mut con);
                        if done.is_err() {
                            break;
                        }
                        mine += 1;
                        if total.fetch_add(1, Ordering::SeqCst) + 1 == crash_after {
                            let _ = tx.send(());
                        }
                    }
                    mine
                })
            })
            .collect();
        drop(tx);
        rx.recv_timeout(Duration::from_secs(60))
            .expect("the load reaches the crash point");
        server.kill();
        stop.store(true, Ordering::SeqCst);
        for (t, thread) in threads.into_iter().enumerate() {
            acked[t] += thread.join().expect("client");
        }
    }
}

#[test]
fn sigterm_finishes_syncs_and_exits_zero_and_data_survives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("node");
    let mut server = Server::start(&data, &["--fsync", "no"]);
    let c = &mut server.client();
    for i in 0..100 {
        raw(c, &["SET", &format!("k{i}"), &format!("v{i}")]);
    }
    let V::SimpleString(digest) = raw(c, &["DEBUG", "DIGEST"]) else {
        panic!()
    };
    let status = server.terminate();
    assert!(status.success(), "exit status {status}");
    let server = Server::start(&data, &[]);
    let c = &mut server.client();
    assert_eq!(raw(c, &["DEBUG", "DIGEST"]), V::SimpleString(digest));
    assert_eq!(raw(c, &["GET", "k99"]), V::BulkString(b"v99".to_vec()));
}

/// A power loss under `everysec` can take the WAL's unsynced tail while
/// the engine had already persisted records from it (a memtable flush
/// between a write and the next sync). Simulated here: the engine persists
/// every record, the node is killed, and the WAL's last frames are zeroed
/// as unsynced preallocated space reads back. The node starts all the
/// same, with every record its engine holds, and its WAL continues after
/// them.
#[test]
fn a_wal_that_lost_its_unsynced_tail_behind_the_engine_still_starts() {
    use ferry_wal::inspect::scan_dir;
    use ferry_wal::storage::FsStorage;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("node");
    let mut server = Server::start(&data, &[]);
    let mut pipe = redis::pipe();
    for i in 0..12_000 {
        pipe.cmd("SET").arg(format!("k{i}")).arg(i).ignore();
    }
    pipe.query::<()>(&mut server.client()).expect("SETs");
    let last = status(server.grpc).wal.expect("wal").last_lsn;
    // An idle node persists its engine (the retention round's flush).
    assert!(
        wait_until(Duration::from_secs(20), || status(server.grpc)
            .persisted_lsn
            == last),
        "{:?}",
        status(server.grpc)
    );
    server.kill();
    // The frames past lsn `last - 100` read back as zeros.
    let mut tail = Vec::new();
    scan_dir(
        &FsStorage,
        &data.join("wal"),
        ferry_wal::FrameLimits::default(),
        |f| {
            if f.header.last_lsn().0 > last - 100 {
                tail.push((f.segment.to_path_buf(), f.offset, f.bytes.len()));
            }
            Ok(std::ops::ControlFlow::Continue(()))
        },
    )
    .expect("scan");
    assert!(!tail.is_empty());
    for (segment, offset, len) in tail {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .expect("segment");
        use std::io::Seek;
        file.seek(std::io::SeekFrom::Start(offset)).expect("seek");
        file.write_all(&vec![0; len]).expect("zero");
        file.sync_all().expect("sync");
    }
    let server = Server::start(&data, &[]);
    assert!(
        server.stderr().contains("its unsynced tail was lost"),
        "{}",
        server.stderr()
    );
    let c = &mut server.client();
    assert_eq!(raw(c, &["DBSIZE"]), V::Int(12_000));
    assert_eq!(raw(c, &["GET", "k11999"]), V::BulkString(b"11999".to_vec()));
    raw(c, &["SET", "after", "restart"]);
    let wal = status(server.grpc).wal.expect("wal");
    assert_eq!((wal.first_retained_lsn, wal.last_lsn), (last + 1, last + 1));
}

/// A record that fails to apply to the engine (a disk error, injected) is
/// tried again: a passing error costs its write only time. One that keeps
/// failing stops the node at once, as a crash does, without answering the
/// write (it is logged: its client cannot be told it failed); a restart
/// replays it.
#[test]
fn a_failed_apply_is_tried_again_then_stops_the_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("node");
    let server = Server::try_start_env(
        &data,
        &[],
        &[
            ("FERRY_FAIL_AT", "engine::apply"),
            ("FERRY_FAIL_TIMES", "2"),
        ],
    )
    .expect("start");
    let c = &mut server.client();
    assert_eq!(raw(c, &["SET", "a", "1"]), V::Okay);
    assert_eq!(raw(c, &["GET", "a"]), V::BulkString(b"1".to_vec()));
    assert!(
        server.stderr().contains("trying again"),
        "{}",
        server.stderr()
    );
    drop(server);

    let data = dir.path().join("other");
    let mut server =
        Server::try_start_env(&data, &[], &[("FERRY_FAIL_AT", "engine::apply")]).expect("start");
    let c = &mut server.client();
    assert!(
        cmd(&["SET", "b", "2"]).query::<V>(c).is_err(),
        "the write was answered"
    );
    let status = server
        .wait_exit(Duration::from_secs(30))
        .expect("the node stops");
    assert!(!status.success(), "{status:?}");
    assert!(
        server.stderr().contains("stopping the node"),
        "{}",
        server.stderr()
    );
    let server = Server::start(&data, &[]);
    let c = &mut server.client();
    assert_eq!(raw(c, &["GET", "b"]), V::BulkString(b"2".to_vec()));
    assert_eq!(raw(c, &["DBSIZE"]), V::Int(1));
}

#[test]
fn a_second_process_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("node");
    let _server = Server::start(&data, &[]);
    let err = Server::try_start(&data, &[])
        .err()
        .expect("the second process is refused");
    assert!(err.contains("in use by another ferry process"), "{err}");
}

/// Sends `request` on a fresh connection; the whole reply until the server
/// closes the connection (or 5 s pass).
fn exchange(server: &Server, request: &[u8]) -> String {
    let mut s = TcpStream::connect(server.resp).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request).expect("send");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The protocol's limits CONFIG SET changes apply to the requests that
/// come after, on connections open before too: a bulk or an argument count
/// past them gets Redis's protocol error, a query buffer past its limit
/// closes the client without a reply; other clients go on.
#[test]
fn protocol_limits_set_at_run_time_apply_to_what_comes_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("node"), &[]);
    let admin = &mut server.client();
    let over_a_mib = "x".repeat((1 << 20) + 1);
    assert_eq!(raw(admin, &["SET", "big", &over_a_mib]), V::Okay);
    assert_eq!(
        raw(
            admin,
            &[
                "CONFIG",
                "SET",
                "proto-max-bulk-len",
                "1mb",
                "proto-max-multibulk-len",
                "5"
            ]
        ),
        V::Okay
    );
    let set = |value: &str| {
        format!(
            "*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n${}\r\n{value}\r\n",
            value.len()
        )
    };
    assert_eq!(
        exchange(&server, set(&over_a_mib).as_bytes()),
        "-ERR Protocol error: invalid bulk length\r\n"
    );
    assert_eq!(
        exchange(&server, b"*6\r\n$4\r\nMSET\r\n$1\r\na\r\n"),
        "-ERR Protocol error: invalid multibulk length\r\n"
    );
    let within = [
        set(&over_a_mib[..1 << 20]).as_bytes(),
        b"*1\r\n$4\r\nQUIT\r\n",
    ]
    .concat();
    assert_eq!(exchange(&server, &within), "+OK\r\n+OK\r\n");
    // The admin's own connection is held to them too.
    assert!(cmd(&["SET", "big", &over_a_mib]).query::<V>(admin).is_err());

    let admin = &mut server.client();
    for (limit, value) in [
        ("proto-max-bulk-len", "32mb"),
        ("client-query-buffer-limit", "1mb"),
    ] {
        assert_eq!(raw(admin, &["CONFIG", "SET", limit, value]), V::Okay);
    }
    // A bulk of 2 MB (within its limit) buffered past 1 MB: closed, no
    // reply (not waiting for the rest, as it would under the old limit).
    let mut s = TcpStream::connect(server.resp).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = [
        &b"*2\r\n$3\r\nGET\r\n$2000000\r\n"[..],
        &vec![b'x'; 1_500_000],
    ]
    .concat();
    let mut writer = s.try_clone().expect("clone");
    let sent = std::thread::spawn(move || {
        // The server may close before it has read it all.
        let _ = writer.write_all(&request);
    });
    let mut got = Vec::new();
    let ended = loop {
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    sent.join().unwrap();
    assert!(ended.is_ok(), "the client was not closed: {ended:?}");
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert_eq!(raw(admin, &["STRLEN", "big"]), V::Int(1 << 20));
    // Counted as Redis 7.2 counts it.
    let V::BulkString(stats) = raw(admin, &["INFO", "stats"]) else {
        panic!()
    };
    assert!(
        String::from_utf8_lossy(&stats)
            .contains("\r\nclient_query_buffer_limit_disconnections:1\r\n"),
        "{}",
        String::from_utf8_lossy(&stats)
    );
}

fn rss(c: &mut redis::Connection) -> u64 {
    let V::BulkString(info) = raw(c, &["INFO", "memory"]) else {
        panic!()
    };
    let info = String::from_utf8(info).unwrap();
    let line = info
        .lines()
        .find(|l| l.starts_with("used_memory_rss:"))
        .expect("rss line");
    line["used_memory_rss:".len()..].trim().parse().unwrap()
}

#[test]
fn malformed_protocol_gets_redis_errors_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("node"), &[]);
    let other = &mut server.client();
    assert_eq!(raw(other, &["SET", "alive", "yes"]), V::Okay);
    let rss_before = rss(other);
    let cases: &[(&[u8], &str)] = &[
        (
            b"*3000000000\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*20000000\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\nfooz\r\n",
            "-ERR Protocol error: expected '$', got 'f'\r\n",
        ),
        (
            b"*1\r\nfoo\r\n",
            "-ERR Protocol error: expected '$', got 'f'\r\n",
        ),
        (
            b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$-10\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$2000000000\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$blabla\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*1\r\n$abc\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"set \"\"\"test-key\"\"\" test-value\r\n",
            "-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
    ];
    for (request, expected) in cases {
        assert_eq!(
            exchange(&server, request),
            *expected,
            "{:?}",
            String::from_utf8_lossy(request)
        );
        assert_eq!(
            raw(other, &["GET", "alive"]),
            V::BulkString(b"yes".to_vec())
        );
    }
    // Garbage without a newline: too big an inline request, once past 64 KiB.
    let garbage: Vec<u8> = (0..70_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    assert_eq!(
        exchange(&server, &garbage),
        "-ERR Protocol error: too big inline request\r\n"
    );
    // Empty queries and negative counts are skipped, the connection goes on.
    assert_eq!(
        exchange(&server, b"\r\n*-10\r\nPING\r\nQUIT\r\n"),
        "+PONG\r\n+OK\r\n"
    );
    // A huge claimed bulk that never arrives allocates nothing up front.
    let mut claims = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(server.resp).expect("connect");
        s.write_all(b"*2\r\n$3\r\nGET\r\n$30000000\r\nabc")
            .expect("send");
        claims.push(s);
    }
    assert_eq!(raw(other, &["PING"]), V::SimpleString("PONG".into()));
    let grown = rss(other).saturating_sub(rss_before);
    assert!(
        grown < 100 << 20,
        "RSS grew by {grown} bytes for 600 MB of claims"
    );
    drop(claims);
    assert_eq!(
        raw(other, &["GET", "alive"]),
        V::BulkString(b"yes".to_vec())
    );
}
