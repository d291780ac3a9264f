#!/usr/bin/env bash
# ferry against Redis on this machine, side by side in one run:
# redis-benchmark SET and GET (-n 200000 -c 50 -d 100 -r 100000) with -P 1 and
# -P 16, under matched durability (ferry --fsync always|everysec against Redis
# appendfsync always|everysec), the two servers alternating, RUNS runs each;
# then RSS after loading 1M keys of 100 bytes into each.
# Prints medians of ops/s, p50 and p99, and the ratio ferry/Redis; then the
# CPU time each server spent per request (from /proc/PID/stat around each
# run), steadier than rates on a machine whose speed drifts.
#
# A policy ending in -tls (POLICIES="everysec-tls") runs the same over TLS:
# ferry's --resp-tls-addr against Redis's tls-port, client certificates
# required on both, from a CA this script makes with openssl.
#
# usage: bench/resp.sh            (RUNS=3 POLICIES="always everysec" KEYS=1000000 to change)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
POLICIES=${POLICIES:-"always everysec"}
KEYS=${KEYS:-1000000}

source scripts/deps.sh
ferry_build_deps
ferry_redis_deps
cargo build --release --bin ferry
ferry_bin="${CARGO_TARGET_DIR:-target}/release/ferry"
work=$(mktemp -d /tmp/ferry-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# TLS: a CA and a certificate for loopback, good for serving and calling.
pki="$work/pki"
tls=()
make_pki() {
    [ -f "$pki/node.pem" ] && return 0
    mkdir -p "$pki"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=bench CA" -keyout "$pki/ca.key" -out "$pki/ca.pem" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=bench" \
        -keyout "$pki/node.key" -out "$pki/node.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' >"$pki/ext.cnf"
    openssl x509 -req -in "$pki/node.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" -CAcreateserial \
        -days 2 -extfile "$pki/ext.cnf" -out "$pki/node.pem" 2>/dev/null
    chmod 600 "$pki/node.key"
}
# Sets tls (the client flags) for a policy, and prints its durability.
tls_for() {
    case "$1" in
        *-tls) make_pki; tls=(--tls --cacert "$pki/ca.pem" --cert "$pki/node.pem" --key "$pki/node.key"); echo "${1%-tls}" ;;
        *) tls=(); echo "$1" ;;
    esac
}
wait_port() { for _ in $(seq 1 600); do redis-cli "${tls[@]}" -p "$1" ping >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "server on $1 did not start" >&2; return 1; }

start_ferry() { # policy dir -> sets port, pid
    local fsync; fsync=$(tls_for "$1"); tls_for "$1" >/dev/null
    port=$(free_port)
    local extra=()
    if [ ${#tls[@]} -gt 0 ]; then
        local plain; plain=$(free_port)
        extra=(--resp-addr "127.0.0.1:$plain" --resp-tls-addr "127.0.0.1:$port"
            --tls-cert-file "$pki/node.pem" --tls-key-file "$pki/node.key" --tls-ca-cert-file "$pki/ca.pem")
    else
        extra=(--resp-addr "127.0.0.1:$port")
    fi
    "$ferry_bin" serve --data-dir "$2" "${extra[@]}" --grpc-addr 127.0.0.1:0 --fsync "$fsync" >"$2.out" 2>"$2.err" &
    pid=$!; pids+=("$pid"); wait_port "$port"
}
start_redis() { # policy dir
    local fsync; fsync=$(tls_for "$1"); tls_for "$1" >/dev/null
    port=$(free_port); mkdir -p "$2"
    local listen=(--port "$port")
    if [ ${#tls[@]} -gt 0 ]; then
        listen=(--port 0 --tls-port "$port" --tls-cert-file "$pki/node.pem" --tls-key-file "$pki/node.key"
            --tls-ca-cert-file "$pki/ca.pem" --tls-auth-clients yes)
    fi
    redis-server "${listen[@]}" --bind 127.0.0.1 --dir "$2" --save "" --appendonly yes --appendfsync "$fsync" \
        --daemonize no --logfile "$2/redis.log" &
    pid=$!; pids+=("$pid"); wait_port "$port"
}
stop() { kill "$1"; wait "$1" 2>/dev/null || true; }

results="$work/results.csv"
echo "server,policy,pipeline,test,rps,p50,p99,cpu_us" >"$results"
REQUESTS=200000
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
bench_one() { # server policy port pid
    for p in 1 16; do
        for t in set get; do
            local before after
            before=$(cpu_ticks "$4")
            redis-benchmark "${tls[@]}" -p "$3" -t "$t" -n "$REQUESTS" -c 50 -d 100 -r 100000 -P "$p" --csv -q 2>/dev/null >"$work/one.csv"
            after=$(cpu_ticks "$4")
            python3 -c '
import csv, os, sys
server, policy, p, ticks, n = sys.argv[1:6]
cpu_us = int(ticks) * 1e6 / os.sysconf("SC_CLK_TCK") / int(n)
for row in csv.reader(open(sys.argv[6])):
    if row and row[0] in ("SET", "GET"):
        print(f"{server},{policy},{p},{row[0]},{row[1]},{row[4]},{row[6]},{cpu_us:.2f}")
' "$1" "$2" "$p" "$((after - before))" "$REQUESTS" "$work/one.csv" >>"$results"
        done
    done
}

echo "machine: $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)"
for policy in $POLICIES; do
    for run in $(seq 1 "$RUNS"); do
        order="ferry redis"; [ $((run % 2)) = 0 ] && order="redis ferry"
        for server in $order; do
            dir="$work/$server-$policy-$run"
            if [ "$server" = ferry ]; then start_ferry "$policy" "$dir"; else start_redis "$policy" "$dir"; fi
            echo "run $run: $server, $policy"
            bench_one "$server" "$policy" "$port" "$pid"
            stop "$pid"
        done
    done
done

# RSS after loading KEYS keys of 100 bytes, both with everysec.
python3 -c "
import sys
n = int(sys.argv[1]); out = sys.stdout.buffer; v = b'x' * 100
for i in range(n):
    k = b'key:%012d' % i
    out.write(b'*3\r\n\$3\r\nSET\r\n\$%d\r\n%s\r\n\$100\r\n%s\r\n' % (len(k), k, v))
" "$KEYS" >"$work/load.resp"
rss_of() { awk '/VmRSS/ {print $2 * 1024}' "/proc/$1/status"; }
tls=()
for server in ferry redis; do
    dir="$work/$server-rss"
    if [ "$server" = ferry ]; then start_ferry everysec "$dir"; else start_redis everysec "$dir"; fi
    redis-cli -p "$port" --pipe <"$work/load.resp" >/dev/null
    echo "$server,rss,$(redis-cli -p "$port" dbsize),$(rss_of "$pid")" >>"$work/rss.csv"
    stop "$pid"
done

python3 - "$results" "$work/rss.csv" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
def med(server, policy, p, test, field):
    vals = [float(r[field]) for r in rows if (r["server"], r["policy"], r["pipeline"], r["test"]) == (server, policy, p, test)]
    return statistics.median(vals) if vals else float("nan")
# Every row of both tables: durability, test, pipeline depth.
cases = [(policy, test, p) for policy in sorted({r["policy"] for r in rows})
         for test in ("SET", "GET") for p in ("1", "16")]
print()
print("| durability | test | -P | ferry ops/s | Redis ops/s | ratio | ferry p50 / p99 ms | Redis p50 / p99 ms |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for policy, test, p in cases:
    f, r = med("ferry", policy, p, test, "rps"), med("redis", policy, p, test, "rps")
    print(f"| {policy} | {test} | {p} | {f:,.0f} | {r:,.0f} | {f / r:.2f} | "
          f"{med('ferry', policy, p, test, 'p50'):.3f} / {med('ferry', policy, p, test, 'p99'):.3f} | "
          f"{med('redis', policy, p, test, 'p50'):.3f} / {med('redis', policy, p, test, 'p99'):.3f} |")
print()
print("CPU time per request (µs, medians; Redis's is one thread, ferry's all of its threads):")
print()
print("| durability | test | -P | ferry | Redis | Redis / ferry |")
print("| --- | --- | --- | --- | --- | --- |")
for policy, test, p in cases:
    f, r = med("ferry", policy, p, test, "cpu_us"), med("redis", policy, p, test, "cpu_us")
    print(f"| {policy} | {test} | {p} | {f:.2f} | {r:.2f} | {r / f:.2f} |")
rss = {row[0]: (int(row[2]), int(row[3])) for row in csv.reader(open(sys.argv[2]))}
(fk, fr), (rk, rr) = rss["ferry"], rss["redis"]
print()
print(f"RSS after loading 100-byte values: ferry {fr / 2**20:.0f} MiB ({fk} keys), Redis {rr / 2**20:.0f} MiB ({rk} keys), ratio {fr / rr:.2f}")
PY
