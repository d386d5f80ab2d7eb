#!/usr/bin/env bash
# Session 5 final call F1 (engine): GPU tests (KT_REQUIRE_GPU=1), then on ONE synthetic V2-Lite GGUF:
# llama.cpp pp1024/tg128, kt hybrid decode new vs base (session start, db43f03) interleaved x3
# (prompt 1024, gen 128), kt hybrid prefill, kt cpu decode/prefill, llama.cpp again.
set -uo pipefail
B=/tmp/kt-bin; mkdir -p $B && tar xJf .device-carry/s5f1/bin.tar.xz -C $B
t0=$SECONDS; E=$OUT/e; mkdir -p $E/tests
top -bn1 | head -15 > $E/top_before.txt; nvidia-smi > $E/nvidia-smi.txt 2>&1
for t in $B/tests/*; do n=$(basename $t)
  KT_REQUIRE_GPU=1 timeout 120 $t --test-threads 1 > $E/tests/$n.log 2>&1
  echo "test $n rc $? $(grep -E '^test result' $E/tests/$n.log | tail -1)"; done
echo "tests done $((SECONDS-t0))s"
G=/tmp/v2l.gguf
timeout 150 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; echo "gen rc $? $((SECONDS-t0))s"
timeout 150 $B/llamacpp-bench -m $G -p 1024 -n 128 -t 16 -r 2 > $E/llama1.out 2> $E/llama1.err; echo "llama1 rc $? $((SECONDS-t0))s"
for rep in 1 2 3; do for b in new base; do exe=$B/kt-bench; [ $b = base ] && exe=$B/kt-bench-base
  timeout 120 $exe decode --model $G --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --gen-len 128 --threads 16 --json \
    > $E/hyb_dec_${b}_$rep.out 2> $E/hyb_dec_${b}_$rep.err; echo "hyb dec $b $rep rc $? $((SECONDS-t0))s"
done; done
timeout 150 $B/kt-bench prefill --model $G --rules rules/gpu-prefill/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --threads 16 --json > $E/hyb_pre.out 2> $E/hyb_pre.err; echo "hyb pre rc $? $((SECONDS-t0))s"
timeout 90 $B/kt-bench decode --model $G --prompt-len 1024 --gen-len 128 --threads 16 --json > $E/cpu_dec.out 2> $E/cpu_dec.err; echo "cpu dec rc $? $((SECONDS-t0))s"
timeout 90 $B/kt-bench prefill --model $G --prompt-len 1024 --threads 16 --json > $E/cpu_pre.out 2> $E/cpu_pre.err; echo "cpu pre rc $? $((SECONDS-t0))s"
[ $((SECONDS-t0)) -lt 480 ] && { timeout 100 $B/llamacpp-bench -m $G -p 1024 -n 128 -t 16 -r 2 > $E/llama2.out 2> $E/llama2.err; echo "llama2 rc $? $((SECONDS-t0))s"; }
top -bn1 | head -15 > $E/top_after.txt
python3 - $E <<'PY'
import json, sys, glob, os
E = sys.argv[1]
for f in sorted(glob.glob(E + '/*.out')):
    for l in open(f):
        l = l.strip()
        if l.startswith('{'):
            d = json.loads(l); s = d.get('split', {})
            dec = s.get('decode', {}) if isinstance(s, dict) else {}
            print(os.path.basename(f), d.get('mode'), 'tok/s %.2f' % d.get('tokens_per_s', 0), 'dram %.1f' % (d.get('dram_gbps') or 0),
                  'routed_gbps %s frac %s' % (dec.get('routed_gbps'), dec.get('routed_bandwidth_fraction')),
                  'pipelined %s seq %s' % (d.get('decode_pipelined_tokens_per_s'), d.get('decode_sequential_tokens_per_s')))
        elif '|' in l and ('pp' in l or 'tg' in l): print(os.path.basename(f), l)
PY
cd $OUT && tar czf e.tgz e
