#!/usr/bin/env bash
# Session 20 call B. s20b = main 537265e (K slices that shrink with the tokens; Q2_K/Q3_K/Q5_K/Q6_K row pairs up to 4
# tokens): its CPU tests. s20xb = the same + a knob (x20b; Q4_K's MAX_TOKENS 4 in this build): X 0 = main; X 1 = the
# code before (4-token tiles on the column layout, one K slice of up to 32 super-blocks); X 2 = main + Q4_K's 4-token
# tiles on the row pairs. Variants take turns call by call in one process (KT_X_AB).
set -uo pipefail
E=$OUT/b; mkdir -p $E; trap 'cd $OUT && tar czf b.tgz b && rm -rf b' EXIT
B=/tmp/kt; X=/tmp/ktx; mkdir -p $B $X && tar xJf .device-carry/s20b/bin.tar.xz -C $B && tar xJf .device-carry/s20xb/bin.tar.xz -C $X
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s20b/COMMIT) $(cat .device-carry/s20xb/COMMIT)"
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures
for n in $(ls $B/tests); do
  timeout 150 $B/tests/$n --test-threads 16 > $E/test_$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/test_$n.txt | tail -1)"; done
grep -h -E "FAILED|panicked" $E/test_*.txt | head -20
KT_X_AB=0,1,2 timeout 200 $X/kt-bench matmul --threads 16 --formats q4_k,q5_k,q6_k,q2_k,q3_k --shapes 2048x7168,7168x2048,1408x2048 --tokens 3,4 --seconds 0.3 >> $E/mm_t16.txt 2>&1
log "matmul threads 16 rc $?"
KT_X_AB=0,1,2 timeout 150 $X/kt-bench matmul --threads 1 --formats q4_k,q5_k,q6_k,q2_k,q3_k --shapes 2048x7168,7168x2048 --tokens 4 --seconds 0.3 >> $E/mm_t1.txt 2>&1
log "matmul threads 1 rc $?"
moe() { # name, knob list, args...
  local n=$1 ab=$2; shift 2
  KT_X_AB=$ab timeout 80 $X/kt-bench moe "$@" --threads 16 --json > $E/$n.json 2> $E/$n.err
  log "$n rc $? $(grep x_variant $E/$n.err | tr '\n' ' ')"
}
for r in 1 2; do
  moe v3q6down_128_$r 0,1 --shape deepseek-v3 --format q4_k --down-format q6_k --tokens 128 --seconds 3 --calls 10
  moe v3q4k_128_$r 0,2 --shape deepseek-v3 --format q4_k --tokens 128 --seconds 3 --calls 10
done
moe v3q6down_512 0,1 --shape deepseek-v3 --format q4_k --down-format q6_k --tokens 512 --seconds 4 --calls 10
moe v3q4k_512 0,2 --shape deepseek-v3 --format q4_k --tokens 512 --seconds 4 --calls 10
moe v3q2k_128 0,1 --shape deepseek-v3 --format q2_k --tokens 128 --seconds 3 --calls 10
moe v3q5k_128 0,1 --shape deepseek-v3 --format q5_k --tokens 128 --seconds 3 --calls 10
moe v3q6down_64 0,1,2 --shape deepseek-v3 --format q4_k --down-format q6_k --tokens 64 --seconds 2 --calls 20
log done
