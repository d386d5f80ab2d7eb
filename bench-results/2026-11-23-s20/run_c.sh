#!/usr/bin/env bash
# Session 20 call C. s20c = main 834056e (few-token row pairs for the K-quants at 2-4 tokens, K slices shrinking with
# the tokens): its CPU tests. s20xc = the same + a knob (x20c): X 1 = the session start's few-token tiles (7b603e3:
# Q4_K row pairs at 2-3 tokens, everything else on the column layout, one K slice). MoE layers at 512 (where call A
# and B read the Q6_K-down layer 4-5% slower in two of three rounds) and 256 tokens, variants taking turns call by call.
set -uo pipefail
E=$OUT/c; mkdir -p $E; trap 'cd $OUT && tar czf c.tgz c && rm -rf c' EXIT
B=/tmp/kt; X=/tmp/ktx; mkdir -p $B $X && tar xJf .device-carry/s20c/bin.tar.xz -C $B && tar xJf .device-carry/s20xc/bin.tar.xz -C $X
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s20c/COMMIT) $(cat .device-carry/s20xc/COMMIT)"
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures
for n in $(ls $B/tests); do
  timeout 150 $B/tests/$n --test-threads 16 > $E/test_$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/test_$n.txt | tail -1)"; done
grep -h -E "FAILED|panicked" $E/test_*.txt | head -20
moe() { # name, args...
  local n=$1; shift
  KT_X_AB=0,1 timeout 80 $X/kt-bench moe "$@" --threads 16 --json > $E/$n.json 2> $E/$n.err
  log "$n rc $? $(grep x_variant $E/$n.err | tr '\n' ' ')"
}
for r in 1 2 3; do
  moe v3q6down_512_$r --shape deepseek-v3 --format q4_k --down-format q6_k --tokens 512 --seconds 4 --calls 10
  moe v3q4k_512_$r --shape deepseek-v3 --format q4_k --tokens 512 --seconds 4 --calls 10
done
moe v3q6down_256 --shape deepseek-v3 --format q4_k --down-format q6_k --tokens 256 --seconds 4 --calls 10
moe v3q5k_512 --shape deepseek-v3 --format q5_k --tokens 512 --seconds 4 --calls 10
moe v3q2k_512 --shape deepseek-v3 --format q2_k --tokens 512 --seconds 4 --calls 10
moe v3q6down_128 --shape deepseek-v3 --format q4_k --down-format q6_k --tokens 128 --seconds 3 --calls 10
moe v2l_512 --shape deepseek-v2-lite --format q4_k --tokens 512 --seconds 2 --calls 20
log done
