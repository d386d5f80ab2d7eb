#!/usr/bin/env bash
# mla7 device call 1 (run from the repo root; carry .device-carry/mla7, timeout_s 300).
# bins1.tar.xz (stripped, built in worktree mla7):
#   base  = main at 4e33a0b (session start): the double-buffered TMA kernel with the late wait
#   mc    = 776a337: clusters of two row tiles, each tile's boxes fetched half by each block and
#           multicast to both; "empty" barriers (one arrival per block) before a refill
#   mcd   = mc + wgmma descriptors stepped by one add per MMA instead of rebuilt
#   mcdc  = mcd + barrier (C) replaced, for bulk-copy refills, by per-warp arrivals on the
#           buffers' "empty" barriers (only the issuing thread waits)
#   mcdc_noload = diagnostic: mcdc without cache loads after the first two tiles (wrong results)
# Tests (KT_REQUIRE_GPU=1) of mc, mcd, mcdc and kt-model's hybrid_graph with mcdc, then the
# timing example on the quick shapes interleaved twice, full runs of base and mcdc, torch once.
set -uo pipefail
here=.device-carry/mla7
res=$(mktemp -d)
save() { mkdir -p "$OUT" && tar czf "$OUT/mla7-1.tgz" -C "$res" .; }
trap save EXIT
bin=$(mktemp -d)
tar xJf "$here/bins1.tar.xz" -C "$bin"
export KT_REQUIRE_GPU=1
nvidia-smi > "$res/nvidia-smi.txt" 2>&1
for v in mcdc mcd mc; do
  timeout 40 "$bin/cuda_mla_$v" --test-threads=1 > "$res/test_cuda_mla_$v.txt" 2>&1
  echo "cuda_mla $v rc $?" >> "$res/test_cuda_mla_$v.txt"; save
done
timeout 40 "$bin/hybrid_graph_mcdc" --test-threads=1 > "$res/test_hybrid_graph_mcdc.txt" 2>&1
echo "hybrid_graph mcdc rc $?" >> "$res/test_hybrid_graph_mcdc.txt"; save
Q=("decode 64x4096" "decode 64x1024" "decode 8x4096" "decode 1x4096" "prefill 512x512")
for r in 1 2; do for v in base mc mcd mcdc mcdc_noload; do
  timeout 25 "$bin/cuda_mla_timing_$v" "${Q[@]}" > "$res/quick_${v}_$r.txt" 2>&1
  echo "quick $v $r rc $?" >> "$res/quick_${v}_$r.txt"; save
done; done
timeout 45 "$bin/cuda_mla_timing_base" decode splits prefill > "$res/full_base.txt" 2>&1; echo "full base rc $?" >> "$res/full_base.txt"; save
timeout 45 "$bin/cuda_mla_timing_mcdc" decode splits prefill > "$res/full_mcdc.txt" 2>&1; echo "full mcdc rc $?" >> "$res/full_mcdc.txt"; save
timeout 40 python3 cuda/bench_torch_mla.py > "$res/torch.txt" 2>&1; echo "torch rc $?" >> "$res/torch.txt"; save
grep -h "KT_MLA\|TORCH\|test result\|FAILED\|panicked\| rc " "$res"/*.txt | sed 's/heads=128 //; s/q_len=1 //' | head -120
