#!/usr/bin/env bash
# Session 16 call F (branch s16-q8amx, experiment build, no CUDA): the AMX Q8_0 GEMM at 512 tokens with a software
# prefetch of the A tiles' activation rows P blocks ahead (KT_GEMV_AB=0,2,4,8: P, 0 = none, main), in-process A/B;
# Q4_K (which the knob does not touch) as the null control. Two processes.
set -uo pipefail
E=$OUT/f; mkdir -p $E; trap 'cd $OUT && tar czf f.tgz f && rm -rf f' EXIT
B=.device-carry/s16f
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat $B/COMMIT)"
for r in 1 2; do
  KT_GEMV_AB=0,2,4,8 timeout 200 $B/kt-bench matmul --threads 16 --formats q8_0,q4_K --shapes 2048x7168,7168x2048,1408x2048,2048x1408,18432x7168 --tokens 512 --seconds 0.5 --json 2>>$E/errors.txt | sed "s/^{/{\"round\":$r,/" >> $E/gemm.jsonl
  log "round $r"
done
python3 - $E <<'PY' | tee $E/table.txt
import json, sys, collections
g = collections.defaultdict(list)
for l in open(sys.argv[1] + '/gemm.jsonl'):
    try: r = json.loads(l)
    except Exception: continue
    if 'skipped' in r: continue
    g[(r['format'], r['rows'], r['cols'])].append('r%d P%d %.3f ms %.0f%%' % (r['round'], r['variant'], r['ms_per_call'], 100 * r['peak_fraction']))
for k, v in g.items(): print(k, ' | '.join(v))
PY
log done
