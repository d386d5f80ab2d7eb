#!/usr/bin/env bash
# Session 13, avx2s13: 1-thread A/B on the dev VM (base = main 65ed4fc's kt-bench as base-kt-bench,
# new = branch avx2s13 as new-kt-bench, both in the worktree root), interleaved x3:
# the one-token GEMV cache-resident (best of the run), and the V2-Lite MoE layer at T=1 / T=64
# (CPU time per call). Usage: bash ab_1t.sh OUT (from the worktree root).
set -u
OUT=${1:?out dir}
mkdir -p "$OUT"
export KT_ISA=avx2
{ date -u; uptime; } | tee "$OUT/when.txt"
for i in 1 2 3; do
  for v in base new; do
    ./$v-kt-bench matmul --tokens 1 --threads 1 --resident --seconds 0.3 \
      --formats q5_0,q2_k,q6_k,q5_k,bf16,q4_k,q8_0 --shapes 7168x2048,2048x7168,1408x2048,2048x1408 \
      > "$OUT/gemv_res_${v}_$i.txt" 2>&1
    echo "gemv $v #$i done [load $(cut -d' ' -f1 /proc/loadavg)]"
  done
done
for T in 1 64; do
  for i in 1 2 3; do
    for v in base new; do
      f="$OUT/moe_1t_T${T}_${v}_$i.json"
      ./$v-kt-bench moe --shape deepseek-v2-lite --format q4_k --tokens $T --threads 1 --json --cpu-time --seconds 1 > "$f" 2>/dev/null
      echo "moe 1t T=$T $v #$i: $(python3 bench-results/2026-11-22-s11-avx2s11/moe_frac.py "$f" | cut -d: -f2-) [load $(cut -d' ' -f1 /proc/loadavg)]"
    done
  done
done
{ date -u; uptime; } | tee -a "$OUT/when.txt"
