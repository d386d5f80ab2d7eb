#!/usr/bin/env bash
# Session 3 call F3: GGUF Q4_K MoE prefill (V3, 512 tokens, 16 threads), AMX Q4_K GEMM vs the AVX512 one,
# interleaved 3 times; then GEMM at 512 tokens for the six formats (issue 2's >= 50% of the VNNI peak).
set -uo pipefail
B=/tmp/kt-bin; mkdir -p $B && tar xJf .device-carry/f3/bin.tar.xz -C $B
mkdir -p $OUT/f3; o=$OUT/f3
$B/kt-bench machine --threads 16 --json > $o/machine.json 2>&1
: > $o/q4k.jsonl
for i in 1 2 3; do for isa in amx avx512; do
  KT_ISA=$isa timeout 60 $B/kt-bench moe --shape deepseek-v3 --format q4_k --tokens 512 --threads 16 --seconds 1 --json >> $o/q4k.jsonl 2>>$o/err.txt
done; done
timeout 300 $B/kt-bench matmul --tokens 512 --threads 16 --seconds 0.3 --json \
  --shapes 2048x7168,7168x2048,1408x2048,18432x7168 > $o/gemm512.jsonl 2>>$o/err.txt
KT_ISA=avx512 timeout 120 $B/kt-bench matmul --tokens 512 --threads 16 --seconds 0.3 --json --formats q4_k \
  --shapes 2048x7168,7168x2048 > $o/gemm512_q4k_avx512.jsonl 2>>$o/err.txt
cd $OUT && tar czf f3.tgz f3
cat f3/machine.json; python3 - <<'PY'
import json
for l in open('f3/q4k.jsonl'):
    j=json.loads(l); print('q4k moe', j.get('isa'), round(j['ms_per_call'],2))
for f in ('f3/gemm512.jsonl','f3/gemm512_q4k_avx512.jsonl'):
    for l in open(f):
        try: j=json.loads(l)
        except: continue
        print(f.split('/')[-1], {k:v for k,v in j.items() if k in ('format','rows','cols','isa','ms_per_call','gops','peak_fraction')})
PY
