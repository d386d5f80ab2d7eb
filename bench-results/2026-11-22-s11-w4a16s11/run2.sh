#!/usr/bin/env bash
# w4a16s11 device call 2: cuda_w4a16 tests of the new build (KT_REQUIRE_GPU=1), main's timing example
# (base, cd4ad61) and the new one (default = spread plan for dense in: 264 tiles whole, the 24 past
# them in 5 k slices; new0 = KT_W4A16_SPREAD=0, the plain plan in the same binary) interleaved at 1, 8,
# 9, 12, 16 tokens, torch fp16 once, CUPTI-traced runs of base and new at 1 token (kernel durations),
# ncu on dense in (base and new, 1 and 16 tokens), memcheck and racecheck of the gemv tests.
# Steps run only if they can end before BUDGET s.
set -uo pipefail
d=$(cd "$(dirname "$0")" && pwd)
b=/tmp/w4s11-bin; mkdir -p "$b"; tar xJf "$d/bins.tar.xz" -C "$b"
r=/tmp/w4s11-results; mkdir -p "$r"
trap 'tar czf "$OUT/w4a16s11.tar.gz" -C "$r" .' EXIT
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
step tests_new 40 "$b/tests_new" --test-threads=8
export KT_W4A16_TOKENS=1,8,9,12,16
for i in 1 2 3 4; do
  step kt_base$i 20 "$b/timing_base"
  step kt_new$i 20 "$b/timing_new"
  [ $i -gt 2 ] || KT_W4A16_SPREAD=0 step kt_new0$i 20 "$b/timing_new"
done
step torch 30 python3 cuda/bench_torch_matmul.py
export KT_W4A16_TOKENS=1
if so_lib=$(bash kt-bench/peers/cupti_trace/build.sh /tmp/kt-cupti 2> "$r/cupti_build.log"); then
  so=$(echo "$so_lib" | head -1); lib=$(echo "$so_lib" | tail -1)
  for v in new base; do
    CUDA_INJECTION64_PATH="$so" KT_TRACE_OUT=/tmp/trace_${v}1.csv LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}" \
      step cupti_${v}1 30 "$b/timing_$v"
    step cupti_kernels_${v}1 20 python3 "$d/cupti_kernels.py" /tmp/trace_${v}1.csv "$r/cupti_${v}1.txt"
    xz -T2 -3 -c /tmp/trace_${v}1.csv > "$r/trace_${v}1.csv.xz" 2>/dev/null
  done
fi
ncu=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)
if [ -n "$ncu" ]; then
  met=gpu__time_duration.sum,sm__cycles_active.avg,sm__cycles_active.max,sm__cycles_active.min,sm__cycles_elapsed.avg,dram__throughput.avg.pct_of_peak_sustained_elapsed,smsp__issue_active.avg.pct_of_peak_sustained_active,sm__warps_active.avg.per_cycle_active,lts__t_bytes.sum.per_second,smsp__inst_executed.sum
  for t in 16 1; do
    for v in base new; do
      KT_W4A16_TOKENS=$t step ncu_${v}$t 30 "$ncu" --clock-control none --cache-control none -k regex:kt_w4a16_gemv \
        --launch-skip 1100 --launch-count 1 --kill yes --metrics $met "$b/timing_$v"
    done
  done
fi
unset KT_W4A16_TOKENS
san=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer 2>/dev/null | head -n 1)
if [ -n "$san" ]; then
  step memcheck 40 "$san" --tool memcheck --error-exitcode 9 "$b/tests_new" --test-threads=1 gemv
  step racecheck 40 "$san" --tool racecheck --error-exitcode 9 "$b/tests_new" --test-threads=1 w4a16_gemv_f16
fi
cd "$r"
grep -H "test result" tests_*.txt | cut -c1-90; grep -hE "FAILED|panicked" tests_*.txt | head -5
python3 "$d/summary.py" base new new0 | grep -E "^(hot|graph|seq|cold) " | grep -E "dense_gate|layer" | cut -c1-200
grep -E "hot .* (dense_gate|shared|kv_b)" torch.txt | sed -E 's/ weight_GB.*//; s/ n=[0-9]+ k=[0-9]+//; s/TORCH_FP16 hot //' | tr '\n' ' '; echo
grep -E "^(hot|graph|cold) " cupti_kernels_new1.txt 2>/dev/null | grep -v "^graph *floor" | cut -c1-110
grep -E "^(hot|graph|cold) +dense_gate" cupti_kernels_base1.txt 2>/dev/null | cut -c1-110
grep -hE "gpu__time_duration|sm__cycles_active|dram__throughput|issue_active|warps_active|^exit" ncu_*.txt 2>/dev/null | head -60
grep -hE "ERROR SUMMARY|RACECHECK SUMMARY|^exit|skipped" memcheck.txt racecheck.txt 2>/dev/null | tail -6
echo "total ${SECONDS}s"
