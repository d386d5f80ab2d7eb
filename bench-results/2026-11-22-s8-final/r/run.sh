#!/usr/bin/env bash
# Session 8 decode re-check: base first in each pair (F1 had new first), x3, llama.cpp tg128 before and after.
set -uo pipefail
E=$OUT/r; mkdir -p $E; trap 'cd $OUT && tar czf r.tgz r' EXIT
D=.device-carry/s8f1; B=/tmp/kt-r; mkdir -p $B && tar xJf $D/bin.tar.xz -C $B; cp .device-carry/s8base/kt-bench $B/kt-bench-base
G=/tmp/v2l.gguf; t0=$SECONDS
log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
timeout 60 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
timeout 40 $D/llamacpp-bench -m $G -p 0 -n 128 -t 16 -r 2 > $E/llama1.out 2> $E/llama1.err; log "llama1 rc $? $(grep -o '"avg_ts":[0-9.]*' $E/llama1.out | tr '\n' ' ')"
dec() { timeout 60 $2 decode --model $G --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --gen-len 128 --threads 16 --json \
    > $E/dec_$1.out 2> $E/dec_$1.err; log "dec $1 rc $? $(grep -o '"decode_tokens_per_s":[0-9.]*\|"dram_gbps":[0-9.]*\|"ms_per_token":[0-9.]*\|"gpu_between_moe_ms":[0-9.]*\|"experts_per_moe_layer_ms":[0-9.]*' $E/dec_$1.out | tr '\n' ' ')"; }
for rep in 1 2 3; do [ $((SECONDS-t0)) -gt 170 ] && break; dec base_$rep $B/kt-bench-base; dec new_$rep $B/kt-bench; done
timeout 40 $D/llamacpp-bench -m $G -p 0 -n 128 -t 16 -r 2 > $E/llama2.out 2> $E/llama2.err; log "llama2 rc $? $(grep -o '"avg_ts":[0-9.]*' $E/llama2.out | tr '\n' ' ')"
