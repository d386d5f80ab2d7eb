#!/usr/bin/env bash
# mla10 device call 2 (run from the repo root; carry .device-carry/mla10, timeout_s 270).
# bins2.tar.xz (stripped; built in worktree mla10 with cuda/mla_attn_sm90.cu's kVar set per binary):
#   main = main at 7d522c4 (session start);  ts = call 1's best (kVar 33: table a tile ahead +
#   trimmed softmax);  s = trimmed softmax alone (32);  ss = s + P stored with stmatrix (160);
#   sl = s + the owner's P V issued before P is stored and published (288);  ssl = s + both (416);
#   ssle = ssl + evict-first L2 hint on the tile copies (424);  tssl = ssl + table ahead (417);
#   sslp = ssl + the even head-half block prefetches tile u + 2 into L2 (one 72 KiB bulk
#          prefetch) when its rope box is issued (1440)
#   (ssl and ssle are built from the knob-free sources folded_ssl.cu / folded_ssle.cu, the
#    candidates for the commit; the others from mla_attn_sm90.cu with kVar set)
#   snl = diagnostic: ssl without bulk copies after each warpgroup's first tile (928, results wrong)
# Tests (KT_REQUIRE_GPU=1): cuda_mla of ssl, s, ssle, hybrid_graph of ssl, ssle; torch once; the
# quick shapes (all once, the main candidates twice, interleaved); a few more shapes. Stops
# starting timing runs at 232 s.
set -uo pipefail
here=.device-carry/mla10
res=$(mktemp -d)
save() { mkdir -p "$OUT" && tar czf "$OUT/mla10-2.tgz" -C "$res" .; }
trap save EXIT
bin=$(mktemp -d)
tar xJf "$here/bins2.tar.xz" -C "$bin"
export KT_REQUIRE_GPU=1
nvidia-smi > "$res/nvidia-smi.txt" 2>&1
late() { (( SECONDS > 232 )); }
declare -A ok=()
for v in ssl s ssle; do
  timeout 40 "$bin/cuda_mla_$v" --test-threads=1 > "$res/test_cuda_mla_$v.txt" 2>&1
  rc=$?; echo "cuda_mla $v rc $rc" >> "$res/test_cuda_mla_$v.txt"; save
  [[ $rc == 124 || $rc == 137 ]] && ok[$v]=0
done
for v in ssl ssle; do
  timeout 30 "$bin/hybrid_graph_$v" --test-threads=1 > "$res/test_hybrid_graph_$v.txt" 2>&1
  echo "hybrid_graph $v rc $?" >> "$res/test_hybrid_graph_$v.txt"; save
done
timeout 25 python3 cuda/bench_torch_mla.py > "$res/torch.txt" 2>&1; echo "torch rc $?" >> "$res/torch.txt"; save
Q=("decode 64x4096" "decode 64x1024" "decode 8x4096" "decode 1x4096" "prefill 512x512")
quick() { # name round
  [[ ${ok[$1]:-1} == 1 ]] || return 0; late && return 0
  timeout 15 "$bin/cuda_mla_timing_$1" "${Q[@]}" > "$res/quick_${1}_$2.txt" 2>&1
  rc=$?; echo "quick $1 $2 rc $rc" >> "$res/quick_${1}_$2.txt"; save
  [[ $rc == 124 || $rc == 137 ]] && ok[$1]=0
}
for v in main ts s ssl ssle tssl sslp snl ss sl; do quick $v 1; done
for v in main s ssl ssle; do quick $v 2; done
late || { timeout 30 "$bin/hybrid_graph_s" --test-threads=1 > "$res/test_hybrid_graph_s.txt" 2>&1; echo "hybrid_graph s rc $?" >> "$res/test_hybrid_graph_s.txt"; save; }
F=("decode 32x4096" "decode 16x16384")
for v in main ssl; do
  late && break
  timeout 12 "$bin/cuda_mla_timing_$v" "${F[@]}" > "$res/more_$v.txt" 2>&1; echo "more $v rc $?" >> "$res/more_$v.txt"; save
done
echo "elapsed $SECONDS s" > "$res/elapsed.txt"; save
grep -h "KT_MLA\|TORCH\|torch\|test result\|FAILED\|panicked\| rc \|elapsed" "$res"/*.txt | sed 's/heads=128 //; s/q_len=1 //' | head -150
