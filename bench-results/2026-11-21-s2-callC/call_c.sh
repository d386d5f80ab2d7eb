#!/usr/bin/env bash
# Device call C (2026-11-21, session 2): MoE decode at 1 token, new (small-block GEMV prefetch) vs base
# (call B's binary), interleaved, same process-free conditions; plus the GEMV of the V2-Lite shapes.
set -uo pipefail
C=.device-carry/c
for rep in 1 2 3; do for b in kt-bench kt-bench-base; do
  for shape in deepseek-v2-lite; do
    $C/$b moe --shape $shape --format q4_k --tokens 1 --threads 16 --seconds 1 --json | sed "s/^{/{\"bin\":\"$b\",\"rep\":$rep,/" >> $OUT/moe.jsonl
  done
  $C/$b matmul --threads 16 --formats q5_0,q4_k,q8_0 --shapes 2048x1408,1408x2048 --tokens 1 --seconds 0.3 --json | sed "s/^{/{\"bin\":\"$b\",\"rep\":$rep,/" >> $OUT/matmul.jsonl
done; done
python3 - <<'PY'
import json, os
o=os.environ['OUT']
for l in open(o+'/moe.jsonl'):
    r=json.loads(l); print(r['bin'], r['rep'], r['shape'], r['gate'], r['down'], '%.4f ms' % r['ms_per_call'], '%.0f%% of %.1f GB/s' % (100*r['bandwidth_fraction'], r['dram_gbps']))
for l in open(o+'/matmul.jsonl'):
    r=json.loads(l)
    if 'ms_per_call' in r: print(r['bin'], r['rep'], r['format'], r['rows'], r['cols'], '%.1f us' % (1000*r['ms_per_call']), '%.0f%%' % (100*r['bandwidth_fraction']))
PY
