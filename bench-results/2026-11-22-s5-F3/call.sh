#!/usr/bin/env bash
# Session 5 call F3: hybrid decode A/B on one V2-Lite GGUF: main after all merges (new) vs the decode6
# branch alone (d6) vs session start (base), interleaved x4; llama.cpp tg128 before and after.
set -uo pipefail
B=/tmp/kt-bin; mkdir -p $B && tar xJf .device-carry/s5f3/bin.tar.xz -C $B; cp .device-carry/s5base/kt-bench $B/kt-bench-base
t0=$SECONDS; E=$OUT/f3; mkdir -p $E; G=/tmp/v2l.gguf
timeout 150 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; echo "gen rc $? $((SECONDS-t0))s"
timeout 100 $B/llamacpp-bench -m $G -p 512 -n 128 -t 16 -r 2 > $E/llama1.out 2> $E/llama1.err; echo "llama1 rc $? $((SECONDS-t0))s"
for rep in 1 2 3 4; do for b in new d6 base; do exe=$B/kt-bench; [ $b = base ] && exe=$B/kt-bench-base; [ $b = d6 ] && exe=$B/d6/kt-bench
  [ $((SECONDS-t0)) -gt 500 ] && continue
  timeout 100 $exe decode --model $G --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --gen-len 128 --threads 16 --json \
    > $E/dec_${b}_$rep.out 2> $E/dec_${b}_$rep.err; echo "dec $b $rep rc $? $((SECONDS-t0))s"
done; done
[ $((SECONDS-t0)) -lt 540 ] && { timeout 50 $B/llamacpp-bench -m $G -p 512 -n 128 -t 16 -r 2 > $E/llama2.out 2> $E/llama2.err; echo "llama2 rc $? $((SECONDS-t0))s"; }
python3 - $E <<'PY'
import json, sys, glob, os
E = sys.argv[1]
for f in sorted(glob.glob(E + '/*.out')):
    for l in open(f):
        l = l.strip()
        if not l.startswith('{'): continue
        d = json.loads(l)
        if 'tokens_per_s' in d:
            s = d.get('split') or {}; dec = s.get('decode') or {}
            print(os.path.basename(f), 'tok/s %.2f' % d['tokens_per_s'], 'dram %.1f' % (d.get('dram_gbps') or 0), 'routed_gbps %.1f' % (dec.get('routed_gbps') or 0))
        elif d.get('test'): print(os.path.basename(f), d['test'], d.get('avg_ts'), d.get('samples_ts'))
PY
cd $OUT && tar czf f3.tgz f3
