#!/usr/bin/env bash
# ferry against Redis on a long string used as a time series, side by side
# in one run on loopback (details in bench/strings.py): APPENDs of 100-byte
# samples to a 16 MiB string, reads of the last sample and of the length,
# and one read of the whole string. Prints ratios.
#
# usage: bench/strings.sh     (RUNS=3 LENGTH=16777216 APPENDS=20000 READS=50000 to change)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
ferry_python_bench strings
