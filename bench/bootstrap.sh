#!/usr/bin/env bash
# Time for a new replica to be ready on a primary holding 1M keys of 100
# random bytes: ferry's snapshot bootstrap and tail against Redis's diskless
# full sync, side by side in one run on loopback (details in
# bench/bootstrap.py). Prints the ratio.
#
# usage: bench/bootstrap.sh     (KEYS=1000000 RUNS=3 to change)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
ferry_python_bench bootstrap
