#!/usr/bin/env bash
# mla9 follow-up for the lead (NOT run by mla9; its two calls are spent). From the repo root:
#   bash .device-carry/mla9/run3.sh    (carry .device-carry/mla9; about 2 minutes, timeout_s 200)
# final = branch mla9's kernel (a31e706; sm_90a SASS identical to call 2's f1), base = main at c6bb6aa.
# Tests of the exact final binaries, then base / final interleaved twice on the quick shapes and a
# full run of final. Results: $OUT/mla9-3.tgz.
set -uo pipefail
here=.device-carry/mla9
res=$(mktemp -d)
save() { mkdir -p "$OUT" && tar czf "$OUT/mla9-3.tgz" -C "$res" .; }
trap save EXIT
bin=$(mktemp -d)
tar xJf "$here/bins3.tar.xz" -C "$bin"
export KT_REQUIRE_GPU=1
timeout 40 "$bin/cuda_mla_final" --test-threads=1 > "$res/test_cuda_mla_final.txt" 2>&1
echo "cuda_mla final rc $?" >> "$res/test_cuda_mla_final.txt"; save
timeout 30 "$bin/hybrid_graph_final" --test-threads=1 > "$res/test_hybrid_graph_final.txt" 2>&1
echo "hybrid_graph final rc $?" >> "$res/test_hybrid_graph_final.txt"; save
Q=("decode 64x4096" "decode 64x1024" "decode 8x4096" "decode 1x4096" "prefill 512x512")
for r in 1 2; do for v in base final; do
  timeout 20 "$bin/cuda_mla_timing_$v" "${Q[@]}" > "$res/quick_${v}_$r.txt" 2>&1
  echo "quick $v $r rc $?" >> "$res/quick_${v}_$r.txt"; save
done; done
F=("decode 32x4096" "decode 16x16384" "splits" "prefill 1024x4096")
timeout 45 "$bin/cuda_mla_timing_final" "${F[@]}" > "$res/full_final.txt" 2>&1; echo "full final rc $?" >> "$res/full_final.txt"; save
grep -h "KT_MLA\|test result\|FAILED\|panicked\| rc " "$res"/*.txt | sed 's/heads=128 //; s/q_len=1 //' | head -80
