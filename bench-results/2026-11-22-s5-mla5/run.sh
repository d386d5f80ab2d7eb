#!/usr/bin/env bash
# mla5 device call (run from the repo root): the cuda_mla tests and kt-model's hybrid_graph
# (when carried; it reads rules/ from the repo root) with KT_REQUIRE_GPU=1, then the MLA
# timing of the base kernel (db43f03, `_old`) and the new one interleaved (old, new, old,
# new) in this one call, then torch's two-bmm baseline.
# Results: $OUT/mla5.tar.gz (tests.txt, timing.txt, torch.txt, nvidia-smi.txt).
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=$(mktemp -d)
tar xJf "$here/bins.tar.xz" -C "$bin"
res=$(mktemp -d)
export KT_REQUIRE_GPU=1
nvidia-smi > "$res/nvidia-smi.txt" 2>&1
: > "$res/tests.txt"
for t in cuda_mla hybrid_graph; do
  [ -x "$bin/$t" ] || continue
  echo "== $t" >> "$res/tests.txt"
  timeout 150 "$bin/$t" --test-threads=1 >> "$res/tests.txt" 2>&1
  echo "$t: exit $?" | tee -a "$res/tests.txt"
done
: > "$res/timing.txt"
for round in 1 2; do
  for v in old new; do
    echo "== round $round $v" >> "$res/timing.txt"
    timeout 60 "$bin/cuda_mla_timing_$v" >> "$res/timing.txt" 2>&1
    echo "$v round $round: exit $?" | tee -a "$res/timing.txt"
  done
done
timeout 90 python3 "$here/bench_torch_mla.py" > "$res/torch.txt" 2>&1
echo "torch: exit $?" | tee -a "$res/torch.txt"
grep -h "KT_MLA\|TORCH_MLA\|round\|test result\|FAILED\|panicked" "$res/timing.txt" "$res/torch.txt" "$res/tests.txt" | head -90
mkdir -p "$OUT" && tar czf "$OUT/mla5.tar.gz" -C "$res" .
