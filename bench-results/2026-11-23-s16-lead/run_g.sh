#!/usr/bin/env bash
# Session 16 call G (branch s16-rows, experiment build, no CUDA): rows per decode item (plan::GEMV_ROW_BLOCK, 128 on
# main) at 128 / 256 / 512 in-process (KT_GEMV_AB; the halving rule keeps at least 64 items a phase, so V2-Lite stays
# at 128 and 512 only reaches V3's down projection); V3 Q4_K T=1, three processes.
set -uo pipefail
E=$OUT/g; mkdir -p $E; trap 'cd $OUT && tar czf g.tgz g && rm -rf g' EXIT
B=.device-carry/s16g
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat $B/COMMIT)"
for r in 1 2 3; do
  KT_GEMV_AB=128,256,512 timeout 100 $B/kt-bench moe --shape deepseek-v3 --format q4_k --tokens 1 --threads 16 --seconds 8 --json >> $E/moe.jsonl 2>>$E/errors.txt; log "moe round $r rc $?"
done
python3 - $E <<'PY' | tee $E/table.txt
import json, sys
for l in open(sys.argv[1] + '/moe.jsonl'):
    r = json.loads(l)
    print('moe', r['shape'], r.get('prefetch'), '%.4f ms' % r['ms_per_call'], 'w %.1f GB/s' % r['weight_gbps'], 'dram %.1f' % r['dram_gbps'])
PY
log done
