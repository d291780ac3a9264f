//! The RESP server: accepts connections, parses requests, runs commands and
//! writes replies in order, with pipelined writes in flight together.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ferry_engine::{EngineError, Ticket, View};
use ferry_proto::tls::Tls;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::commands::{self, Conn, FailoverArgs, Handler, Multi, ShutdownArgs, Spec, WriteHandler};
use crate::node::{
    Activity, ClientInfo, EXPIRE_SWEEP_INTERVAL, EXPIRE_SWEEP_KEYS_MAX, Node, STATS_SAMPLE_INTERVAL,
};
use crate::pubsub::OutputLimit;
use crate::resp::{ParseLimits, Reply, parse_request};

/// Replies a connection may have outstanding before it waits for them.
pub const PIPELINE_DEPTH_MAX: usize = 1024;
/// Writes of one connection, read one after the other, that run together
/// at most: under one lock of the write path, in as few WAL appends as fit.
pub const WRITES_TOGETHER_MAX: usize = 64;
/// Bytes read from a socket at a time.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// How long shutdown waits for connections to finish what they started.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Expiry sweeps in a row at most, before the sweeper sleeps again.
const EXPIRE_SWEEPS_PER_TICK_MAX: usize = 16;

/// A reply owed to a client, in request order.
enum Queued {
    Ready(Reply),
    Pending(Ticket<Reply>),
    /// Its reply is not sent (CLIENT REPLY OFF or SKIP); it is awaited
    /// all the same, and an error counted.
    Silent(Box<Queued>),
    /// A subscriber's reply, after the messages delivered before its
    /// command ran ([`crate::pubsub::PubSub::mark`]); with `true`, before
    /// those of its own record (the keyspace events of a command Redis
    /// notifies after replying: [`crate::notify::after_reply`]).
    Marked(Box<Queued>, u64, bool),
    /// A primary's PUBLISH: its reply is the deliveries its record made
    /// once applied.
    Published {
        ticket: Ticket<Reply>,
        channel: Bytes,
        shard: bool,
        awaiting: crate::pubsub::Awaiting,
    },
}

/// Redis's reply to a write on a replica.
pub const READONLY_REPLY: &str = "READONLY You can't write against a read only replica.";
/// Redis's reply to a write when the write lease does not hold.
pub const NOREPLICAS_REPLY: &str = "NOREPLICAS Not enough good replicas to write.";
/// The reply to a write the lease's replicas did not flush in time.
pub const NOT_REPLICATED_REPLY: &str = "NOREPLICAS Not enough good replicas flushed this write in time; it is durable on this node and may still reach them.";
/// Redis's reply on a replica whose link is down, with stale reads off.
pub const MASTERDOWN_REPLY: &str =
    "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.";

fn engine_error_reply(err: EngineError) -> Reply {
    match err {
        EngineError::ReadOnly => Reply::Error(READONLY_REPLY.into()),
        EngineError::Wal(ferry_wal::WalError::BatchTooLarge { bytes, max }) => Reply::err(format!(
            "the command's effects ({bytes} bytes) exceed the largest WAL record ({max} bytes)"
        )),
        EngineError::Wal(e) => Reply::Error(format!("MISCONF Errors writing to the WAL: {e}")),
        EngineError::Stopped(why) => {
            Reply::Error(format!("MISCONF Errors writing to the WAL: {why}"))
        }
        other => Reply::err(other),
    }
}

/// Runs the RESP server until `shutdown` resolves: then stops accepting,
/// lets every connection finish the requests it has read, and syncs the WAL.
///
/// # Errors
///
/// The final WAL sync failing.
pub async fn run(
    node: Arc<Node>,
    listener: TcpListener,
    tls_listener: Option<(TcpListener, Tls)>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    // TLS handshakes under way: they count against --maxclients.
    let handshakes = Arc::new(AtomicUsize::new(0));
    let sweeper = tokio::spawn(expire_sweeper(node.clone(), stop_rx.clone()));
    let sampler = tokio::spawn(stats_sampler(node.clone(), stop_rx.clone()));
    let idle = tokio::spawn(close_idle_clients(node.clone(), stop_rx.clone()));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let Some((mut socket, addr, laddr)) = accepted_socket(accepted, &node.config) else {
                    tokio::time::sleep(ACCEPT_RETRY_PAUSE).await;
                    continue;
                };
                if !admit(&node, &handshakes) {
                    connections.spawn(async move {
                        let _ = socket.write_all(MAXCLIENTS_REPLY).await;
                    });
                    continue;
                }
                let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
                let authenticated = !node.config.requirepass.required();
                let client = Accepted { fd, addr, laddr, authenticated };
                connections.spawn(connection(node.clone(), socket, client, stop_rx.clone()));
            }
            accepted = accept_tls(tls_listener.as_ref()) => {
                let Some((socket, addr, laddr)) = accepted_socket(accepted, &node.config) else {
                    tokio::time::sleep(ACCEPT_RETRY_PAUSE).await;
                    continue;
                };
                // Over the limit, closed before a handshake costs anything.
                if !admit(&node, &handshakes) {
                    continue;
                }
                let handshake = Handshake::begin(&handshakes);
                // The certificate as of now: a reload reaches new clients.
                let Some(config) = tls_listener.as_ref().and_then(|(_, tls)| tls.resp_config()) else {
                    continue;
                };
                let (node, mut stop) = (node.clone(), stop_rx.clone());
                let authenticated = !node.config.requirepass.required();
                connections.spawn(async move {
                    // The handshake in the connection's own task: a slow
                    // or silent client holds up no other, nor a shutdown.
                    let accepted = tokio::select! {
                        s = tls_handshake(&node, config, socket, &addr) => s,
                        _ = stop.changed() => return,
                    };
                    drop(handshake);
                    if let Some(stream) = accepted {
                        let fd = std::os::fd::AsRawFd::as_raw_fd(stream.get_ref().0);
                        let client = Accepted { fd, addr, laddr, authenticated };
                        connection(node, stream, client, stop).await;
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    tracing::info!("shutting down: no new connections; finishing requests in flight");
    drop(listener);
    drop(tls_listener);
    let _ = stop_tx.send(true);
    // What a CLIENT PAUSE holds fails instead of waiting out the pause
    // (writes held for a switchover must not run now).
    if node.pipeline.refuse_paused() {
        tracing::warn!("the commands held by a pause fail: the node is shutting down");
    }
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = connections.len(),
            "connections still busy after the grace period"
        );
        connections.abort_all();
    }
    let _ = sweeper.await;
    let _ = sampler.await;
    let _ = idle.await;
    let durable = node.wal.sync().await?;
    tracing::info!(durable_lsn = %durable, "WAL synced; bye");
    Ok(())
}

/// How long a listener waits after a failed accept (out of file
/// descriptors, say) before the next, instead of spinning on it.
pub const ACCEPT_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// How long a TLS listener waits for a new connection's ClientHello: a
/// silent connection holds a handshake slot no longer than this.
pub const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(2);

/// The TLS handshake of the client at `addr`, with `config` (the node's
/// certificate as it is when the client came): its ClientHello within
/// [`CLIENT_HELLO_TIMEOUT`], the rest within
/// [`ferry_proto::tls::HANDSHAKE_TIMEOUT`]. A handshake that fails once
/// begun (or a client speaking something else than TLS) is counted and
/// logged; a connection closed or silent before it sent a byte (a port
/// check) is only logged.
pub async fn tls_handshake(
    node: &Node,
    config: Arc<tokio_rustls::rustls::ServerConfig>,
    socket: TcpStream,
    addr: &str,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let hello = tokio::time::timeout(
        CLIENT_HELLO_TIMEOUT,
        tokio_rustls::LazyConfigAcceptor::new(Default::default(), socket),
    )
    .await;
    let error = match hello {
        Ok(Ok(start)) => {
            match tokio::time::timeout(
                ferry_proto::tls::HANDSHAKE_TIMEOUT,
                start.into_stream(config),
            )
            .await
            {
                Ok(Ok(stream)) => return Some(stream),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".to_string(),
            }
        }
        Ok(Err(e)) if e.kind() != std::io::ErrorKind::UnexpectedEof => e.to_string(),
        Ok(Err(_)) => {
            tracing::debug!(client = %addr, "closed before a TLS handshake");
            return None;
        }
        Err(_) => {
            tracing::debug!(client = %addr, "no TLS ClientHello in time");
            return None;
        }
    };
    node.stats
        .tls_handshake_failures
        .fetch_add(1, Ordering::Relaxed);
    tracing::debug!(client = %addr, %error, "TLS handshake failed");
    None
}

/// The next connection of the TLS listener, if there is one (never
/// otherwise).
async fn accept_tls(
    tls: Option<&(TcpListener, Tls)>,
) -> std::io::Result<(TcpStream, std::net::SocketAddr)> {
    match tls {
        Some((listener, _)) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// An accepted socket, its peer's and its own address, set up for
/// replies that leave at once; `None` if accepting failed.
fn accepted_socket(
    accepted: std::io::Result<(TcpStream, std::net::SocketAddr)>,
    config: &crate::node::Config,
) -> Option<(TcpStream, String, String)> {
    match accepted {
        Ok((socket, addr)) => {
            let keepalive = Duration::from_secs(config.tcp_keepalive_secs.load(Ordering::Relaxed));
            let _ = socket.set_nodelay(true);
            if !keepalive.is_zero() {
                // As Redis: probes after `keepalive` idle, then every
                // third of it, three unanswered ones closing it.
                let probes = socket2::TcpKeepalive::new()
                    .with_time(keepalive)
                    .with_interval((keepalive / 3).max(Duration::from_secs(1)))
                    .with_retries(KEEPALIVE_PROBES);
                if let Err(e) = socket2::SockRef::from(&socket).set_tcp_keepalive(&probes) {
                    tracing::debug!(error = %e, "setting TCP keepalive");
                }
            }
            let laddr = socket
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            Some((socket, addr.to_string(), laddr))
        }
        Err(e) => {
            tracing::warn!(error = %e, "accept failed");
            None
        }
    }
}

/// Unanswered keepalive probes after which a client connection is
/// closed (Redis's).
const KEEPALIVE_PROBES: u32 = 3;

/// How long a closing connection may take to send what it still holds.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// What a client over `--maxclients` is told before it is closed.
const MAXCLIENTS_REPLY: &[u8] = b"-ERR max number of clients reached\r\n";

/// Counts a new connection, and whether it fits under `--maxclients` with
/// the clients connected and the TLS handshakes under way (a refusal is
/// counted too).
fn admit(node: &Node, handshakes: &AtomicUsize) -> bool {
    node.stats
        .total_connections_received
        .fetch_add(1, Ordering::Relaxed);
    let busy = node.stats.connected_clients.load(Ordering::Relaxed) as usize
        + handshakes.load(Ordering::Relaxed);
    if busy >= node.config.maxclients.load(Ordering::Relaxed) {
        node.stats
            .rejected_connections
            .fetch_add(1, Ordering::Relaxed);
        return false;
    }
    true
}

/// A TLS handshake under way, counted until it ends (dropped).
struct Handshake(Arc<AtomicUsize>);

impl Handshake {
    fn begin(handshakes: &Arc<AtomicUsize>) -> Handshake {
        handshakes.fetch_add(1, Ordering::Relaxed);
        Handshake(handshakes.clone())
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs `work` every `period` until the server stops.
async fn every(period: Duration, mut stop: watch::Receiver<bool>, mut work: impl FnMut()) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => work(),
        }
    }
}

/// Samples what INFO's rates and memory peak are made of, every
/// [`STATS_SAMPLE_INTERVAL`].
async fn stats_sampler(node: Arc<Node>, stop: watch::Receiver<bool>) {
    every(STATS_SAMPLE_INTERVAL, stop, || {
        node.stats.sample(crate::info::rss_bytes());
    })
    .await;
}

/// How often clients are checked for `--timeout` (as Redis's clientsCron
/// reaches each client within a second).
const IDLE_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// Closes the clients idle for `--timeout` seconds (CONFIG SET's value at
/// each check), as CLIENT KILL closes them: nothing on the request path.
async fn close_idle_clients(node: Arc<Node>, stop: watch::Receiver<bool>) {
    every(IDLE_CHECK_INTERVAL, stop, || close_idle(&node)).await;
}

/// One check of [`close_idle_clients`].
fn close_idle(node: &Node) {
    let timeout = Duration::from_secs(node.config.timeout_secs.load(Ordering::Relaxed));
    if timeout.is_zero() {
        return;
    }
    let clients = node.clients.lock().unwrap_or_else(|e| e.into_inner());
    for info in clients.values() {
        let a = &info.activity;
        // The exemption first: one ended (Release) after the interaction
        // was noted, which is then seen here.
        if a.idle_exempt.load(Ordering::Acquire) || a.killed.load(Ordering::Relaxed) {
            continue;
        }
        let last = info.connected_at + Duration::from_millis(a.last_ms.load(Ordering::Relaxed));
        if last.elapsed() >= timeout {
            tracing::debug!(client = info.id, ?timeout, "closing an idle client");
            a.kill();
        }
    }
}

async fn expire_sweeper(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(EXPIRE_SWEEP_INTERVAL) => {}
        }
        // A replica never expires keys itself: its primary logs the deletions.
        // Nor does a primary without its write lease: it may be cut off.
        if !node.pipeline.is_writable() || !node.lease_holds() || node.is_stale_primary() {
            continue;
        }
        for _ in 0..EXPIRE_SWEEPS_PER_TICK_MAX {
            let started = Instant::now();
            let swept = node
                .pipeline
                .expire_keys(EXPIRE_SWEEP_KEYS_MAX, node.notify.logs_expired())
                .await;
            node.latency.note("expire-cycle", started.elapsed());
            match swept {
                Ok(n) => {
                    node.stats
                        .expired_keys
                        .fetch_add(n as u64, Ordering::Relaxed);
                    if n < EXPIRE_SWEEP_KEYS_MAX {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "active expiry failed");
                    break;
                }
            }
        }
    }
}

/// Awaits every queued reply in order and encodes it; notes the LSN of the
/// connection's last write. With a write lease (`--min-replicas-to-write
/// N`) a write is acknowledged only once N replicas have flushed it; if they
/// do not within `--min-replicas-max-lag`, the client gets `-NOREPLICAS`
/// instead (the write is durable here and may still reach them).
async fn drain(node: &Node, queue: &mut VecDeque<Queued>, out: &mut BytesMut, conn: &mut Conn) {
    let lease = node.lease();
    // One deadline for the whole batch of replies.
    let mut deadline = None;
    let limit = output_limit(node, conn);
    let least = limit.least();
    // Closed for what waits to be written: dropped, as Redis drops it.
    let over = |out: &mut BytesMut, conn: &Conn| {
        let over = least
            .is_some_and(|least| out.len().saturating_sub(OUTPUT_UNCOUNTED_BYTES) as u64 >= least)
            && over_output_limit(node, conn, &limit, out.len());
        if over {
            out.clear();
        }
        over
    };
    while let Some(item) = queue.pop_front() {
        // A subscriber's messages delivered before the reply is ready go
        // before it (a PUBLISH to its own channel, an UNSUBSCRIBE's last).
        let (item, mark, after) = match item {
            Queued::Marked(item, mark, after) => (*item, Some(mark), after),
            item => (item, None, false),
        };
        let (reply, silent, lsn) = settle(node, item, conn, lease, &mut deadline).await;
        write_messages(conn, mark, lsn, after, out);
        match reply {
            // Counted as Redis counts it, sent or not.
            Reply::Error(text) if silent => node.stats.error_reply(&text),
            _ if silent => {}
            reply => send(node, &reply, out, conn.resp3),
        }
        if over(out, conn) {
            queue.clear();
            return;
        }
    }
    write_messages(conn, None, None, false, out);
    over(out, conn);
}

/// The `client-output-buffer-limit` of the connection's class, as Redis
/// classes a client: `pubsub` with subscriptions, `normal` otherwise (a
/// MONITOR client's replies too; its lines have a backlog of their own).
fn output_limit(node: &Node, conn: &Conn) -> OutputLimit {
    let class = if commands::is_subscribed(conn) {
        crate::pubsub::PUBSUB_CLASS
    } else {
        crate::pubsub::NORMAL_CLASS
    };
    node.pubsub.output_limit(class)
}

/// Reply bytes waiting for a client that its `client-output-buffer-limit`
/// does not count: as much as Redis's reply buffer holds (its limits count
/// the list of replies past it), so that small replies never close a
/// client, whatever its limits.
pub const OUTPUT_UNCOUNTED_BYTES: usize = 16 << 10;

/// Closes a client for `waiting` bytes of replies not yet written, if
/// they break `limit` (as Redis closes it, dropping them); whether it did.
fn over_output_limit(node: &Node, conn: &Conn, limit: &OutputLimit, waiting: usize) -> bool {
    let now = crate::pubsub::now_secs();
    let counted = waiting.saturating_sub(OUTPUT_UNCOUNTED_BYTES) as u64;
    let Some(broken) = limit.broken(counted, now, &conn.over_soft_since) else {
        return false;
    };
    tracing::warn!(
        client = conn.id,
        bytes = waiting,
        limit = broken,
        "closing a client over its output buffer limit (client-output-buffer-limit)"
    );
    node.stats
        .client_output_buffer_limit_disconnections
        .fetch_add(1, Ordering::Relaxed);
    conn.activity.kill();
    true
}

/// Writes `out` to the client, which may take its time reading it, as
/// Redis lets it: but one that leaves its class's soft limit of bytes or
/// more unread for longer than the limit's seconds is closed (false), as
/// is one whose socket fails.
async fn write_out<S: AsyncWrite + Unpin>(
    socket: &mut S,
    out: &[u8],
    node: &Node,
    conn: &Conn,
) -> bool {
    let limit = output_limit(node, conn);
    let mut rest = out;
    while limit.soft > 0 && rest.len().saturating_sub(OUTPUT_UNCOUNTED_BYTES) as u64 >= limit.soft {
        if over_output_limit(node, conn, &limit, rest.len()) {
            return false;
        }
        // Until its time is up (Redis's check runs once a second).
        let since = conn.over_soft_since.load(Ordering::Acquire);
        let left = (since + limit.soft_secs + 1).saturating_sub(crate::pubsub::now_secs());
        match tokio::time::timeout(Duration::from_secs(left.max(1)), socket.write(rest)).await {
            Err(_) => continue,
            Ok(Ok(0) | Err(_)) => return false,
            Ok(Ok(n)) => rest = &rest[n..],
        }
    }
    let written = socket.write_all(rest).await.is_ok() && socket.flush().await.is_ok();
    conn.over_soft_since.store(0, Ordering::Release);
    written
}

/// Writes the replies ready so far (those queued before any write not yet
/// run), as Redis writes a client's output before the client blocks;
/// whether the connection goes on.
async fn flush_replies<S: AsyncWrite + Unpin>(
    socket: &mut S,
    node: &Node,
    conn: &mut Conn,
    queue: &mut VecDeque<Queued>,
    out: &mut BytesMut,
) -> bool {
    drain(node, queue, out, conn).await;
    // Closed over its output limit by them: nothing more.
    if conn.activity.killed.load(Ordering::Acquire) {
        return false;
    }
    if out.is_empty() {
        return true;
    }
    node.stats
        .total_net_output_bytes
        .fetch_add(out.len() as u64, Ordering::Relaxed);
    // A TLS stream keeps what it encrypted until flushed. (A kill shuts
    // the socket down: a write to a client that does not read then fails.)
    if !write_out(socket, out, node, conn).await {
        return false;
    }
    out.clear();
    conn.activity.omem.store(0, Ordering::Relaxed);
    true
}

/// Writes a subscriber's messages that go before a reply, as Redis would
/// have sent them: of a command that ran at `mark` (all of them without),
/// those delivered by then, or by its record (logged at `lsn`; only the
/// early ones of its own if it tells its events `after` its reply) or an
/// earlier one.
fn write_messages(
    conn: &mut Conn,
    mark: Option<u64>,
    lsn: Option<u64>,
    after: bool,
    out: &mut BytesMut,
) {
    if let Some(inbox) = &mut conn.pubsub {
        for message in inbox.take(mark, lsn, after) {
            crate::pubsub::write_message(&message, out, conn.resp3);
        }
    }
}

/// A queued reply once ready, whether it is dropped (CLIENT REPLY), and
/// the LSN of the write's record if it is a write's.
async fn settle(
    node: &Node,
    item: Queued,
    conn: &mut Conn,
    lease: Option<(usize, Duration)>,
    deadline: &mut Option<tokio::time::Instant>,
) -> (Reply, bool, Option<u64>) {
    let mut logged = None;
    let (item, silent) = match item {
        Queued::Silent(item) => (*item, true),
        item => (item, false),
    };
    let reply = match item {
        Queued::Silent(_) | Queued::Marked(..) => {
            unreachable!("never wrapped twice, marked outside (see `silenced`, `marked`)")
        }
        Queued::Ready(reply) => reply,
        Queued::Pending(ticket) => match ticket.wait_with_lsn().await {
            Ok((reply, Some(lsn))) => {
                logged = Some(lsn.0);
                conn.last_write_lsn = conn.last_write_lsn.max(lsn.0);
                if let Some((wanted, lag)) = lease
                    && flushed_by(
                        node,
                        lsn,
                        wanted,
                        Some(*deadline.get_or_insert_with(|| tokio::time::Instant::now() + lag)),
                    )
                    .await
                        < wanted
                {
                    Reply::Error(NOT_REPLICATED_REPLY.into())
                } else {
                    reply
                }
            }
            Ok((reply, None)) => reply,
            Err(e) => engine_error_reply(e),
        },
        // Not a write as Redis counts writes: no lease to wait for.
        Queued::Published {
            ticket,
            channel,
            shard,
            awaiting: _awaiting,
        } => match ticket.wait_with_lsn().await {
            Ok((_, Some(lsn))) => {
                logged = Some(lsn.0);
                conn.last_write_lsn = conn.last_write_lsn.max(lsn.0);
                Reply::Int(node.pubsub.delivered(lsn, &channel, shard) as i64)
            }
            Ok((reply, None)) => reply,
            Err(e) => engine_error_reply(e),
        },
    };
    (reply, silent, logged)
}

/// `queued`, its reply dropped if `silent` (CLIENT REPLY OFF or SKIP).
fn silenced(queued: Queued, silent: bool) -> Queued {
    match queued {
        Queued::Silent(_) | Queued::Marked(..) => queued,
        _ if silent => Queued::Silent(Box::new(queued)),
        _ => queued,
    }
}

/// `queued`, for a subscriber, marked with the deliveries made by the time
/// its command ran (outside [`silenced`]'s wrapping), and with whether its
/// own events go after its reply.
fn marked(node: &Node, conn: &Conn, queued: Queued, mark: Option<u64>, after: bool) -> Queued {
    match (&conn.pubsub, mark) {
        (Some(_), Some(mark)) => Queued::Marked(Box::new(queued), mark, after),
        (Some(_), None) => Queued::Marked(Box::new(queued), node.pubsub.mark(), after),
        (None, _) => queued,
    }
}

/// Encodes a reply for the client, counting it if it is an error.
fn send(node: &Node, reply: &Reply, out: &mut BytesMut, resp3: bool) {
    if let Reply::Error(text) = reply {
        node.stats.error_reply(text);
    }
    reply.encode(out, resp3);
}

/// How many replicas have flushed `lsn`, waiting until `wanted` have or the
/// deadline (if any) passes.
async fn flushed_by(
    node: &Node,
    lsn: ferry_wal::Lsn,
    wanted: usize,
    deadline: Option<tokio::time::Instant>,
) -> usize {
    durable_by(node, lsn, false, wanted, deadline).await.1
}

/// Whether the local log holds `lsn` synced to disk (never said under
/// `--fsync no`, whose writes count as durable once written: as Redis's
/// `appendfsync no`), and how many replicas have flushed it.
fn durable_now(node: &Node, lsn: ferry_wal::Lsn) -> (bool, usize) {
    (
        node.wal.sync_policy() != ferry_wal::SyncPolicy::No && node.wal.durable_lsn() >= lsn,
        node.shipper.flushed_count(lsn),
    )
}

/// [`durable_now`], once the local log holds `lsn` durably (if `local`)
/// and `wanted` replicas have flushed it, or the deadline (if any) passes.
async fn durable_by(
    node: &Node,
    lsn: ferry_wal::Lsn,
    local: bool,
    wanted: usize,
    deadline: Option<tokio::time::Instant>,
) -> (bool, usize) {
    let mut acks = node.shipper.subscribe_acks();
    let mut synced = node.wal.subscribe_durable();
    loop {
        let now = durable_now(node, lsn);
        if (now.0 || !local) && now.1 >= wanted {
            return now;
        }
        let more = tokio::select! {
            changed = acks.changed() => changed.is_ok(),
            changed = synced.changed() => changed.is_ok(),
            () = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => false,
        };
        if !more {
            return durable_now(node, lsn);
        }
    }
}

/// WAIT (replicas) and WAITAOF (the local log and replicas): what
/// holds the connection's last write durably, waiting up to the timeout
/// (0: without limit) for what the client asked.
async fn wait_durable(node: &Node, conn: &Conn, wait: commands::WaitFor) -> Reply {
    let lsn = ferry_wal::Lsn(conn.last_write_lsn);
    let (local, replicas) = durable_now(node, lsn);
    if (local || !wait.local) && replicas >= wait.replicas {
        return commands::wait_reply(&wait, local, replicas);
    }
    // A blocked client (INFO clients) while it waits.
    let _blocked = Blocked::begin(&node.stats.blocked_clients);
    let deadline = (wait.timeout_ms > 0)
        .then(|| tokio::time::Instant::now() + Duration::from_millis(wait.timeout_ms));
    let (local, replicas) = durable_by(node, lsn, wait.local, wait.replicas, deadline).await;
    commands::wait_reply(&wait, local, replicas)
}

/// Counts a client as blocked for as long as it lives.
struct Blocked<'a>(&'a std::sync::atomic::AtomicU64);

impl<'a> Blocked<'a> {
    fn begin(count: &'a std::sync::atomic::AtomicU64) -> Blocked<'a> {
        count.fetch_add(1, Ordering::Relaxed);
        Blocked(count)
    }
}

impl Drop for Blocked<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A client connection as it was accepted.
struct Accepted {
    fd: std::os::fd::RawFd,
    addr: String,
    laddr: String,
    /// No password was needed when it connected (Redis decides this as it
    /// accepts the client: a password set after it does not apply to it).
    authenticated: bool,
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    node: Arc<Node>,
    mut socket: S,
    client: Accepted,
    mut stop: watch::Receiver<bool>,
) {
    let Accepted {
        fd,
        addr,
        laddr,
        authenticated,
    } = client;
    let id = node.next_client_id();
    let activity = Arc::new(Activity::new(fd));
    let mut conn = Conn {
        id,
        resp3: false,
        name: None,
        lib_name: None,
        lib_ver: None,
        authenticated,
        in_exec: false,
        quit: false,
        reply_off: false,
        skip_next: false,
        skip_this: false,
        last_write_lsn: 0,
        multi: None,
        watch: node.engine.new_watch(),
        activity: activity.clone(),
        monitor: None,
        tracking: None,
        pushes: node.tracking.connect(id, activity.clone()),
        pubsub: None,
        over_soft_since: Default::default(),
    };
    let connected_at = Instant::now();
    node.stats.connected_clients.fetch_add(1, Ordering::Relaxed);
    node.clients
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            id,
            ClientInfo {
                id,
                addr,
                laddr,
                name: None,
                lib_name: None,
                lib_ver: None,
                connected_at,
                resp: 2,
                last_command: "NULL".into(),
                activity: activity.clone(),
            },
        );
    let limits = |conn: &Conn| ParseLimits {
        bulk_bytes_max: node.config.proto_max_bulk_len.load(Ordering::Relaxed),
        multibulk_len_max: node.config.proto_max_multibulk_len.load(Ordering::Relaxed),
        unauthenticated: commands::must_authenticate(&node, conn),
    };
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut out = BytesMut::with_capacity(READ_CHUNK_BYTES);
    activity
        .qbuf_free
        .store(buf.capacity() as u64, Ordering::Relaxed);
    activity
        .obuf_bytes
        .store(out.capacity() as u64, Ordering::Relaxed);
    let mut queue = VecDeque::new();
    let mut writes = Vec::new();
    // What the client list shows of this connection: its last command,
    // then its name, protocol and library as set.
    let labels = |c: &Conn| {
        (
            c.name.clone(),
            c.resp3,
            c.lib_name.clone(),
            c.lib_ver.clone(),
        )
    };
    let mut shown = ("NULL".to_string(), labels(&conn));
    'serve: loop {
        buf.reserve(READ_CHUNK_BYTES);
        let read = tokio::select! {
            r = socket.read_buf(&mut buf) => r,
            lines = monitor_lines(&mut conn.monitor) => {
                match lines {
                    Ok(lines) if push_out(&mut socket, &node, &lines).await => continue,
                    Ok(_) => break,
                    Err(behind) => {
                        tracing::warn!(
                            client = id,
                            lines = behind,
                            "closing a MONITOR client that fell behind"
                        );
                        break;
                    }
                }
            }
            messages = messages(&mut conn.pubsub) => {
                let mut pushes = BytesMut::new();
                for message in messages {
                    crate::pubsub::write_message(&message, &mut pushes, conn.resp3);
                }
                if !push_out(&mut socket, &node, &pushes).await {
                    break;
                }
                continue;
            }
            message = invalidations(&mut conn.pushes), if conn.resp3 => {
                let mut pushes = BytesMut::new();
                write_pushes(&message, &mut pushes);
                if !push_out(&mut socket, &node, &pushes).await {
                    break;
                }
                continue;
            }
            _ = stop.changed() => break,
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                node.stats
                    .total_net_input_bytes
                    .fetch_add(n as u64, Ordering::Relaxed);
                // A request read is interaction (`timeout`), whatever it
                // then waits for, as Redis counts it.
                activity
                    .last_ms
                    .store(connected_at.elapsed().as_millis() as u64, Ordering::Relaxed);
            }
        }
        if buf.len()
            > node
                .config
                .client_query_buffer_limit
                .load(Ordering::Relaxed)
        {
            tracing::warn!(
                client = id,
                bytes = buf.len(),
                "closing a client over the query buffer limit"
            );
            node.stats
                .client_query_buffer_limit_disconnections
                .fetch_add(1, Ordering::Relaxed);
            break;
        }
        // Pushes queued before this batch was read go before its replies:
        // Redis has them in the output buffer by then.
        if conn.resp3 {
            let mut queued = Vec::new();
            while let Ok(push) = conn.pushes.try_recv() {
                queued.push(push);
            }
            write_pushes(&queued, &mut out);
        }
        let mut last_command = None;
        // Whether a pause holds writes, read once a batch (the check below
        // is on every request).
        let paused = node.pipeline.is_paused();
        loop {
            // Killed before or during the batch: nothing more of it runs.
            if activity.killed.load(Ordering::Acquire) {
                break 'serve;
            }
            let args = match parse_request(&mut buf, limits(&conn)) {
                Ok(Some(args)) if args.is_empty() => continue,
                Ok(Some(args)) => args,
                Ok(None) => break,
                Err(e) => {
                    run_writes(&node, &conn, &mut writes, &mut queue).await;
                    drain(&node, &mut queue, &mut out, &mut conn).await;
                    send(&node, &Reply::err(&e), &mut out, conn.resp3);
                    let _ = socket.write_all(&out).await;
                    let _ = socket.flush().await;
                    break 'serve;
                }
            };
            // A command that waits (WAIT, WAITAOF; or one behind writes a
            // pause holds): the replies before it go out first, as Redis
            // writes them before the client blocks.
            let wait = [&b"wait"[..], b"waitaof"]
                .iter()
                .any(|w| args[0].eq_ignore_ascii_case(w));
            if (wait || (paused && !writes.is_empty()))
                && !flush_replies(&mut socket, &node, &mut conn, &mut queue, &mut out).await
            {
                break 'serve;
            }
            if wait && conn.multi.is_none() {
                run_writes(&node, &conn, &mut writes, &mut queue).await;
                if !flush_replies(&mut socket, &node, &mut conn, &mut queue, &mut out).await {
                    break 'serve;
                }
            }
            last_command = Some(args[0].clone());
            let reply = dispatch(&node, &mut conn, args, &mut writes, &mut queue, &mut out).await;
            if let Some(reply) = reply {
                // Decided once it ran: CLIENT REPLY ON's own reply is sent.
                let reply = silenced(reply, conn.reply_off || conn.skip_this);
                queue.push_back(marked(&node, &conn, reply, None, false));
            }
            // CLIENT REPLY SKIP drops the next command's reply, then no more.
            conn.skip_this = std::mem::take(&mut conn.skip_next);
            if conn.quit {
                break;
            }
            if queue.len() + writes.len() >= PIPELINE_DEPTH_MAX {
                run_writes(&node, &conn, &mut writes, &mut queue).await;
                drain(&node, &mut queue, &mut out, &mut conn).await;
            }
        }
        // Writes a pause holds: the replies before them go out first.
        if !writes.is_empty()
            && node.pipeline.is_paused()
            && !flush_replies(&mut socket, &node, &mut conn, &mut queue, &mut out).await
        {
            break 'serve;
        }
        run_writes(&node, &conn, &mut writes, &mut queue).await;
        drain(&node, &mut queue, &mut out, &mut conn).await;
        activity
            .last_ms
            .store(connected_at.elapsed().as_millis() as u64, Ordering::Relaxed);
        // A MONITOR client or a subscriber is never idle (`--timeout`), as
        // in Redis.
        activity.idle_exempt.store(
            conn.monitor.is_some() || commands::is_subscribed(&conn),
            Ordering::Release,
        );
        activity.multi.store(
            conn.multi.as_ref().map_or(-1, |m| m.commands.len() as i64),
            Ordering::Relaxed,
        );
        activity.multi_mem.store(
            conn.multi.as_ref().map_or(0, |m| m.bytes),
            Ordering::Relaxed,
        );
        activity.qbuf.store(buf.len() as u64, Ordering::Relaxed);
        activity
            .qbuf_free
            .store((buf.capacity() - buf.len()) as u64, Ordering::Relaxed);
        activity.omem.store(out.len() as u64, Ordering::Relaxed);
        activity
            .obuf_bytes
            .store(out.capacity() as u64, Ordering::Relaxed);
        // The client list (CLIENT LIST, INFO) is shared by every
        // connection: it is locked only when what it shows changes.
        if let Some(cmd) = last_command
            && (!cmd.eq_ignore_ascii_case(shown.0.as_bytes()) || labels(&conn) != shown.1)
        {
            shown = (
                String::from_utf8_lossy(&cmd).to_ascii_lowercase(),
                labels(&conn),
            );
            if let Some(info) = node
                .clients
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(&id)
            {
                info.last_command = shown.0.clone();
                (info.name, _, info.lib_name, info.lib_ver) = shown.1.clone();
                info.resp = if shown.1.1 { 3 } else { 2 };
            }
        }
        if !flush_replies(&mut socket, &node, &mut conn, &mut queue, &mut out).await {
            break;
        }
        if conn.quit || *stop.borrow() || activity.killed.load(Ordering::Acquire) {
            break;
        }
    }
    node.clients
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    if conn.tracking.is_some() {
        node.tracking.disable(id);
    }
    node.pubsub.leave(id, &activity);
    node.tracking.gone(id);
    node.stats.connected_clients.fetch_sub(1, Ordering::Relaxed);
    // Over TLS, the close_notify and anything still buffered; a client
    // that no longer reads gets no more time than this.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.shutdown()).await;
}

/// Writes what comes to a connection between its replies (MONITOR's lines,
/// messages, invalidations) and counts it; false if the socket failed.
async fn push_out<S: AsyncWrite + Unpin>(socket: &mut S, node: &Node, bytes: &[u8]) -> bool {
    if socket.write_all(bytes).await.is_err() || socket.flush().await.is_err() {
        return false;
    }
    node.stats
        .total_net_output_bytes
        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    true
}

/// The next MONITOR lines for a connection in MONITOR mode (all there are
/// now, in one write); never, for any other. `Err`: the lines it fell
/// behind by (more than [`crate::node::MONITOR_BACKLOG_LINES`]).
async fn monitor_lines(monitor: &mut Option<crate::node::Monitor>) -> Result<Vec<u8>, u64> {
    use tokio::sync::broadcast::error::{RecvError, TryRecvError};
    let Some(monitor) = monitor else {
        return std::future::pending().await;
    };
    let mut out = match monitor.lines.recv().await {
        Ok(line) => line.to_vec(),
        Err(RecvError::Lagged(n)) => return Err(n),
        // The node is going away: the connection ends with it.
        Err(RecvError::Closed) => return std::future::pending().await,
    };
    loop {
        match monitor.lines.try_recv() {
            Ok(line) => out.extend_from_slice(&line),
            Err(TryRecvError::Lagged(n)) => return Err(n),
            Err(_) => return Ok(out),
        }
    }
}

/// The Pub/Sub messages waiting for a subscriber (all there are now);
/// never, for a connection without an inbox. An inbox closed and empty
/// (no subscriptions left) goes.
async fn messages(inbox: &mut Option<crate::pubsub::Inbox>) -> Vec<crate::pubsub::Pushed> {
    let Some(open) = inbox else {
        return std::future::pending().await;
    };
    match open.next().await {
        Some(messages) => messages,
        None => {
            *inbox = None;
            Vec::new()
        }
    }
}

/// Writes a RESP3 connection's invalidations (and the like).
fn write_pushes(pushes: &[crate::tracking::Push], out: &mut BytesMut) {
    for push in pushes {
        crate::tracking::encode_push(push, out);
    }
}

/// The invalidations waiting for a connection (all there are now).
async fn invalidations(
    inbox: &mut tokio::sync::mpsc::Receiver<crate::tracking::Push>,
) -> Vec<crate::tracking::Push> {
    let mut messages = Vec::new();
    match inbox.recv().await {
        Some(message) => messages.push(message),
        // Its sender is the table's, dropped as the connection ends.
        None => return std::future::pending().await,
    }
    while let Ok(message) = inbox.try_recv() {
        messages.push(message);
    }
    messages
}

/// For a tracking client (in default mode), notes the keys `spec` reads
/// before it reads them, unless OPTIN or OPTOUT and CLIENT CACHING say
/// otherwise for it; a change from now on is told to it.
fn track_reads(
    node: &Node,
    conn: &Conn,
    caching: Option<bool>,
    spec: &Spec,
    args: &[bytes::Bytes],
    written: Option<&std::collections::HashSet<bytes::Bytes>>,
) {
    let Some(tracking) = &conn.tracking else {
        return;
    };
    let o = &tracking.options;
    // OBJECT's and MEMORY USAGE's key, read as Redis's subcommands read it.
    let sub_key = match spec.name {
        "object" => args.len() > 2,
        "memory" => args.len() > 2 && args[1].eq_ignore_ascii_case(b"usage"),
        _ => false,
    };
    let tracked = !o.bcast
        && (spec.flags.contains(&"readonly") || sub_key)
        && if o.optin {
            caching == Some(true)
        } else if o.optout {
            caching != Some(false)
        } else {
            true
        };
    if tracked {
        let keys = match sub_key {
            true => vec![args[2].clone()],
            false => commands::keys_of(spec, args),
        };
        node.tracking.remember(conn.id, keys, written);
    }
}

/// CLIENT CACHING's answer, for the command after it only; as in Redis,
/// CLIENT's subcommands leave it be. (MULTI never comes here: it leaves
/// the answer to its EXEC, which takes it.)
fn take_caching(conn: &mut Conn, spec: &Spec) -> Option<bool> {
    let tracking = conn.tracking.as_mut()?;
    if spec.name == "client" {
        return None;
    }
    tracking.caching.take()
}

/// Resolves once the connection is killed (CLIENT KILL), at once if it
/// already is: for a WAIT, which reads nothing of the socket.
async fn until_killed(activity: &Activity) {
    let notified = activity.kill.notified();
    tokio::pin!(notified);
    // Waiting before the check: a kill between the two still wakes it.
    notified.as_mut().enable();
    if !activity.killed.load(Ordering::Acquire) {
        notified.await;
    }
}

/// Resolves once the connection is killed, or once its client has closed
/// its side of it, which kills it: for a connection that waits without
/// reading its socket (a pause holding its commands, WAIT), so that what
/// it holds never runs, and it does not linger, after its client left, as
/// Redis frees a blocked client whose read finds the socket closed. What
/// the client sent before it closed is left unread.
async fn until_gone(activity: &Activity) {
    tokio::select! {
        () = until_killed(activity) => {}
        () = until_peer_closed(activity.fd) => activity.kill(),
    }
}

/// Resolves once the peer of socket `fd` has closed its side (or the
/// socket failed), without reading from it: a second descriptor of the
/// socket is watched for readiness, and readiness that is only data is
/// passed over. Never resolves if the socket cannot be watched.
async fn until_peer_closed(fd: std::os::fd::RawFd) {
    use tokio::io::{Interest, unix::AsyncFd};
    // SAFETY: `fd` is the connection's own socket, open for as long as
    // the connection waits on this.
    let watched = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
        .try_clone_to_owned()
        .and_then(|fd| {
            // SAFETY: the `OwnedFd` is this descriptor's only owner, open
            // until the watch drops it.
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                .map_err(|e| e.into_parts().1)
        });
    let Ok(watched) = watched else {
        return std::future::pending().await;
    };
    loop {
        match watched.ready(Interest::READABLE).await {
            Ok(guard) if guard.ready().is_read_closed() || guard.ready().is_error() => return,
            Ok(mut guard) => guard.clear_ready(),
            Err(_) => return std::future::pending().await,
        }
    }
}

/// A write a connection has read and not yet run: consecutive ones run
/// together ([`Pipeline::execute_many`](ferry_engine::Pipeline::execute_many)).
/// Its handler, arguments, where it counts in INFO commandstats, whether
/// its reply is dropped (CLIENT REPLY), and whether it is a PUBLISH.
type PendingWrite = (WriteHandler, Vec<bytes::Bytes>, Option<usize>, bool, bool);

/// Runs write `f` in `view`; while keyspace notifications have classes
/// on, its events are logged with its effects.
fn run_write(
    node: &Node,
    f: WriteHandler,
    view: &mut View<'_>,
    args: &[Bytes],
) -> ferry_engine::Result<Reply> {
    let notify = &node.notify;
    let (logging, keymiss) = (notify.logging(), notify.wants_keymiss());
    if !logging && !keymiss {
        return f(view, args);
    }
    let missed_before = view.missed().len();
    let mut absent = Vec::new();
    if logging
        && notify.wants_new()
        && let Some(spec) = commands::lookup(&args[0])
    {
        for key in commands::keys_of(spec, args) {
            if !absent.contains(&key) && view.get(&key)?.is_none() {
                absent.push(key);
            }
        }
    }
    let from = view.effects().len();
    let reply = f(view, args)?;
    // Its reads that found no key, told now (a node's own, not logged).
    for key in &view.missed()[missed_before..] {
        notify.keymiss(key, &node.pubsub);
    }
    if logging {
        notify.note(view, args, from, &reply, &absent)?;
    }
    Ok(reply)
}

/// Runs the writes read so far, queueing their replies in order.
async fn run_writes(
    node: &Node,
    conn: &Conn,
    writes: &mut Vec<PendingWrite>,
    queue: &mut VecDeque<Queued>,
) {
    if writes.is_empty() {
        return;
    }
    // A blocked client (INFO clients) while a pause holds its writes, as
    // in Redis.
    let _blocked = node
        .pipeline
        .is_paused()
        .then(|| Blocked::begin(&node.stats.blocked_clients));
    if node.pipeline.is_paused() {
        // Held until the pause ends, and not idle meanwhile (`timeout`),
        // as Redis's postponed client (exempt until the batch ends, which
        // notes the interaction first). One killed or closed by its
        // client meanwhile runs none of them: its client may have retried
        // elsewhere.
        conn.activity.idle_exempt.store(true, Ordering::Relaxed);
        tokio::select! {
            () = node.pipeline.until_writes_unpaused() => {}
            () = until_gone(&conn.activity) => {}
        }
        if conn.activity.killed.load(Ordering::Acquire) {
            writes.clear();
            return;
        }
    }
    // A PUBLISH waits for its deliveries to be counted
    // ([`crate::pubsub::PubSub::delivered`]), from before it runs (no
    // list at all for a batch without one: the usual batch).
    let mut awaiting: Vec<_> = if writes.iter().any(|w| w.4) {
        writes
            .iter()
            .map(|&(.., publish)| publish.then(|| node.pubsub.awaiting()))
            .collect()
    } else {
        Vec::new()
    };
    // A subscriber's writes: the deliveries made as each ran.
    let marks: Vec<std::sync::atomic::AtomicU64> = match conn.pubsub {
        Some(_) => writes.iter().map(|_| Default::default()).collect(),
        None => Vec::new(),
    };
    let outcomes = node
        .pipeline
        .execute_many(
            Some(conn.id),
            writes.iter().enumerate().map(|(i, (f, args, slot, ..))| {
                let mark = marks.get(i);
                move |view: &mut View<'_>| {
                    let started = Instant::now();
                    let reply = run_write(node, *f, view, args);
                    if let Some(mark) = mark {
                        mark.store(node.pubsub.mark(), Ordering::Relaxed);
                    }
                    let took = started.elapsed();
                    let failed = !matches!(reply, Ok(ref r) if !matches!(r, Reply::Error(_)));
                    ran(node, conn, *slot, args, took, failed);
                    let (hits, misses) = view.lookups();
                    node.stats.lookups(hits, misses);
                    reply
                }
            }),
        )
        .await;
    queue.extend(outcomes.into_iter().zip(writes.drain(..)).enumerate().map(
        |(i, (outcome, (_, args, _, silent, _)))| {
            let awaiting = awaiting.get_mut(i).and_then(Option::take);
            let queued = match (outcome, awaiting) {
                (Ok(ticket), Some(awaiting)) => Queued::Published {
                    ticket,
                    shard: commands::is_shard_publish(&args),
                    channel: args[1].clone(),
                    awaiting,
                },
                (Ok(ticket), None) => Queued::Pending(ticket),
                (Err(e), _) => Queued::Ready(engine_error_reply(e)),
            };
            let mark = marks.get(i).map(|m| m.load(Ordering::Relaxed));
            let after = mark.is_some() && crate::notify::after_reply(&args);
            marked(node, conn, silenced(queued, silent), mark, after)
        },
    ));
}

/// Why this node takes no write now, if it does not: a replica, a stale
/// primary, a primary without its write lease (checked for each write, and
/// again at EXEC for a transaction's queued writes, as Redis does).
fn write_refusal(node: &Node) -> Option<String> {
    if node.is_replica() {
        return Some(READONLY_REPLY.into());
    }
    if node.is_stale_primary() {
        return Some(format!(
            "READONLY this node is a stale primary: a primary of epoch {} exists",
            node.identity.newer_epoch_seen().unwrap_or_default()
        ));
    }
    if !node.lease_holds() {
        return Some(NOREPLICAS_REPLY.into());
    }
    None
}

/// The command `args` asks for, unless it must be refused as it stands.
fn check(node: &Node, conn: &Conn, args: &[bytes::Bytes]) -> Result<&'static Spec, Reply> {
    let Some(spec) = commands::lookup(&args[0]) else {
        return Err(commands::unknown_command(args));
    };
    let argc = args.len() as i64;
    if (spec.arity > 0 && argc != spec.arity) || (spec.arity < 0 && argc < -spec.arity) {
        return Err(commands::wrong_arity(spec.name));
    }
    // A container's subcommand, known and with its arity, as Redis's
    // command lookup checks it: a handler never sees one short of its
    // arguments.
    commands::check_subcommand(spec, args)?;
    if !spec.flags.contains(&"no_auth") && commands::must_authenticate(node, conn) {
        return Err(Reply::Error("NOAUTH Authentication required.".into()));
    }
    let data_command = matches!(spec.handler, Handler::Write(_) | Handler::Read(_));
    if data_command && conn.monitor.is_some() {
        return Err(Reply::err("Replica can't interact with the keyspace"));
    }
    if matches!(spec.handler, Handler::Write(_))
        && let Some(refused) = write_refusal(node)
    {
        return Err(Reply::Error(refused));
    }
    // A RESP2 subscriber's connection carries messages: only these run.
    if !conn.resp3
        && commands::is_subscribed(conn)
        && !matches!(
            spec.name,
            "subscribe"
                | "unsubscribe"
                | "psubscribe"
                | "punsubscribe"
                | "ssubscribe"
                | "sunsubscribe"
                | "ping"
                | "quit"
                | "reset"
        )
    {
        return Err(Reply::err(format!(
            "Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
            commands::full_name(spec, args)
        )));
    }
    if data_command
        && !node.config.replica_serve_stale_data.load(Ordering::Relaxed)
        && !spec.flags.contains(&"stale")
        && node.link_down()
    {
        return Err(Reply::Error(MASTERDOWN_REPLY.into()));
    }
    Ok(spec)
}

/// Runs one request, or adds it to `writes` if it is a write (they run
/// before anything else does); what to queue as its reply.
async fn dispatch(
    node: &Arc<Node>,
    conn: &mut Conn,
    args: Vec<bytes::Bytes>,
    writes: &mut Vec<PendingWrite>,
    queue: &mut VecDeque<Queued>,
    out: &mut BytesMut,
) -> Option<Queued> {
    // CLIENT PAUSE ALL holds every command, CLIENT UNPAUSE too (as in
    // Redis: it ends at its timeout).
    if node.pipeline.is_all_paused() {
        let _blocked = Blocked::begin(&node.stats.blocked_clients);
        tokio::select! {
            () = node.pipeline.until_all_unpaused() => {}
            () = until_gone(&conn.activity) => return None,
        }
    }
    let checked = check(node, conn, &args);
    if checked.is_err() {
        let slot = commands::lookup(&args[0]).and_then(|spec| commands::stat_slot(spec, &args));
        node.stats.command_rejected(slot);
        // A command refused uses up CLIENT CACHING's answer, as in Redis
        // (a transaction's EXEC takes it).
        if conn.multi.is_none()
            && let Some(tracking) = conn.tracking.as_mut()
        {
            tracking.caching = None;
        }
    }
    if let Some(multi) = &mut conn.multi {
        // Any refusal inside MULTI dooms the transaction, as in Redis.
        multi.refused |= checked.is_err();
        if !runs_in_multi(&args[0]) {
            // Queued, its reply after those before it.
            let reply = queue_command(node, multi, checked, args);
            run_writes(node, conn, writes, queue).await;
            return Some(Queued::Ready(reply));
        }
    }
    // A write, or a PUBLISH on a primary with replicas (a record too, for
    // them), or during a pause of writes (held as Redis holds it).
    let write = match checked {
        Ok(
            spec @ Spec {
                handler: Handler::Write(f),
                ..
            },
        ) => Some((spec, *f, false)),
        Ok(
            spec @ Spec {
                handler: Handler::Publish,
                ..
            },
        ) if !node.is_replica() && (node.shipper.has_replicas() || node.pipeline.is_paused()) => {
            Some((spec, commands::publish as WriteHandler, true))
        }
        _ => None,
    };
    if let Some((spec, f, publish)) = write {
        let slot = commands::stat_slot(spec, &args);
        take_caching(conn, spec);
        let silent = conn.reply_off || conn.skip_this;
        writes.push((f, args, slot, silent, publish));
        if writes.len() >= WRITES_TOGETHER_MAX {
            run_writes(node, conn, writes, queue).await;
        }
        return None;
    }
    run_writes(node, conn, writes, queue).await;
    let spec = match checked {
        Ok(spec) => spec,
        // A refused EXEC discards the transaction, if any, as in Redis.
        Err(Reply::Error(text)) if commands::lookup(&args[0]).is_some_and(|s| s.name == "exec") => {
            conn.multi = None;
            conn.watch.clear();
            let why = text.strip_prefix("ERR ").unwrap_or(&text);
            return Some(Queued::Ready(Reply::Error(format!(
                "EXECABORT Transaction discarded because of: {why}"
            ))));
        }
        Err(reply) => return Some(Queued::Ready(reply)),
    };
    let args = &args[..];
    let slot = commands::stat_slot(spec, args);
    if let Handler::Transaction = spec.handler {
        // In the write path's order, behind the writes before it: no need
        // to wait for their replies, unless a queued command depends on
        // the connection as its replies leave (HELLO changes their
        // protocol; WAIT counts from the last write acknowledged).
        if spec.name == "exec"
            && conn.multi.as_ref().is_some_and(|m| {
                m.commands
                    .iter()
                    .any(|(s, ..)| matches!(s.name, "hello" | "wait" | "waitaof"))
            })
        {
            drain(node, queue, out, conn).await;
            // Closed over its output limit by those replies: nothing more
            // runs, as Redis closes it before reading the next command.
            if conn.activity.killed.load(Ordering::Acquire) {
                return None;
            }
        }
        let started = Instant::now();
        let queued = transaction(node, conn, spec, args).await;
        let failed = matches!(queued, Queued::Ready(Reply::Error(_)));
        let took = started.elapsed();
        if spec.name == "exec" {
            // EXEC's commands are in the slow log each; EXEC is not, as in
            // Redis. MONITOR shows it after them.
            node.stats.command_ran(slot, took, failed);
            feed_monitors(node, conn, slot, args);
        } else {
            ran(node, conn, slot, args, took, failed);
        }
        return Some(queued);
    }
    // Every other command follows the replies before it on this connection
    // (a read sees the writes before it).
    drain(node, queue, out, conn).await;
    if conn.activity.killed.load(Ordering::Acquire) {
        return None;
    }
    let caching = take_caching(conn, spec);
    track_reads(node, conn, caching, spec, args, None);
    let started = Instant::now();
    let reply = match spec.handler {
        Handler::Failover => match commands::failover_args(args) {
            Err(reply) => reply,
            Ok(FailoverArgs::Abort) if node.abort_failover() => Reply::ok(),
            Ok(FailoverArgs::Abort) => Reply::err("No failover in progress."),
            Ok(FailoverArgs::Start { to, timeout, force }) => {
                match node.failover_command(to, timeout, force).await {
                    Ok(()) => Reply::ok(),
                    Err(text) => Reply::err(text),
                }
            }
        },
        Handler::Shutdown => match shutdown(node, args).await {
            Some(reply) => reply,
            None => {
                // Stopping: the connection closes with no reply, as Redis's.
                ran(node, conn, slot, args, started.elapsed(), false);
                conn.quit = true;
                return None;
            }
        },
        _ => run_command(node, conn, spec, args).await,
    };
    // An unknown CLIENT subcommand is refused as an unknown command, and
    // uses up CLIENT CACHING's answer likewise.
    if spec.name == "client"
        && matches!(&reply, Reply::Error(text) if text.contains("unknown subcommand"))
        && let Some(tracking) = conn.tracking.as_mut()
    {
        tracking.caching = None;
    }
    if commands::is_subcommand_arity_error(&reply) && commands::is_container(spec) && args.len() > 1
    {
        // A container's known subcommand with the wrong arguments: refused
        // before it runs, in Redis.
        node.stats.command_rejected(slot);
    } else {
        ran(
            node,
            conn,
            slot,
            args,
            started.elapsed(),
            matches!(reply, Reply::Error(_)),
        );
    }
    Some(Queued::Ready(reply))
}

/// SHUTDOWN ([`Node::shutdown_by_command`]): its reply, or `None` once the
/// node is stopping.
async fn shutdown(node: &Node, args: &[bytes::Bytes]) -> Option<Reply> {
    match commands::shutdown_args(args) {
        Err(reply) => Some(reply),
        Ok(ShutdownArgs::Abort) if node.abort_shutdown() => Some(Reply::ok()),
        Ok(ShutdownArgs::Abort) => Some(Reply::err("No shutdown in progress.")),
        Ok(ShutdownArgs::Stop { save, now, force }) => {
            match node.shutdown_by_command(save, now, force).await {
                Ok(()) => None,
                Err(()) => Some(Reply::err("Errors trying to SHUTDOWN. Check logs.")),
            }
        }
    }
}

/// Runs a command that is not a write (the replies before it are out).
async fn run_command(
    node: &Node,
    conn: &mut Conn,
    spec: &'static Spec,
    args: &[bytes::Bytes],
) -> Reply {
    match spec.handler {
        Handler::Wait => match commands::wait_refused(node, args) {
            // Until killed or closed, for a wait without a timeout.
            Ok(wait) => {
                // Waiting is not idling (`--timeout`), as in Redis.
                conn.activity.idle_exempt.store(true, Ordering::Relaxed);
                let reply = tokio::select! {
                    biased;
                    () = until_gone(&conn.activity) => Reply::Int(0),
                    reply = wait_durable(node, conn, wait) => reply,
                };
                // Exempt until the batch ends, which notes the interaction
                // first: never idle in between.
                reply
            }
            Err(reply) => reply,
        },
        Handler::ReplicaOf => match commands::replicaof_target(args, node.config.tls.scheme()) {
            Err(reply) => reply,
            Ok(None) if !node.is_replica() => Reply::ok(),
            Ok(None) => match node.promote(false, Duration::ZERO).await {
                Ok(_) => Reply::ok(),
                Err(e) => Reply::err(format!("{e:#}")),
            },
            Ok(Some(url)) if node.identity.replica_of().as_deref() == Some(url.as_str()) => {
                Reply::Simple("OK Already connected to specified master".into())
            }
            Ok(Some(url)) => match node.replicate_from(url).await {
                Ok(_) => Reply::ok(),
                Err(e) => Reply::err(format!("{e:#}")),
            },
        },
        Handler::Save => match node.save().await {
            Ok(()) => Reply::ok(),
            Err(text) => Reply::err(text),
        },
        Handler::Write(_) => unreachable!("writes were added to the batch"),
        // On a replica, to its own subscribers, as Redis's replica delivers
        // a PUBLISH sent to it; on a primary without replicas, to its
        // subscribers at once, as Redis's (the writes before it on this
        // connection are applied: they ran first). A primary with
        // replicas logged it with the writes.
        Handler::Publish => Reply::Int(node.pubsub.publish(
            &args[1],
            &args[2],
            commands::is_shard_publish(args),
            0,
        ) as i64),
        Handler::Shutdown | Handler::Failover => unreachable!("run by dispatch"),
        Handler::Transaction => unreachable!("run by transaction"),
        Handler::Read(f) => f(node, &*node.engine, args),
        Handler::Conn(f) => {
            let reply = f(node, conn, args);
            // CLIENT PAUSE answers once no write runs (one under way when
            // it came ends first).
            if spec.name == "client"
                && args[1].eq_ignore_ascii_case(b"pause")
                && !matches!(reply, Reply::Error(_))
            {
                node.pipeline.quiesce().await;
            }
            reply
        }
    }
}

/// What a queued command costs beside its arguments' bytes, counted
/// against the largest WAL record (see `queue_command`).
pub const QUEUED_COMMAND_BYTES: u64 = 64;
/// What each queued argument costs beside its bytes.
pub const QUEUED_ARGUMENT_BYTES: u64 = 32;

/// A command that ran: its figures in INFO commandstats and latencystats,
/// and the slow log if it ran long. A command without a place (an unknown
/// subcommand) never ran as Redis sees it.
fn ran(
    node: &Node,
    conn: &Conn,
    slot: Option<usize>,
    args: &[bytes::Bytes],
    took: Duration,
    failed: bool,
) {
    node.stats.command_ran(slot, took, failed);
    feed_monitors(node, conn, slot, args);
    if node.latency.over(took) {
        let fast = commands::lookup(&args[0]).is_some_and(|spec| spec.flags.contains(&"fast"));
        node.latency
            .note(if fast { "fast-command" } else { "command" }, took);
    }
    if slot.is_some() {
        node.slow_command((conn.id, conn.name.as_ref()), args, took);
    }
}

/// Sends the line of a command that ran to the MONITOR connections, if
/// any, unless Redis keeps it from them (admin commands).
fn feed_monitors(node: &Node, conn: &Conn, slot: Option<usize>, args: &[bytes::Bytes]) {
    if node.monitoring.load(Ordering::Acquire) == 0 {
        return;
    }
    let (Some(spec), Some(name)) = (
        commands::lookup(&args[0]),
        slot.and_then(|i| commands::stat_names().get(i)),
    ) else {
        return;
    };
    if commands::hidden_from_monitor(spec, name) {
        return;
    }
    let addr = node
        .clients
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&conn.id)
        .map(|c| c.addr.clone())
        .unwrap_or_default();
    // No monitor left to read it is no failure.
    let _ = node.monitors.send(crate::node::monitor_line(&addr, args));
}

/// Commands that run at once inside MULTI instead of being queued.
fn runs_in_multi(name: &[u8]) -> bool {
    ["exec", "discard", "multi", "watch", "quit", "reset"]
        .iter()
        .any(|c| name.eq_ignore_ascii_case(c.as_bytes()))
}

/// The reply to a command sent inside MULTI: queued, or refused (which
/// dooms the transaction, as in Redis).
fn queue_command(
    node: &Node,
    multi: &mut Multi,
    checked: Result<&'static Spec, Reply>,
    args: Vec<bytes::Bytes>,
) -> Reply {
    match checked {
        Err(reply) => {
            multi.refused = true;
            reply
        }
        // A change of role (REPLICAOF, FAILOVER) cannot be part of a
        // transaction, nor what Redis flags `no_multi` (SAVE, SHUTDOWN).
        Ok(spec)
            if matches!(spec.handler, Handler::ReplicaOf | Handler::Failover)
                || spec.flags.contains(&"no_multi") =>
        {
            node.stats
                .command_rejected(commands::stat_slot(spec, &args));
            multi.refused = true;
            Reply::err("Command not allowed inside a transaction")
        }
        Ok(spec) => {
            // Its effects are to be one WAL record: a transaction whose
            // commands alone exceed the largest one is refused now, and
            // what it queued is let go.
            let max = node.wal.append_bytes_max();
            multi.bytes += QUEUED_COMMAND_BYTES
                + args
                    .iter()
                    .map(|a| QUEUED_ARGUMENT_BYTES + a.len() as u64)
                    .sum::<u64>();
            if multi.bytes > max {
                multi.refused = true;
                multi.commands = Vec::new();
                return Reply::err(format!(
                    "the transaction's commands exceed {max} bytes, the largest WAL record"
                ));
            }
            let slot = commands::stat_slot(spec, &args);
            if !multi.refused {
                multi.commands.push((spec, args, slot));
            }
            Reply::Simple("QUEUED".into())
        }
    }
}

/// MULTI, EXEC, DISCARD, WATCH and UNWATCH.
async fn transaction(
    node: &Node,
    conn: &mut Conn,
    spec: &'static Spec,
    args: &[bytes::Bytes],
) -> Queued {
    let reply = match spec.name {
        "multi" if conn.multi.is_some() => Reply::err("MULTI calls can not be nested"),
        "multi" => {
            conn.multi = Some(Multi::default());
            Reply::ok()
        }
        "discard" => match conn.multi.take() {
            None => Reply::err("DISCARD without MULTI"),
            Some(_) => {
                conn.watch.clear();
                Reply::ok()
            }
        },
        "watch" if conn.multi.is_some() => Reply::err("WATCH inside MULTI is not allowed"),
        "watch" => match node.pipeline.watch(&conn.watch, &args[1..]) {
            Ok(()) => Reply::ok(),
            Err(e) => engine_error_reply(e),
        },
        "unwatch" => {
            conn.watch.clear();
            Reply::ok()
        }
        "exec" => return exec(node, conn).await,
        other => unreachable!("{other} is not a transaction command"),
    };
    Queued::Ready(reply)
}

/// EXEC: the queued commands run one after another as one command of the
/// write path, so no other client's command runs between them, and their
/// effects are one WAL record: durable, applied and replicated together or
/// not at all. Reads among them see the writes before them.
async fn exec(node: &Node, conn: &mut Conn) -> Queued {
    let Some(multi) = conn.multi.take() else {
        return Queued::Ready(Reply::err("EXEC without MULTI"));
    };
    // CLIENT CACHING's answer is EXEC's, run or discarded.
    let mut caching = conn.tracking.as_mut().and_then(|t| t.caching.take());
    if multi.refused {
        conn.watch.clear();
        return Queued::Ready(Reply::Error(
            "EXECABORT Transaction discarded because of previous errors.".into(),
        ));
    }
    // A transaction of reads runs through CLIENT PAUSE WRITE, as in Redis.
    let reads_only = multi
        .commands
        .iter()
        .all(|(spec, ..)| !matches!(spec.handler, Handler::Write(_) | Handler::Publish));
    // The queued writes were checked as they were queued; the node may
    // take no write now (its lease lost, a newer primary seen, become a
    // replica): discarded whole, as Redis's EXEC.
    let writes = multi
        .commands
        .iter()
        .any(|(spec, ..)| matches!(spec.handler, Handler::Write(_)));
    if writes && let Some(refused) = write_refusal(node) {
        conn.watch.clear();
        return Queued::Ready(Reply::Error(format!(
            "EXECABORT Transaction discarded because of: {refused}"
        )));
    }
    // Noted before the transaction runs; a read of a key a command before
    // it writes outlasts that write. A CLIENT CACHING among them answers
    // for the reads after it (Redis keeps the answer through a
    // transaction).
    let mut written = std::collections::HashSet::new();
    for (spec, args, _) in &multi.commands {
        if spec.name == "client" && args.len() == 3 && args[1].eq_ignore_ascii_case(b"caching") {
            if args[2].eq_ignore_ascii_case(b"yes") {
                caching = Some(true);
            } else if args[2].eq_ignore_ascii_case(b"no") {
                caching = Some(false);
            }
            continue;
        }
        track_reads(node, conn, caching, spec, args, Some(&written));
        if matches!(spec.handler, Handler::Write(_)) {
            written.extend(commands::keys_of(spec, args));
        }
    }
    conn.in_exec = true;
    let by = Some(conn.id);
    let run = |view: &mut View<'_>| run_queued(node, conn, view, &multi.commands);
    let executed = if reads_only {
        node.pipeline.execute_read(by, run).await
    } else {
        let _blocked = node
            .pipeline
            .is_paused()
            .then(|| Blocked::begin(&node.stats.blocked_clients));
        let mut one = node.pipeline.execute_many(by, [run]).await;
        one.pop().expect("one outcome per command")
    };
    conn.in_exec = false;
    conn.watch.clear();
    // A CLIENT CACHING inside answered for the transaction only.
    if let Some(tracking) = conn.tracking.as_mut() {
        tracking.caching = None;
    }
    match executed {
        Ok(ticket) => Queued::Pending(ticket),
        Err(e) => Queued::Ready(engine_error_reply(e)),
    }
}

/// The queued commands of an EXEC against the write path's view: an array
/// of their replies, or a null array if the watch no longer holds.
fn run_queued(
    node: &Node,
    conn: &mut Conn,
    view: &mut View<'_>,
    commands: &[(&'static Spec, Vec<bytes::Bytes>, Option<usize>)],
) -> ferry_engine::Result<Reply> {
    // The write path orders a primary's commands; a replica's records are
    // applied beside it, so they wait for the transaction instead.
    let _still = (!node.pipeline.is_writable()).then(|| node.engine.hold_writes());
    if !view.watch_holds(&conn.watch)? {
        return Ok(Reply::NullArray);
    }
    // Each reply with the protocol it was made in (a HELLO among the
    // commands changes it for those after it, and its own).
    let mut replies = Vec::with_capacity(commands.len());
    for (spec, args, slot) in commands {
        let started = Instant::now();
        let (hits, misses) = view.lookups();
        let reply = match spec.handler {
            Handler::Write(f) => run_write(node, f, view, args)?,
            Handler::Read(f) => f(node, &*view, args),
            Handler::Conn(_) if spec.name == "monitor" => {
                Reply::err("MONITOR isn't allowed for DENY BLOCKING client")
            }
            // As Redis 7.0 refuses it there (SUBSCRIBE and PSUBSCRIBE run).
            Handler::Conn(_) if spec.name == "ssubscribe" => {
                Reply::err("SSUBSCRIBE isn't allowed for a DENY BLOCKING client")
            }
            // Redis starts it after the transaction, and says so.
            Handler::Conn(f) if spec.name == "bgsave" => match f(node, conn, args) {
                Reply::Simple(_) => Reply::Simple("Background saving scheduled".into()),
                other => other,
            },
            Handler::Conn(f) => f(node, conn, args),
            // WAIT and WAITAOF cannot block inside a transaction: what
            // holds the connection's writes so far, as in Redis.
            Handler::Wait => match commands::wait_refused(node, args) {
                Ok(wait) => {
                    let (local, replicas) = durable_now(node, ferry_wal::Lsn(conn.last_write_lsn));
                    commands::wait_reply(&wait, local, replicas)
                }
                Err(reply) => reply,
            },
            Handler::Publish if node.is_replica() => Reply::Int(node.pubsub.publish(
                &args[1],
                &args[2],
                commands::is_shard_publish(args),
                0,
            ) as i64),
            // Delivered once the transaction's record is applied; the
            // reply counts the subscribers as the transaction runs.
            Handler::Publish => {
                commands::publish(view, args)?;
                let shard = commands::is_shard_publish(args);
                Reply::Int(node.pubsub.subscribers(&args[1], shard) as i64)
            }
            // UNWATCH: the watch goes after EXEC anyway.
            Handler::Transaction => Reply::ok(),
            Handler::ReplicaOf | Handler::Save | Handler::Shutdown | Handler::Failover => {
                unreachable!("refused while queueing")
            }
        };
        let took = started.elapsed();
        let (hits_after, misses_after) = view.lookups();
        node.stats.lookups(hits_after - hits, misses_after - misses);
        ran(
            node,
            conn,
            *slot,
            args,
            took,
            matches!(reply, Reply::Error(_)),
        );
        // Inside the array, where the reply's encoding does not see it.
        if let Reply::Error(text) = &reply {
            node.stats.error_reply(text);
        }
        replies.push((reply, conn.resp3));
    }
    // The array goes out in the protocol the last command left.
    let last = conn.resp3;
    Ok(Reply::Array(
        replies
            .into_iter()
            .map(|(reply, resp3)| match resp3 == last {
                true => reply,
                false => Reply::In {
                    resp3,
                    reply: Box::new(reply),
                },
            })
            .collect(),
    ))
}
