#!/usr/bin/env bash
# mla11's one device call (run from the repo root; carry .device-carry/mla11, timeout_s 240).
# bins.tar.xz (stripped; built in worktree mla11 at 88aadfa, whose MLA sources equal cd4ad61's):
#   main = the committed kernel (session 10's ssle: the owner issues its P V, then stores P and publishes)
#   sse  = the same with P stored (stmatrix) and published before the owner's P V is issued
#   sset = sse + the owner reads the block table for tile u + 2 before waiting for its scores
# Order: quick round 1, tests + memcheck of sse and sset, quick rounds 2..4 (rotated order),
# hybrid_graph, two more shapes, torch. Stops starting work at 215 s.
set -uo pipefail
here=.device-carry/mla11
res=$(mktemp -d)
save() { mkdir -p "$OUT" && tar czf "$OUT/mla11.tgz" -C "$res" .; }
trap save EXIT
bin=$(mktemp -d)
tar xJf "$here/bins.tar.xz" -C "$bin"
export KT_REQUIRE_GPU=1 KT_TEST_FIXTURES=kt-kernels/tests/fixtures
nvidia-smi > "$res/nvidia-smi.txt" 2>&1
late() { (( SECONDS > ${1:-215} )); }
Q=("decode 64x4096" "decode 64x1024" "decode 8x4096" "decode 1x4096" "prefill 512x512")
quick() { # name round
  late && return 0
  timeout 20 "$bin/cuda_mla_timing_$1" "${Q[@]}" > "$res/quick_${1}_$2.txt" 2>&1
  echo "quick $1 $2 rc $? at ${SECONDS}s" >> "$res/quick_${1}_$2.txt"; save
}
for v in main sse sset; do quick $v 1; done
for v in sse sset; do
  timeout 40 "$bin/cuda_mla_$v" --test-threads=1 > "$res/test_cuda_mla_$v.txt" 2>&1
  echo "cuda_mla $v rc $? at ${SECONDS}s" >> "$res/test_cuda_mla_$v.txt"; save
done
san=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer 2>/dev/null | head -n 1)
for v in sse sset; do
  [ -n "$san" ] && ! late 150 && { timeout 40 $san --tool memcheck --error-exitcode 9 "$bin/cuda_mla_$v" --test-threads=1 decode_batches_of_different_lengths > "$res/memcheck_$v.txt" 2>&1; echo "memcheck $v rc $? at ${SECONDS}s" >> "$res/memcheck_$v.txt"; save; }
done
for v in sset main sse; do quick $v 2; done
for v in sse sset main; do quick $v 3; done
for v in main sset sse; do quick $v 4; done
for v in sse sset; do
  late 220 && break
  timeout 20 "$bin/hybrid_graph_$v" --test-threads=1 > "$res/test_hybrid_graph_$v.txt" 2>&1
  echo "hybrid_graph $v rc $? at ${SECONDS}s" >> "$res/test_hybrid_graph_$v.txt"; save
done
F=("decode 32x4096" "decode 16x16384")
for v in main sse; do
  late 222 && break
  timeout 10 "$bin/cuda_mla_timing_$v" "${F[@]}" > "$res/more_$v.txt" 2>&1; echo "more $v rc $?" >> "$res/more_$v.txt"; save
done
echo "elapsed $SECONDS s" > "$res/elapsed.txt"; save
grep -h "KT_MLA\|test result\|FAILED\|panicked\|ERROR SUMMARY\| rc \|elapsed" "$res"/*.txt | sed 's/heads=128 //; s/q_len=1 //; s/kernel=Wgmma //' | head -150
