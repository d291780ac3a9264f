//! Pub/Sub, as Redis's: SUBSCRIBE, PSUBSCRIBE and SSUBSCRIBE, PUBLISH and
//! SPUBLISH, PUBSUB. A message published on a primary with replicas is a
//! WAL record (`Publish`), and each node delivers it to its own
//! subscribers once the record is applied
//! ([`ferry_engine::ChangeListener::published`]): a subscriber that reads
//! after a message sees the writes logged before it, and a replica's
//! subscribers get the primary's messages, in the log's order, as Redis
//! replicates PUBLISH. A primary without replicas delivers at once (after
//! the publisher's writes before it), as does a replica, whose messages
//! reach its own subscribers only, as in Redis.
//!
//! A subscriber's messages wait in its inbox until its connection writes
//! them; one that lets too many pile up is closed, by Redis's
//! `client-output-buffer-limit` for the `pubsub` class: at its hard limit
//! ([`PUBSUB_BACKLOG_BYTES_MAX`] by default), or past its soft limit for
//! longer than its seconds (8 MiB for 60 s).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{BufMut, Bytes, BytesMut};
use ferry_engine::ChangeListener;
use ferry_wal::Lsn;
use tokio::sync::mpsc;

use crate::node::Activity;
use crate::resp::Reply;

/// Messages waiting for a subscriber, in bytes, at which it is closed
/// (Redis's default hard limit for Pub/Sub clients).
pub const PUBSUB_BACKLOG_BYTES_MAX: usize = 32 << 20;

/// One class of Redis's `client-output-buffer-limit`: a client is closed
/// once `hard` bytes wait for it, or once `soft` bytes have waited for
/// longer than `soft_secs` seconds (0 bytes: no such limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimit {
    pub hard: u64,
    pub soft: u64,
    pub soft_secs: u64,
}

impl OutputLimit {
    /// Which of its limits `bytes` waiting for a client break, as Redis
    /// checks them: `hard` at once, `soft` once over it for longer than
    /// its seconds, counted from the first check that found it there
    /// (`over_soft_since`, seconds since the epoch, 0 while under it:
    /// kept up to date here).
    pub fn broken(
        &self,
        bytes: u64,
        now_secs: u64,
        over_soft_since: &AtomicU64,
    ) -> Option<&'static str> {
        if self.soft == 0 || bytes < self.soft {
            over_soft_since.store(0, Ordering::Release);
        } else if over_soft_since.load(Ordering::Acquire) == 0 {
            over_soft_since.store(now_secs, Ordering::Release);
        }
        let since = over_soft_since.load(Ordering::Acquire);
        if self.hard > 0 && bytes >= self.hard {
            Some("hard")
        } else if since != 0 && now_secs.saturating_sub(since) > self.soft_secs {
            Some("soft")
        } else {
            None
        }
    }

    /// The fewest bytes that may break one of its limits (none: no limit).
    pub fn least(&self) -> Option<u64> {
        [self.hard, self.soft].into_iter().filter(|&b| b > 0).min()
    }
}

/// The classes of `client-output-buffer-limit`, in Redis's order and as
/// CONFIG GET names them. ferry enforces `normal` on what waits to be
/// written to a client and `pubsub` on that and a subscriber's messages;
/// replicas are fed over gRPC with its own flow control, so `slave` is
/// kept and shown only.
pub const OUTPUT_CLASSES: [&str; 3] = ["normal", "slave", "pubsub"];

/// [`OUTPUT_CLASSES`]' places.
pub const NORMAL_CLASS: usize = 0;
pub const PUBSUB_CLASS: usize = 2;

/// [`OUTPUT_LIMITS_DEFAULT`] as CONFIG GET shows it.
pub const OUTPUT_LIMITS_DEFAULT_TEXT: &str =
    "normal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60";

/// Redis's defaults for [`OUTPUT_CLASSES`].
pub const OUTPUT_LIMITS_DEFAULT: [OutputLimit; 3] = [
    OutputLimit {
        hard: 0,
        soft: 0,
        soft_secs: 0,
    },
    OutputLimit {
        hard: 256 << 20,
        soft: 64 << 20,
        soft_secs: 60,
    },
    OutputLimit {
        hard: PUBSUB_BACKLOG_BYTES_MAX as u64,
        soft: 8 << 20,
        soft_secs: 60,
    },
];

/// A `client-output-buffer-limit` value (`class hard soft seconds`, for
/// as many classes as it names; `replica` for `slave`, sizes with Redis's
/// units) applied over `base`, all or nothing, as Redis 7.0 reads it (an
/// empty one changes nothing); the error text if not.
pub fn parse_output_limits(
    value: &str,
    base: [OutputLimit; 3],
) -> Result<[OutputLimit; 3], &'static str> {
    let args: Vec<&str> = value.split_ascii_whitespace().collect();
    if !args.len().is_multiple_of(4) {
        return Err("Wrong number of arguments in buffer limit configuration.");
    }
    let mut limits = base;
    for class in args.chunks(4) {
        let at = match class[0].to_ascii_lowercase().as_str() {
            "normal" => 0,
            "slave" | "replica" => 1,
            "pubsub" => 2,
            _ => return Err("Invalid client class specified in buffer limit configuration."),
        };
        let mut values = [0u64; 3];
        for (value, arg) in values.iter_mut().zip(&class[1..]) {
            *value = match crate::commands::parse_memory(arg.as_bytes()) {
                Some(v) if v >= 0 => v as u64,
                _ => {
                    return Err(
                        "Error in hard, soft or soft_seconds setting in buffer limit configuration.",
                    );
                }
            };
        }
        limits[at] = OutputLimit {
            hard: values[0],
            soft: values[1],
            soft_secs: values[2],
        };
    }
    Ok(limits)
}

/// `limits` as CONFIG GET shows them (Redis's: `normal 0 0 0 slave ...`).
pub fn format_output_limits(limits: &[OutputLimit; 3]) -> String {
    OUTPUT_CLASSES
        .iter()
        .zip(limits)
        .map(|(class, l)| format!("{class} {} {} {}", l.hard, l.soft, l.soft_secs))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A message applied this long after it was published is not delivered:
/// a replica catching up after a partition does not flood its subscribers
/// with what they missed (Redis's replicas get at most their replication
/// backlog's worth).
pub const MESSAGE_AGE_MAX_MS: u64 = 60_000;

/// Deliveries counted for publishers waiting on them, at most: the oldest
/// are dropped past it (a publisher whose count went asks the table).
const COUNTS_KEPT_MAX: usize = 1 << 16;

/// What a client subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// SUBSCRIBE: channels by name.
    Channel = 0,
    /// PSUBSCRIBE: channels by glob pattern.
    Pattern = 1,
    /// SSUBSCRIBE: shard channels (SPUBLISH's).
    Shard = 2,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Channel, Kind::Pattern, Kind::Shard];

    fn subscribe_word(self) -> &'static str {
        ["subscribe", "psubscribe", "ssubscribe"][self as usize]
    }

    fn unsubscribe_word(self) -> &'static str {
        ["unsubscribe", "punsubscribe", "sunsubscribe"][self as usize]
    }
}

/// A message for a subscriber, encoded as a RESP2 array; a RESP3
/// connection sends it as a push (`>` for the first byte), or as `resp3`
/// if it has a form of its own there (an invalidation).
#[derive(Debug, Clone, PartialEq)]
pub struct Pushed {
    resp2: Bytes,
    resp3: Option<Bytes>,
    /// The LSN of the record that delivered it (0: none), so that it goes
    /// out after the replies of the writes before it, before those after...
    lsn: u64,
    /// ... and its place among the node's deliveries, for the replies of
    /// commands that ran before or after it ([`PubSub::mark`]).
    seq: u64,
    /// A keyspace event told as its record's command began (`new`): before
    /// that command's reply even where its other events go after.
    early: bool,
}

impl Pushed {
    fn len(&self) -> usize {
        self.resp2.len()
    }
}

/// A subscriber's connection's end: the messages to write.
#[derive(Debug)]
pub struct Inbox {
    messages: mpsc::UnboundedReceiver<Pushed>,
    queued: Arc<AtomicUsize>,
    /// Taken, but to go after a reply not yet written.
    held: VecDeque<Pushed>,
}

impl Inbox {
    /// The next messages (all there are now); `None` once the client has
    /// no subscriptions left and every message is taken.
    pub async fn next(&mut self) -> Option<Vec<Pushed>> {
        if self.held.is_empty() {
            let first = self.messages.recv().await?;
            self.held.push_back(first);
            // Publishers ready to run go first: their messages then leave
            // in the same write.
            tokio::task::yield_now().await;
        }
        Some(self.take(None, None, false))
    }

    /// The messages waiting now that go before a reply: with `mark`, of
    /// a command that ran when the node had made `mark` deliveries, those
    /// made by then, or (a write's, logged at `lsn`) delivered by its
    /// record or an earlier one, of its own record only the early ones if
    /// the command tells its events `after` its reply; all of them
    /// without. The rest wait, in order.
    pub fn take(&mut self, mark: Option<u64>, lsn: Option<u64>, after: bool) -> Vec<Pushed> {
        let mut bytes = 0;
        while let Ok(message) = self.messages.try_recv() {
            bytes += message.len();
            self.held.push_back(message);
        }
        self.queued.fetch_sub(bytes, Ordering::AcqRel);
        let Some(mark) = mark else {
            return self.held.drain(..).collect();
        };
        let before = |m: &Pushed| {
            m.seq <= mark
                || lsn.is_some_and(|l| {
                    m.lsn != 0 && (m.lsn < l || (m.lsn == l && (!after || m.early)))
                })
        };
        let through = self
            .held
            .iter()
            .position(|m| !before(m))
            .unwrap_or(self.held.len());
        self.held.drain(..through).collect()
    }
}

/// Writes `message` to `out` as the connection speaks.
pub fn write_message(message: &Pushed, out: &mut BytesMut, resp3: bool) {
    match &message.resp3 {
        Some(own) if resp3 => out.extend_from_slice(own),
        _ if resp3 => {
            out.put_u8(b'>');
            out.extend_from_slice(&message.resp2[1..]);
        }
        _ => out.extend_from_slice(&message.resp2),
    }
}

#[derive(Debug)]
struct Subscriber {
    outbox: mpsc::UnboundedSender<Pushed>,
    queued: Arc<AtomicUsize>,
    /// When its backlog was found at the soft limit, in seconds since the
    /// Unix epoch (0: it was below at the last message).
    over_soft_since: AtomicU64,
    activity: Arc<Activity>,
    /// Its subscriptions by [`Kind`].
    names: [BTreeSet<Bytes>; 3],
}

impl Subscriber {
    /// The count a confirmation of `kind` shows: channels and patterns
    /// together, shard channels apart (as Redis counts them).
    fn count(&self, kind: Kind) -> usize {
        match kind {
            Kind::Shard => self.names[2].len(),
            _ => self.names[0].len() + self.names[1].len(),
        }
    }

    fn total(&self) -> usize {
        self.names.iter().map(BTreeSet::len).sum()
    }

    /// Queues `message`; a subscriber that lets too much pile up, by
    /// `limit` as of `now_secs` (Redis's checks), is closed (its connection
    /// leaves the table as it ends; counted in `closed`). Whether it was
    /// queued.
    fn send(&self, message: Pushed, limit: OutputLimit, now_secs: u64, closed: &AtomicU64) -> bool {
        if self.activity.is_killed() {
            return false;
        }
        let len = message.len();
        if self.outbox.send(message).is_err() {
            return false;
        }
        let queued = (self.queued.fetch_add(len, Ordering::AcqRel) + len) as u64;
        if let Some(broken) = limit.broken(queued, now_secs, &self.over_soft_since) {
            tracing::warn!(
                bytes = queued,
                limit = broken,
                "closing a subscriber that fell behind on its messages (client-output-buffer-limit pubsub)"
            );
            self.activity.kill();
            closed.fetch_add(1, Ordering::Relaxed);
        }
        true
    }
}

#[derive(Debug, Default)]
struct Table {
    /// Subscribers by channel, pattern and shard channel ([`Kind`]).
    names: [BTreeMap<Bytes, BTreeSet<u64>>; 3],
    clients: HashMap<u64, Subscriber>,
}

/// The node's subscribers, and the counts its publishers wait for.
#[derive(Debug, Default)]
pub struct PubSub {
    table: Mutex<Table>,
    /// Publishers waiting for the deliveries of their records: while
    /// none are (always, on a replica), none are counted.
    awaiting: AtomicUsize,
    counts: Mutex<BTreeMap<u64, usize>>,
    /// Messages delivered (one for all a PUBLISH's subscribers of a
    /// channel, or of a pattern), numbering them.
    delivered: AtomicU64,
    /// Messages queued for subscribers, one per subscriber.
    sent: AtomicU64,
    /// Subscribers closed for falling behind.
    closed: AtomicU64,
    /// Clients with subscriptions: while none are, a message costs no
    /// lock (keyspace notifications with no one listening).
    clients: AtomicUsize,
    limits: Limits,
}

/// `client-output-buffer-limit` (see [`OUTPUT_CLASSES`]): each class's
/// hard, soft and seconds, read without a lock by every connection's
/// writes (a read beside a CONFIG SET may mix the two: one batch's worth).
#[derive(Debug)]
struct Limits([[AtomicU64; 3]; 3]);

impl Default for Limits {
    fn default() -> Limits {
        let limits = Limits(Default::default());
        limits.set(OUTPUT_LIMITS_DEFAULT);
        limits
    }
}

impl Limits {
    fn get(&self, class: usize) -> OutputLimit {
        let [hard, soft, soft_secs] = &self.0[class];
        OutputLimit {
            hard: hard.load(Ordering::Relaxed),
            soft: soft.load(Ordering::Relaxed),
            soft_secs: soft_secs.load(Ordering::Relaxed),
        }
    }

    fn set(&self, limits: [OutputLimit; 3]) {
        for (class, limit) in self.0.iter().zip(limits) {
            class[0].store(limit.hard, Ordering::Relaxed);
            class[1].store(limit.soft, Ordering::Relaxed);
            class[2].store(limit.soft_secs, Ordering::Relaxed);
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Figures for INFO and the metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct PubSubFigures {
    pub channels: usize,
    pub patterns: usize,
    pub shard_channels: usize,
    /// Messages queued for subscribers, one per subscriber, so far.
    pub sent: u64,
    /// Subscribers closed for falling behind, so far.
    pub closed: u64,
}

/// The encoding of a message (RESP2): `message` or `smessage` with the
/// channel, `pmessage` with the pattern first.
fn encode(kind: Kind, pattern: Option<&[u8]>, channel: &[u8], payload: &[u8]) -> Pushed {
    let word: &[u8] = match kind {
        Kind::Channel => b"message",
        Kind::Pattern => b"pmessage",
        Kind::Shard => b"smessage",
    };
    let mut out = BytesMut::with_capacity(payload.len() + channel.len() + 48);
    let items: Vec<&[u8]> = [Some(word), pattern, Some(channel), Some(payload)]
        .into_iter()
        .flatten()
        .collect();
    out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
    for item in items {
        out.extend_from_slice(format!("${}\r\n", item.len()).as_bytes());
        out.extend_from_slice(item);
        out.extend_from_slice(b"\r\n");
    }
    Pushed {
        resp2: out.freeze(),
        resp3: None,
        lsn: 0,
        seq: 0,
        early: false,
    }
}

/// Where CLIENT TRACKING's REDIRECT sends a RESP2 client's invalidations.
pub const INVALIDATE_CHANNEL: &str = "__redis__:invalidate";

/// A subscription's confirmation: `word`, the name (null: none was) and
/// the client's count after it.
fn confirmation(word: &'static str, name: Option<Bytes>, count: usize) -> Reply {
    Reply::Push(vec![
        Reply::Bulk(Bytes::from_static(word.as_bytes())),
        Reply::opt_bulk(name),
        Reply::Int(count as i64),
    ])
}

impl PubSub {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `client-output-buffer-limit`, all classes.
    pub fn output_limits(&self) -> [OutputLimit; 3] {
        [0, 1, 2].map(|class| self.limits.get(class))
    }

    /// One class of `client-output-buffer-limit` ([`OUTPUT_CLASSES`]).
    pub fn output_limit(&self, class: usize) -> OutputLimit {
        self.limits.get(class)
    }

    /// Sets `client-output-buffer-limit`; clients are held to it from
    /// their next replies, subscribers from their next message.
    pub fn set_output_limits(&self, limits: [OutputLimit; 3]) {
        self.limits.set(limits);
    }

    /// The `pubsub` class's limit, and the time to judge it by.
    fn subscriber_limit(&self) -> (OutputLimit, u64) {
        (self.output_limit(PUBSUB_CLASS), now_secs())
    }

    /// Whether some client has subscriptions.
    pub fn has_subscribers(&self) -> bool {
        self.clients.load(Ordering::Acquire) > 0
    }

    /// Keeps [`PubSub::has_subscribers`] to the table's clients (under
    /// its lock).
    fn count_clients(&self, table: &Table) {
        self.clients.store(table.clients.len(), Ordering::Release);
    }

    /// Client `id` subscribes to `names` of `kind`; the first subscription
    /// opens its inbox (`inbox`). One confirmation per name, as Redis's.
    pub fn subscribe(
        &self,
        id: u64,
        activity: &Arc<Activity>,
        inbox: &mut Option<Inbox>,
        kind: Kind,
        names: &[Bytes],
    ) -> Reply {
        let mut table = self.table();
        let table = &mut *table;
        let client = table.clients.entry(id).or_insert_with(|| {
            let (outbox, messages) = mpsc::unbounded_channel();
            let queued = Arc::new(AtomicUsize::new(0));
            // What an inbox closed since still holds goes first.
            for message in inbox
                .as_mut()
                .map(|i| i.take(None, None, false))
                .unwrap_or_default()
            {
                queued.fetch_add(message.len(), Ordering::AcqRel);
                let _ = outbox.send(message);
            }
            *inbox = Some(Inbox {
                messages,
                queued: queued.clone(),
                held: VecDeque::new(),
            });
            Subscriber {
                outbox,
                queued,
                over_soft_since: AtomicU64::new(0),
                activity: activity.clone(),
                names: Default::default(),
            }
        });
        let mut replies = Vec::with_capacity(names.len());
        for name in names {
            if client.names[kind as usize].insert(name.clone()) {
                table.names[kind as usize]
                    .entry(name.clone())
                    .or_default()
                    .insert(id);
            }
            replies.push(confirmation(
                kind.subscribe_word(),
                Some(name.clone()),
                client.count(kind),
            ));
        }
        show(activity, Some(client));
        self.count_clients(table);
        Reply::Seq(replies)
    }

    /// Client `id` unsubscribes from `names` of `kind`, or from all of
    /// that kind if none are given. Once it has no subscriptions left its
    /// inbox closes, after the messages already in it.
    pub fn unsubscribe(&self, id: u64, activity: &Activity, kind: Kind, names: &[Bytes]) -> Reply {
        let mut table = self.table();
        let table = &mut *table;
        let Some(client) = table.clients.get_mut(&id) else {
            let word = kind.unsubscribe_word();
            return Reply::Seq(if names.is_empty() {
                vec![confirmation(word, None, 0)]
            } else {
                names
                    .iter()
                    .map(|n| confirmation(word, Some(n.clone()), 0))
                    .collect()
            });
        };
        let names: Vec<Bytes> = if names.is_empty() {
            client.names[kind as usize].iter().cloned().collect()
        } else {
            names.to_vec()
        };
        let mut replies = Vec::with_capacity(names.len().max(1));
        for name in &names {
            if client.names[kind as usize].remove(name) {
                forget(&mut table.names[kind as usize], name, id);
            }
            replies.push(confirmation(
                kind.unsubscribe_word(),
                Some(name.clone()),
                client.count(kind),
            ));
        }
        if replies.is_empty() {
            replies.push(confirmation(
                kind.unsubscribe_word(),
                None,
                client.count(kind),
            ));
        }
        if client.total() == 0 {
            table.clients.remove(&id);
            show(activity, None);
        } else {
            show(activity, Some(client));
        }
        self.count_clients(table);
        Reply::Seq(replies)
    }

    /// Client `id` leaves every subscription (RESET, or its connection
    /// ends).
    pub fn leave(&self, id: u64, activity: &Activity) {
        let mut table = self.table();
        let table = &mut *table;
        if let Some(client) = table.clients.remove(&id) {
            for kind in Kind::ALL {
                for name in &client.names[kind as usize] {
                    forget(&mut table.names[kind as usize], name, id);
                }
            }
            show(activity, None);
        }
        self.count_clients(table);
    }

    /// Delivers `payload` to this node's subscribers of `channel` (the
    /// channel's, then each matching pattern's; a shard channel's only
    /// for `shard`), from the record at `lsn` (0: none); how many
    /// deliveries that made, as PUBLISH answers.
    pub fn publish(&self, channel: &Bytes, payload: &Bytes, shard: bool, lsn: u64) -> usize {
        self.deliver(channel, payload, shard, lsn, false)
    }

    /// As [`PubSub::publish`], for a keyspace event: `early` for one told
    /// as its record's command began ([`Pushed`]).
    pub fn publish_event(&self, channel: &Bytes, payload: &Bytes, lsn: u64, early: bool) {
        self.deliver(channel, payload, false, lsn, early);
    }

    fn deliver(
        &self,
        channel: &Bytes,
        payload: &Bytes,
        shard: bool,
        lsn: u64,
        early: bool,
    ) -> usize {
        if !self.has_subscribers() {
            return 0;
        }
        let table = self.table();
        let (limit, now) = self.subscriber_limit();
        let mut delivered = 0;
        let kind = if shard { Kind::Shard } else { Kind::Channel };
        if let Some(ids) = table.names[kind as usize].get(channel) {
            let message = Pushed {
                lsn,
                seq: self.next_seq(),
                early,
                ..encode(kind, None, channel, payload)
            };
            for id in ids {
                if let Some(client) = table.clients.get(id) {
                    delivered +=
                        usize::from(client.send(message.clone(), limit, now, &self.closed));
                }
            }
        }
        if !shard {
            for (pattern, ids) in &table.names[Kind::Pattern as usize] {
                if !crate::glob::matches(pattern, channel, false) {
                    continue;
                }
                let message = Pushed {
                    lsn,
                    seq: self.next_seq(),
                    early,
                    ..encode(Kind::Pattern, Some(pattern), channel, payload)
                };
                for id in ids {
                    if let Some(client) = table.clients.get(id) {
                        delivered +=
                            usize::from(client.send(message.clone(), limit, now, &self.closed));
                    }
                }
            }
        }
        self.sent.fetch_add(delivered as u64, Ordering::Relaxed);
        delivered
    }

    /// Sends client `id` the invalidation of `keys` (`None`: all) that a
    /// client tracking with REDIRECT to it is owed, if it has
    /// subscriptions (Redis's Pub/Sub mode), in order with its messages: a
    /// RESP3 `invalidate` push, or for RESP2 a message on
    /// [`INVALIDATE_CHANNEL`], as Redis's (a null for all keys as the
    /// tracking client speaks, RESP3 or not, in either). False if it has
    /// none (a RESP3 client is then pushed the invalidation outside
    /// Pub/Sub).
    pub fn invalidate(
        &self,
        id: u64,
        keys: &crate::tracking::Invalidation,
        null_resp3: bool,
    ) -> bool {
        let table = self.table();
        let Some(client) = table.clients.get(&id) else {
            return false;
        };
        let null: &[u8] = if null_resp3 { b"_\r\n" } else { b"$-1\r\n" };
        let mut resp3 = BytesMut::new();
        match keys {
            None => {
                resp3.extend_from_slice(b">2\r\n$10\r\ninvalidate\r\n");
                resp3.extend_from_slice(null);
            }
            Some(_) => crate::tracking::encode(keys, &mut resp3),
        }
        let mut resp2 = BytesMut::new();
        let header = format!(
            "*3\r\n$7\r\nmessage\r\n${}\r\n{INVALIDATE_CHANNEL}\r\n",
            INVALIDATE_CHANNEL.len()
        );
        resp2.extend_from_slice(header.as_bytes());
        match keys {
            None => resp2.extend_from_slice(null),
            // The same array as RESP3's, after its `invalidate`.
            Some(_) => resp2.extend_from_slice(&resp3[b">2\r\n$10\r\ninvalidate\r\n".len()..]),
        }
        let (limit, now) = self.subscriber_limit();
        let sent = client.send(
            Pushed {
                resp2: resp2.freeze(),
                resp3: Some(resp3.freeze()),
                lsn: 0,
                seq: self.next_seq(),
                early: false,
            },
            limit,
            now,
            &self.closed,
        );
        self.sent.fetch_add(u64::from(sent), Ordering::Relaxed);
        true
    }

    /// The deliveries made so far: a command's replies go after the
    /// messages delivered before it ran ([`Inbox::take`]).
    pub fn mark(&self) -> u64 {
        self.delivered.load(Ordering::Acquire)
    }

    fn next_seq(&self) -> u64 {
        self.delivered.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// A publisher is about to wait for the deliveries of its record
    /// ([`PubSub::delivered`]) until the guard drops.
    pub fn awaiting(self: &Arc<Self>) -> Awaiting {
        self.awaiting.fetch_add(1, Ordering::AcqRel);
        Awaiting(self.clone())
    }

    /// The deliveries the message of record `lsn` made, once applied; if
    /// no longer known, the subscribers `channel` has now.
    pub fn delivered(&self, lsn: Lsn, channel: &Bytes, shard: bool) -> usize {
        let counted = self
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&lsn.0);
        counted.unwrap_or_else(|| self.subscribers(channel, shard))
    }

    /// The subscribers a message on `channel` would reach now.
    pub fn subscribers(&self, channel: &Bytes, shard: bool) -> usize {
        let table = self.table();
        let kind = if shard { Kind::Shard } else { Kind::Channel };
        let direct = table.names[kind as usize]
            .get(channel)
            .map_or(0, BTreeSet::len);
        let by_pattern: usize = if shard {
            0
        } else {
            table.names[Kind::Pattern as usize]
                .iter()
                .filter(|(p, _)| crate::glob::matches(p, channel, false))
                .map(|(_, ids)| ids.len())
                .sum()
        };
        direct + by_pattern
    }

    /// PUBSUB CHANNELS / SHARDCHANNELS: the channels with subscribers,
    /// matching `pattern` if given.
    pub fn channels(&self, shard: bool, pattern: Option<&[u8]>) -> Vec<Bytes> {
        let kind = if shard { Kind::Shard } else { Kind::Channel };
        self.table().names[kind as usize]
            .keys()
            .filter(|c| pattern.is_none_or(|p| crate::glob::matches(p, c, false)))
            .cloned()
            .collect()
    }

    /// PUBSUB NUMSUB / SHARDNUMSUB: the subscribers of `channel` (not by
    /// pattern).
    pub fn numsub(&self, shard: bool, channel: &[u8]) -> usize {
        let kind = if shard { Kind::Shard } else { Kind::Channel };
        self.table().names[kind as usize]
            .get(channel)
            .map_or(0, BTreeSet::len)
    }

    pub fn figures(&self) -> PubSubFigures {
        let table = self.table();
        PubSubFigures {
            channels: table.names[0].len(),
            patterns: table.names[1].len(),
            shard_channels: table.names[2].len(),
            sent: self.sent.load(Ordering::Relaxed),
            closed: self.closed.load(Ordering::Relaxed),
        }
    }

    /// Told by the engine of a message applied: delivered (unless older
    /// than [`MESSAGE_AGE_MAX_MS`]), and counted if a publisher may be
    /// waiting for it.
    pub fn applied(&self, lsn: Lsn, message: &ferry_proto::v1::Publish) {
        let age = crate::node::now_ms().saturating_sub(message.published_at_ms);
        let delivered = if message.published_at_ms != 0 && age > MESSAGE_AGE_MAX_MS {
            0
        } else {
            self.publish(&message.channel, &message.message, message.shard, lsn.0)
        };
        if self.awaiting.load(Ordering::Acquire) > 0 {
            let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
            counts.insert(lsn.0, delivered);
            if counts.len() > COUNTS_KEPT_MAX {
                counts.pop_first();
            }
        }
    }
}

/// A publisher waiting ([`PubSub::awaiting`]).
pub struct Awaiting(Arc<PubSub>);

impl Drop for Awaiting {
    fn drop(&mut self) {
        self.0.awaiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Drops `id` from the subscribers of `name`, and the name with its last.
fn forget(names: &mut BTreeMap<Bytes, BTreeSet<u64>>, name: &Bytes, id: u64) {
    if let Some(ids) = names.get_mut(name) {
        ids.remove(&id);
        if ids.is_empty() {
            names.remove(name);
        }
    }
}

/// Shows the client's subscriptions in CLIENT LIST (`sub`, `psub`, `ssub`,
/// flag `P`); a subscriber is never idle (`--timeout`), as in Redis.
fn show(activity: &Activity, client: Option<&Subscriber>) {
    for kind in Kind::ALL {
        let n = client.map_or(0, |c| c.names[kind as usize].len());
        activity.subscriptions[kind as usize].store(n as u64, Ordering::Relaxed);
    }
}

/// The engine's listener on a node: CLIENT TRACKING's table for the
/// changes, Pub/Sub for the messages and the keyspace events.
#[derive(Debug)]
pub struct Listener {
    pub tracking: Arc<crate::tracking::Tracking>,
    pub pubsub: Arc<PubSub>,
    pub notify: Arc<crate::notify::Notify>,
}

impl ChangeListener for Listener {
    fn listening(&self) -> bool {
        self.tracking.listening()
    }

    fn changed(&self, changed: ferry_engine::Changed<'_>) {
        self.tracking.changed(changed);
    }

    fn notified(&self, lsn: Lsn, events: &[ferry_proto::v1::KeyEvent]) {
        self.notify.deliver(lsn, events, &self.pubsub);
    }

    fn published(&self, lsn: Lsn, message: &ferry_proto::v1::Publish) {
        self.pubsub.applied(lsn, message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activity() -> Arc<Activity> {
        Arc::new(Activity::new(-1))
    }

    fn messages(inbox: &mut Option<Inbox>) -> Vec<Bytes> {
        let taken = inbox
            .as_mut()
            .map(|i| i.take(None, None, false))
            .unwrap_or_default();
        taken.into_iter().map(|m| m.resp2).collect()
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn messages_reach_channel_and_pattern_subscribers_counted() {
        let hub = PubSub::default();
        let (a, c) = (activity(), activity());
        let (mut ia, mut ic) = (None, None);
        hub.subscribe(1, &a, &mut ia, Kind::Channel, &[b("news")]);
        hub.subscribe(2, &c, &mut ic, Kind::Pattern, &[b("n*"), b("x*")]);
        hub.subscribe(2, &c, &mut ic, Kind::Channel, &[b("news")]);
        assert_eq!(hub.publish(&b("news"), &b("hi"), false, 0), 3);
        assert_eq!(
            messages(&mut ia),
            vec![b("*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n")]
        );
        let got = messages(&mut ic);
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0],
            b("*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n")
        );
        assert_eq!(
            got[1],
            b("*4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnews\r\n$2\r\nhi\r\n")
        );
        // A shard channel is a namespace of its own.
        assert_eq!(hub.publish(&b("news"), &b("hi"), true, 0), 0);
        assert_eq!(hub.publish(&b("other"), &b("hi"), false, 0), 0);
        let f = hub.figures();
        assert_eq!((f.channels, f.patterns, f.shard_channels), (1, 2, 0));
        assert_eq!(a.subscriptions[0].load(Ordering::Relaxed), 1);
        assert_eq!(c.subscriptions[1].load(Ordering::Relaxed), 2);
    }

    #[test]
    fn unsubscribing_from_all_closes_the_inbox_after_its_messages() {
        let hub = PubSub::default();
        let a = activity();
        let mut inbox = None;
        hub.subscribe(1, &a, &mut inbox, Kind::Channel, &[b("c1"), b("c2")]);
        hub.publish(&b("c1"), &b("m"), false, 0);
        let reply = hub.unsubscribe(1, &a, Kind::Channel, &[]);
        let Reply::Seq(confirmations) = reply else {
            panic!("{reply:?}")
        };
        assert_eq!(
            confirmations,
            vec![
                confirmation("unsubscribe", Some(b("c1")), 1),
                confirmation("unsubscribe", Some(b("c2")), 0),
            ]
        );
        assert_eq!(hub.publish(&b("c1"), &b("m"), false, 0), 0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let inbox = inbox.as_mut().unwrap();
        assert_eq!(rt.block_on(inbox.next()).map(|m| m.len()), Some(1));
        assert_eq!(rt.block_on(inbox.next()), None);
        assert_eq!(hub.figures().channels, 0);
        // Nothing to leave: one confirmation with a null name.
        assert_eq!(
            hub.unsubscribe(1, &a, Kind::Pattern, &[]),
            Reply::Seq(vec![confirmation("punsubscribe", None, 0)])
        );
    }

    #[test]
    fn output_limits_read_and_show_as_redis_s() {
        assert_eq!(
            parse_output_limits(OUTPUT_LIMITS_DEFAULT_TEXT, OUTPUT_LIMITS_DEFAULT),
            Ok(OUTPUT_LIMITS_DEFAULT)
        );
        assert_eq!(
            format_output_limits(&OUTPUT_LIMITS_DEFAULT),
            OUTPUT_LIMITS_DEFAULT_TEXT
        );
        assert_eq!(
            parse_output_limits("", OUTPUT_LIMITS_DEFAULT),
            Ok(OUTPUT_LIMITS_DEFAULT)
        );
        let limits = parse_output_limits("Replica 1kb 2k 3", OUTPUT_LIMITS_DEFAULT).unwrap();
        assert_eq!(
            limits[1],
            OutputLimit {
                hard: 1024,
                soft: 2000,
                soft_secs: 3
            }
        );
        assert_eq!(
            limits[2], OUTPUT_LIMITS_DEFAULT[2],
            "the other classes kept"
        );
        for (bad, why) in [
            ("pubsub 1 2", "Wrong number"),
            ("master 1 2 3", "Invalid client class"),
            ("pubsub -1 0 0", "Error in hard"),
            ("normal 1 1 1 pubsub 1 1 x", "Error in hard"),
        ] {
            let err = parse_output_limits(bad, OUTPUT_LIMITS_DEFAULT).unwrap_err();
            assert!(err.starts_with(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn the_soft_limit_closes_a_subscriber_over_it_longer_than_its_seconds() {
        let hub = PubSub::default();
        let a = activity();
        let mut inbox = None;
        hub.subscribe(1, &a, &mut inbox, Kind::Channel, &[b("c")]);
        let message = encode(Kind::Channel, None, b"c", &[b'x'; 100]);
        let each = message.len() as u64;
        let limit = OutputLimit {
            hard: 0,
            soft: 2 * each,
            soft_secs: 2,
        };
        let closed = AtomicU64::new(0);
        let send = |now: u64| {
            let table = hub.table();
            let client = table.clients.get(&1).expect("subscribed");
            assert!(client.send(message.clone(), limit, now, &closed));
        };
        send(100);
        send(100); // at the soft limit: counted from now
        send(102);
        assert!(!a.is_killed(), "not longer than 2 s over");
        // Read: below the limit again, the count starts over.
        let inbox = inbox.as_mut().expect("an inbox");
        assert_eq!(inbox.take(None, None, false).len(), 3);
        send(103);
        send(104);
        send(106);
        assert!(!a.is_killed(), "2 s over since 104");
        send(107);
        assert!(a.is_killed(), "3 s over since 104");
        assert_eq!(closed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_subscriber_too_far_behind_is_closed() {
        let hub = PubSub::default();
        let a = activity();
        let mut inbox = None;
        hub.subscribe(1, &a, &mut inbox, Kind::Channel, &[b("c")]);
        let payload = Bytes::from(vec![b'x'; 1 << 20]);
        let mut sent = 0;
        while !a.is_killed() {
            assert_eq!(hub.publish(&b("c"), &payload, false, 0), 1);
            sent += 1;
            assert!(sent <= PUBSUB_BACKLOG_BYTES_MAX >> 20, "never closed");
        }
        // Closed by the message that took it past the limit.
        let each = encode(Kind::Channel, None, b"c", &payload).len();
        assert_eq!(sent, PUBSUB_BACKLOG_BYTES_MAX / each + 1);
        // Closed: nothing more is queued for it.
        assert_eq!(hub.publish(&b("c"), &payload, false, 0), 0);
    }

    #[test]
    fn counts_are_kept_for_waiting_publishers_only() {
        let hub = Arc::new(PubSub::default());
        let a = activity();
        let mut inbox = None;
        hub.subscribe(1, &a, &mut inbox, Kind::Channel, &[b("c")]);
        let message = |at: u64| ferry_proto::v1::Publish {
            channel: b("c"),
            message: b("m"),
            shard: false,
            published_at_ms: at,
        };
        hub.applied(Lsn(5), &message(0));
        assert!(hub.counts.lock().unwrap().is_empty());
        let waiting = hub.awaiting();
        hub.applied(Lsn(6), &message(crate::node::now_ms()));
        // Published long before it is applied: not delivered.
        hub.applied(
            Lsn(7),
            &message(crate::node::now_ms() - MESSAGE_AGE_MAX_MS - 1000),
        );
        assert_eq!(hub.delivered(Lsn(7), &b("c"), false), 0);
        assert_eq!(messages(&mut inbox).len(), 2);
        hub.leave(1, &a);
        assert_eq!(hub.delivered(Lsn(6), &b("c"), false), 1);
        // Gone from the counts: the table's figure now.
        assert_eq!(hub.delivered(Lsn(6), &b("c"), false), 0);
        drop(waiting);
        assert_eq!(hub.awaiting.load(Ordering::Relaxed), 0);
    }
}
