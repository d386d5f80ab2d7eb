#!/usr/bin/env bash
# Session 14 call F: is the first MoE layer slow because the decode thread (thread 0 of every MoE call, unpinned)
# shares a worker's core at the start of the step? The same binary (s14f: main + ThreadPool::pin_caller behind
# KT_PIN_CALLER=1 in kt-bench decode), unpinned / pinned in alternating processes x3, V2-Lite 27 layers.
set -uo pipefail
E=$OUT/f; mkdir -p $E; trap 'cd $OUT && tar czf f.tgz f && rm -rf f' EXIT
B=/tmp/kt-bin; mkdir -p $B; xz -dc .device-carry/s14f/kt-bench.xz > $B/kt-bench; chmod +x $B/kt-bench
xz -dc .device-carry/s13f/llamacpp-bench.xz > $B/llamacpp-bench; chmod +x $B/llamacpp-bench
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s14f/COMMIT)"
G=/tmp/v2l.gguf
timeout 60 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
dec() { # tag pin
  KT_PIN_CALLER=$2 timeout 100 $B/kt-bench decode --model $G --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --gen-len 128 --threads 16 --json --repetitions 5 \
    > $E/dec_$1.out 2> $E/dec_$1.err; log "dec $1 rc $? $(grep -o '"decode_tokens_per_s":[0-9.]*' $E/dec_$1.out | head -1) $(grep pinned $E/dec_$1.err)"; }
timeout 50 $B/llamacpp-bench -m $G -p 0 -n 128 -t 16 -r 5 > $E/llama1.out 2> $E/llama1.err; log "llama1 rc $? $(grep -o '"avg_ts":[0-9.]*' $E/llama1.out)"
dec off_1 0; dec on_1 1; dec on_2 1; dec off_2 0; dec off_3 0; dec on_3 1
python3 - $E <<'PY' | tee $E/table.txt
import json, sys
E = sys.argv[1]
for f in ('off_1', 'on_1', 'on_2', 'off_2', 'off_3', 'on_3'):
    try:
        j = json.loads(open(f'{E}/dec_{f}.out').read().strip().splitlines()[-1])
        tl = j.get('decode_graph_timeline') or {}
        m, first = tl.get('experts_per_moe_layer_ms') or 0, tl.get('first_moe_layer_experts_ms') or 0
        print('dec', f, round(j['decode_tokens_per_s'], 2), 'bound', round(j.get('decode_bound_fraction') or 0, 3), 'dram', round(j['dram_gbps'], 1), 'experts_ms', round(m, 4), 'first', round(first, 4), 'first-mean_us', round(1000 * (first - m), 1), 'between', round(tl.get('gpu_between_moe_ms') or 0, 4))
    except Exception as e: print('dec', f, 'error', e)
PY
rm -f $G
log done
