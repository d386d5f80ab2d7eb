#!/usr/bin/env bash
# avx2s11's own A/B on the shared dev VM (five helpers building: load 4-7), base = main at
# cd4ad61 (base-kt-bench), new = the branch (new-kt-bench), interleaved x3.
# 1-thread figures (resident GEMV, MoE CPU time per call) are the trustworthy ones here.
set -u
cd "$(dirname "$0")/../.."
OUT=bench-results/2026-11-22-s11-avx2s11/loaded
mkdir -p "$OUT"
export KT_ISA=avx2
for i in 1 2 3; do
  for v in base new; do
    ./$v-kt-bench matmul --tokens 1 --threads 1 --resident --formats q4_k,q5_0,q5_k,q2_k,q6_k,q8_0 \
      --shapes 1408x2048,2048x1408,7168x2048,2048x7168 --seconds 0.4 > "$OUT/gemv_resident_1t_${v}_$i.txt" 2>&1
    for T in 1 64; do
      ./$v-kt-bench moe --shape deepseek-v2-lite --format q4_k --tokens $T --threads 1 --json --cpu-time \
        --seconds 1 2>/dev/null | tail -1 > "$OUT/moe_T${T}_1t_${v}_$i.json"
    done
    ./$v-kt-bench moe --shape deepseek-v2-lite --format q4_k --tokens 1 --threads 2 --json --cpu-time \
      --seconds 1 2>/dev/null | tail -1 > "$OUT/moe_T1_2t_${v}_$i.json"
    uptime >> "$OUT/uptime.txt"
  done
done
