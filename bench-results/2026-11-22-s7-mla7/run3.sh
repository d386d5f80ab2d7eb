#!/usr/bin/env bash
# mla7 candidate, NOT run by mla7 (its two device calls were spent). From the repo root:
#   bash .device-carry/mla7/run3.sh     (carry .device-carry/mla7; about 2.5 minutes, timeout_s 240)
# tp = the branch's kernel (pb) + candidate-table-ahead.patch: thread 0 reads the block table entry
# of tile t + 3 right after issuing tile t + 2's copies, so the refill at barrier (C) has no global
# load in its path (the read's latency passes under the next scores). base = main at 4e33a0b,
# pb = the branch's kernel. Tests of tp first, then base / pb / tp interleaved twice on the quick
# shapes, a full run of tp, torch. Results: $OUT/mla7-3.tgz. Apply the patch (`git apply`, only
# cuda/mla_attn_sm90.cu changes) if cuda_mla and hybrid_graph pass and tp beats pb in both rounds.
set -uo pipefail
here=.device-carry/mla7
res=$(mktemp -d)
save() { mkdir -p "$OUT" && tar czf "$OUT/mla7-3.tgz" -C "$res" .; }
trap save EXIT
bin=$(mktemp -d)
tar xJf "$here/bins3.tar.xz" -C "$bin"
export KT_REQUIRE_GPU=1
nvidia-smi > "$res/nvidia-smi.txt" 2>&1
timeout 30 "$bin/cuda_mla_tp" --test-threads=1 > "$res/test_cuda_mla_tp.txt" 2>&1
echo "cuda_mla tp rc $?" >> "$res/test_cuda_mla_tp.txt"; save
timeout 25 "$bin/hybrid_graph_tp" --test-threads=1 > "$res/test_hybrid_graph_tp.txt" 2>&1
echo "hybrid_graph tp rc $?" >> "$res/test_hybrid_graph_tp.txt"; save
Q=("decode 64x4096" "decode 64x1024" "decode 8x4096" "decode 1x4096" "prefill 512x512")
for r in 1 2; do for v in base pb tp; do
  timeout 20 "$bin/cuda_mla_timing_$v" "${Q[@]}" > "$res/quick_${v}_$r.txt" 2>&1
  echo "quick $v $r rc $?" >> "$res/quick_${v}_$r.txt"; save
done; done
F=("decode 32x4096" "decode 16x16384" "splits" "prefill 1024x4096")
timeout 40 "$bin/cuda_mla_timing_tp" "${F[@]}" > "$res/full_tp.txt" 2>&1; echo "full tp rc $?" >> "$res/full_tp.txt"; save
timeout 25 python3 cuda/bench_torch_mla.py > "$res/torch.txt" 2>&1; echo "torch rc $?" >> "$res/torch.txt"; save
grep -h "KT_MLA\|TORCH\|test result\|FAILED\|panicked\| rc " "$res"/*.txt | sed 's/heads=128 //; s/q_len=1 //' | head -80
