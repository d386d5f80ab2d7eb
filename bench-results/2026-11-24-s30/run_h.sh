#!/usr/bin/env bash
# Session 30 call H: the review's mend (5f59d47: the rope entries' shared check, the LoRA rank
# from its norm, the rope's past-table path) on the device: cuda_linear, cuda_mla, hybrid_graph,
# hybrid_forward.
set -uo pipefail
E=$OUT/h; mkdir -p $E; trap "cd $OUT && tar czf h.tgz h && rm -rf h" EXIT
N=/tmp/kt-h; mkdir -p $N; tar xJf .device-carry/s30h/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(nvidia-smi -L | head -1); $(cat .device-carry/s30h/COMMIT)"
export KT_REQUIRE_GPU=1
for t in cuda_linear cuda_mla hybrid_graph hybrid_forward; do
  timeout 150 $N/$t --test-threads 2 > $E/test_$t.log 2>&1; log "test $t rc $? $(grep -o 'test result.*' $E/test_$t.log)"
done
log done
