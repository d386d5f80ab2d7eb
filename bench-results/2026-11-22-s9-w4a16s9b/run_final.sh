#!/usr/bin/env bash
# w4a16s9b, for a later device call (not run in session 9): the final code's tests (default and
# KT_W4A16_CLUSTER=0), cuda_moe_experts, memcheck of the small-m tests, then main's timing example
# (base, 7f31f89) and the final one interleaved x3 at 9, 12, 16 tokens and once at 1; torch once.
# bins_final.tar.xz holds timing_base, timing_final, tests_final, moe_final. ~120 s.
set -uo pipefail
d=$(cd "$(dirname "$0")" && pwd)
b=/tmp/w4a16s9b-final; mkdir -p "$b"; tar xJf "$d/bins_final.tar.xz" -C "$b"
r=/tmp/w4a16s9b-final-results; mkdir -p "$r"
trap 'tar czf "$OUT/w4a16s9b-final.tar.gz" -C "$r" .' EXIT
export KT_REQUIRE_GPU=1 PYTHONUNBUFFERED=1
budget=${BUDGET:-185}
step() { # name timeout command...
  local name=$1 t=$2; shift 2
  if (( SECONDS + t > budget )); then echo "skipped (at ${SECONDS}s)" > "$r/$name.txt"; return; fi
  local s0=$SECONDS
  timeout "$t" "$@" > "$r/$name.txt" 2>&1
  echo "exit $? after $((SECONDS - s0))s" >> "$r/$name.txt"
}
nvidia-smi > "$r/nvidia-smi.txt" 2>&1
step tests_final 30 "$b/tests_final" --test-threads=8
KT_W4A16_CLUSTER=0 step tests_nocl 30 "$b/tests_final" --test-threads=8
step moe_final 20 "$b/moe_final"
export KT_W4A16_TOKENS=9,12,16
for i in 1 2 3; do
  step kt_base$i 15 "$b/timing_base"
  step kt_final$i 15 "$b/timing_final"
done
KT_W4A16_TOKENS=1 step kt_base_m1 10 "$b/timing_base"
KT_W4A16_TOKENS=1 step kt_final_m1 10 "$b/timing_final"
unset KT_W4A16_TOKENS
step torch 25 python3 "$d/bench_torch_matmul.py"
san=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer 2>/dev/null | head -n 1)
[ -n "$san" ] && step memcheck 30 "$san" --tool memcheck --error-exitcode 9 "$b/tests_final" --test-threads=1 gemv
cd "$r"
grep -H "test result" tests_*.txt moe_final.txt | cut -c1-90; grep -hE "FAILED|panicked" tests_*.txt moe_*.txt | head -5
python3 "$d/summary.py" base final base_m final_m | grep -E "^(hot|graph) "
grep -hE "ERROR SUMMARY|^exit|skipped" memcheck.txt 2>/dev/null | tail -3
