#!/usr/bin/env bash
# mla6 candidate (NOT run by mla6: its two device calls were spent). From the repo root:
#   bash .device-carry/mla6/run3.sh     (carry .device-carry/mla6; about 3 minutes, timeout_s 300)
# late = branch mla6's kernel + bench-results/2026-11-22-s6-mla6/candidate-late-wait.patch (a TMA
# tile t + 1 is waited for after P V(t) is issued, not before the barrier: its copies also get the
# P V time). db = the branch's kernel, old = fc3b061. Tests of late first, then db / late
# interleaved (quick shapes), then full old and late. Results: $OUT/mla6-3.tgz.
set -uo pipefail
here=.device-carry/mla6
res=$(mktemp -d)
save() { mkdir -p "$OUT" && tar czf "$OUT/mla6-3.tgz" -C "$res" .; }
trap save EXIT
bin=$(mktemp -d)
tar xJf "$here/bins3.tar.xz" -C "$bin"
export KT_REQUIRE_GPU=1
nvidia-smi > "$res/nvidia-smi.txt" 2>&1
timeout 35 "$bin/cuda_mla_late" --test-threads=1 > "$res/test_cuda_mla_late.txt" 2>&1
echo "cuda_mla late rc $?" | tee -a "$res/test_cuda_mla_late.txt"
timeout 35 "$bin/hybrid_graph_late" --test-threads=1 > "$res/test_hybrid_graph_late.txt" 2>&1
echo "hybrid_graph late rc $?" | tee -a "$res/test_hybrid_graph_late.txt"; save
Q=("decode 64x4096" "decode 64x1024" "decode 8x4096" "decode 1x4096" "prefill 512x512")
for r in 1 2; do for v in db late; do
  timeout 25 "$bin/cuda_mla_timing_$v" "${Q[@]}" > "$res/quick_${v}_$r.txt" 2>&1
  echo "quick $v $r rc $?" >> "$res/quick_${v}_$r.txt"; save
done; done
timeout 55 "$bin/cuda_mla_timing_old" > "$res/full_old.txt" 2>&1; echo "full old rc $?" | tee -a "$res/full_old.txt"; save
timeout 50 "$bin/cuda_mla_timing_late" decode splits prefill > "$res/full_late.txt" 2>&1; echo "full late rc $?" | tee -a "$res/full_late.txt"; save
grep -h "KT_MLA\|test result\|FAILED\|panicked\| rc " "$res"/*.txt | sed 's/heads=128 //; s/q_len=1 //' | head -80
