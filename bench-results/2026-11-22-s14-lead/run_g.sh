#!/usr/bin/env bash
# Session 14 call G: the stream-constructor tidy (COMMIT) on the device: every GPU test binary once, hybrid_graph x5.
set -uo pipefail
E=$OUT/g; mkdir -p $E/tests; trap 'cd $OUT && tar czf g.tgz g && rm -rf g' EXIT
B=/tmp/kt-bin; mkdir -p $B && tar xJf .device-carry/s14g/bin.tar.xz -C $B
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(nvidia-smi -L | head -1); $(cat .device-carry/s14g/COMMIT)"
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures KT_REQUIRE_GPU=1
for t in $B/tests/*; do n=$(basename $t)
  timeout 120 $t > $E/tests/$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/tests/$n.txt | tail -1)"; done
for i in 1 2 3 4 5; do timeout 45 $B/tests/hybrid_graph > $E/tests/hybrid_graph_$i.txt 2>&1; log "hybrid_graph again $i rc $? $(grep -E '^test result' $E/tests/hybrid_graph_$i.txt | tail -1)"; done
