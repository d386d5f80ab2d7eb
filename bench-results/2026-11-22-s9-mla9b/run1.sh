#!/usr/bin/env bash
# mla9b device call (run from the repo root; carry .device-carry/mla9b, timeout_s 240).
# bins1.tar.xz (stripped):
#   cuda_mla_timing_main = main's kernel (a31e706, the same kernel source as main 893f114;
#                          taken from .device-carry/mla9/bins3.tar.xz)
#   cuda_mla_timing_new, cuda_mla_new, hybrid_graph_new = branch mla9b: cluster pairs with
#     KT_MLA_PAIR=0 (no pair: main's schedule), 1 (part barriers, deferred share issue),
#     2 (the second block to free a part issues it whole; the default)
# cuda_mla tests in modes 2 and 1, the quick shapes interleaved twice (main, new 0/1/2),
# hybrid_graph in the default mode. A mode whose test timed out is not timed.
set -uo pipefail
here=.device-carry/mla9b
res=$(mktemp -d)
save() { mkdir -p "$OUT" && tar czf "$OUT/mla9b-1.tgz" -C "$res" .; }
trap save EXIT
bin=$(mktemp -d)
tar xJf "$here/bins1.tar.xz" -C "$bin"
export KT_REQUIRE_GPU=1
nvidia-smi > "$res/nvidia-smi.txt" 2>&1
declare -A ok=([0]=1 [1]=1 [2]=1)
for m in 2 1; do
  KT_MLA_PAIR=$m timeout 45 "$bin/cuda_mla_new" --test-threads=1 > "$res/test_cuda_mla_pair$m.txt" 2>&1
  rc=$?; echo "cuda_mla pair$m rc $rc" >> "$res/test_cuda_mla_pair$m.txt"; save
  [[ $rc == 124 || $rc == 137 ]] && ok[$m]=0
done
Q=("decode 64x4096" "decode 64x1024" "decode 8x4096" "decode 1x4096" "prefill 512x512")
for r in 1 2; do
  timeout 20 "$bin/cuda_mla_timing_main" "${Q[@]}" > "$res/quick_main_$r.txt" 2>&1
  echo "quick main $r rc $?" >> "$res/quick_main_$r.txt"; save
  for m in 0 1 2; do
    [[ ${ok[$m]} == 1 ]] || continue
    KT_MLA_PAIR=$m timeout 20 "$bin/cuda_mla_timing_new" "${Q[@]}" > "$res/quick_pair${m}_$r.txt" 2>&1
    rc=$?; echo "quick pair$m $r rc $rc" >> "$res/quick_pair${m}_$r.txt"; save
    [[ $rc == 124 || $rc == 137 ]] && ok[$m]=0
  done
done
timeout 30 "$bin/hybrid_graph_new" --test-threads=1 > "$res/test_hybrid_graph.txt" 2>&1
echo "hybrid_graph (pair 2) rc $?" >> "$res/test_hybrid_graph.txt"; save
F=("decode 32x4096" "decode 16x16384")
for m in 0 2; do
  [[ ${ok[$m]} == 1 ]] || continue
  KT_MLA_PAIR=$m timeout 15 "$bin/cuda_mla_timing_new" "${F[@]}" > "$res/more_pair$m.txt" 2>&1
  echo "more pair$m rc $?" >> "$res/more_pair$m.txt"; save
done
grep -h "KT_MLA\|test result\|FAILED\|panicked\| rc " "$res"/*.txt | sed 's/heads=128 //; s/q_len=1 //' | head -120
