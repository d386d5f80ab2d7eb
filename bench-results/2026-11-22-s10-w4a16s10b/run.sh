#!/usr/bin/env bash
# w4a16s10b device call (one): cuda_w4a16 tests of the new kernels (KT_REQUIRE_GPU=1, default and
# KT_W4A16_CLUSTER=0), main's timing example (base, 246c00c) and the new one interleaved x5 at 9, 12,
# 16 tokens, torch fp16 once (the same token counts), compute-sanitizer memcheck (default and CLUSTER=0) and racecheck of
# the small-m (gemv) tests. Steps run only if they can end before BUDGET seconds; results land
# in $r as they come and are tarred into $OUT at exit.
set -uo pipefail
d=$(cd "$(dirname "$0")" && pwd)
b=/tmp/w4a16s10b-bin; mkdir -p "$b"; tar xJf "$d/bins.tar.xz" -C "$b"
r=/tmp/w4a16s10b-results; mkdir -p "$r"
trap 'tar czf "$OUT/w4a16s10b.tar.gz" -C "$r" .' EXIT
export KT_REQUIRE_GPU=1 PYTHONUNBUFFERED=1
budget=${BUDGET:-145}
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
export KT_W4A16_TOKENS=9,12,16
for i in 1 2 3 4 5; do
  step kt_base$i 12 "$b/timing_base"
  step kt_new$i 12 "$b/timing_new"
done
step torch 25 python3 cuda/bench_torch_matmul.py
unset KT_W4A16_TOKENS
san=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer 2>/dev/null | head -n 1)
if [ -n "$san" ]; then
  step memcheck 20 "$san" --tool memcheck --error-exitcode 9 "$b/tests_new" --test-threads=1 gemv
  KT_W4A16_CLUSTER=0 step memcheck_nocl 20 "$san" --tool memcheck --error-exitcode 9 "$b/tests_new" --test-threads=1 gemv
  step racecheck 25 "$san" --tool racecheck --error-exitcode 9 "$b/tests_new" --test-threads=1 w4a16_gemv_f16
fi
cd "$r"
grep -H "test result" tests_*.txt | cut -c1-90; grep -hE "FAILED|panicked" tests_*.txt | head -5
python3 "$d/summary.py" base new | grep -E "^(hot|graph|seq) "
grep -E "hot .* m=(9|12|16) " torch.txt | sed -E 's/ weight_GB.*//; s/ n=[0-9]+ k=[0-9]+//; s/TORCH_FP16 hot //' | tr '\n' ' '; echo
grep -hE "ERROR SUMMARY|RACECHECK SUMMARY|^exit|skipped" memcheck*.txt racecheck.txt 2>/dev/null | tail -6
