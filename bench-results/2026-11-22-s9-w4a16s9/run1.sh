#!/usr/bin/env bash
# w4a16s9 device call 1: the tests of the new kernel (programmatic dependent launch + L2
# look-ahead knob), then main's timing example (base, c6bb6aa) and the new one interleaved x3 at
# 1, 2, 4, 8, 16 tokens (hot, hot_pdl, pairs, seq, graph, cold layer, sweeps at 1 and 16), the new
# one with KT_W4A16_L2_AHEAD=4 and 8 (m <= 8 kernel asks L2 for groups ahead), torch once at the
# end. Each step has its own timeout and runs only if it can end before BUDGET seconds; results
# land in $r as they come and are tarred into $OUT at exit.
set -uo pipefail
d=$(cd "$(dirname "$0")" && pwd)
b=/tmp/w4a16s9-bin; mkdir -p "$b"; tar xJf "$d/bins1.tar.xz" -C "$b"
r=/tmp/w4a16s9-results1; mkdir -p "$r"
trap 'tar czf "$OUT/w4a16s9-1.tar.gz" -C "$r" .' EXIT
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
step tests_new 50 "$b/tests_new" --test-threads=8
step moe_new 30 "$b/moe_new"
export KT_W4A16_TOKENS=1,2,4,8,16
for i in 1 2 3; do
  step kt_base$i 25 "$b/timing_base"
  step kt_new$i 25 "$b/timing_new"
  if [ $i -le 2 ]; then
    KT_W4A16_L2_AHEAD=4 step kt_l2a4_$i 25 "$b/timing_new"
    KT_W4A16_L2_AHEAD=8 step kt_l2a8_$i 25 "$b/timing_new"
  fi
done
step torch 40 python3 "$d/bench_torch_matmul.py"
cd "$r"
grep -h "test result" tests_new.txt moe_new.txt; grep -hE "FAILED|panicked" tests_*.txt moe_*.txt | head -5
for v in base new l2a4_ l2a8_; do for m in 1 16; do echo "== $v hot m=$m"; grep -hE "hot .* m=$m " kt_${v}[1-3].txt 2>/dev/null | sed -E 's/ weight_GB.*//; s/ n=[0-9]+ k=[0-9]+//; s/KT_W4A16 hot //; s/ auto.*us=/ /' | sort -s -k1,1 | awk '{u[$1]=u[$1]" "$NF} END{for(k in u) print k u[k]}'; done; done
echo "== new pdl/pairs/seq/graph m=1"; grep -hE "(hot_pdl|pair|seq|graph).* m=1 " kt_new1.txt | sed -E 's/ weight_GB.*//; s/ n=[0-9]+ k=[0-9]+//' | cut -c1-90
grep -h "cold layer" kt_base1.txt kt_new1.txt kt_l2a8_1.txt 2>/dev/null | cut -c1-60
grep -E "hot .* m=(1|16) |^exit" torch.txt | sed -E 's/ weight_GB.*//; s/ n=[0-9]+ k=[0-9]+//' | cut -c1-80 | tail -16
