#!/usr/bin/env bash
# Session 15 call J (main at COMMIT): the CPU test binaries on the device (the AVX512 Q5_0 kernel, also under the
# AMX table), which call I's pack lacked, plus hybrid_graph.
set -uo pipefail
E=$OUT/j; mkdir -p $E/tests; trap 'cd $OUT && tar czf j.tgz j && rm -rf j' EXIT
B=/tmp/kt-bin; mkdir -p $B && tar xJf .device-carry/s15j/bin.tar.xz -C $B
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s15j/COMMIT)"
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures KT_REQUIRE_GPU=1
for n in cpu_avx512_kernels matmul_backends moe_correctness moe_api lib_kt_kernels cpu_amx_gemm quant_fixtures_small ops_fixtures hybrid_graph hybrid_forward; do
  timeout 60 $B/tests/$n --test-threads 16 > $E/tests/$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/tests/$n.txt | tail -1)"; done
log done
