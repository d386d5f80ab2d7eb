#!/usr/bin/env bash
# Session 17 call K (main at COMMIT = s17k: Q3_K on AMX from 5 tokens): the AMX / MoE / matmul tests, and the V3 / V2-Lite
# Q3_K_M layers at 512 and 64 tokens once each for the record.
set -uo pipefail
E=$OUT/k; mkdir -p $E/tests; trap 'cd $OUT && tar czf k.tgz k && rm -rf k' EXIT
B=/tmp/kt; mkdir -p $B && tar xJf .device-carry/s17k/bin.tar.xz -C $B
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s17k/COMMIT)"
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures
for n in $(ls $B/tests); do
  timeout 120 $B/tests/$n --test-threads 16 > $E/tests/$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/tests/$n.txt | tail -1)"; done
grep -h -E "FAILED|panicked" $E/tests/*.txt | head -20
m() { timeout 60 $B/kt-bench moe "$@" --threads 16 --json 2>>$E/moe_err.txt >> $E/moe.jsonl; log "moe $* rc $?"; }
m --shape deepseek-v3 --format q3_k --tokens 512 --seconds 1
m --shape deepseek-v2-lite --format q3_k --tokens 64 --seconds 1
python3 - $E <<'PY' | tee $E/table.txt
import json, sys
for l in open(sys.argv[1] + '/moe.jsonl'):
    r = json.loads(l)
    print('moe', r['shape'], r['gate'], r['down'], 'T=%d' % r['tokens'], r['isa'], '%.3f ms' % r['ms_per_call'])
PY
