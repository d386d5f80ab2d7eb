#!/usr/bin/env bash
# mla5 candidate (NOT run by mla5: its two device calls were spent). Run from the repo root:
#   bash .device-carry/mla5/run3.sh        (carry .device-carry/mla5; about 5 minutes)
# bins3.tar.xz: cuda_mla and hybrid_graph built with the candidate kernel
# (bench-results/2026-11-22-s5-mla5/candidate-parallel-issue.patch: each thread reads the
# block table once per key row and issues its 18 cp.async copies back to back), the
# cuda_mla_timing example with the candidate (`_new`) and the base of db43f03 (`_old`).
# Steps: the tests (KT_REQUIRE_GPU=1), then old, new, old, new timings, then torch.
# Results: $OUT/mla5-3.tar.gz; a summary on stdout.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=$(mktemp -d)
tar xJf "$here/bins3.tar.xz" -C "$bin"
res=$(mktemp -d)
export KT_REQUIRE_GPU=1
nvidia-smi > "$res/nvidia-smi.txt" 2>&1
: > "$res/tests.txt"
for t in cuda_mla hybrid_graph; do
  echo "== $t" >> "$res/tests.txt"
  timeout 60 "$bin/$t" --test-threads=1 >> "$res/tests.txt" 2>&1
  echo "$t: exit $?" | tee -a "$res/tests.txt"
done
: > "$res/timing.txt"
for round in 1 2; do
  for v in old new; do
    echo "== round $round $v" >> "$res/timing.txt"
    timeout 75 "$bin/cuda_mla_timing_$v" >> "$res/timing.txt" 2>&1
    echo "$v round $round: exit $?" | tee -a "$res/timing.txt"
  done
done
timeout 60 python3 "$here/bench_torch_mla.py" > "$res/torch.txt" 2>&1
echo "torch: exit $?" | tee -a "$res/torch.txt"
grep -h "KT_MLA\|TORCH_MLA\|round\|test result\|FAILED\|panicked" "$res/timing.txt" "$res/torch.txt" "$res/tests.txt" | head -80
mkdir -p "$OUT" && tar czf "$OUT/mla5-3.tar.gz" -C "$res" .
