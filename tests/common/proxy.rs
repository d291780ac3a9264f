//! A TCP proxy for fault injection between a replica and its primary: it
//! cuts every connection on demand, refuses new ones while isolated, delays
//! each direction by a fixed time without limiting throughput, and flips
//! bits in the bytes flowing from the target (the primary) to the client
//! (the replica), from a seed. It keeps the first bytes that pass, both
//! ways, for tests that look at what travels on the wire.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Bytes read at a time.
const CHUNK_BYTES: usize = 16 * 1024;
/// Bytes kept of what passed, both ways together.
const CAPTURE_BYTES_MAX: usize = 8 << 20;

#[derive(Default)]
struct Faults {
    delay: Duration,
    /// Bytes per second from the target to the client; 0: no limit.
    rate_down: u64,
    /// Chance in a million that a chunk from the target gets one bit flipped.
    flip_ppm: u64,
    rng: u64,
}

#[derive(Default)]
struct State {
    faults: Mutex<Faults>,
    isolated: AtomicBool,
    /// Bytes are held back (connections stay open) while set.
    stalled: AtomicBool,
    /// Bytes from the target are held back while set; the client's still go.
    stalled_down: AtomicBool,
    sockets: Mutex<Vec<TcpStream>>,
    connections: AtomicU64,
    flips: AtomicU64,
    stopped: AtomicBool,
    /// Where connections go; until set, they are refused.
    target: Mutex<Option<SocketAddr>>,
    /// The first bytes that passed each way (up to [`CAPTURE_BYTES_MAX`]
    /// in all): to the target, and from it.
    captured: Mutex<[Vec<u8>; 2]>,
}

/// A running proxy; it stops accepting when dropped.
pub struct Proxy {
    addr: SocketAddr,
    state: Arc<State>,
}

impl Proxy {
    /// A proxy on a free loopback port forwarding to `target`.
    pub fn start(target: SocketAddr) -> Proxy {
        let proxy = Proxy::unbound();
        proxy.forward_to(target);
        proxy
    }

    /// A proxy that refuses connections until [`Proxy::forward_to`]: its
    /// address can be given to a node before the node it leads to starts.
    pub fn unbound() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let state = Arc::new(State::default());
        let accept_state = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accept_state.stopped.load(Ordering::Acquire) {
                    return;
                }
                let Ok(client) = client else { continue };
                if accept_state.isolated.load(Ordering::Acquire) {
                    drop(client);
                    continue;
                }
                let target = *accept_state.target.lock().unwrap();
                let Some(Ok(server)) = target.map(TcpStream::connect) else {
                    continue;
                };
                accept_state.connections.fetch_add(1, Ordering::Relaxed);
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut sockets = accept_state.sockets.lock().unwrap();
                    sockets.push(client.try_clone().expect("clone"));
                    sockets.push(server.try_clone().expect("clone"));
                }
                pipe(
                    accept_state.clone(),
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                    false,
                );
                pipe(accept_state.clone(), server, client, true);
            }
        });
        Proxy { addr, state }
    }

    /// Where new connections go from now on.
    pub fn forward_to(&self, target: SocketAddr) {
        *self.state.target.lock().unwrap() = Some(target);
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy as a gRPC address.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes every connection now open.
    pub fn cut(&self) {
        let sockets = std::mem::take(&mut *self.state.sockets.lock().unwrap());
        for s in sockets {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Cuts every connection and refuses new ones until [`Proxy::heal`].
    pub fn isolate(&self) {
        self.state.isolated.store(true, Ordering::Release);
        self.cut();
    }

    pub fn heal(&self) {
        self.state.isolated.store(false, Ordering::Release);
    }

    /// Holds every byte back, both ways, without closing anything: a peer
    /// that stopped reading, or a link that silently drops everything.
    pub fn stall(&self) {
        self.state.stalled.store(true, Ordering::Release);
    }

    /// Holds back the bytes from the target only: a primary that went
    /// silent while its replica's acks still reach it.
    pub fn stall_down(&self) {
        self.state.stalled_down.store(true, Ordering::Release);
    }

    /// Lets held bytes flow again.
    pub fn unstall(&self) {
        self.state.stalled.store(false, Ordering::Release);
        self.state.stalled_down.store(false, Ordering::Release);
    }

    /// Delays every byte by `delay`, each way.
    pub fn set_delay(&self, delay: Duration) {
        self.state.faults.lock().unwrap().delay = delay;
    }

    /// Limits the bytes from the target to the client to `bytes_per_sec`
    /// (0: no limit), as a slow link would.
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.state.faults.lock().unwrap().rate_down = bytes_per_sec;
    }

    /// Flips one random bit in a chunk from the target with this chance (in
    /// a million), from `seed`.
    pub fn set_flips(&self, ppm: u64, seed: u64) {
        let mut faults = self.state.faults.lock().unwrap();
        faults.flip_ppm = ppm;
        faults.rng = seed | 1;
    }

    /// Bits flipped so far.
    pub fn flips(&self) -> u64 {
        self.state.flips.load(Ordering::Relaxed)
    }

    /// Whether `needle` was among the bytes that passed, either way (all
    /// connections' bytes of one direction run together).
    pub fn saw(&self, needle: &[u8]) -> bool {
        let captured = self.state.captured.lock().unwrap();
        captured
            .iter()
            .any(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
    }

    /// How many bytes were kept of what passed.
    pub fn captured_bytes(&self) -> usize {
        let captured = self.state.captured.lock().unwrap();
        captured[0].len() + captured[1].len()
    }

    /// Connections made so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::Release);
        self.cut();
        // Wake the accept loop so it sees the stop.
        let _ = TcpStream::connect(self.addr);
    }
}

fn next_random(x: &mut u64) -> u64 {
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// Chunks on their way, each with the time it may go; `None` ends the pipe.
type DelayQueue = (Mutex<VecDeque<Option<(Instant, Vec<u8>)>>>, Condvar);

/// Copies `from` to `to` through a queue that releases each chunk `delay`
/// after it was read, so a delay adds latency but not a throughput limit.
fn pipe(state: Arc<State>, mut from: TcpStream, mut to: TcpStream, downstream: bool) {
    let queue: Arc<DelayQueue> = Arc::default();
    let reader_queue = queue.clone();
    let reader_state = state.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut chunk = buf[..n].to_vec();
            {
                let mut captured = reader_state.captured.lock().unwrap();
                let room = CAPTURE_BYTES_MAX.saturating_sub(captured[0].len() + captured[1].len());
                captured[usize::from(downstream)].extend_from_slice(&chunk[..n.min(room)]);
            }
            let due = {
                let mut faults = reader_state.faults.lock().unwrap();
                if downstream && faults.flip_ppm > 0 {
                    let roll = next_random(&mut faults.rng) % 1_000_000;
                    if roll < faults.flip_ppm {
                        let bit = next_random(&mut faults.rng) % (n as u64 * 8);
                        chunk[(bit / 8) as usize] ^= 1 << (bit % 8);
                        reader_state.flips.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Instant::now() + faults.delay
            };
            let (lock, cvar) = &*reader_queue;
            lock.lock().unwrap().push_back(Some((due, chunk)));
            cvar.notify_one();
        }
        let (lock, cvar) = &*reader_queue;
        lock.lock().unwrap().push_back(None);
        cvar.notify_one();
    });
    std::thread::spawn(move || {
        loop {
            let item = {
                let (lock, cvar) = &*queue;
                let mut q = lock.lock().unwrap();
                while q.is_empty() {
                    q = cvar.wait(q).unwrap();
                }
                q.pop_front().expect("not empty")
            };
            let Some((due, chunk)) = item else { break };
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            while (state.stalled.load(Ordering::Acquire)
                || (downstream && state.stalled_down.load(Ordering::Acquire)))
                && !state.stopped.load(Ordering::Acquire)
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            let rate = state.faults.lock().unwrap().rate_down;
            if downstream && rate > 0 {
                std::thread::sleep(Duration::from_secs_f64(chunk.len() as f64 / rate as f64));
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        drop(state);
    });
}
