#!/usr/bin/env bash
# Session 23 call C: the final code (s23final = 5e2e985: the AVX2 streams' one-row lead, the AVX512 GEMV without its
# L2 prefetch): the CPU test binaries (AMX included), issue 4's one-token rows beside kt-kernel 0.7.2 and issue 2's
# one-token GEMVs; then the AVX2 lead A/B on this machine in one process (s23xa, knob x23: KT_ISA=avx2, KT_X_AB 0 =
# two rows ahead (before), 2 = one row ahead (now), 1 = adjacent rows).
set -uo pipefail
E=$OUT/c; mkdir -p $E; trap 'cd $OUT && tar czf c.tgz c && rm -rf c' EXIT
X=/tmp/ktx; mkdir -p $X && tar xJf .device-carry/s23final/bin.tar.xz -C $X
XA=/tmp/ktxa; mkdir -p $XA && tar xJf .device-carry/s23xa/bin.tar.xz -C $XA
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s23final/COMMIT); $(nproc) cpus"
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures
for n in cpu_amx_gemm lib_kt_kernels moe_q4k_amx moe_correctness matmul_backends cpu_avx512_kernels cpu_avx2_kernels \
    moe_no_alloc matmul_no_alloc; do
  timeout 150 $X/tests/$n --test-threads 16 > $E/test_$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/test_$n.txt | tail -1)"; done
grep -h -E "FAILED|panicked" $E/test_*.txt | head -20
for r in 1 2; do
  for s in deepseek-v3 deepseek-v2-lite; do
    timeout 60 $X/kt-bench moe --shape $s --format q4_k --tokens 1 --threads 16 --seconds 3 --json > $E/moe_${s}_$r.json 2> $E/moe_${s}_$r.err
    log "moe $s $r rc $? $(python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print(j['ms_per_call'], j['weight_gbps'], j['dram_gbps'])" $E/moe_${s}_$r.json)"
  done
done
timeout 150 $X/kt-bench matmul --formats q4_k,q5_k,q6_k,q2_k,q8_0,bf16 --shapes 2048x7168,7168x2048,1408x2048,18432x7168 \
  --tokens 1 --threads 16 --seconds 0.3 > $E/mm_t16.txt 2>&1; log "mm t16 rc $?"
export KT_ISA=avx2
for r in 1 2; do
  for s in deepseek-v2-lite deepseek-v3; do
    KT_X_AB=0,2,1 timeout 60 $XA/kt-bench moe --shape $s --format q4_k --tokens 1 --threads 16 --seconds 3 > $E/avx2_moe_${s}_$r.txt 2>&1
    log "avx2 moe $s $r rc $? $(grep x_variant $E/avx2_moe_${s}_$r.txt | sort | tr '\n' ' ')"
  done
done
KT_X_AB=0,2,1 timeout 120 $XA/kt-bench matmul --formats q4_k,q5_0,q6_k --shapes 1408x2048,7168x2048,2048x7168 --tokens 1 \
  --threads 16 --seconds 0.3 > $E/avx2_mm_t16.txt 2>&1; log "avx2 mm t16 rc $?"
unset KT_ISA
left=$((560 - (SECONDS - t0)))
if [ $left -gt 90 ]; then mkdir -p /tmp/anch $E/ktk && tar xJf .device-carry/s23peers/ktk.tar.xz -C /tmp/anch
  timeout $left python3 .device-carry/s23peers/bench_moe.py --ktk-dir /tmp/anch/ktk --out-dir $E/ktk --threads 15 \
   --methods llamafile_q4k,amx_int4 --qlens 1 --extra-runs "" --min-time-s 1 --deadline-s $((left - 15)) --bw-gib 2 \
   > $E/ktk/stdout.txt 2> $E/ktk/stderr.txt; log "ktk rc $?"; tail -15 $E/ktk/stdout.txt
fi
log done
