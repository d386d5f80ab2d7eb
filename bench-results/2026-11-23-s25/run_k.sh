#!/usr/bin/env bash
# Session 25 call K (main at COMMIT): the tests of call J again after the second review (the repacked job's
# provenance fix, FusedMoe's LayerRef): AMX, and GPU with KT_REQUIRE_GPU=1.
set -uo pipefail
E=$OUT/k; mkdir -p $E; trap 'cd $OUT && tar czf k.tgz k && rm -rf k' EXIT
C=.device-carry/s25k; B=/tmp/kt-bin; mkdir -p $B && tar xJf $C/bin.tar.xz -C $B
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat $C/COMMIT)"
for t in lib_kt_kernels moe_repacked_moe moe_api moe_correctness moe_no_alloc moe_repacked_no_alloc; do
  timeout 120 $B/tests/$t > $E/test_$t.txt 2>&1; log "test $t rc $? $(grep 'test result' $E/test_$t.txt | tail -1)"
done
for t in hybrid_forward hybrid_graph; do
  KT_REQUIRE_GPU=1 timeout 150 $B/tests/$t > $E/test_$t.txt 2>&1; log "test $t rc $? $(grep 'test result' $E/test_$t.txt | tail -1)"
done
log done
