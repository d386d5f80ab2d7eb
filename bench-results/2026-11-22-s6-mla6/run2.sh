#!/usr/bin/env bash
# mla6 device call 2 (run from the repo root; carry .device-carry/mla6). bins2.tar.xz: tests and
# timing of db_pair (64-key double-buffered TMA kernel launched in clusters of two blocks, so a
# token's two head halves share an L2 partition) and ring_pair (the 32-key ring with TMA, same
# clusters); db / ring = call 1's TMA kernels without clusters; old = fc3b061 (session start).
set -uo pipefail
here=.device-carry/mla6
res=$(mktemp -d)
save() { mkdir -p "$OUT" && tar czf "$OUT/mla6-2.tgz" -C "$res" .; }
trap save EXIT
bin=$(mktemp -d)
tar xJf "$here/bins2.tar.xz" -C "$bin"
export KT_REQUIRE_GPU=1
nvidia-smi > "$res/nvidia-smi.txt" 2>&1
timeout 40 python3 "$here/bench_torch_mla.py" > "$res/torch.txt" 2>&1
echo "torch rc $?" | tee -a "$res/torch.txt"; save
for v in db_pair ring_pair; do
  timeout 35 "$bin/cuda_mla_$v" --test-threads=1 > "$res/test_cuda_mla_$v.txt" 2>&1
  echo "cuda_mla $v rc $?" | tee -a "$res/test_cuda_mla_$v.txt"
  timeout 35 "$bin/hybrid_graph_$v" --test-threads=1 > "$res/test_hybrid_graph_$v.txt" 2>&1
  echo "hybrid_graph $v rc $?" | tee -a "$res/test_hybrid_graph_$v.txt"; save
done
Q=("decode 64x4096" "decode 64x1024" "decode 8x4096" "decode 1x4096" "prefill 512x512")
quick() { for v in db db_pair ring ring_pair; do
  timeout 25 "$bin/cuda_mla_timing_$v" "${Q[@]}" > "$res/quick_${v}_$1.txt" 2>&1
  echo "quick $v $1 rc $?" >> "$res/quick_${v}_$1.txt"; save
done; }
quick 1
timeout 55 "$bin/cuda_mla_timing_old" > "$res/full_old.txt" 2>&1; echo "full old rc $?" | tee -a "$res/full_old.txt"; save
timeout 50 "$bin/cuda_mla_timing_db_pair" decode splits prefill > "$res/full_db_pair.txt" 2>&1; echo "full db_pair rc $?" | tee -a "$res/full_db_pair.txt"; save
quick 2
timeout 50 "$bin/cuda_mla_timing_ring_pair" decode splits prefill > "$res/full_ring_pair.txt" 2>&1; echo "full ring_pair rc $?" | tee -a "$res/full_ring_pair.txt"; save
grep -h "KT_MLA\|TORCH_MLA\|test result\|FAILED\|panicked\| rc " "$res"/*.txt | sed 's/heads=128 //; s/q_len=1 //' | head -150
