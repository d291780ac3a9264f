//! Every command against its Redis semantics, through a real Redis client
//! talking to a real `ferry serve` on a loopback port.

mod common;

use common::*;
use redis::Value as V;
use std::time::Duration;

fn bulk(s: &str) -> V {
    V::BulkString(s.as_bytes().to_vec())
}

fn ok() -> V {
    V::Okay
}

fn start() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("node"), &["--fsync", "always"]);
    (dir, server)
}

#[test]
fn strings_behave_as_in_redis() {
    let (_dir, server) = start();
    let c = &mut server.client();
    assert_eq!(raw(c, &["SET", "k", "v"]), ok());
    assert_eq!(raw(c, &["GET", "k"]), bulk("v"));
    assert_eq!(raw(c, &["GET", "missing"]), V::Nil);
    assert_eq!(raw(c, &["SET", "k", "v2", "NX"]), V::Nil);
    assert_eq!(raw(c, &["SET", "k2", "v", "XX"]), V::Nil);
    assert_eq!(raw(c, &["SET", "k", "v3", "XX", "GET"]), bulk("v"));
    assert_eq!(raw(c, &["SET", "new", "x", "GET"]), V::Nil);
    assert_eq!(raw(c, &["GET", "new"]), bulk("x"));
    assert_eq!(error(c, &["SET", "k", "v", "NX", "XX"]), "ERR syntax error");
    assert_eq!(
        error(c, &["SET", "k", "v", "EX", "0"]),
        "ERR invalid expire time in 'set' command"
    );
    assert_eq!(
        error(c, &["SET", "k", "v", "EX", "abc"]),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        error(c, &["SET", "k", "v", "EX", "10", "PX", "10"]),
        "ERR syntax error"
    );
    assert_eq!(raw(c, &["SETNX", "k", "z"]), V::Int(0));
    assert_eq!(raw(c, &["SETNX", "nx", "z"]), V::Int(1));
    assert_eq!(raw(c, &["GETSET", "nx", "y"]), bulk("z"));
    assert_eq!(raw(c, &["GETDEL", "nx"]), bulk("y"));
    assert_eq!(raw(c, &["EXISTS", "nx"]), V::Int(0));
    assert_eq!(raw(c, &["MSET", "a", "1", "b", "2"]), ok());
    assert_eq!(
        raw(c, &["MGET", "a", "b", "nope"]),
        V::Array(vec![bulk("1"), bulk("2"), V::Nil])
    );
    assert_eq!(
        error(c, &["MSET", "a", "1", "b"]),
        "ERR wrong number of arguments for 'mset' command"
    );
    assert_eq!(raw(c, &["MSETNX", "a", "9", "fresh", "1"]), V::Int(0));
    assert_eq!(raw(c, &["EXISTS", "fresh"]), V::Int(0));
    assert_eq!(raw(c, &["MSETNX", "fresh", "1", "fresh2", "2"]), V::Int(1));
    assert_eq!(raw(c, &["APPEND", "ap", "Hello"]), V::Int(5));
    assert_eq!(raw(c, &["APPEND", "ap", " World"]), V::Int(11));
    assert_eq!(raw(c, &["GET", "ap"]), bulk("Hello World"));
    assert_eq!(raw(c, &["STRLEN", "ap"]), V::Int(11));
    assert_eq!(raw(c, &["STRLEN", "nope"]), V::Int(0));
    assert_eq!(raw(c, &["GETRANGE", "ap", "0", "4"]), bulk("Hello"));
    assert_eq!(raw(c, &["GETRANGE", "ap", "-5", "-1"]), bulk("World"));
    assert_eq!(raw(c, &["GETRANGE", "ap", "5", "3"]), bulk(""));
    assert_eq!(raw(c, &["GETRANGE", "ap", "0", "100"]), bulk("Hello World"));
    assert_eq!(raw(c, &["SETRANGE", "ap", "6", "Redis"]), V::Int(11));
    assert_eq!(raw(c, &["GET", "ap"]), bulk("Hello Redis"));
    assert_eq!(raw(c, &["SETRANGE", "pad", "3", "x"]), V::Int(4));
    assert_eq!(raw(c, &["GET", "pad"]), V::BulkString(b"\0\0\0x".to_vec()));
    assert_eq!(raw(c, &["SETRANGE", "empty", "5", ""]), V::Int(0));
    assert_eq!(raw(c, &["EXISTS", "empty"]), V::Int(0));
    assert_eq!(
        error(c, &["SETRANGE", "ap", "-1", "x"]),
        "ERR offset is out of range"
    );
}

#[test]
fn counters_behave_as_in_redis() {
    let (_dir, server) = start();
    let c = &mut server.client();
    assert_eq!(raw(c, &["INCR", "n"]), V::Int(1));
    assert_eq!(raw(c, &["INCRBY", "n", "41"]), V::Int(42));
    assert_eq!(raw(c, &["DECR", "n"]), V::Int(41));
    assert_eq!(raw(c, &["DECRBY", "n", "40"]), V::Int(1));
    assert_eq!(raw(c, &["SET", "s", "abc"]), ok());
    assert_eq!(
        error(c, &["INCR", "s"]),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(raw(c, &["SET", "sp", " 1"]), ok());
    assert_eq!(
        error(c, &["INCR", "sp"]),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(raw(c, &["SET", "max", "9223372036854775807"]), ok());
    assert_eq!(
        error(c, &["INCR", "max"]),
        "ERR increment or decrement would overflow"
    );
    assert_eq!(
        error(c, &["INCRBY", "n", "x"]),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(raw(c, &["SET", "f", "10.50"]), ok());
    assert_eq!(raw(c, &["INCRBYFLOAT", "f", "0.1"]), bulk("10.6"));
    assert_eq!(raw(c, &["INCRBYFLOAT", "f", "-5"]), bulk("5.6"));
    assert_eq!(raw(c, &["INCRBYFLOAT", "g", "3"]), bulk("3"));
    assert_eq!(
        error(c, &["INCRBYFLOAT", "s", "1"]),
        "ERR value is not a valid float"
    );
    // INCR keeps the TTL.
    assert_eq!(raw(c, &["SET", "t", "1", "EX", "100"]), ok());
    assert_eq!(raw(c, &["INCR", "t"]), V::Int(2));
    let V::Int(ttl) = raw(c, &["TTL", "t"]) else {
        panic!()
    };
    assert!((99..=100).contains(&ttl), "{ttl}");
}

#[test]
fn keys_and_expiry_behave_as_in_redis() {
    let (_dir, server) = start();
    let c = &mut server.client();
    assert_eq!(raw(c, &["MSET", "a", "1", "b", "2", "c", "3"]), ok());
    assert_eq!(raw(c, &["DEL", "a", "b", "zz"]), V::Int(2));
    assert_eq!(raw(c, &["UNLINK", "c"]), V::Int(1));
    assert_eq!(raw(c, &["SET", "k", "v"]), ok());
    assert_eq!(raw(c, &["EXISTS", "k", "k", "no"]), V::Int(2));
    assert_eq!(raw(c, &["TYPE", "k"]), V::SimpleString("string".into()));
    assert_eq!(raw(c, &["TYPE", "no"]), V::SimpleString("none".into()));
    assert_eq!(raw(c, &["TTL", "k"]), V::Int(-1));
    assert_eq!(raw(c, &["TTL", "no"]), V::Int(-2));
    assert_eq!(raw(c, &["PTTL", "no"]), V::Int(-2));
    assert_eq!(raw(c, &["EXPIRETIME", "k"]), V::Int(-1));
    assert_eq!(raw(c, &["EXPIRE", "k", "100"]), V::Int(1));
    let V::Int(ttl) = raw(c, &["TTL", "k"]) else {
        panic!()
    };
    assert!((99..=100).contains(&ttl));
    let V::Int(pttl) = raw(c, &["PTTL", "k"]) else {
        panic!()
    };
    assert!(pttl > 98_000 && pttl <= 100_000);
    assert_eq!(raw(c, &["EXPIRE", "k", "50", "GT"]), V::Int(0));
    assert_eq!(raw(c, &["EXPIRE", "k", "200", "GT"]), V::Int(1));
    assert_eq!(raw(c, &["EXPIRE", "k", "300", "LT"]), V::Int(0));
    assert_eq!(raw(c, &["EXPIRE", "k", "300", "NX"]), V::Int(0));
    assert_eq!(raw(c, &["EXPIRE", "k", "300", "XX"]), V::Int(1));
    assert_eq!(
        error(c, &["EXPIRE", "k", "1", "NX", "XX"]),
        "ERR NX and XX, GT or LT options at the same time are not compatible"
    );
    assert_eq!(
        error(c, &["EXPIRE", "k", "1", "GT", "LT"]),
        "ERR GT and LT options at the same time are not compatible"
    );
    assert_eq!(raw(c, &["PERSIST", "k"]), V::Int(1));
    assert_eq!(raw(c, &["PERSIST", "k"]), V::Int(0));
    assert_eq!(raw(c, &["TTL", "k"]), V::Int(-1));
    // GT never applies to a key without expiry; LT always does.
    assert_eq!(raw(c, &["EXPIRE", "k", "100", "GT"]), V::Int(0));
    assert_eq!(raw(c, &["EXPIRE", "k", "100", "LT"]), V::Int(1));
    assert_eq!(raw(c, &["EXPIRE", "missing", "100"]), V::Int(0));
    assert_eq!(raw(c, &["EXPIREAT", "k", "4102444800"]), V::Int(1));
    assert_eq!(raw(c, &["EXPIRETIME", "k"]), V::Int(4_102_444_800));
    assert_eq!(raw(c, &["PEXPIREAT", "k", "4102444800123"]), V::Int(1));
    assert_eq!(raw(c, &["EXPIRETIME", "k"]), V::Int(4_102_444_800));
    // A time in the past deletes the key.
    assert_eq!(raw(c, &["EXPIRE", "k", "-1"]), V::Int(1));
    assert_eq!(raw(c, &["EXISTS", "k"]), V::Int(0));
    assert_eq!(raw(c, &["SET", "p", "v", "PX", "1"]), ok());
    assert_eq!(raw(c, &["SET", "q", "v", "EXAT", "1"]), ok());
    assert_eq!(raw(c, &["GET", "q"]), V::Nil);
    // A short TTL: the key is hidden once it passes (waited for, bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while raw(c, &["GET", "p"]) != V::Nil {
        assert!(
            std::time::Instant::now() < deadline,
            "the key never expired"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(raw(c, &["PEXPIRE", "never", "10"]), V::Int(0));
    // SET clears the TTL unless KEEPTTL.
    assert_eq!(raw(c, &["SET", "t", "v", "EX", "100"]), ok());
    assert_eq!(raw(c, &["SET", "t", "v2", "KEEPTTL"]), ok());
    assert!(matches!(raw(c, &["TTL", "t"]), V::Int(n) if n > 0));
    assert_eq!(raw(c, &["SET", "t", "v3"]), ok());
    assert_eq!(raw(c, &["TTL", "t"]), V::Int(-1));
    // GETEX.
    assert_eq!(raw(c, &["GETEX", "t", "EX", "100"]), bulk("v3"));
    assert!(matches!(raw(c, &["TTL", "t"]), V::Int(n) if n > 0));
    assert_eq!(raw(c, &["GETEX", "t", "PERSIST"]), bulk("v3"));
    assert_eq!(raw(c, &["TTL", "t"]), V::Int(-1));
    assert_eq!(raw(c, &["GETEX", "nope"]), V::Nil);
    // RENAME keeps value and TTL.
    assert_eq!(raw(c, &["SET", "r1", "v", "EX", "100"]), ok());
    assert_eq!(raw(c, &["RENAME", "r1", "r2"]), ok());
    assert_eq!(raw(c, &["GET", "r2"]), bulk("v"));
    assert!(matches!(raw(c, &["TTL", "r2"]), V::Int(n) if n > 0));
    assert_eq!(raw(c, &["EXISTS", "r1"]), V::Int(0));
    assert_eq!(error(c, &["RENAME", "r1", "r3"]), "ERR no such key");
}

#[test]
fn hashes_behave_as_in_redis() {
    let (_dir, server) = start();
    let c = &mut server.client();
    assert_eq!(raw(c, &["HSET", "h", "a", "1", "b", "2"]), V::Int(2));
    assert_eq!(raw(c, &["HSET", "h", "a", "10", "c", "3"]), V::Int(1));
    assert_eq!(raw(c, &["HGET", "h", "a"]), bulk("10"));
    assert_eq!(raw(c, &["HGET", "h", "zz"]), V::Nil);
    assert_eq!(raw(c, &["HGET", "nokey", "a"]), V::Nil);
    assert_eq!(raw(c, &["HLEN", "h"]), V::Int(3));
    assert_eq!(
        raw(c, &["HMGET", "h", "a", "x", "c"]),
        V::Array(vec![bulk("10"), V::Nil, bulk("3")])
    );
    assert_eq!(
        raw(c, &["HGETALL", "h"]),
        V::Array(vec![
            bulk("a"),
            bulk("10"),
            bulk("b"),
            bulk("2"),
            bulk("c"),
            bulk("3")
        ])
    );
    assert_eq!(
        raw(c, &["HKEYS", "h"]),
        V::Array(vec![bulk("a"), bulk("b"), bulk("c")])
    );
    assert_eq!(
        raw(c, &["HVALS", "h"]),
        V::Array(vec![bulk("10"), bulk("2"), bulk("3")])
    );
    assert_eq!(raw(c, &["HEXISTS", "h", "b"]), V::Int(1));
    assert_eq!(raw(c, &["HEXISTS", "h", "x"]), V::Int(0));
    assert_eq!(raw(c, &["HSTRLEN", "h", "a"]), V::Int(2));
    assert_eq!(raw(c, &["HSETNX", "h", "a", "x"]), V::Int(0));
    assert_eq!(raw(c, &["HSETNX", "h", "d", "4"]), V::Int(1));
    assert_eq!(raw(c, &["HDEL", "h", "d", "d", "zz"]), V::Int(1));
    assert_eq!(raw(c, &["HINCRBY", "h", "a", "5"]), V::Int(15));
    assert_eq!(raw(c, &["HINCRBY", "h", "new", "-2"]), V::Int(-2));
    assert_eq!(raw(c, &["HINCRBYFLOAT", "h", "fl", "1.5"]), bulk("1.5"));
    assert_eq!(raw(c, &["HSET", "h", "txt", "abc"]), V::Int(1));
    assert_eq!(
        error(c, &["HINCRBY", "h", "txt", "1"]),
        "ERR hash value is not an integer"
    );
    assert_eq!(
        error(c, &["HINCRBYFLOAT", "h", "txt", "1"]),
        "ERR hash value is not a float"
    );
    assert_eq!(
        error(c, &["HSET", "h", "a"]),
        "ERR wrong number of arguments for 'hset' command"
    );
    assert_eq!(raw(c, &["TYPE", "h"]), V::SimpleString("hash".into()));
    // Wrong types, both ways.
    assert_eq!(raw(c, &["SET", "s", "v"]), ok());
    let wrongtype = "WRONGTYPE Operation against a key holding the wrong kind of value";
    for args in [
        &["HSET", "s", "f", "v"][..],
        &["HGET", "s", "f"],
        &["HGETALL", "s"],
        &["HLEN", "s"],
        &["HDEL", "s", "f"],
        &["HINCRBY", "s", "f", "1"],
        &["GET", "h"],
        &["APPEND", "h", "x"],
        &["INCR", "h"],
        &["GETSET", "h", "v"],
        &["SET", "h", "v", "GET"],
        &["STRLEN", "h"],
    ] {
        assert_eq!(error(c, args), wrongtype, "{args:?}");
    }
    // SET over a hash replaces it, fields and all.
    assert_eq!(raw(c, &["SET", "h", "plain"]), ok());
    assert_eq!(raw(c, &["GET", "h"]), bulk("plain"));
    assert_eq!(error(c, &["HGET", "h", "a"]), wrongtype);
    assert_eq!(raw(c, &["DEL", "h"]), V::Int(1));
    assert_eq!(raw(c, &["HSET", "h", "only", "1"]), V::Int(1));
    assert_eq!(
        raw(c, &["HGETALL", "h"]),
        V::Array(vec![bulk("only"), bulk("1")])
    );
    assert_eq!(raw(c, &["HSET", "h2", "x", "1"]), V::Int(1));
    assert_eq!(raw(c, &["HDEL", "h2", "x"]), V::Int(1));
    assert_eq!(raw(c, &["EXISTS", "h2"]), V::Int(0));
    // RENAME of a hash moves its fields.
    assert_eq!(raw(c, &["HSET", "src", "f1", "v1", "f2", "v2"]), V::Int(2));
    assert_eq!(raw(c, &["RENAME", "src", "dst"]), ok());
    assert_eq!(
        raw(c, &["HGETALL", "dst"]),
        V::Array(vec![bulk("f1"), bulk("v1"), bulk("f2"), bulk("v2")])
    );
    assert_eq!(raw(c, &["HLEN", "src"]), V::Int(0));
    // HSCAN returns every field across calls.
    for i in 0..50 {
        raw(c, &["HSET", "big", &format!("f{i:02}"), &i.to_string()]);
    }
    // ... in one call from cursor 0 for a small hash, as Redis's listpack.
    let V::Array(parts) = raw(c, &["HSCAN", "big", "0", "COUNT", "7"]) else {
        panic!()
    };
    assert_eq!(parts[0], bulk("0"));
    assert!(matches!(&parts[1], V::Array(items) if items.len() == 100));
    let V::Array(parts) = raw(c, &["HSCAN", "big", "0", "MATCH", "f1*", "COUNT", "100"]) else {
        panic!()
    };
    let V::Array(items) = &parts[1] else { panic!() };
    assert_eq!(items.len(), 20);
    for i in 50..600 {
        raw(c, &["HSET", "big", &format!("f{i:02}"), &i.to_string()]);
    }
    let mut cursor = "0".to_string();
    let mut seen = Vec::new();
    let mut calls = 0;
    for _ in 0..100 {
        calls += 1;
        let V::Array(parts) = raw(c, &["HSCAN", "big", &cursor, "COUNT", "7"]) else {
            panic!()
        };
        let V::BulkString(next) = &parts[0] else {
            panic!()
        };
        let V::Array(items) = &parts[1] else { panic!() };
        seen.extend(items.chunks(2).map(|p| p[0].clone()));
        cursor = String::from_utf8(next.clone()).unwrap();
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(cursor, "0");
    assert_eq!(seen.len(), 600);
    assert_eq!(calls, 600_usize.div_ceil(7), "COUNT fields a call past 512");

    // Pipelined writes see each other's field changes before they are
    // applied: HDEL then HSETNX of the same field sets it again.
    assert_eq!(raw(c, &["HSET", "p", "f", "1", "g", "2"]), V::Int(2));
    let replies: Vec<V> = redis::pipe()
        .cmd("HDEL")
        .arg("p")
        .arg("f")
        .cmd("HSETNX")
        .arg("p")
        .arg("f")
        .arg("3")
        .cmd("HINCRBY")
        .arg("p")
        .arg("f")
        .arg("1")
        .query(c)
        .expect("pipeline");
    assert_eq!(replies, vec![V::Int(1), V::Int(1), V::Int(4)]);
    assert_eq!(raw(c, &["HGET", "p", "f"]), bulk("4"));
}

#[test]
fn copy_renamenx_touch_randomkey_and_time_behave_as_in_redis() {
    let (_dir, server) = start();
    let c = &mut server.client();
    // COPY: value and expiry, the source left as it was.
    raw(c, &["SET", "s", "v", "EX", "1000"]);
    assert_eq!(raw(c, &["COPY", "s", "s2"]), V::Int(1));
    assert_eq!(raw(c, &["GET", "s2"]), bulk("v"));
    let ttl = |c: &mut redis::Connection, k: &str| match raw(c, &["TTL", k]) {
        V::Int(t) => t,
        other => panic!("TTL: {other:?}"),
    };
    assert!((990..=1000).contains(&ttl(c, "s2")));
    assert_eq!(raw(c, &["GET", "s"]), bulk("v"));
    // An existing destination only with REPLACE.
    raw(c, &["SET", "d", "old"]);
    assert_eq!(raw(c, &["COPY", "s", "d"]), V::Int(0));
    assert_eq!(raw(c, &["GET", "d"]), bulk("old"));
    assert_eq!(raw(c, &["COPY", "s", "d", "replace", "DB", "0"]), V::Int(1));
    assert_eq!(raw(c, &["GET", "d"]), bulk("v"));
    assert_eq!(raw(c, &["COPY", "nosuch", "d2"]), V::Int(0));
    // A hash: its fields, then each copy on its own.
    raw(c, &["HSET", "h", "f1", "a", "f2", "b"]);
    assert_eq!(raw(c, &["COPY", "h", "d", "REPLACE"]), V::Int(1));
    assert_eq!(raw(c, &["TYPE", "d"]), V::SimpleString("hash".into()));
    assert_eq!(raw(c, &["HDEL", "h", "f1"]), V::Int(1));
    assert_eq!(raw(c, &["HGET", "d", "f1"]), bulk("a"));
    assert_eq!(raw(c, &["HLEN", "d"]), V::Int(2));
    // A long string, stored in chunks.
    let long = "z".repeat(200 << 10);
    raw(c, &["SET", "long", &long]);
    assert_eq!(raw(c, &["COPY", "long", "long2"]), V::Int(1));
    assert_eq!(raw(c, &["APPEND", "long", "!"]), V::Int((200 << 10) + 1));
    assert_eq!(raw(c, &["GET", "long2"]), bulk(&long));
    assert_eq!(
        error(c, &["COPY", "s", "s"]),
        "ERR source and destination objects are the same"
    );
    assert_eq!(
        error(c, &["COPY", "s", "x", "DB", "1"]),
        "ERR DB index is out of range"
    );
    assert!(error(c, &["COPY", "s", "x", "DB", "z"]).starts_with("ERR value is not an integer"));
    assert_eq!(error(c, &["COPY", "s", "x", "DB"]), "ERR syntax error");
    assert_eq!(
        error(c, &["COPY", "s", "x", "REPLACE", "NOW"]),
        "ERR syntax error"
    );
    // RENAMENX: not over an existing key, nor to itself.
    assert_eq!(raw(c, &["RENAMENX", "s", "d"]), V::Int(0));
    assert_eq!(raw(c, &["RENAMENX", "s", "s"]), V::Int(0));
    assert_eq!(raw(c, &["RENAMENX", "s", "moved"]), V::Int(1));
    assert_eq!(raw(c, &["GET", "moved"]), bulk("v"));
    assert!((990..=1000).contains(&ttl(c, "moved")));
    assert_eq!(raw(c, &["EXISTS", "s"]), V::Int(0));
    assert_eq!(error(c, &["RENAMENX", "s", "t"]), "ERR no such key");
    // TOUCH counts the keys that exist, each time named.
    assert_eq!(raw(c, &["TOUCH", "moved", "d", "nosuch", "d"]), V::Int(3));
    // TIME: the server's clock.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (secs, micros): (u64, u64) = cmd(&["TIME"]).query(c).expect("TIME");
    assert!(secs.abs_diff(now) <= 5, "{secs} {now}");
    assert!(micros < 1_000_000);
    // RANDOMKEY: nil with no key, else one that exists, not always the same.
    assert_eq!(raw(c, &["FLUSHALL"]), ok());
    assert_eq!(raw(c, &["RANDOMKEY"]), V::Nil);
    raw(c, &["SET", "only", "1"]);
    assert_eq!(raw(c, &["RANDOMKEY"]), bulk("only"));
    let mut mset = vec!["MSET".to_string()];
    for i in 0..50 {
        mset.extend([format!("r{i}"), "x".into()]);
    }
    let mset: Vec<&str> = mset.iter().map(String::as_str).collect();
    assert_eq!(raw(c, &mset), ok());
    let mut drawn = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let key: String = cmd(&["RANDOMKEY"]).query(c).expect("RANDOMKEY");
        assert_eq!(raw(c, &["EXISTS", &key]), V::Int(1), "{key}");
        drawn.insert(key);
    }
    assert!(drawn.len() >= 10, "{} keys drawn", drawn.len());
    // Expired keys are never drawn.
    assert_eq!(raw(c, &["FLUSHALL"]), ok());
    raw(c, &["SET", "gone", "1", "PX", "1"]);
    raw(c, &["SET", "live", "1"]);
    // Due: PTTL says it is gone (bounded wait on that, not a sleep).
    assert!(wait_until(Duration::from_secs(5), || raw(
        c,
        &["PTTL", "gone"]
    ) == V::Int(-2)));
    for _ in 0..20 {
        let key: Option<String> = cmd(&["RANDOMKEY"]).query(c).expect("RANDOMKEY");
        assert_eq!(key.as_deref(), Some("live"));
    }
}

#[test]
fn hrandfield_draws_fields_of_the_hash() {
    let (_dir, server) = start();
    let c = &mut server.client();
    let mut hset = vec!["HSET".to_string(), "h".to_string()];
    for i in 0..10 {
        hset.extend([format!("f{i}"), format!("v{i}")]);
    }
    let hset: Vec<&str> = hset.iter().map(String::as_str).collect();
    assert_eq!(raw(c, &hset), V::Int(10));
    let field = |f: &str| f.len() == 2 && f.starts_with('f');
    let mut drawn = std::collections::BTreeSet::new();
    for _ in 0..100 {
        let f: String = cmd(&["HRANDFIELD", "h"]).query(c).expect("HRANDFIELD");
        assert!(field(&f), "{f}");
        drawn.insert(f);
    }
    assert!(drawn.len() >= 3, "{drawn:?}");
    // A positive count: distinct fields, all of them past the hash's size.
    for (count, want) in [(5, 5), (10, 10), (20, 10)] {
        let fields: Vec<String> = cmd(&["HRANDFIELD", "h", &count.to_string()])
            .query(c)
            .expect("HRANDFIELD");
        let distinct: std::collections::BTreeSet<&String> = fields.iter().collect();
        assert_eq!((fields.len(), distinct.len()), (want, want), "{fields:?}");
        assert!(fields.iter().all(|f| field(f)));
    }
    // A negative one: that many, with repeats, each with its own value.
    let pairs: Vec<String> = cmd(&["HRANDFIELD", "h", "-30", "WITHVALUES"])
        .query(c)
        .expect("HRANDFIELD");
    assert_eq!(pairs.len(), 60);
    for pair in pairs.chunks(2) {
        assert_eq!(pair[1], format!("v{}", &pair[0][1..]), "{pair:?}");
    }
    assert!(
        error(c, &["HRANDFIELD", "h", "-2000000"]).contains("the most fields HRANDFIELD gives")
    );
    assert_eq!(raw(c, &["HRANDFIELD", "nosuch"]), V::Nil);
    assert_eq!(
        raw(c, &["HRANDFIELD", "nosuch", "-2000000"]),
        V::Array(Vec::new())
    );
}

/// One SCAN call: the next cursor and the keys.
fn scan_page(c: &mut redis::Connection, cursor: &str, count: usize) -> (String, Vec<String>) {
    let (next, keys): (String, Vec<String>) = cmd(&["SCAN", cursor, "COUNT", &count.to_string()])
        .query(c)
        .expect("SCAN");
    (next, keys)
}

/// A SCAN cursor is a position in the keyspace, not something the server
/// remembers: a scan goes on across a restart of the node, and every key
/// comes back.
#[test]
fn a_scan_goes_on_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("node");
    let mut server = Server::start(&data, &[]);
    let all: std::collections::BTreeSet<String> = (0..300).map(|i| format!("k:{i}")).collect();
    let mut c = server.client();
    let mut mset = vec!["MSET"];
    for key in &all {
        mset.extend([key.as_str(), "v"]);
    }
    assert_eq!(raw(&mut c, &mset), ok());
    let (mut cursor, first) = scan_page(&mut c, "0", 50);
    assert_ne!(cursor, "0");
    let mut seen: std::collections::BTreeSet<String> = first.into_iter().collect();
    drop(c);
    assert!(server.terminate().success());
    let server = Server::start(&data, &[]);
    let mut c = server.client();
    for _ in 0..100 {
        let (next, keys) = scan_page(&mut c, &cursor, 50);
        seen.extend(keys);
        cursor = next;
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(cursor, "0", "the scan ended");
    assert_eq!(seen, all);
}

#[test]
fn scan_keys_and_dbsize_cover_the_keyspace() {
    let (_dir, server) = start();
    let c = &mut server.client();
    for i in 0..120 {
        raw(c, &["SET", &format!("user:{i}"), "x"]);
    }
    raw(c, &["HSET", "user:h", "f", "v"]);
    assert_eq!(raw(c, &["DBSIZE"]), V::Int(121));
    let V::Array(keys) = raw(c, &["KEYS", "user:1?"]) else {
        panic!()
    };
    assert_eq!(keys.len(), 10);
    let mut cursor = "0".to_string();
    let mut all = std::collections::BTreeSet::new();
    let mut hashes = 0;
    for _ in 0..1000 {
        let V::Array(parts) = raw(c, &["SCAN", &cursor, "COUNT", "17"]) else {
            panic!()
        };
        let (V::BulkString(next), V::Array(items)) = (&parts[0], &parts[1]) else {
            panic!()
        };
        all.extend(items.iter().map(|v| format!("{v:?}")));
        cursor = String::from_utf8(next.clone()).unwrap();
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(all.len(), 121);
    loop {
        let V::Array(parts) = raw(c, &["SCAN", &cursor, "TYPE", "hash", "COUNT", "1000"]) else {
            panic!()
        };
        let (V::BulkString(next), V::Array(items)) = (&parts[0], &parts[1]) else {
            panic!()
        };
        hashes += items.len();
        cursor = String::from_utf8(next.clone()).unwrap();
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(hashes, 1);
    // A cursor is a position, any number one: as Redis (which reads it
    // with C's `strtoul`, a minus wrapping around), only what is not a
    // number is refused.
    for bad in [
        "x1",
        " 1",
        "1 ",
        "--1",
        "-",
        "+",
        "18446744073709551616",
        "1.0",
    ] {
        assert_eq!(error(c, &["SCAN", bad]), "ERR invalid cursor", "{bad:?}");
    }
    for last in ["18446744073709551615", "-1", "-0000000000000000000001"] {
        let V::Array(parts) = raw(c, &["SCAN", last]) else {
            panic!()
        };
        assert_eq!(
            parts,
            vec![bulk("0"), V::Array(Vec::new())],
            "past the end: {last}"
        );
    }
    for first in ["-0", "+0", "00"] {
        let V::Array(parts) = raw(c, &["SCAN", first, "COUNT", "1000"]) else {
            panic!()
        };
        let V::Array(items) = &parts[1] else { panic!() };
        assert_eq!((&parts[0], items.len()), (&bulk("0"), 121), "{first}");
    }
    assert_eq!(raw(c, &["FLUSHALL"]), ok());
    assert_eq!(raw(c, &["DBSIZE"]), V::Int(0));
    assert_eq!(raw(c, &["GET", "user:1"]), V::Nil);
    raw(c, &["SET", "after", "1"]);
    assert_eq!(raw(c, &["FLUSHDB"]), ok());
    assert_eq!(raw(c, &["DBSIZE"]), V::Int(0));
}

#[test]
fn connection_and_server_commands_answer_like_redis() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("node"), &["--requirepass", "sesame"]);
    let c = &mut server.client();
    assert_eq!(error(c, &["GET", "k"]), "NOAUTH Authentication required.");
    assert_eq!(
        error(c, &["AUTH", "wrong"]),
        "WRONGPASS invalid username-password pair or user is disabled."
    );
    assert_eq!(raw(c, &["AUTH", "sesame"]), ok());
    assert_eq!(raw(c, &["PING"]), V::SimpleString("PONG".into()));
    assert_eq!(raw(c, &["PING", "hi"]), bulk("hi"));
    assert_eq!(raw(c, &["ECHO", "hey"]), bulk("hey"));
    assert_eq!(raw(c, &["SELECT", "0"]), ok());
    assert_eq!(error(c, &["SELECT", "1"]), "ERR DB index is out of range");
    assert_eq!(raw(c, &["CLIENT", "SETNAME", "me"]), ok());
    assert_eq!(raw(c, &["CLIENT", "GETNAME"]), bulk("me"));
    let V::Int(id) = raw(c, &["CLIENT", "ID"]) else {
        panic!()
    };
    let V::BulkString(info) = raw(c, &["CLIENT", "INFO"]) else {
        panic!()
    };
    let info = String::from_utf8(info).unwrap();
    assert!(
        info.contains(&format!("id={id} ")) && info.contains("name=me"),
        "{info}"
    );
    // The client library says who it is (CLIENT SETINFO, as Redis 7.2
    // takes it), and CLIENT LIST shows it.
    assert_eq!(raw(c, &["CLIENT", "SETINFO", "LIB-NAME", "app-lib"]), ok());
    assert_eq!(raw(c, &["CLIENT", "SETINFO", "lib-ver", "1.2.3"]), ok());
    assert_eq!(
        error(c, &["CLIENT", "SETINFO", "color", "red"]),
        "ERR Unrecognized option 'color'"
    );
    assert_eq!(
        error(c, &["CLIENT", "SETINFO", "LIB-NAME", "a b"]),
        "ERR LIB-NAME cannot contain spaces, newlines or special characters."
    );
    let other = &mut server.client();
    assert_eq!(raw(other, &["AUTH", "sesame"]), ok());
    let V::BulkString(list) = raw(other, &["CLIENT", "LIST"]) else {
        panic!()
    };
    let list = String::from_utf8(list).unwrap();
    assert!(
        list.lines().any(|l| l.starts_with(&format!("id={id} "))
            && l.contains("name=me")
            && l.ends_with("lib-name=app-lib lib-ver=1.2.3")),
        "{list}"
    );
    // Redis 7's filters: by type (every RESP client is a normal one), by
    // id in the order given.
    let lines = |c: &mut redis::Connection, args: &[&str]| -> Vec<String> {
        let V::BulkString(text) = raw(c, args) else {
            panic!("{args:?}")
        };
        String::from_utf8(text)
            .unwrap()
            .lines()
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect()
    };
    let V::Int(other_id) = raw(other, &["CLIENT", "ID"]) else {
        panic!()
    };
    assert_eq!(
        lines(other, &["CLIENT", "LIST", "TYPE", "normal"]).len(),
        list.lines().count()
    );
    assert!(lines(other, &["CLIENT", "LIST", "TYPE", "replica"]).is_empty());
    assert_eq!(
        lines(
            other,
            &[
                "client",
                "list",
                "id",
                &other_id.to_string(),
                "99999",
                &id.to_string()
            ]
        ),
        [format!("id={other_id}"), format!("id={id}")]
    );
    assert_eq!(
        error(other, &["CLIENT", "LIST", "TYPE", "nosuch"]),
        "ERR Unknown client type 'nosuch'"
    );
    assert_eq!(
        error(other, &["CLIENT", "LIST", "ID", "x"]),
        "ERR Invalid client ID"
    );
    assert_eq!(error(other, &["CLIENT", "LIST", "ID"]), "ERR syntax error");
    assert_eq!(error(other, &["CLIENT", "LIST", "x"]), "ERR syntax error");
    assert_eq!(raw(c, &["CLIENT", "SETINFO", "LIB-VER", ""]), ok());
    let V::BulkString(info) = raw(c, &["CLIENT", "INFO"]) else {
        panic!()
    };
    assert!(
        String::from_utf8(info)
            .unwrap()
            .ends_with("lib-name=app-lib lib-ver=\n")
    );
    assert!(matches!(raw(c, &["COMMAND", "COUNT"]), V::Int(n) if n >= 60));
    // COMMAND LIST: every command and subcommand, or those a filter keeps.
    let names = |c: &mut redis::Connection, args: &[&str]| -> Vec<String> {
        let V::Array(names) = raw(c, args) else {
            panic!("{args:?}")
        };
        names
            .into_iter()
            .map(|n| match n {
                V::BulkString(b) => String::from_utf8(b).unwrap(),
                other => panic!("{other:?}"),
            })
            .collect()
    };
    let all = names(c, &["COMMAND", "LIST"]);
    assert!(all.contains(&"client|kill".to_string()) && all.contains(&"hset".to_string()));
    let mut h = names(c, &["COMMAND", "LIST", "FILTERBY", "PATTERN", "hinc*"]);
    h.sort();
    assert_eq!(h, ["hincrby", "hincrbyfloat"]);
    let writes = names(c, &["COMMAND", "LIST", "FILTERBY", "ACLCAT", "write"]);
    assert!(writes.contains(&"set".to_string()) && !writes.contains(&"get".to_string()));
    let reads = names(c, &["COMMAND", "LIST", "FILTERBY", "ACLCAT", "READ"]);
    assert!(reads.contains(&"get".to_string()) && !reads.contains(&"set".to_string()));
    // Categories are named without Redis's `@`, as Redis takes them here.
    assert!(names(c, &["COMMAND", "LIST", "FILTERBY", "ACLCAT", "@read"]).is_empty());
    let V::Array(get) = raw(c, &["COMMAND", "INFO", "get"]) else {
        panic!()
    };
    let V::Array(get) = &get[0] else { panic!() };
    assert_eq!(get[0], bulk("get"));
    assert_eq!(get[1], V::Int(2));
    assert_eq!(
        raw(c, &["CONFIG", "GET", "appendonly"]),
        V::Array(vec![bulk("appendonly"), bulk("yes")])
    );
    // The server's CPU seconds as /proc counts them, before and after.
    let cpu = || -> (f64, f64) {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", server.pid())).unwrap();
        let fields: Vec<f64> = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|f| f.parse::<f64>().unwrap() / 100.0)
            .collect();
        (fields[0], fields[1])
    };
    let cpu_before = cpu();
    let V::BulkString(info) = raw(c, &["INFO"]) else {
        panic!()
    };
    let info = String::from_utf8(info).unwrap();
    for field in [
        "redis_version:",
        "connected_clients:",
        "used_memory:",
        "aof_enabled:1",
        "role:master",
        "total_commands_processed:",
        "# CPU\r\nused_cpu_sys:",
        "# Modules\r\n",
        "cluster_enabled:0",
        "mem_fragmentation_ratio:",
        "rdb_last_bgsave_status:ok",
        "pubsub_channels:0",
    ] {
        assert!(info.contains(field), "INFO lacks {field}");
    }
    // The sections in Redis's order.
    let order: Vec<usize> = [
        "# Server",
        "# Clients",
        "# Memory",
        "# Persistence",
        "# Stats",
        "# Replication",
        "# CPU",
        "# Modules",
        "# Errorstats",
        "# Cluster",
        "# Keyspace",
    ]
    .iter()
    .map(|s| info.find(s).unwrap_or_else(|| panic!("INFO lacks {s}")))
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{info}");
    // The CPU time the process spent, in seconds.
    let cpu_after = cpu();
    let user: f64 = section_field(&info, "used_cpu_user");
    let sys: f64 = section_field(&info, "used_cpu_sys");
    assert!(
        (cpu_before.0..=cpu_after.0).contains(&user),
        "{cpu_before:?} {cpu_after:?} {info}"
    );
    assert!(
        (cpu_before.1..=cpu_after.1).contains(&sys),
        "{cpu_before:?} {cpu_after:?} {info}"
    );
    let V::BulkString(repl) = raw(c, &["INFO", "replication"]) else {
        panic!()
    };
    let repl = String::from_utf8(repl).unwrap();
    assert!(repl.starts_with("# Replication") && !repl.contains("# Server"));
    let V::Array(role) = raw(c, &["ROLE"]) else {
        panic!()
    };
    assert_eq!(role[0], bulk("master"));
    assert!(
        error(c, &["NOSUCHCMD", "a", "b"])
            .starts_with("ERR unknown command 'NOSUCHCMD', with args beginning with: 'a' 'b'")
    );
    assert_eq!(
        error(c, &["GET"]),
        "ERR wrong number of arguments for 'get' command"
    );
    assert_eq!(
        error(c, &["DEBUG", "NOSUCH"]),
        "ERR unknown subcommand or wrong number of arguments for 'NOSUCH'. Try DEBUG HELP."
    );
    // A pattern shows a parameter under both its names (in Redis's own
    // order, which its hashing decides).
    let V::Array(shown) = raw(c, &["CONFIG", "GET", "*read-only"]) else {
        panic!("CONFIG GET")
    };
    let mut names: Vec<V> = shown.into_iter().step_by(2).collect();
    names.sort_by_key(|n| format!("{n:?}"));
    assert_eq!(names, [bulk("replica-read-only"), bulk("slave-read-only")]);
    let V::Array(help) = raw(c, &["DEBUG", "HELP"]) else {
        panic!("DEBUG HELP")
    };
    assert!(help.contains(&V::SimpleString("DIGEST".into())), "{help:?}");
    // DEBUG DIGEST: 40 zeros when empty, changes with data, back when undone.
    let zero = "0".repeat(40);
    assert_eq!(raw(c, &["DEBUG", "DIGEST"]), V::SimpleString(zero.clone()));
    raw(c, &["SET", "d", "1"]);
    let V::SimpleString(d1) = raw(c, &["DEBUG", "DIGEST"]) else {
        panic!()
    };
    assert_ne!(d1, zero);
    raw(c, &["DEL", "d"]);
    assert_eq!(raw(c, &["DEBUG", "DIGEST"]), V::SimpleString(zero));
    // HELLO 3 switches to RESP3 (maps).
    let V::Map(hello) = raw(c, &["HELLO", "3"]) else {
        panic!("not a map")
    };
    assert!(hello.contains(&(bulk("proto"), V::Int(3))));
    raw(c, &["HSET", "h", "f", "v"]);
    assert_eq!(
        raw(c, &["HGETALL", "h"]),
        V::Map(vec![(bulk("f"), bulk("v"))])
    );
    assert_eq!(raw(c, &["GET", "nothing"]), V::Nil);
    // INFO and CLIENT's texts are verbatim strings, as Redis's.
    for args in [
        &["INFO", "server"][..],
        &["CLIENT", "INFO"],
        &["CLIENT", "LIST"],
    ] {
        match raw(c, args) {
            V::VerbatimString { format, text } => {
                assert_eq!(format, redis::VerbatimFormat::Text, "{args:?}");
                assert!(!text.is_empty(), "{args:?}");
            }
            other => panic!("{args:?}: {other:?}"),
        }
    }
    // RESET: RESP2 again, no name, logged out (a password is required).
    raw(c, &["CLIENT", "SETNAME", "named"]);
    assert_eq!(raw(c, &["RESET"]), V::SimpleString("RESET".into()));
    assert_eq!(
        error(c, &["HGETALL", "h"]),
        "NOAUTH Authentication required."
    );
    assert_eq!(raw(c, &["AUTH", "sesame"]), ok());
    assert_eq!(
        raw(c, &["HGETALL", "h"]),
        V::Array(vec![bulk("f"), bulk("v")])
    );
    assert_eq!(raw(c, &["CLIENT", "GETNAME"]), V::Nil);
    assert_eq!(raw(c, &["QUIT"]), ok());
}

/// CLIENT KILL closes the connections it matches (by ID, by address in
/// the old form and the new, by local address), each of them closed
/// whether it is idle or not; it skips the caller unless told not to,
/// and then answers before closing it.
#[test]
fn client_kill_closes_the_connections_it_matches() {
    let (_dir, server) = start();
    let c = &mut server.client();
    let field = |c: &mut redis::Connection, name: &str| -> String {
        let V::BulkString(info) = raw(c, &["CLIENT", "INFO"]) else {
            panic!()
        };
        let info = String::from_utf8(info).unwrap();
        info.split(' ')
            .find_map(|f| f.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} in {info}"))
            .to_string()
    };
    // A killed connection gets nothing more: its next command finds the
    // connection closed.
    let closed = |c: &mut redis::Connection| {
        cmd(&["PING"])
            .query::<V>(c)
            .is_err_and(|e| e.is_io_error() || e.is_connection_dropped())
    };
    let by_id = &mut server.client();
    let id = field(by_id, "id");
    assert_eq!(raw(c, &["CLIENT", "KILL", "ID", &id]), V::Int(1));
    assert!(closed(by_id), "killed by ID");
    assert_eq!(raw(c, &["CLIENT", "KILL", "ID", &id]), V::Int(0));

    let by_addr = &mut server.client();
    let addr = field(by_addr, "addr");
    assert_eq!(raw(c, &["CLIENT", "KILL", &addr]), ok());
    assert!(closed(by_addr), "killed by address, the old form");
    assert_eq!(error(c, &["CLIENT", "KILL", &addr]), "ERR No such client");

    let by_new_form = &mut server.client();
    let addr = field(by_new_form, "addr");
    assert_eq!(
        raw(c, &["CLIENT", "KILL", "ADDR", &addr, "TYPE", "normal"]),
        V::Int(1)
    );
    assert!(closed(by_new_form));

    // LADDR matches every connection to the port, the caller skipped.
    let (a, b) = (&mut server.client(), &mut server.client());
    let laddr = field(a, "laddr");
    assert_eq!(raw(b, &["PING"]), V::SimpleString("PONG".into()));
    assert_eq!(
        raw(c, &["CLIENT", "KILL", "LADDR", &laddr, "USER", "default"]),
        V::Int(2)
    );
    assert!(closed(a) && closed(b));
    assert_eq!(raw(c, &["PING"]), V::SimpleString("PONG".into()));

    // No client of these types here: replicas stream over gRPC.
    let other = &mut server.client();
    assert_eq!(raw(c, &["CLIENT", "KILL", "TYPE", "replica"]), V::Int(0));
    assert_eq!(raw(other, &["PING"]), V::SimpleString("PONG".into()));

    // Busy connections: one in a WAIT that no replica will end, one whose
    // client does not read the replies it asked for. Each closes once
    // killed, and leaves the client list.
    let listed = |c: &mut redis::Connection, id: &str, command: &str| {
        let V::BulkString(list) = raw(c, &["CLIENT", "LIST", "ID", id]) else {
            panic!()
        };
        let list = String::from_utf8_lossy(&list).into_owned();
        !list.is_empty() && list.contains(command)
    };
    let mut waiting = server.client();
    let waiting_id = field(&mut waiting, "id");
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(cmd(&["WAIT", "1", "0"]).query::<V>(&mut waiting));
    });
    // Under way once INFO counts it as blocked.
    assert!(wait_until(Duration::from_secs(10), || {
        let V::BulkString(clients) = raw(c, &["INFO", "clients"]) else {
            return false;
        };
        String::from_utf8_lossy(&clients).contains("blocked_clients:1\r\n")
    }));
    assert_eq!(raw(c, &["CLIENT", "KILL", "ID", &waiting_id]), V::Int(1));
    let ended = finished
        .recv_timeout(Duration::from_secs(10))
        .expect("a WAIT still running after its connection was killed");
    assert!(ended.is_err(), "{ended:?}");
    assert!(wait_until(Duration::from_secs(10), || !listed(
        c,
        &waiting_id,
        "id="
    )));
    let V::BulkString(clients) = raw(c, &["INFO", "clients"]) else {
        panic!()
    };
    assert!(String::from_utf8_lossy(&clients).contains("blocked_clients:0\r\n"));

    use std::io::{Read, Write};
    let big = "x".repeat(8 << 20);
    assert_eq!(raw(c, &["SET", "big", &big]), ok());
    let mut stuck = std::net::TcpStream::connect(server.resp).unwrap();
    stuck
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stuck
        .write_all(b"*2\r\n$6\r\nCLIENT\r\n$2\r\nID\r\n")
        .unwrap();
    let mut reply = [0u8; 32];
    let n = stuck.read(&mut reply).unwrap();
    let stuck_id = String::from_utf8_lossy(&reply[1..n]).trim().to_string();
    for _ in 0..4 {
        stuck
            .write_all(b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n")
            .unwrap();
    }
    // 32 MiB of replies fill the socket's buffers: the server waits on the
    // write, with GET as the last command it read, and shows the replies
    // it is writing.
    assert!(wait_until(Duration::from_secs(10), || listed(
        c, &stuck_id, "cmd=get"
    )));
    assert!(wait_until(Duration::from_secs(10), || listed(
        c,
        &stuck_id,
        " events=rw "
    )));
    let V::BulkString(line) = raw(c, &["CLIENT", "LIST", "ID", &stuck_id]) else {
        panic!()
    };
    let line = String::from_utf8_lossy(&line).into_owned();
    let figure = |name: &str| -> u64 {
        line.split(' ')
            .find_map(|f| f.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line}"))
    };
    assert!(figure("omem") >= 8 << 20, "{line}");
    assert!(figure("tot-mem") >= figure("omem"), "{line}");
    assert_eq!(raw(c, &["CLIENT", "KILL", "ID", &stuck_id]), V::Int(1));
    assert!(
        wait_until(Duration::from_secs(10), || !listed(c, &stuck_id, "id=")),
        "a connection stuck writing stayed after its kill"
    );
    drop(stuck);

    // The caller, when asked: the reply, then the close.
    let own = field(c, "id");
    assert_eq!(
        raw(c, &["CLIENT", "KILL", "ID", &own, "SKIPME", "no"]),
        V::Int(1)
    );
    assert!(closed(c), "the caller, after its reply");
    assert_eq!(raw(other, &["PING"]), V::SimpleString("PONG".into()));
}

/// `--maxclients` fits the open files limit, as Redis's does: ferry raises
/// the soft limit toward the hard one to fit it, and where the hard limit
/// is too low it serves fewer clients (a warning says so) and refuses the
/// next with Redis's error, instead of failing to accept.
#[test]
fn maxclients_fits_the_open_files_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let info_maxclients = |node: &Server| -> u64 {
        let V::BulkString(text) = raw(&mut node.client(), &["INFO", "clients"]) else {
            panic!()
        };
        String::from_utf8_lossy(&text)
            .lines()
            .find_map(|l| l.strip_prefix("maxclients:"))
            .expect("maxclients")
            .trim()
            .parse()
            .unwrap()
    };
    // Soft and hard at 300: 300 less the 256 kept for the node's own files.
    let low = Server::start_under_ulimit(&dir.path().join("low"), &[], "-n 300");
    assert_eq!(info_maxclients(&low), 44);
    assert!(
        low.stderr().contains("maxclients lowered"),
        "{}",
        low.stderr()
    );
    let clients: Vec<redis::Connection> = (0..44).map(|_| low.client()).collect();
    use std::io::Read;
    let mut refused = std::net::TcpStream::connect(low.resp).unwrap();
    refused
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reply = Vec::new();
    let _ = refused.read_to_end(&mut reply);
    assert_eq!(reply, b"-ERR max number of clients reached\r\n");
    drop(clients);
    // Their closes count once the node has read them: a new client gets
    // in then.
    let mut admitted = None;
    assert!(wait_until(Duration::from_secs(10), || {
        let client = redis::Client::open(low.url()).expect("client");
        admitted = client
            .get_connection_with_timeout(Duration::from_secs(10))
            .ok()
            .and_then(|mut c| cmd(&["PING"]).query::<String>(&mut c).is_ok().then_some(c));
        admitted.is_some()
    }));
    // CONFIG SET asks the same of the limit: past it, Redis's refusal with
    // what fits, and maxclients unchanged; within it, set.
    let c = &mut admitted.expect("admitted");
    assert_eq!(
        error(c, &["CONFIG", "SET", "maxclients", "1000"]),
        "ERR CONFIG SET failed (possibly related to argument 'maxclients') - \
         The operating system is not able to handle the specified number of clients, try with 44"
    );
    assert_eq!(info_maxclients(&low), 44);
    assert_eq!(raw(c, &["CONFIG", "SET", "maxclients", "10"]), ok());
    assert_eq!(info_maxclients(&low), 10);

    // Only the soft limit at 300: raised as far as the hard one lets it.
    let hard: u64 = std::fs::read_to_string("/proc/self/limits")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|h| h.parse().ok())
        .unwrap_or(u64::MAX);
    let raised = Server::start_under_ulimit(&dir.path().join("raised"), &[], "-Sn 300");
    let soft: u64 = std::fs::read_to_string(format!("/proc/{}/limits", raised.pid()))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert_eq!(soft, hard.min(10_000 + 256));
    assert_eq!(info_maxclients(&raised), soft.min(10_256) - 256);
}

#[test]
fn reads_are_served_from_the_read_cache_and_writes_replace_what_it_holds() {
    let (_dir, server) = start();
    let c = &mut server.client();
    let stat = |section: &str, field: &str| -> u64 {
        let value = server.info_field(section, field).expect(field);
        value.parse().expect("a number")
    };
    assert_eq!(
        raw(c, &["CONFIG", "GET", "read-cache-bytes"]),
        V::Array(vec![bulk("read-cache-bytes"), bulk("33554432")])
    );
    assert_eq!(stat("memory", "read_cache_entries"), 0);
    // A write fills it: the next read is a hit.
    raw(c, &["SET", "k", "one"]);
    assert_eq!(stat("memory", "read_cache_entries"), 1);
    assert!(stat("memory", "read_cache_bytes") > 0);
    let (hits, misses) = (
        stat("stats", "read_cache_hits"),
        stat("stats", "read_cache_misses"),
    );
    assert_eq!(raw(c, &["GET", "k"]), bulk("one"));
    assert_eq!(stat("stats", "read_cache_hits"), hits + 1);
    // A key read as absent is cached as absent.
    assert_eq!(raw(c, &["GET", "nothing"]), V::Nil);
    assert_eq!(raw(c, &["GET", "nothing"]), V::Nil);
    assert_eq!(stat("stats", "read_cache_misses"), misses + 1);
    assert_eq!(stat("stats", "read_cache_hits"), hits + 2);
    assert_eq!(stat("memory", "read_cache_entries"), 2);
    // Every kind of write is seen at once by the next read.
    raw(c, &["SET", "k", "two"]);
    assert_eq!(raw(c, &["GET", "k"]), bulk("two"));
    raw(c, &["APPEND", "k", "!"]);
    assert_eq!(raw(c, &["GET", "k"]), bulk("two!"));
    raw(c, &["PEXPIRE", "k", "1"]);
    assert!(wait_until(std::time::Duration::from_secs(5), || {
        cmd(&["GET", "k"])
            .query::<Option<String>>(c)
            .expect("GET")
            .is_none()
    }));
    raw(c, &["SET", "k", "three"]);
    assert_eq!(raw(c, &["TYPE", "k"]), V::SimpleString("string".into()));
    raw(c, &["DEL", "k"]);
    assert_eq!(raw(c, &["EXISTS", "k"]), V::Int(0));
    raw(c, &["HSET", "k", "f", "v"]);
    assert_eq!(raw(c, &["TYPE", "k"]), V::SimpleString("hash".into()));
    raw(c, &["FLUSHALL"]);
    assert_eq!(raw(c, &["EXISTS", "k"]), V::Int(0));
    assert_eq!(raw(c, &["GET", "k"]), V::Nil);
}

#[test]
fn a_read_cache_of_size_zero_is_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &["--read-cache-bytes", "0"]);
    let c = &mut server.client();
    raw(c, &["SET", "k", "v"]);
    for _ in 0..3 {
        assert_eq!(raw(c, &["GET", "k"]), bulk("v"));
    }
    assert_eq!(
        server.info_field("stats", "read_cache_hits").as_deref(),
        Some("0")
    );
    assert_eq!(
        server.info_field("memory", "read_cache_entries").as_deref(),
        Some("0")
    );
}

/// A client's pipelined writes run together on the server, and every other
/// command in the pipeline (a read, a refused write, an unknown command)
/// comes between them in order: each reply is the one Redis would give.
#[test]
fn pipelined_writes_reads_and_errors_answer_in_order() {
    let (_dir, server) = start();
    let c = &mut server.client();
    let mut pipe = redis::pipe();
    // Each reply: a value, or an error's code.
    let mut expected: Vec<Result<V, &str>> = Vec::new();
    let mut incrs = 0;
    for i in 0..300u64 {
        match i % 6 {
            0 | 1 => {
                incrs += 1;
                pipe.cmd("INCR").arg("n");
                expected.push(Ok(V::Int(incrs)));
            }
            2 => {
                pipe.cmd("SET").arg(format!("k{i}")).arg(i);
                expected.push(Ok(ok()));
            }
            3 => {
                // Reads what the write just before it did.
                pipe.cmd("GET").arg(format!("k{}", i - 1));
                expected.push(Ok(bulk(&(i - 1).to_string())));
            }
            4 => {
                pipe.cmd("HSET").arg("n").arg("f").arg("v");
                expected.push(Err("WRONGTYPE"));
            }
            _ => {
                pipe.cmd("NOSUCHCOMMAND").arg(i);
                expected.push(Err("ERR"));
            }
        }
    }
    let replies: Vec<V> = pipe.ignore_errors().query(c).expect("pipeline");
    assert_eq!(replies.len(), expected.len());
    for (i, (reply, want)) in replies.iter().zip(&expected).enumerate() {
        match (reply, want) {
            (V::ServerError(e), Err(code)) => assert_eq!(e.code(), *code, "reply {i}"),
            (reply, Ok(want)) => assert_eq!(reply, want, "reply {i}"),
            (reply, Err(code)) => panic!("reply {i}: {reply:?}, not {code}"),
        }
    }
    assert_eq!(raw(c, &["GET", "n"]), bulk(&incrs.to_string()));
}

/// CLIENT LIST shows each connection's last command, name and protocol as
/// they change.
#[test]
fn the_client_list_follows_each_connections_last_command_and_name() {
    let (_dir, server) = start();
    let c = &mut server.client();
    let watcher = &mut server.client();
    let line_of = |watcher: &mut redis::Connection, id: i64| -> String {
        let text: String = cmd(&["CLIENT", "LIST"])
            .query(watcher)
            .expect("CLIENT LIST");
        text.lines()
            .find(|l| l.starts_with(&format!("id={id} ")))
            .expect("the client is listed")
            .to_owned()
    };
    let V::Int(id) = raw(c, &["CLIENT", "ID"]) else {
        panic!("no id")
    };
    raw(c, &["SET", "k", "v"]);
    assert!(
        line_of(watcher, id).contains(" cmd=set "),
        "{}",
        line_of(watcher, id)
    );
    raw(c, &["SET", "k", "w"]);
    raw(c, &["get", "k"]);
    assert!(line_of(watcher, id).contains(" cmd=get "));
    // A name set between two GETs of one pipeline shows too.
    let _: () = redis::pipe()
        .cmd("CLIENT")
        .arg("SETNAME")
        .arg("worker")
        .ignore()
        .cmd("GET")
        .arg("k")
        .ignore()
        .query(c)
        .expect("pipeline");
    let line = line_of(watcher, id);
    assert!(
        line.contains("name=worker") && line.contains(" cmd=get "),
        "{line}"
    );
    raw(c, &["HELLO", "3"]);
    raw(c, &["GET", "k"]);
    assert!(line_of(watcher, id).contains("resp=3"));
    // In a transaction: the x flag and the commands queued; out of it, N
    // and -1. Idle is counted from its last request.
    let line = line_of(watcher, id);
    assert!(
        line.contains(" idle=0 flags=N ") && line.contains(" multi=-1 "),
        "{line}"
    );
    assert!(line.contains(" multi-mem=0 ") && line.contains(" events=r "));
    raw(c, &["MULTI"]);
    raw(c, &["SET", "k", "x"]);
    raw(c, &["GET", "k"]);
    let line = line_of(watcher, id);
    assert!(
        line.contains(" flags=x ") && line.contains(" multi=2 "),
        "{line}"
    );
    assert!(!line.contains(" multi-mem=0 "), "{line}");
    raw(c, &["EXEC"]);
    let line = line_of(watcher, id);
    assert!(
        line.contains(" flags=N ") && line.contains(" multi=-1 ") && line.contains(" multi-mem=0 "),
        "{line}"
    );

    // A request read in part waits in the query buffer.
    use std::io::{Read, Write};
    let mut part = std::net::TcpStream::connect(server.resp).unwrap();
    part.write_all(b"*2\r\n$6\r\nCLIENT\r\n$2\r\nID\r\n")
        .unwrap();
    let mut reply = [0u8; 32];
    let n = part.read(&mut reply).unwrap();
    let part_id: i64 = String::from_utf8_lossy(&reply[1..n])
        .trim()
        .parse()
        .unwrap();
    let partial = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10\r\nabc";
    part.write_all(partial).unwrap();
    let qbuf = format!(" qbuf={} ", partial.len());
    assert!(
        wait_until(Duration::from_secs(10), || line_of(watcher, part_id)
            .contains(&qbuf)),
        "{}",
        line_of(watcher, part_id)
    );
}

/// MEMORY USAGE: what a key's rows take as stored, from the sizes of its
/// key, value, fields and chunks; a hash's fields sampled.
#[test]
fn memory_usage_follows_what_a_key_stores() {
    let (_dir, server) = start();
    let c = &mut server.client();
    let usage = |c: &mut redis::Connection, args: &[&str]| -> i64 {
        let mut all = vec!["MEMORY", "USAGE"];
        all.extend(args);
        match raw(c, &all) {
            V::Int(n) => n,
            other => panic!("{args:?}: {other:?}"),
        }
    };
    assert_eq!(raw(c, &["MEMORY", "USAGE", "nosuch"]), V::Nil);
    raw(c, &["SET", "s", "v"]);
    raw(c, &["SET", "s1k", &"x".repeat(1000)]);
    let (small, kilo) = (usage(c, &["s"]), usage(c, &["s1k"]));
    // The value's 999 bytes more and the key's 2, nothing else.
    assert_eq!(kilo - small, 999 + 2, "{small} {kilo}");
    // An expiry adds its index row.
    raw(c, &["EXPIRE", "s", "100"]);
    assert!(usage(c, &["s"]) > small);
    // A long string: its bytes and a row per 4 KiB chunk.
    raw(c, &["SET", "long", &"y".repeat(400 << 10)]);
    let long = usage(c, &["long"]);
    assert!(
        (400 << 10) < long && long < (400 << 10) + 100 * 64,
        "{long}"
    );
    // A hash of 100 fields alike: a sample stands for them all.
    for i in 0..100 {
        raw(c, &["HSET", "h", &format!("f{i:03}"), &"z".repeat(100)]);
    }
    let (sampled, all) = (usage(c, &["h"]), usage(c, &["h", "SAMPLES", "0"]));
    assert_eq!(sampled, all);
    assert!(all > 100 * 104, "{all}");
    assert_eq!(usage(c, &["h", "SAMPLES", "1", "SAMPLES", "7"]), all);
    assert!(error(c, &["MEMORY", "USAGE", "h", "SAMPLES", "x"]).starts_with("ERR value is not"));
    assert_eq!(raw(c, &["MEMORY", "PURGE"]), ok());
}

/// The number on the line `name:` of an INFO section's text.
fn info_figure(section: &str, name: &str) -> u64 {
    section
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .expect(name)
        .trim()
        .parse()
        .expect("a number")
}

/// One INFO section's text.
fn section_text(server: &Server, name: &str) -> String {
    let mut c = server.client();
    cmd(&["INFO", name]).query(&mut c).expect("INFO")
}

/// The INFO fields dashboards read, with real figures: keyspace hits and
/// misses, error replies, the keys with an expiry and their average time
/// to live (kept across a restart), the rates and the memory peak.
#[test]
fn info_counts_lookups_errors_expiring_keys_and_rates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("node");
    let mut server = Server::start(&data, &[]);
    let c = &mut server.client();
    let stat = |server: &Server, section: &str, field: &str| -> u64 {
        let value = server.info_field(section, field).expect(field);
        value.parse().expect("a number")
    };
    let counts = |server: &Server| {
        [
            stat(server, "stats", "keyspace_hits"),
            stat(server, "stats", "keyspace_misses"),
            stat(server, "stats", "total_error_replies"),
        ]
    };
    let before = counts(&server);
    raw(c, &["SET", "a", "1"]);
    raw(c, &["SET", "x", "1", "NX"]); // a write's own read: not counted
    raw(c, &["INCR", "a"]);
    assert_eq!(raw(c, &["GET", "a"]), bulk("2")); // hit
    assert_eq!(raw(c, &["GET", "missing"]), V::Nil); // miss
    raw(c, &["MGET", "a", "missing", "missing2"]); // 1 hit, 2 misses
    assert_eq!(raw(c, &["EXISTS", "a", "missing"]), V::Int(1)); // 1 hit, 1 miss
    assert!(error(c, &["HGET", "a", "f"]).starts_with("WRONGTYPE")); // hit, error
    assert_eq!(raw(c, &["TYPE", "missing"]), V::SimpleString("none".into())); // miss
    assert_eq!(raw(c, &["GETSET", "a", "3"]), bulk("2")); // hit
    assert_eq!(raw(c, &["GETDEL", "missing"]), V::Nil); // miss
    assert_eq!(raw(c, &["SET", "a", "4", "GET"]), bulk("3")); // hit
    assert!(error(c, &["NOSUCH"]).starts_with("ERR unknown command")); // error
    assert!(error(c, &["GET"]).starts_with("ERR wrong number")); // error
    let after = counts(&server);
    assert_eq!(
        [
            after[0] - before[0],
            after[1] - before[1],
            after[2] - before[2]
        ],
        [6, 6, 3]
    );

    // Keys with an expiry, and their average time to live.
    let keyspace = |server: &Server| -> String {
        let mut c = server.client();
        let text: String = cmd(&["INFO", "keyspace"]).query(&mut c).expect("INFO");
        text.lines()
            .find_map(|l| l.strip_prefix("db0:"))
            .expect("a db0 line")
            .to_string()
    };
    let field = |line: &str, name: &str| -> u64 {
        line.split(',')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .expect(name)
            .parse()
            .expect("a number")
    };
    raw(c, &["SET", "e1", "v", "EX", "100"]);
    raw(c, &["SET", "e2", "v", "EX", "300"]);
    raw(c, &["HSET", "e3", "f", "v"]);
    raw(c, &["EXPIRE", "e3", "200"]);
    let line = keyspace(&server);
    assert_eq!(
        (field(&line, "keys"), field(&line, "expires")),
        (5, 3),
        "{line}"
    );
    let avg = field(&line, "avg_ttl");
    assert!((195_000..=200_000).contains(&avg), "{line}");
    raw(c, &["PERSIST", "e1"]);
    raw(c, &["SET", "e2", "w"]); // no options: the expiry goes
    raw(c, &["DEL", "e3"]);
    raw(c, &["SET", "e4", "v", "PX", "1000000"]);
    assert_eq!(field(&keyspace(&server), "expires"), 1);
    // Changes since the engine last wrote its files: what a restart would
    // replay (a few records: no flush yet).
    let persistence = section_text(&server, "persistence");
    let figure = |name: &str| info_figure(&persistence, name);
    assert!(figure("rdb_changes_since_last_save") > 0);
    assert_eq!(
        figure("rdb_changes_since_last_save"),
        figure("engine_applied_lsn") - figure("engine_persisted_lsn")
    );
    // Stored with the data: the same after a restart.
    assert!(server.terminate().success());
    server = Server::start(&data, &[]);
    let c = &mut server.client();
    let line = keyspace(&server);
    assert_eq!(
        (field(&line, "keys"), field(&line, "expires")),
        (5, 1),
        "{line}"
    );
    // The sizes on disk: the engine's files (written at the shutdown) and
    // the WAL's frames.
    let persistence = section_text(&server, "persistence");
    for name in ["engine_disk_bytes", "wal_bytes"] {
        assert!(info_figure(&persistence, name) > 0, "{name}: {persistence}");
    }
    // RocksDB's own figures, in a plain INFO too: nothing stalled on an
    // idle node.
    let rocksdb = section_text(&server, "rocksdb");
    assert!(rocksdb.starts_with("# RocksDB\r\n"), "{rocksdb}");
    assert_eq!(info_figure(&rocksdb, "writes_stopped"), 0, "{rocksdb}");
    assert_eq!(info_figure(&rocksdb, "delayed_write_rate"), 0, "{rocksdb}");
    for name in [
        "memtable_bytes",
        "level0_files",
        "pending_compaction_bytes",
        "running_compactions",
        "running_flushes",
        "block_cache_bytes",
        "flushall_compaction_running",
    ] {
        info_figure(&rocksdb, name);
    }
    let everything: String = cmd(&["INFO"]).query(c).expect("INFO");
    assert!(everything.contains("# RocksDB\r\n"));

    // The rates follow the commands of the last moments.
    let mut pipe = redis::pipe();
    for _ in 0..2000 {
        pipe.cmd("PING");
    }
    let _: Vec<String> = pipe.query(c).expect("pings");
    assert!(
        wait_until(std::time::Duration::from_secs(5), || stat(
            &server,
            "stats",
            "instantaneous_ops_per_sec"
        ) > 0),
        "instantaneous_ops_per_sec stays 0"
    );
    let used = stat(&server, "memory", "used_memory");
    assert!(stat(&server, "memory", "used_memory_peak") >= used);
    assert_eq!(
        server.info_field("persistence", "aof_last_write_status"),
        Some("ok".into())
    );

    // Per command: calls, and percentiles of their running times.
    let section = |name: &str| section_text(&server, name);
    let commandstats = section("commandstats");
    assert!(
        commandstats.contains("cmdstat_ping:calls=2000,"),
        "{commandstats}"
    );
    let latency = section("latencystats");
    let line = latency
        .lines()
        .find_map(|l| l.strip_prefix("latency_percentiles_usec_ping:"))
        .unwrap_or_else(|| panic!("no PING in {latency}"));
    let p: Vec<f64> = line
        .split(',')
        .map(|kv| {
            kv.split_once('=')
                .expect("p=value")
                .1
                .parse()
                .expect("a number")
        })
        .collect();
    assert!(
        p.len() == 3 && 0.0 < p[0] && p[0] <= p[1] && p[1] <= p[2],
        "{line}"
    );
    // Both in INFO all, neither in a plain INFO.
    let plain = section("default");
    assert!(!plain.contains("# Commandstats") && !plain.contains("# Latencystats"));
    assert!(plain.contains("# Errorstats"));
    let all = section("all");
    assert!(all.contains("# Commandstats") && all.contains("# Latencystats"));

    // CONFIG RESETSTAT starts them over.
    assert_eq!(raw(c, &["CONFIG", "RESETSTAT"]), ok());
    assert_eq!(counts(&server), [0, 0, 0]);
    assert!(!section("latencystats").contains("usec_ping:"));
}

/// SLOWLOG as Redis's: commands at or over `--slowlog-log-slower-than` µs,
/// newest first, at most `--slowlog-max-len` of them.
#[test]
fn the_slow_log_keeps_the_newest_commands_over_its_threshold() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(
        &dir.path().join("node"),
        &["--slowlog-log-slower-than", "0", "--slowlog-max-len", "3"],
    );
    let c = &mut server.client();
    assert_eq!(
        raw(c, &["CONFIG", "GET", "slowlog*"]),
        V::Array(vec![
            bulk("slowlog-log-slower-than"),
            bulk("0"),
            bulk("slowlog-max-len"),
            bulk("3"),
        ])
    );
    assert_eq!(raw(c, &["SLOWLOG", "RESET"]), ok());
    raw(c, &["CLIENT", "SETNAME", "app"]);
    raw(c, &["SET", "k", "v"]);
    raw(c, &["GET", "k"]);
    assert!(error(c, &["GET"]).starts_with("ERR wrong number")); // refused: not logged
    let V::Array(entries) = raw(c, &["SLOWLOG", "GET", "-1"]) else {
        panic!("not an array")
    };
    // The newest three: GET, SET, CLIENT SETNAME (SLOWLOG RESET fell off).
    let args: Vec<V> = entries
        .iter()
        .map(|e| match e {
            V::Array(fields) => {
                assert_eq!(fields.len(), 6);
                assert!(matches!(fields[0], V::Int(_)) && matches!(fields[2], V::Int(_)));
                assert_eq!(fields[5], bulk("app"));
                fields[3].clone()
            }
            other => panic!("an entry: {other:?}"),
        })
        .collect();
    assert_eq!(
        args,
        vec![
            V::Array(vec![bulk("GET"), bulk("k")]),
            V::Array(vec![bulk("SET"), bulk("k"), bulk("v")]),
            V::Array(vec![bulk("CLIENT"), bulk("SETNAME"), bulk("app")]),
        ]
    );
    let V::Array(one) = raw(c, &["SLOWLOG", "GET", "1"]) else {
        panic!()
    };
    assert_eq!(one.len(), 1);
    assert_eq!(raw(c, &["SLOWLOG", "LEN"]), V::Int(3));
    assert_eq!(
        error(c, &["SLOWLOG", "GET", "-2"]),
        "ERR count should be greater than or equal to -1"
    );
    assert_eq!(
        error(c, &["SLOWLOG", "LEN", "x"]),
        "ERR wrong number of arguments for 'slowlog|len' command"
    );
    let V::Array(help) = raw(c, &["SLOWLOG", "HELP"]) else {
        panic!()
    };
    assert_eq!(help.len(), 12);
    // A negative threshold keeps every command out.
    let dir = tempfile::tempdir().expect("tempdir");
    let quiet = Server::start(
        &dir.path().join("node"),
        &["--slowlog-log-slower-than", "-1"],
    );
    let c = &mut quiet.client();
    for i in 0..100 {
        raw(c, &["SET", &format!("k{i}"), "v"]);
    }
    assert_eq!(raw(c, &["SLOWLOG", "LEN"]), V::Int(0));
}

/// A command's raw reply with errors inside it left as they are.
fn raw_keeping_errors(c: &mut redis::Connection, args: &[&str]) -> V {
    let mut replies: Vec<V> = redis::pipe()
        .add_command(cmd(args))
        .ignore_errors()
        .query(c)
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    replies.pop().expect("one reply")
}

fn error_code(reply: &V) -> Option<&str> {
    match reply {
        V::ServerError(e) => Some(e.code()),
        _ => None,
    }
}

/// MULTI, EXEC and DISCARD as Redis answers them: queued commands run in
/// order inside EXEC, reads see the writes before them, an error inside
/// is one reply of the array, and a command refused while queueing discards
/// the whole transaction.
#[test]
fn transactions_run_their_commands_together_as_in_redis() {
    let (_dir, server) = start();
    let c = &mut server.client();
    assert_eq!(error(c, &["EXEC"]), "ERR EXEC without MULTI");
    assert_eq!(error(c, &["DISCARD"]), "ERR DISCARD without MULTI");
    assert_eq!(raw(c, &["MULTI"]), ok());
    assert_eq!(error(c, &["MULTI"]), "ERR MULTI calls can not be nested");
    assert_eq!(
        error(c, &["WATCH", "a"]),
        "ERR WATCH inside MULTI is not allowed"
    );
    let queued = V::SimpleString("QUEUED".into());
    for args in [
        &["SET", "a", "1"][..],
        &["INCR", "a"],
        &["GET", "a"],
        &["HSET", "a", "f", "v"],
        &["MSET", "b", "x", "c", "y"],
        &["DBSIZE"],
        &["KEYS", "*"],
        &["DEL", "c"],
        &["EXISTS", "a", "b", "c"],
        &["PING"],
    ] {
        assert_eq!(raw(c, args), queued, "{args:?}");
    }
    let replies = match raw_keeping_errors(c, &["EXEC"]) {
        V::Array(replies) => replies,
        other => panic!("EXEC: {other:?}"),
    };
    assert_eq!(replies.len(), 10);
    assert_eq!(replies[..3], [ok(), V::Int(2), bulk("2")]);
    assert_eq!(error_code(&replies[3]), Some("WRONGTYPE"));
    assert_eq!(replies[4..6], [ok(), V::Int(3)]);
    let mut keys = match &replies[6] {
        V::Array(keys) => keys.iter().map(|k| format!("{k:?}")).collect::<Vec<_>>(),
        other => panic!("KEYS: {other:?}"),
    };
    keys.sort();
    assert_eq!(
        keys,
        [bulk("a"), bulk("b"), bulk("c")].map(|k| format!("{k:?}")),
        "KEYS sees the keys written before it in the transaction"
    );
    assert_eq!(
        replies[7..],
        [V::Int(1), V::Int(2), V::SimpleString("PONG".into())]
    );
    assert_eq!(raw(c, &["DBSIZE"]), V::Int(2));

    // Refused while queueing: nothing of it runs.
    assert_eq!(raw(c, &["MULTI"]), ok());
    assert_eq!(raw(c, &["SET", "x", "1"]), queued);
    assert!(error(c, &["NOSUCH"]).starts_with("ERR unknown command"));
    assert_eq!(
        error(c, &["SET", "x"]),
        "ERR wrong number of arguments for 'set' command"
    );
    assert_eq!(
        error(c, &["EXEC"]),
        "EXECABORT Transaction discarded because of previous errors."
    );
    assert_eq!(raw(c, &["GET", "x"]), V::Nil);
    // DISCARD drops what was queued.
    assert_eq!(raw(c, &["MULTI"]), ok());
    assert_eq!(raw(c, &["SET", "y", "1"]), queued);
    assert_eq!(raw(c, &["DISCARD"]), ok());
    assert_eq!(raw(c, &["GET", "y"]), V::Nil);
    // An empty transaction.
    assert_eq!(raw(c, &["MULTI"]), ok());
    assert_eq!(raw(c, &["EXEC"]), V::Array(vec![]));

    // A client library's transactions (MULTI ... EXEC in one pipeline).
    let (n, got): (i64, String) = redis::pipe()
        .atomic()
        .incr("n", 5)
        .get("n")
        .query(c)
        .expect("an atomic pipeline");
    assert_eq!((n, got.as_str()), (5, "5"));

    // INFO counts the transaction's commands as Redis does.
    let stats = section_text(&server, "commandstats");
    for (name, calls, failed) in [("multi", 6, 1), ("exec", 5, 2), ("discard", 2, 1)] {
        let line = stats
            .lines()
            .find(|l| l.starts_with(&format!("cmdstat_{name}:")))
            .unwrap_or_else(|| panic!("no {name} in {stats}"));
        assert!(
            line.contains(&format!("calls={calls},"))
                && line.contains(&format!("failed_calls={failed}")),
            "{line}"
        );
    }
    assert!(stats.contains("cmdstat_hset:calls=1,"), "{stats}");
    assert!(
        stats
            .lines()
            .any(|l| l.starts_with("cmdstat_set:") && l.contains("rejected_calls=1")),
        "{stats}"
    );
}

/// EXEC is atomic: no other client's command runs between its commands,
/// and its writes are one record of the log.
#[test]
fn no_other_command_runs_inside_a_transaction_and_its_writes_are_one_record() {
    let (_dir, server) = start();
    let c = &mut server.client();
    let before = server.durable_lsn();
    let replies: Vec<V> = redis::pipe()
        .atomic()
        .set("p", "1")
        .set("q", "2")
        .hset("r", "f", "v")
        .query(c)
        .expect("transaction");
    assert_eq!(replies.len(), 3);
    assert_eq!(
        server.durable_lsn(),
        before + 1,
        "one WAL record for the three writes"
    );

    // Another client increments the counter all along.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let other = {
        let stop = stop.clone();
        let mut c2 = server.client();
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 20_000 {
                let _: i64 = cmd(&["INCR", "n"]).query(&mut c2).expect("INCR");
                n += 1;
            }
            n
        })
    };
    for round in 0..20 {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for _ in 0..50 {
            pipe.incr("n", 1);
        }
        let seen: Vec<i64> = pipe.query(c).expect("transaction");
        let first = seen[0];
        assert_eq!(
            seen,
            (first..first + 50).collect::<Vec<_>>(),
            "round {round}: another INCR ran inside the transaction"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let theirs = other.join().expect("the other client");
    let total: i64 = cmd(&["GET", "n"]).query(c).expect("GET");
    assert_eq!(total, theirs + 20 * 50);
}

/// WATCH: EXEC answers a null array, and runs nothing, once a watched key
/// changed after the WATCH, by any client; UNWATCH, EXEC and DISCARD
/// forget the keys.
#[test]
fn watch_aborts_a_transaction_whose_keys_changed() {
    let (_dir, server) = start();
    let c = &mut server.client();
    let other = &mut server.client();
    let exec_set = |c: &mut redis::Connection, value: &str| -> V {
        assert_eq!(raw(c, &["MULTI"]), ok());
        raw(c, &["SET", "w", value]);
        raw(c, &["EXEC"])
    };
    // Changed by another client.
    assert_eq!(raw(c, &["WATCH", "w", "v"]), ok());
    assert_eq!(raw(other, &["SET", "w", "theirs"]), ok());
    assert_eq!(exec_set(c, "mine"), V::Nil);
    assert_eq!(raw(c, &["GET", "w"]), bulk("theirs"));
    // Unchanged: it runs; and EXEC forgot the keys.
    assert_eq!(raw(c, &["WATCH", "w"]), ok());
    assert_eq!(raw(c, &["GET", "w"]), bulk("theirs"));
    assert_eq!(exec_set(c, "mine"), V::Array(vec![ok()]));
    assert_eq!(raw(other, &["SET", "w", "theirs2"]), ok());
    assert_eq!(exec_set(c, "mine2"), V::Array(vec![ok()]));
    // UNWATCH forgets them.
    assert_eq!(raw(c, &["WATCH", "w"]), ok());
    assert_eq!(raw(other, &["DEL", "w"]), V::Int(1));
    assert_eq!(raw(c, &["UNWATCH"]), ok());
    assert_eq!(exec_set(c, "again"), V::Array(vec![ok()]));
    // The watcher's own change counts too.
    assert_eq!(raw(c, &["WATCH", "w"]), ok());
    assert_eq!(raw(c, &["APPEND", "w", "!"]), V::Int(6));
    assert_eq!(exec_set(c, "lost"), V::Nil);
    // A write that changes nothing is no change.
    assert_eq!(raw(c, &["WATCH", "w"]), ok());
    assert_eq!(raw(other, &["SET", "w", "x", "NX"]), V::Nil);
    assert_eq!(raw(other, &["DEL", "absent"]), V::Int(0));
    assert_eq!(exec_set(c, "kept"), V::Array(vec![ok()]));
    // FLUSHALL changes the watched keys that exist, not the others.
    assert_eq!(raw(c, &["WATCH", "nothing-here"]), ok());
    assert_eq!(raw(other, &["FLUSHALL"]), ok());
    assert_eq!(exec_set(c, "after-flush"), V::Array(vec![ok()]));
    assert_eq!(raw(c, &["WATCH", "w"]), ok());
    assert_eq!(raw(other, &["FLUSHALL"]), ok());
    assert_eq!(exec_set(c, "lost"), V::Nil);
    // A key live when watched and expired by EXEC has changed.
    assert_eq!(raw(c, &["SET", "w", "short", "PX", "100"]), ok());
    assert_eq!(raw(c, &["WATCH", "w"]), ok());
    assert!(wait_until(std::time::Duration::from_secs(5), || {
        raw(other, &["EXISTS", "w"]) == V::Int(0)
    }));
    assert_eq!(exec_set(c, "lost"), V::Nil);
    // DISCARD forgets the keys too; RESP3's null for an aborted EXEC.
    assert_eq!(raw(c, &["WATCH", "w"]), ok());
    assert_eq!(raw(c, &["MULTI"]), ok());
    assert_eq!(raw(c, &["DISCARD"]), ok());
    assert_eq!(raw(other, &["SET", "w", "theirs3"]), ok());
    assert_eq!(exec_set(c, "mine3"), V::Array(vec![ok()]));
    let r3 = &mut server.client();
    raw(r3, &["HELLO", "3"]);
    assert_eq!(raw(r3, &["WATCH", "w"]), ok());
    assert_eq!(raw(other, &["SET", "w", "theirs4"]), ok());
    assert_eq!(exec_set(r3, "mine4"), V::Nil);
}

/// A read of several keys sees a transaction or an MSET whole, never half
/// of it, while another client writes.
#[test]
fn reads_of_several_keys_never_see_half_of_a_write() {
    let (_dir, server) = start();
    let writer = {
        let mut c = server.client();
        std::thread::spawn(move || {
            for i in 0..1500 {
                if i % 2 == 0 {
                    let _: () = redis::pipe()
                        .atomic()
                        .set("a", i)
                        .set("b", i)
                        .hset("h", "x", i)
                        .hset("h", "y", i)
                        .query(&mut c)
                        .expect("transaction");
                } else {
                    let _: () = cmd(&["MSET", "a", &i.to_string(), "b", &i.to_string()])
                        .query(&mut c)
                        .expect("MSET");
                }
            }
        })
    };
    let c = &mut server.client();
    let mut reads = 0;
    while !writer.is_finished() && reads < 100_000 {
        let (a, b): (Option<i64>, Option<i64>) = cmd(&["MGET", "a", "b"]).query(c).expect("MGET");
        assert_eq!(a, b, "MGET saw half of a write");
        let h: Vec<Option<i64>> = cmd(&["HMGET", "h", "x", "y"]).query(c).expect("HMGET");
        assert_eq!(h[0], h[1], "HMGET saw half of a write");
        reads += 1;
    }
    writer.join().expect("writer");
    assert!(reads > 0);
}

/// A transaction whose commands exceed the largest WAL record (64 MiB) is
/// refused as it is queued, and the queue is let go; EXEC discards it.
#[test]
fn a_transaction_larger_than_a_wal_record_is_refused_while_queueing() {
    let (_dir, server) = start();
    let c = &mut server.client();
    // Under the largest bulk string (32 MiB) each; three exceed 64 MiB.
    let value = "x".repeat(24 << 20);
    let set = |c: &mut redis::Connection, key: &str| -> Result<V, String> {
        cmd(&["SET", key, &value])
            .query::<V>(c)
            .map_err(|e| format!("{:?} {:?}", e.code(), e.detail()))
    };
    assert_eq!(raw(c, &["MULTI"]), ok());
    assert_eq!(set(c, "big1"), Ok(V::SimpleString("QUEUED".into())));
    assert_eq!(set(c, "big2"), Ok(V::SimpleString("QUEUED".into())));
    assert_eq!(
        set(c, "big3"),
        Err(
            "Some(\"ERR\") Some(\"the transaction's commands exceed 67108864 bytes, the largest WAL record\")"
                .to_string()
        )
    );
    assert_eq!(
        error(c, &["EXEC"]),
        "EXECABORT Transaction discarded because of previous errors."
    );
    assert_eq!(raw(c, &["EXISTS", "big1", "big2", "big3"]), V::Int(0));
    // The connection goes on.
    assert_eq!(raw(c, &["SET", "small", "v"]), ok());
}

/// KEYS sees one state however many keys it reads: a transaction that
/// moves a key from one end of the keyspace to the other never shows it
/// twice or not at all.
#[test]
fn keys_sees_a_transaction_whole_across_the_keyspace() {
    let (_dir, server) = start();
    let c = &mut server.client();
    let mut pipe = redis::pipe();
    for i in 0..3000 {
        pipe.set(format!("m:{i:05}"), i).ignore();
    }
    pipe.set("a-mover", 0).ignore();
    let () = pipe.query(c).expect("the keys between");
    let writer = {
        let mut c = server.client();
        std::thread::spawn(move || {
            for i in 0..400 {
                let (from, to) = if i % 2 == 0 {
                    ("a-mover", "z-mover")
                } else {
                    ("z-mover", "a-mover")
                };
                let () = redis::pipe()
                    .atomic()
                    .del(from)
                    .ignore()
                    .set(to, i)
                    .ignore()
                    .query(&mut c)
                    .expect("transaction");
            }
        })
    };
    let mut reads = 0;
    while !writer.is_finished() && reads < 10_000 {
        let movers: Vec<String> = cmd(&["KEYS", "*-mover"]).query(c).expect("KEYS");
        assert_eq!(movers.len(), 1, "KEYS saw {movers:?}");
        reads += 1;
    }
    writer.join().expect("writer");
    assert!(reads > 0);
}

/// A reply queued before EXEC leaves in the protocol it was answered in,
/// though a HELLO inside the transaction changes the connection's; inside
/// EXEC's array each reply is in the protocol it was made in, as Redis
/// sends them (HELLO's own reply in the new one).
#[test]
fn replies_before_and_inside_a_transaction_keep_their_protocol() {
    use std::io::{Read, Write};
    let (_dir, server) = start();
    let addr = server
        .url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_string();
    let mut s = std::net::TcpStream::connect(&addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(
        b"GET missing\r\nMULTI\r\nGET missing\r\nHELLO 3\r\nGET missing\r\nHGETALL missing\r\n\
          HELLO 2\r\nGET missing\r\nEXEC\r\nGET missing\r\nPING\r\n",
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"+PONG\r\n") {
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    // RESP2's null, then +OK and six +QUEUED.
    let queued = format!("$-1\r\n+OK\r\n{}", "+QUEUED\r\n".repeat(6));
    assert!(text.starts_with(&queued), "{text}");
    let exec = &text[queued.len()..];
    // RESP2's null, HELLO 3's map in RESP3; RESP3's null and empty map,
    // HELLO 2's map as RESP2's array; RESP2's null; after EXEC, RESP2.
    assert!(exec.starts_with("*6\r\n$-1\r\n%7\r\n"), "{exec}");
    assert!(exec.contains("\r\n_\r\n%0\r\n*14\r\n"), "{exec}");
    assert!(exec.ends_with("\r\n$-1\r\n$-1\r\n+PONG\r\n"), "{exec}");
    assert_eq!(exec.matches("_\r\n").count(), 1, "{exec}");
}

/// A field of INFO's text, parsed.
fn section_field<T: std::str::FromStr>(info: &str, field: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("INFO lacks {field}"))
        .trim()
        .parse()
        .expect("a number")
}

/// LATENCY as Redis 7.0's: with `--latency-monitor-threshold`, a command
/// that runs that long is an event (LATEST, HISTORY, GRAPH, DOCTOR,
/// RESET); every command's running times make its histogram.
#[test]
fn the_latency_monitor_notes_slow_commands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(
        &dir.path().join("node"),
        &["--latency-monitor-threshold", "1"],
    );
    let c = &mut server.client();
    assert_eq!(
        raw(c, &["CONFIG", "GET", "latency-monitor-threshold"]),
        V::Array(vec![bulk("latency-monitor-threshold"), bulk("1")])
    );
    assert_eq!(raw(c, &["LATENCY", "LATEST"]), V::Array(Vec::new()));
    assert!(
        error(c, &["LATENCY", "GRAPH", "command"])
            .starts_with("ERR No samples available for event 'command'")
    );
    // An LCS of two 2,000-byte strings fills a table of 4M cells: well
    // over a millisecond in any build.
    raw(c, &["SET", "a", &"ab".repeat(1000)]);
    raw(c, &["SET", "b", &"ba".repeat(1000)]);
    assert_eq!(raw(c, &["LCS", "a", "b", "LEN"]), V::Int(1999));
    let V::Array(latest) = raw(c, &["LATENCY", "LATEST"]) else {
        panic!()
    };
    let [V::Array(event)] = &latest[..] else {
        panic!("one event: {latest:?}")
    };
    assert_eq!(event[0], bulk("command"));
    let (V::Int(at), V::Int(ms), V::Int(max)) = (&event[1], &event[2], &event[3]) else {
        panic!("{event:?}")
    };
    assert!(*ms >= 1 && max >= ms, "{event:?}");
    assert_eq!(
        raw(c, &["LATENCY", "HISTORY", "command"]),
        V::Array(vec![V::Array(vec![V::Int(*at), V::Int(*ms)])])
    );
    let V::BulkString(graph) = raw(c, &["LATENCY", "GRAPH", "command"]) else {
        panic!()
    };
    let graph = String::from_utf8(graph).unwrap();
    assert!(
        graph.starts_with(&format!("command - high {ms} ms, low {ms} ms")),
        "{graph}"
    );
    let V::BulkString(doctor) = raw(c, &["LATENCY", "DOCTOR"]) else {
        panic!()
    };
    let doctor = String::from_utf8(doctor).unwrap();
    assert!(doctor.contains("1. command: 1 latency spikes"), "{doctor}");
    // The histogram of LCS: one call, counted under a bound of at least
    // a millisecond; of CLIENT, each subcommand run.
    raw(c, &["CLIENT", "SETNAME", "me"]);
    raw(c, &["HELLO", "3"]);
    let V::Map(histograms) = raw(c, &["LATENCY", "HISTOGRAM", "lcs", "CLIENT", "nosuch"]) else {
        panic!()
    };
    // In the table's order; the client library's CLIENT SETINFO on
    // connecting is there too, HELLO (not a CLIENT subcommand) is not.
    let names: Vec<&V> = histograms.iter().map(|(name, _)| name).collect();
    assert_eq!(
        names,
        vec![
            &bulk("client|setinfo"),
            &bulk("client|setname"),
            &bulk("lcs")
        ]
    );
    let V::Map(lcs) = &histograms[2].1 else {
        panic!()
    };
    assert_eq!(lcs[0], (bulk("calls"), V::Int(1)));
    let V::Map(buckets) = &lcs[1].1 else { panic!() };
    assert!(
        matches!(buckets[..], [(V::Int(us), V::Int(1))] if us >= 1000),
        "{buckets:?}"
    );
    assert_eq!(raw(c, &["LATENCY", "RESET", "nosuch"]), V::Int(0));
    assert_eq!(raw(c, &["LATENCY", "RESET"]), V::Int(1));
    assert_eq!(raw(c, &["LATENCY", "LATEST"]), V::Array(Vec::new()));
    assert_eq!(
        error(c, &["LATENCY", "NOSUCH"]),
        "ERR unknown subcommand 'NOSUCH'. Try LATENCY HELP."
    );

    // Off by default: nothing noted, and DOCTOR says how to turn it on.
    let other = Server::start(&dir.path().join("other"), &[]);
    let c = &mut other.client();
    raw(c, &["SET", "a", &"ab".repeat(1000)]);
    raw(c, &["LCS", "a", "a", "LEN"]);
    assert_eq!(raw(c, &["LATENCY", "LATEST"]), V::Array(Vec::new()));
    let V::BulkString(doctor) = raw(c, &["LATENCY", "DOCTOR"]) else {
        panic!()
    };
    assert!(
        String::from_utf8(doctor)
            .unwrap()
            .contains("--latency-monitor-threshold"),
    );
}

/// SAVE syncs the WAL and flushes RocksDB's memtables, so a restart
/// replays nothing written before it; BGSAVE does it in the background;
/// LASTSAVE and INFO persistence tell when, as Redis's do.
#[test]
fn save_and_bgsave_leave_nothing_for_a_restart_to_replay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("node"), &["--fsync", "everysec"]);
    let c = &mut server.client();
    let V::Int(started) = raw(c, &["LASTSAVE"]) else {
        panic!()
    };
    let figure = |name: &str| info_figure(&section_text(&server, "persistence"), name);
    for i in 0..50 {
        raw(c, &["SET", &format!("k{i}"), "v"]);
    }
    assert!(figure("rdb_changes_since_last_save") > 0);
    assert_eq!(figure("rdb_saves"), 0);
    assert_eq!(raw(c, &["SAVE"]), ok());
    assert_eq!(figure("rdb_changes_since_last_save"), 0);
    assert_eq!(figure("engine_persisted_lsn"), figure("engine_applied_lsn"));
    assert_eq!(figure("wal_durable_lsn"), figure("wal_last_lsn"));
    assert_eq!(figure("rdb_saves"), 1);
    assert_eq!(
        server.info_field("persistence", "rdb_last_bgsave_status"),
        Some("ok".into())
    );
    let V::Int(saved) = raw(c, &["LASTSAVE"]) else {
        panic!()
    };
    assert!(saved >= started);
    assert_eq!(figure("rdb_last_save_time"), saved as u64);

    raw(c, &["SET", "after", "v"]);
    assert_eq!(
        raw(c, &["BGSAVE"]),
        V::SimpleString("Background saving started".into())
    );
    assert!(
        wait_until(Duration::from_secs(10), || figure("rdb_saves") == 2),
        "the background save ends"
    );
    assert_eq!(figure("rdb_bgsave_in_progress"), 0);
    assert_eq!(figure("rdb_changes_since_last_save"), 0);
    assert_eq!(
        raw(c, &["BGSAVE", "SCHEDULE"]),
        V::SimpleString("Background saving started".into())
    );
    assert_eq!(error(c, &["BGSAVE", "NOW"]), "ERR syntax error");
    assert_eq!(
        error(c, &["SAVE", "x"]),
        "ERR wrong number of arguments for 'save' command"
    );
    // SAVE is not for transactions (BGSAVE is).
    assert_eq!(raw(c, &["MULTI"]), ok());
    assert_eq!(
        error(c, &["SAVE"]),
        "ERR Command not allowed inside a transaction"
    );
    assert!(error(c, &["EXEC"]).starts_with("EXECABORT"));
    assert!(wait_until(Duration::from_secs(10), || figure(
        "rdb_bgsave_in_progress"
    ) == 0));
    assert_eq!(raw(c, &["MULTI"]), ok());
    raw(c, &["BGSAVE"]);
    assert_eq!(
        raw(c, &["EXEC"]),
        V::Array(vec![V::SimpleString("Background saving scheduled".into())])
    );
    assert!(
        wait_until(Duration::from_secs(10), || figure("rdb_saves") == 4),
        "the save from the transaction ends"
    );
}

/// Reads from `socket` until `done` holds for all read so far (bounded in
/// time); what was read.
fn read_until(socket: &mut std::net::TcpStream, done: impl Fn(&str) -> bool) -> String {
    use std::io::Read;
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut text = Vec::new();
    while !done(&String::from_utf8_lossy(&text)) {
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting; read: {}",
            String::from_utf8_lossy(&text)
        );
        let mut chunk = [0u8; 4096];
        match socket.read(&mut chunk) {
            Ok(0) => panic!("closed; read: {}", String::from_utf8_lossy(&text)),
            Ok(n) => text.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("{e}"),
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// MONITOR as Redis 7.0's: a line for each command that ran, after it,
/// arguments quoted and escaped, secrets redacted, admin commands and
/// refused ones left out, a transaction's commands at EXEC and EXEC after
/// them; the monitoring connection may not touch keys until RESET.
#[test]
fn monitor_shows_each_command_that_ran() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("node"), &[]);
    let mut m = std::net::TcpStream::connect(server.resp).unwrap();
    m.write_all(b"*1\r\n$7\r\nMONITOR\r\n").unwrap();
    assert_eq!(read_until(&mut m, |t| t.ends_with("\r\n")), "+OK\r\n");
    let c = &mut server.client();
    raw(c, &["SET", "k", "a\"b\n\\\x01é"]);
    error(c, &["AUTH", "secret"]);
    raw(c, &["CONFIG", "GET", "maxclients"]);
    error(c, &["GET"]);
    raw(c, &["MULTI"]);
    raw(c, &["INCR", "n"]);
    raw(c, &["EXEC"]);
    raw(c, &["CLIENT", "GETNAME"]);
    raw(c, &["GET", "k"]);
    let text = read_until(&mut m, |t| t.ends_with("\"GET\" \"k\"\r\n"));
    let lines: Vec<&str> = text
        .lines()
        .map(|l| {
            // `+secs.micros [0 addr] args`
            let (stamp, rest) = l.split_once(' ').unwrap();
            let (secs, micros) = stamp[1..].split_once('.').unwrap();
            assert!(
                secs.parse::<u64>().unwrap() > 1_700_000_000 && micros.len() == 6,
                "{l}"
            );
            let rest = rest.strip_prefix("[0 127.0.0.1:").expect(l);
            rest.split_once("] ").unwrap().1
        })
        .collect();
    let client_lines: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| !l.starts_with("\"CLIENT\" \"SETINFO\""))
        .collect();
    assert_eq!(
        client_lines,
        vec![
            r#""SET" "k" "a\"b\n\\\x01\xc3\xa9""#,
            r#""AUTH" "(redacted)""#,
            r#""MULTI""#,
            r#""INCR" "n""#,
            r#""EXEC""#,
            r#""CLIENT" "GETNAME""#,
            r#""GET" "k""#,
        ]
    );
    // The monitor itself: no keys, other commands (seen too), RESET.
    m.write_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n").unwrap();
    assert_eq!(
        read_until(&mut m, |t| t.ends_with("\r\n")),
        "-ERR Replica can't interact with the keyspace\r\n"
    );
    m.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
    let text = read_until(&mut m, |t| t.contains("\"PING\"\r\n"));
    assert!(text.starts_with("+PONG\r\n"), "{text}");
    m.write_all(b"*1\r\n$5\r\nRESET\r\n").unwrap();
    assert_eq!(read_until(&mut m, |t| t.ends_with("\r\n")), "+RESET\r\n");
    raw(c, &["PING"]);
    m.write_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n").unwrap();
    let text = read_until(&mut m, |t| t.ends_with("\r\n"));
    assert!(text.starts_with('$'), "a reply, no more lines: {text}");
    // Inside a transaction MONITOR cannot start, as in Redis.
    raw(c, &["MULTI"]);
    raw(c, &["MONITOR"]);
    let V::Array(replies) = raw_keeping_errors(c, &["EXEC"]) else {
        panic!()
    };
    let [V::ServerError(e)] = &replies[..] else {
        panic!("{replies:?}")
    };
    assert_eq!(
        (e.code(), e.details()),
        (
            "ERR",
            Some("MONITOR isn't allowed for DENY BLOCKING client")
        )
    );
}

/// CLIENT PAUSE as Redis 7.0's: WRITE holds writes (reads go on) until
/// the timeout or CLIENT UNPAUSE, ALL holds every command (CLIENT UNPAUSE
/// too) until the timeout; what was held then runs.
#[test]
fn client_pause_holds_writes_or_everything_until_unpaused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("node"), &[]);
    let admin = &mut server.client();
    // Each connection made before the pause (a client library's
    // handshake is a command too).
    let held = |mut c: redis::Connection, args: &'static [&'static str]| {
        std::thread::spawn(move || raw(&mut c, args))
    };
    let (writer, reader) = (server.client(), &mut server.client());
    let mut transaction = server.client();
    let publisher = server.client();
    assert_eq!(raw(admin, &["CLIENT", "PAUSE", "100000", "WRITE"]), ok());
    let write = held(writer, &["SET", "k", "v"]);
    // PUBLISH is held too, as Redis holds it.
    let publish = held(publisher, &["PUBLISH", "ch", "m"]);
    // A transaction with a write waits at its EXEC, as in Redis.
    let queued = V::SimpleString("QUEUED".into());
    assert_eq!(raw(&mut transaction, &["MULTI"]), ok());
    assert_eq!(raw(&mut transaction, &["INCR", "n"]), queued);
    let exec = held(transaction, &["EXEC"]);
    // Reads go on meanwhile, a transaction of reads too, and the writes
    // have not run.
    assert_eq!(raw(reader, &["GET", "k"]), V::Nil);
    assert_eq!(raw(reader, &["MULTI"]), ok());
    assert_eq!(raw(reader, &["GET", "k"]), queued);
    assert_eq!(raw(reader, &["EXISTS", "n"]), queued);
    assert_eq!(raw(reader, &["EXEC"]), V::Array(vec![V::Nil, V::Int(0)]));
    // All held: blocked clients, as Redis counts them.
    assert!(server.blocked_clients_reach(3));
    assert!(
        !write.is_finished() && !exec.is_finished() && !publish.is_finished(),
        "a write ran during CLIENT PAUSE WRITE"
    );
    assert_eq!(raw(reader, &["GET", "k"]), V::Nil);
    assert_eq!(raw(admin, &["CLIENT", "UNPAUSE"]), ok());
    assert_eq!(write.join().unwrap(), ok());
    assert_eq!(exec.join().unwrap(), V::Array(vec![V::Int(1)]));
    assert_eq!(publish.join().unwrap(), V::Int(0));
    assert_eq!(raw(reader, &["GET", "k"]), bulk("v"));

    // A second CLIENT PAUSE neither shortens the first nor lets more
    // through (as in Redis): the write after a pause of 0 is held.
    let writer = server.client();
    assert_eq!(raw(admin, &["CLIENT", "PAUSE", "100000", "WRITE"]), ok());
    assert_eq!(raw(admin, &["CLIENT", "PAUSE", "0", "WRITE"]), ok());
    let write = held(writer, &["SET", "k", "w"]);
    assert!(server.blocked_clients_reach(1), "the write is held");
    assert_eq!(raw(admin, &["CLIENT", "UNPAUSE"]), ok());
    assert_eq!(write.join().unwrap(), ok());

    // A pause of everything holds every command, CLIENT UNPAUSE too (as
    // in Redis): both run once it ends at its timeout.
    let mut pinger = server.client();
    let paused_at = std::time::Instant::now();
    assert_eq!(raw(admin, &["CLIENT", "PAUSE", "500"]), ok());
    let ping = std::thread::spawn(move || (raw(&mut pinger, &["PING"]), paused_at.elapsed()));
    assert_eq!(raw(admin, &["CLIENT", "UNPAUSE"]), ok());
    let unpaused = paused_at.elapsed();
    let (pong, ponged) = ping.join().unwrap();
    assert_eq!(pong, V::SimpleString("PONG".into()));
    for took in [unpaused, ponged] {
        assert!(
            took >= Duration::from_millis(500),
            "ran during the pause: {took:?}"
        );
    }

    // A pause ends at its timeout by itself.
    let incr = server.client();
    let paused_at = std::time::Instant::now();
    assert_eq!(raw(admin, &["CLIENT", "PAUSE", "400", "write"]), ok());
    assert_eq!(held(incr, &["INCR", "m"]).join().unwrap(), V::Int(1));
    // Not before the pause's end, which is 400 ms after it began.
    assert!(
        paused_at.elapsed() >= Duration::from_millis(400),
        "{:?}",
        paused_at.elapsed()
    );
}

/// The replies to the commands before one that waits (a write held by
/// CLIENT PAUSE WRITE, WAIT) go out at once, as Redis writes them before
/// the client blocks: a pipelined read before a held write is answered
/// during the pause, a write's `+OK` before the WAIT that follows it.
#[test]
fn replies_before_a_command_that_waits_go_out_at_once() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("node"), &[]);
    let admin = &mut server.client();
    let connect = || {
        let s = std::net::TcpStream::connect(server.resp).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    };
    // Reads exactly `expected`, within the read timeout.
    let read = |s: &mut std::net::TcpStream, expected: &str| {
        let mut got = vec![0u8; expected.len()];
        s.read_exact(&mut got).expect("the reply in time");
        assert_eq!(String::from_utf8_lossy(&got), expected);
    };
    let mut c = connect();
    assert_eq!(raw(admin, &["CLIENT", "PAUSE", "100000", "WRITE"]), ok());
    c.write_all(&[request(&["GET", "a"]), request(&["SET", "a", "1"])].concat())
        .unwrap();
    read(&mut c, "$-1\r\n");
    assert!(server.blocked_clients_reach(1), "the SET is held");
    assert_eq!(raw(admin, &["CLIENT", "UNPAUSE"]), ok());
    read(&mut c, "+OK\r\n");
    // WAIT for a replica there is not: the SET's reply first, the WAIT's
    // when its time is up.
    let sent = std::time::Instant::now();
    c.write_all(&[request(&["SET", "b", "1"]), request(&["WAIT", "1", "3000"])].concat())
        .unwrap();
    read(&mut c, "+OK\r\n");
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "the SET's reply waited for the WAIT"
    );
    read(&mut c, ":0\r\n");
    assert!(sent.elapsed() >= Duration::from_secs(3));
}

/// A write held by CLIENT PAUSE WRITE never runs if its client is killed
/// meanwhile, as Redis drops a freed client's postponed command (its
/// client may retry elsewhere); a held client is not idle (`timeout`), and
/// its write runs once the pause ends.
#[test]
fn a_held_write_of_a_killed_client_never_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("node"), &[]);
    let admin = &mut server.client();
    assert_eq!(raw(admin, &["CONFIG", "SET", "timeout", "1"]), ok());
    let (mut victim, mut patient) = (server.client(), server.client());
    // An idle client beside them: the timeout's witness.
    let mut witness = std::net::TcpStream::connect(server.resp).expect("connect");
    {
        use std::io::{Read, Write};
        witness.write_all(&request(&["PING"])).expect("PING");
        let mut pong = [0u8; 7];
        witness.read_exact(&mut pong).expect("PONG");
    }
    let id: i64 = cmd(&["CLIENT", "ID"]).query(&mut victim).expect("ID");
    assert_eq!(raw(admin, &["CLIENT", "PAUSE", "100000", "WRITE"]), ok());
    let killed = std::thread::spawn(move || cmd(&["INCR", "n"]).query::<i64>(&mut victim));
    let held = std::thread::spawn(move || raw(&mut patient, &["SET", "k", "v"]));
    assert!(server.blocked_clients_reach(2));
    assert_eq!(
        raw(admin, &["CLIENT", "KILL", "ID", &id.to_string()]),
        V::Int(1)
    );
    assert!(
        killed.join().unwrap().is_err(),
        "the killed client got a reply"
    );
    // Once the idle witness is closed (past the timeout), the held one is
    // still there (the idle admin is not: a new connection goes on).
    witness
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        use std::io::Read;
        // Closed: end of file, or reset; a timeout while it is open.
        match witness.read(&mut [0u8; 16]) {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        }
    }));
    let admin = &mut server.client();
    assert_eq!(raw(admin, &["CLIENT", "UNPAUSE"]), ok());
    let held = held.join();
    assert!(
        held.is_ok(),
        "the held client was closed: {}",
        server.stderr()
    );
    assert_eq!(held.unwrap(), ok());
    assert_eq!(
        raw(admin, &["GET", "n"]),
        V::Nil,
        "the killed client's INCR ran"
    );
    assert_eq!(raw(admin, &["GET", "k"]), bulk("v"));
}

/// A client that closes its connection while a pause holds its write, or
/// while it waits in WAIT, is gone at once: the held write never runs (as
/// Redis frees a postponed client whose socket closes: its client may have
/// retried elsewhere), and a WAIT without a timeout does not keep the
/// connection for ever.
#[test]
fn a_client_that_closes_while_held_or_waiting_is_gone_at_once() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("node"), &[]);
    let admin = &mut server.client();
    let send = |args: &[&str]| {
        let mut socket = std::net::TcpStream::connect(server.resp).expect("connect");
        socket.write_all(&request(args)).expect("send");
        socket
    };
    assert_eq!(raw(admin, &["CLIENT", "PAUSE", "100000", "WRITE"]), ok());
    let held = send(&["INCR", "n"]);
    assert!(server.blocked_clients_reach(1));
    drop(held);
    assert!(
        server.blocked_clients_reach(0),
        "the closed client is still held"
    );
    assert_eq!(raw(admin, &["CLIENT", "UNPAUSE"]), ok());
    assert_eq!(raw(admin, &["GET", "n"]), V::Nil, "its INCR ran");
    // No replica: it would wait for ever.
    let waiting = send(&["WAIT", "1", "0"]);
    assert!(server.blocked_clients_reach(1));
    drop(waiting);
    assert!(
        server.blocked_clients_reach(0),
        "the closed client still waits"
    );
    // The admin and INFO's own connection.
    assert_eq!(
        server.info_field("clients", "connected_clients").as_deref(),
        Some("2")
    );
}

/// SHUTDOWN stops the node as SIGTERM does: the asking connection closes
/// with no reply (as Redis's), so do the others, the process exits 0, and
/// every acknowledged write is there after a restart; with SAVE and FORCE
/// too. A node without replicas does not wait.
#[test]
fn shutdown_stops_the_node_and_keeps_what_it_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("node");
    for (round, flags) in [&[][..], &["SAVE", "FORCE"][..], &["NOSAVE", "NOW"][..]]
        .into_iter()
        .enumerate()
    {
        let mut server = Server::start(&data, &["--fsync", "everysec"]);
        let (c, other) = (&mut server.client(), &mut server.client());
        for i in 0..100 {
            raw(c, &["SET", &format!("k{round}:{i}"), "v"]);
        }
        let mut shutdown = vec!["SHUTDOWN"];
        shutdown.extend_from_slice(flags);
        let started = std::time::Instant::now();
        assert!(
            cmd(&shutdown).query::<V>(c).is_err(),
            "{shutdown:?}: no reply, the connection closed"
        );
        let status = server
            .wait_exit(Duration::from_secs(10))
            .expect("the node stops");
        assert!(status.success(), "{shutdown:?}: {status:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(cmd(&["PING"]).query::<V>(other).is_err());
        let server = Server::start(&data, &[]);
        let c = &mut server.client();
        assert_eq!(raw(c, &["DBSIZE"]), V::Int(100 * (round as i64 + 1)));
        assert_eq!(raw(c, &["GET", &format!("k{round}:99")]), bulk("v"));
    }

    // SHUTDOWN SAVE right behind a BGSAVE (one request, so the BGSAVE is
    // still under way): it waits for it and saves, and the node stops;
    // it is not refused as a save would be ("already in progress").
    let mut server = Server::start(&data, &["--fsync", "everysec"]);
    let c = &mut server.client();
    for i in 0..100 {
        raw(c, &["SET", &format!("bg:{i}"), "v"]);
    }
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(server.resp).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"BGSAVE\r\nSHUTDOWN SAVE\r\n").unwrap();
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        assert_eq!(reply, b"+Background saving started\r\n");
    }
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("the node stops");
    assert!(status.success(), "{status:?}");
    assert!(
        !server.stderr().contains("the save failed"),
        "{}",
        server.stderr()
    );
    let server = Server::start(&data, &[]);
    assert_eq!(raw(&mut server.client(), &["DBSIZE"]), V::Int(400));
}

/// A write held by CLIENT PAUSE when the node is told to stop fails
/// instead of running (a pause for a switchover must not end in a write on
/// the old primary), and the node stops at once rather than after the
/// pause.
#[test]
fn a_write_held_by_a_pause_fails_when_the_node_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("node");
    let mut server = Server::start(&data, &[]);
    let admin = &mut server.client();
    let mut writer = server.client();
    assert_eq!(raw(admin, &["CLIENT", "PAUSE", "100000", "WRITE"]), ok());
    let write = std::thread::spawn(move || cmd(&["SET", "late", "v"]).query::<V>(&mut writer));
    assert!(server.blocked_clients_reach(1), "the write is held");
    assert!(!write.is_finished());
    let started = std::time::Instant::now();
    assert!(server.terminate().success());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped after {:?}",
        started.elapsed()
    );
    assert!(write.join().unwrap().is_err(), "the held write failed");
    let server = Server::start(&data, &[]);
    assert_eq!(raw(&mut server.client(), &["GET", "late"]), V::Nil);
}

/// LCS refuses two strings whose table would pass `LCS_TABLE_BYTES_MAX`
/// with Redis's out-of-memory error, without reading them, after the
/// errors Redis gives first (a hash, a bad option).
#[test]
fn lcs_refuses_a_table_past_its_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("node"), &[]);
    let c = &mut server.client();
    // 12,000 bytes each: 4 × 12,001² bytes, past 512 MiB.
    let long = "x".repeat(12_000);
    raw(c, &["SET", "a", &long]);
    raw(c, &["SET", "b", &long]);
    raw(c, &["HSET", "h", "f", "v"]);
    let refused = "ERR Insufficient memory, failed allocating transient memory for LCS";
    assert_eq!(error(c, &["LCS", "a", "b"]), refused);
    assert_eq!(error(c, &["LCS", "a", "b", "LEN"]), refused);
    assert_eq!(error(c, &["LCS", "a", "b", "NOPE"]), "ERR syntax error");
    assert_eq!(
        error(c, &["LCS", "a", "h"]),
        "ERR The specified keys must contain string values"
    );
    // No access times: OBJECT IDLETIME says so for a key, nil for none.
    assert_eq!(
        error(c, &["OBJECT", "IDLETIME", "a"]),
        "ERR ferry keeps no access times: OBJECT IDLETIME is not tracked"
    );
    assert_eq!(raw(c, &["OBJECT", "IDLETIME", "nosuch"]), V::Nil);
    // Within the limit: one of them against a short string.
    raw(c, &["SET", "s", "xyx"]);
    assert_eq!(raw(c, &["LCS", "a", "s", "LEN"]), V::Int(2));
}

/// The kernel's timer on the server's end of the loopback connection from
/// `client_port` to `server_port` (`/proc/net/tcp`'s `tr:when`: 00 none,
/// 01 retransmission, 02 keepalive; when in clock ticks).
fn tcp_timer(server_port: u16, client_port: u16) -> Option<(String, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if port(f[1]) != Some(server_port) || port(f[2]) != Some(client_port) {
            return None;
        }
        let (kind, when) = f[5].split_once(':')?;
        Some((kind.to_string(), u64::from_str_radix(when, 16).ok()?))
    })
}

/// `--timeout` closes a client idle that long, not one that keeps sending
/// commands nor a MONITOR client (as Redis's timeout); `--tcp-keepalive`
/// arms TCP keepalive on client connections (the kernel's keepalive timer
/// runs on the server's end), and 0 leaves it off.
#[test]
fn idle_clients_are_closed_and_client_connections_keep_alive() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(
        &dir.path().join("node"),
        &["--timeout", "1", "--tcp-keepalive", "60"],
    );
    let connect = |server: &Server| {
        let mut s = std::net::TcpStream::connect(server.resp).expect("connect");
        s.write_all(b"PING\r\n").unwrap();
        assert_eq!(read_until(&mut s, |t| t.ends_with("\r\n")), "+PONG\r\n");
        s
    };
    // Before the server last read from it.
    let spoke = std::time::Instant::now();
    let mut idle = connect(&server);
    let client_port = idle.local_addr().unwrap().port();
    // 60 s, in ticks of 1/100 s: the timer is set within it.
    assert!(
        wait_until(Duration::from_secs(5), || matches!(
            tcp_timer(server.resp.port(), client_port),
            Some((kind, t)) if kind == "02" && t > 0 && t <= 6000
        )),
        "no keepalive timer: {:?}",
        tcp_timer(server.resp.port(), client_port)
    );
    let busy = &mut server.client();
    // A client in WAIT is not idle either: it waits out its 2.5 s.
    let mut waiting = server.client();
    let wait = std::thread::spawn(move || raw(&mut waiting, &["WAIT", "1", "2500"]));
    let mut monitor = std::net::TcpStream::connect(server.resp).expect("connect");
    monitor.write_all(b"MONITOR\r\n").unwrap();
    assert_eq!(read_until(&mut monitor, |t| t.ends_with("\r\n")), "+OK\r\n");
    idle.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(
        wait_until(Duration::from_secs(10), || {
            assert_eq!(raw(busy, &["PING"]), V::SimpleString("PONG".into()));
            matches!(idle.read(&mut byte), Ok(0))
        }),
        "the idle client was closed"
    );
    assert!(
        spoke.elapsed() >= Duration::from_secs(1),
        "{:?}",
        spoke.elapsed()
    );
    // The busy client and the monitor (idle as a client, but a monitor)
    // are still served a second later.
    let later = std::time::Instant::now();
    while later.elapsed() < Duration::from_millis(1500) {
        assert_eq!(raw(busy, &["PING"]), V::SimpleString("PONG".into()));
        std::thread::sleep(Duration::from_millis(100));
    }
    monitor.write_all(b"PING\r\n").unwrap();
    assert!(read_until(&mut monitor, |t| t.contains("+PONG\r\n")).contains("\"PING\""));
    assert_eq!(wait.join().unwrap(), V::Int(0));

    let server = Server::start(&dir.path().join("other"), &["--tcp-keepalive", "0"]);
    let plain = connect(&server);
    let client_port = plain.local_addr().unwrap().port();
    // Settled, the connection has no timer at all.
    assert!(
        wait_until(Duration::from_secs(5), || matches!(
            tcp_timer(server.resp.port(), client_port),
            Some((kind, _)) if kind == "00"
        )),
        "{:?}",
        tcp_timer(server.resp.port(), client_port)
    );
}

/// CONFIG SET changes what it sets at once, several together or none:
/// the slow log's threshold and length, the idle timeout (a client idle
/// past it is closed), the latency monitor's threshold, replicas' stale
/// reads; a flag of `ferry serve` is refused as immutable.
#[test]
fn config_set_takes_effect_at_once() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("node"), &[]);
    let c = &mut server.client();
    let get = |c: &mut redis::Connection, name: &str| -> String {
        match raw(c, &["CONFIG", "GET", name]) {
            V::Array(pair) => match &pair[..] {
                [_, V::BulkString(v)] => String::from_utf8(v.clone()).unwrap(),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(raw(c, &["SLOWLOG", "RESET"]), ok());
    assert_eq!(
        raw(
            c,
            &[
                "CONFIG",
                "SET",
                "slowlog-log-slower-than",
                "0",
                "slowlog-max-len",
                "3"
            ]
        ),
        ok()
    );
    for _ in 0..10 {
        raw(c, &["PING"]);
    }
    assert_eq!(raw(c, &["SLOWLOG", "LEN"]), V::Int(3));
    assert_eq!(
        raw(c, &["CONFIG", "SET", "slowlog-log-slower-than", "-1"]),
        ok()
    );
    assert_eq!(raw(c, &["SLOWLOG", "RESET"]), ok());
    raw(c, &["PING"]);
    assert_eq!(raw(c, &["SLOWLOG", "LEN"]), V::Int(0));

    assert_eq!(
        error(c, &["CONFIG", "SET", "timeout", "1", "dir", "/tmp"]),
        "ERR CONFIG SET failed (possibly related to argument 'dir') - can't set immutable config"
    );
    assert_eq!(get(c, "timeout"), "0");
    let mut idle = std::net::TcpStream::connect(server.resp).expect("connect");
    idle.write_all(b"PING\r\n").unwrap();
    assert_eq!(read_until(&mut idle, |t| t.ends_with("\r\n")), "+PONG\r\n");
    assert_eq!(raw(c, &["CONFIG", "SET", "timeout", "1"]), ok());
    assert_eq!(get(c, "timeout"), "1");
    idle.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(
        wait_until(Duration::from_secs(10), || {
            raw(c, &["PING"]);
            matches!(std::io::Read::read(&mut idle, &mut byte), Ok(0))
        }),
        "the idle client was closed once the timeout was set"
    );
    assert_eq!(raw(c, &["CONFIG", "SET", "timeout", "0"]), ok());

    assert_eq!(
        raw(c, &["CONFIG", "SET", "latency-monitor-threshold", "100"]),
        ok()
    );
    assert_eq!(get(c, "latency-monitor-threshold"), "100");
    let V::BulkString(text) = raw(c, &["LATENCY", "DOCTOR"]) else {
        panic!()
    };
    let text = String::from_utf8(text).unwrap();
    assert!(text.starts_with("No event took 100 ms"), "{text}");
    assert_eq!(
        raw(c, &["CONFIG", "SET", "replica-serve-stale-data", "no"]),
        ok()
    );
    assert_eq!(get(c, "replica-serve-stale-data"), "no");

    // appendfsync: under always each acknowledged write was synced, under
    // no none is.
    let syncs = || -> u64 {
        server
            .info_field("persistence", "wal_syncs")
            .expect("wal_syncs")
            .parse()
            .unwrap()
    };
    for (policy, synced_each) in [("always", true), ("no", false)] {
        assert_eq!(raw(c, &["CONFIG", "SET", "appendfsync", policy]), ok());
        assert_eq!(get(c, "appendfsync"), policy);
        let before = syncs();
        for i in 0..20 {
            assert_eq!(raw(c, &["SET", &format!("sync-{i}"), "v"]), ok());
        }
        let synced = syncs() - before;
        if synced_each {
            assert!(synced >= 20, "{policy}: {synced} syncs for 20 writes");
        } else {
            assert_eq!(synced, 0, "{policy}");
        }
    }
    assert_eq!(raw(c, &["CONFIG", "SET", "appendfsync", "everysec"]), ok());
}

/// `--config FILE`: settings as Redis's file has them (comments, quotes,
/// units, Redis's `appendfsync`), after the command line and the
/// environment. CONFIG REWRITE writes the running values of what CONFIG SET
/// changes back into it, in place or at the end, comments kept, and a
/// restart on the file alone has them. A setting ferry lacks stops the
/// start, naming its line.
#[test]
fn a_config_file_sets_the_node_and_config_rewrite_keeps_what_config_set_changed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (file, data) = (dir.path().join("ferry.conf"), dir.path().join("node"));
    std::fs::write(
        &file,
        "# ferry's settings\n\nappendfsync always\nmaxclients 77\nproto-max-bulk-len 2mb\n\
         slowlog-max-len 5\ntimeout \"0\"\nclient-output-buffer-limit pubsub 64mb 16mb 30\n\
         client-output-buffer-limit replica 1mb 2mb 3\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let mut server = Server::try_start_env(
        &data,
        &["--config", path, "--slowlog-max-len", "6"],
        &[("FERRY_TIMEOUT", "9")],
    )
    .expect("starts");
    let c = &mut server.client();
    let get = |c: &mut redis::Connection, name: &str| {
        cmd(&["CONFIG", "GET", name])
            .query::<Vec<String>>(c)
            .expect("CONFIG GET")
            .pop()
            .expect("a value")
    };
    for (name, value) in [
        ("appendfsync", "always"),
        ("maxclients", "77"),
        ("proto-max-bulk-len", "2097152"),
        // The command line's, then the environment's, over the file's.
        ("slowlog-max-len", "6"),
        ("timeout", "9"),
        // A line per class, as Redis's file has them.
        (
            "client-output-buffer-limit",
            "normal 0 0 0 slave 1048576 2097152 3 pubsub 67108864 16777216 30",
        ),
    ] {
        assert_eq!(get(c, name), value, "{name}");
    }
    assert_eq!(
        server.info_field("server", "config_file").as_deref(),
        Some(path)
    );
    assert_eq!(
        raw(
            c,
            &[
                "CONFIG",
                "SET",
                "maxclients",
                "88",
                "requirepass",
                "two words",
                "tcp-keepalive",
                "60"
            ]
        ),
        ok()
    );
    // A query buffer shorter than the longest bulk, as Redis lets it be
    // set: the node starts again from the file saying so.
    assert_eq!(
        raw(c, &["CONFIG", "SET", "client-query-buffer-limit", "1mb"]),
        ok()
    );
    // What ferry does anyway goes through, the rest is refused with why;
    // neither is written to the file.
    assert_eq!(
        raw(c, &["CONFIG", "SET", "appendonly", "yes", "save", ""]),
        ok()
    );
    let refused = cmd(&["CONFIG", "SET", "save", "900 1"])
        .query::<V>(c)
        .expect_err("refused");
    assert!(
        refused
            .detail()
            .is_some_and(|d| d
                .ends_with("ferry takes no snapshots on a schedule: its WAL keeps every write")),
        "{refused}"
    );
    assert_eq!(raw(c, &["CONFIG", "REWRITE"]), ok());
    // What the command line and the environment set wins at the next
    // start: the log says so of what the file now has too.
    let log = server.stderr();
    for (flag, warned) in [
        ("slowlog-max-len", true),
        ("timeout", true),
        ("maxclients", false),
    ] {
        assert_eq!(
            log.contains(&format!("setting=\"{flag}\"")),
            warned,
            "{flag}: {log}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "# ferry's settings\n\nfsync always\nmaxclients 88\nproto-max-bulk-len 2097152\n\
         slowlog-max-len 6\ntimeout 9\nclient-output-buffer-limit \"normal 0 0 0 slave 1048576 \
         2097152 3 pubsub 67108864 16777216 30\"\nclient-query-buffer-limit 1048576\n\
         requirepass \"two words\"\ntcp-keepalive 60\n"
    );
    server.sigterm();
    assert!(
        server
            .wait_exit(Duration::from_secs(10))
            .expect("stops")
            .success()
    );

    let server = Server::start(&data, &["--config", path]);
    let c = &mut server.client();
    let refused = cmd(&["GET", "k"]).query::<V>(c).expect_err("a password");
    assert_eq!(refused.code(), Some("NOAUTH"), "{refused}");
    assert_eq!(raw(c, &["AUTH", "two words"]), ok());
    for (name, value) in [
        ("maxclients", "88"),
        ("timeout", "9"),
        ("tcp-keepalive", "60"),
        ("client-query-buffer-limit", "1048576"),
        ("slowlog-max-len", "6"),
        (
            "client-output-buffer-limit",
            "normal 0 0 0 slave 1048576 2097152 3 pubsub 67108864 16777216 30",
        ),
    ] {
        assert_eq!(get(c, name), value, "{name}");
    }
    drop(server);

    // A global flag too.
    std::fs::write(&file, "log-format json\n").unwrap();
    let server = Server::start(&data, &["--config", path]);
    assert!(
        server
            .stderr()
            .lines()
            .next()
            .is_some_and(|l| l.starts_with('{')),
        "{}",
        server.stderr()
    );
    drop(server);

    std::fs::write(&file, "maxclients 10\nbogus 1\n").unwrap();
    let refused = Server::try_start(&data, &["--config", path])
        .err()
        .expect("refused");
    assert!(
        refused.contains("line 2: unknown setting 'bogus'"),
        "{refused}"
    );
}

/// CLIENT TRACKING as Redis's: a RESP3 client is told (an `invalidate`
/// push) when a key it read changes, by another client's write, an
/// expiry or a FLUSHALL (a null), once per read; with BCAST, of every
/// change under its prefixes; with OPTIN, only of keys read after CLIENT
/// CACHING YES. CLIENT TRACKINGINFO, GETREDIR, CLIENT LIST and INFO show
/// it; OFF ends it.
#[test]
fn client_tracking_tells_a_client_when_what_it_read_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("node"), &[]);
    let writer = &mut server.client();
    assert_eq!(
        raw(writer, &["MSET", "a", "1", "b", "2", "user:1", "x"]),
        ok()
    );
    let mut t = Resp3::connect(&server);
    t.exchange(&["CLIENT", "GETREDIR"], ":-1\r\n");
    t.exchange(&["CLIENT", "TRACKING", "ON"], "+OK\r\n");
    t.exchange(&["CLIENT", "GETREDIR"], ":0\r\n");
    t.exchange(&["MGET", "a", "b"], "*2\r\n$1\r\n1\r\n$1\r\n2\r\n");
    assert_eq!(raw(writer, &["SET", "a", "10"]), ok());
    assert!(t.read_until(invalidate(&["a"]).as_bytes()));
    // Once per read: a second change of `a` is not told, `b`'s is.
    assert_eq!(raw(writer, &["SET", "a", "11"]), ok());
    assert_eq!(raw(writer, &["DEL", "b"]), V::Int(1));
    assert!(t.read_until(invalidate(&["b"]).as_bytes()));
    assert!(t.got.is_empty());
    // Expiry (the primary's sweep deletes it) and FLUSHALL. The key is
    // read again well inside its second (its push then comes on its own).
    t.exchange(&["GET", "a"], "$2\r\n11\r\n");
    assert_eq!(raw(writer, &["PEXPIRE", "a", "1000"]), V::Int(1));
    assert!(t.read_until(invalidate(&["a"]).as_bytes()), "the PEXPIRE");
    t.send(&["GET", "a"]);
    assert!(t.read_until(b"$2\r\n11\r\n"));
    assert!(t.read_until(invalidate(&["a"]).as_bytes()), "the expiry");
    assert!(t.got.is_empty());
    t.exchange(&["GET", "user:1"], "$1\r\nx\r\n");
    t.exchange(
        &["CLIENT", "TRACKINGINFO"],
        "%3\r\n$5\r\nflags\r\n~1\r\n$2\r\non\r\n$8\r\nredirect\r\n:0\r\n$8\r\nprefixes\r\n*0\r\n",
    );
    let line = server.info_field("clients", "tracking_clients");
    assert_eq!(line.as_deref(), Some("1"));
    let list = cmd(&["CLIENT", "LIST"])
        .query::<String>(writer)
        .expect("LIST");
    assert!(list.contains(" flags=t "), "{list}");
    assert_eq!(raw(writer, &["FLUSHALL"]), ok());
    assert!(t.read_until(b">2\r\n$10\r\ninvalidate\r\n_\r\n"));
    // A transaction's reads are noted as its EXEC runs them.
    t.exchange(&["MULTI"], "+OK\r\n");
    t.exchange(&["GET", "m"], "+QUEUED\r\n");
    t.exchange(&["EXEC"], "*1\r\n_\r\n");
    assert_eq!(raw(writer, &["SET", "m", "1"]), ok());
    assert!(t.read_until(invalidate(&["m"]).as_bytes()));
    // Past the table's limit, the keys forgotten are told.
    assert_eq!(
        raw(writer, &["CONFIG", "SET", "tracking-table-max-keys", "1"]),
        ok()
    );
    // (Which of the two is forgotten is the table's pick; its push may
    // come in the same read as the reply.)
    t.send(&["MGET", "m", "n"]);
    assert!(t.read_until(b"*2\r\n$1\r\n1\r\n_\r\n"));
    assert!(t.read_until(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\n"));
    assert!(t.read_until(b"\r\n"));
    assert!(t.got.is_empty(), "{:?}", String::from_utf8_lossy(&t.got));
    assert_eq!(
        server.info_field("stats", "tracking_total_keys").as_deref(),
        Some("1")
    );
    assert_eq!(
        raw(writer, &["CONFIG", "SET", "tracking-table-max-keys", "0"]),
        ok()
    );

    // BCAST: every change under its prefixes, read or not.
    let mut b = Resp3::connect(&server);
    b.exchange(
        &["CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "user:"],
        "+OK\r\n",
    );
    assert_eq!(raw(writer, &["MSET", "user:2", "y", "other", "z"]), ok());
    assert!(b.read_until(invalidate(&["user:2"]).as_bytes()));
    assert_eq!(
        server
            .info_field("stats", "tracking_total_prefixes")
            .as_deref(),
        Some("1")
    );

    // OPTIN: only what is read right after CLIENT CACHING YES.
    let mut o = Resp3::connect(&server);
    o.exchange(&["CLIENT", "TRACKING", "ON", "OPTIN"], "+OK\r\n");
    o.exchange(&["GET", "other"], "$1\r\nz\r\n");
    o.exchange(&["CLIENT", "CACHING", "YES"], "+OK\r\n");
    o.exchange(&["GET", "user:2"], "$1\r\ny\r\n");
    assert_eq!(raw(writer, &["MSET", "other", "1", "user:2", "2"]), ok());
    assert!(o.read_until(invalidate(&["user:2"]).as_bytes()));
    o.exchange(
        &["CLIENT", "CACHING", "NO"],
        "-ERR CLIENT CACHING NO is only valid when tracking is enabled in OPTOUT mode.\r\n",
    );

    // OBJECT's and MEMORY USAGE's key is read, as in Redis.
    let mut m = Resp3::connect(&server);
    m.exchange(&["CLIENT", "TRACKING", "ON"], "+OK\r\n");
    assert_eq!(raw(writer, &["SET", "okey", "5"]), ok());
    m.exchange(&["OBJECT", "ENCODING", "okey"], "$3\r\nint\r\n");
    assert_eq!(raw(writer, &["SET", "okey", "x"]), ok());
    assert!(m.read_until(invalidate(&["okey"]).as_bytes()));

    // OPTOUT: a refused command uses up CLIENT CACHING NO as one that ran
    // does; one inside a transaction answers for the transaction only.
    let mut x = Resp3::connect(&server);
    x.exchange(&["CLIENT", "TRACKING", "ON", "OPTOUT"], "+OK\r\n");
    x.exchange(&["CLIENT", "CACHING", "NO"], "+OK\r\n");
    x.exchange(
        &["GET"],
        "-ERR wrong number of arguments for 'get' command\r\n",
    );
    x.exchange(&["GET", "k1"], "_\r\n");
    x.exchange(&["MULTI"], "+OK\r\n");
    x.exchange(&["CLIENT", "CACHING", "NO"], "+QUEUED\r\n");
    x.exchange(&["GET", "k2"], "+QUEUED\r\n");
    x.exchange(&["EXEC"], "*2\r\n+OK\r\n_\r\n");
    x.exchange(&["GET", "k3"], "_\r\n");
    assert_eq!(
        raw(writer, &["MSET", "k1", "1", "k2", "2", "k3", "3"]),
        ok()
    );
    let before = x
        .read_past(invalidate(&["k3"]).as_bytes())
        .expect("k3 told");
    assert_eq!(before, invalidate(&["k1"]).as_bytes(), "k1 told, k2 not");

    // OFF: nothing more (the BCAST client's message, of a write after,
    // shows the write has been applied).
    t.exchange(&["GET", "other"], "$1\r\n1\r\n");
    t.exchange(&["CLIENT", "TRACKING", "OFF"], "+OK\r\n");
    assert_eq!(raw(writer, &["SET", "other", "2"]), ok());
    assert_eq!(raw(writer, &["SET", "user:3", "3"]), ok());
    assert!(b.read_until(invalidate(&["user:3"]).as_bytes()));
    t.exchange(&["PING"], "+PONG\r\n");
    t.exchange(&["CLIENT", "GETREDIR"], ":-1\r\n");
}

/// CLIENT TRACKING NOLOOP: a client is told of other clients' changes to
/// what it read, not of its own (a key it read and then wrote is forgotten
/// untold, as Redis; one its transaction wrote and then read stays read);
/// with BCAST, of other clients' changes under its prefixes only. A
/// default-mode client reading the same keys witnesses each change: once it is told, the NOLOOP client's push would have been
/// queued too (and would come before its next reply).
#[test]
fn a_noloop_client_is_told_of_other_clients_changes_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("node"), &[]);
    let writer = &mut server.client();
    assert_eq!(raw(writer, &["MSET", "a", "1", "b", "2"]), ok());
    let mut n = Resp3::connect(&server);
    n.exchange(&["CLIENT", "TRACKING", "ON", "NOLOOP"], "+OK\r\n");
    let mut w = Resp3::connect(&server);
    w.exchange(&["CLIENT", "TRACKING", "ON"], "+OK\r\n");
    let both = "*2\r\n$1\r\n1\r\n$1\r\n2\r\n";
    w.exchange(&["MGET", "a", "b"], both);
    n.exchange(&["MGET", "a", "b"], both);
    // Its own write: not told; then forgotten, so not told of another's.
    n.exchange(&["SET", "a", "3"], "+OK\r\n");
    assert!(w.read_until(invalidate(&["a"]).as_bytes()));
    w.exchange(&["GET", "a"], "$1\r\n3\r\n");
    assert_eq!(raw(writer, &["SET", "a", "4"]), ok());
    assert!(w.read_until(invalidate(&["a"]).as_bytes()));
    n.exchange(&["PING"], "+PONG\r\n");
    // Another client's write of a key it read: told.
    assert_eq!(raw(writer, &["SET", "b", "5"]), ok());
    assert!(w.read_until(invalidate(&["b"]).as_bytes()));
    assert!(n.read_until(invalidate(&["b"]).as_bytes()));
    n.exchange(&["PING"], "+PONG\r\n");

    // BCAST: another's change under the prefix is told, its own are not.
    let mut nb = Resp3::connect(&server);
    nb.exchange(
        &[
            "CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "u:", "NOLOOP",
        ],
        "+OK\r\n",
    );
    let mut wb = Resp3::connect(&server);
    wb.exchange(
        &["CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "u:"],
        "+OK\r\n",
    );
    nb.exchange(&["MSET", "u:1", "x", "u:2", "y"], "+OK\r\n");
    assert!(wb.read_until(invalidate(&["u:1", "u:2"]).as_bytes()));
    nb.exchange(&["PING"], "+PONG\r\n");
    assert_eq!(raw(writer, &["SET", "u:1", "z"]), ok());
    assert!(wb.read_until(invalidate(&["u:1"]).as_bytes()));
    assert!(nb.read_until(invalidate(&["u:1"]).as_bytes()));
    nb.exchange(&["PING"], "+PONG\r\n");

    // A transaction that writes a key and then reads it: the read stands
    // (Redis notes it after the write's invalidation), so another's change
    // is told.
    n.exchange(&["MULTI"], "+OK\r\n");
    n.exchange(&["SET", "c", "1"], "+QUEUED\r\n");
    n.exchange(&["GET", "c"], "+QUEUED\r\n");
    n.exchange(&["EXEC"], "*2\r\n+OK\r\n$1\r\n1\r\n");
    assert_eq!(raw(writer, &["SET", "c", "2"]), ok());
    assert!(n.read_until(invalidate(&["c"]).as_bytes()));
    n.exchange(&["PING"], "+PONG\r\n");
}

/// Pub/Sub through a real client: messages by channel and by pattern, in
/// the order published, PUBLISH counting the deliveries; a subscriber
/// reading after a message sees the write logged before it; PUBSUB's
/// figures, CLIENT LIST's and INFO's; the client leaves subscribed mode
/// with its last subscription.
#[test]
fn subscribers_get_messages_in_order_after_the_writes_before_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]);
    let p = &mut server.client();
    let mut sub_con = server.client();
    let mut sub = sub_con.as_pubsub();
    sub.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    sub.subscribe("news").expect("SUBSCRIBE");
    sub.psubscribe("n*").expect("PSUBSCRIBE");
    let list: String = cmd(&["CLIENT", "LIST", "TYPE", "pubsub"])
        .query(p)
        .expect("CLIENT LIST");
    assert!(list.contains("flags=P db=0 sub=1 psub=1 ssub=0"), "{list}");
    let normal: String = cmd(&["CLIENT", "LIST", "TYPE", "normal"])
        .query(p)
        .expect("CLIENT LIST");
    assert_eq!(normal.lines().count(), 1, "{normal}");
    assert_eq!(
        server.info_field("stats", "pubsub_channels").as_deref(),
        Some("1")
    );
    assert_eq!(
        server.info_field("stats", "pubsub_patterns").as_deref(),
        Some("1")
    );
    let numsub: Vec<redis::Value> = cmd(&["PUBSUB", "NUMSUB", "news", "other"])
        .query(p)
        .expect("NUMSUB");
    assert_eq!(
        numsub,
        vec![
            V::BulkString(b"news".to_vec()),
            V::Int(1),
            V::BulkString(b"other".to_vec()),
            V::Int(0)
        ]
    );
    let mut reader = server.client();
    for i in 0..50 {
        let value = i.to_string();
        cmd(&["SET", "k", &value]).query::<()>(p).expect("SET");
        let delivered: i64 = cmd(&["PUBLISH", "news", &value]).query(p).expect("PUBLISH");
        assert_eq!(delivered, 2, "channel and pattern");
        let direct = sub.get_message().expect("message");
        assert_eq!(
            (
                direct.get_channel_name(),
                direct.get_payload::<String>().unwrap()
            ),
            ("news", value.clone())
        );
        assert!(!direct.from_pattern());
        let by_pattern = sub.get_message().expect("message");
        assert_eq!(by_pattern.get_pattern::<String>().unwrap(), "n*");
        assert_eq!(by_pattern.get_payload::<String>().unwrap(), value);
        // The write before the message is there to read.
        let k: String = cmd(&["GET", "k"]).query(&mut reader).expect("GET");
        assert_eq!(k, value);
    }
    // A channel nobody listens to, and one only a pattern matches.
    let none: i64 = cmd(&["PUBLISH", "other", "x"]).query(p).expect("PUBLISH");
    assert_eq!(none, 0);
    let patterned: i64 = cmd(&["PUBLISH", "nx", "y"]).query(p).expect("PUBLISH");
    assert_eq!(patterned, 1);
    assert_eq!(sub.get_message().expect("message").get_channel_name(), "nx");
    sub.unsubscribe("news").expect("UNSUBSCRIBE");
    sub.punsubscribe("n*").expect("PUNSUBSCRIBE");
    drop(sub);
    // Out of subscribed mode: any command runs again.
    let v: String = cmd(&["GET", "k"]).query(&mut sub_con).expect("GET");
    assert_eq!(v, "49");
    assert_eq!(
        server.info_field("stats", "pubsub_channels").as_deref(),
        Some("0")
    );
    let channels: Vec<String> = cmd(&["PUBSUB", "CHANNELS"]).query(p).expect("CHANNELS");
    assert!(channels.is_empty(), "{channels:?}");
}

/// A RESP3 subscriber runs any command between its messages; a message
/// published by the subscriber itself comes before its PUBLISH's reply,
/// as Redis sends it; SSUBSCRIBE's shard channels are apart from the
/// others; RESET ends every subscription, and CLIENT KILL TYPE pubsub
/// closes a subscriber.
#[test]
fn a_resp3_subscriber_reads_and_writes_between_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]);
    let mut s = Resp3::connect(&server);
    s.exchange(
        &["SUBSCRIBE", "c"],
        ">3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n",
    );
    s.exchange(
        &["SSUBSCRIBE", "c"],
        ">3\r\n$10\r\nssubscribe\r\n$1\r\nc\r\n:1\r\n",
    );
    s.exchange(&["SET", "k", "v"], "+OK\r\n");
    s.exchange(&["GET", "k"], "$1\r\nv\r\n");
    s.exchange(
        &["PUBLISH", "c", "own"],
        &format!("{}:1\r\n", pubsub_message('>', None, "c", "own")),
    );
    s.exchange(
        &["SPUBLISH", "c", "sharded"],
        ">3\r\n$8\r\nsmessage\r\n$1\r\nc\r\n$7\r\nsharded\r\n:1\r\n",
    );
    let p = &mut server.client();
    let n: i64 = cmd(&["PUBLISH", "c", "other's"]).query(p).expect("PUBLISH");
    assert_eq!(n, 1);
    assert!(s.read_until(pubsub_message('>', None, "c", "other's").as_bytes()));
    s.exchange(&["RESET"], "+RESET\r\n");
    let n: i64 = cmd(&["PUBLISH", "c", "gone"]).query(p).expect("PUBLISH");
    assert_eq!(n, 0);
    // A RESP2 subscriber, closed by type.
    let mut r2 = Resp3::connect_resp2(&server);
    r2.exchange(
        &["SUBSCRIBE", "c"],
        "*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n",
    );
    r2.exchange(&["PING"], "*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    let killed: i64 = cmd(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .query(p)
        .expect("KILL");
    assert_eq!(killed, 1);
    assert!(wait_until(Duration::from_secs(10), || {
        server.info_field("stats", "pubsub_channels").as_deref() == Some("0")
    }));
}

/// A subscriber that stops reading is closed once its messages waiting
/// reach the limit (32 MiB, Redis's hard limit for Pub/Sub clients); the
/// server and the other subscribers go on.
#[test]
fn a_subscriber_that_stops_reading_is_closed_past_the_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]);
    let mut stuck = Resp3::connect_resp2(&server);
    stuck.exchange(
        &["SUBSCRIBE", "flood"],
        "*3\r\n$9\r\nsubscribe\r\n$5\r\nflood\r\n:1\r\n",
    );
    let p = &mut server.client();
    let payload = "x".repeat(1 << 20);
    // 32 MiB past the socket's buffers: well within 96 messages.
    let mut sent = 0;
    while sent < 96 {
        let n: i64 = cmd(&["PUBLISH", "flood", &payload])
            .query(p)
            .expect("PUBLISH");
        sent += 1;
        if n == 0 {
            break;
        }
    }
    assert!(sent < 96, "still subscribed after {sent} MiB unread");
    // Each message a little over 1 MiB: the 32nd passes the limit.
    assert!(
        sent >= 32,
        "closed after {sent} MiB, before the limit's 32 MiB"
    );
    assert!(wait_until(Duration::from_secs(10), || {
        server.info_field("stats", "pubsub_channels").as_deref() == Some("0")
    }));
    assert!(
        server
            .stderr()
            .contains("closing a subscriber that fell behind")
    );
    let pong: String = cmd(&["PING"]).query(p).expect("PING");
    assert_eq!(pong, "PONG");
}

/// `client-output-buffer-limit` set at run time holds subscribers to it:
/// a hard limit lowered to 256 KiB closes one that stops reading at that;
/// a soft limit closes one that stays past it longer than its seconds,
/// counted from the first message that found it there.
#[test]
fn client_output_buffer_limit_set_at_run_time_holds_subscribers_to_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]);
    let p = &mut server.client();
    let subscribe = |channel: &str| {
        let mut stuck = Resp3::connect_resp2(&server);
        stuck.exchange(
            &["SUBSCRIBE", channel],
            &format!(
                "*3\r\n$9\r\nsubscribe\r\n${}\r\n{channel}\r\n:1\r\n",
                channel.len()
            ),
        );
        stuck
    };
    // 64 KiB messages: the socket's buffers hold a few hundred KiB, so the
    // limits are tested by what waits past them.
    let payload = "x".repeat(64 << 10);
    let mut publish_until_closed = |channel: &str, most: usize| {
        for sent in 1..=most {
            let n: i64 = cmd(&["PUBLISH", channel, &payload])
                .query(p)
                .expect("PUBLISH");
            if n == 0 {
                return Some(sent);
            }
        }
        None
    };
    let _hard = subscribe("hard");
    raw(
        &mut server.client(),
        &[
            "CONFIG",
            "SET",
            "client-output-buffer-limit",
            "pubsub 256kb 0 0",
        ],
    );
    let sent = publish_until_closed("hard", 1000).expect("closed at the hard limit");
    assert!(sent > 4, "closed after {sent} messages, before 256 KiB");

    let _soft = subscribe("soft");
    raw(
        &mut server.client(),
        &[
            "CONFIG",
            "SET",
            "client-output-buffer-limit",
            "pubsub 0 256kb 1",
        ],
    );
    let started = std::time::Instant::now();
    // Bounded: a message every 10 ms for at most 10 s.
    let mut closed = false;
    for _ in 0..1000 {
        let n: i64 = cmd(&["PUBLISH", "soft", &payload])
            .query(&mut server.client())
            .expect("PUBLISH");
        if n == 0 {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(closed, "the soft limit closed the subscriber");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "closed only after the soft limit's second, in {:?}",
        started.elapsed()
    );
    assert_eq!(
        raw(
            &mut server.client(),
            &["CONFIG", "GET", "client-output-buffer-limit"]
        ),
        V::Array(vec![
            bulk("client-output-buffer-limit"),
            bulk("normal 0 0 0 slave 268435456 67108864 60 pubsub 0 262144 1"),
        ])
    );
}

/// `client-output-buffer-limit normal` holds a client's replies waiting to
/// be written, as Redis: past the hard limit it is closed at once (what
/// waits dropped), past the soft limit once that has lasted longer than
/// its seconds; a client under them, and the others, go on. INFO counts
/// the closes (Redis 7.2's `client_output_buffer_limit_disconnections`).
#[test]
fn client_output_buffer_limit_normal_closes_a_client_that_lets_replies_pile_up() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]);
    let p = &mut server.client();
    let value = "x".repeat(1 << 20);
    raw(p, &["SET", "big", &value]);
    let set_limit = |c: &mut redis::Connection, limit: &str| {
        assert_eq!(
            raw(c, &["CONFIG", "SET", "client-output-buffer-limit", limit]),
            ok()
        );
    };
    let gets = |n: usize| request(&["GET", "big"]).repeat(n);
    // The clients closed for their output so far (INFO stats).
    let closes = || {
        info_figure(
            &section_text(&server, "stats"),
            "client_output_buffer_limit_disconnections",
        )
    };
    // The bytes a connection gets for `request` before it is closed (at
    // most 10 s).
    let closed_after = |request: &[u8]| -> Option<usize> {
        let mut s = std::net::TcpStream::connect(server.resp).expect("connect");
        s.write_all(request).expect("send");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let (mut got, mut buf) = (0, vec![0u8; 1 << 16]);
        while std::time::Instant::now() < deadline {
            match s.read(&mut buf) {
                Ok(0) => return Some(got),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(got),
                Err(_) => {}
            }
        }
        None
    };
    // Unlimited (Redis's default): 20 MiB of replies, all of them.
    let reply = [
        format!("${}\r\n", 1 << 20).as_bytes(),
        value.as_bytes(),
        b"\r\n",
    ]
    .concat();
    let mut s = std::net::TcpStream::connect(server.resp).expect("connect");
    s.write_all(&gets(20)).expect("send");
    let mut all = vec![0u8; 20 * reply.len()];
    s.read_exact(&mut all).expect("every reply");
    assert!(all.chunks(reply.len()).all(|r| r == reply));
    drop(s);

    set_limit(p, "normal 4mb 0 0");
    // Under it: served.
    let mut s = std::net::TcpStream::connect(server.resp).expect("connect");
    s.write_all(&gets(3)).expect("send");
    s.read_exact(&mut all[..3 * reply.len()])
        .expect("three replies");
    drop(s);
    // Past it: closed, nothing of the batch written, and nothing after in
    // the batch run (a PUBLISH here), as Redis closes it before reading on.
    let mut sub = Resp3::connect(&server);
    sub.exchange(
        &["SUBSCRIBE", "ch"],
        ">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n",
    );
    // (The fifth reply, drained as the PUBLISH is read, is the one over.)
    let batch = [gets(5), request(&["PUBLISH", "ch", "lost"])].concat();
    let got = closed_after(&batch).expect("closed at the hard limit");
    assert!(got < 4 * reply.len(), "{got} bytes before the close");
    assert_eq!(closes(), 1);
    assert_eq!(raw(p, &["PUBLISH", "ch", "after"]), V::Int(1));
    let before = sub
        .read_past(pubsub_message('>', None, "ch", "after").as_bytes())
        .expect("the message after");
    assert_eq!(String::from_utf8_lossy(&before), "", "the PUBLISH ran");
    drop(sub);
    assert!(wait_until(Duration::from_secs(10), || {
        let clients: String = cmd(&["CLIENT", "LIST"]).query(p).expect("CLIENT LIST");
        clients.lines().count() == 1
    }));

    // The soft limit: 40 MiB waiting, more than the sockets hold, unread;
    // closed once it has waited past 4 MiB for over a second, not before.
    set_limit(p, "normal 0 4mb 1");
    let mut stuck = std::net::TcpStream::connect(server.resp).expect("connect");
    // Served once: listed.
    stuck.write_all(&request(&["PING"])).expect("PING");
    let mut pong = [0u8; 7];
    stuck.read_exact(&mut pong).expect("PONG");
    let sent = std::time::Instant::now();
    stuck.write_all(&gets(40)).expect("send");
    let clients: String = cmd(&["CLIENT", "LIST"]).query(p).expect("CLIENT LIST");
    if sent.elapsed() < Duration::from_millis(900) {
        assert_eq!(clients.lines().count(), 2, "not closed before its second");
    }
    assert!(wait_until(Duration::from_secs(10), || { closes() == 2 }));
    assert!(sent.elapsed() >= Duration::from_secs(1));
    drop(stuck);
    assert_eq!(closes(), 2);
    assert!(
        server
            .stderr()
            .contains("closing a client over its output buffer limit")
    );
    let pong: String = cmd(&["PING"]).query(p).expect("PING");
    assert_eq!(pong, "PONG");
    // CONFIG RESETSTAT zeroes the count.
    raw(p, &["CONFIG", "RESETSTAT"]);
    assert_eq!(closes(), 0);
}

/// Keyspace notifications set at run time: off, nothing is told; with
/// `KEA`, a write's events on both channels, and the expiry sweep's
/// `expired`; CONFIG GET shows the setting as Redis writes it.
#[test]
fn keyspace_events_follow_config_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]);
    let p = &mut server.client();
    let mut s = Resp3::connect(&server);
    s.exchange(
        &["PSUBSCRIBE", "__key*__:*"],
        ">3\r\n$10\r\npsubscribe\r\n$10\r\n__key*__:*\r\n:1\r\n",
    );
    let event =
        |channel: &str, payload: &str| pubsub_message('>', Some("__key*__:*"), channel, payload);
    cmd(&["SET", "quiet", "v"]).query::<()>(p).expect("SET");
    cmd(&["CONFIG", "SET", "notify-keyspace-events", "KEA"])
        .query::<()>(p)
        .expect("CONFIG SET");
    let shown: Vec<String> = cmd(&["CONFIG", "GET", "notify-keyspace-events"])
        .query(p)
        .expect("CONFIG GET");
    assert_eq!(shown, ["notify-keyspace-events", "AKE"]);
    cmd(&["INCR", "n"]).query::<()>(p).expect("INCR");
    // Expiring after the PING below has its reply.
    cmd(&["SET", "e", "v", "PX", "1000"])
        .query::<()>(p)
        .expect("SET");
    // Nothing of the write before: the first event is INCR's.
    s.exchange(
        &["PING"],
        &(event("__keyspace@0__:n", "incrby")
            + &event("__keyevent@0__:incrby", "n")
            + &event("__keyspace@0__:e", "set")
            + &event("__keyevent@0__:set", "e")
            + &event("__keyspace@0__:e", "expire")
            + &event("__keyevent@0__:expire", "e")
            + "+PONG\r\n"),
    );
    assert!(s.read_until(
        (event("__keyspace@0__:e", "expired") + &event("__keyevent@0__:expired", "e")).as_bytes()
    ));
    let err = error(p, &["CONFIG", "SET", "notify-keyspace-events", "Kq"]);
    assert!(err.contains("Invalid event class character"), "{err}");
}

/// CLIENT TRACKING's REDIRECT, the way RESP2 clients cache: a connection
/// subscribed to `__redis__:invalidate` gets, as messages, the
/// invalidations of the keys another connection read; a FLUSHALL's as a
/// null; once it has gone, the redirect shows broken, and a RESP3 client
/// redirecting there is told so (`tracking-redir-broken`) at each
/// invalidation.
#[test]
fn client_tracking_redirects_invalidations_to_a_subscriber() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]);
    let mut sink = Resp3::connect_resp2(&server);
    sink.send(&["CLIENT", "ID"]);
    let id = sink.read_line().trim_start_matches(':').to_string();
    sink.exchange(
        &["SUBSCRIBE", "__redis__:invalidate"],
        "*3\r\n$9\r\nsubscribe\r\n$20\r\n__redis__:invalidate\r\n:1\r\n",
    );
    let mut tracker = Resp3::connect_resp2(&server);
    tracker.exchange(&["CLIENT", "TRACKING", "ON", "REDIRECT", &id], "+OK\r\n");
    tracker.exchange(&["CLIENT", "GETREDIR"], &format!(":{id}\r\n"));
    tracker.exchange(&["GET", "k"], "$-1\r\n");
    let p = &mut server.client();
    let list: String = cmd(&["CLIENT", "LIST"]).query(p).expect("CLIENT LIST");
    assert!(list.contains(&format!("redir={id} ")), "{list}");
    cmd(&["SET", "k", "v"]).query::<()>(p).expect("SET");
    assert!(
        sink.read_until(b"*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*1\r\n$1\r\nk\r\n")
    );
    // Read once, told once.
    cmd(&["SET", "k", "w"]).query::<()>(p).expect("SET");
    tracker.exchange(&["GET", "k"], "$1\r\nw\r\n");
    cmd(&["FLUSHALL"]).query::<()>(p).expect("FLUSHALL");
    sink.exchange(
        &["PING"],
        "*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n$-1\r\n*2\r\n$4\r\npong\r\n$0\r\n\r\n",
    );
    // A RESP3 client redirecting there too is told, once it has gone, at
    // each invalidation.
    let mut resp3 = Resp3::connect(&server);
    resp3.exchange(&["CLIENT", "TRACKING", "ON", "REDIRECT", &id], "+OK\r\n");
    drop(sink);
    assert!(wait_until(Duration::from_secs(10), || {
        let list: String = cmd(&["CLIENT", "LIST"]).query(p).expect("CLIENT LIST");
        list.lines().count() == 3
    }));
    tracker.exchange(&["GET", "k"], "$-1\r\n");
    resp3.exchange(&["GET", "k"], "_\r\n");
    cmd(&["SET", "k", "x"]).query::<()>(p).expect("SET");
    let broken = format!(">2\r\n$21\r\ntracking-redir-broken\r\n:{id}\r\n");
    resp3.exchange(&["PING"], &format!("{broken}+PONG\r\n"));
    tracker.exchange(
        &["CLIENT", "TRACKINGINFO"],
        &format!(
            "*6\r\n$5\r\nflags\r\n*2\r\n$2\r\non\r\n$15\r\nbroken_redirect\r\n$8\r\nredirect\r\n:{id}\r\n$8\r\nprefixes\r\n*0\r\n"
        ),
    );
    let err = error(p, &["CLIENT", "TRACKING", "ON", "REDIRECT", "999999"]);
    assert_eq!(err, "ERR The client ID you want redirect to does not exist");
}

/// Invalidations in Redis 7.0's shapes, byte for byte: in default mode a
/// message per key (a write of three keys is three), in the order the
/// keys changed; with BCAST a message per prefix, in the prefixes' order,
/// of the keys changed under it, sorted, after the write's flushes.
#[test]
fn invalidations_are_shaped_as_redis_shapes_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]);
    let push = invalidate;
    let mut reader = Resp3::connect(&server);
    reader.exchange(&["CLIENT", "TRACKING", "ON"], "+OK\r\n");
    reader.exchange(&["MGET", "a", "b", "c"], "*3\r\n_\r\n_\r\n_\r\n");
    let mut prefixed = Resp3::connect(&server);
    prefixed.exchange(
        &[
            "CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "y", "PREFIX", "x",
        ],
        "+OK\r\n",
    );
    let mut all = Resp3::connect(&server);
    all.exchange(&["CLIENT", "TRACKING", "ON", "BCAST"], "+OK\r\n");
    let p = &mut server.client();
    cmd(&[
        "MSET", "c", "1", "y2", "2", "a", "3", "x2", "4", "b", "5", "x1", "6",
    ])
    .query::<()>(p)
    .expect("MSET");
    reader.exchange(
        &["PING"],
        &(push(&["c"]) + &push(&["a"]) + &push(&["b"]) + "+PONG\r\n"),
    );
    prefixed.exchange(
        &["PING"],
        &(push(&["x1", "x2"]) + &push(&["y2"]) + "+PONG\r\n"),
    );
    all.exchange(
        &["PING"],
        &(push(&["a", "b", "c", "x1", "x2", "y2"]) + "+PONG\r\n"),
    );
    // Flushes in a transaction: a reader is told of its key changed
    // before them at once, then a null per flush; a BCAST client the
    // nulls, then every key the transaction changed.
    reader.exchange(&["GET", "k1"], "_\r\n");
    for c in [
        "MULTI", "SET k1 1", "FLUSHALL", "SET k2 2", "FLUSHALL", "SET k3 3",
    ] {
        raw(p, &c.split(' ').collect::<Vec<_>>());
    }
    raw(p, &["EXEC"]);
    let null = ">2\r\n$10\r\ninvalidate\r\n_\r\n";
    reader.exchange(&["PING"], &(push(&["k1"]) + null + null + "+PONG\r\n"));
    all.exchange(
        &["PING"],
        &(null.to_string() + null + &push(&["k1", "k2", "k3"]) + "+PONG\r\n"),
    );
}

/// A REDIRECT target without subscriptions: a RESP3 one is pushed the
/// invalidations (as Redis pushes them, to any RESP3 target), a RESP2 one
/// is told nothing; a RESP3 target with subscriptions is pushed them in
/// the same form, in order with its messages. Each a push written before
/// the reply to the target's next command, byte for byte as Redis 7.0
/// writes them.
#[test]
fn client_tracking_redirects_to_a_resp3_client_as_pushes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]);
    let id_of = |c: &mut Resp3| {
        c.send(&["CLIENT", "ID"]);
        c.read_line().trim_start_matches(':').to_string()
    };
    let mut sink = Resp3::connect(&server);
    let sink_id = id_of(&mut sink);
    let mut tracker = Resp3::connect_resp2(&server);
    tracker.exchange(
        &["CLIENT", "TRACKING", "ON", "REDIRECT", &sink_id],
        "+OK\r\n",
    );
    tracker.exchange(&["GET", "k"], "$-1\r\n");
    let p = &mut server.client();
    cmd(&["SET", "k", "v"]).query::<()>(p).expect("SET");
    sink.exchange(&["PING"], &(invalidate(&["k"]) + "+PONG\r\n"));
    // A flush's null as the tracking client speaks (RESP2 here), as Redis
    // writes it; a RESP3 one's as RESP3's.
    cmd(&["FLUSHALL"]).query::<()>(p).expect("FLUSHALL");
    sink.exchange(&["PING"], ">2\r\n$10\r\ninvalidate\r\n$-1\r\n+PONG\r\n");
    let mut tracker3 = Resp3::connect(&server);
    tracker3.exchange(
        &["CLIENT", "TRACKING", "ON", "REDIRECT", &sink_id],
        "+OK\r\n",
    );
    cmd(&["FLUSHALL"]).query::<()>(p).expect("FLUSHALL");
    sink.exchange(
        &["PING"],
        ">2\r\n$10\r\ninvalidate\r\n$-1\r\n>2\r\n$10\r\ninvalidate\r\n_\r\n+PONG\r\n",
    );
    tracker3.exchange(&["CLIENT", "TRACKING", "OFF"], "+OK\r\n");
    // With subscriptions: the same push, after the message published
    // before the change.
    sink.exchange(
        &["SUBSCRIBE", "ch"],
        ">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n",
    );
    tracker.exchange(&["GET", "k"], "$-1\r\n");
    cmd(&["PUBLISH", "ch", "m"])
        .query::<()>(p)
        .expect("PUBLISH");
    cmd(&["SET", "k", "w"]).query::<()>(p).expect("SET");
    sink.exchange(
        &["PING"],
        &(pubsub_message('>', None, "ch", "m") + &invalidate(&["k"]) + "+PONG\r\n"),
    );
    // Back to RESP2 without subscriptions: nothing.
    sink.exchange(
        &["UNSUBSCRIBE"],
        ">3\r\n$11\r\nunsubscribe\r\n$2\r\nch\r\n:0\r\n",
    );
    sink.send(&["HELLO", "2"]);
    assert!(sink.read_until(b"modules\r\n*0\r\n"));
    tracker.exchange(&["GET", "k"], "$1\r\nw\r\n");
    cmd(&["SET", "k", "x"]).query::<()>(p).expect("SET");
    sink.exchange(&["PING"], "+PONG\r\n");
    // Nor was the tracking client: its redirect is not broken.
    tracker.exchange(
        &["CLIENT", "TRACKINGINFO"],
        &format!(
            "*6\r\n$5\r\nflags\r\n*1\r\n$2\r\non\r\n$8\r\nredirect\r\n:{sink_id}\r\n$8\r\nprefixes\r\n*0\r\n"
        ),
    );
}

/// WAITAOF (Redis 7.2's) on a node without replicas: `numlocal` waits for
/// the WAL's sync of the client's last write (at once under `always`,
/// within the second under `everysec`, never under `no`: it times out),
/// with Redis's errors in its order.
#[test]
fn waitaof_waits_for_the_local_log_to_hold_the_last_write() {
    let ints = |a: i64, b: i64| V::Array(vec![V::Int(a), V::Int(b)]);
    for (fsync, local) in [("always", 1), ("everysec", 1), ("no", 0)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = Server::start(dir.path(), &["--fsync", fsync]);
        let c = &mut server.client();
        raw(c, &["SET", "k", "v"]);
        // Under `no` it times out; else it answers as the sync lands
        // (the timeout only bounds a failure).
        let timeout = if local == 1 { "10000" } else { "1500" };
        let started = std::time::Instant::now();
        assert_eq!(
            raw(c, &["WAITAOF", "1", "0", timeout]),
            ints(local, 0),
            "{fsync}"
        );
        if local == 0 {
            assert!(started.elapsed() >= Duration::from_millis(1500), "{fsync}");
        }
        // Nothing more asked than there is: at once.
        assert_eq!(
            raw(c, &["WAITAOF", "0", "0", "0"]),
            ints(local, 0),
            "{fsync}"
        );
    }
    let (_dir, server) = start();
    let c = &mut server.client();
    for (args, text) in [
        ("x 0 0", "ERR value is not an integer or out of range"),
        (
            "2 0 0",
            "ERR value is out of range, value must between 0 and 1",
        ),
        (
            "-1 x x",
            "ERR value is out of range, value must between 0 and 1",
        ),
        ("0 -1 0", "ERR value is out of range, must be positive"),
        ("0 x 0", "ERR value is out of range, must be positive"),
        ("0 0 x", "ERR timeout is not an integer or out of range"),
        ("0 0 -1", "ERR timeout is negative"),
    ] {
        let args: Vec<&str> = std::iter::once("WAITAOF").chain(args.split(' ')).collect();
        assert_eq!(error(c, &args), text, "{args:?}");
    }
    assert_eq!(
        error(c, &["WAITAOF", "0", "0"]),
        "ERR wrong number of arguments for 'waitaof' command"
    );
}

/// `keymiss` (class `m`): a read, or a write's read for the client (as
/// GETDEL's), that finds no key tells it; one that finds its key does not.
#[test]
fn reads_that_find_no_key_tell_keymiss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &["--notify-keyspace-events", "Em"]);
    let p = &mut server.client();
    let mut s = Resp3::connect(&server);
    s.exchange(
        &["SUBSCRIBE", "__keyevent@0__:keymiss"],
        ">3\r\n$9\r\nsubscribe\r\n$22\r\n__keyevent@0__:keymiss\r\n:1\r\n",
    );
    let miss = |key: &str| {
        format!(
            ">3\r\n$7\r\nmessage\r\n$22\r\n__keyevent@0__:keymiss\r\n${}\r\n{key}\r\n",
            key.len()
        )
    };
    cmd(&["SET", "here", "v"]).query::<()>(p).expect("SET");
    cmd(&["GET", "here"]).query::<String>(p).expect("GET");
    cmd(&["GET", "a"]).query::<Option<String>>(p).expect("GET");
    cmd(&["MGET", "here", "b", "c"])
        .query::<Vec<Option<String>>>(p)
        .expect("MGET");
    cmd(&["HGET", "d", "f"])
        .query::<Option<String>>(p)
        .expect("HGET");
    cmd(&["GETDEL", "e"])
        .query::<Option<String>>(p)
        .expect("GETDEL");
    s.exchange(
        &["PING"],
        &(miss("a") + &miss("b") + &miss("c") + &miss("d") + &miss("e") + "+PONG\r\n"),
    );
}
