#!/usr/bin/env bash
# Session 32 call G: b5d171a (the int4 error measured while quantizing, expert slabs packed into pinned memory, on top of fce25f9):
# the GPU tests whose weights go through the int4 quantization and pack (call F times the load).
set -uo pipefail
E=$OUT/g; mkdir -p $E; trap 'cd $OUT && tar czf g.tgz g && rm -rf g' EXIT
N=/tmp/kt-g; mkdir -p $N; tar xJf .device-carry/s32g/tests.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s32g/COMMIT)"
export KT_REQUIRE_GPU=1
for t in cuda_w4a16 cuda_moe_experts hybrid_prefill hybrid_graph; do
  timeout 150 $N/$t --test-threads 2 > $E/test_$t.log 2>&1; log "test $t rc $? $(grep -o 'test result.*' $E/test_$t.log)"
done
unset KT_REQUIRE_GPU
log done
