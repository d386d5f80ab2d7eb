#!/usr/bin/env bash
# One device call for MoE prefill (builds nothing; binaries carried in .device-carry/):
# `kt-bench moe` at 512 tokens, DeepSeek-V3 in int4-g128 / int8-g64 / bf16 (repacked, AMX) and
# GGUF q4_k, DeepSeek-V2-Lite in int4-g128 and q4_k, at 16 and 15 threads; then the carried
# repacked-operator test binaries, if any (AMX paths against the references), and a sweep of the
# AMX kernel's weight prefetch (--prefetch) on V3 int4 at 16 threads, and GGUF q4_k on the AVX512
# kernel (KT_ISA=avx512: the many-token Q4_K GEMM before the AMX one) for an A/B. Most important
# cases first; each case is capped so the whole script stays under 4 minutes.
# Results: $OUT/prefill/moe.jsonl (one JSON object per case), summary.txt, tests.txt, errors.txt.
set -uo pipefail
bin=${BIN:-.device-carry}
out=${OUT:-/tmp/kt-out}/prefill; mkdir -p "$out"
secs=${SECONDS_PER_CASE:-0.5}
cap=${CASE_TIMEOUT:-45}
: > "$out/moe.jsonl"
start=$(date +%s)
for th in 16 15; do
  for c in deepseek-v3:int4:128 deepseek-v2-lite:int4:128 deepseek-v3:q4_k:0 deepseek-v2-lite:q4_k:0 \
           deepseek-v3:int8:64 deepseek-v3:bf16:0; do
    IFS=: read -r shape fmt g <<< "$c"
    extra=(); [ "$g" != 0 ] && extra=(--group "$g")
    if [ $(( $(date +%s) - start )) -gt 170 ]; then echo "skipped $c threads $th (time)" >> "$out/errors.txt"; continue; fi
    timeout "$cap" "$bin/kt-bench" moe --shape "$shape" --format "$fmt" "${extra[@]}" --tokens 512 \
      --threads "$th" --seconds "$secs" --json >> "$out/moe.jsonl" 2>>"$out/errors.txt" \
      || echo "failed or timed out: $c threads $th" >> "$out/errors.txt"
  done
done
# Q4_K as stored, the AVX512 GEMM (what an AMX CPU ran before the AMX Q4_K GEMM), 16 threads.
for shape in deepseek-v3 deepseek-v2-lite; do
  if [ $(( $(date +%s) - start )) -gt 180 ]; then echo "skipped avx512 q4_k $shape (time)" >> "$out/errors.txt"; continue; fi
  KT_ISA=avx512 timeout "$cap" "$bin/kt-bench" moe --shape "$shape" --format q4_k --tokens 512 --threads 16 \
    --seconds "$secs" --json >> "$out/moe.jsonl" 2>>"$out/errors.txt" \
    || echo "failed or timed out: avx512 q4_k $shape" >> "$out/errors.txt"
done
# The AMX kernel's weight prefetch (default 2:l1 above) on the bandwidth-bound V3 int4 case.
for pf in none 4:l1 4:l2 8:l2; do
  if [ $(( $(date +%s) - start )) -gt 200 ]; then echo "skipped prefetch $pf (time)" >> "$out/errors.txt"; continue; fi
  timeout "$cap" "$bin/kt-bench" moe --shape deepseek-v3 --format int4 --group 128 --tokens 512 --threads 16 \
    --prefetch "$pf" --seconds "$secs" --json >> "$out/moe.jsonl" 2>>"$out/errors.txt" \
    || echo "failed or timed out: prefetch $pf" >> "$out/errors.txt"
done
python3 - "$out/moe.jsonl" > "$out/summary.txt" <<'PY'
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    print(r['shape'], r.get('gate'), r['isa'], 'T=%d' % r['tokens'], 'threads=%d' % r['threads'], 'prefetch=%s' % r.get('prefetch', 'default'), '%.2f ms' % r['ms_per_call'],
          '%.2f TFLOP/s' % r['tflops'], '%.0f%% of %s peak' % (100 * r['peak_fraction'], r['peak_kind']),
          '%.0f%% of bw' % (100 * r['bandwidth_fraction']))
PY
cat "$out/summary.txt"
for t in moe_repacked_kernels moe_repacked_moe moe_q4k_amx; do
  [ -x "$bin/$t" ] && timeout 40 "$bin/$t" --test-threads 1 >> "$out/tests.txt" 2>&1
done
echo "done in $(( $(date +%s) - start )) s"
