#!/usr/bin/env bash
# Session 29 call L: hybrid_forward whole, its V3-shape test with the bound derived for its depth
# (2%: ~33 bf16 products on a row against V2-Lite's ~14) after call K's first row at 1.15%.
set -uo pipefail
E=$OUT/l; mkdir -p $E; trap "cd $OUT && tar czf l.tgz l && rm -rf l" EXIT
N=/tmp/kt-new; mkdir -p $N; tar xJf .device-carry/s29i/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s29i/COMMIT)"
export KT_REQUIRE_GPU=1
timeout 420 $N/hybrid_forward --test-threads 1 --nocapture > $E/test_hybrid_forward.log 2>&1
log "test hybrid_forward rc $? $(grep -o 'test result.*' $E/test_hybrid_forward.log) $(grep 'hybrid bf16 V3: worst\|hybrid bf16 V3: prefill: worst\|panicked' $E/test_hybrid_forward.log | tr '\n' ' ')"
log done
