#!/usr/bin/env bash
# Session 16 call C (branch s16-bf16, experiment build, no CUDA): BF16 one-token GEMV, variants taking turns call by
# call in one process (KT_GEMV_AB): 0 = adjacent 4-row tiles, next tile's rows into L1 (main); 1 = four row streams,
# L1 +1 KiB and L2 +4 KiB ahead; 2 = streams, +2 / +8 KiB; 3 = streams, L1 +1 KiB, no L2 prefetch. Two processes.
set -uo pipefail
E=$OUT/c; mkdir -p $E; trap 'cd $OUT && tar czf c.tgz c && rm -rf c' EXIT
B=.device-carry/s16c
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat $B/COMMIT)"
for r in 1 2; do
  KT_GEMV_AB=0,1,2,3 timeout 200 $B/kt-bench matmul --threads 16 --formats bf16 --shapes 2048x7168,7168x2048,1408x2048,2048x1408,18432x7168 --tokens 1 --seconds 0.4 --json 2>>$E/errors.txt | sed "s/^{/{\"round\":$r,/" >> $E/gemv.jsonl
  log "round $r"
done
python3 - $E <<'PY' | tee $E/table.txt
import json, sys, collections
g = collections.defaultdict(list)
for l in open(sys.argv[1] + '/gemv.jsonl'):
    try: r = json.loads(l)
    except Exception: continue
    g[(r['rows'], r['cols'])].append('r%d v%d %.1f' % (r['round'], r['variant'], r['weight_gbps']) + ('' if r['variant'] else ' (probe %.1f)' % r['dram_gbps']))
for k, v in g.items(): print('bf16', k, ' | '.join(v))
PY
log done
