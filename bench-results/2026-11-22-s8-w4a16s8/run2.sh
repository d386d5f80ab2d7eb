#!/usr/bin/env bash
# w4a16s8 device call 2: tests, memcheck and racecheck of the candidate (v3), the tests of v2,
# then the timing example of main (base, e0c5c5d) and of three versions of the 9-16-row
# kernel, interleaved: v1 (per-warp x staging, call 1), v2 (x staged once per block, one
# round ahead), v3 (v2 with two rounds ahead where KW < 4); torch's fp16 matmul once.
# Each step has its own timeout and runs only if it can end before BUDGET seconds; results
# land in $r as they come and are tarred into $OUT at exit.
set -uo pipefail
d=$(cd "$(dirname "$0")" && pwd)
b=/tmp/w4a16s8-bin; mkdir -p "$b"; tar xJf "$d/bins.tar.xz" -C "$b"
r=/tmp/w4a16s8-results; mkdir -p "$r"
trap 'tar czf "$OUT/w4a16s8-2.tar.gz" -C "$r" .' EXIT
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
step tests_v3 60 "$b/cuda_w4a16_v3" --test-threads=8
step tests_moe_v3 40 "$b/cuda_moe_experts_v3"
step tests_v2 60 "$b/cuda_w4a16_v2" --test-threads=8
step kt_base1 30 "$b/timing_base"
step kt_v3_1 30 "$b/timing_v3"
step kt_v2_1 30 "$b/timing_v2"
step kt_v1_1 30 "$b/timing_v1"
step torch 45 python3 "$d/bench_torch_matmul.py"
KT_W4A16_TOKENS=1,16 step kt_base2 20 "$b/timing_base"
KT_W4A16_TOKENS=1,16 step kt_v3_2 20 "$b/timing_v3"
KT_W4A16_TOKENS=1,16 step kt_v2_2 20 "$b/timing_v2"
KT_W4A16_TOKENS=1,16 step kt_v1_2 20 "$b/timing_v1"
KT_W4A16_TOKENS=9,12 step kt_base4 20 "$b/timing_base"
KT_W4A16_TOKENS=9,12 step kt_v3_4 20 "$b/timing_v3"
san=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer 2>/dev/null | head -n 1)
if [ -n "$san" ]; then
  step memcheck_v3 60 "$san" --tool memcheck --error-exitcode 9 "$b/cuda_w4a16_v3" --test-threads=1 gemv
  step racecheck_v3 40 "$san" --tool racecheck --error-exitcode 9 "$b/cuda_w4a16_v3" --test-threads=1 w4a16_gemv_f16
  step synccheck_v3 40 "$san" --tool synccheck --error-exitcode 9 "$b/cuda_w4a16_v3" --test-threads=1 w4a16_gemv_f16
fi
KT_W4A16_TOKENS=1,16 step kt_base3 20 "$b/timing_base"
KT_W4A16_TOKENS=1,16 step kt_v3_3 20 "$b/timing_v3"
cd "$r"
tail -n 2 tests_v3.txt tests_moe_v3.txt tests_v2.txt; grep -hE "FAILED|panicked" tests_*.txt | head -5
for f in kt_base1 kt_v3_1 kt_v2_1 kt_v1_1; do echo "== $f"; grep -E "hot .* m=16 |cold layer|^exit|skipped" "$f.txt" | sed -E 's/ weight_GB.*//; s/ n=[0-9]+ k=[0-9]+//; s/KT_W4A16 //' | cut -c1-70; done
grep -E "hot .* m=16 |cold layer m=(1|16) |^exit" torch.txt | sed -E 's/ weight_GB.*//; s/ n=[0-9]+ k=[0-9]+//' | cut -c1-80
grep -hE "ERROR SUMMARY|RACECHECK SUMMARY|^exit|skipped" memcheck_v3.txt racecheck_v3.txt synccheck_v3.txt 2>/dev/null | tail -9
