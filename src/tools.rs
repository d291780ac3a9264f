//! The WAL tools: `ferry wal inspect | dump | verify | repair` and `ferry
//! replay`. They work on any ferry WAL directory (a primary's, a replica's,
//! a copy). The read-only ones never write, so they are safe on a live
//! node's log; the writing ones refuse a data directory that a running node
//! holds.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use ferry_engine::{Engine, StateBuilder, StringSet, decode_record};
use ferry_proto::v1::{Mutation, SetString, WalRecord, mutation::Op};
use ferry_wal::inspect::{Inspection, Problem, scan_dir, scan_dir_from, segment_files};
use ferry_wal::storage::FsStorage;
use ferry_wal::{FrameLimits, Lsn, SyncPolicy, Wal, WalOptions};
use serde_json::json;

use crate::glob;
use crate::node::lock_data_dir;

/// Bytes of a value shown by `wal dump` before it is cut.
pub const DUMP_VALUE_PREVIEW_BYTES: usize = 64;
/// How often `wal dump --follow` looks for new frames.
pub const FOLLOW_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How often long runs report progress.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// Records applied to the engine in one RocksDB write by `replay`.
pub const REPLAY_APPLY_BATCH_RECORDS: usize = 8192;
/// The most memory `replay` gives the state it builds before it writes it
/// out and goes on record by record.
pub const REPLAY_STATE_BYTES_MAX: usize = 4 << 30;
/// Decoded records handed from the reading thread of a replay to the
/// folding one at a time.
pub const REPLAY_HANDOFF_RECORDS: usize = 4096;
/// Batches of [`REPLAY_HANDOFF_RECORDS`] queued between the two threads.
pub const REPLAY_QUEUE_BATCHES: usize = 8;

fn scan(
    dir: &Path,
    visit: impl FnMut(&ferry_wal::inspect::ScannedFrame<'_>) -> ferry_wal::Result<ControlFlow<()>>,
) -> anyhow::Result<Inspection> {
    anyhow::ensure!(dir.is_dir(), "{} is not a directory", dir.display());
    // A log always has a segment: none is the wrong directory (a data
    // directory's log is in its `wal/`), not an intact log.
    anyhow::ensure!(
        !segment_files(&FsStorage, dir)?.is_empty(),
        "{} holds no WAL segment (a data directory's log is in its wal/)",
        dir.display()
    );
    scan_dir(&FsStorage, dir, FrameLimits::default(), visit)
        .with_context(|| format!("reading the WAL in {}", dir.display()))
}

fn problem_line(p: &Problem) -> String {
    format!(
        "{}: {} at byte {} (lsn {}): {} ({} bytes)",
        if p.torn_tail { "torn tail" } else { "corrupt" },
        p.segment.display(),
        p.offset,
        p.lsn,
        p.reason,
        p.bytes
    )
}

// --- time ---------------------------------------------------------------------

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// ms since the Unix epoch as `2026-11-27T13:50:05.123Z`.
pub fn format_time(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        ms % 1000
    )
}

/// A time as ms since the Unix epoch: a number of ms, or RFC 3339
/// (`2026-11-27T13:50:05Z`, fractions and `+hh:mm` offsets allowed).
///
/// # Errors
///
/// Anything else.
pub fn parse_time(s: &str) -> Result<u64, String> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    let bad = || format!("{s:?} is neither ms since the Unix epoch nor an RFC 3339 time");
    let b = s.as_bytes();
    if !s.is_ascii()
        || b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
    {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        s.get(r).and_then(|t| t.parse().ok()).ok_or_else(bad)
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return Err(bad());
    }
    let mut rest = &s[19..];
    let mut ms = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let padded = format!("{:0<3}", &frac[..digits.min(3)]);
        ms = padded.parse().map_err(|_| bad())?;
        rest = &frac[digits..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        r if r.len() == 6 && (r.starts_with('+') || r.starts_with('-')) => {
            let sign = if r.starts_with('-') { -1 } else { 1 };
            let oh: i64 = r[1..3].parse().map_err(|_| bad())?;
            let om: i64 = r[4..6].parse().map_err(|_| bad())?;
            sign * (oh * 60 + om)
        }
        _ => return Err(bad()),
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - offset_min * 60;
    u64::try_from(secs * 1000 + ms).map_err(|_| bad())
}

// --- inspect ------------------------------------------------------------------

/// `ferry wal inspect DIR [--json]`.
///
/// # Errors
///
/// An unreadable directory.
pub fn inspect(dir: &Path, as_json: bool) -> anyhow::Result<ExitCode> {
    let inspection = scan(dir, |_| Ok(ControlFlow::Continue(())))?;
    let ratio = |stored: u64, raw: u64| {
        if stored == 0 {
            1.0
        } else {
            raw as f64 / stored as f64
        }
    };
    let (mut frames, mut records, mut stored, mut raw, mut file, mut zeros) = (0, 0, 0, 0, 0, 0);
    for s in &inspection.segments {
        frames += s.frames;
        records += s.records;
        stored += s.stored_bytes;
        raw += s.raw_bytes;
        file += s.file_bytes;
        zeros += s.zero_filled_bytes;
    }
    if as_json {
        let segments: Vec<_> = inspection
            .segments
            .iter()
            .map(|s| {
                json!({
                    "segment": s.path.file_name().map(|n| n.to_string_lossy().to_string()),
                    "first_lsn": s.first_lsn.0,
                    "last_lsn": s.last_lsn.0,
                    "frames": s.frames,
                    "records": s.records,
                    "epoch_min": s.epoch_min.0,
                    "epoch_max": s.epoch_max.0,
                    "time_min_ms": s.time_min_ms,
                    "time_max_ms": s.time_max_ms,
                    "stored_bytes": s.stored_bytes,
                    "raw_bytes": s.raw_bytes,
                    "file_bytes": s.file_bytes,
                    "zero_filled_bytes": s.zero_filled_bytes,
                    "ratio": ratio(s.stored_bytes, s.raw_bytes),
                })
            })
            .collect();
        let problems: Vec<_> = inspection.problems.iter().map(problem_json).collect();
        let out = json!({
            "dir": dir.display().to_string(),
            "segments": segments,
            "totals": {
                "segments": inspection.segments.len(),
                "frames": frames,
                "records": records,
                "stored_bytes": stored,
                "raw_bytes": raw,
                "file_bytes": file,
                "zero_filled_bytes": zeros,
                "ratio": ratio(stored, raw),
            },
            "problems": problems,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "{:<26} {:>21} {:>9} {:>9} {:>7} {:>24} {:>24} {:>12} {:>12} {:>6}",
            "segment", "lsn", "frames", "records", "epochs", "from", "to", "stored", "raw", "ratio"
        );
        for s in &inspection.segments {
            let time = |ms: u64| {
                if s.frames == 0 {
                    "-".to_string()
                } else {
                    format_time(ms)
                }
            };
            println!(
                "{:<26} {:>21} {:>9} {:>9} {:>7} {:>24} {:>24} {:>12} {:>12} {:>6.2}",
                s.path
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default(),
                format!("{}..={}", s.first_lsn, s.last_lsn),
                s.frames,
                s.records,
                format!("{}..{}", s.epoch_min, s.epoch_max),
                time(s.time_min_ms),
                time(s.time_max_ms),
                s.stored_bytes,
                s.raw_bytes,
                ratio(s.stored_bytes, s.raw_bytes)
            );
        }
        println!(
            "total: {} segments, {frames} frames, {records} records, {stored} bytes stored, {raw} bytes decompressed, ratio {:.2}, {file} bytes on disk{}",
            inspection.segments.len(),
            ratio(stored, raw),
            zero_filled_note(zeros)
        );
        for p in &inspection.problems {
            println!("{}", problem_line(p));
        }
    }
    Ok(if inspection.is_intact() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// After a byte count: how many of them are the zero-filled space a crash
/// left after the last frame (none: nothing).
fn zero_filled_note(zeros: u64) -> String {
    if zeros > 0 {
        format!(" ({zeros} zero-filled after the last frame, cut at the next start)")
    } else {
        String::new()
    }
}

fn problem_json(p: &Problem) -> serde_json::Value {
    json!({
        "segment": p.segment.display().to_string(),
        "offset": p.offset,
        "lsn": p.lsn.0,
        "reason": p.reason,
        "torn_tail": p.torn_tail,
        "bytes": p.bytes,
    })
}

// --- verify -------------------------------------------------------------------

/// `ferry wal verify DIR`: exit 0 when every frame is intact, 1 otherwise,
/// with one line per problem on stderr.
///
/// # Errors
///
/// An unreadable directory.
pub fn verify(dir: &Path) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut progress = Progress::new("verified", dir);
    let inspection = scan(dir, |frame| {
        progress.add(
            u64::from(frame.header.record_count),
            frame.bytes.len() as u64,
        );
        Ok(ControlFlow::Continue(()))
    })?;
    progress.finish();
    let (first, last) = (
        inspection
            .segments
            .first()
            .map_or(Lsn::ZERO, |s| s.first_lsn),
        inspection
            .segments
            .iter()
            .rev()
            .find(|s| s.last_lsn > Lsn::ZERO)
            .map_or(Lsn::ZERO, |s| s.last_lsn),
    );
    let bytes: u64 = inspection.segments.iter().map(|s| s.file_bytes).sum();
    let zeros: u64 = inspection
        .segments
        .iter()
        .map(|s| s.zero_filled_bytes)
        .sum();
    let epoch = inspection
        .segments
        .iter()
        .map(|s| s.epoch_max)
        .max()
        .unwrap_or_default();
    println!(
        "{} segments, {bytes} bytes{}, lsn {first}..={last}, last epoch {epoch}, {:.0} MB/s",
        inspection.segments.len(),
        zero_filled_note(zeros),
        bytes as f64 / 1e6 / started.elapsed().as_secs_f64().max(1e-9)
    );
    if inspection.is_intact() {
        println!("intact");
        return Ok(ExitCode::SUCCESS);
    }
    for p in &inspection.problems {
        eprintln!("{}", problem_line(p));
    }
    if inspection.only_torn_tail() {
        println!(
            "torn tail only: opening the log (or `ferry wal repair`) cuts it off and keeps a .broken copy"
        );
    } else {
        println!(
            "{} problems; `ferry wal repair --salvage` cuts the log at the first and keeps the rest aside",
            inspection.problems.len()
        );
    }
    Ok(ExitCode::FAILURE)
}

// --- dump ---------------------------------------------------------------------

/// What `ferry wal dump` shows.
#[derive(Debug, Clone, Default)]
pub struct DumpFilter {
    pub from: Option<u64>,
    pub to: Option<u64>,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    pub key: Option<String>,
}

fn preview(b: &[u8]) -> String {
    let cut = &b[..b.len().min(DUMP_VALUE_PREVIEW_BYTES)];
    let mut s: String = cut
        .iter()
        .flat_map(|&c| std::ascii::escape_default(c))
        .map(char::from)
        .collect();
    if b.len() > cut.len() {
        s.push_str(&format!("...({} bytes)", b.len()));
    }
    s
}

/// One mutation as (operation, key, value, extra fields).
fn describe(
    op: &Op,
) -> (
    &'static str,
    Option<&Bytes>,
    Option<&Bytes>,
    serde_json::Value,
) {
    match op {
        Op::SetString(m) => (
            "set",
            Some(&m.key),
            Some(&m.value),
            json!({"expire_at_ms": m.expire_at_ms}),
        ),
        Op::SetRange(m) => (
            "setrange",
            Some(&m.key),
            Some(&m.data),
            json!({"offset": m.offset}),
        ),
        Op::Delete(m) => ("del", Some(&m.key), None, json!({})),
        Op::SetExpiry(m) => (
            "expire",
            Some(&m.key),
            None,
            json!({"expire_at_ms": m.expire_at_ms}),
        ),
        Op::HashSet(m) => (
            "hset",
            Some(&m.key),
            None,
            json!({"fields": m.fields.iter().map(|f| json!({
                "field": String::from_utf8_lossy(&f.field),
                "value": preview(&f.value),
            })).collect::<Vec<_>>()}),
        ),
        Op::HashDelete(m) => (
            "hdel",
            Some(&m.key),
            None,
            json!({"fields": m.fields.iter().map(|f| String::from_utf8_lossy(f).to_string()).collect::<Vec<_>>()}),
        ),
        Op::FlushAll(_) => ("flushall", None, None, json!({})),
        Op::EpochChange(m) => ("epoch", None, None, json!({"epoch": m.epoch})),
        Op::Publish(m) => (
            if m.shard { "spublish" } else { "publish" },
            None,
            Some(&m.message),
            json!({"channel": String::from_utf8_lossy(&m.channel)}),
        ),
    }
}

/// Prints the records of one frame that pass `filter`; whether to go on.
fn dump_frame(
    frame: &ferry_wal::inspect::ScannedFrame<'_>,
    filter: &DumpFilter,
    as_json: bool,
    out: &mut impl Write,
) -> ferry_wal::Result<ControlFlow<()>> {
    let h = frame.header;
    if filter.until_ms.is_some_and(|u| h.timestamp_ms > u)
        || filter.to.is_some_and(|to| h.first_lsn.0 > to)
    {
        return Ok(ControlFlow::Break(()));
    }
    if filter.since_ms.is_some_and(|s| h.timestamp_ms < s)
        || filter.from.is_some_and(|from| h.last_lsn().0 < from)
    {
        return Ok(ControlFlow::Continue(()));
    }
    for (i, data) in frame.records().iter().enumerate() {
        let lsn = Lsn(h.first_lsn.0 + i as u64);
        if filter.from.is_some_and(|f| lsn.0 < f) || filter.to.is_some_and(|t| lsn.0 > t) {
            continue;
        }
        let record = match decode_record(lsn, data) {
            Ok(r) => r,
            Err(e) => {
                let _ = writeln!(out, "{lsn} {} undecodable: {e}", h.epoch);
                continue;
            }
        };
        // Its effects, then the keyspace events logged with them.
        let events = record.events.iter().map(|e| {
            let extra = json!({"event": e.event, "class": e.class});
            ("event", Some(&e.key), None, extra)
        });
        let items = record
            .mutations
            .iter()
            .filter_map(|m| m.op.as_ref())
            .map(describe)
            .chain(events);
        for (name, key, value, extra) in items {
            if let Some(pattern) = &filter.key
                && !key.is_some_and(|k| glob::matches_key(pattern.as_bytes(), k))
            {
                continue;
            }
            let line = if as_json {
                let mut v = json!({
                    "lsn": lsn.0,
                    "epoch": h.epoch.0,
                    "time_ms": h.timestamp_ms,
                    "time": format_time(h.timestamp_ms),
                    "op": name,
                });
                if let Some(k) = key {
                    v["key"] = json!(String::from_utf8_lossy(k));
                }
                if let Some(val) = value {
                    v["value"] = json!(preview(val));
                    v["value_len"] = json!(val.len());
                }
                if let (Some(obj), serde_json::Value::Object(extra)) = (v.as_object_mut(), extra) {
                    obj.extend(extra);
                }
                v.to_string()
            } else {
                let mut line = format!("{lsn} {} {} {name}", h.epoch, format_time(h.timestamp_ms));
                if let Some(k) = key {
                    line.push(' ');
                    line.push_str(&preview(k));
                }
                if let Some(val) = value {
                    line.push_str(&format!(" \"{}\"", preview(val)));
                }
                if let serde_json::Value::Object(extra) = extra {
                    for (k, v) in extra {
                        if v != json!(0) {
                            line.push_str(&format!(" {k}={v}"));
                        }
                    }
                }
                line
            };
            if writeln!(out, "{line}").is_err() {
                // The reader went away (a closed pipe): stop quietly.
                return Ok(ControlFlow::Break(()));
            }
        }
    }
    Ok(ControlFlow::Continue(()))
}

/// `ferry wal dump DIR [filters] [--json] [--follow]`.
///
/// # Errors
///
/// An unreadable directory.
pub fn dump(
    dir: &Path,
    filter: &DumpFilter,
    as_json: bool,
    follow: bool,
) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut next = Lsn::ZERO;
    let inspection = scan(dir, |frame| {
        next = frame.header.last_lsn().next();
        dump_frame(frame, filter, as_json, &mut out)
    })?;
    out.flush()?;
    for p in &inspection.problems {
        eprintln!("{}", problem_line(p));
    }
    if !follow {
        return Ok(if inspection.is_intact() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    // Follow: look for frames after the last one shown, until interrupted.
    loop {
        std::thread::sleep(FOLLOW_POLL_INTERVAL);
        let mut stop = false;
        scan_dir_from(&FsStorage, dir, FrameLimits::default(), next, |frame| {
            if frame.header.last_lsn() < next {
                return Ok(ControlFlow::Continue(()));
            }
            next = frame.header.last_lsn().next();
            let flow = dump_frame(frame, filter, as_json, &mut out)?;
            stop = flow.is_break();
            Ok(flow)
        })?;
        out.flush()?;
        if stop {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

// --- progress -----------------------------------------------------------------

/// Width of the progress bar on a terminal, in characters.
const PROGRESS_BAR_WIDTH: usize = 30;

/// Progress of a long run on stderr: a bar rewritten in place on a
/// terminal, a line a second otherwise.
struct Progress {
    what: &'static str,
    started: Instant,
    last: Instant,
    records: u64,
    bytes: u64,
    /// Bytes of the segments to read (frames are a little less).
    total_bytes: u64,
    tty: bool,
}

impl Progress {
    /// Progress over the segments of `dir`.
    fn new(what: &'static str, dir: &Path) -> Progress {
        let total_bytes = segment_files(&FsStorage, dir)
            .map(|files| {
                files
                    .iter()
                    .filter_map(|(_, p)| std::fs::metadata(p).ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        Progress {
            what,
            started: Instant::now(),
            last: Instant::now(),
            records: 0,
            bytes: 0,
            total_bytes,
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn add(&mut self, records: u64, bytes: u64) {
        self.records += records;
        self.bytes += bytes;
        if self.last.elapsed() >= PROGRESS_INTERVAL {
            self.last = Instant::now();
            self.print(false);
        }
    }

    fn print(&self, last: bool) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let line = format!(
            "{} {} records, {:.1} MB of WAL in {:.1} s ({:.0} MB/s, {:.0} records/s)",
            self.what,
            self.records,
            self.bytes as f64 / 1e6,
            secs,
            self.bytes as f64 / 1e6 / secs,
            self.records as f64 / secs
        );
        if self.tty {
            let done = if self.total_bytes == 0 {
                1.0
            } else {
                (self.bytes as f64 / self.total_bytes as f64).min(1.0)
            };
            let filled = (done * PROGRESS_BAR_WIDTH as f64) as usize;
            eprint!(
                "\r[{}{}] {:>3.0}% {line}{}",
                "#".repeat(filled),
                "-".repeat(PROGRESS_BAR_WIDTH - filled),
                done * 100.0,
                if last { "\n" } else { "" }
            );
        } else {
            eprintln!("{line}");
        }
    }

    fn finish(&self) {
        if self.started.elapsed() >= PROGRESS_INTERVAL || self.tty {
            self.print(true);
        }
    }
}

// --- repair -------------------------------------------------------------------

/// Refuses a WAL directory whose data directory a running node holds.
fn lock_wal_owner(wal_dir: &Path) -> anyhow::Result<Option<File>> {
    // `.` or a link has no parent as given: the directory's own.
    let wal_dir = wal_dir
        .canonicalize()
        .with_context(|| format!("reading {}", wal_dir.display()))?;
    let Some(parent) = wal_dir.parent() else {
        return Ok(None);
    };
    if parent.join("LOCK").exists() {
        return lock_data_dir(parent).map(Some);
    }
    Ok(None)
}

/// `ferry wal repair DIR [--salvage]`.
///
/// # Errors
///
/// A directory held by a running node, a corrupt log without `--salvage`,
/// I/O failures.
pub fn repair(dir: &Path, salvage: bool) -> anyhow::Result<ExitCode> {
    let _lock = lock_wal_owner(dir)?;
    let inspection = scan(dir, |_| Ok(ControlFlow::Continue(())))?;
    if inspection.is_intact() {
        println!("intact: nothing to repair");
        return Ok(ExitCode::SUCCESS);
    }
    for p in &inspection.problems {
        println!("{}", problem_line(p));
    }
    if inspection.only_torn_tail() {
        // Opening the log cuts a torn tail and keeps a .broken copy.
        let p = &inspection.problems[0];
        let wal = Wal::open(
            dir,
            WalOptions {
                sync_policy: SyncPolicy::Always,
                ..WalOptions::default()
            },
        )
        .with_context(|| format!("opening the WAL in {}", dir.display()))?;
        let last = wal.last_lsn();
        drop(wal);
        println!(
            "cut the torn tail of {} at byte {} ({} bytes kept in a .broken copy beside it); the log now ends at lsn {last}",
            p.segment.display(),
            p.offset,
            p.bytes
        );
        return Ok(ExitCode::SUCCESS);
    }
    if !salvage {
        bail!(
            "the log is corrupt before its end: `ferry wal repair --salvage` cuts it at the first problem \
             ({} at byte {}, lsn {}) and keeps everything after it in a side directory",
            inspection.problems[0].segment.display(),
            inspection.problems[0].offset,
            inspection.problems[0].lsn
        );
    }
    let first = &inspection.problems[0];
    let side = dir.join(format!(
        "salvaged-{}-lsn-{}",
        format_time(crate::node::now_ms()).replace(':', ""),
        first.lsn
    ));
    std::fs::create_dir_all(&side).with_context(|| format!("creating {}", side.display()))?;
    // The bad segment's bytes from the problem on go to the side directory,
    // and every later segment is moved there whole.
    let name = first
        .segment
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let data = std::fs::read(&first.segment)?;
    // A problem with the segment itself (its header, or where it starts):
    // it goes whole, as no segment may be left shorter than its header.
    let whole = first.offset < ferry_wal::format::SEGMENT_HEADER_LEN as u64;
    let tail_path = if whole {
        side.join(&name)
    } else {
        let path = side.join(format!("{name}.from-byte-{}", first.offset));
        write_synced(&path, &data[first.offset as usize..])?;
        path
    };
    let mut moved = Vec::new();
    for (_, path) in segment_files(&FsStorage, dir)? {
        if path > first.segment || (whole && path == first.segment) {
            let target = side.join(path.file_name().expect("a file name"));
            std::fs::rename(&path, &target)
                .with_context(|| format!("moving {}", path.display()))?;
            moved.push(target);
        }
    }
    if !whole {
        let file = File::options().write(true).open(&first.segment)?;
        file.set_len(first.offset)?;
        file.sync_all()?;
    }
    File::open(&side)?.sync_all()?;
    File::open(dir)?.sync_all()?;
    if whole {
        println!(
            "moved {} and every later segment ({} in all) to {} (the log now ends before lsn {})",
            first.segment.display(),
            moved.len(),
            side.display(),
            first.lsn
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "cut {} at byte {} (the log now ends before lsn {}); kept {} bytes of it in {} and moved {} later segments to {}",
        first.segment.display(),
        first.offset,
        first.lsn,
        data.len() as u64 - first.offset,
        tail_path.display(),
        moved.len(),
        side.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn write_synced(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let mut file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(data)?;
    file.sync_all()?;
    Ok(())
}

// --- replay -------------------------------------------------------------------

/// Where `ferry replay` stops.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    End,
    Lsn(u64),
    TimeMs(u64),
}

impl Until {
    /// How many of a frame's records come before the stopping point
    /// (`None`: the frame is wholly after it).
    fn records_to_keep(self, h: &ferry_wal::FrameHeader) -> Option<usize> {
        let all = h.record_count as usize;
        match self {
            Until::End => Some(all),
            Until::Lsn(n) if h.first_lsn.0 > n => None,
            Until::Lsn(n) if h.last_lsn().0 > n => Some((n - h.first_lsn.0 + 1) as usize),
            Until::TimeMs(t) if h.timestamp_ms > t => None,
            _ => Some(all),
        }
    }
}

/// What the folding thread of a replay leaves.
enum Folded {
    /// The whole state, in memory.
    Built(StateBuilder),
    /// The state outgrew memory: it went into the engine, and the records
    /// after it were applied there.
    Applied,
}

/// Records handed from the reading thread of a replay to the folding one,
/// in LSN order: SETs of a string (most records) read in place and packed
/// into one buffer, every other record decoded.
struct Handoff {
    records: Vec<Handed>,
    packed: Vec<u8>,
}

enum Handed {
    /// A [`ferry_engine::StringSet`]: its key, then its value, from `at`
    /// in the packed buffer.
    Set {
        lsn: Lsn,
        at: usize,
        key_len: usize,
        value_len: usize,
        expire_at_ms: u64,
    },
    Decoded(Lsn, WalRecord),
}

impl Handoff {
    fn with_capacity(records: usize) -> Handoff {
        Handoff {
            records: Vec::with_capacity(records),
            packed: Vec::new(),
        }
    }

    /// Adds the record at `lsn`, encoded as `data`.
    fn push(&mut self, lsn: Lsn, data: &Bytes) -> anyhow::Result<()> {
        match ferry_engine::single_string_set(data) {
            Some(set) => {
                let at = self.packed.len();
                self.packed.extend_from_slice(set.key);
                self.packed.extend_from_slice(set.value);
                self.records.push(Handed::Set {
                    lsn,
                    at,
                    key_len: set.key.len(),
                    value_len: set.value.len(),
                    expire_at_ms: set.expire_at_ms,
                });
            }
            None => self
                .records
                .push(Handed::Decoded(lsn, decode_record(lsn, data)?)),
        }
        Ok(())
    }

    fn len(&self) -> usize {
        self.records.len()
    }

    fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Each record with its LSN.
    fn iter(&self) -> impl Iterator<Item = (Lsn, Item<'_>)> {
        self.records.iter().map(|r| match r {
            &Handed::Set {
                lsn,
                at,
                key_len,
                value_len,
                expire_at_ms,
            } => (
                lsn,
                Item::Set(StringSet {
                    key: &self.packed[at..at + key_len],
                    value: &self.packed[at + key_len..at + key_len + value_len],
                    expire_at_ms,
                }),
            ),
            Handed::Decoded(lsn, record) => (*lsn, Item::Decoded(record)),
        })
    }
}

/// A record of a [`Handoff`].
enum Item<'a> {
    Set(StringSet<'a>),
    Decoded(&'a WalRecord),
}

impl Item<'_> {
    fn to_record(&self) -> WalRecord {
        match self {
            Item::Set(set) => WalRecord {
                mutations: vec![Mutation {
                    op: Some(Op::SetString(SetString {
                        key: Bytes::copy_from_slice(set.key),
                        value: Bytes::copy_from_slice(set.value),
                        expire_at_ms: set.expire_at_ms,
                    })),
                }],
                events: Vec::new(),
            },
            Item::Decoded(record) => (*record).clone(),
        }
    }
}

/// The folding side of a replay: records into the state in memory, or past
/// [`REPLAY_STATE_BYTES_MAX`] (what was built is ingested) into the engine.
fn fold(
    batches: std::sync::mpsc::Receiver<Handoff>,
    engine: &Engine,
    scratch: &Path,
) -> anyhow::Result<Folded> {
    let mut builder = Some(StateBuilder::new());
    let mut batch: Vec<(Lsn, WalRecord)> = Vec::new();
    for handoff in batches {
        match &mut builder {
            Some(b) => {
                for (lsn, item) in handoff.iter() {
                    match item {
                        Item::Set(set) => b.apply_string_set(lsn, set)?,
                        Item::Decoded(record) => b.apply(lsn, record)?,
                    }
                }
                if b.state_bytes() > REPLAY_STATE_BYTES_MAX {
                    let built = builder.take().expect("checked");
                    eprintln!(
                        "the state passed {REPLAY_STATE_BYTES_MAX} bytes in memory at lsn {}: ingesting it, then applying record by record",
                        built.last_lsn()
                    );
                    engine.ingest(built, scratch)?;
                }
            }
            None => {
                batch.extend(handoff.iter().map(|(lsn, item)| (lsn, item.to_record())));
                if batch.len() >= REPLAY_APPLY_BATCH_RECORDS {
                    engine.apply(&batch)?;
                    batch.clear();
                }
            }
        }
    }
    match builder {
        Some(built) => Ok(Folded::Built(built)),
        None => {
            engine.apply(&batch)?;
            Ok(Folded::Applied)
        }
    }
}

/// `ferry replay --wal DIR --data-dir NEW [--until-lsn N | --until-time T]`:
/// builds a new data directory holding exactly the state after that point.
///
/// One thread reads, checks, decompresses and decodes the log; another folds
/// the records into the final state in memory (no RocksDB read or write per
/// record), which is ingested as one SST file; if it grows past
/// [`REPLAY_STATE_BYTES_MAX`], what is built so far is ingested and the rest
/// is applied record by record. The new WAL starts with the source's frame
/// holding the stopping point (cut there if the point falls inside it).
///
/// # Errors
///
/// A data directory that exists with data or is held by a node, a log that
/// does not start at LSN 1, corruption before the stopping point, I/O.
/// On an error, the data directory is left empty, as it was.
pub fn replay(wal_dir: &Path, data_dir: &Path, until: Until) -> anyhow::Result<ExitCode> {
    if data_dir.exists() && std::fs::read_dir(data_dir)?.next().is_some() {
        bail!(
            "{} is not empty: replay builds a new data directory",
            data_dir.display()
        );
    }
    let existed = data_dir.exists();
    let lock = lock_data_dir(data_dir)?;
    let replayed = replay_new(wal_dir, data_dir, until);
    if replayed.is_err() {
        // Nothing of use was built: left as it was, so that a retry can
        // run.
        for entry in std::fs::read_dir(data_dir)?.flatten() {
            let path = entry.path();
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
        drop(lock);
        if !existed {
            let _ = std::fs::remove_dir(data_dir);
        }
    }
    replayed
}

/// [`replay`] into `data_dir`, locked and empty.
fn replay_new(wal_dir: &Path, data_dir: &Path, until: Until) -> anyhow::Result<ExitCode> {
    let files = segment_files(&FsStorage, wal_dir)?;
    match files.first() {
        None => bail!("{} holds no WAL segment", wal_dir.display()),
        Some((first, _)) if *first != Lsn(1) => bail!(
            "the log in {} starts at lsn {first}: replay needs it from lsn 1",
            wal_dir.display()
        ),
        _ => {}
    }
    let engine = Engine::open(&data_dir.join("engine")).context("creating the new engine")?;
    let mut progress = Progress::new("replayed", wal_dir);
    // The frame holding the last record replayed, whole (as stored) or cut
    // after it (its records up to there): the new log starts with it.
    let mut last_frame: Option<(ferry_wal::FrameHeader, Result<Bytes, Vec<Bytes>>)> = None;
    let mut last = Lsn::ZERO;
    let mut last_time = 0;
    let mut failure: Option<anyhow::Error> = None;
    // Two threads: this one reads, checks, decompresses and decodes the
    // log; the other folds the records into the state.
    let (inspection, folded) = std::thread::scope(|scope| -> anyhow::Result<_> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Handoff>(REPLAY_QUEUE_BATCHES);
        let folder = scope.spawn(|| fold(rx, &engine, data_dir));
        let mut pending = Handoff::with_capacity(REPLAY_HANDOFF_RECORDS);
        let inspection = scan(wal_dir, |frame| {
            let h = frame.header;
            // Records missing before it (damage the scan went past): the
            // replay stops there.
            if h.first_lsn != last.next() {
                return Ok(ControlFlow::Break(()));
            }
            let Some(keep) = until.records_to_keep(&h) else {
                return Ok(ControlFlow::Break(()));
            };
            let records = frame.records();
            let decoded = records[..keep]
                .iter()
                .enumerate()
                .try_for_each(|(i, data)| pending.push(Lsn(h.first_lsn.0 + i as u64), data));
            if let Err(e) = decoded {
                failure = Some(e);
                return Ok(ControlFlow::Break(()));
            }
            if pending.len() >= REPLAY_HANDOFF_RECORDS {
                let full =
                    std::mem::replace(&mut pending, Handoff::with_capacity(REPLAY_HANDOFF_RECORDS));
                if tx.send(full).is_err() {
                    // The folder stopped: its error is reported below.
                    return Ok(ControlFlow::Break(()));
                }
            }
            last_frame = Some((
                h,
                if keep == records.len() {
                    Ok(frame.bytes.clone())
                } else {
                    Err(records[..keep].to_vec())
                },
            ));
            last = Lsn(h.first_lsn.0 + keep as u64 - 1);
            last_time = h.timestamp_ms;
            progress.add(keep as u64, frame.bytes.len() as u64);
            Ok(if keep < records.len() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            })
        });
        if !pending.is_empty() {
            let _ = tx.send(pending);
        }
        drop(tx);
        let folded = folder
            .join()
            .map_err(|_| anyhow::anyhow!("the folding thread panicked"))?;
        Ok((inspection?, folded))
    })?;
    let stopped = matches!(until, Until::Lsn(n) if last.0 >= n);
    if let Some(p) = inspection
        .problems
        .iter()
        .find(|p| !p.torn_tail && p.lsn <= last.next() && !stopped)
    {
        bail!(
            "the log is damaged before the stopping point: {}",
            problem_line(p)
        );
    }
    if let Some(e) = failure {
        return Err(e.context("replaying"));
    }
    let folded = folded.context("replaying")?;
    let read = progress.started.elapsed();
    match folded {
        Folded::Built(built) if built.last_lsn() > Lsn::ZERO => engine.ingest(built, data_dir)?,
        Folded::Built(_) => {}
        Folded::Applied => {}
    }
    engine.flush()?;
    let written = progress.started.elapsed();
    // The new log starts with the frame holding the last record (the
    // records before it are in the engine, and the source keeps them), so
    // that the new node's replicas have a frame to continue after.
    let new_wal = data_dir.join("wal");
    std::fs::create_dir_all(&new_wal)?;
    if let Some((header, frame)) = last_frame {
        let wal = Wal::open(
            &new_wal,
            WalOptions {
                sync_policy: SyncPolicy::Always,
                first_lsn: header.first_lsn,
                ..WalOptions::default()
            },
        )
        .context("opening the new WAL")?;
        match frame {
            Ok(bytes) => {
                wal.append_frames_blocking(bytes)?;
            }
            Err(records) => {
                tokio::runtime::Builder::new_current_thread()
                    .build()?
                    .block_on(wal.set_epoch(header.epoch))?;
                wal.append_blocking(records)?;
            }
        }
        wal.sync_blocking()?;
    }
    progress.finish();
    let keys = engine.key_count();
    drop(engine);
    let total = progress.started.elapsed();
    eprintln!(
        "read and folded the log in {:.1} s, wrote the state in {:.1} s, started the new log in {:.1} s",
        read.as_secs_f64(),
        (written - read).as_secs_f64(),
        (total - written).as_secs_f64()
    );
    println!(
        "replayed lsn 1..={last} (last record written {}) into {}: {keys} keys; `ferry serve --data-dir {}` serves it as a new primary",
        if last_time == 0 {
            "-".to_string()
        } else {
            format_time(last_time)
        },
        data_dir.display(),
        data_dir.display()
    );
    if let Until::Lsn(n) = until
        && last.0 < n
    {
        eprintln!(
            "the log ends at lsn {last}, before lsn {n}: the data directory holds lsn 1..={last}"
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `ferry replay --wal DIR --data-dir EXISTING --onto`: applies the records
/// of another log (a quarantine file's, or any) onto an existing data
/// directory as new writes, after its own records, with new LSNs. The node
/// must be stopped, and must be a primary: a replica would fork from its
/// primary.
///
/// # Errors
///
/// A data directory held by a running node or following a primary, a
/// damaged source log before the stopping point, I/O.
pub fn replay_onto(wal_dir: &Path, data_dir: &Path, until: Until) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        data_dir.join("wal").is_dir(),
        "{} is not a ferry data directory (no wal/)",
        data_dir.display()
    );
    // Damage before the stopping point: nothing is applied (what follows
    // it could not be told apart from what is missing).
    let checked = scan(wal_dir, |_| Ok(ControlFlow::Continue(())))?;
    if let Some(p) = checked
        .problems
        .iter()
        .find(|p| !p.torn_tail && !matches!(until, Until::Lsn(n) if p.lsn.0 > n))
    {
        bail!(
            "the source log is damaged: {}; nothing applied (repair it with `ferry wal repair --salvage`, or stop before it with --until-lsn)",
            problem_line(p)
        );
    }
    let _lock = lock_data_dir(data_dir)?;
    let conf = std::fs::read_to_string(data_dir.join(crate::node::NODE_FILE)).unwrap_or_default();
    if conf
        .lines()
        .any(|l| l.trim_start().starts_with("replica_of="))
    {
        bail!(
            "{} belongs to a replica: writing onto it would fork it from its primary; apply onto the primary",
            data_dir.display()
        );
    }
    let wal = Wal::open(
        data_dir.join("wal"),
        WalOptions {
            sync_policy: SyncPolicy::No,
            ..WalOptions::default()
        },
    )
    .context("opening the data directory's WAL")?;
    let engine = Engine::open(&data_dir.join("engine")).context("opening the engine")?;
    engine
        .replay(&wal)
        .context("catching the engine up with its WAL")?;
    let first_new = wal.last_lsn().next();
    let mut progress = Progress::new("applied", wal_dir);
    let mut failure: Option<anyhow::Error> = None;
    let mut applied = 0u64;
    let inspection = scan(wal_dir, |frame| {
        let h = frame.header;
        let Some(keep) = until.records_to_keep(&h) else {
            return Ok(ControlFlow::Break(()));
        };
        let records = frame.records();
        let step = || -> anyhow::Result<()> {
            let range = wal.append_blocking(records[..keep].to_vec())?;
            let decoded = records[..keep]
                .iter()
                .enumerate()
                .map(|(i, data)| {
                    let lsn = Lsn(range.first.0 + i as u64);
                    decode_record(lsn, data).map(|r| (lsn, r))
                })
                .collect::<Result<Vec<_>, _>>()?;
            engine.apply(&decoded)?;
            Ok(())
        };
        if let Err(e) = step() {
            failure = Some(e);
            return Ok(ControlFlow::Break(()));
        }
        applied += keep as u64;
        progress.add(keep as u64, frame.bytes.len() as u64);
        Ok(ControlFlow::Continue(()))
    })?;
    if let Some(p) = inspection.problems.iter().find(|p| !p.torn_tail) {
        eprintln!("the source log is damaged: {}", problem_line(p));
    }
    if let Some(e) = failure {
        return Err(e.context("applying"));
    }
    wal.sync_blocking()?;
    engine.flush()?;
    progress.finish();
    println!(
        "applied {applied} records of {} onto {} as lsn {first_new}..={}",
        wal_dir.display(),
        data_dir.display(),
        wal.last_lsn()
    );
    Ok(if inspection.problems.iter().any(|p| !p.torn_tail) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_through_rfc3339() {
        for ms in [0, 1, 999, 86_399_999, 1_795_787_405_123, 4_102_444_800_000] {
            assert_eq!(parse_time(&format_time(ms)), Ok(ms), "{}", format_time(ms));
        }
        assert_eq!(format_time(1_795_787_405_123), "2026-11-27T13:50:05.123Z");
        assert_eq!(
            parse_time("2026-11-27T14:50:05+01:00"),
            Ok(1_795_787_405_000)
        );
        assert_eq!(parse_time("2026-11-27T13:50:05.1Z"), Ok(1_795_787_405_100));
        assert_eq!(parse_time("1795787405123"), Ok(1_795_787_405_123));
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("2026-13-01T00:00:00Z").is_err());
        assert!(parse_time("2026-11-27T13:50:05+1é12").is_err());
        assert!(parse_time("2026-11-27T13:50:05é").is_err());
    }
}
