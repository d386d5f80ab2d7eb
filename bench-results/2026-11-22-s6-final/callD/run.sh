#!/usr/bin/env bash
# Session 6 call D (CPU): MoE prefill A/B again, three binaries interleaved x3: base (s6base, fc3b061), new (52e295c),
# nofold (52e295c with the folded AMX Q4_K kernel off: FOLD_MIN_TOKENS = usize::MAX); V3 int4 as a control
# (code untouched this session). Results in $OUT/d (d.tgz).
set -uo pipefail
E=$OUT/d; mkdir -p $E; trap 'cd $OUT && tar czf d.tgz d' EXIT
B=/tmp/kt-bin; mkdir -p $B && tar xJf .device-carry/s6b/bin.tar.xz -C $B; cp .device-carry/s6base/kt-bench $B/kt-bench-base
cp .device-carry/s6d/kt-bench-nofold $B/; t0=$SECONDS
m() { local label=$1 exe=$2; shift 2; [ $((SECONDS-t0)) -gt 300 ] && return
  timeout 60 "$exe" moe "$@" --json --cpu-time 2>>$E/moe_err.txt | sed "s/^{/{\"bin\":\"$label\",/" >> $E/moe.jsonl; echo "moe $label $* rc ${PIPESTATUS[0]} $((SECONDS-t0))s"; }
for rep in 1 2 3; do for b in base new nofold; do exe=$B/kt-bench; [ $b = base ] && exe=$B/kt-bench-base; [ $b = nofold ] && exe=$B/kt-bench-nofold
  m $b $exe --shape deepseek-v3 --format q4_k --tokens 512 --threads 16 --seconds 0.5
  m $b $exe --shape deepseek-v2-lite --format q4_k --tokens 512 --threads 16 --seconds 0.5
  [ $b != nofold ] && m $b $exe --shape deepseek-v3 --format int4 --group 128 --tokens 512 --threads 16 --seconds 0.5
done; done
python3 - $E <<'PY' | tee $E/table.txt
import json, sys, collections
E = sys.argv[1]; g = collections.defaultdict(list)
for l in open(E + '/moe.jsonl'):
    r = json.loads(l); g[(r['shape'], r.get('gate'), r['bin'])].append(r['ms_per_call'])
for k in sorted(g): print(*k, ' '.join('%.2f' % v for v in g[k]), 'mean %.2f' % (sum(g[k]) / len(g[k])))
PY
