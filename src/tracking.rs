//! CLIENT TRACKING: the invalidations of client-side caching, as Redis
//! 6+'s. A tracking client is told (a RESP3 `invalidate` push) when a key
//! it read may have changed: by default of the keys it read (each once: it
//! reads the key again to be told again), with BCAST of every key under
//! its prefixes. Changes reach the table from the engine once applied
//! ([`ferry_engine::ChangeListener`]), from clients' writes, expiry and a
//! replica's stream alike; a FLUSHALL, or a whole state put in place,
//! invalidates everything (a null). A key is noted before the command reads
//! it, so a change that lands between the two is told, never missed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use ferry_engine::{Changed, ChangedKey};
use tokio::sync::mpsc;

/// Keys the table remembers for default-mode clients before it forgets
/// some (any, as Redis picks them at random), telling their clients (Redis's
/// `tracking-table-max-keys`).
pub const TRACKING_TABLE_MAX_KEYS_DEFAULT: usize = 1_000_000;

/// Invalidation messages queued for a client that does not read them
/// before it is closed (its cache could no longer be kept right).
pub const TRACKING_BACKLOG_MAX: usize = 1 << 16;

/// The keys invalidated; `None`: all of them.
pub type Invalidation = Option<Vec<Bytes>>;

/// What a tracking connection is told (a RESP3 one: RESP2 has no pushes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Push {
    Invalidate(Invalidation),
    /// All keys, redirected from a RESP2 client: Redis writes the null in
    /// the tracking client's protocol (`$-1`), wherever it goes.
    InvalidateAllResp2,
    /// Its REDIRECT target has gone, so an invalidation went nowhere
    /// (Redis's `tracking-redir-broken` with the target's id).
    RedirectBroken(i64),
}

/// How a client tracks (CLIENT TRACKING ON's options).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// Told of every key under `prefixes` (all keys if none), read or not.
    pub bcast: bool,
    pub prefixes: Vec<Bytes>,
    /// Keys are remembered only for a command after CLIENT CACHING YES.
    pub optin: bool,
    /// Keys are remembered but for a command after CLIENT CACHING NO.
    pub optout: bool,
    /// Not told of the keys its own commands change (as Redis: a key it
    /// read and then wrote is forgotten untold; read again, it is tracked
    /// again).
    pub noloop: bool,
    /// REDIRECT's client id (one that existed when given): it gets the
    /// invalidations, as Pub/Sub messages if it has subscriptions, else
    /// as RESP3 pushes (a RESP2 client without subscriptions is told
    /// nothing, as in Redis).
    pub redirect: Option<i64>,
}

/// A client's tracking, as its connection holds it.
#[derive(Debug)]
pub struct ClientTracking {
    pub options: Options,
    /// CLIENT CACHING YES or NO, for the next command.
    pub caching: Option<bool>,
}

/// Where a connection's pushes go (its invalidations, and those of the
/// clients redirecting to it), from its start to its end ([`Tracking::connect`]).
#[derive(Debug)]
struct Outbox {
    sender: mpsc::Sender<Push>,
    /// Closed if it falls a whole backlog behind.
    activity: Arc<crate::node::Activity>,
}

impl Outbox {
    /// Queues `push` for a RESP3 connection (as Redis: a RESP2 one tracking
    /// without REDIRECT, or the target of one without subscriptions, is
    /// told nothing). One behind by the whole backlog is closed: a cache
    /// it keeps could no longer be kept right. (Its connection is open: it
    /// leaves the table, under the lock held here, before its socket
    /// closes.)
    fn send(&self, push: Push) {
        if !self.activity.resp3.load(Ordering::Acquire) {
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = self.sender.try_send(push) {
            tracing::warn!("closing a client that fell behind on its invalidations");
            self.activity.kill();
        }
    }
}

#[derive(Debug)]
struct Tracked {
    options: Options,
    /// The client it redirects to has gone...
    target_gone: bool,
    /// ... and an invalidation found it so (TRACKINGINFO's
    /// `broken_redirect`, as Redis finds it).
    broken: bool,
}

#[derive(Debug, Default)]
struct Table {
    /// Default-mode clients by the keys they read.
    keys: HashMap<Bytes, HashSet<u64>>,
    /// Client ids over all keys (INFO's `tracking_total_items`).
    items: usize,
    clients: HashMap<u64, Tracked>,
    /// Clients in BCAST mode.
    bcast: HashSet<u64>,
    /// Every open connection's pushes, tracking or not (one may be the
    /// target of another's REDIRECT).
    outboxes: HashMap<u64, Outbox>,
    /// Keys a client's transaction reads after it writes them: its read
    /// outlasts its own write (applied after the read was noted), as in
    /// Redis, where the read comes after the write's invalidation.
    kept: HashSet<(Bytes, u64)>,
}

/// Every tracking client of a node, and the keys they read.
#[derive(Debug)]
pub struct Tracking {
    /// Tracking clients: while none are, changes are not gathered.
    on: AtomicUsize,
    max_keys: AtomicUsize,
    table: Mutex<Table>,
    /// Where redirected invalidations go.
    pubsub: Arc<crate::pubsub::PubSub>,
}

impl Default for Tracking {
    fn default() -> Tracking {
        Tracking::new(Arc::default())
    }
}

/// Figures for INFO.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrackingFigures {
    pub clients: usize,
    pub keys: usize,
    pub items: usize,
    pub prefixes: usize,
}

impl Tracking {
    /// A table whose REDIRECT clients get their invalidations through
    /// `pubsub`.
    pub fn new(pubsub: Arc<crate::pubsub::PubSub>) -> Tracking {
        Tracking {
            on: AtomicUsize::new(0),
            max_keys: AtomicUsize::new(TRACKING_TABLE_MAX_KEYS_DEFAULT),
            table: Mutex::default(),
            pubsub,
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most keys remembered (`tracking-table-max-keys`).
    pub fn set_max_keys(&self, keys: usize) {
        self.max_keys.store(keys, Ordering::Relaxed);
    }

    pub fn max_keys(&self) -> usize {
        self.max_keys.load(Ordering::Relaxed)
    }

    /// Connection `id` has opened: its pushes, from now until
    /// [`Tracking::gone`], arrive in the inbox returned. `activity` is
    /// closed if it falls [`TRACKING_BACKLOG_MAX`] pushes behind.
    pub fn connect(&self, id: u64, activity: Arc<crate::node::Activity>) -> mpsc::Receiver<Push> {
        let (sender, inbox) = mpsc::channel(TRACKING_BACKLOG_MAX);
        self.table()
            .outboxes
            .insert(id, Outbox { sender, activity });
        inbox
    }

    /// Client `id` tracks with `options` from now on; its invalidations
    /// go to its connection's inbox ([`Tracking::connect`]).
    pub fn enable(&self, id: u64, options: Options) {
        let mut table = self.table();
        if options.bcast {
            table.bcast.insert(id);
        }
        let before = table.clients.insert(
            id,
            Tracked {
                options,
                target_gone: false,
                broken: false,
            },
        );
        if before.is_none() {
            self.on.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Client `id`, tracking already, does so with `options` now (more
    /// BCAST prefixes).
    pub fn update(&self, id: u64, options: Options) {
        if let Some(client) = self.table().clients.get_mut(&id) {
            if client.options.redirect != options.redirect {
                (client.target_gone, client.broken) = (false, false);
            }
            client.options = options;
        }
    }

    /// Connection `id` has gone: the clients redirecting to it are told
    /// nothing more (their redirect breaks at the next invalidation).
    pub fn gone(&self, id: u64) {
        let mut table = self.table();
        table.outboxes.remove(&id);
        for client in table.clients.values_mut() {
            if client.options.redirect == Some(id as i64) {
                client.target_gone = true;
            }
        }
    }

    /// Whether client `id`'s redirect is broken.
    pub fn redirect_broken(&self, id: u64) -> bool {
        self.table().clients.get(&id).is_some_and(|c| c.broken)
    }

    /// Client `id` tracks no more (CLIENT TRACKING OFF, RESET, gone). The
    /// keys it read are let go of as they change.
    pub fn disable(&self, id: u64) {
        let mut table = self.table();
        table.bcast.remove(&id);
        table.kept.retain(|(_, client)| *client != id);
        if table.clients.remove(&id).is_some() {
            self.on.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Client `id` (in default mode) is about to read `keys`: it is told
    /// when one changes after now. For a transaction's read, noted before
    /// the transaction runs, those in `written` (by the transaction's
    /// commands before the read) stay remembered through the client's own
    /// change of them.
    pub fn remember(
        &self,
        id: u64,
        keys: impl IntoIterator<Item = Bytes>,
        written: Option<&HashSet<Bytes>>,
    ) {
        let mut table = self.table();
        for key in keys {
            if written.is_some_and(|w| w.contains(&key)) {
                table.kept.insert((key.clone(), id));
            }
            let added = table.keys.entry(key).or_default().insert(id);
            table.items += usize::from(added);
        }
        // Over the limit: the keys forgotten are invalidated, as in Redis.
        let max = self.max_keys();
        if max > 0 && table.keys.len() > max {
            let over = table.keys.len() - max;
            let gone: Vec<Bytes> = table.keys.keys().take(over).cloned().collect();
            let refs: Vec<ChangedKey<'_>> = gone
                .iter()
                .map(|key| ChangedKey { key, by: None })
                .collect();
            // Only their readers: for BCAST clients nothing changed.
            tell(&mut table, &refs, false, &self.pubsub);
        }
    }

    pub fn figures(&self) -> TrackingFigures {
        let table = self.table();
        TrackingFigures {
            clients: table.clients.len(),
            keys: table.keys.len(),
            items: table.items,
            prefixes: table
                .bcast
                .iter()
                .filter_map(|id| table.clients.get(id))
                .map(|c| c.options.prefixes.len())
                .sum(),
        }
    }
}

/// Tells the clients of `keys` (read by them, or with `bcast` under a
/// BCAST prefix), one message per client; the keys are forgotten. A
/// NOLOOP client is not told of a key its own command changed: in default
/// mode its first change (which forgets the key) decides, with BCAST its
/// last, as in Redis.
fn tell(table: &mut Table, keys: &[ChangedKey<'_>], bcast: bool, pubsub: &crate::pubsub::PubSub) {
    // Default mode, as Redis tells it: key by key (each once, though a
    // batch may change one many times), a message each, to its readers in
    // the order they connected.
    let mut seen = HashSet::with_capacity(keys.len());
    for changed in keys.iter().filter(|c| seen.insert(c.key)) {
        if let Some(ids) = table.keys.remove(changed.key) {
            table.items -= ids.len();
            let mut ids: Vec<u64> = ids.into_iter().collect();
            ids.sort_unstable();
            for id in ids {
                // Read by its own transaction after this change: still read.
                if changed.by == Some(id) && table.kept.remove(&(changed.key.clone(), id)) {
                    table
                        .keys
                        .entry(changed.key.clone())
                        .or_default()
                        .insert(id);
                    table.items += 1;
                }
                if !own_change(table, id, changed.by) {
                    send(table, id, Some(vec![changed.key.clone()]), pubsub);
                }
            }
        }
    }
    if !bcast || table.bcast.is_empty() {
        return;
    }
    // BCAST, as Redis tells it: a message per prefix (in their order), of
    // the keys changed under it, in their order, each with who changed it
    // last.
    let mut last: HashMap<&Bytes, Option<u64>> = HashMap::with_capacity(keys.len());
    for changed in keys {
        last.insert(changed.key, changed.by);
    }
    let mut sorted: Vec<(&Bytes, Option<u64>)> = last.into_iter().collect();
    sorted.sort_unstable();
    let mut ids: Vec<u64> = table.bcast.iter().copied().collect();
    ids.sort_unstable();
    for id in ids {
        let Some(client) = table.clients.get(&id) else {
            continue;
        };
        let noloop = client.options.noloop;
        let mut prefixes = client.options.prefixes.clone();
        if prefixes.is_empty() {
            prefixes.push(Bytes::new());
        }
        prefixes.sort_unstable();
        for prefix in prefixes {
            let under: Vec<Bytes> = sorted
                .iter()
                .filter(|(k, by)| k.starts_with(&prefix) && !(noloop && *by == Some(id)))
                .map(|(k, _)| (*k).clone())
                .collect();
            if !under.is_empty() {
                send(table, id, Some(under), pubsub);
            }
        }
    }
}

/// Whether a change by client `by` is tracking client `id`'s own, which
/// with NOLOOP it is not told of.
fn own_change(table: &Table, id: u64, by: Option<u64>) -> bool {
    by == Some(id) && table.clients.get(&id).is_some_and(|c| c.options.noloop)
}

/// Queues `message` for tracking client `id`, or with REDIRECT sends it to
/// the client it redirects to: as a Pub/Sub message if that one has
/// subscriptions, else as a push (which only a RESP3 connection writes);
/// once it has gone, the client is told its redirect broke instead, at
/// each invalidation, as Redis tells it.
fn send(table: &mut Table, id: u64, message: Invalidation, pubsub: &crate::pubsub::PubSub) {
    let Some(client) = table.clients.get_mut(&id) else {
        return;
    };
    let (to, push) = match client.options.redirect {
        Some(target) if client.target_gone => {
            client.broken = true;
            (id, Push::RedirectBroken(target))
        }
        Some(target) => {
            let target = target as u64;
            // A null is written as the tracking client speaks.
            let resp3 = table
                .outboxes
                .get(&id)
                .is_some_and(|o| o.activity.resp3.load(Ordering::Acquire));
            if pubsub.invalidate(target, &message, resp3) {
                return;
            }
            let push = match message {
                None if !resp3 => Push::InvalidateAllResp2,
                message => Push::Invalidate(message),
            };
            (target, push)
        }
        None => (id, Push::Invalidate(message)),
    };
    if let Some(outbox) = table.outboxes.get(&to) {
        outbox.send(push);
    }
}

impl ferry_engine::ChangeListener for Tracking {
    fn listening(&self) -> bool {
        self.on.load(Ordering::Acquire) > 0
    }

    fn changed(&self, changed: Changed<'_>) {
        let mut table = self.table();
        match changed {
            Changed::Keys(keys) => tell(&mut table, keys, true, &self.pubsub),
            // As Redis tells them: the readers of the keys changed before
            // the flush at once, then a null to every client per flush,
            // and BCAST clients the write's keys once its whole pass is
            // done.
            Changed::All {
                before,
                flushes,
                keys,
            } => {
                tell(&mut table, before, false, &self.pubsub);
                for _ in 0..flushes {
                    table.keys.clear();
                    table.items = 0;
                    table.kept.clear();
                    // In the order the clients connected, as Redis goes
                    // over them (two may redirect to one connection).
                    let mut ids: Vec<u64> = table.clients.keys().copied().collect();
                    ids.sort_unstable();
                    for id in ids {
                        send(&mut table, id, None, &self.pubsub);
                    }
                }
                tell(&mut table, keys, true, &self.pubsub);
            }
        }
    }
}

/// CLIENT TRACKING ON's options after ON (`args`), checked as Redis checks
/// them; the error text if not.
pub fn parse_options(args: &[Bytes], exists: impl Fn(i64) -> bool) -> Result<Options, String> {
    let mut options = Options::default();
    let mut i = 0;
    while i < args.len() {
        let word = String::from_utf8_lossy(&args[i]).to_ascii_lowercase();
        match word.as_str() {
            "bcast" => options.bcast = true,
            "optin" => options.optin = true,
            "optout" => options.optout = true,
            "noloop" => options.noloop = true,
            "prefix" if i + 1 < args.len() => {
                i += 1;
                options.prefixes.push(args[i].clone());
            }
            "redirect" if i + 1 < args.len() => {
                if options.redirect.is_some() {
                    return Err("ERR A client can only redirect to a single other client".into());
                }
                i += 1;
                let id = std::str::from_utf8(&args[i])
                    .ok()
                    .and_then(|s| s.parse().ok());
                let Some(id) = id else {
                    return Err("ERR value is not an integer or out of range".into());
                };
                // It must exist now, as in Redis (it may go later: then
                // the redirect is broken).
                if !exists(id) {
                    return Err("ERR The client ID you want redirect to does not exist".into());
                }
                options.redirect = Some(id);
            }
            _ => return Err("ERR syntax error".into()),
        }
        i += 1;
    }
    if !options.bcast && !options.prefixes.is_empty() {
        return Err("ERR PREFIX option requires BCAST mode to be enabled".into());
    }
    if options.bcast && (options.optin || options.optout) {
        return Err("ERR OPTIN and OPTOUT are not compatible with BCAST".into());
    }
    if options.optin && options.optout {
        return Err("ERR You can't specify both OPTIN mode and OPTOUT mode".into());
    }
    check_prefixes(&[], &options.prefixes)?;
    Ok(options)
}

/// Whether `new` prefixes may join a client's `existing` ones: none may be
/// a prefix of another (nor equal), as Redis checks, with its texts.
pub fn check_prefixes(existing: &[Bytes], new: &[Bytes]) -> Result<(), String> {
    let overlap = |a: &Bytes, b: &Bytes| a.starts_with(b) || b.starts_with(a);
    let text = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
    for (i, a) in new.iter().enumerate() {
        if let Some(old) = existing.iter().find(|old| overlap(a, old)) {
            return Err(format!(
                "ERR Prefix '{}' overlaps with an existing prefix '{}'. Prefixes for a single client must not overlap.",
                text(a),
                text(old)
            ));
        }
        if let Some(b) = new[i + 1..].iter().find(|b| overlap(a, b)) {
            return Err(format!(
                "ERR Prefix '{}' overlaps with another provided prefix '{}'. Prefixes for a single client must not overlap.",
                text(a),
                text(b)
            ));
        }
    }
    Ok(())
}

/// An invalidation as the RESP3 push Redis sends: `>2`, `invalidate`, the
/// keys (a null for all).
pub fn encode(message: &Invalidation, out: &mut bytes::BytesMut) {
    out.extend_from_slice(b">2\r\n$10\r\ninvalidate\r\n");
    match message {
        None => out.extend_from_slice(b"_\r\n"),
        Some(keys) => {
            out.extend_from_slice(format!("*{}\r\n", keys.len()).as_bytes());
            for key in keys {
                out.extend_from_slice(format!("${}\r\n", key.len()).as_bytes());
                out.extend_from_slice(key);
                out.extend_from_slice(b"\r\n");
            }
        }
    }
}

/// `push` as RESP3 writes it.
pub fn encode_push(push: &Push, out: &mut bytes::BytesMut) {
    match push {
        Push::Invalidate(message) => encode(message, out),
        Push::InvalidateAllResp2 => out.extend_from_slice(b">2\r\n$10\r\ninvalidate\r\n$-1\r\n"),
        Push::RedirectBroken(id) => out.extend_from_slice(
            format!(">2\r\n$21\r\ntracking-redir-broken\r\n:{id}\r\n").as_bytes(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_engine::ChangeListener;

    /// A RESP3 connection's.
    fn activity() -> Arc<crate::node::Activity> {
        let activity = crate::node::Activity::new(-1);
        activity.resp3.store(true, Ordering::Relaxed);
        Arc::new(activity)
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    /// `keys` changed by no client's command.
    fn changes(keys: &[Bytes]) -> Vec<ChangedKey<'_>> {
        keys.iter()
            .map(|key| ChangedKey { key, by: None })
            .collect()
    }

    #[test]
    fn a_noloop_client_is_not_told_of_its_own_changes() {
        let tracking = Tracking::default();
        let noloop = Options {
            noloop: true,
            ..Options::default()
        };
        let mut reader = tracking.connect(1, activity());
        tracking.enable(1, noloop);
        let mut watcher = tracking.connect(2, activity());
        tracking.enable(
            2,
            Options {
                bcast: true,
                noloop: true,
                ..Options::default()
            },
        );
        let (k, other) = (b("k"), b("other"));
        let by = |key, by| ChangedKey { key, by: Some(by) };
        // Its own write: not told, and forgotten (as Redis: a later change
        // by another is not told either until it reads the key again).
        tracking.remember(1, [k.clone()], None);
        tracking.changed(Changed::Keys(&[by(&k, 1), by(&k, 3)]));
        assert!(reader.try_recv().is_err(), "its own change");
        tracking.changed(Changed::Keys(&[by(&k, 3)]));
        assert!(reader.try_recv().is_err(), "forgotten");
        tracking.remember(1, [k.clone()], None);
        tracking.changed(Changed::Keys(&[by(&k, 3), by(&k, 1)]));
        assert_eq!(
            reader.try_recv().unwrap(),
            Push::Invalidate(Some(vec![k.clone()]))
        );
        // BCAST: a key's last change decides.
        for _ in 0..3 {
            assert_eq!(
                watcher.try_recv().unwrap(),
                Push::Invalidate(Some(vec![k.clone()]))
            );
        }
        let changes = [by(&k, 3), by(&k, 2), by(&other, 2), by(&other, 3)];
        tracking.changed(Changed::Keys(&changes));
        assert!(reader.try_recv().is_err());
        assert_eq!(
            watcher.try_recv().unwrap(),
            Push::Invalidate(Some(vec![other.clone()]))
        );
        assert!(watcher.try_recv().is_err(), "{k:?} changed by itself last");
        // A flush tells everyone.
        tracking.changed(Changed::REPLACED);
        assert_eq!(reader.try_recv().unwrap(), Push::Invalidate(None));
        assert_eq!(watcher.try_recv().unwrap(), Push::Invalidate(None));
    }

    #[test]
    fn read_keys_are_told_once_and_bcast_by_prefix() {
        let tracking = Tracking::default();
        assert!(!tracking.listening());
        let mut reader = tracking.connect(1, activity());
        tracking.enable(1, Options::default());
        let bcast = Options {
            bcast: true,
            prefixes: vec![b("user:")],
            ..Options::default()
        };
        let mut watcher = tracking.connect(2, activity());
        tracking.enable(2, bcast);
        assert!(tracking.listening());
        tracking.remember(1, [b("a"), b("user:1")], None);
        tracking.changed(Changed::Keys(&changes(&[b("a"), b("a"), b("b")])));
        assert_eq!(
            reader.try_recv().unwrap(),
            Push::Invalidate(Some(vec![b("a")]))
        );
        assert!(watcher.try_recv().is_err(), "not under its prefix");
        // Told once: the key must be read again.
        tracking.changed(Changed::Keys(&changes(&[b("a"), b("user:1")])));
        assert_eq!(
            reader.try_recv().unwrap(),
            Push::Invalidate(Some(vec![b("user:1")]))
        );
        assert_eq!(
            watcher.try_recv().unwrap(),
            Push::Invalidate(Some(vec![b("user:1")]))
        );
        tracking.changed(Changed::REPLACED);
        assert_eq!(reader.try_recv().unwrap(), Push::Invalidate(None));
        assert_eq!(watcher.try_recv().unwrap(), Push::Invalidate(None));
        tracking.disable(1);
        tracking.disable(2);
        assert!(!tracking.listening());
        assert_eq!(tracking.figures().items, 0);
    }

    #[test]
    fn a_redirect_reaches_its_target_s_connection_until_it_goes() {
        let tracking = Tracking::default();
        let own_activity = activity();
        own_activity.resp3.store(false, Ordering::Relaxed);
        let mut own = tracking.connect(1, own_activity.clone());
        let target_activity = activity();
        let mut target = tracking.connect(7, target_activity.clone());
        let redirect = Options {
            redirect: Some(7),
            ..Options::default()
        };
        tracking.enable(1, redirect);
        tracking.remember(1, [b("k")], None);
        tracking.changed(Changed::Keys(&changes(&[b("k")])));
        assert_eq!(
            target.try_recv().unwrap(),
            Push::Invalidate(Some(vec![b("k")]))
        );
        // A flush's null as the tracking client speaks.
        tracking.changed(Changed::REPLACED);
        assert_eq!(target.try_recv().unwrap(), Push::InvalidateAllResp2);
        own_activity.resp3.store(true, Ordering::Relaxed);
        tracking.changed(Changed::REPLACED);
        assert_eq!(target.try_recv().unwrap(), Push::Invalidate(None));
        assert!(own.try_recv().is_err(), "all went to the target");
        // A RESP2 connection is pushed nothing.
        target_activity.resp3.store(false, Ordering::Relaxed);
        tracking.changed(Changed::REPLACED);
        assert!(target.try_recv().is_err(), "RESP2: nothing");
        tracking.gone(7);
        tracking.changed(Changed::REPLACED);
        assert_eq!(own.try_recv().unwrap(), Push::RedirectBroken(7));
        assert!(tracking.redirect_broken(1));
    }

    #[test]
    fn past_the_table_s_limit_keys_are_forgotten_and_told() {
        let tracking = Tracking::default();
        tracking.set_max_keys(2);
        let mut reader = tracking.connect(1, activity());
        tracking.enable(1, Options::default());
        let all = Options {
            bcast: true,
            ..Options::default()
        };
        let mut watcher = tracking.connect(2, activity());
        tracking.enable(2, all);
        tracking.remember(1, [b("a"), b("b"), b("c")], None);
        let Push::Invalidate(Some(told)) = reader.try_recv().unwrap() else {
            panic!("keys invalidated");
        };
        assert_eq!(told.len(), 1);
        assert_eq!(tracking.figures().keys, 2);
        assert!(watcher.try_recv().is_err(), "nothing changed for BCAST");
    }

    #[test]
    fn a_client_a_whole_backlog_behind_is_closed_one_gone_is_not() {
        let tracking = Tracking::default();
        let all = Options {
            bcast: true,
            ..Options::default()
        };
        let (slow, gone) = (activity(), activity());
        let _inbox = tracking.connect(1, slow.clone());
        tracking.enable(1, all.clone());
        drop(tracking.connect(2, gone.clone()));
        tracking.enable(2, all);
        for _ in 0..TRACKING_BACKLOG_MAX {
            tracking.changed(Changed::Keys(&changes(&[b("k")])));
        }
        assert!(!slow.killed.load(Ordering::Acquire));
        tracking.changed(Changed::Keys(&changes(&[b("k")])));
        assert!(slow.killed.load(Ordering::Acquire));
        assert!(!gone.killed.load(Ordering::Acquire));
    }

    #[test]
    fn options_are_checked_as_redis_checks_them() {
        let args = |s: &str| s.split(' ').map(b).collect::<Vec<_>>();
        assert!(
            parse_options(&args("PREFIX a"), |_| true)
                .unwrap_err()
                .contains("requires BCAST")
        );
        assert!(
            parse_options(&args("OPTIN OPTOUT"), |_| true)
                .unwrap_err()
                .contains("both")
        );
        assert!(
            parse_options(&args("BCAST OPTIN"), |_| true)
                .unwrap_err()
                .contains("not compatible")
        );
        assert!(
            parse_options(&args("BCAST PREFIX ab PREFIX a"), |_| true)
                .unwrap_err()
                .contains("overlaps")
        );
        assert_eq!(
            parse_options(&args("FOO"), |_| true).unwrap_err(),
            "ERR syntax error"
        );
        let o = parse_options(&args("bcast prefix a prefix b noloop"), |_| true).unwrap();
        assert_eq!(o.prefixes, [b("a"), b("b")]);
        let mut out = bytes::BytesMut::new();
        encode(&Some(vec![b("k")]), &mut out);
        encode(&None, &mut out);
        encode_push(&Push::InvalidateAllResp2, &mut out);
        assert_eq!(
            &out[..],
            b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n>2\r\n$10\r\ninvalidate\r\n_\r\n>2\r\n$10\r\ninvalidate\r\n$-1\r\n"
        );
    }
}
