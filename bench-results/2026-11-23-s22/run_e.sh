#!/usr/bin/env bash
# Session 22 call E: the final code's CPU test binaries on the device (AVX2, AVX512 and AMX paths), and its
# one-token MoE at the default ISA and with KT_ISA=avx2.
set -uo pipefail
E=$OUT/e; mkdir -p $E; trap 'cd $OUT && tar czf e.tgz e && rm -rf e' EXIT
X=/tmp/ktx; mkdir -p $X && tar xJf .device-carry/s22f/bin.tar.xz -C $X
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s22f/COMMIT); $(nproc) cpus"
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures
for n in cpu_avx2_kernels cpu_avx512_kernels cpu_amx_gemm lib_kt_kernels matmul_backends moe_correctness moe_q4k_amx \
    moe_no_alloc matmul_no_alloc ggml_order_dots; do
  timeout 200 $X/tests/$n --test-threads 16 > $E/test_$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/test_$n.txt | tail -1)"
done
grep -h -E "FAILED|panicked" $E/test_*.txt | head -20
for isa in default avx2; do
  for s in deepseek-v2-lite deepseek-v3; do
    ( [ $isa = avx2 ] && export KT_ISA=avx2; timeout 60 $X/kt-bench moe --shape $s --format q4_k --tokens 1 --threads 16 \
      --seconds 2 --json > $E/moe_${isa}_$s.json 2> $E/moe_${isa}_$s.err )
    log "moe $isa $s $(grep -o '"ms_per_call":[0-9.]*\|"bandwidth_fraction":[0-9.]*\|"isa":"[a-z0-9]*"' $E/moe_${isa}_$s.json | tr '\n' ' ')"
  done
done
log done
