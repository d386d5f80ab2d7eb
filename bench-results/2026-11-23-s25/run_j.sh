#!/usr/bin/env bash
# Session 25 call J (main at COMMIT): the final code's tests on the device (AMX; GPU with KT_REQUIRE_GPU=1) after the
# review's refactor (one fused decode job for both MoE operators).
set -uo pipefail
E=$OUT/j; mkdir -p $E; trap 'cd $OUT && tar czf j.tgz j && rm -rf j' EXIT
C=.device-carry/s25j; B=/tmp/kt-bin; mkdir -p $B && tar xJf $C/bin.tar.xz -C $B
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat $C/COMMIT)"
for t in lib_kt_kernels moe_repacked_moe moe_api moe_correctness moe_no_alloc moe_repacked_no_alloc; do
  timeout 120 $B/tests/$t > $E/test_$t.txt 2>&1; log "test $t rc $? $(grep 'test result' $E/test_$t.txt | tail -1)"
done
for t in hybrid_forward hybrid_graph; do
  KT_REQUIRE_GPU=1 timeout 150 $B/tests/$t > $E/test_$t.txt 2>&1; log "test $t rc $? $(grep 'test result' $E/test_$t.txt | tail -1)"
done
log done
