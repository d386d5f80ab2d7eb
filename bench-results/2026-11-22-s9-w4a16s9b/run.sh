#!/usr/bin/env bash
# w4a16s9b device call (one): the tests of the new kernel (default; KT_W4A16_CLUSTER=0 = global
# partials; =8 = clusters of up to 8 slices; KT_W4A16_XS_L2=1 = x staged through L2 only), the
# programmatic chain test, cuda_moe_experts; then main's timing example (base, 7f31f89) and the
# new one interleaved x3 at 9, 12, 16 tokens: new = defaults (x staged through L1, cluster sums
# shared out over all warps of all ranks, partials summed two items per thread), xsl2 =
# KT_W4A16_XS_L2=1, cl8 = KT_W4A16_CLUSTER=8 (8-slice shared in summed in a cluster); base and
# new once at 1 token; torch once; compute-sanitizer memcheck of the small-m tests (default and
# KT_W4A16_CLUSTER=8) and racecheck. Steps have their own timeouts and run only if they can end
# before BUDGET seconds; results land in $r as they come and are tarred into $OUT at exit.
set -uo pipefail
d=$(cd "$(dirname "$0")" && pwd)
b=/tmp/w4a16s9b-bin; mkdir -p "$b"; tar xJf "$d/bins.tar.xz" -C "$b"
r=/tmp/w4a16s9b-results; mkdir -p "$r"
trap 'tar czf "$OUT/w4a16s9b.tar.gz" -C "$r" .' EXIT
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
step tests_new 30 "$b/tests_new" --test-threads=8
KT_W4A16_CLUSTER=0 step tests_nocl 30 "$b/tests_new" --test-threads=8
KT_W4A16_CLUSTER=8 step tests_cl8 30 "$b/tests_new" --test-threads=8
KT_W4A16_XS_L2=1 step tests_xsl2 30 "$b/tests_new" --test-threads=8 gemv
step moe_new 20 "$b/moe_new"
export KT_W4A16_TOKENS=9,12,16
for i in 1 2 3; do
  step kt_base$i 15 "$b/timing_base"
  step kt_new$i 15 "$b/timing_new"
  KT_W4A16_XS_L2=1 step kt_xsl2$i 15 "$b/timing_new"
  KT_W4A16_CLUSTER=8 step kt_cl8$i 15 "$b/timing_new"
done
KT_W4A16_TOKENS=1 step kt_base_m1 10 "$b/timing_base"
KT_W4A16_TOKENS=1 step kt_new_m1 10 "$b/timing_new"
unset KT_W4A16_TOKENS
step torch 25 python3 "$d/bench_torch_matmul.py"
san=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer 2>/dev/null | head -n 1)
if [ -n "$san" ]; then
  step memcheck 30 "$san" --tool memcheck --error-exitcode 9 "$b/tests_new" --test-threads=1 gemv
  KT_W4A16_CLUSTER=8 step memcheck_cl8 25 "$san" --tool memcheck --error-exitcode 9 "$b/tests_new" --test-threads=1 w4a16_gemv_f16
  step racecheck 20 "$san" --tool racecheck --error-exitcode 9 "$b/tests_new" --test-threads=1 w4a16_gemv_f16
fi
cd "$r"
grep -H "test result" tests_*.txt moe_new.txt | cut -c1-90; grep -hE "FAILED|panicked" tests_*.txt moe_*.txt | head -5
python3 "$d/summary.py" | grep -E "^hot "
grep -E "hot .* m=(1|16) " torch.txt | sed -E 's/ weight_GB.*//; s/ n=[0-9]+ k=[0-9]+//; s/TORCH_FP16 hot //' | tr '\n' ' '; echo
grep -hE "ERROR SUMMARY|RACECHECK SUMMARY|^exit|skipped" memcheck*.txt racecheck.txt 2>/dev/null | tail -9
