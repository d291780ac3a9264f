"""ferry against Redis with a replica attached, side by side on loopback.

Run by bench/replication.sh (which installs Redis and builds ferry); see there.
For each server (ferry, then Redis), with a fresh primary and replica each time:

A. redis-benchmark -t set -n N -c 50 -d 100 -r 1000000 at -P 1 and -P 16:
   throughput, the replica's gap in SETs sampled every 10 ms (max, p99), and
   the time from the end of the load until the replica has everything.
B. Under a -P 16 load, the replica is stopped for OUTAGE seconds and started
   again: the time it takes to get back what it missed, and whether the
   primary did a full resync (Redis keeps its default 1 MB backlog).
C. Bytes on the replication link per SET: for redis-benchmark's values (all
   'x'), for random 100-byte values of letters and digits, and for random
   100-byte values of raw bytes (incompressible: no log format can carry
   them in much less than their own 100 bytes plus the key).

Offsets: Redis's are bytes of its replication stream; ferry's are LSNs (one
per SET). A Redis byte gap is turned into SETs with the bytes per SET measured
in the same run.
"""

import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time

FERRY = sys.argv[1]
WORK = sys.argv[2]
N = int(os.environ.get("N", "1000000"))
OUTAGE = float(os.environ.get("OUTAGE", "10"))
RANDOM_SETS = int(os.environ.get("RANDOM_SETS", "200000"))
SAMPLE_EVERY = 0.010


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Conn:
    """A minimal RESP client: enough for INFO, PING and pipelined SETs."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if kind == b"*":
            return [self.reply() for _ in range(int(rest))]
        raise RuntimeError(f"bad reply {line!r}")

    @staticmethod
    def encode(*args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        return b"".join(out)

    def call(self, *args):
        self.sock.sendall(self.encode(*args))
        return self.reply()

    def info(self, section):
        text = self.call("INFO", section).decode()
        out = {}
        for line in text.splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                out[k] = v
        return out


def stop(proc, timeout=20):
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_ping(port, proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on {port} exited")
        try:
            if Conn(port).call("PING") == "PONG":
                return
        except (OSError, RuntimeError):
            # Not listening yet, or LOADING.
            time.sleep(0.05)
    raise RuntimeError(f"server on {port} did not start")


class Pair:
    """A primary and a replica of one kind ('ferry' or 'redis')."""

    def __init__(self, kind, name):
        self.kind = kind
        self.dir = os.path.join(WORK, f"{kind}-{name}")
        os.makedirs(self.dir, exist_ok=True)
        self.pport, self.rport = free_port(), free_port()
        self.pgrpc = free_port()
        self.primary = self._start(True)
        self.replica = self._start(False)
        self.wait_linked()

    def _start(self, primary):
        port = self.pport if primary else self.rport
        d = os.path.join(self.dir, "p" if primary else "r")
        os.makedirs(d, exist_ok=True)
        log = open(d + ".log", "ab")
        if self.kind == "ferry":
            args = [FERRY, "serve", "--data-dir", d, "--resp-addr", f"127.0.0.1:{port}",
                    "--grpc-addr", f"127.0.0.1:{self.pgrpc if primary else 0}", "--fsync", "everysec"]
            if not primary:
                args += ["--replica-of", f"http://127.0.0.1:{self.pgrpc}"]
        else:
            args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", d,
                    "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
                    "--daemonize", "no"]
            if not primary:
                args += ["--replicaof", "127.0.0.1", str(self.pport)]
        proc = subprocess.Popen(args, stdout=log, stderr=log)
        wait_ping(port, proc)
        return proc

    def wait_linked(self, timeout=60):
        deadline = time.time() + timeout
        c = Conn(self.rport)
        while time.time() < deadline:
            if c.info("replication").get("master_link_status") == "up":
                return
            time.sleep(0.01)
        raise RuntimeError(f"{self.kind} replica did not link up")

    def offsets(self, pc, rc):
        """(primary offset, replica offset) read back to back."""
        p = int(pc.info("replication")["master_repl_offset"])
        r = int(rc.info("replication")["slave_repl_offset"])
        return p, r

    def link_bytes(self, pc):
        """Bytes the primary has sent on the replication link."""
        info = pc.info("replication")
        if self.kind == "redis":
            return int(info["master_repl_offset"])
        fields = dict(kv.split("=") for kv in info["ferry_replica0"].split(","))
        return int(fields["bytes_sent"])

    def full_syncs(self, pc):
        return int(pc.info("stats")["sync_full"])

    def stop_replica(self):
        stop(self.replica)

    def restart_replica(self):
        if self.kind == "ferry":
            # The role and the primary are kept in the data dir.
            d = os.path.join(self.dir, "r")
            log = open(d + ".log", "ab")
            self.replica = subprocess.Popen(
                [FERRY, "serve", "--data-dir", d, "--resp-addr", f"127.0.0.1:{self.rport}",
                 "--grpc-addr", "127.0.0.1:0", "--fsync", "everysec"], stdout=log, stderr=log)
            wait_ping(self.rport, self.replica)
        else:
            self.replica = self._start(False)

    def close(self):
        for p in (self.replica, self.primary):
            stop(p)


def benchmark(port, n, pipeline):
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-t", "set", "-n", str(n), "-c", "50", "-d", "100",
         "-r", "1000000", "-P", str(pipeline), "--csv", "-q"],
        capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        cols = [c.strip('"') for c in line.split(",")]
        if cols and cols[0] == "SET":
            return float(cols[1])
    raise RuntimeError(f"no SET result in {out!r}")


def p99(values):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * 0.99))] if values else 0


def phase_a(kind, pipeline, results):
    pair = Pair(kind, f"a{pipeline}")
    try:
        pc, rc = Conn(pair.pport), Conn(pair.rport)
        bytes_before = pair.link_bytes(pc)
        p0, _ = pair.offsets(pc, rc)
        gaps, stop = [], threading.Event()

        def sample():
            spc, src = Conn(pair.pport), Conn(pair.rport)
            while not stop.is_set():
                p, r = pair.offsets(spc, src)
                gaps.append(max(0, p - r))
                time.sleep(SAMPLE_EVERY)

        sampler = threading.Thread(target=sample)
        sampler.start()
        rps = benchmark(pair.pport, N, pipeline)
        stop.set()
        sampler.join()
        end = time.time()
        p_end, _ = pair.offsets(pc, rc)
        while pair.offsets(pc, rc)[1] < p_end:
            time.sleep(0.001)
        drain = time.time() - end
        per_set = (pair.link_bytes(pc) - bytes_before) / N
        # A Redis gap is in bytes of its stream; ferry's in LSNs (one per SET).
        unit = (p_end - p0) / N if kind == "redis" else 1.0
        sets = [g / unit for g in gaps]
        results[(kind, pipeline)] = dict(rps=rps, gap_max=max(sets, default=0), gap_p99=p99(sets),
                                         drain=drain, bytes_per_set=per_set, samples=len(sets))
        print(f"  {kind} -P {pipeline}: {rps:,.0f} SET/s, gap max {max(sets, default=0):,.0f} "
              f"p99 {p99(sets):,.0f} SETs ({len(sets)} samples), all there {drain * 1000:.0f} ms "
              f"after the load, {per_set:.1f} link bytes/SET", flush=True)
    finally:
        pair.close()


def phase_b(kind, results):
    pair = Pair(kind, "b")
    try:
        pc, rc = Conn(pair.pport), Conn(pair.rport)
        full_before = pair.full_syncs(pc)
        load = subprocess.Popen(
            ["redis-benchmark", "-p", str(pair.pport), "-t", "set", "-n", "100000000", "-c", "50",
             "-d", "100", "-r", "1000000", "-P", "16", "-q"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(3)
        pair.stop_replica()
        time.sleep(OUTAGE)
        target = int(pc.info("replication")["master_repl_offset"])
        restart = time.time()
        pair.restart_replica()
        rc = Conn(pair.rport)
        deadline = restart + 600
        while time.time() < deadline:
            info = rc.info("replication")
            if info.get("master_link_status") == "up" and int(info["slave_repl_offset"]) >= target:
                break
            time.sleep(0.005)
        catchup = time.time() - restart
        load.terminate()
        load.wait()
        full = pair.full_syncs(pc) - full_before
        results[(kind, "outage")] = dict(catchup=catchup, full=full)
        print(f"  {kind}: {OUTAGE:.0f} s outage under load: caught up {catchup:.2f} s after the "
              f"restart, full resyncs {full}", flush=True)
    finally:
        pair.close()


ALNUM = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def random_value(rng, kind):
    if kind == "bytes":
        return os.urandom(100)
    return bytes(rng.choice(ALNUM) for _ in range(100))


def phase_c(kind, values, results):
    pair = Pair(kind, f"c-{values}")
    try:
        pc = Conn(pair.pport)
        rng = random.Random(7)
        before = pair.link_bytes(pc)
        done, batch = 0, 1000
        while done < RANDOM_SETS:
            cmds = b"".join(Conn.encode("SET", b"key:%d" % rng.randrange(1000000),
                                        random_value(rng, values))
                            for _ in range(batch))
            pc.sock.sendall(cmds)
            for _ in range(batch):
                pc.reply()
            done += batch
        rc = Conn(pair.rport)
        p_end = int(pc.info("replication")["master_repl_offset"])
        while int(rc.info("replication")["slave_repl_offset"]) < p_end:
            time.sleep(0.005)
        per_set = (pair.link_bytes(pc) - before) / RANDOM_SETS
        results[(kind, values)] = dict(bytes_per_set=per_set)
        print(f"  {kind}: random 100-byte {values} values: {per_set:.1f} link bytes/SET", flush=True)
    finally:
        pair.close()


def main():
    results = {}
    print(f"machine: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}; N={N}", flush=True)
    for pipeline in (1, 16):
        for kind in ("ferry", "redis"):
            phase_a(kind, pipeline, results)
    for kind in ("ferry", "redis"):
        phase_b(kind, results)
    for values in ("bytes", "alnum"):
        for kind in ("ferry", "redis"):
            phase_c(kind, values, results)

    print()
    print("| -P | ferry SET/s | Redis SET/s | ratio | gap max / p99 (SETs) ferry | Redis | "
          "all there after the load, ferry / Redis |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for p in (1, 16):
        f, r = results[("ferry", p)], results[("redis", p)]
        print(f"| {p} | {f['rps']:,.0f} | {r['rps']:,.0f} | {f['rps'] / r['rps']:.2f} | "
              f"{f['gap_max']:,.0f} / {f['gap_p99']:,.0f} | {r['gap_max']:,.0f} / {r['gap_p99']:,.0f} | "
              f"{f['drain'] * 1000:.0f} ms / {r['drain'] * 1000:.0f} ms |")
    fo, ro = results[("ferry", "outage")], results[("redis", "outage")]
    print()
    print(f"{OUTAGE:.0f} s replica outage under -P 16 load: catch-up ferry {fo['catchup']:.2f} s, "
          f"Redis {ro['catchup']:.2f} s, ratio {fo['catchup'] / ro['catchup']:.2f} (target <= 1); "
          f"full resyncs ferry {fo['full']}, Redis {ro['full']} (target 0 for ferry)")
    fx, rx = results[("ferry", 16)]["bytes_per_set"], results[("redis", 16)]["bytes_per_set"]
    print(f"replication link bytes per SET (target ratio <= 0.7): redis-benchmark values ('x' * 100) "
          f"ferry {fx:.1f}, Redis {rx:.1f}, ratio {fx / rx:.2f}", end="")
    for values, name in (("alnum", "random letters and digits"), ("bytes", "random bytes")):
        f, r = results[("ferry", values)]["bytes_per_set"], results[("redis", values)]["bytes_per_set"]
        print(f"; {name} ferry {f:.1f}, Redis {r:.1f}, ratio {f / r:.2f}", end="")
    print()


if __name__ == "__main__":
    main()
