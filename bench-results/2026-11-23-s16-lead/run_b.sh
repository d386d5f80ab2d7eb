#!/usr/bin/env bash
# Session 16 call B (branch s16-pf, experiment build, no CUDA): prefetch variants of the GEMV's four-stream path,
# in-process A/B (KT_GEMV_AB, call by call): 0 = L1 next row + L2 two rows (main), 1 = L1 +1 KiB / L2 +4 KiB along
# the stream, 2 = +2 / +8 KiB, 3 = as 0 with 3 lines a row a step (not 4), 4 = no L1 prefetch, L2 two rows,
# 5 = L1 next row, L2 four rows. Then the per-core compute rate: one thread, weights L2-resident (small shapes).
set -uo pipefail
E=$OUT/b; mkdir -p $E; trap 'cd $OUT && tar czf b.tgz b && rm -rf b' EXIT
B=.device-carry/s16b
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat $B/COMMIT); $(grep -m1 MHz /proc/cpuinfo)"
for r in 1 2; do for s in deepseek-v3 deepseek-v2-lite; do
  KT_GEMV_AB=0,1,2,3,4,5 timeout 100 $B/kt-bench moe --shape $s --format q4_k --tokens 1 --threads 16 --seconds 8 --json >> $E/moe.jsonl 2>>$E/errors.txt; log "moe $s round $r rc $?"; done; done
for r in 1 2; do
  timeout 60 $B/kt-bench matmul --threads 1 --resident --formats q4_K,q6_K,q8_0,q5_0,bf16 --shapes 256x2048,128x7168,7168x2048 --tokens 1 --seconds 0.3 --json 2>>$E/errors.txt | sed "s/^{/{\"t\":1,/" >> $E/gemv.jsonl
  log "gemv 1 thread round $r"
  timeout 60 $B/kt-bench matmul --threads 16 --resident --formats q4_K,q8_0 --shapes 2048x2048,7168x2048 --tokens 1 --seconds 0.3 --json 2>>$E/errors.txt | sed "s/^{/{\"t\":16,/" >> $E/gemv.jsonl
  log "gemv 16 threads round $r"
done
python3 - $E <<'PY' | tee $E/table.txt
import json, sys
E = sys.argv[1]
for l in open(E + '/moe.jsonl'):
    r = json.loads(l)
    print('moe', r['shape'], r.get('prefetch'), '%.4f ms' % r['ms_per_call'], 'w %.1f GB/s' % r['weight_gbps'], 'dram %.1f' % r['dram_gbps'])
for l in open(E + '/gemv.jsonl'):
    try: r = json.loads(l)
    except Exception: continue
    if 'skipped' in r: continue
    print('gemv t=%d' % r['t'], r['format'], f"{r['rows']}x{r['cols']}", '%.2f us' % (r['ms_per_call'] * 1e3), '%.1f GB/s' % r['weight_gbps'])
PY
log done
