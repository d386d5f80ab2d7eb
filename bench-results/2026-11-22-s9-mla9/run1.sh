#!/usr/bin/env bash
# mla9 device call 1 (run from the repo root; carry .device-carry/mla9, timeout_s 300).
# bins1.tar.xz (stripped, built in worktree mla9):
#   base  = main at c6bb6aa (session start; the pb kernel of session 7)
#   alt   = warpgroups alternate tiles: the owner computes all 64 keys' scores (m64n64, query
#           read once per tile) and its softmax, P V of its output half from registers; the
#           other warpgroup adds its half from P in shared memory
#   altnl = diagnostic: alt without cache loads after the first two tiles (wrong results)
# Tests of alt (KT_REQUIRE_GPU=1), then the timing example on the quick shapes interleaved
# twice, full runs of base and alt.
set -uo pipefail
here=.device-carry/mla9
res=$(mktemp -d)
save() { mkdir -p "$OUT" && tar czf "$OUT/mla9-1.tgz" -C "$res" .; }
trap save EXIT
bin=$(mktemp -d)
tar xJf "$here/bins1.tar.xz" -C "$bin"
export KT_REQUIRE_GPU=1
nvidia-smi > "$res/nvidia-smi.txt" 2>&1
timeout 60 "$bin/cuda_mla_alt" --test-threads=1 > "$res/test_cuda_mla_alt.txt" 2>&1
echo "cuda_mla alt rc $?" >> "$res/test_cuda_mla_alt.txt"; save
timeout 40 "$bin/hybrid_graph_alt" --test-threads=1 > "$res/test_hybrid_graph_alt.txt" 2>&1
echo "hybrid_graph alt rc $?" >> "$res/test_hybrid_graph_alt.txt"; save
Q=("decode 64x4096" "decode 64x1024" "decode 8x4096" "decode 1x4096" "prefill 512x512")
for r in 1 2; do for v in base alt altnl; do
  timeout 20 "$bin/cuda_mla_timing_$v" "${Q[@]}" > "$res/quick_${v}_$r.txt" 2>&1
  echo "quick $v $r rc $?" >> "$res/quick_${v}_$r.txt"; save
done; done
F=("decode 32x4096" "decode 16x16384" "splits" "prefill 1024x4096")
for v in base alt; do
  timeout 35 "$bin/cuda_mla_timing_$v" "${F[@]}" > "$res/full_$v.txt" 2>&1; echo "full $v rc $?" >> "$res/full_$v.txt"; save
done
grep -h "KT_MLA\|test result\|FAILED\|panicked\| rc " "$res"/*.txt | sed 's/heads=128 //; s/q_len=1 //' | head -150
