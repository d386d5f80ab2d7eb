#!/usr/bin/env bash
# mla7 device call 2 (run from the repo root; carry .device-carry/mla7, timeout_s 300).
# bins2.tar.xz (stripped, built in worktree mla7), no clusters / multicast (call 1: slower):
#   base = main at 4e33a0b (session start)
#   d    = base + wgmma descriptors stepped by one add per MMA
#   pb   = d + a barrier per 64-dim box of each tile; the scores of a TMA tile wait box by box
#          (91c7195)
#   pbr  = pb + the rope box of tile t + 2 fetched after barrier (A) of tile t (its scores are
#          done), the other eight at (C); the scores take the rope box first
# Tests (KT_REQUIRE_GPU=1) of pbr and pb with kt-model's hybrid_graph, then the timing example
# on the quick shapes interleaved twice, full runs of base and pbr, torch once.
set -uo pipefail
here=.device-carry/mla7
res=$(mktemp -d)
save() { mkdir -p "$OUT" && tar czf "$OUT/mla7-2.tgz" -C "$res" .; }
trap save EXIT
bin=$(mktemp -d)
tar xJf "$here/bins2.tar.xz" -C "$bin"
export KT_REQUIRE_GPU=1
nvidia-smi > "$res/nvidia-smi.txt" 2>&1
for v in pbr pb; do
  timeout 30 "$bin/cuda_mla_$v" --test-threads=1 > "$res/test_cuda_mla_$v.txt" 2>&1
  echo "cuda_mla $v rc $?" >> "$res/test_cuda_mla_$v.txt"; save
  timeout 25 "$bin/hybrid_graph_$v" --test-threads=1 > "$res/test_hybrid_graph_$v.txt" 2>&1
  echo "hybrid_graph $v rc $?" >> "$res/test_hybrid_graph_$v.txt"; save
done
Q=("decode 64x4096" "decode 64x1024" "decode 8x4096" "decode 1x4096" "prefill 512x512")
for r in 1 2; do for v in base d pb pbr; do
  timeout 20 "$bin/cuda_mla_timing_$v" "${Q[@]}" > "$res/quick_${v}_$r.txt" 2>&1
  echo "quick $v $r rc $?" >> "$res/quick_${v}_$r.txt"; save
done; done
F=("decode 32x4096" "decode 16x16384" "splits" "prefill 1024x4096")
for v in base pbr; do
  timeout 40 "$bin/cuda_mla_timing_$v" "${F[@]}" > "$res/full_$v.txt" 2>&1; echo "full $v rc $?" >> "$res/full_$v.txt"; save
done
timeout 25 python3 cuda/bench_torch_mla.py > "$res/torch.txt" 2>&1; echo "torch rc $?" >> "$res/torch.txt"; save
grep -h "KT_MLA\|TORCH\|test result\|FAILED\|panicked\| rc " "$res"/*.txt | sed 's/heads=128 //; s/q_len=1 //' | head -120
