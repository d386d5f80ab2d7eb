#!/usr/bin/env bash
# Session 20 call A. s20a = main 9af0d0b (Q2_K/Q3_K/Q5_K/Q6_K few-token row-pair tiles): its CPU tests. s20x = the same
# + a knob (x20): X_KNOB 1 sends the 2-3-token tiles of those formats (not Q4_K's) back to the column layout (the code
# before); the variants take turns call by call in one process (KT_X_AB=0,1). GEMMs at 2 and 3 tokens (16 and 1
# threads), then MoE layers whose few-position items hit those formats.
set -uo pipefail
E=$OUT/a; mkdir -p $E; trap 'cd $OUT && tar czf a.tgz a && rm -rf a' EXIT
B=/tmp/kt; X=/tmp/ktx; mkdir -p $B $X && tar xJf .device-carry/s20a/bin.tar.xz -C $B && tar xJf .device-carry/s20x/bin.tar.xz -C $X
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s20a/COMMIT) $(cat .device-carry/s20x/COMMIT)"
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures
for n in $(ls $B/tests); do
  timeout 150 $B/tests/$n --test-threads 16 > $E/test_$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/test_$n.txt | tail -1)"; done
grep -h -E "FAILED|panicked" $E/test_*.txt | head -20
for th in 16 1; do
  KT_X_AB=0,1 timeout 150 $X/kt-bench matmul --threads $th --formats q5_k,q6_k,q2_k,q3_k --shapes 2048x7168,7168x2048,1408x2048 --tokens 2,3 --seconds 0.3 >> $E/mm_t$th.txt 2>&1
  log "matmul threads $th rc $?"
done
moe() { # name, args...
  local n=$1; shift
  KT_X_AB=0,1 timeout 80 $X/kt-bench moe "$@" --threads 16 --json > $E/$n.json 2> $E/$n.err
  log "$n rc $? $(grep x_variant $E/$n.err | tr '\n' ' ')"
}
for r in 1 2; do
  moe v3q6down_128_$r --shape deepseek-v3 --format q4_k --down-format q6_k --tokens 128 --seconds 3 --calls 10
  moe v3q6down_512_$r --shape deepseek-v3 --format q4_k --down-format q6_k --tokens 512 --seconds 4 --calls 10
done
moe v3q2k_128 --shape deepseek-v3 --format q2_k --tokens 128 --seconds 3 --calls 10
moe v3q5k_128 --shape deepseek-v3 --format q5_k --tokens 128 --seconds 3 --calls 10
moe v3q3k_128 --shape deepseek-v3 --format q3_k --tokens 128 --seconds 3 --calls 10
moe v2lq5k_128 --shape deepseek-v2-lite --format q5_k --tokens 128 --seconds 2 --calls 20
moe v3q6down_32 --shape deepseek-v3 --format q4_k --down-format q6_k --tokens 32 --seconds 2 --calls 20
log done
