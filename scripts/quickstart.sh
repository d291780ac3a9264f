#!/usr/bin/env bash
# ferry in one command: builds ferry, starts a primary and a replica of it on
# loopback (real `ferry serve` processes), writes some keys, shows both
# nodes' status with their lag, and tells how to connect with redis-cli.
# Ctrl-C stops both cleanly.
#
#   scripts/quickstart.sh [DATA_DIR]   (default: a new temporary directory)
#
# Ports: FERRY_QS_PORT (default 6379) and the next ones: the primary's RESP,
# gRPC and Prometheus metrics on PORT, PORT+1000 and PORT+2000, the
# replica's RESP and gRPC on PORT+1 and PORT+1001.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
ferry_build_deps

port="${FERRY_QS_PORT:-6379}"
data="${1:-$(mktemp -d -t ferry-quickstart.XXXXXX)}"
mkdir -p "$data"

echo "== building ferry (release; the first build compiles RocksDB and takes a while)"
cargo build --release --locked --bin ferry
target="${CARGO_TARGET_DIR:-target}"
ferry="$target/release/ferry"

pids=()
stop() {
    trap - INT TERM EXIT
    if ((${#pids[@]})); then
        echo
        echo "== stopping both nodes (SIGTERM: they finish in-flight writes and sync)"
        kill -TERM "${pids[@]}" 2>/dev/null || true
        wait "${pids[@]}" 2>/dev/null || true
    fi
    echo "data kept in $data"
}
trap stop INT TERM EXIT

# Starts a node and waits for its ready line.
start() {
    local name="$1"
    shift
    "$ferry" serve --data-dir "$data/$name" "$@" >"$data/$name.out" 2>"$data/$name.log" &
    pids+=($!)
    for _ in $(seq 1 300); do
        if grep -q "^ferry listening" "$data/$name.out" 2>/dev/null; then
            echo "$name: $(grep '^ferry listening' "$data/$name.out")"
            return
        fi
        if ! kill -0 "${pids[-1]}" 2>/dev/null; then
            echo "$name did not start:" >&2
            cat "$data/$name.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "$name did not start within 30 s; see $data/$name.log" >&2
    exit 1
}

# Sends one command over the Redis protocol (no redis-cli needed) and prints
# the reply (a status, error, integer or bulk string).
resp() {
    local p="$1"
    shift
    exec 3<>"/dev/tcp/127.0.0.1/$p"
    local req="*$#\r\n" a
    for a in "$@"; do
        req+="\$${#a}\r\n$a\r\n"
    done
    printf "%b" "$req" >&3
    local line
    IFS= read -r line <&3
    line="${line%$'\r'}"
    if [[ "$line" == \$* && "$line" != '$-1' ]]; then
        IFS= read -r line <&3
        line="${line%$'\r'}"
    fi
    exec 3<&-
    printf '%s\n' "$line"
}

echo "== starting a primary and a replica in $data"
start primary --resp-addr "127.0.0.1:$port" --grpc-addr "127.0.0.1:$((port + 1000))" \
    --metrics-addr "127.0.0.1:$((port + 2000))"
start replica --resp-addr "127.0.0.1:$((port + 1))" --grpc-addr "127.0.0.1:$((port + 1001))" \
    --replica-of "http://127.0.0.1:$((port + 1000))"

echo "== writing 1000 keys and a counter to the primary"
for i in $(seq 1 1000); do
    resp "$port" SET "user:$i" "value-$i" >/dev/null
done
for _ in $(seq 1 10); do
    resp "$port" INCR visits >/dev/null
done
for _ in $(seq 1 50); do
    [ "$(resp $((port + 1)) GET user:1000)" = "value-1000" ] && break
    sleep 0.1
done
echo "GET user:42 on the replica: $(resp $((port + 1)) GET user:42)"
echo "SET on the replica: $(resp $((port + 1)) SET x 1)"

echo
echo "== ferry status --addr http://127.0.0.1:$((port + 1000))   (the primary)"
"$ferry" status --addr "http://127.0.0.1:$((port + 1000))"
echo
echo "== ferry status --addr http://127.0.0.1:$((port + 1001))   (the replica)"
"$ferry" status --addr "http://127.0.0.1:$((port + 1001))"
echo
echo "== some of the primary's Prometheus metrics (http://127.0.0.1:$((port + 2000))/metrics)"
exec 4<>"/dev/tcp/127.0.0.1/$((port + 2000))"
printf 'GET /metrics HTTP/1.1\r\nHost: ferry\r\nConnection: close\r\n\r\n' >&4
grep -E '^ferry_(role|keys|wal_durable_lsn|command_calls_total\{cmd="set"\}|replica_applied_lsn|replica_lag_records)' <&4 || true
exec 4<&-
echo
echo "Connect with any Redis client:"
echo "  redis-cli -p $port                  # the primary: reads and writes"
echo "  redis-cli -p $((port + 1))                  # the replica: reads (writes get -READONLY)"
echo "  $ferry status --addr http://127.0.0.1:$((port + 1001)) --json"
echo "  curl http://127.0.0.1:$((port + 2000))/metrics      # the primary's metrics"
echo "Both nodes run until Ctrl-C."
wait "${pids[@]}"
