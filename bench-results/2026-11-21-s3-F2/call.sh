#!/usr/bin/env bash
# Session 3 final call F2: kt-kernel 0.7.2 anchor (15 threads), decode A/B (GEMV + MoE T=1, new vs
# session 2's binary), MoE prefill (incl. the AMX Q4_K GEMM and its AVX512 A/B), CPU test binaries.
set -uo pipefail
B=/tmp/kt-bin; mkdir -p $B /tmp/anch && tar xJf .device-carry/f2/bin.tar.xz -C $B && tar xJf .device-carry/f2/ktk.tar.xz -C /tmp/anch
t0=$SECONDS
mkdir -p $OUT/ktk
( timeout 150 python3 $B/bench_moe.py --ktk-dir /tmp/anch/ktk --out-dir $OUT/ktk --threads 15 \
   --methods amx_int4,llamafile_q4k --qlens 1,512 --extra-runs "" --min-time-s 0.5 --deadline-s 130 --bw-gib 2 \
   > $OUT/ktk/stdout.txt 2> $OUT/ktk/stderr.txt; echo "ktk rc $? at $((SECONDS-t0))s" )
BIN=$B bash kt-bench/scripts/device_decode.sh > $OUT/decode_stdout.txt 2>&1; echo "decode done $((SECONDS-t0))s"
BIN=$B CASE_TIMEOUT=40 bash kt-bench/scripts/device_prefill.sh > $OUT/prefill_stdout.txt 2>&1; echo "prefill done $((SECONDS-t0))s"
mkdir -p $OUT/tests
for t in $B/tests/*; do n=$(basename $t); [ $((SECONDS-t0)) -gt 500 ] && { echo "test $n skipped"; continue; }
  timeout 60 $t --test-threads 8 > $OUT/tests/$n.txt 2>&1; echo "test $n rc $? $(grep -E '^test result' $OUT/tests/$n.txt | tail -1)"; done
cd $OUT && tar czf all.tgz ktk decode prefill tests *.txt
tail -25 ktk/stdout.txt; tail -50 decode_stdout.txt; tail -30 prefill_stdout.txt
