#!/usr/bin/env bash
# Session 34 call B: expert deferral (`defer_experts`) on the DeepSeek-V3 shape.
# The synthetic V3 6-layer file (3 dense + 3 MoE); llama.cpp tg128 on it (the peer), then kt decode with the shipped
# hybrid rules (Q4_K CPU experts) and the int4 CPU experts (rules/cpu-int4), --defer-experts 0 / 1 / 2, taking turns.

set -uo pipefail
E=$OUT/b; mkdir -p $E; trap 'cd $OUT && tar czf b.tgz b && rm -rf b' EXIT
N=/tmp/kt-b; mkdir -p $N; tar xJf .device-carry/s34/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s34/COMMIT)"
J='"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction_paired":[0-9.]*\|"experts_per_moe_layer_ms":[0-9.]*\|"deferred_per_moe_layer_ms":[0-9.]*\|"gpu_between_moe_ms":[0-9.]*\|"moe_layer_bound_fraction_around":[0-9.]*\|"routed_bandwidth_fraction_around":[0-9.]*\|"samples":[^]]*'
dec() { # tag rules [extra args]
  local tag=$1 rules=$2; shift 2; local s0=$SECONDS
  timeout 150 $N/kt-bench decode --model $G --rules rules/$rules "$@" --prompt-len 1024 --gen-len 128 \
    --threads 16 --json --repetitions 3 > $E/dec_$tag.out 2> $E/dec_$tag.err
  log "decode $tag rc $? wall $((SECONDS-s0))s $(grep -o "$J" $E/dec_$tag.out | tr '\n' ' ')"
}
G=/tmp/v3_6.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v3 --layers 6 --out $G --threads 16 > $E/gen_v3.log 2>&1; log "gen v3 rc $? $(tail -1 $E/gen_v3.log)"
timeout 100 $N/llamacpp-bench -m $G -p 0 -n 128 -t 16 -r 3 > $E/llama_v3.out 2> $E/llama_v3.err
log "llama v3 tg128 rc $? $(grep -o '"test":"[a-z0-9]*"\|"avg_ts":[0-9.]*\|"samples_s":[^]]*' $E/llama_v3.out | tr '\n' ' ')"
dec h0 deepseek-v3-hybrid.yaml --defer-experts 0
dec h1 deepseek-v3-hybrid.yaml --defer-experts 1
dec i0 cpu-int4/deepseek-v3-hybrid.yaml --defer-experts 0
dec i1 cpu-int4/deepseek-v3-hybrid.yaml --defer-experts 1
dec h2 deepseek-v3-hybrid.yaml --defer-experts 2
dec i2 cpu-int4/deepseek-v3-hybrid.yaml --defer-experts 2
[ $((SECONDS-t0)) -lt 470 ] && dec h0b deepseek-v3-hybrid.yaml --defer-experts 0
[ $((SECONDS-t0)) -lt 520 ] && dec h1b deepseek-v3-hybrid.yaml --defer-experts 1
rm -f $G
log done
