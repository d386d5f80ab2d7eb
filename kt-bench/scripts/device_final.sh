#!/usr/bin/env bash
# One device call after a day's merges (builds nothing; binaries in .device-carry/): GEMM at 512
# tokens vs ggml (via device_kernels.sh), the MoE layer in the repacked AMX formats and GGUF Q4_K,
# and the CPU engine's decode on the built-in synthetic default. Results under $OUT.
set -uo pipefail
bin=${BIN:-.device-carry}; out=${OUT:-/tmp/kt-out}; mkdir -p "$out"
THREADS=16 FORMATS="q4_K q5_K q2_K q6_K q8_0" SHAPES="2048x7168 7168x2048" TOKENS=512 SECONDS_PER_CASE=0.3 \
  bash "$(dirname "$0")/device_kernels.sh"
: > "$out/moe.jsonl"
for shape in deepseek-v3 deepseek-v2-lite; do for f in int4:128 int8:64 q4_k:0; do for t in 1 512; do
  fmt=${f%%:*}; g=${f##*:}; extra=(); [ "$g" != 0 ] && extra=(--group "$g")
  "$bin/kt-bench" moe --shape "$shape" --format "$fmt" "${extra[@]}" --tokens "$t" --threads 16 --seconds 1 --json >> "$out/moe.jsonl" 2>>"$out/errors.txt"
done; done; done
python3 -c "
import json
for l in open('$out/moe.jsonl'):
    r=json.loads(l); print(r['shape'], r.get('format', r.get('gate')), r['tokens'], '%.3f ms' % r['ms_per_call'], '%.0f tok/s' % r['tokens_per_s'], '%.2f TFLOP/s' % r['tflops'], '%.0f%% of bw' % (100*r['bandwidth_fraction']))"
"$bin/kt-bench" decode --threads 16 --json | tee "$out/decode.json"
