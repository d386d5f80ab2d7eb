#!/usr/bin/env bash
# w4a16s12 device call 2: cuda_w4a16 tests of the new build (KT_REQUIRE_GPU=1) with the L1 prefetch
# limit at its default (4 groups per warp), off (KT_W4A16_PF=0) and on everywhere (64); main's timing
# example (base, 54a8a0b) and the new one at KT_W4A16_PF = 0, 2, 3, 4 (default), 64 interleaved x3 at
# 1, 8, 9, 12, 16 tokens, torch fp16 once, memcheck of the gemv tests (PF=64). Each step only if it
# can end before BUDGET s. Results: $OUT/w4a16s12.tar.gz.
set -uo pipefail
d=$(cd "$(dirname "$0")" && pwd)
b=/tmp/w4s12-bin; mkdir -p "$b"; tar xJf "$d/bins.tar.xz" -C "$b"
r=/tmp/w4s12-results; mkdir -p "$r"
trap 'cd "$r" && python3 "$d/summary.py" > summary.txt 2>&1; tar czf "$OUT/w4a16s12.tar.gz" -C "$r" .; head -c 11000 "$r/summary.txt"' EXIT
export KT_REQUIRE_GPU=1 PYTHONUNBUFFERED=1 KT_TEST_FIXTURES=kt-kernels/tests/fixtures
budget=${BUDGET:-250}
step() { # name timeout command...
  local name=$1 t=$2; shift 2
  if (( SECONDS + t > budget )); then echo "skipped (at ${SECONDS}s)" > "$r/$name.txt"; return; fi
  local s0=$SECONDS
  timeout "$t" "$@" > "$r/$name.txt" 2>&1
  echo "exit $? after $((SECONDS - s0))s" >> "$r/$name.txt"
}
nvidia-smi > "$r/nvidia-smi.txt" 2>&1
step tests_default 40 "$b/tests_new" --test-threads=8
KT_W4A16_PF=0 step tests_pf0 40 "$b/tests_new" --test-threads=8
KT_W4A16_PF=64 step tests_pf64 40 "$b/tests_new" --test-threads=8
KT_W4A16_PF=64 KT_W4A16_CLUSTER=0 step tests_pf64_nocl 40 "$b/tests_new" --test-threads=8
export KT_W4A16_TOKENS=1,8,9,12,16
for i in 1 2 3; do
  step kt_base$i 20 "$b/timing_base"
  KT_W4A16_PF=0 step kt_pf0$i 20 "$b/timing_new"
  KT_W4A16_PF=2 step kt_pf2$i 20 "$b/timing_new"
  KT_W4A16_PF=3 step kt_pf3$i 20 "$b/timing_new"
  step kt_pf4$i 20 "$b/timing_new"
  KT_W4A16_PF=64 step kt_pf64$i 20 "$b/timing_new"
  [ $i -ne 1 ] || step torch 30 python3 cuda/bench_torch_matmul.py
done
unset KT_W4A16_TOKENS
san=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer 2>/dev/null | head -n 1)
if [ -n "$san" ]; then
  KT_W4A16_PF=64 step memcheck_pf64 40 "$san" --tool memcheck --error-exitcode 9 "$b/tests_new" --test-threads=1 gemv
  step racecheck 40 "$san" --tool racecheck --error-exitcode 9 "$b/tests_new" --test-threads=1 w4a16_gemv_f16
fi
echo "total ${SECONDS}s"
