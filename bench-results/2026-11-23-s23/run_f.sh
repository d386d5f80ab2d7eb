#!/usr/bin/env bash
# Session 23 call F: the final code's GPU, hybrid and MoE test binaries on the device (--features cuda, built at
# COMMIT, KT_REQUIRE_GPU=1), as session 19's call F ran them.
set -uo pipefail
E=$OUT/f; mkdir -p $E/tests; trap 'cd $OUT && tar czf f.tgz f && rm -rf f' EXIT
T=/tmp/s23t; mkdir -p $T && tar xJf .device-carry/s23tests/bin.tar.xz -C $T
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s23tests/COMMIT)"
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures KT_REQUIRE_GPU=1
for n in $(cd $T/tests && ls | grep -E '^(cuda_|hybrid_|moe_|matmul_|cpu_|lib_kt_kernels$)'); do
  timeout 150 $T/tests/$n --test-threads 16 > $E/tests/$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/tests/$n.txt | tail -1)"; done
grep -h -E "FAILED|panicked" $E/tests/*.txt | head -20
log done
