#!/usr/bin/env bash
# Session 19 call E (x19t = tails19 + knobs): the MoE tests of the merged tails, then V3 / V2-Lite Q4_K MoE at 512
# (and V3 at 1024) tokens with the variants taking turns call by call (KT_X_AB): 0 = tails of 1-6 positions in
# their blocks' items (new), 64 = as items of their own (before), 128 / 256 = tails up to 8 / 4 (merged), 512 = no
# tails (AMX for all). Three processes each.
set -uo pipefail
E=$OUT/e; mkdir -p $E; trap 'cd $OUT && tar czf e.tgz e && rm -rf e' EXIT
B=/tmp/kt; mkdir -p $B && tar xJf .device-carry/s19t/bin.tar.xz -C $B
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s19t/COMMIT)"
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures
for n in $(ls $B/tests); do
  timeout 150 $B/tests/$n --test-threads 16 > $E/test_$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/test_$n.txt | tail -1)"; done
grep -h -E "FAILED|panicked" $E/test_*.txt | head -20
for r in 1 2 3; do
  [ $((SECONDS-t0)) -gt 480 ] && continue
  KT_X_AB=0,64,128,256,512 timeout 80 $B/kt-bench moe --shape deepseek-v3 --format q4_k --tokens 512 --threads 16 --seconds 5 --calls 10 --json > $E/v3_$r.json 2> $E/v3_$r.err
  log "v3 512 round $r rc $? $(grep x_variant $E/v3_$r.err | tr '\n' ' ')"
done
for r in 1 2; do
  [ $((SECONDS-t0)) -gt 520 ] && continue
  KT_X_AB=0,64,512 timeout 60 $B/kt-bench moe --shape deepseek-v2-lite --format q4_k --tokens 512 --threads 16 --seconds 3 --calls 20 --json > $E/v2_$r.json 2> $E/v2_$r.err
  log "v2lite 512 round $r rc $? $(grep x_variant $E/v2_$r.err | tr '\n' ' ')"
done
[ $((SECONDS-t0)) -lt 530 ] && { KT_X_AB=0,64 timeout 60 $B/kt-bench moe --shape deepseek-v3 --format q4_k --tokens 1024 --threads 16 --seconds 4 --calls 6 --json > $E/v3k.json 2> $E/v3k.err
  log "v3 1024 rc $? $(grep x_variant $E/v3k.err | tr '\n' ' ')"; }
log done
