# Sourced by ferry's scripts: installs the Debian packages ferry's build
# needs on a fresh machine (as root), or says which ones to install.
# libclang: librocksdb-sys generates its bindings with bindgen.
ferry_build_deps() {
    local missing=()
    if ! compgen -G "/usr/lib/llvm-*/lib/libclang.so*" >/dev/null; then
        missing+=(libclang1-14 libclang-common-14-dev)
    fi
    if ((${#missing[@]})); then
        if [ "$(id -u)" = 0 ]; then
            echo "installing: ${missing[*]}"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        else
            echo "ferry's build needs these Debian packages: ${missing[*]}" >&2
            echo "install them as root (apt-get install -y --no-install-recommends ${missing[*]}) and rerun" >&2
            exit 1
        fi
    fi
}

# Redis, for the tests and benchmarks that run it beside ferry: redis-server
# and redis-tools (redis-benchmark, redis-cli).
ferry_redis_deps() {
    if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
        if [ "$(id -u)" = 0 ]; then
            echo "installing: redis-server redis-tools"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server redis-tools >/dev/null
        else
            echo "ferry's tests and benchmarks run Redis beside it: apt-get install redis-server redis-tools (as root), then rerun" >&2
            exit 1
        fi
    fi
}

# Runs bench/NAME.py against a release ferry, with Redis installed, in a
# work folder of its own that is removed (and its servers stopped) at exit.
ferry_python_bench() {
    local name=$1
    ferry_build_deps
    ferry_redis_deps
    cargo build --release --bin ferry
    local ferry_bin="${CARGO_TARGET_DIR:-target}/release/ferry"
    FERRY_BENCH_WORK=$(mktemp -d "/tmp/ferry-bench-$name.XXXXXX")
    trap 'pkill -f "$FERRY_BENCH_WORK" 2>/dev/null || true; rm -rf "$FERRY_BENCH_WORK"' EXIT
    python3 "bench/$name.py" "$ferry_bin" "$FERRY_BENCH_WORK"
}
