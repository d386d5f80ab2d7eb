#!/usr/bin/env bash
# Session 27 call H (COMMIT: the second review pass): the hybrid executor's GPU tests.
set -uo pipefail
E=$OUT/h; mkdir -p $E; trap "cd $OUT && tar czf h.tgz h && rm -rf h" EXIT
C=.device-carry/s27h; B=/tmp/kt-bin; mkdir -p $B && tar xJf $C/bin.tar.xz -C $B
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(nvidia-smi -L | head -1); $(cat $C/COMMIT)"
for t in hybrid_forward hybrid_graph hybrid_prefill hybrid_pipeline; do
  KT_REQUIRE_GPU=1 timeout 200 $B/$t > $E/test_$t.txt 2>&1; log "test $t rc $? $(grep 'test result' $E/test_$t.txt | tail -1)"
done
