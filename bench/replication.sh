#!/usr/bin/env bash
# ferry against Redis with a replica attached, side by side in one run on
# loopback (details in bench/replication.py): throughput with a replica,
# the replica's gap sampled every 10 ms, time until the replica has it all,
# catch-up after a 10 s replica outage under load (and whether a full resync
# happened), and bytes on the replication link per SET. Prints ratios.
#
# usage: bench/replication.sh     (N=1000000 OUTAGE=10 RANDOM_SETS=200000 to change)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
ferry_python_bench replication
