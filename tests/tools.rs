//! The WAL tools on real logs: `ferry wal dump | verify | inspect | repair`
//! and `ferry replay`, run as the real binary.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::*;
use ferry_wal::inspect::scan_dir;
use ferry_wal::storage::FsStorage;
use ferry_wal::{FrameLimits, Lsn, Wal, WalOptions};

fn run(args: &[&str]) -> Output {
    ferry().args(args).output().expect("run ferry")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A log of `n` frames of one record each, written with ferry-wal.
fn write_log(dir: &Path, n: usize) {
    let wal = Wal::open(dir, WalOptions::default()).expect("open");
    for i in 0..n {
        wal.append_blocking(vec![format!("record {i} {}", "x".repeat(i % 50)).into()])
            .expect("append");
    }
}

/// (segment, offset, first lsn, frame length) of every frame.
fn frames(dir: &Path) -> Vec<(PathBuf, u64, Lsn, usize)> {
    let mut out = Vec::new();
    scan_dir(&FsStorage, dir, FrameLimits::default(), |f| {
        out.push((
            f.segment.to_path_buf(),
            f.offset,
            f.header.first_lsn,
            f.bytes.len(),
        ));
        Ok(std::ops::ControlFlow::Continue(()))
    })
    .expect("scan");
    out
}

fn flip_bit(file: &Path, at: u64) {
    let mut bytes = std::fs::read(file).expect("read");
    bytes[at as usize] ^= 0x10;
    std::fs::write(file, bytes).expect("write");
}

#[test]
fn dump_prints_exactly_the_operations_of_a_workload_in_lsn_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(&dir.path().join("n"), &["--fsync", "always"]);
    let mut c = server.client();
    for args in [
        &["SET", "a", "1"][..],
        &["HSET", "h", "f", "v"],
        &["INCR", "c"],
        &["INCR", "c"],
        &["MSET", "x", "10", "y", "20"],
        &["DEL", "x"],
        &["APPEND", "a", "23"],
        &["FLUSHALL"],
    ] {
        raw(&mut c, args);
    }
    server.terminate();
    let wal = dir.path().join("n").join("wal");
    let out = run(&["wal", "dump", path(&wal)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ops: Vec<String> = text(&out.stdout)
        .lines()
        .map(|l| {
            // Drop the time column: LSN EPOCH TIME OP ...
            let cols: Vec<&str> = l.splitn(4, ' ').collect();
            format!("{} {} {}", cols[0], cols[1], cols[3])
        })
        .collect();
    assert_eq!(
        ops,
        [
            "1 0 set a \"1\"",
            "2 0 hset h fields=[{\"field\":\"f\",\"value\":\"v\"}]",
            "3 0 set c \"1\"",
            "4 0 set c \"2\"",
            "5 0 set x \"10\"",
            "5 0 set y \"20\"",
            "6 0 del x",
            "7 0 setrange a \"23\" offset=1",
            "8 0 flushall",
        ]
    );
    let out = run(&[
        "wal",
        "dump",
        path(&wal),
        "--json",
        "--from",
        "3",
        "--to",
        "6",
    ]);
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
        .collect();
    let lsns: Vec<u64> = lines
        .iter()
        .map(|v| v["lsn"].as_u64().expect("lsn"))
        .collect();
    assert_eq!(lsns, [3, 4, 5, 5, 6]);
    assert_eq!(lines[1]["op"], "set");
    assert_eq!(lines[1]["key"], "c");
    assert_eq!(lines[1]["value"], "2");
    assert_eq!(lines[4]["op"], "del");
    assert!(lines[0]["time_ms"].as_u64().is_some());
    let out = run(&["wal", "dump", path(&wal), "--key", "[xy]"]);
    assert_eq!(
        text(&out.stdout).lines().count(),
        3,
        "{}",
        text(&out.stdout)
    );

    let out = run(&["wal", "inspect", path(&wal), "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["totals"]["records"], 8);
    assert_eq!(v["segments"][0]["first_lsn"], 1);
    assert_eq!(v["segments"][0]["last_lsn"], 8);
}

/// A directory with no segment is not an intact log: the tools say so
/// and fail.
#[test]
fn the_tools_refuse_a_directory_without_a_log() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for tool in ["verify", "inspect", "dump", "repair"] {
        let out = run(&["wal", tool, path(tmp.path())]);
        assert_eq!(out.status.code(), Some(1), "{tool}");
        assert!(
            text(&out.stderr).contains("holds no WAL segment"),
            "{tool}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn verify_names_the_file_offset_and_lsn_of_every_flipped_bit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("wal");
    write_log(&dir, 100);
    let out = run(&["wal", "verify", path(&dir)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("intact"));

    let all = frames(&dir);
    let (seg, off30, lsn30, _) = all[29].clone();
    let (_, off70, lsn70, _) = all[69].clone();
    // A bit in the body of frame 30 and in the header of frame 70.
    flip_bit(&seg, off30 + 50);
    flip_bit(&seg, off70 + 20);
    let out = run(&["wal", "verify", path(&dir)]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    let name = seg.file_name().expect("name").to_string_lossy().to_string();
    for (line, off, lsn) in [(lines[0], off30, lsn30), (lines[1], off70, lsn70)] {
        assert!(line.starts_with("corrupt: "), "{line}");
        assert!(line.contains(&name), "{line}");
        assert!(
            line.contains(&format!("at byte {off} (lsn {lsn})")),
            "{line}"
        );
    }
}

/// A node's digest after each of two batches, the time between them, and
/// the LSN after the first.
struct History {
    first_lsn: u64,
    first_digest: String,
    between_ms: u64,
    final_digest: String,
}

fn two_batches(data_dir: &Path) -> History {
    let mut server = Server::start(data_dir, &["--fsync", "always"]);
    let mut c = server.client();
    for i in 0..300 {
        raw(&mut c, &["SET", &format!("k{}", i % 120), &format!("v{i}")]);
        if i % 7 == 0 {
            raw(
                &mut c,
                &["HSET", "h", &format!("f{}", i % 5), &i.to_string()],
            );
        }
    }
    let first_lsn = server.durable_lsn();
    let first_digest = digest(&server);
    let between_ms = now_ms();
    // The next frame must carry a later millisecond than `between_ms`.
    assert!(wait_until(Duration::from_secs(1), || now_ms() > between_ms));
    for i in 0..200 {
        raw(&mut c, &["SET", &format!("k{}", i % 150), &format!("w{i}")]);
        raw(&mut c, &["DEL", &format!("k{}", (i * 7) % 150)]);
    }
    let final_digest = digest(&server);
    server.terminate();
    History {
        first_lsn,
        first_digest,
        between_ms,
        final_digest,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

fn replayed_digest(wal: &Path, target: &Path, until: &[&str]) -> String {
    let mut args = vec!["replay", "--wal", path(wal), "--data-dir", path(target)];
    args.extend_from_slice(until);
    let out = run(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let server = Server::start(target, &[]);
    digest(&server)
}

#[test]
fn replay_until_an_lsn_or_a_time_gives_the_state_at_that_point() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = tmp.path().join("node");
    let h = two_batches(&node);
    let wal = node.join("wal");
    let at_lsn = replayed_digest(
        &wal,
        &tmp.path().join("by-lsn"),
        &["--until-lsn", &h.first_lsn.to_string()],
    );
    assert_eq!(at_lsn, h.first_digest);
    let at_time = replayed_digest(
        &wal,
        &tmp.path().join("by-time"),
        &["--until-time", &h.between_ms.to_string()],
    );
    assert_eq!(at_time, h.first_digest);
    let all = replayed_digest(&wal, &tmp.path().join("all"), &[]);
    assert_eq!(all, h.final_digest);
    assert_ne!(h.first_digest, h.final_digest);
    // An LSN inside a frame: the replayed log ends exactly there.
    let mid = tmp.path().join("mid");
    let out = run(&[
        "replay",
        "--wal",
        path(&wal),
        "--data-dir",
        path(&mid),
        "--until-lsn",
        "17",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let server = Server::start(&mid, &[]);
    let s = status(server.grpc);
    assert_eq!((s.applied_lsn, s.wal.expect("wal").last_lsn), (17, 17));
    // Its log starts with the frame holding lsn 17; a new replica of it
    // bootstraps from a snapshot and has the same data.
    assert!(s.wal.expect("wal").first_retained_lsn <= 17);
    let replica = Server::start(
        &tmp.path().join("mid-replica"),
        &["--replica-of", &server.grpc_url()],
    );
    assert!(wait_until(Duration::from_secs(30), || caught_up(
        &server, &replica
    )));
    assert_eq!(digest(&replica), digest(&server));
    assert_ne!(
        s.cluster_id,
        std::fs::read_to_string(node.join("node.conf")).expect("node.conf"),
        "a new cluster"
    );
}

#[test]
fn repair_cuts_a_torn_tail_and_the_log_then_holds_exactly_the_whole_frames() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("wal");
    write_log(&dir, 50);
    let all = frames(&dir);
    let (seg, off, _, len) = all[49].clone();
    // Half of the last frame again, as a torn write would leave it.
    let mut bytes = std::fs::read(&seg).expect("read");
    let half = bytes[off as usize..off as usize + len / 2].to_vec();
    bytes.extend_from_slice(&half);
    std::fs::write(&seg, &bytes).expect("write");

    let out = run(&["wal", "verify", path(&dir)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("torn tail: "),
        "{}",
        text(&out.stderr)
    );
    let out = run(&["wal", "repair", path(&dir)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("cut the torn tail"),
        "{}",
        text(&out.stdout)
    );
    let broken: Vec<_> = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".broken"))
        .collect();
    assert_eq!(broken.len(), 1, "a .broken copy is kept");
    assert_eq!(run(&["wal", "verify", path(&dir)]).status.code(), Some(0));

    let wal = Wal::open(&dir, WalOptions::default()).expect("open");
    assert_eq!(wal.last_lsn(), Lsn(50));
    let records: Vec<_> = wal
        .records(Lsn(1))
        .expect("reader")
        .map(|r| r.expect("record").lsn)
        .collect();
    assert_eq!(records, (1..=50).map(Lsn).collect::<Vec<_>>());
    let next = wal.append_blocking(vec!["after".into()]).expect("append");
    assert_eq!(next.first, Lsn(51));
}

#[test]
fn repair_salvages_only_when_asked_and_keeps_what_follows_the_corruption() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("wal");
    write_log(&dir, 40);
    let all = frames(&dir);
    let (seg, off, lsn, _) = all[19].clone();
    flip_bit(&seg, off + 60);
    let size = std::fs::metadata(&seg).expect("meta").len();

    let out = run(&["wal", "repair", path(&dir)]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--salvage"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::metadata(&seg).expect("meta").len(),
        size,
        "nothing changed"
    );

    let out = run(&["wal", "repair", "--salvage", path(&dir)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let side: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(side.len(), 1);
    let kept: u64 = std::fs::read_dir(&side[0])
        .expect("side dir")
        .map(|e| e.expect("entry").metadata().expect("meta").len())
        .sum();
    assert_eq!(
        kept,
        size - off,
        "every byte from the corruption on is kept"
    );
    let wal = Wal::open(&dir, WalOptions::default()).expect("open");
    assert_eq!(wal.last_lsn(), Lsn(lsn.0 - 1));
}

/// A segment whose header is damaged is moved aside whole by a salvage,
/// with every later one: none is left shorter than its header (the log
/// would not open), and the log ends before it.
#[test]
fn repair_salvages_a_segment_with_a_bad_header_whole() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("wal");
    {
        let wal = Wal::open(
            &dir,
            WalOptions {
                segment_bytes_max: 4096,
                ..WalOptions::default()
            },
        )
        .expect("open");
        for i in 0..300 {
            wal.append_blocking(vec![format!("record {i} {}", "x".repeat(40)).into()])
                .expect("append");
        }
    }
    let segments: Vec<PathBuf> = {
        let mut all: Vec<PathBuf> = frames(&dir).into_iter().map(|f| f.0).collect();
        all.dedup();
        all
    };
    assert!(segments.len() >= 3, "{segments:?}");
    let middle = &segments[1];
    let first_lsn = frames(&dir)
        .into_iter()
        .find(|f| &f.0 == middle)
        .expect("a frame")
        .2;
    flip_bit(middle, 0);
    let out = run(&["wal", "repair", "--salvage", path(&dir)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!middle.exists(), "the bad segment stayed");
    assert_eq!(run(&["wal", "verify", path(&dir)]).status.code(), Some(0));
    let wal = Wal::open(&dir, WalOptions::default()).expect("open");
    assert_eq!(wal.last_lsn(), Lsn(first_lsn.0 - 1));
}

#[test]
fn writing_tools_refuse_a_data_dir_a_running_node_holds() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("n");
    let server = Server::start(&data, &[]);
    raw(&mut server.client(), &["SET", "k", "v"]);
    let out = run(&["wal", "repair", path(&data.join("wal"))]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("in use"),
        "{}",
        text(&out.stderr)
    );
    // Named from inside it, too.
    let out = ferry()
        .current_dir(data.join("wal"))
        .args(["wal", "repair", "."])
        .output()
        .expect("run ferry");
    assert!(
        text(&out.stderr).contains("in use"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&[
        "replay",
        "--wal",
        path(&data.join("wal")),
        "--data-dir",
        path(&data),
    ]);
    assert!(!out.status.success());
    // The read-only tools work on the live log.
    assert!(
        run(&["wal", "verify", path(&data.join("wal"))])
            .status
            .success()
    );
    assert!(
        run(&["wal", "dump", path(&data.join("wal"))])
            .status
            .success()
    );
}

#[test]
fn dump_follow_shows_records_as_a_live_node_writes_them() {
    use std::io::{BufRead, BufReader};
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("n");
    let server = Server::start(&data, &["--fsync", "always"]);
    let mut c = server.client();
    raw(&mut c, &["SET", "before", "1"]);
    let mut child = ferry()
        .args(["wal", "dump", "--follow", path(&data.join("wal"))])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn dump --follow");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the existing record");
    assert!(first.contains("set before"), "{first}");
    for i in 0..3 {
        raw(&mut c, &["SET", &format!("after{i}"), "2"]);
    }
    for i in 0..3 {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a record written after the dump started");
        assert!(line.starts_with(&format!("{} ", i + 2)), "{line}");
        assert!(line.contains(&format!("set after{i}")), "{line}");
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn replay_onto_applies_another_log_after_a_primarys_own_records() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let mut sa = Server::start(&a, &["--fsync", "always"]);
    let mut sb = Server::start(&b, &["--fsync", "always"]);
    for i in 0..20 {
        raw(&mut sa.client(), &["SET", &format!("a{i}"), "1"]);
    }
    for i in 0..10 {
        raw(&mut sb.client(), &["SET", &format!("b{i}"), "2"]);
    }
    raw(&mut sb.client(), &["SET", "a0", "from-b"]);
    sa.terminate();
    sb.terminate();
    let out = run(&[
        "replay",
        "--onto",
        "--wal",
        path(&b.join("wal")),
        "--data-dir",
        path(&a),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("as lsn 21..=31"),
        "{}",
        text(&out.stdout)
    );
    let sa = Server::start(&a, &[]);
    let mut c = sa.client();
    assert_eq!(raw(&mut c, &["DBSIZE"]), redis::Value::Int(30));
    assert_eq!(
        raw(&mut c, &["GET", "a0"]),
        redis::Value::BulkString(b"from-b".to_vec())
    );
    assert_eq!(status(sa.grpc).applied_lsn, 31);

    // A replica's data directory is refused.
    let r = tmp.path().join("r");
    let mut replica = Server::replica(&r, &sa.grpc_url(), &[]);
    assert!(wait_until(Duration::from_secs(10), || replica
        .applied_lsn()
        == 31));
    replica.terminate();
    let out = run(&[
        "replay",
        "--onto",
        "--wal",
        path(&b.join("wal")),
        "--data-dir",
        path(&r),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("replica"),
        "{}",
        text(&out.stderr)
    );
}

/// A damaged log: `replay` refuses past the damage and leaves the new data
/// directory empty (a retry can run), and replays up to a stopping point
/// before it; `replay --onto` applies nothing at all.
#[test]
fn replay_applies_nothing_past_damage() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (src, target) = (tmp.path().join("src"), tmp.path().join("target"));
    let mut s = Server::start(&src, &["--fsync", "always"]);
    let c = &mut s.client();
    for i in 0..60 {
        raw(c, &["SET", &format!("k{i}"), "v"]);
    }
    s.terminate();
    let mut t = Server::start(&target, &[]);
    raw(&mut t.client(), &["SET", "own", "1"]);
    t.terminate();
    let wal = src.join("wal");
    let all = frames(&wal);
    let (seg, off, lsn, _) = all[40].clone();
    flip_bit(&seg, off + 50);

    let new = tmp.path().join("new");
    let out = run(&["replay", "--wal", path(&wal), "--data-dir", path(&new)]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("damaged before the stopping point"),
        "{}",
        text(&out.stderr)
    );
    assert!(!new.exists(), "left behind: {:?}", std::fs::read_dir(&new));
    let before = (lsn.0 - 1).to_string();
    let out = run(&[
        "replay",
        "--wal",
        path(&wal),
        "--data-dir",
        path(&new),
        "--until-lsn",
        &before,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!("replayed lsn 1..={before}")),
        "{}",
        text(&out.stdout)
    );

    let out = run(&[
        "replay",
        "--onto",
        "--wal",
        path(&wal),
        "--data-dir",
        path(&target),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("nothing applied"),
        "{}",
        text(&out.stderr)
    );
    let t = Server::start(&target, &[]);
    assert_eq!(raw(&mut t.client(), &["DBSIZE"]), redis::Value::Int(1));
    assert_eq!(status(t.grpc).applied_lsn, 1);
}

/// A PUBLISH's message and the keyspace events logged with a write are in
/// the dump, after the write's effects. (A primary without replicas logs a
/// PUBLISH only inside a transaction.)
#[test]
fn dump_shows_messages_and_keyspace_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(&dir.path().join("n"), &["--notify-keyspace-events", "g$"]);
    let mut c = server.client();
    raw(&mut c, &["SET", "k", "v", "EX", "100"]);
    raw(&mut c, &["MULTI"]);
    raw(&mut c, &["PUBLISH", "ch", "hello"]);
    raw(&mut c, &["EXEC"]);
    server.terminate();
    let out = run(&["wal", "dump", path(&dir.path().join("n").join("wal"))]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<String> = text(&out.stdout)
        .lines()
        // LSN, epoch and time first.
        .map(|l| l.splitn(4, ' ').nth(3).unwrap_or_default().to_string())
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(
        lines[0].starts_with("set k \"v\" expire_at_ms="),
        "{lines:?}"
    );
    assert_eq!(
        lines[1..],
        [
            "event k class=\"$\" event=\"set\"",
            "event k class=\"g\" event=\"expire\"",
            "publish \"hello\" channel=\"ch\"",
        ]
    );
}

/// A node killed with `kill -9` leaves the space its WAL writer had
/// zero-filled ahead: the tools count it apart, as no problem, and the
/// next start cuts it off.
#[test]
fn the_tools_count_the_zero_filled_space_a_crash_leaves_apart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("n");
    let mut server = Server::start(&data, &["--fsync", "always"]);
    for i in 0..20 {
        raw(&mut server.client(), &["SET", &format!("k{i}"), "v"]);
    }
    server.kill();
    let wal = data.join("wal");
    let out = run(&["wal", "verify", path(&wal)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("zero-filled after the last frame, cut at the next start")
            && stdout.contains("intact"),
        "{stdout}"
    );
    let out = run(&["wal", "inspect", path(&wal), "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let zeros = json["totals"]["zero_filled_bytes"]
        .as_u64()
        .expect("a count");
    let on_disk = json["totals"]["file_bytes"].as_u64().expect("a size");
    assert!(zeros > 0 && zeros < on_disk, "{json}");

    let mut server = Server::start(&data, &["--fsync", "always"]);
    assert_eq!(
        raw(&mut server.client(), &["DBSIZE"]),
        redis::Value::Int(20)
    );
    assert!(server.terminate().success());
    let out = run(&["wal", "inspect", path(&wal), "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["totals"]["zero_filled_bytes"], 0, "{json}");
    assert_eq!(
        json["totals"]["file_bytes"].as_u64(),
        Some(on_disk - zeros),
        "only the frames are left: {json}"
    );
}
