#!/usr/bin/env bash
# Session 17 call L (x17c = main + a per-call Q2_K AMX threshold, `KT_GEMV_AB` = the thresholds taking turns call by
# call in one process): where the folded AMX Q2_K kernel should take over from the AVX512 one (12 tokens).
set -uo pipefail
E=$OUT/l; mkdir -p $E; trap 'cd $OUT && tar czf l.tgz l && rm -rf l' EXIT
B=/tmp/kt; mkdir -p $B && tar xJf .device-carry/s17l/bin.tar.xz -C $B
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); x17c $(cat .device-carry/s17l/COMMIT)"
m() { KT_GEMV_AB=12,8,5,2 timeout 90 $B/kt-bench moe "$@" --threads 16 --json --seconds 0 --calls 8 2>>$E/moe_err.txt >> $E/moe.jsonl; log "moe $* rc $?"; }
for r in 1 2; do
  m --shape deepseek-v3 --format q2_k --tokens 512
  m --shape deepseek-v3 --format q2_k --tokens 128
done
m --shape deepseek-v2-lite --format q2_k --tokens 512
m --shape deepseek-v2-lite --format q2_k --tokens 64
python3 - $E <<'PY' | tee $E/table.txt
import json, sys
E = sys.argv[1]
for l in open(E + '/moe.jsonl'):
    r = json.loads(l)
    print('moe', r['shape'], r['gate'], 'T=%d' % r['tokens'], r.get('prefetch'), '%.3f ms' % r['ms_per_call'])
PY
