#!/usr/bin/env bash
# Session 29 call J: call I's V3-shape hybrid test against the CPU reference again, its near-tie
# check now also at the level of group scores (V3's group-limited routing: GroupGate), with the
# V2-Lite bf16 test beside it (hybrid_forward's tests named hybrid_bf16*).
set -uo pipefail
E=$OUT/j; mkdir -p $E; trap "cd $OUT && tar czf j.tgz j && rm -rf j" EXIT
N=/tmp/kt-new; mkdir -p $N; tar xJf .device-carry/s29i/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s29i/COMMIT)"
export KT_REQUIRE_GPU=1
timeout 420 $N/hybrid_forward --test-threads 1 --nocapture hybrid_bf16 > $E/test_hybrid_forward.log 2>&1
log "test hybrid_forward rc $? $(grep -o 'test result.*' $E/test_hybrid_forward.log) $(grep 'hybrid bf16 V3: worst\|hybrid bf16 V3: prefill: worst\|panicked' $E/test_hybrid_forward.log | tr '\n' ' ')"
log done
