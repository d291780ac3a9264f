"""Time for a new replica to be ready: ferry's bootstrap against Redis's full sync.

Run by bench/bootstrap.sh (which installs Redis and builds ferry); see there.
For each run and each server (alternating), a fresh primary is loaded with
KEYS keys of 100 random bytes each (the same data for both), then a new,
empty replica is started, and the time from its start until it holds
everything is measured:

- ferry: default settings; once the primary's WAL no longer reaches back to
  LSN 1 (retention deleted the first segments), a new replica bootstraps
  from a snapshot and streams the tail. Ready: INFO replication says
  master_link_status:up, master_sync_in_progress:0 and its applied LSN
  (slave_repl_offset) is the primary's last.
- Redis: appendonly everysec like ferry; the primary syncs diskless with
  repl-diskless-sync-delay 0, the replica loads diskless when empty
  (repl-diskless-load on-empty-db, its fastest). Ready: master_link_status:up
  and master_sync_in_progress:0 and its offset is the primary's.
"""

import os
import random
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from replication import Conn, free_port, stop, wait_ping  # noqa: E402

FERRY = sys.argv[1]
WORK = sys.argv[2]
KEYS = int(os.environ.get("KEYS", "1000000"))
RUNS = int(os.environ.get("RUNS", "3"))
VALUE_BYTES = 100
BATCH = 1000


def start(kind, name, port, grpc=None, replica_of=None):
    d = os.path.join(WORK, name)
    os.makedirs(d, exist_ok=True)
    log = open(d + ".log", "ab")
    if kind == "ferry":
        args = [FERRY, "serve", "--data-dir", d, "--resp-addr", f"127.0.0.1:{port}",
                "--grpc-addr", f"127.0.0.1:{grpc or 0}", "--fsync", "everysec"]
        if replica_of:
            args += ["--replica-of", f"http://127.0.0.1:{replica_of}"]
    else:
        args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", d,
                "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
                "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
                "--repl-diskless-load", "on-empty-db", "--daemonize", "no"]
        if replica_of:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
    proc = subprocess.Popen(args, stdout=log, stderr=log)
    return proc


def load(port, seed):
    rng = random.Random(seed)
    c = Conn(port)
    for start_at in range(0, KEYS, BATCH):
        n = min(BATCH, KEYS - start_at)
        c.sock.sendall(b"".join(
            Conn.encode("SET", f"key:{i:08d}", rng.randbytes(VALUE_BYTES))
            for i in range(start_at, start_at + n)))
        for _ in range(n):
            c.reply()


def ferry_log_purged(port):
    info = Conn(port).info("persistence")
    return int(info["wal_first_lsn"]) > 1


def phases(run_no):
    """ferry's own timings of one bootstrap, from the two nodes' logs."""
    import re
    out = {}
    for name, pattern, key in (
            ("p", r"took a snapshot .*elapsed_ms=(\d+)", "checkpoint"),
            ("p", r"snapshot sent .*elapsed_ms=(\d+)", "transfer"),
            ("r", r"the engine holds the snapshot's state .*elapsed_ms=(\d+)", "install")):
        text = open(os.path.join(WORK, f"ferry-{run_no}-{name}.log"), errors="replace").read()
        text = re.sub(r"\x1b\[[0-9;]*m", "", text)
        m = re.search(pattern, text)
        out[key] = int(m.group(1)) if m else None
    return ", ".join(f"{k} {v} ms" for k, v in out.items() if v is not None)


def run(kind, run_no):
    pport, rport = free_port(), free_port()
    pgrpc = free_port() if kind == "ferry" else None
    primary = start(kind, f"{kind}-{run_no}-p", pport, grpc=pgrpc)
    wait_ping(pport, primary)
    started = time.time()
    load(pport, seed=run_no)
    loaded = time.time() - started
    pc = Conn(pport)
    if kind == "ferry":
        # Retention runs every second; the engine flushes so WAL can go.
        deadline = time.time() + 60
        while not ferry_log_purged(pport) and time.time() < deadline:
            time.sleep(0.1)
        purged = ferry_log_purged(pport)
        target = int(pc.info("replication")["master_repl_offset"])
    else:
        purged = True
        target = int(pc.info("replication")["master_repl_offset"])
    t0 = time.time()
    replica = start(kind, f"{kind}-{run_no}-r", rport,
                    replica_of=pgrpc if kind == "ferry" else pport)
    wait_ping(rport, replica)
    rc = Conn(rport)
    deadline = t0 + 600
    while time.time() < deadline:
        info = rc.info("replication")
        if (info.get("master_link_status") == "up"
                and info.get("master_sync_in_progress") == "0"
                and int(info.get("slave_repl_offset", "0")) >= target):
            break
        time.sleep(0.01)
    else:
        raise RuntimeError(f"{kind} replica not ready in 600 s")
    ready = time.time() - t0
    dbsize = rc.call("DBSIZE")
    if dbsize != KEYS:
        raise RuntimeError(f"{kind} replica holds {dbsize} keys, not {KEYS}")
    full = int(pc.info("stats")["sync_full"])
    stop(replica)
    stop(primary)
    detail = f"; {phases(run_no)}" if kind == "ferry" else ""
    print(f"  {kind} run {run_no}: loaded {KEYS:,} keys in {loaded:.1f} s; new replica ready in "
          f"{ready:.2f} s (full syncs {full}{'' if purged else ', WAL not purged: streamed'}"
          f"{detail})", flush=True)
    return ready


def main():
    print(f"{KEYS:,} keys of {VALUE_BYTES} random bytes; {RUNS} runs per server, alternating", flush=True)
    times = {"ferry": [], "redis": []}
    for run_no in range(RUNS):
        for kind in ("ferry", "redis"):
            times[kind].append(run(kind, run_no))
    f, r = statistics.median(times["ferry"]), statistics.median(times["redis"])
    print()
    print("| | ferry | Redis | ratio ferry/Redis (target <= 0.5) |")
    print("| --- | --- | --- | --- |")
    print(f"| new replica ready, median of {RUNS} | {f:.2f} s | {r:.2f} s | {f / r:.2f} |")
    print(f"| runs | {', '.join(f'{t:.2f}' for t in times['ferry'])} | "
          f"{', '.join(f'{t:.2f}' for t in times['redis'])} | |")


if __name__ == "__main__":
    main()
