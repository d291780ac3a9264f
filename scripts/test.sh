#!/usr/bin/env bash
# ferry's test command: installs what the tests need on a fresh machine, then
# runs the format check, clippy (warnings are errors) and every test of the
# workspace. CI (.ci/run) runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

# --- What a fresh machine may lack -------------------------------------------
source scripts/deps.sh
ferry_build_deps
# tests/differential.rs sends the same commands to ferry and to Redis.
ferry_redis_deps

# --- Checks and tests ---------------------------------------------------------
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --all-targets --locked
