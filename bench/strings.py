"""Long strings in ferry against Redis, side by side on loopback.

Run by bench/strings.sh (which installs Redis and builds ferry); see there.
A time series as Redis's documentation describes it, fixed-size samples
APPENDed to one string, under matched durability (everysec), the servers
alternating, RUNS runs each, each on a fresh server:

1. the string is made LENGTH bytes long with one SETRANGE;
2. redis-benchmark -n APPENDS -c 10: APPEND series <a 100-byte sample>,
   then, for scale, SET of the same sample to a key of its own;
3. redis-benchmark -n READS -c 10: GETRANGE series -100 -1 (the last
   sample), then STRLEN series;
4. one GET of the whole string, timed by the client.

Prints medians of requests/s, p50 and CPU time per request (read from
/proc/PID/stat around each run), and the ratio ferry/Redis.
"""

import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bootstrap import start  # noqa: E402
from replication import Conn, free_port, stop, wait_ping  # noqa: E402

WORK = sys.argv[2]
RUNS = int(os.environ.get("RUNS", "3"))
LENGTH = int(os.environ.get("LENGTH", str(16 << 20)))
APPENDS = int(os.environ.get("APPENDS", "20000"))
READS = int(os.environ.get("READS", "50000"))
SAMPLE = b"0123456789" * 10
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def bench(port, pid, n, *command):
    """requests/s, p50 ms and CPU µs per request of the server."""
    before = cpu_ticks(pid)
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-n", str(n), "-c", "10", "--csv", "-q",
         *[c.decode() if isinstance(c, bytes) else str(c) for c in command]],
        check=True, capture_output=True, text=True).stdout
    cpu_us = (cpu_ticks(pid) - before) * 1e6 / CLK_TCK / n
    row = [c.strip('"') for c in out.strip().splitlines()[-1].split('","')]
    return float(row[1]), float(row[4]), cpu_us


def run(kind, run_no, results):
    port = free_port()
    proc = start(kind, f"{kind}-{run_no}", port)
    try:
        wait_ping(port, proc)
        c = Conn(port)
        c.call("SETRANGE", "series", LENGTH - 1, "x")
        for name, n, command in [
            ("APPEND", APPENDS, ("APPEND", "series", SAMPLE)),
            ("SET", APPENDS, ("SET", "sample", SAMPLE)),
            ("GETRANGE", READS, ("GETRANGE", "series", "-100", "-1")),
            ("STRLEN", READS, ("STRLEN", "series")),
        ]:
            results.setdefault((kind, name), []).append(bench(port, proc.pid, n, *command))
        started = time.monotonic()
        whole = c.call("GET", "series")
        took = time.monotonic() - started
        assert len(whole) == LENGTH + APPENDS * len(SAMPLE), len(whole)
        results.setdefault((kind, "GET"), []).append((1 / took, took * 1000, 0.0))
    finally:
        stop(proc)


def main():
    results = {}
    print(f"machine: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}; "
          f"a string of {LENGTH} bytes, {APPENDS} APPENDs of {len(SAMPLE)} bytes")
    for run_no in range(RUNS):
        for kind in (["ferry", "redis"] if run_no % 2 == 0 else ["redis", "ferry"]):
            print(f"run {run_no + 1}: {kind}", flush=True)
            run(kind, run_no, results)
    print()
    print("| test | ferry req/s | Redis req/s | ratio | ferry p50 ms | Redis p50 ms "
          "| CPU µs/req ferry / Redis |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in ("APPEND", "SET", "GETRANGE", "STRLEN", "GET"):
        f = [statistics.median(x) for x in zip(*results[("ferry", name)])]
        r = [statistics.median(x) for x in zip(*results[("redis", name)])]
        cpu = "" if name == "GET" else f"{f[2]:.1f} / {r[2]:.1f}"
        label = {"GET": "GET (whole string, once)",
                 "SET": "SET of a sample to a key of its own (for scale)"}.get(name, name)
        print(f"| {label} | {f[0]:,.1f} | {r[0]:,.1f} | {f[0] / r[0]:.2f} | {f[1]:.3f} | "
              f"{r[1]:.3f} | {cpu} |")


if __name__ == "__main__":
    main()
