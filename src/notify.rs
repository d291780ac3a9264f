//! Keyspace notifications (`notify-keyspace-events`), as Redis's: a write
//! tells what it did to each key as Pub/Sub messages, on
//! `__keyspace@0__:<key>` (the event's name) with `K` and on
//! `__keyevent@0__:<event>` (the key) with `E`, for the event classes
//! chosen (`g` generic, `$` strings, `h` hashes, `x` expired, `n` new keys;
//! `A` all but `n` and `m`).
//!
//! A primary works out the events of each write as it runs (from the
//! command and the effects it logged) and logs them in the write's record
//! while it has classes on; every node applying the record, the primary
//! and its replicas alike, delivers them to its own subscribers by its own
//! setting, as Redis's replicas notify of the commands they replay. (So a
//! replica's events are those of the classes its primary logs.) The expiry
//! sweep logs `expired` for the keys it deletes.

use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use ferry_engine::View;
use ferry_proto::v1::{KeyEvent, Mutation, mutation::Op};

use crate::resp::Reply;

/// The class characters, in the order Redis writes them, with their bits.
const CLASSES: [(char, u32); 11] = [
    ('g', 1 << 2),
    ('$', 1 << 3),
    ('l', 1 << 4),
    ('s', 1 << 5),
    ('h', 1 << 6),
    ('z', 1 << 7),
    ('x', 1 << 8),
    ('e', 1 << 9),
    ('t', 1 << 10),
    ('d', 1 << 11),
    ('n', 1 << 14),
];
const KEYSPACE: u32 = 1 << 0;
const KEYEVENT: u32 = 1 << 1;
const KEY_MISS: u32 = 1 << 12;
/// `A`: every class but new keys and key misses (bits 2 to 11).
const ALL: u32 = ((1 << 12) - 1) & !(KEYSPACE | KEYEVENT);

/// The bit of class `c`.
fn class_bit(c: char) -> u32 {
    CLASSES
        .iter()
        .find(|(k, _)| *k == c)
        .map_or(0, |(_, bit)| *bit)
}

/// `notify-keyspace-events` as Redis reads it; `None` for a character it
/// does not know.
pub fn parse(text: &[u8]) -> Option<u32> {
    let mut flags = 0;
    for &c in text {
        flags |= match c {
            b'A' => ALL,
            b'K' => KEYSPACE,
            b'E' => KEYEVENT,
            b'm' => KEY_MISS,
            _ => match class_bit(c as char) {
                0 => return None,
                bit => bit,
            },
        };
    }
    Some(flags)
}

/// The setting as CONFIG GET shows it: Redis's order, `A` for all of its
/// classes (which, as Redis, then leaves `n` unsaid).
pub fn format(flags: u32) -> String {
    let mut out = String::new();
    if flags & ALL == ALL {
        out.push('A');
    } else {
        out.extend(
            CLASSES
                .iter()
                .filter(|(_, bit)| flags & bit != 0)
                .map(|(c, _)| *c),
        );
    }
    for (bit, c) in [(KEYSPACE, 'K'), (KEYEVENT, 'E'), (KEY_MISS, 'm')] {
        if flags & bit != 0 {
            out.push(c);
        }
    }
    out
}

/// Redis's refusal of a setting it cannot read.
pub const INVALID: &str = "Invalid event class character. Use 'Ag$lshzxeKEtmdn'.";

/// A node's `notify-keyspace-events`.
#[derive(Debug, Default)]
pub struct Notify {
    flags: AtomicU32,
}

impl Notify {
    pub fn set(&self, flags: u32) {
        self.flags.store(flags, Ordering::Relaxed);
    }

    pub fn flags(&self) -> u32 {
        self.flags.load(Ordering::Relaxed)
    }

    /// Whether writes log events: some class is on.
    pub fn logging(&self) -> bool {
        self.flags() & !(KEYSPACE | KEYEVENT | KEY_MISS) != 0
    }

    /// Whether the expiry sweep logs `expired`.
    pub fn logs_expired(&self) -> bool {
        self.flags() & class_bit('x') != 0
    }

    /// Whether a command's keys are looked up before it runs, for `new`.
    pub fn wants_new(&self) -> bool {
        self.flags() & class_bit('n') != 0
    }

    /// Delivers the events of a record applied, by this node's setting.
    pub fn deliver(
        &self,
        lsn: ferry_wal::Lsn,
        events: &[KeyEvent],
        pubsub: &crate::pubsub::PubSub,
    ) {
        let flags = self.flags();
        if flags & (KEYSPACE | KEYEVENT) == 0 || !pubsub.has_subscribers() {
            return;
        }
        for e in events {
            if flags & class_bit(e.class.chars().next().unwrap_or(' ')) != 0 {
                tell(flags, &e.event, &e.key, lsn.0, pubsub);
            }
        }
    }

    /// Whether a read that finds no key tells `keymiss` (class `m`).
    pub fn wants_keymiss(&self) -> bool {
        let flags = self.flags();
        flags & KEY_MISS != 0 && flags & (KEYSPACE | KEYEVENT) != 0
    }

    /// Tells `keymiss` for `key`, a read of this node's that found no key
    /// (not logged: a node's own reads are its own).
    pub fn keymiss(&self, key: &[u8], pubsub: &crate::pubsub::PubSub) {
        let flags = self.flags();
        if flags & KEY_MISS != 0 {
            tell(flags, "keymiss", key, 0, pubsub);
        }
    }

    /// Logs the events of write command `args` (its effects from
    /// `from` on, its reply) with it, those of the classes on. `absent`:
    /// its keys that did not exist before it ran (for `new`).
    pub fn note(
        &self,
        view: &mut View<'_>,
        args: &[Bytes],
        from: usize,
        reply: &Reply,
        absent: &[Bytes],
    ) -> ferry_engine::Result<()> {
        let flags = self.flags();
        let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
        let changed = view.effects().len() > from;
        let mut events = events_of(&name, args, &view.effects()[from..], reply);
        // A key its last field left is gone: `del` after `hdel`.
        if name == "hdel" && changed && view.get(&args[1])?.is_none() {
            events.push(("g", "del", args[1].clone()));
        }
        // `new` before the first event of a key the command created (a
        // RENAME's target: before `rename_from`), if only to expire it.
        // RENAME, COPY and RESTORE create their target anew, as Redis
        // deletes one that exists first.
        if flags & class_bit('n') != 0 {
            let target = match name.as_str() {
                "rename" | "renamenx" | "copy" => args.get(2),
                "restore" => args.get(1),
                _ => None,
            };
            let recreated = target.filter(|t| !absent.contains(t));
            for key in absent.iter().chain(recreated) {
                let expired = events.iter().any(|(_, e, k)| *e == "expired" && k == key);
                match events.iter().position(|(_, _, k)| k == key) {
                    Some(at) if expired || view.get(key)?.is_some() => {
                        let at = if name.starts_with("rename") { 0 } else { at };
                        events.insert(at, ("n", "new", key.clone()));
                    }
                    // Created with no event of its own (a BITFIELD whose
                    // every write OVERFLOW FAIL refused): `new` alone.
                    None if absent.contains(key) && view.get(key)?.is_some() => {
                        events.push(("n", "new", key.clone()));
                    }
                    _ => {}
                }
            }
        }
        for (class, event, key) in events {
            if flags & class_bit(class.chars().next().unwrap_or(' ')) != 0 {
                view.notify(class, event, key);
            }
        }
        Ok(())
    }
}

/// Whether Redis tells write command `args`'s keyspace events after its
/// reply rather than before (it notifies once the reply is added): what a
/// RESP3 client subscribed to its own events sees, in Redis 7.0's order.
pub fn after_reply(args: &[Bytes]) -> bool {
    let name = args[0].to_ascii_lowercase();
    match name.as_slice() {
        b"getset" | b"getdel" | b"getex" | b"hset" | b"hmset" | b"hsetnx" | b"hincrby"
        | b"hincrbyfloat" | b"expire" | b"pexpire" | b"expireat" | b"pexpireat" | b"bitfield" => {
            true
        }
        // SET ... GET replies with the old value first.
        b"set" => args.iter().skip(3).any(|a| a.eq_ignore_ascii_case(b"get")),
        _ => false,
    }
}

/// Publishes `event` on `key` on the channels `flags` choose. `new` is
/// early: Redis tells it as it creates the key, so before the reply of a
/// command that tells its other events after ([`after_reply`]).
fn tell(flags: u32, event: &str, key: &[u8], lsn: u64, pubsub: &crate::pubsub::PubSub) {
    let early = event == "new";
    if flags & KEYSPACE != 0 {
        let channel = [&b"__keyspace@0__:"[..], key].concat();
        pubsub.publish_event(
            &Bytes::from(channel),
            &Bytes::copy_from_slice(event.as_bytes()),
            lsn,
            early,
        );
    }
    if flags & KEYEVENT != 0 {
        let channel = format!("__keyevent@0__:{event}");
        pubsub.publish_event(
            &Bytes::from(channel),
            &Bytes::copy_from_slice(key),
            lsn,
            early,
        );
    }
}

/// The events of write command `name` from its effects: (class, event,
/// key), in Redis's order.
fn events_of(
    name: &str,
    args: &[Bytes],
    effects: &[Mutation],
    reply: &Reply,
) -> Vec<(&'static str, &'static str, Bytes)> {
    let ops: Vec<&Op> = effects.iter().filter_map(|m| m.op.as_ref()).collect();
    let key = |i: usize| args[i].clone();
    match name {
        "rename" | "renamenx" if !ops.is_empty() => {
            vec![("g", "rename_from", key(1)), ("g", "rename_to", key(2))]
        }
        "copy" if !ops.is_empty() => vec![("g", "copy_to", key(2))],
        "restore" if !ops.is_empty() => vec![("g", "restore", key(1))],
        // One event for all its writes, if one was not refused (else what
        // it logged only made room for them).
        "bitfield" if !ops.is_empty() && bitfield_wrote(args, reply) => {
            vec![("$", "setbit", key(1))]
        }
        "bitfield" => Vec::new(),
        // Set to expire in the past: Redis sets it, then finds it expired.
        "set" if !matches!(reply, Reply::Error(_) | Reply::Null) && set_expired(args) => vec![
            ("$", "set", key(1)),
            ("g", "expire", key(1)),
            ("x", "expired", key(1)),
        ],
        _ => {
            let mut events = Vec::new();
            for op in ops {
                match op {
                    Op::SetString(m) => {
                        events.push(("$", string_event(name), m.key.clone()));
                        if matches!(name, "setex" | "psetex")
                            || (name == "set" && sets_expiry(args))
                        {
                            events.push(("g", "expire", m.key.clone()));
                        }
                    }
                    Op::SetRange(m) => events.push(("$", string_event(name), m.key.clone())),
                    Op::Delete(m) => events.push(("g", "del", m.key.clone())),
                    Op::SetExpiry(m) if m.expire_at_ms == 0 => {
                        events.push(("g", "persist", m.key.clone()));
                    }
                    Op::SetExpiry(m) => events.push(("g", "expire", m.key.clone())),
                    Op::HashSet(m) => {
                        let event = match name {
                            "hincrby" => "hincrby",
                            "hincrbyfloat" => "hincrbyfloat",
                            _ => "hset",
                        };
                        events.push(("h", event, m.key.clone()));
                    }
                    Op::HashDelete(m) => events.push(("h", "hdel", m.key.clone())),
                    Op::FlushAll(_) | Op::EpochChange(_) | Op::Publish(_) => {}
                }
            }
            events
        }
    }
}

/// Whether a SET or INCRBY of BITFIELD `args` (parsed, as it succeeded) was
/// done: its reply, in `reply`'s array, is not the null of OVERFLOW FAIL.
fn bitfield_wrote(args: &[Bytes], reply: &Reply) -> bool {
    let Reply::Array(replies) = reply else {
        return false;
    };
    let (mut j, mut field) = (2, 0);
    while j < args.len() {
        let sub = args[j].to_ascii_lowercase();
        match sub.as_slice() {
            b"overflow" => j += 2,
            b"get" => (j, field) = (j + 3, field + 1),
            _ => {
                if !matches!(replies.get(field), Some(Reply::Null) | None) {
                    return true;
                }
                (j, field) = (j + 4, field + 1);
            }
        }
    }
    false
}

/// The event of a string written by command `name`, however it is logged.
fn string_event(name: &str) -> &'static str {
    match name {
        "incr" | "incrby" | "decr" | "decrby" => "incrby",
        "incrbyfloat" => "incrbyfloat",
        "append" => "append",
        "setrange" => "setrange",
        "setbit" => "setbit",
        _ => "set",
    }
}

/// SET's expiry options: EX, PX, EXAT or PXAT (not KEEPTTL).
fn set_expiry_option(args: &[Bytes]) -> Option<(&[u8], &Bytes)> {
    let mut i = 3;
    while i < args.len() {
        let word = args[i].to_ascii_lowercase();
        if matches!(word.as_slice(), b"ex" | b"px" | b"exat" | b"pxat") && i + 1 < args.len() {
            return Some((
                match word.as_slice() {
                    b"ex" => b"ex",
                    b"px" => b"px",
                    b"exat" => b"exat",
                    _ => b"pxat",
                },
                &args[i + 1],
            ));
        }
        i += 1;
    }
    None
}

/// Whether SET `args` gives an expiry.
fn sets_expiry(args: &[Bytes]) -> bool {
    set_expiry_option(args).is_some()
}

/// Whether SET `args` gives an expiry already past (EXAT or PXAT before
/// now: the key is expired as it is set).
fn set_expired(args: &[Bytes]) -> bool {
    let Some((unit, value)) = set_expiry_option(args) else {
        return false;
    };
    let Some(n) = crate::resp::parse_i64(value) else {
        return false;
    };
    let now = crate::node::now_ms() as i64;
    match unit {
        b"exat" => n.saturating_mul(1000) <= now,
        b"pxat" => n <= now,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setting_reads_and_shows_as_redis_s() {
        for (given, shown) in [
            ("KEA", "AKE"),
            ("AKE", "AKE"),
            ("Kg", "gK"),
            ("$hK", "$hK"),
            ("Egx", "gxE"),
            ("KEn", "nKE"),
            ("AKEnm", "AKEm"),
            ("g$lshzxetd", "A"),
            ("Kg$lshzxet", "g$lshzxetK"),
            ("", ""),
        ] {
            assert_eq!(format(parse(given.as_bytes()).unwrap()), shown, "{given}");
        }
        assert_eq!(parse(b"Kq"), None);
        let all_n = parse(b"AKEn").unwrap();
        assert_ne!(all_n & class_bit('n'), 0, "kept, though not shown");
    }

    #[test]
    fn events_follow_the_command_and_its_effects() {
        let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
        let args = |a: &[&str]| a.iter().map(|s| b(s)).collect::<Vec<_>>();
        let set = |key: &str, at: u64| Mutation {
            op: Some(Op::SetString(ferry_proto::v1::SetString {
                key: b(key),
                value: b("v"),
                expire_at_ms: at,
            })),
        };
        let ok = Reply::ok();
        let names = |e: Vec<(&str, &str, Bytes)>| -> Vec<String> {
            e.into_iter()
                .map(|(c, n, k)| format!("{c}{n}:{}", String::from_utf8_lossy(&k)))
                .collect()
        };
        assert_eq!(
            names(events_of(
                "set",
                &args(&["SET", "k", "v", "EX", "10"]),
                &[set("k", 99)],
                &ok
            )),
            ["$set:k", "gexpire:k"]
        );
        assert_eq!(
            names(events_of(
                "set",
                &args(&["SET", "k", "v", "KEEPTTL"]),
                &[set("k", 99)],
                &ok
            )),
            ["$set:k"]
        );
        assert_eq!(
            names(events_of(
                "set",
                &args(&["SET", "k", "v", "PXAT", "1"]),
                &[],
                &ok
            )),
            ["$set:k", "gexpire:k", "xexpired:k"]
        );
        assert_eq!(
            names(events_of(
                "incr",
                &args(&["INCR", "n"]),
                &[set("n", 0)],
                &ok
            )),
            ["$incrby:n"]
        );
        assert_eq!(
            names(events_of(
                "rename",
                &args(&["RENAME", "a", "b"]),
                &[set("b", 0)],
                &ok
            )),
            ["grename_from:a", "grename_to:b"]
        );
        assert!(events_of("rename", &args(&["RENAME", "a", "b"]), &[], &ok).is_empty());
    }
}
