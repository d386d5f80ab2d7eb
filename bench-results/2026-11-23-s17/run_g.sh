#!/usr/bin/env bash
# Session 17 call G (main at COMMIT = s17g: the Q2_K / Q3_K AMX kernels share one product sequence, the small-block
# column formats one chunk selector; s17d = call D's build): the AMX/MoE tests, and Q2_K / Q3_K / Q8_0 GEMMs at 16 and
# 512 tokens, s17g against s17d in separate processes taking turns (a check that the tidy changed no speed).
set -uo pipefail
E=$OUT/g; mkdir -p $E/tests; trap 'cd $OUT && tar czf g.tgz g && rm -rf g' EXIT
B=/tmp/kt; mkdir -p $B && tar xJf .device-carry/s17g/bin.tar.xz -C $B
D=/tmp/s17d; mkdir -p $D && tar xJf .device-carry/s17d/bin.tar.xz -C $D
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); new $(cat .device-carry/s17g/COMMIT); s17d $(cat .device-carry/s17d/COMMIT)"
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures
for n in $(ls $B/tests); do
  timeout 90 $B/tests/$n --test-threads 16 > $E/tests/$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/tests/$n.txt | tail -1)"; done
grep -h -E "FAILED|panicked" $E/tests/*.txt | head -20
mm() { local tag=$1 b=$2; timeout 60 $b matmul --threads 16 --formats q2_k,q3_k,q8_0 --shapes 2048x7168,7168x2048 \
  --tokens 16,512 --seconds 0.3 --json 2>>$E/mm.err | sed "s/^{/{\"tag\":\"$tag\",/" >> $E/mm.jsonl; log "matmul $tag rc $?"; }
for r in 1 2; do mm new $B/kt-bench; mm s17d $D/kt-bench; done
python3 - $E <<'PY' | tee $E/table.txt
import json, sys, collections
E = sys.argv[1]
rows = collections.defaultdict(lambda: collections.defaultdict(list))
for l in open(f'{E}/mm.jsonl'):
    l = l.strip()
    if not l.startswith('{'): continue
    r = json.loads(l)
    rows[(r['format'], r['rows'], r['cols'], r['tokens'])][r['tag']].append(r['ms_per_call'])
for k, v in rows.items():
    print('%s %dx%d T=%d' % k, ' | '.join('%s %s' % (t, ' '.join('%.4f' % x for x in xs)) for t, xs in v.items()))
PY
