#!/usr/bin/env bash
# Session 22 call A (session 21's run_a.sh, plus kt-kernel at one token). s21xa = amxgemv-x: main + the AMX one-token Q4_K GEMV (amx/q4_k_gemv.rs) + a knob (x21a):
# X 0 = AMX GEMV (prefetch 2 steps ahead, L1); 1 = the AVX512 row-pair GEMV (main's); 2 / 4 / 6 = AMX with 1 / 4 / 3
# steps; +8 = prefetch into L2. Tests run with the knob at 0 (the AMX GEMV).
set -uo pipefail
E=$OUT/a; mkdir -p $E; trap 'cd $OUT && tar czf a.tgz a && rm -rf a' EXIT
X=/tmp/ktx; mkdir -p $X && tar xJf .device-carry/s21xa/bin.tar.xz -C $X
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s21xa/COMMIT); $(nproc) cpus"
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures
for n in cpu_amx_gemm lib_kt_kernels moe_q4k_amx moe_correctness matmul_backends cpu_avx512_kernels; do
  timeout 150 $X/tests/$n --test-threads 16 > $E/test_$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/test_$n.txt | tail -1)"; done
grep -h -E "FAILED|panicked" $E/test_*.txt | head -20
mm() { # name, knobs, args
  local n=$1 ab=$2; shift 2
  KT_X_AB=$ab timeout 150 $X/kt-bench matmul --formats q4_k --tokens 1 "$@" > $E/$n.txt 2>&1; log "$n rc $?"; }
mm mm_t16 0,1,2,4,8,12 --threads 16 --shapes 2048x7168,7168x2048,1408x2048,18432x7168 --seconds 0.3
mm mm_t16_res 0,1 --threads 16 --shapes 2048x7168,7168x2048 --seconds 0.3 --resident
mm mm_t1 0,1,4 --threads 1 --shapes 2048x7168,7168x2048 --seconds 0.3
mm mm_t1_res 0,1 --threads 1 --shapes 2048x7168,7168x2048 --seconds 0.3 --resident
moe() { # name, knob list, args...
  local n=$1 ab=$2; shift 2
  KT_X_AB=$ab timeout 90 $X/kt-bench moe "$@" --threads 16 --json > $E/$n.json 2> $E/$n.err
  log "$n rc $? $(grep x_variant $E/$n.err | tr '\n' ' ')"
}
for r in 1 2; do
  moe v3_t1_$r 0,1,4,8 --shape deepseek-v3 --format q4_k --tokens 1 --seconds 3
  moe v2l_t1_$r 0,1,4,8 --shape deepseek-v2-lite --format q4_k --tokens 1 --seconds 3
done
moe v3_t1_a 0,1 --shape deepseek-v3 --format q4_k --tokens 1 --seconds 4
left=$((560 - (SECONDS - t0)))
if [ $left -gt 90 ]; then mkdir -p /tmp/anch $E/ktk && tar xJf .device-carry/s22peers/ktk.tar.xz -C /tmp/anch
  timeout $left python3 .device-carry/s22peers/bench_moe.py --ktk-dir /tmp/anch/ktk --out-dir $E/ktk --threads 15 \
   --methods llamafile_q4k,amx_int4 --qlens 1 --extra-runs "" --min-time-s 1 --deadline-s $((left - 15)) --bw-gib 2 \
   > $E/ktk/stdout.txt 2> $E/ktk/stderr.txt; log "ktk rc $?"; tail -15 $E/ktk/stdout.txt
fi
log done
