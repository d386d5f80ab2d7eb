#!/usr/bin/env bash
# mla5 device call 2 (run from the repo root). bins2.tar.xz: cuda_mla, hybrid_graph and
# cuda_mla_timing_x of an experiment build whose library picks the sm90 kernel by the
# KT_MLA_X env var (kt_mla_attn_sm90_bf16 = 2 score chains; kt_x_c1/c3/c4 = 1/3/4 chains;
# diagnostics kt_x_noload = no cache loads after the first three tiles, kt_x_nos = no score
# MMAs after the first tile), plus cuda_mla_timing_old (db43f03).
# Steps: cuda_mla for every candidate, the variants timed in one process (3 interleaved
# rounds), the full timing of the base and the new default, torch, hybrid_graph per candidate.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=$(mktemp -d)
tar xJf "$here/bins2.tar.xz" -C "$bin"
res=$(mktemp -d)
export KT_REQUIRE_GPU=1
nvidia-smi > "$res/nvidia-smi.txt" 2>&1
cands="kt_mla_attn_sm90_bf16 kt_x_c1 kt_x_c3 kt_x_c4"
: > "$res/tests.txt"
for v in $cands; do
  echo "== cuda_mla KT_MLA_X=$v" >> "$res/tests.txt"
  KT_MLA_X=$v timeout 40 "$bin/cuda_mla" --test-threads=1 >> "$res/tests.txt" 2>&1
  echo "cuda_mla $v: exit $?" | tee -a "$res/tests.txt"
done
KT_MLA_QUICK=kt_mla_attn_sm90_bf16,kt_x_c1,kt_x_c3,kt_x_c4,kt_x_noload,kt_x_nos timeout 100 "$bin/cuda_mla_timing_x" > "$res/variants.txt" 2>&1
echo "variants: exit $?" | tee -a "$res/variants.txt"
: > "$res/timing.txt"
for v in old x; do
  echo "== full $v" >> "$res/timing.txt"
  timeout 95 "$bin/cuda_mla_timing_$v" >> "$res/timing.txt" 2>&1
  echo "full $v: exit $?" | tee -a "$res/timing.txt"
done
timeout 60 python3 "$here/bench_torch_mla.py" > "$res/torch.txt" 2>&1
echo "torch: exit $?" | tee -a "$res/torch.txt"
for v in $cands; do
  echo "== hybrid_graph KT_MLA_X=$v" >> "$res/tests.txt"
  KT_MLA_X=$v timeout 45 "$bin/hybrid_graph" --test-threads=1 >> "$res/tests.txt" 2>&1
  echo "hybrid_graph $v: exit $?" | tee -a "$res/tests.txt"
done
grep -h "KT_MLA\|TORCH_MLA\|test result\|FAILED\|panicked" "$res/variants.txt" "$res/timing.txt" "$res/torch.txt" "$res/tests.txt" | head -120
mkdir -p "$OUT" && tar czf "$OUT/mla5-2.tar.gz" -C "$res" .
