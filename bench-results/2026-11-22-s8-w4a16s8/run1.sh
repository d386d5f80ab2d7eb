#!/usr/bin/env bash
# w4a16s8 device call: cuda_w4a16 and cuda_moe_experts tests, compute-sanitizer memcheck on the
# small-m tests, then the timing example of main (timing_base, built at e0c5c5d) and of this
# branch (timing_new) interleaved twice, torch's fp16 matmul once. Each step has its own
# timeout and runs only if it can end before BUDGET seconds; results land in $r as they come
# and are tarred into $OUT at exit.
set -uo pipefail
d=$(cd "$(dirname "$0")" && pwd)
b=/tmp/w4a16s8-bin; mkdir -p "$b"; tar xJf "$d/bins.tar.xz" -C "$b"
r=/tmp/w4a16s8-results; mkdir -p "$r"
trap 'tar czf "$OUT/w4a16s8.tar.gz" -C "$r" .' EXIT
export KT_REQUIRE_GPU=1 PYTHONUNBUFFERED=1
budget=${BUDGET:-255}
step() { # name timeout command...
  local name=$1 t=$2; shift 2
  if (( SECONDS + t > budget )); then echo "skipped (at ${SECONDS}s)" > "$r/$name.txt"; return; fi
  local s0=$SECONDS
  timeout "$t" "$@" > "$r/$name.txt" 2>&1
  echo "exit $? after $((SECONDS - s0))s" >> "$r/$name.txt"
}
nvidia-smi > "$r/nvidia-smi.txt" 2>&1
step tests 60 "$b/cuda_w4a16" --test-threads=8
step tests_moe 40 "$b/cuda_moe_experts"
step kt_base1 35 "$b/timing_base"
step kt_new1 35 "$b/timing_new"
step torch 45 python3 "$d/bench_torch_matmul.py"
KT_W4A16_TOKENS=1,8,12,16 step kt_base2 25 "$b/timing_base"
KT_W4A16_TOKENS=1,8,12,16 step kt_new2 25 "$b/timing_new"
san=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer 2>/dev/null | head -n 1)
if [ -n "$san" ]; then
  step memcheck 60 "$san" --tool memcheck --error-exitcode 9 "$b/cuda_w4a16" --test-threads=1 gemv
  step racecheck 40 "$san" --tool racecheck --error-exitcode 9 "$b/cuda_w4a16" --test-threads=1 w4a16_gemv_f16
fi
cd "$r"
tail -n 3 tests.txt tests_moe.txt; grep -E "FAILED|panicked" tests.txt tests_moe.txt | head -5
for f in kt_base1 kt_new1 kt_base2 kt_new2; do echo "== $f"; grep -E "hot .* m=(1|16) |cold layer|^exit|skipped" "$f.txt" | sed 's/ weight_GB.*//' | cut -c1-80; done
grep -E "hot .* m=(1|16) |cold layer|^exit" torch.txt | sed 's/ weight_GB.*//' | cut -c1-90
grep -E "ERROR SUMMARY|RACECHECK SUMMARY|^exit|skipped" memcheck.txt racecheck.txt 2>/dev/null | tail -6
