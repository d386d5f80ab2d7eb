#!/usr/bin/env bash
# Session 32 call D: the int4 layout packed word by word on all cores (and the GPU linears'
# quantization without its error pass, bf16 rounding on all cores): the GPU tests that upload
# int4 weights (call E times the load).
set -uo pipefail
E=$OUT/d; mkdir -p $E; trap 'cd $OUT && tar czf d.tgz d && rm -rf d' EXIT
N=/tmp/kt-d; mkdir -p $N; tar xJf .device-carry/s32d/tests.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s32d/COMMIT)"
export KT_REQUIRE_GPU=1
for t in cuda_w4a16 cuda_moe_experts hybrid_graph hybrid_forward; do
  timeout 150 $N/$t --test-threads 2 > $E/test_$t.log 2>&1; log "test $t rc $? $(grep -o 'test result.*' $E/test_$t.log)"
done
unset KT_REQUIRE_GPU
log done
