#!/usr/bin/env bash
# Session 13 call G: the first MoE layer predicted after the dense layer (.device-carry/s13g) vs the session's previous
# main (2ec1f43, .device-carry/s13prev). The hybrid test binaries (hybrid_graph three times more), then V2-Lite 27
# layers hybrid decode, prev/new interleaved x3 with --repetitions 5, llama.cpp tg128 -r 5 before and after.
set -uo pipefail
E=$OUT/g; mkdir -p $E/tests; trap 'cd $OUT && tar czf g.tgz g && rm -rf g' EXIT
B=/tmp/kt-bin; mkdir -p $B && tar xJf .device-carry/s13g/bin.tar.xz -C $B
xz -dc .device-carry/s13prev/kt-bench.xz > $B/kt-bench-prev; chmod +x $B/kt-bench-prev
xz -dc .device-carry/s13g/llamacpp-bench.xz > $B/llamacpp-bench; chmod +x $B/llamacpp-bench
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s13g/COMMIT)"
for t in $B/tests/* $B/tests/hybrid_graph $B/tests/hybrid_graph; do n=$(basename $t)
  KT_REQUIRE_GPU=1 timeout 60 $t --test-threads 4 > $E/tests/$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/tests/$n.txt | tail -1)"; done
G=/tmp/v2l.gguf
timeout 60 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
dec() { # tag exe
  timeout 100 $2 decode --model $G --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --gen-len 128 --threads 16 --json --repetitions 5 \
    > $E/dec_$1.out 2> $E/dec_$1.err; log "dec $1 rc $? $(grep -o '"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*' $E/dec_$1.out | head -3 | tr '\n' ' ')"; }
ll() { timeout 50 $B/llamacpp-bench -m $G -p 0 -n 128 -t 16 -r 5 > $E/llama$1.out 2> $E/llama$1.err; log "llama$1 rc $? $(grep -o '"avg_ts":[0-9.]*' $E/llama$1.out | tr '\n' ' ')"; }
ll 1
for i in 1 2 3; do dec prev_$i $B/kt-bench-prev; dec new_$i $B/kt-bench; done
ll 2
python3 - $E <<'PY' | tee $E/table.txt
import json, sys
E = sys.argv[1]
for i in (1, 2, 3):
    for v in ('prev', 'new'):
        try:
            j = json.loads(open(f'{E}/dec_{v}_{i}.out').read().strip().splitlines()[-1])
            r = j.get('decode_repetitions') or {}
            tl = j.get('decode_graph_timeline') or {}
            print(v, i, round(j['decode_tokens_per_s'], 2), [round(x, 1) for x in r.get('samples', [])], 'bound', round(j.get('decode_bound_fraction') or 0, 3), 'dram', round(j['dram_gbps'], 1),
                  'ms/tok', round(tl.get('ms_per_token') or 0, 3), 'first_gpu', round(tl.get('first_gpu_ms') or 0, 4), 'first_exp', tl.get('first_moe_layer_experts_ms'), 'exp', round(tl.get('experts_per_moe_layer_ms') or 0, 4),
                  'btw', round(tl.get('gpu_between_moe_ms') or 0, 4), 'pf/tok', tl.get('prefetches_per_token'), 'hit', round(tl.get('predicted_hit_rate') or 0, 3), 'tail', round(tl.get('tail_ms') or 0, 4))
        except Exception as e: print(v, i, 'error', e)
PY
rm -f $G
log done
