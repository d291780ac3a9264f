//! LATENCY: Redis's latency monitor and its per-command histograms.
//!
//! With `--latency-monitor-threshold MS` above 0, every event that takes at
//! least that long is noted under its name, as Redis notes its own: the
//! largest of each second, the last [`LATENCY_SAMPLES_MAX`] seconds that had
//! one, and the largest ever. ferry's events: `command` and `fast-command`
//! (a command's run, as in Redis), `wal-write` (a group commit's write to
//! the log), `wal-fsync` (a sync of the log's data, under either policy),
//! `engine-apply` (a RocksDB write of durable records, where RocksDB's
//! write stalls show) and `expire-cycle` (a step of the expiry sweep).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::node::LatencyHistogram;

/// Samples kept per event, as Redis's `LATENCY_TS_LEN`.
pub const LATENCY_SAMPLES_MAX: usize = 160;

/// An event's samples: (unix seconds, milliseconds), oldest first.
#[derive(Debug, Default)]
struct Series {
    samples: VecDeque<(u64, u64)>,
    max_ms: u64,
}

/// See the module documentation.
#[derive(Debug)]
pub struct LatencyMonitor {
    /// CONFIG SET latency-monitor-threshold changes it.
    threshold_ms: AtomicU64,
    events: Mutex<BTreeMap<&'static str, Series>>,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl LatencyMonitor {
    /// A monitor noting events of at least `threshold_ms` (0: none).
    pub fn new(threshold_ms: u64) -> LatencyMonitor {
        LatencyMonitor {
            threshold_ms: AtomicU64::new(threshold_ms),
            events: Mutex::default(),
        }
    }

    /// Milliseconds from which events are noted (0: none).
    pub fn threshold_ms(&self) -> u64 {
        self.threshold_ms.load(Ordering::Relaxed)
    }

    /// CONFIG SET latency-monitor-threshold.
    pub fn set_threshold_ms(&self, ms: u64) {
        self.threshold_ms.store(ms, Ordering::Relaxed);
    }

    pub fn enabled(&self) -> bool {
        self.threshold_ms() > 0
    }

    /// Whether an event that took `took` is noted (a check before working
    /// out its name).
    pub fn over(&self, took: Duration) -> bool {
        let threshold = self.threshold_ms();
        threshold > 0 && took.as_millis() >= u128::from(threshold)
    }

    /// Notes that `event` took `took`, if that reaches the threshold.
    pub fn note(&self, event: &'static str, took: Duration) {
        if !self.over(took) {
            return;
        }
        self.note_at(
            event,
            u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            now_secs(),
        );
    }

    fn note_at(&self, event: &'static str, ms: u64, secs: u64) {
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let series = events.entry(event).or_default();
        series.max_ms = series.max_ms.max(ms);
        // One sample a second: its largest.
        if let Some(last) = series.samples.back_mut()
            && last.0 == secs
        {
            last.1 = last.1.max(ms);
            return;
        }
        series.samples.push_back((secs, ms));
        if series.samples.len() > LATENCY_SAMPLES_MAX {
            series.samples.pop_front();
        }
    }

    /// Each event's name, last sample's time and latency, and largest
    /// latency.
    pub fn latest(&self) -> Vec<(&'static str, u64, u64, u64)> {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        events
            .iter()
            .filter_map(|(name, s)| {
                let (secs, ms) = *s.samples.back()?;
                Some((*name, secs, ms, s.max_ms))
            })
            .collect()
    }

    /// The samples of `event`, oldest first.
    pub fn history(&self, event: &[u8]) -> Vec<(u64, u64)> {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        events
            .iter()
            .find(|(name, _)| name.as_bytes() == event)
            .map(|(_, s)| s.samples.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Forgets the named events (all of them if none is named); how many
    /// it forgot.
    pub fn reset(&self, named: &[bytes::Bytes]) -> usize {
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if named.is_empty() {
            let n = events.len();
            events.clear();
            return n;
        }
        let before = events.len();
        events.retain(|name, _| !named.iter().any(|n| n.as_ref() == name.as_bytes()));
        before - events.len()
    }

    /// LATENCY GRAPH: the samples of `event` as columns of a chart, the
    /// oldest on the left, each with its latency and age under it; `None`
    /// without samples.
    pub fn graph(&self, event: &[u8]) -> Option<String> {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let (name, series) = events.iter().find(|(name, _)| name.as_bytes() == event)?;
        let samples: Vec<(u64, u64)> = series.samples.iter().copied().collect();
        graph(name, &samples, series.max_ms, now_secs())
    }

    /// LATENCY DOCTOR: what the samples say, event by event.
    pub fn doctor(&self, slowlog_slower_than_us: i64) -> String {
        if !self.enabled() {
            return "Latency monitoring is disabled on this ferry node: start it with \
                    --latency-monitor-threshold <milliseconds> (FERRY_LATENCY_MONITOR_THRESHOLD), \
                    or CONFIG SET latency-monitor-threshold <milliseconds>, \
                    to note every event at least that long.\n"
                .to_string();
        }
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if events.values().all(|s| s.samples.is_empty()) {
            return format!(
                "No event took {} ms or more since this node started (or since LATENCY RESET).\n",
                self.threshold_ms()
            );
        }
        let mut out = String::from("Latency spikes were observed on this node:\n\n");
        for (n, (name, s)) in events
            .iter()
            .filter(|(_, s)| !s.samples.is_empty())
            .enumerate()
        {
            let count = s.samples.len() as u64;
            let sum: u64 = s.samples.iter().map(|(_, ms)| ms).sum();
            let mean = sum / count;
            let deviation = s
                .samples
                .iter()
                .map(|(_, ms)| ms.abs_diff(mean))
                .sum::<u64>()
                / count;
            let span = s.samples.back().map(|l| l.0).unwrap_or_default()
                - s.samples.front().map(|f| f.0).unwrap_or_default();
            let period = if count > 1 {
                span as f64 / (count - 1) as f64
            } else {
                0.0
            };
            let _ = writeln!(
                out,
                "{}. {name}: {count} latency spikes (average {mean} ms, mean deviation \
                 {deviation} ms, period {period:.2} s). Worst all time event {} ms.",
                n + 1,
                s.max_ms
            );
        }
        out.push_str("\nWhat to look at:\n\n");
        let has = |e: &str| events.get(e).is_some_and(|s| !s.samples.is_empty());
        if has("command") || has("fast-command") {
            if slowlog_slower_than_us < 0
                || slowlog_slower_than_us as u64 > self.threshold_ms() * 1000
            {
                let _ = writeln!(
                    out,
                    "- The slow log leaves out commands this slow: start the node with \
                     --slowlog-log-slower-than {} (µs) to see them in SLOWLOG GET.",
                    self.threshold_ms() * 1000
                );
            }
            out.push_str(
                "- SLOWLOG GET names the slow commands: KEYS, SCAN with a large COUNT, \
                 HGETALL or DEL of a large hash, GET of a long string and LCS take time in \
                 proportion to what they read.\n",
            );
        }
        if has("wal-fsync") {
            out.push_str(
                "- wal-fsync: the disk under the WAL syncs slowly. Under --fsync always \
                 every write waits for it; put the WAL on a faster disk, or use everysec.\n",
            );
        }
        if has("wal-write") {
            out.push_str(
                "- wal-write: writing to the WAL's file blocked, as when the system's \
                 dirty pages are written back or the disk is saturated.\n",
            );
        }
        if has("engine-apply") {
            out.push_str(
                "- engine-apply: RocksDB held writes back (a write stall, while compaction \
                 catches up with many files in level 0); INFO rocksdb shows the files and \
                 the memtables.\n",
            );
        }
        if has("expire-cycle") {
            out.push_str(
                "- expire-cycle: a step of the expiry sweep deleted many keys, or large \
                 ones, at once.\n",
            );
        }
        out
    }
}

/// Rows of a graph's bars.
const GRAPH_ROWS: u64 = 4;

/// The chart of [`LatencyMonitor::graph`], with `now` for the ages.
fn graph(name: &str, samples: &[(u64, u64)], max_ever: u64, now: u64) -> Option<String> {
    let high = samples.iter().map(|s| s.1).max()?;
    let low = samples.iter().map(|s| s.1).min()?;
    let mut out = format!(
        "{name} - high {high} ms, low {low} ms (all time high {max_ever} ms)\n{}\n",
        "-".repeat(80)
    );
    // A bar's height in rows, at least one.
    let height = |ms: u64| {
        if high == low {
            GRAPH_ROWS
        } else {
            1 + (ms - low) * (GRAPH_ROWS - 1) / (high - low)
        }
    };
    for row in (1..=GRAPH_ROWS).rev() {
        let line: String = samples
            .iter()
            .map(|&(_, ms)| match height(ms) {
                h if h == row => '#',
                h if h > row => '|',
                _ if row == 1 => '_',
                _ => ' ',
            })
            .collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    // Each column's latency, then its age, written downwards.
    let latencies: Vec<String> = samples.iter().map(|s| s.1.to_string()).collect();
    let ages: Vec<String> = samples
        .iter()
        .map(|s| age(now.saturating_sub(s.0)))
        .collect();
    for labels in [latencies, ages] {
        let longest = labels.iter().map(String::len).max().unwrap_or(0);
        for i in 0..longest {
            let line: String = labels
                .iter()
                .map(|l| l.chars().nth(i).unwrap_or(' '))
                .collect();
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    Some(out)
}

/// An age as Redis's graph writes it: seconds, minutes, hours or days.
fn age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// LATENCY HISTOGRAM's `histogram_usec` of `h`: the calls, and for each
/// power of two from 1,024 ns on, the calls shorter than it (those that
/// changed), labelled as Redis labels its buckets (1, 2, 4, 8, 16, 33, 66,
/// ... microseconds).
pub fn cumulative(h: &LatencyHistogram) -> (u64, Vec<(u64, u64)>) {
    let total = h.count();
    let mut out = Vec::new();
    let mut previous = 0;
    let mut power = 10;
    while previous < total && power < 64 {
        let below = h.count_below(1u64 << power);
        // Past the last power, everything.
        let seen = if power == 63 { total } else { below };
        if seen > previous {
            // Redis's bucket bound: the power, plus the width of its
            // histogram's sub-bucket there (two significant digits).
            let bound = (1u64 << power) + (1u64 << (power - 7)) - 1;
            out.push((bound / 1000, seen));
        }
        previous = seen;
        power += 1;
    }
    (total, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_sample_a_second_the_largest_and_at_most_the_last_160() {
        let m = LatencyMonitor::new(5);
        assert!(!m.over(Duration::from_millis(4)));
        assert!(m.over(Duration::from_millis(5)));
        m.note_at("command", 7, 100);
        m.note_at("command", 9, 100);
        m.note_at("command", 6, 100);
        m.note_at("command", 6, 101);
        assert_eq!(m.history(b"command"), vec![(100, 9), (101, 6)]);
        assert_eq!(m.latest(), vec![("command", 101, 6, 9)]);
        for s in 0..200 {
            m.note_at("wal-fsync", 10 + s, 1000 + s);
        }
        let h = m.history(b"wal-fsync");
        assert_eq!(h.len(), LATENCY_SAMPLES_MAX);
        assert_eq!(h[0], (1040, 50));
        assert_eq!(m.reset(&[bytes::Bytes::from_static(b"nosuch")]), 0);
        assert_eq!(m.reset(&[bytes::Bytes::from_static(b"command")]), 1);
        assert_eq!(m.latest().len(), 1);
        assert_eq!(m.reset(&[]), 1);
        assert!(m.latest().is_empty());
    }

    #[test]
    fn a_disabled_monitor_notes_nothing() {
        let m = LatencyMonitor::new(0);
        m.note("command", Duration::from_secs(3));
        assert!(m.latest().is_empty());
        assert!(m.doctor(10_000).contains("disabled"));
        assert_eq!(m.graph(b"command"), None);
    }

    #[test]
    fn the_graph_draws_a_column_per_sample() {
        let text = graph("command", &[(100, 10), (101, 20)], 25, 110).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "command - high 20 ms, low 10 ms (all time high 25 ms)"
        );
        assert_eq!(&lines[2..6], &[" #", " |", " |", "#|"]);
        // Latencies, then ages, downwards.
        assert_eq!(&lines[6..], &["12", "00", "19", "0s", "s"]);
    }

    #[test]
    fn histograms_count_below_each_power_of_two_with_redis_s_labels() {
        let h = LatencyHistogram::default();
        for us in [0.5, 0.9, 3.0, 20.0, 20.0, 16_000.0] {
            h.record(Duration::from_nanos((us * 1000.0) as u64));
        }
        let (calls, buckets) = cumulative(&h);
        assert_eq!(calls, 6);
        assert_eq!(
            buckets,
            vec![(1, 2), (4, 3), (33, 5), (16908, 6)],
            "1 µs: two, 4: three, 33: five, 16,908: all"
        );
    }
}
