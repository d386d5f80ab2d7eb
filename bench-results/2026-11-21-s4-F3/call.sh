#!/usr/bin/env bash
# Session 4 call F3: V3-shaped hybrid decode, the pool's wake before each GPU wait (new) vs F1's binary (old),
# on a 6-layer and a 4-layer file, alternating; kt cpu decode on each file as the CPU engine's reference.
set -uo pipefail
B=/tmp/kt-bin; mkdir -p $B && tar xJf .device-carry/s4f3/bin.tar.xz -C $B
mkdir -p $OUT/f3
for L in 6 4; do
  g=/tmp/v3_$L.gguf
  $B/kt-bench gen-gguf --preset deepseek-v3 --layers $L --out $g --threads 16 > /dev/null 2>&1
  for b in new old new old; do exe=$B/kt-bench; [ $b = old ] && exe=$B/kt-bench-old
    timeout 90 $exe decode --model $g --rules rules/deepseek-v3-hybrid.yaml --prompt-len 32 --gen-len 64 --threads 16 --json \
      2>>$OUT/f3/err.txt | sed "s/^{/{\"bin\":\"$b\",\"layers\":$L,/" >> $OUT/f3/runs.jsonl
  done
  timeout 60 $B/kt-bench decode --model $g --prompt-len 32 --gen-len 64 --threads 16 --json 2>>$OUT/f3/err.txt | sed "s/^{/{\"bin\":\"cpu\",\"layers\":$L,/" >> $OUT/f3/runs.jsonl
  rm -f $g
done
python3 - $OUT/f3/runs.jsonl <<'PY'
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l); d = r['split']['decode']
    cpu = sum(x.get('cpu_experts_s', x.get('routed_experts', 0)) for x in d.get('per_layer', d.get('per_layer_s', [])))
    print(r['bin'], 'L=%d' % r['layers'], 'decode %.2f tok/s' % r['decode_tokens_per_s'], 'timed %s' % r.get('decode_timed_tokens_per_s'),
          'pipelined %s' % r.get('decode_pipelined_tokens_per_s'), 'cpu experts %.3f ms/token' % (1e3 * cpu / d['tokens']), 'dram %.1f' % r['dram_gbps'])
PY
