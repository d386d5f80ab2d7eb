#!/usr/bin/env bash
# Session 17 call J (x17b = main + a per-call Q3_K AMX threshold, `KT_GEMV_AB` = the thresholds taking turns call by
# call in one process): where the folded AMX Q3_K kernel should take over from the AVX512 one (12 tokens, Q2_K's).
set -uo pipefail
E=$OUT/j; mkdir -p $E; trap 'cd $OUT && tar czf j.tgz j && rm -rf j' EXIT
B=/tmp/kt; mkdir -p $B && tar xJf .device-carry/s17j/bin.tar.xz -C $B
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); x17b $(cat .device-carry/s17j/COMMIT)"
m() { KT_GEMV_AB=12,8,5,2 timeout 90 $B/kt-bench moe "$@" --threads 16 --json --seconds 0 --calls 8 2>>$E/moe_err.txt >> $E/moe.jsonl; log "moe $* rc $?"; }
for r in 1 2; do
  m --shape deepseek-v3 --format q3_k --tokens 512
  m --shape deepseek-v3 --format q3_k --tokens 128
done
m --shape deepseek-v2-lite --format q3_k --tokens 512
m --shape deepseek-v2-lite --format q3_k --tokens 64
python3 - $E <<'PY' | tee $E/table.txt
import json, sys
E = sys.argv[1]
for l in open(E + '/moe.jsonl'):
    r = json.loads(l)
    print('moe', r['shape'], r['gate'], 'T=%d' % r['tokens'], r.get('prefetch'), '%.3f ms' % r['ms_per_call'])
PY
