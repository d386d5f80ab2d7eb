#!/usr/bin/env bash
# w4a16s9 device call 2 (final code, commit 87c8a9d): tests (default; KT_W4A16_CLUSTER=0; PDL
# trigger start / exit), cuda_moe_experts, compute-sanitizer memcheck / racecheck / synccheck on
# the small-m tests, then main's timing example (base, c6bb6aa) and the new one interleaved x3
# at 1, 2, 4, 8, 16 tokens: new = defaults (sliced plans reduced in a cluster, PDL trigger after
# the stream), nocl = KT_W4A16_CLUSTER=0 (global partials as in base); PDL trigger start / exit
# x2; torch once at the end. Steps have their own timeouts and run only if they can end before
# BUDGET seconds; results land in $r as they come and are tarred into $OUT at exit.
set -uo pipefail
d=$(cd "$(dirname "$0")" && pwd)
b=/tmp/w4a16s9-bin2; mkdir -p "$b"; tar xJf "$d/bins2.tar.xz" -C "$b"
r=/tmp/w4a16s9-results2; mkdir -p "$r"
trap 'tar czf "$OUT/w4a16s9-2.tar.gz" -C "$r" .' EXIT
export KT_REQUIRE_GPU=1 PYTHONUNBUFFERED=1
budget=${BUDGET:-205}
step() { # name timeout command...
  local name=$1 t=$2; shift 2
  if (( SECONDS + t > budget )); then echo "skipped (at ${SECONDS}s)" > "$r/$name.txt"; return; fi
  local s0=$SECONDS
  timeout "$t" "$@" > "$r/$name.txt" 2>&1
  echo "exit $? after $((SECONDS - s0))s" >> "$r/$name.txt"
}
nvidia-smi > "$r/nvidia-smi.txt" 2>&1
step tests_new 40 "$b/tests_new" --test-threads=8
KT_W4A16_CLUSTER=0 step tests_nocl 40 "$b/tests_new" --test-threads=8
KT_W4A16_PDL_TRIGGER=start step tests_start 20 "$b/tests_new" --test-threads=8 programmatic
KT_W4A16_PDL_TRIGGER=exit step tests_exit 20 "$b/tests_new" --test-threads=8 programmatic
step moe_new 30 "$b/moe_new"
export KT_W4A16_TOKENS=1,2,4,8,16
for i in 1 2 3; do
  step kt_base$i 20 "$b/timing_base"
  step kt_new$i 20 "$b/timing_new"
  KT_W4A16_CLUSTER=0 step kt_nocl$i 20 "$b/timing_new"
  if [ $i -le 2 ]; then
    KT_W4A16_PDL_TRIGGER=start step kt_start$i 20 "$b/timing_new"
    KT_W4A16_PDL_TRIGGER=exit step kt_exit$i 20 "$b/timing_new"
  fi
done
step torch 30 python3 "$d/bench_torch_matmul.py"
unset KT_W4A16_TOKENS
san=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer 2>/dev/null | head -n 1)
if [ -n "$san" ]; then
  step memcheck 45 "$san" --tool memcheck --error-exitcode 9 "$b/tests_new" --test-threads=1 gemv
  step racecheck 25 "$san" --tool racecheck --error-exitcode 9 "$b/tests_new" --test-threads=1 w4a16_gemv_f16
  step synccheck 20 "$san" --tool synccheck --error-exitcode 9 "$b/tests_new" --test-threads=1 w4a16_gemv_f16
fi
cd "$r"
grep -H "test result" tests_*.txt moe_new.txt | cut -c1-90; grep -hE "FAILED|panicked" tests_*.txt moe_*.txt | head -5
python3 "$d/summary.py" | grep -E "m=(1|16):" | grep -vE "^(cold|pair|seq) (start|exit)"
for v in base new nocl; do echo "$v cold m=1,16: $(grep -h 'cold layer m=1 \|cold layer m=16 ' kt_${v}[1-3].txt | sed 's/.*us=//' | tr '\n' ' ')"; done
grep -E "hot .* m=(1|16) " torch.txt | sed -E 's/ weight_GB.*//; s/ n=[0-9]+ k=[0-9]+//; s/TORCH_FP16 hot //' | tr '\n' ' '; echo
grep -hE "ERROR SUMMARY|RACECHECK SUMMARY|^exit|skipped" memcheck.txt racecheck.txt synccheck.txt 2>/dev/null | tail -9
