#!/usr/bin/env bash
# Session 17 call M (x17d = main + a per-call Q5_0 AMX threshold, `KT_GEMV_AB` = the thresholds taking turns call by
# call in one process): where the small-block AMX kernel should take over from the AVX512 one for V2-Lite's Q5_0 down
# (9 tokens, as Q8_0's).
set -uo pipefail
E=$OUT/m; mkdir -p $E; trap 'cd $OUT && tar czf m.tgz m && rm -rf m' EXIT
B=/tmp/kt; mkdir -p $B && tar xJf .device-carry/s17m/bin.tar.xz -C $B
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); x17d $(cat .device-carry/s17m/COMMIT)"
m() { KT_GEMV_AB=9,6,4,2,17 timeout 90 $B/kt-bench moe "$@" --threads 16 --json --seconds 0 --calls 10 2>>$E/moe_err.txt >> $E/moe.jsonl; log "moe $* rc $?"; }
for r in 1 2; do
  for t in 32 64 128 512; do m --shape deepseek-v2-lite --format q4_k --tokens $t; done
done
python3 - $E <<'PY' | tee $E/table.txt
import json, sys
for l in open(sys.argv[1] + '/moe.jsonl'):
    r = json.loads(l)
    print('moe', r['shape'], r['gate'], r['down'], 'T=%d' % r['tokens'], r.get('prefetch'), '%.3f ms' % r['ms_per_call'])
PY
