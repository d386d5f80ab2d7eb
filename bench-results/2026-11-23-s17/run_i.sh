#!/usr/bin/env bash
# Session 17 call I (main at COMMIT = s17i): moe_correctness with its new Q3_K / small-block mixes on AMX, cpu_amx_gemm.
set -uo pipefail
E=$OUT/i; mkdir -p $E/tests; trap 'cd $OUT && tar czf i.tgz i && rm -rf i' EXIT
B=/tmp/kt; mkdir -p $B && tar xJf .device-carry/s17i/bin.tar.xz -C $B
echo "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s17i/COMMIT)" | tee $E/summary.txt
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures
for n in moe_correctness cpu_amx_gemm; do
  timeout 120 $B/tests/$n --test-threads 16 --nocapture > $E/tests/$n.txt 2>&1; echo "test $n rc $? $(grep -E '^test result' $E/tests/$n.txt | tail -1)" | tee -a $E/summary.txt; done
grep -h "amx Spec.*Q3_K\|amx Spec.*Q4_0" $E/tests/moe_correctness.txt | head -12
