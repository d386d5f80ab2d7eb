#!/usr/bin/env bash
# Session 16 call H (branch s16-rows, experiment build, no CUDA): decode items, in-process (KT_GEMV_AB=R*1000+M: items
# start at R rows, halved while a phase has fewer than M items; main = 128064). V2-Lite T=1: 128064 / 512032 (256-row
# items) / 512016 (512); V3 T=1 and T=8: 128064 / 512064 (gate/up 256, down 512) / 512032 (512 both). Three processes.
set -uo pipefail
E=$OUT/h; mkdir -p $E; trap 'cd $OUT && tar czf h.tgz h && rm -rf h' EXIT
B=.device-carry/s16h
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat $B/COMMIT)"
for r in 1 2 3; do
  KT_GEMV_AB=128064,512032,512016 timeout 100 $B/kt-bench moe --shape deepseek-v2-lite --format q4_k --tokens 1 --threads 16 --seconds 6 --json >> $E/moe.jsonl 2>>$E/errors.txt; log "v2l round $r rc $?"
  KT_GEMV_AB=128064,512064,512032 timeout 100 $B/kt-bench moe --shape deepseek-v3 --format q4_k --tokens 1 --threads 16 --seconds 6 --json >> $E/moe.jsonl 2>>$E/errors.txt; log "v3 round $r rc $?"
  KT_GEMV_AB=128064,512064,512032 timeout 100 $B/kt-bench moe --shape deepseek-v3 --format q4_k --tokens 8 --threads 16 --seconds 6 --json >> $E/moe.jsonl 2>>$E/errors.txt; log "v3 T=8 round $r rc $?"
done
python3 - $E <<'PY' | tee $E/table.txt
import json, sys
for l in open(sys.argv[1] + '/moe.jsonl'):
    r = json.loads(l)
    print('moe', r['shape'], 'T=%d' % r['tokens'], r.get('prefetch'), '%.4f ms' % r['ms_per_call'], 'w %.1f GB/s' % r['weight_gbps'], 'dram %.1f' % r['dram_gbps'])
PY
log done
