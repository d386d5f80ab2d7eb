#!/usr/bin/env bash
# mla6 device call 1 (run from the repo root; carry .device-carry/mla6). bins1.tar.xz:
# cuda_mla + hybrid_graph tests and cuda_mla_timing for two TMA kernels: db (64-key tiles,
# double-buffered: branch mla6 94c22d0) and ring (32-key tiles in a 4-buffer ring, turn-taking
# warpgroups: 67ad1a9's kernel with TMA loads); *_noload diagnostics (no cache loads after the
# first tiles; timing only, results wrong); old = fc3b061's example (main at session start).
set -uo pipefail
here=.device-carry/mla6
res=$(mktemp -d)
save() { mkdir -p "$OUT" && tar czf "$OUT/mla6-1.tgz" -C "$res" .; }
trap save EXIT
bin=$(mktemp -d)
tar xJf "$here/bins1.tar.xz" -C "$bin"
export KT_REQUIRE_GPU=1
nvidia-smi > "$res/nvidia-smi.txt" 2>&1
timeout 45 python3 "$here/bench_torch_mla.py" > "$res/torch.txt" 2>&1
echo "torch rc $?" | tee -a "$res/torch.txt"; save
for v in db ring; do
  timeout 35 "$bin/cuda_mla_$v" --test-threads=1 > "$res/test_cuda_mla_$v.txt" 2>&1
  echo "cuda_mla $v rc $?" | tee -a "$res/test_cuda_mla_$v.txt"
  timeout 35 "$bin/hybrid_graph_$v" --test-threads=1 > "$res/test_hybrid_graph_$v.txt" 2>&1
  echo "hybrid_graph $v rc $?" | tee -a "$res/test_hybrid_graph_$v.txt"; save
done
Q=("decode 64x4096" "decode 64x1024" "decode 8x4096" "decode 1x4096" "prefill 512x512")
for r in 1 2; do for v in db ring db_noload ring_noload; do
  timeout 25 "$bin/cuda_mla_timing_$v" "${Q[@]}" > "$res/quick_${v}_$r.txt" 2>&1
  echo "quick $v $r rc $?" >> "$res/quick_${v}_$r.txt"; save
done; done
for v in old db ring; do
  timeout 60 "$bin/cuda_mla_timing_$v" > "$res/full_$v.txt" 2>&1
  echo "full $v rc $?" | tee -a "$res/full_$v.txt"; save
done
grep -h "KT_MLA\|TORCH_MLA\|test result\|FAILED\|panicked\| rc " "$res"/*.txt | sed 's/heads=128 //' | head -150
