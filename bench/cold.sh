#!/bin/sh
# cold.sh: the cold tier's cost at 10k, 100k and 1M tokens (bench-cold.c),
# one process per size so that each resident-memory figure is its own.
#
#   sh bench/cold.sh [build dir (default build)] [sizes (default "10000 100000 1000000")]
#   BENCH_COLD_OPTS="--recalls 3" sh bench/cold.sh ...   (options for every size)
#
# The database of each size lives in a fresh folder under $TMPDIR (or
# /tmp) and is removed after; 1M tokens of f16 K/V take about 23 GB there
# while it runs. Prints the commit, the machine and each size's report.
set -eu
b=${1:-build}
sizes=${2:-"10000 100000 1000000"}
make -C "$b" bench/bench-cold >/dev/null
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(uname -m), $(nproc) cores"
for n in $sizes; do
	# shellcheck disable=SC2086
	"$b/bench/bench-cold" "$n" ${BENCH_COLD_OPTS:-}
done
