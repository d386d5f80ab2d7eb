#!/usr/bin/env bash
# Session 29 call I: the new V3-shape hybrid test against the CPU reference (hybrid_forward's
# hybrid_bf16_v3_shape_matches_cpu_forward, 4 layers, every GPU module in bf16) and the rest of
# hybrid_forward / hybrid_graph, on the device.
set -uo pipefail
E=$OUT/i; mkdir -p $E; trap "cd $OUT && tar czf i.tgz i && rm -rf i" EXIT
N=/tmp/kt-new; mkdir -p $N; tar xJf .device-carry/s29i/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s29i/COMMIT)"
export KT_REQUIRE_GPU=1
timeout 420 $N/hybrid_forward --test-threads 1 --nocapture > $E/test_hybrid_forward.log 2>&1
log "test hybrid_forward rc $? $(grep -o 'test result.*' $E/test_hybrid_forward.log) $(grep 'hybrid bf16 V3: worst\|hybrid bf16 V3: prefill: worst\|panicked' $E/test_hybrid_forward.log | tr '\n' ' ')"
[ $((SECONDS-t0)) -lt 450 ] && { timeout 120 $N/hybrid_graph --test-threads 2 > $E/test_hybrid_graph.log 2>&1
  log "test hybrid_graph rc $? $(grep -o 'test result.*' $E/test_hybrid_graph.log)"; }
log done
