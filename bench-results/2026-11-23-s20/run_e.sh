#!/usr/bin/env bash
# Session 20 call E: the final code (s20e = main 1ff0d99, PairFormat::pair_n required): its CPU / AVX512 / AMX / MoE
# test binaries, then one GEMM pass at 1-4 tokens and one MoE layer at 128 tokens as a smoke check.
set -uo pipefail
E=$OUT/e; mkdir -p $E; trap 'cd $OUT && tar czf e.tgz e && rm -rf e' EXIT
B=/tmp/kt; mkdir -p $B && tar xJf .device-carry/s20e/bin.tar.xz -C $B
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s20e/COMMIT)"
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures
for n in $(ls $B/tests); do
  timeout 150 $B/tests/$n --test-threads 16 > $E/test_$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/test_$n.txt | tail -1)"; done
grep -h -E "FAILED|panicked" $E/test_*.txt | head -20
timeout 120 $B/kt-bench matmul --threads 16 --formats q4_k,q6_k --shapes 2048x7168 --tokens 1,2,3,4 --seconds 0.3 > $E/mm.txt 2>&1
log "matmul rc $?"
timeout 60 $B/kt-bench moe --shape deepseek-v3 --format q4_k --down-format q6_k --tokens 128 --threads 16 --seconds 3 --json > $E/moe.json 2> $E/moe.err
log "moe rc $? $(grep -o '"ms_per_call":[0-9.]*' $E/moe.json)"
log done
