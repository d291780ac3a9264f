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

# Redis, for the benchmarks that run it beside ferry: redis-server and
# redis-tools (redis-benchmark, redis-cli).
ferry_redis_deps() {
    if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
        if [ "$(id -u)" = 0 ]; then
            echo "installing: redis-server redis-tools"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server redis-tools >/dev/null
        else
            echo "this benchmark needs redis-server and redis-tools: apt-get install redis-server redis-tools (as root)" >&2
            exit 1
        fi
    fi
}
