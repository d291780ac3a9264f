//! ferry against Redis itself: the same seeded-random commands go to a
//! `ferry serve` and to a `redis-server` side by side, over a few keys and
//! fields so that commands collide, change types and fail, and every reply
//! (errors included, to the text) must be the same. Replies whose order
//! Redis leaves unspecified (KEYS, SCAN, HGETALL, HSCAN, HKEYS, HVALS) are
//! compared sorted, a scan's whole iteration at once; remaining times to
//! live may differ by the time between the two servers' runs of the
//! command. Every other round speaks RESP3. After every command (or
//! pipeline) the counters INFO shows must have moved alike: keyspace hits
//! and misses, error replies, and the keys with and without an expiry. At
//! the end a replica replays ferry's whole log and must hold the same data.
//! Fixed cases compare the raw bytes of the replies: logins, HELLO's
//! options, rounding, refused EXECs, string size limits, and the limits on
//! a client yet to authenticate.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Server;
use ferry_wal::testing::SeededRng;
use redis::Value;

/// The keys of the random rounds: `k0` to `k5`.
const KEYS: u64 = 6;
/// Commands per round, and rounds (each on fresh servers' keyspace).
const COMMANDS: usize = 2000;
const ROUNDS: u64 = 8;
/// The longest the test may take, start to end.
const DEADLINE: Duration = Duration::from_secs(120);

/// A `redis-server` without persistence on a free loopback port; killed
/// when dropped.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// As [`Redis::start`], with more arguments.
    fn start_with(extra: &[&str]) -> Redis {
        let dir = tempfile::tempdir().expect("tempdir");
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                // ferry has one database, as Redis with this setting.
                .args(["--databases", "1"])
                .args(SLOWLOG_EVERYTHING)
                .args(extra)
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect(
                    "redis-server runs (scripts/test.sh installs it: apt-get install redis-server)",
                );
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // the port was taken meanwhile: another one
                }
                // Up: it answers (with --requirepass, that it wants it).
                if let Ok(mut c) = Redis::connect(port)
                    && redis::cmd("PING")
                        .query::<String>(&mut c)
                        .map_or_else(|e| e.code() == Some("NOAUTH"), |_| true)
                {
                    return Redis {
                        child,
                        port,
                        _dir: dir,
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server did not start on any of 5 ports");
    }

    fn connect(port: u16) -> redis::RedisResult<redis::Connection> {
        connect(&format!("redis://127.0.0.1:{port}/"), false)
    }
}

/// A connection to `url`, speaking RESP3 (after `HELLO 3`) if `resp3`.
/// A connection without the client's `CLIENT SETINFO`, which Redis 7.0
/// does not know (ferry takes it, as Redis 7.2 does).
fn connect(url: &str, resp3: bool) -> redis::RedisResult<redis::Connection> {
    use redis::IntoConnectionInfo;
    let url = if resp3 {
        format!("{url}?protocol=resp3")
    } else {
        url.to_string()
    };
    let info = url.into_connection_info()?;
    let settings = info.redis_settings().clone().set_skip_set_lib_name();
    redis::Client::open(info.set_redis_settings(settings))?
        .get_connection_with_timeout(Duration::from_secs(10))
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Both servers log every command that runs in their slow log, which the
/// test compares.
const SLOWLOG_EVERYTHING: [&str; 4] = [
    "--slowlog-log-slower-than",
    "0",
    "--slowlog-max-len",
    "10000",
];

/// The slow log, newest first, as each entry's arguments and client name
/// (times and addresses differ); then it is emptied. SCAN and HSCAN are
/// left out: their cursors and the number of calls an iteration takes are
/// each server's own.
fn take_slowlog(con: &mut redis::Connection) -> Vec<(Vec<Value>, Value)> {
    let Value::Array(entries) = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg("-1")
        .query(con)
        .expect("SLOWLOG GET")
    else {
        panic!("SLOWLOG GET: not an array");
    };
    let _: () = redis::cmd("SLOWLOG")
        .arg("RESET")
        .query(con)
        .expect("SLOWLOG RESET");
    let scan = |args: &[Value]| {
        matches!(args.first(), Some(Value::BulkString(name))
            if name.eq_ignore_ascii_case(b"scan") || name.eq_ignore_ascii_case(b"hscan"))
    };
    entries
        .into_iter()
        .map(|e| match e {
            Value::Array(fields) if fields.len() == 6 => {
                let Value::Array(args) = fields[3].clone() else {
                    panic!("arguments: {fields:?}");
                };
                (args, fields[5].clone())
            }
            other => panic!("a slow log entry: {other:?}"),
        })
        .filter(|(args, _)| !scan(args))
        .collect()
}

/// INFO's counters that must move as Redis's do: keyspace hits, misses,
/// error replies; then the keys and those with an expiry (`db0:`).
const COUNTERS: [&str; 5] = [
    "keyspace_hits",
    "keyspace_misses",
    "total_error_replies",
    "keys",
    "expires",
];

fn counters(con: &mut redis::Connection) -> [u64; 5] {
    let info: String = redis::cmd("INFO").query(con).expect("INFO");
    let mut out = [0; 5];
    for line in info.lines() {
        let fields: Vec<(&str, &str)> = match line.strip_prefix("db0:") {
            Some(db) => db.split(',').filter_map(|kv| kv.split_once('=')).collect(),
            None => line.split_once(':').into_iter().collect(),
        };
        for (name, value) in fields {
            if let Some(i) = COUNTERS.iter().position(|c| *c == name) {
                out[i] = value.trim().parse().expect("a number");
            }
        }
    }
    out
}

/// INFO commandstats as `name -> (calls, rejected, failed)` (the time spent
/// aside), then INFO errorstats as `code -> count`. SCAN's and HSCAN's
/// calls are left out: the two servers take different numbers of calls to
/// iterate.
type CommandStats = std::collections::BTreeMap<String, (u64, u64, u64)>;
type ErrorStats = std::collections::BTreeMap<String, u64>;

fn command_and_error_stats(con: &mut redis::Connection) -> (CommandStats, ErrorStats) {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .arg("errorstats")
        .query(con)
        .expect("INFO");
    let (mut commands, mut errors) = (CommandStats::new(), ErrorStats::new());
    for line in info.lines() {
        let field = |fields: &str, name: &str| -> u64 {
            fields
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("{name} in {line}"))
                .parse()
                .expect("a number")
        };
        if let Some((name, fields)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        {
            let calls = if name == "scan" || name == "hscan" {
                0
            } else {
                field(fields, "calls")
            };
            commands.insert(
                name.to_string(),
                (
                    calls,
                    field(fields, "rejected_calls"),
                    field(fields, "failed_calls"),
                ),
            );
        } else if let Some((code, fields)) = line
            .strip_prefix("errorstat_")
            .and_then(|l| l.split_once(':'))
        {
            errors.insert(code.to_string(), field(fields, "count"));
        }
    }
    (commands, errors)
}

/// A reply to compare: a value, or an error's code and message. SCAN and
/// HSCAN iterate to the end (cursors differ between servers) and give
/// everything they returned.
fn reply(con: &mut redis::Connection, args: &[String]) -> Result<Value, String> {
    let cursor_at = match args[0].to_uppercase().as_str() {
        "SCAN" => 1,
        "HSCAN" if args.len() > 2 => 2,
        _ => return reply_once(con, args),
    };
    let mut args = args.to_vec();
    let mut all = Vec::new();
    for _ in 0..10_000 {
        let Value::Array(parts) = reply_once(con, &args)? else {
            return Err("not an array".into());
        };
        let [Value::BulkString(cursor), Value::Array(items)] = &parts[..] else {
            return Err(format!("not a cursor and items: {parts:?}"));
        };
        all.extend(items.iter().cloned());
        if cursor.as_slice() == b"0" {
            return Ok(Value::Array(all));
        }
        args[cursor_at] = String::from_utf8(cursor.clone()).expect("a number");
    }
    Err("the scan did not end".into())
}

fn reply_once(con: &mut redis::Connection, args: &[String]) -> Result<Value, String> {
    let mut cmd = redis::cmd(&args[0]);
    for a in &args[1..] {
        cmd.arg(a);
    }
    if args[0].eq_ignore_ascii_case("EXEC") {
        // The errors inside its array stay where they are.
        let mut got: Vec<redis::RedisResult<Value>> = redis::pipe()
            .add_command(cmd)
            .ignore_errors()
            .query(con)
            .expect("EXEC's reply");
        return got.pop().expect("one reply").map_err(error_text);
    }
    cmd.query::<Value>(con).map_err(error_text)
}

fn error_text(e: redis::RedisError) -> String {
    match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        (Some(code), None) => code.to_string(),
        _ => e.to_string(),
    }
}

/// The replies to `commands` sent as one pipeline (a scan alone, between
/// the pipelines before and after it), in order.
fn replies(con: &mut redis::Connection, commands: &[Vec<String>]) -> Vec<Result<Value, String>> {
    let mut out = Vec::new();
    let mut pipe = redis::pipe();
    let mut queued = 0;
    let flush = |pipe: &mut redis::Pipeline,
                 queued: &mut usize,
                 con: &mut redis::Connection,
                 out: &mut Vec<Result<Value, String>>| {
        if *queued == 0 {
            return;
        }
        let got: Vec<redis::RedisResult<Value>> = pipe
            .ignore_errors()
            .query(con)
            .expect("a pipeline's replies");
        out.extend(got.into_iter().map(|r| r.map_err(error_text)));
        *pipe = redis::pipe();
        *queued = 0;
    };
    for args in commands {
        if matches!(args[0].to_uppercase().as_str(), "SCAN" | "HSCAN") {
            flush(&mut pipe, &mut queued, con, &mut out);
            out.push(reply(con, args));
            continue;
        }
        let cmd = pipe.cmd(&args[0]);
        for a in &args[1..] {
            cmd.arg(a);
        }
        queued += 1;
    }
    flush(&mut pipe, &mut queued, con, &mut out);
    out
}

/// Sorts what Redis leaves unordered: an array's elements (KEYS, SCAN,
/// HKEYS, HVALS), or the field-value pairs of HGETALL (a map in RESP3) and
/// HSCAN; RANDOMKEY's key and HRANDFIELD's fields stand for any.
fn unordered(name: &str, v: Value) -> Value {
    match (name, v) {
        ("HGETALL", Value::Map(mut pairs)) => {
            pairs.sort_by_key(|p| format!("{p:?}"));
            Value::Map(pairs)
        }
        ("HGETALL" | "HSCAN", Value::Array(items)) => {
            let mut pairs: Vec<Vec<Value>> = items.chunks(2).map(<[Value]>::to_vec).collect();
            pairs.sort_by_key(|p| format!("{p:?}"));
            Value::Array(pairs.into_iter().flatten().collect())
        }
        ("KEYS" | "HKEYS" | "HVALS" | "SCAN", Value::Array(mut items)) => {
            items.sort_by_key(|i| format!("{i:?}"));
            Value::Array(items)
        }
        // Which key is each server's draw: that there is one is compared.
        ("RANDOMKEY", Value::BulkString(_)) => Value::BulkString(b"(a key)".to_vec()),
        // Which fields: how many, and the reply's shape.
        ("HRANDFIELD", v) => drawn(v),
        (_, v) => v,
    }
}

/// A reply of random strings as its shape: each string stands for any.
fn drawn(v: Value) -> Value {
    match v {
        Value::Array(items) => Value::Array(items.into_iter().map(drawn).collect()),
        Value::BulkString(_) => Value::BulkString(b"(drawn)".to_vec()),
        v => v,
    }
}

/// Whether two replies agree: equal, or two remaining times (or expiry
/// times) that differ by less than the time between the two runs.
fn agree(name: &str, ferry: &Result<Value, String>, redis: &Result<Value, String>) -> bool {
    let slack = match name {
        "TTL" | "EXPIRETIME" => 2,
        "PTTL" | "PEXPIRETIME" => 2000,
        _ => 0,
    };
    match (ferry, redis) {
        (Ok(Value::Int(f)), Ok(Value::Int(r))) if *f >= 0 && *r >= 0 => (f - r).abs() <= slack,
        (f, r) => f == r,
    }
}

/// [`agree`] for EXEC's replies, element by element with the names of
/// the commands it ran.
fn agree_exec(
    names: &[String],
    ferry: &Result<Value, String>,
    redis: &Result<Value, String>,
) -> bool {
    match (ferry, redis) {
        (Ok(Value::Array(f)), Ok(Value::Array(r))) if f.len() == names.len() => {
            r.len() == f.len()
                && f.iter().zip(r).zip(names).all(|((f, r), name)| {
                    agree(
                        name,
                        &Ok(unordered(name, f.clone())),
                        &Ok(unordered(name, r.clone())),
                    )
                })
        }
        (f, r) => f == r,
    }
}

/// A value longer than what an error message quotes of an argument.
const LONG_VALUE: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

struct Gen(SeededRng);

impl Gen {
    fn below(&mut self, n: u64) -> u64 {
        self.0.below(n)
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len() as u64) as usize]
    }

    fn key(&mut self) -> String {
        format!("k{}", self.below(KEYS))
    }

    fn field(&mut self) -> String {
        format!("f{}", self.below(4))
    }

    fn value(&mut self) -> String {
        self.pick(&[
            "v",
            "hello",
            "",
            "a b",
            LONG_VALUE,
            "\r\n",
            "é",
            "\0",
            "0",
            "1",
            "-5",
            "10",
            "42",
            "3.5",
            "-0.25",
            "1e3",
            "abc",
            "9223372036854775807",
            "-9223372036854775808",
            "00",
            " 1",
            "0x10",
            "inf",
        ])
        .to_string()
    }

    fn int(&mut self) -> String {
        self.pick(&[
            "0",
            "1",
            "-1",
            "2",
            "5",
            "-3",
            "100",
            "abc",
            "1.5",
            "9223372036854775807",
            "-9223372036854775808",
        ])
        .to_string()
    }

    fn float(&mut self) -> String {
        self.pick(&[
            "0",
            "1.5",
            "-0.25",
            "10",
            "abc",
            "1e3",
            "3.0e-2",
            "inf",
            "-7",
            "0.1",
            "1e308",
            "1e4000",
            "-1e4000",
            "0x1p3",
            "5.0e-310",
            "17.999999999999999999",
        ])
        .to_string()
    }

    /// Seconds for an expiry: long enough never to pass during the test,
    /// or none at all (which deletes or errs, as Redis decides).
    fn seconds(&mut self) -> String {
        self.pick(&[
            "1000",
            "2000",
            "5000",
            "0",
            "-1",
            "abc",
            "9223372036854775807",
            "-9223372036854775808",
            "4611686018427387904",
            "9223372036854775",
        ])
        .to_string()
    }

    /// One command, or now and then a transaction.
    fn commands(&mut self) -> Vec<Vec<String>> {
        if self.below(25) == 0 {
            self.transaction()
        } else {
            vec![self.command()]
        }
    }

    /// MULTI, a few commands and EXEC (or DISCARD), now and then after a
    /// WATCH (and a write that spoils it, or an UNWATCH), now and then with
    /// a command that is refused inside a transaction. No SCAN or HSCAN:
    /// their cursors differ between servers.
    fn transaction(&mut self) -> Vec<Vec<String>> {
        let s = |x: &str| x.to_string();
        let mut out = Vec::new();
        if self.below(2) == 0 {
            let (k, k2) = (self.key(), self.key());
            out.push(vec![s("WATCH"), k.clone(), k2]);
            match self.below(4) {
                0 => out.push(vec![s("SET"), k, self.value()]),
                1 => out.push(vec![s("UNWATCH")]),
                2 => out.push(vec![s("GET"), k]),
                _ => {}
            }
        }
        out.push(vec![s("MULTI")]);
        for _ in 0..self.below(7) {
            let c = self.command();
            if !matches!(c[0].to_uppercase().as_str(), "SCAN" | "HSCAN") {
                out.push(c);
            }
        }
        match self.below(12) {
            0 => out.push(vec![s("MULTI")]),
            1 => out.push(vec![s("WATCH"), self.key()]),
            2 => out.push(vec![s("UNWATCH")]),
            _ => {}
        }
        out.push(vec![s(if self.below(8) == 0 {
            "DISCARD"
        } else {
            "EXEC"
        })]);
        out
    }

    fn command(&mut self) -> Vec<String> {
        let s = |x: &str| x.to_string();
        let (k, k2) = (self.key(), self.key());
        let mut args: Vec<String> = match self.below(61) {
            0..=3 => {
                let mut a = vec![s("SET"), k, self.value()];
                for _ in 0..self.below(3) {
                    match self.below(9) {
                        0 => a.extend([s("EX"), self.seconds()]),
                        1 => a.extend([s("PX"), s("1000000")]),
                        2 => a.extend([s("EXAT"), s("4000000000")]),
                        3 => a.extend([s("PXAT"), s("4000000000000")]),
                        4 => a.push(s("NX")),
                        5 => a.push(s("XX")),
                        6 => a.push(s("KEEPTTL")),
                        7 => a.push(s("GET")),
                        _ => a.push(s("BOGUS")),
                    }
                }
                a
            }
            4 => vec![s("GET"), k],
            5 => vec![s("SETNX"), k, self.value()],
            6 => vec![s("SETEX"), k, self.seconds(), self.value()],
            7 => vec![
                s("PSETEX"),
                k,
                s(self.pick(&["1000000", "0", "-1", "9223372036854775807"])),
                self.value(),
            ],
            8 => vec![s("GETSET"), k, self.value()],
            9 => vec![s("GETDEL"), k],
            10 => {
                let mut a = vec![s("GETEX"), k];
                match self.below(4) {
                    0 => a.extend([s("EX"), self.seconds()]),
                    1 => a.push(s("PERSIST")),
                    2 => a.extend([s("PX"), s("1000000")]),
                    _ => {}
                }
                a
            }
            11 => vec![s("MGET"), k, k2, self.key()],
            12 => vec![s("MSET"), k, self.value(), k2, self.value()],
            13 => vec![s("MSETNX"), k, self.value(), k2, self.value()],
            14 => vec![s("APPEND"), k, self.value()],
            15 if self.below(2) == 0 => vec![s("STRLEN"), k],
            15 => {
                let mut a = vec![s("LCS"), k, k2];
                for _ in 0..self.below(4) {
                    match self.below(6) {
                        0 => a.push(s("LEN")),
                        1 | 2 => a.push(s("IDX")),
                        3 => a.push(s("WITHMATCHLEN")),
                        4 => a.extend([
                            s("MINMATCHLEN"),
                            s(self.pick(&["0", "1", "2", "4", "-1", "x"])),
                        ]),
                        _ => a.push(s(self.pick(&["BOGUS", "MINMATCHLEN"]))),
                    }
                }
                a
            }
            16 => vec![
                s(self.pick(&["GETRANGE", "GETRANGE", "SUBSTR"])),
                k,
                self.int(),
                self.int(),
            ],
            17 => vec![
                s("SETRANGE"),
                k,
                self.pick(&["0", "2", "5", "-1"]).into(),
                self.value(),
            ],
            18 => vec![s("INCR"), k],
            19 => vec![s("INCRBY"), k, self.int()],
            20 => vec![s("DECR"), k],
            21 => vec![s("DECRBY"), k, self.int()],
            22 => vec![s("INCRBYFLOAT"), k, self.float()],
            23 => {
                let cmd = self.pick(&["EXPIRE", "PEXPIRE", "EXPIREAT", "PEXPIREAT"]);
                let when = match cmd {
                    "EXPIRE" => self.seconds(),
                    "PEXPIRE" => self
                        .pick(&["1000000", "9223372036854775807", "-5", "0"])
                        .into(),
                    "EXPIREAT" => self
                        .pick(&["4000000000", "4100000000", "1", "-9223372036854775808"])
                        .into(),
                    _ => self
                        .pick(&["4000000000000", "1", "9223372036854775807"])
                        .into(),
                };
                let mut a = vec![s(cmd), k, when];
                if self.below(2) == 0 {
                    a.push(self.pick(&["NX", "XX", "GT", "LT", "XY"]).into());
                }
                a
            }
            24 => vec![
                s(self.pick(&["TTL", "PTTL", "EXPIRETIME", "PEXPIRETIME"])),
                k,
            ],
            25 => vec![s("PERSIST"), k],
            26 => vec![s("EXISTS"), k, k2],
            27 => vec![s(self.pick(&["DEL", "UNLINK"])), k, k2],
            28 => vec![s("TYPE"), k],
            29 => vec![s("RENAME"), k, k2],
            30..=32 => {
                let mut a = vec![s("HSET"), k, self.field(), self.value()];
                if self.below(2) == 0 {
                    a.extend([self.field(), self.value()]);
                }
                a
            }
            33 => vec![s("HSETNX"), k, self.field(), self.value()],
            34 => vec![s("HGET"), k, self.field()],
            35 => vec![s("HMGET"), k, self.field(), self.field()],
            36 => vec![s("HDEL"), k, self.field(), self.field()],
            37 => vec![s(self.pick(&["HGETALL", "HKEYS", "HVALS", "HLEN"])), k],
            38 => vec![s("HEXISTS"), k, self.field()],
            39 => vec![s("HSTRLEN"), k, self.field()],
            40 => vec![s("HINCRBY"), k, self.field(), self.int()],
            41 => vec![s("HINCRBYFLOAT"), k, self.field(), self.float()],
            42 => vec![s("DBSIZE")],
            43 => vec![s("KEYS"), s(self.pick(&["*", "k[0-2]", "k?", "h*"]))],
            44 => vec![s("ECHO"), self.value()],
            45 => {
                let mut a = vec![s("SCAN"), s("0")];
                if self.below(2) == 0 {
                    a.extend([s("MATCH"), s(self.pick(&["*", "k[1-3]", "k?", "x*"]))]);
                }
                if self.below(2) == 0 {
                    a.extend([s("COUNT"), s(self.pick(&["1", "2", "100", "0", "abc"]))]);
                }
                if self.below(3) == 0 {
                    a.extend([s("TYPE"), s(self.pick(&["string", "hash", "list"]))]);
                }
                a
            }
            46 => {
                let mut a = vec![s("HSCAN"), k, s("0")];
                if self.below(2) == 0 {
                    a.extend([s("MATCH"), s(self.pick(&["*", "f[0-1]", "g*"]))]);
                }
                if self.below(2) == 0 {
                    a.extend([s("COUNT"), s(self.pick(&["1", "3", "0", "abc"]))]);
                }
                a
            }
            47 => vec![
                s("HMSET"),
                k,
                self.field(),
                self.value(),
                self.field(),
                self.value(),
            ],
            50 => {
                let mut a = vec![s("COPY"), k, k2];
                for _ in 0..self.below(3) {
                    match self.below(5) {
                        0 | 1 => a.push(s("REPLACE")),
                        // Not another database: Redis has 16, ferry one.
                        2 => a.extend([
                            s("DB"),
                            s(self.pick(&["0", "0", "99", "-1", "abc", "2147483648"])),
                        ]),
                        3 => a.push(s("DB")),
                        _ => a.push(s("BOGUS")),
                    }
                }
                a
            }
            51 => vec![s("RENAMENX"), k, k2],
            52 => vec![s("TOUCH"), k, k2, self.key()],
            53 => vec![s("RANDOMKEY")],
            // Bit offsets within both servers' largest string (ferry's
            // is smaller), or past both.
            54 => vec![
                s("SETBIT"),
                k,
                s(self.pick(&["0", "7", "8", "13", "100", "-1", "x", "4294967296"])),
                s(self.pick(&["0", "1", "1", "2", "x"])),
            ],
            55 => vec![
                s("GETBIT"),
                k,
                s(self.pick(&["0", "3", "7", "9", "100", "-1", "y"])),
            ],
            56 | 57 => {
                let bitpos = self.below(2) == 0;
                let mut a = vec![s(if bitpos { "BITPOS" } else { "BITCOUNT" }), k];
                if bitpos {
                    a.push(s(self.pick(&["0", "1", "1", "2", "x"])));
                }
                let index = ["0", "1", "2", "-1", "-2", "-3", "5", "100", "-100", "x"];
                for _ in 0..self.below(5) {
                    let arg = if a.len() >= 4 + usize::from(bitpos) && self.below(2) == 0 {
                        self.pick(&["BIT", "BYTE", "bit", "WORD"])
                    } else {
                        self.pick(&index)
                    };
                    a.push(s(arg));
                }
                a
            }
            59 => {
                let mut a = vec![s("HRANDFIELD"), k];
                if self.below(4) > 0 {
                    a.push(s(self.pick(&[
                        "1",
                        "2",
                        "3",
                        "5",
                        "0",
                        "-1",
                        "-3",
                        "-7",
                        "x",
                        "-9223372036854775808",
                    ])));
                    if self.below(2) == 0 {
                        a.push(s(self.pick(&["WITHVALUES", "withvalues", "VALUES"])));
                    }
                }
                a
            }
            60 => {
                let ro = self.below(4) == 0;
                let mut a = vec![s(if ro { "BITFIELD_RO" } else { "BITFIELD" }), k];
                for _ in 0..self.below(4) {
                    match self.below(10) {
                        0 => a.extend([
                            s("OVERFLOW"),
                            s(self.pick(&["WRAP", "SAT", "fail", "FAIL", "NOPE"])),
                        ]),
                        1 => a.push(s(self.pick(&["GET", "SET", "BOGUS"]))),
                        n => {
                            let op = if n < 5 || (ro && n < 9) {
                                "GET"
                            } else {
                                self.pick(&["SET", "INCRBY", "incrby"])
                            };
                            a.extend([
                                s(op),
                                s(self.pick(&[
                                    "i8", "u8", "i1", "u1", "i16", "u4", "i64", "u63", "u64", "x8",
                                    "i0",
                                ])),
                                s(self.pick(&[
                                    "0", "1", "7", "8", "13", "#0", "#1", "#3", "-1", "x",
                                ])),
                            ]);
                            if op != "GET" {
                                a.push(s(self.pick(&[
                                    "0",
                                    "1",
                                    "-1",
                                    "100",
                                    "255",
                                    "-128",
                                    "1000",
                                    "9223372036854775807",
                                    "-9223372036854775808",
                                    "x",
                                ])));
                            }
                        }
                    }
                }
                a
            }
            58 => {
                let mut a = vec![
                    s("BITOP"),
                    s(self.pick(&["AND", "OR", "XOR", "NOT", "not", "NOPE"])),
                    k,
                    k2,
                ];
                for _ in 0..self.below(3) {
                    a.push(self.key());
                }
                a
            }
            48 if self.below(20) == 0 => vec![s("FLUSHDB")],
            // Outside a transaction, mostly.
            49 if self.below(10) == 0 => vec![s(self.pick(&["EXEC", "DISCARD", "UNWATCH"]))],
            49 if self.below(10) == 0 => vec![s("WATCH"), k],
            _ => match self.below(4) {
                0 => vec![s("PING")],
                1 => vec![s("PING"), self.value()],
                2 => vec![s("SELECT"), s(self.pick(&["0", "1", "abc", "-1"]))],
                3 if self.below(2) == 0 => match self.below(4) {
                    0 if self.below(2) == 0 => vec![s("AUTH"), self.value()],
                    // Only versions it refuses: a HELLO that succeeds
                    // changes the protocol and names the server.
                    0 => vec![s("HELLO"), s(self.pick(&["4", "1", "abc", "-1"]))],
                    1 => vec![s("CLIENT"), s("SETNAME"), self.value()],
                    2 => vec![s("CLIENT"), s("GETNAME")],
                    _ => vec![
                        s(self.pick(&["CLIENT", "CONFIG", "COMMAND"])),
                        s(self.pick(&["NOSUCH", "GETNAME", "COUNT", "RESETSTAT"])),
                        s("x"),
                    ],
                },
                _ => vec![s("EXISTS"), k],
            },
        };
        // Now and then a command one argument short, one Redis does not
        // know, or a name in lower case. (Not COMMAND: `COMMAND COUNT`
        // counts each server's own commands.)
        if args.len() > 1 && args[0] != "HELLO" && args[0] != "COMMAND" && self.below(40) == 0 {
            args.pop();
        }
        match self.below(60) {
            0 => args[0] = s(self.pick(&["FOO", "SETT", "HGETT", ""])),
            1..=5 => args[0] = args[0].to_lowercase(),
            _ => {}
        }
        args
    }
}

/// Whether an earlier command (as text) shares a key with `args`, or
/// cleared every key.
fn touches(earlier: &str, args: &[String]) -> bool {
    let keys: Vec<&String> = args.iter().filter(|a| a.starts_with('k')).collect();
    keys.is_empty()
        || earlier
            .split(' ')
            .any(|w| w == "FLUSHALL" || keys.iter().any(|k| *k == w))
}

#[test]
fn random_commands_get_the_replies_redis_gives() {
    let seed = ferry_wal::testing::test_seed("differential");
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let ferry = Server::start(&dir.path().join("node"), &SLOWLOG_EVERYTHING);
    let redis = Redis::start();
    let redis_url = format!("redis://127.0.0.1:{}/", redis.port);
    let mut compared = 0;
    for round in 0..ROUNDS {
        // Odd rounds speak RESP3, as a client after `HELLO 3`; in half the
        // rounds the commands go in pipelines of 1 to 20, which ferry runs
        // together on its write path.
        let resp3 = round % 2 == 1;
        let pipelined = round % 4 >= 2;
        let mut f = connect(&ferry.url(), resp3).expect("connect to ferry");
        let mut r = connect(&redis_url, resp3).expect("connect to redis-server");
        for con in [&mut f, &mut r] {
            assert_eq!(
                reply(con, &["FLUSHALL".into()]),
                Ok(Value::Okay),
                "FLUSHALL"
            );
        }
        let mut g = Gen(SeededRng::new(seed.wrapping_add(round)));
        let mut history: Vec<String> = Vec::new();
        // The names of the commands queued since MULTI.
        let mut queued: Option<Vec<String>> = None;
        // INFO on connections of their own, in RESP2.
        let mut fi = connect(&ferry.url(), false).expect("connect to ferry");
        let mut ri = connect(&redis_url, false).expect("connect to redis-server");
        // The round's command and error figures and slow logs start from
        // zero on both.
        for con in [&mut fi, &mut ri] {
            assert_eq!(
                reply(con, &["CONFIG".into(), "RESETSTAT".into()]),
                Ok(Value::Okay)
            );
            take_slowlog(con);
        }
        let mut before = (counters(&mut fi), counters(&mut ri));
        // Every keyspace event but expiry's (whose timing differs: Redis
        // finds an expired key when it looks, ferry's sweep in its time)
        // and key misses' (told as the read runs, which inside a
        // transaction is before the events of its writes), after each
        // batch of commands.
        for con in [&mut fi, &mut ri] {
            let set = ["CONFIG", "SET", "notify-keyspace-events", "KEg$hn"];
            assert_eq!(reply(con, &set.map(String::from)), Ok(Value::Okay));
        }
        let mut events = (
            Events::subscribe(&ferry.resp.to_string()),
            Events::subscribe(&format!("127.0.0.1:{}", redis.port)),
        );
        // And a client caching every key of the round (CLIENT TRACKING),
        // and one told of every change under two prefixes (BCAST, which
        // Redis tells once per pass of its event loop: one command's
        // changes outside pipelines): told the same invalidations, in the
        // same messages.
        let tracked: Vec<String> = (0..KEYS).map(|i| format!("k{i}")).collect();
        let mut trackers = (
            Events::tracking(&ferry.resp.to_string(), &[]),
            Events::tracking(&format!("127.0.0.1:{}", redis.port), &[]),
        );
        trackers.0.invalidations(&tracked);
        trackers.1.invalidations(&tracked);
        let bcast: &[&[u8]] = &[b"BCAST", b"PREFIX", b"k4", b"PREFIX", b"k1"];
        let mut broadcasts = (
            Events::tracking(&ferry.resp.to_string(), bcast),
            Events::tracking(&format!("127.0.0.1:{}", redis.port), bcast),
        );
        let mut invalidations = 0;
        let mut batches = 0u64;
        while history.len() < COMMANDS {
            assert!(
                started.elapsed() < DEADLINE,
                "over {DEADLINE:?} after {compared} commands"
            );
            let n = if pipelined {
                1 + g.below(20) as usize
            } else {
                1
            };
            // A transaction counts as one command here, as it goes whole
            // into a batch.
            let mut batch: Vec<Vec<String>> = Vec::new();
            for _ in 0..n.min(COMMANDS - history.len()) {
                batch.extend(g.commands());
            }
            let (from_ferry, from_redis) = if pipelined {
                (replies(&mut f, &batch), replies(&mut r, &batch))
            } else {
                (
                    batch.iter().map(|args| reply(&mut f, args)).collect(),
                    batch.iter().map(|args| reply(&mut r, args)).collect(),
                )
            };
            for ((args, ferry_reply), redis_reply) in batch.iter().zip(from_ferry).zip(from_redis) {
                let name = args[0].to_uppercase();
                let (ferry_reply, redis_reply, agreed) = match (&name[..], &mut queued) {
                    ("EXEC", Some(names)) => {
                        let agreed = agree_exec(names, &ferry_reply, &redis_reply);
                        (ferry_reply, redis_reply, agreed)
                    }
                    _ => {
                        let ferry_reply = ferry_reply.map(|v| unordered(&name, v));
                        let redis_reply = redis_reply.map(|v| unordered(&name, v));
                        let agreed = agree(&name, &ferry_reply, &redis_reply);
                        (ferry_reply, redis_reply, agreed)
                    }
                };
                // The transaction the connection is in, as the replies
                // show it: what EXEC's array will hold.
                match (&name[..], &mut queued) {
                    ("MULTI", None) if ferry_reply == Ok(Value::Okay) => queued = Some(Vec::new()),
                    ("EXEC" | "DISCARD", _) => queued = None,
                    (_, Some(names)) if ferry_reply == Ok(Value::SimpleString("QUEUED".into())) => {
                        names.push(name.clone())
                    }
                    _ => {}
                }
                history.push(args.join(" "));
                assert!(
                    agreed,
                    "round {round} (RESP{}{}), command {}: {}\n  ferry: {ferry_reply:?}\n  redis: {redis_reply:?}\nthe commands before it on its keys, last first:\n  {}",
                    if resp3 { 3 } else { 2 },
                    if pipelined { ", pipelined" } else { "" },
                    history.len(),
                    args.join(" "),
                    history
                        .iter()
                        .rev()
                        .skip(1)
                        .filter(|c| touches(c, args))
                        .take(16)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("\n  ")
                );
                compared += 1;
            }
            let after = (counters(&mut fi), counters(&mut ri));
            let listed = batch
                .iter()
                .map(|a| a.join(" "))
                .collect::<Vec<_>>()
                .join("\n  ");
            // An HSCAN reads its key once per call, and the two servers
            // need different numbers of calls for one iteration.
            let calls_differ = batch.iter().any(|a| a[0].eq_ignore_ascii_case("HSCAN"));
            // CONFIG RESETSTAT zeroes the counters: they count from there.
            let reset = batch.iter().any(|a| {
                a.len() == 2
                    && a[0].eq_ignore_ascii_case("CONFIG")
                    && a[1].eq_ignore_ascii_case("RESETSTAT")
            });
            for (i, name) in COUNTERS.iter().enumerate() {
                if i < 2 && calls_differ {
                    continue;
                }
                let (moved, expected) = if i < 3 && !reset {
                    (
                        after.0[i].wrapping_sub(before.0[i]),
                        after.1[i].wrapping_sub(before.1[i]),
                    )
                } else {
                    (after.0[i], after.1[i])
                };
                assert_eq!(
                    moved, expected,
                    "round {round}: INFO {name} (ferry, redis) after these commands:\n  {listed}"
                );
            }
            before = after;
            batches += 1;
            let (told_ferry, told_redis) = (
                events.0.until(&mut fi, batches),
                events.1.until(&mut ri, batches),
            );
            assert!(
                told_ferry == told_redis,
                "round {round}: the keyspace events differ after these commands:\n  {listed}\nferry: {:?}\nredis: {:?}",
                String::from_utf8_lossy(&told_ferry),
                String::from_utf8_lossy(&told_redis),
            );
            let (invalidated_ferry, invalidated_redis) = (
                [
                    trackers.0.invalidations(&tracked),
                    broadcasts.0.invalidations(&[]),
                ],
                [
                    trackers.1.invalidations(&tracked),
                    broadcasts.1.invalidations(&[]),
                ],
            );
            let (invalidated_ferry, invalidated_redis) = if pipelined {
                (&invalidated_ferry[..1], &invalidated_redis[..1])
            } else {
                (&invalidated_ferry[..], &invalidated_redis[..])
            };
            let (invalidated_ferry, invalidated_redis) =
                (invalidated_ferry.concat(), invalidated_redis.concat());
            invalidations += invalidated_redis
                .windows(b"invalidate".len())
                .filter(|w| w == b"invalidate")
                .count();
            // A BITFIELD whose writes OVERFLOW FAIL refused still grows
            // the string (or makes it): Redis tells no client caching it
            // (its value changed unseen), ferry does.
            let grown_unseen = batch.iter().any(|a| {
                a[0].eq_ignore_ascii_case("BITFIELD")
                    && a.iter().any(|w| w.eq_ignore_ascii_case("FAIL"))
            });
            assert!(
                invalidated_ferry == invalidated_redis || grown_unseen,
                "round {round}: the invalidations differ after these commands:\n  {listed}\nferry: {:?}\nredis: {:?}",
                String::from_utf8_lossy(&invalidated_ferry),
                String::from_utf8_lossy(&invalidated_redis),
            );
            // The commands that ran, as the slow logs saw them.
            let (logged_ferry, logged_redis) = (take_slowlog(&mut fi), take_slowlog(&mut ri));
            assert!(
                logged_ferry == logged_redis,
                "round {round}: the slow logs differ after these commands:\n  {listed}\nferry: {logged_ferry:?}\nredis: {logged_redis:?}"
            );
        }
        assert!(
            invalidations > COMMANDS / 10,
            "round {round}: {invalidations} invalidations"
        );
        // Each command's calls, rejections and failures, and the errors by
        // code, over the round (and since a CONFIG RESETSTAT in it).
        let (ferry_stats, redis_stats) = (
            command_and_error_stats(&mut fi),
            command_and_error_stats(&mut ri),
        );
        let differing: Vec<String> = ferry_stats
            .0
            .keys()
            .chain(redis_stats.0.keys())
            .filter(|name| ferry_stats.0.get(*name) != redis_stats.0.get(*name))
            .map(|name| {
                format!(
                    "{name}: ferry {:?}, redis {:?}",
                    ferry_stats.0.get(name),
                    redis_stats.0.get(name)
                )
            })
            .collect();
        assert!(
            differing.is_empty(),
            "round {round}: INFO commandstats (calls, rejected, failed) differ:\n  {}",
            differing.join("\n  ")
        );
        assert_eq!(
            ferry_stats.1, redis_stats.1,
            "round {round}: INFO errorstats"
        );
        // Latency percentiles for the same commands: those that ran.
        let timed = |con: &mut redis::Connection| -> std::collections::BTreeSet<String> {
            let info: String = redis::cmd("INFO")
                .arg("latencystats")
                .query(con)
                .expect("INFO");
            info.lines()
                .filter_map(|l| l.strip_prefix("latency_percentiles_usec_"))
                .filter_map(|l| l.split_once(':').map(|(name, _)| name.to_string()))
                .collect()
        };
        assert_eq!(
            timed(&mut fi),
            timed(&mut ri),
            "round {round}: INFO latencystats"
        );
    }
    assert!(
        compared >= COMMANDS * ROUNDS as usize,
        "{compared} compared"
    );

    // A replica fed the whole log (every round's records, the FLUSHALLs
    // between them, the floats and the expiry times) holds what ferry holds.
    let replica = replica_holding_what(&ferry, &dir.path().join("replica"));
    // Its count of keys, and of those with an expiry, too.
    let on = |server: &Server| counters(&mut connect(&server.url(), false).expect("connect"));
    assert_eq!(on(&ferry)[3..], on(&replica)[3..]);
}

/// Commands of the long strings' test.
const LONG_STRING_COMMANDS: usize = 600;

/// Strings past the length at which ferry stores them in chunks
/// (`LONG_STRING_BYTES`, in chunks of `STRING_CHUNK_BYTES`), written whole and in pieces (APPEND, SETRANGE
/// past the end and across chunk boundaries) and read whole and in ranges,
/// over three keys that change type, name and expiry: every reply is
/// Redis's, and a replica fed the log holds the same data.
#[test]
fn long_strings_get_the_replies_redis_gives() {
    const CHUNK: u64 = ferry_engine::STRING_CHUNK_BYTES as u64;
    const LONG: u64 = ferry_engine::LONG_STRING_BYTES as u64;
    let seed = ferry_wal::testing::test_seed("differential-long-strings");
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let ferry = Server::start(&dir.path().join("node"), &[]);
    let redis = Redis::start();
    let mut f = connect(&ferry.url(), false).expect("connect to ferry");
    let mut r = connect(&format!("redis://127.0.0.1:{}/", redis.port), false)
        .expect("connect to redis-server");
    let mut rng = SeededRng::new(seed);
    // What LCS compares the long strings with (LCS of two long strings
    // takes a table past ferry's LCS_TABLE_BYTES_MAX).
    let short = ["SET".to_string(), "short".into(), "kmtaxbzhpq".repeat(5)];
    assert_eq!(reply(&mut f, &short), reply(&mut r, &short));
    let pick = |rng: &mut SeededRng, from: &[u64]| from[rng.below(from.len() as u64) as usize];
    let sizes = [
        1,
        100,
        CHUNK + 1,
        40_000,
        LONG - 1,
        LONG,
        LONG + 1,
        2 * LONG + 7,
    ];
    let offsets = [0, 1, CHUNK - 1, CHUNK, LONG - 1, LONG, LONG + 3, 3 * LONG];
    let indexes = [0, 1, 5, CHUNK - 1, CHUNK, LONG, 3 * LONG];
    for n in 0..LONG_STRING_COMMANDS {
        assert!(
            started.elapsed() < DEADLINE,
            "over {DEADLINE:?} after {n} commands"
        );
        let key = format!("s{}", rng.below(3));
        // Data whose bytes tell where in it they are.
        let size = pick(&mut rng, &sizes);
        let tag = rng.below(26);
        let data: String = (0..size)
            .map(|i| char::from(b'a' + ((i / 7 + tag) % 26) as u8))
            .collect();
        let index = |rng: &mut SeededRng| {
            let i = pick(rng, &indexes).to_string();
            if rng.below(3) == 0 {
                format!("-{i}")
            } else {
                i
            }
        };
        let s = |x: &str| x.to_string();
        let args: Vec<String> = match rng.below(18) {
            0 | 1 => vec![s("SET"), key, data],
            2 | 3 => vec![s("APPEND"), key, data],
            4 | 5 => {
                let offset = if rng.below(4) == 0 {
                    rng.below(4 * LONG)
                } else {
                    pick(&mut rng, &offsets)
                };
                vec![s("SETRANGE"), key, offset.to_string(), data]
            }
            6 => vec![s("GET"), key],
            7 | 8 => vec![s("GETRANGE"), key, index(&mut rng), index(&mut rng)],
            9 => match rng.below(3) {
                0 => vec![s("STRLEN"), key],
                1 => vec![s("LCS"), key, s("short"), s("IDX"), s("WITHMATCHLEN")],
                _ => vec![s("LCS"), s("short"), key],
            },
            10 => vec![s("MGET"), s("s0"), s("s1"), s("s2"), s("missing")],
            11 => vec![s("GETSET"), key, data],
            12 => vec![s("RENAME"), key, format!("s{}", rng.below(3))],
            13 => match rng.below(4) {
                0 => vec![s("SET"), key, data, s("GET")],
                1 => vec![s("SET"), key, data, s("KEEPTTL")],
                2 => vec![s("EXPIRE"), key, s("100000")],
                _ => vec![s("PERSIST"), key],
            },
            // Bits across the chunks.
            16 => {
                let bit = (pick(&mut rng, &offsets) * 8 + rng.below(8)).to_string();
                // A field across a chunk's edge, as often as not.
                let field = (pick(&mut rng, &offsets) * 8 + rng.below(16))
                    .saturating_sub(8)
                    .to_string();
                match rng.below(4) {
                    0 => vec![s("SETBIT"), key, bit, rng.below(2).to_string()],
                    1 => vec![s("GETBIT"), key, bit],
                    2 => vec![
                        s("BITFIELD"),
                        key,
                        s("INCRBY"),
                        s("u16"),
                        field.clone(),
                        (rng.below(70_000) as i64 - 1000).to_string(),
                        s("GET"),
                        s("i32"),
                        field,
                    ],
                    _ => vec![s("BITFIELD_RO"), key, s("GET"), s("u16"), field],
                }
            }
            17 => {
                let mut a = match rng.below(2) {
                    0 => vec![s("BITCOUNT"), key],
                    _ => vec![s("BITPOS"), key, rng.below(2).to_string()],
                };
                if rng.below(3) > 0 {
                    a.extend([index(&mut rng), index(&mut rng)]);
                    if rng.below(2) == 0 {
                        a.push(s("BIT"));
                    }
                }
                a
            }
            14 => match rng.below(4) {
                0 => vec![s("HSET"), key, s("f"), s("v")],
                1 => vec![s("INCR"), key],
                2 => vec![s("TYPE"), key],
                _ => vec![s("EXISTS"), key],
            },
            _ => match rng.below(2) {
                0 => vec![s("DEL"), key],
                _ => vec![s("GETDEL"), key],
            },
        };
        let (from_ferry, from_redis) = (reply(&mut f, &args), reply(&mut r, &args));
        assert!(
            from_ferry == from_redis,
            "seed {seed}, command {n}: {:?} (argument lengths {:?}): ferry {:.200?}, redis {:.200?}",
            args[0],
            args.iter().map(|a| a.len()).collect::<Vec<_>>(),
            from_ferry,
            from_redis
        );
    }
    // What each key holds at the end, read whole.
    for key in ["s0", "s1", "s2"] {
        let get = ["GET".to_string(), key.to_string()];
        assert!(
            reply(&mut f, &get) == reply(&mut r, &get),
            "seed {seed}: {key}"
        );
    }
    replica_holding_what(&ferry, &dir.path().join("replica"));
}

/// A new replica of `ferry` in `dir`, once it has replayed ferry's whole
/// log, checked to hold the same data (`DEBUG DIGEST`).
fn replica_holding_what(ferry: &Server, dir: &std::path::Path) -> Server {
    let replica = Server::replica(dir, &ferry.grpc_url(), &[]);
    assert!(
        common::wait_until(Duration::from_secs(60), || common::caught_up(
            ferry, &replica
        )),
        "the replica did not catch up: {:?}",
        common::status(replica.grpc)
    );
    assert_eq!(common::digest(ferry), common::digest(&replica));
    replica
}

/// The raw replies to `request` (RESP bytes) from the server at `addr`:
/// up to a `PING`'s `+PONG` sent after it, or to the connection's end.
fn raw_exchange(addr: &str, request: &[u8]) -> Vec<u8> {
    raw_replies(addr, &[request, b"*1\r\n$4\r\nPING\r\n"].concat())
}

/// The raw replies to `request`, read until a `+PONG` ends them or the
/// server closes the connection.
fn raw_replies(addr: &str, request: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    while !got.ends_with(b"+PONG\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

/// One request as RESP.
fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Requests written as words split at spaces (none of them holds one), as
/// RESP, one after the other.
fn requests(lines: &[&str]) -> Vec<u8> {
    lines
        .iter()
        .map(|line| resp(&line.split(' ').map(str::as_bytes).collect::<Vec<_>>()))
        .collect::<Vec<_>>()
        .concat()
}

/// The replies where ferry and Redis 7 must agree byte for byte (HELLO's
/// map only in its first line: versions and ids differ).
/// COMMAND INFO of every command ferry has: name, arity, flags, key
/// positions and ACL categories as Redis gives them (its tips, key specs
/// and subcommands ferry leaves empty); COMMAND LIST FILTERBY ACLCAT
/// names the same commands and subcommands per category.
#[test]
fn command_info_and_categories_are_redis_s() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ferry = Server::start(&dir.path().join("node"), &[]);
    let redis = Redis::start();
    let f = &mut connect(&ferry.url(), false).expect("ferry");
    let r = &mut connect(&format!("redis://127.0.0.1:{}/", redis.port), false).expect("redis");
    // A reply that is an array of names.
    let names_of = |c: &mut redis::Connection, args: &[&str]| -> Vec<String> {
        let Value::Array(list) = common::cmd(args).query::<Value>(c).unwrap() else {
            panic!("{args:?}")
        };
        list.into_iter()
            .map(|n| match n {
                Value::BulkString(b) => String::from_utf8(b).unwrap(),
                other => panic!("{other:?}"),
            })
            .collect()
    };
    let names = names_of(f, &["COMMAND", "LIST"]);
    let top: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| !n.contains('|'))
        .collect();
    let info = |c: &mut redis::Connection| -> Vec<Value> {
        let mut args = vec!["COMMAND", "INFO"];
        args.extend(&top);
        let Value::Array(infos) = common::cmd(&args).query::<Value>(c).unwrap() else {
            panic!()
        };
        infos
    };
    for (name, (ours, theirs)) in top.iter().zip(info(f).into_iter().zip(info(r))) {
        let Value::Array(ours) = ours else {
            panic!("{name}: not an array")
        };
        let Value::Array(theirs) = theirs else {
            // Past Redis 7.0: WAITAOF (7.2), as Redis 7.2 gives it.
            assert_eq!(
                *name, "waitaof",
                "COMMAND INFO {name}: Redis 7.0 has no such command"
            );
            let names = |n: &[&str]| {
                Value::Array(
                    n.iter()
                        .map(|s| Value::SimpleString(s.to_string()))
                        .collect(),
                )
            };
            assert_eq!(
                ours[..7],
                [
                    Value::BulkString(b"waitaof".to_vec()),
                    Value::Int(4),
                    names(&["noscript"]),
                    Value::Int(0),
                    Value::Int(0),
                    Value::Int(0),
                    names(&["@slow", "@connection"]),
                ]
            );
            continue;
        };
        assert_eq!(ours[..7], theirs[..7], "COMMAND INFO {name}");
    }
    // COMMAND DOCS: each command's version and group as Redis gives them
    // (redis-cli's `help` reads them), and a summary.
    // A RESP2 map (name, fields, name, fields...), its subcommands' (a
    // container's `subcommands` field) after it.
    type Docs = Vec<(String, Vec<(String, Value)>)>;
    fn entries(flat: &[Value]) -> Docs {
        let mut all = Vec::new();
        for pair in flat.chunks(2) {
            let (Value::BulkString(name), Value::Array(fields)) = (&pair[0], &pair[1]) else {
                panic!("{pair:?}")
            };
            let fields: Vec<(String, Value)> = fields
                .chunks(2)
                .map(|f| match &f[0] {
                    Value::BulkString(k) => (String::from_utf8(k.clone()).unwrap(), f[1].clone()),
                    other => panic!("{other:?}"),
                })
                .collect();
            let subs = fields.iter().find_map(|(k, v)| match v {
                Value::Array(subs) if k == "subcommands" => Some(entries(subs)),
                _ => None,
            });
            all.push((String::from_utf8(name.clone()).unwrap(), fields));
            all.extend(subs.unwrap_or_default());
        }
        all
    }
    let docs = |c: &mut redis::Connection| -> Docs {
        let mut args = vec!["COMMAND", "DOCS"];
        args.extend(&top);
        let Value::Array(flat) = common::cmd(&args).query::<Value>(c).unwrap() else {
            panic!("COMMAND DOCS")
        };
        entries(&flat)
    };
    let field = |fields: &[(String, Value)], name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let theirs = docs(r);
    let ours = docs(f);
    assert_eq!(
        ours.len(),
        names.len(),
        "COMMAND DOCS of every command and subcommand"
    );
    for (name, fields) in &ours {
        assert!(
            matches!(field(fields, "summary"), Some(Value::BulkString(s)) if !s.is_empty()),
            "COMMAND DOCS {name}: a summary"
        );
        match theirs.iter().find(|(n, _)| n == name) {
            Some((_, redis_fields)) => {
                for key in ["since", "group"] {
                    assert_eq!(
                        field(fields, key),
                        field(redis_fields, key),
                        "COMMAND DOCS {name}: {key}"
                    );
                }
            }
            None => assert!(
                ["waitaof", "client|setinfo"].contains(&name.as_str()),
                "COMMAND DOCS {name}: Redis 7.0 has no such command"
            ),
        }
    }
    let sorted = |c: &mut redis::Connection, category: &str| -> Vec<String> {
        let mut list = names_of(c, &["COMMAND", "LIST", "FILTERBY", "ACLCAT", category]);
        list.sort();
        list
    };
    // Names both have (CLIENT SETINFO and WAITAOF came in Redis 7.2).
    let known = names_of(r, &["COMMAND", "LIST"]);
    for category in [
        "read",
        "write",
        "fast",
        "slow",
        "admin",
        "dangerous",
        "keyspace",
        "string",
        "hash",
        "connection",
        "transaction",
        "@read",
        "all",
        "nosuch",
    ] {
        let theirs: Vec<String> = sorted(r, category)
            .into_iter()
            .filter(|n| names.contains(n))
            .collect();
        let ours: Vec<String> = sorted(f, category)
            .into_iter()
            .filter(|n| known.contains(n))
            .collect();
        assert_eq!(ours, theirs, "ACLCAT {category}");
    }
    // ACL CAT names the same commands in each category.
    for category in [
        "keyspace",
        "read",
        "write",
        "string",
        "hash",
        "admin",
        "connection",
    ] {
        let acl_cat = |c: &mut redis::Connection| {
            let mut list = names_of(c, &["ACL", "CAT", category]);
            list.sort();
            list
        };
        let theirs: Vec<String> = acl_cat(r)
            .into_iter()
            .filter(|n| names.contains(n))
            .collect();
        let ours: Vec<String> = acl_cat(f)
            .into_iter()
            .filter(|n| known.contains(n))
            .collect();
        assert!(!ours.is_empty(), "ACL CAT {category}");
        assert_eq!(ours, theirs, "ACL CAT {category}");
    }
}

/// CLIENT TRACKING NOLOOP, as Redis: a client is told nothing of the keys
/// its own commands change (alone, pipelined, in a transaction), in
/// default mode and with BCAST; with the keys read before, its replies are
/// Redis's byte for byte, with no push among them.
#[test]
fn a_noloop_client_is_told_nothing_of_its_own_writes_as_redis() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ferry = Server::start(&dir.path().join("node"), &[]);
    let redis = Redis::start();
    let request = [
        resp(&[b"HELLO", b"3"]),
        resp(&[b"MSET", b"nl-a", b"1", b"nl-b", b"2"]),
        resp(&[b"CLIENT", b"TRACKING", b"ON", b"NOLOOP"]),
        resp(&[b"MGET", b"nl-a", b"nl-b"]),
        resp(&[b"SET", b"nl-a", b"3"]),
        resp(&[b"GET", b"nl-a"]),
        resp(&[b"MULTI"]),
        resp(&[b"INCR", b"nl-a"]),
        resp(&[b"DEL", b"nl-b"]),
        resp(&[b"EXEC"]),
        resp(&[b"GET", b"nl-a"]),
        resp(&[b"CLIENT", b"TRACKING", b"OFF"]),
        resp(&[
            b"CLIENT",
            b"TRACKING",
            b"ON",
            b"BCAST",
            b"PREFIX",
            b"nl-",
            b"NOLOOP",
        ]),
        resp(&[b"SET", b"nl-c", b"1"]),
        resp(&[b"MSET", b"nl-c", b"2", b"nl-d", b"3", b"other", b"4"]),
        resp(&[b"HSET", b"nl-h", b"f", b"v"]),
        resp(&[b"CLIENT", b"TRACKINGINFO"]),
    ]
    .concat();
    let (ours, theirs) = (
        raw_exchange(&ferry.resp.to_string(), &request),
        raw_exchange(&format!("127.0.0.1:{}", redis.port), &request),
    );
    // HELLO's map differs (server name, version, ids): compared from the
    // MSET's reply on.
    let after_hello = |bytes: &[u8]| -> String {
        let text = String::from_utf8_lossy(bytes).into_owned();
        let ok = text.find("+OK\r\n").expect("MSET's reply");
        text[ok..].to_string()
    };
    assert_eq!(after_hello(&ours), after_hello(&theirs));
    assert!(!after_hello(&ours).contains(">2\r\n"), "no push");
}

/// ACL LIST and GETUSER of the default user with a password, as Redis
/// shows them (the password's SHA-256), in RESP2 and RESP3; GENPASS's
/// lengths.
#[test]
fn acl_shows_the_default_user_s_password_as_redis_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ferry = Server::start(&dir.path().join("node"), &["--requirepass", "s3cret"]);
    let redis = Redis::start_with(&["--requirepass", "s3cret"]);
    let (f, r) = (ferry.resp.to_string(), format!("127.0.0.1:{}", redis.port));
    let request = [
        resp(&[b"AUTH", b"s3cret"]),
        resp(&[b"ACL", b"LIST"]),
        resp(&[b"ACL", b"GETUSER", b"default"]),
        resp(&[b"HELLO", b"3"]),
        resp(&[b"ACL", b"GETUSER", b"default"]),
        resp(&[b"ACL", b"WHOAMI"]),
    ]
    .concat();
    let (ours, theirs) = (raw_exchange(&f, &request), raw_exchange(&r, &request));
    // HELLO's map differs (server name, version, ids): compared apart.
    let split = |bytes: &[u8]| -> (String, String) {
        let text = String::from_utf8_lossy(bytes).into_owned();
        let hello = text.find("%7\r\n").expect("HELLO's map");
        let after = text[hello..].find("%6\r\n").expect("GETUSER's map") + hello;
        (text[..hello].to_string(), text[after..].to_string())
    };
    assert_eq!(split(&ours), split(&theirs));
    let c = &mut ferry.client();
    common::cmd(&["AUTH", "s3cret"]).query::<()>(c).unwrap();
    for (bits, chars) in [
        (None, 64),
        (Some("1"), 1),
        (Some("32"), 8),
        (Some("4096"), 1024),
    ] {
        let mut args = vec!["ACL", "GENPASS"];
        args.extend(bits);
        let pass: String = common::cmd(&args).query(c).unwrap();
        assert_eq!(pass.len(), chars, "{args:?}");
        assert!(
            pass.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }
    let (a, b): (String, String) = (
        common::cmd(&["ACL", "GENPASS"]).query(c).unwrap(),
        common::cmd(&["ACL", "GENPASS"]).query(c).unwrap(),
    );
    assert_ne!(a, b);
}

/// A password set and removed at run time (CONFIG SET requirepass), and
/// maxclients lowered, as Redis 7.0 takes them: a client connected before
/// the password stays in, a new one must authenticate, and one that never
/// did gets in once the password is gone; the password never shows in the
/// slow log.
#[test]
fn requirepass_and_maxclients_set_at_run_time_work_as_redis_s() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ferry = Server::start(&dir.path().join("node"), &SLOWLOG_EVERYTHING);
    let redis = Redis::start();
    let run = |url: &str| -> Vec<(&'static str, Result<Value, String>)> {
        let open = || connect(url, false).expect("connect");
        let ask = |c: &mut redis::Connection, args: &[&str]| {
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            reply_once(c, &args)
        };
        let mut got = Vec::new();
        let (mut admin, mut before) = (open(), open());
        // Connected (the server has it) before the password is set.
        ask(&mut before, &["PING"]).expect("PING");
        ask(&mut admin, &["SLOWLOG", "RESET"]).expect("reset");
        got.push((
            "set",
            ask(&mut admin, &["CONFIG", "SET", "requirepass", "n3w pass"]),
        ));
        let mut after = open();
        got.push(("before", ask(&mut before, &["GET", "k"])));
        got.push(("after", ask(&mut after, &["GET", "k"])));
        got.push(("after hello", ask(&mut after, &["HELLO", "2"])));
        got.push(("wrong", ask(&mut after, &["AUTH", "n3w"])));
        got.push(("get", ask(&mut admin, &["CONFIG", "GET", "requirepass"])));
        got.push(("list", ask(&mut admin, &["ACL", "LIST"])));
        got.push((
            "removed",
            ask(&mut admin, &["CONFIG", "SET", "requirepass", ""]),
        ));
        got.push(("after, unauthenticated", ask(&mut after, &["GET", "k"])));
        got.push(("list again", ask(&mut admin, &["ACL", "LIST"])));
        got.push((
            "set again",
            ask(&mut admin, &["CONFIG", "SET", "REQUIREPASS", "p"]),
        ));
        let mut third = open();
        got.push(("third", ask(&mut third, &["GET", "k"])));
        got.push(("third auth", ask(&mut third, &["AUTH", "default", "p"])));
        got.push(("third in", ask(&mut third, &["GET", "k"])));
        got.push((
            "unset",
            ask(&mut admin, &["CONFIG", "SET", "requirepass", ""]),
        ));
        let slowlog = ask(&mut admin, &["SLOWLOG", "GET", "100"]);
        // Each entry's arguments (ids, times and addresses differ).
        let Ok(Value::Array(entries)) = slowlog else {
            panic!("{slowlog:?}")
        };
        for entry in entries {
            let Value::Array(fields) = entry else {
                panic!("{entry:?}")
            };
            got.push(("slow log entry", Ok(fields[3].clone())));
        }
        for args in [
            &["CONFIG", "SET", "maxclients", "0"][..],
            &["CONFIG", "SET", "maxclients", "x"],
            &["CONFIG", "SET", "maxclients", "4294967296"],
            &["CONFIG", "SET", "maxclients", "4"],
            &["CONFIG", "GET", "maxclients"],
        ] {
            got.push(("maxclients", ask(&mut admin, args)));
        }
        // admin, before, after and third are connected: a fifth is one
        // too many.
        let mut fifth = open();
        got.push(("fifth", ask(&mut fifth, &["PING"])));
        got.push((
            "raised",
            ask(&mut admin, &["CONFIG", "SET", "maxclients", "10000"]),
        ));
        got
    };
    let ours = run(&ferry.url());
    let theirs = run(&format!("redis://127.0.0.1:{}/", redis.port));
    assert_eq!(ours.len(), theirs.len(), "{ours:?}\n{theirs:?}");
    for (o, t) in ours.iter().zip(&theirs) {
        assert_eq!(o, t);
    }
}

/// Failed authentications in ACL LOG as Redis 7.0 keeps them: by command
/// (as written), user and context (a transaction's is `multi`), one alike
/// within a minute counted again and moved to the front, at most
/// acllog-max-len (cut when a new entry comes); in RESP2 and RESP3. Ages and
/// client lines differ between the servers: they are checked for their
/// form and compared apart.
#[test]
fn failed_authentications_are_in_acl_log_as_redis_keeps_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ferry = Server::start(&dir.path().join("node"), &["--requirepass", "pw"]);
    let redis = Redis::start_with(&["--requirepass", "pw"]);
    let request = [
        resp(&[b"auth", b"bad"]),
        resp(&[b"AUTH", b"bad2"]),
        resp(&[b"AUTH", b"someone", b"bad"]),
        resp(&[b"hello", b"2", b"auth", b"x", b"y"]),
        resp(&[b"AUTH", b"pw"]),
        resp(&[b"MULTI"]),
        resp(&[b"AUTH", b"bad"]),
        resp(&[b"EXEC"]),
        resp(&[b"auth", b"bad"]),
        resp(&[b"ACL", b"LOG"]),
        resp(&[b"ACL", b"LOG", b"1"]),
        resp(&[b"ACL", b"LOG", b"-1"]),
        resp(&[b"ACL", b"LOG", b"x"]),
        resp(&[b"ACL", b"LOG", b"1", b"2"]),
        resp(&[b"CONFIG", b"SET", b"acllog-max-len", b"-1"]),
        resp(&[b"CONFIG", b"GET", b"acllog-max-len"]),
        resp(&[b"CONFIG", b"SET", b"acllog-max-len", b"2"]),
        resp(&[b"ACL", b"LOG"]),
        resp(&[b"AUTH", b"nope"]),
        resp(&[b"ACL", b"LOG"]),
        // A new entry: the log is cut to two.
        resp(&[b"AUTH", b"other", b"nope"]),
        resp(&[b"ACL", b"LOG"]),
        resp(&[b"ACL", b"LOG", b"RESET"]),
        resp(&[b"ACL", b"LOG"]),
        resp(&[b"HELLO", b"3"]),
        resp(&[b"AUTH", b"bad"]),
        resp(&[b"ACL", b"LOG"]),
    ]
    .concat();
    let masked = |bytes: Vec<u8>| -> Vec<String> {
        let text = String::from_utf8(bytes).expect("text");
        let mut lines = text.split("\r\n");
        let mut out = Vec::new();
        while let Some(line) = lines.next() {
            out.push(line.to_string());
            if line == "age-seconds" {
                let mut value = lines.next().expect("an age");
                if value.starts_with('$') {
                    value = lines.next().expect("an age");
                } else {
                    value = value.strip_prefix(',').expect("a double");
                }
                let age: f64 = value.parse().expect("seconds");
                assert!((0.0..60.0).contains(&age), "{age}");
                out.push("(age)".into());
            } else if line == "client-info" {
                lines.next().expect("a length");
                let info = lines.next().expect("a client line");
                assert!(info.starts_with("id="), "{info}");
                assert!(info.contains(" user=default "), "{info}");
                out.push("(client)".into());
            } else if line.starts_with("%7") {
                // HELLO 3's map: its first line only.
                for _ in 0..14 {
                    lines.next();
                }
            }
        }
        out
    };
    let ours = masked(raw_exchange(&ferry.resp.to_string(), &request));
    let theirs = masked(raw_exchange(&format!("127.0.0.1:{}", redis.port), &request));
    for (at, (o, t)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(o, t, "line {at}: {:?}", &ours[..at]);
    }
    assert_eq!(ours.len(), theirs.len());
}

/// INFO's `total_commands_processed` counts the commands that ran, as
/// Redis's does: not those refused before they ran (unknown, wrong
/// arity, an unknown subcommand), nor those queued in a transaction until
/// its EXEC runs them.
#[test]
fn commands_processed_are_counted_as_redis_counts_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ferry = Server::start(&dir.path().join("node"), &[]);
    let redis = Redis::start_with(&[]);
    let sequence: &[&[&str]] = &[
        &["CONFIG", "RESETSTAT"],
        &["NOPE"],
        &["GET"],
        &["CLIENT", "FOO"],
        &["SET", "a", "1"],
        &["GET", "a"],
        &["HSET", "h", "f", "v"],
        &["GET", "h"],
        &["MULTI"],
        &["SET", "b", "2"],
        &["INCR", "b"],
        &["EXEC"],
        &["MULTI"],
        &["NOPE"],
        &["SET", "c", "1"],
        &["EXEC"],
        &["PING"],
    ];
    let mut counts = Vec::new();
    for url in [ferry.url(), format!("redis://127.0.0.1:{}", redis.port)] {
        let mut con = connect(&url, false).expect("connect");
        for args in sequence {
            let _ = common::cmd(args).query::<Value>(&mut con);
        }
        let info: String = redis::cmd("INFO")
            .arg("stats")
            .query(&mut con)
            .expect("INFO");
        counts.push(
            info.lines()
                .find_map(|l| l.strip_prefix("total_commands_processed:"))
                .map(str::to_string),
        );
    }
    assert_eq!(counts[0], counts[1], "ferry, then Redis");
}

#[test]
fn fixed_cases_get_the_bytes_redis_gives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limit = "1048576";
    let ferry = Server::start(&dir.path().join("node"), &["--proto-max-bulk-len", limit]);
    let redis = Redis::start_with(&["--proto-max-bulk-len", limit]);
    let (f, r) = (ferry.resp.to_string(), format!("127.0.0.1:{}", redis.port));
    let big = vec![b'x'; 1 << 20];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // Without --requirepass the default user takes any password, but
        // the one-argument AUTH is an error.
        (
            "AUTH without a password set",
            [
                resp(&[b"AUTH", b"default", b"anything"]),
                resp(&[b"AUTH", b"someone", b"pw"]),
                resp(&[b"AUTH", b"pw"]),
            ]
            .concat(),
        ),
        (
            "cluster commands as a Redis without cluster support answers them",
            requests(&[
                "cluster",
                "cluster info",
                "cluster slots",
                "cluster HELP",
                "cluster foo",
                "cluster info x",
                "cluster keyslot",
                "cluster keyslot a b",
                "cluster keyslot a",
                "readonly",
                "readonly x",
                "readwrite",
                "asking",
                "asking x",
            ]),
        ),
        (
            "memory settings as Redis's defaults show them (no eviction); older names",
            requests(&[
                "config get maxmemory",
                "config get maxmemory-policy",
                // Redis's older names, which it still takes.
                "config get slave-read-only",
                // HELLO sets a name as it reads it: kept when a later
                // option is bad.
                "hello 2 setname n1 foo",
                "client getname",
                // A plain name as it was asked; each once.
                "config get MAXCLIENTS",
                "config get TimeOut timeout",
                "config get Slave-Read-Only",
                "config get slave-serve-stale-data",
                "config get min-slaves-to-write",
                "config get min-slaves-max-lag",
                "config set min-slaves-to-write 0",
                "config set SLAVE-serve-stale-data yes",
                "config set min-slaves-max-lag 10 min-replicas-max-lag 10",
                "config set slave-nosuch 1",
            ]),
        ),
        (
            "cursors read as C's strtoul reads them; WAIT's timeout errors",
            requests(&[
                "scan -0",
                "scan +0 count 5",
                "scan -1",
                "scan -18446744073709551615",
                "scan 18446744073709551616",
                "scan --1",
                "scan -",
                "scan 1.5",
                "hset sh f v",
                "hscan sh -0",
                "hscan sh +0",
                "hscan sh --1",
                "del sh",
                "wait 0 abc",
                "wait abc 0",
                "wait 0 -1",
                "wait 0 1.5",
            ]),
        ),
        (
            "SSUBSCRIBE inside a transaction is refused, as Redis 7.0 refuses it",
            requests(&["multi", "ssubscribe s1", "exec", "pubsub shardnumsub s1"]),
        ),
        (
            "CLIENT TRACKING ON again sets its options anew and adds prefixes",
            requests(&[
                "client tracking on noloop",
                "client tracking on",
                "client trackinginfo",
                "client tracking off",
                "client tracking on optin",
                "client tracking on",
                "client trackinginfo",
                "client tracking on optout",
                "client tracking off",
                "client tracking on bcast prefix b prefix a",
                "client tracking on bcast prefix c",
                "client trackinginfo",
                "client tracking on bcast",
                "client trackinginfo",
                "client tracking on bcast prefix d",
                "client tracking off",
                "client tracking on bcast",
                "client trackinginfo",
                "client tracking off",
                "client tracking on bcast optout optin",
                "client trackinginfo",
            ]),
        ),
        (
            "glob patterns as Redis's matcher reads them; an empty cursor is 0",
            [
                resp(&[b"flushall"]),
                // A range ending in `]`, and the class goes on after it.
                resp(&[b"set", b"]", b"1"]),
                resp(&[b"keys", b"[a-]"]),
                resp(&[b"scan", b"0", b"match", b"[a-]"]),
                resp(&[b"flushall"]),
                resp(&[b"set", b"b", b"1"]),
                resp(&[b"keys", b"[a-]b"]),
                // Range ends compare as C's signed char.
                resp(&[b"flushall"]),
                resp(&[b"set", b"0", b"1"]),
                resp(&[b"set", b"\x80", b"1"]),
                resp(&[b"keys", b"[a-\xff]"]),
                resp(&[b"keys", b"[\x80-\x90]"]),
                // Two stars do not match the empty key; one takes every key.
                resp(&[b"flushall"]),
                resp(&[b"set", b"", b"1"]),
                resp(&[b"keys", b"**"]),
                resp(&[b"keys", b"*"]),
                resp(&[b"scan", b"0", b"match", b"**"]),
                resp(&[b"scan", b""]),
                resp(&[b"scan", b"", b"count", b"x"]),
                resp(&[b"hset", b"h", b"f", b"v"]),
                resp(&[b"hscan", b"h", b""]),
                resp(&[b"flushall"]),
            ]
            .concat(),
        ),
        (
            "BITFIELD and BITFIELD_RO: errors in Redis's order, overflow, growth",
            requests(&[
                "bitfield",
                "bitfield bk",
                "bitfield bk get",
                "bitfield bk get i8",
                "bitfield bk get i8 0",
                "bitfield bk get u64 0",
                "bitfield bk get i65 0",
                "bitfield bk get I8 0",
                "bitfield bk get i0 0",
                "bitfield bk get x8 0",
                "bitfield bk get i8 -1",
                "bitfield bk get i8 #-1",
                "bitfield bk get i8 abc",
                "bitfield bk set i8 0",
                "bitfield bk set i8 0 abc",
                "bitfield bk overflow",
                "bitfield bk overflow foo get i8 0",
                "bitfield bk foo",
                "bitfield bk get i8 0 foo",
                "bitfield_ro bk get i8 0",
                "bitfield_ro bk set i8 0 1",
                "bitfield_ro bk get i8 0 set i8 0 1",
                "bitfield_ro bk incrby i8 0 1 get x 0",
                "exists bk",
                "bitfield bk set i8 0 100 get i8 0 incrby i8 0 100 get u8 0",
                "bitfield bk overflow sat incrby i8 0 100 overflow fail incrby i8 0 100 overflow wrap incrby i8 0 100",
                "get bk",
                "bitfield bk set u4 #3 15 get u16 0 get i64 0 get u63 1",
                "bitfield bk overflow fail set u2 100 5",
                "strlen bk",
                "get bk",
                "bitfield fk overflow fail set u8 0 1000",
                "exists fk",
                "get fk",
                "bitfield fk overflow fail set u8 0 1000",
                "get fk",
                "bitfield bk set i64 0 -1 get u63 0 get i64 0 incrby i64 0 1 get i64 0",
                "bitfield bk overflow sat incrby i64 0 -9223372036854775808 incrby i64 0 -9223372036854775808",
                "bitfield bk overflow sat set i8 0 -9223372036854775808",
                "bitfield bk overflow wrap set i8 0 -9223372036854775808 set u8 8 -1 get u8 8",
                "hset hk f v",
                "bitfield hk get i8 0",
                "bitfield hk set i8 0 1",
                "bitfield_ro hk get i8 0",
                "bitfield_ro nokey get i8 0 get u8 #100",
                "bitfield bk get i8 100000",
                "bitfield nk set u8 100 1",
                "strlen nk",
                "bitfield nk incrby u1 7 1 incrby u1 7 1 incrby u1 7 1",
                "bitfield nk overflow sat incrby u1 7 1 incrby u1 7 1 overflow fail incrby u1 7 1",
                "get nk",
                "bitfield bk get i8 8388607",
                "bitfield bk get i8 8388608",
                "bitfield bk get u8 #1048575",
                "bitfield bk get u8 #1048576",
            ]),
        ),
        (
            "HELLO AUTH without a password set",
            resp(&[b"HELLO", b"2", b"AUTH", b"default", b"pw"]),
        ),
        (
            "HELLO SETNAME checks the name",
            [
                resp(&[b"HELLO", b"3", b"SETNAME", b"my name"]),
                resp(&[b"CLIENT", b"GETNAME"]),
            ]
            .concat(),
        ),
        (
            "RESET leaves a new connection's state",
            [
                resp(&[b"CLIENT", b"SETNAME", b"before"]),
                resp(&[b"SET", b"reset-k", b"1"]),
                resp(&[b"WATCH", b"reset-k"]),
                resp(&[b"MULTI"]),
                resp(&[b"INCR", b"reset-k"]),
                resp(&[b"RESET"]),
                resp(&[b"EXEC"]),
                resp(&[b"CLIENT", b"GETNAME"]),
                resp(&[b"LCS", b"reset-k", b"reset-k", b"IDX"]),
                resp(&[b"INCR", b"reset-k"]),
                resp(&[b"RESET", b"extra"]),
                resp(&[b"reset"]),
            ]
            .concat(),
        ),
        (
            "ACL of a server with the default user alone",
            [
                resp(&[b"ACL", b"WHOAMI"]),
                resp(&[b"acl", b"users"]),
                resp(&[b"ACL", b"LIST"]),
                resp(&[b"ACL", b"CAT"]),
                resp(&[b"ACL", b"GETUSER", b"default"]),
                resp(&[b"ACL", b"GETUSER", b"nobody"]),
                // Redis logs the AUTH failures of the cases before.
                resp(&[b"ACL", b"LOG", b"RESET"]),
                resp(&[b"ACL", b"LOG"]),
                resp(&[b"ACL", b"LOG", b"5"]),
                resp(&[b"ACL", b"LOG", b"-1"]),
                resp(&[b"ACL", b"LOG", b"x"]),
                resp(&[b"ACL", b"LOG", b"RESET"]),
                resp(&[b"ACL", b"LOG", b"1", b"2"]),
                resp(&[b"ACL", b"DRYRUN", b"default", b"get", b"k"]),
                resp(&[b"ACL", b"DRYRUN", b"default", b"CONFIG", b"GET", b"x"]),
                resp(&[b"ACL", b"DRYRUN", b"nobody", b"get", b"k"]),
                resp(&[b"ACL", b"DRYRUN", b"default", b"nosuch"]),
                resp(&[b"ACL", b"DRYRUN", b"default", b"get"]),
                resp(&[b"ACL", b"DRYRUN", b"default"]),
                resp(&[b"ACL", b"GENPASS", b"0"]),
                resp(&[b"ACL", b"GENPASS", b"5000"]),
                resp(&[b"ACL", b"GENPASS", b"x"]),
                resp(&[b"ACL", b"GENPASS", b"1", b"2"]),
                resp(&[b"ACL", b"CAT", b"nosuch"]),
                resp(&[b"ACL", b"CAT", b"keyspace", b"x"]),
                resp(&[b"ACL", b"WHOAMI", b"x"]),
                resp(&[b"ACL", b"USERS", b"x"]),
                resp(&[b"ACL", b"GETUSER"]),
                resp(&[b"ACL", b"NOSUCH"]),
                resp(&[b"ACL"]),
                resp(&[b"ACL", b"DELUSER"]),
                resp(&[b"ACL", b"SETUSER"]),
                resp(&[b"ACL", b"DELUSER", b"bob", b"alice"]),
                resp(&[b"ACL", b"DELUSER", b"bob", b"default"]),
            ]
            .concat(),
        ),
        (
            "CLIENT REPLY OFF, ON and SKIP, and CLIENT NO-EVICT",
            [
                resp(&[b"CLIENT", b"REPLY", b"SKIP"]),
                resp(&[b"ECHO", b"a"]),
                resp(&[b"ECHO", b"b"]),
                resp(&[b"CLIENT", b"REPLY", b"OFF"]),
                resp(&[b"SET", b"reply-k", b"1"]),
                resp(&[b"ECHO", b"c"]),
                resp(&[b"NOSUCH"]),
                resp(&[b"INCR", b"reply-k"]),
                resp(&[b"CLIENT", b"REPLY", b"ON"]),
                resp(&[b"GET", b"reply-k"]),
                resp(&[b"CLIENT", b"REPLY", b"maybe"]),
                resp(&[b"CLIENT", b"REPLY"]),
                resp(&[b"CLIENT", b"NO-EVICT", b"on"]),
                resp(&[b"CLIENT", b"NO-EVICT", b"bad"]),
                resp(&[b"CLIENT", b"NO-EVICT", b"OFF"]),
                resp(&[b"CLIENT", b"REPLY", b"SKIP"]),
                resp(&[b"CLIENT", b"REPLY", b"SKIP"]),
                resp(&[b"INCR", b"reply-k"]),
                resp(&[b"ECHO", b"g"]),
                resp(&[b"CLIENT", b"REPLY", b"SKIP"]),
                resp(&[b"CLIENT", b"REPLY", b"OFF"]),
                resp(&[b"ECHO", b"h"]),
                resp(&[b"CLIENT", b"REPLY", b"SKIP"]),
                resp(&[b"CLIENT", b"REPLY", b"ON"]),
                resp(&[b"CLIENT", b"REPLY", b"OFF"]),
                resp(&[b"RESET"]),
                resp(&[b"GET", b"reply-k"]),
            ]
            .concat(),
        ),
        (
            "CLIENT TRACKING's options, checks and TRACKINGINFO",
            [
                resp(&[b"CLIENT", b"TRACKING", b"ON", b"PREFIX", b"a"]),
                resp(&[b"CLIENT", b"TRACKING", b"ON", b"OPTIN", b"OPTOUT"]),
                resp(&[b"CLIENT", b"TRACKING", b"ON", b"BCAST", b"OPTIN"]),
                resp(&[
                    b"CLIENT",
                    b"TRACKING",
                    b"ON",
                    b"BCAST",
                    b"PREFIX",
                    b"ab",
                    b"PREFIX",
                    b"a",
                ]),
                resp(&[b"CLIENT", b"TRACKING", b"MAYBE"]),
                resp(&[b"CLIENT", b"TRACKING", b"ON", b"REDIRECT", b"x"]),
                resp(&[b"CLIENT", b"TRACKING", b"ON", b"REDIRECT", b"99999"]),
                resp(&[b"CLIENT", b"CACHING", b"YES"]),
                resp(&[b"CLIENT", b"GETREDIR"]),
                resp(&[b"CLIENT", b"TRACKINGINFO"]),
                resp(&[b"CLIENT", b"TRACKING", b"ON", b"BCAST", b"PREFIX", b"x"]),
                resp(&[b"CLIENT", b"TRACKING", b"ON"]),
                resp(&[b"CLIENT", b"TRACKING", b"ON", b"BCAST", b"PREFIX", b"x"]),
                resp(&[b"CLIENT", b"TRACKING", b"ON", b"BCAST", b"PREFIX", b"xy"]),
                resp(&[
                    b"CLIENT",
                    b"TRACKING",
                    b"ON",
                    b"BCAST",
                    b"PREFIX",
                    b"y",
                    b"NOLOOP",
                ]),
                resp(&[b"CLIENT", b"TRACKINGINFO"]),
                resp(&[b"CLIENT", b"GETREDIR"]),
                resp(&[b"CLIENT", b"TRACKING", b"OFF"]),
                resp(&[b"CLIENT", b"TRACKING", b"ON", b"OPTOUT"]),
                resp(&[b"CLIENT", b"CACHING", b"YES"]),
                resp(&[b"CLIENT", b"CACHING", b"MAYBE"]),
                resp(&[b"CLIENT", b"CACHING", b"NO"]),
                resp(&[b"CLIENT", b"TRACKINGINFO"]),
                resp(&[b"CLIENT", b"TRACKING", b"ON", b"OPTIN"]),
                resp(&[b"CLIENT", b"TRACKING", b"OFF", b"FOO"]),
                resp(&[b"CLIENT", b"TRACKING", b"OFF"]),
                resp(&[b"CLIENT", b"TRACKING", b"ON"]),
                resp(&[b"CLIENT", b"CACHING", b"YES"]),
                resp(&[b"RESET"]),
                resp(&[b"CLIENT", b"TRACKINGINFO"]),
            ]
            .concat(),
        ),
        (
            "CONFIG SET client-output-buffer-limit as Redis reads and shows it",
            {
                let mut case = vec![resp(&[b"CONFIG", b"GET", b"client-output-buffer-limit"])];
                for value in [
                    &b"pubsub 64mb 16mb 30"[..],
                    b"replica 1kb 2k 3 normal 1 2 3",
                    b"SLAVE 0 0 0 PubSub 1gb 0 0",
                    b"pubsub 1 2",
                    b"master 1 2 3",
                    b"nobody 1 2 3",
                    b"pubsub -1 0 0",
                    b"pubsub 1x 0 0",
                    b"pubsub 1 2 3 normal",
                    b"normal 9 9 9 pubsub 1 2 x",
                    b"",
                    b"normal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60",
                ] {
                    case.push(resp(&[
                        b"CONFIG",
                        b"SET",
                        b"client-output-buffer-limit",
                        value,
                    ]));
                    case.push(resp(&[b"CONFIG", b"GET", b"client-output-buffer-limit"]));
                }
                case.concat()
            },
        ),
        (
            "CONFIG SET notify-keyspace-events as Redis reads and shows it",
            {
                let mut case = Vec::new();
                for value in [
                    &b"KEA"[..],
                    b"Kg",
                    b"$hK",
                    b"Egx",
                    b"KEn",
                    b"AKEnm",
                    b"g$lshzxetd",
                    b"Kg$lshzxet",
                    b"Kq",
                    b"",
                ] {
                    case.push(resp(&[b"CONFIG", b"SET", b"notify-keyspace-events", value]));
                    case.push(resp(&[b"CONFIG", b"GET", b"notify-keyspace-events"]));
                }
                case.concat()
            },
        ),
        (
            "CONFIG SET of the size limits, in bytes or with units",
            [
                resp(&[b"CONFIG", b"SET", b"proto-max-bulk-len", b"1000"]),
                resp(&[b"CONFIG", b"SET", b"proto-max-bulk-len", b"1.5mb"]),
                resp(&[b"CONFIG", b"SET", b"proto-max-bulk-len", b"-1"]),
                resp(&[b"CONFIG", b"SET", b"proto-max-bulk-len", b"2xb"]),
                resp(&[
                    b"CONFIG",
                    b"SET",
                    b"client-query-buffer-limit",
                    b"9223372036854775808",
                ]),
                resp(&[
                    b"CONFIG",
                    b"SET",
                    b"proto-max-bulk-len",
                    b"2MB",
                    b"client-query-buffer-limit",
                    b"3g",
                ]),
                resp(&[b"CONFIG", b"GET", b"proto-max-bulk-len"]),
                resp(&[b"CONFIG", b"GET", b"client-query-buffer-limit"]),
                // The largest string SETRANGE may build follows.
                resp(&[b"CONFIG", b"SET", b"proto-max-bulk-len", b"1048577"]),
                resp(&[b"SETRANGE", b"limit-k", b"1048576", b"x"]),
                resp(&[b"CONFIG", b"SET", b"proto-max-bulk-len", b"1mb"]),
                resp(&[b"SETRANGE", b"limit-k2", b"1048576", b"x"]),
                resp(&[b"APPEND", b"limit-k", b"y"]),
                resp(&[b"DEL", b"limit-k"]),
                resp(&[b"CONFIG", b"SET", b"client-query-buffer-limit", b"1gb"]),
            ]
            .concat(),
        ),
        (
            "CONFIG SET of the write lease: on, then off by a lag of 0",
            [
                resp(&[b"CONFIG", b"SET", b"min-replicas-to-write", b"-1"]),
                resp(&[b"CONFIG", b"SET", b"min-replicas-to-write", b"1"]),
                resp(&[b"CONFIG", b"SET", b"min-replicas-max-lag", b"10"]),
                resp(&[b"SET", b"lease-k", b"1"]),
                resp(&[b"GET", b"lease-k"]),
                resp(&[b"CONFIG", b"GET", b"min-replicas-to-write"]),
                resp(&[b"CONFIG", b"SET", b"min-replicas-max-lag", b"0"]),
                resp(&[b"SET", b"lease-k", b"2"]),
                resp(&[b"CONFIG", b"GET", b"min-replicas-max-lag"]),
                resp(&[b"CONFIG", b"SET", b"min-replicas-to-write", b"0"]),
                resp(&[b"CONFIG", b"SET", b"min-replicas-max-lag", b"10"]),
                resp(&[b"GETDEL", b"lease-k"]),
            ]
            .concat(),
        ),
        (
            "CONFIG SET's refusals, and sets that change nothing",
            [
                resp(&[b"CONFIG", b"SET", b"foo", b"1"]),
                // Started without one, as both are here.
                resp(&[b"CONFIG", b"REWRITE"]),
                resp(&[b"CONFIG", b"REWRITE", b"x"]),
                resp(&[b"CONFIG", b"SET", b"timeout", b"x"]),
                resp(&[b"CONFIG", b"SET", b"timeout", b"05"]),
                resp(&[b"CONFIG", b"SET", b"timeout", b"-1"]),
                resp(&[b"CONFIG", b"SET", b"timeout", b"0", b"TIMEOUT", b"0"]),
                resp(&[b"CONFIG", b"SET", b"databases", b"4"]),
                resp(&[b"CONFIG", b"SET", b"slowlog-log-slower-than", b"-5"]),
                resp(&[b"CONFIG", b"SET", b"slowlog-max-len", b"-1"]),
                resp(&[
                    b"CONFIG",
                    b"SET",
                    b"slowlog-max-len",
                    b"99999999999999999999",
                ]),
                resp(&[b"CONFIG", b"SET", b"latency-monitor-threshold", b"-1"]),
                resp(&[b"CONFIG", b"SET", b"tcp-keepalive", b"2147483648"]),
                resp(&[b"CONFIG", b"SET", b"shutdown-timeout", b"-1"]),
                resp(&[b"CONFIG", b"SET", b"replica-serve-stale-data", b"maybe"]),
                resp(&[b"CONFIG", b"SET", b"appendfsync", b"sometimes"]),
                // What ferry does anyway goes through.
                resp(&[b"CONFIG", b"SET", b"save", b""]),
                resp(&[b"CONFIG", b"SET", b"appendonly", b"maybe"]),
                resp(&[b"CONFIG", b"SET", b"appendfsync", b"ALWAYS"]),
                resp(&[b"CONFIG", b"GET", b"appendfsync"]),
                resp(&[b"CONFIG", b"SET", b"appendfsync", b"everysec"]),
                resp(&[b"CONFIG", b"SET", b"acllog-max-len", b"x"]),
                resp(&[b"CONFIG", b"SET", b"timeout"]),
                resp(&[b"CONFIG", b"SET", b"timeout", b"0", b"slowlog-max-len"]),
                // An error in the second pair: the first is not set.
                resp(&[
                    b"CONFIG",
                    b"SET",
                    b"timeout",
                    b"7",
                    b"slowlog-max-len",
                    b"x",
                ]),
                resp(&[b"CONFIG", b"GET", b"timeout"]),
                resp(&[
                    b"CONFIG",
                    b"SET",
                    b"TIMEOUT",
                    b"0",
                    b"replica-serve-stale-data",
                    b"YES",
                ]),
                resp(&[b"CONFIG", b"GET", b"replica-serve-stale-data"]),
            ]
            .concat(),
        ),
        (
            "FAILOVER's refusals on a primary without replicas",
            [
                resp(&[b"FAILOVER"]),
                resp(&[b"FAILOVER", b"ABORT"]),
                resp(&[b"failover", b"abort", b"now"]),
                resp(&[b"FAILOVER", b"TIMEOUT", b"0"]),
                resp(&[b"FAILOVER", b"TIMEOUT", b"x"]),
                resp(&[b"FAILOVER", b"TIMEOUT", b"5", b"TIMEOUT", b"6"]),
                resp(&[b"FAILOVER", b"TO", b"h"]),
                resp(&[b"FAILOVER", b"TO", b"h", b"p"]),
                resp(&[b"FAILOVER", b"TO", b"h", b"1", b"FORCE"]),
                resp(&[b"FAILOVER", b"FORCE"]),
                resp(&[b"FAILOVER", b"FORCE", b"FORCE"]),
                resp(&[b"FAILOVER", b"bogus"]),
            ]
            .concat(),
        ),
        (
            "SHUTDOWN's refusals (none of them stops the server)",
            [
                resp(&[b"SHUTDOWN", b"NOSAVE", b"SAVE"]),
                resp(&[b"SHUTDOWN", b"ABORT", b"NOW"]),
                resp(&[b"SHUTDOWN", b"SAVE", b"ABORT"]),
                resp(&[b"SHUTDOWN", b"soon"]),
                resp(&[b"shutdown", b"abort"]),
                resp(&[b"SHUTDOWN", b"ABORT", b"ABORT"]),
                resp(&[b"MULTI"]),
                resp(&[b"SHUTDOWN", b"NOW"]),
                resp(&[b"EXEC"]),
            ]
            .concat(),
        ),
        (
            "LCS of missing keys, a hash, and its option errors",
            [
                resp(&[b"SET", b"lcs-a", b"ohmytext"]),
                resp(&[b"SET", b"lcs-b", b"mynewtext"]),
                resp(&[b"LCS", b"lcs-a", b"lcs-b"]),
                resp(&[b"LCS", b"lcs-a", b"lcs-b", b"LEN"]),
                resp(&[
                    b"LCS",
                    b"lcs-a",
                    b"lcs-b",
                    b"IDX",
                    b"MINMATCHLEN",
                    b"4",
                    b"WITHMATCHLEN",
                ]),
                resp(&[b"LCS", b"lcs-a", b"lcs-b", b"IDX", b"LEN"]),
                resp(&[b"LCS", b"lcs-a", b"nosuch"]),
                resp(&[b"LCS", b"nosuch", b"nosuch2", b"IDX"]),
                resp(&[b"HSET", b"lcs-h", b"f", b"v"]),
                resp(&[b"LCS", b"lcs-a", b"lcs-h", b"BOGUS"]),
                resp(&[b"LCS", b"lcs-a", b"lcs-b", b"BOGUS"]),
                resp(&[b"LCS", b"lcs-a", b"lcs-b", b"MINMATCHLEN"]),
                resp(&[b"LCS", b"lcs-a", b"lcs-b", b"MINMATCHLEN", b"x"]),
                resp(&[b"LCS", b"lcs-a"]),
            ]
            .concat(),
        ),
        ("OBJECT of values written whole", {
            let mut wide_hash: Vec<Vec<u8>> = vec![b"HSET".to_vec(), b"ob-wide".to_vec()];
            for i in 0..129 {
                wide_hash.push(format!("f{i}").into_bytes());
                wide_hash.push(b"v".to_vec());
            }
            let wide_hash: Vec<&[u8]> = wide_hash.iter().map(Vec::as_slice).collect();
            let x44 = vec![b'x'; 44];
            let x45 = vec![b'x'; 45];
            let long = vec![b'y'; 70_000];
            let v65 = vec![b'v'; 65];
            let mut cases = vec![
                resp(&[b"SET", b"ob-i", b"123"]),
                resp(&[b"SET", b"ob-z", b"0123"]),
                resp(&[b"SET", b"ob-n", b"-5"]),
                resp(&[b"SET", b"ob-big", b"12345678901234567890"]),
                resp(&[b"SET", b"ob-min", b"-9223372036854775808"]),
                resp(&[b"SET", b"ob-e", b"abc"]),
                resp(&[b"SET", b"ob-44", &x44]),
                resp(&[b"SET", b"ob-45", &x45]),
                resp(&[b"SET", b"ob-long", &long]),
                resp(&[b"SET", b"ob-9999", b"9999"]),
                resp(&[b"SET", b"ob-10000", b"10000"]),
                resp(&[b"HSET", b"ob-h", b"f", b"v"]),
                resp(&[b"HSET", b"ob-hv", b"f", &v65]),
                resp(&wide_hash),
            ];
            for key in [
                "ob-i", "ob-z", "ob-n", "ob-big", "ob-min", "ob-e", "ob-44", "ob-45", "ob-long",
                "ob-h", "ob-hv", "ob-wide", "nosuch",
            ] {
                cases.push(resp(&[b"OBJECT", b"ENCODING", key.as_bytes()]));
            }
            for key in [
                "ob-i", "ob-9999", "ob-10000", "ob-n", "ob-e", "ob-h", "nosuch",
            ] {
                cases.push(resp(&[b"OBJECT", b"REFCOUNT", key.as_bytes()]));
            }
            cases.extend([
                resp(&[b"OBJECT", b"FREQ", b"ob-i"]),
                resp(&[b"OBJECT", b"FREQ", b"nosuch"]),
                resp(&[b"OBJECT", b"IDLETIME", b"nosuch"]),
                resp(&[b"OBJECT", b"encoding"]),
                resp(&[b"OBJECT", b"NOSUCH", b"ob-i"]),
                resp(&[b"OBJECT", b"HELP"]),
                resp(&[b"object", b"help", b"x"]),
            ]);
            cases.concat()
        }),
        (
            "CLIENT PAUSE's errors, and a pause of none",
            [
                resp(&[b"CLIENT", b"PAUSE"]),
                resp(&[b"CLIENT", b"PAUSE", b"x"]),
                resp(&[b"CLIENT", b"PAUSE", b"-1"]),
                resp(&[b"CLIENT", b"PAUSE", b"10", b"foo"]),
                resp(&[b"CLIENT", b"PAUSE", b"10", b"WRITE", b"extra"]),
                resp(&[b"CLIENT", b"PAUSE", b"0", b"WRITE"]),
                resp(&[b"CLIENT", b"UNPAUSE", b"x"]),
                resp(&[b"CLIENT", b"UNPAUSE"]),
            ]
            .concat(),
        ),
        (
            "CLIENT KILL's errors and counts",
            [
                resp(&[b"CLIENT", b"KILL", b"127.0.0.1:1"]),
                resp(&[b"CLIENT", b"KILL", b"ID", b"0"]),
                resp(&[b"CLIENT", b"KILL", b"ID", b"x"]),
                resp(&[b"CLIENT", b"KILL", b"ID", b"999999"]),
                resp(&[b"CLIENT", b"KILL", b"ID", b"999999", b"USER", b"default"]),
                resp(&[b"CLIENT", b"KILL", b"TYPE", b"nosuch"]),
                resp(&[b"CLIENT", b"KILL", b"TYPE", b"master"]),
                resp(&[b"CLIENT", b"KILL", b"USER", b"nobody"]),
                resp(&[b"CLIENT", b"KILL", b"SKIPME", b"maybe"]),
                resp(&[b"CLIENT", b"KILL", b"ID", b"1", b"TYPE"]),
                resp(&[b"CLIENT", b"KILL", b"COLOR", b"red"]),
                resp(&[b"CLIENT", b"KILL"]),
                resp(&[b"CLIENT", b"KILL", b"ID", b"0", b"TYPE"]),
                resp(&[b"CLIENT", b"KILL", b"TYPE", b"nosuch", b"ID"]),
                resp(&[b"CLIENT", b"KILL", b"USER", b"nobody", b"x"]),
                resp(&[b"CLIENT", b"KILL", b"SKIPME", b"yes", b"ADDR"]),
                resp(&[
                    b"CLIENT", b"KILL", b"TYPE", b"master", b"TYPE", b"normal", b"ID", b"999999",
                ]),
            ]
            .concat(),
        ),
        (
            "MEMORY's errors, a missing key, PURGE",
            [
                resp(&[b"SET", b"m", b"v"]),
                resp(&[b"MEMORY", b"USAGE", b"nosuch"]),
                resp(&[b"MEMORY", b"USAGE", b"nosuch", b"SAMPLES", b"0"]),
                resp(&[b"MEMORY", b"USAGE", b"m", b"SAMPLES", b"x"]),
                resp(&[b"MEMORY", b"USAGE", b"m", b"SAMPLES", b"-1"]),
                resp(&[b"MEMORY", b"USAGE", b"m", b"SAMPLES"]),
                resp(&[b"MEMORY", b"USAGE", b"m", b"COUNT", b"1"]),
                resp(&[b"MEMORY", b"USAGE"]),
                resp(&[b"MEMORY", b"PURGE", b"now"]),
                resp(&[b"MEMORY", b"PURGE"]),
                resp(&[b"MEMORY", b"NOSUCH"]),
                resp(&[b"MEMORY"]),
            ]
            .concat(),
        ),
        (
            "COMMAND GETKEYS",
            [
                resp(&[b"COMMAND", b"GETKEYS", b"MSET", b"a", b"1", b"b", b"2"]),
                resp(&[b"COMMAND", b"GETKEYS", b"MSET", b"a", b"1", b"b"]),
                resp(&[b"COMMAND", b"GETKEYS", b"MGET", b"a", b"b", b"c"]),
                resp(&[b"COMMAND", b"GETKEYS", b"set", b"k", b"v", b"EX", b"10"]),
                resp(&[b"COMMAND", b"GETKEYS", b"RENAME", b"a", b"b"]),
                resp(&[b"COMMAND", b"GETKEYS", b"HSET", b"h", b"f", b"v"]),
                resp(&[b"COMMAND", b"GETKEYS", b"GET", b"a"]),
                resp(&[b"COMMAND", b"GETKEYS", b"GET", b"a", b"b"]),
                resp(&[b"COMMAND", b"GETKEYS", b"MSET", b"a"]),
                resp(&[b"COMMAND", b"GETKEYS", b"ECHO", b"a"]),
                resp(&[b"COMMAND", b"GETKEYS", b"NOSUCH", b"a"]),
                resp(&[b"COMMAND", b"GETKEYS", b"GET"]),
                resp(&[b"COMMAND", b"GETKEYS", b"client", b"nosuch"]),
                resp(&[b"COMMAND", b"GETKEYS", b"client", b"kill"]),
                resp(&[b"COMMAND", b"LIST", b"FILTERBY", b"ACLCAT", b"@read"]),
                resp(&[b"COMMAND", b"LIST", b"FILTERBY", b"PATTERN", b"client|k*"]),
                resp(&[b"COMMAND", b"LIST", b"FILTERBY", b"MODULE", b"x"]),
                resp(&[b"COMMAND", b"LIST", b"FILTERBY", b"COLOR", b"x"]),
                resp(&[b"COMMAND", b"LIST", b"x"]),
            ]
            .concat(),
        ),
        (
            "EXPIRETIME rounds",
            [
                resp(&[b"SET", b"a", b"1"]),
                resp(&[b"PEXPIREAT", b"a", b"99999999999500"]),
                resp(&[b"EXPIRETIME", b"a"]),
                resp(&[b"PEXPIREAT", b"a", b"99999999999499"]),
                resp(&[b"EXPIRETIME", b"a"]),
            ]
            .concat(),
        ),
        (
            "a refused EXEC discards the transaction",
            [
                resp(&[b"EXEC", b"x"]),
                resp(&[b"MULTI"]),
                resp(&[b"SET", b"k", b"v"]),
                resp(&[b"EXEC", b"x"]),
                resp(&[b"EXEC"]),
                resp(&[b"EXISTS", b"k"]),
            ]
            .concat(),
        ),
        (
            "COMMAND INFO of an unknown command",
            resp(&[b"COMMAND", b"INFO", b"nosuch"]),
        ),
        (
            "strings stop at proto-max-bulk-len",
            [
                resp(&[b"SET", b"s", b"x"]),
                resp(&[b"APPEND", b"s", &big]),
                resp(&[b"APPEND", b"s", &big[1..]]),
                resp(&[b"STRLEN", b"s"]),
                resp(&[b"SETRANGE", b"t", b"1048570", b"abcdefghij"]),
                resp(&[b"SETRANGE", b"t", b"1048566", b"abcdefghij"]),
                resp(&[b"STRLEN", b"t"]),
            ]
            .concat(),
        ),
    ];
    for (what, request) in &cases {
        for addr in [&f, &r] {
            assert_eq!(
                raw_exchange(addr, &resp(&[b"FLUSHALL"])),
                b"+OK\r\n+PONG\r\n"
            );
        }
        let (fb, rb) = (raw_exchange(&f, request), raw_exchange(&r, request));
        let hello_head = |b: &[u8]| -> Vec<u8> {
            // HELLO's map: its first line only.
            let text = String::from_utf8_lossy(b).into_owned();
            match text.find("%7\r\n").or_else(|| text.find("*14\r\n")) {
                Some(at) if what.starts_with("HELLO AUTH") => {
                    let end = at + text[at..].find("\r\n").unwrap() + 2;
                    text.as_bytes()[..end].to_vec()
                }
                _ => b.to_vec(),
            }
        };
        assert_eq!(
            String::from_utf8_lossy(&hello_head(&fb)),
            String::from_utf8_lossy(&hello_head(&rb)),
            "{what}"
        );
    }

    // CLIENT INFO: the fields ferry shows are Redis's, in Redis's order
    // (Redis 7.0 lacks 7.2's lib-name and lib-ver).
    let names = |addr: &str| -> Vec<String> {
        let reply = raw_exchange(addr, &resp(&[b"CLIENT", b"INFO"]));
        let text = String::from_utf8_lossy(&reply).into_owned();
        let line = text
            .lines()
            .nth(1)
            .expect("a bulk string's text")
            .to_owned();
        line.split(' ')
            .filter_map(|field| field.split_once('=').map(|(name, _)| name.to_owned()))
            .filter(|name| !name.starts_with("lib-"))
            .collect()
    };
    let (ferry_names, redis_names) = (names(&f), names(&r));
    let mut at = 0;
    for name in &ferry_names {
        match redis_names[at..].iter().position(|n| n == name) {
            Some(i) => at += i + 1,
            None => panic!("{name} is not where Redis has it: {ferry_names:?} vs {redis_names:?}"),
        }
    }

    // A client yet to authenticate: Redis's tighter limits, then closed.
    drop((ferry, redis));
    let ferry = Server::start(&dir.path().join("auth"), &["--requirepass", "pw"]);
    let redis = Redis::start_with(&["--requirepass", "pw"]);
    let (f, r) = (ferry.resp.to_string(), format!("127.0.0.1:{}", redis.port));
    let args: Vec<&[u8]> = vec![b"x"; 11];
    let auth = resp(&[b"AUTH", b"pw"]);
    let ping = resp(&[b"PING"]);
    for (what, request) in [
        // Refused, and closed: nothing follows them.
        ("too many arguments", resp(&args)),
        ("too long an argument", b"*1\r\n$16385\r\n".to_vec()),
        ("a length no request may have", b"*1\r\n$-5\r\n".to_vec()),
        // Then AUTH, so the connection, still open, answers the PING.
        (
            "within the limits",
            [resp(&[b"GET", &[b'k'; 16384]]), auth.clone(), ping.clone()].concat(),
        ),
    ]
    .into_iter()
    .chain(
        // HELLO's options take effect in order: AUTH as it comes, a name
        // checked as it comes, before NOAUTH.
        [
            &[&b"AUTH"[..], b"default", b"pw", b"SETNAME", b"a b"][..],
            &[b"SETNAME", b"a b", b"AUTH", b"default", b"pw"],
            &[b"AUTH", b"default", b"pw", b"BOGUS"],
            &[b"AUTH", b"default", b"wrong", b"SETNAME", b"a b"],
            &[b"SETNAME", b"a b"],
        ]
        .into_iter()
        .map(|options| {
            let hello = [&[&b"HELLO"[..], b"3"][..], options].concat();
            (
                "HELLO's options in order",
                [
                    resp(&hello),
                    resp(&[b"GET", b"k"]),
                    auth.clone(),
                    ping.clone(),
                ]
                .concat(),
            )
        }),
    ) {
        assert_eq!(
            String::from_utf8_lossy(&raw_replies(&f, &request)),
            String::from_utf8_lossy(&raw_replies(&r, &request)),
            "{what}"
        );
    }
}

/// What a key holds, read the same way from either server: its type, its
/// value (a hash's fields sorted) and whether it has an expiry.
fn held(con: &mut redis::Connection, key: &str) -> (String, Vec<Vec<u8>>, bool) {
    let kind: String = redis::cmd("TYPE").arg(key).query(con).expect("TYPE");
    let value: Vec<Vec<u8>> = match kind.as_str() {
        "string" => vec![redis::cmd("GET").arg(key).query(con).expect("GET")],
        "hash" => {
            let mut pairs: Vec<(Vec<u8>, Vec<u8>)> =
                redis::cmd("HGETALL").arg(key).query(con).expect("HGETALL");
            pairs.sort();
            pairs.into_iter().flat_map(|(f, v)| [f, v]).collect()
        }
        _ => Vec::new(),
    };
    let pttl: i64 = redis::cmd("PTTL").arg(key).query(con).expect("PTTL");
    (kind, value, pttl > 0)
}

/// DUMP's payloads go both ways between ferry and Redis: what Redis dumps
/// (plain, integer and LZF strings; hashes as listpacks and as tables)
/// RESTOREs into ferry, what ferry dumps RESTOREs into Redis, with the
/// same values and expiries; Redis's MIGRATE moves keys into ferry; and
/// RESTORE's errors are Redis's.
#[test]
fn dump_and_restore_carry_values_between_ferry_and_redis() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ferry = Server::start(&dir.path().join("node"), &[]);
    let redis = Redis::start();
    let mut f = connect(&ferry.url(), false).expect("connect to ferry");
    let mut r = Redis::connect(redis.port).expect("connect to redis-server");
    let binary: Vec<u8> = (0..1000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let big_hash: Vec<(String, String)> =
        (0..300).map(|i| (format!("f{i}"), i.to_string())).collect();
    let fill = |con: &mut redis::Connection| {
        let set = |con: &mut redis::Connection, key: &str, value: &[u8]| {
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .query::<()>(con)
                .expect("SET");
        };
        set(con, "plain", b"hello");
        set(con, "int", b"123");
        set(con, "negative", b"-70000");
        set(con, "wide", b"12345678901");
        set(con, "empty", b"");
        set(con, "repeats", &[b'a'; 40]);
        set(con, "binary", &binary);
        set(con, "long", &b"0123456789".repeat(20_000));
        redis::cmd("HSET")
            .arg("small")
            .arg(&[
                "a",
                "1",
                "b",
                "xyz",
                "c",
                "-5",
                "d",
                "100000",
                "e",
                "9999999999",
            ])
            .query::<()>(con)
            .expect("HSET");
        redis::cmd("HSET")
            .arg("big")
            .arg(&big_hash)
            .query::<()>(con)
            .expect("HSET");
        redis::cmd("HSET")
            .arg("wide-values")
            .arg(&["v", &"w".repeat(100)])
            .query::<()>(con)
            .expect("HSET");
        redis::cmd("PEXPIRE")
            .arg("plain")
            .arg(100_000_000)
            .query::<()>(con)
            .expect("PEXPIRE");
        redis::cmd("PEXPIRE")
            .arg("small")
            .arg(100_000_000)
            .query::<()>(con)
            .expect("PEXPIRE");
    };
    fill(&mut r);
    fill(&mut f);
    let keys = [
        "plain",
        "int",
        "negative",
        "wide",
        "empty",
        "repeats",
        "binary",
        "long",
        "small",
        "big",
        "wide-values",
    ];
    for key in keys {
        // Redis -> ferry, and ferry -> Redis, under a new name.
        for redis_to_ferry in [true, false] {
            let (from, to) = if redis_to_ferry {
                (&mut r, &mut f)
            } else {
                (&mut f, &mut r)
            };
            let payload: Vec<u8> = redis::cmd("DUMP").arg(key).query(from).expect("DUMP");
            let pttl: i64 = redis::cmd("PTTL").arg(key).query(from).expect("PTTL");
            let copy = format!("{key}-copy");
            let restored: redis::RedisResult<String> = redis::cmd("RESTORE")
                .arg(&copy)
                .arg(pttl.max(0))
                .arg(&payload)
                .arg("REPLACE")
                .query(to);
            assert_eq!(restored.as_deref(), Ok("OK"), "RESTORE of {key}");
            assert_eq!(held(to, &copy), held(from, key), "{key}");
        }
    }
    // Redis's MIGRATE sends its keys to ferry as RESTOREs.
    let mut migrate = redis::cmd("MIGRATE");
    migrate
        .arg("127.0.0.1")
        .arg(
            ferry
                .url()
                .rsplit(':')
                .next()
                .unwrap()
                .trim_end_matches('/'),
        )
        .arg("")
        .arg(0)
        .arg(5000)
        .arg("REPLACE")
        .arg("KEYS");
    for key in keys {
        migrate.arg(key);
    }
    let migrated: String = migrate.query(&mut r).expect("MIGRATE");
    assert_eq!(migrated, "OK");
    for key in keys {
        let ours = held(&mut f, key);
        let (kind, value, _) = ours;
        assert_eq!(
            redis::cmd("EXISTS").arg(key).query::<i64>(&mut r),
            Ok(0),
            "{key} moved"
        );
        let (want_kind, want_value, _) = held(&mut f, &format!("{key}-copy"));
        assert_eq!((kind, value), (want_kind, want_value), "{key}");
    }
    // A type ferry does not hold (a list): Redis's words for a payload it
    // cannot load.
    redis::cmd("RPUSH")
        .arg("list")
        .arg("x")
        .query::<()>(&mut r)
        .expect("RPUSH");
    let list: Vec<u8> = redis::cmd("DUMP").arg("list").query(&mut r).expect("DUMP");
    let refused = redis::cmd("RESTORE")
        .arg("new")
        .arg(0)
        .arg(&list)
        .query::<Value>(&mut f);
    assert_eq!(
        refused.map_err(error_text),
        Err("ERR Bad data format".into())
    );
    // The errors, to the byte: a key that exists, a bad TTL, a payload cut
    // short or with a flipped bit, options.
    for con in [&mut f, &mut r] {
        redis::cmd("SET")
            .arg("int")
            .arg(123)
            .query::<()>(con)
            .expect("SET");
    }
    let good: Vec<u8> = redis::cmd("DUMP").arg("int").query(&mut f).expect("DUMP");
    let mut flipped = good.clone();
    flipped[1] ^= 4;
    let restore = |key: &str, ttl: &str, payload: &[u8], options: &[&str]| {
        let mut args = vec![
            b"RESTORE".to_vec(),
            key.into(),
            ttl.into(),
            payload.to_vec(),
        ];
        args.extend(options.iter().map(|o| o.as_bytes().to_vec()));
        args
    };
    let cases: Vec<Vec<Vec<u8>>> = vec![
        restore("int", "0", &good, &[]),
        restore("new", "-1", &good, &[]),
        restore("new", "x", &good, &[]),
        restore("new", "0", &good[..5], &[]),
        restore("new", "0", &flipped, &[]),
        restore("new", "0", &good, &["IDLETIME", "-1"]),
        restore("new", "0", &good, &["FREQ", "256"]),
        restore("new", "0", &good, &["FREQ", "1", "IDLETIME", "1"]),
        restore("new", "0", &good, &["NOW"]),
        // Already expired: nothing stored, OK.
        restore("gone", "1", &good, &["ABSTTL"]),
        vec![b"EXISTS".to_vec(), b"gone".to_vec()],
        restore("new", "0", &good, &["IDLETIME", "5"]),
        vec![b"GET".to_vec(), b"new".to_vec()],
        vec![b"DUMP".to_vec(), b"nosuch".to_vec()],
    ];
    for case in cases {
        let mut c = redis::Cmd::new();
        for arg in &case {
            c.arg(arg.as_slice());
        }
        let ours = c.query::<Value>(&mut f).map_err(error_text);
        let theirs = c.query::<Value>(&mut r).map_err(error_text);
        assert_eq!(ours, theirs, "{}", String::from_utf8_lossy(&case.concat()));
    }
}

/// A connection subscribed to every keyspace event and to `sync`, whose
/// messages mark where a batch of commands' events end; or one tracking
/// the keys it reads (CLIENT TRACKING, RESP3), told of their changes.
struct Events {
    stream: std::net::TcpStream,
    got: Vec<u8>,
}

impl Events {
    fn subscribe(addr: &str) -> Events {
        use std::io::Write;
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let request = [
            resp(&[b"PSUBSCRIBE", b"__key*__:*"]),
            resp(&[b"SUBSCRIBE", b"sync"]),
        ]
        .concat();
        stream.write_all(&request).expect("subscribe");
        let mut events = Events {
            stream,
            got: Vec::new(),
        };
        let confirmed = events.read_to(b"$4\r\nsync\r\n:2\r\n");
        assert!(confirmed.starts_with(b"*3\r\n$10\r\npsubscribe"), "{addr}");
        events
    }

    /// A RESP3 connection tracking the keys it reads (default mode), or
    /// with `options` (BCAST and its prefixes).
    fn tracking(addr: &str, options: &[&[u8]]) -> Events {
        use std::io::Write;
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let on = [&[&b"CLIENT"[..], b"TRACKING", b"ON"][..], options].concat();
        let request = [resp(&[b"HELLO", b"3"]), resp(&on)].concat();
        stream.write_all(&request).expect("track");
        let mut tracker = Events {
            stream,
            got: Vec::new(),
        };
        tracker.read_to(b"$7\r\nmodules\r\n*0\r\n+OK\r\n");
        tracker
    }

    /// The invalidations told since the last call (all of them: each is
    /// queued before the reply of the write that caused it, and goes
    /// before the reply to the PING sent after); then `keys` are read
    /// again, to be told of their next change.
    fn invalidations(&mut self, keys: &[String]) -> Vec<u8> {
        use std::io::Write;
        let mut read: Vec<&[u8]> = vec![b"MGET"];
        read.extend(keys.iter().map(|k| k.as_bytes()));
        let read = if keys.is_empty() {
            Vec::new()
        } else {
            resp(&read)
        };
        let request = [resp(&[b"PING"]), read, resp(&[b"ECHO", b"read"])].concat();
        self.stream.write_all(&request).expect("PING");
        let told = self.read_to(b"+PONG\r\n");
        self.read_to(b"$4\r\nread\r\n");
        told
    }

    /// What came before `end` (then taken), read for up to 10 s.
    fn read_to(&mut self, end: &[u8]) -> Vec<u8> {
        use std::io::Read;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(at) = self.got.windows(end.len()).position(|w| w == end) {
                let before = self.got[..at].to_vec();
                self.got.drain(..at + end.len());
                return before;
            }
            assert!(
                Instant::now() < deadline,
                "no {:?}",
                String::from_utf8_lossy(end)
            );
            let mut buf = [0u8; 65536];
            match self.stream.read(&mut buf) {
                Ok(0) => panic!("the subscriber's connection closed"),
                Ok(n) => self.got.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
    }

    /// The events told since the last call: up to the message `n` on
    /// `sync`, published through `con` (after the commands on its server).
    fn until(&mut self, con: &mut redis::Connection, n: u64) -> Vec<u8> {
        let publish = ["PUBLISH".to_string(), "sync".into(), n.to_string()];
        assert_eq!(reply(con, &publish), Ok(Value::Int(1)));
        let marker = format!(
            "*3\r\n$7\r\nmessage\r\n$4\r\nsync\r\n${}\r\n{n}\r\n",
            n.to_string().len()
        );
        self.read_to(marker.as_bytes())
    }
}

/// Replies after a RESP3 HELLO's map (which names the server and its
/// version): what follows `modules` and its empty array.
fn after_hello(replies: &[u8]) -> String {
    let text = String::from_utf8_lossy(replies).into_owned();
    let end = "$7\r\nmodules\r\n*0\r\n";
    match text.find(end) {
        Some(at) => text[at + end.len()..].to_string(),
        None => text,
    }
}

/// Pub/Sub's replies, byte for byte: the confirmations and their counts,
/// RESP2's subscribed mode (what runs there, PING's form), RESP3's pushes
/// (a message published by its own subscriber comes before the reply),
/// PUBSUB's subcommands and errors, RESET; and the messages a subscriber
/// gets from another connection's PUBLISH.
#[test]
fn pubsub_replies_are_the_bytes_redis_gives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ferry = Server::start(&dir.path().join("node"), &[]);
    let redis = Redis::start();
    let (f, r) = (ferry.resp.to_string(), format!("127.0.0.1:{}", redis.port));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "RESP2's subscribed mode",
            [
                resp(&[b"SUBSCRIBE", b"a"]),
                resp(&[b"PSUBSCRIBE", b"h*"]),
                resp(&[b"SUBSCRIBE", b"a"]),
                resp(&[b"PING"]),
                resp(&[b"ping", b"x"]),
                resp(&[b"GET", b"k"]),
                resp(&[b"CLIENT", b"LIST"]),
                resp(&[b"PUBSUB", b"NUMSUB", b"a"]),
                resp(&[b"SSUBSCRIBE", b"s1", b"s2"]),
                resp(&[b"SUNSUBSCRIBE", b"s1", b"s2"]),
                resp(&[b"UNSUBSCRIBE", b"a"]),
                resp(&[b"PUNSUBSCRIBE", b"h*"]),
                resp(&[b"UNSUBSCRIBE"]),
                resp(&[b"PUNSUBSCRIBE"]),
                resp(&[b"SUNSUBSCRIBE"]),
                resp(&[b"GET", b"k"]),
            ]
            .concat(),
        ),
        (
            "PUBSUB and the errors",
            [
                resp(&[b"SUBSCRIBE"]),
                resp(&[b"PSUBSCRIBE"]),
                resp(&[b"PUBLISH", b"a"]),
                resp(&[b"SPUBLISH", b"a", b"b", b"c"]),
                resp(&[b"PUBSUB"]),
                resp(&[b"PUBSUB", b"FOO"]),
                resp(&[b"PUBSUB", b"CHANNELS", b"a", b"b"]),
                resp(&[b"PUBSUB", b"NUMPAT", b"x"]),
                resp(&[b"PUBSUB", b"HELP"]),
                resp(&[b"PUBSUB", b"NUMSUB"]),
                resp(&[b"PUBSUB", b"NUMPAT"]),
                resp(&[b"PUBSUB", b"CHANNELS"]),
                resp(&[b"PUBSUB", b"SHARDCHANNELS", b"*"]),
                resp(&[b"PUBSUB", b"SHARDNUMSUB", b"x"]),
                resp(&[b"UNSUBSCRIBE", b"x", b"y"]),
                resp(&[b"PUNSUBSCRIBE"]),
                resp(&[b"PUBLISH", b"nobody", b"m"]),
                resp(&[b"MULTI"]),
                resp(&[b"PUBLISH", b"nobody", b"m"]),
                resp(&[b"EXEC"]),
            ]
            .concat(),
        ),
        (
            "RESET ends the subscriptions",
            [
                resp(&[b"SUBSCRIBE", b"a"]),
                resp(&[b"PSUBSCRIBE", b"a*"]),
                resp(&[b"RESET"]),
                resp(&[b"GET", b"k"]),
                resp(&[b"PUBSUB", b"NUMSUB", b"a"]),
                resp(&[b"PUBSUB", b"NUMPAT"]),
                resp(&[b"PUBLISH", b"a", b"m"]),
            ]
            .concat(),
        ),
        (
            "RESP3's pushes",
            [
                resp(&[b"HELLO", b"3"]),
                resp(&[b"SUBSCRIBE", b"c"]),
                resp(&[b"PSUBSCRIBE", b"c*"]),
                resp(&[b"SSUBSCRIBE", b"c"]),
                resp(&[b"PING"]),
                resp(&[b"GET", b"k"]),
                resp(&[b"PUBLISH", b"c", b"own"]),
                resp(&[b"PUBSUB", b"CHANNELS"]),
                resp(&[b"PUBSUB", b"SHARDCHANNELS"]),
                resp(&[b"UNSUBSCRIBE", b"other"]),
                resp(&[b"RESET"]),
                resp(&[b"PUBLISH", b"c", b"gone"]),
            ]
            .concat(),
        ),
        (
            "a writer's own keyspace events, before or after its replies as Redis tells them",
            requests(&[
                "HELLO 3",
                "CONFIG SET notify-keyspace-events KEA",
                "PSUBSCRIBE __keyevent*",
                "SET a 1",
                "GETSET a 2",
                "GETDEL a",
                "SET b 1 GET",
                "SET b 2 GET EX 100",
                "GETEX b EX 100",
                "GETEX b PERSIST",
                "INCR c",
                "INCRBYFLOAT c 1.5",
                "DEL c",
                "HSET h f v",
                "HMSET h g v",
                "HSETNX h k v",
                "HINCRBY h n 1",
                "HINCRBYFLOAT h m 1.5",
                "HDEL h f",
                "APPEND d x",
                "EXPIRE d 100",
                "PEXPIRE d 100000",
                "EXPIREAT d 4000000000",
                "PEXPIREAT d 4000000000000",
                "PERSIST d",
                "SETEX e 100 v",
                "MSET g 1 i 2",
                "SETBIT l 1 1",
                "BITFIELD l INCRBY u8 8 3",
                "RENAME g g2",
                "HDEL h g k n m",
            ]),
        ),
        (
            "new for a key BITFIELD creates, and no setbit for writes not done",
            requests(&[
                "HELLO 3",
                "CONFIG SET notify-keyspace-events KEA$n",
                "PSUBSCRIBE __key*__:*",
                // Every write refused: the key is made, and only `new` told.
                "BITFIELD bf OVERFLOW FAIL SET u8 8 999",
                "BITFIELD bf OVERFLOW FAIL SET u8 0 999",
                // Its value as it was: no change, nothing told.
                "BITFIELD bf SET u8 0 0",
                "BITFIELD bf SET u8 0 7",
                "GET bf",
            ]),
        ),
        (
            "keymiss for the reads that find no key",
            [
                resp(&[b"HELLO", b"3"]),
                resp(&[b"CONFIG", b"SET", b"notify-keyspace-events", b"KEm"]),
                resp(&[b"PSUBSCRIBE", b"__key*__:*"]),
                resp(&[b"SET", b"here", b"v"]),
                resp(&[b"HSET", b"h", b"f", b"v"]),
                resp(&[b"GET", b"a"]),
                resp(&[b"GET", b"here"]),
                // (Not MGET: Redis pushes its keymiss inside its array.)
                resp(&[b"EXISTS", b"d", b"here"]),
                resp(&[b"TTL", b"e"]),
                resp(&[b"TYPE", b"f"]),
                resp(&[b"STRLEN", b"g"]),
                resp(&[b"HGET", b"h", b"x"]),
                resp(&[b"HGET", b"i", b"x"]),
                resp(&[b"HLEN", b"j"]),
                resp(&[b"GETRANGE", b"k", b"0", b"1"]),
                resp(&[b"GETDEL", b"l"]),
                resp(&[b"GETSET", b"m", b"v"]),
                resp(&[b"DEL", b"here", b"h", b"m"]),
                resp(&[b"CONFIG", b"SET", b"notify-keyspace-events", b""]),
                resp(&[b"PUNSUBSCRIBE"]),
            ]
            .concat(),
        ),
        (
            "RESP3's shard messages, and a pipeline's messages each before its PUBLISH's reply",
            [
                resp(&[b"HELLO", b"3"]),
                resp(&[b"SSUBSCRIBE", b"c"]),
                resp(&[b"SUBSCRIBE", b"c"]),
                resp(&[b"PSUBSCRIBE", b"*"]),
                resp(&[b"SPUBLISH", b"c", b"sharded"]),
                resp(&[b"PUBLISH", b"c", b"one"]),
                resp(&[b"SET", b"k", b"v"]),
                resp(&[b"PUBLISH", b"c", b"two"]),
                resp(&[b"GET", b"k"]),
                resp(&[b"SUNSUBSCRIBE"]),
                resp(&[b"UNSUBSCRIBE"]),
                resp(&[b"PUNSUBSCRIBE"]),
            ]
            .concat(),
        ),
    ];
    for (what, request) in &cases {
        let (fb, rb) = (raw_exchange(&f, request), raw_exchange(&r, request));
        assert_eq!(after_hello(&fb), after_hello(&rb), "{what}");
    }
    // Another connection's message, between the confirmations and the
    // unsubscriptions.
    for addr in [&f, &r] {
        let mut sub = std::net::TcpStream::connect(addr).expect("connect");
        sub.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        let read_to = |sub: &mut std::net::TcpStream, got: &mut Vec<u8>, end: &[u8]| {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while !got.ends_with(end) {
                match sub.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        };
        use std::io::Write;
        sub.write_all(&[resp(&[b"SUBSCRIBE", b"a"]), resp(&[b"PSUBSCRIBE", b"a*"])].concat())
            .unwrap();
        read_to(&mut sub, &mut got, b"$2\r\na*\r\n:2\r\n");
        let published = raw_exchange(addr, &resp(&[b"PUBLISH", b"a", b"hello"]));
        assert_eq!(published, b":2\r\n+PONG\r\n", "{addr}");
        sub.write_all(
            &[
                resp(&[b"UNSUBSCRIBE", b"a"]),
                resp(&[b"PUNSUBSCRIBE", b"a*"]),
                resp(&[b"PING"]),
            ]
            .concat(),
        )
        .unwrap();
        read_to(&mut sub, &mut got, b"+PONG\r\n");
        assert_eq!(
            String::from_utf8_lossy(&got),
            "*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n\
             *3\r\n$10\r\npsubscribe\r\n$2\r\na*\r\n:2\r\n\
             *3\r\n$7\r\nmessage\r\n$1\r\na\r\n$5\r\nhello\r\n\
             *4\r\n$8\r\npmessage\r\n$2\r\na*\r\n$1\r\na\r\n$5\r\nhello\r\n\
             *3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:1\r\n\
             *3\r\n$12\r\npunsubscribe\r\n$2\r\na*\r\n:0\r\n+PONG\r\n",
            "{addr}"
        );
    }
}
