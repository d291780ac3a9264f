//! Starting real `ferry serve` processes on loopback ports for end-to-end
//! tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a node may take to start (recovery included).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `ferry serve`; killed when dropped.
pub struct Server {
    child: Option<Child>,
    pub resp: SocketAddr,
    pub grpc: SocketAddr,
    /// With `--metrics-addr`.
    pub metrics: Option<SocketAddr>,
    /// With `--resp-tls-addr`.
    pub resp_tls: Option<SocketAddr>,
    pub data_dir: PathBuf,
    stderr_log: PathBuf,
}

pub fn ferry() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
}

/// Runs `command` to its end; fails the test with its output unless it
/// exits 0.
pub fn run_ok(command: &mut Command) -> std::process::Output {
    exited_ok(
        command.output().expect("run ferry"),
        &format!("{command:?}"),
    )
}

/// `out`, of the command `what`; fails the test with its output unless
/// it exited 0.
pub fn exited_ok(out: std::process::Output, what: &str) -> std::process::Output {
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Server {
    /// Starts a node on `data_dir` with any free loopback ports, and waits
    /// until it says it is ready.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Server::try_start(data_dir, extra)
            .unwrap_or_else(|e| panic!("ferry serve did not start: {e}"))
    }

    /// As [`Server::start`], or the reason it did not start (its stderr).
    pub fn try_start(data_dir: &Path, extra: &[&str]) -> Result<Server, String> {
        Server::try_start_env(data_dir, extra, &[])
    }

    /// As [`Server::try_start`], with environment variables.
    pub fn try_start_env(
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Server, String> {
        Server::spawn(ferry(), data_dir, extra, env)
    }

    /// As [`Server::start`], under `ulimit ULIMIT` (`-n 300`: the open
    /// files limit, soft and hard; `-Sn 300`: the soft one).
    pub fn start_under_ulimit(data_dir: &Path, extra: &[&str], ulimit: &str) -> Server {
        let mut command = Command::new("sh");
        command.args([
            "-c",
            &format!("ulimit {ulimit} && exec \"$0\" \"$@\""),
            env!("CARGO_BIN_EXE_ferry"),
        ]);
        Server::spawn(command, data_dir, extra, &[])
            .unwrap_or_else(|e| panic!("ferry serve did not start: {e}"))
    }

    fn spawn(
        mut command: Command,
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Server, String> {
        std::fs::create_dir_all(data_dir).expect("data dir");
        let stderr_log = data_dir.with_extension(format!("stderr.{}.log", std::process::id()));
        let stderr = std::fs::File::create(&stderr_log).expect("stderr log");
        let mut child = command
            .args([
                "serve",
                "--resp-addr",
                "127.0.0.1:0",
                "--grpc-addr",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra)
            .envs(env.iter().copied())
            .env("FERRY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn ferry");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("ferry listening") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(std::fs::read_to_string(&stderr_log).unwrap_or_default());
            }
        };
        let addr = |name: &str| -> Option<SocketAddr> {
            let tag = format!(" {name}=");
            let at = line.find(&tag)? + tag.len();
            Some(
                line[at..]
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .parse()
                    .expect("an address"),
            )
        };
        Ok(Server {
            resp: addr("resp").expect("resp= in the ready line"),
            grpc: addr("grpc").expect("grpc= in the ready line"),
            metrics: addr("metrics"),
            resp_tls: addr("resp_tls"),
            child: Some(child),
            data_dir: data_dir.to_path_buf(),
            stderr_log,
        })
    }

    pub fn url(&self) -> String {
        format!("redis://{}/", self.resp)
    }

    pub fn client(&self) -> redis::Connection {
        let client = redis::Client::open(self.url()).expect("client");
        client
            .get_connection_with_timeout(Duration::from_secs(10))
            .expect("connect")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `kill -9`: no chance to flush or sync anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM, without waiting for anything.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        child.wait().expect("wait")
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.stderr_log);
    }
}

/// `redis::cmd(name)` with string arguments.
/// `args` as a RESP request.
pub fn request(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    out.into_bytes()
}

pub fn cmd(args: &[&str]) -> redis::Cmd {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c
}

/// Runs a command and returns the raw reply.
pub fn raw(con: &mut redis::Connection, args: &[&str]) -> redis::Value {
    cmd(args)
        .query(con)
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// Runs a command expected to fail and returns the error text (code and
/// message).
pub fn error(con: &mut redis::Connection, args: &[&str]) -> String {
    match cmd(args).query::<redis::Value>(con) {
        Ok(v) => panic!("{args:?} succeeded with {v:?}"),
        Err(e) => match (e.code(), e.detail()) {
            (Some(code), Some(detail)) => format!("{code} {detail}"),
            (Some(code), None) => code.to_string(),
            _ => e.to_string(),
        },
    }
}

pub mod metrics;
pub mod proxy;

/// The node's status over gRPC, from the real client.
pub fn status(grpc: SocketAddr) -> ferry_proto::v1::GetStatusResponse {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut client =
            ferry_proto::v1::status_client::StatusClient::connect(format!("http://{grpc}"))
                .await
                .expect("connect to the status service");
        client
            .get_status(ferry_proto::v1::GetStatusRequest {})
            .await
            .expect("status")
            .into_inner()
    })
}

/// `DEBUG DIGEST` of a node.
pub fn digest(server: &Server) -> String {
    let mut c = server.client();
    match raw(&mut c, &["DEBUG", "DIGEST"]) {
        redis::Value::SimpleString(s) => s,
        other => panic!("DEBUG DIGEST answered {other:?}"),
    }
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; whether it
/// held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Server {
    /// The node's gRPC address as a URL, as `--replica-of` takes it.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Starts a replica of `primary` (a gRPC URL) on `data_dir`.
    pub fn replica(data_dir: &Path, primary: &str, extra: &[&str]) -> Server {
        let mut args = vec!["--replica-of", primary];
        args.extend_from_slice(extra);
        Server::start(data_dir, &args)
    }

    /// The node's applied LSN, from its status.
    pub fn applied_lsn(&self) -> u64 {
        status(self.grpc).applied_lsn
    }

    /// The node's durable LSN, from its status.
    pub fn durable_lsn(&self) -> u64 {
        status(self.grpc).wal.expect("wal").durable_lsn
    }

    /// One field of `INFO replication` (or another section).
    pub fn info_field(&self, section: &str, field: &str) -> Option<String> {
        let mut c = self.client();
        let text: String = cmd(&["INFO", section]).query(&mut c).expect("INFO");
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .map(|v| v.trim().to_string())
    }

    /// Waits up to 10 s for INFO to count `count` blocked clients (held by
    /// a pause or in a WAIT); whether it did.
    pub fn blocked_clients_reach(&self, count: u64) -> bool {
        wait_until(Duration::from_secs(10), || {
            self.info_field("clients", "blocked_clients") == Some(count.to_string())
        })
    }
}

/// `count` SETs of random keys (of `keys` distinct) with 32-byte values,
/// pipelined `batch` at a time.
pub fn load(server: &Server, seed: u64, count: usize, keys: u64, batch: usize) {
    let mut rng = ferry_wal::testing::SeededRng::new(seed);
    let mut c = server.client();
    let mut done = 0;
    while done < count {
        let n = batch.min(count - done);
        let mut pipe = redis::pipe();
        for _ in 0..n {
            let key = format!("key:{}", rng.below(keys));
            let value = format!("{:032x}", rng.next_u64());
            pipe.cmd("SET").arg(key).arg(value).ignore();
        }
        pipe.query::<()>(&mut c).expect("pipelined SETs");
        done += n;
    }
}

/// Whether the replica applied everything the primary's log holds.
pub fn caught_up(primary: &Server, replica: &Server) -> bool {
    let p = status(primary.grpc);
    let r = status(replica.grpc);
    let last = p.wal.expect("wal").last_lsn;
    r.applied_lsn == last && p.applied_lsn == last
}

/// A raw RESP3 connection (CLIENT TRACKING's pushes, Pub/Sub's
/// messages): requests out, bytes in.
pub struct Resp3 {
    stream: std::net::TcpStream,
    pub got: Vec<u8>,
}

impl Resp3 {
    pub fn connect(server: &Server) -> Resp3 {
        let mut c = Resp3::connect_resp2(server);
        c.send(&["HELLO", "3"]);
        assert!(c.read_until(b"proto\r\n:3\r\n"), "HELLO 3");
        c.got.clear();
        c
    }

    /// The same, left speaking RESP2.
    pub fn connect_resp2(server: &Server) -> Resp3 {
        let stream = std::net::TcpStream::connect(server.resp).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Resp3 {
            stream,
            got: Vec::new(),
        }
    }

    pub fn send(&mut self, args: &[&str]) {
        use std::io::Write;
        self.stream.write_all(&request(args)).expect("send");
    }

    /// Reads until `expected` is what came in since the last call (then
    /// taken), for up to 10 s.
    pub fn read_until(&mut self, expected: &[u8]) -> bool {
        self.read_past(expected).is_some()
    }

    /// Reads until `expected` came in (for up to 10 s), and takes it and
    /// what came before it, which is returned.
    pub fn read_past(&mut self, expected: &[u8]) -> Option<Vec<u8>> {
        use std::io::Read;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Some(at) = self.got.windows(expected.len()).position(|w| w == expected) {
                let mut before: Vec<u8> = self.got.drain(..at + expected.len()).collect();
                before.truncate(at);
                return Some(before);
            }
            let mut buf = [0u8; 4096];
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.got.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
        None
    }

    /// The next line that comes in (without its CRLF), for up to 10 s.
    pub fn read_line(&mut self) -> String {
        use std::io::Read;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(at) = self.got.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.got[..at]).into_owned();
                self.got.drain(..at + 2);
                return line;
            }
            assert!(std::time::Instant::now() < deadline, "no line");
            let mut buf = [0u8; 4096];
            match self.stream.read(&mut buf) {
                Ok(0) => panic!("the connection closed"),
                Ok(n) => self.got.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
    }

    /// A request and its whole reply, exactly: nothing before it (no
    /// push), nothing after.
    pub fn exchange(&mut self, args: &[&str], reply: &str) {
        self.send(args);
        let before = self.read_past(reply.as_bytes());
        assert!(
            before.is_some(),
            "{args:?}: {:?}",
            String::from_utf8_lossy(&self.got)
        );
        assert_eq!(
            String::from_utf8_lossy(&before.unwrap_or_default()),
            "",
            "{args:?}: before its reply"
        );
        assert!(
            self.got.is_empty(),
            "{:?}",
            String::from_utf8_lossy(&self.got)
        );
    }
}

/// The `invalidate` push CLIENT TRACKING sends for `keys`.
pub fn invalidate(keys: &[&str]) -> String {
    let mut out = format!(">2\r\n$10\r\ninvalidate\r\n*{}\r\n", keys.len());
    for k in keys {
        out.push_str(&format!("${}\r\n{k}\r\n", k.len()));
    }
    out
}

/// A Pub/Sub message as a RESP3 push (`kind` `>`) or as RESP2 sends it
/// (`*`): `message` with the channel, or `pmessage` with the pattern first.
pub fn pubsub_message(kind: char, pattern: Option<&str>, channel: &str, payload: &str) -> String {
    let word = if pattern.is_some() {
        "pmessage"
    } else {
        "message"
    };
    let items: Vec<&str> = [Some(word), pattern, Some(channel), Some(payload)]
        .into_iter()
        .flatten()
        .collect();
    let mut out = format!("{kind}{}\r\n", items.len());
    for item in items {
        out.push_str(&format!("${}\r\n{item}\r\n", item.len()));
    }
    out
}
