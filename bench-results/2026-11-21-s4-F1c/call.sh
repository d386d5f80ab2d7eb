#!/usr/bin/env bash
# Session 4 final call F1c: the V2-Lite engine runs again (F1a's CPU side ran at a third of its
# usual bandwidth for every engine): top before and after, then llama.cpp, kt cpu, kt hybrid.
set -uo pipefail
B=/tmp/kt-bin; mkdir -p $B && tar xJf .device-carry/s4f1/bin.tar.xz -C $B
top -bn1 | head -15 > $OUT/top_before.txt
BIN=$B TESTS=0 BUDGET_S=${BUDGET_S:-400} V3_LAYERS=0 bash kt-bench/scripts/device_engine.sh
top -bn1 | head -15 > $OUT/top_after.txt
cat $OUT/engine/summary.txt; cat $OUT/top_before.txt
