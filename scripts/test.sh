#!/usr/bin/env bash
# ferry's test command: installs what the tests need on a fresh machine, then
# runs the format check, clippy (warnings are errors) and every test of the
# workspace. CI (.ci/run) runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

# --- What a fresh machine may lack -------------------------------------------
# libclang: librocksdb-sys generates its bindings with bindgen.
missing=()
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

# --- Checks and tests ---------------------------------------------------------
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --all-targets --locked
