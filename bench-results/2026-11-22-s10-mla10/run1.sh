#!/usr/bin/env bash
# mla10 device call 1 (run from the repo root; carry .device-carry/mla10, timeout_s 270).
# bins1.tar.xz (stripped; built in worktree mla10 with cuda/mla_attn_sm90.cu's kVar set per binary):
#   main = main at 7d522c4 (session start);  t = the block table read a tile ahead (kVar 1)
#   te = t + evict-first L2 hint on the tile copies (9)
#   d  = diagnostic: t with the scores not waiting for the boxes (traffic kept, results wrong) (3)
#   d2 = diagnostic: t with every tile copied from the split's first tile (L2 hits only) (5)
#   tx = t + the non-owner refills its half of the owner's buffer itself (17)
#   ts = t + softmax trimmed (mask only on edge tiles, one FFMA + ex2.approx per score) (33)
#   txs = t + x + s (49)
#   tp = t + the even head-half block prefetches tile u + 2's eight other boxes into L2 when it
#        issues that tile's rope box (65)
# Tests (KT_REQUIRE_GPU=1) of t and txs, the quick shapes interleaved twice, hybrid_graph of txs.
set -uo pipefail
here=.device-carry/mla10
res=$(mktemp -d)
save() { mkdir -p "$OUT" && tar czf "$OUT/mla10-1.tgz" -C "$res" .; }
trap save EXIT
bin=$(mktemp -d)
tar xJf "$here/bins1.tar.xz" -C "$bin"
export KT_REQUIRE_GPU=1
nvidia-smi > "$res/nvidia-smi.txt" 2>&1
declare -A ok=()
for v in txs t; do
  timeout 40 "$bin/cuda_mla_$v" --test-threads=1 > "$res/test_cuda_mla_$v.txt" 2>&1
  rc=$?; echo "cuda_mla $v rc $rc" >> "$res/test_cuda_mla_$v.txt"; save
  [[ $rc == 124 || $rc == 137 ]] && ok[$v]=0
done
Q=("decode 64x4096" "decode 64x1024" "decode 8x4096" "decode 1x4096" "prefill 512x512")
for r in 1 2; do for v in main t te d d2 tx ts txs tp; do
  [[ ${ok[$v]:-1} == 1 ]] || continue
  timeout 15 "$bin/cuda_mla_timing_$v" "${Q[@]}" > "$res/quick_${v}_$r.txt" 2>&1
  rc=$?; echo "quick $v $r rc $rc" >> "$res/quick_${v}_$r.txt"; save
  [[ $rc == 124 || $rc == 137 ]] && ok[$v]=0
done; done
timeout 30 "$bin/hybrid_graph_txs" --test-threads=1 > "$res/test_hybrid_graph_txs.txt" 2>&1
echo "hybrid_graph txs rc $?" >> "$res/test_hybrid_graph_txs.txt"; save
F=("decode 32x4096" "decode 16x16384" "prefill 1024x4096")
for v in main txs; do
  [[ ${ok[$v]:-1} == 1 ]] || continue
  timeout 12 "$bin/cuda_mla_timing_$v" "${F[@]}" > "$res/more_$v.txt" 2>&1; echo "more $v rc $?" >> "$res/more_$v.txt"; save
done
grep -h "KT_MLA\|test result\|FAILED\|panicked\| rc " "$res"/*.txt | sed 's/heads=128 //; s/q_len=1 //' | head -150
