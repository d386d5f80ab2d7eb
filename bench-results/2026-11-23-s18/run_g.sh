#!/usr/bin/env bash
# Session 18 call G: main at COMMIT = 80a52b3 (s18h: the step kernels' stage forwarders from one macro, with their
# callers' target features: the code of 531e7ab instruction for instruction; the rope test's bound) against s18e
# (531e7ab): the CPU / AMX / MoE tests of s18h, then separate processes taking turns (e, h, h, e), AMX GEMMs at 16 and
# 512 tokens and the V3 / V2-Lite MoE at 512 tokens.
set -uo pipefail
E=$OUT/g; mkdir -p $E/tests; trap 'cd $OUT && tar czf g.tgz g && rm -rf g' EXIT
for b in s18e s18h; do mkdir -p /tmp/$b && tar xJf .device-carry/$b/bin.tar.xz -C /tmp/$b; done
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); e $(cat .device-carry/s18e/COMMIT) h $(cat .device-carry/s18h/COMMIT)"
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures
for n in $(ls /tmp/s18h/tests); do
  timeout 120 /tmp/s18h/tests/$n --test-threads 16 > $E/tests/$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/tests/$n.txt | tail -1)"; done
grep -h -E "FAILED|panicked" $E/tests/*.txt | head -20
for r in e h h e; do
  B=/tmp/s18$r
  timeout 120 $B/kt-bench matmul --threads 16 --formats q2_k,q3_k,q4_k,q8_0 --shapes 2048x7168,7168x2048 --tokens 16,512 --seconds 0.3 --json > $E/mm_$r.$SECONDS.jsonl 2>>$E/errors.txt
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
    print('mm', *k, 'e', ' '.join('%.4f' % x for x in t[k]['e']), '| h', ' '.join('%.4f' % x for x in t[k]['h']))
PY
log done
