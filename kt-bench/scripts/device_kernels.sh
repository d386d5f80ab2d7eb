#!/usr/bin/env bash
# One device call for the kernel benchmarks (builds nothing; run from the repo root with the
# binaries carried in .device-carry/): machine facts, pool overhead, then kt-bench matmul and the
# ggml peer side by side on every (format, shape, tokens), all at THREADS threads.
# Results: $OUT/machine.json, $OUT/pool.json, $OUT/matmul.jsonl (kt and ggml rows interleaved).
set -uo pipefail
bin=${BIN:-.device-carry}
threads=${THREADS:-$(nproc)}
out=${OUT:-/tmp/kt-out}; mkdir -p "$out"
secs=${SECONDS_PER_CASE:-0.5}
formats=${FORMATS:-q4_K q5_K q2_K q6_K q8_0 bf16}
shapes=${SHAPES:-2048x7168 7168x2048 1408x2048 2048x1408 18432x7168}
tokens=${TOKENS:-1 512}
lscpu > "$out/lscpu.txt" 2>&1
"$bin/kt-bench" machine --threads "$threads" --json | tee "$out/machine.json"
"$bin/kt-bench" pool --threads "$threads" --json --jobs 20000 | tee "$out/pool.json"
: > "$out/matmul.jsonl"
"$bin/kt-bench" matmul --threads "$threads" --formats "${formats// /,}" --shapes "${shapes// /,}" --tokens "${tokens// /,}" \
  --seconds "$secs" --json >> "$out/matmul.jsonl" 2>>"$out/errors.txt"
for f in $formats; do for s in $shapes; do for t in $tokens; do
  # ggml's CPU backend asserts (aborts) on K-quant rows that are no multiple of 256: skip those.
  case "$f:$s" in q[2-6]_K:*x1408) continue;; esac
  "$bin/ggml_matmul" "$f" "$s" "$t" "$threads" "$secs" >> "$out/matmul.jsonl" 2>>"$out/errors.txt"
done; done; done
python3 - "$out/matmul.jsonl" <<'PY'
import json, sys
rows = [r for r in (json.loads(l) for l in open(sys.argv[1]) if l.strip()) if "skipped" not in r]
kt = {(r["format"].lower(), r["rows"], r["cols"], r["tokens"]): r for r in rows if "peer" not in r}
gg = {(r["format"].lower(), r["rows"], r["cols"], r["tokens"]): r for r in rows if "peer" in r}
print(f"{'format':6} {'shape':>11} {'tok':>4} {'kt ms':>9} {'ggml ms':>9} {'kt/ggml':>7} {'kt GB/s':>8} {'of bw':>6} {'kt GOP/s':>9} {'of pk':>6}")
for k, r in kt.items():
    g = gg.get(k)
    print(f"{k[0]:6} {str(k[1])+'x'+str(k[2]):>11} {k[3]:>4} {r['ms_per_call']:9.4f} {g['ms_per_call'] if g else float('nan'):9.4f} "
          f"{(g['ms_per_call']/r['ms_per_call']) if g else float('nan'):7.2f} {r['weight_gbps']:8.1f} {100*r['bandwidth_fraction']:5.0f}% "
          f"{r['gops']:9.1f} {100*r['peak_fraction']:5.1f}%")
PY
