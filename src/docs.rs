//! COMMAND DOCS: each command's summary, the Redis version that brought
//! it and its group, as redis-cli (7.2 and later) reads them for `help`.
//! The summaries are ferry's own words; the versions and groups are
//! Redis's.

/// `(name, since, group, summary)`, by name.
pub const DOCS: &[(&str, &str, &str, &str)] = &[
    (
        "acl",
        "6.0.0",
        "server",
        "Inspects the access control: the one user, its categories, the log of refused logins.",
    ),
    (
        "append",
        "2.0.0",
        "string",
        "Appends a value to a string, creating it if missing; answers the new length.",
    ),
    (
        "asking",
        "3.0.0",
        "cluster",
        "Refused: this node has no cluster support.",
    ),
    (
        "auth",
        "1.0.0",
        "connection",
        "Authenticates the connection.",
    ),
    (
        "bgsave",
        "1.0.0",
        "server",
        "Makes the applied state durable in the background (flushes the engine).",
    ),
    (
        "bitcount",
        "2.6.0",
        "bitmap",
        "Counts the bits set in a string, or in a range of it.",
    ),
    (
        "bitfield",
        "3.2.0",
        "bitmap",
        "Reads and writes integers of any width at any bit offset of a string.",
    ),
    (
        "bitfield_ro",
        "6.0.0",
        "bitmap",
        "Reads integers of any width at any bit offset of a string.",
    ),
    (
        "bitop",
        "2.6.0",
        "bitmap",
        "Stores the bitwise AND, OR, XOR or NOT of strings in a key.",
    ),
    (
        "bitpos",
        "2.8.7",
        "bitmap",
        "Finds the first bit set or clear in a string, or in a range of it.",
    ),
    (
        "client",
        "2.4.0",
        "connection",
        "Inspects and manages client connections (names, lists, kills, pauses, tracking).",
    ),
    (
        "cluster",
        "3.0.0",
        "cluster",
        "Refused: this node has no cluster support.",
    ),
    (
        "command",
        "2.8.13",
        "server",
        "Describes the commands: their count, arity, flags, keys and categories.",
    ),
    (
        "config",
        "2.0.0",
        "server",
        "Reads, changes and rewrites the settings, or resets the statistics.",
    ),
    (
        "copy",
        "6.2.0",
        "generic",
        "Copies a key's value and expiry to another key.",
    ),
    ("dbsize", "1.0.0", "server", "Answers the number of keys."),
    (
        "debug",
        "1.0.0",
        "server",
        "Debugging helpers: the keyspace digest, a key's digest and the like.",
    ),
    ("decr", "1.0.0", "string", "Decrements an integer by one."),
    (
        "decrby",
        "1.0.0",
        "string",
        "Decrements an integer by the given amount.",
    ),
    (
        "del",
        "1.0.0",
        "generic",
        "Deletes keys; answers how many existed.",
    ),
    (
        "discard",
        "2.0.0",
        "transactions",
        "Drops the commands queued since MULTI.",
    ),
    (
        "dump",
        "2.6.0",
        "generic",
        "Answers a key's value serialized as RESTORE takes it.",
    ),
    ("echo", "1.0.0", "connection", "Answers its argument."),
    (
        "exec",
        "1.2.0",
        "transactions",
        "Runs the commands queued since MULTI, as one write.",
    ),
    (
        "exists",
        "1.0.0",
        "generic",
        "Counts how many of the keys exist.",
    ),
    (
        "expire",
        "1.0.0",
        "generic",
        "Sets a key's time to live in seconds.",
    ),
    (
        "expireat",
        "1.2.0",
        "generic",
        "Sets a key's expiry as a Unix time in seconds.",
    ),
    (
        "expiretime",
        "7.0.0",
        "generic",
        "Answers a key's expiry as a Unix time in seconds.",
    ),
    (
        "failover",
        "6.2.0",
        "server",
        "Hands the primary role over to a replica that has caught up.",
    ),
    ("flushall", "1.0.0", "server", "Deletes every key."),
    (
        "flushdb",
        "1.0.0",
        "server",
        "Deletes every key of the database.",
    ),
    ("get", "1.0.0", "string", "Answers a string's value."),
    (
        "getbit",
        "2.2.0",
        "bitmap",
        "Answers the bit at an offset of a string.",
    ),
    (
        "getdel",
        "6.2.0",
        "string",
        "Answers a string's value and deletes the key.",
    ),
    (
        "getex",
        "6.2.0",
        "string",
        "Answers a string's value and sets or clears its expiry.",
    ),
    (
        "getrange",
        "2.4.0",
        "string",
        "Answers a range of a string.",
    ),
    (
        "getset",
        "1.0.0",
        "string",
        "Sets a string and answers its old value.",
    ),
    (
        "hdel",
        "2.0.0",
        "hash",
        "Deletes fields of a hash; answers how many existed.",
    ),
    (
        "hello",
        "6.0.0",
        "connection",
        "Chooses the protocol (RESP2 or RESP3), logs in and names the connection.",
    ),
    (
        "hexists",
        "2.0.0",
        "hash",
        "Whether a field of a hash exists.",
    ),
    (
        "hget",
        "2.0.0",
        "hash",
        "Answers the value of a field of a hash.",
    ),
    (
        "hgetall",
        "2.0.0",
        "hash",
        "Answers every field of a hash with its value.",
    ),
    (
        "hincrby",
        "2.0.0",
        "hash",
        "Increments an integer field of a hash.",
    ),
    (
        "hincrbyfloat",
        "2.6.0",
        "hash",
        "Increments a floating-point field of a hash.",
    ),
    ("hkeys", "2.0.0", "hash", "Answers the fields of a hash."),
    (
        "hlen",
        "2.0.0",
        "hash",
        "Answers the number of fields of a hash.",
    ),
    (
        "hmget",
        "2.0.0",
        "hash",
        "Answers the values of fields of a hash.",
    ),
    ("hmset", "2.0.0", "hash", "Sets fields of a hash."),
    (
        "hrandfield",
        "6.2.0",
        "hash",
        "Answers random fields of a hash, with their values if asked.",
    ),
    (
        "hscan",
        "2.8.0",
        "hash",
        "Iterates over the fields of a hash with a cursor.",
    ),
    (
        "hset",
        "2.0.0",
        "hash",
        "Sets fields of a hash; answers how many were new.",
    ),
    (
        "hsetnx",
        "2.0.0",
        "hash",
        "Sets a field of a hash only if it does not exist.",
    ),
    (
        "hstrlen",
        "3.2.0",
        "hash",
        "Answers the length of a field's value.",
    ),
    ("hvals", "2.0.0", "hash", "Answers the values of a hash."),
    ("incr", "1.0.0", "string", "Increments an integer by one."),
    (
        "incrby",
        "1.0.0",
        "string",
        "Increments an integer by the given amount.",
    ),
    (
        "incrbyfloat",
        "2.6.0",
        "string",
        "Increments a floating-point number by the given amount.",
    ),
    (
        "info",
        "1.0.0",
        "server",
        "Answers the node's figures by section, under Redis's names.",
    ),
    (
        "keys",
        "1.0.0",
        "generic",
        "Answers every key matching a glob pattern.",
    ),
    (
        "lastsave",
        "1.0.0",
        "server",
        "Answers the Unix time of the last completed SAVE or BGSAVE.",
    ),
    (
        "latency",
        "2.8.13",
        "server",
        "The latency monitor: latest and past spikes by event, histograms by command.",
    ),
    (
        "lcs",
        "7.0.0",
        "string",
        "Finds the longest common subsequence of two strings.",
    ),
    (
        "memory",
        "4.0.0",
        "server",
        "Memory figures: a key's usage, the allocator's state.",
    ),
    ("mget", "1.0.0", "string", "Answers the values of strings."),
    (
        "monitor",
        "1.0.0",
        "server",
        "Streams every command the node runs to this connection.",
    ),
    ("mset", "1.0.1", "string", "Sets strings, all at once."),
    (
        "msetnx",
        "1.0.1",
        "string",
        "Sets strings, all at once, only if none of the keys exists.",
    ),
    (
        "multi",
        "1.2.0",
        "transactions",
        "Starts a transaction: commands are queued until EXEC.",
    ),
    (
        "object",
        "2.2.3",
        "generic",
        "Inspects a key's value: its encoding and the like.",
    ),
    ("persist", "2.2.0", "generic", "Removes a key's expiry."),
    (
        "pexpire",
        "2.6.0",
        "generic",
        "Sets a key's time to live in milliseconds.",
    ),
    (
        "pexpireat",
        "2.6.0",
        "generic",
        "Sets a key's expiry as a Unix time in milliseconds.",
    ),
    (
        "pexpiretime",
        "7.0.0",
        "generic",
        "Answers a key's expiry as a Unix time in milliseconds.",
    ),
    (
        "ping",
        "1.0.0",
        "connection",
        "Answers PONG, or its argument.",
    ),
    (
        "psetex",
        "2.6.0",
        "string",
        "Sets a string with a time to live in milliseconds.",
    ),
    (
        "psubscribe",
        "2.0.0",
        "pubsub",
        "Subscribes to channels matching glob patterns.",
    ),
    (
        "pttl",
        "2.6.0",
        "generic",
        "Answers a key's time to live in milliseconds.",
    ),
    (
        "publish",
        "2.0.0",
        "pubsub",
        "Sends a message to a channel; answers how many subscribers got it.",
    ),
    (
        "pubsub",
        "2.8.0",
        "pubsub",
        "Inspects Pub/Sub: the channels, their subscribers, the patterns.",
    ),
    (
        "punsubscribe",
        "2.0.0",
        "pubsub",
        "Unsubscribes from patterns.",
    ),
    ("quit", "1.0.0", "connection", "Closes the connection."),
    ("randomkey", "1.0.0", "generic", "Answers a random key."),
    (
        "readonly",
        "3.0.0",
        "cluster",
        "Refused: this node has no cluster support.",
    ),
    (
        "readwrite",
        "3.0.0",
        "cluster",
        "Refused: this node has no cluster support.",
    ),
    (
        "rename",
        "1.0.0",
        "generic",
        "Renames a key, replacing the target.",
    ),
    (
        "renamenx",
        "1.0.0",
        "generic",
        "Renames a key only if the target does not exist.",
    ),
    (
        "replicaof",
        "5.0.0",
        "server",
        "Follows a primary (its gRPC address), or with NO ONE becomes a primary.",
    ),
    (
        "reset",
        "6.2.0",
        "connection",
        "Returns the connection to the state of a new one.",
    ),
    (
        "restore",
        "2.6.0",
        "generic",
        "Creates a key from a value serialized by DUMP.",
    ),
    (
        "role",
        "2.8.12",
        "server",
        "Answers the node's role, its log position and its replicas or primary.",
    ),
    (
        "save",
        "1.0.0",
        "server",
        "Makes the applied state durable (syncs the WAL, flushes the engine).",
    ),
    (
        "scan",
        "2.8.0",
        "generic",
        "Iterates over the keys with a cursor.",
    ),
    (
        "select",
        "1.0.0",
        "connection",
        "Selects the database: only 0.",
    ),
    (
        "set",
        "1.0.0",
        "string",
        "Sets a string, with an expiry, conditions and the old value if asked.",
    ),
    (
        "setbit",
        "2.2.0",
        "bitmap",
        "Sets or clears the bit at an offset of a string.",
    ),
    (
        "setex",
        "2.0.0",
        "string",
        "Sets a string with a time to live in seconds.",
    ),
    (
        "setnx",
        "1.0.0",
        "string",
        "Sets a string only if the key does not exist.",
    ),
    (
        "setrange",
        "2.2.0",
        "string",
        "Overwrites part of a string from an offset.",
    ),
    (
        "shutdown",
        "1.0.0",
        "server",
        "Stops the node, after its writes are synced and its replicas caught up.",
    ),
    (
        "slaveof",
        "1.0.0",
        "server",
        "Follows a primary, or with NO ONE becomes a primary (as REPLICAOF).",
    ),
    (
        "slowlog",
        "2.2.12",
        "server",
        "The slow log: the commands that ran longer than its threshold.",
    ),
    (
        "spublish",
        "7.0.0",
        "pubsub",
        "Sends a message to a shard channel.",
    ),
    (
        "ssubscribe",
        "7.0.0",
        "pubsub",
        "Subscribes to shard channels.",
    ),
    (
        "strlen",
        "2.2.0",
        "string",
        "Answers the length of a string.",
    ),
    ("subscribe", "2.0.0", "pubsub", "Subscribes to channels."),
    (
        "substr",
        "1.0.0",
        "string",
        "Answers a range of a string (as GETRANGE).",
    ),
    (
        "sunsubscribe",
        "7.0.0",
        "pubsub",
        "Unsubscribes from shard channels.",
    ),
    (
        "time",
        "2.6.0",
        "server",
        "Answers the node's clock: Unix seconds and microseconds.",
    ),
    (
        "touch",
        "3.2.1",
        "generic",
        "Counts how many of the keys exist.",
    ),
    (
        "ttl",
        "1.0.0",
        "generic",
        "Answers a key's time to live in seconds.",
    ),
    (
        "type",
        "1.0.0",
        "generic",
        "Answers the type of a key's value.",
    ),
    (
        "unlink",
        "4.0.0",
        "generic",
        "Deletes keys; answers how many existed.",
    ),
    (
        "unsubscribe",
        "2.0.0",
        "pubsub",
        "Unsubscribes from channels.",
    ),
    (
        "unwatch",
        "2.2.0",
        "transactions",
        "Forgets the keys WATCHed.",
    ),
    (
        "wait",
        "3.0.0",
        "generic",
        "Waits until replicas have flushed the connection's writes.",
    ),
    (
        "waitaof",
        "7.2.0",
        "generic",
        "Waits until the local WAL and replicas hold the connection's writes synced.",
    ),
    (
        "watch",
        "2.2.0",
        "transactions",
        "Makes the next EXEC fail if the keys change before it.",
    ),
];

/// The docs of command `name`, if it has them.
pub fn of(name: &str) -> Option<(&'static str, &'static str, &'static str)> {
    DOCS.binary_search_by(|(n, ..)| n.cmp(&name))
        .ok()
        .map(|i| (DOCS[i].1, DOCS[i].2, DOCS[i].3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_has_docs() {
        assert!(DOCS.windows(2).all(|w| w[0].0 < w[1].0), "sorted");
        for spec in crate::commands::COMMANDS {
            let (since, group, summary) = of(spec.name).expect(spec.name);
            assert!(!summary.is_empty() && !group.is_empty(), "{}", spec.name);
            assert_eq!(since.split('.').count(), 3, "{}", spec.name);
        }
        assert_eq!(DOCS.len(), crate::commands::COMMANDS.len());
    }
}
