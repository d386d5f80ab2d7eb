#!/usr/bin/env bash
# Session 4 final call F1a: GPU tests, compute-sanitizer memcheck of the kt-kernels CUDA tests,
# llama.cpp vs kt cpu vs kt hybrid on the 27-layer V2-Lite file (with the GPU-prefill crossover).
set -uo pipefail
B=/tmp/kt-bin; mkdir -p $B && tar xJf .device-carry/s4f1/bin.tar.xz -C $B
mkdir -p $OUT/memcheck
san=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
t0=$SECONDS
if [ -n "$san" ]; then
  for t in $B/tests/cuda_*; do n=$(basename $t)
    [ $((SECONDS-t0)) -gt 100 ] && { echo "memcheck $n skipped (time)" | tee -a $OUT/memcheck/summary.txt; continue; }
    KT_REQUIRE_GPU=1 timeout 60 "$san" --tool memcheck --error-exitcode 9 $t --test-threads 1 > $OUT/memcheck/$n.txt 2>&1
    echo "memcheck $n: exit $? $(grep -E 'ERROR SUMMARY' $OUT/memcheck/$n.txt | tail -1)" | tee -a $OUT/memcheck/summary.txt
  done
else echo "compute-sanitizer not found" | tee $OUT/memcheck/summary.txt; fi
BIN=$B BUDGET_S=${BUDGET_S:-420} V3_LAYERS=0 CROSSOVER=1 bash kt-bench/scripts/device_engine.sh
cat $OUT/engine/summary.txt
