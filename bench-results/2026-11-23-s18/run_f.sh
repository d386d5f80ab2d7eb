#!/usr/bin/env bash
# Session 18 call F: main at COMMIT = fe4bad8 (s18g: the step kernels' forwarders from one macro; the records transpose
# and the step epilogue with the pipeline's target features, so every stage inlines) against s18e (531e7ab, before
# them): the AMX tests of s18g, then separate processes taking turns (e, g, g, e), AMX GEMMs at 16 and 512 tokens and
# the V3 / V2-Lite MoE at 512 tokens.
set -uo pipefail
E=$OUT/f; mkdir -p $E/tests; trap 'cd $OUT && tar czf f.tgz f && rm -rf f' EXIT
for b in s18e s18g; do mkdir -p /tmp/$b && tar xJf .device-carry/$b/bin.tar.xz -C /tmp/$b; done
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); e $(cat .device-carry/s18e/COMMIT) g $(cat .device-carry/s18g/COMMIT)"
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures
for n in $(ls /tmp/s18g/tests); do
  timeout 120 /tmp/s18g/tests/$n --test-threads 16 > $E/tests/$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/tests/$n.txt | tail -1)"; done
grep -h -E "FAILED|panicked" $E/tests/*.txt | head -20
for r in e g g e; do
  B=/tmp/s18$r
  timeout 120 $B/kt-bench matmul --threads 16 --formats q4_k,q2_k,q3_k,q6_k,q8_0,q5_k --shapes 2048x7168,7168x2048 --tokens 16,512 --seconds 0.3 --json > $E/mm_$r.$SECONDS.jsonl 2>>$E/errors.txt
  log "mm $r rc $?"
  timeout 90 $B/kt-bench moe --shape deepseek-v3 --format q4_k --tokens 512 --threads 16 --seconds 1 --json >> $E/moe_$r.jsonl 2>>$E/errors.txt
  log "moe v3 $r rc $? $(tail -1 $E/moe_$r.jsonl | grep -o '"ms_per_call":[0-9.]*')"
  timeout 60 $B/kt-bench moe --shape deepseek-v2-lite --format q4_k --tokens 512 --threads 16 --seconds 1 --json >> $E/moe_$r.jsonl 2>>$E/errors.txt
  log "moe v2l $r rc $? $(tail -1 $E/moe_$r.jsonl | grep -o '"ms_per_call":[0-9.]*')"
done
python3 - $E <<'PY' | tee $E/table.txt
import json, sys, glob, collections
E = sys.argv[1]
t = collections.defaultdict(lambda: collections.defaultdict(list))
for f in sorted(glob.glob(E + '/mm_*.jsonl')):
    r_ = f.split('/mm_')[1][0]
    for l in open(f):
        try: r = json.loads(l)
        except Exception: continue
        if 'ms_per_call' not in r: continue
        t[(r['format'], f"{r['rows']}x{r['cols']}", r['tokens'])][r_].append(r['ms_per_call'])
for k in sorted(t):
    print('mm', *k, 'e', ' '.join('%.4f' % x for x in t[k]['e']), '| g', ' '.join('%.4f' % x for x in t[k]['g']))
PY
log done
