#!/usr/bin/env bash
# One device call for the CPU MoE operator (builds nothing; binaries carried in .device-carry/):
# `kt-bench moe` at the DeepSeek-V3 and V2-Lite layer shapes, decode (1 token) and prefill
# (512 tokens), at THREADS threads. Results: $OUT/moe.jsonl.
set -uo pipefail
bin=${BIN:-.device-carry}
threads=${THREADS:-$(nproc)}
out=${OUT:-/tmp/kt-out}; mkdir -p "$out"
secs=${SECONDS_PER_CASE:-1}
: > "$out/moe.jsonl"
for shape in deepseek-v3 deepseek-v2-lite; do for t in ${TOKENS:-1 512}; do for th in $threads; do
  "$bin/kt-bench" moe --shape "$shape" --format q4_k --tokens "$t" --threads "$th" --seconds "$secs" --json | tee -a "$out/moe.jsonl"
done; done; done
