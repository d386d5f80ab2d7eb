#!/usr/bin/env bash
# mla9 device call 2 (run from the repo root; carry .device-carry/mla9, timeout_s 300).
# bins2.tar.xz (stripped, built in worktree mla9):
#   base = main at c6bb6aa (session start)
#   alt  = call 1's kernel (warpgroups alternate tiles; 56688d5)
#   f1   = alt + the other warpgroup signals "P V of your tile done" after issuing its next
#          scores (wait_group 1), so the owner refills the rest of the buffer before the publish
#   f2   = the same signal before issuing its next scores (wait_group 0)
#   f1pf, f2pf = f1 / f2 + tile t + 3 prefetched into L2 (9 box prefetches) at the own step of t
# Tests of f1pf and f2pf (f1 / f2 differ only by the L2 hint), then the quick shapes
# interleaved twice, a full run of f1pf, torch once.
set -uo pipefail
here=.device-carry/mla9
res=$(mktemp -d)
save() { mkdir -p "$OUT" && tar czf "$OUT/mla9-2.tgz" -C "$res" .; }
trap save EXIT
bin=$(mktemp -d)
tar xJf "$here/bins2.tar.xz" -C "$bin"
export KT_REQUIRE_GPU=1
nvidia-smi > "$res/nvidia-smi.txt" 2>&1
for v in f1pf f2pf; do
  timeout 40 "$bin/cuda_mla_$v" --test-threads=1 > "$res/test_cuda_mla_$v.txt" 2>&1
  echo "cuda_mla $v rc $?" >> "$res/test_cuda_mla_$v.txt"; save
  timeout 30 "$bin/hybrid_graph_$v" --test-threads=1 > "$res/test_hybrid_graph_$v.txt" 2>&1
  echo "hybrid_graph $v rc $?" >> "$res/test_hybrid_graph_$v.txt"; save
done
Q=("decode 64x4096" "decode 64x1024" "decode 8x4096" "decode 1x4096" "prefill 512x512")
for r in 1 2; do for v in base alt f1 f2 f1pf f2pf; do
  timeout 20 "$bin/cuda_mla_timing_$v" "${Q[@]}" > "$res/quick_${v}_$r.txt" 2>&1
  echo "quick $v $r rc $?" >> "$res/quick_${v}_$r.txt"; save
done; done
F=("decode 32x4096" "decode 16x16384" "splits" "prefill 1024x4096")
timeout 30 "$bin/cuda_mla_timing_f1pf" "${F[@]}" > "$res/full_f1pf.txt" 2>&1; echo "full f1pf rc $?" >> "$res/full_f1pf.txt"; save
timeout 25 python3 cuda/bench_torch_mla.py > "$res/torch.txt" 2>&1; echo "torch rc $?" >> "$res/torch.txt"; save
grep -h "KT_MLA\|TORCH\|torch\|test result\|FAILED\|panicked\| rc " "$res"/*.txt | sed 's/heads=128 //; s/q_len=1 //' | head -150
