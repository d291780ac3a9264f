//! The commands ferry answers, with Redis's replies and errors.
//!
//! Three kinds: reads answer from the engine's applied state; writes run in
//! the write pipeline (reading the latest state, pushing effects); connection
//! commands act on the connection or the server.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use ferry_engine::{Entry, PausePurpose, Reader, Value, View, string_bytes};
use ferry_proto::v1::{self as pb, mutation::Op};

use crate::dump::Dumped;
use crate::glob;
use crate::long_double;
use crate::node::{Node, now_ms};
use crate::resp::{Reply, parse_i64};

pub type Args = [Bytes];
type EResult<T> = ferry_engine::Result<T>;

/// A command that writes: it reads and pushes effects through the view.
pub type WriteHandler = fn(&mut View<'_>, &Args) -> EResult<Reply>;

/// How a command is carried out.
#[derive(Clone, Copy)]
pub enum Handler {
    /// Reads through a [`Reader`]: the applied state, or a transaction's
    /// view of the write path.
    Read(fn(&Node, &dyn Reader, &Args) -> Reply),
    Write(WriteHandler),
    Conn(fn(&Node, &mut Conn, &Args) -> Reply),
    /// REPLICAOF and SLAVEOF: changes the node's role (see [`replicaof`]).
    ReplicaOf,
    /// WAIT numreplicas timeout, WAITAOF numlocal numreplicas timeout:
    /// waits for replicas (and the local log) to flush this connection's
    /// writes.
    Wait,
    /// MULTI, EXEC, DISCARD, WATCH and UNWATCH (see `server::transaction`).
    Transaction,
    /// SAVE: waits for the WAL's sync and the engine's flush
    /// ([`Node::save`]).
    Save,
    /// SHUTDOWN: stops the node, after its replicas caught up
    /// ([`Node::shutdown_by_command`]).
    Shutdown,
    /// FAILOVER: a switchover in the background
    /// ([`Node::failover_command`]).
    Failover,
    /// PUBLISH and SPUBLISH: on a primary a WAL record ([`publish`]),
    /// delivered once applied; on a replica, to its own subscribers now.
    Publish,
}

/// What FAILOVER was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailoverArgs {
    Abort,
    Start {
        /// TO host port.
        to: Option<(String, i64)>,
        /// TIMEOUT ms.
        timeout: Option<std::time::Duration>,
        force: bool,
    },
}

/// FAILOVER's arguments, refused as Redis 7.0 refuses them (each option
/// once; ABORT alone).
pub fn failover_args(args: &Args) -> Result<FailoverArgs, Reply> {
    if args.len() == 2 && eq(&args[1], "abort") {
        return Ok(FailoverArgs::Abort);
    }
    let (mut to, mut timeout, mut force) = (None, None, false);
    let mut i = 1;
    while i < args.len() {
        let left = args.len() - i - 1;
        if eq(&args[i], "timeout") && left >= 1 && timeout.is_none() {
            let ms = int_arg(&args[i + 1])?;
            if ms <= 0 {
                return Err(Reply::err("FAILOVER timeout must be greater than 0"));
            }
            timeout = Some(std::time::Duration::from_millis(ms as u64));
            i += 2;
        } else if eq(&args[i], "to") && left >= 2 && to.is_none() {
            let port = int_arg(&args[i + 2])?;
            to = Some((String::from_utf8_lossy(&args[i + 1]).into_owned(), port));
            i += 3;
        } else if eq(&args[i], "force") && !force {
            force = true;
            i += 1;
        } else {
            return Err(syntax_error());
        }
    }
    Ok(FailoverArgs::Start { to, timeout, force })
}

/// What SHUTDOWN was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownArgs {
    /// SHUTDOWN ABORT: cancel a shutdown waiting for its replicas.
    Abort,
    Stop {
        /// SAVE (`Some(true)`) flushes the engine too; NOSAVE
        /// (`Some(false)`) and neither only sync the WAL.
        save: Option<bool>,
        /// NOW: no wait for lagging replicas.
        now: bool,
        /// FORCE: stop even if the save fails.
        force: bool,
    },
}

/// SHUTDOWN's arguments, refused as Redis 7.0 refuses them.
pub fn shutdown_args(args: &Args) -> Result<ShutdownArgs, Reply> {
    let (mut save, mut nosave, mut now, mut force, mut abort) = (false, false, false, false, false);
    for arg in &args[1..] {
        let flag = match () {
            () if eq(arg, "nosave") => &mut nosave,
            () if eq(arg, "save") => &mut save,
            () if eq(arg, "now") => &mut now,
            () if eq(arg, "force") => &mut force,
            () if eq(arg, "abort") => &mut abort,
            () => return Err(syntax_error()),
        };
        *flag = true;
    }
    if (abort && (save || nosave || now || force)) || (save && nosave) {
        return Err(syntax_error());
    }
    if abort {
        return Ok(ShutdownArgs::Abort);
    }
    let save = (save || nosave).then_some(save);
    Ok(ShutdownArgs::Stop { save, now, force })
}

/// A command's entry in the table: arity as Redis counts it (negative: at
/// least), flags and key positions for `COMMAND`.
pub struct Spec {
    pub name: &'static str,
    pub arity: i64,
    pub flags: &'static [&'static str],
    pub first_key: i64,
    pub last_key: i64,
    pub step: i64,
    pub handler: Handler,
}

/// A connection's state, as commands see it.
#[derive(Debug)]
pub struct Conn {
    pub id: u64,
    pub resp3: bool,
    pub name: Option<Bytes>,
    /// The client library's name and version (CLIENT SETINFO).
    pub lib_name: Option<Bytes>,
    pub lib_ver: Option<Bytes>,
    pub authenticated: bool,
    /// Its commands run inside EXEC now.
    pub in_exec: bool,
    pub quit: bool,
    /// CLIENT REPLY OFF: no replies until CLIENT REPLY ON.
    pub reply_off: bool,
    /// CLIENT REPLY SKIP: the next command's reply is dropped...
    pub skip_next: bool,
    /// ... and this command's (the one running now).
    pub skip_this: bool,
    /// The LSN of this connection's last write, for WAIT.
    pub last_write_lsn: u64,
    /// The transaction being queued, after MULTI.
    pub multi: Option<Multi>,
    /// The keys WATCHed for the next EXEC.
    pub watch: ferry_engine::Watch,
    /// What CLIENT LIST shows of it, and CLIENT KILL's mark.
    pub activity: std::sync::Arc<crate::node::Activity>,
    /// After MONITOR: the lines of the commands run, until RESET.
    pub monitor: Option<crate::node::Monitor>,
    /// After CLIENT TRACKING ON, until OFF or RESET.
    pub tracking: Option<crate::tracking::ClientTracking>,
    /// Its invalidations and those of clients redirecting to it, for a
    /// RESP3 connection to push ([`crate::tracking::Tracking::connect`]).
    pub pushes: tokio::sync::mpsc::Receiver<crate::tracking::Push>,
    /// Its Pub/Sub messages, from its first subscription on.
    pub pubsub: Option<crate::pubsub::Inbox>,
    /// Since when (seconds since the epoch; 0: not) what waits to be
    /// written to it has been over its `client-output-buffer-limit` soft
    /// limit.
    pub over_soft_since: std::sync::atomic::AtomicU64,
}

/// A transaction being queued (MULTI ... EXEC).
#[derive(Default)]
pub struct Multi {
    /// The commands queued, each with its place in INFO commandstats.
    pub commands: Vec<(&'static Spec, Vec<Bytes>, Option<usize>)>,
    /// A command was refused while queueing: EXEC discards the transaction.
    pub refused: bool,
    /// The queued commands' arguments, in bytes.
    pub bytes: u64,
}

impl std::fmt::Debug for Multi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Multi")
            .field("commands", &self.commands.len())
            .field("refused", &self.refused)
            .finish()
    }
}

const W: &[&str] = &["write"];
const WD: &[&str] = &["write", "denyoom"];
const WDF: &[&str] = &["write", "denyoom", "fast"];
const WF: &[&str] = &["write", "fast"];
const R: &[&str] = &["readonly", "fast"];
const RS: &[&str] = &["readonly"];
const C: &[&str] = &["fast"];
/// MULTI, DISCARD, WATCH and UNWATCH, as Redis flags them.
const TX: &[&str] = &["noscript", "loading", "stale", "fast", "allow_busy"];
/// The (un)subscribe commands, as Redis flags them.
const SUB: &[&str] = &["pubsub", "noscript", "loading", "stale"];
/// PUBLISH and SPUBLISH, as Redis flags them.
const PUB: &[&str] = &["pubsub", "loading", "stale", "fast"];

macro_rules! spec {
    ($name:literal, $arity:expr, $flags:expr, $fk:expr, $lk:expr, $st:expr, $h:expr) => {
        Spec {
            name: $name,
            arity: $arity,
            flags: $flags,
            first_key: $fk,
            last_key: $lk,
            step: $st,
            handler: $h,
        }
    };
}

/// Every command, sorted by name.
pub static COMMANDS: &[Spec] = &[
    spec!("acl", -2, &[], 0, 0, 0, Handler::Conn(acl)),
    spec!("append", 3, WDF, 1, 1, 1, Handler::Write(append)),
    spec!("asking", 1, &["fast"], 0, 0, 0, Handler::Conn(cluster)),
    spec!(
        "auth",
        -2,
        &[
            "noscript",
            "loading",
            "stale",
            "fast",
            "no_auth",
            "allow_busy"
        ],
        0,
        0,
        0,
        Handler::Conn(auth)
    ),
    spec!(
        "bgsave",
        -1,
        &["admin", "noscript", "no_async_loading"],
        0,
        0,
        0,
        Handler::Conn(bgsave)
    ),
    spec!("bitcount", -2, RS, 1, 1, 1, Handler::Read(bitcount)),
    spec!("bitfield", -2, WD, 1, 1, 1, Handler::Write(bitfield)),
    spec!("bitfield_ro", -2, R, 1, 1, 1, Handler::Read(bitfield_ro)),
    spec!("bitop", -4, WD, 2, -1, 1, Handler::Write(bitop)),
    spec!("bitpos", -3, RS, 1, 1, 1, Handler::Read(bitpos)),
    spec!("client", -2, &[], 0, 0, 0, Handler::Conn(client)),
    spec!("cluster", -2, &[], 0, 0, 0, Handler::Conn(cluster)),
    spec!(
        "command",
        -1,
        &["loading", "stale"],
        0,
        0,
        0,
        Handler::Conn(command)
    ),
    spec!("config", -2, &[], 0, 0, 0, Handler::Conn(config)),
    spec!("copy", -3, WD, 1, 2, 1, Handler::Write(copy)),
    spec!("dbsize", 1, R, 0, 0, 0, Handler::Read(dbsize)),
    spec!(
        "debug",
        -2,
        &["admin", "noscript", "loading", "stale"],
        0,
        0,
        0,
        Handler::Read(debug)
    ),
    spec!("decr", 2, WDF, 1, 1, 1, Handler::Write(decr)),
    spec!("decrby", 3, WDF, 1, 1, 1, Handler::Write(decrby)),
    spec!("del", -2, W, 1, -1, 1, Handler::Write(del)),
    spec!("discard", 1, TX, 0, 0, 0, Handler::Transaction),
    spec!("dump", 2, RS, 1, 1, 1, Handler::Read(dump)),
    spec!(
        "echo",
        2,
        &["loading", "stale", "fast"],
        0,
        0,
        0,
        Handler::Conn(echo)
    ),
    spec!(
        "exec",
        1,
        &["noscript", "loading", "stale", "skip_slowlog"],
        0,
        0,
        0,
        Handler::Transaction
    ),
    spec!("exists", -2, R, 1, -1, 1, Handler::Read(exists)),
    spec!("expire", -3, WF, 1, 1, 1, Handler::Write(expire)),
    spec!("expireat", -3, WF, 1, 1, 1, Handler::Write(expireat)),
    spec!("expiretime", 2, R, 1, 1, 1, Handler::Read(expiretime)),
    spec!(
        "failover",
        -1,
        &["admin", "noscript", "stale"],
        0,
        0,
        0,
        Handler::Failover
    ),
    spec!("flushall", -1, W, 0, 0, 0, Handler::Write(flushall)),
    spec!("flushdb", -1, W, 0, 0, 0, Handler::Write(flushall)),
    spec!("get", 2, R, 1, 1, 1, Handler::Read(get)),
    spec!("getbit", 3, R, 1, 1, 1, Handler::Read(getbit)),
    spec!("getdel", 2, WF, 1, 1, 1, Handler::Write(getdel)),
    spec!("getex", -2, WF, 1, 1, 1, Handler::Write(getex)),
    spec!("getrange", 4, RS, 1, 1, 1, Handler::Read(getrange)),
    spec!("getset", 3, WDF, 1, 1, 1, Handler::Write(getset)),
    spec!("hdel", -3, WF, 1, 1, 1, Handler::Write(hdel)),
    spec!(
        "hello",
        -1,
        &[
            "noscript",
            "loading",
            "stale",
            "fast",
            "no_auth",
            "allow_busy"
        ],
        0,
        0,
        0,
        Handler::Conn(hello)
    ),
    spec!("hexists", 3, R, 1, 1, 1, Handler::Read(hexists)),
    spec!("hget", 3, R, 1, 1, 1, Handler::Read(hget)),
    spec!("hgetall", 2, RS, 1, 1, 1, Handler::Read(hgetall)),
    spec!("hincrby", 4, WDF, 1, 1, 1, Handler::Write(hincrby)),
    spec!(
        "hincrbyfloat",
        4,
        WDF,
        1,
        1,
        1,
        Handler::Write(hincrbyfloat)
    ),
    spec!("hkeys", 2, RS, 1, 1, 1, Handler::Read(hkeys)),
    spec!("hlen", 2, R, 1, 1, 1, Handler::Read(hlen)),
    spec!("hmget", -3, R, 1, 1, 1, Handler::Read(hmget)),
    spec!("hmset", -4, WDF, 1, 1, 1, Handler::Write(hmset)),
    spec!("hrandfield", -2, RS, 1, 1, 1, Handler::Read(hrandfield)),
    spec!("hscan", -3, RS, 1, 1, 1, Handler::Read(hscan)),
    spec!("hset", -4, WDF, 1, 1, 1, Handler::Write(hset)),
    spec!("hsetnx", 4, WDF, 1, 1, 1, Handler::Write(hsetnx)),
    spec!("hstrlen", 3, R, 1, 1, 1, Handler::Read(hstrlen)),
    spec!("hvals", 2, RS, 1, 1, 1, Handler::Read(hvals)),
    spec!("incr", 2, WDF, 1, 1, 1, Handler::Write(incr)),
    spec!("incrby", 3, WDF, 1, 1, 1, Handler::Write(incrby)),
    spec!("incrbyfloat", 3, WDF, 1, 1, 1, Handler::Write(incrbyfloat)),
    spec!(
        "info",
        -1,
        &["loading", "stale"],
        0,
        0,
        0,
        Handler::Conn(crate::info::info)
    ),
    spec!("keys", 2, &["readonly"], 0, 0, 0, Handler::Read(keys)),
    spec!(
        "lastsave",
        1,
        &["loading", "stale", "fast"],
        0,
        0,
        0,
        Handler::Conn(lastsave)
    ),
    spec!("latency", -2, &[], 0, 0, 0, Handler::Conn(latency)),
    spec!("lcs", -3, RS, 1, 2, 1, Handler::Read(lcs)),
    spec!("memory", -2, &[], 0, 0, 0, Handler::Read(memory)),
    spec!("mget", -2, R, 1, -1, 1, Handler::Read(mget)),
    spec!(
        "monitor",
        1,
        &["admin", "noscript", "loading", "stale"],
        0,
        0,
        0,
        Handler::Conn(monitor)
    ),
    spec!("mset", -3, WD, 1, -1, 2, Handler::Write(mset)),
    spec!("msetnx", -3, WD, 1, -1, 2, Handler::Write(msetnx)),
    spec!("multi", 1, TX, 0, 0, 0, Handler::Transaction),
    spec!("object", -2, &[], 0, 0, 0, Handler::Read(object)),
    spec!("persist", 2, WF, 1, 1, 1, Handler::Write(persist)),
    spec!("pexpire", -3, WF, 1, 1, 1, Handler::Write(pexpire)),
    spec!("pexpireat", -3, WF, 1, 1, 1, Handler::Write(pexpireat)),
    spec!("pexpiretime", 2, R, 1, 1, 1, Handler::Read(pexpiretime)),
    spec!("ping", -1, C, 0, 0, 0, Handler::Conn(ping)),
    spec!("psetex", 4, WD, 1, 1, 1, Handler::Write(psetex)),
    spec!("psubscribe", -2, SUB, 0, 0, 0, Handler::Conn(subscribe)),
    spec!("pttl", 2, R, 1, 1, 1, Handler::Read(pttl)),
    spec!("publish", 3, PUB, 0, 0, 0, Handler::Publish),
    spec!("pubsub", -2, &[], 0, 0, 0, Handler::Conn(pubsub)),
    spec!("punsubscribe", -1, SUB, 0, 0, 0, Handler::Conn(unsubscribe)),
    spec!(
        "quit",
        -1,
        &[
            "noscript",
            "loading",
            "stale",
            "fast",
            "no_auth",
            "allow_busy"
        ],
        0,
        0,
        0,
        Handler::Conn(quit)
    ),
    spec!("randomkey", 1, RS, 0, 0, 0, Handler::Read(randomkey)),
    spec!(
        "readonly",
        1,
        &["loading", "stale", "fast"],
        0,
        0,
        0,
        Handler::Conn(cluster)
    ),
    spec!(
        "readwrite",
        1,
        &["loading", "stale", "fast"],
        0,
        0,
        0,
        Handler::Conn(cluster)
    ),
    spec!("rename", 3, W, 1, 2, 1, Handler::Write(rename)),
    spec!("renamenx", 3, WF, 1, 2, 1, Handler::Write(renamenx)),
    spec!(
        "replicaof",
        3,
        &["admin", "noscript", "stale", "no_async_loading"],
        0,
        0,
        0,
        Handler::ReplicaOf
    ),
    spec!(
        "reset",
        1,
        &[
            "noscript",
            "loading",
            "stale",
            "fast",
            "no_auth",
            "allow_busy"
        ],
        0,
        0,
        0,
        Handler::Conn(reset)
    ),
    spec!("restore", -4, WD, 1, 1, 1, Handler::Write(restore)),
    spec!(
        "role",
        1,
        &["noscript", "loading", "stale", "fast"],
        0,
        0,
        0,
        Handler::Read(role)
    ),
    spec!(
        "save",
        1,
        &["admin", "noscript", "no_async_loading", "no_multi"],
        0,
        0,
        0,
        Handler::Save
    ),
    spec!("scan", -2, RS, 0, 0, 0, Handler::Read(scan)),
    spec!(
        "select",
        2,
        &["loading", "stale", "fast"],
        0,
        0,
        0,
        Handler::Conn(select)
    ),
    spec!("set", -3, WD, 1, 1, 1, Handler::Write(set)),
    spec!("setbit", 4, WD, 1, 1, 1, Handler::Write(setbit)),
    spec!("setex", 4, WD, 1, 1, 1, Handler::Write(setex)),
    spec!("setnx", 3, WDF, 1, 1, 1, Handler::Write(setnx)),
    spec!("setrange", 4, WD, 1, 1, 1, Handler::Write(setrange)),
    spec!(
        "shutdown",
        -1,
        &[
            "admin",
            "noscript",
            "loading",
            "stale",
            "no_multi",
            "allow_busy"
        ],
        0,
        0,
        0,
        Handler::Shutdown
    ),
    spec!(
        "slaveof",
        3,
        &["admin", "noscript", "stale", "no_async_loading"],
        0,
        0,
        0,
        Handler::ReplicaOf
    ),
    spec!("slowlog", -2, &[], 0, 0, 0, Handler::Conn(slowlog)),
    spec!("spublish", 3, PUB, 1, 1, 1, Handler::Publish),
    spec!("ssubscribe", -2, SUB, 1, -1, 1, Handler::Conn(subscribe)),
    spec!("strlen", 2, R, 1, 1, 1, Handler::Read(strlen)),
    spec!("subscribe", -2, SUB, 0, 0, 0, Handler::Conn(subscribe)),
    spec!("substr", 4, RS, 1, 1, 1, Handler::Read(getrange)),
    spec!(
        "sunsubscribe",
        -1,
        SUB,
        1,
        -1,
        1,
        Handler::Conn(unsubscribe)
    ),
    spec!(
        "time",
        1,
        &["loading", "stale", "fast"],
        0,
        0,
        0,
        Handler::Conn(time)
    ),
    spec!("touch", -2, R, 1, -1, 1, Handler::Read(exists)),
    spec!("ttl", 2, R, 1, 1, 1, Handler::Read(ttl)),
    spec!("type", 2, R, 1, 1, 1, Handler::Read(type_)),
    spec!("unlink", -2, WF, 1, -1, 1, Handler::Write(del)),
    spec!("unsubscribe", -1, SUB, 0, 0, 0, Handler::Conn(unsubscribe)),
    spec!("unwatch", 1, TX, 0, 0, 0, Handler::Transaction),
    spec!("wait", 3, &["noscript"], 0, 0, 0, Handler::Wait),
    spec!("waitaof", 4, &["noscript"], 0, 0, 0, Handler::Wait),
    spec!("watch", -2, TX, 1, -1, 1, Handler::Transaction),
];

/// A container's subcommands, each with its arity.
type Subcommands = &'static [(&'static str, i64)];

/// The subcommands of the container commands (CLIENT, COMMAND, CONFIG,
/// LATENCY, MEMORY, OBJECT, SLOWLOG), as Redis 7 names them in its errors and in
/// INFO commandstats (`client|setname`), with their arity as Redis counts
/// it (the container's name included; negative: at least).
pub const SUBCOMMANDS: &[(&str, Subcommands)] = &[
    (
        "acl",
        &[
            ("cat", -2),
            ("deluser", -3),
            ("dryrun", -4),
            ("genpass", -2),
            ("getuser", 3),
            ("help", 2),
            ("list", 2),
            ("load", 2),
            ("log", -2),
            ("save", 2),
            ("setuser", -3),
            ("users", 2),
            ("whoami", 2),
        ],
    ),
    (
        "client",
        &[
            ("caching", 3),
            ("getname", 2),
            ("getredir", 2),
            ("help", 2),
            ("id", 2),
            ("info", 2),
            ("kill", -3),
            ("list", -2),
            ("no-evict", 3),
            ("pause", -3),
            ("reply", 3),
            ("setinfo", 4),
            ("setname", 3),
            ("tracking", -3),
            ("trackinginfo", 2),
            ("unpause", 2),
        ],
    ),
    (
        "cluster",
        &[
            ("addslots", -3),
            ("addslotsrange", -4),
            ("bumpepoch", 2),
            ("count-failure-reports", 3),
            ("countkeysinslot", 3),
            ("delslots", -3),
            ("delslotsrange", -4),
            ("failover", -2),
            ("flushslots", 2),
            ("forget", 3),
            ("getkeysinslot", 4),
            ("help", 2),
            ("info", 2),
            ("keyslot", 3),
            ("links", 2),
            ("meet", -4),
            ("myid", 2),
            ("nodes", 2),
            ("replicas", 3),
            ("replicate", 3),
            ("reset", -2),
            ("saveconfig", 2),
            ("set-config-epoch", 3),
            ("setslot", -4),
            ("shards", 2),
            ("slaves", 3),
            ("slots", 2),
        ],
    ),
    (
        "command",
        &[
            ("count", 2),
            ("docs", -2),
            ("getkeys", -4),
            ("help", 2),
            ("info", -2),
            ("list", -2),
        ],
    ),
    (
        "config",
        &[
            ("get", -3),
            ("help", 2),
            ("resetstat", 2),
            ("rewrite", 2),
            ("set", -4),
        ],
    ),
    (
        "latency",
        &[
            ("doctor", 2),
            ("graph", 3),
            ("help", 2),
            ("histogram", -2),
            ("history", 3),
            ("latest", 2),
            ("reset", -2),
        ],
    ),
    (
        "memory",
        &[
            ("help", 2),
            ("malloc-stats", 2),
            ("purge", 2),
            ("usage", -3),
        ],
    ),
    (
        "object",
        &[
            ("encoding", 3),
            ("freq", 3),
            ("help", 2),
            ("idletime", 3),
            ("refcount", 3),
        ],
    ),
    (
        "pubsub",
        &[
            ("channels", -2),
            ("help", 2),
            ("numpat", 2),
            ("numsub", -2),
            ("shardchannels", -2),
            ("shardnumsub", -2),
        ],
    ),
    (
        "slowlog",
        &[("get", -2), ("help", 2), ("len", 2), ("reset", 2)],
    ),
];

/// Each command's and subcommand's ACL categories, as Redis 7.0 gives
/// them (COMMAND INFO, COMMAND LIST FILTERBY ACLCAT), sorted by name.
pub const ACL_CATEGORIES: &[(&str, &[&str])] = &[
    ("acl", &["slow"]),
    ("acl|cat", &["slow"]),
    ("acl|deluser", &["admin", "slow", "dangerous"]),
    ("acl|dryrun", &["admin", "slow", "dangerous"]),
    ("acl|genpass", &["slow"]),
    ("acl|getuser", &["admin", "slow", "dangerous"]),
    ("acl|help", &["slow"]),
    ("acl|list", &["admin", "slow", "dangerous"]),
    ("acl|load", &["admin", "slow", "dangerous"]),
    ("acl|log", &["admin", "slow", "dangerous"]),
    ("acl|save", &["admin", "slow", "dangerous"]),
    ("acl|setuser", &["admin", "slow", "dangerous"]),
    ("acl|users", &["admin", "slow", "dangerous"]),
    ("acl|whoami", &["slow"]),
    ("append", &["write", "string", "fast"]),
    ("asking", &["fast", "connection"]),
    ("auth", &["fast", "connection"]),
    ("bgsave", &["admin", "slow", "dangerous"]),
    ("bitcount", &["read", "bitmap", "slow"]),
    ("bitfield", &["write", "bitmap", "slow"]),
    ("bitfield_ro", &["read", "bitmap", "fast"]),
    ("bitop", &["write", "bitmap", "slow"]),
    ("bitpos", &["read", "bitmap", "slow"]),
    ("client", &["slow"]),
    ("client|caching", &["slow", "connection"]),
    ("client|getname", &["slow", "connection"]),
    ("client|getredir", &["slow", "connection"]),
    ("client|help", &["slow", "connection"]),
    ("client|id", &["slow", "connection"]),
    ("client|info", &["slow", "connection"]),
    ("client|kill", &["admin", "slow", "dangerous", "connection"]),
    ("client|list", &["admin", "slow", "dangerous", "connection"]),
    (
        "client|no-evict",
        &["admin", "slow", "dangerous", "connection"],
    ),
    (
        "client|pause",
        &["admin", "slow", "dangerous", "connection"],
    ),
    ("client|reply", &["slow", "connection"]),
    ("client|setinfo", &["slow", "connection"]),
    ("client|setname", &["slow", "connection"]),
    ("client|tracking", &["slow", "connection"]),
    ("client|trackinginfo", &["slow", "connection"]),
    (
        "client|unpause",
        &["admin", "slow", "dangerous", "connection"],
    ),
    ("cluster", &["slow"]),
    ("cluster|addslots", &["admin", "slow", "dangerous"]),
    ("cluster|addslotsrange", &["admin", "slow", "dangerous"]),
    ("cluster|bumpepoch", &["admin", "slow", "dangerous"]),
    (
        "cluster|count-failure-reports",
        &["admin", "slow", "dangerous"],
    ),
    ("cluster|countkeysinslot", &["slow"]),
    ("cluster|delslots", &["admin", "slow", "dangerous"]),
    ("cluster|delslotsrange", &["admin", "slow", "dangerous"]),
    ("cluster|failover", &["admin", "slow", "dangerous"]),
    ("cluster|flushslots", &["admin", "slow", "dangerous"]),
    ("cluster|forget", &["admin", "slow", "dangerous"]),
    ("cluster|getkeysinslot", &["slow"]),
    ("cluster|help", &["slow"]),
    ("cluster|info", &["slow"]),
    ("cluster|keyslot", &["slow"]),
    ("cluster|links", &["slow"]),
    ("cluster|meet", &["admin", "slow", "dangerous"]),
    ("cluster|myid", &["slow"]),
    ("cluster|nodes", &["slow"]),
    ("cluster|replicas", &["admin", "slow", "dangerous"]),
    ("cluster|replicate", &["admin", "slow", "dangerous"]),
    ("cluster|reset", &["admin", "slow", "dangerous"]),
    ("cluster|saveconfig", &["admin", "slow", "dangerous"]),
    ("cluster|set-config-epoch", &["admin", "slow", "dangerous"]),
    ("cluster|setslot", &["admin", "slow", "dangerous"]),
    ("cluster|shards", &["slow"]),
    ("cluster|slaves", &["admin", "slow", "dangerous"]),
    ("cluster|slots", &["slow"]),
    ("command", &["slow", "connection"]),
    ("command|count", &["slow", "connection"]),
    ("command|docs", &["slow", "connection"]),
    ("command|getkeys", &["slow", "connection"]),
    ("command|help", &["slow", "connection"]),
    ("command|info", &["slow", "connection"]),
    ("command|list", &["slow", "connection"]),
    ("config", &["slow"]),
    ("config|get", &["admin", "slow", "dangerous"]),
    ("config|help", &["slow"]),
    ("config|resetstat", &["admin", "slow", "dangerous"]),
    ("config|rewrite", &["admin", "slow", "dangerous"]),
    ("config|set", &["admin", "slow", "dangerous"]),
    ("copy", &["keyspace", "write", "slow"]),
    ("dbsize", &["keyspace", "read", "fast"]),
    ("debug", &["admin", "slow", "dangerous"]),
    ("decr", &["write", "string", "fast"]),
    ("decrby", &["write", "string", "fast"]),
    ("del", &["keyspace", "write", "slow"]),
    ("discard", &["fast", "transaction"]),
    ("dump", &["keyspace", "read", "slow"]),
    ("echo", &["fast", "connection"]),
    ("exec", &["slow", "transaction"]),
    ("exists", &["keyspace", "read", "fast"]),
    ("expire", &["keyspace", "write", "fast"]),
    ("expireat", &["keyspace", "write", "fast"]),
    ("expiretime", &["keyspace", "read", "fast"]),
    ("failover", &["admin", "slow", "dangerous"]),
    ("flushall", &["keyspace", "write", "slow", "dangerous"]),
    ("flushdb", &["keyspace", "write", "slow", "dangerous"]),
    ("get", &["read", "string", "fast"]),
    ("getbit", &["read", "bitmap", "fast"]),
    ("getdel", &["write", "string", "fast"]),
    ("getex", &["write", "string", "fast"]),
    ("getrange", &["read", "string", "slow"]),
    ("getset", &["write", "string", "fast"]),
    ("hdel", &["write", "hash", "fast"]),
    ("hello", &["fast", "connection"]),
    ("hexists", &["read", "hash", "fast"]),
    ("hget", &["read", "hash", "fast"]),
    ("hgetall", &["read", "hash", "slow"]),
    ("hincrby", &["write", "hash", "fast"]),
    ("hincrbyfloat", &["write", "hash", "fast"]),
    ("hkeys", &["read", "hash", "slow"]),
    ("hlen", &["read", "hash", "fast"]),
    ("hmget", &["read", "hash", "fast"]),
    ("hmset", &["write", "hash", "fast"]),
    ("hrandfield", &["read", "hash", "slow"]),
    ("hscan", &["read", "hash", "slow"]),
    ("hset", &["write", "hash", "fast"]),
    ("hsetnx", &["write", "hash", "fast"]),
    ("hstrlen", &["read", "hash", "fast"]),
    ("hvals", &["read", "hash", "slow"]),
    ("incr", &["write", "string", "fast"]),
    ("incrby", &["write", "string", "fast"]),
    ("incrbyfloat", &["write", "string", "fast"]),
    ("info", &["slow", "dangerous"]),
    ("keys", &["keyspace", "read", "slow", "dangerous"]),
    ("lastsave", &["admin", "fast", "dangerous"]),
    ("latency", &["slow"]),
    ("latency|doctor", &["admin", "slow", "dangerous"]),
    ("latency|graph", &["admin", "slow", "dangerous"]),
    ("latency|help", &["slow"]),
    ("latency|histogram", &["admin", "slow", "dangerous"]),
    ("latency|history", &["admin", "slow", "dangerous"]),
    ("latency|latest", &["admin", "slow", "dangerous"]),
    ("latency|reset", &["admin", "slow", "dangerous"]),
    ("lcs", &["read", "string", "slow"]),
    ("memory", &["slow"]),
    ("memory|help", &["slow"]),
    ("memory|malloc-stats", &["slow"]),
    ("memory|purge", &["slow"]),
    ("memory|usage", &["read", "slow"]),
    ("mget", &["read", "string", "fast"]),
    ("monitor", &["admin", "slow", "dangerous"]),
    ("mset", &["write", "string", "slow"]),
    ("msetnx", &["write", "string", "slow"]),
    ("multi", &["fast", "transaction"]),
    ("object", &["slow"]),
    ("object|encoding", &["keyspace", "read", "slow"]),
    ("object|freq", &["keyspace", "read", "slow"]),
    ("object|help", &["keyspace", "slow"]),
    ("object|idletime", &["keyspace", "read", "slow"]),
    ("object|refcount", &["keyspace", "read", "slow"]),
    ("persist", &["keyspace", "write", "fast"]),
    ("pexpire", &["keyspace", "write", "fast"]),
    ("pexpireat", &["keyspace", "write", "fast"]),
    ("pexpiretime", &["keyspace", "read", "fast"]),
    ("ping", &["fast", "connection"]),
    ("psetex", &["write", "string", "slow"]),
    ("psubscribe", &["pubsub", "slow"]),
    ("pttl", &["keyspace", "read", "fast"]),
    ("publish", &["pubsub", "fast"]),
    ("pubsub", &["slow"]),
    ("pubsub|channels", &["pubsub", "slow"]),
    ("pubsub|help", &["slow"]),
    ("pubsub|numpat", &["pubsub", "slow"]),
    ("pubsub|numsub", &["pubsub", "slow"]),
    ("pubsub|shardchannels", &["pubsub", "slow"]),
    ("pubsub|shardnumsub", &["pubsub", "slow"]),
    ("punsubscribe", &["pubsub", "slow"]),
    ("quit", &["fast", "connection"]),
    ("randomkey", &["keyspace", "read", "slow"]),
    ("readonly", &["fast", "connection"]),
    ("readwrite", &["fast", "connection"]),
    ("rename", &["keyspace", "write", "slow"]),
    ("renamenx", &["keyspace", "write", "fast"]),
    ("replicaof", &["admin", "slow", "dangerous"]),
    ("reset", &["fast", "connection"]),
    ("restore", &["keyspace", "write", "slow", "dangerous"]),
    ("role", &["admin", "fast", "dangerous"]),
    ("save", &["admin", "slow", "dangerous"]),
    ("scan", &["keyspace", "read", "slow"]),
    ("select", &["fast", "connection"]),
    ("set", &["write", "string", "slow"]),
    ("setbit", &["write", "bitmap", "slow"]),
    ("setex", &["write", "string", "slow"]),
    ("setnx", &["write", "string", "fast"]),
    ("setrange", &["write", "string", "slow"]),
    ("shutdown", &["admin", "slow", "dangerous"]),
    ("slaveof", &["admin", "slow", "dangerous"]),
    ("slowlog", &["slow"]),
    ("slowlog|get", &["admin", "slow", "dangerous"]),
    ("slowlog|help", &["slow"]),
    ("slowlog|len", &["admin", "slow", "dangerous"]),
    ("slowlog|reset", &["admin", "slow", "dangerous"]),
    ("spublish", &["pubsub", "fast"]),
    ("ssubscribe", &["pubsub", "slow"]),
    ("strlen", &["read", "string", "fast"]),
    ("subscribe", &["pubsub", "slow"]),
    ("substr", &["read", "string", "slow"]),
    ("sunsubscribe", &["pubsub", "slow"]),
    ("time", &["fast"]),
    ("touch", &["keyspace", "read", "fast"]),
    ("ttl", &["keyspace", "read", "fast"]),
    ("type", &["keyspace", "read", "fast"]),
    ("unlink", &["keyspace", "write", "fast"]),
    ("unsubscribe", &["pubsub", "slow"]),
    ("unwatch", &["fast", "transaction"]),
    ("wait", &["slow", "connection"]),
    ("waitaof", &["slow", "connection"]),
    ("watch", &["fast", "transaction"]),
];

fn subcommands_of(name: &str) -> Option<Subcommands> {
    SUBCOMMANDS
        .iter()
        .find(|(container, _)| *container == name)
        .map(|(_, subs)| *subs)
}

/// The names INFO commandstats counts under: every command, then right
/// after a container each of its subcommands (`client|setname`).
pub fn stat_names() -> &'static [String] {
    &stat_table().names
}

struct StatTable {
    names: Vec<String>,
    /// By the command's place in [`COMMANDS`]: where its own name is, and
    /// its subcommands if it is a container.
    at: Vec<(usize, Option<Subcommands>)>,
}

fn stat_table() -> &'static StatTable {
    static TABLE: OnceLock<StatTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut names = Vec::new();
        let mut at = Vec::with_capacity(COMMANDS.len());
        for spec in COMMANDS {
            let subs = subcommands_of(spec.name);
            at.push((names.len(), subs));
            names.push(spec.name.to_string());
            for (sub, _) in subs.unwrap_or_default() {
                names.push(format!("{}|{sub}", spec.name));
            }
        }
        StatTable { names, at }
    })
}

/// Where in [`stat_names`] a request for `spec` counts: a container's known
/// subcommand has its own place, an unknown one none (as in Redis, where
/// only the error counts).
pub fn stat_slot(spec: &'static Spec, args: &Args) -> Option<usize> {
    match (table_entry(spec), args.get(1)) {
        ((own, Some(subs)), Some(sub)) => subs
            .iter()
            .position(|(s, _)| s.as_bytes().eq_ignore_ascii_case(sub))
            .map(|i| own + 1 + i),
        ((own, _), _) => Some(own),
    }
}

/// The command's name as Redis's errors give it: a container's known
/// subcommand after a bar (`client|list`).
pub fn full_name(spec: &'static Spec, args: &Args) -> String {
    stat_slot(spec, args)
        .and_then(|i| stat_names().get(i))
        .cloned()
        .unwrap_or_else(|| spec.name.to_string())
}

/// Where `spec`'s name is in [`stat_names`], and its subcommands if it is
/// a container: found by its place in [`COMMANDS`], with no search (every
/// request asks).
fn table_entry(spec: &'static Spec) -> (usize, Option<Subcommands>) {
    let index =
        (spec as *const Spec as usize - COMMANDS.as_ptr() as usize) / std::mem::size_of::<Spec>();
    debug_assert!(std::ptr::eq(&COMMANDS[index], spec), "a spec of the table");
    stat_table().at[index]
}

/// Whether `spec` is a container command (see [`SUBCOMMANDS`]).
pub fn is_container(spec: &'static Spec) -> bool {
    table_entry(spec).1.is_some()
}

/// A container's subcommand checked before it runs, as Redis checks it
/// (a command queued in MULTI is checked, not run): unknown, or known with
/// the wrong number of arguments, it is refused with the error its
/// container would give.
pub fn check_subcommand(spec: &'static Spec, args: &Args) -> Result<(), Reply> {
    let (Some(subs), Some(sub)) = (table_entry(spec).1, args.get(1)) else {
        return Ok(());
    };
    let argc = args.len() as i64;
    match subs
        .iter()
        .find(|(s, _)| s.as_bytes().eq_ignore_ascii_case(sub))
    {
        Some((_, arity)) if (*arity > 0 && argc != *arity) || argc < -*arity => {
            Err(subcommand_error(spec.name, sub))
        }
        Some(_) => Ok(()),
        None => Err(subcommand_error(spec.name, sub)),
    }
}

/// Whether `reply` from a container command is Redis's refusal of a known
/// subcommand's arguments, which Redis counts as rejected, not failed.
pub fn is_subcommand_arity_error(reply: &Reply) -> bool {
    matches!(reply, Reply::Error(e) if e.starts_with("ERR wrong number of arguments for '"))
}

/// No command name is longer: a longer name is unknown at once.
const COMMAND_NAME_BYTES_MAX: usize = 32;

/// The table entry of a command name, in any case.
pub fn lookup(name: &[u8]) -> Option<&'static Spec> {
    type ByName = HashMap<&'static [u8], &'static Spec, foldhash::fast::RandomState>;
    static BY_NAME: OnceLock<ByName> = OnceLock::new();
    if name.len() > COMMAND_NAME_BYTES_MAX {
        return None;
    }
    // Lowered on the stack: no allocation per request.
    let mut lowered = [0u8; COMMAND_NAME_BYTES_MAX];
    let lowered = &mut lowered[..name.len()];
    lowered.copy_from_slice(name);
    lowered.make_ascii_lowercase();
    BY_NAME
        .get_or_init(|| COMMANDS.iter().map(|s| (s.name.as_bytes(), s)).collect())
        .get(&*lowered)
        .copied()
}

/// Redis's reply to a command it does not know, built as Redis builds it:
/// the name up to 128 bytes, then quoted arguments while the list is under
/// 128 bytes (each cut to what is left), every text cut at a NUL byte (C's
/// `%s`), and line breaks turned into spaces.
pub fn unknown_command(args: &Args) -> Reply {
    const SHOWN_BYTES_MAX: usize = 128;
    let c_text = |b: &[u8], max: usize| -> Vec<u8> {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len()).min(max);
        b[..end].to_vec()
    };
    let mut listed: Vec<u8> = Vec::new();
    for arg in &args[1..] {
        if listed.len() >= SHOWN_BYTES_MAX {
            break;
        }
        listed.push(b'\'');
        listed.extend(c_text(arg, SHOWN_BYTES_MAX - (listed.len() - 1)));
        listed.extend(b"' ");
    }
    let mut text = b"unknown command '".to_vec();
    text.extend(c_text(&args[0], SHOWN_BYTES_MAX));
    text.extend(b"', with args beginning with: ");
    text.extend(listed);
    for c in &mut text {
        if *c == b'\r' || *c == b'\n' {
            *c = b' ';
        }
    }
    Reply::err(String::from_utf8_lossy(&text))
}

pub fn wrong_arity(name: &str) -> Reply {
    Reply::err(format!("wrong number of arguments for '{name}' command"))
}

fn syntax_error() -> Reply {
    Reply::err("syntax error")
}

fn not_integer() -> Reply {
    Reply::err("value is not an integer or out of range")
}

pub fn eq(a: &[u8], b: &str) -> bool {
    a.eq_ignore_ascii_case(b.as_bytes())
}

fn int_arg(b: &[u8]) -> Result<i64, Reply> {
    parse_i64(b).ok_or_else(not_integer)
}

/// Unwraps a parsed argument or returns its error reply.
macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(reply) => return Ok(reply),
        }
    };
}

/// The same for read handlers, which return a plain [`Reply`].
macro_rules! tri_read {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(reply) => return reply,
        }
    };
}

fn engine_error(err: ferry_engine::EngineError) -> Reply {
    tracing::error!(error = %err, "engine read failed");
    Reply::err(format!("storage error: {err}"))
}

/// A live entry, read for the client: counted as a keyspace hit or miss.
fn read_entry(node: &Node, r: &dyn Reader, key: &[u8]) -> Result<Option<Entry>, Reply> {
    let entry = r.live(key, now_ms()).map_err(engine_error)?;
    count_lookup(node, key, &entry);
    Ok(entry)
}

/// Runs `read` against one state of `r` ([`Reader::stable`]): reads of
/// several keys, or of a hash's entry and its fields, that no write falls
/// between. Counting is left to the caller (`read` may run more than once).
fn stable<T>(
    r: &dyn Reader,
    mut read: impl FnMut(&dyn Reader) -> ferry_engine::Result<T>,
) -> Result<T, Reply> {
    let mut out = None;
    r.stable(&mut |r| {
        out = Some(read(r)?);
        Ok(())
    })
    .map_err(engine_error)?;
    Ok(out.expect("read at least once"))
}

/// Counts a read of one key for the client as a keyspace hit or miss (a
/// miss tells `keymiss` if keyspace notifications ask for it).
fn count_lookup(node: &Node, key: &[u8], entry: &Option<Entry>) {
    let found = u64::from(entry.is_some());
    node.stats.lookups(found, 1 - found);
    if found == 0 && node.notify.wants_keymiss() {
        node.notify.keymiss(key, &node.pubsub);
    }
}

/// The field count of a hash's entry, 0 if missing.
fn hash_len(entry: &Option<Entry>) -> Result<u64, Reply> {
    match entry {
        None => Ok(0),
        Some(Entry {
            value: Value::Hash { len },
            ..
        }) => Ok(*len),
        Some(_) => Err(Reply::wrong_type()),
    }
}

/// A hash's entry and what `then` reads of its fields (if it is a hash),
/// in one state; counted as one lookup.
fn read_hash_with<T: Default>(
    node: &Node,
    r: &dyn Reader,
    key: &[u8],
    mut then: impl FnMut(&dyn Reader) -> ferry_engine::Result<T>,
) -> Result<(u64, T), Reply> {
    let now = now_ms();
    let (entry, fields) = stable(r, |r| {
        let entry = r.live(key, now)?;
        let fields = match &entry {
            Some(Entry {
                value: Value::Hash { .. },
                ..
            }) => then(r)?,
            _ => T::default(),
        };
        Ok((entry, fields))
    })?;
    count_lookup(node, key, &entry);
    Ok((hash_len(&entry)?, fields))
}

/// The live string at `key` (`None`: missing): its length, and its bytes
/// in the range `range` gives for that length, read in one state; counted
/// as one lookup.
fn read_string(
    node: &Node,
    r: &dyn Reader,
    key: &[u8],
    range: impl Fn(u64) -> std::ops::Range<u64>,
) -> Result<Option<(u64, Bytes)>, Reply> {
    let now = now_ms();
    let read = |r: &dyn Reader| {
        let entry = r.live(key, now)?;
        let bytes = match &entry {
            Some(e) => string_bytes(r, key, e, range(e.string_len()))?,
            None => Bytes::new(),
        };
        Ok((entry, bytes))
    };
    // A long string's entry and chunks are read in one state; any other
    // entry holds all there is to read.
    let (entry, bytes) = match r.live(key, now).map_err(engine_error)? {
        Some(Entry {
            value: Value::LongString { .. },
            ..
        }) => stable(r, read)?,
        Some(e) => {
            let bytes = string_bytes(r, key, &e, range(e.string_len())).map_err(engine_error)?;
            (Some(e), bytes)
        }
        None => (None, Bytes::new()),
    };
    count_lookup(node, key, &entry);
    match entry {
        None => Ok(None),
        Some(Entry {
            value: Value::Hash { .. },
            ..
        }) => Err(Reply::wrong_type()),
        Some(e) => Ok(Some((e.string_len(), bytes))),
    }
}

/// The field count of a live hash, 0 if missing.
fn read_hash(node: &Node, r: &dyn Reader, key: &[u8]) -> Result<u64, Reply> {
    hash_len(&read_entry(node, r, key)?)
}

fn view_string(view: &View<'_>, key: &[u8]) -> EResult<Result<Option<(Bytes, u64)>, Reply>> {
    string_of(view, key, view.get(key)?)
}

/// The length of the string at `key`, WRONGTYPE for a hash.
fn view_string_len(view: &View<'_>, key: &[u8]) -> EResult<Result<Option<u64>, Reply>> {
    Ok(match view.get(key)? {
        Some(Entry {
            value: Value::Hash { .. },
            ..
        }) => Err(Reply::wrong_type()),
        entry => Ok(entry.map(|e| e.string_len())),
    })
}

/// The string and expiry of `entry`, the entry of `key` in `r` (a long
/// string's bytes read from there); WRONGTYPE for a hash.
fn string_of(
    r: &dyn Reader,
    key: &[u8],
    entry: Option<Entry>,
) -> EResult<Result<Option<(Bytes, u64)>, Reply>> {
    Ok(match entry {
        None => Ok(None),
        Some(Entry {
            value: Value::Hash { .. },
            ..
        }) => Err(Reply::wrong_type()),
        Some(e) => Ok(Some((
            string_bytes(r, key, &e, 0..e.string_len())?,
            e.expire_at_ms,
        ))),
    })
}

/// The hash at `key`: `Ok(None)` if missing, its expiry otherwise.
fn view_hash(view: &View<'_>, key: &[u8]) -> EResult<Result<Option<u64>, Reply>> {
    Ok(match view.get(key)? {
        None => Ok(None),
        Some(Entry {
            value: Value::Hash { .. },
            expire_at_ms,
        }) => Ok(Some(expire_at_ms)),
        Some(_) => Err(Reply::wrong_type()),
    })
}

fn set_string(view: &mut View<'_>, key: &Bytes, value: Bytes, expire_at_ms: u64) -> EResult<()> {
    view.push(Op::SetString(pb::SetString {
        key: key.clone(),
        value,
        expire_at_ms,
    }))
}

fn delete(view: &mut View<'_>, key: &Bytes) -> EResult<()> {
    view.push(Op::Delete(pb::Delete { key: key.clone() }))
}

/// A key that exists but has logically expired is deleted first, as Redis
/// does when a write touches it, so the deletion reaches the WAL.
fn reap_expired(view: &mut View<'_>, key: &Bytes) -> EResult<()> {
    if view
        .entry(key)?
        .is_some_and(|e| e.is_expired(view.now_ms()))
    {
        delete(view, key)?;
    }
    Ok(())
}

// ---------------------------------------------------------------- strings

fn get(node: &Node, r: &dyn Reader, args: &Args) -> Reply {
    Reply::opt_bulk(tri_read!(read_string(node, r, &args[1], |len| 0..len)).map(|(_, s)| s))
}

/// The live entries of `keys`, in one state, counted as lookups.
fn read_entries(node: &Node, r: &dyn Reader, keys: &Args) -> Result<Vec<Option<Entry>>, Reply> {
    let now = now_ms();
    let entries = stable(r, |r| keys.iter().map(|key| r.live(key, now)).collect())?;
    for (key, entry) in keys.iter().zip(&entries) {
        count_lookup(node, key, entry);
    }
    Ok(entries)
}

fn mget(node: &Node, r: &dyn Reader, args: &Args) -> Reply {
    let now = now_ms();
    let read = tri_read!(stable(r, |r| {
        args[1..]
            .iter()
            .map(|key| {
                let entry = r.live(key, now)?;
                let string = match &entry {
                    Some(e) if !matches!(e.value, Value::Hash { .. }) => {
                        Some(string_bytes(r, key, e, 0..e.string_len())?)
                    }
                    _ => None,
                };
                Ok((entry, string))
            })
            .collect::<ferry_engine::Result<Vec<_>>>()
    }));
    Reply::Array(
        read.into_iter()
            .zip(&args[1..])
            .map(|((entry, string), key)| {
                // A hash reads as missing, and counts as found.
                count_lookup(node, key, &entry);
                Reply::opt_bulk(string)
            })
            .collect(),
    )
}

fn strlen(node: &Node, r: &dyn Reader, args: &Args) -> Reply {
    Reply::Int(tri_read!(read_string(node, r, &args[1], |_| 0..0)).map_or(0, |(len, _)| len as i64))
}

fn getrange(node: &Node, r: &dyn Reader, args: &Args) -> Reply {
    let (start, end) = match (parse_i64(&args[2]), parse_i64(&args[3])) {
        (Some(s), Some(e)) => (s, e),
        _ => return not_integer(),
    };
    // Redis's indexes, from the end when negative, inclusive; nothing when
    // they cross.
    let range = |len: u64| {
        if start < 0 && end < 0 && start > end {
            return 0..0;
        }
        let len = len as i64;
        let norm = |i: i64| if i < 0 { (len + i).max(0) } else { i };
        let (from, to) = (norm(start), norm(end).min(len - 1));
        if len == 0 || from > to || from >= len {
            return 0..0;
        }
        from as u64..to as u64 + 1
    };
    let s = tri_read!(read_string(node, r, &args[1], range)).map_or(Bytes::new(), |(_, s)| s);
    Reply::Bulk(s)
}

/// The most memory LCS's table may take (4 bytes for each pair of
/// positions of the two strings, plus one row and column): past it, LCS
/// refuses with the error Redis gives when it cannot allocate the table.
pub const LCS_TABLE_BYTES_MAX: u64 = 512 << 20;

/// LCS: the longest common subsequence of two strings, as Redis 7.0 finds
/// it (the same one of several of equal length, the same ranges).
fn lcs(node: &Node, r: &dyn Reader, args: &Args) -> Reply {
    let now = now_ms();
    let (a, b) = (&args[1], &args[2]);
    let is_string = |e: &Option<Entry>| {
        matches!(
            e,
            Some(Entry {
                value: Value::String(_) | Value::LongString { .. },
                ..
            })
        )
    };
    // A string's length, 0 for anything else.
    let len_of = |e: &Option<Entry>| {
        e.as_ref()
            .filter(|_| is_string(e))
            .map_or(0, |e| e.string_len())
    };
    // Both strings in one state; not read if their table would be past
    // the limit (`None`).
    let read = |r: &dyn Reader| {
        let entries = (r.live(a, now)?, r.live(b, now)?);
        let cells = (len_of(&entries.0) + 1).saturating_mul(len_of(&entries.1) + 1);
        if cells.saturating_mul(4) > LCS_TABLE_BYTES_MAX {
            return Ok((entries, None));
        }
        let bytes = |key: &[u8], entry: &Option<Entry>| match entry {
            Some(e) if is_string(entry) => string_bytes(r, key, e, 0..e.string_len()),
            _ => Ok(Bytes::new()),
        };
        let values = (bytes(a, &entries.0)?, bytes(b, &entries.1)?);
        Ok((entries, Some(values)))
    };
    let ((entry_a, entry_b), values) = tri_read!(stable(r, read));
    count_lookup(node, a, &entry_a);
    count_lookup(node, b, &entry_b);
    let is_hash = |e: &Option<Entry>| e.is_some() && !is_string(e);
    if is_hash(&entry_a) || is_hash(&entry_b) {
        return Reply::err("The specified keys must contain string values");
    }
    let (mut idx, mut len, mut with_match_len, mut min_match_len) = (false, false, false, 0u64);
    let mut i = 3;
    while i < args.len() {
        let opt = &args[i];
        if eq(opt, "idx") {
            idx = true;
        } else if eq(opt, "len") {
            len = true;
        } else if eq(opt, "withmatchlen") {
            with_match_len = true;
        } else if eq(opt, "minmatchlen") && i + 1 < args.len() {
            min_match_len = tri_read!(int_arg(&args[i + 1])).max(0) as u64;
            i += 1;
        } else {
            return syntax_error();
        }
        i += 1;
    }
    if idx && len {
        return Reply::err("If you want both the length and indexes, please just use IDX.");
    }
    let out_of_memory =
        || Reply::err("Insufficient memory, failed allocating transient memory for LCS");
    let Some((a, b)) = values else {
        return out_of_memory();
    };
    let (rows, cols) = (a.len() + 1, b.len() + 1);
    let mut table: Vec<u32> = Vec::new();
    if table.try_reserve_exact(rows * cols).is_err() {
        return out_of_memory();
    }
    // table[i * cols + j]: the LCS's length of a[..i] and b[..j].
    table.resize(cols, 0);
    for i in 1..rows {
        table.push(0);
        for j in 1..cols {
            let cell = if a[i - 1] == b[j - 1] {
                table[(i - 1) * cols + j - 1] + 1
            } else {
                table[(i - 1) * cols + j].max(table[i * cols + j - 1])
            };
            table.push(cell);
        }
    }
    let at = |i: usize, j: usize| table[i * cols + j];
    let total = at(a.len(), b.len());
    if len {
        return Reply::Int(i64::from(total));
    }
    // Back from the ends: each match taken, ranges of matches contiguous
    // in both strings given from the last to the first.
    let mut common = vec![0u8; total as usize];
    let mut left = total as usize;
    let mut matches = Vec::new();
    // The range being grown: (start in a, end in a, start in b, end in b).
    let mut range: Option<(usize, usize, usize, usize)> = None;
    let (mut i, mut j) = (a.len(), b.len());
    while i > 0 && j > 0 {
        let mut emit = false;
        if a[i - 1] == b[j - 1] {
            left -= 1;
            common[left] = a[i - 1];
            range = match range {
                None => Some((i - 1, i - 1, j - 1, j - 1)),
                // Always contiguous: a match steps back in both.
                Some((sa, ea, sb, eb)) => Some((sa - 1, ea, sb - 1, eb)),
            };
            if range.is_some_and(|(sa, _, sb, _)| sa == 0 || sb == 0) {
                emit = true;
            }
            i -= 1;
            j -= 1;
        } else {
            if at(i - 1, j) > at(i, j - 1) {
                i -= 1;
            } else {
                j -= 1;
            }
            emit = range.is_some();
        }
        if emit && let Some((sa, ea, sb, eb)) = range.take() {
            let match_len = (ea - sa + 1) as u64;
            if match_len >= min_match_len {
                let mut item = vec![
                    Reply::Array(vec![Reply::Int(sa as i64), Reply::Int(ea as i64)]),
                    Reply::Array(vec![Reply::Int(sb as i64), Reply::Int(eb as i64)]),
                ];
                if with_match_len {
                    item.push(Reply::Int(match_len as i64));
                }
                matches.push(Reply::Array(item));
            }
        }
    }
    if idx {
        return Reply::Map(vec![
            (
                Reply::Bulk(Bytes::from_static(b"matches")),
                Reply::Array(matches),
            ),
            (
                Reply::Bulk(Bytes::from_static(b"len")),
                Reply::Int(i64::from(total)),
            ),
        ]);
    }
    Reply::Bulk(Bytes::from(common))
}

/// Expiry options of SET and GETEX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// Leave as it is (KEEPTTL, or GETEX without options).
    Keep,
    /// Remove (SET without options, GETEX PERSIST).
    Clear,
    At(u64),
}

/// Parses `EX s | PX ms | EXAT s | PXAT ms` at `args[i]`; the absolute
/// time in ms, or the error for `command`.
fn expiry_option(args: &Args, i: usize, now: u64, command: &str) -> Result<Option<u64>, Reply> {
    let opt = &args[i];
    let unit_ms: i64 = if eq(opt, "ex") || eq(opt, "exat") {
        1000
    } else {
        1
    };
    let absolute = eq(opt, "exat") || eq(opt, "pxat");
    if !(eq(opt, "ex") || eq(opt, "px") || absolute) {
        return Ok(None);
    }
    let value = args.get(i + 1).ok_or_else(syntax_error)?;
    let n = int_arg(value)?;
    let invalid = || Reply::err(format!("invalid expire time in '{command}' command"));
    if n <= 0 {
        return Err(invalid());
    }
    let ms = n.checked_mul(unit_ms).ok_or_else(invalid)?;
    let at = if absolute {
        Some(ms)
    } else {
        ms.checked_add(now as i64)
    };
    at.map(|at| Some(at as u64)).ok_or_else(invalid)
}

/// The options of SET (`NX XX GET KEEPTTL` and an expiry) or of GETEX
/// (`PERSIST` or an expiry), from `args[from..]`.
#[derive(Debug, Clone, Copy)]
struct WriteOptions {
    nx: bool,
    xx: bool,
    get: bool,
    expiry: Expiry,
    /// Where an expiry option is whose value [`WriteOptions::resolve`] has
    /// yet to read (Redis checks every option's syntax first, and reads
    /// the value at a point of its own in each command).
    expiry_at: Option<usize>,
}

impl WriteOptions {
    /// Reads the expiry option's value, if there is one.
    fn resolve(mut self, args: &Args, now: u64, command: &str) -> Result<WriteOptions, Reply> {
        if let Some(i) = self.expiry_at.take() {
            let at = expiry_option(args, i, now, command)?.ok_or_else(syntax_error)?;
            self.expiry = Expiry::At(at);
        }
        Ok(self)
    }
}

fn write_options(args: &Args, from: usize, command: &str) -> Result<WriteOptions, Reply> {
    let is_set = command == "set";
    let unset = if is_set { Expiry::Clear } else { Expiry::Keep };
    let mut o = WriteOptions {
        nx: false,
        xx: false,
        get: false,
        expiry: unset,
        expiry_at: None,
    };
    // As Redis: an option may repeat (the last expiry counts) but not meet
    // a rival.
    let mut ttl_option: Option<&'static str> = None;
    let mut i = from;
    while i < args.len() {
        let opt = &args[i];
        let free_for = |name: &str| ttl_option.is_none_or(|t| t == name);
        if is_set && eq(opt, "nx") && !o.xx {
            o.nx = true;
        } else if is_set && eq(opt, "xx") && !o.nx {
            o.xx = true;
        } else if is_set && eq(opt, "get") {
            o.get = true;
        } else if is_set && eq(opt, "keepttl") && free_for("keepttl") {
            ttl_option = Some("keepttl");
            o.expiry = Expiry::Keep;
        } else if !is_set && eq(opt, "persist") && free_for("persist") {
            ttl_option = Some("persist");
            o.expiry = Expiry::Clear;
        } else if let Some(name) = ["ex", "px", "exat", "pxat"]
            .into_iter()
            .find(|e| eq(opt, e))
            && free_for(name)
            && i + 1 < args.len()
        {
            ttl_option = Some(name);
            o.expiry_at = Some(i);
            i += 1;
        } else {
            return Err(syntax_error());
        }
        i += 1;
    }
    Ok(o)
}

fn set(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    let (key, value) = (&args[1], &args[2]);
    let now = view.now_ms();
    let WriteOptions {
        nx,
        xx,
        get,
        expiry,
        ..
    } = tri!(write_options(args, 3, "set").and_then(|o| o.resolve(args, now, "set")));
    // A plain SET replaces whatever the key held: only its options need
    // the old entry (one lookup fewer on the write path).
    let old = if get {
        view.lookup(key)?
    } else if nx || xx || matches!(expiry, Expiry::Keep) {
        view.get(key)?
    } else {
        None
    };
    let old_string = if get {
        tri!(string_of(view, key, old.clone())?).map(|(s, _)| s)
    } else {
        None
    };
    let reply_for = |done: bool| {
        if get {
            Reply::opt_bulk(old_string.clone())
        } else if done {
            Reply::ok()
        } else {
            Reply::Null
        }
    };
    if (nx && old.is_some()) || (xx && old.is_none()) {
        return Ok(reply_for(false));
    }
    let expire_at_ms = match expiry {
        Expiry::Clear => 0,
        Expiry::Keep => old.as_ref().map_or(0, |e| e.expire_at_ms),
        Expiry::At(at) => at,
    };
    if expire_at_ms != 0 && expire_at_ms <= now {
        // Set to expire in the past: the key is gone at once.
        if view.entry(key)?.is_some() {
            delete(view, key)?;
        }
    } else {
        set_string(view, key, value.clone(), expire_at_ms)?;
    }
    Ok(reply_for(true))
}

fn setnx(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    if view.get(&args[1])?.is_some() {
        return Ok(Reply::Int(0));
    }
    set_string(view, &args[1], args[2].clone(), 0)?;
    Ok(Reply::Int(1))
}

fn setex_common(view: &mut View<'_>, args: &Args, unit_ms: i64, command: &str) -> EResult<Reply> {
    let n = tri!(int_arg(&args[2]));
    let invalid = || Reply::err(format!("invalid expire time in '{command}' command"));
    if n <= 0 {
        return Ok(invalid());
    }
    let Some(at) = n
        .checked_mul(unit_ms)
        .and_then(|ms| ms.checked_add(view.now_ms() as i64))
    else {
        return Ok(invalid());
    };
    set_string(view, &args[1], args[3].clone(), at as u64)?;
    Ok(Reply::ok())
}

fn setex(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    setex_common(view, args, 1000, "setex")
}

fn psetex(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    setex_common(view, args, 1, "psetex")
}

fn getset(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    let old = view.lookup(&args[1])?;
    let old = tri!(string_of(view, &args[1], old)?);
    set_string(view, &args[1], args[2].clone(), 0)?;
    Ok(Reply::opt_bulk(old.map(|(s, _)| s)))
}

fn getdel(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    let old = view.lookup(&args[1])?;
    let old = tri!(string_of(view, &args[1], old)?);
    if old.is_some() {
        delete(view, &args[1])?;
    }
    Ok(Reply::opt_bulk(old.map(|(s, _)| s)))
}

fn getex(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    let now = view.now_ms();
    let options = tri!(write_options(args, 2, "getex"));
    // As Redis: a missing key, then its type, then the expiry's value.
    let old = view.lookup(&args[1])?;
    let Some((value, old_at)) = tri!(string_of(view, &args[1], old)?) else {
        return Ok(Reply::Null);
    };
    let expiry = tri!(options.resolve(args, now, "getex")).expiry;
    match expiry {
        Expiry::Keep => {}
        Expiry::Clear if old_at != 0 => set_expiry(view, &args[1], 0)?,
        Expiry::Clear => {}
        Expiry::At(at) if at <= now => delete(view, &args[1])?,
        Expiry::At(at) => set_expiry(view, &args[1], at)?,
    }
    Ok(Reply::Bulk(value))
}

fn mset(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    if args.len().is_multiple_of(2) {
        return Ok(wrong_arity("mset"));
    }
    for pair in args[1..].chunks(2) {
        set_string(view, &pair[0], pair[1].clone(), 0)?;
    }
    Ok(Reply::ok())
}

fn msetnx(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    if args.len().is_multiple_of(2) {
        return Ok(wrong_arity("msetnx"));
    }
    for pair in args[1..].chunks(2) {
        if view.get(&pair[0])?.is_some() {
            return Ok(Reply::Int(0));
        }
    }
    for pair in args[1..].chunks(2) {
        set_string(view, &pair[0], pair[1].clone(), 0)?;
    }
    Ok(Reply::Int(1))
}

fn append(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    let (key, data) = (&args[1], &args[2]);
    match tri!(view_string_len(view, key)?) {
        Some(old_len) => {
            let len = old_len + data.len() as u64;
            if let Err(reply) = check_string_length(len) {
                return Ok(reply);
            }
            view.push(Op::SetRange(pb::SetRange {
                key: key.clone(),
                offset: old_len,
                data: data.clone(),
            }))?;
            Ok(Reply::Int(len as i64))
        }
        None => {
            reap_expired(view, key)?;
            set_string(view, key, data.clone(), 0)?;
            Ok(Reply::Int(data.len() as i64))
        }
    }
}

/// The largest string APPEND and SETRANGE may build: `--proto-max-bulk-len`,
/// as in Redis (set once at start by [`set_string_bytes_max`]).
static STRING_BYTES_MAX: AtomicU64 = AtomicU64::new(crate::node::PROTO_MAX_BULK_LEN_DEFAULT as u64);

/// Sets the largest string APPEND and SETRANGE may build.
pub fn set_string_bytes_max(bytes: usize) {
    STRING_BYTES_MAX.store(bytes as u64, Ordering::Relaxed);
}

/// Redis's reply to a string that would grow past [`STRING_BYTES_MAX`].
fn check_string_length(len: u64) -> Result<(), Reply> {
    if len > STRING_BYTES_MAX.load(Ordering::Relaxed) {
        return Err(Reply::err(
            "string exceeds maximum allowed size (proto-max-bulk-len)",
        ));
    }
    Ok(())
}

fn setrange(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    let (key, data) = (&args[1], &args[3]);
    let offset = tri!(int_arg(&args[2]));
    if offset < 0 {
        return Ok(Reply::err("offset is out of range"));
    }
    let old = tri!(view_string_len(view, key)?);
    let old_len = old.unwrap_or(0);
    if data.is_empty() {
        return Ok(Reply::Int(old_len as i64));
    }
    if let Err(reply) = check_string_length(offset as u64 + data.len() as u64) {
        return Ok(reply);
    }
    if old.is_none() {
        reap_expired(view, key)?;
    }
    view.push(Op::SetRange(pb::SetRange {
        key: key.clone(),
        offset: offset as u64,
        data: data.clone(),
    }))?;
    Ok(Reply::Int(
        old_len.max(offset as u64 + data.len() as u64) as i64
    ))
}

// ----------------------------------------------------------------- bitmaps

/// A bit offset of SETBIT and GETBIT: a number of bits within the largest
/// string ([`STRING_BYTES_MAX`] bytes).
fn bit_offset(arg: &[u8]) -> Result<u64, Reply> {
    match parse_i64(arg) {
        Some(offset)
            if offset >= 0 && (offset as u64 >> 3) < STRING_BYTES_MAX.load(Ordering::Relaxed) =>
        {
            Ok(offset as u64)
        }
        _ => Err(Reply::err("bit offset is not an integer or out of range")),
    }
}

/// The mask of bit `offset` within its byte: bit 0 is the first byte's
/// most significant.
fn bit_mask(offset: u64) -> u8 {
    0x80 >> (offset & 7)
}

fn setbit(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    let key = &args[1];
    let offset = tri!(bit_offset(&args[2]));
    let on = match parse_i64(&args[3]) {
        Some(0) => false,
        Some(1) => true,
        _ => return Ok(Reply::err("bit is not an integer or out of range")),
    };
    let byte = offset >> 3;
    let old_byte = match view.get(key)? {
        Some(Entry {
            value: Value::Hash { .. },
            ..
        }) => return Ok(Reply::wrong_type()),
        Some(e) if byte < e.string_len() => Some(string_bytes(view, key, &e, byte..byte + 1)?[0]),
        Some(_) => None,
        None => {
            reap_expired(view, key)?;
            None
        }
    };
    let was = old_byte.unwrap_or(0);
    let new = if on {
        was | bit_mask(offset)
    } else {
        was & !bit_mask(offset)
    };
    // Nothing to write when the byte is there and the bit as asked.
    if old_byte != Some(new) {
        view.push(Op::SetRange(pb::SetRange {
            key: key.clone(),
            offset: byte,
            data: Bytes::copy_from_slice(&[new]),
        }))?;
    }
    Ok(Reply::Int(i64::from(was & bit_mask(offset) != 0)))
}

fn getbit(node: &Node, r: &dyn Reader, args: &Args) -> Reply {
    let offset = tri_read!(bit_offset(&args[2]));
    let byte = offset >> 3;
    let read = tri_read!(read_string(node, r, &args[1], |len| {
        byte.min(len)..(byte + 1).min(len)
    }));
    let bit =
        read.is_some_and(|(_, bytes)| bytes.first().is_some_and(|b| b & bit_mask(offset) != 0));
    Reply::Int(i64::from(bit))
}

/// The bits BITCOUNT and BITPOS look at, first and last: `start..=end`
/// of their arguments in bytes or (with BIT) in bits, negative ones from
/// the end, within a string of `len` bytes; `None` when none.
fn bit_span(start: i64, end: i64, bits: bool, len: u64) -> Option<(u64, u64)> {
    let total = if bits { len as i64 * 8 } else { len as i64 };
    let from_end = |i: i64| if i < 0 { (total + i).max(0) } else { i };
    let (start, end) = (from_end(start), from_end(end).min(total - 1));
    if start > end {
        return None;
    }
    Some(if bits {
        (start as u64, end as u64)
    } else {
        (start as u64 * 8, end as u64 * 8 + 7)
    })
}

/// BIT or BYTE, as BITCOUNT's and BITPOS's last argument.
fn bit_unit(arg: &[u8]) -> Result<bool, Reply> {
    if eq(arg, "bit") {
        Ok(true)
    } else if eq(arg, "byte") {
        Ok(false)
    } else {
        Err(syntax_error())
    }
}

/// The string at `key` as BITCOUNT and BITPOS read it: its length and the
/// bytes that the bits `span` gives for that length fall in, read in one
/// state; WRONGTYPE for a hash, `None` if missing.
fn read_bits(
    node: &Node,
    r: &dyn Reader,
    key: &[u8],
    span: impl Fn(u64) -> Option<(u64, u64)>,
) -> Result<Option<(u64, Bytes)>, Reply> {
    read_string(node, r, key, |len| match span(len) {
        Some((first, last)) => first / 8..last / 8 + 1,
        None => 0..0,
    })
}

/// The bytes that bits `first..=last` fall in, from `bytes` (which begin
/// at `first`'s byte): each with its index and the mask of its bits in the
/// span.
fn span_bytes(bytes: &[u8], first: u64, last: u64) -> impl Iterator<Item = (u64, u8, u8)> + '_ {
    let (first_byte, last_byte) = (first / 8, last / 8);
    (first_byte..=last_byte).map(move |i| {
        let mut mask = 0xff_u8;
        if i == first_byte {
            mask &= 0xff >> (first % 8);
        }
        if i == last_byte {
            mask &= 0xff << (7 - last % 8);
        }
        (i, bytes[(i - first_byte) as usize], mask)
    })
}

fn bitcount(node: &Node, r: &dyn Reader, args: &Args) -> Reply {
    /// The bits BITCOUNT counts, as its arguments give them.
    enum Counted {
        Whole,
        Span(i64, i64, bool),
        /// Two negative indexes out of order: nothing, as Redis decides
        /// before it reads the unit.
        Nothing,
    }
    // As Redis: a missing key counts 0 whatever the arguments are.
    let counted: Result<Counted, Reply> = match args.len() {
        2 => Ok(Counted::Whole),
        4 | 5 => (|| {
            let start = int_arg(&args[2])?;
            let end = int_arg(&args[3])?;
            if start < 0 && end < 0 && start > end {
                return Ok(Counted::Nothing);
            }
            let bits = args.get(4).map(|unit| bit_unit(unit)).transpose()?;
            Ok(Counted::Span(start, end, bits.unwrap_or(false)))
        })(),
        _ => Err(syntax_error()),
    };
    let span = |len: u64| match &counted {
        Ok(Counted::Whole) => bit_span(0, -1, false, len),
        Ok(Counted::Span(start, end, bits)) => bit_span(*start, *end, *bits, len),
        Ok(Counted::Nothing) | Err(_) => None,
    };
    let Some((len, bytes)) = tri_read!(read_bits(node, r, &args[1], span)) else {
        return Reply::Int(0);
    };
    if let Err(reply) = &counted {
        return reply.clone();
    }
    let count: u32 = span(len).map_or(0, |(first, last)| {
        span_bytes(&bytes, first, last)
            .map(|(_, byte, mask)| (byte & mask).count_ones())
            .sum()
    });
    Reply::Int(i64::from(count))
}

fn bitpos(node: &Node, r: &dyn Reader, args: &Args) -> Reply {
    let bit = match parse_i64(&args[2]) {
        Some(bit @ (0 | 1)) => bit == 1,
        Some(_) => return Reply::err("The bit argument must be 1 or 0."),
        None => return not_integer(),
    };
    // start [end [BIT|BYTE]], checked in Redis's order; without an end,
    // the string's end, past which its bits count as clear.
    let range: Result<Option<(i64, Option<i64>, bool)>, Reply> = match args.len() {
        3 => Ok(None),
        4..=6 => (|| {
            let start = int_arg(&args[3])?;
            let bits = match args.get(5) {
                Some(unit) => bit_unit(unit)?,
                None => false,
            };
            let end = args.get(4).map(|end| int_arg(end)).transpose()?;
            Ok(Some((start, end, bits)))
        })(),
        _ => Err(syntax_error()),
    };
    let span = |len: u64| match &range {
        Ok(None) => bit_span(0, -1, false, len),
        Ok(Some((start, end, bits))) => bit_span(*start, end.unwrap_or(-1), *bits, len),
        Err(_) => None,
    };
    let Some((len, bytes)) = tri_read!(read_bits(node, r, &args[1], span)) else {
        // A missing key is all clear bits.
        return Reply::Int(if bit { -1 } else { 0 });
    };
    if let Err(reply) = &range {
        return reply.clone();
    }
    let Some((first, last)) = span(len) else {
        return Reply::Int(-1);
    };
    let end_given = matches!(range, Ok(Some((_, Some(_), _))));
    // The first byte with a bit as asked in the span, and that bit.
    let found = span_bytes(&bytes, first, last).find_map(|(i, byte, mask)| {
        let matching = if bit { byte } else { !byte } & mask;
        (matching != 0).then(|| i * 8 + u64::from(matching.leading_zeros()))
    });
    Reply::Int(match found {
        Some(pos) => pos as i64,
        None if !bit && !end_given => last as i64 + 1,
        None => -1,
    })
}

/// BITOP AND|OR|XOR|NOT destkey key [key ...]: the result at `destkey`
/// (without an expiry), or `destkey` deleted if it is empty; its length.
/// A missing key reads as an empty string, and a shorter one as padded
/// with zero bytes. The sources are folded in one at a time: one of them
/// and the result in memory, however many keys are named.
fn bitop(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    let op = args[1].to_ascii_lowercase();
    if !matches!(&op[..], b"and" | b"or" | b"xor" | b"not") {
        return Ok(syntax_error());
    }
    let (dest, sources) = (&args[2], &args[3..]);
    if op == b"not" && sources.len() != 1 {
        return Ok(Reply::err(
            "BITOP NOT must be called with a single source key.",
        ));
    }
    let combine: fn(u8, u8) -> u8 = match &op[..] {
        b"not" => |_, b| !b,
        b"and" => |a, b| a & b,
        b"or" => |a, b| a | b,
        _ => |a, b| a ^ b,
    };
    let mut result: Vec<u8> = Vec::new();
    for (n, key) in sources.iter().enumerate() {
        let entry = view.lookup(key)?;
        let value = tri!(string_of(view, key, entry)?).map_or_else(Bytes::new, |(s, _)| s);
        if result.len() < value.len() {
            result.resize(value.len(), 0);
        }
        // The first source as it is (NOT's inverted); a shorter one reads
        // as padded with zero bytes.
        for (i, r) in result.iter_mut().enumerate() {
            let byte = value.get(i).copied().unwrap_or(0);
            *r = if n == 0 && op != b"not" {
                byte
            } else {
                combine(*r, byte)
            };
        }
    }
    if result.is_empty() {
        if view.entry(dest)?.is_some() {
            delete(view, dest)?;
        }
        return Ok(Reply::Int(0));
    }
    let len = result.len();
    set_string(view, dest, Bytes::from(result), 0)?;
    Ok(Reply::Int(len as i64))
}

/// Replaces the number in the string at `key` (keeping its expiry), or in
/// `field` of the hash at `key`, with what `add` makes of its text (`None`:
/// missing), after the key's type check. `add` gives the new text and the
/// reply, or the error reply.
fn add_to(
    view: &mut View<'_>,
    key: &Bytes,
    field: Option<&Bytes>,
    add: impl FnOnce(Option<&[u8]>) -> Result<(Bytes, Reply), Reply>,
) -> EResult<Reply> {
    let (stored, expire_at_ms) = match field {
        None => match tri!(view_string(view, key)?) {
            Some((text, at)) => (Some(text), at),
            None => (None, 0),
        },
        Some(field) => match tri!(view_hash(view, key)?) {
            Some(at) => (view.hash_field(key, field)?, at),
            None => (None, 0),
        },
    };
    let (text, reply) = tri!(add(stored.as_deref()));
    match field {
        None => set_string(view, key, text, expire_at_ms)?,
        Some(field) => {
            tri!(hset_fields(view, key, &[field.clone(), text])?);
        }
    }
    Ok(reply)
}

/// [`add_to`] for INCR* and HINCRBY: 64-bit integers; `not_number` is the
/// error for stored text that is not one.
fn add_int_to(
    view: &mut View<'_>,
    key: &Bytes,
    field: Option<&Bytes>,
    by: i64,
    not_number: Reply,
) -> EResult<Reply> {
    add_to(view, key, field, |stored| {
        let current = match stored {
            Some(text) => parse_i64(text).ok_or(not_number)?,
            None => 0,
        };
        let n = current
            .checked_add(by)
            .ok_or_else(|| Reply::err("increment or decrement would overflow"))?;
        Ok((Bytes::from(n.to_string()), Reply::Int(n)))
    })
}

/// [`add_to`] for INCRBYFLOAT and HINCRBYFLOAT, in Redis's long doubles
/// ([`crate::long_double`]). As Redis: the key's type first, then the stored
/// number (`not_number` if it is none), then the increment.
fn add_float_to(
    view: &mut View<'_>,
    key: &Bytes,
    field: Option<&Bytes>,
    by: &Bytes,
    not_number: &'static str,
) -> EResult<Reply> {
    add_to(view, key, field, |stored| {
        match long_double::add(stored, by) {
            Ok(text) => {
                let text = Bytes::from(text);
                Ok((text.clone(), Reply::Bulk(text)))
            }
            Err(long_double::AddError::Base) => Err(Reply::err(not_number)),
            Err(long_double::AddError::By) => Err(Reply::err("value is not a valid float")),
            Err(long_double::AddError::NotFinite) => {
                Err(Reply::err("increment would produce NaN or Infinity"))
            }
        }
    })
}

fn incr_by(view: &mut View<'_>, key: &Bytes, by: i64) -> EResult<Reply> {
    add_int_to(view, key, None, by, not_integer())
}

fn incr(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    incr_by(view, &args[1], 1)
}

fn decr(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    incr_by(view, &args[1], -1)
}

fn incrby(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    let by = tri!(int_arg(&args[2]));
    incr_by(view, &args[1], by)
}

fn decrby(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    let by = tri!(int_arg(&args[2]));
    let Some(by) = by.checked_neg() else {
        return Ok(Reply::err("decrement would overflow"));
    };
    incr_by(view, &args[1], by)
}

fn incrbyfloat(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    add_float_to(view, &args[1], None, &args[2], "value is not a valid float")
}

// --------------------------------------------------------------- BITFIELD

/// BITFIELD's OVERFLOW behaviour, for the SET and INCRBY after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Overflow {
    Wrap,
    Sat,
    Fail,
}

#[derive(Debug, Clone, Copy)]
enum FieldOp {
    Get,
    Set(i64),
    IncrBy(i64),
}

/// One BITFIELD operation on an integer of `bits` bits at bit `offset`.
#[derive(Debug, Clone, Copy)]
struct BitField {
    op: FieldOp,
    signed: bool,
    bits: u32,
    offset: u64,
    overflow: Overflow,
}

impl BitField {
    /// The bytes the field lies in, first and last.
    fn bytes(&self) -> (u64, u64) {
        (
            self.offset >> 3,
            (self.offset + u64::from(self.bits) - 1) >> 3,
        )
    }
}

/// BITFIELD's arguments after the key, parsed and checked in full (Redis's
/// errors, in its order) before anything is read.
fn bitfield_ops(args: &Args) -> Result<Vec<BitField>, Reply> {
    let type_error = || {
        Reply::err(
            "Invalid bitfield type. Use something like i16 u8. Note that u64 is not supported but i64 is.",
        )
    };
    let mut fields = Vec::new();
    let mut overflow = Overflow::Wrap;
    let mut j = 2;
    while j < args.len() {
        let left = args.len() - j - 1;
        let sub = &args[j];
        let op = if eq(sub, "get") && left >= 2 {
            FieldOp::Get
        } else if eq(sub, "set") && left >= 3 {
            FieldOp::Set(0)
        } else if eq(sub, "incrby") && left >= 3 {
            FieldOp::IncrBy(0)
        } else if eq(sub, "overflow") && left >= 1 {
            let kind = &args[j + 1];
            overflow = if eq(kind, "wrap") {
                Overflow::Wrap
            } else if eq(kind, "sat") {
                Overflow::Sat
            } else if eq(kind, "fail") {
                Overflow::Fail
            } else {
                return Err(Reply::err("Invalid OVERFLOW type specified"));
            };
            j += 2;
            continue;
        } else {
            return Err(syntax_error());
        };
        let kind = &args[j + 1];
        let signed = match kind.first() {
            Some(b'i') => true,
            Some(b'u') => false,
            _ => return Err(type_error()),
        };
        let bits = match parse_i64(&kind[1..]) {
            Some(bits) if bits >= 1 && bits <= if signed { 64 } else { 63 } => bits as u32,
            _ => return Err(type_error()),
        };
        // `#N`: the N-th field of this width.
        let offset_arg = &args[j + 2];
        let offset = match offset_arg.strip_prefix(b"#") {
            Some(index) => parse_i64(index).and_then(|i| i.checked_mul(i64::from(bits))),
            None => parse_i64(offset_arg),
        };
        let offset = match offset {
            Some(offset)
                if offset >= 0
                    && (offset as u64 >> 3) < STRING_BYTES_MAX.load(Ordering::Relaxed) =>
            {
                offset as u64
            }
            _ => return Err(Reply::err("bit offset is not an integer or out of range")),
        };
        let op = match op {
            FieldOp::Get => FieldOp::Get,
            FieldOp::Set(_) => FieldOp::Set(int_arg(&args[j + 3])?),
            FieldOp::IncrBy(_) => FieldOp::IncrBy(int_arg(&args[j + 3])?),
        };
        fields.push(BitField {
            op,
            signed,
            bits,
            offset,
            overflow,
        });
        j += if matches!(op, FieldOp::Get) { 3 } else { 4 };
    }
    Ok(fields)
}

/// The `bits` bits at bit `offset` of `bytes`, most significant first.
fn get_bits(bytes: &[u8], offset: u64, bits: u32) -> u64 {
    (offset..offset + u64::from(bits)).fold(0, |value, at| {
        (value << 1) | u64::from(bytes[(at >> 3) as usize] & bit_mask(at) != 0)
    })
}

/// Stores the low `bits` bits of `value` at bit `offset` of `bytes`.
fn set_bits(bytes: &mut [u8], offset: u64, bits: u32, value: u64) {
    for i in 0..u64::from(bits) {
        let at = offset + i;
        let byte = &mut bytes[(at >> 3) as usize];
        if (value >> (u64::from(bits) - 1 - i)) & 1 == 1 {
            *byte |= bit_mask(at);
        } else {
            *byte &= !bit_mask(at);
        }
    }
}

/// `bits` bits read as a two's complement integer.
fn sign_extend(value: u64, bits: u32) -> i64 {
    if bits < 64 && value & (1 << (bits - 1)) != 0 {
        (value | (u64::MAX << bits)) as i64
    } else {
        value as i64
    }
}

/// Whether `value + incr` overflows an unsigned field of `bits` bits, and
/// then what OVERFLOW stores (nothing for FAIL), as Redis's
/// `checkUnsignedBitfieldOverflow` (`value` may be a SET's argument, cast).
fn unsigned_overflow(value: u64, incr: i64, bits: u32, overflow: Overflow) -> Option<u64> {
    let max = (1u64 << bits) - 1;
    let max_incr = max.wrapping_sub(value) as i64;
    let min_incr = (value as i64).wrapping_neg();
    let high = if value > max || (incr > 0 && incr > max_incr) {
        true
    } else if incr < 0 && incr < min_incr {
        false
    } else {
        return None;
    };
    Some(match overflow {
        Overflow::Wrap => value.wrapping_add(incr as u64) & !(u64::MAX << bits),
        Overflow::Sat if high => max,
        Overflow::Sat | Overflow::Fail => 0,
    })
}

/// As [`unsigned_overflow`], for a signed field (Redis's
/// `checkSignedBitfieldOverflow`, its wrapping arithmetic included).
fn signed_overflow(value: i64, incr: i64, bits: u32, overflow: Overflow) -> Option<i64> {
    let max = if bits == 64 {
        i64::MAX
    } else {
        (1i64 << (bits - 1)) - 1
    };
    let min = -max - 1;
    let max_incr = (max as u64).wrapping_sub(value as u64) as i64;
    let min_incr = min.wrapping_sub(value);
    let high = if value > max
        || (bits != 64 && incr > max_incr)
        || (value >= 0 && incr > 0 && incr > max_incr)
    {
        true
    } else if value < min
        || (bits != 64 && incr < min_incr)
        || (value < 0 && incr < 0 && incr < min_incr)
    {
        false
    } else {
        return None;
    };
    Some(match overflow {
        Overflow::Wrap => {
            let sum = (value as u64).wrapping_add(incr as u64);
            sign_extend(sum & !(u64::MAX.checked_shl(bits).unwrap_or(0)), bits)
        }
        Overflow::Sat if high => max,
        Overflow::Sat => min,
        Overflow::Fail => 0,
    })
}

/// What BITFIELD's fields do: a reply for each, and for each write (not
/// one OVERFLOW FAIL refused) the bytes it leaves from its first byte and
/// whether its value changed, in order.
type BitFieldRun = (Vec<Reply>, Vec<(u64, Vec<u8>, bool)>);

/// What BITFIELD's `fields` do to the string `entry` of `key`, read
/// through `r`.
fn run_bitfield(
    r: &dyn Reader,
    key: &[u8],
    entry: Option<&Entry>,
    fields: &[BitField],
) -> ferry_engine::Result<BitFieldRun> {
    let mut replies = Vec::with_capacity(fields.len());
    let mut written: Vec<(u64, Vec<u8>, bool)> = Vec::new();
    for field in fields {
        let (first, last) = field.bytes();
        let mut bytes = vec![0u8; (last - first + 1) as usize];
        if let Some(e) = entry {
            let stored = string_bytes(r, key, e, first..last + 1)?;
            bytes[..stored.len()].copy_from_slice(&stored);
        }
        // Earlier writes of this command, in order.
        for (at, data, _) in &written {
            let (from, to) = ((*at).max(first), (at + data.len() as u64).min(last + 1));
            if from < to {
                bytes[(from - first) as usize..(to - first) as usize]
                    .copy_from_slice(&data[(from - at) as usize..(to - at) as usize]);
            }
        }
        let at = field.offset - first * 8;
        let raw = get_bits(&bytes, at, field.bits);
        let (store, reply) = match (field.op, field.signed) {
            (FieldOp::Get, true) => (None, Some(sign_extend(raw, field.bits))),
            (FieldOp::Get, false) => (None, Some(raw as i64)),
            (FieldOp::Set(value), true) => {
                let old = sign_extend(raw, field.bits);
                match signed_overflow(value, 0, field.bits, field.overflow) {
                    Some(_) if field.overflow == Overflow::Fail => (None, None),
                    stored => (Some(stored.unwrap_or(value) as u64), Some(old)),
                }
            }
            (FieldOp::IncrBy(incr), true) => {
                let old = sign_extend(raw, field.bits);
                match signed_overflow(old, incr, field.bits, field.overflow) {
                    Some(_) if field.overflow == Overflow::Fail => (None, None),
                    stored => {
                        let new = stored.unwrap_or(old.wrapping_add(incr));
                        (Some(new as u64), Some(new))
                    }
                }
            }
            (FieldOp::Set(value), false) => {
                match unsigned_overflow(value as u64, 0, field.bits, field.overflow) {
                    Some(_) if field.overflow == Overflow::Fail => (None, None),
                    stored => (Some(stored.unwrap_or(value as u64)), Some(raw as i64)),
                }
            }
            (FieldOp::IncrBy(incr), false) => {
                match unsigned_overflow(raw, incr, field.bits, field.overflow) {
                    Some(_) if field.overflow == Overflow::Fail => (None, None),
                    stored => {
                        let new = stored.unwrap_or(raw.wrapping_add(incr as u64));
                        (Some(new), Some(new as i64))
                    }
                }
            }
        };
        replies.push(reply.map_or(Reply::Null, Reply::Int));
        if let Some(value) = store {
            let changed = value & (u64::MAX >> (64 - field.bits)) != raw;
            set_bits(&mut bytes, at, field.bits, value);
            written.push((first, bytes, changed));
        }
    }
    Ok((replies, written))
}

/// BITFIELD key [GET type offset] [OVERFLOW WRAP|SAT|FAIL] [SET type offset
/// value] [INCRBY type offset increment] ...: each write that changes the
/// string logged as the bytes it leaves. As Redis, a command with a SET or
/// INCRBY makes the string (the key, if missing) long enough for its
/// farthest one, even when OVERFLOW FAIL refuses them all; it changed the
/// key (`setbit`) if a write was not refused and either changed its value
/// or the string had to grow.
fn bitfield(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    let fields = tri!(bitfield_ops(args));
    let key = &args[1];
    let writes: Vec<&BitField> = fields
        .iter()
        .filter(|f| !matches!(f.op, FieldOp::Get))
        .collect();
    let entry = if writes.is_empty() {
        view.lookup(key)?
    } else {
        view.get(key)?
    };
    if let Some(Entry {
        value: Value::Hash { .. },
        ..
    }) = entry
    {
        return Ok(Reply::wrong_type());
    }
    let (replies, written) = run_bitfield(view, key, entry.as_ref(), &fields)?;
    let Some(farthest) = writes.iter().map(|f| f.bytes().1).max() else {
        return Ok(Reply::Array(replies));
    };
    if entry.is_none() {
        reap_expired(view, key)?;
    }
    let grows = entry.as_ref().is_none_or(|e| e.string_len() <= farthest);
    let mut ops: Vec<(u64, Bytes)> = written
        .into_iter()
        .filter(|&(_, _, changed)| changed || grows)
        .map(|(at, data, _)| (at, Bytes::from(data)))
        .collect();
    if grows
        && ops
            .iter()
            .all(|(at, data)| at + data.len() as u64 <= farthest)
    {
        ops.push((farthest, Bytes::from_static(&[0])));
    }
    for (offset, data) in ops {
        view.push(Op::SetRange(pb::SetRange {
            key: key.clone(),
            offset,
            data,
        }))?;
    }
    Ok(Reply::Array(replies))
}

/// BITFIELD_RO key [GET type offset] ...: BITFIELD's reads, in one state.
fn bitfield_ro(node: &Node, r: &dyn Reader, args: &Args) -> Reply {
    let fields = tri_read!(bitfield_ops(args));
    if fields.iter().any(|f| !matches!(f.op, FieldOp::Get)) {
        return Reply::err("BITFIELD_RO only supports the GET subcommand");
    }
    let key = &args[1];
    let now = now_ms();
    let (entry, replies) = tri_read!(stable(r, |r| {
        let entry = r.live(key, now)?;
        let replies = match &entry {
            Some(Entry {
                value: Value::Hash { .. },
                ..
            }) => Vec::new(),
            e => run_bitfield(r, key, e.as_ref(), &fields)?.0,
        };
        Ok((entry, replies))
    }));
    count_lookup(node, key, &entry);
    match entry {
        Some(Entry {
            value: Value::Hash { .. },
            ..
        }) => Reply::wrong_type(),
        _ => Reply::Array(replies),
    }
}

// ------------------------------------------------------------------- keys

fn del(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    let mut deleted = 0;
    for key in &args[1..] {
        if let Some(e) = view.entry(key)? {
            if !e.is_expired(view.now_ms()) {
                deleted += 1;
            }
            delete(view, key)?;
        }
    }
    Ok(Reply::Int(deleted))
}

fn exists(node: &Node, r: &dyn Reader, args: &Args) -> Reply {
    let entries = tri_read!(read_entries(node, r, &args[1..]));
    Reply::Int(entries.iter().filter(|e| e.is_some()).count() as i64)
}

fn type_(node: &Node, r: &dyn Reader, args: &Args) -> Reply {
    let entry = tri_read!(read_entry(node, r, &args[1]));
    Reply::Simple(entry.map_or("none", |e| e.type_name()).into())
}

fn rename(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    let (from, to) = (&args[1], &args[2]);
    let Some(entry) = view.get(from)? else {
        return Ok(Reply::err("no such key"));
    };
    if from == to {
        return Ok(Reply::ok());
    }
    move_key(view, from, to, &entry)?;
    Ok(Reply::ok())
}

/// RENAMENX: as RENAME, unless `to` exists (0 then, and for a key renamed
/// to itself).
fn renamenx(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    let (from, to) = (&args[1], &args[2]);
    let Some(entry) = view.get(from)? else {
        return Ok(Reply::err("no such key"));
    };
    if from == to || view.get(to)?.is_some() {
        return Ok(Reply::Int(0));
    }
    move_key(view, from, to, &entry)?;
    Ok(Reply::Int(1))
}

/// COPY source destination [DB 0] [REPLACE]: 1 if copied, 0 if the source
/// is missing or the destination exists without REPLACE. Only database 0
/// exists: any other is out of range.
fn copy(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    let (from, to) = (&args[1], &args[2]);
    // As Redis: the options, then the keys.
    let mut replace = false;
    let mut i = 3;
    while i < args.len() {
        if eq(&args[i], "replace") {
            replace = true;
        } else if eq(&args[i], "db") && i + 1 < args.len() {
            match parse_i64(&args[i + 1]).map(i32::try_from) {
                Some(Ok(0)) => {}
                Some(Ok(_)) => return Ok(Reply::err("DB index is out of range")),
                // Redis's words for an int out of range.
                Some(Err(_)) => {
                    return Ok(Reply::err(
                        "value is out of range, value must between -2147483648 and 2147483647",
                    ));
                }
                None => return Ok(not_integer()),
            }
            i += 1;
        } else {
            return Ok(syntax_error());
        }
        i += 1;
    }
    if from == to {
        return Ok(Reply::err("source and destination objects are the same"));
    }
    let Some(entry) = view.lookup(from)? else {
        return Ok(Reply::Int(0));
    };
    if view.get(to)?.is_some() && !replace {
        return Ok(Reply::Int(0));
    }
    write_copy(view, from, to, &entry)?;
    Ok(Reply::Int(1))
}

/// Writes the value of `from` (its `entry`) with its expiry at `to`, in
/// place of whatever `to` holds.
fn write_copy(view: &mut View<'_>, from: &Bytes, to: &Bytes, entry: &Entry) -> EResult<()> {
    let value = value_of(view, from, entry)?;
    write_value(view, to, value, entry.expire_at_ms)
}

/// RENAME's move: `from` is deleted, then `to` written with its value
/// and expiry, the order in which Redis tells a client caching them.
fn move_key(view: &mut View<'_>, from: &Bytes, to: &Bytes, entry: &Entry) -> EResult<()> {
    let value = value_of(view, from, entry)?;
    delete(view, from)?;
    write_value(view, to, value, entry.expire_at_ms)
}

/// The value of `key`, whose live entry is `entry`: a string's bytes or a
/// hash's fields (COPY, RENAME and DUMP read it so).
fn value_of(r: &dyn Reader, key: &[u8], entry: &Entry) -> EResult<Dumped> {
    Ok(match entry.value {
        Value::Hash { .. } => Dumped::Hash(r.fields(key, None, usize::MAX)?),
        _ => Dumped::String(string_bytes(r, key, entry, 0..entry.string_len())?),
    })
}

/// Writes `value` expiring at `expire_at_ms` (0: never) at `key`, in place
/// of whatever `key` holds.
fn write_value(view: &mut View<'_>, key: &Bytes, value: Dumped, expire_at_ms: u64) -> EResult<()> {
    match value {
        Dumped::String(s) => set_string(view, key, s, expire_at_ms),
        Dumped::Hash(fields) => {
            if view.entry(key)?.is_some() {
                delete(view, key)?;
            }
            view.push(Op::HashSet(pb::HashSet {
                key: key.clone(),
                fields: fields
                    .into_iter()
                    .map(|(field, value)| pb::FieldValue { field, value })
                    .collect(),
            }))?;
            if expire_at_ms != 0 {
                set_expiry(view, key, expire_at_ms)?;
            }
            Ok(())
        }
    }
}

/// DUMP: the key's value as a payload RESTORE takes, here or in Redis
/// ([`crate::dump`]); nil for a missing key.
fn dump(node: &Node, r: &dyn Reader, args: &Args) -> Reply {
    let key = &args[1];
    let now = now_ms();
    let (entry, value) = tri_read!(stable(r, |r| {
        let entry = r.live(key, now)?;
        let value = entry.as_ref().map(|e| value_of(r, key, e)).transpose()?;
        Ok((entry, value))
    }));
    count_lookup(node, key, &entry);
    match value {
        Some(value) => Reply::Bulk(Bytes::from(crate::dump::encode(&value))),
        None => Reply::Null,
    }
}

/// RESTORE key ttl payload [REPLACE] [ABSTTL] [IDLETIME s] [FREQ f]: the
/// value of a DUMP (ferry's or Redis's) at `key`, expiring `ttl` ms from
/// now (at `ttl` with ABSTTL; 0: never). IDLETIME and FREQ are checked as
/// Redis checks them, and kept nowhere: ferry evicts nothing.
fn restore(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    let key = &args[1];
    let (mut replace, mut absttl) = (false, false);
    let (mut idle, mut freq) = (false, false);
    let mut i = 4;
    while i < args.len() {
        let more = i + 1 < args.len();
        if eq(&args[i], "replace") {
            replace = true;
        } else if eq(&args[i], "absttl") {
            absttl = true;
        } else if eq(&args[i], "idletime") && more && !freq {
            match parse_i64(&args[i + 1]) {
                Some(n) if n >= 0 => idle = true,
                Some(_) => return Ok(Reply::err("Invalid IDLETIME value, must be >= 0")),
                None => return Ok(not_integer()),
            }
            i += 1;
        } else if eq(&args[i], "freq") && more && !idle {
            match parse_i64(&args[i + 1]) {
                Some(0..=255) => freq = true,
                Some(_) => {
                    return Ok(Reply::err("Invalid FREQ value, must be >= 0 and <= 255"));
                }
                None => return Ok(not_integer()),
            }
            i += 1;
        } else {
            return Ok(syntax_error());
        }
        i += 1;
    }
    let exists = view.get(key)?.is_some();
    if exists && !replace {
        return Ok(Reply::Error(
            "BUSYKEY Target key name already exists.".into(),
        ));
    }
    let ttl = match parse_i64(&args[2]) {
        Some(ttl) if ttl >= 0 => ttl as u64,
        Some(_) => return Ok(Reply::err("Invalid TTL value, must be >= 0")),
        None => return Ok(not_integer()),
    };
    let max_len = STRING_BYTES_MAX.load(Ordering::Relaxed);
    let value = match crate::dump::decode(&args[3], max_len) {
        Ok(value) => value,
        Err(refused) => return Ok(Reply::err(refused.message())),
    };
    let expire_at_ms = match ttl {
        0 => 0,
        ttl if absttl => ttl,
        ttl => view.now_ms().saturating_add(ttl),
    };
    // Whatever is stored goes (a hash's fields would otherwise stay);
    // a value already expired is not stored.
    if view.entry(key)?.is_some() {
        delete(view, key)?;
    }
    if expire_at_ms != 0 && expire_at_ms <= view.now_ms() {
        return Ok(Reply::ok());
    }
    // A string in the payload is within the largest: a plain one is no
    // longer than the argument, a compressed one was checked by `decode`.
    write_value(view, key, value, expire_at_ms)?;
    Ok(Reply::ok())
}

/// Keys looked at per stretch of RANDOMKEY's scan.
const RANDOMKEY_STRETCH: usize = 64;

/// RANDOMKEY: the first live key from a random scan position (round to the
/// start past the end), nil if there is none.
fn randomkey(_node: &Node, r: &dyn Reader, _args: &Args) -> Reply {
    let now = now_ms();
    let start = 1 + random_u64() % ferry_engine::SCAN_HASH_MAX;
    let mut from = start;
    let mut wrapped = false;
    loop {
        let scanned = match r.scan(from, RANDOMKEY_STRETCH, now) {
            Ok(scanned) => scanned,
            Err(e) => return engine_error(e),
        };
        if let Some((key, _)) = scanned.entries.into_iter().next() {
            return Reply::Bulk(key);
        }
        match scanned.resume {
            Some(next) if !wrapped || next < start => from = next,
            None if !wrapped => {
                wrapped = true;
                from = 0;
            }
            _ => return Reply::Null,
        }
    }
}

/// A random number, new at each call (from the standard library's
/// randomly keyed hasher).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

fn set_expiry(view: &mut View<'_>, key: &Bytes, expire_at_ms: u64) -> EResult<()> {
    view.push(Op::SetExpiry(pb::SetExpiry {
        key: key.clone(),
        expire_at_ms,
    }))
}

/// EXPIRE and friends: `unit_ms` per unit, `absolute` for the *AT forms.
fn expire_common(
    view: &mut View<'_>,
    args: &Args,
    unit_ms: i64,
    absolute: bool,
    command: &str,
) -> EResult<Reply> {
    let key = &args[1];
    // As Redis: the options first, then the time.
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for opt in &args[3..] {
        if eq(opt, "nx") {
            nx = true;
        } else if eq(opt, "xx") {
            xx = true;
        } else if eq(opt, "gt") {
            gt = true;
        } else if eq(opt, "lt") {
            lt = true;
        } else {
            return Ok(Reply::err(format!(
                "Unsupported option {}",
                String::from_utf8_lossy(opt)
            )));
        }
    }
    if nx && (xx || gt || lt) {
        return Ok(Reply::err(
            "NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if gt && lt {
        return Ok(Reply::err(
            "GT and LT options at the same time are not compatible",
        ));
    }
    let n = tri!(int_arg(&args[2]));
    let now = view.now_ms() as i64;
    let invalid = || Reply::err(format!("invalid expire time in '{command}' command"));
    let Some(ms) = n.checked_mul(unit_ms) else {
        return Ok(invalid());
    };
    let at = if absolute {
        Some(ms)
    } else {
        ms.checked_add(now)
    };
    let Some(at) = at else {
        return Ok(invalid());
    };
    let Some(entry) = view.get(key)? else {
        return Ok(Reply::Int(0));
    };
    let current = entry.expire_at_ms;
    // A key without expiry counts as expiring never (infinitely late).
    let applies = !(nx && current != 0
        || xx && current == 0
        || gt && (current == 0 || at <= current as i64)
        || lt && current != 0 && at >= current as i64);
    if !applies {
        return Ok(Reply::Int(0));
    }
    if at <= now {
        delete(view, key)?;
    } else {
        set_expiry(view, key, at as u64)?;
    }
    Ok(Reply::Int(1))
}

fn expire(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    expire_common(view, args, 1000, false, "expire")
}

fn pexpire(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    expire_common(view, args, 1, false, "pexpire")
}

fn expireat(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    expire_common(view, args, 1000, true, "expireat")
}

fn pexpireat(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    expire_common(view, args, 1, true, "pexpireat")
}

fn persist(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    match view.get(&args[1])? {
        Some(e) if e.expire_at_ms != 0 => {
            set_expiry(view, &args[1], 0)?;
            Ok(Reply::Int(1))
        }
        _ => Ok(Reply::Int(0)),
    }
}

fn ttl_common(node: &Node, r: &dyn Reader, args: &Args, unit_ms: u64, absolute: bool) -> Reply {
    let now = now_ms();
    match tri_read!(read_entry(node, r, &args[1])) {
        None => Reply::Int(-2),
        Some(e) if e.expire_at_ms == 0 => Reply::Int(-1),
        Some(e) if absolute => Reply::Int(((e.expire_at_ms + unit_ms / 2) / unit_ms) as i64),
        Some(e) => {
            let left = e.expire_at_ms.saturating_sub(now);
            Reply::Int(((left + unit_ms / 2) / unit_ms) as i64)
        }
    }
}

fn ttl(node: &Node, r: &dyn Reader, args: &Args) -> Reply {
    ttl_common(node, r, args, 1000, false)
}

fn pttl(node: &Node, r: &dyn Reader, args: &Args) -> Reply {
    ttl_common(node, r, args, 1, false)
}

fn expiretime(node: &Node, r: &dyn Reader, args: &Args) -> Reply {
    ttl_common(node, r, args, 1000, true)
}

fn pexpiretime(node: &Node, r: &dyn Reader, args: &Args) -> Reply {
    ttl_common(node, r, args, 1, true)
}

fn flushall(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    if let Some(opt) = args.get(1)
        && (args.len() > 2 || !(eq(opt, "async") || eq(opt, "sync")))
    {
        return Ok(syntax_error());
    }
    view.push(Op::FlushAll(pb::FlushAll {}))?;
    Ok(Reply::ok())
}

fn dbsize(_node: &Node, r: &dyn Reader, _args: &Args) -> Reply {
    match r.key_count() {
        Ok(n) => Reply::Int(n as i64),
        Err(e) => engine_error(e),
    }
}

fn keys(_node: &Node, r: &dyn Reader, args: &Args) -> Reply {
    let pattern = &args[1];
    match r.keys(now_ms(), &mut |k| glob::matches_key(pattern, k)) {
        Ok(keys) => Reply::Array(keys.into_iter().map(Reply::Bulk).collect()),
        Err(e) => engine_error(e),
    }
}

/// `MATCH`, `COUNT`, `TYPE` and `NOVALUES` of SCAN and HSCAN.
struct ScanOptions {
    pattern: Option<Bytes>,
    count: usize,
    type_name: Option<String>,
    novalues: bool,
}

fn scan_options(args: &Args, from: usize, allow_type: bool) -> Result<ScanOptions, Reply> {
    let mut o = ScanOptions {
        pattern: None,
        count: 10,
        type_name: None,
        novalues: false,
    };
    let mut i = from;
    while i < args.len() {
        let value = args.get(i + 1);
        if eq(&args[i], "match") && value.is_some() {
            o.pattern = value.cloned();
        } else if eq(&args[i], "count") && value.is_some() {
            let n = int_arg(value.expect("checked"))?;
            if n < 1 {
                return Err(syntax_error());
            }
            o.count = n as usize;
        } else if allow_type && eq(&args[i], "type") && value.is_some() {
            o.type_name = value.map(|v| String::from_utf8_lossy(v).to_ascii_lowercase());
        } else if !allow_type && eq(&args[i], "novalues") {
            o.novalues = true;
            i += 1;
            continue;
        } else {
            return Err(syntax_error());
        }
        i += 2;
    }
    Ok(o)
}

/// A cursor as a number, as Redis reads one (C's `strtoul`): digits after
/// an optional sign, a minus wrapping around (`-1` is the largest cursor).
fn cursor_number(arg: &[u8]) -> Result<u64, Reply> {
    // No digits and no sign: the whole argument read, as 0.
    if arg.is_empty() {
        return Ok(0);
    }
    let (negative, digits) = match arg.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, arg),
    };
    std::str::from_utf8(digits)
        .ok()
        .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse::<u64>().ok())
        .map(|n| if negative { n.wrapping_neg() } else { n })
        .ok_or_else(|| Reply::err("invalid cursor"))
}

/// The field an HSCAN cursor goes on after: `Ok(None)` for cursor 0.
fn cursor_position(node: &Node, arg: &[u8]) -> Result<Option<Bytes>, Reply> {
    let cursor = cursor_number(arg)?;
    if cursor == 0 {
        return Ok(None);
    }
    let cursors = node.cursors.lock().unwrap_or_else(|e| e.into_inner());
    cursors
        .get(cursor)
        .map(Some)
        .ok_or_else(|| Reply::err("invalid cursor"))
}

fn next_cursor(node: &Node, last: Option<Bytes>) -> Reply {
    let id = match last {
        Some(last) => node
            .cursors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .save(last),
        None => 0,
    };
    Reply::bulk(id.to_string())
}

/// A SCAN cursor is the scan position where the call goes on (see
/// [`ferry_engine::scan_hash`]): any node reads it alike, before and after
/// a restart, and the server keeps nothing for it.
fn scan(node: &Node, r: &dyn Reader, args: &Args) -> Reply {
    let from = tri_read!(cursor_number(&args[1]));
    let o = tri_read!(scan_options(args, 2, true));
    let scanned = match r.scan(from, o.count, now_ms()) {
        Ok(scanned) => scanned,
        Err(e) => return engine_error(e),
    };
    let matching: Vec<(Bytes, Entry)> = scanned
        .entries
        .into_iter()
        .filter(|(k, _)| o.pattern.as_ref().is_none_or(|p| glob::matches_key(p, k)))
        .collect();
    if o.type_name.is_some() {
        // Redis looks each matching key up to learn its type: hits.
        node.stats.lookups(matching.len() as u64, 0);
    }
    let keys = matching
        .into_iter()
        .filter(|(_, e)| o.type_name.as_deref().is_none_or(|t| e.type_name() == t))
        .map(|(k, _)| Reply::Bulk(k))
        .collect();
    Reply::Array(vec![
        Reply::bulk(scanned.resume.unwrap_or(0).to_string()),
        Reply::Array(keys),
    ])
}

// ----------------------------------------------------------------- hashes

fn hset_fields(view: &mut View<'_>, key: &Bytes, pairs: &Args) -> EResult<Result<i64, Reply>> {
    if let Err(reply) = view_hash(view, key)? {
        return Ok(Err(reply));
    }
    reap_expired(view, key)?;
    let mut added = 0;
    let mut seen = std::collections::HashSet::new();
    let exists = view.get(key)?.is_some();
    for pair in pairs.chunks(2) {
        let new_field = !exists || view.hash_field(key, &pair[0])?.is_none();
        if new_field && seen.insert(pair[0].clone()) {
            added += 1;
        }
    }
    view.push(Op::HashSet(pb::HashSet {
        key: key.clone(),
        fields: pairs
            .chunks(2)
            .map(|p| pb::FieldValue {
                field: p[0].clone(),
                value: p[1].clone(),
            })
            .collect(),
    }))?;
    Ok(Ok(added))
}

fn hset(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    if !args.len().is_multiple_of(2) {
        return Ok(wrong_arity("hset"));
    }
    Ok(Reply::Int(tri!(hset_fields(view, &args[1], &args[2..])?)))
}

fn hmset(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    if !args.len().is_multiple_of(2) {
        return Ok(wrong_arity("hmset"));
    }
    tri!(hset_fields(view, &args[1], &args[2..])?);
    Ok(Reply::ok())
}

fn hsetnx(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    let key = &args[1];
    if tri!(view_hash(view, key)?).is_some() && view.hash_field(key, &args[2])?.is_some() {
        return Ok(Reply::Int(0));
    }
    tri!(hset_fields(view, key, &args[2..4])?);
    Ok(Reply::Int(1))
}

fn hdel(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    let key = &args[1];
    if tri!(view_hash(view, key)?).is_none() {
        return Ok(Reply::Int(0));
    }
    let mut fields = Vec::new();
    for field in &args[2..] {
        if view.hash_field(key, field)?.is_some() && !fields.contains(field) {
            fields.push(field.clone());
        }
    }
    let n = fields.len() as i64;
    if n > 0 {
        view.push(Op::HashDelete(pb::HashDelete {
            key: key.clone(),
            fields,
        }))?;
    }
    Ok(Reply::Int(n))
}

fn hincrby(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    let by = tri!(int_arg(&args[3]));
    add_int_to(
        view,
        &args[1],
        Some(&args[2]),
        by,
        Reply::err("hash value is not an integer"),
    )
}

fn hincrbyfloat(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    // As Redis: the increment is checked before the key's type.
    match long_double::check(&args[3]) {
        long_double::Checked::NotANumber => Ok(Reply::err("value is not a valid float")),
        long_double::Checked::Infinite => Ok(Reply::err("value is NaN or Infinity")),
        long_double::Checked::Finite => add_float_to(
            view,
            &args[1],
            Some(&args[2]),
            &args[3],
            "hash value is not a float",
        ),
    }
}

/// One field of a live hash, for the single-field reads: `Ok(None)` when the
/// key or the field is missing.
fn read_field(
    node: &Node,
    r: &dyn Reader,
    key: &[u8],
    field: &[u8],
) -> Result<Option<Bytes>, Reply> {
    Ok(read_hash_with(node, r, key, |r| r.field(key, field))?.1)
}

fn hget(node: &Node, r: &dyn Reader, args: &Args) -> Reply {
    Reply::opt_bulk(tri_read!(read_field(node, r, &args[1], &args[2])))
}

fn hmget(node: &Node, r: &dyn Reader, args: &Args) -> Reply {
    let (key, fields) = (&args[1], &args[2..]);
    let (_, values): (u64, Vec<Option<Bytes>>) = tri_read!(read_hash_with(node, r, key, |r| {
        fields.iter().map(|f| r.field(key, f)).collect()
    }));
    let mut values = values.into_iter();
    Reply::Array(
        fields
            .iter()
            .map(|_| Reply::opt_bulk(values.next().flatten()))
            .collect(),
    )
}

fn hash_all(node: &Node, r: &dyn Reader, key: &[u8]) -> Result<Vec<(Bytes, Bytes)>, Reply> {
    Ok(read_hash_with(node, r, key, |r| r.fields(key, None, usize::MAX))?.1)
}

fn hgetall(node: &Node, r: &dyn Reader, args: &Args) -> Reply {
    let fields = tri_read!(hash_all(node, r, &args[1]));
    Reply::Map(
        fields
            .into_iter()
            .map(|(f, v)| (Reply::Bulk(f), Reply::Bulk(v)))
            .collect(),
    )
}

fn hkeys(node: &Node, r: &dyn Reader, args: &Args) -> Reply {
    let fields = tri_read!(hash_all(node, r, &args[1]));
    Reply::Array(fields.into_iter().map(|(f, _)| Reply::Bulk(f)).collect())
}

fn hvals(node: &Node, r: &dyn Reader, args: &Args) -> Reply {
    let fields = tri_read!(hash_all(node, r, &args[1]));
    Reply::Array(fields.into_iter().map(|(_, v)| Reply::Bulk(v)).collect())
}

fn hlen(node: &Node, r: &dyn Reader, args: &Args) -> Reply {
    Reply::Int(tri_read!(read_hash(node, r, &args[1])) as i64)
}

fn hexists(node: &Node, r: &dyn Reader, args: &Args) -> Reply {
    Reply::Int(i64::from(
        tri_read!(read_field(node, r, &args[1], &args[2])).is_some(),
    ))
}

fn hstrlen(node: &Node, r: &dyn Reader, args: &Args) -> Reply {
    Reply::Int(tri_read!(read_field(node, r, &args[1], &args[2])).map_or(0, |v| v.len() as i64))
}

/// The most fields HRANDFIELD gives for a negative count, which may repeat
/// them (its reply is built whole; Redis's, as it goes).
pub const HRANDFIELD_REPEATS_MAX: u64 = 1 << 20;

/// HRANDFIELD key [count [WITHVALUES]]: a random field (nil for a missing
/// key); with a count, that many distinct fields (all of a smaller hash),
/// or for a negative count that many drawn with repeats. The hash's fields
/// are read whole (O(N) in the hash's size).
fn hrandfield(node: &Node, r: &dyn Reader, args: &Args) -> Reply {
    // The count and WITHVALUES before the key, as Redis checks them.
    let counted = if args.len() >= 3 {
        let count = match parse_i64(&args[2]) {
            Some(i64::MIN) => {
                return Reply::err(
                    "value is out of range, value must between -9223372036854775807 and 9223372036854775807",
                );
            }
            Some(count) => count,
            None => return not_integer(),
        };
        if args.len() > 4 || (args.len() == 4 && !eq(&args[3], "withvalues")) {
            return syntax_error();
        }
        let withvalues = args.len() == 4;
        if withvalues && !(-(i64::MAX / 2)..=i64::MAX / 2).contains(&count) {
            return Reply::err("value is out of range");
        }
        Some((count, withvalues))
    } else {
        None
    };
    let key = &args[1];
    let (len, fields) = tri_read!(read_hash_with(node, r, key, |r| {
        r.fields(key, None, usize::MAX)
    }));
    let pick = |n: usize| (random_u64() % n as u64) as usize;
    let Some((count, withvalues)) = counted else {
        return match len {
            0 => Reply::Null,
            _ => Reply::Bulk(fields[pick(fields.len())].0.clone()),
        };
    };
    if len == 0 || count == 0 || fields.is_empty() {
        return Reply::Array(Vec::new());
    }
    let chosen: Vec<usize> = if count < 0 {
        if count.unsigned_abs() > HRANDFIELD_REPEATS_MAX {
            return Reply::err(format!(
                "count is past the most fields HRANDFIELD gives with repeats ({HRANDFIELD_REPEATS_MAX})"
            ));
        }
        (0..count.unsigned_abs())
            .map(|_| pick(fields.len()))
            .collect()
    } else if count as u64 >= fields.len() as u64 {
        (0..fields.len()).collect()
    } else {
        // A partial shuffle: `count` distinct fields in random order.
        let mut order: Vec<usize> = (0..fields.len()).collect();
        for i in 0..count as usize {
            let j = i + pick(order.len() - i);
            order.swap(i, j);
        }
        order.truncate(count as usize);
        order
    };
    if withvalues {
        Reply::Pairs(
            chosen
                .into_iter()
                .map(|i| {
                    (
                        Reply::Bulk(fields[i].0.clone()),
                        Reply::Bulk(fields[i].1.clone()),
                    )
                })
                .collect(),
        )
    } else {
        Reply::Array(
            chosen
                .into_iter()
                .map(|i| Reply::Bulk(fields[i].0.clone()))
                .collect(),
        )
    }
}

/// A hash of at most this many fields is given whole by an HSCAN from
/// cursor 0, whatever its COUNT (as Redis gives a hash it keeps as a
/// listpack).
pub const HSCAN_WHOLE_FIELDS_MAX: usize = HASH_LISTPACK_ENTRIES_MAX as usize;

/// An HSCAN cursor of a larger hash stands for a field the server
/// remembers ([`crate::node::HSCAN_CURSORS_MAX`] of them).
fn hscan(node: &Node, r: &dyn Reader, args: &Args) -> Reply {
    let key = &args[1];
    let after = tri_read!(cursor_position(node, &args[2]));
    // As Redis: the key (missing: an empty scan) and its type before the
    // options.
    let options = scan_options(args, 3, false);
    // From the start, a small hash whole and cursor 0 (as Redis gives one
    // it holds as a listpack): no cursor to remember.
    let page = options.as_ref().map_or(0, |o| match after {
        None => o.count.max(HSCAN_WHOLE_FIELDS_MAX) + 1,
        Some(_) => o.count + 1,
    });
    let (len, batch) = tri_read!(read_hash_with(node, r, key, |r| {
        r.fields(key, after.as_deref(), page)
    }));
    if len == 0 {
        return Reply::Array(vec![Reply::bulk_str("0"), Reply::Array(Vec::new())]);
    }
    let o = tri_read!(options);
    let take = if after.is_none() && batch.len() <= HSCAN_WHOLE_FIELDS_MAX {
        batch.len()
    } else {
        o.count
    };
    let more = batch.len() > take;
    let batch = &batch[..batch.len().min(take)];
    let last = batch.last().map(|(f, _)| f.clone());
    let mut items = Vec::new();
    for (f, v) in batch {
        if o.pattern.as_ref().is_none_or(|p| glob::matches_key(p, f)) {
            items.push(Reply::Bulk(f.clone()));
            if !o.novalues {
                items.push(Reply::Bulk(v.clone()));
            }
        }
    }
    Reply::Array(vec![
        next_cursor(node, if more { last } else { None }),
        Reply::Array(items),
    ])
}

// ------------------------------------------------ connection and server

fn ping(_node: &Node, conn: &mut Conn, args: &Args) -> Reply {
    // A RESP2 subscriber's is a message-like array, as Redis's.
    let subscribed = !conn.resp3 && is_subscribed(conn);
    match args.len() {
        1 if subscribed => Reply::Array(vec![Reply::bulk("pong"), Reply::bulk("")]),
        2 if subscribed => Reply::Array(vec![Reply::bulk("pong"), Reply::Bulk(args[1].clone())]),
        1 => Reply::Simple("PONG".into()),
        2 => Reply::Bulk(args[1].clone()),
        _ => wrong_arity("ping"),
    }
}

/// Whether the client has subscriptions (Redis's Pub/Sub context).
pub fn is_subscribed(conn: &Conn) -> bool {
    conn.activity.is_subscriber()
}

/// What (un)subscribe command `name` subscribes to.
fn subscription_kind(name: &[u8]) -> crate::pubsub::Kind {
    use crate::pubsub::Kind;
    match name.to_ascii_lowercase().as_slice() {
        b"psubscribe" | b"punsubscribe" => Kind::Pattern,
        b"ssubscribe" | b"sunsubscribe" => Kind::Shard,
        _ => Kind::Channel,
    }
}

/// SUBSCRIBE, PSUBSCRIBE and SSUBSCRIBE: a confirmation per name.
fn subscribe(node: &Node, conn: &mut Conn, args: &Args) -> Reply {
    node.pubsub.subscribe(
        conn.id,
        &conn.activity,
        &mut conn.pubsub,
        subscription_kind(&args[0]),
        &args[1..],
    )
}

/// UNSUBSCRIBE, PUNSUBSCRIBE and SUNSUBSCRIBE: of the names given, or of
/// all of that kind.
fn unsubscribe(node: &Node, conn: &mut Conn, args: &Args) -> Reply {
    node.pubsub.unsubscribe(
        conn.id,
        &conn.activity,
        subscription_kind(&args[0]),
        &args[1..],
    )
}

/// The effect of PUBLISH or SPUBLISH on a primary: a record; the reply,
/// the deliveries it made, comes once it is applied (see the server's
/// `Queued::Published`).
pub fn publish(view: &mut View<'_>, args: &Args) -> EResult<Reply> {
    let published_at_ms = view.now_ms();
    view.push(Op::Publish(pb::Publish {
        channel: args[1].clone(),
        message: args[2].clone(),
        shard: is_shard_publish(args),
        published_at_ms,
    }))?;
    Ok(Reply::Int(0))
}

/// Whether `args` is SPUBLISH's.
pub fn is_shard_publish(args: &Args) -> bool {
    args[0].eq_ignore_ascii_case(b"spublish")
}

/// PUBSUB CHANNELS, NUMSUB, NUMPAT, SHARDCHANNELS, SHARDNUMSUB and HELP.
fn pubsub(node: &Node, _conn: &mut Conn, args: &Args) -> Reply {
    let sub = String::from_utf8_lossy(&args[1]).to_ascii_lowercase();
    let hub = &node.pubsub;
    match (sub.as_str(), args.len()) {
        ("channels" | "shardchannels", 2 | 3) => Reply::Array(
            hub.channels(sub == "shardchannels", args.get(2).map(|p| &p[..]))
                .into_iter()
                .map(Reply::Bulk)
                .collect(),
        ),
        ("numsub" | "shardnumsub", _) => Reply::Array(
            args[2..]
                .iter()
                .flat_map(|c| {
                    [
                        Reply::Bulk(c.clone()),
                        Reply::Int(hub.numsub(sub == "shardnumsub", c) as i64),
                    ]
                })
                .collect(),
        ),
        ("numpat", _) => Reply::Int(hub.figures().patterns as i64),
        ("help", _) => help(&[
            "PUBSUB <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "CHANNELS [<pattern>]",
            "    Return the currently active channels matching a <pattern> (default: '*').",
            "NUMPAT",
            "    Return number of subscriptions to patterns.",
            "NUMSUB [<channel> ...]",
            "    Return the number of subscribers for the specified channels, excluding",
            "    pattern subscriptions(default: no channels).",
            "SHARDCHANNELS [<pattern>]",
            "    Return the currently active shard level channels matching a <pattern> (default: '*').",
            "SHARDNUMSUB [<shardchannel> ...]",
            "    Return the number of subscribers for the specified shard level channel(s)",
            "HELP",
            "    Prints this help.",
        ]),
        // CHANNELS with more than a pattern: Redis's catch-all error.
        _ => Reply::err(format!(
            "unknown subcommand or wrong number of arguments for '{}'. Try PUBSUB HELP.",
            String::from_utf8_lossy(&args[1])
        )),
    }
}

/// TIME: the server's clock, seconds and microseconds.
fn time(_node: &Node, _conn: &mut Conn, _args: &Args) -> Reply {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Reply::Array(vec![
        Reply::bulk(now.as_secs().to_string()),
        Reply::bulk(now.subsec_micros().to_string()),
    ])
}

fn echo(_node: &Node, _conn: &mut Conn, args: &Args) -> Reply {
    Reply::Bulk(args[1].clone())
}

fn quit(_node: &Node, conn: &mut Conn, _args: &Args) -> Reply {
    conn.quit = true;
    Reply::ok()
}

/// RESET: the connection as a new one finds it, as Redis 7.0 leaves it: no
/// MONITOR, transaction or watched keys, RESP2, no name, logged out if a
/// password is required; the library it named stays (CLIENT SETINFO).
fn reset(node: &Node, conn: &mut Conn, _args: &Args) -> Reply {
    (conn.reply_off, conn.skip_next) = (false, false);
    conn.monitor = None;
    if conn.tracking.take().is_some() {
        node.tracking.disable(conn.id);
        conn.activity.tracking.store(false, Ordering::Relaxed);
        conn.activity.redirect.store(0, Ordering::Relaxed);
    }
    // Its messages so far go before RESET's reply (the server writes
    // what the inbox holds before each reply); none come after.
    node.pubsub.leave(conn.id, &conn.activity);
    conn.multi = None;
    conn.watch.clear();
    conn.resp3 = false;
    conn.activity.resp3.store(false, Ordering::Release);
    conn.name = None;
    conn.authenticated = !node.config.requirepass.required();
    Reply::Simple("RESET".into())
}

fn select(_node: &Node, _conn: &mut Conn, args: &Args) -> Reply {
    match parse_i64(&args[1]) {
        Some(0) => Reply::ok(),
        Some(_) => Reply::err("DB index is out of range"),
        None => not_integer(),
    }
}

/// Whether the client must authenticate before a command that needs it:
/// it has not, and a password is set now (see [`crate::node::Password`]).
pub fn must_authenticate(node: &Node, conn: &Conn) -> bool {
    !conn.authenticated && node.config.requirepass.required()
}

/// AUTH's check, as Redis's default user (the only one) makes it: without
/// `--requirepass` it takes any password, though the one-argument form is
/// an error then; with it, that password.
fn check_password(
    node: &Node,
    conn: &Conn,
    command: &Bytes,
    user: Option<&[u8]>,
    pass: &[u8],
) -> Result<(), Reply> {
    let user_ok = user.is_none_or(|u| u == b"default");
    let ok = match (node.config.requirepass.get(), user) {
        (None, None) => {
            return Err(Reply::err(
                "AUTH <password> called without any password configured for the default user. \
                 Are you sure your configuration is correct?",
            ));
        }
        (None, Some(_)) => user_ok,
        (Some(required), _) => user_ok && ferry_proto::auth::same(pass, &required),
    };
    if ok {
        return Ok(());
    }
    let client_info = node
        .clients
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&conn.id)
        .map(|info| crate::info::client_line(info, conn))
        .unwrap_or_default();
    node.log_auth_failure(crate::node::AclLogEntry {
        count: 1,
        context: if conn.in_exec { "multi" } else { "toplevel" },
        object: command.clone(),
        username: Bytes::copy_from_slice(user.unwrap_or(b"default")),
        at_ms: now_ms(),
        client_info,
    });
    Err(Reply::Error(
        "WRONGPASS invalid username-password pair or user is disabled.".into(),
    ))
}

fn auth(node: &Node, conn: &mut Conn, args: &Args) -> Reply {
    let result = match args.len() {
        2 => check_password(node, conn, &args[0], None, &args[1]),
        3 => check_password(node, conn, &args[0], Some(&args[1]), &args[2]),
        _ => return syntax_error(),
    };
    match result {
        Ok(()) => {
            conn.authenticated = true;
            Reply::ok()
        }
        Err(reply) => reply,
    }
}

/// A client name as CLIENT SETNAME and HELLO SETNAME take it, or Redis's
/// error.
fn check_client_name(name: &[u8]) -> Result<(), Reply> {
    if is_printable_word(name) {
        Ok(())
    } else {
        Err(Reply::err(
            "Client names cannot contain spaces, newlines or special characters.",
        ))
    }
}

fn hello(node: &Node, conn: &mut Conn, args: &Args) -> Reply {
    let mut i = 1;
    let mut resp3 = conn.resp3;
    if let Some(version) = args.get(1) {
        match parse_i64(version) {
            Some(2) => resp3 = false,
            Some(3) => resp3 = true,
            Some(_) => return Reply::Error("NOPROTO unsupported protocol version".into()),
            None => return Reply::err("Protocol version is not an integer or out of range"),
        }
        i = 2;
    }
    // The options in order, as Redis 7.0 takes them: AUTH logs in as it
    // comes (a bad option after it leaves the client logged in), a name is
    // set as it comes (a bad one before AUTH leaves it logged out; a bad
    // option after it leaves it set).
    while i < args.len() {
        if eq(&args[i], "auth") && i + 2 < args.len() {
            if let Err(reply) =
                check_password(node, conn, &args[0], Some(&args[i + 1]), &args[i + 2])
            {
                return reply;
            }
            conn.authenticated = true;
            i += 3;
        } else if eq(&args[i], "setname") && i + 1 < args.len() {
            if let Err(reply) = check_client_name(&args[i + 1]) {
                return reply;
            }
            let name = &args[i + 1];
            conn.name = (!name.is_empty()).then(|| name.clone());
            i += 2;
        } else {
            return Reply::err(format!(
                "Syntax error in HELLO option '{}'",
                String::from_utf8_lossy(&args[i])
            ));
        }
    }
    if must_authenticate(node, conn) {
        return Reply::Error("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time".into());
    }
    conn.resp3 = resp3;
    conn.activity.resp3.store(resp3, Ordering::Release);
    Reply::Map(vec![
        (Reply::bulk_str("server"), Reply::bulk_str("redis")),
        (
            Reply::bulk_str("version"),
            Reply::bulk_str(crate::info::REDIS_VERSION),
        ),
        (
            Reply::bulk_str("proto"),
            Reply::Int(if conn.resp3 { 3 } else { 2 }),
        ),
        (Reply::bulk_str("id"), Reply::Int(conn.id as i64)),
        (Reply::bulk_str("mode"), Reply::bulk_str("standalone")),
        (
            Reply::bulk_str("role"),
            Reply::bulk_str(if node.is_replica() {
                "replica"
            } else {
                "master"
            }),
        ),
        (Reply::bulk_str("modules"), Reply::Array(Vec::new())),
    ])
}

/// The longest CLIENT PAUSE, for a timeout past what the clock holds
/// (about 31 years).
pub const CLIENT_PAUSE_MAX: std::time::Duration = std::time::Duration::from_secs(1_000_000_000);

fn client(node: &Node, conn: &mut Conn, args: &Args) -> Reply {
    let sub = String::from_utf8_lossy(&args[1]).to_ascii_lowercase();
    match (sub.as_str(), args.len()) {
        ("setname", 3) => {
            if let Err(reply) = check_client_name(&args[2]) {
                return reply;
            }
            conn.name = (!args[2].is_empty()).then(|| args[2].clone());
            Reply::ok()
        }
        ("getname", 2) => Reply::opt_bulk(conn.name.clone()),
        ("tracking", 3..) => client_tracking(node, conn, &args[2..]),
        ("caching", 3) => {
            let Some(tracking) = conn.tracking.as_mut() else {
                return Reply::err(
                    "CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled",
                );
            };
            match (eq(&args[2], "yes"), eq(&args[2], "no")) {
                (true, _) if !tracking.options.optin => Reply::err(
                    "CLIENT CACHING YES is only valid when tracking is enabled in OPTIN mode.",
                ),
                (_, true) if !tracking.options.optout => Reply::err(
                    "CLIENT CACHING NO is only valid when tracking is enabled in OPTOUT mode.",
                ),
                (false, false) => syntax_error(),
                (yes, _) => {
                    tracking.caching = Some(yes);
                    Reply::ok()
                }
            }
        }
        // REDIRECT's client, 0 while tracking without, -1 if not tracking.
        ("getredir", 2) => Reply::Int(match &conn.tracking {
            Some(t) => t.options.redirect.unwrap_or(0),
            None => -1,
        }),
        ("trackinginfo", 2) => client_trackinginfo(node, conn),
        ("id", 2) => Reply::Int(conn.id as i64),
        ("info", 2) => {
            let clients = node.clients.lock().unwrap_or_else(|e| e.into_inner());
            match clients.get(&conn.id) {
                Some(info) => Reply::Verbatim(crate::info::client_line(info, conn).into()),
                None => Reply::Verbatim(Bytes::new()),
            }
        }
        ("list", n) => {
            // As Redis 7: every client, those of a TYPE (a RESP client here
            // is a normal one or a subscriber; replicas stream over gRPC),
            // or those of the IDs given, in their order.
            let mut of_type = None;
            let ids: Option<Vec<u64>> = match n {
                2 => None,
                4 if eq(&args[2], "type") => match client_type(&args[3]) {
                    Ok(Some(pubsub)) => {
                        of_type = Some(pubsub);
                        None
                    }
                    Ok(None) => Some(Vec::new()),
                    Err(reply) => return reply,
                },
                _ if n > 3 && eq(&args[2], "id") => {
                    let mut ids = Vec::with_capacity(n - 3);
                    for arg in &args[3..] {
                        match parse_i64(arg) {
                            Some(id) => ids.push(id as u64),
                            None => return Reply::err("Invalid client ID"),
                        }
                    }
                    Some(ids)
                }
                _ => return syntax_error(),
            };
            let clients = node.clients.lock().unwrap_or_else(|e| e.into_inner());
            let ids = ids.unwrap_or_else(|| {
                let mut all: Vec<u64> = clients.keys().copied().collect();
                all.sort_unstable();
                all
            });
            let text: String = ids
                .iter()
                .filter_map(|id| clients.get(id))
                .filter(|info| of_type.is_none_or(|pubsub| info.activity.is_subscriber() == pubsub))
                .map(|info| crate::info::client_line(info, conn))
                .collect();
            Reply::Verbatim(text.into())
        }
        ("kill", n) if n >= 3 => client_kill(node, conn, &args[2..]),
        ("help", 2) => help(&[
            "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "CACHING (YES|NO)",
            "    Enable/disable tracking of the keys for next command in OPTIN/OPTOUT modes.",
            "GETREDIR",
            "    Return the client ID we are redirecting to when tracking is enabled.",
            "GETNAME",
            "    Return the name of the current connection.",
            "ID",
            "    Return the ID of the current connection.",
            "INFO",
            "    Return information about the current client connection.",
            "KILL <ip:port>",
            "    Kill connection made from <ip:port>.",
            "KILL <option> <value> [<option> <value> [...]]",
            "    Kill connections. Options are:",
            "    * ADDR (<ip:port>|<unixsocket>:0)",
            "      Kill connections made from the specified address",
            "    * LADDR (<ip:port>|<unixsocket>:0)",
            "      Kill connections made to specified local address",
            "    * TYPE (NORMAL|MASTER|REPLICA|PUBSUB)",
            "      Kill connections by type.",
            "    * USER <username>",
            "      Kill connections authenticated by <username>.",
            "    * SKIPME (YES|NO)",
            "      Skip killing current connection (default: yes).",
            "LIST [options ...]",
            "    Return information about client connections. Options:",
            "    * TYPE (NORMAL|MASTER|REPLICA|PUBSUB)",
            "      Return clients of specified type.",
            "    * ID <client-id> [<client-id> ...]",
            "      Return clients of specified IDs only.",
            "NO-EVICT (ON|OFF)",
            "    Protect current client connection from eviction (ferry never evicts).",
            "PAUSE <timeout> [WRITE|ALL]",
            "    Suspend all, or just write, clients for <timeout> milliseconds.",
            "REPLY (ON|OFF|SKIP)",
            "    Control the replies sent to the current connection.",
            "SETINFO <option> <value>",
            "    Set client meta attr. Options are:",
            "    * LIB-NAME: the client lib name.",
            "    * LIB-VER: the client lib version.",
            "SETNAME <name>",
            "    Assign the name <name> to the current connection.",
            "TRACKING (ON|OFF) [BCAST] [PREFIX <prefix> [...]] [OPTIN] [OPTOUT] [NOLOOP]",
            "    Control server assisted client side caching (invalidations as RESP3 pushes).",
            "TRACKINGINFO",
            "    Report tracking status for the current connection.",
            "UNPAUSE",
            "    Stop the current client pause, resuming traffic.",
            "HELP",
            "    Prints this help.",
        ]),
        ("pause", 3 | 4) => {
            let ms = match timeout_ms_arg(&args[2]) {
                Ok(ms) => ms,
                Err(reply) => return reply,
            };
            let all = match args.get(3) {
                None => true,
                Some(mode) if eq(mode, "all") => true,
                Some(mode) if eq(mode, "write") => false,
                Some(_) => return Reply::err("CLIENT PAUSE mode must be WRITE or ALL"),
            };
            // Past what an Instant holds: as good as for ever.
            let now = std::time::Instant::now();
            let until = now
                .checked_add(std::time::Duration::from_millis(ms))
                .unwrap_or(now + CLIENT_PAUSE_MAX);
            node.pipeline.pause(PausePurpose::Client, until, all);
            Reply::ok()
        }
        ("unpause", 2) => {
            node.pipeline.unpause(PausePurpose::Client);
            Reply::ok()
        }
        // As Redis's: OFF's and SKIP's own replies are not sent either.
        ("reply", 3) if eq(&args[2], "on") => {
            (conn.reply_off, conn.skip_next) = (false, false);
            Reply::ok()
        }
        ("reply", 3) if eq(&args[2], "off") => {
            conn.reply_off = true;
            Reply::ok()
        }
        // (Under OFF, SKIP changes nothing: ON's reply is sent.)
        ("reply", 3) if eq(&args[2], "skip") => {
            if !conn.reply_off {
                (conn.skip_this, conn.skip_next) = (true, true);
            }
            Reply::ok()
        }
        ("reply", 3) => syntax_error(),
        // Nothing to protect from: ferry never evicts a client.
        ("no-evict", 3) if eq(&args[2], "on") || eq(&args[2], "off") => Reply::ok(),
        ("no-evict", 3) => syntax_error(),
        // Past a mode: Redis's catch-all error.
        ("pause", n) if n > 4 => Reply::err(format!(
            "unknown subcommand or wrong number of arguments for '{}'. Try CLIENT HELP.",
            String::from_utf8_lossy(&args[1])
        )),
        ("setinfo", 4) => {
            let attr = String::from_utf8_lossy(&args[2]).to_ascii_lowercase();
            let slot = match attr.as_str() {
                "lib-name" => &mut conn.lib_name,
                "lib-ver" => &mut conn.lib_ver,
                _ => {
                    return Reply::err(format!(
                        "Unrecognized option '{}'",
                        String::from_utf8_lossy(&args[2])
                    ));
                }
            };
            if !is_printable_word(&args[3]) {
                return Reply::err(format!(
                    "{} cannot contain spaces, newlines or special characters.",
                    String::from_utf8_lossy(&args[2])
                ));
            }
            *slot = (!args[3].is_empty()).then(|| args[3].clone());
            Reply::ok()
        }
        _ => subcommand_error("client", &args[1]),
    }
}

/// CLIENT KILL, as Redis 7's: the old form (`CLIENT KILL ip:port`, which
/// may kill the caller) answers OK or an error; the filters (ID, ADDR,
/// LADDR, TYPE, USER, SKIPME, all of them to match) answer how many
/// connections were killed. A killed connection closes once what it is
/// running is answered; the caller, if killed, after this reply.
/// A TYPE of CLIENT LIST and CLIENT KILL: `Some(false)` normal clients,
/// `Some(true)` subscribers (Redis's `pubsub`), `None` a type no RESP
/// client here has (replicas stream over gRPC).
fn client_type(name: &[u8]) -> Result<Option<bool>, Reply> {
    match String::from_utf8_lossy(name).to_ascii_lowercase().as_str() {
        "normal" => Ok(Some(false)),
        "pubsub" => Ok(Some(true)),
        "master" | "replica" | "slave" => Ok(None),
        _ => Err(Reply::err(format!(
            "Unknown client type '{}'",
            String::from_utf8_lossy(name)
        ))),
    }
}

fn client_kill(node: &Node, conn: &mut Conn, filters: &[Bytes]) -> Reply {
    let old_form = filters.len() == 1;
    // `of_type`: see [`client_type`]; `Some(None)`, none of them.
    let (mut id, mut addr, mut laddr, mut of_type, mut skipme) =
        (None, None, None, None, !old_form);
    let mut rest = if old_form {
        addr = Some(&filters[0]);
        &[][..]
    } else {
        filters
    };
    // Option by option, as Redis: an error in one comes before a later
    // option's missing value.
    while let Some((option, after)) = rest.split_first() {
        let Some((value, after)) = after.split_first() else {
            return syntax_error();
        };
        rest = after;
        let option = String::from_utf8_lossy(option).to_ascii_lowercase();
        match option.as_str() {
            "id" => match parse_i64(value) {
                Some(n) if n >= 1 => id = Some(n as u64),
                _ => return Reply::err("client-id should be greater than 0"),
            },
            "type" => match client_type(value) {
                Ok(kind) => of_type = Some(kind),
                Err(reply) => return reply,
            },
            "addr" => addr = Some(value),
            "laddr" => laddr = Some(value),
            // Every client is the default user's.
            "user" if value.as_ref() == b"default" => {}
            "user" => {
                return Reply::err(format!("No such user '{}'", String::from_utf8_lossy(value)));
            }
            "skipme" if eq(value, "yes") => skipme = true,
            "skipme" if eq(value, "no") => skipme = false,
            _ => return syntax_error(),
        }
    }
    let mut killed = 0;
    if of_type != Some(None) {
        let clients = node.clients.lock().unwrap_or_else(|e| e.into_inner());
        for info in clients.values() {
            let matches = id.is_none_or(|id| info.id == id)
                && addr.is_none_or(|a| a.as_ref() == info.addr.as_bytes())
                && laddr.is_none_or(|a| a.as_ref() == info.laddr.as_bytes())
                && of_type
                    .flatten()
                    .is_none_or(|pubsub| info.activity.is_subscriber() == pubsub);
            // One killed already and still closing is not counted again.
            let closing = info
                .activity
                .killed
                .load(std::sync::atomic::Ordering::Acquire);
            if !matches || closing || (skipme && info.id == conn.id) {
                continue;
            }
            if info.id == conn.id {
                conn.quit = true;
            } else {
                info.activity.kill();
            }
            killed += 1;
        }
    }
    match (old_form, killed) {
        (true, 0) => Reply::err("No such client"),
        (true, _) => Reply::ok(),
        (false, n) => Reply::Int(n),
    }
}

/// Whether a client name or library label has only printable characters
/// and no spaces, as Redis requires.
fn is_printable_word(text: &[u8]) -> bool {
    text.iter().all(|&b| b > b' ' && b <= b'~')
}

/// A container's HELP: its lines as simple strings, as Redis's.
fn help(lines: &[&str]) -> Reply {
    Reply::Array(
        lines
            .iter()
            .map(|line| Reply::Simple(line.to_string().into()))
            .collect(),
    )
}

/// Redis's error for a subcommand of a container command (CLIENT, CONFIG,
/// COMMAND) that it cannot run: a known one (in [`SUBCOMMANDS`]) with the
/// wrong number of arguments, or an unknown one.
fn subcommand_error(command: &str, sub: &[u8]) -> Reply {
    let lowered = String::from_utf8_lossy(sub).to_ascii_lowercase();
    if subcommands_of(command)
        .unwrap_or_default()
        .iter()
        .any(|(s, _)| *s == lowered)
    {
        return wrong_arity(&format!("{command}|{lowered}"));
    }
    let end = sub
        .iter()
        .position(|&c| c == 0)
        .unwrap_or(sub.len())
        .min(128);
    let shown: String = String::from_utf8_lossy(&sub[..end])
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    Reply::err(format!(
        "unknown subcommand '{shown}'. Try {} HELP.",
        command.to_ascii_uppercase()
    ))
}

fn command_info(spec: &Spec) -> Reply {
    Reply::Array(vec![
        Reply::bulk_str(spec.name),
        Reply::Int(spec.arity),
        Reply::Array(
            spec.flags
                .iter()
                .map(|f| Reply::Simple((*f).into()))
                .collect(),
        ),
        Reply::Int(spec.first_key),
        Reply::Int(spec.last_key),
        Reply::Int(spec.step),
        Reply::Array(
            acl_categories(spec.name)
                .iter()
                .map(|c| Reply::Simple(format!("@{c}").into()))
                .collect(),
        ),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
    ])
}

fn command(_node: &Node, _conn: &mut Conn, args: &Args) -> Reply {
    let sub = args
        .get(1)
        .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase());
    match sub.as_deref() {
        None => Reply::Array(COMMANDS.iter().map(command_info).collect()),
        Some("count") if args.len() == 2 => Reply::Int(COMMANDS.len() as i64),
        // Every command without names, as COMMAND; a null for an unknown
        // one.
        Some("info") if args.len() == 2 => {
            Reply::Array(COMMANDS.iter().map(command_info).collect())
        }
        Some("info") => Reply::Array(
            args[2..]
                .iter()
                .map(|name| lookup(name).map_or(Reply::Null, command_info))
                .collect(),
        ),
        Some("help") if args.len() == 2 => help(&[
            "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "(no subcommand)",
            "    Return details about all Redis commands.",
            "COUNT",
            "    Return the total number of commands in this Redis server.",
            "LIST",
            "    Return a list of all commands in this Redis server.",
            "INFO [<command-name> ...]",
            "    Return details about multiple Redis commands.",
            "    If no command names are given, documentation details for all",
            "    commands are returned.",
            "DOCS [<command-name> ...]",
            "    Return documentation details about multiple Redis commands.",
            "    If no command names are given, documentation details for all",
            "    commands are returned.",
            "GETKEYS <full-command>",
            "    Return the keys from a full Redis command.",
            "HELP",
            "    Prints this help.",
        ]),
        Some("docs") => {
            let specs: Vec<&Spec> = if args.len() > 2 {
                args[2..].iter().filter_map(|n| lookup(n)).collect()
            } else {
                COMMANDS.iter().collect()
            };
            Reply::Map(
                specs
                    .into_iter()
                    .map(|s| {
                        let mut doc = docs_of(s.name);
                        if let (Some(subs), Reply::Map(fields)) = (subcommands_of(s.name), &mut doc)
                        {
                            let subs = subs
                                .iter()
                                .map(|(sub, _)| {
                                    let full = format!("{}|{sub}", s.name);
                                    let doc = docs_of(&full);
                                    (Reply::bulk_str(&full), doc)
                                })
                                .collect();
                            fields.push((Reply::bulk_str("subcommands"), Reply::Map(subs)));
                        }
                        (Reply::bulk_str(s.name), doc)
                    })
                    .collect(),
            )
        }
        Some("getkeys") if args.len() >= 4 => command_getkeys(&args[2..]),
        Some("list") => command_list(&args[2..]),
        Some(_) => subcommand_error("command", &args[1]),
    }
}

/// CLUSTER (its subcommands checked as Redis checks them), READONLY,
/// READWRITE and ASKING: as a Redis without cluster support answers them.
fn cluster(_node: &Node, _conn: &mut Conn, _args: &Args) -> Reply {
    Reply::err("This instance has cluster support disabled")
}

/// CLIENT TRACKING ON|OFF [options], as Redis's (see [`crate::tracking`]):
/// ON again adds prefixes, but may not change the mode; OFF ends it.
fn client_tracking(node: &Node, conn: &mut Conn, args: &[Bytes]) -> Reply {
    let on = match (eq(&args[0], "on"), eq(&args[0], "off")) {
        (true, _) => true,
        (_, true) => false,
        _ => return syntax_error(),
    };
    let exists = |id: i64| {
        let clients = node.clients.lock().unwrap_or_else(|e| e.into_inner());
        u64::try_from(id).is_ok_and(|id| clients.contains_key(&id))
    };
    let mut options = match crate::tracking::parse_options(&args[1..], exists) {
        Ok(options) => options,
        Err(text) => return Reply::Error(text),
    };
    if !on {
        if conn.tracking.take().is_some() {
            node.tracking.disable(conn.id);
        }
        conn.activity.tracking.store(false, Ordering::Relaxed);
        conn.activity.redirect.store(0, Ordering::Relaxed);
        return Reply::ok();
    }
    conn.activity
        .redirect
        .store(options.redirect.unwrap_or(0), Ordering::Relaxed);
    // BCAST without a prefix: every key (the empty prefix, as Redis
    // lists it).
    let every_key = options.bcast && options.prefixes.is_empty();
    if let Some(tracking) = &mut conn.tracking {
        let old = &tracking.options;
        if old.bcast != options.bcast {
            return Reply::err(
                "You can't switch BCAST mode on/off before disabling tracking for this client, and then re-enabling it with a different mode.",
            );
        }
        // OPTIN to OPTOUT or back; to neither is let through.
        if (options.optin && old.optout) || (options.optout && old.optin) {
            return Reply::err(
                "You can't switch OPTIN/OPTOUT mode before disabling tracking for this client, and then re-enabling it with a different mode.",
            );
        }
        if let Err(text) = crate::tracking::check_prefixes(&old.prefixes, &options.prefixes) {
            return Reply::Error(text);
        }
        // The prefixes add up; the other options are the ones given now,
        // as Redis sets them anew.
        let mut all = old.prefixes.clone();
        all.append(&mut options.prefixes);
        if every_key && !all.iter().any(|p| p.is_empty()) {
            all.push(Bytes::new());
        }
        all.sort_unstable();
        options.prefixes = all;
        node.tracking.update(conn.id, options.clone());
        tracking.options = options;
        return Reply::ok();
    }
    if every_key {
        options.prefixes.push(Bytes::new());
    }
    options.prefixes.sort_unstable();
    node.tracking.enable(conn.id, options.clone());
    conn.tracking = Some(crate::tracking::ClientTracking {
        options,
        caching: None,
    });
    conn.activity.tracking.store(true, Ordering::Relaxed);
    Reply::ok()
}

/// CLIENT TRACKINGINFO, as Redis's: flags, redirect and prefixes.
fn client_trackinginfo(node: &Node, conn: &Conn) -> Reply {
    let mut flags = Vec::new();
    let mut redirect = -1;
    let mut prefixes = Vec::new();
    match &conn.tracking {
        None => flags.push("off"),
        Some(t) => {
            flags.push("on");
            let o = &t.options;
            redirect = o.redirect.unwrap_or(0);
            if o.bcast {
                flags.push("bcast");
            }
            if o.optin {
                flags.push("optin");
                if t.caching == Some(true) {
                    flags.push("caching-yes");
                }
            }
            if o.optout {
                flags.push("optout");
                if t.caching == Some(false) {
                    flags.push("caching-no");
                }
            }
            if o.noloop {
                flags.push("noloop");
            }
            if node.tracking.redirect_broken(conn.id) {
                flags.push("broken_redirect");
            }
            prefixes = o.prefixes.iter().cloned().map(Reply::Bulk).collect();
        }
    }
    Reply::Map(vec![
        (
            Reply::bulk_str("flags"),
            Reply::Set(flags.into_iter().map(Reply::bulk_str).collect()),
        ),
        (Reply::bulk_str("redirect"), Reply::Int(redirect)),
        (Reply::bulk_str("prefixes"), Reply::Array(prefixes)),
    ])
}

/// The keys of a command line, by its spec's key positions (none if they
/// do not fit the line).
pub fn keys_of(spec: &Spec, line: &[Bytes]) -> Vec<Bytes> {
    if spec.first_key == 0 {
        return Vec::new();
    }
    let argc = line.len() as i64;
    let last = if spec.last_key < 0 {
        argc + spec.last_key
    } else {
        spec.last_key
    };
    if last >= argc {
        return Vec::new();
    }
    (spec.first_key..=last)
        .step_by(spec.step.max(1) as usize)
        .map(|i| line[i as usize].clone())
        .collect()
}

/// COMMAND DOCS' entry of a command or subcommand (`client|kill`): its
/// summary, the Redis version that brought it, its group.
fn docs_of(name: &str) -> Reply {
    let (since, group, summary) = crate::docs::of(name).unwrap_or(("", "", ""));
    Reply::Map(vec![
        (Reply::bulk_str("summary"), Reply::bulk_str(summary)),
        (Reply::bulk_str("since"), Reply::bulk_str(since)),
        (Reply::bulk_str("group"), Reply::bulk_str(group)),
    ])
}

/// COMMAND GETKEYS: the keys of a command line, by its key positions
/// (first, last, step), with Redis's errors.
fn command_getkeys(line: &[Bytes]) -> Reply {
    let Some(spec) = lookup(&line[0]) else {
        return Reply::err("Invalid command specified");
    };
    // A container's subcommand must exist.
    if let (Some(subcommands), Some(sub)) = (subcommands_of(spec.name), line.get(1))
        && !subcommands
            .iter()
            .any(|(name, _)| sub.eq_ignore_ascii_case(name.as_bytes()))
    {
        return Reply::err("Invalid command specified");
    }
    if spec.first_key == 0 {
        return Reply::err("The command has no key arguments");
    }
    let argc = line.len() as i64;
    if (spec.arity > 0 && spec.arity != argc) || argc < -spec.arity {
        return Reply::err("Invalid number of arguments specified for command");
    }
    let keys = keys_of(spec, line);
    if keys.is_empty() {
        return Reply::err("Invalid arguments specified for command");
    }
    Reply::Array(keys.into_iter().map(Reply::Bulk).collect())
}

/// The ACL categories of a command or subcommand (`client|kill`), as
/// Redis 7.0 gives them.
fn acl_categories(full_name: &str) -> &'static [&'static str] {
    ACL_CATEGORIES
        .binary_search_by(|(name, _)| name.cmp(&full_name))
        .map_or(&[], |i| ACL_CATEGORIES[i].1)
}

/// The names of the commands and of their subcommands (`client|kill`).
pub(crate) fn command_names() -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for spec in COMMANDS {
        names.push(spec.name.to_string());
        for (sub, _) in subcommands_of(spec.name).unwrap_or_default() {
            names.push(format!("{}|{sub}", spec.name));
        }
    }
    names
}

/// ACL CAT's categories, in Redis's order.
const ACL_CATEGORY_NAMES: &[&str] = &[
    "keyspace",
    "read",
    "write",
    "set",
    "sortedset",
    "list",
    "hash",
    "string",
    "bitmap",
    "hyperloglog",
    "geo",
    "stream",
    "pubsub",
    "admin",
    "fast",
    "slow",
    "blocking",
    "dangerous",
    "connection",
    "transaction",
    "scripting",
];

/// Bits of ACL GENPASS's password unless asked (Redis's), and the most.
const ACL_GENPASS_BITS_DEFAULT: i64 = 256;
const ACL_GENPASS_BITS_MAX: i64 = 4096;

/// ACL, as Redis 7.0 answers it for a server with the default user alone
/// (ferry's one user, whose password is `--requirepass`): WHOAMI, USERS,
/// LIST, GETUSER, CAT, LOG (failed authentications, the only denials), DRYRUN,
/// GENPASS, DELUSER (of users that do not exist) and HELP. Users cannot be
/// added or changed: SETUSER, LOAD and SAVE are refused.
fn acl(node: &Node, _conn: &mut Conn, args: &Args) -> Reply {
    let sub = String::from_utf8_lossy(&args[1]).to_ascii_lowercase();
    let password = node.config.requirepass.get();
    // Redis's catch-all, past what a subcommand takes.
    let too_many = || {
        Reply::err(format!(
            "unknown subcommand or wrong number of arguments for '{}'. Try ACL HELP.",
            String::from_utf8_lossy(&args[1])
        ))
    };
    match (sub.as_str(), args.len()) {
        ("whoami", 2) => Reply::bulk_str("default"),
        ("users", 2) => Reply::Array(vec![Reply::bulk_str("default")]),
        ("list", 2) => Reply::Array(vec![Reply::bulk_str(&match password {
            None => "user default on nopass ~* &* +@all".to_string(),
            Some(p) => format!("user default on #{} ~* &* +@all", sha256_hex(&p)),
        })]),
        ("getuser", 3) if args[2] != b"default"[..] => Reply::Null,
        ("getuser", 3) => {
            let (flags, passwords) = match password {
                None => (vec!["on", "nopass"], vec![]),
                Some(p) => (vec!["on"], vec![Reply::bulk_str(&sha256_hex(&p))]),
            };
            Reply::Map(vec![
                (
                    Reply::bulk_str("flags"),
                    Reply::Set(flags.into_iter().map(Reply::bulk_str).collect()),
                ),
                (Reply::bulk_str("passwords"), Reply::Array(passwords)),
                (Reply::bulk_str("commands"), Reply::bulk_str("+@all")),
                (Reply::bulk_str("keys"), Reply::bulk_str("~*")),
                (Reply::bulk_str("channels"), Reply::bulk_str("&*")),
                (Reply::bulk_str("selectors"), Reply::Array(vec![])),
            ])
        }
        ("cat", 2) => Reply::Array(
            ACL_CATEGORY_NAMES
                .iter()
                .map(|c| Reply::bulk_str(c))
                .collect(),
        ),
        ("cat", 3) => {
            let category = String::from_utf8_lossy(&args[2]).to_ascii_lowercase();
            if !ACL_CATEGORY_NAMES.contains(&category.as_str()) {
                return Reply::err(format!(
                    "Unknown category '{}'",
                    String::from_utf8_lossy(&args[2])
                ));
            }
            Reply::Array(
                command_names()
                    .into_iter()
                    .filter(|name| acl_categories(name).contains(&category.as_str()))
                    .map(|name| Reply::Bulk(name.into()))
                    .collect(),
            )
        }
        ("cat", 4..) => too_many(),
        ("log", 2) => acl_log(node, usize::MAX),
        ("log", 3) if eq(&args[2], "reset") => {
            node.acl_log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
            Reply::ok()
        }
        ("log", 3) => match parse_i64(&args[2]) {
            Some(count) => acl_log(node, count.max(0) as usize),
            None => not_integer(),
        },
        ("log", 4..) => too_many(),
        ("dryrun", 4..) => {
            if args[2] != b"default"[..] {
                return Reply::err(format!(
                    "User '{}' not found",
                    String::from_utf8_lossy(&args[2])
                ));
            }
            let Some(spec) = lookup(&args[3]) else {
                return Reply::err(format!(
                    "Command '{}' not found",
                    String::from_utf8_lossy(&args[3])
                ));
            };
            let argc = args.len() as i64 - 3;
            if (spec.arity > 0 && argc != spec.arity) || argc < -spec.arity {
                return wrong_arity(spec.name);
            }
            // The default user may run everything.
            Reply::ok()
        }
        ("genpass", 2 | 3) => {
            let bits = match args.get(2) {
                None => ACL_GENPASS_BITS_DEFAULT,
                Some(b) => match int_arg(b) {
                    Ok(bits) => bits,
                    Err(reply) => return reply,
                },
            };
            if bits <= 0 || bits > ACL_GENPASS_BITS_MAX {
                return Reply::err(
                    "ACL GENPASS argument must be the number of bits for the output password, a positive number up to 4096",
                );
            }
            let chars = (bits as usize).div_ceil(4);
            let mut bytes = vec![0u8; chars.div_ceil(2)];
            if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err()
            {
                return Reply::err("ACL GENPASS: the system's random source failed");
            }
            let mut hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            hex.truncate(chars);
            Reply::Bulk(hex.into())
        }
        ("genpass", 4..) => too_many(),
        ("deluser", 3..) if args[2..].iter().any(|u| u == &b"default"[..]) => {
            Reply::err("The 'default' user cannot be removed")
        }
        // No other user exists: none was removed.
        ("deluser", 3..) => Reply::Int(0),
        ("setuser", 3..) | ("load", 2) | ("save", 2) => Reply::err(
            "ferry has the default user alone, whose password is --requirepass: users cannot be added or changed",
        ),
        ("help", 2) => help(&[
            "ACL <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "CAT [<category>]",
            "    List all commands that belong to <category>, or all command categories",
            "    when no category is specified.",
            "DELUSER <username> [<username> ...]",
            "    Delete a list of users (ferry has the default user alone).",
            "DRYRUN <username> <command> [<arg> ...]",
            "    Returns whether the user can execute the given command without executing the command.",
            "GETUSER <username>",
            "    Get the user's details.",
            "GENPASS [<bits>]",
            "    Generate a secure 256-bit user password. The optional `bits` argument can",
            "    be used to specify a different size.",
            "LIST",
            "    Show users details in config file format.",
            "LOG [<count> | RESET]",
            "    Show the ACL log entries.",
            "USERS",
            "    List all the registered usernames.",
            "WHOAMI",
            "    Return the current connection username.",
            "HELP",
            "    Prints this help.",
        ]),
        _ => subcommand_error("acl", &args[1]),
    }
}

/// ACL LOG's newest `count` entries, as Redis 7.0 shows them.
fn acl_log(node: &Node, count: usize) -> Reply {
    let now = now_ms();
    let log = node.acl_log.lock().unwrap_or_else(|e| e.into_inner());
    Reply::Array(
        log.iter()
            .take(count)
            .map(|e| {
                let field = |name: &str, value: Reply| (Reply::bulk_str(name), value);
                Reply::Map(vec![
                    field("count", Reply::Int(e.count as i64)),
                    field("reason", Reply::bulk_str("auth")),
                    field("context", Reply::bulk_str(e.context)),
                    field("object", Reply::Bulk(e.object.clone())),
                    field("username", Reply::Bulk(e.username.clone())),
                    field(
                        "age-seconds",
                        Reply::Double(now.saturating_sub(e.at_ms) as f64 / 1000.0),
                    ),
                    field("client-info", Reply::bulk_str(&e.client_info)),
                ])
            })
            .collect(),
    )
}

/// SHA-256 of `text` in hex, as ACL shows a password.
fn sha256_hex(text: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, text)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// COMMAND LIST [FILTERBY MODULE name | ACLCAT category | PATTERN glob]:
/// the names of the commands and of their subcommands (`client|kill`).
fn command_list(options: &[Bytes]) -> Reply {
    let names = command_names();
    let keep: Box<dyn Fn(&str) -> bool> = match options {
        [] => Box::new(|_| true),
        [filterby, kind, arg] if eq(filterby, "filterby") => {
            let kind = String::from_utf8_lossy(kind).to_ascii_lowercase();
            match kind.as_str() {
                // No modules here.
                "module" => Box::new(|_| false),
                "pattern" => Box::new(move |name| crate::glob::matches(arg, name.as_bytes(), true)),
                "aclcat" => {
                    let category = String::from_utf8_lossy(arg).into_owned();
                    Box::new(move |name| {
                        acl_categories(name)
                            .iter()
                            .any(|c| c.eq_ignore_ascii_case(&category))
                    })
                }
                _ => return syntax_error(),
            }
        }
        _ => return syntax_error(),
    };
    Reply::Array(
        names
            .into_iter()
            .filter(|name| keep(name))
            .map(|name| Reply::Bulk(name.into()))
            .collect(),
    )
}

fn config(node: &Node, _conn: &mut Conn, args: &Args) -> Reply {
    let sub = String::from_utf8_lossy(&args[1]).to_ascii_lowercase();
    match sub.as_str() {
        "get" if args.len() >= 3 => {
            let params = crate::info::config_params(node);
            // Each setting under its name, and its older names, as Redis
            // shows them.
            let names = params.iter().flat_map(|(name, value)| {
                let old = crate::config_file::RENAMED
                    .iter()
                    .filter(move |(_, now)| now == name)
                    .map(|(old, _)| *old);
                std::iter::once(name.as_str())
                    .chain(old)
                    .map(move |shown| (shown, value))
            });
            let mut out = Vec::new();
            // Once each, by name in any case.
            let mut seen: Vec<String> = Vec::new();
            for pattern in &args[2..] {
                if !pattern.iter().any(|b| matches!(b, b'*' | b'?' | b'[')) {
                    // A plain name: looked up, and shown as it was asked.
                    let asked = String::from_utf8_lossy(pattern).to_ascii_lowercase();
                    if let Some((_, value)) = names.clone().find(|(n, _)| *n == asked)
                        && !seen.contains(&asked)
                    {
                        seen.push(asked);
                        out.push((Reply::Bulk(pattern.clone()), Reply::bulk_str(value)));
                    }
                    continue;
                }
                for (shown, value) in names.clone() {
                    if !seen.iter().any(|s| s == shown)
                        && glob::matches(pattern, shown.as_bytes(), true)
                    {
                        seen.push(shown.to_string());
                        out.push((Reply::bulk_str(shown), Reply::bulk_str(value)));
                    }
                }
            }
            Reply::Map(out)
        }
        "set" if args.len() >= 4 => config_set(node, &args[2..]),
        "rewrite" if args.len() == 2 => config_rewrite(node),
        "resetstat" if args.len() == 2 => {
            node.stats.reset(crate::info::rss_bytes());
            node.stats
                .pubsub_closed_base
                .store(node.pubsub.figures().closed, Ordering::Relaxed);
            Reply::ok()
        }
        "help" if args.len() == 2 => help(&[
            "CONFIG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "GET <pattern>",
            "    Return parameters matching the glob-like <pattern> and their values.",
            "SET <directive> <value> [<directive> <value> ...]",
            "    Set the configuration <directive> to <value>: timeout, tcp-keepalive,",
            "    shutdown-timeout, slowlog-log-slower-than, slowlog-max-len,",
            "    latency-monitor-threshold, replica-serve-stale-data, maxclients,",
            "    requirepass, acllog-max-len, appendfsync, proto-max-bulk-len,",
            "    proto-max-multibulk-len, client-query-buffer-limit, min-replicas-to-write,",
            "    min-replicas-max-lag. Others are flags of",
            "    ferry serve.",
            "RESETSTAT",
            "    Reset statistics reported by the INFO command.",
            "REWRITE",
            "    Rewrite the configuration file.",
            "HELP",
            "    Prints this help.",
        ]),
        _ => subcommand_error("config", &args[1]),
    }
}

/// What CONFIG SET may change while the node runs, under Redis's names:
/// the bounds Redis gives each, and where it goes.
#[derive(Debug, Clone, Copy)]
enum Settable {
    /// An integer within bounds (inclusive).
    Int(i64, i64),
    /// A number of bytes within bounds (inclusive), with or without a
    /// unit ([`parse_memory`]).
    Memory(i64, i64),
    /// `yes` or `no`.
    YesNo,
    /// Any bytes.
    Text,
    /// A WAL sync policy: `always`, `everysec` or `no`.
    SyncPolicy,
    /// Keyspace notifications' classes ([`crate::notify::parse`]).
    KeyspaceEvents,
    /// `client-output-buffer-limit`'s classes
    /// ([`crate::pubsub::parse_output_limits`]).
    OutputLimits,
    /// Only the value that is what ferry does (a script's `CONFIG SET save
    /// ""` goes through); any other is refused with the reason.
    Only(&'static str, &'static str),
}

/// A value CONFIG SET checked, to set.
enum Setting<'a> {
    /// As it is already.
    Same,
    Int(i64),
    Text(&'a Bytes),
    SyncPolicy(ferry_wal::SyncPolicy),
    OutputLimits([crate::pubsub::OutputLimit; 3]),
}

const SETTABLE: &[(&str, Settable)] = &[
    ("acllog-max-len", Settable::Int(0, i64::MAX)),
    ("appendfsync", Settable::SyncPolicy),
    (
        "appendonly",
        Settable::Only(
            "yes",
            "ferry logs every write to its WAL: appendonly is always yes",
        ),
    ),
    ("client-output-buffer-limit", Settable::OutputLimits),
    (
        "client-query-buffer-limit",
        Settable::Memory(1 << 20, i64::MAX),
    ),
    ("latency-monitor-threshold", Settable::Int(0, i64::MAX)),
    ("maxclients", Settable::Int(1, u32::MAX as i64)),
    ("min-replicas-max-lag", Settable::Int(0, i32::MAX as i64)),
    ("min-replicas-to-write", Settable::Int(0, i32::MAX as i64)),
    ("notify-keyspace-events", Settable::KeyspaceEvents),
    ("proto-max-bulk-len", Settable::Memory(1 << 20, i64::MAX)),
    // ferry's own (Redis's is fixed).
    ("proto-max-multibulk-len", Settable::Int(1, i32::MAX as i64)),
    ("replica-serve-stale-data", Settable::YesNo),
    ("requirepass", Settable::Text),
    (
        "save",
        Settable::Only(
            "",
            "ferry takes no snapshots on a schedule: its WAL keeps every write",
        ),
    ),
    ("shutdown-timeout", Settable::Int(0, i32::MAX as i64)),
    ("slowlog-log-slower-than", Settable::Int(-1, i64::MAX)),
    ("slowlog-max-len", Settable::Int(0, i64::MAX)),
    ("tcp-keepalive", Settable::Int(0, i32::MAX as i64)),
    ("timeout", Settable::Int(0, i32::MAX as i64)),
    ("tracking-table-max-keys", Settable::Int(0, i64::MAX)),
];

/// Checks a number given for setting `name` (a flag of `ferry serve`)
/// against the bounds CONFIG SET holds it to, so that a node never starts
/// with a value it would refuse at run time; settings CONFIG SET does not
/// take are not checked here.
///
/// # Errors
///
/// The bounds, for a value outside them.
pub fn check_setting(name: &str, value: i64) -> Result<(), String> {
    match SETTABLE.iter().find(|(n, _)| *n == name) {
        Some((_, Settable::Int(low, high) | Settable::Memory(low, high)))
            if value < *low || value > *high =>
        {
            Err(format!("must be between {low} and {high}, not {value}"))
        }
        _ => Ok(()),
    }
}

/// CONFIG SET name value [name value ...], as Redis 7.0's: every pair is
/// checked (Redis's errors, in its order) before any is set, so either all
/// take effect or none. The parameters CONFIG GET shows but [`SETTABLE`]
/// lacks are flags of `ferry serve`, refused as Redis refuses its
/// immutable ones.
fn config_set(node: &Node, pairs: &Args) -> Reply {
    if !pairs.len().is_multiple_of(2) {
        return syntax_error();
    }
    let failed = |name: &str, why: &str| {
        Reply::err(format!(
            "CONFIG SET failed (possibly related to argument '{name}') - {why}"
        ))
    };
    let known = crate::info::config_params(node);
    // Errors name the parameter as the client wrote it, as Redis's do.
    let mut chosen: Vec<(&'static str, String, Settable, &Bytes)> = Vec::new();
    for pair in pairs.chunks(2) {
        let given = String::from_utf8_lossy(&pair[0]).into_owned();
        let lowered = given.to_ascii_lowercase();
        let name = crate::config_file::current_name(&lowered);
        let Some(&(setting, kind)) = SETTABLE.iter().find(|(n, _)| *n == name) else {
            if known.iter().any(|(n, _)| *n == name) {
                return failed(&given, "can't set immutable config");
            }
            return Reply::err(format!(
                "Unknown option or number of arguments for CONFIG SET - '{given}'"
            ));
        };
        // By the name given, as Redis checks: an older name beside the
        // current one is no duplicate (the last one set wins).
        if chosen
            .iter()
            .any(|(_, g, ..)| g.eq_ignore_ascii_case(&lowered))
        {
            return failed(&given, "duplicate parameter");
        }
        chosen.push((setting, given, kind, &pair[1]));
    }
    let mut values = Vec::with_capacity(chosen.len());
    for (setting, name, kind, value) in &chosen {
        let parsed = match *kind {
            Settable::Int(low, high) | Settable::Memory(low, high) => {
                let number = if let Settable::Memory(..) = kind {
                    parse_memory(value).ok_or("argument must be a memory value")
                } else {
                    parse_i64(value).ok_or("argument couldn't be parsed into an integer")
                };
                match number {
                    Err(why) => return failed(name, why),
                    Ok(v) if v < low || v > high => {
                        return failed(
                            name,
                            &format!("argument must be between {low} and {high} inclusive"),
                        );
                    }
                    Ok(v) => Setting::Int(v),
                }
            }
            Settable::YesNo if eq(value, "yes") => Setting::Int(1),
            Settable::YesNo if eq(value, "no") => Setting::Int(0),
            Settable::YesNo => return failed(name, "argument must be 'yes' or 'no'"),
            Settable::SyncPolicy => {
                match String::from_utf8_lossy(value).to_ascii_lowercase().parse() {
                    Ok(policy) => Setting::SyncPolicy(policy),
                    Err(_) => {
                        return failed(
                            name,
                            "argument(s) must be one of the following: everysec, always, no",
                        );
                    }
                }
            }
            Settable::Text => Setting::Text(value),
            Settable::KeyspaceEvents => match crate::notify::parse(value) {
                Some(flags) => Setting::Int(flags.into()),
                None => return failed(name, crate::notify::INVALID),
            },
            Settable::OutputLimits => match crate::pubsub::parse_output_limits(
                &String::from_utf8_lossy(value),
                node.pubsub.output_limits(),
            ) {
                Ok(limits) => Setting::OutputLimits(limits),
                Err(why) => return failed(name, why),
            },
            Settable::Only(accepted, _) if eq(value, accepted) => Setting::Same,
            Settable::Only("yes", _) if !eq(value, "no") => {
                return failed(name, "argument must be 'yes' or 'no'");
            }
            Settable::Only(_, why) => return failed(name, why),
        };
        values.push((*setting, parsed));
    }
    // As many clients as the open files limit allows (raised if it can
    // be), checked once the rest parsed, as Redis checks it.
    if let Some(&(_, Setting::Int(wanted))) = values.iter().find(|(n, _)| *n == "maxclients") {
        let wanted = wanted as usize;
        let fitted = crate::node::fit_maxclients(wanted);
        if fitted < wanted {
            let (_, name, ..) = chosen
                .iter()
                .find(|(n, ..)| *n == "maxclients")
                .expect("chosen");
            return failed(
                name,
                &format!(
                    "The operating system is not able to handle the specified number of clients, try with {fitted}"
                ),
            );
        }
    }
    let c = &node.config;
    // A setting as it would be: the value given, or the one now.
    let would_be = |wanted: &str, now: u64| {
        values
            .iter()
            .find_map(|(n, s)| match s {
                Setting::Int(v) if *n == wanted => Some(*v as u64),
                _ => None,
            })
            .unwrap_or(now)
    };
    // The write lease must still run out before a replica may promote.
    let to_write = would_be(
        "min-replicas-to-write",
        c.min_replicas_to_write.load(Ordering::Relaxed) as u64,
    );
    let max_lag = would_be(
        "min-replicas-max-lag",
        c.min_replicas_max_lag_secs.load(Ordering::Relaxed),
    );
    if let Err(why) = crate::node::lease_fits_failover(to_write as usize, max_lag, c.failover_after)
        && let Some((_, name, ..)) = chosen.iter().find(|(n, ..)| n.starts_with("min-replicas-"))
    {
        return failed(name, &why);
    }

    for (name, setting) in values {
        match setting {
            Setting::Same => {}
            // Not logged: a secret.
            Setting::Text(password) if name == "requirepass" => {
                c.requirepass.set(Some(password));
                tracing::info!(parameter = name, "CONFIG SET");
            }
            Setting::Text(_) => unreachable!("{name} is not a text setting of SETTABLE"),
            Setting::SyncPolicy(policy) => {
                node.wal.set_sync_policy(policy);
                tracing::info!(parameter = name, value = %policy, "CONFIG SET");
            }
            Setting::OutputLimits(limits) => {
                node.pubsub.set_output_limits(limits);
                let value = crate::pubsub::format_output_limits(&limits);
                tracing::info!(parameter = name, value, "CONFIG SET");
            }
            Setting::Int(v) => {
                let unsigned = v.max(0) as u64;
                match name {
                    "maxclients" => c.maxclients.store(unsigned as usize, Ordering::Relaxed),
                    "min-replicas-max-lag" => c
                        .min_replicas_max_lag_secs
                        .store(unsigned, Ordering::Relaxed),
                    "min-replicas-to-write" => c
                        .min_replicas_to_write
                        .store(unsigned as usize, Ordering::Relaxed),
                    "client-query-buffer-limit" => c
                        .client_query_buffer_limit
                        .store(unsigned as usize, Ordering::Relaxed),
                    "proto-max-bulk-len" => {
                        c.proto_max_bulk_len
                            .store(unsigned as usize, Ordering::Relaxed);
                        set_string_bytes_max(unsigned as usize);
                    }
                    "proto-max-multibulk-len" => c
                        .proto_max_multibulk_len
                        .store(unsigned as usize, Ordering::Relaxed),
                    "acllog-max-len" => c.acllog_max_len.store(unsigned, Ordering::Relaxed),
                    "latency-monitor-threshold" => node.latency.set_threshold_ms(unsigned),
                    "replica-serve-stale-data" => {
                        c.replica_serve_stale_data.store(v == 1, Ordering::Relaxed)
                    }
                    "shutdown-timeout" => {
                        c.shutdown_timeout_secs.store(unsigned, Ordering::Relaxed)
                    }
                    "slowlog-log-slower-than" => {
                        c.slowlog_log_slower_than.store(v, Ordering::Relaxed)
                    }
                    "slowlog-max-len" => c.slowlog_max_len.store(unsigned, Ordering::Relaxed),
                    "tcp-keepalive" => c.tcp_keepalive_secs.store(unsigned, Ordering::Relaxed),
                    "timeout" => c.timeout_secs.store(unsigned, Ordering::Relaxed),
                    "tracking-table-max-keys" => node.tracking.set_max_keys(unsigned as usize),
                    "notify-keyspace-events" => node.notify.set(unsigned as u32),
                    other => unreachable!("{other} is an integer setting of SETTABLE"),
                }
                tracing::info!(parameter = name, value = v, "CONFIG SET");
            }
        }
    }
    Reply::ok()
}

/// The parameters CONFIG SET changes that CONFIG REWRITE writes: all but
/// ferry's fixed values, each a flag of `ferry serve`
/// ([`crate::config_file::flag_name`]).
pub fn rewritable_params() -> impl Iterator<Item = &'static str> {
    SETTABLE
        .iter()
        .filter(|(_, kind)| !matches!(kind, Settable::Only(..)))
        .map(|(param, _)| *param)
}

/// CONFIG REWRITE, as Redis's: the values of what CONFIG SET changes
/// written into the file the node started with (`--config`), each under its
/// flag's name: in place on its line, or added at the end unless at its
/// default; comments and other lines kept, the file replaced whole.
fn config_rewrite(node: &Node) -> Reply {
    let Some(file) = &node.config.config_file else {
        return Reply::err("The server is running without a config file");
    };
    let current = crate::info::config_params(node);
    let settings: Vec<(&str, Option<String>, bool)> = rewritable_params()
        .map(|param| {
            let flag = crate::config_file::flag_name(param);
            let value = current
                .iter()
                .find(|(name, _)| name == param)
                .map(|(_, value)| value.clone())
                // No password: no line.
                .filter(|value| !(param == "requirepass" && value.is_empty()));
            let append = value.as_deref() != file.default_of(flag);
            (flag, value, append)
        })
        .collect();
    let rewritten = std::fs::read_to_string(&file.path).and_then(|text| {
        crate::config_file::write_atomically(
            &file.path,
            &crate::config_file::rewrite(&text, &settings),
        )
    });
    match rewritten {
        Ok(()) => {
            tracing::info!(file = %file.path.display(), "CONFIG REWRITE");
            for (flag, value, _) in &settings {
                if value.is_some() && file.given_elsewhere(flag) {
                    tracing::warn!(
                        setting = flag,
                        "CONFIG REWRITE wrote it to the file, but the command line or the environment sets it too, and comes first at the next start"
                    );
                }
            }
            Reply::ok()
        }
        Err(e) => {
            tracing::warn!(file = %file.path.display(), error = %e, "CONFIG REWRITE failed");
            Reply::err(format!("Rewriting config file: {e}"))
        }
    }
}

/// A number of bytes as Redis's configuration writes one: digits, then
/// optionally a unit, `b`, `k` (1000), `kb` (1024), `m`, `mb`, `g` or `gb`,
/// in any case. Past `u64` it wraps to a negative `i64` (out of every
/// setting's bounds), as Redis's value does. `None`: not a memory value.
pub fn parse_memory(value: &[u8]) -> Option<i64> {
    let digits = value.iter().take_while(|b| b.is_ascii_digit()).count();
    let unit = String::from_utf8_lossy(&value[digits..]).to_ascii_lowercase();
    let mul: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1000 * 1000,
        "mb" => 1024 * 1024,
        "g" => 1000 * 1000 * 1000,
        "gb" => 1024 * 1024 * 1024,
        _ => return None,
    };
    let number: u64 = std::str::from_utf8(&value[..digits]).ok()?.parse().ok()?;
    Some(number.checked_mul(mul).map_or(-1, |bytes| bytes as i64))
}

/// MEMORY USAGE's fields of a hash read when no SAMPLES is given, as
/// Redis's.
pub const MEMORY_USAGE_SAMPLES_DEFAULT: u64 = 5;

/// MEMORY USAGE key [SAMPLES count] | PURGE | MALLOC-STATS | HELP.
fn memory(_node: &Node, r: &dyn Reader, args: &Args) -> Reply {
    let sub = String::from_utf8_lossy(&args[1]).to_ascii_lowercase();
    match (sub.as_str(), args.len()) {
        ("usage", 3..) => memory_usage(r, args),
        ("purge", 2) => {
            // Gives the allocator's free memory back to the system.
            // SAFETY: malloc_trim takes a size and changes only the
            // allocator's own state.
            unsafe {
                libc::malloc_trim(0);
            }
            Reply::ok()
        }
        ("malloc-stats", 2) => Reply::bulk("Stats not supported for the current allocator"),
        ("help", 2) => help(&[
            "MEMORY <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "MALLOC-STATS",
            "    Return internal statistics report from the memory allocator.",
            "PURGE",
            "    Attempt to purge dirty pages for reclamation by the allocator.",
            "USAGE <key> [SAMPLES <count>]",
            "    Return the bytes <key> and its value take as stored (its rows in RocksDB,",
            "    before compression). A hash's fields are sampled up to <count> times",
            "    (default: 5, 0 means sample all).",
            "HELP",
            "    Prints this help.",
        ]),
        _ => subcommand_error("memory", &args[1]),
    }
}

/// MEMORY USAGE: the bytes a key's rows take as stored
/// ([`ferry_engine::stored_bytes`]); nil for a missing key.
fn memory_usage(r: &dyn Reader, args: &Args) -> Reply {
    let mut samples = MEMORY_USAGE_SAMPLES_DEFAULT;
    let mut i = 3;
    while i < args.len() {
        if !eq(&args[i], "samples") || i + 1 == args.len() {
            return syntax_error();
        }
        samples = match parse_i64(&args[i + 1]) {
            None => return not_integer(),
            Some(n) if n < 0 => return syntax_error(),
            Some(0) => u64::MAX,
            Some(n) => n as u64,
        };
        i += 2;
    }
    let key = &args[2];
    let now = now_ms();
    let read = stable(r, |r| {
        let Some(entry) = r.live(key, now)? else {
            return Ok(None);
        };
        let sample = match entry.value {
            Value::Hash { .. } => {
                r.fields(key, None, usize::try_from(samples).unwrap_or(usize::MAX))?
            }
            _ => Vec::new(),
        };
        Ok(Some(ferry_engine::stored_bytes(key, &entry, &sample)))
    });
    match tri_read!(read) {
        Some(bytes) => Reply::Int(bytes as i64),
        None => Reply::Null,
    }
}

/// SLOWLOG GET [count] | LEN | RESET | HELP, as Redis's.
fn slowlog(node: &Node, _conn: &mut Conn, args: &Args) -> Reply {
    let sub = String::from_utf8_lossy(&args[1]).to_ascii_lowercase();
    match (sub.as_str(), args.len()) {
        ("get", 2 | 3) => {
            let count = match args.get(2).map(|a| parse_i64(a)) {
                None => 10,
                Some(Some(-1)) => usize::MAX,
                Some(Some(n)) if n >= 0 => n as usize,
                Some(_) => return Reply::err("count should be greater than or equal to -1"),
            };
            let entries = node
                .slowlog
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .newest(count);
            Reply::Array(
                entries
                    .into_iter()
                    .map(|e| {
                        Reply::Array(vec![
                            Reply::Int(e.id as i64),
                            Reply::Int(e.at_secs as i64),
                            Reply::Int(e.micros as i64),
                            Reply::Array(e.args.into_iter().map(Reply::Bulk).collect()),
                            Reply::bulk(e.addr),
                            Reply::Bulk(e.name),
                        ])
                    })
                    .collect(),
            )
        }
        ("len", 2) => {
            Reply::Int(node.slowlog.lock().unwrap_or_else(|e| e.into_inner()).len() as i64)
        }
        ("reset", 2) => {
            node.slowlog
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .reset();
            Reply::ok()
        }
        ("help", 2) => help(&[
            "SLOWLOG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "GET [<count>]",
            "    Return top <count> entries from the slowlog (default: 10, -1 mean all).",
            "    Entries are made of:",
            "    id, timestamp, time in microseconds, arguments array, client IP and port,",
            "    client name",
            "LEN",
            "    Return the length of the slowlog.",
            "RESET",
            "    Reset the slowlog.",
            "HELP",
            "    Prints this help.",
        ]),
        _ => subcommand_error("slowlog", &args[1]),
    }
}

/// MONITOR: from now on the connection gets a line for each command run
/// (see `server::connection`), and may no longer touch keys.
fn monitor(node: &Node, conn: &mut Conn, _args: &Args) -> Reply {
    if conn.monitor.is_none() {
        conn.monitor = Some(crate::node::Monitor::new(node));
    }
    Reply::ok()
}

/// Whether a command (`client|kill` for a subcommand) is one Redis keeps
/// from MONITOR: those it flags `admin` (a subcommand's flag as its ACL
/// category `admin` tells it).
pub fn hidden_from_monitor(spec: &Spec, name: &str) -> bool {
    if name.contains('|') {
        acl_categories(name).contains(&"admin")
    } else {
        spec.flags.contains(&"admin")
    }
}

/// Hashes of at most this many fields, each field and value at most
/// [`HASH_LISTPACK_VALUE_BYTES_MAX`] bytes, are what Redis keeps as a
/// listpack (its `hash-max-listpack-entries` default): OBJECT ENCODING,
/// and HSCAN's whole replies.
pub const HASH_LISTPACK_ENTRIES_MAX: u64 = 512;
/// Redis's `hash-max-listpack-value` default.
pub const HASH_LISTPACK_VALUE_BYTES_MAX: usize = 64;
/// Strings up to this long are embedded in their object in Redis
/// (`embstr`).
const EMBSTR_BYTES_MAX: usize = 44;
/// Integers below this are objects Redis shares (OBJECT REFCOUNT gives
/// `i32::MAX` for them).
const SHARED_INTEGERS: i64 = 10_000;

/// OBJECT ENCODING, REFCOUNT, FREQ, IDLETIME, HELP. ferry stores values its
/// own way (a string in its key's row or in chunks, a hash in rows of
/// fields): ENCODING and REFCOUNT give what Redis gives for the value as it
/// is now, written whole (Redis says `raw` for a short string after an
/// in-place change such as APPEND, and keeps `hashtable` for a hash that
/// was once large). FREQ is Redis's error without an LFU policy (ferry
/// evicts nothing); IDLETIME is an error, ferry keeping no access times.
fn object(node: &Node, r: &dyn Reader, args: &Args) -> Reply {
    let sub = String::from_utf8_lossy(&args[1]).to_ascii_lowercase();
    match (sub.as_str(), args.len()) {
        ("help", 2) => help(&[
            "OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "ENCODING <key>",
            "    Return the kind of internal representation used in order to store the value",
            "    associated with a <key>.",
            "FREQ <key>",
            "    Return the access frequency index of the <key>. The returned integer is",
            "    proportional to the logarithm of the recent access frequency of the key.",
            "IDLETIME <key>",
            "    Return the idle time of the <key>, that is the approximated number of",
            "    seconds elapsed since the last access to the key.",
            "REFCOUNT <key>",
            "    Return the number of references of the value associated with the specified",
            "    <key>.",
            "HELP",
            "    Prints this help.",
        ]),
        (name @ ("encoding" | "freq" | "idletime" | "refcount"), 3) => {
            let key = &args[2];
            let Some(entry) = tri_read!(read_entry(node, r, key)) else {
                return Reply::Null;
            };
            // Redis keeps a string that reads as a 64-bit integer as one.
            let integer = match &entry.value {
                Value::String(s) => parse_i64(s),
                _ => None,
            };
            match name {
                "freq" => Reply::err(
                    "An LFU maxmemory policy is not selected, access frequency not tracked. \
                     Please note that when switching between policies at runtime LRU and LFU \
                     data will take some time to adjust.",
                ),
                "idletime" => {
                    Reply::err("ferry keeps no access times: OBJECT IDLETIME is not tracked")
                }
                "refcount" => Reply::Int(match integer {
                    Some(n) if (0..SHARED_INTEGERS).contains(&n) => i64::from(i32::MAX),
                    _ => 1,
                }),
                _ => Reply::bulk(match entry.value {
                    Value::String(_) if integer.is_some() => "int",
                    Value::String(s) if s.len() <= EMBSTR_BYTES_MAX => "embstr",
                    Value::String(_) | Value::LongString { .. } => "raw",
                    Value::Hash { len } if len > HASH_LISTPACK_ENTRIES_MAX => "hashtable",
                    Value::Hash { .. } => {
                        let fields = tri_read!(
                            r.fields(key, None, HASH_LISTPACK_ENTRIES_MAX as usize)
                                .map_err(engine_error)
                        );
                        let small = |b: &Bytes| b.len() <= HASH_LISTPACK_VALUE_BYTES_MAX;
                        if fields.iter().all(|(f, v)| small(f) && small(v)) {
                            "listpack"
                        } else {
                            "hashtable"
                        }
                    }
                }),
            }
        }
        _ => subcommand_error("object", &args[1]),
    }
}

/// BGSAVE [SCHEDULE]: a SAVE in the background ([`Node::bgsave`]).
fn bgsave(node: &Node, _conn: &mut Conn, args: &Args) -> Reply {
    match args.len() {
        1 => {}
        2 if eq(&args[1], "schedule") => {}
        _ => return syntax_error(),
    }
    match node.bgsave() {
        Ok(()) => Reply::Simple("Background saving started".into()),
        Err(text) => Reply::err(text),
    }
}

/// LASTSAVE: when the last save ended well, or the node started.
fn lastsave(node: &Node, _conn: &mut Conn, _args: &Args) -> Reply {
    Reply::Int(
        node.saves
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_save_secs as i64,
    )
}

/// LATENCY: the latency monitor's events ([`crate::latency`]) and each
/// command's histogram, as Redis 7.0 gives them.
fn latency(node: &Node, _conn: &mut Conn, args: &Args) -> Reply {
    let sub = String::from_utf8_lossy(&args[1]).to_ascii_lowercase();
    let monitor = &node.latency;
    match (sub.as_str(), args.len()) {
        ("latest", 2) => Reply::Array(
            monitor
                .latest()
                .into_iter()
                .map(|(name, secs, ms, max)| {
                    Reply::Array(vec![
                        Reply::bulk(name),
                        Reply::Int(secs as i64),
                        Reply::Int(ms as i64),
                        Reply::Int(max as i64),
                    ])
                })
                .collect(),
        ),
        ("history", 3) => Reply::Array(
            monitor
                .history(&args[2])
                .into_iter()
                .map(|(secs, ms)| {
                    Reply::Array(vec![Reply::Int(secs as i64), Reply::Int(ms as i64)])
                })
                .collect(),
        ),
        ("reset", _) => Reply::Int(monitor.reset(&args[2..]) as i64),
        ("graph", 3) => match monitor.graph(&args[2]) {
            Some(text) => Reply::Verbatim(text.into()),
            None => Reply::err(format!(
                "No samples available for event '{}'",
                String::from_utf8_lossy(&args[2])
            )),
        },
        ("doctor", 2) => Reply::Verbatim(
            monitor
                .doctor(node.config.slowlog_log_slower_than.load(Ordering::Relaxed))
                .into(),
        ),
        ("histogram", _) => {
            let named: Vec<String> = args[2..]
                .iter()
                .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
                .collect();
            // A name given is the command, or a container and its
            // subcommands.
            let wanted = |name: &str| {
                named.is_empty()
                    || named.iter().any(|n| {
                        name == n
                            || name
                                .strip_prefix(n.as_str())
                                .is_some_and(|rest| rest.starts_with('|'))
                    })
            };
            Reply::Map(
                node.stats
                    .per_command()
                    .filter(|(name, _)| wanted(name))
                    .filter_map(|(name, c)| {
                        let (calls, buckets) = crate::latency::cumulative(&c.latency);
                        (calls > 0).then(|| {
                            let buckets = buckets
                                .into_iter()
                                .map(|(us, n)| (Reply::Int(us as i64), Reply::Int(n as i64)))
                                .collect();
                            (
                                Reply::bulk(name),
                                Reply::Map(vec![
                                    (Reply::bulk("calls"), Reply::Int(calls as i64)),
                                    (Reply::bulk("histogram_usec"), Reply::Map(buckets)),
                                ]),
                            )
                        })
                    })
                    .collect(),
            )
        }
        ("help", 2) => help(&[
            "LATENCY <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "DOCTOR",
            "    Return a human readable latency analysis report.",
            "GRAPH <event>",
            "    Return an ASCII latency graph for the <event> class.",
            "HISTORY <event>",
            "    Return time-latency samples for the <event> class.",
            "LATEST",
            "    Return the latest latency samples for all events.",
            "RESET [<event> ...]",
            "    Reset latency data of one or more <event> classes.",
            "    (default: reset all data for all event classes)",
            "HISTOGRAM [COMMAND ...]",
            "    Return a cumulative distribution of latencies in the format of a histogram for the specified command names.",
            "    If no commands are specified then all histograms are replied.",
            "HELP",
            "    Prints this help.",
        ]),
        _ => subcommand_error("latency", &args[1]),
    }
}

/// Splits a gRPC URL such as `http://10.0.0.1:7379` into host and port,
/// for the replies that speak of a primary as Redis does.
pub fn host_port(url: &str) -> (String, u16) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.trim_end_matches('/');
    match rest.rsplit_once(':') {
        Some((host, port)) => (
            host.trim_matches(|c| c == '[' || c == ']').to_string(),
            port.parse().unwrap_or(0),
        ),
        None => (rest.to_string(), 0),
    }
}

/// Where a replica's clients reach its primary (ROLE, INFO's `master_host`
/// and `master_port`): the host it streams from, and the port of the
/// primary's RESP server once the primary told it (its gRPC port before).
pub fn primary_host_port(link: &ferry_receiver::LinkStatus) -> (String, u16) {
    let (host, port) = host_port(&link.primary);
    match host_port(&link.primary_resp_addr) {
        (_, resp) if resp > 0 => (host, resp),
        _ => (host, port),
    }
}

/// A replica's RESP address as the shipper heard it: host and port.
pub fn replica_addr(resp_addr: &str, stream_addr: &str) -> (String, u16) {
    let (host, port) = host_port(resp_addr);
    if host.is_empty() || host == "0.0.0.0" || host == "::" {
        // It listens on every interface: name the address it connects from.
        (host_port(stream_addr).0, port)
    } else {
        (host, port)
    }
}

/// Redis's link states, from the receiver's.
pub fn redis_link_state(state: &str) -> &'static str {
    match state {
        "streaming" => "connected",
        "catchup" => "sync",
        "connecting" => "connecting",
        _ => "connect",
    }
}

fn role(node: &Node, _r: &dyn Reader, _args: &Args) -> Reply {
    if let Some(link) = node.link_status() {
        let (host, port) = primary_host_port(&link);
        return Reply::Array(vec![
            Reply::bulk_str("slave"),
            Reply::bulk_str(&host),
            Reply::Int(i64::from(port)),
            Reply::bulk_str(redis_link_state(link.state)),
            Reply::Int(node.engine.applied_lsn().0 as i64),
        ]);
    }
    let replicas = node
        .shipper
        .list()
        .into_iter()
        .map(|r| {
            let (host, port) = replica_addr(&r.resp_addr, &r.addr);
            Reply::Array(vec![
                Reply::bulk_str(&host),
                Reply::bulk_str(&port.to_string()),
                Reply::bulk_str(&r.applied_lsn.0.to_string()),
            ])
        })
        .collect();
    Reply::Array(vec![
        Reply::bulk_str("master"),
        Reply::Int(node.wal.durable_lsn().0 as i64),
        Reply::Array(replicas),
    ])
}

/// A timeout in milliseconds as Redis reads one (WAIT, WAITAOF, CLIENT
/// PAUSE), with its errors.
fn timeout_ms_arg(arg: &[u8]) -> Result<u64, Reply> {
    let timeout =
        parse_i64(arg).ok_or_else(|| Reply::err("timeout is not an integer or out of range"))?;
    if timeout < 0 {
        return Err(Reply::err("timeout is negative"));
    }
    Ok(timeout as u64)
}

/// What WAIT and WAITAOF wait for: the local log to hold the connection's
/// writes durably (WAITAOF's `numlocal`), and how many replicas to have
/// flushed them; and for how long (ms, 0: without limit).
#[derive(Debug, Clone, Copy)]
pub struct WaitFor {
    /// WAITAOF (its reply names the local log too), or WAIT.
    pub aof: bool,
    pub local: bool,
    pub replicas: usize,
    pub timeout_ms: u64,
}

/// WAIT's arguments (numreplicas timeout), or WAITAOF's (numlocal
/// numreplicas timeout, as Redis 7.2 reads them), with Redis's errors in
/// its order.
///
/// # Errors
///
/// The reply to send instead.
fn wait_args(args: &Args) -> Result<WaitFor, Reply> {
    if args.len() == 3 {
        let n = parse_i64(&args[1]).ok_or_else(not_integer)?;
        return Ok(WaitFor {
            aof: false,
            local: false,
            replicas: n.max(0) as usize,
            timeout_ms: timeout_ms_arg(&args[2])?,
        });
    }
    let local = parse_i64(&args[1]).ok_or_else(not_integer)?;
    if !(0..=1).contains(&local) {
        return Err(Reply::err(
            "value is out of range, value must between 0 and 1",
        ));
    }
    let replicas = parse_i64(&args[2])
        .filter(|n| *n >= 0)
        .ok_or_else(|| Reply::err("value is out of range, must be positive"))?;
    Ok(WaitFor {
        aof: true,
        local: local == 1,
        replicas: replicas as usize,
        timeout_ms: timeout_ms_arg(&args[3])?,
    })
}

/// WAIT's reply (the replicas), or WAITAOF's (the local log, the replicas).
pub fn wait_reply(wait: &WaitFor, local: bool, replicas: usize) -> Reply {
    if wait.aof {
        Reply::Array(vec![
            Reply::Int(i64::from(local)),
            Reply::Int(replicas as i64),
        ])
    } else {
        Reply::Int(replicas as i64)
    }
}

/// Why WAIT (and WAITAOF, `aof`) are refused on a replica, in Redis's
/// words.
fn wait_on_replica(aof: bool) -> Reply {
    Reply::err(if aof {
        "WAITAOF cannot be used with replica instances. Please also note that writes to replicas are just local and are not propagated."
    } else {
        "WAIT cannot be used with replica instances. Please also note that since Redis 4.0 if a replica is configured to be writable (which is not the default) writes to replicas are just local and are not propagated."
    })
}

/// WAIT's refusal on a replica comes before its arguments are read,
/// WAITAOF's after, as in Redis.
pub fn wait_refused(node: &Node, args: &Args) -> Result<WaitFor, Reply> {
    let aof = args.len() == 4;
    if node.is_replica() && !aof {
        return Err(wait_on_replica(false));
    }
    let wait = wait_args(args)?;
    if node.is_replica() {
        return Err(wait_on_replica(true));
    }
    Ok(wait)
}

/// REPLICAOF host grpc-port: the gRPC address to follow (`None` for NO ONE),
/// in `scheme` (https for a node calling over TLS), or why not.
///
/// # Errors
///
/// The reply to send instead.
pub fn replicaof_target(args: &Args, scheme: &str) -> Result<Option<String>, Reply> {
    if eq(&args[1], "no") && eq(&args[2], "one") {
        return Ok(None);
    }
    let host = String::from_utf8_lossy(&args[1]).to_string();
    let port = match std::str::from_utf8(&args[2])
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
    {
        Some(p) if p > 0 => p,
        _ => return Err(Reply::err("Invalid master port")),
    };
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host
    };
    Ok(Some(format!("{scheme}://{host}:{port}")))
}

fn debug(_node: &Node, r: &dyn Reader, args: &Args) -> Reply {
    if eq(&args[1], "digest") && args.len() == 2 {
        return match r.digest(now_ms()) {
            Ok(d) => Reply::Simple(d.into()),
            Err(e) => engine_error(e),
        };
    }
    if eq(&args[1], "help") && args.len() == 2 {
        return help(&[
            "DEBUG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "DIGEST",
            "    Output a hex signature representing the current DB content.",
            "HELP",
            "    Prints this help.",
        ]);
    }
    Reply::err(format!(
        "unknown subcommand or wrong number of arguments for '{}'. Try DEBUG HELP.",
        String::from_utf8_lossy(&args[1])
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command and subcommand has its ACL categories, in a table
    /// sorted for the binary search.
    #[test]
    fn acl_categories_cover_every_command() {
        assert!(ACL_CATEGORIES.windows(2).all(|w| w[0].0 < w[1].0));
        // [`lookup`] searches the commands by name.
        assert!(COMMANDS.windows(2).all(|w| w[0].name < w[1].name));
        for spec in COMMANDS {
            assert!(!acl_categories(spec.name).is_empty(), "{}", spec.name);
            for (sub, _) in subcommands_of(spec.name).unwrap_or_default() {
                let full = format!("{}|{sub}", spec.name);
                assert!(!acl_categories(&full).is_empty(), "{full}");
            }
        }
        assert_eq!(ACL_CATEGORIES.len(), {
            let subs: usize = SUBCOMMANDS.iter().map(|(_, s)| s.len()).sum();
            COMMANDS.len() + subs
        });
    }

    #[test]
    fn the_table_is_sorted_and_lookups_ignore_case() {
        assert!(COMMANDS.windows(2).all(|w| w[0].name < w[1].name));
        assert_eq!(lookup(b"GeT").map(|s| s.name), Some("get"));
        for spec in COMMANDS {
            assert!(spec.name.len() <= COMMAND_NAME_BYTES_MAX, "{}", spec.name);
            let upper = spec.name.to_ascii_uppercase();
            assert!(std::ptr::eq(lookup(upper.as_bytes()).unwrap(), spec));
        }
        assert!(lookup(b"nosuch").is_none());
        assert!(lookup(&[b'g'; COMMAND_NAME_BYTES_MAX + 1]).is_none());
    }
}
