#!/usr/bin/env bash
# w4a16s8b device call 2: the final kernel (call 1's candidate A) with the 9-16-row slice rule
# (G): its tests, compute-sanitizer, then the timing example of main (base, e7e966b) and of G
# interleaved over four rounds at 1 and 9-16 tokens (hot, cold layer, and the k-ways x slices
# sweep at 1 and 16, now also with 3 and 6 slices), torch's fp16 matmul once at the same counts.
# Each step has its own timeout and runs only if it can end before BUDGET seconds; results
# land in $r as they come and are tarred into $OUT at exit.
set -uo pipefail
d=$(cd "$(dirname "$0")" && pwd)
b=/tmp/w4a16s8b-bin; mkdir -p "$b"; tar xJf "$d/bins2.tar.xz" -C "$b"
r=/tmp/w4a16s8b-results2; mkdir -p "$r"
trap 'tar czf "$OUT/w4a16s8b-2.tar.gz" -C "$r" .' EXIT
export KT_REQUIRE_GPU=1 PYTHONUNBUFFERED=1
budget=${BUDGET:-250}
step() { # name timeout command...
  local name=$1 t=$2; shift 2
  if (( SECONDS + t > budget )); then echo "skipped (at ${SECONDS}s)" > "$r/$name.txt"; return; fi
  local s0=$SECONDS
  timeout "$t" "$@" > "$r/$name.txt" 2>&1
  echo "exit $? after $((SECONDS - s0))s" >> "$r/$name.txt"
}
nvidia-smi > "$r/nvidia-smi.txt" 2>&1
step tests_G 60 "$b/tests_G" --test-threads=8
step moe_G 40 "$b/moe_G"
export KT_W4A16_TOKENS=1,9,10,11,12,13,14,15,16
for i in 1 2 3 4; do
  step kt_base$i 30 "$b/timing_base"
  step kt_G$i 30 "$b/timing_G"
  if [ $i = 1 ]; then step torch 45 python3 "$d/bench_torch_matmul.py"; fi
done
unset KT_W4A16_TOKENS
san=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer 2>/dev/null | head -n 1)
if [ -n "$san" ]; then
  step memcheck_G 45 "$san" --tool memcheck --error-exitcode 9 "$b/tests_G" --test-threads=1 gemv
  step racecheck_G 30 "$san" --tool racecheck --error-exitcode 9 "$b/tests_G" --test-threads=1 w4a16_gemv_f16
  step synccheck_G 30 "$san" --tool synccheck --error-exitcode 9 "$b/tests_G" --test-threads=1 w4a16_gemv_f16
fi
cd "$r"
grep -h "test result" tests_G.txt moe_G.txt; grep -hE "FAILED|panicked" tests_*.txt moe_*.txt | head -5
for v in base G; do for m in 16 9; do echo "== $v hot m=$m (rounds 1-4)"; grep -hE "hot .* m=$m " kt_${v}[1-4].txt | sed -E 's/ weight_GB.*//; s/ n=[0-9]+ k=[0-9]+//; s/KT_W4A16 hot //' | sort -s -k1,1 | awk '{u[$1]=u[$1]" "$NF} END{for(k in u) print k u[k]}' | sed 's/us=//g'; done; done
for v in base G; do echo "== $v cold layer"; grep -h "cold layer" kt_${v}[1-4].txt | sed 's/KT_W4A16 cold layer //' | sort -s -k1,1 | awk '{u[$1]=u[$1]" "$2} END{for(k in u) print k u[k]}' | sed 's/us=//g' | sort -t= -k2 -n; done
echo "== G sweep m=16 o_proj / dense_down, 4 k-ways"; grep -hE "plan (o_proj|dense_down) m=16 .*k_ways=4 " kt_G[1-2].txt | sed -E 's/ weight_GB.*//; s/ n=[0-9]+ k=[0-9]+//; s/KT_W4A16 plan //'
grep -E "hot .* m=(1|16) |cold layer|^exit" torch.txt | sed -E 's/ weight_GB.*//; s/ n=[0-9]+ k=[0-9]+//' | cut -c1-80 | tail -20
grep -hE "ERROR SUMMARY|RACECHECK SUMMARY|^exit|skipped" memcheck_G.txt racecheck_G.txt synccheck_G.txt 2>/dev/null | tail -9
