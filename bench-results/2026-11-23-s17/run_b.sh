#!/usr/bin/env bash
# Session 17 call B (x17 at COMMIT): why the pipeline's Q8_0 loses to session 16's direct kernel at 48-512 tokens on
# 2048-row shapes. KT_GEMV_AB variants in one process: 0 = pipeline over call-wide records, 1 = session 16's direct
# Q8_0 kernel (Q5_0: pipeline), 2 = AVX512 column kernel, 3 = pipeline with records made per work item (no call-wide
# records pass), 4 = pipeline with twice the records per K chunk (K chunks of 2048, not 1024, at 128 tokens).
set -uo pipefail
E=$OUT/b; mkdir -p $E; trap 'cd $OUT && tar czf b.tgz b && rm -rf b' EXIT
B=/tmp/x17; mkdir -p $B && tar xJf .device-carry/s17b/bin.tar.xz -C $B
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); x17 $(cat .device-carry/s17b/COMMIT)"
KT_GEMV_AB=0,1,3,4 timeout 200 $B/kt-bench matmul --threads 16 --formats q8_0 --shapes 2048x7168,7168x2048,1408x2048,2048x1408,18432x7168 \
  --tokens 16,48,128,512 --seconds 0.3 --json > $E/mm_q8_0.jsonl 2> $E/mm_q8_0.err; log "matmul q8_0 rc $?"
KT_GEMV_AB=0,2,3,4 timeout 100 $B/kt-bench matmul --threads 16 --formats q5_0 --shapes 2048x7168,1408x2048,2048x1408 \
  --tokens 48,128,512 --seconds 0.3 --json > $E/mm_q5_0.jsonl 2> $E/mm_q5_0.err; log "matmul q5_0 rc $?"
m() { timeout 60 $B/kt-bench moe "$@" --threads 16 --json 2>>$E/moe_err.txt >> $E/moe.jsonl; log "moe $* rc $?"; }
KT_GEMV_AB=0,2,4 m --shape deepseek-v2-lite --format q4_k --tokens 512 --seconds 3
KT_GEMV_AB=0,1,2,4 m --shape deepseek-v2-lite --format q4_k --down-format q8_0 --tokens 512 --seconds 3
python3 - $E <<'PY' | tee $E/table.txt
import json, sys, collections
E = sys.argv[1]
for f in ('q8_0', 'q5_0'):
    rows = collections.defaultdict(dict)
    for l in open(f'{E}/mm_{f}.jsonl'):
        l = l.strip()
        if not l.startswith('{'): continue
        r = json.loads(l)
        rows[(r['rows'], r['cols'], r['tokens'])][r.get('variant', 0)] = (r['ms_per_call'], r['peak_fraction'], r['peak_gops'])
    for k, v in rows.items():
        print(f, '%dx%d T=%d' % k, ' '.join('v%d %.4f ms %.1f%%' % (x, v[x][0], 100 * v[x][1]) for x in sorted(v)), 'peak %.0f' % list(v.values())[0][2])
for l in open(E + '/moe.jsonl'):
    r = json.loads(l)
    print('moe', r['shape'], r['gate'], r['down'], 'T=%d' % r['tokens'], r.get('prefetch'), r['isa'], '%.3f ms' % r['ms_per_call'], 'peakfrac %.3f' % r['peak_fraction'], 'dram %.1f' % r['dram_gbps'])
PY
