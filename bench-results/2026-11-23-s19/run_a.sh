#!/usr/bin/env bash
# Session 19 call A (x19 experiment build): in one process per format, the AMX GEMM at 512 tokens with the
# variants of X_KNOB taking turns call by call (KT_X_AB): records prefetch (dist, L1/L2, first row block or all),
# full-K chunk over the call's records, BF16 loop order / A-row prefetch. Two rounds.
set -uo pipefail
E=$OUT/a; mkdir -p $E; trap 'cd $OUT && tar czf a.tgz a && rm -rf a' EXIT
B=/tmp/kt; mkdir -p $B && tar xJf .device-carry/s19a/bin.tar.xz -C $B
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s19a/COMMIT)"
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures
for n in $(ls $B/tests); do
  timeout 120 $B/tests/$n --test-threads 16 > $E/test_$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/test_$n.txt | tail -1)"; done
KQ=0,2,12,4,102,1000,1002
for round in 1 2; do
  for f in q8_0 q4_K q5_K; do
    S=2048x7168,1408x2048,7168x2048; [ $f = q8_0 ] && S=$S,2048x1408
    [ $((SECONDS-t0)) -gt 480 ] && continue
    KT_X_AB=$KQ timeout 100 $B/kt-bench matmul --threads 16 --formats $f --shapes $S --tokens 512 --seconds 0.4 >> $E/r$round.txt 2>&1
    log "round $round $f rc $?"
  done
  [ $((SECONDS-t0)) -gt 500 ] && continue
  KT_X_AB=0,10000,20000,30000 timeout 60 $B/kt-bench matmul --threads 16 --formats bf16 --shapes 2048x7168,1408x2048,7168x2048,2048x1408 --tokens 512 --seconds 0.4 >> $E/r$round.txt 2>&1
  log "round $round bf16 rc $?"
done
log done
