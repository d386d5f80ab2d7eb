#!/usr/bin/env bash
# w4a16s10 device call 1: tests of the new kernels (default = per-warp x staging at 9-16 rows and
# 4 k-ways, no L2 prefetch; KT_W4A16_XSW=0 = block-staged x as in base; KT_W4A16_CLUSTER=0 = global
# partials; =8 = clusters of up to 8 slices; KT_W4A16_PREFETCH=4), cuda_moe_experts; then main's
# timing example (base, 7d522c4) and the new one interleaved x3 at 1, 8, 16 tokens: new = defaults,
# xs = KT_W4A16_XSW=0, pf2 / pf4 = KT_W4A16_PREFETCH=2 / 4; base / new / xs once at 9, 12; pf16
# (every group of a warp asked of L2 at its start) and cl8 (plan sweep with clusters of up to 8)
# once at 1, 16; torch once; memcheck and racecheck of the small-m tests. Steps run only if they
# can end before BUDGET seconds; results land in $r as they come and are tarred into $OUT at exit.
set -uo pipefail
d=$(cd "$(dirname "$0")" && pwd)
b=/tmp/w4a16s10-bin; mkdir -p "$b"; tar xJf "$d/bins.tar.xz" -C "$b"
r=/tmp/w4a16s10-results; mkdir -p "$r"
trap 'tar czf "$OUT/w4a16s10.tar.gz" -C "$r" .' EXIT
export KT_REQUIRE_GPU=1 PYTHONUNBUFFERED=1
budget=${BUDGET:-235}
step() { # name timeout command...
  local name=$1 t=$2; shift 2
  if (( SECONDS + t > budget )); then echo "skipped (at ${SECONDS}s)" > "$r/$name.txt"; return; fi
  local s0=$SECONDS
  timeout "$t" "$@" > "$r/$name.txt" 2>&1
  echo "exit $? after $((SECONDS - s0))s" >> "$r/$name.txt"
}
nvidia-smi > "$r/nvidia-smi.txt" 2>&1
step tests_new 30 "$b/tests_new" --test-threads=8
KT_W4A16_XSW=0 step tests_xs 30 "$b/tests_new" --test-threads=8
KT_W4A16_CLUSTER=0 step tests_nocl 30 "$b/tests_new" --test-threads=8
KT_W4A16_CLUSTER=8 step tests_cl8 30 "$b/tests_new" --test-threads=8
KT_W4A16_PREFETCH=4 step tests_pf4 30 "$b/tests_new" --test-threads=8
step moe_new 20 "$b/moe_new"
KT_W4A16_PREFETCH=4 step moe_pf4 20 "$b/moe_new"
export KT_W4A16_TOKENS=1,8,16
for i in 1 2 3; do
  step kt_base$i 15 "$b/timing_base"
  step kt_new$i 15 "$b/timing_new"
  KT_W4A16_XSW=0 step kt_xs$i 15 "$b/timing_new"
  KT_W4A16_PREFETCH=2 step kt_pf2$i 15 "$b/timing_new"
  KT_W4A16_PREFETCH=4 step kt_pf4$i 15 "$b/timing_new"
done
export KT_W4A16_TOKENS=9,12
step kt_base9 12 "$b/timing_base"
step kt_new9 12 "$b/timing_new"
KT_W4A16_XSW=0 step kt_xs9 12 "$b/timing_new"
export KT_W4A16_TOKENS=1,16
KT_W4A16_PREFETCH=16 step kt_pf16 12 "$b/timing_new"
KT_W4A16_CLUSTER=8 step kt_cl8 12 "$b/timing_new"
unset KT_W4A16_TOKENS
step torch 25 python3 "$d/bench_torch_matmul.py"
san=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer 2>/dev/null | head -n 1)
if [ -n "$san" ]; then
  step memcheck 30 "$san" --tool memcheck --error-exitcode 9 "$b/tests_new" --test-threads=1 gemv
  step racecheck 25 "$san" --tool racecheck --error-exitcode 9 "$b/tests_new" --test-threads=1 w4a16_gemv_f16
fi
cd "$r"
grep -H "test result" tests_*.txt moe_*.txt | cut -c1-90; grep -hE "FAILED|panicked" tests_*.txt moe_*.txt | head -5
python3 "$d/summary.py" base new xs pf2 pf4 | grep -E "^hot "
grep -E "hot .* m=(1|16) " torch.txt | sed -E 's/ weight_GB.*//; s/ n=[0-9]+ k=[0-9]+//; s/TORCH_FP16 hot //' | tr '\n' ' '; echo
grep -hE "ERROR SUMMARY|RACECHECK SUMMARY|^exit|skipped" memcheck*.txt racecheck.txt 2>/dev/null | tail -6
