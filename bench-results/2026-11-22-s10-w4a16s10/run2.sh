#!/usr/bin/env bash
# w4a16s10 device call 2: tests of the new kernels (default = 9-16 rows at 4 k-ways: per-warp x
# staging, the first two weight groups requested at once (W1), k-ways summed in parallel (PR);
# 1-8 rows at 4 k-ways: PR and groups 2-3 requested at the start (EA)), with KT_W4A16_CLUSTER=0
# (global partials), KT_W4A16_XSW=0 KT_W4A16_RED=0 (the base kernels in the new binary), XSW=1
# (per-warp x alone), XSW=2 (W1 without PR), EARLY=0 (1-8 rows: PR alone); cuda_moe_experts;
# then main's timing example (base, 7d522c4) and the new one interleaved x3 at 1, 8, 16 tokens:
# new = defaults, w1 = XSW=2, noea = EARLY=0, nored = RED=0 (1-8 rows as base), xs = XSW=0
# RED=0; base / new / w (XSW=1) once at 9, 12; torch once; memcheck (default and CLUSTER=0) and
# racecheck of the small-m tests. Steps run only if they can end before BUDGET
# seconds; results land in $r as they come and are tarred into $OUT at exit.
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
KT_W4A16_CLUSTER=0 step tests_nocl 30 "$b/tests_new" --test-threads=8
KT_W4A16_XSW=0 KT_W4A16_RED=0 step tests_xs 30 "$b/tests_new" --test-threads=8
KT_W4A16_XSW=1 step tests_w 30 "$b/tests_new" --test-threads=8 gemv
KT_W4A16_XSW=2 step tests_w1 30 "$b/tests_new" --test-threads=8 gemv
KT_W4A16_EARLY=0 step tests_noea 30 "$b/tests_new" --test-threads=8 gemv
step moe_new 20 "$b/moe_new"
export KT_W4A16_TOKENS=1,8,16
for i in 1 2 3; do
  step kt_base$i 15 "$b/timing_base"
  step kt_new$i 15 "$b/timing_new"
  KT_W4A16_XSW=2 step kt_w1$i 15 "$b/timing_new"
  KT_W4A16_EARLY=0 step kt_noea$i 15 "$b/timing_new"
  KT_W4A16_RED=0 step kt_nored$i 15 "$b/timing_new"
  KT_W4A16_XSW=0 KT_W4A16_RED=0 step kt_xs$i 15 "$b/timing_new"
done
export KT_W4A16_TOKENS=9,12
step kt_base9 12 "$b/timing_base"
step kt_new9 12 "$b/timing_new"
KT_W4A16_XSW=1 step kt_w9 12 "$b/timing_new"
unset KT_W4A16_TOKENS
step torch 25 python3 "$d/bench_torch_matmul.py"
san=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer 2>/dev/null | head -n 1)
if [ -n "$san" ]; then
  step memcheck 30 "$san" --tool memcheck --error-exitcode 9 "$b/tests_new" --test-threads=1 gemv
  KT_W4A16_CLUSTER=0 step memcheck_nocl 30 "$san" --tool memcheck --error-exitcode 9 "$b/tests_new" --test-threads=1 gemv
  step racecheck 30 "$san" --tool racecheck --error-exitcode 9 "$b/tests_new" --test-threads=1 w4a16_gemv_f16
fi
cd "$r"
grep -H "test result" tests_*.txt moe_*.txt | cut -c1-90; grep -hE "FAILED|panicked" tests_*.txt moe_*.txt | head -5
python3 "$d/summary.py" base new w1 noea nored xs w | grep -E "^(hot|graph) "
grep -E "hot .* m=(1|8|16) " torch.txt | sed -E 's/ weight_GB.*//; s/ n=[0-9]+ k=[0-9]+//; s/TORCH_FP16 hot //' | tr '\n' ' '; echo
grep -hE "ERROR SUMMARY|RACECHECK SUMMARY|^exit|skipped" memcheck*.txt racecheck.txt 2>/dev/null | tail -6
