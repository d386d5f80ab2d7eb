#!/usr/bin/env bash
# w4a16s7 device call: cuda_w4a16 tests, then the timing example of main (timing_base) and of
# this branch (timing_new) interleaved, torch's fp16 matmul once, and if time is left an ncu
# look at the new kernel. Each step has its own timeout and runs only if it can end before
# BUDGET seconds; results land in $r as they come and are tarred into $OUT at exit.
set -uo pipefail
d=$(cd "$(dirname "$0")" && pwd)
r=/tmp/w4a16s7-results; mkdir -p "$r"
trap 'tar czf "$OUT/w4a16s7.tar.gz" -C "$r" .' EXIT
export KT_REQUIRE_GPU=1 PYTHONUNBUFFERED=1
budget=${BUDGET:-262}
step() { # name timeout command...
  local name=$1 t=$2; shift 2
  if (( SECONDS + t > budget )); then echo "skipped (at ${SECONDS}s)" > "$r/$name.txt"; return; fi
  local s0=$SECONDS
  timeout "$t" "$@" > "$r/$name.txt" 2>&1
  echo "exit $? after $((SECONDS - s0))s" >> "$r/$name.txt"
}
nvidia-smi > "$r/nvidia-smi.txt" 2>&1
step tests 75 "$d/cuda_w4a16" --test-threads=8
step kt_base1 35 "$d/timing_base"
step kt_new1 40 "$d/timing_new"
step torch 45 python3 "$d/bench_torch_matmul.py"
KT_W4A16_TOKENS=1,16 step kt_base2 25 "$d/timing_base"
KT_W4A16_TOKENS=1,16 step kt_new2 25 "$d/timing_new"
if command -v ncu > /dev/null; then
  KT_W4A16_TOKENS=1 step ncu_new 30 ncu --clock-control none -k regex:kt_w4a16_gemv --launch-skip 215 --launch-count 1 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy --section LaunchStats --section SchedulerStats \
    "$d/timing_new"
fi
cd "$r"
tail -n 3 tests.txt tests_moe.txt; grep -E "FAILED|panicked" tests.txt tests_moe.txt | head -5
for f in kt_base1 kt_new1 kt_base2 kt_new2; do echo "== $f"; grep -E "hot .* m=(1|16) |cold layer|^exit|skipped" "$f.txt" | sed 's/ weight_GB.*//' | cut -c1-80; done
grep -E "hot .* m=(1|16) |cold layer|^exit|COPY|copy" torch.txt | sed 's/ weight_GB.*//' | cut -c1-90
grep -E "ERROR SUMMARY|^exit|skipped" memcheck.txt 2>/dev/null | tail -3
for f in ncu_new ncu_new16; do echo "== $f"; grep -E "^exit|skipped|Duration|DRAM Throughput|Registers Per|Achieved Occupancy|Eligible Warps|Issued Warp" $f.txt 2>/dev/null | head -8; done
