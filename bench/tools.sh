#!/usr/bin/env bash
# Throughput of `ferry wal verify` and `ferry replay` on a large log (1 GB by
# default): MB/s of WAL and records/s. Targets: >= 100 MB/s and >= 1M
# records/s. The log holds SETs of random keys to 100 random letters and
# digits, 16 per frame (wal/examples/gen_log.rs).
#
# usage: bench/tools.sh        (LOG_BYTES=1000000000 to change)
set -euo pipefail
cd "$(dirname "$0")/.."
LOG_BYTES=${LOG_BYTES:-1000000000}
source scripts/deps.sh
ferry_build_deps
cargo build --release --bin ferry
cargo build --release -p ferry-wal --example gen_log
target="${CARGO_TARGET_DIR:-target}/release"
work=$(mktemp -d /tmp/ferry-bench-tools.XXXXXX)
trap 'rm -rf "$work"' EXIT

echo "== writing a log of $LOG_BYTES bytes"
"$target/examples/gen_log" "$work/wal" "$LOG_BYTES"
records=$("$target/ferry" wal inspect "$work/wal" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["totals"]["records"])')
bytes=$(du -sb "$work/wal" | cut -f1)
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true

time_of() { # seconds a command takes
    local t0=$EPOCHREALTIME
    "$@" >"$work/out" 2>&1 || { cat "$work/out" >&2; exit 1; }
    python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$t0" "$EPOCHREALTIME"
}
echo "== ferry wal verify"
tv=$(time_of "$target/ferry" wal verify "$work/wal")
echo "== ferry replay"
tr=$(time_of "$target/ferry" replay --wal "$work/wal" --data-dir "$work/replayed")
python3 - "$bytes" "$records" "$tv" "$tr" <<'PY'
import sys
b, r, tv, tr = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
print()
print(f"log: {b / 1e6:.0f} MB, {r:,} records")
print("| tool | seconds | MB/s of WAL | records/s | targets |")
print("| --- | --- | --- | --- | --- |")
for name, t in (("wal verify", tv), ("replay", tr)):
    mbs, rps = b / 1e6 / t, r / t
    ok = "met" if mbs >= 100 and rps >= 1e6 else "NOT met"
    print(f"| {name} | {t:.1f} | {mbs:.0f} | {rps:,.0f} | >= 100 MB/s and >= 1M records/s: {ok} |")
PY
