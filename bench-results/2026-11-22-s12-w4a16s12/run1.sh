#!/usr/bin/env bash
# w4a16s12 device call 1: cuda_w4a16 tests of the new build under four settings (KT_REQUIRE_GPU=1),
# main's timing example (base, 54a8a0b) and the new one under six settings interleaved x3 at 1, 8, 9,
# 12, 16 tokens, torch fp16 once, memcheck of the gemv tests with the multicast form at every m and
# with 8-slice clusters. Each step only if it can end before BUDGET s. Results: $OUT/w4a16s12.tar.gz.
set -uo pipefail
d=$(cd "$(dirname "$0")" && pwd)
b=/tmp/w4s12-bin; mkdir -p "$b"; tar xJf "$d/bins.tar.xz" -C "$b"
r=/tmp/w4s12-results; mkdir -p "$r"
trap 'cd "$r" && python3 "$d/summary.py" > summary.txt 2>&1; tar czf "$OUT/w4a16s12.tar.gz" -C "$r" .; cat "$r/summary.txt"' EXIT
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
KT_W4A16_MC=2 KT_W4A16_MC_ROWS=1 step tests_mc2all 40 "$b/tests_new" --test-threads=8
KT_W4A16_MC=4 KT_W4A16_MC_ROWS=1 KT_W4A16_CLUSTER=0 step tests_mc4all_nocl 40 "$b/tests_new" --test-threads=8
KT_W4A16_CLUSTER_MAX=8 KT_W4A16_MC=4 KT_W4A16_MC_ROWS=2 step tests_cl8 40 "$b/tests_new" --test-threads=8
# A variant whose tests timed out (a hang) is not timed.
mc=1; cl=1
grep -q "exit 124" "$r/tests_default.txt" "$r/tests_mc2all.txt" "$r/tests_mc4all_nocl.txt" && mc=0
grep -q "exit 124" "$r/tests_cl8.txt" && cl=0
echo "mc=$mc cl=$cl" > "$r/variants.txt"
export KT_W4A16_TOKENS=1,8,9,12,16
for i in 1 2 3; do
  step kt_base$i 20 "$b/timing_base"
  KT_W4A16_MC=0 step kt_new0$i 20 "$b/timing_new"
  if [ $mc = 1 ]; then
    step kt_mc4$i 20 "$b/timing_new"
    KT_W4A16_MC=2 step kt_mc2$i 20 "$b/timing_new"
    KT_W4A16_MC_ROWS=2 step kt_mc4r2$i 20 "$b/timing_new"
  fi
  [ $cl = 0 ] || KT_W4A16_CLUSTER_MAX=8 KT_W4A16_MC=0 step kt_cl8$i 20 "$b/timing_new"
  [ $cl = 0 ] || [ $mc = 0 ] || KT_W4A16_CLUSTER_MAX=8 KT_W4A16_MC_ROWS=2 step kt_cl8mc$i 20 "$b/timing_new"
  [ $i -ne 1 ] || step torch 30 python3 cuda/bench_torch_matmul.py
done
unset KT_W4A16_TOKENS
san=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer 2>/dev/null | head -n 1)
if [ -n "$san" ]; then
  [ $mc = 0 ] || KT_W4A16_MC_ROWS=1 step memcheck_mc4 40 "$san" --tool memcheck --error-exitcode 9 "$b/tests_new" --test-threads=1 gemv
  [ $cl = 0 ] || KT_W4A16_CLUSTER_MAX=8 step memcheck_cl8 40 "$san" --tool memcheck --error-exitcode 9 "$b/tests_new" --test-threads=1 gemv
fi
echo "total ${SECONDS}s"
