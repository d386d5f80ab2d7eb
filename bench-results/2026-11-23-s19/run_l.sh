#!/usr/bin/env bash
# Session 19 call L (x19f = main's few-token Q4_K row-pair tiles + a knob): X_KNOB 1 sends 2-3-token Q4_K tiles back
# to the column layout (the code before); variants taking turns call by call (KT_X_AB). Tests of the build first; then
# Q4_K GEMMs at 2 and 3 tokens (1 and 16 threads), the V3 Q4_K MoE at 512 and 128 tokens (three / two processes),
# V2-Lite Q4_K_M at 512.
set -uo pipefail
E=$OUT/l; mkdir -p $E; trap 'cd $OUT && tar czf l.tgz l && rm -rf l' EXIT
B=/tmp/kt; mkdir -p $B && tar xJf .device-carry/s19g/bin.tar.xz -C $B
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s19g/COMMIT)"
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures
for n in $(ls $B/tests); do
  timeout 150 $B/tests/$n --test-threads 16 > $E/test_$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/test_$n.txt | tail -1)"; done
grep -h -E "FAILED|panicked" $E/test_*.txt | head -20
for th in 16 1; do
  KT_X_AB=0,1 timeout 100 $B/kt-bench matmul --threads $th --formats q4_K --shapes 2048x7168,7168x2048 --tokens 2,3 --seconds 0.3 >> $E/mm_t$th.txt 2>&1
  log "matmul threads $th rc $?"
done
for r in 1 2 3; do
  KT_X_AB=0,1 timeout 80 $B/kt-bench moe --shape deepseek-v3 --format q4_k --tokens 512 --threads 16 --seconds 4 --calls 10 --json > $E/v3_$r.json 2> $E/v3_$r.err
  log "v3 512 round $r rc $? $(grep x_variant $E/v3_$r.err | tr '\n' ' ')"
done
for r in 1 2; do
  KT_X_AB=0,1 timeout 60 $B/kt-bench moe --shape deepseek-v3 --format q4_k --tokens 128 --threads 16 --seconds 3 --calls 10 --json > $E/v3_128_$r.json 2> $E/v3_128_$r.err
  log "v3 128 round $r rc $? $(grep x_variant $E/v3_128_$r.err | tr '\n' ' ')"
  KT_X_AB=0,1 timeout 60 $B/kt-bench moe --shape deepseek-v2-lite --format q4_k --tokens 512 --threads 16 --seconds 2 --calls 20 --json > $E/v2_$r.json 2> $E/v2_$r.err
  log "v2lite 512 round $r rc $? $(grep x_variant $E/v2_$r.err | tr '\n' ' ')"
done
log done
