#!/usr/bin/env bash
# w4a16s11b's device call: cuda_w4a16 tests of the new build (KT_REQUIRE_GPU=1), main's timing example
# (base, c942479) and the new one (x staging: S rounds in flight at the start) interleaved x5 at 1, 8, 12,
# 16 tokens, torch fp16 once, a plan sweep of the new binary at 16 tokens (slices 4,5,7,8,10,12), memcheck
# of the gemv tests, ncu of q_b / shared in at 8 and 16 tokens (base and new), each step only if it can end
# before BUDGET s.
set -uo pipefail
d=$(cd "$(dirname "$0")" && pwd)
b=/tmp/w4b-bin; mkdir -p "$b"; tar xJf "$d/bins.tar.xz" -C "$b"
r=/tmp/w4b-results; mkdir -p "$r"
trap 'mkdir -p "$OUT/w4a16s11b"; cp "$r"/*.txt "$OUT/w4a16s11b/" 2>/dev/null' EXIT
export KT_REQUIRE_GPU=1 PYTHONUNBUFFERED=1 KT_TEST_FIXTURES=kt-kernels/tests/fixtures
budget=${BUDGET:-185}
step() { # name timeout command...
  local name=$1 t=$2; shift 2
  if (( SECONDS + t > budget )); then echo "skipped (at ${SECONDS}s)" > "$r/$name.txt"; return; fi
  local s0=$SECONDS
  timeout "$t" "$@" > "$r/$name.txt" 2>&1
  echo "exit $? after $((SECONDS - s0))s" >> "$r/$name.txt"
}
nvidia-smi > "$r/nvidia-smi.txt" 2>&1
step tests_new 40 "$b/tests_new" --test-threads=8
export KT_W4A16_TOKENS=1,8,12,16
for i in 1 2 3 4 5; do
  step kt_base$i 15 "$b/timing_base"
  step kt_new$i 15 "$b/timing_new"
done
step torch 30 python3 cuda/bench_torch_matmul.py
san=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer 2>/dev/null | head -n 1)
if [ -n "$san" ]; then
  step memcheck 35 "$san" --tool memcheck --error-exitcode 9 "$b/tests_new" --test-threads=1 gemv
fi
KT_W4A16_TOKENS=16 KT_W4A16_SLICES=4,5,7,8,10,12 step sweep_new16 15 "$b/timing_new"
ncu=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)
if [ -n "$ncu" ]; then
  met=gpu__time_duration.sum,sm__cycles_active.avg,sm__cycles_active.max,smsp__issue_active.avg.pct_of_peak_sustained_active,sm__warps_active.avg.per_cycle_active,lts__t_bytes.sum,l1tex__t_bytes.sum,lts__t_sectors_srcunit_tex_op_read_lookup_hit.sum,lts__t_sectors_srcunit_tex_op_read.sum,smsp__inst_executed.sum,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active
  # q_b is the first shape: its 3rd hot warm-up call; shared in the 4th shape (hot: 105 calls per shape + 105 pdl).
  for t in 16 8; do
    for v in new base; do
      KT_W4A16_TOKENS=$t step ncu_qb_${v}$t 20 "$ncu" --clock-control none -k regex:kt_w4a16_gemv \
        --launch-skip 3 --launch-count 1 --kill yes --metrics $met "$b/timing_$v"
    done
  done
fi
unset KT_W4A16_TOKENS
cd "$r"
grep -H "test result" tests_*.txt | cut -c1-90; grep -hE "FAILED|panicked" tests_*.txt | head -5
python3 "$d/summary.py" | grep -E "^(hot|graph|seq) " | sed -E 's/(kv_b_proj|o_proj|dense_down|dense_gate|shared_down)=[^ ]* //g' | cut -c1-330
grep -hE "ERROR SUMMARY|^exit|skipped" memcheck.txt 2>/dev/null | tail -3
grep -hE "plan (shared_gate|q_b_proj)" sweep_new16.txt | sed -E 's/ weight_GB.*//' | awk '{print $3, $7, $8, $9}' | tr '\n' ';'; echo
grep -hE "gpu__time_duration|sm__cycles_active|issue_active|warps_active|lts__t_bytes|l1tex__t_bytes|hit.sum|op_read.sum|inst_executed|hmma|^exit|skipped" ncu_*.txt 2>/dev/null | sed -E 's/ +/ /g' | head -50
echo "total ${SECONDS}s"
